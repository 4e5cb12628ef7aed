//! The system-call ABI between the kernel and ring-3 programs.
//!
//! Calling convention (the `syscall` instruction, x86-64 SysV-like): the call number in
//! RAX, up to six arguments in RDI, RSI, RDX, R10, R8, R9 (R10 instead of RCX, which
//! `syscall` overwrites with the return address; R11 gets RFLAGS). The result comes back in
//! RAX: a value `0 ..= i64::MAX` on success, or `-(code)` for an [`Error`] (see
//! [`encode`] / [`decode`]). Every other register except RCX and R11 is preserved.
//!
//! Numbers and error codes are stable: never renumber, only append.
#![no_std]
#![warn(missing_docs)]

use core::fmt;

/// System-call numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Sys {
    /// `exit(status) -> !`: ends the calling process (every thread) with `status`.
    Exit = 0,
    /// `write(ptr, len) -> len`: writes UTF-8 bytes to the serial log (at most
    /// [`WRITE_MAX`] bytes; invalid UTF-8 is refused).
    Write = 1,
    /// `yield() -> 0`: gives the CPU to the next runnable thread of this CPU.
    Yield = 2,
    /// `getpid() -> pid`.
    GetPid = 3,
    /// `mmap(addr, len, prot) -> addr`: anonymous zeroed memory, faulted in lazily.
    /// `addr` = 0 lets the kernel choose; otherwise page-aligned in the user half and not
    /// overlapping another mapping. `prot` = [`PROT_READ`] | [`PROT_WRITE`].
    Mmap = 4,
    /// `munmap(addr, len) -> 0`: unmaps whole pages of anonymous mappings; every CPU's TLB
    /// is flushed before a frame is freed.
    Munmap = 5,
    /// `sleep(ns) -> 0`: blocks the thread for at least `ns` nanoseconds (at most
    /// [`SLEEP_MAX_NS`]).
    Sleep = 6,
    /// `wait_word(ptr, expected) -> 0`: blocks while the aligned `u64` at `ptr` equals
    /// `expected` (futex-like; spurious returns are allowed, re-check the word).
    WaitWord = 7,
    /// `wake_word(ptr, count) -> woken`: wakes up to `count` threads waiting on `ptr`.
    WakeWord = 8,
    /// `spawn(name_ptr, name_len, cpu) -> pid`: starts the embedded program `name` on CPU
    /// `cpu` ([`ANY_CPU`]: the kernel chooses) as a child of the caller.
    Spawn = 9,
    /// `wait(pid) -> status`: blocks until the child `pid` has ended and returns its exit
    /// status (a process killed by a fault or by `kill` ends with [`STATUS_KILLED`]).
    Wait = 10,
    /// `kill(pid) -> 0`: ends a child process (every thread, also while blocked or running
    /// on another CPU).
    Kill = 11,
    /// `thread_spawn(entry, stack_top, arg, cpu) -> tid`: a new thread of the caller's
    /// process, starting at `entry` with `arg` in RDI and RSP = `stack_top` (16-aligned).
    ThreadSpawn = 12,
    /// `thread_exit() -> !`: ends the calling thread (the process ends with its last one,
    /// with status 0).
    ThreadExit = 13,
    /// `cpu() -> index`: the CPU the caller runs on (for tests).
    Cpu = 14,
    /// `dsa_submit(desc_ptr, device) -> 0`: submits the 64-byte DSA work descriptor at
    /// `desc_ptr` to DSA device `device` (0-based) on the caller's PASID (shared virtual
    /// addressing: its addresses are the process's). The kernel copies it once, validates
    /// the copy and forces PASID and privilege (see the kernel's `klib::usersubmit`); the
    /// process polls the completion record (32-byte aligned, in its memory, CRAV|RCR), or,
    /// with [`FLAG_RCI`] and one of its interrupt-handle ids in the interrupt handle field
    /// (bytes 36–37), waits with `ims_wait` (the kernel puts the device's handle there; an id
    /// that is not the caller's is refused with [`Error::BadHandle`] and never reaches the
    /// device). At most [`IMS_INFLIGHT_MAX`] such descriptors in flight per handle
    /// ([`Error::Busy`] beyond).
    DsaSubmit = 15,
    /// `ims_alloc(device, cpu) -> handle`: an interrupt handle on DSA device `device`, bound
    /// to the caller's own PASID (there is no way to name another), whose interrupts go to
    /// CPU `cpu` ([`CURRENT_CPU`]: the CPU the caller runs on). The handle id (≥ 1) is this
    /// process's only; put it in a descriptor's interrupt handle field with the Request
    /// Completion Interrupt flag and `dsa_submit` translates it. [`Error::HandleQuota`] when
    /// the PASID's quota or the device's table is exhausted (nothing else is affected).
    ImsAlloc = 16,
    /// `ims_wait(handle) -> count`: blocks until a completion interrupt of `handle` has been
    /// delivered; returns the completions delivered since the last `ims_wait` (≥ 1), at once
    /// if there are some. [`Error::WouldBlock`] if there are none and nothing is in flight.
    ImsWait = 17,
    /// `ims_set_affinity(handle, cpu) -> 0`: the handle's interrupts go to CPU `cpu` from now
    /// on ([`CURRENT_CPU`]: the caller's).
    ImsSetAffinity = 18,
    /// `ims_release(handle) -> 0`: work already submitted with the handle completes first;
    /// then the id is no longer valid (a thread blocked in `ims_wait` on it returns
    /// [`Error::BadHandle`]).
    ImsRelease = 19,
    /// `dsa_portal(device) -> addr`: maps the submission portal of DSA device `device`'s
    /// shared WQ (one page, uncached, write-only use: 64-byte ENQCMD stores) into the
    /// caller and gives the process its PASID, which the kernel keeps in IA32_PASID
    /// whenever one of its threads runs. The process then submits with ENQCMD from ring
    /// 3, unchecked by the kernel: descriptors carry its PASID (set by the CPU) and
    /// privilege 0. Intel's advisory INTEL-SA-01084 makes direct submission unsafe on DSA
    /// 1.0, so this is kernel policy, off by default (`sva.direct=on` enables it):
    /// [`Error::Denied`] when off. The page is an IMS portal when the device has IMS
    /// (completion interrupt handles are then checked against the PASID by the device).
    /// Calling it again returns the same address.
    DsaPortal = 20,
    /// `dsa_wq_take(device, size_ptr) -> addr`: lends the caller a dedicated WQ of DSA
    /// device `device` (one configured with accel-config `type` `user`) running in the
    /// caller's PASID (WQCFG PASID = the process's, privilege 0), maps its portal page and
    /// writes the WQ size (its credits) as a `u64` at `size_ptr`. The process submits with
    /// MOVDIR64B and must itself keep at most that many descriptors in flight (the device
    /// drops the excess with a software error): the WQ is the process's alone, so the
    /// credits are its own. Direct submission: policy `sva.direct=on` only
    /// ([`Error::Denied`]); [`Error::Busy`] when no user WQ is free. The WQ is disabled
    /// (its work finished) and free again when the process ends.
    DsaWqTake = 21,
    /// `sched_set_cpu(cpu) -> 0`: moves the calling thread to CPU `cpu` (it continues
    /// there; the call returns on the new CPU). The process's interrupt handles whose
    /// interrupts went to the thread's old CPU are retargeted to the new one first (IRTE
    /// rewrite; completions in flight are delivered exactly once, wherever they land).
    /// [`Error::Busy`] if one of those handles is under another control operation: the thread
    /// stays, that handle and the ones after it too (those before it already follow the new
    /// CPU; call again). Same CPU: returns 0 at once.
    SchedSetCpu = 22,
    /// `dsa_resume(desc_ptr, device) -> 0`: demand paging for the device. The descriptor at
    /// `desc_ptr` was submitted with `dsa_submit` (unchanged since) and its completion record
    /// reports a partial completion at a page fault (status 0x03: the device stopped at a page
    /// not yet mapped; block-on-fault is never set for processes). The kernel maps the
    /// faulting page if the address is valid for the process (inside one of its areas, with
    /// write permission for a write fault) — else [`Error::Fault`], the fault is the
    /// process's — writes the rest of the operation (from the bytes already done) over the
    /// descriptor at `desc_ptr` (so a later fault's Bytes Completed, which counts from it, is
    /// resumed from it again), zeroes the record and submits it (validated like any
    /// `dsa_submit`). Every operation `dsa_submit` accepts is resumed by the DSA
    /// specification's rules (Intel DSA Architecture Specification §8.2 completion record,
    /// §8.3 operations): Memory Move advances source and destination by Bytes Completed (a
    /// backward copy, Result 1, keeps them); Fill advances the destination and rotates the
    /// pattern by Bytes Completed mod 8; Compare advances both sources; Compare Pattern
    /// advances the source and rotates the pattern; CRC Generation and Copy with CRC advance
    /// their operands and take the record's CRC as the seed; the size shrinks by Bytes
    /// Completed (none done: resubmitted as it was). [`Error::BadOpcode`] for a No-op;
    /// [`Error::BadArgument`] if the record reports no such fault (a Compare that found a
    /// difference completed). With a completion interrupt, `ims_wait` counts the partial completion and the
    /// resumed rest's as two.
    DsaResume = 23,
}

