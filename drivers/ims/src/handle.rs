//! Handles: arming (hot path, any CPU, lock-free), and the owner's control operations
//! (mask, unmask, retarget, release).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering, Ordering::SeqCst};

use crate::chip::ChipInner;
use crate::domain::{HandleLocation, VectorHandler, VectorMode};
use crate::error::ImsError;
use crate::platform::Route;
use crate::sink::CompletionSink;
use crate::watch::{CompletionWatch, WatchState};

/// The owner masked the handle: no callbacks until unmask.
pub(crate) const MASKED: u8 = 1;
/// Release started: no arming, no callbacks from the demultiplexer.
pub(crate) const DEAD: u8 = 2;

/// Control-plane state (the owner's operations and `restore`; never the hot path).
pub(crate) struct Ctl {
    pub route: Route,
    pub cpu: usize,
    pub vector: u8,
    /// Slot in the CPU's table (Shared mode).
    pub slot: u32,
}

/// A sink's idle word ([`CompletionSink::idle_word`]), kept as a pointer because the sink
/// behind `HandleInner::sink` owns it.
pub(crate) struct IdleWord(pub core::ptr::NonNull<AtomicU32>);

// SAFETY: it points to an `AtomicU32` (itself Send + Sync) that the handle's sink keeps at
// a fixed address while the handle, which holds the sink, lives.
unsafe impl Send for IdleWord {}
// SAFETY: as above; only atomic loads go through it.
unsafe impl Sync for IdleWord {}

/// `repr(C)`: the fields the shared-vector handler reads for every armed handle (`watch`,
/// `arming`, `flags`) share the first cache line with the reference counts.
#[repr(C)]
pub(crate) struct HandleInner {
    /// The sink's completion watch ([`CompletionSink::watch`]), or one that always shows a
    /// completion for a sink without one.
    pub watch: Arc<CompletionWatch>,
    /// Submissions between `arm` and the end of their submit call.
    pub arming: AtomicU32,
    pub flags: AtomicU8,
    /// The sink delivers directly ([`CompletionSink::delivers_directly`]).
    pub direct: bool,
    /// Arming sets a bit in the CPU's armed set (shared mode only: posted mode needs no
    /// arming, the IOMMU names the handle; per-handle vectors name it too).
    pub arms: bool,
    /// The sink's [`CompletionSink::idle_word`] (kept alive by `sink`), and the value it
    /// had when the sink last reported idle (bit 32 set: valid).
    pub idle_word: Option<IdleWord>,
    pub idle_mark: AtomicU64,
    pub chip: Arc<ChipInner>,
    pub index: u32,
    pub pasid: u32,
    pub client: u64,
    pub sink: Arc<dyn CompletionSink>,
    /// The sink's [`CompletionSink::raw_poll`] (its argument kept alive by `sink`), or for a
    /// sink without one [`poll_dyn`] on this handle: the handler makes one indirect call
    /// either way.
    pub raw: crate::sink::RawPoll,
    /// Where the handle is: a packed [`HandleLocation`] (CPU and slot, or CPU and vector).
    pub loc: AtomicU64,
    /// What descriptors carry to name the entry.
    pub dev_handle: AtomicU32,
    /// Completions delivered through the chip (handler and re-polls), counted by the sink
    /// before each callback runs.
    pub delivered: AtomicU64,
    pub ctl: spin::Mutex<Ctl>,
}

/// A sink's `poll` through its trait object, as a [`RawPoll`](crate::sink::RawPoll) function
/// whose argument is the handle.
///
/// # Safety
/// `h` is a live `HandleInner`.
unsafe fn poll_dyn(h: *const (), delivered: &AtomicU64) -> u32 {
    // SAFETY: the caller's contract (`raw_or_dyn` pairs this function with the handle that
    // holds it, so the handle is alive whenever its `raw` is called).
    let h = unsafe { &*h.cast::<HandleInner>() };
    h.sink.poll(delivered)
}

impl HandleInner {
    /// The sink's `poll` into the handle's delivered count, through its plain function when
    /// it has one.
    #[inline(always)]
    pub fn poll_sink(&self) -> u32 {
        let r = self.raw;
        // SAFETY: either the sink's own `poll` as a function and argument (`raw_poll`'s
        // contract; `sink` keeps the argument alive) or `poll_dyn` with this handle's
        // address (`raw_or_dyn`), valid while the handle is.
        unsafe { (r.f)(r.arg, &self.delivered) }
    }

