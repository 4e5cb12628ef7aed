//! Host tests of the IMS benchmark chart: parsing, aggregation, errors, and the SVG's
//! structure (elements and their attributes, not pixels).
//!
//! `fixtures/ims-bench-release-3cpu.serial` is the serial log of a real
//! `./qemu-run.sh --ims-bench --release` run (4 CPUs) cut down to CPUs 0–2: the first line,
//! the `boot` RESULT line, and the benchmark section without CPU 3's lines and the demux
//! table. CPU 0 holds two more system vectors than the others, so the per-handle mode stops
//! at 187 handles there and at 189 on CPUs 1 and 2.

use std::io::Write;
use std::process::{Command, Stdio};

use ims_chart::{ChartError, Figure, mode_colors, parse_log, render_svg};

const FIXTURE: &str = include_str!("fixtures/ims-bench-release-3cpu.serial");

/// Every `<tag …/>` element of the SVG, as its attribute list.
fn elements<'a>(svg: &'a str, tag: &str) -> Vec<Vec<(&'a str, &'a str)>> {
    let open = format!("<{tag} ");
    svg.match_indices(&open)
        .map(|(i, _)| {
            let rest = &svg[i + open.len()..];
            let body = &rest[..rest.find('>').expect("element closes")];
            let mut attrs = Vec::new();
            let mut s = body;
            while let Some(eq) = s.find("=\"") {
                let key = s[..eq].trim();
                let after = &s[eq + 2..];
                let end = after.find('"').expect("attribute value closes");
                attrs.push((key, &after[..end]));
                s = &after[end + 1..];
            }
            attrs
        })
        .collect()
}

fn attr<'a>(el: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    el.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// The mode lines: polylines drawn in `color` (the mesh, axes and ticks are grey or black;
/// legend samples are rectangles).
fn mode_lines<'a>(svg: &'a str, color: &str) -> Vec<Vec<(&'a str, &'a str)>> {
    elements(svg, "polyline")
        .into_iter()
        .filter(|e| attr(e, "stroke") == Some(color))
        .collect()
}

fn point_count(polyline: &[(&str, &str)]) -> usize {
    attr(polyline, "points")
        .expect("points")
        .split_whitespace()
        .count()
}

fn color_of(modes: &[String], mode: &str) -> String {
    mode_colors(modes)
        .into_iter()
        .find(|(m, _)| m == mode)
        .map(|(_, c)| c)
        .expect("mode has a colour")
}

/// Texts of the SVG (legend labels, captions, notes).
fn texts(svg: &str) -> Vec<&str> {
    svg.match_indices("<text ")
        .map(|(i, _)| {
            let rest = &svg[i..];
            let start = rest.find('>').unwrap() + 1;
            let end = rest.find("</text>").unwrap();
            rest[start..end].trim()
        })
        .collect()
}