/// Number of system calls (one past the largest number).
pub const SYS_COUNT: u64 = 24;

impl Sys {
    /// The call with number `n`.
    pub const fn from_number(n: u64) -> Option<Self> {
        Some(match n {
            0 => Self::Exit,
            1 => Self::Write,
            2 => Self::Yield,
            3 => Self::GetPid,
            4 => Self::Mmap,
            5 => Self::Munmap,
            6 => Self::Sleep,
            7 => Self::WaitWord,
            8 => Self::WakeWord,
            9 => Self::Spawn,
            10 => Self::Wait,
            11 => Self::Kill,
            12 => Self::ThreadSpawn,
            13 => Self::ThreadExit,
            14 => Self::Cpu,
            15 => Self::DsaSubmit,
            16 => Self::ImsAlloc,
            17 => Self::ImsWait,
            18 => Self::ImsSetAffinity,
            19 => Self::ImsRelease,
            20 => Self::DsaPortal,
            21 => Self::DsaWqTake,
            22 => Self::SchedSetCpu,
            23 => Self::DsaResume,
            _ => return None,
        })
    }
}

/// Error codes (RAX = `-(code)`). Stable numbering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Error {
    /// No such system call.
    NoSys = 1,
    /// A pointer is null, outside the user half, or the range wraps.
    BadAddress = 2,
    /// A pointer or length is not aligned as the call requires.
    Misaligned = 3,
    /// A length is 0 where it must not be, or above the call's maximum.
    BadLength = 4,
    /// A user page could not be read or written (not mapped, or not writable).
    Fault = 5,
    /// A flag or enumerated argument has an unknown value.
    BadArgument = 6,
    /// No process with that id, or it is not the caller's child.
    NoSuchProcess = 7,
    /// No embedded program of that name.
    NoSuchProgram = 8,
    /// No online CPU with that index.
    NoSuchCpu = 9,
    /// The range overlaps an existing mapping.
    Overlap = 10,
    /// The range is not (entirely) mapped.
    NotMapped = 11,
    /// Out of memory (frames, page tables, kernel heap) or of a per-process limit.
    NoMemory = 12,
    /// Too many processes or threads.
    Limit = 13,
    /// The bytes are not UTF-8.
    NotUtf8 = 14,
    /// The word did not hold the expected value (`wait_word` returned at once).
    WouldBlock = 15,
    /// The process is being killed (returned to blocked threads as they end).
    Killed = 16,
    /// No such device (or it cannot take work from processes).
    NoDevice = 17,
    /// A descriptor's opcode is not accepted from processes.
    BadOpcode = 18,
    /// A descriptor's flags are not accepted (CRAV and RCR required, only cache control
    /// may be added).
    BadFlags = 19,
    /// A descriptor's completion record is not 32-byte aligned in the user half.
    BadCompletion = 20,
    /// A transfer size is 0 or above the device's maximum.
    TooLarge = 21,
    /// The device's queue stayed full; try again.
    Busy = 22,
    /// Batch descriptors are not accepted from processes.
    NoBatch = 23,
    /// No interrupt handle with that id in this process (or it belongs to another device),
    /// also when a descriptor names it.
    BadHandle = 24,
    /// The process's interrupt-handle quota on the device, or the device's IMS table, is
    /// exhausted.
    HandleQuota = 25,
    /// Kernel policy refuses the request (e.g. a direct portal while `sva.direct` is off).
    Denied = 26,
}

