//! Typed DSA 1.0 operations: builders, validation against the device and WQ limits,
//! descriptor encoding, completion-record decoding, and partial-completion resume
//! (DSA spec §8.1–§8.3; resume after a page fault: §3.13.3, §8.2.4).

use crate::caps::Capabilities;
use crate::error::{OpError, PageFault};
use alloc::vec::Vec;
use core::fmt;
use dsa_spec::crc::CrcMode;
use dsa_spec::delta;
use dsa_spec::dif::{DestDifFlags, DifBlockSize, DifFlags, PI_SIZE, SrcDifFlags};
use dsa_spec::status as st;
use dsa_spec::{CompletionRecord, DescFlags, Descriptor, GenCap, Opcode};

/// Where the CRC seed comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrcSeed {
    /// The seed itself, in descriptor bytes 40–43 (DSA spec §8.3.12).
    Value(u32),
    /// Device address of a 4-byte-aligned u32 (flag 16).
    Memory(u64),
}

/// Source-side protection information parameters (Check, Strip, Update).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DifSource {
    /// Source DIF flags (descriptor byte 40, DSA spec §8.3.14): which checks run, how the
    /// tags advance from block to block, all-F detection.
    pub flags: SrcDifFlags,
    /// Reference tag expected in the first source block (descriptor bytes 48–51).
    pub ref_tag: u32,
    /// Application tag bits that are not compared: a set bit is ignored (bytes 52–53).
    pub app_tag_mask: u16,
    /// Application tag expected in the first source block (bytes 54–55).
    pub app_tag: u16,
}

/// Destination-side protection information parameters (Insert, Update).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DifDest {
    /// Destination DIF flags (descriptor byte 41, DSA spec §8.3.15): which tags are
    /// passed through from the source and how generated tags advance per block.
    pub flags: DestDifFlags,
    /// Reference tag written into the first destination block (descriptor bytes 56–59).
    pub ref_tag: u32,
    /// Application tag mask of the destination side (descriptor bytes 60–61).
    pub app_tag_mask: u16,
    /// Application tag written into the first destination block (bytes 62–63).
    pub app_tag: u16,
}

/// DIF block format shared by the four DIF ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DifFormat {
    /// Data bytes per protection-information tuple: 512, 520, 4096 or 4104 (DIF flags
    /// bits 1:0, descriptor byte 42; DSA spec §8.3.14).
    pub block: DifBlockSize,
    /// Guard seed/result inversion (bits 2 and 3 of the DIF flags byte): start the guard
    /// CRC-16 from 0xFFFF instead of 0.
    pub invert_seed: bool,
    /// Invert the guard CRC-16 before it is stored or compared (DIF flags bit 3).
    pub invert_result: bool,
}

impl DifFormat {
    /// A format with `block`-sized blocks and neither guard inversion.
    pub fn new(block: DifBlockSize) -> Self {
        DifFormat {
            block,
            invert_seed: false,
            invert_result: false,
        }
    }
    /// The DIF flags byte (descriptor byte 42) this format encodes to.
    pub fn flags(&self) -> DifFlags {
        let mut f = DifFlags::from_bits_retain(self.block as u8);
        f.set(DifFlags::INVERT_CRC_SEED, self.invert_seed);
        f.set(DifFlags::INVERT_CRC_RESULT, self.invert_result);
        f
    }
    /// Data bytes of one block, without the 8-byte protection information.
    pub fn block_bytes(&self) -> u32 {
        self.block.bytes()
    }
}

