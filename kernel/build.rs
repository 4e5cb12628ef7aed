//! Links the kernel with the workspace linker script, as a static (non-PIE) executable:
//! the 32-bit boot stub uses absolute 32-bit relocations that a PIE cannot hold.
//!
//! Without the `ktest` feature the script's `.ktest` registry (the lines from the
//! `/* KTEST-BEGIN */` line to the `/* KTEST-END */` line) is left out, so that a product
//! kernel has no `.ktest` section; the script actually used is written to `OUT_DIR`.
use std::path::Path;

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
    let out = Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernel.ld");
    std::fs::write(&out, text).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    println!("cargo:rustc-link-arg-bins=-T{}", out.display());
    println!("cargo:rustc-link-arg-bins=--no-pie");
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
