//! ACPI DMAR table parser over the table's bytes (the kernel finds the table with the `acpi`
//! crate's custom-table mechanism, `kernel::acpi::DmarTable` with `find_table`, checks its
//! length and checksum, and hands over `&[u8]` of `header.length` bytes).
//!
//! [`Dmar::parse`] validates the whole table up front: header, every remapping structure's
//! length against the table end and the type's fixed layout, and every device scope's length
//! against its structure. After that the iterators walk validated bytes and cannot fail.

use alloc::vec::Vec;
use core::fmt;

/// Length of the standard ACPI system description table header (ACPI 6.5, §5.2.6).
pub const SDT_HEADER_LEN: usize = 36;
/// Length of the DMAR header: the SDT header, Host Address Width, Flags and 10 reserved bytes
/// (Intel VT-d Architecture Specification rev 4.1, §8.1).
pub const DMAR_HEADER_LEN: usize = 48;

/// Why a DMAR table was rejected; offsets are byte offsets from the start of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarError {
    /// Fewer bytes than the 48-byte DMAR header.
    TruncatedHeader {
        /// Bytes given.
        len: usize,
    },
    /// The first four bytes are not "DMAR".
    BadSignature,
    /// The header's length field is smaller than the header or larger than the bytes given.
    BadTableLength {
        /// The header's length field.
        declared: u32,
        /// Bytes given.
        available: usize,
    },
    /// The bytes of the table do not sum to zero (mod 256).
    BadChecksum {
        /// The sum of all bytes.
        sum: u8,
    },
    /// A structure header (type + length) does not fit in the remaining bytes.
    TruncatedStructure {
        /// Offset of the structure.
        offset: usize,
    },
    /// A structure's length is smaller than its type's fixed part (includes length 0).
    StructureTooShort {
        /// Offset of the structure.
        offset: usize,
        /// Structure type ([`structure_type`]).
        ty: u16,
        /// Structure length field, bytes.
        length: u16,
    },
    /// A structure's length runs past the end of the table.
    StructureOverrun {
        /// Offset of the structure.
        offset: usize,
        /// Structure type ([`structure_type`]).
        ty: u16,
        /// Structure length field, bytes.
        length: u16,
    },
    /// A device scope header does not fit in its structure.
    TruncatedScope {
        /// Offset of the scope.
        offset: usize,
    },
    /// A device scope's length is < 6, leaves an odd path, or has no path hop.
    BadScopeLength {
        /// Offset of the scope.
        offset: usize,
        /// Scope length field, bytes.
        length: u8,
    },
    /// A device scope runs past the end of its structure.
    ScopeOverrun {
        /// Offset of the scope.
        offset: usize,
        /// Scope length field, bytes.
        length: u8,
    },
    /// A DRHD register base of 0 or not 4 KiB aligned.
    BadRegisterBase {
        /// Offset of the DRHD.
        offset: usize,
        /// Register Base Address field.
        base: u64,
    },
    /// RMRR with base > limit, or not 4 KiB granular.
    BadRmrrRange {
        /// Offset of the RMRR.
        offset: usize,
        /// Reserved Memory Region Base Address.
        base: u64,
        /// Reserved Memory Region Limit Address (inclusive).
        limit: u64,
    },
    /// An ANDD whose object name is not NUL-terminated inside the structure.
    BadAnddName {
        /// Offset of the ANDD.
        offset: usize,
    },
}

impl fmt::Display for DmarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { len } => write!(
                f,
                "table of {len} bytes is shorter than the {DMAR_HEADER_LEN}-byte DMAR header"
            ),
            Self::BadSignature => write!(f, "signature is not \"DMAR\""),
            Self::BadTableLength {
                declared,
                available,
            } => write!(
                f,
                "length field {declared} is below the header size or beyond the {available} bytes present"
            ),
            Self::BadChecksum { sum } => write!(f, "checksum is wrong (bytes sum to {sum:#04x})"),
            Self::TruncatedStructure { offset } => write!(
                f,
                "remapping structure at offset {offset} is cut off by the end of the table"
            ),
            Self::StructureTooShort { offset, ty, length } => write!(
                f,
                "remapping structure type {ty} at offset {offset} has length {length}, less than its fixed part"
            ),
            Self::StructureOverrun { offset, ty, length } => write!(
                f,
                "remapping structure type {ty} at offset {offset} with length {length} runs past the end of the table"
            ),
            Self::TruncatedScope { offset } => write!(
                f,
                "device scope at offset {offset} is cut off by the end of its structure"
            ),
            Self::BadScopeLength { offset, length } => write!(
                f,
                "device scope at offset {offset} has invalid length {length} (at least 8, 6 + 2 per path hop)"
            ),
            Self::ScopeOverrun { offset, length } => write!(
                f,
                "device scope at offset {offset} with length {length} runs past the end of its structure"
            ),
            Self::BadRegisterBase { offset, base } => write!(
                f,
                "DRHD at offset {offset} has register base {base:#x} (must be non-zero and 4 KiB aligned)"
            ),
            Self::BadRmrrRange {
                offset,
                base,
                limit,
            } => write!(
                f,
                "RMRR at offset {offset} covers {base:#x}..={limit:#x}, not a 4 KiB-granular range"
            ),
            Self::BadAnddName { offset } => write!(
                f,
                "ANDD at offset {offset} has an object name without its terminating NUL"
            ),
        }
    }
}

impl core::error::Error for DmarError {}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

