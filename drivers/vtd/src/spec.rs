//! The VT-d specification tables, written once: register offsets and fields, and the in-memory
//! structures (scalable-mode root/context/PASID entries, page-table entries, 256-bit invalidation
//! descriptors, IRTEs, MSI formats) with encoders and decoders. Names follow the Intel VT-d
//! specification: registers (§11.4), translation structures (§9), invalidation descriptors
//! (§6.5.2), interrupt remapping (§5.1, §9.9), interrupt posting (§5.2, §9.10, §9.11), fault
//! reasons (§7.1.3). § numbers are those of the Intel VT-d Architecture Specification rev 4.1
//! (order number D51397); the worked encodings in the tests come from QEMU 10.0.2's
//! `hw/i386/intel_iommu.c`, which the kernel runs against.

#![allow(clippy::unusual_byte_groupings)]

use bitflags::bitflags;

hwio::register_map! {
    /// The remapping unit's registers at fixed offsets (VT-d spec §11.4), each with its width,
    /// value type and access. The fault-recording and IOTLB registers sit where CAP.FRO and
    /// ECAP.IRO say ([`frcd`]).
    pub mod reg {
        /// Version (§11.4.1).
        0x000 => VER: u32, ReadOnly;
        /// Capability (§11.4.2).
        0x008 => CAP: Cap, ReadOnly;
        /// Extended capability (§11.4.3).
        0x010 => ECAP: Ecap, ReadOnly;
        /// Global command (§11.4.4.1).
        0x018 => GCMD: Gcmd, WriteOnly;
        /// Global status (§11.4.4.2).
        0x01c => GSTS: Gsts, ReadOnly;
        /// Root table address (§11.4.5; [`rtaddr::encode`]).
        0x020 => RTADDR: u64, ReadWrite;
        /// Context command (§11.4.6.1; register-based invalidation, unused with QI).
        0x028 => CCMD: u64, ReadWrite;
        /// Fault status (§11.4.7.1; PFO, IQE, ICE, ITE are RW1C, FRI read-only).
        0x034 => FSTS: Fsts, WriteOneToClear;
        /// Fault event control (§11.4.7.2).
        0x038 => FECTL: EventCtl, ReadWrite;
        /// Fault event data (§11.4.7.3).
        0x03c => FEDATA: u32, ReadWrite;
        /// Fault event address (§11.4.7.4).
        0x040 => FEADDR: u32, ReadWrite;
        /// Fault event upper address (§11.4.7.5).
        0x044 => FEUADDR: u32, ReadWrite;
        /// Advanced fault log (reserved since advanced fault logging left the specification;
        /// 64 bits wide).
        0x058 => AFLOG: u64, ReadWrite;
        /// Protected memory enable (§11.4.8.1).
        0x064 => PMEN: u32, ReadWrite;
        /// Invalidation queue head (§11.4.9.1; [`iqa::index_256`]).
        0x080 => IQH: u64, ReadOnly;
        /// Invalidation queue tail (§11.4.9.2; [`iqa::tail_256`]).
        0x088 => IQT: u64, ReadWrite;
        /// Invalidation queue address (§11.4.9.3; [`iqa::encode`]).
        0x090 => IQA: u64, ReadWrite;
        /// Invalidation completion status (§11.4.9.4).
        0x09c => ICS: Ics, WriteOneToClear;
        /// Invalidation event control (§11.4.9.5).
        0x0a0 => IECTL: EventCtl, ReadWrite;
        /// Invalidation event data (§11.4.9.6).
        0x0a4 => IEDATA: u32, ReadWrite;
        /// Invalidation event address (§11.4.9.7).
        0x0a8 => IEADDR: u32, ReadWrite;
        /// Invalidation event upper address (§11.4.9.8).
        0x0ac => IEUADDR: u32, ReadWrite;
        /// Invalidation queue error record (§11.4.9.9).
        0x0b0 => IQERCD: u64, ReadOnly;
        /// Interrupt remapping table address (§11.4.10; [`irta::encode`]).
        0x0b8 => IRTA: u64, ReadWrite;
    }
}

/// Access width (bits) the hardware (and QEMU's asserts) require at an offset, for the fixed
/// registers of [`reg`]. FRCD and IOTLB/IVA offsets depend on CAP.FRO / ECAP.IRO and are
/// 64-bit (FRCD: two 64-bit halves; its F bit may also be cleared with a 32-bit write at
/// +0xC, [`frcd::F_CLEAR`]).
pub fn reg_width(offset: u64) -> Option<u8> {
    reg::LAYOUT
        .iter()
        .find(|&&(o, _)| o == offset)
        .map(|&(_, bytes)| (bytes * 8) as u8)
}

/// One fault-recording register (§11.4.7.6), relative to its start (register n at CAP.FRO × 16
/// + 16n): two 64-bit halves ([`FaultRecord::decode`]).
pub mod frcd {
    use hwio::Reg;
    use hwio::access::{ReadOnly, WriteOneToClear};

    /// Bytes per fault-recording register.
    pub const SIZE: u64 = 16;
    /// Bits 63:0: the faulting page address.
    pub const LO: Reg<u64, ReadOnly> = Reg::new(0x0);
    /// Bits 127:64: source ID, reason, PASID, type, F (bit 127).
    pub const HI: Reg<u64, ReadOnly> = Reg::new(0x8);
    /// The upper dword of [`HI`], through which the F bit (its bit 31) is cleared by writing 1
    /// (RW1C) without touching the rest.
    pub const F_CLEAR: Reg<u32, WriteOneToClear> = Reg::new(0xc);
}

hwio::flags_value!(Cap: u64, Ecap: u64, Gcmd: u32, Gsts: u32, Fsts: u32, EventCtl: u32, Ics: u32);

bitflags! {
    /// Capability register (0x08), §11.4.2.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Cap: u64 {
        /// Bit 3: advanced fault logging supported.
        const AFL = 1 << 3;
        /// Bit 4: required write-buffer flushing (software must flush before invalidating).
        const RWBF = 1 << 4;
        /// Bit 5: protected low-memory region supported.
        const PLMR = 1 << 5;
        /// Bit 6: protected high-memory region supported.
        const PHMR = 1 << 6;
        /// Bit 7: caching mode, the unit may cache not-present and invalid entries
        /// (invalidate after making an entry present too).
        const CM = 1 << 7;
        /// Bit 9 (SAGAW bit 1): 39-bit, 3-level second-stage tables supported.
        const SAGAW_39 = 1 << 9;
        /// Bit 10 (SAGAW bit 2): 48-bit, 4-level second-stage tables supported.
        const SAGAW_48 = 1 << 10;
        /// Bit 11 (SAGAW bit 3): 57-bit, 5-level second-stage tables supported.
        const SAGAW_57 = 1 << 11;
        /// Bit 22: zero-length reads supported.
        const ZLR = 1 << 22;
        /// Bit 34 (SSLPS bit 0): 2 MiB second-stage pages supported.
        const SSLPS_2M = 1 << 34;
        /// Bit 35 (SSLPS bit 1): 1 GiB second-stage pages supported.
        const SSLPS_1G = 1 << 35;
        /// Bit 39: page-selective IOTLB invalidation supported.
        const PSI = 1 << 39;
        /// Bit 54: write draining supported.
        const DWD = 1 << 54;
        /// Bit 55: read draining supported.
        const DRD = 1 << 55;
        /// Bit 56: 1 GiB first-stage pages supported.
        const FS1GP = 1 << 56;
        /// Bit 59: posted interrupts supported.
        const PI = 1 << 59;
        /// Bit 60: 5-level first-stage paging supported.
        const FS5LP = 1 << 60;
        /// Bit 61: enhanced command supported.
        const ECMDS = 1 << 61;
        /// Bit 62: SIRTP also invalidates the interrupt entry cache.
        const ESIRTPS = 1 << 62;
        /// Bit 63: SRTP also invalidates the context, PASID and IOTLB caches.
        const ESRTPS = 1 << 63;
        const _ = !0;
    }
}

impl Cap {
    /// Domain-ID width in bits: 4 + 2·ND.
    pub fn domain_id_bits(self) -> u32 {
        4 + 2 * (self.bits() & 0x7) as u32
    }
    /// Supported adjusted guest address widths (SAGAW, bits 12:8): bit 1 = 39-bit (3-level),
    /// bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level) second-stage tables.
    pub fn sagaw(self) -> u8 {
        ((self.bits() >> 8) & 0x1f) as u8
    }
    /// Maximum guest address width (MGAW + 1).
    pub fn mgaw(self) -> u8 {
        ((self.bits() >> 16) & 0x3f) as u8 + 1
    }
    /// Byte offset of the first fault recording register (16·FRO).
    pub fn fault_record_offset(self) -> u64 {
        ((self.bits() >> 24) & 0x3ff) * 16
    }
    /// The fault-recording registers ([`frcd`]) as a table.
    pub fn fault_records(self) -> hwio::Table {
        hwio::Table {
            base: self.fault_record_offset(),
            stride: frcd::SIZE,
            len: self.fault_record_count() as u64,
        }
    }
    /// Number of fault recording registers (NFR + 1).
    pub fn fault_record_count(self) -> usize {
        ((self.bits() >> 40) & 0xff) as usize + 1
    }
    /// Maximum address mask value for page-selective invalidation.
    pub fn mamv(self) -> u8 {
        ((self.bits() >> 48) & 0x3f) as u8
    }
}

