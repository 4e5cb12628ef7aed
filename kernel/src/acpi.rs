//! ACPI: table discovery and the platform facts later subsystems need.
//!
//! Every table the firmware lists is validated here first (length bounds, checksum,
//! entry structure; see [`klib::acpi`]). The `acpi` crate (5.2, no alloc) is then handed
//! a rebuilt XSDT that lists only the tables that passed, and parses MADT, MCFG and FADT
//! from it. A malformed table is reported (and skipped, or makes `init` fail), never a
//! panic. For tables the crate does not know (DMAR, …), [`table_bytes`] returns the
//! validated raw bytes.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ptr::NonNull;

use ::acpi::madt::{Madt, MadtEntry};
use ::acpi::mcfg::Mcfg;
use ::acpi::{AcpiHandler, AcpiTables, PhysicalMapping};
use boot::RsdpSource;
use klib::acpi::{self as check, AcpiFormatError, HpetDescription, Signature};
use spin::Once;

use crate::mm::{self, MmError};

/// A validated table.
#[derive(Debug, Clone, Copy)]
pub struct TableInfo {
    /// Signature.
    pub signature: Signature,
    /// Physical address.
    pub phys: u64,
    /// Length.
    pub length: u32,
    /// Revision.
    pub revision: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
}

/// A processor from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MadtCpu {
    /// (x2)APIC ID.
    pub apic_id: u32,
    /// ACPI processor UID.
    pub uid: u32,
    /// Enabled bit.
    pub enabled: bool,
    /// Online-capable bit (may be enabled later; not started by this kernel).
    pub online_capable: bool,
    /// From a Local x2APIC structure.
    pub x2apic_entry: bool,
}

/// An I/O APIC from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicInfo {
    /// I/O APIC ID.
    pub id: u8,
    /// MMIO address.
    pub address: u64,
    /// First GSI.
    pub gsi_base: u32,
}

/// An interrupt source override from the MADT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceOverride {
    /// ISA IRQ.
    pub irq: u8,
    /// GSI.
    pub gsi: u32,
    /// MPS INTI flags.
    pub flags: u16,
}

/// One MCFG allocation: the ECAM window of a PCI segment's bus range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamSegment {
    /// ECAM base (address of bus 0 of this segment, even if `bus_start` > 0).
    pub base: u64,
    /// PCI segment group.
    pub segment: u16,
    /// First bus decoded.
    pub bus_start: u8,
    /// Last bus decoded.
    pub bus_end: u8,
}

impl EcamSegment {
    /// Physical address of the configuration space of `bus:dev.fn`, if in range.
    #[cfg(feature = "ktest")]
    pub fn config_address(&self, bus: u8, dev: u8, func: u8) -> Option<u64> {
        if bus < self.bus_start || bus > self.bus_end || dev >= 32 || func >= 8 {
            return None;
        }
        self.base
            .checked_add(u64::from(bus) << 20 | u64::from(dev) << 15 | u64::from(func) << 12)
    }

    /// Why this allocation cannot be used, if it cannot: the base must be non-zero and
    /// 1 MiB aligned, the bus range ordered, and the decoded window (`base + bus_start ·
    /// 1 MiB` up to the end of `bus_end`) a physical range below `phys_limit`.
    pub fn check(&self, phys_limit: u64) -> Result<(), AcpiFormatError> {
        check::ecam_window(self.base, self.bus_start, self.bus_end, phys_limit).map(|_| ())
    }
}

/// The ACPI PM timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PmTimerInfo {
    /// I/O port.
    pub port: u16,
    /// 32-bit counter (else 24-bit).
    pub wide: bool,
}

/// Everything the kernel took from ACPI.
#[derive(Debug)]
pub struct AcpiInfo {
    /// RSDP revision.
    pub revision: u8,
    /// Physical address of the firmware's root table (RSDT/XSDT).
    pub root: u64,
    /// Valid tables (XSDT/RSDT order, DSDT appended).
    pub tables: Vec<TableInfo>,
    /// Tables that failed validation: physical address and reason.
    #[cfg_attr(not(feature = "ktest"), allow(dead_code))] // used by the kernel tests
    pub rejected: Vec<(u64, String)>,
    /// Local APIC address (MADT, with override).
    pub lapic_address: u64,
    /// Processors (MADT order).
    pub cpus: Vec<MadtCpu>,
    /// I/O APICs.
    pub ioapics: Vec<IoApicInfo>,
    /// Interrupt source overrides.
    pub overrides: Vec<SourceOverride>,
    /// MADT PCAT_COMPAT: dual 8259s present.
    pub pic_present: bool,
    /// Multiprocessor Wakeup mailbox (TDX-style AP start), if any.
    pub mp_wakeup_mailbox: Option<u64>,
    /// ECAM segments from MCFG.
    pub ecam: Vec<EcamSegment>,
    /// HPET.
    pub hpet: Option<HpetDescription>,
    /// ACPI PM timer.
    pub pm_timer: Option<PmTimerInfo>,
    /// The DMAR table (VT-d), found through the `acpi` crate's custom-table mechanism
    /// ([`DmarTable`]) and validated: physical address and length.
    pub dmar: Option<(u64, u32)>,
}

