//! BAR0 MMIO registers (DSA spec §9.2): the register map, layouts, commands, CMDSTATUS and
//! SWERROR.

use crate::{field64, set_field64};
use bitflags::bitflags;

/// BAR index of the MMIO registers.
pub const BAR_MMIO: u8 = 0;
/// BAR index of the WQ portals.
pub const BAR_PORTALS: u8 = 2;

hwio::register_map! {
    /// The BAR0 registers at fixed offsets (DSA spec §9.2, Figure 9-1), each with its width,
    /// value type and access; `bar0::off` holds the bare offsets for the model.
    pub mod bar0 {
        /// VERSION (§9.2.1).
        0x000 => VERSION: Version, ReadOnly;
        /// GENCAP (§9.2.2).
        0x010 => GENCAP: GenCap, ReadOnly;
        /// WQCAP (§9.2.3).
        0x020 => WQCAP: WqCap, ReadOnly;
        /// GRPCAP (§9.2.4).
        0x030 => GRPCAP: GrpCap, ReadOnly;
        /// ENGCAP (§9.2.5).
        0x038 => ENGCAP: EngCap, ReadOnly;
        /// OPCAP, four qwords: bit n of the 256-bit field = opcode n supported (§9.2.6).
        0x040 => OPCAP: OpCap, ReadOnly;
        /// OFFSETS, 128 bits: where the tables are (§9.2.7).
        0x060 => OFFSETS: Offsets, ReadOnly;
        /// GENCFG (§9.2.8; RWL: writable only while the device is disabled).
        0x080 => GENCFG: GenCfg, ReadWrite;
        /// GENCTRL (§9.2.9).
        0x088 => GENCTRL: GenCtrl, ReadWrite;
        /// GENSTS (§9.2.10).
        0x090 => GENSTS: GenSts, ReadOnly;
        /// INTCAUSE (§9.2.11).
        0x098 => INTCAUSE: IntCause, WriteOneToClear;
        /// CMD (§9.2.12; write-only since rev 1.1).
        0x0A0 => CMD: CmdReg, WriteOnly;
        /// CMDSTATUS (§9.2.13).
        0x0A8 => CMDSTATUS: CmdStatus, ReadOnly;
        /// CMDCAP (§9.2.14; valid only with GENCAP.CMD_CAP).
        0x0B0 => CMDCAP: CmdCap, ReadOnly;
        /// SWERROR, four qwords (§9.2.15). Only Valid and Overflow (qword 0 bits 1:0) are RW1C;
        /// writing [`SwErr::ack`] clears them (the other qwords are read-only).
        0x0C0 => SWERROR: SwErr, WriteOneToClear;
    }
}

/// The bare BAR0 offsets (for the device model; drivers use the typed [`bar0`] registers).
pub use bar0::off;

/// Multiplier of the OFFSETS fields (each field counts 256-byte units).
pub const TABLE_MULT: u64 = 0x100;

/// VERSION (§9.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Version(pub u32);
impl Version {
    /// DSA 1.0 (Sapphire Rapids, Emerald Rapids).
    pub const DSA_1_0: Version = Version(0x100);
    /// DSA 2.0 (Granite Rapids).
    pub const DSA_2_0: Version = Version(0x200);
    /// Major version (bits 15:8).
    pub const fn major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Minor version (bits 7:0).
    pub const fn minor(self) -> u8 {
        self.0 as u8
    }
}

bitflags! {
    /// GENCAP (0x10, §9.2.2). Multi-bit fields through the accessor methods.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct GenCap: u64 {
        /// Bit 0: block-on-fault supported (descriptor flag and WQCFG).
        const BLOCK_ON_FAULT = 1 << 0;
        /// Bit 1: Memory Move may have overlapping buffers.
        const OVERLAPPING_COPY = 1 << 1;
        /// Bit 2: cache control supported (descriptor flag bit 8).
        const CACHE_CONTROL_MEM = 1 << 2;
        /// Bit 3: Linux `cache_control_cache` (reserved in rev 3.0).
        const CACHE_CONTROL_CACHE = 1 << 3;
        /// Bit 4: CMDCAP is valid (and interrupt handles come from commands).
        const CMD_CAP = 1 << 4;
        /// Bit 5: durable-write cache-control encodings supported (rev 3.0).
        const DURABLE_WRITE = 1 << 5;
        /// Bit 6: inter-domain operations supported (DSA 2.0).
        const INTER_DOMAIN = 1 << 6;
        /// Bit 7: translation-fetch stride supported (DSA 2.0).
        const TRANSL_FETCH_STRIDE = 1 << 7;
        /// Bit 8: destination readback supported (descriptor flag bit 14).
        const DEST_READBACK = 1 << 8;
        /// Bit 9: Drain readback addresses supported (DSA 2.0).
        const DRAIN_READBACK = 1 << 9;
        /// Bit 10: 16-byte fill patterns supported (rev 3.0).
        const FILL_16B = 1 << 10;
        /// Bit 11: CRC64 supported (rev 3.0).
        const CRC64 = 1 << 11;
        /// Bit 12: the completion record carries fault information (rev 3.0).
        const CR_FAULT_INFO = 1 << 12;
        /// Bit 15: batch continuation supported.
        const BATCH_CONTINUATION = 1 << 15;
        /// Bit 31: GRPCFG, WQCFG and GENCFG are writable (0: fixed configuration).
        const CONFIG_SUPPORT = 1 << 31;
        /// Bit 32: event-log overflow supported (rev 3.0).
        const EVL_OVERFLOW = 1 << 32;
        const _ = !0;
    }
}

