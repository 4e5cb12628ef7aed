//! Kernel tests (run with `ktest` on the command line; see [`crate::ktest`]).

mod acpi;
mod arch;
mod framework;
mod irq;
mod mm;
mod smp;
mod sync;
mod time;
