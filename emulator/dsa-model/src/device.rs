//! Register file, commands, WQs, portals, interrupts and engine scheduling.

use crate::{
    Config, ConfigError, DmaSpace, IrqTable, Layout, Platform, PortalResult, StoreKind, TraceEvent,
    irq_reason, pci,
};
use dsa_fault_inject as fi;
use dsa_spec::portal::{PortalKind, bar2_size, decode_portal};
use dsa_spec::regs::{cmd_err, off, swerr_code};
use dsa_spec::tables::{
    GRPCFG_ENTRY_SIZE, IMS_ENTRY_SIZE, ImsCtrl, ImsEntry, MSIXPERM_ENTRY_SIZE, MsixPerm, WqMode,
    WqState, msix, wqcfg,
};
use dsa_spec::{
    CmdReg, CmdStatus, Command, DeviceState, EngCap, GenCap, GenCfg, GenCtrl, GenSts, GrpCap,
    GrpCfg, IntCause, Offsets, OpCap, Opcode, ResetType, SwErr, SwErrFlags, WqCap, WqCfg,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

pub(crate) const MSIXPERM_OFF: u64 = 0x400;
pub(crate) const GRPCFG_OFF: u64 = 0x600;
pub(crate) const WQCFG_OFF: u64 = 0x800;
pub(crate) const PERFMON_OFF: u64 = 0x2000;
pub(crate) const MSIX_TABLE_OFF: u64 = 0x4000;
pub(crate) const MSIX_PBA_OFF: u64 = 0x5000;
pub(crate) const IMS_OFF: u64 = 0x8000;
/// The model advertises WQCFG size code 0 (32-byte entries; `WQCFG_WMASK` covers them).
const WQCFG_ENTRY: u64 = WqCap::empty().wqcfg_entry_size();
/// Last qword of the 4-qword SWERROR register.
const SWERR_LAST: u64 = off::SWERROR + 0x18;
/// Tag bit of handles returned by Request Interrupt Handle.
pub(crate) const HANDLE_TAG: u16 = 0x8000;
/// Writable bits of WQCFG dwords 0..5 (dw0 only while the device is disabled).
const WQCFG_WMASK: [u32; 8] = [0xFFFF, 0xFFFF, 0x3FFF_FFFF, 0x1FF, 0x1_FFFF, 0x1_FFFF, 0, 0];
/// Writable bits of the group flags (TC-A, TC-B); read-buffer controls are not advertised.
const GRPFLAGS_WMASK: u64 = 0x3F;
const MSIXPERM_WMASK: u32 = 0xFFFF_F00C;
const IMS_CTRL_WMASK: u32 = 0xFFFF_F00D;

/// A descriptor accepted by a portal, with what the device derived at submission time.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub desc: [u8; 64],
    pub wq: usize,
    pub ims: bool,
    /// Effective PASID (meaningful when the WQ has PASID enabled).
    pub pasid: u32,
    pub privileged: bool,
    pub gseq: u64,
    pub epoch: u64,
    pub wqcfg: WqCfg,
}

impl Job {
    pub fn space(&self) -> DmaSpace {
        if self.wqcfg.pasid_en() {
            Some((self.pasid, self.privileged))
        } else {
            None
        }
    }
    /// The PASID of the device's requests for this job: the descriptor's on a shared WQ,
    /// WQCFG's on a dedicated one (None: requests without PASID).
    pub fn request_pasid(&self) -> Option<u32> {
        self.wqcfg.pasid_en().then_some(self.pasid)
    }
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    wq: usize,
    pasid: Option<u32>,
}

/// Which outstanding descriptors something waits for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Filter {
    wqs: Option<u64>,
    pasid: Option<u32>,
}

impl Filter {
    const ALL: Filter = Filter {
        wqs: None,
        pasid: None,
    };
    fn matches(&self, wq: usize, pasid: Option<u32>) -> bool {
        self.wqs.is_none_or(|m| wq < 64 && (m >> wq) & 1 == 1)
            && self.pasid.is_none_or(|p| pasid == Some(p))
    }
}

#[derive(Clone, Copy, Debug)]
enum CmdPost {
    Nothing,
    DisableDevice,
    DisableWqs(u64),
    ResetWqs(u64),
}

#[derive(Debug)]
struct PendingCmd {
    code: u8,
    operand: u32,
    request_int: bool,
    filter: Filter,
    before: u64,
    post: CmdPost,
}

#[derive(Debug)]
struct PendingDrain {
    job: Job,
    filter: Filter,
}

/// Side effects computed under the lock and performed after it is released.
#[derive(Debug)]
pub(crate) enum Action {
    Msix(u32, u64),
    Msi {
        addr: u64,
        data: u32,
        index: u32,
        reason: u64,
    },
    Trace(TraceEvent),
}

#[derive(Debug)]
pub(crate) struct WqSt {
    pub cfg: WqCfg,
    pub state: WqState,
    pub queue: VecDeque<Job>,
}

#[derive(Debug, Default)]
pub(crate) struct FaultInj {
    pub status: u8,
    pub opcode: u32,
    pub count: u32,
    pub delay_us: u32,
}

#[derive(Debug)]
pub(crate) struct Inner {
    gencfg: u32,
    genctrl: u32,
    state: DeviceState,
    intcause: u32,
    cmd: u32,
    cmdstatus: u32,
    swerr: [u64; 4],
    grpcfg: Vec<GrpCfg>,
    pub wqs: Vec<WqSt>,
    msixperm: Vec<u32>,
    ims: Vec<ImsEntry>,
    msix_table: Vec<u8>,
    pub pci: u32,
    pub epoch: u64,
    next_gseq: u64,
    outstanding: BTreeMap<u64, Outstanding>,
    pending_cmd: Option<PendingCmd>,
    pending_drains: Vec<PendingDrain>,
    handles: [Vec<bool>; 2],
    pub fi: FaultInj,
    stop: bool,
    rr: Vec<usize>,
}

/// Capability register values, fixed at creation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub gencap: GenCap,
    pub wqcap: WqCap,
    pub grpcap: GrpCap,
    pub engcap: EngCap,
    pub opcap: OpCap,
    pub offsets: Offsets,
    pub cmdcap: u64,
}

/// Scratch buffers of one engine.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub a: Vec<u8>,
    pub b: Vec<u8>,
}

