//! One DSA device (Intel DSA Architecture Specification rev 3.0, "DSA spec": GENSTS §9.2.10,
//! the commands of §9.2.12, GRPCFG/WQCFG §9.2.23–§9.2.24): bring-up, commands, WQ runtime
//! state, the misc interrupt (INTCAUSE §9.2.11, SWERROR §9.2.15), halt recovery, drain and
//! abort. No global state: every device is an
//! independent [`Device`].

use crate::caps::Capabilities;
use crate::config::{DeviceConfig, WqConfig, WqType};
use crate::error::DsaError;
use crate::hw::{AddressSpace, Clock, DmaMemory, Pci, PciInfo, Portals, Registers};
use crate::ops::WqLimits;
use crate::queue::{Credits, Queues, Ring};
use alloc::sync::Arc;
use alloc::vec::Vec;
use bitflags::bitflags;
use core::fmt;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use dsa_spec::portal::{PortalKind, WQ_PORTAL_STRIDE, portal_offset};
use dsa_spec::regs::{bar0, cmd_err};
use dsa_spec::tables::{MsixPerm, grpcfg, msixperm, wqcfg, wqcfg_entry};
use dsa_spec::{
    CmdReg, CmdStatus, Command, DeviceState, GenCfg, GenCtrl, GroupFlags, GrpCfg, IntCause,
    ResetType, SwErr, SwErrFlags, WqCfg, WqMode, WqState,
};
use hwio::RegistersExt;
use log::{debug, error, info, warn};

/// Work to redo after a recovery (see [`Device::add_recovery_hook`]); returns `false` once it
/// is no longer needed (it is then removed).
pub type RecoveryHook = Arc<dyn Fn(&Device) -> bool + Send + Sync>;

/// The machine behind one device.
#[derive(Clone)]
pub struct Hardware {
    /// The device's BAR0 registers (Intel DSA Architecture Specification rev 3.0, §9.2).
    pub regs: Arc<dyn Registers>,
    /// The device's BAR2 submission portals (§9.3).
    pub portals: Arc<dyn Portals>,
    /// Allocator of memory the device reads and writes (completion records, batch lists,
    /// the kernel's buffers).
    pub dma: Arc<dyn DmaMemory>,
    /// The time source of every bounded wait.
    pub clock: Arc<dyn Clock>,
    /// The device's PCI configuration state, owned by the kernel.
    pub pci: Arc<dyn Pci>,
}

/// Driver policy for one device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// PASID of the kernel's own address space when descriptors use PASIDs: dedicated WQs
    /// run in it, and it is the PASID allowed on the WQs' MSI-X entries (MSIXPERM). `None`:
    /// dedicated WQs run without PASID.
    pub kernel_pasid: Option<u32>,
    /// Bound on every command (reset, enable, drain, abort …).
    pub command_timeout_ns: u64,
    /// Bound on waiting for a dedicated-WQ credit or an accepting shared WQ.
    pub submit_timeout_ns: u64,
    /// Immediate ENQCMDS retries before backing off (Linux: 32).
    pub enqcmds_retries: u32,
    /// Maximum number of submission contexts at once.
    pub max_submitters: usize,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        DeviceOptions {
            kernel_pasid: None,
            command_timeout_ns: 1_000_000_000,
            submit_timeout_ns: 10_000_000,
            enqcmds_retries: 32,
            max_submitters: 64,
        }
    }
}

/// Where the configuration comes from.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// [`DeviceConfig::default_for`].
    Default,
    /// This configuration, as given.
    Config(DeviceConfig),
    /// An accel-config file; the entry `dsa<index>` is used, the default if absent.
    AccelConfig(crate::accel_config::AccelConfig),
}

/// Run state of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RunState {
    /// Enabled and accepting submissions.
    Running = 0,
    /// New submissions are refused while a drain/abort/recovery runs.
    Quiescing = 1,
    /// The device reported Halt; [`Device::recover`] must run.
    Halted = 2,
    /// Recovery failed; the device is unusable.
    Failed = 3,
}

impl RunState {
    fn from_u8(v: u8) -> RunState {
        match v {
            0 => RunState::Running,
            1 => RunState::Quiescing,
            2 => RunState::Halted,
            _ => RunState::Failed,
        }
    }
}

bitflags! {
    /// What the misc interrupt found (the kernel schedules [`Device::recover`] on HALTED).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct MiscEvents: u32 {
        /// INTCAUSE.SOFTWARE_ERROR: SWERROR was read and, when valid, logged and acked (Intel DSA
        /// Architecture Specification rev 3.0, §9.2.11, §9.2.15).
        const SOFTWARE_ERROR = 1 << 0;
        /// INTCAUSE.COMMAND_COMPLETED: a command that asked for an interrupt completed.
        const COMMAND_COMPLETED = 1 << 1;
        /// The device halted (INTCAUSE.HALTED, or GENSTS reads Halted, §9.2.10): the
        /// device is now [`RunState::Halted`] and [`Device::recover`] must run.
        const HALTED = 1 << 2;
        /// INTCAUSE bit 31: the device revoked its interrupt handles; the device is marked
        /// halted so that recovery requests them again.
        const HANDLES_REVOKED = 1 << 3;
        /// Any other cause (WQ occupancy, perfmon overflow, event log): acknowledged only.
        const OTHER = 1 << 4;
    }
}

