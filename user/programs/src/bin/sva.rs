//! DSA from ring 3 through the submit system call, on the process's own PASID (its virtual
//! addresses), chosen by `arg`:
//! * 0: a 4 KiB memmove between its own pages (dword 0 set to the kernel's PASID with the
//!   privilege bit: the kernel must force both to this process's), checked byte for byte;
//!   then every refusal of the call with its error. Exits 0, else the failing step.
//! * 1: munmap invalidates the IOMMU: a memmove into a page (the IOTLB now holds it), munmap
//!   of that page, the same memmove again: it must end in a page fault (status 0x03), never
//!   succeed (exit 3: the device wrote through a stale translation into a freed frame).
//! * 2: cost: exits with the average TSC delta of one submit system call (a No-op
//!   descriptor, each completed before the next).
//! * 3: victim of the hostile-process suite: maps one page at [`VICTIM_PAGE`], fills it with
//!   a pattern (last byte last) and sleeps until killed; the suite checks the page.
//! * 4: the suite's device-level attacker: maps 3 pages at [`ATTACKER_PAGE`] (source with a
//!   pattern, a page of completion records, destination), last byte last, and sleeps until
//!   killed; the suite itself stores descriptors on this process's PASID, as a ring-3
//!   ENQCMD would (no system call validates them), and checks what the IOMMU does.
//! * 5: the suite's unmap-while-writing attacker, 8 rounds: a small memmove into the last
//!   page of a 1 MiB `dst` (the IOTLB now holds that page), 23 memmoves of 1 MiB into a
//!   scratch buffer then one into `dst` (the device is busy for a while; few distinct pages,
//!   so the IOTLB keeps the primed entry), `munmap` of the last page of `dst` at once (one
//!   shootdown and PASID invalidation), a new page filled with 0x5A over the freed frame (the
//!   allocator's first choice), every record awaited (the last memmove may end in a page
//!   fault, nothing else may fail), the new page checked: exit 1 if a byte changed (the
//!   device wrote through a stale translation into a reused frame), else 1000 + the rounds
//!   whose last memmove ended in a page fault (the munmap won the race).
//! * 6: demand faults: a 16 KiB memmove between mappings whose pages 1 and 3 (source and
//!   destination) were never touched, so the device stops at each with a page-fault partial
//!   completion; each time `dsa_resume` maps the page and submits the rest; the result must
//!   be byte-exact (the source's untouched pages read as zeros), and the bytes done before
//!   the first fault are not copied again (their source is flipped before the resume). Then a memmove running off
//!   the end of its mapping: `dsa_resume` must answer `Fault` (the address is not the
//!   process's). Exits 0 (at least 2 resumes), else the failing step.
//! * 7: demand faults of the other operations: a Fill of an 8-byte pattern from an odd
//!   address over pages never touched (the rest after each fault must continue the
//!   pattern in phase: `dsa_resume` rotates it), then a Copy with CRC from a source and
//!   into a destination with untouched pages (the CRC of the pieces, each seeded with the
//!   previous piece's, must equal this program's CRC-32C of the whole source, and the copy
//!   must be byte-exact). Exits 0 (at least 2 resumes each), else the failing step.
//! * any `arg` ≥ 0x1000: attacker of the suite: memmoves of its own page with `arg` (a
//!   kernel address) as destination, then with [`VICTIM_PAGE`] (the victim's address, not
//!   mapped here) as destination. Exits 0 when each is refused by the call or ends in a
//!   fault status, 1 or 2 when one completed.
#![no_std]
#![no_main]

use user_rt::abi::{Error, PAGE, PROT_READ, PROT_WRITE};
use user_rt::dsa::{CRAV_RCR, MEMMOVE, peek as rd, poke as wr};
use user_rt::println;

/// The suite's victim page (another process's address; kernel/src/ktests/sva_suite.rs).
const VICTIM_PAGE: u64 = 0x6000_0000_0000;
/// The device-level attacker's pages (kernel/src/ktests/sva_suite.rs `ATTACKER_PAGE`).
const ATTACKER_PAGE: u64 = 0x6100_0000_0000;

