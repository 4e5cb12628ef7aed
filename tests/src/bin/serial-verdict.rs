//! Judges a kernel serial log: a file, a serial device (e.g. /dev/ttyS0, /dev/ttyUSB0 of
//! a bare-metal rig), or `-` for stdin. Same parser and rules as the QEMU boot tests.
//!
//! ```text
//! serial-verdict [--timeout SEC] [--quiet] <FILE | DEVICE | ->
//! ```
//!
//! Lines are echoed as they arrive (unless `--quiet`); reading stops at the kernel's
//! `kernel-exit:` line, at end of file, or after `--timeout` seconds (default: none for
//! files, 600 for devices and stdin). Configure a device first, e.g.
//! `stty -F /dev/ttyUSB0 115200 raw -echo`.
//!
//! Exit status: 0 pass, 1 fail, 2 no verdict (hang, reset, truncated log), 3 usage or I/O error.

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qemu_tests::verdict::{self, Verdict};

fn usage() -> ! {
    eprintln!("usage: serial-verdict [--timeout SEC] [--quiet] <FILE | DEVICE | ->");
    std::process::exit(3);
}

fn main() {
    let mut timeout: Option<u64> = None;
    let mut quiet = false;
    let mut source: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--timeout" => {
                timeout = Some(
                    args.next()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| usage()),
                );
            }
            "--quiet" | "-q" => quiet = true,
            "-h" | "--help" => usage(),
            _ if source.is_none() => source = Some(a),
            _ => usage(),
        }
    }
    let source = source.unwrap_or_else(|| usage());
    let (reader, is_stream): (Box<dyn Read + Send>, bool) = if source == "-" {
        (Box::new(std::io::stdin()), true)
    } else {
        let f = std::fs::File::open(&source).unwrap_or_else(|e| {
            eprintln!("serial-verdict: cannot open {source}: {e}");
            std::process::exit(3);
        });
        let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        (Box::new(f), !is_file)
    };
    let limit = timeout
        .or(if is_stream { Some(600) } else { None })
        .map(Duration::from_secs);

    // Read on a thread so a silent device cannot block past the timeout.
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(String::from_utf8_lossy(&buf).into_owned()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut log = String::new();
    let mut timed_out = false;
    loop {
        let wait = match limit {
            Some(l) => match l.checked_sub(start.elapsed()) {
                Some(w) => w,
                None => {
                    timed_out = true;
                    break;
                }
            },
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if !quiet {
                    print!("{line}");
                }
                let done = verdict::clean_line(&line).contains("kernel-exit: ");
                log.push_str(&line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if limit.is_some() {
                    timed_out = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let v = verdict::parse(&log).verdict();
    eprintln!(
        "serial-verdict: {v}{}",
        if timed_out {
            " (stopped reading at the timeout)"
        } else {
            ""
        }
    );
    std::process::exit(match v {
        Verdict::Pass { .. } => 0,
        Verdict::Fail { .. } => 1,
        Verdict::Incomplete { .. } => 2,
    });
}
