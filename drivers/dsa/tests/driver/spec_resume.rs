//! Resuming a partially completed descriptor, written from the Intel DSA Architecture
//! Specification's descriptor and completion-record definitions alone: raw bytes at the
//! offsets the specification's tables give, no code from the driver (`dsa::ops`) or the
//! device model. The resume matrix (`resume_matrix.rs`) checks the model and the driver
//! against it.
//!
//! Sources of each rule, cited next to it: the specification's descriptor chapter (the
//! common fields and each operation's field table), its completion record definition
//! ("Status", "Result", "Bytes Completed", "Fault Address" and the per-operation fields)
//! and each operation's description. Two public Intel clients implement the same rules and
//! served as an independent check of the reading: DML's
//! `sources/middle_layer/src/partial_completion.hpp` and accel-config's
//! `test/dsa_prep.c` (`dsa_reprep_*`); where they differ from this file it says why.

/// Descriptor field offsets (specification, descriptor chapter: common fields).
pub mod d {
    /// Bits 23:0 of bytes 4–7.
    pub const FLAGS: usize = 4;
    pub const OPCODE: usize = 7;
    pub const COMPLETION: usize = 8;
    /// Source / pattern / descriptor list / delta record (per operation).
    pub const ADDR1: usize = 16;
    /// Destination / source 2 / compare pattern (per operation).
    pub const ADDR2: usize = 24;
    /// Transfer size, or descriptor count for a batch.
    pub const SIZE: usize = 32;
    // Per-operation fields (specification, each operation's descriptor table).
    /// Dualcast destination 2; Create Delta record address; Apply Delta record size (u32);
    /// CRC seed (u32); DIF source flags (u8).
    pub const AT40: usize = 40;
    pub const DIF_DEST_FLAGS: usize = 41;
    pub const DIF_FLAGS: usize = 42;
    /// Create Delta maximum record size (u32); CRC seed address; DIF source ref tag (u32).
    pub const AT48: usize = 48;
    pub const DIF_SRC_APP_MASK: usize = 52;
    pub const DIF_SRC_APP: usize = 54;
    pub const DIF_DEST_REF: usize = 56;
    pub const DIF_DEST_APP_MASK: usize = 60;
    pub const DIF_DEST_APP: usize = 62;
}

/// Opcodes (specification, operation code table).
pub mod op {
    pub const BATCH: u8 = 0x01;
    pub const MEMMOVE: u8 = 0x03;
    pub const FILL: u8 = 0x04;
    pub const COMPARE: u8 = 0x05;
    pub const COMPARE_PATTERN: u8 = 0x06;
    pub const CREATE_DELTA: u8 = 0x07;
    pub const APPLY_DELTA: u8 = 0x08;
    pub const DUALCAST: u8 = 0x09;
    pub const CRC: u8 = 0x10;
    pub const COPY_CRC: u8 = 0x11;
    pub const DIF_CHECK: u8 = 0x12;
    pub const DIF_INSERT: u8 = 0x13;
    pub const DIF_STRIP: u8 = 0x14;
    pub const DIF_UPDATE: u8 = 0x15;
}

/// Descriptor flags (specification, descriptor chapter: Flags).
pub mod flag {
    pub const FENCE: u32 = 1 << 0;
    pub const CRAV: u32 = 1 << 2;
    pub const RCR: u32 = 1 << 3;
    /// CRC Generation / Copy with CRC: read the seed from the address at byte 48.
    pub const CRC_SEED_FROM_MEMORY: u32 = 1 << 16;
}

/// Completion record field offsets and status codes (specification, completion record).
pub mod cr {
    pub const STATUS: usize = 0;
    pub const RESULT: usize = 1;
    pub const BYTES_COMPLETED: usize = 4;
    pub const FAULT_ADDRESS: usize = 8;
    /// CRC value; Create Delta record size; DIF Check/Strip/Update source tags (ref @16,
    /// app mask @20, app @22).
    pub const AT16: usize = 16;
    /// DIF Insert/Update destination tags (ref @24, app mask @28, app @30).
    pub const AT24: usize = 24;
    /// Status bit 7: the faulting access was a write.
    pub const WRITE: u8 = 0x80;
    pub const SUCCESS: u8 = 0x01;
    pub const PAGE_FAULT_NO_BOF: u8 = 0x03;
    pub const BATCH_FAIL: u8 = 0x05;
    pub const BATCH_PAGE_FAULT: u8 = 0x06;
}

