//! Error types: device bring-up and management ([`DsaError`]), configuration
//! ([`ConfigError`], in `config`), and per-operation ([`OpError`]).

use crate::config::ConfigError;
use crate::hw::DmaError;
use crate::ops::ValidationError;
use core::fmt;
use dsa_spec::{Command, ResetType};

/// Device-level errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DsaError {
    /// GENSTS says Halted (DSA spec §9.2.10); `reset` is the reset type needed to leave it.
    Halted {
        /// GENSTS's reset type: what brings the device back.
        reset: ResetType,
    },
    /// VERSION (§9.2.1) names a major version this driver does not drive (raw register).
    UnsupportedVersion(u32),
    /// A capability register (§9.2.2–§9.2.7) is inconsistent: which check failed.
    BadCapability(&'static str),
    /// A count in the capability registers is 0 or past the driver's limit.
    BadCount {
        /// What was counted (WQs, engines, groups, ...).
        what: &'static str,
        /// The count the device reported.
        value: u64,
    },
    /// A table of OFFSETS (§9.2.7) lies inside the fixed registers or past BAR0.
    BadTableOffset {
        /// The table (GRPCFG, WQCFG, MSIXPERM, IMS).
        table: &'static str,
        /// Its offset in BAR0, bytes.
        offset: u64,
        /// Its length, bytes.
        len: u64,
    },
    /// Two tables of OFFSETS (§9.2.7) overlap.
    TablesOverlap {
        /// The lower table.
        a: &'static str,
        /// The table that starts inside it.
        b: &'static str,
    },
    /// BAR2 cannot hold the portals of every WQ.
    PortalBarTooSmall {
        /// BAR2's size, bytes.
        have: u64,
        /// Bytes the WQs' portals need.
        need: u64,
    },
    /// The configuration does not fit the device (see [`ConfigError`]).
    Config(ConfigError),
    /// A command finished with a non-accepted CMDSTATUS error code.
    Command {
        /// The command (§9.2.12).
        cmd: Command,
        /// Its operand field.
        operand: u32,
        /// CMDSTATUS's error code (§5.8.3, Table 5-8).
        status: u8,
    },
    /// A command's CMDSTATUS.active did not clear in time.
    CommandTimeout {
        /// The command (§9.2.12).
        cmd: Command,
        /// Its operand field.
        operand: u32,
    },
    /// The device does not implement this command (CMDCAP).
    CommandUnsupported(Command),
    /// A state check after a command failed.
    UnexpectedState {
        /// The state read (device, WQ n, ...).
        what: &'static str,
        /// The raw value found.
        value: u32,
    },
    /// Allocating DMA memory for the driver's tables or records failed.
    Dma(DmaError),
    /// Every submitter registry slot is taken.
    TooManySubmitters,
    /// No such configured WQ.
    NoSuchWq(u8),
    /// The device was halted and could not be recovered (needs FLR or platform reset).
    Unrecoverable {
        /// GENSTS's reset type (§9.2.10) the halt asked for.
        reset: ResetType,
    },
    /// Submissions did not quiesce before recovery.
    QuiesceTimeout,
    /// The client does not fit the WQ (address space, privilege).
    ClientMismatch(&'static str),
}

impl fmt::Display for DsaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DsaError::Halted { reset } => {
                write!(f, "device is halted (needs {reset:?} reset)")
            }
            DsaError::UnsupportedVersion(v) => write!(f, "unsupported DSA version {v:#x}"),
            DsaError::BadCapability(s) => write!(f, "bad capability: {s}"),
            DsaError::BadCount { what, value } => {
                write!(f, "device reports an invalid number of {what}: {value}")
            }
            DsaError::BadTableOffset { table, offset, len } => write!(
                f,
                "{table} table at BAR0+{offset:#x} ({len:#x} bytes) is outside the register BAR"
            ),
            DsaError::TablesOverlap { a, b } => write!(f, "{a} and {b} tables overlap"),
            DsaError::PortalBarTooSmall { have, need } => {
                write!(f, "portal BAR is {have:#x} bytes, WQs need {need:#x}")
            }
            DsaError::Config(e) => write!(f, "configuration rejected: {e}"),
            DsaError::Command {
                cmd,
                operand,
                status,
            } => write!(
                f,
                "command {cmd:?} (operand {operand:#x}) failed with status {status:#04x} ({})",
                cmd_status_name(*status)
            ),
            DsaError::CommandTimeout { cmd, operand } => {
                write!(f, "command {cmd:?} (operand {operand:#x}) timed out")
            }
            DsaError::CommandUnsupported(c) => write!(f, "command {c:?} not in CMDCAP"),
            DsaError::UnexpectedState { what, value } => {
                write!(f, "unexpected {what} state {value:#x}")
            }
            DsaError::Dma(e) => write!(f, "{e}"),
            DsaError::TooManySubmitters => write!(f, "too many submission contexts"),
            DsaError::NoSuchWq(w) => write!(f, "WQ {w} is not configured"),
            DsaError::Unrecoverable { reset } => {
                write!(f, "device halted and needs a {reset:?} reset")
            }
            DsaError::QuiesceTimeout => write!(f, "submissions did not quiesce"),
            DsaError::ClientMismatch(why) => write!(f, "client does not fit the WQ: {why}"),
        }
    }
}

