//! Worker threads, drain semantics, fault injection, and the C ABI.

use crate::common::*;
use dsa_model::fault_inject as fi;
use dsa_model::ffi::*;
use dsa_model::{Config, Device, DmaSpace, Platform, pci};
use dsa_rig::sim::{SimIrq, SimPlatform};
use dsa_spec::regs::{off, swerr_code};
use dsa_spec::status as st;
use dsa_spec::{CmdReg, CmdStatus, Command, DescFlags, DeviceState, GenSts, GrpCfg, Opcode};
use std::ffi::c_void;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

fn start_workers(dev: &Arc<Device>) -> Vec<thread::JoinHandle<()>> {
    (0..dev.layout().num_workers)
        .map(|i| {
            let d = dev.clone();
            thread::spawn(move || d.worker_run(i))
        })
        .collect()
}

fn wait_cr(h: &H, space: Option<u32>, addr: u64) -> dsa_spec::CompletionRecord {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let cr = h.cr_at(space, addr);
        if cr.status != 0 {
            return cr;
        }
        assert!(Instant::now() < deadline, "no completion at {addr:#x}");
        thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn threaded_execution_across_engines() {
    let h = H::default();
    let specs: Vec<WqSpec> = (0..4)
        .map(|w| WqSpec {
            group: w,
            ..WqSpec::dedicated(w, 16)
        })
        .collect();
    h.up(&specs);
    let workers = start_workers(&h.dev);
    let n = 64usize;
    let len = 3000usize;
    let data = pattern(n * len, 20);
    h.put(None, SRC, &data);
    for i in 0..n {
        let mut d = desc(Opcode::MemMove);
        d.addr1 = SRC + (i * len) as u64;
        d.addr2 = DST + (i * len) as u64;
        d.size = len as u32;
        d.completion_addr = CR + i as u64 * 32;
        d.flags |= DescFlags::RCI;
        d.int_handle = 1 + (i % 4) as u16;
        // Like a driver: never more outstanding than the WQ size.
        let wq = (i % 4) as u32;
        while h.read_wqcfg(wq).occupancy() >= 16 {
            thread::yield_now();
        }
        h.movdir(wq, &d);
    }
    for i in 0..n {
        assert_eq!(wait_cr(&h, None, CR + i as u64 * 32).status, st::SUCCESS);
    }
    assert_eq!(h.get(None, DST, n * len), data);
    let irqs = h.sim.wait_irqs(n, Duration::from_secs(60));
    assert_eq!(irqs.len(), n);
    for e in 1..=4 {
        assert_eq!(
            irqs.iter().filter(|&&i| i == SimIrq::Msix(e)).count(),
            n / 4
        );
    }
    // Drain All through the CMD register while workers run.
    h.w32(off::CMD, CmdReg::new(Command::DrainAll, 0, true).0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while CmdStatus(h.r32(off::CMDSTATUS)).active() {
        assert!(Instant::now() < deadline);
        thread::yield_now();
    }
    h.dev.stop();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn drain_descriptor_waits_for_earlier_work() {
    let h = H::new(Config {
        fault_injection: true,
        ..Config::default()
    });
    // One group, two engines, so the drain can be picked while the memmove runs.
    h.pci_all();
    h.write_grpcfg(
        0,
        &GrpCfg {
            wqs: [0b11, 0, 0, 0],
            engines: 0b11,
            ..Default::default()
        },
    );
    h.write_wqcfg(0, WqSpec::dedicated(0, 8).cfg());
    h.write_wqcfg(1, WqSpec::shared(1, 8).cfg());
    assert_eq!(h.cmd(Command::EnableDevice, 0), 0);
    assert_eq!(h.cmd(Command::EnableWq, 0), 0);
    assert_eq!(h.cmd(Command::EnableWq, 1), 0);
    h.w32(fi::FAULT_INJECT_BASE + fi::FI_DELAY_US, 30_000);
    let workers = start_workers(&h.dev);
    let mut m = desc(Opcode::MemMove);
    m.addr1 = SRC;
    m.addr2 = DST;
    m.size = 4096;
    h.movdir(0, &m);
    let mut dr = desc(Opcode::Drain);
    dr.completion_addr = CR + 64;
    h.movdir(0, &dr);
    let cr = wait_cr(&h, None, CR + 64);
    assert_eq!(cr.status, st::SUCCESS);
    assert_eq!(
        h.cr().status,
        st::SUCCESS,
        "the drain completed after the earlier memmove"
    );
    // Shared WQ: a drain only waits for its own PASID (the other PASID's noop is still
    // inside its delay when the drain completes). The delay is long enough (2 s) that the
    // second engine's thread picks the drain, and this thread sees it complete, well within
    // it on a loaded host; drains themselves are never delayed.
    h.w32(fi::FAULT_INJECT_BASE + fi::FI_DELAY_US, 2_000_000);
    h.sim.map(Some(PASID + 1), CR, 0x1000);
    let mut other = desc(Opcode::Noop);
    other.pasid = PASID + 1;
    other.completion_addr = CR + 128;
    let mut d2 = desc(Opcode::Drain);
    d2.pasid = PASID;
    d2.completion_addr = CR + 160;
    assert_eq!(h.enqcmd(1, &other), dsa_model::PortalResult::Accepted);
    assert_eq!(h.enqcmd(1, &d2), dsa_model::PortalResult::Accepted);
    assert_eq!(wait_cr(&h, Some(PASID), CR + 160).status, st::SUCCESS);
    assert_eq!(h.cr_at(Some(PASID + 1), CR + 128).status, 0);
    assert_eq!(wait_cr(&h, Some(PASID + 1), CR + 128).status, st::SUCCESS);
    h.dev.stop();
    for w in workers {
        w.join().unwrap();
    }
}

#[test]
fn fault_injection_page() {
    let h = H::new(Config {
        fault_injection: true,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 8)]);
    let b = fi::FAULT_INJECT_BASE;
    assert_eq!(h.r32(b + fi::FI_MAGIC), fi::FI_MAGIC_VALUE);
    // Force the next 2 memmoves to complete with 0x20.
    h.w32(b + fi::FI_FORCE_STATUS, u32::from(st::HW_READ_ERROR));
    h.w32(b + fi::FI_FORCE_OPCODE, 0x100 | Opcode::MemMove as u32);
    h.w32(b + fi::FI_FORCE_COUNT, 2);
    assert_eq!(
        h.run1(&desc(Opcode::Noop)).status,
        st::SUCCESS,
        "other opcodes unaffected"
    );
    let mut m = desc(Opcode::MemMove);
    m.addr1 = SRC;
    m.addr2 = DST;
    m.size = 64;
    assert_eq!(h.run1(&m).status, st::HW_READ_ERROR);
    assert_eq!(h.r32(b + fi::FI_FORCE_COUNT), 1);
    assert_eq!(h.run1(&m).status, st::HW_READ_ERROR);
    assert_eq!(h.run1(&m).status, st::SUCCESS);
    // Force a SWERROR.
    h.w32(off::GENCTRL, 1);
    h.irqs();
    h.w32(b + fi::FI_FORCE_SWERR, 0x54);
    assert_eq!(h.swerr().code(), 0x54);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(0)]);
    // Delay a completion.
    h.w32(b + fi::FI_DELAY_US, 20_000);
    let t = Instant::now();
    h.run1(&m);
    assert!(t.elapsed() >= Duration::from_millis(20));
    h.w32(b + fi::FI_DELAY_US, 0);
    // Force a halt; Reset Device recovers.
    h.w32(b + fi::FI_FORCE_HALT, 1);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Halted);
    assert_eq!(h.cmd(Command::ResetDevice, 0), 0);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Disabled);
    // Without the property the page does not exist.
    let n = H::default();
    n.up(&[WqSpec::dedicated(0, 8)]);
    n.w32(b + fi::FI_FORCE_HALT, 1);
    n.w32(b + fi::FI_FORCE_SWERR, 0x54);
    assert_eq!(n.r32(b + fi::FI_MAGIC), 0);
    assert_eq!(GenSts(n.r32(off::GENSTS)).state(), DeviceState::Enabled);
    assert!(!n.swerr().valid());
}

