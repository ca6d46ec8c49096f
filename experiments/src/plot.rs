//! Plots of a sweep's results, as SVG and PNG (plotters), from `data.csv`.
//!
//! Text is drawn with the DejaVu Sans font built into the binary
//! (`experiments/assets`), so PNGs look the same on machines without fonts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use psmr_core::EngineKind;
use thiserror::Error;

use crate::columns::{Column, Row};
use crate::experiment::{Experiment, PlotSpec};

/// Why a plot could not be drawn.
#[derive(Debug, Error)]
#[error("cannot draw {path}: {message}")]
pub(crate) struct PlotError {
    /// The file.
    path: PathBuf,
    /// What plotters said.
    message: String,
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../assets/DejaVuSans.ttf");
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .unwrap_or_else(|_| panic!("the built-in font is a valid TrueType font"));
    });
}

const SIZE: (u32, u32) = (960, 600);

/// Draws every plot of `experiment` from `rows` into `dir`; returns the files written.
pub(crate) fn draw_all(
    experiment: &Experiment,
    rows: &[Row],
    dir: &Path,
) -> Result<Vec<PathBuf>, PlotError> {
    register_font();
    let subtitle = crate::results::cost_label(&experiment.base);
    let mut written = Vec::new();
    for spec in &experiment.plots {
        let lines = lines(spec, rows);
        let (svg, png) = (
            dir.join(format!("{}.svg", spec.name)),
            dir.join(format!("{}.png", spec.name)),
        );
        let failed = |path: &Path| {
            let path = path.to_path_buf();
            move |message| PlotError { path, message }
        };
        let area = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(area, spec, &subtitle, &lines).map_err(failed(&svg))?;
        let area = BitMapBackend::new(&png, SIZE).into_drawing_area();
        draw(area, spec, &subtitle, &lines).map_err(failed(&png))?;
        written.extend([svg, png]);
    }
    Ok(written)
}

/// One line of a plot: its label and its points, sorted by x.
type Line = (String, Vec<(f64, f64)>);

/// The lines of `spec`: one per y column and value of the series column.
fn lines(spec: &PlotSpec, rows: &[Row]) -> Vec<Line> {
    let column = |name: &str| Column::named(name).expect("validated column");
    let x = column(&spec.x);
    let series = spec.series.as_deref().map(column);
    let mut lines: BTreeMap<(usize, String), Vec<(f64, f64)>> = BTreeMap::new();
    for (i, y_name) in spec.y.iter().enumerate() {
        let y = column(y_name);
        for row in rows {
            let mut label = series.map_or_else(String::new, |s| s.text(row));
            if spec.y.len() > 1 {
                label = format!("{label} {}", y.name).trim().to_string();
            }
            let point = (
                x.number(row).expect("numeric x"),
                y.number(row).expect("numeric y"),
            );
            lines.entry((i, label)).or_default().push(point);
        }
    }
    lines
        .into_iter()
        .map(|((_, label), mut points)| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, points)
        })
        .collect()
}

fn range(values: impl Iterator<Item = f64>, from_zero: bool) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let lo = if from_zero { lo.min(0.0) } else { lo };
    let pad = ((hi - lo) * 0.05).max(if hi == 0.0 { 1.0 } else { hi.abs() * 0.05 });
    let lo = if from_zero { lo } else { lo - pad };
    lo..hi + pad
}

/// Tick labels with as many decimals as the axis' span needs, and no
/// trailing zeros (threads are 1, 2, 4, 8, not 1.0, 2.0, ...).
fn tick_format(range: &std::ops::Range<f64>) -> impl Fn(&f64) -> String + use<> {
    let span = range.end - range.start;
    let decimals = match span {
        s if s >= 20.0 => 0,
        s if s >= 2.0 => 1,
        s if s >= 0.2 => 2,
        _ => 3,
    };
    move |v: &f64| {
        let text = format!("{v:.decimals$}");
        match text.contains('.') {
            true => text.trim_end_matches('0').trim_end_matches('.').to_string(),
            false => text,
        }
    }
}

const COLORS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// Each engine's colour, the same in every plot, so that figures read side
/// by side (smr green, psmr red, opt-psmr blue, as in most of them).
const ENGINE_COLORS: [(EngineKind, RGBColor); 5] = [
    (EngineKind::Smr, COLORS[2]),
    (EngineKind::Psmr, COLORS[1]),
    (EngineKind::OptPsmr, COLORS[0]),
    (EngineKind::Cbase, COLORS[3]),
    (EngineKind::Classes, COLORS[4]),
];