    /// `sink`'s plain poll, or [`poll_dyn`] with `this` (the address the handle being made
    /// will have) as its argument.
    pub fn raw_or_dyn(sink: &dyn CompletionSink, this: *const HandleInner) -> crate::sink::RawPoll {
        sink.raw_poll().unwrap_or(crate::sink::RawPoll {
            f: poll_dyn,
            arg: this.cast(),
        })
    }

    /// The sink reported idle at the value its idle word still has: nothing was submitted
    /// since, so there is nothing to deliver.
    #[inline(always)]
    pub fn still_idle(&self) -> bool {
        let mark = self.idle_mark.load(Ordering::Relaxed);
        match &self.idle_word {
            // SAFETY: the word belongs to `sink`, which this handle keeps alive, and the
            // sink guarantees its address for its whole life (`CompletionSink::idle_word`).
            Some(w) if mark >> 32 != 0 => unsafe { w.0.as_ref() }.load(SeqCst) == mark as u32,
            _ => false,
        }
    }

    /// Masked or being released: the demultiplexer leaves it alone.
    #[inline]
    pub fn blocked(&self) -> bool {
        self.flags.load(SeqCst) != 0
    }
    /// The shared-vector handler's check before the full path: true when the watch shows no
    /// completed record while something may still complete (a watched record, or a
    /// submission in progress that will watch its record before the device can write it).
    /// False when a watched record completed (or the sink has no watch of its own), and
    /// when nothing is left to wait for (the full path then disarms the handle).
    #[inline(always)]
    pub fn nothing_to_deliver(&self) -> bool {
        match self.watch.state() {
            WatchState::Completed => false,
            WatchState::Waiting => true,
            WatchState::Idle => self.arming.load(SeqCst) > 0,
        }
    }
    /// Work may be outstanding: a submission is being made, or the sink has undelivered work.
    #[inline]
    pub fn busy(&self) -> bool {
        self.arming.load(SeqCst) > 0 || self.sink.outstanding()
    }

    fn arm(&self) -> Result<ArmGuard<'_>, ImsError> {
        // Counted before the DEAD check (release sets DEAD, then waits for the count to drop)
        // and before the location is read (a retarget moves the location, then checks the
        // count), so neither can miss this submission.
        self.arming.fetch_add(1, SeqCst);
        let guard = ArmGuard { h: self };
        if self.flags.load(SeqCst) & DEAD != 0 {
            return Err(ImsError::Released);
        }
        if self.arms {
            self.set_armed();
        }
        Ok(guard)
    }

    /// Sets the handle's bit in its CPU's armed set (shared mode).
    #[inline]
    fn set_armed(&self) {
        let d = &self.chip.domain;
        if let Some(l) = HandleLocation::unpack(self.loc.load(SeqCst))
            && let Some(st) = d.cpus.get(l.cpu)
        {
            st.armed.set(l.low);
        }
    }

    /// Sets the armed bit of a submission its sink already counts (see
    /// [`Armer::arm_published`]).
    #[inline]
    fn arm_published(&self) -> Result<(), ImsError> {
        if self.flags.load(SeqCst) & DEAD != 0 {
            return Err(ImsError::Released);
        }
        if self.arms {
            self.set_armed();
        }
        Ok(())
    }
}

/// A submission in progress: keep it alive until the submit call has returned (the sink then
/// counts the work as outstanding).
#[must_use = "the guard must live until the descriptor was submitted"]
pub struct ArmGuard<'a> {
    h: &'a HandleInner,
}

impl Drop for ArmGuard<'_> {
    fn drop(&mut self) {
        self.h.arming.fetch_sub(1, SeqCst);
    }
}

impl core::fmt::Debug for ArmGuard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "ArmGuard(entry {})", self.h.index)
    }
}

/// The right to submit work that names a handle (clonable, usable from any CPU at once).
#[derive(Clone)]
pub struct Armer {
    h: Arc<HandleInner>,
}

impl core::fmt::Debug for Armer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Armer(entry {}, PASID {:#x})",
            self.h.index, self.h.pasid
        )
    }
}

