//! The resume matrix: every operation, every operand (sources, both dualcast destinations,
//! the delta record, the DIF destination, a CRC seed in memory, a batch's descriptor list and
//! its members' operands), every page the operand touches made absent in turn. Each case
//! runs without Block On Fault, takes the partial completion, maps the page and resumes,
//!
//! * once with [`spec_resume`](crate::spec_resume), the routine written from the DSA
//!   specification alone (raw descriptors straight to the model's portal), and
//! * once through the driver (`Submitter::run`, `PageFault::resume`, `Submitter::resume`),
//! * and, for the operations a ring-3 process may submit (`klib::usersubmit::validate`:
//!   Memory Move, Fill, Compare, Compare Pattern, CRC Generation, Copy with CRC), once with
//!   the kernel's `klib::usersubmit::remainder` (what the `dsa_resume` system call submits
//!   after a process's page fault; a third implementation, sharing no code with the other
//!   two), raw descriptors again,
//!
//! and the final bytes, CRC, compare result, delta record and DIF tags must equal a run of
//! the same descriptor without faults. That fault-free run must in turn equal the CPU
//! reference (`bench::reference`, which shares no CRC, DIF or delta code with the model), so
//! a model that is wrong consistently with itself (the source images' guards are made with
//! `dsa_spec::dif`, which the model also runs) still fails. Where the driver continues an
//! operation, its continuation descriptor must also equal the one the specification's
//! routine builds from the same completion record. The whole matrix runs with the model's
//! default DMA chunk and with 4 KiB chunks (pieces that straddle pages).

use crate::common::*;
use crate::spec_resume::{self as spec, Cr, Desc, Memory, cr, d, flag, op};
use bench::reference as cpu;
use dsa::ops::CrcSeed;
use dsa::{
    AddressSpace, ConfigSource, DeviceOptions, DifDest, DifFormat, DifSource, Notify, Op, OpError,
    Output, PageFault, Requester, Submitter, Work,
};
use dsa_model::{Config, StoreKind};
use dsa_rig::sim::PAGE;
use dsa_spec::crc::CrcMode;
use dsa_spec::dif::{DestDifFlags, DifBlockSize, DifFlags, Pi, SrcDifFlags, guard};
use dsa_spec::portal::{PortalKind, portal_offset};
use std::cell::Cell;
use std::sync::Arc;

const SP: AddressSpace = AddressSpace::NoPasid;
/// DIF flags byte: 512-byte blocks, guard seed inverted.
const DIF_FLAGS: u8 = 0x04;
/// Source and destination DIF flags: application tag increments per block (reference tag
/// increments by default).
const DIF_SRC_FLAGS: u8 = 0x10;
const DIF_DEST_FLAGS: u8 = 0x10;
const BLOCK: usize = 512;

#[derive(Clone, Copy, Debug)]
struct Tags {
    ref_tag: u32,
    app_mask: u16,
    app: u16,
}

/// One operation with device addresses, encodable both as a raw descriptor (for the
/// specification's routine) and as a driver `Work`.
#[derive(Clone, Copy, Debug)]
enum Opn {
    MemMove {
        src: u64,
        dst: u64,
        len: u32,
    },
    Fill {
        dst: u64,
        len: u32,
        pattern: u64,
    },
    Compare {
        a: u64,
        b: u64,
        len: u32,
    },
    ComparePattern {
        src: u64,
        len: u32,
        pattern: u64,
    },
    /// CRC Generation with the seed read from memory.
    Crc {
        src: u64,
        len: u32,
        seed_at: u64,
    },
    CopyCrc {
        src: u64,
        dst: u64,
        len: u32,
        seed: u32,
    },
    /// CRC Generation with the seed in the descriptor and the CRC flags of `mode`.
    CrcValue {
        src: u64,
        len: u32,
        seed: u32,
        mode: CrcMode,
    },
    Dualcast {
        src: u64,
        dst1: u64,
        dst2: u64,
        len: u32,
    },
    CreateDelta {
        a: u64,
        b: u64,
        len: u32,
        rec: u64,
        max: u32,
    },
    ApplyDelta {
        rec: u64,
        rec_len: u32,
        dst: u64,
        len: u32,
    },
    DifCheck {
        src: u64,
        len: u32,
        s: Tags,
    },
    DifInsert {
        src: u64,
        dst: u64,
        len: u32,
        t: Tags,
    },
    DifStrip {
        src: u64,
        dst: u64,
        len: u32,
        s: Tags,
    },
    DifUpdate {
        src: u64,
        dst: u64,
        len: u32,
        s: Tags,
        t: Tags,
    },
}

fn src_tags(x: &mut Desc, s: Tags) {
    x.set8(d::AT40, DIF_SRC_FLAGS)
        .set8(d::DIF_FLAGS, DIF_FLAGS)
        .set32(d::AT48, s.ref_tag)
        .set16(d::DIF_SRC_APP_MASK, s.app_mask)
        .set16(d::DIF_SRC_APP, s.app);
}
fn dst_tags(x: &mut Desc, t: Tags) {
    x.set8(d::DIF_DEST_FLAGS, DIF_DEST_FLAGS)
        .set8(d::DIF_FLAGS, DIF_FLAGS)
        .set32(d::DIF_DEST_REF, t.ref_tag)
        .set16(d::DIF_DEST_APP_MASK, t.app_mask)
        .set16(d::DIF_DEST_APP, t.app);
}