/// One operation, with device addresses in the submitter's address space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// No-op (opcode 0x00, DSA spec §8.3.1): does no work and only writes its completion
    /// record; the cheapest descriptor, for measuring and testing the submission path.
    Noop,
    /// Completes after every earlier descriptor of this WQ (dedicated) or of this PASID in
    /// this WQ (shared).
    Drain,
    /// Memory Move (0x03, DSA spec §8.3.4): copies `len` bytes from `src` to `dst`.
    /// Overlapping buffers need GENCAP's overlapping-copy capability.
    MemMove {
        /// Source address (descriptor bytes 16–23).
        src: u64,
        /// Destination address (bytes 24–31).
        dst: u64,
        /// Bytes to copy.
        len: u32,
    },
    /// Fill (0x04, DSA spec §8.3.5): writes the 8-byte `pattern` repeatedly over `len`
    /// bytes at `dst`.
    Fill {
        /// Destination address.
        dst: u64,
        /// Bytes to write (need not be a multiple of 8: the last copy is cut short).
        len: u32,
        /// The pattern, little-endian: bits 7:0 go to the first destination byte.
        pattern: u64,
    },
    /// Compare (0x05, DSA spec §8.3.6): compares `len` bytes at `src1` and `src2`; the
    /// completion record tells whether they are equal and where they first differ.
    Compare {
        /// First source address.
        src1: u64,
        /// Second source address.
        src2: u64,
        /// Bytes to compare.
        len: u32,
        /// `Some(expected)` sets Check Result (flag 7, §8.1.3): the descriptor succeeds
        /// only if equality is `expected`, otherwise it completes with a false predicate,
        /// which makes a later fenced batch member abandon the rest of the batch.
        expect_equal: Option<bool>,
    },
    /// Compare Pattern (0x06, DSA spec §8.3.7): compares `len` bytes at `src` with the
    /// 8-byte `pattern` repeated.
    ComparePattern {
        /// Source address.
        src: u64,
        /// Bytes to compare.
        len: u32,
        /// The pattern value itself (descriptor bytes 24–31, not an address), little-endian.
        pattern: u64,
        /// Check Result, as for [`Op::Compare`].
        expect_equal: Option<bool>,
    },
    /// Create Delta Record (0x07, DSA spec §8.3.8): compares `src1` (the original) with
    /// `src2` (the new data) in 8-byte words and writes a record of the words that differ
    /// (10-byte entries: offset in 8-byte units, then the new word).
    CreateDelta {
        /// The original data; 8-byte aligned.
        src1: u64,
        /// The new data; 8-byte aligned.
        src2: u64,
        /// Bytes to compare: a multiple of 8, at most 512 KiB.
        len: u32,
        /// Where the delta record is written (descriptor bytes 40–47).
        record: u64,
        /// Room for the record in bytes: a multiple of 10, at least 80 (bytes 48–51).
        record_max: u32,
        /// `Some(mask)` sets Check Result with a mask of acceptable results (descriptor
        /// byte 56; bit 0 identical, bit 1 record written, bit 2 overflow).
        expect_mask: Option<u8>,
    },
    /// Apply Delta Record (0x08, DSA spec §8.3.9): writes each entry of a record made by
    /// Create Delta into `dst`, turning a copy of the original into the new data.
    ApplyDelta {
        /// Address of the delta record (descriptor bytes 16–23).
        record: u64,
        /// Bytes of the record: a multiple of 10, at least 10 (bytes 40–43).
        record_len: u32,
        /// Destination to patch; 8-byte aligned.
        dst: u64,
        /// Bytes of the destination region (a multiple of 8): every entry's offset must
        /// lie inside it.
        len: u32,
    },
    /// Memory Copy with Dualcast (0x09, DSA spec §8.3.10): copies `len` bytes from `src`
    /// to both `dst1` and `dst2`.
    Dualcast {
        /// Source address.
        src: u64,
        /// First destination (descriptor bytes 24–31).
        dst1: u64,
        /// Second destination (bytes 40–47); bits 11:0 must equal those of `dst1`.
        dst2: u64,
        /// Bytes to copy to each destination.
        len: u32,
    },
    /// CRC Generation (0x10, DSA spec §8.3.12): the CRC-32C of `len` bytes at `src`,
    /// returned in the completion record.
    CrcGen {
        /// Source address.
        src: u64,
        /// Bytes to checksum.
        len: u32,
        /// Initial CRC value, in the descriptor or in memory.
        seed: CrcSeed,
        /// Inversion and reflection bypasses (flags 17 and 18); the default is standard
        /// CRC-32C.
        mode: CrcMode,
    },
    /// Copy with CRC Generation (0x11, DSA spec §8.3.13): [`Op::MemMove`] and
    /// [`Op::CrcGen`] of the source in one pass; `src` and `dst` must not overlap.
    CopyCrc {
        /// Source address.
        src: u64,
        /// Destination address.
        dst: u64,
        /// Bytes to copy and checksum.
        len: u32,
        /// Initial CRC value.
        seed: CrcSeed,
        /// Inversion and reflection bypasses, as for [`Op::CrcGen`].
        mode: CrcMode,
    },
    /// DIF Check (0x12, DSA spec §8.3.14): verifies the T10 protection information of
    /// every block at `src`; nothing is written but the completion record.
    DifCheck {
        /// Source: blocks of data each followed by its 8-byte protection information.
        src: u64,
        /// Source bytes: a multiple of block size + 8.
        len: u32,
        /// Block size and guard inversion.
        format: DifFormat,
        /// What to check and the first block's expected tags.
        source: DifSource,
    },
    /// DIF Insert (0x13, DSA spec §8.3.15): copies plain blocks from `src` to `dst`,
    /// appending generated protection information to each.
    DifInsert {
        /// Source: plain data blocks.
        src: u64,
        /// Destination: each block followed by 8 bytes of protection information.
        dst: u64,
        /// Source bytes: a multiple of the block size.
        len: u32,
        /// Block size and guard inversion.
        format: DifFormat,
        /// The tags to generate for the first block and how they advance.
        dest: DifDest,
    },
    /// DIF Strip (0x14, DSA spec §8.3.16): checks the protection information at `src` and
    /// copies only the data blocks to `dst`.
    DifStrip {
        /// Source: blocks each followed by 8 bytes of protection information.
        src: u64,
        /// Destination: plain data blocks.
        dst: u64,
        /// Source bytes: a multiple of block size + 8.
        len: u32,
        /// Block size and guard inversion.
        format: DifFormat,
        /// What to check and the first block's expected tags.
        source: DifSource,
    },
    /// DIF Update (0x15, DSA spec §8.3.17): checks the source protection information and
    /// copies the blocks with new (or passed-through) tags.
    DifUpdate {
        /// Source: blocks each followed by 8 bytes of protection information.
        src: u64,
        /// Destination, same layout and size as the source.
        dst: u64,
        /// Source bytes: a multiple of block size + 8.
        len: u32,
        /// Block size and guard inversion (both sides).
        format: DifFormat,
        /// What to check on the source side.
        source: DifSource,
        /// What to write on the destination side.
        dest: DifDest,
    },
    /// Cache Flush (0x20, DSA spec §8.3): writes back the CPU cache lines covering
    /// `len` bytes at `addr`, so that a later non-coherent reader sees the data.
    CacheFlush {
        /// Start of the range (descriptor bytes 24–31).
        addr: u64,
        /// Bytes of the range.
        len: u32,
        /// Write back but keep the lines cached (flag 8; needs GENCAP's cache-control
        /// capability); false invalidates them too.
        keep: bool,
    },
}

impl Op {
    /// The descriptor opcode (byte 7, DSA spec §8.1.2) of this operation.
    pub fn opcode(&self) -> Opcode {
        match self {
            Op::Noop => Opcode::Noop,
            Op::Drain => Opcode::Drain,
            Op::MemMove { .. } => Opcode::MemMove,
            Op::Fill { .. } => Opcode::Fill,
            Op::Compare { .. } => Opcode::Compare,
            Op::ComparePattern { .. } => Opcode::ComparePattern,
            Op::CreateDelta { .. } => Opcode::CreateDelta,
            Op::ApplyDelta { .. } => Opcode::ApplyDelta,
            Op::Dualcast { .. } => Opcode::Dualcast,
            Op::CrcGen { .. } => Opcode::CrcGen,
            Op::CopyCrc { .. } => Opcode::CopyCrc,
            Op::DifCheck { .. } => Opcode::DifCheck,
            Op::DifInsert { .. } => Opcode::DifInsert,
            Op::DifStrip { .. } => Opcode::DifStrip,
            Op::DifUpdate { .. } => Opcode::DifUpdate,
            Op::CacheFlush { .. } => Opcode::CacheFlush,
        }
    }

    /// Transfer size field (bytes of source, or of the destination for Apply Delta).
    pub fn len(&self) -> u32 {
        match *self {
            Op::Noop | Op::Drain => 0,
            Op::MemMove { len, .. }
            | Op::Fill { len, .. }
            | Op::Compare { len, .. }
            | Op::ComparePattern { len, .. }
            | Op::CreateDelta { len, .. }
            | Op::ApplyDelta { len, .. }
            | Op::Dualcast { len, .. }
            | Op::CrcGen { len, .. }
            | Op::CopyCrc { len, .. }
            | Op::DifCheck { len, .. }
            | Op::DifInsert { len, .. }
            | Op::DifStrip { len, .. }
            | Op::DifUpdate { len, .. }
            | Op::CacheFlush { len, .. } => len,
        }
    }
    /// True when the transfer size is 0 (always for No-op and Drain).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (source step, destination step) of a DIF op: bytes per block on each side.
    fn dif_steps(&self) -> Option<(u32, u32)> {
        let (f, src_pi, dst_pi, dst) = match *self {
            Op::DifCheck { format, .. } => (format, true, false, false),
            Op::DifInsert { format, .. } => (format, false, true, true),
            Op::DifStrip { format, .. } => (format, true, false, true),
            Op::DifUpdate { format, .. } => (format, true, true, true),
            _ => return None,
        };
        let b = f.block_bytes();
        let pi = PI_SIZE as u32;
        let s = if src_pi { b + pi } else { b };
        let d = if !dst {
            0
        } else if dst_pi {
            b + pi
        } else {
            b
        };
        Some((s, d))
    }
}

