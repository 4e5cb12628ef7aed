//! One CPU's share of a workload case: its own submitter on its WQ, `groups` submissions in
//! flight (each a single descriptor or a batch of `batch`), every result verified.
//!
//! Measured sections (TSC deltas; guest instructions under `-icount shift=0`): each
//! `submit*` call (building and submitting the descriptor or batch), and in polling mode
//! the `poll` call that finds the operation complete (decoding its completion record).
//! Waiting for the device, preparing inputs and verifying outputs are never measured. In
//! interrupt mode the completion path is the interrupt handler, measured by the kernel's
//! DSA glue per MSI-X entry (`dsa::EntryStats`), for client PASIDs the IMS demultiplexer's
//! passes on the case's CPUs (`ims::DemuxStats::cycles`; the handle is this CPU's own).

use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;

use bench::workload::{Case, Completion};
use dsa::{Client, Notify, OpError, Output, Submitter, SubmitterOptions, Work};

use super::ops::{Mismatch, OpSlot};
use crate::arch::rdtsc;
use crate::dsa::{ClientSpace, DsaDevice};
use crate::sync::IrqMutex;
use x86_64::instructions::interrupts::without_interrupts;

/// Bound on waiting for one completion.
const COMPLETION_TIMEOUT_NS: u64 = 10_000_000_000;

/// What one CPU runs.
pub struct Plan {
    pub dev: &'static DsaDevice,
    pub wq: u8,
    pub client: Client,
    pub space: Option<Arc<ClientSpace>>,
    pub case: Case,
    /// Work descriptors to run (a whole number of batches).
    pub descs: u32,
    /// Submissions in flight at once.
    pub groups: usize,
    pub align: usize,
    pub verify: bool,
    /// Distinguishes CPUs' inputs.
    pub salt: u8,
}

/// One CPU's outcome.
#[derive(Clone, Debug, Default)]
pub struct CpuResult {
    pub cpu: usize,
    /// Work descriptors completed (successfully or not).
    pub ops: u64,
    /// Bytes of successful operations.
    pub bytes: u64,
    /// Operations that failed (error status, submission refused, timeout).
    pub errors: u64,
    /// Operations that succeeded with a wrong result.
    pub verify_failures: u64,
    pub submit_calls: u64,
    pub submit_descs: u64,
    pub submit_tsc: u64,
    pub completion_descs: u64,
    pub completion_tsc: u64,
    pub elapsed_ns: u64,
    pub first_error: Option<String>,
}

impl CpuResult {
    fn note(&mut self, e: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(e());
        }
    }
}

type Queue = Arc<IrqMutex<VecDeque<(usize, Result<Output, OpError>)>>>;

