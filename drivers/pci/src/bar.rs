//! BAR decoding and sizing.
//!
//! Sizing writes all-ones and reads back the mask, so it briefly makes the BAR claim a bogus
//! window: memory and I/O decode are turned off around the whole probe and restored afterwards
//! (pci_types' `EndpointHeader::bar` does not do this and panics on reserved encodings).

use crate::command::{read_command, write_command};
use crate::{PciError, cfg_read, cfg_write, regs};
use alloc::vec::Vec;
use core::fmt;
use pci_types::{CommandRegister, ConfigRegionAccess, PciAddress};

/// What a BAR decodes (PCI Express Base Specification rev 6.0, §7.5.1.2.1, Base Address
/// Register bits 0 and 2:1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// I/O space (bit 0 = 1); the address is bits 31:2.
    Io,
    /// 32-bit memory space (type 00b); the address is bits 31:4.
    Mem32,
    /// 64-bit memory space (type 10b); the BAR and the next slot hold the address.
    Mem64,
}

/// A decoded, implemented BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR slot (0..=5 for endpoints, 0..=1 for bridges). A 64-bit BAR occupies `slot` and `slot + 1`.
    pub slot: u8,
    /// I/O, 32-bit or 64-bit memory.
    pub kind: BarKind,
    /// The programmed base address (bus address; for memory BARs also the CPU's physical
    /// address on this platform), aligned to `size`.
    pub address: u64,
    /// Window size in bytes: a power of two, at least 16 for memory and 4 for I/O BARs.
    pub size: u64,
    /// Memory BAR bit 3: reads have no side effects, so the window may be mapped write-combining.
    pub prefetchable: bool,
}

impl BarInfo {
    /// Whether the BAR decodes memory space (32- or 64-bit) rather than I/O space.
    pub fn is_memory(&self) -> bool {
        self.kind != BarKind::Io
    }
    /// One past the last byte (saturating: a 64-bit BAR programmed into the top of the
    /// address space ends at 2^64).
    pub fn end(&self) -> u64 {
        self.address.saturating_add(self.size)
    }
}

impl fmt::Display for BarInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            BarKind::Io => "io",
            BarKind::Mem32 => "mem32",
            BarKind::Mem64 => "mem64",
        };
        write!(
            f,
            "{}:{} {:#x}+{:#x}{}",
            self.slot,
            kind,
            self.address,
            self.size,
            if self.prefetchable { " pf" } else { "" }
        )
    }
}

/// Number of BAR slots for a header type (0 endpoint: 6, 1 bridge: 2, other: 0).
pub(crate) fn bar_slots(header_type: u8) -> u8 {
    match header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    }
}

/// Turns a size mask (bits that stuck at 1, address bits only) into a size, validating that it
/// is a contiguous run of ones from the top of the BAR's width.
fn size_from_mask(mask: u64, width_mask: u64) -> Option<u64> {
    let mask = mask & width_mask;
    if mask == 0 {
        return Some(0);
    }
    let size = (!mask).wrapping_add(1) & width_mask;
    if size == 0 || !size.is_power_of_two() || (mask | (size - 1)) & width_mask != width_mask {
        return None;
    }
    Some(size)
}

/// The size of a BAR from its size mask: `Ok(None)` for an unimplemented BAR (no bit stuck),
/// [`PciError::BarBadSizeMask`] for a mask that is not a contiguous run of ones from the top.
fn bar_size(
    addr: PciAddress,
    slot: u8,
    mask: u64,
    width_mask: u64,
) -> Result<Option<u64>, PciError> {
    match size_from_mask(mask, width_mask) {
        None => Err(PciError::BarBadSizeMask { addr, slot, mask }),
        Some(0) => Ok(None),
        Some(size) => Ok(Some(size)),
    }
}

