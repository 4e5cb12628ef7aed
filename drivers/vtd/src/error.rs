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
    /// Shared virtual addressing needs the unit to translate with the first stage.
    SharedFirstStage,
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ScalableMode => "scalable-mode translation (ECAP.SMTS)",
            Self::QueuedInvalidation => "queued invalidation (ECAP.QI)",
            Self::TranslationStage => "a first- or second-stage translation (ECAP.FSTS/SSTS)",
            Self::FirstStage48Bit => "a 48-bit guest address width for first-stage tables (CAP.MGAW)",
            Self::SecondStageLevels => "3- or 4-level second-stage tables (CAP.SAGAW)",
            Self::InterruptRemapping => "interrupt remapping (ECAP.IR)",
            Self::PassThrough => "pass-through entries (ECAP.PT)",
            Self::RegisterLayout => {
                "fault-recording and IOTLB registers inside the register page (CAP.FRO/NFR, ECAP.IRO)"
            }
            Self::PostedInterrupts => "posted interrupts (CAP.PI)",
            Self::SharedFirstStage => "first-stage translation (shared virtual addressing)",
        })
    }
}

/// What went wrong driving a remapping unit or one of its address spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VtdError {
    /// The unit lacks a capability the driver needs.
    Missing(Requirement),
    /// A capability field holds a value no VT-d implementation can have (Intel VT-d
    /// Architecture Specification rev 4.1, §11.4.2).
    BadCapability {
        /// Register and field, e.g. "CAP.MGAW".
        field: &'static str,
        /// The decoded value.
        value: u64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// A GCMD command whose status bit did not follow in time.
    CommandTimeout {
        /// The GCMD value written.
        command: u32,
    },
    /// An invalidation wait descriptor whose status write did not arrive in time.
    InvalidationTimeout,
    /// The unit rejected a descriptor (FSTS.IQE); the queue was recovered.
    DescriptorRejected {
        /// Descriptor qword 0.
        qw0: u64,
        /// Descriptor qword 1.
        qw1: u64,
    },
    /// IQE recovery failed repeatedly; the queue is unusable.
    InvalidationQueueStuck,
    /// The DMA memory allocator had no block for a table.
    OutOfDmaMemory,
    /// The DMA allocator returned memory the unit cannot address (above HAW) or misaligned.
    BadDmaBlock {
        /// The block's physical address.
        phys: u64,
    },
    /// Every domain ID the unit supports (CAP.ND) is in use.
    DomainIdsExhausted,
    /// Every PASID of the configured width is in use.
    PasidsExhausted,
    /// A PASID at or beyond 2^`Config::pasid_bits`.
    PasidOutOfRange {
        /// The PASID.
        pasid: u32,
    },
    /// The PASID already names an address space.
    PasidInUse {
        /// The PASID.
        pasid: u32,
    },
    /// No address space has this PASID.
    NoSuchAddressSpace {
        /// The PASID.
        pasid: u32,
    },
    /// The address space was revoked; it can only be destroyed.
    AddressSpaceRevoked {
        /// The PASID.
        pasid: u32,
    },
    /// Map/unmap on a pass-through space.
    NoPageTable {
        /// The PASID.
        pasid: u32,
    },
    /// Address, size or physical address not 4 KiB aligned, or empty/overflowing range.
    BadRange {
        /// Start of the range (I/O virtual address).
        iova: u64,
        /// Length in bytes.
        len: u64,
    },
    /// IOVA beyond the input width of the page-table format.
    IovaTooWide {
        /// The I/O virtual address.
        iova: u64,
    },
    /// Physical address beyond the unit's address width.
    PhysTooWide {
        /// The physical address.
        phys: u64,
    },
    /// The range overlaps the interrupt window 0xFEE0_0000–0xFEEF_FFFF (IOVA or output).
    InterruptWindow {
        /// The offending address.
        addr: u64,
    },
    /// A page of the range is mapped already.
    AlreadyMapped {
        /// The first I/O virtual address found mapped.
        iova: u64,
    },
    /// The device has this PASID slot attached to another space, or not attached at all.
    NotAttached {
        /// Source ID of the device.
        sid: u16,
        /// The PASID slot.
        pasid: u32,
    },
    /// The device already has this PASID slot attached.
    AlreadyAttached {
        /// Source ID of the device.
        sid: u16,
        /// The PASID slot.
        pasid: u32,
    },
    /// Operation needs a state the unit is not in (e.g. IR before init).
    NotEnabled(&'static str),
    /// Every IRTE of the table is in use (or no aligned block of the requested count is free).
    IrteExhausted,
    /// The handle names no allocated IRTE (or not the first of its block).
    BadIrteHandle {
        /// The handle.
        handle: u16,
    },
    /// APIC ID too wide for the destination format (8-bit xAPIC / compatibility MSI).
    ApicIdTooWide {
        /// The APIC ID.
        apic_id: u32,
    },
    /// Vectors 0–15 are reserved.
    BadVector {
        /// The vector.
        vector: u8,
    },
    /// A count that must be a power of two in range (IRTE block, PASID width, table order) is not.
    BadCount {
        /// The count given.
        count: u32,
    },
    /// Firmware left translation or IR enabled and it could not be turned off.
    FirmwareStateStuck,
    /// A posted-interrupt descriptor address that is not 64-byte aligned, is zero, or lies
    /// beyond the unit's address width.
    BadPostedDescriptor {
        /// The descriptor address.
        addr: u64,
    },
    /// The operation needs the other IRTE format (e.g. `retarget_irte` on a posted entry).
    WrongIrteFormat {
        /// The handle.
        handle: u16,
    },
    /// A 128-bit IRTE update found the entry changed under it.
    IrteChanged {
        /// The handle.
        handle: u16,
    },
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(r) => write!(f, "the unit lacks {r}"),
            Self::BadCapability {
                field,
                value,
                allowed,
            } => write!(f, "{field} is {value}, expected {allowed}"),
            Self::CommandTimeout { command } => write!(
                f,
                "global command {command:#010x} was not acknowledged in GSTS in time"
            ),
            Self::InvalidationTimeout => {
                write!(
                    f,
                    "an invalidation wait descriptor did not complete in time"
                )
            }
            Self::DescriptorRejected { qw0, qw1 } => write!(
                f,
                "the unit rejected invalidation descriptor {qw0:#018x} {qw1:#018x} (FSTS.IQE)"
            ),
            Self::InvalidationQueueStuck => {
                write!(f, "the invalidation queue stays in error after recovery")
            }
            Self::OutOfDmaMemory => write!(f, "out of memory for remapping tables"),
            Self::BadDmaBlock { phys } => write!(
                f,
                "table memory at {phys:#x} is misaligned or beyond the unit's address width"
            ),
            Self::DomainIdsExhausted => write!(f, "no free domain ID"),
            Self::PasidsExhausted => write!(f, "no free PASID"),
            Self::PasidOutOfRange { pasid } => write!(f, "PASID {pasid} is out of range"),
            Self::PasidInUse { pasid } => write!(f, "PASID {pasid} is in use"),
            Self::NoSuchAddressSpace { pasid } => {
                write!(f, "no address space with PASID {pasid}")
            }
            Self::AddressSpaceRevoked { pasid } => {
                write!(f, "the address space of PASID {pasid} was revoked")
            }
            Self::NoPageTable { pasid } => write!(
                f,
                "PASID {pasid} is a pass-through space: it has no page table to map into"
            ),
            Self::BadRange { iova, len } => write!(
                f,
                "range {iova:#x}+{len:#x} is empty, overflows or is not 4 KiB aligned"
            ),
            Self::IovaTooWide { iova } => {
                write!(f, "IOVA {iova:#x} is beyond the page table's input width")
            }
            Self::PhysTooWide { phys } => write!(
                f,
                "physical address {phys:#x} is beyond the unit's address width"
            ),
            Self::InterruptWindow { addr } => write!(
                f,
                "{addr:#x} lies in the interrupt window 0xfee00000-0xfeefffff"
            ),
            Self::AlreadyMapped { iova } => write!(f, "IOVA {iova:#x} is already mapped"),
            Self::NotAttached { sid, pasid } => write!(
                f,
                "requester {:02x}:{:02x}.{} has no such attachment at PASID {pasid}",
                sid >> 8,
                (sid >> 3) & 0x1f,
                sid & 7
            ),
            Self::AlreadyAttached { sid, pasid } => write!(
                f,
                "requester {:02x}:{:02x}.{} already has PASID {pasid} attached",
                sid >> 8,
                (sid >> 3) & 0x1f,
                sid & 7
            ),
            Self::NotEnabled(what) => write!(f, "{what} is not set up on this unit"),
            Self::IrteExhausted => write!(
                f,
                "the interrupt-remapping table has no free entry (block) left"
            ),
            Self::BadIrteHandle { handle } => {
                write!(f, "interrupt-remapping entry {handle} is not allocated")
            }
            Self::ApicIdTooWide { apic_id } => write!(
                f,
                "APIC ID {apic_id} does not fit the interrupt destination format"
            ),
            Self::BadVector { vector } => {
                write!(f, "vector {vector:#x} is reserved (0x00-0x0f)")
            }
            Self::BadCount { count } => write!(f, "count {count} is out of range"),
            Self::FirmwareStateStuck => write!(
                f,
                "firmware left translation or interrupt remapping on and it cannot be turned off"
            ),
            Self::BadPostedDescriptor { addr } => write!(
                f,
                "posted-interrupt descriptor address {addr:#x} is not a 64-byte aligned address the unit can reach"
            ),
            Self::WrongIrteFormat { handle } => write!(
                f,
                "interrupt-remapping entry {handle} has the other format (posted vs. remapped) for this operation"
            ),
            Self::IrteChanged { handle } => write!(
                f,
                "interrupt-remapping entry {handle} changed during its 128-bit update"
            ),
        }
    }
}

impl core::error::Error for VtdError {}