/// A decoded SWERROR record (DSA spec rev 3.0, §9.2.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwError {
    /// Error code (qword 0 bits 15:8): a completion status code (§5.8.1) or a software-only
    /// code (§5.8.2, `dsa_spec::regs::swerr_code`).
    pub code: u8,
    /// Overflow (qword 0 bit 1): further errors arrived and were not recorded.
    pub overflow: bool,
    /// WQ index (qword 0 bits 23:16) when WQ Index Valid is set.
    pub wq: Option<u8>,
    /// Opcode (qword 0 bits 39:32) when the descriptor fields are valid (Desc Valid).
    pub opcode: Option<u8>,
    /// PASID of the descriptor (qword 0 bits 59:40, 20 bits) when Desc Valid is set.
    pub pasid: Option<u32>,
    /// Position of the failing descriptor in its batch (qword 1 bits 15:0) when the error
    /// was in a batch member.
    pub batch_index: Option<u16>,
    /// The descriptor was privileged (flag bit 6; meaningful with Desc Valid).
    pub privileged: bool,
    /// The faulting access was a write (flag bit 5), else a read.
    pub write: bool,
    /// Faulting address (qword 2; bits 11:0 may read as 0); 0 when none.
    pub fault_addr: u64,
    /// Error info (qword 1 bits 63:32) when Error Info Valid is set: invalid flags for
    /// code 0x11, the handle (bits 47:32) for 0x19.
    pub info: Option<u32>,
}

impl SwError {
    /// Decodes the four SWERROR qwords; fields whose valid flag is clear are `None`.
    pub fn decode(s: &SwErr) -> SwError {
        let f = s.flags();
        let desc = f.contains(SwErrFlags::DESC_VALID);
        SwError {
            code: s.code(),
            overflow: s.overflow(),
            wq: f.contains(SwErrFlags::WQ_INDEX_VALID).then_some(s.wq()),
            opcode: desc.then_some(s.opcode()),
            pasid: desc.then_some(s.pasid()),
            batch_index: f.contains(SwErrFlags::BATCH).then_some(s.batch_index()),
            privileged: f.contains(SwErrFlags::PRIV),
            write: f.contains(SwErrFlags::FAULT_RW),
            fault_addr: s.fault_addr(),
            info: f
                .contains(SwErrFlags::ERROR_INFO_VALID)
                .then_some(s.error_info()),
        }
    }
    /// A short English name of [`code`](Self::code), for logs.
    pub fn name(&self) -> &'static str {
        use dsa_spec::regs::swerr_code::*;
        match self.code {
            PCI_CONFIG_CHANGED => "PCI configuration changed while enabled",
            CMD_WHILE_ACTIVE => "command written while another was active",
            DWQ_FULL => "descriptor dropped: dedicated WQ full",
            EVL_APPEND => "event log append failed",
            c => dsa_spec::status::name(c),
        }
    }
}

impl fmt::Display for SwError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SWERR {:#04x} ({})", self.code, self.name())?;
        if let Some(w) = self.wq {
            write!(f, " wq {w}")?;
        }
        if let Some(o) = self.opcode {
            write!(f, " opcode {o:#04x}")?;
        }
        if let Some(p) = self.pasid {
            write!(f, " pasid {p:#x}")?;
        }
        if let Some(b) = self.batch_index {
            write!(f, " batch member {b}")?;
        }
        if self.fault_addr != 0 {
            write!(
                f,
                " addr {:#x} ({})",
                self.fault_addr,
                if self.write { "write" } else { "read" }
            )?;
        }
        if self.overflow {
            write!(f, " (more errors lost)")?;
        }
        Ok(())
    }
}

/// Runtime state of one configured WQ.
pub struct Wq {
    /// The WQ's configuration as written to its WQCFG entry (§9.2.24).
    pub config: WqConfig,
    /// Address space descriptors of this WQ run in (dedicated), or None for shared WQs
    /// (the descriptor names it).
    pub space: Option<AddressSpace>,
    /// The WQCFG privilege bit: descriptors of this dedicated WQ run privileged (the PCI
    /// privileged mode with a kernel PASID, always without PASID; never for shared WQs).
    pub privileged: bool,
    /// Transfer and batch bounds and Block On Fault of this WQ, from its configuration.
    pub limits: WqLimits,
    /// MSI-X table entry of this WQ's completion interrupt, if the kernel gave one.
    pub msix_entry: Option<u16>,
    /// PASID the MSI-X entry is bound to (MSIXPERM), for PASID-enabled WQs.
    pub msix_pasid: Option<u32>,
    /// Interrupt handle for `msix_entry` (the index, or what Request Int Handle returned).
    pub(crate) int_handle: AtomicU32,
    /// Dedicated WQ: the credit pool (descriptors the WQ may hold, handed to submitters).
    pub credits: Arc<Credits>,
    /// User dedicated WQ: `LENT | pasid` while lent to a process, else 0.
    lent: AtomicU32,
}

impl Wq {
    /// The WQ index (its WQCFG entry, `0..num_wqs`).
    pub fn id(&self) -> u8 {
        self.config.id
    }
    /// Dedicated or shared (WQCFG mode, §9.2.24).
    pub fn mode(&self) -> WqMode {
        self.config.mode
    }
    /// WQ size in descriptors (WQCFG size, §9.2.24).
    pub fn size(&self) -> u16 {
        self.config.size
    }
    /// Portal page used for submissions through MSI-X (or polling).
    pub fn portal(&self) -> u64 {
        let kind = if self.config.mode == WqMode::Shared && self.config.threshold > 0 {
            PortalKind::LimitedMsix
        } else {
            PortalKind::UnlimitedMsix
        };
        portal_offset(u32::from(self.config.id), kind)
    }
    /// Portal page for descriptors carrying an IMS interrupt handle.
    pub fn ims_portal(&self) -> u64 {
        let kind = if self.config.mode == WqMode::Shared && self.config.threshold > 0 {
            PortalKind::LimitedIms
        } else {
            PortalKind::UnlimitedIms
        };
        portal_offset(u32::from(self.config.id), kind)
    }
    /// A dedicated WQ of accel-config `type` `user`: configured (size, group) but left
    /// disabled at bring-up and never used by the kernel's submitters; it is lent to one
    /// process at a time ([`Device::lend_wq`]), running in that process's PASID.
    pub fn is_user_dedicated(&self) -> bool {
        self.config.wq_type == WqType::User && self.config.mode == WqMode::Dedicated
    }
    /// The PASID this user WQ is lent to, if it is.
    pub fn lent_to(&self) -> Option<u32> {
        let v = self.lent.load(Ordering::Acquire);
        (v & LENT != 0).then_some(v & 0xF_FFFF)
    }
    /// Dedicated-WQ credits held by submitters now (each descriptor the device may hold
    /// needs one; submitters take them in chunks).
    pub fn credits_in_use(&self) -> u32 {
        self.credits.in_use()
    }
    /// Most credits ever held at once (never above the WQ size).
    pub fn credits_peak(&self) -> u32 {
        self.credits.peak()
    }
    pub(crate) fn int_handle(&self) -> Option<u16> {
        let h = self.int_handle.load(Ordering::Acquire);
        (h <= 0xFFFF).then_some(h as u16)
    }
}

