//! The per-device part: one device's IMS table registered with the domain, the entry
//! allocator and the per-PASID quotas, and handle allocation.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};

use crate::domain::{DomainInner, HandleLocation, OWNER_PER_HANDLE, VectorHandler, VectorMode};
use crate::error::ImsError;
use crate::handle::{Ctl, HandleInner, ImsHandle};
use crate::platform::MsiMessage;
use crate::sink::CompletionSink;
use crate::storage::{ImsStorage, StorageError};
use crate::watch::CompletionWatch;

/// Largest table the chip accepts (device handles are 16 bits on DSA; anything larger is
/// a misreport).
const MAX_ENTRIES: u32 = 1 << 16;
/// PASIDs are 20 bits.
pub const PASID_LIMIT: u32 = 1 << 20;

/// Who owns a handle (formerly `ImsClient`): an identity and the PASID of its address space. The kernel builds
/// it from the client's own bound PASID, so a handle can only ever be bound to the PASID of
/// the client that holds it (there is no separate PASID argument to get wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerId {
    id: u64,
    pasid: u32,
}

impl OwnerId {
    /// The owner `id` with the PASID of its address space; fails with
    /// [`ImsError::BadPasid`] unless `pasid` < [`PASID_LIMIT`] (20 bits).
    pub fn new(id: u64, pasid: u32) -> Result<OwnerId, ImsError> {
        if pasid >= PASID_LIMIT {
            return Err(ImsError::BadPasid { pasid });
        }
        Ok(OwnerId { id, pasid })
    }
    /// The owner's identity (the kernel's client id).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The PASID of the owner's address space (20 bits).
    pub fn pasid(&self) -> u32 {
        self.pasid
    }
}

/// Per-device policy.
#[derive(Clone, Copy, Debug)]
pub struct ChipOptions {
    /// For logs.
    pub name: &'static str,
    /// PCI requester ID of the device (interrupt-remapping source validation).
    pub source_id: u16,
    /// Default number of handles one PASID may hold on this device.
    pub pasid_quota: u32,
}

impl ChipOptions {
    /// The options of device `name` with PCI requester ID `source_id` and the default quota
    /// of 64 handles per PASID.
    pub fn new(name: &'static str, source_id: u16) -> ChipOptions {
        ChipOptions {
            name,
            source_id,
            pasid_quota: 64,
        }
    }
}

struct Table {
    /// Free entries, lowest index last (popped first).
    free: Vec<u32>,
    live: Vec<Option<Weak<HandleInner>>>,
    usage: BTreeMap<u32, u32>,
    quotas: BTreeMap<u32, u32>,
    leaked: u32,
    /// Entries lent to another domain ([`ImsChip::carve`]).
    lent: u32,
}

pub(crate) struct ChipInner {
    pub domain: Arc<DomainInner>,
    pub storage: Arc<dyn ImsStorage>,
    pub options: ChipOptions,
    pub entries: u32,
    /// Unique within the domain.
    pub id: u64,
    table: spin::Mutex<Table>,
    /// Restore passes started ([`ImsChip::restore`]): an allocation that overlapped one
    /// programs its entry again, since the pass may have run before the handle was live.
    restores: AtomicU64,
}

impl ChipInner {
    pub fn new(
        domain: &Arc<DomainInner>,
        storage: Arc<dyn ImsStorage>,
        options: ChipOptions,
    ) -> Result<Arc<ChipInner>, ImsError> {
        let entries = storage.entries();
        if entries > MAX_ENTRIES {
            return Err(ImsError::BadStorage("more than 65536 IMS entries reported"));
        }
        let mut live = Vec::with_capacity(entries as usize);
        live.resize_with(entries as usize, || None);
        log::info!(
            "ims: {} registered: {entries} entries, PASID quota {}",
            options.name,
            options.pasid_quota
        );
        Ok(Arc::new(ChipInner {
            domain: domain.clone(),
            storage,
            options,
            entries,
            id: domain.next_chip.fetch_add(1, SeqCst),
            table: spin::Mutex::new(Table {
                free: (0..entries).rev().collect(),
                live,
                usage: BTreeMap::new(),
                quotas: BTreeMap::new(),
                leaked: 0,
                lent: 0,
            }),
            restores: AtomicU64::new(0),
        }))
    }

    fn quota_of(&self, t: &Table, pasid: u32) -> u32 {
        t.quotas
            .get(&pasid)
            .copied()
            .unwrap_or(self.options.pasid_quota)
    }