impl Opn {
    fn raw(&self) -> Desc {
        let mut x;
        match *self {
            Opn::MemMove { src, dst, len } => {
                x = Desc::new(op::MEMMOVE);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len);
            }
            Opn::Fill { dst, len, pattern } => {
                x = Desc::new(op::FILL);
                x.set64(d::ADDR1, pattern)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len);
            }
            Opn::Compare { a, b, len } => {
                x = Desc::new(op::COMPARE);
                x.set64(d::ADDR1, a).set64(d::ADDR2, b).set32(d::SIZE, len);
            }
            Opn::ComparePattern { src, len, pattern } => {
                x = Desc::new(op::COMPARE_PATTERN);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, pattern)
                    .set32(d::SIZE, len);
            }
            Opn::Crc { src, len, seed_at } => {
                x = Desc::new(op::CRC);
                x.set_flags(x.flags() | flag::CRC_SEED_FROM_MEMORY);
                x.set64(d::ADDR1, src)
                    .set32(d::SIZE, len)
                    .set64(d::AT48, seed_at);
            }
            Opn::CopyCrc {
                src,
                dst,
                len,
                seed,
            } => {
                x = Desc::new(op::COPY_CRC);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len)
                    .set32(d::AT40, seed);
            }
            Opn::CrcValue {
                src,
                len,
                seed,
                mode,
            } => {
                x = Desc::new(op::CRC);
                let mut f = x.flags();
                if mode.bypass_inv_refl {
                    f |= dsa_spec::DescFlags::CRC_BYPASS_INV_REFL.bits();
                }
                if mode.bypass_data_refl {
                    f |= dsa_spec::DescFlags::CRC_BYPASS_DATA_REFL.bits();
                }
                x.set_flags(f);
                x.set64(d::ADDR1, src)
                    .set32(d::SIZE, len)
                    .set32(d::AT40, seed);
            }
            Opn::Dualcast {
                src,
                dst1,
                dst2,
                len,
            } => {
                x = Desc::new(op::DUALCAST);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst1)
                    .set32(d::SIZE, len)
                    .set64(d::AT40, dst2);
            }
            Opn::CreateDelta {
                a,
                b,
                len,
                rec,
                max,
            } => {
                x = Desc::new(op::CREATE_DELTA);
                x.set64(d::ADDR1, a)
                    .set64(d::ADDR2, b)
                    .set32(d::SIZE, len)
                    .set64(d::AT40, rec)
                    .set32(d::AT48, max);
            }
            Opn::ApplyDelta {
                rec,
                rec_len,
                dst,
                len,
            } => {
                x = Desc::new(op::APPLY_DELTA);
                x.set64(d::ADDR1, rec)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len)
                    .set32(d::AT40, rec_len);
            }
            Opn::DifCheck { src, len, s } => {
                x = Desc::new(op::DIF_CHECK);
                x.set64(d::ADDR1, src).set32(d::SIZE, len);
                src_tags(&mut x, s);
            }
            Opn::DifInsert { src, dst, len, t } => {
                x = Desc::new(op::DIF_INSERT);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len);
                dst_tags(&mut x, t);
            }
            Opn::DifStrip { src, dst, len, s } => {
                x = Desc::new(op::DIF_STRIP);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len);
                src_tags(&mut x, s);
            }
            Opn::DifUpdate {
                src,
                dst,
                len,
                s,
                t,
            } => {
                x = Desc::new(op::DIF_UPDATE);
                x.set64(d::ADDR1, src)
                    .set64(d::ADDR2, dst)
                    .set32(d::SIZE, len);
                src_tags(&mut x, s);
                dst_tags(&mut x, t);
            }
        }
        x
    }

    fn work(&self) -> Work {
        let format = dif_format();
        match *self {
            Opn::MemMove { src, dst, len } => Work::memmove(src, dst, len),
            Opn::Fill { dst, len, pattern } => Work::fill(dst, len, pattern),
            Opn::Compare { a, b, len } => Work::compare(a, b, len),
            Opn::ComparePattern { src, len, pattern } => Work::compare_pattern(src, len, pattern),
            Opn::Crc { src, len, seed_at } => Work::new(Op::CrcGen {
                src,
                len,
                seed: CrcSeed::Memory(seed_at),
                mode: CrcMode::default(),
            }),
            Opn::CopyCrc {
                src,
                dst,
                len,
                seed,
            } => Work::copy_crc(src, dst, len, seed),
            Opn::CrcValue {
                src,
                len,
                seed,
                mode,
            } => Work::new(Op::CrcGen {
                src,
                len,
                seed: CrcSeed::Value(seed),
                mode,
            }),
            Opn::Dualcast {
                src,
                dst1,
                dst2,
                len,
            } => Work::dualcast(src, dst1, dst2, len),
            Opn::CreateDelta {
                a,
                b,
                len,
                rec,
                max,
            } => Work::create_delta(a, b, len, rec, max),
            Opn::ApplyDelta {
                rec,
                rec_len,
                dst,
                len,
            } => Work::apply_delta(rec, rec_len, dst, len),
            Opn::DifCheck { src, len, s } => Work::dif_check(src, len, format, source(s)),
            Opn::DifInsert { src, dst, len, t } => Work::dif_insert(src, dst, len, format, dest(t)),
            Opn::DifStrip { src, dst, len, s } => Work::dif_strip(src, dst, len, format, source(s)),
            Opn::DifUpdate {
                src,
                dst,
                len,
                s,
                t,
            } => Work::dif_update(src, dst, len, format, source(s), dest(t)),
        }
    }
}

/// The DIF format of [`DIF_FLAGS`], and the source and destination parameters of
/// [`DIF_SRC_FLAGS`] / [`DIF_DEST_FLAGS`] with `Tags`, as the driver and the CPU reference
/// take them.
fn dif_format() -> DifFormat {
    DifFormat {
        block: DifBlockSize::B512,
        invert_seed: true,
        invert_result: false,
    }
}
fn source(s: Tags) -> DifSource {
    DifSource {
        flags: SrcDifFlags::from_bits_retain(DIF_SRC_FLAGS),
        ref_tag: s.ref_tag,
        app_tag_mask: s.app_mask,
        app_tag: s.app,
    }
}
fn dest(t: Tags) -> DifDest {
    DifDest {
        flags: DestDifFlags::from_bits_retain(DIF_DEST_FLAGS),
        ref_tag: t.ref_tag,
        app_tag_mask: t.app_mask,
        app_tag: t.app,
    }
}

/// An operation's result besides the bytes it wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Res {
    Done,
    Crc(u32),
    Compare {
        equal: bool,
        at: Option<u64>,
    },
    Delta {
        result: u8,
        size: u32,
    },
    Dif {
        src: Option<(u32, u16)>,
        dst: Option<(u32, u16)>,
    },
}

/// What a whole case produced: the output regions and one result per operation.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Outcome {
    outputs: Vec<Vec<u8>>,
    results: Vec<Res>,
}

/// A descriptor operand whose pages the matrix makes absent.
#[derive(Clone, Debug)]
struct Operand {
    name: String,
    addr: u64,
    len: u64,
    /// Direction of the faulting access (None: the page is read and written, e.g. an
    /// overlapping copy).
    write: Option<bool>,
    /// Only the raw descriptors use it (a batch's descriptor list: the driver builds its
    /// own lists in its own memory).
    spec_only: bool,
}

impl Operand {
    fn new(name: &str, addr: u64, len: u64, write: Option<bool>) -> Operand {
        Operand {
            name: name.to_string(),
            addr,
            len,
            write,
            spec_only: false,
        }
    }
    fn pages(&self) -> impl Iterator<Item = u64> + use<> {
        let first = self.addr / PAGE;
        let last = (self.addr + self.len - 1) / PAGE;
        (first..=last).map(|p| p * PAGE)
    }
}

enum Body {
    Single(Opn),
    /// Members with their Fence flag; the list and the members' records live in buffers
    /// of the scenario.
    Batch {
        members: Vec<(Opn, bool)>,
        list: u64,
        records: u64,
    },
}

struct Scenario {
    name: &'static str,
    /// Each buffer with the image it holds before every run.
    bufs: Vec<(TestBuffer, Vec<u8>)>,
    body: Body,
    outputs: Vec<(u64, usize)>,
    operands: Vec<Operand>,
    /// Compare Pattern may report a mismatch rounded down to 8 bytes from where the
    /// descriptor started; a resumed descriptor starts elsewhere. Offsets within 8 bytes
    /// below this true offset count as the same result.
    pattern_mismatch: Option<u64>,
}

