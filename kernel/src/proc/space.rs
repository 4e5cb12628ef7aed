//! A process's address space: its own root (CR3, and later its PASID's first-stage root)
//! sharing the frozen kernel half (`mm::new_address_space`, supervisor-only PML4 entries),
//! the user half `[USER_BASE, USER_TOP)` described by areas: the program's segments
//! (mapped at load, never unmapped) and anonymous memory (the stack, `mmap`) faulted in
//! lazily as zeroed frames. All table changes go through `x86_paging` (the one
//! implementation); freeing waits for the caller's TLB shootdown.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use klib::userelf::Program;
use user_abi::{Error, MMAP_MAX, PAGE, STACK_SIZE, STACK_TOP, USER_TOP, user_range_ok};
use x86_paging::{Config, PageTable, PteFlags, Released, TableMemory};

use crate::mm::{FrameBlock, MmError, TableFrames};

/// Where `mmap` without an address starts looking.
const MMAP_BASE: u64 = 0x5000_0000_0000;
/// Most anonymous memory one process may map (sum over its areas, the stack included).
const ANON_LIMIT: u64 = 4 * MMAP_MAX;

/// A range of the user half.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// Writable.
    pub writable: bool,
    /// Executable (program text only).
    pub executable: bool,
    /// Anonymous, faulted in lazily, may be unmapped.
    pub anonymous: bool,
}

/// What a user page fault turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOutcome {
    /// A page of an anonymous area was mapped: resume.
    Mapped,
    /// Not a lazily mapped page: the process is at fault.
    Invalid,
    /// No memory for the page.
    OutOfMemory,
}

/// The address space.
pub struct Space {
    pt: Option<PageTable>,
    areas: BTreeMap<u64, Area>,
    next_mmap: u64,
    anon: u64,
    /// Device portal pages mapped into the user half: (user address, physical page). Not
    /// RAM: never freed as frames, unmapped before the tables go.
    portals: Vec<(u64, u64)>,
}

fn nx() -> bool {
    crate::arch::features().nx
}

impl Space {
    /// An empty user half over the shared kernel half.
    pub fn new() -> Result<Self, MmError> {
        // 4 KiB and 2 MiB user pages only (1 GiB leaves would also need VT-d FS1GP once
        // the tables are a PASID's first stage).
        let pt = crate::mm::new_address_space(Config::user(false))?;
        Ok(Self {
            pt: Some(pt),
            areas: BTreeMap::new(),
            next_mmap: MMAP_BASE,
            anon: 0,
            portals: Vec::new(),
        })
    }

    /// Physical address of the root (CR3).
    pub fn root(&self) -> u64 {
        self.pt.as_ref().map_or(0, PageTable::root)
    }

    fn pt(&mut self) -> Result<&mut PageTable, MmError> {
        self.pt.as_mut().ok_or(MmError::NotInitialized)
    }

    /// The physical address `virt` maps to.
    pub fn translate(&self, virt: u64) -> Option<u64> {
        self.pt
            .as_ref()?
            .translate(virt, &TableFrames)
            .map(|t| t.phys)
    }