impl GenCap {
    /// Event log support field (14:13); 0 = none.
    pub const fn evl_support(self) -> u8 {
        field64(self.bits(), 13, 2) as u8
    }
    /// Max transfer size = 2^shift bytes (20:16).
    pub const fn max_xfer_shift(self) -> u8 {
        field64(self.bits(), 16, 5) as u8
    }
    /// Max batch size = 2^shift descriptors (24:21).
    pub const fn max_batch_shift(self) -> u8 {
        field64(self.bits(), 21, 4) as u8
    }
    /// IMS size field (30:25): entries = field × 256.
    pub const fn ims_size_field(self) -> u8 {
        field64(self.bits(), 25, 6) as u8
    }
    /// Number of IMS entries.
    pub const fn ims_entries(self) -> u32 {
        self.ims_size_field() as u32 * 256
    }
    /// This value with the max transfer shift field (bits 20:16) set to `s`.
    pub const fn with_max_xfer_shift(self, s: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 16, 5, s as u64))
    }
    /// This value with the max batch shift field (bits 24:21) set to `s`.
    pub const fn with_max_batch_shift(self, s: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 21, 4, s as u64))
    }
    /// `entries` must be a multiple of 256 (excess bits dropped).
    pub const fn with_ims_entries(self, entries: u32) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 25, 6, (entries / 256) as u64))
    }
}

bitflags! {
    /// WQCAP (0x20, §9.2.3).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct WqCap: u64 {
        /// Bit 48: shared WQs supported.
        const SHARED_MODE = 1 << 48;
        /// Bit 49: dedicated WQs supported.
        const DEDICATED_MODE = 1 << 49;
        /// Bit 50: per-WQ ATS disable supported.
        const WQ_ATS_DISABLE = 1 << 50;
        /// Bit 51: WQ priority supported (WQCFG priority must be non-zero).
        const PRIORITY = 1 << 51;
        /// Bit 52: WQ occupancy reporting supported.
        const OCCUPANCY = 1 << 52;
        /// Bit 53: WQ occupancy interrupt supported.
        const OCCUPANCY_INT = 1 << 53;
        /// Bit 54: per-WQ operation configuration supported (DSA 2.0).
        const OPCFG = 1 << 54;
        /// Bit 55: per-WQ page-request disable supported (DSA 2.0).
        const WQ_PRS_DISABLE = 1 << 55;
        const _ = !0;
    }
}

impl WqCap {
    /// Total WQ size (bits 15:0): WQ entries shared by all WQs.
    pub const fn total_wq_size(self) -> u16 {
        field64(self.bits(), 0, 16) as u16
    }
    /// Number of WQs (bits 23:16).
    pub const fn num_wqs(self) -> u8 {
        field64(self.bits(), 16, 8) as u8
    }
    /// WQCFG entry size code N (27:24); entry size = 2^(N+5) bytes.
    pub const fn wqcfg_size_code(self) -> u8 {
        field64(self.bits(), 24, 4) as u8
    }
    /// WQCFG entry size in bytes (32 on DSA 1.0).
    pub const fn wqcfg_entry_size(self) -> u64 {
        1u64 << (self.wqcfg_size_code() as u32 + 5)
    }
    /// This value with the total WQ size field (bits 15:0) set to `n`.
    pub const fn with_total_wq_size(self, n: u16) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 0, 16, n as u64))
    }
    /// This value with the number-of-WQs field (bits 23:16) set to `n`.
    pub const fn with_num_wqs(self, n: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 16, 8, n as u64))
    }
    /// This value with the WQCFG entry size code (bits 27:24) set to `n`.
    pub const fn with_wqcfg_size_code(self, n: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 24, 4, n as u64))
    }
}

bitflags! {
    /// GRPCAP (0x30, §9.2.4).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct GrpCap: u64 {
        /// Bit 16: the group read-buffer fields of GRPCFG are writable.
        const RDBUF_CTRL = 1 << 16;
        /// Bit 17: GENCFG's global read-buffer limit supported.
        const RDBUF_GLOBAL_LIMIT = 1 << 17;
        /// Bit 18: per-group descriptor-in-progress limits supported.
        const DESC_IN_PROGRESS_LIMIT = 1 << 18;
        /// Bit 19: per-group bandwidth limit supported (rev 3.0).
        const BANDWIDTH_LIMIT = 1 << 19;
        const _ = !0;
    }
}

