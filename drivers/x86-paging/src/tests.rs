//! Host tests. Table pages live in host buffers at synthetic physical addresses (not their
//! pointers), so a table reached without going through `TableMemory::table` would fault.
//! The expected values are written out by hand from the SDM's layout, not computed by the
//! code under test.

use super::*;
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

#[repr(C, align(4096))]
struct Page([AtomicU64; ENTRIES]);

/// A "hardware" write injected at the n-th table lookup: OR `bits` into the entry at `addr`
/// if it is present (what a CPU or IOMMU walker does to A/D).
#[derive(Clone, Copy)]
struct Inject {
    after_lookups: usize,
    addr: u64,
    bits: u64,
}

#[derive(Default)]
struct HostMem {
    pages: BTreeMap<u64, Box<Page>>,
    next: u64,
    /// Allocations left before `alloc_table` fails.
    budget: Option<usize>,
    frees: usize,
    lookups: Cell<usize>,
    inject: Cell<Option<Inject>>,
}

impl HostMem {
    fn new() -> Self {
        Self {
            next: 0x10_0000_0000,
            ..Default::default()
        }
    }
    fn read(&self, addr: u64) -> u64 {
        let p = &self.pages[&(addr & !0xfff)];
        p.0[((addr & 0xfff) / 8) as usize].load(Ordering::SeqCst)
    }
    fn write(&self, addr: u64, v: u64) {
        let p = &self.pages[&(addr & !0xfff)];
        p.0[((addr & 0xfff) / 8) as usize].store(v, Ordering::SeqCst);
    }
    fn live(&self) -> BTreeSet<u64> {
        self.pages.keys().copied().collect()
    }
    /// Inject `bits` into the entry at `addr` on the lookup after the next `n` ones.
    fn inject_after(&self, n: usize, addr: u64, bits: u64) {
        self.lookups.set(0);
        self.inject.set(Some(Inject {
            after_lookups: n,
            addr,
            bits,
        }));
    }
}

// SAFETY: every page is a live, 4 KiB-aligned boxed array of 512 atomics until
// `free_table` removes it; `table` only answers for such pages.
unsafe impl TableMemory for HostMem {
    fn alloc_table(&mut self) -> Option<u64> {
        if let Some(b) = self.budget.as_mut() {
            if *b == 0 {
                return None;
            }
            *b -= 1;
        }
        let phys = self.next;
        // A gap between pages: an entry pointing one page off reaches nothing.
        self.next += 0x2000;
        let page = Box::new(Page(core::array::from_fn(|_| AtomicU64::new(0))));
        self.pages.insert(phys, page);
        Some(phys)
    }
    fn free_table(&mut self, phys: u64) {
        self.pages
            .remove(&phys)
            .expect("free of a page that is not live");
        self.frees += 1;
    }
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>> {
        let n = self.lookups.get();
        self.lookups.set(n + 1);
        if let Some(i) = self.inject.get()
            && i.after_lookups == n
        {
            self.inject.set(None);
            let p = &self.pages[&(i.addr & !0xfff)];
            let slot = &p.0[((i.addr & 0xfff) / 8) as usize];
            let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |e| {
                (e & 1 != 0).then_some(e | i.bits)
            });
        }
        self.pages
            .get(&phys)
            .map(|p| NonNull::from(&p.0).cast::<AtomicU64>())
    }
}

const K: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;

fn kernel_table(mem: &mut HostMem, big: bool) -> PageTable {
    PageTable::new(mem, Config::kernel(big)).unwrap()
}

fn entries_of(mem: &HostMem, t: &PageTable, virt: u64) -> Vec<(u8, u64, u64)> {
    t.walk(virt, mem)
        .map(|e| e.map(|e| (e.level, e.addr, e.value)).unwrap())
        .collect()
}

#[test]
fn picks_largest_pages_and_translates() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    // 4 KiB head, 2 MiB middle, 1 GiB page, 4 KiB tail.
    let start = G1 - M2 - K;
    let len = K + M2 + G1 + K;
    t.map(start, start, len, RAM, &mut m).unwrap();
    let x = t.translate(start, &m).unwrap();
    assert_eq!((x.phys, x.size), (start, PageSize::Size4K));
    let x = t.translate(start + K + 123, &m).unwrap();
    assert_eq!((x.phys, x.size), (start + K + 123, PageSize::Size2M));
    let x = t.translate(G1 + 0x1234_5678, &m).unwrap();
    assert_eq!((x.phys, x.size), (G1 + 0x1234_5678, PageSize::Size1G));
    assert!(x.flags.contains(PteFlags::HUGE | PteFlags::WRITABLE));
    let x = t.translate(2 * G1, &m).unwrap();
    assert_eq!(x.size, PageSize::Size4K);
    assert_eq!(t.translate(2 * G1 + K, &m), None);
    assert_eq!(t.translate(start - K, &m), None);
    // PML4, PDPT, PD for the first GiB, PT for the head, PD + PT for the tail.
    assert_eq!(t.table_pages(), 6);
}