impl Scenario {
    fn reset(&self) {
        for (b, img) in &self.bufs {
            b.write(0, img);
        }
    }
    fn find(&self, addr: u64, len: usize) -> (&TestBuffer, usize) {
        self.bufs
            .iter()
            .map(|(b, _)| b)
            .find(|b| addr >= b.iova && addr + len as u64 <= b.iova + b.len as u64)
            .map(|b| (b, (addr - b.iova) as usize))
            .unwrap_or_else(|| panic!("{}: no buffer holds {addr:#x}+{len:#x}", self.name))
    }
    fn outcome(&self, results: Vec<Res>) -> Outcome {
        let outputs = self.outputs.iter().map(|&(a, n)| self.read(a, n)).collect();
        let results = results
            .into_iter()
            .map(|r| match (r, self.pattern_mismatch) {
                (Res::Compare { equal, at: Some(a) }, Some(t)) if a <= t && t - a < 8 => {
                    Res::Compare { equal, at: Some(t) }
                }
                (r, _) => r,
            })
            .collect();
        Outcome { outputs, results }
    }
}

impl Memory for Scenario {
    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let (b, off) = self.find(addr, len);
        b.read(off, len)
    }
    fn write(&self, addr: u64, data: &[u8]) {
        let (b, off) = self.find(addr, data.len());
        b.write(off, data);
    }
}

/// The device, the driver on it, and a completion record for raw descriptors.
struct Env {
    rig: Rig,
    sub: Submitter,
    cr: TestBuffer,
}

impl Env {
    fn new(chunk: usize) -> Env {
        let cfg = Config {
            dma_chunk: chunk,
            ..model_cfg()
        };
        let rig = Rig::new(cfg, Exec::Deterministic, ALL_PCI);
        let dev = rig
            .driver(0, ConfigSource::Default, DeviceOptions::default())
            .expect("bring-up");
        // WQ 0 is the dedicated WQ, without PASID: raw descriptors go to its portal while
        // the driver's submitter on it is idle.
        let sub = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
        let cr = rig.plat.buf(SP, 4096);
        Env { rig, sub, cr }
    }

    /// Executes one raw descriptor on WQ 0 and returns its completion record.
    fn submit(&self, desc: &Desc, record: u64) -> Cr {
        let mut x = *desc;
        x.set64(d::COMPLETION, record);
        self.rig.model.portal_submit(
            portal_offset(0, PortalKind::UnlimitedMsix),
            &x.0,
            StoreKind::Posted,
        );
        self.rig.model.run_until_idle();
        let mut c = Cr::default();
        c.0.copy_from_slice(&self.read_cr(record));
        c
    }

    fn read_cr(&self, at: u64) -> Vec<u8> {
        assert!(at >= self.cr.iova && at + 32 <= self.cr.iova + 4096);
        self.cr.read((at - self.cr.iova) as usize, 32)
    }

    fn run_raw(&self, desc: &Desc) -> Cr {
        self.cr.write(0, &[0; 32]);
        self.submit(desc, self.cr.at(0))
    }
}

/// The page the current case made absent; the fixers check each fault against it.
struct Hole {
    page: Cell<Option<u64>>,
    write: Option<bool>,
    faults: Cell<usize>,
    problems: std::cell::RefCell<Vec<String>>,
}

impl Hole {
    fn none() -> Hole {
        Hole {
            page: Cell::new(None),
            write: None,
            faults: Cell::new(0),
            problems: Default::default(),
        }
    }
    fn make(plat: &SimPlatform, page: u64, write: Option<bool>) -> Hole {
        plat.set_mapped(SP, page, PAGE, false);
        Hole {
            page: Cell::new(Some(page)),
            write,
            faults: Cell::new(0),
            problems: Default::default(),
        }
    }
    /// A fault at `addr`: must be the absent page, in the operand's direction; maps it.
    fn fix(&self, plat: &SimPlatform, addr: u64, write: bool, what: &str) {
        self.faults.set(self.faults.get() + 1);
        let Some(page) = self.page.get() else {
            self.problems.borrow_mut().push(format!(
                "{what}: fault at {addr:#x} with every page present"
            ));
            return;
        };
        if addr & !(PAGE - 1) != page {
            self.problems.borrow_mut().push(format!(
                "{what}: fault at {addr:#x}, the absent page is {page:#x}"
            ));
        }
        if self.write.is_some_and(|w| w != write) {
            self.problems
                .borrow_mut()
                .push(format!("{what}: fault reported as write={write}"));
        }
        plat.set_mapped(SP, page, PAGE, true);
        self.page.set(None);
    }
}

/// The result of one operation from its last completion record (specification: completion
/// record fields per operation).
fn spec_res(desc: &Desc, f: &spec::Finished, problems: &mut Vec<String>) -> Res {
    let c = &f.last;
    if c.code() != cr::SUCCESS {
        problems.push(format!("opcode {:#x} ended with {c:?}", desc.opcode()));
    }
    let tags = |at: usize| Some((c.u32(at), c.u16(at + 6)));
    match desc.opcode() {
        op::COMPARE | op::COMPARE_PATTERN => {
            let (equal, at) = f.compare();
            Res::Compare { equal, at }
        }
        op::CRC | op::COPY_CRC => Res::Crc(c.u32(cr::AT16)),
        op::CREATE_DELTA => {
            let (result, size) = f.delta();
            Res::Delta { result, size }
        }
        op::DIF_CHECK | op::DIF_STRIP => Res::Dif {
            src: tags(cr::AT16),
            dst: None,
        },
        op::DIF_INSERT => Res::Dif {
            src: None,
            dst: tags(cr::AT24),
        },
        op::DIF_UPDATE => Res::Dif {
            src: tags(cr::AT16),
            dst: tags(cr::AT24),
        },
        _ => Res::Done,
    }
}

fn driver_res(o: Output) -> Res {
    match o {
        Output::Done => Res::Done,
        Output::Crc(c) => Res::Crc(c),
        Output::Compare {
            equal,
            first_difference,
            ..
        } => Res::Compare {
            equal,
            at: first_difference.map(u64::from),
        },
        Output::Delta {
            result,
            record_size,
            ..
        } => Res::Delta {
            result: result as u8,
            size: record_size,
        },
        Output::Dif { source, dest } => Res::Dif {
            src: source.map(|t| (t.ref_tag, t.app_tag)),
            dst: dest.map(|t| (t.ref_tag, t.app_tag)),
        },
        Output::Batch(_) => panic!("nested batch output"),
    }
}

