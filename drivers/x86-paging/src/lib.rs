//! x86-64 4-level page tables, the one implementation for every user: the kernel's own
//! tables (identity map, MMIO, guarded stacks), VT-d first-stage tables (the CPU's format,
//! Intel VT-d Architecture Specification rev 4.1, §3.6), VT-d second-stage tables (the
//! same radix tree with R/W/X permission bits, §3.7; a second [`Format`]), and process
//! address spaces whose root is both CR3 and a PASID's first-stage root.
//!
//! * Where the table pages come from is the caller's [`TableMemory`]: allocate and free a
//!   4 KiB page, and reach a table through its physical address (identity in the kernel,
//!   a unit's DMA memory for VT-d, a host buffer in tests).
//! * Every entry is read and written as an [`AtomicU64`]: the CPU's and the IOMMU's
//!   walkers set A/D bits concurrently, so leaves are cleared with `xchg` and changed with
//!   `cmpxchg`, and the caller gets the entry as it was at that instant (D included).
//! * [`PageTable::map`] is all-or-nothing for leaves: conflicts are found and missing tables
//!   are allocated before the first leaf is written. [`PageTable::ensure`] keeps pages
//!   that are already mapped exactly as asked (the kernel's idempotent MMIO mappings).
//! * [`PageTable::unmap`], [`PageTable::protect`] split large pages they cover in part.
//!   Leaves cleared and table pages unlinked are handed to the caller ([`Released`]),
//!   never freed here: the caller frees them after the TLB shootdown and the IOTLB /
//!   paging-structure-cache invalidation.
//! * A top-level table can be *frozen* ([`PageTable::freeze_top_level`]): its top-level
//!   entries never change again. [`PageTable::new_sharing`] builds a new root with copies of
//!   every top-level entry of a frozen table (a process sharing the kernel half); those
//!   slots are the other table's and refuse every operation of the new one.
//!
//! Not here: TLB and IOTLB invalidation, locking (callers serialise changes to one tree),
//! the choice of addresses. PAT is not used (PCD/PWT select the memory type), so bit 7 of a
//! 4 KiB leaf and bit 12 of a large leaf are never set.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

use bitflags::Flags as _;
use core::fmt;
use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

/// Size of a base page and of every table.
pub const PAGE_SIZE: u64 = 4096;
/// Entries per table.
pub const ENTRIES: usize = 512;
/// Physical-address bits of an entry (bits 51:12).
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// PS: the entry at level 2 or 3 maps a page (the same bit in both VT-d stages).
const PS: u64 = 1 << 7;
/// One past the largest physical address an entry can hold.
const PHYS_LIMIT: u64 = 1 << 52;

bitflags::bitflags! {
    /// Bits of an x86-64 paging entry, named after the Intel SDM Vol. 3A §4.5 (Table 4-14
    /// to 4-20); the VT-d first stage uses the same format.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct PteFlags: u64 {
        /// P: present.
        const PRESENT = 1 << 0;
        /// R/W: writes allowed.
        const WRITABLE = 1 << 1;
        /// U/S: user-mode accesses allowed (ANDed over all levels).
        const USER = 1 << 2;
        /// PWT: page-level write-through.
        const WRITE_THROUGH = 1 << 3;
        /// PCD: page-level cache disable.
        const NO_CACHE = 1 << 4;
        /// A: accessed (set by the walkers).
        const ACCESSED = 1 << 5;
        /// D: dirty (set by the walkers, leaves only).
        const DIRTY = 1 << 6;
        /// PS: this PDPTE/PDE maps a 1 GiB / 2 MiB page (set by the mapper, ignored in
        /// the flags a caller passes).
        const HUGE = 1 << 7;
        /// G: global translation (never on user leaves).
        const GLOBAL = 1 << 8;
        /// XD: execute disable (needs EFER.NXE; with the VT-d first stage, PASID-entry NXE).
        const NO_EXECUTE = 1 << 63;
        const _ = !0;
    }
}

/// Leaf flags for write-back RAM (kernel).
pub const RAM: PteFlags = PteFlags::PRESENT.union(PteFlags::WRITABLE);
/// Leaf flags for memory-mapped I/O: uncached (PAT index 3 = UC with the reset PAT).
pub const MMIO: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::NO_CACHE)
    .union(PteFlags::WRITE_THROUGH)
    .union(PteFlags::NO_EXECUTE);
/// Non-leaf flags of a user table: A pre-set so that neither walker has to write it (a
/// VT-d unit may update A with a plain store that would race with our `xchg`).
pub const USER_TABLE: PteFlags = PteFlags::PRESENT
    .union(PteFlags::WRITABLE)
    .union(PteFlags::USER)
    .union(PteFlags::ACCESSED);