impl GrpCap {
    /// Number of groups (bits 7:0).
    pub const fn num_groups(self) -> u8 {
        field64(self.bits(), 0, 8) as u8
    }
    /// Total read buffers (bits 15:8), shared by all groups.
    pub const fn total_rdbufs(self) -> u8 {
        field64(self.bits(), 8, 8) as u8
    }
    /// This value with the number-of-groups field (bits 7:0) set to `n`.
    pub const fn with_num_groups(self, n: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 0, 8, n as u64))
    }
    /// This value with the total read buffers field (bits 15:8) set to `n`.
    pub const fn with_total_rdbufs(self, n: u8) -> Self {
        Self::from_bits_retain(set_field64(self.bits(), 8, 8, n as u64))
    }
}

/// ENGCAP (0x38, §9.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngCap(pub u64);
impl EngCap {
    /// Number of engines (bits 7:0).
    pub const fn num_engines(self) -> u8 {
        field64(self.0, 0, 8) as u8
    }
    /// Maximum work descriptors in progress per engine (bits 15:8).
    pub const fn max_work_desc_per_engine(self) -> u8 {
        field64(self.0, 8, 8) as u8
    }
    /// Maximum batch descriptors in progress per engine (bits 23:16).
    pub const fn max_batch_desc_per_engine(self) -> u8 {
        field64(self.0, 16, 8) as u8
    }
    /// The register for `engines` engines and the given per-engine limits.
    pub const fn new(engines: u8, work: u8, batch: u8) -> Self {
        EngCap(engines as u64 | (work as u64) << 8 | (batch as u64) << 16)
    }
}

/// OPCAP (0x40, 256 bits, §9.2.6): bit n ⇔ opcode n supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OpCap(pub [u64; 4]);
impl OpCap {
    /// Whether opcode `opcode` is supported.
    pub const fn supports(&self, opcode: u8) -> bool {
        (self.0[(opcode / 64) as usize] >> (opcode % 64)) & 1 == 1
    }
    /// This value with opcode `opcode` marked supported.
    pub const fn with(mut self, opcode: u8) -> Self {
        self.0[(opcode / 64) as usize] |= 1 << (opcode % 64);
        self
    }
}

/// OFFSETS (0x60, 128 bits, §9.2.7): table offsets in 256-byte units.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Offsets(pub [u64; 2]);
impl Offsets {
    const fn unit(&self, idx: u32) -> u64 {
        field64(self.0[(idx / 4) as usize], (idx % 4) * 16, 16) * TABLE_MULT
    }
    /// Byte offset of the GRPCFG table in BAR0 (bits 15:0 × 0x100).
    pub const fn grpcfg(&self) -> u64 {
        self.unit(0)
    }
    /// Byte offset of the WQCFG table in BAR0 (bits 31:16 × 0x100).
    pub const fn wqcfg(&self) -> u64 {
        self.unit(1)
    }
    /// Byte offset of the MSI-X permissions table in BAR0 (bits 47:32 × 0x100).
    pub const fn msixperm(&self) -> u64 {
        self.unit(2)
    }
    /// Byte offset of the IMS table in BAR0 (bits 63:48 × 0x100).
    pub const fn ims(&self) -> u64 {
        self.unit(3)
    }
    /// Byte offset of the performance-monitoring registers in BAR0 (bits 79:64 × 0x100).
    pub const fn perfmon(&self) -> u64 {
        self.unit(4)
    }
    /// Byte offset of the inter-domain permission table in BAR0 (bits 95:80 × 0x100; DSA 2.0).
    pub const fn idpt(&self) -> u64 {
        self.unit(5)
    }
    /// Builds the register from byte offsets (each must be a multiple of 0x100).
    pub const fn new(grpcfg: u64, wqcfg: u64, msixperm: u64, ims: u64, perfmon: u64) -> Self {
        let q0 = (grpcfg / TABLE_MULT)
            | (wqcfg / TABLE_MULT) << 16
            | (msixperm / TABLE_MULT) << 32
            | (ims / TABLE_MULT) << 48;
        Offsets([q0, perfmon / TABLE_MULT])
    }
}

bitflags! {
    /// GENCFG (0x80, RWL, §9.2.8).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GenCfg: u32 {
        /// Bit 12: user-mode (unprivileged) descriptors may request completion interrupts.
        const USER_INT_ENABLE = 1 << 12;
        /// Bit 13: event log enabled (DSA 2.0).
        const EVL_ENABLE = 1 << 13;
        const _ = !0;
    }
}
impl GenCfg {
    /// Global read-buffer limit (bits 7:0; needs GRPCAP.RDBUF_GLOBAL_LIMIT).
    pub const fn global_rdbuf_limit(self) -> u8 {
        self.bits() as u8
    }
}

