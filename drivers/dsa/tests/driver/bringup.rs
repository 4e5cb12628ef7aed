//! Bring-up: default configuration, accel-config files (valid and invalid), capability
//! validation, halted devices, two devices at once.

use crate::common::*;
use dsa::config::ConfigError;
use dsa::{AccelConfig, ConfigSource, DeviceOptions, DsaError, Output, Requester, Submitter, Work};
use dsa_model::pci;
use dsa_spec::regs::off;
use dsa_spec::tables::GRPCFG_ENTRY_SIZE;
use dsa_spec::{DeviceState, GenSts, GrpCfg, WqCfg, WqMode, WqState};
use std::sync::Arc;

fn model_wqcfg(rig: &Rig, wq: u64) -> WqCfg {
    let mut c = WqCfg::default();
    for i in 0..8 {
        c.0[i] = rig.model.bar0_read(0x800 + wq * 32 + 4 * i as u64, 4) as u32;
    }
    c
}

fn model_grpcfg(rig: &Rig, g: u64) -> GrpCfg {
    let mut q = [0u64; 8];
    for (i, v) in q.iter_mut().enumerate() {
        *v = rig
            .model
            .bar0_read(0x600 + g * GRPCFG_ENTRY_SIZE + 8 * i as u64, 8);
    }
    GrpCfg::from_qwords(&q)
}

#[test]
fn default_config_dedicated_and_shared() {
    let (rig, dev) = up(Exec::Deterministic);
    assert_eq!(
        GenSts(rig.model.bar0_read(off::GENSTS, 4) as u32).state(),
        DeviceState::Enabled
    );
    let w0 = model_wqcfg(&rig, 0);
    let w1 = model_wqcfg(&rig, 1);
    assert_eq!(
        (w0.mode(), w0.state(), w0.size()),
        (WqMode::Dedicated, WqState::Enabled, 32)
    );
    assert_eq!(
        (w1.mode(), w1.state(), w1.size()),
        (WqMode::Shared, WqState::Enabled, 32)
    );
    assert!(!w0.pasid_en() && w1.pasid_en());
    assert_eq!(model_wqcfg(&rig, 2).size(), 0);
    // Two groups, two engines each, one WQ each, TC-A = TC-B = 1.
    let g0 = model_grpcfg(&rig, 0);
    let g1 = model_grpcfg(&rig, 1);
    assert_eq!((g0.engines, g0.wqs[0]), (0b0011, 0b01));
    assert_eq!((g1.engines, g1.wqs[0]), (0b1100, 0b10));
    assert_eq!((g0.flags.tc_a(), g0.flags.tc_b()), (1, 1));
    assert_eq!(dev.wq(0).unwrap().mode(), WqMode::Dedicated);
    assert_eq!(dev.wq(1).unwrap().mode(), WqMode::Shared);
    assert_eq!(dev.caps().version.major(), 1);
    assert_eq!(dev.caps().max_transfer(), 1 << 31);
    // GENCTRL enables SWERR and halt interrupts.
    assert_eq!(rig.model.bar0_read(off::GENCTRL, 4), 0b11);
}

#[test]
fn default_without_pasid_is_dedicated_only() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, pci::BME);
    let dev = rig
        .driver(0, ConfigSource::Default, DeviceOptions::default())
        .unwrap();
    assert_eq!(dev.wqs().count(), 1);
    assert_eq!(dev.wq(0).unwrap().mode(), WqMode::Dedicated);
    let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
    assert_eq!(s.run(&Work::noop()).unwrap(), Output::Done);
}

#[test]
fn halted_device_is_refused() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    rig.inject(dsa_model::fault_inject::FI_FORCE_HALT, 0);
    let e = rig
        .driver(0, ConfigSource::Default, DeviceOptions::default())
        .unwrap_err();
    assert!(matches!(e, DsaError::Halted { .. }), "{e}");
    assert!(e.to_string().contains("halted"));
}