/// Runs the scenario with the specification's routine; `hole` is the absent page.
fn run_spec(env: &Env, sc: &Scenario, hole: &Hole, problems: &mut Vec<String>) -> Outcome {
    let plat = env.rig.plat.clone();
    let mut submit = |x: &Desc| env.run_raw(x);
    let mut fix = |x: &Desc, c: &Cr| {
        hole.fix(
            &plat,
            c.fault_address(),
            c.fault_was_write(),
            &format!("spec, opcode {:#x}", x.opcode()),
        );
    };
    match &sc.body {
        Body::Single(o) => {
            let desc = o.raw();
            let f = spec::run(desc, &mut submit, &mut fix, sc);
            let r = spec_res(&desc, &f, problems);
            if f.partials != hole.faults.get() {
                problems.push(format!("{} partial completions", f.partials));
            }
            sc.outcome(vec![r])
        }
        Body::Batch {
            members,
            list,
            records,
        } => {
            let layout = spec::BatchLayout {
                list: *list,
                members: members
                    .iter()
                    .enumerate()
                    .map(|(j, (o, fence))| member_desc(o, *fence, *records, j))
                    .collect(),
                records: (0..members.len())
                    .map(|j| records + 32 * j as u64)
                    .collect(),
            };
            let mut submit_batch = |list: u64, count: u32| {
                let mut b = Desc::new(op::BATCH);
                b.set64(d::ADDR1, list).set32(d::SIZE, count);
                env.run_raw(&b)
            };
            let member_record = |j: usize| {
                let mut c = Cr::default();
                c.0.copy_from_slice(&sc.read(layout.records[j], 32));
                c
            };
            let clear = |j: usize| sc.write(layout.records[j], &[0; 32]);
            let f = spec::run_batch(
                &layout,
                &mut submit_batch,
                &member_record,
                &clear,
                &mut submit,
                &mut fix,
                sc,
            );
            let results = layout
                .members
                .iter()
                .zip(&f.members)
                .map(|(m, f)| spec_res(m, f, problems))
                .collect();
            let partials = f.list_faults + f.members.iter().map(|m| m.partials).sum::<usize>();
            if partials != hole.faults.get() {
                problems.push(format!("{partials} partial completions"));
            }
            sc.outcome(results)
        }
    }
}

/// Whether the scenario is one descriptor of an operation a process may submit
/// (`klib::usersubmit::validate`'s whitelist, No-op aside: it has nothing to fault on).
fn klib_resumes(sc: &Scenario) -> bool {
    match &sc.body {
        Body::Single(o) => matches!(
            o.raw().opcode(),
            op::MEMMOVE | op::FILL | op::COMPARE | op::COMPARE_PATTERN | op::CRC | op::COPY_CRC
        ),
        Body::Batch { .. } => false,
    }
}

/// Runs a single-descriptor scenario with the kernel's `klib::usersubmit::remainder`: raw
/// descriptors to the portal, each partial completion's page made present (as `dsa_resume`
/// maps it for the process) and the remainder klib builds from the record submitted.
fn run_klib(env: &Env, sc: &Scenario, hole: &Hole, problems: &mut Vec<String>) -> Outcome {
    let Body::Single(o) = &sc.body else {
        unreachable!("klib resumes single descriptors")
    };
    let first = o.raw();
    let plat = env.rig.plat.clone();
    let mut desc = first;
    let mut before_last = 0u64;
    let mut partials = 0;
    let last = loop {
        let rec = env.run_raw(&desc);
        if rec.code() != cr::PAGE_FAULT_NO_BOF || partials >= 16 {
            break rec;
        }
        partials += 1;
        hole.fix(
            &plat,
            rec.fault_address(),
            rec.fault_was_write(),
            &format!("klib, opcode {:#x}", desc.opcode()),
        );
        match klib::usersubmit::remainder(&desc.0, &rec.0) {
            Ok(next) => {
                // A backward memmove completed a suffix: later offsets still count from
                // the start (only compares report one).
                if !(desc.opcode() == op::MEMMOVE && rec.result() & 1 == 1) {
                    before_last += u64::from(rec.bytes_completed());
                }
                desc = Desc(next);
            }
            Err(e) => {
                problems.push(format!("klib refuses to resume: {e} ({rec:?})"));
                break rec;
            }
        }
    };
    if partials != hole.faults.get() {
        problems.push(format!("{partials} partial completions"));
    }
    let f = spec::Finished {
        last,
        before_last,
        delta_size: 0,
        partials,
    };
    let r = spec_res(&first, &f, problems);
    sc.outcome(vec![r])
}

/// Member `j` of a batch as it sits in the list: its own record in the records buffer.
fn member_desc(o: &Opn, fence: bool, records: u64, j: usize) -> Desc {
    let mut m = o.raw();
    if fence {
        m.set_flags(m.flags() | flag::FENCE);
    }
    m.set64(d::COMPLETION, records + 32 * j as u64);
    m
}

/// Runs one driver operation to the end through its faults; checks each continuation the
/// driver builds against the specification's routine on the same record.
fn driver_one(
    env: &mut Env,
    w: Work,
    hole: &Hole,
    problems: &mut Vec<String>,
    what: &str,
) -> Option<Res> {
    let t = env.sub.submit(&w, Notify::Poll).expect("submit");
    let r = env.sub.wait(t, 5 * SECOND);
    let rec = env.sub.completion_record(t);
    driver_continue(env, w, r, rec, hole, problems, what)
}

/// Takes `ran`'s result `r` (and its record) through the driver's resumes to the end.
fn driver_continue(
    env: &mut Env,
    mut ran: Work,
    mut r: Result<Output, OpError>,
    mut rec: Option<dsa_spec::CompletionRecord>,
    hole: &Hole,
    problems: &mut Vec<String>,
    what: &str,
) -> Option<Res> {
    let plat = env.rig.plat.clone();
    for _ in 0..16 {
        match r {
            Ok(o) => return Some(driver_res(o)),
            Err(OpError::PageFault(PageFault {
                addr,
                write,
                resume,
                ..
            })) => {
                hole.fix(&plat, addr, write, &format!("driver, {what}"));
                let Some(res) = resume else {
                    problems.push(format!("{what}: the driver cannot resume"));
                    return None;
                };
                agree(&ran, res.remaining(), &rec.expect("record"), problems, what);
                ran = *res.remaining();
                let t = env.sub.resume(&res, Notify::Poll).expect("resume");
                r = env.sub.wait(t, 5 * SECOND);
                rec = env.sub.completion_record(t);
            }
            Err(e) => {
                problems.push(format!("{what}: driver error {e}"));
                return None;
            }
        }
    }
    problems.push(format!("{what}: no end after 16 faults"));
    None
}

