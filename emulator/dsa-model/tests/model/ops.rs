//! Every opcode against a software reference, validation status codes, batches, faults.

use crate::common::*;
use dsa_model::Config;
use dsa_spec::crc::{CrcMode, crc32c_dsa};
use dsa_spec::dif::{DifFlags, Pi, guard};
use dsa_spec::regs::off;
use dsa_spec::status as st;
use dsa_spec::tables::WqMode;
use dsa_spec::{DescFlags, Descriptor, Opcode, SwErrFlags};

fn h1() -> H {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 32)]);
    h
}

#[test]
fn noop_and_cache_flush() {
    let h = h1();
    assert_eq!(h.run1(&desc(Opcode::Noop)).status, st::SUCCESS);
    let mut d = desc(Opcode::CacheFlush);
    d.addr2 = DST;
    d.size = 4096;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
}

#[test]
fn memmove_forward_and_overlapping() {
    let h = h1();
    let data = pattern(100_000, 1);
    h.put(None, SRC, &data);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC;
    d.addr2 = DST + 3;
    d.size = data.len() as u32;
    let cr = h.run1(&d);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 0));
    assert_eq!(h.get(None, DST + 3, data.len()), data);
    // dst > src, overlapping: backward copy, result 1.
    h.put(None, SRC, &data);
    d.addr1 = SRC;
    d.addr2 = SRC + 1000;
    let cr = h.run1(&d);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 1));
    assert_eq!(h.get(None, SRC + 1000, data.len()), data);
    // dst < src, overlapping: forward, result 0.
    h.put(None, SRC + 5000, &data);
    d.addr1 = SRC + 5000;
    d.addr2 = SRC + 10;
    let cr = h.run1(&d);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 0));
    assert_eq!(h.get(None, SRC + 10, data.len()), data);
    // Size 0 completes with nothing copied.
    d.size = 0;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
    // Without RCR a successful descriptor writes no CR.
    d.flags = DescFlags::CRAV;
    d.size = 16;
    assert_eq!(h.run1(&d).status, 0);
}

#[test]
fn overlap_unsupported_gives_0x16() {
    let h = H::new(Config {
        overlapping_copy: false,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 32)]);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC;
    d.addr2 = SRC + 8;
    d.size = 64;
    assert_eq!(h.run1(&d).status, st::OVERLAP);
}

#[test]
fn fill_and_compare_pattern() {
    let h = h1();
    let mut d = desc(Opcode::Fill);
    d.addr1 = 0x0807_0605_0403_0201;
    d.addr2 = DST + 5;
    d.size = 70_001;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
    let got = h.get(None, DST + 5, 70_001);
    assert!(got.iter().enumerate().all(|(k, &b)| b == (k % 8) as u8 + 1));
    let mut c = desc(Opcode::ComparePattern);
    c.addr1 = DST + 5;
    c.addr2 = 0x0807_0605_0403_0201;
    c.size = 70_001;
    let cr = h.run1(&c);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 0));
    h.put(None, DST + 5 + 12_345, &[0xEE]);
    let cr = h.run1(&c);
    assert_eq!(
        (cr.status, cr.result, cr.bytes_completed),
        (st::SUCCESS, 1, 12_345 & !7)
    );
    // Check Result: expected 0, got 1 → success with false predicate.
    c.flags |= DescFlags::CHECK_RESULT;
    assert_eq!(h.run1(&c).status, st::SUCCESS_FALSE_PREDICATE);
    c.set_expected_result(1);
    assert_eq!(h.run1(&c).status, st::SUCCESS);
}

#[test]
fn compare() {
    let h = h1();
    let data = pattern(50_000, 2);
    h.put(None, SRC, &data);
    h.put(None, DST, &data);
    let mut d = desc(Opcode::Compare);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = data.len() as u32;
    let cr = h.run1(&d);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 0));
    h.put(None, DST + 33_333, &[!data[33_333]]);
    let cr = h.run1(&d);
    assert_eq!(
        (cr.status, cr.result, cr.bytes_completed),
        (st::SUCCESS, 1, 33_333)
    );
    d.flags |= DescFlags::CHECK_RESULT;
    assert_eq!(h.run1(&d).status, st::SUCCESS_FALSE_PREDICATE);
    // Compare requires CRAV and RCR.
    d.flags = DescFlags::CRAV;
    let cr = h.run1(&d);
    assert_eq!(cr.status, st::INVALID_FLAGS);
    assert_eq!(cr.invalid_flags(), DescFlags::RCR.bits());
}

fn reference_delta(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut r = Vec::new();
    for (i, (x, y)) in a.chunks(8).zip(b.chunks(8)).enumerate() {
        if x != y {
            r.extend_from_slice(&(i as u16).to_le_bytes());
            r.extend_from_slice(y);
        }
    }
    r
}

