//! DSA clients' address spaces and the DMA buffers in them.
//!
//! A [`ClientSpace`] is one PASID with its own first-stage page tables
//! (`iommu::AddressSpace`, `SpaceKind::Translated`) and a private IOVA range. Everything a
//! client's descriptors name — source and destination buffers, completion records, batch
//! lists — is a frame block mapped into that space only, so a descriptor of one client
//! that names another client's memory faults in the IOMMU instead of reaching it.
//!
//! IOVA ranges: client PASID p allocates from `IOVA_BASE + (p mod 1024) * IOVA_SPAN`, which
//! differs from every physical address the kernel uses and from other clients' ranges; a
//! stray physical address or a neighbour's IOVA is therefore unmapped in the space.
//!
//! The kernel's own DMA ([`DmaBuffer::kernel`]) uses physical addresses: with an IOMMU it
//! runs in the kernel PASID, a pass-through space (see `super` for why), without one the
//! device sees physical memory anyway.

use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use core::fmt;
use core::ptr::NonNull;

use dsa::hw::{AddressSpace, DmaRegion};

use crate::iommu::{self, IommuError, Perm, SpaceKind};
use crate::mm::{self, FrameBlock, MmError};
use crate::pci::PciAddress;
use crate::sync::IrqMutex;

const PAGE: u64 = 4096;
/// Start of the client IOVA ranges (64 GiB: above any RAM or MMIO of the test machines,
/// and far below the 47-bit first-stage limit even for the last range).
pub const IOVA_BASE: u64 = 0x10_0000_0000;
/// Size of one client's IOVA range.
pub const IOVA_SPAN: u64 = 1 << 36;

/// Errors of client spaces and buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpaceError {
    /// No IOMMU (or it is off): PASID address spaces do not exist.
    NoIommu,
    Iommu(IommuError),
    Memory(MmError),
    /// The client's IOVA range is used up.
    IovaExhausted {
        pasid: u32,
    },
    /// The operation needs a client buffer (the kernel's are never unmapped).
    NotAClientBuffer,
    /// Offset outside the buffer.
    OutOfRange {
        off: usize,
        len: usize,
    },
}

impl fmt::Display for SpaceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpaceError::NoIommu => write!(f, "PASID address spaces need the IOMMU"),
            SpaceError::Iommu(e) => write!(f, "iommu: {e}"),
            SpaceError::Memory(e) => write!(f, "memory: {e}"),
            SpaceError::IovaExhausted { pasid } => {
                write!(f, "IOVA range of PASID {pasid} exhausted")
            }
            SpaceError::NotAClientBuffer => write!(f, "not a client buffer"),
            SpaceError::OutOfRange { off, len } => {
                write!(f, "offset {off:#x} outside a {len:#x}-byte buffer")
            }
        }
    }
}

impl From<IommuError> for SpaceError {
    fn from(e: IommuError) -> Self {
        SpaceError::Iommu(e)
    }
}
impl From<MmError> for SpaceError {
    fn from(e: MmError) -> Self {
        SpaceError::Memory(e)
    }
}

/// One client's PASID address space.
pub struct ClientSpace {
    space: iommu::AddressSpace,
    end: u64,
    next: IrqMutex<u64>,
    /// Regions the DSA driver allocated here (completion records, batch lists): IOVA →
    /// (physical address, length).
    regions: IrqMutex<BTreeMap<u64, (u64, usize)>>,
}

impl fmt::Debug for ClientSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClientSpace(pasid {})", self.space.pasid())
    }
}

/// Live client spaces by PASID (weak: dropping the client's `Arc` destroys the space).
static CLIENTS: IrqMutex<BTreeMap<u32, Weak<ClientSpace>>> = IrqMutex::new(BTreeMap::new());

impl ClientSpace {
    /// A new PASID with empty first-stage tables.
    pub fn new() -> Result<Arc<ClientSpace>, SpaceError> {
        if !iommu::is_enabled() {
            return Err(SpaceError::NoIommu);
        }
        let space = iommu::AddressSpace::new(SpaceKind::Translated)?;
        let pasid = space.pasid();
        let base = IOVA_BASE + u64::from(pasid % 1024) * IOVA_SPAN;
        let c = Arc::new(ClientSpace {
            space,
            end: base + IOVA_SPAN,
            next: IrqMutex::new(base),
            regions: IrqMutex::new(BTreeMap::new()),
        });
        CLIENTS.lock().insert(pasid, Arc::downgrade(&c));
        Ok(c)
    }

    pub fn pasid(&self) -> u32 {
        self.space.pasid()
    }

