//! A ring-3 program's ELF image (`klib::userelf::parse`), as the kernel validates it
//! before mapping it into a new address space.
//!
//! Beyond "does not panic": an accepted image's segments are checked against the promises
//! the loader relies on (inside `[USER_BASE, STACK_BOTTOM)`, page-aligned, no shared page,
//! no W+X, file bytes inside the image, no overflow, entry in an executable segment), and a
//! reference reader written here from the ELF-64 layout (System V ABI, "ELF Header" and
//! "Program Header") must agree: the accepted segments are exactly the image's `PT_LOAD`
//! entries, and for an image whose header the reference reads fully (no section table or a
//! plain one, no `PN_XNUM`), the reference's verdict (accept/refuse) is the parser's.
//!
//! Seeds (`corpus/userelf/`): `hello.elf` is the real `hello` program (`cargo build -p
//! user-programs --release --target x86_64-unknown-none` with the kernel build's RUSTFLAGS,
//! then `strip -s`); the others are hand-made headers-only images (their `PT_LOAD` file
//! bytes are the headers themselves, so most mutations land on a field): `tiny` (one
//! segment), `three` (text, rodata, bss with a 2 MiB alignment, plus ignored `PT_NOTE` and
//! `PT_GNU_STACK`), `sections` (a section header table), `eight` ([`MAX_SEGMENTS`]
//! adjacent segments), `bounds` (a segment at `USER_BASE` and one ending at the stack
//! area). `cargo test -p fuzz` checks that each is accepted.

