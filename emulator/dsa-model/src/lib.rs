//! Behavioural model of one Intel DSA 1.0 device, written so that a driver for the real device
//! works on it unchanged. § numbers refer to the Intel DSA Architecture Specification rev 3.0
//! (order number 341204-006US).
//!
//! * [`Device`] is the safe Rust API (host tests of the driver crates use it as a fake device,
//!   with the dev-only `dsa-rig` crate (`emulator/dsa-rig`) as the simulated platform).
//! * [`ffi`] implements the fixed C ABI of `include/dsa_model.h` for the QEMU adapter.
//!
//! # Threading
//!
//! All state sits behind one mutex. Every [`Platform`] callback (DMA, interrupts, trace) is
//! made with that mutex released, because the QEMU callbacks may take the BQL while a vCPU
//! holding the BQL waits for the mutex. MMIO and portal calls never wait for a worker: a
//! command that has to wait for in-flight work (drain, disable, abort) leaves
//! CMDSTATUS.active set and is finished by whichever thread completes the last affected
//! descriptor. Engines are executed either by worker threads ([`Device::worker_run`], one per
//! engine, as the QEMU adapter does) or deterministically on the calling thread
//! ([`Device::run_until_idle`], for host tests).
//!
//! # Model choices where the specification is silent or the sources disagree
//!
//! * **Block on fault**: GENCAP.0 is advertised (Config::block_on_fault, default on). QEMU's
//!   IOMMU has no page-request service, so a fault on a descriptor with BOF set in the
//!   descriptor *and* WQCFG completes with status 0x04 (page request failed) with bytes
//!   completed and fault address as for 0x03. Without BOF it is 0x03.
//! * **Fault address** is the exact first byte that failed (not page aligned). Bytes completed
//!   is a prefix of the work, a suffix for backward memmove. Backward copies write the
//!   destination one destination page at a time, so a write fault never clobbers source bytes
//!   the resumed copy still needs.
//! * **Commands** finish synchronously when no descriptor has to be waited for; Drain/Disable/
//!   Abort commands with work outstanding leave CMDSTATUS.active = 1 until it completes. Abort
//!   drops queued descriptors without a CR and waits for the ones already executing.
//!   Reset WQ on an enabled WQ aborts and disables it, then clears its config except the size.
//!   Disable Device resets every WQ's config except the size (§9.2.24). In Halt, commands other
//!   than Reset Device fail with their natural "not enabled" code (0x10/0x20/0x31/0x32);
//!   Drain/Abort All/PASID succeed at once. CMD reserved bits 30:25 are ignored (DSA 1.0).
//!   A CMD write narrower than 4 bytes is ignored. A halt finishes an active command with 0x03.
//! * **Enable Device** checks, in order: not Disabled 0x10; BME 0x12; sum of WQ sizes 0x14; a
//!   WQ in two groups 0x15; an engine in two groups 0x16; a WQ with size > 0 in a group without
//!   engines 0x17; a WQ with size > 0 and PASID enable while the PCI PASID capability is
//!   disabled 0x13. **Enable WQ**: index 0x02; device 0x20; already enabled 0x21; size 0 0x22;
//!   priority 0 0x23; mode unsupported, shared without PASID enable, threshold > size, or WQ in
//!   no group 0x24; BOF without GENCAP.0 0x25; PASID enable without PCI PASID 0x26; batch shift
//!   0 or above GENCAP 0x27; transfer shift above GENCAP 0x28; priv with PASID but without PCI
//!   privileged mode 0x2A; occupancy interrupt (not advertised) 0x2B; ATS disable (not
//!   advertised) 0x2C; PRS disable (not advertised) 0x2E. Bitmap commands: no WQ named, or a WQ ≥ num_wqs, 0x02.
//! * **Interrupt handles** (Config::cmdcap): Request Interrupt Handle returns
//!   `0x8000 | index`; requesting an index twice returns the same handle, so 0x42 is never
//!   produced. A descriptor handle must have been requested for the table its portal selects.
//!   Without cmdcap the handle is the raw table index.
//! * **INTCAUSE** bits are set even when GENCTRL disables the interrupt; GENCTRL only gates
//!   the MSI-X entry 0 message. Occupancy interrupts are not advertised (WQCAP.53 = 0), nor is
//!   ATS disable, PRS disable, OPCFG, event log, read-buffer control.
//! * **Validation** follows §5.4 (descriptor checks; their order is the model's choice). Reserved-field checks (0x12) cover bytes 38–39 and every
//!   descriptor byte the op does not use (§5.5, Table 5-3), and PASID bits 30:20 for shared WQs.
//!   Flag bits 5, 6, 15 and op-specific bits not supported on DSA 1.0 give 0x11, as do
//!   missing CRAV/RCR where Table 5-5 requires them and Drain without RCR/RCI. Size 0 is
//!   allowed for memmove, fill, compare(-pattern), dualcast, CRC and cache flush (0 bytes,
//!   success) and gives 0x13 for the delta and DIF ops. Privileged descriptors on a shared WQ
//!   without PCI privileged mode give 0x1D, reported in SWERROR.
//! * **Completion**: the CR is written as bytes 1–31 followed by byte 0. A CR is written
//!   when CRAV and (RCR or status ≠ 0x01). Errors without CRAV go to SWERROR (not 0x01, 0x02,
//!   0x05). A misaligned CR address gives SWERROR 0x1B and nothing executes; a CR write that
//!   faults gives SWERROR 0x1A. RCI interrupts fire for every completion except 0x19.
//! * **Partial completions** are written so that software resumes them by the DSA
//!   specification's rules alone (addresses advance by Bytes Completed, the record's CRC or
//!   DIF tags seed the rest); `drivers/dsa/tests/driver/resume_matrix.rs` checks every
//!   operation, operand and page against a routine written from the specification.
//!   Dualcast: Bytes Completed counts only bytes in both destinations (destination 2 gets
//!   whatever destination 1 took before a fault). CRC ops: the record's CRC is that of the
//!   bytes completed (none when the seed read faulted). DIF ops: Bytes Completed counts
//!   source bytes of whole blocks and the record's tags are those of the first block not
//!   completed, also when a buffered chunk's destination write stops short. Create Delta:
//!   the bytes compared whose entries are in the record and the record size; when a record
//!   write faults, the entries that reached memory whole count. Apply Delta: record bytes
//!   applied. Batch: 0x06 with the members read and processed.
//! * **Compare Pattern** reports the mismatch offset rounded down to 8 bytes (DML behaviour),
//!   counted from the descriptor's start: after a resume at a Bytes Completed that is not a
//!   multiple of 8 the offset can differ from a run without faults by up to 7 (both are at
//!   most the true offset, which is all the rounding promises).
//! * **Create Delta maximum record size**: accepted when at least 80 bytes; it need not be a
//!   multiple of 10 (a record overflows when the next 10-byte entry would end past it). The
//!   specification's completion status table names 0x15 "Maximum Delta Record Size or Delta
//!   Record Size out of range"; Intel's accel-config test client (`test/dsa_prep.c`,
//!   `dsa_prep_cr_delta`) submits twice the transfer size (8192 for 4 KiB) with a floor of
//!   80 (`MIN_DELTA_RECORD_SIZE`, `test/dsa.h`); Intel's DML library refuses sizes that are
//!   not multiples of 10 before it submits (`sources/core/src/validation.cpp`), a library
//!   precondition, not a device status. The text of the Create Delta section itself was not
//!   available for this choice: should it require a multiple of 10, the rule lives in
//!   `dsa_spec::delta::max_record_size_valid` alone. Apply Delta's record size stays a
//!   multiple of 10 of at least 10 (a record is whole entries).
//!   Create Delta overflow is result 2 with status 0x01 (0x02 under Check Result when the
//!   mask bit is clear). DIF follows DML's reference semantics: app tag mask bits set = ignored,
//!   source flag bit 4 = incrementing app tag, bit 7 = fixed ref tag; on a DIF error bytes
//!   completed is the source offset of the failing block and the CR tags are that block's.
//! * **Batch**: members run sequentially on the engine that fetched the batch (which honours
//!   Fence trivially). A member status other than 0x01 (0x02 included) counts as failure for
//!   Fence and for the batch status 0x05. Bytes completed of a batch = members fetched.
//! * **Cache Flush** performs no DMA and succeeds.
//! * **Status codes the model never produces by itself** (§5.8.1, Table 5-6 lists them; only fault
//!   injection, below, makes a descriptor complete with them):
//!   0x1E traffic-class error — the reference does not say which TC settings are invalid, so
//!   every GRPCFG TC value is accepted and descriptors may select TC-A or TC-B freely;
//!   0x1F page fault on a Drain readback address — Drain readback is not advertised
//!   (GENCAP), so the flag is invalid (0x11);
//!   0x20/0x21 hardware read/write (or destination readback) errors — host memory never
//!   fails;
//!   0x22 address translation failure — ATS is not modelled: every translation goes
//!   through QEMU's intel-iommu, whose failures are page faults (0x03/0x04/0x06) or, for the
//!   CR address, SWERROR 0x1A.
//! * **Dedicated WQ, limited portal**: behaves like the unlimited one.
//! * Occupancy (WQCFG dw6) counts descriptors queued and not yet picked by an engine.
//!
//! # Fault injection (Config::fault_injection)
//!
//! A test-only register page at BAR0 + [`fault_inject::FAULT_INJECT_BASE`] (0x3000); see
//! [`fault_inject`] (the `dsa-fault-inject` crate, no_std, which kernel tests use too) for the
//! offsets: force a SWERROR code, force the next N descriptors
//! (optionally only one opcode) to complete with a given status without doing any work,
//! delay every completion by N µs (Drain descriptors excepted), force a Halt (a non-zero written byte is also logged as
//! a SWERROR code). Without the property the page reads 0 and ignores writes.
#![allow(clippy::new_without_default)]