/// An operation plus its descriptor options.
///
/// `repr(C)` with the four option flags adjacent (after the 8-aligned `Op`, so 4-aligned):
/// [`Work::options`] reads them as one 32-bit word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Work {
    /// The operation and its operands.
    pub op: Op,
    /// Destination writes allocate in the LLC (flag 8, GENCAP.2). Not for Cache Flush
    /// (use its `keep`).
    pub cache_write: bool,
    /// Destination readback before completion (flag 14, GENCAP.8).
    pub dest_readback: bool,
    /// Destination writes become globally visible in address order (flag 13); slower,
    /// for consumers that poll the destination itself.
    pub strict_ordering: bool,
    /// Block on fault (flag 1; needs GENCAP.0 and a WQ configured with block_on_fault).
    pub block_on_fault: bool,
    /// Batch members only: wait for every earlier member; abandoned if one failed.
    pub fence: bool,
}

impl From<Op> for Work {
    fn from(op: Op) -> Self {
        Work::new(op)
    }
}

impl Work {
    /// Non-zero when any option flag other than `fence` is set (one 32-bit load: the four
    /// flags are adjacent and 4-aligned, see the type's layout).
    #[inline(always)]
    pub fn options(&self) -> u32 {
        u32::from_le_bytes([
            u8::from(self.cache_write),
            u8::from(self.dest_readback),
            u8::from(self.strict_ordering),
            u8::from(self.block_on_fault),
        ])
    }
    /// `op` with every option off (no fence, no cache control, no readback, relaxed
    /// ordering, faults complete partially).
    pub const fn new(op: Op) -> Self {
        Work {
            op,
            fence: false,
            cache_write: false,
            dest_readback: false,
            strict_ordering: false,
            block_on_fault: false,
        }
    }
    /// A No-op ([`Op::Noop`]).
    pub const fn noop() -> Self {
        Self::new(Op::Noop)
    }
    /// A Drain descriptor ([`Op::Drain`]); not valid inside a batch.
    pub const fn drain() -> Self {
        Self::new(Op::Drain)
    }
    /// Copy `len` bytes from `src` to `dst` ([`Op::MemMove`]).
    pub const fn memmove(src: u64, dst: u64, len: u32) -> Self {
        Self::new(Op::MemMove { src, dst, len })
    }
    /// Fill `len` bytes at `dst` with the 8-byte `pattern` ([`Op::Fill`]).
    pub const fn fill(dst: u64, len: u32, pattern: u64) -> Self {
        Self::new(Op::Fill { dst, len, pattern })
    }
    /// Compare `len` bytes at `src1` and `src2`, without Check Result ([`Op::Compare`]).
    pub const fn compare(src1: u64, src2: u64, len: u32) -> Self {
        Self::new(Op::Compare {
            src1,
            src2,
            len,
            expect_equal: None,
        })
    }
    /// Compare `len` bytes at `src` with `pattern` repeated, without Check Result
    /// ([`Op::ComparePattern`]).
    pub const fn compare_pattern(src: u64, len: u32, pattern: u64) -> Self {
        Self::new(Op::ComparePattern {
            src,
            len,
            pattern,
            expect_equal: None,
        })
    }
    /// Record the 8-byte words where `src2` differs from `src1` into at most `record_max`
    /// bytes at `record`, without Check Result ([`Op::CreateDelta`]).
    pub const fn create_delta(
        src1: u64,
        src2: u64,
        len: u32,
        record: u64,
        record_max: u32,
    ) -> Self {
        Self::new(Op::CreateDelta {
            src1,
            src2,
            len,
            record,
            record_max,
            expect_mask: None,
        })
    }
    /// Apply the `record_len`-byte delta record at `record` to the `len` bytes at `dst`
    /// ([`Op::ApplyDelta`]).
    pub const fn apply_delta(record: u64, record_len: u32, dst: u64, len: u32) -> Self {
        Self::new(Op::ApplyDelta {
            record,
            record_len,
            dst,
            len,
        })
    }
    /// Copy `len` bytes from `src` to both `dst1` and `dst2` ([`Op::Dualcast`]).
    pub const fn dualcast(src: u64, dst1: u64, dst2: u64, len: u32) -> Self {
        Self::new(Op::Dualcast {
            src,
            dst1,
            dst2,
            len,
        })
    }
    /// Standard CRC-32C of `len` bytes at `src`, starting from `seed` (0 for a fresh CRC,
    /// an earlier result to chain) ([`Op::CrcGen`]).
    pub const fn crc(src: u64, len: u32, seed: u32) -> Self {
        Self::new(Op::CrcGen {
            src,
            len,
            seed: CrcSeed::Value(seed),
            mode: CrcMode {
                bypass_inv_refl: false,
                bypass_data_refl: false,
            },
        })
    }
    /// Copy `len` bytes from `src` to `dst` and return their standard CRC-32C, starting
    /// from `seed` ([`Op::CopyCrc`]).
    pub const fn copy_crc(src: u64, dst: u64, len: u32, seed: u32) -> Self {
        Self::new(Op::CopyCrc {
            src,
            dst,
            len,
            seed: CrcSeed::Value(seed),
            mode: CrcMode {
                bypass_inv_refl: false,
                bypass_data_refl: false,
            },
        })
    }
    /// Check the protection information of the `len` bytes at `src` ([`Op::DifCheck`]).
    pub const fn dif_check(src: u64, len: u32, format: DifFormat, source: DifSource) -> Self {
        Self::new(Op::DifCheck {
            src,
            len,
            format,
            source,
        })
    }
    /// Copy `len` bytes of plain blocks from `src` to `dst`, inserting protection
    /// information ([`Op::DifInsert`]).
    pub const fn dif_insert(
        src: u64,
        dst: u64,
        len: u32,
        format: DifFormat,
        dest: DifDest,
    ) -> Self {
        Self::new(Op::DifInsert {
            src,
            dst,
            len,
            format,
            dest,
        })
    }
    /// Check the protected blocks at `src` and copy their data to `dst` without the
    /// protection information ([`Op::DifStrip`]).
    pub const fn dif_strip(
        src: u64,
        dst: u64,
        len: u32,
        format: DifFormat,
        source: DifSource,
    ) -> Self {
        Self::new(Op::DifStrip {
            src,
            dst,
            len,
            format,
            source,
        })
    }
    /// Check the protected blocks at `src` and copy them to `dst` with updated tags
    /// ([`Op::DifUpdate`]).
    pub const fn dif_update(
        src: u64,
        dst: u64,
        len: u32,
        format: DifFormat,
        source: DifSource,
        dest: DifDest,
    ) -> Self {
        Self::new(Op::DifUpdate {
            src,
            dst,
            len,
            format,
            source,
            dest,
        })
    }
    /// Write back the cache lines of `len` bytes at `addr`; `keep` leaves them cached
    /// ([`Op::CacheFlush`]).
    pub const fn cache_flush(addr: u64, len: u32, keep: bool) -> Self {
        Self::new(Op::CacheFlush { addr, len, keep })
    }
    /// Sets Fence ([`Work::fence`]); batch members only.
    pub const fn with_fence(mut self) -> Self {
        self.fence = true;
        self
    }
    /// Sets cache control ([`Work::cache_write`]).
    pub const fn with_cache_write(mut self) -> Self {
        self.cache_write = true;
        self
    }
    /// Sets destination readback ([`Work::dest_readback`]).
    pub const fn with_dest_readback(mut self) -> Self {
        self.dest_readback = true;
        self
    }
    /// Sets strict ordering ([`Work::strict_ordering`]).
    pub const fn with_strict_ordering(mut self) -> Self {
        self.strict_ordering = true;
        self
    }
    /// Sets block on fault ([`Work::block_on_fault`]).
    pub const fn with_block_on_fault(mut self) -> Self {
        self.block_on_fault = true;
        self
    }
}

