//! Submission contexts: the owner side of a [`queue`](crate::queue) ring.
//!
//! A [`Submitter`] is one CPU's (or one thread's) private path to one WQ for one client
//! (address space + privilege): its own ring of completion records, descriptor images and
//! batch lists in the client's address space. Submitting takes no lock and allocates
//! nothing: the descriptor is encoded directly into its 64-byte slot image from a template
//! of the submitter's fixed fields, then stored through the portal (MOVDIR64B for a dedicated
//! WQ, ENQCMDS for a shared one). Shared state touched per submission: one exchange on the
//! ring's own `in_submit` flag (what recovery waits for) and, with a bound IMS handle, the
//! handle's armed bit.
//!
//! Flow control on dedicated WQs: the submitter holds credits taken from the WQ's pool in
//! chunks (never more than the WQ size over all submitters); a descriptor needs one of them
//! while the device may hold it (its record not yet written). Credits go back to the pool
//! when the submitter finds its ring empty, and when it is dropped.
//!
//! Completions: [`Submitter::poll`] returns the result directly to the caller that finds the
//! record written (no read-modify-write); callbacks ([`Callback`]: a function pointer and a
//! cookie) are claimed once by whoever notices the completion first (interrupt, IMS pass,
//! the owner's reap, recovery). `submit_with_callback` and the other closure forms are
//! conveniences that box the closure; the hot paths use the function-pointer forms.

use crate::device::{Device, RunState, Wq};
use crate::dma::SharedDma;
use crate::encode::{self, Template};
use crate::error::{DsaError, OpError, PageFault};
use crate::hw::{AddressSpace, DmaError, EnqStatus, PortalPage};
use crate::ops::{Output, Resume, ValidationError, Work, WqLimits};
use crate::queue::{
    Callback, Completed, Credits, DONE, FREE, K_BATCH, K_SINGLE, PENDING_CB, PENDING_CBQ,
    PENDING_POLL, Ring, Tag,
};
use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;
use dsa_spec::completion::CR_SIZE;
use dsa_spec::desc::DESC_SIZE;
use dsa_spec::status as st;
use dsa_spec::{CompletionRecord, GenCap, Opcode, WqMode};
use log::{error, warn};

/// Whose descriptors these are: the address space their addresses (and completion records)
/// live in, and the privilege they run with on shared WQs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Requester {
    /// Where the descriptors' addresses are translated: no PASID, or a 20-bit PASID.
    pub space: AddressSpace,
    /// The descriptors' privilege bit (descriptor qword 0 bit 31, Intel DSA Architecture
    /// Specification rev 3.0, §8.1); honoured by shared WQs only.
    pub privileged: bool,
}

impl Requester {
    /// The kernel without PASID (dedicated WQs of a device without PASID use).
    pub const fn kernel() -> Requester {
        Requester {
            space: AddressSpace::NoPasid,
            privileged: true,
        }
    }
    /// A requester in the address space of `pasid` (20 bits), privileged or not.
    pub const fn pasid(pasid: u32, privileged: bool) -> Requester {
        Requester {
            space: AddressSpace::Pasid(pasid),
            privileged,
        }
    }
}

/// How a completion is noticed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// No interrupt: poll, wait, or let another party reap.
    Poll,
    /// The WQ's MSI-X vector ([`Device::handle_msix`]).
    Msix,
    /// A caller-supplied interrupt handle (IMS): the descriptor goes through the WQ's IMS
    /// portal and carries this handle; the caller arms the handle and its interrupt path
    /// calls [`Reaper::reap`].
    Handle(u16),
    /// The IMS handle bound with [`DsaIms::allocate_bound`](crate::DsaIms::allocate_bound):
    /// checked once at binding, armed by the submission itself.
    Ims,
}

/// Submitter sizing.
#[derive(Clone, Copy, Debug)]
pub struct SubmitterOptions {
    /// Completion-record slots (operations in flight at once from this submitter); rounded
    /// up to a power of two.
    pub slots: u16,
    /// Largest batch this submitter builds (0 = no batches).
    pub max_batch: u16,
    /// Default bound for [`Submitter::run`] and for draining on drop.
    pub timeout_ns: u64,
}

impl Default for SubmitterOptions {
    fn default() -> Self {
        SubmitterOptions {
            slots: 64,
            max_batch: 32,
            timeout_ns: 5_000_000_000,
        }
    }
}

/// Names one submitted operation of one submitter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    slot: u16,
    seq: u32,
}

/// An IMS handle bound to a submitter (see [`Submitter::bind_ims`]).
struct ImsBinding {
    armer: ims::Armer,
    template: Template,
}

/// Validation shortcuts decided once per submitter (the full check runs otherwise, and for
/// every refusal, so the errors are the same).
#[derive(Clone, Copy)]
struct Fast {
    /// One more than the largest Memory Move / Fill transfer (0: not supported).
    memmove_lim: u64,
    fill_lim: u64,
    noop: bool,
    overlap_ok: bool,
}

/// How a descriptor reaches a portal page.
#[derive(Clone, Copy)]
enum Store {
    Movdir64b(PortalPage),
    Enqcmds(PortalPage),
    /// Through the `Portals` trait (no direct stores: host fakes, or no ENQCMDS).
    Trait,
}

/// Reaps one submitter's completions from an interrupt path (e.g. the IMS demultiplexer).
#[derive(Clone)]
pub struct Reaper {
    ring: Arc<Ring>,
}

impl Reaper {
    /// Delivers every completed callback operation (callbacks run here). Never blocks.
    pub fn reap(&self) -> usize {
        self.ring.reap().0 as usize
    }
    /// [`Reaper::reap`], adding one to `count` for each operation before its callback runs.
    pub fn reap_counting(&self, count: &core::sync::atomic::AtomicU64) -> usize {
        self.ring.reap_counting(count).0 as usize
    }
    /// Operations submitted and not yet finished.
    pub fn outstanding(&self) -> u32 {
        self.ring.outstanding()
    }
    /// The ring (alive as long as this reaper).
    pub(crate) fn ring_ptr(&self) -> *const crate::queue::Ring {
        Arc::as_ptr(&self.ring)
    }
    /// One look and delivery for an interrupt path: delivered, and when nothing is
    /// outstanding the submission counter it was idle at (it stays idle while that word
    /// keeps the value).
    #[inline]
    pub fn deliver(
        &self,
        count: Option<&core::sync::atomic::AtomicU64>,
    ) -> (u32, Option<(&core::sync::atomic::AtomicU32, u32)>) {
        let (n, outstanding, head) = self.ring.reap_once(count);
        (n, (!outstanding).then_some((&self.ring.head, head)))
    }
    /// The ring's head index: every submission changes it before it can complete (the
    /// word `deliver` reports idleness by).
    pub fn head_word(&self) -> &core::sync::atomic::AtomicU32 {
        &self.ring.head
    }
    /// Whether a submission is between its run-state check and its portal store.
    pub fn submitting(&self) -> bool {
        self.ring.in_submit.load(Ordering::SeqCst)
    }
}

