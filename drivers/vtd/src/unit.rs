//! The driver of one remapping unit in scalable mode.
//!
//! Bring-up: root table (§6.6), queued invalidation (§6.5.2), interrupt remapping (§6.7), then
//! translation (§11.4.4.1); every table change is followed by the invalidation sequence of
//! §6.5.3.3 (plus the device-selective context-cache invalidation QEMU 10.0.2 needs around
//! pass-through changes to switch its address spaces). § numbers: Intel VT-d Architecture
//! Specification rev 4.1. All waits are bounded by [`Config::timeout_ns`].
//!
//! Vocabulary: an *address space* is identified by its PASID and owns a DID and (unless it is
//! pass-through) a page-table tree in the unit's stage (first stage when ECAP.FSTS, else second
//! stage). A device *slot* is a PASID-table entry of one device: slot = the space's PASID for
//! PASID-tagged requests, slot 0 (RID_PASID) for requests without PASID.

use crate::dmar::Bdf;
use crate::error::{Requirement, VtdError};
use crate::pagetable::{
    IoPageTable, Perm, SecondStage, Translation, View, alloc_block, invalidation_chunks,
};
use crate::spec::{
    self, AW_39, AW_48, Cap, CcGranularity, ContextEntry, Ecap, EventCtl, FaultReason, FaultRecord,
    FsPte, Fsts, Gcmd, Gsts, InvDesc, Irte, PasidEntry, Pgtt, RemappableMsi, RootEntry,
    SourceValidation, SsPte, frcd, iqa, irta, pasid_dir_entry, reg, rtaddr,
};
use crate::spec::{IRTE_IM, IrteFormat, PostedIrte, pid};
use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec;
use alloc::vec::Vec;
use hwio::dma::{UnitMemory, UnitMemory128};
use hwio::{Clock, Registers, RegistersExt};

/// What requests without PASID see on a device that has no space attached at RID_PASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RidDefault {
    /// An empty translated domain: every access faults (and is reported).
    Blocked,
    /// Identity (PGTT=100, needs ECAP.PT).
    PassThrough,
}

/// How a unit is set up ([`RemappingUnit::new`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// PASIDs handed out are < 2^pasid_bits; sizes the per-device PASID directory
    /// (15 → 512-entry 4 KiB directory, PDTS=2). QEMU reports ECAP.PSS=0 but accepts 20 bits.
    pub pasid_bits: u8,
    /// IR table holds 2^(S+1) entries (7 → 256 entries, 4 KiB).
    pub ir_table_order: u8,
    /// Use x2APIC (32-bit) IRTE destinations when ECAP.EIM allows it.
    pub x2apic: bool,
    /// Set up interrupt remapping (needs ECAP.IR).
    pub interrupt_remapping: bool,
    /// What requests without PASID (RID_PASID) reach before a space is attached for them.
    pub rid_default: RidDefault,
    /// Map with 2 MiB leaves where IOVA, address and length allow.
    pub large_pages: bool,
    /// Bound of every hardware wait (GCMD status, invalidation wait), in nanoseconds.
    pub timeout_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            pasid_bits: 15,
            ir_table_order: 7,
            x2apic: false,
            interrupt_remapping: true,
            rid_default: RidDefault::Blocked,
            large_pages: true,
            timeout_ns: 100_000_000,
        }
    }
}

/// Largest interrupt-remapping table: 2^16 entries (IRTA.S = 15, 1 MiB).
pub const IR_TABLE_MAX_ENTRIES: u32 = 1 << 16;

/// An interrupt-remapping table size chosen by [`ir_table_size_for`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrTableSize {
    /// IRTA.S: the table holds 2^(order+1) entries ([`Config::ir_table_order`]).
    pub order: u8,
    /// Number of entries: 2^(order+1).
    pub entries: u32,
    /// The need exceeded [`IR_TABLE_MAX_ENTRIES`]: some messages will find no entry.
    pub capped: bool,
}

/// The smallest power-of-two table (at least `floor` entries, at most
/// [`IR_TABLE_MAX_ENTRIES`], at least 2) that holds `messages` entries: every interrupt
/// message a device may send through the unit takes one (each MSI/MSI-X vector, each IMS
/// entry in use).
pub fn ir_table_size_for(messages: u64, floor: u32) -> IrTableSize {
    let max = u64::from(IR_TABLE_MAX_ENTRIES);
    let want = messages.max(u64::from(floor)).max(2);
    let entries = want.checked_next_power_of_two().unwrap_or(max).min(max);
    IrTableSize {
        order: (entries.trailing_zeros() - 1) as u8,
        entries: entries as u32,
        capped: want > max,
    }
}

/// The translation stage this unit uses for translated spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// First stage (PGTT=001): the CPU's 4-level format (needs ECAP.FSTS).
    FirstStage,
    /// Second stage (PGTT=010): the VT-d format, 3 or 4 levels (needs ECAP.SSTS).
    SecondStage,
}

/// Kind of an address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpaceKind {
    /// Page tables in the unit's stage.
    Translated,
    /// Untranslated (PGTT=100).
    PassThrough,
    /// Shared virtual addressing: first-stage translation through page tables the caller
    /// owns (a process's PML4, also its CR3), never changed through the unit. The PASID entry
    /// has PGTT=001, NXE=1 (W^X leaves carry XD, reserved when NXE=0), WPE=1 and SRE=0: a
    /// supervisor request is refused and user requests reach only U=1 pages (VT-d rev 4.1
    /// §3.6.1–3.6.2, §9.6). Needs a first-stage unit. The owner calls
    /// [`RemappingUnit::invalidate_range`] after every change other than not-present →
    /// present, before it frees a page.
    Shared {
        /// Physical address of the 4-level root (FSPTPTR).
        fs_root: u64,
    },
}

/// An address space is named by its PASID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AddressSpaceId(pub u32);

/// First IRTE index of an allocation, and how many contiguous entries it spans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrteHandle {
    /// First IRTE index (the handle in the remappable MSI address).
    pub index: u16,
    /// Number of contiguous entries (a power of two).
    pub count: u16,
}

/// Fault statistics since init.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// Fault records read.
    pub total: u64,
    /// Times FSTS.PFO was found set (faults were dropped).
    pub overflows: u64,
    /// Faults per source ID.
    pub per_source: BTreeMap<u16, u64>,
    /// Faults per PASID (requests that carried one).
    pub per_pasid: BTreeMap<u32, u64>,
    /// Faults per fault reason code.
    pub per_reason: BTreeMap<u8, u64>,
}

/// What [`RemappingUnit::hardware_walk_traced`] read on its way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkTrace {
    /// The requester's context entry.
    pub context_entry: [u64; 4],
    /// The PASID looked up: the request's, or the context entry's RID_PASID.
    pub pasid: u32,
    /// The PASID entry used.
    pub pasid_entry: [u64; 8],
    /// Paging entries from the top level down: (level, physical address, value).
    pub paging: Vec<(u8, u64, u64)>,
}

/// What one [`RemappingUnit::handle_faults`] call found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultBatch {
    /// Fault records read (and cleared), oldest first.
    pub records: Vec<FaultRecord>,
    /// FSTS.PFO was set: at least one fault was lost.
    pub overflow: bool,
    /// FSTS.IQE was set (handled by the invalidation path, left for it).
    pub queue_error: bool,
}

struct Queue {
    base: u64,
    slots: usize,
    tail: usize,
    status: u64,
    token: u32,
}

