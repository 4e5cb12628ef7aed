//! Interrupt handles from ring 3 (`ims_alloc`, `ims_wait`, `ims_set_affinity`,
//! `ims_release`, and `dsa_submit` with a completion interrupt), chosen by `arg`:
//! * 0: a handle on this CPU; a memmove with RCI naming it, `ims_wait` (blocks until the
//!   interrupt; the record must then be written and the bytes equal); four memmoves in
//!   flight at once, waits until all four are counted; retarget to another CPU and again;
//!   release, after which the id is refused everywhere. Exits 0, else the failing step.
//! * 1: allocates handles until refused: the refusal must be `HandleQuota`; then sleeps
//!   holding them all until killed (the kernel test counts and kills it). Exits non-zero
//!   only on a failure.
//! * 2: ids it does not hold (another process's `1`, 0, huge) and bad CPUs and devices,
//!   each refused with its error; then one handle of its own (another PASID's quota being
//!   exhausted does not matter). Exits 0, else the failing step.
//! * 4, 5: attacker of the hostile-process suite: 4 handles, then 4 memmoves of a page each
//!   with a completion interrupt per handle, submitted and not waited for; then 4 exits at
//!   once (work in flight), 5 sleeps until killed. Exits non-zero only on a failure to set up.
//! * 3: cost: exits with the average TSC delta (guest instructions under `-icount`) from a
//!   No-op descriptor with a completion interrupt submitted to the return of the `ims_wait`
//!   that counted it (submit call, device, IMS message, demultiplexer, wake-up, switch back).
//!   The suite's interrupt-storm victim too.
//! * 6: victim of the suite's interrupt-handle attack: maps 3 pages at the address the
//!   device-level attacker uses (`sva.rs` `ATTACKER_PAGE`, so that the suite's mutation check
//!   — the same descriptor on this PASID — runs to completion), one handle on this CPU, then
//!   sleeps until killed (the suite names the handle's device handle in another PASID's
//!   descriptor).
//! * `9 | a << 8 | b << 16` (started on CPU `a`): migration in the middle of a completion
//!   stream: a handle on `a`; 7 rounds (ending on `b`) of 8 memmoves of 256 KiB with a
//!   completion interrupt in flight, then `sched_set_cpu` to the other of `a`, `b` (the handle follows), `cpu()`
//!   must say so, then exactly 8 completions counted (`ims_wait` until 8; more is a
//!   duplicate, and a further `ims_wait` must answer `WouldBlock`), every record 1, every
//!   byte equal. Then writes 1 (else the failing step) to the word at [`DONE_WORD`], the
//!   records still zero at each move added in the second word, and sleeps until killed (the
//!   kernel test reads the handle's CPU).
//! * `8 | cpu << 8`: interrupt storm of the suite: one handle whose interrupts go to CPU
//!   `cpu`, then No-op descriptors with a completion interrupt as fast as it can
//!   ([`IMS_INFLIGHT_MAX`] in flight, reaped with `ims_wait`) until killed.
#![no_std]
#![no_main]

use user_rt::abi::{
    CURRENT_CPU, Error, FLAG_RCI, IMS_INFLIGHT_MAX, PAGE, PROT_READ, PROT_WRITE, SLEEP_MAX_NS,
};
use user_rt::dsa::{CRAV_RCR, MEMMOVE, peek as rd, poke as wr};
use user_rt::println;

/// A memmove ([`user_rt::dsa::desc`]) with `handle` in the interrupt handle field.
fn desc(flags: u32, cr: u64, src: u64, dst: u64, size: u32, handle: u16) -> [u8; 64] {
    let mut d = user_rt::dsa::desc(MEMMOVE, flags, cr, src, dst, size);
    d[36..38].copy_from_slice(&handle.to_le_bytes());
    d
}

