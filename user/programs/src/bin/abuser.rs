//! Calls every system call with bad arguments and checks each specific error code. Exits 0
//! when every answer matched, else the number of the first mismatch (also printed).
#![no_std]
#![no_main]

use core::sync::atomic::AtomicU64;

use user_rt::abi::{self, Error, PAGE, PROT_READ, Sys, USER_BASE, USER_TOP};
use user_rt::println;

const KERNEL: u64 = 0x20_0000; // the kernel's identity map
const HIGH: u64 = 0xffff_8000_0000_0000;
const NONCANON: u64 = 0x8000_0000_0000;

fn raw(n: u64, a: [u64; 6]) -> Result<u64, Error> {
    // SAFETY: the arguments are bad on purpose; the kernel refuses them.
    abi::decode(unsafe { user_rt::syscall6(n, a) })
}

fn sys(n: Sys, a: &[u64]) -> Result<u64, Error> {
    let mut v = [0; 6];
    v[..a.len()].copy_from_slice(a);
    raw(n as u64, v)
}

/// (what, got, wanted).
type Case = (&'static str, Result<u64, Error>, Result<u64, Error>);

static WORD: AtomicU64 = AtomicU64::new(5);

fn main(_: u64) -> u64 {
    let msg = "abuse";
    let m = msg.as_ptr() as u64;
    let unmapped = 0x6000_0000_0000u64;
    let word = WORD.as_ptr() as u64;
    let cases: &[Case] = &[
        (
            "unknown number",
            raw(abi::SYS_COUNT, [0; 6]),
            Err(Error::NoSys),
        ),
        ("huge number", raw(u64::MAX, [0; 6]), Err(Error::NoSys)),
        (
            "write null",
            sys(Sys::Write, &[0, 5]),
            Err(Error::BadAddress),
        ),
        (
            "write kernel",
            sys(Sys::Write, &[KERNEL, 5]),
            Err(Error::BadAddress),
        ),
        (
            "write upper half",
            sys(Sys::Write, &[HIGH, 5]),
            Err(Error::BadAddress),
        ),
        (
            "write non-canonical",
            sys(Sys::Write, &[NONCANON, 5]),
            Err(Error::BadAddress),
        ),
        (
            "write wrapping",
            sys(Sys::Write, &[m, u64::MAX]),
            Err(Error::BadLength),
        ),
        (
            "write too long",
            sys(Sys::Write, &[m, abi::WRITE_MAX + 1]),
            Err(Error::BadLength),
        ),
        (
            "write past the half",
            sys(Sys::Write, &[USER_TOP - 2, 4]),
            Err(Error::BadAddress),
        ),
        (
            "write unmapped",
            sys(Sys::Write, &[unmapped, 5]),
            Err(Error::Fault),
        ),
        (
            "write not utf-8",
            sys(Sys::Write, &[[0xffu8, 0xfe].as_ptr() as u64, 2]),
            Err(Error::NotUtf8),
        ),
        ("write ok", sys(Sys::Write, &[m, 5]), Ok(5)),
        ("write empty", sys(Sys::Write, &[m, 0]), Ok(0)),
        (
            "mmap zero length",
            sys(Sys::Mmap, &[0, 0, PROT_READ]),
            Err(Error::BadLength),
        ),
        (
            "mmap unaligned length",
            sys(Sys::Mmap, &[0, 100, PROT_READ]),
            Err(Error::Misaligned),
        ),
        (
            "mmap unaligned address",
            sys(Sys::Mmap, &[USER_BASE + 0x1000_0001, PAGE, PROT_READ]),
            Err(Error::Misaligned),
        ),
        (
            "mmap kernel address",
            sys(Sys::Mmap, &[KERNEL, PAGE, PROT_READ]),
            Err(Error::BadAddress),
        ),
        (
            "mmap wrapping",
            sys(
                Sys::Mmap,
                &[USER_TOP - PAGE, u64::MAX - PAGE + 1, PROT_READ],
            ),
            Err(Error::BadLength),
        ),
        (
            "mmap huge",
            sys(Sys::Mmap, &[0, abi::MMAP_MAX + PAGE, PROT_READ]),
            Err(Error::BadLength),
        ),
        (
            "mmap bad prot",
            sys(Sys::Mmap, &[0, PAGE, 8]),
            Err(Error::BadArgument),
        ),
        (
            "mmap over the program",
            sys(Sys::Mmap, &[USER_BASE + 0x10_0000, PAGE, PROT_READ]),
            Err(Error::Overlap),
        ),
        (
            "munmap kernel",
            sys(Sys::Munmap, &[KERNEL, PAGE]),
            Err(Error::BadAddress),
        ),
        (
            "munmap unaligned",
            sys(Sys::Munmap, &[unmapped + 8, PAGE]),
            Err(Error::Misaligned),
        ),
        (
            "munmap not mapped",
            sys(Sys::Munmap, &[unmapped, PAGE]),
            Err(Error::NotMapped),
        ),
        (
            "munmap the program",
            sys(Sys::Munmap, &[USER_BASE + 0x10_0000, PAGE]),
            Err(Error::NotMapped),
        ),
        (
            "munmap zero",
            sys(Sys::Munmap, &[unmapped, 0]),
            Err(Error::BadLength),
        ),
        (
            "sleep too long",
            sys(Sys::Sleep, &[abi::SLEEP_MAX_NS + 1]),
            Err(Error::BadArgument),
        ),
        // A real sleep (blocked, woken by the timer tick) and a zero one (a yield).
        ("sleep 1 ms", sys(Sys::Sleep, &[1_000_000]), Ok(0)),
        ("sleep 0", sys(Sys::Sleep, &[0]), Ok(0)),
        (
            "wait_word null",
            sys(Sys::WaitWord, &[0, 0]),
            Err(Error::BadAddress),
        ),
        (
            "wait_word kernel",
            sys(Sys::WaitWord, &[KERNEL, 0]),
            Err(Error::BadAddress),
        ),
        (
            "wait_word unaligned",
            sys(Sys::WaitWord, &[word + 1, 5]),
            Err(Error::Misaligned),
        ),
        (
            "wait_word unmapped",
            sys(Sys::WaitWord, &[unmapped, 0]),
            Err(Error::Fault),
        ),
        (
            "wait_word changed",
            sys(Sys::WaitWord, &[word, 4]),
            Err(Error::WouldBlock),
        ),
        (
            "wake_word kernel",
            sys(Sys::WakeWord, &[HIGH, 1]),
            Err(Error::BadAddress),
        ),
        ("wake_word nobody", sys(Sys::WakeWord, &[word, 1]), Ok(0)),
        (
            "spawn null name",
            sys(Sys::Spawn, &[0, 5, abi::ANY_CPU, 0]),
            Err(Error::BadAddress),
        ),
        (
            "spawn kernel name",
            sys(Sys::Spawn, &[KERNEL, 5, abi::ANY_CPU, 0]),
            Err(Error::BadAddress),
        ),
        (
            "spawn long name",
            sys(Sys::Spawn, &[m, abi::NAME_MAX + 1, abi::ANY_CPU, 0]),
            Err(Error::BadLength),
        ),
        (
            "spawn empty name",
            sys(Sys::Spawn, &[m, 0, abi::ANY_CPU, 0]),
            Err(Error::BadLength),
        ),
        (
            "spawn unknown",
            sys(Sys::Spawn, &[m, 5, abi::ANY_CPU, 0]),
            Err(Error::NoSuchProgram),
        ),
        (
            "spawn bad cpu",
            sys(Sys::Spawn, &["hello".as_ptr() as u64, 5, 100_000, 0]),
            Err(Error::NoSuchCpu),
        ),
        (
            "wait bad pid",
            sys(Sys::Wait, &[u64::MAX]),
            Err(Error::NoSuchProcess),
        ),
        (
            "wait pid 0",
            sys(Sys::Wait, &[0]),
            Err(Error::NoSuchProcess),
        ),
        (
            "kill bad pid",
            sys(Sys::Kill, &[123_456]),
            Err(Error::NoSuchProcess),
        ),
        (
            "thread kernel entry",
            sys(
                Sys::ThreadSpawn,
                &[KERNEL, USER_BASE + 0x100_0000, 0, abi::ANY_CPU],
            ),
            Err(Error::BadAddress),
        ),
        (
            "thread kernel stack",
            sys(
                Sys::ThreadSpawn,
                &[USER_BASE + 0x10_0000, KERNEL, 0, abi::ANY_CPU],
            ),
            Err(Error::BadAddress),
        ),
        (
            "thread unaligned stack",
            sys(
                Sys::ThreadSpawn,
                &[
                    USER_BASE + 0x10_0000,
                    USER_BASE + 0x100_0008,
                    0,
                    abi::ANY_CPU,
                ],
            ),
            Err(Error::Misaligned),
        ),
        (
            "thread bad cpu",
            sys(
                Sys::ThreadSpawn,
                &[USER_BASE + 0x10_0000, USER_BASE + 0x100_0000, 0, 77_777],
            ),
            Err(Error::NoSuchCpu),
        ),
        (
            "sched_set_cpu bad cpu",
            sys(Sys::SchedSetCpu, &[77_777]),
            Err(Error::NoSuchCpu),
        ),
        (
            "dsa_resume null",
            sys(Sys::DsaResume, &[0, 0]),
            Err(Error::BadAddress),
        ),
        (
            "dsa_resume kernel",
            sys(Sys::DsaResume, &[KERNEL, 0]),
            Err(Error::BadAddress),
        ),
        (
            "dsa_resume unmapped",
            sys(Sys::DsaResume, &[unmapped, 0]),
            Err(Error::Fault),
        ),
    ];
    for (i, (what, got, want)) in cases.iter().enumerate() {
        if got != want {
            println!("abuser: case {i} ({what}): got {got:?}, want {want:?}");
            return i as u64 + 1;
        }
    }
    println!("abuser: {} cases refused as expected", cases.len());
    0
}

user_rt::entry!(main);
