//! Test rig: the driver on top of `dsa-model` through the shared test-support crate
//! `dsa-rig` (simulated IOMMU address spaces over host memory, so the driver's CPU pointers
//! and the device's DMA see the same bytes; MSI-X dispatched straight into the driver; either
//! deterministic execution or worker threads), plus helpers of these tests.

#![allow(dead_code)]

use dsa::{ConfigSource, Device, DeviceOptions};
pub use dsa_rig::driver::{ALL_PCI, Exec, Rig, TestBuffer, model_cfg};
pub use dsa_rig::sim::SimPlatform;
use std::sync::Arc;

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// A standard rig with the driver up on the default configuration.
pub fn up(exec: Exec) -> (Rig, Arc<Device>) {
    let rig = Rig::new(model_cfg(), exec, ALL_PCI);
    let dev = rig
        .driver(0, ConfigSource::Default, test_options())
        .expect("bring-up");
    (rig, dev)
}

/// The driver's defaults, with commands (a drain waits for the engine threads) bounded like
/// the tests' own waits: only a hang reaches [`WAIT`].
pub fn test_options() -> DeviceOptions {
    DeviceOptions {
        command_timeout_ns: WAIT,
        ..DeviceOptions::default()
    }
}

/// [`up`] on a [`Rig::held`] rig: the engine threads start at [`Rig::start_workers`].
pub fn up_held() -> (Rig, Arc<Device>) {
    let rig = Rig::held(model_cfg(), ALL_PCI);
    let dev = rig
        .driver(0, ConfigSource::Default, test_options())
        .expect("bring-up");
    (rig, dev)
}

pub const SECOND: u64 = 1_000_000_000;
/// Bound on a test's wait for an operation: only a hang reaches it (a loaded host can stall
/// a test thread or a worker for seconds; no test asserts that anything happens quickly).
pub const WAIT: u64 = 60 * SECOND;
