//! The kernel command line: tokenising, lookups, the boot check against the kernel's
//! table of keys (a copy of `kernel::cmdline::ARGS`'s shape), and `console=`.

use boot::cmdline::{self as c, Arg, ArgKind, Cmdline};

pub const DICT: &[&[u8]] = &[
    b" ",
    b"=",
    b"\"",
    b",",
    b"0x",
    b"ktest",
    b"loglevel=",
    b"console=",
    b"ttyS",
    b"smp.timeout_ms=",
    b"iommu.irtes=",
    b"iommu=off",
    b"fw_cfg=",
    b"workload=",
    b"dsa.config=",
    b"\xff",
    b"\xc3\xa9",
];

const ARGS: &[Arg] = &[
    Arg {
        key: "smp.timeout_ms",
        kind: ArgKind::Number {
            min: 1,
            max: 60_000,
            pow2: false,
        },
    },
    Arg {
        key: "iommu.irtes",
        kind: ArgKind::Number {
            min: 2,
            max: 65536,
            pow2: true,
        },
    },
    Arg {
        key: "loglevel",
        kind: ArgKind::Choice(&["off", "error", "warn", "info", "debug", "trace"]),
    },
    Arg {
        key: "fw_cfg",
        kind: ArgKind::Flag,
    },
    Arg {
        key: "workload",
        kind: ArgKind::Any,
    },
];

pub fn run(data: &[u8]) {
    // The kernel sees the UTF-8 prefix (boot::BootInfo::cmdline).
    let text = match core::str::from_utf8(data) {
        Ok(s) => s,
        Err(e) => core::str::from_utf8(&data[..e.valid_up_to()]).unwrap_or(""),
    };
    let cl = Cmdline::new(text);
    let mut n = 0;
    for p in cl.params() {
        let _ = cl.get(p.key);
        let _ = cl.has(p.key);
        let _ = cl.flag(p.key, true);
        let _ = cl.number(p.key);
        if let Some(v) = p.value {
            let _ = c::parse_number(v);
            let _ = c::parse_console(v).map(|s| {
                assert!(u64::from(s.port) <= c::CONSOLE_PORT_MAX);
                assert!((1..=115_200).contains(&s.baud));
            });
        }
        n += 1;
        assert!(n <= text.len());
    }
    let issues = c::check(&cl, ARGS);
    for i in issues.iter() {
        let _ = i.to_string();
    }
    if let Some(at) = cl.unterminated_quote() {
        assert_eq!(text.as_bytes()[at], b'"');
    }
}