/// Waits (blocking in the kernel) until `want` completions of `h` were counted.
fn wait_for(h: u64, want: u64) -> Result<(), u64> {
    let mut got = 0;
    while got < want {
        match user_rt::ims_wait(h) {
            Ok(n) if n >= 1 => got += n,
            other => {
                println!("ims: ims_wait after {got}/{want}: {other:?}");
                return Err(1);
            }
        }
    }
    if got != want {
        println!("ims: {got} completions counted for {want} descriptors");
        return Err(2);
    }
    Ok(())
}

/// `n` memmoves of a page each (page i of `src` to page i of `dst`, record i), with a
/// completion interrupt through `h`; waits for them; checks records and bytes.
fn round(h: u64, n: u64, src: u64, dst: u64, cr: u64, seed: u64) -> Result<(), u64> {
    for i in 0..n * PAGE {
        wr(src + i, (i * 13 + seed) as u8);
        wr(dst + i, 0);
    }
    for i in 0..n {
        let d = desc(
            CRAV_RCR | FLAG_RCI,
            cr + 32 * i,
            src + i * PAGE,
            dst + i * PAGE,
            PAGE as u32,
            h as u16,
        );
        if let Err(e) = user_rt::dsa_submit(&d, 0) {
            println!("ims: submit {i}: {e}");
            return Err(3);
        }
    }
    wait_for(h, n)?;
    for i in 0..n {
        // The kernel counted the completion only once the status byte was written.
        let s = rd(cr + 32 * i);
        if s != 1 {
            println!("ims: record {i} status {s:#x} after ims_wait");
            return Err(4);
        }
    }
    for i in 0..n * PAGE {
        if rd(dst + i) != rd(src + i) {
            println!("ims: byte {i} differs");
            return Err(5);
        }
    }
    Ok(())
}

fn expect(what: &str, got: Result<u64, Error>, want: Error) -> Result<(), ()> {
    if got == Err(want) {
        Ok(())
    } else {
        println!("ims: {what}: got {got:?}, want {want:?}");
        Err(())
    }
}

fn functional() -> u64 {
    let Ok(buf) = user_rt::mmap(0, 9 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + 4 * PAGE, buf + 8 * PAGE);
    let h = match user_rt::ims_alloc(0, CURRENT_CPU) {
        Ok(h) => h,
        Err(e) => {
            println!("ims: ims_alloc: {e}");
            return 10;
        }
    };
    if let Err(e) = round(h, 1, src, dst, cr, 1) {
        return 20 + e;
    }
    if let Err(e) = round(h, 4, src, dst, cr, 2) {
        return 30 + e;
    }
    // Nothing in flight, nothing counted: ims_wait would wait for nothing.
    if expect("ims_wait idle", user_rt::ims_wait(h), Error::WouldBlock).is_err() {
        return 40;
    }
    let here = user_rt::cpu();
    let other = if here == 0 { 1 } else { 0 };
    match user_rt::ims_set_affinity(h, other) {
        Ok(_) => {}
        // A machine with one CPU: stay.
        Err(Error::NoSuchCpu) if here == 0 => {}
        Err(e) => {
            println!("ims: ims_set_affinity({other}): {e}");
            return 41;
        }
    }
    if let Err(e) = round(h, 2, src, dst, cr, 3) {
        return 50 + e;
    }
    if expect(
        "affinity to a bad CPU",
        user_rt::ims_set_affinity(h, 4096),
        Error::NoSuchCpu,
    )
    .is_err()
    {
        return 60;
    }
    if user_rt::ims_release(h).is_err() {
        return 61;
    }
    let d = desc(CRAV_RCR | FLAG_RCI, cr, src, dst, PAGE as u32, h as u16);
    let after: [(&str, Result<u64, Error>); 4] = [
        ("wait after release", user_rt::ims_wait(h)),
        ("release twice", user_rt::ims_release(h)),
        (
            "affinity after release",
            user_rt::ims_set_affinity(h, CURRENT_CPU),
        ),
        ("submit after release", user_rt::dsa_submit(&d, 0)),
    ];
    for (i, (what, got)) in after.into_iter().enumerate() {
        if expect(what, got, Error::BadHandle).is_err() {
            return 70 + i as u64;
        }
    }
    println!("ims: interrupts delivered through handle {h}, released");
    0
}

