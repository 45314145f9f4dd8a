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
