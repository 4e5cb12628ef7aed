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

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};
use core::time::Duration;

use bench::workload::{Case, Completion};
use dsa::{Callback, Completed, OpError, Output, Requester, Submitter, SubmitterOptions, Work};

use super::ops::{Mismatch, OpSlot};
use crate::arch::rdtsc;
use crate::dsa::{ClientSpace, DsaDevice};
use x86_64::instructions::interrupts::without_interrupts;

/// Bound on waiting for one completion.
const COMPLETION_TIMEOUT_NS: u64 = 10_000_000_000;

/// What one CPU runs.
pub struct Plan {
    pub dev: &'static DsaDevice,
    pub wq: u8,
    pub client: Requester,
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

/// Where an interrupt-mode completion of group `g` lands: written by the completion
/// callback (the function pointer + cookie the driver calls), read by this CPU's loop.
struct GroupDone {
    ready: AtomicBool,
    result: UnsafeCell<Result<Output, OpError>>,
    /// Batch members (preallocated, one per member).
    members: UnsafeCell<Vec<Result<Output, OpError>>>,
}

// SAFETY: `result` and `members` have one writer at a time: the callback of the group's one
// submission in flight writes them before its release store of `ready`; the loop reads them
// after an acquire load of `ready` and before resubmitting the group.
unsafe impl Sync for GroupDone {}

/// The completion callback of interrupt mode: the cookie is the group's `GroupDone`.
/// A plain success of a single operation whose board entry already says so only sets
/// `ready`; everything else is written out of line.
fn on_complete(cookie: usize, done: &Completed<'_>) {
    // SAFETY: the cookie is the address of a `GroupDone` in the board `run` keeps alive
    // until every submission completed (or leaks when it gives up); see `GroupDone`.
    let g = unsafe { &*(cookie as *const GroupDone) };
    if !done.is_batch()
        && done.plain_success()
        // SAFETY: this callback is the group's only writer now (see `GroupDone`).
        && matches!(unsafe { &*g.result.get() }, Ok(Output::Done))
    {
        g.ready.store(true, Ordering::Release);
        return;
    }
    on_complete_slow(g, done);
}

#[inline(never)]
fn on_complete_slow(g: &GroupDone, done: &Completed<'_>) {
    // SAFETY: this callback is the group's only writer now (see `GroupDone`).
    unsafe {
        if done.is_batch() {
            done.members().write_to(&mut *g.members.get());
        }
        let r = &mut *g.result.get();
        if !(done.plain_success() && matches!(r, Ok(Output::Done))) {
            *r = done.result();
        }
    }
    g.ready.store(true, Ordering::Release);
}

/// Runs the plan on the current CPU: set up, then keep the pipeline full and take one
/// completion at a time until every submission finished (or one never will), then release
/// what the run held.
pub fn run(p: Plan) -> CpuResult {
    let mut res = CpuResult {
        cpu: crate::arch::percpu::current_index(),
        ..CpuResult::default()
    };
    let Some(mut r) = Run::set_up(p, &mut res) else {
        return res;
    };
    let start = crate::time::now_ns();
    while r.done < r.total && !r.stuck {
        r.fill_pipeline(&mut res);
        if r.stuck || r.done >= r.total {
            break;
        }
        let Some((g, out)) = r.take_completion(&mut res) else {
            continue;
        };
        r.done += 1;
        if g == usize::MAX {
            res.errors += r.batch as u64;
            res.ops += r.batch as u64;
            res.note(|| "completion timed out".to_string());
            break;
        }
        r.settle_group(&mut res, g, out);
    }
    res.elapsed_ns = crate::time::now_ns().saturating_sub(start);
    r.finish(&mut res);
    res
}

/// One CPU's run in progress: its buffers, submitter and completion board, and where each
/// of its `groups` submissions is (free, in flight polled, in flight with a callback).
struct Run {
    p: Plan,
    /// Work descriptors per submission.
    batch: usize,
    /// Interrupt-mode completion (else polled).
    irq: bool,
    /// Submissions to make.
    total: usize,
    /// Base of this CPU's input sequence numbers.
    seq0: u64,
    /// `batch` operation slots per group.
    slots: Vec<OpSlot>,
    sub: Submitter,
    /// Client PASIDs in interrupt mode: their IMS handle on this CPU.
    ims: Option<ims::ImsHandle>,
    /// One completion board entry per group (interrupt mode).
    board: Box<[GroupDone]>,
    /// One member buffer per group for polled batches.
    polled_members: Vec<Vec<Result<Output, OpError>>>,
    /// A polled batch whose members all succeeded plainly reports just that
    /// (`BatchDone::all_ok`): its results are these.
    all_done: Vec<Result<Output, OpError>>,
    /// Members of the polled batch just collected that `all_done` describes (None: the
    /// group's `polled_members` hold the results).
    polled_all_ok: Option<usize>,
    /// The work descriptors of the submission being built.
    works: Vec<Work>,
    /// Groups not in flight.
    free: Vec<usize>,
    /// Polled submissions in flight, oldest first.
    inflight: VecDeque<(dsa::Token, usize)>,
    /// Interrupt-mode submissions in flight.
    in_irq: VecDeque<usize>,
    /// Submissions made (or refused), and finished.
    issued: usize,
    done: usize,
    /// A submission or completion failed so that the run cannot go on.
    stuck: bool,
}

// The loop's steps (`fill_pipeline`, `take_completion`, `settle_group`) are inlined into
// `run`, which was one function before they were named: the measured sections stay the
// `timed` functions' alone either way.
impl Run {
    /// Allocates everything the measured loop uses, before anything is measured: the
    /// groups' operation slots, the submitter, for client PASIDs in interrupt mode their
    /// IMS handle on this CPU, the completion board and the polled batches' member
    /// buffers. None (the failure noted in `res`) if any of it cannot be had.
    fn set_up(p: Plan, res: &mut CpuResult) -> Option<Run> {
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
                    return None;
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
                return None;
            }
        };
        let irq = p.case.completion == Completion::Interrupt;
        // Client PASIDs: an IMS handle of their own on this CPU (bound to their PASID); the
        // kernel: the WQ's MSI-X entry.
        let ims = match (&p.space, irq) {
            (Some(space), true) => match ims_handle(&p, space, &mut sub) {
                Ok(x) => Some(x),
                Err(e) => {
                    res.errors += 1;
                    res.note(|| alloc::format!("IMS handle: {e}"));
                    return None;
                }
            },
            _ => None,
        };
        let total = (p.descs as usize).div_ceil(batch);
        let board: Box<[GroupDone]> = (0..p.groups)
            .map(|_| GroupDone {
                ready: AtomicBool::new(false),
                result: UnsafeCell::new(Ok(Output::Done)),
                members: UnsafeCell::new((0..batch).map(|_| Ok(Output::Done)).collect()),
            })
            .collect();
        let polled_members = (0..p.groups)
            .map(|_| (0..batch).map(|_| Ok(Output::Done)).collect())
            .collect();
        let all_done = (0..batch).map(|_| Ok(Output::Done)).collect();
        let seq0 = (p.salt as u64) << 40;
        Some(Run {
            batch,
            irq,
            total,
            seq0,
            slots,
            sub,
            ims,
            board,
            polled_members,
            all_done,
            polled_all_ok: None,
            works: Vec::with_capacity(batch),
            free: (0..p.groups).rev().collect(),
            inflight: VecDeque::with_capacity(p.groups),
            in_irq: VecDeque::with_capacity(p.groups),
            issued: 0,
            done: 0,
            stuck: false,
            p,
        })
    }

    /// Submits on every free group until all submissions are made (each through its timed
    /// section, the one for the case's completion kind and batch size). A refused
    /// submission counts as finished with errors; one refused for another reason than a
    /// full queue makes the run stuck.
    #[inline(always)]
    fn fill_pipeline(&mut self, res: &mut CpuResult) {
        let batch = self.batch;
        while self.issued < self.total && !self.free.is_empty() {
            let g = self.free.pop().unwrap_or(0);
            self.works.clear();
            let (slots, seq0, issued) = (&mut self.slots, self.seq0, self.issued);
            self.works.extend(
                (0..batch)
                    .map(|j| slots[g * batch + j].prepare(seq0 + (issued * batch + j) as u64)),
            );
            let works = &self.works;
            let sub = &mut self.sub;
            let r = if self.irq {
                self.board[g].ready.store(false, Ordering::Relaxed);
                let cb = Callback {
                    f: on_complete,
                    cookie: &self.board[g] as *const GroupDone as usize,
                };
                // Interrupts off: a completion interrupt must not land inside the
                // measured submit section (its cost is the completion path's). The
                // section is the driver call alone (the case's choices are made first).
                // The route is a constant of each timed section (as at a driver call site
                // that knows its completion kind), not a run-time argument.
                let (r, t0, t1) = match (batch == 1, self.ims.is_some()) {
                    (true, true) => timed::submit_cb::<true>(sub, &works[0], cb),
                    (true, false) => timed::submit_cb::<false>(sub, &works[0], cb),
                    (false, true) => timed::submit_batch_cb::<true>(sub, works, cb),
                    (false, false) => timed::submit_batch_cb::<false>(sub, works, cb),
                };
                r.map(|()| (None, t1.wrapping_sub(t0)))
            } else {
                let (r, t0, t1) = if batch == 1 {
                    timed::submit(sub, &works[0])
                } else {
                    timed::submit_batch(sub, works)
                };
                r.map(|t| (Some(t), t1.wrapping_sub(t0)))
            };
            self.issued += 1;
            match r {
                Ok((tok, dt)) => {
                    res.submit_calls += 1;
                    res.submit_descs += batch as u64;
                    res.submit_tsc += dt;
                    match tok {
                        Some(t) => self.inflight.push_back((t, g)),
                        None => self.in_irq.push_back(g),
                    }
                }
                Err(e) => {
                    res.errors += batch as u64;
                    res.ops += batch as u64;
                    res.note(|| alloc::format!("submit: {e}"));
                    self.free.push(g);
                    self.done += 1;
                    if !matches!(e, OpError::QueueFull | OpError::NoFreeSlot) {
                        self.stuck = true;
                        break;
                    }
                }
            }
        }
    }

    /// Takes one completion: in interrupt mode the first group whose callback has run, in
    /// polling mode the oldest submission, polled through its timed section (only the
    /// call that finds it done is counted). Waits are bounded: a completion that never
    /// comes makes the run stuck and yields group `usize::MAX`. None: nothing in flight.
    #[inline(always)]
    fn take_completion(&mut self, res: &mut CpuResult) -> Option<(usize, Result<Output, OpError>)> {
        let batch = self.batch;
        let bound = Duration::from_nanos(COMPLETION_TIMEOUT_NS);
        let taken = if self.irq {
            if self.in_irq.is_empty() {
                return None;
            }
            let (in_irq, board) = (&self.in_irq, &self.board);
            let ready = crate::time::wait_until(bound, || {
                in_irq
                    .iter()
                    .position(|&g| board[g].ready.load(Ordering::Acquire))
            });
            match ready {
                Ok(i) => {
                    let g = self.in_irq.remove(i).unwrap_or(usize::MAX);
                    // SAFETY: `ready` was set by the group's callback, which wrote the result
                    // before it (see `GroupDone`); the group is not resubmitted yet.
                    let r = unsafe {
                        core::mem::replace(&mut *self.board[g].result.get(), Ok(Output::Done))
                    };
                    (g, r)
                }
                Err(_) => {
                    self.stuck = true;
                    (usize::MAX, Err(OpError::Timeout))
                }
            }
        } else {
            let &(tok, g) = self.inflight.front()?;
            let out = &mut self.polled_members[g];
            let sub = &mut self.sub;
            let polled_all_ok = &mut self.polled_all_ok;
            let polled = crate::time::wait_until(bound, || {
                let (r, t0, t1) = if batch == 1 {
                    timed::poll(sub, tok)
                } else {
                    let (r, t0, t1) = timed::poll_batch(sub, tok, out);
                    *polled_all_ok = match r {
                        Some(Ok(d)) if d.all_ok => Some(d.members),
                        _ => None,
                    };
                    (r.map(|r| r.map(|_| Output::Done)), t0, t1)
                };
                // Only the call that finds the operation done is counted.
                r.map(|r| (r, t1.wrapping_sub(t0)))
            });
            match polled {
                Ok((r, dt)) => {
                    res.completion_tsc += dt;
                    res.completion_descs += batch as u64;
                    self.inflight.pop_front();
                    (g, r)
                }
                Err(_) => {
                    self.stuck = true;
                    (usize::MAX, Err(OpError::Timeout))
                }
            }
        };
        Some(taken)
    }

    /// Accounts and verifies finished group `g` (its result `r`, and for a batch its
    /// members' results from where its completion path left them), then frees the group.
    #[inline(always)]
    fn settle_group(&mut self, res: &mut CpuResult, g: usize, r: Result<Output, OpError>) {
        let batch = self.batch;
        let members: &[Result<Output, OpError>] = if batch == 1 {
            &[]
        } else if self.irq {
            // SAFETY: as in `take_completion`: written by the callback before `ready`, not
            // resubmitted yet.
            unsafe { &*self.board[g].members.get() }
        } else if let Some(n) = self.polled_all_ok.take() {
            // Every member succeeded (the count is checked by `settle`).
            &self.all_done[..n.min(batch)]
        } else {
            &self.polled_members[g]
        };
        settle(
            res,
            &self.slots[g * batch..(g + 1) * batch],
            r,
            members,
            self.p.verify,
            self.p.case.size,
        );
        self.free.push(g);
    }

    /// Ends the run: in interrupt mode every operation's completion came through the
    /// interrupt path; releases the IMS handle and the submitter. A stuck run leaks its
    /// buffers and board, which descriptors still in flight may write.
    fn finish(self, res: &mut CpuResult) {
        if self.irq {
            res.completion_descs = res.ops;
        }
        let Run {
            slots,
            sub,
            ims,
            board,
            stuck,
            ..
        } = self;
        if let Some(h) = ims
            && let Err(e) = h.release()
        {
            res.errors += 1;
            res.note(|| alloc::format!("IMS handle release: {e}"));
        }
        drop(sub);
        if stuck {
            // Descriptors may still be in flight: the device could write these buffers later,
            // and their callbacks may still write the board.
            core::mem::forget(slots);
            core::mem::forget(board);
        }
    }
}

