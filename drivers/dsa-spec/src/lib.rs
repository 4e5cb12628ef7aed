//! Intel DSA hardware interface, written once as typed definitions named as in the Intel Data
//! Streaming Accelerator Architecture Specification, rev 3.0 (order number 341204-006US, June
//! 2025; "DSA spec" below). Section (§), table and figure numbers are that document's.
//!
//! Shared by the bare-metal driver (`drivers/dsa`) and the device model (`emulator/dsa-model`).
//!
//! * [`regs`]: the BAR0 register map (§9.2) and register layouts, commands and their status
//!   codes (§5.8).
//! * [`tables`]: GRPCFG, WQCFG, MSIXPERM and IMS entries (§9.2.22–§9.2.28).
//! * [`portal`]: BAR2 submission portal addressing (§9.3).
//! * [`desc`]: the 64-byte work descriptor, its flags and opcodes (§8.1).
//! * [`completion`]: the 32-byte completion record and its status codes (§8.2, §5.8.1).
//! * [`delta`]: the Create/Apply Delta record entries and size rules (§8.3.8, §8.3.9).
//! * [`dif`]: T10-DIF flags, block sizes and the protection-information tuple (§8.3.14–§8.3.17,
//!   Appendix B).
//! * [`crc`]: CRC-32C (all four DSA flag modes) and T10-DIF CRC16 reference functions
//!   (§8.3.12, Appendix A).
//!
//! Registers are `bitflags` types with `const _ = !0`, so unknown bits survive a
//! `from_bits_retain` round trip; multi-bit fields have accessor methods. Each register is
//! declared once in a `hwio::register_map!` (offset, value type, access), so a driver reads
//! and writes typed values. Descriptors and completion records convert to and from
//! little-endian bytes (`to_bytes`/`from_bytes`).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod completion;
pub mod crc;
pub mod delta;
pub mod desc;
pub mod dif;
pub mod portal;
pub mod regs;
pub mod tables;

pub use completion::{CompletionRecord, status};
pub use desc::{DescFlags, Descriptor, Opcode};
pub use regs::*;
pub use tables::{GroupFlags, GrpCfg, ImsCtrl, ImsEntry, MsixPerm, WqCfg, WqMode, WqState};

/// Extracts `len` bits starting at `lo` from `v`.
#[inline]
pub(crate) const fn field64(v: u64, lo: u32, len: u32) -> u64 {
    (v >> lo) & ((1u64 << len) - 1)
}

/// Returns `v` with `len` bits at `lo` replaced by `x` (excess bits of `x` dropped).
#[inline]
pub(crate) const fn set_field64(v: u64, lo: u32, len: u32, x: u64) -> u64 {
    let mask = ((1u64 << len) - 1) << lo;
    (v & !mask) | ((x << lo) & mask)
}
