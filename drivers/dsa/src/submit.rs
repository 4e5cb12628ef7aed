//! Submission contexts and completion tracking.
//!
//! A [`Submitter`] is one CPU's (or one thread's) private path to one WQ for one client
//! (address space + privilege): its own completion-record pool and batch lists in the
//! client's address space, so submitting takes no lock shared with other CPUs. The only
//! shared state on the submit path is the WQ's credit counter (an atomic) and the device's
//! run state.
//!
//! Each completion-record slot moves through FREE → PENDING → CLAIMED → DONE → FREE (or
//! CLAIMED → FREE when a callback consumes the result). Only the owning submitter takes a
//! FREE slot; whoever wins the PENDING → CLAIMED compare-exchange (the owner polling, an
//! interrupt handler reaping, recovery failing it back) alone finishes it, so a slot's data
//! lock is never contended. A slot is *watched* ([`ims::CompletionWatch`]) from just before
//! its portal store until it is claimed: reaping visits only watched slots, and the IMS
//! demultiplexer reads the watched slots' status bytes to tell whether a reap would find
//! anything.

use crate::device::{Device, Wq};
use crate::dma::DmaBuf;
use crate::error::{DsaError, OpError, PageFault};
use crate::hw::AddressSpace;
use crate::ops::{self, Output, Resume, ValidationError, Work};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use dsa_spec::completion::CR_SIZE;
use dsa_spec::desc::DESC_SIZE;
use dsa_spec::status as st;
use dsa_spec::{CompletionRecord, DescFlags, Descriptor, Opcode, WqMode};
use ims::CompletionWatch;
use log::{error, warn};

const FREE: u8 = 0;
const PENDING: u8 = 1;
const CLAIMED: u8 = 2;
const DONE: u8 = 3;

/// Whose descriptors these are: the address space their addresses (and completion records)
/// live in, and the privilege they run with on shared WQs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub space: AddressSpace,
    pub privileged: bool,
}