/// [`user_rt::dsa::desc`] with `dword0` written as given (the kernel must overwrite it).
fn desc(op: u8, flags: u32, cr: u64, src: u64, dst: u64, size: u32, dword0: u32) -> [u8; 64] {
    let mut d = user_rt::dsa::desc(op, flags, cr, src, dst, size);
    d[0..4].copy_from_slice(&dword0.to_le_bytes());
    d
}

/// Waits for the status byte at `cr`: yields first, then 1 ms sleeps, 60 s at most (only a
/// lost completion reaches that; the device model may be descheduled for seconds). 0 on a
/// timeout.
fn await_status(cr: u64) -> u8 {
    for i in 0..61_000u32 {
        let s = rd(cr);
        if s != 0 {
            return s;
        }
        if i < 1000 {
            user_rt::yield_now();
        } else {
            let _ = user_rt::sleep_ns(1_000_000);
        }
    }
    0
}

/// Clears the record, submits, waits for the status byte; returns it (0 on a timeout).
fn run(d: &[u8; 64], cr: u64) -> Result<u8, Error> {
    for i in 0..32 {
        wr(cr + i, 0);
    }
    user_rt::dsa_submit(d, 0)?;
    Ok(await_status(cr))
}

fn victim() -> u64 {
    if user_rt::mmap(VICTIM_PAGE, PAGE, PROT_READ | PROT_WRITE) != Ok(VICTIM_PAGE) {
        return 90;
    }
    for i in 0..PAGE {
        wr(VICTIM_PAGE + i, (i * 13 + 5) as u8);
    }
    loop {
        let _ = user_rt::sleep_ns(1_000_000);
    }
}

fn device_attacker() -> u64 {
    if user_rt::mmap(ATTACKER_PAGE, 3 * PAGE, PROT_READ | PROT_WRITE) != Ok(ATTACKER_PAGE) {
        return 90;
    }
    for i in 0..PAGE {
        wr(ATTACKER_PAGE + 2 * PAGE + i, 0);
        wr(ATTACKER_PAGE + PAGE + i, 0);
    }
    for i in 0..PAGE {
        wr(ATTACKER_PAGE + i, (i * 3 + 1) as u8);
    }
    loop {
        let _ = user_rt::sleep_ns(1_000_000);
    }
}