#[test]
fn create_and_apply_delta() {
    let h = h1();
    let orig = pattern(8192, 3);
    let mut new = orig.clone();
    for i in [0usize, 17, 800, 4000, 8191] {
        new[i] ^= 0x5A;
    }
    h.put(None, SRC, &orig);
    h.put(None, DST, &new);
    let mut d = desc(Opcode::CreateDelta);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = 8192;
    d.set_delta_record_addr(AUX).set_max_delta_size(800);
    let cr = h.run1(&d);
    let want = reference_delta(&orig, &new);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 1));
    assert_eq!(cr.delta_record_size() as usize, want.len());
    assert_eq!(h.get(None, AUX, want.len()), want);
    // Identical buffers: result 0, empty record; Check Result with mask bit 0.
    let mut same = d;
    same.addr2 = SRC;
    same.flags |= DescFlags::CHECK_RESULT;
    same.set_expected_result_mask(0b001);
    let cr = h.run1(&same);
    assert_eq!(
        (cr.status, cr.result, cr.delta_record_size()),
        (st::SUCCESS, 0, 0)
    );
    same.set_expected_result_mask(0b010);
    assert_eq!(h.run1(&same).status, st::SUCCESS_FALSE_PREDICATE);
    // Overflow: only 8 entries fit in 80 bytes.
    let mut many = new.clone();
    for i in (0..8192).step_by(64) {
        many[i] ^= 1;
    }
    h.put(None, DST, &many);
    let mut o = d;
    o.set_max_delta_size(80);
    let cr = h.run1(&o);
    assert_eq!(
        (cr.status, cr.result, cr.delta_record_size()),
        (st::SUCCESS, 2, 80)
    );
    assert!(cr.bytes_completed > 0 && cr.bytes_completed < 8192);
    // Apply the first record to the original: yields `new`.
    h.put(None, AUX, &want);
    h.put(None, DST, &orig);
    let mut a = desc(Opcode::ApplyDelta);
    a.addr1 = AUX;
    a.addr2 = DST;
    a.size = 8192;
    a.set_delta_record_size(want.len() as u32);
    assert_eq!(h.run1(&a).status, st::SUCCESS);
    assert_eq!(h.get(None, DST, 8192), new);
    // Offsets not increasing / out of range.
    let mut bad = want.clone();
    bad[10..12].copy_from_slice(&0u16.to_le_bytes());
    h.put(None, AUX, &bad);
    let cr = h.run1(&a);
    assert_eq!(
        (cr.status, cr.bytes_completed),
        (st::DELTA_OFFSET_ORDER, 10)
    );
    bad[10..12].copy_from_slice(&1024u16.to_le_bytes());
    h.put(None, AUX, &bad);
    assert_eq!(h.run1(&a).status, st::DELTA_OFFSET_RANGE);
    // Parameter errors.
    let mut p = d;
    p.addr1 = SRC + 4;
    assert_eq!(h.run1(&p).status, st::MISALIGNED_ADDR);
    p = d;
    p.set_max_delta_size(75);
    assert_eq!(h.run1(&p).status, st::INVALID_DELTA_SIZE);
    p = d;
    p.size = 12;
    assert_eq!(h.run1(&p).status, st::INVALID_XFER_SIZE);
    let mut q = a;
    q.set_delta_record_size(15);
    assert_eq!(h.run1(&q).status, st::INVALID_DELTA_SIZE);
    q = a;
    q.addr2 = DST + 1;
    assert_eq!(h.run1(&q).status, st::MISALIGNED_ADDR);
}

#[test]
fn dualcast() {
    let h = h1();
    let data = pattern(9000, 4);
    h.put(None, SRC, &data);
    let mut d = desc(Opcode::Dualcast);
    d.addr1 = SRC;
    d.addr2 = DST + 0x100;
    d.set_dst2(AUX + 0x100);
    d.size = 9000;
    assert_eq!(h.run1(&d).status, st::SUCCESS);
    assert_eq!(h.get(None, DST + 0x100, 9000), data);
    assert_eq!(h.get(None, AUX + 0x100, 9000), data);
    d.set_dst2(AUX + 0x108);
    assert_eq!(h.run1(&d).status, st::DUALCAST_ALIGN);
    d.set_dst2(DST + 0x1100);
    assert_eq!(h.run1(&d).status, st::OVERLAP);
}

