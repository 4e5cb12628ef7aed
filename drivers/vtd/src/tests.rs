//! Driver-level host tests against the fake unit: GCMD protocol, exact invalidation
//! descriptors, table contents walked with the spec decoders, faults, interrupt remapping.

use crate::dmar::Bdf;
use crate::error::{Requirement, VtdError};
use crate::fake::*;
use crate::pagetable::{IoPageTable, PAGE_2M, Perm, invalidation_chunks};
use crate::spec::*;
use crate::unit::*;
use hwio::dma::UnitMemory;

type Unit = RemappingUnit<FakeRegs, FakeMem, FakeClock>;

fn unit_with(ecap: u64, cap: u64, cfg: Config) -> (Unit, FakeRegs, FakeMem) {
    let mem = FakeMem::new();
    let regs = FakeRegs::new(mem.clone(), cap, ecap);
    let u = RemappingUnit::new(regs.clone(), mem.clone(), FakeClock::new(), cfg).unwrap();
    (u, regs, mem)
}

fn fs_unit() -> (Unit, FakeRegs, FakeMem) {
    let (mut u, r, m) = unit_with(
        QEMU_ECAP_FS,
        QEMU_CAP | Cap::FS1GP.bits(),
        Config::default(),
    );
    u.init().unwrap();
    r.clear_log();
    (u, r, m)
}

const DEV: Bdf = Bdf::new(0, 3, 0);
const WAIT_MASK: u64 = 0xffff_ffff;

/// Executed descriptors with the wait descriptors' status address/token normalised away.
fn descs(r: &FakeRegs) -> Vec<[u64; 4]> {
    r.executed()
        .into_iter()
        .map(|d| {
            if d[0] & 0xf == 5 {
                [d[0] & WAIT_MASK, 0, 0, 0]
            } else {
                d
            }
        })
        .collect()
}
const WAIT: [u64; 4] = [0x65, 0, 0, 0];

fn gsts(r: &FakeRegs) -> u32 {
    r.inner.borrow().gsts
}

#[test]
fn init_follows_gcmd_protocol_and_programs_registers() {
    let (mut u, r, m) = unit_with(QEMU_ECAP_FS, QEMU_CAP, Config::default());
    u.init().unwrap();
    // One command per write, persistent bits carried, one-shot status bits (RTPS, IRTPS) dropped.
    assert_eq!(
        r.inner.borrow().gcmd_writes,
        vec![
            1 << 26,
            (1 << 26) | (1 << 24),
            (1 << 26) | (1 << 25),
            (1 << 26) | (1 << 25) | (1 << 30),
            (1 << 26) | (1 << 25) | (1 << 31)
        ]
    );
    let g = Gsts::from_bits_retain(gsts(&r));
    assert!(g.contains(Gsts::TES | Gsts::QIES | Gsts::IRES | Gsts::RTPS | Gsts::IRTPS));
    let v = |o| *r.inner.borrow().values.get(&o).unwrap();
    let root = u.root_table().unwrap();
    assert_eq!(v(reg::off::RTADDR), root | (1 << 10));
    assert_eq!(
        v(reg::off::IQA) & 0xfff,
        1 << 11,
        "256-bit descriptors, QS=0"
    );
    assert_eq!(v(reg::off::IRTA) & 0xfff, 7, "256 entries, xAPIC");
    // Tables live in fake DMA memory above 4 GiB.
    assert!(root >= 1 << 32 && m.read64(root) == 0);
    // IEC global after SIRTP, then CC/PASID-cache/IOTLB global after SRTP, each with a wait.
    assert_eq!(
        descs(&r),
        vec![
            [0x04, 0, 0, 0],
            WAIT,
            [0x11, 0, 0, 0],
            [0x37, 0, 0, 0],
            [0x12, 0, 0, 0],
            WAIT
        ]
    );
    // Stale faults dropped with FSTS = PFO | IQE (RW1C, §11.4.7.1).
    assert!(
        r.inner
            .borrow()
            .log
            .contains(&Access::W32(reg::off::FSTS, 0x11))
    );
    // Every 32-bit register was accessed with 32-bit ops (the fake asserts otherwise).
    assert!(
        r.inner
            .borrow()
            .log
            .iter()
            .any(|a| matches!(a, Access::W32(reg::off::GCMD, _)))
    );
}

#[test]
fn firmware_state_turned_off_one_bit_at_a_time() {
    let (mut u, r, _) = unit_with(QEMU_ECAP_FS, QEMU_CAP, Config::default());
    r.inner.borrow_mut().gsts =
        (Gsts::TES | Gsts::IRES | Gsts::QIES | Gsts::RTPS | Gsts::IRTPS).bits();
    u.init().unwrap();
    let w = r.inner.borrow().gcmd_writes.clone();
    assert_eq!(&w[..3], &[(1 << 26) | (1 << 25), 1 << 26, 0]);
}

#[test]
fn command_and_invalidation_timeouts_are_errors() {
    let (mut u, r, _) = unit_with(QEMU_ECAP_FS, QEMU_CAP, Config::default());
    r.inner.borrow_mut().stuck = Some(Gcmd::TE);
    assert_eq!(
        u.init(),
        Err(VtdError::CommandTimeout {
            command: Gcmd::TE.bits()
        })
    );

    let (mut u, r, _) = fs_unit();
    r.inner.borrow_mut().hold_queue = true;
    assert_eq!(
        u.invalidate(&[InvDesc::iotlb_global()]),
        Err(VtdError::InvalidationTimeout)
    );
}

#[test]
fn requirements_are_checked() {
    let mem = FakeMem::new();
    let mk = |ecap: u64, cfg: Config| {
        RemappingUnit::new(
            FakeRegs::new(mem.clone(), QEMU_CAP, ecap),
            mem.clone(),
            FakeClock::new(),
            cfg,
        )
        .err()
    };
    let d = Config::default();
    assert_eq!(
        mk(QEMU_ECAP_FS & !Ecap::SMTS.bits(), d),
        Some(VtdError::Missing(Requirement::ScalableMode))
    );
    assert_eq!(
        mk(QEMU_ECAP_FS & !Ecap::QI.bits(), d),
        Some(VtdError::Missing(Requirement::QueuedInvalidation))
    );
    assert_eq!(
        mk(QEMU_ECAP_FS & !Ecap::FSTS.bits(), d),
        Some(VtdError::Missing(Requirement::TranslationStage))
    );
    assert_eq!(
        mk(QEMU_ECAP_FS & !Ecap::IR.bits(), d),
        Some(VtdError::Missing(Requirement::InterruptRemapping))
    );
    let pt = Config {
        rid_default: RidDefault::PassThrough,
        ..d
    };
    assert_eq!(
        mk(QEMU_ECAP_FS & !Ecap::PT.bits(), pt),
        Some(VtdError::Missing(Requirement::PassThrough))
    );
    assert_eq!(mk(QEMU_ECAP_FS, d), None);
}

