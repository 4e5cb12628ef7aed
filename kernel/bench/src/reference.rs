//! CPU reference implementations of every DSA 1.0 operation (dsa.md §8), for checking
//! device results in tests and in the workload runner.

use alloc::vec::Vec;
use dsa::ops::{DeltaResult, DifDest, DifFormat, DifSource, DifTags};
use dsa_spec::crc::{CrcMode, crc32c_dsa};
use dsa_spec::delta::{self, ENTRY_SIZE, WORD};
use dsa_spec::dif::{self, BlockTags, PI_SIZE, Pi};

/// Memory Move between distinct buffers.
pub fn memmove(src: &[u8], dst: &mut [u8]) {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
}

/// Memory Move inside one buffer (overlap allowed).
pub fn memmove_within(buf: &mut [u8], src: usize, dst: usize, len: usize) {
    buf.copy_within(src..src + len, dst);
}

/// Fill: byte k gets pattern byte k mod 8 (little-endian).
pub fn fill(dst: &mut [u8], pattern: u64) {
    let p = pattern.to_le_bytes();
    for (k, b) in dst.iter_mut().enumerate() {
        *b = p[k % 8];
    }
}

/// Compare: offset of the first differing byte.
pub fn compare(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

/// Compare Pattern: exact offset of the first mismatch (the device may report it rounded
/// down to a multiple of 8).
pub fn compare_pattern(src: &[u8], pattern: u64) -> Option<usize> {
    let p = pattern.to_le_bytes();
    src.iter().enumerate().position(|(k, &b)| b != p[k % 8])
}

/// Result of [`create_delta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaRef {
    pub record: Vec<u8>,
    pub result: DeltaResult,
    /// Bytes compared (the whole length unless the record overflowed).
    pub bytes_compared: usize,
}

/// Create Delta: one [`delta::entry`] per differing 8-byte word of `new`.
pub fn create_delta(old: &[u8], new: &[u8], max_record: usize) -> DeltaRef {
    let mut record = Vec::new();
    let words = old.len().min(new.len()) / WORD;
    for w in 0..words {
        let (x, y) = (&old[w * WORD..][..WORD], &new[w * WORD..][..WORD]);
        if x == y {
            continue;
        }
        if record.len() + ENTRY_SIZE > max_record {
            return DeltaRef {
                record,
                result: DeltaResult::Overflow,
                bytes_compared: w * WORD,
            };
        }
        let mut y8 = [0u8; WORD];
        y8.copy_from_slice(y);
        record.extend_from_slice(&delta::entry(w as u16, &y8));
    }
    DeltaRef {
        result: if record.is_empty() {
            DeltaResult::Identical
        } else {
            DeltaResult::Written
        },
        record,
        bytes_compared: words * WORD,
    }
}

/// Apply Delta; on error returns (status 0x07/0x08, record offset of the bad entry).
pub fn apply_delta(record: &[u8], dst: &mut [u8]) -> Result<(), (u8, usize)> {
    let mut last: Option<u16> = None;
    for (e, ent) in record.chunks_exact(ENTRY_SIZE).enumerate() {
        let mut raw = [0u8; ENTRY_SIZE];
        raw.copy_from_slice(ent);
        let (o, new) = delta::decode(&raw);
        if last.is_some_and(|l| o <= l) {
            return Err((dsa_spec::status::DELTA_OFFSET_ORDER, e * ENTRY_SIZE));
        }
        let at = o as usize * WORD;
        if at + WORD > dst.len() {
            return Err((dsa_spec::status::DELTA_OFFSET_RANGE, e * ENTRY_SIZE));
        }
        dst[at..at + WORD].copy_from_slice(&new);
        last = Some(o);
    }
    Ok(())
}

/// Dualcast.
pub fn dualcast(src: &[u8], dst1: &mut [u8], dst2: &mut [u8]) {
    memmove(src, dst1);
    memmove(src, dst2);
}

/// CRC Generation / Copy with CRC value.
pub fn crc32c(seed: u32, data: &[u8], mode: CrcMode) -> u32 {
    crc32c_dsa(seed, data, mode)
}

/// Reference result of a DIF operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DifRef {
    /// Destination bytes produced (empty for Check).
    pub out: Vec<u8>,
    /// Tags for the next block (source side, destination side).
    pub source: DifTags,
    pub dest: DifTags,
    /// First failing block: (status bits, source offset).
    pub error: Option<(u8, usize)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DifOp {
    Check,
    Insert,
    Strip,
    Update,
}

