//! The per-device part: one device's IMS table registered with the domain, the entry
//! allocator and the per-PASID quotas, and handle allocation.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::SeqCst};

use crate::domain::{DomainInner, OWNER_PER_HANDLE, VectorHandler, VectorMode, loc};
use crate::error::ImsError;
use crate::handle::{Ctl, HandleInner, ImsHandle};
use crate::sink::CompletionSink;
use crate::storage::ImsStorage;

/// Largest table the chip accepts (device handles are 16 bits on DSA; anything larger is
/// a misreport).
const MAX_ENTRIES: u32 = 1 << 16;
/// PASIDs are 20 bits.
pub const PASID_LIMIT: u32 = 1 << 20;

/// Who asks for a handle: an identity and the PASID of its address space. The kernel builds
/// it from the client's own bound PASID, so a handle can only ever be bound to the PASID of
/// the client that holds it (there is no separate PASID argument to get wrong).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImsClient {
    id: u64,
    pasid: u32,
}

impl ImsClient {
    pub fn new(id: u64, pasid: u32) -> Result<ImsClient, ImsError> {
        if pasid >= PASID_LIMIT {
            return Err(ImsError::BadPasid { pasid });
        }
        Ok(ImsClient { id, pasid })
    }
    pub fn id(&self) -> u64 {
        self.id
    }
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
}

pub(crate) struct ChipInner {
    pub domain: Arc<DomainInner>,
    pub storage: Arc<dyn ImsStorage>,
    pub options: ChipOptions,
    pub entries: u32,
    /// Unique within the domain.
    pub id: u64,
    table: spin::Mutex<Table>,
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
            }),
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
        client: &ImsClient,
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
        if d.config.mode == VectorMode::Shared && st.handles.load(SeqCst) >= cap {
            return Err(ImsError::CpuFull { cpu, capacity: cap });
        }
        let index = self.reserve(client.pasid)?;
        let pasid = client.pasid;
        let plat = &d.platform;

        // Each step undoes the ones before it on failure: a refused allocation leaves no
        // vector, route, entry or quota behind.
        let (vector, own_vector) = match (d.config.mode, st.vector) {
            (VectorMode::Shared, Some(v)) => (v, false),
            (VectorMode::Shared, None) => {
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
        let h = Arc::new(HandleInner {
            chip: self.clone(),
            index,
            pasid,
            client: client.id,
            sink,
            loc: AtomicU64::new(crate::domain::NOWHERE),
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
            VectorMode::PerHandle => {
                h.loc.store(loc(cpu, vector as u32), SeqCst);
                plat.set_handler(cpu, vector, VectorHandler::direct(d, &h, cpu, vector))
                    .map(|()| {
                        st.vectors.fetch_add(1, SeqCst);
                        st.handles.fetch_add(1, SeqCst);
                    })
                    .map_err(ImsError::from)
            }
        };
        if let Err(e) = placed {
            h.loc.store(crate::domain::NOWHERE, SeqCst);
            let reuse = self.retire_entry(index, pasid);
            plat.free_route(route);
            undo_vector();
            self.unreserve(index, pasid, reuse);
            return Err(e);
        }
        self.table.lock().live[index as usize] = Some(Arc::downgrade(&h));
        self.storage.set_masked(index, false);
        log::debug!(
            "ims: {}: entry {index} → PASID {pasid:#x}, client {}, CPU {cpu}, vector {vector:#04x}",
            self.options.name,
            client.id
        );
        Ok(ImsHandle::new(h))
    }
}

/// One device's IMS table, registered with a domain.
pub struct ImsChip {
    pub(crate) inner: Arc<ChipInner>,
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
        client: &ImsClient,
        cpu: usize,
        sink: Arc<dyn CompletionSink>,
    ) -> Result<ImsHandle, ImsError> {
        self.inner.allocate(client, cpu, sink)
    }

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
    /// Call with no control operation on this chip's handles in progress. Returns how many
    /// entries were restored.
    pub fn restore(&self) -> Result<u32, ImsError> {
        let live: Vec<Arc<HandleInner>> = self
            .inner
            .table
            .lock()
            .live
            .iter()
            .filter_map(|w| w.as_ref().and_then(Weak::upgrade))
            .collect();
        let mut n = 0;
        for h in live {
            if h.flags.load(SeqCst) & crate::handle::DEAD != 0 {
                continue;
            }
            let msg = h.ctl.lock().route.msg;
            let dev = self.inner.storage.program(h.index, msg, h.pasid)?;
            h.dev_handle.store(dev, SeqCst);
            if h.flags.load(SeqCst) & crate::handle::MASKED == 0 {
                self.inner.storage.set_masked(h.index, false);
            }
            n += 1;
        }
        log::info!("ims: {}: {n} entries restored", self.inner.options.name);
        Ok(n)
    }
}
