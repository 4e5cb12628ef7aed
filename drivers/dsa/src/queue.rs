//! Completion state: the one owner of submission rings, dedicated-WQ credits and the registry
//! that interrupts and recovery walk. `device` and `submit` both use this module; it uses
//! neither.
//!
//! # Rings
//!
//! A `Ring` is one submitter's completion state: `cap` (a power of two) slots, each with a
//! 64-byte descriptor image, a completion record in DMA memory (and, for batches, a member
//! list and member records), and owner-written metadata. The owner (the `Submitter`, one
//! thread at a time) publishes slot `head % cap` and advances `head`; it alone advances `tail`
//! over slots that are free again. Everything a device may still write lies in `[tail, head)`.
//!
//! A slot moves FREE → PENDING_POLL / PENDING_CB (owner, before the portal store) → FREE:
//!
//! * **PENDING_POLL** (the owner collects it with `poll`): only the owner finishes it, without
//!   a read-modify-write, once its status byte is non-zero. A sweep after an abort or a reset
//!   (when the device can no longer write it) claims an unwritten one (PENDING_POLL →
//!   CLAIMED → DONE with `Aborted` parked) and leaves written ones to the owner.
//! * **PENDING_CB** (a callback gets the result): whoever sees the status byte set (an
//!   interrupt's reap, the owner's reap, an IMS pass, a sweep) claims it with one
//!   compare-exchange PENDING_CB → CLAIMED, decodes and calls the callback, then frees the
//!   slot. Exactly one party wins, so every completion is delivered exactly once.
//!
//! The owner writes a slot's metadata and descriptor only while the slot is FREE; others read
//! them only after winning the slot's claim (or, for the owner's own poll slots, never).
//!
//! # Submissions in progress
//!
//! `in_submit` is set (an exchange, a full barrier) before the owner checks the device's run
//! state and cleared after the portal store; recovery and drains set the run state first
//! and then wait for every ring's flag to clear, so no descriptor reaches the device behind
//! their back. That is the only shared write of a submission besides IMS arming.
//!
//! # Credits
//!
//! A dedicated WQ accepts at most its size in descriptors. [`Credits`] is the WQ's pool; a
//! submitter takes credits from it in chunks and keeps them while it has work in flight, so
//! flow control costs no atomic operation per descriptor (see `Submitter`).
//!
//! # Registry
//!
//! Each WQ has a `Registry` of its rings: a two-level bitmap over pointer entries, walked
//! by interrupts without locks or reference counts (a reader count keeps removed rings alive
//! until the walks that may see them have finished).

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{
    AtomicBool, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

use dsa_spec::completion::CR_SIZE;
use dsa_spec::desc::DESC_SIZE;
use dsa_spec::status as st;
use dsa_spec::{CompletionRecord, Descriptor, Opcode};

use crate::dma::{Records, SharedDma};
use crate::error::{OpError, PageFault};
use crate::ops::{self, Output, Work};

// Slot states. The two callback states, and only they, have bit `CB_BIT` set: an
// interrupt pass tells a callback slot from the rest with one test.
pub(crate) const FREE: u8 = 0;
/// Submitted; the owner polls it.
pub(crate) const PENDING_POLL: u8 = 1;
/// Submitted with a completion interrupt; a callback gets it (any reaper may claim it).
pub(crate) const PENDING_CB: u8 = 2;
/// Submitted without a completion interrupt; a callback gets it (the owner's reap, or any
/// other reaper that passes by).
pub(crate) const PENDING_CBQ: u8 = 6;
pub(crate) const CLAIMED: u8 = 4;
/// Finished by a sweep; the parked result waits for the owner's poll.
pub(crate) const DONE: u8 = 5;
/// Set in `PENDING_CB` and `PENDING_CBQ`, clear in every other state.
const CB_BIT: u8 = 2;
const _: () = assert!(
    PENDING_CB & CB_BIT != 0
        && PENDING_CBQ & CB_BIT != 0
        && (FREE | PENDING_POLL | CLAIMED | DONE) & CB_BIT == 0
);

pub(crate) const K_SINGLE: u8 = 0;
pub(crate) const K_BATCH: u8 = 1;
const _: () = assert!(
    K_SINGLE == 0 && K_BATCH == 1,
    "Tag::DONE_ON_SUCCESS tests bit 32"
);

/// A completion callback: a function pointer and a cookie (no allocation, no closure).
///
/// It runs where the completion is noticed: an interrupt handler (MSI-X or the IMS
/// demultiplexer, interrupts off), the owner's `reap`/`wait`, or a recovery sweep. It must not
/// block and must not submit on the same submitter.
#[derive(Clone, Copy)]
pub struct Callback {
    /// Called once with the cookie and the completed operation.
    pub f: fn(cookie: usize, done: &Completed<'_>),
    /// Passed to `f` unchanged (typically a pointer or an index of the caller's).
    pub cookie: usize,
}

impl core::fmt::Debug for Callback {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Callback({:#x})", self.cookie)
    }
}

/// What a callback receives: one finished operation or batch, decoded on demand from its
/// completion record (valid during the callback only).
pub struct Completed<'a> {
    ring: &'a Ring,
    slot: u32,
    /// The record's status byte, or `status::SW_ABORTED` when failed back without one.
    status: u8,
    tag: Tag,
}

impl<'a> Completed<'a> {
    /// Whether this was a batch.
    #[inline]
    pub fn is_batch(&self) -> bool {
        self.tag.kind() == K_BATCH
    }
    /// True when the operation succeeded (a batch: every member succeeded) and its result
    /// carries nothing but success: `result()` is `Ok(Output::Done)`.
    #[inline]
    pub fn plain_success(&self) -> bool {
        self.status == st::SUCCESS && self.tag.done_on_success()
    }
    /// A single operation's result; for a batch, `Ok(Output::Done)` when the batch
    /// descriptor completed (members may still have failed: see [`Completed::members`]) or
    /// the batch descriptor's own error.
    #[inline]
    pub fn result(&self) -> Result<Output, OpError> {
        if self.plain_success() {
            return Ok(Output::Done);
        }
        self.result_slow()
    }

    #[inline(never)]
    fn result_slow(&self) -> Result<Output, OpError> {
        if self.status == st::SW_ABORTED {
            return Err(OpError::Aborted);
        }
        let k = self.slot as usize;
        if self.is_batch() {
            self.ring.batch_status(k)
        } else {
            self.ring.decode_single(k)
        }
    }
    /// The members of a batch (empty for a single operation).
    #[inline]
    pub fn members(&self) -> Members<'a> {
        Members {
            ring: self.ring,
            slot: self.slot as usize,
            count: if self.is_batch() && self.status != st::SW_ABORTED {
                self.tag.members() as usize
            } else {
                0
            },
            all_ok: self.is_batch() && self.status == st::SUCCESS,
            plain: self.tag.plain(),
        }
    }
    /// The result in the allocating form of the convenience API (`Output::Batch` with every
    /// member for a batch).
    pub fn into_result(&self) -> Result<Output, OpError> {
        let r = self.result();
        if !self.is_batch() {
            return r;
        }
        r?;
        let m = self.members();
        Ok(Output::Batch((0..m.len()).map(|j| m.get(j)).collect()))
    }
}

/// The members of a completed batch.
pub struct Members<'a> {
    ring: &'a Ring,
    slot: usize,
    count: usize,
    /// The batch completed with status Success: every member succeeded.
    all_ok: bool,
    plain: bool,
}

