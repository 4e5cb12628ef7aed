//! Ending the run: a verdict line on the console, then QEMU's `isa-debug-exit`.
//!
//! The verdict line (`kernel-exit: pass` / `kernel-exit: fail: <reason>`) is what the
//! serial-log judge reads on bare metal; under QEMU the `isa-debug-exit` device at port
//! 0xf4 turns the written value `v` into exit status `(v << 1) | 1`: 0x10 → 33 (pass),
//! 0x11 → 35 (fail). Without that device (bare metal) the CPU halts after the verdict.

use core::fmt;
use x86_64::instructions::port::Port;

/// `isa-debug-exit` I/O port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Value written for a passing run (QEMU exit status 33).
pub const EXIT_PASS: u32 = 0x10;
/// Value written for a failing run (QEMU exit status 35).
pub const EXIT_FAIL: u32 = 0x11;

fn write_exit(v: u32) -> ! {
    // SAFETY: a write to the isa-debug-exit port ends QEMU; on hardware without the
    // device the port is unclaimed and the write has no effect.
    unsafe { Port::<u32>::new(DEBUG_EXIT_PORT).write(v) };
    // QEMU ends the run asynchronously (a shutdown request), so give it a moment before
    // concluding that there is no such device.
    crate::time::delay(core::time::Duration::from_millis(500));
    crate::println!("kernel-exit: halted (no isa-debug-exit device)");
    crate::arch::halt_forever()
}

/// Ends a successful run.
pub fn pass() -> ! {
    crate::println!("kernel-exit: pass");
    write_exit(EXIT_PASS)
}

/// Ends a failed run.
pub fn fail(reason: fmt::Arguments<'_>) -> ! {
    crate::println!("kernel-exit: fail: {}", crate::console::OneLine(reason));
    write_exit(EXIT_FAIL)
}

/// Ends the run without printing (last resort when printing itself is failing).
pub fn fail_silently() -> ! {
    write_exit(EXIT_FAIL)
}
