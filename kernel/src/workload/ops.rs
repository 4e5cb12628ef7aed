//! Per operation: the buffers one descriptor needs, the descriptor for sequence number
//! `seq`, and the check of its result against the CPU reference (`bench::reference`).
//!
//! Every descriptor sees inputs that differ from the previous one using the same buffers
//! (a sequence stamp in the source, a new pattern, a moved difference), so a descriptor
//! the device skipped — leaving the previous result in place — fails verification.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use bench::reference::{self as cpu, DeltaRef, DifRef};
use bench::workload::WlOp;
use dsa::ops::DeltaResult;
use dsa::{DifDest, DifFormat, DifSource, OpError, Output, Work};
use dsa_spec::crc::CrcMode;
use dsa_spec::dif::{DifBlockSize, PI_SIZE};

use crate::dsa::{ClientSpace, DmaBuffer, SpaceError};
use alloc::sync::Arc;

/// DIF block size used by the DIF operations.
const DIF_BLOCK: usize = 512;
/// Create Delta record maximum (the minimum the architecture allows, ≥ 4 entries).
const DELTA_RECORD_MAX: u32 = 80;
/// Words changed per delta descriptor.
const DELTA_WORDS: usize = 4;
/// Stamp stride: one stamp per page catches a device that skipped part of a transfer.
const STAMP_STRIDE: usize = 4096;

fn dif_format() -> DifFormat {
    DifFormat::new(DifBlockSize::B512)
}

/// Bytes with protection information for `data` bytes.
fn protected_len(data: usize) -> usize {
    data / DIF_BLOCK * (DIF_BLOCK + PI_SIZE)
}

/// SplitMix64: cheap, well-mixed values from a sequence number.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Base content of byte `i` of a buffer with `salt`.
fn base_byte(i: usize, salt: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8
}

fn fill_base(b: &mut [u8], salt: u8) {
    for (i, x) in b.iter_mut().enumerate() {
        *x = base_byte(i, salt);
    }
}

/// Writes `seq` at the start, every [`STAMP_STRIDE`] bytes and at the end of `b`.
fn stamp(b: &mut [u8], seq: u64) {
    let v = seq.to_le_bytes();
    let n = b.len();
    let put = |b: &mut [u8], at: usize| {
        let k = (n - at).min(8);
        b[at..at + k].copy_from_slice(&v[..k]);
    };
    let mut at = 0;
    while at < n {
        put(b, at);
        at += STAMP_STRIDE;
    }
    if n >= 8 {
        put(b, n - 8);
    }
}

/// A verification failure, with enough detail to find it.
pub struct Mismatch(pub String);

fn mismatch(args: core::fmt::Arguments<'_>) -> Result<(), Mismatch> {
    let mut s = String::new();
    let _ = s.write_fmt(args);
    Err(Mismatch(s))
}

fn same(what: &str, got: &[u8], want: &[u8]) -> Result<(), Mismatch> {
    if got.len() != want.len() {
        return mismatch(format_args!(
            "{what}: length {} instead of {}",
            got.len(),
            want.len()
        ));
    }
    match got.iter().zip(want).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(i) => mismatch(format_args!(
            "{what}: byte {i} is {:#04x}, expected {:#04x}",
            got[i], want[i]
        )),
    }
}

/// The buffers of one in-flight descriptor and what its result must be.
pub struct OpSlot {
    op: WlOp,
    /// Data bytes per descriptor.
    size: usize,
    /// Offset of the data inside each buffer (the alignment knob).
    off: usize,
    a: Option<DmaBuffer>,
    b: Option<DmaBuffer>,
    c: Option<DmaBuffer>,
    salt: u8,
    pattern: u64,
    flip: Option<usize>,
    crc: u32,
    delta: Option<DeltaRef>,
    delta_words: Vec<(usize, [u8; 8])>,
    dif: Option<DifRef>,
    dif_tags: (DifSource, DifDest),
}

fn buf(client: Option<&Arc<ClientSpace>>, len: usize) -> Result<DmaBuffer, SpaceError> {
    DmaBuffer::new(client, len, false)
}

/// Buffer lengths (a, b, c) an operation needs for `size` data bytes (0 = none).
fn lengths(op: WlOp, size: usize) -> (usize, usize, usize) {
    let p = protected_len(size);
    match op {
        WlOp::Noop => (0, 0, 0),
        WlOp::MemMove | WlOp::Compare | WlOp::CopyCrc => (size, size, 0),
        WlOp::Fill | WlOp::ComparePattern | WlOp::CrcGen | WlOp::CacheFlush => (size, 0, 0),
        WlOp::Dualcast => (size, size, size),
        WlOp::CreateDelta => (size, size, DELTA_RECORD_MAX as usize),
        WlOp::ApplyDelta => (size, 0, DELTA_WORDS * 10),
        WlOp::DifCheck => (p, 0, 0),
        WlOp::DifInsert => (size, p, 0),
        WlOp::DifStrip => (p, size, 0),
        WlOp::DifUpdate => (p, p, 0),
    }
}