    /// Takes an entry for `pasid`, charging its quota. Checks the quota first, so a PASID at
    /// its quota learns that even when the table is also full.
    fn reserve(&self, pasid: u32) -> Result<u32, ImsError> {
        let mut t = self.table.lock();
        let quota = self.quota_of(&t, pasid);
        let used = t.usage.get(&pasid).copied().unwrap_or(0);
        if used >= quota {
            return Err(ImsError::QuotaExceeded { pasid, quota });
        }
        let index = t.free.pop().ok_or(ImsError::TableFull {
            entries: self.entries,
        })?;
        t.usage.insert(pasid, used + 1);
        Ok(index)
    }

    /// Gives back an entry (`reuse`: it may be handed out again; otherwise it is retired for
    /// good because the device might still use it) and the PASID's quota.
    pub fn unreserve(&self, index: u32, pasid: u32, reuse: bool) {
        let mut t = self.table.lock();
        if let Some(l) = t.live.get_mut(index as usize) {
            *l = None;
        }
        if reuse {
            t.free.push(index);
        } else {
            t.leaked += 1;
        }
        if let Some(u) = t.usage.get_mut(&pasid) {
            *u -= 1;
            if *u == 0 {
                t.usage.remove(&pasid);
            }
        }
    }

    /// Takes `count` free entries (lowest first) out of this chip's allocator for a carve.
    fn lend(&self, count: u32) -> Result<Vec<u32>, ImsError> {
        let mut t = self.table.lock();
        let free = t.free.len() as u32;
        if count == 0 || count > free {
            return Err(ImsError::TableFull {
                entries: self.entries,
            });
        }
        let mut v = Vec::with_capacity(count as usize);
        for _ in 0..count {
            // `free` holds `count` or more entries (checked above).
            if let Some(i) = t.free.pop() {
                v.push(i);
            }
        }
        t.lent += count;
        Ok(v)
    }

    /// Takes back lent entries: `clean` ones return to the allocator, the others (the
    /// borrower could not prove the device is done with them) are retired for good.
    fn take_back(&self, clean: &[u32], retired: u32) {
        let mut t = self.table.lock();
        t.lent = t.lent.saturating_sub(clean.len() as u32 + retired);
        // Lowest index popped first, as at creation.
        t.free.extend(clean.iter().rev().copied());
        t.free.sort_unstable_by(|a, b| b.cmp(a));
        t.leaked += retired;
    }

    /// Takes an entry out of service: unbind, drain, clear. Returns whether it may be reused.
    pub fn retire_entry(&self, index: u32, pasid: u32) -> bool {
        self.storage.unbind(index);
        if let Err(e) = self.storage.quiesce(index, pasid) {
            log::error!(
                "ims: {}: entry {index} (PASID {pasid:#x}) could not be quiesced ({e}); retired for good",
                self.options.name
            );
            return false;
        }
        if let Err(e) = self.storage.clear(index) {
            log::error!(
                "ims: {}: entry {index} could not be cleared ({e}); retired for good",
                self.options.name
            );
            return false;
        }
        true
    }