mod device;
mod exec;
pub mod ffi;

pub use dsa_fault_inject as fault_inject;

pub use device::Device;

/// Page size used for page-granular DMA decisions.
pub const PAGE_SIZE: u64 = 4096;

/// Device properties. `Default` is a DSA 1.0 part as Sapphire/Emerald Rapids report it
/// (VERSION 0x100, 8 WQs, 4 engines, 4 groups, 2048 IMS entries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub version: u32,
    pub num_wqs: u32,
    pub num_engines: u32,
    pub num_groups: u32,
    pub total_wq_size: u32,
    /// IMS entries (multiple of 256); 0 = no IMS.
    pub ims_entries: u32,
    pub max_xfer_shift: u32,
    pub max_batch_shift: u32,
    pub msix_entries: u32,
    pub shared_wq: bool,
    pub dedicated_wq: bool,
    pub priority: bool,
    /// GENCAP.0 (Block On Fault supported).
    pub block_on_fault: bool,
    /// GENCAP.1 (overlapping memmove supported); without it overlap gives 0x16.
    pub overlapping_copy: bool,
    /// GENCAP.4 with CMDCAP (request/release interrupt handle).
    pub cmdcap: bool,
    pub fault_injection: bool,
    /// Largest single DMA callback and scratch buffer per engine.
    pub dma_chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 0x100,
            num_wqs: 8,
            num_engines: 4,
            num_groups: 4,
            total_wq_size: 128,
            ims_entries: 2048,
            max_xfer_shift: 31,
            max_batch_shift: 10,
            msix_entries: 9,
            shared_wq: true,
            dedicated_wq: true,
            priority: true,
            block_on_fault: true,
            overlapping_copy: true,
            cmdcap: false,
            fault_injection: false,
            dma_chunk: 256 * 1024,
        }
    }
}