#[test]
fn unmap_beyond_the_input_width_is_refused() {
    let (mut u, _, _) = fs_unit();
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    u.map(a, 0x10_0000, 0x2_0000_0000, 0x1000, Perm::RW)
        .unwrap();
    // Found by the fuzz harness: the walk's skip to the next 512 GiB overflowed at the top.
    assert_eq!(
        u.unmap(a, 0xffff_ffff_ffe0_0000, 0x1000),
        Err(VtdError::IovaTooWide {
            iova: 0xffff_ffff_ffe0_0000
        })
    );
    assert_eq!(
        u.unmap(a, 0x7fff_ffff_f000, 0x2000),
        Err(VtdError::IovaTooWide {
            iova: 0x7fff_ffff_f000
        })
    );
    assert_eq!(u.unmap(a, 0x10_0000, 0x1000), Ok(0x1000));
}

#[test]
fn impossible_address_widths_are_refused_at_setup() {
    let mem = FakeMem::new();
    let with_mgaw = |field: u64| {
        let cap = (QEMU_CAP & !(0x3f << 16)) | (field << 16);
        RemappingUnit::new(
            FakeRegs::new(mem.clone(), cap, QEMU_ECAP_FS),
            mem.clone(),
            FakeClock::new(),
            Config::default(),
        )
    };
    // MGAW = 63 decodes to a 64-bit width: every later `x >> width` overflowed.
    for field in [63u64, 62, 57, 37, 0] {
        let e = with_mgaw(field).err();
        assert_eq!(
            e,
            Some(VtdError::BadCapability {
                field: "CAP.MGAW",
                value: field + 1,
                allowed: "a guest address width of 39 to 57 bits",
            }),
            "MGAW field {field}"
        );
        let msg = e.unwrap().to_string();
        assert!(msg.starts_with("CAP.MGAW is "), "{msg}");
    }
    for field in [47u64, 56] {
        assert!(with_mgaw(field).is_ok(), "MGAW field {field}");
    }
}

#[test]
fn every_error_reads_as_a_sentence() {
    use crate::dmar::DmarError;
    let errors = [
        VtdError::Missing(Requirement::PassThrough),
        VtdError::IrteExhausted,
        VtdError::CommandTimeout { command: 1 << 31 },
        VtdError::NotAttached {
            sid: 0x0108,
            pasid: 3,
        },
        VtdError::BadRange { iova: 1, len: 2 },
    ];
    for e in errors {
        let s = e.to_string();
        let dbg = format!("{e:?}");
        assert_ne!(s, dbg);
        assert!(s.contains(' ') && !s.contains('{'), "{s}");
    }
    assert_eq!(
        VtdError::NotAttached {
            sid: 0x0108,
            pasid: 3
        }
        .to_string(),
        "requester 01:01.0 has no such attachment at PASID 3"
    );
    for e in [
        DmarError::TruncatedHeader { len: 3 },
        DmarError::BadChecksum { sum: 7 },
        DmarError::StructureOverrun {
            offset: 48,
            ty: 0,
            length: 200,
        },
        DmarError::BadRegisterBase {
            offset: 48,
            base: 0,
        },
    ] {
        let s = e.to_string();
        assert!(!s.contains('{') && s.contains(' '), "{s}");
    }
}

#[test]
fn first_stage_space_tables_exact_and_walkable() {
    let (mut u, r, m) = fs_unit();
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    assert_eq!(a, AddressSpaceId(1));
    let did = u.domain_id(a).unwrap();
    assert!(did >= 1);
    u.map(a, 0x10_0000, 0x2_0000_0000, 0x3000, Perm::RW)
        .unwrap();
    u.map(a, 0x4000_0000, 0x3_0000_0000, 2 * PAGE_2M, Perm::RO)
        .unwrap();
    assert!(
        descs(&r).is_empty(),
        "CM=0: new mappings need no invalidation"
    );
    u.attach(DEV, a).unwrap();
    let sid = DEV.sid();
    // Context creation: RID_PASID (blocked) entry written while the context entry is not
    // present (nothing to flush), then the context entry + device-selective context-cache
    // invalidation; then the PASID entry for pasid 1.
    let ex = descs(&r);
    assert_eq!(ex.len(), 2 + 4, "{ex:#x?}");
    assert_eq!(&ex[..2], &[[0x31 | (u64::from(sid) << 32), 0, 0, 0], WAIT]);
    assert_eq!(
        &ex[2..],
        &[
            InvDesc::pasid_cache_pasid(did, 1).0,
            InvDesc::piotlb_pasid(did, 1).0,
            InvDesc::context_cache(CcGranularity::Device { sid, fm: 0 }).0,
            WAIT
        ]
    );

    // Walk the tables in memory with the spec decoders.
    let root = u.root_table().unwrap();
    let re = RootEntry::decode([m.read64(root), m.read64(root + 8)]);
    let ctx = re.lower.unwrap();
    assert_eq!(re.upper, None);
    let cpa = ctx + 32 * u64::from(DEV.devfn());
    let cq: [u64; 4] = core::array::from_fn(|i| m.read64(cpa + 8 * i as u64));
    let ce = ContextEntry::decode(cq);
    assert_eq!(
        cq,
        [ce.pasid_dir | (2 << 9) | (1 << 3) | 1, 0, 0, 0],
        "SM context entry (§9.4)"
    );
    let dir0 = m.read64(ce.pasid_dir);
    let ptab = pasid_dir_entry::decode(dir0).unwrap();
    assert_eq!(dir0, ptab | 1);
    let pe: [u64; 8] = core::array::from_fn(|i| m.read64(ptab + 64 + 8 * i as u64));
    let pml4 = u.page_table_root(a).unwrap();
    assert_eq!(
        pe,
        [0x49, u64::from(did), pml4, 0, 0, 0, 0, 0],
        "first-stage PASID entry (§9.6)"
    );
    // RID_PASID entry: valid first-stage entry of the blocked domain.
    let rid: [u64; 8] = core::array::from_fn(|i| m.read64(ptab + 8 * i as u64));
    assert_eq!(rid[0], 0x49);
    assert_ne!(rid[1], u64::from(did));
    // Non-leaf FS entries are pa|P|RW|US; leaves have U/S too.
    let l4 = m.read64(pml4);
    assert_eq!(l4 & 0xfff, 0x7);

    let t = u.hardware_walk(DEV, Some(1), 0x10_1234, true).unwrap();
    assert_eq!(
        (t.phys, t.perm, t.page_size),
        (0x2_0000_1234, Perm::RW, 4096)
    );
    let t = u.hardware_walk(DEV, Some(1), 0x4020_0008, false).unwrap();
    assert_eq!((t.phys, t.page_size), (0x3_0020_0008, PAGE_2M));
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0x4000_0000, true),
        Err(FaultReason::SmWriteNotPermitted)
    );
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0x20_0000, false),
        Err(FaultReason::FsEntryNotPresent)
    );
    assert_eq!(
        u.hardware_walk(DEV, None, 0x10_0000, false),
        Err(FaultReason::FsEntryNotPresent),
        "RID_PASID blocked"
    );
    assert_eq!(
        u.hardware_walk(Bdf::new(0, 4, 0), Some(1), 0x10_0000, false),
        Err(FaultReason::ContextEntryNotPresent)
    );
    assert_eq!(
        u.hardware_walk(Bdf::new(1, 0, 0), Some(1), 0x10_0000, false),
        Err(FaultReason::RootEntryNotPresent)
    );
    assert_eq!(u.translate(a, 0x10_2000).unwrap().phys, 0x2_0000_2000);

    // Requests without PASID through the same space.
    u.attach_rid_pasid(DEV, a).unwrap();
    assert_eq!(
        u.hardware_walk(DEV, None, 0x10_0000, false).unwrap().phys,
        0x2_0000_0000
    );
    r.clear_log();
    // Unmap one page: page-selective PIOTLB for each attached PASID slot (0 and 1), one wait.
    assert_eq!(u.unmap(a, 0x10_1000, 0x1000).unwrap(), 0x1000);
    assert_eq!(
        descs(&r),
        vec![
            InvDesc::piotlb_page(did, 0, 0x10_1000, 0, false).0,
            InvDesc::piotlb_page(did, 1, 0x10_1000, 0, false).0,
            WAIT
        ]
    );
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0x10_1000, false),
        Err(FaultReason::FsEntryNotPresent)
    );
    assert!(u.hardware_walk(DEV, Some(1), 0x10_2000, false).is_ok());
    // Unmapping part of a 2 MiB leaf splits it.
    r.clear_log();
    assert_eq!(u.unmap(a, 0x4000_1000, 0x1000).unwrap(), 0x1000);
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0x4000_2000, false)
            .unwrap()
            .page_size,
        4096
    );
    assert!(u.hardware_walk(DEV, Some(1), 0x4000_1000, false).is_err());
    // A large range flushes the whole PASID instead of many page descriptors.
    r.clear_log();
    u.unmap(a, 0x4000_0000, 2 * PAGE_2M).unwrap();
    assert_eq!(
        descs(&r),
        vec![
            InvDesc::piotlb_page(did, 0, 0x4000_0000, 10, false).0,
            InvDesc::piotlb_page(did, 1, 0x4000_0000, 10, false).0,
            WAIT
        ]
    );
    r.clear_log();
    u.unmap(a, 0x1000, 0x7fff_0000).unwrap();
    assert_eq!(
        descs(&r),
        vec![
            InvDesc::piotlb_pasid(did, 0).0,
            InvDesc::piotlb_pasid(did, 1).0,
            WAIT
        ]
    );
}

