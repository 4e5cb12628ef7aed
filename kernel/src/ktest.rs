//! In-kernel tests over the serial console.
//!
//! [`ktest!`](crate::ktest) registers a test in the `.ktest` linker section (no nightly
//! test framework). With `ktest` on the command line the kernel runs the tests after
//! bring-up instead of the main job:
//!
//! * `ktest` or `ktest=` runs every normal test; `ktest=a,b` runs tests whose name
//!   contains `a` or `b`. Tests declared `explicit` run only when a filter element equals
//!   their full name or their last path segment (e.g. the deliberately failing test).
//! * `ktest.list` prints the registered tests and exits.
//!
//! Output, one line each: `ktest: <name> ...` when a test starts, then
//! `ktest: <name> ... ok (<ms> ms)`, `ktest: <name> ... FAILED: <reason>` or
//! `ktest: <name> ... skipped: <reason>`, and finally exactly
//! `ktest: N passed, M failed, K skipped`. A panic or unexpected exception inside a test
//! prints `ktest: <name> ... FAILED: <reason>` and the summary, then fails the run.
//!
//! A test body returns `()` (fails by panicking), `Result<(), E: Display>`, or an
//! [`Outcome`] (use [`skip`] to skip with a reason).

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicPtr, AtomicU32, Ordering};

/// A registered test.
#[derive(Debug)]
#[repr(C)]
pub struct KTest {
    /// `module::path::name`.
    pub name: &'static str,
    /// The wrapped test function.
    pub func: fn() -> Outcome,
    /// Runs only when named exactly.
    pub explicit: bool,
    /// Source file.
    pub file: &'static str,
    /// Source line.
    pub line: u32,
}

/// Result of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed with a reason.
    Fail(String),
    /// Skipped with a reason.
    Skip(String),
}

/// Skips the current test (return it from the test body).
pub fn skip(reason: impl Into<String>) -> Outcome {
    Outcome::Skip(reason.into())
}

/// Conversion of test return values.
pub trait IntoOutcome {
    /// The outcome.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::Pass
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl<E: fmt::Display> IntoOutcome for Result<(), E> {
    fn into_outcome(self) -> Outcome {
        match self {
            Ok(()) => Outcome::Pass,
            Err(e) => Outcome::Fail(e.to_string()),
        }
    }
}

/// Registers a kernel test.
///
/// ```ignore
/// ktest!(fn frames_are_zeroed() { assert!(...) });
/// ktest!(fn needs_hpet() -> Outcome { if no_hpet { return skip("no HPET") } ...; Outcome::Pass });
/// ktest!(explicit fn deliberately_fails() { panic!("on purpose") });
/// ```
#[macro_export]
macro_rules! ktest {
    (fn $name:ident() $body:block) => {
        $crate::ktest!(@reg false, $name, (), $body);
    };
    (fn $name:ident() -> $ret:ty $body:block) => {
        $crate::ktest!(@reg false, $name, $ret, $body);
    };
    (explicit fn $name:ident() $body:block) => {
        $crate::ktest!(@reg true, $name, (), $body);
    };
    (explicit fn $name:ident() -> $ret:ty $body:block) => {
        $crate::ktest!(@reg true, $name, $ret, $body);
    };
    (@reg $explicit:expr, $name:ident, $ret:ty, $body:block) => {
        fn $name() -> $ret $body
        const _: () = {
            #[used]
            #[unsafe(link_section = ".ktest")]
            static ENTRY: $crate::ktest::KTest = $crate::ktest::KTest {
                name: concat!(module_path!(), "::", stringify!($name)),
                func: {
                    fn wrapper() -> $crate::ktest::Outcome {
                        $crate::ktest::IntoOutcome::into_outcome($name())
                    }
                    wrapper
                },
                explicit: $explicit,
                file: file!(),
                line: line!(),
            };
        };
    };
}

unsafe extern "C" {
    // Declared as bytes: only the addresses matter.
    static __ktest_start: u8;
    static __ktest_end: u8;
}

/// Every registered test.
pub fn all() -> &'static [KTest] {
    // SAFETY: the linker script brackets `.ktest`, which holds only `KTest` statics
    // (size a multiple of 8, section aligned to 8, so they are contiguous).
    unsafe {
        let s = (&raw const __ktest_start).cast::<KTest>();
        let e = &raw const __ktest_end;
        core::slice::from_raw_parts(s, (e as usize - s as usize) / core::mem::size_of::<KTest>())
    }
}

