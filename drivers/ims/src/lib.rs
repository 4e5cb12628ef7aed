//! Generic IMS irqchip: one vector per CPU (posted interrupts naming the handle, or a shared
//! vector demultiplexed in software), per-PASID quotas.
//!
//! # The problem
//!
//! An IMS (Interrupt Message Store) device such as DSA has thousands of interrupt entries,
//! one per client and CPU. If every entry took its own IDT vector, unprivileged clients could
//! exhaust the ~200 allocatable vectors of a CPU (192 in this kernel: 0x30–0xef). Here every
//! handle that targets a CPU shares **one** vector on that CPU, the handler finds the
//! handles with completions in software, handles are bound to their owner's PASID (the
//! device refuses descriptors of other PASIDs that name them), and a per-PASID quota plus the
//! table size bound what one client can take.
//!
//! # Layers
//!
//! 1. [`ImsStorage`] — the device-specific part, kept small: table size, program an entry
//!    (message + PASID binding, masked), change its message, mask/unmask, read pending,
//!    unbind, quiesce (no accepted work still names the entry), clear. DSA:
//!    `dsa::ims::DsaImsStorage`.
//! 2. [`ImsPlatform`] — what the kernel provides: vectors with owner names, handler
//!    installation, message routes (an IRTE per handle with interrupt remapping, the
//!    compatibility format without), running a closure on a CPU with interrupts disabled,
//!    a clock for bounded waits and an optional cycle counter.
//! 3. The chip: one [`ImsDomain`] per machine (the per-CPU vectors and handle sets; two
//!    devices still mean one vector per CPU) and one [`ImsChip`] per device registered with
//!    it. [`ImsChip::allocate`] returns an [`ImsHandle`]; its [`Armer`] is what submitters
//!    use; a [`CompletionSink`] (DSA: `dsa::Reaper`) is where completions come from, and
//!    its [`CompletionWatch`] what the handler checks before calling it.
//!
//! # Vectors and routes
//!
//! In [`VectorMode::Shared`] the domain allocates one vector per CPU when it is created (all
//! or nothing) and never again, so vectors used = CPUs at every handle count, and no handle
//! allocation — successful or refused — touches the vector allocator. Each handle gets its
//! own route: with interrupt remapping an IRTE delivering (shared vector, CPU) with the
//! device's source ID; the device entry holds the remappable message naming that IRTE and
//! never changes while the handle lives (retargeting rewrites the IRTE). Without remapping
//! the entry holds a compatibility-format message and retargeting rewrites it (masked).
//!
//! [`VectorMode::Posted`] keeps the one vector per CPU and lets the IOMMU name the handle
//! (VT-d posted interrupts; see [`posted`]): each CPU has posted-interrupt descriptors
//! (PIDs) of 256 handle slots, allocated on demand, whose notification vector is the CPU's
//! vector; a handle's route is a posted-format IRTE (same source-ID check) that sets its
//! (PID, bit); the handler clears each PID's ON, takes its PIR words with `xchg` and calls
//! exactly the named handles — no armed set, no scan, and arming is unnecessary. It is the
//! kernel's default when every remapping unit reports CAP.PI ([`ImsPlatform::posted_interrupts`]).
//!
//! [`VectorMode::PerHandle`] is the comparison mode of the Linux IMS series: one vector per
//! handle on its target CPU, vector → handle directly, same API. It runs out exactly where
//! the vector allocator does and reports [`ImsError::VectorsExhausted`] cleanly. Both modes
//! can run side by side on one device: [`ImsChip::carve`] lends free entries of a chip's
//! table as a [`CarvedStorage`] to register with another domain (the owner names of their
//! vectors, [`OWNER_SHARED`] and [`OWNER_PER_HANDLE`], keep them apart in vector reports).
//!
//! # Demultiplexing (shared mode)
//!
//! The interrupt carries only the vector, so what completed must be read from memory the
//! device wrote (completion records). Each CPU has an **armed set**: a two-level atomic
//! bitmap over its handle slots (one bit per slot, one summary bit per 64 slots). Each
//! handle has its sink's [`CompletionWatch`]: one bit per record of the sink whose
//! operation may still complete, and where each record's status byte is (see [`watch`]).
//!
//! * **Arming** ([`Armer::arm`], any CPU, lock-free): raise the handle's `arming` count,
//!   check it is not being released, read its location (CPU, slot), set the slot bit then
//!   the summary bit. This happens **before** the descriptor is submitted and the guard
//!   lives until the submit call returned. Within the call the sink watches the record
//!   (after zeroing its status, before the portal store), so by the time the device can
//!   write it the handle is armed and the record watched: no lost wakeup.
//! * **Handler** (the CPU's shared vector, interrupts off): scan the summary words, then
//!   the non-zero slot words; for each armed slot, first the **watch check**, reading only
//!   memory: the watch's bit word and, per watched record, its status byte. A handle whose
//!   watched records all still read zero — or with none watched but a submission in
//!   progress (`arming > 0`), which will watch its record before the device can write it —
//!   is left armed without touching its sink: its completion comes with an interrupt of its
//!   own. The others take the **full path**: skip handles that are masked or being
//!   released, otherwise `sink.poll()` (counts each completed operation into the handle's
//!   `delivered`, then runs its callback, once) and,
//!   if the handle is no longer busy (`arming == 0` and nothing outstanding), clear its bit
//!   and check once more (an arming racing with the clear re-sets it). A handle with
//!   nothing completed gets no callback; several completions coalesced into one interrupt,
//!   in any order within a handle (every outstanding record is watched, not one), are all
//!   delivered by the one poll.
//!
//! **Sinks that deliver directly** ([`CompletionSink::delivers_directly`], DSA's submission
//! rings) replace the watch check and the poll with one call per armed handle,
//! [`CompletionSink::deliver`]: the sink looks at its own records (the chip reads none of
//! the device's memory), delivers what completed and, when nothing is outstanding, names a
//! word (its submission counter) that stays unchanged while it is idle. The handler then
//! disarms the handle and re-reads that word: a submission racing with the disarm changed
//! it before arming ([`Armer::arm_published`], which such a submitter calls after making
//! its record visible to the sink and before the portal store), so the handle is armed
//! again. The per-handle delivery is one function, separate from the armed-set scan, so a
//! notification that names the handles (posted interrupts) can call it directly.
//!
//! The skip is safe because a record is watched from before the device can write it until
//! the party that claims its completion (and delivers it) unwatches it: an interrupt's pass
//! always finds its completion either as a watched record with a non-zero status or
//! already claimed. A sink without a watch gets [`CompletionWatch::always`] and is polled
//! on every pass while armed.
//!
//! Cost model per interrupt: `S` summary words (1 per 4096 slots of capacity) + `W`
//! non-zero slot words + `A` armed handles × one watch check (one word of the watch, one
//! status byte per watched record, or the `arming` count) + one poll per handle with a
//! completion, + the callbacks of the `C` completions delivered. The `A` term is inherent
//! to a shared vector (the hardware names no handle); it is kept to a few loads per armed
//! handle, and allocated but idle handles cost nothing. Completions of different handles
//! coalesce, so the cost per delivered completion falls as load rises.
//! [`ImsDomain::stats`] exposes interrupts, polls, empty polls, completions, words scanned
//! and platform cycles so that the kernel benchmark measures cycles (instructions under
//! `-icount`) per delivered completion at 1, 16, 256 and 2048 armed handles.
//! Posted mode ([`posted`]) makes the cost proportional to `C` (plus one control-word load
//! per descriptor of the CPU): the IOMMU names the handles.
//!
//! # Concurrency
//!
//! No global lock on the hot path. A CPU's handle table is touched only with interrupts
//! disabled on that CPU — by its handler, or by a control-plane closure sent there with
//! [`ImsPlatform::run_on`] — so its lock (kept for safe `&mut` access) is never contended in
//! the kernel. Arming is atomics only. Control operations on one handle are serialized by
//! ownership (`&mut ImsHandle`). A sink must tolerate concurrent polls (a retarget briefly
//! lets two CPUs see a handle); it delivers each completion exactly once.
//!
//! The one party that writes a live handle's device entry without owning the handle is
//! [`ImsChip::restore`] (halt recovery, after a device reset cleared the table). Every entry
//! write of a live handle — mask, unmask, retarget's message and route, release's mask, and
//! restore's reprogramming — is made under the handle's `ctl` lock together with the state it
//! follows (mask flag, route, DEAD), so restore programs either the state before an
//! operation or the state after it, never a mix; an allocation that overlapped a restore
//! pass (which may have read the live list before the handle was in it) programs its entry
//! again. Restore waits for a `ctl` lock at most the domain's call timeout and reports the
//! entries it skipped.
//!
//! Callbacks run in interrupt context (or inside a cross-CPU call) with the CPU's table held:
//! they may arm and submit, but must not call control operations (allocate, mask, unmask,
//! retarget, release) — those are for thread context with interrupts enabled.
//!
//! # Handle operations
//!
//! * **mask/unmask**: masking sets the entry's mask (a completion's message stays pending in
//!   the entry) and a flag the handler honours; after [`ImsHandle::mask`] returns no
//!   callback runs. Unmask lets the entry send its pending message and re-polls the handle
//!   on its CPU, which also covers completions whose interrupt arrived while masked.
//! * **retarget**: join the new CPU's set and move the location (arming goes there), rewrite
//!   the route (posted mode: to a (PID, bit) of the new CPU, one atomic 128-bit IRTE update
//!   and an IEC invalidation), leave the old CPU's set on the old CPU (posted mode: clearing
//!   the old bit), re-poll on the new CPU. A completion
//!   whose interrupt went to the old CPU wrote its record before the route moved, so the
//!   re-poll sees it; the sink's exactly-once delivery makes the overlap harmless.
//! * **release**: refuse arming, mask, let in-progress submissions finish, quiesce the device
//!   (DSA: Drain PASID) so the owner's accepted work completes normally, unbind the entry (no
//!   PASID: any later descriptor naming it is refused and raises nothing), quiesce again (work
//!   validated just before the unbind), deliver what completed one last time on the handle's CPU,
//!   leave the CPU, clear the entry (discarding a pending message), free the route, return
//!   the entry and the quota. If quiescing fails the entry is retired, never reused.
//!
//! # Policy
//!
//! [`OwnerId`] carries the client's own PASID; there is no way to allocate a handle bound
//! to another PASID. Each PASID may hold [`ChipOptions::pasid_quota`] handles per device
//! (overridable per PASID); the table size bounds the rest. Refusals are
//! [`ImsError::QuotaExceeded`] / [`ImsError::TableFull`], returned before any vector, route
//! or entry is touched; other PASIDs are unaffected.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

