//! Ring-3 processes and their threads: creation from an embedded program, the per-CPU
//! scheduler, blocking and waking, exit and kill, user faults, TLB shootdown.
//!
//! Lifetimes:
//! * A **process** is created by [`spawn`] (the kernel, or a process's `spawn` system call):
//!   its program's ELF image is validated (`klib::userelf`) and mapped into a new
//!   [`space::Space`], its first thread queued on a CPU. It *dies* when its last thread
//!   ends (`exit`, the last `thread_exit`, a fault or a `kill`, which end every thread); its
//!   status then waits for the parent's `wait` (or the kernel's [`wait`]), which reaps it.
//!   Its address space is torn down when the last reference goes: reaped, every thread
//!   gone, and no CPU with its root in CR3 (a CPU holds a reference while it does).
//! * A **thread** lives on its home CPU (no migration): Runnable in that CPU's run queue,
//!   Running on it, Blocked (on a word, a child, a timer), or Dead. It has no kernel stack:
//!   its registers live in its [`UserRegs`] while it is not in ring 3 (`arch::user`).
//!
//! Scheduler: each CPU (index < [`MAX_CPUS`]) runs its queue from its idle loop (APs) or
//! while the kernel waits for a process ([`wait`], any CPU). A thread runs until it blocks,
//! yields, ends, or an interrupt finds other work for the CPU (LAPIC timer tick every
//! [`TICK_NS`] while the CPU has threads, reschedule IPI, cross-CPU call); kernel code is
//! never preempted. A wake from any CPU queues the thread on its home CPU and sends a
//! reschedule IPI ([`crate::irq::SCHED_VECTOR`]). No lost wake-up: a thread is marked
//! Blocked while the lock of what it waits on is held, and a waker takes that lock before
//! it looks at the thread.
//!
//! Shootdown: every process has a mask of the CPUs whose CR3 holds its root (set before the
//! CR3 write, cleared after the switch away). `munmap` clears the leaves (`xchg`), then
//! flushes its own TLB and sends the reschedule IPI to every other CPU in the mask; each
//! flushes its TLB (CR3 reload) in the interrupt handler and acknowledges; the frames are
//! freed only after every acknowledgement (waited for with interrupts on, so two CPUs
//! shooting at each other both progress).

mod ims;
pub mod programs;
mod space;
mod syscall;
pub mod uaccess;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};

use user_abi::{STACK_TOP, STATUS_KILLED};
use x86_64::instructions::interrupts;

use crate::arch::percpu;
use crate::arch::user::{Exit, UserRegs};
use crate::sync::IrqMutex;

pub use space::FaultOutcome;

/// CPUs that run processes (the CPU masks are one word).
pub const MAX_CPUS: usize = 64;
/// Most processes alive (not yet reaped) at once.
pub const MAX_PROCESSES: usize = 64;
/// Most threads of one process.
pub const MAX_THREADS: usize = 16;
/// Scheduler tick while a CPU has threads.
pub const TICK_NS: u64 = 4_000_000;
/// Bound on a shootdown acknowledgement (a CPU that does not answer is dead hardware).
const SHOOTDOWN_TIMEOUT_NS: u64 = 30_000_000_000;

/// Errors of process creation and control (the kernel's view; system calls map them to
/// `user_abi::Error`).
#[derive(Debug)]
pub enum ProcError {
    /// No embedded program of that name.
    NoSuchProgram,
    /// The program's image is invalid.
    Elf(klib::userelf::ElfError),
    /// Memory (frames, page tables).
    Mm(crate::mm::MmError),
    /// No online CPU with that index (or one beyond [`MAX_CPUS`]).
    NoSuchCpu(usize),
    /// [`MAX_PROCESSES`] or [`MAX_THREADS`] reached.
    Limit,
    /// The platform cannot run processes (the reason).
    Unsupported(&'static str),
    /// A wait ran out of time.
    Timeout,
    /// The process has ended.
    Ended,
    /// The IOMMU refused (shared virtual addressing).
    Iommu(crate::iommu::IommuError),
}

impl fmt::Display for ProcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchProgram => write!(f, "no such program"),
            Self::Elf(e) => write!(f, "invalid program image: {e}"),
            Self::Mm(e) => write!(f, "memory: {e}"),
            Self::NoSuchCpu(c) => write!(f, "CPU {c} cannot run processes"),
            Self::Limit => write!(f, "process or thread limit reached"),
            Self::Unsupported(why) => write!(f, "processes are not supported here: {why}"),
            Self::Timeout => write!(f, "timed out"),
            Self::Ended => write!(f, "the process has ended"),
            Self::Iommu(e) => write!(f, "IOMMU: {e}"),
        }
    }
}