fn wr64(a: u64, v: u64) {
    // SAFETY: as in `rd`.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}

fn rd64(a: u64) -> u64 {
    // SAFETY: as in `rd`.
    unsafe { core::ptr::read_volatile(a as *const u64) }
}

fn unmap_while_writing() -> u64 {
    // Few distinct pages (src, scratch, dst: 768 of them), so that QEMU's IOTLB (emptied
    // whenever it reaches 1024 entries) still holds the primed page when the last piece
    // reaches it; many pieces, so that the device is still busy when the munmap comes.
    const PIECE: u64 = 1 << 20;
    const PIECES: u64 = 24;
    const SIZE: u64 = PIECE;
    const TAIL: u64 = PAGE;
    const FILL: u64 = 0x5a5a_5a5a_5a5a_5a5a;
    let (Ok(src), Ok(scratch), Ok(cr)) = (
        user_rt::mmap(0, PIECE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, PIECE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE),
    ) else {
        return 90;
    };
    for a in (src..src + PIECE).step_by(8) {
        wr64(a, a);
    }
    for a in (scratch..scratch + PIECE).step_by(PAGE as usize) {
        wr(a, 0);
    }
    let mut partial = 0;
    for round in 0..8 {
        let Ok(dst) = user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE) else {
            return 91;
        };
        for a in (dst..dst + SIZE).step_by(PAGE as usize) {
            wr(a, 0);
        }
        for i in 0..(PIECES + 1) * 32 {
            wr(cr + i, 0);
        }
        // The IOTLB now holds the last page's translation: only the invalidation stands
        // between the pieces' writes and the frame freed below.
        let prime = desc(
            MEMMOVE,
            CRAV_RCR,
            cr + 32 * PIECES,
            src,
            dst + SIZE - TAIL,
            64,
            0,
        );
        if user_rt::dsa_submit(&prime, 0).is_err() || await_status(cr + 32 * PIECES) != 1 {
            return 98;
        }
        for i in 0..PIECES {
            let d = desc(
                MEMMOVE,
                CRAV_RCR,
                cr + 32 * i,
                src,
                if i + 1 < PIECES { scratch } else { dst },
                PIECE as u32,
                0,
            );
            loop {
                match user_rt::dsa_submit(&d, 0) {
                    Ok(_) => break,
                    Err(Error::Busy) => user_rt::yield_now(),
                    Err(_) => return 92,
                }
            }
        }
        // SAFETY: nothing here uses the tail any more (the device is writing `dst`).
        if unsafe { user_rt::munmap(dst + SIZE - TAIL, TAIL) }.is_err() {
            return 93;
        }
        let Ok(reuse) = user_rt::mmap(0, TAIL, PROT_READ | PROT_WRITE) else {
            return 94;
        };
        for a in (reuse..reuse + TAIL).step_by(8) {
            wr64(a, FILL);
        }
        let mut last = 0;
        for i in 0..PIECES {
            last = await_status(cr + 32 * i);
            if last & 0x3f != 0x01 && (i + 1 < PIECES || last & 0x3f != 0x03) {
                println!("sva: round {round}: piece {i} status {last:#x}");
                return 95;
            }
        }
        if last & 0x3f == 0x03 {
            partial += 1;
        }
        for a in (reuse..reuse + TAIL).step_by(8) {
            if rd64(a) != FILL {
                println!("sva: round {round}: a reused page changed at {a:#x} (status {last:#x})");
                return 1;
            }
        }
        // SAFETY: only this loop used it (the device is done: every record is written).
        if unsafe { user_rt::munmap(reuse, TAIL) }.is_err() {
            return 96;
        }
        // SAFETY: as above.
        if unsafe { user_rt::munmap(dst, SIZE - TAIL) }.is_err() {
            return 97;
        }
    }
    println!(
        "sva: 8 rounds whose last page was unmapped in flight, {partial} ended in a page fault"
    );
    1000 + partial
}

fn demand_faults() -> u64 {
    const SIZE: u64 = 4 * PAGE;
    let (Ok(src), Ok(dst), Ok(cr)) = (
        user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE),
    ) else {
        return 90;
    };
    // Pages 0 and 2 touched, 1 and 3 left for the device to fault on.
    for page in [0, 2] {
        for i in 0..PAGE {
            wr(src + page * PAGE + i, (i * 7 + page + 1) as u8);
            wr(dst + page * PAGE + i, 0xee);
        }
    }
    wr(cr, 0);
    let mut d = desc(MEMMOVE, CRAV_RCR, cr, src, dst, SIZE as u32, 0);
    if user_rt::dsa_submit(&d, 0).is_err() {
        return 91;
    }
    let mut resumes = 0;
    let mut done0 = 0;
    loop {
        let st = await_status(cr);
        match st & 0x3f {
            0x01 => break,
            0x03 if resumes < 16 => {
                if resumes == 0 {
                    // The bytes already done are not copied again: flip their source now,
                    // the destination must keep the old values.
                    done0 = u64::from(u32::from_le_bytes([
                        rd(cr + 4),
                        rd(cr + 5),
                        rd(cr + 6),
                        rd(cr + 7),
                    ]));
                    for i in 0..done0.min(SIZE) {
                        wr(src + i, rd(src + i) ^ 0xff);
                    }
                }
                if let Err(e) = user_rt::dsa_resume(&mut d, 0) {
                    println!("sva: dsa_resume after status {st:#x}: {e}");
                    return 92;
                }
                resumes += 1;
            }
            _ => {
                println!("sva: demand memmove status {st:#x} after {resumes} resumes");
                return 93;
            }
        }
    }
    if done0 == 0 {
        println!("sva: the first fault came before any byte was copied");
        return 99;
    }
    for i in 0..SIZE {
        let want = if (i / PAGE).is_multiple_of(2) {
            rd(src + i)
        } else {
            0
        };
        let want = if i < done0 { want ^ 0xff } else { want };
        if rd(dst + i) != want {
            println!(
                "sva: byte {i} differs after {resumes} resumes: {:#x}, want {want:#x}",
                rd(dst + i)
            );
            return 94;
        }
    }
    if resumes < 2 {
        println!("sva: only {resumes} page faults for two untouched pages on each side");
        return 95;
    }
    // Off the end of the mapping: page `SIZE` after `dst` belongs to no area.
    wr(cr, 0);
    let mut off = desc(
        MEMMOVE,
        CRAV_RCR,
        cr,
        src,
        dst + SIZE - PAGE,
        2 * PAGE as u32,
        0,
    );
    if user_rt::dsa_submit(&off, 0).is_err() {
        return 96;
    }
    let st = await_status(cr);
    if st & 0x3f != 0x03 {
        println!("sva: memmove off the mapping: status {st:#x}");
        return 97;
    }
    match user_rt::dsa_resume(&mut off, 0) {
        Err(Error::Fault) => {}
        other => {
            println!("sva: dsa_resume off the mapping: {other:?}");
            return 98;
        }
    }
    println!(
        "sva: demand faults: {resumes} resumes (first after {done0:#x} bytes, not copied again), byte-exact; off the mapping: Fault"
    );
    0
}

