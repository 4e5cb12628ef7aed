//! ACPI tables.

use alloc::vec::Vec;

use klib::acpi::{self as check, AcpiFormatError};

use crate::ktest;

ktest!(
    fn required_tables_are_found_and_valid() {
        let info = crate::acpi::info().expect("ACPI initialised");
        for sig in [b"FACP", b"APIC"] {
            let b = crate::acpi::table_bytes(sig)
                .unwrap_or_else(|| panic!("no {} table", core::str::from_utf8(sig).unwrap()));
            let h = check::validate_table(b).unwrap();
            assert_eq!(&h.signature.0, sig);
            assert_eq!(h.length as usize, b.len());
        }
        assert!(crate::acpi::table_bytes(b"ZZZZ").is_none());
        assert!(
            info.rejected.is_empty(),
            "QEMU's tables are all valid: {:?}",
            info.rejected
        );
        assert!(!info.ioapics.is_empty(), "MADT lists an I/O APIC");
    }
);

ktest!(
    fn mcfg_ecam_reaches_the_host_bridge() -> ktest::Outcome {
        let Some(seg) = crate::acpi::info().and_then(|i| i.ecam.first().copied()) else {
            return ktest::skip("no MCFG");
        };
        let a = seg.config_address(0, 0, 0).expect("bus 0 decoded");
        crate::mm::map_mmio(a, 4096).unwrap();
        // SAFETY: ECAM space of 00:00.0, mapped uncached; a 32-bit config read.
        let id = unsafe { (a as *const u32).read_volatile() };
        assert_ne!(
            id & 0xffff,
            0xffff,
            "no device at 00:00.0 through ECAM {:#x}",
            seg.base
        );
        crate::println!(
            "ktest-info: 00:00.0 vendor {:#06x} device {:#06x}",
            id & 0xffff,
            id >> 16
        );
        ktest::Outcome::Pass
    }
);

ktest!(
    fn malformed_copies_of_the_madt_are_rejected() {
        let real = crate::acpi::table_bytes(b"APIC").unwrap();
        check::check_madt(real).unwrap();
        let fix = |t: &mut Vec<u8>| {
            t[9] = 0;
            t[9] = 0u8.wrapping_sub(check::sum(t));
        };
        // First entry with length 0.
        let mut t = real.to_vec();
        t[check::MADT_ENTRIES_OFFSET + 1] = 0;
        fix(&mut t);
        assert!(matches!(
            check::check_madt(&t),
            Err(AcpiFormatError::BadEntry {
                offset: 44,
                length: 0,
                ..
            })
        ));
        // Bad checksum.
        let mut t = real.to_vec();
        t[40] ^= 0xff;
        assert!(matches!(
            check::check_madt(&t),
            Err(AcpiFormatError::BadChecksum { .. })
        ));
        // Length field beyond the bytes.
        let mut t = real.to_vec();
        let l = t.len() as u32 + 8;
        t[4..8].copy_from_slice(&l.to_le_bytes());
        assert!(matches!(
            check::check_madt(&t),
            Err(AcpiFormatError::Truncated { .. })
        ));
    }
);

ktest!(
    fn dmar_bytes_are_available_for_vtd() -> ktest::Outcome {
        let Some(d) = crate::acpi::table_bytes(b"DMAR") else {
            return ktest::skip("no DMAR (no intel-iommu)");
        };
        assert_eq!(&d[0..4], b"DMAR");
        assert!(d.len() >= 48);
        crate::println!(
            "ktest-info: DMAR {} bytes, host address width {}",
            d.len(),
            d[36] as u32 + 1
        );
        ktest::Outcome::Pass
    }
);
