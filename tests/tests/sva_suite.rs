//! The hostile-process suite: `./qemu-run.sh --sva-suite` exactly as a user types it (the
//! script picks 4 CPUs, one DSA, the kernel argument `sva.suite` and the ktest flavour);
//! every implemented attack must print `"outcome":"refused"` and the summary `ok` with no
//! attack succeeded and one IMS vector per CPU.

use std::process::Command;

use qemu_tests::verdict;
use qemu_tests::{json_field as field, qemu_binary, workspace_root};

/// The attacks the suite implements, in the order it runs them.
const ATTACKS: &[&str] = &[
    "handle-exhaustion",
    "privileged-instructions",
    "victim-interrupt-handle",
    "kernel-and-victim-addresses",
    "interrupt-storm",
    "exit-with-handles",
    "unmap-while-writing",
    "pasid-loop",
];

#[test]
fn sva_suite_refuses_every_attack() {
    let mut cmd = Command::new(workspace_root().join("qemu-run.sh"));
    cmd.args(["--sva-suite", "--timeout", "600"])
        .current_dir(workspace_root())
        .env_remove("SMP")
        .env_remove("DSA")
        .env_remove("KARGS")
        .env_remove("KERNEL_FLAVOUR")
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS");
    if let Some(q) = qemu_binary() {
        cmd.env("QEMU", q);
    }
    let out = cmd.output().expect("run qemu-run.sh");
    let serial = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kernel flavour ktest"), "{stderr}");
    assert!(stderr.contains("-smp 4"), "{stderr}");
    let report = verdict::parse(&serial);
    let attacks = report.results_of_kind("sva-attack");
    let names: Vec<&str> = attacks.iter().filter_map(|j| field(j, "attack")).collect();
    assert_eq!(names, ATTACKS, "{attacks:#?}\n{serial}");
    for j in &attacks {
        assert_eq!(field(j, "outcome"), Some("refused"), "{j}");
    }
    // The storm's latencies are reported (TSC ticks), never judged: only present.
    let storm = attacks
        .iter()
        .find(|j| field(j, "attack") == Some("interrupt-storm"))
        .expect("interrupt-storm line");
    for f in ["victim_latency_tsc_quiet", "victim_latency_tsc_storm"] {
        assert!(
            field(storm, f).is_some_and(|v| v.parse::<u64>().is_ok()),
            "{f}: {storm}"
        );
    }
    let summary = report.results_of_kind("sva-suite-summary");
    assert_eq!(summary.len(), 1, "{summary:#?}");
    let s = summary[0];
    assert_eq!(field(s, "ok"), Some("true"), "{s}");
    assert_eq!(field(s, "succeeded"), Some("0"), "{s}");
    assert_eq!(field(s, "ims_vectors_per_cpu"), Some("1"), "{s}");
    assert_eq!(
        field(s, "attacks"),
        Some(ATTACKS.len().to_string().as_str()),
        "{s}"
    );
    assert!(serial.contains("kernel-exit: pass"), "{serial}");
    assert_eq!(out.status.code(), Some(0), "{stderr}\n{serial}");
}