impl Client {
    /// The kernel without PASID (dedicated WQs of a device without PASID use).
    pub const fn kernel() -> Client {
        Client {
            space: AddressSpace::NoPasid,
            privileged: true,
        }
    }
    pub const fn pasid(pasid: u32, privileged: bool) -> Client {
        Client {
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
    /// portal and carries this handle; the caller's interrupt path calls [`Reaper::reap`].
    Handle(u16),
}

/// Submitter sizing.
#[derive(Clone, Copy, Debug)]
pub struct SubmitterOptions {
    /// Completion-record slots (operations in flight at once from this submitter).
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

type Callback = Box<dyn FnOnce(Result<Output, OpError>) + Send>;

enum Kind {
    None,
    Single {
        work: Work,
        original: Work,
        done: u64,
    },
    Batch(Vec<Work>),
}

struct SlotData {
    kind: Kind,
    callback: Option<Callback>,
    result: Option<Result<Output, OpError>>,
    credit: bool,
}

struct Slot {
    state: AtomicU8,
    seq: AtomicU32,
    data: spin::Mutex<SlotData>,
}

/// The part of a submitter other parties (interrupts, recovery) reach.
pub struct Shared {
    pub(crate) wq: u8,
    /// The PASID the device applies to these descriptors (None: no PASID).
    pub(crate) eff_pasid: Option<u32>,
    client: Client,
    slots: Vec<Slot>,
    crs: Arc<DmaBuf>,
    /// Which slots' completion records the device may still write (set before the portal
    /// store, cleared by whoever claims the completion): what the IMS demultiplexer checks
    /// without calling into the sink, and what `reap` visits.
    watch: Arc<CompletionWatch>,
    lists: Option<DmaBuf>,
    member_crs: Option<DmaBuf>,
    max_batch: usize,
    pending: AtomicU32,
}

impl Shared {
    fn cr_off(i: usize) -> usize {
        i * CR_SIZE
    }
    fn list_off(&self, i: usize, j: usize) -> usize {
        (i * self.max_batch + j) * DESC_SIZE
    }
    fn mcr_off(&self, i: usize, j: usize) -> usize {
        (i * self.max_batch + j) * CR_SIZE
    }

    fn read_cr(buf: &DmaBuf, off: usize) -> CompletionRecord {
        let mut b = [0u8; CR_SIZE];
        buf.read(off, &mut b);
        CompletionRecord::from_bytes(&b)
    }

    /// Finishes every PENDING slot whose completion record was written. Interrupt safe.
    ///
    /// Visits the watched slots only: a slot is watched from before its portal store until
    /// it is claimed, so one the device may have written is never missed.
    pub(crate) fn reap(&self, dev: &Device) -> usize {
        self.reap_counting(dev, None)
    }

    /// [`Shared::reap`], adding one to `count` for each operation before its callback runs.
    pub(crate) fn reap_counting(&self, dev: &Device, count: Option<&AtomicU64>) -> usize {
        let mut n = 0;
        self.watch.for_each_watched(|i| {
            if self.try_finish(dev, i, count) {
                n += 1;
            }
        });
        n
    }

    /// Finishes slot `i` if it is PENDING and complete (counted into `count`).
    fn try_finish(&self, dev: &Device, i: usize, count: Option<&AtomicU64>) -> bool {
        let Some(s) = self.slots.get(i) else {
            return false;
        };
        if s.state.load(Ordering::Acquire) != PENDING
            || self.crs.load_status(Self::cr_off(i)) == st::NOT_COMPLETE
            || !self.claim(i)
        {
            return false;
        }
        self.finish(dev, i, None, count);
        true
    }

    /// PENDING → CLAIMED: the caller alone finishes slot `i` now. The slot stops being
    /// watched (its completion is the claimer's to deliver).
    fn claim(&self, i: usize) -> bool {
        let won = self.slots[i]
            .state
            .compare_exchange(PENDING, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.watch.unwatch(i);
        }
        won
    }

    /// Fails every PENDING slot without a completion record whose record address matches
    /// `pick` (completed ones are finished normally). Only valid when the device can no
    /// longer write those records.
    pub(crate) fn fail_pending(&self, dev: &Device, pick: impl Fn(u64) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.state.load(Ordering::Acquire) != PENDING
                || !pick(self.crs.dev_addr(Self::cr_off(i)))
                || !self.claim(i)
            {
                continue;
            }
            let written = self.crs.load_status(Self::cr_off(i)) != st::NOT_COMPLETE;
            self.finish(dev, i, (!written).then_some(OpError::Aborted), None);
            n += 1;
        }
        n
    }

    /// Completes a CLAIMED slot: decodes (or takes `err`), returns the credit, counts the
    /// delivery into `count` (before the callback can observe it), delivers.
    fn finish(&self, dev: &Device, i: usize, err: Option<OpError>, count: Option<&AtomicU64>) {
        let s = &self.slots[i];
        let mut d = s.data.lock();
        let result = match err {
            Some(e) => Err(e),
            None => {
                let cr = Self::read_cr(&self.crs, Self::cr_off(i));
                match d.kind {
                    Kind::Single {
                        ref work,
                        ref original,
                        done,
                    } => ops::decode(work, original, done, &cr),
                    Kind::Batch(ref members) => self.decode_batch(i, members, &cr),
                    Kind::None => Err(OpError::BadToken),
                }
            }
        };
        if core::mem::take(&mut d.credit)
            && let Some(wq) = dev.wq(self.wq)
        {
            wq.put_credit();
        }
        d.kind = Kind::None;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        if let Some(c) = count {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(cb) = d.callback.take() {
            drop(d);
            s.state.store(FREE, Ordering::Release);
            cb(result);
        } else {
            d.result = Some(result);
            drop(d);
            s.state.store(DONE, Ordering::Release);
        }
    }

    fn decode_batch(
        &self,
        i: usize,
        members: &[Work],
        cr: &CompletionRecord,
    ) -> Result<Output, OpError> {
        let code = cr.status_code();
        match code {
            st::SUCCESS | st::BATCH_FAIL => {}
            st::BATCH_PAGE_FAULT => {
                return Err(OpError::PageFault(PageFault {
                    addr: cr.fault_addr,
                    write: cr.fault_is_write(),
                    completed: cr.bytes_completed as u64,
                    resume: None,
                }));
            }
            st::INVALID_FLAGS => {
                return Err(OpError::InvalidFlags {
                    bits: cr.invalid_flags() & 0xFF_FFFF,
                });
            }
            _ => return Err(OpError::Status { code }),
        }
        let Some(mcrs) = &self.member_crs else {
            return Err(OpError::BadToken);
        };
        let out = members
            .iter()
            .enumerate()
            .map(|(j, m)| {
                let mcr = Self::read_cr(mcrs, self.mcr_off(i, j));
                if mcr.status_code() == st::NOT_COMPLETE {
                    Err(OpError::Abandoned)
                } else {
                    ops::decode(m, m, 0, &mcr)
                }
            })
            .collect();
        Ok(Output::Batch(out))
    }
}

/// Reaps one submitter's completions from an interrupt path (e.g. the IMS demultiplexer).
#[derive(Clone)]
pub struct Reaper {
    dev: Arc<Device>,
    shared: Arc<Shared>,
}

impl Reaper {
    /// Finishes every completed operation (callbacks run here). Never blocks.
    pub fn reap(&self) -> usize {
        self.shared.reap(&self.dev)
    }
    /// [`Reaper::reap`], adding one to `count` for each operation before its callback runs
    /// (or its result becomes visible to the owner).
    pub fn reap_counting(&self, count: &AtomicU64) -> usize {
        self.shared.reap_counting(&self.dev, Some(count))
    }
    /// Operations submitted and not yet finished (counted before the portal store).
    pub fn outstanding(&self) -> u32 {
        self.shared.pending.load(Ordering::Acquire)
    }
    /// Which of the submitter's completion records the device may still write (the IMS
    /// demultiplexer's check).
    pub fn completion_watch(&self) -> &Arc<CompletionWatch> {
        &self.shared.watch
    }
}

/// One CPU's submission context on one WQ for one client.
pub struct Submitter {
    dev: Arc<Device>,
    shared: Arc<Shared>,
    reg: usize,
    cursor: usize,
    portal_slot: u64,
    timeout_ns: u64,
}

impl core::fmt::Debug for Submitter {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Submitter")
            .field("dsa", &self.dev.index())
            .field("wq", &self.shared.wq)
            .field("client", &self.shared.client)
            .finish_non_exhaustive()
    }
}

impl Submitter {
    /// Creates a context on WQ `wq` for `client`, allocating its completion records (and
    /// batch lists) in the client's address space.
    pub fn new(
        dev: &Arc<Device>,
        wq: u8,
        client: Client,
        opts: SubmitterOptions,
    ) -> Result<Submitter, DsaError> {
        let w = dev.wq(wq).ok_or(DsaError::NoSuchWq(wq))?;
        let eff_pasid = match w.mode() {
            WqMode::Dedicated => {
                if w.space != Some(client.space) {
                    return Err(DsaError::ClientMismatch(
                        "a dedicated WQ runs in its configured address space only",
                    ));
                }
                client.space.pasid()
            }
            WqMode::Shared => {
                let Some(p) = client.space.pasid() else {
                    return Err(DsaError::ClientMismatch("a shared WQ needs a PASID client"));
                };
                if client.privileged && !dev.pci_info().privileged_mode {
                    return Err(DsaError::ClientMismatch(
                        "privileged descriptors need PCI PASID privileged mode",
                    ));
                }
                Some(p)
            }
        };
        let nslots = opts.slots.clamp(1, 4096) as usize;
        let dma = &dev.hw.dma;
        let crs = Arc::new(DmaBuf::new(dma, client.space, nslots * CR_SIZE, 64)?);
        let watch = Arc::new(
            crs.completion_watch(0, CR_SIZE, nslots)
                .ok_or(DsaError::Dma(crate::hw::DmaError::BadRegion))?,
        );
        let max_batch = (opts.max_batch as u32)
            .min(w.limits.max_batch)
            .min(dev.caps.max_batch()) as usize;
        let (lists, member_crs, max_batch) = if max_batch >= 2 && dev.caps.supports(Opcode::Batch) {
            (
                Some(DmaBuf::new(
                    dma,
                    client.space,
                    nslots * max_batch * DESC_SIZE,
                    64,
                )?),
                Some(DmaBuf::new(
                    dma,
                    client.space,
                    nslots * max_batch * CR_SIZE,
                    64,
                )?),
                max_batch,
            )
        } else {
            (None, None, 0)
        };
        let slots = (0..nslots)
            .map(|_| Slot {
                state: AtomicU8::new(FREE),
                seq: AtomicU32::new(0),
                data: spin::Mutex::new(SlotData {
                    kind: Kind::None,
                    callback: None,
                    result: None,
                    credit: false,
                }),
            })
            .collect();
        let shared = Arc::new(Shared {
            wq,
            eff_pasid,
            client,
            slots,
            crs,
            watch,
            lists,
            member_crs,
            max_batch,
            pending: AtomicU32::new(0),
        });
        let reg = dev
            .registry
            .insert(&shared)
            .ok_or(DsaError::TooManySubmitters)?;
        Ok(Submitter {
            dev: dev.clone(),
            shared,
            reg,
            cursor: 0,
            portal_slot: 0,
            timeout_ns: opts.timeout_ns,
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }
    pub fn wq(&self) -> u8 {
        self.shared.wq
    }
    pub fn client(&self) -> Client {
        self.shared.client
    }
    /// Largest batch [`Submitter::submit_batch`] accepts.
    pub fn max_batch(&self) -> usize {
        self.shared.max_batch
    }
    /// Operations submitted and not yet finished.
    pub fn outstanding(&self) -> u32 {
        self.shared.pending.load(Ordering::Acquire)
    }
    /// Finishes completed operations (polling mode).
    pub fn reap(&self) -> usize {
        self.shared.reap(&self.dev)
    }
    /// A handle for an interrupt path to reap this submitter.
    pub fn reaper(&self) -> Reaper {
        Reaper {
            dev: self.dev.clone(),
            shared: self.shared.clone(),
        }
    }

    fn route(&self, wq: &Wq, notify: Notify) -> Result<(u64, Option<u16>), OpError> {
        match notify {
            Notify::Poll => Ok((wq.portal(), None)),
            Notify::Msix => {
                let h = wq
                    .int_handle()
                    .ok_or(OpError::InterruptUnavailable("no MSI-X vector for this WQ"))?;
                let pasid_enabled = wq.space != Some(AddressSpace::NoPasid);
                if pasid_enabled && wq.msix_pasid != self.shared.eff_pasid {
                    return Err(OpError::InterruptUnavailable(
                        "the WQ's MSI-X entry is bound to another PASID (poll or use an IMS handle)",
                    ));
                }
                Ok((wq.portal(), Some(h)))
            }
            Notify::Handle(h) => {
                if self.dev.caps.ims_entries == 0 {
                    return Err(OpError::InterruptUnavailable("the device has no IMS"));
                }
                Ok((wq.ims_portal(), Some(h)))
            }
        }
    }

    fn alloc_slot(&mut self) -> Result<usize, OpError> {
        let n = self.shared.slots.len();
        for pass in 0..2 {
            for k in 0..n {
                let i = (self.cursor + k) % n;
                if self.shared.slots[i].state.load(Ordering::Acquire) == FREE {
                    self.cursor = (i + 1) % n;
                    return Ok(i);
                }
            }
            if pass == 0 {
                self.shared.reap(&self.dev);
            }
        }
        Err(OpError::NoFreeSlot)
    }

    fn finish_descriptor(&self, d: &mut Descriptor, i: usize, handle: Option<u16>) {
        d.completion_addr = self.shared.crs.dev_addr(Shared::cr_off(i));
        if self
            .dev
            .wq(self.shared.wq)
            .is_some_and(|w| w.mode() == WqMode::Shared)
        {
            d.pasid = self.shared.eff_pasid.unwrap_or(0);
            d.privileged = self.shared.client.privileged;
        }
        if let Some(h) = handle {
            d.flags |= DescFlags::RCI;
            d.int_handle = h;
        }
    }

    /// Stores `d` in slot `i` through the portal: takes a dedicated-WQ credit first, retries
    /// a shared WQ with back-off, all bounded by the submit timeout.
    fn push(&mut self, i: usize, d: &Descriptor, portal: u64) -> Result<(), OpError> {
        let dev = self.dev.clone();
        let wq = dev.wq(self.shared.wq).ok_or(OpError::DeviceUnavailable)?;
        let bytes = d.to_bytes();
        let clock = dev.clock();
        // The clock is read only once a submission has to wait: the common path (a credit
        // or an accepting WQ at once) never pays for it.
        let mut deadline = None;
        let mut expired = || {
            let now = clock.now_ns();
            now >= *deadline.get_or_insert(now.saturating_add(dev.options.submit_timeout_ns))
        };
        let slot = &self.shared.slots[i];
        let mut tries = 0u32;
        let mut backoff = 1u32;
        loop {
            let guard = dev.enter_submit()?;
            // Spread stores over the 64 equivalent slots of the portal page (bits 11:6).
            let off = portal + (self.portal_slot % 64) * 64;
            if wq.mode() == WqMode::Dedicated {
                if !wq.try_credit() {
                    drop(guard);
                    dev.stats.credit_waits.fetch_add(1, Ordering::Relaxed);
                    // Credits come back as completions are reaped, by anyone.
                    if dev.reap_wq(wq.id()) == 0 {
                        if expired() {
                            return Err(OpError::QueueFull);
                        }
                        clock.relax();
                    }
                    continue;
                }
                slot.data.lock().credit = true;
                self.shared.pending.fetch_add(1, Ordering::AcqRel);
                slot.state.store(PENDING, Ordering::Release);
                // Watched before the device can write the record (see `Shared::watch`).
                self.shared.watch.watch(i);
                self.portal_slot += 1;
                dev.hw.portals.movdir64b(off, &bytes);
                return Ok(());
            }
            self.shared.pending.fetch_add(1, Ordering::AcqRel);
            slot.state.store(PENDING, Ordering::Release);
            self.shared.watch.watch(i);
            self.portal_slot += 1;
            if dev.hw.portals.enqcmds(off, &bytes) == crate::hw::EnqStatus::Accepted {
                return Ok(());
            }
            // Not queued: take the slot back (nobody claims a record that was never
            // written; recovery waits for `guard`).
            if slot
                .state
                .compare_exchange(PENDING, FREE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return Ok(());
            }
            self.shared.watch.unwatch(i);
            self.shared.pending.fetch_sub(1, Ordering::AcqRel);
            drop(guard);
            dev.stats.enq_retries.fetch_add(1, Ordering::Relaxed);
            tries += 1;
            if tries > dev.options.enqcmds_retries {
                if expired() {
                    return Err(OpError::QueueFull);
                }
                clock.delay_us(backoff);
                backoff = (backoff * 2).min(64);
            }
        }
    }

    fn release_slot(&self, i: usize) {
        let mut d = self.shared.slots[i].data.lock();
        d.kind = Kind::None;
        d.callback = None;
        d.credit = false;
    }

    fn submit_single(
        &mut self,
        work: Work,
        original: Work,
        done: u64,
        notify: Notify,
        callback: Option<Callback>,
    ) -> Result<Token, OpError> {
        let dev = self.dev.clone();
        let wq = dev.wq(self.shared.wq).ok_or(OpError::DeviceUnavailable)?;
        work.validate(&self.dev.caps, &wq.limits, false)?;
        let (portal, handle) = self.route(wq, notify)?;
        let i = self.alloc_slot()?;
        let slot = &self.shared.slots[i];
        let seq = slot.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.shared.crs.zero(Shared::cr_off(i), CR_SIZE);
        let mut d = work.descriptor();
        self.finish_descriptor(&mut d, i, handle);
        {
            let mut g = slot.data.lock();
            g.kind = Kind::Single {
                work,
                original,
                done,
            };
            g.callback = callback;
            g.result = None;
            g.credit = false;
        }
        if let Err(e) = self.push(i, &d, portal) {
            self.release_slot(i);
            return Err(e);
        }
        Ok(Token {
            slot: i as u16,
            seq,
        })
    }

    /// Submits one operation; the token is then polled or waited for.
    pub fn submit(&mut self, work: &Work, notify: Notify) -> Result<Token, OpError> {
        self.submit_single(*work, *work, 0, notify, None)
    }

    /// Submits one operation whose result goes to `cb` (run by whoever notices the
    /// completion: an interrupt handler, a poller, or recovery).
    pub fn submit_with_callback(
        &mut self,
        work: &Work,
        notify: Notify,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        self.submit_single(*work, *work, 0, notify, Some(Box::new(cb)))
            .map(|_| ())
    }

    /// Continues an operation that stopped at a page fault (after the mapping was fixed);
    /// the final result covers the whole original operation.
    pub fn resume(&mut self, r: &Resume, notify: Notify) -> Result<Token, OpError> {
        let mut rem = *r.remaining();
        rem.fence = false;
        let mut orig = r.original;
        orig.fence = false;
        self.submit_single(rem, orig, r.done(), notify, None)
    }

    /// Submits a batch of 2..=max members (members may carry `fence`).
    pub fn submit_batch(&mut self, members: &[Work], notify: Notify) -> Result<Token, OpError> {
        self.submit_batch_inner(members, notify, None)
    }

    /// Submits a batch whose result ([`Output::Batch`]) goes to `cb`, like
    /// [`Submitter::submit_with_callback`].
    pub fn submit_batch_with_callback(
        &mut self,
        members: &[Work],
        notify: Notify,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        self.submit_batch_inner(members, notify, Some(Box::new(cb)))
            .map(|_| ())
    }

    fn submit_batch_inner(
        &mut self,
        members: &[Work],
        notify: Notify,
        callback: Option<Callback>,
    ) -> Result<Token, OpError> {
        let dev = self.dev.clone();
        let wq = dev.wq(self.shared.wq).ok_or(OpError::DeviceUnavailable)?;
        if !self.dev.caps.supports(Opcode::Batch) {
            return Err(ValidationError::Unsupported(Opcode::Batch).into());
        }
        let max = self.shared.max_batch;
        if members.len() < 2 || members.len() > max {
            return Err(ValidationError::BatchSize {
                count: members.len(),
                min: 2,
                max,
            }
            .into());
        }
        for m in members {
            m.validate(&self.dev.caps, &wq.limits, true)?;
        }
        let (portal, handle) = self.route(wq, notify)?;
        let i = self.alloc_slot()?;
        let (Some(lists), Some(mcrs)) = (&self.shared.lists, &self.shared.member_crs) else {
            return Err(ValidationError::Unsupported(Opcode::Batch).into());
        };
        let slot = &self.shared.slots[i];
        let seq = slot.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.shared.crs.zero(Shared::cr_off(i), CR_SIZE);
        for (j, m) in members.iter().enumerate() {
            let mo = self.shared.mcr_off(i, j);
            mcrs.zero(mo, CR_SIZE);
            let mut md = m.descriptor();
            md.completion_addr = mcrs.dev_addr(mo);
            lists.write(self.shared.list_off(i, j), &md.to_bytes());
        }
        let mut d = Descriptor::new(Opcode::Batch);
        d.flags = DescFlags::CRAV | DescFlags::RCR;
        d.addr1 = lists.dev_addr(self.shared.list_off(i, 0));
        d.size = members.len() as u32;
        self.finish_descriptor(&mut d, i, handle);
        {
            let mut g = slot.data.lock();
            g.kind = Kind::Batch(members.to_vec());
            g.callback = callback;
            g.result = None;
            g.credit = false;
        }
        if let Err(e) = self.push(i, &d, portal) {
            self.release_slot(i);
            return Err(e);
        }
        Ok(Token {
            slot: i as u16,
            seq,
        })
    }

    /// The result if the operation finished (None while in flight).
    pub fn poll(&mut self, t: Token) -> Option<Result<Output, OpError>> {
        let Some(s) = self.shared.slots.get(t.slot as usize) else {
            return Some(Err(OpError::BadToken));
        };
        if s.seq.load(Ordering::Relaxed) != t.seq {
            return Some(Err(OpError::BadToken));
        }
        loop {
            match s.state.load(Ordering::Acquire) {
                DONE => {
                    let r = s.data.lock().result.take();
                    s.state.store(FREE, Ordering::Release);
                    return Some(r.unwrap_or(Err(OpError::BadToken)));
                }
                PENDING => {
                    if !self.shared.try_finish(&self.dev, t.slot as usize, None) {
                        return None;
                    }
                }
                CLAIMED => return None,
                _ => return Some(Err(OpError::BadToken)),
            }
        }
    }

    /// The raw completion record of a finished operation, as the device wrote it (None
    /// while in flight or for a stale token). Valid until the slot is reused by a later
    /// submission of this submitter.
    pub fn completion_record(&self, t: Token) -> Option<CompletionRecord> {
        let s = self.shared.slots.get(t.slot as usize)?;
        if s.seq.load(Ordering::Relaxed) != t.seq {
            return None;
        }
        match s.state.load(Ordering::Acquire) {
            PENDING | CLAIMED => None,
            _ => Some(Shared::read_cr(
                &self.shared.crs,
                Shared::cr_off(t.slot as usize),
            )),
        }
    }

    /// The completion record of member `j` of a finished batch (see
    /// [`Submitter::completion_record`]).
    pub fn batch_member_record(&self, t: Token, j: usize) -> Option<CompletionRecord> {
        self.completion_record(t)?;
        if j >= self.shared.max_batch {
            return None;
        }
        let mcrs = self.shared.member_crs.as_ref()?;
        Some(Shared::read_cr(
            mcrs,
            self.shared.mcr_off(t.slot as usize, j),
        ))
    }

    /// Waits (bounded) for an operation. On `Timeout` the token stays valid. A halt noticed
    /// while waiting triggers recovery, which finishes or fails back every operation.
    pub fn wait(&mut self, t: Token, timeout_ns: u64) -> Result<Output, OpError> {
        let clock = self.dev.hw.clock.clone();
        let deadline = clock.now_ns().saturating_add(timeout_ns);
        loop {
            if let Some(r) = self.poll(t) {
                return r;
            }
            if self.dev.state() == crate::device::RunState::Halted
                && let Err(e) = self.dev.recover()
            {
                warn!(
                    "dsa{}: recovery from a waiter failed: {e}",
                    self.dev.index()
                );
            }
            if clock.now_ns() >= deadline {
                return Err(OpError::Timeout);
            }
            clock.relax();
        }
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

impl Drop for Submitter {
    fn drop(&mut self) {
        let clock = self.dev.hw.clock.clone();
        let deadline = clock.now_ns().saturating_add(self.timeout_ns);
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            self.shared.reap(&self.dev);
            if self.dev.state() == crate::device::RunState::Halted {
                let _ = self.dev.recover();
            }
            if clock.now_ns() >= deadline {
                break;
            }
            clock.relax();
        }
        self.dev.registry.remove(self.reg);
        let left = self.shared.pending.load(Ordering::Acquire);
        if left != 0 {
            // The device may still write these records: never give the memory back.
            error!(
                "dsa{}: submitter dropped with {left} operation(s) in flight; leaking its DMA memory",
                self.dev.index()
            );
            self.shared.crs.leak();
            if let Some(b) = &self.shared.lists {
                b.leak();
            }
            if let Some(b) = &self.shared.member_crs {
                b.leak();
            }
        }
    }
}
