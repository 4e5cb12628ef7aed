//! Kernel command-line parsing.
//!
//! Syntax: whitespace-separated tokens, each `key` or `key=value`; a value may be
//! double-quoted to contain spaces (`key="a b"`). When a key repeats, the last one wins.

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
            .checked_mul(radix)?
            .checked_add(c.to_digit(radix as u32)? as u64)?;
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
    }
}