/// Name without the crate prefix.
pub fn short_name(t: &KTest) -> &'static str {
    t.name.strip_prefix("kernel::").unwrap_or(t.name)
}

fn selected(t: &KTest, filters: &[&str]) -> bool {
    let name = short_name(t);
    let last = name.rsplit("::").next().unwrap_or(name);
    if t.explicit {
        filters.iter().any(|f| *f == name || *f == last)
    } else {
        filters.is_empty() || filters.iter().any(|f| name.contains(f))
    }
}

static CURRENT: AtomicPtr<KTest> = AtomicPtr::new(core::ptr::null_mut());
static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);

/// The test currently running, if any.
pub fn current() -> Option<&'static KTest> {
    let p = CURRENT.load(Ordering::Acquire);
    // SAFETY: CURRENT only ever holds pointers into the 'static `.ktest` array.
    (!p.is_null()).then(|| unsafe { &*p })
}

fn summary() {
    crate::println!(
        "ktest: {} passed, {} failed, {} skipped",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
        SKIPPED.load(Ordering::Relaxed)
    );
}

/// Called on a fatal error: fails the running test (if any) and prints the summary.
pub(crate) fn abort_current(reason: fmt::Arguments<'_>) {
    if let Some(t) = current() {
        let n = short_name(t);
        let reason = crate::console::OneLine(reason);
        crate::println!("ktest: {n} ... FAILED: {reason}");
        crate::println!("ktest: panic in {n}: {reason} ({}:{})", t.file, t.line);
        FAILED.fetch_add(1, Ordering::Relaxed);
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        summary();
    }
}

/// Runs the selected tests and ends the run with the verdict.
pub fn run() -> ! {
    let filter = crate::cmdline::get("ktest").unwrap_or("");
    let filters: Vec<&str> = filter
        .split(',')
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .collect();
    let mut tests: Vec<&'static KTest> = all().iter().collect();
    tests.sort_by_key(|t| t.name);
    if crate::cmdline::has("ktest.list") {
        for t in &tests {
            crate::println!(
                "ktest-list: {}{}",
                short_name(t),
                if t.explicit { " [explicit]" } else { "" }
            );
        }
        crate::exit::pass();
    }
    let chosen: Vec<&'static KTest> = tests
        .iter()
        .copied()
        .filter(|t| selected(t, &filters))
        .collect();
    crate::println!(
        "ktest: running {} of {} tests (filter '{}')",
        chosen.len(),
        tests.len(),
        filter
    );
    for t in &chosen {
        let n = short_name(t);
        crate::println!("ktest: {n} ...");
        CURRENT.store(
            core::ptr::from_ref::<KTest>(*t).cast_mut(),
            Ordering::Release,
        );
        let t0 = crate::time::now_ns();
        let outcome = (t.func)();
        let us = (crate::time::now_ns() - t0) / 1000;
        CURRENT.store(core::ptr::null_mut(), Ordering::Release);
        match outcome {
            Outcome::Pass => {
                PASSED.fetch_add(1, Ordering::Relaxed);
                crate::println!("ktest: {n} ... ok ({}.{:03} ms)", us / 1000, us % 1000);
            }
            Outcome::Fail(why) => {
                FAILED.fetch_add(1, Ordering::Relaxed);
                crate::println!(
                    "ktest: {n} ... FAILED: {}",
                    crate::console::OneLine(format_args!("{why}"))
                );
            }
            Outcome::Skip(why) => {
                SKIPPED.fetch_add(1, Ordering::Relaxed);
                crate::println!("ktest: {n} ... skipped: {why}");
            }
        }
    }
    summary();
    let failed = FAILED.load(Ordering::Relaxed);
    if chosen.is_empty() {
        crate::exit::fail(format_args!("no kernel test matches the filter '{filter}'"));
    }
    if failed == 0 {
        crate::exit::pass()
    } else {
        crate::exit::fail(format_args!("{failed} kernel test(s) failed"))
    }
}