bitflags::bitflags! {
    /// The DMAR header's Flags byte (§8.1).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DmarFlags: u8 {
        /// Bit 0: the platform supports interrupt remapping.
        const INTR_REMAP = 1 << 0;
        /// Bit 1: firmware asks the OS not to enable x2APIC mode.
        const X2APIC_OPT_OUT = 1 << 1;
        /// Bit 2: firmware set up the IOMMU to protect memory during boot (OS
        /// should keep DMA remapping on).
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
        const _ = !0;
    }
}

/// Remapping structure types (Intel VT-d Architecture Specification rev 4.1, §8.2).
pub mod structure_type {
    /// DMA Remapping Hardware Unit Definition (§8.3).
    pub const DRHD: u16 = 0;
    /// Reserved Memory Region Reporting (§8.4).
    pub const RMRR: u16 = 1;
    /// Root Port ATS Capability Reporting (§8.5).
    pub const ATSR: u16 = 2;
    /// Remapping Hardware Static Affinity (§8.6).
    pub const RHSA: u16 = 3;
    /// ACPI Name-space Device Declaration (§8.7).
    pub const ANDD: u16 = 4;
    /// SoC Integrated Address Translation Cache (§8.8).
    pub const SATC: u16 = 5;
}

/// Fixed-part length of each known structure type; where device scopes start.
fn fixed_len(ty: u16) -> Option<usize> {
    match ty {
        structure_type::DRHD => Some(16),
        structure_type::RMRR => Some(24),
        structure_type::ATSR | structure_type::SATC => Some(8),
        structure_type::RHSA => Some(20),
        structure_type::ANDD => Some(8),
        _ => None,
    }
}

fn has_scopes(ty: u16) -> bool {
    matches!(
        ty,
        structure_type::DRHD | structure_type::RMRR | structure_type::ATSR | structure_type::SATC
    )
}

/// A validated DMAR table.
#[derive(Debug, Clone, Copy)]
pub struct Dmar<'a> {
    bytes: &'a [u8],
    /// Host address width in bits (the field holds HAW − 1).
    pub host_address_width: u8,
    /// DMAR Flags (byte 37).
    pub flags: DmarFlags,
}

impl<'a> Dmar<'a> {
    /// Validates the whole table (header, checksum, every structure and device scope); after
    /// that the iterators cannot fail.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DmarError> {
        if bytes.len() < DMAR_HEADER_LEN {
            return Err(DmarError::TruncatedHeader { len: bytes.len() });
        }
        if &bytes[0..4] != b"DMAR" {
            return Err(DmarError::BadSignature);
        }
        let declared = u32_at(bytes, 4).ok_or(DmarError::TruncatedHeader { len: bytes.len() })?;
        let len = declared as usize;
        if len < DMAR_HEADER_LEN || len > bytes.len() {
            return Err(DmarError::BadTableLength {
                declared,
                available: bytes.len(),
            });
        }
        let bytes = &bytes[..len];
        let sum = bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        if sum != 0 {
            return Err(DmarError::BadChecksum { sum });
        }
        let d = Self {
            bytes,
            host_address_width: bytes[36].saturating_add(1),
            flags: DmarFlags::from_bits_retain(bytes[37]),
        };
        d.validate()?;
        Ok(d)
    }

    fn validate(&self) -> Result<(), DmarError> {
        let b = self.bytes;
        let mut off = DMAR_HEADER_LEN;
        while off < b.len() {
            let (Some(ty), Some(length)) = (u16_at(b, off), u16_at(b, off + 2)) else {
                return Err(DmarError::TruncatedStructure { offset: off });
            };
            let l = usize::from(length);
            if l < 4 || fixed_len(ty).is_some_and(|f| l < f) {
                return Err(DmarError::StructureTooShort {
                    offset: off,
                    ty,
                    length,
                });
            }
            if off + l > b.len() {
                return Err(DmarError::StructureOverrun {
                    offset: off,
                    ty,
                    length,
                });
            }
            let s = &b[off..off + l];
            if has_scopes(ty) {
                let start = fixed_len(ty).unwrap_or(l);
                let mut so = start;
                while so < l {
                    if so + 6 > l {
                        return Err(DmarError::TruncatedScope { offset: off + so });
                    }
                    let sl = s[so + 1];
                    let su = usize::from(sl);
                    if su < 8 || (su - 6) % 2 != 0 {
                        return Err(DmarError::BadScopeLength {
                            offset: off + so,
                            length: sl,
                        });
                    }
                    if so + su > l {
                        return Err(DmarError::ScopeOverrun {
                            offset: off + so,
                            length: sl,
                        });
                    }
                    so += su;
                }
            }
            match ty {
                structure_type::DRHD => {
                    let base = u64_at(s, 8).unwrap_or(0);
                    if base == 0 || base & 0xfff != 0 {
                        return Err(DmarError::BadRegisterBase { offset: off, base });
                    }
                }
                structure_type::RMRR => {
                    let base = u64_at(s, 8).unwrap_or(0);
                    let limit = u64_at(s, 16).unwrap_or(0);
                    if base > limit || base & 0xfff != 0 || limit & 0xfff != 0xfff {
                        return Err(DmarError::BadRmrrRange {
                            offset: off,
                            base,
                            limit,
                        });
                    }
                }
                structure_type::ANDD if !s[8..].contains(&0) => {
                    return Err(DmarError::BadAnddName { offset: off });
                }
                _ => {}
            }
            off += l;
        }
        Ok(())
    }

    /// The table's bytes, as given to [`Dmar::parse`].
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every remapping structure, in table order.
    pub fn structures(&self) -> Structures<'a> {
        Structures {
            bytes: self.bytes,
            off: DMAR_HEADER_LEN,
        }
    }

    /// The DRHDs, in table order (the unit index used by [`DeviceUnitMap`]).
    pub fn drhds(&self) -> impl Iterator<Item = Drhd<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Drhd(d) => Some(d),
            _ => None,
        })
    }
}