#[test]
fn halt_discards_queued_work_and_active_command() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 8)]);
    h.movdir(0, &desc(Opcode::Noop));
    assert!(h.cmd_nowait(Command::DrainAll, 0).active());
    h.dev.set_pci_state(pci::BME);
    let s = CmdStatus(h.r32(off::CMDSTATUS));
    assert_eq!(
        (s.active(), s.error()),
        (false, dsa_spec::cmd_err::INTERNAL)
    );
    assert_eq!(h.swerr().code(), swerr_code::PCI_CONFIG_CHANGED);
    h.dev.run_until_idle();
    assert_eq!(h.cr().status, 0);
}

// ------------------------------------------------------------------ C ABI

unsafe extern "C" fn c_read(
    o: *mut c_void,
    pasid: i64,
    pr: bool,
    addr: u64,
    buf: *mut u8,
    len: u64,
) -> u64 {
    // SAFETY: `o` is the SimPlatform passed to dsa_model_new, alive for the test; the model
    // passes a valid buffer of `len` bytes.
    let (sim, b) = unsafe {
        (
            &*(o as *const SimPlatform),
            std::slice::from_raw_parts_mut(buf, len as usize),
        )
    };
    let space: DmaSpace = (pasid >= 0).then_some((pasid as u32, pr));
    sim.dma_read(space, addr, b) as u64
}

