//! Configuration and interrupt tables in BAR0 (DSA spec §9.2.22–§9.2.28): GRPCFG, WQCFG,
//! MSIXPERM, IMS. OFFSETS locates each table; the registers below are declared relative to
//! one entry (`Reg::at(entry_base)` or a `Block` of the entry reaches them).

use crate::{field64, set_field64};
use bitflags::bitflags;
use hwio::Value;

/// Size of one GRPCFG entry (group g at GRPCFG base + g × 0x40).
pub const GRPCFG_ENTRY_SIZE: u64 = 0x40;
bitflags! {
    /// GRPCFG group flags (entry +0x28, §9.2.23).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GroupFlags: u64 {
        /// Bit 7: the group's reads count against GENCFG's global read-buffer limit.
        const USE_GLOBAL_RDBUF_LIMIT = 1 << 7;
        const _ = !0;
    }
}
impl GroupFlags {
    /// Traffic class A (bits 2:0): used when a descriptor's traffic-class selector is 0.
    pub const fn tc_a(self) -> u8 {
        field64(self.bits(), 0, 3) as u8
    }
    /// Traffic class B (bits 5:3): used when the selector is 1.
    pub const fn tc_b(self) -> u8 {
        field64(self.bits(), 3, 3) as u8
    }
    /// Read buffers reserved for this group (bits 15:8).
    pub const fn rdbufs_reserved(self) -> u8 {
        field64(self.bits(), 8, 8) as u8
    }
    /// Read buffers this group may use (bits 27:20; 0 = all).
    pub const fn rdbufs_allowed(self) -> u8 {
        field64(self.bits(), 20, 8) as u8
    }
    /// Work-descriptors-in-progress limit (bits 33:32): 0 = maximum, n = 1/2^n of it.
    pub const fn desc_progress_limit(self) -> u8 {
        field64(self.bits(), 32, 2) as u8
    }
    /// Batch-descriptors-in-progress limit (bits 37:36), encoded as the work limit.
    pub const fn batch_progress_limit(self) -> u8 {
        field64(self.bits(), 36, 2) as u8
    }
    /// This value with traffic class A set to `tc` (3 bits).
    pub const fn with_tc_a(self, tc: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 0, 3, tc as u64))
    }
    /// This value with traffic class B set to `tc` (3 bits).
    pub const fn with_tc_b(self, tc: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 3, 3, tc as u64))
    }
}

/// One GRPCFG entry (64 bytes, §9.2.23).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GrpCfg {
    /// WQ bitmap (+0x00, 256 bits): bit w = WQ w belongs to the group.
    pub wqs: [u64; 4],
    /// Engine bitmap (+0x20): bit e = engine e belongs to the group.
    pub engines: u64,
    /// Group flags (+0x28).
    pub flags: GroupFlags,
}
impl GrpCfg {
    /// Whether WQ `wq` belongs to the group.
    pub const fn has_wq(&self, wq: usize) -> bool {
        wq < 256 && (self.wqs[wq / 64] >> (wq % 64)) & 1 == 1
    }
    /// Whether engine `e` belongs to the group.
    pub const fn has_engine(&self, e: usize) -> bool {
        e < 64 && (self.engines >> e) & 1 == 1
    }
    /// The entry as the 8 qwords software writes (qwords 6–7 reserved).
    pub const fn to_qwords(&self) -> [u64; 8] {
        [
            self.wqs[0],
            self.wqs[1],
            self.wqs[2],
            self.wqs[3],
            self.engines,
            self.flags.bits(),
            0,
            0,
        ]
    }
    /// The entry from its 8 qwords (qwords 6–7 ignored).
    pub const fn from_qwords(q: &[u64; 8]) -> Self {
        GrpCfg {
            wqs: [q[0], q[1], q[2], q[3]],
            engines: q[4],
            flags: GroupFlags::from_bits_retain(q[5]),
        }
    }
}

/// WQ mode (WQCFG dw2 bit 0, §9.2.24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WqMode {
    /// Shared: many clients submit with ENQCMD(S); PASID and privilege come from each descriptor.
    Shared,
    /// Dedicated: one client submits with MOVDIR64B; PASID and privilege come from WQCFG.
    Dedicated,
}

/// WQ state (WQCFG dw6 bits 31:30, RO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WqState {
    /// Disabled.
    Disabled = 0,
    /// Enabled: accepts descriptors.
    Enabled = 1,
    /// Being disabled or drained.
    Draining = 2,
}