bitflags! {
    /// GENCTRL (0x88, §9.2.9).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct GenCtrl: u32 {
        /// Bit 0: interrupt on a software error (INTCAUSE.SOFTWARE_ERROR).
        const SWERR_INT_ENABLE = 1 << 0;
        /// Bit 1: interrupt when the device halts (INTCAUSE.HALTED).
        const HALT_INT_ENABLE = 1 << 1;
        /// Bit 2: event-log interrupt (INTCAUSE.EVL).
        const EVL_INT_ENABLE = 1 << 2;
        const _ = !0;
    }
}

/// GENSTS device state (bits 1:0, §9.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DeviceState {
    /// 0: disabled (configuration registers writable).
    Disabled = 0,
    /// 1: enabled.
    Enabled = 1,
    /// 2: a disable or reset is in progress.
    Draining = 2,
    /// 3: halted after an error; leave with the reset of [`GenSts::reset_type`].
    Halted = 3,
}

/// GENSTS reset type needed to leave Halt (bits 3:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ResetType {
    /// 0: a Reset Device command is enough.
    Software = 0,
    /// 1: a function-level reset.
    Flr = 1,
    /// 2: a warm reset of the platform.
    Warm = 2,
    /// 3: a cold reset of the platform.
    Cold = 3,
}

/// GENSTS (0x90, RO, §9.2.10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GenSts(pub u32);
impl GenSts {
    /// Device state (bits 1:0).
    pub const fn state(self) -> DeviceState {
        match self.0 & 3 {
            0 => DeviceState::Disabled,
            1 => DeviceState::Enabled,
            2 => DeviceState::Draining,
            _ => DeviceState::Halted,
        }
    }
    /// Reset type needed to leave Halt (bits 3:2).
    pub const fn reset_type(self) -> ResetType {
        match (self.0 >> 2) & 3 {
            0 => ResetType::Software,
            1 => ResetType::Flr,
            2 => ResetType::Warm,
            _ => ResetType::Cold,
        }
    }
    /// The register for a state and a reset type.
    pub const fn new(state: DeviceState, reset: ResetType) -> Self {
        GenSts(state as u32 | (reset as u32) << 2)
    }
}

bitflags! {
    /// INTCAUSE (0x98, RW1C, §9.2.11). Every cause signals MSI-X entry 0.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct IntCause: u32 {
        /// Bit 0: SWERROR or the event log has a new entry.
        const SOFTWARE_ERROR = 1 << 0;
        /// Bit 1: a command that requested an interrupt completed.
        const COMMAND_COMPLETED = 1 << 1;
        /// Bit 2: a WQ's occupancy fell below its limit.
        const OCCUPANCY = 1 << 2;
        /// Bit 3: a performance counter overflowed.
        const PERFMON_OVERFLOW = 1 << 3;
        /// Bit 4: the device entered the halted state.
        const HALTED = 1 << 4;
        /// Bit 5: event-log interrupt.
        const EVL = 1 << 5;
        /// Bit 31: interrupt handles were revoked (request them again).
        const INT_HANDLES_REVOKED = 1 << 31;
        const _ = !0;
    }
}

/// Command codes (CMD bits 24:20, §9.2.12, Table 9-5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Command {
    /// Enable the device (operand 0).
    EnableDevice = 0x01,
    /// Disable the device: drain and disable every WQ, then the device (operand 0).
    DisableDevice = 0x02,
    /// Wait for every descriptor submitted before the command (operand 0).
    DrainAll = 0x03,
    /// Abort every descriptor in progress (operand 0).
    AbortAll = 0x04,
    /// Return every configuration register to its reset value (operand 0).
    ResetDevice = 0x05,
    /// Enable one WQ (operand: WQ index).
    EnableWq = 0x06,
    /// Disable WQs (operand: WQ bitmap, [`wq_bitmap_operand`]).
    DisableWq = 0x07,
    /// Drain WQs (operand: WQ bitmap).
    DrainWq = 0x08,
    /// Abort WQs (operand: WQ bitmap).
    AbortWq = 0x09,
    /// Reset WQs' configuration except their size (operand: WQ bitmap).
    ResetWq = 0x0A,
    /// Drain one PASID (operand: the PASID).
    DrainPasid = 0x0B,
    /// Abort one PASID (operand: the PASID).
    AbortPasid = 0x0C,
    /// Request an interrupt handle (operand: [`int_handle_operand`]; handle in CMDSTATUS.result).
    RequestIntHandle = 0x0D,
    /// Release an interrupt handle (operand: [`int_handle_operand`]).
    ReleaseIntHandle = 0x0E,
    /// Request an inter-domain permission table handle (DSA 2.0).
    RequestIdptHandle = 0x0F,
    /// Release an inter-domain permission table handle (DSA 2.0).
    ReleaseIdptHandle = 0x10,
    /// Invalidate the submitter-bitmap cache (parameters in CMDPARAM; rev 3.0).
    InvalidateSubmitterCache = 0x11,
}

