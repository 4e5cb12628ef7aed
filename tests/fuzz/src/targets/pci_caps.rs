//! PCI configuration spaces from the input (up to four functions, one of them behind a
//! bridge) on the fake config space: enumeration, BAR sizing, the standard and extended
//! capability walkers, MSI, MSI-X (table placement against the BARs), PASID, ATS, PRI and
//! DVSECs, as the kernel runs them at boot.

use pci::ext_caps::{AtsCap, ExtCapabilityWalker, PasidCap, PriCap, dvsecs};
use pci::fake::FakeConfigSpace;
use pci::msi::{MsiCap, MsixCap};
use pci::{SegmentRange, bar, caps::CapabilityWalker, enumerate};
use pci_types::PciAddress;

const SLOTS: [(u8, u8, u8); 4] = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (0, 0, 1)];
/// Config bytes per function taken from the input, then 24 bytes of BAR write masks.
const CHUNK: usize = 4096 + 24;

pub fn run(data: &[u8]) {
    let fake = FakeConfigSpace::new();
    for (i, &(b, d, f)) in SLOTS.iter().enumerate() {
        let Some(chunk) = data.get(i * CHUNK..) else {
            break;
        };
        let chunk = &chunk[..chunk.len().min(CHUNK)];
        let addr = PciAddress::new(0, b, d, f);
        fake.add_function(addr, 0x8086, 0x0b25, (8, 0x80, 0), 0);
        fake.with(addr, |func| {
            let n = chunk.len().min(4096);
            func.cfg[..n].copy_from_slice(&chunk[..n]);
            for (k, m) in chunk.get(4096..).unwrap_or(&[]).chunks_exact(4).enumerate() {
                let m = u32::from_le_bytes([m[0], m[1], m[2], m[3]]);
                func.set_wmask32(0x10 + 4 * k, m);
            }
            // Bus numbers stay writable so bridge programming has an effect.
            for o in 0x18..0x1b {
                func.wmask[o] = 0xff;
            }
        });
    }
    let e = enumerate(
        &fake,
        &[SegmentRange {
            segment: 0,
            bus_start: 0,
            bus_end: 3,
        }],
    );
    for func in &e.functions {
        let a = func.addr;
        let _ = func.requester_id();
        let _ = e.dma_alias(a);
        let _ = e.parent_bridge(a);
        for c in CapabilityWalker::new(&fake, a) {
            if c.is_err() {
                break;
            }
        }
        for c in ExtCapabilityWalker::new(&fake, a) {
            if c.is_err() {
                break;
            }
        }
        let probe = bar::probe_bars(&fake, a, func.header_type);
        if let Ok(Some(m)) = MsiCap::find(&fake, a) {
            let _ = (m.capable_vectors(), m.is_64bit(), m.mask_offset());
            let _ = m.message(&fake);
        }
        if let Ok(Some(x)) = MsixCap::find(&fake, a, &probe.bars) {
            assert!(x.table_size >= 1 && x.table_size <= 2048);
            for i in [0, 1, x.table_size - 1, x.table_size] {
                let _ = x.entry_offset(i);
            }
        }
        if let Ok(Some(p)) = PasidCap::find(&fake, a) {
            assert!(p.max_pasid_width() <= 20);
            let _ = p.control(&fake);
        }
        let _ = AtsCap::find(&fake, a);
        let _ = PriCap::find(&fake, a);
        let _ = dvsecs(&fake, a);
        for b in &func.bars {
            let _ = b.end();
        }
        let _ = e.bridge_buses(0, a.bus(), a.device(), a.function());
    }
}
