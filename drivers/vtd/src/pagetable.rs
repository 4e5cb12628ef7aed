//! First-stage (IA-32e, 4-level) and second-stage (VT-d, 3/4-level) page tables in DMA memory:
//! map (4 KiB pages, 2 MiB where aligned), unmap (splitting 2 MiB leaves), software translate.
//!
//! First-stage entries set U/S at every level: QEMU treats every request as a user request
//! (vtd.md §4.1). Non-leaf entries grant everything; permissions live in the leaves.

use crate::error::VtdError;
use crate::hw::DmaMemory;
use crate::spec::{FsPte, PTE_ADDR_MASK, SsPte};
use alloc::vec::Vec;

pub const PAGE_4K: u64 = 1 << 12;
pub const PAGE_2M: u64 = 1 << 21;
/// 0xFEE0_0000–0xFEEF_FFFF: never mapped as IOVA nor as output (vtd.md §4.3, §8).
pub const INTERRUPT_WINDOW: core::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    pub read: bool,
    pub write: bool,
}

impl Perm {
    pub const RO: Perm = Perm {
        read: true,
        write: false,
    };
    pub const RW: Perm = Perm {
        read: true,
        write: true,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    FirstStage,
    SecondStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    pub phys: u64,
    pub perm: Perm,
    pub page_size: u64,
}

/// One address space's page-table tree. Owns its table pages (freed by [`PageTable::free`]).
#[derive(Debug)]
pub struct PageTable {
    pub format: Format,
    /// 4 (48-bit) or 3 (39-bit, second stage only).
    pub levels: u8,
    pub root: u64,
    pages: Vec<u64>,
    /// Highest physical address bit the unit can output (HAW/MGAW).
    phys_bits: u8,
    allow_2m: bool,
}

fn overlaps_window(start: u64, len: u64) -> bool {
    start < INTERRUPT_WINDOW.end && start + len > INTERRUPT_WINDOW.start
}

impl PageTable {
    pub fn new(
        mem: &mut impl DmaMemory,
        format: Format,
        levels: u8,
        phys_bits: u8,
        allow_2m: bool,
    ) -> Result<Self, VtdError> {
        let root = alloc_table(mem, phys_bits)?;
        Ok(Self {
            format,
            levels,
            root,
            pages: alloc::vec![root],
            phys_bits,
            allow_2m,
        })
    }

    /// Input address width in bits. First stage: the lower canonical half of 48-bit.
    pub fn input_bits(&self) -> u8 {
        match self.format {
            Format::FirstStage => 47,
            Format::SecondStage => 12 + 9 * self.levels,
        }
    }

    pub fn table_pages(&self) -> usize {
        self.pages.len()
    }

    fn nonleaf(&self, pa: u64) -> u64 {
        match self.format {
            Format::FirstStage => pa | (FsPte::P | FsPte::RW | FsPte::US).bits(),
            Format::SecondStage => pa | (SsPte::R | SsPte::W).bits(),
        }
    }

    fn leaf(&self, pa: u64, perm: Perm, large: bool) -> u64 {
        match self.format {
            Format::FirstStage => {
                let mut f = FsPte::P | FsPte::US;
                f.set(FsPte::RW, perm.write);
                f.set(FsPte::PS, large);
                pa | f.bits()
            }
            Format::SecondStage => {
                let mut f = SsPte::empty();
                f.set(SsPte::R, perm.read);
                f.set(SsPte::W, perm.write);
                f.set(SsPte::PS, large);
                pa | f.bits()
            }
        }
    }

    fn present(&self, e: u64) -> bool {
        match self.format {
            Format::FirstStage => e & FsPte::P.bits() != 0,
            Format::SecondStage => e & (SsPte::R | SsPte::W | SsPte::X).bits() != 0,
        }
    }

    fn is_large(&self, e: u64) -> bool {
        match self.format {
            Format::FirstStage => e & FsPte::PS.bits() != 0,
            Format::SecondStage => e & SsPte::PS.bits() != 0,
        }
    }

    fn perm_of(&self, e: u64) -> Perm {
        match self.format {
            Format::FirstStage => Perm {
                read: true,
                write: e & FsPte::RW.bits() != 0,
            },
            Format::SecondStage => Perm {
                read: e & SsPte::R.bits() != 0,
                write: e & SsPte::W.bits() != 0,
            },
        }
    }

    fn index(iova: u64, level: u8) -> u64 {
        (iova >> (12 + 9 * (u64::from(level) - 1))) & 0x1ff
    }

