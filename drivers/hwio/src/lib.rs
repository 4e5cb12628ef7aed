//! The one hardware-access vocabulary of the driver crates.
//!
//! Every driver crate reaches hardware through these traits; the kernel implements them over
//! its uncached MMIO mappings, its calibrated clock and its frame allocator, and host tests
//! implement them with fakes or the DSA model.
//!
//! * [`Registers`]: a window of device registers (a BAR, a VT-d unit, an ECAM window), accessed
//!   by byte offset with exactly one access of the named width. Offsets and sizes are `u64`
//!   everywhere (bus quantities: BAR sizes and the table offsets that capability registers
//!   report are 64-bit); a window implementation converts once, at its leaf.
//! * [`Reg`] and [`register_map!`]: each register declared once with its offset, its value
//!   type (which fixes the width) and its access, so that a call site reads and writes typed
//!   values ([`RegistersExt::read`], [`RegistersExt::write`]) and cannot pair an offset with
//!   the wrong type or write a read-only register. [`Block`] and [`Table`] reach registers of
//!   entries whose base comes from the device (DSA's WQCFG, GRPCFG and IMS tables, VT-d's
//!   fault-recording registers).
//! * [`Clock`] and [`wait_until`]: the one bounded wait on hardware.
//! * [`dma`]: DMA memory, by capability: [`dma::DmaMemory`] hands out buffers the driver reaches
//!   through CPU pointers in a chosen address space; [`dma::UnitMemory`] is memory a remapping
//!   unit reads by physical address that the driver reaches only through checked accessors.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, clippy::cast_possible_truncation)]

pub mod dma;
mod regs;
mod wait;

pub use regs::{
    Block, Raw, Reg, Registers, RegistersExt, Table, Value, access, check_layout, width_of,
};
pub use wait::{Clock, Timeout, wait_until};