/// Why an operation was refused before submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValidationError {
    /// Not in OPCAP.
    Unsupported(Opcode),
    /// The transfer size exceeds the WQ's maximum transfer size (WQCFG, DSA spec §9.2.24);
    /// the device would complete with status 0x13.
    TooLarge {
        /// The operation's transfer size in bytes.
        len: u64,
        /// The WQ's limit in bytes.
        max: u64,
    },
    /// Size 0 where the operation needs data (Create/Apply Delta, the DIF operations).
    ZeroLength,
    /// An address the operation requires aligned is not (status 0x1C on the device).
    Misaligned {
        /// Which operand, for the message.
        what: &'static str,
        /// The misaligned address.
        addr: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// The transfer size is not a whole number of the operation's units (8-byte words for
    /// the delta operations, blocks for DIF).
    LengthNotMultiple {
        /// The transfer size in bytes.
        len: u32,
        /// The unit it must be a multiple of, in bytes.
        of: u32,
    },
    /// A buffer wraps past the end of the address space.
    AddressWrap,
    /// Buffers overlap where the operation forbids it.
    Overlap,
    /// Dualcast destinations must agree in address bits 11:0.
    DualcastAddress {
        /// First destination.
        dst1: u64,
        /// Second destination.
        dst2: u64,
    },
    /// Create Delta's maximum record size (bytes) is not a multiple of 10 of at least 80
    /// (DSA spec §8.3.8).
    DeltaRecordMax(u32),
    /// Apply Delta's record size (bytes) is not a non-zero multiple of 10 (§8.3.9).
    DeltaRecordLen(u32),
    /// Create Delta covers at most 512 KiB (16-bit offsets in 8-byte units).
    DeltaTooLong(u32),
    /// A descriptor flag the device or WQ does not support.
    FlagUnsupported(&'static str),
    /// A batch's descriptor count is outside what the device and WQ accept (DSA spec
    /// §8.3.2; status 0x14 on the device).
    BatchSize {
        /// Descriptors in the batch.
        count: usize,
        /// Fewest the device accepts.
        min: usize,
        /// Most the WQ accepts (its maximum batch size).
        max: usize,
    },
    /// Drain cannot be a batch member.
    DrainInBatch,
    /// Fence applies to batch members only.
    FenceOutsideBatch,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ValidationError::*;
        match self {
            Unsupported(op) => write!(f, "{op:?} is not supported by the device"),
            TooLarge { len, max } => write!(f, "size {len} over the WQ maximum {max}"),
            ZeroLength => write!(f, "size 0 not allowed for this operation"),
            Misaligned { what, addr, align } => {
                write!(f, "{what} {addr:#x} is not {align}-byte aligned")
            }
            LengthNotMultiple { len, of } => write!(f, "size {len} is not a multiple of {of}"),
            AddressWrap => write!(f, "buffer wraps past the end of the address space"),
            Overlap => write!(f, "buffers overlap"),
            DualcastAddress { dst1, dst2 } => write!(
                f,
                "dualcast destinations {dst1:#x} and {dst2:#x} differ in bits 11:0"
            ),
            DeltaRecordMax(m) => {
                write!(f, "maximum delta record size {m} is below 80")
            }
            DeltaRecordLen(l) => write!(f, "delta record size {l} is not a multiple of 10 ≥ 10"),
            DeltaTooLong(l) => write!(f, "create delta size {l} over 512 KiB"),
            FlagUnsupported(w) => write!(f, "{w} not supported"),
            BatchSize { count, min, max } => {
                write!(f, "batch of {count} descriptors not in {min}..={max}")
            }
            DrainInBatch => write!(f, "drain cannot be a batch member"),
            FenceOutsideBatch => write!(f, "fence is only valid inside a batch"),
        }
    }
}

impl core::error::Error for ValidationError {}

/// What validation needs to know about the target WQ.
#[derive(Clone, Copy, Debug)]
pub struct WqLimits {
    /// Largest transfer size in bytes (2^WQCFG max transfer shift, DSA spec §9.2.24).
    pub max_transfer: u64,
    /// Most descriptors in one batch (2^WQCFG max batch shift).
    pub max_batch: u32,
    /// The WQ is configured to honour Block On Fault (WQCFG block-on-fault enable).
    pub block_on_fault: bool,
}