unsafe extern "C" fn c_write(
    o: *mut c_void,
    pasid: i64,
    pr: bool,
    addr: u64,
    buf: *const u8,
    len: u64,
) -> u64 {
    // SAFETY: as in c_read.
    let (sim, b) = unsafe {
        (
            &*(o as *const SimPlatform),
            std::slice::from_raw_parts(buf, len as usize),
        )
    };
    let space: DmaSpace = (pasid >= 0).then_some((pasid as u32, pr));
    sim.dma_write(space, addr, b) as u64
}

unsafe extern "C" fn c_msix(o: *mut c_void, e: u32) {
    // SAFETY: as in c_read.
    unsafe { &*(o as *const SimPlatform) }.msix_notify(e);
}

unsafe extern "C" fn c_msi(o: *mut c_void, a: u64, d: u32) {
    // SAFETY: as in c_read.
    unsafe { &*(o as *const SimPlatform) }.send_msi(a, d);
}

struct ModelPtr(*mut DsaModel);
// SAFETY: the C API is callable from any thread; the test frees the model only after joining.
unsafe impl Send for ModelPtr {}

#[test]
fn ffi_smoke() {
    // Layouts of include/dsa_model.h (13 × u32; 4 × u64 + 2 × u32; 5 pointers).
    assert_eq!(std::mem::size_of::<DsaModelConfig>(), 52);
    assert_eq!(std::mem::size_of::<DsaModelLayout>(), 40);
    assert_eq!(std::mem::size_of::<DsaPlatformOps>(), 40);
    let sim = Arc::new(SimPlatform::new());
    sim.map(None, 0, 0x10_0000);
    let ops = DsaPlatformOps {
        dma_read: Some(c_read),
        dma_write: Some(c_write),
        msix_notify: Some(c_msix),
        send_msi: Some(c_msi),
        trace: None,
    };
    let opaque = Arc::as_ptr(&sim) as *mut c_void;
    let mut err = [0i8; 128];
    // An invalid configuration: NULL and a reason.
    let bad = DsaModelConfig {
        num_wqs: 200,
        ..Default::default()
    };
    // SAFETY: valid pointers to locals.
    let m = unsafe {
        dsa_model_new(
            &raw const bad,
            &raw const ops,
            opaque,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert!(m.is_null());
    // SAFETY: dsa_model_new wrote a NUL-terminated string.
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    assert!(msg.contains("num_wqs"), "{msg}");
    // SAFETY: NULL handles are accepted and ignored.
    unsafe {
        assert_eq!(dsa_model_bar0_read(std::ptr::null_mut(), 0, 4), 0);
        dsa_model_stop(std::ptr::null_mut());
        dsa_model_free(std::ptr::null_mut());
        assert!(
            dsa_model_new(
                std::ptr::null(),
                &raw const ops,
                opaque,
                std::ptr::null_mut(),
                0
            )
            .is_null()
        );
    }
    let cfg = DsaModelConfig {
        num_wqs: 2,
        num_engines: 2,
        ..Default::default()
    };
    // SAFETY: valid pointers; `sim` outlives the model.
    let m = unsafe {
        dsa_model_new(
            &raw const cfg,
            &raw const ops,
            opaque,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    assert!(!m.is_null());
    let mut l = DsaModelLayout::default();
    // SAFETY: `m` is live for the rest of the test; all pointers are valid.
    unsafe {
        dsa_model_layout(m, &raw mut l);
        assert_eq!((l.bar2_size, l.msix_entries, l.num_workers), (0x8000, 3, 2));
        assert_eq!(dsa_model_bar0_read(m, off::VERSION, 4), 0x100);
        dsa_model_set_pci_state(m, pci::BME);
        dsa_model_bar0_write(m, 0x600, 1, 8); // group 0: WQ 0
        dsa_model_bar0_write(m, 0x600 + 0x20, 1, 8); // engine 0
        let wq = WqSpec::dedicated(0, 8).cfg();
        for (i, dw) in wq.0.iter().enumerate() {
            dsa_model_bar0_write(m, 0x800 + i as u64 * 4, u64::from(*dw), 4);
        }
        dsa_model_bar0_write(
            m,
            off::CMD,
            u64::from(CmdReg::new(Command::EnableDevice, 0, false).0),
            4,
        );
        assert_eq!(dsa_model_bar0_read(m, off::CMDSTATUS, 4), 0);
        dsa_model_bar0_write(
            m,
            off::CMD,
            u64::from(CmdReg::new(Command::EnableWq, 0, false).0),
            4,
        );
        assert_eq!(dsa_model_bar0_read(m, off::CMDSTATUS, 4), 0);
    }
    let p = ModelPtr(m);
    let worker = thread::spawn(move || {
        let p = p;
        // SAFETY: the model stays alive until this thread is joined.
        unsafe { dsa_model_worker_run(p.0, 0) }
    });
    let data = pattern(10_000, 30);
    assert!(sim.write(None, SRC & 0xF_FFFF, &data));
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC & 0xF_FFFF;
    d.addr2 = 0x8_0000;
    d.size = data.len() as u32;
    d.completion_addr = 0x4000;
    d.flags |= DescFlags::RCI;
    d.int_handle = 1;
    let bytes = d.to_bytes();
    // SAFETY: `m` is live; `bytes` holds 64 bytes.
    unsafe {
        assert_eq!(
            dsa_model_portal_submit(m, 0x1000, bytes.as_ptr(), DSA_PORTAL_POSTED),
            DSA_PORTAL_ACCEPTED
        );
        assert_eq!(
            dsa_model_portal_submit(m, 0x1000, bytes.as_ptr(), DSA_PORTAL_DMWR),
            DSA_PORTAL_RETRY
        );
        assert_eq!(
            dsa_model_portal_submit(m, 0x1000, std::ptr::null(), DSA_PORTAL_POSTED),
            DSA_PORTAL_RETRY
        );
        dsa_model_portal_partial(m, 0x1000, 8);
    }
    assert_eq!(
        sim.wait_irqs(1, Duration::from_secs(60)),
        vec![SimIrq::Msix(1)]
    );
    assert_eq!(sim.read(None, 0x4000, 1).unwrap()[0], st::SUCCESS);
    assert_eq!(sim.read(None, 0x8_0000, data.len()).unwrap(), data);
    // SAFETY: `m` is live; the worker returns after stop, then the model is freed once.
    unsafe {
        dsa_model_reset(m);
        assert_eq!(dsa_model_bar0_read(m, off::GENSTS, 4), 0);
        dsa_model_stop(m);
        worker.join().unwrap();
        dsa_model_free(m);
    }
}
