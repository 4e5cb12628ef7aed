//! The fuzz targets: one per kind of untrusted input. A target takes any bytes and must
//! not panic; where the parsers promise a property (e.g. a normalised memory map is
//! sorted and within the address limit), the target asserts it too.

mod accel_config;
mod acpi;
mod bootinfo;
mod cmdline;
mod dmar;
mod dsa_regs;
mod memmap;
mod pci_caps;
mod userelf;
mod usersubmit;
mod vtd_regs;
mod workload;

/// One fuzz target.
pub struct Target {
    /// Name on the command line and corpus directory.
    pub name: &'static str,
    /// What it drives.
    pub about: &'static str,
    /// Runs one input.
    pub run: fn(&[u8]),
    /// Tokens the mutator inserts (text formats).
    pub dict: &'static [&'static [u8]],
}

pub const ALL: &[Target] = &[
    Target {
        name: "acpi",
        about: "ACPI table checks (klib::acpi): header, RSDP, RSDT/XSDT, MADT, MCFG, FADT, HPET, address ranges",
        run: acpi::run,
        dict: &[],
    },
    Target {
        name: "dmar",
        about: "DMAR parser and device-to-unit map (vtd::dmar)",
        run: dmar::run,
        dict: &[],
    },
    Target {
        name: "bootinfo",
        about: "PVH start info and Multiboot2 information (boot::parse) and the memory map it yields",
        run: bootinfo::run,
        dict: &[],
    },
    Target {
        name: "memmap",
        about: "memory map entries: normalise, clip, free ranges (boot::memmap)",
        run: memmap::run,
        dict: &[],
    },
    Target {
        name: "cmdline",
        about: "kernel command line: tokens, flags, numbers, the boot check, console= (boot::cmdline)",
        run: cmdline::run,
        dict: cmdline::DICT,
    },
    Target {
        name: "accel_config",
        about: "accel-config JSON (dsa::AccelConfig) resolved and validated against a device's capabilities",
        run: accel_config::run,
        dict: accel_config::DICT,
    },
    Target {
        name: "workload",
        about: "workload= specs (bench::workload) and their cases",
        run: workload::run,
        dict: workload::DICT,
    },
    Target {
        name: "pci_caps",
        about: "PCI enumeration, BARs, capability and extended-capability lists, MSI/MSI-X, PASID over a fake config space",
        run: pci_caps::run,
        dict: &[],
    },
    Target {
        name: "dsa_regs",
        about: "DSA capability registers (dsa::Capabilities::read) and the default layout against them",
        run: dsa_regs::run,
        dict: &[],
    },
    Target {
        name: "vtd_regs",
        about: "VT-d CAP/ECAP and configuration (vtd::RemappingUnit::new), then bring-up, mapping and faults on the fake unit",
        run: vtd_regs::run,
        dict: &[],
    },
    Target {
        name: "userelf",
        about: "a ring-3 program's ELF image (klib::userelf), checked against the loader's promises and a reference reader",
        run: userelf::run,
        dict: &[],
    },
    Target {
        name: "usersubmit",
        about: "a DSA descriptor from ring 3 (klib::usersubmit), checked against the forced fields and a reference validator",
        run: usersubmit::run,
        dict: &[],
    },
];

/// Little-endian integer readers that never fail (missing bytes read as 0), for targets
/// that take parameters from their input.
pub struct Bytes<'a>(pub &'a [u8]);

impl Bytes<'_> {
    pub fn u8(&mut self) -> u8 {
        let (v, rest) = self.0.split_first().map_or((0, &[][..]), |(v, r)| (*v, r));
        self.0 = rest;
        v
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

/// Sets an ACPI-style table's length field (bytes 4..8) to its size and its checksum byte
/// so the bytes sum to 0, as `flags` asks (bit 0: length, bit 1: checksum): mutations
/// then reach past the first checks.
pub fn fix_table(t: &mut [u8], flags: u8, checksum_at: usize) {
    if flags & 1 != 0 && t.len() >= 8 {
        let n = t.len() as u32;
        t[4..8].copy_from_slice(&n.to_le_bytes());
    }
    if flags & 2 != 0 && t.len() > checksum_at {
        t[checksum_at] = 0;
        let sum = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        t[checksum_at] = 0u8.wrapping_sub(sum);
    }
}

/// `n` inputs mutated from target `name`'s committed corpus with seed 1, as the harness
/// derives them (for tests that check what a target's runs reach).
#[cfg(test)]
pub fn mutated(name: &str, n: usize) -> Vec<Vec<u8>> {
    use crate::mutate::{Rng, mutate};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut corpus: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    corpus.sort();
    let mut rng = Rng::new(1);
    (0..n)
        .map(|_| {
            let mut input = corpus[rng.below(corpus.len())].clone();
            let other = corpus[rng.below(corpus.len())].clone();
            mutate(&mut rng, &mut input, &other, &[]);
            input
        })
        .collect()
}