#[test]
fn revoke_zeroes_entries_and_later_dma_faults() {
    let (mut u, r, m) = fs_unit();
    let baseline = m.live_blocks();
    let a = u
        .create_address_space(SpaceKind::Translated, Some(7))
        .unwrap();
    let b = u.create_address_space(SpaceKind::Translated, None).unwrap();
    assert_eq!(b, AddressSpaceId(1));
    u.map(a, 0, 0x5000_0000, 0x1000, Perm::RW).unwrap();
    u.map(b, 0, 0x6000_0000, 0x1000, Perm::RW).unwrap();
    u.attach(DEV, a).unwrap();
    u.attach(DEV, b).unwrap();
    u.attach_rid_pasid(DEV, a).unwrap();
    // Same IOVA, different memory per PASID.
    assert_eq!(
        u.hardware_walk(DEV, Some(7), 0, false).unwrap().phys,
        0x5000_0000
    );
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0, false).unwrap().phys,
        0x6000_0000
    );
    let did = u.domain_id(a).unwrap();
    r.clear_log();
    u.revoke(a).unwrap();
    let sid = DEV.sid();
    let cc = InvDesc::context_cache(CcGranularity::Device { sid, fm: 0 }).0;
    let ex = descs(&r);
    // Slot 0 (RID_PASID): removed + flushed, then the blocked default installed + flushed.
    // Slot 7: removed + flushed.
    assert_eq!(
        &ex[..4],
        &[
            InvDesc::pasid_cache_pasid(did, 0).0,
            InvDesc::piotlb_pasid(did, 0).0,
            cc,
            WAIT
        ]
    );
    assert_eq!(
        &ex[8..],
        &[
            InvDesc::pasid_cache_pasid(did, 7).0,
            InvDesc::piotlb_pasid(did, 7).0,
            cc,
            WAIT
        ]
    );
    assert_eq!(
        u.hardware_walk(DEV, Some(7), 0, false),
        Err(FaultReason::InvalidPasidEntry)
    );
    assert_eq!(
        u.hardware_walk(DEV, None, 0, false),
        Err(FaultReason::FsEntryNotPresent)
    );
    assert_eq!(
        u.hardware_walk(DEV, Some(1), 0, false).unwrap().phys,
        0x6000_0000,
        "other spaces untouched"
    );
    assert_eq!(
        u.map(a, 0x1000, 0x5000_1000, 0x1000, Perm::RW),
        Err(VtdError::AddressSpaceRevoked { pasid: 7 })
    );
    assert_eq!(
        u.attach(DEV, a),
        Err(VtdError::AddressSpaceRevoked { pasid: 7 })
    );
    assert!(u.translate(a, 0).is_none());
    u.destroy_address_space(a).unwrap();
    u.destroy_address_space(b).unwrap();
    // Only the device's tables (context table, PASID directory, PASID table) remain.
    assert_eq!(m.live_blocks(), baseline + 3);
    assert_eq!(
        u.create_address_space(SpaceKind::Translated, Some(7))
            .unwrap(),
        AddressSpaceId(7)
    );
}

#[test]
fn mapping_validation() {
    let (mut u, _, _) = fs_unit();
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    assert_eq!(
        u.map(a, 0xfee0_0000, 0x1000, 0x1000, Perm::RW),
        Err(VtdError::InterruptWindow { addr: 0xfee0_0000 })
    );
    assert_eq!(
        u.map(a, 0xfed0_0000, 0x1000, 0x20_0000, Perm::RW),
        Err(VtdError::InterruptWindow { addr: 0xfed0_0000 })
    );
    assert_eq!(
        u.map(a, 0x1000, 0xfeef_f000, 0x1000, Perm::RW),
        Err(VtdError::InterruptWindow { addr: 0xfeef_f000 })
    );
    assert!(matches!(
        u.map(a, 0x1001, 0, 0x1000, Perm::RW),
        Err(VtdError::BadRange { .. })
    ));
    assert!(matches!(
        u.map(a, 0x1000, 0, 0, Perm::RW),
        Err(VtdError::BadRange { .. })
    ));
    assert!(matches!(
        u.map(a, u64::MAX - 0xfff, 0, 0x2000, Perm::RW),
        Err(VtdError::BadRange { .. })
    ));
    assert!(matches!(
        u.map(a, 1 << 47, 0, 0x1000, Perm::RW),
        Err(VtdError::IovaTooWide { .. })
    ));
    assert!(matches!(
        u.map(a, 0, 1 << 48, 0x1000, Perm::RW),
        Err(VtdError::PhysTooWide { .. })
    ));
    u.map(a, 0x3000, 0x9000, 0x1000, Perm::RW).unwrap();
    // Overlap: the second map fails and rolls back its first page.
    assert_eq!(
        u.map(a, 0x2000, 0x1_0000, 0x2000, Perm::RW),
        Err(VtdError::AlreadyMapped { iova: 0x3000 })
    );
    assert!(u.translate(a, 0x2000).is_none());
    assert_eq!(u.translate(a, 0x3000).unwrap().phys, 0x9000);
    assert_eq!(
        u.create_address_space(SpaceKind::Translated, Some(0)),
        Err(VtdError::PasidOutOfRange { pasid: 0 })
    );
    assert_eq!(
        u.create_address_space(SpaceKind::Translated, Some(1 << 15)),
        Err(VtdError::PasidOutOfRange { pasid: 1 << 15 })
    );
    assert_eq!(
        u.create_address_space(SpaceKind::Translated, Some(1)),
        Err(VtdError::PasidInUse { pasid: 1 })
    );
    let pt = u
        .create_address_space(SpaceKind::PassThrough, None)
        .unwrap();
    assert_eq!(
        u.map(pt, 0, 0, 0x1000, Perm::RW),
        Err(VtdError::NoPageTable { pasid: pt.0 })
    );
    assert_eq!(
        u.detach(DEV, a),
        Err(VtdError::NotAttached {
            sid: DEV.sid(),
            pasid: a.0
        })
    );
}

