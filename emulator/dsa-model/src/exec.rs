//! Descriptor validation and execution (DSA spec §5.4, §8.1–§8.3).

use crate::device::{Device, Job, Scratch};
use crate::{TraceEvent, pci};
use dsa_fault_inject::inject_kind;
use dsa_spec::completion::CR_ALIGN;
use dsa_spec::crc::{Crc32c, CrcMode};
use dsa_spec::delta::{self, ENTRY_SIZE, WORD};
use dsa_spec::dif::{self, BlockTags, DestDifFlags, DifBlockSize, DifFlags, Pi, SrcDifFlags};
use dsa_spec::status as st;
use dsa_spec::tables::WqMode;
use dsa_spec::{
    CompletionRecord, DescFlags, Descriptor, GenCap, GenCfg, Opcode, SwErr, SwErrFlags,
};

/// What a descriptor produced; turned into a CR or a SWERROR by [`Device::complete`].
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Outcome {
    status: u8,
    result: u8,
    bytes: u32,
    fault_addr: u64,
    fault_write: bool,
    /// Completion-record bytes 16–31, set through the record's named setters (its other
    /// fields are unused: they come from the fields above).
    specific: CompletionRecord,
    /// SWERROR error info (word 1 bits 63:32).
    info: u32,
    /// Report through SWERROR even with CRAV (0x1D).
    force_swerr: bool,
}

impl Outcome {
    fn st(status: u8) -> Self {
        Outcome {
            status,
            ..Default::default()
        }
    }
    fn ok() -> Self {
        Self::st(st::SUCCESS)
    }
    fn with_result(mut self, r: u8) -> Self {
        self.result = r;
        self
    }
    fn with_cr(mut self, set: impl FnOnce(&mut CompletionRecord) -> &mut CompletionRecord) -> Self {
        set(&mut self.specific);
        self
    }
}

/// A descriptor being executed: top level, or member `batch_index` of a batch.
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    job: &'a Job,
    batch_index: Option<u16>,
}

/// Bit mask of descriptor bytes `a..=b`.
const fn bytes(a: u32, b: u32) -> u64 {
    ((1u64 << (b - a + 1)) - 1) << a
}

/// A privileged descriptor on a shared WQ needs PASID privileged mode enabled in config space.
fn check_privilege(job: &Job, submitted_to_swq: bool, pci_state: u32) -> Result<(), Outcome> {
    if submitted_to_swq && job.privileged && pci_state & pci::PASID_PRIV == 0 {
        return Err(Outcome {
            force_swerr: true,
            ..Outcome::st(st::PRIVILEGE)
        });
    }
    Ok(())
}

/// Step 3: bytes the operation does not use are zero (§5.5, Table 5-3), and so are PASID
/// bits 30:20 of a descriptor submitted to a shared WQ.
fn check_reserved_fields(
    op: Opcode,
    d: &Descriptor,
    submitted_to_swq: bool,
) -> Result<(), Outcome> {
    let raw = d.to_bytes();
    let used = used_bytes(op) | bytes(0, 15) | bytes(36, 37);
    let reserved_nonzero = raw
        .iter()
        .enumerate()
        .any(|(i, &b)| b != 0 && (used >> i) & 1 == 0)
        || (submitted_to_swq && d.reserved_pasid_bits != 0);
    if reserved_nonzero {
        return Err(Outcome::st(st::NONZERO_RESERVED));
    }
    Ok(())
}

/// Step 4: the transfer size (or a batch's descriptor count) is within the WQ's limits and
/// a multiple of what the operation works in.
fn check_size(job: &Job, op: Opcode, d: &Descriptor) -> Result<(), Outcome> {
    let size = u64::from(d.size);
    let max = 1u64 << job.wqcfg.max_xfer_shift();
    let bad_size = match op {
        Opcode::Noop | Opcode::Drain => false,
        Opcode::Batch => {
            if d.size < 2 || u64::from(d.size) > 1u64 << job.wqcfg.max_batch_shift() {
                return Err(Outcome::st(st::INVALID_DESC_COUNT));
            }
            false
        }
        Opcode::CreateDelta => {
            size == 0 || size > max || !size.is_multiple_of(8) || size > delta::MAX_COMPARE
        }
        Opcode::ApplyDelta => size == 0 || size > max || !size.is_multiple_of(8),
        Opcode::DifCheck | Opcode::DifInsert | Opcode::DifStrip | Opcode::DifUpdate => {
            let g = dif_geom(op, d);
            size == 0 || size > max || !size.is_multiple_of(g.src_step as u64)
        }
        _ => size > max,
    };
    if bad_size {
        return Err(Outcome::st(st::INVALID_XFER_SIZE));
    }
    Ok(())
}

/// Step 7: the completion record address is aligned.
fn check_completion_addr(d: &Descriptor) -> Result<(), Outcome> {
    if d.flags.contains(DescFlags::CRAV) && !d.completion_addr.is_multiple_of(CR_ALIGN) {
        return Err(Outcome {
            fault_addr: d.completion_addr,
            ..Outcome::st(st::CR_ALIGN)
        });
    }
    Ok(())
}

/// Descriptor bytes 16..64 that `op` uses (everything else there is reserved).
fn used_bytes(op: Opcode) -> u64 {
    use Opcode::*;
    let data = bytes(16, 35);
    match op {
        Noop | Drain => 0,
        Batch => bytes(16, 23) | bytes(32, 35),
        MemMove | Fill => data,
        Compare | ComparePattern => data | bytes(40, 40),
        CreateDelta => data | bytes(40, 51) | bytes(56, 56),
        ApplyDelta => data | bytes(40, 43),
        Dualcast => data | bytes(40, 47),
        CrcGen => bytes(16, 23) | bytes(32, 35) | bytes(40, 43) | bytes(48, 55),
        CopyCrc => data | bytes(40, 43) | bytes(48, 55),
        DifCheck => bytes(16, 23) | bytes(32, 35) | bytes(40, 40) | bytes(42, 42) | bytes(48, 55),
        DifInsert => data | bytes(41, 42) | bytes(56, 63),
        DifStrip => data | bytes(40, 40) | bytes(42, 42) | bytes(48, 55),
        DifUpdate => data | bytes(40, 42) | bytes(48, 63),
        CacheFlush => bytes(24, 35),
        _ => 0,
    }
}

