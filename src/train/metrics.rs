//! Training metrics: one JSON object per optimizer step in `metrics.jsonl`, and a PNG chart of
//! loss and learning rate drawn from that file.

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Once;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepMetrics {
    pub step: usize,
    pub epoch: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Positions processed in this step (all micro-batches).
    pub tokens: usize,
    pub tokens_per_sec: f64,
    pub elapsed_s: f64,
    /// Stage-specific figures (DPO: `reward_margin`, `accuracy`), one chart panel each.
    #[serde(flatten, default)]
    pub extra: std::collections::BTreeMap<String, f64>,
}

/// Appends metrics lines, flushing each so a crash loses nothing already logged.
pub struct MetricsWriter {
    path: std::path::PathBuf,
    /// Opened at the first row: a fresh run replaces the old history only once it has a step of its
    /// own to write, so a run that fails before step 1 leaves the folder's metrics as they were.
    file: Option<File>,
    fresh: bool,
}

impl MetricsWriter {
    /// Appends to `path`, or (`fresh`) replaces it when the first row is written.
    pub fn open(path: &Path, fresh: bool) -> Result<Self> {
        Ok(Self { path: path.to_path_buf(), file: None, fresh })
    }

    pub fn write(&mut self, m: &StepMetrics) -> Result<()> {
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(!self.fresh)
                .write(true)
                .truncate(self.fresh)
                .open(&self.path)
                .with_context(|| format!("opening {}", self.path.display()))?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().context("metrics file")?;
        writeln!(file, "{}", serde_json::to_string(m)?)?;
        file.flush()?;
        Ok(())
    }
}

pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut rows = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(&line)
            .with_context(|| format!("{}:{}: expected a metrics object", path.display(), i + 1))?;
        rows.push(row);
    }
    Ok(rows)
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        let bytes: &'static [u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, bytes);
    });
}

/// Draws loss, learning rate and any stage-specific series against the step into a PNG at `out`,
/// one panel each, loss on top.
pub fn write_chart(metrics: &[StepMetrics], title: &str, out: &Path) -> Result<()> {
    if metrics.is_empty() {
        bail!("no metrics to chart");
    }
    register_font();
    // A MoE model's per-expert loads share one panel; every other series gets its own.
    let is_load = |k: &str| k.starts_with("expert_load_");
    let keys: Vec<&String> = metrics[0].extra.keys().filter(|k| !is_load(k)).collect();
    let loads: Vec<&String> = metrics[0].extra.keys().filter(|k| is_load(k)).collect();
    let panels_below = 1 + keys.len() + usize::from(!loads.is_empty());
    let height = 460 + 260 * panels_below as u32;
    let root = BitMapBackend::new(out, (960, height)).into_drawing_area();
    root.fill(&WHITE).map_err(chart_err)?;
    let (top, rest) = root.split_vertically(460);
    let panels = rest.split_evenly((panels_below, 1));
    let steps = metrics.iter().map(|m| m.step).max().unwrap_or(1).max(1) as f64;
    let series = |f: &dyn Fn(&StepMetrics) -> Option<f64>| -> Vec<(f64, f64)> {
        metrics.iter().filter_map(|m| f(m).map(|v| (m.step as f64, v))).collect()
    };
    draw_series(&top, &format!("{title} — loss"), "loss", &[("loss".into(), series(&|m| Some(m.loss)))], steps)?;
    draw_series(&panels[0], "learning rate", "lr", &[("lr".into(), series(&|m| Some(m.lr)))], steps)?;
    for (panel, key) in panels[1..].iter().zip(&keys) {
        let points = series(&|m| m.extra.get(*key).copied());
        if !points.is_empty() {
            draw_series(panel, key, key, &[(key.to_string(), points)], steps)?;
        }
    }
    if let Some(panel) = panels.last().filter(|_| !loads.is_empty()) {
        let lines: Vec<(String, Vec<(f64, f64)>)> = loads
            .iter()
            .map(|key| (key.trim_start_matches("expert_load_").to_string(), series(&|m| m.extra.get(*key).copied())))
            .collect();
        draw_series(panel, "expert load (share of routed tokens)", "load", &lines, steps)?;
    }
    root.present().map_err(chart_err)?;
    Ok(())
}

fn draw_series(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    caption: &str,
    label: &str,
    lines: &[(String, Vec<(f64, f64)>)],
    max_step: f64,
) -> Result<()> {
    let values = || lines.iter().flat_map(|(_, points)| points.iter().map(|p| p.1));
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(hi.abs() * 1e-3).max(1e-12);
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..max_step, (lo - pad)..(hi + pad))
        .map_err(chart_err)?;
    // Small or finely spread values (a learning rate, an aux loss) in scientific notation.
    let scientific = label == "lr" || hi.abs().max(lo.abs()) < 0.05;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(label)
        .y_label_formatter(&|v| if scientific { format!("{v:.2e}") } else { format!("{v:.3}") })
        .draw()
        .map_err(chart_err)?;
    const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, RGBColor(230, 140, 0)];
    let single = lines.len() == 1;
    for (i, (name, points)) in lines.iter().enumerate() {
        // Loss blue, learning rate red, a stage's own series green; several lines take distinct colours.
        let color = match (single, label) {
            (true, "loss") => BLUE,
            (true, "lr") => RED,
            (true, _) => GREEN,
            (false, _) => COLORS[i % COLORS.len()],
        };
        let series = chart.draw_series(LineSeries::new(points.iter().copied(), color)).map_err(chart_err)?;
        if !single {
            series.label(format!("expert {name}")).legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
    }
    if !single {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(chart_err)?;
    }
    Ok(())
}

fn chart_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing chart: {e:?}")
}