impl Error {
    /// Every code, in numbering order.
    pub const ALL: [Error; 26] = [
        Self::NoSys,
        Self::BadAddress,
        Self::Misaligned,
        Self::BadLength,
        Self::Fault,
        Self::BadArgument,
        Self::NoSuchProcess,
        Self::NoSuchProgram,
        Self::NoSuchCpu,
        Self::Overlap,
        Self::NotMapped,
        Self::NoMemory,
        Self::Limit,
        Self::NotUtf8,
        Self::WouldBlock,
        Self::Killed,
        Self::NoDevice,
        Self::BadOpcode,
        Self::BadFlags,
        Self::BadCompletion,
        Self::TooLarge,
        Self::Busy,
        Self::NoBatch,
        Self::BadHandle,
        Self::HandleQuota,
        Self::Denied,
    ];

    /// The stable code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The error with `code`.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL
            .iter()
            .copied()
            .find(|e| u64::from(e.code()) == code)
    }

    /// A short name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoSys => "no such system call",
            Self::BadAddress => "bad address",
            Self::Misaligned => "misaligned",
            Self::BadLength => "bad length",
            Self::Fault => "user memory fault",
            Self::BadArgument => "bad argument",
            Self::NoSuchProcess => "no such process",
            Self::NoSuchProgram => "no such program",
            Self::NoSuchCpu => "no such CPU",
            Self::Overlap => "overlaps a mapping",
            Self::NotMapped => "not mapped",
            Self::NoMemory => "out of memory",
            Self::Limit => "limit reached",
            Self::NotUtf8 => "not UTF-8",
            Self::WouldBlock => "would block",
            Self::Killed => "killed",
            Self::NoDevice => "no such device",
            Self::BadOpcode => "opcode not accepted",
            Self::BadFlags => "descriptor flags not accepted",
            Self::BadCompletion => "bad completion record address",
            Self::TooLarge => "transfer size 0 or too large",
            Self::Busy => "device queue full",
            Self::NoBatch => "batch descriptors not accepted",
            Self::BadHandle => "no such interrupt handle",
            Self::HandleQuota => "interrupt handle quota exhausted",
            Self::Denied => "refused by kernel policy",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (error {})", self.name(), self.code())
    }
}