bitflags! {
    /// Extended capability register (0x10), §11.4.3.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ecap: u64 {
        /// Bit 0: page-walk coherency for the legacy-mode structures.
        const C = 1 << 0;
        /// Bit 1: queued invalidation supported.
        const QI = 1 << 1;
        /// Bit 2: device-TLB (ATS) supported.
        const DT = 1 << 2;
        /// Bit 3: interrupt remapping supported.
        const IR = 1 << 3;
        /// Bit 4: extended interrupt mode (32-bit x2APIC destinations in IRTEs).
        const EIM = 1 << 4;
        /// Bit 6: pass-through translation supported.
        const PT = 1 << 6;
        /// Bit 7: snoop control supported.
        const SC = 1 << 7;
        /// Bit 25: memory-type support.
        const MTS = 1 << 25;
        /// Bit 26: nested translation supported.
        const NEST = 1 << 26;
        /// Bit 29: page requests supported.
        const PRS = 1 << 29;
        /// Bit 30: execute requests supported.
        const ERS = 1 << 30;
        /// Bit 31: supervisor requests supported.
        const SRS = 1 << 31;
        /// Bit 33: no-write flag supported.
        const NWFS = 1 << 33;
        /// Bit 34: extended-accessed flag supported.
        const EAFS = 1 << 34;
        /// Bit 40: requests with PASID supported.
        const PASID = 1 << 40;
        /// Bit 41: device-TLB invalidation throttling (PFSID fields are valid).
        const DIT = 1 << 41;
        /// Bit 42: page-request drain supported.
        const PDS = 1 << 42;
        /// Bit 43: scalable-mode translation supported.
        const SMTS = 1 << 43;
        /// Bit 44: virtual command supported.
        const VCS = 1 << 44;
        /// Bit 45: second-stage accessed/dirty flags supported.
        const SSADS = 1 << 45;
        /// Bit 46: second-stage translation supported in scalable mode.
        const SSTS = 1 << 46;
        /// Bit 47: first-stage translation supported.
        const FSTS = 1 << 47;
        /// Bit 48: page-walk coherency for the scalable-mode structures.
        const SMPWCS = 1 << 48;
        /// Bit 49: the context entry's RID_PASID field is supported.
        const RPS = 1 << 49;
        /// Bit 51: performance monitoring supported.
        const PMS = 1 << 51;
        /// Bit 52: abort-DMA mode supported.
        const ADMS = 1 << 52;
        /// Bit 53: the context entry's RID_PRIV field is supported.
        const RPRIVS = 1 << 53;
        /// Bit 58: stop-marker page requests supported.
        const SMS = 1 << 58;
        const _ = !0;
    }
}

impl Ecap {
    /// Byte offset of the IOTLB registers (IVA at +0, IOTLB at +8): 16·IRO.
    pub fn iotlb_offset(self) -> u64 {
        ((self.bits() >> 8) & 0x3ff) * 16
    }
    /// Maximum handle mask value for IEC invalidation.
    pub fn mhmv(self) -> u8 {
        ((self.bits() >> 20) & 0xf) as u8
    }
    /// Supported PASID width in bits (PSS + 1).
    pub fn pasid_bits(self) -> u8 {
        ((self.bits() >> 35) & 0x1f) as u8 + 1
    }
}

bitflags! {
    /// Global command register (0x18, write-only), §11.4.4.1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Gcmd: u32 {
        /// Bit 31: translation enable (persistent).
        const TE = 1 << 31;
        /// Bit 30: set root table pointer from RTADDR (one-shot).
        const SRTP = 1 << 30;
        /// Bit 29: set fault log (one-shot).
        const SFL = 1 << 29;
        /// Bit 28: enable advanced fault logging (persistent).
        const EAFL = 1 << 28;
        /// Bit 27: write-buffer flush (one-shot).
        const WBF = 1 << 27;
        /// Bit 26: queued invalidation enable (persistent).
        const QIE = 1 << 26;
        /// Bit 25: interrupt remapping enable (persistent).
        const IRE = 1 << 25;
        /// Bit 24: set interrupt remapping table pointer from IRTA (one-shot).
        const SIRTP = 1 << 24;
        /// Bit 23: compatibility-format interrupts allowed while IRE=1 (persistent).
        const CFI = 1 << 23;
        const _ = !0;
    }
}

bitflags! {
    /// Global status register (0x1C), §11.4.4.2.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Gsts: u32 {
        /// Bit 31: translation enabled.
        const TES = 1 << 31;
        /// Bit 30: root table pointer set (completion of SRTP).
        const RTPS = 1 << 30;
        /// Bit 29: fault log set.
        const FLS = 1 << 29;
        /// Bit 28: advanced fault logging enabled.
        const AFLS = 1 << 28;
        /// Bit 27: write-buffer flush still pending.
        const WBFS = 1 << 27;
        /// Bit 26: queued invalidation enabled.
        const QIES = 1 << 26;
        /// Bit 25: interrupt remapping enabled.
        const IRES = 1 << 25;
        /// Bit 24: interrupt remapping table pointer set (completion of SIRTP).
        const IRTPS = 1 << 24;
        /// Bit 23: compatibility-format interrupts allowed.
        const CFIS = 1 << 23;
        const _ = !0;
    }
}

/// GSTS bits that may be written back to GCMD: everything but the one-shot status bits
/// (RTPS 30, FLS 29, WBFS 27, IRTPS 24), which would re-issue their commands.
pub const GCMD_PERSISTENT_MASK: u32 = 0x96ff_ffff;

impl Gcmd {
    /// The status bit that reports this command's completion.
    pub fn status_bit(self) -> Gsts {
        Gsts::from_bits_retain(self.bits())
    }
    /// One-shot commands complete by setting their status bit; persistent ones mirror the command.
    pub fn is_one_shot(self) -> bool {
        self.intersects(Gcmd::SRTP | Gcmd::SFL | Gcmd::WBF | Gcmd::SIRTP)
    }
}

/// GCMD value to write for one command (§11.4.4.1, which asks software to write GSTS's
/// persistent state back with one bit changed): current persistent state from GSTS,
/// with exactly `cmd` set or cleared.
pub fn gcmd_value(gsts: Gsts, cmd: Gcmd, enable: bool) -> Gcmd {
    let base = Gcmd::from_bits_retain(gsts.bits() & GCMD_PERSISTENT_MASK);
    if enable { base | cmd } else { base - cmd }
}

/// Root-table address register (0x20), §11.4.5.
pub mod rtaddr {
    /// TTM = 00b: legacy-mode root and context tables.
    pub const TTM_LEGACY: u64 = 0b00 << 10;
    /// TTM = 01b: scalable-mode root and context tables (bits 11:10).
    pub const TTM_SCALABLE: u64 = 0b01 << 10;
    /// RTADDR value for a 4 KiB-aligned root table at `root_pa` with translation table mode `ttm`.
    pub const fn encode(root_pa: u64, ttm: u64) -> u64 {
        (root_pa & !0xfff) | ttm
    }
}

bitflags! {
    /// Fault status register (0x34), §11.4.7.1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Fsts: u32 {
        /// Bit 0: primary fault overflow, a fault was lost because every FRCD was full (RW1C).
        const PFO = 1 << 0;
        /// Bit 1: primary pending fault, some FRCD has F set (read-only).
        const PPF = 1 << 1;
        /// Bit 4: invalidation queue error, IQH points at the bad descriptor (RW1C).
        const IQE = 1 << 4;
        /// Bit 5: invalidation completion error (device-TLB invalidation timed out; RW1C).
        const ICE = 1 << 5;
        /// Bit 6: invalidation time-out error (RW1C).
        const ITE = 1 << 6;
        const _ = !0;
    }
}

impl Fsts {
    /// Fault record index: first pending FRCD.
    pub fn fri(self) -> usize {
        ((self.bits() >> 8) & 0xff) as usize
    }
}

bitflags! {
    /// Fault event control (0x38) and invalidation event control (0xA0).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct EventCtl: u32 {
        /// Bit 31: interrupt mask, no event message is sent while set.
        const IM = 1 << 31;
        /// Bit 30: interrupt pending, an event arrived while masked (read-only).
        const IP = 1 << 30;
        const _ = !0;
    }
}

bitflags! {
    /// Invalidation completion status (0x9C).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Ics: u32 {
        /// Bit 0: invalidation wait descriptor complete (RW1C).
        const IWC = 1 << 0;
        const _ = !0;
    }
}

/// Invalidation queue address register (0x90), §11.4.9.3.
pub mod iqa {
    /// DW (bit 11): the queue holds 256-bit descriptors.
    pub const DW_256: u64 = 1 << 11;
    /// IQA value for a 4 KiB-aligned queue at `queue_pa`: DW = `dw256`, QS = `qs` (the queue is
    /// 2^QS 4 KiB pages).
    pub const fn encode(queue_pa: u64, dw256: bool, qs: u8) -> u64 {
        (queue_pa & !0xfff) | if dw256 { DW_256 } else { 0 } | (qs as u64 & 0x7)
    }
    /// Number of 256-bit slots for a queue-size field: 2^(QS+7).
    pub const fn slots_256(qs: u8) -> usize {
        1 << (qs as usize + 7)
    }
    /// IQT / IQH value for a 256-bit slot index.
    pub const fn tail_256(index: usize) -> u64 {
        (index as u64) << 5
    }
    /// 256-bit slot index from IQH / IQT.
    pub const fn index_256(reg: u64) -> usize {
        ((reg >> 5) & 0x3fff) as usize
    }
}

/// Interrupt remapping table address register (0xB8), §11.4.10.
pub mod irta {
    /// EIME (bit 11): IRTE destinations are 32-bit x2APIC IDs.
    pub const EIME: u64 = 1 << 11;
    /// `s`: table has 2^(s+1) entries.
    pub const fn encode(irt_pa: u64, x2apic: bool, s: u8) -> u64 {
        (irt_pa & !0xfff) | if x2apic { EIME } else { 0 } | (s as u64 & 0xf)
    }
    /// Number of IRTEs for a size field `s` (S, bits 3:0): 2^(s+1).
    pub const fn entries(s: u8) -> usize {
        1 << (s as usize + 1)
    }
}

/// Compatibility-format MSI address/data used for the unit's own fault and completion events
/// (never remapped, 8-bit destination): §5.1.6.1 (remapping hardware event interrupts in xAPIC
/// mode).
pub const fn event_msi_address(apic_id: u8) -> u32 {
    0xfee0_0000 | ((apic_id as u32) << 12)
}

// ---------------------------------------------------------------------------------------------
// Fault recording
// ---------------------------------------------------------------------------------------------

