//! A unit's page tables: `x86_paging` trees in the unit's DMA memory.
//!
//! First stage: the CPU's format ([`X86`]; Intel VT-d Architecture Specification rev 4.1,
//! §3.6) with U/S at every level, since QEMU treats every request as a user request.
//! Second stage (§3.7): the same radix tree with R/W/X permissions and no present bit
//! ([`SecondStage`]), 3 or 4 levels. Non-leaf entries grant everything; permissions live in
//! the leaves. Here: the unit's rules on top (IOVA width, the unit's address width, the
//! interrupt window) and the translation of its errors.

use crate::error::VtdError;
use crate::spec::{FsPte, SsPte};
use crate::unit::StageKind;
use alloc::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::AtomicU64;
use hwio::dma::UnitMemory;
use x86_paging::{Config, Format, MapError, PageTable, Released, TableMemory, X86};

/// 4 KiB, the smallest page.
pub const PAGE_4K: u64 = 1 << 12;
/// 2 MiB, the large page of the page directory level.
pub const PAGE_2M: u64 = 1 << 21;
/// 0xFEE0_0000–0xFEEF_FFFF: never mapped as IOVA nor as output (interrupt requests).
pub const INTERRUPT_WINDOW: core::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// Access a mapping grants a device (execute is never granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
}

impl Perm {
    /// Read-only.
    pub const RO: Perm = Perm {
        read: true,
        write: false,
    };
    /// Read and write.
    pub const RW: Perm = Perm {
        read: true,
        write: true,
    };
}

/// What an I/O virtual address translates to in a unit's tables (`IoPageTable::translate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Physical address of the byte (the page's frame plus the offset).
    pub phys: u64,
    /// Access the leaf grants.
    pub perm: Perm,
    /// Size in bytes of the page that maps it (4 KiB, 2 MiB or 1 GiB).
    pub page_size: u64,
}

/// The second-stage entry format: present when any of R/W/X is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondStage;

impl Format for SecondStage {
    type Flags = SsPte;
    const PRESENT: u64 = 0;
    const WALKER_BITS: u64 = 0;
    const SIGN_EXTENDED: bool = false;
    fn present(entry: u64) -> bool {
        entry & (SsPte::R | SsPte::W | SsPte::X).bits() != 0
    }
}

/// Whether `addr` fits in `bits` address bits; any `bits` (a width read from hardware may
/// be anything up to 64 and beyond), never a shift by 64 or more.
pub(crate) fn fits_bits(addr: u64, bits: u8) -> bool {
    bits >= 64 || addr >> bits == 0
}

/// Table pages for the page-table code: 4 KiB blocks of the unit's DMA memory below its
/// address width. Remembers why an allocation failed.
struct Tables<'a, M: UnitMemory> {
    mem: &'a mut M,
    phys_bits: u8,
    failed: Option<VtdError>,
}

// SAFETY: `table` passes on `UnitMemory::table`, whose contract is this trait's.
unsafe impl<M: UnitMemory> TableMemory for Tables<'_, M> {
    fn alloc_table(&mut self) -> Option<u64> {
        alloc_block(self.mem, 4096, self.phys_bits)
            .map_err(|e| self.failed = Some(e))
            .ok()
    }
    fn free_table(&mut self, phys: u64) {
        self.mem.free(phys, 4096);
    }
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        self.mem.table(phys)
    }
}

/// Read-only access to a unit's tables, for walks: allocates and frees nothing.
pub(crate) struct View<'a, M: UnitMemory>(pub &'a M);

// SAFETY: as for `Tables`.
unsafe impl<M: UnitMemory> TableMemory for View<'_, M> {
    fn alloc_table(&mut self) -> Option<u64> {
        None
    }
    fn free_table(&mut self, _phys: u64) {}
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        self.0.table(phys)
    }
}

impl<'a, M: UnitMemory> Tables<'a, M> {
    fn new(mem: &'a mut M, phys_bits: u8) -> Self {
        Self {
            mem,
            phys_bits,
            failed: None,
        }
    }

