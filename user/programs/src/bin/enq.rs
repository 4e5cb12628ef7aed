//! DSA from ring 3 with ENQCMD through a portal page the kernel mapped (`dsa_portal`, kernel
//! policy `sva.direct=on`), and the submit system call for comparison. Case in bits 7:0 of
//! `arg`:
//! * 0: `rounds` (bits 31:8, at least 1) 4 KiB memmoves by ENQCMD on device 0, each with a
//!   pattern of this process's pid, a `yield` after each submission (another process on
//!   the CPU runs between the ENQCMD and the completion, and between the portal mapping
//!   and the first ENQCMD); completion record and bytes checked. The PASID comes from
//!   IA32_PASID, which the kernel switches: with another process's PASID the device would
//!   translate this process's addresses in that process's tables (the same addresses in
//!   both, so its memory, not ours, would change) and the completion never arrive here.
//!   Exits 0, else the failing step.
//! * 1: ENQCMD without a PASID (no `dsa_portal`, no `dsa_submit` ever): IA32_PASID is not
//!   valid, so ENQCMD must #GP and the kernel kill the process. Exit 1 if it survives.
//! * 2: ENQCMDS from ring 3 (#GP at CPL 3): killed. Exit 1 if it survives.
//! * 3: `dsa_portal` must be refused with `Denied` (policy off): exit 0, else 1.
//! * 5: maps the portal of device 0, checks that `munmap` refuses it (`NotMapped`: not
//!   anonymous memory) and that a second `dsa_portal` returns the same address, then sleeps
//!   until killed (the kernel test inspects the mapping). Exits 1–3 on a failed check.
//! * 6: takes a dedicated WQ of device 0 (`dsa_wq_take`) and runs 3 × its size 64-byte
//!   memmoves by MOVDIR64B, never more in flight than the WQ size it was told (one credit
//!   per descriptor, returned when its completion record is seen), each checked. Exits 0,
//!   else the failing step (10 + step).
//! * 4: cost, for the workload runner (`client=process` / `client=direct`): bits 15:8 the
//!   path (0 the submit system call, 1 ENQCMD), bits 47:16 the descriptors, bits 63:48 the
//!   size in KiB; memmoves on device 0, each completed (polled) and checked before the
//!   next. Exits with [`COST_OK`] | the sum of the TSC deltas of the submissions (guest
//!   instructions under icount), or a small failure code.
#![no_std]
#![no_main]

use user_rt::abi::{Error, PAGE, PROT_READ, PROT_WRITE};
use user_rt::dsa::{CRAV_RCR, MEMMOVE, desc, peek as rd, poke as wr};
use user_rt::println;

/// Bit 63 of a cost exit status: the run succeeded (a killed process ends with
/// `STATUS_KILLED`, which lacks it).
const COST_OK: u64 = 1 << 63;

/// The status byte at `cr` once it is set: spins with yields, then 1 ms sleeps, 10 s at
/// most (a completion that went elsewhere). 0 on a timeout.
fn await_status(cr: u64, yields: bool) -> u8 {
    for i in 0..1_000_000u32 {
        let s = rd(cr);
        if s != 0 {
            return s;
        }
        if i < 10_000 {
            if yields {
                user_rt::yield_now();
            } else {
                core::hint::spin_loop();
            }
        } else if i < 20_000 {
            let _ = user_rt::sleep_ns(1_000_000);
        } else {
            return 0;
        }
    }
    0
}

/// ENQCMD with bounded retries (the shared WQ may be full).
fn enqcmd(portal: u64, d: &[u8; 64]) -> bool {
    for _ in 0..10_000 {
        if user_rt::enqcmd(portal, d) {
            return true;
        }
        user_rt::yield_now();
    }
    false
}

