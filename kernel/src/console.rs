//! Serial console (16550 UART) with a CPU-aware lock.
//!
//! The port is COM1 unless the command line says `console=ttyS<n>` or `console=<port>`
//! (optionally `,<baud>`). The lock remembers its owner CPU so that an exception or NMI
//! on the CPU that holds it cannot deadlock (nested output goes straight through), and
//! a panicking CPU can take the console from a CPU it has stopped.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, Ordering};
use x86_64::instructions::interrupts;
use x86_64::instructions::port::Port;

/// Legacy COM port bases.
pub const COM_PORTS: [u16; 4] = boot::cmdline::COM_PORTS;

static PORT: AtomicU16 = AtomicU16::new(0x3f8);
static OWNER: AtomicU32 = AtomicU32::new(FREE);
static STEAL: AtomicBool = AtomicBool::new(false);
const FREE: u32 = u32::MAX;

/// Console configuration parsed from `console=`.
pub type ConsoleConfig = boot::cmdline::ConsoleSpec;

/// Why the `console=` of the command line is not in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleProblem {
    /// The value does not name a usable port.
    Invalid(boot::cmdline::ConsoleError),
    /// Nothing answers like a 16550 at the port.
    NoUart(u16),
}

impl fmt::Display for ConsoleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => write!(f, "{e}"),
            Self::NoUart(p) => write!(f, "no 16550 UART answers at I/O port {p:#x}"),
        }
    }
}

impl core::error::Error for ConsoleProblem {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Invalid(e) => Some(e),
            Self::NoUart(_) => None,
        }
    }
}

static PROBLEM: spin::Once<(&'static str, ConsoleProblem)> = spin::Once::new();

/// Switches to the console `console=<spec>` names, if it is a valid port with a UART;
/// otherwise output stays on the current (default) console and the reason is kept for
/// [`problem`].
pub fn configure(spec: &'static str) {
    match boot::cmdline::parse_console(spec) {
        Ok(c) if probe(c.port) => init(c),
        Ok(c) => {
            PROBLEM.call_once(|| (spec, ConsoleProblem::NoUart(c.port)));
        }
        Err(e) => {
            PROBLEM.call_once(|| (spec, ConsoleProblem::Invalid(e)));
        }
    }
}

/// The rejected `console=` value and why, if [`configure`] rejected one.
pub fn problem() -> Option<(&'static str, ConsoleProblem)> {
    PROBLEM.get().copied()
}

/// Whether a 16550 seems to sit at `port` (the port range was checked by
/// `parse_console`: at or above 0x100, so never on the system board's devices). Reads
/// first: a missing device reads all-ones on the line-status register, and then nothing
/// is written at all. Then the scratch register (16450 and later) must keep two patterns;
/// it has no effect on the UART.
fn probe(port: u16) -> bool {
    // SAFETY: port I/O on the range `parse_console` validated (base + 0..=7 in the 16-bit
    // space, above the system-board range); only the scratch register is written.
    unsafe {
        if Port::<u8>::new(port + 5).read() == 0xff {
            return false;
        }
        let mut scratch = Port::<u8>::new(port + 7);
        [0x5a, 0xa5].into_iter().all(|v| {
            scratch.write(v);
            scratch.read() == v
        })
    }
}

/// Programs the UART: 8N1, FIFOs on, no interrupts.
pub fn init(cfg: ConsoleConfig) {
    let p = cfg.port;
    // A base past 0xfff8 would wrap the register offsets.
    if u64::from(p) > boot::cmdline::CONSOLE_PORT_MAX {
        return;
    }
    PORT.store(p, Ordering::Relaxed);
    let divisor = (115_200 / cfg.baud.max(1)).clamp(1, 0xffff) as u16;
    // SAFETY: programming a 16550 at the configured I/O port; on machines without a
    // UART there, the writes go nowhere.
    unsafe {
        Port::<u8>::new(p + 1).write(0x00); // IER: no interrupts
        Port::<u8>::new(p + 3).write(0x80); // LCR: DLAB
        Port::<u8>::new(p).write(divisor as u8);
        Port::<u8>::new(p + 1).write((divisor >> 8) as u8);
        Port::<u8>::new(p + 3).write(0x03); // 8N1
        Port::<u8>::new(p + 2).write(0xc7); // FIFO on, cleared, 14-byte threshold
        Port::<u8>::new(p + 4).write(0x03); // DTR | RTS
    }
    TX_BUDGET.store(0, Ordering::Relaxed);
}

/// Bytes that may still be written before the next line-status poll.
static TX_BUDGET: AtomicU16 = AtomicU16::new(0);
/// Transmit FIFO depth of a 16550A (enabled in `init`).
const FIFO_DEPTH: u16 = 16;

fn put_byte(b: u8) {
    let p = PORT.load(Ordering::Relaxed);
    // THRE means the whole transmit FIFO is empty, so one poll covers FIFO_DEPTH bytes.
    // Port I/O is what costs time under emulation; this halves it.
    if TX_BUDGET.load(Ordering::Relaxed) == 0 {
        // Bounded wait: a missing or stuck UART must not hang the kernel.
        for _ in 0..100_000 {
            // SAFETY: reading the line status register of the console UART.
            let lsr = unsafe { Port::<u8>::new(p + 5).read() };
            if lsr & 0x20 != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        TX_BUDGET.store(FIFO_DEPTH, Ordering::Relaxed);
    }
    TX_BUDGET.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: writing the transmit holding register of the console UART.
    unsafe { Port::<u8>::new(p).write(b) };
}

struct Raw;

impl Write for Raw {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put_byte(b'\r');
            }
            put_byte(b);
        }
        Ok(())
    }
}

