//! The DSA workload runner: `workload=<spec>` on the kernel command line (syntax in
//! `bench::workload`), or [`DEFAULT_SPEC`] when DSA devices exist and no workload is named.
//!
//! Each case (operation × size × queue mode × batch × completion) runs on every selected
//! CPU at once; CPU k of the selection uses device k mod (number of selected devices),
//! through its own submitter. Per CPU at most `depth` descriptors are in flight, clamped
//! so that all CPUs sharing a WQ together never exceed its size and the buffers fit a
//! share of free memory. Every result is checked against the CPU reference.
//!
//! Completion interrupts: the kernel uses the WQ's MSI-X entry; client PASIDs
//! (`client=pasid`) each allocate an IMS handle on their own CPU from the system IMS domain
//! and submit through the WQ's IMS portal (the MSI-X entries are bound to the kernel PASID).
//!
//! Ring-3 clients (`client=process`: the submit system call; `client=direct`: ENQCMD from
//! ring 3 through a mapped portal, policy `sva.direct=on`) run one process per CPU
//! (`process.rs`).
//!
//! Output: a summary table, and one `RESULT {json}` line per case with `kind
//! "dsa-workload"`. The cost fields are TSC ticks per descriptor of the CPU-side submit
//! path and completion path; `"icount": true` (the kernel was booted with `icount`, as
//! `./qemu-run.sh --icount` does) means they are guest instructions.

mod engine;
pub mod ops;
mod process;

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::time::Duration;

use bench::workload::{Case, ClientKind, Completion, QueueMode, WlOp, WorkloadSpec, size_name};
use dsa_spec::{Opcode, WqMode};
use klib::json::Escaped;

use crate::arch::{percpu, smp};
use crate::dsa::{ClientSpace, DsaDevice};

pub use engine::CpuResult;

/// The representative workload of a plain `./qemu-run.sh` (a few seconds on TCG): the
/// kernel on both queue kinds with polling and MSI-X interrupts, then client PASIDs (own
/// first-stage tables) on the shared WQ, polling and with IMS completion interrupts.
pub const DEFAULT_SPEC: &str = "memmove,fill,crc:size=4k,64k:mode=dwq,swq:batch=1,32:completion=poll,irq:cpus=all:iters=64;\
     memmove,crc:size=4k,64k:mode=swq:batch=1,32:completion=poll,irq:cpus=all:iters=64:client=pasid";

/// Bound on one case on one CPU.
pub(crate) const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Outcome of one case.
#[derive(Clone, Debug)]
pub struct CaseResult {
    pub case: Case,
    pub client: ClientKind,
    pub cpus: usize,
    pub devices: usize,
    /// Effective descriptors in flight per CPU.
    pub depth: usize,
    pub descs_per_cpu: u32,
    pub align: u32,
    pub verified: bool,
    pub skipped: Option<String>,
    pub ops: u64,
    pub bytes: u64,
    pub errors: u64,
    pub verify_failures: u64,
    pub submit_calls: u64,
    pub submit_descs: u64,
    pub submit_tsc: u64,
    pub completion_descs: u64,
    pub completion_tsc: u64,
    pub interrupts: u64,
    pub wall_ns: u64,
    pub first_error: Option<String>,
}

impl CaseResult {
    pub(crate) fn skipped(case: Case, spec: &WorkloadSpec, why: String) -> CaseResult {
        CaseResult {
            case,
            client: spec.client,
            cpus: 0,
            devices: 0,
            depth: 0,
            descs_per_cpu: 0,
            align: spec.align,
            verified: spec.verify,
            skipped: Some(why),
            ops: 0,
            bytes: 0,
            errors: 0,
            verify_failures: 0,
            submit_calls: 0,
            submit_descs: 0,
            submit_tsc: 0,
            completion_descs: 0,
            completion_tsc: 0,
            interrupts: 0,
            wall_ns: 0,
            first_error: None,
        }
    }

