//! The device-specific part: one device's Interrupt Message Store, and how to make sure the
//! device no longer works on anything that names an entry. DSA implements it in
//! `dsa::ims::DsaImsStorage`.

use core::fmt;

use crate::error::Cause;
use crate::platform::MsiMessage;

/// Why the device refused an IMS operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageError {
    /// The index is outside the table.
    BadIndex {
        /// The entry index asked for.
        index: u32,
    },
    /// The device does not accept this message address (DSA: upper 44 bits must be 0xFEE).
    AddressRejected {
        /// The message address refused.
        addr: u64,
    },
    /// The entry did not read back as written.
    Readback {
        /// The entry that read back differently.
        index: u32,
    },
    /// A device command failed (details are logged by the implementation).
    Command(&'static str),
    /// The device could not guarantee that no work naming the entry is in flight.
    QuiesceFailed(&'static str),
    /// The device driver failed `what` with `cause` (kept whole: its `source()` chain).
    Device {
        /// The operation that failed.
        what: &'static str,
        /// The device driver's error.
        cause: Cause,
    },
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::BadIndex { index } => write!(f, "IMS index {index} out of range"),
            StorageError::AddressRejected { addr } => {
                write!(f, "message address {addr:#x} rejected by the device")
            }
            StorageError::Readback { index } => {
                write!(f, "IMS entry {index} did not read back as written")
            }
            StorageError::Command(why) => write!(f, "device command failed: {why}"),
            StorageError::QuiesceFailed(why) => write!(f, "quiesce failed: {why}"),
            StorageError::Device { what, cause } => write!(f, "{what} failed: {cause}"),
        }
    }
}

impl core::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            StorageError::Device { cause, .. } => Some(cause.error()),
            _ => None,
        }
    }
}

/// One device's IMS table.
///
/// The chip calls these from thread context only, one operation per entry at a time, never
/// from the interrupt handler. Entry lifecycle as the chip drives it:
/// `program` (masked) → `set_masked(false)` … live … → `set_masked(true)` → `quiesce` →
/// `unbind` → `quiesce` → `clear`.
pub trait ImsStorage: Send + Sync {
    /// Number of entries (validated by the implementation against the hardware's limits).
    fn entries(&self) -> u32;

    /// Programs entry `index` with `msg`, bound to `pasid` (the device must refuse descriptors
    /// of any other PASID that name it, raising nothing), and leaves it **masked**. Returns the
    /// value descriptors carry to name the entry (the index, or a handle the device issued).
    fn program(&self, index: u32, msg: MsiMessage, pasid: u32) -> Result<u32, StorageError>;

    /// Replaces the message of a masked, programmed entry (retargeting without interrupt
    /// remapping). The binding is unchanged.
    fn set_message(&self, index: u32, msg: MsiMessage) -> Result<(), StorageError>;

    /// Masks or unmasks an entry. A message the device wants to send while masked is kept
    /// pending and sent when unmasked.
    fn set_masked(&self, index: u32, masked: bool);

    /// True if the entry holds a pending (masked) message.
    fn pending(&self, index: u32) -> bool;

    /// Masks the entry and removes its PASID binding, so that from now on any descriptor
    /// naming it is refused by the device and raises nothing.
    fn unbind(&self, index: u32);

    /// Returns once the device holds no accepted work that names `index` (bound to `pasid`)
    /// and could still complete and use the entry (DSA: Drain PASID). Bounded.
    fn quiesce(&self, index: u32, pasid: u32) -> Result<(), StorageError>;

    /// Returns the entry to its reset state (masked, unbound) and discards any pending
    /// message, so that nothing raised before reaches the entry's next owner. Releases a
    /// device-issued handle.
    fn clear(&self, index: u32) -> Result<(), StorageError>;
}
