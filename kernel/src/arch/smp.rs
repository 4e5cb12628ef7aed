//! Application processors: INIT-SIPI-SIPI bring-up through a real-mode trampoline, the
//! AP idle loop, and cross-CPU calls (`run_on`, `spawn_on`).
//!
//! APs are started one at a time, each from the enabled MADT entries (the BSP excluded).
//! The trampoline GDT is null, 0x08 64-bit code, 0x10 data, 0x18 32-bit code.
//! Every wait is bounded: an AP that does not check in is parked again with INIT and
//! reported, the others still start.
//!
//! Cross-CPU calls: a closure is queued on the target CPU and an IPI ([`CALL_VECTOR`]) is
//! sent. APs run queued closures one after another from their idle loop, with
//! interrupts enabled (so a closure may wait for interrupts on its CPU). The BSP, which
//! runs the main job, runs closures sent to it inside the IPI handler.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use x86_64::instructions::interrupts;

use super::apic::{self, ApicError, Delivery, Shorthand};
use super::percpu::{self, Job};
use crate::irq::CALL_VECTOR;
use crate::mm::stacks::{StackKind, alloc_stack};
use crate::sync::IrqMutex;
use crate::time;

core::arch::global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 16
    .global ap_trampoline_start
ap_trampoline_start:
    .code16
    cli
    cld
    xorl %ebx, %ebx
    movw %cs, %bx
    shll $4, %ebx
    movw %cs, %ax
    movw %ax, %ds
    lgdtl (tr_gdt_ptr - ap_trampoline_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl *(tr_far32 - ap_trampoline_start)

    .code32
tr_entry32:
    movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movl %cr4, %eax
    orl $(1 << 5), %eax
    movl %eax, %cr4
    movl (tr_cr3 - ap_trampoline_start)(%ebx), %eax
    movl %eax, %cr3
    movl $0xC0000080, %ecx
    rdmsr
    orl (tr_efer - ap_trampoline_start)(%ebx), %eax
    wrmsr
    movl %cr0, %eax
    orl $0x80010000, %eax
    movl %eax, %cr0
    ljmpl *(tr_far64 - ap_trampoline_start)(%ebx)

    .code64
tr_entry64:
    movl %ebx, %ebx
    movq (tr_stack - ap_trampoline_start)(%rbx), %rsp
    movq (tr_arg - ap_trampoline_start)(%rbx), %rdi
    movq (tr_entry - ap_trampoline_start)(%rbx), %rax
    xorl %ebp, %ebp
    callq *%rax
1:
    cli
    hlt
    jmp 1b

    .balign 8
tr_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00cf9a000000ffff
    .global tr_gdt_ptr
tr_gdt_ptr:
    .short 31
    .long 0
    .global tr_far32
tr_far32:
    .long 0
    .short 0x18
    .global tr_far64
tr_far64:
    .long 0
    .short 0x08
    .balign 8
    .global tr_cr3
tr_cr3:
    .quad 0
    .global tr_efer
tr_efer:
    .quad 0
    .global tr_stack
tr_stack:
    .quad 0
    .global tr_arg
tr_arg:
    .quad 0
    .global tr_entry
tr_entry:
    .quad 0
    .global ap_trampoline_end
ap_trampoline_end:
    .global tr_gdt_sym
    .set tr_gdt_sym, tr_gdt
    .global tr_entry32_sym
    .set tr_entry32_sym, tr_entry32
    .global tr_entry64_sym
    .set tr_entry64_sym, tr_entry64
    .code64
"#,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
    static tr_gdt_sym: u8;
    static tr_entry32_sym: u8;
    static tr_entry64_sym: u8;
    static tr_gdt_ptr: u8;
    static tr_far32: u8;
    static tr_far64: u8;
    static tr_cr3: u8;
    static tr_efer: u8;
    static tr_stack: u8;
    static tr_arg: u8;
    static tr_entry: u8;
}

/// Kernel stack of each AP.
pub const AP_STACK_SIZE: u64 = 128 * 1024;
/// Default timeout of [`run_on`]: a hung CPU, not a slow one (an emulated CPU on a loaded
/// host can take seconds to take the call's IPI).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// SMP errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SmpError {
    /// No usable page below 1 MiB for the trampoline.
    NoTrampolinePage,
    /// The kernel PML4 is above 4 GiB (the trampoline loads CR3 in 32-bit mode).
    Cr3TooHigh(u64),
    /// The AP did not check in / finish its bring-up in time.
    ApTimeout {
        /// APIC ID.
        apic_id: u32,
        /// Which stage.
        stage: &'static str,
    },
    /// Out of memory for stacks.
    NoMemory(crate::mm::MmError),
    /// The CPU index is not online.
    NoSuchCpu(usize),
    /// Sending an IPI failed.
    Ipi(ApicError),
    /// A cross-CPU call did not finish in time.
    CallTimeout {
        /// Target CPU.
        cpu: usize,
    },
}

