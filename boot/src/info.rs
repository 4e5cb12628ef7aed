//! Boot-information parsers: PVH `hvm_start_info` and Multiboot2.
//!
//! Both protocols leave their information in memory the kernel will later reuse, so the
//! parsers *copy* what the kernel needs (command line, memory map, RSDP) into a
//! [`BootInfo`] and never hand out references into firmware memory. All reads go through
//! [`PhysMemory`], which returns `None` for ranges it cannot provide; every length and
//! offset from the boot loader is bounds-checked.

use crate::memmap::{MemKind, MemoryMap};
use core::fmt;

/// Multiboot2 boot-loader magic in EAX.
pub const MB2_BOOTLOADER_MAGIC: u32 = 0x36d7_6289;
/// `hvm_start_info.magic` ("xEn3" with the high bit of 'x' set).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// Longest command line kept.
pub const CMDLINE_MAX: usize = 4096;
/// Sanity bound for the Multiboot2 information size.
pub const MB2_MAX_INFO: u32 = 1 << 20;

/// Read access to physical memory during early boot.
pub trait PhysMemory {
    /// `len` bytes at physical `addr`, or `None` if that range is not accessible.
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]>;
}

/// Which protocol started the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// PVH (`qemu -kernel`, Firecracker, Cloud Hypervisor, Xen).
    Pvh,
    /// Multiboot2 (GRUB, Limine).
    Multiboot2,
}

/// Where the RSDP is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsdpSource {
    /// Physical address of the firmware's RSDP (PVH).
    Address(u64),
    /// A copy handed over by the boot loader (Multiboot2 tags 14/15); `len` bytes valid.
    Copy {
        /// The bytes.
        bytes: [u8; 36],
        /// Valid length (20 or 36).
        len: usize,
    },
}

/// Everything the kernel takes from the boot protocol.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Protocol.
    pub protocol: Protocol,
    cmdline: [u8; CMDLINE_MAX],
    cmdline_len: usize,
    /// The command line was longer than [`CMDLINE_MAX`] and was cut.
    pub cmdline_truncated: bool,
    loader: [u8; 64],
    loader_len: usize,
    /// RSDP location, if the protocol provided one.
    pub rsdp: Option<RsdpSource>,
    /// The memory map as reported (not yet normalised).
    pub memmap: MemoryMap,
    /// Physical range of the boot information structure itself.
    pub info_range: (u64, u64),
}

impl BootInfo {
    /// An empty record.
    pub const fn new() -> Self {
        Self {
            protocol: Protocol::Pvh,
            cmdline: [0; CMDLINE_MAX],
            cmdline_len: 0,
            cmdline_truncated: false,
            loader: [0; 64],
            loader_len: 0,
            rsdp: None,
            memmap: MemoryMap::new(),
            info_range: (0, 0),
        }
    }

    /// The command line (invalid UTF-8 is cut at the first bad byte).
    pub fn cmdline(&self) -> &str {
        utf8_prefix(&self.cmdline[..self.cmdline_len])
    }

    /// Byte offset of the first byte that is not UTF-8, if any: [`BootInfo::cmdline`] ends
    /// there, so the kernel must say that the rest was dropped.
    pub fn cmdline_utf8_error(&self) -> Option<usize> {
        core::str::from_utf8(&self.cmdline[..self.cmdline_len])
            .err()
            .map(|e| e.valid_up_to())
    }

    /// The boot loader's name, if given.
    pub fn bootloader(&self) -> &str {
        utf8_prefix(&self.loader[..self.loader_len])
    }
}

impl Default for BootInfo {
    fn default() -> Self {
        Self::new()
    }
}

fn utf8_prefix(b: &[u8]) -> &str {
    match core::str::from_utf8(b) {
        Ok(s) => s,
        // The prefix up to the first invalid byte is valid UTF-8 by construction.
        Err(e) => core::str::from_utf8(&b[..e.valid_up_to()]).unwrap_or(""),
    }
}