fn get<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}

/// A 64-byte work descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Desc(pub [u8; 64]);

impl core::fmt::Debug for Desc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Desc(")?;
        for (i, b) in self.0.iter().enumerate() {
            if i % 8 == 0 && i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Desc {
    pub fn new(opcode: u8) -> Desc {
        let mut x = Desc([0; 64]);
        x.0[d::OPCODE] = opcode;
        x.set_flags(flag::CRAV | flag::RCR);
        x
    }
    pub fn opcode(&self) -> u8 {
        self.0[d::OPCODE]
    }
    pub fn flags(&self) -> u32 {
        let f = d::FLAGS;
        u32::from_le_bytes([self.0[f], self.0[f + 1], self.0[f + 2], 0])
    }
    pub fn set_flags(&mut self, flags: u32) -> &mut Self {
        self.0[d::FLAGS..d::FLAGS + 3].copy_from_slice(&flags.to_le_bytes()[..3]);
        self
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(get(&self.0, at))
    }
    pub fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(get(&self.0, at))
    }
    pub fn set8(&mut self, at: usize, v: u8) -> &mut Self {
        self.0[at] = v;
        self
    }
    pub fn set16(&mut self, at: usize, v: u16) -> &mut Self {
        self.0[at..at + 2].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set32(&mut self, at: usize, v: u32) -> &mut Self {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
        self
    }
    pub fn set64(&mut self, at: usize, v: u64) -> &mut Self {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
        self
    }
    fn add64(&mut self, at: usize, v: u64) {
        let x = self.u64(at).wrapping_add(v);
        self.set64(at, x);
    }
    fn sub32(&mut self, at: usize, v: u64) {
        let x = self.u32(at) - v as u32;
        self.set32(at, x);
    }
    pub fn size(&self) -> u32 {
        self.u32(d::SIZE)
    }
    /// Bytes of data per DIF block (specification, DIF flags byte 42 bits 1:0).
    pub fn dif_block(&self) -> u64 {
        [512, 520, 4096, 4104][(self.0[d::DIF_FLAGS] & 3) as usize]
    }
}

/// A 32-byte completion record.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Cr(pub [u8; 32]);

impl core::fmt::Debug for Cr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "Cr(status {:#04x} result {} bytes {:#x} fault {:#x} @16 {:02x?})",
            self.0[0],
            self.result(),
            self.bytes_completed(),
            self.fault_address(),
            &self.0[16..]
        )
    }
}

impl Cr {
    /// Status code (bits 5:0; bit 7 is the fault direction).
    pub fn code(&self) -> u8 {
        self.0[cr::STATUS] & 0x3F
    }
    pub fn fault_was_write(&self) -> bool {
        self.0[cr::STATUS] & cr::WRITE != 0
    }
    pub fn result(&self) -> u8 {
        self.0[cr::RESULT]
    }
    pub fn bytes_completed(&self) -> u32 {
        u32::from_le_bytes(get(&self.0, cr::BYTES_COMPLETED))
    }
    pub fn fault_address(&self) -> u64 {
        u64::from_le_bytes(get(&self.0, cr::FAULT_ADDRESS))
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(get(&self.0, at))
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(get(&self.0, at))
    }
}