    /// Lets `dev` issue requests tagged with this PASID.
    pub fn attach(&self, dev: PciAddress) -> Result<(), SpaceError> {
        Ok(self.space.attach(dev)?)
    }

    /// A fresh IOVA range of `len` bytes aligned to `align` (IOVAs are never reused, so a
    /// stale descriptor can never reach a later buffer).
    fn alloc_iova(&self, len: u64, align: u64) -> Result<u64, SpaceError> {
        let mut n = self.next.lock();
        let a = n.next_multiple_of(align.max(PAGE));
        let e = a
            .checked_add(len.next_multiple_of(PAGE))
            .filter(|&e| e <= self.end)
            .ok_or(SpaceError::IovaExhausted {
                pasid: self.pasid(),
            })?;
        *n = e;
        Ok(a)
    }

    /// Maps `[iova, iova + len)` to `phys` (read/write).
    pub fn map(&self, iova: u64, phys: u64, len: u64) -> Result<(), SpaceError> {
        Ok(self.space.map(iova, phys, len, Perm::RW)?)
    }

    /// Unmaps `[iova, iova + len)`; later DMA there faults.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<(), SpaceError> {
        self.space.unmap(iova, len)?;
        Ok(())
    }
}

impl Drop for ClientSpace {
    fn drop(&mut self) {
        let mut c = CLIENTS.lock();
        if c.get(&self.pasid()).is_some_and(|w| w.strong_count() == 0) {
            c.remove(&self.pasid());
        }
        let left = self.regions.lock().len();
        if left != 0 {
            // Driver memory still registered: the device might write it, so keep the frames.
            log::error!(
                "dsa: PASID {} destroyed with {left} driver region(s) still allocated; leaking them",
                self.pasid()
            );
        }
    }
}

fn client(pasid: u32) -> Option<Arc<ClientSpace>> {
    CLIENTS.lock().get(&pasid).and_then(Weak::upgrade)
}

/// Spaces kept alive by the driver memory in them: completion records and batch lists must
/// be unmapped and freed through their space, so a space lives until its last driver region
/// is freed (a submitter may outlive its client's own reference, e.g. inside an IMS handle).
static KEEP: IrqMutex<BTreeMap<u32, Arc<ClientSpace>>> = IrqMutex::new(BTreeMap::new());

/// `DmaMemory::alloc` for a client PASID: a zeroed frame block mapped at a fresh IOVA.
pub(super) fn alloc_region(pasid: u32, len: usize) -> Option<DmaRegion> {
    let c = client(pasid)?;
    let block = mm::alloc_frames(len as u64, len as u64).ok()?;
    let iova = match c.alloc_iova(len as u64, len as u64) {
        Ok(i) => i,
        Err(e) => {
            log::warn!("dsa: {e}");
            return None;
        }
    };
    if let Err(e) = c.map(iova, block.addr(), len as u64) {
        log::warn!("dsa: mapping a driver region into PASID {pasid}: {e}");
        return None;
    }
    let (phys, _) = block.into_raw();
    let first = {
        let mut r = c.regions.lock();
        r.insert(iova, (phys, len));
        r.len() == 1
    };
    if first {
        KEEP.lock().insert(pasid, c.clone());
    }
    Some(DmaRegion {
        cpu: NonNull::new(phys as *mut u8)?,
        dev: iova,
        len,
        space: AddressSpace::Pasid(pasid),
    })
}

/// `DmaMemory::free` for a client PASID.
pub(super) fn free_region(pasid: u32, region: DmaRegion) {
    let phys = region.cpu.as_ptr() as u64;
    if let Some(c) = client(pasid) {
        let last = {
            let mut r = c.regions.lock();
            r.remove(&region.dev);
            r.is_empty()
        };
        let unmapped = c.unmap(region.dev, region.len as u64);
        if last {
            // Dropped outside the lock (the space's destructor takes `CLIENTS`), and after
            // the unmap above.
            let kept = KEEP.lock().remove(&pasid);
            drop(kept);
        }
        if let Err(e) = unmapped {
            // Still mapped: the device could reach the frames, so they are not reused.
            log::error!("dsa: unmapping a driver region of PASID {pasid}: {e}; leaking it");
            return;
        }
    }
    // SAFETY: the region is a whole frame block from `alloc_region` (phys, power-of-two
    // len), no longer mapped for the device, returned once by the driver.
    drop(unsafe { FrameBlock::from_raw(phys, (region.len / 4096).trailing_zeros() as u8) });
}

/// Who a buffer belongs to.
#[derive(Clone, Debug)]
enum Owner {
    /// The kernel: device address = physical address.
    Kernel,
    Client(Arc<ClientSpace>),
}