fn hog() -> u64 {
    let mut n = 0u64;
    loop {
        match user_rt::ims_alloc(0, CURRENT_CPU) {
            Ok(_) => n += 1,
            Err(Error::HandleQuota) => break,
            Err(e) => {
                println!("ims: allocation {n} refused with {e}");
                return 2;
            }
        }
        if n > 4096 {
            return 3;
        }
    }
    if user_rt::ims_alloc(0, CURRENT_CPU) != Err(Error::HandleQuota) {
        return 4;
    }
    println!("ims: {n} handles allocated, then HandleQuota");
    // Reports after the line is out (the kernel test waits for this word, not for the
    // handle count, so it never kills the hog before it has checked the refusal and printed).
    if user_rt::mmap(DONE_WORD, PAGE, PROT_READ | PROT_WRITE) != Ok(DONE_WORD) {
        return 5;
    }
    // SAFETY: the page mapped above.
    unsafe { core::ptr::write_volatile(DONE_WORD as *mut u64, n) };
    loop {
        let _ = user_rt::sleep_ns(SLEEP_MAX_NS);
    }
}

fn abuse() -> u64 {
    let Ok(buf) = user_rt::mmap(0, 3 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + PAGE, buf + 2 * PAGE);
    for i in 0..PAGE {
        wr(src + i, i as u8);
    }
    // Ids this process does not hold: `1` is the other process's first handle.
    for (i, id) in [1u64, 0, 2, 255, 256, 65_537, u64::MAX]
        .into_iter()
        .enumerate()
    {
        let d = desc(CRAV_RCR | FLAG_RCI, cr, src, dst, PAGE as u32, id as u16);
        let r = [
            expect("ims_wait", user_rt::ims_wait(id), Error::BadHandle),
            expect("ims_release", user_rt::ims_release(id), Error::BadHandle),
            expect(
                "ims_set_affinity",
                user_rt::ims_set_affinity(id, CURRENT_CPU),
                Error::BadHandle,
            ),
            expect(
                "dsa_submit naming it",
                user_rt::dsa_submit(&d, 0),
                Error::BadHandle,
            ),
        ];
        if r.iter().any(Result::is_err) {
            println!("ims: (id {id})");
            return 10 + i as u64;
        }
    }
    if expect(
        "ims_alloc bad CPU",
        user_rt::ims_alloc(0, 4096),
        Error::NoSuchCpu,
    )
    .is_err()
        || expect(
            "ims_alloc CPU 2^40",
            user_rt::ims_alloc(0, 1 << 40),
            Error::NoSuchCpu,
        )
        .is_err()
        || expect(
            "ims_alloc bad device",
            user_rt::ims_alloc(99, 0),
            Error::NoDevice,
        )
        .is_err()
    {
        return 30;
    }
    // A handle of its own: the other PASID's exhausted quota does not matter.
    let h = match user_rt::ims_alloc(0, CURRENT_CPU) {
        Ok(h) => h,
        Err(e) => {
            println!("ims: own ims_alloc: {e}");
            return 40;
        }
    };
    // Its id on another device is not a handle there.
    let d = desc(CRAV_RCR | FLAG_RCI, cr, src, dst, PAGE as u32, h as u16);
    let got = user_rt::dsa_submit(&d, 1);
    if got != Err(Error::BadHandle) && got != Err(Error::NoDevice) {
        println!("ims: handle {h} named on device 1: {got:?}");
        return 42;
    }
    if expect(
        "bad CPU",
        user_rt::ims_set_affinity(h, 4096),
        Error::NoSuchCpu,
    )
    .is_err()
        || expect("wait idle", user_rt::ims_wait(h), Error::WouldBlock).is_err()
    {
        return 41;
    }
    println!("ims: refusals ok, own handle {h}");
    0
}

