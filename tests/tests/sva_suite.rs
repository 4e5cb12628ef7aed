//! The hostile-process suite (`./qemu-run.sh --sva-suite`, kernel argument `sva.suite`):
//! 4 CPUs and one DSA; every implemented attack must print `"outcome":"refused"` and the
//! summary `ok` with no attack succeeded and one IMS vector per CPU.

use qemu_tests::{Boot, json_field as field};

/// The attacks the suite implements, in the order it runs them.
const ATTACKS: &[&str] = &[
    "handle-exhaustion",
    "privileged-instructions",
    "kernel-and-victim-addresses",
    "exit-with-handles",
    "pasid-loop",
];

#[test]
fn sva_suite_refuses_every_attack() {
    let r = Boot::kernel().smp(4).dsa(1).arg("sva.suite").run();
    let attacks = r.report.results_of_kind("sva-attack");
    let names: Vec<&str> = attacks.iter().filter_map(|j| field(j, "attack")).collect();
    assert_eq!(names, ATTACKS, "{attacks:#?}");
    for j in &attacks {
        assert_eq!(field(j, "outcome"), Some("refused"), "{j}");
    }
    let summary = r.report.results_of_kind("sva-suite-summary");
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
    r.expect_pass();
}
