//! The IDT: one table shared by all CPUs, all 256 vectors pointing at the assembly
//! stubs in [`super::trap`]. Handlers differ per CPU in software (per-CPU handler
//! tables in [`crate::irq`]), not in the IDT.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use x86_64::VirtAddr;
use x86_64::instructions::tables::lidt;
use x86_64::structures::DescriptorTablePointer;

use super::gdt::{IST_DOUBLE_FAULT, IST_MACHINE_CHECK, IST_NMI, KERNEL_CS};

/// One 16-byte gate descriptor (Intel SDM Vol. 3, 6.14.1).
#[derive(Clone, Copy)]
#[repr(C)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

/// Present, DPL 0, 64-bit interrupt gate (IF cleared on entry).
const INTERRUPT_GATE: u8 = 0x8e;

impl Gate {
    const EMPTY: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn new(handler: u64, ist: u8) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: KERNEL_CS,
            ist,
            type_attr: INTERRUPT_GATE,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

#[repr(C, align(16))]
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written once by the BSP in `build` before any CPU loads it; read-only after.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::EMPTY; 256]));
static BUILT: AtomicBool = AtomicBool::new(false);

/// Fills the IDT (BSP, once) and loads it on this CPU.
pub fn init_bsp() {
    if !BUILT.swap(true, Ordering::AcqRel) {
        super::trap::init_irq_entry();
        // SAFETY: single writer before any `lidt` of this table (see `Idt`).
        let gates = unsafe { &mut *IDT.0.get() };
        for (v, g) in gates.iter_mut().enumerate() {
            let ist = match v {
                2 => IST_NMI,
                8 => IST_DOUBLE_FAULT,
                18 => IST_MACHINE_CHECK,
                _ => 0,
            };
            *g = Gate::new(super::trap::stub_address(v as u8), ist);
        }
    }
    load();
}

/// Loads the (already built) IDT on this CPU.
pub fn load() {
    let ptr = DescriptorTablePointer {
        limit: (256 * 16 - 1) as u16,
        base: VirtAddr::new(IDT.0.get() as u64),
    };
    // SAFETY: the table is 'static, fully built, and every gate points at a valid stub.
    unsafe { lidt(&ptr) };
}
