//! The 64-byte work descriptor (DSA spec §8.1): common layout, flags, opcodes, per-op fields.

use bitflags::bitflags;

/// Size of a descriptor in bytes.
pub const DESC_SIZE: usize = 64;

bitflags! {
    /// Descriptor flags (bytes 4–6, 24 bits, §8.1.3, Table 8-3). Bits 16–23 are operation-specific:
    /// several constants share a bit and are named after their operation.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DescFlags: u32 {
        /// Bit 0: fence, the descriptor waits for the earlier members of its batch.
        const FENCE = 1 << 0;
        /// Bit 1: block on page faults instead of completing partially.
        const BLOCK_ON_FAULT = 1 << 1;
        /// Completion record address valid.
        const CRAV = 1 << 2;
        /// Request completion record.
        const RCR = 1 << 3;
        /// Request completion interrupt.
        const RCI = 1 << 4;
        /// Linux `CRSTS`; spec 3.0 cache control bit 3. Reserved on DSA 1.0.
        const CACHE_CONTROL_3 = 1 << 5;
        /// Bit 7: Compare/Compare Pattern/CRC: report a false predicate (status 0x02) when the
        /// result differs from the expected one.
        const CHECK_RESULT = 1 << 7;
        /// Cache control bit 1 (Linux `CC`): destination writes allocate in the LLC.
        const CACHE_CONTROL = 1 << 8;
        /// Bit 9: operand 1 accesses use traffic class B.
        const ADDR1_TC_B = 1 << 9;
        /// Bit 10: operand 2 accesses use traffic class B.
        const ADDR2_TC_B = 1 << 10;
        /// Bit 11: operand 3 accesses use traffic class B.
        const ADDR3_TC_B = 1 << 11;
        /// Bit 12: the completion record write uses traffic class B.
        const CR_TC_B = 1 << 12;
        /// Bit 13: destination writes are strictly ordered.
        const STRICT_ORDERING = 1 << 13;
        /// Destination readback (Linux `DRDBK`, GENCAP.8); spec 3.0 cache control bit 2.
        const DEST_READBACK = 1 << 14;
        /// Linux `DSTS`; reserved in the spec.
        const DSTS = 1 << 15;

        /// Batch: forward member failures into the batch status (UNCONFIRMED detail).
        const BATCH_ERROR = 1 << 16;
        /// Drain: readback address 1 / 2 valid (GENCAP.9, DSA 2.0).
        const DRAIN_READBACK_ADDR1 = 1 << 16;
        /// Drain bit 17: readback address 2 valid (GENCAP.9, DSA 2.0).
        const DRAIN_READBACK_ADDR2 = 1 << 17;
        /// Drain: suppress the implicit readback on TC-A / TC-B.
        const DRAIN_SUPPRESS_TC_A = 1 << 18;
        /// Drain bit 19: suppress the implicit readback on TC-B.
        const DRAIN_SUPPRESS_TC_B = 1 << 19;
        /// Fill: 16-byte pattern (GENCAP.10).
        const FILL_16B = 1 << 18;
        /// CRC Generation / Copy with CRC: read the seed from the address at byte 48.
        const CRC_SEED_FROM_MEM = 1 << 16;
        /// CRC: bypass CRC inversion and reflection.
        const CRC_BYPASS_INV_REFL = 1 << 17;
        /// CRC: bypass data reflection.
        const CRC_BYPASS_DATA_REFL = 1 << 18;
        /// CRC: CRC64 instead of CRC32 (GENCAP.11).
        const CRC64 = 1 << 19;
        /// Translation fetch: use the stride field (GENCAP.7).
        const XLAT_FETCH_STRIDE = 1 << 16;
        const _ = !0;
    }
}

/// Mask of the 24 defined flag bits.
pub const FLAGS_MASK: u32 = 0xFF_FFFF;

/// Opcodes (§8.1.2, Table 8-2). The descriptor keeps the raw byte; use [`Opcode::from_u8`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// No operation (completes; useful for fences and completion interrupts).
    Noop = 0x00,
    /// Batch: process a list of descriptors.
    Batch = 0x01,
    /// Drain: wait until earlier descriptors (of the PASID or WQ) completed.
    Drain = 0x02,
    /// Memory Move (copy `size` bytes from source to destination).
    MemMove = 0x03,
    /// Fill memory with an 8- or 16-byte pattern.
    Fill = 0x04,
    /// Compare two buffers.
    Compare = 0x05,
    /// Compare a buffer with an 8-byte pattern.
    ComparePattern = 0x06,
    /// Create a delta record of two buffers.
    CreateDelta = 0x07,
    /// Apply a delta record to a buffer.
    ApplyDelta = 0x08,
    /// Copy one source to two destinations.
    Dualcast = 0x09,
    /// Translation fetch: prefetch address translations (DSA 2.0).
    TranslationFetch = 0x0A,
    /// CRC generation (CRC-32C, or CRC64 with GENCAP.CRC64).
    CrcGen = 0x10,
    /// Copy with CRC generation.
    CopyCrc = 0x11,
    /// DIF check (T10 protection information).
    DifCheck = 0x12,
    /// DIF insert.
    DifInsert = 0x13,
    /// DIF strip.
    DifStrip = 0x14,
    /// DIF update.
    DifUpdate = 0x15,
    /// DIX generate (separate protection-information buffer; DSA 2.0).
    DixGenerate = 0x17,
    /// Cache flush of a memory range.
    CacheFlush = 0x20,
}

