//! The system-wide part: per-CPU vectors, per-CPU handle sets, the interrupt handler that
//! demultiplexes, cross-CPU calls, counters and the vector report.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, Ordering::SeqCst};

use crate::armed::ArmedSet;
use crate::chip::{ChipInner, ChipOptions, ImsChip};
use crate::error::ImsError;
use crate::handle::HandleInner;
use crate::platform::ImsPlatform;
use crate::posted::{CpuPids, PidRef, TablePid, slot_pid, slot_word};
use crate::storage::ImsStorage;

/// Owner name of the one shared vector per CPU (vector reports count by this prefix).
pub const OWNER_SHARED: &str = "ims-shared";
/// Owner name of a per-handle vector (comparison mode).
pub const OWNER_PER_HANDLE: &str = "ims-handle";
/// Owner name of the one vector per CPU of a posted-mode domain (its descriptors' NV).
pub const OWNER_POSTED: &str = "ims-posted";

/// How handles get their interrupt vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorMode {
    /// One vector per CPU, allocated when the domain is created and shared by every handle
    /// that targets the CPU; the handler demultiplexes through the CPU's armed set.
    Shared,
    /// One vector per handle on its target CPU (the Linux IMS series' model), for comparison:
    /// vector → handle directly, and the vector allocator is the limit.
    PerHandle,
    /// One vector per CPU as in `Shared`, but each handle's route posts (VT-d posted
    /// interrupts): it sets the handle's bit in one of the CPU's posted-interrupt descriptors
    /// (256 handles each, allocated on demand) whose notification is the CPU's vector, and
    /// the handler delivers to exactly the handles whose bits it takes ([`crate::posted`]).
    /// Needs [`ImsPlatform::posted_interrupts`].
    Posted,
}

impl VectorMode {
    /// One vector per CPU for every handle (`Shared`, `Posted`).
    pub fn one_vector_per_cpu(self) -> bool {
        matches!(self, VectorMode::Shared | VectorMode::Posted)
    }
    /// The owner name of the mode's vectors.
    pub fn owner(self) -> &'static str {
        match self {
            VectorMode::Shared => OWNER_SHARED,
            VectorMode::PerHandle => OWNER_PER_HANDLE,
            VectorMode::Posted => OWNER_POSTED,
        }
    }
}

/// Domain policy.
#[derive(Clone, Copy, Debug)]
pub struct DomainConfig {
    /// How handles' interrupts reach their CPU (shared vector, one vector per handle, or
    /// posted); fixed for the domain's life.
    pub mode: VectorMode,
    /// Handles one CPU can serve at once (sizes the armed bitmap: 8192 → 1 KiB per CPU).
    pub max_handles_per_cpu: u32,
    /// Bound on each cross-CPU call and on waiting for in-progress submissions at release.
    pub call_timeout_ns: u64,
}

impl Default for DomainConfig {
    fn default() -> Self {
        DomainConfig {
            mode: VectorMode::Shared,
            max_handles_per_cpu: 8192,
            call_timeout_ns: 5_000_000_000,
        }
    }
}

/// Largest supported per-CPU capacity (slot numbers must fit the location word).
const MAX_CAPACITY: u32 = 1 << 24;

/// Demultiplexing counters of one CPU (all interrupts taken on its IMS vector(s)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DemuxStats {
    /// Handler runs.
    pub interrupts: u64,
    /// Handler runs that delivered nothing (coalesced or stale interrupts).
    pub spurious: u64,
    /// Handles polled: armed handles whose watch showed a completion (or nothing left to
    /// wait for), each with one call of its sink. The other armed handles cost only the
    /// watch check.
    pub polls: u64,
    /// Polls that found nothing.
    pub empty_polls: u64,
    /// Completions delivered by the handler.
    pub completions: u64,
    /// Bitmap words the scans read (summary + slot words; posted mode: PIR words read).
    pub words_scanned: u64,
    /// Posted mode: descriptors looked at (one control-word load each).
    pub pids_scanned: u64,
    /// Sum of [`ImsPlatform::cycles`] deltas over handler runs.
    pub cycles: u64,
}

impl DemuxStats {
    /// Cycles (instructions under `-icount`) per delivered completion, if any.
    pub fn cycles_per_completion(&self) -> Option<u64> {
        (self.completions > 0).then(|| self.cycles / self.completions)
    }
}

