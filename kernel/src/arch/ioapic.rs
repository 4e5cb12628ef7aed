//! I/O APICs: every redirection entry is masked at boot, so nothing the firmware left
//! enabled (PIT, legacy USB, …) can deliver into vectors the kernel hands out. Devices
//! here use MSI/MSI-X/IMS, not I/O APIC pins.

use hwio::RegistersExt;

use crate::acpi::IoApicInfo;
use crate::mm::Mmio;

hwio::register_map! {
    /// The I/O APIC's two memory-mapped registers (82093AA I/O APIC datasheet, §3.0): the
    /// index of an indirect register, and the window onto it.
    mod regs {
        /// IOREGSEL: which indirect register IOWIN reaches.
        0x00 => IOREGSEL: u32, ReadWrite;
        /// IOWIN: the selected register.
        0x10 => IOWIN: u32, ReadWrite;
    }
}
const REG_VERSION: u32 = 0x01;
const REDTBL_BASE: u32 = 0x10;
const REDIR_MASKED: u32 = 1 << 16;

/// IOREGSEL selects the register that IOWIN then reads or writes; callers run
/// single-threaded during boot, so the pair is not interleaved.
fn read(regs: &Mmio, reg: u32) -> u32 {
    regs.write(regs::IOREGSEL, reg);
    regs.read(regs::IOWIN)
}

fn write(regs: &Mmio, reg: u32, v: u32) {
    regs.write(regs::IOREGSEL, reg);
    regs.write(regs::IOWIN, v);
}

/// Masks every redirection entry of every I/O APIC. Returns the number of pins masked.
pub fn mask_all(ioapics: &[IoApicInfo]) -> Result<usize, crate::mm::MmError> {
    let mut pins = 0;
    for io in ioapics {
        let regs = Mmio::map(io.address, 0x20)?;
        let entries = ((read(&regs, REG_VERSION) >> 16) & 0xff) as usize + 1;
        for i in 0..entries as u32 {
            let low = read(&regs, REDTBL_BASE + 2 * i);
            write(&regs, REDTBL_BASE + 2 * i, low | REDIR_MASKED);
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