#[test]
fn without_1g_uses_2m() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, false);
    t.map(0, 0, G1, RAM, &mut m).unwrap();
    assert_eq!(t.translate(0x1234_5678, &m).unwrap().size, PageSize::Size2M);
    let mut t = PageTable::new(&mut m, Config::device(false, false)).unwrap();
    t.map(0, 0, 4 * M2, RAM, &mut m).unwrap();
    assert_eq!(t.translate(M2, &m).unwrap().size, PageSize::Size4K);
}

#[test]
fn entries_are_exactly_as_the_sdm_lays_them_out() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::device(true, false)).unwrap();
    let virt = 0x7f80_4020_3000u64; // indices 255, 1, 1, 3
    t.map(virt, 0x1_2345_6000, K, RAM | PteFlags::USER, &mut m)
        .unwrap();
    let e = entries_of(&m, &t, virt + 0xabc);
    assert_eq!(e.len(), 4);
    let mut table = t.root();
    for ((level, addr, value), (want_level, idx)) in
        e.iter().zip([(4, 255), (3, 1), (2, 1), (1, 3)])
    {
        assert_eq!(*level, want_level);
        assert_eq!(*addr, table + 8 * idx, "level {level}");
        assert_eq!(m.read(*addr), *value);
        if *level > 1 {
            assert_eq!(value & 0xfff, 0x7, "non-leaf P|RW|US at level {level}");
            table = value & ADDR_MASK;
            assert!(m.pages.contains_key(&table));
        }
    }
    assert_eq!(e[3].2, 0x1_2345_6000 | 0x7, "leaf: frame | P|RW|US");
}

#[test]
fn identical_remap_is_kept_by_ensure_and_conflicts_are_errors() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    t.ensure(0xfee0_0000, 0xfee0_0000, K, MMIO, &mut m).unwrap();
    t.ensure(0xfee0_0000, 0xfee0_0000, K, MMIO, &mut m).unwrap();
    // The walker's A/D bits do not make a mapping different.
    let leaf = entries_of(&m, &t, 0xfee0_0000)[3].1;
    m.write(leaf, m.read(leaf) | A | D);
    t.ensure(0xfee0_0000, 0xfee0_0000, K, MMIO, &mut m).unwrap();
    assert_eq!(
        t.map(0xfee0_0000, 0xfee0_0000, K, MMIO, &mut m),
        Err(MapError::Conflict {
            virt: 0xfee0_0000,
            existing: m.read(leaf)
        }),
        "map refuses even an identical page"
    );
    let e = t
        .ensure(0xfee0_0000, 0xfee0_0000, K, RAM, &mut m)
        .unwrap_err();
    assert!(matches!(
        e,
        MapError::Conflict {
            virt: 0xfee0_0000,
            ..
        }
    ));
    let e = t.ensure(0xfee0_0000, 0x1000, K, MMIO, &mut m).unwrap_err();
    assert!(matches!(e, MapError::Conflict { .. }));
    // A 4 KiB request inside an identical 1 GiB page is already satisfied.
    t.ensure(G1, G1, G1, MMIO, &mut m).unwrap();
    let before = m.pages.len();
    t.ensure(G1 + 0x5000, G1 + 0x5000, K, MMIO, &mut m).unwrap();
    t.ensure(G1 + 0x5000, G1 + 0x5000, 2 * M2, MMIO, &mut m)
        .unwrap();
    assert_eq!(m.pages.len(), before, "no table allocated");
    let e = t
        .ensure(G1 + 0x5000, G1 + 0x5000, K, RAM, &mut m)
        .unwrap_err();
    assert!(matches!(e, MapError::Conflict { virt, .. } if virt == G1 + 0x5000));
    // A range running past the identical page maps the rest.
    t.ensure(2 * G1 - K, 2 * G1 - K, 2 * K, MMIO, &mut m)
        .unwrap();
    assert_eq!(t.translate(2 * G1, &m).unwrap().size, PageSize::Size4K);
}