fn overlap(a: u64, b: u64, alen: u64, blen: u64) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    alen > 0 && blen > 0 && a < b + u128::from(blen) && b < a + u128::from(alen)
}

/// Length of the next DMA piece: at most `chunk`, `remaining`, and never across 2^64.
fn seg(addrs: &[u64], remaining: u64, chunk: usize) -> usize {
    let mut n = remaining.min(chunk as u64);
    for &a in addrs {
        if a != 0 {
            n = n.min(0u64.wrapping_sub(a));
        }
    }
    n as usize
}

fn ensure(s: &mut Scratch, n: usize) {
    if s.a.len() < n {
        s.a.resize(n, 0);
    }
    if s.b.len() < n {
        s.b.resize(n, 0);
    }
}

struct DifGeom {
    bs: usize,
    src_step: usize,
    dst_step: usize,
}

fn dif_geom(op: Opcode, d: &Descriptor) -> DifGeom {
    let bs = DifBlockSize::from_flags(DifFlags::from_bits_retain(d.dif_flags())).bytes() as usize;
    let pi = bs + dif::PI_SIZE;
    match op {
        Opcode::DifInsert => DifGeom {
            bs,
            src_step: bs,
            dst_step: pi,
        },
        Opcode::DifStrip => DifGeom {
            bs,
            src_step: pi,
            dst_step: bs,
        },
        Opcode::DifCheck => DifGeom {
            bs,
            src_step: pi,
            dst_step: 0,
        },
        _ => DifGeom {
            bs,
            src_step: pi,
            dst_step: pi,
        },
    }
}

/// Running tag state of a DIF operation.
#[derive(Clone, Copy)]
struct Tags {
    src: BlockTags,
    dst: BlockTags,
}

impl Device {
    fn rd(&self, job: &Job, addr: u64, buf: &mut [u8]) -> usize {
        let n = self
            .platform
            .dma_read(job.space(), addr, buf)
            .min(buf.len());
        if n < buf.len() {
            self.platform.trace(TraceEvent::Fault {
                pasid: job.request_pasid(),
                addr: addr.wrapping_add(n as u64),
                is_write: false,
                bytes_done: n as u64,
            });
        }
        n
    }

    fn wr(&self, job: &Job, addr: u64, buf: &[u8]) -> usize {
        let n = self
            .platform
            .dma_write(job.space(), addr, buf)
            .min(buf.len());
        if n < buf.len() {
            self.platform.trace(TraceEvent::Fault {
                pasid: job.request_pasid(),
                addr: addr.wrapping_add(n as u64),
                is_write: true,
                bytes_done: n as u64,
            });
        }
        n
    }

    /// Page fault outcome: 0x03, or 0x04 when block-on-fault applies (no PRS to resolve it).
    fn fault(&self, job: &Job, d: &Descriptor, addr: u64, write: bool, done: u64) -> Outcome {
        let bof = d.flags.contains(DescFlags::BLOCK_ON_FAULT)
            && job.wqcfg.bof()
            && self.caps.gencap.contains(GenCap::BLOCK_ON_FAULT);
        Outcome {
            status: if bof {
                st::PAGE_FAULT_PRS
            } else {
                st::PAGE_FAULT_PARTIAL
            },
            bytes: done as u32,
            fault_addr: addr,
            fault_write: write,
            ..Default::default()
        }
    }

    fn trace_desc(&self, job: &Job, d: &Descriptor) {
        self.platform.trace(TraceEvent::Desc {
            wq: job.wq as u32,
            opcode: d.opcode,
            flags: d.flags.bits(),
            pasid: job.request_pasid(),
            privileged: job.privileged,
        });
    }

    /// Executes a descriptor taken from a WQ.
    pub(crate) fn execute_top(&self, job: Job, s: &mut Scratch) {
        let d = Descriptor::from_bytes(&job.desc);
        self.trace_desc(&job, &d);
        let ctx = Ctx {
            job: &job,
            batch_index: None,
        };
        if d.opcode == Opcode::Drain as u8 {
            match self.validate(ctx, &d) {
                Err(o) => self.complete(ctx, &d, &o),
                Ok(()) => {
                    if self.park_drain(&job) {
                        // Completed by whoever finishes the last descriptor it waits for.
                        return;
                    }
                    self.complete_drain(&job, s);
                }
            }
        } else {
            self.run_desc(ctx, &d, s);
        }
        self.finish_job(job.gseq, s);
    }

    /// Completes a Drain descriptor whose predecessors are done.
    pub(crate) fn complete_drain(&self, job: &Job, _s: &mut Scratch) {
        let d = Descriptor::from_bytes(&job.desc);
        self.complete(
            Ctx {
                job,
                batch_index: None,
            },
            &d,
            &Outcome::ok(),
        );
    }

    fn delay(&self) {
        let us = self.lock().fi.delay_us;
        if us > 0 {
            std::thread::sleep(std::time::Duration::from_micros(u64::from(us)));
        }
    }

    fn injected(&self, d: &Descriptor) -> Option<Outcome> {
        if !self.cfg.fault_injection {
            return None;
        }
        let status = {
            let mut g = self.lock();
            let f = &mut g.fi;
            if f.count == 0 || (f.opcode & 0x100 != 0 && (f.opcode & 0xFF) as u8 != d.opcode) {
                return None;
            }
            f.count -= 1;
            f.status
        };
        self.platform.trace(TraceEvent::Inject {
            kind: inject_kind::STATUS,
            a: u64::from(status),
            b: u64::from(d.opcode),
        });
        let mut o = Outcome::st(status);
        if matches!(
            status,
            st::PAGE_FAULT_PARTIAL | st::PAGE_FAULT_PRS | st::BATCH_PAGE_FAULT
        ) {
            o.fault_addr = d.addr1;
        }
        Some(o)
    }

