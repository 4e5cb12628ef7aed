//! Test harness: a device on a simulated guest, with helpers that do what a driver does.

use dsa_model::{Config, Device, PortalResult, StoreKind, pci};
use dsa_rig::sim::{SimIrq, SimPlatform};
use dsa_spec::portal::{PortalKind, portal_offset};
use dsa_spec::regs::off;
use dsa_spec::tables::{GRPCFG_ENTRY_SIZE, WqMode};
use dsa_spec::{
    CmdReg, CmdStatus, Command, CompletionRecord, Descriptor, GrpCfg, Offsets, SwErr, WqCfg,
};
use std::sync::Arc;

pub const CR: u64 = 0x10_0000;
pub const SRC: u64 = 0x20_0000;
pub const DST: u64 = 0x40_0000;
pub const AUX: u64 = 0x60_0000;
pub const LIST: u64 = 0x80_0000;
pub const PASID: u32 = 0x42;

pub struct H {
    pub dev: Arc<Device>,
    pub sim: Arc<SimPlatform>,
}

#[derive(Clone, Copy)]
pub struct WqSpec {
    pub wq: u32,
    pub mode: WqMode,
    pub size: u16,
    pub prio: u8,
    pub pasid_en: bool,
    pub pasid: u32,
    pub privileged: bool,
    pub bof: bool,
    pub threshold: u16,
    pub group: u32,
}

impl WqSpec {
    pub fn dedicated(wq: u32, size: u16) -> Self {
        WqSpec {
            wq,
            mode: WqMode::Dedicated,
            size,
            prio: 1,
            pasid_en: false,
            pasid: 0,
            privileged: false,
            bof: false,
            threshold: 0,
            group: 0,
        }
    }
    pub fn shared(wq: u32, size: u16) -> Self {
        WqSpec {
            mode: WqMode::Shared,
            pasid_en: true,
            threshold: size,
            ..Self::dedicated(wq, size)
        }
    }
    pub fn cfg(&self) -> WqCfg {
        WqCfg::default()
            .with_size(self.size)
            .with_threshold(self.threshold)
            .with_mode(self.mode)
            .with_priority(self.prio)
            .with_pasid(self.pasid, self.pasid_en)
            .with_priv(self.privileged)
            .with_bof(self.bof)
            .with_max_xfer_shift(31)
            .with_max_batch_shift(10)
    }
}

impl H {
    pub fn new(cfg: Config) -> Self {
        let sim = Arc::new(SimPlatform::new());
        let dev = Arc::new(Device::new(cfg, sim.clone()).expect("valid config"));
        for space in [None, Some(PASID)] {
            for base in [CR, SRC, DST, AUX, LIST] {
                sim.map(space, base, 0x10_0000);
            }
        }
        H { dev, sim }
    }

    pub fn default() -> Self {
        Self::new(Config::default())
    }

    pub fn r32(&self, o: u64) -> u32 {
        self.dev.bar0_read(o, 4) as u32
    }
    pub fn r64(&self, o: u64) -> u64 {
        self.dev.bar0_read(o, 8)
    }
    pub fn w32(&self, o: u64, v: u32) {
        self.dev.bar0_write(o, u64::from(v), 4);
    }
    pub fn w64(&self, o: u64, v: u64) {
        self.dev.bar0_write(o, v, 8);
    }

    pub fn offsets(&self) -> Offsets {
        Offsets([self.r64(off::OFFSETS), self.r64(off::OFFSETS + 8)])
    }

    pub fn wqcfg_off(&self, wq: u32) -> u64 {
        self.offsets().wqcfg() + u64::from(wq) * 32
    }

    pub fn write_wqcfg(&self, wq: u32, c: WqCfg) {
        let base = self.wqcfg_off(wq);
        for (i, dw) in c.0.iter().enumerate() {
            self.w32(base + i as u64 * 4, *dw);
        }
    }

    pub fn read_wqcfg(&self, wq: u32) -> WqCfg {
        let base = self.wqcfg_off(wq);
        let mut c = WqCfg::default();
        for i in 0..8 {
            c.0[i] = self.r32(base + i as u64 * 4);
        }
        c
    }

    pub fn write_grpcfg(&self, g: u32, c: &GrpCfg) {
        let base = self.offsets().grpcfg() + u64::from(g) * GRPCFG_ENTRY_SIZE;
        for (i, q) in c.to_qwords().iter().enumerate().take(6) {
            self.w64(base + i as u64 * 8, *q);
        }
    }

    pub fn read_grpcfg(&self, g: u32) -> GrpCfg {
        let base = self.offsets().grpcfg() + u64::from(g) * GRPCFG_ENTRY_SIZE;
        let mut q = [0u64; 8];
        for (i, v) in q.iter_mut().enumerate() {
            *v = self.r64(base + i as u64 * 8);
        }
        GrpCfg::from_qwords(&q)
    }

