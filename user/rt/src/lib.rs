//! The runtime of ring-3 programs (target `x86_64-unknown-none`, soft-float: programs never
//! touch SSE/x87 state, which the kernel does not switch).
//!
//! A program is `#![no_std] #![no_main]`, links against this crate and names its entry
//! with [`entry!`]: `fn main(arg: u64) -> u64`, where `arg` is what the spawner passed
//! and the return value is the exit status. `_start` (here) aligns the stack, calls it and
//! exits; a panic prints its message and exits with status 101.
#![no_std]
#![warn(missing_docs)]

pub use user_abi as abi;
use user_abi::{Error, Sys};

core::arch::global_asm!(
    ".globl _start",
    ".type _start, @function",
    "_start:",
    "xor ebp, ebp",
    "and rsp, -16",
    "call {start}",
    "ud2",
    start = sym rt_start,
);

unsafe extern "Rust" {
    /// The program's entry, defined by [`entry!`].
    fn __user_main(arg: u64) -> u64;
}

extern "C" fn rt_start(arg: u64) -> ! {
    // SAFETY: `entry!` defines the symbol with this signature.
    let status = unsafe { __user_main(arg) };
    exit(status)
}

/// Names the program's entry: `user_rt::entry!(main);` with `fn main(arg: u64) -> u64`.
#[macro_export]
macro_rules! entry {
    ($main:path) => {
        #[unsafe(no_mangle)]
        fn __user_main(arg: u64) -> u64 {
            let f: fn(u64) -> u64 = $main;
            f(arg)
        }
    };
}

/// Raw system call with up to six arguments; returns RAX.
///
/// # Safety
/// The kernel checks every argument, so no call can harm the kernel; but a call can change
/// this process's memory (e.g. `munmap` of memory Rust still uses).
#[inline(always)]
pub unsafe fn syscall6(n: u64, a: [u64; 6]) -> u64 {
    let r: u64;
    // SAFETY: `syscall` clobbers RCX and R11 (declared); the kernel preserves the rest.
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => r,
            in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
            in("r10") a[3], in("r8") a[4], in("r9") a[5],
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    r
}

#[inline(always)]
fn call(n: Sys, a: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: the wrappers below pass only memory they own or that the call reads.
    user_abi::decode(unsafe { syscall6(n as u64, a) })
}

/// Ends the process.
pub fn exit(status: u64) -> ! {
    let _ = call(Sys::Exit, [status, 0, 0, 0, 0, 0]);
    loop {
        core::hint::spin_loop();
    }
}

/// Writes `s` to the serial log.
pub fn write(s: &str) -> Result<u64, Error> {
    call(Sys::Write, [s.as_ptr() as u64, s.len() as u64, 0, 0, 0, 0])
}

/// Gives the CPU away.
pub fn yield_now() {
    let _ = call(Sys::Yield, [0; 6]);
}

/// This process's id.
pub fn getpid() -> u64 {
    call(Sys::GetPid, [0; 6]).unwrap_or(0)
}

/// The CPU this thread runs on.
pub fn cpu() -> u64 {
    call(Sys::Cpu, [0; 6]).unwrap_or(u64::MAX)
}

/// Anonymous memory (`addr` 0: the kernel chooses).
pub fn mmap(addr: u64, len: u64, prot: u64) -> Result<u64, Error> {
    call(Sys::Mmap, [addr, len, prot, 0, 0, 0])
}

/// Unmaps pages.
///
/// # Safety
/// Nothing may use the memory afterwards.
pub unsafe fn munmap(addr: u64, len: u64) -> Result<u64, Error> {
    call(Sys::Munmap, [addr, len, 0, 0, 0, 0])
}

/// Sleeps at least `ns`.
pub fn sleep_ns(ns: u64) -> Result<u64, Error> {
    call(Sys::Sleep, [ns, 0, 0, 0, 0, 0])
}

/// Blocks while `*word == expected`.
pub fn wait_word(word: &core::sync::atomic::AtomicU64, expected: u64) -> Result<u64, Error> {
    call(Sys::WaitWord, [word.as_ptr() as u64, expected, 0, 0, 0, 0])
}

/// Wakes up to `count` waiters of `word`.
pub fn wake_word(word: &core::sync::atomic::AtomicU64, count: u64) -> Result<u64, Error> {
    call(Sys::WakeWord, [word.as_ptr() as u64, count, 0, 0, 0, 0])
}

