//! VT-d capability registers and driver configuration from the input: the unit's
//! capability checks (`RemappingUnit::new`), then — for a unit that passes — bring-up on
//! the fake unit (`vtd::fake`: GSTS, invalidation queue, fault records emulated) and a
//! sequence of operations from the input (address spaces, map/unmap with any IOVA, address
//! and length, attach, hardware walks, IRTEs, injected fault records).

use vtd::fake::{FakeClock, FakeMem, FakeRegs};
use vtd::spec::SourceValidation;
use vtd::{Bdf, Config, Perm, RemappingUnit, RidDefault, SpaceKind};

use super::Bytes;

pub fn run(data: &[u8]) {
    let mut b = Bytes(data);
    let (cap, ecap) = (b.u64(), b.u64());
    let c = b.u8();
    let cfg = Config {
        pasid_bits: b.u8() % 24,
        // Up to 2^10 entries (16 KiB): every size up to the maximum takes the same paths,
        // and zeroing megabytes per input would make the target crawl.
        ir_table_order: b.u8() % 10,
        x2apic: c & 1 != 0,
        interrupt_remapping: c & 2 != 0,
        rid_default: if c & 4 != 0 {
            RidDefault::PassThrough
        } else {
            RidDefault::Blocked
        },
        large_pages: c & 8 != 0,
        // The fake clock advances 1 µs per read: short waits keep a stuck unit cheap.
        timeout_ns: 20_000,
    };
    let mem = FakeMem::new();
    let regs = FakeRegs::new(mem.clone(), cap, ecap);
    let Ok(mut u) = RemappingUnit::new(regs.clone(), mem, FakeClock::new(), cfg) else {
        return;
    };
    if u.init().is_err() {
        return;
    }
    let mut spaces = Vec::new();
    let mut irtes = Vec::new();
    for _ in 0..32 {
        if b.0.is_empty() {
            break;
        }
        let op = b.u8();
        let bdf = Bdf::new(b.u8(), b.u8() & 31, b.u8() & 7);
        match op % 12 {
            0 => {
                let kind = if op & 0x80 != 0 {
                    SpaceKind::PassThrough
                } else {
                    SpaceKind::Translated
                };
                let pasid = (op & 0x40 != 0).then(|| b.u32());
                if let Ok(id) = u.create_address_space(kind, pasid) {
                    spaces.push(id);
                }
            }
            1 | 2 => {
                if let Some(&id) = spaces.get(usize::from(b.u8()) % spaces.len().max(1)) {
                    let (iova, phys, len) = (b.u64(), b.u64(), b.u64() % (64 << 20));
                    let perm = if op & 0x80 != 0 { Perm::RO } else { Perm::RW };
                    let _ = u.map(id, iova, phys, len, perm);
                    let _ = u.translate(id, iova);
                }
            }
            3 => {
                if let Some(&id) = spaces.get(usize::from(b.u8()) % spaces.len().max(1)) {
                    // Lengths as large as map's: a sparse multi-terabyte unmap is correct
                    // but walks the fake memory for seconds.
                    let (iova, len) = (b.u64(), b.u64() % (256 << 20));
                    let _ = u.unmap(id, iova, len);
                }
            }
            4 => {
                let _ = u.prepare_device(bdf);
            }
            5 => {
                if let Some(&id) = spaces.get(usize::from(b.u8()) % spaces.len().max(1)) {
                    let _ = if op & 0x80 != 0 {
                        u.attach_rid_pasid(bdf, id)
                    } else {
                        u.attach(bdf, id)
                    };
                }
            }
            6 => {
                let pasid = (op & 0x80 != 0).then(|| b.u32());
                let _ = u.hardware_walk(bdf, pasid, b.u64(), op & 0x40 != 0);
            }
            7 => {
                let svt = match op >> 6 {
                    0 => SourceValidation::None,
                    1 => SourceValidation::RequesterId {
                        sid: b.u16(),
                        sq: b.u8(),
                    },
                    _ => SourceValidation::BusRange {
                        start: b.u8(),
                        end: b.u8(),
                    },
                };
                if let Ok(h) = u.alloc_irte(b.u32(), b.u8(), svt, b.u16()) {
                    let _ = u.msi_message(h);
                    irtes.push(h);
                }
            }
            8 => {
                if let Some(&h) = irtes.get(usize::from(b.u8()) % irtes.len().max(1)) {
                    let _ = u.retarget_irte(h, b.u32(), b.u8());
                    let _ = u.read_irte(b.u16());
                }
            }
            9 => {
                if !irtes.is_empty() {
                    let h = irtes.swap_remove(usize::from(b.u8()) % irtes.len());
                    let _ = u.free_irte(h);
                }
            }
            10 => {
                regs.inject_fault(b.u64(), b.u64());
                let _ = u.handle_faults();
            }
            _ => {
                if !spaces.is_empty() {
                    let id = spaces.swap_remove(usize::from(b.u8()) % spaces.len());
                    let _ = if op & 0x80 != 0 {
                        u.revoke(id)
                    } else {
                        u.destroy_address_space(id)
                    };
                }
            }
        }
    }
}
