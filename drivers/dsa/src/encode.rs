//! Descriptors written directly as their eight little-endian 64-bit words (Intel DSA
//! Architecture Specification rev 2.0, §8.3.1 "Descriptor" layout: bytes 0–3 PASID and
//! privilege, 4–6 flags, 7 opcode, 8–15 completion record address, 16–23 / 24–31 operands,
//! 32–35 transfer size, 36–37 completion interrupt handle, 40–63 operation specific), and the
//! inverse: the [`Work`] a descriptor image encodes, for decoding and resuming without
//! keeping a copy of every submitted operation.

use dsa_spec::crc::CrcMode;
use dsa_spec::dif::{DestDifFlags, DifBlockSize, DifFlags, SrcDifFlags};
use dsa_spec::{DescFlags, Descriptor, Opcode};

use crate::ops::{CrcSeed, DifDest, DifFormat, DifSource, Op, Work};

/// The fields a submitter fixes for all its descriptors: word 0 without the opcode and the
/// operation's own flags (PASID, privilege, CRAV | RCR, RCI), and word 4's interrupt handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Template {
    /// Qword 0 of the descriptor without opcode and per-operation flags: PASID (bits 19:0),
    /// privilege (bit 31) and the flags CRAV, RCR and RCI (bits 55:32; Intel DSA
    /// Architecture Specification rev 3.0, §8.1, §8.1.3).
    pub w0: u64,
    /// Qword 4's fixed part: the completion interrupt handle (bytes 36–37, so bits 47:32),
    /// or 0 without one (§8.1).
    pub w4: u64,
}

impl Template {
    /// `pasid`/`privileged` only matter for shared WQs (zero otherwise); `handle` sets RCI.
    pub const fn new(pasid: u32, privileged: bool, handle: Option<u16>) -> Template {
        let mut flags = DescFlags::CRAV.bits() | DescFlags::RCR.bits();
        let mut w4 = 0;
        if let Some(h) = handle {
            flags |= DescFlags::RCI.bits();
            w4 = (h as u64) << 32;
        }
        let w0 = (pasid as u64 & 0xF_FFFF) | ((privileged as u64) << 31) | ((flags as u64) << 32);
        Template { w0, w4 }
    }
}

/// Flags a [`Work`] adds (bits 0–15 of the flags field).
#[inline(always)]
pub fn work_flags(w: &Work) -> u64 {
    (u64::from(w.fence) * u64::from(DescFlags::FENCE.bits()))
        | (u64::from(w.block_on_fault) * u64::from(DescFlags::BLOCK_ON_FAULT.bits()))
        | (u64::from(w.cache_write) * u64::from(DescFlags::CACHE_CONTROL.bits()))
        | (u64::from(w.strict_ordering) * u64::from(DescFlags::STRICT_ORDERING.bits()))
        | (u64::from(w.dest_readback) * u64::from(DescFlags::DEST_READBACK.bits()))
}

/// Writes `w`'s descriptor with completion record `cr` into `out`.
#[inline(always)]
pub fn encode(w: &Work, t: &Template, cr: u64, out: &mut [u64; 8]) {
    encode_flags(w, work_flags(w), t, cr, out);
}

/// [`encode`] with `w`'s [`work_flags`] already computed.
#[inline(always)]
pub fn encode_flags(w: &Work, flags: u64, t: &Template, cr: u64, out: &mut [u64; 8]) {
    let head = |op: Opcode| t.w0 | (flags << 32) | ((op as u64) << 56);
    match w.op {
        Op::MemMove { src, dst, len } => {
            *out = [
                head(Opcode::MemMove),
                cr,
                src,
                dst,
                u64::from(len) | t.w4,
                0,
                0,
                0,
            ];
        }
        Op::Fill { dst, len, pattern } => {
            *out = [
                head(Opcode::Fill),
                cr,
                pattern,
                dst,
                u64::from(len) | t.w4,
                0,
                0,
                0,
            ];
        }
        Op::Noop => *out = [head(Opcode::Noop), cr, 0, 0, t.w4, 0, 0, 0],
        _ => encode_general(w, t, cr, out),
    }
}

/// Every other operation: through the typed descriptor.
#[inline(never)]
fn encode_general(w: &Work, t: &Template, cr: u64, out: &mut [u64; 8]) {
    let mut d = w.descriptor();
    d.completion_addr = cr;
    let b = d.to_bytes();
    for (i, o) in out.iter_mut().enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[8 * i..8 * i + 8]);
        *o = u64::from_le_bytes(a);
    }
    out[0] |= t.w0;
    out[4] |= t.w4;
}