/// A DMAR remapping structure.
#[derive(Debug, Clone, Copy)]
pub enum RemappingStructure<'a> {
    /// Type 0: a remapping unit.
    Drhd(Drhd<'a>),
    /// Type 1: memory firmware DMA uses, to be identity-mapped.
    Rmrr(Rmrr<'a>),
    /// Type 2: root ports that support ATS.
    Atsr(Atsr<'a>),
    /// Type 3: the NUMA proximity domain of a unit.
    Rhsa(Rhsa),
    /// Type 4: an ACPI namespace device that issues DMA.
    Andd(Andd<'a>),
    /// Type 5: SoC-integrated devices with address translation caches.
    Satc(Satc<'a>),
    /// SIDP (6) and anything newer: skipped by length.
    Unknown {
        /// Structure type.
        ty: u16,
        /// Structure length, bytes.
        length: u16,
    },
}

/// DMA Remapping Hardware Unit Definition (§8.3).
#[derive(Debug, Clone, Copy)]
pub struct Drhd<'a> {
    /// Byte offset of the structure in the table (a stable identifier of the unit).
    pub offset: usize,
    /// Flags bit 0 (INCLUDE_PCI_ALL): the unit covers every device of its segment not claimed by
    /// another unit's scopes.
    pub include_pci_all: bool,
    /// Register set size: 2^size 4 KiB pages (0 on older tables and QEMU).
    pub size: u8,
    /// PCI segment number.
    pub segment: u16,
    /// Physical address of the unit's register set (4 KiB aligned).
    pub register_base: u64,
    scopes: &'a [u8],
}

impl<'a> Drhd<'a> {
    /// The unit's device scopes (§8.3.1).
    pub fn scopes(&self) -> DeviceScopes<'a> {
        DeviceScopes {
            bytes: self.scopes,
            off: 0,
        }
    }
    /// Size of the register window in bytes.
    pub fn register_size(&self) -> u64 {
        4096u64 << (self.size & 0xf)
    }
}

/// Reserved Memory Region Reporting (§8.4): memory the devices in scope may DMA to before and
/// after the OS takes over.
#[derive(Debug, Clone, Copy)]
pub struct Rmrr<'a> {
    /// PCI segment number.
    pub segment: u16,
    /// First byte of the region (4 KiB aligned).
    pub base: u64,
    /// Inclusive last byte.
    pub limit: u64,
    scopes: &'a [u8],
}

impl<'a> Rmrr<'a> {
    /// The devices that use the region.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        DeviceScopes {
            bytes: self.scopes,
            off: 0,
        }
    }
}

/// Root Port ATS Capability Reporting (§8.5).
#[derive(Debug, Clone, Copy)]
pub struct Atsr<'a> {
    /// Flags bit 0 (ALL_PORTS): every root port of the segment supports ATS.
    pub all_ports: bool,
    /// PCI segment number.
    pub segment: u16,
    scopes: &'a [u8],
}

impl<'a> Atsr<'a> {
    /// The root ports in scope (when not `all_ports`).
    pub fn scopes(&self) -> DeviceScopes<'a> {
        DeviceScopes {
            bytes: self.scopes,
            off: 0,
        }
    }
}

/// Remapping Hardware Static Affinity (§8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rhsa {
    /// Register base of the unit it describes.
    pub register_base: u64,
    /// ACPI proximity domain of the unit.
    pub proximity_domain: u32,
}

/// ACPI Name-space Device Declaration (§8.7).
#[derive(Debug, Clone, Copy)]
pub struct Andd<'a> {
    /// ACPI Device Number, the enumeration ID device scopes of type ACPI_NAMESPACE refer to.
    pub device_number: u8,
    /// ACPI object path without the terminating NUL.
    pub object_name: &'a [u8],
}

/// SoC Integrated Address Translation Cache (§8.8).
#[derive(Debug, Clone, Copy)]
pub struct Satc<'a> {
    /// Flags bit 0 (ATC_REQUIRED): the devices must use their ATC for correct operation.
    pub atc_required: bool,
    /// PCI segment number.
    pub segment: u16,
    scopes: &'a [u8],
}

impl<'a> Satc<'a> {
    /// The SoC-integrated devices in scope.
    pub fn scopes(&self) -> DeviceScopes<'a> {
        DeviceScopes {
            bytes: self.scopes,
            off: 0,
        }
    }
}

