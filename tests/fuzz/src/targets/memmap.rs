//! Memory-map entries as firmware gives them (start, length, E820 type), normalised and
//! clipped; the properties the kernel relies on are asserted.

use boot::memmap::{MemKind, MemoryMap, PHYS_ADDR_LIMIT};

use super::Bytes;

/// What `normalize` promises: sorted, disjoint, merged, non-empty, below the limit.
pub fn check_normalized(m: &MemoryMap) {
    let r = m.regions();
    for w in r.windows(2) {
        assert!(w[0].end <= w[1].start, "overlap or unsorted: {w:x?}");
        assert!(
            !(w[0].end == w[1].start && w[0].kind == w[1].kind),
            "not merged: {w:x?}"
        );
    }
    for x in r {
        assert!(x.start < x.end && x.end <= PHYS_ADDR_LIMIT, "{x:x?}");
    }
    assert!(m.ram_end() <= PHYS_ADDR_LIMIT);
}

pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let limit_bits = 32 + u32::from(b.u8() % 21); // 2^32 ..= 2^52
    let nexcl = usize::from(b.u8() % 8);
    // Exclusions come from the kernel (image, low memory, early tables): well-formed.
    let excl: Vec<(u64, u64)> = (0..nexcl)
        .map(|_| {
            let (x, y) = (b.u64(), b.u64());
            (x.min(y), x.max(y))
        })
        .collect();
    let mut m = MemoryMap::new();
    while !b.0.is_empty() {
        let (start, len, ty) = (b.u64(), b.u64(), b.u8());
        m.push(start, len, MemKind::from_e820(u32::from(ty % 8)));
    }
    // Unnormalised maps must not break the queries either.
    m.for_each_free_range(&excl, |s, e| assert!(s < e));
    let _ = m.total(MemKind::Usable);
    m.normalize();
    check_normalized(&m);
    m.clip(1 << limit_bits);
    check_normalized(&m);
    assert!(m.ram_end() <= 1 << limit_bits);
    let mut last = 0;
    m.for_each_free_range(&excl, |s, e| {
        assert!(s < e && s % 4096 == 0 && e % 4096 == 0 && s >= last);
        assert!(m.is_usable(s, e));
        for &(xs, xe) in &excl {
            assert!(
                e <= xs || s >= xe,
                "free range {s:#x}-{e:#x} overlaps {xs:#x}-{xe:#x}"
            );
        }
        last = e;
    });
    for x in m.regions() {
        assert_eq!(m.kind_at(x.start), Some(x.kind));
        let _ = x.to_string();
    }
}
