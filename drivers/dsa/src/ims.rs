//! DSA as an IMS device (Intel DSA Architecture Specification rev 3.0, §9.2.28: the IMS
//! table): the [`ims::ImsStorage`] implementation over the device's IMS table, completion
//! sinks over submitters, and submission through a handle.
//!
//! * Table: at `OFFSETS[63:48]` × 0x100 in BAR0, `GENCAP[30:25]` × 256 entries of 16 bytes
//!   (both validated by [`Capabilities::read`](crate::Capabilities::read); the entry's
//!   registers are `dsa_spec::tables::ims`, reached through `Capabilities::ims_table`);
//!   reset state is masked. Messages must be 0xFEEx_xxxx (the device ignores other address writes, so every
//!   write is read back).
//! * Binding: an entry's PASID-enable + PASID make the device refuse (status 0x19, no
//!   interrupt) any descriptor whose effective PASID differs. Unbinding clears PASID-enable,
//!   which every PASID-enabled WQ also refuses.
//! * Quiesce: Drain PASID — every descriptor of the PASID accepted before the command has
//!   completed. The device has no narrower "descriptors naming entry i" drain.
//! * Clear: a pending message is dropped by unmasking with Ignore set, then the entry is put
//!   back to its reset state. (The model drops a pending message this way; on hardware the
//!   Ignore/pending interaction is UNCONFIRMED, and clear reports a pending bit that survives.)
//! * Handles in descriptors: the index, or with CMDCAP bit 13 what Request Interrupt Handle
//!   returned for (index, IMS).
//! * Submission: [`DsaIms::allocate_bound`] checks device and PASID once and binds the handle
//!   to the submitter: its `Notify::Ims` submissions then publish their ring slot, arm the
//!   handle (`ims::Armer::arm_published`) and store the descriptor through the WQ's IMS portal.
//!   [`DsaIms::submit`] (any submitter of the handle's PASID) checks on every call and arms
//!   with a guard held across the submit call.
//! * Completions: the sink is the submitter's [`Reaper`], which delivers directly: the
//!   demultiplexer makes one call per armed handle, the ring checks its own records
//!   (`[tail, head)`, status bytes) and reports idleness by its head index.

use alloc::sync::Arc;
use core::sync::atomic::AtomicU64;

use dsa_spec::WqMode;
use dsa_spec::tables::{IMS_ADDR_RESET, IMS_ENTRY_SIZE, ImsCtrl, ImsEntry, ims as entry};
use hwio::{Block, Registers, RegistersExt, Table};
use ims::{
    Armer, CarvedStorage, ChipOptions, CompletionSink, Delivery, ImsChip, ImsDomain, ImsError,
    ImsHandle, ImsStorage, MsiMessage, OwnerId, StorageError,
};
use log::error;

use crate::device::Device;
use crate::error::{DsaError, OpError};
use crate::ops::{Output, Work};
use crate::queue::Callback;
use crate::submit::{Notify, Reaper, Submitter, Token};

/// One DSA device's IMS table (entries as `dsa_spec::tables::ims` declares them).
pub struct DsaImsStorage {
    dev: Arc<Device>,
    table: Table,
    entries: u32,
}

impl core::fmt::Debug for DsaImsStorage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DsaImsStorage")
            .field("dsa", &self.dev.index())
            .field("entries", &self.entries)
            .finish()
    }
}

impl DsaImsStorage {
    /// The IMS table of `dev` (GENCAP IMS size and the IMS offset of OFFSETS, Intel DSA
    /// Architecture Specification rev 3.0, §9.2.2, §9.2.7, §9.2.28); fails with
    /// [`DsaError::BadCapability`] when the device has no IMS table.
    pub fn new(dev: &Arc<Device>) -> Result<DsaImsStorage, DsaError> {
        let entries = dev.caps().ims_entries;
        if entries == 0 {
            return Err(DsaError::BadCapability("the device has no IMS table"));
        }
        Ok(DsaImsStorage {
            dev: dev.clone(),
            table: dev.caps().ims_table(),
            entries,
        })
    }

    /// The device whose table this is.
    pub fn device(&self) -> &Arc<Device> {
        &self.dev
    }

