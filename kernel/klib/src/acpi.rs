//! Structural validation of ACPI tables over byte slices.
//!
//! The kernel discovers tables with the `acpi` crate, but that crate trusts lengths and
//! entry sizes (a short MADT underflows, a zero-length MADT entry loops forever, a huge
//! `length` reads far beyond the table). Everything firmware hands us passes through
//! these checks first, so a malformed table becomes an [`AcpiFormatError`], never a panic
//! or a wild read.

use alloc::vec::Vec;
use core::fmt;

/// Size of the common System Description Table header.
pub const HEADER_LEN: usize = 36;
/// Sanity bound on one table's length (the largest real DSDTs are a few MiB).
pub const MAX_TABLE_LEN: u32 = 64 << 20;

/// A 4-byte table signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 4]);

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            let c = if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            };
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The common SDT header (ACPI 6.5, 5.2.6), decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SdtHeader {
    /// Signature.
    pub signature: Signature,
    /// Length of the whole table in bytes, header included.
    pub length: u32,
    /// Revision.
    pub revision: u8,
    /// Checksum byte.
    pub checksum: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// OEM table ID.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: u32,
    /// Creator ID.
    pub creator_id: u32,
    /// Creator revision.
    pub creator_revision: u32,
}

/// What is wrong with a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcpiFormatError {
    /// RSDP signature is not "RSD PTR ".
    RsdpSignature,
    /// RSDP checksum (first 20 bytes) is wrong.
    RsdpChecksum,
    /// ACPI 2.0+ RSDP extended checksum is wrong.
    RsdpExtendedChecksum,
    /// ACPI 2.0+ RSDP length field is out of range.
    RsdpLength(u32),
    /// Fewer bytes than the structure needs.
    Truncated {
        /// Table.
        signature: Signature,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// Header length field below the header size or above [`MAX_TABLE_LEN`].
    BadLength {
        /// Table.
        signature: Signature,
        /// The length field.
        length: u32,
    },
    /// The bytes do not sum to zero.
    BadChecksum {
        /// Table.
        signature: Signature,
    },
    /// The table has another signature than expected.
    SignatureMismatch {
        /// Expected.
        expected: Signature,
        /// Found.
        found: Signature,
    },
    /// RSDT/XSDT body is not a whole number of pointers.
    RootTableSize {
        /// Table.
        signature: Signature,
        /// Its length.
        length: u32,
    },
    /// A variable-length entry (MADT) is too short or runs past the table end.
    BadEntry {
        /// Table.
        signature: Signature,
        /// Offset of the entry in the table.
        offset: usize,
        /// Entry type.
        entry_type: u8,
        /// Entry length field.
        length: u8,
    },
    /// A Generic Address Structure uses an address space we cannot use here.
    UnsupportedAddressSpace {
        /// Table.
        signature: Signature,
        /// Address space ID.
        space: u8,
    },
    /// A physical address (table pointer, register block, ECAM window) that is 0, or
    /// whose range wraps or reaches the physical address limit.
    BadAddress {
        /// What the address is for.
        what: &'static str,
        /// The address.
        address: u64,
        /// Bytes it must cover.
        len: u64,
    },
}

impl fmt::Display for AcpiFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RsdpSignature => write!(f, "RSDP signature is not \"RSD PTR \""),
            Self::RsdpChecksum => write!(f, "RSDP checksum is wrong"),
            Self::RsdpExtendedChecksum => write!(f, "RSDP extended checksum is wrong"),
            Self::RsdpLength(l) => write!(f, "RSDP length {l} is out of range"),
            Self::Truncated {
                signature,
                need,
                have,
            } => {
                write!(f, "{signature}: needs {need} bytes, has {have}")
            }
            Self::BadLength { signature, length } => {
                write!(f, "{signature}: length {length} is out of range")
            }
            Self::BadChecksum { signature } => write!(f, "{signature}: checksum is wrong"),
            Self::SignatureMismatch { expected, found } => {
                write!(f, "expected table {expected}, found {found}")
            }
            Self::RootTableSize { signature, length } => {
                write!(
                    f,
                    "{signature}: length {length} is not a whole number of table pointers"
                )
            }
            Self::BadEntry {
                signature,
                offset,
                entry_type,
                length,
            } => write!(
                f,
                "{signature}: entry type {entry_type} at offset {offset} has bad length {length}"
            ),
            Self::UnsupportedAddressSpace { signature, space } => {
                write!(f, "{signature}: unsupported address space {space}")
            }
            Self::BadAddress { what, address, len } => write!(
                f,
                "{what} at {address:#x} (+{len:#x}) is not a usable physical address"
            ),
        }
    }
}

