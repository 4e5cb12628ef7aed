//! Errors of the irqchip. Every allocation failure leaves nothing behind: no vector, no IMS
//! entry, no route, no quota.

use alloc::sync::Arc;
use core::fmt;

use crate::platform::PlatformError;
use crate::storage::StorageError;

/// A lower layer's error kept whole (with its own `source()` chain): what the device driver
/// or the kernel reported under a [`StorageError`] or [`PlatformError`]. Two causes are
/// equal when they are the same report.
#[derive(Clone)]
pub struct Cause(Arc<dyn core::error::Error + Send + Sync>);

impl Cause {
    /// Keeps `e` whole (shared, so a clone of the cause is the same report).
    pub fn new(e: impl core::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(e))
    }
    /// The error itself.
    pub fn error(&self) -> &(dyn core::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

/// Why the irqchip refused an operation (allocating, arming, retargeting or releasing a
/// handle, or creating a domain). An allocation that fails leaves nothing behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImsError {
    /// The CPU index is outside `0..cpus`.
    NoSuchCpu {
        /// The CPU index asked for.
        cpu: usize,
        /// The number of CPUs of the domain.
        cpus: usize,
    },
    /// PASIDs are 20 bits.
    BadPasid {
        /// The value given (at least 2^20).
        pasid: u32,
    },
    /// This PASID already holds its quota of handles on this device.
    QuotaExceeded {
        /// The PASID asking for one more handle.
        pasid: u32,
        /// The most handles one PASID may hold on one device.
        quota: u32,
    },
    /// Every entry of this device's IMS table is in use.
    TableFull {
        /// The number of entries of the device's IMS table.
        entries: u32,
    },
    /// The vector allocator has nothing left on this CPU (per-handle-vector mode, or the
    /// domain's shared vectors at creation).
    VectorsExhausted {
        /// The CPU without a free vector.
        cpu: usize,
    },
    /// The CPU's handle set is at its configured capacity.
    CpuFull {
        /// The CPU whose handle set is full.
        cpu: usize,
        /// The most handles one CPU's set holds.
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
    /// The platform (vectors, routes, cross-CPU calls) failed.
    Platform(PlatformError),
    /// The device's IMS storage failed.
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

impl core::error::Error for ImsError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ImsError::Platform(e) => Some(e),
            ImsError::Storage(e) => Some(e),
            _ => None,
        }
    }
}