impl Opcode {
    /// The opcode for a byte, `None` for unknown opcodes.
    pub const fn from_u8(v: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match v {
            0x00 => Noop,
            0x01 => Batch,
            0x02 => Drain,
            0x03 => MemMove,
            0x04 => Fill,
            0x05 => Compare,
            0x06 => ComparePattern,
            0x07 => CreateDelta,
            0x08 => ApplyDelta,
            0x09 => Dualcast,
            0x0A => TranslationFetch,
            0x10 => CrcGen,
            0x11 => CopyCrc,
            0x12 => DifCheck,
            0x13 => DifInsert,
            0x14 => DifStrip,
            0x15 => DifUpdate,
            0x17 => DixGenerate,
            0x20 => CacheFlush,
            _ => return None,
        })
    }
    /// The opcodes a DSA 1.0 device implements.
    pub const DSA_1_0: [Opcode; 17] = [
        Opcode::Noop,
        Opcode::Batch,
        Opcode::Drain,
        Opcode::MemMove,
        Opcode::Fill,
        Opcode::Compare,
        Opcode::ComparePattern,
        Opcode::CreateDelta,
        Opcode::ApplyDelta,
        Opcode::Dualcast,
        Opcode::CrcGen,
        Opcode::CopyCrc,
        Opcode::DifCheck,
        Opcode::DifInsert,
        Opcode::DifStrip,
        Opcode::DifUpdate,
        Opcode::CacheFlush,
    ];
}

/// A work descriptor. `from_bytes`/`to_bytes` convert the little-endian 64-byte image; the
/// operation-specific bytes 40–63 stay raw in `op_specific` and are read and written through
/// the named accessors below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    /// Bits 19:0 of bytes 0–3 (shared WQ only).
    pub pasid: u32,
    /// Bits 30:20 of bytes 0–3, reserved (0).
    pub reserved_pasid_bits: u16,
    /// Bit 31 of bytes 0–3: U/S (1 = supervisor).
    pub privileged: bool,
    /// Bytes 4–6: flags.
    pub flags: DescFlags,
    /// Raw opcode byte.
    pub opcode: u8,
    /// Completion record address (bytes 8–15).
    pub completion_addr: u64,
    /// Operand 1 (bytes 16–23): source / pattern / descriptor list / delta record.
    pub addr1: u64,
    /// Operand 2 (bytes 24–31): destination / source 2 / compare pattern.
    pub addr2: u64,
    /// Bytes 32–35: transfer size / descriptor count.
    pub size: u32,
    /// Bytes 36–37: completion interrupt handle.
    pub int_handle: u16,
    /// Bytes 38–39: reserved.
    pub reserved38: u16,
    /// Bytes 40–63.
    pub op_specific: [u8; 24],
}

impl Default for Descriptor {
    fn default() -> Self {
        Descriptor {
            pasid: 0,
            reserved_pasid_bits: 0,
            privileged: false,
            flags: DescFlags::empty(),
            opcode: 0,
            completion_addr: 0,
            addr1: 0,
            addr2: 0,
            size: 0,
            int_handle: 0,
            reserved38: 0,
            op_specific: [0; 24],
        }
    }
}

