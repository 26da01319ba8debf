//! `--plot`: an SVG bar chart of the udax/kernel time ratios, one group of bars per
//! workload and one bar per udax mode (granularity, resolution, dirty tracking), on a log
//! scale around 1 (bars go up where udax is slower, down where it is faster), each with an
//! error bar from the ratio's low to its high end (fastest udax run over slowest kernel
//! run, slowest over fastest). Drawn with plotters.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::CliError;
use crate::report::Ratio;

/// Bar colours, one per udax mode in the order given (then again).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Width of one workload's group on the x axis, in axis units (bars use all but 2).
const UNIT: i32 = 14;

/// Draws `ratios` to `path` as SVG.
pub fn draw(path: &Path, ratios: &[Ratio], title: &str) -> Result<(), CliError> {
    draw_chart(path, ratios, title)
        .map_err(|e| CliError::failed(format!("drawing {}", path.display()), e))
}

fn draw_chart(
    path: &Path,
    ratios: &[Ratio],
    title: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut workloads: Vec<&str> = Vec::new();
    let mut modes: Vec<&str> = Vec::new();
    for r in ratios {
        if !workloads.contains(&r.workload.as_str()) {
            workloads.push(&r.workload);
        }
        if !modes.contains(&r.mode.as_str()) {
            modes.push(&r.mode);
        }
    }
    let finite = ratios
        .iter()
        .flat_map(|r| [r.udax_over_kernel, r.low, r.high])
        .filter(|v| v.is_finite() && *v > 0.0);
    let (lo, hi) = finite.fold((0.5f64, 2.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Headroom above the tallest bar for the value labels and the legend.
    let (lo, hi) = (lo / 1.6, hi * 8.0);

    let width = 160 + 110 * workloads.len().max(1) as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    // x is in integer units, UNIT per workload (float axes lose their label formatter
    // once given key points); the labels sit at the centres.
    let groups = workloads.len().max(1) as i32;
    let centres: Vec<i32> = (0..groups).map(|i| i * UNIT + UNIT / 2).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (0..groups * UNIT).with_key_points(centres),
            (lo..hi).log_scale(),
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(workloads.len().max(1))
        .x_label_formatter(&|x| {
            let i = (*x / UNIT) as usize;
            workloads.get(i).map_or(String::new(), |w| w.to_string())
        })
        .y_labels(12)
        .y_desc("udax time / kernel time")
        .y_label_formatter(&|y| format!("{}", (y * 1000.0).round() / 1000.0))
        .draw()?;

    let slot = (UNIT - 2) / modes.len().max(1) as i32;
    for (g, mode) in modes.iter().enumerate() {
        let colour = COLOURS[g % COLOURS.len()];
        // (left x, value, low, high) of each bar of this mode.
        let bars: Vec<(i32, f64, f64, f64)> = ratios
            .iter()
            .filter(|r| r.mode == *mode && r.udax_over_kernel.is_finite())
            .filter_map(|r| {
                let w = workloads.iter().position(|w| *w == r.workload)? as i32;
                Some((
                    w * UNIT + 1 + g as i32 * slot,
                    r.udax_over_kernel.clamp(lo, hi),
                    r.low.clamp(lo, hi),
                    r.high.clamp(lo, hi),
                ))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|&(x0, v, _, _)| {
                Rectangle::new([(x0, 1.0), (x0 + slot, v)], colour.filled())
            }))?
            .label(format!("udax {mode}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        let font = ("sans-serif", 11).into_font().color(&BLACK);
        let above = font.pos(Pos::new(HPos::Center, VPos::Bottom));
        let below = font.pos(Pos::new(HPos::Center, VPos::Top));
        chart
            .draw_series(bars.iter().map(|&(x0, _, low, high)| {
                error_bar(x0 + slot / 2, (slot / 4).max(1), low, high)
            }))?;
        chart.draw_series(bars.iter().map(|&(x0, v, _, _)| {
            let style = if v >= 1.0 {
                above.clone()
            } else {
                below.clone()
            };
            Text::new(format!("{v:.2}"), (x0 + slot / 2, v), style)
        }))?;
    }
    let parity = [(0, 1.0), (groups * UNIT, 1.0)];
    chart
        .draw_series(std::iter::once(PathElement::new(parity, BLACK)))?
        .label("parity (1.0)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 10, y)], BLACK));
    // An empty series, for the error bars' legend entry.
    chart
        .draw_series(std::iter::empty::<PathElement<(i32, f64)>>())?
        .label("min-max over the runs")
        .legend(|(x, y)| {
            PathElement::new(
                [
                    (x, y - 5),
                    (x + 6, y - 5),
                    (x + 3, y - 5),
                    (x + 3, y + 5),
                    (x, y + 5),
                    (x + 6, y + 5),
                ],
                ERROR_BAR,
            )
        });
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The error bars' colour.
const ERROR_BAR: RGBColor = RGBColor(0, 0, 0);

/// An error bar at `x` from `low` to `high` with caps `half` units wide each side: one
/// six-point path (top cap, down the middle, bottom cap).
fn error_bar(x: i32, half: i32, low: f64, high: f64) -> PathElement<(i32, f64)> {
    let points = [
        (x - half, high),
        (x + half, high),
        (x, high),
        (x, low),
        (x - half, low),
        (x + half, low),
    ];
    PathElement::new(points, ERROR_BAR.stroke_width(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ratio(workload: &str, granularity: &'static str, value: f64) -> Ratio {
        let (low, high) = (value * 0.8, value * 1.5);
        Ratio {
            workload: workload.into(),
            granularity,
            resolution: "handler",
            dirty_tracking: "sync",
            mode: granularity.into(),
            udax_over_kernel: value,
            low,
            high,
        }
    }

    #[test]
    fn draws_an_svg() {
        let dir = std::env::temp_dir().join(format!("udax-plot-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("ratios.svg");
        let ratios = [
            ratio("sparse-read", "4k", 8.0),
            ratio("sparse-read", "2m", 0.2),
            ratio("flush", "4k", 1.3),
        ];
        draw(&path, &ratios, "test").expect("draw");
        let svg = std::fs::read_to_string(&path).expect("read svg");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("sparse-read") && svg.contains("flush"));
        assert!(svg.matches("<rect").count() >= 3);
        // One six-point polyline per bar (three) plus the legend's.
        assert_eq!(error_bars(&svg), 4, "{svg}");
        assert!(svg.contains("min-max over the runs"));
    }

    /// The six-point polylines of an SVG: the error bars.
    pub fn error_bars(svg: &str) -> usize {
        svg.split("<polyline")
            .skip(1)
            .filter(|element| {
                let points = element
                    .split("points=\"")
                    .nth(1)
                    .and_then(|p| p.split('"').next());
                points.is_some_and(|p| p.split_whitespace().count() == 6)
            })
            .count()
    }
}