    /// Validates a (iova, phys, len) request.
    fn check(&self, iova: u64, phys: Option<u64>, len: u64) -> Result<(), VtdError> {
        if len == 0
            || !iova.is_multiple_of(PAGE_4K)
            || !len.is_multiple_of(PAGE_4K)
            || iova.checked_add(len).is_none()
        {
            return Err(VtdError::BadRange { iova, len });
        }
        if (iova + len - 1) >> self.input_bits() != 0 {
            return Err(VtdError::IovaTooWide {
                iova: iova + len - 1,
            });
        }
        if overlaps_window(iova, len) {
            return Err(VtdError::InterruptWindow { addr: iova });
        }
        if let Some(pa) = phys {
            if pa % PAGE_4K != 0 || pa.checked_add(len).is_none() {
                return Err(VtdError::BadRange { iova, len });
            }
            if (pa + len - 1) >> self.phys_bits != 0 {
                return Err(VtdError::PhysTooWide { phys: pa + len - 1 });
            }
            if overlaps_window(pa, len) {
                return Err(VtdError::InterruptWindow { addr: pa });
            }
        }
        Ok(())
    }

    /// Maps `[iova, iova+len)` to `[phys, phys+len)`. Fails without changing anything visible
    /// if any page is already mapped (partial progress is rolled back).
    pub fn map(
        &mut self,
        mem: &mut impl DmaMemory,
        iova: u64,
        phys: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), VtdError> {
        self.check(iova, Some(phys), len)?;
        let mut off = 0;
        while off < len {
            let (va, pa, rest) = (iova + off, phys + off, len - off);
            let large = self.allow_2m
                && va % PAGE_2M == 0
                && pa % PAGE_2M == 0
                && rest >= PAGE_2M
                && self.pd_slot_empty(mem, va);
            let r = self.map_one(mem, va, pa, perm, large);
            if let Err(e) = r {
                if off > 0 {
                    self.unmap(mem, iova, off);
                }
                return Err(e);
            }
            off += if large { PAGE_2M } else { PAGE_4K };
        }
        Ok(())
    }

    /// True when the level-2 entry for `iova` is absent (so a 2 MiB leaf may go there; a
    /// leftover page table from earlier 4 KiB mappings forces 4 KiB pages instead).
    fn pd_slot_empty(&self, mem: &impl DmaMemory, iova: u64) -> bool {
        let mut table = self.root;
        let mut level = self.levels;
        loop {
            let e = mem.read64(table + 8 * Self::index(iova, level));
            if !self.present(e) {
                return true;
            }
            if level == 2 || (self.is_large(e) && level <= 3) {
                return false;
            }
            table = e & PTE_ADDR_MASK;
            level -= 1;
        }
    }

    fn map_one(
        &mut self,
        mem: &mut impl DmaMemory,
        iova: u64,
        pa: u64,
        perm: Perm,
        large: bool,
    ) -> Result<(), VtdError> {
        let leaf_level = if large { 2 } else { 1 };
        let mut table = self.root;
        let mut level = self.levels;
        while level > leaf_level {
            let slot = table + 8 * Self::index(iova, level);
            let e = mem.read64(slot);
            if !self.present(e) {
                let t = alloc_table(mem, self.phys_bits)?;
                self.pages.push(t);
                mem.write64(slot, self.nonleaf(t));
                table = t;
            } else if self.is_large(e) && level <= 3 {
                return Err(VtdError::AlreadyMapped { iova });
            } else {
                table = e & PTE_ADDR_MASK;
            }
            level -= 1;
        }
        let slot = table + 8 * Self::index(iova, leaf_level);
        if self.present(mem.read64(slot)) {
            return Err(VtdError::AlreadyMapped { iova });
        }
        mem.write64(slot, self.leaf(pa, perm, large));
        Ok(())
    }

    /// Unmaps every mapped page in the range (absent pages are skipped), splitting 2 MiB
    /// leaves that are only partly covered. Returns (bytes unmapped, whether a non-leaf entry
    /// changed — i.e. the invalidation must not use IH=1).
    pub fn unmap(&mut self, mem: &mut impl DmaMemory, iova: u64, len: u64) -> (u64, bool) {
        let mut done = 0;
        let mut nonleaf = false;
        let mut va = iova;
        let end = iova.saturating_add(len);
        while va < end {
            match self.unmap_one(mem, va, end, &mut nonleaf) {
                Step::Unmapped(sz) => {
                    done += sz;
                    va += sz;
                }
                Step::Skip(sz) => va = (va & !(sz - 1)) + sz,
            }
        }
        (done, nonleaf)
    }