#[test]
fn pass_through_and_second_stage_entries() {
    let cfg = Config {
        rid_default: RidDefault::PassThrough,
        ..Config::default()
    };
    let (mut u, r, m) = unit_with(QEMU_ECAP_SS, QEMU_CAP, cfg);
    u.init().unwrap();
    assert_eq!(u.stage(), StageKind::SecondStage);
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    let did = u.domain_id(a).unwrap();
    u.map(a, 0x20_0000, 0x40_0000, PAGE_2M, Perm::RW).unwrap();
    u.map(
        a,
        0x1000,
        0x8000,
        0x1000,
        Perm {
            read: false,
            write: true,
        },
    )
    .unwrap();
    u.attach(DEV, a).unwrap();
    // RID_PASID default is pass-through: identity.
    assert_eq!(
        u.hardware_walk(DEV, None, 0x1234_5000, true).unwrap().phys,
        0x1234_5000
    );
    let t = u.hardware_walk(DEV, Some(1), 0x20_0010, true).unwrap();
    assert_eq!((t.phys, t.page_size), (0x40_0010, PAGE_2M));
    let root = u.root_table().unwrap();
    let ctx = RootEntry::decode([m.read64(root), 0]).lower.unwrap();
    let ce = ContextEntry::decode(core::array::from_fn(|i| {
        m.read64(ctx + 32 * u64::from(DEV.devfn()) + 8 * i as u64)
    }));
    let ptab = pasid_dir_entry::decode(m.read64(ce.pasid_dir)).unwrap();
    let ss_root = u.page_table_root(a).unwrap();
    assert_eq!(
        m.read64(ptab + 64),
        ss_root | 0x89,
        "second-stage PASID entry (§9.6)"
    );
    assert_eq!(m.read64(ptab + 64 + 8), u64::from(did));
    assert_eq!(
        m.read64(ptab) & 0xfff,
        0x109,
        "pass-through PASID entry (§9.6)"
    );
    assert_eq!(m.read64(ss_root) & 0xfff, 0x3, "SS non-leaf = pa | R | W");
    r.clear_log();
    u.unmap(a, 0x1000, 0x1000).unwrap();
    // SS: IOTLB page-selective per domain (PIOTLB would not touch SS entries).
    assert_eq!(
        descs(&r),
        vec![InvDesc::iotlb_page(did, 0x1000, 0, false).0, WAIT]
    );
    r.clear_log();
    u.detach(DEV, a).unwrap();
    let cc = InvDesc::context_cache(CcGranularity::Device {
        sid: DEV.sid(),
        fm: 0,
    })
    .0;
    assert_eq!(
        descs(&r),
        vec![
            InvDesc::pasid_cache_pasid(did, 1).0,
            InvDesc::iotlb_domain(did).0,
            cc,
            WAIT
        ]
    );
}

#[test]
fn caching_mode_flushes_new_mappings() {
    let (mut u, r, _) = unit_with(QEMU_ECAP_FS, QEMU_CAP | Cap::CM.bits(), Config::default());
    u.init().unwrap();
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    u.attach(DEV, a).unwrap();
    let did = u.domain_id(a).unwrap();
    r.clear_log();
    u.map(a, 0x8000, 0x8000, 0x4000, Perm::RW).unwrap();
    assert_eq!(
        descs(&r),
        vec![InvDesc::piotlb_page(did, 1, 0x8000, 2, false).0, WAIT]
    );
}

#[test]
fn rejected_descriptor_is_recovered_and_reported() {
    let (mut u, r, _) = fs_unit();
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    u.map(a, 0, 0x1_0000, 0x1000, Perm::RW).unwrap();
    u.attach(DEV, a).unwrap();
    r.clear_log();
    r.inner.borrow_mut().reject_once.push(6);
    let did = u.domain_id(a).unwrap();
    let e = u.unmap(a, 0, 0x1000).unwrap_err();
    assert_eq!(
        e,
        VtdError::DescriptorRejected {
            qw0: InvDesc::piotlb_page(did, 1, 0, 0, false).0[0],
            qw1: 0
        }
    );
    assert_eq!(r.inner.borrow().fsts & Fsts::IQE.bits(), 0, "IQE cleared");
    // The bad slot was replaced by a wait (different token), then the real wait ran.
    let ex = r.executed();
    assert_eq!(ex.len(), 2);
    assert!(ex.iter().all(|d| d[0] & 0xf == 5));
    // The queue keeps working.
    r.clear_log();
    u.invalidate(&[InvDesc::iotlb_global()]).unwrap();
    assert_eq!(descs(&r), vec![[0x12, 0, 0, 0], WAIT]);
}

#[test]
fn faults_are_decoded_counted_and_cleared() {
    let (mut u, r, _) = fs_unit();
    u.configure_fault_event(2, 0x40).unwrap();
    let log = r.inner.borrow().log.clone();
    assert!(log.contains(&Access::W32(reg::off::FEDATA, 0x40)));
    assert!(log.contains(&Access::W32(reg::off::FEADDR, 0xfee0_2000)));
    assert_eq!(
        log.iter()
            .rev()
            .find(|a| matches!(a, Access::W32(reg::off::FECTL, _))),
        Some(&Access::W32(reg::off::FECTL, 0))
    );
    assert_eq!(
        u.configure_fault_event(256, 0x40),
        Err(VtdError::ApicIdTooWide { apic_id: 256 })
    );

    let rec = FaultRecord {
        address: 0x7000,
        interrupt_index: None,
        source_id: DEV.sid(),
        pasid: Some(5),
        code: 0x71,
        reason: FaultReason::FsEntryNotPresent,
        is_read: true,
        address_type: 0,
    };
    let (lo, hi) = rec.encode();
    r.inject_fault(lo, hi);
    r.clear_log();
    let b = u.handle_faults();
    assert_eq!(b.records, vec![rec]);
    assert!(!b.overflow);
    assert!(
        r.inner
            .borrow()
            .log
            .contains(&Access::W32(0x22c, 0x8000_0000)),
        "F cleared with a 32-bit write at FRCD+0xC"
    );
    assert_eq!(r.inner.borrow().frcd[0].1 >> 63, 0);
    // Two faults before the handler runs: QEMU has one FRCD, the second sets PFO.
    let ir = FaultRecord::decode(9 << 48, (1 << 63) | (0x26 << 32) | 0x10).unwrap();
    let (lo2, hi2) = ir.encode();
    r.inject_fault(lo2, hi2);
    r.inject_fault(lo, hi);
    let b = u.handle_faults();
    assert_eq!(b.records.len(), 1);
    assert_eq!(b.records[0].interrupt_index, Some(9));
    assert_eq!(b.records[0].reason.name(), "IR source-id check failed");
    assert!(b.overflow);
    assert_eq!(r.inner.borrow().fsts & Fsts::PFO.bits(), 0, "PFO cleared");
    let c = u.fault_counters();
    assert_eq!(c.total, 2);
    assert_eq!(c.overflows, 1);
    assert_eq!(c.per_source.get(&DEV.sid()), Some(&1));
    assert_eq!(c.per_source.get(&0x10), Some(&1));
    assert_eq!(c.per_pasid.get(&5), Some(&1));
    assert_eq!(c.per_reason.get(&0x71), Some(&1));
    // Nothing pending: nothing read beyond FSTS.
    assert!(u.handle_faults().records.is_empty());
}