    /// The area containing `addr`.
    pub fn area_at(&self, addr: u64) -> Option<(u64, Area)> {
        self.areas
            .range(..=addr)
            .next_back()
            .filter(|(_, a)| addr < a.end)
            .map(|(s, a)| (*s, *a))
    }

    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.areas
            .range(..end)
            .next_back()
            .is_some_and(|(_, a)| a.end > start)
    }

    /// Maps a validated program image: every page of every segment gets a zeroed frame
    /// holding its file bytes, with the segment's permissions (W^X checked by the parser).
    pub fn load(&mut self, prog: &Program, image: &[u8]) -> Result<(), MmError> {
        for seg in prog.segments() {
            let end = seg.end_page();
            let flags = PteFlags::user_leaf(seg.writable, seg.executable, nx());
            let mut page = seg.vaddr;
            while page < end {
                let frame = crate::mm::alloc_frames(PAGE, PAGE)?.leak();
                // File bytes of this page: [lo, hi) relative to the segment start.
                let lo = page - seg.vaddr;
                let hi = (lo + PAGE).min(seg.file_size);
                if hi > lo {
                    let src =
                        &image[(seg.file_offset + lo) as usize..(seg.file_offset + hi) as usize];
                    // SAFETY: `frame` is a fresh, identity-mapped 4 KiB frame owned here;
                    // `src` is at most a page.
                    unsafe {
                        core::ptr::copy_nonoverlapping(src.as_ptr(), frame as *mut u8, src.len());
                    }
                }
                if let Err(e) = self.pt()?.map(page, frame, PAGE, flags, &mut TableFrames) {
                    // SAFETY: the frame was not mapped: still ours alone.
                    drop(unsafe { FrameBlock::from_raw(frame, 0) });
                    return Err(e.into());
                }
                page += PAGE;
            }
            self.areas.insert(
                seg.vaddr,
                Area {
                    end,
                    writable: seg.writable,
                    executable: seg.executable,
                    anonymous: false,
                },
            );
        }
        self.add_anonymous(STACK_TOP - STACK_SIZE, STACK_SIZE, true)
            .map_err(|_| MmError::BadRequest {
                size: STACK_SIZE,
                align: PAGE,
            })?;
        Ok(())
    }

    fn add_anonymous(&mut self, start: u64, len: u64, writable: bool) -> Result<(), Error> {
        if self.overlaps(start, start + len) {
            return Err(Error::Overlap);
        }
        if self.anon + len > ANON_LIMIT {
            return Err(Error::NoMemory);
        }
        self.anon += len;
        self.areas.insert(
            start,
            Area {
                end: start + len,
                writable,
                executable: false,
                anonymous: true,
            },
        );
        Ok(())
    }

    /// Maps the device portal page at physical `phys` (MMIO, never RAM) into the user half,
    /// once: the address it already has if it was mapped before. Flags `P|RW|U|PCD|PWT|NX|
    /// A|D`: uncached (Intel SDM Vol. 3A §11.12: PCD|PWT with the reset PAT is UC; enqueue
    /// stores ignore the memory type, and no speculative read may reach the device), never
    /// executable. The area is not anonymous: `munmap` refuses it and a fault in it kills.
    pub fn map_portal(&mut self, phys: u64) -> Result<u64, Error> {
        if !phys.is_multiple_of(PAGE) {
            return Err(Error::Misaligned);
        }
        if let Some(&(va, _)) = self.portals.iter().find(|(_, p)| *p == phys) {
            return Ok(va);
        }
        let va = self.pick(PAGE)?;
        let flags = PteFlags::user_leaf(true, false, nx())
            .union(PteFlags::NO_CACHE)
            .union(PteFlags::WRITE_THROUGH);
        self.pt()
            .map_err(|_| Error::NoMemory)?
            .map(va, phys, PAGE, flags, &mut TableFrames)
            .map_err(|_| Error::NoMemory)?;
        self.areas.insert(
            va,
            Area {
                end: va + PAGE,
                writable: true,
                executable: false,
                anonymous: false,
            },
        );
        self.portals.push((va, phys));
        self.next_mmap = va + 2 * PAGE;
        Ok(va)
    }

    /// The portal pages mapped: (user address, physical page, leaf flags).
    #[cfg(feature = "ktest")]
    pub fn portal_mappings(&self) -> Vec<(u64, u64, PteFlags)> {
        self.portals
            .iter()
            .filter_map(|&(va, _)| {
                let t = self.pt.as_ref()?.translate(va, &TableFrames)?;
                Some((va, t.phys, t.flags))
            })
            .collect()
    }

    /// The next free range of `len` bytes above [`MMAP_BASE`].
    fn pick(&self, len: u64) -> Result<u64, Error> {
        let mut a = self.next_mmap;
        // Skip areas in the way (bounded: each step passes one area).
        while self.overlaps(a, a.checked_add(len).ok_or(Error::NoMemory)?) {
            let (_, area) = self
                .area_at(a)
                .or_else(|| self.areas.range(a..).next().map(|(s, ar)| (*s, *ar)))
                .ok_or(Error::NoMemory)?;
            a = area.end;
        }
        if !user_range_ok(a, len) || a + len > STACK_TOP - STACK_SIZE {
            return Err(Error::NoMemory);
        }
        Ok(a)
    }

    /// `mmap`: arguments already checked for alignment and range by the caller;
    /// `addr` = 0 picks the next free range above [`MMAP_BASE`].
    pub fn mmap(&mut self, addr: u64, len: u64, writable: bool) -> Result<u64, Error> {
        let start = if addr != 0 { addr } else { self.pick(len)? };
        self.add_anonymous(start, len, writable)?;
        if addr == 0 {
            // One guard page between consecutive mappings.
            self.next_mmap = start + len + PAGE;
        }
        Ok(start)
    }

    /// `munmap`: `[start, start+len)` (checked page-aligned, in the user half) must lie in
    /// anonymous areas entirely. Clears the leaves and hands their frames and unlinked table
    /// pages to `freed`; the caller frees them after the TLB shootdown.
    pub fn munmap(&mut self, start: u64, len: u64, freed: &mut Vec<Released>) -> Result<(), Error> {
        let end = start + len;
        // Covered without holes by anonymous areas?
        let mut at = start;
        while at < end {
            match self.area_at(at) {
                Some((_, a)) if a.anonymous => at = a.end,
                _ => return Err(Error::NotMapped),
            }
        }
        // Cut the areas.
        let hit: Vec<(u64, Area)> = self
            .areas
            .range(..end)
            .filter(|(_, a)| a.end > start)
            .map(|(s, a)| (*s, *a))
            .collect();
        for (s, a) in hit {
            self.areas.remove(&s);
            if s < start {
                self.areas.insert(s, Area { end: start, ..a });
            }
            if a.end > end {
                self.areas.insert(end, a);
            }
        }
        self.anon = self.anon.saturating_sub(len);
        let pt = self.pt().map_err(|_| Error::NoMemory)?;
        pt.unmap(start, len, &mut TableFrames, &mut |r| freed.push(r))
            .map_err(|_| Error::NoMemory)?;
        Ok(())
    }

    /// A user #PF at `addr` (`write`: the access was a write; `present`: the page was
    /// mapped, so it is a protection fault; `fetch`: an instruction fetch).
    pub fn fault(&mut self, addr: u64, write: bool, present: bool, fetch: bool) -> FaultOutcome {
        let Some((_, area)) = self.area_at(addr) else {
            return FaultOutcome::Invalid;
        };
        if present || fetch || !area.anonymous || (write && !area.writable) || addr >= USER_TOP {
            return FaultOutcome::Invalid;
        }
        let page = addr & !(PAGE - 1);
        let Ok(frame) = crate::mm::alloc_frames(PAGE, PAGE) else {
            return FaultOutcome::OutOfMemory;
        };
        let frame = frame.leak();
        let flags = PteFlags::user_leaf(area.writable, false, nx());
        let Ok(pt) = self.pt() else {
            return FaultOutcome::OutOfMemory;
        };
        match pt.map(page, frame, PAGE, flags, &mut TableFrames) {
            Ok(()) => FaultOutcome::Mapped,
            Err(e) => {
                // SAFETY: not mapped: the frame is still ours alone.
                drop(unsafe { FrameBlock::from_raw(frame, 0) });
                if matches!(e, x86_paging::MapError::Conflict { .. }) {
                    // Another thread of the process faulted the page in first.
                    FaultOutcome::Mapped
                } else {
                    FaultOutcome::OutOfMemory
                }
            }
        }
    }
}

