//! Boot: the 32-bit entry shared by PVH and Multiboot2 that switches to long mode, and
//! pure, host-tested parsers of what the boot loader hands over (boot information,
//! memory map, command line).
//!
//! Entry contract (see `entry.rs`): the image carries a PVH ELF note and a Multiboot2
//! header that both point at `boot_entry32`. The stub identity-maps the first 4 GiB with
//! 2 MiB pages, enables long mode and calls the kernel's
//! `extern "C" fn kernel_main64(magic: u32, info: u32) -> !` on a 128 KiB boot stack,
//! with `magic` = EAX at entry (Multiboot2 magic, undefined under PVH) and `info` = EBX.
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_code)]
#![warn(missing_docs, clippy::cast_possible_truncation)]

pub mod cmdline;
pub mod info;
pub mod memmap;

// The 32-bit entry and its assembly: the crate's only unsafe code.
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
#[allow(unsafe_code)]
mod entry;

#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub use entry::{BOOT_STACK_SIZE, boot_stack_range};

pub use info::{BootError, BootInfo, PhysMemory, Protocol, RsdpSource, parse};
