//! T10-DIF definitions used by the DIF operations (dsa.md §8.7).

use bitflags::bitflags;

/// Size of the protection-information tuple that follows each data block.
pub const PI_SIZE: usize = 8;

/// Block size from DIF flags bits 1:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DifBlockSize {
    B512 = 0,
    B520 = 1,
    B4096 = 2,
    B4104 = 3,
}
impl DifBlockSize {
    pub const fn bytes(self) -> u32 {
        match self {
            DifBlockSize::B512 => 512,
            DifBlockSize::B520 => 520,
            DifBlockSize::B4096 => 4096,
            DifBlockSize::B4104 => 4104,
        }
    }
    pub const fn from_flags(f: DifFlags) -> Self {
        match f.bits() & 3 {
            0 => DifBlockSize::B512,
            1 => DifBlockSize::B520,
            2 => DifBlockSize::B4096,
            _ => DifBlockSize::B4104,
        }
    }
}

bitflags! {
    /// DIF flags (descriptor byte 42). Bits 1:0 are the block size ([`DifBlockSize`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DifFlags: u8 {
        /// Start the guard CRC from 0xFFFF instead of 0.
        const INVERT_CRC_SEED = 1 << 2;
        /// Invert the guard CRC result.
        const INVERT_CRC_RESULT = 1 << 3;
        const _ = !0;
    }
}

bitflags! {
    /// Source DIF flags (descriptor byte 40).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SrcDifFlags: u8 {
        /// All-F detected (whole tuple 0xFF) raises the all-F error (with ALL_F_DETECT).
        const ENABLE_ALL_F_ERROR = 1 << 0;
        const ALL_F_DETECT = 1 << 1;
        /// Skip the checks of a block whose app tag is 0xFFFF.
        const APP_F_DETECT = 1 << 2;
        /// Skip the checks of a block whose app and ref tags are all 1s.
        const APP_REF_F_DETECT = 1 << 3;
        /// Application tag increments per block.
        const APP_TAG_INCREMENT = 1 << 4;
        const GUARD_CHECK_DISABLE = 1 << 5;
        const REF_TAG_CHECK_DISABLE = 1 << 6;
        /// Reference tag fixed (otherwise it increments per block).
        const REF_TAG_FIXED = 1 << 7;
        const _ = !0;
    }
}

bitflags! {
    /// Destination DIF flags (descriptor byte 41).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct DestDifFlags: u8 {
        const APP_TAG_PASSTHROUGH = 1 << 3;
        const APP_TAG_INCREMENT = 1 << 4;
        const GUARD_PASSTHROUGH = 1 << 5;
        const REF_TAG_PASSTHROUGH = 1 << 6;
        const REF_TAG_FIXED = 1 << 7;
        const _ = !0;
    }
}

/// Protection information tuple: big-endian in the data stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pi {
    pub guard: u16,
    pub app_tag: u16,
    pub ref_tag: u32,
}
impl Pi {
    pub fn to_bytes(&self) -> [u8; PI_SIZE] {
        let mut b = [0u8; PI_SIZE];
        b[0..2].copy_from_slice(&self.guard.to_be_bytes());
        b[2..4].copy_from_slice(&self.app_tag.to_be_bytes());
        b[4..8].copy_from_slice(&self.ref_tag.to_be_bytes());
        b
    }
    pub fn from_bytes(b: &[u8; PI_SIZE]) -> Self {
        Pi {
            guard: u16::from_be_bytes([b[0], b[1]]),
            app_tag: u16::from_be_bytes([b[2], b[3]]),
            ref_tag: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Guard of one data block under `flags` (seed/result inversion).
pub fn guard(flags: DifFlags, block: &[u8]) -> u16 {
    let seed = if flags.contains(DifFlags::INVERT_CRC_SEED) {
        0xFFFF
    } else {
        0
    };
    let c = crate::crc::crc16_t10dif(seed, block);
    if flags.contains(DifFlags::INVERT_CRC_RESULT) {
        !c
    } else {
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn pi_and_block() {
        let p = Pi {
            guard: 0x1234,
            app_tag: 0x5678,
            ref_tag: 0x9ABC_DEF0,
        };
        assert_eq!(
            p.to_bytes(),
            [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0]
        );
        assert_eq!(Pi::from_bytes(&p.to_bytes()), p);
        assert_eq!(
            DifBlockSize::from_flags(DifFlags::from_bits_retain(0x0E)).bytes(),
            4096
        );
        assert_eq!(guard(DifFlags::empty(), b"123456789"), 0xD0DB);
        assert_eq!(guard(DifFlags::INVERT_CRC_RESULT, b"123456789"), !0xD0DB);
    }
}
