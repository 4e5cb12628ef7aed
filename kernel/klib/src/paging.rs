//! x86-64 4-level page tables: build, extend and inspect.
//!
//! The same format serves the CPU (CR3) and VT-d first-stage translation, so the mapper
//! is parameterised by the flags put on non-leaf entries: the kernel uses `P|RW`; a VT-d
//! first-stage table under QEMU needs `P|RW|US` at every level, which
//! [`Mapper::new`] accepts through `table_flags`.
//!
//! Tables are reached through their physical address (the kernel identity-maps RAM; host
//! tests use heap addresses). The mapper never replaces a present entry with a different
//! one: mapping over an identical mapping is a no-op, anything else is
//! [`MapError::Conflict`]. That keeps every change a not-present → present transition,
//! which needs no TLB shootdown.

use crate::PAGE_SIZE;

bitflags::bitflags! {
    /// Page-table entry bits (Intel SDM Vol. 3, 4.5), named as in the SDM.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// P: present.
        const PRESENT = 1 << 0;
        /// R/W: writes allowed.
        const WRITABLE = 1 << 1;
        /// U/S: user-mode accesses allowed.
        const USER = 1 << 2;
        /// PWT: page-level write-through.
        const WRITE_THROUGH = 1 << 3;
        /// PCD: page-level cache disable.
        const NO_CACHE = 1 << 4;
        /// A: accessed (set by the walker).
        const ACCESSED = 1 << 5;
        /// D: dirty (set by the walker, leaves only).
        const DIRTY = 1 << 6;
        /// PS: this PDPTE/PDE maps a 1 GiB / 2 MiB page.
        const HUGE = 1 << 7;
        /// G: global translation.
        const GLOBAL = 1 << 8;
        /// XD: execute disable (needs EFER.NXE).
        const NO_EXECUTE = 1 << 63;
        const _ = !0;
    }
}

/// Physical-address bits of an entry (bits 51:12).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Flags that the walker sets by itself; ignored when comparing mappings.
const WALKER_BITS: u64 = PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();

/// Leaf flags for normal write-back RAM.
pub const RAM: PteFlags = PteFlags::PRESENT.union(PteFlags::WRITABLE);
/// Leaf flags for memory-mapped I/O: uncached (PAT index 3 = UC with the reset PAT).
pub const MMIO: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::NO_CACHE)
    .union(PteFlags::WRITE_THROUGH)
    .union(PteFlags::NO_EXECUTE);

/// Supported page sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PageSize {
    /// 4 KiB.
    Size4K,
    /// 2 MiB.
    Size2M,
    /// 1 GiB.
    Size1G,
}

impl PageSize {
    /// Size in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Size4K => 1 << 12,
            Self::Size2M => 1 << 21,
            Self::Size1G => 1 << 30,
        }
    }
    /// Level whose entry maps a page of this size (1 = PT, 2 = PD, 3 = PDPT).
    const fn level(self) -> u32 {
        match self {
            Self::Size4K => 1,
            Self::Size2M => 2,
            Self::Size1G => 3,
        }
    }
}

/// Errors of the mapper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Address or length not 4 KiB aligned, or the range wraps.
    Misaligned,
    /// Virtual address not canonical (48-bit).
    NonCanonical(u64),
    /// Physical address wider than 52 bits.
    PhysTooWide(u64),
    /// The frame source could not supply a table page.
    OutOfFrames,
    /// A different mapping already covers `virt`.
    Conflict {
        /// The virtual address that is already mapped.
        virt: u64,
        /// The existing entry (raw).
        existing: u64,
    },
    /// `unmap` would cut a large page in part.
    PartialHugePage(u64),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Misaligned => write!(f, "range not 4 KiB aligned or wraps around"),
            Self::NonCanonical(v) => write!(f, "virtual address {v:#x} is not canonical"),
            Self::PhysTooWide(p) => write!(f, "physical address {p:#x} exceeds 52 bits"),
            Self::OutOfFrames => write!(f, "no memory for a page table"),
            Self::Conflict { virt, existing } => {
                write!(
                    f,
                    "{virt:#x} is already mapped differently (entry {existing:#x})"
                )
            }
            Self::PartialHugePage(v) => write!(f, "{v:#x} lies inside a larger page"),
        }
    }
}

/// Supplies zeroed, 4 KiB-aligned table pages addressable at their physical address.
pub trait TableSource {
    /// A zeroed page, or `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
}

/// A leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the queried virtual address.
    pub phys: u64,
    /// Leaf flags (with `HUGE` for large pages).
    pub flags: PteFlags,
    /// Size of the page that maps it.
    pub size: PageSize,
}

/// A 4-level page-table hierarchy rooted at `pml4`.
#[derive(Debug)]
pub struct Mapper {
    pml4: u64,
    table_flags: PteFlags,
    allow_1g: bool,
}

