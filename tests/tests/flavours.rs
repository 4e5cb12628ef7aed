//! Kernel flavours (`kernel/flavour.sh`, `kernel/src/flavour.rs`): the product kernel
//! carries no kernel tests, workload runner or benchmark, refuses to run them, and
//! `qemu-run.sh` builds the flavour a run needs.

use std::process::Command;

use qemu_tests::{Boot, Flavour, json_field, kernel_elf, qemu_binary, verdict, workspace_root};

/// Section names and symbol names of a 64-bit little-endian ELF file.
fn sections_and_symbols(elf: &[u8]) -> (Vec<String>, Vec<String>) {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not ELF64");
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    // (type, offset, size, link) of section i
    let sh = |i: usize| {
        let b = shoff + i * shentsize;
        (
            u32_at(b + 4),
            u64_at(b + 0x18),
            u64_at(b + 0x20),
            u32_at(b + 0x28),
        )
    };
    let cstr = |o: usize| {
        let end = elf[o..].iter().position(|&c| c == 0).unwrap() + o;
        String::from_utf8_lossy(&elf[o..end]).into_owned()
    };
    let names_off = sh(shstrndx).1;
    let mut sections = Vec::new();
    let mut symbols = Vec::new();
    for i in 0..shnum {
        let name = u32_at(shoff + i * shentsize);
        sections.push(cstr(names_off + name));
        let (kind, off, size, link) = sh(i);
        if kind == 2 {
            // SHT_SYMTAB: 24-byte entries, names in the linked string table.
            let strtab = sh(link).1;
            for e in (off..off + size).step_by(24) {
                let n = u32_at(e);
                if n != 0 {
                    symbols.push(cstr(strtab + n));
                }
            }
        }
    }
    (sections, symbols)
}

/// Whether a mangled Rust symbol (legacy or v0: both write each path segment as
/// <length><name>) lies under the module path `segments`.
fn under(sym: &str, segments: &[&str]) -> bool {
    let path: String = segments.iter().map(|s| format!("{}{s}", s.len())).collect();
    sym.contains(&path)
}

/// What must not be in a product kernel, as module paths (the first segment is the crate).
const TEST_AND_BENCH_CODE: &[&[&str]] = &[
    &["kernel", "ktest"],
    &["kernel", "ktests"],
    &["kernel", "workload"],
    &["kernel", "ims", "bench"],
];

#[test]
fn product_kernel_has_no_test_benchmark_or_workload_code() {
    let product = std::fs::read(kernel_elf(Flavour::Product)).unwrap();
    let ktest = std::fs::read(kernel_elf(Flavour::Ktest)).unwrap();
    let (p_sections, p_symbols) = sections_and_symbols(&product);
    let (k_sections, k_symbols) = sections_and_symbols(&ktest);
    // The ktest flavour has them all (so the checks below look for names that exist).
    assert!(k_sections.iter().any(|s| s == ".ktest"), "{k_sections:?}");
    assert!(k_symbols.iter().any(|s| s == "__ktest_start"));
    for path in TEST_AND_BENCH_CODE {
        assert!(
            k_symbols.iter().any(|s| under(s, path)),
            "no symbol of {path:?} in the ktest kernel"
        );
    }
    assert!(k_symbols.iter().any(|s| under(s, &["bench", "reference"])));
    // The product kernel has none of it.
    assert!(
        !p_sections.iter().any(|s| s.starts_with(".ktest")),
        "{p_sections:?}"
    );
    assert!(!p_symbols.iter().any(|s| s.contains("__ktest")));
    for path in TEST_AND_BENCH_CODE {
        let found: Vec<&String> = p_symbols.iter().filter(|s| under(s, path)).collect();
        assert!(
            found.is_empty(),
            "{path:?} in the product kernel: {found:?}"
        );
    }
    let bench: Vec<&String> = p_symbols
        .iter()
        .filter(|s| s.starts_with("_ZN5bench") || s.contains("_5bench"))
        .collect();
    assert!(
        bench.is_empty(),
        "the bench crate in the product kernel: {bench:?}"
    );
    assert!(
        p_symbols.iter().any(|s| s == "kernel_main64"),
        "symbols missing"
    );
    // The kernel tests' ring-3 programs are data, not kernel symbols: look for their text.
    let contains = |image: &[u8], needle: &[u8]| image.windows(needle.len()).any(|w| w == needle);
    for program in [
        &b"faulter: case "[..],
        b"abuser: case ",
        b"enq: dsa_portal: ",
    ] {
        assert!(
            contains(&ktest, program),
            "ktest kernel lacks its test programs"
        );
        assert!(
            !contains(&product, program),
            "a test program ({}) in the product kernel",
            String::from_utf8_lossy(program)
        );
    }
}

#[test]
fn product_kernel_refuses_what_it_was_built_without() {
    for (args, part) in [
        ("ktest", "built without the kernel tests"),
        ("ktest.list", "built without the kernel tests"),
        ("workload=memmove", "built without the DSA workload runner"),
        ("workload=none ims.bench", "built without the IMS benchmark"),
        ("sva.suite", "built without the hostile-process suite"),
    ] {
        let r = Boot::flavour(Flavour::Product).smp(1).arg(args).run();
        assert_eq!(r.status, Some(1), "{args}: {}", r.serial);
        r.expect_serial(part)
            .expect_serial("this is the product kernel");
        assert!(!r.verdict().is_pass());
    }
    // What it has: the main job without a workload.
    let r = Boot::kernel().smp(1).arg("workload=none").run();
    assert_eq!(r.config.kernel_flavour(), Some(Flavour::Product));
    r.expect_pass();
    let boot = r.report.results_of_kind("boot");
    assert_eq!(json_field(boot[0], "flavour"), Some("product"), "{boot:?}");
}

/// `./qemu-run.sh` (no --kernel) builds the flavour the run needs.
#[test]
fn qemu_run_builds_the_flavour_the_run_needs() {
    for (args, flavour) in [
        (&["--workload", "none"][..], "product"),
        (&["--ktest=breakpoint"][..], "ktest"),
        (&[][..], "bench"),
    ] {
        let mut cmd = Command::new(workspace_root().join("qemu-run.sh"));
        cmd.args(["--smp", "1", "--dsa", "0", "--timeout", "120"])
            .args(args)
            .current_dir(workspace_root())
            .env_remove("CARGO_MAKEFLAGS")
            .env_remove("MAKEFLAGS");
        if let Some(q) = qemu_binary() {
            cmd.env("QEMU", q);
        }
        let out = cmd.output().expect("run qemu-run.sh");
        let serial = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}\n{serial}");
        assert!(
            stderr.contains(&format!("kernel flavour {flavour}")),
            "{args:?}: {stderr}"
        );
        let elf = format!("/kernel-{flavour}");
        assert!(
            stderr.split_whitespace().any(|t| t.ends_with(&elf)),
            "{args:?} boots kernel-{flavour}: {stderr}"
        );
        let report = verdict::parse(&serial);
        if flavour != "ktest" {
            let boot = report.results_of_kind("boot");
            assert_eq!(json_field(boot[0], "flavour"), Some(flavour), "{boot:?}");
        }
    }
}