/// Fault reasons (§7.1.3), named as in the spec. The interrupt-remapping conditions
/// 0x20–0x28 are those of the Intel VT-d Architecture Specification rev 4.1, chapter 7
/// (interrupt-remapping fault conditions); 0x27 and 0x28 come from interrupt posting
/// (§5.2.3: a descriptor that cannot be accessed, or has reserved bits set, blocks the
/// request). All of 0x22, 0x24, 0x26, 0x27 and 0x28 are qualified: IRTE.FPD suppresses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultReason {
    /// 0x01: the root entry of the requester's bus is not present.
    RootEntryNotPresent,
    /// 0x02: the context entry of the requester is not present.
    ContextEntryNotPresent,
    /// 0x03: the context entry is invalid (reserved or unsupported values).
    InvalidContext,
    /// 0x04: the input address is beyond what the translation allows (MGAW / AW).
    AddressBeyondMgaw,
    /// 0x05: a write to a page without write permission.
    WriteNotPermitted,
    /// 0x06: a read from a page without read permission.
    ReadNotPermitted,
    /// 0x07: a second-stage paging entry could not be read.
    SsPagingEntryUnreadable,
    /// 0x08: the root table could not be read.
    RootTableUnreadable,
    /// 0x09: the context table could not be read.
    ContextTableUnreadable,
    /// 0x0A: reserved bits set in a root entry.
    RootEntryReserved,
    /// 0x0B: reserved bits set in a context entry.
    ContextEntryReserved,
    /// 0x0C: reserved bits set in a second-stage paging entry.
    SsEntryReserved,
    /// 0x0E: the translated address falls in the interrupt range 0xFEEx_xxxx.
    OutputInInterruptRange,
    /// 0x20: reserved bits set in an interrupt request (remappable MSI address/data).
    IrRequestReserved,
    /// 0x21: the interrupt index is beyond the IR table size.
    IrIndexBeyondTable,
    /// 0x22: the IRTE is not present.
    IrteNotPresent,
    /// 0x23: the IR table could not be read.
    IrTableUnreadable,
    /// 0x24: reserved bits set in the IRTE.
    IrteReserved,
    /// 0x25: a compatibility-format interrupt while IRE=1 and CFIS=0.
    CompatInterruptBlocked,
    /// 0x26: the requester failed the IRTE's source validation (SVT/SQ/SID).
    IrSourceIdCheckFailed,
    /// 0x27: the posted-interrupt descriptor could not be accessed at the IRTE's PDA.
    PostedDescriptorUnreadable,
    /// 0x28: a reserved field of the posted-interrupt descriptor is not zero.
    PostedDescriptorReserved,
    /// 0x50: the PASID directory entry could not be read.
    PasidDirEntryUnreadable,
    /// 0x51: the PASID directory entry is not present.
    PasidDirEntryNotPresent,
    /// 0x58: the PASID table entry could not be read.
    PasidEntryUnreadable,
    /// 0x59: the PASID table entry is not present.
    PasidEntryNotPresent,
    /// 0x5B: the PASID table entry is invalid (reserved or unsupported values, e.g. PGTT).
    InvalidPasidEntry,
    /// 0x70: a first-stage paging entry could not be read.
    FsPagingEntryUnreadable,
    /// 0x71: a first-stage paging entry is not present.
    FsEntryNotPresent,
    /// 0x72: reserved bits set in a first-stage paging entry.
    FsEntryReserved,
    /// 0x73: the first-stage root (FSPTPTR) could not be read.
    FsRootUnreadable,
    /// 0x80: the first-stage input address is not canonical.
    FsInputNotCanonical,
    /// 0x81: a user-mode request to a supervisor page.
    UserSupervisorViolation,
    /// 0x85: a write to a page without write permission (scalable mode).
    SmWriteNotPermitted,
    /// 0x87: the output address is in the interrupt range (scalable mode).
    SmOutputInInterruptRange,
    /// 0x91: the hardware could not set a first-stage accessed/dirty flag.
    FsAccessDirtyUpdateFailed,
    /// A code this crate does not name.
    Other(u8),
}

impl FaultReason {
    /// The reason for a fault reason code (FRCD bits 103:96).
    pub fn from_code(code: u8) -> Self {
        use FaultReason::*;
        match code {
            0x01 => RootEntryNotPresent,
            0x02 => ContextEntryNotPresent,
            0x03 => InvalidContext,
            0x04 => AddressBeyondMgaw,
            0x05 => WriteNotPermitted,
            0x06 => ReadNotPermitted,
            0x07 => SsPagingEntryUnreadable,
            0x08 => RootTableUnreadable,
            0x09 => ContextTableUnreadable,
            0x0a => RootEntryReserved,
            0x0b => ContextEntryReserved,
            0x0c => SsEntryReserved,
            0x0e => OutputInInterruptRange,
            0x20 => IrRequestReserved,
            0x21 => IrIndexBeyondTable,
            0x22 => IrteNotPresent,
            0x23 => IrTableUnreadable,
            0x24 => IrteReserved,
            0x25 => CompatInterruptBlocked,
            0x26 => IrSourceIdCheckFailed,
            0x27 => PostedDescriptorUnreadable,
            0x28 => PostedDescriptorReserved,
            0x50 => PasidDirEntryUnreadable,
            0x51 => PasidDirEntryNotPresent,
            0x58 => PasidEntryUnreadable,
            0x59 => PasidEntryNotPresent,
            0x5b => InvalidPasidEntry,
            0x70 => FsPagingEntryUnreadable,
            0x71 => FsEntryNotPresent,
            0x72 => FsEntryReserved,
            0x73 => FsRootUnreadable,
            0x80 => FsInputNotCanonical,
            0x81 => UserSupervisorViolation,
            0x85 => SmWriteNotPermitted,
            0x87 => SmOutputInInterruptRange,
            0x91 => FsAccessDirtyUpdateFailed,
            c => Other(c),
        }
    }

    /// A short lower-case description for logs.
    pub fn name(self) -> &'static str {
        use FaultReason::*;
        match self {
            RootEntryNotPresent => "root entry not present",
            ContextEntryNotPresent => "context entry not present",
            InvalidContext => "invalid context programming",
            AddressBeyondMgaw => "address beyond MGAW",
            WriteNotPermitted => "write not permitted",
            ReadNotPermitted => "read not permitted",
            SsPagingEntryUnreadable => "second-stage paging entry unreadable",
            RootTableUnreadable => "root table unreadable",
            ContextTableUnreadable => "context table unreadable",
            RootEntryReserved => "root entry reserved bits",
            ContextEntryReserved => "context entry reserved bits",
            SsEntryReserved => "second-stage entry reserved bits",
            OutputInInterruptRange => "output address in interrupt range",
            IrRequestReserved => "interrupt request reserved field",
            IrIndexBeyondTable => "interrupt index beyond table size",
            IrteNotPresent => "IRTE not present",
            IrTableUnreadable => "IR table unreadable",
            IrteReserved => "IRTE reserved bits",
            CompatInterruptBlocked => "compatibility-format interrupt blocked",
            IrSourceIdCheckFailed => "IR source-id check failed",
            PostedDescriptorUnreadable => "posted-interrupt descriptor not accessible",
            PostedDescriptorReserved => "posted-interrupt descriptor reserved bits",
            PasidDirEntryUnreadable => "PASID directory entry unreadable",
            PasidDirEntryNotPresent => "PASID directory entry not present",
            PasidEntryUnreadable => "PASID table entry unreadable",
            PasidEntryNotPresent => "PASID entry not present",
            InvalidPasidEntry => "invalid PASID entry",
            FsPagingEntryUnreadable => "first-stage paging entry unreadable",
            FsEntryNotPresent => "first-stage entry not present",
            FsEntryReserved => "first-stage entry reserved bits",
            FsRootUnreadable => "first-stage root unreadable",
            FsInputNotCanonical => "first-stage input not canonical",
            UserSupervisorViolation => "user request to supervisor page",
            SmWriteNotPermitted => "write not permitted (scalable mode)",
            SmOutputInInterruptRange => "output in interrupt range (scalable mode)",
            FsAccessDirtyUpdateFailed => "first-stage A/D update failed",
            Other(_) => "unknown fault reason",
        }
    }

    /// Interrupt-remapping faults carry the interrupt index in FI (bits 63:48) instead of an
    /// address.
    pub fn is_interrupt_fault(code: u8) -> bool {
        (0x20..=0x2f).contains(&code)
    }
}

/// A decoded 128-bit fault recording register (§11.4.7.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultRecord {
    /// Faulting page address (bits 63:12) for DMA faults.
    pub address: u64,
    /// Interrupt index for IR faults.
    pub interrupt_index: Option<u16>,
    /// Source ID (bus << 8 | device << 3 | function) of the faulting request.
    pub source_id: u16,
    /// The request's PASID, when it carried one (PP set).
    pub pasid: Option<u32>,
    /// The fault reason code (FR).
    pub code: u8,
    /// [`FaultReason::from_code`] of `code`.
    pub reason: FaultReason,
    /// T: true = read request, false = write request.
    pub is_read: bool,
    /// AT (bits 125:124): the request's address type (00 untranslated, 01 translation request,
    /// 10 translated).
    pub address_type: u8,
}

/// FRCD qword 1 bit 63: fault valid (RW1C).
pub const FRCD_F: u64 = 1 << 63;

impl FaultRecord {
    /// Decodes qwords 0 (low) and 1 (high); `None` when F is clear.
    pub fn decode(lo: u64, hi: u64) -> Option<Self> {
        if hi & FRCD_F == 0 {
            return None;
        }
        let code = (hi >> 32) as u8;
        let ir = FaultReason::is_interrupt_fault(code);
        let pp = hi & (1 << 31) != 0;
        Some(Self {
            address: if ir { 0 } else { lo & !0xfff },
            interrupt_index: ir.then_some((lo >> 48) as u16),
            source_id: hi as u16,
            pasid: pp.then_some(((hi >> 40) & 0xf_ffff) as u32),
            code,
            reason: FaultReason::from_code(code),
            is_read: hi & (1 << 62) != 0,
            address_type: ((hi >> 60) & 0x3) as u8,
        })
    }

    /// Inverse of decode (for tests and fakes).
    pub fn encode(&self) -> (u64, u64) {
        let lo = match self.interrupt_index {
            Some(i) => u64::from(i) << 48,
            None => self.address & !0xfff,
        };
        let mut hi = FRCD_F | u64::from(self.source_id) | (u64::from(self.code) << 32);
        if let Some(p) = self.pasid {
            hi |= (1 << 31) | (u64::from(p & 0xf_ffff) << 40);
        }
        if self.is_read {
            hi |= 1 << 62;
        }
        hi |= u64::from(self.address_type & 3) << 60;
        (lo, hi)
    }
}

// ---------------------------------------------------------------------------------------------
// Translation structures (§9)
// ---------------------------------------------------------------------------------------------

