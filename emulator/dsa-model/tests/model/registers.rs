//! Register map, access rules, commands and their errors, SWERROR, halt and reset.

use crate::common::*;
use dsa_model::{Config, pci};
use dsa_rig::sim::SimIrq;
use dsa_spec::regs::{cmd_err, off, swerr_code};
use dsa_spec::tables::{WqMode, WqState, wqcfg};
use dsa_spec::{
    CmdCap, CmdReg, CmdStatus, Command, DeviceState, GenCap, GenCfg, GenSts, GrpCap, GrpCfg,
    IntCause, MsixPerm, OpCap, Opcode, WqCap, int_handle_operand, wq_bitmap_operand,
};

#[test]
fn capabilities_match_profile() {
    let h = H::default();
    assert_eq!(h.r32(off::VERSION), 0x100);
    let g = GenCap::from_bits_retain(h.r64(off::GENCAP));
    assert!(
        g.contains(GenCap::BLOCK_ON_FAULT | GenCap::OVERLAPPING_COPY | GenCap::CACHE_CONTROL_MEM)
    );
    assert!(g.contains(GenCap::DEST_READBACK | GenCap::CONFIG_SUPPORT));
    assert!(!g.contains(GenCap::CMD_CAP));
    assert_eq!(
        (g.max_xfer_shift(), g.max_batch_shift(), g.ims_entries()),
        (31, 10, 2048)
    );
    assert_eq!(g.evl_support(), 0);
    let w = WqCap::from_bits_retain(h.r64(off::WQCAP));
    assert_eq!(
        (w.total_wq_size(), w.num_wqs(), w.wqcfg_entry_size()),
        (128, 8, 32)
    );
    assert!(w.contains(WqCap::SHARED_MODE | WqCap::DEDICATED_MODE | WqCap::PRIORITY));
    assert_eq!(GrpCap::from_bits_retain(h.r64(off::GRPCAP)).num_groups(), 4);
    assert_eq!(h.r64(off::ENGCAP) & 0xFF, 4);
    let op = OpCap([h.r64(0x40), h.r64(0x48), h.r64(0x50), h.r64(0x58)]);
    for o in Opcode::DSA_1_0 {
        assert!(op.supports(o as u8), "{o:?}");
    }
    for o in [0x0Au8, 0x0B, 0x16, 0x17, 0x21, 0x42] {
        assert!(!op.supports(o), "{o:#x}");
    }
    let o = h.offsets();
    assert_eq!(
        (o.msixperm(), o.grpcfg(), o.wqcfg(), o.ims(), o.perfmon()),
        (0x400, 0x600, 0x800, 0x8000, 0x2000)
    );
    let l = h.dev.layout();
    assert_eq!(
        (
            l.bar0_size,
            l.bar2_size,
            l.msix_table_off,
            l.msix_pba_off,
            l.msix_entries,
            l.num_workers
        ),
        (0x10000, 0x20000, 0x4000, 0x5000, 9, 4)
    );
    assert_eq!(h.r64(off::CMDCAP), 0);
    // Reserved offsets read 0 and ignore writes.
    for r in [0x08u64, 0x100, 0x1F8, 0x3000, 0x6000, 0x7FF8] {
        h.w64(r, u64::MAX);
        assert_eq!(h.r64(r), 0, "{r:#x}");
    }
    // Sub-register reads and bad widths.
    assert_eq!(h.dev.bar0_read(off::VERSION + 1, 1), 1);
    assert_eq!(h.dev.bar0_read(off::VERSION + 1, 4), 0);
    assert_eq!(h.dev.bar0_read(off::VERSION, 3), 0);
    assert_eq!(h.dev.bar0_read(0x10_0000, 4), 0);
    let c = H::new(Config {
        cmdcap: true,
        ..Config::default()
    });
    assert!(GenCap::from_bits_retain(c.r64(off::GENCAP)).contains(GenCap::CMD_CAP));
    let cap = CmdCap(c.r64(off::CMDCAP));
    assert!((1..=14).all(|n| cap.supports(n)) && !cap.supports(15) && !cap.supports(0));
}