impl PteFlags {
    /// Leaf flags of a user page that is also reached by a VT-d unit through the same
    /// tables: `P|U|A`, plus `RW|D` when writable (D pre-set for the same reason as A in
    /// [`USER_TABLE`]), plus `NX` unless executable (only when the CPU has NX: the bit is
    /// reserved otherwise). Never `G`.
    pub const fn user_leaf(writable: bool, executable: bool, cpu_has_nx: bool) -> Self {
        let mut f = PteFlags::PRESENT
            .union(PteFlags::USER)
            .union(PteFlags::ACCESSED);
        if writable {
            f = f.union(PteFlags::WRITABLE).union(PteFlags::DIRTY);
        }
        if !executable && cpu_has_nx {
            f = f.union(PteFlags::NO_EXECUTE);
        }
        f
    }
}

/// Page sizes a leaf can map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PageSize {
    /// 4 KiB (a PTE).
    Size4K,
    /// 2 MiB (a PDE with PS).
    Size2M,
    /// 1 GiB (a PDPTE with PS).
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

    /// The size of a leaf at `level` (1 = PT, 2 = PD, 3 = PDPT).
    const fn of_level(level: u8) -> Self {
        match level {
            1 => Self::Size4K,
            2 => Self::Size2M,
            _ => Self::Size1G,
        }
    }
}

/// Bytes covered by one entry at `level` (1 ..= 5; the shift stays below 64).
const fn span(level: u8) -> u64 {
    1u64 << (12 + 9 * (level as u32 - 1))
}

/// Index of `virt` in its table at `level`.
const fn index(virt: u64, level: u8) -> usize {
    ((virt >> (12 + 9 * (level as u32 - 1))) & 0x1ff) as usize
}

/// Errors of the page-table operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapError {
    /// Address or length not 4 KiB aligned, or the range wraps around.
    Misaligned,
    /// Virtual address outside the format's input range (x86: not canonical 48-bit, or a
    /// range crossing the hole).
    NonCanonical(u64),
    /// Physical address beyond 52 bits.
    PhysTooWide(u64),
    /// The table memory could not supply a table page.
    OutOfFrames,
    /// A large page covered in part by an unmap or protect could not be split for want of
    /// a table page; it and everything after it are unchanged.
    SplitOutOfFrames {
        /// Start of the large page.
        page: u64,
        /// Its size.
        size: PageSize,
    },
    /// A different mapping already covers `virt`.
    Conflict {
        /// The virtual address that is already mapped.
        virt: u64,
        /// The existing entry (raw).
        existing: u64,
    },
    /// The table memory cannot reach a table at this physical address.
    BadTable(u64),
    /// The range touches a top-level slot shared with another table (the kernel half).
    SharedSlot(usize),
    /// A top-level slot number beyond 511.
    NoSuchSlot(usize),
    /// The operation would create or remove a top-level entry of a frozen table.
    TopLevelFrozen(usize),
    /// [`PageTable::new_sharing`] needs a table whose top level is frozen.
    NotFrozen,
    /// A shared top-level entry differs from the one it was copied from.
    SharedSlotChanged(usize),
    /// Leaf flags the table does not accept (address bits, not present, or against the
    /// user rules of [`Config::user`]).
    BadFlags(u64),
    /// Tables of this many levels are not supported (2 ..= 4).
    BadLevels(u8),
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned => write!(f, "range not 4 KiB aligned or wraps around"),
            Self::NonCanonical(v) => write!(f, "virtual address {v:#x} is outside the input range"),
            Self::PhysTooWide(p) => write!(f, "physical address {p:#x} exceeds 52 bits"),
            Self::OutOfFrames => write!(f, "no memory for a page table"),
            Self::SplitOutOfFrames { page, size } => write!(
                f,
                "no memory to split the {} KiB page at {page:#x}",
                size.bytes() >> 10
            ),
            Self::Conflict { virt, existing } => write!(
                f,
                "{virt:#x} is already mapped differently (entry {existing:#x})"
            ),
            Self::BadTable(p) => write!(f, "no page table reachable at {p:#x}"),
            Self::SharedSlot(s) => write!(f, "top-level slot {s} belongs to the shared half"),
            Self::NoSuchSlot(s) => write!(f, "there is no top-level slot {s}"),
            Self::TopLevelFrozen(s) => {
                write!(f, "top-level slot {s} is frozen (shared with other tables)")
            }
            Self::NotFrozen => write!(f, "the shared table's top level is not frozen"),
            Self::SharedSlotChanged(s) => write!(f, "shared top-level slot {s} changed"),
            Self::BadFlags(b) => write!(f, "leaf flags {b:#x} are not allowed here"),
            Self::BadLevels(l) => write!(f, "{l}-level tables are not supported"),
        }
    }
}

impl core::error::Error for MapError {}

