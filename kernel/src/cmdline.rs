//! The kernel command line (`-append` in QEMU, the `multiboot2` line in GRUB).
//!
//! Every key the kernel reads with a constrained value is listed in [`ARGS`] (what it
//! accepts); [`problems`] checks the whole line against that table at boot, so a value
//! that would otherwise be replaced by a default fails the run with the reason instead
//! (see README "Kernel command line"). Numeric settings are read through [`NumberArg`],
//! whose range is the one checked. See [`boot::cmdline`] for the syntax.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use boot::cmdline::{Arg, ArgKind, Cmdline};

use crate::bootinfo;

/// The parsed command line.
pub fn cmdline() -> Cmdline<'static> {
    Cmdline::new(bootinfo::get().cmdline())
}

/// The raw command line.
#[cfg(feature = "ktest")]
pub fn raw() -> &'static str {
    bootinfo::get().cmdline()
}

/// Value of the last `key=value` (`Some("")` for `key=`, `None` for bare `key` or absent).
pub fn get(key: &str) -> Option<&'static str> {
    cmdline().get(key)
}

/// Whether `key` is present (bare or with a value).
pub fn has(key: &str) -> bool {
    cmdline().has(key)
}

/// Boolean flag: bare `key` or `key=1|on|yes|true` → true, `key=0|off|no|false` → false.
pub fn flag(key: &str, default: bool) -> bool {
    cmdline().flag(key, default)
}

/// `key=<number>` (decimal or 0x-hex); `Err` carries the text that did not parse.
#[cfg(any(feature = "ktest", feature = "bench"))]
pub fn number(key: &str) -> Option<Result<u64, &'static str>> {
    cmdline().number(key)
}

/// A numeric setting: its key, accepted range and default.
#[derive(Debug, Clone, Copy)]
pub struct NumberArg {
    pub key: &'static str,
    pub min: u64,
    pub max: u64,
    /// Must be a power of two.
    pub pow2: bool,
    pub default: u64,
}

impl NumberArg {
    const fn arg(&self) -> Arg {
        Arg {
            key: self.key,
            kind: ArgKind::Number {
                min: self.min,
                max: self.max,
                pow2: self.pow2,
            },
        }
    }

    /// The value given, if it is one this setting accepts.
    pub fn given(&self) -> Option<u64> {
        let v = get(self.key)?;
        self.arg().kind.accepts(Some(v)).then(|| {
            // `accepts` parsed it already.
            boot::cmdline::parse_number(v).unwrap_or(self.default)
        })
    }

    /// The value given, else the default. A value outside the range is never used: the
    /// boot check ([`problems`]) has failed the run for it.
    pub fn get(&self) -> u64 {
        self.given().unwrap_or(self.default)
    }
}

pub const SMP_INIT_DELAY_US: NumberArg = NumberArg {
    key: "smp.init_delay_us",
    min: 0,
    max: 1_000_000,
    pow2: false,
    default: 10_000,
};
pub const SMP_TIMEOUT_MS: NumberArg = NumberArg {
    key: "smp.timeout_ms",
    min: 1,
    max: 60_000,
    pow2: false,
    // An AP's check-in normally takes milliseconds; the bound (10 s, as Linux waits for an
    // AP's callin) only matters for a dead CPU, and an emulated one on a loaded host can
    // take far longer than hardware to run its first instructions.
    default: 10_000,
};
pub const TSC_CALIBRATE_MS: NumberArg = NumberArg {
    key: "tsc.calibrate_ms",
    min: 1,
    max: 1000,
    pow2: false,
    default: 10,
};
pub const IMS_QUOTA: NumberArg = NumberArg {
    key: "ims.quota",
    min: 1,
    max: u32::MAX as u64,
    pow2: false,
    default: 64,
};
pub const IMS_BENCH_ROUNDS: NumberArg = NumberArg {
    key: "ims.bench.rounds",
    min: 1,
    max: 10_000,
    pow2: false,
    default: 32,
};
/// No default: without it the table is sized from the devices.
pub const IOMMU_IRTES: NumberArg = NumberArg {
    key: "iommu.irtes",
    min: 2,
    max: 65536,
    pow2: true,
    default: 0,
};

/// What `ims.mode=` accepts: the system IMS domain's mode (`auto`: posted when every
/// remapping unit has CAP.PI, else shared).
pub const IMS_MODES: &[&str] = &["auto", "posted", "shared"];

/// Log levels `loglevel=` accepts.
pub const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// Every key with a constrained value. Keys read by a subsystem that validates them
/// itself (`workload=`, `dsa.config=`, `ktest=`, `ims.bench.cpus=`, `console=`) are not
/// here: their errors fail the run where they are parsed.
pub const ARGS: &[Arg] = &[
    SMP_INIT_DELAY_US.arg(),
    SMP_TIMEOUT_MS.arg(),
    TSC_CALIBRATE_MS.arg(),
    IMS_QUOTA.arg(),
    IMS_BENCH_ROUNDS.arg(),
    IOMMU_IRTES.arg(),
    Arg {
        key: "loglevel",
        kind: ArgKind::Choice(LOG_LEVELS),
    },
    Arg {
        key: "apic",
        kind: ArgKind::Choice(&["xapic", "x2apic"]),
    },
    Arg {
        key: "iommu",
        kind: ArgKind::Choice(&["on", "off"]),
    },
    Arg {
        key: "lapic.calibrate",
        kind: ArgKind::Choice(&["count", "irq"]),
    },
    Arg {
        key: "fw_cfg",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "icount",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "ims.bench",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "ims.mode",
        kind: ArgKind::Choice(IMS_MODES),
    },
    Arg {
        key: "ktest.list",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "sva.suite",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "sva.direct",
        kind: ArgKind::Choice(&["on", "off"]),
    },
];

/// `sva.direct=on|off` (default off): whether processes may map a DSA portal and submit
/// with ENQCMD from ring 3 (`dsa_portal`). Off by default because of Intel's erratum
/// advisory INTEL-SA-01084 (direct user submission to DSA 1.0 can hang the device; Linux
/// treats every DSA as unsafe for it); the submit system call is the user path then.
pub fn sva_direct() -> bool {
    get("sva.direct") == Some("on")
}

/// Everything wrong with the command line as the boot loader passed it: values the keys
/// of [`ARGS`] do not accept, an unterminated quote, bytes that are not UTF-8 (the line
/// is cut there), and a `console=` that cannot be used (`console`: the reason, found
/// while the console was set up).
pub fn problems(console: Option<String>) -> Vec<String> {
    let bi = bootinfo::get();
    let mut out = Vec::new();
    if let Some(at) = bi.cmdline_utf8_error() {
        out.push(format!(
            "byte {at} is not UTF-8: the command line was cut there"
        ));
    }
    let issues = boot::cmdline::check(&cmdline(), ARGS);
    out.extend(issues.iter().map(|i| format!("{i}")));
    if issues.more > 0 {
        out.push(format!("{} more", issues.more));
    }
    out.extend(console);
    out
}