struct IrState {
    base: u64,
    entries: usize,
    x2apic: bool,
    used: Vec<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotUse {
    /// The configured [`RidDefault`] (RID_PASID only).
    Default,
    /// The shared empty domain: every request faults (RID_PASID of a revoked space).
    Blocked,
    Space(u32),
}

struct DeviceTables {
    dir: u64,
    dir_bytes: usize,
    tables: BTreeMap<u32, u64>,
    slots: BTreeMap<u32, SlotUse>,
}

struct Space {
    did: u16,
    kind: SpaceKind,
    pt: Option<IoPageTable>,
    /// (source ID, slot) pairs whose PASID entry points at this space.
    attachments: BTreeSet<(u16, u32)>,
    revoked: bool,
}

/// Beyond this many page-selective descriptors per range, flush the whole PASID/domain instead.
const MAX_PSI_DESCS: usize = 16;
/// Narrowest and widest guest address widths a unit may report (3- and 5-level tables).
const MIN_MGAW: u8 = 39;
const MAX_MGAW: u8 = 57;

/// The driver of one remapping unit (Intel VT-d Architecture Specification rev 4.1): its root,
/// context and PASID tables, page tables, invalidation queue, fault records and interrupt
/// remapping table. Not internally locked (see the crate documentation).
pub struct RemappingUnit<R: Registers, M: UnitMemory, C: Clock> {
    regs: R,
    mem: M,
    clock: C,
    cfg: Config,
    /// The capability register as read at [`RemappingUnit::new`].
    pub cap: Cap,
    /// The extended capability register as read at [`RemappingUnit::new`].
    pub ecap: Ecap,
    stage: StageKind,
    ss_levels: u8,
    phys_bits: u8,
    qi: Option<Queue>,
    root: Option<u64>,
    ctx_tables: BTreeMap<(u8, bool), u64>,
    devices: BTreeMap<u16, DeviceTables>,
    spaces: BTreeMap<u32, Space>,
    did_used: Vec<bool>,
    blocked: Option<(u16, IoPageTable)>,
    pt_did: Option<u16>,
    ir: Option<IrState>,
    faults: FaultCounters,
    fault_event_programmed: bool,
}

impl<R: Registers, M: UnitMemory, C: Clock> RemappingUnit<R, M, C> {
    /// Reads CAP/ECAP and checks what the configuration needs. Touches no other register.
    pub fn new(regs: R, mem: M, clock: C, cfg: Config) -> Result<Self, VtdError> {
        let cap = regs.read(reg::CAP);
        let ecap = regs.read(reg::ECAP);
        log::info!("vtd: cap {:#018x} ecap {:#018x}", cap.bits(), ecap.bits());
        if !ecap.contains(Ecap::SMTS) {
            return Err(VtdError::Missing(Requirement::ScalableMode));
        }
        if !ecap.contains(Ecap::QI) {
            return Err(VtdError::Missing(Requirement::QueuedInvalidation));
        }
        let mgaw = cap.mgaw();
        // Address widths index shifts below (`x >> mgaw`): a width no table format has
        // (3-, 4- or 5-level tables translate 39, 48 or 57 bits; VT-d spec rev 4.1
        // §11.4.2) means a broken unit, not a wider one.
        if !(MIN_MGAW..=MAX_MGAW).contains(&mgaw) {
            return Err(VtdError::BadCapability {
                field: "CAP.MGAW",
                value: u64::from(mgaw),
                allowed: "a guest address width of 39 to 57 bits",
            });
        }
        let ss_levels = if cap.contains(Cap::SAGAW_48) && mgaw >= 48 {
            4
        } else if cap.contains(Cap::SAGAW_39) {
            3
        } else {
            0
        };
        let stage = if ecap.contains(Ecap::FSTS) {
            if mgaw < 48 {
                return Err(VtdError::Missing(Requirement::FirstStage48Bit));
            }
            StageKind::FirstStage
        } else if ecap.contains(Ecap::SSTS) {
            if ss_levels == 0 {
                return Err(VtdError::Missing(Requirement::SecondStageLevels));
            }
            StageKind::SecondStage
        } else {
            return Err(VtdError::Missing(Requirement::TranslationStage));
        };
        if cfg.interrupt_remapping && !ecap.contains(Ecap::IR) {
            return Err(VtdError::Missing(Requirement::InterruptRemapping));
        }
        if cfg.rid_default == RidDefault::PassThrough && !ecap.contains(Ecap::PT) {
            return Err(VtdError::Missing(Requirement::PassThrough));
        }
        let frcd_end = cap.fault_record_offset() + frcd::SIZE * cap.fault_record_count() as u64;
        // Both tables sit beyond the fixed registers (QEMU: IOTLB at 0xF0, FRCD at 0x220).
        if cap.fault_record_offset() < 0xc0
            || frcd_end > 0x1_0000
            || ecap.iotlb_offset() < 0xc0
            || ecap.iotlb_offset() > 0xfff0
        {
            return Err(VtdError::Missing(Requirement::RegisterLayout));
        }
        if cfg.pasid_bits == 0 || cfg.pasid_bits > 20 || cfg.ir_table_order > 15 {
            return Err(VtdError::BadCount {
                count: u32::from(cfg.pasid_bits),
            });
        }
        if cfg.pasid_bits > ecap.pasid_bits() {
            log::warn!(
                "vtd: ECAP.PSS allows {} PASID bits, using {} (QEMU reports PSS=0 but translates any PASID)",
                ecap.pasid_bits(),
                cfg.pasid_bits
            );
        }
        let did_bits = cap.domain_id_bits().min(16);
        Ok(Self {
            regs,
            mem,
            clock,
            cfg,
            cap,
            ecap,
            stage,
            ss_levels,
            phys_bits: mgaw,
            qi: None,
            root: None,
            ctx_tables: BTreeMap::new(),
            devices: BTreeMap::new(),
            spaces: BTreeMap::new(),
            did_used: vec![false; 1 << did_bits],
            blocked: None,
            pt_did: None,
            ir: None,
            faults: FaultCounters::default(),
            fault_event_programmed: false,
        })
    }

    /// The translation stage used for translated spaces.
    pub fn stage(&self) -> StageKind {
        self.stage
    }
    /// The configuration the unit was created with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
    /// The unit's DMA memory.
    pub fn memory(&self) -> &M {
        &self.mem
    }
    /// The unit's register window.
    pub fn registers(&self) -> &R {
        &self.regs
    }
    /// Physical address of the root table, once set up.
    pub fn root_table(&self) -> Option<u64> {
        self.root
    }
    /// Whether IRTE destinations are 32-bit x2APIC IDs (IRTA.EIME); false before IR is set up.
    pub fn x2apic_irtes(&self) -> bool {
        self.ir.as_ref().is_some_and(|i| i.x2apic)
    }

    // -----------------------------------------------------------------------------------------
    // Bounded waits and the GCMD protocol
    // -----------------------------------------------------------------------------------------

    /// Issues one GCMD command (§11.4.4.1): persistent bits from GSTS (one-shot status bits
    /// dropped), exactly one command bit changed, then wait for its status bit. CFI is never
    /// waited for (QEMU does not implement CFIS).
    fn gcmd(&mut self, cmd: Gcmd, enable: bool) -> Result<(), VtdError> {
        let gsts = self.regs.read(reg::GSTS);
        self.regs
            .write(reg::GCMD, spec::gcmd_value(gsts, cmd, enable));
        if cmd == Gcmd::CFI {
            return Ok(());
        }
        let want = cmd.status_bit();
        hwio::wait_until(&self.clock, self.cfg.timeout_ns, || {
            (self.regs.read(reg::GSTS).contains(want) == enable).then_some(())
        })
        .map_err(|_| VtdError::CommandTimeout {
            command: cmd.bits(),
        })
    }

    /// The global status register (GSTS).
    pub fn status(&self) -> Gsts {
        self.regs.read(reg::GSTS)
    }

    // -----------------------------------------------------------------------------------------
    // Bring-up
    // -----------------------------------------------------------------------------------------

    /// Full bring-up: [`Self::setup`] then
    /// [`Self::enable_translation`]. Fault reporting is configured separately with
    /// [`Self::configure_fault_event`] (it needs a vector).
    pub fn init(&mut self) -> Result<(), VtdError> {
        self.setup()?;
        self.enable_translation()
    }

    /// Bring-up without TE: turn off what firmware left on, queued
    /// invalidation, interrupt remapping (if configured), root table. The caller then gives
    /// every device a context entry ([`Self::prepare_device`]) before
    /// [`Self::enable_translation`], so no device that was already doing DMA (e.g. firmware's
    /// USB legacy emulation) sees a window in which its requests fault.
    pub fn setup(&mut self) -> Result<(), VtdError> {
        self.disable_firmware_state()?;
        self.clear_stale_faults();
        self.enable_queued_invalidation()?;
        if self.cfg.interrupt_remapping {
            self.enable_interrupt_remapping()?;
        }
        self.install_root_table()
    }

    /// GCMD.TE (§11.4.4.1): from now on every request is translated.
    pub fn enable_translation(&mut self) -> Result<(), VtdError> {
        if self.root.is_none() {
            return Err(VtdError::NotEnabled("root table"));
        }
        self.gcmd(Gcmd::TE, true)?;
        log::info!("vtd: translation enabled ({:?})", self.stage);
        Ok(())
    }

    fn disable_firmware_state(&mut self) -> Result<(), VtdError> {
        let g = self.status();
        for (status, cmd) in [
            (Gsts::TES, Gcmd::TE),
            (Gsts::IRES, Gcmd::IRE),
            (Gsts::QIES, Gcmd::QIE),
        ] {
            if g.contains(status) {
                log::warn!("vtd: firmware left {cmd:?} on; disabling");
                self.gcmd(cmd, false)
                    .map_err(|_| VtdError::FirmwareStateStuck)?;
            }
        }
        Ok(())
    }

