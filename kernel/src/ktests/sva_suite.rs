//! The hostile-process suite (`sva.suite` on the command line, `./qemu-run.sh --sva-suite`):
//! ring-3 victim and attacker programs (user/programs) run side by side; each attack prints
//! one `RESULT {"kind":"sva-attack",...}` line with `outcome` `refused` or `succeeded`, and
//! the run ends with one `RESULT {"kind":"sva-suite-summary",...}` line and `kernel-exit`
//! pass (no attack succeeded and every CPU still has exactly one IMS vector) or fail.

use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use crate::proc::{self, Process};

use super::HANG;

fn hang_ns() -> u64 {
    HANG.as_nanos() as u64
}

/// The suite's tally.
struct Suite {
    processes: u64,
    attacks: u64,
    refused: u64,
    succeeded: u64,
    /// Highest number of IMS vectors on any CPU seen after an attack (the summary's `V`).
    vectors_max: usize,
    /// Lowest, likewise (V = 1 means both are 1).
    vectors_min: usize,
    domain: &'static ims::ImsDomain,
}

/// Why an attack counts as succeeded (the attacker got what it should not have, or the
/// victim or the kernel's counts changed).
type Verdict = Result<String, String>;

impl Suite {
    fn spawn(&mut self, name: &str, cpu: Option<usize>, arg: u64) -> Result<Arc<Process>, String> {
        let p =
            proc::spawn(name, cpu, arg).map_err(|e| alloc::format!("spawn {name}({arg}): {e}"))?;
        self.processes += 1;
        Ok(p)
    }

    fn record(&mut self, attack: &str, v: Verdict) {
        self.attacks += 1;
        for r in self.domain.report() {
            self.vectors_max = self.vectors_max.max(r.vectors as usize);
            self.vectors_min = self.vectors_min.min(r.vectors as usize);
        }
        let (outcome, detail) = match v {
            Ok(d) => {
                self.refused += 1;
                ("refused", d)
            }
            Err(d) => {
                self.succeeded += 1;
                ("succeeded", d)
            }
        };
        crate::println!(
            "RESULT {{\"kind\":\"sva-attack\",\"attack\":\"{attack}\",\"outcome\":\"{outcome}\",\"detail\":\"{}\"}}",
            json_escape(&detail)
        );
    }
}

fn json_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn wait(p: &Arc<Process>) -> Result<u64, String> {
    proc::wait(p, hang_ns())
        .map_err(|e| alloc::format!("wait for {} (pid {}): {e}", p.name(), p.pid()))
}

fn kill_and_wait(p: &Arc<Process>) -> Result<u64, String> {
    proc::kill(p);
    wait(p)
}

/// Live handles, free entries, live routes (IRTEs), PASIDs in use.
fn counts(chip: &dsa::DsaIms) -> (u32, u32, usize, usize) {
    (
        chip.chip().live_handles(),
        chip.chip().free_entries(),
        crate::ims::platform().live_routes(),
        crate::iommu::pasids_in_use(),
    )
}

/// Vectors allocated on every CPU (the IMS domain's and everyone else's).
fn vectors_per_cpu() -> Vec<usize> {
    (0..crate::arch::percpu::cpu_count())
        .map(|c| crate::irq::report(c).map_or(usize::MAX, |r| r.allocated))
        .collect()
}

fn cpus() -> usize {
    crate::arch::percpu::cpu_count().min(proc::MAX_CPUS)
}