fn end(addr: u64, len: u64) -> Result<u64, ValidationError> {
    addr.checked_add(len).ok_or(ValidationError::AddressWrap)
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    alen > 0 && blen > 0 && a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

fn aligned(what: &'static str, addr: u64, align: u64) -> Result<(), ValidationError> {
    if addr.is_multiple_of(align) {
        Ok(())
    } else {
        Err(ValidationError::Misaligned { what, addr, align })
    }
}

impl Work {
    /// Checks the operation against the device capabilities and the WQ limits.
    pub fn validate(
        &self,
        caps: &Capabilities,
        wq: &WqLimits,
        in_batch: bool,
    ) -> Result<(), ValidationError> {
        use ValidationError as E;
        let opc = self.op.opcode();
        if !caps.supports(opc) {
            return Err(E::Unsupported(opc));
        }
        if self.fence && !in_batch {
            return Err(E::FenceOutsideBatch);
        }
        if in_batch && matches!(self.op, Op::Drain) {
            return Err(E::DrainInBatch);
        }
        let g = caps.gencap;
        if self.cache_write && !g.contains(GenCap::CACHE_CONTROL_MEM) {
            return Err(E::FlagUnsupported("cache control (write to cache)"));
        }
        if matches!(self.op, Op::CacheFlush { keep: true, .. })
            && !g.contains(GenCap::CACHE_CONTROL_MEM)
        {
            return Err(E::FlagUnsupported("cache flush keeping lines"));
        }
        if self.dest_readback && !g.contains(GenCap::DEST_READBACK) {
            return Err(E::FlagUnsupported("destination readback"));
        }
        if self.block_on_fault && !(g.contains(GenCap::BLOCK_ON_FAULT) && wq.block_on_fault) {
            return Err(E::FlagUnsupported("block on fault (device or WQ)"));
        }
        let len = u64::from(self.op.len());
        if len > wq.max_transfer {
            return Err(E::TooLarge {
                len,
                max: wq.max_transfer,
            });
        }
        match self.op {
            Op::Noop | Op::Drain => {}
            Op::MemMove { src, dst, .. } => {
                end(src, len)?;
                end(dst, len)?;
                if !g.contains(GenCap::OVERLAPPING_COPY) && overlaps(src, len, dst, len) {
                    return Err(E::Overlap);
                }
            }
            Op::Fill { dst, .. } => {
                end(dst, len)?;
            }
            Op::Compare { src1, src2, .. } => {
                end(src1, len)?;
                end(src2, len)?;
            }
            Op::ComparePattern { src, .. } => {
                end(src, len)?;
            }
            Op::CreateDelta {
                src1,
                src2,
                record,
                record_max,
                ..
            } => {
                if len == 0 {
                    return Err(E::ZeroLength);
                }
                if len > delta::MAX_COMPARE {
                    return Err(E::DeltaTooLong(len as u32));
                }
                if !len.is_multiple_of(8) {
                    return Err(E::LengthNotMultiple {
                        len: len as u32,
                        of: 8,
                    });
                }
                aligned("create delta source 1", src1, 8)?;
                aligned("create delta source 2", src2, 8)?;
                if !delta::max_record_size_valid(record_max) {
                    return Err(E::DeltaRecordMax(record_max));
                }
                end(src1, len)?;
                end(src2, len)?;
                end(record, u64::from(record_max))?;
            }
            Op::ApplyDelta {
                record,
                record_len,
                dst,
                ..
            } => {
                if len == 0 {
                    return Err(E::ZeroLength);
                }
                if !len.is_multiple_of(8) {
                    return Err(E::LengthNotMultiple {
                        len: len as u32,
                        of: 8,
                    });
                }
                aligned("apply delta destination", dst, 8)?;
                if !delta::record_size_valid(record_len) {
                    return Err(E::DeltaRecordLen(record_len));
                }
                end(record, u64::from(record_len))?;
                end(dst, len)?;
            }
            Op::Dualcast {
                src, dst1, dst2, ..
            } => {
                if dst1 & 0xFFF != dst2 & 0xFFF {
                    return Err(E::DualcastAddress { dst1, dst2 });
                }
                end(src, len)?;
                end(dst1, len)?;
                end(dst2, len)?;
                if overlaps(src, len, dst1, len)
                    || overlaps(src, len, dst2, len)
                    || overlaps(dst1, len, dst2, len)
                {
                    return Err(E::Overlap);
                }
            }
            Op::CrcGen { src, seed, .. } => {
                end(src, len)?;
                if let CrcSeed::Memory(a) = seed {
                    aligned("CRC seed address", a, 4)?;
                }
            }
            Op::CopyCrc { src, dst, seed, .. } => {
                end(src, len)?;
                end(dst, len)?;
                if let CrcSeed::Memory(a) = seed {
                    aligned("CRC seed address", a, 4)?;
                }
                if overlaps(src, len, dst, len) {
                    return Err(E::Overlap);
                }
            }
            Op::DifCheck { src, .. } => {
                self.check_dif(src, None)?;
            }
            Op::DifInsert { src, dst, .. }
            | Op::DifStrip { src, dst, .. }
            | Op::DifUpdate { src, dst, .. } => {
                self.check_dif(src, Some(dst))?;
            }
            Op::CacheFlush { addr, .. } => {
                end(addr, len)?;
            }
        }
        Ok(())
    }

    fn check_dif(&self, src: u64, dst: Option<u64>) -> Result<(), ValidationError> {
        let len = self.op.len();
        let Some((s, d)) = self.op.dif_steps() else {
            return Ok(());
        };
        if len == 0 {
            return Err(ValidationError::ZeroLength);
        }
        if !len.is_multiple_of(s) {
            return Err(ValidationError::LengthNotMultiple { len, of: s });
        }
        end(src, u64::from(len))?;
        if let Some(dst) = dst {
            let dlen = u64::from(len / s) * u64::from(d);
            end(dst, dlen)?;
            if overlaps(src, u64::from(len), dst, dlen) {
                return Err(ValidationError::Overlap);
            }
        }
        Ok(())
    }

    /// Output-side length in bytes (for reference checks): DIF ops change it.
    pub fn dst_len(&self) -> u64 {
        match self.op.dif_steps() {
            Some((s, d)) => u64::from(self.op.len() / s) * u64::from(d),
            None => u64::from(self.op.len()),
        }
    }

    /// Encodes the descriptor (completion fields filled in by the submitter).
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(self.op.opcode());
        let mut fl = DescFlags::CRAV | DescFlags::RCR;
        fl.set(DescFlags::FENCE, self.fence);
        fl.set(DescFlags::CACHE_CONTROL, self.cache_write);
        fl.set(DescFlags::DEST_READBACK, self.dest_readback);
        fl.set(DescFlags::STRICT_ORDERING, self.strict_ordering);
        fl.set(DescFlags::BLOCK_ON_FAULT, self.block_on_fault);
        d.size = self.op.len();
        let crc_fields = |d: &mut Descriptor, fl: &mut DescFlags, seed: CrcSeed, mode: CrcMode| {
            match seed {
                CrcSeed::Value(v) => {
                    d.set_crc_seed(v);
                }
                CrcSeed::Memory(a) => {
                    d.set_crc_seed_addr(a);
                    fl.insert(DescFlags::CRC_SEED_FROM_MEM);
                }
            }
            fl.set(DescFlags::CRC_BYPASS_INV_REFL, mode.bypass_inv_refl);
            fl.set(DescFlags::CRC_BYPASS_DATA_REFL, mode.bypass_data_refl);
        };
        let src_dif = |d: &mut Descriptor, s: &DifSource| {
            d.set_src_dif_flags(s.flags.bits())
                .set_src_ref_tag_seed(s.ref_tag)
                .set_src_app_tag_mask(s.app_tag_mask)
                .set_src_app_tag_seed(s.app_tag);
        };
        let dst_dif = |d: &mut Descriptor, t: &DifDest| {
            d.set_dest_dif_flags(t.flags.bits())
                .set_dest_ref_tag_seed(t.ref_tag)
                .set_dest_app_tag_mask(t.app_tag_mask)
                .set_dest_app_tag_seed(t.app_tag);
        };
        match self.op {
            Op::Noop | Op::Drain => {}
            Op::MemMove { src, dst, .. } => {
                d.addr1 = src;
                d.addr2 = dst;
            }
            Op::Fill { dst, pattern, .. } => {
                d.addr1 = pattern;
                d.addr2 = dst;
            }
            Op::Compare {
                src1,
                src2,
                expect_equal,
                ..
            } => {
                d.addr1 = src1;
                d.addr2 = src2;
                if let Some(eq) = expect_equal {
                    fl.insert(DescFlags::CHECK_RESULT);
                    d.set_expected_result(if eq { 0 } else { 1 });
                }
            }
            Op::ComparePattern {
                src,
                pattern,
                expect_equal,
                ..
            } => {
                d.addr1 = src;
                d.addr2 = pattern;
                if let Some(eq) = expect_equal {
                    fl.insert(DescFlags::CHECK_RESULT);
                    d.set_expected_result(if eq { 0 } else { 1 });
                }
            }
            Op::CreateDelta {
                src1,
                src2,
                record,
                record_max,
                expect_mask,
                ..
            } => {
                d.addr1 = src1;
                d.addr2 = src2;
                d.set_delta_record_addr(record)
                    .set_max_delta_size(record_max);
                if let Some(m) = expect_mask {
                    fl.insert(DescFlags::CHECK_RESULT);
                    d.set_expected_result_mask(m);
                }
            }
            Op::ApplyDelta {
                record,
                record_len,
                dst,
                ..
            } => {
                d.addr1 = record;
                d.addr2 = dst;
                d.set_delta_record_size(record_len);
            }
            Op::Dualcast {
                src, dst1, dst2, ..
            } => {
                d.addr1 = src;
                d.addr2 = dst1;
                d.set_dst2(dst2);
            }
            Op::CrcGen {
                src, seed, mode, ..
            } => {
                d.addr1 = src;
                crc_fields(&mut d, &mut fl, seed, mode);
            }
            Op::CopyCrc {
                src,
                dst,
                seed,
                mode,
                ..
            } => {
                d.addr1 = src;
                d.addr2 = dst;
                crc_fields(&mut d, &mut fl, seed, mode);
            }
            Op::DifCheck {
                src,
                format,
                source,
                ..
            } => {
                d.addr1 = src;
                d.set_dif_flags(format.flags().bits());
                src_dif(&mut d, &source);
            }
            Op::DifInsert {
                src,
                dst,
                format,
                dest,
                ..
            } => {
                d.addr1 = src;
                d.addr2 = dst;
                d.set_dif_flags(format.flags().bits());
                dst_dif(&mut d, &dest);
            }
            Op::DifStrip {
                src,
                dst,
                format,
                source,
                ..
            } => {
                d.addr1 = src;
                d.addr2 = dst;
                d.set_dif_flags(format.flags().bits());
                src_dif(&mut d, &source);
            }
            Op::DifUpdate {
                src,
                dst,
                format,
                source,
                dest,
                ..
            } => {
                d.addr1 = src;
                d.addr2 = dst;
                d.set_dif_flags(format.flags().bits());
                src_dif(&mut d, &source);
                dst_dif(&mut d, &dest);
            }
            Op::CacheFlush { addr, keep, .. } => {
                d.addr2 = addr;
                fl.set(DescFlags::CACHE_CONTROL, keep);
            }
        }
        d.flags = fl;
        d
    }
}