#[test]
fn interrupt_remapping_entries() {
    let (mut u, r, m) = fs_unit();
    let h = u
        .alloc_irte(
            3,
            0x41,
            SourceValidation::RequesterId { sid: 0x0018, sq: 0 },
            1,
        )
        .unwrap();
    assert_eq!(h, IrteHandle { index: 0, count: 1 });
    let irta = *r.inner.borrow().values.get(&reg::off::IRTA).unwrap() & !0xfff;
    assert_eq!(
        [m.read64(irta), m.read64(irta + 8)],
        [1 | (0x41 << 16) | (3 << 40), 0x18 | (1 << 18)],
        "IRTE (§9.9)"
    );
    assert_eq!(descs(&r), vec![InvDesc::iec_index(0, 0).0, WAIT]);
    assert_eq!(u.msi_message(h).unwrap().address_lo, 0xfee0_0018);
    let h2 = u.alloc_irte(0, 0x42, SourceValidation::None, 1).unwrap();
    assert_eq!(
        u.msi_message(h2).unwrap().address_lo,
        0xfee0_0018 | (1 << 5)
    );
    assert_eq!(
        u.ioapic_rte(h2, true, false).unwrap(),
        0x42 | (1 << 15) | (1 << 48) | (1 << 49)
    );
    // Multi-message block: 4 entries aligned to 4.
    let h4 = u
        .alloc_irte(
            1,
            0x50,
            SourceValidation::RequesterId { sid: 0x20, sq: 0 },
            4,
        )
        .unwrap();
    assert_eq!(h4, IrteHandle { index: 4, count: 4 });
    r.clear_log();
    u.retarget_irte(h, 5, 0x61).unwrap();
    assert_eq!(m.read64(irta), 1 | (0x61 << 16) | (5 << 40));
    assert_eq!(m.read64(irta + 8), 0x18 | (1 << 18), "SID check kept");
    assert_eq!(descs(&r), vec![InvDesc::iec_index(0, 0).0, WAIT]);
    u.set_irte_source(h, SourceValidation::RequesterId { sid: 0x0019, sq: 0 })
        .unwrap();
    assert_eq!(
        u.read_irte(0).unwrap().svt,
        SourceValidation::RequesterId { sid: 0x19, sq: 0 }
    );
    assert!(u.read_irte(0).unwrap().present);
    u.free_irte(h).unwrap();
    assert_eq!([m.read64(irta), m.read64(irta + 8)], [0, 0]);
    assert_eq!(u.msi_message(h), Err(VtdError::BadIrteHandle { handle: 0 }));
    assert_eq!(
        u.alloc_irte(256, 0x41, SourceValidation::None, 1),
        Err(VtdError::ApicIdTooWide { apic_id: 256 })
    );
    assert_eq!(
        u.alloc_irte(1, 3, SourceValidation::None, 1),
        Err(VtdError::BadVector { vector: 3 })
    );
    assert_eq!(
        u.alloc_irte(1, 0x41, SourceValidation::None, 3),
        Err(VtdError::BadCount { count: 3 })
    );
    // Exhaustion: 256 entries.
    let mut n = 0;
    while u.alloc_irte(0, 0x30, SourceValidation::None, 1).is_ok() {
        n += 1;
    }
    assert_eq!(n, 256 - 1 - 4);
}

fn pi_unit() -> (Unit, FakeRegs, FakeMem, u64) {
    let (mut u, r, m) = unit_with(QEMU_ECAP_FS, QEMU_CAP | Cap::PI.bits(), Config::default());
    u.init().unwrap();
    r.clear_log();
    let irta = *r.inner.borrow().values.get(&reg::off::IRTA).unwrap() & !0xfff;
    (u, r, m, irta)
}

fn entry(m: &FakeMem, irta: u64, h: IrteHandle) -> [u64; 2] {
    let pa = irta + 16 * u64::from(h.index);
    [m.read64(pa), m.read64(pa + 8)]
}

/// Records every state of entry `h` the unit could read from now on.
fn watch(m: &FakeMem, irta: u64, h: IrteHandle) {
    let mut i = m.0.borrow_mut();
    i.watch = Some(irta + 16 * u64::from(h.index));
    i.watched.clear();
}

fn watched(m: &FakeMem) -> Vec<[u64; 2]> {
    m.0.borrow().watched.clone()
}