impl core::error::Error for ProcError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Elf(e) => Some(e),
            Self::Mm(e) => Some(e),
            Self::Iommu(e) => Some(e),
            _ => None,
        }
    }
}

impl ProcError {
    fn abi(&self) -> user_abi::Error {
        use user_abi::Error as E;
        match self {
            Self::NoSuchProgram => E::NoSuchProgram,
            Self::Elf(_) | Self::Unsupported(_) => E::BadArgument,
            Self::Mm(_) => E::NoMemory,
            Self::NoSuchCpu(_) => E::NoSuchCpu,
            Self::Limit | Self::Timeout => E::Limit,
            Self::Ended => E::Killed,
            Self::Iommu(_) => E::NoMemory,
        }
    }
}

/// The fault that ended a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultReport {
    /// Exception vector.
    pub vector: u8,
    /// User RIP.
    pub rip: u64,
    /// CR2 for #PF, else 0.
    pub address: u64,
    /// Error code.
    pub error_code: u64,
}

const RUNNABLE: u8 = 0;
const RUNNING: u8 = 1;
const BLOCKED: u8 = 2;
const DEAD: u8 = 3;

/// A process.
pub struct Process {
    pid: u64,
    name: &'static str,
    /// Parent pid (0: the kernel).
    parent: u64,
    space: IrqMutex<space::Space>,
    root: u64,
    /// CPUs whose CR3 holds `root` (bit = CPU index).
    active: AtomicU64,
    threads: IrqMutex<Vec<Arc<Thread>>>,
    live: AtomicUsize,
    next_tid: AtomicU64,
    dying: AtomicBool,
    status: AtomicU64,
    ended: AtomicBool,
    fault: IrqMutex<Option<FaultReport>>,
    /// Threads waiting for this process to end.
    waiters: IrqMutex<Vec<Arc<Thread>>>,
    /// Its PASID for shared virtual addressing, once it has one.
    sva: spin::Mutex<Sva>,
    /// What IA32_PASID holds while its threads run: `pasid | PASID_VALID` once it has a
    /// PASID, 0 before and after (its ENQCMD then #GPs). Read on every entry to ring 3.
    pasid_msr: AtomicU64,
    /// User dedicated WQs lent to it (`dsa_wq_take`), given back at its end.
    lent_wqs: spin::Mutex<Vec<(Arc<dsa::Device>, u8)>>,
    /// Its interrupt handles by id (`ims_alloc`).
    ims: spin::Mutex<ims::Table>,
}

/// A process's PASID: one `iommu` address space whose PASID entries point first-stage
/// translation at the process's own root (the CR3 value), and the DSA devices it is
/// attached to (drained before the PASID goes).
enum Sva {
    None,
    Live {
        space: crate::iommu::AddressSpace,
        devices: Vec<(crate::pci::PciAddress, Arc<dsa::Device>)>,
    },
    /// The process ended: no PASID any more, none to be had.
    Released,
}

impl Process {
    /// Process id (≥ 1).
    pub fn pid(&self) -> u64 {
        self.pid
    }
    /// Program name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// Whether every thread has ended.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
    /// Exit status (meaningful once [`Process::ended`]).
    pub fn status(&self) -> u64 {
        self.status.load(Ordering::Acquire)
    }
    /// Root of its page tables: CR3, and the first-stage root of its PASID.
    pub fn root(&self) -> u64 {
        self.root
    }
    /// Its PASID, if it has one.
    pub fn pasid(&self) -> Option<u32> {
        match &*self.sva.lock() {
            Sva::Live { space, .. } => Some(space.pasid()),
            _ => None,
        }
    }
    /// The physical address its user address `virt` maps to (tests read a victim's page).
    #[cfg(feature = "ktest")]
    pub fn translate(&self, virt: u64) -> Option<u64> {
        self.space.lock().translate(virt)
    }
    /// Its mapped device portals: (user address, physical page, leaf flags).
    #[cfg(feature = "ktest")]
    pub fn portal_mappings(&self) -> Vec<(u64, u64, x86_paging::PteFlags)> {
        self.space.lock().portal_mappings()
    }
    /// The interrupt handles it holds (the hostile-process suite).
    #[cfg(feature = "ktest")]
    pub fn ims_handles(&self) -> Vec<ims::HandleInfo> {
        ims::handles(self)
    }
    /// The fault that killed it, if one did.
    pub fn fault(&self) -> Option<FaultReport> {
        *self.fault.lock()
    }
}

/// What a blocked thread does when it runs again.
const RESUME_RETURN: u8 = 0;
const RESUME_RESTART: u8 = 1;

