//! Capability registers, read once and validated (DSA spec §9.2.1–§9.2.7, §9.2.14).

use crate::error::DsaError;
use crate::hw::Registers;
use dsa_spec::regs::bar0;
use dsa_spec::tables::{GRPCFG_ENTRY_SIZE, IMS_ENTRY_SIZE, MSIXPERM_ENTRY_SIZE};
use dsa_spec::{CmdCap, EngCap, GenCap, GrpCap, Offsets, OpCap, Opcode, Version, WqCap};
use hwio::{RegistersExt, Table};

/// Register space below this offset holds the fixed registers; no table may start there.
const FIXED_REGS_END: u64 = 0x100;
/// Sanity limits on what a device reports (the architecture allows more in theory, but a
/// value past these means a broken or hostile device).
const MAX_WQS: u8 = 64;
const MAX_ENGINES: u8 = 64;
const MAX_GROUPS: u8 = 64;

/// The device's capabilities, with the derived limits the driver uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// VERSION (DSA spec §9.2.1): major 1 or 2.
    pub version: Version,
    /// GENCAP (§9.2.2): general capabilities (maximum transfer and batch, IMS size, ...).
    pub gencap: GenCap,
    /// WQCAP (§9.2.3): WQ count, total WQ size, supported modes, WQCFG entry size.
    pub wqcap: WqCap,
    /// GRPCAP (§9.2.4): number of groups, read buffers.
    pub grpcap: GrpCap,
    /// ENGCAP (§9.2.5): number of engines.
    pub engcap: EngCap,
    /// OPCAP (§9.2.6): bit n set when opcode n is supported.
    pub opcap: OpCap,
    /// OFFSETS (§9.2.7): where the GRPCFG, WQCFG, MSIXPERM and IMS tables are in BAR0.
    pub offsets: Offsets,
    /// Valid only when GENCAP.CMD_CAP; otherwise commands 1–12 only.
    pub cmdcap: Option<CmdCap>,
    /// Number of WQs (WQCAP, §9.2.3), 1 ..= 64.
    pub num_wqs: u8,
    /// Number of engines (ENGCAP, §9.2.5), 1 ..= 64.
    pub num_engines: u8,
    /// Number of groups (GRPCAP, §9.2.4), 1 ..= 64.
    pub num_groups: u8,
    /// Total WQ space to share between the WQs, in descriptor entries (WQCAP, §9.2.3).
    pub total_wq_size: u16,
    /// log2 of the maximum transfer size in bytes (GENCAP, §9.2.2).
    pub max_transfer_shift: u8,
    /// log2 of the maximum batch size in descriptors (GENCAP, §9.2.2).
    pub max_batch_shift: u8,
    /// Bytes of one WQCFG entry (WQCAP's entry-size code, §9.2.3; 32 on DSA 1.0).
    pub wqcfg_entry_size: u64,
    /// Entries of the IMS table (GENCAP, §9.2.2); 0 without IMS.
    pub ims_entries: u32,
}

