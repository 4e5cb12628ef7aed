//! Per-CPU GDT and TSS with IST stacks for #DF, NMI and #MC.
//!
//! Selectors are the same on every CPU and match the boot stub's GDT: kernel code 0x08,
//! kernel data 0x10, TSS 0x18 (16 bytes), then the ring-3 block SYSRET needs (Intel SDM
//! Vol. 2B SYSRET: CS = STAR[63:48] + 16, SS = STAR[63:48] + 8): a null placeholder for a
//! 32-bit user code segment at 0x28 (none exists: ring 3 cannot enter compatibility mode),
//! user data 0x30 and user 64-bit code 0x38 (RPL 3: 0x33, 0x3b). Each CPU needs its own TSS
//! because `ltr` marks the descriptor busy; its RSP0 is the stack ring-3 interrupts arrive
//! on ([`set_rsp0`]).

use core::cell::UnsafeCell;

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector (SYSCALL's SS = STAR[47:32] + 8).
pub const KERNEL_DS: u16 = 0x10;
/// STAR[63:48]: the base of the ring-3 block (the null 32-bit code placeholder, RPL 3).
pub const USER_BASE_SEL: u16 = 0x2b;
/// User data (stack) selector with RPL 3.
pub const USER_DS: u16 = 0x33;
/// User 64-bit code selector with RPL 3.
pub const USER_CS: u16 = 0x3b;
/// IST slot (1-based as in the TSS) for #DF.
pub const IST_DOUBLE_FAULT: u8 = 1;
/// IST slot for NMI.
pub const IST_NMI: u8 = 2;
/// IST slot for #MC.
pub const IST_MACHINE_CHECK: u8 = 3;
/// Size of each IST stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

#[repr(C, align(16))]
struct BspIstStacks(UnsafeCell<[[u8; IST_STACK_SIZE]; 3]>);

// SAFETY: the stacks are only used by the CPU itself (through the TSS), never through
// Rust references.
unsafe impl Sync for BspIstStacks {}

/// The BSP's TSS: static (it is loaded before any allocator exists) and written once more
/// when the guarded IST stacks replace the boot-time ones.
struct BspTss(UnsafeCell<TaskStateSegment>);

// SAFETY: written only by the BSP — once in `init_bsp` before `ltr`, and in
// `guard_bsp_ist` (IST pointers, read by the CPU only when delivering an IST exception);
// no Rust reference to it outlives those calls.
unsafe impl Sync for BspTss {}

/// Boot-time IST stacks of the BSP, until [`guard_bsp_ist`] (no guard pages: memory
/// management is not up yet).
static BSP_IST: BspIstStacks = BspIstStacks(UnsafeCell::new([[0; IST_STACK_SIZE]; 3]));
static BSP_TSS: BspTss = BspTss(UnsafeCell::new(TaskStateSegment::new()));
static BSP_GDT: Once<GlobalDescriptorTable> = Once::new();

use super::percpu::MAX_CPUS;

/// Each CPU's TSS (null until its GDT is loaded), for [`set_rsp0`].
static TSS_OF: [core::sync::atomic::AtomicPtr<TaskStateSegment>; MAX_CPUS] =
    [const { core::sync::atomic::AtomicPtr::new(core::ptr::null_mut()) }; MAX_CPUS];

/// Sets the executing CPU's TSS.RSP0: the stack an interrupt or exception from ring 3
/// arrives on (Intel SDM Vol. 3A §6.12.1). False if the CPU has no TSS of its own yet.
pub fn set_rsp0(top: u64) -> bool {
    let i = super::percpu::current_index();
    let p = if i == 0 {
        BSP_TSS.0.get()
    } else {
        TSS_OF.get(i).map_or(core::ptr::null_mut(), |t| {
            t.load(core::sync::atomic::Ordering::Acquire)
        })
    };
    if p.is_null() {
        return false;
    }
    // SAFETY: `p` is this CPU's TSS (static or leaked); only this CPU writes its RSP0, with a
    // raw unaligned store (the TSS is packed); the CPU reads it on a ring change.
    unsafe {
        core::ptr::addr_of_mut!((*p).privilege_stack_table)
            .cast::<VirtAddr>()
            .write_unaligned(VirtAddr::new(top));
    }
    true
}

fn build_tss(tops: [u64; 3]) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for (i, top) in tops.into_iter().enumerate() {
        tss.interrupt_stack_table[i] = VirtAddr::new(top);
    }
    tss
}

