//! System calls: every argument is checked, each refusal is a specific `user_abi::Error`,
//! nothing here can panic on user input. User memory is read and written only through
//! [`super::uaccess`].

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use user_abi::{
    ANY_CPU, Error, MMAP_MAX, NAME_MAX, PAGE, PROT_READ, PROT_WRITE, SLEEP_MAX_NS, Sys, USER_BASE,
    USER_TOP, WRITE_MAX, user_range_ok,
};

use super::{Action, BLOCKED, CPUS, PROCS, RESUME_RESTART, RESUME_RETURN, Thread, WORDS, uaccess};
use crate::arch::user::UserRegs;

pub(super) fn ret(r: Result<u64, Error>) -> Action {
    Action::Return(user_abi::encode(r))
}

fn cpu_arg(cpu: u64) -> Result<Option<usize>, Error> {
    if cpu == ANY_CPU {
        return Ok(None);
    }
    let c = usize::try_from(cpu).map_err(|_| Error::NoSuchCpu)?;
    super::check_cpu(c).map(Some).map_err(|_| Error::NoSuchCpu)
}

/// Handles the system call in `regs` (number in RAX, arguments in RDI RSI RDX R10 R8 R9).
pub(crate) fn dispatch(t: &Arc<Thread>, regs: &mut UserRegs) -> Action {
    let a = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
    let Some(n) = Sys::from_number(regs.rax) else {
        return ret(Err(Error::NoSys));
    };
    let p = &t.process;
    match n {
        Sys::Exit => {
            super::kill_process(p, a[0]);
            Action::ExitThread
        }
        Sys::Write => ret(write(t, a[0], a[1])),
        Sys::Yield => Action::Yield,
        Sys::GetPid => ret(Ok(p.pid)),
        Sys::Cpu => ret(Ok(t.cpu() as u64)),
        Sys::Mmap => ret(mmap(t, a[0], a[1], a[2])),
        Sys::Munmap => ret(munmap(t, a[0], a[1])),
        Sys::Sleep => sleep(t, regs, a[0]),
        Sys::WaitWord => wait_word(t, regs, a[0], a[1]),
        Sys::WakeWord => ret(wake_word(t, a[0], a[1])),
        Sys::Spawn => ret(spawn(t, a[0], a[1], a[2], a[3])),
        Sys::Wait => wait(t, regs, a[0]),
        Sys::Kill => ret(kill(t, a[0])),
        Sys::ThreadSpawn => ret(thread_spawn(t, a[0], a[1], a[2], a[3])),
        Sys::ThreadExit => Action::ExitThread,
        Sys::DsaSubmit => ret(dsa_submit(t, a[0], a[1])),
        Sys::ImsAlloc => ret(super::ims::alloc(t, a[0], a[1])),
        Sys::ImsWait => super::ims::wait(t, regs, a[0]),
        Sys::ImsSetAffinity => ret(super::ims::set_affinity(t, a[0], a[1])),
        Sys::ImsRelease => ret(super::ims::release(t, a[0])),
        Sys::DsaPortal => ret(dsa_portal(t, a[0])),
        Sys::DsaWqTake => ret(dsa_wq_take(t, a[0], a[1])),
        Sys::DsaResume => ret(dsa_resume(t, a[0], a[1])),
        Sys::SchedSetCpu => match sched_set_cpu(t, a[0]) {
            Ok(to) => Action::Migrate(to),
            Err(e) => ret(Err(e)),
        },
    }
}

/// `dsa_portal`: only with `sva.direct=on` (INTEL-SA-01084: direct submission is kernel
/// policy, off by default). The PASID exists before the page is mapped, so the thread's
/// next entry to ring 3 already carries it in IA32_PASID.
fn dsa_portal(t: &Thread, device: u64) -> Result<u64, Error> {
    if !super::direct_submission_allowed() {
        return Err(Error::Denied);
    }
    let devs = crate::dsa::devices();
    let dev = usize::try_from(device)
        .ok()
        .and_then(|i| devs.get(i))
        .ok_or(Error::NoDevice)?;
    let phys = dev.user_portal_page().ok_or(Error::NoDevice)?;
    if crate::ims::device_ims(dev).is_err() {
        // Without IMS the only portals are MSI-X ones, where a descriptor's interrupt
        // handle names the kernel's MSI-X entries unchecked.
        return Err(Error::NoDevice);
    }
    super::sva_attach(&t.process, dev).map_err(|e| e.abi())?;
    t.process.space.lock().map_portal(phys)
}

