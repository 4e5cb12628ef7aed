//! CPU reference implementations of every DSA 1.0 operation (Intel DSA Architecture
//! Specification, chapter 8 "Operation types"), for checking device results in tests and in
//! the workload runner.
//!
//! A check must not share code with what it checks: this module uses `dsa_spec` only for
//! types and layouts (flag bits, the PI tuple size, delta-record entries), never the CRC and
//! DIF logic the device model runs (`dsa_spec::crc`, `dsa_spec::dif`). CRC-32C and the
//! T10-DIF CRC come from the `crc` crate's catalogue algorithms; the DSA-specific seed,
//! inversion and tag rules are written here and tested against worked examples and published
//! check values, not against the model.

use alloc::vec::Vec;
use crc::{Algorithm, CRC_16_T10_DIF, CRC_32_ISCSI, Crc, Table};
use dsa::ops::{DeltaResult, DifDest, DifFormat, DifSource, DifTags};
use dsa_spec::crc::CrcMode;
use dsa_spec::delta::{self, ENTRY_SIZE, WORD};
use dsa_spec::dif::{DestDifFlags, DifFlags, PI_SIZE, SrcDifFlags};

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
    /// The delta record: 10-byte entries (offset in 8-byte units, then the new word), at
    /// most `max_record` bytes.
    pub record: Vec<u8>,
    /// Identical, written, or overflowed, as the completion record reports it.
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

// ---- CRC-32C (CRC Generation, Copy with CRC) ----------------------------------------------
//
// The four variants descriptor flags 17 ("bypass CRC inversion and reflection") and 18
// ("bypass data reflection") select, in the parameter model of the CRC catalogue (width, poly,
// init, refin, refout, xorout), poly 0x1EDC6F41 (CRC-32C, Castagnoli) throughout:
//
// * flag 18 clear: data bytes enter least significant bit first (refin); set: most first.
// * flag 17 clear: the seed is a CRC-32C result to continue from, as the default mode reports
//   it (complemented and reflected): the register starts at its complement and the result is
//   reflected and complemented (refout, xorout = !0). With seed 0 this is the catalogue's
//   CRC-32/ISCSI (= CRC-32C). Flag 17 set: the seed is the register itself, the result the
//   plain register (no reflection, no complement).
//
// `crc` takes `init` unreflected and reflects it itself when refin is set.

/// Flags 17 and 18 both set: MSB-first, init = seed, no final complement.
const CRC32C_BYPASS_ALL: Algorithm<u32> = Algorithm {
    width: 32,
    poly: 0x1EDC_6F41,
    init: 0,
    refin: false,
    refout: false,
    xorout: 0,
    check: 0xC052_A8C8,
    residue: 0,
};
/// Flag 18 only: data MSB-first, result reflected and complemented.
const CRC32C_BYPASS_DATA_REFLECTION: Algorithm<u32> = Algorithm {
    width: 32,
    poly: 0x1EDC_6F41,
    init: 0xFFFF_FFFF,
    refin: false,
    refout: true,
    xorout: 0xFFFF_FFFF,
    check: 0xA8F0_22A0,
    // Not defined for mixed reflection; the crate does not use it.
    residue: 0,
};
/// Flag 17 only: data LSB-first, the result the bit-reversed register.
const CRC32C_BYPASS_INVERSION: Algorithm<u32> = Algorithm {
    width: 32,
    poly: 0x1EDC_6F41,
    init: 0,
    refin: true,
    refout: false,
    xorout: 0,
    check: 0x045F_C71A,
    // Not defined for mixed reflection; the crate does not use it.
    residue: 0,
};

static CRC32C: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);
static CRC32C_17_18: Crc<u32> = Crc::<u32>::new(&CRC32C_BYPASS_ALL);
static CRC32C_18: Crc<u32> = Crc::<u32>::new(&CRC32C_BYPASS_DATA_REFLECTION);
static CRC32C_17: Crc<u32> = Crc::<u32>::new(&CRC32C_BYPASS_INVERSION);