/// The descriptor that finishes `desc` after its partial completion `rec` (status 0x03:
/// page fault with Block On Fault clear). The specification's general rule (completion
/// record, "Bytes Completed"): the operation is done for the first Bytes Completed bytes;
/// software continues it by advancing the addresses by that many bytes and reducing the
/// transfer size by it, and by carrying over the per-operation state the record returns.
pub fn resume(desc: &Desc, rec: &Cr) -> Desc {
    let bc = u64::from(rec.bytes_completed());
    assert!(
        bc <= u64::from(desc.size()) || desc.opcode() == op::APPLY_DELTA,
        "bytes completed {bc:#x} beyond the transfer size {:#x}",
        desc.size()
    );
    let mut n = *desc;
    match desc.opcode() {
        op::MEMMOVE => {
            // Memory Move, completion record Result: 0 = the copy went forward, the
            // first Bytes Completed bytes are done; 1 = it went backward (overlapping
            // buffers, destination above the source), the last Bytes Completed bytes are
            // done, so only the size shrinks.
            if rec.result() == 0 {
                n.add64(d::ADDR1, bc);
                n.add64(d::ADDR2, bc);
            }
            n.sub32(d::SIZE, bc);
        }
        op::FILL => {
            // Memory Fill: destination byte k receives pattern byte (k mod 8), counted
            // from the destination address. The rest starts at byte bc, which must get
            // pattern byte (bc mod 8): the new pattern is the old one rotated by bc mod 8
            // bytes. (DML and accel-config advance the destination without rotating:
            // right only when bytes completed is a multiple of 8.)
            n.add64(d::ADDR2, bc);
            n.sub32(d::SIZE, bc);
            let p = desc.u64(d::ADDR1).rotate_right(8 * (bc % 8) as u32);
            n.set64(d::ADDR1, p);
        }
        op::COMPARE => {
            // Memory Compare: Bytes Completed bytes were compared equal.
            n.add64(d::ADDR1, bc);
            n.add64(d::ADDR2, bc);
            n.sub32(d::SIZE, bc);
        }
        op::COMPARE_PATTERN => {
            // Compare Pattern: source byte k is compared with pattern byte (k mod 8) of
            // the pattern value at byte 24; rotated as for Fill.
            n.add64(d::ADDR1, bc);
            n.sub32(d::SIZE, bc);
            let p = desc.u64(d::ADDR2).rotate_right(8 * (bc % 8) as u32);
            n.set64(d::ADDR2, p);
        }
        op::CREATE_DELTA => {
            // Create Delta Record: Bytes Completed bytes of both sources were compared and
            // their entries written; the record's Delta Record Size (@16) says how many
            // bytes of record that took. The rest compares from there and appends to the
            // record within what is left of the maximum (as DML does; accel-config leaves
            // the record address alone and overwrites the first part).
            let written = rec.u32(cr::AT16);
            n.add64(d::ADDR1, bc);
            n.add64(d::ADDR2, bc);
            n.sub32(d::SIZE, bc);
            n.add64(d::AT40, u64::from(written));
            n.sub32(d::AT48, u64::from(written));
        }
        op::APPLY_DELTA => {
            // Apply Delta Record: Bytes Completed counts bytes of the delta record applied;
            // the destination and its size stay.
            n.add64(d::ADDR1, bc);
            n.sub32(d::AT40, bc);
        }
        op::DUALCAST => {
            // Memory Copy with Dualcast: the source and both destinations advance.
            n.add64(d::ADDR1, bc);
            n.add64(d::ADDR2, bc);
            n.add64(d::AT40, bc);
            n.sub32(d::SIZE, bc);
        }
        op::CRC | op::COPY_CRC => {
            // CRC Generation / Copy with CRC: the record's CRC Value (@16) is the CRC of
            // the bytes completed; it seeds the rest. With nothing completed and the seed
            // still to be read from memory, the record holds no CRC of anything (the seed
            // read itself may have faulted): the descriptor is resubmitted unchanged.
            if bc == 0 && desc.flags() & flag::CRC_SEED_FROM_MEMORY != 0 {
                return n;
            }
            n.set_flags(desc.flags() & !flag::CRC_SEED_FROM_MEMORY);
            n.set32(d::AT40, rec.u32(cr::AT16));
            // The seed address field is reserved without the flag.
            n.set64(d::AT48, 0);
            n.add64(d::ADDR1, bc);
            if desc.opcode() == op::COPY_CRC {
                n.add64(d::ADDR2, bc);
            }
            n.sub32(d::SIZE, bc);
        }
        op::DIF_CHECK | op::DIF_INSERT | op::DIF_STRIP | op::DIF_UPDATE => {
            // DIF operations: Bytes Completed counts source bytes of whole blocks; the
            // record's tag fields hold the reference and application tags for the next
            // block (source side @16/@22 for Check, Strip and Update; destination side
            // @24/@30 for Insert and Update). They seed the rest (as DML and accel-config
            // do).
            let bs = desc.dif_block();
            let op = desc.opcode();
            let (src_step, dst_step) = match op {
                op::DIF_INSERT => (bs, bs + 8),
                op::DIF_STRIP => (bs + 8, bs),
                op::DIF_UPDATE => (bs + 8, bs + 8),
                _ => (bs + 8, 0),
            };
            assert_eq!(
                bc % src_step,
                0,
                "DIF bytes completed {bc} not whole blocks"
            );
            let blocks = bc / src_step;
            n.add64(d::ADDR1, bc);
            if op != op::DIF_CHECK {
                n.add64(d::ADDR2, blocks * dst_step);
            }
            n.sub32(d::SIZE, bc);
            if op != op::DIF_INSERT {
                n.set32(d::AT48, rec.u32(cr::AT16));
                n.set16(d::DIF_SRC_APP, rec.u16(cr::AT16 + 6));
            }
            if op == op::DIF_INSERT || op == op::DIF_UPDATE {
                n.set32(d::DIF_DEST_REF, rec.u32(cr::AT24));
                n.set16(d::DIF_DEST_APP, rec.u16(cr::AT24 + 6));
            }
        }
        other => panic!("no resume rule for opcode {other:#x}"),
    }
    n
}