impl core::error::Error for AcpiFormatError {}

/// Checks that `[address, address + len)` is a physical range the kernel can map: not at
/// address 0 (page 0 is never mapped; firmware writes 0 for "absent"), no wrap-around,
/// and below `phys_limit` (2^MAXPHYADDR).
pub fn check_phys_range(
    what: &'static str,
    address: u64,
    len: u64,
    phys_limit: u64,
) -> Result<(), AcpiFormatError> {
    let bad = AcpiFormatError::BadAddress { what, address, len };
    if address == 0 {
        return Err(bad);
    }
    match address.checked_add(len.max(1)) {
        Some(end) if end <= phys_limit => Ok(()),
        _ => Err(bad),
    }
}

/// The physical range `[start, end)` an MCFG allocation decodes (PCI Firmware spec 3.3,
/// §4.1.2: `base` is the address of bus 0 even when `bus_start` > 0), if the allocation is
/// usable: base non-zero and 1 MiB aligned, buses in order, and the window a physical
/// range below `phys_limit` (checked arithmetic: a base near 2^64 wrapped before).
pub fn ecam_window(
    base: u64,
    bus_start: u8,
    bus_end: u8,
    phys_limit: u64,
) -> Result<(u64, u64), AcpiFormatError> {
    let len = (u64::from(bus_end.saturating_sub(bus_start)) + 1) << 20;
    let bad = AcpiFormatError::BadAddress {
        what: "ECAM window",
        address: base,
        len,
    };
    if !base.is_multiple_of(1 << 20) || bus_start > bus_end {
        return Err(bad);
    }
    let start = base.checked_add(u64::from(bus_start) << 20).ok_or(bad)?;
    check_phys_range("ECAM window", start, len, phys_limit)?;
    Ok((start, start + len))
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Byte sum (a valid table sums to 0).
pub fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
}

/// Decodes the 36-byte header at the start of `bytes` and checks its length field range
/// (not the checksum: the body may not be available yet).
pub fn parse_header(bytes: &[u8]) -> Result<SdtHeader, AcpiFormatError> {
    let sig = |b: &[u8]| Signature([b[0], b[1], b[2], b[3]]);
    if bytes.len() < HEADER_LEN {
        let signature = if bytes.len() >= 4 {
            sig(bytes)
        } else {
            Signature(*b"????")
        };
        return Err(AcpiFormatError::Truncated {
            signature,
            need: HEADER_LEN,
            have: bytes.len(),
        });
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&bytes[10..16]);
    let mut oem_table_id = [0u8; 8];
    oem_table_id.copy_from_slice(&bytes[16..24]);
    let h = SdtHeader {
        signature: sig(bytes),
        length: u32_at(bytes, 4),
        revision: bytes[8],
        checksum: bytes[9],
        oem_id,
        oem_table_id,
        oem_revision: u32_at(bytes, 24),
        creator_id: u32_at(bytes, 28),
        creator_revision: u32_at(bytes, 32),
    };
    if (h.length as usize) < HEADER_LEN || h.length > MAX_TABLE_LEN {
        return Err(AcpiFormatError::BadLength {
            signature: h.signature,
            length: h.length,
        });
    }
    Ok(h)
}