impl Armer {
    /// Arms the handle on its current CPU. Call **before** the descriptor is submitted and
    /// keep the guard until the submit call returned: a completion can then never be missed
    /// by the demultiplexer. Fails once the handle is being released.
    pub fn arm(&self) -> Result<ArmGuard<'_>, ImsError> {
        self.h.arm()
    }
    /// Arms the handle for a submission that its sink already shows as outstanding (the
    /// sink's [`Delivery::idle`](crate::Delivery) word changed and its `outstanding` is true)
    /// and that has not reached the device yet: the lock-free fast path of sinks that
    /// deliver directly, instead of an [`ArmGuard`] around the submit call. The caller must
    /// have raised its sink's [`submitting`](crate::CompletionSink::submitting) flag before
    /// checking here (release sets DEAD, then waits for that flag). Fails once the handle
    /// is being released.
    #[inline]
    pub fn arm_published(&self) -> Result<(), ImsError> {
        self.h.arm_published()
    }
    /// What descriptors carry to name the entry.
    pub fn device_handle(&self) -> u32 {
        self.h.dev_handle.load(SeqCst)
    }
    /// IMS entry index.
    pub fn index(&self) -> u32 {
        self.h.index
    }
    /// The PASID of the handle's owner ([`OwnerId::pasid`](crate::OwnerId::pasid)).
    pub fn pasid(&self) -> u32 {
        self.h.pasid
    }
    /// [`ImsChip::id`](crate::ImsChip::id) of the device the handle belongs to.
    pub fn chip_id(&self) -> u64 {
        self.h.chip.id
    }
    /// Whether two armers name the same handle.
    pub fn same_handle(&self, other: &Armer) -> bool {
        Arc::ptr_eq(&self.h, &other.h)
    }
    /// True once release started.
    pub fn is_released(&self) -> bool {
        self.h.flags.load(SeqCst) & DEAD != 0
    }
    /// Posted mode: whether a post for the handle waits in its descriptor (its PIR bit is
    /// set; the handler has not taken it yet). False in the other modes. For the benchmark,
    /// which waits for its posts before it opens the measuring window.
    pub fn post_pending(&self) -> bool {
        let d = &self.h.chip.domain;
        if d.config.mode != VectorMode::Posted {
            return false;
        }
        HandleLocation::unpack(self.h.loc.load(SeqCst)).is_some_and(|l| {
            let (i, bit) = crate::posted::slot_pid(l.low);
            d.cpus
                .get(l.cpu)
                .and_then(|c| c.pids.get(i))
                .is_some_and(|p| p.bit(bit))
        })
    }
}

/// An IMS interrupt handle: one entry of one device, bound to one PASID and one target CPU,
/// owned by one client. Dropping it releases it.
pub struct ImsHandle {
    h: Arc<HandleInner>,
    released: bool,
}

impl core::fmt::Debug for ImsHandle {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImsHandle")
            .field("device", &self.h.chip.options.name)
            .field("index", &self.h.index)
            .field("pasid", &self.h.pasid)
            .field("cpu", &self.cpu())
            .finish()
    }
}

impl ImsHandle {
    pub(crate) fn new(h: Arc<HandleInner>) -> ImsHandle {
        ImsHandle { h, released: false }
    }