#[test]
fn config_write_locking() {
    let h = H::default();
    h.pci_all();
    h.w32(off::GENCFG, 0xFFFF_FFFF);
    assert_eq!(
        h.r32(off::GENCFG),
        GenCfg::USER_INT_ENABLE.bits(),
        "only bit 12 is implemented"
    );
    // GRPCFG: bits beyond the implemented WQs/engines and reserved flag bits are dropped.
    h.write_grpcfg(
        0,
        &GrpCfg {
            wqs: [u64::MAX, 1, 0, 0],
            engines: u64::MAX,
            flags: dsa_spec::GroupFlags::from_bits_retain(u64::MAX),
        },
    );
    let g = h.read_grpcfg(0);
    assert_eq!(
        (g.wqs, g.engines, g.flags.bits()),
        ([0xFF, 0, 0, 0], 0xF, 0x3F)
    );
    // WQCFG RO fields: occupancy and state cannot be written.
    let base = h.wqcfg_off(0);
    h.w32(base + 24, 0xFFFF_FFFF);
    assert_eq!(h.r32(base + 24), 0);
    h.configure(&[WqSpec::dedicated(0, 16)]);
    assert_eq!(h.cmd(Command::EnableDevice, 0), 0);
    // Device enabled: GENCFG, GRPCFG and WQ sizes are locked, other WQCFG fields are not.
    h.w32(off::GENCFG, 0);
    assert_eq!(h.r32(off::GENCFG), GenCfg::USER_INT_ENABLE.bits());
    h.write_grpcfg(
        1,
        &GrpCfg {
            wqs: [2, 0, 0, 0],
            engines: 2,
            ..Default::default()
        },
    );
    assert_eq!(h.read_grpcfg(1), GrpCfg::default());
    h.w32(base, 20);
    assert_eq!(h.read_wqcfg(0).size(), 16);
    h.w32(base + 4, 5);
    assert_eq!(h.read_wqcfg(0).threshold(), 5);
    // WQ enabled: everything in the entry is locked.
    assert_eq!(h.cmd(Command::EnableWq, 0), 0);
    let before = h.read_wqcfg(0);
    assert_eq!(before.state(), WqState::Enabled);
    h.w32(base + 8, 0);
    h.w32(base + 4, 1);
    h.w32(base + 12, 0);
    let after = h.read_wqcfg(0);
    assert_eq!(after, before);
    // MSIXPERM stays writable, with reserved bits dropped and the upper dword reserved.
    h.w64(0x400 + 8, u64::MAX);
    assert_eq!(h.r64(0x400 + 8), 0xFFFF_F00C);
}

#[test]
fn enable_device_errors() {
    let h = H::default();
    h.configure(&[WqSpec::dedicated(0, 16)]);
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::BUS_MASTER_EN);
    h.dev.set_pci_state(pci::BME);
    // Sum of WQ sizes above the total.
    h.configure(&[WqSpec::dedicated(0, 100), WqSpec::dedicated(1, 29)]);
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::WQ_SIZE_TOTAL);
    // A WQ in two groups.
    h.configure(&[WqSpec::dedicated(0, 16)]);
    h.write_grpcfg(
        1,
        &GrpCfg {
            wqs: [1, 0, 0, 0],
            engines: 2,
            ..Default::default()
        },
    );
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::GRP_CONFIG);
    // An engine in two groups.
    h.write_grpcfg(
        1,
        &GrpCfg {
            wqs: [2, 0, 0, 0],
            engines: 1,
            ..Default::default()
        },
    );
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::GRP_CONFIG2);
    // A WQ with a size in a group without engines.
    h.write_grpcfg(
        1,
        &GrpCfg {
            wqs: [2, 0, 0, 0],
            engines: 0,
            ..Default::default()
        },
    );
    h.write_wqcfg(1, WqSpec::dedicated(1, 4).cfg());
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::GRP_CONFIG3);
    h.write_grpcfg(1, &GrpCfg::default());
    // PASID enable in a WQ while the PCI PASID capability is off.
    h.write_wqcfg(1, WqSpec::shared(1, 4).cfg());
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::PASID_INVAL);
    h.write_wqcfg(1, WqSpec::dedicated(1, 0).cfg());
    assert_eq!(h.cmd(Command::EnableDevice, 0), 0);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Enabled);
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::DEV_ENABLED);
    assert_eq!(h.cmd(Command::DisableDevice, 0), 0);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Disabled);
    assert_eq!(h.cmd(Command::DisableDevice, 0), cmd_err::DIS_DEV_EN);
}

