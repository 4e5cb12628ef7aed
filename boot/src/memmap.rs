//! The physical memory map, normalised.
//!
//! Firmware maps may be unsorted, overlap, or split one range into many. [`MemoryMap::
//! normalize`] turns them into sorted, disjoint, merged regions; where regions overlap,
//! the more restrictive kind wins (bad > reserved > NVS > ACPI reclaimable > usable), so
//! nothing the firmware reserves can end up in the frame allocator. Whatever lies at or
//! above the physical address limit ([`PHYS_ADDR_LIMIT`], or the CPU's own, see
//! [`MemoryMap::clip`]) is cut off, so page rounding of a region never overflows.

use core::fmt;

/// Kind of a physical range (E820 / Multiboot2 type codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemKind {
    /// Type 1: usable RAM.
    Usable,
    /// Type 3: ACPI tables, reclaimable after parsing.
    AcpiReclaimable,
    /// Type 4: ACPI NVS, must be preserved.
    AcpiNvs,
    /// Type 2 and unknown types: reserved.
    Reserved,
    /// Type 5: defective RAM.
    Bad,
}

impl MemKind {
    /// From an E820 / Multiboot2 memory type.
    pub fn from_e820(t: u32) -> Self {
        match t {
            1 => Self::Usable,
            3 => Self::AcpiReclaimable,
            4 => Self::AcpiNvs,
            5 => Self::Bad,
            _ => Self::Reserved,
        }
    }

    /// Whether this kind is RAM that the kernel maps as write-back memory.
    pub fn is_ram(self) -> bool {
        matches!(self, Self::Usable | Self::AcpiReclaimable | Self::AcpiNvs)
    }

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Self::Usable => "usable",
            Self::AcpiReclaimable => "ACPI data",
            Self::AcpiNvs => "ACPI NVS",
            Self::Reserved => "reserved",
            Self::Bad => "bad",
        }
    }
}

/// One region `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// Kind.
    pub kind: MemKind,
}

impl Region {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }
    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{:#014x}-{:#014x}) {:>10} KiB {}",
            self.start,
            self.end,
            self.len() >> 10,
            self.kind.name()
        )
    }
}

/// Maximum number of regions kept.
pub const MAX_REGIONS: usize = 256;

/// The architectural maximum physical address width of x86-64 is 52 bits (MAXPHYADDR,
/// Intel SDM Vol. 3A §4.1.4): nothing a memory map says about addresses at or above
/// 2^52 can be memory the CPU reaches. [`MemoryMap::normalize`] cuts there.
pub const PHYS_ADDR_LIMIT: u64 = 1 << 52;

const PAGE: u64 = 4096;

/// A fixed-capacity memory map (usable before any allocator exists).
#[derive(Clone)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
    /// Regions dropped because the map was full.
    pub dropped: usize,
    /// Entries cut or dropped because they reach the physical address limit.
    pub clipped: usize,
}

impl fmt::Debug for MemoryMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.regions()).finish()
    }
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

const EMPTY: Region = Region {
    start: 0,
    end: 0,
    kind: MemKind::Reserved,
};

impl MemoryMap {
    /// An empty map.
    pub const fn new() -> Self {
        Self {
            regions: [EMPTY; MAX_REGIONS],
            len: 0,
            dropped: 0,
            clipped: 0,
        }
    }

    /// Adds `[start, start+len)`; zero-length and wrapping entries are clipped/ignored.
    pub fn push(&mut self, start: u64, len: u64, kind: MemKind) {
        let end = start.saturating_add(len);
        if end <= start {
            return;
        }
        if self.len == MAX_REGIONS {
            self.dropped += 1;
            return;
        }
        self.regions[self.len] = Region { start, end, kind };
        self.len += 1;
    }

    /// The regions.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// Cuts every region at `limit` (a physical address limit, e.g. 2^MAXPHYADDR): what
    /// lies at or above it is dropped and counted in [`MemoryMap::clipped`].
    pub fn clip(&mut self, limit: u64) {
        let mut kept = 0;
        for i in 0..self.len {
            let mut r = self.regions[i];
            if r.end > limit {
                self.clipped += 1;
                r.end = limit;
            }
            if r.start < r.end {
                self.regions[kept] = r;
                kept += 1;
            }
        }
        self.len = kept;
    }