/// One DSA device. All methods take `&self`; share it between threads with `Arc`.
pub struct Device {
    pub(crate) cfg: Config,
    pub(crate) caps: Caps,
    layout: Layout,
    pub(crate) platform: Arc<dyn Platform>,
    pub(crate) inner: Mutex<Inner>,
    cv: Condvar,
}

impl core::fmt::Debug for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Device")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

fn bitmask(n: u32) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

impl Inner {
    fn new(cfg: &Config) -> Self {
        Inner {
            gencfg: 0,
            genctrl: 0,
            state: DeviceState::Disabled,
            intcause: 0,
            cmd: 0,
            cmdstatus: 0,
            swerr: [0; 4],
            grpcfg: vec![GrpCfg::default(); cfg.num_groups as usize],
            wqs: (0..cfg.num_wqs)
                .map(|_| WqSt {
                    cfg: WqCfg::default(),
                    state: WqState::Disabled,
                    queue: VecDeque::new(),
                })
                .collect(),
            msixperm: vec![0; cfg.msix_entries as usize],
            ims: vec![ImsEntry::default(); cfg.ims_entries as usize],
            msix_table: Self::msix_reset(cfg.msix_entries),
            pci: 0,
            epoch: 0,
            next_gseq: 0,
            outstanding: BTreeMap::new(),
            pending_cmd: None,
            pending_drains: Vec::new(),
            handles: [
                vec![false; cfg.msix_entries as usize],
                vec![false; cfg.ims_entries as usize],
            ],
            fi: FaultInj::default(),
            stop: false,
            rr: vec![0; cfg.num_engines as usize],
        }
    }

    fn msix_reset(n: u32) -> Vec<u8> {
        let mut t = vec![0u8; n as usize * msix::ENTRY_SIZE as usize];
        for e in t.chunks_exact_mut(msix::ENTRY_SIZE as usize) {
            e[msix::VECTOR_CTRL as usize] = msix::VECTOR_CTRL_MASK as u8;
        }
        t
    }

    /// Returns every register to its reset value and abandons all work (Reset Device, FLR).
    fn reset_registers(&mut self, cfg: &Config, flr: bool) {
        let pci = self.pci;
        let epoch = self.epoch + 1;
        let gseq = self.next_gseq;
        let (cmd, cmdstatus, msix_table, fi, stop) = (
            self.cmd,
            self.cmdstatus,
            std::mem::take(&mut self.msix_table),
            std::mem::take(&mut self.fi),
            self.stop,
        );
        *self = Inner::new(cfg);
        self.pci = pci;
        self.epoch = epoch;
        self.next_gseq = gseq;
        self.stop = stop;
        if !flr {
            self.cmd = cmd;
            self.cmdstatus = cmdstatus;
            self.msix_table = msix_table;
            self.fi = fi;
        }
    }

    fn drop_queued(&mut self, filter: Filter) {
        for w in self.wqs.iter_mut() {
            let outstanding = &mut self.outstanding;
            w.queue.retain(|j| {
                let keep = !filter.matches(j.wq, j.request_pasid());
                if !keep {
                    outstanding.remove(&j.gseq);
                }
                keep
            });
        }
        let outstanding = &mut self.outstanding;
        self.pending_drains.retain(|p| {
            let keep = !filter.matches(p.job.wq, p.job.request_pasid());
            if !keep {
                outstanding.remove(&p.job.gseq);
            }
            keep
        });
    }

    fn blocked(&self, filter: Filter, before: u64) -> bool {
        self.outstanding
            .range(..before)
            .any(|(_, o)| filter.matches(o.wq, o.pasid))
    }
}

impl Device {
    pub fn new(cfg: Config, platform: Arc<dyn Platform>) -> Result<Device, ConfigError> {
        cfg.validate()?;
        let mut gencap = GenCap::OVERLAPPING_COPY
            | GenCap::CACHE_CONTROL_MEM
            | GenCap::DEST_READBACK
            | GenCap::CONFIG_SUPPORT;
        if cfg.block_on_fault {
            gencap |= GenCap::BLOCK_ON_FAULT;
        }
        if !cfg.overlapping_copy {
            gencap.remove(GenCap::OVERLAPPING_COPY);
        }
        if cfg.cmdcap {
            gencap |= GenCap::CMD_CAP;
        }
        let gencap = gencap
            .with_max_xfer_shift(cfg.max_xfer_shift as u8)
            .with_max_batch_shift(cfg.max_batch_shift as u8)
            .with_ims_entries(cfg.ims_entries);
        let mut wqcap = WqCap::OCCUPANCY;
        if cfg.shared_wq {
            wqcap |= WqCap::SHARED_MODE;
        }
        if cfg.dedicated_wq {
            wqcap |= WqCap::DEDICATED_MODE;
        }
        if cfg.priority {
            wqcap |= WqCap::PRIORITY;
        }
        let wqcap = wqcap
            .with_total_wq_size(cfg.total_wq_size as u16)
            .with_num_wqs(cfg.num_wqs as u8);
        let mut opcap = OpCap::default();
        for op in Opcode::DSA_1_0 {
            opcap = opcap.with(op as u8);
        }
        let caps = Caps {
            gencap,
            wqcap,
            grpcap: GrpCap::empty()
                .with_num_groups(cfg.num_groups as u8)
                .with_total_rdbufs(96),
            engcap: EngCap::new(cfg.num_engines as u8, 0, 0),
            opcap,
            offsets: Offsets::new(GRPCFG_OFF, WQCFG_OFF, MSIXPERM_OFF, IMS_OFF, PERFMON_OFF),
            cmdcap: if cfg.cmdcap { 0x7FFE } else { 0 },
        };
        let ims_end = IMS_OFF + u64::from(cfg.ims_entries) * IMS_ENTRY_SIZE;
        let layout = Layout {
            bar0_size: ims_end.max(0x10000).next_power_of_two(),
            bar2_size: bar2_size(cfg.num_wqs),
            msix_table_off: MSIX_TABLE_OFF,
            msix_pba_off: MSIX_PBA_OFF,
            msix_entries: cfg.msix_entries,
            num_workers: cfg.num_engines,
        };
        let inner = Mutex::new(Inner::new(&cfg));
        Ok(Device {
            cfg,
            caps,
            layout,
            platform,
            inner,
            cv: Condvar::new(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the registers in a state worse than
        // what a guest could produce, so keep going rather than propagate the poison.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn run(&self, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Msix(e, reason) => {
                    self.platform.trace(TraceEvent::Irq {
                        table: IrqTable::Msix,
                        index: e,
                        sent: true,
                        reason,
                    });
                    self.platform.msix_notify(e);
                }
                Action::Msi {
                    addr,
                    data,
                    index,
                    reason,
                } => {
                    self.platform.trace(TraceEvent::Irq {
                        table: IrqTable::Ims,
                        index,
                        sent: true,
                        reason,
                    });
                    self.platform.send_msi(addr, data);
                }
                Action::Trace(t) => self.platform.trace(t),
            }
        }
    }

