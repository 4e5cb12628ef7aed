//! Judging a kernel's serial log.
//!
//! One parser for every place a verdict is needed: the QEMU boot tests, and the
//! `serial-verdict` command that judges a log captured from a bare-metal machine. It
//! reads the kernel's line formats (see `kernel/src/ktest.rs` and `kernel/src/exit.rs`):
//!
//! ```text
//! ktest: running N of M tests (filter '…')
//! ktest: <name> ...                      test started
//! ktest: <name> ... ok (<ms> ms)         passed
//! ktest: <name> ... FAILED: <reason>     failed
//! ktest: <name> ... skipped: <reason>    skipped
//! ktest: P passed, F failed, S skipped   summary
//! PANIC on CPU …  /  EXCEPTION: …        fatal errors
//! kernel-exit: pass  /  kernel-exit: fail: <reason>
//! ```
//!
//! Terminal escape sequences (firmware and GRUB menus share the serial line) and `\r`
//! are ignored.

use std::fmt;

/// Status of one kernel test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestStatus {
    /// Passed.
    Ok,
    /// Failed, with the reason.
    Failed(String),
    /// Skipped, with the reason.
    Skipped(String),
}

/// The `ktest: P passed, F failed[, S skipped]` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Passed.
    pub passed: u32,
    /// Failed.
    pub failed: u32,
    /// Skipped (absent in the short form).
    pub skipped: Option<u32>,
}

/// The `kernel-exit:` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `kernel-exit: pass`.
    Pass,
    /// `kernel-exit: fail: <reason>`.
    Fail(String),
}

/// Everything recognised in a log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `ktest: running …` was seen.
    pub ktest_mode: bool,
    /// Tests that printed a start line, in order.
    pub started: Vec<String>,
    /// Tests with a verdict line, in order.
    pub tests: Vec<(String, TestStatus)>,
    /// The summary line, if any (the last one wins).
    pub summary: Option<Summary>,
    /// The exit line, if any.
    pub exit: Option<Exit>,
    /// `PANIC …` lines.
    pub panics: Vec<String>,
    /// `EXCEPTION…` lines.
    pub exceptions: Vec<String>,
    /// `RESULT {json}` payloads.
    pub results: Vec<String>,
}

/// The verdict on a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The kernel reported success and nothing contradicts it.
    Pass {
        /// Kernel tests passed (0 for a main-job run).
        passed: u32,
        /// Kernel tests skipped.
        skipped: u32,
    },
    /// The kernel reported failure, or the log shows one.
    Fail {
        /// Names of failed kernel tests.
        failed_tests: Vec<String>,
        /// What went wrong, human-readable.
        reasons: Vec<String>,
    },
    /// The log ends without a verdict (hang, reset, truncated capture).
    Incomplete {
        /// Test that started but never finished, if any.
        running: Option<String>,
        /// Explanation.
        reason: String,
    },
}

impl Verdict {
    /// Whether this is a pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass { passed, skipped } => {
                write!(f, "PASS ({passed} kernel tests passed, {skipped} skipped)")
            }
            Verdict::Fail {
                failed_tests,
                reasons,
            } => {
                write!(f, "FAIL")?;
                if !failed_tests.is_empty() {
                    write!(f, ": failed kernel tests: {}", failed_tests.join(", "))?;
                }
                for r in reasons {
                    write!(f, "\n  {r}")?;
                }
                Ok(())
            }
            Verdict::Incomplete { running, reason } => {
                write!(f, "INCOMPLETE: {reason}")?;
                if let Some(t) = running {
                    write!(f, " (kernel test '{t}' started and never finished)")?;
                }
                Ok(())
            }
        }
    }
}