    fn error(&self, e: MapError, iova: u64, len: u64) -> VtdError {
        match e {
            MapError::OutOfFrames | MapError::SplitOutOfFrames { .. } => {
                self.failed.unwrap_or(VtdError::OutOfDmaMemory)
            }
            MapError::Conflict { virt, .. } => VtdError::AlreadyMapped { iova: virt },
            MapError::NonCanonical(v) => VtdError::IovaTooWide { iova: v },
            MapError::PhysTooWide(p) => VtdError::PhysTooWide { phys: p },
            MapError::BadTable(p) => VtdError::BadDmaBlock { phys: p },
            _ => VtdError::BadRange { iova, len },
        }
    }
}

/// One address space's tree in the unit's stage. Owns its table pages.
#[derive(Debug)]
pub(crate) enum IoPageTable {
    First(PageTable<X86>),
    Second(PageTable<SecondStage>),
}

/// Runs `$body` with `$t` bound to the tree, whatever its format.
macro_rules! each {
    ($self:expr, $t:ident => $body:expr) => {
        match $self {
            IoPageTable::First($t) => $body,
            IoPageTable::Second($t) => $body,
        }
    };
}

impl IoPageTable {
    /// An empty tree: first stage 4-level, second stage `ss_levels` (3 or 4). `large_2m`
    /// allows 2 MiB leaves; 1 GiB leaves are never used.
    pub fn new(
        mem: &mut impl UnitMemory,
        stage: StageKind,
        ss_levels: u8,
        phys_bits: u8,
        large_2m: bool,
    ) -> Result<Self, VtdError> {
        let mut tables = Tables::new(mem, phys_bits);
        let r = match stage {
            StageKind::FirstStage => {
                PageTable::new(&mut tables, Config::device(large_2m, false)).map(Self::First)
            }
            StageKind::SecondStage => PageTable::new(
                &mut tables,
                Config {
                    levels: ss_levels,
                    table_flags: SsPte::R | SsPte::W,
                    large_2m,
                    large_1g: false,
                    user: false,
                },
            )
            .map(Self::Second),
        };
        r.map_err(|e| tables.error(e, 0, 0))
    }

    pub fn root(&self) -> u64 {
        each!(self, t => t.root())
    }

    #[cfg(test)]
    pub fn table_pages(&self) -> usize {
        each!(self, t => t.table_pages())
    }

    /// Input address width in bits. First stage: the lower canonical half of 48-bit.
    fn input_bits(&self) -> u8 {
        match self {
            Self::First(_) => 47,
            Self::Second(t) => 12 + 9 * t.config().levels,
        }
    }

    /// Validates a (iova, phys, len) request against the unit's rules.
    fn check(&self, iova: u64, phys: u64, len: u64, phys_bits: u8) -> Result<(), VtdError> {
        let bad = VtdError::BadRange { iova, len };
        if len == 0 || !(iova | len | phys).is_multiple_of(PAGE_4K) {
            return Err(bad);
        }
        let last = iova.checked_add(len - 1).ok_or(bad)?;
        let plast = phys.checked_add(len - 1).ok_or(bad)?;
        if !fits_bits(last, self.input_bits()) {
            return Err(VtdError::IovaTooWide { iova: last });
        }
        if !fits_bits(plast, phys_bits) {
            return Err(VtdError::PhysTooWide { phys: plast });
        }
        for (start, end) in [(iova, last), (phys, plast)] {
            if start < INTERRUPT_WINDOW.end && end >= INTERRUPT_WINDOW.start {
                return Err(VtdError::InterruptWindow { addr: start });
            }
        }
        Ok(())
    }

    /// Maps `[iova, iova+len)` to `[phys, phys+len)` with 4 KiB pages, 2 MiB where aligned
    /// and no table is in the way. All or nothing: if any page is mapped already, no leaf
    /// is written.
    pub fn map(
        &mut self,
        mem: &mut impl UnitMemory,
        phys_bits: u8,
        iova: u64,
        phys: u64,
        len: u64,
        perm: Perm,
    ) -> Result<(), VtdError> {
        self.check(iova, phys, len, phys_bits)?;
        let mut tables = Tables::new(mem, phys_bits);
        let r = match self {
            Self::First(t) => {
                let mut f = FsPte::PRESENT | FsPte::USER;
                f.set(FsPte::WRITABLE, perm.write);
                t.map(iova, phys, len, f, &mut tables)
            }
            Self::Second(t) => {
                let mut f = SsPte::empty();
                f.set(SsPte::R, perm.read);
                f.set(SsPte::W, perm.write);
                t.map(iova, phys, len, f, &mut tables)
            }
        };
        r.map_err(|e| tables.error(e, iova, len))
    }

