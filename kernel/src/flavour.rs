//! The kernel's flavour: which optional parts this build has (cargo features of the `kernel`
//! package; `kernel/flavour.sh` builds each one).
//!
//! | flavour | features | has |
//! |---|---|---|
//! | product | none | bring-up, drivers, the main job without a workload |
//! | bench | `bench` | + the DSA workload runner (`crate::workload`) and the IMS benchmark (`crate::ims::bench`) |
//! | ktest | `ktest` (implies `bench`) | + the kernel tests and their framework (`crate::ktest`, `crate::ktests`) |
//!
//! A command line that asks for a part this kernel lacks (`ktest`, `ktest.list`, `workload=`
//! other than `none`, `ims.bench…`) fails the run with a [`Missing`] error (exit status 1
//! under `qemu-run.sh`) instead of being ignored. The product kernel has no default workload.

use core::fmt;

/// This build's flavour name (also in the main job's `RESULT` boot line).
pub const fn name() -> &'static str {
    if cfg!(feature = "ktest") {
        "ktest"
    } else if cfg!(feature = "bench") {
        "bench"
    } else {
        "product"
    }
}

/// A command-line request for a part this kernel was built without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "ktest", allow(dead_code))] // the ktest flavour lacks no part
pub enum Missing {
    /// `ktest` / `ktest.list`: needs the `ktest` feature.
    #[cfg_attr(feature = "ktest", allow(dead_code))] // only a kernel without it lacks it
    KernelTests,
    /// `workload=<spec>`: needs the `bench` feature.
    #[cfg_attr(feature = "bench", allow(dead_code))] // only a kernel without it lacks it
    Workload,
    /// `ims.bench…`: needs the `bench` feature.
    #[cfg_attr(feature = "bench", allow(dead_code))] // only a kernel without it lacks it
    ImsBench,
    /// `sva.suite`: the hostile-process suite runs the ktest flavour's ring-3 programs.
    #[cfg_attr(feature = "ktest", allow(dead_code))] // only a kernel without it lacks it
    SvaSuite,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (asked, part, feature, script) = match self {
            Missing::KernelTests => ("ktest", "the kernel tests", "ktest", "--ktest"),
            Missing::Workload => (
                "workload=",
                "the DSA workload runner",
                "bench",
                "--workload",
            ),
            Missing::ImsBench => ("ims.bench", "the IMS benchmark", "bench", "--ims-bench"),
            Missing::SvaSuite => (
                "sva.suite",
                "the hostile-process suite",
                "ktest",
                "--sva-suite",
            ),
        };
        write!(
            f,
            "'{asked}' on the command line, but this is the {} kernel, built without {part} \
             (cargo feature '{feature}'; ./qemu-run.sh {script} builds the right flavour)",
            name()
        )
    }
}

impl core::error::Error for Missing {}

/// Runs the kernel tests (`ktest` or `ktest.list` on the command line).
pub fn run_ktests() -> ! {
    #[cfg(feature = "ktest")]
    {
        crate::ktest::run()
    }
    #[cfg(not(feature = "ktest"))]
    {
        crate::exit::fail(format_args!("{}", Missing::KernelTests))
    }
}

/// Runs the hostile-process suite (`sva.suite` on the command line).
pub fn run_sva_suite() -> ! {
    #[cfg(feature = "ktest")]
    {
        crate::ktests::sva_suite::run()
    }
    #[cfg(not(feature = "ktest"))]
    {
        crate::exit::fail(format_args!("{}", Missing::SvaSuite))
    }
}
