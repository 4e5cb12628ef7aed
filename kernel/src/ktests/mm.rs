//! Frame allocator, heap, page tables.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

use x86_paging::{MapError, PageSize, PteFlags};

use crate::arch::{percpu, smp};
use crate::ktest;
use crate::mm::{self, FrameBlock, MmError};

ktest!(
    fn frames_are_contiguous_zeroed_and_aligned() {
        let before = mm::frame_stats();
        let mut blocks: Vec<FrameBlock> = Vec::new();
        for &(size, align) in &[
            (4096u64, 4096u64),
            (8192, 4096),
            (12 * 1024, 4096),
            (64 * 1024, 64 * 1024),
            (4096, 2 << 20),
            (1 << 20, 4096),
            (2 << 20, 2 << 20),
            (4 << 20, 4096),
        ] {
            let mut b = mm::alloc_frames(size, align)
                .unwrap_or_else(|e| panic!("alloc {size:#x}/{align:#x}: {e}"));
            assert!(b.size() >= size && b.size().is_power_of_two());
            assert_eq!(
                b.addr() % align.max(b.size()),
                0,
                "alignment of {size:#x}/{align:#x}"
            );
            let s = b.as_mut_slice();
            assert!(s.iter().all(|&x| x == 0), "block {size:#x} not zeroed");
            s.fill(0xa5);
            // Identity-mapped and physically contiguous: every page translates to itself.
            let mut off = 0;
            while off < b.size() {
                let t = mm::translate(b.addr() + off).expect("block is mapped");
                assert_eq!(t.phys, b.addr() + off);
                assert!(!t.flags.contains(PteFlags::NO_CACHE), "RAM is write-back");
                off += 4096;
            }
            blocks.push(b);
        }
        // Pairwise disjoint.
        for (i, a) in blocks.iter().enumerate() {
            for b in &blocks[i + 1..] {
                assert!(a.addr() + a.size() <= b.addr() || b.addr() + b.size() <= a.addr());
            }
        }
        let low = mm::alloc_frames_below(4096, 4096, 16 << 20).unwrap();
        assert!(low.addr() + 4096 <= 16 << 20);
        assert_eq!(low.as_ptr::<u8>() as u64, low.addr());
        let (a, o) = low.into_raw();
        // SAFETY: re-owning what `into_raw` gave up.
        let low = unsafe { FrameBlock::from_raw(a, o) };
        drop(low);
        drop(blocks);
        assert_eq!(
            mm::frame_stats().free_pages,
            before.free_pages,
            "all frames returned"
        );
        assert!(matches!(
            mm::alloc_frames(0, 4096),
            Err(MmError::BadRequest { .. })
        ));
        assert!(matches!(
            mm::alloc_frames(4096, 3),
            Err(MmError::BadRequest { .. })
        ));
        assert!(matches!(
            mm::alloc_frames(2 << 30, 4096),
            Err(MmError::BadRequest { .. })
        ));
    }
);