/// Waits for the record at `cr` of the submitted `d`, resuming it with `dsa_resume` after
/// each page-fault partial completion. Returns the number of resumes once it succeeded,
/// None on any other status (or after 16 faults), with a line saying why.
fn resumed_to_the_end(d: &mut [u8; 64], cr: u64, what: &str) -> Option<u32> {
    let mut resumes = 0;
    loop {
        let st = await_status(cr);
        match st & 0x3f {
            0x01 => return Some(resumes),
            0x03 if resumes < 16 => {
                if let Err(e) = user_rt::dsa_resume(d, 0) {
                    println!("sva: {what}: dsa_resume after status {st:#x}: {e}");
                    return None;
                }
                resumes += 1;
            }
            _ => {
                println!("sva: {what}: status {st:#x} after {resumes} resumes");
                return None;
            }
        }
    }
}

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) of `len` bytes at `a` seeded with
/// `seed`, as DSA computes it without the CRC flags (DSA spec §8.3.12: seed and result
/// inverted).
fn crc32c(seed: u32, a: u64, len: u64) -> u32 {
    let mut r = !seed;
    for i in 0..len {
        r ^= u32::from(rd(a + i));
        for _ in 0..8 {
            r = (r >> 1) ^ if r & 1 != 0 { 0x82f6_3b78 } else { 0 };
        }
    }
    !r
}

