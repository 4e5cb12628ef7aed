//! Portals, completion interrupts, MSIXPERM / IMS permission checks, priorities, drain.

use crate::common::*;
use dsa_model::{Config, PortalResult, StoreKind, TraceEvent};
use dsa_rig::sim::SimIrq;
use dsa_spec::portal::PortalKind;
use dsa_spec::regs::{off, swerr_code};
use dsa_spec::status as st;
use dsa_spec::tables::{ImsCtrl, MsixPerm};
use dsa_spec::{CmdReg, CmdStatus, Command, DescFlags, GenCfg, Opcode, int_handle_operand};

const IMS: u64 = 0x8000;

fn ims_entry(h: &H, i: u64, addr: u64, data: u32, ctrl: ImsCtrl) {
    h.w64(IMS + i * 16, addr);
    h.w32(IMS + i * 16 + 8, data);
    h.w32(IMS + i * 16 + 12, ctrl.bits());
}

#[test]
fn dedicated_portal_rules() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 2), WqSpec::shared(1, 2)]);
    let d = desc(Opcode::Noop);
    // ENQCMD to a dedicated WQ: always retry.
    assert_eq!(h.enqcmd(0, &d), PortalResult::Retry);
    // Every page and every 64-byte slot of a page is the same portal.
    assert_eq!(
        h.dev
            .portal_submit(0x0FC0, &d.to_bytes(), StoreKind::Posted),
        PortalResult::Accepted
    );
    assert_eq!(
        h.dev
            .portal_submit(0x2040, &d.to_bytes(), StoreKind::Posted),
        PortalResult::Accepted
    );
    assert_eq!(h.read_wqcfg(0).occupancy(), 2);
    // Full: dropped with SWERR 0x53.
    assert_eq!(
        h.dev
            .portal_submit(0x1000, &d.to_bytes(), StoreKind::Posted),
        PortalResult::Retry
    );
    assert_eq!(
        (h.swerr().code(), h.swerr().wq()),
        (swerr_code::DWQ_FULL, 0)
    );
    // Misaligned / partial stores and WQs that do not exist: dropped.
    assert_eq!(
        h.dev
            .portal_submit(0x0008, &d.to_bytes(), StoreKind::Posted),
        PortalResult::Retry
    );
    h.dev.portal_partial(0x0000, 8);
    assert_eq!(
        h.dev
            .portal_submit(0x4_0000, &d.to_bytes(), StoreKind::Posted),
        PortalResult::Retry
    );
    h.dev.run_until_idle();
    assert_eq!(h.read_wqcfg(0).occupancy(), 0);
}

