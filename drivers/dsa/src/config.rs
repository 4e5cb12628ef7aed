//! Device configuration: groups, engines, WQs (DSA spec §3.4, §9.2.23, §9.2.24), the default layout, and
//! validation against the capabilities before anything is written to the device.

use crate::caps::Capabilities;
use crate::hw::PciInfo;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use dsa_spec::{GenCap, GrpCap, WqCap, WqMode};

/// What a WQ is meant for (accel-config's `type`; informational here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WqType {
    /// `"kernel"`: used by the kernel's own clients (the default).
    #[default]
    Kernel,
    /// `"user"`: meant for ring-3 clients.
    User,
    /// `"none"`: no declared use.
    None,
}

/// One WQ: the fields of its WQCFG entry (DSA spec §9.2.24) and accel-config's labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WqConfig {
    /// WQ index, `0 .. num_wqs`.
    pub id: u8,
    /// Index of the group the WQ belongs to (GRPCFG WQ bitmap, §9.2.23).
    pub group: u8,
    /// Dedicated or shared (WQCFG dw2 bit 0).
    pub mode: WqMode,
    /// Descriptor entries of the device's total WQ space (WQCFG dw0).
    pub size: u16,
    /// Shared WQ: limited-portal threshold (0 = the driver uses the unlimited portal).
    pub threshold: u16,
    /// WQ priority, 1 ..= 15 (WQCFG dw2 bits 7:4): engines serve higher first.
    pub priority: u8,
    /// Block on page faults instead of completing partially (WQCFG dw2 bit 1; needs
    /// GENCAP's block-on-fault support).
    pub block_on_fault: bool,
    /// Bytes; rounded up to a power of two (as Linux does).
    pub max_transfer_size: u64,
    /// Descriptors; rounded up to a power of two.
    pub max_batch_size: u32,
    /// Disable ATS for this WQ (WQCFG dw2 bit 2; needs WQCAP's ATS-disable support).
    pub ats_disable: bool,
    /// Disable page requests for this WQ (WQCFG dw2 bit 3; needs WQCAP's PRS-disable
    /// support).
    pub prs_disable: bool,
    /// accel-config's `name` (informational).
    pub name: String,
    /// accel-config's `type` (informational).
    pub wq_type: WqType,
}

impl WqConfig {
    /// A kernel WQ `id` in `group` with `mode` and `size` entries; priority 1, 2 MiB
    /// maximum transfer, batches of up to 32, no threshold and no optional features.
    pub fn new(id: u8, group: u8, mode: WqMode, size: u16) -> Self {
        WqConfig {
            id,
            group,
            mode,
            size,
            threshold: 0,
            priority: 1,
            block_on_fault: false,
            max_transfer_size: 2 << 20,
            max_batch_size: 32,
            ats_disable: false,
            prs_disable: false,
            name: String::new(),
            wq_type: WqType::Kernel,
        }
    }
    pub(crate) fn transfer_shift(&self) -> u8 {
        self.max_transfer_size
            .max(1)
            .next_power_of_two()
            .trailing_zeros() as u8
    }
    pub(crate) fn batch_shift(&self) -> u8 {
        self.max_batch_size
            .max(1)
            .next_power_of_two()
            .trailing_zeros() as u8
    }
}

/// One group: the fields of its GRPCFG entry (DSA spec §9.2.23).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct GroupConfig {
    /// Group index, `0 .. num_groups`.
    pub id: u8,
    /// Engine bitmap.
    pub engines: u64,
    /// Traffic class A, 0 ..= 7 (None = driver default 1).
    pub tc_a: Option<u8>,
    /// Traffic class B, 0 ..= 7 (None = driver default 1).
    pub tc_b: Option<u8>,
    /// Read buffers reserved for this group (GRPCFG flags bits 15:8; needs GRPCAP's
    /// read-buffer control).
    pub read_buffers_reserved: u8,
    /// Read buffers the group may use (GRPCFG flags bits 27:20); 0 = no limit.
    pub read_buffers_allowed: u8,
    /// The group's reads count against GENCFG's global read-buffer limit (GRPCFG flags
    /// bit 7).
    pub use_read_buffer_limit: bool,
    /// Work descriptors in progress limit, 0 ..= 3: 0 = the maximum, n = 1/2^n of it
    /// (GRPCFG flags bits 33:32).
    pub desc_progress_limit: u8,
    /// Batch descriptors in progress limit, 0 ..= 3, encoded as `desc_progress_limit`
    /// (GRPCFG flags bits 37:36).
    pub batch_progress_limit: u8,
}