/// One CPU's submission context on one WQ for one client.
pub struct Submitter {
    dev: Arc<Device>,
    ring: Arc<Ring>,
    reg: usize,
    requester: Requester,
    dedicated: bool,
    /// Owner copies of the ring indices.
    head: u32,
    tail: u32,
    /// Dedicated WQ: the WQ's credit pool, the credits held, the most this submitter may
    /// hold, and the chunk size.
    pool: Option<Arc<Credits>>,
    credits: u32,
    /// Descriptors in flight the fast path allows: the credits held (dedicated WQ) or the
    /// ring's capacity (shared WQ).
    room: u32,
    credit_max: u32,
    chunk: u32,
    portal: u64,
    ims_portal: u64,
    /// How descriptors reach the WQ's portal page and its IMS portal page.
    store: Store,
    ims_store: Store,
    portal_slot: u32,
    tmpl: Template,
    /// Record 0's device address (record i is `CR_SIZE * i` further).
    cr0: u64,
    limits: WqLimits,
    fast: Fast,
    ims: Option<ImsBinding>,
    timeout_ns: u64,
    /// The MSI-X template and the device epoch it was made in (recovery may change the WQ's
    /// interrupt handle).
    msix: Option<(u64, Template)>,
    /// Per slot: its batch list may hold non-zero words 5–7 (a member encoded by the general
    /// encoder). Lists start zeroed (`SharedDma::new`) and the member fast path writes words
    /// 0–4 only, so a marked list is zeroed again before its next batch.
    list_dirty: Box<[bool]>,
}

impl core::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Submitter")
            .field("dsa", &self.dev.index())
            .field("wq", &self.ring.wq)
            .field("requester", &self.requester)
            .finish_non_exhaustive()
    }
}

/// A submission's kind of completion (the slot state it is published with).
#[derive(Clone, Copy)]
enum Deliver {
    Poll,
    Callback(Callback),
}

impl Submitter {
    /// Creates a context on WQ `wq` for `requester`, allocating its completion records (and
    /// batch lists) in the requester's address space.
    pub fn new(
        dev: &Arc<Device>,
        wq: u8,
        requester: Requester,
        opts: SubmitterOptions,
    ) -> Result<Submitter, DsaError> {
        let w = dev.wq(wq).ok_or(DsaError::NoSuchWq(wq))?;
        let request_pasid = match w.mode() {
            WqMode::Dedicated => {
                if w.space != Some(requester.space) {
                    return Err(DsaError::ClientMismatch(
                        "a dedicated WQ runs in its configured address space only",
                    ));
                }
                requester.space.pasid()
            }
            WqMode::Shared => {
                let Some(p) = requester.space.pasid() else {
                    return Err(DsaError::ClientMismatch(
                        "a shared WQ needs a PASID requester",
                    ));
                };
                if requester.privileged && !dev.pci_info().privileged_mode {
                    return Err(DsaError::ClientMismatch(
                        "privileged descriptors need PCI PASID privileged mode",
                    ));
                }
                Some(p)
            }
        };
        let nslots = (opts.slots.clamp(1, 4096) as usize).next_power_of_two();
        let dma = &dev.hw.dma;
        let crs = SharedDma::new(dma, requester.space, nslots * CR_SIZE, 64)?;
        let max_batch = u32::from(opts.max_batch)
            .min(w.limits.max_batch)
            .min(dev.caps.max_batch()) as usize;
        let (lists, member_crs, max_batch) = if max_batch >= 2 && dev.caps.supports(Opcode::Batch) {
            (
                Some(SharedDma::new(
                    dma,
                    requester.space,
                    nslots * max_batch * DESC_SIZE,
                    64,
                )?),
                Some(SharedDma::new(
                    dma,
                    requester.space,
                    nslots * max_batch * CR_SIZE,
                    64,
                )?),
                max_batch,
            )
        } else {
            (None, None, 0)
        };
        let cr0 = crs.dev_addr(0);
        let mut ring = Ring::new(wq, request_pasid, nslots, crs, lists, member_crs, max_batch)
            .ok_or(DmaError::BadRegion)?;
        // The condition under which `route_slow` gives this ring MSI-X completions.
        ring.msix = w.space == Some(AddressSpace::NoPasid) || w.msix_pasid == request_pasid;
        let ring = Arc::new(ring);
        let reg = dev
            .queues
            .registry(wq)
            .and_then(|r| r.insert(&ring))
            .ok_or(DsaError::TooManySubmitters)?;
        let dedicated = w.mode() == WqMode::Dedicated;
        let size = u32::from(w.size());
        // Direct stores when the portals allow them (and ENQCMDS for a shared WQ).
        let direct = dev
            .hw
            .portals
            .direct()
            .filter(|d| dedicated || d.has_enqcmds());
        let store = |off: u64| match direct.and_then(|d| d.page(off)) {
            Some(p) if dedicated => Store::Movdir64b(p),
            Some(p) => Store::Enqcmds(p),
            None => Store::Trait,
        };
        let (main_store, ims_store) = (store(w.portal()), store(w.ims_portal()));
        let tmpl = if dedicated {
            Template::new(0, false, None)
        } else {
            Template::new(request_pasid.unwrap_or(0), requester.privileged, None)
        };
        let g = dev.caps.gencap;
        let lim = |op: Opcode| {
            if dev.caps.supports(op) {
                w.limits.max_transfer.min(u64::from(u32::MAX)) + 1
            } else {
                0
            }
        };
        let fast = Fast {
            memmove_lim: lim(Opcode::MemMove),
            fill_lim: lim(Opcode::Fill),
            noop: dev.caps.supports(Opcode::Noop),
            overlap_ok: g.contains(GenCap::OVERLAPPING_COPY),
        };
        Ok(Submitter {
            dev: dev.clone(),
            ring,
            reg,
            requester,
            dedicated,
            head: 0,
            tail: 0,
            pool: dedicated.then(|| w.credits.clone()),
            credits: 0,
            room: if dedicated { 0 } else { nslots as u32 },
            credit_max: size.min(nslots as u32),
            chunk: (size / 4).max(1),
            portal: w.portal(),
            ims_portal: w.ims_portal(),
            store: main_store,
            ims_store,
            portal_slot: 0,
            tmpl,
            cr0,
            limits: w.limits,
            fast,
            ims: None,
            timeout_ns: opts.timeout_ns,
            msix: None,
            list_dirty: alloc::vec![false; if max_batch >= 2 { nslots } else { 0 }]
                .into_boxed_slice(),
        })
    }

