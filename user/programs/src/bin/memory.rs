//! Memory and thread cases, chosen by `arg`:
//! * 0: lazy faults: maps 64 pages, checks each reads zero, writes it; exits with the
//!   average TSC delta of a first touch (one lazy page fault).
//! * 1: munmap shootdown: thread B on the other CPU (cpu ^ 1) keeps reading a page; A unmaps
//!   it. B's next read must fault (the process is killed with #PF at that page); a stale
//!   read exits with status 3.
//! * 2: munmap cost with the address space live on another CPU (thread B spinning there):
//!   exits with the average TSC delta of a one-page munmap.
//! * 3: block/wake ping-pong of 200 rounds between threads on two CPUs through
//!   `wait_word`/`wake_word`; exits 0.
//! * 4: null system call: exits with the average TSC delta of `getpid`.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering::SeqCst};

use user_rt::abi::{ANY_CPU, PAGE, PROT_READ, PROT_WRITE};
use user_rt::println;

static STATE: AtomicU64 = AtomicU64::new(0);
static WORD: AtomicU64 = AtomicU64::new(0);
static ACK: AtomicU64 = AtomicU64::new(0);
static SPIN: AtomicU64 = AtomicU64::new(0);

const ROUNDS: u64 = 200;

fn other_cpu() -> u64 {
    user_rt::cpu() ^ 1
}

fn stack() -> u64 {
    let len = 16 * PAGE;
    match user_rt::mmap(0, len, PROT_READ | PROT_WRITE) {
        Ok(a) => a + len,
        Err(e) => {
            println!("memory: stack mmap failed: {e}");
            user_rt::exit(90)
        }
    }
}

extern "C" fn reader(p: u64) -> ! {
    let p = p as *const u64;
    // SAFETY: A mapped the page before starting this thread; after the unmap, the read
    // faults and the kernel ends the process (the point of the test).
    unsafe {
        while core::ptr::read_volatile(p) != 7 {}
        STATE.store(1, SeqCst);
        while STATE.load(SeqCst) != 2 {
            core::ptr::read_volatile(p);
        }
        core::ptr::read_volatile(p);
    }
    STATE.store(3, SeqCst);
    user_rt::thread_exit()
}

extern "C" fn spinner(_: u64) -> ! {
    SPIN.store(1, SeqCst);
    while STATE.load(SeqCst) == 0 {
        core::hint::spin_loop();
    }
    user_rt::thread_exit()
}

extern "C" fn pong(_: u64) -> ! {
    for i in 1..=ROUNDS {
        while WORD.load(SeqCst) != i {
            let _ = user_rt::wait_word(&WORD, i - 1);
        }
        ACK.store(i, SeqCst);
        let _ = user_rt::wake_word(&ACK, 1);
    }
    user_rt::thread_exit()
}

fn main(arg: u64) -> u64 {
    match arg {
        0 => {
            let n = 64;
            let Ok(base) = user_rt::mmap(0, n * PAGE, PROT_READ | PROT_WRITE) else {
                return 10;
            };
            let mut total = 0;
            for i in 0..n {
                let p = (base + i * PAGE) as *mut u64;
                let t0 = user_rt::rdtsc();
                // SAFETY: inside the mapping just made.
                let v = unsafe { core::ptr::read_volatile(p) };
                total += user_rt::rdtsc() - t0;
                if v != 0 {
                    return 11;
                }
                // SAFETY: as above.
                unsafe { core::ptr::write_volatile(p, i + 1) };
            }
            for i in 0..n {
                // SAFETY: as above.
                if unsafe { core::ptr::read_volatile((base + i * PAGE) as *const u64) } != i + 1 {
                    return 12;
                }
            }
            total / n
        }
        1 => {
            let Ok(p) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
                return 10;
            };
            // SAFETY: the page was just mapped.
            unsafe { core::ptr::write_volatile(p as *mut u64, 7) };
            if let Err(e) = user_rt::thread_spawn(reader, stack(), p, other_cpu()) {
                println!("memory: thread_spawn: {e}");
                return 13;
            }
            while STATE.load(SeqCst) != 1 {
                user_rt::yield_now();
            }
            println!(
                "memory: unmapping {p:#x} while cpu {} reads it",
                other_cpu()
            );
            // SAFETY: only the reader uses the page, and it is meant to fault.
            if unsafe { user_rt::munmap(p, PAGE) }.is_err() {
                return 14;
            }
            STATE.store(2, SeqCst);
            loop {
                if STATE.load(SeqCst) == 3 {
                    println!("memory: stale read after munmap");
                    return 3;
                }
                user_rt::yield_now();
            }
        }
        2 => {
            if user_rt::thread_spawn(spinner, stack(), 0, other_cpu()).is_err() {
                return 13;
            }
            while SPIN.load(SeqCst) == 0 {
                user_rt::yield_now();
            }
            let n = 32;
            let mut total = 0;
            for _ in 0..n {
                let Ok(p) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
                    return 10;
                };
                // SAFETY: just mapped.
                unsafe { core::ptr::write_volatile(p as *mut u64, 1) };
                let t0 = user_rt::rdtsc();
                // SAFETY: nothing uses the page any more.
                if unsafe { user_rt::munmap(p, PAGE) }.is_err() {
                    return 14;
                }
                total += user_rt::rdtsc() - t0;
            }
            STATE.store(1, SeqCst);
            total / n
        }
        3 => {
            if user_rt::thread_spawn(pong, stack(), 0, other_cpu()).is_err() {
                return 13;
            }
            for i in 1..=ROUNDS {
                WORD.store(i, SeqCst);
                let _ = user_rt::wake_word(&WORD, 1);
                while ACK.load(SeqCst) != i {
                    let _ = user_rt::wait_word(&ACK, i - 1);
                }
            }
            0
        }
        4 => {
            let n = 1000;
            let t0 = user_rt::rdtsc();
            for _ in 0..n {
                user_rt::getpid();
            }
            (user_rt::rdtsc() - t0) / n
        }
        _ => {
            let _ = ANY_CPU;
            99
        }
    }
}

user_rt::entry!(main);