#[test]
fn enable_wq_errors() {
    let h = H::new(Config {
        block_on_fault: false,
        ..Config::default()
    });
    assert_eq!(h.cmd(Command::EnableWq, 0), cmd_err::DEV_NOT_EN);
    h.dev.set_pci_state(pci::BME);
    h.configure(&[WqSpec::dedicated(0, 16), WqSpec::dedicated(1, 8)]);
    assert_eq!(h.cmd(Command::EnableDevice, 0), 0);
    let try_cfg = |f: &dyn Fn(dsa_spec::WqCfg) -> dsa_spec::WqCfg, want: u8| {
        h.write_wqcfg(0, f(WqSpec::dedicated(0, 16).cfg()));
        assert_eq!(h.cmd(Command::EnableWq, 0), want);
    };
    try_cfg(&|c| c.with_priority(0), cmd_err::WQ_PRIOR);
    try_cfg(&|c| c.with_mode(WqMode::Shared), cmd_err::WQ_MODE);
    try_cfg(&|c| c.with_bof(true), cmd_err::BOF_EN);
    try_cfg(&|c| c.with_pasid(5, true), cmd_err::PASID_EN);
    try_cfg(&|c| c.with_max_batch_shift(0), cmd_err::MAX_BATCH_SIZE);
    try_cfg(&|c| c.with_max_batch_shift(11), cmd_err::MAX_BATCH_SIZE);
    try_cfg(&|c| c.with_max_xfer_shift(0), 0);
    assert_eq!(h.cmd(Command::DisableWq, wq_bitmap_operand(0)), 0);
    let mut occ = WqSpec::dedicated(0, 16).cfg();
    occ.0[wqcfg::DW_OCC_LIMIT] = wqcfg::OCC_INT_EN | 4;
    try_cfg(&|_| occ, cmd_err::OCC_INT);
    let mut ats = WqSpec::dedicated(0, 16).cfg();
    ats.0[2] |= wqcfg::ATS_DISABLE;
    try_cfg(&|_| ats, cmd_err::ATS_DISABLE);
    let mut prs = WqSpec::dedicated(0, 16).cfg();
    prs.0[2] |= wqcfg::PRS_DISABLE;
    try_cfg(&|_| prs, cmd_err::PRS_DISABLE);
    // Size 0 (sizes are fixed once the device is enabled: WQ 2 was configured with 0).
    assert_eq!(h.cmd(Command::EnableWq, 2), cmd_err::WQ_SIZE);
    assert_eq!(h.cmd(Command::EnableWq, 8), cmd_err::INVALID_WQ);
    try_cfg(&|c| c, 0);
    assert_eq!(h.cmd(Command::EnableWq, 0), cmd_err::WQ_ENABLED);
    // A WQ that is in no group.
    h.write_grpcfg(0, &GrpCfg::default());
    let h2 = H::default();
    h2.pci_all();
    h2.configure(&[WqSpec::dedicated(0, 16)]);
    h2.write_wqcfg(3, WqSpec::dedicated(3, 4).cfg());
    assert_eq!(h2.cmd(Command::EnableDevice, 0), 0);
    assert_eq!(h2.cmd(Command::EnableWq, 3), cmd_err::WQ_MODE);
    // Privileged PASID WQ without PCI privileged mode.
    let h3 = H::default();
    h3.dev.set_pci_state(pci::BME | pci::PASID_ENABLE);
    h3.configure(&[WqSpec {
        privileged: true,
        ..WqSpec::shared(0, 16)
    }]);
    assert_eq!(h3.cmd(Command::EnableDevice, 0), 0);
    assert_eq!(h3.cmd(Command::EnableWq, 0), cmd_err::WQ_PRIV);
}

