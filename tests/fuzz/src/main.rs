//! Fuzz harness for the parsers of data the kernel does not control.
//!
//! Each target drives one parser (or a parser and what consumes its result) with inputs a
//! seeded mutator ([`mutate`]) derives from the target's committed seed corpus
//! (`tests/fuzz/corpus/<target>/`). Every input runs under `catch_unwind`; a panic (with
//! debug assertions and overflow checks on: build with `--profile fuzz`, or the dev profile)
//! saves the input to `target/fuzz-findings/<target>-<hash>.bin`, prints the panic and ends
//! the run with status 1. An input that runs for more than 10 s is a hang: saved, status 1.
//!
//! ```text
//! cargo run --profile fuzz -p fuzz -- --target all --execs 5000000     # the long run
//! cargo run --profile fuzz -p fuzz -- --target dmar --seconds 5        # one target, bounded
//! cargo run --profile fuzz -p fuzz -- --target dmar --replay FILE      # re-run one input
//! cargo run --profile fuzz -p fuzz -- --list
//! ```
//!
//! Options: `--target NAME|all` (default all), `--execs N` (per target, default 100000),
//! `--seconds S` (per target; stops at whichever of execs/seconds comes first), `--seed N`
//! (default 1; the same seed and corpus give the same inputs), `--corpus DIR`, `--findings
//! DIR`. Output: one line per target with executions, executions per second and findings.
#![forbid(unsafe_code)]

mod mutate;
mod targets;

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mutate::Rng;
use targets::Target;

struct Options {
    targets: Vec<&'static Target>,
    execs: u64,
    seconds: Option<u64>,
    seed: u64,
    corpus: PathBuf,
    findings: PathBuf,
    replay: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: fuzz [--target NAME|all] [--execs N] [--seconds S] [--seed N] [--corpus DIR] \
     [--findings DIR] [--replay FILE] [--list]"
}

fn parse_args() -> Result<Option<Options>, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        targets: targets::ALL.iter().collect(),
        execs: 100_000,
        seconds: None,
        seed: 1,
        corpus: root.join("corpus"),
        findings: root.join("../../target/fuzz-findings"),
        replay: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value\n{}", usage()));
        let number = |v: String| {
            v.replace('_', "")
                .parse::<u64>()
                .map_err(|_| format!("{a}: '{v}' is not a number"))
        };
        match a.as_str() {
            "--target" => {
                let t = value()?;
                o.targets = if t == "all" {
                    targets::ALL.iter().collect()
                } else {
                    t.split(',')
                        .map(|n| {
                            targets::ALL
                                .iter()
                                .find(|x| x.name == n)
                                .ok_or(format!("no target '{n}' (--list shows them)"))
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--execs" => o.execs = number(value()?)?,
            "--seconds" => o.seconds = Some(number(value()?)?),
            "--seed" => o.seed = number(value()?)?,
            "--corpus" => o.corpus = value()?.into(),
            "--findings" => o.findings = value()?.into(),
            "--replay" => o.replay = Some(value()?.into()),
            "--list" => {
                for t in targets::ALL {
                    println!("{:<14} {}", t.name, t.about);
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!("{}", usage());
                return Ok(None);
            }
            _ => return Err(format!("unknown option '{a}'\n{}", usage())),
        }
    }
    Ok(Some(o))
}

/// The message and location of the last panic (the hook keeps the terminal quiet).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = match info.payload().downcast_ref::<&str>() {
            Some(s) => (*s).to_string(),
            None => info
                .payload()
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_else(|| "(non-string payload)".into()),
        };
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        if let Ok(mut p) = LAST_PANIC.lock() {
            *p = format!("{msg} at {at}");
        }
    }));
}

/// Fails loudly if this build would not catch overflows (a release build without the
/// `fuzz` profile): the harness exists to find them.
fn checks_are_on() -> bool {
    let r = panic::catch_unwind(|| {
        let x = std::hint::black_box(u8::MAX);
        std::hint::black_box(x + std::hint::black_box(1))
    });
    r.is_err() && cfg!(debug_assertions)
}

fn load_corpus(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let corpus: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display())))
        .collect::<Result<_, _>>()?;
    if corpus.is_empty() {
        return Err(format!("{}: empty seed corpus", dir.display()));
    }
    Ok(corpus)
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn save_finding(dir: &Path, target: &str, data: &[u8]) -> PathBuf {
    let _ = std::fs::create_dir_all(dir);
    let p = dir.join(format!("{target}-{:016x}.bin", fnv(data)));
    if let Err(e) = std::fs::write(&p, data) {
        eprintln!("cannot save {}: {e}", p.display());
    }
    p
}

/// The input being executed and how many have finished, for the hang watchdog.
struct Progress {
    input: Mutex<Vec<u8>>,
    done: AtomicU64,
    running: AtomicBool,
}

