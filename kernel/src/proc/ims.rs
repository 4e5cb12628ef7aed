//! Interrupt handles for processes: `ims_alloc`, `ims_wait`, `ims_set_affinity`,
//! `ims_release`, and the completion-interrupt side of `dsa_submit`.
//!
//! A process's handle is an IMS handle of the system domain (`crate::ims`) on a DSA device,
//! allocated through the chip's public API for an owner whose PASID is the process's own
//! (`sva_attach`): the caller never names a PASID, the per-PASID quota and the table size
//! bound what it can take ([`Error::HandleQuota`]), and no allocation — granted or refused —
//! touches a vector (the domain's one vector per CPU is allocated once, at boot).
//!
//! Ids: each process has its own table, ids `1..=IMS_HANDLES_MAX`, checked on every call; a
//! descriptor with RCI names an id, which `dsa_submit` translates into the device's
//! interrupt handle (`klib::usersubmit::validate`). An id the process does not hold (another
//! process's id, a raw device handle) is refused with [`Error::BadHandle`] and never reaches
//! the device. (Had one reached it, the device's PASID check on the bound entry would end
//! the descriptor with status 0x19 and no interrupt, DSA spec §9.2.28 / Table 5-5.)
//!
//! Completion side: the handle's sink is a [`UserSink`], not a submitter ring: for each
//! descriptor with RCI in flight it holds the physical address of the completion record's
//! status byte (the kernel zeroes it, under the process's space lock, before the portal
//! store). The demultiplexer (on the handle's CPU, interrupt context) polls the sink; a
//! non-zero status is claimed exactly once (compare-exchange of the slot), counted, and the
//! thread blocked in `ims_wait` is woken with the scheduler's `wake` (queued on its home CPU,
//! reschedule IPI). `ims_wait` decides under the sink's lock, and the sink counts and takes
//! the waiter under the same lock: no lost wake-up, and several completions between two
//! waits are all counted.
//!
//! Control operations (allocate, retarget, release) run the chip's cross-CPU calls; they
//! are made without any process lock held (the table holds `Arc`s), so two threads of a
//! process on different CPUs cannot wait on each other through a lock. A handle busy with
//! another control operation answers [`Error::Busy`].
//!
//! Exit and kill: after the PASID's drain, every handle of the process is released (drain,
//! unbind, entry cleared, route and IRTE freed, quota returned) before the PASID is freed.

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use ims::{Armer, CompletionSink, ImsError, ImsHandle, OwnerId};
use user_abi::{CURRENT_CPU, Error, IMS_HANDLES_MAX, IMS_INFLIGHT_MAX};

use super::syscall::{block, ret};
use super::{Action, Process, RESUME_RESTART, Thread};
use crate::arch::user::UserRegs;
use crate::sync::IrqMutex;

const INFLIGHT: usize = IMS_INFLIGHT_MAX as usize;

/// What `ims_wait` and the demultiplexer share.
struct WaitState {
    /// Completions delivered and not yet returned by `ims_wait`.
    count: u64,
    /// Descriptors with RCI submitted and not yet delivered.
    inflight: u64,
    /// Threads blocked in `ims_wait` (all are woken by a delivery and decide again).
    waiters: alloc::vec::Vec<Arc<Thread>>,
    /// The handle was released: `ims_wait` answers `BadHandle` (also to a thread that looked
    /// the id up just before the release).
    released: bool,
}

/// A process handle's completion source: the status bytes of its in-flight records.
pub(super) struct UserSink {
    /// Physical address of each in-flight record's status byte (0: free slot).
    slots: [AtomicU64; INFLIGHT],
    state: IrqMutex<WaitState>,
}

impl UserSink {
    fn new() -> UserSink {
        UserSink {
            slots: [const { AtomicU64::new(0) }; INFLIGHT],
            state: IrqMutex::new(WaitState {
                count: 0,
                inflight: 0,
                waiters: alloc::vec::Vec::new(),
                released: false,
            }),
        }
    }