/// CRC Generation / Copy with CRC value: the CRC-32C of `data` from `seed` in `mode`.
pub fn crc32c(seed: u32, data: &[u8], mode: CrcMode) -> u32 {
    // Catalogue init (unreflected) for the register the seed stands for.
    let init = if mode.bypass_inv_refl {
        seed
    } else {
        (!seed).reverse_bits()
    };
    match (mode.bypass_inv_refl, mode.bypass_data_refl) {
        (false, false) => {
            let mut d = CRC32C.digest_with_initial(init);
            d.update(data);
            d.finalize()
        }
        (true, true) => {
            let mut d = CRC32C_17_18.digest_with_initial(init);
            d.update(data);
            d.finalize()
        }
        (false, true) => {
            let mut d = CRC32C_18.digest_with_initial(init);
            d.update(data);
            d.finalize()
        }
        (true, false) => {
            let mut d = CRC32C_17.digest_with_initial(init);
            d.update(data);
            d.finalize()
        }
    }
}

// ---- T10-DIF -------------------------------------------------------------------------------

static T10DIF: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_T10_DIF);

/// The guard of one data block: CRC-16/T10-DIF (poly 0x8BB7, MSB-first, init 0, no final
/// complement), started from 0xFFFF with DIF flag 2 (invert CRC seed) and complemented with
/// DIF flag 3 (invert CRC result).
pub fn dif_guard(flags: DifFlags, block: &[u8]) -> u16 {
    let seed = if flags.contains(DifFlags::INVERT_CRC_SEED) {
        0xFFFF
    } else {
        0
    };
    let mut d = T10DIF.digest_with_initial(seed);
    d.update(block);
    let crc = d.finalize();
    if flags.contains(DifFlags::INVERT_CRC_RESULT) {
        !crc
    } else {
        crc
    }
}

/// The 8-byte protection information after each block: guard, application tag, reference
/// tag, big-endian.
fn pi_bytes(guard: u16, app_tag: u16, ref_tag: u32) -> [u8; PI_SIZE] {
    let mut b = [0u8; PI_SIZE];
    b[0..2].copy_from_slice(&guard.to_be_bytes());
    b[2..4].copy_from_slice(&app_tag.to_be_bytes());
    b[4..8].copy_from_slice(&ref_tag.to_be_bytes());
    b
}

fn pi_fields(b: &[u8; PI_SIZE]) -> (u16, u16, u32) {
    (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
        u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
    )
}

/// The tags of the block after one with `(ref_tag, app_tag)`: the reference tag counts up by
/// one unless its type is fixed, the application tag only when its type is incrementing.
fn next_tags(tags: (u32, u16), ref_fixed: bool, app_incrementing: bool) -> (u32, u16) {
    (
        if ref_fixed {
            tags.0
        } else {
            tags.0.wrapping_add(1)
        },
        if app_incrementing {
            tags.1.wrapping_add(1)
        } else {
            tags.1
        },
    )
}

