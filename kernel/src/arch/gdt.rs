//! Per-CPU GDT and TSS with IST stacks for #DF, NMI and #MC.
//!
//! Selectors are the same on every CPU and match the boot stub's GDT: kernel code 0x08,
//! kernel data 0x10, TSS 0x18. Each CPU needs its own TSS because `ltr` marks the
//! descriptor busy.

use core::cell::UnsafeCell;

use spin::Once;
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable, SegmentSelector};
use x86_64::structures::tss::TaskStateSegment;

/// Kernel code selector.
pub const KERNEL_CS: u16 = 0x08;
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

static BSP_IST: BspIstStacks = BspIstStacks(UnsafeCell::new([[0; IST_STACK_SIZE]; 3]));
static BSP_TSS: Once<TaskStateSegment> = Once::new();
static BSP_GDT: Once<GlobalDescriptorTable> = Once::new();

fn build_tss(ist_base: u64) -> TaskStateSegment {
    let mut tss = TaskStateSegment::new();
    for i in 0..3 {
        let top = ist_base + ((i + 1) * IST_STACK_SIZE) as u64;
        tss.interrupt_stack_table[i] = VirtAddr::new(top);
    }
    tss
}

fn build_gdt(tss: &'static TaskStateSegment) -> (GlobalDescriptorTable, [SegmentSelector; 3]) {
    let mut gdt = GlobalDescriptorTable::new();
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    debug_assert_eq!(code.0, KERNEL_CS);
    (gdt, [code, data, tss_sel])
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
    let tss = BSP_TSS.call_once(|| build_tss(BSP_IST.0.get() as u64));
    let mut sel = None;
    let gdt = BSP_GDT.call_once(|| {
        let (g, s) = build_gdt(tss);
        sel = Some(s);
        g
    });
    if let Some(s) = sel {
        load(gdt, s);
    }
}

/// Builds and loads an AP's GDT/TSS with IST stacks at `ist_base` (3 × 16 KiB).
pub fn init_ap(ist_base: u64) {
    let tss: &'static TaskStateSegment =
        alloc::boxed::Box::leak(alloc::boxed::Box::new(build_tss(ist_base)));
    let (g, s) = build_gdt(tss);
    let gdt: &'static GlobalDescriptorTable = alloc::boxed::Box::leak(alloc::boxed::Box::new(g));
    load(gdt, s);
}