#[test]
fn crc_generation_all_modes_and_copy() {
    let h = h1();
    let data = pattern(300_000, 5);
    h.put(None, SRC, &data);
    for (f17, f18) in [(false, false), (true, true), (false, true), (true, false)] {
        let mut d = desc(Opcode::CrcGen);
        d.addr1 = SRC;
        d.size = data.len() as u32;
        d.set_crc_seed(0x1234_5678);
        if f17 {
            d.flags |= DescFlags::CRC_BYPASS_INV_REFL;
        }
        if f18 {
            d.flags |= DescFlags::CRC_BYPASS_DATA_REFL;
        }
        let cr = h.run1(&d);
        assert_eq!(cr.status, st::SUCCESS);
        let mode = CrcMode {
            bypass_inv_refl: f17,
            bypass_data_refl: f18,
        };
        assert_eq!(cr.crc(), crc32c_dsa(0x1234_5678, &data, mode), "{mode:?}");
    }
    // The reference's check value, seed read from memory.
    h.put(None, AUX, b"123456789");
    h.put(None, AUX + 64, &0u32.to_le_bytes());
    let mut d = desc(Opcode::CrcGen);
    d.addr1 = AUX;
    d.size = 9;
    d.flags |= DescFlags::CRC_SEED_FROM_MEM;
    d.set_crc_seed_addr(AUX + 64);
    assert_eq!(h.run1(&d).crc(), 0xE306_9283);
    d.set_crc_seed_addr(AUX + 66);
    assert_eq!(h.run1(&d).status, st::MISALIGNED_ADDR);
    // Copy with CRC.
    let mut c = desc(Opcode::CopyCrc);
    c.addr1 = SRC;
    c.addr2 = DST;
    c.size = data.len() as u32;
    let cr = h.run1(&c);
    assert_eq!(
        (cr.status, cr.crc()),
        (st::SUCCESS, crc32c_dsa(0, &data, CrcMode::default()))
    );
    assert_eq!(h.get(None, DST, data.len()), data);
    // CRC64 is not a DSA 1.0 feature.
    let mut x = desc(Opcode::CrcGen);
    x.flags |= DescFlags::CRC64;
    let cr = h.run1(&x);
    assert_eq!(
        (cr.status, cr.invalid_flags()),
        (st::INVALID_FLAGS, DescFlags::CRC64.bits())
    );
}

fn protect(data: &[u8], bs: usize, flags: DifFlags, ref0: u32, app: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in data.chunks(bs).enumerate() {
        out.extend_from_slice(b);
        out.extend_from_slice(
            &Pi {
                guard: guard(flags, b),
                app_tag: app,
                ref_tag: ref0.wrapping_add(i as u32),
            }
            .to_bytes(),
        );
    }
    out
}

#[test]
fn dif_insert_check_strip_update() {
    let h = h1();
    let data = pattern(512 * 9, 6);
    h.put(None, SRC, &data);
    let flags = DifFlags::INVERT_CRC_SEED; // block size 512
    // Insert: incrementing ref tag from 100, fixed app tag 0xBEEF.
    let mut ins = desc(Opcode::DifInsert);
    ins.addr1 = SRC;
    ins.addr2 = DST;
    ins.size = data.len() as u32;
    ins.set_dif_flags(flags.bits())
        .set_dest_ref_tag_seed(100)
        .set_dest_app_tag_seed(0xBEEF);
    let cr = h.run1(&ins);
    assert_eq!(cr.status, st::SUCCESS);
    assert_eq!(cr.dif_dest_ref_tag(), 109);
    let want = protect(&data, 512, flags, 100, 0xBEEF);
    assert_eq!(h.get(None, DST, want.len()), want);
    // Check passes with the same seeds.
    let mut chk = desc(Opcode::DifCheck);
    chk.addr1 = DST;
    chk.size = want.len() as u32;
    chk.set_dif_flags(flags.bits())
        .set_src_ref_tag_seed(100)
        .set_src_app_tag_seed(0xBEEF);
    let cr = h.run1(&chk);
    assert_eq!((cr.status, cr.result), (st::SUCCESS, 0));
    assert_eq!(cr.dif_src_ref_tag(), 109);
    // A corrupted data byte in block 4: guard mismatch there.
    h.put(None, DST + 4 * 520 + 7, &[!want[4 * 520 + 7]]);
    let cr = h.run1(&chk);
    assert_eq!(
        (cr.status, cr.result, cr.bytes_completed),
        (st::DIF_ERROR, 1, 4 * 520)
    );
    assert_eq!(cr.dif_src_ref_tag(), 104);
    h.put(None, DST, &want);
    // Wrong ref seed: ref-tag mismatch on block 0; disabled check passes.
    chk.set_src_ref_tag_seed(7);
    assert_eq!(h.run1(&chk).result, 4);
    chk.set_src_dif_flags(1 << 6);
    assert_eq!(h.run1(&chk).status, st::SUCCESS);
    chk.set_src_dif_flags(0).set_src_ref_tag_seed(100);
    // Wrong app tag, then masked out entirely.
    chk.set_src_app_tag_seed(0x1111);
    assert_eq!(h.run1(&chk).result, 2);
    chk.set_src_app_tag_mask(0xFFFF);
    assert_eq!(h.run1(&chk).status, st::SUCCESS);
    // Strip: data back.
    let mut strip = desc(Opcode::DifStrip);
    strip.addr1 = DST;
    strip.addr2 = AUX;
    strip.size = want.len() as u32;
    strip
        .set_dif_flags(flags.bits())
        .set_src_ref_tag_seed(100)
        .set_src_app_tag_seed(0xBEEF);
    assert_eq!(h.run1(&strip).status, st::SUCCESS);
    assert_eq!(h.get(None, AUX, data.len()), data);
    // Update: new fixed ref tag 5, app tag passthrough.
    let mut up = desc(Opcode::DifUpdate);
    up.addr1 = DST;
    up.addr2 = AUX;
    up.size = want.len() as u32;
    up.set_dif_flags(flags.bits())
        .set_src_ref_tag_seed(100)
        .set_src_app_tag_seed(0xBEEF);
    up.set_dest_dif_flags((1 << 7) | (1 << 3))
        .set_dest_ref_tag_seed(5);
    assert_eq!(h.run1(&up).status, st::SUCCESS);
    let got = h.get(None, AUX, want.len());
    for (i, blk) in got.chunks(520).enumerate() {
        let pi = Pi::from_bytes(blk[512..].try_into().unwrap());
        assert_eq!(
            pi,
            Pi {
                guard: guard(flags, &data[i * 512..(i + 1) * 512]),
                app_tag: 0xBEEF,
                ref_tag: 5
            }
        );
    }
    // Size not a multiple of the protected block size.
    chk.size = 1000;
    assert_eq!(h.run1(&chk).status, st::INVALID_XFER_SIZE);
    // All-F detection with error enabled.
    h.put(None, DST + 512, &[0xFF; 8]);
    chk.size = want.len() as u32;
    chk.set_src_dif_flags(0b11);
    let cr = h.run1(&chk);
    assert_eq!((cr.status, cr.result), (st::DIF_ERROR, 8));
    // App-tag F detection skips the block instead.
    chk.set_src_dif_flags(1 << 2);
    assert_eq!(h.run1(&chk).status, st::SUCCESS);
}