/// Why a configuration was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    NumWqs(u32),
    NumEngines(u32),
    NumGroups(u32),
    TotalWqSize(u32),
    ImsEntries(u32),
    MaxXferShift(u32),
    MaxBatchShift(u32),
    MsixEntries(u32),
    NoWqMode,
    DmaChunk(usize),
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::NumWqs(n) => write!(f, "num_wqs {n} not in 1..=64"),
            ConfigError::NumEngines(n) => write!(f, "num_engines {n} not in 1..=64"),
            ConfigError::NumGroups(n) => write!(f, "num_groups {n} not in 1..=8"),
            ConfigError::TotalWqSize(n) => write!(f, "total_wq_size {n} not in 1..=65535"),
            ConfigError::ImsEntries(n) => {
                write!(f, "ims_entries {n} not a multiple of 256 up to 16128")
            }
            ConfigError::MaxXferShift(n) => write!(f, "max_xfer_shift {n} not in 12..=31"),
            ConfigError::MaxBatchShift(n) => write!(f, "max_batch_shift {n} not in 1..=15"),
            ConfigError::MsixEntries(n) => write!(f, "msix_entries {n} not in 1..=64"),
            ConfigError::NoWqMode => write!(f, "neither shared nor dedicated WQs supported"),
            ConfigError::DmaChunk(n) => {
                write!(f, "dma_chunk {n} not a multiple of 4096 in 4 KiB..=16 MiB")
            }
        }
    }
}