#[test]
fn map_is_all_or_nothing() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::device(true, false)).unwrap();
    t.map(0x3000, 0x9000, K, RAM, &mut m).unwrap();
    // Overlap on the second page: the first page must not have been written.
    assert_eq!(
        t.map(0x2000, 0x1_0000, 2 * K, RAM, &mut m),
        Err(MapError::Conflict {
            virt: 0x3000,
            existing: 0x9000 | 0x3
        })
    );
    assert_eq!(t.translate(0x2000, &m), None);
    assert_eq!(t.translate(0x3000, &m).unwrap().phys, 0x9000);
    // A 2 MiB request over a large leaf elsewhere in the range: same.
    t.map(4 * M2, 0, M2, RAM, &mut m).unwrap();
    assert!(matches!(
        t.map(3 * M2, 0, 2 * M2, RAM, &mut m),
        Err(MapError::Conflict { virt, .. }) if virt == 4 * M2
    ));
    assert_eq!(t.translate(3 * M2, &m), None);
    // Out of table pages in the middle of a range: no leaf either.
    m.budget = Some(1);
    assert_eq!(
        t.map(G1 - K, 0x5000, 2 * K, RAM, &mut m),
        Err(MapError::OutOfFrames)
    );
    assert_eq!(t.translate(G1 - K, &m), None);
}

#[test]
fn argument_errors() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    assert_eq!(t.map(1, 0, K, RAM, &mut m), Err(MapError::Misaligned));
    assert_eq!(t.map(0, 1, K, RAM, &mut m), Err(MapError::Misaligned));
    assert_eq!(t.map(0, 0, 100, RAM, &mut m), Err(MapError::Misaligned));
    assert_eq!(
        t.map(1 << 47, 0, K, RAM, &mut m),
        Err(MapError::NonCanonical(1 << 47))
    );
    assert_eq!(
        t.map((1 << 47) - K, 0, 2 * K, RAM, &mut m),
        Err(MapError::NonCanonical((1 << 47) - K)),
        "a range into the hole"
    );
    assert!(matches!(
        t.map(0, 1 << 52, K, RAM, &mut m),
        Err(MapError::PhysTooWide(_))
    ));
    assert_eq!(
        t.map(u64::MAX - 4095, 0, 8192, RAM, &mut m),
        Err(MapError::Misaligned),
        "wraps around"
    );
    assert_eq!(
        t.map(0, u64::MAX - 4095, 8192, RAM, &mut m),
        Err(MapError::PhysTooWide(u64::MAX)),
        "physical range wraps around"
    );
    assert_eq!(
        t.prepopulate_top_level([512], &mut m),
        Err(MapError::NoSuchSlot(512))
    );
    assert_eq!(
        t.map(0x1000, 0, K, PteFlags::from_bits_retain(0x5000 | 3), &mut m),
        Err(MapError::BadFlags(0x5003)),
        "address bits in the flags"
    );
    t.map(0x1000, 0, 0, RAM, &mut m).unwrap();
    assert_eq!(t.translate(0x1000, &m), None, "an empty range maps nothing");
    assert_eq!(t.translate(1 << 47, &m), None);
    assert_eq!(
        PageTable::<X86>::new(
            &mut m,
            Config {
                levels: 5,
                ..Config::kernel(false)
            }
        )
        .unwrap_err(),
        MapError::BadLevels(5)
    );
    assert_eq!(
        PageTable::<X86>::new(
            &mut m,
            Config {
                levels: 1,
                ..Config::kernel(false)
            }
        )
        .unwrap_err(),
        MapError::BadLevels(1)
    );
}

#[test]
fn out_of_frames_is_reported() {
    let mut m = HostMem::new();
    m.budget = Some(2);
    let mut t = kernel_table(&mut m, true);
    assert_eq!(
        t.map(0x4000_0000_0000, 0, K, RAM, &mut m),
        Err(MapError::OutOfFrames)
    );
    m.budget = Some(0);
    assert_eq!(
        PageTable::<X86>::new(&mut m, Config::kernel(true)).unwrap_err(),
        MapError::OutOfFrames
    );
}