/// Why the boot information could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootError {
    /// Neither the Multiboot2 magic in EAX nor the PVH magic at the info pointer.
    UnknownProtocol {
        /// EAX at entry.
        magic: u32,
        /// EBX at entry.
        info: u64,
    },
    /// A structure the protocol points to is not readable.
    Unreadable {
        /// What.
        what: &'static str,
        /// Where.
        addr: u64,
    },
    /// PVH start info version 0 has no memory map.
    PvhNoMemoryMap,
    /// Multiboot2 total size out of range.
    Mb2BadSize(u32),
    /// A Multiboot2 tag is malformed.
    Mb2BadTag {
        /// Tag type.
        tag: u32,
        /// Offset in the info structure.
        offset: usize,
    },
    /// No memory map was provided.
    NoMemoryMap,
}

impl fmt::Display for BootError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownProtocol { magic, info } => write!(
                f,
                "unknown boot protocol (eax={magic:#x}, ebx={info:#x}): expected Multiboot2 or PVH"
            ),
            Self::Unreadable { what, addr } => write!(f, "{what} at {addr:#x} is not readable"),
            Self::PvhNoMemoryMap => write!(f, "PVH start info version 0 carries no memory map"),
            Self::Mb2BadSize(s) => write!(f, "Multiboot2 information size {s} is out of range"),
            Self::Mb2BadTag { tag, offset } => {
                write!(f, "Multiboot2 tag {tag} at offset {offset} is malformed")
            }
            Self::NoMemoryMap => write!(f, "the boot loader provided no memory map"),
        }
    }
}

impl core::error::Error for BootError {}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Parses the boot information for entry registers `magic` (EAX) and `info` (EBX).
pub fn parse(
    magic: u32,
    info: u64,
    mem: &dyn PhysMemory,
    out: &mut BootInfo,
) -> Result<(), BootError> {
    *out = BootInfo::new();
    if magic == MB2_BOOTLOADER_MAGIC {
        parse_mb2(info, mem, out)
    } else if mem
        .read(info, 4)
        .is_some_and(|b| u32_at(b, 0) == PVH_START_MAGIC)
    {
        parse_pvh(info, mem, out)
    } else {
        Err(BootError::UnknownProtocol { magic, info })
    }
}

/// `len` bytes at `addr`, or [`BootError::Unreadable`] naming `what` and `addr`.
fn read<'m>(
    mem: &'m dyn PhysMemory,
    addr: u64,
    len: usize,
    what: &'static str,
) -> Result<&'m [u8], BootError> {
    mem.read(addr, len)
        .ok_or(BootError::Unreadable { what, addr })
}

fn copy_cstr(mem: &dyn PhysMemory, addr: u64, dst: &mut [u8]) -> Result<(usize, bool), BootError> {
    // Read in small chunks so a string near the end of readable memory still works.
    let mut n = 0;
    while n < dst.len() {
        let b = mem.read(addr + n as u64, 1).ok_or(BootError::Unreadable {
            what: "string",
            addr,
        })?;
        if b[0] == 0 {
            return Ok((n, false));
        }
        dst[n] = b[0];
        n += 1;
    }
    Ok((n, mem.read(addr + n as u64, 1).is_some_and(|b| b[0] != 0)))
}

fn parse_pvh(info: u64, mem: &dyn PhysMemory, out: &mut BootInfo) -> Result<(), BootError> {
    out.protocol = Protocol::Pvh;
    let hdr = read(mem, info, 40, "PVH start info")?;
    let version = u32_at(hdr, 4);
    let cmdline = u64_at(hdr, 24);
    let rsdp = u64_at(hdr, 32);
    out.info_range = (info, info + if version >= 1 { 56 } else { 40 });
    if cmdline != 0 {
        let (n, cut) = copy_cstr(mem, cmdline, &mut out.cmdline)?;
        out.cmdline_len = n;
        out.cmdline_truncated = cut;
    }
    if rsdp != 0 {
        out.rsdp = Some(RsdpSource::Address(rsdp));
    }
    if version < 1 {
        return Err(BootError::PvhNoMemoryMap);
    }
    let hdr = read(mem, info, 56, "PVH start info")?;
    let map = u64_at(hdr, 40);
    let entries = u32_at(hdr, 48) as usize;
    if map == 0 || entries == 0 {
        return Err(BootError::NoMemoryMap);
    }
    for i in 0..entries {
        let at = map + 24 * i as u64;
        let e = read(mem, at, 24, "PVH memory map")?;
        out.memmap.push(
            u64_at(e, 0),
            u64_at(e, 8),
            MemKind::from_e820(u32_at(e, 16)),
        );
    }
    let loader = b"PVH";
    out.loader[..loader.len()].copy_from_slice(loader);
    out.loader_len = loader.len();
    Ok(())
}