/// The whole device configuration.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DeviceConfig {
    /// The groups to configure (others stay empty).
    pub groups: Vec<GroupConfig>,
    /// The WQs to configure and enable (others stay disabled, size 0).
    pub wqs: Vec<WqConfig>,
    /// GENCFG global read-buffer limit (needs GRPCAP.17).
    pub read_buffer_limit: u8,
}

/// Why a configuration was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The text is not acceptable JSON (see [`crate::json`]): position and reason.
    Syntax(crate::json::SyntaxError),
    /// A key the parser does not know.
    UnknownField {
        /// The object it appears in (`dsa0`, `wq0.1`, ...).
        object: String,
        /// The key.
        key: String,
    },
    /// A field with a value of the wrong type or out of range.
    BadValue {
        /// The object it appears in.
        object: String,
        /// The key.
        key: String,
        /// What is wrong with the value.
        why: &'static str,
    },
    /// A `dev` name that does not parse or does not belong where it appears.
    BadName {
        /// The name as written.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// No WQ is configured.
    NoWqs,
    /// A WQ index past the device's WQs (WQCAP, §9.2.3).
    WqIndex {
        /// The index.
        wq: u8,
        /// The device's WQ count.
        max: u8,
    },
    /// A group index past the device's groups (GRPCAP, §9.2.4).
    GroupIndex {
        /// The index.
        group: u8,
        /// The device's group count.
        max: u8,
    },
    /// An engine index past the device's engines (ENGCAP, §9.2.5).
    EngineIndex {
        /// The index.
        engine: u8,
        /// The device's engine count.
        max: u8,
    },
    /// A WQ listed in two groups.
    WqInTwoGroups {
        /// The WQ.
        wq: u8,
    },
    /// A WQ configured twice.
    WqListedTwice {
        /// The WQ.
        wq: u8,
    },
    /// An engine listed in two groups.
    EngineInTwoGroups {
        /// The engine.
        engine: u8,
    },
    /// A group with WQs but no engine (its descriptors would never run).
    GroupWithoutEngines {
        /// The group.
        group: u8,
    },
    /// A configured WQ of size 0.
    WqSizeZero {
        /// The WQ.
        wq: u8,
    },
    /// The WQ sizes add up to more than the device's total WQ size (WQCAP, §9.2.3).
    WqSizesOverTotal {
        /// Sum of the sizes, entries.
        sum: u32,
        /// The device's total, entries.
        total: u16,
    },
    /// A WQ mode the device does not offer (WQCAP, §9.2.3).
    ModeUnsupported {
        /// The WQ.
        wq: u8,
        /// The mode asked for.
        mode: WqMode,
    },
    /// A shared WQ without PASID support in the device or PASID enabled in PCI.
    SharedWqWithoutPasid {
        /// The WQ.
        wq: u8,
    },
    /// A shared WQ's threshold above its size.
    ThresholdOverSize {
        /// The WQ.
        wq: u8,
        /// The threshold, entries.
        threshold: u16,
        /// The WQ's size, entries.
        size: u16,
    },
    /// A threshold on a dedicated WQ (it applies to shared WQs only).
    ThresholdOnDedicated {
        /// The WQ.
        wq: u8,
    },
    /// A priority outside 1 ..= 15.
    Priority {
        /// The WQ.
        wq: u8,
        /// The priority asked for.
        priority: u8,
    },
    /// Block on fault asked for, but GENCAP (§9.2.2) does not offer it.
    BlockOnFaultUnsupported {
        /// The WQ.
        wq: u8,
    },
    /// A maximum transfer size of 0 or above the device's (GENCAP, §9.2.2).
    MaxTransfer {
        /// The WQ.
        wq: u8,
        /// The size asked for, bytes.
        value: u64,
        /// The device's maximum, bytes.
        max: u64,
    },
    /// A maximum batch size of 0 or above the device's (GENCAP, §9.2.2).
    MaxBatch {
        /// The WQ.
        wq: u8,
        /// The size asked for, descriptors.
        value: u32,
        /// The device's maximum, descriptors.
        max: u32,
    },
    /// ATS disable asked for, but WQCAP (§9.2.3) does not offer it.
    AtsDisableUnsupported {
        /// The WQ.
        wq: u8,
    },
    /// PRS disable asked for, but WQCAP (§9.2.3) does not offer it.
    PrsDisableUnsupported {
        /// The WQ.
        wq: u8,
    },
    /// A traffic class outside 0 ..= 7.
    TrafficClass {
        /// The group.
        group: u8,
        /// The class asked for.
        tc: u8,
    },
    /// Read-buffer controls asked for, but GRPCAP (§9.2.4) does not offer them.
    ReadBuffersUnsupported {
        /// The group.
        group: u8,
    },
    /// The groups reserve more read buffers than the device has (GRPCAP, §9.2.4).
    ReadBuffersOverTotal {
        /// Read buffers reserved by all groups.
        sum: u32,
        /// The device's read buffers.
        total: u8,
    },
    /// Progress limits outside 0 ..= 3, or asked for on a device without them.
    ProgressLimit {
        /// The group.
        group: u8,
    },
    /// A feature this driver does not configure.
    Unsupported {
        /// The feature.
        what: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ConfigError::*;
        match self {
            Syntax(e) => write!(f, "JSON syntax error at {e}"),
            UnknownField { object, key } => write!(f, "{object}: unknown field \"{key}\""),
            BadValue { object, key, why } => write!(f, "{object}: field \"{key}\" {why}"),
            BadName { name, why } => write!(f, "\"{name}\": {why}"),
            NoWqs => write!(f, "no work queue configured"),
            WqIndex { wq, max } => write!(f, "wq {wq} does not exist (device has {max})"),
            GroupIndex { group, max } => {
                write!(f, "group {group} does not exist (device has {max})")
            }
            EngineIndex { engine, max } => {
                write!(f, "engine {engine} does not exist (device has {max})")
            }
            WqInTwoGroups { wq } => write!(f, "wq {wq} is in two groups"),
            WqListedTwice { wq } => write!(f, "wq {wq} is configured twice"),
            EngineInTwoGroups { engine } => write!(f, "engine {engine} is in two groups"),
            GroupWithoutEngines { group } => write!(f, "group {group} has WQs but no engine"),
            WqSizeZero { wq } => write!(f, "wq {wq} has size 0"),
            WqSizesOverTotal { sum, total } => {
                write!(
                    f,
                    "WQ sizes add up to {sum}, the device has {total} entries"
                )
            }
            ModeUnsupported { wq, mode } => write!(
                f,
                "wq {wq}: {} mode not supported",
                match mode {
                    WqMode::Dedicated => "dedicated",
                    WqMode::Shared => "shared",
                }
            ),
            SharedWqWithoutPasid { wq } => write!(
                f,
                "wq {wq}: a shared WQ needs PASID support (capability and PCI PASID enable)"
            ),
            ThresholdOverSize {
                wq,
                threshold,
                size,
            } => write!(f, "wq {wq}: threshold {threshold} over size {size}"),
            ThresholdOnDedicated { wq } => {
                write!(f, "wq {wq}: threshold applies to shared WQs only")
            }
            Priority { wq, priority } => write!(f, "wq {wq}: priority {priority} not in 1..=15"),
            BlockOnFaultUnsupported { wq } => {
                write!(f, "wq {wq}: block on fault not supported by the device")
            }
            MaxTransfer { wq, value, max } => {
                write!(f, "wq {wq}: max transfer size {value} not in 1..={max}")
            }
            MaxBatch { wq, value, max } => {
                write!(f, "wq {wq}: max batch size {value} not in 1..={max}")
            }
            AtsDisableUnsupported { wq } => write!(f, "wq {wq}: ATS disable not supported"),
            PrsDisableUnsupported { wq } => write!(f, "wq {wq}: PRS disable not supported"),
            TrafficClass { group, tc } => {
                write!(f, "group {group}: traffic class {tc} not in 0..=7")
            }
            ReadBuffersUnsupported { group } => {
                write!(f, "group {group}: read-buffer controls not supported")
            }
            ReadBuffersOverTotal { sum, total } => {
                write!(
                    f,
                    "reserved read buffers {sum} over the device total {total}"
                )
            }
            ProgressLimit { group } => write!(
                f,
                "group {group}: descriptor progress limits not supported or not in 0..=3"
            ),
            Unsupported { what } => write!(f, "{what} not supported"),
        }
    }
}