#[test]
fn posted_irtes_are_written_whole_then_invalidated() {
    let (mut u, r, m, irta) = pi_unit();
    assert!(u.posted_interrupts());
    let sv = SourceValidation::RequesterId { sid: 0x0018, sq: 0 };
    const PID_A: u64 = 0x7fff_ff40;
    const PID_B: u64 = 0x0000_0001_2345_6780;
    // A new posted entry: qword 1 first, then qword 0 with P; index-selective IEC + wait.
    let h = u.alloc_posted_irte(PID_A, 0x21, false, sv).unwrap();
    let want = PostedIrte::new(PID_A, 0x21, false, sv).encode();
    assert_eq!(entry(&m, irta, h), want);
    assert_eq!(
        want,
        [
            1 | (1 << 15) | (0x21 << 16) | (PID_A << 32),
            0x18 | (1 << 18)
        ]
    );
    assert_eq!(descs(&r), vec![InvDesc::iec_index(h.index, 0).0, WAIT]);
    assert_eq!(
        u.read_irte_format(h.index).unwrap(),
        IrteFormat::Posted(PostedIrte::new(PID_A, 0x21, false, sv))
    );
    assert_eq!(u.msi_message(h).unwrap().address_lo, 0xfee0_0018);

    // Retarget above 4 GiB: both qwords change → one 128-bit exchange, no other state.
    r.clear_log();
    watch(&m, irta, h);
    u.set_irte_posted(h, PID_B, 0xe0, true).unwrap();
    let b = PostedIrte::new(PID_B, 0xe0, true, sv).encode();
    assert_ne!(b[1], want[1]);
    assert_eq!(watched(&m), vec![b], "one store, nothing torn");
    assert_eq!(m.0.borrow().cmpxchg128, 1);
    assert_eq!(descs(&r), vec![InvDesc::iec_index(h.index, 0).0, WAIT]);

    // Back below 4 GiB: again both qwords.
    watch(&m, irta, h);
    u.set_irte_posted(h, PID_A, 0x21, false).unwrap();
    assert_eq!(watched(&m), vec![want]);
    assert_eq!(m.0.borrow().cmpxchg128, 2);

    // Posted → remapped with qword 1 unchanged: one 64-bit store.
    watch(&m, irta, h);
    u.set_irte_remapped(h, 3, 0x41).unwrap();
    let rem = Irte::fixed(0x41, 3, false, sv).encode();
    assert_eq!(watched(&m), vec![rem]);
    assert_eq!(m.0.borrow().cmpxchg128, 2);
    assert_eq!(
        u.read_irte_format(h.index).unwrap(),
        IrteFormat::Remapped(Irte::fixed(0x41, 3, false, sv))
    );
    // Remapped → posted above 4 GiB: one 128-bit exchange.
    watch(&m, irta, h);
    u.set_irte_posted(h, PID_B, 0xe0, true).unwrap();
    assert_eq!(watched(&m), vec![b]);
    // Posted above 4 GiB → remapped: one 128-bit exchange clears PDAH.
    watch(&m, irta, h);
    u.set_irte_remapped(h, 3, 0x41).unwrap();
    assert_eq!(watched(&m), vec![rem]);
    assert_eq!(m.0.borrow().cmpxchg128, 4);

    // The source check of a posted entry changes without touching its other fields.
    u.set_irte_posted(h, PID_B, 0xe0, true).unwrap();
    let sv2 = SourceValidation::RequesterId { sid: 0x0019, sq: 0 };
    u.set_irte_source(h, sv2).unwrap();
    assert_eq!(
        u.read_irte_format(h.index).unwrap(),
        IrteFormat::Posted(PostedIrte::new(PID_B, 0xe0, true, sv2))
    );
    // A remapped-only operation refuses a posted entry instead of corrupting it.
    assert_eq!(
        u.retarget_irte(h, 1, 0x30),
        Err(VtdError::WrongIrteFormat { handle: h.index })
    );
    // Freeing works for both formats.
    u.free_irte(h).unwrap();
    assert_eq!(entry(&m, irta, h), [0, 0]);
}

#[test]
fn posted_irtes_need_cap_pi_and_a_valid_descriptor() {
    let (mut u, _, _) = fs_unit();
    let sv = SourceValidation::None;
    assert!(!u.posted_interrupts());
    assert_eq!(
        u.alloc_posted_irte(0x1000, 0x21, false, sv),
        Err(VtdError::Missing(Requirement::PostedInterrupts))
    );
    let h = u.alloc_irte(0, 0x41, sv, 1).unwrap();
    assert_eq!(
        u.set_irte_posted(h, 0x1000, 0x21, false),
        Err(VtdError::Missing(Requirement::PostedInterrupts))
    );
    let (mut u, _, _, _) = pi_unit();
    for bad in [0, 0x1020, 0x1001, 1 << 48] {
        assert_eq!(
            u.alloc_posted_irte(bad, 0x21, false, sv),
            Err(VtdError::BadPostedDescriptor { addr: bad }),
            "{bad:#x}"
        );
    }
    let h4 = u.alloc_irte(0, 0x41, sv, 4).unwrap();
    assert_eq!(
        u.set_irte_posted(h4, 0x1000, 0x21, false),
        Err(VtdError::BadCount { count: 4 })
    );
    // Every PIR bit can be named (VV is an index, not an APIC vector).
    for v in [0u8, 15, 255] {
        let h = u.alloc_posted_irte(0x1040, v, false, sv).unwrap();
        assert!(matches!(
            u.read_irte_format(h.index).unwrap(),
            IrteFormat::Posted(PostedIrte { vector, .. }) if vector == v
        ));
    }
    // A remapped destination must still fit (xAPIC IRTEs here).
    let h = u.alloc_posted_irte(0x1040, 1, false, sv).unwrap();
    assert_eq!(
        u.set_irte_remapped(h, 256, 0x41),
        Err(VtdError::ApicIdTooWide { apic_id: 256 })
    );
    assert!(matches!(
        u.read_irte_format(h.index).unwrap(),
        IrteFormat::Posted(_)
    ));
}

#[test]
fn x2apic_irtes_when_eim() {
    let cfg = Config {
        x2apic: true,
        ..Config::default()
    };
    let (mut u, r, m) = unit_with(QEMU_ECAP_FS | Ecap::EIM.bits(), QEMU_CAP, cfg);
    u.init().unwrap();
    let irta = *r.inner.borrow().values.get(&reg::off::IRTA).unwrap();
    assert_eq!(irta & 0xfff, (1 << 11) | 7);
    let h = u
        .alloc_irte(
            0x1_0003,
            0x41,
            SourceValidation::RequesterId { sid: 0x18, sq: 0 },
            1,
        )
        .unwrap();
    assert_eq!(
        m.read64((irta & !0xfff) + u64::from(h.index) * 16),
        1 | (0x41 << 16) | (0x1_0003 << 32)
    );
    // Without EIM the request falls back to xAPIC destinations.
    let (mut u, _, _) = unit_with(QEMU_ECAP_FS, QEMU_CAP, cfg);
    u.init().unwrap();
    assert!(!u.x2apic_irtes());
}

#[test]
fn dma_allocation_failures_are_errors() {
    for n in 0..8 {
        let (mut u, _, m) = unit_with(QEMU_ECAP_FS, QEMU_CAP, Config::default());
        m.0.borrow_mut().fail_after = Some(n);
        let r = u.init().and_then(|()| {
            let a = u.create_address_space(SpaceKind::Translated, None)?;
            u.map(a, 0, 0x1000, 0x1000, Perm::RW)?;
            u.attach(DEV, a)
        });
        assert_eq!(r, Err(VtdError::OutOfDmaMemory), "after {n} allocations");
    }
}