/// WQCFG entry (DSA 1.0: 32 bytes = 8 dwords; DSA 2.0 adds OPCFG at dw 8–15), §9.2.24.
/// Kept as raw dwords with typed accessors so that a read-modify-write keeps every bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct WqCfg(pub [u32; 8]);

/// Dword indices and single-bit masks of WQCFG.
pub mod wqcfg {
    /// Dword 0: WQ size (bits 15:0), writable only while the device is disabled.
    pub const DW_SIZE: usize = 0;
    /// Dword 1: WQ threshold (bits 15:0; shared WQs, limited portal).
    pub const DW_THRESHOLD: usize = 1;
    /// Dword 2: mode, block-on-fault, ATS/PRS disable, priority, PASID, PASID enable, privilege.
    pub const DW_MODE: usize = 2;
    /// Dword 3: max transfer shift (bits 4:0), max batch shift (bits 8:5).
    pub const DW_SHIFTS: usize = 3;
    /// Dword 4: occupancy interrupt handle (bits 15:0) and table (bit 16).
    pub const DW_OCC_INT: usize = 4;
    /// Dword 5: occupancy limit (bits 15:0) and interrupt enable (bit 16).
    pub const DW_OCC_LIMIT: usize = 5;
    /// Dword 6: occupancy (bits 15:0), state (bits 31:30), read-only.
    pub const DW_STATUS: usize = 6;
    /// dw2 bit 0: dedicated mode (clear: shared).
    pub const MODE_DEDICATED: u32 = 1 << 0;
    /// dw2 bit 1: block on page faults (needs GENCAP.BLOCK_ON_FAULT).
    pub const BOF_EN: u32 = 1 << 1;
    /// dw2 bit 2: disable ATS for this WQ (needs WQCAP.WQ_ATS_DISABLE).
    pub const ATS_DISABLE: u32 = 1 << 2;
    /// dw2 bit 3: disable page requests for this WQ (needs WQCAP.WQ_PRS_DISABLE).
    pub const PRS_DISABLE: u32 = 1 << 3;
    /// dw2 bit 28: PASID enable (must be set for a shared WQ).
    pub const PASID_EN: u32 = 1 << 28;
    /// dw2 bit 29: privileged (dedicated WQ: the privilege of all its descriptors).
    pub const PRIV: u32 = 1 << 29;
    /// dw4 bit 16: occupancy interrupt table is IMS.
    pub const OCC_INT_IMS: u32 = 1 << 16;
    /// dw5 bit 16: occupancy interrupt enable.
    pub const OCC_INT_EN: u32 = 1 << 16;
    /// dw6 bit 16 (RW1C): occupancy interrupt generated.
    pub const OCC_INT_GENERATED: u32 = 1 << 16;
    /// dw6 bit 29 (RO): mode support.
    pub const MODE_SUPPORT: u32 = 1 << 29;
}