/// The fixed head of the DMAR table (Intel VT-d spec §8.1), for the `acpi` crate's
/// custom-table lookup; `drivers/vtd` parses the whole table from its bytes.
#[repr(C, packed)]
pub struct DmarTable {
    header: ::acpi::sdt::SdtHeader,
    /// Host address width − 1.
    pub host_address_width: u8,
    pub flags: u8,
    reserved: [u8; 10],
}

// SAFETY: `DmarTable` is the layout of the table with signature DMAR (a 36-byte SDT header
// followed by the DMAR fields), and `header` returns that header.
unsafe impl ::acpi::AcpiTable for DmarTable {
    const SIGNATURE: ::acpi::sdt::Signature = ::acpi::sdt::Signature::DMAR;
    fn header(&self) -> &::acpi::sdt::SdtHeader {
        &self.header
    }
}

/// ACPI errors.
#[derive(Debug, Clone)]
pub enum AcpiError {
    /// The boot protocol gave no RSDP and none was found in the BIOS area.
    NoRsdp,
    /// The RSDP is invalid.
    Rsdp(AcpiFormatError),
    /// The RSDT/XSDT is invalid.
    RootTable(AcpiFormatError),
    /// A table could not be mapped.
    Map(MmError),
    /// A table the kernel needs is malformed.
    Table(AcpiFormatError),
    /// The `acpi` crate rejected a table.
    Crate(String),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRsdp => write!(f, "no RSDP from the boot loader and none in the BIOS area"),
            Self::Rsdp(e) => write!(f, "invalid RSDP: {e}"),
            Self::RootTable(e) => write!(f, "invalid root table: {e}"),
            Self::Map(e) => write!(f, "cannot map an ACPI table: {e}"),
            Self::Table(e) => write!(f, "malformed table: {e}"),
            Self::Crate(e) => write!(f, "acpi crate: {e}"),
        }
    }
}

impl core::error::Error for AcpiError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Rsdp(e) | Self::RootTable(e) | Self::Table(e) => Some(e),
            Self::Map(e) => Some(e),
            Self::NoRsdp | Self::Crate(_) => None,
        }
    }
}

static INFO: Once<AcpiInfo> = Once::new();

/// The parsed ACPI information, once [`init`] succeeded.
pub fn info() -> Option<&'static AcpiInfo> {
    INFO.get()
}

/// `len` bytes of firmware memory at `phys`, mapped for reading. Address 0 (firmware's
/// "absent") and ranges that wrap or pass the CPU's physical address limit are refused.
fn phys_bytes(phys: u64, len: usize) -> Result<&'static [u8], AcpiError> {
    check::check_phys_range("ACPI data", phys, len as u64, mm::phys_addr_limit())
        .map_err(AcpiError::Table)?;
    mm::map_firmware(phys, len as u64).map_err(AcpiError::Map)?;
    // SAFETY: just mapped; firmware tables are never freed or moved.
    Ok(unsafe { core::slice::from_raw_parts(phys as *const u8, len) })
}

/// Reads and validates a whole table at `phys`.
fn read_table(phys: u64) -> Result<(&'static [u8], check::SdtHeader), AcpiError> {
    let head = phys_bytes(phys, check::HEADER_LEN)?;
    let h = check::parse_header(head).map_err(AcpiError::Table)?;
    let bytes = phys_bytes(phys, h.length as usize)?;
    let h = check::validate_table(bytes).map_err(AcpiError::Table)?;
    Ok((bytes, h))
}

/// Identity-mapped physical memory for the `acpi` crate. Only validated tables reach
/// the crate, and they were mapped during validation.
#[derive(Clone, Copy, Debug)]
struct IdentityHandler;