use klib::userelf::{self, MAX_SEGMENTS, Program, STACK_BOTTOM};
use user_abi::{PAGE, USER_BASE};

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PT_TLS: u32 = 7;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn u16_at(d: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        d.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(d: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        d.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(d: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        d.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// One program header, read by the reference.
#[derive(Debug, Clone, Copy)]
struct Ph {
    kind: u32,
    flags: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
    align: u64,
}

/// The header fields the reference needs, and whether it can judge the whole image (an
/// ELF-64 little-endian header it reads completely).
struct Header {
    machine: u16,
    kind: u16,
    entry: u64,
    phdrs: Vec<Ph>,
    /// False where the `elf` crate's own header rules (extended counts, section table
    /// layout) decide: then only the accepted image is compared.
    complete: bool,
}

fn read_header(d: &[u8]) -> Option<Header> {
    if d.get(..4)? != b"\x7fELF" || *d.get(4)? != 2 || *d.get(5)? != 1 || *d.get(6)? != 1 {
        return None;
    }
    let phoff = u64_at(d, 32)?;
    let shoff = u64_at(d, 40)?;
    let phentsize = u16_at(d, 54)?;
    let phnum = u16_at(d, 56)?;
    let shentsize = u16_at(d, 58)?;
    let shnum = u16_at(d, 60)?;
    let mut phdrs = Vec::new();
    let mut complete = phnum != 0xffff && (phoff == 0 || phentsize == 56);
    if phoff != 0 && phnum != 0xffff {
        for i in 0..usize::from(phnum) {
            let o = usize::try_from(phoff)
                .ok()?
                .checked_add(i * usize::from(phentsize))?;
            if phentsize != 56 {
                break;
            }
            let Some(ph) = (|| {
                Some(Ph {
                    kind: u32_at(d, o)?,
                    flags: u32_at(d, o + 4)?,
                    offset: u64_at(d, o + 8)?,
                    vaddr: u64_at(d, o + 16)?,
                    filesz: u64_at(d, o + 32)?,
                    memsz: u64_at(d, o + 40)?,
                    align: u64_at(d, o + 48)?,
                })
            })() else {
                // The table passes the end of the image: refused by the parser.
                return None;
            };
            phdrs.push(ph);
        }
    }
    if shoff != 0 {
        // A plain section table (shnum != 0, 64-byte entries inside the image) is accepted
        // by the `elf` crate; anything else is its business.
        let fits = usize::try_from(shoff)
            .ok()
            .and_then(|s| s.checked_add(usize::from(shnum) * 64))
            .is_some_and(|end| end <= d.len());
        complete &= shnum != 0 && shentsize == 64 && fits;
    }
    Some(Header {
        machine: u16_at(d, 18)?,
        kind: u16_at(d, 16)?,
        entry: u64_at(d, 24)?,
        phdrs,
        complete,
    })
}

/// The loader's rules, restated: true when the reference would load the image.
fn reference_accepts(h: &Header, len: u64) -> bool {
    if h.machine != 62 || h.kind != 2 {
        return false;
    }
    let mut loads: Vec<&Ph> = Vec::new();
    for ph in &h.phdrs {
        match ph.kind {
            PT_INTERP | PT_DYNAMIC | PT_TLS => return false,
            PT_LOAD => loads.push(ph),
            _ => {}
        }
    }
    if loads.is_empty() || loads.len() > MAX_SEGMENTS {
        return false;
    }
    for ph in &loads {
        let page_ok = ph.vaddr % PAGE == 0 && ph.offset % PAGE == 0;
        let align_ok = ph.align.is_power_of_two() && ph.align >= PAGE;
        let end = ph.vaddr.checked_add(ph.memsz);
        let inside = ph.vaddr >= USER_BASE && end.is_some_and(|e| e <= STACK_BOTTOM);
        let file_ok = ph.offset.checked_add(ph.filesz).is_some_and(|e| e <= len);
        let wx = ph.flags & PF_W != 0 && ph.flags & PF_X != 0;
        if ph.filesz > ph.memsz || ph.memsz == 0 || !page_ok || !align_ok || !inside {
            return false;
        }
        if !file_ok || wx {
            return false;
        }
    }
    let pages = |p: &Ph| (p.vaddr / PAGE, (p.vaddr + p.memsz).div_ceil(PAGE));
    for (i, a) in loads.iter().enumerate() {
        for b in &loads[i + 1..] {
            let ((a0, a1), (b0, b1)) = (pages(a), pages(b));
            if a0 < b1 && b0 < a1 {
                return false;
            }
        }
    }
    loads
        .iter()
        .any(|p| p.flags & PF_X != 0 && (p.vaddr..p.vaddr + p.memsz).contains(&h.entry))
}

/// What the loader relies on for an accepted image.
fn check_accepted(p: &Program, image: &[u8]) {
    let segs = p.segments();
    assert!((1..=MAX_SEGMENTS).contains(&segs.len()), "segment count");
    for s in segs {
        assert!(s.vaddr >= USER_BASE && s.vaddr % PAGE == 0, "{s:?}: base");
        assert!(s.file_offset % PAGE == 0, "{s:?}: offset");
        assert!(s.mem_size > 0 && s.file_size <= s.mem_size, "{s:?}: sizes");
        let end = s
            .vaddr
            .checked_add(s.mem_size)
            .expect("segment end overflows");
        assert!(
            end <= STACK_BOTTOM && s.end_page() <= STACK_BOTTOM,
            "{s:?}: top"
        );
        let file_end = s.file_offset.checked_add(s.file_size).expect("file end");
        let bytes = usize::try_from(s.file_offset)
            .ok()
            .zip(usize::try_from(file_end).ok())
            .and_then(|(a, b)| image.get(a..b));
        assert!(bytes.is_some(), "{s:?}: file bytes outside the image");
        assert!(!(s.writable && s.executable), "{s:?}: W+X");
        // The kernel's loader (`Space::load`) copies page by page: its arithmetic, run on the
        // pages that hold file bytes (the rest are only zeroed), stays inside the image.
        let mut page = s.vaddr;
        while page < s.end_page() && page - s.vaddr < s.file_size {
            let lo = page - s.vaddr;
            let hi = (lo + PAGE).min(s.file_size);
            let (a, b) = (s.file_offset + lo, s.file_offset + hi);
            assert!(
                a < b && b <= image.len() as u64,
                "{s:?}: page {page:#x} copies {a}..{b}"
            );
            page += PAGE;
        }
    }
    for w in segs.windows(2) {
        assert!(
            w[0].end_page() <= w[1].vaddr,
            "{w:?}: share a page or unsorted"
        );
    }
    assert!(
        segs.iter()
            .any(|s| s.executable && p.entry >= s.vaddr && p.entry - s.vaddr < s.mem_size),
        "entry {:#x} outside the executable segments",
        p.entry
    );
}

pub fn run(data: &[u8]) {
    let result = userelf::parse(data);
    let header = read_header(data);
    match &result {
        Ok(p) => {
            check_accepted(p, data);
            let h = header.expect("accepted, yet the reference cannot read the header");
            assert_eq!((h.machine, h.kind, h.entry), (62, 2, p.entry));
            if h.complete {
                // Differential: the accepted segments are the image's PT_LOAD entries.
                let mut loads: Vec<(u64, u64, u64, u64, bool, bool)> = h
                    .phdrs
                    .iter()
                    .filter(|ph| ph.kind == PT_LOAD)
                    .map(|ph| {
                        let (w, x) = (ph.flags & PF_W != 0, ph.flags & PF_X != 0);
                        (ph.vaddr, ph.memsz, ph.offset, ph.filesz, w, x)
                    })
                    .collect();
                loads.sort_unstable();
                let got: Vec<_> = p
                    .segments()
                    .iter()
                    .map(|s| {
                        let (w, x) = (s.writable, s.executable);
                        (s.vaddr, s.mem_size, s.file_offset, s.file_size, w, x)
                    })
                    .collect();
                assert_eq!(
                    got, loads,
                    "accepted segments differ from the PT_LOAD entries"
                );
                assert!(
                    reference_accepts(&h, data.len() as u64),
                    "the reference refuses"
                );
            }
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            if let Some(h) = header.filter(|h| h.complete) {
                assert!(
                    !reference_accepts(&h, data.len() as u64),
                    "refused ({e}) an image the reference loads"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// Every committed seed is a loadable image (else the fuzzer starts from refusals).
    #[test]
    fn every_seed_is_accepted() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/userelf");
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let image = std::fs::read(&p).unwrap();
            let prog = klib::userelf::parse(&image);
            assert!(prog.is_ok(), "{}: {prog:?}", p.display());
            super::run(&image);
        }
    }
}

#[cfg(test)]
mod reach {
    use std::collections::BTreeSet;

    use crate::targets::mutated;

    /// The mutated inputs reach acceptance and most of the refusals (the seed, not the
    /// harness, decides what a run explores): 20 000 inputs of seed 1.
    #[test]
    fn mutations_reach_acceptance_and_the_refusals() {
        let (mut ok, mut kinds, mut complete) = (0, BTreeSet::new(), 0);
        for input in mutated("userelf", 20_000) {
            super::run(&input);
            complete += usize::from(super::read_header(&input).is_some_and(|h| h.complete));
            match klib::userelf::parse(&input) {
                Ok(_) => ok += 1,
                Err(e) => {
                    kinds.insert(
                        format!("{e:?}")
                            .split(['(', ' '])
                            .next()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
        }
        eprintln!("accepted {ok}, complete headers {complete}, refusals {kinds:?}");
        assert!(ok > 1000, "{ok} accepted");
        assert!(kinds.len() >= 10, "{kinds:?}");
    }
}