    /// Validates, executes and completes one descriptor; returns its status.
    fn run_desc(&self, ctx: Ctx<'_>, d: &Descriptor, s: &mut Scratch) -> u8 {
        let o = match self.validate(ctx, d) {
            Err(o) => o,
            Ok(()) => match self.injected(d) {
                Some(o) => o,
                None => self.exec_op(ctx, d, s),
            },
        };
        self.delay();
        self.complete(ctx, d, &o);
        o.status
    }

    /// The §5.4 descriptor checks, in the model's order.
    fn validate(&self, ctx: Ctx<'_>, d: &Descriptor) -> Result<(), Outcome> {
        let job = ctx.job;
        let in_batch = ctx.batch_index.is_some();
        // Batch members were submitted by the batch descriptor: the portal-level checks
        // (privilege, PASID bits of a shared WQ's descriptor) do not apply to them.
        let submitted_to_swq = !in_batch && job.wqcfg.mode() == WqMode::Shared;
        let (pci_state, gencfg) = {
            let g = self.lock();
            (g.pci, self.bar0_gencfg(&g))
        };
        check_privilege(job, submitted_to_swq, pci_state)?;
        let op = self.check_opcode(d, in_batch)?;
        self.check_flags(job, op, d, gencfg)?;
        check_reserved_fields(op, d, submitted_to_swq)?;
        check_size(job, op, d)?;
        self.check_addresses(op, d)?;
        self.check_int_handle(job, d)?;
        check_completion_addr(d)
    }

    /// Step 1: the opcode is in OPCAP, and a batch holds neither batches nor drains.
    fn check_opcode(&self, d: &Descriptor, in_batch: bool) -> Result<Opcode, Outcome> {
        match Opcode::from_u8(d.opcode) {
            Some(op)
                if self.caps.opcap.supports(d.opcode)
                    && !(in_batch && matches!(op, Opcode::Batch | Opcode::Drain)) =>
            {
                Ok(op)
            }
            _ => Err(Outcome::st(st::UNSUPPORTED_OPCODE)),
        }
    }

    /// Step 2: every flag set is one this operation and GENCAP allow, and the flags the
    /// operation requires are set (Table 5-3, Table 5-5); a completion interrupt from an
    /// unprivileged PASID needs GENCFG.USER_INT_ENABLE.
    fn check_flags(
        &self,
        job: &Job,
        op: Opcode,
        d: &Descriptor,
        gencfg: GenCfg,
    ) -> Result<(), Outcome> {
        let valid = self.valid_flags(op);
        let mut invalid = d.flags.bits() & !valid.bits() & dsa_spec::desc::FLAGS_MASK;
        let needs_cr = matches!(
            op,
            Opcode::Compare
                | Opcode::ComparePattern
                | Opcode::CreateDelta
                | Opcode::CrcGen
                | Opcode::CopyCrc
                | Opcode::DifCheck
        );
        if needs_cr && !d.flags.contains(DescFlags::CRAV | DescFlags::RCR) {
            invalid |= (DescFlags::CRAV | DescFlags::RCR).bits() & !d.flags.bits();
        }
        if op == Opcode::Drain && !d.flags.intersects(DescFlags::RCR | DescFlags::RCI) {
            invalid |= DescFlags::RCR.bits();
        }
        if d.flags.contains(DescFlags::RCI)
            && !gencfg.contains(GenCfg::USER_INT_ENABLE)
            && job.wqcfg.pasid_en()
            && !job.privileged
        {
            invalid |= DescFlags::RCI.bits();
        }
        if invalid != 0 {
            return Err(Outcome {
                info: invalid,
                ..Outcome::st(st::INVALID_FLAGS).with_cr(|c| c.set_invalid_flags(invalid))
            });
        }
        Ok(())
    }

    /// The flags `op` may carry on this device: the common ones, those GENCAP enables, and
    /// the operation-specific ones.
    fn valid_flags(&self, op: Opcode) -> DescFlags {
        let gc = self.caps.gencap;
        let mut valid = DescFlags::FENCE
            | DescFlags::CRAV
            | DescFlags::RCR
            | DescFlags::RCI
            | DescFlags::ADDR1_TC_B
            | DescFlags::ADDR2_TC_B
            | DescFlags::ADDR3_TC_B
            | DescFlags::CR_TC_B
            | DescFlags::STRICT_ORDERING;
        if gc.contains(GenCap::BLOCK_ON_FAULT) {
            valid |= DescFlags::BLOCK_ON_FAULT;
        }
        if gc.contains(GenCap::CACHE_CONTROL_MEM) {
            valid |= DescFlags::CACHE_CONTROL;
        }
        if gc.contains(GenCap::DEST_READBACK) {
            valid |= DescFlags::DEST_READBACK;
        }
        match op {
            Opcode::Compare | Opcode::ComparePattern | Opcode::CreateDelta => {
                valid |= DescFlags::CHECK_RESULT;
            }
            Opcode::CrcGen | Opcode::CopyCrc => {
                valid |= DescFlags::CRC_SEED_FROM_MEM
                    | DescFlags::CRC_BYPASS_INV_REFL
                    | DescFlags::CRC_BYPASS_DATA_REFL;
            }
            Opcode::Drain => {
                valid |= DescFlags::DRAIN_SUPPRESS_TC_A | DescFlags::DRAIN_SUPPRESS_TC_B;
            }
            _ => {}
        }
        valid
    }