/// Starts embedded program `name` on `cpu` ([`abi::ANY_CPU`]) with `arg`.
pub fn spawn(name: &str, cpu: u64, arg: u64) -> Result<u64, Error> {
    call(
        Sys::Spawn,
        [name.as_ptr() as u64, name.len() as u64, cpu, arg, 0, 0],
    )
}

/// Waits for child `pid` and returns its exit status.
pub fn wait(pid: u64) -> Result<u64, Error> {
    call(Sys::Wait, [pid, 0, 0, 0, 0, 0])
}

/// Kills child `pid`.
pub fn kill(pid: u64) -> Result<u64, Error> {
    call(Sys::Kill, [pid, 0, 0, 0, 0, 0])
}

/// Starts a thread at `entry(arg)` on `stack_top`, on `cpu`.
pub fn thread_spawn(
    entry: extern "C" fn(u64) -> !,
    stack_top: u64,
    arg: u64,
    cpu: u64,
) -> Result<u64, Error> {
    call(
        Sys::ThreadSpawn,
        [entry as usize as u64, stack_top, arg, cpu, 0, 0],
    )
}

/// Submits the DSA descriptor `desc` to device `device` (0-based) on this process's PASID.
pub fn dsa_submit(desc: &[u8; 64], device: u64) -> Result<u64, Error> {
    call(Sys::DsaSubmit, [desc.as_ptr() as u64, device, 0, 0, 0, 0])
}

/// An interrupt handle on DSA device `device` for this process's PASID, targeting `cpu`
/// ([`abi::CURRENT_CPU`]: this thread's CPU). Returns its id.
pub fn ims_alloc(device: u64, cpu: u64) -> Result<u64, Error> {
    call(Sys::ImsAlloc, [device, cpu, 0, 0, 0, 0])
}

/// Blocks until `handle` delivered a completion interrupt; completions since the last wait.
pub fn ims_wait(handle: u64) -> Result<u64, Error> {
    call(Sys::ImsWait, [handle, 0, 0, 0, 0, 0])
}

/// Sends `handle`'s interrupts to `cpu`.
pub fn ims_set_affinity(handle: u64, cpu: u64) -> Result<u64, Error> {
    call(Sys::ImsSetAffinity, [handle, cpu, 0, 0, 0, 0])
}

/// Releases `handle`.
pub fn ims_release(handle: u64) -> Result<u64, Error> {
    call(Sys::ImsRelease, [handle, 0, 0, 0, 0, 0])
}

/// Maps the shared-WQ portal of DSA device `device` for ENQCMD from ring 3 (kernel policy
/// `sva.direct`); returns its address.
pub fn dsa_portal(device: u64) -> Result<u64, Error> {
    call(Sys::DsaPortal, [device, 0, 0, 0, 0, 0])
}

/// ENQCMD of the 64-byte descriptor `desc` to the portal at `portal`: true when the
/// device accepted it (ZF = 0), false for a retry (WQ full, or not an enqueue register).
/// The descriptor's dword 0 must be 0 (ENQCMD #GPs otherwise); the CPU puts the PASID of
/// IA32_PASID there and privilege 0 (Intel SDM Vol. 2A, ENQCMD). An SFENCE first makes the
/// descriptor's buffers and zeroed completion record visible to the device.
#[inline(always)]
pub fn enqcmd(portal: u64, desc: &[u8; 64]) -> bool {
    let retry: u8;
    // SAFETY: ENQCMD reads 64 bytes at `desc` (a live array) and makes one enqueue store to
    // `portal`; an unmapped or non-portal destination faults or reports a retry, nothing
    // else in this process changes.
    unsafe {
        core::arch::asm!(
            "sfence",
            "enqcmd {p}, zmmword ptr [{d}]",
            "setz {r}",
            p = in(reg) portal,
            d = in(reg) desc.as_ptr(),
            r = out(reg_byte) retry,
            options(nostack),
        );
    }
    retry == 0
}

/// A dedicated WQ of DSA device `device` for this process: (portal address, size).
pub fn dsa_wq_take(device: u64) -> Result<(u64, u64), Error> {
    let mut size = 0u64;
    let a = call(Sys::DsaWqTake, [device, (&raw mut size) as u64, 0, 0, 0, 0])?;
    Ok((a, size))
}