fn load(name: &str) -> String {
    let p = format!("{}/tests/driver/configs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(p).unwrap()
}

#[test]
fn accel_config_profiles_bring_up() {
    // Two shared WQs with thresholds, one engine each.
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(&load("app_profile.json")).unwrap();
    let dev = rig
        .driver(0, ConfigSource::AccelConfig(a), DeviceOptions::default())
        .unwrap();
    let (w0, w1) = (model_wqcfg(&rig, 0), model_wqcfg(&rig, 1));
    assert_eq!((w0.size(), w0.threshold(), w0.priority()), (8, 6, 10));
    assert_eq!((w1.size(), w1.threshold()), (32, 28));
    assert_eq!(w0.max_xfer_shift(), 14);
    assert_eq!(w0.max_batch_shift(), 5);
    assert_eq!(w1.state(), WqState::Enabled);
    assert_eq!(model_grpcfg(&rig, 0).engines, 1);
    assert_eq!(model_grpcfg(&rig, 1).engines, 2);
    // The 16 KiB transfer limit of wq0.0 is enforced before submission.
    let mut s = Submitter::new(&dev, 0, Requester::pasid(5, true), Default::default()).unwrap();
    let b = rig.plat.buf(dsa::AddressSpace::Pasid(5), 32768);
    assert!(matches!(
        s.run(&Work::memmove(b.at(0), b.at(16384), 16385)),
        Err(dsa::OpError::Invalid(dsa::ValidationError::TooLarge {
            max: 16384,
            ..
        }))
    ));
    assert!(s.run(&Work::memmove(b.at(0), b.at(16384), 16384)).is_ok());

    // Two dedicated WQs.
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(&load("storage_profile.json")).unwrap();
    let dev = rig
        .driver(0, ConfigSource::AccelConfig(a), DeviceOptions::default())
        .unwrap();
    assert_eq!(
        dev.wqs().filter(|w| w.mode() == WqMode::Dedicated).count(),
        2
    );

    // Traffic class -1 (default) and explicit values, block on fault.
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(&load("sample_tc_default.json")).unwrap();
    rig.driver(0, ConfigSource::AccelConfig(a), DeviceOptions::default())
        .unwrap();
    let g1 = model_grpcfg(&rig, 1);
    assert_eq!(
        (
            model_grpcfg(&rig, 0).flags.tc_a(),
            g1.flags.tc_a(),
            g1.flags.tc_b()
        ),
        (1, 2, 3)
    );
    assert!(model_wqcfg(&rig, 0).bof());

    // save-config output: read-only attributes and an IAA device are skipped.
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(&load("saved.json")).unwrap();
    assert_eq!(a.devices.len(), 1);
    let dev = rig
        .driver(0, ConfigSource::AccelConfig(a), DeviceOptions::default())
        .unwrap();
    let w = dev.wq(2).unwrap();
    assert_eq!((w.size(), w.config.priority), (64, 15));
    assert_eq!(model_grpcfg(&rig, 0).wqs[0], 0b100);
    // A file that does not name this device index leaves it on the default layout.
    let rig2 = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(&load("saved.json")).unwrap();
    let dev2 = rig2
        .driver(1, ConfigSource::AccelConfig(a), DeviceOptions::default())
        .unwrap();
    assert_eq!(dev2.wqs().count(), 2);
}

/// Rejects `json` with an error whose text contains `want`, without touching the device.
fn reject(json: &str, pci_flags: u32, want: &str) -> ConfigError {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, pci_flags);
    // A marker the reset would clear.
    rig.model.bar0_write(0x800, 7, 4);
    let err = match AccelConfig::parse(json) {
        Err(e) => e,
        Ok(a) => match rig.driver(0, ConfigSource::AccelConfig(a), DeviceOptions::default()) {
            Err(DsaError::Config(e)) => e,
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("accepted: {json}"),
        },
    };
    assert!(err.to_string().contains(want), "{err} does not say {want}");
    assert_eq!(rig.model.bar0_read(0x800, 4), 7, "device was touched");
    err
}

fn one_group(wqs: &str, engines: &str) -> String {
    format!(
        r#"[{{"dev":"dsa0","groups":[{{"dev":"group0.0","grouped_workqueues":[{wqs}],"grouped_engines":[{engines}]}}]}}]"#
    )
}
const E0: &str = r#"{"dev":"engine0.0","group_id":0}"#;