    /// Step 5: alignment, overlap, dualcast and delta-record parameters.
    fn check_addresses(&self, op: Opcode, d: &Descriptor) -> Result<(), Outcome> {
        let size = u64::from(d.size);
        let err = match op {
            Opcode::Batch if !d.addr1.is_multiple_of(64) => Some(st::LIST_ALIGN),
            Opcode::MemMove
                if !self.caps.gencap.contains(GenCap::OVERLAPPING_COPY)
                    && overlap(d.addr1, d.addr2, size, size) =>
            {
                Some(st::OVERLAP)
            }
            Opcode::Dualcast => {
                if d.addr2 & 0xFFF != d.dst2() & 0xFFF {
                    Some(st::DUALCAST_ALIGN)
                } else if overlap(d.addr1, d.addr2, size, size)
                    || overlap(d.addr1, d.dst2(), size, size)
                    || overlap(d.addr2, d.dst2(), size, size)
                {
                    Some(st::OVERLAP)
                } else {
                    None
                }
            }
            Opcode::CreateDelta => {
                let m = d.max_delta_size();
                if !d.addr1.is_multiple_of(8) || !d.addr2.is_multiple_of(8) {
                    Some(st::MISALIGNED_ADDR)
                } else if !delta::max_record_size_valid(m) {
                    Some(st::INVALID_DELTA_SIZE)
                } else {
                    None
                }
            }
            Opcode::ApplyDelta => {
                let r = d.delta_record_size();
                if !d.addr2.is_multiple_of(8) {
                    Some(st::MISALIGNED_ADDR)
                } else if !delta::record_size_valid(r) {
                    Some(st::INVALID_DELTA_SIZE)
                } else {
                    None
                }
            }
            Opcode::CrcGen | Opcode::CopyCrc
                if d.flags.contains(DescFlags::CRC_SEED_FROM_MEM)
                    && !d.crc_seed_addr().is_multiple_of(4) =>
            {
                Some(st::MISALIGNED_ADDR)
            }
            Opcode::CopyCrc if overlap(d.addr1, d.addr2, size, size) => Some(st::OVERLAP),
            Opcode::DifInsert | Opcode::DifStrip | Opcode::DifUpdate => {
                let g = dif_geom(op, d);
                let dlen = size / g.src_step as u64 * g.dst_step as u64;
                overlap(d.addr1, d.addr2, size, dlen).then_some(st::OVERLAP)
            }
            _ => None,
        };
        err.map_or(Ok(()), |e| Err(Outcome::st(e)))
    }

    /// Step 6: a requested completion interrupt names a handle this submitter may use
    /// (Table 5-2).
    fn check_int_handle(&self, job: &Job, d: &Descriptor) -> Result<(), Outcome> {
        if d.flags.contains(DescFlags::RCI) && !self.handle_ok(job, d.int_handle) {
            return Err(Outcome {
                info: u32::from(d.int_handle),
                ..Outcome::st(st::INVALID_INT_HANDLE)
            });
        }
        Ok(())
    }

    /// Logs a descriptor error in SWERROR.
    fn desc_swerr(
        &self,
        ctx: Ctx<'_>,
        d: &Descriptor,
        code: u8,
        info: u32,
        addr: u64,
        write: bool,
    ) {
        let job = ctx.job;
        let mut f = SwErrFlags::VALID | SwErrFlags::DESC_VALID | SwErrFlags::WQ_INDEX_VALID;
        if ctx.batch_index.is_some() {
            f |= SwErrFlags::BATCH;
        }
        if write {
            f |= SwErrFlags::FAULT_RW;
        }
        if job.privileged {
            f |= SwErrFlags::PRIV;
        }
        if info != 0 {
            f |= SwErrFlags::ERROR_INFO_VALID;
        }
        let w0 = SwErr::word0(
            f,
            code,
            job.wq as u8,
            d.opcode,
            job.request_pasid().unwrap_or(0),
        );
        let w1 = u64::from(ctx.batch_index.unwrap_or(0)) | u64::from(info) << 32;
        let mut acts = Vec::new();
        {
            let mut g = self.lock();
            if g.epoch != job.epoch {
                return;
            }
            self.swerr(&mut g, w0, w1, addr, &mut acts);
        }
        self.run(acts);
    }

    /// Writes the CR (or SWERROR) and sends the completion interrupt.
    fn complete(&self, ctx: Ctx<'_>, d: &Descriptor, o: &Outcome) {
        let job = ctx.job;
        if self.lock().epoch != job.epoch {
            return;
        }
        let status = o.status;
        let crav = d.flags.contains(DescFlags::CRAV);
        if o.force_swerr {
            self.desc_swerr(ctx, d, status, o.info, o.fault_addr, o.fault_write);
        } else if crav && (d.flags.contains(DescFlags::RCR) || status != st::SUCCESS) {
            let cra = d.completion_addr;
            if !cra.is_multiple_of(CR_ALIGN) {
                self.desc_swerr(ctx, d, st::CR_ALIGN, 0, cra, true);
            } else {
                let cr = CompletionRecord {
                    status: status | if o.fault_write { st::FAULT_WRITE } else { 0 },
                    result: o.result,
                    fault_info: 0,
                    bytes_completed: o.bytes,
                    fault_addr: o.fault_addr,
                    op_specific: o.specific.op_specific,
                };
                let b = cr.to_bytes();
                // Bytes 1..31 first, then the status byte software polls.
                let n = self.wr(job, cra.wrapping_add(1), &b[1..]);
                let n0 = if n == b.len() - 1 {
                    self.wr(job, cra, &b[..1])
                } else {
                    0
                };
                if n0 != 1 {
                    let at = if n == b.len() - 1 {
                        cra
                    } else {
                        cra.wrapping_add(1 + n as u64)
                    };
                    self.desc_swerr(ctx, d, st::CR_PAGE_FAULT, 0, at, true);
                }
            }
        } else if !crav
            && !matches!(
                status,
                st::SUCCESS | st::SUCCESS_FALSE_PREDICATE | st::BATCH_FAIL
            )
        {
            self.desc_swerr(ctx, d, status, o.info, o.fault_addr, o.fault_write);
        }
        self.platform.trace(TraceEvent::Completion {
            wq: job.wq as u32,
            opcode: d.opcode,
            status,
            bytes: o.bytes,
        });
        let rci_refused = status == st::INVALID_INT_HANDLE
            || (status == st::INVALID_FLAGS && o.info & DescFlags::RCI.bits() != 0);
        if d.flags.contains(DescFlags::RCI) && !rci_refused {
            self.completion_irq(job, d.int_handle);
        }
    }