impl WqCfg {
    /// WQ size in descriptor entries (dw0 bits 15:0).
    pub const fn size(&self) -> u16 {
        self.0[0] as u16
    }
    /// WQ threshold (dw1 bits 15:0).
    pub const fn threshold(&self) -> u16 {
        self.0[1] as u16
    }
    /// WQ mode (dw2 bit 0).
    pub const fn mode(&self) -> WqMode {
        if self.0[2] & wqcfg::MODE_DEDICATED != 0 {
            WqMode::Dedicated
        } else {
            WqMode::Shared
        }
    }
    /// Block-on-fault enabled (dw2 bit 1).
    pub const fn bof(&self) -> bool {
        self.0[2] & wqcfg::BOF_EN != 0
    }
    /// ATS disabled (dw2 bit 2).
    pub const fn ats_disable(&self) -> bool {
        self.0[2] & wqcfg::ATS_DISABLE != 0
    }
    /// Page requests disabled (dw2 bit 3).
    pub const fn prs_disable(&self) -> bool {
        self.0[2] & wqcfg::PRS_DISABLE != 0
    }
    /// WQ priority 1..=15 (dw2 bits 7:4).
    pub const fn priority(&self) -> u8 {
        ((self.0[2] >> 4) & 0xF) as u8
    }
    /// WQ PASID (dw2 bits 27:8; dedicated WQs).
    pub const fn pasid(&self) -> u32 {
        (self.0[2] >> 8) & 0xF_FFFF
    }
    /// PASID enable (dw2 bit 28).
    pub const fn pasid_en(&self) -> bool {
        self.0[2] & wqcfg::PASID_EN != 0
    }
    /// Privileged (dw2 bit 29).
    pub const fn privileged(&self) -> bool {
        self.0[2] & wqcfg::PRIV != 0
    }
    /// Max transfer size as log2 bytes (dw3 bits 4:0).
    pub const fn max_xfer_shift(&self) -> u8 {
        (self.0[3] & 0x1F) as u8
    }
    /// Max batch size as log2 descriptors (dw3 bits 8:5).
    pub const fn max_batch_shift(&self) -> u8 {
        ((self.0[3] >> 5) & 0xF) as u8
    }
    /// Occupancy interrupt handle (dw4 bits 15:0).
    pub const fn occ_int_handle(&self) -> u16 {
        self.0[4] as u16
    }
    /// Occupancy limit (dw5 bits 15:0).
    pub const fn occ_limit(&self) -> u16 {
        self.0[5] as u16
    }
    /// Occupancy interrupt enabled (dw5 bit 16).
    pub const fn occ_int_en(&self) -> bool {
        self.0[5] & wqcfg::OCC_INT_EN != 0
    }
    /// Descriptors currently queued (dw6 bits 15:0).
    pub const fn occupancy(&self) -> u16 {
        self.0[6] as u16
    }
    /// WQ state (dw6 bits 31:30; the reserved value 3 reads as disabled).
    pub const fn state(&self) -> WqState {
        match (self.0[6] >> 30) & 3 {
            1 => WqState::Enabled,
            2 => WqState::Draining,
            _ => WqState::Disabled,
        }
    }

    /// This entry with size `n`.
    pub const fn with_size(mut self, n: u16) -> Self {
        self.0[0] = (self.0[0] & !0xFFFF) | n as u32;
        self
    }
    /// This entry with threshold `n`.
    pub const fn with_threshold(mut self, n: u16) -> Self {
        self.0[1] = (self.0[1] & !0xFFFF) | n as u32;
        self
    }
    /// This entry with mode `m`.
    pub const fn with_mode(mut self, m: WqMode) -> Self {
        self.0[2] = (self.0[2] & !wqcfg::MODE_DEDICATED)
            | if matches!(m, WqMode::Dedicated) {
                wqcfg::MODE_DEDICATED
            } else {
                0
            };
        self
    }
    const fn with_bit(mut self, dw: usize, bit: u32, on: bool) -> Self {
        self.0[dw] = (self.0[dw] & !bit) | if on { bit } else { 0 };
        self
    }
    /// This entry with block-on-fault set or cleared.
    pub const fn with_bof(self, on: bool) -> Self {
        self.with_bit(2, wqcfg::BOF_EN, on)
    }
    /// This entry with priority `p` (4 bits).
    pub const fn with_priority(mut self, p: u8) -> Self {
        self.0[2] = (self.0[2] & !0xF0) | ((p as u32 & 0xF) << 4);
        self
    }
    /// This entry with PASID `pasid` (20 bits) and PASID enable `enable`.
    pub const fn with_pasid(mut self, pasid: u32, enable: bool) -> Self {
        self.0[2] = (self.0[2] & !(0xF_FFFF << 8)) | ((pasid & 0xF_FFFF) << 8);
        self.with_bit(2, wqcfg::PASID_EN, enable)
    }
    /// This entry with the privileged bit set or cleared.
    pub const fn with_priv(self, on: bool) -> Self {
        self.with_bit(2, wqcfg::PRIV, on)
    }
    /// This entry with max transfer shift `s` (5 bits).
    pub const fn with_max_xfer_shift(mut self, s: u8) -> Self {
        self.0[3] = (self.0[3] & !0x1F) | (s as u32 & 0x1F);
        self
    }
    /// This entry with max batch shift `s` (4 bits).
    pub const fn with_max_batch_shift(mut self, s: u8) -> Self {
        self.0[3] = (self.0[3] & !(0xF << 5)) | ((s as u32 & 0xF) << 5);
        self
    }
}

