//! The IMS benchmark's chart: reads the `RESULT {"kind":"ims-bench",…}` lines of a serial log
//! (`./qemu-run.sh --ims-bench`, README "IMS benchmark") and draws one SVG with two panels:
//!
//! * (a) `demux` cost per delivered completion (`cost_per_completion`) against the armed
//!   handles A, for the figures in which every handle is armed (`handles` = `armed`, so
//!   A = 1, 16, 256, 2048), both axes log scale, one line per mode;
//! * (b) vectors the mode's domain uses on the measured CPU (`vectors_cpu`) against the
//!   handles requested N (`allocation` figure), one line per mode; a point where the
//!   allocation was refused before N (`handles_allocated` < `handles_requested`) carries a
//!   cross, so the per-handle design's plateau at the vector limit shows.
//!
//! Modes are whatever the lines' `mode` fields name (`shared`, `per-handle`, `posted`, …),
//! in the order they first appear in the log; nothing here knows a fixed set. A mode
//! without a figure simply has no line in that panel, and a point whose cost is `null`
//! (the kernel's `unavailable`, e.g. out of vectors) is left out and named in the legend.
//!
//! **Per-CPU aggregate:** each point is the *lower median* over the CPUs that reported that
//! figure (for 4 CPUs the second smallest), so every plotted value is one that a CPU
//! measured. Under `-icount` the costs are identical on every CPU anyway; the allocation
//! figures differ by the CPU's system vectors (CPU 0 holds the VT-d fault vector).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use qemu_tests::verdict::clean_line;
use serde_json::{Map, Value};

/// The `kind` of the lines this tool reads.
pub const KIND: &str = "ims-bench";

/// Why a log cannot be charted.
#[derive(Debug, Clone, PartialEq)]
pub enum ChartError {
    /// An `ims-bench` line is not valid JSON or lacks a field it needs.
    Malformed {
        /// 1-based line number in the log.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The same figure twice (two runs concatenated into one log?).
    Duplicate {
        /// The second occurrence.
        line: usize,
        /// The first occurrence.
        first: usize,
        /// The figure, e.g. `demux shared cpu 0 N=16 A=16`.
        what: String,
    },
    /// Costs in different units (a log mixing `-icount` and non-icount runs).
    MixedUnits {
        /// Line with the second unit.
        line: usize,
        /// Its unit.
        unit: String,
        /// The unit seen first.
        first: String,
        /// Where it was seen.
        first_line: usize,
    },
    /// No `RESULT` line of kind `ims-bench` at all.
    NoFigures,
    /// `ims-bench` lines, but neither a `demux` cost nor an `allocation` figure to plot.
    NothingToPlot,
    /// The plotting library failed.
    Draw(String),
}

impl fmt::Display for ChartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartError::Malformed { line, reason } => {
                write!(f, "line {line}: malformed ims-bench RESULT line: {reason}")
            }
            ChartError::Duplicate { line, first, what } => write!(
                f,
                "line {line}: figure {what} already given on line {first} (more than one run in the log?)"
            ),
            ChartError::MixedUnits {
                line,
                unit,
                first,
                first_line,
            } => write!(
                f,
                "line {line}: cost unit '{unit}' differs from '{first}' on line {first_line} (runs with and without -icount in one log?)"
            ),
            ChartError::NoFigures => write!(
                f,
                "no RESULT {{\"kind\":\"{KIND}\",…}} line in the log (was it a ./qemu-run.sh --ims-bench run?)"
            ),
            ChartError::NothingToPlot => write!(
                f,
                "the log has {KIND} lines but no demux cost and no allocation figure to plot"
            ),
            ChartError::Draw(e) => write!(f, "drawing the chart failed: {e}"),
        }
    }
}

impl std::error::Error for ChartError {}

/// One `allocation` figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Alloc {
    /// Handles requested (N).
    pub requested: u64,
    /// Handles the mode allocated before N or its first refusal.
    pub allocated: u64,
    /// Vectors the mode's domain holds on the measured CPU.
    pub vectors_cpu: u64,
    /// Why allocation stopped early (`stopped_by`), if it did.
    pub stopped_by: Option<String>,
}

