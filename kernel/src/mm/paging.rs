//! The kernel's page tables.
//!
//! Built once on the BSP from the memory map, with table pages taken from usable memory
//! below 4 GiB (the AP trampoline loads CR3 in 32-bit mode, so the PML4 must be there).
//! Later changes only turn not-present entries into present ones (see
//! [`klib::paging::Mapper`]), so no TLB shootdown is ever needed.

use klib::paging::{MMIO, Mapper, PteFlags, RAM, TableSource, Translation};
use x86_64::PhysAddr;
use x86_64::registers::control::{Cr3, Cr3Flags};
use x86_64::structures::paging::PhysFrame;

use super::{ImageLayout, MmError};
use boot::memmap::MemoryMap;

use crate::sync::IrqMutex;

static KERNEL: IrqMutex<Option<Mapper>> = IrqMutex::new(None);

const FOUR_GIB: u64 = 1 << 32;
const PAGE: u64 = 4096;

/// Bump allocator over one range below 4 GiB (zeroes what it hands out).
struct Bump {
    start: u64,
    next: u64,
    end: u64,
}

impl TableSource for Bump {
    fn alloc_table(&mut self) -> Option<u64> {
        if self.next + PAGE > self.end {
            return None;
        }
        let p = self.next;
        self.next += PAGE;
        // SAFETY: the page lies in usable RAM below 4 GiB (identity-mapped by the boot
        // stub, and by the new tables once they are live) and belongs to the bump range.
        unsafe { core::ptr::write_bytes(p as *mut u8, 0, PAGE as usize) };
        Some(p)
    }
}

/// Frames for page tables after boot (from the frame allocator).
struct FrameSource;

impl TableSource for FrameSource {
    fn alloc_table(&mut self) -> Option<u64> {
        super::frames::alloc_frames(PAGE, PAGE)
            .ok()
            .map(|b| b.leak())
    }
}

fn ram_flags() -> PteFlags {
    RAM
}

/// NO_EXECUTE where the CPU has it (the bit is reserved otherwise).
fn nx() -> PteFlags {
    if crate::arch::features().nx {
        PteFlags::NO_EXECUTE
    } else {
        PteFlags::empty()
    }
}

/// Writable, not executable.
fn data_flags() -> PteFlags {
    ram_flags() | nx()
}

fn mmio_flags() -> PteFlags {
    if crate::arch::features().nx {
        MMIO
    } else {
        MMIO - PteFlags::NO_EXECUTE
    }
}

/// Builds the kernel tables, switches CR3, and returns the range used for table pages
/// (to keep it out of the frame allocator).
pub(super) fn init(map: &MemoryMap, layout: ImageLayout) -> Result<(u64, u64), MmError> {
    let image = (layout.start, layout.end);
    let regions = map.regions();
    let gib = map.ram_end().div_ceil(1 << 30);
    // Upper bound on table pages: PML4 + PDPTs + one PD per GiB + PTs at region edges.
    let need_pages = 8 + 2 * regions.len() as u64 + gib.max(4) + gib / 512 + 16;
    let need = need_pages * PAGE;
    let mut found = None;
    map.for_each_free_range(&[(0, super::LOW_MEMORY_END), image], |s, e| {
        if found.is_none() && e <= FOUR_GIB && e - s >= need {
            found = Some(s);
        }
    });
    let start = found.ok_or(MmError::NoEarlyMemory { need })?;
    let mut bump = Bump {
        start,
        next: start,
        end: start + need,
    };
    let pml4 = bump.alloc_table().ok_or(MmError::NoEarlyMemory { need })?;
    // SAFETY: fresh zeroed table page, identity-addressable.
    let mut m = unsafe { Mapper::new(pml4, PteFlags::WRITABLE, crate::arch::features().page_1g) };

    // RAM write-back (page-rounded inward), everything else below 4 GiB uncached.
    let mut cursor = PAGE; // page 0 stays unmapped
    for r in regions.iter().filter(|r| r.kind.is_ram()) {
        let s = r.start.div_ceil(PAGE) * PAGE;
        let e = r.end / PAGE * PAGE;
        if e <= s {
            continue;
        }
        let s = s.max(PAGE);
        if s > cursor && cursor < FOUR_GIB {
            let gap_end = s.min(FOUR_GIB);
            m.map(cursor, cursor, gap_end - cursor, mmio_flags(), &mut bump)?;
        }
        if e > s {
            // RAM outside the image: data, never code (except low memory, where the AP
            // trampoline runs). The image's parts get their own permissions below.
            for (a, b) in [(s, e.min(image.0)), (s.max(image.1), e)] {
                let low_end = b.min(super::LOW_MEMORY_END);
                if low_end > a {
                    m.map(a, a, low_end - a, ram_flags(), &mut bump)?;
                }
                let a = a.max(super::LOW_MEMORY_END);
                if b > a {
                    m.map(a, a, b - a, data_flags(), &mut bump)?;
                }
            }
        }
        cursor = cursor.max(e);
    }
    // W^X for the image: code read+execute, read-only data read-only, data read+write.
    let ro = PteFlags::PRESENT;
    for (a, b, flags) in [
        (layout.start, layout.text, ro | nx()),
        (layout.text, layout.rodata, ro),
        (layout.rodata, layout.data, ro | nx()),
        (layout.data, layout.end, data_flags()),
    ] {
        if b > a {
            m.map(a, a, b - a, flags, &mut bump)?;
        }
    }
    if cursor < FOUR_GIB {
        m.map(cursor, cursor, FOUR_GIB - cursor, mmio_flags(), &mut bump)?;
    }

    // SAFETY: the new tables identity-map the kernel image, its stack, all RAM and the
    // low MMIO with the same addresses as the boot tables, so execution continues.
    unsafe {
        Cr3::write(
            PhysFrame::containing_address(PhysAddr::new(pml4)),
            Cr3Flags::empty(),
        )
    };
    log::debug!(
        "page tables: {} table pages at {:#x}",
        (bump.next - bump.start) / PAGE,
        bump.start
    );
    *KERNEL.lock() = Some(m);
    Ok((bump.start, bump.next))
}