/// `dsa_wq_take`: a user dedicated WQ lent to the caller's PASID, its portal mapped, its
/// size written to `size_ptr`. Policy `sva.direct` (MOVDIR64B from ring 3 is direct
/// submission too).
fn dsa_wq_take(t: &Thread, device: u64, size_ptr: u64) -> Result<u64, Error> {
    if !super::direct_submission_allowed() {
        return Err(Error::Denied);
    }
    if !user_range_ok(size_ptr, 8) {
        return Err(Error::BadAddress);
    }
    if !size_ptr.is_multiple_of(8) {
        return Err(Error::Misaligned);
    }
    let devs = crate::dsa::devices();
    let idx = usize::try_from(device)
        .ok()
        .filter(|&i| i < devs.len())
        .ok_or(Error::NoDevice)?;
    let dev = &devs[idx];
    if crate::ims::device_ims(dev).is_err() {
        return Err(Error::NoDevice);
    }
    let pasid = super::sva_attach(&t.process, dev).map_err(|e| e.abi())?;
    let (wq, size, phys) = match dev.lend_wq(pasid) {
        Ok(Some(x)) => x,
        Ok(None) => return Err(Error::Busy),
        Err(e) => {
            log::warn!(
                "pid {}: lending a WQ of dsa{}: {e}",
                t.process.pid,
                dev.index
            );
            return Err(Error::NoDevice);
        }
    };
    // Recorded before anything can fail: the process's end gives it back.
    t.process.lent_wqs.lock().push((dev.driver(), wq));
    uaccess::copy_to_user(Some(&t.process), size_ptr, &u64::from(size).to_le_bytes())?;
    t.process.space.lock().map_portal(phys)
}

/// `sched_set_cpu(cpu)`: the CPU to move to, after the process's handles that targeted the
/// caller's CPU were retargeted there (the scheduler then moves the thread: `Action::Migrate`).
fn sched_set_cpu(t: &Thread, cpu: u64) -> Result<usize, Error> {
    let to = usize::try_from(cpu).map_err(|_| Error::NoSuchCpu)?;
    let to = super::check_cpu(to).map_err(|_| Error::NoSuchCpu)?;
    let from = t.cpu();
    if to != from {
        super::ims::follow(&t.process, from, to)?;
    }
    Ok(to)
}

fn dsa_submit(t: &Thread, desc: u64, device: u64) -> Result<u64, Error> {
    if !user_range_ok(desc, 64) {
        return Err(Error::BadAddress);
    }
    // One copy; only the copy is validated and submitted.
    let mut raw = [0u8; 64];
    uaccess::copy_from_user(Some(&t.process), &mut raw, desc)?;
    submit_raw(t, &raw, device)
}

/// `dsa_resume(desc, device)`: the faulting page mapped for the process if valid, then the
/// rest of the descriptor (`klib::usersubmit::remainder`) written back over it and submitted
/// like `dsa_submit`.
fn dsa_resume(t: &Thread, desc: u64, device: u64) -> Result<u64, Error> {
    use klib::usersubmit::{ResumeError, remainder};
    if !user_range_ok(desc, 64) {
        return Err(Error::BadAddress);
    }
    let p = &t.process;
    let mut raw = [0u8; 64];
    uaccess::copy_from_user(Some(p), &mut raw, desc)?;
    let cr_addr = u64::from_le_bytes(raw[8..16].try_into().map_err(|_| Error::BadCompletion)?);
    if !cr_addr.is_multiple_of(klib::usersubmit::COMPLETION_ALIGN) || !user_range_ok(cr_addr, 32) {
        return Err(Error::BadCompletion);
    }
    let mut cr = [0u8; 32];
    uaccess::copy_from_user(Some(p), &mut cr, cr_addr)?;
    let rest = remainder(&raw, &cr).map_err(|e| match e {
        ResumeError::Opcode(_) => Error::BadOpcode,
        ResumeError::Flags(_) => Error::BadFlags,
        ResumeError::NotAPageFault(_) | ResumeError::Completed(_) => Error::BadArgument,
    })?;
    // The page the device stopped at: mapped on the process's behalf if it may have it (a
    // not-present -> present change needs no IOTLB invalidation, CAP.CM = 0).
    let fault = u64::from_le_bytes(cr[8..16].try_into().map_err(|_| Error::Fault)?);
    let write = cr[0] & 0x80 != 0;
    {
        let mut s = p.space.lock();
        if s.translate(fault).is_none() {
            match s.fault(fault, write, false, false) {
                super::FaultOutcome::Mapped => {}
                super::FaultOutcome::OutOfMemory => return Err(Error::NoMemory),
                super::FaultOutcome::Invalid => return Err(Error::Fault),
            }
        } else if write && !s.area_at(fault).is_some_and(|(_, a)| a.writable) {
            return Err(Error::Fault);
        }
    }
    // The record's Bytes Completed of the next fault counts from this remainder: it becomes
    // the process's descriptor (its own form, handle id and all), for the next resume.
    uaccess::copy_to_user(Some(p), desc, &rest)?;
    uaccess::copy_to_user(Some(p), cr_addr, &[0u8; 32])?;
    submit_raw(t, &rest, device)
}

