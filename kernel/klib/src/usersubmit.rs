//! Validation of a DSA work descriptor that a ring-3 process hands to the submit system call
//! (the default user path: direct portal access is subject to Intel's erratum advisory
//! INTEL-SA-01084, and Linux treats every DSA as unsafe for it).
//!
//! The kernel copies the 64 bytes once and validates only the copy, here; what it submits is
//! the descriptor this function returns, rebuilt from the decoded fields:
//! * dword 0 is forced: PASID = the caller's, privilege 0, bits 30:20 zero (ENQCMDS #GPs
//!   otherwise) — whatever the process wrote there;
//! * opcodes: a whitelist of operations whose every address operand is checked here
//!   (No-op, Memory Move, Fill, Compare, Compare Pattern, CRC Generation, Copy with CRC);
//!   Batch is refused (on DSA 1.x always: members inherit the batch's PASID and privilege
//!   and would need the same validation, DSA spec §8.8; this kernel refuses it on every
//!   version), everything else is refused;
//! * flags: CRAV and RCR required, cache control and Request Completion Interrupt allowed,
//!   nothing else (no fence outside a batch, no block-on-fault, no operation-specific flag
//!   that would name another address);
//! * the interrupt handle: with RCI, the field holds one of the process's own handle ids,
//!   which the caller's translation turns into the device's interrupt handle (an id the
//!   process does not hold is refused: a process can never name a raw device handle);
//!   without RCI it must be zero;
//! * the completion record: 32-byte aligned (DSA spec §8.1.4; Linux refuses a misaligned one
//!   as a security issue for the engine), inside the user half;
//! * the transfer size: non-zero and at most [`Limits::max_transfer`] (the kernel passes the
//!   shared WQ's Maximum Transfer Size);
//! * every address operand `[addr, addr + size)` inside the user half (the IOMMU would refuse
//!   kernel pages anyway: they are supervisor-only and the PASID entry refuses supervisor
//!   requests; this gives the process a clean error instead of a page fault);
//! * bytes 38–39 (reserved) zero. The operation-specific bytes 40–63 pass through as
//!   written: for the whitelisted operations with the allowed flags none of them is an
//!   address (CRC seed and pattern values only), so they cannot widen what the device touches.

use core::fmt;

use dsa_spec::{DescFlags, Descriptor, Opcode};
use user_abi::user_range_ok;

/// Bytes of a DSA completion record and its alignment.
pub const COMPLETION_ALIGN: u64 = 32;

/// What the device allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest transfer size (GENCAP / WQCFG maximum).
    pub max_transfer: u64,
}

/// Why a descriptor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescError {
    /// Batch descriptors are not accepted from processes.
    Batch,
    /// An opcode outside the whitelist.
    Opcode(u8),
    /// Flags outside CRAV | RCR | cache control, or CRAV/RCR missing.
    Flags(u32),
    /// Completion record not 32-byte aligned or outside the user half.
    Completion(u64),
    /// Transfer size 0 or above the device's maximum.
    Size(u32),
    /// An address operand outside the user half (or wrapping).
    Address(u64),
    /// A non-zero interrupt handle without RCI, or a non-zero reserved field.
    Reserved,
    /// RCI with an interrupt-handle id the process does not hold (on this device).
    Handle(u16),
}

impl fmt::Display for DescError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Batch => write!(f, "batch descriptors are not accepted from processes"),
            Self::Opcode(o) => write!(f, "opcode {o:#04x} is not accepted from processes"),
            Self::Flags(fl) => write!(
                f,
                "flags {fl:#08x}: CRAV and RCR are required, only cache control may be added"
            ),
            Self::Completion(a) => write!(
                f,
                "completion record {a:#x} is not 32-byte aligned in the user half"
            ),
            Self::Size(s) => write!(f, "transfer size {s:#x} is 0 or above the device's maximum"),
            Self::Address(a) => write!(f, "operand {a:#x} is not a user-half range"),
            Self::Reserved => write!(f, "interrupt handle or reserved field is not zero"),
            Self::Handle(h) => write!(f, "interrupt handle {h} is not one of the process's"),
        }
    }
}

