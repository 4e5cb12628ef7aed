//! The 32-byte completion record (DSA spec §8.2).

/// Size of a DSA completion record (IAA uses 64).
pub const CR_SIZE: usize = 32;
/// Required alignment of the completion record address.
pub const CR_ALIGN: u64 = 32;

/// Completion status codes (byte 0 & 0x3F; §8.2.1, §5.8.1 Table 5-6).
pub mod status {
    /// 0x00: not yet complete (software's initial value; never written by the device).
    pub const NOT_COMPLETE: u8 = 0x00;
    /// 0x01: success.
    pub const SUCCESS: u8 = 0x01;
    /// 0x02: success with a false predicate (Check Result set and the result differs).
    pub const SUCCESS_FALSE_PREDICATE: u8 = 0x02;
    /// 0x03: partial completion after a page fault (block-on-fault off); bytes completed and
    /// fault address are valid.
    pub const PAGE_FAULT_PARTIAL: u8 = 0x03;
    /// 0x04: page fault that the page request could not resolve.
    pub const PAGE_FAULT_PRS: u8 = 0x04;
    /// 0x05: batch: one or more members failed.
    pub const BATCH_FAIL: u8 = 0x05;
    /// 0x06: batch: page fault reading the descriptor list.
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
    /// 0x07: Apply Delta: offsets not increasing.
    pub const DELTA_OFFSET_ORDER: u8 = 0x07;
    /// 0x08: Apply Delta: an offset at or beyond the transfer size.
    pub const DELTA_OFFSET_RANGE: u8 = 0x08;
    /// 0x09: DIF error (see the DIF status byte, [`dif_status`](super::dif_status)).
    pub const DIF_ERROR: u8 = 0x09;
    /// 0x10: unsupported opcode (also a Batch or Drain inside a batch).
    pub const UNSUPPORTED_OPCODE: u8 = 0x10;
    /// 0x11: invalid flags.
    pub const INVALID_FLAGS: u8 = 0x11;
    /// 0x12: non-zero reserved field.
    pub const NONZERO_RESERVED: u8 = 0x12;
    /// 0x13: transfer size out of range.
    pub const INVALID_XFER_SIZE: u8 = 0x13;
    /// 0x14: descriptor count out of range (batch).
    pub const INVALID_DESC_COUNT: u8 = 0x14;
    /// 0x15: delta record size or maximum delta size invalid.
    pub const INVALID_DELTA_SIZE: u8 = 0x15;
    /// 0x16: buffers overlap where overlap is not allowed.
    pub const OVERLAP: u8 = 0x16;
    /// 0x17: Dualcast: the destinations' bits 11:0 differ.
    pub const DUALCAST_ALIGN: u8 = 0x17;
    /// 0x18: descriptor list not 64-byte aligned.
    pub const LIST_ALIGN: u8 = 0x18;
    /// 0x19: invalid completion interrupt handle.
    pub const INVALID_INT_HANDLE: u8 = 0x19;
    /// 0x1A: page fault on the completion record address (reported in SWERROR).
    pub const CR_PAGE_FAULT: u8 = 0x1A;
    /// 0x1B: completion record address not 32-byte aligned (reported in SWERROR).
    pub const CR_ALIGN: u8 = 0x1B;
    /// 0x1C: misaligned address (delta operations, CRC seed address).
    pub const MISALIGNED_ADDR: u8 = 0x1C;
    /// 0x1D: privileged descriptor while privileged mode is not enabled.
    pub const PRIVILEGE: u8 = 0x1D;
    /// 0x1E: traffic class not valid for the group.
    pub const TRAFFIC_CLASS: u8 = 0x1E;
    /// 0x1F: page fault on a Drain readback address.
    pub const DRAIN_READBACK_FAULT: u8 = 0x1F;
    /// 0x20: hardware error on read.
    pub const HW_READ_ERROR: u8 = 0x20;
    /// 0x21: hardware error on write or destination readback.
    pub const HW_WRITE_ERROR: u8 = 0x21;
    /// 0x22: address translation failure.
    pub const TRANSLATION_FAILURE: u8 = 0x22;
    /// Software only: Linux marks descriptors it aborted with this value.
    pub const SW_ABORTED: u8 = 0xFF;
    /// Mask of the status code in byte 0.
    pub const CODE_MASK: u8 = 0x3F;
    /// Byte 0 bit 7: the faulting access was a write.
    pub const FAULT_WRITE: u8 = 0x80;