#[test]
fn unmap_clears_skips_holes_and_splits_partial_large_pages() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    t.map(0, 0, 4 * M2, RAM, &mut m).unwrap();
    t.map(8 * M2, 8 * M2, 2 * K, RAM, &mut m).unwrap();
    let mut got = Vec::new();
    // One page out of a 2 MiB leaf: split, the rest stays mapped with 4 KiB pages.
    assert_eq!(t.unmap(0x1000, K, &mut m, &mut |r| got.push(r)), Ok(K));
    assert_eq!(
        got,
        vec![Released::Leaf {
            virt: 0x1000,
            entry: 0x1000 | 0x3,
            size: PageSize::Size4K
        }]
    );
    assert_eq!(t.translate(0x1000, &m), None);
    let x = t.translate(0x2000, &m).unwrap();
    assert_eq!((x.phys, x.size), (0x2000, PageSize::Size4K));
    assert!(
        !x.flags.contains(PteFlags::HUGE),
        "no PS (= PAT) on 4 KiB leaves"
    );
    assert_eq!(t.translate(M2 + 5, &m).unwrap().size, PageSize::Size2M);
    got.clear();
    assert_eq!(t.unmap(8 * M2, K, &mut m, &mut |r| got.push(r)), Ok(K));
    assert_eq!(t.translate(8 * M2, &m), None);
    assert!(t.translate(8 * M2 + K, &m).is_some());
    // Holes are skipped and count nothing.
    got.clear();
    assert_eq!(t.unmap(0x100_0000, K, &mut m, &mut |r| got.push(r)), Ok(0));
    assert!(got.is_empty());
    got.clear();
    let done = t.unmap(0, 16 * M2, &mut m, &mut |r| got.push(r)).unwrap();
    assert_eq!(done, 4 * M2 - K + K);
    assert_eq!(t.translate(0, &m), None);
    assert_eq!(t.translate(8 * M2 + K, &m), None);
    let leaves: Vec<_> = got
        .iter()
        .filter_map(|r| match r {
            Released::Leaf { virt, size, .. } => Some((*virt, *size)),
            Released::Table(_) => None,
        })
        .collect();
    assert_eq!(leaves.len(), 511 + 3 + 1);
    assert!(leaves.contains(&(M2, PageSize::Size2M)));
    assert!(leaves.contains(&(8 * M2 + K, PageSize::Size4K)));
}

#[test]
fn unmap_releases_tables_it_empties_whole() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::device(true, false)).unwrap();
    t.map(0x4000_0000, 0x8000_0000, 3 * K, RAM, &mut m).unwrap();
    t.map(0x4020_0000, 0x9000_0000, K, RAM, &mut m).unwrap();
    assert_eq!(t.table_pages(), 5, "PML4, PDPT, PD, two PTs");
    let before = m.live();
    // Part of a PT: nothing released but the leaf.
    let mut got = Vec::new();
    t.unmap(0x4000_1000, K, &mut m, &mut |r| got.push(r))
        .unwrap();
    assert_eq!(got.len(), 1);
    // The PT's whole span: the leaves and the PT itself (unlinked, not freed).
    got.clear();
    t.unmap(0x4000_0000, M2, &mut m, &mut |r| got.push(r))
        .unwrap();
    let tables: Vec<u64> = got
        .iter()
        .filter(|r| matches!(r, Released::Table(_)))
        .map(Released::phys)
        .collect();
    assert_eq!(got.len(), 3, "{got:x?}");
    assert_eq!(tables.len(), 1);
    assert_eq!(m.live(), before, "released tables are the caller's to free");
    assert_eq!(t.table_pages(), 4);
    let pd = entries_of(&m, &t, 0x4000_0000)[2];
    assert_eq!((pd.0, pd.2), (2, 0), "PD entry cleared");
    for p in &tables {
        m.free_table(*p);
    }
    // A 2 MiB leaf can go where the PT was.
    t.map(0x4000_0000, 0x8000_0000, M2, RAM, &mut m).unwrap();
    assert_eq!(t.translate(0x4000_0000, &m).unwrap().size, PageSize::Size2M);
    // A leftover, emptied PT that the unmap covered only in part forces 4 KiB pages.
    t.unmap(0x4020_0000, K, &mut m, &mut |_| {}).unwrap();
    assert_eq!(t.table_pages(), 4, "PT covered in part stays");
    t.map(0x4020_0000, 0x8020_0000, M2, RAM, &mut m).unwrap();
    assert_eq!(t.translate(0x4020_1000, &m).unwrap().size, PageSize::Size4K);
    // Unmapping the whole GiB releases the PD and every PT under it.
    got.clear();
    t.unmap(0x4000_0000, G1, &mut m, &mut |r| got.push(r))
        .unwrap();
    let n_tables = got
        .iter()
        .filter(|r| matches!(r, Released::Table(_)))
        .count();
    assert_eq!(n_tables, 2, "the PT and the PD: {got:x?}");
    assert_eq!(t.table_pages(), 2);
}