/// Scalable-mode root entry (128 bits): LP/LCTP (devfn 0–127), UP/UCTP (devfn 128–255).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RootEntry {
    /// LCTP: the context table for devfn 0–127, `None` when LP is clear.
    pub lower: Option<u64>,
    /// UCTP: the context table for devfn 128–255, `None` when UP is clear.
    pub upper: Option<u64>,
}

impl RootEntry {
    /// The entry as two qwords (present bit set for each `Some` half).
    pub fn encode(&self) -> [u64; 2] {
        [
            self.lower.map_or(0, |pa| (pa & !0xfff) | 1),
            self.upper.map_or(0, |pa| (pa & !0xfff) | 1),
        ]
    }
    /// Decodes two qwords; a half whose present bit is clear is `None`.
    pub fn decode(q: [u64; 2]) -> Self {
        Self {
            lower: (q[0] & 1 != 0).then_some(q[0] & !0xfff),
            upper: (q[1] & 1 != 0).then_some(q[1] & !0xfff),
        }
    }
}

/// Scalable-mode context entry (256 bits), §9.4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextEntry {
    /// P (bit 0).
    pub present: bool,
    /// FPD (bit 1): fault processing disable, faults through this entry are not recorded.
    pub fpd: bool,
    /// DTE (bit 2): device-TLB (ATS) translation requests allowed.
    pub dte: bool,
    /// PASIDE (bit 3): requests with PASID are allowed.
    pub pasid_enable: bool,
    /// PRE (bit 4): page requests allowed.
    pub pre: bool,
    /// PASID directory has 2^(PDTS+7) entries.
    pub pdts: u8,
    /// PASIDDIRPTR (bits 63:12): the PASID directory's physical address.
    pub pasid_dir: u64,
    /// RID_PASID (bits 83:64): the PASID used for requests without PASID.
    pub rid_pasid: u32,
    /// RID_PRIV (bit 84): requests without PASID are treated as supervisor requests.
    pub rid_priv: bool,
}

impl ContextEntry {
    /// The entry as four qwords.
    pub fn encode(&self) -> [u64; 4] {
        let q0 = (self.pasid_dir & !0xfff)
            | (u64::from(self.pdts & 7) << 9)
            | (u64::from(self.pre) << 4)
            | (u64::from(self.pasid_enable) << 3)
            | (u64::from(self.dte) << 2)
            | (u64::from(self.fpd) << 1)
            | u64::from(self.present);
        let q1 = u64::from(self.rid_pasid & 0xf_ffff) | (u64::from(self.rid_priv) << 20);
        [q0, q1, 0, 0]
    }
    /// Decodes four qwords (reserved bits are not checked: see
    /// [`ContextEntry::reserved_bits_clear`]).
    pub fn decode(q: [u64; 4]) -> Self {
        Self {
            present: q[0] & 1 != 0,
            fpd: q[0] & 2 != 0,
            dte: q[0] & 4 != 0,
            pasid_enable: q[0] & 8 != 0,
            pre: q[0] & 0x10 != 0,
            pdts: ((q[0] >> 9) & 7) as u8,
            pasid_dir: q[0] & !0xfff,
            rid_pasid: (q[1] & 0xf_ffff) as u32,
            rid_priv: q[1] & (1 << 20) != 0,
        }
    }
    /// Reserved bits that must be zero (QEMU faults 0x0B otherwise).
    pub fn reserved_bits_clear(q: [u64; 4]) -> bool {
        q[0] & 0x1e0 == 0 && q[1] >> 21 == 0 && q[2] == 0 && q[3] == 0
    }
}

/// PASID directory entry (64 bits), §9.5.
pub mod pasid_dir_entry {
    /// P (bit 0): present.
    pub const P: u64 = 1;
    /// FPD (bit 1): fault processing disable.
    pub const FPD: u64 = 2;
    /// The entry for a 4 KiB-aligned PASID table at `pasid_table_pa`, present.
    pub const fn encode(pasid_table_pa: u64) -> u64 {
        (pasid_table_pa & !0xfff) | P
    }
    /// The PASID table address, `None` when not present.
    pub const fn decode(e: u64) -> Option<u64> {
        if e & P != 0 { Some(e & !0xfff) } else { None }
    }
}

/// PASID-granular translation type (PGTT, bits 8:6 of a PASID entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pgtt {
    /// 001b: first-stage translation only.
    FirstStage = 0b001,
    /// 010b: second-stage translation only.
    SecondStage = 0b010,
    /// 011b: nested (first stage, then second stage).
    Nested = 0b011,
    /// 100b: pass-through (no translation).
    PassThrough = 0b100,
}

impl Pgtt {
    /// The type for a PGTT field value, `None` for reserved encodings.
    pub fn from_bits(b: u8) -> Option<Self> {
        match b {
            0b001 => Some(Pgtt::FirstStage),
            0b010 => Some(Pgtt::SecondStage),
            0b011 => Some(Pgtt::Nested),
            0b100 => Some(Pgtt::PassThrough),
            _ => None,
        }
    }
}

/// AW field: 001 = 39-bit (3-level), 010 = 48-bit (4-level), 011 = 57-bit (5-level).
pub const AW_39: u8 = 0b001;
/// 48-bit, 4-level (AW = 010b).
pub const AW_48: u8 = 0b010;

/// Scalable-mode PASID table entry (512 bits), §9.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasidEntry {
    /// P (bit 0).
    pub present: bool,
    /// FPD (bit 1): faults through this entry are not recorded.
    pub fpd: bool,
    /// AW (bits 4:2): second-stage address width ([`AW_39`], [`AW_48`]).
    pub aw: u8,
    /// PGTT (bits 8:6): which stages translate.
    pub pgtt: Pgtt,
    /// SSPTPTR (bits 63:12): second-stage table root.
    pub ss_root: u64,
    /// DID (bits 79:64): domain ID that tags the unit's caches for this entry.
    pub did: u16,
    /// PGSNP (bit 88): page snoop, all requests are snooped.
    pub pgsnp: bool,
    /// SRE (bit 128): supervisor requests enabled.
    pub sre: bool,
    /// WPE (bit 132): write protect enforced for supervisor requests.
    pub wpe: bool,
    /// NXE (bit 133): execute-disable bits honoured in first-stage entries.
    pub nxe: bool,
    /// FS paging mode: 0 = 4-level, 1 = 5-level.
    pub fspm: u8,
    /// FSPTPTR (bits 191:140): first-stage table root (PML4 or PML5).
    pub fs_root: u64,
}

impl PasidEntry {
    /// First-stage (PGTT=001), 4-level, AW=010 (QEMU 10.0.2 checks AW even for first stage).
    pub fn first_stage(did: u16, fs_pml4: u64) -> Self {
        Self {
            present: true,
            fpd: false,
            aw: AW_48,
            pgtt: Pgtt::FirstStage,
            ss_root: 0,
            did,
            pgsnp: false,
            sre: false,
            wpe: false,
            nxe: false,
            fspm: 0,
            fs_root: fs_pml4,
        }
    }
    /// Second-stage (PGTT=010) over the table at `ss_root`, address width `aw`.
    pub fn second_stage(did: u16, ss_root: u64, aw: u8) -> Self {
        Self {
            present: true,
            fpd: false,
            aw,
            pgtt: Pgtt::SecondStage,
            ss_root,
            did,
            pgsnp: false,
            sre: false,
            wpe: false,
            nxe: false,
            fspm: 0,
            fs_root: 0,
        }
    }
    /// Pass-through (PGTT=100): requests keep their address.
    pub fn pass_through(did: u16) -> Self {
        Self {
            present: true,
            fpd: false,
            aw: AW_48,
            pgtt: Pgtt::PassThrough,
            ss_root: 0,
            did,
            pgsnp: false,
            sre: false,
            wpe: false,
            nxe: false,
            fspm: 0,
            fs_root: 0,
        }
    }

    /// The entry as eight qwords (qwords 3–7 are zero).
    pub fn encode(&self) -> [u64; 8] {
        let q0 = (self.ss_root & !0xfff)
            | ((self.pgtt as u64) << 6)
            | (u64::from(self.aw & 7) << 2)
            | (u64::from(self.fpd) << 1)
            | u64::from(self.present);
        let q1 = u64::from(self.did) | (u64::from(self.pgsnp) << 24);
        let q2 = (self.fs_root & !0xfff)
            | (u64::from(self.nxe) << 5)
            | (u64::from(self.wpe) << 4)
            | (u64::from(self.fspm & 3) << 2)
            | u64::from(self.sre);
        [q0, q1, q2, 0, 0, 0, 0, 0]
    }

    /// `None` when PGTT is not a defined value (e.g. a zeroed/revoked entry).
    pub fn decode(q: &[u64; 8]) -> Option<Self> {
        Some(Self {
            present: q[0] & 1 != 0,
            fpd: q[0] & 2 != 0,
            aw: ((q[0] >> 2) & 7) as u8,
            pgtt: Pgtt::from_bits(((q[0] >> 6) & 7) as u8)?,
            ss_root: q[0] & !0xfff,
            did: q[1] as u16,
            pgsnp: q[1] & (1 << 24) != 0,
            sre: q[2] & 1 != 0,
            wpe: q[2] & (1 << 4) != 0,
            nxe: q[2] & (1 << 5) != 0,
            fspm: ((q[2] >> 2) & 3) as u8,
            fs_root: q[2] & !0xfff,
        })
    }
}

/// First-stage paging entry bits: the CPU's format (Intel VT-d Architecture Specification
/// rev 4.1, §3.6), defined once in `x86_paging`.
pub use x86_paging::PteFlags as FsPte;

bitflags! {
    /// Second-stage paging entry bits, §9.8.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SsPte: u64 {
        /// Bit 0: read permitted.
        const R = 1 << 0;
        /// Bit 1: write permitted.
        const W = 1 << 1;
        /// Bit 2: execute permitted.
        const X = 1 << 2;
        /// Bit 7: page size, the entry maps a 2 MiB or 1 GiB page.
        const PS = 1 << 7;
        /// Bit 11: snoop, the access is made coherent regardless of the device.
        const SNP = 1 << 11;
        const _ = !0;
    }
}

/// Physical-address field of a paging entry (bits 51:12).
pub const PTE_ADDR_MASK: u64 = x86_paging::ADDR_MASK;