/// Full check of a table: header, `length <= bytes.len()`, checksum over `length` bytes.
/// Returns the header; the table is `&bytes[..header.length]`.
pub fn validate_table(bytes: &[u8]) -> Result<SdtHeader, AcpiFormatError> {
    let h = parse_header(bytes)?;
    let len = h.length as usize;
    if bytes.len() < len {
        return Err(AcpiFormatError::Truncated {
            signature: h.signature,
            need: len,
            have: bytes.len(),
        });
    }
    if sum(&bytes[..len]) != 0 {
        return Err(AcpiFormatError::BadChecksum {
            signature: h.signature,
        });
    }
    Ok(h)
}

/// [`validate_table`] plus a signature and minimum-length check.
pub fn validate_table_as(
    bytes: &[u8],
    expected: [u8; 4],
    min_len: usize,
) -> Result<SdtHeader, AcpiFormatError> {
    let h = validate_table(bytes)?;
    if h.signature.0 != expected {
        return Err(AcpiFormatError::SignatureMismatch {
            expected: Signature(expected),
            found: h.signature,
        });
    }
    if (h.length as usize) < min_len {
        return Err(AcpiFormatError::Truncated {
            signature: h.signature,
            need: min_len,
            have: h.length as usize,
        });
    }
    Ok(h)
}

/// The Root System Description Pointer, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsdp {
    /// 0 for ACPI 1.0, 2 for ACPI 2.0+.
    pub revision: u8,
    /// OEM ID.
    pub oem_id: [u8; 6],
    /// RSDT physical address.
    pub rsdt: u32,
    /// XSDT physical address (revision >= 2; may be 0).
    pub xsdt: u64,
    /// Bytes covered by the checksums (20 or the extended length).
    pub length: u32,
}

/// Size of an ACPI 1.0 RSDP.
pub const RSDP_V1_LEN: usize = 20;
/// Size of an ACPI 2.0+ RSDP.
pub const RSDP_V2_LEN: usize = 36;

/// Validates and decodes an RSDP (`bytes` holds at least 20 bytes, 36 for revision 2).
pub fn parse_rsdp(bytes: &[u8]) -> Result<Rsdp, AcpiFormatError> {
    let sig = Signature(*b"RSDP");
    if bytes.len() < RSDP_V1_LEN {
        return Err(AcpiFormatError::Truncated {
            signature: sig,
            need: RSDP_V1_LEN,
            have: bytes.len(),
        });
    }
    if &bytes[0..8] != b"RSD PTR " {
        return Err(AcpiFormatError::RsdpSignature);
    }
    if sum(&bytes[..RSDP_V1_LEN]) != 0 {
        return Err(AcpiFormatError::RsdpChecksum);
    }
    let mut oem_id = [0u8; 6];
    oem_id.copy_from_slice(&bytes[9..15]);
    let revision = bytes[15];
    let rsdt = u32_at(bytes, 16);
    if revision < 2 {
        return Ok(Rsdp {
            revision,
            oem_id,
            rsdt,
            xsdt: 0,
            length: RSDP_V1_LEN as u32,
        });
    }
    if bytes.len() < RSDP_V2_LEN {
        return Err(AcpiFormatError::Truncated {
            signature: sig,
            need: RSDP_V2_LEN,
            have: bytes.len(),
        });
    }
    let length = u32_at(bytes, 20);
    if (length as usize) < RSDP_V2_LEN || length as usize > bytes.len() {
        return Err(AcpiFormatError::RsdpLength(length));
    }
    if sum(&bytes[..length as usize]) != 0 {
        return Err(AcpiFormatError::RsdpExtendedChecksum);
    }
    Ok(Rsdp {
        revision,
        oem_id,
        rsdt,
        xsdt: u64_at(bytes, 24),
        length,
    })
}

/// The table pointers of a validated RSDT (`entry_size` 4) or XSDT (`entry_size` 8).
pub fn root_pointers(table: &[u8], entry_size: usize) -> Result<Vec<u64>, AcpiFormatError> {
    let h = validate_table(table)?;
    let body = &table[HEADER_LEN..h.length as usize];
    if !body.len().is_multiple_of(entry_size) {
        return Err(AcpiFormatError::RootTableSize {
            signature: h.signature,
            length: h.length,
        });
    }
    Ok(body
        .chunks_exact(entry_size)
        .map(|c| {
            if entry_size == 4 {
                u64::from(u32_at(c, 0))
            } else {
                u64_at(c, 0)
            }
        })
        .collect())
}