impl core::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            ConfigError::Syntax(e) => Some(e),
            _ => None,
        }
    }
}

impl DeviceConfig {
    /// The default layout: one dedicated WQ and (when shared mode and PASID are available)
    /// one shared WQ, each in its own group with half the engines when there are two groups.
    pub fn default_for(caps: &Capabilities, pci: &PciInfo) -> DeviceConfig {
        let shared_ok = caps.wqcap.contains(WqCap::SHARED_MODE) && pci.pasid_enabled;
        let dedicated_ok = caps.wqcap.contains(WqCap::DEDICATED_MODE);
        let mut modes = Vec::new();
        if dedicated_ok {
            modes.push(WqMode::Dedicated);
        }
        if shared_ok {
            modes.push(WqMode::Shared);
        }
        let nwq = (modes.len() as u8).min(caps.num_wqs);
        let ngroups = nwq.min(caps.num_groups).min(caps.num_engines).max(1);
        let size = (caps.total_wq_size / u16::from(nwq.max(1))).clamp(1, 32);
        let engines_all = if caps.num_engines >= 64 {
            u64::MAX
        } else {
            (1u64 << caps.num_engines) - 1
        };
        let mut groups = Vec::new();
        for g in 0..ngroups {
            // Split the engines evenly; the last group takes the remainder.
            let per = caps.num_engines / ngroups;
            let lo = g * per;
            let mask = if g + 1 == ngroups {
                engines_all & !((1u64 << lo) - 1)
            } else {
                ((1u64 << per) - 1) << lo
            };
            groups.push(GroupConfig {
                id: g,
                engines: mask,
                ..Default::default()
            });
        }
        let wqs = modes
            .iter()
            .take(nwq as usize)
            .enumerate()
            .map(|(i, &mode)| {
                let mut w = WqConfig::new(i as u8, (i as u8).min(ngroups - 1), mode, size);
                w.max_transfer_size = caps.max_transfer().min(2 << 20);
                w.max_batch_size = caps.max_batch().min(32);
                w.name = match mode {
                    WqMode::Dedicated => "kernel-dedicated".into(),
                    WqMode::Shared => "kernel-shared".into(),
                };
                w
            })
            .collect();
        DeviceConfig {
            groups,
            wqs,
            read_buffer_limit: 0,
        }
    }