    /// Unmaps every mapped page in the range (absent pages are skipped), splitting 2 MiB
    /// leaves that are only partly covered; a leaf that cannot be split for want of memory
    /// is unmapped whole (the safe side). Table pages that the range empties whole are
    /// unlinked and added to `tables`: free them after the invalidation. Returns the bytes
    /// unmapped.
    pub fn unmap(
        &mut self,
        mem: &mut impl UnitMemory,
        phys_bits: u8,
        iova: u64,
        len: u64,
        tables: &mut Vec<u64>,
    ) -> Result<u64, VtdError> {
        // Nothing lives beyond the table's input width, as in `map` (the fuzz harness found
        // the walk's skip to the next top-level slot overflowing at the top of 2^64).
        if !iova
            .checked_add(len.max(1) - 1)
            .is_some_and(|last| fits_bits(last, self.input_bits()))
        {
            return Err(VtdError::IovaTooWide { iova });
        }
        let mut mem = Tables::new(mem, phys_bits);
        let mut keep = |r: Released| {
            if let Released::Table(p) = r {
                tables.push(p);
            }
        };
        let (mut at, end) = (iova, iova.saturating_add(len));
        let mut done = 0;
        while at < end {
            let r = each!(&mut *self, t => t.unmap(at, end - at, &mut mem, &mut keep));
            match r {
                Ok(n) => return Ok(done + n),
                Err(MapError::SplitOutOfFrames { page, size }) => {
                    log::warn!(
                        "vtd: no memory to split the mapping at {page:#x}; unmapping all {} KiB of it",
                        size.bytes() >> 10
                    );
                    let whole =
                        each!(&mut *self, t => t.unmap(page, size.bytes(), &mut mem, &mut keep));
                    done += whole.map_err(|e| mem.error(e, page, size.bytes()))?;
                    at = page.saturating_add(size.bytes());
                }
                Err(e) => return Err(mem.error(e, iova, len)),
            }
        }
        Ok(done)
    }

    /// Software walk, as the unit would do it.
    pub fn translate(&self, mem: &impl UnitMemory, iova: u64) -> Option<Translation> {
        if !fits_bits(iova, self.input_bits()) {
            return None;
        }
        let mem = View(mem);
        let (phys, perm, size) = match self {
            Self::First(t) => {
                let x = t.translate(iova, &mem)?;
                let write = x.flags.contains(FsPte::WRITABLE);
                (x.phys, Perm { read: true, write }, x.size)
            }
            Self::Second(t) => {
                let x = t.translate(iova, &mem)?;
                let (read, write) = (x.flags.contains(SsPte::R), x.flags.contains(SsPte::W));
                (x.phys, Perm { read, write }, x.size)
            }
        };
        Some(Translation {
            phys,
            perm,
            page_size: size.bytes(),
        })
    }

    /// Frees every table page. The tree must no longer be referenced by any PASID entry.
    pub fn free(self, mem: &mut impl UnitMemory) {
        let mut pages = Vec::new();
        let mut keep = |r: Released| {
            if let Released::Table(p) = r {
                pages.push(p);
            }
        };
        let mut tables = Tables::new(mem, 64);
        if let Err(e) = each!(self, t => t.teardown(&mut tables, &mut keep)) {
            log::error!("vtd: page-table teardown stopped ({e}); leaking the rest");
        }
        for p in pages {
            tables.free_table(p);
        }
    }
}

pub(crate) fn alloc_block(
    mem: &mut impl UnitMemory,
    size: usize,
    phys_bits: u8,
) -> Result<u64, VtdError> {
    let pa = mem
        .alloc_zeroed(size, 4096)
        .ok_or(VtdError::OutOfDmaMemory)?;
    let fits = (size as u64)
        .checked_sub(1)
        .and_then(|n| pa.checked_add(n))
        .is_some_and(|last| fits_bits(last, phys_bits));
    if pa % 4096 != 0 || !fits {
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