/// One CPU's counters. Written only by that CPU's demultiplexing passes, which never overlap
/// (the `ImsPlatform` contract), so plain relaxed load + store pairs (no locked instruction) are exact;
/// readers on other CPUs see each counter's latest value.
#[derive(Default)]
struct Counters {
    interrupts: AtomicU64,
    spurious: AtomicU64,
    polls: AtomicU64,
    empty_polls: AtomicU64,
    completions: AtomicU64,
    words_scanned: AtomicU64,
    pids_scanned: AtomicU64,
    cycles: AtomicU64,
}

#[inline(always)]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Counters {
    fn snapshot(&self) -> DemuxStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        DemuxStats {
            interrupts: l(&self.interrupts),
            spurious: l(&self.spurious),
            polls: l(&self.polls),
            empty_polls: l(&self.empty_polls),
            completions: l(&self.completions),
            words_scanned: l(&self.words_scanned),
            pids_scanned: l(&self.pids_scanned),
            cycles: l(&self.cycles),
        }
    }
    fn reset(&self) {
        for a in [
            &self.interrupts,
            &self.spurious,
            &self.polls,
            &self.empty_polls,
            &self.completions,
            &self.words_scanned,
            &self.pids_scanned,
            &self.cycles,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
    /// Call from the CPU's demultiplexing pass (single writer).
    #[inline(always)]
    fn add(&self, d: &Demux, spent: u64) {
        bump(&self.interrupts, 1);
        bump(&self.spurious, u64::from(d.delivered == 0));
        bump(&self.polls, u64::from(d.polled));
        bump(&self.empty_polls, u64::from(d.empty_polls));
        bump(&self.completions, u64::from(d.delivered));
        bump(&self.words_scanned, u64::from(d.words_scanned));
        bump(&self.pids_scanned, u64::from(d.pids_scanned));
        bump(&self.cycles, spent);
    }
}

/// What one handler run did, added to the CPU's counters at its end ([`DemuxStats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Demux {
    /// Handles whose sink was called and had something to say ([`DemuxStats::polls`]).
    pub polled: u32,
    /// Sink calls that found nothing ([`DemuxStats::empty_polls`]).
    pub empty_polls: u32,
    /// Completions delivered ([`DemuxStats::completions`]).
    pub delivered: u32,
    /// Bitmap words read: summary + slot words, or PIR words in posted mode
    /// ([`DemuxStats::words_scanned`]).
    pub words_scanned: u32,
    /// Posted mode: posted-interrupt descriptors looked at ([`DemuxStats::pids_scanned`]).
    pub pids_scanned: u32,
}

/// The handles of one CPU, indexed by slot. Touched only with interrupts disabled on the
/// owning CPU (its handler, or a control-plane closure sent there with `run_on`), which
/// never overlap (the `ImsPlatform` contract): closures take the lock for safe `&mut`
/// access, the handler reads the table without it (`DomainInner::with_table`).
pub(crate) struct CpuTable {
    pub slots: Vec<Option<Arc<HandleInner>>>,
    free: Vec<u32>,
    pub live: u32,
    /// Posted mode: the CPU's descriptors as the handler walks them (a plain copy of
    /// `CpuState::pids`, extended on the CPU before a route posts to a new descriptor),
    /// each with the PIR words that serve slots in use.
    pub pids: Vec<TablePid>,
    /// Slots in use per PIR word, per descriptor index (grown by `insert`; at most 64 per
    /// word).
    word_live: Vec<[u8; 4]>,
}

impl CpuTable {
    fn insert(&mut self, h: Arc<HandleInner>, capacity: u32) -> Option<u32> {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let s = self.slots.len() as u32;
                if s >= capacity {
                    return None;
                }
                self.slots.push(None);
                s
            }
        };
        self.slots[slot as usize] = Some(h);
        self.live += 1;
        self.word_use(slot, true);
        Some(slot)
    }

    /// Counts `slot` in (or out of) its PIR word and keeps the descriptor's word mask,
    /// which the posted handler reads, in step.
    fn word_use(&mut self, slot: u32, used: bool) {
        let (i, _) = slot_pid(slot);
        let q = slot_word(slot);
        if self.word_live.len() <= i {
            self.word_live.resize(i + 1, [0; 4]);
        }
        let n = &mut self.word_live[i][q];
        *n = if used { *n + 1 } else { n.saturating_sub(1) };
        let live = *n != 0;
        if let Some(p) = self.pids.get_mut(i) {
            p.set_words((p.words() & !(1 << q)) | u8::from(live) << q);
        }
    }

    /// The word mask of descriptor `i` (from the live counts).
    fn words_of(&self, i: usize) -> u8 {
        self.word_live.get(i).map_or(0, |w| {
            w.iter()
                .enumerate()
                .fold(0, |m, (q, &n)| m | u8::from(n != 0) << q)
        })
    }

    /// Removes `h` from `slot` if it is still there.
    pub fn remove(&mut self, slot: u32, h: &Arc<HandleInner>) -> bool {
        match self.slots.get_mut(slot as usize) {
            Some(s) if s.as_ref().is_some_and(|x| Arc::ptr_eq(x, h)) => {
                *s = None;
                self.free.push(slot);
                self.live -= 1;
                self.word_use(slot, false);
                true
            }
            _ => false,
        }
    }
}