/// Attack 1: handles allocated in a loop until refused. Refused when the attacker stops at
/// `HandleQuota` holding its quota, no CPU's vector count moved, and the victim still gets a
/// handle and a memmove completed by its interrupt; then everything is back at baseline.
fn handle_exhaustion(s: &mut Suite, chip: &Arc<dsa::DsaIms>) -> Verdict {
    let base = counts(chip);
    let vectors = vectors_per_cpu();
    let quota = crate::ims::quota();
    // What stops it: the PASID's quota, the free entries or the process's id table.
    let expect = quota.min(base.1).min(user_abi::IMS_HANDLES_MAX as u32);
    let cpu = cpus() - 1;
    // user/programs/src/bin/ims.rs case 1: allocates until HandleQuota, then sleeps.
    let hog = s.spawn("ims", Some(cpu), 1)?;
    let v = exhaust(s, chip, &hog, base, &vectors, expect);
    if !hog.ended() {
        // Only on a failure path: the success path killed it already.
        proc::kill(&hog);
        wait(&hog)?;
    }
    v
}

fn exhaust(
    s: &mut Suite,
    chip: &Arc<dsa::DsaIms>,
    hog: &Arc<Process>,
    base: (u32, u32, usize, usize),
    vectors: &[usize],
    expect: u32,
) -> Verdict {
    let quota = crate::ims::quota();
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(
        || hog.ended() || chip.chip().live_handles() == base.0 + expect,
        deadline,
    )
    .map_err(|e| alloc::format!("the attacker never reached its quota: {e}"))?;
    if hog.ended() {
        return Err(alloc::format!(
            "the attacker ended with status {} before holding its quota",
            hog.status()
        ));
    }
    let pasid = hog.pasid().ok_or("the attacker has no PASID")?;
    let held = chip.chip().usage(pasid);
    if held != expect {
        return Err(alloc::format!(
            "the attacker holds {held} handles, quota {expect}"
        ));
    }
    if vectors_per_cpu() != vectors {
        return Err(alloc::format!(
            "vectors per CPU moved: {vectors:?} -> {:?}",
            vectors_per_cpu()
        ));
    }
    // The victim, meanwhile: a handle, memmoves completed by its interrupt (ims.rs case 0).
    let victim = s.spawn("ims", Some(0), 0)?;
    let v = wait(&victim)?;
    if v != 0 || victim.fault().is_some() {
        return Err(alloc::format!(
            "the victim failed (status {v}) while the attacker held {held} handles"
        ));
    }
    let k = kill_and_wait(hog)?;
    if k != user_abi::STATUS_KILLED {
        return Err(alloc::format!(
            "the attacker ended with {k} before the kill"
        ));
    }
    let after = counts(chip);
    if after != base || vectors_per_cpu() != vectors {
        return Err(alloc::format!(
            "not back to baseline after the kill: (handles, free entries, routes, pasids) {base:?} -> {after:?}"
        ));
    }
    Ok(alloc::format!(
        "attacker got {held} handles then HandleQuota (quota {quota}, id table {}); vectors per CPU unchanged {vectors:?}; victim allocated and completed memmoves by interrupt; counts back to baseline",
        user_abi::IMS_HANDLES_MAX
    ))
}

/// Attack 2: ENQCMDS, WRMSR to IA32_PASID and a read of the DSA's MMIO BAR from ring 3.
/// Refused when each attacker is killed by #GP or #PF (the kernel's one-line report), a
/// bystander victim on the same CPU keeps running, and the victim completes DSA work after.
fn privileged_instructions(s: &mut Suite, dev: &crate::dsa::DsaDevice) -> Verdict {
    let bar = dev
        .pci
        .bar(0)
        .map(|b| b.address)
        .ok_or("the DSA has no BAR 0")?;
    let cpu = if cpus() > 1 { 1 } else { 0 };
    let bystander = s.spawn("hello", Some(cpu), u64::MAX)?;
    let mut seen = Vec::new();
    // user/programs/src/bin/faulter.rs: 6 ENQCMDS, 7 WRMSR 0xD93, else a read at `arg`.
    for (what, arg, vector) in [
        ("ENQCMDS", 6u64, 13u8),
        ("WRMSR IA32_PASID", 7, 13),
        ("read of the MMIO BAR", bar, 14),
    ] {
        let p = s.spawn("faulter", Some(cpu), arg)?;
        let st = wait(&p)?;
        if st != user_abi::STATUS_KILLED {
            return Err(alloc::format!(
                "{what}: the attacker exited with {st}, not killed"
            ));
        }
        let f = p
            .fault()
            .ok_or_else(|| alloc::format!("{what}: killed without a fault report"))?;
        if f.vector != vector {
            return Err(alloc::format!(
                "{what}: vector {}, expected {vector}",
                f.vector
            ));
        }
        if bystander.ended() {
            return Err(alloc::format!("{what}: the bystander on CPU {cpu} ended"));
        }
        seen.push(alloc::format!(
            "{what} #{}",
            if vector == 13 { "GP" } else { "PF" }
        ));
    }
    kill_and_wait(&bystander)?;
    let victim = s.spawn("ims", Some(cpu), 0)?;
    let v = wait(&victim)?;
    if v != 0 || victim.fault().is_some() {
        return Err(alloc::format!("the victim failed afterwards (status {v})"));
    }
    Ok(alloc::format!(
        "attackers killed: {} (BAR {bar:#x}); bystander on cpu {cpu} survived; victim completed memmoves by interrupt after",
        seen.join(", ")
    ))
}