mod mb2tag {
    pub const END: u32 = 0;
    pub const CMDLINE: u32 = 1;
    pub const LOADER_NAME: u32 = 2;
    pub const MMAP: u32 = 6;
    pub const ACPI_OLD: u32 = 14;
    pub const ACPI_NEW: u32 = 15;
}

fn parse_mb2(info: u64, mem: &dyn PhysMemory, out: &mut BootInfo) -> Result<(), BootError> {
    out.protocol = Protocol::Multiboot2;
    let head = read(mem, info, 8, "Multiboot2 information")?;
    let total = u32_at(head, 0);
    if !(16..=MB2_MAX_INFO).contains(&total) {
        return Err(BootError::Mb2BadSize(total));
    }
    let b = read(mem, info, total as usize, "Multiboot2 information")?;
    out.info_range = (info, info + u64::from(total));
    let mut off = 8usize;
    let mut have_map = false;
    let mut ended = false;
    while off + 8 <= b.len() {
        let tag = u32_at(b, off);
        let size = u32_at(b, off + 4) as usize;
        if size < 8 || off + size > b.len() {
            return Err(BootError::Mb2BadTag { tag, offset: off });
        }
        let body = &b[off + 8..off + size];
        match tag {
            mb2tag::END => {
                ended = true;
                break;
            }
            mb2tag::CMDLINE | mb2tag::LOADER_NAME => {
                let s = body.split(|&c| c == 0).next().unwrap_or(&[]);
                let (dst, len, cut) = if tag == mb2tag::CMDLINE {
                    (
                        &mut out.cmdline[..],
                        &mut out.cmdline_len,
                        &mut out.cmdline_truncated,
                    )
                } else {
                    (&mut out.loader[..], &mut out.loader_len, &mut false)
                };
                let n = s.len().min(dst.len());
                dst[..n].copy_from_slice(&s[..n]);
                *len = n;
                *cut = n < s.len();
            }
            mb2tag::MMAP => {
                if body.len() < 8 {
                    return Err(BootError::Mb2BadTag { tag, offset: off });
                }
                let esize = u32_at(body, 0) as usize;
                if esize < 24 {
                    return Err(BootError::Mb2BadTag { tag, offset: off });
                }
                for e in body[8..].chunks_exact(esize) {
                    out.memmap.push(
                        u64_at(e, 0),
                        u64_at(e, 8),
                        MemKind::from_e820(u32_at(e, 16)),
                    );
                }
                have_map = true;
            }
            mb2tag::ACPI_OLD | mb2tag::ACPI_NEW => {
                let n = body.len().min(36);
                // Prefer the ACPI 2.0 copy when both tags are present.
                let keep_old = matches!(out.rsdp, Some(RsdpSource::Copy { len: 36, .. }));
                if n >= 20 && !(tag == mb2tag::ACPI_OLD && keep_old) {
                    let mut bytes = [0u8; 36];
                    bytes[..n].copy_from_slice(&body[..n]);
                    out.rsdp = Some(RsdpSource::Copy { bytes, len: n });
                }
            }
            _ => {}
        }
        off += size.div_ceil(8) * 8;
    }
    if !ended {
        return Err(BootError::Mb2BadTag {
            tag: mb2tag::END,
            offset: off,
        });
    }
    if !have_map {
        return Err(BootError::NoMemoryMap);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test images are small
mod tests {
    use super::*;

    /// Fake physical memory: one buffer at a base address.
    struct Fake {
        base: u64,
        data: Vec<u8>,
    }

    impl PhysMemory for Fake {
        fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
            let off = addr.checked_sub(self.base)? as usize;
            self.data.get(off..off.checked_add(len)?)
        }
    }

    fn put(d: &mut Vec<u8>, off: usize, bytes: &[u8]) {
        if d.len() < off + bytes.len() {
            d.resize(off + bytes.len(), 0);
        }
        d[off..off + bytes.len()].copy_from_slice(bytes);
    }

    fn pvh_image(version: u32) -> Fake {
        let base = 0x6000u64;
        let mut d = vec![0u8; 0x1000];
        put(&mut d, 0, &PVH_START_MAGIC.to_le_bytes());
        put(&mut d, 4, &version.to_le_bytes());
        put(&mut d, 24, &(base + 0x100).to_le_bytes()); // cmdline
        put(&mut d, 32, &0xf5250u64.to_le_bytes()); // rsdp
        put(&mut d, 40, &(base + 0x200).to_le_bytes()); // memmap
        put(&mut d, 48, &2u32.to_le_bytes());
        put(&mut d, 0x100, b"ktest=smp loglevel=debug\0");
        let mut e = Vec::new();
        for (a, l, t) in [(0u64, 0x9fc00u64, 1u32), (0x100000, 0x1ff00000, 1)] {
            e.extend_from_slice(&a.to_le_bytes());
            e.extend_from_slice(&l.to_le_bytes());
            e.extend_from_slice(&t.to_le_bytes());
            e.extend_from_slice(&0u32.to_le_bytes());
        }
        put(&mut d, 0x200, &e);
        Fake { base, data: d }
    }

    #[test]
    fn pvh() {
        let m = pvh_image(1);
        let mut bi = BootInfo::new();
        parse(0xdead, 0x6000, &m, &mut bi).unwrap();
        assert_eq!(bi.protocol, Protocol::Pvh);
        assert_eq!(bi.cmdline(), "ktest=smp loglevel=debug");
        assert_eq!(bi.rsdp, Some(RsdpSource::Address(0xf5250)));
        assert_eq!(bi.memmap.regions().len(), 2);
        assert_eq!(bi.memmap.regions()[1].end, 0x2000_0000);
        let m0 = pvh_image(0);
        assert_eq!(
            parse(0, 0x6000, &m0, &mut bi),
            Err(BootError::PvhNoMemoryMap)
        );
        assert_eq!(
            bi.cmdline(),
            "ktest=smp loglevel=debug",
            "cmdline survives for error reporting"
        );
    }

    #[test]
    fn unknown_protocol_and_unreadable() {
        let m = pvh_image(1);
        let mut bi = BootInfo::new();
        assert_eq!(
            parse(0, 0x9000_0000, &m, &mut bi),
            Err(BootError::UnknownProtocol {
                magic: 0,
                info: 0x9000_0000
            })
        );
        let mut bad = pvh_image(1);
        put(&mut bad.data, 40, &0x7777_0000u64.to_le_bytes());
        assert!(matches!(
            parse(0, 0x6000, &bad, &mut bi),
            Err(BootError::Unreadable { .. })
        ));
    }

    fn mb2_tag(t: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&t.to_le_bytes());
        v.extend_from_slice(&((8 + body.len()) as u32).to_le_bytes());
        v.extend_from_slice(body);
        while v.len() % 8 != 0 {
            v.push(0);
        }
        v
    }

    fn mb2_image(tags: &[Vec<u8>]) -> Fake {
        let mut d = vec![0u8; 8];
        for t in tags {
            d.extend_from_slice(t);
        }
        let n = d.len() as u32;
        put(&mut d, 0, &n.to_le_bytes());
        Fake {
            base: 0x10000,
            data: d,
        }
    }

    fn mmap_body() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&24u32.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        for (a, l, t) in [
            (0u64, 0xa0000u64, 1u32),
            (0x100000, 0x7ee0000, 1),
            (0x7fe0000, 0x20000, 2),
        ] {
            b.extend_from_slice(&a.to_le_bytes());
            b.extend_from_slice(&l.to_le_bytes());
            b.extend_from_slice(&t.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
        }
        b
    }

    #[test]
    fn multiboot2() {
        let mut rsdp2 = [0u8; 36];
        rsdp2[..8].copy_from_slice(b"RSD PTR ");
        rsdp2[15] = 2;
        let mut rsdp1 = [0u8; 20];
        rsdp1[..8].copy_from_slice(b"RSD PTR ");
        let m = mb2_image(&[
            mb2_tag(1, b"ktest loglevel=info\0"),
            mb2_tag(2, b"GRUB 2.06\0"),
            mb2_tag(15, &rsdp2),
            mb2_tag(14, &rsdp1),
            mb2_tag(6, &mmap_body()),
            mb2_tag(0, &[]),
        ]);
        let mut bi = BootInfo::new();
        parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi).unwrap();
        assert_eq!(bi.protocol, Protocol::Multiboot2);
        assert_eq!(bi.cmdline(), "ktest loglevel=info");
        assert_eq!(bi.bootloader(), "GRUB 2.06");
        assert!(matches!(bi.rsdp, Some(RsdpSource::Copy { len: 36, bytes }) if bytes[15] == 2));
        assert_eq!(bi.memmap.regions().len(), 3);
        assert_eq!(bi.info_range, (0x10000, 0x10000 + m.data.len() as u64));
    }

    #[test]
    fn multiboot2_malformed() {
        let mut bi = BootInfo::new();
        // tag running past the end
        let mut t = mb2_tag(1, b"abc\0");
        t[4] = 200;
        let m = mb2_image(&[t, mb2_tag(0, &[])]);
        assert_eq!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::Mb2BadTag { tag: 1, offset: 8 })
        );
        // zero-size tag
        let mut t = mb2_tag(6, &mmap_body());
        t[4..8].copy_from_slice(&0u32.to_le_bytes());
        let m = mb2_image(&[t]);
        assert!(matches!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::Mb2BadTag { tag: 6, .. })
        ));
        // no end tag
        let m = mb2_image(&[mb2_tag(6, &mmap_body())]);
        assert!(matches!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::Mb2BadTag { tag: 0, .. })
        ));
        // no memory map
        let m = mb2_image(&[mb2_tag(1, b"x\0"), mb2_tag(0, &[])]);
        assert_eq!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::NoMemoryMap)
        );
        // absurd total size
        let mut m = mb2_image(&[mb2_tag(0, &[])]);
        put(&mut m.data, 0, &(MB2_MAX_INFO + 1).to_le_bytes());
        assert_eq!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::Mb2BadSize(MB2_MAX_INFO + 1))
        );
        // mmap entry size too small
        let mut body = mmap_body();
        body[0] = 8;
        let m = mb2_image(&[mb2_tag(6, &body), mb2_tag(0, &[])]);
        assert!(matches!(
            parse(MB2_BOOTLOADER_MAGIC, 0x10000, &m, &mut bi),
            Err(BootError::Mb2BadTag { tag: 6, .. })
        ));
    }

    #[test]
    fn invalid_utf8_in_the_command_line_is_reported() {
        let mut m = pvh_image(1);
        put(&mut m.data, 0x100, b"loglevel=debug \xff\xfe iommu=off\0");
        let mut bi = BootInfo::new();
        parse(0, 0x6000, &m, &mut bi).unwrap();
        assert_eq!(bi.cmdline(), "loglevel=debug ");
        assert_eq!(bi.cmdline_utf8_error(), Some(15));
        let ok = pvh_image(1);
        parse(0, 0x6000, &ok, &mut bi).unwrap();
        assert_eq!(bi.cmdline_utf8_error(), None);
    }

    #[test]
    fn long_cmdline_is_truncated() {
        let mut m = pvh_image(1);
        let long = vec![b'a'; CMDLINE_MAX + 10];
        put(&mut m.data, 0x300, &long);
        put(&mut m.data, 0x300 + long.len(), &[0]);
        put(&mut m.data, 24, &(0x6000u64 + 0x300).to_le_bytes());
        let mut bi = BootInfo::new();
        parse(0, 0x6000, &m, &mut bi).unwrap();
        assert!(bi.cmdline_truncated);
        assert_eq!(bi.cmdline().len(), CMDLINE_MAX);
    }
}