/// Where table pages come from and how the CPU reaches them.
///
/// # Safety
/// For every `phys` for which [`TableMemory::table`] returns `Some(p)`, `p` must point at
/// 512 8-byte-aligned qwords of a page-table page that stay valid (and are used for
/// nothing else) until that page is freed through [`TableMemory::free_table`]. Pages from
/// [`TableMemory::alloc_table`] must be zeroed and 4 KiB aligned. An implementation that
/// reaches tables by identity may return `Some` for any page-table page of the trees it is
/// used with; one that owns its pages should return `None` for anything else.
pub unsafe trait TableMemory {
    /// A zeroed 4 KiB page for a table: its physical address, or `None` when out of memory.
    fn alloc_table(&mut self) -> Option<u64>;
    /// Returns a page from [`TableMemory::alloc_table`]. Callers do so only once no walker
    /// can still use it (after the TLB / IOTLB invalidation that followed its unlinking).
    fn free_table(&mut self, phys: u64);
    /// The first of the 512 entries of the table at `phys`, or `None` if it is not a table
    /// this memory can reach.
    fn table(&self, phys: u64) -> Option<NonNull<AtomicU64>>;
}

/// An entry format: the x86 one ([`X86`]) or a device's variant of the same radix tree.
pub trait Format {
    /// The typed entry bits.
    type Flags: bitflags::Flags<Bits = u64> + Copy + fmt::Debug + PartialEq;
    /// Bits the mapper adds to every leaf it writes (x86: P).
    const PRESENT: u64;
    /// Bits the walkers set by themselves (x86: A, D): kept by [`PageTable::protect`] and
    /// ignored when [`PageTable::ensure`] compares mappings.
    const WALKER_BITS: u64;
    /// Whether input addresses are sign-extended from their top bit (x86 canonical form).
    const SIGN_EXTENDED: bool;
    /// Whether `entry` maps a page or points at a table.
    fn present(entry: u64) -> bool;
    /// Whether a table with [`Config::user`] accepts these leaf bits.
    fn user_leaf_ok(_bits: u64) -> bool {
        true
    }
}

/// The x86-64 paging format (CPU, VT-d first stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct X86;

impl Format for X86 {
    type Flags = PteFlags;
    const PRESENT: u64 = PteFlags::PRESENT.bits();
    const WALKER_BITS: u64 = PteFlags::ACCESSED.bits() | PteFlags::DIRTY.bits();
    const SIGN_EXTENDED: bool = true;
    fn present(entry: u64) -> bool {
        entry & PteFlags::PRESENT.bits() != 0
    }
    /// User leaves: U and A set, G clear, D set when writable.
    fn user_leaf_ok(bits: u64) -> bool {
        let f = PteFlags::from_bits_retain(bits);
        f.contains(PteFlags::USER | PteFlags::ACCESSED)
            && !f.contains(PteFlags::GLOBAL)
            && (!f.contains(PteFlags::WRITABLE) || f.contains(PteFlags::DIRTY))
    }
}

/// How a table is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config<F: Format = X86> {
    /// Levels of the tree: 4 for x86 (CR4.LA57=0), 3 or 4 for a VT-d second stage.
    pub levels: u8,
    /// Flags of every non-leaf entry the mapper creates (`PRESENT` is added for x86).
    pub table_flags: F::Flags,
    /// 2 MiB leaves where alignment and length allow.
    pub large_2m: bool,
    /// 1 GiB leaves where alignment and length allow (CPUID Page1GB for the CPU; VT-d
    /// CAP.FS1GP as well when the tables are also a first-stage root).
    pub large_1g: bool,
    /// Leaves must pass [`Format::user_leaf_ok`].
    pub user: bool,
}

impl Config<X86> {
    /// The kernel's tables: non-leaf `P|RW` (never U).
    pub const fn kernel(large_1g: bool) -> Self {
        Self {
            levels: 4,
            table_flags: PteFlags::PRESENT.union(PteFlags::WRITABLE),
            large_2m: true,
            large_1g,
            user: false,
        }
    }

    /// Device-only VT-d first-stage tables: non-leaf `P|RW|US` (DMA requests are user
    /// requests, which need U/S at every level).
    pub const fn device(large_2m: bool, large_1g: bool) -> Self {
        Self {
            levels: 4,
            table_flags: PteFlags::PRESENT
                .union(PteFlags::WRITABLE)
                .union(PteFlags::USER),
            large_2m,
            large_1g,
            user: false,
        }
    }

    /// A process's user half (also a VT-d first-stage root): non-leaf [`USER_TABLE`],
    /// leaves checked by [`X86::user_leaf_ok`] (see [`PteFlags::user_leaf`]).
    pub const fn user(large_1g: bool) -> Self {
        Self {
            levels: 4,
            table_flags: USER_TABLE,
            large_2m: true,
            large_1g,
            user: true,
        }
    }
}

