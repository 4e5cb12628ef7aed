//! Model-only definitions: registers that exist only in `emulator/dsa-model`, never on
//! real hardware. A driver must not touch them outside tests: the model uses this crate (and
//! re-exports it as `dsa_model::fault_inject`), and so do the kernel tests (kernel feature
//! `ktest`); the product driver crates do not depend on it.
//!
//! The fault-injection page lives at BAR0 + [`FAULT_INJECT_BASE`] and exists only when the
//! model is created with `fault_injection = 1`; otherwise it reads 0 and ignores writes.
//! All registers are 32 bits unless noted.

#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

/// BAR0 offset of the fault-injection page (an otherwise unused 4 KiB page).
pub const FAULT_INJECT_BASE: u64 = 0x3000;
/// Reads 0x44534146 ("FASD") when the page exists.
pub const FI_MAGIC: u64 = 0x00;
pub const FI_MAGIC_VALUE: u32 = 0x4453_4146;
/// Write: log a SWERROR with the written code (bits 7:0) as if the device had found it.
pub const FI_FORCE_SWERR: u64 = 0x04;
/// Status forced on upcoming descriptors (bits 7:0; the CR status byte to report).
pub const FI_FORCE_STATUS: u64 = 0x08;
/// Opcode filter for FI_FORCE_STATUS: bit 8 = filter enabled, bits 7:0 = opcode.
pub const FI_FORCE_OPCODE: u64 = 0x0C;
/// Number of upcoming (matching) descriptors that complete with FI_FORCE_STATUS. Written
/// last; reads back the remaining count.
pub const FI_FORCE_COUNT: u64 = 0x10;
/// Delay, in microseconds, added before each descriptor completes (0 = none).
pub const FI_DELAY_US: u64 = 0x14;
/// Write any value: halt the device (GENSTS = Halted, INTCAUSE.4) as on a fatal error.
pub const FI_FORCE_HALT: u64 = 0x18;
/// Trace-event kinds of injections (`DSA_TRACE_INJECT` a0).
pub mod inject_kind {
    pub const SWERR: u64 = 1;
    pub const STATUS: u64 = 2;
    pub const DELAY: u64 = 3;
    pub const HALT: u64 = 4;
}