/// A thread.
pub struct Thread {
    tid: u64,
    process: Arc<Process>,
    /// Home CPU: changed only by the thread itself (`sched_set_cpu`, while Running), before
    /// it is queued on the new CPU.
    cpu: AtomicUsize,
    state: AtomicU8,
    /// Touched only by the scheduler of the CPU running the thread (its home CPU; a
    /// migration hands it over through the new CPU's queue lock).
    regs: UnsafeCell<UserRegs>,
    deadline: AtomicU64,
}

// SAFETY: `regs` is accessed only by the scheduler loop of the one CPU running the thread
// (a thread is in at most one queue or running on one CPU; `sched_set_cpu` queues it on the
// new CPU only after the old one is done with it, through the queue lock), every other field
// is atomic or locked.
unsafe impl Sync for Thread {}
// SAFETY: as above.
unsafe impl Send for Thread {}

struct Cpu {
    queue: IrqMutex<VecDeque<Arc<Thread>>>,
    sleepers: IrqMutex<Vec<Arc<Thread>>>,
    loaded: IrqMutex<Option<Arc<Process>>>,
    flush_req: AtomicU64,
    flush_done: AtomicU64,
    timer_on: AtomicBool,
    /// Threads whose home this CPU is and that are not dead.
    homed: AtomicUsize,
}

impl Cpu {
    const fn new() -> Self {
        Self {
            queue: IrqMutex::new(VecDeque::new()),
            sleepers: IrqMutex::new(Vec::new()),
            loaded: IrqMutex::new(None),
            flush_req: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
            timer_on: AtomicBool::new(false),
            homed: AtomicUsize::new(0),
        }
    }
}

static CPUS: [Cpu; MAX_CPUS] = [const { Cpu::new() }; MAX_CPUS];
static PROCS: IrqMutex<BTreeMap<u64, Arc<Process>>> = IrqMutex::new(BTreeMap::new());
static NEXT_PID: AtomicU64 = AtomicU64::new(1);
static ROUND_ROBIN: AtomicUsize = AtomicUsize::new(0);
/// Threads blocked in `wait_word`, by (pid, address).
static WORDS: IrqMutex<WordWaiters> = IrqMutex::new(BTreeMap::new());

/// Blocked `wait_word` callers by (pid, user address).
type WordWaiters = BTreeMap<(u64, u64), Vec<Arc<Thread>>>;

/// Statistics for tests: (shootdown IPIs sent, shootdowns completed).
static SHOOTDOWN_IPIS: AtomicU64 = AtomicU64::new(0);

fn check_cpu(cpu: usize) -> Result<usize, ProcError> {
    if cpu < MAX_CPUS
        && cpu < percpu::cpu_count()
        && percpu::get(cpu).is_some_and(|c| c.is_online())
    {
        Ok(cpu)
    } else {
        Err(ProcError::NoSuchCpu(cpu))
    }
}

/// The CPU for a new thread: `Some(cpu)` if it can run processes, `None` = round robin
/// over the CPUs that can (the BSP last, since it runs threads only while the kernel
/// waits).
fn pick_cpu(cpu: Option<usize>) -> Result<usize, ProcError> {
    match cpu {
        Some(c) => check_cpu(c),
        None => {
            let n = percpu::cpu_count().clamp(1, MAX_CPUS);
            if n == 1 {
                return Ok(0);
            }
            let k = ROUND_ROBIN.fetch_add(1, Ordering::Relaxed) % (n - 1);
            check_cpu(k + 1)
        }
    }
}

/// Whether this platform can run processes: the user half (PML4 slots 128–255) must lie
/// beyond the kernel's identity map, i.e. MAXPHYADDR ≤ 46.
fn supported() -> Result<(), ProcError> {
    if crate::mm::phys_addr_bits() > 46 {
        return Err(ProcError::Unsupported(
            "physical addresses wider than 46 bits reach into the user half",
        ));
    }
    Ok(())
}