#[test]
fn validation_status_codes() {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 32)]);
    // 0x10: unknown opcode, and DSA 2.0 opcodes.
    for op in [0x0Bu8, 0x0A, 0x17, 0x21] {
        let mut d = desc(Opcode::Noop);
        d.opcode = op;
        assert_eq!(h.run1(&d).status, st::UNSUPPORTED_OPCODE, "{op:#x}");
    }
    // 0x11: reserved flag bits.
    for bit in [5u32, 6, 15, 20] {
        let mut d = desc(Opcode::Noop);
        d.flags |= DescFlags::from_bits_retain(1 << bit);
        let cr = h.run1(&d);
        assert_eq!(
            (cr.status, cr.invalid_flags()),
            (st::INVALID_FLAGS, 1 << bit),
            "bit {bit}"
        );
    }
    // Check Result is only valid for compare-like ops; Drain needs RCR or RCI.
    let mut d = desc(Opcode::MemMove);
    d.flags |= DescFlags::CHECK_RESULT;
    assert_eq!(h.run1(&d).status, st::INVALID_FLAGS);
    let mut dr = desc(Opcode::Drain);
    dr.flags = DescFlags::CRAV;
    let cr = h.run1(&dr);
    assert_eq!(cr.status, st::INVALID_FLAGS);
    // 0x12: reserved bytes.
    let mut d = desc(Opcode::MemMove);
    d.reserved38 = 1;
    assert_eq!(h.run1(&d).status, st::NONZERO_RESERVED);
    let mut d = desc(Opcode::Noop);
    d.size = 4;
    assert_eq!(h.run1(&d).status, st::NONZERO_RESERVED);
    let mut d = desc(Opcode::MemMove);
    d.set_op_byte(63, 1);
    assert_eq!(h.run1(&d).status, st::NONZERO_RESERVED);
    // 0x13: transfer size above the WQ's max.
    let h2 = H::default();
    let mut spec = WqSpec::dedicated(0, 32);
    spec.mode = WqMode::Dedicated;
    h2.pci_all();
    h2.configure(&[spec]);
    h2.write_wqcfg(0, spec.cfg().with_max_xfer_shift(12));
    assert_eq!(h2.cmd(dsa_spec::Command::EnableDevice, 0), 0);
    assert_eq!(h2.cmd(dsa_spec::Command::EnableWq, 0), 0);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = 4097;
    assert_eq!(h2.run1(&d).status, st::INVALID_XFER_SIZE);
    d.size = 4096;
    assert_eq!(h2.run1(&d).status, st::SUCCESS);
    // 0x14 / 0x18: batch count and list alignment.
    let mut b = desc(Opcode::Batch);
    b.addr1 = LIST;
    b.size = 1;
    assert_eq!(h.run1(&b).status, st::INVALID_DESC_COUNT);
    b.size = 1025;
    assert_eq!(h.run1(&b).status, st::INVALID_DESC_COUNT);
    b.size = 2;
    b.addr1 = LIST + 32;
    assert_eq!(h.run1(&b).status, st::LIST_ALIGN);
}

