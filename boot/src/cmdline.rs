//! Kernel command-line parsing.
//!
//! Syntax: whitespace-separated tokens, each `key` or `key=value`; a value may be
//! double-quoted to contain spaces (`key="a b"`). When a key repeats, the last one wins.
//!
//! [`check`] validates a command line against a table of [`Arg`]s (what each key
//! accepts), so that a value the kernel would otherwise replace by its default is reported
//! instead of ignored; [`Cmdline::unterminated_quote`] finds a quote that swallows the rest
//! of the line.

use core::fmt;

/// A parsed view over a command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cmdline<'a> {
    raw: &'a str,
}

/// One token: key and optional value (quotes stripped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Param<'a> {
    /// The key.
    pub key: &'a str,
    /// The value after `=`, if any (may be empty).
    pub value: Option<&'a str>,
}

/// Iterator over the parameters of a command line.
#[derive(Debug, Clone)]
pub struct Params<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Params<'a> {
    type Item = Param<'a>;

    fn next(&mut self) -> Option<Param<'a>> {
        let s = self.rest.trim_start();
        if s.is_empty() {
            self.rest = s;
            return None;
        }
        // Token end: first whitespace outside quotes.
        let mut in_quotes = false;
        let mut end = s.len();
        for (i, c) in s.char_indices() {
            if c == '"' {
                in_quotes = !in_quotes;
            } else if c.is_whitespace() && !in_quotes {
                end = i;
                break;
            }
        }
        let tok = &s[..end];
        self.rest = &s[end..];
        Some(match tok.split_once('=') {
            None => Param {
                key: tok,
                value: None,
            },
            Some((k, v)) => {
                let v = v
                    .strip_prefix('"')
                    .map(|v| v.strip_suffix('"').unwrap_or(v))
                    .unwrap_or(v);
                Param {
                    key: k,
                    value: Some(v),
                }
            }
        })
    }
}

impl<'a> Cmdline<'a> {
    /// Wraps a raw command line.
    pub const fn new(raw: &'a str) -> Self {
        Self { raw }
    }

    /// The raw text.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// All parameters in order.
    pub fn params(&self) -> Params<'a> {
        Params { rest: self.raw }
    }

    /// The value of the last `key=value`; `Some("")` for `key=`; `None` for a bare `key`
    /// or when absent.
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.params()
            .filter(|p| p.key == key)
            .last()
            .and_then(|p| p.value)
    }

    /// Whether `key` appears at all (bare or with a value).
    pub fn has(&self, key: &str) -> bool {
        self.params().any(|p| p.key == key)
    }

    /// `key` as a boolean flag: bare `key`, `key=1|on|yes|true` → true;
    /// `key=0|off|no|false` → false; absent → `default`. Unknown values → `default`.
    pub fn flag(&self, key: &str, default: bool) -> bool {
        match self.params().filter(|p| p.key == key).last() {
            None => default,
            Some(Param { value: None, .. }) => true,
            Some(Param { value: Some(v), .. }) => match v {
                "1" | "on" | "yes" | "true" | "" => true,
                "0" | "off" | "no" | "false" => false,
                _ => default,
            },
        }
    }

    /// `key=<number>` (decimal or `0x` hex). `Err` carries the offending text.
    pub fn number(&self, key: &str) -> Option<Result<u64, &'a str>> {
        self.get(key).map(|v| parse_number(v).ok_or(v))
    }

    /// Byte offset of a `"` that is never closed: everything after it became part of one
    /// value, so the keys written there are lost.
    pub fn unterminated_quote(&self) -> Option<usize> {
        let mut open = None;
        for (i, c) in self.raw.char_indices() {
            if c == '"' {
                open = match open {
                    None => Some(i),
                    Some(_) => None,
                };
            }
        }
        open
    }
}

/// Legacy COM port bases (ttyS0..ttyS3).
pub const COM_PORTS: [u16; 4] = [0x3f8, 0x2f8, 0x3e8, 0x2e8];

/// A serial console from `console=ttyS<n>[,baud]` or `console=<port>[,baud]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleSpec {
    /// I/O port base of the 16550.
    pub port: u16,
    /// Baud rate.
    pub baud: u32,
}

