//! Errors of the irqchip. Every allocation failure leaves nothing behind: no vector, no IMS
//! entry, no route, no quota.

use core::fmt;

use crate::platform::PlatformError;
use crate::storage::StorageError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImsError {
    /// The CPU index is outside `0..cpus`.
    NoSuchCpu {
        cpu: usize,
        cpus: usize,
    },
    /// PASIDs are 20 bits.
    BadPasid {
        pasid: u32,
    },
    /// This PASID already holds its quota of handles on this device.
    QuotaExceeded {
        pasid: u32,
        quota: u32,
    },
    /// Every entry of this device's IMS table is in use.
    TableFull {
        entries: u32,
    },
    /// The vector allocator has nothing left on this CPU (per-handle-vector mode, or the
    /// domain's shared vectors at creation).
    VectorsExhausted {
        cpu: usize,
    },
    /// The CPU's handle set is at its configured capacity.
    CpuFull {
        cpu: usize,
        capacity: u32,
    },
    /// The handle was released (arming after release).
    Released,
    /// Posted mode was asked for, but the platform cannot post (no VT-d CAP.PI on every
    /// remapping unit, or no interrupt remapping at all).
    PostedUnsupported,
    /// The storage reports an unusable table.
    BadStorage(&'static str),
    /// The completion source does not match the device or the client's PASID.
    Mismatch(&'static str),
    /// A bounded wait on the control path expired.
    Timeout(&'static str),
    Platform(PlatformError),
    Storage(StorageError),
}

impl From<PlatformError> for ImsError {
    fn from(e: PlatformError) -> Self {
        match e {
            PlatformError::VectorsExhausted { cpu } => ImsError::VectorsExhausted { cpu },
            e => ImsError::Platform(e),
        }
    }
}

impl From<StorageError> for ImsError {
    fn from(e: StorageError) -> Self {
        ImsError::Storage(e)
    }
}

impl fmt::Display for ImsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImsError::NoSuchCpu { cpu, cpus } => write!(f, "no CPU {cpu} (the domain has {cpus})"),
            ImsError::BadPasid { pasid } => write!(f, "PASID {pasid:#x} is not a 20-bit value"),
            ImsError::QuotaExceeded { pasid, quota } => {
                write!(
                    f,
                    "PASID {pasid:#x} already holds its quota of {quota} IMS handle(s)"
                )
            }
            ImsError::TableFull { entries } => {
                write!(f, "all {entries} IMS entries of the device are in use")
            }
            ImsError::VectorsExhausted { cpu } => {
                write!(f, "no free interrupt vector on CPU {cpu}")
            }
            ImsError::CpuFull { cpu, capacity } => {
                write!(
                    f,
                    "CPU {cpu} already serves {capacity} IMS handles (its capacity)"
                )
            }
            ImsError::Released => write!(f, "the IMS handle was released"),
            ImsError::PostedUnsupported => write!(
                f,
                "posted interrupts are not available (every remapping unit needs VT-d CAP.PI)"
            ),
            ImsError::BadStorage(why) => write!(f, "unusable IMS storage: {why}"),
            ImsError::Mismatch(why) => write!(f, "mismatch: {why}"),
            ImsError::Timeout(what) => write!(f, "timed out: {what}"),
            ImsError::Platform(e) => write!(f, "{e}"),
            ImsError::Storage(e) => write!(f, "{e}"),
        }
    }
}
