//! Interrupt posting (`iommu::PostedRoute`, `iommu::PostedDescriptor`; Intel VT-d
//! Architecture Specification rev 4.1, §5.2) through the MSI of QEMU's `edu` device: the
//! remapping unit alone, no demultiplexer. Posted delivery (PIR bit, ON, notification NV at
//! NDST), suppression with SN, URG overriding SN, coalescing while ON is set, the fault
//! reasons for bad descriptors and entries, and the unit's descriptor updates against other
//! CPUs' locked instructions. Without CAP.PI (`qemu-run.sh --posted-intr off`) they skip,
//! except the one that checks that a posted-format entry is then refused.
//!
//! "No notification" is checked without waiting: the MSI is raised by an `edu` register
//! write on this CPU, so the post (and a notification to this CPU's APIC) is complete when
//! the write returns; with interrupts disabled a notification stays pending in the APIC's
//! IRR, which the tests read.

use alloc::boxed::Box;
use alloc::format;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use core::time::Duration;
use hwio::Registers as _;

use vtd::spec::{IrteFormat, PidControl, PostedIrte, SourceValidation};
use x86_64::instructions::interrupts::without_interrupts;

use super::{Edu, edu_or_skip, next_fault};
use crate::arch::{apic, percpu, smp};
use crate::iommu::{self, FaultReason, MsiRoute, PostedDescriptor, PostedRoute};
use crate::ktest;
use crate::ktest::Outcome;
use crate::mm::{self, FrameBlock};
use crate::pci::{Msi, MsiMessage};

/// `edu` registers beyond the ones the parent module names.
const EDU_FACTORIAL: u64 = 0x08;
const EDU_STATUS: u64 = 0x20;
/// Status bit 7: raise an interrupt when a factorial is done (from the device's thread).
const EDU_STATUS_IRQFACT: u32 = 0x80;

/// A 64-byte-aligned address with nothing behind it (above 512 MiB of RAM and the PCI
/// holes, below the 48-bit address width).
const UNASSIGNED: u64 = 1 << 40;

fn setup() -> Result<Edu, Outcome> {
    let edu = edu_or_skip()?;
    if !iommu::posted_supported() {
        return Err(ktest::skip("no posted interrupts (CAP.PI=0)"));
    }
    Ok(edu)
}

/// A fresh descriptor that outlives every route (a few bytes per test run).
fn new_pid() -> &'static PostedDescriptor {
    Box::leak(Box::new(PostedDescriptor::new()))
}

/// Whether `vector` is pending in this CPU's IRR.
fn irr(vector: u8) -> bool {
    apic::read(apic::reg::IRR + 0x10 * u32::from(vector / 32)) & (1 << (vector % 32)) != 0
}

/// What the notification handler saw, last time it ran.
#[derive(Default)]
struct Seen {
    count: AtomicU64,
    cpu: AtomicUsize,
    on: AtomicBool,
    pir: [AtomicU64; 4],
}

/// A notification vector on `cpu`, set as `pid`'s NV/NDST. Its handler counts and snapshots
/// the descriptor and leaves it alone: the tests decide when ON is cleared.
struct Notification {
    cpu: usize,
    vector: u8,
    seen: Arc<Seen>,
}

impl Notification {
    fn new(cpu: usize, pid: &'static PostedDescriptor) -> Self {
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        let vector = crate::irq::alloc_vector_with_handler(cpu, "ktest-posted", move |c| {
            s.cpu.store(c.cpu, Ordering::SeqCst);
            s.on.store(pid.on(), Ordering::SeqCst);
            for (q, w) in s.pir.iter().enumerate() {
                w.store(pid.pir(q), Ordering::SeqCst);
            }
            s.count.fetch_add(1, Ordering::SeqCst);
        })
        .expect("a notification vector");
        pid.set_notification(cpu, vector).expect("NV/NDST");
        assert_eq!(
            pid.notification().unwrap(),
            (vector, percpu::apic_id(cpu).unwrap())
        );
        Self { cpu, vector, seen }
    }