    /// Issues a command without waiting; returns CMDSTATUS right after the write.
    pub fn cmd_nowait(&self, c: Command, operand: u32) -> CmdStatus {
        self.w32(off::CMD, CmdReg::new(c, operand, false).0);
        CmdStatus(self.r32(off::CMDSTATUS))
    }

    /// Issues a command, runs the engines until it finishes, returns its error code.
    pub fn cmd(&self, c: Command, operand: u32) -> u8 {
        let mut s = self.cmd_nowait(c, operand);
        for _ in 0..1000 {
            if !s.active() {
                break;
            }
            self.dev.run_until_idle();
            s = CmdStatus(self.r32(off::CMDSTATUS));
        }
        assert!(!s.active(), "command {c:?} still active");
        s.error()
    }

    pub fn pci_all(&self) {
        self.dev
            .set_pci_state(pci::BME | pci::PASID_ENABLE | pci::PASID_PRIV);
    }

    /// Configures the given WQs; group g gets engine g (and its WQs).
    pub fn configure(&self, wqs: &[WqSpec]) {
        let ngroups = self.dev.config().num_groups;
        for g in 0..ngroups {
            let mut gc = GrpCfg::default();
            for w in wqs.iter().filter(|w| w.group == g) {
                gc.wqs[(w.wq / 64) as usize] |= 1 << (w.wq % 64);
            }
            if wqs.iter().any(|w| w.group == g) {
                gc.engines = 1 << g;
            }
            self.write_grpcfg(g, &gc);
        }
        for w in wqs {
            self.write_wqcfg(w.wq, w.cfg());
        }
    }

    /// PCI on, configure, enable device and WQs; asserts success.
    pub fn up(&self, wqs: &[WqSpec]) {
        self.pci_all();
        self.configure(wqs);
        assert_eq!(self.cmd(Command::EnableDevice, 0), 0);
        for w in wqs {
            assert_eq!(self.cmd(Command::EnableWq, w.wq), 0, "enable wq {}", w.wq);
        }
    }

    pub fn submit(
        &self,
        wq: u32,
        kind: PortalKind,
        d: &Descriptor,
        store: StoreKind,
    ) -> PortalResult {
        self.dev
            .portal_submit(portal_offset(wq, kind), &d.to_bytes(), store)
    }

    /// MOVDIR64B to WQ `wq`'s limited MSI-X portal.
    pub fn movdir(&self, wq: u32, d: &Descriptor) {
        self.submit(wq, PortalKind::LimitedMsix, d, StoreKind::Posted);
    }

    pub fn enqcmd(&self, wq: u32, d: &Descriptor) -> PortalResult {
        self.submit(wq, PortalKind::UnlimitedMsix, d, StoreKind::DmWr)
    }

    pub fn cr_at(&self, space: Option<u32>, addr: u64) -> CompletionRecord {
        let b = self.sim.read(space, addr, 32).expect("CR mapped");
        CompletionRecord::from_bytes(b.as_slice().try_into().unwrap())
    }

    pub fn cr(&self) -> CompletionRecord {
        self.cr_at(None, CR)
    }

    pub fn put(&self, space: Option<u32>, addr: u64, data: &[u8]) {
        assert!(self.sim.write(space, addr, data));
    }

    pub fn get(&self, space: Option<u32>, addr: u64, len: usize) -> Vec<u8> {
        self.sim.read(space, addr, len).expect("mapped")
    }

    pub fn swerr(&self) -> SwErr {
        SwErr([
            self.r64(0xC0),
            self.r64(0xC8),
            self.r64(0xD0),
            self.r64(0xD8),
        ])
    }

    pub fn ack_swerr(&self) {
        let w = self.r64(0xC0);
        self.w64(0xC0, w & SwErr::ACK_MASK);
    }

    pub fn irqs(&self) -> Vec<SimIrq> {
        self.sim.take_irqs()
    }

    /// Runs one descriptor through WQ 0 (dedicated, no PASID) and returns its CR.
    pub fn run1(&self, d: &Descriptor) -> CompletionRecord {
        self.put(None, CR, &[0; 32]);
        self.movdir(0, d);
        self.dev.run_until_idle();
        self.cr()
    }
}

/// A descriptor with CRAV|RCR and the CR at `CR`.
pub fn desc(op: dsa_spec::Opcode) -> Descriptor {
    let mut d = Descriptor::new(op);
    d.flags = dsa_spec::DescFlags::CRAV | dsa_spec::DescFlags::RCR;
    d.completion_addr = CR;
    d
}

pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}