    /// IMS entry index.
    pub fn index(&self) -> u32 {
        self.h.index
    }
    /// What descriptors carry to name the entry (the index, or a device-issued handle).
    pub fn device_handle(&self) -> u32 {
        self.h.dev_handle.load(SeqCst)
    }
    /// The PASID of the handle's owner ([`OwnerId::pasid`](crate::OwnerId::pasid)).
    pub fn pasid(&self) -> u32 {
        self.h.pasid
    }
    /// [`ImsChip::id`](crate::ImsChip::id) of the device the handle belongs to.
    pub fn chip_id(&self) -> u64 {
        self.h.chip.id
    }
    /// Client id of the owner.
    pub fn client(&self) -> u64 {
        self.h.client
    }
    /// Target CPU.
    pub fn cpu(&self) -> usize {
        self.h.ctl.lock().cpu
    }
    /// Vector the handle's interrupts arrive on.
    pub fn vector(&self) -> u8 {
        self.h.ctl.lock().vector
    }
    /// The message the device entry holds.
    pub fn route(&self) -> Route {
        self.h.ctl.lock().route
    }
    /// Whether the handle is masked ([`mask`](Self::mask)): its device entry is masked and the
    /// chip runs none of its callbacks until [`unmask`](Self::unmask).
    pub fn is_masked(&self) -> bool {
        self.h.flags.load(SeqCst) & MASKED != 0
    }
    /// Completions the chip delivered for this handle. Each is counted before its callback
    /// runs: a callback (or a thread it signalled) sees its own completion in the count.
    pub fn delivered(&self) -> u64 {
        self.h.delivered.load(Ordering::Relaxed)
    }
    /// True if the handle is armed on its CPU now (diagnostics).
    pub fn is_armed(&self) -> bool {
        let d = &self.h.chip.domain;
        match HandleLocation::unpack(self.h.loc.load(SeqCst)) {
            Some(l) if d.config.mode == VectorMode::Shared => {
                d.cpus.get(l.cpu).is_some_and(|c| c.armed.is_set(l.low))
            }
            _ => false,
        }
    }

