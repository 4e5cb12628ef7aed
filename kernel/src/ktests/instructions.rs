//! Architectural behaviour of MOVDIR64B, ENQCMD, ENQCMDS and IA32_PASID on ordinary
//! memory (Intel SDM Vol. 2 MOVDIR64B, ENQCMD, ENQCMDS; IA32_PASID in Vol. 4). Under QEMU these are the project's TCG patches; on
//! hardware the same tests hold. A CPU without the features runs only the #UD test.

use core::arch::x86_64::__cpuid_count;

use crate::arch::{self, percpu, smp};
use crate::ktest;
use crate::ktest::Outcome;
use crate::mm::{self, FrameBlock};

/// IA32_PASID.
const IA32_PASID: u32 = 0xD93;
/// IA32_PASID valid bit.
const PASID_VALID: u64 = 1 << 31;
/// RFLAGS arithmetic flags CF, PF, AF, ZF, SF, OF.
const ARITH_FLAGS: u64 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x800;
const ZF: u64 = 0x40;
/// Fill pattern of destination buffers (so "nothing written" is observable).
const POISON: u8 = 0xEE;

fn has_movdir64b() -> bool {
    arch::features().movdir64b
}
fn has_enqcmd() -> bool {
    arch::features().enqcmd
}

/// A 4 KiB page: source pattern at offset 0x100 + `src_skew`, a poisoned destination at
/// 0x800 (64-byte aligned).
struct Scratch {
    page: FrameBlock,
}

const SRC_OFF: usize = 0x100;
const DST_OFF: usize = 0x800;

impl Scratch {
    fn new(src_skew: usize) -> Scratch {
        let mut page = mm::alloc_frames(4096, 4096).expect("scratch page");
        let s = page.as_mut_slice();
        for (i, b) in s[SRC_OFF + src_skew..SRC_OFF + src_skew + 64]
            .iter_mut()
            .enumerate()
        {
            *b = (i as u8).wrapping_mul(7).wrapping_add(1);
        }
        s[DST_OFF - 64..DST_OFF + 128].fill(POISON);
        Scratch { page }
    }
    fn src(&self, skew: usize) -> u64 {
        self.page.addr() + (SRC_OFF + skew) as u64
    }
    fn dst(&self) -> u64 {
        self.page.addr() + DST_OFF as u64
    }
    fn bytes(&mut self, off: usize, len: usize) -> &[u8] {
        &self.page.as_mut_slice()[off..off + len]
    }
    /// The destination and the 64 bytes on each side are all still poison.
    fn dst_untouched(&mut self) -> bool {
        self.bytes(DST_OFF - 64, 192).iter().all(|&b| b == POISON)
    }
}

/// Runs `insn` (one of the three, Intel syntax with `{d}` = destination register and
/// `{s}` = source address) with every arithmetic flag set first; returns RFLAGS after.
macro_rules! with_flags_set {
    ($insn:literal, $d:expr, $s:expr) => {{
        let flags: u64;
        // SAFETY: the caller passes a 64-byte-aligned destination inside a scratch page it
        // owns and a 64-byte readable source; the push/pop pair leaves the stack balanced
        // and changes only the arithmetic flags.
        unsafe {
            core::arch::asm!(
                "pushfq",
                "or qword ptr [rsp], {m}",
                "popfq",
                $insn,
                "pushfq",
                "pop {f}",
                d = in(reg) $d,
                s = in(reg) $s,
                m = in(reg) ARITH_FLAGS,
                f = lateout(reg) flags,
            )
        };
        flags
    }};
}

ktest!(
    fn cpuid_reports_movdir64b_and_enqcmd() -> Outcome {
        let l7 = __cpuid_count(7, 0);
        let (m, e) = (l7.ecx & (1 << 28) != 0, l7.ecx & (1 << 29) != 0);
        assert_eq!(m, has_movdir64b(), "cached feature MOVDIR64B");
        assert_eq!(e, has_enqcmd(), "cached feature ENQCMD");
        if !m && !e {
            return ktest::skip("CPU model without MOVDIR64B/ENQCMD (e.g. qemu64)");
        }
        assert!(
            m && e,
            "-cpu max of the patched QEMU has both (movdir64b={m} enqcmd={e})"
        );
        // The same on every CPU (the kernel assumes symmetric features).
        let all = smp::run_on_all(super::HANG, || __cpuid_count(7, 0).ecx & (3 << 28))
            .expect("run_on_all");
        assert!(
            all.iter().all(|&x| x == 3 << 28),
            "per-CPU CPUID.7.ECX: {all:x?}"
        );
        Outcome::Pass
    }
);