/// Why a `console=` value cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleError {
    /// Neither `ttyS<n>` nor a number.
    Syntax,
    /// `ttyS<n>` with n > 3.
    NoSuchTty(u64),
    /// A base whose eight registers do not fit the 16-bit I/O space, or that lies in the
    /// system-board range 0x000–0x0ff (PIC, PIT, DMA, keyboard, and QEMU's isa-debug-exit).
    Port(u64),
    /// Baud rate 0, above 115200, or not a number.
    Baud,
}

impl fmt::Display for ConsoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConsoleError::Syntax => write!(
                f,
                "expected ttyS0..ttyS3 or an I/O port, optionally ,<baud>"
            ),
            ConsoleError::NoSuchTty(n) => write!(f, "ttyS{n} does not exist (ttyS0..ttyS3)"),
            ConsoleError::Port(p) => write!(
                f,
                "I/O port {p:#x} cannot hold a 16550 (its 8 registers must lie in 0x100..=0xffff)"
            ),
            ConsoleError::Baud => write!(f, "baud rate must be 1..=115200"),
        }
    }
}

impl core::error::Error for ConsoleError {}

/// Lowest I/O port a console UART may use.
pub const CONSOLE_PORT_MIN: u64 = 0x100;
/// Highest base: the UART's 8 registers end at 0xffff.
pub const CONSOLE_PORT_MAX: u64 = 0xfff8;

/// Parses `ttyS<n>[,baud]` or `<port>[,baud]` (default 115200 baud).
pub fn parse_console(spec: &str) -> Result<ConsoleSpec, ConsoleError> {
    let (dev, baud) = match spec.split_once(',') {
        Some((d, b)) => (
            d,
            parse_number(b)
                .and_then(|b| u32::try_from(b).ok())
                .ok_or(ConsoleError::Baud)?,
        ),
        None => (spec, 115_200),
    };
    if baud == 0 || baud > 115_200 {
        return Err(ConsoleError::Baud);
    }
    let port = match dev.strip_prefix("ttyS") {
        Some(n) => {
            let n = parse_number(n).ok_or(ConsoleError::Syntax)?;
            *usize::try_from(n)
                .ok()
                .and_then(|i| COM_PORTS.get(i))
                .ok_or(ConsoleError::NoSuchTty(n))?
        }
        None => {
            let p = parse_number(dev).ok_or(ConsoleError::Syntax)?;
            match u16::try_from(p) {
                Ok(port) if (CONSOLE_PORT_MIN..=CONSOLE_PORT_MAX).contains(&p) => port,
                _ => return Err(ConsoleError::Port(p)),
            }
        }
    };
    Ok(ConsoleSpec { port, baud })
}

/// Values a boolean flag accepts (`key` alone means true).
pub const FLAG_VALUES: [&str; 9] = ["", "1", "on", "yes", "true", "0", "off", "no", "false"];

/// What one command-line key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgKind {
    /// `key=<number>` in `min..=max` (a power of two if `pow2`).
    Number {
        /// Smallest value.
        min: u64,
        /// Largest value.
        max: u64,
        /// Must be a power of two.
        pow2: bool,
    },
    /// `key=<one of the words>`.
    Choice(&'static [&'static str]),
    /// `key`, or `key=` one of [`FLAG_VALUES`].
    Flag,
    /// Any value (the subsystem that reads it validates it).
    Any,
}

/// A key the kernel reads, and what it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arg {
    /// The key.
    pub key: &'static str,
    /// Accepted values.
    pub kind: ArgKind,
}

/// A command-line problem found by [`check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgIssue<'a> {
    /// A value the key does not accept.
    BadValue {
        /// The key.
        key: &'a str,
        /// The value given (`None` for a bare key that needs a value).
        value: Option<&'a str>,
        /// What it accepts.
        kind: ArgKind,
    },
    /// A `"` at this byte offset is never closed.
    UnterminatedQuote(usize),
}

impl fmt::Display for ArgKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgKind::Number { min, max, pow2 } => {
                if *pow2 {
                    write!(f, "a power of two in {min}..={max}")
                } else {
                    write!(f, "a number in {min}..={max}")
                }
            }
            ArgKind::Choice(words) => {
                for (i, w) in words.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    f.write_str(w)?;
                }
                Ok(())
            }
            ArgKind::Flag => write!(f, "on|off (or 1|0, yes|no, true|false)"),
            ArgKind::Any => write!(f, "any value"),
        }
    }
}