/// One `demux` or `burst` figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Cost {
    /// Handles allocated on the CPU (N).
    pub handles: u64,
    /// Handles armed (A).
    pub armed: u64,
    /// Demultiplexing cost per delivered completion; `None` when the kernel printed `null`.
    pub cost: Option<f64>,
    /// Whole interrupt path per completion, if measured.
    pub path: Option<f64>,
    /// The kernel's reason for a `null` cost.
    pub unavailable: Option<String>,
}

/// What a line measured.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// `"figure":"allocation"`.
    Allocation(Alloc),
    /// `"figure":"demux"`: one completion among `armed` armed handles.
    Demux(Cost),
    /// `"figure":"burst"`: all `armed` handles complete together.
    Burst(Cost),
}

/// One `ims-bench` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line number in the log.
    pub line: usize,
    /// The `mode` field.
    pub mode: String,
    /// The measured CPU.
    pub cpu: u64,
    /// The figure.
    pub figure: Figure,
}

/// Every `ims-bench` figure of one log.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Bench {
    /// The figures, in log order.
    pub records: Vec<Record>,
    /// Modes in the order they first appear.
    pub modes: Vec<String>,
    /// `cost_unit` of the cost figures (`guest_instructions`, `tsc_cycles`), if any.
    pub cost_unit: Option<String>,
}

/// One line of a panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The mode.
    pub mode: String,
    /// (x, lower median over CPUs), by increasing x.
    pub points: Vec<(u64, f64)>,
    /// x values at which the figure exists but has no value (cost `null`), with the
    /// kernel's reason.
    pub unavailable: Vec<(u64, String)>,
    /// x values at which allocation stopped before N (panel b), with the reason.
    pub refused: Vec<(u64, String)>,
}

fn malformed(line: usize, reason: impl Into<String>) -> ChartError {
    ChartError::Malformed {
        line,
        reason: reason.into(),
    }
}

struct Fields<'a> {
    line: usize,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, key: &str) -> Result<&Value, ChartError> {
        self.map
            .get(key)
            .ok_or_else(|| malformed(self.line, format!("no field \"{key}\"")))
    }
    fn str(&self, key: &str) -> Result<&str, ChartError> {
        self.get(key)?
            .as_str()
            .ok_or_else(|| malformed(self.line, format!("field \"{key}\" is not a string")))
    }
    fn count(&self, key: &str) -> Result<u64, ChartError> {
        self.get(key)?.as_u64().ok_or_else(|| {
            malformed(
                self.line,
                format!("field \"{key}\" is not a non-negative integer"),
            )
        })
    }
    /// A number or `null`; absent counts as `null` only if `required` is false.
    fn number_or_null(&self, key: &str, required: bool) -> Result<Option<f64>, ChartError> {
        match self.map.get(key) {
            None if !required => Ok(None),
            None => Err(malformed(self.line, format!("no field \"{key}\""))),
            Some(Value::Null) => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x >= 0.0 => Ok(Some(x)),
                _ => Err(malformed(
                    self.line,
                    format!("field \"{key}\" is neither a non-negative number nor null"),
                )),
            },
        }
    }
    fn opt_str(&self, key: &str) -> Option<String> {
        self.map.get(key).and_then(Value::as_str).map(String::from)
    }
}

/// The JSON payload of a `RESULT` line, with junk before the marker tolerated as the verdict
/// parser does (firmware output without a newline).
fn result_payload(line: &str) -> Option<&str> {
    line.find("RESULT {").map(|i| &line[i + "RESULT ".len()..])
}

fn parse_cost(f: &Fields<'_>) -> Result<Cost, ChartError> {
    let cost = f.number_or_null("cost_per_completion", true)?;
    let unavailable = f.opt_str("unavailable");
    Ok(Cost {
        handles: f.count("handles")?,
        armed: f.count("armed")?,
        cost,
        path: f.number_or_null("path_per_completion", false)?,
        unavailable,
    })
}