/// A leaf translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation<F: Format = X86> {
    /// Physical address of the queried virtual address.
    pub phys: u64,
    /// Leaf flags (with PS for large pages).
    pub flags: F::Flags,
    /// Size of the page that maps it.
    pub size: PageSize,
}

/// What an unmap or a teardown took out of the tree; free it after the invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// A leaf that was cleared, with its entry at the instant of the `xchg` (frame address
    /// `entry & ADDR_MASK`, A/D as the walkers left them).
    Leaf {
        /// Virtual address of the page.
        virt: u64,
        /// The old entry.
        entry: u64,
        /// Page size.
        size: PageSize,
    },
    /// A table page that is no longer linked into the tree.
    Table(u64),
}

impl Released {
    /// Physical address of a released leaf's page (its frame), or of a released table.
    pub fn phys(&self) -> u64 {
        match *self {
            Self::Leaf { entry, size, .. } => entry & ADDR_MASK & !(size.bytes() - 1),
            Self::Table(p) => p,
        }
    }
}

/// One entry read by a [`Walk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalkEntry {
    /// Level of the table it is in (4 = PML4 … 1 = PT).
    pub level: u8,
    /// Physical address of the entry.
    pub addr: u64,
    /// Its value.
    pub value: u64,
}

impl WalkEntry {
    /// Whether this entry ends the walk as a leaf (a PTE, or a PDE/PDPTE with PS).
    pub fn is_leaf(&self) -> bool {
        self.level == 1 || (self.level <= 3 && self.value & PS != 0)
    }
}

/// The entries a hardware walker reads for one address, from the root down: it stops after
/// a non-present entry or a leaf. Yields `Err` (once) when a table is unreachable.
#[derive(Debug)]
pub struct Walk<'m, F: Format, M: TableMemory + ?Sized> {
    mem: &'m M,
    table: u64,
    level: u8,
    virt: u64,
    _f: PhantomData<F>,
}

/// Walks the tree at `root` (`levels` deep, 1 ..= 5) for `virt`. Only the index bits of
/// `virt` are used (input-range checks are the caller's, as for the hardware).
pub fn walk<F: Format, M: TableMemory + ?Sized>(
    mem: &M,
    root: u64,
    levels: u8,
    virt: u64,
) -> Walk<'_, F, M> {
    Walk {
        mem,
        table: root,
        level: if levels <= 5 { levels } else { 0 },
        virt,
        _f: PhantomData,
    }
}

impl<F: Format, M: TableMemory + ?Sized> Iterator for Walk<'_, F, M> {
    type Item = Result<WalkEntry, MapError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.level == 0 {
            return None;
        }
        let i = index(self.virt, self.level);
        let slot = match entry(self.mem, self.table, i) {
            Ok(s) => s,
            Err(e) => {
                self.level = 0;
                return Some(Err(e));
            }
        };
        let e = WalkEntry {
            level: self.level,
            addr: self.table + 8 * i as u64,
            value: slot.load(Ordering::Acquire),
        };
        if !F::present(e.value) || e.is_leaf() {
            self.level = 0;
        } else {
            self.table = e.value & ADDR_MASK;
            self.level -= 1;
        }
        Some(Ok(e))
    }
}

/// Entry `i` of the table at `table`.
fn entry<M: TableMemory + ?Sized>(mem: &M, table: u64, i: usize) -> Result<&AtomicU64, MapError> {
    if !table.is_multiple_of(PAGE_SIZE) {
        return Err(MapError::BadTable(table));
    }
    let base = mem.table(table).ok_or(MapError::BadTable(table))?;
    debug_assert!(i < ENTRIES);
    // SAFETY: `TableMemory` guarantees 512 valid, aligned qwords at `base` while the table
    // is linked (it is: we reached it from the root or just created it), and `i < 512`
    // (every index comes from `index()` or a `0..ENTRIES` loop). Atomics make concurrent
    // updates by the hardware walkers (A/D) well defined.
    Ok(unsafe { &*base.as_ptr().add(i % ENTRIES) })
}

/// A 4-level (or, for a VT-d second stage, 3-level) page-table tree.
///
/// Operations take the [`TableMemory`] the tree lives in; callers serialise changes to
/// one tree (hardware walkers may read and set A/D concurrently).
#[derive(Debug)]
pub struct PageTable<F: Format = X86> {
    root: u64,
    cfg: Config<F>,
    /// Top-level slots that belong to another table (bit i of word i / 64).
    shared: [u64; ENTRIES / 64],
    frozen: bool,
    /// Table pages owned by this tree, the root included.
    tables: usize,
}