/// DMA bytes one slot holds (for the memory budget).
pub fn slot_bytes(op: WlOp, size: usize, off: usize) -> usize {
    let (a, b, c) = lengths(op, size);
    [a, b, c]
        .iter()
        .filter(|&&l| l > 0)
        .map(|&l| (l + off).next_power_of_two().max(4096))
        .sum()
}

impl OpSlot {
    /// Allocates and initialises the buffers of one slot. `align` below 4096 places the
    /// data at offset `align` of a page-aligned buffer (aligned to it, not to twice it).
    pub fn new(
        op: WlOp,
        size: usize,
        align: usize,
        client: Option<&Arc<ClientSpace>>,
        salt: u8,
    ) -> Result<OpSlot, SpaceError> {
        let off = if align >= 4096 { 0 } else { align };
        let (la, lb, lc) = lengths(op, size);
        let mk = |l: usize| -> Result<Option<DmaBuffer>, SpaceError> {
            if l == 0 {
                Ok(None)
            } else {
                buf(client, l + off).map(Some)
            }
        };
        let mut s = OpSlot {
            op,
            size,
            off,
            a: mk(la)?,
            b: mk(lb)?,
            c: mk(lc)?,
            salt,
            pattern: mix(salt as u64) | 1,
            flip: None,
            crc: 0,
            delta: None,
            delta_words: Vec::new(),
            dif: None,
            dif_tags: (DifSource::default(), DifDest::default()),
        };
        let (o, p) = (s.off, s.pattern);
        for x in [&mut s.a, &mut s.b, &mut s.c].into_iter().flatten() {
            fill_base(x.bytes_mut(), salt);
        }
        match op {
            WlOp::Compare | WlOp::CreateDelta => {
                // Both sources start identical.
                let a = s.a.as_ref().map(|x| x.bytes().to_vec()).unwrap_or_default();
                if let Some(b) = s.b.as_mut() {
                    b.bytes_mut().copy_from_slice(&a);
                }
            }
            WlOp::ComparePattern => {
                if let Some(a) = s.a.as_mut() {
                    cpu::fill(&mut a.bytes_mut()[o..o + size], p);
                }
            }
            _ => {}
        }
        Ok(s)
    }

    fn dev(b: &Option<DmaBuffer>, off: usize) -> u64 {
        b.as_ref().map_or(0, |x| x.dev_addr(off))
    }

    fn data(b: &Option<DmaBuffer>, off: usize, len: usize) -> &[u8] {
        b.as_ref().map_or(&[][..], |x| &x.bytes()[off..off + len])
    }

    fn data_mut(b: &mut Option<DmaBuffer>, off: usize, len: usize) -> &mut [u8] {
        match b.as_mut() {
            Some(x) => &mut x.bytes_mut()[off..off + len],
            None => &mut [],
        }
    }