impl Command {
    /// The command for a code (CMD bits 24:20), `None` for unknown codes.
    pub const fn from_code(code: u8) -> Option<Command> {
        use Command::*;
        Some(match code {
            0x01 => EnableDevice,
            0x02 => DisableDevice,
            0x03 => DrainAll,
            0x04 => AbortAll,
            0x05 => ResetDevice,
            0x06 => EnableWq,
            0x07 => DisableWq,
            0x08 => DrainWq,
            0x09 => AbortWq,
            0x0A => ResetWq,
            0x0B => DrainPasid,
            0x0C => AbortPasid,
            0x0D => RequestIntHandle,
            0x0E => ReleaseIntHandle,
            0x0F => RequestIdptHandle,
            0x10 => ReleaseIdptHandle,
            0x11 => InvalidateSubmitterCache,
            _ => return None,
        })
    }
    /// True for the commands whose operand is the WQ bitmap form (codes 7–10).
    pub const fn takes_wq_bitmap(self) -> bool {
        matches!(
            self,
            Command::DisableWq | Command::DrainWq | Command::AbortWq | Command::ResetWq
        )
    }
}

/// CMD register value (0xA0, §9.2.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CmdReg(pub u32);
impl CmdReg {
    /// Bit 31: request a completion interrupt (INTCAUSE.COMMAND_COMPLETED on MSI-X entry 0).
    pub const REQUEST_INT: u32 = 1 << 31;
    /// Bits 30:25: reserved (must be zero).
    pub const RESERVED_MASK: u32 = 0x3F << 25;
    /// The register value for `cmd` with `operand` (bits 19:0).
    pub const fn new(cmd: Command, operand: u32, request_int: bool) -> Self {
        CmdReg(
            (operand & 0xF_FFFF)
                | (cmd as u32) << 20
                | if request_int { Self::REQUEST_INT } else { 0 },
        )
    }
    /// Operand (bits 19:0).
    pub const fn operand(self) -> u32 {
        self.0 & 0xF_FFFF
    }
    /// Command code (bits 24:20).
    pub const fn code(self) -> u8 {
        ((self.0 >> 20) & 0x1F) as u8
    }
    /// Whether bit 31 (request completion interrupt) is set.
    pub const fn request_int(self) -> bool {
        self.0 & Self::REQUEST_INT != 0
    }
    /// The reserved bits (30:25) as set.
    pub const fn reserved(self) -> u32 {
        self.0 & Self::RESERVED_MASK
    }
}

/// WQ bitmap operand for commands 7–10: `(1 << (wq % 16)) | ((wq / 16) << 16)`.
pub const fn wq_bitmap_operand(wq: u8) -> u32 {
    (1 << (wq % 16)) | ((wq as u32 / 16) << 16)
}

/// Decodes a WQ bitmap operand into (first WQ index of the block, 16-bit bitmap).
pub const fn wq_bitmap_decode(operand: u32) -> (u32, u16) {
    (((operand >> 16) & 0xF) * 16, operand as u16)
}

/// Operand of Request/Release Interrupt Handle: table index plus the IMS selector (bit 16).
pub const fn int_handle_operand(index: u16, ims: bool) -> u32 {
    index as u32 | if ims { 1 << 16 } else { 0 }
}

/// CMDSTATUS (0xA8, §9.2.13).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CmdStatus(pub u32);
impl CmdStatus {
    /// Bit 31: a command is in progress.
    pub const ACTIVE: u32 = 1 << 31;
    /// Error code (bits 7:0; 0 = success, [`cmd_err`]).
    pub const fn error(self) -> u8 {
        self.0 as u8
    }
    /// Result (bits 23:8): the interrupt or IDPT handle of a request command.
    pub const fn result(self) -> u16 {
        (self.0 >> 8) as u16
    }
    /// Whether a command is in progress (bit 31).
    pub const fn active(self) -> bool {
        self.0 & Self::ACTIVE != 0
    }
    /// The register for an error code, a result and the active bit.
    pub const fn new(error: u8, result: u16, active: bool) -> Self {
        CmdStatus(error as u32 | (result as u32) << 8 | if active { Self::ACTIVE } else { 0 })
    }
}