    /// Entry `index` as a register block of its own.
    fn off(&self, index: u32) -> Result<Block<'_, dyn Registers>, StorageError> {
        let off = self
            .table
            .entry(u64::from(index))
            .ok_or(StorageError::BadIndex { index })?;
        Ok(self.dev.hw.regs.block(off, IMS_ENTRY_SIZE))
    }

    /// The entry as the device holds it (diagnostics, tests).
    pub fn read_entry(&self, index: u32) -> Option<ImsEntry> {
        let e = self.off(index).ok()?;
        Some(ImsEntry {
            addr: e.read(entry::ADDR),
            data: e.read(entry::DATA),
            ctrl: e.read(entry::CTRL),
        })
    }

    fn ctrl(&self, e: &Block<'_, dyn Registers>) -> ImsCtrl {
        e.read(entry::CTRL)
    }

    fn set_ctrl(&self, e: &Block<'_, dyn Registers>, c: ImsCtrl) {
        // Pending is read-only; never write it back.
        e.write(entry::CTRL, c - ImsCtrl::PENDING);
    }

    fn write_message(
        &self,
        index: u32,
        e: &Block<'_, dyn Registers>,
        msg: MsiMessage,
    ) -> Result<(), StorageError> {
        if !ImsEntry::addr_valid(msg.addr) {
            return Err(StorageError::AddressRejected { addr: msg.addr });
        }
        e.write(entry::ADDR, msg.addr);
        e.write(entry::DATA, msg.data);
        if e.read(entry::ADDR) != msg.addr || e.read(entry::DATA) != msg.data {
            return Err(StorageError::Readback { index });
        }
        Ok(())
    }
}

impl ImsStorage for DsaImsStorage {
    fn entries(&self) -> u32 {
        self.entries
    }

    fn program(&self, index: u32, msg: MsiMessage, pasid: u32) -> Result<u32, StorageError> {
        let e = self.off(index)?;
        self.set_ctrl(&e, ImsCtrl::MASK);
        self.write_message(index, &e, msg)?;
        let want = (ImsCtrl::MASK | ImsCtrl::PASID_EN).with_pasid(pasid);
        self.set_ctrl(&e, want);
        let got = self.ctrl(&e) - ImsCtrl::PENDING;
        if got != want {
            return Err(StorageError::Readback { index });
        }
        let h = self
            .dev
            .request_int_handle(index as u16, true)
            .map_err(|e| StorageError::Device {
                what: "Request Interrupt Handle",
                cause: ims::Cause::new(e),
            })?;
        Ok(u32::from(h))
    }

    fn set_message(&self, index: u32, msg: MsiMessage) -> Result<(), StorageError> {
        let e = self.off(index)?;
        self.write_message(index, &e, msg)
    }

    fn set_masked(&self, index: u32, masked: bool) {
        if let Ok(e) = self.off(index) {
            let mut c = self.ctrl(&e);
            c.set(ImsCtrl::MASK, masked);
            self.set_ctrl(&e, c);
        }
    }

    fn pending(&self, index: u32) -> bool {
        self.off(index)
            .is_ok_and(|e| self.ctrl(&e).contains(ImsCtrl::PENDING))
    }

    fn unbind(&self, index: u32) {
        if let Ok(e) = self.off(index) {
            self.set_ctrl(&e, ImsCtrl::MASK);
        }
    }

    fn quiesce(&self, _index: u32, pasid: u32) -> Result<(), StorageError> {
        self.dev
            .drain_pasid(pasid)
            .map_err(|e| StorageError::Device {
                what: "Drain PASID (quiescing an IMS entry)",
                cause: ims::Cause::new(e),
            })
    }

    fn clear(&self, index: u32) -> Result<(), StorageError> {
        let e = self.off(index)?;
        // Unmask with Ignore set: a pending message is dropped instead of sent.
        self.set_ctrl(&e, ImsCtrl::MASK | ImsCtrl::IGNORE);
        self.set_ctrl(&e, ImsCtrl::IGNORE);
        self.set_ctrl(&e, ImsCtrl::MASK);
        e.write(entry::ADDR, IMS_ADDR_RESET);
        e.write(entry::DATA, 0);
        let released = self.dev.release_int_handle(index as u16, true);
        if self.ctrl(&e).contains(ImsCtrl::PENDING) {
            return Err(StorageError::Readback { index });
        }
        released.map_err(|e| StorageError::Device {
            what: "Release Interrupt Handle",
            cause: ims::Cause::new(e),
        })
    }
}

/// A submitter's completions as an IMS completion source: each call looks at the ring's
/// outstanding slots only and delivers what the device wrote (callbacks run, each operation
/// exactly once whoever reaps).
impl CompletionSink for Reaper {
    fn poll(&self, delivered: &AtomicU64) -> u32 {
        self.reap_counting(delivered) as u32
    }
    fn outstanding(&self) -> bool {
        Reaper::outstanding(self) != 0
    }
    fn delivers_directly(&self) -> bool {
        true
    }
    #[inline]
    fn deliver(&self, count: &AtomicU64) -> Delivery<'_> {
        let (delivered, idle) = Reaper::deliver(self, Some(count));
        Delivery { delivered, idle }
    }
    fn submitting(&self) -> bool {
        Reaper::submitting(self)
    }
    fn idle_word(&self) -> Option<&core::sync::atomic::AtomicU32> {
        Some(self.head_word())
    }
    fn raw_poll(&self) -> Option<ims::RawPoll> {
        Some(ims::RawPoll {
            f: ring_poll,
            arg: self.ring_ptr().cast(),
        })
    }
}

