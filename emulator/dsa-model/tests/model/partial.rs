//! Partial completions that software written for real DSA can resume: regressions for the
//! two reports of issue 15 (dualcast, DIF Insert/Strip/Update tags) and the Create Delta
//! maximum record size. Each test resumes the way the DSA specification tells software to
//! (advance by bytes completed, seed the next block with the record's tags), never the
//! way the model happens to work.

use crate::common::*;
use dsa_spec::CompletionRecord;
use dsa_spec::dif::{DifFlags, Pi, guard};
use dsa_spec::status as st;
use dsa_spec::{Descriptor, Opcode};

fn h1() -> H {
    let h = H::default();
    h.up(&[WqSpec::dedicated(0, 32)]);
    h
}

/// Asserts equal bytes, naming the first difference instead of printing both buffers.
#[track_caller]
fn same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {i:#x} of {:#x} (got {:#04x}, want {:#04x})",
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn partial(cr: &CompletionRecord) -> bool {
    cr.status_code() == st::PAGE_FAULT_PARTIAL
}

/// Dualcast: "bytes completed" must count only bytes that reached both destinations, since
/// software resumes by advancing the source and both destinations by it.
#[test]
fn dualcast_bytes_completed_counts_only_bytes_in_both_destinations() {
    let len = 0x4000usize;
    let data = pattern(len, 0xD1);
    // A fault on destination 1, then one on destination 2 (same page offset: bits 11:0 of
    // the destinations agree).
    for faulting in [DST, AUX] {
        let h = h1();
        h.put(None, SRC, &data);
        h.put(None, DST, &vec![0xEE; len + 0x100]);
        h.put(None, AUX, &vec![0xEE; len + 0x100]);
        let hole = faulting + 0x2000;
        h.sim.unmap(None, hole, 0x1000);
        let mut d = desc(Opcode::Dualcast);
        d.addr1 = SRC;
        d.addr2 = DST + 0x100;
        d.set_dst2(AUX + 0x100);
        d.size = len as u32;
        let cr = h.run1(&d);
        assert!(partial(&cr), "{cr:?}");
        assert!(cr.fault_is_write());
        assert_eq!(cr.fault_addr & !0xFFF, hole, "{cr:?}");
        let bc = cr.bytes_completed as usize;
        assert!(bc < len);
        // Everything counted as completed is in both destinations.
        same(&h.get(None, DST + 0x100, bc), &data[..bc], "dst1");
        same(&h.get(None, AUX + 0x100, bc), &data[..bc], "dst2");
        // Resume as the specification says: all three addresses advance by bytes completed.
        h.sim.map(None, hole, 0x1000);
        d.addr1 += bc as u64;
        d.addr2 += bc as u64;
        d.set_dst2(d.dst2() + bc as u64);
        d.size -= bc as u32;
        assert_eq!(h.run1(&d).status, st::SUCCESS);
        same(&h.get(None, DST + 0x100, len), &data, "dst1 after resume");
        same(&h.get(None, AUX + 0x100, len), &data, "dst2 after resume");
    }
}

fn protect(data: &[u8], bs: usize, ref0: u32, app: u16) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, b) in data.chunks(bs).enumerate() {
        out.extend_from_slice(b);
        let pi = Pi {
            guard: guard(DifFlags::empty(), b),
            app_tag: app,
            ref_tag: ref0.wrapping_add(i as u32),
        };
        out.extend_from_slice(&pi.to_bytes());
    }
    out
}

/// Runs `d` with `hole` unmapped, then resumes from the record: source by bytes completed,
/// destination by the blocks that covers, next-block tags from the record (`seed` copies
/// them into the descriptor). Returns the final record.
fn dif_resume(
    h: &H,
    mut d: Descriptor,
    hole: u64,
    src_step: u64,
    dst_step: u64,
    seed: impl Fn(&mut Descriptor, &CompletionRecord),
    expect_tags: impl Fn(&CompletionRecord, u32),
) -> CompletionRecord {
    h.sim.unmap(None, hole, 0x1000);
    let cr = h.run1(&d);
    assert!(partial(&cr), "{cr:?}");
    assert_eq!(cr.fault_addr & !0xFFF, hole, "{cr:?}");
    let bc = u64::from(cr.bytes_completed);
    assert_eq!(bc % src_step, 0, "whole blocks only");
    let blocks = (bc / src_step) as u32;
    // The record's tags are those of the first block not completed.
    expect_tags(&cr, blocks);
    h.sim.map(None, hole, 0x1000);
    d.addr1 += bc;
    d.addr2 += u64::from(blocks) * dst_step;
    d.size -= bc as u32;
    seed(&mut d, &cr);
    let cr = h.run1(&d);
    assert_eq!(cr.status, st::SUCCESS, "{cr:?}");
    cr
}