/// Create Delta outcome (CR byte 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeltaResult {
    /// The sources are equal: the record is empty (result 0).
    Identical,
    /// The sources differ and the record lists every difference (result 1).
    Written,
    /// The record reached its maximum size; `bytes_compared` tells how far it got.
    Overflow,
}

/// DIF tags for the block after the last one processed (CR bytes 16–23 / 24–31).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DifTags {
    /// Reference tag of the next block.
    pub ref_tag: u32,
    /// Application tag mask as the device carried it.
    pub app_tag_mask: u16,
    /// Application tag of the next block.
    pub app_tag: u16,
}

/// Decoded result of a successful operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Success, and the operation returns nothing but its effect on memory (Memory Move,
    /// Fill, Apply Delta, Dualcast, Cache Flush, No-op, Drain).
    Done,
    /// `first_difference`: offset of the first differing byte (Compare Pattern may round it
    /// down to a multiple of 8). `predicate`: Check Result outcome, when requested.
    Compare {
        /// The buffers (or buffer and pattern) are equal (completion record result 0).
        equal: bool,
        /// Byte offset from the start of the original operation; `None` when equal.
        first_difference: Option<u32>,
        /// `Some(true)` when the result matched the expected one, `Some(false)` for a false
        /// predicate (status 0x02); `None` without Check Result.
        predicate: Option<bool>,
    },
    /// CRC Generation / Copy with CRC: the CRC-32C of the source (completion record bytes
    /// 16–19); chain it as the seed of the next part.
    Crc(u32),
    /// Create Delta (completion record, DSA spec §8.3.8).
    Delta {
        /// Whether the sources were equal, the record complete, or the record overflowed.
        result: DeltaResult,
        /// Bytes of delta record written (completion record bytes 16–19): a multiple of 10.
        record_size: u32,
        /// Source bytes compared: all of them unless the record overflowed.
        bytes_compared: u32,
        /// Check Result outcome, as for [`Output::Compare`].
        predicate: Option<bool>,
    },
    /// A DIF operation: the tags the block after the last one would carry, so that a
    /// following operation on the next blocks can continue the sequence.
    Dif {
        /// Source-side tags (DIF Check, Strip, Update).
        source: Option<DifTags>,
        /// Destination-side tags (DIF Insert, Update).
        dest: Option<DifTags>,
    },
    /// One entry per member, in list order.
    Batch(Vec<Result<Output, OpError>>),
}

/// What to submit to finish an operation that stopped at a page fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The operation as first submitted.
    pub original: Work,
    /// The remainder to submit.
    pub(crate) remaining: Work,
    /// Units of `original` already done before `remaining` starts.
    pub(crate) done: u64,
}

impl Resume {
    /// The descriptor to submit next: the part of the operation not yet done.
    pub fn remaining(&self) -> &Work {
        &self.remaining
    }
    /// Progress of the original operation before `remaining` starts, in the units the
    /// device counts (source bytes; delta-record bytes for Apply Delta; whole blocks' bytes
    /// for DIF; 0 for a backward Memory Move, whose tail was done first).
    pub fn done(&self) -> u64 {
        self.done
    }
}

