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
        self.record_with(attack, v, "");
    }

    /// [`Suite::record`] with `extra` JSON fields (`,"name":value...`) after the detail.
    fn record_with(&mut self, attack: &str, v: Verdict, extra: &str) {
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
            "RESULT {{\"kind\":\"sva-attack\",\"attack\":\"{attack}\",\"outcome\":\"{outcome}\",\"detail\":\"{}\"{extra}}}",
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

/// The victim's page (`VICTIM_PAGE`, filled by sva.rs case 3), read through its frame.
fn victim_page(victim: &Process) -> Option<&'static [u8]> {
    let phys = victim.translate(VICTIM_PAGE)?;
    // SAFETY: a frame of the victim's live space (identity-mapped RAM); only read, while the
    // victim is alive (the attacks kill it only after their last read).
    Some(unsafe { core::slice::from_raw_parts(phys as *const u8, 4096) })
}

/// Spawns the victim (sva.rs case 3) on `cpu` and waits until it has filled its page (or
/// ended: the caller checks).
fn spawn_filled_victim(s: &mut Suite, cpu: usize) -> Result<Arc<Process>, String> {
    let victim = s.spawn("sva", Some(cpu), 3)?;
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(
        || victim.ended() || victim_page(&victim).is_some_and(|p| p[4095] == victim_byte(4095)),
        deadline,
    )
    .map_err(|e| alloc::format!("the victim never filled its page: {e}"))?;
    Ok(victim)
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

/// The device-level attacker's pages (user/programs/src/bin/sva.rs `ATTACKER_PAGE`): a
/// source with [`attacker_byte`], a page of completion records, a destination.
const ATTACKER_PAGE: u64 = 0x6100_0000_0000;
const PAGE: u64 = 4096;
fn attacker_byte(i: usize) -> u8 {
    (i * 3 + 1) as u8
}

/// Byte `i` of the user page at `va` of `p` (identity-mapped RAM), None if not mapped.
fn user_byte(p: &Process, va: u64) -> Option<u8> {
    let pa = p.translate(va)?;
    // SAFETY: a byte of a frame of `p`'s live space (identity-mapped RAM), read once.
    Some(unsafe { core::ptr::read_volatile(pa as *const u8) })
}

/// A process whose PASID the suite uses to store descriptors as a ring-3 ENQCMD would:
/// `sva(4)`, its pages filled, its PASID attached to `dev`.
fn device_attacker(
    s: &mut Suite,
    dev: &crate::dsa::DsaDevice,
    cpu: usize,
) -> Result<(Arc<Process>, u32), String> {
    let p = s.spawn("sva", Some(cpu), 4)?;
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    let last = ATTACKER_PAGE + PAGE - 1;
    proc::run_until(
        || p.ended() || user_byte(&p, last) == Some(attacker_byte(PAGE as usize - 1)),
        deadline,
    )
    .map_err(|e| alloc::format!("the device-level attacker never filled its pages: {e}"))?;
    if p.ended() {
        return Err(alloc::format!(
            "the device-level attacker ended with {}",
            p.status()
        ));
    }
    let pasid = proc::sva_attach(&p, dev).map_err(|e| alloc::format!("attacker PASID: {e}"))?;
    Ok((p, pasid))
}

/// Stores `d` on `pasid` through the shared WQ exactly as the process's own ENQCMD would
/// (PASID = its, user privilege; no system call validates it: the device and the IOMMU are
/// all that stand in the way), with its completion record in `p`'s record page, and waits
/// for the record. Returns the status byte and the record's fault address (bytes 8–15).
fn device_submit(
    dev: &crate::dsa::DsaDevice,
    p: &Process,
    pasid: u32,
    mut d: dsa_spec::Descriptor,
) -> Result<(u8, u64), String> {
    use dsa_spec::DescFlags;
    let cr = ATTACKER_PAGE + PAGE;
    let cr_pa = p
        .translate(cr)
        .ok_or("the attacker's record page is gone")?;
    let rec = cr_pa as *mut u8;
    for i in 0..32 {
        // SAFETY: the record bytes in a frame of `p`'s live space (identity-mapped RAM).
        unsafe { core::ptr::write_volatile(rec.add(i), 0) };
    }
    d.pasid = pasid;
    d.reserved_pasid_bits = 0;
    d.privileged = false;
    d.flags |= DescFlags::CRAV | DescFlags::RCR;
    d.completion_addr = cr;
    dev.submit_user(&d.to_bytes())
        .map_err(|e| alloc::format!("the portal refused the descriptor: {e:?}"))?;
    // SAFETY: as above; the device writes the record, the kernel only reads it.
    let status = || unsafe { core::ptr::read_volatile(rec) };
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(|| status() != 0, deadline)
        .map_err(|e| alloc::format!("no completion record: {e}"))?;
    let mut fault = [0u8; 8];
    for (i, b) in fault.iter_mut().enumerate() {
        // SAFETY: as above.
        *b = unsafe { core::ptr::read_volatile(rec.add(8 + i)) };
    }
    Ok((status(), u64::from_le_bytes(fault)))
}

fn memmove(src: u64, dst: u64, size: u32) -> dsa_spec::Descriptor {
    dsa_spec::Descriptor {
        opcode: dsa_spec::Opcode::MemMove as u8,
        addr1: src,
        addr2: dst,
        size,
        ..Default::default()
    }
}

/// The device-level half of attack 3: memmoves of the attacker's page to `targets` stored on
/// its PASID without validation. Each must end in a page fault (status 0x03) with a fault
/// record of the IOMMU for that PASID and the target's page; the detail names them.
fn device_level_addresses(
    s: &mut Suite,
    dev: &crate::dsa::DsaDevice,
    targets: &[(&str, u64)],
) -> Verdict {
    let cpu = if cpus() > 1 { 1 } else { 0 };
    let (attacker, pasid) = device_attacker(s, dev, cpu)?;
    let v = device_level_faults(dev, &attacker, pasid, targets);
    kill_and_wait(&attacker)?;
    v
}

fn device_level_faults(
    dev: &crate::dsa::DsaDevice,
    attacker: &Process,
    pasid: u32,
    targets: &[(&str, u64)],
) -> Verdict {
    let bdf = dev.pci.address();
    let mut seen = Vec::new();
    for &(what, target) in targets {
        let watch = crate::iommu::watch_faults();
        let before = crate::iommu::fault_count_pasid(bdf, pasid);
        let (st, addr) = device_submit(dev, attacker, pasid, memmove(ATTACKER_PAGE, target, 64))?;
        if st & 0x3f != 0x03 {
            return Err(alloc::format!(
                "device level: memmove to the {what} address {target:#x} on PASID {pasid} ended with status {st:#x}, not a page fault"
            ));
        }
        let deadline = crate::time::now_ns().saturating_add(hang_ns());
        proc::run_until(
            || crate::iommu::fault_count_pasid(bdf, pasid) > before,
            deadline,
        )
        .map_err(|e| {
            alloc::format!(
                "device level: status {st:#x} for the {what} address but the IOMMU recorded no fault for PASID {pasid}: {e}"
            )
        })?;
        let rec = watch
            .seen()
            .into_iter()
            .rev()
            .find(|f| f.pasid == Some(pasid) && f.address == target & !(PAGE - 1));
        let reason = rec.map_or_else(
            || String::from("record not kept"),
            |f| {
                alloc::format!(
                    "{} {:#x}: {}",
                    if f.write { "write" } else { "read" },
                    f.code,
                    f.reason.name()
                )
            },
        );
        seen.push(alloc::format!(
            "{what} {target:#x}: status {st:#x}, record fault address {addr:#x}, IOMMU fault on PASID {pasid} ({reason})"
        ));
    }
    Ok(seen.join("; "))
}

#[repr(C, align(4096))]
struct KernelPage([u8; 4096]);

/// Attack 3: memmoves with a kernel address (a page the suite owns) and with the victim's
/// buffer address as destination, twice: through `dsa_submit` (the call refuses the kernel
/// address, BadAddress; the victim's address passes its checks and the IOMMU faults it),
/// and at the device level — stored on the attacker's PASID without any validation, as a
/// ring-3 ENQCMD would — where the IOMMU must be what refuses both: the attacker's first
/// stage (its PML4) maps kernel memory supervisor-only and never the victim's pages. Refused
/// when nothing completes, each device-level memmove ends in a page fault (0x03) with an
/// IOMMU fault record for the attacker's PASID and the target page, and both pages keep their
/// checksums.
fn kernel_and_victim_addresses(s: &mut Suite, dev: &crate::dsa::DsaDevice) -> Verdict {
    let mut page = alloc::boxed::Box::new(KernelPage([0; 4096]));
    for (i, b) in page.0.iter_mut().enumerate() {
        *b = (i * 31 + 7) as u8;
    }
    let kernel_sum = checksum(&page.0);
    // The kernel's identity map: this virtual address is also the physical one.
    let kernel_addr = page.0.as_ptr() as u64;
    let cpu = if cpus() > 2 { 2 } else { 0 };
    let victim = spawn_filled_victim(s, cpu)?;
    let victim_page = || victim_page(&victim);
    if victim.ended() {
        return Err(alloc::format!("the victim ended with {}", victim.status()));
    }
    let victim_sum = victim_page()
        .map(checksum)
        .ok_or("the victim's page is gone")?;
    let attacker = s.spawn("sva", Some(cpus() - 1), kernel_addr)?;
    let st = wait(&attacker)?;
    let device =
        device_level_addresses(s, dev, &[("kernel", kernel_addr), ("victim", VICTIM_PAGE)]);
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
    let device = device?;
    Ok(alloc::format!(
        "system call: memmoves to kernel page {kernel_addr:#x} and victim page {VICTIM_PAGE:#x} refused or faulted; device level (no validation): {device}; checksums unchanged (kernel {kernel_sum:#x}, victim {victim_sum:#x})"
    ))
}

/// Attack: the victim's interrupt handle named in a descriptor. Through `dsa_submit` a
/// process can only name its own ids (user/programs ims(2) checks the refusals); at the
/// device level the suite stores, on the attacker's PASID, a memmove with RCI whose raw
/// interrupt handle field is the victim's device handle. The IMS entry is bound to the
/// victim's PASID (PASID enable set, drivers/dsa `ImsStorage::program`), so the device must
/// refuse the handle: status 0x19, no interrupt (DSA spec §5.4: the interrupt handle's
/// PASID must match the descriptor's). Refused when the status is 0x19, after a Drain PASID
/// of the attacker (every descriptor of it done, its interrupts sent) the demultiplexer of
/// the victim's CPU took no interrupt, the victim's handle delivered and counted nothing, and
/// the victim is alive.
fn victim_interrupt_handle(s: &mut Suite, dev: &crate::dsa::DsaDevice) -> Verdict {
    let vcpu = cpus() - 1;
    // user/programs/src/bin/ims.rs case 6: one handle on its CPU, sleeps.
    let victim = s.spawn("ims", Some(vcpu), 6)?;
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(
        || victim.ended() || !victim.ims_handles().is_empty(),
        deadline,
    )
    .map_err(|e| alloc::format!("the victim never got its handle: {e}"))?;
    let v = name_victim_handle(s, dev, &victim, vcpu);
    kill_and_wait(&victim)?;
    v
}

fn name_victim_handle(
    s: &mut Suite,
    dev: &crate::dsa::DsaDevice,
    victim: &Arc<Process>,
    vcpu: usize,
) -> Verdict {
    let vh = *victim
        .ims_handles()
        .first()
        .ok_or_else(|| alloc::format!("the victim ended with {}", victim.status()))?;
    let acpu = if cpus() > 1 { 0 } else { vcpu };
    let (attacker, pasid) = device_attacker(s, dev, acpu)?;
    let domain = s.domain;
    let irqs = |c| domain.stats(c).map_or(u64::MAX, |st| st.interrupts);
    let before = irqs(vcpu);
    let mut d = memmove(ATTACKER_PAGE, ATTACKER_PAGE + 2 * PAGE, 64);
    d.flags = dsa_spec::DescFlags::RCI;
    d.int_handle = vh.device_handle;
    let r = device_submit(dev, &attacker, pasid, d);
    // Every descriptor of the attacker's PASID done (and its interrupt, if any, sent).
    let drained = dev.driver().drain_pasid(pasid);
    let after = irqs(vcpu);
    let vh_after = victim.ims_handles().first().copied();
    kill_and_wait(&attacker)?;
    let (st, _) = r?;
    drained.map_err(|e| alloc::format!("Drain PASID {pasid}: {e}"))?;
    if st & 0x3f != 0x19 {
        return Err(alloc::format!(
            "the descriptor naming the victim's device handle {:#x} on PASID {pasid} ended with status {st:#x}, not 0x19",
            vh.device_handle
        ));
    }
    if after != before {
        return Err(alloc::format!(
            "the victim's CPU {vcpu} took {} IMS interrupts",
            after.wrapping_sub(before)
        ));
    }
    let Some(vh_after) = vh_after.filter(|h| h.delivered == vh.delivered && h.counted == 0) else {
        return Err(alloc::format!(
            "the victim's handle moved: {vh:?} -> {vh_after:?}"
        ));
    };
    if victim.ended() {
        return Err("the victim ended".into());
    }
    Ok(alloc::format!(
        "memmove with RCI and the victim's device handle {:#x} (id {}, CPU {vcpu}) stored on the attacker's PASID {pasid}: status {st:#x}; victim's CPU IMS interrupts {before} -> {after}, its handle delivered {} counted {}",
        vh.device_handle,
        vh.id,
        vh_after.delivered,
        vh_after.counted
    ))
}

/// What the interrupt-storm attack measured (the extra fields of its RESULT line).
#[derive(Default)]
struct Storm {
    /// The victim's average latency of a No-op with a completion interrupt, submit to the
    /// return of the `ims_wait` that counted it, in TSC ticks (ims.rs case 3), alone.
    quiet: Option<u64>,
    /// The same during the storm.
    storm: Option<u64>,
    /// IMS interrupts the victim's CPU took during the victim's run under the storm.
    interrupts: u64,
    /// Completions the storm's handle delivered during that run.
    storm_completions: u64,
}

impl Storm {
    fn fields(&self) -> String {
        let f = |v: Option<u64>| v.map_or_else(|| String::from("null"), |x| alloc::format!("{x}"));
        alloc::format!(
            ",\"victim_latency_tsc_quiet\":{},\"victim_latency_tsc_storm\":{},\"storm_interrupts_on_victim_cpu\":{},\"storm_completions\":{}",
            f(self.quiet),
            f(self.storm),
            self.interrupts,
            self.storm_completions
        )
    }
}

/// The victim's ims(3) run on `cpu`: its average latency (an exit status that is not a
/// failure code).
fn victim_latency(s: &mut Suite, cpu: usize) -> Result<u64, String> {
    let v = s.spawn("ims", Some(cpu), 3)?;
    let st = wait(&v)?;
    if st >= u64::MAX - 16 || v.fault().is_some() || st == user_abi::STATUS_KILLED {
        return Err(alloc::format!(
            "the victim's operations did not all complete (status {st:#x})"
        ));
    }
    Ok(st)
}

/// Attack: an interrupt storm on the victim's CPU. The attacker (another CPU) holds a handle
/// whose interrupts go to the victim's CPU and submits No-ops with a completion interrupt as
/// fast as it can (ims.rs case 8); the victim (ims.rs case 3) runs 64 operations with its
/// own interrupt, waiting for each, once alone and once under the storm. Refused when the
/// victim's operations all complete both times while the storm delivered completions (and
/// interrupts hit the victim's CPU) during its run, and the counts are back at the baseline
/// after the kill. The latencies are reported, not judged (no assertion on speed).
fn interrupt_storm(s: &mut Suite, chip: &Arc<dsa::DsaIms>, m: &mut Storm) -> Verdict {
    let base = counts(chip);
    let vcpu = cpus() - 1;
    let acpu = if cpus() > 2 { 1 } else { 0 };
    m.quiet = Some(victim_latency(s, vcpu)?);
    let storm = s.spawn("ims", Some(acpu), 8 | (vcpu as u64) << 8)?;
    let delivered = || storm.ims_handles().first().map_or(0, |h| h.delivered);
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(|| storm.ended() || delivered() > 0, deadline)
        .map_err(|e| alloc::format!("the storm never delivered: {e}"))?;
    let domain = s.domain;
    let irqs = || domain.stats(vcpu).map_or(0, |st| st.interrupts);
    let (i0, d0) = (irqs(), delivered());
    let v = victim_latency(s, vcpu);
    let (i1, d1) = (irqs(), delivered());
    let alive = !storm.ended();
    kill_and_wait(&storm)?;
    m.interrupts = i1.saturating_sub(i0);
    m.storm_completions = d1.saturating_sub(d0);
    m.storm = Some(v?);
    if !alive {
        return Err(alloc::format!(
            "the storm ended with {} during the victim's run",
            storm.status()
        ));
    }
    if m.storm_completions == 0 || m.interrupts == 0 {
        return Err(
            "no storm during the victim's run (nothing delivered): the attack was not tried".into(),
        );
    }
    let after = counts(chip);
    if after != base {
        return Err(alloc::format!(
            "not back to baseline after the storm: {base:?} -> {after:?}"
        ));
    }
    Ok(alloc::format!(
        "64 victim operations with interrupts on CPU {vcpu} completed alone and under a storm from CPU {acpu} ({} storm completions, {} IMS interrupts on CPU {vcpu} during the run); latency in TSC ticks, not judged",
        m.storm_completions,
        m.interrupts
    ))
}

/// Attack: unmap a buffer while the device writes it (sva.rs case 5, 8 rounds: the IOTLB
/// primed with the last page of a 1 MiB destination, 23 memmoves of 1 MiB elsewhere then one
/// into the destination, `munmap` of that last page at once, a new page filled over the
/// freed frame, checked after the records). `munmap` frees a frame only after the CPU
/// shootdown and the PASID's IOTLB invalidation completed (`proc` `sva_invalidate`), so the
/// rest of the write faults instead of landing in the reused frame through the stale entry.
/// Refused when the attacker's reused pages never changed, a victim's page (another process)
/// keeps its checksum, and the victim is alive; the detail says how many rounds the munmap
/// won (page fault) — a round the device finished first tried nothing.
fn unmap_while_writing(s: &mut Suite) -> Verdict {
    let vcpu = if cpus() > 2 { 2 } else { 0 };
    let victim = spawn_filled_victim(s, vcpu)?;
    let victim_page = || victim_page(&victim);
    let sum = victim_page()
        .map(checksum)
        .ok_or("the victim's page is gone")?;
    let acpu = if cpus() > 1 { 1 } else { 0 };
    let attacker = s.spawn("sva", Some(acpu), 5);
    let st = match attacker {
        Ok(a) => wait(&a),
        Err(e) => Err(e),
    };
    let after = victim_page().map(checksum);
    let alive = !victim.ended();
    kill_and_wait(&victim)?;
    let st = st?;
    if st == 1 {
        return Err(
            "a page reused after the munmap changed: the device wrote through a stale translation"
                .into(),
        );
    }
    if !(1000..=1008).contains(&st) {
        return Err(alloc::format!("the attacker failed (status {st})"));
    }
    if after != Some(sum) || !alive {
        return Err("the victim's page changed or the victim ended".into());
    }
    Ok(alloc::format!(
        "8 rounds of 24 memmoves of 1 MiB, the last into a buffer whose last page (in the IOTLB) was unmapped in flight: in {} the last memmove ended in a page fault there (in the rest the device finished before the munmap); the frames reused after each munmap never changed; victim page checksum {sum:#x} unchanged",
        st - 1000
    ))
}

/// Attack 4: exit, and be killed, holding interrupt handles with memmoves in flight.
/// Refused when live handles, free IMS entries, routes (IRTEs), PASIDs and the frames held
/// outside the heap ([`held_pages`]: the processes' pages, page tables and stacks) are back
/// to the baseline after each, the vectors per CPU never moved, a new process holding a
/// handle (the same PASID and IMS entry as the killed one, when the allocators hand them out
/// again — the detail says) sees none of the old work's completions (its handle delivered
/// and counted nothing after a Drain PASID), and a new process then gets a handle and
/// completes memmoves by interrupt.
fn exit_with_handles(
    s: &mut Suite,
    dev: &crate::dsa::DsaDevice,
    chip: &Arc<dsa::DsaIms>,
) -> Verdict {
    let base = counts(chip);
    let pages = held_pages();
    let vectors = vectors_per_cpu();
    let cpu = if cpus() > 1 { 1 } else { 0 };
    // user/programs/src/bin/ims.rs case 4: exits with the work in flight.
    let p = s.spawn("ims", Some(cpu), 4)?;
    let st = wait(&p)?;
    if st != 0 {
        return Err(alloc::format!("ims(4) failed to set up (status {st})"));
    }
    gone(p)?;
    let after_exit = counts(chip);
    let pages_exit = held_pages();
    if pages_exit != pages {
        return Err(alloc::format!(
            "after exit with work in flight: frames held outside the heap {pages} -> {pages_exit}"
        ));
    }
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
    let old_pasid = p.pasid();
    let old_handles: Vec<u16> = p.ims_handles().iter().map(|h| h.device_handle).collect();
    if kill_and_wait(&p)? != user_abi::STATUS_KILLED {
        return Err("ims(5) was not killed".into());
    }
    gone(p)?;
    let after_kill = counts(chip);
    if after_kill != base {
        return Err(alloc::format!(
            "after kill with work in flight: (handles, free entries, routes, pasids) {base:?} -> {after_kill:?}"
        ));
    }
    let pages_kill = held_pages();
    if pages_kill != pages {
        return Err(alloc::format!(
            "after kill with work in flight: frames held outside the heap {pages} -> {pages_kill}"
        ));
    }
    if vectors_per_cpu() != vectors {
        return Err(alloc::format!(
            "vectors per CPU moved: {vectors:?} -> {:?}",
            vectors_per_cpu()
        ));
    }
    let reuse = no_old_completions(s, dev, cpu, old_pasid, &old_handles)?;
    // A new process (likely given the same PASID and entries) works normally.
    let next = s.spawn("ims", Some(cpu), 0)?;
    let v = wait(&next)?;
    if v != 0 || next.fault().is_some() {
        return Err(alloc::format!("the next process failed (status {v})"));
    }
    gone(next)?;
    if counts(chip) != base || held_pages() != pages {
        return Err("counts not at baseline after the next process".into());
    }
    Ok(alloc::format!(
        "exit with 4 handles and 4 memmoves in flight, kill once it held 4 handles (its submits may still be under way): (handles, free entries, routes, pasids) back to {base:?} and frames held outside the heap back to {pages} each time; {reuse}; the next process completed memmoves by interrupt"
    ))
}

/// Drops the suite's reference to the ended (reaped) `p` once it is the last one (no CPU
/// has its root loaded any more: an idle CPU lets go of it), so that its address space is
/// torn down now.
fn gone(p: Arc<Process>) -> Result<(), String> {
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(|| Arc::strong_count(&p) == 1, deadline).map_err(|e| {
        alloc::format!(
            "{} (pid {}) is still referenced after its end: {e}",
            p.name(),
            p.pid()
        )
    })?;
    drop(p);
    Ok(())
}

/// Frames allocated and not owned by the kernel heap: process pages, page tables, kernel
/// stacks, PASID tables (what a process's end must give back).
fn held_pages() -> u64 {
    let f = crate::mm::frames::frame_stats();
    let h = crate::mm::heap::stats();
    f.total_pages
        .saturating_sub(f.free_pages)
        .saturating_sub(h.slab_pages)
        .saturating_sub(h.large_bytes / 4096)
}

/// After the kill: a new process holding one handle (ims(6)) on the same CPU; after a Drain
/// PASID of it, its handle delivered and counted nothing (the old work's completions were
/// drained with the old PASID and never reach the new owner of the PASID and entry).
fn no_old_completions(
    s: &mut Suite,
    dev: &crate::dsa::DsaDevice,
    cpu: usize,
    old_pasid: Option<u32>,
    old_handles: &[u16],
) -> Result<String, String> {
    let p = s.spawn("ims", Some(cpu), 6)?;
    let deadline = crate::time::now_ns().saturating_add(hang_ns());
    proc::run_until(|| p.ended() || !p.ims_handles().is_empty(), deadline)
        .map_err(|e| alloc::format!("the new holder never got its handle: {e}"))?;
    let pasid = p.pasid();
    let drained = pasid.map(|x| dev.driver().drain_pasid(x));
    let h = p.ims_handles().first().copied();
    kill_and_wait(&p)?;
    gone(p)?;
    let h = h.ok_or("the new holder ended without a handle")?;
    if let Some(Err(e)) = drained {
        return Err(alloc::format!("Drain PASID of the new holder: {e}"));
    }
    if h.delivered != 0 || h.counted != 0 {
        return Err(alloc::format!(
            "the new holder (PASID {pasid:?}, device handle {:#x}) saw old completions: delivered {} counted {}",
            h.device_handle,
            h.delivered,
            h.counted
        ));
    }
    Ok(alloc::format!(
        "a new holder got PASID {pasid:?} ({} the killed one's) and device handle {:#x} ({} of the killed one's {}) and saw no completion",
        if pasid == old_pasid {
            "the same as"
        } else {
            "not"
        },
        h.device_handle,
        if old_handles.contains(&h.device_handle) {
            "one"
        } else {
            "none"
        },
        old_handles
            .iter()
            .map(|d| alloc::format!("{d:#x}"))
            .collect::<Vec<_>>()
            .join(" ")
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
    let v = victim_interrupt_handle(&mut s, dev);
    s.record("victim-interrupt-handle", v);
    let v = kernel_and_victim_addresses(&mut s, dev);
    s.record("kernel-and-victim-addresses", v);
    let mut storm = Storm::default();
    let v = interrupt_storm(&mut s, &chip, &mut storm);
    s.record_with("interrupt-storm", v, &storm.fields());
    let v = exit_with_handles(&mut s, dev, &chip);
    s.record("exit-with-handles", v);
    let v = unmap_while_writing(&mut s);
    s.record("unmap-while-writing", v);
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