impl core::error::Error for DsaError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            DsaError::Config(e) => Some(e),
            DsaError::Dma(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ConfigError> for DsaError {
    fn from(e: ConfigError) -> Self {
        DsaError::Config(e)
    }
}
impl From<DmaError> for DsaError {
    fn from(e: DmaError) -> Self {
        DsaError::Dma(e)
    }
}

/// Short name of a CMDSTATUS error code (DSA spec §5.8.3, Table 5-8).
pub fn cmd_status_name(code: u8) -> &'static str {
    use dsa_spec::regs::cmd_err::*;
    match code {
        SUCCESS => "success",
        INVALID_COMMAND => "invalid command",
        INVALID_WQ => "invalid WQ index or bitmap",
        INTERNAL => "internal error",
        RESERVED_FIELD => "reserved field set",
        HALTED => "device halted",
        DEV_ENABLED => "device already enabled",
        DEV_CONFIG => "configuration error",
        BUS_MASTER_EN => "bus master disabled",
        PASID_INVAL => "PASID configuration invalid",
        WQ_SIZE_TOTAL => "WQ sizes exceed the total",
        GRP_CONFIG | GRP_CONFIG2 | GRP_CONFIG3 => "group configuration error",
        RDBUF_CONFIG => "read-buffer configuration invalid",
        EVL_CONFIG => "event-log configuration invalid",
        ATS_CONFIG => "ATS configuration invalid",
        DEV_PASID_CONFIG => "PASID configuration invalid",
        DEV_NOT_EN => "device not enabled",
        WQ_ENABLED => "WQ already enabled",
        WQ_SIZE => "WQ size 0",
        WQ_PRIOR => "WQ priority 0",
        WQ_MODE => "WQ mode invalid",
        BOF_EN => "block on fault unsupported",
        PASID_EN => "WQ PASID enable invalid",
        MAX_BATCH_SIZE => "WQ max batch shift invalid",
        MAX_XFER_SIZE => "WQ max transfer shift invalid",
        WQ_PRIV => "WQ privilege invalid",
        OCC_INT => "occupancy interrupt invalid",
        ATS_DISABLE => "ATS disable invalid",
        OPCFG => "OPCFG invalid",
        PRS_DISABLE => "PRS disable invalid",
        DIS_DEV_EN => "device not enabled",
        WQ_NOT_EN => "WQ not enabled",
        INVAL_INT_IDX => "interrupt index out of range",
        NO_HANDLE => "no interrupt handle available",
        _ => "unknown",
    }
}

/// A page fault reported in a completion record (status 0x03/0x04/0x06).
#[derive(Debug, PartialEq, Eq)]
pub struct PageFault {
    /// Faulting address (device address in the submitter's space).
    pub addr: u64,
    /// True if the faulting access was a write.
    pub write: bool,
    /// Progress of the whole operation (original descriptor) before the fault: bytes for
    /// data ops, delta-record bytes for Apply Delta, members fetched for a batch.
    pub completed: u64,
    /// What to submit, once the mapping is fixed, to finish the operation.
    pub resume: Option<alloc::boxed::Box<crate::ops::Resume>>,
}