/// Decodes a completion record of `work` (which covers `original` from offset `done`).
pub(crate) fn decode(
    work: &Work,
    original: &Work,
    done: u64,
    cr: &CompletionRecord,
) -> Result<Output, OpError> {
    let code = cr.status_code();
    let predicate = |has: bool| has.then_some(code == st::SUCCESS);
    match code {
        st::SUCCESS | st::SUCCESS_FALSE_PREDICATE => {}
        st::PAGE_FAULT_PARTIAL | st::PAGE_FAULT_PRS => {
            let completed = done + u64::from(cr.bytes_completed);
            return Err(OpError::PageFault(PageFault {
                addr: cr.fault_addr,
                write: cr.fault_is_write(),
                completed,
                resume: resume(work, original, done, cr).map(alloc::boxed::Box::new),
            }));
        }
        st::DIF_ERROR => {
            return Err(OpError::Dif {
                bits: cr.result,
                offset: (done + u64::from(cr.bytes_completed)) as u32,
            });
        }
        st::DELTA_OFFSET_ORDER | st::DELTA_OFFSET_RANGE => {
            return Err(OpError::DeltaRecord {
                status: code,
                offset: (done + u64::from(cr.bytes_completed)) as u32,
            });
        }
        st::INVALID_FLAGS => {
            return Err(OpError::InvalidFlags {
                bits: cr.invalid_flags() & 0xFF_FFFF,
            });
        }
        _ => return Err(OpError::Status { code }),
    }
    let tags = |at_src: bool| {
        if at_src {
            DifTags {
                ref_tag: cr.dif_src_ref_tag(),
                app_tag_mask: cr.dif_src_app_tag_mask(),
                app_tag: cr.dif_src_app_tag(),
            }
        } else {
            DifTags {
                ref_tag: cr.dif_dest_ref_tag(),
                app_tag_mask: cr.dif_dest_app_tag_mask(),
                app_tag: cr.dif_dest_app_tag(),
            }
        }
    };
    Ok(match work.op {
        Op::Compare { expect_equal, .. } | Op::ComparePattern { expect_equal, .. } => {
            let equal = cr.result == 0;
            Output::Compare {
                equal,
                first_difference: (!equal).then_some((done + u64::from(cr.bytes_completed)) as u32),
                predicate: predicate(expect_equal.is_some()),
            }
        }
        Op::CrcGen { .. } | Op::CopyCrc { .. } => Output::Crc(cr.crc()),
        Op::CreateDelta { expect_mask, .. } => Output::Delta {
            result: match cr.result {
                0 => DeltaResult::Identical,
                1 => DeltaResult::Written,
                _ => DeltaResult::Overflow,
            },
            record_size: cr.delta_record_size(),
            bytes_compared: if cr.result == 2 {
                cr.bytes_completed
            } else {
                work.op.len()
            },
            predicate: predicate(expect_mask.is_some()),
        },
        Op::DifCheck { .. } | Op::DifStrip { .. } => Output::Dif {
            source: Some(tags(true)),
            dest: None,
        },
        Op::DifInsert { .. } => Output::Dif {
            source: None,
            dest: Some(tags(false)),
        },
        Op::DifUpdate { .. } => Output::Dif {
            source: Some(tags(true)),
            dest: Some(tags(false)),
        },
        _ => Output::Done,
    })
}

/// The source side of a DIF op resumed after a partial completion: the record's source
/// tags are those of the first block not completed (completion record bytes 16–23).
fn next_src(s: DifSource, cr: &CompletionRecord) -> DifSource {
    DifSource {
        ref_tag: cr.dif_src_ref_tag(),
        app_tag: cr.dif_src_app_tag(),
        ..s
    }
}
/// The destination side likewise (completion record bytes 24–31).
fn next_dst(d: DifDest, cr: &CompletionRecord) -> DifDest {
    DifDest {
        ref_tag: cr.dif_dest_ref_tag(),
        app_tag: cr.dif_dest_app_tag(),
        ..d
    }
}

/// Builds the remainder after a partial completion (status 0x03/0x04), by the Intel DSA
/// Architecture Specification's rules for each operation: addresses advance and the size
/// shrinks by Bytes Completed (a backward memmove keeps its addresses: its tail is done;
/// Apply Delta advances through the record), Fill and Compare Pattern rotate their pattern
/// to keep its phase, CRC ops take the record's CRC as the seed, DIF ops take the record's
/// next-block tags. The host test `resume_matrix` checks every continuation against a
/// routine written from the specification alone. None when the operation cannot be
/// continued.
fn resume(work: &Work, original: &Work, done: u64, cr: &CompletionRecord) -> Option<Resume> {
    let n = cr.bytes_completed;
    if n > work.op.len() && !matches!(work.op, Op::ApplyDelta { .. }) {
        return None;
    }
    if let Op::CreateDelta { .. } = work.op {
        // Record offsets are relative to the start of the sources, so the remainder cannot
        // be expressed as another Create Delta: run the whole operation again.
        return Some(Resume {
            original: *original,
            remaining: *original,
            done: 0,
        });
    }
    let op = match work.op {
        Op::CrcGen { .. } | Op::CopyCrc { .. } => crc_remainder(work.op, n, cr),
        Op::DifCheck { .. } | Op::DifInsert { .. } | Op::DifStrip { .. } | Op::DifUpdate { .. } => {
            dif_remainder(work.op, n, cr)?
        }
        Op::ApplyDelta { .. } => apply_delta_remainder(work.op, n)?,
        _ => advanced_remainder(work.op, n, cr)?,
    };
    Some(Resume {
        original: *original,
        remaining: Work { op, ..*work },
        done: done + units_completed(work.op, n, cr)?,
    })
}

