//! DSA capability registers as a device reports them: the DSA model's BAR0 register image
//! (a real device's values), changed by the input, read and validated by
//! `dsa::Capabilities::read`; a device that passes gets the default layout validated
//! against it, and the table offsets the driver will use computed.

use std::sync::{Arc, OnceLock};

use dsa::hw::{PciInfo, Registers};
use dsa::{Capabilities, DeviceConfig};

use super::Bytes;

/// Bytes of fixed registers (VERSION … SWERROR).
pub const FIXED: usize = 0x100;

struct Quiet;

impl dsa_model::Platform for Quiet {
    fn dma_read(&self, _: dsa_model::DmaSpace, _: u64, _: &mut [u8]) -> usize {
        0
    }
    fn dma_write(&self, _: dsa_model::DmaSpace, _: u64, _: &[u8]) -> usize {
        0
    }
    fn msix_notify(&self, _: u32) {}
    fn send_msi(&self, _: u64, _: u32) {}
}

/// The model's fixed registers, BAR0 size and MSI-X entry count (default configuration).
pub fn reference() -> &'static (Vec<u8>, u64, u16) {
    static R: OnceLock<(Vec<u8>, u64, u16)> = OnceLock::new();
    R.get_or_init(|| {
        let dev = dsa_model::Device::new(dsa_model::Config::default(), Arc::new(Quiet))
            .expect("the default model configuration is valid");
        let mut image = vec![0u8; FIXED];
        for off in (0..FIXED).step_by(4) {
            let v = dev.bar0_read(off as u64, 4) as u32;
            image[off..off + 4].copy_from_slice(&v.to_le_bytes());
        }
        let l = dev.layout();
        (image, l.bar0_size, l.msix_entries as u16)
    })
}

/// A register block over an image: fixed registers from it, everything beyond reads 0.
pub struct Image {
    pub regs: Vec<u8>,
    pub size: u64,
}

impl Registers for Image {
    fn size(&self) -> u64 {
        self.size
    }
    fn read32(&self, off: u64) -> u32 {
        let o = off as usize;
        self.regs
            .get(o..o + 4)
            .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or([0; 4])))
    }
    fn read64(&self, off: u64) -> u64 {
        u64::from(self.read32(off)) | u64::from(self.read32(off + 4)) << 32
    }
    fn write32(&self, _: u64, _: u32) {}
    fn write64(&self, _: u64, _: u64) {}
}

/// The reference device's capabilities.
pub fn reference_caps() -> &'static Capabilities {
    static C: OnceLock<Capabilities> = OnceLock::new();
    C.get_or_init(|| {
        let (regs, size, msix) = reference().clone();
        Capabilities::read(&Image { regs, size }, msix).expect("the model's registers validate")
    })
}

pub fn run(data: &[u8]) {
    let (image, size, msix) = reference();
    let mut b = Bytes(data);
    let flags = b.u8();
    let msix = if flags & 1 != 0 { b.u16() } else { *msix };
    let size = match flags >> 1 & 3 {
        0 => *size,
        1 => u64::from(b.u32()),
        2 => b.u64(),
        _ => 1 << (b.u8() % 64),
    };
    // The rest of the input: XOR over the register image (0 bytes keep the model's value).
    let mut regs = image.clone();
    for (r, x) in regs.iter_mut().zip(b.0) {
        *r ^= x;
    }
    let Ok(caps) = Capabilities::read(&Image { regs, size }, msix) else {
        return;
    };
    let _ = (
        caps.max_transfer(),
        caps.max_batch(),
        caps.requires_int_handles(),
    );
    for g in 0..caps.num_groups {
        assert!(caps.grpcfg_off(g) < size);
    }
    for w in 0..caps.num_wqs {
        assert!(caps.wqcfg_off(w) < size);
    }
    for e in 0..msix {
        let _ = caps.msixperm_off(e);
    }
    for pasid in [false, true] {
        let pci = PciInfo {
            bus_master: true,
            pasid_enabled: pasid,
            privileged_mode: pasid,
            msix_entries: msix,
        };
        let cfg = DeviceConfig::default_for(&caps, &pci);
        let _ = cfg.validate(&caps, &pci);
    }
}