impl core::error::Error for Error {}

/// RAX for a result.
pub fn encode(r: Result<u64, Error>) -> u64 {
    match r {
        Ok(v) => v.min(i64::MAX as u64),
        Err(e) => (-i64::from(e.code())) as u64,
    }
}

/// The result in RAX. A negative value that is no known code decodes as [`Error::NoSys`]
/// (it cannot come from this kernel).
pub fn decode(rax: u64) -> Result<u64, Error> {
    let v = rax as i64;
    if v >= 0 {
        Ok(rax)
    } else {
        Err(Error::from_code(v.unsigned_abs()).unwrap_or(Error::NoSys))
    }
}

/// Lowest user virtual address (PML4 slot 128): everything below is the kernel's.
pub const USER_BASE: u64 = 0x4000_0000_0000;
/// One past the highest user address a mapping may use. The last page below 2^47 stays
/// unmapped, so a `syscall` can never return to a non-canonical address.
pub const USER_TOP: u64 = 0x7fff_ffff_f000;
/// Page size.
pub const PAGE: u64 = 4096;
/// Largest `write`.
pub const WRITE_MAX: u64 = 4096;
/// Largest program name for `spawn`.
pub const NAME_MAX: u64 = 64;
/// Largest `sleep`.
pub const SLEEP_MAX_NS: u64 = 60_000_000_000;
/// Largest single `mmap` (and the per-process total of anonymous memory).
pub const MMAP_MAX: u64 = 64 << 20;
/// `mmap` protection: readable (always implied).
pub const PROT_READ: u64 = 1;
/// `mmap` protection: writable.
pub const PROT_WRITE: u64 = 2;
/// `spawn` / `thread_spawn`: let the kernel choose the CPU.
pub const ANY_CPU: u64 = u64::MAX;
/// `ims_alloc` / `ims_set_affinity`: the CPU the caller runs on.
pub const CURRENT_CPU: u64 = u64::MAX;
/// Most interrupt handles one process holds at once (all devices; the per-device PASID
/// quota usually ends allocation first).
pub const IMS_HANDLES_MAX: u64 = 256;
/// Descriptor flag Request Completion Interrupt (DSA spec §8.1.3, bit 4 of the flags).
pub const FLAG_RCI: u32 = 1 << 4;
/// Most descriptors with a completion interrupt in flight on one handle.
pub const IMS_INFLIGHT_MAX: u64 = 32;
/// Exit status of a process ended by a fault or by `kill`.
pub const STATUS_KILLED: u64 = 0x8000_0000;
/// Where the stack of a process's first thread ends (grows down from here).
pub const STACK_TOP: u64 = 0x7fff_ff00_0000;
/// Size of that stack.
pub const STACK_SIZE: u64 = 64 << 10;

