//! Every operation on both queue kinds, bytes and completion records checked against the
//! CPU reference; validation before submission.

use crate::common::*;
use bench::reference as cpu;
use dsa::ops::{CrcSeed, DeltaResult};
use dsa::{
    AddressSpace, DifDest, DifFormat, DifSource, OpError, Output, Requester, Submitter,
    ValidationError, Work,
};
use dsa_spec::crc::CrcMode;
use dsa_spec::dif::{DestDifFlags, DifBlockSize, SrcDifFlags};
use dsa_spec::{Opcode, WqMode};
use std::sync::Arc;

pub const PASID: u32 = 0x42;

/// Runs `f` with a submitter on the dedicated WQ (no PASID) and one on the shared WQ
/// (PASID 0x42), in both execution modes.
pub fn on_both(f: impl Fn(&mut Submitter, &Arc<SimPlatform>, AddressSpace)) {
    for exec in [Exec::Deterministic, Exec::Threaded] {
        let (rig, dev) = up(exec);
        for (wq, client) in [
            (0u8, Requester::kernel()),
            (1, Requester::pasid(PASID, true)),
        ] {
            assert_eq!(
                dev.wq(wq).unwrap().mode(),
                if wq == 0 {
                    WqMode::Dedicated
                } else {
                    WqMode::Shared
                }
            );
            let mut s = Submitter::new(&dev, wq, client, Default::default()).unwrap();
            f(&mut s, &rig.plat, client.space);
        }
        // The dedicated WQ went through MOVDIR64B, the shared one through ENQCMDS.
        assert!(rig.portal.posted.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert!(rig.portal.enq.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }
}

#[test]
fn memmove_forward_and_overlapping() {
    on_both(|s, p, sp| {
        let src = p.buf(sp, 20000);
        let dst = p.buf(sp, 20000);
        let data = pattern(20000, 1);
        src.write(0, &data);
        assert_eq!(
            s.run(&Work::memmove(src.at(3), dst.at(5), 19990)).unwrap(),
            Output::Done
        );
        let mut want = vec![0u8; 20000];
        cpu::memmove(&data[3..19993], &mut want[5..]);
        assert_eq!(dst.all(), want);
        // Overlap, destination above the source: copied backwards, still correct.
        let mut buf = data.clone();
        cpu::memmove_within(&mut buf, 0, 100, 10000);
        s.run(&Work::memmove(src.at(0), src.at(100), 10000))
            .unwrap();
        assert_eq!(src.all(), buf);
        // Zero-length memmove is a no-op success.
        assert_eq!(
            s.run(&Work::memmove(src.at(0), dst.at(0), 0)).unwrap(),
            Output::Done
        );
    });
}

#[test]
fn fill_and_compare_pattern() {
    on_both(|s, p, sp| {
        let dst = p.buf(sp, 9000);
        let pat = 0x1122_3344_5566_7788u64;
        s.run(&Work::fill(dst.at(1), 8999, pat)).unwrap();
        let mut want = vec![0u8; 9000];
        cpu::fill(&mut want[1..], pat);
        assert_eq!(dst.all(), want);
        // Compare pattern over the filled area: equal; then a mismatch at 4001.
        let ok = s.run(&Work::compare_pattern(dst.at(1), 8999, pat)).unwrap();
        assert_eq!(
            ok,
            Output::Compare {
                equal: true,
                first_difference: None,
                predicate: None
            }
        );
        dst.write(4002, &[0]);
        let exact = cpu::compare_pattern(&dst.read(1, 8999), pat).unwrap();
        assert_eq!(exact, 4001);
        let Output::Compare {
            equal: false,
            first_difference: Some(at),
            ..
        } = s.run(&Work::compare_pattern(dst.at(1), 8999, pat)).unwrap()
        else {
            panic!("expected a mismatch")
        };
        // The device reports the 8-byte chunk holding the mismatch.
        assert_eq!(at as usize, exact & !7);
    });
}

#[test]
fn compare_with_and_without_check_result() {
    on_both(|s, p, sp| {
        let a = p.buf(sp, 5000);
        let b = p.buf(sp, 5000);
        let data = pattern(5000, 2);
        a.write(0, &data);
        b.write(0, &data);
        assert_eq!(
            s.run(&Work::compare(a.at(0), b.at(0), 5000)).unwrap(),
            Output::Compare {
                equal: true,
                first_difference: None,
                predicate: None
            }
        );
        b.write(3333, &[data[3333] ^ 0x10]);
        let want = cpu::compare(&a.all(), &b.all());
        assert_eq!(want, Some(3333));
        assert_eq!(
            s.run(&Work::compare(a.at(0), b.at(0), 5000)).unwrap(),
            Output::Compare {
                equal: false,
                first_difference: Some(3333),
                predicate: None
            }
        );
        // Check Result: expecting equality gives a false predicate (status 0x02).
        let mut w = Work::compare(a.at(0), b.at(0), 5000);
        w.op = dsa::Op::Compare {
            src1: a.at(0),
            src2: b.at(0),
            len: 5000,
            expect_equal: Some(true),
        };
        let Output::Compare { predicate, .. } = s.run(&w).unwrap() else {
            panic!()
        };
        assert_eq!(predicate, Some(false));
    });
}

#[test]
fn create_and_apply_delta() {
    on_both(|s, p, sp| {
        let old = p.buf(sp, 16384);
        let new = p.buf(sp, 16384);
        let rec = p.buf(sp, 4000);
        let target = p.buf(sp, 16384);
        let o = pattern(16384, 3);
        let mut n = o.clone();
        for k in [0usize, 8, 800, 801, 4096, 16383] {
            n[k] ^= 0xA5;
        }
        old.write(0, &o);
        new.write(0, &n);
        target.write(0, &o);
        let want = cpu::create_delta(&o, &n, 4000);
        assert_eq!(want.result, DeltaResult::Written);
        let out = s
            .run(&Work::create_delta(
                old.at(0),
                new.at(0),
                16384,
                rec.at(0),
                4000,
            ))
            .unwrap();
        assert_eq!(
            out,
            Output::Delta {
                result: DeltaResult::Written,
                record_size: want.record.len() as u32,
                bytes_compared: 16384,
                predicate: None
            }
        );
        assert_eq!(rec.read(0, want.record.len()), want.record);
        s.run(&Work::apply_delta(
            rec.at(0),
            want.record.len() as u32,
            target.at(0),
            16384,
        ))
        .unwrap();
        assert_eq!(target.all(), n);
        // Overflow: a record of 2 entries (minimum size 80 holds 8 — use more changes).
        let mut many = o.clone();
        for k in 0..20 {
            many[k * 64] ^= 1;
        }
        new.write(0, &many);
        let want = cpu::create_delta(&o, &many, 80);
        assert_eq!(want.result, DeltaResult::Overflow);
        let out = s
            .run(&Work::create_delta(
                old.at(0),
                new.at(0),
                16384,
                rec.at(0),
                80,
            ))
            .unwrap();
        assert_eq!(
            out,
            Output::Delta {
                result: DeltaResult::Overflow,
                record_size: 80,
                bytes_compared: want.bytes_compared as u32,
                predicate: None
            }
        );
        // Identical buffers.
        let out = s
            .run(&Work::create_delta(
                old.at(0),
                old.at(0),
                4096,
                rec.at(0),
                80,
            ))
            .unwrap();
        assert!(matches!(
            out,
            Output::Delta {
                result: DeltaResult::Identical,
                record_size: 0,
                ..
            }
        ));
        // A record with decreasing offsets is reported at the bad entry.
        let mut bad = want.record[..20].to_vec();
        bad.extend_from_slice(&want.record[..10]);
        rec.write(0, &bad);
        let e = s
            .run(&Work::apply_delta(rec.at(0), 30, target.at(0), 16384))
            .unwrap_err();
        assert_eq!(
            e,
            OpError::DeltaRecord {
                status: dsa_spec::status::DELTA_OFFSET_ORDER,
                offset: 20
            }
        );
    });
}

#[test]
fn dualcast_copies_twice() {
    on_both(|s, p, sp| {
        let src = p.buf(sp, 8192);
        let d1 = p.buf(sp, 8192);
        let d2 = p.buf(sp, 8192);
        let data = pattern(8192, 4);
        src.write(0, &data);
        s.run(&Work::dualcast(src.at(0), d1.at(0x10), d2.at(0x10), 8000))
            .unwrap();
        let (mut w1, mut w2) = (vec![0u8; 8192], vec![0u8; 8192]);
        cpu::dualcast(&data[..8000], &mut w1[0x10..], &mut w2[0x10..]);
        assert_eq!(d1.all(), w1);
        assert_eq!(d2.all(), w2);
    });
}

#[test]
fn crc_generation_and_copy_with_crc() {
    on_both(|s, p, sp| {
        let src = p.buf(sp, 70000);
        let dst = p.buf(sp, 70000);
        src.write(0, b"123456789");
        assert_eq!(
            s.run(&Work::crc(src.at(0), 9, 0)).unwrap(),
            Output::Crc(0xE306_9283)
        );
        let data = pattern(70000, 5);
        src.write(0, &data);
        let want = cpu::crc32c(0x1234, &data, CrcMode::default());
        assert_eq!(
            s.run(&Work::crc(src.at(0), 70000, 0x1234)).unwrap(),
            Output::Crc(want)
        );
        assert_eq!(
            s.run(&Work::copy_crc(src.at(0), dst.at(0), 70000, 0x1234))
                .unwrap(),
            Output::Crc(want)
        );
        assert_eq!(dst.all(), data);
        // Seed from memory and the bypass modes.
        let seed = p.buf(sp, 64);
        seed.write(4, &0xFFFF_FFFFu32.to_le_bytes());
        for mode in [
            CrcMode {
                bypass_inv_refl: true,
                bypass_data_refl: true,
            },
            CrcMode {
                bypass_inv_refl: false,
                bypass_data_refl: true,
            },
        ] {
            let w = Work::new(dsa::Op::CrcGen {
                src: src.at(0),
                len: 1000,
                seed: CrcSeed::Memory(seed.at(4)),
                mode,
            });
            assert_eq!(
                s.run(&w).unwrap(),
                Output::Crc(cpu::crc32c(0xFFFF_FFFF, &data[..1000], mode))
            );
        }
        // Misaligned seed address refused before submission.
        let w = Work::new(dsa::Op::CrcGen {
            src: src.at(0),
            len: 10,
            seed: CrcSeed::Memory(seed.at(2)),
            mode: CrcMode::default(),
        });
        assert!(matches!(
            s.run(&w),
            Err(OpError::Invalid(ValidationError::Misaligned { .. }))
        ));
    });
}

#[test]
fn dif_insert_check_strip_update() {
    on_both(|s, p, sp| {
        let fmt = DifFormat::new(DifBlockSize::B512);
        let blocks = 6usize;
        let data = pattern(512 * blocks, 6);
        let src = p.buf(sp, 520 * blocks);
        let prot = p.buf(sp, 520 * blocks);
        let out = p.buf(sp, 520 * blocks);
        src.write(0, &data);
        let dest = DifDest {
            flags: DestDifFlags::empty(),
            ref_tag: 0x1000,
            app_tag_mask: 0,
            app_tag: 0xBEEF,
        };
        let want = cpu::dif_insert(&data, &fmt, &dest);
        let r = s
            .run(&Work::dif_insert(
                src.at(0),
                prot.at(0),
                (512 * blocks) as u32,
                fmt,
                dest,
            ))
            .unwrap();
        assert_eq!(
            r,
            Output::Dif {
                source: None,
                dest: Some(want.dest)
            }
        );
        assert_eq!(prot.all(), want.out);
        let source = DifSource {
            flags: SrcDifFlags::empty(),
            ref_tag: 0x1000,
            app_tag_mask: 0,
            app_tag: 0xBEEF,
        };
        let len = (520 * blocks) as u32;
        let chk = cpu::dif_check(&want.out, &fmt, &source);
        assert_eq!(
            s.run(&Work::dif_check(prot.at(0), len, fmt, source))
                .unwrap(),
            Output::Dif {
                source: Some(chk.source),
                dest: None
            }
        );
        let strip = cpu::dif_strip(&want.out, &fmt, &source);
        s.run(&Work::dif_strip(prot.at(0), out.at(0), len, fmt, source))
            .unwrap();
        assert_eq!(out.read(0, 512 * blocks), data);
        assert_eq!(strip.out, data);
        let nd = DifDest {
            flags: DestDifFlags::REF_TAG_FIXED | DestDifFlags::APP_TAG_PASSTHROUGH,
            ref_tag: 77,
            app_tag_mask: 0,
            app_tag: 0,
        };
        let up = cpu::dif_update(&want.out, &fmt, &source, &nd);
        let r = s
            .run(&Work::dif_update(
                prot.at(0),
                out.at(0),
                len,
                fmt,
                source,
                nd,
            ))
            .unwrap();
        assert_eq!(
            r,
            Output::Dif {
                source: Some(up.source),
                dest: Some(up.dest)
            }
        );
        assert_eq!(out.all(), up.out);
        // A corrupted guard in block 3 is found and located.
        prot.write(3 * 520 + 10, &[!want.out[3 * 520 + 10]]);
        let bad = cpu::dif_check(&prot.all(), &fmt, &source);
        let (bits, at) = bad.error.unwrap();
        assert_eq!(
            s.run(&Work::dif_check(prot.at(0), len, fmt, source))
                .unwrap_err(),
            OpError::Dif {
                bits,
                offset: at as u32
            }
        );
        // Size not a multiple of the protected block.
        assert!(matches!(
            s.run(&Work::dif_check(prot.at(0), 1000, fmt, source)),
            Err(OpError::Invalid(ValidationError::LengthNotMultiple {
                of: 520,
                ..
            }))
        ));
    });
}

#[test]
fn noop_drain_cache_flush() {
    on_both(|s, p, sp| {
        let b = p.buf(sp, 8192);
        assert_eq!(s.run(&Work::noop()).unwrap(), Output::Done);
        assert_eq!(
            s.run(&Work::cache_flush(b.at(0), 8192, false)).unwrap(),
            Output::Done
        );
        assert_eq!(
            s.run(&Work::cache_flush(b.at(0), 8192, true)).unwrap(),
            Output::Done
        );
        // Drain after a burst: every earlier descriptor is complete when it completes.
        let src = p.buf(sp, 65536);
        let dst = p.buf(sp, 65536);
        let data = pattern(65536, 7);
        src.write(0, &data);
        let toks: Vec<_> = (0..8)
            .map(|k| {
                s.submit(
                    &Work::memmove(src.at(k * 8192), dst.at(k * 8192), 8192),
                    dsa::Notify::Poll,
                )
                .unwrap()
            })
            .collect();
        let d = s.submit(&Work::drain(), dsa::Notify::Poll).unwrap();
        assert_eq!(s.wait(d, WAIT).unwrap(), Output::Done);
        assert_eq!(dst.all(), data);
        for t in toks {
            assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
        }
        // Options the device supports pass; fence outside a batch does not.
        let w = Work::memmove(src.at(0), dst.at(0), 64)
            .with_cache_write()
            .with_dest_readback()
            .with_strict_ordering();
        assert_eq!(s.run(&w).unwrap(), Output::Done);
        assert_eq!(
            s.run(&Work::noop().with_fence()).unwrap_err(),
            OpError::Invalid(ValidationError::FenceOutsideBatch)
        );
    });
}

#[test]
fn validation_errors_before_submission() {
    let (rig, dev) = up(Exec::Deterministic);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    let b = rig.plat.buf(AddressSpace::NoPasid, 1 << 16);
    let before = rig.portal.posted.load(std::sync::atomic::Ordering::Relaxed);
    let inv = |r: Result<Output, OpError>| match r {
        Err(OpError::Invalid(v)) => v,
        other => panic!("expected a validation error, got {other:?}"),
    };
    // Default WQ max transfer is 2 MiB.
    assert_eq!(
        inv(s.run(&Work::memmove(b.at(0), b.at(0x1000), 4 << 20))),
        ValidationError::TooLarge {
            len: 4 << 20,
            max: 2 << 20
        }
    );
    assert!(matches!(
        inv(s.run(&Work::dualcast(b.at(0), b.at(0x1000), b.at(0x2008), 16))),
        ValidationError::DualcastAddress { .. }
    ));
    assert_eq!(
        inv(s.run(&Work::dualcast(b.at(0), b.at(0x100), b.at(0x1100), 0x200))),
        ValidationError::Overlap
    );
    assert!(matches!(
        inv(s.run(&Work::create_delta(
            b.at(4),
            b.at(0x1000),
            64,
            b.at(0x2000),
            80
        ))),
        ValidationError::Misaligned { .. }
    ));
    assert_eq!(
        inv(s.run(&Work::create_delta(
            b.at(0),
            b.at(0x1000),
            64,
            b.at(0x2000),
            75
        ))),
        ValidationError::DeltaRecordMax(75)
    );
    assert_eq!(
        inv(s.run(&Work::create_delta(
            b.at(0),
            b.at(0x1000),
            60,
            b.at(0x2000),
            80
        ))),
        ValidationError::LengthNotMultiple { len: 60, of: 8 }
    );
    assert_eq!(
        inv(s.run(&Work::apply_delta(b.at(0), 15, b.at(0x1000), 64))),
        ValidationError::DeltaRecordLen(15)
    );
    assert_eq!(
        inv(s.run(&Work::copy_crc(b.at(0), b.at(10), 100, 0))),
        ValidationError::Overlap
    );
    assert_eq!(
        inv(s.run(&Work::memmove(u64::MAX - 10, b.at(0), 100))),
        ValidationError::AddressWrap
    );
    assert!(matches!(
        inv(s.run_batch(&[Work::noop()])),
        ValidationError::BatchSize { count: 1, .. }
    ));
    assert_eq!(
        inv(s.run_batch(&[Work::noop(), Work::drain()])),
        ValidationError::DrainInBatch
    );
    assert!(matches!(
        inv(s.run(&Work::noop().with_block_on_fault())),
        ValidationError::FlagUnsupported(_)
    ));
    // Nothing reached the portal.
    assert_eq!(
        rig.portal.posted.load(std::sync::atomic::Ordering::Relaxed),
        before
    );
    assert!(dev.caps().supports(Opcode::Batch));
}

#[test]
fn raw_completion_records_of_single_and_batch_operations() {
    on_both(|s, p, sp| {
        let src = p.buf(sp, 8192);
        let dst = p.buf(sp, 8192);
        src.write(0, &pattern(8192, 77));
        let t = s
            .submit(
                &Work::memmove(src.at(0), dst.at(0), 4096),
                dsa::Notify::Poll,
            )
            .unwrap();
        assert_eq!(s.completion_record(t), None, "in flight or not yet reaped");
        assert_eq!(s.wait(t, WAIT).unwrap(), Output::Done);
        let cr = s
            .completion_record(t)
            .expect("record of a finished operation");
        assert_eq!(cr.status_code(), dsa_spec::status::SUCCESS);
        assert_eq!((cr.bytes_completed, cr.fault_addr), (0, 0));
        // A compare that differs: result byte 1, first difference in bytes_completed.
        let t = s
            .submit(
                &Work::compare(src.at(0), dst.at(0), 8192),
                dsa::Notify::Poll,
            )
            .unwrap();
        assert!(matches!(
            s.wait(t, WAIT).unwrap(),
            Output::Compare {
                equal: false,
                first_difference: Some(4096),
                ..
            }
        ));
        let cr = s.completion_record(t).unwrap();
        assert_eq!((cr.result, cr.bytes_completed), (1, 4096));
        // Batch: the batch record counts descriptors, members have their own records.
        let members = [
            Work::memmove(src.at(4096), dst.at(4096), 4096),
            Work::compare(src.at(0), dst.at(0), 8192),
        ];
        let t = s.submit_batch(&members, dsa::Notify::Poll).unwrap();
        s.wait(t, WAIT).unwrap();
        let cr = s.completion_record(t).unwrap();
        assert_eq!(
            (cr.status_code(), cr.bytes_completed),
            (dsa_spec::status::SUCCESS, 2)
        );
        let m1 = s.batch_member_record(t, 1).unwrap();
        assert_eq!(
            (m1.status_code(), m1.result),
            (dsa_spec::status::SUCCESS, 0)
        );
        assert_eq!(dst.all(), src.all());
        // A stale token names nothing once its slot is reused.
        let old = t;
        for _ in 0..64 {
            s.run(&Work::noop()).unwrap();
        }
        assert_eq!(s.completion_record(old), None);
    });
}