fn demand_faults_other_operations() -> u64 {
    const SIZE: u64 = 4 * PAGE;
    const FILL: u8 = 0x04;
    const COPY_CRC: u8 = 0x11;
    let (Ok(fill), Ok(src), Ok(dst), Ok(cr)) = (
        user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, SIZE, PROT_READ | PROT_WRITE),
        user_rt::mmap(0, PAGE, PROT_READ | PROT_WRITE),
    ) else {
        return 80;
    };
    // Fill: pages 0 and 2 touched, 1 and 3 left for the device. From byte 3, so the first
    // fault (at page 1) leaves Bytes Completed = 4093, not a multiple of the pattern.
    for page in [0, 2] {
        for i in 0..PAGE {
            wr(fill + page * PAGE + i, 0xee);
        }
    }
    let pattern = 0x0123_4567_89ab_cdefu64;
    let (start, len) = (fill + 3, SIZE - 3 - 5);
    for i in 0..32 {
        wr(cr + i, 0);
    }
    let mut d = user_rt::dsa::desc(FILL, CRAV_RCR, cr, pattern, start, len as u32);
    if user_rt::dsa_submit(&d, 0).is_err() {
        return 81;
    }
    let Some(fills) = resumed_to_the_end(&mut d, cr, "demand fill") else {
        return 82;
    };
    for k in 0..len {
        let want = pattern.to_le_bytes()[(k % 8) as usize];
        if rd(start + k) != want {
            println!(
                "sva: fill byte {k} is {:#x}, want {want:#x} after {fills} resumes",
                rd(start + k)
            );
            return 83;
        }
    }
    if rd(fill + 2) != 0xee || rd(start + len) != 0 {
        println!("sva: the fill wrote outside its range");
        return 84;
    }
    // Copy with CRC: source pages 0 and 2 hold data (1 and 3 untouched, zeros), the
    // destination's page 2 is untouched.
    for page in [0, 2] {
        for i in 0..PAGE {
            wr(src + page * PAGE + i, (i * 11 + page + 3) as u8);
        }
    }
    for page in [0, 1, 3] {
        for i in 0..PAGE {
            wr(dst + page * PAGE + i, 0xee);
        }
    }
    let (from, to, len) = (src + 0x11, dst + 0x20, SIZE - 0x40);
    let seed = 0x1234_5678u32;
    for i in 0..32 {
        wr(cr + i, 0);
    }
    let mut d = user_rt::dsa::desc(COPY_CRC, CRAV_RCR, cr, from, to, len as u32);
    d[40..44].copy_from_slice(&seed.to_le_bytes());
    if user_rt::dsa_submit(&d, 0).is_err() {
        return 85;
    }
    let Some(copies) = resumed_to_the_end(&mut d, cr, "demand copy with crc") else {
        return 86;
    };
    for i in 0..len {
        if rd(to + i) != rd(from + i) {
            println!("sva: copy with crc: byte {i} differs after {copies} resumes");
            return 87;
        }
    }
    let got = u32::from_le_bytes([rd(cr + 16), rd(cr + 17), rd(cr + 18), rd(cr + 19)]);
    let want = crc32c(seed, from, len);
    if got != want {
        println!("sva: copy with crc: crc {got:#010x}, want {want:#010x} after {copies} resumes");
        return 88;
    }
    if fills < 2 || copies < 2 {
        println!("sva: only {fills} / {copies} page faults for two untouched pages");
        return 89;
    }
    println!(
        "sva: demand faults: fill resumed {fills} times in phase, copy with crc {copies} times, crc {got:#010x} = the CPU's, byte-exact"
    );
    0
}