/// The driver's continuation must be the specification's, except that the driver runs a
/// Create Delta again from the start (its record offsets count from the sources, so the
/// remainder is not expressible as another Create Delta without rewriting the record
/// afterwards, which the specification's routine does).
fn agree(
    ran: &Work,
    next: &Work,
    rec: &dsa_spec::CompletionRecord,
    problems: &mut Vec<String>,
    what: &str,
) {
    if matches!(ran.op, Op::CreateDelta { .. }) {
        if next.op != ran.op && !matches!(next.op, Op::CreateDelta { .. }) {
            problems.push(format!("{what}: create delta continued as {:?}", next.op));
        }
        return;
    }
    let mut c = Cr::default();
    c.0.copy_from_slice(&rec.to_bytes());
    let ran_desc = Desc(ran.descriptor().to_bytes());
    let want = spec::resume(&ran_desc, &c);
    let got = Desc(next.descriptor().to_bytes());
    if got.0[4..] != want.0[4..] {
        problems.push(format!(
            "{what}: the driver continues with\n  {got:?}\n  the specification's routine with\n  {want:?}\n  after {c:?}"
        ));
    }
}

/// Runs the scenario through the driver.
fn run_driver(env: &mut Env, sc: &Scenario, hole: &Hole, problems: &mut Vec<String>) -> Outcome {
    match &sc.body {
        Body::Single(o) => {
            let r = driver_one(env, o.work(), hole, problems, sc.name);
            sc.outcome(r.into_iter().collect())
        }
        Body::Batch { members, .. } => {
            let works: Vec<Work> = members
                .iter()
                .map(|(o, f)| {
                    let w = o.work();
                    if *f { w.with_fence() } else { w }
                })
                .collect();
            let t = env.sub.submit_batch(&works, Notify::Poll).expect("submit");
            let Ok(Output::Batch(rs)) = env.sub.wait(t, 5 * SECOND) else {
                problems.push(format!("{}: the batch did not complete", sc.name));
                return sc.outcome(vec![]);
            };
            // The members' records, before anything else reuses the batch's slot.
            let recs: Vec<_> = (0..works.len())
                .map(|j| env.sub.batch_member_record(t, j))
                .collect();
            let mut results = Vec::new();
            for (j, ((r, w), rec)) in rs.into_iter().zip(&works).zip(recs).enumerate() {
                let what = format!("{} member {j}", sc.name);
                let res = match r {
                    Err(OpError::Abandoned) => {
                        let alone = Work { fence: false, ..*w };
                        driver_one(env, alone, hole, problems, &what)
                    }
                    r => driver_continue(env, *w, r, rec, hole, problems, &what),
                };
                results.extend(res);
            }
            sc.outcome(results)
        }
    }
}

// ---- the scenarios -------------------------------------------------------------------------

struct Builder<'a> {
    plat: &'a Arc<SimPlatform>,
    bufs: Vec<(TestBuffer, Vec<u8>)>,
}

impl Builder<'_> {
    /// A buffer of `pages` pages holding `img` (zero-padded).
    fn buf(&mut self, pages: usize, img: Vec<u8>) -> TestBuffer {
        let b = self.plat.buf(SP, pages * PAGE as usize);
        let mut img = img;
        img.resize(b.len, 0);
        self.bufs.push((b, img));
        b
    }
    fn done(
        self,
        name: &'static str,
        body: Body,
        outputs: Vec<(u64, usize)>,
        operands: Vec<Operand>,
    ) -> Scenario {
        Scenario {
            name,
            bufs: self.bufs,
            body,
            outputs,
            operands,
            pattern_mismatch: None,
        }
    }
}

fn rd(name: &str, addr: u64, len: usize) -> Operand {
    Operand::new(name, addr, len as u64, Some(false))
}
fn wr(name: &str, addr: u64, len: usize) -> Operand {
    Operand::new(name, addr, len as u64, Some(true))
}

/// `data` in 512-byte blocks, each followed by its protection information.
fn protect(data: &[u8], t: Tags) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in data.chunks(BLOCK).enumerate() {
        out.extend_from_slice(b);
        let pi = Pi {
            guard: guard(DifFlags::from_bits_retain(DIF_FLAGS), b),
            app_tag: t.app.wrapping_add(i as u16),
            ref_tag: t.ref_tag.wrapping_add(i as u32),
        };
        out.extend_from_slice(&pi.to_bytes());
    }
    out
}

/// A delta record taking `a` to `b` (entries: u16 word offset, the 8 new bytes).
fn delta_record(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for (w, (x, y)) in a.chunks(8).zip(b.chunks(8)).enumerate() {
        if x != y {
            r.extend_from_slice(&(w as u16).to_le_bytes());
            r.extend_from_slice(y);
        }
    }
    r
}

/// Places `img` at `off` of a zeroed image of `pages` pages.
fn at(pages: usize, off: usize, img: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; pages * PAGE as usize];
    v[off..off + img.len()].copy_from_slice(img);
    v
}

const SENTINEL: u8 = 0xEE;

fn sentinel(pages: usize) -> Vec<u8> {
    vec![SENTINEL; pages * PAGE as usize]
}