impl<'a> Members<'a> {
    /// Number of members (the batch's descriptor count).
    pub fn len(&self) -> usize {
        self.count
    }
    /// True for an empty member list (not a batch).
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// True when the batch reported that every member succeeded.
    pub fn all_ok(&self) -> bool {
        self.all_ok
    }
    /// Member `j`'s result (decoded from its completion record).
    pub fn get(&self, j: usize) -> Result<Output, OpError> {
        if j >= self.count {
            return Err(OpError::BadToken);
        }
        if self.all_ok && self.plain {
            return Ok(Output::Done);
        }
        self.ring.decode_member(self.slot, j)
    }
    /// Writes every member's result into `out` (at most `out.len()`); returns how many.
    #[inline]
    pub fn write_to(&self, out: &mut [Result<Output, OpError>]) -> usize {
        let n = self.count.min(out.len());
        if self.all_ok && self.plain {
            for o in &mut out[..n] {
                if !matches!(o, Ok(Output::Done)) {
                    *o = Ok(Output::Done);
                }
            }
        } else {
            for (j, o) in out[..n].iter_mut().enumerate() {
                *o = self.ring.decode_member(self.slot, j);
            }
        }
        n
    }
}

/// Owner-written metadata of one slot (see the module documentation for who reads it when).
pub(crate) struct Meta {
    /// The submission's [`Tag`]: written with one store, checked by a poll with one compare.
    pub tag: Tag,
    pub cb: Option<Callback>,
}

/// What a slot holds, packed into one word: bits 31:0 the submission's sequence number
/// (the owner's head index), 39:32 its kind (`K_SINGLE`, `K_BATCH`), bit 40 plain (single:
/// an operation whose successful result is `Output::Done`; batch: every member is), bit 41
/// resumed (`Extra::resumed` holds the original operation), 63:48 a batch's member count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tag(pub u64);

impl Tag {
    /// Plain, or kind `K_BATCH` (whose only non-zero kind bit is bit 32).
    const DONE_ON_SUCCESS: u64 = 1 << 40 | (K_BATCH as u64) << 32;

    #[inline(always)]
    pub const fn new(seq: u32, kind: u8, plain: bool, resumed: bool, members: u16) -> Tag {
        Tag(seq as u64
            | (kind as u64) << 32
            | (plain as u64) << 40
            | (resumed as u64) << 41
            | (members as u64) << 48)
    }
    /// Plain or a batch: a Success status alone makes the result `Output::Done`
    /// ([`Completed::plain_success`]); one test of the tag.
    #[inline(always)]
    pub const fn done_on_success(self) -> bool {
        self.0 & Self::DONE_ON_SUCCESS != 0
    }
    #[inline(always)]
    pub const fn seq(self) -> u32 {
        self.0 as u32
    }
    #[inline(always)]
    pub const fn kind(self) -> u8 {
        (self.0 >> 32) as u8
    }
    #[inline(always)]
    pub const fn plain(self) -> bool {
        self.0 & 1 << 40 != 0
    }
    #[inline(always)]
    pub const fn resumed(self) -> bool {
        self.0 & 1 << 41 != 0
    }
    #[inline(always)]
    pub const fn members(self) -> u16 {
        (self.0 >> 48) as u16
    }
}

/// Rarely used per-slot data, out of the hot slot.
pub(crate) struct Extra {
    /// Set by a sweep (DONE).
    pub parked: Option<OpError>,
    /// A resumed operation: the original and the units done before this descriptor (valid
    /// only while the slot's tag says resumed; see `Ring::decode_single`).
    pub resumed: Option<(Work, u64)>,
}