/// Validates the copied descriptor `raw` and submits it on the caller's PASID.
fn submit_raw(t: &Thread, raw: &[u8; 64], device: u64) -> Result<u64, Error> {
    use klib::usersubmit::{DescError, Limits, validate};
    let devs = crate::dsa::devices();
    let dev = usize::try_from(device)
        .ok()
        .and_then(|i| devs.get(i))
        .ok_or(Error::NoDevice)?;
    let pasid = super::sva_attach(&t.process, dev).map_err(|e| e.abi())?;
    let limits = Limits {
        max_transfer: dev.user_max_transfer().ok_or(Error::NoDevice)?,
    };
    // With RCI the interrupt handle field holds one of the process's ids on this device.
    let mut handle = None;
    let d = validate(raw, pasid, &limits, |id| {
        let h = super::ims::device_handle(&t.process, device as usize, id)?;
        let dh = h.device_handle();
        handle = Some(h);
        Some(dh)
    })
    .map_err(|e| match e {
        DescError::Batch => Error::NoBatch,
        DescError::Opcode(_) => Error::BadOpcode,
        DescError::Flags(_) => Error::BadFlags,
        DescError::Completion(_) => Error::BadCompletion,
        DescError::Size(_) => Error::TooLarge,
        DescError::Address(_) => Error::BadAddress,
        DescError::Reserved => Error::BadArgument,
        DescError::Handle(_) => Error::BadHandle,
    })?;
    if let Some(h) = handle {
        return super::ims::submit(&t.process, dev, &h, &d).map(|()| 0);
    }
    dev.submit_user(&d).map_err(|e| match e {
        crate::dsa::UserSubmitError::NoSharedWq => Error::NoDevice,
        crate::dsa::UserSubmitError::Busy => Error::Busy,
    })?;
    Ok(0)
}

fn write(t: &Thread, ptr: u64, len: u64) -> Result<u64, Error> {
    if len > WRITE_MAX {
        return Err(Error::BadLength);
    }
    if !user_range_ok(ptr, len) {
        return Err(Error::BadAddress);
    }
    if len == 0 {
        return Ok(0);
    }
    let mut buf = [0u8; WRITE_MAX as usize];
    let b = &mut buf[..len as usize];
    uaccess::copy_from_user(Some(&t.process), b, ptr)?;
    let s = core::str::from_utf8(b).map_err(|_| Error::NotUtf8)?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    crate::println!("[pid {} {}] {s}", t.process.pid, t.process.name);
    Ok(len)
}

fn mmap(t: &Thread, addr: u64, len: u64, prot: u64) -> Result<u64, Error> {
    if prot & !(PROT_READ | PROT_WRITE) != 0 {
        return Err(Error::BadArgument);
    }
    if len == 0 {
        return Err(Error::BadLength);
    }
    if !len.is_multiple_of(PAGE) {
        return Err(Error::Misaligned);
    }
    if len > MMAP_MAX {
        return Err(Error::BadLength);
    }
    if !addr.is_multiple_of(PAGE) {
        return Err(Error::Misaligned);
    }
    if addr != 0 && !user_range_ok(addr, len) {
        return Err(Error::BadAddress);
    }
    t.process
        .space
        .lock()
        .mmap(addr, len, prot & PROT_WRITE != 0)
}

fn munmap(t: &Thread, addr: u64, len: u64) -> Result<u64, Error> {
    if !addr.is_multiple_of(PAGE) {
        return Err(Error::Misaligned);
    }
    if len == 0 {
        return Err(Error::BadLength);
    }
    if !len.is_multiple_of(PAGE) {
        return Err(Error::Misaligned);
    }
    if !user_range_ok(addr, len) {
        return Err(Error::BadAddress);
    }
    let mut freed = Vec::new();
    t.process.space.lock().munmap(addr, len, &mut freed)?;
    // The leaves are clear; no frame is freed before every TLB that may hold them is: the
    // CPUs' (shootdown) and the IOMMU's for the process's PASID.
    let cpus = super::shootdown(&t.process, addr, len);
    if cpus && super::sva_invalidate(&t.process, addr, len) {
        super::space::free_released(freed);
    } else {
        log::error!(
            "pid {}: {} unmapped pages leaked (shootdown incomplete)",
            t.process.pid,
            freed.len()
        );
    }
    Ok(0)
}

/// Marks `t` blocked, to resume with `resume` (return RAX as set, or restart the call).
pub(super) fn block(t: &Thread, regs: &mut UserRegs, resume: u8) {
    if resume == RESUME_RESTART {
        // Back onto the 2-byte `syscall` with RAX still the call number.
        regs.rip -= 2;
    }
    let _ = RESUME_RETURN;
    t.state.store(BLOCKED, Ordering::Release);
}