#[test]
fn page_table_split_and_chunks() {
    let mut m = FakeMem::new();
    let mut pt = IoPageTable::new(&mut m, StageKind::FirstStage, 4, 48, true).unwrap();
    pt.map(&mut m, 48, 0, 0x20_0000, 4 * PAGE_2M, Perm::RW)
        .unwrap();
    assert_eq!(pt.table_pages(), 3, "PML4, PDPT, PD: four 2 MiB leaves");
    let mut freed = Vec::new();
    assert_eq!(pt.unmap(&mut m, 48, 0x3000, 0x2000, &mut freed), Ok(0x2000));
    assert_eq!(pt.table_pages(), 4, "the 2 MiB leaf was split into a PT");
    assert!(freed.is_empty());
    assert_eq!(pt.translate(&m, 0x2000).unwrap().phys, 0x20_2000);
    assert!(pt.translate(&m, 0x4000).is_none());
    assert_eq!(pt.translate(&m, 0x5000).unwrap().page_size, 4096);
    assert_eq!(pt.translate(&m, 0x20_0000).unwrap().page_size, PAGE_2M);
    // Unmapping the rest of it empties the PT whole: it is handed back for freeing.
    pt.unmap(&mut m, 48, 0, PAGE_2M, &mut freed).unwrap();
    assert_eq!(freed.len(), 1);
    for t in freed.drain(..) {
        m.free(t, 4096);
    }
    // So a 2 MiB leaf fits there again.
    pt.map(&mut m, 48, 0, 0x80_0000, PAGE_2M, Perm::RO).unwrap();
    assert_eq!(pt.translate(&m, 0x1000).unwrap().page_size, PAGE_2M);
    // A PT emptied by unmaps that each covered it in part stays and forces 4 KiB pages.
    pt.unmap(&mut m, 48, PAGE_2M + 0x1000, 0x1000, &mut freed)
        .unwrap();
    pt.unmap(&mut m, 48, PAGE_2M, 0x1000, &mut freed).unwrap();
    pt.unmap(&mut m, 48, PAGE_2M + 0x2000, PAGE_2M - 0x2000, &mut freed)
        .unwrap();
    assert!(freed.is_empty());
    assert!(pt.translate(&m, PAGE_2M + 0x3000).is_none());
    pt.map(&mut m, 48, PAGE_2M, 0x80_0000, PAGE_2M, Perm::RO)
        .unwrap();
    assert_eq!(pt.translate(&m, PAGE_2M + 0x1000).unwrap().page_size, 4096);
    assert_eq!(pt.unmap(&mut m, 48, 0x100_0000, 0x1000, &mut freed), Ok(0));
    // Without memory to split a 2 MiB leaf, all of it is unmapped (the safe side).
    m.0.borrow_mut().fail_after = Some(0);
    assert_eq!(
        pt.unmap(&mut m, 48, 2 * PAGE_2M + 0x1000, 0x1000, &mut freed),
        Ok(PAGE_2M)
    );
    assert!(pt.translate(&m, 2 * PAGE_2M).is_none());
    assert!(pt.translate(&m, 3 * PAGE_2M).is_some());
    m.0.borrow_mut().fail_after = None;
    pt.free(&mut m);
    assert_eq!(m.live_blocks(), 0);
    assert_eq!(
        invalidation_chunks(0x1000, 0x3000, 18, 16).unwrap(),
        vec![(0x1000, 0), (0x2000, 1)]
    );
    assert_eq!(
        invalidation_chunks(0, 0x40_0000, 18, 16).unwrap(),
        vec![(0, 10)]
    );
    assert_eq!(invalidation_chunks(0, 0x40_0000, 2, 16), None);
}

#[test]
fn any_address_width_is_handled_without_overflow() {
    // MGAW is a 6-bit field (+1): widths up to 64 come from hardware, and garbage beyond.
    for bits in [0u8, 1, 47, 48, 63, 64, 65, 255] {
        let mut m = FakeMem::new();
        match IoPageTable::new(&mut m, StageKind::FirstStage, 4, bits, true) {
            Ok(mut pt) => {
                assert!(bits > 32, "tables at 4 GiB+ are beyond {bits} bits");
                let r = pt.map(&mut m, bits, 0x1000, !0xfff_ffff_u64, 0x1000, Perm::RW);
                if bits >= 64 {
                    assert_eq!(
                        r,
                        Err(VtdError::PhysTooWide {
                            phys: !0xfff_ffff | 0xfff
                        })
                    );
                } else {
                    assert!(
                        matches!(r, Err(VtdError::PhysTooWide { .. })),
                        "{bits}: {r:?}"
                    );
                }
                pt.map(&mut m, bits, 0x1000, 0x2000, 0x1000, Perm::RW)
                    .unwrap();
                pt.free(&mut m);
            }
            Err(e) => {
                assert!(bits <= 32, "{bits}: {e:?}");
                assert!(matches!(e, VtdError::BadDmaBlock { .. }), "{bits}: {e:?}");
            }
        }
    }
}

#[test]
fn setup_leaves_translation_off_until_devices_have_context_entries() {
    let cfg = Config {
        rid_default: RidDefault::PassThrough,
        ..Config::default()
    };
    let (mut u, r, m) = unit_with(QEMU_ECAP_FS, QEMU_CAP, cfg);
    assert_eq!(
        u.enable_translation(),
        Err(VtdError::NotEnabled("root table"))
    );
    u.setup().unwrap();
    assert!(!Gsts::from_bits_retain(gsts(&r)).contains(Gsts::TES));
    u.prepare_device(DEV).unwrap();
    let root = u.root_table().unwrap();
    let ctx = RootEntry::decode([m.read64(root), m.read64(root + 8)])
        .lower
        .unwrap();
    assert_eq!(
        m.read64(ctx + 32 * u64::from(DEV.devfn())) & 1,
        1,
        "context entry present before TE"
    );
    u.enable_translation().unwrap();
    let writes = r.inner.borrow().gcmd_writes.clone();
    assert_eq!(
        *writes.last().unwrap() & (1 << 31),
        1 << 31,
        "TE is the last command"
    );
    assert!(
        writes[..writes.len() - 1]
            .iter()
            .all(|w| w & (1 << 31) == 0)
    );
    assert_eq!(
        u.hardware_walk(DEV, None, 0x4000, false).map(|t| t.phys),
        Ok(0x4000)
    );
}

#[test]
fn revoked_rid_pasid_is_blocked_not_pass_through() {
    let cfg = Config {
        rid_default: RidDefault::PassThrough,
        ..Config::default()
    };
    let (mut u, _r, _m) = unit_with(QEMU_ECAP_FS, QEMU_CAP, cfg);
    u.init().unwrap();
    u.prepare_device(DEV).unwrap();
    let walk = |u: &Unit| u.hardware_walk(DEV, None, 0x9000, true).map(|t| t.phys);
    assert_eq!(walk(&u), Ok(0x9000), "pass-through default");
    let a = u.create_address_space(SpaceKind::Translated, None).unwrap();
    u.map(a, 0x9000, 0x5000_0000, 0x1000, Perm::RW).unwrap();
    u.attach_rid_pasid(DEV, a).unwrap();
    assert_eq!(walk(&u), Ok(0x5000_0000));
    u.revoke(a).unwrap();
    assert_eq!(
        walk(&u),
        Err(FaultReason::FsEntryNotPresent),
        "blocked, not identity"
    );
    // A new attachment replaces the block; detaching it returns to the default.
    let b = u.create_address_space(SpaceKind::Translated, None).unwrap();
    u.map(b, 0x9000, 0x6000_0000, 0x1000, Perm::RW).unwrap();
    u.attach_rid_pasid(DEV, b).unwrap();
    assert_eq!(walk(&u), Ok(0x6000_0000));
    u.detach_rid_pasid(DEV, b).unwrap();
    assert_eq!(walk(&u), Ok(0x9000));
    // Destroying an attached space blocks too; reset_rid_pasid lifts it.
    u.attach_rid_pasid(DEV, b).unwrap();
    u.destroy_address_space(b).unwrap();
    assert_eq!(walk(&u), Err(FaultReason::FsEntryNotPresent));
    u.reset_rid_pasid(DEV).unwrap();
    assert_eq!(walk(&u), Ok(0x9000));
    u.reset_rid_pasid(DEV).unwrap();
    assert_eq!(walk(&u), Ok(0x9000), "idempotent");
    assert_eq!(
        u.detach_rid_pasid(DEV, a),
        Err(VtdError::NotAttached {
            sid: DEV.sid(),
            pasid: 0
        })
    );
}