    /// Sets up the invalidation queue (IQA, QIE; §6.5.2) if it is not yet; every later
    /// invalidation goes through it.
    pub fn enable_queued_invalidation(&mut self) -> Result<(), VtdError> {
        if self.qi.is_some() {
            return Ok(());
        }
        let base = alloc_block(&mut self.mem, 4096, self.phys_bits)?;
        let status = match alloc_block(&mut self.mem, 4096, self.phys_bits) {
            Ok(s) => s,
            Err(e) => {
                self.mem.free(base, 4096);
                return Err(e);
            }
        };
        self.regs.write(reg::IQT, 0);
        self.regs.write(reg::IQA, iqa::encode(base, true, 0));
        self.qi = Some(Queue {
            base,
            slots: iqa::slots_256(0),
            tail: 0,
            status,
            token: 0,
        });
        if let Err(e) = self.gcmd(Gcmd::QIE, true) {
            self.qi = None;
            return Err(e);
        }
        Ok(())
    }

    /// IRT, SIRTP, IEC global, IRE (§6.7, §5.1.3). Before any device interrupt is used.
    pub fn enable_interrupt_remapping(&mut self) -> Result<(), VtdError> {
        if !self.ecap.contains(Ecap::IR) {
            return Err(VtdError::Missing(Requirement::InterruptRemapping));
        }
        if self.ir.is_some() {
            return Ok(());
        }
        let s = self.cfg.ir_table_order;
        let entries = irta::entries(s);
        let x2apic = self.cfg.x2apic && self.ecap.contains(Ecap::EIM);
        if self.cfg.x2apic && !x2apic {
            log::warn!("vtd: ECAP.EIM=0: IRTEs use 8-bit xAPIC destinations");
        }
        let base = alloc_block(&mut self.mem, entries * 16, self.phys_bits)?;
        self.regs.write(reg::IRTA, irta::encode(base, x2apic, s));
        self.gcmd(Gcmd::SIRTP, true)?;
        self.ir = Some(IrState {
            base,
            entries,
            x2apic,
            used: vec![false; entries],
        });
        self.invalidate(&[InvDesc::iec_global()])?;
        self.gcmd(Gcmd::IRE, true)?;
        log::info!(
            "vtd: interrupt remapping on, {entries} IRTEs, {}",
            if x2apic { "x2APIC" } else { "xAPIC" }
        );
        Ok(())
    }

    fn install_root_table(&mut self) -> Result<(), VtdError> {
        let root = alloc_block(&mut self.mem, 4096, self.phys_bits)?;
        self.root = Some(root);
        // The shared "blocked" domain: valid entry, empty tables, so RID_PASID is always valid.
        let did = self.alloc_did()?;
        let pt = self.new_page_table()?;
        self.blocked = Some((did, pt));
        if self.ecap.contains(Ecap::PT) {
            self.pt_did = Some(self.alloc_did()?);
        }
        self.regs
            .write(reg::RTADDR, rtaddr::encode(root, rtaddr::TTM_SCALABLE));
        self.gcmd(Gcmd::SRTP, true)?;
        // CAP.ESRTPS=0: caches are not flushed by SRTP by contract (§6.6, §11.4.2).
        self.invalidate(&[
            InvDesc::context_cache(CcGranularity::Global),
            InvDesc::pasid_cache_global(),
            InvDesc::iotlb_global(),
        ])
    }

    fn new_page_table(&mut self) -> Result<IoPageTable, VtdError> {
        IoPageTable::new(
            &mut self.mem,
            self.stage,
            self.ss_levels,
            self.phys_bits,
            self.cfg.large_pages,
        )
    }

    // -----------------------------------------------------------------------------------------
    // Queued invalidation (§6.5.2)
    // -----------------------------------------------------------------------------------------

    /// Submits descriptors followed by a status-write wait descriptor and waits for it.
    /// On FSTS.IQE the offending slot is reported, replaced by a harmless wait, and the queue
    /// restarted; the call then returns [`VtdError::DescriptorRejected`].
    pub fn invalidate(&mut self, descs: &[InvDesc]) -> Result<(), VtdError> {
        let per_batch = self
            .qi
            .as_ref()
            .ok_or(VtdError::NotEnabled("queued invalidation"))?
            .slots
            - 2;
        let mut result = Ok(());
        for chunk in descs.chunks(per_batch.max(1)) {
            if let Err(e) = self.submit_batch(chunk) {
                if e == VtdError::InvalidationQueueStuck || e == VtdError::InvalidationTimeout {
                    return Err(e);
                }
                result = Err(e);
            }
        }
        if descs.is_empty() {
            return self.submit_batch(&[]);
        }
        result
    }

    fn write_desc(&self, base: u64, slot: usize, d: &InvDesc) {
        let pa = base + 32 * slot as u64;
        for (i, q) in d.0.iter().enumerate() {
            self.mem.write64(pa + 8 * i as u64, *q);
        }
    }