fn rd_u16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn rd_u32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn rd_u64(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

macro_rules! op_field {
    ($get:ident, $set:ident, $ty:ty, $off:expr, $doc:literal) => {
        #[doc = $doc]
        pub fn $get(&self) -> $ty {
            const N: usize = core::mem::size_of::<$ty>();
            let mut a = [0u8; N];
            a.copy_from_slice(&self.op_specific[$off - 40..$off - 40 + N]);
            <$ty>::from_le_bytes(a)
        }
        #[doc = $doc]
        pub fn $set(&mut self, v: $ty) -> &mut Self {
            const N: usize = core::mem::size_of::<$ty>();
            self.op_specific[$off - 40..$off - 40 + N].copy_from_slice(&v.to_le_bytes());
            self
        }
    };
}

impl Descriptor {
    /// A zeroed descriptor with opcode `op`.
    pub fn new(op: Opcode) -> Self {
        Descriptor {
            opcode: op as u8,
            ..Default::default()
        }
    }

    /// Decodes 64 little-endian bytes.
    pub fn from_bytes(b: &[u8; DESC_SIZE]) -> Self {
        let w0 = rd_u32(b, 0);
        let mut op_specific = [0u8; 24];
        op_specific.copy_from_slice(&b[40..64]);
        Descriptor {
            pasid: w0 & 0xF_FFFF,
            reserved_pasid_bits: ((w0 >> 20) & 0x7FF) as u16,
            privileged: w0 >> 31 != 0,
            flags: DescFlags::from_bits_retain(rd_u32(b, 4) & FLAGS_MASK),
            opcode: b[7],
            completion_addr: rd_u64(b, 8),
            addr1: rd_u64(b, 16),
            addr2: rd_u64(b, 24),
            size: rd_u32(b, 32),
            int_handle: rd_u16(b, 36),
            reserved38: rd_u16(b, 38),
            op_specific,
        }
    }

    /// The descriptor as 64 little-endian bytes (what the portal write carries).
    pub fn to_bytes(&self) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        let w0 = (self.pasid & 0xF_FFFF)
            | ((u32::from(self.reserved_pasid_bits) & 0x7FF) << 20)
            | if self.privileged { 1 << 31 } else { 0 };
        b[0..4].copy_from_slice(&w0.to_le_bytes());
        b[4..7].copy_from_slice(&self.flags.bits().to_le_bytes()[0..3]);
        b[7] = self.opcode;
        b[8..16].copy_from_slice(&self.completion_addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.addr1.to_le_bytes());
        b[24..32].copy_from_slice(&self.addr2.to_le_bytes());
        b[32..36].copy_from_slice(&self.size.to_le_bytes());
        b[36..38].copy_from_slice(&self.int_handle.to_le_bytes());
        b[38..40].copy_from_slice(&self.reserved38.to_le_bytes());
        b[40..64].copy_from_slice(&self.op_specific);
        b
    }

    /// Byte `i` (40..64) of the operation-specific area.
    pub fn op_byte(&self, i: usize) -> u8 {
        self.op_specific
            .get(i.wrapping_sub(40))
            .copied()
            .unwrap_or(0)
    }
    /// Sets byte `i` (40..64) of the operation-specific area (other indices are ignored).
    pub fn set_op_byte(&mut self, i: usize, v: u8) -> &mut Self {
        if let Some(b) = self.op_specific.get_mut(i.wrapping_sub(40)) {
            *b = v;
        }
        self
    }

    /// Memory Move, Copy with CRC, Dualcast, DIF: the source address (operand 1).
    pub fn src(&self) -> u64 {
        self.addr1
    }
    /// Memory Move, Copy with CRC, Dualcast, DIF: the destination address (operand 2).
    pub fn dst(&self) -> u64 {
        self.addr2
    }
    /// Fill: the low 8 pattern bytes (operand 1 holds the value, not an address).
    pub fn fill_pattern(&self) -> u64 {
        self.addr1
    }
    /// Compare Pattern: the 8-byte pattern value at byte 24.
    pub fn compare_pattern(&self) -> u64 {
        self.addr2
    }
    /// Batch: descriptor list address / count.
    pub fn batch_list(&self) -> u64 {
        self.addr1
    }
    /// Batch: number of descriptors in the list.
    pub fn batch_count(&self) -> u32 {
        self.size
    }

    op_field!(
        fill_pattern_high,
        set_fill_pattern_high,
        u64,
        40,
        "Fill16: pattern bytes 8–15 (@40)."
    );
    op_field!(
        expected_result,
        set_expected_result,
        u8,
        40,
        "Compare / Compare Pattern: expected result (@40, bit 0)."
    );
    op_field!(
        delta_record_addr,
        set_delta_record_addr,
        u64,
        40,
        "Create Delta: delta record address (@40)."
    );
    op_field!(
        max_delta_size,
        set_max_delta_size,
        u32,
        48,
        "Create Delta: maximum delta record size (@48)."
    );
    op_field!(
        expected_result_mask,
        set_expected_result_mask,
        u8,
        56,
        "Create Delta: expected-result mask (@56)."
    );
    op_field!(
        delta_record_size,
        set_delta_record_size,
        u32,
        40,
        "Apply Delta: delta record size (@40); operand 1 is the record."
    );
    op_field!(
        dst2,
        set_dst2,
        u64,
        40,
        "Dualcast: second destination (@40)."
    );
    op_field!(
        crc_seed,
        set_crc_seed,
        u32,
        40,
        "CRC Generation / Copy with CRC: seed (@40)."
    );
    op_field!(
        crc_seed_addr,
        set_crc_seed_addr,
        u64,
        48,
        "CRC: seed address (@48, with CRC_SEED_FROM_MEM)."
    );
    op_field!(
        src_dif_flags,
        set_src_dif_flags,
        u8,
        40,
        "DIF Check / Strip / Update: source DIF flags (@40)."
    );
    op_field!(
        dest_dif_flags,
        set_dest_dif_flags,
        u8,
        41,
        "DIF Insert / Update: destination DIF flags (@41)."
    );
    op_field!(
        dif_flags,
        set_dif_flags,
        u8,
        42,
        "DIF ops: DIF flags (@42: block size, CRC seed/result inversion)."
    );
    op_field!(
        src_ref_tag_seed,
        set_src_ref_tag_seed,
        u32,
        48,
        "DIF Check / Strip / Update: source reference tag seed (@48)."
    );
    op_field!(
        src_app_tag_mask,
        set_src_app_tag_mask,
        u16,
        52,
        "DIF Check / Strip / Update: source application tag mask (@52)."
    );
    op_field!(
        src_app_tag_seed,
        set_src_app_tag_seed,
        u16,
        54,
        "DIF Check / Strip / Update: source application tag seed (@54)."
    );
    op_field!(
        dest_ref_tag_seed,
        set_dest_ref_tag_seed,
        u32,
        56,
        "DIF Insert / Update: destination reference tag seed (@56)."
    );
    op_field!(
        dest_app_tag_mask,
        set_dest_app_tag_mask,
        u16,
        60,
        "DIF Insert / Update: destination application tag mask (@60)."
    );
    op_field!(
        dest_app_tag_seed,
        set_dest_app_tag_seed,
        u16,
        62,
        "DIF Insert / Update: destination application tag seed (@62)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_layout() {
        let mut d = Descriptor::new(Opcode::MemMove);
        d.pasid = 0x12345;
        d.privileged = true;
        d.flags = DescFlags::CRAV | DescFlags::RCR | DescFlags::RCI;
        d.completion_addr = 0x1122_3344_5566_7780;
        d.addr1 = 0x1000;
        d.addr2 = 0x2000;
        d.size = 0x40;
        d.int_handle = 3;
        let b = d.to_bytes();
        assert_eq!(&b[0..4], &[0x45, 0x23, 0x01, 0x80]);
        assert_eq!(&b[4..8], &[0x1C, 0, 0, 0x03]);
        assert_eq!(&b[8..16], &0x1122_3344_5566_7780u64.to_le_bytes());
        assert_eq!(&b[32..38], &[0x40, 0, 0, 0, 3, 0]);
        assert_eq!(Descriptor::from_bytes(&b), d);
    }

    #[test]
    fn op_fields() {
        let mut d = Descriptor::new(Opcode::DifUpdate);
        d.set_src_dif_flags(0x80)
            .set_dest_dif_flags(0x40)
            .set_dif_flags(2);
        d.set_src_ref_tag_seed(0x0A0B0C0D)
            .set_src_app_tag_mask(0xFF00)
            .set_src_app_tag_seed(0x1234);
        d.set_dest_ref_tag_seed(7)
            .set_dest_app_tag_mask(1)
            .set_dest_app_tag_seed(0xBEEF);
        let b = d.to_bytes();
        assert_eq!(&b[40..43], &[0x80, 0x40, 2]);
        assert_eq!(
            &b[48..56],
            &[0x0D, 0x0C, 0x0B, 0x0A, 0x00, 0xFF, 0x34, 0x12]
        );
        assert_eq!(&b[56..64], &[7, 0, 0, 0, 1, 0, 0xEF, 0xBE]);
        let e = Descriptor::from_bytes(&b);
        assert_eq!(e.dest_app_tag_seed(), 0xBEEF);
        assert_eq!(e.src_ref_tag_seed(), 0x0A0B0C0D);
        let mut c = Descriptor::new(Opcode::CrcGen);
        c.set_crc_seed(0xDEADBEEF).set_crc_seed_addr(0x4000);
        assert_eq!(&c.to_bytes()[40..44], &[0xEF, 0xBE, 0xAD, 0xDE]);
        assert_eq!(c.op_byte(48), 0x00);
        assert_eq!(c.op_byte(49), 0x40);
        assert_eq!(c.op_byte(64), 0);
    }

    #[test]
    fn opcodes() {
        for op in Opcode::DSA_1_0 {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
        }
        assert_eq!(Opcode::from_u8(0x0B), None);
        assert_eq!(
            DescFlags::CRC_BYPASS_DATA_REFL.bits(),
            DescFlags::FILL_16B.bits()
        );
    }
}