/// The victim's page (user/programs/src/bin/sva.rs `VICTIM_PAGE`) and its pattern.
const VICTIM_PAGE: u64 = 0x6000_0000_0000;
fn victim_byte(i: usize) -> u8 {
    (i * 13 + 5) as u8
}

/// FNV-1a over `bytes`.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[repr(C, align(4096))]
struct KernelPage([u8; 4096]);

/// Attack 3: `dsa_submit` memmoves with a kernel address (a page the suite owns) and with
/// the victim's buffer address as destination. Refused when each is refused by the call
/// or ends in a fault status, and both pages keep their checksums.
fn kernel_and_victim_addresses(s: &mut Suite) -> Verdict {
    let mut page = alloc::boxed::Box::new(KernelPage([0; 4096]));
    for (i, b) in page.0.iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    let kernel_sum = checksum(&page.0);
    // The kernel's identity map: this virtual address is also the physical one.
    let kernel_addr = page.0.as_ptr() as u64;
    let cpu = if cpus() > 2 { 2 } else { 0 };
    let victim = s.spawn("sva", Some(cpu), 3)?;
    let victim_page = || -> Option<&'static [u8]> {
        let phys = victim.translate(VICTIM_PAGE)?;
        // SAFETY: a frame of the victim's live space (identity-mapped RAM); only read,
        // while the victim is alive (it is killed only after the last read).
        Some(unsafe { core::slice::from_raw_parts(phys as *const u8, 4096) })
    };
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(
        || victim.ended() || victim_page().is_some_and(|p| p[4095] == victim_byte(4095)),
        deadline,
    )
    .map_err(|e| alloc::format!("the victim never filled its page: {e}"))?;
    if victim.ended() {
        return Err(alloc::format!("the victim ended with {}", victim.status()));
    }
    let victim_sum = victim_page()
        .map(checksum)
        .ok_or("the victim's page is gone")?;
    let attacker = s.spawn("sva", Some(cpus() - 1), kernel_addr)?;
    let st = wait(&attacker)?;
    let kernel_after = checksum(&page.0);
    let victim_after = victim_page().map(checksum);
    let alive = !victim.ended();
    kill_and_wait(&victim)?;
    if st != 0 {
        return Err(alloc::format!(
            "the attacker's memmove to the {} address completed (status {st})",
            if st == 1 { "kernel" } else { "victim" }
        ));
    }
    if kernel_after != kernel_sum {
        return Err(alloc::format!(
            "the kernel page at {kernel_addr:#x} changed"
        ));
    }
    if victim_after != Some(victim_sum) || !alive {
        return Err("the victim's page changed or the victim ended".into());
    }
    Ok(alloc::format!(
        "memmoves to kernel page {kernel_addr:#x} and victim page {VICTIM_PAGE:#x} refused or faulted; checksums unchanged (kernel {kernel_sum:#x}, victim {victim_sum:#x})"
    ))
}