/// Cache-line aligned: each CPU's handler writes its own counters and lock word only.
#[repr(align(64))]
pub(crate) struct CpuState {
    /// The CPU's one vector (Shared and Posted modes).
    pub vector: Option<u8>,
    pub armed: ArmedSet,
    /// Posted mode: the CPU's descriptors (slot s ↔ descriptor s / 256, bit s % 256).
    pub pids: CpuPids,
    /// Descriptors copied into the table's handler list.
    pub pids_in_table: AtomicU32,
    pub table: spin::mutex::SpinMutex<CpuTable>,
    /// Vectors the domain holds on this CPU.
    pub vectors: AtomicU32,
    /// Handles targeting this CPU.
    pub handles: AtomicU32,
    counters: Counters,
}

impl CpuState {
    /// A slot left the CPU (on the CPU): its armed bit, or in posted mode its descriptor
    /// bit, is cleared so that the slot's next owner starts clean.
    pub fn clear_slot(&self, slot: u32) {
        self.armed.clear(slot);
        let (i, bit) = slot_pid(slot);
        if let Some(pid) = self.pids.get(i) {
            pid.clear_bit(bit);
        }
    }
}

pub(crate) struct DomainInner {
    pub platform: Arc<dyn ImsPlatform>,
    /// [`ImsPlatform::cycles_are_tsc`], read once: the handler reads the TSC inline.
    tsc: bool,
    pub config: DomainConfig,
    pub cpus: Box<[CpuState]>,
    pub next_chip: AtomicU64,
}

/// The platform's clock as the bounded wait's (`hwio::wait_until`).
struct PlatformClock<'a>(&'a dyn ImsPlatform);

impl hwio::Clock for PlatformClock<'_> {
    fn now_ns(&self) -> u64 {
        self.0.now_ns()
    }
}

/// Runs a demultiplexing pass when the platform calls it (see [`ImsPlatform::set_handler`]).
///
/// The pass is chosen once, when the handler is made: [`VectorHandler::run`] is one call
/// through `pass` (no match on the mode per interrupt).
#[derive(Clone)]
pub struct VectorHandler {
    pass: fn(&VectorHandler),
    domain: Arc<DomainInner>,
    cpu: usize,
    /// One vector per handle: the handle and its vector.
    direct: Option<(Arc<HandleInner>, u8)>,
}

impl core::fmt::Debug for VectorHandler {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let cpu = self.cpu;
        match &self.direct {
            Some((handle, vector)) => write!(
                f,
                "VectorHandler(entry {}, cpu {cpu}, vector {vector:#04x})",
                handle.index
            ),
            None => write!(
                f,
                "VectorHandler({}, cpu {cpu})",
                if self.domain.config.mode == VectorMode::Posted {
                    "posted"
                } else {
                    "shared"
                }
            ),
        }
    }
}

impl VectorHandler {
    pub(crate) fn direct(
        domain: &Arc<DomainInner>,
        handle: &Arc<HandleInner>,
        cpu: usize,
        vector: u8,
    ) -> VectorHandler {
        VectorHandler {
            pass: |h| {
                if let Some((handle, vector)) = &h.direct {
                    h.domain.demux_direct(handle, h.cpu, *vector);
                }
            },
            domain: domain.clone(),
            cpu,
            direct: Some((handle.clone(), vector)),
        }
    }

    /// The handler of `cpu`'s one vector (Shared and Posted modes).
    fn per_cpu(domain: Arc<DomainInner>, cpu: usize) -> VectorHandler {
        let pass: fn(&VectorHandler) = match domain.config.mode {
            VectorMode::Posted => |h| h.domain.demux_posted(h.cpu),
            _ => |h| h.domain.demux_shared(h.cpu),
        };
        VectorHandler {
            pass,
            domain,
            cpu,
            direct: None,
        }
    }

    /// The interrupt entry point: call on the handler's CPU with interrupts disabled. What
    /// the pass did goes to the CPU's counters ([`ImsDomain::stats`]).
    #[inline]
    pub fn run(&self) {
        (self.pass)(self);
    }
}

