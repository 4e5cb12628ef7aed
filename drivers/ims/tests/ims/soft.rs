//! A software IMS device for the chip's logic tests: an IMS table with the DSA semantics
//! (PASID binding checked per completion, mask → pending, unmask sends pending), and a
//! completion source whose records are a counter the "device" advances.

use crate::machine::{Machine, current_cpu};
use ims::{
    Armer, ChipOptions, CompletionSink, CompletionWatch, DomainConfig, ImsChip, ImsDomain,
    ImsError, ImsStorage, MsiMessage, OwnerId, StorageError, VectorMode,
};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, Debug, Default)]
pub struct Entry {
    pub msg: MsiMessage,
    pub pasid: Option<u32>,
    pub masked: bool,
    pub pending: bool,
}

pub struct SoftIms {
    machine: Arc<Machine>,
    sid: u16,
    table: Mutex<Vec<Entry>>,
    pub fail_quiesce: AtomicBool,
    pub quiesces: AtomicU64,
    /// Completions refused because the entry is bound to another PASID (status 0x19).
    pub refused: AtomicU64,
    /// Runs once, right after the next `program` wrote its entry (to put a device reset and
    /// the chip's restore exactly there).
    pub after_program: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Runs once, at the start of the next `program` (before it writes anything).
    pub before_program: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Runs once, at the start of the next `set_masked(_, false)`.
    pub before_unmask: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// Takes and runs a one-shot hook.
fn run_hook(hook: &Mutex<Option<Box<dyn FnOnce() + Send>>>) {
    let f = hook.lock().unwrap().take();
    if let Some(f) = f {
        f();
    }
}

impl SoftIms {
    pub fn new(machine: &Arc<Machine>, sid: u16, entries: u32) -> Arc<SoftIms> {
        Arc::new(SoftIms {
            machine: machine.clone(),
            sid,
            table: Mutex::new(vec![
                Entry {
                    masked: true,
                    ..Entry::default()
                };
                entries as usize
            ]),
            fail_quiesce: AtomicBool::new(false),
            quiesces: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            after_program: Mutex::new(None),
            before_program: Mutex::new(None),
            before_unmask: Mutex::new(None),
        })
    }

    /// A device reset: every entry back to its reset state (masked, unbound, no message).
    pub fn reset(&self) {
        for e in self.table.lock().unwrap().iter_mut() {
            *e = Entry {
                masked: true,
                ..Entry::default()
            };
        }
    }

    pub fn entry(&self, index: u32) -> Entry {
        self.table.lock().unwrap()[index as usize]
    }