impl fmt::Display for SmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTrampolinePage => write!(f, "no usable page below 1 MiB for the AP trampoline"),
            Self::Cr3TooHigh(a) => write!(f, "kernel PML4 at {a:#x} is above 4 GiB"),
            Self::ApTimeout { apic_id, stage } => {
                write!(f, "CPU with APIC ID {apic_id} timed out ({stage})")
            }
            Self::NoMemory(e) => write!(f, "no memory for an AP: {e}"),
            Self::NoSuchCpu(c) => write!(f, "CPU {c} is not online"),
            Self::Ipi(e) => write!(f, "IPI failed: {e}"),
            Self::CallTimeout { cpu } => write!(f, "call on CPU {cpu} did not finish in time"),
        }
    }
}

impl core::error::Error for SmpError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::NoMemory(e) => Some(e),
            _ => None,
        }
    }
}

/// Handed to each AP through the trampoline.
struct ApBoot {
    /// Tops of the AP's #DF, NMI and #MC stacks.
    ist_tops: [u64; 3],
    checked_in: AtomicBool,
    online: AtomicBool,
}

/// Result of bringing up the APs.
#[derive(Debug, Default)]
pub struct SmpReport {
    /// Started: (CPU index, APIC ID).
    pub started: Vec<(usize, u32)>,
    /// Failed: APIC ID and reason.
    pub failed: Vec<(u32, SmpError)>,
    /// Skipped MADT entries: APIC ID and reason.
    pub skipped: Vec<(u32, &'static str)>,
    /// Trampoline page.
    pub trampoline: u64,
}

fn sym(s: *const u8) -> u64 {
    s as u64
}

fn trampoline_page() -> Option<u64> {
    let map = crate::mm::memory_map()?;
    if map.is_usable(0x8000, 0x9000) {
        return Some(0x8000);
    }
    (1..0x9f)
        .rev()
        .map(|p| p * 0x1000)
        .find(|&a| map.is_usable(a, a + 0x1000))
}

/// Starts every enabled processor of the MADT.
pub fn start_aps() -> Result<SmpReport, SmpError> {
    let mut rep = SmpReport::default();
    let Some(info) = crate::acpi::info() else {
        return Ok(rep);
    };
    let bsp = apic::id();
    let targets: Vec<_> = info
        .cpus
        .iter()
        .filter(|c| c.apic_id != bsp)
        .copied()
        .collect();
    if targets.is_empty() {
        return Ok(rep);
    }
    let page = trampoline_page().ok_or(SmpError::NoTrampolinePage)?;
    rep.trampoline = page;
    let cr3 = crate::mm::kernel_root();
    if cr3 >= 1 << 32 {
        return Err(SmpError::Cr3TooHigh(cr3));
    }
    let (start, end) = (
        sym(&raw const ap_trampoline_start),
        sym(&raw const ap_trampoline_end),
    );
    let len = end - start;
    assert!(len <= 4096, "AP trampoline larger than a page");
    let off = |s: *const u8| sym(s) - start;
    // SAFETY: the trampoline fits in one page (checked above) and the page is usable RAM
    // below 1 MiB that the frame allocator never hands out; we write code and fields.
    unsafe {
        core::ptr::copy_nonoverlapping(start as *const u8, page as *mut u8, len as usize);
        let w32 = |o: u64, v: u32| ((page + o) as *mut u32).write_unaligned(v);
        let w64 = |o: u64, v: u64| ((page + o) as *mut u64).write_unaligned(v);
        w32(
            off(&raw const tr_gdt_ptr) + 2,
            (page + off(&raw const tr_gdt_sym)) as u32,
        );
        w32(
            off(&raw const tr_far32),
            (page + off(&raw const tr_entry32_sym)) as u32,
        );
        w32(
            off(&raw const tr_far64),
            (page + off(&raw const tr_entry64_sym)) as u32,
        );
        w64(off(&raw const tr_cr3), cr3);
        let efer = super::rdmsr(0xC000_0080) & ((1 << 8) | (1 << 11));
        w64(off(&raw const tr_efer), efer);
        w64(off(&raw const tr_entry), ap_entry64 as *const () as u64);
    }
    let init_delay = crate::cmdline::SMP_INIT_DELAY_US.get();
    let timeout_ms = crate::cmdline::SMP_TIMEOUT_MS.get();

    for c in targets {
        if !c.enabled {
            rep.skipped.push((
                c.apic_id,
                if c.online_capable {
                    "online-capable, not enabled"
                } else {
                    "disabled"
                },
            ));
            continue;
        }
        if apic::mode() == apic::Mode::XApic && c.apic_id > 0xfe {
            rep.skipped
                .push((c.apic_id, "APIC ID not addressable in xAPIC mode"));
            continue;
        }
        if percpu::cpu_count() >= percpu::MAX_CPUS {
            rep.skipped.push((c.apic_id, "more CPUs than MAX_CPUS"));
            continue;
        }
        match start_one(page, c.apic_id, init_delay, timeout_ms) {
            Ok(idx) => {
                log::info!("CPU {idx} online, APIC ID {}", c.apic_id);
                rep.started.push((idx, c.apic_id));
            }
            Err(e) => {
                log::error!("{e}");
                rep.failed.push((c.apic_id, e));
            }
        }
    }
    Ok(rep)
}

fn start_one(
    page: u64,
    apic_id: u32,
    init_delay_us: u64,
    timeout_ms: u64,
) -> Result<usize, SmpError> {
    // Guarded stacks, recorded under the index the AP will get (the next one).
    let cpu = percpu::cpu_count();
    let guarded = |size: u64, kind: StackKind| {
        alloc_stack(size, kind, cpu)
            .map(|s| s.top)
            .map_err(SmpError::NoMemory)
    };
    let stack_top = guarded(AP_STACK_SIZE, StackKind::Main)?;
    let ist = super::gdt::IST_STACK_SIZE as u64;
    let ist_tops = [
        guarded(ist, StackKind::DoubleFault)?,
        guarded(ist, StackKind::Nmi)?,
        guarded(ist, StackKind::MachineCheck)?,
    ];
    let boot: &'static ApBoot = Box::leak(Box::new(ApBoot {
        ist_tops,
        checked_in: AtomicBool::new(false),
        online: AtomicBool::new(false),
    }));
    // SAFETY: patch fields inside the trampoline page prepared by `start_aps`.
    unsafe {
        let start = sym(&raw const ap_trampoline_start);
        ((page + sym(&raw const tr_stack) - start) as *mut u64).write_volatile(stack_top);
        ((page + sym(&raw const tr_arg) - start) as *mut u64)
            .write_volatile(boot as *const ApBoot as u64);
    }
    let vector = (page >> 12) as u8;
    apic::send_ipi(apic_id, 0, Delivery::Init, Shorthand::None).map_err(SmpError::Ipi)?;
    time::delay_us(init_delay_us);
    apic::send_ipi(apic_id, vector, Delivery::Startup, Shorthand::None).map_err(SmpError::Ipi)?;
    let checked = |d: Duration| {
        time::wait_until(d, || boot.checked_in.load(Ordering::Acquire).then_some(())).is_ok()
    };
    if !checked(Duration::from_micros(200)) {
        apic::send_ipi(apic_id, vector, Delivery::Startup, Shorthand::None)
            .map_err(SmpError::Ipi)?;
        if !checked(Duration::from_millis(timeout_ms)) {
            // Park it so it cannot run the trampoline later with another AP's data.
            let _ = apic::send_ipi(apic_id, 0, Delivery::Init, Shorthand::None);
            return Err(SmpError::ApTimeout {
                apic_id,
                stage: "no check-in after INIT-SIPI-SIPI",
            });
        }
    }
    time::wait_until(Duration::from_millis(timeout_ms), || {
        boot.online.load(Ordering::Acquire).then_some(())
    })
    .map_err(|_| SmpError::ApTimeout {
        apic_id,
        stage: "checked in but did not come online",
    })?;
    percpu::index_of_apic_id(apic_id).ok_or(SmpError::ApTimeout {
        apic_id,
        stage: "online without a CPU index",
    })
}