impl<F: Format> PageTable<F> {
    /// A new, empty tree (one zeroed root page from `mem`).
    pub fn new<M: TableMemory + ?Sized>(mem: &mut M, cfg: Config<F>) -> Result<Self, MapError> {
        if !(2..=4).contains(&cfg.levels) {
            return Err(MapError::BadLevels(cfg.levels));
        }
        let root = new_table(mem)?;
        Ok(Self {
            root,
            cfg,
            shared: [0; ENTRIES / 64],
            frozen: false,
            tables: 1,
        })
    }

    /// A new tree that shares every present top-level entry of `other`, whose top level
    /// must be frozen (so the copies stay exact): a process's root with the kernel half.
    /// The shared slots refuse every operation of the new tree and are skipped by its
    /// teardown. `mem` must reach `other`'s root too.
    pub fn new_sharing<M: TableMemory + ?Sized>(
        other: &PageTable<F>,
        mem: &mut M,
        cfg: Config<F>,
    ) -> Result<Self, MapError> {
        if !other.frozen {
            return Err(MapError::NotFrozen);
        }
        if cfg.levels != other.cfg.levels {
            return Err(MapError::BadLevels(cfg.levels));
        }
        let mut t = Self::new(mem, cfg)?;
        for i in 0..ENTRIES {
            let e = entry(mem, other.root, i)?.load(Ordering::Acquire);
            if F::present(e) {
                entry(mem, t.root, i)?.store(e, Ordering::Release);
                t.shared[i / 64] |= 1 << (i % 64);
            }
        }
        Ok(t)
    }

    /// Physical address of the root (the CR3 / FSPTPTR / SSPTPTR value).
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The configuration the tree was built with.
    pub fn config(&self) -> &Config<F> {
        &self.cfg
    }

    /// Table pages owned by the tree (root included; shared tables not counted).
    pub fn table_pages(&self) -> usize {
        self.tables
    }

    /// Whether top-level slot `slot` belongs to the table this one shares with.
    pub fn is_shared_slot(&self, slot: usize) -> bool {
        slot < ENTRIES && self.shared[slot / 64] & (1 << (slot % 64)) != 0
    }

    /// Whether the top level is frozen.
    pub fn is_frozen(&self) -> bool {
        self.frozen
    }

    /// Gives each listed top-level slot its next-level table if it has none, so that later
    /// mappings there never change the top level.
    pub fn prepopulate_top_level<M: TableMemory + ?Sized>(
        &mut self,
        slots: impl IntoIterator<Item = usize>,
        mem: &mut M,
    ) -> Result<(), MapError> {
        for s in slots {
            if s >= ENTRIES {
                return Err(MapError::NoSuchSlot(s));
            }
            if self.is_shared_slot(s) {
                return Err(MapError::SharedSlot(s));
            }
            let e = entry(mem, self.root, s)?.load(Ordering::Acquire);
            if !F::present(e) {
                if self.frozen {
                    return Err(MapError::TopLevelFrozen(s));
                }
                let t = new_table(mem)?;
                entry(mem, self.root, s)?.store(t | self.table_bits(), Ordering::Release);
                self.tables += 1;
            }
        }
        Ok(())
    }

    /// From now on no top-level entry is created or removed: every later operation that
    /// would do so fails with [`MapError::TopLevelFrozen`]. Tables built with
    /// [`PageTable::new_sharing`] copy the top-level entries of a frozen table.
    pub fn freeze_top_level(&mut self) {
        self.frozen = true;
    }

    /// Checks that every shared top-level entry still equals `other`'s (ignoring the bits
    /// walkers set): the invariant that makes sharing correct.
    pub fn check_shared<M: TableMemory + ?Sized>(
        &self,
        other: &PageTable<F>,
        mem: &M,
    ) -> Result<(), MapError> {
        for s in (0..ENTRIES).filter(|&s| self.is_shared_slot(s)) {
            let mine = entry(mem, self.root, s)?.load(Ordering::Acquire);
            let theirs = entry(mem, other.root, s)?.load(Ordering::Acquire);
            if (mine ^ theirs) & !F::WALKER_BITS != 0 {
                return Err(MapError::SharedSlotChanged(s));
            }
        }
        Ok(())
    }

    fn table_bits(&self) -> u64 {
        self.cfg.table_flags.bits() | F::PRESENT
    }

    fn large_ok(&self, level: u8) -> bool {
        match level {
            2 => self.cfg.large_2m,
            3 => self.cfg.large_1g,
            _ => false,
        }
    }

    /// The leaf bits for `flags` (PS dropped, P added), or why they are refused.
    fn leaf_bits(&self, flags: F::Flags) -> Result<u64, MapError> {
        let bits = (flags.bits() & !PS) | F::PRESENT;
        if bits & ADDR_MASK != 0 || !F::present(bits) || (self.cfg.user && !F::user_leaf_ok(bits)) {
            return Err(MapError::BadFlags(bits));
        }
        Ok(bits)
    }