/// Attack 4: exit, and be killed, holding interrupt handles with memmoves in flight.
/// Refused when live handles, free IMS entries, routes (IRTEs) and PASIDs are back to the
/// baseline after each, the vectors per CPU never moved, and a new process then gets a
/// handle and completes memmoves by interrupt.
fn exit_with_handles(s: &mut Suite, chip: &Arc<dsa::DsaIms>) -> Verdict {
    let base = counts(chip);
    let vectors = vectors_per_cpu();
    let cpu = if cpus() > 1 { 1 } else { 0 };
    // user/programs/src/bin/ims.rs case 4: exits with the work in flight.
    let p = s.spawn("ims", Some(cpu), 4)?;
    let st = wait(&p)?;
    if st != 0 {
        return Err(alloc::format!("ims(4) failed to set up (status {st})"));
    }
    let after_exit = counts(chip);
    if after_exit != base {
        return Err(alloc::format!(
            "after exit with work in flight: (handles, free entries, routes, pasids) {base:?} -> {after_exit:?}"
        ));
    }
    // case 5: killed holding the handles, work in flight.
    let p = s.spawn("ims", Some(cpu), 5)?;
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(
        || p.ended() || chip.chip().live_handles() == base.0 + 4,
        deadline,
    )
    .map_err(|e| alloc::format!("ims(5) never held its 4 handles: {e}"))?;
    if p.ended() {
        return Err(alloc::format!(
            "ims(5) ended with {} before the kill",
            p.status()
        ));
    }
    if kill_and_wait(&p)? != user_abi::STATUS_KILLED {
        return Err("ims(5) was not killed".into());
    }
    let after_kill = counts(chip);
    if after_kill != base {
        return Err(alloc::format!(
            "after kill with work in flight: (handles, free entries, routes, pasids) {base:?} -> {after_kill:?}"
        ));
    }
    if vectors_per_cpu() != vectors {
        return Err(alloc::format!(
            "vectors per CPU moved: {vectors:?} -> {:?}",
            vectors_per_cpu()
        ));
    }
    // A new process (likely given the same PASID and entries) works normally.
    let next = s.spawn("ims", Some(cpu), 0)?;
    let v = wait(&next)?;
    if v != 0 || next.fault().is_some() {
        return Err(alloc::format!("the next process failed (status {v})"));
    }
    if counts(chip) != base {
        return Err("counts not at baseline after the next process".into());
    }
    Ok(alloc::format!(
        "exit with 4 handles and 4 memmoves in flight, kill once it held 4 handles (its submits may still be under way): (handles, free entries, routes, pasids) back to {base:?} each time; the next process completed memmoves by interrupt"
    ))
}