#[test]
fn unmap_reports_the_entry_at_the_instant_of_the_exchange() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::user(false)).unwrap();
    let f = PteFlags::user_leaf(true, false, true);
    t.map(0x4000_0000_0000, 0x7000, K, f, &mut m).unwrap();
    t.map(
        0x4000_0000_2000,
        0x9000,
        K,
        PteFlags::user_leaf(false, false, true),
        &mut m,
    )
    .unwrap();
    // A walker sets a bit between our read of the leaf and the exchange (the lookup that
    // reaches the leaf for the `xchg` is the fifth: four to read down, then this one).
    let leaf = entries_of(&m, &t, 0x4000_0000_0000)[3].1;
    m.inject_after(4, leaf, 1 << 9);
    let mut got = Vec::new();
    t.unmap(0x4000_0000_0000, K, &mut m, &mut |r| got.push(r))
        .unwrap();
    assert_eq!(m.inject.get().map(|_| ()), None, "the injection happened");
    match got[..] {
        [Released::Leaf { entry, .. }] => {
            assert_eq!(entry & (1 << 9), 1 << 9, "bit set concurrently reported");
            assert_eq!(entry & ADDR_MASK, 0x7000);
            assert_eq!(entry & (A | D), A | D);
        }
        _ => panic!("{got:x?}"),
    }
    assert_eq!(m.read(leaf), 0);
}

#[test]
fn protect_changes_flags_keeps_frames_and_walker_bits() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::user(false)).unwrap();
    let rw = PteFlags::user_leaf(true, false, true);
    let ro = PteFlags::user_leaf(false, false, true);
    let base = 0x4000_0000_0000u64;
    t.map(base, 0x20_0000, M2, rw, &mut m).unwrap();
    t.map(base + 2 * M2, 0x80_0000, K, rw, &mut m).unwrap();
    // Write-protect one 4 KiB page inside the 2 MiB leaf and the lone page, with a hole
    // between them.
    let mut changed = Vec::new();
    let n = t
        .protect(base + M2 - K, M2 + 2 * K, ro, &mut m, &mut |v, old, s| {
            changed.push((v, old, s));
        })
        .unwrap();
    assert_eq!(n, 2 * K, "the hole counts nothing");
    assert_eq!(
        changed,
        vec![
            (base + M2 - K, 0x3f_f000 | rw.bits(), PageSize::Size4K),
            (base + 2 * M2, 0x80_0000 | rw.bits(), PageSize::Size4K),
        ]
    );
    let x = t.translate(base + M2 - K, &m).unwrap();
    assert_eq!((x.phys, x.flags.bits()), (0x3f_f000, ro.bits() | A | D));
    let x = t.translate(base + M2 - 2 * K, &m).unwrap();
    assert_eq!(
        (x.phys, x.flags),
        (0x3f_e000, rw),
        "the rest of the split page"
    );
    // Same flags again: nothing changes.
    changed.clear();
    t.protect(base + 2 * M2, K, ro, &mut m, &mut |v, o, s| {
        changed.push((v, o, s));
    })
    .unwrap();
    assert!(changed.is_empty());
    // A D bit set between the read and the cmpxchg is kept (the cmpxchg retries).
    let leaf = entries_of(&m, &t, base)[3].1;
    m.write(leaf, m.read(leaf) & !D);
    m.inject_after(4, leaf, D);
    t.protect(base, K, ro, &mut m, &mut |_, _, _| {}).unwrap();
    assert_eq!(
        m.read(leaf),
        0x20_0000 | ro.bits() | D,
        "{:#x}",
        m.read(leaf)
    );
    // User rules apply to protect too.
    assert_eq!(
        t.protect(base, K, rw | PteFlags::GLOBAL, &mut m, &mut |_, _, _| {}),
        Err(MapError::BadFlags((rw | PteFlags::GLOBAL).bits()))
    );
}

#[test]
fn split_carries_bits_set_during_the_split() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::device(true, false)).unwrap();
    t.map(0, 0x4000_0000, M2, RAM, &mut m).unwrap();
    let pde = entries_of(&m, &t, 0)[2].1;
    // Lookups: 3 to read down to the PD, 1 in split for the slot, 512 to fill the new
    // table; the D bit arrives just before the cmpxchg that installs it.
    m.inject_after(3 + 1 + 512, pde, D);
    t.unmap(M2 - K, K, &mut m, &mut |_| {}).unwrap();
    assert_eq!(m.inject.get().map(|_| ()), None, "the injection happened");
    let x = t.translate(0x5000, &m).unwrap();
    assert_eq!(x.phys, 0x4000_5000);
    assert!(x.flags.contains(PteFlags::DIRTY), "{:?}", x.flags);
    // Out of memory for the split: SplitOutOfFrames names the page; nothing changed.
    t.map(4 * M2, 0x8000_0000, M2, RAM, &mut m).unwrap();
    m.budget = Some(0);
    assert_eq!(
        t.unmap(4 * M2 + K, K, &mut m, &mut |_| {}),
        Err(MapError::SplitOutOfFrames {
            page: 4 * M2,
            size: PageSize::Size2M
        })
    );
    assert_eq!(t.translate(4 * M2 + K, &m).unwrap().size, PageSize::Size2M);
    // A whole large page needs no split.
    assert_eq!(t.unmap(4 * M2, M2, &mut m, &mut |_| {}), Ok(M2));
}