    /// Takes a slot for the record whose status byte is at physical `status`; the slot
    /// index, or None if every slot is in flight.
    fn watch(&self, status: u64) -> Option<usize> {
        self.state.lock().inflight += 1;
        for (i, s) in self.slots.iter().enumerate() {
            if s.compare_exchange(0, status, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Some(i);
            }
        }
        self.state.lock().inflight -= 1;
        None
    }

    /// Takes slot `i` back (the submission failed: the device never saw the record).
    fn unwatch(&self, i: usize, status: u64) {
        if self.slots[i]
            .compare_exchange(status, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.state.lock().inflight -= 1;
        }
    }

    /// After the release: every waiter is woken and learns it.
    fn wake_all(&self) {
        let w = {
            let mut st = self.state.lock();
            st.released = true;
            core::mem::take(&mut st.waiters)
        };
        for t in &w {
            super::wake(t);
        }
    }
}

/// The status byte at physical address `pa` (identity-mapped RAM).
fn status_byte(pa: u64) -> &'static AtomicU8 {
    // SAFETY: `pa` was the physical address of a byte of a user page of the process when it
    // was watched; all RAM is identity-mapped in the kernel half, so the reference is valid
    // whatever became of the page (after a munmap the byte may belong to another owner:
    // reading it only risks a wrong count for this handle, never kernel state).
    unsafe { &*(pa as *const AtomicU8) }
}

impl CompletionSink for UserSink {
    fn poll(&self, delivered: &AtomicU64) -> u32 {
        let mut n = 0u32;
        for s in &self.slots {
            let pa = s.load(Ordering::Acquire);
            if pa != 0
                && status_byte(pa).load(Ordering::Acquire) != 0
                && s.compare_exchange(pa, 0, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                delivered.fetch_add(1, Ordering::AcqRel);
                n += 1;
            }
        }
        if n > 0 {
            let woken = {
                let mut st = self.state.lock();
                st.count += u64::from(n);
                st.inflight = st.inflight.saturating_sub(u64::from(n));
                core::mem::take(&mut st.waiters)
            };
            for t in &woken {
                super::wake(t);
            }
        }
        n
    }

    fn outstanding(&self) -> bool {
        self.slots.iter().any(|s| s.load(Ordering::Acquire) != 0)
    }
}

/// One handle of a process.
pub(super) struct UserHandle {
    /// Index of the DSA device (`crate::dsa::devices()`).
    dev: usize,
    /// The device's interrupt handle (what descriptors carry).
    device_handle: u16,
    armer: Armer,
    sink: Arc<UserSink>,
    /// None once released; locked only by control operations (try_lock: never waited on).
    handle: spin::Mutex<Option<ImsHandle>>,
}

/// A process's handles by id.
pub(super) type Table = BTreeMap<u16, Arc<UserHandle>>;

fn lookup(p: &Process, id: u64) -> Result<Arc<UserHandle>, Error> {
    let id = u16::try_from(id).map_err(|_| Error::BadHandle)?;
    p.ims.lock().get(&id).cloned().ok_or(Error::BadHandle)
}

fn ims_err(e: ImsError) -> Error {
    match e {
        ImsError::QuotaExceeded { .. } | ImsError::TableFull { .. } => Error::HandleQuota,
        ImsError::NoSuchCpu { .. } => Error::NoSuchCpu,
        ImsError::Released => Error::BadHandle,
        e => {
            log::warn!("ims: a process's handle operation failed: {e}");
            Error::NoMemory
        }
    }
}

fn cpu_of(t: &Thread, cpu: u64) -> Result<usize, Error> {
    if cpu == CURRENT_CPU {
        return Ok(t.cpu());
    }
    let c = usize::try_from(cpu).map_err(|_| Error::NoSuchCpu)?;
    super::check_cpu(c).map_err(|_| Error::NoSuchCpu)
}