impl AcpiHandler for IdentityHandler {
    unsafe fn map_physical_region<T>(&self, phys: usize, size: usize) -> PhysicalMapping<Self, T> {
        if let Err(e) = mm::map_firmware(phys as u64, size as u64) {
            log::error!("acpi: cannot map {phys:#x}+{size:#x}: {e}");
        }
        let ptr = NonNull::new(phys as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: identity mapping: the virtual address equals the physical one.
        unsafe { PhysicalMapping::new(phys, ptr, size, size, *self) }
    }

    fn unmap_physical_region<T>(_region: &PhysicalMapping<Self, T>) {}
}

fn find_rsdp_bios() -> Option<u64> {
    // EBDA segment at 0x40e, then 0xe0000–0xfffff, 16-byte steps.
    let ebda = phys_bytes(0x40e, 2)
        .ok()
        .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])) << 4);
    let mut areas = [(0xe0000u64, 0x100000u64), (0, 0)];
    if let Some(e) = ebda.filter(|&e| (0x80000..0xa0000).contains(&e)) {
        areas[1] = (e, e + 1024);
    }
    for (s, e) in areas {
        let mut a = s;
        while a + 36 <= e && s < e {
            if let Ok(b) = phys_bytes(a, 36)
                && check::parse_rsdp(b).is_ok()
            {
                return Some(a);
            }
            a += 16;
        }
    }
    None
}

/// Finds and validates the tables and parses MADT, MCFG, HPET and FADT.
pub fn init(rsdp: Option<RsdpSource>) -> Result<&'static AcpiInfo, AcpiError> {
    let r = locate_rsdp(rsdp)?;
    let (root, root_hdr, pointers) = read_root_table(&r)?;
    let (mut tables, mut rejected) = validate_listed_tables(&pointers);
    add_dsdt(&mut tables, &mut rejected);
    log_tables(&tables);
    warn_repeated_tables(&tables);
    let crate_tables = hand_to_crate(&root_hdr, &tables)?;
    let mut info = AcpiInfo {
        revision: r.revision,
        root,
        tables,
        rejected,
        lapic_address: 0xfee0_0000,
        cpus: Vec::new(),
        ioapics: Vec::new(),
        overrides: Vec::new(),
        pic_present: false,
        mp_wakeup_mailbox: None,
        ecam: Vec::new(),
        hpet: None,
        pm_timer: None,
        dmar: None,
    };
    read_madt(&mut info, &crate_tables)?;
    read_mcfg(&mut info, &crate_tables)?;
    read_hpet(&mut info)?;
    read_fadt(&mut info, &crate_tables)?;
    find_dmar(&mut info, &crate_tables)?;
    Ok(INFO.call_once(|| info))
}

type CrateTables = AcpiTables<IdentityHandler>;

/// Step 1: the RSDP from the boot protocol (address or copy), else the BIOS-area search;
/// validated.
fn locate_rsdp(rsdp: Option<RsdpSource>) -> Result<check::Rsdp, AcpiError> {
    let (bytes, at): ([u8; 36], String) = match rsdp {
        Some(RsdpSource::Address(a)) => {
            let mut b = [0u8; 36];
            b.copy_from_slice(phys_bytes(a, 36)?);
            (b, format!("at {a:#x}"))
        }
        Some(RsdpSource::Copy { bytes, len }) => {
            (bytes, format!("copy from the boot loader ({len} bytes)"))
        }
        None => {
            let a = find_rsdp_bios().ok_or(AcpiError::NoRsdp)?;
            let mut b = [0u8; 36];
            b.copy_from_slice(phys_bytes(a, 36)?);
            (b, format!("at {a:#x} (BIOS area search)"))
        }
    };
    let r = check::parse_rsdp(&bytes).map_err(AcpiError::Rsdp)?;
    log::info!(
        "RSDP revision {} OEM '{}' {at}, {} at {:#x}",
        r.revision,
        String::from_utf8_lossy(&r.oem_id),
        if uses_xsdt(&r) { "XSDT" } else { "RSDT" },
        root_address(&r)
    );
    Ok(r)
}

fn uses_xsdt(r: &check::Rsdp) -> bool {
    r.revision >= 2 && r.xsdt != 0
}

fn root_address(r: &check::Rsdp) -> u64 {
    if uses_xsdt(r) {
        r.xsdt
    } else {
        u64::from(r.rsdt)
    }
}

