//! The host-tested part of the kernel's bench flavour (kernel feature `bench`): only the
//! workload runner (`kernel/src/workload`) and the kernel tests use it; the product kernel
//! does not link it.
//!
//! * [`workload`]: the `workload=` spec syntax and the cases it expands to.
//! * [`reference`](mod@reference): CPU implementations of every DSA operation, which the
//!   runner and the tests check device results against.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;

pub mod reference;
pub mod workload;