/// Builds an XSDT listing `pointers` (used to hand the `acpi` crate only tables that
/// passed validation). The header fields are copied from `template`.
pub fn build_xsdt(template: &SdtHeader, pointers: &[u64]) -> Vec<u8> {
    let len = HEADER_LEN + 8 * pointers.len();
    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(b"XSDT");
    t.extend_from_slice(&(len as u32).to_le_bytes());
    t.push(1);
    t.push(0);
    t.extend_from_slice(&template.oem_id);
    t.extend_from_slice(&template.oem_table_id);
    t.extend_from_slice(&template.oem_revision.to_le_bytes());
    t.extend_from_slice(&template.creator_id.to_le_bytes());
    t.extend_from_slice(&template.creator_revision.to_le_bytes());
    for p in pointers {
        t.extend_from_slice(&p.to_le_bytes());
    }
    t[9] = 0u8.wrapping_sub(sum(&t));
    t
}

/// Offset of the first MADT interrupt-controller structure.
pub const MADT_ENTRIES_OFFSET: usize = 44;

/// Minimum length of MADT structures by type (ACPI 6.5, 5.2.12).
fn madt_min_len(t: u8) -> usize {
    match t {
        0 => 8,     // Processor Local APIC
        1 => 12,    // I/O APIC
        2 => 10,    // Interrupt Source Override
        3 => 8,     // NMI Source
        4 => 6,     // Local APIC NMI
        5 => 12,    // Local APIC Address Override
        6 => 16,    // I/O SAPIC
        7 => 17,    // Local SAPIC (+ UID string)
        8 => 16,    // Platform Interrupt Sources
        9 => 16,    // Processor Local x2APIC
        0xa => 12,  // Local x2APIC NMI
        0xb => 80,  // GICC
        0xc => 24,  // GICD
        0xd => 24,  // GIC MSI frame
        0xe => 16,  // GICR
        0xf => 20,  // GIC ITS
        0x10 => 16, // Multiprocessor Wakeup
        _ => 2,
    }
}

/// Checks a MADT's structure: table validity and that every interrupt-controller
/// structure has a length of at least its type's size and ends inside the table.
pub fn check_madt(bytes: &[u8]) -> Result<SdtHeader, AcpiFormatError> {
    let h = validate_table_as(bytes, *b"APIC", MADT_ENTRIES_OFFSET)?;
    let end = h.length as usize;
    let mut off = MADT_ENTRIES_OFFSET;
    while off < end {
        let bad = |length: u8| AcpiFormatError::BadEntry {
            signature: h.signature,
            offset: off,
            entry_type: bytes[off],
            length,
        };
        if end - off < 2 {
            return Err(bad(0));
        }
        let (t, len) = (bytes[off], bytes[off + 1]);
        if (len as usize) < madt_min_len(t).max(2) || off + len as usize > end {
            return Err(bad(len));
        }
        off += len as usize;
    }
    Ok(h)
}

/// Minimum MCFG length: header + 8 reserved bytes.
pub const MCFG_MIN_LEN: usize = 44;

/// Checks an MCFG: valid table and a whole number of 16-byte allocation entries.
pub fn check_mcfg(bytes: &[u8]) -> Result<SdtHeader, AcpiFormatError> {
    let h = validate_table_as(bytes, *b"MCFG", MCFG_MIN_LEN)?;
    if !(h.length as usize - MCFG_MIN_LEN).is_multiple_of(16) {
        return Err(AcpiFormatError::BadEntry {
            signature: h.signature,
            offset: MCFG_MIN_LEN,
            entry_type: 0,
            length: ((h.length as usize - MCFG_MIN_LEN) % 16) as u8,
        });
    }
    Ok(h)
}

