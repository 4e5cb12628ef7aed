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
    /// The record does not report a partial completion at a page fault (status 0x03).
    NotAPageFault(u8),
    /// Only Memory Move is resumed from processes so far.
    Opcode(u8),
    /// Bytes Completed is not below the descriptor's transfer size.
    Completed(u32),
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
        }
    }
}

impl core::error::Error for ResumeError {}

/// The rest of the process's descriptor `raw` (as it handed it to the submit call) after its
/// completion record `cr` reported a partial completion at a page fault (status 0x03, block
/// on fault off). Intel DSA Architecture Specification, Memory Move and the completion
/// record's Bytes Completed / Result fields: a forward copy did its first Bytes Completed
/// bytes, so both addresses advance by it and the size shrinks by it; a copy done backwards
/// (overlapping buffers, Result bit 0 = 1) did its last Bytes Completed bytes, so the
/// addresses stay and the size shrinks. The caller validates what this returns like any
/// other descriptor. (The driver's `Submitter::resume` applies the same rules, but only to
/// work it submitted from its own rings, which live outside a process's PASID.)
pub fn remainder(raw: &[u8; 64], cr: &[u8; 32]) -> Result<[u8; 64], ResumeError> {
    let rec = dsa_spec::CompletionRecord::from_bytes(cr);
    let st = rec.status & 0x3f;
    if st != dsa_spec::status::PAGE_FAULT_PARTIAL {
        return Err(ResumeError::NotAPageFault(rec.status));
    }
    let mut d = Descriptor::from_bytes(raw);
    if Opcode::from_u8(d.opcode) != Some(Opcode::MemMove) {
        return Err(ResumeError::Opcode(d.opcode));
    }
    let n = rec.bytes_completed;
    if n >= d.size {
        return Err(ResumeError::Completed(n));
    }
    if rec.result & 1 == 0 {
        d.addr1 = d.addr1.wrapping_add(u64::from(n));
        d.addr2 = d.addr2.wrapping_add(u64::from(n));
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
    fn only_a_page_fault_of_a_memmove_with_bytes_left_is_resumed() {
        let d = memmove();
        assert_eq!(
            remainder(&d.to_bytes(), &record(0x01, 0, 0)),
            Err(ResumeError::NotAPageFault(0x01))
        );
        assert_eq!(
            remainder(&d.to_bytes(), &record(0x03, 0, 4096)),
            Err(ResumeError::Completed(4096))
        );
        let mut f = memmove();
        f.opcode = Opcode::Fill as u8;
        assert_eq!(
            remainder(&f.to_bytes(), &record(0x03, 0, 8)),
            Err(ResumeError::Opcode(Opcode::Fill as u8))
        );
    }
}