    fn allocate(
        self: &Arc<Self>,
        client: &OwnerId,
        cpu: usize,
        sink: Arc<dyn CompletionSink>,
    ) -> Result<ImsHandle, ImsError> {
        let d = &self.domain;
        let st = d.cpu(cpu)?;
        if client.pasid >= PASID_LIMIT {
            return Err(ImsError::BadPasid {
                pasid: client.pasid,
            });
        }
        // Cheap early refusal; the insertion on the CPU re-checks exactly.
        let cap = d.config.max_handles_per_cpu;
        if d.config.mode.one_vector_per_cpu() && st.handles.load(SeqCst) >= cap {
            return Err(ImsError::CpuFull { cpu, capacity: cap });
        }
        let index = self.reserve(client.pasid)?;
        let pasid = client.pasid;
        let plat = &d.platform;

        // Each step undoes the ones before it on failure: a refused allocation leaves no
        // vector, route, entry or quota behind.
        let (vector, own_vector) = match (d.config.mode, st.vector) {
            (VectorMode::Shared | VectorMode::Posted, Some(v)) => (v, false),
            (VectorMode::Shared | VectorMode::Posted, None) => {
                self.unreserve(index, pasid, true);
                return Err(ImsError::BadStorage("shared vector missing"));
            }
            (VectorMode::PerHandle, _) => match plat.alloc_vector(cpu, OWNER_PER_HANDLE) {
                Ok(v) => (v, true),
                Err(e) => {
                    self.unreserve(index, pasid, true);
                    return Err(e.into());
                }
            },
        };
        let undo_vector = || {
            if own_vector {
                plat.free_vector(cpu, vector);
            }
        };
        let route = match plat.alloc_route(self.options.source_id, cpu, vector) {
            Ok(r) => r,
            Err(e) => {
                undo_vector();
                self.unreserve(index, pasid, true);
                return Err(e.into());
            }
        };
        let restores_before = self.restores.load(SeqCst);
        let dev_handle = match self.storage.program(index, route.msg, pasid) {
            Ok(h) => h,
            Err(e) => {
                let reuse = self.retire_entry(index, pasid);
                plat.free_route(route);
                undo_vector();
                self.unreserve(index, pasid, reuse);
                return Err(e.into());
            }
        };
        let direct = sink.delivers_directly();
        let idle_word = sink
            .idle_word()
            .map(|w| crate::handle::IdleWord(core::ptr::NonNull::from(w)));
        let h = Arc::new_cyclic(|this| HandleInner {
            direct,
            arms: d.config.mode == VectorMode::Shared,
            idle_word,
            idle_mark: AtomicU64::new(0),
            watch: sink
                .watch()
                .unwrap_or_else(|| Arc::new(CompletionWatch::always())),
            chip: self.clone(),
            index,
            pasid,
            client: client.id,
            raw: HandleInner::raw_or_dyn(&*sink, this.as_ptr()),
            sink,
            loc: AtomicU64::new(HandleLocation::NOWHERE),
            flags: AtomicU8::new(0),
            arming: AtomicU32::new(0),
            dev_handle: AtomicU32::new(dev_handle),
            delivered: AtomicU64::new(0),
            ctl: spin::Mutex::new(Ctl {
                route,
                cpu,
                vector,
                slot: 0,
            }),
        });
        let placed = match d.config.mode {
            VectorMode::Shared => d.insert_on(cpu, &h).map(|slot| h.ctl.lock().slot = slot),
            // The route posts to the slot's descriptor bit before the entry is unmasked.
            VectorMode::Posted => d.insert_on(cpu, &h).and_then(|slot| {
                h.ctl.lock().slot = slot;
                let posted = d.slot_target(cpu, slot).and_then(|(pid, bit)| {
                    let mut c = h.ctl.lock();
                    Ok(plat.post_route(&mut c.route, &pid, bit)?)
                });
                if posted.is_err() {
                    let _ = d.remove_on(cpu, slot, &h);
                }
                posted
            }),
            VectorMode::PerHandle => {
                h.loc
                    .store(HandleLocation::new(cpu, u32::from(vector)).pack(), SeqCst);
                plat.set_handler(cpu, vector, VectorHandler::direct(d, &h, cpu, vector))
                    .map(|()| {
                        st.vectors.fetch_add(1, SeqCst);
                        st.handles.fetch_add(1, SeqCst);
                    })
                    .map_err(ImsError::from)
            }
        };
        if let Err(e) = placed {
            h.loc.store(HandleLocation::NOWHERE, SeqCst);
            let reuse = self.retire_entry(index, pasid);
            plat.free_route(route);
            undo_vector();
            self.unreserve(index, pasid, reuse);
            return Err(e);
        }
        self.table.lock().live[index as usize] = Some(Arc::downgrade(&h));
        {
            // A live handle's entry is written under its `ctl` lock (restore does the same).
            let _entry = h.ctl.lock();
            if self.restores.load(SeqCst) != restores_before {
                // A device reset and restore ran since the entry was programmed; the pass
                // may have looked at the live list before this handle was in it.
                match self.storage.program(index, route.msg, pasid) {
                    Ok(dev) => h.dev_handle.store(dev, SeqCst),
                    Err(e) => {
                        drop(_entry);
                        log::error!(
                            "ims: {}: entry {index}: programming again after a restore: {e}",
                            self.options.name
                        );
                        // Dropping the handle releases everything allocated above.
                        drop(ImsHandle::new(h));
                        return Err(e.into());
                    }
                }
            }
            self.storage.set_masked(index, false);
        }
        log::debug!(
            "ims: {}: entry {index} → PASID {pasid:#x}, client {}, CPU {cpu}, vector {vector:#04x}",
            self.options.name,
            client.id
        );
        Ok(ImsHandle::new(h))
    }
}

/// One device's IMS table, registered with a domain. Cloning gives another reference to the
/// same chip.
#[derive(Clone)]
pub struct ImsChip {
    pub(crate) inner: Arc<ChipInner>,
}

/// A reference to a chip that does not keep it alive (e.g. for a device's recovery hook,
/// which the device itself holds).
#[derive(Clone)]
pub struct WeakChip {
    inner: Weak<ChipInner>,
}

impl core::fmt::Debug for WeakChip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "WeakChip(alive: {})", self.inner.strong_count() > 0)
    }
}

