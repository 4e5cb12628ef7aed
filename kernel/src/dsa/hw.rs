//! The kernel's implementations of the `dsa` crate's hardware traits (BAR0 is the kernel's
//! MMIO window itself, `pci::Mmio`, which implements `hwio::Registers`): the submission
//! instructions on BAR2, the calibrated clock, and DMA
//! memory from the frame allocator (no PASID, the kernel PASID, or a client's PASID
//! address space through [`super::spaces`]).

use alloc::sync::Arc;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use ::pci::ext_caps::PasidControl;
use dsa::hw::{AddressSpace, DmaError, DmaMemory, DmaRegion, EnqStatus, PciInfo};
use pci_types::CommandRegister;

use crate::mm::{self, FrameBlock};
use crate::pci;

/// Why the submission instructions cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InsnError {
    /// CPUID.(7,0):ECX[28] is clear: dedicated WQs cannot be fed.
    NoMovdir64b,
    /// The portal BAR is not 4 KiB aligned (every portal slot must be 64-byte aligned).
    MisalignedBar(u64),
}

impl core::fmt::Display for InsnError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InsnError::NoMovdir64b => write!(
                f,
                "the CPU lacks MOVDIR64B (CPUID.(7,0):ECX[28]); DSA work queues cannot be fed \
                 (under QEMU use -cpu max of the patched QEMU)"
            ),
            InsnError::MisalignedBar(a) => write!(f, "portal BAR at {a:#x} is not page aligned"),
        }
    }
}

/// BAR2 submission portals.
pub struct Portals {
    bar: pci::Mmio,
    enqcmd: bool,
    warned: AtomicBool,
}

impl Portals {
    /// Checks CPUID: MOVDIR64B is required; without ENQCMD shared WQs are unusable (the
    /// configuration must not have any; [`Portals::has_enqcmds`]).
    pub fn new(bar: pci::Mmio) -> Result<Portals, InsnError> {
        let f = crate::arch::features();
        if !f.movdir64b {
            return Err(InsnError::NoMovdir64b);
        }
        if !bar.phys().is_multiple_of(4096) {
            return Err(InsnError::MisalignedBar(bar.phys()));
        }
        Ok(Portals {
            bar,
            enqcmd: f.enqcmd,
            warned: AtomicBool::new(false),
        })
    }

    /// Physical base and length of BAR2.
    pub fn bar(&self) -> (u64, u64) {
        (self.bar.phys(), self.bar.len() as u64)
    }

    /// Whether ENQCMDS can be executed (CPUID.(7,0):ECX[29]).
    pub fn has_enqcmds(&self) -> bool {
        self.enqcmd
    }

    /// The portal address for a 64-byte store at `off`, if it is inside the BAR and aligned.
    fn slot(&self, off: u64) -> Option<u64> {
        (off.is_multiple_of(64)
            && off
                .checked_add(64)
                .is_some_and(|e| e <= self.bar.len() as u64))
        .then(|| self.bar.phys() + off)
    }
}

/// Store fence: the descriptor's buffers, its zeroed completion record and any batch list
/// must be globally visible before the device can read the descriptor: neither MOVDIR64B
/// nor ENQCMDS is ordered after older stores (Intel SDM Vol. 2A/2B, "ENQCMDS" and
/// "MOVDIR64B", their ordering notes).
#[inline(always)]
fn sfence() {
    // SAFETY: SFENCE only orders stores; it touches no memory or registers.
    unsafe { core::arch::asm!("sfence", options(nostack, preserves_flags)) };
}

impl dsa::Portals for Portals {
    fn size(&self) -> u64 {
        self.bar.len() as u64
    }

    fn movdir64b(&self, off: u64, desc: &[u8; 64]) {
        let Some(dst) = self.slot(off) else {
            log::error!("dsa: MOVDIR64B to portal offset {off:#x} outside BAR2; dropped");
            return;
        };
        sfence();
        // SAFETY: `dst` is a 64-byte-aligned slot inside the uncached BAR2 mapping (checked
        // above), so the store reaches the device's portal and nothing else; the source is
        // the 64-byte array borrowed for the duration; CPUID has MOVDIR64B (checked in
        // `new`). No `nomem`: the block must order as a compiler barrier.
        unsafe {
            core::arch::asm!(
                "movdir64b {d}, zmmword ptr [{s}]",
                d = in(reg) dst,
                s = in(reg) desc.as_ptr(),
                options(nostack, preserves_flags),
            )
        };
    }

    fn direct(&self) -> Option<dsa::hw::DirectPortals> {
        // SAFETY: `bar` is the device's BAR2 mapped uncached at `phys()` (virtual ==
        // physical) for `len()` bytes (4 KiB aligned: checked in `new`); kernel MMIO mappings are never removed, and the
        // device keeps this `Portals` alive while it is used; MOVDIR64B was checked in
        // `new`, ENQCMDS is allowed exactly when CPUID has it (the kernel runs at CPL 0).
        Some(unsafe {
            dsa::hw::DirectPortals::new(
                self.bar.phys() as *mut u8,
                self.bar.len() as u64,
                self.enqcmd,
            )
        })
    }