/// Removes ANSI/VT100 escape sequences and carriage returns.
pub fn clean_line(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ params final-byte; other escapes: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for d in chars.by_ref() {
                        if ('@'..='~').contains(&d) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn parse_summary(rest: &str) -> Option<Summary> {
    // "P passed, F failed" optionally ", S skipped"
    let mut parts = rest.split(", ");
    let passed = parts.next()?.strip_suffix(" passed")?.parse().ok()?;
    let failed = parts.next()?.strip_suffix(" failed")?.parse().ok()?;
    let skipped = match parts.next() {
        None => None,
        Some(s) => Some(s.strip_suffix(" skipped")?.parse().ok()?),
    };
    if parts.next().is_some() {
        return None;
    }
    Some(Summary {
        passed,
        failed,
        skipped,
    })
}

/// Parses a serial log.
pub fn parse(log: &str) -> Report {
    let mut r = Report::default();
    for raw in log.lines() {
        let line = clean_line(raw);
        // Tolerate junk before the marker on the same line (firmware output without a newline).
        let find = |m: &str| line.find(m).map(|i| &line[i..]);
        if let Some(rest) = find("kernel-exit: ") {
            let rest = &rest["kernel-exit: ".len()..];
            if rest == "pass" {
                r.exit = Some(Exit::Pass);
            } else if let Some(why) = rest.strip_prefix("fail") {
                r.exit = Some(Exit::Fail(why.trim_start_matches(':').trim().to_string()));
            }
            continue;
        }
        if let Some(rest) = find("PANIC on CPU") {
            r.panics.push(rest.to_string());
            continue;
        }
        if let Some(rest) = find("EXCEPTION") {
            r.exceptions.push(rest.to_string());
            continue;
        }
        if let Some(rest) = find("RESULT {") {
            r.results.push(rest["RESULT ".len()..].to_string());
            continue;
        }
        let Some(rest) = line.strip_prefix("ktest: ") else {
            continue;
        };
        if rest.starts_with("running ") {
            r.ktest_mode = true;
        } else if let Some(s) = parse_summary(rest) {
            r.summary = Some(s);
        } else if let Some(name) = rest.strip_suffix(" ...") {
            r.started.push(name.to_string());
        } else if let Some((name, status)) = rest.split_once(" ... ") {
            let st = if status.starts_with("ok") {
                TestStatus::Ok
            } else if let Some(why) = status.strip_prefix("FAILED") {
                TestStatus::Failed(why.trim_start_matches(':').trim().to_string())
            } else if let Some(why) = status.strip_prefix("skipped") {
                TestStatus::Skipped(why.trim_start_matches(':').trim().to_string())
            } else {
                continue;
            };
            r.tests.push((name.to_string(), st));
        }
    }
    r
}

/// The value of `"key":` in a flat JSON object line such as a `RESULT` payload: numbers,
/// booleans and `null` as written, strings without their quotes (not unescaped).
pub fn json_field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = &json[json.find(&pat)? + pat.len()..];
    match rest.strip_prefix('"') {
        Some(r) => r.find('"').map(|e| &r[..e]),
        None => Some(&rest[..rest.find([',', '}']).unwrap_or(rest.len())]),
    }
}

impl Report {
    /// The `RESULT` payloads whose `"kind"` is `kind`, in order.
    pub fn results_of_kind(&self, kind: &str) -> Vec<&String> {
        self.results
            .iter()
            .filter(|j| json_field(j, "kind") == Some(kind))
            .collect()
    }

    /// Names of failed tests.
    pub fn failed_tests(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .tests
            .iter()
            .filter(|(_, s)| matches!(s, TestStatus::Failed(_)))
            .map(|(n, _)| n.clone())
            .collect();
        v.dedup();
        v
    }

    /// Status of test `name` (exact full name, or a unique suffix such as `smp::every_cpu_runs_a_closure`).
    pub fn status_of(&self, name: &str) -> Option<&TestStatus> {
        self.tests
            .iter()
            .find(|(n, _)| n == name || n.ends_with(&format!("::{name}")))
            .map(|(_, s)| s)
    }

    fn unfinished(&self) -> Option<String> {
        self.started
            .iter()
            .rev()
            .find(|s| !self.tests.iter().any(|(n, _)| n == *s))
            .cloned()
    }

    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        let failed_tests = self.failed_tests();
        let mut reasons = Vec::new();
        for (n, s) in &self.tests {
            if let TestStatus::Failed(why) = s {
                reasons.push(format!("{n}: {why}"));
            }
        }
        reasons.extend(self.panics.iter().cloned());
        reasons.extend(self.exceptions.iter().cloned());
        if let Some(s) = self.summary
            && s.failed > 0
            && failed_tests.is_empty()
        {
            reasons.push(format!("summary reports {} failed test(s)", s.failed));
        }
        if let Some(Exit::Fail(why)) = &self.exit {
            reasons.push(format!("kernel-exit: fail: {why}"));
        }
        if !reasons.is_empty() {
            return Verdict::Fail {
                failed_tests,
                reasons,
            };
        }
        match &self.exit {
            None => Verdict::Incomplete {
                running: self.unfinished(),
                reason: "no 'kernel-exit:' line (hang, reset or truncated log)".into(),
            },
            Some(Exit::Fail(_)) => unreachable!("handled above"),
            Some(Exit::Pass) => {
                if !self.ktest_mode {
                    return Verdict::Pass {
                        passed: 0,
                        skipped: 0,
                    };
                }
                let Some(s) = self.summary else {
                    return Verdict::Fail {
                        failed_tests,
                        reasons: vec!["kernel tests ran but no summary line was printed".into()],
                    };
                };
                let ok = self
                    .tests
                    .iter()
                    .filter(|(_, s)| *s == TestStatus::Ok)
                    .count() as u32;
                let skipped = self
                    .tests
                    .iter()
                    .filter(|(_, s)| matches!(s, TestStatus::Skipped(_)))
                    .count() as u32;
                if s.passed != ok || s.skipped.is_some_and(|k| k != skipped) {
                    return Verdict::Fail {
                        failed_tests,
                        reasons: vec![format!(
                            "summary ({} passed, {:?} skipped) disagrees with the test lines ({ok} ok, {skipped} skipped)",
                            s.passed, s.skipped
                        )],
                    };
                }
                if let Some(t) = self.unfinished() {
                    return Verdict::Fail {
                        failed_tests,
                        reasons: vec![format!("test '{t}' started but has no verdict")],
                    };
                }
                if s.passed + s.skipped.unwrap_or(0) == 0 {
                    return Verdict::Fail {
                        failed_tests,
                        reasons: vec!["no kernel test ran".into()],
                    };
                }
                Verdict::Pass {
                    passed: s.passed,
                    skipped: s.skipped.unwrap_or(0),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_and_results_by_kind() {
        let j = r#"{"kind":"x","n":12,"ok":true,"s":"a b","last":null}"#;
        assert_eq!(json_field(j, "kind"), Some("x"));
        assert_eq!(json_field(j, "n"), Some("12"));
        assert_eq!(json_field(j, "ok"), Some("true"));
        assert_eq!(json_field(j, "s"), Some("a b"));
        assert_eq!(json_field(j, "last"), Some("null"));
        assert_eq!(json_field(j, "missing"), None);
        let r = parse(
            "RESULT {\"kind\":\"a\",\"i\":1}\nRESULT {\"kind\":\"b\"}\nRESULT {\"kind\":\"a\",\"i\":2}\n",
        );
        let a = r.results_of_kind("a");
        assert_eq!(a.len(), 2);
        assert_eq!(json_field(a[1], "i"), Some("2"));
        assert!(r.results_of_kind("c").is_empty());
    }

    const PASS_LOG: &str = "\x1b[2J\x1b[1;1HBooting `kernel tests'\r\n\
[   0.1 cpu0] INFO  kernel: hello\r\n\
ktest: running 3 of 5 tests (filter '')\r\n\
ktest: a::one ...\r\n\
ktest: a::one ... ok (0.1 ms)\r\n\
ktest: a::two ...\r\n\
[   0.2 cpu1] WARN  irq: noise\r\n\
ktest: a::two ... skipped: needs 2 CPUs\r\n\
ktest: b::three ...\r\n\
ktest: b::three ... ok (2.0 ms)\r\n\
ktest: 2 passed, 0 failed, 1 skipped\r\n\
kernel-exit: pass\r\n";

    #[test]
    fn passing_ktest_log() {
        let r = parse(PASS_LOG);
        assert!(r.ktest_mode);
        assert_eq!(
            r.summary,
            Some(Summary {
                passed: 2,
                failed: 0,
                skipped: Some(1)
            })
        );
        assert_eq!(
            r.status_of("a::two"),
            Some(&TestStatus::Skipped("needs 2 CPUs".into()))
        );
        assert_eq!(r.status_of("three"), Some(&TestStatus::Ok));
        assert_eq!(
            r.verdict(),
            Verdict::Pass {
                passed: 2,
                skipped: 1
            }
        );
    }

    #[test]
    fn failing_test_is_named() {
        let log = PASS_LOG.replace("ktest: b::three ... ok (2.0 ms)", "ktest: b::three ... FAILED: boom").replace(
            "ktest: 2 passed, 0 failed, 1 skipped\r\nkernel-exit: pass",
            "ktest: 1 passed, 1 failed, 1 skipped\r\nkernel-exit: fail: 1 kernel test(s) failed",
        );
        let v = parse(&log).verdict();
        match &v {
            Verdict::Fail {
                failed_tests,
                reasons,
            } => {
                assert_eq!(failed_tests, &["b::three".to_string()]);
                assert!(reasons.iter().any(|r| r.contains("boom")));
            }
            other => panic!("{other:?}"),
        }
        assert!(v.to_string().contains("b::three"));
    }

    #[test]
    fn panic_in_test() {
        let log = "ktest: running 1 of 1 tests (filter 'x')\nktest: x::t ...\n\nPANIC on CPU 2: oops at a.rs:1\n\
ktest: x::t ... FAILED: panic on CPU 2: oops\nktest: panic in x::t: oops (a.rs:1)\nktest: 0 passed, 1 failed, 0 skipped\n\
kernel-exit: fail: panic on CPU 2: oops\n";
        let v = parse(log).verdict();
        assert!(
            matches!(&v, Verdict::Fail { failed_tests, .. } if failed_tests == &["x::t".to_string()]),
            "{v}"
        );
    }

    #[test]
    fn hang_is_incomplete_and_names_the_test() {
        let log = "ktest: running 2 of 2 tests (filter '')\nktest: a ...\nktest: a ... ok (1 ms)\nktest: b ...\n";
        assert_eq!(
            parse(log).verdict(),
            Verdict::Incomplete {
                running: Some("b".into()),
                reason: "no 'kernel-exit:' line (hang, reset or truncated log)".into()
            }
        );
    }

    #[test]
    fn main_job_and_contradictions() {
        assert_eq!(
            parse("RESULT {\"x\":1}\nkernel-exit: pass\n").verdict(),
            Verdict::Pass {
                passed: 0,
                skipped: 0
            }
        );
        let r = parse("RESULT {\"x\":1}\nkernel-exit: pass\n");
        assert_eq!(r.results, vec!["{\"x\":1}".to_string()]);
        // exception without exit line is a failure, not incomplete
        assert!(matches!(
            parse("EXCEPTION: #PF page fault\n").verdict(),
            Verdict::Fail { .. }
        ));
        // exit pass but summary disagrees with the lines
        let log = "ktest: running 1 of 1 tests (filter '')\nktest: a ...\nktest: a ... ok (1 ms)\nktest: 2 passed, 0 failed\nkernel-exit: pass\n";
        assert!(matches!(parse(log).verdict(), Verdict::Fail { .. }));
        // exit pass without summary in ktest mode
        let log = "ktest: running 1 of 1 tests (filter '')\nkernel-exit: pass\n";
        assert!(matches!(parse(log).verdict(), Verdict::Fail { .. }));
        // short summary form accepted
        let log = "ktest: running 1 of 1 tests (filter '')\nktest: a ...\nktest: a ... ok (1 ms)\nktest: 1 passed, 0 failed\nkernel-exit: pass\n";
        assert_eq!(
            parse(log).verdict(),
            Verdict::Pass {
                passed: 1,
                skipped: 0
            }
        );
        // empty log
        assert!(matches!(
            parse("").verdict(),
            Verdict::Incomplete { running: None, .. }
        ));
    }

    #[test]
    fn escape_sequences_are_stripped() {
        assert_eq!(
            clean_line("\x1b[0m\x1b[1;37mkernel-exit: pass\r"),
            "kernel-exit: pass"
        );
        assert_eq!(clean_line("a\x1bcb"), "ab");
    }
}
