//! Posted-interrupt descriptors as the chip uses them
//! ([`VectorMode::Posted`](crate::VectorMode::Posted)): per CPU, a growing list of
//! descriptors (PIDs, Intel VT-d Architecture Specification rev 4.1, §9.11),
//! each serving 256 handle slots. A handle in slot `s` of CPU `c` owns bit `s % 256` of
//! descriptor `s / 256` of `c`; its route (an IRTE in posted format, §9.10) makes the
//! remapping unit set that bit and, if the descriptor's ON bit was clear, set ON and send
//! the descriptor's notification vector (NV = the CPU's one IMS vector) to its NDST (the
//! CPU's APIC ID) (§5.2.3).
//!
//! # The handler and why it loses nothing
//!
//! For each of its CPU's descriptors the handler takes ON (a locked `and` that clears it and
//! returns whether it was set); if it was set, then for each PIR word that serves a slot in
//! use and reads non-zero it swaps in zero (`xchg`) and delivers to the handles of the bits
//! it took. No armed set is scanned: the unit names the handles.
//!
//! * **No lost wakeup.** The unit's post is one atomic read-modify-write of the descriptor's
//!   cache line: set PIR\[bit\], then set ON and notify if ON was clear (§5.2.3). All the
//!   handler's accesses are sequentially consistent (locked instructions on x86). Take a
//!   post P and the handler's clear of ON, C. If P is ordered before C, P's bit is set
//!   before C, and the handler's later load/swap of that PIR word sees it. If P is ordered
//!   after C, P finds ON clear — or set by another post P' after C, which then notified —
//!   so a notification is sent after C: the vector becomes pending again (the CPU is in the
//!   handler with interrupts off; it takes the new interrupt after the EOI) and the next
//!   run finds the bit. Skipping a descriptor whose ON was clear is safe for the same
//!   reason: a bit set without ON is always followed by a notification (nobody sets SN);
//!   skipping a PIR word that reads zero after C likewise (a post to it after the read
//!   found ON clear and notified). Skipping a word that serves no slot in use loses
//!   nothing either: only a route of a handle in the table posts to a bit (see
//!   `TablePid::harvest`), and the table's word mask is changed on this CPU, between
//!   handler passes, before such a route exists and after it stopped posting.
//! * **Exactly once.** Each PIR bit a post sets is taken by exactly one `xchg`, so each
//!   message leads to one delivery call; the sink's claim (one compare-exchange per
//!   completion) makes each completion's callback run once even when a retarget or an
//!   unmask re-poll looks at the same records.
//! * **Records before messages.** The device writes the completion record before its
//!   message, and posted writes are ordered (§5.2.4: earlier DMA writes are visible before
//!   the descriptor update), so a delivery call triggered by a bit sees the record.
//!
//! # Retarget and release
//!
//! Retarget takes a slot on the new CPU (a descriptor there, allocated on demand), rewrites
//! the IRTE to post to it (one 128-bit atomic update, then an interrupt-entry-cache
//! invalidation, waited for), leaves the old CPU on the old CPU — clearing the old bit —
//! and re-polls the handle on the new CPU: a completion whose message was posted to the old
//! bit wrote its record before the route moved, so the re-poll delivers it (exactly once,
//! by the claim). Release masks, drains and unbinds the entry before its slot is freed (and
//! its bit cleared), so no post for it reaches the slot's next owner; a stale bit could only
//! cause one empty delivery call anyway.

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// ON, bit 0 of the descriptor's control word (§9.11).
pub const ON: u64 = 1;
/// Handle slots one descriptor serves (its 256 PIR bits).
pub const SLOTS_PER_PID: u32 = 256;

/// A posted-interrupt descriptor the platform allocated (never freed: a unit may still post
/// into it): its four PIR words and its control word, and the platform's cookie for it.
#[derive(Clone, Copy)]
pub struct PidRef {
    /// PIR bit `b` is bit `b % 64` of word `b / 64`.
    pub pir: &'static [AtomicU64; 4],
    /// ON (bit 0), SN (bit 1), NV, NDST.
    pub control: &'static AtomicU64,
    /// Platform cookie (the kernel: the descriptor's address).
    pub id: u64,
}

impl core::fmt::Debug for PidRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PidRef({:#x})", self.id)
    }
}

impl PidRef {
    /// Clears bit `bit` of the PIR; returns whether it was set.
    pub fn clear_bit(&self, bit: u8) -> bool {
        let (q, m) = (bit as usize / 64, 1u64 << (bit % 64));
        self.pir[q].fetch_and(!m, SeqCst) & m != 0
    }

    /// Whether bit `bit` of the PIR is set.
    pub fn bit(&self, bit: u8) -> bool {
        let (q, m) = (bit as usize / 64, 1u64 << (bit % 64));
        self.pir[q].load(SeqCst) & m != 0
    }
}

/// A descriptor as the handler walks it: its PIR words and control word, and which PIR words
/// serve a slot in use (`CpuTable` keeps `words` current as slots come and go).
#[derive(Clone, Copy)]
pub(crate) struct TablePid {
    pir: &'static [AtomicU64; 4],
    control: &'static AtomicU64,
    /// Bit `q`: PIR word `q` holds the bit of a slot in use.
    words: u8,
    /// The words a harvest reads: `words.count_ones()`.
    read: u8,
    /// The handle slot of PIR bit 0 (descriptor i serves slots 256·i to 256·i + 255).
    base: usize,
}