fn canonical(v: u64) -> bool {
    let top = v >> 47;
    top == 0 || top == 0x1ffff
}

fn index(virt: u64, level: u32) -> usize {
    ((virt >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

impl Mapper {
    /// Wraps an existing (or freshly zeroed) PML4 page.
    ///
    /// `table_flags` go on every non-leaf entry created (and are OR-ed into existing
    /// ones that lack them); `PRESENT` is always added. `allow_1g` enables 1 GiB leaves
    /// (CPUID.80000001H:EDX.Page1GB for the CPU; CAP.FS1GP for VT-d).
    ///
    /// # Safety
    /// `pml4` and every table reachable from it must be page-table pages addressable at
    /// their physical address and owned by this mapper's user.
    pub unsafe fn new(pml4: u64, table_flags: PteFlags, allow_1g: bool) -> Self {
        Self {
            pml4,
            table_flags: table_flags | PteFlags::PRESENT,
            allow_1g,
        }
    }

    /// Physical address of the PML4 (the CR3 / FSPTPTR value).
    pub fn root(&self) -> u64 {
        self.pml4
    }

    fn table(addr: u64) -> *mut u64 {
        addr as *mut u64
    }

    /// Maps `[virt, virt+len)` to `[phys, phys+len)` with `flags` on the leaves, using the
    /// largest pages that alignment and length allow.
    pub fn map(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: PteFlags,
        src: &mut dyn TableSource,
    ) -> Result<(), MapError> {
        if !(virt | phys | len).is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned);
        }
        let (Some(vend), Some(pend)) = (virt.checked_add(len), phys.checked_add(len)) else {
            return Err(MapError::Misaligned);
        };
        if pend > ADDR_MASK + PAGE_SIZE {
            return Err(MapError::PhysTooWide(pend));
        }
        if len == 0 {
            return Ok(());
        }
        if !canonical(virt) || !canonical(vend - 1) || (virt >> 47) != ((vend - 1) >> 47) {
            return Err(MapError::NonCanonical(virt));
        }
        let mut off = 0;
        while off < len {
            let (v, p, rem) = (virt + off, phys + off, len - off);
            let fits = |s: PageSize| (v | p).is_multiple_of(s.bytes()) && rem >= s.bytes();
            let size = if self.allow_1g && fits(PageSize::Size1G) {
                PageSize::Size1G
            } else if fits(PageSize::Size2M) {
                PageSize::Size2M
            } else {
                PageSize::Size4K
            };
            self.map_one(v, p, size, flags, src)?;
            off += size.bytes();
        }
        Ok(())
    }

    fn same_mapping(
        entry: u64,
        level: u32,
        virt: u64,
        phys: u64,
        flags: PteFlags,
        size: PageSize,
    ) -> bool {
        let page = 1u64 << (12 + 9 * (level - 1));
        let huge = level > 1;
        let mut want = flags.bits() & !WALKER_BITS;
        if huge {
            want |= PteFlags::HUGE.bits();
        }
        let have = entry & !ADDR_MASK & !WALKER_BITS;
        let base = entry & ADDR_MASK & !(page - 1);
        have == want && base + (virt & (page - 1)) == phys && page >= size.bytes()
    }

    fn map_one(
        &mut self,
        virt: u64,
        phys: u64,
        size: PageSize,
        flags: PteFlags,
        src: &mut dyn TableSource,
    ) -> Result<(), MapError> {
        let mut table = self.pml4;
        let mut level = 4;
        loop {
            // SAFETY: `table` is a page-table page (constructor contract / created below).
            let slot = unsafe { Self::table(table).add(index(virt, level)) };
            // SAFETY: as above, the slot is inside the table page.
            let entry = unsafe { slot.read_volatile() };
            if level == size.level() {
                if entry & PteFlags::PRESENT.bits() != 0 {
                    if Self::same_mapping(entry, level, virt, phys, flags, size) {
                        return Ok(());
                    }
                    return Err(MapError::Conflict {
                        virt,
                        existing: entry,
                    });
                }
                let mut e = phys | (flags | PteFlags::PRESENT).bits();
                if level > 1 {
                    e |= PteFlags::HUGE.bits();
                }
                // SAFETY: slot inside a table page we own.
                unsafe { slot.write_volatile(e) };
                return Ok(());
            }
            if entry & PteFlags::PRESENT.bits() == 0 {
                let t = src.alloc_table().ok_or(MapError::OutOfFrames)?;
                // SAFETY: slot inside a table page we own; `t` is a zeroed table page.
                unsafe { slot.write_volatile(t | self.table_flags.bits()) };
                table = t;
            } else if entry & PteFlags::HUGE.bits() != 0 {
                // A larger page already covers this address.
                if Self::same_mapping(entry, level, virt, phys, flags, size) {
                    return Ok(());
                }
                return Err(MapError::Conflict {
                    virt,
                    existing: entry,
                });
            } else {
                let missing = self.table_flags.bits() & !entry;
                if missing != 0 {
                    // SAFETY: only permission bits are added to a present non-leaf entry.
                    unsafe { slot.write_volatile(entry | missing) };
                }
                table = entry & ADDR_MASK;
            }
            level -= 1;
        }
    }

    /// Looks up `virt`.
    pub fn translate(&self, virt: u64) -> Option<Translation> {
        if !canonical(virt) {
            return None;
        }
        let mut table = self.pml4;
        let mut level = 4;
        loop {
            // SAFETY: `table` is a page-table page of this hierarchy.
            let entry = unsafe { Self::table(table).add(index(virt, level)).read_volatile() };
            if entry & PteFlags::PRESENT.bits() == 0 {
                return None;
            }
            let leaf = level == 1 || (level <= 3 && entry & PteFlags::HUGE.bits() != 0);
            if leaf {
                let size = match level {
                    1 => PageSize::Size4K,
                    2 => PageSize::Size2M,
                    _ => PageSize::Size1G,
                };
                let base = entry & ADDR_MASK & !(size.bytes() - 1);
                return Some(Translation {
                    phys: base + (virt & (size.bytes() - 1)),
                    flags: PteFlags::from_bits_retain(entry & !ADDR_MASK),
                    size,
                });
            }
            table = entry & ADDR_MASK;
            level -= 1;
        }
    }

    /// Clears the leaves mapping `[virt, virt+len)`. Unmapped holes are skipped; a large
    /// page that the range covers only in part is an error (nothing after it is changed).
    /// Page-table pages are not freed. The caller invalidates TLBs / IOTLBs.
    pub fn unmap(&mut self, virt: u64, len: u64) -> Result<(), MapError> {
        if !(virt | len).is_multiple_of(PAGE_SIZE) || virt.checked_add(len).is_none() {
            return Err(MapError::Misaligned);
        }
        let end = virt + len;
        let mut v = virt;
        while v < end {
            let mut table = self.pml4;
            let mut level = 4;
            let step = loop {
                // SAFETY: `table` is a page-table page of this hierarchy.
                let slot = unsafe { Self::table(table).add(index(v, level)) };
                // SAFETY: as above.
                let entry = unsafe { slot.read_volatile() };
                let span = 1u64 << (12 + 9 * (level - 1));
                if entry & PteFlags::PRESENT.bits() == 0 {
                    break span - (v & (span - 1));
                }
                if level == 1 || entry & PteFlags::HUGE.bits() != 0 {
                    if !v.is_multiple_of(span) || end - v < span {
                        return Err(MapError::PartialHugePage(v));
                    }
                    // SAFETY: slot inside a table page we own.
                    unsafe { slot.write_volatile(0) };
                    break span;
                }
                table = entry & ADDR_MASK;
                level -= 1;
            };
            v = v.saturating_add(step);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::{Layout, alloc_zeroed};

    #[derive(Default)]
    struct HostTables {
        pages: Vec<u64>,
        budget: Option<usize>,
    }

    impl TableSource for HostTables {
        fn alloc_table(&mut self) -> Option<u64> {
            if self.budget.is_some_and(|b| self.pages.len() >= b) {
                return None;
            }
            // SAFETY: non-zero size; leaked on purpose (test process).
            let p = unsafe { alloc_zeroed(Layout::from_size_align(4096, 4096).unwrap()) } as u64;
            self.pages.push(p);
            Some(p)
        }
    }

    fn new_mapper(src: &mut HostTables, flags: PteFlags, big: bool) -> Mapper {
        let root = src.alloc_table().unwrap();
        // SAFETY: fresh zeroed table page from the host source.
        unsafe { Mapper::new(root, flags, big) }
    }

    #[test]
    fn picks_largest_pages_and_translates() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, true);
        // 4 KiB head, 2 MiB middle, 1 GiB page, 4 KiB tail.
        let start = (1u64 << 30) - (2 << 20) - 4096;
        let len = 4096 + (2 << 20) + (1 << 30) + 4096;
        m.map(start, start, len, RAM, &mut src).unwrap();
        let t = m.translate(start).unwrap();
        assert_eq!((t.phys, t.size), (start, PageSize::Size4K));
        let t = m.translate(start + 4096 + 123).unwrap();
        assert_eq!((t.phys, t.size), (start + 4096 + 123, PageSize::Size2M));
        let t = m.translate((1 << 30) + 0x1234_5678).unwrap();
        assert_eq!(
            (t.phys, t.size),
            ((1 << 30) + 0x1234_5678, PageSize::Size1G)
        );
        assert!(t.flags.contains(PteFlags::HUGE | PteFlags::WRITABLE));
        let t = m.translate(2 << 30).unwrap();
        assert_eq!(t.size, PageSize::Size4K);
        assert_eq!(m.translate((2 << 30) + 4096), None);
        assert_eq!(m.translate(start - 4096), None);
    }

    #[test]
    fn without_1g_uses_2m() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, false);
        m.map(0, 0, 1 << 30, RAM, &mut src).unwrap();
        assert_eq!(m.translate(0x1234_5678).unwrap().size, PageSize::Size2M);
    }

    #[test]
    fn identical_remap_is_noop_and_conflicts_are_errors() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, true);
        m.map(0xfee0_0000, 0xfee0_0000, 4096, MMIO, &mut src)
            .unwrap();
        m.map(0xfee0_0000, 0xfee0_0000, 4096, MMIO, &mut src)
            .unwrap();
        let e = m
            .map(0xfee0_0000, 0xfee0_0000, 4096, RAM, &mut src)
            .unwrap_err();
        assert!(matches!(
            e,
            MapError::Conflict {
                virt: 0xfee0_0000,
                ..
            }
        ));
        let e = m
            .map(0xfee0_0000, 0x1000, 4096, MMIO, &mut src)
            .unwrap_err();
        assert!(matches!(e, MapError::Conflict { .. }));
        // A 4 KiB request inside an identical 1 GiB page is already satisfied.
        m.map(1 << 30, 1 << 30, 1 << 30, MMIO, &mut src).unwrap();
        let before = src.pages.len();
        m.map((1 << 30) + 0x5000, (1 << 30) + 0x5000, 4096, MMIO, &mut src)
            .unwrap();
        assert_eq!(src.pages.len(), before);
        let e = m
            .map((1 << 30) + 0x5000, (1 << 30) + 0x5000, 4096, RAM, &mut src)
            .unwrap_err();
        assert!(matches!(e, MapError::Conflict { .. }));
    }

    #[test]
    fn argument_errors() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, true);
        assert_eq!(m.map(1, 0, 4096, RAM, &mut src), Err(MapError::Misaligned));
        assert_eq!(m.map(0, 0, 100, RAM, &mut src), Err(MapError::Misaligned));
        assert_eq!(
            m.map(1 << 47, 0, 4096, RAM, &mut src),
            Err(MapError::NonCanonical(1 << 47))
        );
        assert!(matches!(
            m.map(0, 1 << 52, 4096, RAM, &mut src),
            Err(MapError::PhysTooWide(_))
        ));
        assert_eq!(
            m.map(u64::MAX - 4095, 0, 8192, RAM, &mut src),
            Err(MapError::Misaligned)
        );
    }

    #[test]
    fn out_of_frames_is_reported() {
        let mut src = HostTables {
            budget: Some(2),
            ..Default::default()
        };
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, true);
        assert_eq!(
            m.map(0x4000_0000_0000, 0, 4096, RAM, &mut src),
            Err(MapError::OutOfFrames)
        );
    }

    #[test]
    fn table_flags_reach_every_level() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE | PteFlags::USER, false);
        m.map(0x7000_0000, 0x1000, 4096, RAM | PteFlags::USER, &mut src)
            .unwrap();
        // Walk by hand: every non-leaf entry has P|RW|US.
        let mut table = m.root();
        for level in (2..=4).rev() {
            // SAFETY: host table pages.
            let e = unsafe { *(table as *const u64).add(index(0x7000_0000, level)) };
            assert_eq!(e & 7, 7, "level {level}");
            table = e & ADDR_MASK;
        }
        // Kernel-style mapper over the same root upgrades existing entries when asked.
        // SAFETY: same root.
        let mut k = unsafe { Mapper::new(m.root(), PteFlags::WRITABLE, false) };
        k.map(0x7000_1000, 0x2000, 4096, RAM, &mut src).unwrap();
        assert!(
            m.translate(0x7000_1000)
                .unwrap()
                .flags
                .contains(PteFlags::PRESENT)
        );
    }

    #[test]
    fn unmap_clears_and_rejects_partial_huge() {
        let mut src = HostTables::default();
        let mut m = new_mapper(&mut src, PteFlags::WRITABLE, true);
        m.map(0, 0, 4 << 20, RAM, &mut src).unwrap();
        m.map(8 << 20, 8 << 20, 8192, RAM, &mut src).unwrap();
        assert_eq!(
            m.unmap(0x1000, 4096),
            Err(MapError::PartialHugePage(0x1000))
        );
        m.unmap(8 << 20, 4096).unwrap();
        assert_eq!(m.translate(8 << 20), None);
        assert!(m.translate((8 << 20) + 4096).is_some());
        m.unmap(0, 16 << 20).unwrap();
        assert_eq!(m.translate(0), None);
        assert_eq!(m.translate((8 << 20) + 4096), None);
    }
}