impl core::error::Error for DescError {}

/// Which of operands 1 and 2 are addresses of `size` bytes.
fn address_operands(op: Opcode) -> Option<(bool, bool)> {
    Some(match op {
        Opcode::Noop => (false, false),
        // addr1 = source, addr2 = destination.
        Opcode::MemMove | Opcode::CopyCrc => (true, true),
        // addr1 = pattern, addr2 = destination.
        Opcode::Fill => (false, true),
        // addr1, addr2 = the two sources.
        Opcode::Compare => (true, true),
        // addr1 = source, addr2 = pattern.
        Opcode::ComparePattern => (true, false),
        // addr1 = source.
        Opcode::CrcGen => (true, false),
        _ => return None,
    })
}

/// Validates `raw` for a process with `pasid` and returns the descriptor to submit.
/// `handle` translates the process's interrupt-handle id of a descriptor with RCI into the
/// device's interrupt handle (None: the process holds no such handle on this device).
pub fn validate(
    raw: &[u8; 64],
    pasid: u32,
    limits: &Limits,
    handle: impl FnOnce(u16) -> Option<u16>,
) -> Result<[u8; 64], DescError> {
    let d = Descriptor::from_bytes(raw);
    let op = match Opcode::from_u8(d.opcode) {
        Some(Opcode::Batch) => return Err(DescError::Batch),
        Some(op) => op,
        None => return Err(DescError::Opcode(d.opcode)),
    };
    let (a1, a2) = address_operands(op).ok_or(DescError::Opcode(d.opcode))?;
    let required = DescFlags::CRAV | DescFlags::RCR;
    let allowed = required | DescFlags::CACHE_CONTROL | DescFlags::RCI;
    if !d.flags.contains(required) || !allowed.contains(d.flags) {
        return Err(DescError::Flags(d.flags.bits()));
    }
    let cr = d.completion_addr;
    if !cr.is_multiple_of(COMPLETION_ALIGN) || !user_range_ok(cr, COMPLETION_ALIGN) {
        return Err(DescError::Completion(cr));
    }
    let interrupt = d.flags.contains(DescFlags::RCI);
    if (!interrupt && d.int_handle != 0) || d.reserved38 != 0 {
        return Err(DescError::Reserved);
    }
    let size = u64::from(d.size);
    if op != Opcode::Noop && (size == 0 || size > limits.max_transfer) {
        return Err(DescError::Size(d.size));
    }
    for (is_addr, addr) in [(a1, d.addr1), (a2, d.addr2)] {
        if is_addr && !user_range_ok(addr, size) {
            return Err(DescError::Address(addr));
        }
    }
    let mut out = d;
    if interrupt {
        out.int_handle = handle(d.int_handle).ok_or(DescError::Handle(d.int_handle))?;
    }
    out.pasid = pasid & 0xf_ffff;
    out.reserved_pasid_bits = 0;
    out.privileged = false;
    Ok(out.to_bytes())
}

/// Why [`remainder`] has nothing to submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// The record does not report a partial completion at a page fault (status 0x03): a
    /// success, an error, or a Compare that stopped at a difference (status 0x01, Result 1).
    NotAPageFault(u8),
    /// An operation that is not resumed for processes (No-op, which cannot fault partially,
    /// and everything the submit call refuses).
    Opcode(u8),
    /// Bytes Completed is not below the descriptor's transfer size.
    Completed(u32),
    /// Flags whose continuation is not defined here (CRC64: its seed and CRC are 8 bytes).
    Flags(u32),
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAPageFault(s) => {
                write!(f, "status {s:#04x} is not a page-fault partial completion")
            }
            Self::Opcode(o) => write!(f, "opcode {o:#04x} is not resumed for processes"),
            Self::Completed(n) => {
                write!(f, "bytes completed {n:#x} is not below the transfer size")
            }
            Self::Flags(fl) => write!(f, "flags {fl:#08x} have no continuation here"),
        }
    }
}