/// The DIF status bits of one source block with protection information `pi`, expected tags
/// `(ref_tag, app_tag)`: all-F error (source flags 1 and 0, tuple all 0xFF); a block whose
/// application tag is 0xFFFF (flag 2), or whose application and reference tags are all ones
/// (flag 3), is not checked; else guard (unless flag 5), reference tag (unless flag 6) and the
/// application tag bits not set in `app_tag_mask`.
fn dif_block_status(
    f: DifFlags,
    src: SrcDifFlags,
    app_tag_mask: u16,
    expected: (u32, u16),
    data: &[u8],
    pi: &[u8; PI_SIZE],
) -> u8 {
    use dsa_spec::completion::dif_status as ds;
    if src.contains(SrcDifFlags::ALL_F_DETECT)
        && src.contains(SrcDifFlags::ENABLE_ALL_F_ERROR)
        && *pi == [0xFF; PI_SIZE]
    {
        return ds::ALL_F_ERROR;
    }
    let (guard, app, reference) = pi_fields(pi);
    if src.contains(SrcDifFlags::APP_F_DETECT) && app == 0xFFFF {
        return 0;
    }
    if src.contains(SrcDifFlags::APP_REF_F_DETECT) && app == 0xFFFF && reference == u32::MAX {
        return 0;
    }
    let mut status = 0;
    if !src.contains(SrcDifFlags::GUARD_CHECK_DISABLE) && dif_guard(f, data) != guard {
        status |= ds::GUARD_MISMATCH;
    }
    if !src.contains(SrcDifFlags::REF_TAG_CHECK_DISABLE) && reference != expected.0 {
        status |= ds::REF_TAG_MISMATCH;
    }
    if (app ^ expected.1) & !app_tag_mask != 0 {
        status |= ds::APP_TAG_MISMATCH;
    }
    status
}

/// Reference result of a DIF operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DifRef {
    /// Destination bytes produced (empty for Check).
    pub out: Vec<u8>,
    /// Source-side tags of the block after the last one processed (what the completion
    /// record reports at bytes 16–23).
    pub source: DifTags,
    /// Destination-side tags of the next block likewise (completion record bytes 24–31).
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
    let mut src_tags = (s.ref_tag, s.app_tag);
    let mut dst_tags = (d.ref_tag, d.app_tag);
    let mut out = Vec::new();
    let mut error = None;
    for (b, blk) in src.chunks_exact(src_step).enumerate() {
        let data = &blk[..bs];
        let mut raw = [0u8; PI_SIZE];
        if op != DifOp::Insert {
            raw.copy_from_slice(&blk[bs..bs + PI_SIZE]);
            let bits = dif_block_status(f.flags(), s.flags, s.app_tag_mask, src_tags, data, &raw);
            if bits != 0 {
                error = Some((bits, b * src_step));
                break;
            }
        }
        if op != DifOp::Check {
            out.extend_from_slice(data);
            if op != DifOp::Strip {
                // Insert: guard computed, tags from the destination seeds (application-tag
                // bits set in the mask written as 0). Update: each field the destination flags
                // pass through is copied from the source tuple instead.
                let (src_guard, src_app, src_ref) = pi_fields(&raw);
                let pass = |flag| op == DifOp::Update && d.flags.contains(flag);
                let guard = if pass(DestDifFlags::GUARD_PASSTHROUGH) {
                    src_guard
                } else {
                    dif_guard(f.flags(), data)
                };
                let app = if pass(DestDifFlags::APP_TAG_PASSTHROUGH) {
                    src_app
                } else {
                    dst_tags.1 & !d.app_tag_mask
                };
                let reference = if pass(DestDifFlags::REF_TAG_PASSTHROUGH) {
                    src_ref
                } else {
                    dst_tags.0
                };
                out.extend_from_slice(&pi_bytes(guard, app, reference));
            }
        }
        src_tags = next_tags(
            src_tags,
            s.flags.contains(SrcDifFlags::REF_TAG_FIXED),
            s.flags.contains(SrcDifFlags::APP_TAG_INCREMENT),
        );
        dst_tags = next_tags(
            dst_tags,
            d.flags.contains(DestDifFlags::REF_TAG_FIXED),
            d.flags.contains(DestDifFlags::APP_TAG_INCREMENT),
        );
    }
    DifRef {
        out,
        source: DifTags {
            ref_tag: src_tags.0,
            app_tag_mask: s.app_tag_mask,
            app_tag: src_tags.1,
        },
        dest: DifTags {
            ref_tag: dst_tags.0,
            app_tag_mask: d.app_tag_mask,
            app_tag: dst_tags.1,
        },
        error,
    }
}