fn dif_run(op: DifOp, src: &[u8], f: &DifFormat, s: &DifSource, d: &DifDest) -> DifRef {
    let bs = f.block_bytes() as usize;
    let src_step = if op == DifOp::Insert {
        bs
    } else {
        bs + PI_SIZE
    };
    let mut src_tags = BlockTags {
        ref_tag: s.ref_tag,
        app_tag: s.app_tag,
    };
    let mut dst_tags = BlockTags {
        ref_tag: d.ref_tag,
        app_tag: d.app_tag,
    };
    let mut out = Vec::new();
    let mut error = None;
    for (b, blk) in src.chunks_exact(src_step).enumerate() {
        let data = &blk[..bs];
        let mut raw = [0u8; PI_SIZE];
        if op != DifOp::Insert {
            raw.copy_from_slice(&blk[bs..bs + PI_SIZE]);
            let bits = dif::check_block(f.flags(), s.flags, s.app_tag_mask, src_tags, data, &raw);
            if bits != 0 {
                error = Some((bits, b * src_step));
                break;
            }
        }
        if op != DifOp::Check {
            out.extend_from_slice(data);
            if op != DifOp::Strip {
                let src_pi = (op == DifOp::Update).then(|| Pi::from_bytes(&raw));
                let pi = dif::dest_pi(f.flags(), d.flags, d.app_tag_mask, dst_tags, data, src_pi);
                out.extend_from_slice(&pi.to_bytes());
            }
        }
        src_tags = s.flags.advance(src_tags, 1);
        dst_tags = d.flags.advance(dst_tags, 1);
    }
    DifRef {
        out,
        source: DifTags {
            ref_tag: src_tags.ref_tag,
            app_tag_mask: s.app_tag_mask,
            app_tag: src_tags.app_tag,
        },
        dest: DifTags {
            ref_tag: dst_tags.ref_tag,
            app_tag_mask: d.app_tag_mask,
            app_tag: dst_tags.app_tag,
        },
        error,
    }
}

pub fn dif_check(src: &[u8], f: &DifFormat, s: &DifSource) -> DifRef {
    dif_run(DifOp::Check, src, f, s, &DifDest::default())
}
pub fn dif_insert(src: &[u8], f: &DifFormat, d: &DifDest) -> DifRef {
    dif_run(DifOp::Insert, src, f, &DifSource::default(), d)
}
pub fn dif_strip(src: &[u8], f: &DifFormat, s: &DifSource) -> DifRef {
    dif_run(DifOp::Strip, src, f, s, &DifDest::default())
}
pub fn dif_update(src: &[u8], f: &DifFormat, s: &DifSource, d: &DifDest) -> DifRef {
    dif_run(DifOp::Update, src, f, s, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsa_spec::completion::dif_status as ds;
    use dsa_spec::dif::DifBlockSize;

    #[test]
    fn delta_roundtrip_and_overflow() {
        let old: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
        let mut new = old.clone();
        new[8] ^= 1;
        new[200] ^= 0x80;
        let d = create_delta(&old, &new, 80);
        assert_eq!(d.result, DeltaResult::Written);
        assert_eq!(d.record.len(), 20);
        assert_eq!(&d.record[0..2], &1u16.to_le_bytes());
        assert_eq!(&d.record[10..12], &25u16.to_le_bytes());
        let mut t = old.clone();
        apply_delta(&d.record, &mut t).unwrap();
        assert_eq!(t, new);
        let o = create_delta(&old, &new, 10);
        assert_eq!(o.result, DeltaResult::Overflow);
        assert_eq!(o.bytes_compared, 200);
        assert_eq!(create_delta(&old, &old, 80).result, DeltaResult::Identical);
        let mut bad = d.record.clone();
        bad.extend_from_slice(&d.record[0..10]);
        assert_eq!(
            apply_delta(&bad, &mut t),
            Err((dsa_spec::status::DELTA_OFFSET_ORDER, 20))
        );
    }

    #[test]
    fn dif_insert_then_check_strip_update() {
        let f = DifFormat::new(DifBlockSize::B512);
        let data: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
        let dst = DifDest {
            ref_tag: 100,
            app_tag: 0x55,
            ..Default::default()
        };
        let ins = dif_insert(&data, &f, &dst);
        assert_eq!(ins.out.len(), 1040);
        assert_eq!(ins.dest.ref_tag, 102);
        let src = DifSource {
            ref_tag: 100,
            app_tag: 0x55,
            ..Default::default()
        };
        let chk = dif_check(&ins.out, &f, &src);
        assert_eq!(chk.error, None);
        assert_eq!(dif_strip(&ins.out, &f, &src).out, data);
        let mut broken = ins.out.clone();
        broken[520 + 3] ^= 1;
        let e = dif_check(&broken, &f, &src);
        assert_eq!(e.error, Some((ds::GUARD_MISMATCH, 520)));
        let up = dif_update(
            &ins.out,
            &f,
            &src,
            &DifDest {
                ref_tag: 7,
                ..Default::default()
            },
        );
        assert_eq!(up.error, None);
        let src2 = DifSource {
            ref_tag: 7,
            ..Default::default()
        };
        assert_eq!(dif_check(&up.out, &f, &src2).error, None);
    }
}