/// Offset of the FADT's 32-bit DSDT pointer and of its 64-bit X_DSDT (ACPI 6.5, 5.2.9).
const FADT_DSDT: usize = 40;
const FADT_X_DSDT: usize = 140;

/// The DSDT address from a FADT: X_DSDT when the table is long enough to have it and it
/// is non-zero, else DSDT; `None` when both are 0. Only the FADT's own structure is
/// checked here (signature, checksum, length ≥ 44), not the address.
pub fn fadt_dsdt(bytes: &[u8]) -> Result<Option<u64>, AcpiFormatError> {
    let h = validate_table_as(bytes, *b"FACP", FADT_DSDT + 4)?;
    let len = h.length as usize;
    let x = if len >= FADT_X_DSDT + 8 {
        u64_at(bytes, FADT_X_DSDT)
    } else {
        0
    };
    let dsdt = if x != 0 {
        x
    } else {
        u64::from(u32_at(bytes, FADT_DSDT))
    };
    Ok((dsdt != 0).then_some(dsdt))
}

/// Tables of which the platform has at most one (ACPI 6.5 §5.2.9, §5.2.12, and the VT-d and
/// PCI Firmware specifications for DMAR and MCFG): the kernel uses the first and warns
/// about the others.
pub const SINGLE_TABLES: [[u8; 4]; 4] = [*b"FACP", *b"APIC", *b"DMAR", *b"MCFG"];

/// The signatures of [`SINGLE_TABLES`] that occur more than once in `tables`, with their
/// count, in the order of [`SINGLE_TABLES`].
pub fn repeated_single_tables(tables: &[Signature]) -> Vec<(Signature, usize)> {
    SINGLE_TABLES
        .iter()
        .map(|s| (Signature(*s), tables.iter().filter(|t| t.0 == *s).count()))
        .filter(|&(_, n)| n > 1)
        .collect()
}

/// FADT lengths the kernel relies on: ACPI 1.0 layout (116 bytes), and up to
/// X_PM_TMR_BLK (offset 208 + 12) when the revision says the extended fields exist.
pub fn check_fadt(bytes: &[u8]) -> Result<SdtHeader, AcpiFormatError> {
    let h = validate_table_as(bytes, *b"FACP", 116)?;
    if h.revision >= 2 && (h.length as usize) < 220 {
        return Err(AcpiFormatError::Truncated {
            signature: h.signature,
            need: 220,
            have: h.length as usize,
        });
    }
    Ok(h)
}

/// The HPET description (ACPI HPET table, IA-PC HPET spec 1.0a, 3.2.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HpetDescription {
    /// Event Timer Block ID (copy of the capabilities register's low 32 bits).
    pub event_timer_block_id: u32,
    /// Physical address of the register block.
    pub base_address: u64,
    /// HPET sequence number.
    pub hpet_number: u8,
    /// Minimum clock tick in periodic mode.
    pub min_tick: u16,
}

/// Size of the HPET register block (IA-PC HPET spec 1.0a, 2.3).
pub const HPET_REGISTER_BLOCK: u64 = 1024;