// ---------------------------------------------------------------------------------------------
// Invalidation descriptors (256-bit), §6.5.2
// ---------------------------------------------------------------------------------------------

/// A 256-bit invalidation descriptor as four qwords; qw2/qw3 are always 0 for the types here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvDesc(pub [u64; 4]);

/// Descriptor type codes (qword 0 bits 3:0, with bits 11:9 as bits 6:4 of the code).
pub mod inv_type {
    /// Context-cache invalidation.
    pub const CONTEXT_CACHE: u8 = 0x01;
    /// IOTLB invalidation.
    pub const IOTLB: u8 = 0x02;
    /// Device-TLB (ATS) invalidation.
    pub const DEVICE_TLB: u8 = 0x03;
    /// Interrupt entry cache invalidation.
    pub const IEC: u8 = 0x04;
    /// Invalidation wait.
    pub const WAIT: u8 = 0x05;
    /// PASID-based IOTLB invalidation.
    pub const PASID_IOTLB: u8 = 0x06;
    /// PASID cache invalidation.
    pub const PASID_CACHE: u8 = 0x07;
    /// PASID-based device-TLB invalidation.
    pub const PASID_DEVICE_TLB: u8 = 0x08;
}

/// Granularities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CcGranularity {
    /// Every context entry of the unit.
    Global,
    /// The entries tagged with this domain ID.
    Domain(u16),
    /// Device-selective: source ID and function mask (0 = exact).
    Device {
        /// Source ID (bus << 8 | devfn).
        sid: u16,
        /// Function mask (bits of the function number ignored).
        fm: u8,
    },
}

impl InvDesc {
    /// The descriptor's type code ([`inv_type`]).
    pub fn desc_type(&self) -> u8 {
        ((self.0[0] & 0xf) | ((self.0[0] >> 9) & 0x7) << 4) as u8
    }

    /// Context-cache invalidation (type 1).
    pub fn context_cache(g: CcGranularity) -> Self {
        let q0 = match g {
            CcGranularity::Global => 0x01 | (0b01 << 4),
            CcGranularity::Domain(did) => 0x01 | (0b10 << 4) | (u64::from(did) << 16),
            CcGranularity::Device { sid, fm } => {
                0x01 | (0b11 << 4) | (u64::from(sid) << 32) | (u64::from(fm & 3) << 48)
            }
        };
        Self([q0, 0, 0, 0])
    }

    /// PASID-cache invalidation (type 7): G 00 domain, 01 PASID-selective, 11 global.
    pub fn pasid_cache_global() -> Self {
        Self([0x07 | (0b11 << 4), 0, 0, 0])
    }
    /// PASID-cache invalidation of every PASID of domain `did`.
    pub fn pasid_cache_domain(did: u16) -> Self {
        Self([0x07 | (u64::from(did) << 16), 0, 0, 0])
    }
    /// PASID-cache invalidation of one PASID of domain `did`.
    pub fn pasid_cache_pasid(did: u16, pasid: u32) -> Self {
        Self([
            0x07 | (0b01 << 4) | (u64::from(did) << 16) | (u64::from(pasid & 0xf_ffff) << 32),
            0,
            0,
            0,
        ])
    }

    /// IOTLB invalidation (type 2): global, domain-selective, page-selective (DID, ADDR, AM, IH).
    pub fn iotlb_global() -> Self {
        Self([0x02 | (0b01 << 4), 0, 0, 0])
    }
    /// Domain-selective IOTLB invalidation.
    pub fn iotlb_domain(did: u16) -> Self {
        Self([0x02 | (0b10 << 4) | (u64::from(did) << 16), 0, 0, 0])
    }
    /// Page-selective IOTLB invalidation of 2^`am` pages at `addr` (aligned to that size);
    /// `ih`: the non-leaf entries stay cached.
    pub fn iotlb_page(did: u16, addr: u64, am: u8, ih: bool) -> Self {
        Self([
            0x02 | (0b11 << 4) | (u64::from(did) << 16),
            (addr & !0xfff) | (u64::from(ih) << 6) | u64::from(am & 0x3f),
            0,
            0,
        ])
    }

    /// PASID-based IOTLB invalidation (type 6): G=10 whole (DID, PASID), G=11 page-selective.
    pub fn piotlb_pasid(did: u16, pasid: u32) -> Self {
        Self([
            0x06 | (0b10 << 4) | (u64::from(did) << 16) | (u64::from(pasid & 0xf_ffff) << 32),
            0,
            0,
            0,
        ])
    }
    /// Page-selective PASID-based IOTLB invalidation of 2^`am` pages at `addr` for
    /// (`did`, `pasid`).
    pub fn piotlb_page(did: u16, pasid: u32, addr: u64, am: u8, ih: bool) -> Self {
        Self([
            0x06 | (0b11 << 4) | (u64::from(did) << 16) | (u64::from(pasid & 0xf_ffff) << 32),
            (addr & !0xfff) | (u64::from(ih) << 6) | u64::from(am & 0x3f),
            0,
            0,
        ])
    }

    /// Device-TLB invalidation (type 3); `size` sets S (range encoded in ADDR's low zero bit).
    pub fn device_tlb(sid: u16, mip: u8, addr: u64, size: bool) -> Self {
        Self([
            0x03 | (u64::from(mip & 0x1f) << 16) | (u64::from(sid) << 32),
            (addr & !0xfff) | u64::from(size),
            0,
            0,
        ])
    }

    /// PASID-based device-TLB invalidation (type 8).
    pub fn pasid_device_tlb(
        sid: u16,
        pasid: u32,
        mip: u8,
        addr: u64,
        size: bool,
        global: bool,
    ) -> Self {
        Self([
            0x08 | (u64::from(mip & 0x1f) << 4)
                | (u64::from(sid) << 16)
                | (u64::from(pasid & 0xf_ffff) << 32),
            (addr & !0xfff) | (u64::from(size) << 11) | u64::from(global),
            0,
            0,
        ])
    }

    /// Interrupt-entry-cache invalidation (type 4): G bit 4 = 0 global, 1 index-selective.
    pub fn iec_global() -> Self {
        Self([0x04, 0, 0, 0])
    }
    /// Index-selective IEC invalidation of 2^`im` entries from `index` (aligned to that count).
    pub fn iec_index(index: u16, im: u8) -> Self {
        Self([
            0x04 | (1 << 4) | (u64::from(im & 0x1f) << 27) | (u64::from(index) << 32),
            0,
            0,
            0,
        ])
    }

    /// Invalidation wait with status write (SW=1, never together with IF: QEMU aborts).
    pub fn wait_status(token: u32, status_pa: u64, fence: bool) -> Self {
        Self([
            0x05 | (1 << 5) | (u64::from(fence) << 6) | (u64::from(token) << 32),
            status_pa & !0x3,
            0,
            0,
        ])
    }
    /// Invalidation wait raising the completion event only (IF=1).
    pub fn wait_interrupt(fence: bool) -> Self {
        Self([0x05 | (1 << 4) | (u64::from(fence) << 6), 0, 0, 0])
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupt remapping (§5.1, §9.9)
// ---------------------------------------------------------------------------------------------

/// Delivery mode of an IRTE / MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Fixed: the vector to the destination(s).
    Fixed = 0b000,
    /// Lowest priority among the destinations.
    LowestPriority = 0b001,
    /// System management interrupt.
    Smi = 0b010,
    /// Non-maskable interrupt.
    Nmi = 0b100,
    /// INIT.
    Init = 0b101,
    /// External interrupt (8259-compatible).
    ExtInt = 0b111,
}

/// Source validation of an IRTE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceValidation {
    /// SVT=00: no validation.
    None,
    /// SVT=01: compare the requester ID; `sq` ignores SID bits (00 all, 01 bit 2, 10 bits 2:1, 11 bits 2:0).
    RequesterId {
        /// The expected requester ID.
        sid: u16,
        /// SID qualifier (which low bits of the function number to ignore).
        sq: u8,
    },
    /// SVT=10: bus range (QEMU 10.0.2 decodes it reversed; use start == end there).
    BusRange {
        /// First bus number allowed.
        start: u8,
        /// Last bus number allowed.
        end: u8,
    },
}

impl SourceValidation {
    /// Bits 19:0 of IRTE qword 1 (SID, SQ, SVT), the same in both IRTE formats.
    pub const QWORD1_MASK: u64 = 0xf_ffff;

    /// The SID/SQ/SVT bits (19:0) of IRTE qword 1.
    pub fn qword1(self) -> u64 {
        match self {
            SourceValidation::None => 0,
            SourceValidation::RequesterId { sid, sq } => {
                u64::from(sid) | (u64::from(sq & 3) << 16) | (0b01 << 18)
            }
            SourceValidation::BusRange { start, end } => {
                (u64::from(start) << 8) | u64::from(end) | (0b10 << 18)
            }
        }
    }

    /// Decodes the SID/SQ/SVT bits of IRTE qword 1 (the reserved SVT 11b reads as `None`).
    pub fn from_qword1(q1: u64) -> Self {
        let sid = q1 as u16;
        match (q1 >> 18) & 3 {
            0b01 => SourceValidation::RequesterId {
                sid,
                sq: ((q1 >> 16) & 3) as u8,
            },
            0b10 => SourceValidation::BusRange {
                start: (sid >> 8) as u8,
                end: sid as u8,
            },
            _ => SourceValidation::None,
        }
    }
}

/// A remapped-format IRTE (128 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Irte {
    /// P (bit 0).
    pub present: bool,
    /// FPD (bit 1): faults on this entry are not recorded.
    pub fpd: bool,
    /// DM (bit 2): logical destination mode.
    pub logical: bool,
    /// RH (bit 3): redirection hint (lowest priority among the destinations).
    pub redirection_hint: bool,
    /// TM (bit 4): level triggered.
    pub level_triggered: bool,
    /// DLM (bits 7:5).
    pub delivery: DeliveryMode,
    /// AVAIL (bits 11:8): free for software.
    pub avail: u8,
    /// V (bits 23:16): the vector.
    pub vector: u8,
    /// Destination APIC ID (8-bit xAPIC placed at bits 47:40, or 32-bit x2APIC at bits 63:32).
    pub destination: u32,
    /// Whether `destination` is in x2APIC format (IRTA.EIME).
    pub x2apic: bool,
    /// SID, SQ, SVT (bits 83:64).
    pub svt: SourceValidation,
}

