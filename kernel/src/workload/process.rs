//! Ring-3 clients of the workload runner (`client=process`, `client=direct`): each selected
//! CPU runs one process of the embedded program `enq` (user/programs/src/bin/enq.rs, case
//! 4), which submits the case's memmoves on device 0's shared WQ from ring 3, one at a
//! time, polling its completion record and checking the bytes, either through the
//! `dsa_submit` system call (`process`: the kernel copies, validates and submits with
//! ENQCMDS) or with ENQCMD to the portal page the kernel mapped for it (`direct`: only with
//! the kernel policy `sva.direct=on`).
//!
//! Measured section (in the process, TSC deltas; guest instructions under icount): the
//! submission alone — the `syscall` round trip of `dsa_submit`, or SFENCE + ENQCMD (with
//! its retries) — summed over the descriptors and returned in the exit status. So
//! `submit_cost_per_desc` is comparable with the kernel's (`submit*` of the driver's
//! submitter); the completion is not measured (`completion_cost_per_desc` null). The wall
//! time includes creating and tearing down the processes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bench::workload::{Case, ClientKind, Completion, QueueMode, WlOp, WorkloadSpec};

use super::CaseResult;
use crate::dsa::DsaDevice;
use crate::proc;

/// `enq`'s exit status bit for a finished cost run (user/programs/src/bin/enq.rs).
const COST_OK: u64 = 1 << 63;
/// Largest size `enq` accepts.
const MAX_SIZE: u32 = 16 << 20;

/// Why the case cannot run with ring-3 clients, if it cannot.
fn unsupported(spec: &WorkloadSpec, case: &Case, devs: &[&'static DsaDevice]) -> Option<String> {
    if case.op != WlOp::MemMove
        || case.mode != QueueMode::Shared
        || case.batch != 1
        || case.completion != Completion::Poll
    {
        return Some("ring-3 clients run memmove on a shared WQ, batch 1, polling".into());
    }
    if !case.size.is_multiple_of(1024) || case.size > MAX_SIZE {
        return Some(format!(
            "ring-3 clients take sizes in whole KiB up to {MAX_SIZE}"
        ));
    }
    if !crate::iommu::is_enabled() {
        return Some("ring-3 clients need the IOMMU (shared virtual addressing)".into());
    }
    if devs.first().is_none_or(|d| d.index != 0) {
        return Some("ring-3 clients use device 0".into());
    }
    let dev = devs[0];
    if !dev.has_enqcmds() || dev.wq_id(dsa_spec::WqMode::Shared).is_none() {
        return Some(format!("dsa{} has no shared WQ (or no ENQCMD)", dev.index));
    }
    if proc::programs::find("enq").is_none() {
        return Some("this kernel carries no ring-3 programs".into());
    }
    if spec.client == ClientKind::Direct {
        if !proc::direct_submission_allowed() {
            return Some(
                "direct portals are off (kernel policy sva.direct=off, INTEL-SA-01084; boot with sva.direct=on)"
                    .into(),
            );
        }
        if dev.user_portal_page().is_none() || crate::ims::device_ims(dev).is_err() {
            return Some(format!("dsa{} has no IMS portal to map", dev.index));
        }
    }
    None
}

/// Runs `case` with one ring-3 client per CPU of `cpus`.
pub fn run_case(
    spec: &WorkloadSpec,
    case: Case,
    cpus: &[usize],
    devs: &[&'static DsaDevice],
) -> CaseResult {
    if let Some(why) = unsupported(spec, &case, devs) {
        return CaseResult::skipped(case, spec, why);
    }
    let path = u64::from(spec.client == ClientKind::Direct);
    let iters = u64::from(spec.iters).min(u64::from(u32::MAX));
    let arg = 4 | (path << 8) | (iters << 16) | (u64::from(case.size / 1024) << 48);
    let mut r = CaseResult::skipped(case, spec, String::new());
    r.skipped = None;
    r.cpus = cpus.len();
    r.devices = 1;
    r.depth = 1;
    r.descs_per_cpu = iters as u32;
    r.verified = true;
    let t0 = crate::time::now_ns();
    let mut running = Vec::new();
    for &cpu in cpus {
        match proc::spawn("enq", Some(cpu), arg) {
            Ok(p) => running.push((cpu, p)),
            Err(e) => {
                r.errors += 1;
                r.first_error
                    .get_or_insert_with(|| format!("cpu{cpu}: spawn: {e}"));
            }
        }
    }
    let timeout = super::CASE_TIMEOUT.as_nanos() as u64;
    for (cpu, p) in running {
        match proc::wait(&p, timeout) {
            Ok(s) if s & COST_OK != 0 => {
                r.ops += iters;
                r.bytes += iters * u64::from(case.size);
                r.submit_calls += iters;
                r.submit_descs += iters;
                r.submit_tsc += s & !COST_OK;
            }
            Ok(s) => {
                r.errors += 1;
                let why = match p.fault() {
                    Some(f) => format!("killed by vector {} at {:#x}", f.vector, f.rip),
                    None => format!("exit status {s} (user/programs/src/bin/enq.rs)"),
                };
                r.first_error
                    .get_or_insert_with(|| format!("cpu{cpu}: pid {}: {why}", p.pid()));
            }
            Err(e) => {
                r.errors += 1;
                proc::kill(&p);
                r.first_error
                    .get_or_insert_with(|| format!("cpu{cpu}: pid {}: {e}", p.pid()));
            }
        }
    }
    r.wall_ns = crate::time::now_ns().saturating_sub(t0);
    r
}