/// Decodes the HPET table (parsed here rather than with the `acpi` crate, whose
/// `HpetInfo::new` asserts on the address space instead of returning an error).
pub fn parse_hpet(bytes: &[u8]) -> Result<HpetDescription, AcpiFormatError> {
    let h = validate_table_as(bytes, *b"HPET", 56)?;
    let space = bytes[40];
    if space != 0 {
        return Err(AcpiFormatError::UnsupportedAddressSpace {
            signature: h.signature,
            space,
        });
    }
    let base_address = u64_at(bytes, 44);
    if base_address == 0 {
        return Err(AcpiFormatError::BadAddress {
            what: "HPET register block",
            address: 0,
            len: HPET_REGISTER_BLOCK,
        });
    }
    Ok(HpetDescription {
        event_timer_block_id: u32_at(bytes, 36),
        base_address,
        hpet_number: bytes[52],
        min_tick: u16_at(bytes, 53),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(sig: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((HEADER_LEN + body.len()) as u32).to_le_bytes());
        t.extend_from_slice(&[1, 0]);
        t.extend_from_slice(b"OEMID TABLEID ");
        t.extend_from_slice(&[0; 12]);
        assert_eq!(t.len(), HEADER_LEN);
        t.extend_from_slice(body);
        t[9] = 0u8.wrapping_sub(sum(&t));
        t
    }

    fn madt(entries: &[&[u8]]) -> Vec<u8> {
        let mut body = vec![0, 0, 0xe0, 0xfe, 1, 0, 0, 0];
        for e in entries {
            body.extend_from_slice(e);
        }
        table(b"APIC", &body)
    }

    #[test]
    fn header_and_checksum() {
        let t = table(b"TEST", &[1, 2, 3]);
        let h = validate_table(&t).unwrap();
        assert_eq!(h.signature.0, *b"TEST");
        assert_eq!(h.length, 39);
        let mut bad = t.clone();
        bad[37] ^= 1;
        assert_eq!(
            validate_table(&bad),
            Err(AcpiFormatError::BadChecksum {
                signature: Signature(*b"TEST")
            })
        );
        assert!(matches!(
            validate_table(&t[..38]),
            Err(AcpiFormatError::Truncated {
                need: 39,
                have: 38,
                ..
            })
        ));
        assert!(matches!(
            validate_table(&t[..10]),
            Err(AcpiFormatError::Truncated { need: 36, .. })
        ));
        let mut short = t.clone();
        short[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert!(matches!(
            validate_table(&short),
            Err(AcpiFormatError::BadLength { length: 10, .. })
        ));
        let mut huge = t;
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            parse_header(&huge),
            Err(AcpiFormatError::BadLength { .. })
        ));
        assert!(matches!(
            validate_table_as(&table(b"TEST", &[]), *b"APIC", 36),
            Err(AcpiFormatError::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn rsdp_v1_and_v2() {
        let mut v1 = Vec::from(*b"RSD PTR ");
        v1.push(0);
        v1.extend_from_slice(b"BOCHS ");
        v1.push(0);
        v1.extend_from_slice(&0x7fe_0000u32.to_le_bytes());
        v1[8] = 0u8.wrapping_sub(sum(&v1));
        let r = parse_rsdp(&v1).unwrap();
        assert_eq!((r.revision, r.rsdt, r.xsdt), (0, 0x7fe_0000, 0));

        let mut v2 = v1.clone();
        v2[15] = 2;
        v2[8] = 0;
        v2[8] = 0u8.wrapping_sub(sum(&v2[..20]));
        v2.extend_from_slice(&36u32.to_le_bytes());
        v2.extend_from_slice(&0x1234_5678_9000u64.to_le_bytes());
        v2.extend_from_slice(&[0, 0, 0, 0]);
        v2[32] = 0u8.wrapping_sub(sum(&v2));
        let r = parse_rsdp(&v2).unwrap();
        assert_eq!((r.revision, r.xsdt), (2, 0x1234_5678_9000));

        let mut bad = v2.clone();
        bad[30] ^= 0x10;
        assert_eq!(parse_rsdp(&bad), Err(AcpiFormatError::RsdpExtendedChecksum));
        let mut bad = v2.clone();
        bad[0] = b'X';
        assert_eq!(parse_rsdp(&bad), Err(AcpiFormatError::RsdpSignature));
        let mut bad = v1.clone();
        bad[16] ^= 1;
        assert_eq!(parse_rsdp(&bad), Err(AcpiFormatError::RsdpChecksum));
        assert!(matches!(
            parse_rsdp(&v2[..30]),
            Err(AcpiFormatError::Truncated { .. })
        ));
    }

    #[test]
    fn root_tables_and_rebuilt_xsdt() {
        let mut body = Vec::new();
        for p in [0x1000u64, 0x2000, 0x3_0000_0000] {
            body.extend_from_slice(&p.to_le_bytes());
        }
        let x = table(b"XSDT", &body);
        assert_eq!(
            root_pointers(&x, 8).unwrap(),
            vec![0x1000, 0x2000, 0x3_0000_0000]
        );
        assert!(matches!(
            root_pointers(&table(b"XSDT", &[0; 12]), 8),
            Err(AcpiFormatError::RootTableSize { .. })
        ));
        let r = table(b"RSDT", &[0, 0x10, 0, 0, 0, 0x20, 0, 0]);
        assert_eq!(root_pointers(&r, 4).unwrap(), vec![0x1000, 0x2000]);
        let h = parse_header(&x).unwrap();
        let rebuilt = build_xsdt(&h, &[0x2000, 0x5000]);
        assert_eq!(validate_table(&rebuilt).unwrap().signature.0, *b"XSDT");
        assert_eq!(root_pointers(&rebuilt, 8).unwrap(), vec![0x2000, 0x5000]);
    }

    #[test]
    fn madt_entries_are_bounds_checked() {
        let lapic = [0u8, 8, 0, 0, 1, 0, 0, 0];
        let ioapic = [1u8, 12, 0, 0, 0, 0, 0xc0, 0xfe, 0, 0, 0, 0];
        check_madt(&madt(&[&lapic, &ioapic])).unwrap();
        // zero-length entry (would loop forever in a naive walker)
        let zero = [0u8, 0, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            check_madt(&madt(&[&zero])),
            Err(AcpiFormatError::BadEntry {
                offset: 44,
                length: 0,
                ..
            })
        ));
        // entry shorter than its type
        let short = [9u8, 8, 0, 0, 0, 0, 0, 0];
        assert!(matches!(
            check_madt(&madt(&[&lapic, &short])),
            Err(AcpiFormatError::BadEntry { offset: 52, .. })
        ));
        // entry running past the end
        let long = [0u8, 40, 0, 0, 1, 0, 0, 0];
        assert!(matches!(
            check_madt(&madt(&[&long])),
            Err(AcpiFormatError::BadEntry { .. })
        ));
        // dangling single byte
        assert!(matches!(
            check_madt(&madt(&[&lapic, &[0]])),
            Err(AcpiFormatError::BadEntry { .. })
        ));
        // table shorter than the fixed part
        assert!(matches!(
            check_madt(&table(b"APIC", &[0; 4])),
            Err(AcpiFormatError::Truncated { need: 44, .. })
        ));
    }

    #[test]
    fn mcfg_fadt_hpet() {
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&0xb000_0000u64.to_le_bytes());
        body.extend_from_slice(&[0, 0, 0, 0xff, 0, 0, 0, 0]);
        check_mcfg(&table(b"MCFG", &body)).unwrap();
        body.push(0);
        assert!(matches!(
            check_mcfg(&table(b"MCFG", &body)),
            Err(AcpiFormatError::BadEntry { .. })
        ));

        let mut f = table(b"FACP", &[0u8; 80]);
        check_fadt(&f).unwrap();
        f[8] = 3; // claims extended fields but is only 116 bytes
        f[9] = 0;
        f[9] = 0u8.wrapping_sub(sum(&f));
        assert!(matches!(
            check_fadt(&f),
            Err(AcpiFormatError::Truncated { need: 220, .. })
        ));

        let mut hb = vec![0u8; 20];
        hb[0..4].copy_from_slice(&0x8086_a201u32.to_le_bytes());
        hb[8..16].copy_from_slice(&0xfed0_0000u64.to_le_bytes());
        let d = parse_hpet(&table(b"HPET", &hb)).unwrap();
        assert_eq!(
            (d.base_address, d.event_timer_block_id),
            (0xfed0_0000, 0x8086_a201)
        );
        hb[4] = 1; // system I/O space
        assert!(matches!(
            parse_hpet(&table(b"HPET", &hb)),
            Err(AcpiFormatError::UnsupportedAddressSpace { space: 1, .. })
        ));
    }

    #[test]
    fn fadt_dsdt_pointer_needs_the_field() {
        // A FADT of 36..=43 bytes passed the header checks and then had bytes 40..44 read.
        for body_len in 0..8 {
            let f = table(b"FACP", &vec![0u8; body_len]);
            assert!(
                matches!(
                    fadt_dsdt(&f),
                    Err(AcpiFormatError::Truncated { need: 44, .. })
                ),
                "{body_len}"
            );
        }
        let mut body = vec![0u8; 8];
        body[4..8].copy_from_slice(&0x7fe_0040u32.to_le_bytes());
        assert_eq!(fadt_dsdt(&table(b"FACP", &body)), Ok(Some(0x7fe_0040)));
        // X_DSDT wins when present and non-zero.
        let mut body = vec![0u8; 112];
        body[4..8].copy_from_slice(&0x7fe_0040u32.to_le_bytes());
        body[104..112].copy_from_slice(&0x1_0000_0000u64.to_le_bytes());
        assert_eq!(fadt_dsdt(&table(b"FACP", &body)), Ok(Some(0x1_0000_0000)));
        assert_eq!(fadt_dsdt(&table(b"FACP", &[0u8; 8])), Ok(None));
        assert!(matches!(
            fadt_dsdt(&table(b"APIC", &[0u8; 8])),
            Err(AcpiFormatError::SignatureMismatch { .. })
        ));
    }

    #[test]
    fn physical_ranges_are_checked_without_overflow() {
        let limit = 1u64 << 46;
        check_phys_range("t", 0x1000, 36, limit).unwrap();
        for (a, l) in [
            (0u64, 36u64),                 // absent
            (u64::MAX - 10, 36),           // wraps
            (0xffff_ffff_ffff_f000, 4096), // ends exactly at 2^64
            (limit - 4, 36),               // crosses the limit
            (limit, 1),
        ] {
            assert_eq!(
                check_phys_range("RSDT", a, l, limit),
                Err(AcpiFormatError::BadAddress {
                    what: "RSDT",
                    address: a,
                    len: l
                }),
                "{a:#x}+{l:#x}"
            );
        }
        assert!(
            check_phys_range("HPET", 0, 1024, limit)
                .unwrap_err()
                .to_string()
                .contains("HPET at 0x0")
        );
    }

    #[test]
    fn ecam_windows_near_the_top_are_refused() {
        let limit = 1u64 << 46;
        assert_eq!(
            ecam_window(0xb000_0000, 0, 0xff, limit),
            Ok((0xb000_0000, 0xc000_0000))
        );
        assert_eq!(
            ecam_window(0xb000_0000, 0x10, 0x1f, limit),
            Ok((0xb100_0000, 0xb200_0000))
        );
        // base + bus << 20 wrapped; base 0; unaligned; reversed; past the limit.
        for (base, s, e) in [
            (0xffff_ffff_fff0_0000u64, 0x10u8, 0xff),
            (0xffff_ffff_f000_0000, 0, 0xff),
            (0, 0, 0xff),
            (0xb000_1000, 0, 0),
            (0xb000_0000, 5, 4),
            (limit - (1 << 20), 0, 1),
        ] {
            assert!(
                matches!(
                    ecam_window(base, s, e, limit),
                    Err(AcpiFormatError::BadAddress { .. })
                ),
                "{base:#x} {s} {e}"
            );
        }
    }

    #[test]
    fn repeated_tables_are_found() {
        let sigs: Vec<Signature> = [
            b"FACP", b"APIC", b"SSDT", b"SSDT", b"APIC", b"DMAR", b"DMAR", b"DMAR",
        ]
        .iter()
        .map(|s| Signature(**s))
        .collect();
        assert_eq!(
            repeated_single_tables(&sigs),
            vec![(Signature(*b"APIC"), 2), (Signature(*b"DMAR"), 3)]
        );
        assert!(repeated_single_tables(&sigs[..3]).is_empty());
    }

    #[test]
    fn hpet_at_address_zero_is_refused() {
        let hb = vec![0u8; 20];
        assert!(matches!(
            parse_hpet(&table(b"HPET", &hb)),
            Err(AcpiFormatError::BadAddress { address: 0, .. })
        ));
    }
}
