//! Where a handle's completions come from. The interrupt carries only a vector, so the
//! demultiplexer finds completions in memory the device wrote; a sink is that memory plus the
//! callbacks it feeds (for DSA: a submitter's completion records, `dsa::Reaper`).

/// A handle's completion source.
///
/// # Contract
///
/// * [`poll`](CompletionSink::poll) runs the callback of every completion the device has
///   written and nobody has delivered yet, **each exactly once** even when several CPUs poll
///   concurrently (a retarget briefly lets two CPUs see the handle) or the owner also polls
///   from thread context. It runs in interrupt context: it must not block or allocate
///   unboundedly, and it must be cheap when nothing completed (the demultiplexer polls every
///   armed handle on an interrupt).
/// * [`outstanding`](CompletionSink::outstanding) is true from the moment a submission is
///   counted (before its portal store) until its completion has been delivered.
pub trait CompletionSink: Send + Sync {
    /// Delivers what completed; returns how many completions were delivered.
    fn poll(&self) -> u32;
    /// True while submitted work has not been delivered.
    fn outstanding(&self) -> bool;
}