/// Reads every `RESULT {"kind":"ims-bench",…}` line of a serial log. Other lines, other
/// kinds and figures this tool does not draw (a future figure name) are skipped; an
/// `ims-bench` line that is not valid JSON or lacks a field is an error naming the line.
pub fn parse_log(log: &str) -> Result<Bench, ChartError> {
    let mut bench = Bench::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut unit_line = 0;
    for (i, raw) in log.lines().enumerate() {
        let line = i + 1;
        let clean = clean_line(raw);
        let Some(payload) = result_payload(&clean) else {
            continue;
        };
        let value: Value = match serde_json::from_str(payload) {
            Ok(v) => v,
            Err(e) => {
                // Only our kind is our business; the verdict judges the others.
                if qemu_tests::json_field(payload, "kind") == Some(KIND) {
                    return Err(malformed(line, format!("not valid JSON: {e}")));
                }
                continue;
            }
        };
        let Some(map) = value.as_object() else {
            continue;
        };
        if map.get("kind").and_then(Value::as_str) != Some(KIND) {
            continue;
        }
        let f = Fields { line, map };
        let figure_name = f.str("figure")?;
        let mode = f.str("mode")?.to_string();
        if mode.is_empty() {
            return Err(malformed(line, "empty \"mode\""));
        }
        let cpu = f.count("cpu")?;
        let (figure, key) = match figure_name {
            "allocation" => {
                let a = Alloc {
                    requested: f.count("handles_requested")?,
                    allocated: f.count("handles_allocated")?,
                    vectors_cpu: f.count("vectors_cpu")?,
                    stopped_by: f.opt_str("stopped_by"),
                };
                let key = format!("allocation {mode} cpu {cpu} N={}", a.requested);
                (Figure::Allocation(a), key)
            }
            "demux" | "burst" => {
                let c = parse_cost(&f)?;
                if c.cost.is_some() {
                    let unit = f.str("cost_unit")?;
                    match &bench.cost_unit {
                        None => {
                            bench.cost_unit = Some(unit.to_string());
                            unit_line = line;
                        }
                        Some(first) if first != unit => {
                            return Err(ChartError::MixedUnits {
                                line,
                                unit: unit.to_string(),
                                first: first.clone(),
                                first_line: unit_line,
                            });
                        }
                        Some(_) => {}
                    }
                }
                let key = format!(
                    "{figure_name} {mode} cpu {cpu} N={} A={}",
                    c.handles, c.armed
                );
                let fig = if figure_name == "demux" {
                    Figure::Demux(c)
                } else {
                    Figure::Burst(c)
                };
                (fig, key)
            }
            _ => continue,
        };
        if let Some(&first) = seen.get(&key) {
            return Err(ChartError::Duplicate {
                line,
                first,
                what: key,
            });
        }
        seen.insert(key, line);
        if !bench.modes.contains(&mode) {
            bench.modes.push(mode.clone());
        }
        bench.records.push(Record {
            line,
            mode,
            cpu,
            figure,
        });
    }
    if bench.records.is_empty() {
        return Err(ChartError::NoFigures);
    }
    Ok(bench)
}

/// The lower median: the middle value, or the smaller of the two middle ones.
fn lower_median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[(v.len() - 1) / 2])
}

impl Bench {
    /// The CPUs that reported a figure.
    pub fn cpus(&self) -> BTreeSet<u64> {
        self.records.iter().map(|r| r.cpu).collect()
    }