fn boot_ist_tops() -> [u64; 3] {
    let base = BSP_IST.0.get() as u64;
    [1u64, 2, 3].map(|i| base + i * IST_STACK_SIZE as u64)
}

fn gdt_with_tss(tss: Descriptor) -> (GlobalDescriptorTable, [SegmentSelector; 3]) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(tss);
    // The ring-3 block: 0x28 null (no 32-bit user code), 0x30 data, 0x38 64-bit code.
    let user32 = gdt.append(Descriptor::UserSegment(0));
    let udata = gdt.append(Descriptor::user_data_segment());
    let ucode = gdt.append(Descriptor::user_code_segment());
    debug_assert_eq!(code.0, KERNEL_CS);
    debug_assert_eq!(data.0, KERNEL_DS);
    debug_assert_eq!(user32.0 & !3, USER_BASE_SEL & !3);
    debug_assert_eq!(udata.0, USER_DS);
    debug_assert_eq!(ucode.0, USER_CS);
    (gdt, [code, data, tss_sel])
}

fn build_gdt(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, [SegmentSelector; 3]) {
    gdt_with_tss(Descriptor::tss_segment(tss))
}

fn load(gdt: &'static GlobalDescriptorTable, sel: [SegmentSelector; 3]) {
    gdt.load();
    // SAFETY: the selectors index descriptors of the GDT just loaded; code and data are
    // flat 64-bit kernel segments, the TSS descriptor points at a 'static TSS.
    unsafe {
        CS::set_reg(sel[0]);
        SS::set_reg(sel[1]);
        DS::set_reg(sel[1]);
        ES::set_reg(sel[1]);
        load_tss(sel[2]);
    }
}

/// Loads the BSP's GDT/TSS (static storage: usable before any allocator).
pub fn init_bsp() {
    let mut sel = None;
    let gdt = BSP_GDT.call_once(|| {
        let p = BSP_TSS.0.get();
        // SAFETY: first and only initialisation, on the BSP, before the TSS is loaded.
        unsafe { p.write(build_tss(boot_ist_tops())) };
        // SAFETY: the TSS is a static that lives forever and is not moved.
        let (g, s) = gdt_with_tss(unsafe { Descriptor::tss_segment_unchecked(p) });
        sel = Some(s);
        g
    });
    if let Some(s) = sel {
        load(gdt, s);
    }
}

/// Moves the BSP's #DF, NMI and #MC stacks to guarded stacks (after memory is up).
pub fn guard_bsp_ist(tops: [u64; 3]) {
    let p = BSP_TSS.0.get();
    // SAFETY: a field pointer into the static TSS (no reference is created).
    let ist = unsafe { core::ptr::addr_of_mut!((*p).interrupt_stack_table) }.cast::<VirtAddr>();
    for (i, top) in tops.into_iter().enumerate() {
        // SAFETY: slot `i` < 7 of the BSP's TSS, which only `init_bsp` (earlier) and this
        // function write, both on the BSP; the CPU reads a slot only while delivering an IST
        // exception. The TSS is packed (the array is 4-byte aligned): unaligned store.
        unsafe { ist.add(i).write_unaligned(VirtAddr::new(top)) };
    }
}

/// Builds and loads an AP's GDT/TSS with its IST stacks (#DF, NMI, #MC tops).
pub fn init_ap(ist_tops: [u64; 3]) {
    let tss: &'static mut TaskStateSegment =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(build_tss(ist_tops)));
    let tss_ptr: *mut TaskStateSegment = tss;
    TSS_OF[super::percpu::current_index().min(MAX_CPUS - 1)]
        .store(tss_ptr, core::sync::atomic::Ordering::Release);
    // SAFETY: the TSS is leaked (lives forever); the CPU reads it, and `set_rsp0` writes
    // only its RSP0 field through the raw pointer, never through this reference.
    let (g, s) = build_gdt(unsafe { &*tss_ptr });
    let gdt: &'static GlobalDescriptorTable = alloc::boxed::Box::leak(alloc::boxed::Box::new(g));
    load(gdt, s);
}