/// Physical address of the kernel PML4 (below 4 GiB).
pub fn kernel_root() -> u64 {
    KERNEL.lock().as_ref().map_or(0, |m| m.root())
}

/// Maps `[phys, phys+len)` uncached (identity) and returns it as a pointer.
///
/// Ranges already mapped uncached are accepted as they are; a range overlapping RAM or
/// mapped otherwise gives `MmError::Map(MapError::Conflict { .. })`.
///
/// Page 0 is refused (`MmError::BadPhysRange`): it stays unmapped to catch null pointers,
/// and firmware tables say 0 for a device that is absent. So are ranges that wrap or reach
/// past the CPU's physical address limit.
pub fn map_mmio(phys: u64, len: u64) -> Result<*mut u8, MmError> {
    let (s, e) = page_range(phys, len, PAGE)?;
    map_pages(s, e, mmio_flags())?;
    Ok(phys as *mut u8)
}

/// `[phys, phys + len)` rounded out to pages, if it is a mappable physical range: starting
/// at or above `lowest`, no wrap, below the physical address limit.
fn page_range(phys: u64, len: u64, lowest: u64) -> Result<(u64, u64), MmError> {
    let bad = MmError::BadPhysRange { phys, len };
    let end = phys.checked_add(len.max(1)).ok_or(bad)?;
    if phys < lowest || end > super::phys_addr_limit() {
        return Err(bad);
    }
    // end <= 2^52, so rounding up cannot overflow.
    Ok((phys / PAGE * PAGE, end.div_ceil(PAGE) * PAGE))
}

/// Makes firmware data (ACPI tables) readable: already-mapped pages (RAM or low MMIO)
/// are left as they are; unmapped pages are mapped uncached. Address 0 and ranges that
/// wrap or pass the physical address limit are refused; the rest of page 0 is allowed
/// (the BIOS data area holds the EBDA pointer the RSDP search reads).
pub fn map_firmware(phys: u64, len: u64) -> Result<(), MmError> {
    let (s, e) = page_range(phys, len, 1)?;
    let mut p = s;
    while p < e {
        if translate(p).is_none() {
            map_pages(p, p + PAGE, mmio_flags())?;
        }
        p += PAGE;
    }
    Ok(())
}

/// Identity-maps the pages `[s, e)` (page-aligned, checked by [`page_range`]).
fn map_pages(s: u64, e: u64, flags: PteFlags) -> Result<(), MmError> {
    let mut g = KERNEL.lock();
    let m = g.as_mut().ok_or(MmError::NotInitialized)?;
    m.map(s, s, e - s, flags, &mut FrameSource)?;
    Ok(())
}

/// Maps `len` bytes of frames at `phys` at the stack address `virt` (write-back, not
/// executable, 4 KiB pages unless both are 2 MiB aligned). The caller leaves the page below
/// `virt` unmapped as the guard.
pub(super) fn map_stack(virt: u64, phys: u64, len: u64) -> Result<(), MmError> {
    let mut g = KERNEL.lock();
    let m = g.as_mut().ok_or(MmError::NotInitialized)?;
    m.map(virt, phys, len, data_flags(), &mut FrameSource)?;
    Ok(())
}

/// Looks up a kernel virtual address.
pub fn translate(virt: u64) -> Option<Translation> {
    KERNEL.lock().as_ref()?.translate(virt)
}