    /// Sets up the inputs for descriptor `seq` and returns it (addresses in the owner's
    /// space). Runs on the CPU outside every measured section.
    pub fn prepare(&mut self, seq: u64) -> Work {
        let (o, n) = (self.off, self.size);
        let (a, b, c) = (
            Self::dev(&self.a, o),
            Self::dev(&self.b, o),
            Self::dev(&self.c, o),
        );
        let len = n as u32;
        match self.op {
            WlOp::Noop => Work::noop(),
            WlOp::MemMove => {
                stamp(Self::data_mut(&mut self.a, o, n), seq);
                Work::memmove(a, b, len)
            }
            WlOp::Fill => {
                self.pattern = mix(seq);
                Work::fill(a, len, self.pattern)
            }
            WlOp::Compare => {
                let sa = Self::data_mut(&mut self.a, o, n);
                stamp(sa, seq);
                let sa = sa.to_vec();
                let sb = Self::data_mut(&mut self.b, o, n);
                sb.copy_from_slice(&sa);
                self.flip = (seq % 2 == 1).then(|| (mix(seq) % n as u64) as usize);
                if let Some(p) = self.flip {
                    sb[p] ^= 0x5A;
                }
                Work::compare(a, b, len)
            }
            WlOp::ComparePattern => {
                let sa = Self::data_mut(&mut self.a, o, n);
                if let Some(p) = self.flip.take() {
                    sa[p] ^= 0x5A;
                }
                self.flip = (seq % 2 == 1).then(|| (mix(seq) % n as u64) as usize);
                if let Some(p) = self.flip {
                    sa[p] ^= 0x5A;
                }
                Work::compare_pattern(a, len, self.pattern)
            }
            WlOp::Dualcast => {
                stamp(Self::data_mut(&mut self.a, o, n), seq);
                Work::dualcast(a, b, c, len)
            }
            WlOp::CrcGen | WlOp::CopyCrc => {
                let sa = Self::data_mut(&mut self.a, o, n);
                stamp(sa, seq);
                self.crc = cpu::crc32c(0, sa, CrcMode::default());
                if self.op == WlOp::CrcGen {
                    Work::crc(a, len, 0)
                } else {
                    Work::copy_crc(a, b, len, 0)
                }
            }
            WlOp::CacheFlush => Work::cache_flush(a, len, false),
            WlOp::CreateDelta => {
                // New = old with a few words changed at sequence-dependent places.
                let old = Self::data(&self.a, o, n).to_vec();
                let new = Self::data_mut(&mut self.b, o, n);
                for &(w, _) in &self.delta_words {
                    new[w * 8..w * 8 + 8].copy_from_slice(&old[w * 8..w * 8 + 8]);
                }
                self.delta_words.clear();
                let words = n / 8;
                for k in 0..DELTA_WORDS.min(words) {
                    let w = (mix(seq * 8 + k as u64) % words as u64) as usize;
                    new[w * 8] ^= 0xA5;
                    self.delta_words.push((w, [0; 8]));
                }
                self.delta = Some(cpu::create_delta(&old, new, DELTA_RECORD_MAX as usize));
                Work::create_delta(a, b, len, c, DELTA_RECORD_MAX)
            }
            WlOp::ApplyDelta => {
                // Restore the words the previous record changed, then a new record.
                let salt = self.salt;
                let dst = Self::data_mut(&mut self.a, o, n);
                for &(w, _) in &self.delta_words {
                    for (i, x) in dst[w * 8..w * 8 + 8].iter_mut().enumerate() {
                        *x = base_byte(o + w * 8 + i, salt);
                    }
                }
                let words = n / 8;
                let mut ws: Vec<usize> = (0..DELTA_WORDS.min(words))
                    .map(|k| (mix(seq * 8 + k as u64) % words as u64) as usize)
                    .collect();
                ws.sort_unstable();
                ws.dedup();
                self.delta_words = ws
                    .iter()
                    .map(|&w| (w, mix(seq ^ (w as u64) << 20).to_le_bytes()))
                    .collect();
                let mut rec = Vec::with_capacity(self.delta_words.len() * 10);
                for (w, v) in &self.delta_words {
                    rec.extend_from_slice(&(*w as u16).to_le_bytes());
                    rec.extend_from_slice(v);
                }
                let r = Self::data_mut(&mut self.c, o, rec.len());
                r.copy_from_slice(&rec);
                Work::apply_delta(c, rec.len() as u32, a, len)
            }
            WlOp::DifCheck | WlOp::DifInsert | WlOp::DifStrip | WlOp::DifUpdate => {
                self.prepare_dif(seq)
            }
        }
    }

    fn prepare_dif(&mut self, seq: u64) -> Work {
        let (o, n) = (self.off, self.size);
        let f = dif_format();
        let src_tags = DifSource {
            ref_tag: seq as u32,
            app_tag: 0x5EED,
            ..Default::default()
        };
        let dst_tags = DifDest {
            ref_tag: (seq as u32).wrapping_mul(3),
            app_tag: 0xD1F0,
            ..Default::default()
        };
        let ins_tags = DifDest {
            ref_tag: src_tags.ref_tag,
            app_tag: src_tags.app_tag,
            ..Default::default()
        };
        self.dif_tags = (src_tags, dst_tags);
        let mut data: Vec<u8> = (0..n).map(|i| base_byte(i, self.salt)).collect();
        stamp(&mut data, seq);
        let (a, b) = (Self::dev(&self.a, o), Self::dev(&self.b, o));
        let p = protected_len(n);
        if self.op == WlOp::DifInsert {
            Self::data_mut(&mut self.a, o, n).copy_from_slice(&data);
            self.dif = Some(cpu::dif_insert(&data, &f, &dst_tags));
            return Work::dif_insert(a, b, n as u32, f, dst_tags);
        }
        // The other three read protected data.
        let prot = cpu::dif_insert(&data, &f, &ins_tags).out;
        Self::data_mut(&mut self.a, o, p).copy_from_slice(&prot);
        match self.op {
            WlOp::DifCheck => {
                self.dif = Some(cpu::dif_check(&prot, &f, &src_tags));
                Work::dif_check(a, p as u32, f, src_tags)
            }
            WlOp::DifStrip => {
                self.dif = Some(cpu::dif_strip(&prot, &f, &src_tags));
                Work::dif_strip(a, b, p as u32, f, src_tags)
            }
            _ => {
                self.dif = Some(cpu::dif_update(&prot, &f, &src_tags, &dst_tags));
                Work::dif_update(a, b, p as u32, f, src_tags, dst_tags)
            }
        }
    }