/// The operation a descriptor encodes (None for opcodes [`Work`] does not model).
pub fn work_from_descriptor(d: &Descriptor) -> Option<Work> {
    let f = d.flags;
    let crc = || {
        (
            if f.contains(DescFlags::CRC_SEED_FROM_MEM) {
                CrcSeed::Memory(d.crc_seed_addr())
            } else {
                CrcSeed::Value(d.crc_seed())
            },
            CrcMode {
                bypass_inv_refl: f.contains(DescFlags::CRC_BYPASS_INV_REFL),
                bypass_data_refl: f.contains(DescFlags::CRC_BYPASS_DATA_REFL),
            },
        )
    };
    let format = || {
        let fl = DifFlags::from_bits_retain(d.dif_flags());
        DifFormat {
            block: match fl.bits() & 3 {
                0 => DifBlockSize::B512,
                1 => DifBlockSize::B520,
                2 => DifBlockSize::B4096,
                _ => DifBlockSize::B4104,
            },
            invert_seed: fl.contains(DifFlags::INVERT_CRC_SEED),
            invert_result: fl.contains(DifFlags::INVERT_CRC_RESULT),
        }
    };
    let source = || DifSource {
        flags: SrcDifFlags::from_bits_retain(d.src_dif_flags()),
        ref_tag: d.src_ref_tag_seed(),
        app_tag_mask: d.src_app_tag_mask(),
        app_tag: d.src_app_tag_seed(),
    };
    let dest = || DifDest {
        flags: DestDifFlags::from_bits_retain(d.dest_dif_flags()),
        ref_tag: d.dest_ref_tag_seed(),
        app_tag_mask: d.dest_app_tag_mask(),
        app_tag: d.dest_app_tag_seed(),
    };
    let check = f.contains(DescFlags::CHECK_RESULT);
    let (src, dst, len) = (d.addr1, d.addr2, d.size);
    let op = match Opcode::from_u8(d.opcode)? {
        Opcode::Noop => Op::Noop,
        Opcode::Drain => Op::Drain,
        Opcode::MemMove => Op::MemMove { src, dst, len },
        Opcode::Fill => Op::Fill {
            dst,
            len,
            pattern: d.addr1,
        },
        Opcode::Compare => Op::Compare {
            src1: src,
            src2: dst,
            len,
            expect_equal: check.then_some(d.expected_result() & 1 == 0),
        },
        Opcode::ComparePattern => Op::ComparePattern {
            src,
            len,
            pattern: d.addr2,
            expect_equal: check.then_some(d.expected_result() & 1 == 0),
        },
        Opcode::CreateDelta => Op::CreateDelta {
            src1: src,
            src2: dst,
            len,
            record: d.delta_record_addr(),
            record_max: d.max_delta_size(),
            expect_mask: check.then_some(d.expected_result_mask()),
        },
        Opcode::ApplyDelta => Op::ApplyDelta {
            record: d.addr1,
            record_len: d.delta_record_size(),
            dst,
            len,
        },
        Opcode::Dualcast => Op::Dualcast {
            src,
            dst1: dst,
            dst2: d.dst2(),
            len,
        },
        Opcode::CrcGen => {
            let (seed, mode) = crc();
            Op::CrcGen {
                src,
                len,
                seed,
                mode,
            }
        }
        Opcode::CopyCrc => {
            let (seed, mode) = crc();
            Op::CopyCrc {
                src,
                dst,
                len,
                seed,
                mode,
            }
        }
        Opcode::DifCheck => Op::DifCheck {
            src,
            len,
            format: format(),
            source: source(),
        },
        Opcode::DifInsert => Op::DifInsert {
            src,
            dst,
            len,
            format: format(),
            dest: dest(),
        },
        Opcode::DifStrip => Op::DifStrip {
            src,
            dst,
            len,
            format: format(),
            source: source(),
        },
        Opcode::DifUpdate => Op::DifUpdate {
            src,
            dst,
            len,
            format: format(),
            source: source(),
            dest: dest(),
        },
        Opcode::CacheFlush => Op::CacheFlush {
            addr: d.addr2,
            len,
            keep: f.contains(DescFlags::CACHE_CONTROL),
        },
        Opcode::Batch | Opcode::TranslationFetch | Opcode::DixGenerate => return None,
    };
    let cache_flush = matches!(op, Op::CacheFlush { .. });
    Some(Work {
        op,
        fence: f.contains(DescFlags::FENCE),
        cache_write: !cache_flush && f.contains(DescFlags::CACHE_CONTROL),
        dest_readback: f.contains(DescFlags::DEST_READBACK),
        strict_ordering: f.contains(DescFlags::STRICT_ORDERING),
        block_on_fault: f.contains(DescFlags::BLOCK_ON_FAULT),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsa_spec::desc::DESC_SIZE;
    use dsa_spec::dif::DifBlockSize;

    fn samples() -> alloc::vec::Vec<Work> {
        let fmt = DifFormat {
            block: DifBlockSize::B4104,
            invert_seed: true,
            invert_result: false,
        };
        let src = DifSource {
            flags: SrcDifFlags::from_bits_retain(0x5),
            ref_tag: 0x1234_5678,
            app_tag_mask: 0xF0F0,
            app_tag: 0xBEEF,
        };
        let dst = DifDest {
            flags: DestDifFlags::APP_TAG_INCREMENT,
            ref_tag: 7,
            app_tag_mask: 1,
            app_tag: 2,
        };
        let mut v = alloc::vec![
            Work::noop(),
            Work::drain(),
            Work::memmove(0x1000, 0x2000, 4096),
            Work::memmove(0x1000, 0x9000, 64)
                .with_fence()
                .with_cache_write(),
            Work::fill(0x3000, 100, 0xDEAD_BEEF_0123_4567).with_dest_readback(),
            Work::compare(1, 2, 3),
            Work::compare_pattern(4, 5, 6).with_strict_ordering(),
            Work::create_delta(0x10, 0x20, 0x40, 0x80, 0x100),
            Work::apply_delta(0x80, 20, 0x10, 0x40).with_block_on_fault(),
            Work::dualcast(0x1000, 0x2000, 0x3000, 64),
            Work::crc(0x1000, 64, 0xFFFF_FFFF),
            Work::copy_crc(0x1000, 0x2000, 64, 7),
            Work::dif_check(0x1000, 4104, fmt, src),
            Work::dif_insert(0x1000, 0x9000, 4096, fmt, dst),
            Work::dif_strip(0x1000, 0x9000, 4104, fmt, src),
            Work::dif_update(0x1000, 0x9000, 4104, fmt, src, dst),
            Work::cache_flush(0x1000, 64, true),
            Work::cache_flush(0x1000, 64, false),
        ];
        if let Op::Compare { expect_equal, .. } = &mut v[5].op {
            *expect_equal = Some(false);
        }
        if let Op::CreateDelta { expect_mask, .. } = &mut v[7].op {
            *expect_mask = Some(2);
        }
        if let Op::CrcGen { seed, mode, .. } = &mut v[10].op {
            *seed = CrcSeed::Memory(0x44);
            mode.bypass_data_refl = true;
        }
        v
    }

    fn bytes(w: &[u64; 8]) -> [u8; DESC_SIZE] {
        let mut b = [0u8; DESC_SIZE];
        for (i, x) in w.iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&x.to_le_bytes());
        }
        b
    }

    #[test]
    fn direct_encoding_matches_the_typed_descriptor() {
        for t in [
            Template::new(0, false, None),
            Template::new(0x12345, true, Some(0x4321)),
            Template::new(3, false, None),
        ] {
            for w in samples() {
                let mut out = [0u64; 8];
                encode(&w, &t, 0xABC0, &mut out);
                let mut d = w.descriptor();
                d.completion_addr = 0xABC0;
                d.pasid = (t.w0 & 0xF_FFFF) as u32;
                d.privileged = t.w0 & (1 << 31) != 0;
                if t.w4 != 0 {
                    d.flags |= DescFlags::RCI;
                    d.int_handle = (t.w4 >> 32) as u16;
                }
                assert_eq!(bytes(&out), d.to_bytes(), "{w:?} with {t:?}");
            }
        }
    }

    #[test]
    fn descriptors_decode_to_their_work() {
        for w in samples() {
            let d = w.descriptor();
            assert_eq!(work_from_descriptor(&d), Some(w), "{d:?}");
        }
        let d = Descriptor::new(Opcode::Batch);
        assert_eq!(work_from_descriptor(&d), None);
    }
}