    fn check_result(d: &Descriptor, result: u8) -> u8 {
        if !d.flags.contains(DescFlags::CHECK_RESULT) {
            return st::SUCCESS;
        }
        let pass = if d.opcode == Opcode::CreateDelta as u8 {
            (d.expected_result_mask() >> result) & 1 == 1
        } else {
            result == d.expected_result() & 1
        };
        if pass {
            st::SUCCESS
        } else {
            st::SUCCESS_FALSE_PREDICATE
        }
    }

    fn exec_op(&self, ctx: Ctx<'_>, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let Some(op) = Opcode::from_u8(d.opcode) else {
            return Outcome::st(st::UNSUPPORTED_OPCODE);
        };
        let chunk = self.cfg.dma_chunk;
        // At least one protected DIF block (4104 + 8) fits, whatever the chunk size.
        ensure(s, chunk.min(d.size as usize).max(4104 + 8));
        match op {
            Opcode::Noop | Opcode::CacheFlush => Outcome::ok(),
            Opcode::MemMove => self.op_memmove(ctx.job, d, s),
            Opcode::Fill => self.op_fill(ctx.job, d, s),
            Opcode::Compare => self.op_compare(ctx.job, d, s, false),
            Opcode::ComparePattern => self.op_compare(ctx.job, d, s, true),
            Opcode::CreateDelta => self.op_create_delta(ctx.job, d, s),
            Opcode::ApplyDelta => self.op_apply_delta(ctx.job, d, s),
            Opcode::Dualcast => self.op_dualcast(ctx.job, d, s),
            Opcode::CrcGen => self.op_crc(ctx.job, d, s, false),
            Opcode::CopyCrc => self.op_crc(ctx.job, d, s, true),
            Opcode::DifCheck | Opcode::DifInsert | Opcode::DifStrip | Opcode::DifUpdate => {
                self.op_dif(ctx.job, op, d, s)
            }
            Opcode::Batch => self.op_batch(ctx, d, s),
            _ => Outcome::st(st::UNSUPPORTED_OPCODE),
        }
    }

    fn scratch_len(&self, s: &Scratch) -> usize {
        s.a.len().min(s.b.len()).min(self.cfg.dma_chunk)
    }

    fn op_memmove(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let (src, dst, size) = (d.addr1, d.addr2, u64::from(d.size));
        let chunk = self.scratch_len(s);
        if overlap(src, dst, size, size) && dst > src {
            return self.memmove_backward(job, d, s);
        }
        let mut off = 0u64;
        while off < size {
            let (a, b) = (src.wrapping_add(off), dst.wrapping_add(off));
            let n = seg(&[a, b], size - off, chunk);
            let buf = &mut s.a[..n];
            let got = self.rd(job, a, buf);
            let put = self.wr(job, b, &buf[..got]);
            if put < got {
                return self.fault(job, d, b.wrapping_add(put as u64), true, off + put as u64);
            }
            if got < n {
                return self.fault(job, d, a.wrapping_add(got as u64), false, off + got as u64);
            }
            off += n as u64;
        }
        Outcome::ok()
    }

    /// Overlapping copy with dst > src: from the end, destination one page at a time, so that
    /// bytes completed is always a suffix and a partial write never destroys needed source.
    fn memmove_backward(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let (src, dst, size) = (d.addr1, d.addr2, u64::from(d.size));
        let chunk = self.scratch_len(s) as u64;
        let mut end = size;
        while end > 0 {
            let start = end - chunk.min(end);
            let n = (end - start) as usize;
            let got = self.rd(job, src.wrapping_add(start), &mut s.a[..n]);
            if got < n {
                let addr = src.wrapping_add(start + got as u64);
                return self.fault(job, d, addr, false, size - end).with_result(1);
            }
            let mut e = end;
            while e > start {
                let last = dst.wrapping_add(e - 1);
                let in_page = ((last & 0xFFF) + 1).min(e - start);
                let ps = e - in_page;
                let piece = &s.a[(ps - start) as usize..(e - start) as usize];
                let put = self.wr(job, dst.wrapping_add(ps), piece);
                if put < piece.len() {
                    let addr = dst.wrapping_add(ps + put as u64);
                    return self.fault(job, d, addr, true, size - e).with_result(1);
                }
                e = ps;
            }
            end = start;
        }
        Outcome::ok().with_result(1)
    }

    fn op_fill(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let (dst, size) = (d.addr2, u64::from(d.size));
        let chunk = self.scratch_len(s);
        let pat = d.fill_pattern().to_le_bytes();
        let fill_len = chunk.min(size as usize);
        for (i, b) in s.a[..fill_len].iter_mut().enumerate() {
            *b = pat[i % 8];
        }
        let mut off = 0u64;
        while off < size {
            let a = dst.wrapping_add(off);
            // Pieces start at multiples of 8 from the start (chunk is a multiple of 8, and a
            // wrap split only happens at address 0), so the pattern phase is preserved except
            // after a wrap, which no real buffer does.
            let n = seg(&[a], size - off, chunk);
            let put = self.wr(job, a, &s.a[..n]);
            if put < n {
                return self.fault(job, d, a.wrapping_add(put as u64), true, off + put as u64);
            }
            off += n as u64;
        }
        Outcome::ok()
    }

    fn op_compare(&self, job: &Job, d: &Descriptor, s: &mut Scratch, pattern: bool) -> Outcome {
        let (src1, src2, size) = (d.addr1, d.addr2, u64::from(d.size));
        let chunk = self.scratch_len(s);
        if pattern {
            let pat = d.compare_pattern().to_le_bytes();
            for (i, b) in s.b[..chunk.min(size as usize)].iter_mut().enumerate() {
                *b = pat[i % 8];
            }
        }
        let mut off = 0u64;
        while off < size {
            let a1 = src1.wrapping_add(off);
            let a2 = src2.wrapping_add(off);
            let n = if pattern {
                seg(&[a1], size - off, chunk)
            } else {
                seg(&[a1, a2], size - off, chunk)
            };
            let got1 = self.rd(job, a1, &mut s.a[..n]);
            let got2 = if pattern {
                n
            } else {
                self.rd(job, a2, &mut s.b[..n])
            };
            let m = got1.min(got2);
            if s.a[..m] != s.b[..m] {
                let i = s.a[..m]
                    .iter()
                    .zip(&s.b[..m])
                    .position(|(x, y)| x != y)
                    .unwrap_or(0) as u64;
                let at = if pattern { (off + i) & !7 } else { off + i };
                let o = Outcome {
                    bytes: at as u32,
                    ..Outcome::ok()
                }
                .with_result(1);
                return Outcome {
                    status: Self::check_result(d, 1),
                    ..o
                };
            }
            if m < n {
                let addr = if got1 <= got2 {
                    a1.wrapping_add(got1 as u64)
                } else {
                    a2.wrapping_add(got2 as u64)
                };
                return self.fault(job, d, addr, false, off + m as u64);
            }
            off += n as u64;
        }
        Outcome::st(Self::check_result(d, 0))
    }

    fn op_create_delta(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        const FLUSH_AT: usize = 6550 * ENTRY_SIZE;
        let (src1, src2, size) = (d.addr1, d.addr2, u64::from(d.size));
        let (rec_addr, max) = (d.delta_record_addr(), u64::from(d.max_delta_size()));
        let chunk = self.scratch_len(s) & !7;
        let mut rec: Vec<u8> = Vec::new();
        let mut flushed = 0u64;
        let mut total = 0u64;
        let mut flushed_cmp = 0u64;
        // Writes the buffered entries; on a fault returns the outcome to report.
        let flush = |rec: &mut Vec<u8>,
                     flushed: &mut u64,
                     flushed_cmp: &mut u64,
                     cmp_now: u64|
         -> Option<Outcome> {
            if rec.is_empty() {
                *flushed_cmp = cmp_now;
                return None;
            }
            let at = rec_addr.wrapping_add(*flushed);
            let put = self.wr(job, at, rec);
            if put < rec.len() {
                // The entries written whole count: the comparison is complete up to the
                // word of the first entry that did not make it (entries are in word
                // order, and the words between two entries compared equal).
                let whole = put / ENTRY_SIZE;
                let (cmp, size) = if whole == 0 {
                    (*flushed_cmp, *flushed)
                } else {
                    let mut e = [0u8; ENTRY_SIZE];
                    e.copy_from_slice(&rec[whole * ENTRY_SIZE..][..ENTRY_SIZE]);
                    let (word, _) = delta::decode(&e);
                    (
                        u64::from(word) * WORD as u64,
                        *flushed + (whole * ENTRY_SIZE) as u64,
                    )
                };
                let o = self.fault(job, d, at.wrapping_add(put as u64), true, cmp);
                return Some(o.with_cr(|c| c.set_delta_record_size(size as u32)));
            }
            *flushed += rec.len() as u64;
            *flushed_cmp = cmp_now;
            rec.clear();
            None
        };
        let mut off = 0u64;
        while off < size {
            let a1 = src1.wrapping_add(off);
            let a2 = src2.wrapping_add(off);
            let n = seg(&[a1, a2], size - off, chunk);
            let got1 = self.rd(job, a1, &mut s.a[..n]);
            let got2 = self.rd(job, a2, &mut s.b[..n]);
            let m = got1.min(got2) & !7;
            if s.a[..m] != s.b[..m] {
                for w in 0..m / WORD {
                    let (x, y) = (&s.a[w * WORD..][..WORD], &s.b[w * WORD..][..WORD]);
                    if x == y {
                        continue;
                    }
                    let here = off + (w * WORD) as u64;
                    if total + ENTRY_SIZE as u64 > max {
                        if let Some(o) = flush(&mut rec, &mut flushed, &mut flushed_cmp, here) {
                            return o;
                        }
                        let o = Outcome {
                            bytes: here as u32,
                            ..Outcome::ok()
                        }
                        .with_result(2)
                        .with_cr(|c| c.set_delta_record_size(total as u32));
                        return Outcome {
                            status: Self::check_result(d, 2),
                            ..o
                        };
                    }
                    let mut new = [0u8; WORD];
                    new.copy_from_slice(y);
                    rec.extend_from_slice(&delta::entry((here / WORD as u64) as u16, &new));
                    total += ENTRY_SIZE as u64;
                    if rec.len() >= FLUSH_AT
                        && let Some(o) =
                            flush(&mut rec, &mut flushed, &mut flushed_cmp, here + WORD as u64)
                    {
                        return o;
                    }
                }
            }
            if m < n {
                if let Some(o) = flush(&mut rec, &mut flushed, &mut flushed_cmp, off + m as u64) {
                    return o;
                }
                let addr = if got1 <= got2 {
                    a1.wrapping_add(got1 as u64)
                } else {
                    a2.wrapping_add(got2 as u64)
                };
                return self
                    .fault(job, d, addr, false, off + m as u64)
                    .with_cr(|c| c.set_delta_record_size(total as u32));
            }
            off += n as u64;
        }
        if let Some(o) = flush(&mut rec, &mut flushed, &mut flushed_cmp, size) {
            return o;
        }
        let result = if total == 0 { 0 } else { 1 };
        Outcome {
            status: Self::check_result(d, result),
            ..Outcome::ok()
        }
        .with_result(result)
        .with_cr(|c| c.set_delta_record_size(total as u32))
    }

    fn op_apply_delta(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let (rec, dst, dsize) = (d.addr1, d.addr2, u64::from(d.size));
        let rsize = u64::from(d.delta_record_size());
        let chunk = (self.scratch_len(s) / ENTRY_SIZE) * ENTRY_SIZE;
        let mut last: Option<u16> = None;
        let mut off = 0u64;
        while off < rsize {
            let a = rec.wrapping_add(off);
            let mut n = seg(&[a], rsize - off, chunk);
            n -= n % ENTRY_SIZE;
            if n == 0 {
                n = ENTRY_SIZE;
            }
            let got = self.rd(job, a, &mut s.a[..n]);
            let entries = got / ENTRY_SIZE;
            for e in 0..entries {
                let mut ent = [0u8; ENTRY_SIZE];
                ent.copy_from_slice(&s.a[e * ENTRY_SIZE..][..ENTRY_SIZE]);
                let (o, new) = delta::decode(&ent);
                let here = (off + (e * ENTRY_SIZE) as u64) as u32;
                if last.is_some_and(|l| o <= l) {
                    return Outcome {
                        bytes: here,
                        ..Outcome::st(st::DELTA_OFFSET_ORDER)
                    };
                }
                if u64::from(o) * WORD as u64 >= dsize {
                    return Outcome {
                        bytes: here,
                        ..Outcome::st(st::DELTA_OFFSET_RANGE)
                    };
                }
                let at = dst.wrapping_add(u64::from(o) * WORD as u64);
                let put = self.wr(job, at, &new);
                if put < WORD {
                    return self.fault(job, d, at.wrapping_add(put as u64), true, u64::from(here));
                }
                last = Some(o);
            }
            if got < n {
                return self.fault(
                    job,
                    d,
                    a.wrapping_add(got as u64),
                    false,
                    off + (entries * ENTRY_SIZE) as u64,
                );
            }
            off += n as u64;
        }
        Outcome::ok()
    }

    fn op_dualcast(&self, job: &Job, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let (src, d1, d2, size) = (d.addr1, d.addr2, d.dst2(), u64::from(d.size));
        let chunk = self.scratch_len(s);
        let mut off = 0u64;
        while off < size {
            let (a, b, c) = (
                src.wrapping_add(off),
                d1.wrapping_add(off),
                d2.wrapping_add(off),
            );
            let n = seg(&[a, b, c], size - off, chunk);
            let got = self.rd(job, a, &mut s.a[..n]);
            // Bytes completed counts only bytes that reached both destinations (software
            // resumes by advancing the source and both destinations by it), so destination
            // 2 gets everything destination 1 took, even when destination 1 stopped short.
            let p1 = self.wr(job, b, &s.a[..got]);
            let p2 = self.wr(job, c, &s.a[..p1]);
            if p2 < p1 {
                return self.fault(job, d, c.wrapping_add(p2 as u64), true, off + p2 as u64);
            }
            if p1 < got {
                return self.fault(job, d, b.wrapping_add(p1 as u64), true, off + p1 as u64);
            }
            if got < n {
                return self.fault(job, d, a.wrapping_add(got as u64), false, off + got as u64);
            }
            off += n as u64;
        }
        Outcome::ok()
    }

    fn op_crc(&self, job: &Job, d: &Descriptor, s: &mut Scratch, copy: bool) -> Outcome {
        let (src, dst, size) = (d.addr1, d.addr2, u64::from(d.size));
        let mode = CrcMode {
            bypass_inv_refl: d.flags.contains(DescFlags::CRC_BYPASS_INV_REFL),
            bypass_data_refl: d.flags.contains(DescFlags::CRC_BYPASS_DATA_REFL),
        };
        let seed = if d.flags.contains(DescFlags::CRC_SEED_FROM_MEM) {
            let mut b = [0u8; 4];
            let got = self.rd(job, d.crc_seed_addr(), &mut b);
            if got < 4 {
                return self.fault(job, d, d.crc_seed_addr().wrapping_add(got as u64), false, 0);
            }
            u32::from_le_bytes(b)
        } else {
            d.crc_seed()
        };
        let mut crc = Crc32c::new(seed, mode);
        let chunk = self.scratch_len(s);
        let mut off = 0u64;
        while off < size {
            let a = src.wrapping_add(off);
            let b = dst.wrapping_add(off);
            let n = if copy {
                seg(&[a, b], size - off, chunk)
            } else {
                seg(&[a], size - off, chunk)
            };
            let got = self.rd(job, a, &mut s.a[..n]);
            if copy {
                let put = self.wr(job, b, &s.a[..got]);
                crc.update(&s.a[..put]);
                if put < got {
                    return self
                        .fault(job, d, b.wrapping_add(put as u64), true, off + put as u64)
                        .with_cr(|c| c.set_crc(crc.value()));
                }
            } else {
                crc.update(&s.a[..got]);
            }
            if got < n {
                return self
                    .fault(job, d, a.wrapping_add(got as u64), false, off + got as u64)
                    .with_cr(|c| c.set_crc(crc.value()));
            }
            off += n as u64;
        }
        Outcome::ok().with_cr(|c| c.set_crc(crc.value()))
    }

    fn dif_tags_cr(op: Opcode, o: Outcome, t: &Tags, d: &Descriptor) -> Outcome {
        let mut o = o;
        if matches!(op, Opcode::DifCheck | Opcode::DifStrip | Opcode::DifUpdate) {
            o = o.with_cr(|c| {
                c.set_dif_src_ref_tag(t.src.ref_tag)
                    .set_dif_src_app_tag_mask(d.src_app_tag_mask())
                    .set_dif_src_app_tag(t.src.app_tag)
            });
        }
        if matches!(op, Opcode::DifInsert | Opcode::DifUpdate) {
            o = o.with_cr(|c| {
                c.set_dif_dest_ref_tag(t.dst.ref_tag)
                    .set_dif_dest_app_tag_mask(d.dest_app_tag_mask())
                    .set_dif_dest_app_tag(t.dst.app_tag)
            });
        }
        o
    }

    fn op_dif(&self, job: &Job, op: Opcode, d: &Descriptor, s: &mut Scratch) -> Outcome {
        let g = dif_geom(op, d);
        let df = DifFlags::from_bits_retain(d.dif_flags());
        let sf = SrcDifFlags::from_bits_retain(d.src_dif_flags());
        let tf = DestDifFlags::from_bits_retain(d.dest_dif_flags());
        let (src, dst) = (d.addr1, d.addr2);
        let nblocks = u64::from(d.size) / g.src_step as u64;
        let mut t = Tags {
            src: BlockTags {
                ref_tag: d.src_ref_tag_seed(),
                app_tag: d.src_app_tag_seed(),
            },
            dst: BlockTags {
                ref_tag: d.dest_ref_tag_seed(),
                app_tag: d.dest_app_tag_seed(),
            },
        };
        let per = (self.scratch_len(s) / (g.bs + dif::PI_SIZE)).max(1) as u64;
        let mut blk = 0u64;
        while blk < nblocks {
            // Tags of block `blk`: a short destination write below reports fewer blocks
            // than this chunk processed, and the record must carry the tags of the first
            // block it does not count (software seeds the resumed descriptor with them).
            let chunk_tags = t;
            let k = per.min(nblocks - blk);
            let a = src.wrapping_add(blk * g.src_step as u64);
            let want = (k as usize) * g.src_step;
            let got = self.rd(job, a, &mut s.a[..want]);
            let full = got / g.src_step;
            let mut produced = 0usize;
            let mut stop: Option<Outcome> = None;
            for i in 0..full {
                let sb = &s.a[i * g.src_step..(i + 1) * g.src_step];
                let data = &sb[..g.bs];
                let mut src_pi = [0u8; dif::PI_SIZE];
                if op != Opcode::DifInsert {
                    src_pi.copy_from_slice(&sb[g.bs..g.bs + dif::PI_SIZE]);
                    let bits = dif::check_block(df, sf, d.src_app_tag_mask(), t.src, data, &src_pi);
                    if bits != 0 {
                        let here = (blk + i as u64) * g.src_step as u64;
                        let o = Outcome {
                            bytes: here as u32,
                            ..Outcome::st(st::DIF_ERROR)
                        }
                        .with_result(bits);
                        stop = Some(Self::dif_tags_cr(op, o, &t, d));
                        break;
                    }
                }
                if op != Opcode::DifCheck {
                    let out = &mut s.b[i * g.dst_step..(i + 1) * g.dst_step];
                    out[..g.bs].copy_from_slice(data);
                    if op != Opcode::DifStrip {
                        let sp = (op == Opcode::DifUpdate).then(|| Pi::from_bytes(&src_pi));
                        let pi = dif::dest_pi(df, tf, d.dest_app_tag_mask(), t.dst, data, sp);
                        out[g.bs..].copy_from_slice(&pi.to_bytes());
                    }
                }
                produced += 1;
                t.src = sf.advance(t.src, 1);
                t.dst = tf.advance(t.dst, 1);
            }
            if op != Opcode::DifCheck && produced > 0 {
                let b = dst.wrapping_add(blk * g.dst_step as u64);
                let len = produced * g.dst_step;
                let put = self.wr(job, b, &s.b[..len]);
                if put < len {
                    let whole = put / g.dst_step;
                    let done = (blk + whole as u64) * g.src_step as u64;
                    let at = Tags {
                        src: sf.advance(chunk_tags.src, whole as u32),
                        dst: tf.advance(chunk_tags.dst, whole as u32),
                    };
                    return Self::dif_tags_cr(
                        op,
                        self.fault(job, d, b.wrapping_add(put as u64), true, done),
                        &at,
                        d,
                    );
                }
            }
            if let Some(o) = stop {
                return o;
            }
            if got < want {
                let done = (blk + full as u64) * g.src_step as u64;
                return Self::dif_tags_cr(
                    op,
                    self.fault(job, d, a.wrapping_add(got as u64), false, done),
                    &t,
                    d,
                );
            }
            blk += k;
        }
        Self::dif_tags_cr(op, Outcome::ok(), &t, d)
    }

    fn op_batch(&self, ctx: Ctx<'_>, d: &Descriptor, s: &mut Scratch) -> Outcome {
        const PER_READ: usize = 64;
        let job = ctx.job;
        let (list, count) = (d.addr1, d.size as usize);
        let mut lb = vec![0u8; PER_READ * 64];
        let mut fetched = 0usize;
        let mut failed = false;
        let mut abandoned = false;
        while fetched < count {
            let k = PER_READ.min(count - fetched);
            let at = list.wrapping_add(fetched as u64 * 64);
            let got = self.rd(job, at, &mut lb[..k * 64]);
            let nd = got / 64;
            for i in 0..nd {
                if self.lock().epoch != job.epoch {
                    return Outcome::st(st::BATCH_FAIL);
                }
                let mut raw = [0u8; 64];
                raw.copy_from_slice(&lb[i * 64..i * 64 + 64]);
                let m = Descriptor::from_bytes(&raw);
                if abandoned || (m.flags.contains(DescFlags::FENCE) && failed) {
                    abandoned = true;
                    continue;
                }
                self.trace_desc(job, &m);
                let mctx = Ctx {
                    job,
                    batch_index: Some((fetched + i) as u16),
                };
                if self.run_desc(mctx, &m, s) != st::SUCCESS {
                    failed = true;
                }
            }
            fetched += nd;
            if nd < k {
                let fault = at.wrapping_add(got as u64);
                return Outcome {
                    bytes: fetched as u32,
                    fault_addr: fault,
                    ..Outcome::st(st::BATCH_PAGE_FAULT)
                };
            }
        }
        let status = if failed || abandoned {
            st::BATCH_FAIL
        } else {
            st::SUCCESS
        };
        Outcome {
            bytes: fetched as u32,
            ..Outcome::st(status)
        }
    }
}
