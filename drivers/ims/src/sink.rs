//! Where a handle's completions come from. The interrupt carries only a vector, so the
//! demultiplexer finds completions in memory the device wrote; a sink is that memory plus the
//! callbacks it feeds (for DSA: a submitter's completion records, `dsa::Reaper`).

use alloc::sync::Arc;
use core::sync::atomic::AtomicU64;

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
}
