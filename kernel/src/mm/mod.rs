//! Memory: the physical memory map, kernel page tables (identity map of all RAM and of
//! MMIO), the physical frame allocator and the kernel heap.
//!
//! Address-space convention: virtual == physical for everything the kernel touches.
//! RAM regions of the memory map are mapped write-back; the rest of the first 4 GiB
//! (legacy MMIO: LAPIC, IOAPIC, HPET, VT-d, ECAM, 32-bit BARs) is mapped uncached;
//! MMIO above 4 GiB (64-bit BARs, high ECAM) is mapped on demand with [`map_mmio`].
//! Page 0 stays unmapped so null dereferences fault. Kernel stacks are the exception:
//! they live in an upper-half region with guard pages ([`stacks`]).

pub mod frames;
pub mod heap;
mod mmio;
mod paging;
pub mod stacks;

use core::fmt;

use boot::memmap::{MemKind, MemoryMap};
use spin::Once;
use x86_paging::MapError;

#[cfg(feature = "ktest")]
pub use frames::alloc_frames_below;
pub use frames::{FrameBlock, alloc_frames, alloc_frames_uninit, frame_stats};
pub use mmio::Mmio;
pub use paging::{TableFrames, kernel_root, map_firmware, map_mmio, new_address_space};
#[cfg(feature = "ktest")]
pub use paging::{check_kernel_half, freeze_kernel_half, translate};

/// Memory-management errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmError {
    /// No free block large enough.
    OutOfMemory {
        /// Requested bytes (after rounding).
        size: u64,
    },
    /// Size 0, alignment not a power of two, or larger than the largest block (1 GiB).
    BadRequest {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// Page-table update failed (conflict with an existing mapping, no table memory, …).
    Map(MapError),
    /// Called before `mm::init`.
    NotInitialized,
    /// No usable memory below 4 GiB for the early page tables.
    NoEarlyMemory {
        /// Bytes needed.
        need: u64,
    },
    /// The memory map has no usable RAM.
    NoUsableMemory,
    /// An MMIO or firmware range at page 0 (never mapped: it catches null pointers, and
    /// firmware writes 0 for "absent"), wrapping around, or beyond the physical address
    /// limit.
    BadPhysRange {
        /// Start.
        phys: u64,
        /// Length.
        len: u64,
    },
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfMemory { size } => {
                write!(f, "out of physical memory ({size} bytes requested)")
            }
            Self::BadRequest { size, align } => {
                write!(
                    f,
                    "invalid allocation request: size {size:#x}, alignment {align:#x}"
                )
            }
            Self::Map(e) => write!(f, "page-table update failed: {e}"),
            Self::NotInitialized => write!(f, "memory management is not initialised"),
            Self::NoEarlyMemory { need } => {
                write!(
                    f,
                    "no {need} bytes of usable memory below 4 GiB for the kernel page tables"
                )
            }
            Self::NoUsableMemory => write!(f, "the memory map contains no usable RAM"),
            Self::BadPhysRange { phys, len } => write!(
                f,
                "{phys:#x}+{len:#x} is not a mappable physical range (page 0, wraps, or beyond the {}-bit physical address limit)",
                phys_addr_bits()
            ),
        }
    }
}

impl core::error::Error for MmError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Map(e) => Some(e),
            _ => None,
        }
    }
}

/// The CPU's physical address width (CPUID 0x8000_0008 EAX[7:0], Intel SDM Vol. 2A; 36 bits
/// when the leaf is missing), at most the architectural 52.
pub fn phys_addr_bits() -> u32 {
    static BITS: Once<u32> = Once::new();
    *BITS.call_once(|| {
        use core::arch::x86_64::__cpuid;
        let bits = if __cpuid(0x8000_0000).eax >= 0x8000_0008 {
            __cpuid(0x8000_0008).eax & 0xff
        } else {
            36
        };
        bits.clamp(32, 52)
    })
}

/// One past the highest physical address the CPU can reach.
pub fn phys_addr_limit() -> u64 {
    1 << phys_addr_bits()
}

impl From<MapError> for MmError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

static MEMMAP: Once<MemoryMap> = Once::new();

/// The normalised physical memory map.
pub fn memory_map() -> Option<&'static MemoryMap> {
    MEMMAP.get()
}

unsafe extern "C" {
    static __kernel_start: u8;
    static __text_start: u8;
    static __rodata_start: u8;
    static __data_start: u8;
    static __kernel_end: u8;
}

/// Page-aligned boundaries of the kernel image's parts (`linker.ld`): headers
/// `[start, text)`, code `[text, rodata)`, read-only data `[rodata, data)`, writable data and
/// .bss `[data, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLayout {
    pub start: u64,
    pub text: u64,
    pub rodata: u64,
    pub data: u64,
    pub end: u64,
}

/// The kernel image's layout.
pub fn image_layout() -> ImageLayout {
    ImageLayout {
        start: &raw const __kernel_start as u64,
        text: &raw const __text_start as u64,
        rodata: &raw const __rodata_start as u64,
        data: &raw const __data_start as u64,
        end: &raw const __kernel_end as u64,
    }
}

/// `[start, end)` of the kernel image (including .bss and the boot stack).
pub fn kernel_image_range() -> (u64, u64) {
    (
        &raw const __kernel_start as u64,
        &raw const __kernel_end as u64,
    )
}

/// Low memory kept out of the allocator (real-mode IVT/BDA/EBDA, the AP trampoline,
/// option ROMs and BIOS).
pub const LOW_MEMORY_END: u64 = 0x10_0000;

/// Sets up paging, the frame allocator and the heap from the boot memory map.
pub fn init(raw: &MemoryMap) -> Result<(), MmError> {
    let map = MEMMAP.call_once(|| {
        let mut m = raw.clone();
        m.normalize();
        m.clip(phys_addr_limit());
        m
    });
    log::info!("memory map ({} regions):", map.regions().len());
    for r in map.regions() {
        log::info!("  {r}");
    }
    if map.clipped > 0 {
        log::warn!(
            "memory map: {} entries reach beyond the {}-bit physical address limit and were cut there",
            map.clipped,
            phys_addr_bits()
        );
    }
    if map.dropped > 0 {
        log::warn!(
            "memory map: {} regions beyond {} were ignored",
            map.dropped,
            boot::memmap::MAX_REGIONS
        );
    }
    let usable = map.total(MemKind::Usable);
    if usable == 0 {
        return Err(MmError::NoUsableMemory);
    }
    let image = kernel_image_range();
    let early = paging::init(map, image_layout())?;
    frames::init(map, &[(0, LOW_MEMORY_END), image, early])?;
    let st = frame_stats();
    log::info!(
        "memory: {} MiB usable, {} MiB free for allocation, kernel image {:#x}-{:#x}, RAM ends at {:#x}",
        usable >> 20,
        (st.free_pages * 4096) >> 20,
        image.0,
        image.1,
        map.ram_end()
    );
    Ok(())
}