    /// Cost per descriptor ×10 (one decimal), if measured.
    fn per10(tsc: u64, n: u64) -> Option<u64> {
        (n > 0).then(|| tsc.saturating_mul(10) / n)
    }
    pub fn submit_per_desc_x10(&self) -> Option<u64> {
        Self::per10(self.submit_tsc, self.submit_descs)
    }
    pub fn submit_per_call_x10(&self) -> Option<u64> {
        Self::per10(self.submit_tsc, self.submit_calls)
    }
    pub fn completion_per_desc_x10(&self) -> Option<u64> {
        Self::per10(self.completion_tsc, self.completion_descs)
    }
    /// MB/s (10^6 bytes per second) of successful operations over the case's wall time.
    pub fn mb_per_s(&self) -> u64 {
        if self.wall_ns == 0 {
            0
        } else {
            (self.bytes as u128 * 1000 / self.wall_ns as u128) as u64
        }
    }
    pub fn failed(&self) -> bool {
        self.errors > 0 || self.verify_failures > 0
    }
}

fn dec(x10: Option<u64>) -> String {
    match x10 {
        Some(v) => format!("{}.{}", v / 10, v % 10),
        None => String::from("null"),
    }
}

/// Whether TSC deltas are guest instructions (`icount` on the command line).
pub fn icount() -> bool {
    crate::cmdline::flag("icount", false)
}

/// Why a workload could not run at all.
#[derive(Debug)]
pub enum WorkloadError {
    Spec(bench::workload::SpecError),
    NoDevices(Option<&'static str>),
    NoSuchCpu(Vec<u32>),
    NoSuchDevice(Vec<u32>),
}

impl core::fmt::Display for WorkloadError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WorkloadError::Spec(e) => write!(f, "workload: {e}"),
            WorkloadError::NoDevices(None) => write!(f, "workload: no DSA device"),
            WorkloadError::NoDevices(Some(why)) => write!(f, "workload: no DSA device ({why})"),
            WorkloadError::NoSuchCpu(v) => write!(f, "workload: no CPU(s) {v:?} online"),
            WorkloadError::NoSuchDevice(v) => write!(f, "workload: no DSA device(s) {v:?}"),
        }
    }
}

/// A representative work descriptor of `case` (placeholder addresses with the case's
/// alignment) for validation against the device before anything is allocated.
fn sample(case: &Case, off: u64) -> dsa::Work {
    let (a, b, c) = (0x100_0000 + off, 0x200_0000 + off, 0x300_0000 + off);
    let n = case.size;
    let p = n / 512 * 520;
    let f = dsa::DifFormat::new(dsa_spec::dif::DifBlockSize::B512);
    match case.op {
        WlOp::Noop => dsa::Work::noop(),
        WlOp::MemMove => dsa::Work::memmove(a, b, n),
        WlOp::Fill => dsa::Work::fill(a, n, 0),
        WlOp::Compare => dsa::Work::compare(a, b, n),
        WlOp::ComparePattern => dsa::Work::compare_pattern(a, n, 0),
        WlOp::Dualcast => dsa::Work::dualcast(a, b, c, n),
        WlOp::CrcGen => dsa::Work::crc(a, n, 0),
        WlOp::CopyCrc => dsa::Work::copy_crc(a, b, n, 0),
        WlOp::CacheFlush => dsa::Work::cache_flush(a, n, false),
        WlOp::CreateDelta => dsa::Work::create_delta(a, b, n, c, 80),
        WlOp::ApplyDelta => dsa::Work::apply_delta(c, 40, a, n),
        WlOp::DifCheck => dsa::Work::dif_check(a, p, f, Default::default()),
        WlOp::DifInsert => dsa::Work::dif_insert(a, b, n, f, Default::default()),
        WlOp::DifStrip => dsa::Work::dif_strip(a, b, p, f, Default::default()),
        WlOp::DifUpdate => {
            dsa::Work::dif_update(a, b, p, f, Default::default(), Default::default())
        }
    }
}

fn wq_mode(m: QueueMode) -> WqMode {
    match m {
        QueueMode::Dedicated => WqMode::Dedicated,
        QueueMode::Shared => WqMode::Shared,
    }
}