/// First Rust code on an AP (called by the trampoline on the AP's stack).
extern "C" fn ap_entry64(boot: &'static ApBoot) -> ! {
    // The trampoline GDT's 0x08 is the same 64-bit code selector the IDT gates use, so
    // exceptions are reported from here on (IST vectors only once the TSS is loaded).
    super::idt::load();
    percpu::enter_ap_early();
    boot.checked_in.store(true, Ordering::Release);
    let Some(cpu) = percpu::init_ap() else {
        super::halt_forever();
    };
    super::gdt::init_ap(boot.ist_tops);
    super::idt::load();
    apic::init_local();
    crate::irq::init_cpu();
    if let Err(e) = super::user::init_cpu() {
        log::warn!("cpu{}: ring 3 not set up: {e}", cpu.index());
    }
    cpu.jobs_in_idle_loop.store(true, Ordering::Release);
    percpu::mark_online(apic::id());
    boot.online.store(true, Ordering::Release);
    idle_loop(cpu)
}

/// An AP's loop: cross-CPU calls first, then the threads of its run queue
/// (`crate::proc`), else halt.
fn idle_loop(cpu: &'static percpu::PerCpu) -> ! {
    loop {
        interrupts::disable();
        let job = cpu.jobs.lock().pop_front();
        if let Some(j) = job {
            interrupts::enable();
            run_job(&j);
            continue;
        }
        interrupts::enable();
        if crate::proc::run_once() {
            continue;
        }
        crate::proc::idle(cpu.index());
        interrupts::disable();
        if cpu.jobs.lock().is_empty() && !crate::proc::has_work() {
            // `sti; hlt`: an interrupt between the check and the halt still wakes us.
            interrupts::enable_and_hlt();
        }
    }
}