ktest!(
    fn absent_instructions_raise_ud() -> Outcome {
        if has_movdir64b() || has_enqcmd() {
            return ktest::skip("the CPU has the instructions");
        }
        let mut s = Scratch::new(0);
        let (d, src) = (s.dst(), s.src(0));
        // SAFETY: without the feature the instruction raises #UD before touching memory;
        // the destination is our scratch page either way.
        let r = unsafe {
            crate::probe_asm!("movdir64b {d}, zmmword ptr [{s}]", d = in(reg) d, s = in(reg) src)
        };
        assert_eq!(r.map_err(|f| f.vector), Err(6), "MOVDIR64B");
        // SAFETY: as above.
        let r = unsafe {
            crate::probe_asm!("enqcmds {d}, zmmword ptr [{s}]", d = in(reg) d, s = in(reg) src)
        };
        assert_eq!(r.map_err(|f| f.vector), Err(6), "ENQCMDS");
        // SAFETY: RDMSR of a missing MSR raises #GP and reads nothing.
        let r =
            unsafe { crate::probe_asm!("rdmsr", in("ecx") IA32_PASID, out("eax") _, out("edx") _) };
        assert_eq!(r.map_err(|f| f.vector), Err(13), "RDMSR IA32_PASID");
        assert!(s.dst_untouched());
        Outcome::Pass
    }
);

ktest!(
    fn movdir64b_to_ram_writes_the_64_bytes_and_keeps_flags() -> Outcome {
        if !has_movdir64b() {
            return ktest::skip("no MOVDIR64B");
        }
        // Source at several alignments (the source has no alignment rule).
        for skew in [0usize, 1, 8, 63] {
            let mut s = Scratch::new(skew);
            let f = with_flags_set!("movdir64b {d}, zmmword ptr [{s}]", s.dst(), s.src(skew));
            assert_eq!(
                f & ARITH_FLAGS,
                ARITH_FLAGS,
                "flags untouched (skew {skew})"
            );
            let want: alloc::vec::Vec<u8> = s.bytes(SRC_OFF + skew, 64).to_vec();
            assert_eq!(s.bytes(DST_OFF, 64), &want[..], "destination (skew {skew})");
            assert!(s.bytes(DST_OFF - 64, 64).iter().all(|&b| b == POISON));
            assert!(s.bytes(DST_OFF + 64, 64).iter().all(|&b| b == POISON));
        }
        Outcome::Pass
    }
);

ktest!(
    fn movdir64b_misaligned_destination_is_gp0() -> Outcome {
        if !has_movdir64b() {
            return ktest::skip("no MOVDIR64B");
        }
        for mis in [1u64, 8, 32, 63] {
            let mut s = Scratch::new(0);
            let (d, src) = (s.dst() + mis, s.src(0));
            // SAFETY: the fault is expected; if the CPU wrongly wrote, it wrote into our
            // scratch page, which the assertion below notices.
            let r = unsafe {
                crate::probe_asm!("movdir64b {d}, zmmword ptr [{s}]", d = in(reg) d, s = in(reg) src)
            };
            let f = r.expect_err("misaligned MOVDIR64B must fault");
            assert!(
                f.is_general_protection() && f.error_code == 0,
                "{f} (offset {mis})"
            );
            assert!(s.dst_untouched(), "nothing written (offset {mis})");
        }
        Outcome::Pass
    }
);