/// `ims_alloc(device, cpu)`.
pub(super) fn alloc(t: &Thread, device: u64, cpu: u64) -> Result<u64, Error> {
    let devs = crate::dsa::devices();
    let di = usize::try_from(device).map_err(|_| Error::NoDevice)?;
    let dev = devs.get(di).ok_or(Error::NoDevice)?;
    // Process descriptors go to the shared WQ (`submit_user`).
    if !dev.has_enqcmds() || dev.wq_id(dsa_spec::WqMode::Shared).is_none() {
        return Err(Error::NoDevice);
    }
    let cpu = cpu_of(t, cpu)?;
    let p = &t.process;
    let id = {
        let table = p.ims.lock();
        (1..=IMS_HANDLES_MAX as u16)
            .find(|i| !table.contains_key(i))
            .ok_or(Error::HandleQuota)?
    };
    let pasid = super::sva_attach(p, dev).map_err(|e| e.abi())?;
    let chip = crate::ims::device_ims(dev).map_err(|_| Error::NoDevice)?;
    let owner = OwnerId::new(p.pid, pasid).map_err(ims_err)?;
    let sink = Arc::new(UserSink::new());
    let h = chip
        .chip()
        .allocate(&owner, cpu, sink.clone())
        .map_err(ims_err)?;
    let Ok(device_handle) = u16::try_from(h.device_handle()) else {
        let _ = h.release();
        return Err(Error::NoMemory);
    };
    let uh = Arc::new(UserHandle {
        dev: di,
        device_handle,
        armer: h.armer(),
        sink,
        handle: spin::Mutex::new(Some(h)),
    });
    let mut table = p.ims.lock();
    // Another thread may have taken the id meanwhile: the first free one.
    let id = (id..=IMS_HANDLES_MAX as u16)
        .chain(1..id)
        .find(|i| !table.contains_key(i));
    match id {
        Some(id) if !p.dying.load(Ordering::Acquire) => {
            table.insert(id, uh);
            Ok(u64::from(id))
        }
        _ => {
            drop(table);
            release_one(&uh);
            Err(Error::HandleQuota)
        }
    }
}

/// `ims_wait(handle)`.
pub(super) fn wait(t: &Arc<Thread>, regs: &mut UserRegs, id: u64) -> Action {
    let h = match lookup(&t.process, id) {
        Ok(h) => h,
        Err(e) => return ret(Err(e)),
    };
    let mut st = h.sink.state.lock();
    if st.released {
        return ret(Err(Error::BadHandle));
    }
    if st.count > 0 {
        return ret(Ok(core::mem::take(&mut st.count)));
    }
    if st.inflight == 0 {
        return ret(Err(Error::WouldBlock));
    }
    // Woken by a delivery, a release or a kill: the call runs again and decides anew.
    block(t, regs, RESUME_RESTART);
    st.waiters.push(t.clone());
    Action::Block
}

/// `ims_set_affinity(handle, cpu)`.
pub(super) fn set_affinity(t: &Thread, id: u64, cpu: u64) -> Result<u64, Error> {
    let h = lookup(&t.process, id)?;
    let cpu = cpu_of(t, cpu)?;
    let mut g = h.handle.try_lock().ok_or(Error::Busy)?;
    let handle = g.as_mut().ok_or(Error::BadHandle)?;
    handle.retarget(cpu).map_err(ims_err)?;
    Ok(0)
}

/// For `sched_set_cpu`: every handle of `p` whose interrupts go to CPU `from` is retargeted
/// to `to` (`ImsHandle::retarget`: IRTE rewrite, completions in flight delivered exactly
/// once). The handles a thread waits on are its process's on its CPU: a handle has no owning
/// thread, so another thread of the process on `from` sees its handles move too.
pub(super) fn follow(p: &Process, from: usize, to: usize) -> Result<(), Error> {
    let table: alloc::vec::Vec<Arc<UserHandle>> = p.ims.lock().values().cloned().collect();
    for h in table {
        let mut g = h.handle.try_lock().ok_or(Error::Busy)?;
        if let Some(handle) = g.as_mut()
            && handle.cpu() == from
        {
            handle.retarget(to).map_err(ims_err)?;
        }
    }
    Ok(())
}

/// `ims_release(handle)`.
pub(super) fn release(t: &Thread, id: u64) -> Result<u64, Error> {
    let h = lookup(&t.process, id)?;
    // Refused while another control operation runs on it (the id stays valid).
    let handle = h.handle.try_lock().ok_or(Error::Busy)?.take();
    let Some(handle) = handle else {
        return Err(Error::BadHandle);
    };
    if let Ok(key) = u16::try_from(id) {
        t.process.ims.lock().remove(&key);
    }
    finish(&h, handle);
    Ok(0)
}