    /// Checks the result of the descriptor last prepared.
    pub fn verify(&self, r: &Result<Output, OpError>) -> Result<(), Mismatch> {
        let out = match r {
            Ok(o) => o,
            Err(e) => return mismatch(format_args!("operation failed: {e}")),
        };
        let (o, n) = (self.off, self.size);
        let a = Self::data(&self.a, o, n);
        match (self.op, out) {
            (WlOp::Noop | WlOp::CacheFlush, Output::Done) => Ok(()),
            (WlOp::MemMove, Output::Done) => same("destination", Self::data(&self.b, o, n), a),
            (WlOp::Fill, Output::Done) => {
                let p = self.pattern.to_le_bytes();
                match a.iter().enumerate().position(|(k, &x)| x != p[k % 8]) {
                    None => Ok(()),
                    Some(k) => mismatch(format_args!("fill: byte {k} is {:#04x}", a[k])),
                }
            }
            (
                WlOp::Compare,
                Output::Compare {
                    equal,
                    first_difference,
                    ..
                },
            ) => {
                let want = self.flip.map(|p| p as u32);
                if *equal != want.is_none() || *first_difference != want {
                    return mismatch(format_args!(
                        "compare: equal={equal} first difference {first_difference:?}, expected {want:?}"
                    ));
                }
                Ok(())
            }
            (
                WlOp::ComparePattern,
                Output::Compare {
                    equal,
                    first_difference,
                    ..
                },
            ) => {
                let ok = match self.flip {
                    None => *equal && first_difference.is_none(),
                    Some(p) => {
                        !*equal
                            && (*first_difference == Some(p as u32)
                                || *first_difference == Some((p & !7) as u32))
                    }
                };
                if ok {
                    Ok(())
                } else {
                    mismatch(format_args!(
                        "compare pattern: equal={equal} first difference {first_difference:?}, expected {:?}",
                        self.flip
                    ))
                }
            }
            (WlOp::Dualcast, Output::Done) => {
                same("destination 1", Self::data(&self.b, o, n), a)?;
                same("destination 2", Self::data(&self.c, o, n), a)
            }
            (WlOp::CrcGen, Output::Crc(v)) | (WlOp::CopyCrc, Output::Crc(v)) => {
                if *v != self.crc {
                    return mismatch(format_args!("CRC {v:#010x}, expected {:#010x}", self.crc));
                }
                if self.op == WlOp::CopyCrc {
                    same("copy", Self::data(&self.b, o, n), a)?;
                }
                Ok(())
            }
            (
                WlOp::CreateDelta,
                Output::Delta {
                    result,
                    record_size,
                    bytes_compared,
                    ..
                },
            ) => {
                let Some(d) = &self.delta else {
                    return mismatch(format_args!("no expected delta"));
                };
                if *result != d.result
                    || *record_size as usize != d.record.len()
                    || (d.result == DeltaResult::Overflow
                        && *bytes_compared as usize != d.bytes_compared)
                {
                    return mismatch(format_args!(
                        "delta: {result:?} record {record_size} compared {bytes_compared}, expected {:?} {} {}",
                        d.result,
                        d.record.len(),
                        d.bytes_compared
                    ));
                }
                same(
                    "delta record",
                    Self::data(&self.c, o, d.record.len()),
                    &d.record,
                )
            }
            (WlOp::ApplyDelta, Output::Done) => {
                for (i, &x) in a.iter().enumerate() {
                    let w = i / 8;
                    let want = match self.delta_words.iter().find(|(ww, _)| *ww == w) {
                        Some((_, v)) => v[i % 8],
                        None => base_byte(o + i, self.salt),
                    };
                    if x != want {
                        return mismatch(format_args!(
                            "apply delta: byte {i} is {x:#04x}, expected {want:#04x}"
                        ));
                    }
                }
                Ok(())
            }
            (
                WlOp::DifCheck | WlOp::DifInsert | WlOp::DifStrip | WlOp::DifUpdate,
                Output::Dif { source, dest },
            ) => {
                let Some(d) = &self.dif else {
                    return mismatch(format_args!("no expected DIF result"));
                };
                if let Some(e) = d.error {
                    return mismatch(format_args!("reference reports DIF error {e:?}"));
                }
                if let Some(s) = source
                    && *s != d.source
                {
                    return mismatch(format_args!("source tags {s:?}, expected {:?}", d.source));
                }
                if let Some(t) = dest
                    && *t != d.dest
                {
                    return mismatch(format_args!("dest tags {t:?}, expected {:?}", d.dest));
                }
                if self.op != WlOp::DifCheck {
                    same("DIF output", Self::data(&self.b, o, d.out.len()), &d.out)?;
                }
                Ok(())
            }
            (op, out) => mismatch(format_args!("{}: unexpected result {out:?}", op.name())),
        }
    }
}