fn scenarios(plat: &Arc<SimPlatform>) -> Vec<Scenario> {
    let mut v = Vec::new();
    let b = || Builder {
        plat,
        bufs: Vec::new(),
    };
    let src_tags = Tags {
        ref_tag: 0xFFFF_FFFC,
        app_mask: 0x0F00,
        app: 0xFFFE,
    };
    let dst_tags = Tags {
        ref_tag: 0x0000_1000,
        app_mask: 0,
        app: 0x2222,
    };

    // Memory Move, forward: source and destination at different page phases.
    {
        let mut s = b();
        let len = 0x2E00;
        let src = s.buf(4, pattern(4 * 4096, 1)).at(0x123);
        let dst = s.buf(4, sentinel(4)).at(0x345);
        v.push(s.done(
            "memmove forward",
            Body::Single(Opn::MemMove {
                src,
                dst,
                len: len as u32,
            }),
            vec![(dst, len)],
            vec![rd("source", src, len), wr("destination", dst, len)],
        ));
    }
    // Memory Move, overlapping: destination above the source (copied backward) and below.
    for (name, so, dof) in [
        ("memmove overlapping backward", 0x111usize, 0x1B41usize),
        ("memmove overlapping forward", 0x1A40, 0x0F0),
    ] {
        let mut s = b();
        let len = 0x2C00;
        let buf = s.buf(5, pattern(5 * 4096, 2));
        let (src, dst) = (buf.at(so), buf.at(dof));
        v.push(s.done(
            name,
            Body::Single(Opn::MemMove {
                src,
                dst,
                len: len as u32,
            }),
            vec![(buf.at(0), buf.len)],
            vec![
                Operand::new("source", src, len as u64, None),
                Operand::new("destination", dst, len as u64, None),
            ],
        ));
    }
    // Fill from an odd address and length: resumes mid-pattern.
    {
        let mut s = b();
        let len = 0x2F0B;
        let dst = s.buf(4, sentinel(4)).at(0x123);
        v.push(s.done(
            "fill",
            Body::Single(Opn::Fill {
                dst,
                len: len as u32,
                pattern: 0x0123_4567_89AB_CDEF,
            }),
            vec![(dst, len)],
            vec![wr("destination", dst, len)],
        ));
    }
    // Compare: equal buffers, and buffers differing in the last page.
    for (name, differ) in [("compare equal", false), ("compare different", true)] {
        let mut s = b();
        let len = 0x2E00;
        let data = pattern(len, 3);
        let mut other = data.clone();
        if differ {
            other[len - 0x99] ^= 0x40;
        }
        let a = s.buf(4, at(4, 0x40, &data)).at(0x40);
        let c = s.buf(4, at(4, 0x7C8, &other)).at(0x7C8);
        v.push(s.done(
            name,
            Body::Single(Opn::Compare {
                a,
                b: c,
                len: len as u32,
            }),
            vec![],
            vec![rd("source 1", a, len), rd("source 2", c, len)],
        ));
    }
    // Compare Pattern from an odd address, a mismatch in the last page.
    {
        let mut s = b();
        let len = 0x2E05;
        let pat = 0x1122_3344_5566_7788u64;
        let mut data: Vec<u8> = (0..len).map(|k| pat.to_le_bytes()[k % 8]).collect();
        let miss = len - 0x37;
        data[miss] ^= 1;
        let src = s.buf(4, at(4, 0x1F3, &data)).at(0x1F3);
        let mut sc = s.done(
            "compare pattern",
            Body::Single(Opn::ComparePattern {
                src,
                len: len as u32,
                pattern: pat,
            }),
            vec![],
            vec![rd("source", src, len)],
        );
        sc.pattern_mismatch = Some(miss as u64);
        v.push(sc);
    }
    // CRC Generation with the seed in memory (a page of its own).
    {
        let mut s = b();
        let len = 0x2D11;
        let src = s.buf(4, pattern(4 * 4096, 4)).at(0x77);
        let seed = s
            .buf(1, at(1, 0x10, &0x1234_5678u32.to_le_bytes()))
            .at(0x10);
        v.push(s.done(
            "crc generation, seed in memory",
            Body::Single(Opn::Crc {
                src,
                len: len as u32,
                seed_at: seed,
            }),
            vec![],
            vec![rd("source", src, len), rd("seed", seed, 4)],
        ));
    }
    // CRC Generation with the seed in the descriptor and CRC inversion/reflection
    // bypassed (flag 17): the continuation keeps the mode, and the record's CRC (not
    // inverted) seeds it.
    {
        let mut s = b();
        let len = 0x2C3D;
        let src = s.buf(4, pattern(4 * 4096, 12)).at(0xA01);
        v.push(s.done(
            "crc generation, seed in the descriptor, flag 17",
            Body::Single(Opn::CrcValue {
                src,
                len: len as u32,
                seed: 0x8765_4321,
                mode: CrcMode {
                    bypass_inv_refl: true,
                    bypass_data_refl: false,
                },
            }),
            vec![],
            vec![rd("source", src, len)],
        ));
    }
    // Copy with CRC.
    {
        let mut s = b();
        let len = 0x2D00;
        let src = s.buf(4, pattern(4 * 4096, 5)).at(0x5);
        let dst = s.buf(4, sentinel(4)).at(0xFF1);
        v.push(s.done(
            "copy with crc",
            Body::Single(Opn::CopyCrc {
                src,
                dst,
                len: len as u32,
                seed: 0xFFFF_FFFF,
            }),
            vec![(dst, len)],
            vec![rd("source", src, len), wr("destination", dst, len)],
        ));
    }
    // Dualcast: destinations agree in bits 11:0.
    {
        let mut s = b();
        let len = 0x2E10;
        let src = s.buf(4, pattern(4 * 4096, 6)).at(0x21);
        let dst1 = s.buf(4, sentinel(4)).at(0x6C0);
        let dst2 = s.buf(4, sentinel(4)).at(0x6C0);
        v.push(s.done(
            "dualcast",
            Body::Single(Opn::Dualcast {
                src,
                dst1,
                dst2,
                len: len as u32,
            }),
            vec![(dst1, len), (dst2, len)],
            vec![
                rd("source", src, len),
                wr("destination 1", dst1, len),
                wr("destination 2", dst2, len),
            ],
        ));
    }
    // Create and Apply Delta: every fifth word differs.
    let len = 0x2E00usize;
    let old = pattern(len, 7);
    let mut new = old.clone();
    for w in (0..len / 8).step_by(5) {
        new[w * 8 + 3] ^= 0x5A;
    }
    let record = delta_record(&old, &new);
    {
        let mut s = b();
        let a = s.buf(4, at(4, 0x108, &old)).at(0x108);
        let c = s.buf(4, at(4, 0xA48, &new)).at(0xA48);
        let rec = s.buf(3, sentinel(3)).at(0xE08);
        v.push(s.done(
            "create delta",
            // A maximum record size that is not a multiple of 10.
            Body::Single(Opn::CreateDelta {
                a,
                b: c,
                len: len as u32,
                rec,
                max: 8192,
            }),
            vec![(rec, record.len())],
            vec![
                rd("source 1", a, len),
                rd("source 2", c, len),
                wr("delta record", rec, record.len()),
            ],
        ));
    }
    {
        let mut s = b();
        let rec = s.buf(2, at(2, 0xF08, &record)).at(0xF08);
        let dst = s.buf(4, at(4, 0x2F8, &old)).at(0x2F8);
        v.push(s.done(
            "apply delta",
            Body::Single(Opn::ApplyDelta {
                rec,
                rec_len: record.len() as u32,
                dst,
                len: len as u32,
            }),
            vec![(dst, len)],
            vec![
                rd("delta record", rec, record.len()),
                wr("destination", dst, len),
            ],
        ));
    }
    // The DIF operations: 10 blocks of 512 bytes, tags that wrap.
    let data = pattern(10 * BLOCK, 8);
    let prot = protect(&data, src_tags);
    {
        let mut s = b();
        let src = s.buf(3, at(3, 0x1A8, &prot)).at(0x1A8);
        v.push(s.done(
            "dif check",
            Body::Single(Opn::DifCheck {
                src,
                len: prot.len() as u32,
                s: src_tags,
            }),
            vec![],
            vec![rd("source", src, prot.len())],
        ));
    }
    {
        let mut s = b();
        let src = s.buf(3, at(3, 0x33, &data)).at(0x33);
        let dst = s.buf(3, sentinel(3)).at(0xC70);
        v.push(s.done(
            "dif insert",
            Body::Single(Opn::DifInsert {
                src,
                dst,
                len: data.len() as u32,
                t: dst_tags,
            }),
            vec![(dst, prot.len())],
            vec![
                rd("source", src, data.len()),
                wr("destination", dst, prot.len()),
            ],
        ));
    }
    {
        let mut s = b();
        let src = s.buf(3, at(3, 0x9D0, &prot)).at(0x9D0);
        let dst = s.buf(3, sentinel(3)).at(0x6A);
        v.push(s.done(
            "dif strip",
            Body::Single(Opn::DifStrip {
                src,
                dst,
                len: prot.len() as u32,
                s: src_tags,
            }),
            vec![(dst, data.len())],
            vec![
                rd("source", src, prot.len()),
                wr("destination", dst, data.len()),
            ],
        ));
    }
    {
        let mut s = b();
        let src = s.buf(3, at(3, 0x210, &prot)).at(0x210);
        let dst = s.buf(3, sentinel(3)).at(0xE40);
        v.push(s.done(
            "dif update",
            Body::Single(Opn::DifUpdate {
                src,
                dst,
                len: prot.len() as u32,
                s: src_tags,
                t: dst_tags,
            }),
            vec![(dst, prot.len())],
            vec![
                rd("source", src, prot.len()),
                wr("destination", dst, prot.len()),
            ],
        ));
    }
    // A batch: memmove, dualcast, and a DIF insert fenced behind them; the descriptor list
    // straddles a page boundary (member 0 on one page, members 1 and 2 on the next).
    {
        let mut s = b();
        let m0 = Opn::MemMove {
            src: s.buf(2, pattern(2 * 4096, 9)).at(0x30),
            dst: s.buf(3, sentinel(3)).at(0xF00),
            len: 0x1800,
        };
        let dc_src = s.buf(2, pattern(2 * 4096, 10)).at(0x100);
        let m1 = Opn::Dualcast {
            src: dc_src,
            dst1: s.buf(2, sentinel(2)).at(0x880),
            dst2: s.buf(2, sentinel(2)).at(0x880),
            len: 0x1500,
        };
        let ins_data = pattern(6 * BLOCK, 11);
        let m2 = Opn::DifInsert {
            src: s.buf(1, at(1, 0x10, &ins_data)).at(0x10),
            dst: s.buf(2, sentinel(2)).at(0xB00),
            len: ins_data.len() as u32,
            t: dst_tags,
        };
        let members = vec![(m0, false), (m1, false), (m2, true)];
        let records = s.buf(1, vec![]).at(0);
        let list_buf = s.buf(2, vec![]);
        let list = list_buf.at(0xFC0);
        let mut img = vec![0u8; 2 * 4096];
        for (j, (o, f)) in members.iter().enumerate() {
            img[0xFC0 + 64 * j..][..64].copy_from_slice(&member_desc(o, *f, records, j).0);
        }
        let n = s.bufs.len();
        s.bufs[n - 1].1 = img;
        let (
            Opn::MemMove {
                src: s0, dst: d0, ..
            },
            Opn::Dualcast { dst1, dst2, .. },
        ) = (m0, m1)
        else {
            unreachable!()
        };
        let Opn::DifInsert {
            src: s2, dst: d2, ..
        } = m2
        else {
            unreachable!()
        };
        v.push(s.done(
            "batch",
            Body::Batch {
                members,
                list,
                records,
            },
            vec![(d0, 0x1800), (dst1, 0x1500), (dst2, 0x1500), (d2, 6 * 520)],
            vec![
                Operand {
                    spec_only: true,
                    ..rd("descriptor list", list, 3 * 64)
                },
                rd("member 0 source", s0, 0x1800),
                wr("member 0 destination", d0, 0x1800),
                rd("member 1 source", dc_src, 0x1500),
                wr("member 1 destination 1", dst1, 0x1500),
                wr("member 1 destination 2", dst2, 0x1500),
                rd("member 2 source", s2, ins_data.len()),
                wr("member 2 destination", d2, 6 * 520),
            ],
        ));
    }
    v
}

