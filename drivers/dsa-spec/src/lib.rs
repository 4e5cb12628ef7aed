//! Intel DSA 1.0 hardware interface, written once as typed definitions named as in the
//! architecture specification (see `shared/reference/dsa.md`; section numbers below refer to it).
//!
//! Shared by the bare-metal driver (`drivers/dsa`) and the device model (`emulator/dsa-model`).
//!
//! * [`regs`]: BAR0 register offsets and register layouts (§2), commands and their status codes.
//! * [`tables`]: GRPCFG, WQCFG, MSIXPERM and IMS entries (§3, §4).
//! * [`portal`]: BAR2 submission portal addressing (§5).
//! * [`desc`]: the 64-byte work descriptor, its flags and opcodes (§6).
//! * [`completion`]: the 32-byte completion record and its status codes (§7).
//! * [`delta`]: the Create/Apply Delta record entries and size rules (§8.4).
//! * [`dif`]: T10-DIF flags, block sizes and the protection-information tuple (§8.7).
//! * [`crc`]: CRC-32C (all four DSA flag modes) and T10-DIF CRC16 reference functions (§8.6).
//!
//! Registers are `bitflags` types with `const _ = !0`, so unknown bits survive a
//! `from_bits_retain` round trip; multi-bit fields have accessor methods. Descriptors and
//! completion records convert to and from little-endian bytes (`to_bytes`/`from_bytes`).
#![cfg_attr(not(test), no_std)]

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