/// A physically contiguous DMA buffer with a CPU view and a device address in its owner's
/// space.
///
/// CPU access (`bytes`, `bytes_mut`) is only valid while no descriptor that names the
/// buffer is in flight: the driver's completion (an acquire load of the completion
/// record's status) orders the device's writes before later CPU reads.
pub struct DmaBuffer {
    phys: u64,
    order: u8,
    len: usize,
    dev: u64,
    owner: Owner,
}

impl fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DmaBuffer(phys {:#x}, dev {:#x}, {} bytes)",
            self.phys, self.dev, self.len
        )
    }
}

fn frames(len: usize, zeroed: bool) -> Result<FrameBlock, SpaceError> {
    let size = (len.max(1) as u64).next_power_of_two().max(PAGE);
    Ok(if zeroed {
        mm::alloc_frames(size, PAGE)?
    } else {
        mm::alloc_frames_uninit(size, PAGE)?
    })
}

impl DmaBuffer {
    /// A kernel buffer of at least `len` bytes (zero-filled if `zeroed`).
    pub fn kernel(len: usize, zeroed: bool) -> Result<DmaBuffer, SpaceError> {
        let b = frames(len, zeroed)?;
        let (phys, order) = b.into_raw();
        Ok(DmaBuffer {
            phys,
            order,
            len,
            dev: phys,
            owner: Owner::Kernel,
        })
    }

    /// A buffer of `len` bytes mapped into `space` at a fresh IOVA.
    pub fn in_client(
        space: &Arc<ClientSpace>,
        len: usize,
        zeroed: bool,
    ) -> Result<DmaBuffer, SpaceError> {
        let b = frames(len, zeroed)?;
        let size = b.size();
        let iova = space.alloc_iova(size, PAGE)?;
        space.map(iova, b.addr(), size)?;
        let (phys, order) = b.into_raw();
        Ok(DmaBuffer {
            phys,
            order,
            len,
            dev: iova,
            owner: Owner::Client(space.clone()),
        })
    }

    /// Kernel buffer or a buffer of `client`.
    pub fn new(
        client: Option<&Arc<ClientSpace>>,
        len: usize,
        zeroed: bool,
    ) -> Result<DmaBuffer, SpaceError> {
        match client {
            Some(c) => Self::in_client(c, len, zeroed),
            None => Self::kernel(len, zeroed),
        }
    }

    /// Device address of byte `off`.
    pub fn dev_addr(&self, off: usize) -> u64 {
        self.dev + off as u64
    }

    /// CPU view (see the type's rule on in-flight descriptors).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `phys` is an identity-mapped frame block of ≥ `len` bytes owned by
        // `self`; the device writes it only while a descriptor is in flight, during which
        // the type's contract forbids CPU access.
        unsafe { core::slice::from_raw_parts(self.phys as *const u8, self.len) }
    }

    /// Mutable CPU view (see the type's rule on in-flight descriptors).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`; `&mut self` makes this the only CPU view.
        unsafe { core::slice::from_raw_parts_mut(self.phys as *mut u8, self.len) }
    }

    /// Unmaps the page holding byte `off` from the client's space (fault tests).
    pub fn unmap_page(&self, off: usize) -> Result<u64, SpaceError> {
        let Owner::Client(c) = &self.owner else {
            return Err(SpaceError::NotAClientBuffer);
        };
        if off >= self.len {
            return Err(SpaceError::OutOfRange { off, len: self.len });
        }
        let iova = (self.dev + off as u64) & !(PAGE - 1);
        c.unmap(iova, PAGE)?;
        Ok(iova)
    }

    /// Maps the page holding byte `off` again.
    pub fn map_page(&self, off: usize) -> Result<(), SpaceError> {
        let Owner::Client(c) = &self.owner else {
            return Err(SpaceError::NotAClientBuffer);
        };
        if off >= self.len {
            return Err(SpaceError::OutOfRange { off, len: self.len });
        }
        let page = off as u64 & !(PAGE - 1);
        c.map(self.dev + page, self.phys + page, PAGE)
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        if let Owner::Client(c) = &self.owner {
            let size = PAGE << self.order;
            if let Err(e) = c.unmap(self.dev, size) {
                log::error!(
                    "dsa: unmapping a buffer of PASID {}: {e}; leaking it",
                    c.pasid()
                );
                return;
            }
        }
        // SAFETY: the block came from `frames` as (phys, order), is no longer mapped for
        // any device, and is freed once.
        drop(unsafe { FrameBlock::from_raw(self.phys, self.order) });
    }
}
