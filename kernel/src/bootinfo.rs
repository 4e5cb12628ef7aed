//! The boot information, copied out of boot-loader memory once on the BSP.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use boot::{BootError, BootInfo, PhysMemory};

struct Cell(UnsafeCell<BootInfo>);

// SAFETY: written exactly once by the BSP in `parse` before any other CPU runs or any
// reader exists (READY is set afterwards); read-only from then on.
unsafe impl Sync for Cell {}

static INFO: Cell = Cell(UnsafeCell::new(BootInfo::new()));
static READY: AtomicBool = AtomicBool::new(false);
static EMPTY: BootInfo = BootInfo::new();

/// Physical memory as mapped by the boot stub: identity, 0–4 GiB (QEMU puts PVH
/// structures in page 0, so only the null address itself is refused).
struct Low4G;

impl PhysMemory for Low4G {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let end = addr.checked_add(len as u64)?;
        if addr == 0 || end > 1 << 32 {
            return None;
        }
        // SAFETY: the boot stub identity-maps 0–4 GiB; the range is inside it. The data
        // is only read and only during boot, before the kernel reuses that memory.
        Some(unsafe { core::slice::from_raw_parts(addr as *const u8, len) })
    }
}

/// Parses the boot information. Call once, on the BSP, before anything else uses it.
pub fn parse(magic: u32, info: u32) -> Result<(), BootError> {
    assert!(
        !READY.load(Ordering::Relaxed),
        "boot information parsed twice"
    );
    // SAFETY: single writer before READY; see `Cell`.
    let out = unsafe { &mut *INFO.0.get() };
    let r = boot::parse(magic, u64::from(info), &Low4G, out);
    READY.store(true, Ordering::Release);
    r
}

/// The boot information (empty before `parse`).
pub fn get() -> &'static BootInfo {
    if READY.load(Ordering::Acquire) {
        // SAFETY: no writer after READY.
        unsafe { &*INFO.0.get() }
    } else {
        &EMPTY
    }
}