/// MOVDIR64B of `desc` to the dedicated-WQ portal at `portal` (a posted 64-byte store: no
/// answer; a full WQ drops it). SFENCE first for the buffers and completion record.
#[inline(always)]
pub fn movdir64b(portal: u64, desc: &[u8; 64]) {
    // SAFETY: one 64-byte store to `portal` (a mapped portal page, else a fault), reading
    // the live array `desc`.
    unsafe {
        core::arch::asm!(
            "sfence",
            "movdir64b {p}, zmmword ptr [{d}]",
            p = in(reg) portal,
            d = in(reg) desc.as_ptr(),
            options(nostack),
        );
    }
}

/// Moves the calling thread to `cpu` (and the process's handles that targeted its old CPU).
pub fn sched_set_cpu(cpu: u64) -> Result<u64, Error> {
    call(Sys::SchedSetCpu, [cpu, 0, 0, 0, 0, 0])
}

/// After `desc` (submitted to `device`) ended in a page-fault partial completion: the kernel
/// maps the page if it is valid for this process, writes the rest over `desc` and submits it.
pub fn dsa_resume(desc: &mut [u8; 64], device: u64) -> Result<u64, Error> {
    call(
        Sys::DsaResume,
        [desc.as_mut_ptr() as u64, device, 0, 0, 0, 0],
    )
}

/// DSA work descriptors for ring-3 programs (the common fields of the Intel DSA Architecture
/// Specification §8.1) and byte access to their memory: what every program that submits
/// builds the same way.
pub mod dsa {
    /// Memory Move opcode (DSA spec §8.3.4).
    pub const MEMMOVE: u8 = 0x03;
    /// Completion Record Address Valid | Request Completion Record (descriptor flags 2 and 3,
    /// DSA spec §8.1.3): every descriptor a process submits asks for its record.
    pub const CRAV_RCR: u32 = (1 << 2) | (1 << 3);

    /// A work descriptor: dword 0 zero (PASID and privilege are the kernel's or, with ENQCMD,
    /// the CPU's to fill), the 24 flag bits, the opcode, the completion record address, source,
    /// destination and transfer size; every other byte zero.
    pub fn desc(op: u8, flags: u32, cr: u64, src: u64, dst: u64, size: u32) -> [u8; 64] {
        let mut d = [0u8; 64];
        d[4..7].copy_from_slice(&flags.to_le_bytes()[..3]);
        d[7] = op;
        d[8..16].copy_from_slice(&cr.to_le_bytes());
        d[16..24].copy_from_slice(&src.to_le_bytes());
        d[24..32].copy_from_slice(&dst.to_le_bytes());
        d[32..36].copy_from_slice(&size.to_le_bytes());
        d
    }

    /// The byte at user address `a`, read once (the device may write it). An address this
    /// process has not mapped ends the process with #PF (the kernel's report), nothing else.
    pub fn peek(a: u64) -> u8 {
        // SAFETY: a volatile one-byte load from this process's own address space; the kernel
        // turns a fault into the end of the process.
        unsafe { core::ptr::read_volatile(a as *const u8) }
    }

    /// Stores `v` at user address `a` (as [`peek`] for an address not mapped).
    pub fn poke(a: u64, v: u8) {
        // SAFETY: as in `peek`.
        unsafe { core::ptr::write_volatile(a as *mut u8, v) }
    }
}

/// Ends the calling thread.
pub fn thread_exit() -> ! {
    let _ = call(Sys::ThreadExit, [0; 6]);
    loop {
        core::hint::spin_loop();
    }
}

/// The time-stamp counter (guest instructions under `-icount shift=0`).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDTSC reads a counter (CR4.TSD is clear).
    unsafe {
        core::arch::asm!("lfence", "rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack));
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A `core::fmt::Write` sink that collects up to 256 bytes and writes them in one call.
pub struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    /// Empty.
    pub const fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Writes what was collected (ignoring a failure: there is nowhere else to report it).
    pub fn flush(&mut self) {
        if let Ok(s) = core::str::from_utf8(&self.buf[..self.len]) {
            let _ = write(s);
        }
        self.len = 0;
    }
}

impl Default for Line {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// Prints a formatted line to the serial log.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        let mut l = $crate::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut l, format_args!($($arg)*));
        l.flush();
    }};
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    println!("panic: {}", info.message());
    exit(101)
}