/// [`Reaper`]'s `poll` on its ring ([`CompletionSink::raw_poll`]).
///
/// # Safety
/// `ring` is a live `Ring` (the reaper's, which its `Arc` keeps alive).
unsafe fn ring_poll(ring: *const (), delivered: &AtomicU64) -> u32 {
    // SAFETY: the caller's contract.
    let ring = unsafe { &*ring.cast::<crate::queue::Ring>() };
    ring.poll_counting(delivered)
}

/// A DSA device registered with an IMS domain: allocation of handles whose completions come
/// from a submitter, and submission through them.
///
/// Registering also hooks the device's recovery: after a halt is recovered (the reset clears
/// the IMS table) every live entry is rewritten ([`ImsChip::restore`]) before submissions
/// resume.
pub struct DsaIms {
    chip: ImsChip,
    storage: Arc<DsaImsStorage>,
    /// Local entry → device entry when the chip holds a part of the table lent by another
    /// chip ([`DsaIms::carve`]).
    map: Option<Arc<[u32]>>,
}

impl core::fmt::Debug for DsaIms {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DsaIms")
            .field("chip", &self.chip)
            .finish_non_exhaustive()
    }
}

/// The PASID the device applies to `sub`'s descriptors (None: no PASID).
fn effective_pasid(sub: &Submitter) -> Option<u32> {
    let wq = sub.device().wq(sub.wq())?;
    match wq.mode() {
        WqMode::Dedicated => wq.space.and_then(|s| s.pasid()),
        WqMode::Shared => sub.effective_pasid(),
    }
}

impl DsaIms {
    /// Registers `dev`'s IMS table with `domain`.
    pub fn register(
        domain: &ImsDomain,
        dev: &Arc<Device>,
        options: ChipOptions,
    ) -> Result<DsaIms, ImsError> {
        let storage = Arc::new(DsaImsStorage::new(dev).map_err(|e| {
            ImsError::Storage(StorageError::Device {
                what: "the IMS table",
                cause: ims::Cause::new(e),
            })
        })?);
        let chip = domain.register(storage.clone(), options)?;
        hook_recovery(dev, &chip);
        Ok(DsaIms {
            chip,
            storage,
            map: None,
        })
    }

    /// Registers `count` free entries of this device's table (lent by this chip, see
    /// [`ImsChip::carve`]) with `domain` — e.g. a per-handle-vector comparison domain on the
    /// same device as the system's shared one. The entries return when the new `DsaIms` and
    /// all its handles are gone.
    pub fn carve(
        &self,
        domain: &ImsDomain,
        count: u32,
        options: ChipOptions,
    ) -> Result<DsaIms, ImsError> {
        let carved: CarvedStorage = self.chip.carve(count)?;
        let map: Arc<[u32]> = (0..count)
            .map(|i| carved.device_index(i).unwrap_or(u32::MAX))
            .collect();
        let chip = domain.register(Arc::new(carved), options)?;
        hook_recovery(&self.storage.dev, &chip);
        Ok(DsaIms {
            chip,
            storage: self.storage.clone(),
            map: Some(map),
        })
    }

    /// The device's IMS table index of this chip's entry `index` (they differ for a carved
    /// chip).
    pub fn device_index(&self, index: u32) -> u32 {
        match &self.map {
            Some(m) => m.get(index as usize).copied().unwrap_or(u32::MAX),
            None => index,
        }
    }

    /// The device entry behind `handle` as the device holds it (diagnostics, tests).
    pub fn read_entry(&self, handle: &ImsHandle) -> Option<ImsEntry> {
        self.storage.read_entry(self.device_index(handle.index()))
    }

    /// The irqchip of this device in the IMS domain.
    pub fn chip(&self) -> &ImsChip {
        &self.chip
    }
    /// The device's IMS table (shared with the chip).
    pub fn storage(&self) -> &Arc<DsaImsStorage> {
        &self.storage
    }
    /// The device.
    pub fn device(&self) -> &Arc<Device> {
        &self.storage.dev
    }

    /// Allocates a handle for `client` on `cpu` whose completions are `sub`'s. The submitter
    /// must belong to this device and run with the client's PASID.
    pub fn allocate(
        &self,
        client: &OwnerId,
        cpu: usize,
        sub: &Submitter,
    ) -> Result<ImsHandle, ImsError> {
        if !Arc::ptr_eq(sub.device(), &self.storage.dev) {
            return Err(ImsError::Mismatch(
                "the submitter belongs to another device",
            ));
        }
        if effective_pasid(sub) != Some(client.pasid()) {
            return Err(ImsError::Mismatch(
                "the submitter's descriptors do not run with the client's PASID",
            ));
        }
        self.chip.allocate(client, cpu, Arc::new(sub.reaper()))
    }

