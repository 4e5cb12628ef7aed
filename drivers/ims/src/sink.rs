//! Where a handle's completions come from. The interrupt carries only a vector, so the
//! demultiplexer finds completions in memory the device wrote; a sink is that memory plus the
//! callbacks it feeds (for DSA: a submitter's completion records, `dsa::Reaper`).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::watch::CompletionWatch;

/// A handle's completion source.
///
/// # Contract
///
/// * [`poll`](CompletionSink::poll) runs the callback of every completion the device has
///   written and nobody has delivered yet, **each exactly once** even when several CPUs poll
///   concurrently (a retarget briefly lets two CPUs see the handle) or the owner also polls
///   from thread context. It runs in interrupt context: it must not block or allocate
///   unboundedly, and it should be cheap when nothing completed (without a watch, the
///   demultiplexer polls every armed handle on every interrupt).
/// * `poll` adds one to its `delivered` argument (the handle's
///   [`delivered`](crate::ImsHandle::delivered) count) for each completion **before** that
///   completion's callback runs, so a callback — and whoever it signals — never sees a count
///   that lacks its own completion.
/// * [`outstanding`](CompletionSink::outstanding) is true from the moment a submission is
///   counted (before its portal store) until its completion has been delivered.
/// * [`watch`](CompletionSink::watch), if the sink gives one, follows the
///   [watch protocol](crate::watch): every operation that can raise the handle's interrupt
///   is watched before the device can write its record and until its completion is claimed.
///   The shared-vector handler then skips the poll of an armed handle whose watch shows no
///   completion. Each call returns the same watch.
pub trait CompletionSink: Send + Sync {
    /// Delivers what completed, counting each completion into `delivered` before its
    /// callback runs; returns how many completions were delivered.
    fn poll(&self, delivered: &AtomicU64) -> u32;
    /// True while submitted work has not been delivered.
    fn outstanding(&self) -> bool;
    /// The sink's completion watch (None: the demultiplexer polls the sink on every pass
    /// while its handle is armed).
    fn watch(&self) -> Option<Arc<CompletionWatch>> {
        None
    }
    /// True for a sink that checks its own completions cheaply: the demultiplexer then
    /// makes exactly one call per armed handle, [`deliver`](CompletionSink::deliver), and
    /// never reads the sink's memory itself (no watch). Must not change over the sink's life.
    fn delivers_directly(&self) -> bool {
        false
    }
    /// One look and delivery (sinks with [`delivers_directly`](CompletionSink::delivers_directly)):
    /// delivers what completed, exactly once and counted into `delivered` before each
    /// callback, like [`poll`](CompletionSink::poll), and says whether anything is still
    /// outstanding. Interrupt context; must be cheap when nothing completed.
    fn deliver(&self, delivered: &AtomicU64) -> Delivery<'_> {
        let delivered = self.poll(delivered);
        Delivery {
            delivered,
            idle: None,
        }
    }
    /// For sinks that deliver directly: the word their [`Delivery::idle`] names (always the
    /// same one, at a fixed address for the sink's whole life). The demultiplexer keeps the
    /// last idle value and skips the call for a handle that is armed only by an arming guard
    /// while the word still reads it: nothing was submitted since the sink was idle.
    fn idle_word(&self) -> Option<&AtomicU32> {
        None
    }
    /// True while a submission of this sink is between its checks and its portal store
    /// (submissions that arm with [`Armer::arm_published`](crate::Armer::arm_published));
    /// release waits for it after refusing new ones.
    fn submitting(&self) -> bool {
        false
    }
    /// [`poll`](CompletionSink::poll) as a plain function and its argument, for the
    /// interrupt path (no dynamic call, no `Arc<dyn>` data offset): `(f)(arg, delivered)`
    /// must do exactly what `poll(delivered)` does, and `arg` must stay valid while the sink
    /// lives. Asked once, when a handle is created.
    fn raw_poll(&self) -> Option<RawPoll> {
        None
    }
}

/// A sink's [`poll`](CompletionSink::poll) as a function pointer and argument
/// ([`CompletionSink::raw_poll`]).
#[derive(Clone, Copy, Debug)]
pub struct RawPoll {
    /// Called as `f(arg, delivered)`: the sink's `poll(delivered)`.
    pub f: unsafe fn(*const (), &AtomicU64) -> u32,
    /// The sink's data, passed back to `f` unchanged; valid while the sink lives.
    pub arg: *const (),
}

// SAFETY: `arg` points at data the sink (Send + Sync) owns and keeps alive; `f` only reads it
// the way the sink's own `poll` (callable from any thread) does.
unsafe impl Send for RawPoll {}
// SAFETY: as above.
unsafe impl Sync for RawPoll {}

/// What one [`CompletionSink::deliver`] call did.
#[derive(Clone, Copy, Debug)]
pub struct Delivery<'a> {
    /// Completions delivered by the call.
    pub delivered: u32,
    /// Nothing outstanding: `Some((word, value))`, and the sink stays idle while `word` still
    /// reads `value` (a submission changes it before arming). The demultiplexer disarms the
    /// handle, then re-reads the word: a submission racing with the disarm is seen either
    /// there or by its own arming.
    pub idle: Option<(&'a AtomicU32, u32)>,
}