/// Iterator over the remapping structures of a validated table ([`Dmar::structures`]).
pub struct Structures<'a> {
    bytes: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Structures<'a> {
    type Item = RemappingStructure<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        // Lengths were validated by Dmar::parse; `get` keeps this panic-free regardless.
        let b = self.bytes;
        let off = self.off;
        let ty = u16_at(b, off)?;
        let length = u16_at(b, off + 2)?;
        let s = b.get(off..off + usize::from(length))?;
        if length < 4 {
            return None;
        }
        self.off += usize::from(length);
        let scopes = |from: usize| s.get(from..).unwrap_or(&[]);
        Some(match ty {
            structure_type::DRHD => RemappingStructure::Drhd(Drhd {
                offset: off,
                include_pci_all: s.get(4)? & 1 != 0,
                size: s.get(5)? & 0xf,
                segment: u16_at(s, 6)?,
                register_base: u64_at(s, 8)?,
                scopes: scopes(16),
            }),
            structure_type::RMRR => RemappingStructure::Rmrr(Rmrr {
                segment: u16_at(s, 6)?,
                base: u64_at(s, 8)?,
                limit: u64_at(s, 16)?,
                scopes: scopes(24),
            }),
            structure_type::ATSR => RemappingStructure::Atsr(Atsr {
                all_ports: s.get(4)? & 1 != 0,
                segment: u16_at(s, 6)?,
                scopes: scopes(8),
            }),
            structure_type::RHSA => RemappingStructure::Rhsa(Rhsa {
                register_base: u64_at(s, 8)?,
                proximity_domain: u32_at(s, 16)?,
            }),
            structure_type::ANDD => {
                let name = scopes(8);
                let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
                RemappingStructure::Andd(Andd {
                    device_number: *s.get(7)?,
                    object_name: &name[..end],
                })
            }
            structure_type::SATC => RemappingStructure::Satc(Satc {
                atc_required: s.get(4)? & 1 != 0,
                segment: u16_at(s, 6)?,
                scopes: scopes(8),
            }),
            ty => RemappingStructure::Unknown { ty, length },
        })
    }
}

/// Device scope entry type (§8.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeType {
    /// 1: a PCI endpoint.
    PciEndpoint,
    /// 2: a PCI-PCI bridge and every device below it.
    PciSubHierarchy,
    /// 3: an I/O APIC (enumeration ID = I/O APIC ID).
    IoApic,
    /// 4: an HPET (enumeration ID = HPET number).
    Hpet,
    /// 5: an ACPI namespace device (enumeration ID = ANDD device number).
    AcpiNamespace,
    /// A type this crate does not name.
    Other(u8),
}

impl ScopeType {
    fn from(t: u8) -> Self {
        match t {
            1 => ScopeType::PciEndpoint,
            2 => ScopeType::PciSubHierarchy,
            3 => ScopeType::IoApic,
            4 => ScopeType::Hpet,
            5 => ScopeType::AcpiNamespace,
            t => ScopeType::Other(t),
        }
    }
}

/// One device scope entry (§8.3.1).
#[derive(Debug, Clone, Copy)]
pub struct DeviceScope<'a> {
    /// Scope type.
    pub ty: ScopeType,
    /// Flags byte (byte 2; not interpreted here).
    pub flags: u8,
    /// Enumeration ID (I/O APIC ID, HPET number or ANDD device number).
    pub enumeration_id: u8,
    /// The bus the path starts on.
    pub start_bus: u8,
    /// Path hops as (device, function) byte pairs; at least one.
    path: &'a [u8],
}

/// A bus:device.function on one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..=31).
    pub dev: u8,
    /// Function number (0..=7).
    pub func: u8,
}

impl Bdf {
    /// The address, with `dev` and `func` cut to their 5 and 3 bits.
    pub const fn new(bus: u8, dev: u8, func: u8) -> Self {
        Self {
            bus,
            dev: dev & 0x1f,
            func: func & 7,
        }
    }
    /// Requester / source ID: bus << 8 | dev << 3 | fn.
    pub const fn sid(&self) -> u16 {
        ((self.bus as u16) << 8) | ((self.dev as u16) << 3) | self.func as u16
    }
    /// The address a source ID (bus << 8 | dev << 3 | fn) names.
    pub const fn from_sid(sid: u16) -> Self {
        Self {
            bus: (sid >> 8) as u8,
            dev: ((sid >> 3) & 0x1f) as u8,
            func: (sid & 7) as u8,
        }
    }
    /// Device and function as one byte (dev << 3 | fn).
    pub const fn devfn(&self) -> u8 {
        (self.dev << 3) | self.func
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.dev, self.func)
    }
}

impl<'a> DeviceScope<'a> {
    /// The path as (device, function) pairs; every pair but the last names a bridge.
    pub fn hops(&self) -> impl Iterator<Item = (u8, u8)> + 'a {
        self.path.chunks_exact(2).map(|c| (c[0], c[1]))
    }

    /// Resolves the path to the final bus/device/function. Every hop but the last names a
    /// bridge; `secondary_bus(bus, dev, fn)` returns that bridge's secondary bus (from PCI
    /// enumeration). `None` when a bridge on the path is absent or unconfigured.
    pub fn resolve(&self, mut secondary_bus: impl FnMut(u8, u8, u8) -> Option<u8>) -> Option<Bdf> {
        let mut bus = self.start_bus;
        let n = self.path.len() / 2;
        for (i, (dev, func)) in self.hops().enumerate() {
            if dev > 31 || func > 7 {
                return None;
            }
            if i + 1 == n {
                return Some(Bdf::new(bus, dev, func));
            }
            bus = secondary_bus(bus, dev, func)?;
        }
        None
    }
}