    /// Checks the configuration against the device and PCI state.
    pub fn validate(&self, caps: &Capabilities, pci: &PciInfo) -> Result<(), ConfigError> {
        if self.wqs.is_empty() {
            return Err(ConfigError::NoWqs);
        }
        if self.read_buffer_limit != 0 && !caps.grpcap.contains(GrpCap::RDBUF_GLOBAL_LIMIT) {
            return Err(ConfigError::Unsupported {
                what: "global read-buffer limit",
            });
        }
        let mut engines_seen = 0u64;
        let mut groups_seen = 0u64;
        let mut rdbuf_sum = 0u32;
        for g in &self.groups {
            if g.id >= caps.num_groups {
                return Err(ConfigError::GroupIndex {
                    group: g.id,
                    max: caps.num_groups,
                });
            }
            if groups_seen >> g.id & 1 == 1 {
                return Err(ConfigError::BadName {
                    name: alloc::format!("group{}", g.id),
                    why: "group configured twice",
                });
            }
            groups_seen |= 1 << g.id;
            if let Some(e) = (0..64u8).find(|&e| g.engines >> e & 1 == 1 && e >= caps.num_engines) {
                return Err(ConfigError::EngineIndex {
                    engine: e,
                    max: caps.num_engines,
                });
            }
            if let Some(e) = (0..64u8).find(|&e| (g.engines & engines_seen) >> e & 1 == 1) {
                return Err(ConfigError::EngineInTwoGroups { engine: e });
            }
            engines_seen |= g.engines;
            for tc in [g.tc_a, g.tc_b].into_iter().flatten() {
                if tc > 7 {
                    return Err(ConfigError::TrafficClass { group: g.id, tc });
                }
            }
            let rdbuf = g.read_buffers_reserved != 0
                || g.read_buffers_allowed != 0
                || g.use_read_buffer_limit;
            if rdbuf && !caps.grpcap.contains(GrpCap::RDBUF_CTRL) {
                return Err(ConfigError::ReadBuffersUnsupported { group: g.id });
            }
            if g.use_read_buffer_limit && !caps.grpcap.contains(GrpCap::RDBUF_GLOBAL_LIMIT) {
                return Err(ConfigError::ReadBuffersUnsupported { group: g.id });
            }
            rdbuf_sum += u32::from(g.read_buffers_reserved);
            let pl = g.desc_progress_limit != 0 || g.batch_progress_limit != 0;
            if g.desc_progress_limit > 3
                || g.batch_progress_limit > 3
                || (pl && !caps.grpcap.contains(GrpCap::DESC_IN_PROGRESS_LIMIT))
            {
                return Err(ConfigError::ProgressLimit { group: g.id });
            }
        }
        if rdbuf_sum > u32::from(caps.grpcap.total_rdbufs()) {
            return Err(ConfigError::ReadBuffersOverTotal {
                sum: rdbuf_sum,
                total: caps.grpcap.total_rdbufs(),
            });
        }
        let mut wqs_seen = 0u64;
        let mut sum = 0u32;
        for w in &self.wqs {
            if w.id >= caps.num_wqs {
                return Err(ConfigError::WqIndex {
                    wq: w.id,
                    max: caps.num_wqs,
                });
            }
            if wqs_seen >> w.id & 1 == 1 {
                return Err(ConfigError::WqListedTwice { wq: w.id });
            }
            wqs_seen |= 1 << w.id;
            let Some(g) = self.groups.iter().find(|g| g.id == w.group) else {
                return Err(ConfigError::GroupIndex {
                    group: w.group,
                    max: caps.num_groups,
                });
            };
            if g.engines == 0 {
                return Err(ConfigError::GroupWithoutEngines { group: g.id });
            }
            if w.size == 0 {
                return Err(ConfigError::WqSizeZero { wq: w.id });
            }
            sum += u32::from(w.size);
            match w.mode {
                WqMode::Dedicated => {
                    if !caps.wqcap.contains(WqCap::DEDICATED_MODE) {
                        return Err(ConfigError::ModeUnsupported {
                            wq: w.id,
                            mode: w.mode,
                        });
                    }
                    if w.threshold != 0 {
                        return Err(ConfigError::ThresholdOnDedicated { wq: w.id });
                    }
                }
                WqMode::Shared => {
                    if !caps.wqcap.contains(WqCap::SHARED_MODE) {
                        return Err(ConfigError::ModeUnsupported {
                            wq: w.id,
                            mode: w.mode,
                        });
                    }
                    if !pci.pasid_enabled {
                        return Err(ConfigError::SharedWqWithoutPasid { wq: w.id });
                    }
                    if w.threshold > w.size {
                        return Err(ConfigError::ThresholdOverSize {
                            wq: w.id,
                            threshold: w.threshold,
                            size: w.size,
                        });
                    }
                }
            }
            let prio_needed = caps.wqcap.contains(WqCap::PRIORITY);
            if w.priority > 15 || (prio_needed && w.priority == 0) {
                return Err(ConfigError::Priority {
                    wq: w.id,
                    priority: w.priority,
                });
            }
            if w.block_on_fault && !caps.gencap.contains(GenCap::BLOCK_ON_FAULT) {
                return Err(ConfigError::BlockOnFaultUnsupported { wq: w.id });
            }
            let max_x = caps.max_transfer();
            if w.max_transfer_size == 0 || w.max_transfer_size > max_x {
                return Err(ConfigError::MaxTransfer {
                    wq: w.id,
                    value: w.max_transfer_size,
                    max: max_x,
                });
            }
            let max_b = caps.max_batch();
            if w.max_batch_size == 0 || w.max_batch_size > max_b {
                return Err(ConfigError::MaxBatch {
                    wq: w.id,
                    value: w.max_batch_size,
                    max: max_b,
                });
            }
            if w.ats_disable && !caps.wqcap.contains(WqCap::WQ_ATS_DISABLE) {
                return Err(ConfigError::AtsDisableUnsupported { wq: w.id });
            }
            if w.prs_disable && !caps.wqcap.contains(WqCap::WQ_PRS_DISABLE) {
                return Err(ConfigError::PrsDisableUnsupported { wq: w.id });
            }
        }
        if sum > u32::from(caps.total_wq_size) {
            return Err(ConfigError::WqSizesOverTotal {
                sum,
                total: caps.total_wq_size,
            });
        }
        Ok(())
    }
}
