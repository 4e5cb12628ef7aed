//! User dedicated WQs (accel-config `type` `user`): configured but disabled at bring-up,
//! never the kernel's, lent to one PASID at a time (WQCFG PASID, privilege 0, Enable WQ) and
//! taken back with Disable WQ.

use crate::common::*;
use dsa::{AccelConfig, ConfigSource};
use dsa_spec::{WqCfg, WqMode, WqState};

fn model_wqcfg(rig: &Rig, wq: u64) -> WqCfg {
    let mut c = WqCfg::default();
    for i in 0..8 {
        c.0[i] = rig.model.bar0_read(0x800 + wq * 32 + 4 * i as u64, 4) as u32;
    }
    c
}

const CONFIG: &str = r#"[{"dev":"dsa0","groups":[{"dev":"group0.0","grouped_workqueues":[
 {"dev":"wq0.0","mode":"dedicated","size":16,"group_id":0,"type":"kernel","name":"ded"},
 {"dev":"wq0.1","mode":"shared","size":16,"group_id":0,"type":"kernel","name":"sh"},
 {"dev":"wq0.2","mode":"dedicated","size":8,"group_id":0,"type":"user","name":"user"}],
 "grouped_engines":[{"dev":"engine0.0","group_id":0}]}]}]"#;

#[test]
fn user_wqs_are_lent_to_one_pasid_at_a_time() {
    let rig = Rig::new(model_cfg(), Exec::Deterministic, ALL_PCI);
    let a = AccelConfig::parse(CONFIG).unwrap();
    let dev = rig
        .driver(0, ConfigSource::AccelConfig(a), test_options())
        .expect("bring-up");
    let w = model_wqcfg(&rig, 2);
    assert_eq!(
        (w.size(), w.state()),
        (8, WqState::Disabled),
        "not enabled at bring-up"
    );
    assert!(dev.wq(2).unwrap().is_user_dedicated());
    assert!(
        dev.wq(2).unwrap().msix_entry.is_none(),
        "no kernel interrupt"
    );
    assert_eq!(dev.wq_of_mode(WqMode::Dedicated).map(|w| w.id()), Some(0));
    assert!(
        !dev.recover().unwrap(),
        "a disabled user WQ is not a lost WQ"
    );

    assert_eq!(dev.lend_wq(7).unwrap(), Some(2));
    let w = model_wqcfg(&rig, 2);
    assert_eq!(
        (w.state(), w.pasid_en(), w.pasid(), w.privileged()),
        (WqState::Enabled, true, 7, false)
    );
    assert_eq!(dev.wq(2).unwrap().lent_to(), Some(7));
    assert_eq!(dev.lend_wq(8).unwrap(), None, "one process at a time");
    assert!(
        dev.reclaim_wq(0).is_err(),
        "a kernel WQ is never taken back"
    );
    assert!(dev.lend_wq(1 << 20).is_err());

    dev.reclaim_wq(2).unwrap();
    assert_eq!(model_wqcfg(&rig, 2).state(), WqState::Disabled);
    assert_eq!(dev.wq(2).unwrap().lent_to(), None);
    assert!(dev.reclaim_wq(2).is_err(), "not lent any more");

    assert_eq!(dev.lend_wq(9).unwrap(), Some(2));
    assert_eq!(model_wqcfg(&rig, 2).pasid(), 9);
    dev.reclaim_wq(2).unwrap();
}
