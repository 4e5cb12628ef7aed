//! Intel DSA driver: bring-up, work queues, submission, operations, errors.
//!
//! Hardware access goes through the traits in [`hw`] (BAR0 registers, BAR2 portals, DMA
//! memory, a clock, PCI state), which the kernel implements and host tests implement over
//! the `dsa-model` crate. Everything else is logic:
//!
//! * [`device::Device`]: bring-up (Intel DSA Architecture Specification rev 3.0: the Reset
//!   Device, Enable Device and Enable WQ commands of §9.2.12, GRPCFG/WQCFG of
//!   §9.2.23–§9.2.24; halt check, capabilities, configuration, reset, groups/engines/WQs,
//!   enable and verify), commands, drain/abort of WQs and PASIDs,
//!   the misc interrupt (SWERR, halt), recovery from a halt with in-flight operations
//!   finished or failed back.
//! * [`config`] / [`accel_config`]: the default layout and accel-config JSON files,
//!   validated against the capabilities before the device is touched.
//! * [`queue`]: the one owner of completion state: per-submitter rings (slots, records,
//!   exactly-once claims), dedicated-WQ credit pools, and the per-WQ registry interrupts
//!   and recovery walk.
//! * [`submit::Submitter`]: the owner side of a ring: descriptors encoded in place
//!   ([`encode`]), credit chunks for dedicated WQs, ENQCMDS with bounded retry for shared
//!   WQs, tokens with poll/wait, callbacks as a function pointer and a cookie.
//! * [`ops`]: typed builders for every DSA 1.0 operation and batches, validation, result
//!   decoding and page-fault resume.
//! * [`ims`]: the device's IMS table as `ims::ImsStorage`, submission through an IMS handle.
//! * [`json`]: the parser behind accel-config files.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]

extern crate alloc;

pub mod accel_config;
pub mod caps;
pub mod config;
pub mod device;
pub mod dma;
pub mod encode;
pub mod error;
pub mod hw;
pub mod ims;
pub mod json;
pub mod ops;
pub mod queue;
pub mod submit;

pub use accel_config::AccelConfig;
pub use caps::Capabilities;
pub use config::{ConfigError, DeviceConfig, GroupConfig, WqConfig};
pub use device::{
    ConfigSource, Device, DeviceOptions, Hardware, MiscEvents, RecoveryHook, RunState, SwError,
};
pub use error::{DsaError, OpError, PageFault};
pub use hw::{
    AddressSpace, Clock, DmaMemory, DmaRegion, EnqStatus, Pci, PciInfo, Portals, Registers,
};
pub use ims::{DsaIms, DsaImsStorage};
pub use ops::{DifDest, DifFormat, DifSource, DifTags, Op, Output, Resume, ValidationError, Work};
pub use queue::{Callback, Completed, Members};
pub use submit::{BatchDone, Notify, Reaper, Requester, Submitter, SubmitterOptions, Token};