/// The colour of the `i`th line, named `name`: its engine's if the line is
/// one engine's, else the `i`th of the palette.
fn color_of(i: usize, name: &str) -> RGBColor {
    ENGINE_COLORS
        .iter()
        .find(|(engine, _)| engine.name() == name)
        .map_or(COLORS[i % COLORS.len()], |&(_, color)| color)
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    spec: &PlotSpec,
    subtitle: &str,
    lines: &[Line],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let (title, body) = root.split_vertically(56);
    title
        .draw_text(
            &spec.title,
            &("sans-serif", 22).into_text_style(&title),
            (12, 6),
        )
        .map_err(e)?;
    title
        .draw_text(
            subtitle,
            &("sans-serif", 14).into_text_style(&title),
            (12, 34),
        )
        .map_err(e)?;
    let points = || lines.iter().flat_map(|(_, p)| p.iter());
    let label = |name: &str| Column::named(name).expect("validated column").label;
    let (xs, ys) = (
        range(points().map(|p| p.0), false),
        range(points().map(|p| p.1), true),
    );
    let (x_tick, y_tick) = (tick_format(&xs), tick_format(&ys));
    let mut chart = ChartBuilder::on(&body)
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(80)
        .build_cartesian_2d(xs, ys)
        .map_err(e)?;
    let y_desc = spec
        .y
        .iter()
        .map(|y| label(y))
        .collect::<Vec<_>>()
        .join(", ");
    chart
        .configure_mesh()
        .x_desc(label(&spec.x))
        .y_desc(y_desc)
        .label_style(("sans-serif", 14))
        .x_label_formatter(&x_tick)
        .y_label_formatter(&y_tick)
        .draw()
        .map_err(e)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = color_of(i, name);
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(e)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(e)?;
    }
    if lines.iter().any(|(name, _)| !name.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(e)?;
    }
    root.present().map_err(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Experiment;

    fn row(engine: &str, dependent: f64, throughput: f64) -> Row {
        let mut r: Row = crate::results::tests::sample_row();
        r.engine = engine.to_string();
        r.dependent_pct = dependent;
        r.throughput = throughput;
        r
    }

    #[test]
    fn an_engine_has_the_same_colour_in_every_plot_and_other_lines_take_the_palette() {
        assert_eq!(color_of(0, "psmr"), color_of(2, "psmr"));
        let engines = ENGINE_COLORS.map(|(engine, _)| color_of(0, engine.name()));
        for (i, a) in engines.iter().enumerate() {
            assert!(engines[i + 1..].iter().all(|b| b != a), "{a:?} twice");
        }
        assert_eq!(color_of(1, "psmr p99_ms"), COLORS[1]);
        assert_eq!(color_of(9, ""), COLORS[1]);
    }

    #[test]
    fn tick_labels_have_the_decimals_the_span_needs_and_no_trailing_zeros() {
        let threads = tick_format(&(0.6..8.4));
        assert_eq!((threads(&1.0), threads(&2.5)), ("1".into(), "2.5".into()));
        let ratio = tick_format(&(0.0..1.1));
        assert_eq!((ratio(&0.75), ratio(&1.0)), ("0.75".into(), "1".into()));
        assert_eq!(tick_format(&(0.0..300_000.0))(&250_000.0), "250000");
    }

    #[test]
    fn a_plot_has_one_line_per_series_sorted_by_x_and_both_files_are_written() {
        let experiment = Experiment::parse(crate::experiment::tests::FILE).unwrap();
        let rows = [
            row("smr", 50.0, 10.0),
            row("smr", 0.0, 12.0),
            row("psmr", 0.0, 30.0),
        ];
        let lines = lines(&experiment.plots[0], &rows);
        assert_eq!(
            lines,
            vec![
                ("psmr".to_string(), vec![(0.0, 30.0)]),
                ("smr".to_string(), vec![(0.0, 12.0), (50.0, 10.0)]),
            ]
        );
        let dir = tempfile::tempdir().unwrap();
        let files = draw_all(&experiment, &rows, dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let svg = std::fs::read_to_string(dir.path().join("throughput.svg")).unwrap();
        assert!(svg.contains("dependent commands (%)") && svg.contains("psmr"));
        let png = std::fs::read(dir.path().join("throughput.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }
}