    fn series_by<F>(&self, pick: F) -> Vec<Series>
    where
        F: Fn(&Record) -> Option<Picked>,
    {
        let mut out = Vec::new();
        for mode in &self.modes {
            let mut values: BTreeMap<u64, Vec<f64>> = BTreeMap::new();
            let mut unavailable: BTreeMap<u64, String> = BTreeMap::new();
            let mut refused: BTreeMap<u64, String> = BTreeMap::new();
            for r in self.records.iter().filter(|r| &r.mode == mode) {
                match pick(r) {
                    Some(Picked::Value { x, y, refused: why }) => {
                        values.entry(x).or_default().push(y);
                        if let Some(why) = why {
                            refused.entry(x).or_insert(why);
                        }
                    }
                    Some(Picked::Unavailable { x, why }) => {
                        unavailable.entry(x).or_insert(why);
                    }
                    None => {}
                }
            }
            let mut points: Vec<(u64, f64)> = Vec::new();
            for (x, v) in values {
                match lower_median(v) {
                    // A log axis has no place for 0.
                    Some(m) if x == 0 || m <= 0.0 => {
                        unavailable.insert(x, format!("{m} is not drawn on a log scale"));
                    }
                    Some(m) => points.push((x, m)),
                    None => {}
                }
            }
            // A figure that some CPU measured is plotted; "unavailable" only where none did.
            unavailable.retain(|x, _| !points.iter().any(|p| p.0 == *x));
            refused.retain(|x, _| points.iter().any(|p| p.0 == *x));
            if points.is_empty() && unavailable.is_empty() {
                continue;
            }
            out.push(Series {
                mode: mode.clone(),
                points,
                unavailable: unavailable.into_iter().collect(),
                refused: refused.into_iter().collect(),
            });
        }
        out
    }

    /// Panel (a): per mode, the `demux` cost per completion with every handle armed
    /// (N = A) against A.
    pub fn demux_series(&self) -> Vec<Series> {
        self.series_by(|r| match &r.figure {
            Figure::Demux(c) if c.handles == c.armed => Some(match c.cost {
                Some(y) => Picked::Value {
                    x: c.armed,
                    y,
                    refused: None,
                },
                None => Picked::Unavailable {
                    x: c.armed,
                    why: c.unavailable.clone().unwrap_or_else(|| "no value".into()),
                },
            }),
            _ => None,
        })
    }

    /// Panel (b): per mode, the vectors used on the CPU against the handles requested.
    pub fn allocation_series(&self) -> Vec<Series> {
        self.series_by(|r| match &r.figure {
            Figure::Allocation(a) => Some(Picked::Value {
                x: a.requested,
                y: a.vectors_cpu as f64,
                refused: (a.allocated < a.requested).then(|| {
                    a.stopped_by
                        .clone()
                        .unwrap_or_else(|| format!("{} of {} allocated", a.allocated, a.requested))
                }),
            }),
            _ => None,
        })
    }
}

enum Picked {
    Value {
        x: u64,
        y: f64,
        refused: Option<String>,
    },
    Unavailable {
        x: u64,
        why: String,
    },
}

/// Line colours: fixed for the modes the kernel has or plans (so a regenerated chart keeps
/// them), then a palette for any other mode in order of appearance. Colour-blind-safe
/// (Okabe–Ito).
const KNOWN: [(&str, RGBColor); 3] = [
    ("posted", RGBColor(0, 158, 115)),
    ("shared", RGBColor(0, 114, 178)),
    ("per-handle", RGBColor(213, 94, 0)),
];
const PALETTE: [RGBColor; 4] = [
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(120, 94, 60),
];

/// The colour of each mode, as `#RRGGBB` (what the SVG's `stroke` says), in `modes` order.
pub fn mode_colors(modes: &[String]) -> Vec<(String, String)> {
    colors(modes)
        .into_iter()
        .map(|(m, c)| (m, format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)))
        .collect()
}

fn colors(modes: &[String]) -> Vec<(String, RGBColor)> {
    let mut next = 0;
    modes
        .iter()
        .map(|m| {
            let c = KNOWN
                .iter()
                .find(|(k, _)| k == m)
                .map(|(_, c)| *c)
                .unwrap_or_else(|| {
                    let c = PALETTE[next % PALETTE.len()];
                    next += 1;
                    c
                });
            (m.clone(), c)
        })
        .collect()
}

/// Width and height of the SVG.
pub const SIZE: (u32, u32) = (1280, 620);
/// Footnote lines at most (each takes 20 px from the panels).
const MAX_NOTES: usize = 6;
/// Stroke width and dot radius of the i-th of n mode lines: the first drawn is the widest,
/// so where two modes coincide (the shared and a posted design both use one vector per CPU)
/// the later, narrower line shows inside the earlier one. The mesh and axes are 1 px.
fn line_width(i: usize, n: usize) -> (u32, u32) {
    let rank = (n.saturating_sub(1).saturating_sub(i)).min(4) as u32;
    (3 + 2 * rank, 4 + 2 * rank)
}

