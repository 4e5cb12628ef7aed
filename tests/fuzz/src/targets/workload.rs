//! `workload=` specs: parsed, expanded into cases (bounded by the case cap), selections
//! resolved against device and CPU counts.

use bench::workload::{MAX_CASES, WorkloadSpec};

pub const DICT: &[&[u8]] = &[
    b":",
    b";",
    b",",
    b"=",
    b"-",
    b"k",
    b"m",
    b"g",
    b"0x",
    b"op=",
    b"size=",
    b"mode=dwq,swq",
    b"batch=",
    b"completion=poll,irq",
    b"cpus=",
    b"devices=all",
    b"depth=",
    b"iters=",
    b"align=",
    b"verify=off",
    b"client=pasid",
    b"memmove,fill,crc",
    b"difins",
    b"4096",
    b"1024",
    b"18446744073709551615",
    b"0-4095",
];

pub fn run(data: &[u8]) {
    let Ok(text) = core::str::from_utf8(data) else {
        return;
    };
    let specs = match WorkloadSpec::parse(text) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let total: u64 = specs.iter().map(WorkloadSpec::case_count).sum();
    assert!(total <= MAX_CASES);
    for w in &specs {
        let cases = w.cases();
        assert_eq!(cases.len() as u64, w.case_count());
        for n in [0u32, 1, 4, 4096] {
            let _ = w.cpus.resolve(n);
            let _ = w.devices.missing(n);
        }
        let _ = (w.cpus.to_string(), w.devices.to_string());
    }
}
