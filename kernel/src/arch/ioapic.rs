//! I/O APICs: every redirection entry is masked at boot, so nothing the firmware left
//! enabled (PIT, legacy USB, …) can deliver into vectors the kernel hands out. Devices
//! here use MSI/MSI-X/IMS, not I/O APIC pins.

use crate::acpi::IoApicInfo;

const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
const REG_VERSION: u32 = 0x01;
const REDTBL_BASE: u32 = 0x10;
const REDIR_MASKED: u32 = 1 << 16;

fn read(base: u64, reg: u32) -> u32 {
    // SAFETY: the I/O APIC window was mapped uncached by `mask_all`; IOREGSEL selects
    // the register that IOWIN then reads. Callers run single-threaded during boot.
    unsafe {
        ((base + IOREGSEL) as *mut u32).write_volatile(reg);
        ((base + IOWIN) as *const u32).read_volatile()
    }
}

fn write(base: u64, reg: u32, v: u32) {
    // SAFETY: as in `read`.
    unsafe {
        ((base + IOREGSEL) as *mut u32).write_volatile(reg);
        ((base + IOWIN) as *mut u32).write_volatile(v);
    }
}

/// Masks every redirection entry of every I/O APIC. Returns the number of pins masked.
pub fn mask_all(ioapics: &[IoApicInfo]) -> Result<usize, crate::mm::MmError> {
    let mut pins = 0;
    for io in ioapics {
        crate::mm::map_mmio(io.address, 0x20)?;
        let entries = ((read(io.address, REG_VERSION) >> 16) & 0xff) as usize + 1;
        for i in 0..entries as u32 {
            let low = read(io.address, REDTBL_BASE + 2 * i);
            write(io.address, REDTBL_BASE + 2 * i, low | REDIR_MASKED);
        }
        log::debug!(
            "I/O APIC {} at {:#x}: {entries} pins masked",
            io.id,
            io.address
        );
        pins += entries;
    }
    Ok(pins)
}
