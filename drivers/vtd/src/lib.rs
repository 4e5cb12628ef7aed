//! Intel VT-d: DMAR parsing, scalable-mode tables, queued invalidation, faults, interrupt remapping.
//!
//! * [`spec`]: the one typed definition of the registers and in-memory structures.
//! * [`dmar`]: bounds-checked ACPI DMAR parser and the device → remapping-unit map.
//! * [`unit::RemappingUnit`]: the driver of one remapping unit, generic over `hwio`'s
//!   [`Registers`](hwio::Registers) (MMIO), [`UnitMemory`](hwio::dma::UnitMemory) (table
//!   memory) and [`Clock`](hwio::Clock) (bounded waits), which the kernel implements; host
//!   tests use fakes.
//!
//! § numbers in this crate are those of the Intel VT-d Architecture Specification rev 4.1
//! (order number D51397); DMAR is its chapter 8.
//!
//! Kernel glue, in order:
//! 1. `Dmar::parse(bytes)`; for each DRHD map ≥ 4 KiB of `register_base` uncached behind a
//!    [`Registers`](hwio::Registers); [`DeviceUnitMap::build`] with the PCI enumeration's bridge bus numbers.
//! 2. [`RemappingUnit::new`] (capability checks), [`RemappingUnit::setup`] (QI, IR, root table),
//!    [`RemappingUnit::prepare_device`] for every device, [`RemappingUnit::enable_translation`]
//!    (or [`RemappingUnit::init`] = setup + TE),
//!    [`RemappingUnit::configure_fault_event`] with a vector from the vector allocator; the
//!    vector's handler calls [`RemappingUnit::handle_faults`].
//! 3. Interrupts: [`RemappingUnit::alloc_irte`] + [`RemappingUnit::msi_message`] /
//!    [`RemappingUnit::ioapic_rte`] before enabling any device interrupt.
//! 4. DMA: [`RemappingUnit::create_address_space`], `map`/`unmap`, `attach` (PASID-tagged) or
//!    `attach_rid_pasid` (requests without PASID), `revoke`, `destroy_address_space`.
//!
//! The unit is not internally locked: wrap it in one lock that the fault handler also takes
//! with interrupts disabled (invalidation waits are short but must not be interrupted by a
//! handler spinning on the same lock).
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;
/// The fakes share their state through `std`'s mutex (they are `Send + Sync`).
#[cfg(all(feature = "test-util", not(test)))]
extern crate std;

pub mod dmar;
pub mod error;
pub mod pagetable;
pub mod spec;
pub mod unit;

/// Fake register block, DMA memory and clock (host tests; the fuzz harness with
/// `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
#[cfg(test)]
mod tests;

pub use dmar::{Bdf, DeviceUnitMap, Dmar, DmarError};
pub use error::VtdError;
pub use pagetable::{Perm, Translation};
pub use unit::{
    AddressSpaceId, Config, FaultBatch, FaultCounters, IR_TABLE_MAX_ENTRIES, IrTableSize,
    IrteHandle, RemappingUnit, RidDefault, SpaceKind, StageKind, WalkTrace, ir_table_size_for,
};
