//! Fatal errors (panics and unexpected exceptions): stop the other CPUs, report, and
//! fail the run, naming the kernel test that was running.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

static STOPPING: AtomicBool = AtomicBool::new(false);
static FAIL_CPU: AtomicUsize = AtomicUsize::new(usize::MAX);
static DEPTH: AtomicU32 = AtomicU32::new(0);

/// Whether a fatal error is being handled (NMIs then park the receiving CPU).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// Enters fatal-error handling. Returns `false` on CPUs that lost the race (they must
/// halt: another CPU reports); `true` on the reporting CPU, including nested calls on it.
pub fn begin() -> bool {
    x86_64::instructions::interrupts::disable();
    let me = crate::arch::percpu::current_index();
    if STOPPING.swap(true, Ordering::AcqRel) {
        if FAIL_CPU.load(Ordering::Acquire) != me {
            return false;
        }
        if DEPTH.fetch_add(1, Ordering::AcqRel) > 2 {
            crate::exit::fail_silently();
        }
        return true;
    }
    FAIL_CPU.store(me, Ordering::Release);
    DEPTH.store(1, Ordering::Release);
    crate::arch::apic::stop_other_cpus();
    crate::console::allow_steal();
    true
}

/// Finishes fatal-error handling: ktest bookkeeping (kernels with kernel tests), verdict, exit.
pub fn finish(reason: fmt::Arguments<'_>) -> ! {
    #[cfg(feature = "ktest")]
    crate::ktest::abort_current(reason);
    crate::exit::fail(reason)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    if !begin() {
        crate::arch::halt_forever();
    }
    let cpu = crate::arch::percpu::current_index();
    let loc = info.location();
    crate::println!(
        "\nPANIC on CPU {cpu}: {} at {}:{}",
        info.message(),
        loc.map(|l| l.file()).unwrap_or("?"),
        loc.map(|l| l.line()).unwrap_or(0)
    );
    let rbp: u64;
    // SAFETY: reads the frame pointer register.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags));
    };
    crate::print!("  backtrace:");
    for ret in crate::arch::fault::backtrace(rbp, 16) {
        crate::print!(" {ret:#x}");
    }
    crate::println!();
    finish(format_args!("panic on CPU {cpu}: {}", info.message()))
}