mod armed;
pub mod chip;
pub mod domain;
pub mod error;
pub mod handle;
pub mod platform;
pub mod posted;
pub mod sink;
pub mod storage;
pub mod watch;

pub use chip::{CarvedStorage, ChipOptions, ImsChip, OwnerId, PASID_LIMIT, WeakChip};
pub use domain::{
    CpuReport, DemuxStats, DomainConfig, ImsDomain, OWNER_PER_HANDLE, OWNER_POSTED, OWNER_SHARED,
    VectorHandler, VectorMode,
};
pub use error::{Cause, ImsError};
pub use handle::{ArmGuard, Armer, ImsHandle};
pub use platform::{ImsPlatform, MsiMessage, PlatformError, Route};
pub use posted::PidRef;
pub use sink::{CompletionSink, Delivery, RawPoll};
pub use storage::{ImsStorage, StorageError};
pub use watch::{CompletionWatch, WatchState};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_and_chips_cross_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<ImsDomain>();
        send_sync::<ImsChip>();
        send_sync::<ImsHandle>();
        send_sync::<Armer>();
        send_sync::<VectorHandler>();
        send_sync::<CarvedStorage>();
        send_sync::<WeakChip>();
    }

    #[test]
    fn lower_layer_errors_stay_typed_in_the_source_chain() {
        use core::error::Error;
        #[derive(Debug, PartialEq)]
        struct DrainFailed(u32);
        impl core::fmt::Display for DrainFailed {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "drain of PASID {} timed out", self.0)
            }
        }
        impl Error for DrainFailed {}
        let e = ImsError::Storage(StorageError::Device {
            what: "Drain PASID",
            cause: Cause::new(DrainFailed(7)),
        });
        assert_eq!(
            e.to_string(),
            "Drain PASID failed: drain of PASID 7 timed out"
        );
        let storage = e.source().expect("the storage error");
        let device = storage.source().expect("the device driver's error");
        assert_eq!(device.downcast_ref::<DrainFailed>(), Some(&DrainFailed(7)));
        let p = ImsError::Platform(PlatformError::Kernel {
            what: "cross-CPU call",
            cause: Cause::new(DrainFailed(1)),
        });
        assert!(p.source().and_then(Error::source).is_some());
    }

    #[test]
    fn client_pasid_is_20_bits() {
        assert!(OwnerId::new(1, PASID_LIMIT - 1).is_ok());
        assert_eq!(
            OwnerId::new(1, PASID_LIMIT),
            Err(ImsError::BadPasid { pasid: PASID_LIMIT })
        );
    }
}
