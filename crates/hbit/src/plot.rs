//! PNG loss curves from a run's metrics.jsonl (plotters, bitmap backend, DejaVu font).

use std::path::Path;

use anyhow::{bail, Context, Result};
use plotters::prelude::*;

/// Searched in order for the label font; the first that exists is used.
const FONT_PATHS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

fn register_font() -> Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).is_file())
        .with_context(|| format!("no label font found (looked for {FONT_PATHS:?})"))?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(path)?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{path}: not a usable font"))?;
    Ok(())
}

/// Training loss (per step) and validation loss (where measured) against tokens seen.
pub fn plot_loss_curve(metrics: &Path, out: &Path) -> Result<()> {
    let text = std::fs::read_to_string(metrics)
        .with_context(|| format!("reading {}", metrics.display()))?;
    let mut train = Vec::new();
    let mut val = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: bad line {line:?}", metrics.display()))?;
        let tokens = v["tokens"].as_f64().unwrap_or(0.0) / 1e6;
        if let Some(l) = v["loss"].as_f64() {
            train.push((tokens, l));
        }
        if let Some(l) = v["val_loss"].as_f64() {
            val.push((tokens, l));
        }
    }
    if train.is_empty() {
        bail!("{}: no steps recorded", metrics.display());
    }
    register_font()?;
    let x_max = train.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let all = train.iter().chain(&val).map(|p| p.1);
    let (y_min, y_max) = all.fold((f64::MAX, f64::MIN), |(a, b), y| (a.min(y), b.max(y)));
    let root = BitMapBackend::new(out, (900, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("hbit training loss", ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, (y_min - 0.05)..(y_max + 0.05))?;
    chart
        .configure_mesh()
        .x_desc("tokens (millions)")
        .y_desc("cross-entropy (nats)")
        .draw()?;
    chart
        .draw_series(LineSeries::new(train, &BLUE))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.draw_series(val.into_iter().map(|p| Circle::new(p, 3, RED.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// Histograms of one site's input per layer (rows), before and after the Hadamard transform
/// (columns), log-scaled counts as in the paper's Figures 2–3.
pub fn plot_activation_histograms(
    summaries: &[&hbit_eval::activations::Summary],
    model: &str,
    out: &Path,
) -> Result<()> {
    let Some(first) = summaries.first() else {
        bail!("no activations to plot for {}", out.display());
    };
    register_font()?;
    let layers: Vec<usize> = {
        let mut l: Vec<usize> = summaries.iter().map(|s| s.layer).collect();
        l.dedup();
        l
    };
    let (panel_w, panel_h) = (420u32, 170u32);
    let title_h = 40u32;
    let root = BitMapBackend::new(out, (2 * panel_w, title_h + panel_h * layers.len() as u32))
        .into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(title_h);
    title.titled(
        &format!("input of {} — {model}", first.site.name()),
        ("sans-serif", 20),
    )?;
    let panels = body.split_evenly((layers.len(), 2));
    for (r, &layer) in layers.iter().enumerate() {
        for (c, rotated) in [false, true].into_iter().enumerate() {
            let area = &panels[r * 2 + c];
            let Some(s) = summaries
                .iter()
                .find(|s| s.layer == layer && s.rotated == rotated)
            else {
                area.titled("(no Hadamard of this width)", ("sans-serif", 14))?;
                continue;
            };
            let bins = s.histogram.len();
            let width = 2.0 * s.max_abs.max(1e-12) / bins as f64;
            let points: Vec<(f64, f64)> = s
                .histogram
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    (
                        -s.max_abs + (i as f64 + 0.5) * width,
                        (n as f64 + 1.0).log10(),
                    )
                })
                .collect();
            let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max) * 1.1 + 0.1;
            let caption = format!(
                "layer {layer}, {}: kurt {:.1}, max/mean {:.1}",
                if rotated { "after Hadamard" } else { "before" },
                s.kurtosis,
                s.max_over_mean_abs()
            );
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 13))
                .margin(6)
                .x_label_area_size(22)
                .y_label_area_size(34)
                .build_cartesian_2d(-s.max_abs..s.max_abs.max(1e-12), 0.0..y_max)?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_labels(5)
                .y_labels(4)
                .y_desc("log10 count")
                .label_style(("sans-serif", 10))
                .draw()?;
            let color = if rotated { RED } else { BLUE };
            chart.draw_series(AreaSeries::new(points, 0.0, color.mix(0.4)).border_style(color))?;
        }
    }
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}
