//! Dev-only test support for everything that runs on the DSA model on the host: the
//! model's own tests (`emulator/dsa-model/tests`), the DSA driver's (`drivers/dsa/tests`) and
//! the IMS irqchip's (`drivers/ims/tests`). Never a dependency of product code.
//!
//! * [`sim`]: the simulated platform ([`sim::SimPlatform`]): host memory behind per-address-
//!   space page maps (no PASID and per PASID), the device's interrupts, traces.
//! * [`driver`]: the DSA driver's hardware traits over a model device on that platform
//!   ([`driver::Rig`]), deterministic or with worker threads.

pub mod alloc_count;
pub mod driver;
pub mod sim;