    // ---------------------------------------------------------------- BAR0

    /// BAR0 read of 1, 2, 4 or 8 naturally aligned bytes (others read 0).
    pub fn bar0_read(&self, offset: u64, size: u32) -> u64 {
        if !matches!(size, 1 | 2 | 4 | 8)
            || !offset.is_multiple_of(u64::from(size))
            || offset >= self.layout.bar0_size
        {
            return 0;
        }
        let q = self.read_qword(&self.lock(), offset & !7);
        let shift = (offset & 7) * 8;
        let v = (q >> shift) & bitmask(size * 8);
        self.platform.trace(TraceEvent::RegRead {
            offset,
            size,
            value: v,
        });
        v
    }

    /// BAR0 write of 1, 2, 4 or 8 naturally aligned bytes (others ignored).
    pub fn bar0_write(&self, offset: u64, value: u64, size: u32) {
        self.platform.trace(TraceEvent::RegWrite {
            offset,
            size,
            value,
        });
        if !matches!(size, 1 | 2 | 4 | 8)
            || !offset.is_multiple_of(u64::from(size))
            || offset >= self.layout.bar0_size
        {
            return;
        }
        let shift = (offset & 7) * 8;
        let mask = bitmask(size * 8) << shift;
        let mut acts = Vec::new();
        {
            let mut g = self.lock();
            self.write_qword(
                &mut g,
                offset & !7,
                (value << shift) & mask,
                mask,
                &mut acts,
            );
        }
        self.run(acts);
        self.cv.notify_all();
    }

