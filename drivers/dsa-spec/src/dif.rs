//! T10-DIF definitions used by the DIF operations (DSA spec §8.3.14–§8.3.17, Appendix B).

use bitflags::bitflags;

/// Size of the protection-information tuple that follows each data block.
pub const PI_SIZE: usize = 8;

/// Block size from DIF flags bits 1:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DifBlockSize {
    /// 512-byte blocks.
    B512 = 0,
    /// 520-byte blocks.
    B520 = 1,
    /// 4096-byte blocks.
    B4096 = 2,
    /// 4104-byte blocks.
    B4104 = 3,
}
impl DifBlockSize {
    /// Block size in bytes.
    pub const fn bytes(self) -> u32 {
        match self {
            DifBlockSize::B512 => 512,
            DifBlockSize::B520 => 520,
            DifBlockSize::B4096 => 4096,
            DifBlockSize::B4104 => 4104,
        }
    }
    /// The block size selected by DIF flags bits 1:0.
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
        /// Bit 1: detect source tuples that are all ones (checks of such blocks are skipped,
        /// or raise the all-F error with ENABLE_ALL_F_ERROR).
        const ALL_F_DETECT = 1 << 1;
        /// Skip the checks of a block whose app tag is 0xFFFF.
        const APP_F_DETECT = 1 << 2;
        /// Skip the checks of a block whose app and ref tags are all 1s.
        const APP_REF_F_DETECT = 1 << 3;
        /// Application tag increments per block.
        const APP_TAG_INCREMENT = 1 << 4;
        /// Bit 5: do not check the guard tag.
        const GUARD_CHECK_DISABLE = 1 << 5;
        /// Bit 6: do not check the reference tag.
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
        /// Bit 3: copy the source application tag instead of computing it.
        const APP_TAG_PASSTHROUGH = 1 << 3;
        /// Bit 4: the application tag increments per block.
        const APP_TAG_INCREMENT = 1 << 4;
        /// Bit 5: copy the source guard tag instead of computing it.
        const GUARD_PASSTHROUGH = 1 << 5;
        /// Bit 6: copy the source reference tag instead of computing it.
        const REF_TAG_PASSTHROUGH = 1 << 6;
        /// Bit 7: the reference tag stays fixed (otherwise it increments per block).
        const REF_TAG_FIXED = 1 << 7;
        const _ = !0;
    }
}

/// Protection information tuple: big-endian in the data stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Pi {
    /// Guard tag: the T10-DIF CRC16 of the block (bytes 0–1).
    pub guard: u16,
    /// Application tag (bytes 2–3).
    pub app_tag: u16,
    /// Reference tag (bytes 4–7), usually the low 32 bits of the block's LBA.
    pub ref_tag: u32,
}
impl Pi {
    /// The tuple as the 8 big-endian bytes of the data stream.
    pub fn to_bytes(&self) -> [u8; PI_SIZE] {
        let mut b = [0u8; PI_SIZE];
        b[0..2].copy_from_slice(&self.guard.to_be_bytes());
        b[2..4].copy_from_slice(&self.app_tag.to_be_bytes());
        b[4..8].copy_from_slice(&self.ref_tag.to_be_bytes());
        b
    }
    /// Decodes the 8 big-endian bytes of the data stream.
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

/// Reference and application tag of one block: what a source block must carry, or what a
/// destination block gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockTags {
    /// Reference tag.
    pub ref_tag: u32,
    /// Application tag.
    pub app_tag: u16,
}

/// Tags `blocks` blocks after `t`: the reference tag counts up unless fixed, the
/// application tag only when asked to (modulo 2^32 / 2^16).
const fn advance(t: BlockTags, blocks: u32, ref_fixed: bool, app_increment: bool) -> BlockTags {
    BlockTags {
        ref_tag: if ref_fixed {
            t.ref_tag
        } else {
            t.ref_tag.wrapping_add(blocks)
        },
        app_tag: if app_increment {
            t.app_tag.wrapping_add(blocks as u16)
        } else {
            t.app_tag
        },
    }
}

impl SrcDifFlags {
    /// The source tags expected `blocks` blocks after `t`.
    pub const fn advance(self, t: BlockTags, blocks: u32) -> BlockTags {
        advance(
            t,
            blocks,
            self.contains(Self::REF_TAG_FIXED),
            self.contains(Self::APP_TAG_INCREMENT),
        )
    }
}

impl DestDifFlags {
    /// The destination tags written `blocks` blocks after `t`.
    pub const fn advance(self, t: BlockTags, blocks: u32) -> BlockTags {
        advance(
            t,
            blocks,
            self.contains(Self::REF_TAG_FIXED),
            self.contains(Self::APP_TAG_INCREMENT),
        )
    }
}

/// The DIF status bits ([`crate::completion::dif_status`]) of one source block `data` with
/// its protection information `pi` (0 = the block passes). `app_tag_mask` bits are not
/// compared; the F-detect flags skip or fail a block by its tags before any check.
pub fn check_block(
    flags: DifFlags,
    src: SrcDifFlags,
    app_tag_mask: u16,
    expected: BlockTags,
    data: &[u8],
    pi: &[u8; PI_SIZE],
) -> u8 {
    use crate::completion::dif_status as ds;
    if src.contains(SrcDifFlags::ALL_F_DETECT | SrcDifFlags::ENABLE_ALL_F_ERROR)
        && pi.iter().all(|&b| b == 0xFF)
    {
        return ds::ALL_F_ERROR;
    }
    let got = Pi::from_bytes(pi);
    if (src.contains(SrcDifFlags::APP_REF_F_DETECT)
        && got.app_tag == 0xFFFF
        && got.ref_tag == 0xFFFF_FFFF)
        || (src.contains(SrcDifFlags::APP_F_DETECT) && got.app_tag == 0xFFFF)
    {
        return 0;
    }
    let mut bits = 0;
    if !src.contains(SrcDifFlags::GUARD_CHECK_DISABLE) && guard(flags, data) != got.guard {
        bits |= ds::GUARD_MISMATCH;
    }
    if !src.contains(SrcDifFlags::REF_TAG_CHECK_DISABLE) && got.ref_tag != expected.ref_tag {
        bits |= ds::REF_TAG_MISMATCH;
    }
    let m = app_tag_mask;
    if m != 0xFFFF && (got.app_tag & !m) != (expected.app_tag & !m) {
        bits |= ds::APP_TAG_MISMATCH;
    }
    bits
}