/// Per-CPU usage: what the vector report and the benchmark print.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuReport {
    /// The CPU index (`0..cpu_count`).
    pub cpu: usize,
    /// Vectors the domain holds on this CPU (Shared and Posted modes: 1, PerHandle: one per
    /// handle).
    pub vectors: u32,
    /// Posted-interrupt descriptors of this CPU (Posted mode).
    pub pids: u32,
    /// Live handles targeting this CPU.
    pub handles: u32,
    /// Armed handle slots right now.
    pub armed: u32,
    /// The CPU's handler counters since the domain was created.
    pub stats: DemuxStats,
}

/// Where a handle is: its CPU and, in the one-vector modes, its slot there (armed bit, or
/// posted-descriptor bit), per handle its vector. Kept packed in one atomic word (CPU in the
/// high half), [`HandleLocation::NOWHERE`] once released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HandleLocation {
    pub cpu: usize,
    /// Slot (Shared, Posted) or vector (PerHandle).
    pub low: u32,
}

impl HandleLocation {
    /// The packed word of no location.
    pub const NOWHERE: u64 = u64::MAX;

    pub fn new(cpu: usize, low: u32) -> HandleLocation {
        HandleLocation { cpu, low }
    }
    /// The location as one word.
    pub fn pack(self) -> u64 {
        (self.cpu as u64) << 32 | u64::from(self.low)
    }
    /// The location of a packed word (None: [`HandleLocation::NOWHERE`]).
    pub fn unpack(word: u64) -> Option<HandleLocation> {
        (word != Self::NOWHERE).then_some(HandleLocation {
            cpu: (word >> 32) as usize,
            low: word as u32,
        })
    }
}

const CALL_IDLE: u8 = 0;
const CALL_RUNNING: u8 = 1;
const CALL_DONE: u8 = 2;
const CALL_CANCELLED: u8 = 3;

struct Call<R> {
    state: AtomicU8,
    out: spin::Mutex<Option<R>>,
}

impl DomainInner {
    /// The platform's cycle counter: its plain function when it has one (no dynamic call
    /// on the interrupt path), else [`ImsPlatform::cycles`].
    #[inline(always)]
    fn cycles(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.tsc {
            // SAFETY: RDTSC reads a counter and has no memory effects; the platform said
            // its cycle counter is the TSC (so nothing disabled it with CR4.TSD).
            return unsafe { core::arch::x86_64::_rdtsc() };
        }
        self.platform.cycles()
    }

    /// Runs `f` on `cpu` (interrupts disabled there) and returns its result. Either `f` ran to
    /// completion, or it never will: a call the platform timed out is cancelled unless it
    /// already started, in which case it is waited for.
    pub fn on_cpu<R: Send + 'static>(
        &self,
        cpu: usize,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, ImsError> {
        let call = Arc::new(Call {
            state: AtomicU8::new(CALL_IDLE),
            out: spin::Mutex::new(None),
        });
        let c = call.clone();
        let r = self.platform.run_on(
            cpu,
            Box::new(move || {
                if c.state
                    .compare_exchange(CALL_IDLE, CALL_RUNNING, SeqCst, SeqCst)
                    .is_err()
                {
                    return;
                }
                let v = f();
                *c.out.lock() = Some(v);
                c.state.store(CALL_DONE, SeqCst);
            }),
        );
        if let Err(e) = r {
            if call
                .state
                .compare_exchange(CALL_IDLE, CALL_CANCELLED, SeqCst, SeqCst)
                .is_ok()
            {
                return Err(e.into());
            }
            self.wait_until("a started cross-CPU call", || {
                call.state.load(SeqCst) == CALL_DONE
            })?;
        }
        let v = call.out.lock().take();
        v.ok_or(ImsError::Timeout(
            "the platform reported a cross-CPU call that never ran",
        ))
    }

    /// Spins (bounded by the call timeout) until `done` holds.
    pub fn wait_until(&self, what: &'static str, done: impl Fn() -> bool) -> Result<(), ImsError> {
        self.wait_for(|| done().then_some(()))
            .ok_or(ImsError::Timeout(what))
    }

    /// `poll`'s first `Some` within the call timeout (`hwio::wait_until` on the platform's
    /// clock), or None.
    pub fn wait_for<T>(&self, poll: impl FnMut() -> Option<T>) -> Option<T> {
        hwio::wait_until(
            &PlatformClock(&*self.platform),
            self.config.call_timeout_ns,
            poll,
        )
        .ok()
    }