/// The measured driver calls: each runs with interrupts off between two TSC reads (a
/// completion interrupt must not land inside a measured section: its cost is the
/// completion path's). A section holds the call alone: what to call is decided by the
/// caller, and each is a function of its own so that the runner's loop (and its register
/// pressure) stays out of it.
mod timed {
    use super::{rdtsc, without_interrupts};
    use dsa::{BatchDone, Callback, Notify, OpError, Output, Submitter, Token, Work};

    type Timed<R> = (R, u64, u64);

    #[inline(never)]
    pub fn submit(sub: &mut Submitter, w: &Work) -> Timed<Result<Token, OpError>> {
        without_interrupts(|| {
            let t0 = rdtsc();
            let r = sub.submit(w, Notify::Poll);
            (r, t0, rdtsc())
        })
    }

    #[inline(never)]
    pub fn submit_batch(sub: &mut Submitter, ws: &[Work]) -> Timed<Result<Token, OpError>> {
        without_interrupts(|| {
            let t0 = rdtsc();
            let r = sub.submit_batch(ws, Notify::Poll);
            (r, t0, rdtsc())
        })
    }

    #[inline(never)]
    pub fn submit_cb<const IMS: bool>(
        sub: &mut Submitter,
        w: &Work,
        cb: Callback,
    ) -> Timed<Result<(), OpError>> {
        without_interrupts(|| {
            // `IMS`: the bound IMS handle (else the WQ's MSI-X entry); a constant inside
            // the section.
            let notify = if IMS { Notify::Ims } else { Notify::Msix };
            let t0 = rdtsc();
            let r = sub.submit_cb(w, notify, cb);
            (r, t0, rdtsc())
        })
    }