#[test]
fn one_gib_pages_split_into_two_mib_pages() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    t.map(G1, 2 * G1, G1, RAM, &mut m).unwrap();
    t.unmap(G1 + 3 * M2, M2, &mut m, &mut |_| {}).unwrap();
    let x = t.translate(G1 + M2 + 7, &m).unwrap();
    assert_eq!((x.phys, x.size), (2 * G1 + M2 + 7, PageSize::Size2M));
    assert!(x.flags.contains(PteFlags::HUGE));
    assert_eq!(t.translate(G1 + 3 * M2, &m), None);
}

#[test]
fn walk_yields_each_entry_and_stops_where_the_hardware_would() {
    let mut m = HostMem::new();
    let mut t = PageTable::new(&mut m, Config::device(true, false)).unwrap();
    t.map(0x7000_3000, 0x1_2345_6000, K, RAM, &mut m).unwrap();
    let e = entries_of(&m, &t, 0x7000_3abc);
    assert_eq!(e.iter().map(|e| e.0).collect::<Vec<_>>(), vec![4, 3, 2, 1]);
    assert!(t.walk(0x7000_3abc, &m).last().unwrap().unwrap().is_leaf());
    // A failing walk ends at the first non-present entry.
    let e = entries_of(&m, &t, 0x7020_0000);
    assert_eq!(e.last().map(|e| (e.0, e.2)), Some((2, 0)));
    // An unreachable table is reported once, then the walk ends.
    let mut w = walk::<X86, _>(&m, 0x1234_5000, 4, 0);
    assert_eq!(w.next(), Some(Err(MapError::BadTable(0x1234_5000))));
    assert_eq!(w.next(), None);
    // Any level count from hardware: no shift overflow, no walk.
    assert_eq!(walk::<X86, _>(&m, t.root(), 200, 0).count(), 0);
    assert_eq!(walk::<X86, _>(&m, t.root(), 0, 0).count(), 0);
}

#[test]
fn large_leaf_inside_walk_is_a_leaf() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    t.map(0, 0, G1, RAM, &mut m).unwrap();
    let e = entries_of(&m, &t, 0x1234);
    assert_eq!(e.len(), 2);
    assert_eq!(e[1].2, PteFlags::HUGE.bits() | 0x3);
}

#[test]
fn teardown_releases_every_leaf_and_table_once_root_last() {
    let mut m = HostMem::new();
    let mut t = kernel_table(&mut m, true);
    t.map(0x1000, 0x1000, 3 * K, RAM, &mut m).unwrap();
    t.map(G1, G1, G1, RAM, &mut m).unwrap();
    // The very last page of the upper half and a stack-like page in slot 510.
    t.map(u64::MAX - 4095, 0x5000, K, RAM, &mut m).unwrap();
    t.map(0xffff_ff00_0000_1000, 0x6000, K, RAM, &mut m)
        .unwrap();
    let owned = m.live();
    assert_eq!(owned.len(), t.table_pages());
    let root = t.root();
    let mut got = Vec::new();
    t.teardown(&mut m, &mut |r| got.push(r)).unwrap();
    let tables: Vec<u64> = got
        .iter()
        .filter(|r| matches!(r, Released::Table(_)))
        .map(Released::phys)
        .collect();
    assert_eq!(tables.last(), Some(&root));
    assert_eq!(tables.iter().copied().collect::<BTreeSet<_>>(), owned);
    assert_eq!(tables.len(), owned.len(), "each once");
    let leaves: BTreeSet<(u64, u64)> = got
        .iter()
        .filter_map(|r| match r {
            Released::Leaf { virt, .. } => Some((*virt, r.phys())),
            Released::Table(_) => None,
        })
        .collect();
    let want: BTreeSet<(u64, u64)> = [
        (0x1000, 0x1000),
        (0x2000, 0x2000),
        (0x3000, 0x3000),
        (G1, G1),
        (u64::MAX - 4095, 0x5000),
        (0xffff_ff00_0000_1000, 0x6000),
    ]
    .into();
    assert_eq!(leaves, want);
    for p in tables {
        m.free_table(p);
    }
    assert!(m.pages.is_empty());
}