#[test]
fn command_codes_and_bitmaps() {
    let h = H::default();
    h.up(&[
        WqSpec::dedicated(0, 16),
        WqSpec::dedicated(1, 16),
        WqSpec::dedicated(4, 16),
    ]);
    for code in [0u32, 0x0D, 0x0E, 0x0F, 0x11, 0x1F] {
        h.w32(off::CMD, code << 20);
        assert_eq!(
            CmdStatus(h.r32(off::CMDSTATUS)).error(),
            cmd_err::INVALID_COMMAND,
            "code {code:#x}"
        );
    }
    assert_eq!(
        h.cmd(Command::DrainWq, 0),
        cmd_err::INVALID_WQ,
        "empty bitmap"
    );
    assert_eq!(
        h.cmd(Command::DrainWq, wq_bitmap_operand(9)),
        cmd_err::INVALID_WQ
    );
    assert_eq!(
        h.cmd(Command::DrainWq, wq_bitmap_operand(17)),
        cmd_err::INVALID_WQ
    );
    assert_eq!(
        h.cmd(Command::DrainWq, wq_bitmap_operand(2)),
        cmd_err::WQ_NOT_EN
    );
    assert_eq!(
        h.cmd(Command::AbortWq, wq_bitmap_operand(2)),
        cmd_err::WQ_NOT_EN
    );
    // WQs 1 and 4 in one command: operand 0x12.
    assert_eq!(wq_bitmap_operand(1) | wq_bitmap_operand(4), 0x12);
    assert_eq!(h.cmd(Command::DisableWq, 0x12), 0);
    assert_eq!(h.read_wqcfg(1).state(), WqState::Disabled);
    assert_eq!(h.read_wqcfg(4).state(), WqState::Disabled);
    assert_eq!(h.read_wqcfg(0).state(), WqState::Enabled);
    assert_eq!(h.cmd(Command::DisableWq, 0x12), cmd_err::WQ_NOT_EN);
    // Reset WQ keeps only the size.
    assert_eq!(h.cmd(Command::ResetWq, wq_bitmap_operand(1)), 0);
    let c = h.read_wqcfg(1);
    assert_eq!(
        (c.size(), c.priority(), c.mode(), c.max_xfer_shift()),
        (16, 0, WqMode::Shared, 0)
    );
    assert_eq!(h.cmd(Command::DrainAll, 0), 0);
    assert_eq!(h.cmd(Command::AbortAll, 0), 0);
    assert_eq!(h.cmd(Command::DrainPasid, 5), 0);
    assert_eq!(h.cmd(Command::AbortPasid, 5), 0);
    // Interrupt-handle commands need CMDCAP.
    assert_eq!(
        h.cmd(Command::RequestIntHandle, 1),
        cmd_err::INVALID_COMMAND
    );
    // Readback of CMD.
    h.w32(off::CMD, CmdReg::new(Command::DrainAll, 0, false).0);
    assert_eq!(h.r32(off::CMD), 0x0030_0000);
}

#[test]
fn interrupt_handle_commands() {
    let h = H::new(Config {
        cmdcap: true,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 16)]);
    h.w32(
        off::CMD,
        CmdReg::new(
            Command::RequestIntHandle,
            int_handle_operand(5, true),
            false,
        )
        .0,
    );
    let s = CmdStatus(h.r32(off::CMDSTATUS));
    assert_eq!((s.error(), s.active()), (0, false));
    assert_eq!(s.result(), 0x8005);
    assert_eq!(
        h.cmd(Command::RequestIntHandle, int_handle_operand(2048, true)),
        cmd_err::INVAL_INT_IDX
    );
    assert_eq!(
        h.cmd(Command::RequestIntHandle, int_handle_operand(9, false)),
        cmd_err::INVAL_INT_IDX
    );
    assert_eq!(
        h.cmd(Command::ReleaseIntHandle, int_handle_operand(9, false)),
        cmd_err::INVAL_INT_IDX
    );
    assert_eq!(
        h.cmd(Command::ReleaseIntHandle, int_handle_operand(5, true)),
        0
    );
    let n = H::new(Config {
        cmdcap: true,
        ims_entries: 0,
        ..Config::default()
    });
    assert_eq!(
        n.cmd(Command::RequestIntHandle, int_handle_operand(0, true)),
        cmd_err::INVAL_INT_IDX
    );
}

#[test]
fn command_completion_interrupt_and_intcause() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 16)]);
    h.irqs();
    h.w32(off::CMD, CmdReg::new(Command::DrainAll, 0, true).0);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(0)]);
    assert_eq!(h.r32(off::INTCAUSE), IntCause::COMMAND_COMPLETED.bits());
    h.w32(off::INTCAUSE, 0);
    assert_eq!(
        h.r32(off::INTCAUSE),
        IntCause::COMMAND_COMPLETED.bits(),
        "RW1C: writing 0 clears nothing"
    );
    h.w32(off::INTCAUSE, IntCause::COMMAND_COMPLETED.bits());
    assert_eq!(h.r32(off::INTCAUSE), 0);
    h.w32(off::CMD, CmdReg::new(Command::DrainAll, 0, false).0);
    assert!(h.irqs().is_empty());
    assert_eq!(h.r32(off::INTCAUSE), 0);
    // A CMD write narrower than 4 bytes is ignored.
    h.dev.bar0_write(off::CMD + 2, 0x8030, 2);
    assert!(h.irqs().is_empty());
}