impl fmt::Display for ArgIssue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgIssue::BadValue {
                key,
                value: Some(v),
                kind,
            } => write!(f, "{key}={v}: expected {kind}"),
            ArgIssue::BadValue {
                key,
                value: None,
                kind,
            } => write!(f, "{key} needs a value: {kind}"),
            ArgIssue::UnterminatedQuote(at) => write!(
                f,
                "the quote at byte {at} is never closed: the rest of the line became one value"
            ),
        }
    }
}

impl ArgKind {
    /// Whether `value` (`None` = bare key) is accepted.
    pub fn accepts(&self, value: Option<&str>) -> bool {
        match (self, value) {
            (ArgKind::Any, _) => true,
            (ArgKind::Flag, None) => true,
            (ArgKind::Flag, Some(v)) => FLAG_VALUES.contains(&v),
            (ArgKind::Number { .. } | ArgKind::Choice(_), None) => false,
            (ArgKind::Number { min, max, pow2 }, Some(v)) => parse_number(v)
                .is_some_and(|n| (*min..=*max).contains(&n) && (!pow2 || n.is_power_of_two())),
            (ArgKind::Choice(words), Some(v)) => words.contains(&v),
        }
    }
}

/// Every problem of `cmdline` against the keys in `args`: each occurrence of a known key
/// with a value it does not accept (also when a later occurrence overrides it), and an
/// unterminated quote. Keys not in `args` are left alone (boot loaders add their own).
pub fn check<'a>(cmdline: &Cmdline<'a>, args: &[Arg]) -> issues::Issues<'a> {
    let mut out = issues::Issues::default();
    for p in cmdline.params() {
        if let Some(a) = args.iter().find(|a| a.key == p.key)
            && !a.kind.accepts(p.value)
        {
            out.push(ArgIssue::BadValue {
                key: p.key,
                value: p.value,
                kind: a.kind,
            });
        }
    }
    if let Some(at) = cmdline.unterminated_quote() {
        out.push(ArgIssue::UnterminatedQuote(at));
    }
    out
}

/// A bounded list of issues (the boot crate has no allocator).
pub mod issues {
    use super::ArgIssue;

    /// Most issues kept; more are counted in [`Issues::more`].
    pub const MAX: usize = 16;

    /// The issues [`super::check`] found.
    #[derive(Debug, Clone, Default)]
    pub struct Issues<'a> {
        items: [Option<ArgIssue<'a>>; MAX],
        len: usize,
        /// Issues beyond [`MAX`].
        pub more: usize,
    }

    impl<'a> Issues<'a> {
        pub(super) fn push(&mut self, i: ArgIssue<'a>) {
            match self.items.get_mut(self.len) {
                Some(slot) => {
                    *slot = Some(i);
                    self.len += 1;
                }
                None => self.more += 1,
            }
        }

        /// The issues kept.
        pub fn iter(&self) -> impl Iterator<Item = &ArgIssue<'a>> {
            self.items[..self.len].iter().flatten()
        }

        /// Number of issues (kept and beyond).
        pub fn count(&self) -> usize {
            self.len + self.more
        }

        /// Whether there are none.
        pub fn is_empty(&self) -> bool {
            self.count() == 0
        }
    }
}