/// Runs the plan on the current CPU.
pub fn run(p: Plan) -> CpuResult {
    let mut res = CpuResult {
        cpu: crate::arch::percpu::current_index(),
        ..CpuResult::default()
    };
    let batch = p.case.batch as usize;
    let mut slots = Vec::with_capacity(p.groups * batch);
    for i in 0..p.groups * batch {
        let salt = p.salt.wrapping_mul(37).wrapping_add(i as u8);
        match OpSlot::new(
            p.case.op,
            p.case.size as usize,
            p.align,
            p.space.as_ref(),
            salt,
        ) {
            Ok(s) => slots.push(s),
            Err(e) => {
                res.errors += 1;
                res.note(|| alloc::format!("buffers: {e}"));
                return res;
            }
        }
    }
    let drv = p.dev.driver();
    let opts = SubmitterOptions {
        slots: p.groups as u16 + 1,
        max_batch: batch.max(2) as u16,
        timeout_ns: COMPLETION_TIMEOUT_NS,
    };
    let mut sub = match Submitter::new(&drv, p.wq, p.client, opts) {
        Ok(s) => s,
        Err(e) => {
            res.errors += 1;
            res.note(|| alloc::format!("submitter: {e}"));
            return res;
        }
    };
    let irq = p.case.completion == Completion::Interrupt;
    // Client PASIDs: an IMS handle of their own on this CPU (bound to their PASID); the
    // kernel: the WQ's MSI-X entry.
    let ims = match (&p.space, irq) {
        (Some(space), true) => match ims_handle(&p, space, &sub) {
            Ok(x) => Some(x),
            Err(e) => {
                res.errors += 1;
                res.note(|| alloc::format!("IMS handle: {e}"));
                return res;
            }
        },
        _ => None,
    };
    let total = (p.descs as usize).div_ceil(batch);
    let queue: Queue = Arc::new(IrqMutex::new(VecDeque::new()));
    let mut free: Vec<usize> = (0..p.groups).rev().collect();
    let mut inflight: VecDeque<(dsa::Token, usize)> = VecDeque::new();
    let mut in_irq = 0usize;
    let (mut issued, mut done) = (0usize, 0usize);
    let mut stuck = false;
    let start = crate::time::now_ns();
    let seq0 = (p.salt as u64) << 40;
    while done < total && !stuck {
        // Fill the pipeline.
        while issued < total && !free.is_empty() {
            let g = free.pop().unwrap_or(0);
            let works: Vec<Work> = (0..batch)
                .map(|j| slots[g * batch + j].prepare(seq0 + (issued * batch + j) as u64))
                .collect();
            let r = if irq {
                let q = queue.clone();
                let cb = move |r| q.lock().push_back((g, r));
                // Interrupts off: a completion interrupt must not land inside the
                // measured submit section (its cost is the completion path's).
                let (r, t0, t1) = without_interrupts(|| {
                    let t0 = rdtsc();
                    let r = match (&ims, batch) {
                        (Some((chip, _, a)), 1) => chip.submit(&mut sub, a, &works[0], cb),
                        (Some((chip, _, a)), _) => {
                            chip.submit_batch_with_callback(&mut sub, a, &works, cb)
                        }
                        (None, 1) => sub.submit_with_callback(&works[0], Notify::Msix, cb),
                        (None, _) => sub.submit_batch_with_callback(&works, Notify::Msix, cb),
                    };
                    (r, t0, rdtsc())
                });
                r.map(|()| (None, t1.wrapping_sub(t0)))
            } else {
                let (r, t0, t1) = without_interrupts(|| {
                    let t0 = rdtsc();
                    let r = if batch == 1 {
                        sub.submit(&works[0], Notify::Poll)
                    } else {
                        sub.submit_batch(&works, Notify::Poll)
                    };
                    (r, t0, rdtsc())
                });
                r.map(|t| (Some(t), t1.wrapping_sub(t0)))
            };
            issued += 1;
            match r {
                Ok((tok, dt)) => {
                    res.submit_calls += 1;
                    res.submit_descs += batch as u64;
                    res.submit_tsc += dt;
                    match tok {
                        Some(t) => inflight.push_back((t, g)),
                        None => in_irq += 1,
                    }
                }
                Err(e) => {
                    res.errors += batch as u64;
                    res.ops += batch as u64;
                    res.note(|| alloc::format!("submit: {e}"));
                    free.push(g);
                    done += 1;
                    if !matches!(e, OpError::QueueFull | OpError::NoFreeSlot) {
                        stuck = true;
                        break;
                    }
                }
            }
        }
        if stuck || done >= total {
            break;
        }
        // Take one completion.
        let deadline = crate::time::now_ns().saturating_add(COMPLETION_TIMEOUT_NS);
        let (g, r) = if irq {
            if in_irq == 0 {
                continue;
            }
            loop {
                if let Some(x) = queue.lock().pop_front() {
                    in_irq -= 1;
                    break x;
                }
                if crate::time::now_ns() > deadline {
                    stuck = true;
                    break (usize::MAX, Err(OpError::Timeout));
                }
                core::hint::spin_loop();
            }
        } else {
            let Some(&(tok, g)) = inflight.front() else {
                continue;
            };
            loop {
                let (r, t0, t1) = without_interrupts(|| {
                    let t0 = rdtsc();
                    let r = sub.poll(tok);
                    (r, t0, rdtsc())
                });
                if let Some(r) = r {
                    res.completion_tsc += t1.wrapping_sub(t0);
                    res.completion_descs += batch as u64;
                    inflight.pop_front();
                    break (g, r);
                }
                if crate::time::now_ns() > deadline {
                    stuck = true;
                    break (usize::MAX, Err(OpError::Timeout));
                }
                core::hint::spin_loop();
            }
        };
        done += 1;
        if g == usize::MAX {
            res.errors += batch as u64;
            res.ops += batch as u64;
            res.note(|| "completion timed out".to_string());
            break;
        }
        settle(
            &mut res,
            &slots[g * batch..(g + 1) * batch],
            r,
            p.verify,
            p.case.size,
        );
        free.push(g);
    }
    res.elapsed_ns = crate::time::now_ns().saturating_sub(start);
    if irq {
        res.completion_descs = res.ops;
    }
    if let Some((_, h, _)) = ims
        && let Err(e) = h.release()
    {
        res.errors += 1;
        res.note(|| alloc::format!("IMS handle release: {e}"));
    }
    drop(sub);
    if stuck {
        // Descriptors may still be in flight: the device could write these buffers later.
        core::mem::forget(slots);
    }
    res
}

/// Accounts one finished submission (single or batch).
fn settle(
    res: &mut CpuResult,
    slots: &[OpSlot],
    r: Result<Output, OpError>,
    verify: bool,
    size: u32,
) {
    let n = slots.len();
    res.ops += n as u64;
    let members: Vec<Result<Output, OpError>> = if n == 1 {
        alloc::vec![r]
    } else {
        match r {
            Ok(Output::Batch(v)) if v.len() == n => v,
            Ok(o) => {
                res.errors += n as u64;
                res.note(|| alloc::format!("batch: unexpected result {o:?}"));
                return;
            }
            Err(e) => {
                res.errors += n as u64;
                res.note(|| alloc::format!("batch: {e}"));
                return;
            }
        }
    };
    for (s, m) in slots.iter().zip(members) {
        if let Err(e) = &m {
            res.errors += 1;
            res.note(|| alloc::format!("operation: {e}"));
            continue;
        }
        res.bytes += size as u64;
        if verify && let Err(Mismatch(why)) = s.verify(&m) {
            res.verify_failures += 1;
            res.note(|| alloc::format!("verification: {why}"));
        }
    }
}

/// An IMS handle for the client owning `space` on the current CPU, fed by `sub`.
fn ims_handle(
    p: &Plan,
    space: &Arc<ClientSpace>,
    sub: &Submitter,
) -> Result<(Arc<dsa::DsaIms>, ims::ImsHandle, ims::Armer), crate::ims::ClientError> {
    let chip = crate::ims::device_ims(p.dev)?;
    let client = crate::ims::Client::new(space.clone())?;
    let cpu = crate::arch::percpu::current_index();
    let h = client.allocate_on(&chip, cpu, sub)?;
    let armer = h.armer();
    Ok((chip, h, armer))
}