    pub fn cpu(&self, cpu: usize) -> Result<&CpuState, ImsError> {
        self.cpus.get(cpu).ok_or(ImsError::NoSuchCpu {
            cpu,
            cpus: self.cpus.len(),
        })
    }

    /// Inserts `h` into `cpu`'s table (on that CPU) and points its location there.
    pub fn insert_on(self: &Arc<Self>, cpu: usize, h: &Arc<HandleInner>) -> Result<u32, ImsError> {
        let (d, h2) = (self.clone(), h.clone());
        let cap = self.config.max_handles_per_cpu;
        let slot = self.on_cpu(cpu, move || {
            let st = &d.cpus[cpu];
            let slot = st.table.lock().insert(h2.clone(), cap)?;
            h2.loc.store(HandleLocation::new(cpu, slot).pack(), SeqCst);
            Some(slot)
        })?;
        let slot = slot.ok_or(ImsError::CpuFull { cpu, capacity: cap })?;
        self.cpus[cpu].handles.fetch_add(1, SeqCst);
        Ok(slot)
    }

    /// Removes `h` from `cpu`'s table (on that CPU). After this returns, `cpu`'s handler is
    /// not running `h`'s sink and never will again from this slot.
    pub fn remove_on(
        self: &Arc<Self>,
        cpu: usize,
        slot: u32,
        h: &Arc<HandleInner>,
    ) -> Result<(), ImsError> {
        let (d, h2) = (self.clone(), h.clone());
        let removed = self.on_cpu(cpu, move || {
            let st = &d.cpus[cpu];
            let r = st.table.lock().remove(slot, &h2);
            if r {
                st.clear_slot(slot);
            }
            r
        })?;
        if removed {
            self.cpus[cpu].handles.fetch_sub(1, SeqCst);
        }
        Ok(())
    }

    /// On `cpu`: re-arms `h` if it has work outstanding, then polls it unless it is blocked
    /// (catches completions whose interrupt was consumed elsewhere or while masked).
    pub fn repoll_on(self: &Arc<Self>, cpu: usize, h: &Arc<HandleInner>) -> Result<u32, ImsError> {
        let (d, h2) = (self.clone(), h.clone());
        self.on_cpu(cpu, move || {
            let st = &d.cpus[cpu];
            // Held like the handler holds it, so no demultiplexing pass of this CPU runs
            // concurrently (matters in host fakes; on hardware interrupts are off anyway).
            let _t = st.table.lock();
            let slot = match (d.config.mode, HandleLocation::unpack(h2.loc.load(SeqCst))) {
                (VectorMode::Shared, Some(l)) if l.cpu == cpu => Some(l.low),
                _ => None,
            };
            if let Some(slot) = slot
                && h2.busy()
            {
                st.armed.set(slot);
            }
            if h2.blocked() {
                return 0;
            }
            let n = h2.sink.poll(&h2.delivered);
            if let Some(slot) = slot
                && !h2.busy()
            {
                // Same disarm protocol as the handler.
                st.armed.clear(slot);
                if h2.busy() {
                    st.armed.set(slot);
                }
            }
            n
        })
    }

    /// Posted mode: the (descriptor, bit) of `slot` on `cpu`, allocating the CPU's
    /// descriptors up to it (control path, thread context).
    pub fn slot_target(self: &Arc<Self>, cpu: usize, slot: u32) -> Result<(PidRef, u8), ImsError> {
        let st = self.cpu(cpu)?;
        let vector = st
            .vector
            .ok_or(ImsError::BadStorage("shared vector missing"))?;
        let (i, bit) = slot_pid(slot);
        let pid = st
            .pids
            .ensure(i, || self.platform.alloc_pid(cpu, vector))
            .ok_or(ImsError::CpuFull {
                cpu,
                capacity: self.config.max_handles_per_cpu,
            })??;
        if i as u32 >= st.pids_in_table.load(SeqCst) {
            // The handler walks the table's copy: extend it (on the CPU, under its lock)
            // before any route posts to the new descriptor.
            let d = self.clone();
            let n = self.on_cpu(cpu, move || {
                let st = &d.cpus[cpu];
                let mut t = st.table.lock();
                while let Some(p) = st.pids.get(t.pids.len()) {
                    let i = t.pids.len();
                    let words = t.words_of(i);
                    t.pids.push(TablePid::new(p, i, words));
                }
                t.pids.len() as u32
            })?;
            st.pids_in_table.fetch_max(n, SeqCst);
        }
        Ok((pid, bit))
    }

