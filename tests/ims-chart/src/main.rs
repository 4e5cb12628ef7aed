//! `ims-chart`: the IMS benchmark's chart from a serial log (README "IMS benchmark").
//!
//! ```text
//! ims-chart [-o FILE.svg] [LOG | -]
//! ```
//!
//! Reads the log (a file, or stdin when LOG is `-` or absent), takes its
//! `RESULT {"kind":"ims-bench",…}` lines and writes the SVG to FILE (replaced only once the
//! chart is complete) or to stdout. A one-line account of what was plotted goes to stderr.
//!
//! Exit status: 0 chart written, 1 the log cannot be charted (the reason is printed),
//! 2 usage or I/O error.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "usage: ims-chart [-o FILE.svg] [LOG | -]";

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("ims-chart: {msg}");
    ExitCode::from(code)
}

fn write_atomically(path: &Path, data: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let r = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn main() -> ExitCode {
    let mut out: Option<PathBuf> = None;
    let mut input: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-o" | "--output" => match args.next() {
                Some(p) => out = Some(PathBuf::from(p)),
                None => return fail(2, format!("{a} needs a file\n{USAGE}")),
            },
            _ if a.starts_with('-') && a != "-" => {
                return fail(2, format!("unknown option '{a}'\n{USAGE}"));
            }
            _ if input.is_none() => input = Some(a),
            _ => return fail(2, format!("more than one log given\n{USAGE}")),
        }
    }
    let mut bytes = Vec::new();
    let source = input.unwrap_or_else(|| "-".into());
    let read = if source == "-" {
        std::io::stdin().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(&source).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    if let Err(e) = read {
        return fail(2, format!("cannot read {source}: {e}"));
    }
    // A serial capture may hold bytes that are not UTF-8 (firmware noise): keep the rest.
    let log = String::from_utf8_lossy(&bytes);
    let chart = ims_chart::parse_log(&log)
        .and_then(|b| ims_chart::render_svg(&b).map(|svg| (svg, ims_chart::summary(&b))));
    let (svg, summary) = match chart {
        Ok(c) => c,
        Err(e) => return fail(1, format!("{source}: {e}")),
    };
    match &out {
        Some(path) => {
            if let Err(e) = write_atomically(path, &svg) {
                return fail(2, format!("cannot write {}: {e}", path.display()));
            }
            eprintln!("ims-chart: wrote {}: {summary}", path.display());
        }
        None => {
            if let Err(e) = std::io::stdout().write_all(svg.as_bytes()) {
                return fail(2, format!("cannot write the SVG to stdout: {e}"));
            }
            eprintln!("ims-chart: {summary}");
        }
    }
    ExitCode::SUCCESS
}