    #[inline(never)]
    pub fn submit_batch_cb<const IMS: bool>(
        sub: &mut Submitter,
        ws: &[Work],
        cb: Callback,
    ) -> Timed<Result<(), OpError>> {
        without_interrupts(|| {
            // `IMS`: the bound IMS handle (else the WQ's MSI-X entry); a constant inside
            // the section.
            let notify = if IMS { Notify::Ims } else { Notify::Msix };
            let t0 = rdtsc();
            let r = sub.submit_batch_cb(ws, notify, cb);
            (r, t0, rdtsc())
        })
    }

    #[inline(never)]
    pub fn poll(sub: &mut Submitter, t: Token) -> Timed<Option<Result<Output, OpError>>> {
        without_interrupts(|| {
            let t0 = rdtsc();
            let r = sub.poll(t);
            (r, t0, rdtsc())
        })
    }

    #[inline(never)]
    pub fn poll_batch(
        sub: &mut Submitter,
        t: Token,
        out: &mut [Result<Output, OpError>],
    ) -> Timed<Option<Result<BatchDone, OpError>>> {
        without_interrupts(|| {
            let t0 = rdtsc();
            let r = sub.poll_batch_summary(t, out);
            (r, t0, rdtsc())
        })
    }
}

/// Accounts one finished submission (single or batch: `members` holds its results).
fn settle(
    res: &mut CpuResult,
    slots: &[OpSlot],
    r: Result<Output, OpError>,
    members: &[Result<Output, OpError>],
    verify: bool,
    size: u32,
) {
    let n = slots.len();
    res.ops += n as u64;
    if let Err(e) = &r {
        res.errors += n as u64;
        res.note(|| alloc::format!("{}: {e}", if n == 1 { "operation" } else { "batch" }));
        return;
    }
    let single = [r];
    let results: &[Result<Output, OpError>] = if n == 1 { &single } else { members };
    if results.len() != n {
        res.errors += n as u64;
        res.note(|| alloc::format!("batch: {} results for {n} members", results.len()));
        return;
    }
    for (s, m) in slots.iter().zip(results) {
        if let Err(e) = m {
            res.errors += 1;
            res.note(|| alloc::format!("operation: {e}"));
            continue;
        }
        res.bytes += size as u64;
        if verify && let Err(Mismatch(why)) = s.verify(m) {
            res.verify_failures += 1;
            res.note(|| alloc::format!("verification: {why}"));
        }
    }
}

/// An IMS handle for the client owning `space` on the current CPU, fed by and bound to
/// `sub` (its `Notify::Ims` submissions carry and arm it).
fn ims_handle(
    p: &Plan,
    space: &Arc<ClientSpace>,
    sub: &mut Submitter,
) -> Result<ims::ImsHandle, crate::ims::ClientError> {
    let chip = crate::ims::device_ims(p.dev)?;
    let client = crate::ims::Client::new(space.clone())?;
    let cpu = crate::arch::percpu::current_index();
    client.allocate_bound_on(&chip, cpu, sub)
}