/// Holds the console; released on drop.
pub struct ConsoleGuard {
    nested: bool,
    restore_if: bool,
}

impl Drop for ConsoleGuard {
    fn drop(&mut self) {
        if !self.nested {
            OWNER.store(FREE, Ordering::Release);
        }
        if self.restore_if {
            interrupts::enable();
        }
    }
}

/// Takes the console lock (interrupts off while held).
pub fn lock() -> ConsoleGuard {
    let me = crate::arch::percpu::current_index() as u32;
    let restore_if = interrupts::are_enabled();
    interrupts::disable();
    let mut spins = 0u64;
    loop {
        match OWNER.compare_exchange(FREE, me, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => {
                return ConsoleGuard {
                    nested: false,
                    restore_if,
                };
            }
            Err(o) if o == me => {
                return ConsoleGuard {
                    nested: true,
                    restore_if,
                };
            }
            Err(_) => {
                spins += 1;
                // Once a panic has stopped the other CPUs, the owner will never release.
                if STEAL.load(Ordering::Relaxed) && spins > 1_000_000 {
                    OWNER.store(me, Ordering::Release);
                    return ConsoleGuard {
                        nested: false,
                        restore_if,
                    };
                }
                core::hint::spin_loop();
            }
        }
    }
}

/// Lets a panicking CPU take the console from stopped CPUs.
pub fn allow_steal() {
    STEAL.store(true, Ordering::Relaxed);
}

/// Writes formatted text under the console lock.
pub fn print(args: fmt::Arguments<'_>) {
    let _g = lock();
    let _ = Raw.write_fmt(args);
}

/// Writes formatted text while the caller holds the lock.
pub fn print_locked(_g: &ConsoleGuard, args: fmt::Arguments<'_>) {
    let _ = Raw.write_fmt(args);
}

/// Displays formatted text on one line (newlines become "; "), for verdict lines that
/// log parsers read line by line.
pub struct OneLine<'a>(pub fmt::Arguments<'a>);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct W<'a, 'b>(&'a mut fmt::Formatter<'b>);
        impl Write for W<'_, '_> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for (i, part) in s.split('\n').enumerate() {
                    if i > 0 {
                        self.0.write_str("; ")?;
                    }
                    self.0.write_str(part)?;
                }
                Ok(())
            }
        }
        fmt::write(&mut W(f), self.0)
    }
}

/// Prints to the serial console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

/// Prints a line to the serial console (one lock hold per line, so lines never interleave).
#[macro_export]
macro_rules! println {
    () => { $crate::console::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