#[test]
fn shared_portal_rules() {
    let h = H::default();
    let mut spec = WqSpec::shared(1, 4);
    spec.threshold = 2;
    h.up(&[WqSpec::dedicated(0, 2), spec]);
    let mut d = desc(Opcode::Noop);
    d.pasid = PASID;
    // Posted writes to a shared WQ are ignored.
    assert_eq!(
        h.submit(1, PortalKind::UnlimitedMsix, &d, StoreKind::Posted),
        PortalResult::Retry
    );
    assert_eq!(h.read_wqcfg(1).occupancy(), 0);
    // Limited page: accepts below the threshold only.
    assert_eq!(
        h.submit(1, PortalKind::LimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    assert_eq!(
        h.submit(1, PortalKind::LimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    assert_eq!(
        h.submit(1, PortalKind::LimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Retry
    );
    // Unlimited page: up to the size.
    assert_eq!(
        h.submit(1, PortalKind::UnlimitedIms, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    assert_eq!(
        h.submit(1, PortalKind::UnlimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    assert_eq!(
        h.submit(1, PortalKind::UnlimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Retry
    );
    assert!(!h.swerr().valid(), "a full shared WQ logs nothing");
    h.dev.run_until_idle();
    assert_eq!(
        h.submit(1, PortalKind::UnlimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    // Disabled WQ: retry (shared) / dropped (dedicated).
    assert_eq!(h.cmd(Command::DisableWq, dsa_spec::wq_bitmap_operand(1)), 0);
    assert_eq!(h.enqcmd(1, &d), PortalResult::Retry);
    assert_eq!(h.enqcmd(3, &d), PortalResult::Retry);
    // The descriptor's PASID is used for a shared WQ.
    assert_eq!(h.cr_at(Some(PASID), CR).status, st::SUCCESS);
}

#[test]
fn ims_pages_without_ims() {
    let h = H::new(Config {
        ims_entries: 0,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 4), WqSpec::shared(1, 4)]);
    let mut d = desc(Opcode::Noop);
    assert_eq!(
        h.submit(0, PortalKind::UnlimitedIms, &d, StoreKind::Posted),
        PortalResult::Retry
    );
    d.pasid = PASID;
    assert_eq!(
        h.submit(1, PortalKind::LimitedIms, &d, StoreKind::DmWr),
        PortalResult::Retry
    );
    assert_eq!(
        h.submit(1, PortalKind::LimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    assert_eq!(h.r64(IMS), 0, "no IMS table");
}

#[test]
fn msix_completion_interrupts_and_handle_range() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 8)]);
    h.irqs();
    let mut d = desc(Opcode::Noop);
    d.flags |= DescFlags::RCI;
    d.int_handle = 1;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(1)]);
    // Handle beyond the MSI-X table: 0x19 and no interrupt.
    d.int_handle = 9;
    assert_eq!(h.run1(&d).status, st::INVALID_INT_HANDLE);
    assert!(h.irqs().is_empty());
    // Without CRAV the 0x19 lands in SWERROR with the handle as error info.
    d.flags = DescFlags::RCI;
    h.movdir(0, &d);
    h.dev.run_until_idle();
    assert_eq!(
        (h.swerr().code(), h.swerr().error_info()),
        (st::INVALID_INT_HANDLE, 9)
    );
    // The Ignore bit suppresses the interrupt.
    h.w32(0x400 + 8, MsixPerm::IGNORE.bits());
    d.flags = DescFlags::CRAV | DescFlags::RCR | DescFlags::RCI;
    d.int_handle = 1;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
    assert!(h.irqs().is_empty());
    // An error completion still interrupts (the interrupt reports completion).
    h.w32(0x400 + 8, 0);
    d.reserved38 = 1;
    assert_eq!(h.run1(&d).status, st::NONZERO_RESERVED);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(1)]);
}

#[test]
fn msixperm_pasid_check() {
    let h = H::default();
    h.up(&[WqSpec::shared(1, 8)]);
    h.w32(off::GENCFG, 0); // (locked anyway: device enabled)
    h.irqs();
    let sp = Some(PASID);
    let mut d = desc(Opcode::Noop);
    d.pasid = PASID;
    d.privileged = true;
    d.flags |= DescFlags::RCI;
    d.int_handle = 2;
    let run = |d: &dsa_spec::Descriptor| {
        h.put(sp, CR, &[0; 32]);
        assert_eq!(h.enqcmd(1, d), PortalResult::Accepted);
        h.dev.run_until_idle();
        h.cr_at(sp, CR)
    };
    // Entry without PASID enable vs a PASID-enabled WQ: 0x19, no interrupt.
    assert_eq!(run(&d).status, st::INVALID_INT_HANDLE);
    assert!(h.irqs().is_empty());
    // Entry with a different PASID.
    h.w32(0x400 + 16, MsixPerm::PASID_EN.with_pasid(PASID + 1).bits());
    assert_eq!(run(&d).status, st::INVALID_INT_HANDLE);
    assert!(h.irqs().is_empty());
    // Matching PASID.
    h.w32(0x400 + 16, MsixPerm::PASID_EN.with_pasid(PASID).bits());
    assert_eq!(run(&d).status, st::SUCCESS);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(2)]);
    // User (priv = 0) descriptor with RCI in a PASID WQ without GENCFG.12: invalid flags.
    d.privileged = false;
    let cr = run(&d);
    assert_eq!(
        (cr.status, cr.invalid_flags()),
        (st::INVALID_FLAGS, DescFlags::RCI.bits())
    );
    assert!(
        h.irqs().is_empty(),
        "RCI itself was the invalid flag: no interrupt"
    );
}

#[test]
fn user_interrupt_enable_allows_user_rci() {
    let h = H::default();
    h.pci_all();
    h.w32(off::GENCFG, GenCfg::USER_INT_ENABLE.bits());
    h.up(&[WqSpec::shared(1, 8)]);
    h.w32(0x400 + 16, MsixPerm::PASID_EN.with_pasid(PASID).bits());
    let mut d = desc(Opcode::Noop);
    d.pasid = PASID;
    d.flags |= DescFlags::RCI;
    d.int_handle = 2;
    h.irqs();
    assert_eq!(h.enqcmd(1, &d), PortalResult::Accepted);
    h.dev.run_until_idle();
    assert_eq!(h.cr_at(Some(PASID), CR).status, st::SUCCESS);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(2)]);
}

#[test]
fn ims_entries_pasid_mask_ignore() {
    let h = H::default();
    h.up(&[WqSpec::shared(1, 8)]);
    h.irqs();
    let sp = Some(PASID);
    // Address writes whose upper bits are not 0xFEE are ignored.
    h.w64(IMS + 16 * 3, 0x1_FEE0_1000);
    assert_eq!(h.r64(IMS + 16 * 3), 0xFEE0_0000);
    h.w64(IMS + 16 * 3, 0xFED0_0000);
    assert_eq!(h.r64(IMS + 16 * 3), 0xFEE0_0000);
    ims_entry(
        &h,
        3,
        0xFEE0_2000,
        0x4321,
        ImsCtrl::PASID_EN.with_pasid(PASID),
    );
    let mut d = desc(Opcode::Noop);
    d.pasid = PASID;
    d.privileged = true;
    d.flags |= DescFlags::RCI;
    d.int_handle = 3;
    let run = |d: &dsa_spec::Descriptor| {
        h.put(sp, CR, &[0; 32]);
        assert_eq!(
            h.submit(1, PortalKind::LimitedIms, d, StoreKind::DmWr),
            PortalResult::Accepted
        );
        h.dev.run_until_idle();
        h.cr_at(sp, CR)
    };
    assert_eq!(run(&d).status, st::SUCCESS);
    assert_eq!(
        h.irqs(),
        vec![SimIrq::Msi {
            addr: 0xFEE0_2000,
            data: 0x4321
        }]
    );
    // PASID mismatch: error and no interrupt.
    ims_entry(
        &h,
        3,
        0xFEE0_2000,
        0x4321,
        ImsCtrl::PASID_EN.with_pasid(PASID + 1),
    );
    assert_eq!(run(&d).status, st::INVALID_INT_HANDLE);
    assert!(h.irqs().is_empty());
    // PASID-enable mismatch (entry without PASID, WQ with).
    ims_entry(&h, 3, 0xFEE0_2000, 0x4321, ImsCtrl::empty());
    assert_eq!(run(&d).status, st::INVALID_INT_HANDLE);
    // Masked: pending, delivered on unmask.
    ims_entry(
        &h,
        3,
        0xFEE0_2000,
        0x4321,
        ImsCtrl::MASK | ImsCtrl::PASID_EN.with_pasid(PASID),
    );
    assert_eq!(run(&d).status, st::SUCCESS);
    assert!(h.irqs().is_empty());
    assert!(ImsCtrl::from_bits_retain(h.r32(IMS + 16 * 3 + 12)).contains(ImsCtrl::PENDING));
    h.w32(
        IMS + 16 * 3 + 12,
        ImsCtrl::PASID_EN.with_pasid(PASID).bits(),
    );
    assert_eq!(
        h.irqs(),
        vec![SimIrq::Msi {
            addr: 0xFEE0_2000,
            data: 0x4321
        }]
    );
    assert!(!ImsCtrl::from_bits_retain(h.r32(IMS + 16 * 3 + 12)).contains(ImsCtrl::PENDING));
    // Pending is read-only.
    h.w32(
        IMS + 16 * 3 + 12,
        (ImsCtrl::PENDING | ImsCtrl::PASID_EN.with_pasid(PASID)).bits(),
    );
    assert!(!ImsCtrl::from_bits_retain(h.r32(IMS + 16 * 3 + 12)).contains(ImsCtrl::PENDING));
    // Ignore: nothing.
    ims_entry(
        &h,
        3,
        0xFEE0_2000,
        0x4321,
        ImsCtrl::IGNORE | ImsCtrl::PASID_EN.with_pasid(PASID),
    );
    assert_eq!(run(&d).status, st::SUCCESS);
    assert!(h.irqs().is_empty());
    // The same handle through an MSI-X portal uses the MSI-X table (index 3).
    h.w32(0x400 + 24, MsixPerm::PASID_EN.with_pasid(PASID).bits());
    h.put(sp, CR, &[0; 32]);
    assert_eq!(
        h.submit(1, PortalKind::LimitedMsix, &d, StoreKind::DmWr),
        PortalResult::Accepted
    );
    h.dev.run_until_idle();
    assert_eq!(h.irqs(), vec![SimIrq::Msix(3)]);
    // IMS index out of range.
    d.int_handle = 2048;
    assert_eq!(run(&d).status, st::INVALID_INT_HANDLE);
}

#[test]
fn requested_handles_with_cmdcap() {
    let h = H::new(Config {
        cmdcap: true,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 8)]);
    ims_entry(&h, 5, 0xFEE0_0000, 0x77, ImsCtrl::empty());
    h.w32(
        off::CMD,
        CmdReg::new(
            Command::RequestIntHandle,
            int_handle_operand(5, true),
            false,
        )
        .0,
    );
    let handle = CmdStatus(h.r32(off::CMDSTATUS)).result();
    h.irqs();
    let mut d = desc(Opcode::Noop);
    d.flags |= DescFlags::RCI;
    let run = |d: &dsa_spec::Descriptor, page| {
        h.put(None, CR, &[0; 32]);
        h.submit(0, page, d, StoreKind::Posted);
        h.dev.run_until_idle();
        h.cr().status
    };
    d.int_handle = 5; // the raw index is not a handle here
    assert_eq!(run(&d, PortalKind::UnlimitedIms), st::INVALID_INT_HANDLE);
    d.int_handle = handle;
    assert_eq!(run(&d, PortalKind::UnlimitedIms), st::SUCCESS);
    assert_eq!(
        h.irqs(),
        vec![SimIrq::Msi {
            addr: 0xFEE0_0000,
            data: 0x77
        }]
    );
    // The handle belongs to the IMS table: through an MSI-X portal it is invalid.
    assert_eq!(run(&d, PortalKind::UnlimitedMsix), st::INVALID_INT_HANDLE);
    assert_eq!(
        h.cmd(Command::ReleaseIntHandle, int_handle_operand(5, true)),
        0
    );
    assert_eq!(run(&d, PortalKind::UnlimitedIms), st::INVALID_INT_HANDLE);
}

