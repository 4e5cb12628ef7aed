//! The only way the kernel touches user memory: checked copies.
//!
//! A user range is checked against the user half without an addition that could wrap
//! (`user_abi::user_range_ok`: `p >= USER_BASE && len <= USER_TOP - p`; kernel memory lies
//! both below and above it). The copy itself is one `rep movsb` between STAC and CLAC
//! (when SMAP is on: Intel SDM Vol. 3A §4.6, Vol. 2B STAC/CLAC) with an `.ex_table` entry:
//! a #PF on a user page resumes at the fixup, which executes CLAC, and RCX tells how many
//! bytes were left (REP MOVS updates RCX, RSI, RDI per element). Nothing is called between
//! STAC and CLAC. A fault on a page of an anonymous area not faulted in yet is resolved
//! (the page is mapped) and the copy resumes; any other fault is [`Error::Fault`].
//! Callers copy a user object into the kernel once and validate the copy (no double
//! fetch).

use user_abi::{Error, user_range_ok};

use super::Process;

/// Copies `len` bytes; returns the bytes not copied (0: done).
///
/// # Safety
/// `dst`/`src` are valid for `len` bytes except for user pages, which may fault (caught).
unsafe fn copy_raw(dst: *mut u8, src: *const u8, len: usize) -> usize {
    let left: usize;
    if crate::arch::user::smap_on() {
        // SAFETY: the caller's contract; faults in `rep movsb` resume at 3 (CLAC).
        unsafe {
            core::arch::asm!(
                "stac",
                "2: rep movsb",
                "3: clac",
                ".pushsection .ex_table, \"a\"",
                ".balign 8",
                ".quad 2b, 3b",
                ".popsection",
                inout("rcx") len => left,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack),
            );
        }
    } else {
        // SAFETY: as above, without SMAP (no STAC/CLAC: they #UD).
        unsafe {
            core::arch::asm!(
                "2: rep movsb",
                "3:",
                ".pushsection .ex_table, \"a\"",
                ".balign 8",
                ".quad 2b, 3b",
                ".popsection",
                inout("rcx") len => left,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack),
            );
        }
    }
    left
}

/// Resolves a fault during a copy at user address `addr`; false if it is the caller's.
fn resolve(p: Option<&Process>, addr: u64, write: bool) -> bool {
    p.is_some_and(|p| {
        matches!(
            p.space.lock().fault(addr, write, false, false),
            super::space::FaultOutcome::Mapped
        )
    })
}

fn copy(
    p: Option<&Process>,
    user: u64,
    kernel: *mut u8,
    len: usize,
    to_user: bool,
) -> Result<(), Error> {
    if !user_range_ok(user, len as u64) {
        return Err(Error::BadAddress);
    }
    let mut done = 0;
    // Each resolved fault maps one page, so at most len / 4096 + 2 rounds make progress.
    for _ in 0..(len / 4096 + 3) {
        let n = len - done;
        if n == 0 {
            return Ok(());
        }
        let u = (user + done as u64) as *mut u8;
        // SAFETY: the user range is inside the user half (checked above; faults are caught);
        // the kernel buffer is the caller's, valid for `len` bytes.
        let left = unsafe {
            let k = kernel.add(done);
            if to_user {
                copy_raw(u, k, n)
            } else {
                copy_raw(k, u, n)
            }
        };
        let at = user + (len - left) as u64;
        done = len - left;
        if left == 0 {
            return Ok(());
        }
        if !resolve(p, at, to_user) {
            return Err(Error::Fault);
        }
    }
    Err(Error::Fault)
}

/// Copies `buf.len()` bytes from user address `user` of the loaded address space; `p` is
/// its process, whose lazy pages a fault maps (`None`: any fault is [`Error::Fault`]).
pub fn copy_from_user(p: Option<&Process>, buf: &mut [u8], user: u64) -> Result<(), Error> {
    copy(p, user, buf.as_mut_ptr(), buf.len(), false)
}

/// Copies `buf` to user address `user` of the loaded address space (`p` as in
/// [`copy_from_user`]).
pub fn copy_to_user(p: Option<&Process>, user: u64, buf: &[u8]) -> Result<(), Error> {
    copy(p, user, buf.as_ptr().cast_mut(), buf.len(), true)
}

/// Reads an aligned `u64` from user memory.
pub fn read_u64(p: &Process, user: u64) -> Result<u64, Error> {
    let mut b = [0u8; 8];
    copy_from_user(Some(p), &mut b, user)?;
    Ok(u64::from_le_bytes(b))
}
