//! Hardware-independent building blocks of the kernel.
//!
//! Everything here is plain logic over memory the caller hands in, so it runs under
//! `cargo test` on the host as well as inside the kernel. The kernel wraps each piece
//! with its locking and its view of physical memory (identity-mapped: virtual == physical).
//! Host tests of other crates may use these types as fakes (e.g. [`vectors::VectorMatrix`]
//! stands in for the kernel's vector allocator).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod acpi;
pub mod buddy;
pub mod heap;
pub mod json;
pub mod userelf;
pub mod usersubmit;
pub mod vectors;

/// Size of a base page / frame.
pub const PAGE_SIZE: u64 = 4096;

/// Rounds `x` up to a multiple of `align` (a power of two). Returns `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}