/// DIF Insert into a fresh destination (a first-touch write fault): the record must carry
/// the tags of the next block to insert, not of the end of the chunk the model buffered.
#[test]
fn dif_insert_write_fault_reports_the_tags_of_the_next_block() {
    let h = h1();
    let nblk = 12usize;
    let data = pattern(512 * nblk, 0x1D);
    h.put(None, SRC, &data);
    let mut d = desc(Opcode::DifInsert);
    d.addr1 = SRC;
    d.addr2 = DST + 0x100;
    d.size = data.len() as u32;
    d.set_dest_ref_tag_seed(0xABB0)
        .set_dest_app_tag_seed(0x5A5A);
    // Page 1 of the destination is absent: blocks 0..6 fit before it (0x100 + 7×520 < 0x1000).
    let cr = dif_resume(
        &h,
        d,
        DST + 0x1000,
        512,
        520,
        |d, cr| {
            d.set_dest_ref_tag_seed(cr.dif_dest_ref_tag())
                .set_dest_app_tag_seed(cr.dif_dest_app_tag());
        },
        |cr, blocks| {
            assert_eq!(
                (cr.dif_dest_ref_tag(), cr.dif_dest_app_tag()),
                (0xABB0 + blocks, 0x5A5A),
                "tags after {blocks} blocks"
            );
        },
    );
    assert_eq!(cr.dif_dest_ref_tag(), 0xABB0 + nblk as u32);
    let want = protect(&data, 512, 0xABB0, 0x5A5A);
    same(
        &h.get(None, DST + 0x100, want.len()),
        &want,
        "DIF Insert destination",
    );
}

/// DIF Strip and DIF Update: the same with the source-side tags (and both for Update).
#[test]
fn dif_strip_and_update_write_faults_report_the_tags_of_the_next_block() {
    let nblk = 12usize;
    let data = pattern(512 * nblk, 0x2D);
    let prot = protect(&data, 512, 0x100, 0x7777);
    // Strip: 520-byte source blocks to 512-byte destination blocks.
    let h = h1();
    h.put(None, SRC, &prot);
    let mut d = desc(Opcode::DifStrip);
    d.addr1 = SRC;
    d.addr2 = DST + 0x80;
    d.size = prot.len() as u32;
    d.set_src_ref_tag_seed(0x100).set_src_app_tag_seed(0x7777);
    let cr = dif_resume(
        &h,
        d,
        DST + 0x1000,
        520,
        512,
        |d, cr| {
            d.set_src_ref_tag_seed(cr.dif_src_ref_tag())
                .set_src_app_tag_seed(cr.dif_src_app_tag());
        },
        |cr, blocks| {
            assert_eq!(
                (cr.dif_src_ref_tag(), cr.dif_src_app_tag()),
                (0x100 + blocks, 0x7777),
                "tags after {blocks} blocks"
            );
        },
    );
    assert_eq!(cr.dif_src_ref_tag(), 0x100 + nblk as u32);
    same(
        &h.get(None, DST + 0x80, data.len()),
        &data,
        "DIF Strip destination",
    );

    // Update: re-tag from ref 0x100 to ref 0x9000 (both incrementing).
    let h = h1();
    h.put(None, SRC, &prot);
    let mut d = desc(Opcode::DifUpdate);
    d.addr1 = SRC;
    d.addr2 = DST + 0x80;
    d.size = prot.len() as u32;
    d.set_src_ref_tag_seed(0x100).set_src_app_tag_seed(0x7777);
    d.set_dest_ref_tag_seed(0x9000)
        .set_dest_app_tag_seed(0x7777);
    let cr = dif_resume(
        &h,
        d,
        DST + 0x1000,
        520,
        520,
        |d, cr| {
            d.set_src_ref_tag_seed(cr.dif_src_ref_tag())
                .set_src_app_tag_seed(cr.dif_src_app_tag())
                .set_dest_ref_tag_seed(cr.dif_dest_ref_tag())
                .set_dest_app_tag_seed(cr.dif_dest_app_tag());
        },
        |cr, blocks| {
            assert_eq!(
                (cr.dif_src_ref_tag(), cr.dif_dest_ref_tag()),
                (0x100 + blocks, 0x9000 + blocks),
                "tags after {blocks} blocks"
            );
        },
    );
    assert_eq!(cr.dif_dest_ref_tag(), 0x9000 + nblk as u32);
    same(
        &h.get(None, DST + 0x80, prot.len()),
        &protect(&data, 512, 0x9000, 0x7777),
        "DIF Update destination",
    );
}