/// One slot: its descriptor image and state in one 128-byte block.
#[repr(C, align(128))]
pub(crate) struct RecordSlot {
    pub desc: UnsafeCell<[u64; 8]>,
    pub state: AtomicU8,
    pub meta: UnsafeCell<Meta>,
}

/// One submitter's completion state (see the module documentation).
pub(crate) struct Ring {
    pub head: AtomicU32,
    pub tail: AtomicU32,
    pub in_submit: AtomicBool,
    pub mask: u32,
    pub wq: u8,
    /// The PASID the device applies to these descriptors (None: no PASID).
    pub request_pasid: Option<u32>,
    /// Whether the WQ's MSI-X entry can serve this ring (its PASID is the one the entry is
    /// bound to, or the WQ has none: `Submitter::route_slow` refuses MSI-X otherwise). A
    /// ring it cannot serve never holds MSI-X-notified work (a client PASID's: IMS or
    /// polling only), so MSI-X interrupts skip it ([`Queues::reap_msix`]): its completions
    /// stay with their IMS handle (or its owner, or a sweep).
    pub msix: bool,
    /// `mask + 1` slots (never replaced: [`Ring::slot`] relies on the length).
    slots: Box<[RecordSlot]>,
    pub extra: Box<[UnsafeCell<Extra>]>,
    pub crs: SharedDma,
    /// `crs` as `mask + 1` records indexed modulo the ring size.
    pub recs: Records,
    pub lists: Option<SharedDma>,
    pub member_crs: Option<SharedDma>,
    pub max_batch: usize,
}

// SAFETY: the UnsafeCells are accessed under the slot protocol of the module documentation:
// the owner writes a slot's metadata and descriptor only while the slot is FREE (nobody else
// reads it then), others read them only after acquiring the slot's state (a claim, or DONE
// for the owner), and the one writer at a time publishes with a release store.
unsafe impl Sync for Ring {}
// SAFETY: as above; nothing in the ring is tied to a thread.
unsafe impl Send for Ring {}

impl Ring {
    pub fn new(
        wq: u8,
        request_pasid: Option<u32>,
        cap: usize,
        crs: SharedDma,
        lists: Option<SharedDma>,
        member_crs: Option<SharedDma>,
        max_batch: usize,
    ) -> Option<Ring> {
        if !cap.is_power_of_two() || cap > 1 << 16 {
            return None;
        }
        let recs = crs.records(cap)?;
        Some(Ring {
            head: AtomicU32::new(0),
            tail: AtomicU32::new(0),
            in_submit: AtomicBool::new(false),
            mask: cap as u32 - 1,
            wq,
            request_pasid,
            msix: true,
            slots: (0..cap)
                .map(|_| RecordSlot {
                    desc: UnsafeCell::new([0; 8]),
                    state: AtomicU8::new(FREE),
                    meta: UnsafeCell::new(Meta {
                        tag: Tag::new(0, K_SINGLE, false, false, 0),
                        cb: None,
                    }),
                })
                .collect(),
            extra: (0..cap)
                .map(|_| {
                    UnsafeCell::new(Extra {
                        parked: None,
                        resumed: None,
                    })
                })
                .collect(),
            crs,
            recs,
            lists,
            member_crs,
            max_batch,
        })
    }

    /// Slot `i mod cap`.
    #[inline(always)]
    pub fn slot(&self, i: u32) -> &RecordSlot {
        let k = (i & self.mask) as usize;
        debug_assert!(k < self.slots.len());
        // SAFETY: `slots` has `mask + 1` entries (`new`; the field is private and never
        // replaced), so `i & mask` is in bounds.
        unsafe { self.slots.get_unchecked(k) }
    }

    /// Slot `k` if it exists (a caller's token).
    #[inline(always)]
    pub fn slot_at(&self, k: usize) -> Option<&RecordSlot> {
        self.slots.get(k)
    }

    pub fn cap(&self) -> usize {
        self.slots.len()
    }
    pub const fn cr_off(i: usize) -> usize {
        i * CR_SIZE
    }
    pub fn list_off(&self, i: usize, j: usize) -> usize {
        (i * self.max_batch + j) * DESC_SIZE
    }
    pub fn mcr_off(&self, i: usize, j: usize) -> usize {
        (i * self.max_batch + j) * CR_SIZE
    }

    /// The slots a device may still write, as indices (owner's tail to head).
    #[inline(always)]
    fn range(&self) -> (u32, u32) {
        // Tail first: a stale tail only widens the range; the head read afterwards covers
        // every slot published before it.
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        let cap = self.mask + 1;
        if head.wrapping_sub(tail) > cap {
            (head.wrapping_sub(cap), head)
        } else {
            (tail, head)
        }
    }

    /// Status byte of slot `i`'s completion record.
    #[inline(always)]
    pub fn status(&self, i: usize) -> u8 {
        self.recs.status(i)
    }

    /// Reaps every callback slot whose record was written (the callbacks run here), in
    /// submission order, stopping at the first one still in flight that will raise an
    /// interrupt of its own: completions after it are delivered by the pass its interrupt
    /// causes (every such pass starts at the tail), so nothing is lost and an interrupt
    /// costs the slots up to the first unfinished one, not every slot in flight. Never
    /// blocks. Returns (delivered, whether anything is still outstanding).
    #[inline]
    pub fn reap(&self) -> (u32, bool) {
        self.reap_from(true)
    }

    /// [`Ring::reap`] adding one to `count` for each completion before its callback runs.
    #[inline(always)]
    pub fn reap_counting(&self, count: &AtomicU64) -> (u32, bool) {
        let (n, o, _) = self.reap_once(Some(count));
        (n, o)
    }