    /// The device the submitter submits to.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
    /// The index of the WQ the submitter submits to.
    pub fn wq(&self) -> u8 {
        self.ring.wq
    }
    /// Whose descriptors these are (address space and privilege).
    pub fn requester(&self) -> Requester {
        self.requester
    }
    /// The PASID the device applies to this submitter's descriptors (None: no PASID).
    pub fn effective_pasid(&self) -> Option<u32> {
        self.ring.request_pasid
    }
    /// Largest batch [`Submitter::submit_batch`] accepts.
    pub fn max_batch(&self) -> usize {
        self.ring.max_batch
    }
    /// Completion-record slots (operations in flight at once).
    pub fn capacity(&self) -> usize {
        self.ring.cap()
    }
    /// Operations submitted and not yet finished.
    pub fn outstanding(&self) -> u32 {
        self.ring.outstanding()
    }
    /// Dedicated-WQ credits this submitter holds now.
    pub fn credits_held(&self) -> u32 {
        self.credits
    }
    /// Delivers completed callback operations (polling mode); returns how many.
    pub fn reap(&mut self) -> usize {
        let n = self.ring.reap_from(false).0 as usize;
        self.advance_tail();
        self.return_idle_credits();
        n
    }
    /// A handle for an interrupt path to reap this submitter.
    pub fn reaper(&self) -> Reaper {
        Reaper {
            ring: self.ring.clone(),
        }
    }

    /// Binds an IMS handle: checked once here (its device handle fits a descriptor); then
    /// [`Notify::Ims`] submissions carry it through the WQ's IMS portal and arm it
    /// themselves. The caller (`DsaIms::bind`) checks device and PASID.
    pub(crate) fn bind_ims(&mut self, armer: ims::Armer) -> Result<(), OpError> {
        let h = u16::try_from(armer.device_handle())
            .map_err(|_| OpError::InterruptUnavailable("IMS handle out of range"))?;
        let template = if self.dedicated {
            Template::new(0, false, Some(h))
        } else {
            Template::new(
                self.ring.request_pasid.unwrap_or(0),
                self.requester.privileged,
                Some(h),
            )
        };
        self.ims = Some(ImsBinding { armer, template });
        Ok(())
    }

    /// The bound IMS handle's arming capability, if any.
    pub fn bound_ims(&self) -> Option<&ims::Armer> {
        self.ims.as_ref().map(|b| &b.armer)
    }

    // ------------------------------------------------------------------ slots and credits

    /// Moves the owner's tail over slots that are free again.
    #[inline]
    fn advance_tail(&mut self) {
        let t0 = self.tail;
        while self.tail != self.head
            && self.ring.slot(self.tail).state.load(Ordering::Acquire) == FREE
        {
            self.tail = self.tail.wrapping_add(1);
        }
        if self.tail != t0 {
            self.ring.tail.store(self.tail, Ordering::Release);
        }
    }

    /// [`Submitter::advance_tail`] for callback submissions, on locals (the owner's indices
    /// and the ring's slot table are loaded once; `advance_tail`'s field updates through
    /// `self` reload them on every step).
    #[inline(always)]
    fn advance_tail_cb(&mut self) {
        let (mut t, h) = (self.tail, self.head);
        let ring = &*self.ring;
        if t == h || ring.slot(t).state.load(Ordering::Acquire) != FREE {
            return;
        }
        loop {
            t = t.wrapping_add(1);
            if t == h || ring.slot(t).state.load(Ordering::Acquire) != FREE {
                break;
            }
        }
        self.tail = t;
        ring.tail.store(t, Ordering::Release);
    }

    /// An empty ring gives its credits back (others may need them).
    #[inline(never)]
    fn return_idle_credits(&mut self) {
        if self.credits != 0 && self.head == self.tail {
            if let Some(p) = &self.pool {
                p.give(self.credits);
            }
            self.credits = 0;
            self.room = 0;
        }
    }

    /// The next slot, with room in the ring and (dedicated WQ) a credit for it. `cb`: the
    /// submission's completion goes to a callback.
    #[inline(always)]
    fn next_slot(&mut self, cb: bool) -> Result<usize, OpError> {
        // Keep the tail close behind callback slots (reapers free them behind the owner's
        // back, and interrupt paths scan from the tail). Polled slots move the tail when
        // they are collected; a lagging tail is caught up below when the room runs out.
        if cb {
            self.advance_tail_cb();
        }
        let used = self.head.wrapping_sub(self.tail);
        if used < self.room {
            return Ok((self.head & self.ring.mask) as usize);
        }
        // Dedicated WQ at its credits: another chunk while below its share (the common
        // case after the ring went idle and gave its credits back).
        if let Some(p) = &self.pool
            && used < self.credit_max
            && used == self.credits
        {
            let got = p.take(self.chunk.min(self.credit_max - self.credits));
            if got > 0 {
                self.credits += got;
                self.room = self.credits;
                return Ok((self.head & self.ring.mask) as usize);
            }
        }
        self.next_slot_slow()
    }

    #[inline(never)]
    fn next_slot_slow(&mut self) -> Result<usize, OpError> {
        let dev = self.dev.clone();
        let clock = dev.clock();
        let mut deadline = None;
        let mut waited = false;
        let cap = self.ring.mask + 1;
        loop {
            self.advance_tail();
            let used = self.head.wrapping_sub(self.tail);
            if used >= cap {
                // Every slot holds an unfinished or uncollected operation.
                self.ring.reap();
                self.advance_tail();
                if self.head.wrapping_sub(self.tail) >= cap {
                    return Err(OpError::NoFreeSlot);
                }
                continue;
            }
            if !self.dedicated || used < self.credits {
                return Ok((self.head & self.ring.mask) as usize);
            }
            // Another chunk while this submitter is below its share.
            let wq = dev.wq(self.ring.wq).ok_or(OpError::DeviceUnavailable)?;
            let want = self.chunk.min(self.credit_max.saturating_sub(self.credits));
            if want > 0 {
                let got = wq.credits.take(want);
                if got > 0 {
                    self.credits += got;
                    self.room = self.credits;
                    continue;
                }
            }
            // Finished operations waiting to be collected hold no WQ entry.
            if self.ring.in_device() < self.credits {
                return Ok((self.head & self.ring.mask) as usize);
            }
            if !waited {
                waited = true;
                dev.stats.credit_waits.fetch_add(1, Ordering::Relaxed);
            }
            // Credits come back as completions are reaped, by anyone.
            if dev.queues.reap_wq(self.ring.wq) == 0 {
                let now = clock.now_ns();
                if now >= *deadline.get_or_insert(now.saturating_add(dev.options.submit_timeout_ns))
                {
                    return Err(OpError::QueueFull);
                }
                clock.relax();
            }
        }
    }

    // ------------------------------------------------------------------ validation