    /// A no-op on `cpu`: when it returns, any handler pass that was running there finished.
    pub fn barrier(&self, cpu: usize) -> Result<(), ImsError> {
        self.on_cpu(cpu, || ())
    }

    /// The shared-vector handler: check every armed handle of `cpu`; poll those with
    /// something to deliver (or nothing left to wait for), unless blocked.
    fn demux_shared(&self, cpu: usize) {
        let mut d = Demux::default();
        let Some(st) = self.cpus.get(cpu) else {
            return;
        };
        let t0 = self.cycles();
        self.with_table(st, |table| {
            let slots: &[Option<Arc<HandleInner>>] = &table.slots;
            let cost = st.armed.scan(|slot| match slots.get(slot as usize) {
                Some(Some(h)) => Self::deliver_one(st, h, slot, &mut d),
                _ => {
                    // A stale bit (an arming that raced with a move or a release).
                    st.armed.clear(slot);
                }
            });
            d.words_scanned = cost.summary_words + cost.words;
            let spent = self.cycles().wrapping_sub(t0);
            st.counters.add(&d, spent);
        });
    }

    /// Delivery for one armed handle of the shared-vector scan: the one call per handle. A
    /// sink that delivers directly gets exactly one call (it checks its own completions);
    /// otherwise the handle's watch is read first and the sink is polled only when it shows
    /// a completion (or nothing left to wait for). Either way the handle is disarmed when
    /// nothing is outstanding. A posted-interrupt mode would call this for the handles its
    /// descriptor names instead of scanning the armed set.
    #[inline(always)]
    fn deliver_one(st: &CpuState, h: &HandleInner, slot: u32, d: &mut Demux) {
        if !h.direct {
            // Left armed without a sink call: the completion it waits for comes with an
            // interrupt of its own, and its record is watched before the device can write it.
            if !h.nothing_to_deliver() {
                Self::poll_armed(st, h, slot, d);
            }
            return;
        }
        if h.blocked() {
            // Masked or being released: stays armed; unmask re-polls.
            return;
        }
        // Armed only by an arming guard, with nothing submitted since the sink was idle:
        // nothing to deliver (the submission the guard covers changes the word first).
        if h.still_idle() {
            return;
        }
        let r = h.sink.deliver(&h.delivered);
        let n = r.delivered;
        d.delivered += n;
        if n != 0 {
            d.polled += 1;
        }
        match r.idle {
            Some((_, value)) if h.idle_word.is_some() => {
                h.idle_mark
                    .store(1 << 32 | u64::from(value), Ordering::Relaxed);
            }
            _ => h.idle_mark.store(0, Ordering::Relaxed),
        }
        if let Some((word, value)) = r.idle
            && h.arming.load(SeqCst) == 0
        {
            if n == 0 {
                d.polled += 1;
                d.empty_polls += 1;
            }
            // Disarm, then look again: a submission between the sink's look and the clear
            // changed the word before arming, and an arming guard raises `arming` first.
            st.armed.clear(slot);
            if word.load(SeqCst) != value || h.arming.load(SeqCst) > 0 {
                st.armed.set(slot);
            }
        }
    }

    /// The full path for one armed handle of the shared handler: poll it unless blocked,
    /// disarm it if nothing is left to wait for. Kept out of line so that the loop over the
    /// armed set stays small.
    #[inline(never)]
    fn poll_armed(st: &CpuState, h: &HandleInner, slot: u32, d: &mut Demux) {
        if h.blocked() {
            // Masked or being released: stays armed; unmask re-polls.
            return;
        }
        let n = h.poll_sink();
        d.polled += 1;
        d.delivered += n;
        if n == 0 {
            d.empty_polls += 1;
        }
        if !h.busy() {
            // Disarm, then look again: an arming between the check and the clear (its
            // counter is raised before its bit) puts the bit back.
            st.armed.clear(slot);
            if h.busy() {
                st.armed.set(slot);
            }
        }
    }

    /// Runs a handler pass's `f` on `st`'s table, without its lock: the platform
    /// serializes handler passes and table changes per CPU (the safety contract of
    /// [`ImsPlatform`]).
    #[inline(always)]
    fn with_table<R>(&self, st: &CpuState, f: impl FnOnce(&CpuTable) -> R) -> R {
        // SAFETY: `ImsPlatform`'s safety contract: this pass runs on the table's CPU with
        // interrupts disabled, and every change of the table is made in a `run_on` closure
        // on that CPU, which cannot run until the pass returned. So nothing writes the
        // table while this shared reference lives.
        f(unsafe { &*st.table.as_mut_ptr() })
    }