#[test]
fn errors_without_crav_go_to_swerr() {
    let h = h1();
    let mut d = Descriptor::new(Opcode::Noop);
    d.opcode = 0x0B;
    h.movdir(0, &d);
    h.dev.run_until_idle();
    let e = h.swerr();
    assert!(e.valid());
    assert_eq!(
        (e.code(), e.opcode(), e.wq()),
        (st::UNSUPPORTED_OPCODE, 0x0B, 0)
    );
    assert!(
        e.flags()
            .contains(SwErrFlags::DESC_VALID | SwErrFlags::WQ_INDEX_VALID)
    );
    h.ack_swerr();
    // A misaligned CR address: 0x1B in SWERROR, nothing executes.
    let data = pattern(64, 9);
    h.put(None, SRC, &data);
    let mut m = desc(Opcode::MemMove);
    m.addr1 = SRC;
    m.addr2 = DST;
    m.size = 64;
    m.completion_addr = CR + 8;
    h.movdir(0, &m);
    h.dev.run_until_idle();
    let e = h.swerr();
    assert_eq!((e.code(), e.fault_addr()), (st::CR_ALIGN, CR + 8));
    assert_ne!(h.get(None, DST, 64), data);
    h.ack_swerr();
    // A CR address that faults: 0x1A in SWERROR, the work itself is done.
    m.completion_addr = 0x7000_0000;
    h.movdir(0, &m);
    h.dev.run_until_idle();
    let e = h.swerr();
    assert_eq!((e.code(), e.fault_addr()), (st::CR_PAGE_FAULT, 0x7000_0001));
    assert_eq!(h.get(None, DST, 64), data);
}

#[test]
fn privileged_shared_descriptor_without_pci_priv() {
    let h = H::default();
    h.dev
        .set_pci_state(dsa_model::pci::BME | dsa_model::pci::PASID_ENABLE);
    h.configure(&[WqSpec::shared(1, 16)]);
    assert_eq!(h.cmd(dsa_spec::Command::EnableDevice, 0), 0);
    assert_eq!(h.cmd(dsa_spec::Command::EnableWq, 1), 0);
    let mut d = desc(Opcode::Noop);
    d.pasid = PASID;
    d.privileged = true;
    assert_eq!(h.enqcmd(1, &d), dsa_model::PortalResult::Accepted);
    h.dev.run_until_idle();
    assert_eq!(h.swerr().code(), st::PRIVILEGE);
    assert!(h.swerr().flags().contains(SwErrFlags::PRIV));
    assert_eq!(h.cr_at(Some(PASID), CR).status, 0);
}

#[test]
fn batch_rules() {
    let h = h1();
    let data = pattern(4096, 10);
    h.put(None, SRC, &data);
    let crs = AUX;
    let mk = |i: u64, op: Opcode| {
        let mut d = desc(op);
        d.completion_addr = crs + i * 32;
        d
    };
    // Member 0 memmove, member 1 compare (mismatch, check result → 0x02), member 2 fenced
    // memmove: abandoned, member 3 noop: abandoned too.
    let mut m0 = mk(0, Opcode::MemMove);
    m0.addr1 = SRC;
    m0.addr2 = DST;
    m0.size = 4096;
    m0.pasid = 0xFFFFF; // ignored inside a batch
    let mut m1 = mk(1, Opcode::Compare);
    m1.addr1 = SRC;
    m1.addr2 = SRC + 1;
    m1.size = 64;
    m1.flags |= DescFlags::CHECK_RESULT;
    let mut m2 = mk(2, Opcode::MemMove);
    m2.addr1 = SRC;
    m2.addr2 = DST + 8192;
    m2.size = 4096;
    m2.flags |= DescFlags::FENCE;
    let m3 = mk(3, Opcode::Noop);
    let mut list = Vec::new();
    for m in [m0, m1, m2, m3] {
        list.extend_from_slice(&m.to_bytes());
    }
    h.put(None, LIST, &list);
    h.put(None, crs, &[0; 128]);
    let mut b = desc(Opcode::Batch);
    b.addr1 = LIST;
    b.size = 4;
    let cr = h.run1(&b);
    assert_eq!((cr.status, cr.bytes_completed), (st::BATCH_FAIL, 4));
    assert_eq!(h.cr_at(None, crs).status, st::SUCCESS);
    assert_eq!(h.cr_at(None, crs + 32).status, st::SUCCESS_FALSE_PREDICATE);
    assert_eq!(h.cr_at(None, crs + 64).status, 0, "fenced member abandoned");
    assert_eq!(h.cr_at(None, crs + 96).status, 0, "later members abandoned");
    assert_eq!(h.get(None, DST, 4096), data);
    assert_ne!(h.get(None, DST + 8192, 4096), data);
    // Without the failure all run: status 0x01.
    let mut m1ok = m1;
    m1ok.addr2 = SRC;
    list[64..128].copy_from_slice(&m1ok.to_bytes());
    h.put(None, LIST, &list);
    h.put(None, crs, &[0; 128]);
    let cr = h.run1(&b);
    assert_eq!(cr.status, st::SUCCESS);
    assert_eq!(h.cr_at(None, crs + 96).status, st::SUCCESS);
    // Nested batch / drain members: 0x10.
    let mut nb = mk(1, Opcode::Batch);
    nb.addr1 = LIST;
    nb.size = 2;
    list[64..128].copy_from_slice(&nb.to_bytes());
    let mut nd = mk(2, Opcode::Drain);
    nd.flags = DescFlags::CRAV | DescFlags::RCR;
    list[128..192].copy_from_slice(&nd.to_bytes());
    h.put(None, LIST, &list);
    h.put(None, crs, &[0; 128]);
    let cr = h.run1(&b);
    assert_eq!(cr.status, st::BATCH_FAIL);
    assert_eq!(h.cr_at(None, crs + 32).status, st::UNSUPPORTED_OPCODE);
    assert_eq!(h.cr_at(None, crs + 64).status, st::UNSUPPORTED_OPCODE);
    // A member error without CRAV lands in SWERROR with the batch index.
    let mut bad = Descriptor::new(Opcode::Noop);
    bad.reserved38 = 7;
    list[64..128].copy_from_slice(&bad.to_bytes());
    list[128..192].copy_from_slice(&m3.to_bytes());
    h.put(None, LIST, &list);
    h.run1(&b);
    let e = h.swerr();
    assert_eq!((e.code(), e.batch_index()), (st::NONZERO_RESERVED, 1));
    assert!(e.flags().contains(SwErrFlags::BATCH));
    h.ack_swerr();
    // The list faults after 2 members: 0x06, 2 fetched, resume from there.
    h.sim.map(None, 0x90_0000, 0x1000);
    let mut two = Vec::new();
    two.extend_from_slice(&m3.to_bytes());
    two.extend_from_slice(&m3.to_bytes());
    h.put(None, 0x90_0F80, &two);
    let mut fb = b;
    fb.addr1 = 0x90_0F80;
    let cr = h.run1(&fb);
    assert_eq!(
        (cr.status, cr.bytes_completed, cr.fault_addr),
        (st::BATCH_PAGE_FAULT, 2, 0x90_1000)
    );
}

