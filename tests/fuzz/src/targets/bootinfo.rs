//! The boot-information parsers (PVH `hvm_start_info`, Multiboot2) over fake physical
//! memory holding the input, then the memory map they produce, normalised.

use boot::info::{MB2_BOOTLOADER_MAGIC, PVH_START_MAGIC};
use boot::{BootInfo, PhysMemory};

/// The input, placed at [`BASE`].
struct Fake<'a>(&'a [u8]);

const BASE: u64 = 0x10_0000;

impl PhysMemory for Fake<'_> {
    fn read(&self, addr: u64, len: usize) -> Option<&[u8]> {
        let off = usize::try_from(addr.checked_sub(BASE)?).ok()?;
        self.0.get(off..off.checked_add(len)?)
    }
}

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut m = rest.to_vec();
    let pvh = flags & 1 == 0;
    if pvh && flags & 2 != 0 && m.len() >= 56 {
        // Keep the PVH magic and point cmdline and memmap inside the input.
        m[..4].copy_from_slice(&PVH_START_MAGIC.to_le_bytes());
        let n = m.len() as u64;
        for off in [24usize, 40] {
            let v = u64::from_le_bytes(m[off..off + 8].try_into().unwrap_or([0; 8]));
            if !(BASE..BASE + n).contains(&v) {
                m[off..off + 8].copy_from_slice(&(BASE + v % n).to_le_bytes());
            }
        }
    }
    if !pvh && flags & 2 != 0 && m.len() >= 8 {
        // Multiboot2: the total size field matches the input.
        let n = m.len() as u32;
        m[..4].copy_from_slice(&n.to_le_bytes());
    }
    let magic = if pvh { 0 } else { MB2_BOOTLOADER_MAGIC };
    let mut bi = Box::new(BootInfo::new());
    let r = boot::parse(magic, BASE, &Fake(&m), &mut bi);
    let _ = bi.cmdline();
    let _ = bi.cmdline_utf8_error();
    let _ = bi.bootloader();
    if r.is_ok() {
        let mut map = bi.memmap.clone();
        map.normalize();
        super::memmap::check_normalized(&map);
        let mut n = 0;
        map.for_each_free_range(&[(0, 0x10_0000), (BASE, BASE + m.len() as u64)], |s, e| {
            assert!(s < e && s % 4096 == 0 && e % 4096 == 0);
            n += 1;
        });
    }
}