fn memmoves(rounds: u64) -> u64 {
    let Ok(buf) = user_rt::mmap(0, 3 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + PAGE, buf + 2 * PAGE);
    let portal = match user_rt::dsa_portal(0) {
        Ok(p) => p,
        Err(e) => {
            println!("enq: dsa_portal: {e}");
            return 91;
        }
    };
    // Let the other process of the test map its portal (and take its PASID) now.
    user_rt::yield_now();
    let seed = user_rt::getpid() as u8;
    for r in 0..rounds {
        for i in 0..PAGE {
            wr(
                src + i,
                (i as u8).wrapping_mul(3).wrapping_add(seed ^ r as u8),
            );
            wr(dst + i, 0);
        }
        for i in 0..32 {
            wr(cr + i, 0);
        }
        let d = desc(MEMMOVE, CRAV_RCR, cr, src, dst, PAGE as u32);
        if !enqcmd(portal, &d) {
            println!("enq: ENQCMD kept being refused");
            return 2;
        }
        match await_status(cr, true) {
            1 => {}
            0 => {
                println!("enq: round {r}: no completion in this process");
                return 3;
            }
            s => {
                println!("enq: round {r}: status {s:#x}");
                return 4;
            }
        }
        for i in 0..PAGE {
            if rd(dst + i) != rd(src + i) {
                println!("enq: round {r}: byte {i} differs");
                return 5;
            }
        }
    }
    println!("enq: {rounds} memmove(s) by ENQCMD on this process's PASID");
    0
}

fn cost(enq: bool, n: u64, size: u64) -> u64 {
    if n == 0 || size == 0 || size > (16 << 20) {
        return 80;
    }
    let Ok(buf) = user_rt::mmap(0, 2 * size + PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + size, buf + 2 * size);
    for i in 0..size {
        wr(src + i, (i as u8).wrapping_mul(7).wrapping_add(1));
    }
    for i in (0..size).step_by(PAGE as usize) {
        wr(dst + i, 0);
    }
    let portal = if enq {
        match user_rt::dsa_portal(0) {
            Ok(p) => p,
            Err(e) => {
                println!("enq: dsa_portal: {e}");
                return 91;
            }
        }
    } else {
        0
    };
    let d = desc(MEMMOVE, CRAV_RCR, cr, src, dst, size as u32);
    let mut total = 0u64;
    for k in 0..n {
        wr(dst + (k % size), 0);
        wr(cr, 0);
        let t0 = user_rt::rdtsc();
        let ok = if enq {
            enqcmd(portal, &d)
        } else {
            let mut r = user_rt::dsa_submit(&d, 0);
            while r == Err(Error::Busy) {
                r = user_rt::dsa_submit(&d, 0);
            }
            if let Err(e) = r {
                println!("enq: dsa_submit: {e}");
            }
            r.is_ok()
        };
        total += user_rt::rdtsc() - t0;
        if !ok {
            return 2;
        }
        match await_status(cr, false) {
            1 => {}
            0 => return 3,
            s => {
                println!("enq: status {s:#x}");
                return 4;
            }
        }
        let j = k % size;
        if rd(dst + j) != rd(src + j) {
            println!("enq: byte {j} differs");
            return 5;
        }
    }
    for i in 0..size {
        if rd(dst + i) != rd(src + i) {
            println!("enq: byte {i} differs at the end");
            return 6;
        }
    }
    COST_OK | total.min(COST_OK - 1)
}