/// `dsa_submit` to device 0, retried while the shared WQ is full (`Busy`: another process —
/// the suite's interrupt storm — may keep it full for a while; a real client retries too):
/// yields first, then 1 ms sleeps, 20 s at most. Any other error at once.
fn submit_retrying(d: &[u8; 64]) -> Result<(), Error> {
    for i in 0..21_000u32 {
        match user_rt::dsa_submit(d, 0) {
            Ok(_) => return Ok(()),
            Err(Error::Busy) if i < 1000 => user_rt::yield_now(),
            Err(Error::Busy) => {
                let _ = user_rt::sleep_ns(1_000_000);
            }
            Err(e) => {
                println!("ims: submit: {e}");
                return Err(e);
            }
        }
    }
    println!("ims: submit: the shared WQ stayed full for 20 s");
    Err(Error::Busy)
}

fn cost() -> u64 {
    let Ok(buf) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
        return u64::MAX;
    };
    let Ok(h) = user_rt::ims_alloc(0, CURRENT_CPU) else {
        return u64::MAX - 1;
    };
    let mut nop = desc(CRAV_RCR | FLAG_RCI, buf, 0, 0, 0, h as u16);
    nop[7] = 0x00;
    let n = 64;
    let mut total = 0;
    for _ in 0..n {
        let t0 = user_rt::rdtsc();
        if submit_retrying(&nop).is_err() || wait_for(h, 1).is_err() {
            return u64::MAX - 2;
        }
        total += user_rt::rdtsc() - t0;
    }
    total / n
}

fn in_flight(exit: bool) -> u64 {
    let Ok(buf) = user_rt::mmap(0, 9 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + 4 * PAGE, buf + 8 * PAGE);
    for i in 0..4 * PAGE {
        wr(src + i, i as u8);
        wr(dst + i, 0);
    }
    for i in 0..PAGE {
        wr(cr + i, 0);
    }
    for i in 0..4 {
        let h = match user_rt::ims_alloc(0, CURRENT_CPU) {
            Ok(h) => h,
            Err(e) => {
                println!("ims: allocation {i}: {e}");
                return 91;
            }
        };
        let d = desc(
            CRAV_RCR | FLAG_RCI,
            cr + 32 * i,
            src + i * PAGE,
            dst + i * PAGE,
            PAGE as u32,
            h as u16,
        );
        if let Err(e) = user_rt::dsa_submit(&d, 0) {
            println!("ims: submit {i}: {e}");
            return 92;
        }
    }
    println!(
        "ims: 4 handles, 4 memmoves in flight, {}",
        if exit {
            "exiting"
        } else {
            "waiting to be killed"
        }
    );
    if exit {
        return 0;
    }
    loop {
        let _ = user_rt::sleep_ns(SLEEP_MAX_NS);
    }
}

fn holder() -> u64 {
    let at = 0x6100_0000_0000;
    if user_rt::mmap(at, 3 * PAGE, PROT_READ | PROT_WRITE) != Ok(at) {
        return 90;
    }
    for i in 0..3 * PAGE {
        wr(at + i, 0);
    }
    if let Err(e) = user_rt::ims_alloc(0, CURRENT_CPU) {
        println!("ims: holder: {e}");
        return 91;
    }
    loop {
        let _ = user_rt::sleep_ns(SLEEP_MAX_NS);
    }
}

fn storm(cpu: u64) -> u64 {
    let Ok(cr) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let h = match user_rt::ims_alloc(0, cpu) {
        Ok(h) => h,
        Err(e) => {
            println!("ims: storm handle on CPU {cpu}: {e}");
            return 91;
        }
    };
    let n = IMS_INFLIGHT_MAX.min(PAGE / 32);
    loop {
        for i in 0..n {
            let mut nop = desc(CRAV_RCR | FLAG_RCI, cr + 32 * i, 0, 0, 0, h as u16);
            nop[7] = 0x00;
            // Busy (queue full) only slows the storm down.
            let _ = user_rt::dsa_submit(&nop, 0);
        }
        // Reaps whatever completed; WouldBlock once nothing is in flight.
        while user_rt::ims_wait(h).is_ok() {}
    }
}