/// Starts program `name` with `arg` (in RDI of its first thread) on `cpu` (`None`: the
/// scheduler picks one). `parent` 0 = the kernel (which reaps it with [`wait`]).
pub fn spawn_as(
    name: &str,
    cpu: Option<usize>,
    arg: u64,
    parent: u64,
) -> Result<Arc<Process>, ProcError> {
    supported()?;
    let image = programs::find(name).ok_or(ProcError::NoSuchProgram)?;
    let cpu = pick_cpu(cpu)?;
    let prog = klib::userelf::parse(image).map_err(ProcError::Elf)?;
    let name = programs::PROGRAMS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("?", |(n, _)| *n);
    let mut space = space::Space::new().map_err(ProcError::Mm)?;
    space.load(&prog, image).map_err(ProcError::Mm)?;
    let root = space.root();
    let p = {
        let mut procs = PROCS.lock();
        if procs.len() >= MAX_PROCESSES {
            return Err(ProcError::Limit);
        }
        let pid = NEXT_PID.fetch_add(1, Ordering::Relaxed);
        let p = Arc::new(Process {
            pid,
            name,
            parent,
            space: IrqMutex::new(space),
            root,
            active: AtomicU64::new(0),
            threads: IrqMutex::new(Vec::new()),
            live: AtomicUsize::new(0),
            next_tid: AtomicU64::new(1),
            dying: AtomicBool::new(false),
            status: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            fault: IrqMutex::new(None),
            waiters: IrqMutex::new(Vec::new()),
            sva: spin::Mutex::new(Sva::None),
            pasid_msr: AtomicU64::new(0),
            lent_wqs: spin::Mutex::new(Vec::new()),
            ims: spin::Mutex::new(ims::Table::new()),
        });
        procs.insert(pid, p.clone());
        p
    };
    start_thread(&p, UserRegs::new(prog.entry, STACK_TOP, arg), cpu)?;
    Ok(p)
}

/// [`spawn_as`] with the kernel as the parent.
pub fn spawn(name: &str, cpu: Option<usize>, arg: u64) -> Result<Arc<Process>, ProcError> {
    spawn_as(name, cpu, arg, 0)
}

fn start_thread(p: &Arc<Process>, regs: UserRegs, cpu: usize) -> Result<u64, ProcError> {
    let t = {
        let mut threads = p.threads.lock();
        if threads.len() >= MAX_THREADS {
            return Err(ProcError::Limit);
        }
        let t = Arc::new(Thread {
            tid: p.next_tid.fetch_add(1, Ordering::Relaxed),
            process: p.clone(),
            cpu: AtomicUsize::new(cpu),
            state: AtomicU8::new(BLOCKED),
            regs: UnsafeCell::new(regs),
            deadline: AtomicU64::new(0),
        });
        threads.push(t.clone());
        p.live.fetch_add(1, Ordering::AcqRel);
        CPUS[cpu].homed.fetch_add(1, Ordering::AcqRel);
        t
    };
    let tid = t.tid;
    wake(&t);
    Ok(tid)
}

/// Makes a blocked thread runnable on its home CPU (no effect on one that is not blocked).
fn wake(t: &Arc<Thread>) {
    loop {
        let cpu = t.cpu();
        {
            let mut q = CPUS[cpu].queue.lock();
            // A thread blocks only on its (new) home, set before it was queued there: a
            // stale home means it migrated since the load; look again.
            if t.cpu() != cpu {
                continue;
            }
            if t.state
                .compare_exchange(BLOCKED, RUNNABLE, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return;
            }
            q.push_back(t.clone());
        }
        kick(cpu);
        return;
    }
}

impl Thread {
    /// Its home CPU.
    fn cpu(&self) -> usize {
        self.cpu.load(Ordering::Acquire)
    }
}

/// Makes CPU `cpu` look at its queue (and leave ring 3 if it is there).
fn kick(cpu: usize) {
    if cpu != percpu::current_index() {
        let _ = crate::irq::send_ipi(cpu, crate::irq::SCHED_VECTOR);
    }
}

/// Starts ending process `p` with `status` (idempotent: the first status wins): every
/// thread ends at its next scheduling point; blocked ones are woken for it, running ones
/// are sent out of ring 3.
fn kill_process(p: &Arc<Process>, status: u64) {
    if p.dying.swap(true, Ordering::AcqRel) {
        return;
    }
    p.status.store(status, Ordering::Release);
    let threads: Vec<Arc<Thread>> = p.threads.lock().clone();
    for t in &threads {
        match t.state.load(Ordering::Acquire) {
            BLOCKED => wake(t),
            RUNNING => kick(t.cpu()),
            _ => {}
        }
    }
}

/// Kills process `p` (status [`STATUS_KILLED`]).
pub fn kill(p: &Arc<Process>) {
    kill_process(p, STATUS_KILLED);
}

fn terminate(t: &Arc<Thread>) {
    t.state.store(DEAD, Ordering::Release);
    CPUS[t.cpu()].homed.fetch_sub(1, Ordering::AcqRel);
    let p = &t.process;
    p.threads.lock().retain(|x| !Arc::ptr_eq(x, t));
    if p.live.fetch_sub(1, Ordering::AcqRel) == 1 {
        // Last thread: the process has ended.
        WORDS.lock().retain(|k, _| k.0 != p.pid);
        // No thread of it runs any more: its DMA is drained and its PASID freed before its
        // waiters learn that it ended (and long before its tables are freed).
        sva_release(p);
        p.ended.store(true, Ordering::Release);
        let waiters = core::mem::take(&mut *p.waiters.lock());
        for w in &waiters {
            wake(w);
        }
    }
}