/// Probes one BAR slot. Decode must already be disabled by the caller ([`probe_bars`] does it).
/// Returns `Ok(None)` for an unimplemented BAR. On return the BAR holds its original value.
fn probe_slot(
    access: &impl ConfigRegionAccess,
    addr: PciAddress,
    slot: u8,
    slots: u8,
) -> Result<Option<BarInfo>, PciError> {
    let off = regs::BAR0 + 4 * u16::from(slot);
    let orig = cfg_read(access, addr, off);
    cfg_write(access, addr, off, u32::MAX);
    let mask_lo = cfg_read(access, addr, off);
    cfg_write(access, addr, off, orig);

    if orig & 1 == 1 {
        // I/O BAR: 32-bit address field, but many devices only implement 16 bits.
        let m = u64::from(mask_lo & 0xffff_fffc);
        let m = if m & 0xffff_0000 == 0 {
            m | 0xffff_0000
        } else {
            m
        };
        let Some(size) = bar_size(addr, slot, m, 0xffff_ffff)? else {
            return Ok(None);
        };
        let address = u64::from(orig & 0xffff_fffc);
        return finish(addr, slot, BarKind::Io, address, size, false, 0xffff_ffff);
    }
    let prefetchable = orig & 0x8 != 0;
    match (orig >> 1) & 0b11 {
        0b00 => {
            let m = u64::from(mask_lo & 0xffff_fff0);
            let Some(size) = bar_size(addr, slot, m, 0xffff_ffff)? else {
                return Ok(None);
            };
            finish(
                addr,
                slot,
                BarKind::Mem32,
                u64::from(orig & 0xffff_fff0),
                size,
                prefetchable,
                0xffff_ffff,
            )
        }
        0b10 => {
            if slot + 1 >= slots {
                return Err(PciError::Bar64InLastSlot { addr, slot });
            }
            let off_hi = off + 4;
            let orig_hi = cfg_read(access, addr, off_hi);
            cfg_write(access, addr, off_hi, u32::MAX);
            let mask_hi = cfg_read(access, addr, off_hi);
            cfg_write(access, addr, off_hi, orig_hi);
            let m = (u64::from(mask_hi) << 32) | u64::from(mask_lo & 0xffff_fff0);
            let Some(size) = bar_size(addr, slot, m, u64::MAX)? else {
                return Ok(None);
            };
            let address = (u64::from(orig_hi) << 32) | u64::from(orig & 0xffff_fff0);
            finish(
                addr,
                slot,
                BarKind::Mem64,
                address,
                size,
                prefetchable,
                u64::MAX,
            )
        }
        _ => Err(PciError::BarReservedType { addr, slot }),
    }
}

fn finish(
    addr: PciAddress,
    slot: u8,
    kind: BarKind,
    address: u64,
    size: u64,
    prefetchable: bool,
    limit: u64,
) -> Result<Option<BarInfo>, PciError> {
    if address & (size - 1) != 0 {
        return Err(PciError::BarMisaligned {
            addr,
            slot,
            address,
            size,
        });
    }
    if address
        .checked_add(size - 1)
        .is_none_or(|last| last > limit)
    {
        return Err(PciError::BarAddressOverflow { addr, slot });
    }
    Ok(Some(BarInfo {
        slot,
        kind,
        address,
        size,
        prefetchable,
    }))
}

/// Result of probing all BARs of a function: the good ones and a per-slot error list.
#[derive(Debug, Clone, Default)]
pub struct BarProbe {
    /// The implemented BARs that decoded cleanly, in slot order.
    pub bars: Vec<BarInfo>,
    /// One error per BAR slot that could not be decoded (reserved type, bad mask, misaligned…).
    pub errors: Vec<PciError>,
}

/// Sizes every BAR of the function with memory and I/O decode disabled, restoring the command
/// register afterwards. A bad BAR is reported and skipped; the others are still probed.
pub fn probe_bars(access: &impl ConfigRegionAccess, addr: PciAddress, header_type: u8) -> BarProbe {
    let slots = bar_slots(header_type);
    let mut out = BarProbe::default();
    if slots == 0 {
        return out;
    }
    let cmd = read_command(access, addr);
    write_command(
        access,
        addr,
        cmd & !(CommandRegister::MEMORY_ENABLE | CommandRegister::IO_ENABLE),
    );
    let mut slot = 0;
    while slot < slots {
        match probe_slot(access, addr, slot, slots) {
            Ok(Some(b)) => {
                slot += if b.kind == BarKind::Mem64 { 2 } else { 1 };
                out.bars.push(b);
            }
            Ok(None) => slot += 1,
            Err(e) => {
                // A 64-bit BAR with a bad mask still occupies two slots; skipping only one would
                // misread its upper half as a BAR.
                let lo = cfg_read(access, addr, regs::BAR0 + 4 * u16::from(slot));
                slot += if lo & 0b111 == 0b100 { 2 } else { 1 };
                out.errors.push(e);
            }
        }
    }
    write_command(access, addr, cmd);
    out
}