    /// The posted-mode handler: for each of the CPU's descriptors with ON set, clear ON, take
    /// its PIR words and deliver to the handles whose bits were set (see [`crate::posted`]
    /// for why nothing is lost or delivered twice). No armed set is scanned, and only the
    /// PIR words that serve slots in use are read.
    fn demux_posted(&self, cpu: usize) {
        let mut d = Demux::default();
        let Some(st) = self.cpus.get(cpu) else {
            return;
        };
        let t0 = self.cycles();
        self.with_table(st, |table| {
            let slots: &[Option<Arc<HandleInner>>] = &table.slots;
            // One delivery closure for the whole pass (not one per descriptor).
            let mut deliver = |slot: usize| {
                // An empty slot: a late post of a handle that left (its completion is
                // re-polled where the handle went).
                if let Some(Some(h)) = slots.get(slot) {
                    Self::deliver_posted(h, &mut d);
                }
            };
            let mut words = 0;
            for pid in table.pids.iter() {
                words += pid.harvest(&mut deliver);
            }
            d.words_scanned = words;
            d.pids_scanned = table.pids.len() as u32;
            // Counted inside the pass: its counters have the same single writer as the
            // table.
            let spent = self.cycles().wrapping_sub(t0);
            st.counters.add(&d, spent);
        });
    }

    /// Delivery for one handle a posted descriptor named: one call of its sink.
    #[inline(always)]
    fn deliver_posted(h: &HandleInner, d: &mut Demux) {
        if h.blocked() {
            // Masked or being released: unmask re-polls, release delivers one last time.
            return;
        }
        // `poll`, not `deliver`: nothing here needs the sink's idle report (the handle is
        // never disarmed; the next post names it again).
        let n = h.poll_sink();
        d.polled += 1;
        d.delivered += n;
        d.empty_polls += u32::from(n == 0);
    }

    /// A per-handle vector's handler: the vector names the handle.
    fn demux_direct(&self, h: &Arc<HandleInner>, cpu: usize, vector: u8) {
        let mut d = Demux::default();
        let Some(st) = self.cpus.get(cpu) else {
            return;
        };
        let t0 = self.cycles();
        // The table is not read: taken (or, on a `CpuExclusive` platform, not needed) only
        // so that no control-path change of this CPU runs during the pass.
        self.with_table(st, |_| {
            // A vector left behind by a retarget or release: the handle lives elsewhere now.
            if h.loc.load(SeqCst) == HandleLocation::new(cpu, u32::from(vector)).pack()
                && !h.blocked()
            {
                let n = h.poll_sink();
                d.polled = 1;
                d.delivered = n;
                d.empty_polls = u32::from(n == 0);
            }
            let spent = self.cycles().wrapping_sub(t0);
            st.counters.add(&d, spent);
        });
    }
}

/// The system-wide IMS irqchip domain. Create one per machine (two DSA devices registered
/// with one domain still use one vector per CPU).
pub struct ImsDomain {
    pub(crate) inner: Arc<DomainInner>,
}

impl core::fmt::Debug for ImsDomain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImsDomain")
            .field("mode", &self.inner.config.mode)
            .field("cpus", &self.inner.cpus.len())
            .finish()
    }
}