    fn count(&self) -> u64 {
        self.seen.count.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until the handler has run `n` times in all.
    fn wait(&self, n: u64) -> bool {
        crate::time::wait_until(Duration::from_secs(2), || (self.count() >= n).then_some(()))
            .is_ok()
    }
}

impl Drop for Notification {
    fn drop(&mut self) {
        let _ = crate::irq::free_vector(self.cpu, self.vector);
    }
}

/// Programs and enables the edu's MSI with `msg`.
fn enable_msi(edu: &Edu, msg: MsiMessage) -> Msi {
    let msi = edu.dev.msi().expect("edu has MSI");
    msi.program(msg, 1).unwrap();
    msi.set_enabled(true).unwrap();
    msi
}

/// One post from the edu's factorial thread (a QEMU thread of the device, not a vCPU).
fn raise_from_device_thread(edu: &Edu) {
    edu.mmio.write32(EDU_STATUS, EDU_STATUS_IRQFACT);
    edu.mmio.write32(EDU_FACTORIAL, 5);
}

/// The edu's requester-ID check as a posted IRTE carries it.
fn source(edu: &Edu) -> SourceValidation {
    SourceValidation::RequesterId {
        sid: edu.dev.requester_id(),
        sq: 0,
    }
}

/// A 4 KiB frame holding a descriptor written by hand (reserved bits included).
struct RawPid {
    block: FrameBlock,
}

impl RawPid {
    fn new(control: u64) -> Self {
        let b = mm::alloc_frames(4096, 4096).expect("a frame");
        let p = Self { block: b };
        p.qword(4).store(control, Ordering::SeqCst);
        p
    }
    fn addr(&self) -> u64 {
        self.block.addr()
    }
    fn qword(&self, i: usize) -> &AtomicU64 {
        assert!(i < 8);
        // SAFETY: qword `i` of the first 64 bytes of an owned, zeroed, identity-mapped frame
        // that lives as long as `self`; the remapping unit and the CPUs access it with
        // locked operations only.
        unsafe { AtomicU64::from_ptr(self.block.as_ptr::<u64>().add(i)) }
    }
}

ktest!(
    fn posted_msi_sets_its_bit_and_notifies_nv_at_ndst() -> Outcome {
        let edu = match setup() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        // NDST: the last CPU (another one when there are several; APIC ID 256 in the
        // x2APIC configuration). Bit 0xc5 lives in PIR qword 3.
        let far = percpu::cpu_count() - 1;
        const VV: u8 = 0xc5;
        let pid = new_pid();
        let n = Notification::new(far, pid);
        let mut route = PostedRoute::new(dev, pid, VV).unwrap();
        match route.irte() {
            Some(IrteFormat::Posted(e)) => {
                assert_eq!((e.descriptor, e.vector, e.urgent), (pid.addr(), VV, false));
                assert_eq!(
                    e.svt,
                    source(&edu),
                    "same source-ID check as a remapped entry"
                );
            }
            other => panic!("IRTE {other:?}"),
        }
        let msg = route.message();
        let msi = enable_msi(&edu, msg);
        let before = crate::irq::count(far, n.vector);

        edu.raise_irq();
        assert!(
            n.wait(1),
            "no notification on CPU {far} vector {:#x}",
            n.vector
        );
        edu.ack_irq();
        assert_eq!(n.seen.cpu.load(Ordering::SeqCst), far, "notified at NDST");
        assert_eq!(crate::irq::count(far, n.vector), before + 1);
        assert!(
            n.seen.on.load(Ordering::SeqCst),
            "ON set with the notification"
        );
        assert_eq!(
            [0, 1, 2, 3].map(|q| n.seen.pir[q].load(Ordering::SeqCst)),
            [0, 0, 0, 1 << (VV % 64)],
            "PIR[VV] set, nothing else"
        );
        // The receiver's protocol: clear ON, then take PIR.
        assert!(pid.test_and_clear_on());
        assert_eq!(pid.take_pir(3), 1 << (VV % 64));
        assert!(pid.pir_is_empty() && !pid.on());
        // With ON clear again, the next post notifies again.
        edu.raise_irq();
        assert!(n.wait(2), "second notification");
        edu.ack_irq();
        assert!(pid.pir_bit(VV) && pid.on());
        assert!(pid.test_and_clear_on() && pid.clear_pir_bit(VV));
        // A post from the device's own thread takes the same path.
        raise_from_device_thread(&edu);
        assert!(n.wait(3), "notification for the factorial interrupt");
        edu.mmio.write32(EDU_STATUS, 0);
        edu.ack_irq();
        assert!(pid.test_and_clear_on() && pid.clear_pir_bit(VV));

        // Retarget: another descriptor (notifying CPU 0), another bit, same message. A
        // request that reached the old descriptor just before (here: posted under SN, so
        // it notified nobody) is found by checking the old bit once and moved over.
        let pid0 = new_pid();
        let n0 = Notification::new(0, pid0);
        pid.set_sn();
        edu.raise_irq();
        edu.ack_irq();
        pid.clear_sn();
        let (old, old_vv) = route.retarget_posted(pid0, 0x07).unwrap();
        assert!(
            core::ptr::eq(old, pid) && old_vv == VV,
            "the previous target"
        );
        assert_eq!(route.message(), msg);
        assert_eq!(route.device(), dev);
        assert!(core::ptr::eq(route.descriptor(), pid0));
        assert_eq!((route.vector(), route.urgent()), (0x07, false));
        assert!(
            old.clear_pir_bit(old_vv),
            "the late request at the old descriptor"
        );
        // Moving it: the new bit, then the ON/notify protocol (ON was clear: notify).
        assert!(!pid0.set_pir_bit(0x07));
        assert!(!pid0.test_and_set_on());
        crate::irq::send_ipi(0, n0.vector).unwrap();
        assert!(n0.wait(1), "self-notification for the moved request");
        assert_eq!(n0.seen.pir[0].load(Ordering::SeqCst), 1 << 7);
        assert!(pid0.test_and_clear_on() && pid0.clear_pir_bit(0x07));
        edu.raise_irq();
        assert!(n0.wait(2), "no notification after the retarget");
        edu.ack_irq();
        assert!(pid0.pir_bit(0x07) && pid0.on());
        assert!(
            pid.pir_is_empty() && !pid.on(),
            "nothing at the old descriptor"
        );
        assert_eq!(n.count(), 3);

        // Posted → remapped → posted, in place: the message never changes.
        let hits = Arc::new(AtomicU64::new(0));
        let h = hits.clone();
        let v = crate::irq::alloc_vector_with_handler(0, "ktest-posted-remap", move |_| {
            h.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let remapped = route.into_remapped(0, v).map_err(|(_, e)| e).unwrap();
        assert_eq!(remapped.message(), msg);
        assert!(matches!(remapped.irte(), Some(e) if e.vector == v && e.present));
        edu.raise_irq();
        assert!(
            crate::time::wait_until(Duration::from_secs(2), || {
                (hits.load(Ordering::SeqCst) == 1).then_some(())
            })
            .is_ok(),
            "the remapped entry delivers vector {v:#x}"
        );
        edu.ack_irq();
        assert_eq!(n0.count(), 2, "nothing posted while remapped");
        let route = remapped.into_posted(pid, VV).map_err(|(_, e)| e).unwrap();
        edu.raise_irq();
        assert!(n.wait(4), "posting again after the round trip");
        edu.ack_irq();
        assert!(pid.pir_bit(VV));

        msi.set_enabled(false).unwrap();
        let idx = route.irte_index();
        route.free().unwrap();
        crate::irq::free_vector(0, v).unwrap();
        crate::println!(
            "ktest-info: posted edu MSI via IRTE {idx}: PIR bit {VV:#x} of {:#x}, NV {:#x} at CPU {far} (APIC ID {}); retargeted to bit 0x07 of {:#x}, CPU 0",
            pid.addr(),
            n.vector,
            percpu::apic_id(far).unwrap_or(0),
            pid0.addr()
        );
        Outcome::Pass
    }
);

ktest!(
    fn posted_sn_suppresses_the_notification_and_urg_overrides_sn() -> Outcome {
        let edu = match setup() {
            Ok(e) => e,
            Err(o) => return o,
        };
        const VV: u8 = 0x41;
        let cpu = percpu::current_index();
        let pid = new_pid();
        let n = Notification::new(cpu, pid);
        let mut route = PostedRoute::new(edu.addr(), pid, VV).unwrap();
        let msi = enable_msi(&edu, route.message());

        // SN, URG clear: the bit is set, ON stays clear, nothing is sent.
        pid.set_sn();
        without_interrupts(|| {
            edu.raise_irq();
            assert!(pid.pir_bit(VV), "the request is posted under SN");
            assert!(!pid.on(), "ON stays clear under SN");
            assert!(!irr(n.vector), "a notification under SN");
        });
        assert_eq!(n.count(), 0);
        edu.ack_irq();

        // URG: the same post notifies despite SN.
        route.set_urgent(true).unwrap();
        assert!(matches!(route.irte(), Some(IrteFormat::Posted(e)) if e.urgent));
        assert!(pid.clear_pir_bit(VV));
        without_interrupts(|| {
            edu.raise_irq();
            assert!(pid.pir_bit(VV) && pid.on(), "URG sets ON despite SN");
            assert!(irr(n.vector), "URG notifies despite SN");
        });
        assert!(n.wait(1));
        assert!(n.seen.on.load(Ordering::SeqCst));
        edu.ack_irq();
        // URG does not override ON: with ON still set, an urgent post only adds its bit.
        assert!(pid.clear_pir_bit(VV));
        without_interrupts(|| {
            edu.raise_irq();
            assert!(pid.pir_bit(VV));
            assert!(!irr(n.vector), "URG notified with ON set");
        });
        assert_eq!(n.count(), 1);
        edu.ack_irq();

        // Leaving SN with a request pending: ON is clear (the post under SN did not set
        // it), so software sets it and notifies itself.
        route.set_urgent(false).unwrap();
        assert!(pid.test_and_clear_on());
        assert!(pid.clear_pir_bit(VV));
        without_interrupts(|| {
            edu.raise_irq();
            assert!(!irr(n.vector) && !pid.on());
        });
        edu.ack_irq();
        pid.clear_sn();
        assert!(!pid.sn() && !pid.pir_is_empty());
        assert!(!pid.test_and_set_on(), "ON was clear under SN");
        crate::irq::send_ipi(cpu, n.vector).unwrap();
        assert!(n.wait(2), "self-notification");
        // SN clear: a post with ON set notifies nobody, with ON clear it notifies.
        assert!(pid.test_and_clear_on());
        without_interrupts(|| {
            edu.raise_irq();
            assert!(pid.on() && irr(n.vector));
        });
        assert!(n.wait(3));
        edu.ack_irq();

        msi.set_enabled(false).unwrap();
        drop(route);
        Outcome::Pass
    }
);

ktest!(
    fn posted_requests_coalesce_while_on_is_set() -> Outcome {
        let edu = match setup() {
            Ok(e) => e,
            Err(o) => return o,
        };
        const VV: u8 = 0x02;
        const VV2: u8 = 0x3f;
        let cpu = percpu::current_index();
        let pid = new_pid();
        let n = Notification::new(cpu, pid);
        let mut route = PostedRoute::new(edu.addr(), pid, VV).unwrap();
        let msi = enable_msi(&edu, route.message());

        without_interrupts(|| {
            edu.raise_irq();
            assert!(pid.on() && irr(n.vector), "first post notifies");
        });
        assert!(n.wait(1));
        edu.ack_irq();
        assert!(pid.on(), "nobody cleared ON");
        // Two more posts, another bit (same descriptor) then the same bit again: bits only.
        route.retarget_posted(pid, VV2).unwrap();
        without_interrupts(|| {
            edu.raise_irq();
            edu.raise_irq();
            assert!(pid.pir_bit(VV2));
            assert!(!irr(n.vector), "a second notification while ON is set");
        });
        edu.ack_irq();
        assert_eq!(n.count(), 1);
        // One harvest finds both requests; the next post notifies again.
        assert!(pid.test_and_clear_on());
        assert_eq!(pid.take_pir(0), (1 << VV) | (1 << VV2));
        without_interrupts(|| {
            edu.raise_irq();
            assert!(
                pid.on() && irr(n.vector),
                "a post after the harvest notifies"
            );
        });
        assert!(n.wait(2));
        edu.ack_irq();
        msi.set_enabled(false).unwrap();
        drop(route);
        Outcome::Pass
    }
);

ktest!(
    fn posted_faults_for_bad_descriptors_and_entries_name_the_spec_reason() -> Outcome {
        let edu = match setup() {
            Ok(e) => e,
            Err(o) => return o,
        };
        let dev = edu.addr();
        const VV: u8 = 0x10;
        let pid = new_pid();
        let n = Notification::new(0, pid);
        let mut route = PostedRoute::new(dev, pid, VV).unwrap();
        let idx = route.irte_index();
        let msi = enable_msi(&edu, route.message());
        let sv = source(&edu);
        let entry = |pda: u64, fpd: bool| {
            let mut e = PostedIrte::new(pda, VV, false, sv);
            e.fpd = fpd;
            e.encode()
        };
        let mut watch = iommu::watch_faults();
        // 0x26: the source-ID check applies to posted entries as to remapped ones.
        route.set_source_id(edu.dev.requester_id() ^ 0x08).unwrap();
        edu.raise_irq();
        let f26 = next_fault(&mut watch, dev);
        edu.ack_irq();
        assert_eq!(
            (f26.code, f26.reason, f26.irte_index),
            (0x26, FaultReason::IrSourceIdCheckFailed, Some(idx))
        );
        assert!(pid.pir_is_empty(), "a blocked request posted");
        let mut expect = |route: &mut PostedRoute, q: [u64; 2], code: u8, reason, what: &str| {
            // SAFETY: every descriptor address used here is either not RAM (the unit
            // refuses it) or memory this test owns until the route is gone.
            unsafe { route.write_irte_raw(q) }.unwrap();
            edu.raise_irq();
            let f = next_fault(&mut watch, dev);
            edu.ack_irq();
            assert_eq!(
                (f.code, f.reason, f.irte_index, f.pasid),
                (code, reason, Some(idx), None),
                "{what}"
            );
            f
        };
        // 0x27: the descriptor is not in RAM (nothing there; a device's registers).
        expect(
            &mut route,
            entry(UNASSIGNED, false),
            0x27,
            FaultReason::PostedDescriptorUnreadable,
            "descriptor at an unassigned address",
        );
        let f27 = expect(
            &mut route,
            entry(edu.mmio.phys(), false),
            0x27,
            FaultReason::PostedDescriptorUnreadable,
            "descriptor in MMIO",
        );
        // 0x28: reserved fields of the descriptor; the request is blocked before PIR changes.
        let ctl = PidControl {
            nv: n.vector,
            ndst: pid.control().ndst,
            ..PidControl::default()
        }
        .encode();
        let raw = RawPid::new(ctl | (1 << 2));
        expect(
            &mut route,
            entry(raw.addr(), false),
            0x28,
            FaultReason::PostedDescriptorReserved,
            "control bit 2 set",
        );
        raw.qword(4).store(ctl, Ordering::SeqCst);
        raw.qword(5).store(1, Ordering::SeqCst);
        let f28 = expect(
            &mut route,
            entry(raw.addr(), false),
            0x28,
            FaultReason::PostedDescriptorReserved,
            "descriptor bit 320 set",
        );
        assert_eq!(raw.qword(0).load(Ordering::SeqCst), 0, "blocked before PIR");
        assert_eq!(n.count(), 0, "nothing sent for a blocked request");
        // 0x24: reserved bits of the posted entry: an unaligned address (its bits 5:0 land
        // in reserved bits 37:32), bit 84, bits 7:2.
        let mut q = entry(pid.addr(), false);
        q[0] |= 0x20 << 32;
        let f24 = expect(
            &mut route,
            q,
            0x24,
            FaultReason::IrteReserved,
            "descriptor address not 64-byte aligned",
        );
        let mut q = entry(pid.addr(), false);
        q[1] |= 1 << 20;
        expect(
            &mut route,
            q,
            0x24,
            FaultReason::IrteReserved,
            "IRTE bit 84",
        );
        let mut q = entry(pid.addr(), false);
        q[0] |= 1 << 4;
        expect(
            &mut route,
            q,
            0x24,
            FaultReason::IrteReserved,
            "IRTE bit 4 (TM of the remapped format)",
        );
        assert!(pid.pir_is_empty() && n.count() == 0);
        // FPD suppresses the qualified posting faults: after a suppressed 0x27 the next
        // fault recorded is the following, unsuppressed one.
        // SAFETY: as above (not RAM).
        unsafe { route.write_irte_raw(entry(UNASSIGNED, true)) }.unwrap();
        edu.raise_irq();
        edu.ack_irq();
        raw.qword(5).store(0, Ordering::SeqCst);
        raw.qword(4).store(ctl | (1 << 3), Ordering::SeqCst);
        expect(
            &mut route,
            entry(raw.addr(), false),
            0x28,
            FaultReason::PostedDescriptorReserved,
            "the fault after an FPD-suppressed one",
        );
        // A clean hand-made descriptor works, and so does the original entry again.
        raw.qword(4).store(ctl, Ordering::SeqCst);
        // SAFETY: `raw` outlives the route.
        unsafe { route.write_irte_raw(entry(raw.addr(), false)) }.unwrap();
        edu.raise_irq();
        assert!(n.wait(1), "a valid hand-made descriptor notifies");
        edu.ack_irq();
        assert_eq!(raw.qword(0).load(Ordering::SeqCst), 1 << VV);
        assert_eq!(raw.qword(4).load(Ordering::SeqCst), ctl | 1, "ON set");
        route.retarget_posted(pid, VV).unwrap();
        edu.raise_irq();
        assert!(n.wait(2));
        edu.ack_irq();
        assert!(pid.pir_bit(VV) && pid.on());
        msi.set_enabled(false).unwrap();
        drop(route);
        drop(raw);
        crate::println!("ktest-info: posted faults: {f26}; {f27}; {f28}; {f24}");
        Outcome::Pass
    }
);

ktest!(
    fn posted_format_irte_is_refused_without_cap_pi() -> Outcome {
        let edu = match edu_or_skip() {
            Ok(e) => e,
            Err(o) => return o,
        };
        if iommu::posted_supported() {
            return ktest::skip("the unit has CAP.PI (run with --posted-intr off)");
        }
        let dev = edu.addr();
        let pid = new_pid();
        let n = Notification::new(0, pid);
        assert_eq!(
            PostedRoute::new(dev, pid, 1).err(),
            Some(iommu::IommuError::PostedUnsupported)
        );
        let route = MsiRoute::new(dev, 0, n.vector).unwrap();
        let idx = route.irte_index().unwrap();
        let (mut route, e) = match route.into_posted(pid, 1) {
            Err(r) => r,
            Ok(_) => panic!("converted to posted without CAP.PI"),
        };
        assert_eq!(e, iommu::IommuError::PostedUnsupported);
        let msi = enable_msi(&edu, route.message());
        // The API would not write it; a raw posted-format entry is reserved (IM) there.
        let mut watch = iommu::watch_faults();
        // SAFETY: a unit without CAP.PI never writes to the descriptor.
        unsafe {
            route.write_irte_raw(PostedIrte::new(pid.addr(), 1, false, source(&edu)).encode())
        }
        .unwrap();
        edu.raise_irq();
        let f = next_fault(&mut watch, dev);
        edu.ack_irq();
        assert_eq!(
            (f.code, f.reason, f.irte_index),
            (0x24, FaultReason::IrteReserved, Some(idx))
        );
        assert!(pid.pir_is_empty() && n.count() == 0);
        msi.set_enabled(false).unwrap();
        Outcome::Pass
    }
);

ktest!(
    fn posted_updates_are_atomic_against_other_cpus_locked_instructions() -> Outcome {
        let edu = match setup() {
            Ok(e) => e,
            Err(o) => return o,
        };
        if percpu::cpu_count() < 2 {
            return ktest::skip("needs a second CPU");
        }
        // The unit sets PIR bit 0 of a descriptor whose bits 63:8 CPU 1 uses as a counter
        // with `lock add`, while this CPU clears bit 0 after each post with `lock and`. A
        // read-modify-write by the unit that is not atomic with them loses increments
        // (or a post). ON is preset, so posts send nothing.
        //
        // Posts come from this vCPU (edu register write) and from the edu's own thread.
        // Under -icount QEMU runs the vCPUs round-robin in one thread and their locked
        // instructions are plain loads and stores: only the device thread's posts can
        // race then, and only those are made; each notifies this CPU, which halts until
        // then so that CPU 1 runs while the post lands.
        let round_robin = crate::cmdline::has("icount");
        let pid = new_pid();
        let n = Notification::new(0, pid);
        let on = if round_robin { 0 } else { vtd::spec::pid::ON };
        let ctl = pid.control().encode() | on;
        let raw = Arc::new(RawPid::new(ctl));
        let mut route = PostedRoute::new(edu.addr(), pid, 0).unwrap();
        // SAFETY: `raw` outlives the route (dropped after it below).
        unsafe {
            route.write_irte_raw(PostedIrte::new(raw.addr(), 0, false, source(&edu)).encode())
        }
        .unwrap();
        let msi = enable_msi(&edu, route.message());

        let progress = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r1, p1, s1) = (raw.clone(), progress.clone(), stop.clone());
        let counter = smp::spawn_on(1, move || {
            // Eight `lock add`s per round: the denser they are, the likelier one falls into
            // the unit's update if that is not atomic.
            let (w, mut adds) = (r1.qword(0), 0u64);
            while !s1.load(Ordering::Acquire) {
                for _ in 0..8 {
                    w.fetch_add(1 << 8, Ordering::SeqCst);
                }
                adds += 8;
                p1.store(adds, Ordering::Release);
            }
            adds
        })
        .expect("spawn on CPU 1");
        let moved = |from: u64| {
            crate::time::wait_until(Duration::from_secs(2), || {
                (progress.load(Ordering::Acquire) > from).then_some(())
            })
            .is_ok()
        };
        assert!(moved(0), "CPU 1 did not start");
        let (posts, device_posts): (u32, u32) = if round_robin { (0, 100) } else { (30_000, 200) };
        let started = progress.load(Ordering::Acquire);
        let mut lost = 0u32;
        for i in 0..posts + device_posts {
            if i < posts {
                edu.raise_irq();
            } else {
                raise_from_device_thread(&edu);
            }
            let mut notified = false;
            if round_robin {
                // Halted until the notification, a 20 ms timer as the guard (100 times).
                let before = n.count();
                for _ in 0..100 {
                    crate::time::arm_oneshot(20_000_000).expect("LAPIC timer");
                    x86_64::instructions::interrupts::enable_and_hlt();
                    notified = n.count() > before;
                    if notified {
                        break;
                    }
                }
                crate::time::stop_timer();
                raw.qword(4)
                    .fetch_and(!vtd::spec::pid::ON, Ordering::SeqCst);
            }
            // A vCPU-thread post is complete when the write returns, a notified one too
            // (PIR is set before ON); otherwise the device thread's post is waited for.
            let bit = || raw.qword(0).load(Ordering::SeqCst) & 1 != 0;
            let posted = if i < posts || notified {
                bit()
            } else {
                crate::time::wait_until(Duration::from_secs(2), || bit().then_some(())).is_ok()
            };
            if !posted {
                lost += 1;
            }
            raw.qword(0).fetch_and(!1, Ordering::SeqCst);
            // Keep the two CPUs overlapping however the host schedules them.
            if !round_robin && i % 64 == 0 {
                let p = progress.load(Ordering::Acquire);
                assert!(moved(p), "CPU 1 made no progress");
            }
        }
        assert!(
            moved(started),
            "CPU 1 made no progress while the posts were made"
        );
        stop.store(true, Ordering::Release);
        let adds = counter
            .join(Duration::from_secs(10))
            .expect("CPU 1 finished");
        edu.mmio.write32(EDU_STATUS, 0);
        edu.ack_irq();
        msi.set_enabled(false).unwrap();
        drop(route);
        let counted = raw.qword(0).load(Ordering::SeqCst) >> 8;
        crate::println!(
            "ktest-info: posted atomicity: {} posts ({device_posts} from the device thread){}, CPU 1 {adds} locked adds, {counted} counted, {lost} posts lost",
            posts + device_posts,
            if round_robin {
                " with round-robin vCPUs"
            } else {
                ""
            }
        );
        assert_eq!(lost, 0, "posts whose PIR bit never appeared");
        if counted != adds {
            return Outcome::Fail(format!(
                "CPU 1 added {adds} times but the descriptor counts {counted}: the unit's PIR update was not atomic"
            ));
        }
        assert_eq!(
            raw.qword(4).load(Ordering::SeqCst),
            ctl,
            "control untouched"
        );
        if round_robin {
            assert_eq!(
                n.count(),
                u64::from(device_posts),
                "one notification per post"
            );
        } else {
            assert_eq!(n.count(), 0, "no notification with ON set");
        }
        Outcome::Pass
    }
);

ktest!(
    fn posted_dsa_msix_message_posts() -> Outcome {
        if !iommu::is_enabled() {
            return ktest::skip("no IOMMU");
        }
        if !iommu::posted_supported() {
            return ktest::skip("no posted interrupts (CAP.PI=0)");
        }
        let Some(dev) = crate::pci::find_id(0x8086, 0x0b25).next() else {
            return ktest::skip("no DSA device (-device intel-dsa)");
        };
        let msix = dev.msix().expect("DSA has MSI-X");
        let ctl = || (dev.config_read(msix.cap().offset).unwrap() >> 16) as u16;
        if ctl() & 0x8000 != 0 {
            return ktest::skip("the DSA driver owns the device (MSI-X enabled)");
        }
        // The DSA model's MSI-X entry 0 (misc): a command with Request Completion Interrupt
        // raises it (Drain All on the idle, disabled device completes at once).
        let regs = dev.map_bar(dsa_spec::regs::BAR_MMIO).unwrap();
        dev.enable_memory_and_bus_master().unwrap();
        const VV: u8 = 0x77;
        let far = percpu::cpu_count() - 1;
        let pid = new_pid();
        let n = Notification::new(far, pid);
        let route = PostedRoute::new(dev.address(), pid, VV).unwrap();
        let saved = msix.read_entry(0).unwrap();
        msix.write_entry(0, route.message(), false).unwrap();
        msix.set_enabled(true).unwrap();
        let cmd = dsa_spec::regs::CmdReg::new(dsa_spec::regs::Command::DrainAll, 0, true);
        regs.write32(dsa_spec::regs::off::CMD, cmd.0);
        let arrived = n.wait(1);
        let status = regs.read32(dsa_spec::regs::off::CMDSTATUS);
        let cause = dsa_spec::regs::IntCause::COMMAND_COMPLETED.bits();
        regs.write32(dsa_spec::regs::off::INTCAUSE, cause);
        msix.set_enabled(false).unwrap();
        msix.write_entry(0, saved.0, saved.1).unwrap();
        assert!(
            arrived,
            "no notification for the DSA's MSI-X entry 0 (CMDSTATUS {status:#x})"
        );
        assert!(n.seen.on.load(Ordering::SeqCst));
        assert_eq!(n.seen.pir[1].load(Ordering::SeqCst), 1 << (VV % 64));
        assert_eq!(n.seen.cpu.load(Ordering::SeqCst), far);
        crate::println!(
            "ktest-info: posted DSA MSI-X entry 0 of {} via IRTE {}: PIR bit {VV:#x}, NV {:#x} on CPU {far}",
            dev.address(),
            route.irte_index(),
            n.vector
        );
        drop(route);
        Outcome::Pass
    }
);