impl core::error::Error for ResumeError {}

/// Descriptor bytes 40.. (operation-specific area) as offsets into `op_specific`.
const AT40: usize = 0;
const AT48: usize = 8;

/// Pattern bytes `p` (byte j = the value destination/source byte j is matched with)
/// starting at phase `k`: byte j of the result is byte (k + j) mod N of `p`.
fn rotated<const N: usize>(p: [u8; N], k: usize) -> [u8; N] {
    core::array::from_fn(|j| p[(k + j) % N])
}

/// The rest of the process's descriptor `raw` (as it handed it to the submit call) after its
/// completion record `cr` reported a partial completion at a page fault (status 0x03, block
/// on fault off). Written from the Intel DSA Architecture Specification (rev 2.0): the
/// completion record (§8.2: Status, Result, Fault Info, Bytes Completed, and the CRC Value
/// at byte 16) and each operation's definition (§8.3); the partial completion is a prefix
/// of the work (§3.13.3) except for a Memory Move done backwards. Bytes Completed is `n`:
/// * Memory Move (§8.3.4): Result bit 0 = 0, the copy went forward and did its first `n`
///   bytes, so source and destination advance by `n`; Result bit 0 = 1 (overlapping
///   buffers, destination above the source), it went backward and did its last `n` bytes,
///   so the addresses stay. The size shrinks by `n` either way.
/// * Fill (§8.3.5): destination byte k receives pattern byte k mod P (P = 8, or 16 with the
///   16-byte-pattern flag, bytes 8–15 at descriptor byte 40), counted from the descriptor's
///   destination address. The destination advances by `n`; the rest starts at pattern byte
///   n mod P, so the pattern is rotated by n mod P bytes.
/// * Compare (§8.3.6): the first `n` bytes compared equal; both sources advance. A compare
///   that found a difference completed (status 0x01, Result 1) and is not resumed.
/// * Compare Pattern (§8.3.7): the source advances, the 8-byte pattern value (byte 24)
///   rotates as Fill's.
/// * CRC Generation (§8.3.12), Copy with CRC (§8.3.13): the record's CRC Value is the CRC
///   of the `n` bytes done (with the descriptor's CRC flags), and a CRC chains: the CRC of
///   A‖B is the CRC of B seeded with the CRC of A (in each inversion/reflection mode, the
///   mode's own seed transform undoes its result transform). So the seed (byte 40) becomes
///   the record's CRC, the seed-from-memory flag is cleared and its address field (byte 48,
///   reserved without the flag) zeroed; the inversion/reflection flags stay. The source
///   (and Copy with CRC's destination) advance. CRC64 is refused ([`ResumeError::Flags`]).
///
/// With `n` = 0 nothing was done and no state was consumed: the descriptor is returned as
/// it is (its CRC seed may still be in memory; the record's CRC of nothing is not needed).
/// The caller validates what this returns like any other descriptor (the submit call
/// refuses the seed-from-memory, 16-byte-pattern and CRC flags itself). (The driver's
/// `Submitter::resume` applies the same rules to work it submitted from its own rings,
/// which live outside a process's PASID; this is a separate implementation, checked
/// against it and against the specification's in the driver's resume matrix.)
pub fn remainder(raw: &[u8; 64], cr: &[u8; 32]) -> Result<[u8; 64], ResumeError> {
    let rec = dsa_spec::CompletionRecord::from_bytes(cr);
    if rec.status & 0x3f != dsa_spec::status::PAGE_FAULT_PARTIAL {
        return Err(ResumeError::NotAPageFault(rec.status));
    }
    let mut d = Descriptor::from_bytes(raw);
    let Some(
        op @ (Opcode::MemMove
        | Opcode::Fill
        | Opcode::Compare
        | Opcode::ComparePattern
        | Opcode::CrcGen
        | Opcode::CopyCrc),
    ) = Opcode::from_u8(d.opcode)
    else {
        return Err(ResumeError::Opcode(d.opcode));
    };
    let crc = matches!(op, Opcode::CrcGen | Opcode::CopyCrc);
    if crc && d.flags.contains(DescFlags::CRC64) {
        return Err(ResumeError::Flags(d.flags.bits()));
    }
    let n = rec.bytes_completed;
    if n >= d.size {
        return Err(ResumeError::Completed(n));
    }
    if n == 0 {
        return Ok(*raw);
    }
    let step = u64::from(n);
    let k = n as usize;
    match op {
        Opcode::MemMove => {
            if rec.result & 1 == 0 {
                d.addr1 = d.addr1.wrapping_add(step);
                d.addr2 = d.addr2.wrapping_add(step);
            }
        }
        Opcode::Fill if d.flags.contains(DescFlags::FILL_16B) => {
            let mut p = [0u8; 16];
            p[..8].copy_from_slice(&d.addr1.to_le_bytes());
            p[8..].copy_from_slice(&d.op_specific[AT40..AT40 + 8]);
            let r = rotated(p, k % 16);
            let mut lo = [0u8; 8];
            lo.copy_from_slice(&r[..8]);
            d.addr1 = u64::from_le_bytes(lo);
            d.op_specific[AT40..AT40 + 8].copy_from_slice(&r[8..]);
            d.addr2 = d.addr2.wrapping_add(step);
        }
        Opcode::Fill => {
            d.addr1 = u64::from_le_bytes(rotated(d.addr1.to_le_bytes(), k % 8));
            d.addr2 = d.addr2.wrapping_add(step);
        }
        Opcode::Compare => {
            d.addr1 = d.addr1.wrapping_add(step);
            d.addr2 = d.addr2.wrapping_add(step);
        }
        Opcode::ComparePattern => {
            d.addr1 = d.addr1.wrapping_add(step);
            d.addr2 = u64::from_le_bytes(rotated(d.addr2.to_le_bytes(), k % 8));
        }
        _ => {
            // CRC Generation / Copy with CRC.
            d.flags.remove(DescFlags::CRC_SEED_FROM_MEM);
            d.op_specific[AT40..AT40 + 4].copy_from_slice(&cr[16..20]);
            d.op_specific[AT48..AT48 + 8].fill(0);
            d.addr1 = d.addr1.wrapping_add(step);
            if op == Opcode::CopyCrc {
                d.addr2 = d.addr2.wrapping_add(step);
            }
        }
    }
    d.size -= n;
    Ok(d.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use user_abi::{USER_BASE, USER_TOP};

    const LIM: Limits = Limits {
        max_transfer: 1 << 20,
    };
    const SRC: u64 = USER_BASE + 0x1000_0000;
    const DST: u64 = USER_BASE + 0x2000_0000;
    const CR: u64 = USER_BASE + 0x3000_0040;

    fn memmove() -> Descriptor {
        let mut d = Descriptor::new(Opcode::MemMove);
        d.flags = DescFlags::CRAV | DescFlags::RCR;
        d.completion_addr = CR;
        d.addr1 = SRC;
        d.addr2 = DST;
        d.size = 4096;
        d
    }

    /// A change to a valid descriptor.
    type Edit = fn(&mut Descriptor);

    fn check(d: &Descriptor) -> Result<Descriptor, DescError> {
        validate(&d.to_bytes(), 77, &LIM, |_| None).map(|b| Descriptor::from_bytes(&b))
    }

    #[test]
    fn an_interrupt_names_a_process_handle_translated_to_the_devices() {
        let mut d = memmove();
        d.flags |= DescFlags::RCI;
        d.int_handle = 3;
        let raw = validate(&d.to_bytes(), 77, &LIM, |id| (id == 3).then_some(0x1234)).unwrap();
        let out = Descriptor::from_bytes(&raw);
        assert_eq!(out.int_handle, 0x1234, "the device's handle, not the id");
        assert!(out.flags.contains(DescFlags::RCI));
        // A raw device handle (or any id the process does not hold) is refused.
        d.int_handle = 0x1234;
        assert_eq!(
            validate(&d.to_bytes(), 77, &LIM, |id| (id == 3).then_some(0x1234)),
            Err(DescError::Handle(0x1234))
        );
    }

    #[test]
    fn pasid_and_privilege_are_forced_to_the_callers() {
        let mut d = memmove();
        d.pasid = 1; // the kernel's
        d.privileged = true;
        d.reserved_pasid_bits = 0x7ff;
        let out = check(&d).unwrap();
        assert_eq!(
            (out.pasid, out.privileged, out.reserved_pasid_bits),
            (77, false, 0)
        );
        let raw = validate(&d.to_bytes(), 77, &LIM, |_| None).unwrap();
        assert_eq!(
            u32::from_le_bytes(raw[0..4].try_into().unwrap()),
            77,
            "dword 0"
        );
        // Everything else is what the process asked for.
        assert_eq!(
            (
                out.opcode,
                out.addr1,
                out.addr2,
                out.size,
                out.completion_addr
            ),
            (d.opcode, d.addr1, d.addr2, d.size, d.completion_addr)
        );
    }

    #[test]
    fn each_bad_field_is_refused_with_its_reason() {
        let ok = memmove();
        let cases: [(Edit, DescError); 14] = [
            (|d| d.opcode = Opcode::Batch as u8, DescError::Batch),
            (|d| d.opcode = Opcode::Drain as u8, DescError::Opcode(2)),
            (
                |d| d.opcode = Opcode::CacheFlush as u8,
                DescError::Opcode(0x20),
            ),
            (|d| d.opcode = 0xff, DescError::Opcode(0xff)),
            (
                |d| d.flags = DescFlags::CRAV,
                DescError::Flags(DescFlags::CRAV.bits()),
            ),
            (|d| d.flags |= DescFlags::RCI, DescError::Handle(0)),
            (
                |d| d.flags |= DescFlags::BLOCK_ON_FAULT,
                DescError::Flags(
                    (DescFlags::CRAV | DescFlags::RCR | DescFlags::BLOCK_ON_FAULT).bits(),
                ),
            ),
            (
                |d| d.completion_addr = CR + 8,
                DescError::Completion(CR + 8),
            ),
            (
                |d| d.completion_addr = 0x20_0000,
                DescError::Completion(0x20_0000),
            ),
            (|d| d.size = 0, DescError::Size(0)),
            (|d| d.size = (1 << 20) + 1, DescError::Size((1 << 20) + 1)),
            (|d| d.addr1 = 0x10_0000, DescError::Address(0x10_0000)),
            (|d| d.addr2 = USER_TOP - 8, DescError::Address(USER_TOP - 8)),
            (|d| d.int_handle = 3, DescError::Reserved),
        ];
        for (f, want) in cases {
            let mut d = ok;
            f(&mut d);
            assert_eq!(check(&d).map(|_| ()), Err(want), "{want}");
        }
        // Operands that are not addresses are not range-checked: a fill pattern.
        let mut d = ok;
        d.opcode = Opcode::Fill as u8;
        d.addr1 = 0xdead_beef_dead_beef;
        assert!(check(&d).is_ok());
        // Cache control is allowed.
        let mut d = ok;
        d.flags |= DescFlags::CACHE_CONTROL;
        assert!(check(&d).is_ok());
    }

    fn record(status: u8, result: u8, done: u32) -> [u8; 32] {
        let mut c = [0u8; 32];
        c[0] = status;
        c[1] = result;
        c[4..8].copy_from_slice(&done.to_le_bytes());
        c[8..16].copy_from_slice(&(DST + u64::from(done)).to_le_bytes());
        c
    }

    #[test]
    fn a_forward_memmove_resumes_after_the_bytes_completed() {
        let mut d = memmove();
        d.size = 0x4000;
        let rest =
            Descriptor::from_bytes(&remainder(&d.to_bytes(), &record(0x83, 0, 0x1800)).unwrap());
        assert_eq!(
            (rest.addr1, rest.addr2, rest.size),
            (SRC + 0x1800, DST + 0x1800, 0x2800)
        );
        assert_eq!(rest.completion_addr, CR);
        // Still a descriptor the call accepts.
        assert!(check(&rest).is_ok());
    }

    #[test]
    fn a_backward_memmove_keeps_its_addresses() {
        let mut d = memmove();
        d.size = 0x4000;
        let rest =
            Descriptor::from_bytes(&remainder(&d.to_bytes(), &record(0x03, 1, 0x1000)).unwrap());
        assert_eq!((rest.addr1, rest.addr2, rest.size), (SRC, DST, 0x3000));
    }

    #[test]
    fn only_a_page_fault_with_bytes_left_is_resumed() {
        let d = memmove();
        assert_eq!(
            remainder(&d.to_bytes(), &record(0x01, 0, 0)),
            Err(ResumeError::NotAPageFault(0x01))
        );
        assert_eq!(
            remainder(&d.to_bytes(), &record(0x03, 0, 4096)),
            Err(ResumeError::Completed(4096))
        );
        // A compare that stopped at a difference completed: nothing to resume.
        let mut c = memmove();
        c.opcode = Opcode::Compare as u8;
        assert_eq!(
            remainder(&c.to_bytes(), &record(0x01, 1, 0x123)),
            Err(ResumeError::NotAPageFault(0x01))
        );
        // No-op (cannot fault partially) and what the submit call refuses.
        for op in [
            Opcode::Noop,
            Opcode::Dualcast,
            Opcode::CreateDelta,
            Opcode::Batch,
        ] {
            let mut x = memmove();
            x.opcode = op as u8;
            assert_eq!(
                remainder(&x.to_bytes(), &record(0x03, 0, 8)),
                Err(ResumeError::Opcode(op as u8))
            );
        }
        let mut x = crc_desc(Opcode::CrcGen);
        x.flags |= DescFlags::CRC64;
        assert_eq!(
            remainder(&x.to_bytes(), &record(0x03, 0, 8)),
            Err(ResumeError::Flags(x.flags.bits()))
        );
        // Nothing done: the descriptor as it was (a CRC seed still in memory included).
        let mut x = crc_desc(Opcode::CrcGen);
        x.flags |= DescFlags::CRC_SEED_FROM_MEM;
        x.set_crc_seed_addr(SRC + 0x40);
        assert_eq!(
            remainder(&x.to_bytes(), &record(0x03, 0, 0)),
            Ok(x.to_bytes())
        );
    }

    /// The bytes a pattern operation matches against destination/source bytes
    /// `[0, len)` of descriptor `d` (8- or 16-byte pattern from the descriptor's fields).
    fn pattern_stream(d: &Descriptor, len: usize) -> Vec<u8> {
        let (p, size): (Vec<u8>, usize) = if d.opcode == Opcode::ComparePattern as u8 {
            (d.addr2.to_le_bytes().to_vec(), 8)
        } else if d.flags.contains(DescFlags::FILL_16B) {
            let mut p = d.addr1.to_le_bytes().to_vec();
            p.extend_from_slice(&d.fill_pattern_high().to_le_bytes());
            (p, 16)
        } else {
            (d.addr1.to_le_bytes().to_vec(), 8)
        };
        (0..len).map(|k| p[k % size]).collect()
    }

    /// Fill and Compare Pattern: the prefix the device did followed by what the remainder
    /// does is the pattern stream of the whole operation, for every Bytes Completed.
    #[test]
    fn a_pattern_resumes_in_phase() {
        let pat = 0x0123_4567_89ab_cdefu64;
        let mut fill = memmove();
        fill.opcode = Opcode::Fill as u8;
        fill.addr1 = pat;
        fill.size = 100;
        let mut fill16 = fill;
        fill16.flags |= DescFlags::FILL_16B;
        fill16.set_fill_pattern_high(0xfedc_ba98_7654_3210);
        let mut cpat = memmove();
        cpat.opcode = Opcode::ComparePattern as u8;
        cpat.addr2 = pat;
        cpat.size = 100;
        for d in [fill, fill16, cpat] {
            let whole = pattern_stream(&d, 100);
            for n in 1..100u32 {
                let rest =
                    Descriptor::from_bytes(&remainder(&d.to_bytes(), &record(0x83, 0, n)).unwrap());
                assert_eq!(rest.size, 100 - n);
                let (moved, stays) = if d.opcode == Opcode::Fill as u8 {
                    (rest.addr2, d.addr2 + u64::from(n))
                } else {
                    (rest.addr1, d.addr1 + u64::from(n))
                };
                assert_eq!(moved, stays, "the operand advances");
                let mut got = whole[..n as usize].to_vec();
                got.extend(pattern_stream(&rest, (100 - n) as usize));
                assert_eq!(got, whole, "opcode {:#x}, bytes completed {n}", d.opcode);
                assert!(check(&rest).is_ok() || d.flags.contains(DescFlags::FILL_16B));
            }
        }
    }

    #[test]
    fn a_compare_resumes_with_both_sources_advanced() {
        let mut c = memmove();
        c.opcode = Opcode::Compare as u8;
        let rest =
            Descriptor::from_bytes(&remainder(&c.to_bytes(), &record(0x03, 0, 0x7ff)).unwrap());
        assert_eq!(
            (rest.addr1, rest.addr2, rest.size),
            (SRC + 0x7ff, DST + 0x7ff, 4096 - 0x7ff)
        );
        assert!(check(&rest).is_ok());
    }

    fn crc_desc(op: Opcode) -> Descriptor {
        let mut d = memmove();
        d.opcode = op as u8;
        if op == Opcode::CrcGen {
            d.addr2 = 0;
        }
        d.set_crc_seed(0x1234_5678);
        d
    }

    /// CRC-32C of `data` seeded with `seed` (default mode: seed and result inverted).
    fn crc32c(seed: u32, data: &[u8]) -> u32 {
        let mut r = !seed;
        for &b in data {
            r ^= u32::from(b);
            for _ in 0..8 {
                r = (r >> 1) ^ if r & 1 != 0 { 0x82f6_3b78 } else { 0 };
            }
        }
        !r
    }

    #[test]
    fn a_crc_resumes_seeded_with_the_records_crc() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(crc32c(0, b"123456789"), 0xe306_9283);
        for op in [Opcode::CrcGen, Opcode::CopyCrc] {
            for from_memory in [false, true] {
                let mut d = crc_desc(op);
                d.flags |= DescFlags::CRC_BYPASS_DATA_REFL;
                if from_memory {
                    d.flags |= DescFlags::CRC_SEED_FROM_MEM;
                    d.set_crc_seed(0);
                    d.set_crc_seed_addr(SRC + 0x40);
                }
                let n = 0x9c3u32;
                let mut rec = record(0x03, 0, n);
                let done = crc32c(0x1234_5678, &data[..n as usize]);
                rec[16..20].copy_from_slice(&done.to_le_bytes());
                let rest = Descriptor::from_bytes(&remainder(&d.to_bytes(), &rec).unwrap());
                assert_eq!(rest.crc_seed(), done, "the seed is the record's CRC");
                assert!(!rest.flags.contains(DescFlags::CRC_SEED_FROM_MEM));
                assert_eq!(rest.crc_seed_addr(), 0, "reserved without the flag");
                assert!(rest.flags.contains(DescFlags::CRC_BYPASS_DATA_REFL));
                assert_eq!((rest.addr1, rest.size), (SRC + u64::from(n), 4096 - n));
                let dst = if op == Opcode::CopyCrc {
                    DST + u64::from(n)
                } else {
                    0
                };
                assert_eq!(rest.addr2, dst);
                // Chained, the rest's CRC is the whole operation's.
                assert_eq!(
                    crc32c(rest.crc_seed(), &data[n as usize..]),
                    crc32c(0x1234_5678, &data)
                );
            }
        }
        // Without the CRC flags the rest is a descriptor the call accepts.
        let d = crc_desc(Opcode::CopyCrc);
        let rest =
            Descriptor::from_bytes(&remainder(&d.to_bytes(), &record(0x03, 0, 0x10)).unwrap());
        assert!(check(&rest).is_ok());
    }
}