/// Step 2: the RSDT/XSDT, validated, and the table pointers it lists.
fn read_root_table(r: &check::Rsdp) -> Result<(u64, check::SdtHeader, Vec<u64>), AcpiError> {
    let root = root_address(r);
    let entry = if uses_xsdt(r) { 8 } else { 4 };
    let (bytes, _) = read_table(root).map_err(|e| match e {
        AcpiError::Table(t) => AcpiError::RootTable(t),
        other => other,
    })?;
    let hdr = check::parse_header(bytes).map_err(AcpiError::RootTable)?;
    let pointers = check::root_pointers(bytes, entry).map_err(AcpiError::RootTable)?;
    Ok((root, hdr, pointers))
}

fn table_info(phys: u64, h: &check::SdtHeader) -> TableInfo {
    TableInfo {
        signature: h.signature,
        phys,
        length: h.length,
        revision: h.revision,
        oem_id: h.oem_id,
        oem_table_id: h.oem_table_id,
    }
}

/// Step 3: every listed table validated; the bad ones are reported and left out.
fn validate_listed_tables(pointers: &[u64]) -> (Vec<TableInfo>, Vec<(u64, String)>) {
    let mut tables = Vec::new();
    let mut rejected = Vec::new();
    for &p in pointers {
        match read_table(p) {
            Ok((_, h)) => tables.push(table_info(p, &h)),
            Err(e) => {
                log::warn!("skipping table at {p:#x}: {e}");
                rejected.push((p, format!("{e}")));
            }
        }
    }
    (tables, rejected)
}

/// Step 4: the DSDT, which is reached through the FADT, not the root table.
fn add_dsdt(tables: &mut Vec<TableInfo>, rejected: &mut Vec<(u64, String)>) {
    let Some(fadt) = first(tables, b"FACP") else {
        return;
    };
    let dsdt = match phys_bytes(fadt.phys, fadt.length as usize)
        .and_then(|b| check::fadt_dsdt(b).map_err(AcpiError::Table))
    {
        Ok(Some(d)) => d,
        Ok(None) => return,
        Err(e) => {
            log::warn!("FADT: no DSDT pointer: {e}");
            return;
        }
    };
    match read_table(dsdt) {
        Ok((_, h)) if h.signature.0 == *b"DSDT" => tables.push(table_info(dsdt, &h)),
        Ok(_) => rejected.push((
            dsdt,
            String::from("FADT DSDT pointer has another signature"),
        )),
        Err(e) => rejected.push((dsdt, format!("{e}"))),
    }
}

fn log_tables(tables: &[TableInfo]) {
    for t in tables {
        log::info!(
            "  {} at {:#012x} length {:>6} revision {} OEM '{}' '{}'",
            t.signature,
            t.phys,
            t.length,
            t.revision,
            String::from_utf8_lossy(&t.oem_id),
            String::from_utf8_lossy(&t.oem_table_id)
        );
    }
}

/// Step 5: a platform has one FADT, MADT, DMAR and MCFG; the first one listed is used.
fn warn_repeated_tables(tables: &[TableInfo]) {
    let sigs: Vec<Signature> = tables.iter().map(|t| t.signature).collect();
    for (sig, n) in check::repeated_single_tables(&sigs) {
        if let Some(t) = first(tables, &sig.0) {
            log::warn!(
                "{n} {sig} tables listed; using the first (at {:#x}) and ignoring the others",
                t.phys
            );
        }
    }
}

/// Step 6: the `acpi` crate gets a rebuilt XSDT listing only the validated tables (the
/// DSDT is not listed in an XSDT).
fn hand_to_crate(
    root_hdr: &check::SdtHeader,
    tables: &[TableInfo],
) -> Result<CrateTables, AcpiError> {
    let good: Vec<u64> = tables
        .iter()
        .filter(|t| t.signature.0 != *b"DSDT")
        .map(|t| t.phys)
        .collect();
    let xsdt = alloc::boxed::Box::leak(check::build_xsdt(root_hdr, &good).into_boxed_slice());
    // SAFETY: `xsdt` is a valid XSDT in identity-mapped heap memory listing only tables
    // that passed length and checksum validation.
    unsafe { AcpiTables::from_rsdt(IdentityHandler, 2, xsdt.as_ptr() as usize) }
        .map_err(|e| AcpiError::Crate(format!("{e:?}")))
}