#[test]
fn batch_members_inherit_pasid_and_portal() {
    let h = H::default();
    h.up(&[WqSpec::shared(1, 16)]);
    let sp = Some(PASID);
    let data = pattern(256, 11);
    h.put(sp, SRC, &data);
    let mut m = desc(Opcode::MemMove);
    m.addr1 = SRC;
    m.addr2 = DST;
    m.size = 256;
    m.completion_addr = AUX;
    let mut n = desc(Opcode::Noop);
    n.completion_addr = AUX + 32;
    n.pasid = 7; // members' own PASID bits are ignored
    let mut list = m.to_bytes().to_vec();
    list.extend_from_slice(&n.to_bytes());
    h.put(sp, LIST, &list);
    let mut b = desc(Opcode::Batch);
    b.pasid = PASID;
    b.addr1 = LIST;
    b.size = 2;
    assert_eq!(h.enqcmd(1, &b), dsa_model::PortalResult::Accepted);
    h.dev.run_until_idle();
    assert_eq!(h.cr_at(sp, CR).status, st::SUCCESS);
    assert_eq!(h.cr_at(sp, AUX).status, st::SUCCESS);
    assert_eq!(h.cr_at(sp, AUX + 32).status, st::SUCCESS);
    assert_eq!(h.get(sp, DST, 256), data);
}

/// Resubmits like a driver until done; returns the number of partial completions.
fn resume_loop(
    h: &H,
    mut d: Descriptor,
    unmapped: &[u64],
    mut on_partial: impl FnMut(&mut Descriptor, &dsa_spec::CompletionRecord),
) -> (dsa_spec::CompletionRecord, usize) {
    let mut partials = 0;
    loop {
        let cr = h.run1(&d);
        if cr.status_code() != st::PAGE_FAULT_PARTIAL {
            return (cr, partials);
        }
        partials += 1;
        assert!(
            partials <= unmapped.len(),
            "more faults than unmapped pages"
        );
        let page = cr.fault_addr & !0xFFF;
        assert!(unmapped.contains(&page), "fault at {:#x}", cr.fault_addr);
        h.sim.map(None, page, 0x1000);
        on_partial(&mut d, &cr);
    }
}