fn unit_text(unit: Option<&str>) -> &str {
    match unit {
        Some("guest_instructions") => "guest instructions",
        Some("tsc_cycles") => "TSC cycles",
        Some(u) => u,
        None => "cost",
    }
}

fn cpu_text(cpus: &BTreeSet<u64>) -> String {
    let v: Vec<u64> = cpus.iter().copied().collect();
    match v.as_slice() {
        [] => "no CPU".into(),
        [c] => format!("CPU {c}"),
        [first, .., last] if (last - first) as usize + 1 == v.len() => {
            format!("CPUs {first}–{last}")
        }
        _ => format!(
            "CPUs {}",
            v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
        ),
    }
}

fn list(xs: &[u64]) -> String {
    xs.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

fn draw_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> ChartError {
    ChartError::Draw(e.to_string())
}

/// A log-scale range around `lo..hi` (both > 0) with some room.
fn log_bounds(lo: f64, hi: f64) -> (f64, f64) {
    let hi = hi.max(lo * 2.0);
    (lo / 1.6, hi * 1.6)
}

/// The measured x values as tick labels, leaving out one that would print over the previous
/// label (204 next to 256 on a log axis from 1 to 2048).
fn axis_points(xs: &BTreeSet<u64>, lo: f64, hi: f64) -> Vec<f64> {
    let min_gap = (hi / lo).log2() / 14.0;
    let mut v: Vec<f64> = Vec::new();
    for &x in xs {
        let x = x as f64;
        if v.last()
            .is_none_or(|&prev| x.log2() - prev.log2() >= min_gap)
        {
            v.push(x);
        }
    }
    v
}

fn decades(lo: f64, hi: f64) -> Vec<f64> {
    // 1, 2, 5 × 10^k inside the range.
    let mut v = Vec::new();
    let mut d = 1.0f64;
    while d <= hi {
        for m in [1.0, 2.0, 5.0] {
            let x = d * m;
            if x >= lo && x <= hi {
                v.push(x);
            }
        }
        d *= 10.0;
    }
    v
}

struct Panel<'a> {
    caption: &'a str,
    /// The x variable's letter (A, N).
    x_name: &'a str,
    x_desc: &'a str,
    y_desc: String,
    series: &'a [Series],
    empty: &'a str,
    y_ticks: fn(f64, f64) -> Vec<f64>,
}

fn powers_of_two(lo: f64, hi: f64) -> Vec<f64> {
    let mut v = Vec::new();
    let mut x = 1.0f64;
    while x <= hi {
        if x >= lo {
            v.push(x);
        }
        x *= 4.0;
    }
    v
}