    /// Validates `w` and writes its descriptor with completion record `cr` into `out`;
    /// returns whether its successful result is plain success ([`crate::queue::plain_op`]).
    #[inline(always)]
    fn build(
        &self,
        w: &Work,
        in_batch: bool,
        t: &Template,
        cr: u64,
        out: &mut [u64; 8],
    ) -> Result<bool, OpError> {
        if self.build_fast(w, in_batch, t, cr, out) {
            return Ok(true);
        }
        self.build_slow(w, in_batch, t, cr, out)
    }

    /// The common operations without option flags (a fence only inside a batch), checked
    /// and encoded in one pass: true when `w` was one of them, valid, and written (its
    /// result is plain). Everything else, and every refusal, goes through the full
    /// validation of `build_slow` (so the errors are the same).
    #[inline(always)]
    fn build_fast(
        &self,
        w: &Work,
        in_batch: bool,
        t: &Template,
        cr: u64,
        out: &mut [u64; 8],
    ) -> bool {
        if w.options() != 0 || (w.fence && !in_batch) {
            return false;
        }
        let fence = u64::from(w.fence) * (u64::from(dsa_spec::DescFlags::FENCE.bits()) << 32);
        let head = |op: Opcode| t.w0 | fence | ((op as u64) << 56);
        match w.op {
            // Addresses below 2^63 and a 32-bit length cannot overflow; others get the
            // exact checks of the full validation.
            crate::ops::Op::MemMove { src, dst, len } => {
                let l = u64::from(len);
                let ok = l < self.fast.memmove_lim
                    && (src | dst) >> 63 == 0
                    && (self.fast.overlap_ok || src >= dst + l || dst >= src + l);
                if ok {
                    *out = [head(Opcode::MemMove), cr, src, dst, l | t.w4, 0, 0, 0];
                }
                ok
            }
            crate::ops::Op::Fill { dst, len, pattern } => {
                let l = u64::from(len);
                let ok = l < self.fast.fill_lim && dst >> 63 == 0;
                if ok {
                    *out = [head(Opcode::Fill), cr, pattern, dst, l | t.w4, 0, 0, 0];
                }
                ok
            }
            crate::ops::Op::Noop if self.fast.noop => {
                *out = [head(Opcode::Noop), cr, 0, 0, t.w4, 0, 0, 0];
                true
            }
            _ => false,
        }
    }

    #[inline(never)]
    fn build_slow(
        &self,
        w: &Work,
        in_batch: bool,
        t: &Template,
        cr: u64,
        out: &mut [u64; 8],
    ) -> Result<bool, OpError> {
        self.check_slow(w, in_batch)?;
        encode::encode(w, t, cr, out);
        Ok(crate::queue::plain_op(&w.op))
    }

    #[inline(never)]
    fn check_slow(&self, w: &Work, in_batch: bool) -> Result<(), OpError> {
        w.validate(&self.dev.caps, &self.limits, in_batch)
            .map_err(OpError::from)
    }

    // ------------------------------------------------------------------ the store

    /// Template and portal for `notify` (the bound IMS handle's, the WQ's MSI-X handle's…).
    /// Returns the template, whether the IMS portal is used, and whether to arm the bound
    /// IMS handle.
    #[inline(always)]
    fn route(&mut self, notify: Notify) -> Result<(Template, bool, bool), OpError> {
        match notify {
            Notify::Poll => Ok((self.tmpl, false, false)),
            Notify::Ims => match &self.ims {
                Some(b) => Ok((b.template, true, true)),
                None => Err(OpError::InterruptUnavailable("no IMS handle bound")),
            },
            Notify::Msix => {
                let epoch = self.dev.epoch.load(Ordering::Acquire);
                match self.msix {
                    Some((e, t)) if e == epoch => Ok((t, false, false)),
                    _ => {
                        let (t, p) = self.route_slow(notify)?;
                        self.msix = Some((epoch, t));
                        Ok((t, p, false))
                    }
                }
            }
            Notify::Handle(_) => self.route_slow(notify).map(|(t, p)| (t, p, false)),
        }
    }

    /// The template of `notify` and whether it goes through the IMS portal.
    #[inline(never)]
    fn route_slow(&self, notify: Notify) -> Result<(Template, bool), OpError> {
        let wq: &Wq = self
            .dev
            .wq(self.ring.wq)
            .ok_or(OpError::DeviceUnavailable)?;
        let with = |h: u16| {
            let t = Template::new(0, false, Some(h));
            Template {
                w0: self.tmpl.w0 | t.w0,
                w4: t.w4,
            }
        };
        match notify {
            Notify::Msix => {
                let h = wq
                    .int_handle()
                    .ok_or(OpError::InterruptUnavailable("no MSI-X vector for this WQ"))?;
                let pasid_enabled = wq.space != Some(AddressSpace::NoPasid);
                if pasid_enabled && wq.msix_pasid != self.ring.request_pasid {
                    return Err(OpError::InterruptUnavailable(
                        "the WQ's MSI-X entry is bound to another PASID (poll or use an IMS handle)",
                    ));
                }
                Ok((with(h), false))
            }
            Notify::Handle(h) => {
                if self.dev.caps.ims_entries == 0 {
                    return Err(OpError::InterruptUnavailable("the device has no IMS"));
                }
                Ok((with(h), true))
            }
            Notify::Poll => Ok((self.tmpl, false)),
            Notify::Ims => Err(OpError::InterruptUnavailable("no IMS handle bound")),
        }
    }

    /// Publishes slot `k` (whose descriptor image and record are ready) and stores its
    /// descriptor through the portal (`ims`: the WQ's IMS portal). Dedicated WQ: the caller
    /// holds a credit for it. Shared WQ: retried (with back-off past `enqcmds_retries`)
    /// within the submit timeout.
    #[inline(always)]
    fn push(&mut self, k: u32, state: u8, ims: bool, arm: bool) -> Result<(), OpError> {
        if self.try_push(k, state, ims, arm)? {
            return Ok(());
        }
        self.push_retry(k, state, ims, arm)
    }

    /// A shared WQ refused the descriptor: retry within the bounds of `retry_wait`.
    #[inline(never)]
    fn push_retry(&mut self, k: u32, state: u8, ims: bool, arm: bool) -> Result<(), OpError> {
        let mut retry = (0, None);
        loop {
            self.retry_wait(&mut retry)?;
            if self.try_push(k, state, ims, arm)? {
                return Ok(());
            }
        }
    }