    fn enqcmds(&self, off: u64, desc: &[u8; 64]) -> EnqStatus {
        if !self.enqcmd {
            if !self.warned.swap(true, Ordering::Relaxed) {
                log::error!("dsa: ENQCMDS needed for a shared WQ but the CPU lacks ENQCMD");
            }
            return EnqStatus::Retry;
        }
        let Some(dst) = self.slot(off) else {
            log::error!("dsa: ENQCMDS to portal offset {off:#x} outside BAR2; dropped");
            return EnqStatus::Retry;
        };
        sfence();
        let retry: u8;
        // SAFETY: as for MOVDIR64B; the kernel runs at CPL 0 (ENQCMDS #GPs otherwise) and the
        // driver built dword 0 with bits 30:20 clear. Flags are written (ZF = retry).
        unsafe {
            core::arch::asm!(
                "enqcmds {d}, zmmword ptr [{s}]",
                "setz {z}",
                d = in(reg) dst,
                s = in(reg) desc.as_ptr(),
                z = out(reg_byte) retry,
                options(nostack),
            )
        };
        if retry == 0 {
            EnqStatus::Accepted
        } else {
            EnqStatus::Retry
        }
    }
}

/// The calibrated TSC clock.
pub struct Clock;

impl dsa::Clock for Clock {
    fn now_ns(&self) -> u64 {
        crate::time::now_ns()
    }
    fn relax(&self) {
        core::hint::spin_loop();
    }
    fn delay_us(&self, us: u32) {
        crate::time::delay_us(us as u64);
    }
}

/// PCI state of one device, read from configuration space on every call (the driver reads
/// it at bring-up and at every reconfiguration).
pub struct PciState {
    pub dev: pci::Device,
    /// MSI-X entries programmed by the kernel (entry 0 misc, entry w+1 WQ w).
    pub msix_entries: u16,
}

impl dsa::Pci for PciState {
    fn info(&self) -> PciInfo {
        let Some(access) = pci::config_access() else {
            return PciInfo {
                msix_entries: self.msix_entries,
                ..PciInfo::default()
            };
        };
        let cmd = ::pci::command::read_command(access, self.dev.address());
        let ctrl = match self.dev.pasid_cap() {
            Ok(Some(cap)) => cap.control(access),
            _ => PasidControl::empty(),
        };
        PciInfo {
            bus_master: cmd.contains(CommandRegister::BUS_MASTER_ENABLE),
            pasid_enabled: ctrl.contains(PasidControl::ENABLE),
            privileged_mode: ctrl.contains(PasidControl::PRIVILEGED_ENABLE),
            msix_entries: self.msix_entries,
        }
    }
}

/// DMA memory for every address space a DSA device uses: without PASID and in the kernel
/// PASID (pass-through, so device address = physical address) straight from the frame
/// allocator; in a client PASID, frames mapped at a fresh IOVA of that client's first-stage
/// tables ([`super::spaces`]).
pub struct Dma {
    /// The kernel's PASID, if the kernel uses one.
    pub kernel_pasid: Option<u32>,
}

fn order_of(len: usize) -> u8 {
    (len / 4096).trailing_zeros() as u8
}

/// Size actually allocated for a request: a power of two ≥ 4 KiB.
pub fn block_size(size: usize, align: usize) -> usize {
    size.max(align).max(4096).next_power_of_two()
}

// SAFETY: every region is a freshly allocated, zeroed, identity-mapped block (or a client
// mapping of one) of at least `size` bytes, naturally aligned to its power-of-two size ≥
// `align` (the frame allocator's guarantee), owned by the region until `free` returns it.
unsafe impl DmaMemory for Dma {
    fn alloc(&self, space: AddressSpace, size: usize, align: usize) -> Result<DmaRegion, DmaError> {
        let len = block_size(size, align);
        match space {
            AddressSpace::NoPasid => {}
            AddressSpace::Pasid(p) if Some(p) == self.kernel_pasid => {}
            AddressSpace::Pasid(p) => {
                return super::spaces::alloc_region(p, len).ok_or(DmaError::NoSuchSpace(space));
            }
        }
        let block = mm::alloc_frames(len as u64, len as u64)
            .map_err(|_| DmaError::OutOfMemory { size: len })?;
        let (addr, _order) = block.into_raw();
        Ok(DmaRegion {
            cpu: NonNull::new(addr as *mut u8).ok_or(DmaError::BadRegion)?,
            dev: addr,
            len,
            space,
        })
    }

    fn free(&self, region: DmaRegion) {
        match region.space {
            AddressSpace::Pasid(p) if Some(p) != self.kernel_pasid => {
                super::spaces::free_region(p, region)
            }
            _ => {
                // SAFETY: the region came from `alloc` above as a whole frame block of
                // `len` bytes at `cpu` (== physical address), and the driver returns it once.
                drop(unsafe {
                    FrameBlock::from_raw(region.cpu.as_ptr() as u64, order_of(region.len))
                });
            }
        }
    }
}

/// Shared allocator handle for all devices.
pub fn dma(kernel_pasid: Option<u32>) -> Arc<Dma> {
    Arc::new(Dma { kernel_pasid })
}