#[test]
fn partial_completion_and_resume() {
    let h = h1();
    let len = 5 * 4096 + 100;
    let data = pattern(len, 12);
    // memmove forward: an unmapped source page and an unmapped destination page.
    h.put(None, SRC, &data);
    h.sim.unmap(None, SRC + 0x2000, 0x1000);
    h.sim.unmap(None, DST + 0x4000, 0x1000);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = len as u32;
    let first = h.run1(&d);
    assert_eq!(
        (first.status, first.bytes_completed, first.fault_addr),
        (st::PAGE_FAULT_PARTIAL, 0x2000, SRC + 0x2000)
    );
    assert!(!first.fault_is_write());
    let (cr, n) = resume_loop(&h, d, &[SRC + 0x2000, DST + 0x4000], |d, cr| {
        d.addr1 += u64::from(cr.bytes_completed);
        d.addr2 += u64::from(cr.bytes_completed);
        d.size -= cr.bytes_completed;
        if cr.fault_addr & !0xFFF == SRC + 0x2000 {
            assert!(h.sim.write(None, SRC + 0x2000, &data[0x2000..0x3000]));
        } else {
            assert!(cr.fault_is_write());
        }
    });
    assert_eq!((cr.status, n), (st::SUCCESS, 2));
    assert_eq!(h.get(None, DST, len), data);

    // Backward memmove (overlap, dst > src): bytes completed is a suffix.
    let base = AUX;
    h.put(None, base, &data);
    h.sim.unmap(None, base + 0x4000, 0x1000);
    let mut b = desc(Opcode::MemMove);
    b.addr1 = base;
    b.addr2 = base + 0x1800;
    b.size = 0x4000;
    let cr = h.run1(&b);
    assert_eq!((cr.status_code(), cr.result), (st::PAGE_FAULT_PARTIAL, 1));
    assert_eq!((cr.bytes_completed, cr.fault_addr), (0x800, base + 0x4000));
    assert!(cr.fault_is_write());
    h.sim.map(None, base + 0x4000, 0x1000);
    b.size -= cr.bytes_completed;
    let cr2 = h.run1(&b);
    assert_eq!((cr2.status, cr2.result), (st::SUCCESS, 1));
    assert_eq!(h.get(None, base + 0x1800, 0x4000), data[..0x4000]);

    // Fill: resume with dst advanced and the pattern rotated by bytes completed mod 8.
    h.sim.unmap(None, DST + 0x3000, 0x1000);
    let mut f = desc(Opcode::Fill);
    f.addr1 = 0x1122_3344_5566_7788;
    f.addr2 = DST + 3;
    f.size = 0x5000;
    let (cr, n) = resume_loop(&h, f, &[DST + 0x3000], |d, cr| {
        d.addr2 += u64::from(cr.bytes_completed);
        d.size -= cr.bytes_completed;
        d.addr1 = d.addr1.rotate_right(8 * (cr.bytes_completed % 8));
    });
    assert_eq!((cr.status, n), (st::SUCCESS, 1));
    let pat = 0x1122_3344_5566_7788u64.to_le_bytes();
    assert!(
        h.get(None, DST + 3, 0x5000)
            .iter()
            .enumerate()
            .all(|(k, &v)| v == pat[k % 8])
    );

    // CRC: resume with the partial CRC as the seed.
    h.put(None, SRC, &data);
    h.sim.unmap(None, SRC + 0x1000, 0x1000);
    let mut c = desc(Opcode::CrcGen);
    c.addr1 = SRC;
    c.size = len as u32;
    c.set_crc_seed(0xFFFF_FFFF);
    let (cr, n) = resume_loop(&h, c, &[SRC + 0x1000], |d, cr| {
        assert_eq!(
            cr.crc(),
            crc32c_dsa(
                0xFFFF_FFFF,
                &data[..cr.bytes_completed as usize],
                CrcMode::default()
            )
        );
        d.addr1 += u64::from(cr.bytes_completed);
        d.size -= cr.bytes_completed;
        d.set_crc_seed(cr.crc());
        assert!(h.sim.write(None, SRC + 0x1000, &data[0x1000..0x2000]));
    });
    assert_eq!((cr.status, n), (st::SUCCESS, 1));
    assert_eq!(cr.crc(), crc32c_dsa(0xFFFF_FFFF, &data, CrcMode::default()));

    // Copy with CRC: a destination fault.
    h.sim.unmap(None, DST + 0x2000, 0x1000);
    let mut cc = desc(Opcode::CopyCrc);
    cc.addr1 = SRC;
    cc.addr2 = DST;
    cc.size = len as u32;
    let (cr, n) = resume_loop(&h, cc, &[DST + 0x2000], |d, cr| {
        assert!(cr.fault_is_write());
        d.addr1 += u64::from(cr.bytes_completed);
        d.addr2 += u64::from(cr.bytes_completed);
        d.size -= cr.bytes_completed;
        d.set_crc_seed(cr.crc());
    });
    assert_eq!((cr.status, n), (st::SUCCESS, 1));
    assert_eq!(cr.crc(), crc32c_dsa(0, &data, CrcMode::default()));
    assert_eq!(h.get(None, DST, len), data);
}

#[test]
fn block_on_fault_gives_0x04() {
    let h = H::default();
    h.up(&[WqSpec {
        bof: true,
        ..WqSpec::dedicated(0, 16)
    }]);
    h.sim.unmap(None, SRC + 0x1000, 0x1000);
    let mut d = desc(Opcode::MemMove);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = 0x2000;
    d.flags |= DescFlags::BLOCK_ON_FAULT;
    let cr = h.run1(&d);
    assert_eq!(
        (cr.status, cr.bytes_completed, cr.fault_addr),
        (st::PAGE_FAULT_PRS, 0x1000, SRC + 0x1000)
    );
    // Descriptor BOF without WQ BOF: an ordinary partial completion.
    let h2 = h1();
    h2.sim.unmap(None, SRC + 0x1000, 0x1000);
    assert_eq!(h2.run1(&d).status, st::PAGE_FAULT_PARTIAL);
    // A fault without CRAV goes to SWERROR with the address and R/W bit.
    d.flags = DescFlags::empty();
    h2.sim.unmap(None, DST, 0x1000);
    h2.movdir(0, &d);
    h2.dev.run_until_idle();
    let e = h2.swerr();
    assert_eq!((e.code(), e.fault_addr()), (st::PAGE_FAULT_PARTIAL, DST));
    assert!(e.flags().contains(SwErrFlags::FAULT_RW));
}