    /// One attempt of [`Submitter::push`]: false if the shared WQ refused the descriptor
    /// (the slot is taken back).
    #[inline(always)]
    fn try_push(&mut self, k: u32, state: u8, ims: bool, arm: bool) -> Result<bool, OpError> {
        {
            let ring = &*self.ring;
            let slot = ring.slot(k);
            // Recovery and drains set the run state first, then wait for this flag.
            ring.in_submit.swap(true, Ordering::SeqCst);
            if !self.dev.is_running() {
                ring.in_submit.store(false, Ordering::Release);
                return Err(OpError::DeviceUnavailable);
            }
            slot.state.store(state, Ordering::Release);
            let head = self.head;
            let next = head.wrapping_add(1);
            ring.head.store(next, Ordering::Release);
            // Armed after the slot is visible to the handle's sink and before the device
            // can complete it: the demultiplexer either sees the new head when it disarms
            // or this sets the bit again.
            // (A match, so the Ok path runs no drop glue of the error type.)
            if arm
                && let Some(b) = &self.ims
                && let Err(e) = b.armer.arm_published()
            {
                drop(e);
                return Err(self.unpublish(k, head));
            }
            // Spread stores over the 64 equivalent slots of the portal page (bits 11:6).
            let n = self.portal_slot;
            self.portal_slot = n.wrapping_add(1);
            // SAFETY: the image is this slot's, written by this owner before publication and
            // not changed until the slot is free again.
            let desc = unsafe { &*slot.desc.get() };
            let accepted = match if ims { self.ims_store } else { self.store } {
                Store::Movdir64b(p) => {
                    p.movdir64b(n, desc);
                    true
                }
                Store::Enqcmds(p) => p.enqcmds(n, desc),
                Store::Trait => self.store_slow(ims, n, desc),
            };
            if accepted {
                self.head = next;
                ring.in_submit.store(false, Ordering::Release);
                return Ok(true);
            }
            refused(ring, slot, head);
            Ok(false)
        }
    }

    /// The bound IMS handle was released between publication and the store: take slot `k`
    /// back (nothing was stored).
    #[cold]
    #[inline(never)]
    fn unpublish(&self, k: u32, head: u32) -> OpError {
        let ring = &*self.ring;
        ring.slot(k).state.store(FREE, Ordering::Release);
        ring.head.store(head, Ordering::Release);
        ring.in_submit.store(false, Ordering::Release);
        OpError::InterruptUnavailable("the IMS handle was released")
    }

    /// The store through the `Portals` trait (portals without direct stores: host fakes).
    #[inline(never)]
    fn store_slow(&self, ims: bool, n: u32, desc: &[u64; 8]) -> bool {
        let off = if ims { self.ims_portal } else { self.portal } + u64::from(n & 63) * 64;
        let mut bytes = [0u8; 64];
        for (b, w) in bytes.chunks_exact_mut(8).zip(desc) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        if self.dedicated {
            self.dev.hw.portals.movdir64b(off, &bytes);
            true
        } else {
            self.dev.hw.portals.enqcmds(off, &bytes) == EnqStatus::Accepted
        }
    }

    /// Between refused ENQCMDS attempts: immediate retries first, then exponential back-off,
    /// bounded by the submit timeout.
    /// `retry`: this submission's refused attempts and its deadline.
    #[inline(never)]
    fn retry_wait(&self, retry: &mut (u32, Option<u64>)) -> Result<(), OpError> {
        let dev = &*self.dev;
        dev.stats.enq_retries.fetch_add(1, Ordering::Relaxed);
        retry.0 += 1;
        let tries = retry.0;
        if tries <= dev.options.enqcmds_retries {
            return Ok(());
        }
        let clock = dev.clock();
        let now = clock.now_ns();
        let deadline = *retry
            .1
            .get_or_insert(now.saturating_add(dev.options.submit_timeout_ns));
        if now >= deadline {
            return Err(OpError::QueueFull);
        }
        let backoff = 1u32 << (tries - dev.options.enqcmds_retries - 1).min(6);
        clock.delay_us(backoff);
        Ok(())
    }

    // ------------------------------------------------------------------ single operations

    #[inline(always)]
    fn submit_single(
        &mut self,
        work: &Work,
        resumed: Option<(Work, u64)>,
        notify: Notify,
        deliver: Deliver,
    ) -> Result<Token, OpError> {
        let k = self.next_slot(matches!(deliver, Deliver::Callback(_)))?;
        let (tmpl, ims, arm) = self.route(notify)?;
        let ring = &*self.ring;
        let slot = ring.slot(k as u32);
        // SAFETY: slot `k` is FREE and owned by this submitter until published (slot
        // protocol): nothing else reads its image or metadata now.
        let (desc, meta) = unsafe { (&mut *slot.desc.get(), &mut *slot.meta.get()) };
        // The record is zeroed first (harmless if `work` is refused: the slot stays FREE).
        ring.recs.clear(k);
        let plain = self.build(work, false, &tmpl, self.cr0 + (k * CR_SIZE) as u64, desc)?;
        let seq = self.head;
        meta.tag = Tag::new(seq, K_SINGLE, plain, resumed.is_some(), 0);
        // A polled slot's callback is never read (only claims of callback slots call one).
        let state = match deliver {
            Deliver::Poll => PENDING_POLL,
            Deliver::Callback(cb) => {
                meta.cb = Some(cb);
                if matches!(notify, Notify::Poll) {
                    PENDING_CBQ
                } else {
                    PENDING_CB
                }
            }
        };
        if resumed.is_some() {
            // SAFETY: slot `k` is FREE and owned by this submitter until published.
            unsafe { (*ring.extra[k].get()).resumed = resumed };
        }
        self.push(k as u32, state, ims, arm)?;
        Ok(Token {
            slot: k as u16,
            seq,
        })
    }

    /// Submits one operation; the token is then polled or waited for.
    #[inline]
    pub fn submit(&mut self, work: &Work, notify: Notify) -> Result<Token, OpError> {
        self.submit_single(work, None, notify, Deliver::Poll)
    }

    /// Submits one operation whose result goes to `cb` (run by whoever notices the
    /// completion first: an interrupt handler, the owner's reap, or recovery). Allocates
    /// nothing.
    #[inline]
    pub fn submit_cb(&mut self, work: &Work, notify: Notify, cb: Callback) -> Result<(), OpError> {
        self.submit_single(work, None, notify, Deliver::Callback(cb))
            .map(|_| ())
    }

    /// [`Submitter::submit_cb`] with a closure (boxed: one allocation per operation).
    pub fn submit_with_callback(
        &mut self,
        work: &Work,
        notify: Notify,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        let (cb, undo) = boxed(cb);
        self.submit_cb(work, notify, cb).inspect_err(|_| undo())
    }

    /// Continues an operation that stopped at a page fault (after the mapping was fixed);
    /// the final result covers the whole original operation.
    pub fn resume(&mut self, r: &Resume, notify: Notify) -> Result<Token, OpError> {
        let mut rem = *r.remaining();
        rem.fence = false;
        let mut orig = r.original;
        orig.fence = false;
        self.submit_single(&rem, Some((orig, r.done())), notify, Deliver::Poll)
    }