/// Frees what an unmap or teardown released (after the shootdown).
pub fn free_released(released: Vec<Released>) {
    for r in released {
        match r {
            Released::Table(t) => TableFrames.free_table(t),
            leaf @ Released::Leaf { .. } => {
                // SAFETY: every user leaf maps one 4 KiB frame this module allocated and
                // nobody else owns; the caller invalidated every TLB that could hold it.
                drop(unsafe { FrameBlock::from_raw(leaf.phys() & !(PAGE - 1), 0) });
            }
        }
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        // Only reached once no CPU has the root loaded (the scheduler holds a reference
        // while it is in CR3; a CR3 switch flushed the non-global TLB entries).
        if let Some(mut pt) = self.pt.take() {
            let mut freed = Vec::new();
            // Portal pages first: their leaves are device memory, not frames to free (the
            // table pages an unmap unlinks are ours).
            for (va, _) in core::mem::take(&mut self.portals) {
                if let Err(e) = pt.unmap(va, PAGE, &mut TableFrames, &mut |r| {
                    if matches!(r, Released::Table(_)) {
                        freed.push(r);
                    }
                }) {
                    log::error!("portal unmap at {va:#x} failed ({e}); the tables are leaked");
                    return;
                }
            }
            if let Err(e) = pt.teardown(&mut TableFrames, &mut |r| freed.push(r)) {
                log::error!("address space teardown failed ({e}); its memory is leaked");
                return;
            }
            free_released(freed);
        }
    }
}
