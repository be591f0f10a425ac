//! PNG charts (plotters): the label font and a log-log line chart.

use std::path::Path;

use anyhow::Result;

/// A font for labels (DejaVu Sans, where the system has it); without one, charts are drawn
/// unlabelled (plotters' bitmap backend has no built-in font).
pub fn register_label_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let candidates = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"];
        candidates.iter().find_map(|p| std::fs::read(p).ok()).is_some_and(|bytes| {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok()
        })
    })
}

/// One named line of `(x, y)` points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), points: Vec::new() }
    }
}

/// A line chart with both axes logarithmic (`log_y`) or a logarithmic x axis only.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    use plotters::prelude::*;
    let points = || series.iter().flat_map(|s| s.points.iter());
    let positive = |v: f64| v.is_finite() && v > 0.0;
    let (xs, ys): (Vec<f64>, Vec<f64>) = points().filter(|(x, y)| positive(*x) && positive(*y)).copied().unzip();
    if xs.is_empty() {
        return Ok(());
    }
    let (x_min, x_max) = (xs.iter().copied().fold(f64::MAX, f64::min), xs.iter().copied().fold(0.0, f64::max));
    let (y_min, y_max) = (ys.iter().copied().fold(f64::MAX, f64::min), ys.iter().copied().fold(0.0, f64::max));
    let labels = register_label_font();
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(16).x_label_area_size(if labels { 44 } else { 8 }).y_label_area_size(if labels { 70 } else { 8 });
    if labels {
        builder.caption(title, ("sans-serif", 22));
    }
    // Ticks at the measured x values (the bench's powers of two), not at plotters' log ticks,
    // which crowd into each other near the top of a decade.
    let mut ticks = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    let x_range = (x_min / 1.2..x_max * 1.2).log_scale().with_key_points(ticks);
    let legend_at = emptiest_corner(&xs, &ys, log_y);
    macro_rules! finish {
        ($chart:expr) => {{
            let mut chart = $chart;
            let mut mesh = chart.configure_mesh();
            if labels {
                mesh.x_desc(x_label)
                    .y_desc(y_label)
                    .label_style(("sans-serif", 14))
                    .x_label_formatter(&|x| format!("{x:.0}"));
            } else {
                mesh.x_labels(0).y_labels(0);
            }
            mesh.draw().map_err(|e| fail(&e))?;
            for (i, s) in series.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                let pts: Vec<(f64, f64)> =
                    s.points.iter().copied().filter(|(x, y)| positive(*x) && positive(*y)).collect();
                let line =
                    chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(|e| fail(&e))?;
                if labels {
                    line.label(s.name.clone())
                        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
                }
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled()))).map_err(|e| fail(&e))?;
            }
            if labels {
                chart
                    .configure_series_labels()
                    .position(legend_at)
                    .background_style(WHITE.mix(0.85))
                    .border_style(BLACK)
                    .label_font(("sans-serif", 14))
                    .draw()
                    .map_err(|e| fail(&e))?;
            }
        }};
    }
    if log_y {
        finish!(builder.build_cartesian_2d(x_range, (y_min / 1.5..y_max * 1.5).log_scale()).map_err(|e| fail(&e))?);
    } else {
        finish!(builder.build_cartesian_2d(x_range, 0.0..y_max * 1.1).map_err(|e| fail(&e))?);
    }
    root.present().map_err(|e| fail(&e))
}

/// The corner of the plot with the fewest points near it (positions scaled as the axes are), so
/// that the legend covers as little of the data as it can.
fn emptiest_corner(xs: &[f64], ys: &[f64], log_y: bool) -> plotters::chart::SeriesLabelPosition {
    use plotters::chart::SeriesLabelPosition::*;
    let scale = |v: &[f64], log: bool| -> Vec<f64> {
        let v: Vec<f64> = v.iter().map(|&x| if log { x.ln() } else { x }).collect();
        let (lo, hi) = v.iter().fold((f64::MAX, f64::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        v.iter().map(|x| if hi > lo { (x - lo) / (hi - lo) } else { 0.5 }).collect()
    };
    let (u, w) = (scale(xs, true), scale(ys, log_y));
    // In the corner's half of each axis, the middle tenth left out.
    let near = |v: f64, low: bool| if low { v < 0.45 } else { v > 0.55 };
    let count = |left: bool, top: bool| u.iter().zip(&w).filter(|&(&x, &y)| near(x, left) && near(y, !top)).count();
    [(UpperLeft, true, true), (UpperRight, false, true), (LowerLeft, true, false), (LowerRight, false, false)]
        .into_iter()
        .min_by_key(|&(_, left, top)| count(left, top))
        .map(|(corner, ..)| corner)
        .unwrap_or(UpperLeft)
}

#[cfg(test)]
mod tests {
    use plotters::chart::SeriesLabelPosition;

    use super::emptiest_corner;

    #[test]
    fn the_legend_goes_where_the_data_is_not() {
        let xs = [256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
        let rising = [0.02, 0.1, 0.4, 1.7, 7.7, 53.0];
        assert!(matches!(emptiest_corner(&xs, &rising, true), SeriesLabelPosition::UpperLeft));
        let falling: Vec<f64> = rising.iter().map(|y| 1.0 / y).collect();
        assert!(matches!(emptiest_corner(&xs, &falling, true), SeriesLabelPosition::UpperRight));
    }
}
