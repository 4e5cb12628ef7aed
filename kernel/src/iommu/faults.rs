//! Fault records as the kernel keeps them: a log line per record, counters per device and
//! per (device, PASID), the most recent records, and waiting for the next one.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;
use core::fmt;
#[cfg(feature = "ktest")]
use core::time::Duration;

use vtd::spec::{FaultReason, FaultRecord};

#[cfg(feature = "ktest")]
use super::IommuError;
use crate::pci::PciAddress;
use crate::sync::IrqMutex;

/// Records kept for [`FaultWatch`]; older ones are only counted.
const KEEP: usize = 128;

/// One decoded fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultInfo {
    /// Sequence number (1, 2, … since boot, over all units).
    pub seq: u64,
    /// When the handler read it (ns since boot).
    pub time_ns: u64,
    /// Remapping unit index (DMAR order).
    pub unit: usize,
    /// The requester as the unit saw it (segment of the unit, bus:dev.fn from the record's
    /// source ID): the function, or its DMA alias behind a conventional PCI bridge.
    pub source: PciAddress,
    /// PASID of the request; `Some(0)` (RID_PASID) for requests without PASID that fault in
    /// the page walk, `None` when the record has no PASID (context, PASID-entry and
    /// interrupt faults).
    pub pasid: Option<u32>,
    /// Faulting page address (DMA faults); 0 for interrupt faults.
    pub address: u64,
    /// Interrupt index (interrupt-remapping faults only).
    pub irte_index: Option<u16>,
    /// Fault reason code as recorded.
    pub code: u8,
    /// Decoded reason.
    pub reason: FaultReason,
    /// Write request (else read). Interrupt requests are writes.
    pub write: bool,
}

impl FaultInfo {
    pub(super) fn from_record(seq: u64, unit: usize, segment: u16, r: &FaultRecord) -> Self {
        let b = vtd::Bdf::from_sid(r.source_id);
        Self {
            seq,
            time_ns: crate::time::now_ns(),
            unit,
            source: PciAddress::new(segment, b.bus, b.dev, b.func),
            pasid: r.pasid,
            address: r.address,
            irte_index: r.interrupt_index,
            code: r.code,
            reason: r.reason,
            write: !r.is_read,
        }
    }
}

impl fmt::Display for FaultInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        match self.pasid {
            Some(0) => f.write_str(" pasid 0 (RID_PASID)")?,
            Some(p) => write!(f, " pasid {p}")?,
            None => f.write_str(" no pasid")?,
        }
        match self.irte_index {
            Some(i) => write!(f, " interrupt index {i}")?,
            None => write!(
                f,
                " {} {:#x}",
                if self.write { "write" } else { "read" },
                self.address
            )?,
        }
        write!(
            f,
            " reason {:#04x} ({}) unit {}",
            self.code,
            self.reason.name(),
            self.unit
        )
    }
}

/// Totals since boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Records read.
    pub records: u64,
    /// Fault-event interrupts taken.
    pub events: u64,
    /// Times the unit had dropped faults (FSTS.PFO).
    pub overflows: u64,
    /// Records per reason code.
    pub by_reason: BTreeMap<u8, u64>,
}

#[derive(Default)]
struct FaultLog {
    seq: u64,
    recent: VecDeque<FaultInfo>,
    per_device: BTreeMap<PciAddress, u64>,
    per_device_pasid: BTreeMap<(PciAddress, u32), u64>,
    stats: FaultStats,
}

static LOG: IrqMutex<Option<FaultLog>> = IrqMutex::new(None);

fn with_log<R>(f: impl FnOnce(&mut FaultLog) -> R) -> R {
    let mut g = LOG.lock();
    f(g.get_or_insert_with(FaultLog::default))
}

/// Called from a unit's fault-event handler with what `handle_faults` found.
pub(super) fn record(unit: usize, segment: u16, batch: &vtd::FaultBatch) {
    let mut lines = Vec::new();
    with_log(|l| {
        l.stats.events += 1;
        if batch.overflow {
            l.stats.overflows += 1;
        }
        for r in &batch.records {
            l.seq += 1;
            let info = FaultInfo::from_record(l.seq, unit, segment, r);
            l.stats.records += 1;
            *l.stats.by_reason.entry(info.code).or_default() += 1;
            *l.per_device.entry(info.source).or_default() += 1;
            if let Some(p) = info.pasid {
                *l.per_device_pasid.entry((info.source, p)).or_default() += 1;
            }
            if l.recent.len() == KEEP {
                l.recent.pop_front();
            }
            l.recent.push_back(info);
            lines.push(info);
        }
    });
    // Printed outside the log lock (the console has its own).
    for i in &lines {
        log::warn!("fault: {i}");
    }
    if batch.overflow {
        log::warn!("unit {unit}: fault records overflowed, some faults were dropped");
    }
}

/// Records name the requester ID the unit saw: a function behind a conventional PCI bridge
/// is known by its DMA alias (shared with its neighbours).
#[cfg(feature = "ktest")]
fn as_seen(dev: PciAddress) -> PciAddress {
    crate::pci::find(dev).map_or(dev, |d| d.dma_alias())
}

/// Faults recorded from `dev` (its DMA alias) since boot.
#[cfg(feature = "ktest")]
pub fn fault_count(dev: PciAddress) -> u64 {
    let dev = as_seen(dev);
    with_log(|l| l.per_device.get(&dev).copied().unwrap_or(0))
}

/// Faults recorded from `dev` (its DMA alias) with `pasid` (0 = requests without PASID)
/// since boot.
#[cfg(feature = "ktest")]
pub fn fault_count_pasid(dev: PciAddress, pasid: u32) -> u64 {
    let dev = as_seen(dev);
    with_log(|l| l.per_device_pasid.get(&(dev, pasid)).copied().unwrap_or(0))
}

/// Totals since boot.
#[cfg(feature = "ktest")]
pub fn fault_stats() -> FaultStats {
    with_log(|l| l.stats.clone())
}

/// A position in the fault log: [`watch_faults`] before triggering something, then wait for
/// what came after.
#[derive(Debug, Clone, Copy)]
#[cfg(feature = "ktest")]
pub struct FaultWatch {
    after: u64,
}

/// Starts watching: later calls see only faults recorded after this point.
#[cfg(feature = "ktest")]
pub fn watch_faults() -> FaultWatch {
    FaultWatch {
        after: with_log(|l| l.seq),
    }
}

#[cfg(feature = "ktest")]
impl FaultWatch {
    /// Faults recorded since the watch started (or since the last one returned by
    /// [`FaultWatch::next_from`]) that are still kept.
    #[cfg(feature = "ktest")]
    pub fn seen(&self) -> Vec<FaultInfo> {
        with_log(|l| {
            l.recent
                .iter()
                .filter(|f| f.seq > self.after)
                .copied()
                .collect()
        })
    }

    /// Waits up to `timeout` for the next fault from `dev` (matched by its DMA alias; any
    /// device if `None`) and moves
    /// the watch past it. The fault must arrive through the fault-event interrupt.
    #[cfg(feature = "ktest")]
    pub fn next_from(
        &mut self,
        dev: Option<PciAddress>,
        timeout: Duration,
    ) -> Result<FaultInfo, IommuError> {
        let after = self.after;
        let dev = dev.map(as_seen);
        let found = crate::time::wait_until(timeout, || {
            with_log(|l| {
                l.recent
                    .iter()
                    .find(|f| f.seq > after && dev.is_none_or(|d| f.source == d))
                    .copied()
            })
        })
        .map_err(|_| IommuError::NoFault { device: dev })?;
        self.after = found.seq;
        Ok(found)
    }
}