impl TablePid {
    /// Descriptor `index` of its CPU, with PIR words `words` serving slots in use.
    pub fn new(pid: &PidRef, index: usize, words: u8) -> TablePid {
        let mut p = TablePid {
            pir: pid.pir,
            control: pid.control,
            words: 0,
            read: 0,
            base: index * SLOTS_PER_PID as usize,
        };
        p.set_words(words);
        p
    }

    /// Which PIR words serve slots in use.
    pub fn words(&self) -> u8 {
        self.words
    }

    /// Sets which PIR words serve slots in use (bits 0..4 of `words`).
    pub fn set_words(&mut self, words: u8) {
        self.words = words & 0xf;
        self.read = self.words.count_ones() as u8;
    }

    /// The handler's harvest (see the module documentation): if ON is set, clear it, then
    /// take every non-zero PIR word among those serving a slot in use and call `f(slot)` for
    /// each bit taken (the slot the bit serves). Returns the PIR words read (0 when ON was clear).
    ///
    /// A word serving no slot in use is not read: only a handle in the table has a route
    /// posting to its bit (a slot is taken before its route is written, and left only after
    /// the route stopped posting there, its bit cleared), so such a word holds nothing to
    /// deliver. A bit a late post left there would name no handle anyway, and it costs the
    /// slot's next owner at most one empty call.
    #[inline(always)]
    pub(crate) fn harvest(&self, f: &mut impl FnMut(usize)) -> u32 {
        // Take ON, whatever it was: one locked instruction, whose old value says whether
        // there is anything to harvest (clearing a clear ON changes nothing).
        if self.control.fetch_and(!ON, SeqCst) & ON == 0 {
            return 0;
        }
        let m = self.words;
        if m & 1 != 0 {
            self.take(0, f);
        }
        // Slots are reused before new ones are made, so a CPU that never had more than 64
        // handles at once stops here.
        if m > 1 {
            if m & 2 != 0 {
                self.take(1, f);
            }
            if m & 4 != 0 {
                self.take(2, f);
            }
            if m & 8 != 0 {
                self.take(3, f);
            }
        }
        u32::from(self.read)
    }

    /// Takes PIR word `q` (if non-zero) and calls `f(slot)` for each bit it held.
    #[inline(always)]
    fn take(&self, q: usize, f: &mut impl FnMut(usize)) {
        let w = &self.pir[q];
        if w.load(SeqCst) != 0 {
            let mut bits = w.swap(0, SeqCst);
            let base = self.base + q * 64;
            while bits != 0 {
                f(base + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        }
    }
}

/// The descriptors of one CPU: allocated on demand, never freed, at most `capacity / 256`.
pub(crate) struct CpuPids {
    pids: alloc::boxed::Box<[spin::Once<PidRef>]>,
    /// Descriptors allocated (a prefix of `pids`).
    count: core::sync::atomic::AtomicU32,
    /// Serializes allocation (control path only).
    grow: spin::Mutex<()>,
}

impl CpuPids {
    pub fn new(capacity: u32) -> CpuPids {
        let n = capacity.div_ceil(SLOTS_PER_PID) as usize;
        let mut v = alloc::vec::Vec::with_capacity(n);
        v.resize_with(n, spin::Once::new);
        CpuPids {
            pids: v.into_boxed_slice(),
            count: core::sync::atomic::AtomicU32::new(0),
            grow: spin::Mutex::new(()),
        }
    }

    /// Descriptor `i`, if allocated.
    #[inline(always)]
    pub fn get(&self, i: usize) -> Option<&PidRef> {
        self.pids.get(i).and_then(spin::Once::get)
    }

    /// Descriptors allocated.
    pub fn count(&self) -> u32 {
        self.count.load(SeqCst)
    }

    /// Descriptor `i`, allocating descriptors up to it with `alloc` (control path).
    pub fn ensure<E>(
        &self,
        i: usize,
        mut alloc: impl FnMut() -> Result<PidRef, E>,
    ) -> Option<Result<PidRef, E>> {
        if i >= self.pids.len() {
            return None;
        }
        if let Some(p) = self.get(i) {
            return Some(Ok(*p));
        }
        let _g = self.grow.lock();
        while (self.count() as usize) <= i {
            let n = self.count() as usize;
            match alloc() {
                Ok(p) => {
                    self.pids[n].call_once(|| p);
                    self.count.store(n as u32 + 1, SeqCst);
                }
                Err(e) => return Some(Err(e)),
            }
        }
        self.get(i).map(|p| Ok(*p))
    }
}

/// The PIR word (0..4) of handle slot `slot` within its descriptor.
pub(crate) fn slot_word(slot: u32) -> usize {
    (slot % SLOTS_PER_PID / 64) as usize
}

/// The (descriptor, bit) of handle slot `slot`.
pub(crate) fn slot_pid(slot: u32) -> (usize, u8) {
    (
        (slot / SLOTS_PER_PID) as usize,
        (slot % SLOTS_PER_PID) as u8,
    )
}
