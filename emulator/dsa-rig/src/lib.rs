//! Dev-only test support for everything that runs on the DSA model on the host: the
//! model's own tests (`emulator/dsa-model/tests`), the DSA driver's (`drivers/dsa/tests`) and
//! the IMS irqchip's (`drivers/ims/tests`). Never a dependency of product code.
//!
//! * [`sim`]: the simulated platform ([`sim::SimPlatform`]): memory per address space (no
//!   PASID and per PASID), interrupts, traces.

pub mod sim;
