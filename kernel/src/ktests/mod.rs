//! Kernel tests (run with `ktest` on the command line; see [`crate::ktest`]).

mod acpi;
mod arch;
mod direct;
mod dsa;
mod framework;
mod ims;
mod instructions;
mod iommu;
mod irq;
mod mm;
mod pci;
mod proc;
mod smp;
pub mod sva_suite;
mod sync;
mod time;

/// Bound on a test's wait for one event (an interrupt, a completion, a closure run on another
/// CPU, a device command): only a hang reaches it. QEMU's TCG vCPUs and device threads can be
/// descheduled for seconds on a loaded host, so no test waits for less, and none asserts
/// that something happened *quickly*.
const HANG: core::time::Duration = core::time::Duration::from_secs(60);