/// Reaps an ended process (removes it from the table); its status.
fn reap(p: &Arc<Process>) -> u64 {
    PROCS.lock().remove(&p.pid);
    p.status()
}

/// The kernel waits (running this CPU's threads meanwhile) until `p` has ended, then reaps
/// it. `timeout_ns` bounds the wait (only a hang reaches it: the kernel tests use
/// `ktests::HANG`).
pub fn wait(p: &Arc<Process>, timeout_ns: u64) -> Result<u64, ProcError> {
    let deadline = crate::time::now_ns().saturating_add(timeout_ns);
    run_until(|| p.ended(), deadline)?;
    Ok(reap(p))
}

/// Runs this CPU's threads until `done()` or the deadline (ns since boot).
pub fn run_until(mut done: impl FnMut() -> bool, deadline: u64) -> Result<(), ProcError> {
    let me = percpu::current_index();
    loop {
        if done() {
            break;
        }
        if crate::time::now_ns() > deadline {
            return Err(ProcError::Timeout);
        }
        if me < MAX_CPUS && run_once() {
            continue;
        }
        // Idle: the tick (armed while this CPU has threads, and here) wakes the halt.
        ensure_tick(me);
        interrupts::disable();
        let quiet = me >= MAX_CPUS || CPUS[me].queue.lock().is_empty();
        if quiet && !done() {
            interrupts::enable_and_hlt();
        } else {
            interrupts::enable();
        }
    }
    if me < MAX_CPUS {
        idle(me);
    }
    Ok(())
}

fn ensure_tick(me: usize) {
    if me < MAX_CPUS && !CPUS[me].timer_on.swap(true, Ordering::AcqRel) {
        let _ = crate::time::arm_periodic(TICK_NS);
    }
}

/// For an idle loop: nothing to run on this CPU. Switches to the kernel's tables (dropping
/// the process's) and stops the tick unless a thread sleeps here.
pub fn idle(me: usize) {
    if me >= MAX_CPUS {
        return;
    }
    let c = &CPUS[me];
    let old = {
        let mut l = c.loaded.lock();
        l.take().inspect(|p| {
            // SAFETY: the kernel root maps everything the kernel uses (the kernel half is
            // shared, identically, by every process root).
            unsafe { load_cr3(crate::mm::kernel_root()) };
            p.active.fetch_and(!(1 << me), Ordering::SeqCst);
        })
    };
    drop(old);
    if c.homed.load(Ordering::Acquire) == 0 && c.timer_on.swap(false, Ordering::AcqRel) {
        crate::time::stop_timer();
    }
}

/// Whether this CPU has runnable threads (for an idle loop's re-check with interrupts off).
pub fn has_work() -> bool {
    let me = percpu::current_index();
    me < MAX_CPUS && !CPUS[me].queue.lock().is_empty()
}

/// # Safety
/// `root` must map the kernel half exactly like the current root.
unsafe fn load_cr3(root: u64) {
    // SAFETY: the caller's contract.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) root, options(nostack, preserves_flags));
    }
}

fn switch_to(me: usize, p: &Arc<Process>) {
    let c = &CPUS[me];
    let mut l = c.loaded.lock();
    if l.as_ref().is_some_and(|x| Arc::ptr_eq(x, p)) {
        return;
    }
    // Set the bit before the CR3 write (a locked RMW: full barrier), clear the old one after.
    p.active.fetch_or(1 << me, Ordering::SeqCst);
    // SAFETY: every process root shares the frozen kernel half.
    unsafe { load_cr3(p.root) };
    if let Some(old) = l.replace(p.clone()) {
        old.active.fetch_and(!(1 << me), Ordering::SeqCst);
        drop(l);
        drop(old);
    }
}

/// Runs one thread of this CPU's queue (until it blocks, yields, ends or is preempted).
/// False if the queue was empty.
pub fn run_once() -> bool {
    let me = percpu::current_index();
    if me >= MAX_CPUS {
        return false;
    }
    let c = &CPUS[me];
    wake_sleepers(c);
    let t = {
        let mut q = c.queue.lock();
        let t = q.pop_front();
        if let Some(t) = &t {
            t.state.store(RUNNING, Ordering::Release);
        }
        t
    };
    let Some(t) = t else {
        return false;
    };
    run_thread(me, &t);
    true
}

fn wake_sleepers(c: &Cpu) {
    let now = crate::time::now_ns();
    let due: Vec<Arc<Thread>> = {
        let mut s = c.sleepers.lock();
        if s.is_empty() {
            return;
        }
        let (due, rest): (Vec<_>, Vec<_>) = s.drain(..).partition(|t| {
            t.deadline.load(Ordering::Acquire) <= now || t.state.load(Ordering::Acquire) != BLOCKED
        });
        *s = rest;
        due
    };
    for t in &due {
        wake(t);
    }
}