impl Irte {
    /// A present, fixed, physical, edge-triggered entry.
    pub fn fixed(vector: u8, destination: u32, x2apic: bool, svt: SourceValidation) -> Self {
        Self {
            present: true,
            fpd: false,
            logical: false,
            redirection_hint: false,
            level_triggered: false,
            delivery: DeliveryMode::Fixed,
            avail: 0,
            vector,
            destination,
            x2apic,
            svt,
        }
    }

    /// The entry as two qwords.
    pub fn encode(&self) -> [u64; 2] {
        let dst = if self.x2apic {
            u64::from(self.destination) << 32
        } else {
            u64::from(self.destination & 0xff) << 40
        };
        let q0 = u64::from(self.present)
            | (u64::from(self.fpd) << 1)
            | (u64::from(self.logical) << 2)
            | (u64::from(self.redirection_hint) << 3)
            | (u64::from(self.level_triggered) << 4)
            | ((self.delivery as u64) << 5)
            | (u64::from(self.avail & 0xf) << 8)
            | (u64::from(self.vector) << 16)
            | dst;
        [q0, self.svt.qword1()]
    }

    /// Decodes two qwords; `x2apic` says which destination format the table uses.
    pub fn decode(q: [u64; 2], x2apic: bool) -> Self {
        let delivery = match (q[0] >> 5) & 7 {
            0b001 => DeliveryMode::LowestPriority,
            0b010 => DeliveryMode::Smi,
            0b100 => DeliveryMode::Nmi,
            0b101 => DeliveryMode::Init,
            0b111 => DeliveryMode::ExtInt,
            _ => DeliveryMode::Fixed,
        };
        let svt = SourceValidation::from_qword1(q[1]);
        Self {
            present: q[0] & 1 != 0,
            fpd: q[0] & 2 != 0,
            logical: q[0] & 4 != 0,
            redirection_hint: q[0] & 8 != 0,
            level_triggered: q[0] & 0x10 != 0,
            delivery,
            avail: ((q[0] >> 8) & 0xf) as u8,
            vector: (q[0] >> 16) as u8,
            destination: if x2apic {
                (q[0] >> 32) as u32
            } else {
                ((q[0] >> 40) & 0xff) as u32
            },
            x2apic,
            svt,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Interrupt posting: Intel VT-d Architecture Specification rev 4.1, §5.2 (operation), §9.10
// (posted-format IRTE), §9.11 (posted-interrupt descriptor), §11.4.2 (CAP.PI, bit 59)
// ---------------------------------------------------------------------------------------------

/// IRTE bit 15, IRTE Mode (IM): 0 = remapped format, 1 = posted format (§9.10). A unit
/// with CAP.PI=0 treats the bit as reserved.
pub const IRTE_IM: u64 = 1 << 15;

/// A posted-format IRTE (IM=1, §9.10): a request that selects it sets bit `vector` of the
/// posted-interrupt request bitmap (PIR) in the descriptor at `descriptor`, and notifies
/// that descriptor's NV/NDST unless a notification is outstanding (ON) or suppressed (SN,
/// unless `urgent`). P, FPD, AVAIL, IM and SID/SQ/SVT sit where they sit in the remapped
/// format; DST, DM, RH, TM and DLM do not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostedIrte {
    /// P (bit 0).
    pub present: bool,
    /// FPD (bit 1): faults on this entry are not recorded.
    pub fpd: bool,
    /// AVAIL (bits 11:8): free for software.
    pub avail: u8,
    /// URG (bit 14): notify even when the descriptor's SN is set.
    pub urgent: bool,
    /// VV (bits 23:16): the PIR bit to set.
    pub vector: u8,
    /// PDA: the descriptor's address, 64-byte aligned; bits 31:6 are IRTE bits 63:38 (PDAL),
    /// bits 63:32 are IRTE bits 127:96 (PDAH), so it spans both qwords.
    pub descriptor: u64,
    /// SID, SQ, SVT (bits 83:64), as in the remapped format.
    pub svt: SourceValidation,
}

impl PostedIrte {
    /// Reserved bits of qword 0: 7:2, 13:12, 37:24.
    pub const RESERVED_LO: u64 = 0x0000_003f_ff00_30fc;
    /// Reserved bits of qword 1: 95:84 (qword bits 31:20).
    pub const RESERVED_HI: u64 = 0xfff0_0000;

    /// A present entry posting `vector` to the descriptor at `descriptor` (64-byte aligned).
    pub fn new(descriptor: u64, vector: u8, urgent: bool, svt: SourceValidation) -> Self {
        Self {
            present: true,
            fpd: false,
            avail: 0,
            urgent,
            vector,
            descriptor,
            svt,
        }
    }

    /// The entry; address bits 5:0 are not representable (the caller checks alignment).
    pub fn encode(&self) -> [u64; 2] {
        let q0 = u64::from(self.present)
            | (u64::from(self.fpd) << 1)
            | (u64::from(self.avail & 0xf) << 8)
            | (u64::from(self.urgent) << 14)
            | IRTE_IM
            | (u64::from(self.vector) << 16)
            | ((self.descriptor & 0xffff_ffc0) << 32);
        let q1 = self.svt.qword1() | (self.descriptor & !0xffff_ffff);
        [q0, q1]
    }

    /// `None` for a remapped-format entry (IM=0).
    pub fn decode(q: [u64; 2]) -> Option<Self> {
        if q[0] & IRTE_IM == 0 {
            return None;
        }
        Some(Self {
            present: q[0] & 1 != 0,
            fpd: q[0] & 2 != 0,
            avail: ((q[0] >> 8) & 0xf) as u8,
            urgent: q[0] & (1 << 14) != 0,
            vector: (q[0] >> 16) as u8,
            descriptor: ((q[0] >> 32) & 0xffff_ffc0) | (q[1] & !0xffff_ffff),
            svt: SourceValidation::from_qword1(q[1]),
        })
    }

    /// Whether the reserved fields of a posted-format entry are zero (else the unit blocks
    /// requests through it with fault 0x24).
    pub fn reserved_bits_clear(q: [u64; 2]) -> bool {
        q[0] & Self::RESERVED_LO == 0 && q[1] & Self::RESERVED_HI == 0
    }
}

/// An IRTE in either format, by its IM bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrteFormat {
    /// IM = 0.
    Remapped(Irte),
    /// IM = 1.
    Posted(PostedIrte),
}

impl IrteFormat {
    /// Decodes by the IM bit.
    pub fn decode(q: [u64; 2], x2apic: bool) -> Self {
        match PostedIrte::decode(q) {
            Some(p) => IrteFormat::Posted(p),
            None => IrteFormat::Remapped(Irte::decode(q, x2apic)),
        }
    }
    /// The entry as two qwords.
    pub fn encode(&self) -> [u64; 2] {
        match self {
            IrteFormat::Remapped(e) => e.encode(),
            IrteFormat::Posted(e) => e.encode(),
        }
    }
}

/// The posted-interrupt descriptor (PID), §9.11: 64 bytes, 64-byte aligned, in coherent
/// write-back memory that no device can write (§5.2.5). Qwords 0–3 are the posted-interrupt
/// requests (PIR bit n = qword n/64, bit n%64), qword 4 the control word ([`PidControl`]),
/// qwords 5–7 reserved (zero).
pub mod pid {
    /// Size and alignment in bytes.
    pub const SIZE: usize = 64;
    /// PIR qwords (256 bits).
    pub const PIR_QWORDS: usize = 4;
    /// Index of the control qword.
    pub const CONTROL: usize = 4;
    /// Control bit 0 (descriptor bit 256): Outstanding Notification.
    pub const ON: u64 = 1 << 0;
    /// Control bit 1 (descriptor bit 257): Suppress Notification.
    pub const SN: u64 = 1 << 1;
    /// Reserved control bits: 15:2 (271:258) and 31:24 (287:280).
    pub const CONTROL_RESERVED: u64 = 0xff00_fffc;

    /// The PIR qword and bit mask of vector `v`.
    pub const fn pir_bit(v: u8) -> (usize, u64) {
        ((v / 64) as usize, 1 << (v % 64))
    }
}

/// The PID control qword (descriptor bits 319:256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PidControl {
    /// ON: a notification was sent and not yet acknowledged by software.
    pub on: bool,
    /// SN: posts with URG=0 set their PIR bit but send no notification.
    pub sn: bool,
    /// NV (bits 279:272): the notification's vector.
    pub nv: u8,
    /// NDST (bits 319:288): the notification's physical destination, see [`PidControl::ndst`].
    pub ndst: u32,
}

impl PidControl {
    /// The control qword.
    pub fn encode(&self) -> u64 {
        u64::from(self.on)
            | (u64::from(self.sn) << 1)
            | (u64::from(self.nv) << 16)
            | (u64::from(self.ndst) << 32)
    }
    /// Decodes the control qword.
    pub fn decode(c: u64) -> Self {
        Self {
            on: c & pid::ON != 0,
            sn: c & pid::SN != 0,
            nv: (c >> 16) as u8,
            ndst: (c >> 32) as u32,
        }
    }
    /// Whether the reserved control bits are zero.
    pub fn reserved_bits_clear(c: u64) -> bool {
        c & pid::CONTROL_RESERVED == 0
    }
    /// NDST for an APIC ID: x2APIC (IRTA.EIME=1) the whole 32-bit ID, xAPIC the 8-bit ID in
    /// bits 15:8 (descriptor bits 303:296). `None` when an xAPIC ID does not fit.
    pub fn ndst(apic_id: u32, x2apic: bool) -> Option<u32> {
        match (x2apic, apic_id) {
            (true, id) => Some(id),
            (false, id @ 0..=0xff) => Some(id << 8),
            _ => None,
        }
    }
    /// The APIC ID an NDST value names.
    pub fn apic_id(ndst: u32, x2apic: bool) -> u32 {
        if x2apic { ndst } else { (ndst >> 8) & 0xff }
    }
}

/// Remappable-format MSI for handle `h` with SHV=1 and subhandle 0 (§5.1.2.2, §5.1.5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemappableMsi {
    /// Address bits 31:0: 0xFEE, the handle, SHV (bit 3) and the interrupt format bit (bit 4).
    pub address_lo: u32,
    /// Address bits 63:32 (0).
    pub address_hi: u32,
    /// Data: the subhandle (0).
    pub data: u32,
}