/// CMDSTATUS error codes (§5.8.3, Table 5-8).
pub mod cmd_err {
    /// Success.
    pub const SUCCESS: u8 = 0x00;
    /// Invalid command code (or one CMDCAP does not list).
    pub const INVALID_COMMAND: u8 = 0x01;
    /// Invalid WQ index or bitmap.
    pub const INVALID_WQ: u8 = 0x02;
    /// Internal hardware error.
    pub const INTERNAL: u8 = 0x03;
    /// A reserved field of CMD is not zero (rev 3.0).
    pub const RESERVED_FIELD: u8 = 0x04;
    /// Command not allowed while the device is halted (rev 3.0).
    pub const HALTED: u8 = 0x05;
    /// Enable Device: the device is not disabled.
    pub const DEV_ENABLED: u8 = 0x10;
    /// Enable Device: configuration error.
    pub const DEV_CONFIG: u8 = 0x11;
    /// Enable Device: Bus Master Enable is 0.
    pub const BUS_MASTER_EN: u8 = 0x12;
    /// Enable Device: PASID or page-request allocation configuration invalid.
    pub const PASID_INVAL: u8 = 0x13;
    /// Enable Device: the WQ sizes add up to more than WQCAP's total.
    pub const WQ_SIZE_TOTAL: u8 = 0x14;
    /// Enable Device: group configuration error (a WQ or engine in several groups, and similar).
    pub const GRP_CONFIG: u8 = 0x15;
    /// Enable Device: group configuration error (second kind).
    pub const GRP_CONFIG2: u8 = 0x16;
    /// Enable Device: group configuration error (third kind).
    pub const GRP_CONFIG3: u8 = 0x17;
    /// Enable Device: read-buffer or bandwidth configuration invalid.
    pub const RDBUF_CONFIG: u8 = 0x18;
    /// Enable Device: event-log configuration invalid (DSA 2.0).
    pub const EVL_CONFIG: u8 = 0x19;
    /// Enable Device: ATS configuration invalid (rev 3.0).
    pub const ATS_CONFIG: u8 = 0x1A;
    /// Enable Device: PASID configuration invalid (rev 3.0).
    pub const DEV_PASID_CONFIG: u8 = 0x1B;
    /// Enable WQ: the device is not enabled.
    pub const DEV_NOT_EN: u8 = 0x20;
    /// Enable WQ: the WQ is already enabled.
    pub const WQ_ENABLED: u8 = 0x21;
    /// Enable WQ: WQ size 0.
    pub const WQ_SIZE: u8 = 0x22;
    /// Enable WQ: priority 0 where priority is supported.
    pub const WQ_PRIOR: u8 = 0x23;
    /// Enable WQ: invalid mode (unsupported, or shared without PASID enable).
    pub const WQ_MODE: u8 = 0x24;
    /// Enable WQ: block-on-fault enabled but not supported.
    pub const BOF_EN: u8 = 0x25;
    /// Enable WQ: PASID enable invalid.
    pub const PASID_EN: u8 = 0x26;
    /// Enable WQ: max batch shift invalid (0 or above GENCAP's).
    pub const MAX_BATCH_SIZE: u8 = 0x27;
    /// Enable WQ: max transfer shift invalid.
    pub const MAX_XFER_SIZE: u8 = 0x28;
    /// Enable WQ: privilege setting invalid.
    pub const WQ_PRIV: u8 = 0x2A;
    /// Enable WQ: occupancy-interrupt configuration invalid.
    pub const OCC_INT: u8 = 0x2B;
    /// Enable WQ: ATS-disable invalid.
    pub const ATS_DISABLE: u8 = 0x2C;
    /// Enable WQ: OPCFG invalid (DSA 2.0).
    pub const OPCFG: u8 = 0x2D;
    /// Enable WQ: PRS-disable invalid (DSA 2.0).
    pub const PRS_DISABLE: u8 = 0x2E;
    /// Disable Device: the device was not enabled.
    pub const DIS_DEV_EN: u8 = 0x31;
    /// Disable/Drain/Abort/Reset WQ: a named WQ is not enabled.
    pub const WQ_NOT_EN: u8 = 0x32;
    /// Request/Release Interrupt Handle: index out of range.
    pub const INVAL_INT_IDX: u8 = 0x41;
    /// Request Interrupt Handle: no handle available.
    pub const NO_HANDLE: u8 = 0x42;
}

/// CMDCAP (0xB0, §9.2.14): bit n ⇔ command code n supported (valid only with GENCAP.CMD_CAP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CmdCap(pub u64);
impl CmdCap {
    /// Whether command code `code` is supported.
    pub const fn supports(self, code: u8) -> bool {
        code < 64 && (self.0 >> code) & 1 == 1
    }
}

bitflags! {
    /// SWERROR word 0 flag bits (§9.2.15); code/WQ/opcode/PASID through [`SwErr`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct SwErrFlags: u64 {
        /// Bit 0: an error is recorded (RW1C).
        const VALID = 1 << 0;
        /// Bit 1: a further error arrived while VALID was set (RW1C).
        const OVERFLOW = 1 << 1;
        /// Bit 2: the descriptor fields (opcode, PASID, privilege) are meaningful.
        const DESC_VALID = 1 << 2;
        /// Bit 3: the WQ index is meaningful.
        const WQ_INDEX_VALID = 1 << 3;
        /// Bit 4: the error was in a batch member (the batch index is meaningful).
        const BATCH = 1 << 4;
        /// Bit 5: the faulting access was a write.
        const FAULT_RW = 1 << 5;
        /// Bit 6: the descriptor was privileged.
        const PRIV = 1 << 6;
        /// Bit 7: qword 1's error info is meaningful.
        const ERROR_INFO_VALID = 1 << 7;
        const _ = !0;
    }
}

/// Software-only SWERROR codes (never in a completion record; §5.8.2, Table 5-7).
pub mod swerr_code {
    /// PCI configuration changed while the device was enabled (the device halts).
    pub const PCI_CONFIG_CHANGED: u8 = 0x51;
    /// CMD written while a command was active (the write is dropped).
    pub const CMD_WHILE_ACTIVE: u8 = 0x52;
    /// Descriptor written to a full dedicated WQ (dropped).
    pub const DWQ_FULL: u8 = 0x53;
    /// Event-log append failed.
    pub const EVL_APPEND: u8 = 0x54;
}