/// Parses a decimal or `0x`-prefixed hexadecimal number (underscores allowed).
pub fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for c in digits.chars() {
        if c == '_' {
            continue;
        }
        v = v
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(c.to_digit(radix)?))?;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_flags() {
        let c = Cmdline::new(
            "  ktest=smp loglevel=debug quiet console=0x2f8 ktest=vec name=\"a b\" empty= ",
        );
        assert_eq!(c.get("ktest"), Some("vec"), "last one wins");
        assert_eq!(c.get("loglevel"), Some("debug"));
        assert_eq!(c.get("quiet"), None);
        assert!(c.has("quiet"));
        assert!(!c.has("missing"));
        assert_eq!(c.get("name"), Some("a b"));
        assert_eq!(c.get("empty"), Some(""));
        assert!(c.flag("quiet", false));
        assert!(!c.flag("missing", false));
        assert_eq!(c.number("console"), Some(Ok(0x2f8)));
        assert_eq!(c.number("loglevel"), Some(Err("debug")));
        let keys: Vec<_> = c.params().map(|p| p.key).collect();
        assert_eq!(
            keys,
            [
                "ktest", "loglevel", "quiet", "console", "ktest", "name", "empty"
            ]
        );
    }

    #[test]
    fn flags_with_values() {
        let c = Cmdline::new("a=off b=1 c=maybe");
        assert!(!c.flag("a", true));
        assert!(c.flag("b", false));
        assert!(c.flag("c", true));
        assert!(!c.flag("c", false));
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("42"), Some(42));
        assert_eq!(parse_number("0x1_000"), Some(0x1000));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }

    #[test]
    fn empty_and_unterminated_quotes() {
        assert_eq!(Cmdline::new("").params().count(), 0);
        assert_eq!(Cmdline::new("   ").params().count(), 0);
        let c = Cmdline::new("x=\"abc def");
        assert_eq!(c.get("x"), Some("abc def"));
        assert_eq!(c.unterminated_quote(), Some(2));
        assert_eq!(Cmdline::new("a=\"b c\" d").unterminated_quote(), None);
        assert_eq!(
            Cmdline::new("a=\"b\" d=\"e f=1").unterminated_quote(),
            Some(8)
        );
    }

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
            kind: ArgKind::Choice(&["error", "warn", "info"]),
        },
        Arg {
            key: "iommu",
            kind: ArgKind::Choice(&["on", "off"]),
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

    #[test]
    fn rejected_values_are_reported_not_replaced_silently() {
        let c = Cmdline::new(
            "smp.timeout_ms=0 loglevel=bogus iommu=of fw_cfg=maybe iommu.irtes=3 workload=x BOOT_IMAGE=/k smp.timeout_ms=5 loglevel",
        );
        let got: Vec<String> = check(&c, ARGS).iter().map(|i| i.to_string()).collect();
        assert_eq!(
            got,
            [
                "smp.timeout_ms=0: expected a number in 1..=60000",
                "loglevel=bogus: expected error|warn|info",
                "iommu=of: expected on|off",
                "fw_cfg=maybe: expected on|off (or 1|0, yes|no, true|false)",
                "iommu.irtes=3: expected a power of two in 2..=65536",
                "loglevel needs a value: error|warn|info",
            ]
        );
        let ok =
            Cmdline::new("smp.timeout_ms=0x10 iommu.irtes=4096 iommu=off fw_cfg loglevel=info");
        assert!(check(&ok, ARGS).is_empty());
        let q = Cmdline::new("workload=\"memmove iommu=of");
        let issues = check(&q, ARGS);
        assert_eq!(
            issues.count(),
            1,
            "the swallowed iommu=of is not a key any more"
        );
        assert_eq!(
            issues.iter().next().unwrap().to_string(),
            "the quote at byte 9 is never closed: the rest of the line became one value"
        );
    }

    #[test]
    fn console_ports_are_range_checked() {
        assert_eq!(
            parse_console("ttyS1,9600"),
            Ok(ConsoleSpec {
                port: 0x2f8,
                baud: 9600
            })
        );
        assert_eq!(parse_console("0x3e8").map(|c| c.port), Ok(0x3e8));
        assert_eq!(parse_console("0xfff8").map(|c| c.port), Ok(0xfff8));
        // 0xfffb..=0xffff: the register offsets overflowed u16; 0xf0: isa-debug-exit.
        for p in ["0xfffb", "0xffff", "0xfff9", "0x10000", "0xf0", "0"] {
            assert!(
                matches!(parse_console(p), Err(ConsoleError::Port(_))),
                "{p}"
            );
        }
        assert_eq!(parse_console("ttyS4"), Err(ConsoleError::NoSuchTty(4)));
        assert_eq!(
            parse_console("ttyS99999999999999999999"),
            Err(ConsoleError::Syntax)
        );
        assert_eq!(parse_console("ttyS0,0"), Err(ConsoleError::Baud));
        assert_eq!(parse_console("ttyS0,4294967297"), Err(ConsoleError::Baud));
        assert_eq!(parse_console("ttyS0,230400"), Err(ConsoleError::Baud));
        assert_eq!(parse_console("com1"), Err(ConsoleError::Syntax));
        assert!(
            ConsoleError::Port(0xffff)
                .to_string()
                .contains("0xffff cannot hold a 16550")
        );
    }

    #[test]
    fn issues_are_bounded() {
        let line = "iommu=x ".repeat(40);
        let c = Cmdline::new(&line);
        let i = check(&c, ARGS);
        assert_eq!(i.count(), 40);
        assert_eq!(i.iter().count(), issues::MAX);
    }
}