/// CPU access to the memory the descriptors name (for the Create Delta record).
pub trait Memory {
    fn read(&self, addr: u64, len: usize) -> Vec<u8>;
    fn write(&self, addr: u64, data: &[u8]);
}

/// What a descriptor run to the end through its partial completions produced.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The last record (the one that was not a partial completion).
    pub last: Cr,
    /// Bytes of the original operation done before the last descriptor started (forward
    /// operations; offsets the last record reports are relative to that point).
    pub before_last: u64,
    /// Create Delta: record bytes written by all the descriptors.
    pub delta_size: u32,
    pub partials: usize,
}

impl Finished {
    /// Compare / Compare Pattern: (equal, offset of the difference in the original).
    pub fn compare(&self) -> (bool, Option<u64>) {
        let equal = self.last.result() == 0;
        let at = (!equal).then(|| self.before_last + u64::from(self.last.bytes_completed()));
        (equal, at)
    }
    /// Create Delta: (result, record size) of the whole operation.
    pub fn delta(&self) -> (u8, u32) {
        let r = match self.last.result() {
            2 => 2,
            _ if self.delta_size > 0 => 1,
            _ => 0,
        };
        (r, self.delta_size)
    }
}

/// Runs `first` to the end: `submit` executes one descriptor and returns its record, `fix`
/// makes the faulting page present. A Create Delta continuation writes entries whose
/// offsets count from its own sources (specification, Create Delta Record: offsets are in
/// 8-byte units from the start of the sources); they are rebased onto the original's so
/// the record is the one the operation would have written without faults.
pub fn run(
    first: Desc,
    submit: &mut dyn FnMut(&Desc) -> Cr,
    fix: &mut dyn FnMut(&Desc, &Cr),
    mem: &dyn Memory,
) -> Finished {
    run_from(first, None, submit, fix, mem)
}

/// [`run`], when `first` already ran and wrote `first_record` (a batch member).
pub fn run_from(
    first: Desc,
    mut first_record: Option<Cr>,
    submit: &mut dyn FnMut(&Desc) -> Cr,
    fix: &mut dyn FnMut(&Desc, &Cr),
    mem: &dyn Memory,
) -> Finished {
    let mut desc = first;
    let mut done = 0u64;
    let mut delta_size = 0u32;
    let mut partials = 0;
    loop {
        let rec = match first_record.take() {
            Some(r) => r,
            None => submit(&desc),
        };
        if desc.opcode() == op::CREATE_DELTA {
            let written = rec.u32(cr::AT16);
            if done > 0 && written > 0 {
                rebase(mem, desc.u64(d::AT40), written, done / 8);
            }
            delta_size += written;
        }
        if rec.code() != cr::PAGE_FAULT_NO_BOF {
            return Finished {
                last: rec,
                before_last: done,
                delta_size,
                partials,
            };
        }
        partials += 1;
        assert!(partials < 16, "no progress: {rec:?}");
        fix(&desc, &rec);
        let next = resume(&desc, &rec);
        if !(desc.opcode() == op::MEMMOVE && rec.result() == 1) {
            done += u64::from(rec.bytes_completed());
        }
        desc = next;
    }
}

