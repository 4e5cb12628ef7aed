//! A fake machine for the irqchip: CPUs with an interrupt-request register and an
//! "interrupts disabled" lock, the kernel's vector matrix (0x30–0xef allocatable, 192 per
//! CPU), and an interrupt-remapping table decoding VT-d remappable MSIs (or compatibility
//! messages when remapping is off).
//!
//! A CPU's lock stands for "interrupts disabled on that CPU": `run_on` closures and handler
//! passes hold it, so they never overlap on one CPU, and an interrupt raised meanwhile stays
//! in the IRR until the holder lets go (exactly how a real CPU defers it).

use ims::{ImsPlatform, MsiMessage, PidRef, PlatformError, Route, VectorHandler};
use klib::vectors::VectorMatrix;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use vtd::spec::RemappableMsi;

pub const FIRST_VECTOR: u8 = 0x30;
pub const LAST_VECTOR: u8 = 0xef;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
    static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// The fake CPU the calling thread is "on" (inside a handler pass or a `run_on` closure).
pub fn current_cpu() -> Option<usize> {
    CURRENT.with(|c| c.get())
}

struct OnCpu {
    prev: Option<usize>,
    cpu: usize,
}
impl OnCpu {
    fn enter(cpu: usize) -> OnCpu {
        HELD.with(|h| h.borrow_mut().push(cpu));
        OnCpu {
            prev: CURRENT.with(|c| c.replace(Some(cpu))),
            cpu,
        }
    }
}
impl Drop for OnCpu {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.prev));
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&x| x == self.cpu) {
                h.remove(i);
            }
        });
    }
}

struct Cpu {
    /// "Interrupts disabled".
    lock: Mutex<()>,
    irr: [AtomicU64; 4],
    handlers: Mutex<HashMap<u8, VectorHandler>>,
    taken: Vec<AtomicU64>,
}