/// Reads the BAR slots without sizing (no side effects); sizes come from a previous probe.
pub fn find_bar(bars: &[BarInfo], slot: u8) -> Option<&BarInfo> {
    bars.iter().find(|b| b.slot == slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeConfigSpace;

    fn dev() -> (FakeConfigSpace, PciAddress) {
        let f = FakeConfigSpace::new();
        let a = PciAddress::new(0, 0, 3, 0);
        f.add_function(a, 0x8086, 0x1234, (8, 0x80, 0), 0);
        (f, a)
    }

    #[test]
    fn probes_64bit_bar_above_4g_with_decode_disabled() {
        let (f, a) = dev();
        f.add_mem_bar(a, 0, 0x1_0000_0000, 0x40_0000_0000, true, true); // 4 GiB at 256 GiB
        f.add_mem_bar(a, 2, 0x4000, 0xfe00_0000, false, false);
        f.add_io_bar(a, 4, 0x20, 0xc000);
        crate::command::write_command(
            &f,
            a,
            CommandRegister::MEMORY_ENABLE
                | CommandRegister::IO_ENABLE
                | CommandRegister::BUS_MASTER_ENABLE,
        );
        f.writes.borrow_mut().clear();
        let p = probe_bars(&f, a, 0);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(
            p.bars,
            vec![
                BarInfo {
                    slot: 0,
                    kind: BarKind::Mem64,
                    address: 0x40_0000_0000,
                    size: 0x1_0000_0000,
                    prefetchable: true
                },
                BarInfo {
                    slot: 2,
                    kind: BarKind::Mem32,
                    address: 0xfe00_0000,
                    size: 0x4000,
                    prefetchable: false
                },
                BarInfo {
                    slot: 4,
                    kind: BarKind::Io,
                    address: 0xc000,
                    size: 0x20,
                    prefetchable: false
                },
            ]
        );
        // Every BAR write happened with MEM and IO decode off; the command was restored.
        let writes = f.writes.borrow();
        let bar_writes: Vec<_> = writes
            .iter()
            .filter(|w| (0x10..0x28).contains(&w.offset))
            .collect();
        assert!(!bar_writes.is_empty());
        for w in &bar_writes {
            assert_eq!(
                w.command_before & 0b11,
                0,
                "BAR write with decode on: {w:?}"
            );
        }
        assert_eq!(f.raw_read(a, 4) & 0x7, 0x7);
        // BAR values restored.
        assert_eq!(f.raw_read(a, 0x10), 0x0000_000c);
        assert_eq!(f.raw_read(a, 0x14), 0x40);
    }

    #[test]
    fn bar_errors_are_reported_not_panicked() {
        let (f, a) = dev();
        // Reserved type 11b at slot 0.
        f.with(a, |x| {
            x.set32(0x10, 0b110);
            x.set_wmask32(0x10, 0xffff_f000);
        });
        // 64-bit BAR in the last slot.
        f.with(a, |x| {
            x.set32(0x24, 0b100);
            x.set_wmask32(0x24, 0xffff_f000);
        });
        // A stuck address bit below the size mask at slot 1 (inconsistent read-back).
        f.with(a, |x| {
            x.set32(0x14, 0x1000);
            x.set_wmask32(0x14, 0xffff_0000);
        });
        // Non-contiguous mask at slot 2.
        f.with(a, |x| {
            x.set32(0x18, 0);
            x.set_wmask32(0x18, 0xff0f_0000);
        });
        let p = probe_bars(&f, a, 0);
        assert!(p.bars.is_empty());
        assert_eq!(p.errors.len(), 4, "{:?}", p.errors);
        assert!(matches!(
            p.errors[0],
            PciError::BarReservedType { slot: 0, .. }
        ));
        assert!(
            matches!(p.errors[1], PciError::BarBadSizeMask { slot: 1, .. }),
            "{:?}",
            p.errors
        );
        assert!(matches!(
            p.errors[2],
            PciError::BarBadSizeMask { slot: 2, .. }
        ));
        assert!(matches!(
            p.errors[3],
            PciError::Bar64InLastSlot { slot: 5, .. }
        ));
    }

    #[test]
    fn misaligned_and_overflowing_bars_rejected() {
        let a = PciAddress::new(0, 0, 0, 0);
        assert!(matches!(
            finish(a, 1, BarKind::Mem32, 0x1000, 0x10000, false, 0xffff_ffff),
            Err(PciError::BarMisaligned { .. })
        ));
        assert!(matches!(
            finish(
                a,
                1,
                BarKind::Mem32,
                0xffff_0000,
                0x2_0000,
                false,
                0xffff_ffff
            ),
            Err(PciError::BarMisaligned { .. })
        ));
        assert!(matches!(
            finish(a, 1, BarKind::Io, 0xffff_fff0, 0x20, false, 0xffff_ffff),
            Err(PciError::BarMisaligned { .. })
        ));
        assert!(
            finish(
                a,
                1,
                BarKind::Mem64,
                0xffff_0000_0000_0000,
                1 << 48,
                false,
                u64::MAX
            )
            .is_ok()
        );
    }

    #[test]
    fn size_mask_validation() {
        assert_eq!(size_from_mask(0xffff_f000, 0xffff_ffff), Some(0x1000));
        assert_eq!(size_from_mask(0, 0xffff_ffff), Some(0));
        assert_eq!(size_from_mask(0xfff0_f000, 0xffff_ffff), None);
        assert_eq!(
            size_from_mask(0xffff_ffff_0000_0000, u64::MAX),
            Some(1 << 32)
        );
    }
}