fn dedicated() -> u64 {
    let (portal, size) = match user_rt::dsa_wq_take(0) {
        Ok(x) => x,
        Err(e) => {
            println!("enq: dsa_wq_take: {e}");
            return 10;
        }
    };
    if size == 0 || size > 128 {
        return 11;
    }
    // src: one page; dst: one 64-byte slot per credit; one 32-byte record per credit.
    let Ok(buf) = user_rt::mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, crs) = (buf, buf + PAGE, buf + 2 * PAGE);
    for i in 0..4 * PAGE {
        wr(buf + i, 0);
    }
    let total = 3 * size;
    let mut in_flight = 0u64;
    let mut peak = 0u64;
    // Slot k holds descriptor i with i % size == k; it is reused only after its completion.
    let mut pending = [u64::MAX; 128];
    let finish = |slot: u64, i: u64| -> u64 {
        match await_status(crs + 32 * slot, false) {
            1 => {}
            0 => return 12,
            s => {
                println!("enq: dedicated descriptor {i}: status {s:#x}");
                return 13;
            }
        }
        for b in 0..64 {
            if rd(dst + 64 * slot + b) != (i as u8).wrapping_add(b as u8) {
                println!("enq: dedicated descriptor {i}: byte {b} differs");
                return 14;
            }
        }
        0
    };
    for i in 0..total {
        let slot = i % size;
        if pending[slot as usize] != u64::MAX {
            let r = finish(slot, pending[slot as usize]);
            if r != 0 {
                return r;
            }
            in_flight -= 1;
        }
        // Source bytes for descriptor i in the slot's part of the source page.
        for b in 0..64 {
            wr(src + 64 * slot + b, (i as u8).wrapping_add(b as u8));
            wr(dst + 64 * slot + b, 0);
        }
        for b in 0..32 {
            wr(crs + 32 * slot + b, 0);
        }
        let d = desc(
            MEMMOVE,
            CRAV_RCR,
            crs + 32 * slot,
            src + 64 * slot,
            dst + 64 * slot,
            64,
        );
        user_rt::movdir64b(portal, &d);
        pending[slot as usize] = i;
        in_flight += 1;
        peak = peak.max(in_flight);
        if in_flight > size {
            return 15;
        }
    }
    for slot in 0..size {
        if pending[slot as usize] != u64::MAX {
            let r = finish(slot, pending[slot as usize]);
            if r != 0 {
                return r;
            }
        }
    }
    println!(
        "enq: {total} MOVDIR64B memmoves on a dedicated WQ of {size}, at most {peak} in flight"
    );
    0
}

fn main(arg: u64) -> u64 {
    match arg & 0xff {
        0 => memmoves(((arg >> 8) & 0xff_ffff).max(1)),
        1 => {
            let Ok(page) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
                return 90;
            };
            wr(page, 0);
            let d = [0u8; 64];
            // IA32_PASID is not valid for this process: #GP before anything is stored.
            let _ = user_rt::enqcmd(page, &d);
            println!("enq: ENQCMD without a PASID did not fault");
            1
        }
        2 => {
            let Ok(page) = user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE) else {
                return 90;
            };
            wr(page, 0);
            let d = [0u8; 64];
            // SAFETY: ENQCMDS #GPs at CPL 3 (Intel SDM Vol. 2A ENQCMDS): nothing happens
            // but the fault.
            unsafe {
                core::arch::asm!(
                    "enqcmds {p}, zmmword ptr [{d}]",
                    p = in(reg) page,
                    d = in(reg) d.as_ptr(),
                    options(nostack),
                );
            }
            println!("enq: ENQCMDS from ring 3 did not fault");
            1
        }
        3 => match user_rt::dsa_portal(0) {
            Err(Error::Denied) => 0,
            other => {
                println!("enq: dsa_portal with sva.direct off: {other:?}");
                1
            }
        },
        5 => {
            let Ok(portal) = user_rt::dsa_portal(0) else {
                return 1;
            };
            // SAFETY: refused (the portal is not anonymous memory); nothing is unmapped.
            let r = unsafe { user_rt::munmap(portal, PAGE) };
            if r != Err(Error::NotMapped) {
                println!("enq: munmap of the portal: {r:?}");
                return 2;
            }
            if user_rt::dsa_portal(0) != Ok(portal) {
                return 3;
            }
            println!("enq: portal at {portal:#x}");
            loop {
                let _ = user_rt::sleep_ns(1_000_000);
            }
        }
        6 => dedicated(),
        4 => cost(
            (arg >> 8) & 0xff == 1,
            (arg >> 16) & 0xffff_ffff,
            (arg >> 48) << 10,
        ),
        _ => 99,
    }
}

user_rt::entry!(main);