impl WeakChip {
    /// The chip, if it still exists.
    pub fn upgrade(&self) -> Option<ImsChip> {
        self.inner.upgrade().map(|inner| ImsChip { inner })
    }
}

impl core::fmt::Debug for ImsChip {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ImsChip")
            .field("name", &self.inner.options.name)
            .field("entries", &self.inner.entries)
            .finish()
    }
}

impl ImsChip {
    /// Allocates a handle for `client` (bound to the client's PASID) targeting `cpu`, whose
    /// completions come from `sink`. Refusals — [`ImsError::QuotaExceeded`],
    /// [`ImsError::TableFull`], [`ImsError::VectorsExhausted`] (per-handle mode),
    /// [`ImsError::CpuFull`] — leave nothing allocated and affect no other PASID.
    pub fn allocate(
        &self,
        client: &OwnerId,
        cpu: usize,
        sink: Arc<dyn CompletionSink>,
    ) -> Result<ImsHandle, ImsError> {
        self.inner.allocate(client, cpu, sink)
    }

    /// The device's name ([`ChipOptions::name`], for logs).
    pub fn name(&self) -> &'static str {
        self.inner.options.name
    }
    /// Identifies the chip within its domain (handles and armers carry it).
    pub fn id(&self) -> u64 {
        self.inner.id
    }
    /// Size of the device's IMS table.
    pub fn entries(&self) -> u32 {
        self.inner.entries
    }
    /// Entries that can be allocated now.
    pub fn free_entries(&self) -> u32 {
        self.inner.table.lock().free.len() as u32
    }
    /// Entries taken out of service because the device could not be quiesced.
    pub fn leaked_entries(&self) -> u32 {
        self.inner.table.lock().leaked
    }
    /// Entries lent to other domains ([`ImsChip::carve`]) and not yet given back.
    pub fn lent_entries(&self) -> u32 {
        self.inner.table.lock().lent
    }
    /// Live handles of this chip (allocated and not released).
    pub fn live_handles(&self) -> u32 {
        let t = self.inner.table.lock();
        t.live
            .iter()
            .filter(|w| w.as_ref().is_some_and(|w| w.strong_count() > 0))
            .count() as u32
    }
    /// A reference that does not keep the chip alive.
    pub fn downgrade(&self) -> WeakChip {
        WeakChip {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Lends `count` free entries of this device's table as a storage of their own, to be
    /// registered with another domain (e.g. the per-handle-vector comparison domain next to
    /// the system's shared one, on the same device). The entries count as in use here until
    /// the returned storage is dropped; entries the borrower could not clear (a failed
    /// quiesce) are then retired instead of returned. [`ImsError::TableFull`] if fewer than
    /// `count` entries are free (or `count` is 0).
    pub fn carve(&self, count: u32) -> Result<CarvedStorage, ImsError> {
        let indices = self.inner.lend(count)?;
        let dirty = alloc::vec![false; indices.len()];
        log::info!(
            "ims: {}: {count} entries lent (first {})",
            self.inner.options.name,
            indices.first().copied().unwrap_or(0)
        );
        Ok(CarvedStorage {
            parent: self.inner.clone(),
            indices,
            dirty: spin::Mutex::new(dirty),
        })
    }
    /// Handles `pasid` holds on this device.
    pub fn usage(&self, pasid: u32) -> u32 {
        self.inner
            .table
            .lock()
            .usage
            .get(&pasid)
            .copied()
            .unwrap_or(0)
    }
    /// The quota that applies to `pasid`.
    pub fn quota(&self, pasid: u32) -> u32 {
        let t = self.inner.table.lock();
        self.inner.quota_of(&t, pasid)
    }
    /// Sets (`Some`) or resets to the default (`None`) the quota of one PASID. Lowering it
    /// below the current usage revokes nothing; further allocations are refused.
    pub fn set_quota(&self, pasid: u32, quota: Option<u32>) {
        let mut t = self.inner.table.lock();
        match quota {
            Some(q) => t.quotas.insert(pasid, q),
            None => t.quotas.remove(&pasid),
        };
    }

    /// Rewrites every live entry after the device lost its IMS table (a reset during halt
    /// recovery): message, binding, mask state; device-issued handles are requested again.
    /// Safe against concurrent control operations: each entry is rewritten under its
    /// handle's `ctl` lock, under which mask, unmask, retarget and release make their entry
    /// writes, and an allocation overlapping the pass programs its entry again. A handle
    /// whose lock cannot be had within the domain's call timeout (e.g. this runs in an
    /// interrupt that preempted its holder) and an entry the device refuses are skipped
    /// and reported. Returns how many entries were restored.
    pub fn restore(&self) -> Result<u32, ImsError> {
        let inner = &self.inner;
        inner.restores.fetch_add(1, SeqCst);
        let live: Vec<Arc<HandleInner>> = inner
            .table
            .lock()
            .live
            .iter()
            .filter_map(|w| w.as_ref().and_then(Weak::upgrade))
            .collect();
        let d = &inner.domain;
        let mut n = 0;
        let mut first_err = None;
        for h in live {
            let c = d.wait_for(|| h.ctl.try_lock());
            let Some(c) = c else {
                log::error!(
                    "ims: {}: entry {} not restored: its handle stayed locked",
                    inner.options.name,
                    h.index
                );
                first_err.get_or_insert(ImsError::Timeout("a handle's control lock"));
                continue;
            };
            if h.flags.load(SeqCst) & crate::handle::DEAD != 0 {
                continue; // being released: its entry is masked and cleared by the release
            }
            match inner.storage.program(h.index, c.route.msg, h.pasid) {
                Ok(dev) => {
                    h.dev_handle.store(dev, SeqCst);
                    if h.flags.load(SeqCst) & crate::handle::MASKED == 0 {
                        inner.storage.set_masked(h.index, false);
                    }
                    n += 1;
                }
                Err(e) => {
                    log::error!(
                        "ims: {}: entry {} not restored: {e}",
                        inner.options.name,
                        h.index
                    );
                    first_err.get_or_insert(ImsError::Storage(e));
                }
            }
        }
        log::info!("ims: {}: {n} entries restored", inner.options.name);
        match first_err {
            None => Ok(n),
            Some(e) => Err(e),
        }
    }
}

/// A part of another chip's table ([`ImsChip::carve`]): local entry `i` is the parent's entry
/// `device_index(i)`. Every operation goes to the parent's storage.
pub struct CarvedStorage {
    parent: Arc<ChipInner>,
    indices: Vec<u32>,
    /// Programmed and not cleared since: the device might still use the entry.
    dirty: spin::Mutex<Vec<bool>>,
}

impl core::fmt::Debug for CarvedStorage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CarvedStorage")
            .field("of", &self.parent.options.name)
            .field("entries", &self.indices.len())
            .finish()
    }
}