/// Step 7: processors, I/O APICs and overrides from the MADT.
fn read_madt(info: &mut AcpiInfo, crate_tables: &CrateTables) -> Result<(), AcpiError> {
    let Some(t) = first(&info.tables, b"APIC") else {
        log::warn!("no MADT; only the boot CPU will run");
        return Ok(());
    };
    check::check_madt(phys_bytes(t.phys, t.length as usize)?).map_err(AcpiError::Table)?;
    let madt = crate_tables
        .find_table::<Madt>()
        .map_err(|e| AcpiError::Crate(format!("MADT: {e:?}")))?;
    let m = madt.get();
    info.lapic_address = u64::from(m.local_apic_address);
    info.pic_present = m.supports_8259();
    let limit = mm::phys_addr_limit();
    for e in m.entries() {
        match e {
            MadtEntry::LocalApic(l) => {
                let flags = { l.flags };
                info.cpus.push(MadtCpu {
                    apic_id: u32::from(l.apic_id),
                    uid: u32::from(l.processor_id),
                    enabled: flags & 1 != 0,
                    online_capable: flags & 2 != 0,
                    x2apic_entry: false,
                });
            }
            MadtEntry::LocalX2Apic(x) => {
                let (flags, id, uid) = ({ x.flags }, { x.x2apic_id }, { x.processor_uid });
                info.cpus.push(MadtCpu {
                    apic_id: id,
                    uid,
                    enabled: flags & 1 != 0,
                    online_capable: flags & 2 != 0,
                    x2apic_entry: true,
                });
            }
            MadtEntry::IoApic(io) => {
                let io = IoApicInfo {
                    id: io.io_apic_id,
                    address: u64::from(io.io_apic_address),
                    gsi_base: { io.global_system_interrupt_base },
                };
                // Address 0 would map the null page as MMIO; such an entry is firmware
                // garbage, and its pins cannot be masked anyway.
                match check::check_phys_range("I/O APIC", io.address, IOAPIC_WINDOW, limit) {
                    Ok(()) => info.ioapics.push(io),
                    Err(e) => log::warn!("MADT: ignoring I/O APIC {}: {e}", io.id),
                }
            }
            MadtEntry::InterruptSourceOverride(o) => info.overrides.push(SourceOverride {
                irq: o.irq,
                gsi: { o.global_system_interrupt },
                flags: { o.flags },
            }),
            MadtEntry::LocalApicAddressOverride(o) => info.lapic_address = o.local_apic_address,
            MadtEntry::MultiprocessorWakeup(w) => info.mp_wakeup_mailbox = Some(w.mailbox_address),
            _ => {}
        }
    }
    let enabled = info.cpus.iter().filter(|c| c.enabled).count();
    log::info!(
        "MADT: {} processors ({enabled} enabled), {} I/O APIC(s), {} override(s), local APIC at {:#x}{}",
        info.cpus.len(),
        info.ioapics.len(),
        info.overrides.len(),
        info.lapic_address,
        if info.pic_present { ", dual 8259" } else { "" }
    );
    for io in &info.ioapics {
        log::info!(
            "  I/O APIC id {} at {:#x}, GSI base {}",
            io.id,
            io.address,
            io.gsi_base
        );
    }
    Ok(())
}

/// Bytes of an I/O APIC's register window (index and data registers).
const IOAPIC_WINDOW: u64 = 0x20;

/// Step 8: the ECAM windows from the MCFG; allocations whose window is not a usable
/// physical range are reported and left out.
fn read_mcfg(info: &mut AcpiInfo, crate_tables: &CrateTables) -> Result<(), AcpiError> {
    let Some(t) = first(&info.tables, b"MCFG") else {
        return Ok(());
    };
    if let Err(e) = check::check_mcfg(phys_bytes(t.phys, t.length as usize)?) {
        log::warn!("MCFG rejected: {e}");
        return Ok(());
    }
    let mcfg = crate_tables
        .find_table::<Mcfg>()
        .map_err(|e| AcpiError::Crate(format!("MCFG: {e:?}")))?;
    for e in mcfg.entries() {
        let s = EcamSegment {
            base: { e.base_address },
            segment: { e.pci_segment_group },
            bus_start: e.bus_number_start,
            bus_end: e.bus_number_end,
        };
        if let Err(why) = s.check(mm::phys_addr_limit()) {
            log::warn!(
                "MCFG: ignoring allocation for segment {} buses {:#04x}-{:#04x} at {:#x}: {why}",
                s.segment,
                s.bus_start,
                s.bus_end,
                s.base
            );
            continue;
        }
        log::info!(
            "MCFG: segment {} buses {:#04x}-{:#04x} ECAM at {:#x}",
            s.segment,
            s.bus_start,
            s.bus_end,
            s.base
        );
        info.ecam.push(s);
    }
    Ok(())
}