    // ------------------------------------------------------------------ batches

    fn submit_batch_inner(
        &mut self,
        members: &[Work],
        notify: Notify,
        deliver: Deliver,
    ) -> Result<Token, OpError> {
        // `max_batch` is 0 when the device or the WQ cannot run batches (`new`).
        let max = self.ring.max_batch;
        if max == 0 {
            return Err(ValidationError::Unsupported(Opcode::Batch).into());
        }
        if members.len() < 2 || members.len() > max {
            return Err(ValidationError::BatchSize {
                count: members.len(),
                min: 2,
                max,
            }
            .into());
        }
        let (tmpl, ims, arm) = self.route(notify)?;
        let k = self.next_slot(matches!(deliver, Deliver::Callback(_)))?;
        let ring = &*self.ring;
        let (Some(lists), Some(mcrs)) = (&ring.lists, &ring.member_crs) else {
            return Err(ValidationError::Unsupported(Opcode::Batch).into());
        };
        // Members: no interrupt of their own; PASID and privilege come from the batch. One
        // pass validates and encodes each member into the slot's list and zeroes its record
        // (status and result: an abandoned member leaves it so); nothing is published if a
        // member is refused.
        let member_tmpl = Template::new(0, false, None);
        let list0 = ring.list_off(k, 0);
        let mcr0 = ring.mcr_off(k, 0);
        let mcr_dev = mcrs.dev_addr(mcr0);
        // Words 5–7 of a memmove, fill or no-op member are zero: the fast encoding leaves
        // them as they are, so a list the general encoder wrote is zeroed first (rare).
        if self.list_dirty[k] {
            lists.zero(list0, max * DESC_SIZE);
            self.list_dirty[k] = false;
        }
        let mut plain = true;
        let mut refused = None;
        let mut dirty = false;
        let n = members.len();
        let this = &*self;
        lists.with_descs(list0, n, |descs| {
            mcrs.with_records(mcr0, n, |recs| {
                // The common case first: a run of plain memmoves, in a loop of its own.
                let done = encode_memmoves(descs, recs, members, mcr_dev, &this.fast);
                let mut cr = mcr_dev + (done * CR_SIZE) as u64;
                let rest = descs[done..]
                    .iter_mut()
                    .zip(recs[done..].iter_mut())
                    .zip(&members[done..]);
                for ((d, r), m) in rest {
                    r[0] = 0;
                    if !this.build_fast(m, true, &member_tmpl, cr, d) {
                        dirty = true;
                        match this.build_slow(m, true, &member_tmpl, cr, d) {
                            Ok(p) => plain &= p,
                            Err(e) => {
                                refused = Some(e);
                                return;
                            }
                        }
                    }
                    cr += CR_SIZE as u64;
                }
            });
        });
        if dirty {
            self.list_dirty[k] = true;
        }
        if let Some(e) = refused {
            return Err(e);
        }
        let cr_off = Ring::cr_off(k);
        ring.recs.clear(k);
        let slot = ring.slot(k as u32);
        // SAFETY: slot `k` is FREE and owned by this submitter until published.
        let (desc, meta) = unsafe { (&mut *slot.desc.get(), &mut *slot.meta.get()) };
        *desc = [
            tmpl.w0 | ((Opcode::Batch as u64) << 56),
            self.cr0 + cr_off as u64,
            lists.dev_addr(list0),
            0,
            members.len() as u64 | tmpl.w4,
            0,
            0,
            0,
        ];
        let seq = self.head;
        meta.tag = Tag::new(seq, K_BATCH, plain, false, members.len() as u16);
        // A polled slot's callback is never read (only claims of callback slots call one).
        let state = match deliver {
            Deliver::Poll => PENDING_POLL,
            Deliver::Callback(cb) => {
                meta.cb = Some(cb);
                if matches!(notify, Notify::Poll) {
                    PENDING_CBQ
                } else {
                    PENDING_CB
                }
            }
        };
        self.push(k as u32, state, ims, arm)?;
        Ok(Token {
            slot: k as u16,
            seq,
        })
    }

    /// Submits a batch of 2..=max members (members may carry `fence`).
    pub fn submit_batch(&mut self, members: &[Work], notify: Notify) -> Result<Token, OpError> {
        self.submit_batch_inner(members, notify, Deliver::Poll)
    }

    /// Submits a batch whose completion goes to `cb` (members through
    /// [`Completed::members`]). Allocates nothing.
    pub fn submit_batch_cb(
        &mut self,
        members: &[Work],
        notify: Notify,
        cb: Callback,
    ) -> Result<(), OpError> {
        self.submit_batch_inner(members, notify, Deliver::Callback(cb))
            .map(|_| ())
    }

    /// Submits a batch whose result ([`Output::Batch`]) goes to a closure (boxed).
    pub fn submit_batch_with_callback(
        &mut self,
        members: &[Work],
        notify: Notify,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        let (cb, undo) = boxed(cb);
        self.submit_batch_cb(members, notify, cb)
            .inspect_err(|_| undo())
    }

    // ------------------------------------------------------------------ completion