// ---- the CPU reference ---------------------------------------------------------------------

/// The scenario's buffers as plain host memory, holding the images every run starts from.
struct CpuMem(Vec<(u64, Vec<u8>)>);

impl CpuMem {
    fn of(sc: &Scenario) -> CpuMem {
        CpuMem(
            sc.bufs
                .iter()
                .map(|(b, img)| (b.iova, img.clone()))
                .collect(),
        )
    }
    fn slot(&mut self, addr: u64, len: usize) -> &mut [u8] {
        let (base, v) = self
            .0
            .iter_mut()
            .find(|(b, v)| addr >= *b && addr + len as u64 <= *b + v.len() as u64)
            .unwrap_or_else(|| panic!("CPU reference: no buffer holds {addr:#x}+{len:#x}"));
        let off = (addr - *base) as usize;
        &mut v[off..off + len]
    }
    fn get(&mut self, addr: u64, len: u32) -> Vec<u8> {
        self.slot(addr, len as usize).to_vec()
    }
    fn put(&mut self, addr: u64, data: &[u8]) {
        self.slot(addr, data.len()).copy_from_slice(data);
    }
}

/// One operation computed by the CPU reference (`bench::reference`: its own CRC-32C,
/// T10-DIF, delta and pattern code, nothing shared with the model's `dsa_spec::crc` /
/// `dsa_spec::dif`). Sources are read whole before anything is written, so an overlapping
/// Memory Move copies as if through a temporary buffer (the specification's semantics).
fn cpu_op(m: &mut CpuMem, o: &Opn) -> Res {
    let tags = |t: dsa::ops::DifTags| Some((t.ref_tag, t.app_tag));
    let dif_ok = |r: &cpu::DifRef| {
        assert_eq!(r.error, None, "CPU reference: {o:?} fails its DIF check");
    };
    match *o {
        Opn::MemMove { src, dst, len } => {
            let s = m.get(src, len);
            cpu::memmove(&s, m.slot(dst, len as usize));
            Res::Done
        }
        Opn::Fill { dst, len, pattern } => {
            cpu::fill(m.slot(dst, len as usize), pattern);
            Res::Done
        }
        Opn::Compare { a, b, len } => {
            let at = cpu::compare(&m.get(a, len), &m.get(b, len));
            Res::Compare {
                equal: at.is_none(),
                at: at.map(|x| x as u64),
            }
        }
        Opn::ComparePattern { src, len, pattern } => {
            let at = cpu::compare_pattern(&m.get(src, len), pattern);
            Res::Compare {
                equal: at.is_none(),
                at: at.map(|x| x as u64),
            }
        }
        Opn::Crc { src, len, seed_at } => {
            let seed = u32::from_le_bytes(m.get(seed_at, 4).try_into().unwrap());
            Res::Crc(cpu::crc32c(seed, &m.get(src, len), CrcMode::default()))
        }
        Opn::CopyCrc {
            src,
            dst,
            len,
            seed,
        } => {
            let s = m.get(src, len);
            m.put(dst, &s);
            Res::Crc(cpu::crc32c(seed, &s, CrcMode::default()))
        }
        Opn::CrcValue {
            src,
            len,
            seed,
            mode,
        } => Res::Crc(cpu::crc32c(seed, &m.get(src, len), mode)),
        Opn::Dualcast {
            src,
            dst1,
            dst2,
            len,
        } => {
            let s = m.get(src, len);
            let (mut a, mut b) = (m.get(dst1, len), m.get(dst2, len));
            cpu::dualcast(&s, &mut a, &mut b);
            m.put(dst1, &a);
            m.put(dst2, &b);
            Res::Done
        }
        Opn::CreateDelta {
            a,
            b,
            len,
            rec,
            max,
        } => {
            let r = cpu::create_delta(&m.get(a, len), &m.get(b, len), max as usize);
            m.put(rec, &r.record);
            Res::Delta {
                result: r.result as u8,
                size: r.record.len() as u32,
            }
        }
        Opn::ApplyDelta {
            rec,
            rec_len,
            dst,
            len,
        } => {
            let r = m.get(rec, rec_len);
            cpu::apply_delta(&r, m.slot(dst, len as usize))
                .unwrap_or_else(|e| panic!("CPU reference: {o:?} fails with {e:?}"));
            Res::Done
        }
        Opn::DifCheck { src, len, s } => {
            let r = cpu::dif_check(&m.get(src, len), &dif_format(), &source(s));
            dif_ok(&r);
            Res::Dif {
                src: tags(r.source),
                dst: None,
            }
        }
        Opn::DifInsert { src, dst, len, t } => {
            let r = cpu::dif_insert(&m.get(src, len), &dif_format(), &dest(t));
            m.put(dst, &r.out);
            Res::Dif {
                src: None,
                dst: tags(r.dest),
            }
        }
        Opn::DifStrip { src, dst, len, s } => {
            let r = cpu::dif_strip(&m.get(src, len), &dif_format(), &source(s));
            dif_ok(&r);
            m.put(dst, &r.out);
            Res::Dif {
                src: tags(r.source),
                dst: None,
            }
        }
        Opn::DifUpdate {
            src,
            dst,
            len,
            s,
            t,
        } => {
            let r = cpu::dif_update(&m.get(src, len), &dif_format(), &source(s), &dest(t));
            dif_ok(&r);
            m.put(dst, &r.out);
            Res::Dif {
                src: tags(r.source),
                dst: tags(r.dest),
            }
        }
    }
}