#[test]
fn huge_sizes_and_wrapping_addresses_do_not_panic() {
    let h = h1();
    let mut d = desc(Opcode::MemMove);
    d.addr1 = u64::MAX - 10;
    d.addr2 = 0x1234;
    d.size = u32::MAX;
    assert_eq!(h.run1(&d).status, st::INVALID_XFER_SIZE);
    d.size = 1 << 31; // 2 GiB over unmapped memory: faults at once, no huge allocation
    let cr = h.run1(&d);
    assert_eq!(cr.status, st::PAGE_FAULT_PARTIAL);
    for op in Opcode::DSA_1_0 {
        let mut d = desc(op);
        d.addr1 = u64::MAX - 7;
        d.addr2 = u64::MAX - 4095;
        d.size = 1 << 31;
        d.set_delta_record_size(u32::MAX)
            .set_max_delta_size(u32::MAX)
            .set_dst2(u64::MAX);
        let cr = h.run1(&d);
        assert_ne!(cr.status, 0, "{op:?}");
    }
    assert_eq!(h.r32(off::GENSTS) & 3, 1);
}

#[test]
fn small_dma_chunks_cross_every_loop_boundary() {
    let h = H::new(Config {
        dma_chunk: 4096,
        ..Config::default()
    });
    h.up(&[WqSpec::dedicated(0, 32)]);
    let len = 50_003usize;
    let data = pattern(len, 40);
    h.put(None, SRC + 5, &data);
    // memmove forward, backward (overlap), fill, compare pattern, compare, CRC, dualcast.
    let mut m = desc(Opcode::MemMove);
    m.addr1 = SRC + 5;
    m.addr2 = DST + 11;
    m.size = len as u32;
    assert_eq!(h.run1(&m).status, st::SUCCESS);
    assert_eq!(h.get(None, DST + 11, len), data);
    m.addr1 = DST + 11;
    m.addr2 = DST + 11 + 777;
    assert_eq!(h.run1(&m).result, 1);
    assert_eq!(h.get(None, DST + 11 + 777, len), data);
    let mut c = desc(Opcode::Compare);
    c.addr1 = SRC + 5;
    c.addr2 = DST + 11 + 777;
    c.size = len as u32;
    assert_eq!(h.run1(&c).result, 0);
    h.put(None, DST + 11 + 777 + 40_000, &[!data[40_000]]);
    assert_eq!((h.run1(&c).result, h.cr().bytes_completed), (1, 40_000));
    let mut f = desc(Opcode::Fill);
    f.addr1 = 0xA1B2_C3D4_E5F6_0718;
    f.addr2 = AUX + 1;
    f.size = len as u32;
    assert_eq!(h.run1(&f).status, st::SUCCESS);
    let pat = 0xA1B2_C3D4_E5F6_0718u64.to_le_bytes();
    assert!(
        h.get(None, AUX + 1, len)
            .iter()
            .enumerate()
            .all(|(k, &v)| v == pat[k % 8])
    );
    let mut p = desc(Opcode::ComparePattern);
    p.addr1 = AUX + 1;
    p.addr2 = 0xA1B2_C3D4_E5F6_0718;
    p.size = len as u32;
    assert_eq!(h.run1(&p).result, 0);
    let mut crc = desc(Opcode::CrcGen);
    crc.addr1 = SRC + 5;
    crc.size = len as u32;
    assert_eq!(h.run1(&crc).crc(), crc32c_dsa(0, &data, CrcMode::default()));
    // DIF insert with 4096-byte blocks and check.
    let blocks = pattern(4096 * 3, 41);
    h.put(None, SRC, &blocks);
    let mut ins = desc(Opcode::DifInsert);
    ins.addr1 = SRC;
    ins.addr2 = DST;
    ins.size = blocks.len() as u32;
    ins.set_dif_flags(2).set_dest_ref_tag_seed(1);
    assert_eq!(h.run1(&ins).status, st::SUCCESS);
    assert_eq!(
        h.get(None, DST, 3 * 4104),
        protect(&blocks, 4096, DifFlags::from_bits_retain(2), 1, 0)
    );
    // Create delta across chunks.
    let mut b2 = blocks.clone();
    b2[4096 * 2 + 8] ^= 1;
    h.put(None, AUX, &b2);
    let mut cd = desc(Opcode::CreateDelta);
    cd.addr1 = SRC;
    cd.addr2 = AUX;
    cd.size = blocks.len() as u32;
    cd.set_delta_record_addr(LIST).set_max_delta_size(100);
    let cr = h.run1(&cd);
    assert_eq!((cr.result, cr.delta_record_size()), (1, 10));
    assert_eq!(h.get(None, LIST, 10), reference_delta(&blocks, &b2));
}
