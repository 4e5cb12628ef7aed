//! Command-register helpers. They write only the command half of the dword (status half = 0):
//! the status bits are RW1C, and writing back what was read would clear latched errors.

use crate::{cfg_read, cfg_write, regs};
use pci_types::{CommandRegister, ConfigRegionAccess, PciAddress};

/// Reads the Command register (PCI Express Base Specification rev 6.0, §7.5.1.1.3).
pub fn read_command(access: &impl ConfigRegionAccess, addr: PciAddress) -> CommandRegister {
    CommandRegister::from_bits_retain(cfg_read(access, addr, regs::COMMAND_STATUS) as u16)
}

/// Writes the command register without touching status. Returns the previous value.
pub(crate) fn write_command(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    value: CommandRegister,
) -> CommandRegister {
    let old = read_command(access, addr);
    cfg_write(access, addr, regs::COMMAND_STATUS, u32::from(value.bits()));
    old
}

/// Sets `set` and clears `clear` in the command register. Returns the previous value.
pub(crate) fn update_command(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    set: CommandRegister,
    clear: CommandRegister,
) -> CommandRegister {
    let old = read_command(access, addr);
    let new = (old | set) & !clear;
    cfg_write(access, addr, regs::COMMAND_STATUS, u32::from(new.bits()));
    old
}

/// Enables memory-space decoding and bus mastering (needed for DMA and for MSI writes).
pub fn enable_memory_and_bus_master(access: &impl ConfigRegionAccess, addr: PciAddress) {
    update_command(
        access,
        addr,
        CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE,
        CommandRegister::empty(),
    );
}

/// Sets or clears Bus Master Enable (command bit 2): whether the function may issue memory
/// requests (DMA, MSI writes).
pub fn set_bus_master(access: &impl ConfigRegionAccess, addr: PciAddress, enable: bool) {
    set_command_bits(access, addr, CommandRegister::BUS_MASTER_ENABLE, enable);
}

/// Sets or clears Memory Space Enable (command bit 1): whether the function decodes its memory
/// BARs.
pub fn set_memory_enable(access: &impl ConfigRegionAccess, addr: PciAddress, enable: bool) {
    set_command_bits(access, addr, CommandRegister::MEMORY_ENABLE, enable);
}

/// Sets (`enable`) or clears `bits` in the command register.
fn set_command_bits(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    bits: CommandRegister,
    enable: bool,
) {
    let none = CommandRegister::empty();
    if enable {
        update_command(access, addr, bits, none);
    } else {
        update_command(access, addr, none, bits);
    }
}

/// Sets INTx Disable (bit 10) so that a function using MSI/MSI-X never also asserts INTx.
pub fn disable_intx(access: &impl ConfigRegionAccess, addr: PciAddress) {
    update_command(
        access,
        addr,
        CommandRegister::INTERRUPT_DISABLE,
        CommandRegister::empty(),
    );
}
