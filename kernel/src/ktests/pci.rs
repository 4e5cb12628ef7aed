//! PCI enumeration and the kernel's PCI API (`crate::pci`).

use alloc::vec::Vec;

use hwio::Registers as _;

use ::pci::BarKind;
use ::pci::msi::MsiMessage;

use crate::ktest;
use crate::pci::{self, PciError};

ktest!(
    fn inventory_matches_configuration_space() -> ktest::Outcome {
        let devs: Vec<pci::Device> = pci::devices().collect();
        if devs.is_empty() {
            return ktest::skip("no PCI functions (no MCFG)");
        }
        for d in &devs {
            let f = d.info();
            let id = d.config_read(0).unwrap();
            assert_eq!(
                (id as u16, (id >> 16) as u16),
                (f.vendor, f.device),
                "{}",
                f.addr
            );
            let class = d.config_read(8).unwrap();
            assert_eq!(
                ((class >> 24) as u8, (class >> 16) as u8),
                (f.class, f.subclass),
                "{}",
                f.addr
            );
            // BARs: naturally aligned, no overlap within the function.
            for (i, b) in f.bars.iter().enumerate() {
                assert!(b.size.is_power_of_two(), "{} BAR {}", f.addr, b.slot);
                if b.address != 0 {
                    assert_eq!(b.address % b.size, 0, "{} BAR {} aligned", f.addr, b.slot);
                }
                for o in &f.bars[i + 1..] {
                    let disjoint = b.kind == BarKind::Io
                        || o.kind == BarKind::Io
                        || b.end() <= o.address
                        || o.end() <= b.address;
                    assert!(
                        disjoint,
                        "{} BARs {} and {} overlap",
                        f.addr, b.slot, o.slot
                    );
                }
            }
            // Every function below a bridge sits on a bus the bridge forwards.
            if f.addr.bus() != 0 {
                let parent = devs.iter().find(|p| {
                    p.info().bridge.is_some_and(|br| {
                        p.address().segment() == f.addr.segment()
                            && (br.secondary..=br.subordinate).contains(&f.addr.bus())
                    })
                });
                assert!(parent.is_some(), "{} has no bridge above it", f.addr);
            }
        }
        for d in &devs {
            let f = d.info();
            assert!(
                pci::find_class(f.class, Some(f.subclass)).any(|x| x.address() == f.addr),
                "find_class misses {}",
                f.addr
            );
            // The library walkers over the same configuration access agree with the inventory.
            let acc = pci::config_access().unwrap();
            for (id, off) in &f.caps {
                let c = ::pci::caps::find_capability(acc, f.addr, *id)
                    .unwrap()
                    .unwrap();
                assert!(c.offset <= *off, "{} cap {id:#x}", f.addr);
            }
        }
        let bridges = devs.iter().filter(|d| d.info().is_bridge()).count();
        for d in &devs {
            let a = d.dma_alias();
            // An alias is the function itself, a bridge above it, or (bus, 00.0) of a bus
            // above it; never on a deeper bus.
            assert!(a.bus() <= d.address().bus(), "{} alias {a}", d.address());
            if a != d.address() {
                crate::println!("ktest-info: {} DMA alias {a}", d.address());
            }
        }
        crate::println!(
            "ktest-info: {} PCI functions, {} bridges, deepest bus {:#x}",
            devs.len(),
            bridges,
            devs.iter().map(|d| d.address().bus()).max().unwrap_or(0)
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn api_errors_are_specific() -> ktest::Outcome {
        let Some(d) = pci::devices().next() else {
            return ktest::skip("no PCI functions");
        };
        let a = d.address();
        assert_eq!(
            d.config_read(2),
            Err(PciError::BadConfigOffset { addr: a, offset: 2 })
        );
        assert_eq!(
            d.config_read(0x1000),
            Err(PciError::BadConfigOffset {
                addr: a,
                offset: 0x1000
            })
        );
        assert_eq!(
            d.map_bar(6).unwrap_err(),
            PciError::NoSuchBar { addr: a, slot: 6 }
        );
        if let Some((d, slot)) = pci::devices().find_map(|d| {
            d.info()
                .bars
                .iter()
                .find(|b| b.kind == BarKind::Io)
                .map(|b| (d, b.slot))
        }) {
            assert_eq!(
                d.map_bar(slot).unwrap_err(),
                PciError::IoBar {
                    addr: d.address(),
                    slot
                }
            );
        }
        assert!(pci::find(pci::PciAddress::new(0xffff, 0xff, 31, 7)).is_none());
        ktest::Outcome::Pass
    }
);

ktest!(
    fn every_memory_bar_maps_and_answers() -> ktest::Outcome {
        let mut mapped = 0;
        let mut high = 0;
        for d in pci::devices() {
            for b in d
                .info()
                .bars
                .iter()
                .filter(|b| b.is_memory() && b.address != 0)
            {
                let m = d.map_bar(b.slot).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!((m.phys(), m.len() as u64), (b.address, b.size));
                assert!(!m.is_empty() && m.as_ptr() as u64 == b.address);
                assert!(crate::mm::translate(b.address).is_some());
                assert!(crate::mm::translate(b.address + b.size - 1).is_some());
                // Registers are not read (side effects on real devices); outside the window
                // an access never reaches the bus.
                assert_eq!(m.read32(b.size), u32::MAX);
                mapped += 1;
                if b.address >= 1 << 32 {
                    high += 1;
                }
            }
        }
        if mapped == 0 {
            return ktest::skip("no memory BARs");
        }
        crate::println!("ktest-info: {mapped} memory BARs mapped, {high} above 4 GiB");
        ktest::Outcome::Pass
    }
);

ktest!(
    fn msix_table_entries_are_programmed() -> ktest::Outcome {
        let Some((d, msix)) = pci::devices().find_map(|d| d.msix().ok().map(|m| (d, m))) else {
            return ktest::skip("no function with MSI-X");
        };
        let last = msix.table_size() - 1;
        let (saved, saved_mask) = msix.read_entry(last).unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000 | (0x12 << 12),
            data: 0x4321,
        };
        // Masked: the function has MSI-X disabled, and a masked entry never fires anyway.
        msix.write_entry(last, msg, true).unwrap();
        assert_eq!(
            msix.read_entry(last).unwrap(),
            (msg, true),
            "{}",
            d.address()
        );
        msix.set_entry_masked(last, true).unwrap();
        assert!(msix.write_entry(last + 1, msg, true).is_err());
        // Enable/function-mask bits reach the control register (every entry stays masked).
        let ctl = || (d.config_read(msix.cap().offset).unwrap() >> 16) as u16;
        let saved_ctl = ctl();
        msix.set_function_mask(true).unwrap();
        msix.set_enabled(true).unwrap();
        assert_eq!(ctl() & 0xc000, 0xc000, "enable + function mask");
        msix.set_enabled(saved_ctl & 0x8000 != 0).unwrap();
        msix.set_function_mask(saved_ctl & 0x4000 != 0).unwrap();
        assert_eq!(ctl() & 0xc000, saved_ctl & 0xc000);
        msix.write_entry(last, saved, saved_mask).unwrap();
        crate::println!(
            "ktest-info: {} MSI-X table ({} entries) at {:#x} programmed",
            d.address(),
            msix.table_size(),
            msix.cap().table_address
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn pasid_capability_enables_with_privileged_mode() -> ktest::Outcome {
        let ctl = |d: &pci::Device, off: u16| (d.config_read(off + 4).unwrap() >> 16) as u16;
        // Only a function whose PASID is off: toggling PASID under a running driver (an
        // enabled DSA) halts the device, as the DSA spec requires (SWERR 0x51).
        let Some((d, cap)) = pci::devices().find_map(|d| {
            d.pasid_cap()
                .ok()
                .flatten()
                .filter(|c| ctl(&d, c.offset) & 1 == 0)
                .map(|c| (d, c))
        }) else {
            return ktest::skip(
                "no function with an unused PASID capability (intel-dsa behind a root port)",
            );
        };
        let ctl = |d: &pci::Device| ctl(d, cap.offset);
        let before = ctl(&d);
        let privileged = cap
            .capability
            .contains(::pci::ext_caps::PasidCapability::PRIVILEGED);
        d.enable_pasid(privileged).unwrap();
        assert_eq!(
            ctl(&d),
            1 | if privileged { 4 } else { 0 },
            "{}",
            d.address()
        );
        d.disable_pasid().unwrap();
        assert_eq!(ctl(&d), 0);
        // The control register is writable through raw configuration writes too.
        let dw = d.config_read(cap.offset + 4).unwrap();
        d.config_write(cap.offset + 4, dw | (1 << 16)).unwrap();
        assert_eq!(ctl(&d), 1);
        d.config_write(cap.offset + 4, dw).unwrap();
        assert_eq!(ctl(&d), 0);
        // Restore what the function had (nothing else has driven it yet).
        if before & 1 != 0 {
            d.enable_pasid(before & 4 != 0).unwrap();
        }
        crate::println!(
            "ktest-info: {} PASID capability at {:#x}: width {}, privileged {}",
            d.address(),
            cap.offset,
            cap.max_pasid_width(),
            privileged
        );
        ktest::Outcome::Pass
    }
);