    fn unmap_one(
        &mut self,
        mem: &mut impl DmaMemory,
        va: u64,
        end: u64,
        nonleaf: &mut bool,
    ) -> Step {
        let mut table = self.root;
        let mut level = self.levels;
        loop {
            let slot = table + 8 * Self::index(va, level);
            let e = mem.read64(slot);
            let size = 1u64 << (12 + 9 * (u64::from(level) - 1));
            if !self.present(e) {
                return Step::Skip(size);
            }
            if level == 1 {
                mem.write64(slot, 0);
                return Step::Unmapped(PAGE_4K);
            }
            if self.is_large(e) && level == 2 {
                if va.is_multiple_of(PAGE_2M) && end - va >= PAGE_2M {
                    mem.write64(slot, 0);
                    return Step::Unmapped(PAGE_2M);
                }
                // Split: a page table with the same 512 translations, then continue into it.
                let Ok(t) = alloc_table(mem, self.phys_bits) else {
                    // Without memory the safe fallback is to drop the whole 2 MiB leaf.
                    log::warn!(
                        "vtd: no memory to split a 2 MiB mapping at {va:#x}; unmapping all of it"
                    );
                    mem.write64(slot, 0);
                    *nonleaf = true;
                    return Step::Unmapped(PAGE_2M - (va % PAGE_2M));
                };
                self.pages.push(t);
                let base = e & PTE_ADDR_MASK & !(PAGE_2M - 1);
                let perm = self.perm_of(e);
                for i in 0..512 {
                    mem.write64(t + 8 * i, self.leaf(base + i * PAGE_4K, perm, false));
                }
                mem.write64(slot, self.nonleaf(t));
                *nonleaf = true;
                table = t;
                level -= 1;
                continue;
            }
            table = e & PTE_ADDR_MASK;
            level -= 1;
        }
    }

    /// Software walk, as the unit would do it.
    pub fn translate(&self, mem: &impl DmaMemory, iova: u64) -> Option<Translation> {
        if iova >> self.input_bits() != 0 {
            return None;
        }
        let mut table = self.root;
        let mut level = self.levels;
        loop {
            let e = mem.read64(table + 8 * Self::index(iova, level));
            if !self.present(e) {
                return None;
            }
            let size = 1u64 << (12 + 9 * (u64::from(level) - 1));
            if level == 1 || (self.is_large(e) && level <= 3) {
                let base = e & PTE_ADDR_MASK & !(size - 1);
                return Some(Translation {
                    phys: base + (iova & (size - 1)),
                    perm: self.perm_of(e),
                    page_size: size,
                });
            }
            table = e & PTE_ADDR_MASK;
            level -= 1;
        }
    }

    /// Frees every table page. The tree must no longer be referenced by any PASID entry.
    pub fn free(self, mem: &mut impl DmaMemory) {
        for p in self.pages {
            mem.free(p, 4096);
        }
    }
}

enum Step {
    Unmapped(u64),
    Skip(u64),
}

pub(crate) fn alloc_table(mem: &mut impl DmaMemory, phys_bits: u8) -> Result<u64, VtdError> {
    alloc_block(mem, 4096, phys_bits)
}

pub(crate) fn alloc_block(
    mem: &mut impl DmaMemory,
    size: usize,
    phys_bits: u8,
) -> Result<u64, VtdError> {
    let pa = mem
        .alloc_zeroed(size, 4096)
        .ok_or(VtdError::OutOfDmaMemory)?;
    if pa % 4096 != 0 || (pa + size as u64 - 1) >> phys_bits != 0 {
        mem.free(pa, size);
        return Err(VtdError::BadDmaBlock { phys: pa });
    }
    Ok(pa)
}

/// Power-of-two aligned chunks covering `[iova, iova+len)` as (address, AM) pairs with
/// AM ≤ `mamv`, for page-selective invalidation; None if more than `max` would be needed.
pub fn invalidation_chunks(iova: u64, len: u64, mamv: u8, max: usize) -> Option<Vec<(u64, u8)>> {
    let mut out = Vec::new();
    let mut page = iova >> 12;
    let end = (iova + len).div_ceil(PAGE_4K);
    while page < end {
        let align = if page == 0 { 63 } else { page.trailing_zeros() };
        let fit = 63 - (end - page).leading_zeros();
        let am = align.min(fit).min(u32::from(mamv)) as u8;
        out.push((page << 12, am));
        if out.len() > max {
            return None;
        }
        page += 1 << am;
    }
    Some(out)
}