impl core::error::Error for ConfigError {}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=64).contains(&self.num_wqs) {
            return Err(ConfigError::NumWqs(self.num_wqs));
        }
        if !(1..=64).contains(&self.num_engines) {
            return Err(ConfigError::NumEngines(self.num_engines));
        }
        if !(1..=8).contains(&self.num_groups) {
            return Err(ConfigError::NumGroups(self.num_groups));
        }
        if !(1..=0xFFFF).contains(&self.total_wq_size) {
            return Err(ConfigError::TotalWqSize(self.total_wq_size));
        }
        if !self.ims_entries.is_multiple_of(256) || self.ims_entries > 63 * 256 {
            return Err(ConfigError::ImsEntries(self.ims_entries));
        }
        if !(12..=31).contains(&self.max_xfer_shift) {
            return Err(ConfigError::MaxXferShift(self.max_xfer_shift));
        }
        if !(1..=15).contains(&self.max_batch_shift) {
            return Err(ConfigError::MaxBatchShift(self.max_batch_shift));
        }
        if !(1..=64).contains(&self.msix_entries) {
            return Err(ConfigError::MsixEntries(self.msix_entries));
        }
        if !self.shared_wq && !self.dedicated_wq {
            return Err(ConfigError::NoWqMode);
        }
        if self.dma_chunk < 4096
            || self.dma_chunk > 16 << 20
            || !self.dma_chunk.is_multiple_of(4096)
        {
            return Err(ConfigError::DmaChunk(self.dma_chunk));
        }
        Ok(())
    }
}

/// Where the adapter must place things (see `DsaModelLayout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub bar0_size: u64,
    pub bar2_size: u64,
    pub msix_table_off: u64,
    pub msix_pba_off: u64,
    pub msix_entries: u32,
    pub num_workers: u32,
}

/// PCI state bits (`DSA_PCI_*`).
pub mod pci {
    pub const BME: u32 = 1 << 0;
    pub const PASID_ENABLE: u32 = 1 << 1;
    pub const PASID_PRIV: u32 = 1 << 2;
    pub const ATS_ENABLE: u32 = 1 << 3;
}

/// Kind of bus transaction that carried a portal store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    /// MOVDIR64B: posted, no status.
    Posted,
    /// ENQCMD/ENQCMDS: deferrable memory write with status.
    DmWr,
}

/// Result of a portal store (meaningful for [`StoreKind::DmWr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalResult {
    Accepted,
    Retry,
}

/// Interrupt table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqTable {
    Msix = 0,
    Ims = 1,
}

/// Why an interrupt was sent or suppressed (`DSA_TRACE_IRQ` a3).
pub mod irq_reason {
    pub const COMPLETION: u64 = 0;
    pub const MISC: u64 = 1;
    pub const IGNORED: u64 = 2;
    pub const MASKED_PENDING: u64 = 3;
    pub const UNMASK_PENDING: u64 = 4;
}