/// Iterator over a structure's device scopes.
pub struct DeviceScopes<'a> {
    bytes: &'a [u8],
    off: usize,
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.bytes;
        let o = self.off;
        let len = usize::from(*b.get(o + 1)?);
        if len < 8 {
            return None;
        }
        let s = b.get(o..o + len)?;
        self.off += len;
        Some(DeviceScope {
            ty: ScopeType::from(s[0]),
            flags: s[2],
            enumeration_id: s[4],
            start_bus: s[5],
            path: &s[6..],
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Device → remapping unit mapping
// ---------------------------------------------------------------------------------------------

/// Bridge bus numbers the mapper needs from PCI enumeration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeBuses {
    /// Secondary bus number.
    pub secondary: u8,
    /// Subordinate (highest) bus number.
    pub subordinate: u8,
}

/// One DRHD's coverage after resolving its scopes against the PCI topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitScope {
    /// Index of the DRHD in table order.
    pub unit: usize,
    /// Physical address of the unit's register set.
    pub register_base: u64,
    /// PCI segment number.
    pub segment: u16,
    /// INCLUDE_PCI_ALL: the unit also covers every device no other unit claims.
    pub include_pci_all: bool,
    /// Endpoints in scope (resolved through bridges).
    pub endpoints: Vec<Bdf>,
    /// Bridges whose whole sub-hierarchy belongs to the unit: (bridge, secondary..=subordinate).
    pub bridges: Vec<(Bdf, u8, u8)>,
    /// (IOAPIC ID, source ID) pairs, for IRTE source validation of IOAPIC interrupts.
    pub ioapics: Vec<(u8, u16)>,
    /// (HPET number, source ID).
    pub hpets: Vec<(u8, u16)>,
}

/// A scope that could not be resolved (device/bridge absent); ignored like Linux does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnresolvedScope {
    /// Index of the DRHD in table order.
    pub unit: usize,
    /// Scope type.
    pub ty: ScopeType,
    /// The bus the scope's path starts on.
    pub start_bus: u8,
}

/// Which remapping unit translates which device: the DRHD scopes resolved against the PCI
/// topology ([`DeviceUnitMap::build`]).
#[derive(Debug, Clone, Default)]
pub struct DeviceUnitMap {
    /// One entry per DRHD, in table order.
    pub units: Vec<UnitScope>,
    /// Scopes that named absent devices or bridges.
    pub unresolved: Vec<UnresolvedScope>,
}

impl DeviceUnitMap {
    /// `bridge(segment, bus, dev, fn)` returns the bus numbers of a PCI-PCI bridge, or None.
    pub fn build(
        dmar: &Dmar<'_>,
        mut bridge: impl FnMut(u16, u8, u8, u8) -> Option<BridgeBuses>,
    ) -> Self {
        let mut map = Self::default();
        for (unit, d) in dmar.drhds().enumerate() {
            let mut u = UnitScope {
                unit,
                register_base: d.register_base,
                segment: d.segment,
                include_pci_all: d.include_pci_all,
                endpoints: Vec::new(),
                bridges: Vec::new(),
                ioapics: Vec::new(),
                hpets: Vec::new(),
            };
            for s in d.scopes() {
                let seg = d.segment;
                let bdf = s.resolve(|b, dv, f| bridge(seg, b, dv, f).map(|x| x.secondary));
                match (s.ty, bdf) {
                    (ScopeType::PciEndpoint, Some(b)) => u.endpoints.push(b),
                    (ScopeType::PciSubHierarchy, Some(b)) => {
                        match bridge(seg, b.bus, b.dev, b.func) {
                            Some(x) if x.secondary > b.bus && x.subordinate >= x.secondary => {
                                u.bridges.push((b, x.secondary, x.subordinate));
                            }
                            // A bridge scope without configured buses still covers the bridge itself.
                            _ => u.endpoints.push(b),
                        }
                    }
                    // IOAPIC/HPET paths name the function that sources their interrupts.
                    (ScopeType::IoApic, Some(b)) => u.ioapics.push((s.enumeration_id, b.sid())),
                    (ScopeType::Hpet, Some(b)) => u.hpets.push((s.enumeration_id, b.sid())),
                    (ScopeType::AcpiNamespace | ScopeType::Other(_), _) => {}
                    (ty, None) => {
                        log::warn!(
                            "dmar: unit {unit}: unresolvable {ty:?} scope from bus {:#x}",
                            s.start_bus
                        );
                        map.unresolved.push(UnresolvedScope {
                            unit,
                            ty,
                            start_bus: s.start_bus,
                        });
                    }
                }
            }
            map.units.push(u);
        }
        map
    }

    /// The unit (index into `units`) that translates `bdf` on `segment`: an explicit endpoint
    /// scope first, then the narrowest bridge sub-hierarchy containing it, then the segment's
    /// INCLUDE_PCI_ALL unit.
    pub fn unit_for(&self, segment: u16, bdf: Bdf) -> Option<usize> {
        let units = || self.units.iter().filter(move |u| u.segment == segment);
        if let Some(u) = units().find(|u| u.endpoints.contains(&bdf)) {
            return Some(u.unit);
        }
        let mut best: Option<(usize, u16)> = None;
        for u in units() {
            for (br, sec, sub) in &u.bridges {
                let covers = *br == bdf || (*sec..=*sub).contains(&bdf.bus);
                let width = u16::from(*sub - *sec);
                if covers && best.is_none_or(|(_, w)| width < w) {
                    best = Some((u.unit, width));
                }
            }
        }
        if let Some((u, _)) = best {
            return Some(u);
        }
        units().find(|u| u.include_pci_all).map(|u| u.unit)
    }

    /// The source ID the DRHDs give I/O APIC `ioapic_id` (IRTE source validation), if any.
    pub fn ioapic_sid(&self, ioapic_id: u8) -> Option<u16> {
        self.units
            .iter()
            .flat_map(|u| u.ioapics.iter())
            .find(|(id, _)| *id == ioapic_id)
            .map(|(_, s)| *s)
    }
}

