//! Process lifetime from ring 3: spawns children, waits for them, kills one, and checks the
//! statuses and errors. Exits 0 when everything matched, else the number of the first check
//! that failed (also printed).
#![no_std]
#![no_main]

use user_rt::abi::{ANY_CPU, Error, STATUS_KILLED};
use user_rt::println;

fn check(n: u64, ok: bool, what: &str) -> Result<(), u64> {
    if ok {
        Ok(())
    } else {
        println!("parent: check {n} failed: {what}");
        Err(n)
    }
}

fn run() -> Result<(), u64> {
    let a = user_rt::spawn("hello", ANY_CPU, 7).map_err(|_| 1u64)?;
    check(
        2,
        user_rt::wait(a) == Ok(7),
        "hello exits with its argument",
    )?;
    check(
        3,
        user_rt::wait(a) == Err(Error::NoSuchProcess),
        "a child is waited for once",
    )?;
    let f = user_rt::spawn("faulter", ANY_CPU, 3).map_err(|_| 4u64)?;
    check(
        5,
        user_rt::wait(f) == Ok(STATUS_KILLED),
        "a faulting child is killed",
    )?;
    // A child that would yield forever: killed while runnable (same CPU) or running.
    let y = user_rt::spawn("yielder", ANY_CPU, u64::MAX).map_err(|_| 6u64)?;
    user_rt::yield_now();
    check(7, user_rt::kill(y) == Ok(0), "kill a child")?;
    check(
        8,
        user_rt::wait(y) == Ok(STATUS_KILLED),
        "a killed child's status",
    )?;
    check(
        9,
        user_rt::kill(y) == Err(Error::NoSuchProcess),
        "kill a reaped child",
    )?;
    check(
        10,
        user_rt::kill(1) == Err(Error::NoSuchProcess) || user_rt::getpid() == 1,
        "kill a non-child",
    )?;
    check(
        11,
        user_rt::spawn("no-such-program", ANY_CPU, 0) == Err(Error::NoSuchProgram),
        "unknown program",
    )?;
    check(
        12,
        user_rt::spawn("hello", 4096, 0) == Err(Error::NoSuchCpu),
        "bad CPU",
    )?;
    check(
        13,
        user_rt::wait(user_rt::getpid()) == Err(Error::NoSuchProcess),
        "wait for itself",
    )?;
    Ok(())
}

fn main(_: u64) -> u64 {
    match run() {
        Ok(()) => {
            println!("parent: all checks passed");
            0
        }
        Err(n) => n,
    }
}

user_rt::entry!(main);