    /// The arming capability, for submitters on any CPU.
    pub fn armer(&self) -> Armer {
        Armer { h: self.h.clone() }
    }
    /// Arms the handle (see [`Armer::arm`]).
    pub fn arm(&self) -> Result<ArmGuard<'_>, ImsError> {
        self.h.arm()
    }

    /// Masks the handle: the device entry is masked (a completion's message stays pending in
    /// the entry) and, once this returns, the chip runs none of the handle's callbacks until
    /// [`unmask`](Self::unmask).
    pub fn mask(&mut self) -> Result<(), ImsError> {
        let h = &self.h;
        let cpu = {
            // Entry writes under `ctl`: a concurrent restore cannot unmask it again.
            let c = h.ctl.lock();
            h.flags.fetch_or(MASKED, SeqCst);
            h.chip.storage.set_masked(h.index, true);
            c.cpu
        };
        // A handler pass that checked the flag just before it was set finishes first.
        h.chip.domain.barrier(cpu)
    }

    /// Unmasks the handle: the entry sends its pending message, if any, and the handle is
    /// re-polled on its CPU (a completion whose interrupt arrived while masked is delivered
    /// now). Returns the completions that re-poll delivered.
    pub fn unmask(&mut self) -> Result<u32, ImsError> {
        let h = &self.h;
        let cpu = {
            let c = h.ctl.lock();
            h.flags.fetch_and(!MASKED, SeqCst);
            h.chip.storage.set_masked(h.index, false);
            c.cpu
        };
        h.chip.domain.repoll_on(cpu, h)
    }

    /// Moves the handle to `cpu` without losing or duplicating a completion: the handle
    /// joins the new CPU's set, the route is rewritten (the device entry itself only changes
    /// without interrupt remapping), the handle leaves the old CPU's set on the old CPU, and
    /// it is re-polled on the new CPU — a completion whose interrupt landed on the old CPU
    /// after it left is delivered there. On error nothing changed.
    pub fn retarget(&mut self, cpu: usize) -> Result<(), ImsError> {
        let h = self.h.clone();
        let chip = &h.chip;
        let d = &chip.domain;
        let plat = &d.platform;
        let new_st = d.cpu(cpu)?;
        let (old_cpu, old_vector, old_slot, old_route) = {
            let c = h.ctl.lock();
            (c.cpu, c.vector, c.slot, c.route)
        };
        if cpu == old_cpu {
            return Ok(());
        }
        let mode = d.config.mode;
        // 1. Join the new CPU (location moves there; arming goes there from now on).
        let (new_vector, new_slot) = match mode {
            VectorMode::Shared | VectorMode::Posted => {
                let v = new_st
                    .vector
                    .ok_or(ImsError::BadStorage("shared vector missing"))?;
                (v, d.insert_on(cpu, &h)?)
            }
            VectorMode::PerHandle => {
                let v = plat.alloc_vector(cpu, crate::domain::OWNER_PER_HANDLE)?;
                if let Err(e) = plat.set_handler(cpu, v, VectorHandler::direct(d, &h, cpu, v)) {
                    plat.free_vector(cpu, v);
                    return Err(e.into());
                }
                new_st.vectors.fetch_add(1, SeqCst);
                new_st.handles.fetch_add(1, SeqCst);
                h.loc
                    .store(HandleLocation::new(cpu, u32::from(v)).pack(), SeqCst);
                (v, 0)
            }
        };
        let undo_join = || {
            match mode {
                VectorMode::Shared | VectorMode::Posted => {
                    h.loc
                        .store(HandleLocation::new(old_cpu, old_slot).pack(), SeqCst);
                    if let Err(e) = d.remove_on(cpu, new_slot, &h) {
                        log::error!("ims: entry {}: undoing a retarget: {e}", h.index);
                    }
                }
                VectorMode::PerHandle => {
                    h.loc.store(
                        HandleLocation::new(old_cpu, u32::from(old_vector)).pack(),
                        SeqCst,
                    );
                    plat.clear_handler(cpu, new_vector);
                    plat.free_vector(cpu, new_vector);
                    new_st.vectors.fetch_sub(1, SeqCst);
                    new_st.handles.fetch_sub(1, SeqCst);
                }
            }
            // Whatever completed meanwhile is still delivered on the old CPU.
            let _ = d.repoll_on(old_cpu, &h);
        };
        // 2. Route the messages there (posted: to the new slot's descriptor bit; the old
        // CPU clears the old bit when the handle leaves it in step 3).
        let mut route = old_route;
        let routed = match mode {
            VectorMode::Posted => d
                .slot_target(cpu, new_slot)
                .and_then(|(pid, bit)| Ok(plat.post_route(&mut route, &pid, bit)?)),
            _ => plat
                .retarget_route(&mut route, cpu, new_vector)
                .map_err(ImsError::from),
        };
        if let Err(e) = routed {
            undo_join();
            return Err(e);
        }
        let written = {
            // The entry write and the new route together under `ctl`: a concurrent restore
            // programs either the old message before or the new one after, never a stale one.
            let mut c = h.ctl.lock();
            let r = if route.msg != old_route.msg {
                // Without remapping the message itself names the CPU: rewrite it while
                // masked (a completion meanwhile stays pending and is sent with the new
                // message).
                let storage = &chip.storage;
                storage.set_masked(h.index, true);
                let r = storage.set_message(h.index, route.msg);
                if r.is_err() {
                    let mut back = route;
                    let _ = plat.retarget_route(&mut back, old_cpu, old_vector);
                    let _ = storage.set_message(h.index, old_route.msg);
                }
                if h.flags.load(SeqCst) & MASKED == 0 {
                    storage.set_masked(h.index, false);
                }
                r
            } else {
                Ok(())
            };
            if r.is_ok() {
                c.route = route;
                c.cpu = cpu;
                c.vector = new_vector;
                c.slot = new_slot;
            }
            r
        };
        if let Err(e) = written {
            undo_join();
            return Err(e.into());
        }
        // 3. Leave the old CPU, on the old CPU (its handler is not running this handle after).
        let old_st = &d.cpus[old_cpu];
        let left = match mode {
            VectorMode::Shared | VectorMode::Posted => d.remove_on(old_cpu, old_slot, &h),
            VectorMode::PerHandle => {
                let r = d.barrier(old_cpu);
                plat.clear_handler(old_cpu, old_vector);
                plat.free_vector(old_cpu, old_vector);
                old_st.vectors.fetch_sub(1, SeqCst);
                old_st.handles.fetch_sub(1, SeqCst);
                r
            }
        };
        if let Err(e) = left {
            // The old CPU may still poll the handle for a while: harmless (the sink delivers
            // each completion once), only the slot stays taken.
            log::warn!(
                "ims: entry {}: leaving CPU {old_cpu} failed ({e}); its slot stays taken",
                h.index
            );
        }
        // 4. Re-poll on the new CPU: completions whose interrupt went to the old CPU after
        // the handle left it (their records were written before the route moved).
        d.repoll_on(cpu, &h)?;
        Ok(())
    }

    /// Releases the handle: no more arming; the entry is masked; the device is quiesced with
    /// the entry still bound (the owner's accepted work completes normally), the entry is
    /// unbound (descriptors that still name it are refused by the device) and the device
    /// quiesced again (no accepted work naming it remains); completions are delivered one
    /// last time on the handle's CPU, the handle leaves its CPU, the entry is cleared (pending message
    /// discarded) and returned, the route freed. When this returns no callback of the handle
    /// runs through the chip any more, and nothing raised for it can reach the entry's next
    /// owner. If the device cannot be quiesced the entry is retired for good instead.
    pub fn release(mut self) -> Result<(), ImsError> {
        self.released = true;
        release(&self.h)
    }
}