/// Runs one case: ring-3 clients through `process`; else checks that the case can run
/// here, gives each CPU a WQ, checks those WQs and sizes each CPU's pipeline, runs every
/// CPU's share at once and sums their outcomes with the interrupt handlers' costs.
fn run_case(
    spec: &WorkloadSpec,
    case: Case,
    cpus: &[usize],
    devs: &[&'static DsaDevice],
) -> CaseResult {
    if matches!(spec.client, ClientKind::Process | ClientKind::Direct) {
        return process::run_case(spec, case, cpus, devs);
    }
    let off = if spec.align >= 4096 {
        0
    } else {
        spec.align as u64
    };
    let prepared = client_supported(spec, case)
        .and_then(|()| assign_wqs(case, cpus, devs))
        .and_then(|plan| {
            let min_share = check_wqs(spec, case, &plan, off)?;
            let size = size_pipeline(spec, case, cpus.len(), off, min_share)?;
            Ok((plan, size))
        });
    let (plan, size) = match prepared {
        Ok(x) => x,
        Err(not_run) => return not_run.result(case, spec),
    };
    let handler_before = handler_stats(&plan, case, spec.client);
    let (mine, handles) = match start_cpus(spec, case, &plan, &size) {
        Ok(x) => x,
        Err(not_run) => return not_run.result(case, spec),
    };
    let (results, join_errors) = collect(mine, handles);
    let handler_after = handler_stats(&plan, case, spec.client);
    let mut r = sum_results(spec, case, cpus.len(), &plan, &size, &results, join_errors);
    r.interrupts = handler_after.0.saturating_sub(handler_before.0);
    if case.completion == Completion::Interrupt {
        r.completion_tsc = handler_after.1.saturating_sub(handler_before.1);
    }
    r
}

/// Why a case ends before it runs.
enum NotRun {
    /// It cannot run on this machine (the reason is its `skipped`).
    Skipped(String),
    /// Starting it failed (the error is its `first_error`).
    Failed(String),
}

impl NotRun {
    fn result(self, case: Case, spec: &WorkloadSpec) -> CaseResult {
        match self {
            NotRun::Skipped(why) => CaseResult::skipped(case, spec, why),
            NotRun::Failed(e) => {
                let mut r = CaseResult::skipped(case, spec, String::new());
                r.skipped = None;
                r.errors = 1;
                r.first_error = Some(e);
                r
            }
        }
    }
}

/// One CPU's place in a case: (CPU, device, WQ).
type CpuWq = (usize, &'static DsaDevice, u8);

/// The other CPUs' jobs of a case: (CPU, job).
type Jobs = Vec<(usize, smp::JobHandle<CpuResult>)>;

/// How each CPU runs a case: submissions in flight and work descriptors to run.
struct PipelineSize {
    groups: usize,
    descs: usize,
}

/// Skips what client PASIDs cannot do here: they need the IOMMU (their own address
/// spaces), and a dedicated WQ runs in the kernel's PASID only.
fn client_supported(spec: &WorkloadSpec, case: Case) -> Result<(), NotRun> {
    if spec.client == ClientKind::Pasid {
        let why = if !crate::iommu::is_enabled() {
            Some("client PASIDs need the IOMMU")
        } else if case.mode == QueueMode::Dedicated {
            Some("a dedicated WQ runs in the kernel's PASID only")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(NotRun::Skipped(why.into()));
        }
    }
    Ok(())
}

/// Gives CPU k of the selection device k mod (number of devices) and that device's WQ of
/// the case's mode; skips the case if a device has none.
fn assign_wqs(
    case: Case,
    cpus: &[usize],
    devs: &[&'static DsaDevice],
) -> Result<Vec<CpuWq>, NotRun> {
    let mode = wq_mode(case.mode);
    let mut plan: Vec<CpuWq> = Vec::new();
    for (k, &cpu) in cpus.iter().enumerate() {
        let d = devs[k % devs.len()];
        let Some(wq) = d.wq_id(mode) else {
            return Err(NotRun::Skipped(format!(
                "dsa{} has no {} WQ",
                d.index,
                case.mode.name()
            )));
        };
        plan.push((cpu, d, wq));
    }
    Ok(plan)
}

/// Checks that every WQ of the plan can run the case (the device accepts a representative
/// descriptor, batches of this size, completion interrupts of the case's kind) and returns
/// the smallest share of a WQ's entries a CPU gets (CPUs sharing a WQ split its size).
fn check_wqs(spec: &WorkloadSpec, case: Case, plan: &[CpuWq], off: u64) -> Result<usize, NotRun> {
    let batch = case.batch as usize;
    let mut min_share = usize::MAX;
    for &(_, d, wq) in plan {
        let drv = d.driver();
        let Some(w) = drv.wq(wq) else {
            return Err(NotRun::Skipped(format!("dsa{} wq{wq} vanished", d.index)));
        };
        if let Err(e) = sample(&case, off).validate(drv.caps(), &w.limits, batch > 1) {
            return Err(NotRun::Skipped(format!("dsa{}: {e}", d.index)));
        }
        if batch > 1 {
            if !drv.caps().supports(Opcode::Batch) {
                return Err(NotRun::Skipped(format!(
                    "dsa{}: no Batch operation",
                    d.index
                )));
            }
            let max = w.limits.max_batch.min(drv.caps().max_batch()) as usize;
            if batch > max {
                return Err(NotRun::Skipped(format!(
                    "dsa{}: batch {batch} over the maximum {max}",
                    d.index
                )));
            }
        }
        // Client PASIDs take completion interrupts through IMS handles of their own (the
        // WQ's MSI-X entry is bound to the kernel PASID).
        if case.completion == Completion::Interrupt && spec.client == ClientKind::Pasid {
            if let Err(e) = crate::ims::device_ims(d) {
                return Err(NotRun::Skipped(format!("no IMS: {e}")));
            }
        } else if case.completion == Completion::Interrupt && w.msix_entry.is_none() {
            return Err(NotRun::Skipped(format!(
                "dsa{} wq{wq} has no interrupt",
                d.index
            )));
        }
        let sharing = plan
            .iter()
            .filter(|&&(_, d2, w2)| d2.index == d.index && w2 == wq)
            .count();
        min_share = min_share.min((w.size() as usize / sharing).max(1));
    }
    Ok(min_share)
}

/// Submissions in flight per CPU: the depth in whole batches, within the CPU's WQ share
/// (`min_share`) and its share of free memory for buffers (skips the case if one
/// submission's buffers do not fit); descriptors per CPU: the iterations in whole batches.
fn size_pipeline(
    spec: &WorkloadSpec,
    case: Case,
    ncpus: usize,
    off: u64,
    min_share: usize,
) -> Result<PipelineSize, NotRun> {
    let batch = case.batch as usize;
    let per_slot = ops::slot_bytes(case.op, case.size as usize, off as usize).max(1);
    let free = crate::mm::frame_stats().free_pages as usize * 4096;
    let budget = free / (2 * ncpus.max(1));
    if per_slot * batch > budget {
        return Err(NotRun::Skipped(format!(
            "{} bytes of buffers per submission exceed the memory share {budget}",
            per_slot * batch
        )));
    }
    let groups = (spec.depth as usize / batch)
        .max(1)
        .min(min_share)
        .min(budget / (per_slot * batch))
        .max(1);
    let descs = (spec.iters as usize).div_ceil(batch) * batch;
    Ok(PipelineSize { groups, descs })
}

/// Builds each CPU's `engine::Plan` (client PASIDs: a fresh address space attached to the
/// CPU's device) and starts it on every other CPU; returns the current CPU's plan, run by
/// the caller, and the other CPUs' jobs.
fn start_cpus(
    spec: &WorkloadSpec,
    case: Case,
    plan: &[CpuWq],
    size: &PipelineSize,
) -> Result<(Option<engine::Plan>, Jobs), NotRun> {
    let mut handles = Vec::new();
    let me = percpu::current_index();
    let mut mine = None;
    for (k, &(cpu, d, wq)) in plan.iter().enumerate() {
        let (client, space) = match spec.client {
            // (Ring-3 clients returned above.)
            ClientKind::Kernel | ClientKind::Process | ClientKind::Direct => {
                (d.kernel_requester(), None)
            }
            ClientKind::Pasid => {
                let c = match ClientSpace::new().and_then(|c| d.attach(&c).map(|()| c)) {
                    Ok(c) => c,
                    Err(e) => return Err(NotRun::Failed(format!("client PASID: {e}"))),
                };
                (dsa::Requester::pasid(c.pasid(), false), Some(c))
            }
        };
        let p = engine::Plan {
            dev: d,
            wq,
            client,
            space,
            case,
            descs: size.descs as u32,
            groups: size.groups,
            align: spec.align as usize,
            verify: spec.verify,
            salt: k as u8,
        };
        if cpu == me {
            mine = Some(p);
        } else {
            match smp::spawn_on(cpu, move || engine::run(p)) {
                Ok(h) => handles.push((cpu, h)),
                Err(e) => return Err(NotRun::Failed(format!("cpu{cpu}: {e}"))),
            }
        }
    }
    Ok((mine, handles))
}

/// Runs the current CPU's share, then waits (bounded) for the other CPUs': their outcomes,
/// and the CPUs whose job did not end.
fn collect(mine: Option<engine::Plan>, handles: Jobs) -> (Vec<CpuResult>, Vec<String>) {
    let mut results: Vec<CpuResult> = Vec::new();
    if let Some(p) = mine {
        results.push(engine::run(p));
    }
    let mut join_errors = Vec::new();
    for (cpu, h) in handles {
        match h.join(CASE_TIMEOUT) {
            Ok(r) => results.push(r),
            Err(e) => join_errors.push(format!("cpu{cpu}: {e}")),
        }
    }
    (results, join_errors)
}

/// The case's outcome: its shape (CPUs, devices, depth, descriptors) and the CPUs'
/// counts summed (wall time: the slowest CPU's; first error: the first CPU's, or the
/// CPUs whose job did not end).
fn sum_results(
    spec: &WorkloadSpec,
    case: Case,
    ncpus: usize,
    plan: &[CpuWq],
    size: &PipelineSize,
    results: &[CpuResult],
    join_errors: Vec<String>,
) -> CaseResult {
    let mut r = CaseResult::skipped(case, spec, String::new());
    r.skipped = None;
    r.cpus = ncpus;
    r.devices = {
        let mut v: Vec<u32> = plan.iter().map(|p| p.1.index).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    r.depth = size.groups * case.batch as usize;
    r.descs_per_cpu = size.descs as u32;
    for c in results {
        r.ops += c.ops;
        r.bytes += c.bytes;
        r.errors += c.errors;
        r.verify_failures += c.verify_failures;
        r.submit_calls += c.submit_calls;
        r.submit_descs += c.submit_descs;
        r.submit_tsc += c.submit_tsc;
        r.completion_descs += c.completion_descs;
        r.completion_tsc += c.completion_tsc;
        r.wall_ns = r.wall_ns.max(c.elapsed_ns);
        if r.first_error.is_none() {
            r.first_error = c.first_error.as_ref().map(|e| format!("cpu{}: {e}", c.cpu));
        }
    }
    if !join_errors.is_empty() {
        r.errors += join_errors.len() as u64;
        r.first_error = Some(join_errors.join("; "));
    }
    r
}

/// (interrupts, handler TSC) summed over the MSI-X entries of the WQs a case uses, or for
/// client PASIDs (IMS) over the system IMS domain's demultiplexing passes on the case's CPUs.
fn handler_stats(plan: &[CpuWq], case: Case, client: ClientKind) -> (u64, u64) {
    let mut seen: Vec<(u32, u8)> = Vec::new();
    let (mut n, mut t) = (0, 0);
    if case.completion != Completion::Interrupt {
        return (0, 0);
    }
    if client == ClientKind::Pasid {
        let Ok(domain) = crate::ims::system() else {
            return (0, 0);
        };
        let mut cpus: Vec<usize> = plan.iter().map(|p| p.0).collect();
        cpus.sort_unstable();
        cpus.dedup();
        for cpu in cpus {
            if let Ok(s) = domain.stats(cpu) {
                n += s.interrupts;
                t += s.cycles;
            }
        }
        return (n, t);
    }
    for &(_, d, wq) in plan {
        if seen.contains(&(d.index, wq)) {
            continue;
        }
        seen.push((d.index, wq));
        let drv = d.driver();
        if let Some(e) = drv.wq(wq).and_then(|w| w.msix_entry)
            && let Some(s) = d.entry_stats(e)
        {
            n += s.interrupts.load(core::sync::atomic::Ordering::Relaxed);
            t += s.handler_tsc.load(core::sync::atomic::Ordering::Relaxed);
        }
    }
    (n, t)
}

/// The `RESULT` line of a case.
pub fn result_json(r: &CaseResult) -> String {
    let mut s = String::new();
    let c = &r.case;
    let _ = write!(
        s,
        "{{\"kind\":\"dsa-workload\",\"op\":\"{}\",\"size\":{},\"mode\":\"{}\",\"batch\":{},\"completion\":\"{}\"",
        c.op.name(),
        c.size,
        c.mode.name(),
        c.batch,
        c.completion.name()
    );
    if let Some(why) = &r.skipped {
        let _ = write!(s, ",\"skipped\":\"{}\"}}", Escaped(why));
        return s;
    }
    let icount = icount();
    let _ = write!(
        s,
        ",\"client\":\"{}\",\"irq_path\":\"{}\",\"cpus\":{},\"devices\":{},\"depth\":{},\"iters\":{},\"align\":{},\"ops\":{},\"bytes\":{},\
         \"errors\":{},\"verify_failures\":{},\"verified\":{},\"submit_cost_per_desc\":{},\
         \"submit_cost_per_call\":{},\"completion_cost_per_desc\":{},\"interrupts\":{},\"icount\":{},\
         \"cost_unit\":\"{}\",\"elapsed_us\":{},\"mb_per_s\":{}",
        r.client.name(),
        match (c.completion, r.client) {
            (Completion::Poll, _) => "none",
            (Completion::Interrupt, ClientKind::Pasid) => "ims",
            (Completion::Interrupt, ClientKind::Kernel) => "msix",
            // Ring-3 clients poll (interrupt cases are skipped).
            (Completion::Interrupt, ClientKind::Process | ClientKind::Direct) => "none",
        },
        r.cpus,
        r.devices,
        r.depth,
        r.descs_per_cpu,
        r.align,
        r.ops,
        r.bytes,
        r.errors,
        r.verify_failures,
        r.verified,
        dec(r.submit_per_desc_x10()),
        dec(r.submit_per_call_x10()),
        dec(r.completion_per_desc_x10()),
        r.interrupts,
        icount,
        if icount {
            "guest_instructions"
        } else {
            "tsc_cycles"
        },
        r.wall_ns / 1000,
        r.mb_per_s()
    );
    if let Some(e) = &r.first_error {
        let _ = write!(s, ",\"first_error\":\"{}\"", Escaped(e));
    }
    s.push('}');
    s
}

fn table_header() {
    crate::println!(
        "{:<9} {:>5} {:<4} {:>5} {:<4} {:<6} {:>4} {:>5} {:>7} {:>6} {:>5} {:>12} {:>12} {:>8}",
        "op",
        "size",
        "mode",
        "batch",
        "comp",
        "client",
        "cpus",
        "depth",
        "ops",
        "errors",
        "vfail",
        "submit/desc",
        "compl/desc",
        "MB/s"
    );
}

fn table_row(r: &CaseResult) {
    let c = &r.case;
    if let Some(why) = &r.skipped {
        crate::println!(
            "{:<9} {:>5} {:<4} {:>5} {:<4} {:<6} skipped: {}",
            c.op.name(),
            size_name(c.size),
            c.mode.name(),
            c.batch,
            c.completion.name(),
            r.client.name(),
            why
        );
        return;
    }
    crate::println!(
        "{:<9} {:>5} {:<4} {:>5} {:<4} {:<6} {:>4} {:>5} {:>7} {:>6} {:>5} {:>12} {:>12} {:>8}{}",
        c.op.name(),
        size_name(c.size),
        c.mode.name(),
        c.batch,
        c.completion.name(),
        r.client.name(),
        r.cpus,
        r.depth,
        r.ops,
        r.errors,
        r.verify_failures,
        dec(r.submit_per_desc_x10()),
        dec(r.completion_per_desc_x10()),
        r.mb_per_s(),
        if r.failed() { "  FAIL" } else { "" }
    );
}

/// Summary of a whole run.
#[derive(Debug, Default)]
pub struct Summary {
    pub cases: usize,
    pub skipped: usize,
    pub failed: usize,
    pub errors: u64,
    pub verify_failures: u64,
}

/// Runs the specs, printing each case's `RESULT` line as it finishes and the table at the
/// end.
pub fn run(specs: &[WorkloadSpec]) -> Result<(Summary, Vec<CaseResult>), WorkloadError> {
    let all = crate::dsa::devices();
    if all.is_empty() {
        return Err(WorkloadError::NoDevices(crate::dsa::init_error()));
    }
    let ncpu = percpu::cpu_count() as u32;
    let mut results = Vec::new();
    for spec in specs {
        let missing = spec.cpus.missing(ncpu);
        if !missing.is_empty() {
            return Err(WorkloadError::NoSuchCpu(missing));
        }
        let missing = spec.devices.missing(all.len() as u32);
        if !missing.is_empty() {
            return Err(WorkloadError::NoSuchDevice(missing));
        }
        let cpus: Vec<usize> = spec
            .cpus
            .resolve(ncpu)
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let devs: Vec<&'static DsaDevice> = spec
            .devices
            .resolve(all.len() as u32)
            .into_iter()
            .map(|i| &all[i as usize])
            .collect();
        log::info!(
            "{} case(s) on cpus {} and device(s) {} as {}, depth {}, {} descriptor(s) per CPU, align {}{}",
            spec.cases().len(),
            spec.cpus,
            spec.devices,
            spec.client.name(),
            spec.depth,
            spec.iters,
            spec.align,
            if spec.verify {
                ""
            } else {
                ", verification off"
            }
        );
        for case in spec.cases() {
            let r = run_case(spec, case, &cpus, &devs);
            crate::println!("RESULT {}", result_json(&r));
            if r.failed() {
                log::error!(
                    "{} {} {} batch {} {}: {} error(s), {} verification failure(s): {}",
                    case.op.name(),
                    size_name(case.size),
                    case.mode.name(),
                    case.batch,
                    case.completion.name(),
                    r.errors,
                    r.verify_failures,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
            results.push(r);
        }
    }
    let mut s = Summary {
        cases: results.len(),
        ..Summary::default()
    };
    crate::println!();
    crate::println!(
        "DSA workload summary ({} case(s); costs per descriptor in {})",
        results.len(),
        if icount() {
            "guest instructions (icount)"
        } else {
            "TSC cycles (not icount: not instruction counts)"
        }
    );
    table_header();
    for r in &results {
        table_row(r);
        if r.skipped.is_some() {
            s.skipped += 1;
        }
        if r.failed() {
            s.failed += 1;
        }
        s.errors += r.errors;
        s.verify_failures += r.verify_failures;
    }
    crate::println!(
        "workload: {} case(s), {} skipped, {} failed, {} error(s), {} verification failure(s)",
        s.cases,
        s.skipped,
        s.failed,
        s.errors,
        s.verify_failures
    );
    Ok((s, results))
}

/// The specs the command line asks for: `workload=<spec>`, `workload=none` (nothing), or
/// the default when the key is absent. `None` = no workload.
pub fn requested() -> Result<Option<Vec<WorkloadSpec>>, WorkloadError> {
    match crate::cmdline::get("workload") {
        Some("none") | Some("off") => Ok(None),
        Some(s) if !s.is_empty() && s != "default" => WorkloadSpec::parse(s)
            .map(Some)
            .map_err(WorkloadError::Spec),
        _ => WorkloadSpec::parse(DEFAULT_SPEC)
            .map(Some)
            .map_err(WorkloadError::Spec),
    }
}