    fn read_qword(&self, g: &Inner, o: u64) -> u64 {
        let c = &self.caps;
        match o {
            off::VERSION => u64::from(self.cfg.version),
            off::GENCAP => c.gencap.bits(),
            off::WQCAP => c.wqcap.bits(),
            off::GRPCAP => c.grpcap.bits(),
            off::ENGCAP => c.engcap.0,
            0x40..=0x58 => c.opcap.0[((o - 0x40) / 8) as usize],
            0x60 | 0x68 => c.offsets.0[((o - 0x60) / 8) as usize],
            off::GENCFG => u64::from(g.gencfg),
            off::GENCTRL => u64::from(g.genctrl),
            off::GENSTS => u64::from(GenSts::new(g.state, ResetType::Software).0),
            off::INTCAUSE => u64::from(g.intcause),
            off::CMD => u64::from(g.cmd),
            off::CMDSTATUS => u64::from(g.cmdstatus),
            off::CMDCAP => c.cmdcap,
            off::SWERROR..=SWERR_LAST => g.swerr[((o - off::SWERROR) / 8) as usize],
            _ => {
                if let Some(i) =
                    self.table_index(o, MSIXPERM_OFF, MSIXPERM_ENTRY_SIZE, g.msixperm.len())
                {
                    return u64::from(g.msixperm[i]);
                }
                if let Some(i) = self.table_index(o, GRPCFG_OFF, GRPCFG_ENTRY_SIZE, g.grpcfg.len())
                {
                    let q = ((o - GRPCFG_OFF) % GRPCFG_ENTRY_SIZE / 8) as usize;
                    return g.grpcfg[i].to_qwords()[q];
                }
                if let Some(i) = self.table_index(o, WQCFG_OFF, WQCFG_ENTRY, g.wqs.len()) {
                    let dw = ((o - WQCFG_OFF) % WQCFG_ENTRY / 4) as usize;
                    return u64::from(self.wqcfg_dword(g, i, dw))
                        | u64::from(self.wqcfg_dword(g, i, dw + 1)) << 32;
                }
                if o >= MSIX_TABLE_OFF && o < MSIX_TABLE_OFF + g.msix_table.len() as u64 {
                    let b = (o - MSIX_TABLE_OFF) as usize;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&g.msix_table[b..b + 8]);
                    return u64::from_le_bytes(a);
                }
                if let Some(i) = self.table_index(o, IMS_OFF, IMS_ENTRY_SIZE, g.ims.len()) {
                    let e = &g.ims[i];
                    return if o.is_multiple_of(IMS_ENTRY_SIZE) {
                        e.addr
                    } else {
                        u64::from(e.data) | u64::from(e.ctrl.bits()) << 32
                    };
                }
                if self.cfg.fault_injection
                    && (fi::FAULT_INJECT_BASE..fi::FAULT_INJECT_BASE + 0x1000).contains(&o)
                {
                    let r = |x: u64| -> u64 {
                        match x {
                            fi::FI_MAGIC => u64::from(fi::FI_MAGIC_VALUE),
                            fi::FI_FORCE_STATUS => u64::from(g.fi.status),
                            fi::FI_FORCE_OPCODE => u64::from(g.fi.opcode),
                            fi::FI_FORCE_COUNT => u64::from(g.fi.count),
                            fi::FI_DELAY_US => u64::from(g.fi.delay_us),
                            _ => 0,
                        }
                    };
                    let x = o - fi::FAULT_INJECT_BASE;
                    return r(x) | r(x + 4) << 32;
                }
                0
            }
        }
    }

    fn table_index(&self, o: u64, base: u64, entry: u64, n: usize) -> Option<usize> {
        if o < base {
            return None;
        }
        let i = (o - base) / entry;
        (i < n as u64).then_some(i as usize)
    }

    pub(crate) fn bar0_gencfg(&self, g: &Inner) -> GenCfg {
        GenCfg::from_bits_retain(g.gencfg)
    }

    fn wqcfg_dword(&self, g: &Inner, wq: usize, dw: usize) -> u32 {
        let w = &g.wqs[wq];
        match dw {
            0..=5 => w.cfg.0[dw],
            6 => (w.queue.len().min(0xFFFF) as u32) | (w.state as u32) << 30,
            _ => 0,
        }
    }

    fn write_qword(&self, g: &mut Inner, o: u64, val: u64, mask: u64, acts: &mut Vec<Action>) {
        let merge = |old: u64, wmask: u64| (old & !(mask & wmask)) | (val & mask & wmask);
        match o {
            off::GENCFG => {
                if g.state == DeviceState::Disabled {
                    g.gencfg = merge(
                        u64::from(g.gencfg),
                        u64::from(GenCfg::USER_INT_ENABLE.bits()),
                    ) as u32;
                }
            }
            off::GENCTRL => {
                g.genctrl = merge(
                    u64::from(g.genctrl),
                    u64::from((GenCtrl::SWERR_INT_ENABLE | GenCtrl::HALT_INT_ENABLE).bits()),
                ) as u32;
            }
            off::INTCAUSE => g.intcause &= !((val & mask) as u32),
            off::CMD => {
                if mask & 0xFFFF_FFFF == 0xFFFF_FFFF {
                    self.command(g, val as u32, acts);
                }
            }
            off::SWERROR => g.swerr[0] &= !(val & mask & SwErr::ACK_MASK),
            _ => {
                if let Some(i) =
                    self.table_index(o, MSIXPERM_OFF, MSIXPERM_ENTRY_SIZE, g.msixperm.len())
                {
                    g.msixperm[i] =
                        merge(u64::from(g.msixperm[i]), u64::from(MSIXPERM_WMASK)) as u32;
                } else if let Some(i) =
                    self.table_index(o, GRPCFG_OFF, GRPCFG_ENTRY_SIZE, g.grpcfg.len())
                {
                    if g.state != DeviceState::Disabled {
                        return;
                    }
                    let q = ((o - GRPCFG_OFF) % GRPCFG_ENTRY_SIZE / 8) as usize;
                    let mut qs = g.grpcfg[i].to_qwords();
                    let wmask = match q {
                        0..=3 => {
                            let n = i64::from(self.cfg.num_wqs) - 64 * q as i64;
                            if n <= 0 { 0 } else { bitmask(n as u32) }
                        }
                        4 => bitmask(self.cfg.num_engines),
                        5 => GRPFLAGS_WMASK,
                        _ => 0,
                    };
                    qs[q] = merge(qs[q], wmask);
                    g.grpcfg[i] = GrpCfg::from_qwords(&qs);
                } else if let Some(i) = self.table_index(o, WQCFG_OFF, WQCFG_ENTRY, g.wqs.len()) {
                    let dw0 = ((o - WQCFG_OFF) % WQCFG_ENTRY / 4) as usize;
                    for (k, dw) in [dw0, dw0 + 1].into_iter().enumerate() {
                        let m = (mask >> (32 * k)) as u32;
                        let v = (val >> (32 * k)) as u32;
                        if m == 0 || dw > 5 {
                            continue;
                        }
                        let allowed = if dw == 0 {
                            g.state == DeviceState::Disabled
                        } else {
                            g.wqs[i].state == WqState::Disabled
                        };
                        if allowed {
                            let wm = m & WQCFG_WMASK[dw];
                            let c = &mut g.wqs[i].cfg.0[dw];
                            *c = (*c & !wm) | (v & wm);
                        }
                    }
                } else if o >= MSIX_TABLE_OFF && o < MSIX_TABLE_OFF + g.msix_table.len() as u64 {
                    let b = (o - MSIX_TABLE_OFF) as usize;
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&g.msix_table[b..b + 8]);
                    let nv = merge(u64::from_le_bytes(a), u64::MAX);
                    g.msix_table[b..b + 8].copy_from_slice(&nv.to_le_bytes());
                } else if let Some(i) = self.table_index(o, IMS_OFF, IMS_ENTRY_SIZE, g.ims.len()) {
                    if o.is_multiple_of(IMS_ENTRY_SIZE) {
                        let na = merge(g.ims[i].addr, u64::MAX);
                        if ImsEntry::addr_valid(na) {
                            g.ims[i].addr = na;
                        }
                    } else {
                        let e = &mut g.ims[i];
                        e.data = merge(u64::from(e.data), 0xFFFF_FFFF) as u32;
                        let old = e.ctrl.bits();
                        let new = (merge(u64::from(old) << 32, u64::from(IMS_CTRL_WMASK) << 32)
                            >> 32) as u32;
                        e.ctrl = ImsCtrl::from_bits_retain(new);
                        if old & 1 == 1 && new & 1 == 0 && e.ctrl.contains(ImsCtrl::PENDING) {
                            e.ctrl.remove(ImsCtrl::PENDING);
                            if !e.ctrl.contains(ImsCtrl::IGNORE) {
                                acts.push(Action::Msi {
                                    addr: e.addr,
                                    data: e.data,
                                    index: i as u32,
                                    reason: irq_reason::UNMASK_PENDING,
                                });
                            }
                        }
                    }
                } else if self.cfg.fault_injection
                    && (fi::FAULT_INJECT_BASE..fi::FAULT_INJECT_BASE + 0x1000).contains(&o)
                {
                    for k in 0..2u64 {
                        let m = (mask >> (32 * k)) as u32;
                        if m != 0 {
                            self.fi_write(
                                g,
                                o - fi::FAULT_INJECT_BASE + 4 * k,
                                (val >> (32 * k)) as u32,
                                acts,
                            );
                        }
                    }
                }
            }
        }
    }

    fn fi_write(&self, g: &mut Inner, reg: u64, v: u32, acts: &mut Vec<Action>) {
        match reg {
            fi::FI_FORCE_SWERR => {
                acts.push(Action::Trace(TraceEvent::Inject {
                    kind: fi::inject_kind::SWERR,
                    a: u64::from(v) & 0xFF,
                    b: 0,
                }));
                self.swerr(
                    g,
                    SwErr::word0(SwErrFlags::VALID, v as u8, 0, 0, 0),
                    0,
                    0,
                    acts,
                );
            }
            fi::FI_FORCE_STATUS => g.fi.status = v as u8,
            fi::FI_FORCE_OPCODE => g.fi.opcode = v & 0x1FF,
            fi::FI_FORCE_COUNT => {
                g.fi.count = v;
                acts.push(Action::Trace(TraceEvent::Inject {
                    kind: fi::inject_kind::STATUS,
                    a: u64::from(g.fi.status),
                    b: u64::from(v),
                }));
            }
            fi::FI_DELAY_US => {
                g.fi.delay_us = v;
                acts.push(Action::Trace(TraceEvent::Inject {
                    kind: fi::inject_kind::DELAY,
                    a: u64::from(v),
                    b: 0,
                }));
            }
            fi::FI_FORCE_HALT => {
                acts.push(Action::Trace(TraceEvent::Inject {
                    kind: fi::inject_kind::HALT,
                    a: u64::from(v) & 0xFF,
                    b: 0,
                }));
                self.halt(g, (v as u8 != 0).then_some(v as u8), acts);
            }
            _ => {}
        }
    }

    // ---------------------------------------------------------------- errors, halt

    /// Logs a SWERROR (word 0 as composed by the caller) and raises INTCAUSE.0.
    pub(crate) fn swerr(&self, g: &mut Inner, w0: u64, w1: u64, w2: u64, acts: &mut Vec<Action>) {
        let sw = SwErr([w0, w1, w2, 0]);
        let overflow = g.swerr[0] & 1 != 0;
        if overflow {
            g.swerr[0] |= SwErrFlags::OVERFLOW.bits();
        } else {
            g.swerr = [w0 | SwErrFlags::VALID.bits(), w1, w2, 0];
        }
        acts.push(Action::Trace(TraceEvent::SwErr {
            code: sw.code(),
            wq: sw.wq(),
            opcode: sw.opcode(),
            overflow,
        }));
        g.intcause |= IntCause::SOFTWARE_ERROR.bits();
        if g.genctrl & GenCtrl::SWERR_INT_ENABLE.bits() != 0 {
            acts.push(Action::Msix(0, irq_reason::MISC));
        }
    }

    fn sw_only(&self, g: &mut Inner, code: u8, wq: Option<usize>, acts: &mut Vec<Action>) {
        let mut f = SwErrFlags::VALID;
        if wq.is_some() {
            f |= SwErrFlags::WQ_INDEX_VALID;
        }
        self.swerr(
            g,
            SwErr::word0(f, code, wq.unwrap_or(0) as u8, 0, 0),
            0,
            0,
            acts,
        );
    }

    fn halt(&self, g: &mut Inner, code: Option<u8>, acts: &mut Vec<Action>) {
        if let Some(c) = code {
            self.sw_only(g, c, None, acts);
        }
        g.state = DeviceState::Halted;
        g.epoch += 1;
        g.drop_queued(Filter::ALL);
        g.intcause |= IntCause::HALTED.bits();
        if g.genctrl & GenCtrl::HALT_INT_ENABLE.bits() != 0 {
            acts.push(Action::Msix(0, irq_reason::MISC));
        }
        if let Some(p) = g.pending_cmd.take() {
            self.finish_cmd(
                g,
                p.code,
                p.operand,
                p.request_int,
                cmd_err::INTERNAL,
                0,
                acts,
            );
        }
    }

    // ---------------------------------------------------------------- commands

    #[allow(clippy::too_many_arguments)]
    fn finish_cmd(
        &self,
        g: &mut Inner,
        code: u8,
        operand: u32,
        req_int: bool,
        err: u8,
        result: u16,
        acts: &mut Vec<Action>,
    ) {
        g.cmdstatus = CmdStatus::new(err, result, false).0;
        acts.push(Action::Trace(TraceEvent::Cmd {
            code,
            operand,
            status: err,
            active: false,
        }));
        if req_int {
            g.intcause |= IntCause::COMMAND_COMPLETED.bits();
            acts.push(Action::Msix(0, irq_reason::MISC));
        }
    }

    fn wq_bitmap(&self, operand: u32) -> Result<u64, u8> {
        let (base, bits) = dsa_spec::wq_bitmap_decode(operand);
        if bits == 0 {
            return Err(cmd_err::INVALID_WQ);
        }
        let mut m = 0u64;
        for b in 0..16 {
            if bits >> b & 1 == 1 {
                let wq = base + b;
                if wq >= self.cfg.num_wqs {
                    return Err(cmd_err::INVALID_WQ);
                }
                m |= 1 << wq;
            }
        }
        Ok(m)
    }

    fn command(&self, g: &mut Inner, val: u32, acts: &mut Vec<Action>) {
        let c = CmdReg(val);
        if CmdStatus(g.cmdstatus).active() {
            acts.push(Action::Trace(TraceEvent::Cmd {
                code: c.code(),
                operand: c.operand(),
                status: 0,
                active: true,
            }));
            self.sw_only(g, swerr_code::CMD_WHILE_ACTIVE, None, acts);
            return;
        }
        g.cmd = val;
        g.cmdstatus = CmdStatus::ACTIVE;
        acts.push(Action::Trace(TraceEvent::Cmd {
            code: c.code(),
            operand: c.operand(),
            status: 0,
            active: true,
        }));
        let (code, operand, ri) = (c.code(), c.operand(), c.request_int());
        let done = |s: &Self, g: &mut Inner, acts: &mut Vec<Action>, err: u8, res: u16| {
            s.finish_cmd(g, code, operand, ri, err, res, acts);
        };
        let supported =
            code >= 1 && (code <= 12 || (self.cfg.cmdcap && (self.caps.cmdcap >> code) & 1 == 1));
        let cmd = match Command::from_code(code) {
            Some(cmd) if supported => cmd,
            _ => return done(self, g, acts, cmd_err::INVALID_COMMAND, 0),
        };
        let halted = g.state == DeviceState::Halted;
        let enabled = g.state == DeviceState::Enabled;
        let wait =
            |s: &Self, g: &mut Inner, acts: &mut Vec<Action>, filter: Filter, post: CmdPost| {
                let before = g.next_gseq;
                g.pending_cmd = Some(PendingCmd {
                    code,
                    operand,
                    request_int: ri,
                    filter,
                    before,
                    post,
                });
                s.progress_cmd(g, acts);
            };
        match cmd {
            Command::EnableDevice => {
                let err = self.enable_device_check(g);
                if err == 0 {
                    g.state = DeviceState::Enabled;
                }
                done(self, g, acts, err, 0);
            }
            Command::DisableDevice => {
                if !enabled {
                    return done(self, g, acts, cmd_err::DIS_DEV_EN, 0);
                }
                g.state = DeviceState::Draining;
                for w in g.wqs.iter_mut() {
                    if w.state == WqState::Enabled {
                        w.state = WqState::Draining;
                    }
                }
                wait(self, g, acts, Filter::ALL, CmdPost::DisableDevice);
            }
            Command::DrainAll => wait(self, g, acts, Filter::ALL, CmdPost::Nothing),
            Command::AbortAll => {
                g.drop_queued(Filter::ALL);
                wait(self, g, acts, Filter::ALL, CmdPost::Nothing);
            }
            Command::ResetDevice => {
                g.reset_registers(&self.cfg, false);
                done(self, g, acts, 0, 0);
            }
            Command::EnableWq => {
                let err = self.enable_wq_check(g, operand & 0xFF);
                if err == 0 {
                    g.wqs[(operand & 0xFF) as usize].state = WqState::Enabled;
                }
                done(self, g, acts, err, 0);
            }
            Command::DisableWq | Command::DrainWq | Command::AbortWq | Command::ResetWq => {
                let m = match self.wq_bitmap(operand) {
                    Ok(m) => m,
                    Err(e) => return done(self, g, acts, e, 0),
                };
                let all_enabled = (0..self.cfg.num_wqs as usize)
                    .filter(|w| m >> w & 1 == 1)
                    .all(|w| g.wqs[w].state == WqState::Enabled);
                let filter = Filter {
                    wqs: Some(m),
                    pasid: None,
                };
                match cmd {
                    Command::ResetWq => {
                        for w in 0..g.wqs.len() {
                            if m >> w & 1 == 1 && g.wqs[w].state != WqState::Disabled {
                                g.wqs[w].state = WqState::Draining;
                            }
                        }
                        g.drop_queued(filter);
                        wait(self, g, acts, filter, CmdPost::ResetWqs(m));
                    }
                    _ if !all_enabled || halted => done(self, g, acts, cmd_err::WQ_NOT_EN, 0),
                    Command::DisableWq => {
                        for w in 0..g.wqs.len() {
                            if m >> w & 1 == 1 {
                                g.wqs[w].state = WqState::Draining;
                            }
                        }
                        wait(self, g, acts, filter, CmdPost::DisableWqs(m));
                    }
                    Command::AbortWq => {
                        g.drop_queued(filter);
                        wait(self, g, acts, filter, CmdPost::Nothing);
                    }
                    _ => wait(self, g, acts, filter, CmdPost::Nothing),
                }
            }
            Command::DrainPasid | Command::AbortPasid => {
                let filter = Filter {
                    wqs: None,
                    pasid: Some(operand),
                };
                if cmd == Command::AbortPasid {
                    g.drop_queued(filter);
                }
                wait(self, g, acts, filter, CmdPost::Nothing);
            }
            Command::RequestIntHandle | Command::ReleaseIntHandle => {
                let idx = (operand & 0xFFFF) as usize;
                let t = ((operand >> 16) & 1) as usize;
                if idx >= g.handles[t].len() {
                    return done(self, g, acts, cmd_err::INVAL_INT_IDX, 0);
                }
                let req = cmd == Command::RequestIntHandle;
                g.handles[t][idx] = req;
                done(
                    self,
                    g,
                    acts,
                    0,
                    if req { HANDLE_TAG | idx as u16 } else { 0 },
                );
            }
            _ => done(self, g, acts, cmd_err::INVALID_COMMAND, 0),
        }
    }

    fn enable_device_check(&self, g: &Inner) -> u8 {
        if g.state != DeviceState::Disabled {
            return cmd_err::DEV_ENABLED;
        }
        if g.pci & pci::BME == 0 {
            return cmd_err::BUS_MASTER_EN;
        }
        let total: u32 = g.wqs.iter().map(|w| u32::from(w.cfg.size())).sum();
        if total > self.cfg.total_wq_size {
            return cmd_err::WQ_SIZE_TOTAL;
        }
        let mut wq_seen = [0u64; 4];
        let mut eng_seen = 0u64;
        for gr in &g.grpcfg {
            for (k, seen) in wq_seen.iter_mut().enumerate() {
                if *seen & gr.wqs[k] != 0 {
                    return cmd_err::GRP_CONFIG;
                }
                *seen |= gr.wqs[k];
            }
            if eng_seen & gr.engines != 0 {
                return cmd_err::GRP_CONFIG2;
            }
            eng_seen |= gr.engines;
        }
        for gr in &g.grpcfg {
            if gr.engines == 0 && (0..g.wqs.len()).any(|w| gr.has_wq(w) && g.wqs[w].cfg.size() > 0)
            {
                return cmd_err::GRP_CONFIG3;
            }
        }
        if g.pci & pci::PASID_ENABLE == 0
            && g.wqs.iter().any(|w| w.cfg.size() > 0 && w.cfg.pasid_en())
        {
            return cmd_err::PASID_INVAL;
        }
        0
    }

    fn enable_wq_check(&self, g: &Inner, wq: u32) -> u8 {
        if wq >= self.cfg.num_wqs {
            return cmd_err::INVALID_WQ;
        }
        if g.state != DeviceState::Enabled {
            return cmd_err::DEV_NOT_EN;
        }
        let w = &g.wqs[wq as usize];
        let c = &w.cfg;
        if w.state != WqState::Disabled {
            return cmd_err::WQ_ENABLED;
        }
        if c.size() == 0 {
            return cmd_err::WQ_SIZE;
        }
        if self.cfg.priority && c.priority() == 0 {
            return cmd_err::WQ_PRIOR;
        }
        let mode_ok = match c.mode() {
            WqMode::Dedicated => self.cfg.dedicated_wq,
            WqMode::Shared => self.cfg.shared_wq && c.pasid_en() && c.threshold() <= c.size(),
        };
        let in_group = g
            .grpcfg
            .iter()
            .any(|gr| gr.has_wq(wq as usize) && gr.engines != 0);
        if !mode_ok || !in_group {
            return cmd_err::WQ_MODE;
        }
        if c.bof() && !self.cfg.block_on_fault {
            return cmd_err::BOF_EN;
        }
        if c.pasid_en() && g.pci & pci::PASID_ENABLE == 0 {
            return cmd_err::PASID_EN;
        }
        if c.max_batch_shift() == 0 || u32::from(c.max_batch_shift()) > self.cfg.max_batch_shift {
            return cmd_err::MAX_BATCH_SIZE;
        }
        if u32::from(c.max_xfer_shift()) > self.cfg.max_xfer_shift {
            return cmd_err::MAX_XFER_SIZE;
        }
        if c.privileged() && c.pasid_en() && g.pci & pci::PASID_PRIV == 0 {
            return cmd_err::WQ_PRIV;
        }
        if c.0[wqcfg::DW_OCC_LIMIT] & wqcfg::OCC_INT_EN != 0 {
            return cmd_err::OCC_INT;
        }
        if c.ats_disable() {
            return cmd_err::ATS_DISABLE;
        }
        if c.prs_disable() {
            return cmd_err::PRS_DISABLE;
        }
        0
    }

    /// Completes the pending command if nothing it waits for is outstanding.
    fn progress_cmd(&self, g: &mut Inner, acts: &mut Vec<Action>) {
        let ready = match &g.pending_cmd {
            Some(p) => !g.blocked(p.filter, p.before),
            None => false,
        };
        if !ready {
            return;
        }
        let Some(p) = g.pending_cmd.take() else {
            return;
        };
        match p.post {
            CmdPost::Nothing => {}
            CmdPost::DisableDevice => {
                for w in g.wqs.iter_mut() {
                    w.state = WqState::Disabled;
                    w.cfg = WqCfg::default().with_size(w.cfg.size());
                }
                g.state = DeviceState::Disabled;
            }
            CmdPost::DisableWqs(m) => {
                for (i, w) in g.wqs.iter_mut().enumerate() {
                    if m >> i & 1 == 1 {
                        w.state = WqState::Disabled;
                    }
                }
            }
            CmdPost::ResetWqs(m) => {
                for (i, w) in g.wqs.iter_mut().enumerate() {
                    if m >> i & 1 == 1 {
                        w.state = WqState::Disabled;
                        w.cfg = WqCfg::default().with_size(w.cfg.size());
                    }
                }
            }
        }
        self.finish_cmd(g, p.code, p.operand, p.request_int, 0, 0, acts);
    }

    // ---------------------------------------------------------------- PCI state, reset

    /// Config-space state (`pci::*` bits). A change while the device is not Disabled halts it
    /// with SWERROR 0x51.
    pub fn set_pci_state(&self, flags: u32) {
        let mut acts = Vec::new();
        {
            let mut g = self.lock();
            let old = g.pci;
            g.pci = flags;
            if old != flags && matches!(g.state, DeviceState::Enabled | DeviceState::Draining) {
                self.halt(&mut g, Some(swerr_code::PCI_CONFIG_CHANGED), &mut acts);
            }
        }
        self.run(acts);
    }

    /// Function-level / system reset: abandon all work, every register to its reset value.
    pub fn reset(&self) {
        let mut g = self.lock();
        g.reset_registers(&self.cfg, true);
    }

    // ---------------------------------------------------------------- portals

    /// A whole 64-byte store to BAR2 at `offset`.
    pub fn portal_submit(&self, offset: u64, desc: &[u8; 64], kind: StoreKind) -> PortalResult {
        let (wq, page) = decode_portal(offset);
        let mut acts = Vec::new();
        let accepted = {
            let mut g = self.lock();
            self.portal_locked(&mut g, offset, wq, page, desc, kind, &mut acts)
        };
        acts.insert(
            0,
            Action::Trace(TraceEvent::Portal {
                wq,
                page: page as u8,
                kind,
                accepted,
            }),
        );
        self.run(acts);
        if accepted {
            self.cv.notify_all();
            PortalResult::Accepted
        } else {
            PortalResult::Retry
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn portal_locked(
        &self,
        g: &mut Inner,
        offset: u64,
        wq: u64,
        page: PortalKind,
        desc: &[u8; 64],
        kind: StoreKind,
        acts: &mut Vec<Action>,
    ) -> bool {
        if !offset.is_multiple_of(64)
            || offset >= self.layout.bar2_size
            || wq >= u64::from(self.cfg.num_wqs)
        {
            return false;
        }
        let wqi = wq as usize;
        if g.state != DeviceState::Enabled || g.wqs[wqi].state != WqState::Enabled {
            return false;
        }
        if page.is_ims() && self.cfg.ims_entries == 0 {
            return false;
        }
        let w = &g.wqs[wqi];
        let cfg = w.cfg;
        let occ = w.queue.len();
        let (pasid, privileged) = match (cfg.mode(), kind) {
            (WqMode::Dedicated, StoreKind::DmWr) | (WqMode::Shared, StoreKind::Posted) => {
                return false;
            }
            (WqMode::Dedicated, StoreKind::Posted) => {
                if occ >= cfg.size() as usize {
                    self.sw_only(g, swerr_code::DWQ_FULL, Some(wqi), acts);
                    return false;
                }
                (cfg.pasid(), cfg.privileged())
            }
            (WqMode::Shared, StoreKind::DmWr) => {
                let limit = if page.is_limited() {
                    cfg.threshold()
                } else {
                    cfg.size()
                };
                if occ >= limit as usize {
                    return false;
                }
                let w0 = u32::from_le_bytes([desc[0], desc[1], desc[2], desc[3]]);
                (w0 & 0xF_FFFF, w0 >> 31 != 0)
            }
        };
        let gseq = g.next_gseq;
        g.next_gseq += 1;
        let job = Job {
            desc: *desc,
            wq: wqi,
            ims: page.is_ims(),
            pasid,
            privileged,
            gseq,
            epoch: g.epoch,
            wqcfg: cfg,
        };
        g.outstanding.insert(
            gseq,
            Outstanding {
                wq: wqi,
                pasid: job.request_pasid(),
            },
        );
        g.wqs[wqi].queue.push_back(job);
        true
    }

    /// Any other BAR2 store (partial or misaligned): dropped, as on hardware; traced.
    pub fn portal_partial(&self, offset: u64, size: u32) {
        let (wq, page) = decode_portal(offset);
        let _ = size;
        self.platform.trace(TraceEvent::Portal {
            wq,
            page: page as u8,
            kind: StoreKind::Posted,
            accepted: false,
        });
    }

    // ---------------------------------------------------------------- engines

    fn pick(&self, g: &mut Inner, engine: usize) -> Option<Job> {
        if !matches!(g.state, DeviceState::Enabled | DeviceState::Draining) {
            return None;
        }
        let group = g.grpcfg.iter().position(|gr| gr.has_engine(engine))?;
        let n = g.wqs.len();
        let start = g.rr.get(engine).copied().unwrap_or(0);
        let mut best: Option<(u8, usize)> = None;
        for k in 1..=n {
            let w = (start + k) % n;
            let st = &g.wqs[w];
            if !g.grpcfg[group].has_wq(w) || st.state == WqState::Disabled || st.queue.is_empty() {
                continue;
            }
            let prio = st.cfg.priority();
            if best.is_none_or(|(p, _)| prio > p) {
                best = Some((prio, w));
            }
        }
        let (_, w) = best?;
        if let Some(r) = g.rr.get_mut(engine) {
            *r = w;
        }
        g.wqs[w].queue.pop_front()
    }

    /// Takes one descriptor for `engine` and executes it. With `block`, waits for work;
    /// returns false when stopped (or, without `block`, when there is nothing to do).
    pub(crate) fn step(&self, engine: usize, scratch: &mut Scratch, block: bool) -> bool {
        let job = {
            let mut g = self.lock();
            loop {
                if g.stop {
                    return false;
                }
                if let Some(j) = self.pick(&mut g, engine) {
                    break j;
                }
                if !block {
                    return false;
                }
                g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
        };
        self.execute_top(job, scratch);
        true
    }

    /// Worker thread body for engine `index`: runs until [`Device::stop`].
    pub fn worker_run(&self, index: u32) {
        let mut scratch = Scratch::default();
        while self.step(index as usize, &mut scratch, true) {}
    }

    /// Asks every worker to return (idempotent).
    pub fn stop(&self) {
        self.lock().stop = true;
        self.cv.notify_all();
    }

    /// Executes everything queued on the calling thread, engine by engine, until no engine
    /// can pick anything. Deterministic; for host tests without worker threads.
    pub fn run_until_idle(&self) {
        let mut scratch = Scratch::default();
        loop {
            let mut did = false;
            for e in 0..self.cfg.num_engines as usize {
                if self.lock().stop {
                    return;
                }
                did |= self.step(e, &mut scratch, false);
            }
            if !did {
                return;
            }
        }
    }

    /// True while any accepted descriptor has not completed (or a command is active).
    pub fn busy(&self) -> bool {
        let g = self.lock();
        !g.outstanding.is_empty() || g.pending_cmd.is_some()
    }

    /// Called when a descriptor (top level) finished or was abandoned: wakes waiters.
    pub(crate) fn finish_job(&self, gseq: u64, scratch: &mut Scratch) {
        let mut next = vec![gseq];
        while let Some(s) = next.pop() {
            let mut acts = Vec::new();
            let ready: Vec<Job> = {
                let mut g = self.lock();
                g.outstanding.remove(&s);
                let mut ready = Vec::new();
                let mut k = 0;
                while k < g.pending_drains.len() {
                    let p = &g.pending_drains[k];
                    if g.blocked(p.filter, p.job.gseq) {
                        k += 1;
                    } else {
                        ready.push(g.pending_drains.remove(k).job);
                    }
                }
                self.progress_cmd(&mut g, &mut acts);
                ready
            };
            self.run(acts);
            for j in ready {
                self.complete_drain(&j, scratch);
                next.push(j.gseq);
            }
        }
    }

    /// Registers a validated Drain descriptor; returns false if it can complete now.
    pub(crate) fn park_drain(&self, job: &Job) -> bool {
        let dedicated = job.wqcfg.mode() == WqMode::Dedicated;
        let filter = Filter {
            wqs: Some(1u64 << job.wq),
            pasid: if dedicated { None } else { job.request_pasid() },
        };
        let mut g = self.lock();
        if g.epoch != job.epoch || !g.blocked(filter, job.gseq) {
            return false;
        }
        g.pending_drains.push(PendingDrain {
            job: job.clone(),
            filter,
        });
        true
    }

    // ---------------------------------------------------------------- interrupts

    fn resolve_handle(&self, g: &Inner, ims: bool, handle: u16) -> Option<usize> {
        let t = usize::from(ims);
        let idx = if self.cfg.cmdcap {
            if handle & HANDLE_TAG == 0 {
                return None;
            }
            let i = (handle & !HANDLE_TAG) as usize;
            if !g.handles[t].get(i).copied().unwrap_or(false) {
                return None;
            }
            i
        } else {
            handle as usize
        };
        let n = if ims { g.ims.len() } else { g.msixperm.len() };
        (idx < n).then_some(idx)
    }

    /// The permission check of a completion interrupt handle (§5.4, Table 5-2).
    pub(crate) fn handle_ok(&self, job: &Job, handle: u16) -> bool {
        let g = self.lock();
        let Some(idx) = self.resolve_handle(&g, job.ims, handle) else {
            return false;
        };
        let (pen, pasid) = if job.ims {
            let c = g.ims[idx].ctrl;
            (c.contains(ImsCtrl::PASID_EN), c.pasid())
        } else {
            let p = MsixPerm::from_bits_retain(g.msixperm[idx]);
            (p.contains(MsixPerm::PASID_EN), p.pasid())
        };
        pen == job.wqcfg.pasid_en() && (!pen || pasid == job.pasid)
    }

    /// Sends the completion interrupt of `handle` through the table the job's portal selects.
    pub(crate) fn completion_irq(&self, job: &Job, handle: u16) {
        let mut acts = Vec::new();
        {
            let mut g = self.lock();
            let Some(idx) = self.resolve_handle(&g, job.ims, handle) else {
                return;
            };
            if job.ims {
                let e = &mut g.ims[idx];
                let (sent, reason) = if e.ctrl.contains(ImsCtrl::IGNORE) {
                    (false, irq_reason::IGNORED)
                } else if e.ctrl.contains(ImsCtrl::MASK) {
                    e.ctrl.insert(ImsCtrl::PENDING);
                    (false, irq_reason::MASKED_PENDING)
                } else {
                    acts.push(Action::Msi {
                        addr: e.addr,
                        data: e.data,
                        index: idx as u32,
                        reason: irq_reason::COMPLETION,
                    });
                    (true, 0)
                };
                if !sent {
                    acts.push(Action::Trace(TraceEvent::Irq {
                        table: IrqTable::Ims,
                        index: idx as u32,
                        sent,
                        reason,
                    }));
                }
            } else if MsixPerm::from_bits_retain(g.msixperm[idx]).contains(MsixPerm::IGNORE) {
                acts.push(Action::Trace(TraceEvent::Irq {
                    table: IrqTable::Msix,
                    index: idx as u32,
                    sent: false,
                    reason: irq_reason::IGNORED,
                }));
            } else {
                acts.push(Action::Msix(idx as u32, irq_reason::COMPLETION));
            }
        }
        self.run(acts);
    }
}