    /// Makes the map sorted, disjoint and merged; overlaps resolve to the more
    /// restrictive kind. Everything at or above [`PHYS_ADDR_LIMIT`] is cut off first.
    pub fn normalize(&mut self) {
        self.clip(PHYS_ADDR_LIMIT);
        let n = self.len;
        // Elementary intervals between all boundaries.
        let mut points = [0u64; 2 * MAX_REGIONS];
        for (i, r) in self.regions().iter().enumerate() {
            points[2 * i] = r.start;
            points[2 * i + 1] = r.end;
        }
        let pts = &mut points[..2 * n];
        pts.sort_unstable();
        let mut out = MemoryMap::new();
        let mut prev: Option<u64> = None;
        for &p in pts.iter() {
            if let Some(a) = prev
                && p > a
            {
                let kind = self
                    .regions()
                    .iter()
                    .filter(|r| r.start <= a && a < r.end)
                    .map(|r| r.kind)
                    .max();
                if let Some(kind) = kind {
                    match out.len.checked_sub(1).map(|i| &mut out.regions[i]) {
                        Some(last) if last.end == a && last.kind == kind => last.end = p,
                        _ => out.push(a, p - a, kind),
                    }
                }
            }
            prev = Some(p);
        }
        out.dropped = self.dropped;
        out.clipped = self.clipped;
        *self = out;
    }

    /// Total bytes of the given kind (saturating: overlapping regions of a map that is
    /// not normalised may add up past 2^64).
    pub fn total(&self, kind: MemKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .fold(0u64, |t, r| t.saturating_add(r.len()))
    }

    /// Highest end address of any RAM region.
    pub fn ram_end(&self) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind.is_ram())
            .map(|r| r.end)
            .max()
            .unwrap_or(0)
    }

    /// The kind covering `addr`, if any.
    pub fn kind_at(&self, addr: u64) -> Option<MemKind> {
        self.regions()
            .iter()
            .find(|r| r.start <= addr && addr < r.end)
            .map(|r| r.kind)
    }

    /// Whether `[start, end)` lies entirely inside usable regions.
    pub fn is_usable(&self, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self
                .regions()
                .iter()
                .find(|r| r.start <= at && at < r.end && r.kind == MemKind::Usable)
            {
                Some(r) => at = r.end,
                None => return false,
            }
        }
        true
    }

    /// Calls `f` for every page-aligned part of the usable regions that avoids all
    /// `exclude` ranges (`[start, end)` pairs, any order, may overlap). Rounding is checked:
    /// a region whose start rounds up past the end of the address space is skipped.
    pub fn for_each_free_range(&self, exclude: &[(u64, u64)], mut f: impl FnMut(u64, u64)) {
        for r in self.regions().iter().filter(|r| r.kind == MemKind::Usable) {
            let Some(mut start) = page_up(r.start) else {
                continue;
            };
            let end = r.end / PAGE * PAGE;
            while start < end {
                // First exclusion that intersects [start, end).
                let hit = exclude
                    .iter()
                    .filter(|&&(s, e)| s < end && e > start)
                    .min_by_key(|&&(s, _)| s);
                match hit {
                    None => {
                        f(start, end);
                        break;
                    }
                    Some(&(s, e)) => {
                        let s = s / PAGE * PAGE;
                        if s > start {
                            f(start, s);
                        }
                        // An exclusion reaching the last page covers the rest.
                        match page_up(e) {
                            Some(e) => start = e,
                            None => break,
                        }
                    }
                }
            }
        }
    }
}