#[test]
fn cmd_while_active_is_dropped_with_swerr() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 16)]);
    h.w32(off::GENCTRL, 1);
    let d = desc(Opcode::Noop);
    h.movdir(0, &d);
    let s = h.cmd_nowait(Command::DrainWq, wq_bitmap_operand(0));
    assert!(s.active(), "drain waits for the queued descriptor");
    h.irqs();
    // Dropped: this Disable WQ must not happen.
    h.w32(
        off::CMD,
        CmdReg::new(Command::DisableWq, wq_bitmap_operand(0), true).0,
    );
    let e = h.swerr();
    assert!(e.valid());
    assert_eq!(e.code(), swerr_code::CMD_WHILE_ACTIVE);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(0)]);
    h.dev.run_until_idle();
    let s = CmdStatus(h.r32(off::CMDSTATUS));
    assert!(!s.active());
    assert_eq!(s.error(), 0);
    assert_eq!(h.read_wqcfg(0).state(), WqState::Enabled);
    assert_eq!(h.cr().status, 1);
}

#[test]
fn swerr_valid_overflow_and_genctrl_gating() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 1)]);
    h.irqs();
    let d = desc(Opcode::Noop);
    h.movdir(0, &d); // fills the WQ
    h.movdir(0, &d); // dropped: 0x53
    let e = h.swerr();
    assert!(e.valid() && !e.overflow());
    assert_eq!((e.code(), e.wq()), (swerr_code::DWQ_FULL, 0));
    assert!(e.flags().contains(dsa_spec::SwErrFlags::WQ_INDEX_VALID));
    assert_eq!(
        h.r32(off::INTCAUSE) & 1,
        1,
        "cause is recorded even with GENCTRL.0 = 0"
    );
    assert!(h.irqs().is_empty(), "no interrupt without GENCTRL.0");
    h.w32(off::GENCTRL, 1);
    h.movdir(0, &d);
    let e2 = h.swerr();
    assert!(e2.valid() && e2.overflow());
    assert_eq!(e2.code(), swerr_code::DWQ_FULL);
    assert_eq!(h.irqs(), vec![SimIrq::Msix(0)]);
    h.ack_swerr();
    let e3 = h.swerr();
    assert!(!e3.valid() && !e3.overflow());
    h.dev.run_until_idle();
    assert_eq!(h.cr().status, 1, "the first descriptor ran");
}

#[test]
fn halt_on_pci_change_and_reset_recovery() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 16), WqSpec::shared(1, 16)]);
    h.w32(off::GENCTRL, 3);
    h.irqs();
    h.dev.set_pci_state(pci::BME | pci::PASID_ENABLE); // privileged mode cleared while enabled
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Halted);
    assert_eq!(
        GenSts(h.r32(off::GENSTS)).reset_type(),
        dsa_spec::ResetType::Software
    );
    assert_eq!(h.swerr().code(), swerr_code::PCI_CONFIG_CHANGED);
    let cause = IntCause::from_bits_retain(h.r32(off::INTCAUSE));
    assert!(cause.contains(IntCause::HALTED | IntCause::SOFTWARE_ERROR));
    assert!(h.irqs().contains(&SimIrq::Msix(0)));
    // Halted: nothing is accepted or executed.
    let d = desc(Opcode::Noop);
    assert_eq!(h.enqcmd(1, &d), dsa_model::PortalResult::Retry);
    h.movdir(0, &d);
    h.dev.run_until_idle();
    assert_eq!(h.cr().status, 0);
    assert_eq!(h.cmd(Command::EnableDevice, 0), cmd_err::DEV_ENABLED);
    assert_eq!(h.cmd(Command::EnableWq, 0), cmd_err::DEV_NOT_EN);
    // Reset Device recovers, with every config register back to its reset value.
    assert_eq!(h.cmd(Command::ResetDevice, 0), 0);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Disabled);
    assert_eq!(h.read_wqcfg(0), dsa_spec::WqCfg::default());
    assert_eq!(h.read_grpcfg(0), GrpCfg::default());
    assert_eq!(h.r32(off::GENCFG), 0);
    h.pci_all();
    h.ack_swerr();
    h.up(&[WqSpec::dedicated(0, 16)]);
    assert_eq!(h.run1(&d).status, 1);
    // A config-space change while disabled does not halt.
    assert_eq!(h.cmd(Command::DisableDevice, 0), 0);
    h.dev.set_pci_state(pci::BME);
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Disabled);
}