#[test]
fn invalid_configs_rejected_with_reason() {
    let wq = |extra: &str| {
        format!(
            r#"{{"dev":"wq0.0","mode":"dedicated","size":16,"group_id":0,"priority":1{extra}}}"#
        )
    };
    // Sizes over the total (128).
    let two = format!(
        "{},{}",
        wq(""),
        r#"{"dev":"wq0.1","mode":"dedicated","size":120,"group_id":0,"priority":1}"#
    );
    let e = reject(&one_group(&two, E0), ALL_PCI, "add up to 136");
    assert_eq!(
        e,
        ConfigError::WqSizesOverTotal {
            sum: 136,
            total: 128
        }
    );
    // An engine in two groups.
    let j = r#"[{"dev":"dsa0","groups":[
        {"dev":"group0.0","grouped_workqueues":[{"dev":"wq0.0","mode":"dedicated","size":8}],
         "grouped_engines":[{"dev":"engine0.1","group_id":0}]},
        {"dev":"group0.1","grouped_engines":[{"dev":"engine0.1","group_id":1}]}]}]"#;
    assert_eq!(
        reject(j, ALL_PCI, "engine 1 is in two groups"),
        ConfigError::EngineInTwoGroups { engine: 1 }
    );
    // A WQ in two groups.
    let j = r#"[{"dev":"dsa0","groups":[
        {"dev":"group0.0","grouped_workqueues":[{"dev":"wq0.0","mode":"dedicated","size":8}],
         "grouped_engines":[{"dev":"engine0.0","group_id":0}]},
        {"dev":"group0.1","grouped_workqueues":[{"dev":"wq0.0","mode":"dedicated","size":8}],
         "grouped_engines":[{"dev":"engine0.1","group_id":1}]}]}]"#;
    reject(j, ALL_PCI, "wq 0 is in two groups");
    // A shared WQ while PCI PASID is off.
    let sh = r#"{"dev":"wq0.0","mode":"shared","size":8}"#;
    assert_eq!(
        reject(&one_group(sh, E0), pci::BME, "needs PASID"),
        ConfigError::SharedWqWithoutPasid { wq: 0 }
    );
    // Unknown field, bad value, bad names, wrong group id.
    reject(
        &one_group(&wq(r#","szie":4"#), E0),
        ALL_PCI,
        "unknown field \"szie\"",
    );
    reject(
        &one_group(&wq("").replace("dedicated", "exclusive"), E0),
        ALL_PCI,
        "\"dedicated\" or \"shared\"",
    );
    reject(
        &one_group(&wq("").replace("wq0.0", "wq1.0"), E0),
        ALL_PCI,
        "another device",
    );
    reject(
        &one_group(&wq(r#","group_id":1"#).replace(r#""group_id":0,"#, ""), E0),
        ALL_PCI,
        "does not match its group",
    );
    // A group with WQs and no engine; a WQ past the device's count.
    reject(&one_group(&wq(""), ""), ALL_PCI, "has WQs but no engine");
    reject(
        &one_group(&wq("").replace("wq0.0", "wq0.9"), E0),
        ALL_PCI,
        "wq 9 does not exist",
    );
    // Priority 0, transfer size over the device maximum, batch size 0, threshold on a
    // dedicated WQ, threshold over size, PRS disable (not offered by the device).
    reject(
        &one_group(&wq("").replace(r#""priority":1"#, r#""priority":0"#), E0),
        ALL_PCI,
        "priority 0",
    );
    reject(
        &one_group(&wq(r#","max_transfer_size":4294967296"#), E0),
        ALL_PCI,
        "out of range",
    );
    reject(
        &one_group(&wq(r#","max_batch_size":0"#), E0),
        ALL_PCI,
        "max batch size 0",
    );
    reject(
        &one_group(&wq(r#","threshold":4"#), E0),
        ALL_PCI,
        "shared WQs only",
    );
    reject(
        &one_group(
            r#"{"dev":"wq0.0","mode":"shared","size":8,"threshold":9}"#,
            E0,
        ),
        ALL_PCI,
        "threshold 9 over size 8",
    );
    reject(
        &one_group(&wq(r#","prs_disable":1"#), E0),
        ALL_PCI,
        "PRS disable not supported",
    );
    reject(
        &one_group(&wq(r#","op_config":"0,0,0,0,0,0,0,8""#), E0),
        ALL_PCI,
        "op_config",
    );
    // Syntax errors and non-DSA names.
    reject(
        "[{\"dev\":\"dsa0\",}]",
        ALL_PCI,
        "JSON syntax error at line 1 column 16: trailing comma",
    );
    reject(r#"[{"dev":"dma0"}]"#, ALL_PCI, "not a DSA device name");
    reject(r#"[{"dev":"dsa0","groups":[]}]"#, ALL_PCI, "no work queue");
}

#[test]
fn upstream_user_default_profile_is_rejected() {
    // Shape of idxd-config's user_default_profile (meant for `config-user-default`, which
    // picks engines itself): no engines, prs_disable = 1 (this device offers no PRS
    // disable), and an IAA entry that is skipped.
    let j = r#"[{"dev":"dsa0","groups":[{"dev":"group0.0","grouped_workqueues":[
        {"dev":"wq0.0","mode":"shared","group_id":0,"priority":10,"block_on_fault":1,
         "name":"user_default_wq","ats_disable":0,"prs_disable":1}]}]},
        {"dev":"iax1","groups":[]}]"#;
    // Parsed fine; the missing size defaults to total/num_wqs = 16.
    let a = AccelConfig::parse(j).unwrap();
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let cfg = a.resolve(
        0,
        &dsa::Capabilities::read(&*rig.hardware().regs, 9).unwrap(),
    );
    assert_eq!(cfg.unwrap().unwrap().wqs[0].size, 16);
    reject(j, ALL_PCI, "group 0 has WQs but no engine");
    let with_engine = j.replace(
        r#""prs_disable":1}]"#,
        r#""prs_disable":1}],"grouped_engines":[{"dev":"engine0.0"}]"#,
    );
    reject(&with_engine, ALL_PCI, "PRS disable not supported");
}

/// BAR0 wrapper that lies about one register, to check capability validation.
struct Lying {
    inner: Arc<dyn dsa::Registers>,
    off: u64,
    value: u64,
}
impl dsa::Registers for Lying {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read32(&self, o: u64) -> u32 {
        if o == self.off {
            self.value as u32
        } else {
            self.inner.read32(o)
        }
    }
    fn read64(&self, o: u64) -> u64 {
        if o == self.off {
            self.value
        } else {
            self.inner.read64(o)
        }
    }
    fn write32(&self, o: u64, v: u32) {
        self.inner.write32(o, v);
    }
    fn write64(&self, o: u64, v: u64) {
        self.inner.write64(o, v);
    }
}

#[test]
fn capabilities_are_validated() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let try_with = |off: u64, value: u64| {
        let mut hw = rig.hardware();
        hw.regs = Arc::new(Lying {
            inner: hw.regs.clone(),
            off,
            value,
        });
        dsa::Device::new(hw, 0, ConfigSource::Default, DeviceOptions::default()).unwrap_err()
    };
    // WQCFG table pushed past the end of BAR0.
    let offs = rig.model.bar0_read(off::OFFSETS, 8);
    let bad = (offs & !0xFFFF_0000) | (0xFFFF << 16);
    assert!(matches!(
        try_with(off::OFFSETS, bad),
        DsaError::BadTableOffset { table: "WQCFG", .. }
    ));
    // GRPCFG overlapping WQCFG.
    let bad = (offs & !0xFFFF) | 0x8;
    assert!(matches!(
        try_with(off::OFFSETS, bad),
        DsaError::TablesOverlap { .. }
    ));
    // A table inside the fixed registers.
    let bad = offs & !0xFFFF;
    assert!(matches!(
        try_with(off::OFFSETS, bad),
        DsaError::BadTableOffset {
            table: "GRPCFG",
            ..
        }
    ));
    // Zero WQs / engines, unknown major version.
    let wqcap = rig.model.bar0_read(off::WQCAP, 8);
    assert!(matches!(
        try_with(off::WQCAP, wqcap & !0xFF_0000),
        DsaError::BadCount { what: "WQs", .. }
    ));
    assert!(matches!(
        try_with(off::ENGCAP, 0),
        DsaError::BadCount {
            what: "engines",
            ..
        }
    ));
    assert!(matches!(
        try_with(off::VERSION, 0x300),
        DsaError::UnsupportedVersion(0x300)
    ));
    // A version-2 device is driven through the same register model.
    let mut hw = rig.hardware();
    hw.regs = Arc::new(Lying {
        inner: hw.regs.clone(),
        off: off::VERSION,
        value: 0x200,
    });
    assert!(dsa::Device::new(hw, 0, ConfigSource::Default, DeviceOptions::default()).is_ok());
}

#[test]
fn two_devices_at_once() {
    let (r1, d1) = up(Exec::Threaded);
    let (r2, d2) = up(Exec::Threaded);
    let t: Vec<_> = [
        (r1.plat.clone(), d1.clone(), 1u32),
        (r2.plat.clone(), d2.clone(), 2),
    ]
    .into_iter()
    .map(|(plat, dev, seed)| {
        std::thread::spawn(move || {
            let mut s = Submitter::new(&dev, 0, Requester::kernel(), Default::default()).unwrap();
            let src = plat.buf(dsa::AddressSpace::NoPasid, 65536);
            let dst = plat.buf(dsa::AddressSpace::NoPasid, 65536);
            let data = pattern(65536, seed);
            src.write(0, &data);
            for k in 0..16 {
                let off = k * 4096;
                s.run(&Work::memmove(src.at(off), dst.at(off), 4096))
                    .unwrap();
            }
            assert_eq!(dst.all(), data);
            s.run(&Work::crc(src.at(0), 65536, 0)).unwrap()
        })
    })
    .collect();
    let outs: Vec<Output> = t.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        outs[0],
        Output::Crc(bench::reference::crc32c(
            0,
            &pattern(65536, 1),
            Default::default()
        ))
    );
    assert_eq!(
        outs[1],
        Output::Crc(bench::reference::crc32c(
            0,
            &pattern(65536, 2),
            Default::default()
        ))
    );
    assert_ne!(outs[0], outs[1]);
    assert_eq!(d1.index(), 0);
    drop((r1, r2));
}