/// The four SWERROR qwords (0xC0, §9.2.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SwErr(pub [u64; 4]);
impl SwErr {
    /// Value Linux writes back to qword 0 to acknowledge: only bits 1:0 kept.
    pub const ACK_MASK: u64 = 0x3;
    /// What to write back to acknowledge this error: Valid and Overflow as read (RW1C), the
    /// read-only rest zero.
    pub const fn ack(&self) -> SwErr {
        SwErr([self.0[0] & Self::ACK_MASK, 0, 0, 0])
    }
    /// The flag bits of qword 0 (bits 7:0).
    pub const fn flags(&self) -> SwErrFlags {
        SwErrFlags::from_bits_retain(self.0[0] & 0xFF)
    }
    /// Valid (qword 0 bit 0): an error is recorded.
    pub const fn valid(&self) -> bool {
        self.0[0] & 1 != 0
    }
    /// Overflow (qword 0 bit 1): a further error arrived while Valid was set.
    pub const fn overflow(&self) -> bool {
        self.0[0] & 2 != 0
    }
    /// Error code (qword 0 bits 15:8): a completion status or a [`swerr_code`].
    pub const fn code(&self) -> u8 {
        field64(self.0[0], 8, 8) as u8
    }
    /// WQ index (qword 0 bits 23:16; valid with WQ_INDEX_VALID).
    pub const fn wq(&self) -> u8 {
        field64(self.0[0], 16, 8) as u8
    }
    /// Opcode of the descriptor (qword 0 bits 39:32; valid with DESC_VALID).
    pub const fn opcode(&self) -> u8 {
        field64(self.0[0], 32, 8) as u8
    }
    /// PASID of the descriptor (qword 0 bits 59:40; valid with DESC_VALID).
    pub const fn pasid(&self) -> u32 {
        field64(self.0[0], 40, 20) as u32
    }
    /// Position of the failing descriptor in its batch (qword 1 bits 15:0; valid with BATCH).
    pub const fn batch_index(&self) -> u16 {
        self.0[1] as u16
    }
    /// Error info (word 1 bits 63:32): invalid flags for 0x11, handle (47:32) for 0x19.
    pub const fn error_info(&self) -> u32 {
        (self.0[1] >> 32) as u32
    }
    /// Faulting address (qword 2; bits 11:0 may read as 0).
    pub const fn fault_addr(&self) -> u64 {
        self.0[2]
    }
    /// Composes word 0 (the model uses this; drivers only decode).
    pub const fn word0(flags: SwErrFlags, code: u8, wq: u8, opcode: u8, pasid: u32) -> u64 {
        (flags.bits() & 0xFF)
            | (code as u64) << 8
            | (wq as u64) << 16
            | (opcode as u64) << 32
            | ((pasid & 0xF_FFFF) as u64) << 40
    }
}