bitflags! {
    /// MSI-X permission table entry (8 bytes per entry, low 32 bits defined), §9.2.22.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct MsixPerm: u32 {
        /// Bit 2: interrupts aimed at this entry are suppressed.
        const IGNORE = 1 << 2;
        /// Bit 3: the entry is bound to the PASID in bits 31:12.
        const PASID_EN = 1 << 3;
        const _ = !0;
    }
}
/// Size of one MSIXPERM entry.
pub const MSIXPERM_ENTRY_SIZE: u64 = 8;
impl MsixPerm {
    /// PASID (bits 31:12).
    pub const fn pasid(self) -> u32 {
        self.bits() >> 12
    }
    /// This entry with PASID `pasid` (20 bits).
    pub const fn with_pasid(self, pasid: u32) -> Self {
        Self::from_bits_retain((self.bits() & 0xFFF) | (pasid & 0xF_FFFF) << 12)
    }
}

bitflags! {
    /// IMS entry control word (entry +0xC), §9.2.28.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct ImsCtrl: u32 {
        /// Bit 0: masked (the message is held as pending).
        const MASK = 1 << 0;
        /// Read-only: a message is pending because the entry was masked.
        const PENDING = 1 << 1;
        /// Bit 2: messages aimed at this entry are dropped.
        const IGNORE = 1 << 2;
        /// Bit 3: the entry is bound to the PASID in bits 31:12.
        const PASID_EN = 1 << 3;
        const _ = !0;
    }
}
impl ImsCtrl {
    /// PASID (bits 31:12).
    pub const fn pasid(self) -> u32 {
        self.bits() >> 12
    }
    /// This entry with PASID `pasid` (20 bits).
    pub const fn with_pasid(self, pasid: u32) -> Self {
        Self::from_bits_retain((self.bits() & 0xFFF) | (pasid & 0xF_FFFF) << 12)
    }
}

/// Size of one IMS entry.
pub const IMS_ENTRY_SIZE: u64 = 16;
/// The upper 44 bits an IMS message address must have (0x00000000_FEExxxxx).
pub const IMS_ADDR_REQUIRED_HI: u64 = 0xFEE;
/// Reset value of an IMS message address.
pub const IMS_ADDR_RESET: u64 = 0xFEE0_0000;

/// IMS table entry (16 bytes), §9.2.28.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImsEntry {
    /// Message address (+0x0); the upper 44 bits must be 0xFEE.
    pub addr: u64,
    /// Message data (+0x8).
    pub data: u32,
    /// Control (+0xC).
    pub ctrl: ImsCtrl,
}
impl Default for ImsEntry {
    /// Reset state: address 0xFEE00000, data 0, masked.
    fn default() -> Self {
        ImsEntry {
            addr: IMS_ADDR_RESET,
            data: 0,
            ctrl: ImsCtrl::MASK,
        }
    }
}
impl ImsEntry {
    /// True if `addr` is an acceptable message address (upper 44 bits = 0xFEE).
    pub const fn addr_valid(addr: u64) -> bool {
        addr >> 20 == IMS_ADDR_REQUIRED_HI
    }
    /// The entry as 16 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.data.to_le_bytes());
        b[12..16].copy_from_slice(&self.ctrl.bits().to_le_bytes());
        b
    }
    /// The entry from 16 little-endian bytes.
    pub fn from_bytes(b: &[u8; 16]) -> Self {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        let mut d = [0u8; 4];
        d.copy_from_slice(&b[8..12]);
        let mut c = [0u8; 4];
        c.copy_from_slice(&b[12..16]);
        ImsEntry {
            addr: u64::from_le_bytes(a),
            data: u32::from_le_bytes(d),
            ctrl: ImsCtrl::from_bits_retain(u32::from_le_bytes(c)),
        }
    }
}

/// MSI-X table entry layout (standard PCI, 16 bytes; PCI Express Base Specification rev 6.0,
/// §7.7.2, and DSA spec §9.2.26).
pub mod msix {
    /// Bytes per entry.
    pub const ENTRY_SIZE: u64 = 16;
    /// Message Address, bits 31:0.
    pub const ADDR_LO: u64 = 0;
    /// Message Upper Address.
    pub const ADDR_HI: u64 = 4;
    /// Message Data.
    pub const DATA: u64 = 8;
    /// Vector Control.
    pub const VECTOR_CTRL: u64 = 12;
    /// Vector Control bit 0: Mask.
    pub const VECTOR_CTRL_MASK: u32 = 1;
}

hwio::register_map! {
    /// One GRPCFG entry (§9.2.23), relative to the entry (group g at GRPCFG + g × 0x40): the
    /// whole 64 bytes as a [`GrpCfg`] (qwords 6–7 reserved, written as zero).
    pub mod grpcfg {
        /// The entry.
        0x00 => ENTRY: GrpCfg, ReadWrite;
    }
}