    /// Allocates a handle like [`DsaIms::allocate`] and binds it to `sub`: the device and
    /// PASID checks are made once, here, and `sub`'s [`Notify::Ims`] submissions then carry
    /// the handle and arm it without further checks.
    pub fn allocate_bound(
        &self,
        client: &OwnerId,
        cpu: usize,
        sub: &mut Submitter,
    ) -> Result<ImsHandle, ImsError> {
        let h = self.allocate(client, cpu, sub)?;
        let armer = h.armer();
        self.check(sub, &armer)
            .and_then(|_| sub.bind_ims(armer))
            .map_err(|_| {
                ImsError::Mismatch("the handle cannot name this submitter's descriptors")
            })?;
        Ok(h)
    }

    /// Checks that `armer`'s handle may name `sub`'s descriptors; returns the descriptor
    /// handle.
    fn check(&self, sub: &Submitter, armer: &Armer) -> Result<u16, OpError> {
        if armer.chip_id() != self.chip.id() || !Arc::ptr_eq(sub.device(), &self.storage.dev) {
            return Err(OpError::InterruptUnavailable(
                "the IMS handle belongs to another device",
            ));
        }
        if effective_pasid(sub) != Some(armer.pasid()) {
            return Err(OpError::InterruptUnavailable(
                "the IMS handle is bound to another PASID",
            ));
        }
        u16::try_from(armer.device_handle())
            .map_err(|_| OpError::InterruptUnavailable("IMS handle out of range"))
    }

    /// Submits `work` with a completion interrupt through `armer`'s handle; `cb` gets the
    /// result (run by the IMS demultiplexer, or whoever reaps first).
    pub fn submit(
        &self,
        sub: &mut Submitter,
        armer: &Armer,
        work: &Work,
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        let h = self.check(sub, armer)?;
        let _armed = armer.arm().map_err(|_| released())?;
        sub.submit_with_callback(work, Notify::Handle(h), cb)
    }

    /// As [`DsaIms::submit`] with a function-pointer callback (no allocation).
    pub fn submit_cb(
        &self,
        sub: &mut Submitter,
        armer: &Armer,
        work: &Work,
        cb: Callback,
    ) -> Result<(), OpError> {
        let h = self.check(sub, armer)?;
        let _armed = armer.arm().map_err(|_| released())?;
        sub.submit_cb(work, Notify::Handle(h), cb)
    }

    /// As [`DsaIms::submit`], returning a token (the demultiplexer reaps; the owner polls).
    pub fn submit_token(
        &self,
        sub: &mut Submitter,
        armer: &Armer,
        work: &Work,
    ) -> Result<Token, OpError> {
        let h = self.check(sub, armer)?;
        let _armed = armer.arm().map_err(|_| released())?;
        sub.submit(work, Notify::Handle(h))
    }

    /// A batch with a completion interrupt through `armer`'s handle, its result
    /// ([`Output::Batch`]) to `cb`.
    pub fn submit_batch_with_callback(
        &self,
        sub: &mut Submitter,
        armer: &Armer,
        members: &[Work],
        cb: impl FnOnce(Result<Output, OpError>) + Send + 'static,
    ) -> Result<(), OpError> {
        let h = self.check(sub, armer)?;
        let _armed = armer.arm().map_err(|_| released())?;
        sub.submit_batch_with_callback(members, Notify::Handle(h), cb)
    }

    /// A batch with a completion interrupt through `armer`'s handle.
    pub fn submit_batch(
        &self,
        sub: &mut Submitter,
        armer: &Armer,
        members: &[Work],
    ) -> Result<Token, OpError> {
        let h = self.check(sub, armer)?;
        let _armed = armer.arm().map_err(|_| released())?;
        sub.submit_batch(members, Notify::Handle(h))
    }
}

/// After the device recovered from a halt, rewrite the chip's live entries (the reset
/// cleared the table). The hook holds the chip weakly and goes away with it.
fn hook_recovery(dev: &Arc<Device>, chip: &ImsChip) {
    let weak = chip.downgrade();
    dev.add_recovery_hook(Arc::new(move |d: &Device| {
        let Some(chip) = weak.upgrade() else {
            return false;
        };
        match chip.restore() {
            Ok(n) => log::info!("dsa{}: {n} IMS entries restored after recovery", d.index()),
            Err(e) => error!(
                "dsa{}: restoring IMS entries after recovery: {e}",
                d.index()
            ),
        }
        true
    }));
}

fn released() -> OpError {
    OpError::InterruptUnavailable("the IMS handle was released")
}
