//! Errors of the VT-d subsystem.

use core::fmt;

/// A capability the driver needs that the unit does not report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// ECAP.SMTS: scalable-mode translation.
    ScalableMode,
    /// ECAP.QI: queued invalidation.
    QueuedInvalidation,
    /// Neither ECAP.FSTS nor ECAP.SSTS.
    TranslationStage,
    /// First stage needs a 48-bit MGAW.
    FirstStage48Bit,
    /// Second stage needs SAGAW 39- or 48-bit.
    SecondStageLevels,
    /// ECAP.IR for interrupt remapping.
    InterruptRemapping,
    /// ECAP.PT for pass-through entries.
    PassThrough,
    /// FRO/NFR or IRO point outside a sane register window.
    RegisterLayout,
    /// CAP.PI for posted-format IRTEs.
    PostedInterrupts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    Missing(Requirement),
    /// A GCMD command whose status bit did not follow in time.
    CommandTimeout {
        command: u32,
    },
    /// An invalidation wait descriptor whose status write did not arrive in time.
    InvalidationTimeout,
    /// The unit rejected a descriptor (FSTS.IQE); the queue was recovered.
    DescriptorRejected {
        qw0: u64,
        qw1: u64,
    },
    /// IQE recovery failed repeatedly; the queue is unusable.
    InvalidationQueueStuck,
    OutOfDmaMemory,
    /// The DMA allocator returned memory the unit cannot address (above HAW) or misaligned.
    BadDmaBlock {
        phys: u64,
    },
    DomainIdsExhausted,
    PasidsExhausted,
    PasidOutOfRange {
        pasid: u32,
    },
    PasidInUse {
        pasid: u32,
    },
    NoSuchAddressSpace {
        pasid: u32,
    },
    AddressSpaceRevoked {
        pasid: u32,
    },
    /// Map/unmap on a pass-through space.
    NoPageTable {
        pasid: u32,
    },
    /// Address, size or physical address not 4 KiB aligned, or empty/overflowing range.
    BadRange {
        iova: u64,
        len: u64,
    },
    /// IOVA beyond the input width of the page-table format.
    IovaTooWide {
        iova: u64,
    },
    /// Physical address beyond the unit's address width.
    PhysTooWide {
        phys: u64,
    },
    /// The range overlaps the interrupt window 0xFEE0_0000–0xFEEF_FFFF (IOVA or output).
    InterruptWindow {
        addr: u64,
    },
    AlreadyMapped {
        iova: u64,
    },
    /// The device has this PASID slot attached to another space, or not attached at all.
    NotAttached {
        sid: u16,
        pasid: u32,
    },
    AlreadyAttached {
        sid: u16,
        pasid: u32,
    },
    /// Operation needs a state the unit is not in (e.g. IR before init).
    NotEnabled(&'static str),
    IrteExhausted,
    BadIrteHandle {
        handle: u16,
    },
    /// APIC ID too wide for the destination format (8-bit xAPIC / compatibility MSI).
    ApicIdTooWide {
        apic_id: u32,
    },
    /// Vectors 0–15 are reserved.
    BadVector {
        vector: u8,
    },
    BadCount {
        count: u32,
    },
    /// Firmware left translation or IR enabled and it could not be turned off.
    FirmwareStateStuck,
    /// A posted-interrupt descriptor address that is not 64-byte aligned, is zero, or lies
    /// beyond the unit's address width.
    BadPostedDescriptor {
        addr: u64,
    },
    /// The operation needs the other IRTE format (e.g. `retarget_irte` on a posted entry).
    WrongIrteFormat {
        handle: u16,
    },
    /// A 128-bit IRTE update found the entry changed under it.
    IrteChanged {
        handle: u16,
    },
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
