//! Kernel tests (run with `ktest` on the command line; see [`crate::ktest`]).

mod acpi;
mod arch;
mod dsa;
mod framework;
mod ims;
mod instructions;
mod iommu;
mod irq;
mod mm;
mod pci;
mod smp;
mod sync;
mod time;