#[test]
fn traced_walk_records_every_entry_read() {
    let (mut u, _r, m) = fs_unit();
    let a = u
        .create_address_space(SpaceKind::Translated, Some(5))
        .unwrap();
    u.map(a, 0x7000_3000, 0x1_2345_6000, 0x1000, Perm::RW)
        .unwrap();
    u.attach(DEV, a).unwrap();
    let mut t = WalkTrace::default();
    let r = u.hardware_walk_traced(DEV, Some(5), 0x7000_3abc, true, &mut t);
    assert_eq!(r.map(|x| x.phys), Ok(0x1_2345_6abc));
    assert_eq!(t.pasid, 5);
    assert_eq!(t.context_entry[0] & 1, 1);
    assert_eq!(
        t.pasid_entry,
        PasidEntry::first_stage(u.domain_id(a).unwrap(), u.page_table_root(a).unwrap()).encode()
    );
    let levels: Vec<u8> = t.paging.iter().map(|e| e.0).collect();
    assert_eq!(levels, vec![4, 3, 2, 1]);
    // Each entry sits at its table (the root, then the previous entry's address) + 8·index.
    let iova: u64 = 0x7000_3abc;
    let mut table = u.page_table_root(a).unwrap();
    for (level, at, v) in &t.paging {
        let index = (iova >> (12 + 9 * (u64::from(*level) - 1))) & 0x1ff;
        assert_eq!(*at, table + 8 * index, "level {level}");
        table = v & PTE_ADDR_MASK;
    }
    for (_, at, v) in &t.paging {
        assert_eq!(m.read64(*at), *v, "value read at {at:#x}");
        assert_eq!(v & 0x7, 0x7, "P|RW|US at every level");
    }
    assert_eq!(t.paging[3].2 & PTE_ADDR_MASK, 0x1_2345_6000);
    // A failing walk records what it read up to the fault.
    let mut t = WalkTrace::default();
    assert_eq!(
        u.hardware_walk_traced(DEV, Some(5), 0x7020_0000, false, &mut t),
        Err(FaultReason::FsEntryNotPresent)
    );
    assert_eq!(t.paging.last().map(|e| (e.0, e.2)), Some((2, 0)));
}

#[test]
fn ir_table_sizing_covers_every_message_up_to_the_architectural_maximum() {
    // The floor when the devices need less.
    let s = ir_table_size_for(300, 8192);
    assert_eq!((s.entries, s.order, s.capped), (8192, 12, false));
    // Four DSA devices' 2048 IMS entries plus their MSI-X and the system's messages.
    let s = ir_table_size_for(4 * 2048 + 4 * 9 + 256, 8192);
    assert_eq!((s.entries, s.order, s.capped), (16384, 13, false));
    // Exactly a power of two is not rounded up.
    assert_eq!(ir_table_size_for(32768, 256).entries, 32768);
    // The largest table, and beyond it: capped, said so.
    let s = ir_table_size_for(65536, 0);
    assert_eq!((s.entries, s.order, s.capped), (65536, 15, false));
    let s = ir_table_size_for(65537, 0);
    assert_eq!((s.entries, s.order, s.capped), (65536, 15, true));
    let s = ir_table_size_for(u64::MAX, 0);
    assert_eq!((s.entries, s.capped), (65536, true));
    // Never below 2 entries (IRTA.S = 0).
    assert_eq!(ir_table_size_for(0, 0).order, 0);
    // The order is what the unit accepts for its table.
    for m in [0u64, 1, 3, 255, 256, 257, 9000, 70000] {
        let s = ir_table_size_for(m, 0);
        assert_eq!(1u64 << (s.order + 1), u64::from(s.entries));
        assert!(s.order <= 15);
    }
}

#[test]
fn shared_space_entry_points_at_the_owners_root_and_is_invalidated_by_range() {
    let (mut u, r, m) = fs_unit();
    let root = 0x7654_3000;
    let a = u
        .create_address_space(SpaceKind::Shared { fs_root: root }, None)
        .unwrap();
    // Tables are the owner's: the unit neither maps nor unmaps in them.
    assert_eq!(
        u.map(a, 0x1000, 0x2000, 0x1000, Perm::RW),
        Err(VtdError::NoPageTable { pasid: a.0 })
    );
    assert_eq!(
        u.unmap(a, 0x1000, 0x1000),
        Err(VtdError::NoPageTable { pasid: a.0 })
    );
    u.attach(DEV, a).unwrap();
    let mut t = WalkTrace::default();
    let _ = u.hardware_walk_traced(DEV, Some(a.0), 0x4000_0000_0000, false, &mut t);
    assert_eq!(
        u.pasid_entry(DEV, a.0),
        Some(t.pasid_entry),
        "as the walk read it"
    );
    let e = PasidEntry::decode(&t.pasid_entry).expect("a PASID entry");
    assert_eq!(e.pgtt, Pgtt::FirstStage);
    assert_eq!(e.fs_root, root, "FSPTPTR = the owner's root");
    assert!(e.nxe && e.wpe && !e.sre, "NXE=1 WPE=1 SRE=0: {e:?}");
    let did = u.domain_id(a).unwrap();
    r.clear_log();
    u.invalidate_range(a, 0x4000_0000_0000, 0x2000).unwrap();
    let ex = descs(&r);
    assert_eq!(
        ex,
        [
            InvDesc::piotlb_page(did, a.0, 0x4000_0000_0000, 1, false).0,
            WAIT
        ]
    );
    assert_eq!(
        u.invalidate_range(a, u64::MAX, 2),
        Err(VtdError::BadRange {
            iova: u64::MAX,
            len: 2
        })
    );
    // Destroying clears the entry; the owner's root is never freed by the unit.
    let blocks = m.live_blocks();
    u.destroy_address_space(a).unwrap();
    assert_eq!(m.live_blocks(), blocks, "no unit memory was the owner's");
    assert_eq!(
        u.pasid_entry(DEV, a.0).map(|e| e[0]),
        Some(0),
        "the PASID entry is gone"
    );
}

#[test]
fn shared_spaces_need_a_first_stage_unit_and_an_aligned_root() {
    let (mut u, _r, _m) = unit_with(QEMU_ECAP_SS, QEMU_CAP, Config::default());
    u.init().unwrap();
    assert_eq!(
        u.create_address_space(SpaceKind::Shared { fs_root: 0x1000 }, None),
        Err(VtdError::Missing(Requirement::SharedFirstStage))
    );
    let (mut u, _r, _m) = fs_unit();
    for bad in [0, 0x1234, 1 << 60] {
        assert!(matches!(
            u.create_address_space(SpaceKind::Shared { fs_root: bad }, None),
            Err(VtdError::BadRange { .. })
        ));
    }
}