/// Trace events (numbering and arguments as `enum DsaTraceEvent` in the header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    RegRead {
        offset: u64,
        size: u32,
        value: u64,
    },
    RegWrite {
        offset: u64,
        size: u32,
        value: u64,
    },
    Cmd {
        code: u8,
        operand: u32,
        status: u8,
        active: bool,
    },
    Portal {
        wq: u64,
        page: u8,
        kind: StoreKind,
        accepted: bool,
    },
    Desc {
        wq: u32,
        opcode: u8,
        flags: u32,
        pasid: Option<u32>,
        privileged: bool,
    },
    Completion {
        wq: u32,
        opcode: u8,
        status: u8,
        bytes: u32,
    },
    Irq {
        table: IrqTable,
        index: u32,
        sent: bool,
        reason: u64,
    },
    Fault {
        pasid: Option<u32>,
        addr: u64,
        is_write: bool,
        bytes_done: u64,
    },
    SwErr {
        code: u8,
        wq: u8,
        opcode: u8,
        overflow: bool,
    },
    Inject {
        kind: u64,
        a: u64,
        b: u64,
    },
}

impl TraceEvent {
    /// (event id, a0..a3) as passed to the C trace callback.
    pub fn to_raw(&self) -> (u32, [u64; 4]) {
        match *self {
            TraceEvent::RegRead {
                offset,
                size,
                value,
            } => (1, [offset, u64::from(size), value, 0]),
            TraceEvent::RegWrite {
                offset,
                size,
                value,
            } => (2, [offset, u64::from(size), value, 0]),
            TraceEvent::Cmd {
                code,
                operand,
                status,
                active,
            } => (
                3,
                [
                    u64::from(code),
                    u64::from(operand),
                    u64::from(status),
                    u64::from(active),
                ],
            ),
            TraceEvent::Portal {
                wq,
                page,
                kind,
                accepted,
            } => (
                4,
                [
                    wq,
                    u64::from(page),
                    u64::from(kind == StoreKind::DmWr),
                    u64::from(!accepted),
                ],
            ),
            TraceEvent::Desc {
                wq,
                opcode,
                flags,
                pasid,
                privileged,
            } => (
                5,
                [
                    u64::from(wq),
                    u64::from(opcode),
                    u64::from(flags),
                    u64::from(pasid.unwrap_or(0))
                        | u64::from(pasid.is_some()) << 20
                        | u64::from(privileged) << 21,
                ],
            ),
            TraceEvent::Completion {
                wq,
                opcode,
                status,
                bytes,
            } => (
                6,
                [
                    u64::from(wq),
                    u64::from(opcode),
                    u64::from(status),
                    u64::from(bytes),
                ],
            ),
            TraceEvent::Irq {
                table,
                index,
                sent,
                reason,
            } => (7, [table as u64, u64::from(index), u64::from(sent), reason]),
            TraceEvent::Fault {
                pasid,
                addr,
                is_write,
                bytes_done,
            } => (
                8,
                [
                    pasid.map(u64::from).unwrap_or(u64::MAX),
                    addr,
                    u64::from(is_write),
                    bytes_done,
                ],
            ),
            TraceEvent::SwErr {
                code,
                wq,
                opcode,
                overflow,
            } => (
                9,
                [
                    u64::from(code),
                    u64::from(wq),
                    u64::from(opcode),
                    u64::from(overflow),
                ],
            ),
            TraceEvent::Inject { kind, a, b } => (10, [kind, a, b, 0]),
        }
    }
}

/// Address space selector of a DMA: `None` = requests without PASID, else (PASID, privileged).
pub type DmaSpace = Option<(u32, bool)>;

/// What the model needs from its host (QEMU adapter, or a test fake).
pub trait Platform: Send + Sync {
    /// Reads guest memory; returns the bytes transferred before the first failure.
    fn dma_read(&self, space: DmaSpace, addr: u64, buf: &mut [u8]) -> usize;
    /// Writes guest memory; returns the bytes transferred before the first failure.
    fn dma_write(&self, space: DmaSpace, addr: u64, buf: &[u8]) -> usize;
    /// Signals MSI-X table entry `entry` (masking/PBA are the platform's business).
    fn msix_notify(&self, entry: u32);
    /// Sends an MSI (IMS entry message) from the device.
    fn send_msi(&self, addr: u64, data: u32);
    fn trace(&self, _event: TraceEvent) {}
}