impl Capabilities {
    /// Reads and validates every capability register. `msix_entries` comes from the PCI
    /// MSI-X capability (it sizes MSIXPERM).
    pub fn read(regs: &dyn Registers, msix_entries: u16) -> Result<Capabilities, DsaError> {
        let bar0 = regs.size();
        if bar0 < 0x1000 {
            return Err(DsaError::BadCapability("BAR0 smaller than 4 KiB"));
        }
        let version = regs.read(bar0::VERSION);
        // Features come from VERSION and the capability bits; majors 1 and 2 share the
        // DSA 1.0 register model this driver uses (2.0 additions are capability-gated).
        if !(1..=2).contains(&version.major()) {
            return Err(DsaError::UnsupportedVersion(version.0));
        }
        let gencap = regs.read(bar0::GENCAP);
        let wqcap = regs.read(bar0::WQCAP);
        let grpcap = regs.read(bar0::GRPCAP);
        let engcap = regs.read(bar0::ENGCAP);
        let opcap = regs.read(bar0::OPCAP);
        let offsets = regs.read(bar0::OFFSETS);
        let cmdcap = gencap
            .contains(GenCap::CMD_CAP)
            .then(|| regs.read(bar0::CMDCAP));

        let num_wqs = wqcap.num_wqs();
        let num_engines = engcap.num_engines();
        let num_groups = grpcap.num_groups();
        let total_wq_size = wqcap.total_wq_size();
        if num_wqs == 0 || num_wqs > MAX_WQS {
            return Err(DsaError::BadCount {
                what: "WQs",
                value: u64::from(num_wqs),
            });
        }
        if num_engines == 0 || num_engines > MAX_ENGINES {
            return Err(DsaError::BadCount {
                what: "engines",
                value: u64::from(num_engines),
            });
        }
        if num_groups == 0 || num_groups > MAX_GROUPS {
            return Err(DsaError::BadCount {
                what: "groups",
                value: u64::from(num_groups),
            });
        }
        if total_wq_size == 0 {
            return Err(DsaError::BadCount {
                what: "total WQ size",
                value: 0,
            });
        }
        if !wqcap.intersects(WqCap::DEDICATED_MODE | WqCap::SHARED_MODE) {
            return Err(DsaError::BadCapability("WQCAP offers neither WQ mode"));
        }
        let code = wqcap.wqcfg_size_code();
        if code > 3 {
            return Err(DsaError::BadCount {
                what: "WQCFG entry size code",
                value: u64::from(code),
            });
        }
        let wqcfg_entry_size = wqcap.wqcfg_entry_size();
        if !opcap.supports(Opcode::Noop as u8) && !opcap.supports(Opcode::MemMove as u8) {
            return Err(DsaError::BadCapability(
                "OPCAP lists neither no-op nor memmove",
            ));
        }
        let ims_entries = gencap.ims_entries();

        // Every table must sit inside BAR0, above the fixed registers, without overlaps.
        let mut tables: [(&'static str, u64, u64); 4] = [
            (
                "GRPCFG",
                offsets.grpcfg(),
                u64::from(num_groups) * GRPCFG_ENTRY_SIZE,
            ),
            (
                "WQCFG",
                offsets.wqcfg(),
                u64::from(num_wqs) * wqcfg_entry_size,
            ),
            (
                "MSIXPERM",
                offsets.msixperm(),
                u64::from(msix_entries) * MSIXPERM_ENTRY_SIZE,
            ),
            (
                "IMS",
                offsets.ims(),
                u64::from(ims_entries) * IMS_ENTRY_SIZE,
            ),
        ];
        for &(name, start, len) in &tables {
            if len == 0 {
                continue;
            }
            if start < FIXED_REGS_END || start.checked_add(len).is_none_or(|e| e > bar0) {
                return Err(DsaError::BadTableOffset {
                    table: name,
                    offset: start,
                    len,
                });
            }
        }
        tables.sort_by_key(|t| t.1);
        for w in tables.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.2 != 0 && b.2 != 0 && a.1 + a.2 > b.1 {
                return Err(DsaError::TablesOverlap { a: a.0, b: b.0 });
            }
        }
        Ok(Capabilities {
            version,
            gencap,
            wqcap,
            grpcap,
            engcap,
            opcap,
            offsets,
            cmdcap,
            num_wqs,
            num_engines,
            num_groups,
            total_wq_size,
            max_transfer_shift: gencap.max_xfer_shift(),
            max_batch_shift: gencap.max_batch_shift(),
            wqcfg_entry_size,
            ims_entries,
        })
    }

    /// Largest transfer the device accepts.
    pub fn max_transfer(&self) -> u64 {
        1u64 << self.max_transfer_shift
    }
    /// Largest batch the device accepts.
    pub fn max_batch(&self) -> u32 {
        1u32 << self.max_batch_shift
    }
    /// True if OPCAP (§9.2.6) lists `op`.
    pub fn supports(&self, op: Opcode) -> bool {
        self.opcap.supports(op as u8)
    }
    /// True if Request Interrupt Handle must be used (CMDCAP bit 13).
    pub fn requires_int_handles(&self) -> bool {
        self.cmdcap
            .is_some_and(|c| c.supports(dsa_spec::Command::RequestIntHandle as u8))
    }
    /// True if the device accepts command `cmd` (§9.2.12): codes 1–12 always, later
    /// ones when CMDCAP (§9.2.14) lists them.
    pub fn command_supported(&self, cmd: dsa_spec::Command) -> bool {
        let code = cmd as u8;
        (1..=12).contains(&code) || self.cmdcap.is_some_and(|c| c.supports(code))
    }
    /// The GRPCFG table (entries: `dsa_spec::tables::grpcfg`).
    pub fn grpcfg_table(&self) -> Table {
        Table {
            base: self.offsets.grpcfg(),
            stride: GRPCFG_ENTRY_SIZE,
            len: u64::from(self.num_groups),
        }
    }
    /// The WQCFG table (entries: `dsa_spec::tables::wqcfg_entry`).
    pub fn wqcfg_table(&self) -> Table {
        Table {
            base: self.offsets.wqcfg(),
            stride: self.wqcfg_entry_size,
            len: u64::from(self.num_wqs),
        }
    }
    /// The IMS table (entries: `dsa_spec::tables::ims`).
    pub fn ims_table(&self) -> Table {
        Table {
            base: self.offsets.ims(),
            stride: IMS_ENTRY_SIZE,
            len: u64::from(self.ims_entries),
        }
    }
    /// Offset of group `group`'s GRPCFG entry.
    pub fn grpcfg_off(&self, group: u8) -> u64 {
        self.offsets.grpcfg() + u64::from(group) * GRPCFG_ENTRY_SIZE
    }
    /// Offset of WQ `wq`'s WQCFG entry.
    pub fn wqcfg_off(&self, wq: u8) -> u64 {
        self.offsets.wqcfg() + u64::from(wq) * self.wqcfg_entry_size
    }
    /// Offset of MSI-X entry `entry`'s MSIXPERM entry.
    pub fn msixperm_off(&self, entry: u16) -> u64 {
        self.offsets.msixperm() + u64::from(entry) * MSIXPERM_ENTRY_SIZE
    }
}