    /// The device finished a descriptor of `pasid` naming entry `index` with RCI: the
    /// binding is checked, then the message is sent (or kept pending while masked).
    /// Returns false if the device refused the handle.
    pub fn fire(&self, index: u32, pasid: u32) -> bool {
        let send = {
            let mut t = self.table.lock().unwrap();
            let e = &mut t[index as usize];
            if e.pasid != Some(pasid) {
                self.refused.fetch_add(1, SeqCst);
                return false;
            }
            if e.masked {
                e.pending = true;
                None
            } else {
                Some(e.msg)
            }
        };
        if let Some(m) = send {
            self.machine.msi(self.sid, m.addr, m.data);
        }
        true
    }
}

impl ImsStorage for SoftIms {
    fn entries(&self) -> u32 {
        self.table.lock().unwrap().len() as u32
    }
    fn program(&self, index: u32, msg: MsiMessage, pasid: u32) -> Result<u32, StorageError> {
        run_hook(&self.before_program);
        let mut t = self.table.lock().unwrap();
        let e = t
            .get_mut(index as usize)
            .ok_or(StorageError::BadIndex { index })?;
        if msg.addr >> 20 != 0xFEE {
            return Err(StorageError::AddressRejected { addr: msg.addr });
        }
        e.masked = true;
        e.msg = msg;
        e.pasid = Some(pasid);
        drop(t);
        run_hook(&self.after_program);
        Ok(index)
    }
    fn set_message(&self, index: u32, msg: MsiMessage) -> Result<(), StorageError> {
        let mut t = self.table.lock().unwrap();
        let e = t
            .get_mut(index as usize)
            .ok_or(StorageError::BadIndex { index })?;
        e.msg = msg;
        Ok(())
    }
    fn set_masked(&self, index: u32, masked: bool) {
        if !masked {
            run_hook(&self.before_unmask);
        }
        let send = {
            let mut t = self.table.lock().unwrap();
            let e = &mut t[index as usize];
            e.masked = masked;
            if !masked && e.pending {
                e.pending = false;
                Some(e.msg)
            } else {
                None
            }
        };
        if let Some(m) = send {
            self.machine.msi(self.sid, m.addr, m.data);
        }
    }
    fn pending(&self, index: u32) -> bool {
        self.table.lock().unwrap()[index as usize].pending
    }
    fn unbind(&self, index: u32) {
        let mut t = self.table.lock().unwrap();
        t[index as usize].masked = true;
        t[index as usize].pasid = None;
    }
    fn quiesce(&self, _index: u32, _pasid: u32) -> Result<(), StorageError> {
        self.quiesces.fetch_add(1, SeqCst);
        if self.fail_quiesce.load(SeqCst) {
            return Err(StorageError::QuiesceFailed("injected"));
        }
        Ok(())
    }
    fn clear(&self, index: u32) -> Result<(), StorageError> {
        let mut t = self.table.lock().unwrap();
        t[index as usize] = Entry {
            masked: true,
            ..Entry::default()
        };
        Ok(())
    }
}

/// One delivered completion: its sequence number and the CPU whose pass delivered it.
pub type Delivery = (u64, Option<usize>);

/// A completion source: `submitted` descriptors, of which the device has written
/// `completed` records; polling claims each written record exactly once.
#[derive(Default)]
pub struct SoftSink {
    pub submitted: AtomicU64,
    pub completed: AtomicU64,
    claimed: AtomicU64,
    pub log: Mutex<Vec<Delivery>>,
}

impl SoftSink {
    pub fn new() -> Arc<SoftSink> {
        Arc::new(SoftSink::default())
    }
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.log.lock().unwrap().clone()
    }
    pub fn delivered(&self) -> u64 {
        self.log.lock().unwrap().len() as u64
    }
    /// Completions claimed by polls so far.
    pub fn claimed(&self) -> u64 {
        self.claimed.load(SeqCst)
    }
    /// Asserts that completions 0..n were each delivered exactly once.
    pub fn assert_exactly_once(&self, n: u64) {
        let mut seqs: Vec<u64> = self.deliveries().iter().map(|d| d.0).collect();
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..n).collect::<Vec<_>>(),
            "each completion exactly once"
        );
    }
}

impl CompletionSink for SoftSink {
    fn poll(&self, delivered: &AtomicU64) -> u32 {
        // One pass over what is written now, like a real sink's scan of its records: a
        // producer completing continuously must not keep the poller here forever (its later
        // completions raise interrupts of their own).
        let end = self.completed.load(SeqCst);
        let mut n = 0;
        loop {
            let c = self.claimed.load(SeqCst);
            if c >= end {
                return n;
            }
            if self
                .claimed
                .compare_exchange(c, c + 1, SeqCst, SeqCst)
                .is_ok()
            {
                delivered.fetch_add(1, SeqCst);
                self.log.lock().unwrap().push((c, current_cpu()));
                n += 1;
            }
        }
    }
    fn outstanding(&self) -> bool {
        self.claimed.load(SeqCst) < self.submitted.load(SeqCst)
    }
}

/// Submits one descriptor through `armer` (arm → count it → end of the submit call).
pub fn submit(armer: &Armer, sink: &SoftSink) -> Result<(), ImsError> {
    let g = armer.arm()?;
    sink.submitted.fetch_add(1, SeqCst);
    drop(g);
    Ok(())
}

/// The device completes one descriptor of `pasid` naming `index`: record first, then the
/// interrupt (as DSA does).
pub fn complete(ims: &SoftIms, sink: &SoftSink, index: u32, pasid: u32) -> bool {
    sink.completed.fetch_add(1, SeqCst);
    ims.fire(index, pasid)
}

const FREE: u8 = 0;
const PENDING: u8 = 1;
const CLAIMED: u8 = 2;

/// A completion source with records like DSA's, and a completion watch over their status
/// bytes: a submission takes a free record, zeroes its status and watches it (all while the
/// handle is armed); the "device" writes a non-zero status, then raises the interrupt;
/// polling claims each written record once (PENDING → CLAIMED), unwatching it, in any order.
pub struct RecordSink {
    status: Arc<Vec<AtomicU8>>,
    state: Vec<AtomicU8>,
    watch: Arc<CompletionWatch>,
    /// (record, CPU whose pass delivered it), in delivery order.
    pub log: Mutex<Vec<(usize, Option<usize>)>>,
    pub polls: AtomicU64,
}

