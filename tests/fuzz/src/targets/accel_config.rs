//! accel-config JSON: parsed, every device entry resolved against the DSA model's
//! capabilities and validated, as the kernel does before touching a device.

use dsa::hw::PciInfo;
use dsa::{AccelConfig, ConfigError};

pub const DICT: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"\\u00",
    b"\\ud800",
    b"null",
    b"true",
    b"1.5",
    b"-1",
    b"65536",
    b"9223372036854775808",
    b"\"dev\"",
    b"\"dsa0\"",
    b"\"dsa1\"",
    b"\"iax1\"",
    b"\"groups\"",
    b"\"group0.0\"",
    b"\"grouped_workqueues\"",
    b"\"grouped_engines\"",
    b"\"wq0.0\"",
    b"\"engine0.0\"",
    b"\"mode\"",
    b"\"shared\"",
    b"\"dedicated\"",
    b"\"size\"",
    b"\"group_id\"",
    b"\"priority\"",
    b"\"threshold\"",
    b"\"max_batch_size\"",
    b"\"max_transfer_size\"",
    b"\"op_config\"",
    b"\"token_limit\"",
    b"\"read_buffer_limit\"",
    b"\"traffic_class_a\"",
    b"\"name\"",
    b"\"type\"",
    b"\"kernel\"",
];

pub fn run(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let a = match AccelConfig::parse(text) {
        Ok(a) => a,
        Err(e) => {
            // Every rejection has a message.
            assert!(!e.to_string().is_empty());
            if let ConfigError::Syntax(s) = &e {
                assert!(s.line >= 1);
            }
            return;
        }
    };
    let caps = super::dsa_regs::reference_caps();
    let _ = a.unmatched(2);
    for d in &a.devices {
        let Some(r) = a.resolve(d.index, caps) else {
            panic!("dsa{} is listed but does not resolve", d.index);
        };
        let Ok(cfg) = r else {
            continue;
        };
        for pasid in [false, true] {
            let pci = PciInfo {
                bus_master: true,
                pasid_enabled: pasid,
                privileged_mode: pasid,
                msix_entries: 9,
            };
            if let Err(e) = cfg.validate(caps, &pci) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
}