    /// [`Ring::reap_counting`]'s delivered count: the IMS sink's plain function.
    #[inline(always)]
    pub fn poll_counting(&self, count: &AtomicU64) -> u32 {
        self.reap_once(Some(count)).0
    }

    /// [`Ring::reap`], also returning the head it scanned to (an interrupt path's idle mark).
    ///
    /// Shaped for an interrupt pass: one slot between tail and head (one operation in
    /// flight, the common case of a notification) is reaped inline with nothing kept across
    /// its callback ([`Ring::reap_last`]); anything else goes to the loop, out of line.
    #[inline(always)]
    pub fn reap_once(&self, count: Option<&AtomicU64>) -> (u32, bool, u32) {
        // Read as `range` reads them (tail first).
        let tail = self.tail.load(Ordering::Acquire);
        let head = self.head.load(Ordering::Acquire);
        if head.wrapping_sub(tail) == 1 {
            // `range` would return (tail, head) too: one slot never exceeds the capacity.
            let (n, o) = self.reap_last(tail, count);
            return (n, o, head);
        }
        self.reap_loop(count)
    }

    /// [`Ring::reap_once`]'s general case: every slot from tail to head.
    #[inline(never)]
    fn reap_loop(&self, count: Option<&AtomicU64>) -> (u32, bool, u32) {
        let (i, head) = self.range();
        let (n, o) = self.reap_range(i, head, true, count);
        (n, o, head)
    }

    /// [`Ring::reap_range`] over the one slot `i` (the range's last). The same steps as the
    /// loop's body, without the loop: after the callback only the slot is live, so the
    /// pass keeps no state across the call.
    #[inline(always)]
    fn reap_last(&self, i: u32, count: Option<&AtomicU64>) -> (u32, bool) {
        let recs = self.recs;
        let k = i as usize & recs.mask();
        // SAFETY: as in `reap_range`: `slots` and `recs` have `mask + 1` entries.
        let slot = unsafe { self.slots.get_unchecked(k) };
        let s = slot.state.load(Ordering::Acquire);
        if s & CB_BIT != 0 {
            let status = recs.status(k);
            if status == st::NOT_COMPLETE {
                return (0, true);
            }
            if slot
                .state
                .compare_exchange(s, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another reaper won it and delivers it.
                return (0, false);
            }
            if let Some(c) = count {
                // Counted before the callback can observe it.
                c.fetch_add(1, Ordering::Relaxed);
            }
            self.finish_slot(slot, k, status & st::CODE_MASK);
            return (1, false);
        }
        let outstanding =
            s != FREE && s != DONE && (s == CLAIMED || recs.status(k) == st::NOT_COMPLETE);
        (0, outstanding)
    }

    /// [`Ring::reap`]; `stop` false visits every slot in flight (the owner's reap, sweeps).
    #[inline]
    pub fn reap_from(&self, stop: bool) -> (u32, bool) {
        let (i, head) = self.range();
        self.reap_range(i, head, stop, None)
    }

    #[inline(always)]
    fn reap_range(
        &self,
        mut i: u32,
        head: u32,
        stop: bool,
        count: Option<&AtomicU64>,
    ) -> (u32, bool) {
        let mut n = 0;
        let mut outstanding = false;
        // Read once: after each acquire load below the compiler would reload them. One
        // mask for slots and records (the records' is the ring's: `new` makes them with
        // `records(cap)`), so the record index needs no second `and` and the loop one
        // register less.
        let slots = &*self.slots;
        let recs = self.recs;
        let mask = recs.mask();
        debug_assert_eq!(mask, self.mask as usize);
        while i != head {
            let k = i as usize & mask;
            i = i.wrapping_add(1);
            // SAFETY: `slots` has `cap` entries and `recs` was made for `cap` records in `new`
            // (neither field is ever replaced), so `k <= cap - 1` is in bounds.
            let slot = unsafe { slots.get_unchecked(k) };
            let s = slot.state.load(Ordering::Acquire);
            // Callback slots first (what an interrupt pass is for), one test each.
            if s & CB_BIT != 0 {
                let status = recs.status(k);
                if status != st::NOT_COMPLETE {
                    if slot
                        .state
                        .compare_exchange(s, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        if let Some(c) = count {
                            // Counted before the callback can observe it.
                            c.fetch_add(1, Ordering::Relaxed);
                        }
                        self.finish_slot(slot, k, status & st::CODE_MASK);
                        n += 1;
                    }
                } else {
                    outstanding = true;
                    if stop && s == PENDING_CB {
                        break;
                    }
                }
            } else if s != FREE && s != DONE && (s == CLAIMED || recs.status(k) == st::NOT_COMPLETE)
            {
                outstanding = true;
            }
        }
        (n, outstanding)
    }

    /// Operations submitted and not yet finished: callbacks not yet delivered, polled
    /// operations whose record is not written yet (a written one waits for the owner's
    /// poll only).
    pub fn outstanding(&self) -> u32 {
        let (mut i, head) = self.range();
        let mut n = 0;
        while i != head {
            let k = (i & self.mask) as usize;
            let s = self.slot(k as u32).state.load(Ordering::Acquire);
            if s == PENDING_CB
                || s == PENDING_CBQ
                || s == CLAIMED
                || (s == PENDING_POLL && self.status(k) == st::NOT_COMPLETE)
            {
                n += 1;
            }
            i = i.wrapping_add(1);
        }
        n
    }

