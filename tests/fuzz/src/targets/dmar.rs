//! The DMAR parser, every structure and scope it yields, and the device-to-unit map the
//! kernel builds from it (with bridge bus numbers taken from the input).

use vtd::dmar::{BridgeBuses, RemappingStructure};
use vtd::{Bdf, DeviceUnitMap, Dmar};

use super::fix_table;

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut t = rest.to_vec();
    fix_table(&mut t, flags, 9);
    let Ok(d) = Dmar::parse(&t) else {
        return;
    };
    for s in d.structures() {
        match s {
            RemappingStructure::Drhd(h) => {
                let _ = h.register_size();
                for sc in h.scopes() {
                    let _ = sc.hops().count();
                    let _ = sc.resolve(|b, dv, f| Some(b ^ dv ^ f));
                }
            }
            RemappingStructure::Rmrr(r) => {
                assert!(r.base <= r.limit);
                let _ = r.scopes().count();
            }
            RemappingStructure::Atsr(x) => {
                let _ = x.scopes().count();
            }
            RemappingStructure::Satc(x) => {
                let _ = x.scopes().count();
            }
            _ => {}
        }
    }
    // Bridges: the input's last bytes give secondary/subordinate numbers per (bus, dev).
    let tail = rest.get(rest.len().saturating_sub(64)..).unwrap_or(&[]);
    let map = DeviceUnitMap::build(&d, |_seg, b, dv, f| {
        let i = (usize::from(b) * 31 + usize::from(dv) * 7 + usize::from(f)) % 64;
        let sec = *tail.get(i)?;
        let sub = *tail.get((i + 1) % 64)?;
        (sec != 0).then_some(BridgeBuses {
            secondary: sec,
            subordinate: sub,
        })
    });
    for u in &map.units {
        assert!(u.unit < map.units.len());
    }
    for bus in [0u8, 1, 2, 0x80, 0xff] {
        for dev in [0u8, 1, 3, 31] {
            if let Some(u) = map.unit_for(0, Bdf::new(bus, dev, 0)) {
                assert!(u < map.units.len());
            }
        }
    }
    for id in [0u8, 1, 2, 0xff] {
        let _ = map.ioapic_sid(id);
    }
}
