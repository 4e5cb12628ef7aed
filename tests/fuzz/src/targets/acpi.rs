//! klib's ACPI checks, as the kernel applies them to whatever the firmware lists.

use klib::acpi::{self as a, Signature};

use super::{Bytes, fix_table};

const SIGNATURES: [&[u8; 4]; 8] = [
    b"APIC", b"MCFG", b"FACP", b"HPET", b"XSDT", b"RSDT", b"DSDT", b"DMAR",
];

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut t = rest.to_vec();
    // Bits 2..5 pick a signature to stamp on (so each checker sees its own table).
    if flags & 4 != 0 && t.len() >= 4 {
        t[..4].copy_from_slice(SIGNATURES[usize::from(flags >> 3) & 7]);
    }
    fix_table(&mut t, flags, 9);
    let limit = 1u64 << (32 + u32::from(flags >> 6) * 7); // 2^32, 2^39, 2^46, 2^53
    let _ = a::parse_header(&t);
    if let Ok(h) = a::validate_table(&t) {
        assert!(h.length as usize <= t.len());
    }
    let _ = a::check_madt(&t);
    let _ = a::check_mcfg(&t);
    let _ = a::check_fadt(&t);
    if let Ok(Some(d)) = a::fadt_dsdt(&t) {
        let _ = a::check_phys_range("DSDT", d, 36, limit);
    }
    if let Ok(h) = a::parse_hpet(&t) {
        assert_ne!(h.base_address, 0);
        let _ = a::check_phys_range("HPET", h.base_address, a::HPET_REGISTER_BLOCK, limit);
    }
    for entry in [4, 8] {
        if let Ok(ptrs) = a::root_pointers(&t, entry) {
            for &p in &ptrs {
                let _ = a::check_phys_range("table", p, 36, limit);
            }
            // The rebuilt XSDT the kernel hands the `acpi` crate must itself validate.
            if let Ok(h) = a::parse_header(&t) {
                let x = a::build_xsdt(&h, &ptrs);
                assert_eq!(a::root_pointers(&x, 8).as_deref(), Ok(&ptrs[..]));
            }
        }
    }
    // The RSDP: its own two checksums.
    let mut r = rest.to_vec();
    if flags & 2 != 0 && r.len() >= 20 {
        r[..8].copy_from_slice(b"RSD PTR ");
        fix_table(&mut r[..20], 2, 8);
        if r.len() >= 36 {
            let l = r.len().min(36);
            fix_table(&mut r[..l], 2, 32);
        }
    }
    let _ = a::parse_rsdp(&r);
    // Signatures of a root table's tables: repeated single tables.
    let sigs: Vec<Signature> = rest
        .chunks_exact(4)
        .map(|c| Signature([c[0], c[1], c[2], c[3]]))
        .collect();
    let _ = a::repeated_single_tables(&sigs);
    let mut b = Bytes(rest);
    let (addr, len) = (b.u64(), b.u64());
    let _ = a::check_phys_range("range", addr, len, limit);
    // MCFG allocations as the kernel checks them.
    if let Ok(h) = a::check_mcfg(&t) {
        for e in t[a::MCFG_MIN_LEN..h.length as usize].chunks_exact(16) {
            let base = u64::from_le_bytes(e[..8].try_into().unwrap_or([0; 8]));
            if let Ok((s, end)) = a::ecam_window(base, e[10], e[11], limit) {
                assert!(s < end && end <= limit);
            }
        }
    }
}