hwio::register_map! {
    /// One WQCFG entry (§9.2.24), relative to the entry (WQ w at WQCFG + w × entry size):
    /// the eight dwords of DSA 1.0 as a [`WqCfg`] (read-modify-write keeps every bit).
    pub mod wqcfg_entry {
        /// Dwords 0–7.
        0x00 => ENTRY: WqCfg, ReadWrite;
    }
}

hwio::register_map! {
    /// One MSIXPERM entry (§9.2.22), relative to the entry (MSI-X entry e at MSIXPERM + 8e).
    pub mod msixperm {
        /// The permission dword (bits 63:32 reserved).
        0x00 => ENTRY: MsixPerm, ReadWrite;
    }
}

hwio::register_map! {
    /// One IMS entry (§9.2.28), relative to the entry (entry i at IMS + 16i).
    pub mod ims {
        /// Message address.
        0x00 => ADDR: u64, ReadWrite;
        /// Message data.
        0x08 => DATA: u32, ReadWrite;
        /// Control: mask, pending (read-only), PASID.
        0x0C => CTRL: ImsCtrl, ReadWrite;
    }
}

hwio::flags_value!(GroupFlags: u64, MsixPerm: u32, ImsCtrl: u32);
hwio::newtype_value!(WqCfg: [u32; 8]);

impl Value for GrpCfg {
    type Raw = [u64; 8];
    fn from_raw(raw: [u64; 8]) -> Self {
        GrpCfg::from_qwords(&raw)
    }
    fn to_raw(self) -> [u64; 8] {
        self.to_qwords()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wqcfg_fields() {
        let w = WqCfg::default()
            .with_size(32)
            .with_threshold(16)
            .with_mode(WqMode::Dedicated)
            .with_priority(15)
            .with_pasid(0x12345, true)
            .with_priv(true)
            .with_bof(true)
            .with_max_xfer_shift(31)
            .with_max_batch_shift(10);
        assert_eq!(w.0[0], 32);
        assert_eq!(w.0[1], 16);
        assert_eq!(w.0[2], 0x3123_45F3);
        assert_eq!(w.0[3], 31 | 10 << 5);
        assert_eq!(w.mode(), WqMode::Dedicated);
        assert_eq!(w.pasid(), 0x12345);
        assert!(w.pasid_en() && w.privileged() && w.bof());
        assert_eq!(w.priority(), 15);
        assert_eq!((w.max_xfer_shift(), w.max_batch_shift()), (31, 10));
        let mut s = w;
        s.0[6] = 1 << 30 | 7;
        assert_eq!(s.state(), WqState::Enabled);
        assert_eq!(s.occupancy(), 7);
    }

    #[test]
    fn grpcfg_msixperm_ims() {
        let g = GrpCfg {
            wqs: [0b101, 0, 0, 1],
            engines: 0b10,
            flags: GroupFlags::empty().with_tc_a(1).with_tc_b(1),
        };
        assert!(g.has_wq(0) && g.has_wq(2) && g.has_wq(192) && !g.has_wq(1));
        assert!(g.has_engine(1) && !g.has_engine(0));
        assert_eq!(g.flags.bits(), 0x9);
        assert_eq!(GrpCfg::from_qwords(&g.to_qwords()), g);
        assert_eq!(GrpCfg::from_raw(g.to_raw()), g);
        assert_eq!(g.to_raw()[5], 0x9);
        assert_eq!(ims::CTRL.at(0x8010).offset(), 0x801C);
        let p = (MsixPerm::PASID_EN).with_pasid(0xABCDE);
        assert_eq!(p.bits(), 0xABCD_E008);
        assert_eq!(p.pasid(), 0xABCDE);
        let e = ImsEntry {
            addr: 0xFEE0_1000,
            data: 0x41,
            ctrl: ImsCtrl::PASID_EN.with_pasid(7),
        };
        assert_eq!(ImsEntry::from_bytes(&e.to_bytes()), e);
        assert!(ImsEntry::addr_valid(0xFEE0_1000));
        assert!(!ImsEntry::addr_valid(0x1_FEE0_1000));
        assert!(!ImsEntry::addr_valid(0xFED0_0000));
        assert!(ImsEntry::default().ctrl.contains(ImsCtrl::MASK));
    }
}
