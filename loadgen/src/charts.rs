//! PNG charts drawn with plotters (bitmap backend, embedded DejaVu font).

use anyhow::anyhow;
use hdrhistogram::Histogram;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

pub const WIDTH: u32 = 1100;
pub const HEIGHT: u32 = 520;
const FONT: &str = "sans-serif";

static FONT_INIT: Once = Once::new();

/// Makes the embedded font available to plotters (it has no system font access here).
fn init_font() {
    FONT_INIT.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing chart: {e:?}")
}

const COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// A named line: (x, y) points.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Line chart with linear x and linear or log y.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[Line],
    log_y: bool,
) -> anyhow::Result<()> {
    init_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let x_max = pts.clone().map(|p| p.0).fold(1.0_f64, f64::max);
    let y_max = pts
        .clone()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let mut b = ChartBuilder::on(&root);
    b.caption(title, (FONT, 22))
        .margin(14)
        .margin_right(48)
        .x_label_area_size(44)
        .y_label_area_size(70);
    if log_y {
        let y_min = pts
            .map(|p| p.1)
            .filter(|v| *v > 0.0)
            .fold(f64::INFINITY, f64::min);
        let y_min = if y_min.is_finite() { y_min * 0.8 } else { 0.01 };
        let y_top = (y_max * 1.3).max(y_min * 10.0);
        let mut chart = b
            .build_cartesian_2d(0.0..x_max, (y_min..y_top).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_labels(12)
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()
            .map_err(err)?;
        for (i, l) in lines.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    l.points.iter().copied().filter(|p| p.1 > 0.0),
                    c.stroke_width(2),
                ))
                .map_err(err)?
                .label(l.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(err)?;
    } else {
        let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };
        let mut chart = b.build_cartesian_2d(0.0..x_max, 0.0..y_top).map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .y_label_formatter(&|v| fmt_num(*v))
            .draw()
            .map_err(err)?;
        for (i, l) in lines.iter().enumerate() {
            let c = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(l.name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .position(SeriesLabelPosition::LowerRight)
            .draw()
            .map_err(err)?;
    }
    root.present().map_err(err)?;
    Ok(())
}

/// Latency by percentile (HdrHistogram style): x is 1/(1-q) on a log axis, labelled as
/// percentiles; one line per phase; y in milliseconds, log axis.
pub fn percentile_chart(
    path: &Path,
    title: &str,
    phases: &[(String, Histogram<u64>)],
) -> anyhow::Result<()> {
    const X_MAX: f64 = 100_000.0; // 99.999%
    let lines: Vec<Line> = phases
        .iter()
        .filter(|(_, h)| !h.is_empty())
        .map(|(name, h)| {
            let mut points = Vec::new();
            let mut x = 1.0_f64;
            while x <= X_MAX {
                let q = 1.0 - 1.0 / x;
                let v = h.value_at_quantile(q) as f64 / 1000.0;
                points.push((x, v.max(0.001)));
                x *= 1.12;
            }
            points.push((X_MAX, (h.max() as f64 / 1000.0).max(0.001)));
            Line {
                name: name.clone(),
                points,
            }
        })
        .collect();
    init_font();
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let ys = lines.iter().flat_map(|l| l.points.iter().map(|p| p.1));
    let y_min = ys.clone().fold(f64::INFINITY, f64::min);
    let y_max = ys.fold(0.0_f64, f64::max);
    let (y_min, y_max) = if y_min.is_finite() && y_max > 0.0 {
        (y_min * 0.8, (y_max * 1.3).max(y_min * 10.0))
    } else {
        (0.01, 10.0)
    };
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT, 22))
        .margin(14)
        .margin_right(48)
        .x_label_area_size(44)
        .y_label_area_size(70)
        .build_cartesian_2d((1.0..X_MAX).log_scale(), (y_min..y_max).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .y_labels(12)
        .x_label_formatter(&|x| {
            let p = 100.0 * (1.0 - 1.0 / x);
            let digits = format!("{p:.3}");
            format!("{}%", digits.trim_end_matches('0').trim_end_matches('.'))
        })
        .y_label_formatter(&|v| fmt_num(*v))
        .draw()
        .map_err(err)?;
    for (i, l) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(l.points.iter().copied(), c.stroke_width(2)))
            .map_err(err)?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Short number labels: 12.5k, 3.2, 0.15.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1_000_000.0 {
        format!("{:.1}M", v / 1_000_000.0)
    } else if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}
