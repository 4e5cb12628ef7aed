//! Memmove throughput through the model (prints numbers; asserts only correctness).
//!
//! `cargo run --release -p dsa-model --example throughput`

use dsa_model::{Config, Device, DmaSpace, Platform, StoreKind, pci};
use dsa_rig::sim::SimPlatform;
use dsa_spec::portal::{PortalKind, portal_offset};
use dsa_spec::regs::off;
use dsa_spec::{CmdReg, Command, DescFlags, Descriptor, GrpCfg, Opcode, WqCfg, WqMode};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Flat guest memory at address 0 (one lock; the copy itself dominates).
struct Flat(Mutex<Vec<u8>>);

impl Platform for Flat {
    fn dma_read(&self, _: DmaSpace, addr: u64, buf: &mut [u8]) -> usize {
        let m = self.0.lock().unwrap();
        let Some(src) = m.get(addr as usize..).and_then(|s| s.get(..buf.len())) else {
            return 0;
        };
        buf.copy_from_slice(src);
        buf.len()
    }
    fn dma_write(&self, _: DmaSpace, addr: u64, buf: &[u8]) -> usize {
        let mut m = self.0.lock().unwrap();
        let Some(dst) = m
            .get_mut(addr as usize..)
            .and_then(|s| s.get_mut(..buf.len()))
        else {
            return 0;
        };
        dst.copy_from_slice(buf);
        buf.len()
    }
    fn msix_notify(&self, _: u32) {}
    fn send_msi(&self, _: u64, _: u32) {}
}

const MIB: u64 = 1 << 20;

fn setup(dev: &Device, wqs: u32) {
    dev.set_pci_state(pci::BME);
    for w in 0..wqs {
        let g = GrpCfg {
            wqs: [1 << w, 0, 0, 0],
            engines: 1 << w,
            ..Default::default()
        };
        for (i, q) in g.to_qwords().iter().enumerate().take(6) {
            dev.bar0_write(0x600 + u64::from(w) * 0x40 + i as u64 * 8, *q, 8);
        }
        // 64 outstanding descriptors at most (see bench), so each WQ holds them all.
        let c = WqCfg::default()
            .with_size((128 / wqs).min(64) as u16)
            .with_mode(WqMode::Dedicated)
            .with_priority(1)
            .with_max_xfer_shift(31)
            .with_max_batch_shift(10);
        for (i, dw) in c.0.iter().enumerate() {
            dev.bar0_write(0x800 + u64::from(w) * 32 + i as u64 * 4, u64::from(*dw), 4);
        }
    }
    dev.bar0_write(
        off::CMD,
        u64::from(CmdReg::new(Command::EnableDevice, 0, false).0),
        4,
    );
    for w in 0..wqs {
        dev.bar0_write(
            off::CMD,
            u64::from(CmdReg::new(Command::EnableWq, w, false).0),
            4,
        );
    }
    assert_eq!(dev.bar0_read(off::CMDSTATUS, 4), 0);
}

/// Runs `count` memmoves of `size` bytes spread over `wqs` WQs with one worker per WQ.
fn bench(
    p: Arc<dyn Platform>,
    read_cr: &dyn Fn(u64) -> u8,
    wqs: u32,
    size: u64,
    count: u64,
) -> f64 {
    let dev = Arc::new(Device::new(Config::default(), p).unwrap());
    setup(&dev, wqs);
    let workers: Vec<_> = (0..wqs)
        .map(|i| {
            let d = dev.clone();
            std::thread::spawn(move || d.worker_run(i))
        })
        .collect();
    let src = 64 * MIB;
    let dst = 256 * MIB;
    let t = Instant::now();
    let mut submitted = 0u64;
    while submitted < count {
        let w = (submitted % u64::from(wqs)) as u32;
        let slot = submitted % 64;
        let mut d = Descriptor::new(Opcode::MemMove);
        d.flags = DescFlags::CRAV | DescFlags::RCR;
        d.completion_addr = slot * 32;
        d.addr1 = src + (submitted * size) % (128 * MIB);
        d.addr2 = dst + (submitted * size) % (128 * MIB);
        d.size = size as u32;
        // Flow control like a driver: at most 64 outstanding (one CR slot each), never more
        // than a WQ holds (a full dedicated WQ drops the descriptor).
        if submitted >= 64 {
            while read_cr((submitted - 64) % 64 * 32) == 0 {
                std::hint::spin_loop();
            }
        }
        dev.portal_submit(
            portal_offset(w, PortalKind::UnlimitedMsix),
            &d.to_bytes(),
            StoreKind::Posted,
        );
        submitted += 1;
    }
    while dev.busy() {
        std::hint::spin_loop();
    }
    let secs = t.elapsed().as_secs_f64();
    dev.stop();
    for w in workers {
        w.join().unwrap();
    }
    (size * count) as f64 / secs / 1e9
}

fn main() {
    let flat = Arc::new(Flat(Mutex::new(vec![0u8; (384 * MIB) as usize])));
    let f2 = flat.clone();
    let read_cr = move |a: u64| -> u8 {
        let mut m = f2.0.lock().unwrap();
        let v = m[a as usize];
        if v != 0 {
            m[a as usize] = 0;
        }
        v
    };
    for (wqs, size, count) in [
        (1u32, 64 * MIB, 16u64),
        (4, 64 * MIB, 32),
        (1, 4096, 100_000),
        (4, 4096, 100_000),
    ] {
        let gbs = bench(flat.clone(), &read_cr, wqs, size, count);
        println!(
            "flat memory: memmove {size:>8} B x {count:>6} over {wqs} engine(s): {gbs:6.2} GB/s"
        );
    }
    let sim = Arc::new(SimPlatform::new());
    sim.map(None, 0, 384 * MIB);
    let s2 = sim.clone();
    let read_cr = move |a: u64| -> u8 {
        let v = s2.read(None, a, 1).map(|b| b[0]).unwrap_or(0);
        if v != 0 {
            s2.write(None, a, &[0]);
        }
        v
    };
    let gbs = bench(sim.clone(), &read_cr, 1, 64 * MIB, 8);
    println!("SimPlatform (4 KiB pages): memmove 64 MiB x 8 over 1 engine: {gbs:6.2} GB/s");
    // Correctness of the last batch of copies: destination equals source.
    let a = sim.read(None, 64 * MIB, 4096).unwrap();
    let b = sim.read(None, 256 * MIB, 4096).unwrap();
    assert_eq!(a, b);
}