fn main(arg: u64) -> u64 {
    if arg == 7 {
        return demand_faults_other_operations();
    }
    if arg == 6 {
        return demand_faults();
    }
    if arg == 5 {
        return unmap_while_writing();
    }
    if arg == 3 {
        return victim();
    }
    if arg == 4 {
        return device_attacker();
    }
    let Ok(buf) = user_rt::mmap(0, 4 * PAGE, PROT_READ | PROT_WRITE) else {
        return 90;
    };
    let (src, dst, cr) = (buf, buf + PAGE, buf + 2 * PAGE);
    // Touch every page (lazy mappings): the device does not fault pages in.
    for i in 0..PAGE {
        wr(src + i, (i * 7 + 1) as u8);
        wr(dst + i, 0);
    }
    wr(cr, 0);
    let forged = 0x8000_0001u32 | (0x7ff << 20);
    let mv = desc(MEMMOVE, CRAV_RCR, cr, src, dst, PAGE as u32, forged);
    match arg {
        0 => {
            match run(&mv, cr) {
                Ok(1) => {}
                other => {
                    println!("sva: memmove status {other:?}");
                    return 1;
                }
            }
            for i in 0..PAGE {
                if rd(dst + i) != rd(src + i) {
                    println!("sva: byte {i} differs");
                    return 2;
                }
            }
            let refusals: [(&str, [u8; 64], u64, Error); 10] = [
                (
                    "batch",
                    desc(0x01, CRAV_RCR, cr, src, 0, 2, 0),
                    0,
                    Error::NoBatch,
                ),
                (
                    "cache flush",
                    desc(0x20, CRAV_RCR, cr, src, 0, 64, 0),
                    0,
                    Error::BadOpcode,
                ),
                (
                    "no RCR",
                    desc(MEMMOVE, 1 << 2, cr, src, dst, 64, 0),
                    0,
                    Error::BadFlags,
                ),
                (
                    "interrupt naming no handle of its own",
                    desc(MEMMOVE, CRAV_RCR | (1 << 4), cr, src, dst, 64, 0),
                    0,
                    Error::BadHandle,
                ),
                (
                    "misaligned record",
                    desc(MEMMOVE, CRAV_RCR, cr + 8, src, dst, 64, 0),
                    0,
                    Error::BadCompletion,
                ),
                (
                    "size 0",
                    desc(MEMMOVE, CRAV_RCR, cr, src, dst, 0, 0),
                    0,
                    Error::TooLarge,
                ),
                (
                    "huge size",
                    desc(MEMMOVE, CRAV_RCR, cr, src, dst, u32::MAX, 0),
                    0,
                    Error::TooLarge,
                ),
                (
                    // Within the device's GENCAP maximum but above the shared WQ's
                    // Maximum Transfer Size (2 MiB by default): refused by the call, not
                    // left to fail in the device.
                    "above the shared WQ's transfer limit",
                    desc(MEMMOVE, CRAV_RCR, cr, src, dst, 4 << 20, 0),
                    0,
                    Error::TooLarge,
                ),
                (
                    "kernel source",
                    desc(MEMMOVE, CRAV_RCR, cr, 0x20_0000, dst, 64, 0),
                    0,
                    Error::BadAddress,
                ),
                ("no device", mv, 99, Error::NoDevice),
            ];
            for (i, (what, d, dev, want)) in refusals.iter().enumerate() {
                let got = user_rt::dsa_submit(d, *dev);
                if got != Err(*want) {
                    println!("sva: {what}: got {got:?}, want {want:?}");
                    return 10 + i as u64;
                }
            }
            // A descriptor pointer into the kernel.
            // SAFETY: the kernel refuses it before reading anything.
            let got = user_abi_raw_submit(0x20_0000);
            if got != Err(Error::BadAddress) {
                return 30;
            }
            println!(
                "sva: memmove on pasid-forced descriptor ok, {} refusals",
                refusals.len() + 1
            );
            0
        }
        1 => {
            if run(&mv, cr) != Ok(1) {
                return 1;
            }
            // SAFETY: nothing uses the page any more (but the device's IOTLB may).
            if unsafe { user_rt::munmap(dst, PAGE) }.is_err() {
                return 4;
            }
            match run(&mv, cr) {
                Ok(1) => {
                    println!("sva: the device wrote to an unmapped page (stale IOTLB)");
                    3
                }
                Ok(s) if s & 0x3f == 0x03 => {
                    println!("sva: memmove to the unmapped page: page fault (status {s:#x})");
                    0
                }
                other => {
                    println!("sva: memmove to the unmapped page: {other:?}");
                    5
                }
            }
        }
        2 => {
            let nop = desc(0x00, CRAV_RCR, cr, 0, 0, 0, 0);
            let n = 64;
            let mut total = 0;
            for _ in 0..n {
                wr(cr, 0);
                let t0 = user_rt::rdtsc();
                if user_rt::dsa_submit(&nop, 0).is_err() {
                    return 1;
                }
                total += user_rt::rdtsc() - t0;
                if await_status(cr) == 0 {
                    return 2;
                }
            }
            total / n
        }
        kernel if kernel >= 0x1000 => {
            let mut failed = 0;
            for (i, (what, target)) in [("kernel", kernel), ("victim", VICTIM_PAGE)]
                .into_iter()
                .enumerate()
            {
                let d = desc(MEMMOVE, CRAV_RCR, cr, src, target, 64, 0);
                match run(&d, cr) {
                    Ok(1) => {
                        println!("sva: memmove to the {what} address {target:#x} completed");
                        failed = i as u64 + 1;
                    }
                    Ok(s) => println!("sva: memmove to the {what} address: status {s:#x}"),
                    Err(e) => println!("sva: memmove to the {what} address refused: {e}"),
                }
            }
            failed
        }
        _ => 99,
    }
}

fn user_abi_raw_submit(ptr: u64) -> Result<u64, Error> {
    // SAFETY: the kernel checks the pointer before it reads.
    user_rt::abi::decode(unsafe {
        user_rt::syscall6(user_rt::abi::Sys::DsaSubmit as u64, [ptr, 0, 0, 0, 0, 0])
    })
}

user_rt::entry!(main);
