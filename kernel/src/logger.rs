//! The `log` facade backend: serial console, with time since boot, CPU and level.

use core::sync::atomic::{AtomicUsize, Ordering};
use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger;

static LOGGER: Logger = Logger;
static DROPPED: AtomicUsize = AtomicUsize::new(0);

impl Log for Logger {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let ns = crate::time::now_ns();
        let lvl = match r.level() {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        };
        let target = r.target().strip_prefix("kernel::").unwrap_or(r.target());
        crate::println!(
            "[{:>4}.{:06} cpu{}] {} {}: {}",
            ns / 1_000_000_000,
            (ns / 1000) % 1_000_000,
            crate::arch::percpu::current_index(),
            lvl,
            target,
            r.args()
        );
    }

    fn flush(&self) {}
}

/// Parses `loglevel=`.
pub fn parse_level(s: &str) -> Option<LevelFilter> {
    Some(match s {
        "off" => LevelFilter::Off,
        "error" => LevelFilter::Error,
        "warn" => LevelFilter::Warn,
        "info" => LevelFilter::Info,
        "debug" => LevelFilter::Debug,
        "trace" => LevelFilter::Trace,
        _ => return None,
    })
}

/// Installs the logger.
pub fn init(level: LevelFilter) {
    if log::set_logger(&LOGGER).is_err() {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
    log::set_max_level(level);
}