#[test]
fn process_tables_share_the_frozen_kernel_half() {
    let mut m = HostMem::new();
    let mut k = kernel_table(&mut m, true);
    k.map(0x1000, 0x1000, 0xff000, RAM, &mut m).unwrap();
    let user = Config::user(false);
    assert_eq!(
        PageTable::new_sharing(&k, &mut m, user).unwrap_err(),
        MapError::NotFrozen
    );
    // Pre-populate the slots the kernel will ever use (identity 0-1, stacks 510), freeze.
    k.prepopulate_top_level([0, 1, 510], &mut m).unwrap();
    k.freeze_top_level();
    let kernel_pages = m.live();
    let mut p = PageTable::new_sharing(&k, &mut m, user).unwrap();
    assert!([0, 1, 510].iter().all(|&s| p.is_shared_slot(s)));
    assert!(!p.is_shared_slot(2) && !p.is_shared_slot(128));
    assert_eq!(p.table_pages(), 1);
    let kernel_pml4e = entries_of(&m, &k, 0)[0].2;
    assert_eq!(entries_of(&m, &p, 0)[0].2, kernel_pml4e, "copied value");

    // User mappings: non-leaf USER_TABLE, leaf exactly as given.
    let ua = 0x4000_0000_0000u64;
    let f = PteFlags::user_leaf(true, false, true);
    p.map(ua, 0x7_7000, K, f, &mut m).unwrap();
    let e = entries_of(&m, &p, ua);
    assert!(
        e[..3].iter().all(|e| e.2 & 0xfff == 0x27),
        "P|RW|US|A: {e:x?}"
    );
    assert_eq!(e[3].2, 0x7_7000 | 0x67 | 1 << 63);
    assert_eq!(
        k.translate(ua, &m),
        None,
        "the kernel does not see user pages"
    );
    // Kernel mappings made later in a shared slot are visible to the process.
    k.map(0x4000_0000, 0x4000_0000, K, RAM, &mut m).unwrap();
    k.map(0xffff_ff00_0000_0000, 0x9000, K, RAM, &mut m)
        .unwrap();
    assert_eq!(p.translate(0x4000_0000, &m).unwrap().phys, 0x4000_0000);
    assert_eq!(p.translate(0xffff_ff00_0000_0000, &m).unwrap().phys, 0x9000);
    assert_eq!(p.translate(0x2000, &m).unwrap().phys, 0x2000);
    // The kernel's top level does not change any more.
    assert_eq!(
        k.map(2 << 39, 0, K, RAM, &mut m),
        Err(MapError::TopLevelFrozen(2))
    );
    assert_eq!(
        k.prepopulate_top_level([3], &mut m),
        Err(MapError::TopLevelFrozen(3))
    );
    let mut got = Vec::new();
    k.unmap(0, 1 << 39, &mut m, &mut |r| got.push(r)).unwrap();
    assert!(
        !got.contains(&Released::Table(kernel_pml4e & ADDR_MASK)),
        "the PDPT of a frozen slot stays linked"
    );
    assert_eq!(
        entries_of(&m, &k, 0)[0].2 & !(A | D),
        kernel_pml4e & !(A | D)
    );
    // The process cannot touch the kernel half.
    assert_eq!(
        p.map(0x8000_0000, 0, K, f, &mut m),
        Err(MapError::SharedSlot(0))
    );
    assert_eq!(
        p.unmap(0, K, &mut m, &mut |_| {}),
        Err(MapError::SharedSlot(0))
    );
    assert_eq!(
        p.protect(0xffff_ff00_0000_0000, K, f, &mut m, &mut |_, _, _| {}),
        Err(MapError::SharedSlot(510))
    );
    assert_eq!(
        p.map((1 << 39) - K, 0, 2 * K, f, &mut m),
        Err(MapError::SharedSlot(0)),
        "a range reaching into a shared slot"
    );
    // The invariant: walker bits may differ, anything else may not.
    p.check_shared(&k, &m).unwrap();
    let slot0 = entries_of(&m, &p, 0)[0].1;
    m.write(slot0, m.read(slot0) | A);
    p.check_shared(&k, &m).unwrap();
    m.write(slot0, m.read(slot0) ^ 0x1000);
    assert_eq!(p.check_shared(&k, &m), Err(MapError::SharedSlotChanged(0)));
    m.write(slot0, m.read(slot0) ^ 0x1000);
    // Teardown frees the user half and the root, never a kernel table.
    let mut got = Vec::new();
    p.teardown(&mut m, &mut |r| got.push(r)).unwrap();
    let tables: BTreeSet<u64> = got
        .iter()
        .filter(|r| matches!(r, Released::Table(_)))
        .map(Released::phys)
        .collect();
    assert_eq!(tables.len(), 4, "root, PDPT, PD, PT of the user page");
    assert!(tables.is_disjoint(&kernel_pages));
    assert!(got.contains(&Released::Leaf {
        virt: ua,
        entry: 0x7_7000 | f.bits(),
        size: PageSize::Size4K
    }));
    assert_eq!(
        k.translate(0xffff_ff00_0000_0000, &m).unwrap().phys,
        0x9000,
        "kernel tables untouched"
    );
    assert_eq!(
        entries_of(&m, &k, 0)[0].2 & ADDR_MASK,
        kernel_pml4e & ADDR_MASK
    );
}