fn requeue(me: usize, t: &Arc<Thread>) {
    let mut q = CPUS[me].queue.lock();
    t.state.store(RUNNABLE, Ordering::Release);
    q.push_back(t.clone());
}

/// What a system call asks of the scheduler.
pub(crate) enum Action {
    /// Back to ring 3 with this RAX.
    Return(u64),
    /// RAX = 0, then to the back of the queue.
    Yield,
    /// The thread is blocked (already marked, with its resume set up).
    Block,
    /// The thread ends.
    ExitThread,
    /// RAX = 0, then to the back of this CPU's queue (its new home).
    Migrate(usize),
}

fn run_thread(me: usize, t: &Arc<Thread>) {
    let p = &t.process;
    if p.dying.load(Ordering::Acquire) {
        terminate(t);
        return;
    }
    switch_to(me, p);
    ensure_tick(me);
    let pc = percpu::current();
    loop {
        // SAFETY: this CPU is the thread's home and the only one touching its registers.
        let regs = unsafe { &mut *t.regs.get() };
        // IA32_PASID is the CPU's: this process's value (its PASID, valid; or 0) on every
        // entry, written only when it differs from what the CPU holds.
        crate::arch::user::set_ia32_pasid(p.pasid_msr.load(Ordering::Acquire));
        crate::arch::user::enter_user(regs);
        interrupts::enable();
        match regs.exit {
            Exit::Syscall => match syscall::dispatch(t, regs) {
                Action::Return(v) => regs.rax = v,
                Action::Yield => {
                    regs.rax = 0;
                    requeue(me, t);
                    return;
                }
                Action::Block => {
                    // A kill that came between the call's start and its BLOCKED store saw
                    // the thread running and only kicked the CPU: nobody would wake it
                    // before its deadline (a sleep: a minute). Store-load order against
                    // `kill_process` (dying swap, then state load): the fence keeps this
                    // load after the BLOCKED store, so one side always sees the other.
                    core::sync::atomic::fence(Ordering::SeqCst);
                    if p.dying.load(Ordering::Acquire) {
                        wake(t);
                    }
                    return;
                }
                Action::Migrate(to) if to != me => {
                    regs.rax = 0;
                    CPUS[to].homed.fetch_add(1, Ordering::AcqRel);
                    t.cpu.store(to, Ordering::Release);
                    CPUS[me].homed.fetch_sub(1, Ordering::AcqRel);
                    // This CPU is done with the thread: the new one may run it now.
                    requeue(to, t);
                    kick(to);
                    return;
                }
                Action::Migrate(_) => regs.rax = 0,
                Action::ExitThread => {
                    terminate(t);
                    return;
                }
            },
            Exit::Exception => {
                if !user_fault(t, regs) {
                    terminate(t);
                    return;
                }
            }
            Exit::Interrupt => {
                let others = !CPUS[me].queue.lock().is_empty();
                let jobs =
                    pc.jobs_in_idle_loop.load(Ordering::Acquire) && !pc.jobs.lock().is_empty();
                if others || jobs {
                    requeue(me, t);
                    return;
                }
            }
            Exit::None => {
                log::error!("pid {} left ring 3 without a reason; killed", p.pid);
                kill(p);
            }
        }
        if p.dying.load(Ordering::Acquire) {
            terminate(t);
            return;
        }
    }
}

/// A user exception: a lazy page is mapped and the thread resumes (true), or the process
/// is killed with one report line (false).
fn user_fault(t: &Arc<Thread>, regs: &UserRegs) -> bool {
    let p = &t.process;
    let v = regs.vector as u8;
    if v == 14 {
        let e = regs.error_code;
        let r = p
            .space
            .lock()
            .fault(regs.address, e & 2 != 0, e & 1 != 0, e & 16 != 0);
        match r {
            FaultOutcome::Mapped => return true,
            FaultOutcome::OutOfMemory => {
                log::warn!(
                    "pid {} ({}) killed: out of memory for page {:#x}",
                    p.pid,
                    p.name,
                    regs.address
                );
                kill(p);
                return false;
            }
            FaultOutcome::Invalid => {}
        }
    }
    if v == 13 {
        // ENQCMD #GPs while IA32_PASID is not valid. A PASID given to the process while
        // this thread was in ring 3 (another thread's call on another CPU) reaches this
        // CPU's MSR only at the next entry: resume once it is there (Linux's
        // `try_fixup_enqcmd_gp` does the same lazily). Any other #GP kills.
        // (Only with ENQCMD: without it the MSR, and its shadow, never change, and every
        // #GP would be resumed forever.)
        let want = p.pasid_msr.load(Ordering::Acquire);
        if want != 0 && crate::arch::features().enqcmd && crate::arch::user::ia32_pasid() != want {
            return true;
        }
    }
    let (mn, name) = crate::arch::trap::exception_name(v);
    log::warn!(
        "pid {} ({}) killed by {mn} {name}: vector {v}, rip {:#x}, address {:#x}, error code {:#x}, cpu {}",
        p.pid,
        p.name,
        regs.rip,
        regs.address,
        regs.error_code,
        t.cpu()
    );
    *p.fault.lock() = Some(FaultReport {
        vector: v,
        rip: regs.rip,
        address: regs.address,
        error_code: regs.error_code,
    });
    kill(p);
    false
}