/// The protection information written after destination block `data`: computed from
/// `tags` (the application tag without its `app_tag_mask` bits) for DIF Insert
/// (`src_pi` None); for DIF Update (`src_pi` = the source block's) each field the
/// destination flags pass through is copied instead.
pub fn dest_pi(
    flags: DifFlags,
    dest: DestDifFlags,
    app_tag_mask: u16,
    tags: BlockTags,
    data: &[u8],
    src_pi: Option<Pi>,
) -> Pi {
    let pass = |f: DestDifFlags| src_pi.filter(|_| dest.contains(f));
    Pi {
        guard: pass(DestDifFlags::GUARD_PASSTHROUGH)
            .map_or_else(|| guard(flags, data), |p| p.guard),
        app_tag: pass(DestDifFlags::APP_TAG_PASSTHROUGH)
            .map_or(tags.app_tag & !app_tag_mask, |p| p.app_tag),
        ref_tag: pass(DestDifFlags::REF_TAG_PASSTHROUGH).map_or(tags.ref_tag, |p| p.ref_tag),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::dif_status as ds;

    #[test]
    fn tags_advance_per_side_flags() {
        let t = BlockTags {
            ref_tag: u32::MAX,
            app_tag: 0xFFFF,
        };
        let counted = BlockTags {
            ref_tag: 1,
            app_tag: 0xFFFF,
        };
        assert_eq!(SrcDifFlags::empty().advance(t, 2), counted);
        assert_eq!(DestDifFlags::empty().advance(t, 2), counted);
        let both = BlockTags {
            ref_tag: u32::MAX,
            app_tag: 2,
        };
        assert_eq!(
            (SrcDifFlags::REF_TAG_FIXED | SrcDifFlags::APP_TAG_INCREMENT).advance(t, 3),
            both
        );
        assert_eq!(
            (DestDifFlags::REF_TAG_FIXED | DestDifFlags::APP_TAG_INCREMENT).advance(t, 3),
            both
        );
    }

    #[test]
    fn block_check_rules() {
        let data = b"123456789";
        let good = Pi {
            guard: 0xD0DB,
            app_tag: 0x1234,
            ref_tag: 7,
        };
        let want = BlockTags {
            ref_tag: 7,
            app_tag: 0x1234,
        };
        let f = DifFlags::empty();
        let none = SrcDifFlags::empty();
        assert_eq!(check_block(f, none, 0, want, data, &good.to_bytes()), 0);
        let bad = Pi {
            guard: 1,
            app_tag: 0x1235,
            ref_tag: 8,
        };
        assert_eq!(
            check_block(f, none, 0, want, data, &bad.to_bytes()),
            ds::GUARD_MISMATCH | ds::APP_TAG_MISMATCH | ds::REF_TAG_MISMATCH
        );
        // Masked application-tag bits and disabled checks are not compared.
        let off = SrcDifFlags::GUARD_CHECK_DISABLE | SrcDifFlags::REF_TAG_CHECK_DISABLE;
        assert_eq!(check_block(f, off, 0x000F, want, data, &bad.to_bytes()), 0);
        assert_eq!(check_block(f, off, 0xFFFF, want, data, &bad.to_bytes()), 0);
        // All-F: an error with both all-F flags, otherwise skipped by APP_F_DETECT.
        let all_f = [0xFF; PI_SIZE];
        let detect = SrcDifFlags::ALL_F_DETECT | SrcDifFlags::ENABLE_ALL_F_ERROR;
        assert_eq!(
            check_block(f, detect, 0, want, data, &all_f),
            ds::ALL_F_ERROR
        );
        assert_eq!(
            check_block(f, SrcDifFlags::APP_F_DETECT, 0, want, data, &all_f),
            0
        );
        assert_eq!(
            check_block(f, SrcDifFlags::APP_REF_F_DETECT, 0, want, data, &all_f),
            0
        );
        assert_ne!(check_block(f, none, 0, want, data, &all_f), 0);
    }

    #[test]
    fn destination_pi_computed_or_passed_through() {
        let data = b"123456789";
        let tags = BlockTags {
            ref_tag: 5,
            app_tag: 0xABCD,
        };
        let computed = Pi {
            guard: 0xD0DB,
            app_tag: 0xAB00,
            ref_tag: 5,
        };
        let f = DifFlags::empty();
        let all = DestDifFlags::GUARD_PASSTHROUGH
            | DestDifFlags::APP_TAG_PASSTHROUGH
            | DestDifFlags::REF_TAG_PASSTHROUGH;
        assert_eq!(dest_pi(f, all, 0x00FF, tags, data, None), computed);
        let src = Pi {
            guard: 1,
            app_tag: 2,
            ref_tag: 3,
        };
        assert_eq!(dest_pi(f, all, 0x00FF, tags, data, Some(src)), src);
        assert_eq!(
            dest_pi(
                f,
                DestDifFlags::REF_TAG_PASSTHROUGH,
                0x00FF,
                tags,
                data,
                Some(src)
            ),
            Pi {
                ref_tag: 3,
                ..computed
            }
        );
    }

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