/// Step 9: the HPET's register block (a bad table leaves the clock to the PM timer).
fn read_hpet(info: &mut AcpiInfo) -> Result<(), AcpiError> {
    let Some(t) = first(&info.tables, b"HPET") else {
        return Ok(());
    };
    let h = check::parse_hpet(phys_bytes(t.phys, t.length as usize)?).and_then(|h| {
        check::check_phys_range(
            "HPET register block",
            h.base_address,
            check::HPET_REGISTER_BLOCK,
            mm::phys_addr_limit(),
        )
        .map(|()| h)
    });
    match h {
        Ok(h) => {
            log::info!("HPET: at {:#x}", h.base_address);
            info.hpet = Some(h);
        }
        Err(e) => log::warn!("HPET table ignored: {e}"),
    }
    Ok(())
}

/// Step 10: the ACPI PM timer from the FADT.
fn read_fadt(info: &mut AcpiInfo, crate_tables: &CrateTables) -> Result<(), AcpiError> {
    let Some(t) = first(&info.tables, b"FACP") else {
        return Ok(());
    };
    if let Err(e) = check::check_fadt(phys_bytes(t.phys, t.length as usize)?) {
        log::warn!("FADT rejected: {e}");
        return Ok(());
    }
    let fadt = crate_tables
        .find_table::<::acpi::fadt::Fadt>()
        .map_err(|e| AcpiError::Crate(format!("FADT: {e:?}")))?;
    let wide = { fadt.flags }.pm_timer_is_32_bit();
    match fadt.pm_timer_block() {
        Ok(Some(g)) if g.address_space == ::acpi::address::AddressSpace::SystemIo => {
            if let Ok(port) = u16::try_from(g.address) {
                log::info!(
                    "PM timer: port {port:#x} ({}-bit)",
                    if wide { 32 } else { 24 }
                );
                info.pm_timer = Some(PmTimerInfo { port, wide });
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("FADT: PM timer block: {e:?}"),
    }
    Ok(())
}

/// Step 11: the DMAR table, through the `acpi` crate's custom-table lookup.
fn find_dmar(info: &mut AcpiInfo, crate_tables: &CrateTables) -> Result<(), AcpiError> {
    if first(&info.tables, b"DMAR").is_none() {
        return Ok(());
    }
    match crate_tables.find_table::<DmarTable>() {
        Ok(m) => {
            let (phys, len) = (m.physical_start() as u64, { m.get().header.length });
            // The crate found what we validated: our checks hold for these bytes.
            match check::validate_table(phys_bytes(phys, len as usize)?) {
                Ok(_) => info.dmar = Some((phys, len)),
                Err(e) => log::warn!("DMAR rejected: {e}"),
            }
        }
        Err(e) => log::warn!("DMAR: {e:?}"),
    }
    Ok(())
}

/// The DMAR table's bytes (`header.length` of them), if the firmware has a valid one.
pub fn dmar_bytes() -> Option<&'static [u8]> {
    let (phys, len) = info()?.dmar?;
    // SAFETY: validated in `init` (mapped, length and checksum); firmware tables stay put.
    let b = unsafe { core::slice::from_raw_parts(phys as *const u8, len as usize) };
    check::validate_table(b).ok().map(|_| b)
}

fn first(tables: &[TableInfo], sig: &[u8; 4]) -> Option<TableInfo> {
    tables.iter().find(|t| t.signature.0 == *sig).copied()
}

/// The validated bytes of the first table with signature `sig` (e.g. `b"DMAR"`); the
/// length and checksum are checked again on every call.
#[cfg(feature = "ktest")]
pub fn table_bytes(sig: &[u8; 4]) -> Option<&'static [u8]> {
    tables_with_signature(sig).next()
}

/// All tables with signature `sig` (e.g. several SSDTs), validated.
#[cfg(feature = "ktest")]
pub fn tables_with_signature(sig: &[u8; 4]) -> impl Iterator<Item = &'static [u8]> + '_ {
    info()
        .into_iter()
        .flat_map(|i| i.tables.iter())
        .filter(move |t| t.signature.0 == *sig)
        .filter_map(|t| {
            // SAFETY: the table was mapped and validated in `init`; firmware tables stay put.
            let b = unsafe { core::slice::from_raw_parts(t.phys as *const u8, t.length as usize) };
            check::validate_table(b).ok().map(|_| b)
        })
}