#[test]
fn user_tables_enforce_the_leaf_rules() {
    let mut m = HostMem::new();
    let mut p = PageTable::new(&mut m, Config::user(false)).unwrap();
    let ua = 0x4000_0000_0000u64;
    let ok = PteFlags::user_leaf(true, true, true);
    assert!(!ok.contains(PteFlags::NO_EXECUTE));
    assert_eq!(
        PteFlags::user_leaf(false, false, false),
        PteFlags::PRESENT | PteFlags::USER | PteFlags::ACCESSED
    );
    for bad in [
        ok | PteFlags::GLOBAL,
        ok - PteFlags::USER,
        ok - PteFlags::ACCESSED,
        ok - PteFlags::DIRTY,
    ] {
        assert_eq!(
            p.map(ua, 0x1000, K, bad, &mut m),
            Err(MapError::BadFlags(bad.bits())),
            "{bad:?}"
        );
    }
    p.map(ua, 0x1000, K, ok, &mut m).unwrap();
    // 1 GiB leaves only when configured (VT-d CAP.FS1GP).
    p.map(ua + G1, 0, G1, ok, &mut m).unwrap();
    assert_eq!(p.translate(ua + G1, &m).unwrap().size, PageSize::Size2M);
    let mut q = PageTable::new(&mut m, Config::user(true)).unwrap();
    q.map(ua + G1, 0, G1, ok, &mut m).unwrap();
    assert_eq!(q.translate(ua + G1, &m).unwrap().size, PageSize::Size1G);
}

bitflags::bitflags! {
    /// A device format with the x86 tree but R/W/X permissions and no present bit (as the
    /// VT-d second stage).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Rwx: u64 {
        const R = 1;
        const W = 2;
        const X = 4;
        const _ = !0;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreeLevel;

impl Format for ThreeLevel {
    type Flags = Rwx;
    const PRESENT: u64 = 0;
    const WALKER_BITS: u64 = 0;
    const SIGN_EXTENDED: bool = false;
    fn present(e: u64) -> bool {
        e & 7 != 0
    }
}

#[test]
fn other_formats_use_the_same_tree() {
    let mut m = HostMem::new();
    let cfg = Config::<ThreeLevel> {
        levels: 3,
        table_flags: Rwx::R | Rwx::W,
        large_2m: true,
        large_1g: false,
        user: false,
    };
    let mut t = PageTable::new(&mut m, cfg).unwrap();
    t.map(M2, 0x40_0000, M2, Rwx::R | Rwx::W, &mut m).unwrap();
    t.map(0x1000, 0x8000, K, Rwx::W, &mut m).unwrap();
    let e = t.walk(0x1000, &m).map(Result::unwrap).collect::<Vec<_>>();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0].value & 0xfff, 0x3, "non-leaf R|W");
    assert_eq!(e[2].value, 0x8002);
    let x = t.translate(M2 + 0x10, &m).unwrap();
    assert_eq!(
        (x.phys, x.size, x.flags.bits() & 7),
        (0x40_0010, PageSize::Size2M, 3)
    );
    // 39-bit input, no sign extension.
    assert_eq!(
        t.map(1 << 39, 0, K, Rwx::R, &mut m),
        Err(MapError::NonCanonical(1 << 39))
    );
    t.map((1 << 39) - K, 0, K, Rwx::R, &mut m).unwrap();
    // No permission is no mapping.
    assert_eq!(
        t.map(0x5000, 0, K, Rwx::empty(), &mut m),
        Err(MapError::BadFlags(0))
    );
    t.unmap(0x1000, K, &mut m, &mut |_| {}).unwrap();
    assert_eq!(t.translate(0x1000, &m), None);
    let mut tables = Vec::new();
    t.teardown(&mut m, &mut |r| {
        if let Released::Table(p) = r {
            tables.push(p);
        }
    })
    .unwrap();
    for p in tables {
        m.free_table(p);
    }
    assert!(m.pages.is_empty());
}

#[test]
fn errors_display() {
    for (e, s) in [
        (MapError::TopLevelFrozen(3), "top-level slot 3 is frozen"),
        (
            MapError::SplitOutOfFrames {
                page: 0x20_0000,
                size: PageSize::Size2M,
            },
            "2048 KiB page at 0x200000",
        ),
        (MapError::SharedSlot(0), "slot 0 belongs to the shared half"),
    ] {
        assert!(e.to_string().contains(s), "{e}");
    }
}
