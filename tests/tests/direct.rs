//! Submission from ring 3 (issue 10): the `direct::` kernel tests (IA32_PASID per process,
//! ENQCMD through a mapped portal, ENQCMD without a PASID and ENQCMDS killed, the policy),
//! the workload runner's ring-3 clients, and the `sva.direct` policy key.

use qemu_tests::{Boot, Flavour, json_field as field};

const DIRECT_TESTS: &[&str] = &[
    "direct::dsa_portal_is_refused_while_sva_direct_is_off",
    "direct::enqcmd_from_ring3_carries_each_process_pasid_on_one_cpu",
    "direct::enqcmd_without_a_pasid_is_killed_by_gp",
    "direct::enqcmds_from_ring3_is_killed_by_gp",
    "direct::ia32_pasid_is_written_only_when_it_changes",
    "direct::the_portal_is_one_uncached_user_page_of_the_portal_bar",
    "direct::a_dedicated_wq_runs_in_one_process_pasid_within_its_credits",
];

#[test]
fn ring3_submission_tests() {
    let r = Boot::kernel().smp(2).dsa(1).ktest("direct::").run();
    r.expect_pass();
    r.expect_tests_ok(DIRECT_TESTS);
    r.expect_serial("enq: 8 memmove(s) by ENQCMD on this process's PASID")
        .expect_serial("(enq) killed by #GP general protection: vector 13")
        .expect_serial("enq: 24 MOVDIR64B memmoves on a dedicated WQ of 8");
}

#[test]
fn workload_ring3_clients_report_their_submit_cost() {
    let case = "memmove:size=4k:mode=swq:batch=1:completion=poll:iters=32";
    let spec = format!("{case};{case}:client=process;{case}:client=direct");
    let run = |direct: &str| {
        let r = Boot::flavour(Flavour::Bench)
            .smp(1)
            .dsa(1)
            .arg(&format!("sva.direct={direct}"))
            .arg(&format!("workload={spec}"))
            .run();
        r.expect_pass();
        r.report
            .results_of_kind("dsa-workload")
            .into_iter()
            .cloned()
            .collect::<Vec<String>>()
    };
    let on = run("on");
    assert_eq!(on.len(), 3, "{on:#?}");
    for (j, client) in on.iter().zip(["kernel", "process", "direct"]) {
        assert_eq!(field(j, "client"), Some(client), "{j}");
        assert_eq!(field(j, "skipped"), None, "{j}");
        assert_eq!(field(j, "errors"), Some("0"), "{j}");
        assert_eq!(field(j, "ops"), Some("32"), "{j}");
        let cost: f64 = field(j, "submit_cost_per_desc").unwrap().parse().unwrap();
        assert!(cost > 0.0, "{j}");
    }
    // Policy off (the default): the direct client is skipped with the reason, the others run.
    let off = run("off");
    assert_eq!(off.len(), 3, "{off:#?}");
    assert_eq!(field(&off[1], "errors"), Some("0"), "{}", off[1]);
    let why = field(&off[2], "skipped").unwrap_or_else(|| panic!("{}", off[2]));
    assert!(why.contains("sva.direct=off"), "{why}");
}

#[test]
fn sva_direct_takes_only_on_or_off() {
    let r = Boot::kernel().smp(1).arg("sva.direct=yes").run();
    assert_eq!(r.status, Some(1), "{}", r.serial);
    assert!(!r.verdict().is_pass());
    r.expect_serial("sva.direct=yes: expected on|off");
}