impl CarvedStorage {
    /// The parent table's index of local entry `index`.
    pub fn device_index(&self, index: u32) -> Option<u32> {
        self.indices.get(index as usize).copied()
    }

    fn map(&self, index: u32) -> Result<u32, StorageError> {
        self.device_index(index)
            .ok_or(StorageError::BadIndex { index })
    }
}

impl ImsStorage for CarvedStorage {
    fn entries(&self) -> u32 {
        self.indices.len() as u32
    }
    fn program(&self, index: u32, msg: MsiMessage, pasid: u32) -> Result<u32, StorageError> {
        let i = self.map(index)?;
        self.dirty.lock()[index as usize] = true;
        self.parent.storage.program(i, msg, pasid)
    }
    fn set_message(&self, index: u32, msg: MsiMessage) -> Result<(), StorageError> {
        self.parent.storage.set_message(self.map(index)?, msg)
    }
    fn set_masked(&self, index: u32, masked: bool) {
        if let Ok(i) = self.map(index) {
            self.parent.storage.set_masked(i, masked);
        }
    }
    fn pending(&self, index: u32) -> bool {
        self.map(index)
            .is_ok_and(|i| self.parent.storage.pending(i))
    }
    fn unbind(&self, index: u32) {
        if let Ok(i) = self.map(index) {
            self.parent.storage.unbind(i);
        }
    }
    fn quiesce(&self, index: u32, pasid: u32) -> Result<(), StorageError> {
        self.parent.storage.quiesce(self.map(index)?, pasid)
    }
    fn clear(&self, index: u32) -> Result<(), StorageError> {
        let i = self.map(index)?;
        self.parent.storage.clear(i)?;
        self.dirty.lock()[index as usize] = false;
        Ok(())
    }
}

impl Drop for CarvedStorage {
    fn drop(&mut self) {
        let dirty = self.dirty.lock();
        let clean: Vec<u32> = self
            .indices
            .iter()
            .zip(dirty.iter())
            .filter(|(_, d)| !**d)
            .map(|(i, _)| *i)
            .collect();
        let retired = (self.indices.len() - clean.len()) as u32;
        if retired > 0 {
            log::error!(
                "ims: {}: {retired} lent entries come back uncleared; retired for good",
                self.parent.options.name
            );
        }
        self.parent.take_back(&clean, retired);
    }
}