/// What the scenario must produce, computed on the CPU from the images it starts from (a
/// batch's members in order: without faults every member succeeds, so Fence changes
/// nothing).
fn cpu_outcome(sc: &Scenario) -> Outcome {
    let mut m = CpuMem::of(sc);
    let results = match &sc.body {
        Body::Single(o) => vec![cpu_op(&mut m, o)],
        Body::Batch { members, .. } => members.iter().map(|(o, _)| cpu_op(&mut m, o)).collect(),
    };
    let outputs = sc
        .outputs
        .iter()
        .map(|&(a, n)| m.slot(a, n).to_vec())
        .collect();
    Outcome { outputs, results }
}

/// Runs the matrix on a device with DMA pieces of `chunk` bytes; returns the number of
/// cases and the problems found.
fn matrix(chunk: usize) -> (usize, usize, Vec<String>) {
    let mut env = Env::new(chunk);
    let plat = env.rig.plat.clone();
    let mut problems = Vec::new();
    let mut cases = 0;
    let mut klib_cases = 0;
    for sc in scenarios(&plat) {
        // The reference: the same descriptor(s) with every page present.
        sc.reset();
        let none = Hole::none();
        let mut p = Vec::new();
        let reference = run_spec(&env, &sc, &none, &mut p);
        assert!(
            p.is_empty() && none.faults.get() == 0,
            "{}: the fault-free run failed: {p:?}",
            sc.name
        );
        // The model's fault-free run is the reference only because it equals the CPU's.
        let cpu = cpu_outcome(&sc);
        assert!(
            reference == cpu,
            "{}: the fault-free run differs from the CPU reference: {}",
            sc.name,
            diff(&reference, &cpu)
        );
        // The driver agrees without faults too.
        sc.reset();
        let got = run_driver(&mut env, &sc, &none, &mut p);
        assert!(p.is_empty(), "{}: {p:?}", sc.name);
        assert_eq!(got, reference, "{}: driver without faults", sc.name);
        for o in &sc.operands {
            for page in o.pages() {
                for path in ["spec", "driver", "klib"] {
                    if path == "driver" && o.spec_only || path == "klib" && !klib_resumes(&sc) {
                        continue;
                    }
                    let what = format!(
                        "[chunk {chunk:#x}] {} / {} / page {:#x} (operand offset {:#x}) / {path}",
                        sc.name,
                        o.name,
                        page,
                        page.max(o.addr) - o.addr
                    );
                    sc.reset();
                    let hole = Hole::make(&plat, page, o.write);
                    let mut p = Vec::new();
                    let got = match path {
                        "spec" => run_spec(&env, &sc, &hole, &mut p),
                        "driver" => run_driver(&mut env, &sc, &hole, &mut p),
                        _ => {
                            klib_cases += 1;
                            run_klib(&env, &sc, &hole, &mut p)
                        }
                    };
                    if let Some(page) = hole.page.get() {
                        plat.set_mapped(SP, page, PAGE, true);
                    }
                    cases += 1;
                    p.extend(hole.problems.take());
                    if hole.faults.get() != 1 {
                        p.push(format!("{} page faults, expected 1", hole.faults.get()));
                    }
                    if got != reference {
                        p.push(diff(&got, &reference));
                    }
                    problems.extend(p.into_iter().map(|x| format!("{what}: {x}")));
                }
            }
        }
    }
    (cases, klib_cases, problems)
}

/// Where two outcomes differ, briefly.
fn diff(got: &Outcome, want: &Outcome) -> String {
    let mut s = Vec::new();
    for (i, (g, w)) in got.outputs.iter().zip(&want.outputs).enumerate() {
        if let Some(k) = g.iter().zip(w).position(|(a, b)| a != b) {
            let end = (k..g.len()).rfind(|&j| g[j] != w[j]).unwrap_or(k);
            s.push(format!(
                "output {i} differs in bytes {k:#x}..={end:#x} (got {:#04x}, want {:#04x})",
                g[k], w[k]
            ));
        }
    }
    if got.outputs.len() != want.outputs.len() {
        s.push("output count differs".into());
    }
    if got.results != want.results {
        s.push(format!(
            "results {:?}, want {:?}",
            got.results, want.results
        ));
    }
    s.join("; ")
}

#[test]
fn every_operation_operand_and_page_resumes_to_the_fault_free_result() {
    let mut all = Vec::new();
    let mut total = 0;
    let mut klib = 0;
    for chunk in [Config::default().dma_chunk, 4096] {
        let (n, k, p) = matrix(chunk);
        total += n;
        klib += k;
        all.extend(p);
    }
    eprintln!("resume matrix: {total} cases, {klib} of them resumed by klib");
    // Every scenario contributes cases for every operand page on both paths (three for the
    // operations a process may submit).
    assert!(total > 200, "only {total} cases");
    assert!(klib > 60, "only {klib} cases resumed by klib");
    assert!(
        all.is_empty(),
        "{} of {total} cases went wrong:\n{}",
        all.len(),
        all.join("\n")
    );
}