impl RemappableMsi {
    /// The message for IRTE `handle` (0..=65535).
    pub fn for_handle(handle: u16) -> Self {
        let h = u32::from(handle);
        Self {
            address_lo: 0xfee0_0018 | ((h & 0x7fff) << 5) | ((h >> 15) << 2),
            address_hi: 0,
            data: 0,
        }
    }
    /// The 64-bit message address.
    pub fn address(&self) -> u64 {
        (u64::from(self.address_hi) << 32) | u64::from(self.address_lo)
    }
    /// Handle encoded in a remappable address, or None for compatibility format.
    pub fn handle_of(address_lo: u32) -> Option<u16> {
        if address_lo & (1 << 4) == 0 {
            return None;
        }
        Some((((address_lo >> 5) & 0x7fff) | (((address_lo >> 2) & 1) << 15)) as u16)
    }
}

/// IOAPIC redirection-table entry in remappable format for handle `h` (§5.1.5.1).
pub fn ioapic_rte(handle: u16, vector: u8, level_triggered: bool, masked: bool) -> u64 {
    let h = u64::from(handle);
    u64::from(vector)
        | ((h >> 15) << 11)
        | (u64::from(level_triggered) << 15)
        | (u64::from(masked) << 16)
        | (1 << 48)
        | ((h & 0x7fff) << 49)
}

#[cfg(test)]
mod tests {
    //! Worked encodings of every structure (checked against what QEMU 10.0.2 decodes) and the
    //! CAP/ECAP values QEMU reports (§11.4.2, §11.4.3).
    use super::*;

    const ROOT: u64 = 0x1234_5000;

    #[test]
    fn registers_rtaddr_iqa_irta_gcmd() {
        assert_eq!(rtaddr::encode(ROOT, rtaddr::TTM_SCALABLE), ROOT | (1 << 10));
        assert_eq!(iqa::encode(0x7_7000, true, 0), 0x7_7000 | (1 << 11));
        assert_eq!(iqa::slots_256(0), 128);
        assert_eq!(iqa::tail_256(5), 5 << 5);
        assert_eq!(iqa::index_256(5 << 5), 5);
        assert_eq!(irta::encode(0x8_8000, false, 7), 0x8_8000 | 7);
        assert_eq!(irta::encode(0x8_8000, true, 7), 0x8_8000 | (1 << 11) | 7);
        assert_eq!(irta::entries(7), 256);
        // GCMD write = (GSTS & 0x96FF_FFFF) | bit, bits TE 31, SRTP 30, QIE 26, IRE 25, SIRTP 24, CFI 23.
        assert_eq!(Gcmd::TE.bits(), 1 << 31);
        assert_eq!(Gcmd::SRTP.bits(), 1 << 30);
        assert_eq!(Gcmd::QIE.bits(), 1 << 26);
        assert_eq!(Gcmd::IRE.bits(), 1 << 25);
        assert_eq!(Gcmd::SIRTP.bits(), 1 << 24);
        assert_eq!(Gcmd::CFI.bits(), 1 << 23);
        let gsts = Gsts::TES | Gsts::RTPS | Gsts::QIES | Gsts::IRTPS | Gsts::IRES;
        assert_eq!(
            gcmd_value(gsts, Gcmd::SIRTP, true).bits(),
            (gsts.bits() & 0x96ff_ffff) | (1 << 24)
        );
        assert_eq!(
            gcmd_value(gsts, Gcmd::SIRTP, true).bits(),
            (1 << 31) | (1 << 26) | (1 << 25) | (1 << 24)
        );
        assert_eq!(
            gcmd_value(gsts, Gcmd::TE, false).bits(),
            (1 << 26) | (1 << 25)
        );
        assert!(Gcmd::SRTP.is_one_shot() && !Gcmd::QIE.is_one_shot());
        assert_eq!(reg_width(reg::off::FSTS), Some(32));
        assert_eq!(reg_width(reg::off::IQA), Some(64));
    }

    #[test]
    fn cap_ecap_values_from_qemu() {
        let cap = Cap::from_bits_retain(0x00d2_008c_222f_0606);
        assert_eq!(cap.domain_id_bits(), 16);
        assert_eq!(cap.sagaw(), 0b00110);
        assert!(cap.contains(Cap::SAGAW_48 | Cap::SAGAW_39) && !cap.contains(Cap::SAGAW_57));
        assert_eq!(cap.mgaw(), 48);
        assert_eq!(cap.fault_record_offset(), 0x220);
        assert_eq!(cap.fault_record_count(), 1);
        assert_eq!(cap.mamv(), 18);
        assert!(cap.contains(Cap::PSI | Cap::DWD | Cap::DRD | Cap::SSLPS_2M | Cap::SSLPS_1G));
        assert!(!cap.contains(Cap::CM) && !cap.contains(Cap::FS1GP) && !cap.contains(Cap::RWBF));
        let flts = Cap::from_bits_retain(0x01d2_008c_222f_0606);
        assert!(flts.contains(Cap::FS1GP));
        assert!(Cap::from_bits_retain(0x00d2_008c_222f_0606 + 0x80).contains(Cap::CM));

        let e = Ecap::from_bits_retain(0x0000_4800_80f0_0f4a);
        assert!(e.contains(Ecap::QI | Ecap::IR | Ecap::PT | Ecap::SMTS | Ecap::SSTS | Ecap::SRS));
        assert!(
            !e.contains(Ecap::FSTS)
                && !e.contains(Ecap::EIM)
                && !e.contains(Ecap::C)
                && !e.contains(Ecap::PASID)
        );
        assert_eq!(e.iotlb_offset(), 0xf0);
        assert_eq!(e.mhmv(), 0xf);
        assert_eq!(e.pasid_bits(), 1);
        let f = Ecap::from_bits_retain(0x0000_8800_00f0_0f4a | 0x0100_0000_0000 | 0x10 | 0x4);
        assert!(f.contains(Ecap::FSTS | Ecap::SMTS | Ecap::PASID | Ecap::EIM | Ecap::DT));
        assert!(!f.contains(Ecap::SSTS) && !f.contains(Ecap::SRS));
    }

    #[test]
    fn root_context_pasid_entries() {
        let re = RootEntry {
            lower: Some(0x20_0000),
            upper: Some(0x30_0000),
        };
        assert_eq!(re.encode(), [0x20_0000 | 1, 0x30_0000 | 1]);
        assert_eq!(
            RootEntry {
                lower: Some(0x20_0000),
                upper: None
            }
            .encode(),
            [0x20_0001, 0]
        );
        assert_eq!(RootEntry::decode(re.encode()), re);

        let ce = ContextEntry {
            present: true,
            fpd: false,
            dte: false,
            pasid_enable: true,
            pre: false,
            pdts: 2,
            pasid_dir: 0x40_0000,
            rid_pasid: 0,
            rid_priv: false,
        };
        assert_eq!(ce.encode(), [0x40_0000 | (2 << 9) | (1 << 3) | 1, 0, 0, 0]);
        assert_eq!(ContextEntry::decode(ce.encode()), ce);
        assert!(ContextEntry::reserved_bits_clear(ce.encode()));
        assert!(!ContextEntry::reserved_bits_clear([0x20, 0, 0, 0]));

        assert_eq!(pasid_dir_entry::encode(0x50_0000), 0x50_0001);
        assert_eq!(pasid_dir_entry::decode(0x50_0001), Some(0x50_0000));
        assert_eq!(pasid_dir_entry::decode(0x50_0000), None);

        let fs = PasidEntry::first_stage(5, 0x60_0000);
        assert_eq!(fs.encode(), [0x49, 5, 0x60_0000, 0, 0, 0, 0, 0]);
        let ss = PasidEntry::second_stage(6, 0x70_0000, AW_48);
        assert_eq!(ss.encode(), [0x70_0000 | 0x89, 6, 0, 0, 0, 0, 0, 0]);
        let pt = PasidEntry::pass_through(7);
        assert_eq!(pt.encode(), [0x109, 7, 0, 0, 0, 0, 0, 0]);
        let mut nx = fs;
        nx.nxe = true;
        assert_eq!(nx.encode()[2], 0x60_0000 | 0x20);
        for e in [fs, ss, pt, nx] {
            assert_eq!(PasidEntry::decode(&e.encode()), Some(e));
        }
        assert_eq!(
            PasidEntry::decode(&[0; 8]),
            None,
            "a zeroed (revoked) entry has no PGTT"
        );
    }

    #[test]
    fn page_table_entries() {
        assert_eq!(
            (FsPte::PRESENT | FsPte::WRITABLE | FsPte::USER).bits() | 0x12_3000,
            0x12_3000 | 0x7
        );
        assert_eq!((SsPte::R | SsPte::W).bits() | 0x12_3000, 0x12_3003);
    }