/// The rest of a byte-stream operation (memmove, fill, compare, compare pattern, dualcast,
/// cache flush): every address advances by the `n` bytes completed and the size shrinks by
/// as much; a backward memmove (result 1) completed a suffix and keeps its addresses; the
/// 8-byte patterns rotate so that their phase, relative to the start address, continues.
fn advanced_remainder(op: Op, n: u32, cr: &CompletionRecord) -> Option<Op> {
    let nn = u64::from(n);
    let rest = op.len() - n;
    Some(match op {
        Op::MemMove { src, dst, .. } if cr.result == 1 => Op::MemMove {
            src,
            dst,
            len: rest,
        },
        Op::MemMove { src, dst, .. } => Op::MemMove {
            src: src + nn,
            dst: dst + nn,
            len: rest,
        },
        Op::Fill { dst, pattern, .. } => Op::Fill {
            dst: dst + nn,
            len: rest,
            pattern: pattern.rotate_right(8 * (n % 8)),
        },
        Op::Compare {
            src1,
            src2,
            expect_equal,
            ..
        } => Op::Compare {
            src1: src1 + nn,
            src2: src2 + nn,
            len: rest,
            expect_equal,
        },
        Op::ComparePattern {
            src,
            pattern,
            expect_equal,
            ..
        } => Op::ComparePattern {
            src: src + nn,
            len: rest,
            pattern: pattern.rotate_right(8 * (n % 8)),
            expect_equal,
        },
        Op::Dualcast {
            src, dst1, dst2, ..
        } => Op::Dualcast {
            src: src + nn,
            dst1: dst1 + nn,
            dst2: dst2 + nn,
            len: rest,
        },
        Op::CacheFlush { addr, keep, .. } => Op::CacheFlush {
            addr: addr + nn,
            len: rest,
            keep,
        },
        _ => return None,
    })
}

/// The rest of a CRC operation: the record's CRC, that of the bytes completed, seeds it.
/// With nothing done and the seed still in memory, the record holds no CRC of anything (the
/// seed read itself may be what faulted), so the same descriptor runs again.
fn crc_remainder(op: Op, n: u32, cr: &CompletionRecord) -> Op {
    let nn = u64::from(n);
    let rest = op.len() - n;
    match op {
        Op::CrcGen {
            seed: CrcSeed::Memory(_),
            ..
        }
        | Op::CopyCrc {
            seed: CrcSeed::Memory(_),
            ..
        } if n == 0 => op,
        Op::CrcGen { src, mode, .. } => Op::CrcGen {
            src: src + nn,
            len: rest,
            seed: CrcSeed::Value(cr.crc()),
            mode,
        },
        Op::CopyCrc { src, dst, mode, .. } => Op::CopyCrc {
            src: src + nn,
            dst: dst + nn,
            len: rest,
            seed: CrcSeed::Value(cr.crc()),
            mode,
        },
        _ => op,
    }
}

/// The rest of a DIF operation: whole blocks completed are skipped on both sides, and the
/// next block's tags come from the completion record.
fn dif_remainder(op: Op, n: u32, cr: &CompletionRecord) -> Option<Op> {
    let (s, d) = op.dif_steps()?;
    let blocks = n / s;
    let (src_skip, dst_skip) = (u64::from(blocks * s), u64::from(blocks * d));
    let rest = op.len() - blocks * s;
    Some(match op {
        Op::DifCheck {
            src,
            format,
            source,
            ..
        } => Op::DifCheck {
            src: src + src_skip,
            len: rest,
            format,
            source: next_src(source, cr),
        },
        Op::DifInsert {
            src,
            dst,
            format,
            dest,
            ..
        } => Op::DifInsert {
            src: src + src_skip,
            dst: dst + dst_skip,
            len: rest,
            format,
            dest: next_dst(dest, cr),
        },
        Op::DifStrip {
            src,
            dst,
            format,
            source,
            ..
        } => Op::DifStrip {
            src: src + src_skip,
            dst: dst + dst_skip,
            len: rest,
            format,
            source: next_src(source, cr),
        },
        Op::DifUpdate {
            src,
            dst,
            format,
            source,
            dest,
            ..
        } => Op::DifUpdate {
            src: src + src_skip,
            dst: dst + dst_skip,
            len: rest,
            format,
            source: next_src(source, cr),
            dest: next_dst(dest, cr),
        },
        _ => return None,
    })
}

/// The rest of an Apply Delta: the record advances by the whole entries applied (Bytes
/// Completed counts record bytes); the destination stays, since entries carry offsets into it.
fn apply_delta_remainder(op: Op, n: u32) -> Option<Op> {
    let Op::ApplyDelta {
        record,
        record_len,
        dst,
        len,
    } = op
    else {
        return None;
    };
    if n > record_len || !n.is_multiple_of(delta::ENTRY_SIZE as u32) || n == record_len {
        return None;
    }
    Some(Op::ApplyDelta {
        record: record + u64::from(n),
        record_len: record_len - n,
        dst,
        len,
    })
}

/// Units of the original operation done by this partial completion: whole DIF blocks, none
/// for a backward memmove (it completed a suffix; the remainder starts at the same offset),
/// else the bytes completed.
fn units_completed(op: Op, n: u32, cr: &CompletionRecord) -> Option<u64> {
    Some(match op {
        Op::DifCheck { .. } | Op::DifInsert { .. } | Op::DifStrip { .. } | Op::DifUpdate { .. } => {
            let (s, _) = op.dif_steps()?;
            u64::from(n / s * s)
        }
        Op::MemMove { .. } if cr.result == 1 => 0,
        _ => u64::from(n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_pattern_rotation_continues_the_phase() {
        let p = 0x0807_0605_0403_0201u64;
        let r = p.rotate_right(8 * 3);
        // Byte k of the resumed fill must be byte (3 + k) mod 8 of the original.
        for k in 0..8 {
            assert_eq!(r.to_le_bytes()[k], p.to_le_bytes()[(3 + k) % 8]);
        }
    }

    #[test]
    fn resume_rules() {
        let w = Work::memmove(0x1000, 0x9000, 0x3000);
        let mut cr = CompletionRecord {
            status: st::PAGE_FAULT_PARTIAL | st::FAULT_WRITE,
            bytes_completed: 0x1800,
            fault_addr: 0xA800,
            ..Default::default()
        };
        let Err(OpError::PageFault(pf)) = decode(&w, &w, 0, &cr) else {
            panic!("expected a fault")
        };
        assert!(pf.write);
        assert_eq!(pf.completed, 0x1800);
        let r = pf.resume.unwrap();
        assert_eq!(
            r.remaining.op,
            Op::MemMove {
                src: 0x2800,
                dst: 0xA800,
                len: 0x1800
            }
        );
        // Backward copy: same addresses, shorter.
        cr.result = 1;
        let Err(OpError::PageFault(pf)) = decode(&w, &w, 0, &cr) else {
            panic!()
        };
        assert_eq!(
            pf.resume.unwrap().remaining.op,
            Op::MemMove {
                src: 0x1000,
                dst: 0x9000,
                len: 0x1800
            }
        );
        // A compare resumed at 100 reports offsets relative to the original start.
        let c = Work::compare(0, 0x10000, 1000);
        let rem = Work::compare(100, 0x10064, 900);
        let cr = CompletionRecord {
            status: st::SUCCESS,
            result: 1,
            bytes_completed: 7,
            ..Default::default()
        };
        assert_eq!(
            decode(&rem, &c, 100, &cr).unwrap(),
            Output::Compare {
                equal: false,
                first_difference: Some(107),
                predicate: None
            }
        );
    }
}