/// Bytes per record (the status byte first), as DSA's 32-byte completion records.
const STRIDE: usize = 32;

impl RecordSink {
    pub fn new(records: usize) -> Arc<RecordSink> {
        let status: Arc<Vec<AtomicU8>> =
            Arc::new((0..records * STRIDE).map(|_| AtomicU8::new(0)).collect());
        let p = NonNull::new(status.as_ptr() as *mut u8).expect("non-null");
        // SAFETY: the bytes live in `status`, which the watch keeps alive, and everything
        // accesses them through AtomicU8.
        let watch = unsafe { CompletionWatch::new(status.clone(), p, STRIDE, records) };
        Arc::new(RecordSink {
            status,
            state: (0..records).map(|_| AtomicU8::new(FREE)).collect(),
            watch: Arc::new(watch),
            log: Mutex::new(Vec::new()),
            polls: AtomicU64::new(0),
        })
    }

    /// Submits one operation through `armer`; `during` runs after the record is watched and
    /// before the submit call ends (the device may complete it right then). Returns the
    /// record.
    pub fn submit_with(
        &self,
        armer: &Armer,
        during: impl FnOnce(usize),
    ) -> Result<usize, ImsError> {
        let g = armer.arm()?;
        let i = (0..self.state.len())
            .find(|&i| {
                self.state[i]
                    .compare_exchange(FREE, PENDING, SeqCst, SeqCst)
                    .is_ok()
            })
            .expect("a free record");
        self.status[i * STRIDE].store(0, SeqCst);
        self.watch.watch(i);
        during(i);
        drop(g);
        Ok(i)
    }

    pub fn submit(&self, armer: &Armer) -> Result<usize, ImsError> {
        self.submit_with(armer, |_| {})
    }

    /// The device writes record `i` (status only: nothing raised).
    pub fn write(&self, i: usize) {
        self.status[i * STRIDE].store(1, SeqCst);
    }

    /// The device completes record `i` of a descriptor of `pasid` naming entry `index`:
    /// record first, then the interrupt.
    pub fn complete(&self, ims: &SoftIms, index: u32, pasid: u32, i: usize) -> bool {
        self.write(i);
        ims.fire(index, pasid)
    }

    pub fn delivered(&self) -> Vec<usize> {
        self.log.lock().unwrap().iter().map(|d| d.0).collect()
    }
}

impl CompletionSink for RecordSink {
    fn poll(&self, delivered: &AtomicU64) -> u32 {
        self.polls.fetch_add(1, SeqCst);
        let mut n = 0;
        self.watch.for_each_watched(|i| {
            if self.state[i].load(SeqCst) != PENDING || self.status[i * STRIDE].load(SeqCst) == 0 {
                return;
            }
            if self.state[i]
                .compare_exchange(PENDING, CLAIMED, SeqCst, SeqCst)
                .is_ok()
            {
                self.watch.unwatch(i);
                delivered.fetch_add(1, SeqCst);
                self.log.lock().unwrap().push((i, current_cpu()));
                self.state[i].store(FREE, SeqCst);
                n += 1;
            }
        });
        n
    }
    fn outstanding(&self) -> bool {
        self.state.iter().any(|s| s.load(SeqCst) != FREE)
    }
    fn watch(&self) -> Option<Arc<CompletionWatch>> {
        Some(self.watch.clone())
    }
}

/// Requester ID of the software IMS device in the chip-level tests.
pub const SID: u16 = 0x0100;

/// A system domain of `mode` on `m`.
pub fn domain(m: &Arc<Machine>, mode: VectorMode) -> ImsDomain {
    ImsDomain::new(
        m.clone(),
        DomainConfig {
            mode,
            ..DomainConfig::default()
        },
    )
    .expect("domain")
}

/// `ims` registered with `d` as "soft0" (requester [`SID`]) with a per-PASID quota.
pub fn chip(d: &ImsDomain, ims: &Arc<SoftIms>, quota: u32) -> ImsChip {
    d.register(
        ims.clone(),
        ChipOptions {
            pasid_quota: quota,
            ..ChipOptions::new("soft0", SID)
        },
    )
    .expect("register")
}

/// The owner of a test client of `pasid` (owner ids 1000 + PASID).
pub fn client(pasid: u32) -> OwnerId {
    OwnerId::new(u64::from(pasid) + 1000, pasid).unwrap()
}
