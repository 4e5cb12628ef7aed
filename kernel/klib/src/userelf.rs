//! Validation of a ring-3 program's ELF image before the kernel maps it.
//!
//! Parsing is the `elf` crate's (bounds-checked, no allocation); on top of it every field
//! the loader will act on is checked, each with its own error: a 64-bit little-endian
//! x86-64 executable (`ET_EXEC`, static: no `PT_INTERP`/`PT_DYNAMIC`/`PT_TLS`), 1 ..=
//! [`MAX_SEGMENTS`] `PT_LOAD` segments, each page-aligned in memory with a matching file
//! offset, file size ≤ memory size, its file bytes inside the image, its pages inside
//! `[USER_BASE, USER_TOP)` below the stack area, not both writable and executable, no two
//! segments sharing a page; the entry point inside an executable segment.

use core::fmt;

use elf::ElfBytes;
use elf::abi::{EM_X86_64, ET_EXEC, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, PT_TLS};
use elf::endian::LittleEndian;
use user_abi::{PAGE, STACK_SIZE, STACK_TOP, USER_BASE};

/// Most `PT_LOAD` segments a program may have.
pub const MAX_SEGMENTS: usize = 8;

/// Lowest address the stack area uses: segments must end below it.
pub const STACK_BOTTOM: u64 = STACK_TOP - STACK_SIZE;

/// One loadable segment, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Segment {
    /// Page-aligned virtual address.
    pub vaddr: u64,
    /// Bytes in memory (the pages are `[vaddr, vaddr + mem_size)` rounded up).
    pub mem_size: u64,
    /// Offset of the file bytes in the image.
    pub file_offset: u64,
    /// Bytes copied from the image; the rest is zero.
    pub file_size: u64,
    /// PF_W.
    pub writable: bool,
    /// PF_X.
    pub executable: bool,
}

impl Segment {
    /// One past the last page.
    pub fn end_page(&self) -> u64 {
        // Checked at validation: cannot overflow.
        (self.vaddr + self.mem_size).div_ceil(PAGE) * PAGE
    }
}

/// A validated program image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Program {
    /// Entry point.
    pub entry: u64,
    segments: [Segment; MAX_SEGMENTS],
    count: usize,
}

impl Program {
    /// The loadable segments, by address.
    pub fn segments(&self) -> &[Segment] {
        &self.segments[..self.count]
    }
}

/// The `elf` crate's parse error (compared by kind).
#[derive(Debug)]
pub struct ParseFailure(pub elf::ParseError);

impl PartialEq for ParseFailure {
    fn eq(&self, other: &Self) -> bool {
        core::mem::discriminant(&self.0) == core::mem::discriminant(&other.0)
    }
}

impl Eq for ParseFailure {}