#[test]
fn wq_priority_is_respected() {
    let h = H::default();
    let mut lo = WqSpec::dedicated(0, 16);
    lo.prio = 1;
    let mut hi = WqSpec::dedicated(1, 16);
    hi.prio = 9;
    h.up(&[lo, hi]);
    h.sim.record_traces(true);
    for i in 0..3u64 {
        let mut d = desc(Opcode::Noop);
        d.completion_addr = CR + i * 32;
        h.movdir(0, &d);
    }
    for i in 0..3u64 {
        let mut d = desc(Opcode::Noop);
        d.completion_addr = CR + 0x100 + i * 32;
        h.movdir(1, &d);
    }
    h.dev.run_until_idle();
    let order: Vec<u32> = h
        .sim
        .take_traces()
        .into_iter()
        .filter_map(|t| match t {
            TraceEvent::Completion { wq, .. } => Some(wq),
            _ => None,
        })
        .collect();
    assert_eq!(order, vec![1, 1, 1, 0, 0, 0]);
}

#[test]
fn trace_events_cover_the_path() {
    let h = H::new(Config {
        fault_injection: true,
        ..Config::default()
    });
    h.sim.record_traces(true);
    h.up(&[WqSpec::dedicated(0, 8)]);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = 0x7700_0000;
    d.addr2 = DST;
    d.size = 16;
    d.flags |= DescFlags::RCI;
    d.int_handle = 1;
    h.run1(&d);
    h.w32(
        dsa_model::fault_inject::FAULT_INJECT_BASE + dsa_model::fault_inject::FI_FORCE_SWERR,
        0x33,
    );
    let t = h.sim.take_traces();
    let has = |f: &dyn Fn(&TraceEvent) -> bool| t.iter().any(f);
    assert!(has(&|e| matches!(e, TraceEvent::RegWrite { .. })));
    assert!(has(&|e| matches!(e, TraceEvent::RegRead { .. })));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Cmd {
            code: 1,
            active: false,
            status: 0,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Portal {
            wq: 0,
            accepted: true,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Desc {
            wq: 0,
            opcode: 3,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Fault {
            addr: 0x7700_0000,
            is_write: false,
            ..
        }
    )));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Completion { status: 3, .. }
    )));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Irq {
            index: 1,
            sent: true,
            ..
        }
    )));
    assert!(has(&|e| matches!(e, TraceEvent::SwErr { code: 0x33, .. })));
    assert!(has(&|e| matches!(
        e,
        TraceEvent::Inject {
            kind: 1,
            a: 0x33,
            ..
        }
    )));
    assert_eq!(
        TraceEvent::Fault {
            pasid: None,
            addr: 1,
            is_write: true,
            bytes_done: 2
        }
        .to_raw(),
        (8, [u64::MAX, 1, 1, 2])
    );
}