    #[test]
    fn invalidation_descriptors() {
        let sid = 0x0108u16;
        let (did, pasid, addr) = (0x2au16, 0x1_2345u32, 0x7fff_f000u64);
        assert_eq!(
            InvDesc::context_cache(CcGranularity::Global).0,
            [0x11, 0, 0, 0]
        );
        assert_eq!(
            InvDesc::context_cache(CcGranularity::Device { sid, fm: 0 }).0[0],
            0x31 | (u64::from(sid) << 32)
        );
        assert_eq!(
            InvDesc::context_cache(CcGranularity::Domain(did)).0[0],
            0x21 | (u64::from(did) << 16)
        );
        assert_eq!(InvDesc::pasid_cache_global().0[0], 0x37);
        assert_eq!(
            InvDesc::pasid_cache_pasid(did, pasid).0[0],
            0x17 | (u64::from(did) << 16) | (u64::from(pasid) << 32)
        );
        assert_eq!(
            InvDesc::pasid_cache_domain(did).0[0],
            0x07 | (u64::from(did) << 16)
        );
        assert_eq!(InvDesc::iotlb_global().0[0], 0x12);
        assert_eq!(
            InvDesc::iotlb_domain(did).0[0],
            0x22 | (u64::from(did) << 16)
        );
        let p = InvDesc::iotlb_page(did, addr, 3, true);
        assert_eq!(
            p.0,
            [0x32 | (u64::from(did) << 16), addr | (1 << 6) | 3, 0, 0]
        );
        assert_eq!(
            InvDesc::piotlb_pasid(did, pasid).0,
            [
                0x26 | (u64::from(did) << 16) | (u64::from(pasid) << 32),
                0,
                0,
                0
            ]
        );
        let pp = InvDesc::piotlb_page(did, pasid, addr, 0, false);
        assert_eq!(
            pp.0,
            [
                0x36 | (u64::from(did) << 16) | (u64::from(pasid) << 32),
                addr,
                0,
                0
            ]
        );
        assert_eq!(InvDesc::iec_global().0[0], 0x04);
        assert_eq!(InvDesc::iec_index(9, 2).0[0], 0x14 | (2 << 27) | (9 << 32));
        let w = InvDesc::wait_status(0xabcd, 0x9_9004, false);
        assert_eq!(w.0, [0x25 | (0xabcd << 32), 0x9_9004, 0, 0]);
        assert_eq!(
            InvDesc::wait_status(1, 0x9_9004, true).0[0],
            0x65 | (1 << 32)
        );
        assert_eq!(InvDesc::wait_interrupt(false).0[0], 0x15);
        for d in [w, InvDesc::wait_interrupt(true)] {
            assert_ne!(d.0[0] & 0x30, 0x30, "never SW+IF");
        }
        assert_eq!(
            InvDesc::piotlb_pasid(1, 1).desc_type(),
            inv_type::PASID_IOTLB
        );
        assert_eq!(
            InvDesc::pasid_device_tlb(sid, pasid, 0, 0, false, true).desc_type(),
            inv_type::PASID_DEVICE_TLB
        );
        assert_eq!(
            InvDesc::device_tlb(sid, 0, addr, false).0,
            [0x03 | (u64::from(sid) << 32), addr, 0, 0]
        );
    }

    #[test]
    fn irte_msi_rte_event_encodings() {
        let (v, d, s) = (0x41u8, 3u32, 0x0010u16);
        let x = Irte::fixed(v, d, false, SourceValidation::RequesterId { sid: s, sq: 0 });
        assert_eq!(
            x.encode(),
            [
                1 | (u64::from(v) << 16) | (u64::from(d) << 40),
                u64::from(s) | (1 << 18)
            ]
        );
        let mut lvl = x;
        lvl.level_triggered = true;
        assert_eq!(
            lvl.encode()[0],
            1 | (1 << 4) | (u64::from(v) << 16) | (u64::from(d) << 40)
        );
        let x2 = Irte::fixed(
            v,
            0x1_0003,
            true,
            SourceValidation::RequesterId { sid: s, sq: 0 },
        );
        assert_eq!(
            x2.encode()[0],
            1 | (u64::from(v) << 16) | (0x1_0003u64 << 32)
        );
        assert_eq!(Irte::decode(x.encode(), false), x);
        assert_eq!(Irte::decode(x2.encode(), true), x2);

        for h in [0u16, 1, 0x7fff, 0x8000, 0xffff, 0x1234] {
            let m = RemappableMsi::for_handle(h);
            let hh = u32::from(h);
            assert_eq!(
                m.address_lo,
                0xfee0_0018 | ((hh & 0x7fff) << 5) | ((hh >> 15) << 2)
            );
            assert_eq!((m.address_hi, m.data), (0, 0));
            assert_eq!(RemappableMsi::handle_of(m.address_lo), Some(h));
            let rte = ioapic_rte(h, v, true, false);
            assert_eq!(
                rte,
                u64::from(v)
                    | (u64::from(hh >> 15) << 11)
                    | (1 << 15)
                    | (1 << 48)
                    | (u64::from(hh & 0x7fff) << 49)
            );
        }
        assert_eq!(RemappableMsi::handle_of(0xfee0_1000), None);
        assert_eq!(event_msi_address(2), 0xfee0_2000);
    }

    #[test]
    fn posted_irte_encoding() {
        let svt = SourceValidation::RequesterId { sid: 0x0108, sq: 0 };
        // A descriptor below 4 GiB: PDAH = 0, qword 1 is the remapped format's.
        let p = PostedIrte::new(0x1234_5640, 0x9a, false, svt);
        let q = p.encode();
        assert_eq!(q[0], 1 | (1 << 15) | (0x9a << 16) | (0x1234_5640u64 << 32));
        assert_eq!(
            q[0] >> 38,
            0x1234_5640 >> 6,
            "PDAL = PDA[31:6] at bits 63:38"
        );
        assert_eq!(q[1], 0x0108 | (1 << 18));
        assert!(PostedIrte::reserved_bits_clear(q));
        assert_eq!(PostedIrte::decode(q), Some(p));
        // Above 4 GiB: PDAH = PDA[63:32] at bits 127:96; URG bit 14; FPD, AVAIL.
        let mut h = PostedIrte::new(0x0000_0012_8000_0fc0, 0xff, true, svt);
        h.fpd = true;
        h.avail = 0xa;
        let q = h.encode();
        assert_eq!(
            q[0],
            1 | 2 | (0xa << 8) | (1 << 14) | (1 << 15) | (0xff << 16) | (0x8000_0fc0u64 << 32)
        );
        assert_eq!(q[1], (0x12u64 << 32) | 0x0108 | (1 << 18));
        assert!(PostedIrte::reserved_bits_clear(q));
        assert_eq!(PostedIrte::decode(q), Some(h));
        assert_eq!(IrteFormat::decode(q, true), IrteFormat::Posted(h));
        assert_eq!(IrteFormat::Posted(h).encode(), q);
        // Remapped entries are not posted ones, and vice versa.
        let r = Irte::fixed(0x41, 3, false, svt);
        assert_eq!(PostedIrte::decode(r.encode()), None);
        assert_eq!(
            IrteFormat::decode(r.encode(), false),
            IrteFormat::Remapped(r)
        );
        // Every reserved bit is caught, and nothing else is.
        for bit in (2..8).chain(12..14).chain(24..38) {
            assert!(
                !PostedIrte::reserved_bits_clear([q[0] | (1 << bit), q[1]]),
                "bit {bit}"
            );
        }
        for bit in 84..96 {
            assert!(
                !PostedIrte::reserved_bits_clear([q[0], q[1] | (1 << (bit - 64))]),
                "bit {bit}"
            );
        }
        let fields = !(PostedIrte::RESERVED_LO);
        assert_eq!(fields.count_ones(), 64 - 6 - 2 - 14);
        assert_eq!(SourceValidation::from_qword1(svt.qword1()), svt);
        let bus = SourceValidation::BusRange { start: 2, end: 5 };
        assert_eq!(SourceValidation::from_qword1(bus.qword1()), bus);
    }

    #[test]
    fn posted_interrupt_descriptor_layout() {
        assert_eq!((pid::SIZE, pid::PIR_QWORDS, pid::CONTROL), (64, 4, 4));
        assert_eq!(pid::pir_bit(0), (0, 1));
        assert_eq!(pid::pir_bit(63), (0, 1 << 63));
        assert_eq!(pid::pir_bit(64), (1, 1));
        assert_eq!(pid::pir_bit(255), (3, 1 << 63));
        // ON bit 256, SN 257, NV 279:272, NDST 319:288 of the descriptor.
        let c = PidControl {
            on: true,
            sn: true,
            nv: 0xeb,
            ndst: 0x0001_0002,
        };
        assert_eq!(c.encode(), 0x0001_0002_00eb_0003);
        assert_eq!(PidControl::decode(c.encode()), c);
        assert!(PidControl::reserved_bits_clear(c.encode()));
        for bit in (2..16).chain(24..32) {
            assert!(!PidControl::reserved_bits_clear(1 << bit), "bit {bit}");
        }
        // NDST: xAPIC ID in bits 15:8 (descriptor bits 303:296), x2APIC the whole ID.
        assert_eq!(PidControl::ndst(3, false), Some(0x300));
        assert_eq!(PidControl::ndst(0xff, false), Some(0xff00));
        assert_eq!(PidControl::ndst(256, false), None);
        assert_eq!(PidControl::ndst(256, true), Some(256));
        assert_eq!(PidControl::apic_id(0x300, false), 3);
        assert_eq!(PidControl::apic_id(256, true), 256);
        assert_eq!(Cap::PI.bits(), 1 << 59);
        assert_eq!(
            FaultReason::from_code(0x27),
            FaultReason::PostedDescriptorUnreadable
        );
        assert_eq!(
            FaultReason::from_code(0x28),
            FaultReason::PostedDescriptorReserved
        );
        assert!(FaultReason::is_interrupt_fault(0x27) && FaultReason::is_interrupt_fault(0x28));
    }

    #[test]
    fn fault_record_decode() {
        // Clearing a record: F is bit 31 of the dword at FRCD + 0xC (§11.4.7.6).
        assert_eq!((FRCD_F >> 32) as u32, 0x8000_0000);
        let r = FaultRecord {
            address: 0x1234_5000,
            interrupt_index: None,
            source_id: 0x0108,
            pasid: Some(7),
            code: 0x71,
            reason: FaultReason::FsEntryNotPresent,
            is_read: true,
            address_type: 0,
        };
        let (lo, hi) = r.encode();
        assert_eq!(
            hi,
            FRCD_F | (1 << 62) | (7 << 40) | (1 << 31) | (0x71 << 32) | 0x0108
        );
        assert_eq!(FaultRecord::decode(lo, hi), Some(r));
        assert_eq!(FaultRecord::decode(lo, hi & !FRCD_F), None);
        let ir = FaultRecord::decode(5 << 48, FRCD_F | (0x26 << 32) | 0x10).unwrap();
        assert_eq!(ir.interrupt_index, Some(5));
        assert_eq!(ir.reason, FaultReason::IrSourceIdCheckFailed);
        assert!(!ir.is_read && ir.pasid.is_none());
        assert_eq!(FaultReason::from_code(0x99), FaultReason::Other(0x99));
        for c in [
            1u8, 2, 3, 4, 5, 6, 7, 8, 9, 0xa, 0xb, 0xc, 0xe, 0x20, 0x21, 0x22, 0x23, 0x24, 0x26,
            0x27, 0x28, 0x50, 0x51, 0x58, 0x59, 0x5b, 0x70, 0x71, 0x72, 0x73, 0x80, 0x81, 0x85,
            0x87, 0x91,
        ] {
            assert!(
                !matches!(FaultReason::from_code(c), FaultReason::Other(_)),
                "code {c:#x} unnamed"
            );
        }
    }
}
