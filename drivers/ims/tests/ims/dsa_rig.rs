//! The DSA driver over the DSA model on the fake machine, through the shared test-support
//! crate `dsa-rig`: host memory behind per-PASID IOMMU address spaces (the driver's CPU
//! pointers and the device's DMA see the same bytes), the model's IMS messages delivered
//! through the machine's interrupt remapping with the device's requester ID, and either
//! deterministic execution or worker threads.

use crate::machine::Machine;
use dsa::{ConfigSource, Device, DeviceOptions};
use dsa_model::Config;
pub use dsa_rig::driver::{Exec, Rig, model_cfg};
use dsa_rig::sim::SimPlatform;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

pub struct DsaRig {
    // First: dropping it stops the model and joins its workers before the driver goes.
    rig: Rig,
    pub plat: Arc<SimPlatform>,
    pub dev: Arc<Device>,
    /// Deterministic mode: execute each descriptor at its portal store.
    pub sync_portals: Arc<AtomicBool>,
}

impl DsaRig {
    pub fn new(machine: &Arc<Machine>, sid: u16, cfg: Config, exec: Exec) -> DsaRig {
        let rig = Rig::new(cfg, exec, dsa_rig::driver::ALL_PCI);
        let m = machine.clone();
        rig.plat.on_msi(move |addr, data| m.msi(sid, addr, data));
        let opts = DeviceOptions {
            max_submitters: 4096,
            submit_timeout_ns: 2_000_000_000,
            ..DeviceOptions::default()
        };
        // MSI-X messages are only counted here: these tests complete through IMS.
        let dev = Device::new(rig.hardware(), u32::from(sid), ConfigSource::Default, opts)
            .expect("bring-up");
        DsaRig {
            plat: rig.plat.clone(),
            dev,
            sync_portals: rig.portal.sync.clone(),
            rig,
        }
    }

    /// Deterministic mode: execute everything queued (completions raise interrupts here).
    pub fn run(&self) {
        self.rig.run();
    }

    /// The shared WQ of the default configuration.
    pub fn shared_wq(&self) -> u8 {
        self.dev
            .wq_of_mode(dsa_spec::WqMode::Shared)
            .expect("a shared WQ")
            .id()
    }

    /// Whether the model still has work queued or executing.
    pub fn busy(&self) -> bool {
        self.rig.model.busy()
    }

    /// Writes a fault-injection register of the model.
    pub fn inject(&self, reg: u64, v: u32) {
        self.rig.inject(reg, v);
    }
}