    fn submit_batch(&mut self, descs: &[InvDesc]) -> Result<(), VtdError> {
        let q = self
            .qi
            .as_mut()
            .ok_or(VtdError::NotEnabled("queued invalidation"))?;
        q.token = q.token.wrapping_add(1).max(1);
        let (base, slots, status, token) = (q.base, q.slots, q.status, q.token);
        let mut idx = q.tail;
        self.mem.write32(status, 0);
        let wait = InvDesc::wait_status(token, status, true);
        for d in descs.iter().chain(core::iter::once(&wait)) {
            self.write_desc(base, idx, d);
            idx = (idx + 1) % slots;
        }
        if let Some(q) = self.qi.as_mut() {
            q.tail = idx;
        }
        self.mem.barrier();
        self.regs.write(reg::IQT, iqa::tail_256(idx));

        let mut rejected = None;
        let mut recoveries = 0;
        let outcome = hwio::wait_until(&self.clock, self.cfg.timeout_ns, || {
            if self.mem.read32(status) == token {
                return Some(Ok(()));
            }
            let fsts = self.regs.read(reg::FSTS);
            if !fsts.contains(Fsts::IQE) {
                return None;
            }
            recoveries += 1;
            let head = iqa::index_256(self.regs.read(reg::IQH)) % slots;
            let pa = base + 32 * head as u64;
            let bad: [u64; 4] = core::array::from_fn(|i| self.mem.read64(pa + 8 * i as u64));
            log::error!("vtd: invalidation descriptor rejected at slot {head}: {bad:#x?}");
            if recoveries > 2 {
                self.regs.write(reg::FSTS, Fsts::IQE);
                return Some(Err(VtdError::InvalidationQueueStuck));
            }
            rejected.get_or_insert(VtdError::DescriptorRejected {
                qw0: bad[0],
                qw1: bad[1],
            });
            // A wait that writes a different value: harmless, and cannot match `token`.
            self.write_desc(
                base,
                head,
                &InvDesc::wait_status(token ^ 0x8000_0000, status, true),
            );
            self.mem.barrier();
            self.regs.write(reg::FSTS, Fsts::IQE);
            self.regs.write(reg::IQT, iqa::tail_256(idx));
            None
        });
        match outcome {
            Ok(Ok(())) => rejected.map_or(Ok(()), Err),
            Ok(Err(stuck)) => Err(stuck),
            Err(hwio::Timeout) => {
                log::error!("vtd: invalidation wait timed out (token {token})");
                Err(VtdError::InvalidationTimeout)
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Domain IDs and PASIDs
    // -----------------------------------------------------------------------------------------

    fn alloc_did(&mut self) -> Result<u16, VtdError> {
        // DID 0 is reserved (it tags not-present entries when CM=1).
        let i = (1..self.did_used.len())
            .find(|&i| !self.did_used[i])
            .ok_or(VtdError::DomainIdsExhausted)?;
        self.did_used[i] = true;
        Ok(i as u16)
    }

    fn free_did(&mut self, did: u16) {
        if let Some(u) = self.did_used.get_mut(usize::from(did)) {
            *u = false;
        }
    }

    fn pasid_limit(&self) -> u32 {
        1 << self.cfg.pasid_bits
    }

    // -----------------------------------------------------------------------------------------
    // Scalable-mode structures
    // -----------------------------------------------------------------------------------------

    fn pdts(&self) -> (u8, usize) {
        // Directory entries cover 64 PASIDs each; at least 2^7 entries (PDTS=0).
        let entries = (1usize << self.cfg.pasid_bits.saturating_sub(6)).max(128);
        let pdts = (entries.trailing_zeros() - 7) as u8;
        (pdts, (entries * 8).max(4096))
    }

    /// Creates the context entry of a device (with its PASID directory and a valid RID_PASID
    /// entry) if it has none yet.
    pub fn prepare_device(&mut self, bdf: Bdf) -> Result<(), VtdError> {
        let sid = bdf.sid();
        if self.devices.contains_key(&sid) {
            return Ok(());
        }
        let root = self.root.ok_or(VtdError::NotEnabled("root table"))?;
        let upper = bdf.devfn() >= 128;
        let ctx = match self.ctx_tables.get(&(bdf.bus, upper)) {
            Some(c) => *c,
            None => {
                let c = alloc_block(&mut self.mem, 4096, self.phys_bits)?;
                self.ctx_tables.insert((bdf.bus, upper), c);
                let slot = root + 16 * u64::from(bdf.bus);
                let mut re = RootEntry::decode([self.mem.read64(slot), self.mem.read64(slot + 8)]);
                if upper {
                    re.upper = Some(c);
                } else {
                    re.lower = Some(c);
                }
                let q = re.encode();
                self.mem.write64(slot + 8, q[1]);
                self.mem.write64(slot, q[0]);
                c
            }
        };
        let (pdts, dir_bytes) = self.pdts();
        let dir = alloc_block(&mut self.mem, dir_bytes, self.phys_bits)?;
        self.devices.insert(
            sid,
            DeviceTables {
                dir,
                dir_bytes,
                tables: BTreeMap::new(),
                slots: BTreeMap::new(),
            },
        );
        // RID_PASID must be valid before the context entry can be used (§9.4). The
        // context entry is not present yet, so nothing below it can be cached: the entry is
        // written without a flush; the context-cache invalidation below covers it (each
        // invalidation that touches a device costs QEMU an address-space rebuild).
        let default = self.default_rid_entry()?;
        let pa = self.pasid_entry_addr(sid, 0)?;
        let q = default.encode();
        for i in (1..8).rev() {
            self.mem.write64(pa + 8 * i as u64, q[i]);
        }
        self.mem.barrier();
        self.mem.write64(pa, q[0]);
        if let Some(d) = self.devices.get_mut(&sid) {
            d.slots.insert(0, SlotUse::Default);
        }
        let ce = ContextEntry {
            present: true,
            fpd: false,
            dte: false,
            pasid_enable: true,
            pre: false,
            pdts,
            pasid_dir: dir,
            rid_pasid: 0,
            rid_priv: false,
        }
        .encode();
        let pa = ctx + 32 * u64::from(bdf.devfn() & 0x7f);
        for i in (1..4).rev() {
            self.mem.write64(pa + 8 * i as u64, ce[i]);
        }
        self.mem.barrier();
        self.mem.write64(pa, ce[0]);
        // Not-present → present needs nothing with CM=0; the device-selective invalidation
        // covers CM=1 and re-evaluates QEMU's address-space switch (§6.5.3.3, context entry).
        self.invalidate(&[InvDesc::context_cache(CcGranularity::Device { sid, fm: 0 })])
    }

    fn default_rid_entry(&self) -> Result<PasidEntry, VtdError> {
        match self.cfg.rid_default {
            RidDefault::PassThrough => {
                let did = self
                    .pt_did
                    .ok_or(VtdError::Missing(Requirement::PassThrough))?;
                Ok(PasidEntry::pass_through(did))
            }
            RidDefault::Blocked => self.blocked_entry(),
        }
    }

    fn blocked_entry(&self) -> Result<PasidEntry, VtdError> {
        let (did, pt) = self
            .blocked
            .as_ref()
            .ok_or(VtdError::NotEnabled("root table"))?;
        Ok(self.translated_entry(*did, pt.root()))
    }

    fn translated_entry(&self, did: u16, root: u64) -> PasidEntry {
        match self.stage {
            StageKind::FirstStage => PasidEntry::first_stage(did, root),
            StageKind::SecondStage => {
                PasidEntry::second_stage(did, root, if self.ss_levels == 4 { AW_48 } else { AW_39 })
            }
        }
    }

    fn space_entry(&self, pasid: u32) -> Result<PasidEntry, VtdError> {
        let sp = self
            .spaces
            .get(&pasid)
            .ok_or(VtdError::NoSuchAddressSpace { pasid })?;
        Ok(match (&sp.kind, &sp.pt) {
            (SpaceKind::Translated, Some(pt)) => self.translated_entry(sp.did, pt.root()),
            (SpaceKind::Shared { fs_root }, _) => {
                let mut e = PasidEntry::first_stage(sp.did, *fs_root);
                e.nxe = true;
                e.wpe = true;
                e.sre = false;
                e
            }
            _ => PasidEntry::pass_through(sp.did),
        })
    }

    /// Physical address of a device's PASID-table entry, allocating the PASID table lazily.
    fn pasid_entry_addr(&mut self, sid: u16, slot: u32) -> Result<u64, VtdError> {
        let phys_bits = self.phys_bits;
        let dev = self
            .devices
            .get(&sid)
            .ok_or(VtdError::NotAttached { sid, pasid: slot })?;
        let dir_idx = slot >> 6;
        if u64::from(dir_idx) * 8 >= dev.dir_bytes as u64 {
            return Err(VtdError::PasidOutOfRange { pasid: slot });
        }
        let dir = dev.dir;
        let table = match dev.tables.get(&dir_idx) {
            Some(t) => *t,
            None => {
                let t = alloc_block(&mut self.mem, 4096, phys_bits)?;
                // Not-present → present directory entry: covered by the PASID-cache
                // invalidation that follows the entry write.
                self.mem
                    .write64(dir + 8 * u64::from(dir_idx), pasid_dir_entry::encode(t));
                if let Some(d) = self.devices.get_mut(&sid) {
                    d.tables.insert(dir_idx, t);
                }
                t
            }
        };
        Ok(table + 64 * u64::from(slot & 0x3f))
    }

    fn read_pasid_entry(&self, pa: u64) -> [u64; 8] {
        core::array::from_fn(|i| self.mem.read64(pa + 8 * i as u64))
    }

    /// The §6.5.3.3 flush for a PASID entry that was present: PASID cache (DID, PASID), then the
    /// IOTLB flavour matching its PGTT, plus the device-selective context-cache invalidation
    /// QEMU needs when PT is involved (done always: cheap).
    fn entry_flush(sid: u16, slot: u32, e: &PasidEntry) -> [InvDesc; 3] {
        let tlb = match e.pgtt {
            Pgtt::FirstStage | Pgtt::PassThrough => InvDesc::piotlb_pasid(e.did, slot),
            Pgtt::SecondStage | Pgtt::Nested => InvDesc::iotlb_domain(e.did),
        };
        [
            InvDesc::pasid_cache_pasid(e.did, slot),
            tlb,
            InvDesc::context_cache(CcGranularity::Device { sid, fm: 0 }),
        ]
    }

    /// Replaces a device's PASID entry. Present → anything goes through "clear qword 0,
    /// invalidate" first (a 512-bit entry cannot be written atomically), then the new entry is
    /// written with qword 0 last and invalidated again (covers CM=1 and QEMU's PT switch).
    fn write_pasid_entry(
        &mut self,
        sid: u16,
        slot: u32,
        new: Option<PasidEntry>,
    ) -> Result<(), VtdError> {
        let pa = self.pasid_entry_addr(sid, slot)?;
        let old_raw = self.read_pasid_entry(pa);
        if let Some(old) = PasidEntry::decode(&old_raw).filter(|_| old_raw[0] != 0) {
            // Zeroing qword 0 clears P and PGTT: QEMU ignores P of non-RID_PASID entries
            // (QEMU 10.0.2's PASID-entry checks), a zero PGTT makes it fault.
            self.mem.write64(pa, 0);
            self.mem.barrier();
            self.invalidate(&Self::entry_flush(sid, slot, &old))?;
            for i in 1..8 {
                self.mem.write64(pa + 8 * i, 0);
            }
        }
        if let Some(e) = new {
            let q = e.encode();
            for i in (1..8).rev() {
                self.mem.write64(pa + 8 * i as u64, q[i]);
            }
            self.mem.barrier();
            self.mem.write64(pa, q[0]);
            self.invalidate(&Self::entry_flush(sid, slot, &e))?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Address spaces
    // -----------------------------------------------------------------------------------------

    /// Creates an address space. `pasid`: a specific PASID (to keep PASIDs consistent across
    /// units), or None to allocate the lowest free one ≥ 1.
    pub fn create_address_space(
        &mut self,
        kind: SpaceKind,
        pasid: Option<u32>,
    ) -> Result<AddressSpaceId, VtdError> {
        if self.root.is_none() {
            return Err(VtdError::NotEnabled("root table"));
        }
        if kind == SpaceKind::PassThrough && !self.ecap.contains(Ecap::PT) {
            return Err(VtdError::Missing(Requirement::PassThrough));
        }
        if let SpaceKind::Shared { fs_root } = kind {
            if self.stage != StageKind::FirstStage {
                return Err(VtdError::Missing(Requirement::SharedFirstStage));
            }
            if !fs_root.is_multiple_of(4096) || fs_root == 0 || fs_root >> self.phys_bits != 0 {
                return Err(VtdError::BadRange {
                    iova: fs_root,
                    len: 4096,
                });
            }
        }
        let limit = self.pasid_limit();
        let pasid = match pasid {
            Some(p) if p == 0 || p >= limit => return Err(VtdError::PasidOutOfRange { pasid: p }),
            Some(p) if self.spaces.contains_key(&p) => {
                return Err(VtdError::PasidInUse { pasid: p });
            }
            Some(p) => p,
            None => (1..limit)
                .find(|p| !self.spaces.contains_key(p))
                .ok_or(VtdError::PasidsExhausted)?,
        };
        let did = self.alloc_did()?;
        let pt = match kind {
            SpaceKind::Translated => match self.new_page_table() {
                Ok(pt) => Some(pt),
                Err(e) => {
                    self.free_did(did);
                    return Err(e);
                }
            },
            SpaceKind::PassThrough | SpaceKind::Shared { .. } => None,
        };
        self.spaces.insert(
            pasid,
            Space {
                did,
                kind,
                pt,
                attachments: BTreeSet::new(),
                revoked: false,
            },
        );
        log::debug!("vtd: address space pasid {pasid} did {did} {kind:?}");
        Ok(AddressSpaceId(pasid))
    }

    /// The domain ID that tags the space's entries in the unit's caches.
    pub fn domain_id(&self, id: AddressSpaceId) -> Option<u16> {
        self.spaces.get(&id.0).map(|s| s.did)
    }

    /// Root of the space's page tables (the FSPTPTR/SSPTPTR its PASID entries carry).
    pub fn page_table_root(&self, id: AddressSpaceId) -> Option<u64> {
        self.spaces
            .get(&id.0)
            .and_then(|s| s.pt.as_ref())
            .map(IoPageTable::root)
    }

    fn space_mut(&mut self, id: AddressSpaceId) -> Result<&mut Space, VtdError> {
        self.spaces
            .get_mut(&id.0)
            .ok_or(VtdError::NoSuchAddressSpace { pasid: id.0 })
    }

    /// Maps `[iova, iova+len)` → `[phys, phys+len)`. Refuses the interrupt window.
    pub fn map(
        &mut self,
        id: AddressSpaceId,
        iova: u64,
        phys: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), VtdError> {
        let (mem, phys_bits) = (&mut self.mem, self.phys_bits);
        let sp = self
            .spaces
            .get_mut(&id.0)
            .ok_or(VtdError::NoSuchAddressSpace { pasid: id.0 })?;
        if sp.revoked {
            return Err(VtdError::AddressSpaceRevoked { pasid: id.0 });
        }
        let pt = sp
            .pt
            .as_mut()
            .ok_or(VtdError::NoPageTable { pasid: id.0 })?;
        pt.map(mem, phys_bits, iova, phys, len, perm)?;
        // Not-present → present needs no invalidation unless the unit caches not-present
        // entries (CM=1), §6.5.3.3.
        if self.cap.contains(Cap::CM) {
            self.flush_range(id.0, iova, len)?;
        }
        Ok(())
    }

    /// Unmaps the range and invalidates it in every PASID the space is attached at. Returns
    /// the number of bytes that were mapped.
    pub fn unmap(&mut self, id: AddressSpaceId, iova: u64, len: u64) -> Result<u64, VtdError> {
        if len == 0
            || !iova.is_multiple_of(4096)
            || !len.is_multiple_of(4096)
            || iova.checked_add(len).is_none()
        {
            return Err(VtdError::BadRange { iova, len });
        }
        let (mem, phys_bits) = (&mut self.mem, self.phys_bits);
        let sp = self
            .spaces
            .get_mut(&id.0)
            .ok_or(VtdError::NoSuchAddressSpace { pasid: id.0 })?;
        let pt = sp
            .pt
            .as_mut()
            .ok_or(VtdError::NoPageTable { pasid: id.0 })?;
        let mut tables = Vec::new();
        let unmapped = pt.unmap(mem, phys_bits, iova, len, &mut tables);
        // Emptied table pages go back only after the flush (IH=0) drops them from the
        // paging-structure caches; if it fails they are leaked, never reused while cached.
        let flushed = self.flush_range(id.0, iova, len);
        if flushed.is_ok() {
            for t in tables {
                self.mem.free(t, 4096);
            }
        }
        let done = unmapped?;
        flushed?;
        Ok(done)
    }

    /// Invalidates `[iova, iova + len)` of a [`SpaceKind::Shared`] space wherever it is
    /// attached (PASID-selective IOTLB, page-selective in chunks or the whole PASID, IH=0 so
    /// paging-structure caches go too), and waits for the invalidation to complete. The
    /// owner of the tables calls it after clearing entries and before freeing the pages.
    pub fn invalidate_range(
        &mut self,
        id: AddressSpaceId,
        iova: u64,
        len: u64,
    ) -> Result<(), VtdError> {
        if len == 0 || iova.checked_add(len).is_none() {
            return Err(VtdError::BadRange { iova, len });
        }
        self.flush_range(
            id.0,
            iova & !0xfff,
            (len + (iova & 0xfff)).next_multiple_of(4096),
        )
    }

    /// §6.5.3.3 (paging-entry changes): PASID-based IOTLB page-selective per attached slot (first stage) or IOTLB
    /// page-selective per domain (second stage); whole-PASID / whole-domain for large ranges.
    /// IH is left 0: paging-structure caches are flushed too (table pages may have changed).
    fn flush_range(&mut self, pasid: u32, iova: u64, len: u64) -> Result<(), VtdError> {
        let sp = self
            .spaces
            .get(&pasid)
            .ok_or(VtdError::NoSuchAddressSpace { pasid })?;
        let slots: BTreeSet<u32> = sp.attachments.iter().map(|(_, s)| *s).collect();
        if slots.is_empty() {
            return Ok(());
        }
        let chunks = invalidation_chunks(iova, len, self.cap.mamv(), MAX_PSI_DESCS);
        let mut descs = Vec::new();
        match self.stage {
            StageKind::FirstStage => {
                for slot in &slots {
                    match &chunks {
                        Some(c) => descs
                            .extend(c.iter().map(|(a, am)| {
                                InvDesc::piotlb_page(sp.did, *slot, *a, *am, false)
                            })),
                        None => descs.push(InvDesc::piotlb_pasid(sp.did, *slot)),
                    }
                }
            }
            StageKind::SecondStage => match (&chunks, self.cap.contains(Cap::PSI)) {
                (Some(c), true) => descs.extend(
                    c.iter()
                        .map(|(a, am)| InvDesc::iotlb_page(sp.did, *a, *am, false)),
                ),
                _ => descs.push(InvDesc::iotlb_domain(sp.did)),
            },
        }
        self.invalidate(&descs)
    }

    /// Software walk of the space's page tables.
    pub fn translate(&self, id: AddressSpaceId, iova: u64) -> Option<Translation> {
        let sp = self.spaces.get(&id.0)?;
        if sp.revoked {
            return None;
        }
        sp.pt.as_ref()?.translate(&self.mem, iova)
    }

    /// Lets `bdf` issue requests tagged with the space's PASID.
    pub fn attach(&mut self, bdf: Bdf, id: AddressSpaceId) -> Result<(), VtdError> {
        self.attach_slot(bdf, id, id.0)
    }

    /// Makes the space the one `bdf`'s requests without PASID (RID_PASID = 0) go through.
    pub fn attach_rid_pasid(&mut self, bdf: Bdf, id: AddressSpaceId) -> Result<(), VtdError> {
        self.attach_slot(bdf, id, 0)
    }

    fn attach_slot(&mut self, bdf: Bdf, id: AddressSpaceId, slot: u32) -> Result<(), VtdError> {
        let sid = bdf.sid();
        let sp = self
            .spaces
            .get(&id.0)
            .ok_or(VtdError::NoSuchAddressSpace { pasid: id.0 })?;
        if sp.revoked {
            return Err(VtdError::AddressSpaceRevoked { pasid: id.0 });
        }
        self.prepare_device(bdf)?;
        let current = self
            .devices
            .get(&sid)
            .and_then(|d| d.slots.get(&slot).copied());
        match current {
            Some(SlotUse::Space(p)) if p == id.0 => return Ok(()),
            Some(SlotUse::Space(_)) => return Err(VtdError::AlreadyAttached { sid, pasid: slot }),
            _ => {}
        }
        let e = self.space_entry(id.0)?;
        self.write_pasid_entry(sid, slot, Some(e))?;
        if let Some(d) = self.devices.get_mut(&sid) {
            d.slots.insert(slot, SlotUse::Space(id.0));
        }
        self.space_mut(id)?.attachments.insert((sid, slot));
        Ok(())
    }

    /// Detaches space `id` from PASID slot `id` of device `bdf` and invalidates what the unit
    /// cached for it.
    pub fn detach(&mut self, bdf: Bdf, id: AddressSpaceId) -> Result<(), VtdError> {
        self.detach_slot(bdf.sid(), id, id.0, SlotUse::Default)
    }

    /// Returns `bdf`'s requests without PASID to the default (blocked or pass-through).
    pub fn detach_rid_pasid(&mut self, bdf: Bdf, id: AddressSpaceId) -> Result<(), VtdError> {
        self.detach_slot(bdf.sid(), id, 0, SlotUse::Default)
    }

    /// Puts `bdf`'s RID_PASID slot back to the configured default, whatever it holds now
    /// (e.g. blocked after its space was revoked).
    pub fn reset_rid_pasid(&mut self, bdf: Bdf) -> Result<(), VtdError> {
        let sid = bdf.sid();
        self.prepare_device(bdf)?;
        match self
            .devices
            .get(&sid)
            .and_then(|d| d.slots.get(&0).copied())
        {
            Some(SlotUse::Default) => Ok(()),
            Some(SlotUse::Space(p)) => self.detach_rid_pasid(bdf, AddressSpaceId(p)),
            _ => {
                let e = self.default_rid_entry()?;
                self.write_pasid_entry(sid, 0, Some(e))?;
                if let Some(d) = self.devices.get_mut(&sid) {
                    d.slots.insert(0, SlotUse::Default);
                }
                Ok(())
            }
        }
    }

    /// `after`: what a RID_PASID slot becomes ([`SlotUse::Default`] or [`SlotUse::Blocked`]);
    /// other slots are cleared.
    fn detach_slot(
        &mut self,
        sid: u16,
        id: AddressSpaceId,
        slot: u32,
        after: SlotUse,
    ) -> Result<(), VtdError> {
        let current = self
            .devices
            .get(&sid)
            .and_then(|d| d.slots.get(&slot).copied());
        if current != Some(SlotUse::Space(id.0)) {
            return Err(VtdError::NotAttached { sid, pasid: slot });
        }
        let new = match (slot, after) {
            (0, SlotUse::Blocked) => Some(self.blocked_entry()?),
            (0, _) => Some(self.default_rid_entry()?),
            _ => None,
        };
        self.write_pasid_entry(sid, slot, new)?;
        if let Some(d) = self.devices.get_mut(&sid) {
            if slot == 0 {
                d.slots.insert(
                    0,
                    if after == SlotUse::Blocked {
                        SlotUse::Blocked
                    } else {
                        SlotUse::Default
                    },
                );
            } else {
                d.slots.remove(&slot);
            }
        }
        self.space_mut(id)?.attachments.remove(&(sid, slot));
        Ok(())
    }

    /// Revokes a space: every PASID entry pointing at it is cleared (qword 0 ← 0) and
    /// invalidated; RID_PASID slots get the blocked domain (not the default: with a
    /// pass-through default the device would suddenly reach all of memory), so any later DMA
    /// with it faults. [`Self::reset_rid_pasid`] or a new attachment lifts the block. The
    /// space keeps its page tables until [`Self::destroy_address_space`].
    pub fn revoke(&mut self, id: AddressSpaceId) -> Result<(), VtdError> {
        let atts: Vec<(u16, u32)> = self.space_mut(id)?.attachments.iter().copied().collect();
        let mut first_err = Ok(());
        for (sid, slot) in atts {
            if let Err(e) = self.detach_slot(sid, id, slot, SlotUse::Blocked) {
                log::error!("vtd: revoking pasid {} on sid {sid:#06x}: {e}", id.0);
                if first_err.is_ok() {
                    first_err = Err(e);
                }
            }
        }
        self.space_mut(id)?.revoked = true;
        first_err
    }

    /// Revokes (if needed) and frees the space's tables, DID and PASID.
    pub fn destroy_address_space(&mut self, id: AddressSpaceId) -> Result<(), VtdError> {
        self.revoke(id)?;
        let sp = self
            .spaces
            .remove(&id.0)
            .ok_or(VtdError::NoSuchAddressSpace { pasid: id.0 })?;
        if let Some(pt) = sp.pt {
            pt.free(&mut self.mem);
        }
        self.free_did(sp.did);
        Ok(())
    }

    /// The PASID-table entry of `bdf` for `pasid` as stored (None: no PASID table covers it
    /// yet). Reads only the unit's own tables, unlike a walk through a shared space.
    pub fn pasid_entry(&self, bdf: Bdf, pasid: u32) -> Option<[u64; 8]> {
        let dev = self.devices.get(&bdf.sid())?;
        let table = *dev.tables.get(&(pasid >> 6))?;
        Some(self.read_pasid_entry(table + 64 * u64::from(pasid & 0x3f)))
    }

    /// Walks the unit's structures from the root table exactly as the hardware does for a
    /// request from `bdf` (with `pasid`, or none → RID_PASID), returning the translation or
    /// the fault reason the unit would record. Diagnostics and tests.
    pub fn hardware_walk(
        &self,
        bdf: Bdf,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
    ) -> Result<Translation, FaultReason> {
        self.hardware_walk_traced(bdf, pasid, iova, write, &mut WalkTrace::default())
    }

    /// [`Self::hardware_walk`] that also records every entry it read, so a caller can compare
    /// them with what the hardware left behind (first-stage A/D bits after real DMA).
    pub fn hardware_walk_traced(
        &self,
        bdf: Bdf,
        pasid: Option<u32>,
        iova: u64,
        write: bool,
        trace: &mut WalkTrace,
    ) -> Result<Translation, FaultReason> {
        let root = self.root.ok_or(FaultReason::RootTableUnreadable)?;
        let slot = root + 16 * u64::from(bdf.bus);
        let re = RootEntry::decode([self.mem.read64(slot), self.mem.read64(slot + 8)]);
        let ctx = if bdf.devfn() >= 128 {
            re.upper
        } else {
            re.lower
        }
        .ok_or(FaultReason::RootEntryNotPresent)?;
        let cpa = ctx + 32 * u64::from(bdf.devfn() & 0x7f);
        let craw: [u64; 4] = core::array::from_fn(|i| self.mem.read64(cpa + 8 * i as u64));
        trace.context_entry = craw;
        let ce = ContextEntry::decode(craw);
        if !ce.present {
            return Err(FaultReason::ContextEntryNotPresent);
        }
        if !ContextEntry::reserved_bits_clear(craw) {
            return Err(FaultReason::ContextEntryReserved);
        }
        let p = pasid.unwrap_or(ce.rid_pasid);
        trace.pasid = p;
        if u64::from(p >> 6) >= 1u64 << (ce.pdts + 7) {
            return Err(FaultReason::PasidDirEntryNotPresent);
        }
        let de = self.mem.read64(ce.pasid_dir + 8 * u64::from(p >> 6));
        let table = pasid_dir_entry::decode(de).ok_or(FaultReason::PasidDirEntryNotPresent)?;
        let e = self.read_pasid_entry(table + 64 * u64::from(p & 0x3f));
        trace.pasid_entry = e;
        let pe = PasidEntry::decode(&e).ok_or(FaultReason::InvalidPasidEntry)?;
        if !pe.present {
            return Err(FaultReason::PasidEntryNotPresent);
        }
        let view = View(&self.mem);
        match pe.pgtt {
            Pgtt::PassThrough => Ok(Translation {
                phys: iova,
                perm: Perm::RW,
                page_size: 4096,
            }),
            Pgtt::FirstStage => {
                let w = x86_paging::walk::<x86_paging::X86, _>(&view, pe.fs_root, 4, iova);
                judge_walk(w, StageKind::FirstStage, iova, write, trace)
            }
            Pgtt::SecondStage => {
                let levels = if pe.aw == AW_39 { 3 } else { 4 };
                let w = x86_paging::walk::<SecondStage, _>(&view, pe.ss_root, levels, iova);
                judge_walk(w, StageKind::SecondStage, iova, write, trace)
            }
            Pgtt::Nested => Err(FaultReason::InvalidPasidEntry),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Fault reporting (§7.2, §7.3)
    // -----------------------------------------------------------------------------------------

    /// Programs the fault-event MSI in compatibility format (it is never remapped) and unmasks
    /// it. `apic_id` must fit 8 bits (FEUADDR is not used).
    pub fn configure_fault_event(&mut self, apic_id: u32, vector: u8) -> Result<(), VtdError> {
        let id = u8::try_from(apic_id).map_err(|_| VtdError::ApicIdTooWide { apic_id })?;
        if vector < 16 {
            return Err(VtdError::BadVector { vector });
        }
        self.regs.write(reg::FECTL, EventCtl::IM);
        self.regs.write(reg::FEDATA, u32::from(vector));
        self.regs.write(reg::FEADDR, spec::event_msi_address(id));
        self.clear_stale_faults();
        self.regs.write(reg::FECTL, EventCtl::empty());
        self.fault_event_programmed = true;
        Ok(())
    }

    /// Fault-recording register `i` (`i` < CAP.NFR + 1, as the callers' loops keep it).
    fn frcd(&self, i: usize) -> hwio::Block<'_, R> {
        let t = self.cap.fault_records();
        self.regs.block(t.base + t.stride * i as u64, t.stride)
    }

    fn clear_stale_faults(&mut self) {
        for i in 0..self.cap.fault_record_count() {
            let r = self.frcd(i);
            if r.read(frcd::HI) & spec::FRCD_F != 0 {
                r.write(frcd::F_CLEAR, (spec::FRCD_F >> 32) as u32);
            }
        }
        self.regs.write(reg::FSTS, Fsts::PFO | Fsts::IQE);
    }

    /// The fault-event handler body: reads pending fault records from FSTS.FRI on, decodes,
    /// counts and clears them, then clears PFO. Bounded by the number of records.
    pub fn handle_faults(&mut self) -> FaultBatch {
        let mut out = FaultBatch::default();
        let fsts = self.regs.read(reg::FSTS);
        let n = self.cap.fault_record_count();
        if fsts.contains(Fsts::PPF) {
            let mut i = fsts.fri() % n;
            for _ in 0..n {
                let r = self.frcd(i);
                // High qword first: F lives there, and the low qword is valid once F is seen.
                let hi = r.read(frcd::HI);
                let Some(rec) = FaultRecord::decode(r.read(frcd::LO), hi) else {
                    break;
                };
                r.write(frcd::F_CLEAR, (spec::FRCD_F >> 32) as u32);
                self.count_fault(&rec);
                // The kernel prints the user-facing line (with the segment); this one is for
                // debugging the driver itself.
                log::debug!(
                    "vtd fault: sid {} pasid {:?} {} addr {:#x} reason {:#04x} ({})",
                    Bdf::from_sid(rec.source_id),
                    rec.pasid,
                    if rec.is_read { "read" } else { "write" },
                    rec.interrupt_index.map_or(rec.address, u64::from),
                    rec.code,
                    rec.reason.name()
                );
                out.records.push(rec);
                i = (i + 1) % n;
            }
        }
        if fsts.contains(Fsts::PFO) {
            out.overflow = true;
            self.faults.overflows += 1;
            log::warn!("vtd: primary fault overflow: faults were dropped");
            self.regs.write(reg::FSTS, Fsts::PFO);
        }
        out.queue_error = fsts.contains(Fsts::IQE);
        out
    }

    fn count_fault(&mut self, r: &FaultRecord) {
        self.faults.total += 1;
        *self.faults.per_source.entry(r.source_id).or_default() += 1;
        if let Some(p) = r.pasid {
            *self.faults.per_pasid.entry(p).or_default() += 1;
        }
        *self.faults.per_reason.entry(r.code).or_default() += 1;
    }

    /// Fault statistics since init.
    pub fn fault_counters(&self) -> &FaultCounters {
        &self.faults
    }

    // -----------------------------------------------------------------------------------------
    // Interrupt remapping (§5.1)
    // -----------------------------------------------------------------------------------------

    fn ir(&self) -> Result<&IrState, VtdError> {
        self.ir
            .as_ref()
            .ok_or(VtdError::NotEnabled("interrupt remapping"))
    }

    fn irte_entry(
        &self,
        x2apic: bool,
        apic_id: u32,
        vector: u8,
        source: SourceValidation,
    ) -> Result<Irte, VtdError> {
        if !x2apic && apic_id > 0xff {
            return Err(VtdError::ApicIdTooWide { apic_id });
        }
        if vector < 16 {
            return Err(VtdError::BadVector { vector });
        }
        Ok(Irte::fixed(vector, apic_id, x2apic, source))
    }

    /// Allocates `count` contiguous IRTEs (count > 1 for multi-message MSI: the device adds
    /// the message number to the subhandle) delivering `vector` to `apic_id`, edge, fixed,
    /// physical, with the given source validation (use `RequesterId { sid, sq: 0 }`).
    pub fn alloc_irte(
        &mut self,
        apic_id: u32,
        vector: u8,
        source: SourceValidation,
        count: u16,
    ) -> Result<IrteHandle, VtdError> {
        if count == 0 || !count.is_power_of_two() {
            return Err(VtdError::BadCount {
                count: u32::from(count),
            });
        }
        let ir = self.ir()?;
        let e = self.irte_entry(ir.x2apic, apic_id, vector, source)?;
        self.alloc_irte_entries(e.encode(), count)
    }

    /// Writes `q` into `count` free contiguous entries (qword 1 first, then qword 0 with P)
    /// and invalidates them.
    fn alloc_irte_entries(&mut self, q: [u64; 2], count: u16) -> Result<IrteHandle, VtdError> {
        let ir = self.ir()?;
        let n = usize::from(count);
        // Multi-message blocks are aligned to their size so an index-selective IEC (IM) covers them.
        let start = (0..ir.entries.saturating_sub(n - 1))
            .step_by(n)
            .find(|&s| ir.used[s..s + n].iter().all(|u| !u))
            .ok_or(VtdError::IrteExhausted)?;
        let base = ir.base;
        for i in start..start + n {
            let pa = base + 16 * i as u64;
            self.mem.write64(pa + 8, q[1]);
            self.mem.barrier();
            self.mem.write64(pa, q[0]);
        }
        if let Some(ir) = self.ir.as_mut() {
            ir.used[start..start + n].iter_mut().for_each(|u| *u = true);
        }
        let handle = IrteHandle {
            index: start as u16,
            count,
        };
        self.invalidate(&[self.iec_for(handle)])?;
        Ok(handle)
    }

    fn iec_for(&self, h: IrteHandle) -> InvDesc {
        let im = h.count.trailing_zeros() as u8;
        if im <= self.ecap.mhmv() {
            InvDesc::iec_index(h.index, im)
        } else {
            InvDesc::iec_global()
        }
    }

    fn check_handle(&self, h: IrteHandle) -> Result<u64, VtdError> {
        let ir = self.ir()?;
        let (s, n) = (usize::from(h.index), usize::from(h.count));
        if n == 0 || s + n > ir.entries || !ir.used[s..s + n].iter().all(|u| *u) {
            return Err(VtdError::BadIrteHandle { handle: h.index });
        }
        Ok(ir.base)
    }

    /// The remappable MSI message (SHV=1, subhandle 0) for a handle.
    pub fn msi_message(&self, h: IrteHandle) -> Result<RemappableMsi, VtdError> {
        self.check_handle(h)?;
        Ok(RemappableMsi::for_handle(h.index))
    }

    /// IOAPIC RTE in remappable format; the vector must equal the IRTE's (EOI matching).
    pub fn ioapic_rte(
        &self,
        h: IrteHandle,
        level_triggered: bool,
        masked: bool,
    ) -> Result<u64, VtdError> {
        let base = self.check_handle(h)?;
        let e = Irte::decode(
            [self.mem.read64(base + 16 * u64::from(h.index)), 0],
            self.x2apic_irtes(),
        );
        Ok(spec::ioapic_rte(h.index, e.vector, level_triggered, masked))
    }

    /// Reads the remapped-format IRTE at `index` (a posted-format entry decodes as garbage: use
    /// [`spec::IrteFormat::decode`] on the raw qwords for those).
    pub fn read_irte(&self, index: u16) -> Result<Irte, VtdError> {
        let ir = self.ir()?;
        if usize::from(index) >= ir.entries {
            return Err(VtdError::BadIrteHandle { handle: index });
        }
        let pa = ir.base + 16 * u64::from(index);
        Ok(Irte::decode(
            [self.mem.read64(pa), self.mem.read64(pa + 8)],
            ir.x2apic,
        ))
    }

    /// Changes destination and vector of present IRTEs. Both live in qword 0, so each entry is
    /// updated by one 64-bit store (atomic present → present, §5.1.3), then IEC.
    pub fn retarget_irte(
        &mut self,
        h: IrteHandle,
        apic_id: u32,
        vector: u8,
    ) -> Result<(), VtdError> {
        let base = self.check_handle(h)?;
        let x2 = self.x2apic_irtes();
        if self.irte_is_posted(base, h) {
            return Err(VtdError::WrongIrteFormat { handle: h.index });
        }
        for i in h.index..h.index + h.count {
            let pa = base + 16 * u64::from(i);
            let old = Irte::decode([self.mem.read64(pa), self.mem.read64(pa + 8)], x2);
            let mut e = self.irte_entry(x2, apic_id, vector, old.svt)?;
            e.level_triggered = old.level_triggered;
            self.mem.write64(pa, e.encode()[0]);
        }
        self.invalidate(&[self.iec_for(h)])
    }

    /// Changes source validation: qword 1 cannot change atomically with qword 0, so the entry
    /// goes not-present, is invalidated, rewritten and made present again. Either format:
    /// SID/SQ/SVT sit in qword 1 bits 19:0 in both, and nothing else changes.
    pub fn set_irte_source(
        &mut self,
        h: IrteHandle,
        source: SourceValidation,
    ) -> Result<(), VtdError> {
        let base = self.check_handle(h)?;
        let mut saved = Vec::new();
        for i in h.index..h.index + h.count {
            let pa = base + 16 * u64::from(i);
            let q0 = self.mem.read64(pa);
            saved.push((pa, q0));
            self.mem.write64(pa, q0 & !1);
        }
        self.invalidate(&[self.iec_for(h)])?;
        for (pa, q0) in saved {
            let q1 = self.mem.read64(pa + 8);
            let q1 = (q1 & !SourceValidation::QWORD1_MASK) | source.qword1();
            self.mem.write64(pa + 8, q1);
            self.mem.barrier();
            self.mem.write64(pa, q0 | 1);
        }
        self.invalidate(&[self.iec_for(h)])
    }

    /// Clears the entries (not present), invalidates them, then frees the indices.
    pub fn free_irte(&mut self, h: IrteHandle) -> Result<(), VtdError> {
        let base = self.check_handle(h)?;
        for i in h.index..h.index + h.count {
            self.mem.write64(base + 16 * u64::from(i), 0);
        }
        self.invalidate(&[self.iec_for(h)])?;
        for i in h.index..h.index + h.count {
            self.mem.write64(base + 16 * u64::from(i) + 8, 0);
        }
        if let Some(ir) = self.ir.as_mut() {
            let s = usize::from(h.index);
            ir.used[s..s + usize::from(h.count)]
                .iter_mut()
                .for_each(|u| *u = false);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Interrupt posting (Intel VT-d Architecture Specification rev 4.1, §5.2, §9.10, §9.11)
    // -----------------------------------------------------------------------------------------

    /// Whether the unit takes posted-format IRTEs (CAP.PI).
    pub fn posted_interrupts(&self) -> bool {
        self.cap.contains(Cap::PI)
    }

    fn irte_is_posted(&self, base: u64, h: IrteHandle) -> bool {
        self.mem.read64(base + 16 * u64::from(h.index)) & IRTE_IM != 0
    }

    /// An entry in either format (diagnostics and tests).
    pub fn read_irte_format(&self, index: u16) -> Result<IrteFormat, VtdError> {
        let ir = self.ir()?;
        if usize::from(index) >= ir.entries {
            return Err(VtdError::BadIrteHandle { handle: index });
        }
        let pa = ir.base + 16 * u64::from(index);
        Ok(IrteFormat::decode(
            [self.mem.read64(pa), self.mem.read64(pa + 8)],
            ir.x2apic,
        ))
    }

    /// Checks what a posted entry needs: CAP.PI, a single entry, and a descriptor address
    /// that is 64-byte aligned and within the unit's address width (§9.10, §9.11).
    fn check_posted(&self, h: Option<IrteHandle>, descriptor: u64) -> Result<(), VtdError> {
        if !self.posted_interrupts() {
            return Err(VtdError::Missing(Requirement::PostedInterrupts));
        }
        if let Some(h) = h
            && h.count != 1
        {
            return Err(VtdError::BadCount {
                count: u32::from(h.count),
            });
        }
        if descriptor == 0
            || !descriptor.is_multiple_of(pid::SIZE as u64)
            || descriptor >> self.phys_bits != 0
        {
            return Err(VtdError::BadPostedDescriptor { addr: descriptor });
        }
        Ok(())
    }
}

/// Posted-format entries: their descriptor address spans both qwords, so a change of both
/// is one 128-bit compare-and-exchange ([`UnitMemory128`]), as Linux's `modify_irte` does;
/// a change of qword 0 alone is one 64-bit store. Either way the entry goes from one
/// present value to the next with no window, then the interrupt entry cache is invalidated
/// (index-selective, and waited for).
impl<R: Registers, M: UnitMemory128, C: Clock> RemappingUnit<R, M, C> {
    /// Allocates one IRTE in posted format: requests through it set bit `vector` of the PIR
    /// of the descriptor at `descriptor` (§5.2.3), after the same source-ID check as a
    /// remapped entry.
    pub fn alloc_posted_irte(
        &mut self,
        descriptor: u64,
        vector: u8,
        urgent: bool,
        source: SourceValidation,
    ) -> Result<IrteHandle, VtdError> {
        self.check_posted(None, descriptor)?;
        let e = PostedIrte::new(descriptor, vector, urgent, source);
        self.alloc_irte_entries(e.encode(), 1)
    }

    /// Makes a present entry (either format) post to (`descriptor`, `vector`), keeping its
    /// FPD, AVAIL and source validation: remapped → posted, or a posted retarget.
    pub fn set_irte_posted(
        &mut self,
        h: IrteHandle,
        descriptor: u64,
        vector: u8,
        urgent: bool,
    ) -> Result<(), VtdError> {
        self.check_posted(Some(h), descriptor)?;
        self.replace_irte(h, |_, old| {
            let (fpd, avail, svt) = match old {
                IrteFormat::Remapped(e) => (e.fpd, e.avail, e.svt),
                IrteFormat::Posted(e) => (e.fpd, e.avail, e.svt),
            };
            let mut e = PostedIrte::new(descriptor, vector, urgent, svt);
            e.fpd = fpd;
            e.avail = avail;
            Ok(e.encode())
        })
    }

    /// Makes a present entry (either format) deliver `vector` to `apic_id` (fixed,
    /// physical, edge), keeping its FPD, AVAIL and source validation: posted → remapped.
    pub fn set_irte_remapped(
        &mut self,
        h: IrteHandle,
        apic_id: u32,
        vector: u8,
    ) -> Result<(), VtdError> {
        let x2 = self.x2apic_irtes();
        self.replace_irte(h, |unit, old| {
            let (fpd, avail, svt) = match old {
                IrteFormat::Remapped(e) => (e.fpd, e.avail, e.svt),
                IrteFormat::Posted(e) => (e.fpd, e.avail, e.svt),
            };
            let mut e = unit.irte_entry(x2, apic_id, vector, svt)?;
            e.fpd = fpd;
            e.avail = avail;
            Ok(e.encode())
        })
    }

    /// Writes raw bits (either format, reserved bits included) into an allocated entry, with
    /// the same atomic update and invalidation: for tests of the unit's own checks.
    ///
    /// # Safety
    /// A posted-format entry makes the unit write to the descriptor address it names.
    pub unsafe fn write_irte_raw(&mut self, h: IrteHandle, q: [u64; 2]) -> Result<(), VtdError> {
        self.replace_irte(h, |_, _| Ok(q))
    }

    fn replace_irte(
        &mut self,
        h: IrteHandle,
        new: impl Fn(&Self, IrteFormat) -> Result<[u64; 2], VtdError>,
    ) -> Result<(), VtdError> {
        let base = self.check_handle(h)?;
        let x2 = self.x2apic_irtes();
        for i in h.index..h.index + h.count {
            let pa = base + 16 * u64::from(i);
            let old = [self.mem.read64(pa), self.mem.read64(pa + 8)];
            let q = new(self, IrteFormat::decode(old, x2))?;
            if q[1] == old[1] {
                self.mem.write64(pa, q[0]);
            } else {
                self.mem
                    .compare_exchange128(pa, old, q)
                    .map_err(|_| VtdError::IrteChanged { handle: i })?;
            }
        }
        self.invalidate(&[self.iec_for(h)])
    }
}

/// Judges the paging entries of a walk like the unit: first stage needs P and U/S at every
/// level (DMA requests are user requests), second stage R or W; writes need write
/// permission at every level. Records each entry in `trace`.
fn judge_walk(
    entries: impl Iterator<Item = Result<x86_paging::WalkEntry, x86_paging::MapError>>,
    stage: StageKind,
    iova: u64,
    write: bool,
    trace: &mut WalkTrace,
) -> Result<Translation, FaultReason> {
    let first = stage == StageKind::FirstStage;
    let mut writable = true;
    for e in entries {
        let e = e.map_err(|_| {
            if first {
                FaultReason::FsPagingEntryUnreadable
            } else {
                FaultReason::SsPagingEntryUnreadable
            }
        })?;
        trace.paging.push((e.level, e.addr, e.value));
        if first {
            let f = FsPte::from_bits_retain(e.value);
            if !f.contains(FsPte::PRESENT) {
                return Err(FaultReason::FsEntryNotPresent);
            }
            if !f.contains(FsPte::USER) {
                return Err(FaultReason::UserSupervisorViolation);
            }
            writable &= f.contains(FsPte::WRITABLE);
        } else {
            let f = SsPte::from_bits_retain(e.value);
            if !f.intersects(SsPte::R | SsPte::W) {
                return Err(FaultReason::ReadNotPermitted);
            }
            writable &= f.contains(SsPte::W);
        }
        if e.is_leaf() {
            if write && !writable {
                return Err(if first {
                    FaultReason::SmWriteNotPermitted
                } else {
                    FaultReason::WriteNotPermitted
                });
            }
            let size = 1u64 << (12 + 9 * (u64::from(e.level) - 1));
            return Ok(Translation {
                phys: (e.value & spec::PTE_ADDR_MASK & !(size - 1)) + (iova & (size - 1)),
                perm: Perm {
                    read: true,
                    write: writable,
                },
                page_size: size,
            });
        }
    }
    // A walk ends at a leaf, a non-present entry or an unreachable table (all above).
    Err(FaultReason::FsEntryNotPresent)
}