    /// Descriptors the device may still hold: submitted slots whose record is not written.
    pub fn in_device(&self) -> u32 {
        let (mut i, head) = self.range();
        let mut n = 0;
        while i != head {
            let k = (i & self.mask) as usize;
            let s = self.slot(k as u32).state.load(Ordering::Acquire);
            if matches!(s, PENDING_POLL | PENDING_CB | PENDING_CBQ)
                && self.status(k) == st::NOT_COMPLETE
            {
                n += 1;
            }
            i = i.wrapping_add(1);
        }
        n
    }

    #[inline(always)]
    fn claim(&self, i: usize, from: u8) -> bool {
        self.slot(i as u32)
            .state
            .compare_exchange(from, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Fails every submitted slot without a completion record whose record address matches
    /// `pick`, and delivers written callback slots. Only valid when the device can no longer
    /// write those records (after an abort, a reset, or for a record it cannot write).
    pub fn fail_unwritten(&self, pick: impl Fn(u64) -> bool) -> u32 {
        let mut n = 0;
        for k in 0..self.slots.len() {
            let s = self.slot(k as u32).state.load(Ordering::Acquire);
            if s != PENDING_POLL && s != PENDING_CB && s != PENDING_CBQ {
                continue;
            }
            let cb = s != PENDING_POLL;
            let written = self.status(k) != st::NOT_COMPLETE;
            if written {
                // The owner finishes its poll slots; callbacks are delivered now.
                if cb && self.claim(k, s) {
                    self.finish_cb(k, self.status(k) & st::CODE_MASK);
                    n += 1;
                }
                continue;
            }
            if !pick(self.crs.dev_addr(Self::cr_off(k))) || !self.claim(k, s) {
                continue;
            }
            if cb {
                self.finish_cb(k, st::SW_ABORTED);
            } else {
                // SAFETY: this party won the claim; the owner reads `parked` only after
                // the DONE store below (slot protocol).
                unsafe { (*self.extra[k].get()).parked = Some(OpError::Aborted) };
                self.slot(k as u32).state.store(DONE, Ordering::Release);
            }
            n += 1;
        }
        n
    }

    /// Delivers a claimed callback slot and frees it.
    #[inline]
    /// `status`: the record's status code, or `SW_ABORTED` when failed back without one.
    fn finish_cb(&self, k: usize, status: u8) {
        self.finish_slot(self.slot(k as u32), k, status);
    }

    /// [`Ring::finish_cb`] with the slot already looked up (`slot` is slot `k`).
    #[inline(always)]
    fn finish_slot(&self, slot: &RecordSlot, k: usize, status: u8) {
        // SAFETY: the caller won the claim of slot `k`: the owner does not touch its metadata
        // until it is FREE again, and no other party reads it. (`cb` is left in place: the
        // owner rewrites it with the slot's next submission.)
        let meta = unsafe { &*slot.meta.get() };
        if let Some(cb) = meta.cb {
            let done = Completed {
                ring: self,
                slot: k as u32,
                status,
                tag: meta.tag,
            };
            (cb.f)(cb.cookie, &done);
        }
        slot.state.store(FREE, Ordering::Release);
    }

    /// The completion of slot `k` (owned by the caller; record written).
    #[inline(always)]
    pub fn completed(&self, k: usize, meta: &Meta) -> Completed<'_> {
        Completed {
            ring: self,
            slot: k as u32,
            status: self.recs.status(k) & st::CODE_MASK,
            tag: meta.tag,
        }
    }

    /// Decodes a single operation's record (whole words).
    pub fn decode_single(&self, k: usize) -> Result<Output, OpError> {
        let w0: u64 = self.crs.word(Self::cr_off(k));
        let code = (w0 as u8) & st::CODE_MASK;
        // SAFETY: the descriptor image is written by the owner before publication and read
        // here by the party finishing the slot (slot protocol).
        let desc = unsafe { &*self.slot(k as u32).desc.get() };
        let opcode = (desc[0] >> 56) as u8;
        if code == st::SUCCESS && plain_opcode(opcode) {
            return Ok(Output::Done);
        }
        let cr = self.record(&self.crs, Self::cr_off(k));
        let Some(work) = work_of(desc) else {
            return Err(OpError::Status { code });
        };
        // SAFETY: as above (the tag and `Extra::resumed` are written with the slot, before
        // publication). `Extra::resumed` counts only when the tag says so: a later
        // submission in the slot leaves a stale value there rather than clearing it.
        let resumed = unsafe {
            let tag = (*self.slot(k as u32).meta.get()).tag;
            if tag.resumed() {
                (*self.extra[k].get()).resumed.as_ref()
            } else {
                None
            }
        };
        match resumed {
            Some((original, done)) => ops::decode(&work, original, *done, &cr),
            None => ops::decode(&work, &work, 0, &cr),
        }
    }

    fn record(&self, buf: &SharedDma, off: usize) -> CompletionRecord {
        let w: [u64; 4] = core::array::from_fn(|i| buf.word(off + 8 * i));
        let mut b = [0u8; CR_SIZE];
        for (i, x) in w.iter().enumerate() {
            b[8 * i..8 * i + 8].copy_from_slice(&x.to_le_bytes());
        }
        CompletionRecord::from_bytes(&b)
    }

    /// A batch descriptor's own outcome: Ok when the list was processed (members carry their
    /// results).
    fn batch_status(&self, k: usize) -> Result<Output, OpError> {
        let w0: u64 = self.crs.word(Self::cr_off(k));
        let code = (w0 as u8) & st::CODE_MASK;
        match code {
            st::SUCCESS | st::BATCH_FAIL => Ok(Output::Done),
            st::BATCH_PAGE_FAULT => {
                let cr = self.record(&self.crs, Self::cr_off(k));
                Err(OpError::PageFault(PageFault {
                    addr: cr.fault_addr,
                    write: cr.fault_is_write(),
                    completed: u64::from(cr.bytes_completed),
                    resume: None,
                }))
            }
            st::INVALID_FLAGS => {
                let cr = self.record(&self.crs, Self::cr_off(k));
                Err(OpError::InvalidFlags {
                    bits: cr.invalid_flags() & 0xFF_FFFF,
                })
            }
            _ => Err(OpError::Status { code }),
        }
    }

    /// Member `j` of the batch in slot `k`.
    fn decode_member(&self, k: usize, j: usize) -> Result<Output, OpError> {
        let (Some(lists), Some(mcrs)) = (&self.lists, &self.member_crs) else {
            return Err(OpError::BadToken);
        };
        let off = self.mcr_off(k, j);
        let w0: u64 = mcrs.word(off);
        if (w0 as u8) == st::NOT_COMPLETE {
            return Err(OpError::Abandoned);
        }
        let desc: [u64; 8] = core::array::from_fn(|i| lists.word(self.list_off(k, j) + 8 * i));
        let code = (w0 as u8) & st::CODE_MASK;
        if code == st::SUCCESS && plain_opcode((desc[0] >> 56) as u8) {
            return Ok(Output::Done);
        }
        let cr = self.record(mcrs, off);
        match work_of(&desc) {
            Some(w) => ops::decode(&w, &w, 0, &cr),
            None => Err(OpError::Status { code }),
        }
    }
}

/// Operations whose successful result carries more than success (a compare result, a CRC,
/// a delta record size, DIF tags), by opcode bit.
const RESULT_OPS: u64 = 1 << Opcode::Compare as u8
    | 1 << Opcode::ComparePattern as u8
    | 1 << Opcode::CreateDelta as u8
    | 1 << Opcode::CrcGen as u8
    | 1 << Opcode::CopyCrc as u8
    | 1 << Opcode::DifCheck as u8
    | 1 << Opcode::DifInsert as u8
    | 1 << Opcode::DifStrip as u8
    | 1 << Opcode::DifUpdate as u8;

/// [`plain_opcode`] of an operation.
#[inline(always)]
pub(crate) fn plain_op(op: &ops::Op) -> bool {
    use ops::Op;
    !matches!(
        op,
        Op::Compare { .. }
            | Op::ComparePattern { .. }
            | Op::CreateDelta { .. }
            | Op::CrcGen { .. }
            | Op::CopyCrc { .. }
            | Op::DifCheck { .. }
            | Op::DifInsert { .. }
            | Op::DifStrip { .. }
            | Op::DifUpdate { .. }
    )
}

/// Operations whose successful result carries nothing but success.
#[inline(always)]
pub(crate) fn plain_opcode(op: u8) -> bool {
    op >= 64 || (RESULT_OPS >> op) & 1 == 0
}

/// The operation a descriptor image encodes (for decoding and resuming).
fn work_of(desc: &[u64; 8]) -> Option<Work> {
    let mut b = [0u8; DESC_SIZE];
    for (i, w) in desc.iter().enumerate() {
        b[8 * i..8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    crate::encode::work_from_descriptor(&Descriptor::from_bytes(&b))
}

// ---------------------------------------------------------------------------- credits

/// A dedicated WQ's credit pool: descriptors it may hold, handed to submitters in chunks.
pub struct Credits {
    size: u32,
    /// Credits held by submitters.
    in_use: AtomicU32,
    peak: AtomicU32,
}

impl Credits {
    pub(crate) fn new(size: u32) -> Credits {
        Credits {
            size,
            in_use: AtomicU32::new(0),
            peak: AtomicU32::new(0),
        }
    }
    /// Credits in the pool: the WQ's size in descriptors.
    pub fn size(&self) -> u32 {
        self.size
    }
    /// Takes up to `want` credits (at least one unless none is free); returns how many.
    #[inline]
    pub(crate) fn take(&self, want: u32) -> u32 {
        let mut got = 0;
        let r = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                got = want.min(self.size.saturating_sub(n));
                (got > 0).then_some(n + got)
            });
        match r {
            Ok(n) => {
                self.peak.fetch_max(n + got, Ordering::Relaxed);
                got
            }
            Err(_) => 0,
        }
    }
    /// Returns `n` credits to the pool.
    #[inline]
    pub(crate) fn give(&self, n: u32) {
        if n > 0 {
            let _ = self
                .in_use
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
                    Some(x.saturating_sub(n))
                });
        }
    }
    /// Credits held by submitters now.
    pub fn in_use(&self) -> u32 {
        self.in_use.load(Ordering::Acquire)
    }
    /// Most credits ever held at once.
    pub fn peak(&self) -> u32 {
        self.peak.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------------------- registry

/// The rings of one WQ (see the module documentation). `T` is generic for tests.
pub(crate) struct Registry<T = Ring> {
    entries: Box<[AtomicPtr<T>]>,
    occupied: Box<[AtomicU64]>,
    /// Bit w: `occupied[w]` may be non-zero.
    summary: Box<[AtomicU64]>,
    /// Summary words ever used (walks look no further).
    top: AtomicUsize,
    /// Walks in progress (interrupt paths); removal waits for them.
    readers: AtomicU32,
    insert: spin::Mutex<()>,
}

impl<T> Registry<T> {
    pub fn new(n: usize) -> Registry<T> {
        let words = n.div_ceil(64).max(1);
        let mk = |k: usize| -> Box<[AtomicU64]> { (0..k).map(|_| AtomicU64::new(0)).collect() };
        Registry {
            entries: (0..n).map(|_| AtomicPtr::new(ptr::null_mut())).collect(),
            occupied: mk(words),
            summary: mk(words.div_ceil(64)),
            top: AtomicUsize::new(0),
            readers: AtomicU32::new(0),
            insert: spin::Mutex::new(()),
        }
    }

    /// Registers `s`; the entry index, or None when every entry is taken.
    pub fn insert(&self, s: &Arc<T>) -> Option<usize> {
        let _g = self.insert.lock();
        let i = self
            .entries
            .iter()
            .position(|e| e.load(Ordering::Acquire).is_null())?;
        self.entries[i].store(Arc::into_raw(s.clone()).cast_mut(), Ordering::Release);
        let w = i / 64;
        // Entry bit first, then the summary bit: a walk that clears a stale summary bit
        // re-reads the word afterwards, so one of the two sees the other.
        self.occupied[w].fetch_or(1 << (i % 64), Ordering::SeqCst);
        self.summary[w / 64].fetch_or(1 << (w % 64), Ordering::SeqCst);
        self.top.fetch_max(w / 64 + 1, Ordering::SeqCst);
        Some(i)
    }

    /// Unregisters entry `i`. Waits (while `keep_waiting` says so) until no walk can still
    /// use it; if the wait is cut short the entry's reference is leaked, never freed early.
    pub fn remove(&self, i: usize, mut keep_waiting: impl FnMut() -> bool) {
        let Some(e) = self.entries.get(i) else {
            return;
        };
        let _g = self.insert.lock();
        self.occupied[i / 64].fetch_and(!(1 << (i % 64)), Ordering::SeqCst);
        let p = e.swap(ptr::null_mut(), Ordering::SeqCst);
        if p.is_null() {
            return;
        }
        // A walk that loaded `p` raised `readers` before loading it (both sequentially
        // consistent), so once the count reads zero no walk holds `p`.
        while self.readers.load(Ordering::SeqCst) != 0 {
            if !keep_waiting() {
                log::error!("dsa: registry entry {i} still in use by an interrupt path; leaked");
                return;
            }
        }
        // SAFETY: `p` came from `Arc::into_raw` in `insert` and was the entry's only copy;
        // no walk can use it any more (above).
        drop(unsafe { Arc::from_raw(p) });
    }

    /// Calls `f` for every registered entry. Lock-free; safe in interrupt context.
    #[inline]
    pub fn for_each(&self, mut f: impl FnMut(&T)) {
        self.readers.fetch_add(1, Ordering::SeqCst);
        let top = self.top.load(Ordering::SeqCst).min(self.summary.len());
        for (si, sw) in self.summary[..top].iter().enumerate() {
            let mut sbits = sw.load(Ordering::Acquire);
            while sbits != 0 {
                let b = sbits.trailing_zeros();
                sbits &= sbits - 1;
                let w = si * 64 + b as usize;
                let Some(word) = self.occupied.get(w) else {
                    continue;
                };
                let mut m = word.load(Ordering::Acquire);
                if m == 0 {
                    // Possibly stale: clear it, then look again (an insert racing with the
                    // clear sets the summary bit after its entry bit).
                    sw.fetch_and(!(1 << b), Ordering::SeqCst);
                    m = word.load(Ordering::SeqCst);
                    if m == 0 {
                        continue;
                    }
                    sw.fetch_or(1 << b, Ordering::SeqCst);
                }
                while m != 0 {
                    let i = w * 64 + m.trailing_zeros() as usize;
                    m &= m - 1;
                    let p = self.entries[i].load(Ordering::SeqCst);
                    if !p.is_null() {
                        // SAFETY: a non-null entry is a live `Arc` reference that `remove`
                        // frees only after `readers` (raised above) returned to zero.
                        f(unsafe { &*p });
                    }
                }
            }
        }
        self.readers.fetch_sub(1, Ordering::SeqCst);
    }

    /// Occupied-bitmap words the next walk reads (tests).
    #[cfg(test)]
    fn scanned_words(&self) -> usize {
        self.summary
            .iter()
            .map(|s| s.load(Ordering::Acquire).count_ones() as usize)
            .sum()
    }
}

impl<T> Drop for Registry<T> {
    fn drop(&mut self) {
        for e in self.entries.iter() {
            let p = e.swap(ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: from `Arc::into_raw` in `insert`; nothing walks a dropped registry.
                drop(unsafe { Arc::from_raw(p) });
            }
        }
    }
}

/// Every WQ's registry: what interrupts, drains and recovery reach.
pub(crate) struct Queues {
    /// Indexed by WQ id (None: unconfigured).
    wqs: Vec<Option<Registry>>,
    /// MSI-X entry → the WQ whose completion interrupt it is (`NO_WQ`: none).
    by_entry: Box<[u8]>,
}

const NO_WQ: u8 = u8::MAX;

impl Queues {
    /// `configured`: each configured WQ's id and its MSI-X entry, if any.
    pub fn new(
        configured: impl Iterator<Item = (u8, Option<u16>)>,
        num_wqs: usize,
        per_wq: usize,
    ) -> Queues {
        let mut wqs: Vec<Option<Registry>> = (0..num_wqs).map(|_| None).collect();
        let mut by_entry = Vec::new();
        for (id, entry) in configured {
            if let Some(w) = wqs.get_mut(id as usize) {
                *w = Some(Registry::new(per_wq));
                if let Some(e) = entry.map(usize::from)
                    && id != NO_WQ
                {
                    if by_entry.len() <= e {
                        by_entry.resize(e + 1, NO_WQ);
                    }
                    by_entry[e] = id;
                }
            }
        }
        Queues {
            wqs,
            by_entry: by_entry.into_boxed_slice(),
        }
    }

    /// Reaps the callback slots of every ring on the WQ whose MSI-X entry is `entry`
    /// (nothing for other entries) that the entry can serve ([`Ring::msix`]). Interrupt
    /// safe.
    #[inline]
    pub fn reap_msix(&self, entry: u16) {
        let wq = self.by_entry.get(entry as usize).copied().unwrap_or(NO_WQ);
        if let Some(Some(r)) = self.wqs.get(wq as usize) {
            r.for_each(|ring| {
                if ring.msix {
                    ring.reap();
                }
            });
        }
    }

    pub fn registry(&self, wq: u8) -> Option<&Registry> {
        self.wqs.get(wq as usize).and_then(Option::as_ref)
    }

    /// Reaps the callback slots of every ring on `wq`. Interrupt safe.
    #[inline]
    pub fn reap_wq(&self, wq: u8) -> u32 {
        let mut n = 0;
        if let Some(r) = self.registry(wq) {
            r.for_each(|ring| n += ring.reap().0);
        }
        n
    }

    /// Every ring matching `filter`: reap, and with `fail` fail what the device did not
    /// write (only once it can no longer write: after an abort or a reset).
    pub fn sweep(&self, filter: impl Fn(&Ring) -> bool, fail: bool) -> u32 {
        let mut n = 0;
        for r in self.wqs.iter().flatten() {
            r.for_each(|ring| {
                if filter(ring) {
                    n += ring.reap_from(false).0;
                    if fail {
                        n += ring.fail_unwritten(|_| true);
                    }
                }
            });
        }
        n
    }

    /// Fails the operations of `wq` whose completion record is at `addr` (the device
    /// reported it cannot write that record).
    pub fn fail_record(&self, wq: u8, addr: u64) -> u32 {
        let mut n = 0;
        if let Some(r) = self.registry(wq) {
            r.for_each(|ring| {
                n += ring.fail_unwritten(|cr| cr <= addr && addr < cr + CR_SIZE as u64);
            });
        }
        n
    }

    /// Waits until no ring has a submission between its run-state check and its portal
    /// store (the caller changed the run state first). False if `keep_waiting` gave up.
    pub fn wait_submissions(&self, mut keep_waiting: impl FnMut() -> bool) -> bool {
        let mut ok = true;
        for r in self.wqs.iter().flatten() {
            r.for_each(|ring| {
                while ok && ring.in_submit.load(Ordering::SeqCst) {
                    ok = keep_waiting();
                }
            });
        }
        ok
    }
}

#[cfg(test)]
mod registry_tests {
    use super::Registry;
    use alloc::sync::Arc;
    use alloc::vec::Vec;

    fn ids(r: &Registry<u32>) -> Vec<u32> {
        let mut v = Vec::new();
        r.for_each(|x| v.push(*x));
        v
    }

    #[test]
    fn visits_every_live_entry_once_and_only_occupied_words() {
        let r: Registry<u32> = Registry::new(4352);
        let idx: Vec<usize> = (0..3000u32)
            .map(|n| r.insert(&Arc::new(n)).unwrap())
            .collect();
        assert_eq!(idx[2999], 2999, "lowest free entry first");
        assert_eq!(ids(&r), (0..3000).collect::<Vec<_>>());
        assert_eq!(r.scanned_words(), 47);
        for &i in &idx {
            if i % 1000 != 7 {
                r.remove(i, || true);
            }
        }
        assert_eq!(ids(&r), vec![7, 1007, 2007]);
        assert_eq!(
            r.scanned_words(),
            3,
            "stale summary bits cleaned by the walk"
        );
        r.remove(1007, || true);
        assert_eq!(ids(&r), vec![7, 2007]);
        assert_eq!(r.insert(&Arc::new(99)), Some(0));
        assert_eq!(ids(&r), vec![99, 7, 2007]);
    }

    #[test]
    fn full_registry_refuses() {
        let r: Registry<u32> = Registry::new(65);
        for n in 0..65 {
            assert!(r.insert(&Arc::new(n)).is_some());
        }
        assert_eq!(r.insert(&Arc::new(65)), None);
        r.remove(64, || true);
        assert_eq!(r.insert(&Arc::new(66)), Some(64));
    }

    #[test]
    fn removal_frees_the_entry_only_after_walks() {
        let r: Arc<Registry<u32>> = Arc::new(Registry::new(64));
        let a = Arc::new(5u32);
        let i = r.insert(&a).unwrap();
        assert_eq!(Arc::strong_count(&a), 2);
        // A walk in progress (simulated) keeps the entry alive; giving up leaks it.
        r.readers.fetch_add(1, core::sync::atomic::Ordering::SeqCst);
        let mut tries = 0;
        r.remove(i, || {
            tries += 1;
            tries < 3
        });
        assert_eq!(Arc::strong_count(&a), 2, "leaked, not freed under a walk");
        r.readers.fetch_sub(1, core::sync::atomic::Ordering::SeqCst);
        let j = r.insert(&a).unwrap();
        r.remove(j, || true);
        assert_eq!(Arc::strong_count(&a), 2, "the leaked reference stays");
    }
}