const NO_HANDLE: u32 = u32::MAX;
/// `Wq::lent`: the WQ is lent (bits 19:0 the PASID).
const LENT: u32 = 1 << 31;

/// Counters for tests and diagnostics.
pub struct Stats {
    swerr_by_code: [AtomicU32; 256],
    pub(crate) misc_interrupts: AtomicU64,
    pub(crate) halts: AtomicU64,
    pub(crate) recoveries: AtomicU64,
    /// ENQCMDS attempts the device answered with Retry.
    pub(crate) enq_retries: AtomicU64,
    /// Dedicated-WQ submissions that found every credit taken and had to wait.
    pub(crate) credit_waits: AtomicU64,
    last_swerr: [AtomicU64; 4],
}

impl Stats {
    fn new() -> Stats {
        Stats {
            swerr_by_code: core::array::from_fn(|_| AtomicU32::new(0)),
            misc_interrupts: AtomicU64::new(0),
            halts: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            enq_retries: AtomicU64::new(0),
            credit_waits: AtomicU64::new(0),
            last_swerr: core::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// One DSA device.
pub struct Device {
    pub(crate) hw: Hardware,
    index: u32,
    pub(crate) caps: Capabilities,
    config: DeviceConfig,
    pub(crate) options: DeviceOptions,
    /// Indexed by WQ id; None for unconfigured WQs.
    wqs: Vec<Option<Wq>>,
    cmd_lock: spin::Mutex<()>,
    recover_lock: spin::Mutex<()>,
    /// Called after a recovery rewrote the configuration, before submissions resume.
    recovery_hooks: spin::Mutex<Vec<RecoveryHook>>,
    state: AtomicU8,
    pub(crate) epoch: AtomicU64,
    /// Submission rings by WQ, credits' owner, the registry interrupts and recovery walk.
    pub(crate) queues: Queues,
    pub(crate) stats: Stats,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("index", &self.index)
            .field("version", &self.caps.version)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Brings a device up: checks it is not halted, reads and validates its capabilities,
    /// builds and validates the configuration (before touching the device), resets it,
    /// programs groups and WQs, enables the device and every WQ and verifies their states.
    /// `index` is N of `dsaN` (accel-config naming, enumeration order).
    pub fn new(
        hw: Hardware,
        index: u32,
        source: ConfigSource,
        options: DeviceOptions,
    ) -> Result<Arc<Device>, DsaError> {
        let gensts = hw.regs.read(bar0::GENSTS);
        if gensts.state() == DeviceState::Halted {
            return Err(DsaError::Halted {
                reset: gensts.reset_type(),
            });
        }
        let pci = hw.pci.info();
        let caps = Capabilities::read(&*hw.regs, pci.msix_entries)?;
        let need = u64::from(caps.num_wqs) * WQ_PORTAL_STRIDE;
        if hw.portals.size() < need {
            return Err(DsaError::PortalBarTooSmall {
                have: hw.portals.size(),
                need,
            });
        }
        let config = match source {
            ConfigSource::Default => DeviceConfig::default_for(&caps, &pci),
            ConfigSource::Config(c) => c,
            ConfigSource::AccelConfig(a) => match a.resolve(index, &caps) {
                Some(r) => r?,
                None => DeviceConfig::default_for(&caps, &pci),
            },
        };
        config.validate(&caps, &pci)?;
        if let Some(p) = options.kernel_pasid
            && (p >= 1 << 20 || !pci.pasid_enabled)
        {
            return Err(DsaError::BadCapability(
                "kernel PASID needs PCI PASID enabled and a 20-bit value",
            ));
        }
        let mut wqs: Vec<Option<Wq>> = (0..caps.num_wqs).map(|_| None).collect();
        for w in &config.wqs {
            let (space, privileged) = match w.mode {
                WqMode::Dedicated => match options.kernel_pasid {
                    Some(p) => (Some(AddressSpace::Pasid(p)), pci.privileged_mode),
                    None => (Some(AddressSpace::NoPasid), true),
                },
                WqMode::Shared => (None, false),
            };
            let entry = u16::from(w.id) + 1;
            // A user WQ never interrupts the kernel: no MSI-X entry (its process's
            // descriptors use IMS handles, checked against its PASID).
            let user = w.wq_type == WqType::User && w.mode == WqMode::Dedicated;
            let msix_entry = (entry < pci.msix_entries && !user).then_some(entry);
            let pasid_en = space != Some(AddressSpace::NoPasid);
            wqs[w.id as usize] = Some(Wq {
                config: w.clone(),
                space,
                privileged,
                limits: WqLimits {
                    max_transfer: 1u64 << w.transfer_shift(),
                    max_batch: 1u32 << w.batch_shift(),
                    block_on_fault: w.block_on_fault,
                },
                msix_entry,
                msix_pasid: if pasid_en { options.kernel_pasid } else { None },
                int_handle: AtomicU32::new(NO_HANDLE),
                credits: Arc::new(Credits::new(u32::from(w.size))),
                lent: AtomicU32::new(0),
            });
        }
        let queues = Queues::new(
            wqs.iter().flatten().map(|w| (w.config.id, w.msix_entry)),
            wqs.len(),
            options.max_submitters,
        );
        let dev = Arc::new(Device {
            hw,
            index,
            caps,
            config,
            options,
            wqs,
            cmd_lock: spin::Mutex::new(()),
            recover_lock: spin::Mutex::new(()),
            recovery_hooks: spin::Mutex::new(Vec::new()),
            state: AtomicU8::new(RunState::Quiescing as u8),
            epoch: AtomicU64::new(0),
            queues,
            stats: Stats::new(),
        });
        dev.configure()?;
        dev.set_state(RunState::Running);
        info!(
            "dsa{}: version {}.{}, {} WQs, {} engines, {} groups; configured {} WQ(s)",
            index,
            dev.caps.version.major(),
            dev.caps.version.minor(),
            dev.caps.num_wqs,
            dev.caps.num_engines,
            dev.caps.num_groups,
            dev.config.wqs.len()
        );
        Ok(dev)
    }

    /// The device's index `n`: it is `dsa<n>` in logs and accel-config files.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The capabilities read at bring-up (GENCAP, WQCAP, GRPCAP, ENGCAP, OPCAP, §9.2).
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }
    /// The configuration the device was brought up with.
    pub fn config(&self) -> &DeviceConfig {
        &self.config
    }
    /// The driver policy given to [`Device::new`].
    pub fn options(&self) -> &DeviceOptions {
        &self.options
    }
    /// The current run state.
    #[inline]
    pub fn state(&self) -> RunState {
        RunState::from_u8(self.state.load(Ordering::Acquire))
    }
    /// Whether submissions are accepted now (the submit path's check).
    #[inline(always)]
    pub(crate) fn is_running(&self) -> bool {
        self.state.load(Ordering::Acquire) == RunState::Running as u8
    }
    pub(crate) fn set_state(&self, s: RunState) {
        self.state.store(s as u8, Ordering::Release);
    }
    /// The configured WQ `id`.
    pub fn wq(&self, id: u8) -> Option<&Wq> {
        self.wqs.get(id as usize).and_then(Option::as_ref)
    }
    /// Configured WQs in id order.
    pub fn wqs(&self) -> impl Iterator<Item = &Wq> {
        self.wqs.iter().flatten()
    }
    /// First configured WQ of the given mode (user WQs excluded: they are not the kernel's).
    pub fn wq_of_mode(&self, mode: WqMode) -> Option<&Wq> {
        self.wqs()
            .find(|w| w.mode() == mode && !w.is_user_dedicated())
    }

    /// Lends a free user dedicated WQ (accel-config `type` `user`) to the process with
    /// `pasid`: WQCFG PASID = `pasid` with PASID enable, privilege 0 (written while the WQ is
    /// disabled: DSA spec §9.2.24), then Enable WQ (§9.2.12). The process then submits with
    /// MOVDIR64B to the WQ's portal; the device takes PASID and privilege from WQCFG, never
    /// from the descriptor (§3.2). Returns the WQ id; `None` when no user WQ is free.
    pub fn lend_wq(&self, pasid: u32) -> Result<Option<u8>, DsaError> {
        if pasid >= 1 << 20 {
            return Err(DsaError::BadCapability("PASID wider than 20 bits"));
        }
        for w in self.wqs().filter(|w| w.is_user_dedicated()) {
            if w.lent
                .compare_exchange(0, LENT | pasid, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let id = w.config.id;
            let c = self.read_wqcfg(id).with_pasid(pasid, true).with_priv(false);
            self.write_wqcfg(id, &c);
            let r = self
                .command(Command::EnableWq, u32::from(id), &[])
                .and_then(|_| match self.read_wqcfg(id).state() {
                    WqState::Enabled => Ok(()),
                    st => Err(DsaError::UnexpectedState {
                        what: "user WQ after enable",
                        value: st as u32,
                    }),
                });
            if let Err(e) = r {
                w.lent.store(0, Ordering::Release);
                return Err(e);
            }
            return Ok(Some(id));
        }
        Ok(None)
    }

    /// Takes user WQ `wq` back: Disable WQ (the device finishes the descriptors it holds
    /// first, DSA spec §9.2.12), then it is free for the next process.
    pub fn reclaim_wq(&self, wq: u8) -> Result<(), DsaError> {
        let w = self.wq(wq).ok_or(DsaError::NoSuchWq(wq))?;
        if !w.is_user_dedicated() || w.lent_to().is_none() {
            return Err(DsaError::NoSuchWq(wq));
        }
        let r = self.command(
            Command::DisableWq,
            dsa_spec::wq_bitmap_operand(wq),
            &[cmd_err::WQ_NOT_EN],
        );
        w.lent.store(0, Ordering::Release);
        r.map(|_| ())
    }
    pub(crate) fn clock(&self) -> &dyn Clock {
        &*self.hw.clock
    }
    /// The device's PCI configuration state now (read from the kernel each call).
    pub fn pci_info(&self) -> PciInfo {
        self.hw.pci.info()
    }

    /// How many SWERRs with `code` the misc interrupt has seen.
    pub fn swerr_count(&self, code: u8) -> u32 {
        self.stats.swerr_by_code[code as usize].load(Ordering::Relaxed)
    }
    /// The last SWERR seen, if any.
    pub fn last_swerr(&self) -> Option<SwError> {
        let w: [u64; 4] =
            core::array::from_fn(|i| self.stats.last_swerr[i].load(Ordering::Relaxed));
        (w[0] & 1 == 1).then(|| SwError::decode(&SwErr(w)))
    }
    /// How many halts the misc interrupt has noted (a halt already noted is not counted
    /// again until the device runs).
    pub fn halt_count(&self) -> u64 {
        self.stats.halts.load(Ordering::Relaxed)
    }
    /// ENQCMDS submissions the device refused (Retry) so far; each was retried.
    pub fn enqcmds_retries(&self) -> u64 {
        self.stats.enq_retries.load(Ordering::Relaxed)
    }
    /// Dedicated-WQ submissions that had to wait for a credit.
    pub fn credit_waits(&self) -> u64 {
        self.stats.credit_waits.load(Ordering::Relaxed)
    }
    /// How many recoveries ran (successful or not).
    pub fn recovery_count(&self) -> u64 {
        self.stats.recoveries.load(Ordering::Relaxed)
    }

    // ------------------------------------------------------------------ commands

    /// Runs one command and returns CMDSTATUS (bounded wait; commands are serialized).
    fn command_raw(&self, cmd: Command, operand: u32) -> Result<CmdStatus, DsaError> {
        if !self.caps.command_supported(cmd) {
            return Err(DsaError::CommandUnsupported(cmd));
        }
        let _g = self.cmd_lock.lock();
        let regs = &*self.hw.regs;
        let clock = self.clock();
        let timeout = self.options.command_timeout_ns;
        let start = clock.now_ns();
        let timed_out = |_| DsaError::CommandTimeout { cmd, operand };
        let done = || {
            let s = regs.read(bar0::CMDSTATUS);
            (!s.active()).then_some(s)
        };
        // A command still active (from before a reset, say) would make ours be dropped.
        hwio::wait_until(clock, timeout, done).map_err(timed_out)?;
        regs.write(bar0::CMD, CmdReg::new(cmd, operand, false));
        // One bound for both waits.
        let left = timeout.saturating_sub(clock.now_ns().saturating_sub(start));
        let s = hwio::wait_until(clock, left, done).map_err(timed_out)?;
        debug!(
            "dsa{}: {:?} {:#x} -> {:#04x}",
            self.index,
            cmd,
            operand,
            s.error()
        );
        Ok(s)
    }

    /// Runs a command, accepting the listed error codes besides success.
    fn command(&self, cmd: Command, operand: u32, also_ok: &[u8]) -> Result<u16, DsaError> {
        let s = self.command_raw(cmd, operand)?;
        if s.error() == cmd_err::SUCCESS || also_ok.contains(&s.error()) {
            Ok(s.result())
        } else {
            Err(DsaError::Command {
                cmd,
                operand,
                status: s.error(),
            })
        }
    }

    fn reset_device(&self) -> Result<(), DsaError> {
        self.command(Command::ResetDevice, 0, &[])?;
        let s = self.hw.regs.read(bar0::GENSTS);
        if s.state() != DeviceState::Disabled {
            return Err(DsaError::UnexpectedState {
                what: "device after reset",
                value: s.0,
            });
        }
        Ok(())
    }

    /// WQ `id`'s WQCFG entry (the eight dwords of DSA 1.0; all-ones outside the table).
    fn read_wqcfg(&self, id: u8) -> WqCfg {
        match self.caps.wqcfg_table().entry(u64::from(id)) {
            Some(base) => self.hw.regs.block(base, 32).read(wqcfg_entry::ENTRY),
            None => WqCfg([u32::MAX; 8]),
        }
    }

    fn write_wqcfg(&self, id: u8, c: &WqCfg) {
        // Dwords 6–7 hold status and reserved bits: never written (the block ends before
        // them, and before the end of a smaller entry).
        let len = (self.caps.wqcfg_entry_size).min(4 * wqcfg::DW_STATUS as u64);
        if let Some(base) = self.caps.wqcfg_table().entry(u64::from(id)) {
            self.hw.regs.block(base, len).write(wqcfg_entry::ENTRY, *c);
        }
    }

    /// Reset, program, enable (DSA spec: Reset Device and Enable Device/WQ, §9.2.12;
    /// GRPCFG/WQCFG, §9.2.23–§9.2.24).
    fn configure(&self) -> Result<(), DsaError> {
        let regs = &*self.hw.regs;
        self.reset_device()?;
        regs.write(
            bar0::GENCTRL,
            GenCtrl::SWERR_INT_ENABLE | GenCtrl::HALT_INT_ENABLE,
        );
        let any_pasid = self.wqs().any(|w| w.space != Some(AddressSpace::NoPasid));
        let mut gencfg = GenCfg::from_bits_retain(u32::from(self.config.read_buffer_limit));
        if any_pasid {
            // Unprivileged PASID clients may request completion interrupts (§4.5).
            gencfg |= GenCfg::USER_INT_ENABLE;
        }
        regs.write(bar0::GENCFG, gencfg);
        for g in 0..self.caps.num_groups {
            let mut e = GrpCfg::default();
            if let Some(gc) = self.config.groups.iter().find(|x| x.id == g) {
                e.engines = gc.engines;
                for w in self.config.wqs.iter().filter(|w| w.group == g) {
                    e.wqs[(w.id / 64) as usize] |= 1 << (w.id % 64);
                }
                // Linux defaults for DSA ≤ 2.0: TC-A = TC-B = 1.
                let mut flags = GroupFlags::empty()
                    .with_tc_a(gc.tc_a.unwrap_or(1))
                    .with_tc_b(gc.tc_b.unwrap_or(1));
                let raw = flags.bits()
                    | u64::from(gc.use_read_buffer_limit) << 7
                    | u64::from(gc.read_buffers_reserved) << 8
                    | u64::from(gc.read_buffers_allowed) << 20
                    | u64::from(gc.desc_progress_limit) << 32
                    | u64::from(gc.batch_progress_limit) << 36;
                flags = GroupFlags::from_bits_retain(raw);
                e.flags = flags;
            }
            // Qwords 6–7 are reserved: the block ends before them.
            if let Some(base) = self.caps.grpcfg_table().entry(u64::from(g)) {
                regs.block(base, 48).write(grpcfg::ENTRY, e);
            }
        }
        for id in 0..self.caps.num_wqs {
            let mut c = self.read_wqcfg(id);
            match self.wq(id) {
                None => c = c.with_size(0),
                Some(w) => {
                    let cfg = &w.config;
                    let (pasid, pasid_en) = match (cfg.mode, w.space) {
                        (WqMode::Shared, _) => (0, true),
                        (_, Some(AddressSpace::Pasid(p))) => (p, true),
                        _ => (0, false),
                    };
                    c = c
                        .with_size(cfg.size)
                        .with_threshold(cfg.threshold)
                        .with_mode(cfg.mode)
                        .with_bof(cfg.block_on_fault)
                        .with_priority(cfg.priority)
                        .with_pasid(pasid, pasid_en)
                        .with_priv(w.privileged)
                        .with_max_xfer_shift(cfg.transfer_shift())
                        .with_max_batch_shift(cfg.batch_shift());
                    let set = |c: &mut WqCfg, bit: u32, on: bool| {
                        c.0[wqcfg::DW_MODE] =
                            (c.0[wqcfg::DW_MODE] & !bit) | if on { bit } else { 0 };
                    };
                    set(&mut c, wqcfg::ATS_DISABLE, cfg.ats_disable);
                    set(&mut c, wqcfg::PRS_DISABLE, cfg.prs_disable);
                }
            }
            self.write_wqcfg(id, &c);
        }
        self.command(Command::EnableDevice, 0, &[cmd_err::DEV_ENABLED])?;
        let s = regs.read(bar0::GENSTS);
        if s.state() != DeviceState::Enabled {
            return Err(DsaError::UnexpectedState {
                what: "device after enable",
                value: s.0,
            });
        }
        for w in self.wqs() {
            let id = w.config.id;
            if w.is_user_dedicated() {
                // Enabled only when lent; a reconfiguration (reset) ends any lending.
                w.lent.store(0, Ordering::Release);
                continue;
            }
            if let Some(entry) = w.msix_entry {
                let perm = match w.msix_pasid {
                    Some(p) => MsixPerm::PASID_EN.with_pasid(p),
                    None => MsixPerm::empty(),
                };
                regs.block(self.caps.msixperm_off(entry), 8)
                    .write(msixperm::ENTRY, perm);
                let handle = if self.caps.requires_int_handles() {
                    self.command(
                        Command::RequestIntHandle,
                        dsa_spec::int_handle_operand(entry, false),
                        &[],
                    )?
                } else {
                    entry
                };
                w.int_handle.store(u32::from(handle), Ordering::Release);
            }
            self.command(Command::EnableWq, u32::from(id), &[cmd_err::WQ_ENABLED])?;
            let st = self.read_wqcfg(id).state();
            if st != WqState::Enabled {
                return Err(DsaError::UnexpectedState {
                    what: "WQ after enable",
                    value: st as u32,
                });
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ quiesce

    /// Stops new submissions and waits for the ones in progress (bounded). Management
    /// operations that quiesce run one at a time.
    fn quiesce(&self) -> Result<QuiesceGuard<'_>, DsaError> {
        let clock = self.clock();
        let deadline = clock
            .now_ns()
            .saturating_add(self.options.command_timeout_ns);
        // Running → Quiescing (another quiescer: wait for it to finish; anything else: the
        // device is not usable).
        hwio::wait_until(clock, self.options.command_timeout_ns, || {
            match self.state.compare_exchange(
                RunState::Running as u8,
                RunState::Quiescing as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Some(Ok(())),
                Err(v) if v == RunState::Quiescing as u8 => None,
                Err(_) => Some(Err(DsaError::Halted {
                    reset: self.hw.regs.read(bar0::GENSTS).reset_type(),
                })),
            }
        })
        .map_err(|_| DsaError::QuiesceTimeout)??;
        let guard = QuiesceGuard { dev: self };
        if !self.queues.wait_submissions(|| {
            clock.relax();
            clock.now_ns() < deadline
        }) {
            return Err(DsaError::QuiesceTimeout);
        }
        Ok(guard)
    }

    // ------------------------------------------------------------------ drain / abort

    /// Drain WQ: every descriptor submitted to it before has completed (and been reaped).
    pub fn drain_wq(&self, wq: u8) -> Result<(), DsaError> {
        self.wq(wq).ok_or(DsaError::NoSuchWq(wq))?;
        self.command(Command::DrainWq, dsa_spec::wq_bitmap_operand(wq), &[])?;
        self.sweep(|s| s.wq == wq, false);
        Ok(())
    }
    /// Abort WQ: queued descriptors are dropped; their operations fail with `Aborted`.
    pub fn abort_wq(&self, wq: u8) -> Result<(), DsaError> {
        self.wq(wq).ok_or(DsaError::NoSuchWq(wq))?;
        let _q = self.quiesce()?;
        self.command(Command::AbortWq, dsa_spec::wq_bitmap_operand(wq), &[])?;
        self.sweep(|s| s.wq == wq, true);
        Ok(())
    }
    /// Drain PASID: every descriptor of `pasid` has completed.
    pub fn drain_pasid(&self, pasid: u32) -> Result<(), DsaError> {
        self.command(Command::DrainPasid, pasid & 0xF_FFFF, &[])?;
        self.sweep(|s| s.request_pasid == Some(pasid), false);
        Ok(())
    }
    /// Abort PASID: queued descriptors of `pasid` are dropped and fail with `Aborted`.
    pub fn abort_pasid(&self, pasid: u32) -> Result<(), DsaError> {
        let _q = self.quiesce()?;
        self.command(Command::AbortPasid, pasid & 0xF_FFFF, &[])?;
        self.sweep(|s| s.request_pasid == Some(pasid), true);
        Ok(())
    }
    /// Drain All: every descriptor submitted before the call has completed (CMD code 3,
    /// Intel DSA Architecture Specification rev 3.0, §9.2.12).
    pub fn drain_all(&self) -> Result<(), DsaError> {
        self.command(Command::DrainAll, 0, &[])?;
        self.sweep(|_| true, false);
        Ok(())
    }
    /// Abort All: every queued descriptor is dropped and its operation fails with `Aborted`
    /// (CMD code 4, §9.2.12); submissions are refused while it runs.
    pub fn abort_all(&self) -> Result<(), DsaError> {
        let _q = self.quiesce()?;
        self.command(Command::AbortAll, 0, &[])?;
        self.sweep(|_| true, true);
        Ok(())
    }

    /// Reaps every submitter matching `filter`; with `fail`, pending operations without a
    /// completion record are failed as aborted (only valid once the device can no longer
    /// write them: after an abort command or a reset).
    fn sweep(&self, filter: impl Fn(&Ring) -> bool, fail: bool) -> usize {
        self.queues.sweep(filter, fail) as usize
    }

    /// Delivers the completed callback operations of every submitter on `wq` (interrupts;
    /// a dedicated WQ out of credits). Never blocks.
    pub fn reap_wq(&self, wq: u8) -> usize {
        self.queues.reap_wq(wq) as usize
    }

    // ------------------------------------------------------------------ interrupts

    /// MSI-X entry point: the kernel's handler for vector `entry` of this device calls it
    /// (interrupt context; never blocks). Entry 0 is the misc vector.
    #[inline]
    pub fn handle_msix(&self, entry: u16) -> MiscEvents {
        if entry == 0 {
            return self.handle_misc_interrupt();
        }
        // The WQ whose completion entry this is (see `Device::new`).
        self.queues.reap_msix(entry);
        MiscEvents::empty()
    }

    /// Misc interrupt (DSA spec: INTCAUSE §9.2.11, SWERROR §9.2.15): acknowledges INTCAUSE,
    /// decodes and logs SWERR, notes a halt. Recovery itself runs later in thread context ([`Device::recover`]).
    pub fn handle_misc_interrupt(&self) -> MiscEvents {
        self.stats.misc_interrupts.fetch_add(1, Ordering::Relaxed);
        let regs = &*self.hw.regs;
        let cause = regs.read(bar0::INTCAUSE);
        if !cause.is_empty() {
            regs.write(bar0::INTCAUSE, cause);
        }
        let mut ev = MiscEvents::empty();
        if cause.contains(IntCause::SOFTWARE_ERROR) {
            ev |= MiscEvents::SOFTWARE_ERROR;
            self.service_swerr();
        }
        if cause.contains(IntCause::COMMAND_COMPLETED) {
            ev |= MiscEvents::COMMAND_COMPLETED;
        }
        if cause.contains(IntCause::INT_HANDLES_REVOKED) {
            ev |= MiscEvents::HANDLES_REVOKED;
            warn!(
                "dsa{}: interrupt handles revoked; recovery re-requests them",
                self.index
            );
            self.mark_halted();
        }
        if cause.intersects(IntCause::OCCUPANCY | IntCause::PERFMON_OVERFLOW | IntCause::EVL) {
            ev |= MiscEvents::OTHER;
        }
        let halted = cause.contains(IntCause::HALTED)
            || regs.read(bar0::GENSTS).state() == DeviceState::Halted;
        if halted {
            ev |= MiscEvents::HALTED;
            self.mark_halted();
        }
        ev
    }

    fn mark_halted(&self) {
        let prev = self.state.swap(RunState::Halted as u8, Ordering::AcqRel);
        if prev != RunState::Halted as u8 {
            self.stats.halts.fetch_add(1, Ordering::Relaxed);
            let s = self.hw.regs.read(bar0::GENSTS);
            error!(
                "dsa{}: device halted (GENSTS {:#x}, needs {:?} reset)",
                self.index,
                s.0,
                s.reset_type()
            );
        }
    }

    fn service_swerr(&self) {
        let regs = &*self.hw.regs;
        let s = regs.read(bar0::SWERROR);
        let w = s.0;
        if !s.valid() {
            return;
        }
        // Clears Valid and Overflow (qword 0 bits 1:0, RW1C); the other qwords are RO.
        regs.write(bar0::SWERROR, s.ack());
        let e = SwError::decode(&s);
        self.stats.swerr_by_code[e.code as usize].fetch_add(1, Ordering::Relaxed);
        for (i, v) in w.iter().enumerate() {
            self.stats.last_swerr[i].store(*v, Ordering::Relaxed);
        }
        error!("dsa{}: {e}", self.index);
        // Errors with the completion record itself never produce one: fail that operation.
        if matches!(
            e.code,
            dsa_spec::status::CR_PAGE_FAULT | dsa_spec::status::CR_ALIGN
        ) && let Some(wq) = e.wq
        {
            self.queues.fail_record(wq, e.fault_addr);
        }
    }

    // ------------------------------------------------------------------ recovery

    /// Recovers a halted device (GENSTS Halted, DSA spec §9.2.10; it needs a Reset Device,
    /// §9.2.12): Reset Device, rewrite the whole configuration, enable the device and every WQ; then every operation that was in
    /// flight either completes (its record was written before the halt) or fails with
    /// `Aborted`. Also usable to re-check a device believed healthy (no-op then).
    pub fn recover(&self) -> Result<bool, DsaError> {
        // One recovery at a time; a caller arriving meanwhile just keeps waiting.
        let Some(_r) = self.recover_lock.try_lock() else {
            return Ok(false);
        };
        let gensts = self.hw.regs.read(bar0::GENSTS);
        let halted = gensts.state() == DeviceState::Halted;
        let wq_lost = self.wqs().any(|w| {
            !w.is_user_dedicated() && self.read_wqcfg(w.config.id).state() != WqState::Enabled
        });
        if !halted && !wq_lost && self.state() != RunState::Halted {
            return Ok(false);
        }
        if halted && gensts.reset_type() != ResetType::Software {
            self.set_state(RunState::Failed);
            self.sweep(|_| true, true);
            return Err(DsaError::Unrecoverable {
                reset: gensts.reset_type(),
            });
        }
        // Refuse new submissions and let the ones in flight reach their portal store.
        self.set_state(RunState::Quiescing);
        let clock = self.clock();
        let deadline = clock
            .now_ns()
            .saturating_add(self.options.command_timeout_ns);
        if !self.queues.wait_submissions(|| {
            clock.relax();
            clock.now_ns() < deadline
        }) {
            self.set_state(RunState::Halted);
            return Err(DsaError::QuiesceTimeout);
        }
        warn!(
            "dsa{}: recovering (halted: {halted}, WQ disabled: {wq_lost})",
            self.index
        );
        let r = self.configure();
        // After the reset the device writes nothing more for the old descriptors.
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let n = self.sweep(|_| true, true);
        self.stats.recoveries.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok(()) => {
                info!(
                    "dsa{}: recovered; {n} in-flight operation(s) finished or failed back",
                    self.index
                );
                // State the reset lost and the configuration does not hold (IMS entries):
                // restored before anyone may submit again.
                let hooks: Vec<RecoveryHook> = self.recovery_hooks.lock().clone();
                let gone: Vec<RecoveryHook> = hooks.into_iter().filter(|h| !h(self)).collect();
                if !gone.is_empty() {
                    self.recovery_hooks
                        .lock()
                        .retain(|h| !gone.iter().any(|g| Arc::ptr_eq(g, h)));
                }
                self.set_state(RunState::Running);
                Ok(true)
            }
            Err(e) => {
                error!("dsa{}: recovery failed: {e}", self.index);
                self.set_state(RunState::Failed);
                Err(e)
            }
        }
    }

    /// Registers `hook` to run after every successful [`recover`](Self::recover), once the
    /// configuration is rewritten and before submissions are accepted again: state the reset
    /// lost that the device configuration does not hold (e.g. IMS entries). The hook returns
    /// `false` when it is no longer needed and is then dropped. Hooks must not call
    /// `recover` and should hold the device weakly (the device holds them).
    pub fn add_recovery_hook(&self, hook: RecoveryHook) {
        self.recovery_hooks.lock().push(hook);
    }

    /// Orderly shutdown (DSA spec: the Drain/Disable WQ and Disable/Reset Device commands,
    /// §9.2.12): drain and disable every WQ, disable and reset the device. Submitters must be dropped first.
    pub fn shutdown(&self) -> Result<(), DsaError> {
        let _q = self.quiesce()?;
        for w in self.wqs() {
            let op = dsa_spec::wq_bitmap_operand(w.config.id);
            self.command(Command::DrainWq, op, &[cmd_err::WQ_NOT_EN])?;
            if let Some(e) = w.msix_entry {
                // The operand names the table entry, as Request Interrupt Handle's does (our
                // reading of the DSA specification's command table, and the model's; Linux
                // idxd passes the handle value instead: unconfirmed which real devices want).
                if self.caps.requires_int_handles() && w.int_handle().is_some() {
                    self.command(
                        Command::ReleaseIntHandle,
                        dsa_spec::int_handle_operand(e, false),
                        &[],
                    )?;
                }
                self.hw
                    .regs
                    .block(self.caps.msixperm_off(e), 8)
                    .write(msixperm::ENTRY, MsixPerm::empty());
            }
            self.command(Command::DisableWq, op, &[cmd_err::WQ_NOT_EN])?;
        }
        self.command(Command::DisableDevice, 0, &[cmd_err::DIS_DEV_EN])?;
        self.reset_device()?;
        self.hw.regs.write(bar0::GENCTRL, GenCtrl::empty());
        self.set_state(RunState::Failed);
        Ok(())
    }

    /// Request Interrupt Handle (0x0D) for MSI-X or IMS table entry `index`: the value
    /// descriptors must carry to name it. Devices without CMDCAP bit 13 use the index itself.
    pub fn request_int_handle(&self, index: u16, ims: bool) -> Result<u16, DsaError> {
        if !self.caps.requires_int_handles() {
            return Ok(index);
        }
        let op = dsa_spec::int_handle_operand(index, ims);
        self.command(Command::RequestIntHandle, op, &[])
    }

    /// Release Interrupt Handle (0x0E) for a table entry (no-op without CMDCAP bit 13).
    pub fn release_int_handle(&self, index: u16, ims: bool) -> Result<(), DsaError> {
        if !self.caps.requires_int_handles() {
            return Ok(());
        }
        let op = dsa_spec::int_handle_operand(index, ims);
        self.command(Command::ReleaseIntHandle, op, &[]).map(|_| ())
    }
}

/// Restores the run state after a drain/abort.
pub(crate) struct QuiesceGuard<'a> {
    dev: &'a Device,
}
impl Drop for QuiesceGuard<'_> {
    fn drop(&mut self) {
        // A halt noticed meanwhile wins over the restore.
        let _ = self.dev.state.compare_exchange(
            RunState::Quiescing as u8,
            RunState::Running as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }
}