/// Adds `words` to the offset of each 10-byte entry (u16 offset, 8 data bytes) of the
/// record piece at `addr`.
fn rebase(mem: &dyn Memory, addr: u64, len: u32, words: u64) {
    let mut r = mem.read(addr, len as usize);
    assert_eq!(r.len() % 10, 0);
    for e in r.chunks_mut(10) {
        let o = u64::from(u16::from_le_bytes([e[0], e[1]])) + words;
        let o = u16::try_from(o).expect("offset beyond 16 bits");
        e[..2].copy_from_slice(&o.to_le_bytes());
    }
    mem.write(addr, &r);
}

/// A batch run to the end: each member's outcome.
#[derive(Clone, Debug)]
pub struct BatchFinished {
    pub members: Vec<Finished>,
    /// Partial completions of the batch descriptor itself (list faults).
    pub list_faults: usize,
}

/// Where a batch's members and their records live.
pub struct BatchLayout {
    pub list: u64,
    pub members: Vec<Desc>,
    /// Completion record address of each member (the members' own byte 8 field).
    pub records: Vec<u64>,
}

/// Runs a batch to the end. `submit_batch(list, count)` executes a Batch descriptor and
/// returns its record; `member_record(j)` reads member j's record; `clear(j)` zeroes it.
/// Rules (specification, Batch operation and completion record): status 0x05 means a
/// member failed; a member whose record was never written was abandoned (an earlier
/// member failed before its Fence) and runs again whole; status 0x06 means reading the
/// descriptor list faulted after Descriptors Completed (bytes 4–7) members were read and
/// processed: the rest of the list is submitted again (as a single descriptor when one
/// member is left, since a batch holds at least two). A member run on its own drops Fence,
/// which orders members of one batch only.
pub fn run_batch(
    layout: &BatchLayout,
    submit_batch: &mut dyn FnMut(u64, u32) -> Cr,
    member_record: &dyn Fn(usize) -> Cr,
    clear: &dyn Fn(usize),
    submit: &mut dyn FnMut(&Desc) -> Cr,
    fix: &mut dyn FnMut(&Desc, &Cr),
    mem: &dyn Memory,
) -> BatchFinished {
    let count = layout.members.len();
    let mut out: Vec<Option<Finished>> = vec![None; count];
    let mut list_faults = 0;
    let mut start = 0usize;
    while start < count {
        let left = count - start;
        if left == 1 {
            out[start] = Some(run(alone(&layout.members[start]), submit, fix, mem));
            break;
        }
        for j in start..count {
            clear(j);
        }
        let batch = Desc::new(op::BATCH);
        let rec = submit_batch(layout.list + 64 * start as u64, left as u32);
        let fetched = match rec.code() {
            cr::SUCCESS | cr::BATCH_FAIL => left,
            cr::BATCH_PAGE_FAULT => {
                list_faults += 1;
                fix(&batch, &rec);
                rec.bytes_completed() as usize
            }
            other => panic!("batch status {other:#x}: {rec:?}"),
        };
        assert!(fetched <= left);
        for (j, slot) in out.iter_mut().enumerate().skip(start).take(fetched) {
            let m = member_record(j);
            let member = alone(&layout.members[j]);
            let first = (m.code() != 0).then_some(m);
            *slot = Some(run_from(member, first, submit, fix, mem));
        }
        start += fetched;
    }
    BatchFinished {
        members: out
            .into_iter()
            .map(|f| f.expect("every member ran"))
            .collect(),
        list_faults,
    }
}

/// A batch member as a descriptor of its own.
fn alone(m: &Desc) -> Desc {
    let mut x = *m;
    x.set_flags(m.flags() & !flag::FENCE);
    x
}