    /// Short name of a status code (for logs).
    pub const fn name(code: u8) -> &'static str {
        match code & CODE_MASK {
            NOT_COMPLETE => "not complete",
            SUCCESS => "success",
            SUCCESS_FALSE_PREDICATE => "success, false predicate",
            PAGE_FAULT_PARTIAL => "partial completion (page fault)",
            PAGE_FAULT_PRS => "page fault (page request failed)",
            BATCH_FAIL => "batch member failed",
            BATCH_PAGE_FAULT => "batch list page fault",
            DELTA_OFFSET_ORDER => "delta offsets not increasing",
            DELTA_OFFSET_RANGE => "delta offset out of range",
            DIF_ERROR => "DIF error",
            UNSUPPORTED_OPCODE => "unsupported opcode",
            INVALID_FLAGS => "invalid flags",
            NONZERO_RESERVED => "non-zero reserved field",
            INVALID_XFER_SIZE => "invalid transfer size",
            INVALID_DESC_COUNT => "invalid descriptor count",
            INVALID_DELTA_SIZE => "invalid delta record size",
            OVERLAP => "buffers overlap",
            DUALCAST_ALIGN => "dualcast destinations differ in bits 11:0",
            LIST_ALIGN => "descriptor list misaligned",
            INVALID_INT_HANDLE => "invalid interrupt handle",
            CR_PAGE_FAULT => "completion record page fault",
            CR_ALIGN => "completion record misaligned",
            MISALIGNED_ADDR => "misaligned address",
            PRIVILEGE => "privilege error",
            TRAFFIC_CLASS => "traffic class error",
            DRAIN_READBACK_FAULT => "drain readback fault",
            HW_READ_ERROR => "hardware read error",
            HW_WRITE_ERROR => "hardware write error",
            TRANSLATION_FAILURE => "address translation failure",
            _ => "unknown",
        }
    }
}

/// DIF status bits (CR byte 1 for DIF operations).
pub mod dif_status {
    /// Bit 0: guard tag (CRC) mismatch.
    pub const GUARD_MISMATCH: u8 = 1 << 0;
    /// Bit 1: application tag mismatch.
    pub const APP_TAG_MISMATCH: u8 = 1 << 1;
    /// Bit 2: reference tag mismatch.
    pub const REF_TAG_MISMATCH: u8 = 1 << 2;
    /// Bit 3: all-F detect error (tags all ones where the flags forbid it).
    pub const ALL_F_ERROR: u8 = 1 << 3;
}

/// A completion record. Bytes 16–31 stay raw in `op_specific` with named accessors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CompletionRecord {
    /// Byte 0: status code (5:0) and fault-write bit (7).
    pub status: u8,
    /// Byte 1: op-specific result.
    pub result: u8,
    /// Byte 2: fault info (spec 3.0; reserved on DSA 1.0).
    pub fault_info: u8,
    /// Bytes 4–7: bytes completed (descriptors completed for Batch).
    pub bytes_completed: u32,
    /// Bytes 8–15: fault address.
    pub fault_addr: u64,
    /// Bytes 16–31.
    pub op_specific: [u8; 16],
}

macro_rules! cr_field {
    ($get:ident, $set:ident, $ty:ty, $off:expr, $doc:literal) => {
        #[doc = $doc]
        pub fn $get(&self) -> $ty {
            const N: usize = core::mem::size_of::<$ty>();
            let mut a = [0u8; N];
            a.copy_from_slice(&self.op_specific[$off - 16..$off - 16 + N]);
            <$ty>::from_le_bytes(a)
        }
        #[doc = $doc]
        pub fn $set(&mut self, v: $ty) -> &mut Self {
            const N: usize = core::mem::size_of::<$ty>();
            self.op_specific[$off - 16..$off - 16 + N].copy_from_slice(&v.to_le_bytes());
            self
        }
    };
}