const HANG: Duration = Duration::from_secs(10);

fn watchdog(progress: Arc<Progress>, target: &'static str, findings: PathBuf) {
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        while progress.running.load(Ordering::Relaxed) {
            std::thread::sleep(HANG);
            let now = progress.done.load(Ordering::Relaxed);
            if now == last && progress.running.load(Ordering::Relaxed) {
                let input = progress.input.lock().map(|i| i.clone()).unwrap_or_default();
                let p = save_finding(&findings, target, &input);
                eprintln!(
                    "{target}: HANG: one input ran for more than {} s; saved as {}",
                    HANG.as_secs(),
                    p.display()
                );
                std::process::exit(1);
            }
            last = now;
        }
    });
}

struct Outcome {
    execs: u64,
    elapsed: Duration,
    finding: Option<(PathBuf, String)>,
}

fn fuzz_target(t: &'static Target, o: &Options) -> Result<Outcome, String> {
    let corpus = load_corpus(&o.corpus.join(t.name))?;
    // Every seed must run cleanly before mutations start.
    for (i, seed) in corpus.iter().enumerate() {
        if panic::catch_unwind(AssertUnwindSafe(|| (t.run)(seed))).is_err() {
            let msg = LAST_PANIC.lock().map(|p| p.clone()).unwrap_or_default();
            return Err(format!("{}: seed {i} panics: {msg}", t.name));
        }
    }
    let progress = Arc::new(Progress {
        input: Mutex::new(Vec::new()),
        done: AtomicU64::new(0),
        running: AtomicBool::new(true),
    });
    watchdog(progress.clone(), t.name, o.findings.clone());
    // Each target has its own stream, so `--target x` reproduces what `all` ran for x.
    let mut rng = Rng::new(o.seed ^ fnv(t.name.as_bytes()));
    let start = Instant::now();
    let deadline = o.seconds.map(|s| start + Duration::from_secs(s));
    let mut input = Vec::new();
    let mut execs = 0;
    let mut finding = None;
    while execs < o.execs {
        if execs % 1024 == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        input.clear();
        input.extend_from_slice(&corpus[rng.below(corpus.len())]);
        let other = &corpus[rng.below(corpus.len())];
        mutate::mutate(&mut rng, &mut input, other, t.dict);
        if let Ok(mut cur) = progress.input.lock() {
            cur.clear();
            cur.extend_from_slice(&input);
        }
        let r = panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&input)));
        execs += 1;
        progress.done.store(execs, Ordering::Relaxed);
        if r.is_err() {
            let msg = LAST_PANIC.lock().map(|p| p.clone()).unwrap_or_default();
            finding = Some((save_finding(&o.findings, t.name, &input), msg));
            break;
        }
    }
    progress.running.store(false, Ordering::Relaxed);
    Ok(Outcome {
        execs,
        elapsed: start.elapsed(),
        finding,
    })
}

fn main() -> ExitCode {
    let o = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    install_panic_hook();
    if !checks_are_on() {
        eprintln!(
            "this build has no overflow checks or debug assertions: use `--profile fuzz` (or the dev profile)"
        );
        return ExitCode::from(2);
    }
    if let Some(file) = &o.replay {
        let data = match std::fs::read(file) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                return ExitCode::from(2);
            }
        };
        let mut failed = false;
        for t in &o.targets {
            match panic::catch_unwind(AssertUnwindSafe(|| (t.run)(&data))) {
                Ok(()) => println!("{}: ok", t.name),
                Err(_) => {
                    failed = true;
                    let msg = LAST_PANIC.lock().map(|p| p.clone()).unwrap_or_default();
                    println!("{}: PANIC: {msg}", t.name);
                }
            }
        }
        return if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let mut failed = false;
    let mut total = 0;
    for t in &o.targets {
        match fuzz_target(t, &o) {
            Ok(r) => {
                total += r.execs;
                let rate = r.execs as f64 / r.elapsed.as_secs_f64().max(1e-9);
                match &r.finding {
                    None => println!(
                        "fuzz: {:<14} {:>10} execs in {:>7.1} s ({:>9.0} execs/s), 0 panics",
                        t.name,
                        r.execs,
                        r.elapsed.as_secs_f64(),
                        rate
                    ),
                    Some((path, msg)) => {
                        failed = true;
                        println!(
                            "fuzz: {:<14} PANIC after {} execs: {msg}\n      input saved as {} (replay: --target {} --replay FILE)",
                            t.name,
                            r.execs,
                            path.display(),
                            t.name
                        );
                    }
                }
            }
            Err(e) => {
                failed = true;
                println!("fuzz: {e}");
            }
        }
    }
    println!(
        "fuzz: {} target(s), {total} executions, {}",
        o.targets.len(),
        if failed { "FAILED" } else { "no panics" }
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