/// Writes IA32_PASID under a fixup.
fn try_write_pasid(v: u64) -> Result<(), arch::fault::Fault> {
    // SAFETY: IA32_PASID only affects ENQCMD, which no kernel code outside these tests
    // executes; a rejected value raises #GP, caught here.
    unsafe {
        crate::probe_asm!("wrmsr", in("ecx") IA32_PASID, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    }
}

fn read_pasid() -> u64 {
    // SAFETY: callers checked CPUID ENQCMD, which makes IA32_PASID exist.
    unsafe { arch::rdmsr(IA32_PASID) }
}

/// Restores IA32_PASID to 0 when dropped (so a failing assertion leaves no state behind).
struct PasidReset;
impl Drop for PasidReset {
    fn drop(&mut self) {
        let _ = try_write_pasid(0);
    }
}

ktest!(
    fn ia32_pasid_resets_to_zero_round_trips_and_rejects_reserved_bits() -> Outcome {
        if !has_enqcmd() {
            return ktest::skip("no ENQCMD (no IA32_PASID)");
        }
        // Reset value, on every CPU (nothing in the kernel writes it).
        let all = smp::run_on_all(super::HANG, read_pasid).expect("run_on_all");
        assert!(all.iter().all(|&v| v == 0), "IA32_PASID at reset: {all:x?}");
        let _reset = PasidReset;
        for v in [PASID_VALID | 0x1234, 0xF_FFFF, PASID_VALID | 0xF_FFFF, 0] {
            try_write_pasid(v).unwrap_or_else(|f| panic!("WRMSR {v:#x}: {f}"));
            assert_eq!(read_pasid(), v, "round trip");
        }
        try_write_pasid(PASID_VALID | 7).unwrap();
        for bad in [1u64 << 20, 1 << 30, 0x7FF0_0000, 1 << 32, 1 << 63] {
            let f = try_write_pasid(bad | PASID_VALID | 7).expect_err("reserved bit accepted");
            assert!(
                f.is_general_protection() && f.error_code == 0,
                "{bad:#x}: {f}"
            );
            assert_eq!(read_pasid(), PASID_VALID | 7, "value kept after #GP");
        }
        Outcome::Pass
    }
);

ktest!(
    fn enqcmds_to_ram_reports_retry_and_writes_nothing() -> Outcome {
        if !has_enqcmd() {
            return ktest::skip("no ENQCMD");
        }
        // dword 0: privileged, PASID 5 (bits 30:20 zero, so no #GP).
        let mut s = Scratch::new(0);
        s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4]
            .copy_from_slice(&(0x8000_0005u32).to_le_bytes());
        let f = with_flags_set!("enqcmds {d}, zmmword ptr [{s}]", s.dst(), s.src(0));
        assert_eq!(
            f & ARITH_FLAGS,
            ZF,
            "ZF=1 (retry), CF/PF/AF/SF/OF cleared: {f:#x}"
        );
        assert!(s.dst_untouched(), "ENQCMDS to RAM wrote memory");
        Outcome::Pass
    }
);

ktest!(
    fn enqcmd_to_ram_reports_retry_and_writes_nothing() -> Outcome {
        if !has_enqcmd() {
            return ktest::skip("no ENQCMD");
        }
        let _reset = PasidReset;
        try_write_pasid(PASID_VALID | 0x42).unwrap();
        // Interrupts off: IA32_PASID is this CPU's, and nothing else runs here meanwhile.
        let (f, untouched) = x86_64::instructions::interrupts::without_interrupts(|| {
            let mut s = Scratch::new(0);
            s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4].fill(0);
            let f = with_flags_set!("enqcmd {d}, zmmword ptr [{s}]", s.dst(), s.src(0));
            (f, s.dst_untouched())
        });
        assert_eq!(
            f & ARITH_FLAGS,
            ZF,
            "ZF=1 (retry), CF/PF/AF/SF/OF cleared: {f:#x}"
        );
        assert!(untouched, "ENQCMD to RAM wrote memory");
        Outcome::Pass
    }
);

/// ENQCMD under a fixup; `Ok(zf)` when it did not fault.
fn probe_enqcmd(d: u64, s: u64) -> Result<bool, arch::fault::Fault> {
    let z: u8;
    // SAFETY: the destination is a scratch page of the caller's; ENQCMD to RAM writes
    // nothing, and a fault is caught by the fixup.
    let r = unsafe {
        crate::probe_asm!("enqcmd {d}, zmmword ptr [{s}]\n setz {z}", d = in(reg) d, s = in(reg) s, z = out(reg_byte) z)
    };
    r.map(|()| z != 0)
}