/// The fixture with every `"mode":"shared"` line copied as mode `name`, its costs scaled by
/// `cost_factor` (a stand-in for a mode the kernel does not print yet).
fn with_extra_mode(name: &str, cost_factor: u64) -> String {
    let mut out = String::new();
    for line in FIXTURE.lines() {
        out.push_str(line);
        out.push('\n');
        if line.contains("\"kind\":\"ims-bench\"") && line.contains("\"mode\":\"shared\"") {
            let mut copy = line.replace("\"mode\":\"shared\"", &format!("\"mode\":\"{name}\""));
            if let Some(i) = copy.find("\"cost_per_completion\":") {
                let start = i + "\"cost_per_completion\":".len();
                let end = start + copy[start..].find(',').unwrap();
                let v: u64 = copy[start..end].parse().unwrap();
                copy.replace_range(start..end, &(v * cost_factor / 100).to_string());
            }
            out.push_str(&copy);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_fixture_parses_into_both_modes_on_three_cpus() {
    let b = parse_log(FIXTURE).expect("fixture parses");
    assert_eq!(b.modes, ["shared", "per-handle"]);
    assert_eq!(b.cpus().into_iter().collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(b.cost_unit.as_deref(), Some("guest_instructions"));
    // Per CPU and mode: 5 allocation, 7 demux and 4 burst figures (the boot line and the
    // summary line are other kinds).
    assert_eq!(b.records.len(), 3 * 2 * (5 + 7 + 4));
    let allocs = b
        .records
        .iter()
        .filter(|r| matches!(r.figure, Figure::Allocation(_)))
        .count();
    assert_eq!(allocs, 3 * 2 * 5);

    let demux = b.demux_series();
    assert_eq!(demux.len(), 2);
    assert_eq!(demux[0].mode, "shared");
    assert_eq!(
        demux[0].points,
        [(1, 678.0), (16, 1008.0), (256, 6351.0), (2048, 46363.0)]
    );
    assert!(demux[0].unavailable.is_empty());
    assert_eq!(demux[1].mode, "per-handle");
    assert_eq!(demux[1].points, [(1, 486.0), (16, 486.0)]);
    let missing: Vec<u64> = demux[1].unavailable.iter().map(|u| u.0).collect();
    assert_eq!(missing, [256, 2048]);
    assert!(
        demux[1].unavailable[0]
            .1
            .contains("no free interrupt vector"),
        "{:?}",
        demux[1].unavailable
    );

    let alloc = b.allocation_series();
    assert_eq!(
        alloc[0].points,
        [(1, 1.0), (16, 1.0), (204, 1.0), (256, 1.0), (2048, 1.0)]
    );
    assert!(alloc[0].refused.is_empty());
    // 187 on CPU 0, 189 on CPUs 1 and 2: the lower median of three is 189.
    assert_eq!(
        alloc[1].points,
        [
            (1, 1.0),
            (16, 16.0),
            (204, 189.0),
            (256, 189.0),
            (2048, 189.0)
        ]
    );
    let refused: Vec<u64> = alloc[1].refused.iter().map(|r| r.0).collect();
    assert_eq!(refused, [204, 256, 2048]);
}

#[test]
fn the_aggregate_is_the_lower_median_over_cpus() {
    // Only CPUs 0 and 1: the per-handle plateau is 187 and 189, the lower median 187.
    let two: String = FIXTURE
        .lines()
        .filter(|l| !l.contains("\"cpu\":2,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = parse_log(&two).unwrap();
    assert_eq!(b.allocation_series()[1].points[2], (204, 187.0));
    // One CPU's cost changed: the median of 678, 678, 9999 is 678, not the mean.
    let changed = FIXTURE.replacen(
        "\"cost_per_completion\":678,",
        "\"cost_per_completion\":9999,",
        1,
    );
    let b = parse_log(&changed).unwrap();
    assert_eq!(b.demux_series()[0].points[0], (1, 678.0));
}

#[test]
fn the_svg_has_one_line_per_mode_and_panel() {
    let b = parse_log(FIXTURE).unwrap();
    let svg = render_svg(&b).unwrap();
    assert!(svg.starts_with("<svg "), "{}", &svg[..80]);
    assert!(svg.trim_end().ends_with("</svg>"));
    let root = &elements(&svg, "svg")[0];
    assert_eq!(attr(root, "xmlns"), Some("http://www.w3.org/2000/svg"));
    assert!(attr(root, "viewBox").is_some());
    for mode in ["shared", "per-handle"] {
        let lines = mode_lines(&svg, &color_of(&b.modes, mode));
        // Panel (a) then panel (b).
        assert_eq!(lines.len(), 2, "{mode}: {lines:?}");
        let want_a = if mode == "shared" { 4 } else { 2 };
        assert_eq!(point_count(&lines[0]), want_a, "{mode} demux line");
        assert_eq!(point_count(&lines[1]), 5, "{mode} allocation line");
        // A dot on every point.
        let dots = elements(&svg, "circle")
            .into_iter()
            .filter(|c| attr(c, "fill") == Some(color_of(&b.modes, mode).as_str()))
            .count();
        assert_eq!(dots, want_a + 5, "{mode}");
    }
    let t = texts(&svg);
    assert!(t.contains(&"shared"), "{t:?}");
    assert!(
        t.iter()
            .any(|s| s.starts_with("per-handle (no figure at A = 256, 2048")),
        "{t:?}"
    );
    assert!(t.iter().any(|s| s.contains("armed handles A")), "{t:?}");
    assert!(t.iter().any(|s| s.contains("guest instructions")), "{t:?}");
    assert!(t.iter().any(|s| s.contains("vectors used")), "{t:?}");
    assert!(t.contains(&"refused from N = 204"), "{t:?}");
    // The per-handle plateau's value is a tick of panel (b).
    assert!(t.contains(&"189"), "{t:?}");
    // The three refused allocation points carry a cross (two <line>s each, 2 px, black),
    // plus the legend's sample.
    let crosses = elements(&svg, "line")
        .into_iter()
        .filter(|l| attr(l, "stroke") == Some("#000000") && attr(l, "stroke-width") == Some("2"))
        .count();
    assert_eq!(crosses, 2 * (3 + 1));
    // Deterministic: the committed chart does not change unless the figures do.
    assert_eq!(render_svg(&b).unwrap(), svg);
}

#[test]
fn a_new_mode_gets_its_own_line_without_any_change() {
    let log = with_extra_mode("posted", 50);
    let b = parse_log(&log).unwrap();
    assert_eq!(b.modes, ["shared", "posted", "per-handle"]);
    let posted = &b.demux_series()[1];
    assert_eq!(posted.mode, "posted");
    assert_eq!(posted.points[0], (1, 339.0));
    let svg = render_svg(&b).unwrap();
    let colors = mode_colors(&b.modes);
    let distinct: std::collections::BTreeSet<&String> = colors.iter().map(|c| &c.1).collect();
    assert_eq!(distinct.len(), 3, "{colors:?}");
    for (mode, color) in &colors {
        assert_eq!(mode_lines(&svg, color).len(), 2, "{mode}");
    }
    assert!(texts(&svg).contains(&"posted"));
    // A mode nobody planned for gets a palette colour, still one line per panel.
    let b = parse_log(&with_extra_mode("experimental", 80)).unwrap();
    let svg = render_svg(&b).unwrap();
    let c = color_of(&b.modes, "experimental");
    assert!(!["#0072B2", "#D55E00"].contains(&c.as_str()), "{c}");
    assert_eq!(mode_lines(&svg, &c).len(), 2);
}

#[test]
fn missing_modes_and_figures_leave_their_lines_out() {
    // Only the shared mode.
    let shared: String = FIXTURE
        .lines()
        .filter(|l| !l.contains("\"mode\":\"per-handle\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = parse_log(&shared).unwrap();
    assert_eq!(b.modes, ["shared"]);
    let svg = render_svg(&b).unwrap();
    assert_eq!(mode_lines(&svg, &color_of(&b.modes, "shared")).len(), 2);
    // No per-handle colour anywhere.
    assert!(!svg.contains("#D55E00"));

    // Only allocation figures: panel (a) says so, panel (b) has both lines.
    let alloc_only: String = FIXTURE
        .lines()
        .filter(|l| !l.contains("\"figure\":\"demux\"") && !l.contains("\"figure\":\"burst\""))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = parse_log(&alloc_only).unwrap();
    assert_eq!(b.cost_unit, None);
    assert!(b.demux_series().is_empty());
    let svg = render_svg(&b).unwrap();
    assert!(texts(&svg).contains(&"no demux figure in the log"));
    for mode in ["shared", "per-handle"] {
        let lines = mode_lines(&svg, &color_of(&b.modes, mode));
        assert_eq!(lines.len(), 1, "{mode}");
        assert_eq!(point_count(&lines[0]), 5);
    }

    // A mode with demux figures but no allocation figure: a line in (a) only.
    let no_alloc: String = FIXTURE
        .lines()
        .filter(|l| !(l.contains("\"mode\":\"shared\"") && l.contains("\"allocation\"")))
        .map(|l| format!("{l}\n"))
        .collect();
    let b = parse_log(&no_alloc).unwrap();
    let svg = render_svg(&b).unwrap();
    let lines = mode_lines(&svg, &color_of(&b.modes, "shared"));
    assert_eq!(lines.len(), 1);
    assert_eq!(point_count(&lines[0]), 4);

    // A mode whose demux figures are all unavailable: named in panel (a)'s legend and notes,
    // no line there.
    let all_null: String = FIXTURE
        .lines()
        .filter(|l| {
            !(l.contains("\"mode\":\"per-handle\"")
                && l.contains("\"figure\":\"demux\"")
                && !l.contains("null"))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let b = parse_log(&all_null).unwrap();
    let ph = &b.demux_series()[1];
    assert!(ph.points.is_empty());
    assert_eq!(ph.unavailable.len(), 2);
    let svg = render_svg(&b).unwrap();
    let lines = mode_lines(&svg, &color_of(&b.modes, "per-handle"));
    assert_eq!(lines.len(), 1, "only panel (b)");
    assert_eq!(point_count(&lines[0]), 5);
    assert!(
        texts(&svg)
            .iter()
            .any(|t| t.starts_with("per-handle (no figure at A = 256, 2048"))
    );

    // A zero has no place on a log axis: left out and named, not drawn at -infinity.
    let zero = FIXTURE.replace(
        "\"handles_requested\":16,\"handles_allocated\":16,\"vectors_cpu\":1,",
        "\"handles_requested\":16,\"handles_allocated\":16,\"vectors_cpu\":0,",
    );
    let b = parse_log(&zero).unwrap();
    let shared = &b.allocation_series()[0];
    assert_eq!(shared.points.len(), 4, "{shared:?}");
    assert_eq!(
        shared.unavailable,
        [(16, "0 is not drawn on a log scale".to_string())]
    );
    let svg = render_svg(&b).unwrap();
    assert!(
        texts(&svg).contains(&"(b) shared: no figure at N = 16: 0 is not drawn on a log scale"),
        "{:?}",
        texts(&svg)
    );
    let lines = mode_lines(&svg, &color_of(&b.modes, "shared"));
    assert_eq!(point_count(&lines[1]), 4);

    // A figure the tool does not draw (a future name) is skipped, not an error.
    let future = format!(
        "{FIXTURE}RESULT {{\"kind\":\"ims-bench\",\"figure\":\"posted-scan\",\"mode\":\"posted\",\"cpu\":0,\"pids_scanned_per_interrupt\":1}}\n"
    );
    assert_eq!(parse_log(&future).unwrap().modes, ["shared", "per-handle"]);
}

#[test]
fn bad_logs_get_a_clear_error() {
    // A truncated ims-bench line (a capture cut mid-line) names its line.
    let lines: Vec<&str> = FIXTURE.lines().collect();
    let idx = lines
        .iter()
        .position(|l| l.contains("\"figure\":\"demux\""))
        .unwrap();
    let mut cut: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let keep = cut[idx].len() - 40;
    cut[idx].truncate(keep);
    let e = parse_log(&cut.join("\n")).unwrap_err();
    assert!(
        matches!(&e, ChartError::Malformed { line, .. } if *line == idx + 1),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "line {}: malformed ims-bench RESULT line: not valid JSON",
            idx + 1
        )),
        "{msg}"
    );

    // A missing field is named.
    let no_cpu = "RESULT {\"kind\":\"ims-bench\",\"figure\":\"demux\",\"mode\":\"shared\",\"handles\":1,\"armed\":1,\"cost_per_completion\":5,\"cost_unit\":\"guest_instructions\"}";
    let e = parse_log(no_cpu).unwrap_err();
    assert_eq!(
        e.to_string(),
        "line 1: malformed ims-bench RESULT line: no field \"cpu\""
    );
    // A wrong type is named.
    let bad = no_cpu.replace("\"handles\":1", "\"cpu\":0,\"handles\":\"one\"");
    assert_eq!(
        parse_log(&bad).unwrap_err().to_string(),
        "line 1: malformed ims-bench RESULT line: field \"handles\" is not a non-negative integer"
    );
    let neg = no_cpu.replace(
        "\"cost_per_completion\":5",
        "\"cpu\":0,\"cost_per_completion\":-5",
    );
    assert!(
        parse_log(&neg)
            .unwrap_err()
            .to_string()
            .contains("\"cost_per_completion\" is neither a non-negative number nor null")
    );
    // A malformed line of another kind is not this tool's business.
    let other = format!("RESULT {{\"kind\":\"boot\",\"cpus\":\n{FIXTURE}");
    assert!(parse_log(&other).is_ok());

    // Two runs in one log.
    let twice = format!("{FIXTURE}{FIXTURE}");
    let Err(e) = parse_log(&twice) else {
        panic!("duplicates accepted")
    };
    assert!(matches!(e, ChartError::Duplicate { .. }), "{e:?}");
    assert!(e.to_string().contains("already given on line"), "{e}");

    // Costs in two units.
    let mixed = FIXTURE.replacen(
        "\"cost_unit\":\"guest_instructions\"",
        "\"cost_unit\":\"tsc_cycles\"",
        1,
    );
    let Err(e) = parse_log(&mixed) else {
        panic!("mixed units accepted")
    };
    assert!(matches!(e, ChartError::MixedUnits { .. }), "{e:?}");
    assert!(e.to_string().contains("differs from 'tsc_cycles'"), "{e}");

    // Nothing of ours.
    assert_eq!(
        parse_log("hello\nRESULT {\"kind\":\"boot\"}\nkernel-exit: pass\n").unwrap_err(),
        ChartError::NoFigures
    );
    // Only costs the kernel could not measure and no allocation figure: nothing to draw.
    let nulls = "RESULT {\"kind\":\"ims-bench\",\"figure\":\"demux\",\"mode\":\"per-handle\",\"cpu\":0,\"handles\":256,\"armed\":256,\"cost_per_completion\":null,\"unavailable\":\"out of vectors\",\"icount\":true,\"cost_unit\":\"guest_instructions\"}\n";
    let b = parse_log(nulls).unwrap();
    assert_eq!(render_svg(&b).unwrap_err(), ChartError::NothingToPlot);
}

#[test]
fn many_modes_and_notes_still_fit() {
    // Ten modes, each missing its A = 2048 figure: colours cycle, every mode keeps its lines,
    // the footnotes are capped.
    let mut log = String::new();
    for m in 0..10 {
        for line in FIXTURE
            .lines()
            .filter(|l| l.contains("\"mode\":\"shared\""))
        {
            let l = line.replace("\"mode\":\"shared\"", &format!("\"mode\":\"m{m}\""));
            let l = if l.contains("\"armed\":2048,") {
                let i = l.find("\"cost_per_completion\":").unwrap();
                let j = i + l[i..].find(',').unwrap();
                format!("{}\"cost_per_completion\":null{}", &l[..i], &l[j..])
            } else {
                l
            };
            log.push_str(&l);
            log.push('\n');
        }
    }
    let b = parse_log(&log).unwrap();
    assert_eq!(b.modes.len(), 10);
    let svg = render_svg(&b).unwrap();
    let t = texts(&svg);
    assert!(t.iter().any(|s| s.starts_with("… and 5 more")), "{t:?}");
    let lines: usize = elements(&svg, "polyline")
        .iter()
        .filter(|e| attr(e, "stroke-width") != Some("1"))
        .count();
    assert_eq!(lines, 20);
}

#[test]
fn serial_noise_around_result_lines_is_tolerated() {
    // Escape sequences and \r (the serial console), junk before the marker on the line.
    let noisy: String = FIXTURE
        .lines()
        .map(|l| {
            if l.starts_with("RESULT") {
                format!("\x1b[0mjunk{l}\r\n")
            } else {
                format!("{l}\r\n")
            }
        })
        .collect();
    assert_eq!(parse_log(&noisy).unwrap(), parse_log(FIXTURE).unwrap());
}

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ims-chart"))
}

#[test]
fn the_command_writes_the_chart_and_reports_errors() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ims-chart-cli");
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("run.serial");
    std::fs::write(&log, FIXTURE).unwrap();
    let svg = dir.join("chart.svg");
    let _ = std::fs::remove_file(&svg);
    let out = tool().arg("-o").arg(&svg).arg(&log).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("modes shared, per-handle; CPUs 0–2; demux A: shared [1, 16, 256, 2048], per-handle [1, 16]"),
        "{err}"
    );
    let written = std::fs::read_to_string(&svg).unwrap();
    assert_eq!(written, render_svg(&parse_log(FIXTURE).unwrap()).unwrap());

    // From stdin to stdout.
    let mut child = tool()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(FIXTURE.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), written);

    // A log that cannot be charted: status 1, the reason, and the old chart left alone.
    let bad = dir.join("bad.serial");
    std::fs::write(
        &bad,
        "RESULT {\"kind\":\"ims-bench\",\"figure\":\"demux\",\"mo\n",
    )
    .unwrap();
    let out = tool().arg("-o").arg(&svg).arg(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("line 1: malformed ims-bench RESULT line"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&svg).unwrap(), written);

    // Usage and I/O errors: status 2.
    let out = tool().arg(dir.join("missing.serial")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
    let out = tool().arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = tool().arg("-o").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