fn finish(h: &UserHandle, handle: ImsHandle) {
    if let Err(e) = handle.release() {
        log::error!("ims: releasing a process's handle: {e}");
    }
    h.sink.wake_all();
}

fn release_one(h: &UserHandle) {
    let handle = h.handle.lock().take();
    if let Some(handle) = handle {
        finish(h, handle);
    }
}

/// At the end of `p` (every thread gone, the PASID drained, not yet freed): releases every
/// handle it still holds.
pub(super) fn release_all(p: &Process) {
    let table = core::mem::take(&mut *p.ims.lock());
    for h in table.values() {
        release_one(h);
    }
}

/// For `dsa_submit`: the device handle of the process's id `id` on device `dev`.
pub(super) fn device_handle(p: &Process, dev: usize, id: u16) -> Option<Arc<UserHandle>> {
    p.ims.lock().get(&id).filter(|h| h.dev == dev).cloned()
}

impl UserHandle {
    pub(super) fn device_handle(&self) -> u16 {
        self.device_handle
    }
}

/// Submits the validated descriptor `desc` (RCI set, its handle translated to `h`'s) with a
/// completion interrupt: arms `h`, watches the record's status byte (zeroed here), stores
/// the descriptor through the IMS portal; the watch is taken back if the store fails.
pub(super) fn submit(
    p: &Process,
    dev: &crate::dsa::DsaDevice,
    h: &UserHandle,
    desc: &[u8; 64],
) -> Result<(), Error> {
    let cr = u64::from_le_bytes(desc[8..16].try_into().map_err(|_| Error::BadCompletion)?);
    let _armed = h.armer.arm().map_err(|_| Error::BadHandle)?;
    let (slot, pa) = {
        let mut s = p.space.lock();
        let writable = s.area_at(cr).is_some_and(|(_, a)| a.writable);
        if !writable {
            return Err(Error::BadCompletion);
        }
        if s.translate(cr).is_none()
            && s.fault(cr, true, false, false) != super::FaultOutcome::Mapped
        {
            return Err(Error::NoMemory);
        }
        let pa = s.translate(cr).ok_or(Error::NoMemory)?;
        // Zeroed while the space lock keeps the frame the process's.
        status_byte(pa).store(0, Ordering::Release);
        let slot = h.sink.watch(pa).ok_or(Error::Busy)?;
        (slot, pa)
    };
    dev.submit_user(desc).map_err(|e| {
        h.sink.unwatch(slot, pa);
        match e {
            crate::dsa::UserSubmitError::NoSharedWq => Error::NoDevice,
            crate::dsa::UserSubmitError::Busy => Error::Busy,
        }
    })
}

/// One handle of a process as the hostile-process suite sees it.
#[cfg(feature = "ktest")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HandleInfo {
    /// The process's id of it.
    pub id: u16,
    /// The device's interrupt handle (what the kernel puts in the descriptors).
    pub device_handle: u16,
    /// Where its interrupts go (None once released).
    pub cpu: Option<usize>,
    /// Completions the demultiplexer delivered through it.
    pub delivered: u64,
    /// Completions counted for `ims_wait` and not yet returned by it.
    pub counted: u64,
}

/// The handles `p` holds, by id.
#[cfg(feature = "ktest")]
pub(super) fn handles(p: &Process) -> alloc::vec::Vec<HandleInfo> {
    let table: alloc::vec::Vec<(u16, Arc<UserHandle>)> =
        p.ims.lock().iter().map(|(k, v)| (*k, v.clone())).collect();
    table
        .into_iter()
        .map(|(id, h)| {
            let (cpu, delivered) = h
                .handle
                .lock()
                .as_ref()
                .map_or((None, 0), |x| (Some(x.cpu()), x.delivered()));
            HandleInfo {
                id,
                device_handle: h.device_handle,
                cpu,
                delivered,
                counted: h.sink.state.lock().count,
            }
        })
        .collect()
}