fn probe_enqcmds(d: u64, s: u64) -> Result<bool, arch::fault::Fault> {
    let z: u8;
    // SAFETY: as in `probe_enqcmd`.
    let r = unsafe {
        crate::probe_asm!("enqcmds {d}, zmmword ptr [{s}]\n setz {z}", d = in(reg) d, s = in(reg) s, z = out(reg_byte) z)
    };
    r.map(|()| z != 0)
}

ktest!(
    fn enqcmd_gp_without_valid_pasid_or_with_nonzero_low_dword() -> Outcome {
        if !has_enqcmd() {
            return ktest::skip("no ENQCMD");
        }
        let _reset = PasidReset;
        let mut s = Scratch::new(0);
        s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4].fill(0);
        let (d, src) = (s.dst(), s.src(0));
        x86_64::instructions::interrupts::without_interrupts(|| {
            // IA32_PASID.valid = 0 (PASID bits set but not valid).
            try_write_pasid(0x42).unwrap();
            let f = probe_enqcmd(d, src).expect_err("ENQCMD with IA32_PASID invalid");
            assert!(f.is_general_protection() && f.error_code == 0, "{f}");
            // Valid PASID: accepted by the CPU (ZF=1 for RAM).
            try_write_pasid(PASID_VALID | 0x42).unwrap();
            assert_eq!(probe_enqcmd(d, src), Ok(true));
            // Source dword 0 must be zero.
            for v in [1u32, 0x8000_0000, 0x42] {
                s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4].copy_from_slice(&v.to_le_bytes());
                let f = probe_enqcmd(d, src).expect_err("ENQCMD with dword 0 != 0");
                assert!(
                    f.is_general_protection() && f.error_code == 0,
                    "{v:#x}: {f}"
                );
            }
            // Misaligned destination.
            s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4].fill(0);
            let f = probe_enqcmd(d + 16, src).expect_err("misaligned ENQCMD");
            assert!(f.is_general_protection() && f.error_code == 0, "{f}");
        });
        assert!(s.dst_untouched());
        Outcome::Pass
    }
);

ktest!(
    fn enqcmds_gp_when_source_bits_30_20_are_set() -> Outcome {
        if !has_enqcmd() {
            return ktest::skip("no ENQCMD");
        }
        let mut s = Scratch::new(0);
        let (d, src) = (s.dst(), s.src(0));
        for (v, ok) in [
            (0x0000_0001u32, true),
            (0x800F_FFFF, true),
            (0x0010_0000, false),
            (0x4000_0000, false),
            (0xFFFF_FFFF, false),
            (0x8020_0003, false),
        ] {
            s.page.as_mut_slice()[SRC_OFF..SRC_OFF + 4].copy_from_slice(&v.to_le_bytes());
            let r = probe_enqcmds(d, src);
            if ok {
                assert_eq!(
                    r,
                    Ok(true),
                    "dword 0 {v:#x}: accepted by the CPU, retry from RAM"
                );
            } else {
                let f = r.expect_err("ENQCMDS with bits 30:20 set");
                assert!(
                    f.is_general_protection() && f.error_code == 0,
                    "{v:#x}: {f}"
                );
            }
        }
        let f = probe_enqcmds(d + 8, src).expect_err("misaligned ENQCMDS");
        assert!(f.is_general_protection() && f.error_code == 0, "{f}");
        assert!(s.dst_untouched());
        Outcome::Pass
    }
);

/// Reads the 64 bytes at `line` as eight 8-byte loads kept in one 64-byte block of code:
/// a TCG translation block never splits them (blocks end at page boundaries), and another
/// vCPU's exclusive section only starts between blocks.
fn read_line(line: u64) -> [u64; 8] {
    let (a, b, c, d, e, f, g, h): (u64, u64, u64, u64, u64, u64, u64, u64);
    // SAFETY: `line` is a 64-byte-aligned line inside a scratch page the caller keeps
    // alive; the block only loads from it.
    unsafe {
        core::arch::asm!(
            ".p2align 6",
            "mov {a}, qword ptr [{p}]",
            "mov {b}, qword ptr [{p} + 8]",
            "mov {c}, qword ptr [{p} + 16]",
            "mov {d}, qword ptr [{p} + 24]",
            "mov {e}, qword ptr [{p} + 32]",
            "mov {f}, qword ptr [{p} + 40]",
            "mov {g}, qword ptr [{p} + 48]",
            "mov {h}, qword ptr [{p} + 56]",
            p = in(reg) line,
            a = out(reg) a, b = out(reg) b, c = out(reg) c, d = out(reg) d,
            e = out(reg) e, f = out(reg) f, g = out(reg) g, h = out(reg) h,
            options(nostack, readonly, preserves_flags),
        );
    }
    [a, b, c, d, e, f, g, h]
}