/// True when `[ptr, ptr + len)` lies inside `[USER_BASE, USER_TOP)` (no addition that
/// could wrap). `len` = 0 still needs `ptr` inside the half.
pub const fn user_range_ok(ptr: u64, len: u64) -> bool {
    ptr >= USER_BASE && ptr <= USER_TOP && len <= USER_TOP - ptr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_stable() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.code() as usize, i + 1, "{e:?} keeps its number");
            assert_eq!(decode(encode(Err(*e))), Err(*e));
        }
        assert_eq!(decode(encode(Ok(42))), Ok(42));
        assert_eq!(Error::from_code(0), None);
        assert_eq!(decode((-999i64) as u64), Err(Error::NoSys));
    }

    #[test]
    fn numbers_round_trip() {
        for n in 0..SYS_COUNT {
            assert_eq!(Sys::from_number(n).map(|s| s as u64), Some(n));
        }
        assert_eq!(Sys::from_number(SYS_COUNT), None);
        assert_eq!(Sys::from_number(22), Some(Sys::SchedSetCpu));
        assert_eq!(Sys::from_number(23), Some(Sys::DsaResume));
        assert_eq!(Sys::from_number(u64::MAX), None);
    }

    #[test]
    fn user_ranges() {
        assert!(user_range_ok(USER_BASE, 4096));
        assert!(user_range_ok(USER_TOP - 1, 1));
        assert!(!user_range_ok(USER_TOP - 1, 2));
        assert!(!user_range_ok(USER_BASE - 1, 1));
        assert!(!user_range_ok(0, 0));
        assert!(!user_range_ok(u64::MAX - 10, 100), "wrapping");
        assert!(!user_range_ok(USER_BASE, u64::MAX));
        assert!(!user_range_ok(0xffff_8000_0000_0000, 8), "kernel half");
    }
}
