//! 32-bit entry (PVH note + Multiboot2 header) into long mode, and pure parsers of the boot information
#![cfg_attr(not(test), no_std)]