fn sleep(t: &Arc<Thread>, regs: &mut UserRegs, ns: u64) -> Action {
    if ns > SLEEP_MAX_NS {
        return ret(Err(Error::BadArgument));
    }
    if ns == 0 {
        return Action::Yield;
    }
    regs.rax = 0;
    t.deadline
        .store(crate::time::now_ns().saturating_add(ns), Ordering::Release);
    let mut s = CPUS[t.cpu()].sleepers.lock();
    block(t, regs, RESUME_RETURN);
    s.push(t.clone());
    Action::Block
}

fn word_arg(ptr: u64) -> Result<(), Error> {
    if ptr == 0 || !user_range_ok(ptr, 8) {
        return Err(Error::BadAddress);
    }
    if !ptr.is_multiple_of(8) {
        return Err(Error::Misaligned);
    }
    Ok(())
}

fn wait_word(t: &Arc<Thread>, regs: &mut UserRegs, ptr: u64, expected: u64) -> Action {
    if let Err(e) = word_arg(ptr) {
        return ret(Err(e));
    }
    let p = &t.process;
    let mut words = WORDS.lock();
    match uaccess::read_u64(p, ptr) {
        Err(e) => ret(Err(e)),
        Ok(v) if v != expected => ret(Err(Error::WouldBlock)),
        Ok(_) => {
            regs.rax = 0;
            block(t, regs, RESUME_RETURN);
            words.entry((p.pid, ptr)).or_default().push(t.clone());
            Action::Block
        }
    }
}

fn wake_word(t: &Thread, ptr: u64, count: u64) -> Result<u64, Error> {
    word_arg(ptr)?;
    let woken: Vec<Arc<Thread>> = {
        let mut words = WORDS.lock();
        let key = (t.process.pid, ptr);
        let Some(list) = words.get_mut(&key) else {
            return Ok(0);
        };
        let n = (count.min(list.len() as u64)) as usize;
        let w: Vec<_> = list.drain(..n).collect();
        if list.is_empty() {
            words.remove(&key);
        }
        w
    };
    for w in &woken {
        super::wake(w);
    }
    Ok(woken.len() as u64)
}

fn spawn(t: &Thread, name: u64, len: u64, cpu: u64, arg: u64) -> Result<u64, Error> {
    if len == 0 || len > NAME_MAX {
        return Err(Error::BadLength);
    }
    if !user_range_ok(name, len) {
        return Err(Error::BadAddress);
    }
    let mut buf = [0u8; NAME_MAX as usize];
    let b = &mut buf[..len as usize];
    uaccess::copy_from_user(Some(&t.process), b, name)?;
    let name = core::str::from_utf8(b).map_err(|_| Error::NotUtf8)?;
    let cpu = cpu_arg(cpu)?;
    if super::programs::find(name).is_none() {
        return Err(Error::NoSuchProgram);
    }
    super::spawn_as(name, cpu, arg, t.process.pid)
        .map(|c| c.pid)
        .map_err(|e| e.abi())
}

fn child(t: &Thread, pid: u64) -> Result<Arc<super::Process>, Error> {
    PROCS
        .lock()
        .get(&pid)
        .filter(|c| c.parent == t.process.pid)
        .cloned()
        .ok_or(Error::NoSuchProcess)
}

fn wait(t: &Arc<Thread>, regs: &mut UserRegs, pid: u64) -> Action {
    let c = match child(t, pid) {
        Ok(c) => c,
        Err(e) => return ret(Err(e)),
    };
    let mut w = c.waiters.lock();
    if c.ended() {
        drop(w);
        return ret(Ok(super::reap(&c)));
    }
    block(t, regs, RESUME_RESTART);
    w.push(t.clone());
    Action::Block
}

fn kill(t: &Thread, pid: u64) -> Result<u64, Error> {
    let c = child(t, pid)?;
    super::kill(&c);
    Ok(0)
}

fn thread_spawn(t: &Thread, entry: u64, stack: u64, arg: u64, cpu: u64) -> Result<u64, Error> {
    if !user_range_ok(entry, 1) {
        return Err(Error::BadAddress);
    }
    if stack <= USER_BASE || stack > USER_TOP {
        return Err(Error::BadAddress);
    }
    if !stack.is_multiple_of(16) {
        return Err(Error::Misaligned);
    }
    let cpu = cpu_arg(cpu)?;
    let cpu = super::pick_cpu(cpu).map_err(|e| e.abi())?;
    // A called function's RSP is 8 below a 16-byte boundary (the return address slot).
    let regs = UserRegs::new(entry, stack - 8, arg);
    let p = PROCS
        .lock()
        .get(&t.process.pid)
        .cloned()
        .ok_or(Error::Killed)?;
    super::start_thread(&p, regs, cpu).map_err(|e| e.abi())
}