/// Per-operation errors (validation, submission, and completion).
#[derive(Debug, PartialEq, Eq)]
pub enum OpError {
    /// Rejected before submission.
    Invalid(ValidationError),
    /// A shared WQ kept answering Retry (or a dedicated WQ had no credit) past the bound.
    QueueFull,
    /// Every completion-record slot of this submitter is in use.
    NoFreeSlot,
    /// The token does not name an outstanding operation of this submitter.
    BadToken,
    /// The requested interrupt cannot be delivered for this descriptor.
    InterruptUnavailable(&'static str),
    /// The device is recovering or was lost.
    DeviceUnavailable,
    /// Completion did not arrive in time (the operation may still complete later).
    Timeout,
    /// A page fault the operation could not get past (completion status 0x03/0x04/0x06,
    /// DSA spec §8.2.1, §5.8.1 Table 5-6).
    PageFault(PageFault),
    /// DIF check failed: status bits (byte 1) and the source offset of the failing block.
    Dif {
        /// The completion record's DIF status bits (byte 1).
        bits: u8,
        /// Byte offset in the source of the block that failed.
        offset: u32,
    },
    /// Apply Delta: offsets not increasing (0x07) or out of range (0x08), at record offset.
    DeltaRecord {
        /// The completion status (0x07 or 0x08).
        status: u8,
        /// Byte offset in the delta record of the bad entry.
        offset: u32,
    },
    /// Status 0x11 with the invalid flag bits the device named.
    InvalidFlags {
        /// The flag bits the completion record reports as invalid.
        bits: u32,
    },
    /// Any other error status of the completion record.
    Status {
        /// The completion status code (§8.2.1, §5.8.1 Table 5-6).
        code: u8,
    },
    /// A batch member was skipped because an earlier member failed before a fence
    /// (no completion record written).
    Abandoned,
    /// The descriptor was dropped by an Abort command, or by a device halt and recovery.
    Aborted,
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Invalid(e) => write!(f, "invalid operation: {e}"),
            OpError::QueueFull => write!(f, "work queue full"),
            OpError::NoFreeSlot => write!(f, "no free completion record"),
            OpError::BadToken => write!(f, "unknown token"),
            OpError::InterruptUnavailable(why) => write!(f, "interrupt unavailable: {why}"),
            OpError::DeviceUnavailable => write!(f, "device unavailable"),
            OpError::Timeout => write!(f, "completion timed out"),
            OpError::PageFault(p) => write!(
                f,
                "page fault on {} at {:#x} after {} units{}",
                if p.write { "write" } else { "read" },
                p.addr,
                p.completed,
                if p.resume.is_some() {
                    " (resumable)"
                } else {
                    ""
                }
            ),
            OpError::Dif { bits, offset } => {
                write!(f, "DIF error {bits:#x} in the block at offset {offset}")
            }
            OpError::DeltaRecord { status, offset } => write!(
                f,
                "delta record error {status:#04x} ({}) at record offset {offset}",
                dsa_spec::status::name(*status)
            ),
            OpError::InvalidFlags { bits } => write!(f, "device rejected flags {bits:#x}"),
            OpError::Status { code } => write!(
                f,
                "completion status {code:#04x} ({})",
                dsa_spec::status::name(*code)
            ),
            OpError::Abandoned => write!(f, "abandoned after an earlier batch member failed"),
            OpError::Aborted => write!(f, "aborted"),
        }
    }
}

impl core::error::Error for OpError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            OpError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ValidationError> for OpError {
    fn from(e: ValidationError) -> Self {
        OpError::Invalid(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::error::Error;

    #[test]
    fn wrapped_errors_are_their_source() {
        let dma = DsaError::Dma(DmaError::OutOfMemory { size: 4096 });
        assert_eq!(
            dma.source().map(ToString::to_string).as_deref(),
            Some("out of DMA memory (4096 bytes)")
        );
        assert!(DsaError::NoSuchWq(3).source().is_none());
        assert_eq!(DsaError::NoSuchWq(3).to_string(), "WQ 3 is not configured");
        let op = OpError::from(ValidationError::ZeroLength);
        assert_eq!(
            op.source().map(ToString::to_string),
            Some(ValidationError::ZeroLength.to_string())
        );
        assert!(OpError::QueueFull.source().is_none());
    }
}