ktest!(
    fn frame_exhaustion_is_an_error_and_recovers() {
        // Reserve book-keeping space first: the heap cannot grow once memory is gone.
        let mut held: Vec<FrameBlock> = Vec::with_capacity(1 << 16);
        let before = mm::frame_stats();
        let mut order = before.largest_free_order.expect("free memory");
        let err = loop {
            match mm::alloc_frames_uninit(4096 << order, 4096) {
                Ok(b) if held.len() < held.capacity() => held.push(b),
                Ok(_) => panic!("more than {} blocks", held.capacity()),
                Err(e) if order > 0 => {
                    assert!(matches!(e, MmError::OutOfMemory { .. }), "{e}");
                    order -= 1;
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, MmError::OutOfMemory { size: 4096 });
        assert_eq!(mm::frame_stats().free_pages, 0);
        let total: u64 = held.iter().map(|b| b.size() / 4096).sum();
        assert_eq!(total, before.free_pages, "every free page was handed out");
        held.clear(); // frees the blocks, keeps the vector's own storage
        let after = mm::frame_stats();
        assert_eq!(after.free_pages, before.free_pages);
        assert_eq!(
            after.largest_free_order, before.largest_free_order,
            "blocks merged back"
        );
        crate::println!(
            "ktest-info: exhausted and recovered {} MiB",
            (total * 4096) >> 20
        );
    }
);

ktest!(
    fn heap_allocations_work_across_cpus() {
        let before = mm::heap::stats();
        {
            let mut v: Vec<u64> = (0..10_000).collect();
            v.extend(0..5);
            assert_eq!(v[9_999], 9_999);
            let s: String = (0..1000)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            assert_eq!(s.len(), 1000);
            #[repr(align(4096))]
            struct Page([u8; 4096]);
            let p = Box::new(Page([7; 4096]));
            assert_eq!(&*p as *const Page as usize % 4096, 0);
            assert!(p.0.iter().all(|&b| b == 7));
            let big = alloc::vec![0xeeu8; 8 << 20];
            assert!(big.iter().all(|&b| b == 0xee));
            // Allocated on one CPU, freed on another.
            let other = percpu::cpu_count() - 1;
            let boxed = smp::run_on(other, || Box::new([3u32; 100])).unwrap();
            assert!(boxed.iter().all(|&x| x == 3));
        }
        let after = mm::heap::stats();
        assert_eq!(after.live_small, before.live_small, "small objects leaked");
        assert_eq!(after.live_large, before.live_large, "large blocks leaked");
    }
);

ktest!(
    fn mmio_mappings_are_uncached_and_checked() {
        // Low MMIO (the LAPIC page) is mapped uncached at boot; page 0 is not mapped.
        let t = mm::translate(0xfee0_0000).expect("LAPIC page mapped");
        assert!(
            t.flags
                .contains(PteFlags::NO_CACHE | PteFlags::WRITE_THROUGH)
        );
        assert_eq!(mm::translate(0), None);
        // Above 4 GiB: on demand.
        let high = 0x40_0000_0000u64; // 256 GiB, inside the 40-bit physical space of QEMU's CPUs
        let p = mm::map_mmio(high + 0x1000, 0x3000).unwrap();
        assert_eq!(p as u64, high + 0x1000);
        let t = mm::translate(high + 0x2abc).unwrap();
        assert_eq!((t.phys, t.size), (high + 0x2abc, PageSize::Size4K));
        assert!(
            t.flags
                .contains(PteFlags::NO_CACHE | PteFlags::WRITE_THROUGH)
        );
        assert_eq!(mm::translate(high), None);
        mm::map_mmio(high + 0x1000, 0x1000).unwrap(); // idempotent
        // Mapping RAM as MMIO is refused.
        let ram = mm::kernel_image_range().0;
        assert!(matches!(
            mm::map_mmio(ram, 4096),
            Err(MmError::Map(MapError::Conflict { .. }))
        ));
    }
);

ktest!(
    fn mmio_at_page_zero_or_past_the_address_limit_is_refused() {
        // Firmware says 0 for "absent": an HPET or I/O APIC at 0 must never map the null
        // page (which stays unmapped so null pointers fault).
        for (phys, len) in [(0u64, 1024u64), (0x10, 0x20), (0xfff, 2)] {
            assert_eq!(
                mm::map_mmio(phys, len),
                Err(MmError::BadPhysRange { phys, len })
            );
        }
        assert_eq!(mm::translate(0), None);
        // Wrapping or beyond MAXPHYADDR: refused before any rounding can overflow.
        let limit = mm::phys_addr_limit();
        for (phys, len) in [
            (u64::MAX - 0x10, 0x100),
            (0xffff_ffff_ffff_f000, 0x1000),
            (limit - 0x1000, 0x2000),
            (limit, 0x1000),
        ] {
            assert_eq!(
                mm::map_mmio(phys, len),
                Err(MmError::BadPhysRange { phys, len })
            );
            assert!(mm::map_firmware(phys, len).is_err());
        }
        assert!(mm::map_firmware(0, 4).is_err());
    }
);

/// A read-only static (in .rodata).
static RODATA_PROBE: [u64; 2] = [0x5a5a_5a5a, 0xa5a5_a5a5];

ktest!(
    fn kernel_image_is_mapped_w_xor_x_and_data_is_not_executable() {
        let layout = mm::image_layout();
        let flags = |addr: u64| {
            mm::translate(addr)
                .unwrap_or_else(|| panic!("{addr:#x} is not mapped"))
                .flags
        };
        let nx = crate::arch::features().nx;
        let text = frames_are_contiguous_zeroed_and_aligned as *const () as u64;
        let rodata = RODATA_PROBE.as_ptr() as u64;
        let heap = Box::new(0u64);
        let heap = &*heap as *const u64 as u64;
        let stack_local = 0u64;
        let stack = &stack_local as *const u64 as u64;
        assert!(
            (layout.text..layout.rodata).contains(&text),
            "{text:#x} in .text"
        );
        assert!(
            (layout.rodata..layout.data).contains(&rodata),
            "{rodata:#x} in .rodata"
        );
        // Code: executable, not writable.
        let f = flags(text);
        assert!(!f.contains(PteFlags::WRITABLE), ".text writable: {f:?}");
        assert!(
            !f.contains(PteFlags::NO_EXECUTE),
            ".text not executable: {f:?}"
        );
        // Read-only data, heap, stack and the writable data: never executable; only the
        // read-only data is not writable.
        for (what, addr, writable) in [
            (".rodata", rodata, false),
            ("heap", heap, true),
            ("stack", stack, true),
            (".data/.bss", layout.data, true),
        ] {
            let f = flags(addr);
            assert_eq!(f.contains(PteFlags::WRITABLE), writable, "{what}: {f:?}");
            if nx {
                assert!(f.contains(PteFlags::NO_EXECUTE), "{what} executable: {f:?}");
            }
        }
        // The CPU enforces it (CR0.WP): writes to code and read-only data fault. The probe
        // writes back the value it read, so a missing protection would change nothing.
        for (what, addr) in [(".text", text & !7), (".rodata", rodata)] {
            let v = crate::arch::fault::probe_read_u64(addr).expect("readable");
            // SAFETY: writes the value just read (no change if it were to succeed).
            let r = unsafe { crate::arch::fault::probe_write_u64(addr, v) };
            let e = r.expect_err(what);
            assert!(e.is_page_fault(), "{what}: {e:?}");
            assert_eq!(e.address, addr, "{what}: CR2");
            assert_eq!(
                e.error_code & 0b11,
                0b11,
                "{what}: protection violation on a write"
            );
        }
        assert_eq!(RODATA_PROBE, [0x5a5a_5a5a, 0xa5a5_a5a5]);
    }
);

ktest!(explicit fn deliberate_execution_from_the_heap() {
    // A `ret` on the heap: with NX the call faults on the instruction fetch.
    let code = Box::new([0xc3u8; 16]);
    // SAFETY: not safe at all, on purpose: the page is data and the fetch must fault.
    let f: extern "C" fn() =
        unsafe { core::mem::transmute::<*const u8, extern "C" fn()>(code.as_ptr()) };
    f();
    crate::println!("unreachable: executed from the heap");
});

/// Runs `f` with `root` in CR3 (interrupts off), then restores the kernel's CR3.
///
/// # Safety
/// `root` must map the kernel half exactly as the kernel's tables do.
unsafe fn with_cr3<R>(root: u64, f: impl FnOnce() -> R) -> R {
    use x86_64::PhysAddr;
    use x86_64::registers::control::Cr3;
    use x86_64::structures::paging::PhysFrame;
    x86_64::instructions::interrupts::without_interrupts(|| {
        let (old, flags) = Cr3::read();
        // SAFETY: the caller guarantees the kernel half (code, data, stacks) is the same.
        unsafe { Cr3::write(PhysFrame::containing_address(PhysAddr::new(root)), flags) };
        let r = f();
        // SAFETY: back to the kernel's own tables.
        unsafe { Cr3::write(old, flags) };
        r
    })
}

/// A value in .data, read through another root to show the kernel half is shared.
static SHARED_PROBE: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

ktest!(
    fn address_spaces_share_the_kernel_half_on_the_cpu() {
        use x86_paging::{Config, Released, TableMemory};
        const USER: u64 = 0x4000_0000_0000; // PML4 slot 128
        mm::freeze_kernel_half().unwrap();
        // Heap storage first: the heap may take frames when it grows.
        let mut released = Vec::with_capacity(16);
        let mut tables = Vec::with_capacity(16);
        let before = mm::frame_stats();
        let mut space = mm::new_address_space(Config::user(false)).unwrap();
        let mut frame = mm::alloc_frames(4096, 4096).unwrap();
        frame.as_mut_slice()[..8].copy_from_slice(&0x5eed_cafe_u64.to_le_bytes());
        let nx = crate::arch::features().nx;
        let flags = PteFlags::user_leaf(true, false, nx);
        space
            .map(USER, frame.addr(), 4096, flags, &mut mm::TableFrames)
            .unwrap();
        // Kernel addresses translate alike through both roots; the user page only in its own.
        let stack_local = 0u64;
        for addr in [
            address_spaces_share_the_kernel_half_on_the_cpu as *const () as u64,
            SHARED_PROBE.as_ptr() as u64,
            &stack_local as *const u64 as u64,
        ] {
            let mine = space.translate(addr, &mm::TableFrames).map(|t| t.phys);
            assert_eq!(mine, mm::translate(addr).map(|t| t.phys), "{addr:#x}");
            assert!(mine.is_some());
        }
        assert_eq!(mm::translate(USER), None);
        let t = space.translate(USER, &mm::TableFrames).unwrap();
        assert_eq!((t.phys, t.flags), (frame.addr(), flags));
        mm::check_kernel_half(&space).unwrap();

        // On the CPU: with the new root in CR3, the kernel keeps running (code, stack and
        // data are the shared half) and the user page reads the frame, through the checked
        // user copy (a plain read at CPL 0 faults under SMAP: ktests::proc).
        SHARED_PROBE.store(0x1234, core::sync::atomic::Ordering::SeqCst);
        // SAFETY: the kernel half was just checked to be the kernel's.
        let (user, kernel) = unsafe {
            with_cr3(space.root(), || {
                let mut b = [0u8; 8];
                (
                    crate::proc::uaccess::copy_from_user(None, &mut b, USER)
                        .map(|()| u64::from_le_bytes(b)),
                    crate::arch::fault::probe_read_u64(SHARED_PROBE.as_ptr() as u64),
                )
            })
        };
        assert_eq!(user.unwrap(), 0x5eed_cafe);
        assert_eq!(kernel.unwrap(), 0x1234);

        // Unmap: the old entry comes back (frame, A/D); afterwards the CPU faults there.
        let n = space
            .unmap(USER, 4096, &mut mm::TableFrames, &mut |r| released.push(r))
            .unwrap();
        assert_eq!(n, 4096);
        assert!(matches!(
            released[0],
            Released::Leaf { virt: USER, entry, .. } if entry & !0xfff & ((1 << 52) - 1) == frame.addr()
        ));
        // SAFETY: as above; the CR3 write flushed the TLB entry of the first run.
        let gone = unsafe { with_cr3(space.root(), || crate::arch::fault::probe_read_u64(USER)) };
        let f = gone.expect_err("unmapped user page");
        assert!(f.is_page_fault() && f.address == USER, "{f:?}");

        // The kernel's PML4 is frozen: a mapping that needs a new kernel PML4 entry fails.
        // Through `map_mmio` such an address is past the physical address limit, which is
        // refused first; either way no kernel PML4 entry appears (the frozen table's own
        // refusal, `TopLevelFrozen`, is host-tested in x86-paging).
        const SLOT_255: u64 = 255 << 39;
        if !space.is_shared_slot(255) {
            assert!(matches!(
                mm::map_mmio(SLOT_255, 4096),
                Err(MmError::Map(MapError::TopLevelFrozen(255)) | MmError::BadPhysRange { .. })
            ));
            assert!(mm::translate(SLOT_255).is_none());
            mm::check_kernel_half(&space).expect("the kernel half is still shared exactly");
        }
        // The process cannot map over the kernel half.
        assert_eq!(
            space.map(0x20_0000, frame.addr(), 4096, flags, &mut mm::TableFrames),
            Err(MapError::SharedSlot(0))
        );

        // Teardown hands back its tables (root last); none is a kernel table.
        let root = space.root();
        space
            .teardown(&mut mm::TableFrames, &mut |r| {
                if let Released::Table(p) = r {
                    tables.push(p)
                }
            })
            .unwrap();
        assert_eq!(tables.last(), Some(&root));
        assert_eq!(tables.len(), 4, "root, PDPT, PD and PT of the user page");
        assert!(tables.iter().all(|p| *p != mm::kernel_root()));
        for p in tables {
            mm::TableFrames.free_table(p);
        }
        drop(frame);
        assert_eq!(
            mm::frame_stats().free_pages,
            before.free_pages,
            "every table page and the frame returned"
        );
    }
);