fn run_job(j: &Job) {
    let f = j.f.lock().take();
    if let Some(f) = f {
        f();
    }
    j.done.store(true, Ordering::Release);
}

/// Handler of [`CALL_VECTOR`].
pub(crate) fn on_call_ipi() {
    let cpu = percpu::current();
    if cpu.jobs_in_idle_loop.load(Ordering::Acquire) {
        return; // the idle loop wakes from `hlt` and runs the queue
    }
    loop {
        let job = cpu.jobs.lock().pop_front();
        match job {
            Some(j) => run_job(&j),
            None => break,
        }
    }
}

/// A call queued on another CPU.
pub struct JobHandle<R> {
    cpu: usize,
    job: Arc<Job>,
    result: Arc<IrqMutex<Option<R>>>,
}

impl<R> JobHandle<R> {
    /// Whether the closure has finished.
    pub fn is_done(&self) -> bool {
        self.job.done.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the closure's result.
    pub fn join(self, timeout: Duration) -> Result<R, SmpError> {
        time::wait_until(timeout, || self.is_done().then_some(()))
            .map_err(|_| SmpError::CallTimeout { cpu: self.cpu })?;
        self.result
            .lock()
            .take()
            .ok_or(SmpError::CallTimeout { cpu: self.cpu })
    }
}

/// Queues `f` on CPU `cpu` and returns at once. Runs `f` immediately if `cpu` is the
/// calling CPU.
pub fn spawn_on<F, R>(cpu: usize, f: F) -> Result<JobHandle<R>, SmpError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let target = percpu::get(cpu)
        .filter(|c| c.is_online())
        .ok_or(SmpError::NoSuchCpu(cpu))?;
    let result = Arc::new(IrqMutex::new(None));
    let r2 = result.clone();
    let job = Arc::new(Job {
        f: IrqMutex::new(Some(Box::new(move || {
            let v = f();
            *r2.lock() = Some(v);
        }))),
        done: AtomicBool::new(false),
    });
    if cpu == percpu::current_index() {
        run_job(&job);
    } else {
        target.jobs.lock().push_back(job.clone());
        apic::send_fixed(target.apic_id(), CALL_VECTOR).map_err(SmpError::Ipi)?;
    }
    Ok(JobHandle { cpu, job, result })
}

/// Runs `f` on CPU `cpu` and waits (up to [`DEFAULT_CALL_TIMEOUT`]) for its result.
pub fn run_on<F, R>(cpu: usize, f: F) -> Result<R, SmpError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    run_on_timeout(cpu, DEFAULT_CALL_TIMEOUT, f)
}

/// Runs `f` on CPU `cpu` and waits up to `timeout` for its result. On timeout the call
/// stays queued and may still run later (it owns everything it uses).
pub fn run_on_timeout<F, R>(cpu: usize, timeout: Duration, f: F) -> Result<R, SmpError>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    spawn_on(cpu, f)?.join(timeout)
}

/// Runs a copy of `f` on every online CPU in parallel; results by CPU index.
pub fn run_on_all<F, R>(timeout: Duration, f: F) -> Result<Vec<R>, SmpError>
where
    F: Fn() -> R + Send + Sync + Clone + 'static,
    R: Send + 'static,
{
    let me = percpu::current_index();
    let mut handles = Vec::new();
    for cpu in (0..percpu::cpu_count()).filter(|&c| c != me) {
        let g = f.clone();
        handles.push((cpu, spawn_on(cpu, g)?));
    }
    let mine = f();
    let mut out: Vec<Option<R>> = (0..percpu::cpu_count()).map(|_| None).collect();
    out[me] = Some(mine);
    for (cpu, h) in handles {
        out[cpu] = Some(h.join(timeout)?);
    }
    Ok(out.into_iter().flatten().collect())
}