impl CompletionRecord {
    /// Decodes the 32 little-endian bytes the device wrote.
    pub fn from_bytes(b: &[u8; CR_SIZE]) -> Self {
        let mut op_specific = [0u8; 16];
        op_specific.copy_from_slice(&b[16..32]);
        let mut fa = [0u8; 8];
        fa.copy_from_slice(&b[8..16]);
        CompletionRecord {
            status: b[0],
            result: b[1],
            fault_info: b[2],
            bytes_completed: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            fault_addr: u64::from_le_bytes(fa),
            op_specific,
        }
    }
    /// The record as 32 little-endian bytes.
    pub fn to_bytes(&self) -> [u8; CR_SIZE] {
        let mut b = [0u8; CR_SIZE];
        b[0] = self.status;
        b[1] = self.result;
        b[2] = self.fault_info;
        b[4..8].copy_from_slice(&self.bytes_completed.to_le_bytes());
        b[8..16].copy_from_slice(&self.fault_addr.to_le_bytes());
        b[16..32].copy_from_slice(&self.op_specific);
        b
    }
    /// Status code without the fault-write bit.
    pub const fn status_code(&self) -> u8 {
        self.status & status::CODE_MASK
    }
    /// True if the faulting access was a write (byte 0 bit 7).
    pub const fn fault_is_write(&self) -> bool {
        self.status & status::FAULT_WRITE != 0
    }

    cr_field!(
        invalid_flags,
        set_invalid_flags,
        u32,
        16,
        "Status 0x11: the offending flag bits (24 bits at 16)."
    );
    cr_field!(
        delta_record_size,
        set_delta_record_size,
        u32,
        16,
        "Create Delta: delta record size in bytes (@16)."
    );
    cr_field!(
        crc,
        set_crc,
        u32,
        16,
        "CRC Generation / Copy with CRC: CRC value (@16)."
    );
    cr_field!(
        dif_src_ref_tag,
        set_dif_src_ref_tag,
        u32,
        16,
        "DIF Check/Strip/Update: source reference tag for the next block (@16)."
    );
    cr_field!(
        dif_src_app_tag_mask,
        set_dif_src_app_tag_mask,
        u16,
        20,
        "DIF: source application tag mask (@20)."
    );
    cr_field!(
        dif_src_app_tag,
        set_dif_src_app_tag,
        u16,
        22,
        "DIF: source application tag for the next block (@22)."
    );
    cr_field!(
        dif_dest_ref_tag,
        set_dif_dest_ref_tag,
        u32,
        24,
        "DIF Insert/Update: destination reference tag for the next block (@24)."
    );
    cr_field!(
        dif_dest_app_tag_mask,
        set_dif_dest_app_tag_mask,
        u16,
        28,
        "DIF: destination application tag mask (@28)."
    );
    cr_field!(
        dif_dest_app_tag,
        set_dif_dest_app_tag,
        u16,
        30,
        "DIF Insert/Update: destination application tag for the next block (@30)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn cr_roundtrip() {
        let mut c = CompletionRecord {
            status: status::PAGE_FAULT_PARTIAL | status::FAULT_WRITE,
            result: 1,
            bytes_completed: 0x1234,
            fault_addr: 0xDEAD_B000,
            ..Default::default()
        };
        c.set_crc(0xE3069283);
        let b = c.to_bytes();
        assert_eq!(b[0], 0x83);
        assert_eq!(&b[4..8], &[0x34, 0x12, 0, 0]);
        assert_eq!(&b[16..20], &[0x83, 0x92, 0x06, 0xE3]);
        let d = CompletionRecord::from_bytes(&b);
        assert_eq!(d, c);
        assert_eq!(d.status_code(), 3);
        assert!(d.fault_is_write());
        assert_eq!(status::name(d.status), "partial completion (page fault)");
        let mut t = CompletionRecord::default();
        t.set_dif_dest_app_tag(0xBEEF).set_dif_src_ref_tag(9);
        assert_eq!(&t.to_bytes()[30..32], &[0xEF, 0xBE]);
        assert_eq!(t.to_bytes()[16], 9);
    }
}