/// `x` rounded up to a page boundary, `None` past the end of the address space.
fn page_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE - 1).map(|v| v / PAGE * PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_sorts_merges_and_resolves_overlaps() {
        let mut m = MemoryMap::new();
        m.push(0x100000, 0x7ee0000, MemKind::Usable);
        m.push(0, 0x9fc00, MemKind::Usable);
        m.push(0x9fc00, 0x400, MemKind::Reserved);
        m.push(0xf0000, 0x10000, MemKind::Reserved);
        m.push(0x7fe0000, 0x20000, MemKind::Reserved);
        m.push(0x8000000, 0x100000, MemKind::Usable); // adjacent to nothing usable
        m.push(0x200000, 0x1000, MemKind::AcpiReclaimable); // inside usable
        m.push(0x7000000, 0x2000000, MemKind::Reserved); // overlaps usable tail + the reserved one
        m.push(0x5000, 0, MemKind::Bad); // empty
        m.normalize();
        let r = m.regions();
        let want = [
            (0, 0x9fc00, MemKind::Usable),
            (0x9fc00, 0xa0000, MemKind::Reserved),
            (0xf0000, 0x100000, MemKind::Reserved),
            (0x100000, 0x200000, MemKind::Usable),
            (0x200000, 0x201000, MemKind::AcpiReclaimable),
            (0x201000, 0x7000000, MemKind::Usable),
            (0x7000000, 0x9000000, MemKind::Reserved),
        ];
        assert_eq!(r.len(), want.len(), "{r:#x?}");
        for (a, (s, e, k)) in r.iter().zip(want) {
            assert_eq!((a.start, a.end, a.kind), (s, e, k));
        }
        assert_eq!(m.ram_end(), 0x7000000);
        assert!(m.is_usable(0x100000, 0x1ff000));
        assert!(!m.is_usable(0x100000, 0x201000));
        assert_eq!(m.kind_at(0x9fc10), Some(MemKind::Reserved));
        assert_eq!(m.kind_at(0xa0000), None);
    }

    #[test]
    fn merges_adjacent_same_kind() {
        let mut m = MemoryMap::new();
        m.push(0x2000, 0x1000, MemKind::Usable);
        m.push(0x1000, 0x1000, MemKind::Usable);
        m.push(0x3000, 0x1000, MemKind::Usable);
        m.normalize();
        assert_eq!(
            m.regions(),
            &[Region {
                start: 0x1000,
                end: 0x4000,
                kind: MemKind::Usable
            }]
        );
    }

    #[test]
    fn free_ranges_skip_exclusions_and_unaligned_edges() {
        let mut m = MemoryMap::new();
        m.push(0x800, 0x10000, MemKind::Usable); // unaligned start and end
        m.push(0x100000, 0x100000, MemKind::Usable);
        m.normalize();
        let mut got = Vec::new();
        m.for_each_free_range(
            &[(0x150000, 0x160800), (0x3000, 0x4000), (0x120000, 0x130000)],
            |s, e| got.push((s, e)),
        );
        assert_eq!(
            got,
            vec![
                (0x1000, 0x3000),
                (0x4000, 0x10000),
                (0x100000, 0x120000),
                (0x130000, 0x150000),
                (0x161000, 0x200000)
            ]
        );
    }

    #[test]
    fn capacity_is_bounded() {
        let mut m = MemoryMap::new();
        for i in 0..(MAX_REGIONS as u64 + 5) {
            m.push(i * 0x2000, 0x1000, MemKind::Usable);
        }
        assert_eq!(m.regions().len(), MAX_REGIONS);
        assert_eq!(m.dropped, 5);
        m.normalize();
        assert_eq!(m.dropped, 5);
    }

    #[test]
    fn entries_beyond_the_physical_address_limit_are_cut() {
        // An entry in the last page of the 64-bit space (unaligned start): rounding its start
        // up to a page used to overflow (debug panic; release wrapped to 0 and reported
        // almost the whole address space as free RAM).
        let mut m = MemoryMap::new();
        m.push(0x10_0000, 0x100_0000, MemKind::Usable);
        m.push(0xffff_ffff_ffff_f800, 0x7ff, MemKind::Usable);
        m.push(0xffff_ffff_ffff_f800, u64::MAX, MemKind::Usable); // wraps: saturates
        m.push(PHYS_ADDR_LIMIT - 0x2000, 0x4000, MemKind::Usable); // straddles the limit
        m.normalize();
        assert_eq!(m.clipped, 3);
        assert_eq!(
            m.regions(),
            &[
                Region {
                    start: 0x10_0000,
                    end: 0x110_0000,
                    kind: MemKind::Usable
                },
                Region {
                    start: PHYS_ADDR_LIMIT - 0x2000,
                    end: PHYS_ADDR_LIMIT,
                    kind: MemKind::Usable
                }
            ]
        );
        assert_eq!(m.ram_end(), PHYS_ADDR_LIMIT);
        let mut got = Vec::new();
        m.for_each_free_range(&[(0, 0x20_0000)], |s, e| got.push((s, e)));
        assert_eq!(
            got,
            vec![
                (0x20_0000, 0x110_0000),
                (PHYS_ADDR_LIMIT - 0x2000, PHYS_ADDR_LIMIT)
            ]
        );
        // The CPU's own limit cuts further.
        m.clip(1 << 40);
        assert_eq!(m.regions().len(), 1);
        assert_eq!(m.ram_end(), 0x110_0000);
    }

    #[test]
    fn free_ranges_never_overflow_on_unnormalized_maps_or_huge_exclusions() {
        let mut m = MemoryMap::new();
        m.push(0xffff_ffff_ffff_e001, 0xffe, MemKind::Usable);
        m.push(0x1000, 0x3000, MemKind::Usable);
        let mut got = Vec::new();
        m.for_each_free_range(&[(0x2000, u64::MAX)], |s, e| got.push((s, e)));
        assert_eq!(got, vec![(0x1000, 0x2000)]);
    }
}