#[test]
fn reset_device_clears_tables() {
    let h = H::default();
    h.pci_all();
    h.configure(&[WqSpec::dedicated(0, 16)]);
    h.w64(0x400, u64::from((MsixPerm::PASID_EN.with_pasid(3)).bits()));
    h.w64(0x8000 + 16, 0xFEE0_1000);
    h.w64(0x8000 + 24, 0x55);
    assert_eq!(h.r64(0x8000 + 24), 0x55);
    h.w32(off::GENCFG, GenCfg::USER_INT_ENABLE.bits());
    assert_eq!(h.cmd(Command::ResetDevice, 0), 0);
    assert_eq!(h.r64(0x400), 0);
    assert_eq!(h.r64(0x8000 + 16), 0xFEE0_0000);
    assert_eq!(h.r64(0x8000 + 24), 1 << 32, "IMS entries reset masked");
    assert_eq!(h.r32(off::GENCFG), 0);
    assert_eq!(h.read_wqcfg(0).size(), 0);
    // Function-level reset does the same and also clears CMDSTATUS.
    h.configure(&[WqSpec::dedicated(0, 16)]);
    h.dev.reset();
    assert_eq!(h.read_wqcfg(0).size(), 0);
    assert_eq!(h.r32(off::CMDSTATUS), 0);
}

#[test]
fn disable_and_drain_commands_wait_for_work() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 16), WqSpec::shared(1, 16)]);
    let mut d = desc(Opcode::Noop);
    h.movdir(0, &d);
    let s = h.cmd_nowait(Command::DisableDevice, 0);
    assert!(s.active());
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Draining);
    assert_eq!(h.read_wqcfg(0).state(), WqState::Draining);
    // Draining WQs accept nothing.
    d.completion_addr = CR + 32;
    h.movdir(0, &d);
    h.dev.run_until_idle();
    let s = CmdStatus(h.r32(off::CMDSTATUS));
    assert_eq!((s.active(), s.error()), (false, 0));
    assert_eq!(GenSts(h.r32(off::GENSTS)).state(), DeviceState::Disabled);
    assert_eq!(h.cr().status, 1);
    assert_eq!(h.cr_at(None, CR + 32).status, 0);
    // Disable Device reset the WQ configuration except the sizes.
    assert_eq!(h.read_wqcfg(0).size(), 16);
    assert_eq!(h.read_wqcfg(0).priority(), 0);
}

#[test]
fn abort_commands_drop_queued_work() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 16), WqSpec::shared(1, 16)]);
    let mut d = desc(Opcode::Noop);
    h.movdir(0, &d);
    assert_eq!(h.cmd(Command::AbortWq, wq_bitmap_operand(0)), 0);
    h.dev.run_until_idle();
    assert_eq!(h.cr().status, 0, "aborted descriptors write no CR");
    // Abort PASID only touches that PASID.
    d.pasid = PASID;
    d.completion_addr = CR;
    assert_eq!(h.enqcmd(1, &d), dsa_model::PortalResult::Accepted);
    let mut e = d;
    e.pasid = PASID + 1;
    e.completion_addr = CR + 64;
    h.sim.map(Some(PASID + 1), CR, 0x1000);
    assert_eq!(h.enqcmd(1, &e), dsa_model::PortalResult::Accepted);
    assert_eq!(h.read_wqcfg(1).occupancy(), 2);
    assert_eq!(h.cmd(Command::AbortPasid, PASID), 0);
    assert_eq!(h.read_wqcfg(1).occupancy(), 1);
    h.dev.run_until_idle();
    assert_eq!(h.cr_at(Some(PASID), CR).status, 0);
    assert_eq!(h.cr_at(Some(PASID + 1), CR + 64).status, 1);
    // Drain PASID waits, then everything of that PASID has its CR.
    d.completion_addr = CR + 96;
    h.enqcmd(1, &d);
    let s = h.cmd_nowait(Command::DrainPasid, PASID);
    assert!(s.active());
    h.dev.run_until_idle();
    assert!(!CmdStatus(h.r32(off::CMDSTATUS)).active());
    assert_eq!(h.cr_at(Some(PASID), CR + 96).status, 1);
}