impl Drop for ImsHandle {
    fn drop(&mut self) {
        if !self.released
            && let Err(e) = release(&self.h)
        {
            log::error!("ims: releasing entry {} on drop: {e}", self.h.index);
        }
    }
}

fn release(h: &Arc<HandleInner>) -> Result<(), ImsError> {
    let chip = &h.chip;
    let d = &chip.domain;
    {
        // Under `ctl`: a restore running now either finished this entry or sees DEAD and
        // leaves it alone from here on.
        let _c = h.ctl.lock();
        h.flags.fetch_or(DEAD, SeqCst);
        chip.storage.set_masked(h.index, true);
    }
    let mut first_err = None;
    // Submissions that armed before DEAD finish their portal store first (they are then
    // covered by the drain); a late one is refused by the device after unbind anyway.
    if let Err(e) = d.wait_until("submissions in progress on a released handle", || {
        h.arming.load(SeqCst) == 0 && !h.sink.submitting()
    }) {
        log::warn!("ims: entry {}: {e}", h.index);
    }
    // Two quiesces around the unbind. The first, with the entry still bound (masked), lets
    // the owner's accepted work complete normally (its message waits in the entry) instead
    // of being refused for an unbound handle when an engine picks it up. After the unbind
    // any descriptor the device validates is refused and raises nothing; one validated
    // before the unbind was accepted before the second quiesce, which waits for it. So no
    // work that names the entry survives into its next owner's time.
    let mut quiesce = |what: &str| match chip.storage.quiesce(h.index, h.pasid) {
        Ok(()) => true,
        Err(e) => {
            log::error!(
                "ims: entry {}: quiesce {what} unbinding failed: {e}",
                h.index
            );
            first_err.get_or_insert(ImsError::Storage(e));
            false
        }
    };
    let drained = quiesce("before");
    chip.storage.unbind(h.index);
    let quiesced = quiesce("after") && drained;
    let (cpu, vector, slot, route) = {
        let c = h.ctl.lock();
        (c.cpu, c.vector, c.slot, c.route)
    };
    // Last delivery on the handle's CPU, then leave it.
    let (d2, h2) = (d.clone(), h.clone());
    let mode = d.config.mode;
    let left = d.on_cpu(cpu, move || {
        let st = &d2.cpus[cpu];
        let mut t = st.table.lock();
        h2.sink.poll(&h2.delivered);
        if mode.one_vector_per_cpu() {
            let r = t.remove(slot, &h2);
            if r {
                st.clear_slot(slot);
            }
            r
        } else {
            false
        }
    });
    h.loc.store(HandleLocation::NOWHERE, SeqCst);
    let st = &d.cpus[cpu];
    match left {
        Ok(removed) => {
            if removed {
                st.handles.fetch_sub(1, SeqCst);
            }
        }
        Err(e) => {
            // DEAD keeps the handler away from it; only the slot stays taken.
            log::error!("ims: entry {}: leaving CPU {cpu}: {e}", h.index);
            first_err.get_or_insert(e);
        }
    }
    if mode == VectorMode::PerHandle {
        d.platform.clear_handler(cpu, vector);
        d.platform.free_vector(cpu, vector);
        st.vectors.fetch_sub(1, SeqCst);
        st.handles.fetch_sub(1, SeqCst);
    }
    let reuse = quiesced && {
        match chip.storage.clear(h.index) {
            Ok(()) => true,
            Err(e) => {
                log::error!("ims: entry {}: clear failed: {e}", h.index);
                first_err.get_or_insert(ImsError::Storage(e));
                false
            }
        }
    };
    if reuse {
        d.platform.free_route(route);
    }
    chip.unreserve(h.index, h.pasid, reuse);
    log::debug!(
        "ims: {}: entry {} released{}",
        chip.options.name,
        h.index,
        if reuse { "" } else { " and retired" }
    );
    match first_err {
        None => Ok(()),
        Some(e) => Err(e),
    }
}