/// Builds DMAR tables byte by byte (host tests; also handy for kernel self-tests).
#[cfg(any(test, feature = "test-util"))]
pub mod builder {
    use alloc::vec::Vec;

    /// A device scope of type `ty` with the given path.
    pub fn scope(ty: u8, enum_id: u8, start_bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut v = alloc::vec![ty, (6 + 2 * path.len()) as u8, 0, 0, enum_id, start_bus];
        for (d, f) in path {
            v.push(*d);
            v.push(*f);
        }
        v
    }

    /// A DRHD with its scopes.
    pub fn drhd(flags: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&0u16.to_le_bytes());
        v.extend_from_slice(&((16 + body.len()) as u16).to_le_bytes());
        v.push(flags);
        v.push(0);
        v.extend_from_slice(&segment.to_le_bytes());
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// An RMRR for `base..=limit` with its scopes.
    pub fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&1u16.to_le_bytes());
        v.extend_from_slice(&((24 + body.len()) as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&segment.to_le_bytes());
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&limit.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// ATSR (2) and SATC (5) share a layout.
    pub fn atsr_like(ty: u16, flags: u8, segment: u16, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut v = Vec::new();
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&((8 + body.len()) as u16).to_le_bytes());
        v.push(flags);
        v.push(0);
        v.extend_from_slice(&segment.to_le_bytes());
        v.extend_from_slice(&body);
        v
    }

    /// An RHSA.
    pub fn rhsa(base: u64, domain: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&3u16.to_le_bytes());
        v.extend_from_slice(&20u16.to_le_bytes());
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&domain.to_le_bytes());
        v
    }

    /// An ANDD with object name `name` (the NUL is added).
    pub fn andd(dev: u8, name: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&4u16.to_le_bytes());
        v.extend_from_slice(&((8 + name.len() + 1) as u16).to_le_bytes());
        v.extend_from_slice(&[0, 0, 0, dev]);
        v.extend_from_slice(name);
        v.push(0);
        v
    }

    /// Whole table with a correct length and checksum.
    pub fn table(haw_minus_one: u8, flags: u8, structures: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(b"DMAR");
        v.extend_from_slice(&0u32.to_le_bytes());
        v.push(1); // revision
        v.push(0); // checksum
        v.extend_from_slice(b"BOCHS ");
        v.extend_from_slice(b"BXPC    ");
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(b"BXPC");
        v.extend_from_slice(&1u32.to_le_bytes());
        v.push(haw_minus_one);
        v.push(flags);
        v.extend_from_slice(&[0; 10]);
        for s in structures {
            v.extend_from_slice(s);
        }
        fix(&mut v);
        v
    }

    /// Rewrites the length field and checksum after a test edits the bytes.
    pub fn fix(v: &mut [u8]) {
        let len = v.len() as u32;
        v[4..8].copy_from_slice(&len.to_le_bytes());
        v[9] = 0;
        let sum = v.iter().fold(0u8, |a, b| a.wrapping_add(*b));
        v[9] = 0u8.wrapping_sub(sum);
    }
}

#[cfg(test)]
mod tests {
    use super::builder::*;
    use super::*;

    /// QEMU 10.0.2 q35 + intel-iommu (`build_dmar_q35` in QEMU's `hw/i386/acpi-build.c`): one DRHD at 0xFED90000,
    /// flags 0, IOAPIC scope ff:00.0, endpoints 00:00.0 00:01.0 00:1f.0 00:1f.2 00:1f.3, bridge 00:02.0.
    fn qemu_table(with_atsr: bool) -> Vec<u8> {
        let mut s = vec![drhd(
            0,
            0,
            0xfed9_0000,
            &[
                scope(3, 0, 0xff, &[(0, 0)]),
                scope(1, 0, 0, &[(0, 0)]),
                scope(1, 0, 0, &[(1, 0)]),
                scope(2, 0, 0, &[(2, 0)]),
                scope(1, 0, 0, &[(0x1f, 0)]),
                scope(1, 0, 0, &[(0x1f, 2)]),
                scope(1, 0, 0, &[(0x1f, 3)]),
            ],
        )];
        if with_atsr {
            s.push(atsr_like(2, 1, 0, &[]));
        }
        table(47, 1, &s)
    }

    fn topo(seg: u16, bus: u8, dev: u8, func: u8) -> Option<BridgeBuses> {
        match (seg, bus, dev, func) {
            (0, 0, 2, 0) => Some(BridgeBuses {
                secondary: 1,
                subordinate: 2,
            }),
            (0, 1, 0, 0) => Some(BridgeBuses {
                secondary: 2,
                subordinate: 2,
            }),
            _ => None,
        }
    }

    #[test]
    fn parses_qemu_layout() {
        let t = qemu_table(true);
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.host_address_width, 48);
        assert_eq!(d.flags, DmarFlags::INTR_REMAP);
        let drhds: Vec<_> = d.drhds().collect();
        assert_eq!(drhds.len(), 1);
        let u = drhds[0];
        assert_eq!(
            (u.register_base, u.include_pci_all, u.segment, u.size),
            (0xfed9_0000, false, 0, 0)
        );
        // 16 + 7 scopes of 8 bytes = 72 bytes, as QEMU emits.
        assert_eq!(u16_at(&t, 48 + 2), Some(72));
        let scopes: Vec<_> = u.scopes().collect();
        assert_eq!(scopes.len(), 7);
        assert_eq!(scopes[0].ty, ScopeType::IoApic);
        assert_eq!(scopes[0].resolve(|_, _, _| None).unwrap().sid(), 0xff00);
        assert_eq!(scopes[3].ty, ScopeType::PciSubHierarchy);
        let kinds: Vec<_> = d
            .structures()
            .map(|s| matches!(s, RemappingStructure::Atsr(a) if a.all_ports))
            .collect();
        assert_eq!(kinds, vec![false, true]);

