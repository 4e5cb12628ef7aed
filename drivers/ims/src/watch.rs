//! Completion watches: the demultiplexer's direct look at the memory a device writes.
//!
//! A sink whose completions are records with a status byte (zero until the device writes the
//! record; DSA completion records) can give the chip a [`CompletionWatch`]: one bit per
//! record saying "an operation that uses this record may still complete", plus the address
//! of every record's status byte. The shared-vector handler then tells, without calling
//! into the sink, whether an armed handle has anything to deliver: it reads the watched
//! bits and, for each set bit, one status byte. Only a handle with a non-zero status (or
//! with nothing left to wait for, so that it can be disarmed) takes the full path (the
//! sink's poll and the disarm protocol).
//!
//! # Protocol (what the sink must do)
//!
//! * **watch** record `i` after its status byte was zeroed and before the device can write
//!   it (before the submission's portal store): a completion whose interrupt the chip takes
//!   is then always visible as a watched, non-zero record;
//! * **unwatch** record `i` only as the party that claimed its completion for delivery (it
//!   delivers it), or when the submission was taken back before it reached the device.
//!
//! Then "no watched record has a non-zero status" means the sink has nothing to deliver,
//! and skipping its poll loses nothing, whatever the order in which a handle's operations
//! complete (every outstanding record is watched, not just the oldest or the newest).

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::any::Any;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering::Acquire, Ordering::SeqCst};

/// What a watch shows at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchState {
    /// No record is watched: nothing can complete until a submission is watched.
    Idle,
    /// Records are watched and every one's status is still zero.
    Waiting,
    /// A watched record has a non-zero status: there is a completion to deliver.
    Completed,
}

/// The watched records of one completion sink (see the module documentation).
///
/// `repr(C)`: what the check reads (`first`, the length of `rest`, `status`, `stride`) sits
/// in one cache line with the reference counts of its `Arc`.
#[repr(C)]
pub struct CompletionWatch {
    /// Bit `i` of `first` (records 0..64), bit `i % 64` of `rest[i / 64 - 1]` (the others):
    /// record `i` is watched. The first word is inline: for a sink of at most 64 records the
    /// check reads one word of this structure.
    first: AtomicU64,
    rest: Box<[AtomicU64]>,
    /// Status byte of record 0; record `i`'s is `i * stride` bytes further.
    status: NonNull<u8>,
    stride: usize,
    records: usize,
    /// Keeps the status bytes valid (see [`CompletionWatch::new`]).
    _memory: Arc<dyn Any + Send + Sync>,
}

// SAFETY: the only state behind the raw pointer is the status bytes, which `new`'s contract
// makes valid while `_memory` (itself Send + Sync) lives and which are only ever accessed
// atomically, from any thread.
unsafe impl Send for CompletionWatch {}
// SAFETY: as above: shared access to the status bytes is atomic loads only.
unsafe impl Sync for CompletionWatch {}

impl core::fmt::Debug for CompletionWatch {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CompletionWatch")
            .field("records", &self.records)
            .field("state", &self.state())
            .finish()
    }
}

/// The status byte of [`CompletionWatch::always`]: never zero.
static ALWAYS_WRITTEN: AtomicU8 = AtomicU8::new(1);

impl CompletionWatch {
    /// A watch over `records` status bytes, the first at `status0`, one every `stride` bytes.
    /// Nothing is watched yet.
    ///
    /// # Safety
    ///
    /// For every `i < records`, the byte at `status0 + i * stride` must stay valid for reads
    /// for as long as `memory` is alive (the watch keeps it alive), and the program must
    /// write it only with atomic stores (the device writes it by DMA), so that the watch's
    /// atomic loads never race with a non-atomic write.
    pub unsafe fn new(
        memory: Arc<dyn Any + Send + Sync>,
        status0: NonNull<u8>,
        stride: usize,
        records: usize,
    ) -> CompletionWatch {
        let extra = records.div_ceil(64).saturating_sub(1);
        let mut rest = Vec::with_capacity(extra);
        rest.resize_with(extra, || AtomicU64::new(0));
        CompletionWatch {
            first: AtomicU64::new(0),
            rest: rest.into_boxed_slice(),
            status: status0,
            stride,
            records,
            _memory: memory,
        }
    }

    /// A watch that always shows [`WatchState::Completed`]: what the chip uses for a sink
    /// without a watch of its own, which it therefore polls on every pass while armed.
    pub fn always() -> CompletionWatch {
        let status0 = NonNull::from(&ALWAYS_WRITTEN).cast::<u8>();
        // SAFETY: one record, whose status byte is a static (valid forever) that is only
        // accessed atomically and never written.
        let w = unsafe { CompletionWatch::new(Arc::new(()), status0, 1, 1) };
        w.watch(0);
        w
    }

    /// Number of records.
    pub fn records(&self) -> usize {
        self.records
    }

    /// The word holding `record`'s bit (None: out of range).
    #[inline(always)]
    fn word(&self, record: usize) -> Option<&AtomicU64> {
        if record >= self.records {
            None
        } else if record < 64 {
            Some(&self.first)
        } else {
            self.rest.get(record / 64 - 1)
        }
    }

    /// Starts watching `record` (out of range: ignored). Call after its status byte was
    /// zeroed and before the device can write it.
    #[inline]
    pub fn watch(&self, record: usize) {
        if let Some(w) = self.word(record) {
            w.fetch_or(1 << (record % 64), SeqCst);
        }
    }