impl Cpu {
    fn take_irr(&self) -> Option<u8> {
        for w in (0..4).rev() {
            loop {
                let v = self.irr[w].load(SeqCst);
                if v == 0 {
                    break;
                }
                let b = 63 - v.leading_zeros();
                if self.irr[w].fetch_and(!(1 << b), SeqCst) & (1 << b) != 0 {
                    return Some((w * 64) as u8 + b as u8);
                }
            }
        }
        None
    }
    fn irr_empty(&self) -> bool {
        self.irr.iter().all(|w| w.load(SeqCst) == 0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Irte {
    pub cpu: usize,
    pub vector: u8,
    pub sid: u16,
    /// Posted format: (descriptor id, PIR bit) instead of (cpu, vector).
    pub post: Option<(u64, u8)>,
}

/// A posted-interrupt descriptor of the fake (leaked: never freed, like the kernel's).
#[repr(C, align(64))]
struct Pid {
    pir: [AtomicU64; 4],
    control: AtomicU64,
}

pub struct Machine {
    cpus: Vec<Cpu>,
    matrix: Mutex<VectorMatrix>,
    /// Interrupt remapping on (remappable messages) or off (compatibility format).
    pub remapping: bool,
    irtes: Mutex<Vec<Option<Irte>>>,
    start: Instant,
    /// Messages the IOMMU refused (bad address, absent IRTE, source-ID mismatch).
    pub ir_faults: AtomicU64,
    /// Interrupts on a vector without a handler.
    pub stray: AtomicU64,
    /// Every message delivered to a CPU.
    pub delivered: AtomicU64,
    /// While set, `run_on` fails with a timeout without running the closure.
    pub fail_run_on: AtomicBool,
    pub run_on_calls: AtomicU32,
    /// The IOMMU posts (CAP.PI): [`Machine::with_posting`].
    pub posting: AtomicBool,
    /// Descriptors by id: (descriptor, notification CPU, vector).
    pids: Mutex<HashMap<u64, (&'static Pid, usize, u8)>>,
    /// Posts made, and notifications they sent.
    pub posts: AtomicU64,
    pub notifications: AtomicU64,
}

impl Machine {
    pub fn new(cpus: usize, remapping: bool) -> Arc<Machine> {
        Arc::new(Machine {
            cpus: (0..cpus)
                .map(|_| Cpu {
                    lock: Mutex::new(()),
                    irr: Default::default(),
                    handlers: Mutex::new(HashMap::new()),
                    taken: (0..256).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
            matrix: Mutex::new(VectorMatrix::new(cpus, FIRST_VECTOR, LAST_VECTOR)),
            remapping,
            irtes: Mutex::new(Vec::new()),
            start: Instant::now(),
            ir_faults: AtomicU64::new(0),
            stray: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            fail_run_on: AtomicBool::new(false),
            run_on_calls: AtomicU32::new(0),
            posting: AtomicBool::new(false),
            pids: Mutex::new(HashMap::new()),
            posts: AtomicU64::new(0),
            notifications: AtomicU64::new(0),
        })
    }

    /// A machine with interrupt remapping whose IOMMU posts.
    #[allow(dead_code)] // not every test binary
    pub fn with_posting(cpus: usize) -> Arc<Machine> {
        let m = Machine::new(cpus, true);
        m.posting.store(true, SeqCst);
        m
    }

    /// The post of VT-d §5.2.3: PIR bit, then ON test-and-set; notify if ON was clear.
    fn post(&self, pid: u64, bit: u8) {
        let Some((p, cpu, vector)) = self.pids.lock().unwrap().get(&pid).copied() else {
            self.ir_faults.fetch_add(1, SeqCst);
            return;
        };
        self.posts.fetch_add(1, SeqCst);
        p.pir[bit as usize / 64].fetch_or(1 << (bit % 64), SeqCst);
        if p.control.fetch_or(ims::posted::ON, SeqCst) & ims::posted::ON == 0 {
            self.notifications.fetch_add(1, SeqCst);
            self.raise(cpu, vector);
        }
    }

    /// A message written by the device with requester ID `sid`.
    pub fn msi(&self, sid: u16, addr: u64, data: u32) {
        if addr >> 20 != 0xFEE {
            self.ir_faults.fetch_add(1, SeqCst);
            return;
        }
        match RemappableMsi::handle_of(addr as u32) {
            Some(handle) => {
                if !self.remapping {
                    self.ir_faults.fetch_add(1, SeqCst);
                    return;
                }
                let sub = if addr & (1 << 3) != 0 {
                    data & 0xFFFF
                } else {
                    0
                };
                let idx = handle as usize + sub as usize;
                let e = self.irtes.lock().unwrap().get(idx).copied().flatten();
                match e {
                    Some(Irte {
                        sid: s,
                        post: Some((pid, bit)),
                        ..
                    }) if s == sid => self.post(pid, bit),
                    Some(e) if e.sid == sid => self.raise(e.cpu, e.vector),
                    _ => {
                        self.ir_faults.fetch_add(1, SeqCst);
                    }
                }
            }
            None => {
                // Compatibility format: destination APIC ID = CPU index here.
                let cpu = ((addr >> 12) & 0xFF) as usize;
                self.raise(cpu, data as u8);
            }
        }
    }

    /// Sets `vector` in `cpu`'s IRR and lets the CPU take it (now, or when its current
    /// holder of "interrupts disabled" lets go).
    pub fn raise(&self, cpu: usize, vector: u8) {
        let Some(c) = self.cpus.get(cpu) else {
            self.ir_faults.fetch_add(1, SeqCst);
            return;
        };
        self.delivered.fetch_add(1, SeqCst);
        c.irr[vector as usize / 64].fetch_or(1 << (vector % 64), SeqCst);
        self.service(cpu);
    }

    fn service(&self, cpu: usize) {
        let c = &self.cpus[cpu];
        loop {
            {
                let Ok(_g) = c.lock.try_lock() else {
                    return;
                };
                let _on = OnCpu::enter(cpu);
                while let Some(v) = c.take_irr() {
                    let h = c.handlers.lock().unwrap().get(&v).cloned();
                    c.taken[v as usize].fetch_add(1, SeqCst);
                    match h {
                        Some(h) => {
                            h.run();
                        }
                        None => {
                            self.stray.fetch_add(1, SeqCst);
                        }
                    }
                }
            }
            if c.irr_empty() {
                return;
            }
        }
    }

    /// Runs `f` with `cpu`'s interrupts "disabled": messages raised meanwhile stay pending
    /// until [`Machine::take_pending`] (or the next message) lets the CPU take them.
    #[allow(dead_code)] // the allocation test
    pub fn with_irqs_off<R>(&self, cpu: usize, f: impl FnOnce() -> R) -> R {
        let _g = self.cpus[cpu].lock.lock().unwrap();
        f()
    }

    /// Lets `cpu` take what is pending now.
    #[allow(dead_code)] // the allocation test
    pub fn take_pending(&self, cpu: usize) {
        self.service(cpu);
    }

    /// Interrupts `cpu` took on `vector`.
    pub fn taken(&self, cpu: usize, vector: u8) -> u64 {
        self.cpus[cpu].taken[vector as usize].load(SeqCst)
    }
    /// Interrupts `cpu` took on any vector.
    pub fn taken_total(&self, cpu: usize) -> u64 {
        self.cpus[cpu].taken.iter().map(|a| a.load(SeqCst)).sum()
    }
    /// Vectors of `cpu` whose owner name starts with `prefix` (the kernel's report).
    pub fn vectors_owned(&self, cpu: usize, prefix: &str) -> usize {
        self.matrix
            .lock()
            .unwrap()
            .report(cpu)
            .expect("cpu")
            .count_owned_by(prefix)
    }
    pub fn vectors_free(&self, cpu: usize) -> usize {
        self.matrix.lock().unwrap().report(cpu).expect("cpu").free
    }
    /// Takes `n` vectors on `cpu` for another owner (to squeeze the allocator).
    pub fn hog_vectors(&self, cpu: usize, n: usize) {
        let mut m = self.matrix.lock().unwrap();
        for _ in 0..n {
            m.alloc(cpu, "hog").expect("free vector");
        }
    }
    pub fn irtes_used(&self) -> usize {
        self.irtes.lock().unwrap().iter().flatten().count()
    }
    pub fn irte(&self, id: u32) -> Option<Irte> {
        self.irtes
            .lock()
            .unwrap()
            .get(id as usize)
            .copied()
            .flatten()
    }
    pub fn handler_count(&self, cpu: usize) -> usize {
        self.cpus[cpu].handlers.lock().unwrap().len()
    }
}

// SAFETY: a fake CPU's "interrupts disabled" is its `lock`: `run_on` closures and handler
// passes (`service`) of one CPU both run holding it, so they never overlap.
unsafe impl ImsPlatform for Machine {
    fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    fn alloc_vector(&self, cpu: usize, owner: &'static str) -> Result<u8, PlatformError> {
        use klib::vectors::VectorError;
        self.matrix
            .lock()
            .unwrap()
            .alloc(cpu, owner)
            .map_err(|e| match e {
                VectorError::Exhausted { cpu } => PlatformError::VectorsExhausted { cpu },
                VectorError::NoSuchCpu(cpu) => PlatformError::NoSuchCpu { cpu },
                _ => PlatformError::Failed("vector matrix"),
            })
    }

    fn free_vector(&self, cpu: usize, vector: u8) {
        self.matrix
            .lock()
            .unwrap()
            .free(cpu, vector)
            .expect("freeing an allocated vector");
    }

    fn set_handler(
        &self,
        cpu: usize,
        vector: u8,
        handler: VectorHandler,
    ) -> Result<(), PlatformError> {
        let c = self.cpus.get(cpu).ok_or(PlatformError::NoSuchCpu { cpu })?;
        c.handlers.lock().unwrap().insert(vector, handler);
        Ok(())
    }

    fn clear_handler(&self, cpu: usize, vector: u8) {
        if let Some(c) = self.cpus.get(cpu) {
            c.handlers.lock().unwrap().remove(&vector);
        }
    }

    fn alloc_route(&self, source_id: u16, cpu: usize, vector: u8) -> Result<Route, PlatformError> {
        if cpu >= self.cpus.len() {
            return Err(PlatformError::NoSuchCpu { cpu });
        }
        if !self.remapping {
            return Ok(Route {
                id: 0,
                msg: compat(cpu, vector),
            });
        }
        let mut t = self.irtes.lock().unwrap();
        let e = Irte {
            cpu,
            vector,
            sid: source_id,
            post: None,
        };
        let idx = match t.iter().position(Option::is_none) {
            Some(i) => {
                t[i] = Some(e);
                i
            }
            None => {
                if t.len() >= 1 << 16 {
                    return Err(PlatformError::RoutesExhausted);
                }
                t.push(Some(e));
                t.len() - 1
            }
        };
        let m = RemappableMsi::for_handle(idx as u16);
        Ok(Route {
            id: idx as u32,
            msg: MsiMessage {
                addr: m.address(),
                data: m.data,
            },
        })
    }

    fn retarget_route(
        &self,
        route: &mut Route,
        cpu: usize,
        vector: u8,
    ) -> Result<(), PlatformError> {
        if cpu >= self.cpus.len() {
            return Err(PlatformError::NoSuchCpu { cpu });
        }
        if !self.remapping {
            route.msg = compat(cpu, vector);
            return Ok(());
        }
        let mut t = self.irtes.lock().unwrap();
        match t.get_mut(route.id as usize) {
            Some(Some(e)) => {
                e.cpu = cpu;
                e.vector = vector;
                e.post = None;
                Ok(())
            }
            _ => Err(PlatformError::Failed("no such IRTE")),
        }
    }

    fn posted_interrupts(&self) -> bool {
        self.remapping && self.posting.load(SeqCst)
    }

    fn alloc_pid(&self, cpu: usize, vector: u8) -> Result<PidRef, PlatformError> {
        if cpu >= self.cpus.len() {
            return Err(PlatformError::NoSuchCpu { cpu });
        }
        let p: &'static Pid = Box::leak(Box::new(Pid {
            pir: Default::default(),
            control: AtomicU64::new(0),
        }));
        let id = std::ptr::from_ref(p) as u64;
        self.pids.lock().unwrap().insert(id, (p, cpu, vector));
        Ok(PidRef {
            pir: &p.pir,
            control: &p.control,
            id,
        })
    }

    fn post_route(&self, route: &mut Route, pid: &PidRef, bit: u8) -> Result<(), PlatformError> {
        if !self.posted_interrupts() {
            return Err(PlatformError::Failed("no posting"));
        }
        if !self.pids.lock().unwrap().contains_key(&pid.id) {
            return Err(PlatformError::Failed("unknown descriptor"));
        }
        let mut t = self.irtes.lock().unwrap();
        match t.get_mut(route.id as usize) {
            Some(Some(e)) => {
                e.post = Some((pid.id, bit));
                Ok(())
            }
            _ => Err(PlatformError::Failed("no such IRTE")),
        }
    }

    fn free_route(&self, route: Route) {
        if self.remapping
            && let Some(e) = self.irtes.lock().unwrap().get_mut(route.id as usize)
        {
            assert!(e.is_some(), "IRTE {} freed twice", route.id);
            *e = None;
        }
    }

    fn run_on(
        &self,
        cpu: usize,
        f: Box<dyn FnOnce() + Send + 'static>,
    ) -> Result<(), PlatformError> {
        self.run_on_calls.fetch_add(1, SeqCst);
        let c = self.cpus.get(cpu).ok_or(PlatformError::NoSuchCpu { cpu })?;
        if self.fail_run_on.load(SeqCst) {
            return Err(PlatformError::Timeout { cpu });
        }
        assert!(
            !HELD.with(|h| h.borrow().contains(&cpu)),
            "run_on(CPU {cpu}) from code already running on that CPU with interrupts off"
        );
        {
            let _g = c.lock.lock().unwrap();
            let _on = OnCpu::enter(cpu);
            f();
        }
        self.service(cpu);
        Ok(())
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn compat(cpu: usize, vector: u8) -> MsiMessage {
    MsiMessage {
        addr: 0xFEE0_0000 | (cpu as u64) << 12,
        data: u32::from(vector),
    }
}