/// The panel's y ticks plus the value of each plateau where allocation was refused (so the
/// vector limit reads off the axis), dropping a regular tick that would print over one.
fn y_ticks(p: &Panel<'_>, lo: f64, hi: f64) -> Vec<f64> {
    let marked: Vec<f64> = p
        .series
        .iter()
        .filter_map(|s| {
            let x = s.refused.first()?.0;
            s.points.iter().find(|q| q.0 == x).map(|q| q.1)
        })
        .collect();
    let min_gap = (hi / lo).log2() / 14.0;
    let mut v: Vec<f64> = (p.y_ticks)(lo, hi)
        .into_iter()
        .filter(|t| {
            marked
                .iter()
                .all(|m| (t.log2() - m.log2()).abs() >= min_gap)
        })
        .chain(marked.iter().copied())
        .collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    v
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel<'_>,
    palette: &[(String, RGBColor)],
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    let xs: BTreeSet<u64> = p
        .series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|q| q.0)
                .chain(s.unavailable.iter().map(|u| u.0))
        })
        .collect();
    let ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .collect();
    if ys.is_empty() {
        area.titled(p.caption, ("sans-serif", 20))
            .and_then(|a| {
                a.draw(&Text::new(
                    p.empty.to_string(),
                    (40, 60),
                    ("sans-serif", 16).into_font(),
                ))
            })
            .map_err(draw_err)?;
        return Ok(());
    }
    let (x_lo, x_hi) = log_bounds(
        *xs.first().unwrap_or(&1) as f64,
        *xs.last().unwrap_or(&2) as f64,
    );
    let (y_lo, y_hi) = log_bounds(
        ys.iter().copied().fold(f64::INFINITY, f64::min),
        ys.iter().copied().fold(0.0, f64::max),
    );
    let mut chart = ChartBuilder::on(area)
        .caption(p.caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(
            (x_lo..x_hi)
                .log_scale()
                .with_key_points(axis_points(&xs, x_lo, x_hi)),
            (y_lo..y_hi)
                .log_scale()
                .with_key_points(y_ticks(p, y_lo, y_hi)),
        )
        .map_err(draw_err)?;
    let fmt = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc(p.x_desc)
        .y_desc(p.y_desc.as_str())
        .x_label_formatter(&fmt)
        .y_label_formatter(&fmt)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(draw_err)?;
    for (i, s) in p.series.iter().enumerate() {
        let (width, radius) = line_width(i, p.series.len());
        let color = palette
            .iter()
            .find(|(m, _)| *m == s.mode)
            .map(|(_, c)| *c)
            .unwrap_or(BLACK);
        let pts: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x as f64, y)).collect();
        let mut label = s.mode.clone();
        if !s.unavailable.is_empty() {
            let at: Vec<u64> = s.unavailable.iter().map(|u| u.0).collect();
            label.push_str(&format!(
                " (no figure at {} = {}: see below)",
                p.x_name,
                list(&at)
            ));
        }
        // A mode with no value in this panel keeps its legend entry (and its note) but draws
        // no line.
        let line = if pts.is_empty() {
            None
        } else {
            Some(LineSeries::new(
                pts.iter().copied(),
                color.stroke_width(width),
            ))
        };
        chart
            .draw_series(line.into_iter().flatten())
            .map_err(draw_err)?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 3), (x + 20, y + 3)], color.filled()));
        chart
            .draw_series(pts.iter().map(|&q| Circle::new(q, radius, color.filled())))
            .map_err(draw_err)?;
        // Allocation refused before N: a cross on the point, and the plateau's value.
        let refused: Vec<(f64, f64)> = s
            .refused
            .iter()
            .filter_map(|(x, _)| pts.iter().find(|q| q.0 == *x as f64).copied())
            .collect();
        chart
            .draw_series(
                refused
                    .iter()
                    .map(|&q| Cross::new(q, 8, BLACK.stroke_width(2))),
            )
            .map_err(draw_err)?;
        // Under the plateau, ending at the last point (its value is a y tick).
        if let (Some(&(x, y)), Some(&(x_last, _))) = (refused.first(), pts.last()) {
            let style = ("sans-serif", 14)
                .into_font()
                .color(&color)
                .pos(Pos::new(HPos::Right, VPos::Top));
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("refused from {} = {x:.0}", p.x_name),
                    (x_last, y / 1.3),
                    style,
                )))
                .map_err(draw_err)?;
        }
    }
    if p.series.iter().any(|s| !s.refused.is_empty()) {
        chart
            .draw_series(std::iter::empty::<Cross<(f64, f64), i32>>())
            .map_err(draw_err)?
            .label("allocation refused before N (see below)")
            .legend(|(x, y)| Cross::new((x + 10, y), 5, BLACK.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(160, 160, 160))
        .label_font(("sans-serif", 14))
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// The footnotes: figures without a value to draw and allocations the kernel refused, with
/// the reasons (the first CPU's wording).
fn notes(demux: &[Series], alloc: &[Series]) -> Vec<String> {
    let mut v = Vec::new();
    for (panel, series, x_name) in [("(a)", demux, "A"), ("(b)", alloc, "N")] {
        for s in series {
            if let Some((_, why)) = s.unavailable.first() {
                let at: Vec<u64> = s.unavailable.iter().map(|u| u.0).collect();
                v.push(format!(
                    "{panel} {}: no figure at {x_name} = {}: {why}",
                    s.mode,
                    list(&at)
                ));
            }
            if let Some((_, why)) = s.refused.first() {
                let at: Vec<u64> = s.refused.iter().map(|u| u.0).collect();
                v.push(format!(
                    "{panel} {}: allocation refused before {x_name} = {}: {why}",
                    s.mode,
                    list(&at)
                ));
            }
        }
    }
    v
}

/// Draws the chart as an SVG document.
pub fn render_svg(bench: &Bench) -> Result<String, ChartError> {
    let demux = bench.demux_series();
    let alloc = bench.allocation_series();
    if demux.iter().all(|s| s.points.is_empty()) && alloc.iter().all(|s| s.points.is_empty()) {
        return Err(ChartError::NothingToPlot);
    }
    let palette = colors(&bench.modes);
    let unit = unit_text(bench.cost_unit.as_deref());
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut notes = notes(&demux, &alloc);
        if notes.len() > MAX_NOTES {
            let more = notes.len() - (MAX_NOTES - 1);
            notes.truncate(MAX_NOTES - 1);
            notes.push(format!("… and {more} more (see the log's RESULT lines)"));
        }
        let foot_h = 12 + 20 * notes.len() as u32;
        let (head, rest) = root.split_vertically(64);
        let (body, foot) = rest.split_vertically(SIZE.1 - 64 - foot_h);
        for (i, n) in notes.iter().enumerate() {
            foot.draw(&Text::new(
                n.clone(),
                (20, 4 + 20 * i as i32),
                ("sans-serif", 14).into_font().color(&RGBColor(60, 60, 60)),
            ))
            .map_err(draw_err)?;
        }
        head.draw(&Text::new(
            format!("IMS benchmark: {}", bench.modes.join(" vs. ")),
            (20, 10),
            ("sans-serif", 24).into_font(),
        ))
        .map_err(draw_err)?;
        head.draw(&Text::new(
            format!(
                "each point: the lower median over the CPUs that reported it ({}); costs in {unit}{}",
                cpu_text(&bench.cpus()),
                if bench.cost_unit.as_deref() == Some("guest_instructions") {
                    " (QEMU -icount shift=0)"
                } else {
                    ""
                }
            ),
            (20, 40),
            ("sans-serif", 15).into_font().color(&RGBColor(80, 80, 80)),
        ))
        .map_err(draw_err)?;
        let panels = body.split_evenly((1, 2));
        draw_panel(
            &panels[0],
            &Panel {
                caption: "(a) cost per delivered completion, all N = A handles armed",
                x_name: "A",
                x_desc: "armed handles A (log)",
                y_desc: format!("demux cost per completion, {unit} (log)"),
                series: &demux,
                empty: "no demux figure in the log",
                y_ticks: decades,
            },
            &palette,
        )?;
        draw_panel(
            &panels[1],
            &Panel {
                caption: "(b) vectors used on the CPU for N handles",
                x_name: "N",
                x_desc: "handles requested on one CPU, N (log)",
                y_desc: "interrupt vectors used on that CPU (log)".into(),
                series: &alloc,
                empty: "no allocation figure in the log",
                y_ticks: powers_of_two,
            },
            &palette,
        )?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// One line per panel and mode: what was plotted (for the tool's report).
pub fn summary(bench: &Bench) -> String {
    let part = |name: &str, series: &[Series]| {
        let s: Vec<String> = series
            .iter()
            .map(|s| {
                let xs: Vec<u64> = s.points.iter().map(|p| p.0).collect();
                format!("{} [{}]", s.mode, list(&xs))
            })
            .collect();
        format!(
            "{name}: {}",
            if s.is_empty() {
                "none".into()
            } else {
                s.join(", ")
            }
        )
    };
    format!(
        "modes {}; {}; {}; {}",
        bench.modes.join(", "),
        cpu_text(&bench.cpus()),
        part("demux A", &bench.demux_series()),
        part("allocation N", &bench.allocation_series())
    )
}