    /// Stops watching `record`: its completion was claimed by the caller, or its submission
    /// never reached the device.
    #[inline]
    pub fn unwatch(&self, record: usize) {
        if let Some(w) = self.word(record) {
            w.fetch_and(!(1 << (record % 64)), SeqCst);
        }
    }

    /// Whether `record` is watched now.
    pub fn is_watched(&self, record: usize) -> bool {
        self.word(record)
            .is_some_and(|w| w.load(SeqCst) & (1 << (record % 64)) != 0)
    }

    /// Acquire load of `record`'s status byte (`record < self.records`).
    #[inline(always)]
    fn status(&self, record: usize) -> u8 {
        debug_assert!(record < self.records);
        // SAFETY: `record < records` (the live bits only cover valid records), so the byte is
        // inside the range `new`'s contract keeps valid while `_memory` lives, and the
        // program writes it only atomically (same contract); u8 has alignment 1.
        let b = unsafe { AtomicU8::from_ptr(self.status.as_ptr().add(record * self.stride)) };
        b.load(Acquire)
    }

    /// One look: the demultiplexer's check, one word per 64 records plus one status byte
    /// per watched record, stopping at the first completed one.
    #[inline(always)]
    pub fn state(&self) -> WatchState {
        if !self.rest.is_empty() {
            return self.state_of_words();
        }
        // The common case, a sink of at most 64 records: one word.
        let bits = self.first.load(SeqCst);
        if bits == 0 {
            WatchState::Idle
        } else if self.any_completed(bits, 0) {
            WatchState::Completed
        } else {
            WatchState::Waiting
        }
    }

    fn state_of_words(&self) -> WatchState {
        let mut waiting = false;
        for (w, word) in self.rest.iter().enumerate() {
            let bits = word.load(SeqCst);
            if bits != 0 {
                if self.any_completed(bits, (w + 1) * 64) {
                    return WatchState::Completed;
                }
                waiting = true;
            }
        }
        // The first word last: a record watched there meanwhile was also checked.
        match self.first.load(SeqCst) {
            0 if !waiting => WatchState::Idle,
            0 => WatchState::Waiting,
            bits if self.any_completed(bits, 0) => WatchState::Completed,
            _ => WatchState::Waiting,
        }
    }

    /// Whether a record of `bits` (records `first`, `first + 1`, …) has a non-zero status.
    #[inline(always)]
    fn any_completed(&self, mut bits: u64, first: usize) -> bool {
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if self.status(first + b) != 0 {
                return true;
            }
        }
        false
    }

    /// Calls `f` with every record watched when its word is read (the sink's reap visits
    /// only these instead of all its records).
    #[inline(always)]
    pub fn for_each_watched(&self, mut f: impl FnMut(usize)) {
        let mut each = |mut bits: u64, first: usize| {
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                f(first + b);
            }
        };
        each(self.first.load(SeqCst), 0);
        for (w, word) in self.rest.iter().enumerate() {
            each(word.load(SeqCst), (w + 1) * 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of `stride` bytes in plain memory the test writes atomically.
    fn records(n: usize, stride: usize) -> (Arc<Vec<AtomicU8>>, CompletionWatch) {
        let mem: Arc<Vec<AtomicU8>> = Arc::new((0..n * stride).map(|_| AtomicU8::new(0)).collect());
        let p = NonNull::new(mem.as_ptr() as *mut u8).unwrap();
        // SAFETY: the bytes live in `mem`, which the watch keeps alive, and are only accessed
        // through AtomicU8.
        let w = unsafe { CompletionWatch::new(mem.clone(), p, stride, n) };
        (mem, w)
    }

    #[test]
    fn idle_waiting_completed() {
        let (mem, w) = records(130, 32);
        assert_eq!(w.state(), WatchState::Idle);
        w.watch(129);
        w.watch(3);
        assert_eq!(w.state(), WatchState::Waiting);
        // A record that is not watched does not count, even when written.
        mem[5 * 32].store(1, SeqCst);
        assert_eq!(w.state(), WatchState::Waiting);
        // Out of order: the last-submitted record completes first.
        mem[129 * 32].store(1, SeqCst);
        assert_eq!(w.state(), WatchState::Completed);
        w.unwatch(129);
        assert_eq!(w.state(), WatchState::Waiting);
        mem[3 * 32].store(1, SeqCst);
        assert_eq!(w.state(), WatchState::Completed);
        w.unwatch(3);
        assert_eq!(w.state(), WatchState::Idle);
        let mut seen = Vec::new();
        w.watch(64);
        w.watch(0);
        w.watch(500); // out of range: ignored
        w.for_each_watched(|i| seen.push(i));
        assert_eq!(seen, vec![0, 64]);
        assert!(w.is_watched(64) && !w.is_watched(3) && !w.is_watched(500));
    }

    #[test]
    fn small_sinks_use_the_inline_word() {
        let (mem, w) = records(64, 1);
        assert!(w.rest.is_empty());
        w.watch(63);
        assert_eq!(w.state(), WatchState::Waiting);
        mem[63].store(0x19, SeqCst);
        assert_eq!(w.state(), WatchState::Completed);
        w.unwatch(63);
        assert_eq!(w.state(), WatchState::Idle);
    }

    #[test]
    fn always_shows_completed() {
        let w = CompletionWatch::always();
        assert_eq!(w.state(), WatchState::Completed);
        assert_eq!(w.state(), WatchState::Completed);
    }
}
