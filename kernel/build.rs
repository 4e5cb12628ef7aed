//! Links the kernel with the workspace linker script, as a static (non-PIE) executable:
//! the 32-bit boot stub uses absolute 32-bit relocations that a PIE cannot hold.
//!
//! Without the `ktest` feature the script's `.ktest` registry (the lines from the
//! `/* KTEST-BEGIN */` line to the `/* KTEST-END */` line) is left out, so that a product
//! kernel has no `.ktest` section; the script actually used is written to `OUT_DIR`.
//!
//! With the `bench` feature (also implied by `ktest`) it also builds the ring-3 programs (`user/programs`, release, for x86_64-unknown-none,
//! in their own target directory `target/user` so that the outer build's lock and flags
//! are not shared) and tells the kernel where they are (`USER_PROGRAMS_DIR`), for
//! `include_bytes!` in `kernel/src/proc/programs.rs`. The programs live in the user half
//! (0x4000_0000_0000 and up), beyond the reach of the kernel code model that the workspace
//! flags give the kernel: they are built position-independent with the small code model
//! and linked static at a fixed address by `user/programs/user.ld`.
use std::path::Path;
use std::process::Command;

/// The embedded programs (bins of `user/programs`).
const PROGRAMS: &[&str] = &[
    "hello", "yielder", "faulter", "abuser", "memory", "parent", "sva", "ims", "enq",
];

const BEGIN: &str = "/* KTEST-BEGIN */";
const END: &str = "/* KTEST-END */";

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&dir).join("../linker.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-none" {
        return;
    }
    let text =
        std::fs::read_to_string(&script).unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let text = if std::env::var_os("CARGO_FEATURE_KTEST").is_some() {
        text
    } else {
        without_ktest(&text).unwrap_or_else(|e| panic!("{}: {e}", script.display()))
    };
    // The programs are the kernel tests' and the workload runner's
    // (kernel/src/proc/programs.rs): the ktest and bench flavours embed them (ktest implies
    // bench), the product kernel none.
    if std::env::var_os("CARGO_FEATURE_BENCH").is_some() {
        build_user_programs(Path::new(&dir).join("..").as_path());
    }
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel.ld");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!("cargo:rustc-link-arg-bins=-T{}", out.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
}

fn build_user_programs(root: &Path) {
    for d in ["user/abi", "user/rt", "user/programs", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(d).display());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target/user");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["build", "-p", "user-programs", "--release"])
        .args(["--target", "x86_64-unknown-none", "--target-dir"])
        .arg(&target_dir)
        // The outer build's flags and wrappers (clippy's) are not the programs'.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_TARGET_DIR")
        .env(
            "RUSTFLAGS",
            "-C relocation-model=pic -C code-model=small -C force-frame-pointers=yes -C debuginfo=0 -C strip=debuginfo",
        );
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for the user programs: {e}"));
    assert!(
        status.success(),
        "building the user programs failed: cargo build -p user-programs --release --target x86_64-unknown-none"
    );
    let bin = target_dir.join("x86_64-unknown-none/release");
    for p in PROGRAMS {
        let f = bin.join(p);
        assert!(f.exists(), "user program {} was not built", f.display());
    }
    println!("cargo:rustc-env=USER_PROGRAMS_DIR={}", bin.display());
}

/// The script without the lines from [`BEGIN`] to [`END`] (both included).
fn without_ktest(text: &str) -> Result<String, &'static str> {
    let count = |m: &str| text.lines().filter(|l| l.trim() == m).count();
    if count(BEGIN) != 1 || count(END) != 1 {
        return Err("needs exactly one /* KTEST-BEGIN */ and one /* KTEST-END */ line");
    }
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.trim() == BEGIN {
            inside = true;
        } else if line.trim() == END {
            if !inside {
                return Err("KTEST-END before KTEST-BEGIN");
            }
            inside = false;
        } else if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    Ok(out)
}