impl ImsDomain {
    /// Creates the domain. In [`VectorMode::Shared`] this allocates the one vector of every
    /// CPU and installs its handler (all or nothing); no later operation allocates vectors.
    pub fn new(
        platform: Arc<dyn ImsPlatform>,
        config: DomainConfig,
    ) -> Result<ImsDomain, ImsError> {
        let n = platform.cpu_count();
        if n == 0 {
            return Err(ImsError::NoSuchCpu { cpu: 0, cpus: 0 });
        }
        if config.max_handles_per_cpu == 0 || config.max_handles_per_cpu > MAX_CAPACITY {
            return Err(ImsError::BadStorage(
                "max_handles_per_cpu must be in 1..=2^24",
            ));
        }
        if config.mode == VectorMode::Posted && !platform.posted_interrupts() {
            return Err(ImsError::PostedUnsupported);
        }
        let mut vectors = Vec::with_capacity(n);
        if config.mode.one_vector_per_cpu() {
            for cpu in 0..n {
                match platform.alloc_vector(cpu, config.mode.owner()) {
                    Ok(v) => vectors.push(Some(v)),
                    Err(e) => {
                        for (c, v) in vectors.iter().enumerate() {
                            if let Some(v) = v {
                                platform.free_vector(c, *v);
                            }
                        }
                        return Err(e.into());
                    }
                }
            }
        } else {
            vectors.resize(n, None);
        }
        let cpus: Vec<CpuState> = (0..n)
            .map(|cpu| CpuState {
                vector: vectors[cpu],
                armed: ArmedSet::new(if config.mode == VectorMode::Shared {
                    config.max_handles_per_cpu
                } else {
                    1
                }),
                pids: CpuPids::new(if config.mode == VectorMode::Posted {
                    config.max_handles_per_cpu
                } else {
                    0
                }),
                table: spin::mutex::SpinMutex::new(CpuTable {
                    slots: Vec::new(),
                    free: Vec::new(),
                    live: 0,
                    pids: Vec::new(),
                    word_live: Vec::new(),
                }),
                pids_in_table: AtomicU32::new(0),
                vectors: AtomicU32::new(u32::from(vectors[cpu].is_some())),
                handles: AtomicU32::new(0),
                counters: Counters::default(),
            })
            .collect();
        let inner = Arc::new(DomainInner {
            tsc: platform.cycles_are_tsc(),
            platform: platform.clone(),
            config,
            cpus: cpus.into_boxed_slice(),
            next_chip: AtomicU64::new(1),
        });
        if config.mode.one_vector_per_cpu() {
            let shared: Vec<u8> = vectors.iter().map(|v| v.unwrap_or_default()).collect();
            for (cpu, &v) in shared.iter().enumerate() {
                let h = VectorHandler::per_cpu(inner.clone(), cpu);
                if let Err(e) = platform.set_handler(cpu, v, h) {
                    for (c, &v) in shared.iter().enumerate() {
                        if c < cpu {
                            platform.clear_handler(c, v);
                        }
                        platform.free_vector(c, v);
                    }
                    return Err(e.into());
                }
            }
            match config.mode {
                VectorMode::Posted => log::info!(
                    "ims: posted mode, one vector per CPU on {n} CPU(s), descriptors of 256 handles allocated on demand"
                ),
                _ => log::info!("ims: shared mode, one vector per CPU on {n} CPU(s)"),
            }
        } else {
            log::info!("ims: per-handle-vector mode on {n} CPU(s)");
        }
        Ok(ImsDomain { inner })
    }

    /// The domain's vector mode ([`DomainConfig::mode`]).
    pub fn mode(&self) -> VectorMode {
        self.inner.config.mode
    }

    /// The number of CPUs the domain serves (valid CPU indices are `0..cpu_count()`).
    pub fn cpu_count(&self) -> usize {
        self.inner.cpus.len()
    }

    /// The owner name of the domain's vectors.
    pub fn owner(&self) -> &'static str {
        self.inner.config.mode.owner()
    }

    /// The one vector of `cpu` (Shared and Posted modes).
    pub fn shared_vector(&self, cpu: usize) -> Option<u8> {
        self.inner.cpus.get(cpu).and_then(|c| c.vector)
    }

    /// Registers one device's IMS table.
    pub fn register(
        &self,
        storage: Arc<dyn ImsStorage>,
        options: ChipOptions,
    ) -> Result<ImsChip, ImsError> {
        ChipInner::new(&self.inner, storage, options).map(|inner| ImsChip { inner })
    }

    /// Usage of one CPU.
    pub fn cpu_report(&self, cpu: usize) -> Result<CpuReport, ImsError> {
        let c = self.inner.cpu(cpu)?;
        Ok(CpuReport {
            cpu,
            vectors: c.vectors.load(SeqCst),
            handles: c.handles.load(SeqCst),
            pids: c.pids.count(),
            armed: c.armed.count(),
            stats: c.counters.snapshot(),
        })
    }

    /// Usage of every CPU.
    pub fn report(&self) -> Vec<CpuReport> {
        (0..self.cpu_count())
            .filter_map(|c| self.cpu_report(c).ok())
            .collect()
    }

    /// Total vectors the domain holds.
    pub fn vectors_used(&self) -> u32 {
        self.inner.cpus.iter().map(|c| c.vectors.load(SeqCst)).sum()
    }

    /// Demultiplexing counters of one CPU.
    pub fn stats(&self, cpu: usize) -> Result<DemuxStats, ImsError> {
        Ok(self.inner.cpu(cpu)?.counters.snapshot())
    }

    /// Zeroes every CPU's counters (between benchmark rounds).
    pub fn reset_stats(&self) {
        for c in self.inner.cpus.iter() {
            c.counters.reset();
        }
    }
}