ktest!(
    fn movdir64b_to_ram_is_64_byte_atomic_against_other_cpus() -> Outcome {
        if !has_movdir64b() {
            return ktest::skip("no MOVDIR64B");
        }
        if percpu::cpu_count() < 2 {
            return ktest::skip("needs a second CPU");
        }
        if crate::cmdline::has("icount") {
            // QEMU runs the vCPUs one at a time then: the two never overlap.
            return ktest::skip("needs CPUs running in parallel (not -icount)");
        }
        // CPU 1 stores lines of eight equal qwords (k, k, …, k) for k = 1, 2, … with
        // MOVDIR64B; this CPU reads the line meanwhile. 64-byte write atomicity: no read
        // ever sees two different values in one line.
        let mut s = Scratch::new(0);
        s.page.as_mut_slice()[DST_OFF..DST_OFF + 64].fill(0);
        let (src, dst) = (s.src(0), s.dst());
        const STORES: u64 = 4000;
        // Handshake every 100 stores: the writer publishes a checkpoint and waits until the
        // reader has started a read after it, so the two overlap however the host schedules
        // the vCPU threads (the reader sees line 100·c − 1 at checkpoint c: at least two
        // distinct lines by construction).
        use core::sync::atomic::{AtomicU64, Ordering::Acquire, Ordering::Release};
        let checkpoint = alloc::sync::Arc::new(AtomicU64::new(0));
        let reached = alloc::sync::Arc::new(AtomicU64::new(0));
        let (cp, rd) = (checkpoint.clone(), reached.clone());
        let writer = smp::spawn_on(1, move || {
            for k in 1..=STORES {
                if k % 100 == 0 {
                    let c = k / 100;
                    cp.store(c, Release);
                    crate::time::wait_until(super::HANG, || (rd.load(Acquire) >= c).then_some(()))
                        .expect("the reader never read after checkpoint");
                }
                let line = [k; 8];
                // SAFETY: `src` is 64 readable bytes of the scratch page (kept alive by the
                // test until this job is joined) and `dst` its 64-byte-aligned destination;
                // `line` is written to the source first.
                unsafe {
                    core::ptr::copy_nonoverlapping(line.as_ptr(), src as *mut u64, 8);
                    core::arch::asm!(
                        "movdir64b {d}, zmmword ptr [{s}]",
                        d = in(reg) dst,
                        s = in(reg) src,
                        options(nostack, preserves_flags),
                    );
                }
            }
        })
        .expect("spawn writer on CPU 1");
        let (mut reads, mut torn, mut distinct, mut last) = (0u64, 0u64, 0u64, 0u64);
        let mut first_torn = None;
        while !writer.is_done() {
            let c = checkpoint.load(Acquire);
            let q = read_line(dst);
            reads += 1;
            reached.store(c, Release);
            if q.iter().any(|&v| v != q[0]) {
                torn += 1;
                first_torn.get_or_insert(q);
            } else if q[0] != last {
                distinct += 1;
                last = q[0];
            }
        }
        writer.join(super::HANG).expect("writer finished");
        log::info!(
            "movdir64b atomicity: {STORES} stores, {reads} reads, {distinct} distinct lines seen, {torn} torn"
        );
        if torn > 0 {
            return Outcome::Fail(alloc::format!(
                "{torn} of {reads} reads saw a torn MOVDIR64B line, first {:x?}",
                first_torn
            ));
        }
        // The reader must have raced with the writer, or nothing was tested.
        assert!(
            distinct >= 2,
            "the reader saw {distinct} distinct line(s) in {reads} reads: no overlap with the writer"
        );
        assert_eq!(read_line(dst), [STORES; 8], "the last store");
        Outcome::Pass
    }
);