/// A DIF error further on in the same chunk as a destination write fault: the write fault
/// comes first in the data, so it is what the record reports, with that block's tags.
#[test]
fn dif_strip_write_fault_before_a_dif_error_reports_the_fault() {
    let h = h1();
    let data = pattern(512 * 12, 0x3D);
    let mut prot = protect(&data, 512, 0x10, 0);
    prot[10 * 520 + 3] ^= 1; // block 10 fails its guard
    h.put(None, SRC, &prot);
    h.sim.unmap(None, DST + 0x1000, 0x1000);
    let mut d = desc(Opcode::DifStrip);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = prot.len() as u32;
    d.set_src_ref_tag_seed(0x10);
    let cr = h.run1(&d);
    assert!(partial(&cr), "{cr:?}");
    // Blocks 0..7 fit in the first destination page.
    assert_eq!(cr.bytes_completed, 8 * 520);
    assert_eq!(cr.dif_src_ref_tag(), 0x10 + 8);
}

/// Create Delta: the maximum record size the model accepts (see the model's documentation
/// for the sources): any value of at least 80 bytes; only whole entries are written.
#[test]
fn create_delta_maximum_record_size_need_not_be_a_multiple_of_10() {
    let h = h1();
    let a = pattern(4096, 0xC1);
    let mut b = a.clone();
    // Nine differing words.
    for w in 0..9 {
        b[w * 64] ^= 0xFF;
    }
    h.put(None, SRC, &a);
    h.put(None, DST, &b);
    let mut d = desc(Opcode::CreateDelta);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = 4096;
    // Twice the transfer size, as Intel's accel-config test client sets it.
    d.set_delta_record_addr(AUX).set_max_delta_size(8192);
    let cr = h.run1(&d);
    assert_eq!(
        (cr.status, cr.result, cr.delta_record_size()),
        (st::SUCCESS, 1, 90)
    );
    // 85 bytes hold eight entries: the ninth overflows.
    d.set_max_delta_size(85);
    let cr = h.run1(&d);
    assert_eq!(
        (
            cr.status,
            cr.result,
            cr.delta_record_size(),
            cr.bytes_completed
        ),
        (st::SUCCESS, 2, 80, 8 * 64)
    );
    // Below 80 stays out of range.
    d.set_max_delta_size(79);
    assert_eq!(h.run1(&d).status, st::INVALID_DELTA_SIZE);
}

/// Create Delta whose record page is absent: the record reports the entries written whole
/// and the comparison up to the first entry missing; the continuation appends the rest.
#[test]
fn create_delta_record_write_fault_keeps_the_entries_written() {
    let h = h1();
    let len = 0x2000usize;
    let a = pattern(len, 0xC2);
    let mut b = a.clone();
    for w in (0..len / 8).step_by(3) {
        b[w * 8] ^= 0x81;
    }
    h.put(None, SRC, &a);
    h.put(None, DST, &b);
    // 342 entries (3420 bytes) from AUX + 0xF00: the page at AUX + 0x1000 is absent.
    h.sim.unmap(None, AUX + 0x1000, 0x1000);
    let mut d = desc(Opcode::CreateDelta);
    d.addr1 = SRC;
    d.addr2 = DST;
    d.size = len as u32;
    d.set_delta_record_addr(AUX + 0xF00)
        .set_max_delta_size(4000);
    let cr = h.run1(&d);
    assert!(partial(&cr) && cr.fault_is_write(), "{cr:?}");
    assert_eq!(cr.fault_addr, AUX + 0x1000);
    // 25 entries fit in the 0x100 bytes before the page (the 26th straddles it): words
    // 0, 3, …, 72 are recorded, the comparison is complete up to word 75.
    assert_eq!((cr.delta_record_size(), cr.bytes_completed), (250, 75 * 8));
    h.sim.map(None, AUX + 0x1000, 0x1000);
    let bc = cr.bytes_completed;
    d.addr1 += u64::from(bc);
    d.addr2 += u64::from(bc);
    d.size -= bc;
    d.set_delta_record_addr(AUX + 0xF00 + 250)
        .set_max_delta_size(4000 - 250);
    let cr2 = h.run1(&d);
    assert_eq!((cr2.status, cr2.result), (st::SUCCESS, 1));
    assert_eq!(cr2.delta_record_size(), 3420 - 250);
    // The continuation's offsets count from its own start.
    let e = h.get(None, AUX + 0xF00 + 250, 10);
    assert_eq!(u16::from_le_bytes([e[0], e[1]]), 0);
}