    /// Finishes slot `k` of token `t` if its record is written: the result goes straight to
    /// the caller. `out` receives batch members.
    #[inline(always)]
    fn take(
        &mut self,
        t: Token,
        out: Option<&mut [Result<Output, OpError>]>,
    ) -> Option<Result<Completed2, OpError>> {
        let k = t.slot as usize;
        let ring = &*self.ring;
        let slot = ring.slot_at(k)?;
        // SAFETY: only the owner writes metadata, and only while a slot is FREE: reading
        // `seq` of one of its own slots races with nobody.
        let meta = unsafe { &*slot.meta.get() };
        if meta.tag.seq() != t.seq {
            return Some(Err(OpError::BadToken));
        }
        let r = match slot.state.load(Ordering::Acquire) {
            PENDING_POLL => {
                if ring.status(k) == st::NOT_COMPLETE {
                    return None;
                }
                // Written records are never claimed by a sweep: the slot is the owner's.
                let done = ring.completed(k, meta);
                let r = if done.is_batch() {
                    match done.result() {
                        Ok(_) => {
                            let n = match out {
                                Some(o) => done.members().write_to(o),
                                None => 0,
                            };
                            Ok(Completed2::Batch(n, done.members().len()))
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    done.result().map(Completed2::Single)
                };
                slot.state.store(FREE, Ordering::Release);
                r
            }
            DONE => {
                // SAFETY: the sweep stored `parked` before its DONE release store.
                let e = unsafe { (*ring.extra[k].get()).parked.take() };
                slot.state.store(FREE, Ordering::Release);
                Err(e.unwrap_or(OpError::Aborted))
            }
            crate::queue::CLAIMED => return None,
            _ => return Some(Err(OpError::BadToken)),
        };
        if (self.tail & ring.mask) as usize == k {
            self.advance_tail();
            self.return_idle_credits();
        }
        Some(r)
    }

    /// The result if the operation finished (None while in flight). A batch's result is
    /// [`Output::Batch`] (allocated; [`Submitter::poll_batch`] allocates nothing).
    #[inline]
    pub fn poll(&mut self, t: Token) -> Option<Result<Output, OpError>> {
        let k = t.slot as usize;
        // The common case first: a single operation whose record says plain success.
        if let Some(s) = self.ring.slot_at(k) {
            // SAFETY: the owner's own metadata (see `take`).
            let meta = unsafe { &*s.meta.get() };
            // One compare: this submission, a single operation, plain, not resumed.
            if meta.tag == Tag::new(t.seq, K_SINGLE, true, false, 0)
                && s.state.load(Ordering::Acquire) == PENDING_POLL
            {
                // A successful plain operation reads only its status byte.
                let status = self.ring.recs.status(k);
                if status == st::SUCCESS {
                    s.state.store(FREE, Ordering::Release);
                    self.collected(k);
                    return Some(Ok(Output::Done));
                }
                if status == st::NOT_COMPLETE {
                    return None;
                }
            }
        }
        self.poll_slow(t)
    }

    /// The owner freed slot `k`: move the tail past it if it is the oldest (the usual
    /// order: one step; others catch up later), and give idle credits back.
    #[inline(always)]
    fn collected(&mut self, k: usize) {
        if (self.tail & self.ring.mask) as usize == k {
            self.tail = self.tail.wrapping_add(1);
            self.ring.tail.store(self.tail, Ordering::Release);
            if self.tail == self.head {
                self.return_idle_credits();
            }
        }
    }

    /// A batch's outcome if it finished (None while in flight). When the batch completed
    /// with status Success and every member's successful result is plain success, nothing
    /// is read or written per member: the answer is [`BatchDone`] with `all_ok` (every
    /// member's result is `Ok(Output::Done)`) and `out` is left as it was. Otherwise the
    /// member results go into `out` as with [`Submitter::poll_batch`]. Allocates nothing.
    #[inline]
    pub fn poll_batch_summary(
        &mut self,
        t: Token,
        out: &mut [Result<Output, OpError>],
    ) -> Option<Result<BatchDone, OpError>> {
        let k = t.slot as usize;
        if let Some(s) = self.ring.slot_at(k) {
            // SAFETY: the owner's own metadata (see `take`).
            let meta = unsafe { &*s.meta.get() };
            // One compare: this submission, a batch, every member plain, not resumed (the
            // member count above bit 48 is left out).
            let head = meta.tag.0 & ((1 << 48) - 1);
            if head == Tag::new(t.seq, K_BATCH, true, false, 0).0
                && s.state.load(Ordering::Acquire) == PENDING_POLL
            {
                // A batch's status Success means every member succeeded.
                let status = self.ring.recs.status(k);
                if status == st::SUCCESS {
                    let members = meta.tag.members() as usize;
                    s.state.store(FREE, Ordering::Release);
                    self.collected(k);
                    return Some(Ok(BatchDone {
                        members,
                        all_ok: true,
                    }));
                }
                if status == st::NOT_COMPLETE {
                    return None;
                }
            }
        }
        self.poll_batch(t, out).map(|r| {
            r.map(|members| BatchDone {
                members,
                all_ok: false,
            })
        })
    }

    #[inline(never)]
    fn poll_slow(&mut self, t: Token) -> Option<Result<Output, OpError>> {
        let k = t.slot as usize;
        let is_batch = self
            .ring
            .slot_at(k)
            // SAFETY: the owner's own metadata (see `take`).
            .is_some_and(|s| unsafe { (*s.meta.get()).tag.kind() } == K_BATCH);
        if !is_batch {
            return self.take(t, None).map(|r| {
                r.map(|c| match c {
                    Completed2::Single(o) => o,
                    Completed2::Batch(..) => Output::Done,
                })
            });
        }
        let n = self.ring.max_batch;
        let mut v: alloc::vec::Vec<Result<Output, OpError>> =
            (0..n).map(|_| Ok(Output::Done)).collect();
        let r = self.take(t, Some(&mut v))?;
        Some(r.map(|c| match c {
            Completed2::Batch(k, _) => {
                v.truncate(k);
                Output::Batch(v)
            }
            Completed2::Single(o) => o,
        }))
    }

    /// A batch's result if it finished: member results go into `out` (one per member, at
    /// most `out.len()`), and the number of members is returned. Allocates nothing.
    #[inline]
    pub fn poll_batch(
        &mut self,
        t: Token,
        out: &mut [Result<Output, OpError>],
    ) -> Option<Result<usize, OpError>> {
        self.take(t, Some(out)).map(|r| {
            r.map(|c| match c {
                Completed2::Batch(_, n) => n,
                Completed2::Single(_) => 1,
            })
        })
    }

    /// The raw completion record of a finished operation, as the device wrote it (None
    /// while in flight or for a stale token). Valid until the slot is reused by a later
    /// submission of this submitter.
    pub fn completion_record(&self, t: Token) -> Option<CompletionRecord> {
        let k = t.slot as usize;
        let s = self.ring.slot_at(k)?;
        // SAFETY: the owner's own metadata (see `take`).
        if unsafe { (*s.meta.get()).tag.seq() } != t.seq {
            return None;
        }
        match s.state.load(Ordering::Acquire) {
            FREE | DONE => Some(read_record(&self.ring.crs, Ring::cr_off(k))),
            _ => None,
        }
    }

    /// The completion record of member `j` of a finished batch (see
    /// [`Submitter::completion_record`]).
    pub fn batch_member_record(&self, t: Token, j: usize) -> Option<CompletionRecord> {
        self.completion_record(t)?;
        if j >= self.ring.max_batch {
            return None;
        }
        let mcrs = self.ring.member_crs.as_ref()?;
        Some(read_record(mcrs, self.ring.mcr_off(t.slot as usize, j)))
    }

    /// Waits (bounded) for an operation. On `Timeout` the token stays valid. A halt noticed
    /// while waiting triggers recovery, which finishes or fails back every operation.
    pub fn wait(&mut self, t: Token, timeout_ns: u64) -> Result<Output, OpError> {
        let clock = self.dev.hw.clock.clone();
        hwio::wait_until(&*clock, timeout_ns, || {
            let r = self.poll(t);
            if r.is_none()
                && self.dev.state() == RunState::Halted
                && let Err(e) = self.dev.recover()
            {
                warn!(
                    "dsa{}: recovery from a waiter failed: {e}",
                    self.dev.index()
                );
            }
            r
        })
        .unwrap_or(Err(OpError::Timeout))
    }

    /// Synchronous helper: submit (polling) and wait with the default timeout.
    pub fn run(&mut self, work: &Work) -> Result<Output, OpError> {
        let t = self.submit(work, Notify::Poll)?;
        self.wait(t, self.timeout_ns)
    }

    /// Synchronous batch.
    pub fn run_batch(&mut self, members: &[Work]) -> Result<Output, OpError> {
        let t = self.submit_batch(members, Notify::Poll)?;
        self.wait(t, self.timeout_ns)
    }

    /// Synchronous operation that resumes after page faults: `fix` is called with each
    /// fault (address, write) and returns whether the mapping was fixed.
    pub fn run_resuming(
        &mut self,
        work: &Work,
        mut fix: impl FnMut(u64, bool) -> bool,
        max_faults: usize,
    ) -> Result<Output, OpError> {
        let mut r = self.run(work);
        for _ in 0..max_faults {
            match r {
                Err(OpError::PageFault(PageFault {
                    addr,
                    write,
                    resume: Some(ref res),
                    ..
                })) if fix(addr, write) => {
                    let res = **res;
                    let t = self.resume(&res, Notify::Poll)?;
                    r = self.wait(t, self.timeout_ns);
                }
                _ => return r,
            }
        }
        r
    }
}

/// Encodes the leading run of `members` that are memmoves without option flags (a fence
/// allowed) and pass `build_fast`'s checks into `descs` (words 0–4: words 5–7 of the list
/// are zero, see `Submitter::list_dirty`) and zeroes their records' first words; the
/// records' device addresses start at `cr`. Returns how many it encoded: the caller
/// handles the rest (and every refusal) the general way. Kept out of line so its loop holds
/// everything in registers.
#[inline(never)]
fn encode_memmoves(
    descs: &mut [[u64; 8]],
    recs: &mut [[u64; 4]],
    members: &[Work],
    mut cr: u64,
    fast: &Fast,
) -> usize {
    // Batch members: no interrupt of their own, PASID and privilege from the batch
    // (`Template::new(0, false, None)`), so word 0 is CRAV | RCR, the opcode and the fence.
    let head = Template::new(0, false, None).w0 | ((Opcode::MemMove as u64) << 56);
    let fence_bit = u64::from(dsa_spec::DescFlags::FENCE.bits()) << 32;
    let (lim, overlap_ok) = (fast.memmove_lim, fast.overlap_ok);
    let mut done = 0;
    for ((d, r), m) in descs.iter_mut().zip(recs.iter_mut()).zip(members) {
        let crate::ops::Op::MemMove { src, dst, len } = m.op else {
            break;
        };
        let l = u64::from(len);
        // Addresses below 2^63 and a 32-bit length cannot overflow.
        let ok = m.options() == 0
            && l < lim
            && (src | dst) >> 63 == 0
            && (overlap_ok || src >= dst + l || dst >= src + l);
        if !ok {
            break;
        }
        r[0] = 0;
        d[0] = head | (u64::from(m.fence) * fence_bit);
        d[1] = cr;
        d[2] = src;
        d[3] = dst;
        d[4] = l;
        cr += CR_SIZE as u64;
        done += 1;
    }
    done
}

/// A shared WQ refused a descriptor: take its slot back (nobody claims a record that is
/// unwritten, and recovery waits for `in_submit`). Out of line and cold, so the accepted
/// store is the straight path.
#[cold]
#[inline(never)]
fn refused(ring: &Ring, slot: &crate::queue::RecordSlot, head: u32) {
    slot.state.store(FREE, Ordering::Release);
    ring.head.store(head, Ordering::Release);
    ring.in_submit.store(false, Ordering::Release);
}

/// What [`Submitter::poll_batch_summary`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchDone {
    /// Members of the batch.
    pub members: usize,
    /// Every member succeeded with result `Ok(Output::Done)`; the caller's member slice was
    /// not written.
    pub all_ok: bool,
}

/// What `take` found.
enum Completed2 {
    Single(Output),
    /// Members written to `out`, members.
    Batch(usize, usize),
}

fn read_record(buf: &SharedDma, off: usize) -> CompletionRecord {
    let mut b = [0u8; CR_SIZE];
    for i in 0..CR_SIZE / 8 {
        b[8 * i..8 * i + 8].copy_from_slice(&buf.word(off + 8 * i).to_le_bytes());
    }
    CompletionRecord::from_bytes(&b)
}

type Boxed = Box<dyn FnOnce(Result<Output, OpError>) + Send>;

/// A closure as a [`Callback`] (one allocation), and how to free it if the submission fails.
fn boxed(cb: impl FnOnce(Result<Output, OpError>) + Send + 'static) -> (Callback, impl FnOnce()) {
    fn call(cookie: usize, done: &Completed<'_>) {
        // SAFETY: `cookie` is the `Box<Boxed>` leaked by `boxed`; a callback runs exactly
        // once (slot claim), so the box is taken back exactly once.
        let f = unsafe { Box::from_raw(cookie as *mut Boxed) };
        f(done.into_result());
    }
    let b: Box<Boxed> = Box::new(Box::new(cb));
    let cookie = Box::into_raw(b) as usize;
    (Callback { f: call, cookie }, move || {
        // SAFETY: the submission failed, so the callback will never run: reclaim the box.
        drop(unsafe { Box::from_raw(cookie as *mut Boxed) });
    })
}

impl Drop for Submitter {
    fn drop(&mut self) {
        let clock = self.dev.hw.clock.clone();
        // Bounded: what is still outstanding afterwards is accounted for below.
        let _ = hwio::wait_until(&*clock, self.timeout_ns, || {
            if self.ring.outstanding() == 0 {
                return Some(());
            }
            self.ring.reap_from(false);
            if self.dev.state() == RunState::Halted {
                let _ = self.dev.recover();
            }
            None
        });
        self.ims = None;
        let left = self.ring.in_device();
        if let Some(r) = self.dev.queues.registry(self.ring.wq) {
            let deadline = clock.now_ns().saturating_add(self.timeout_ns);
            r.remove(self.reg, || {
                clock.relax();
                clock.now_ns() < deadline
            });
        }
        if let Some(w) = self.dev.wq(self.ring.wq) {
            // Credits of descriptors the device may still hold stay taken.
            w.credits.give(self.credits.saturating_sub(left));
        }
        if left != 0 || self.ring.outstanding() != 0 {
            // The device may still write these records: never give the memory back.
            error!(
                "dsa{}: submitter dropped with {left} operation(s) in flight; leaking its DMA memory",
                self.dev.index()
            );
            self.ring.crs.leak();
            if let Some(b) = &self.ring.lists {
                b.leak();
            }
            if let Some(b) = &self.ring.member_crs {
                b.leak();
            }
        }
    }
}