/// Why an image was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ElfError {
    /// The `elf` crate could not parse the header or the program headers.
    Parse(ParseFailure),
    /// `e_machine` is not x86-64.
    Machine(u16),
    /// `e_type` is not `ET_EXEC` (shared objects and relocatables are not loaded).
    Type(u16),
    /// A segment type the loader does not support (dynamic linking, TLS).
    Unsupported(u32),
    /// No `PT_LOAD`, or more than [`MAX_SEGMENTS`].
    SegmentCount(usize),
    /// Segment `index`: `p_filesz > p_memsz`.
    FileLargerThanMemory {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
        /// `p_filesz`, bytes.
        file: u64,
        /// `p_memsz`, bytes.
        mem: u64,
    },
    /// Segment `index`: `p_memsz` is 0.
    Empty {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
    },
    /// Segment `index`: `p_vaddr` not page-aligned, `p_offset` not congruent, or `p_align`
    /// not a power of two of at least a page.
    Alignment {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_offset`, bytes into the image.
        offset: u64,
        /// `p_align`, bytes.
        align: u64,
    },
    /// Segment `index` reaches outside the user half, wraps, or into the stack area.
    OutsideUserHalf {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
        /// `p_vaddr`.
        vaddr: u64,
        /// `p_memsz`, bytes.
        mem: u64,
    },
    /// Segment `index`'s file bytes reach past the image (or wrap).
    FileRange {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
        /// `p_offset`, bytes into the image.
        offset: u64,
        /// `p_filesz`, bytes.
        size: u64,
        /// Length of the whole image, bytes.
        image: u64,
    },
    /// Segment `index` is writable and executable.
    WriteExecute {
        /// Index of the segment among the `PT_LOAD` segments (from 0).
        index: usize,
    },
    /// Segments `a` and `b` share a page.
    Overlap {
        /// Index of the earlier `PT_LOAD` segment.
        a: usize,
        /// Index of the later `PT_LOAD` segment.
        b: usize,
    },
    /// The entry point is not inside an executable segment.
    Entry(u64),
}

impl fmt::Display for ElfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "not a parsable 64-bit little-endian ELF: {}", e.0),
            Self::Machine(m) => write!(f, "machine {m} is not x86-64 ({EM_X86_64})"),
            Self::Type(t) => write!(f, "type {t} is not a static executable (ET_EXEC)"),
            Self::Unsupported(t) => {
                write!(
                    f,
                    "program header type {t:#x} (dynamic linking or TLS) is not supported"
                )
            }
            Self::SegmentCount(n) => {
                write!(
                    f,
                    "{n} loadable segments (1 to {MAX_SEGMENTS} are accepted)"
                )
            }
            Self::FileLargerThanMemory { index, file, mem } => write!(
                f,
                "segment {index}: file size {file:#x} exceeds memory size {mem:#x}"
            ),
            Self::Empty { index } => write!(f, "segment {index}: memory size 0"),
            Self::Alignment {
                index,
                vaddr,
                offset,
                align,
            } => write!(
                f,
                "segment {index}: address {vaddr:#x} / offset {offset:#x} / alignment {align:#x} not page-aligned and congruent"
            ),
            Self::OutsideUserHalf { index, vaddr, mem } => write!(
                f,
                "segment {index}: {vaddr:#x}+{mem:#x} is not inside [{USER_BASE:#x}, {STACK_BOTTOM:#x})"
            ),
            Self::FileRange {
                index,
                offset,
                size,
                image,
            } => write!(
                f,
                "segment {index}: file bytes {offset:#x}+{size:#x} pass the end of the {image:#x}-byte image"
            ),
            Self::WriteExecute { index } => {
                write!(f, "segment {index} is both writable and executable")
            }
            Self::Overlap { a, b } => write!(f, "segments {a} and {b} share a page"),
            Self::Entry(e) => write!(f, "entry point {e:#x} is not in an executable segment"),
        }
    }
}

impl core::error::Error for ElfError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        match self {
            Self::Parse(e) => Some(&e.0),
            _ => None,
        }
    }
}

/// Parses and validates `image`.
pub fn parse(image: &[u8]) -> Result<Program, ElfError> {
    let file = ElfBytes::<LittleEndian>::minimal_parse(image)
        .map_err(|e| ElfError::Parse(ParseFailure(e)))?;
    let h = &file.ehdr;
    if h.class != elf::file::Class::ELF64 {
        return Err(ElfError::Parse(ParseFailure(
            elf::ParseError::UnsupportedElfClass(4),
        )));
    }
    if h.e_machine != EM_X86_64 {
        return Err(ElfError::Machine(h.e_machine));
    }
    if h.e_type != ET_EXEC {
        return Err(ElfError::Type(h.e_type));
    }
    let phdrs = file.segments().ok_or(ElfError::SegmentCount(0))?;
    let mut p = Program {
        entry: h.e_entry,
        segments: [Segment::default(); MAX_SEGMENTS],
        count: 0,
    };
    let image_len = image.len() as u64;
    for ph in phdrs.iter() {
        match ph.p_type {
            PT_LOAD => {}
            PT_INTERP | PT_DYNAMIC | PT_TLS => return Err(ElfError::Unsupported(ph.p_type)),
            _ => continue,
        }
        let index = p.count;
        if index == MAX_SEGMENTS {
            return Err(ElfError::SegmentCount(MAX_SEGMENTS + 1));
        }
        let (vaddr, mem, offset, size, align) =
            (ph.p_vaddr, ph.p_memsz, ph.p_offset, ph.p_filesz, ph.p_align);
        if size > mem {
            return Err(ElfError::FileLargerThanMemory {
                index,
                file: size,
                mem,
            });
        }
        if mem == 0 {
            return Err(ElfError::Empty { index });
        }
        if !vaddr.is_multiple_of(PAGE)
            || !offset.is_multiple_of(PAGE)
            || !align.is_power_of_two()
            || align < PAGE
        {
            return Err(ElfError::Alignment {
                index,
                vaddr,
                offset,
                align,
            });
        }
        let fits = (USER_BASE..STACK_BOTTOM).contains(&vaddr) && mem <= STACK_BOTTOM - vaddr;
        if !fits {
            return Err(ElfError::OutsideUserHalf { index, vaddr, mem });
        }
        if offset > image_len || size > image_len - offset {
            return Err(ElfError::FileRange {
                index,
                offset,
                size,
                image: image_len,
            });
        }
        let writable = ph.p_flags & PF_W != 0;
        let executable = ph.p_flags & PF_X != 0;
        if writable && executable {
            return Err(ElfError::WriteExecute { index });
        }
        p.segments[index] = Segment {
            vaddr,
            mem_size: mem,
            file_offset: offset,
            file_size: size,
            writable,
            executable,
        };
        p.count += 1;
    }
    if p.count == 0 {
        return Err(ElfError::SegmentCount(0));
    }
    let segs = p.segments();
    for (a, sa) in segs.iter().enumerate() {
        for (b, sb) in segs.iter().enumerate().skip(a + 1) {
            if sa.vaddr < sb.end_page() && sb.vaddr < sa.end_page() {
                return Err(ElfError::Overlap { a, b });
            }
        }
    }
    let entry_ok = segs
        .iter()
        .any(|s| s.executable && p.entry >= s.vaddr && p.entry < s.vaddr + s.mem_size);
    if !entry_ok {
        return Err(ElfError::Entry(p.entry));
    }
    p.segments[..p.count].sort_unstable_by_key(|s| s.vaddr);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EHDR: usize = 64;
    const PHDR: usize = 56;

    /// (type, flags, offset, vaddr, filesz, memsz, align)
    type Ph = (u32, u32, u64, u64, u64, u64, u64);

    const TEXT: Ph = (
        PT_LOAD,
        5,
        0x1000,
        USER_BASE + 0x10_0000,
        0x100,
        0x100,
        0x1000,
    );
    const DATA: Ph = (
        PT_LOAD,
        6,
        0x2000,
        USER_BASE + 0x10_2000,
        0x10,
        0x3000,
        0x1000,
    );

    fn image(entry: u64, phs: &[Ph]) -> Vec<u8> {
        let mut v = vec![0u8; 0x3000];
        v[..4].copy_from_slice(b"\x7fELF");
        v[4] = 2; // ELFCLASS64
        v[5] = 1; // little-endian
        v[6] = 1; // EV_CURRENT
        v[16..18].copy_from_slice(&ET_EXEC.to_le_bytes());
        v[18..20].copy_from_slice(&EM_X86_64.to_le_bytes());
        v[20..24].copy_from_slice(&1u32.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
        v[52..54].copy_from_slice(&(EHDR as u16).to_le_bytes());
        v[54..56].copy_from_slice(&(PHDR as u16).to_le_bytes());
        v[56..58].copy_from_slice(&(phs.len() as u16).to_le_bytes());
        v[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        for (i, &(t, fl, off, va, fs, ms, al)) in phs.iter().enumerate() {
            let o = EHDR + i * PHDR;
            v[o..o + 4].copy_from_slice(&t.to_le_bytes());
            v[o + 4..o + 8].copy_from_slice(&fl.to_le_bytes());
            v[o + 8..o + 16].copy_from_slice(&off.to_le_bytes());
            v[o + 16..o + 24].copy_from_slice(&va.to_le_bytes());
            v[o + 24..o + 32].copy_from_slice(&va.to_le_bytes());
            v[o + 32..o + 40].copy_from_slice(&fs.to_le_bytes());
            v[o + 40..o + 48].copy_from_slice(&ms.to_le_bytes());
            v[o + 48..o + 56].copy_from_slice(&al.to_le_bytes());
        }
        v
    }

    const ENTRY: u64 = USER_BASE + 0x10_0010;

    #[test]
    fn a_valid_image_parses() {
        let p = parse(&image(ENTRY, &[DATA, TEXT])).unwrap();
        assert_eq!(p.entry, ENTRY);
        assert_eq!(p.segments().len(), 2);
        assert_eq!(p.segments()[0].vaddr, TEXT.3, "sorted by address");
        assert!(p.segments()[0].executable && !p.segments()[0].writable);
        assert!(p.segments()[1].writable && !p.segments()[1].executable);
        assert_eq!(p.segments()[1].end_page(), TEXT.3 + 0x5000);
    }

    #[test]
    fn malformed_images_are_refused_with_the_reason() {
        let ok = image(ENTRY, &[TEXT, DATA]);
        let mut m = ok.clone();
        m[0] = 0;
        assert!(matches!(parse(&m), Err(ElfError::Parse(_))), "bad magic");
        assert!(
            matches!(parse(&ok[..40]), Err(ElfError::Parse(_))),
            "truncated"
        );
        let mut m = ok.clone();
        m[4] = 1;
        assert!(matches!(parse(&m), Err(ElfError::Parse(_))), "32-bit class");
        let mut m = ok.clone();
        m[5] = 2;
        assert!(matches!(parse(&m), Err(ElfError::Parse(_))), "big-endian");
        let mut m = ok.clone();
        m[18..20].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(parse(&m), Err(ElfError::Machine(3)));
        let mut m = ok.clone();
        m[16..18].copy_from_slice(&3u16.to_le_bytes());
        assert_eq!(parse(&m), Err(ElfError::Type(3)), "ET_DYN");
        let mut m = ok.clone();
        m[56..58].copy_from_slice(&1000u16.to_le_bytes());
        assert!(
            matches!(parse(&m), Err(ElfError::Parse(_))),
            "phdrs past the end"
        );
    }

    #[test]
    fn bad_segments_are_refused_with_the_reason() {
        let t = TEXT;
        let cases: Vec<(Vec<Ph>, ElfError)> = vec![
            (vec![], ElfError::SegmentCount(0)),
            (vec![t; 9], ElfError::SegmentCount(9)),
            (
                vec![(PT_INTERP, 4, 0, 0, 0, 0, 1), t],
                ElfError::Unsupported(PT_INTERP),
            ),
            (
                vec![t, (PT_TLS, 4, 0, 0, 0, 0, 1)],
                ElfError::Unsupported(PT_TLS),
            ),
            (
                vec![(t.0, t.1, t.2, t.3, 0x200, 0x100, t.6)],
                ElfError::FileLargerThanMemory {
                    index: 0,
                    file: 0x200,
                    mem: 0x100,
                },
            ),
            (
                vec![(t.0, t.1, t.2, t.3, 0, 0, t.6)],
                ElfError::Empty { index: 0 },
            ),
            (
                vec![(t.0, t.1, t.2, t.3 + 8, t.4, t.5, t.6)],
                ElfError::Alignment {
                    index: 0,
                    vaddr: t.3 + 8,
                    offset: t.2,
                    align: t.6,
                },
            ),
            (
                vec![(t.0, t.1, t.2 + 8, t.3, t.4, t.5, t.6)],
                ElfError::Alignment {
                    index: 0,
                    vaddr: t.3,
                    offset: t.2 + 8,
                    align: t.6,
                },
            ),
            (
                vec![(t.0, t.1, t.2, t.3, t.4, t.5, 3)],
                ElfError::Alignment {
                    index: 0,
                    vaddr: t.3,
                    offset: t.2,
                    align: 3,
                },
            ),
            (
                vec![(t.0, t.1, t.2, 0x20_0000, t.4, t.5, t.6)],
                ElfError::OutsideUserHalf {
                    index: 0,
                    vaddr: 0x20_0000,
                    mem: t.5,
                },
            ),
            (
                vec![(t.0, t.1, t.2, 0xffff_8000_0000_0000, t.4, t.5, t.6)],
                ElfError::OutsideUserHalf {
                    index: 0,
                    vaddr: 0xffff_8000_0000_0000,
                    mem: t.5,
                },
            ),
            (
                vec![(t.0, t.1, t.2, t.3, t.4, u64::MAX, t.6)],
                ElfError::OutsideUserHalf {
                    index: 0,
                    vaddr: t.3,
                    mem: u64::MAX,
                },
            ),
            (
                vec![(t.0, t.1, t.2, STACK_BOTTOM - 0x1000, t.4, 0x2000, t.6)],
                ElfError::OutsideUserHalf {
                    index: 0,
                    vaddr: STACK_BOTTOM - 0x1000,
                    mem: 0x2000,
                },
            ),
            (
                vec![(t.0, t.1, 0x2000, t.3, 0x1001, 0x2000, t.6)],
                ElfError::FileRange {
                    index: 0,
                    offset: 0x2000,
                    size: 0x1001,
                    image: 0x3000,
                },
            ),
            (
                vec![(t.0, t.1, !0xfffu64, t.3, 0x10, 0x100, t.6)],
                ElfError::FileRange {
                    index: 0,
                    offset: !0xfffu64,
                    size: 0x10,
                    image: 0x3000,
                },
            ),
            (
                vec![(t.0, 7, t.2, t.3, t.4, t.5, t.6)],
                ElfError::WriteExecute { index: 0 },
            ),
            (
                vec![t, (PT_LOAD, 6, 0x2000, t.3, 0x10, 0x10, 0x1000)],
                ElfError::Overlap { a: 0, b: 1 },
            ),
            (
                vec![(t.0, 4, t.2, t.3, t.4, t.5, t.6), DATA],
                ElfError::Entry(ENTRY),
            ),
        ];
        for (phs, want) in cases {
            assert_eq!(
                parse(&image(ENTRY, &phs)).err().as_ref(),
                Some(&want),
                "{want}"
            );
        }
        // Entry outside every segment.
        assert_eq!(
            parse(&image(USER_BASE, &[TEXT, DATA])),
            Err(ElfError::Entry(USER_BASE))
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let base = image(ENTRY, &[TEXT, DATA]);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % (EHDR + 3 * PHDR);
                m[i] = (x >> 32) as u8;
            }
            let _ = parse(&m);
        }
    }
}