    /// Whether `[virt, last]` lies in the input range (one half, for x86).
    fn in_input_range(&self, virt: u64, last: u64) -> bool {
        let bits = 12 + 9 * u32::from(self.cfg.levels);
        if F::SIGN_EXTENDED {
            let (a, b) = (virt >> (bits - 1), last >> (bits - 1));
            a == b && (a == 0 || a == u64::MAX >> (bits - 1))
        } else {
            last >> bits == 0
        }
    }

    /// Checks `[virt, virt+len)` (alignment, input range, shared slots) and returns its
    /// last byte (`None` when empty). Inclusive, so the last page of the upper half works.
    fn check_range(&self, virt: u64, len: u64) -> Result<Option<u64>, MapError> {
        if !(virt | len).is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned);
        }
        if len == 0 {
            return Ok(None);
        }
        let last = virt.checked_add(len - 1).ok_or(MapError::Misaligned)?;
        if !self.in_input_range(virt, last) {
            return Err(MapError::NonCanonical(virt));
        }
        let top = self.cfg.levels;
        for s in index(virt, top)..=index(last, top) {
            if self.is_shared_slot(s) {
                return Err(MapError::SharedSlot(s));
            }
        }
        Ok(Some(last))
    }

    /// Maps `[virt, virt+len)` to `[phys, phys+len)` with `flags` on the leaves (PS is the
    /// mapper's and ignored), using the largest pages that alignment, length, the
    /// configuration and existing tables allow. All or nothing: if any page of the range is
    /// mapped already ([`MapError::Conflict`]) or a table page cannot be had, no leaf was
    /// written (tables created on the way stay, empty).
    pub fn map<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: F::Flags,
        mem: &mut M,
    ) -> Result<(), MapError> {
        self.map_range(virt, phys, len, flags, mem, false)
    }

    /// [`PageTable::map`], except that pages already mapped exactly so (same frame, same
    /// flags up to A/D, also inside a larger page) are accepted and kept.
    pub fn ensure<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: F::Flags,
        mem: &mut M,
    ) -> Result<(), MapError> {
        self.map_range(virt, phys, len, flags, mem, true)
    }

    fn map_range<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        phys: u64,
        len: u64,
        flags: F::Flags,
        mem: &mut M,
        keep_same: bool,
    ) -> Result<(), MapError> {
        let leaf = self.leaf_bits(flags)?;
        let last = self.check_range(virt, len)?;
        if !phys.is_multiple_of(PAGE_SIZE) {
            return Err(MapError::Misaligned);
        }
        if last.is_none() {
            return Ok(());
        }
        let plast = phys.saturating_add(len - 1);
        if plast >= PHYS_LIMIT {
            return Err(MapError::PhysTooWide(plast));
        }
        // Pass 1 finds conflicts and creates the missing tables; pass 2 makes the same
        // choices over the same tables and only writes leaves, so it cannot fail.
        for write in [false, true] {
            let mut off = 0;
            while off < len {
                let (v, p) = (virt + off, phys + off);
                let (level, slot, existing) = self.leaf_slot(v, p, len - off, mem)?;
                let size = span(level);
                match existing {
                    None => {
                        if write {
                            let ps = if level > 1 { PS } else { 0 };
                            entry(mem, slot.0, slot.1)?.store(p | leaf | ps, Ordering::Release);
                        }
                        off += size;
                    }
                    Some(e) if keep_same && Self::same(e, level, v, p, leaf) => {
                        // The page maps on to its end as the request continues.
                        off = ((v | (size - 1)) - virt).saturating_add(1).min(len);
                    }
                    Some(e) => {
                        return Err(MapError::Conflict {
                            virt: v,
                            existing: e,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether leaf `e` at `level` maps `virt` to `phys` with `leaf` bits.
    fn same(e: u64, level: u8, virt: u64, phys: u64, leaf: u64) -> bool {
        let size = span(level);
        let ps = if level > 1 { PS } else { 0 };
        let want = (leaf | ps) & !F::WALKER_BITS;
        let have = e & !ADDR_MASK & !F::WALKER_BITS;
        have == want && (e & ADDR_MASK & !(size - 1)) + (virt & (size - 1)) == phys
    }

    /// Descends to where the leaf for `virt` goes, creating missing tables: (level, (table,
    /// index), the leaf already there). A large leaf goes where the slot is empty, the
    /// configuration allows it and `virt`, `phys` and `rem` fit; an existing table forces
    /// smaller pages.
    #[allow(clippy::type_complexity)]
    fn leaf_slot<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        phys: u64,
        rem: u64,
        mem: &mut M,
    ) -> Result<(u8, (u64, usize), Option<u64>), MapError> {
        let mut table = self.root;
        let mut level = self.cfg.levels;
        loop {
            let i = index(virt, level);
            let e = entry(mem, table, i)?.load(Ordering::Acquire);
            let present = F::present(e);
            let size = span(level);
            let fits = self.large_ok(level) && (virt | phys).is_multiple_of(size) && rem >= size;
            if level == 1 || (!present && fits) {
                return Ok((level, (table, i), present.then_some(e)));
            }
            if present && level <= 3 && e & PS != 0 {
                return Ok((level, (table, i), Some(e)));
            }
            if present {
                table = e & ADDR_MASK;
            } else {
                if level == self.cfg.levels && self.frozen {
                    return Err(MapError::TopLevelFrozen(i));
                }
                let t = new_table(mem)?;
                entry(mem, table, i)?.store(t | self.table_bits(), Ordering::Release);
                self.tables += 1;
                table = t;
            }
            level -= 1;
        }
    }

    /// Clears every leaf in `[virt, virt+len)` with `xchg` (holes are skipped; large pages
    /// covered in part are split first) and hands each old entry to `released`; tables
    /// whose whole span lies in the range are unlinked and handed over too (not the top
    /// level of a frozen table). Returns the bytes that were mapped. The caller invalidates
    /// TLBs / IOTLBs (with paging-structure caches when tables were released), then frees.
    /// On [`MapError::SplitOutOfFrames`] everything before that page was unmapped.
    pub fn unmap<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        len: u64,
        mem: &mut M,
        released: &mut dyn FnMut(Released),
    ) -> Result<u64, MapError> {
        let mut done = 0;
        if let Some(last) = self.check_range(virt, len)? {
            let (root, levels) = (self.root, self.cfg.levels);
            let mut op = Op::Unmap(released);
            self.visit(root, levels, virt, last, mem, &mut op, &mut done)?;
        }
        Ok(done)
    }

    /// Sets the flags of every leaf in `[virt, virt+len)` to `flags` (frame and A/D kept;
    /// `cmpxchg`, so a concurrent A/D update is not lost); holes are skipped, large pages
    /// covered in part are split. `changed` gets (virtual address, old entry, size) of every
    /// leaf that changed. Returns the bytes that are mapped in the range. The caller
    /// invalidates TLBs / IOTLBs (also for upgrades: IOTLBs cache permissions).
    pub fn protect<M: TableMemory + ?Sized>(
        &mut self,
        virt: u64,
        len: u64,
        flags: F::Flags,
        mem: &mut M,
        changed: &mut dyn FnMut(u64, u64, PageSize),
    ) -> Result<u64, MapError> {
        let leaf = self.leaf_bits(flags)?;
        let mut done = 0;
        if let Some(last) = self.check_range(virt, len)? {
            let (root, levels) = (self.root, self.cfg.levels);
            let mut op = Op::Protect(leaf, changed);
            self.visit(root, levels, virt, last, mem, &mut op, &mut done)?;
        }
        Ok(done)
    }

    /// Unmap / protect over `[start, last]` inside the table at `table` (level `level`).
    /// Inclusive ends, so that the last slot of the upper half can be covered.
    #[allow(clippy::too_many_arguments)]
    fn visit<M: TableMemory + ?Sized>(
        &mut self,
        table: u64,
        level: u8,
        start: u64,
        last: u64,
        mem: &mut M,
        op: &mut Op<'_>,
        done: &mut u64,
    ) -> Result<(), MapError> {
        let size = span(level);
        let mut v = start;
        loop {
            let i = index(v, level);
            let first = v & !(size - 1);
            let entry_last = first + (size - 1);
            let stop = entry_last.min(last);
            let whole = v == first && stop == entry_last;
            let e = entry(mem, table, i)?.load(Ordering::Acquire);
            if F::present(e) {
                let leaf = level == 1 || (level <= 3 && e & PS != 0);
                if leaf && whole {
                    let slot = entry(mem, table, i)?;
                    let sz = PageSize::of_level(level);
                    match op {
                        Op::Unmap(out) => {
                            let old = slot.swap(0, Ordering::AcqRel);
                            if F::present(old) {
                                out(Released::Leaf {
                                    virt: first,
                                    entry: old,
                                    size: sz,
                                });
                            }
                        }
                        Op::Protect(bits, out) => {
                            let ps = if level > 1 { PS } else { 0 };
                            let mut old = e;
                            loop {
                                let new = (old & ADDR_MASK) | *bits | ps | (old & F::WALKER_BITS);
                                if new == old {
                                    break;
                                }
                                match slot.compare_exchange(
                                    old,
                                    new,
                                    Ordering::AcqRel,
                                    Ordering::Acquire,
                                ) {
                                    Ok(_) => {
                                        out(first, old, sz);
                                        break;
                                    }
                                    Err(now) => old = now,
                                }
                            }
                        }
                    }
                    *done += size;
                } else {
                    let child = if leaf {
                        self.split(table, i, level, first, mem)?
                    } else {
                        e & ADDR_MASK
                    };
                    self.visit(child, level - 1, v, stop, mem, op, done)?;
                    let top_frozen = level == self.cfg.levels && self.frozen;
                    if let Op::Unmap(out) = op
                        && whole
                        && !top_frozen
                    {
                        // Every entry of the child was just cleared: unlink it.
                        entry(mem, table, i)?.store(0, Ordering::Release);
                        self.tables -= 1;
                        out(Released::Table(child));
                    }
                }
            }
            match stop.checked_add(1) {
                Some(n) if n <= last => v = n,
                _ => return Ok(()),
            }
        }
    }

    /// Replaces the large leaf at (`table`, `i`) by a table of 512 next-level leaves with
    /// the same frames and flags; `cmpxchg`, so A/D bits set meanwhile are carried over.
    fn split<M: TableMemory + ?Sized>(
        &mut self,
        table: u64,
        i: usize,
        level: u8,
        page: u64,
        mem: &mut M,
    ) -> Result<u64, MapError> {
        let t = new_table(mem).map_err(|_| MapError::SplitOutOfFrames {
            page,
            size: PageSize::of_level(level),
        })?;
        let slot = entry(mem, table, i)?;
        let mut e = slot.load(Ordering::Acquire);
        let child = span(level - 1);
        loop {
            let base = e & ADDR_MASK & !(span(level) - 1);
            let attrs = e & !ADDR_MASK & if level == 2 { !PS } else { !0 };
            for k in 0..ENTRIES {
                entry(mem, t, k)?.store((base + k as u64 * child) | attrs, Ordering::Relaxed);
            }
            match slot.compare_exchange(
                e,
                t | self.table_bits(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => e = now,
            }
        }
        self.tables += 1;
        Ok(t)
    }

    /// Looks `virt` up (shared slots included).
    pub fn translate<M: TableMemory + ?Sized>(&self, virt: u64, mem: &M) -> Option<Translation<F>> {
        if !self.in_input_range(virt, virt) {
            return None;
        }
        let last = self.walk(virt, mem).last()?.ok()?;
        if !F::present(last.value) {
            return None;
        }
        let size = PageSize::of_level(last.level);
        let base = last.value & ADDR_MASK & !(size.bytes() - 1);
        Some(Translation {
            phys: base + (virt & (size.bytes() - 1)),
            flags: F::Flags::from_bits_retain(last.value & !ADDR_MASK),
            size,
        })
    }

    /// The entries a hardware walk for `virt` reads (see [`walk`]).
    pub fn walk<'m, M: TableMemory + ?Sized>(&self, virt: u64, mem: &'m M) -> Walk<'m, F, M> {
        walk(mem, self.root, self.cfg.levels, virt)
    }

    /// Takes the tree apart: every leaf is cleared (`xchg`) and handed to `released`, then
    /// every table page the tree owns, the root last. Shared top-level slots are left
    /// alone. The caller frees what it gets once no CPU has the root in CR3 and no PASID
    /// entry points at it (and the caches are invalidated).
    pub fn teardown<M: TableMemory + ?Sized>(
        mut self,
        mem: &mut M,
        released: &mut dyn FnMut(Released),
    ) -> Result<(), MapError> {
        let top = self.cfg.levels;
        let mut op = Op::Unmap(released);
        let mut done = 0;
        self.frozen = false;
        for s in 0..ENTRIES {
            if self.is_shared_slot(s)
                || !F::present(entry(mem, self.root, s)?.load(Ordering::Acquire))
            {
                continue;
            }
            let mut start = s as u64 * span(top);
            if F::SIGN_EXTENDED && s >= ENTRIES / 2 {
                // Upper half: the slot's addresses are sign-extended.
                start |= !(span(top + 1) - 1);
            }
            let last = start + (span(top) - 1);
            self.visit(self.root, top, start, last, mem, &mut op, &mut done)?;
        }
        if let Op::Unmap(out) = &mut op {
            out(Released::Table(self.root));
        }
        Ok(())
    }
}

/// What [`PageTable::visit`] does to the leaves it covers.
enum Op<'a> {
    Unmap(&'a mut dyn FnMut(Released)),
    Protect(u64, &'a mut dyn FnMut(u64, u64, PageSize)),
}

/// A zeroed table page from `mem`, checked to be aligned and reachable.
fn new_table<M: TableMemory + ?Sized>(mem: &mut M) -> Result<u64, MapError> {
    let t = mem.alloc_table().ok_or(MapError::OutOfFrames)?;
    if !t.is_multiple_of(PAGE_SIZE) || t >= PHYS_LIMIT || mem.table(t).is_none() {
        return Err(MapError::BadTable(t));
    }
    Ok(t)
}

#[cfg(test)]
mod tests;