/// The reschedule / shootdown IPI: flush this CPU's TLB if a shootdown asked for it (a CR3
/// reload drops every non-global entry; user pages are never global).
pub(crate) fn on_sched_ipi() {
    let me = percpu::current_index();
    if me >= MAX_CPUS {
        return;
    }
    let c = &CPUS[me];
    let req = c.flush_req.load(Ordering::Acquire);
    if req != c.flush_done.load(Ordering::Relaxed) {
        x86_64::instructions::tlb::flush_all();
        c.flush_done.store(req, Ordering::Release);
    }
}

/// Invalidates `[start, start + len)` of `p` in every TLB that may hold it; returns false if
/// a CPU did not acknowledge in time (the caller must then not free the frames).
fn shootdown(p: &Process, start: u64, len: u64) -> bool {
    let me = percpu::current_index();
    core::sync::atomic::fence(Ordering::SeqCst);
    let mask = p.active.load(Ordering::SeqCst);
    if mask & (1 << me) != 0 {
        if len <= 32 * user_abi::PAGE {
            let mut a = start;
            while a < start + len {
                x86_64::instructions::tlb::flush(x86_64::VirtAddr::new(a));
                a += user_abi::PAGE;
            }
        } else {
            x86_64::instructions::tlb::flush_all();
        }
    }
    let mut pending: [(usize, u64); MAX_CPUS] = [(0, 0); MAX_CPUS];
    let mut n = 0;
    for cpu in (0..MAX_CPUS).filter(|&c| c != me && mask & (1 << c) != 0) {
        let g = CPUS[cpu].flush_req.fetch_add(1, Ordering::AcqRel) + 1;
        SHOOTDOWN_IPIS.fetch_add(1, Ordering::Relaxed);
        if crate::irq::send_ipi(cpu, crate::irq::SCHED_VECTOR).is_err() {
            return false;
        }
        pending[n] = (cpu, g);
        n += 1;
    }
    let deadline = crate::time::now_ns().saturating_add(SHOOTDOWN_TIMEOUT_NS);
    let was = interrupts::are_enabled();
    interrupts::enable();
    let mut ok = true;
    for &(cpu, g) in &pending[..n] {
        while CPUS[cpu].flush_done.load(Ordering::Acquire) < g {
            if crate::time::now_ns() > deadline {
                log::error!("CPU {cpu} did not acknowledge a TLB shootdown");
                ok = false;
                break;
            }
            core::hint::spin_loop();
        }
    }
    if !was {
        interrupts::disable();
    }
    ok
}

/// Shootdown IPIs sent so far (for tests).
pub fn shootdown_ipis() -> u64 {
    SHOOTDOWN_IPIS.load(Ordering::Relaxed)
}

/// Number of processes not yet reaped (for tests).
pub fn process_count() -> usize {
    PROCS.lock().len()
}

/// Runs `f(addr)` with a scratch address space loaded on this CPU: one zeroed, writable
/// user page at `addr` holding `value` in its first word. For kernel tests of SMAP and of
/// the checked copies. Interrupts are off meanwhile (the scheduler does not run here).
#[cfg(feature = "ktest")]
pub fn with_scratch_space<R>(value: u64, f: impl FnOnce(u64) -> R) -> Result<R, ProcError> {
    supported()?;
    let mut s = space::Space::new().map_err(ProcError::Mm)?;
    let addr = s
        .mmap(0, user_abi::PAGE, true)
        .map_err(|_| ProcError::Limit)?;
    if s.fault(addr, true, false, false) != FaultOutcome::Mapped {
        return Err(ProcError::Limit);
    }
    let phys = s.translate(addr).ok_or(ProcError::Limit)?;
    // SAFETY: the frame was just allocated for this page (identity-mapped RAM, ours).
    unsafe { (phys as *mut u64).write_volatile(value) };
    let was = interrupts::are_enabled();
    interrupts::disable();
    let (old, _) = x86_64::registers::control::Cr3::read_raw();
    // SAFETY: the scratch root shares the kernel half; the old root is restored below.
    unsafe { load_cr3(s.root()) };
    let r = f(addr);
    // SAFETY: back to the root this CPU had.
    unsafe { load_cr3(old.start_address().as_u64()) };
    if was {
        interrupts::enable();
    }
    drop(s);
    Ok(r)
}