/// Where `hog` and `migrate` report (kernel/src/ktests/proc.rs reads it).
const DONE_WORD: u64 = 0x6200_0000_0000;

fn migrate(a: u64, b: u64) -> u64 {
    if user_rt::mmap(DONE_WORD, PAGE, PROT_READ | PROT_WRITE) != Ok(DONE_WORD) {
        return 90;
    }
    let r = migrate_rounds(a, b);
    let (code, inflight) = match r {
        Ok(n) => (1, n),
        Err(e) => (e, 0),
    };
    // SAFETY: the page mapped above.
    unsafe {
        core::ptr::write_volatile((DONE_WORD + 8) as *mut u64, inflight);
        core::ptr::write_volatile(DONE_WORD as *mut u64, code);
    }
    loop {
        let _ = user_rt::sleep_ns(SLEEP_MAX_NS);
    }
}

fn migrate_rounds(a: u64, b: u64) -> Result<u64, u64> {
    const PIECE: u64 = 256 << 10;
    const N: u64 = 8;
    let buf = user_rt::mmap(0, 2 * N * PIECE + PAGE, PROT_READ | PROT_WRITE).map_err(|_| 10u64)?;
    let (src, dst, cr) = (buf, buf + N * PIECE, buf + 2 * N * PIECE);
    let h = user_rt::ims_alloc(0, CURRENT_CPU).map_err(|_| 11u64)?;
    let mut inflight = 0;
    for round in 0..7u64 {
        for i in (0..N * PIECE).step_by(8) {
            // SAFETY: inside the mapping above.
            unsafe {
                core::ptr::write_volatile((src + i) as *mut u64, i ^ (round << 56));
                core::ptr::write_volatile((dst + i) as *mut u64, 0);
            }
        }
        for i in 0..N {
            let d = desc(
                CRAV_RCR | FLAG_RCI,
                cr + 32 * i,
                src + i * PIECE,
                dst + i * PIECE,
                PIECE as u32,
                h as u16,
            );
            user_rt::dsa_submit(&d, 0).map_err(|_| 12u64)?;
        }
        let to = if round % 2 == 0 { b } else { a };
        inflight += (0..N).filter(|i| rd(cr + 32 * i) == 0).count() as u64;
        user_rt::sched_set_cpu(to).map_err(|e| {
            println!("ims: sched_set_cpu({to}): {e}");
            13u64
        })?;
        if user_rt::cpu() != to {
            println!("ims: on CPU {} after moving to {to}", user_rt::cpu());
            return Err(14);
        }
        wait_for(h, N).map_err(|e| 20 + e)?;
        if user_rt::ims_wait(h) != Err(Error::WouldBlock) {
            println!("ims: a completion counted twice (round {round})");
            return Err(15);
        }
        for i in 0..N {
            if rd(cr + 32 * i) != 1 {
                return Err(16);
            }
        }
        for i in (0..N * PIECE).step_by(8) {
            // SAFETY: inside the mapping above.
            let (x, y) = unsafe {
                (
                    core::ptr::read_volatile((src + i) as *const u64),
                    core::ptr::read_volatile((dst + i) as *const u64),
                )
            };
            if x != y {
                return Err(17);
            }
        }
    }
    println!(
        "ims: 7 moves between CPUs {a} and {b}, {inflight} of 56 records still open at the moves, each completion counted once"
    );
    Ok(inflight)
}

fn main(arg: u64) -> u64 {
    match arg {
        a if a & 0xff == 9 => migrate((a >> 8) & 0xff, (a >> 16) & 0xff),
        6 => holder(),
        a if a & 0xff == 8 => storm(a >> 8),
        4 => in_flight(true),
        5 => in_flight(false),
        0 => functional(),
        1 => hog(),
        2 => abuse(),
        3 => cost(),
        _ => 99,
    }
}

user_rt::entry!(main);