/// DIF Check (DSA spec §8.3.14) of the protected blocks `src`: no output bytes, the first
/// failing block if any, and the next-block source tags.
pub fn dif_check(src: &[u8], f: &DifFormat, s: &DifSource) -> DifRef {
    dif_run(DifOp::Check, src, f, s, &DifDest::default())
}
/// DIF Insert (§8.3.15): the plain blocks `src` with generated protection information
/// appended to each.
pub fn dif_insert(src: &[u8], f: &DifFormat, d: &DifDest) -> DifRef {
    dif_run(DifOp::Insert, src, f, &DifSource::default(), d)
}
/// DIF Strip (§8.3.16): checks the protected blocks `src` and returns their data alone.
pub fn dif_strip(src: &[u8], f: &DifFormat, s: &DifSource) -> DifRef {
    dif_run(DifOp::Strip, src, f, s, &DifDest::default())
}
/// DIF Update (§8.3.17): checks the protected blocks `src` and returns them with the
/// destination-side tags.
pub fn dif_update(src: &[u8], f: &DifFormat, s: &DifSource, d: &DifDest) -> DifRef {
    dif_run(DifOp::Update, src, f, s, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dsa_spec::completion::dif_status as ds;
    use dsa_spec::dif::DifBlockSize;

    const CHECK: &[u8] = b"123456789";

    fn mode(bypass_inv_refl: bool, bypass_data_refl: bool) -> CrcMode {
        CrcMode {
            bypass_inv_refl,
            bypass_data_refl,
        }
    }

    const MODES: [(bool, bool); 4] = [(false, false), (false, true), (true, false), (true, true)];

    #[test]
    fn crc32c_published_check_values() {
        let c = |data: &[u8]| crc32c(0, data, CrcMode::default());
        // The CRC catalogue's check value of CRC-32/ISCSI (CRC-32C).
        assert_eq!(c(CHECK), 0xE306_9283);
        // RFC 3720 (iSCSI), appendix B.4 "CRC Examples" (there listed as little-endian bytes).
        assert_eq!(c(&[0x00; 32]), 0x8A91_36AA);
        assert_eq!(c(&[0xFF; 32]), 0x62A8_AB43);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(c(&up), 0x46DD_794E);
        let down: Vec<u8> = (0..32).rev().collect();
        assert_eq!(c(&down), 0x113F_DB5C);
    }

    #[test]
    fn crc32c_seed_rules_worked_examples() {
        let seed: u32 = 0x1234_5678;
        for (a, b) in MODES {
            // No data: the result is the seed in every mode (nothing entered the register).
            assert_eq!(crc32c(seed, &[], mode(a, b)), seed, "{a} {b}");
        }
        // Entering the register's own bits clears it. Default mode: the register starts at
        // !seed and takes data least significant bit first, so the little-endian bytes of
        // !seed leave 0, reported complemented.
        assert_eq!(
            crc32c(seed, &(!seed).to_le_bytes(), mode(false, false)),
            0xFFFF_FFFF
        );
        // Flag 18 (data bytes reflected on entry): the same with each byte bit-reversed.
        let refl: Vec<u8> = (!seed)
            .to_le_bytes()
            .iter()
            .map(|b| b.reverse_bits())
            .collect();
        assert_eq!(crc32c(seed, &refl, mode(false, true)), 0xFFFF_FFFF);
        // Flag 17 (no inversion, no reflection of seed and result): the register is the seed
        // bit-reversed, data least significant bit first; the result is the plain register.
        assert_eq!(
            crc32c(seed, &seed.reverse_bits().to_le_bytes(), mode(true, false)),
            0
        );
        // Flags 17 and 18: a plain MSB-first CRC from the seed: its big-endian bytes clear it.
        assert_eq!(crc32c(seed, &seed.to_be_bytes(), mode(true, true)), 0);
        // Zeros keep a cleared register clear; any other byte does not.
        assert_eq!(
            crc32c(
                seed,
                &[(!seed).to_le_bytes(), [0; 4]].concat(),
                mode(false, false)
            ),
            0xFFFF_FFFF
        );
        assert_ne!(
            crc32c(
                seed,
                &[(!seed).to_le_bytes().as_slice(), &[1]].concat(),
                mode(false, false)
            ),
            0xFFFF_FFFF
        );
    }

    #[test]
    fn crc32c_resumes_from_a_partial_result_in_every_mode() {
        // A partial completion reports the CRC of the bytes done; resubmitting the rest with
        // that value as the seed gives the CRC of the whole.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + 3) as u8).collect();
        for (a, b) in MODES {
            for seed in [0, 0xFFFF_FFFF, 0x1357_9BDF] {
                let whole = crc32c(seed, &data, mode(a, b));
                for split in [0, 1, 7, 8, 9, 500, 999, 1000] {
                    let first = crc32c(seed, &data[..split], mode(a, b));
                    assert_eq!(crc32c(first, &data[split..], mode(a, b)), whole);
                }
            }
        }
    }

    #[test]
    fn crc32c_variants_match_their_check_values() {
        // Check values of the flag variants as Intel DML's reference computes them (seed 0).
        for (a, b, alg) in [
            (true, true, &CRC32C_BYPASS_ALL),
            (false, true, &CRC32C_BYPASS_DATA_REFLECTION),
            (true, false, &CRC32C_BYPASS_INVERSION),
        ] {
            assert_eq!(crc32c(0, CHECK, mode(a, b)), alg.check, "{a} {b}");
        }
        assert_eq!(crc32c(0xFFFF_FFFF, CHECK, mode(true, true)), 0xFABB_F0EA);
        assert_eq!(crc32c(0xFFFF_FFFF, CHECK, mode(false, false)), 0xA71C_05DF);
    }

    #[test]
    fn t10dif_guard_published_values_and_inversions() {
        let g = |data: &[u8]| dif_guard(DifFlags::empty(), data);
        // The CRC catalogue's check value of CRC-16/T10-DIF.
        assert_eq!(g(CHECK), 0xD0DB);
        // T10 SBC-3, "CRC test cases" for the protection information guard.
        assert_eq!(g(&[0x00; 32]), 0x0000);
        assert_eq!(g(&[0xFF; 32]), 0xA293);
        let up: Vec<u8> = (0..32).collect();
        assert_eq!(g(&up), 0x0224);
        let mut ff2 = [0u8; 32];
        ff2[..2].fill(0xFF);
        assert_eq!(g(&ff2), 0x21B8);
        let down: Vec<u8> = (0xE0..=0xFF).rev().collect();
        assert_eq!(g(&down), 0xA0B7);
        // DIF flag 2 (seed 0xFFFF): two 0xFF bytes clear the MSB-first register, zeros keep it.
        let seed = DifFlags::INVERT_CRC_SEED;
        assert_eq!(dif_guard(seed, &ff2), 0);
        assert_ne!(dif_guard(seed, &[0; 32]), 0);
        // DIF flag 3 complements the result.
        let both = DifFlags::INVERT_CRC_SEED | DifFlags::INVERT_CRC_RESULT;
        assert_eq!(dif_guard(both, &ff2), 0xFFFF);
        assert_eq!(dif_guard(DifFlags::INVERT_CRC_RESULT, CHECK), !0xD0DB);
    }

    #[test]
    fn dif_insert_tags_worked_example() {
        // Two 512-byte blocks of zeros (guard 0: a CRC from 0 over zeros stays 0), reference
        // tag from 0x10 counting up, application tag 0x12F0 counting up with the low byte
        // masked (masked bits are written as 0).
        let data = [0u8; 1024];
        let f = DifFormat::new(DifBlockSize::B512);
        let d = DifDest {
            flags: DestDifFlags::APP_TAG_INCREMENT,
            ref_tag: 0x10,
            app_tag_mask: 0x00FF,
            app_tag: 0x12FF,
        };
        let r = dif_insert(&data, &f, &d);
        assert_eq!(r.out.len(), 1040);
        assert_eq!(&r.out[512..520], &[0, 0, 0x12, 0x00, 0, 0, 0, 0x10]);
        assert_eq!(&r.out[1032..1040], &[0, 0, 0x13, 0x00, 0, 0, 0, 0x11]);
        assert_eq!((r.dest.ref_tag, r.dest.app_tag), (0x12, 0x1301));
        // Fixed reference tag, fixed application tag: the same tuple twice.
        let fixed = DifDest {
            flags: DestDifFlags::REF_TAG_FIXED,
            ref_tag: 0xA0B0_C0D0,
            app_tag_mask: 0,
            app_tag: 0xBEEF,
        };
        let r = dif_insert(&data, &f, &fixed);
        for pi in [&r.out[512..520], &r.out[1032..1040]] {
            assert_eq!(pi, &[0, 0, 0xBE, 0xEF, 0xA0, 0xB0, 0xC0, 0xD0]);
        }
    }

    #[test]
    fn dif_check_rules_worked_examples() {
        let f = DifFormat::new(DifBlockSize::B512);
        let block = |pi: [u8; 8]| [&[0u8; 512][..], &pi].concat();
        let good = [0, 0, 0x12, 0x34, 0, 0, 0, 7];
        let src = |flags, app_tag_mask| DifSource {
            flags,
            ref_tag: 7,
            app_tag_mask,
            app_tag: 0x1234,
        };
        let chk = |pi, s: &DifSource| dif_check(&block(pi), &f, s).error;
        assert_eq!(chk(good, &src(SrcDifFlags::empty(), 0)), None);
        // Each field wrong: its own status bit, at source offset 0.
        assert_eq!(
            chk(
                [0, 1, 0x12, 0x34, 0, 0, 0, 7],
                &src(SrcDifFlags::empty(), 0)
            ),
            Some((ds::GUARD_MISMATCH, 0))
        );
        assert_eq!(
            chk(
                [0, 0, 0x12, 0x35, 0, 0, 0, 8],
                &src(SrcDifFlags::empty(), 0)
            ),
            Some((ds::APP_TAG_MISMATCH | ds::REF_TAG_MISMATCH, 0))
        );
        // Masked application-tag bits and disabled checks are not compared.
        assert_eq!(
            chk(
                [0, 0, 0x12, 0x35, 0, 0, 0, 7],
                &src(SrcDifFlags::empty(), 0x000F)
            ),
            None
        );
        let off = SrcDifFlags::GUARD_CHECK_DISABLE | SrcDifFlags::REF_TAG_CHECK_DISABLE;
        assert_eq!(chk([9, 9, 0x12, 0x34, 9, 9, 9, 9], &src(off, 0)), None);
        // All-F tuple: an error with all-F detect + enable; skipped with app-F detect.
        let all_f = [0xFF; 8];
        let detect = SrcDifFlags::ALL_F_DETECT | SrcDifFlags::ENABLE_ALL_F_ERROR;
        assert_eq!(chk(all_f, &src(detect, 0)), Some((ds::ALL_F_ERROR, 0)));
        assert_eq!(chk(all_f, &src(SrcDifFlags::APP_F_DETECT, 0)), None);
        assert_eq!(chk(all_f, &src(SrcDifFlags::APP_REF_F_DETECT, 0)), None);
        assert!(chk(all_f, &src(SrcDifFlags::empty(), 0)).is_some());
        // The second block fails: offset of that block in the source (520 bytes each).
        let two = [block(good), block([0, 0, 0x12, 0x34, 0, 0, 0, 7])].concat();
        assert_eq!(
            dif_check(&two, &f, &src(SrcDifFlags::empty(), 0)).error,
            Some((ds::REF_TAG_MISMATCH, 520))
        );
    }

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