/// Kernel policy `sva.direct` (default off; INTEL-SA-01084): whether a process may map a
/// DSA portal and submit with ENQCMD from ring 3 (`dsa_portal`). Kernel tests may
/// override it ([`set_direct_for_tests`]).
pub fn direct_submission_allowed() -> bool {
    #[cfg(feature = "ktest")]
    match DIRECT_FOR_TESTS.load(Ordering::Relaxed) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    crate::cmdline::sva_direct()
}

#[cfg(feature = "ktest")]
static DIRECT_FOR_TESTS: AtomicU8 = AtomicU8::new(0);

/// Overrides the `sva.direct` policy (`None`: the command line's again).
#[cfg(feature = "ktest")]
pub fn set_direct_for_tests(on: Option<bool>) {
    let v = match on {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    };
    DIRECT_FOR_TESTS.store(v, Ordering::Relaxed);
}

/// Gives process `p` a PASID for shared virtual addressing (the first call creates it: a
/// `SpaceKind::Shared` space whose first-stage root is `p`'s root) and attaches it to DSA
/// device `dev`. Returns the PASID. The device then reaches exactly `p`'s user pages
/// (U=1; kernel pages are supervisor-only and the entry refuses supervisor requests).
pub fn sva_attach(p: &Arc<Process>, dev: &crate::dsa::DsaDevice) -> Result<u32, ProcError> {
    use crate::iommu::{AddressSpace, SpaceKind};
    let mut g = p.sva.lock();
    if matches!(*g, Sva::Released) || p.dying.load(Ordering::Acquire) {
        return Err(ProcError::Ended);
    }
    if matches!(*g, Sva::None) {
        let space =
            AddressSpace::new(SpaceKind::Shared { fs_root: p.root }).map_err(ProcError::Iommu)?;
        *g = Sva::Live {
            space,
            devices: Vec::new(),
        };
    }
    let Sva::Live { space, devices } = &mut *g else {
        return Err(ProcError::Ended);
    };
    let addr = dev.pci.address();
    if !devices.iter().any(|(a, _)| *a == addr) {
        space.attach(addr).map_err(ProcError::Iommu)?;
        devices.push((addr, dev.driver()));
    }
    let pasid = space.pasid();
    p.pasid_msr.store(
        u64::from(pasid) | crate::arch::user::PASID_VALID,
        Ordering::Release,
    );
    Ok(pasid)
}

/// After a change to `p`'s tables (and the CPU shootdown): the IOTLB entries of its PASID for
/// the range go too (PASID-selective, waited for). False if the IOMMU did not confirm (the
/// caller must not free the pages).
fn sva_invalidate(p: &Process, start: u64, len: u64) -> bool {
    match &*p.sva.lock() {
        Sva::Live { space, .. } => match space.invalidate(start, len) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "pid {}: PASID {} invalidation failed: {e}",
                    p.pid,
                    space.pasid()
                );
                false
            }
        },
        _ => true,
    }
}

/// At the end of `p`: every device drains the PASID's work (Drain PASID), its interrupt
/// handles are released, then the PASID entries are cleared and invalidated and the PASID
/// is free again.
fn sva_release(p: &Process) {
    let old = core::mem::replace(&mut *p.sva.lock(), Sva::Released);
    p.pasid_msr.store(0, Ordering::Release);
    // Its dedicated WQs first: Disable WQ finishes what they hold (no thread can submit
    // any more), and nothing runs in the PASID on them after.
    for (d, wq) in core::mem::take(&mut *p.lent_wqs.lock()) {
        if let Err(e) = d.reclaim_wq(wq) {
            log::error!("pid {}: taking back dsa{} wq{wq}: {e}", p.pid, d.index());
        }
    }
    if let Sva::Live { space, devices } = old {
        let pasid = space.pasid();
        for (addr, d) in &devices {
            if let Err(e) = d.drain_pasid(pasid) {
                log::error!(
                    "pid {}: drain of PASID {pasid} on {addr} failed: {e}",
                    p.pid
                );
            }
        }
        // Entries, IRTEs and quota back (each release drains the PASID once more: work
        // validated before its unbind).
        ims::release_all(p);
        // Dropping the space revokes every entry (invalidated) and frees the PASID.
        drop(space);
    }
}