/// Attack 5: processes created, each given a PASID on the DSA, in a loop until creation or
/// attachment is refused. Refused when the refusal is a clean limit error (the process
/// table's [`proc::MAX_PROCESSES`] or the IOMMU's PASIDs), every PASID was distinct, and
/// after they are killed processes, PASIDs and IMS counts are back to the baseline.
fn pasid_loop(s: &mut Suite, dev: &crate::dsa::DsaDevice, chip: &Arc<dsa::DsaIms>) -> Verdict {
    let base = counts(chip);
    let procs_before = proc::process_count();
    let mut live: Vec<Arc<Process>> = Vec::new();
    let mut pasids: Vec<u32> = Vec::new();
    let mut limit = None;
    // Bounded: the process table holds MAX_PROCESSES.
    for i in 0..=proc::MAX_PROCESSES + 1 {
        // user/programs/src/bin/sva.rs case 3 sleeps until killed (it maps its page first).
        let p = match proc::spawn("sva", Some(i % cpus()), 3) {
            Ok(p) => p,
            Err(e) => {
                limit = Some(alloc::format!("spawn {}: {e}", i + 1));
                break;
            }
        };
        s.processes += 1;
        live.push(p.clone());
        match proc::sva_attach(&p, dev) {
            Ok(pasid) => pasids.push(pasid),
            Err(e) => {
                limit = Some(alloc::format!("PASID {}: {e}", i + 1));
                break;
            }
        }
    }
    let mut ended_early = 0;
    for p in &live {
        if p.ended() {
            ended_early += 1;
        }
        proc::kill(p);
    }
    for p in &live {
        wait(p)?;
    }
    let limit = limit.ok_or("no limit reached")?;
    let clean = limit.contains("limit reached") || limit.contains("xhausted");
    let mut sorted = pasids.clone();
    sorted.sort_unstable();
    sorted.dedup();
    let after = counts(chip);
    if !clean {
        return Err(alloc::format!(
            "the loop ended with an unexpected error: {limit}"
        ));
    }
    if sorted.len() != pasids.len() {
        return Err("a PASID was handed out twice".into());
    }
    if ended_early != 0 {
        return Err(alloc::format!(
            "{ended_early} sleeping processes ended before the kill"
        ));
    }
    if after != base || proc::process_count() != procs_before {
        return Err(alloc::format!(
            "leak: (handles, free entries, routes, pasids) {base:?} -> {after:?}, processes {procs_before} -> {}",
            proc::process_count()
        ));
    }
    Ok(alloc::format!(
        "{} processes with distinct PASIDs, then '{limit}'; after the kill processes, PASIDs and IMS counts back to baseline",
        pasids.len()
    ))
}

/// Runs the suite and ends the run.
pub fn run() -> ! {
    let Some(dev) = crate::dsa::devices().first() else {
        crate::exit::fail(format_args!("sva.suite: no DSA device"));
    };
    if !dev.has_enqcmds() || !crate::iommu::is_enabled() {
        crate::exit::fail(format_args!("sva.suite: needs a shared WQ and the IOMMU"));
    }
    let chip = crate::ims::device_ims(dev)
        .unwrap_or_else(|e| crate::exit::fail(format_args!("sva.suite: no IMS: {e}")));
    let domain = crate::ims::system()
        .unwrap_or_else(|e| crate::exit::fail(format_args!("sva.suite: no IMS domain: {e}")));
    let mut s = Suite {
        processes: 0,
        attacks: 0,
        refused: 0,
        succeeded: 0,
        vectors_max: 0,
        vectors_min: usize::MAX,
        domain,
    };
    crate::println!("sva-suite: {} CPUs, DSA {}", cpus(), dev.pci.address());
    let v = handle_exhaustion(&mut s, &chip);
    s.record("handle-exhaustion", v);
    let v = privileged_instructions(&mut s, dev);
    s.record("privileged-instructions", v);
    let v = kernel_and_victim_addresses(&mut s);
    s.record("kernel-and-victim-addresses", v);
    let v = exit_with_handles(&mut s, &chip);
    s.record("exit-with-handles", v);
    let v = pasid_loop(&mut s, dev, &chip);
    s.record("pasid-loop", v);
    let v_ok = s.vectors_min == 1 && s.vectors_max == 1;
    let ok = s.succeeded == 0 && v_ok && s.attacks > 0;
    let v = if v_ok {
        1
    } else {
        s.vectors_max.max(if s.vectors_min == usize::MAX {
            0
        } else {
            s.vectors_min
        })
    };
    crate::println!(
        "RESULT {{\"kind\":\"sva-suite-summary\",\"processes\":{},\"attacks\":{},\"refused\":{},\"succeeded\":{},\"ims_vectors_per_cpu\":{v},\"ok\":{ok}}}",
        s.processes,
        s.attacks,
        s.refused,
        s.succeeded
    );
    if ok {
        crate::exit::pass()
    } else {
        crate::exit::fail(format_args!(
            "sva.suite: {} of {} attacks succeeded, IMS vectors per CPU {}..{}",
            s.succeeded, s.attacks, s.vectors_min, s.vectors_max
        ))
    }
}