hwio::flags_value!(GenCap: u64, WqCap: u64, GrpCap: u64, GenCfg: u32, GenCtrl: u32, IntCause: u32);
hwio::newtype_value!(
    Version: u32,
    EngCap: u64,
    OpCap: [u64; 4],
    Offsets: [u64; 2],
    GenSts: u32,
    CmdReg: u32,
    CmdStatus: u32,
    CmdCap: u64,
    SwErr: [u64; 4],
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emr_gencap_decodes() {
        let g = GenCap::from_bits_retain(0x40915F0107);
        assert!(g.contains(GenCap::BLOCK_ON_FAULT));
        assert!(g.contains(GenCap::OVERLAPPING_COPY));
        assert!(g.contains(GenCap::CACHE_CONTROL_MEM));
        assert!(!g.contains(GenCap::CACHE_CONTROL_CACHE));
        assert!(!g.contains(GenCap::CMD_CAP));
        assert!(g.contains(GenCap::DEST_READBACK));
        assert!(!g.contains(GenCap::DRAIN_READBACK));
        assert_eq!(g.evl_support(), 0);
        assert_eq!(g.max_xfer_shift(), 31);
        assert_eq!(g.max_batch_shift(), 10);
        assert_eq!(g.ims_size_field(), 8);
        assert_eq!(g.ims_entries(), 2048);
        assert!(g.contains(GenCap::CONFIG_SUPPORT));
        assert!(!g.contains(GenCap::EVL_OVERFLOW));
        // Bit 38 is set on EMR with unknown meaning: it must survive a round trip.
        assert_eq!(g.bits() >> 38 & 1, 1);
        let built = (GenCap::BLOCK_ON_FAULT
            | GenCap::OVERLAPPING_COPY
            | GenCap::CACHE_CONTROL_MEM
            | GenCap::DEST_READBACK
            | GenCap::CONFIG_SUPPORT
            | GenCap::from_bits_retain(1 << 38))
        .with_max_xfer_shift(31)
        .with_max_batch_shift(10)
        .with_ims_entries(2048);
        assert_eq!(built.bits(), 0x40915F0107);
    }

    #[test]
    fn wqcap_fields() {
        let w = (WqCap::SHARED_MODE | WqCap::DEDICATED_MODE | WqCap::PRIORITY)
            .with_total_wq_size(128)
            .with_num_wqs(8);
        assert_eq!(w.bits(), 0x000B_0000_0008_0080);
        assert_eq!(w.total_wq_size(), 128);
        assert_eq!(w.num_wqs(), 8);
        assert_eq!(w.wqcfg_entry_size(), 32);
        assert_eq!(w.with_wqcfg_size_code(1).wqcfg_entry_size(), 64);
    }

    #[test]
    fn cmd_bitmap_examples() {
        assert_eq!(wq_bitmap_operand(3), 0x00008);
        assert_eq!(wq_bitmap_operand(17), 0x10002);
        assert_eq!(
            wq_bitmap_operand(1) | wq_bitmap_operand(4) | wq_bitmap_operand(7),
            0x00092
        );
        assert_eq!(wq_bitmap_decode(0x10002), (16, 0x0002));
        let c = CmdReg::new(Command::DisableWq, 0x10002, true);
        assert_eq!(c.0, 0x8071_0002);
        assert_eq!(c.code(), 7);
        assert_eq!(c.operand(), 0x10002);
        assert!(c.request_int());
        assert_eq!(Command::from_code(c.code()), Some(Command::DisableWq));
        assert!(Command::DisableWq.takes_wq_bitmap());
        assert!(!Command::EnableWq.takes_wq_bitmap());
        assert_eq!(CmdReg::new(Command::ResetDevice, 0, false).0, 0x0050_0000);
        assert_eq!(int_handle_operand(5, true), 0x10005);
    }

    #[test]
    fn offsets_and_status() {
        let o = Offsets::new(0x600, 0x800, 0x400, 0x8000, 0x2000);
        assert_eq!(o.0[0], 0x0080_0004_0008_0006);
        assert_eq!(
            (o.grpcfg(), o.wqcfg(), o.msixperm(), o.ims(), o.perfmon()),
            (0x600, 0x800, 0x400, 0x8000, 0x2000)
        );
        let s = CmdStatus(0x8000_1234 | 0x41);
        assert!(s.active());
        assert_eq!(s.result(), 0x12);
        assert_eq!(CmdStatus::new(0x41, 0x8005, false).0, 0x0080_0541);
        assert_eq!(GenSts::new(DeviceState::Halted, ResetType::Flr).0, 7);
        assert_eq!(GenSts(7).state(), DeviceState::Halted);
        assert_eq!(Version(0x100).major(), 1);
        assert!(OpCap::default().with(0x20).supports(0x20));
        // Opcode 0x20 is bit 32 of qword 0 ("bit 0 of dword 1"); the EMR
        // dump 0x1_003F027D decodes to NOOP, Drain, MemMove..Dualcast minus Delta, CRC, DIF, flush.
        assert_eq!(
            OpCap::default().with(0x20).with(3).0,
            [(1 << 32) | 8, 0, 0, 0]
        );
        let emr = OpCap([0x0000_0001_003F_027D, 0, 0, 0]);
        for op in [
            0u8, 2, 3, 4, 5, 6, 9, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x20,
        ] {
            assert!(emr.supports(op), "{op:#x}");
        }
        for op in [1u8, 7, 8, 0x0A, 0x16, 0x21] {
            assert!(!emr.supports(op), "{op:#x}");
        }
    }

    #[test]
    fn swerr_ack_keeps_only_the_rw1c_bits() {
        let e = SwErr([0xABCD_0000_5303 | 0x3, 7, 0x1000, 9]);
        assert_eq!(e.ack(), SwErr([0x3, 0, 0, 0]));
        assert_eq!(bar0::SWERROR.offset(), 0xC0);
        assert_eq!(off::SWERROR, 0xC0);
        assert_eq!(hwio::width_of::<SwErr>(), 32);
        assert_eq!(hwio::width_of::<GenSts>(), 4);
    }

    #[test]
    fn swerr_word0() {
        let w = SwErr::word0(
            SwErrFlags::VALID | SwErrFlags::WQ_INDEX_VALID,
            0x53,
            2,
            3,
            0xABCDE,
        );
        let s = SwErr([w, 0x0000_0019_0000_0007, 0x1000, 0]);
        assert!(s.valid());
        assert!(!s.overflow());
        assert_eq!(s.code(), 0x53);
        assert_eq!(s.wq(), 2);
        assert_eq!(s.opcode(), 3);
        assert_eq!(s.pasid(), 0xABCDE);
        assert_eq!(s.batch_index(), 7);
        assert_eq!(s.error_info(), 0x19);
        assert!(s.flags().contains(SwErrFlags::WQ_INDEX_VALID));
    }
}