        let m = DeviceUnitMap::build(&d, topo);
        assert!(m.unresolved.is_empty());
        assert_eq!(m.unit_for(0, Bdf::new(0, 0x1f, 2)), Some(0));
        assert_eq!(
            m.unit_for(0, Bdf::new(0, 2, 0)),
            Some(0),
            "the bridge itself"
        );
        assert_eq!(
            m.unit_for(0, Bdf::new(2, 0, 0)),
            Some(0),
            "behind the bridge"
        );
        assert_eq!(
            m.unit_for(0, Bdf::new(0, 3, 0)),
            None,
            "root-bus device not in any scope"
        );
        assert_eq!(m.unit_for(1, Bdf::new(0, 0, 0)), None);
        assert_eq!(m.ioapic_sid(0), Some(0xff00));
        assert_eq!(m.units[0].bridges, vec![(Bdf::new(0, 2, 0), 1, 2)]);
    }

    #[test]
    fn include_pci_all_and_multi_hop_scopes() {
        // Unit 0: explicit endpoint reached through two bridges (00:02.0 -> bus 1, 01:00.0 -> bus 2,
        // device 02:03.0). Unit 1: INCLUDE_PCI_ALL for segment 0. Unit 2: INCLUDE_PCI_ALL for segment 1.
        let t = table(
            38,
            0,
            &[
                drhd(
                    0,
                    0,
                    0xfed9_1000,
                    &[
                        scope(1, 0, 0, &[(2, 0), (0, 0), (3, 0)]),
                        scope(4, 2, 0, &[(0x1f, 7)]),
                    ],
                ),
                rmrr(0, 0x000e_0000, 0x000f_ffff, &[scope(1, 0, 0, &[(0x1d, 0)])]),
                rhsa(0xfed9_1000, 1),
                andd(1, b"\\_SB.PCI0.UAR0"),
                atsr_like(5, 1, 0, &[scope(1, 0, 0, &[(4, 0)])]),
                drhd(1, 0, 0xfed9_0000, &[scope(3, 8, 0xf0, &[(0x1f, 0)])]),
                drhd(1, 1, 0xfed9_2000, &[]),
                vec![6, 0, 8, 0, 0, 0, 0, 0], // SIDP: unknown, skipped
            ],
        );
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.host_address_width, 39);
        let all: Vec<_> = d.structures().collect();
        assert_eq!(all.len(), 8);
        assert!(
            matches!(all[1], RemappingStructure::Rmrr(r) if r.base == 0xe0000 && r.limit == 0xfffff && r.scopes().count() == 1)
        );
        assert!(matches!(
            all[2],
            RemappingStructure::Rhsa(Rhsa {
                register_base: 0xfed9_1000,
                proximity_domain: 1
            })
        ));
        assert!(
            matches!(all[3], RemappingStructure::Andd(a) if a.object_name == b"\\_SB.PCI0.UAR0" && a.device_number == 1)
        );
        assert!(
            matches!(all[4], RemappingStructure::Satc(s) if s.atc_required && s.scopes().count() == 1)
        );
        assert!(matches!(
            all[7],
            RemappingStructure::Unknown { ty: 6, length: 8 }
        ));

        let m = DeviceUnitMap::build(&d, topo);
        assert_eq!(m.units[0].endpoints, vec![Bdf::new(2, 3, 0)]);
        assert_eq!(m.units[0].hpets, vec![(2, Bdf::new(0, 0x1f, 7).sid())]);
        assert_eq!(m.unit_for(0, Bdf::new(2, 3, 0)), Some(0));
        assert_eq!(
            m.unit_for(0, Bdf::new(2, 4, 0)),
            Some(1),
            "INCLUDE_PCI_ALL fallback"
        );
        assert_eq!(m.unit_for(1, Bdf::new(7, 0, 0)), Some(2));
        assert_eq!(m.ioapic_sid(8), Some(0xf0f8));
        // Unresolvable path (bridge absent): reported, not fatal.
        let m2 = DeviceUnitMap::build(&d, |_, _, _, _| None);
        assert_eq!(
            m2.unresolved,
            vec![UnresolvedScope {
                unit: 0,
                ty: ScopeType::PciEndpoint,
                start_bus: 0
            }]
        );
        assert_eq!(m2.unit_for(0, Bdf::new(2, 3, 0)), Some(1));
    }

    #[test]
    fn malformed_tables_give_specific_errors() {
        let good = qemu_table(false);
        assert!(Dmar::parse(&good).is_ok());
        // Truncated header.
        assert_eq!(
            Dmar::parse(&good[..40]).unwrap_err(),
            DmarError::TruncatedHeader { len: 40 }
        );
        // Signature.
        let mut t = good.clone();
        t[0] = b'X';
        assert_eq!(Dmar::parse(&t).unwrap_err(), DmarError::BadSignature);
        // Length past the end of the given bytes.
        let mut t = good.clone();
        t[4..8].copy_from_slice(&(good.len() as u32 + 4).to_le_bytes());
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadTableLength { .. }
        ));
        // Length smaller than the header.
        let mut t = good.clone();
        t[4..8].copy_from_slice(&20u32.to_le_bytes());
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadTableLength { declared: 20, .. }
        ));
        // Checksum.
        let mut t = good.clone();
        t[40] ^= 1;
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadChecksum { .. }
        ));
        // Zero-length structure.
        let mut t = good.clone();
        t[50] = 0;
        t[51] = 0;
        fix(&mut t);
        assert_eq!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::StructureTooShort {
                offset: 48,
                ty: 0,
                length: 0
            }
        );
        // DRHD shorter than its fixed part.
        let mut t = good.clone();
        t[50] = 12;
        fix(&mut t);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::StructureTooShort { length: 12, .. }
        ));
        // Structure length past the end of the table.
        let mut t = good.clone();
        t[50] = 200;
        fix(&mut t);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::StructureOverrun { length: 200, .. }
        ));
        // Trailing 2 bytes: truncated structure header.
        let mut t = good.clone();
        t.extend_from_slice(&[0, 0]);
        fix(&mut t);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::TruncatedStructure { .. }
        ));
        // Scope length overrunning its structure (last scope claims 10 bytes).
        let mut t = good.clone();
        let last_scope = 48 + 72 - 8;
        t[last_scope + 1] = 10;
        fix(&mut t);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::ScopeOverrun { length: 10, .. }
        ));
        // Scope length 0, 6 (no path) and odd.
        for bad in [0u8, 6, 7] {
            let mut t = good.clone();
            t[48 + 16 + 1] = bad;
            fix(&mut t);
            assert!(
                matches!(Dmar::parse(&t).unwrap_err(), DmarError::BadScopeLength { length, .. } if length == bad),
                "len {bad}"
            );
        }
        // Register base 0 / unaligned.
        let t = table(47, 0, &[drhd(0, 0, 0, &[])]);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadRegisterBase { base: 0, .. }
        ));
        let t = table(47, 0, &[drhd(0, 0, 0xfed9_0010, &[])]);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadRegisterBase { .. }
        ));
        // RMRR base > limit.
        let t = table(47, 0, &[rmrr(0, 0x2000, 0x0fff, &[])]);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadRmrrRange { .. }
        ));
        // ANDD without NUL.
        let mut a = andd(1, b"AB");
        let n = a.len();
        a[n - 1] = b'C';
        let t = table(47, 0, &[a]);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::BadAnddName { .. }
        ));
        // Scope header truncated (4 spare bytes after the last scope inside the DRHD).
        let mut s = drhd(0, 0, 0xfed9_0000, &[scope(1, 0, 0, &[(1, 0)])]);
        s.extend_from_slice(&[1, 8, 0, 0]);
        let l = s.len() as u16;
        s[2..4].copy_from_slice(&l.to_le_bytes());
        let t = table(47, 0, &[s]);
        assert!(matches!(
            Dmar::parse(&t).unwrap_err(),
            DmarError::TruncatedScope { .. }
        ));
        // Invalid device number in a path: resolves to None, no panic.
        let t = table(
            47,
            0,
            &[drhd(0, 0, 0xfed9_0000, &[scope(1, 0, 0, &[(0x40, 9)])])],
        );
        let d = Dmar::parse(&t).unwrap();
        assert!(
            d.drhds()
                .next()
                .unwrap()
                .scopes()
                .next()
                .unwrap()
                .resolve(|_, _, _| Some(1))
                .is_none()
        );
    }

    /// xorshift64*: deterministic pseudo-random bytes without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    fn exercise(bytes: &[u8]) {
        if let Ok(d) = Dmar::parse(bytes) {
            for s in d.structures() {
                if let RemappingStructure::Drhd(h) = s {
                    for sc in h.scopes() {
                        let _ = sc.resolve(|b, _, _| Some(b.wrapping_add(1)));
                    }
                }
            }
            let m = DeviceUnitMap::build(&d, |_, b, _, _| {
                Some(BridgeBuses {
                    secondary: b.wrapping_add(1),
                    subordinate: 0xff,
                })
            });
            let _ = m.unit_for(0, Bdf::new(1, 2, 3));
        }
    }

    #[test]
    fn fuzz_random_and_truncated_tables_never_panic() {
        let base = qemu_table(true);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut accepted = 0;
        for n in 0..=base.len() {
            exercise(&base[..n]);
        }
        for _ in 0..20_000 {
            let mut t = base.clone();
            let flips = 1 + rng.next() % 6;
            for _ in 0..flips {
                let i = (rng.next() as usize) % t.len();
                t[i] = rng.next() as u8;
            }
            if rng.next().is_multiple_of(2) {
                fix(&mut t); // keep the checksum valid so the structure walk is reached
            }
            let cut = (rng.next() as usize) % (t.len() + 1);
            exercise(&t);
            exercise(&t[..cut]);
            if Dmar::parse(&t).is_ok() {
                accepted += 1;
            }
        }
        for _ in 0..2_000 {
            let len = (rng.next() % 300) as usize;
            let mut t: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if t.len() >= 48 {
                t[..4].copy_from_slice(b"DMAR");
                fix(&mut t);
            }
            exercise(&t);
        }
        // Some mutations keep the table valid (e.g. flipping OEM bytes); most must be rejected.
        assert!(accepted > 0 && accepted < 20_000, "accepted {accepted}");
    }
}
