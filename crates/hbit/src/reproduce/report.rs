//! `paper-tables.md`: the study's results laid out as the paper's Tables 1–5 and Figures 2–3,
//! with the paper's numbers beside ours.

use anyhow::{Context, Result};
use hbit_eval::report::{table1, ModelRow};
use hbit_eval::{Task, TaskResult};
use serde_json::Value;

use super::{
    Study, A48, ATTENTION_SETTINGS, B158, B158_A4, NOROT_A4, NOROT_A8, QUAROT, SPINQUANT, V2A4,
    V2A8, WROT_A4, WROT_A8,
};
use crate::stats_cmd::summary_table;

impl Study<'_> {
    fn result(&self, key: &str) -> Result<Option<Value>> {
        let path = self.results.join(format!("{key}.json"));
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)?;
        Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?,
        ))
    }

    /// A Table 1 row from a result file.
    fn row(&self, key: &str, label: &str) -> Result<ModelRow> {
        let Some(r) = self.result(key)? else {
            return Ok(ModelRow {
                name: label.into(),
                size: self.args.preset.clone(),
                ..ModelRow::default()
            });
        };
        let results = r["tasks"]
            .as_array()
            .map(|ts| ts.iter().filter_map(task_result).collect())
            .unwrap_or_default();
        Ok(ModelRow {
            name: label.into(),
            size: self.args.preset.clone(),
            perplexity: r["wikitext2"]["perplexity"].as_f64(),
            bits_per_byte: r["wikitext2"]["bits_per_byte"].as_f64(),
            results,
        })
    }

    /// Final validation loss of a run (nats per token) and its bits per byte where the run
    /// logged it, from its metrics.jsonl.
    fn final_val_loss(&self, key: &str) -> Option<(u64, f64, Option<f64>)> {
        let text = std::fs::read_to_string(self.dir(key).join("metrics.jsonl")).ok()?;
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| {
                let loss = v["val_loss"].as_f64()?;
                Some((v["step"].as_u64()?, loss, v["val_bits_per_byte"].as_f64()))
            })
    }

    pub(super) fn write_report(&self) -> Result<()> {
        let a = self.args;
        let mut md = String::new();
        let tokens_per_step = a.batch_size as u64
            * a.seq_len
                .map(|l| l as u64)
                .unwrap_or_else(|| self.preset_context().unwrap_or(0) as u64);
        md.push_str(&format!(
            "# BitNet v2 at `{}` scale: the paper's Tables 1–5 reproduced with `hbit reproduce`\n\n\
             Every model trains on the same tokens in the same order (seed {}): {} steps × {} \
             tokens = {} tokens from scratch at a8; the a4 models (BitNet v2 a4, a4.8, the \
             ablations at a4) continue from the a8 checkpoint at step {} ({:.0}% of tokens at a4, \
             optimizer state reused). Training data: {}. Perplexity is on WikiText-2 test (the \
             paper reports C4 validation); tasks score the first {} documents of each set \
             (WinoGrande and LAMBADA: small hand-written fixtures in the official layouts, so \
             those columns test the pipeline rather than the model). Accuracy is acc_norm for \
             ARC and HellaSwag, acc otherwise, ×100. The paper's rows are at 400M–7B parameters \
             and 100B tokens; ours are {} tokens on a 2-core CPU, so only large effects can \
             show. The commands run are in `commands.txt`; per-model metrics in `results/`.\n\n",
            a.preset,
            a.seed,
            a.steps,
            tokens_per_step,
            a.steps * tokens_per_step,
            self.switch_step,
            100.0 * (a.steps - self.switch_step) as f64 / a.steps as f64,
            a.data
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
            if a.task_limit == 0 {
                "all".to_string()
            } else {
                a.task_limit.to_string()
            },
            a.steps * tokens_per_step,
        ));

        md.push_str("## Validation loss at the end of training (held-out split of the training corpus)\n\n| run | step | validation loss (nats / token) | bits / byte |\n|---|---|---|---|\n");
        for m in [
            &B158, &A48, &V2A8, &V2A4, &NOROT_A8, &NOROT_A4, &WROT_A8, &WROT_A4,
        ] {
            match self.final_val_loss(m.key) {
                Some((step, loss, bpb)) => {
                    let bpb = bpb.map_or("–".into(), |b| format!("{b:.4}"));
                    md.push_str(&format!("| {} | {step} | {loss:.4} | {bpb} |\n", m.label))
                }
                None => md.push_str(&format!("| {} | – | – | – |\n", m.label)),
            }
        }

        // Each run's loss curve (drawn by `hbit train`), copied beside the tables.
        let plots = self.args.out.join("plots");
        std::fs::create_dir_all(&plots)?;
        let mut curves = Vec::new();
        for m in [
            &B158, &A48, &V2A8, &V2A4, &NOROT_A8, &NOROT_A4, &WROT_A8, &WROT_A4,
        ] {
            let png = self.dir(m.key).join("loss.png");
            if png.is_file() {
                let name = format!("{}-loss.png", m.key);
                std::fs::copy(&png, plots.join(&name))
                    .with_context(|| format!("copying {}", png.display()))?;
                curves.push(format!("`plots/{name}`"));
            }
        }
        if !curves.is_empty() {
            md.push_str(&format!(
                "\nLoss curves (train and validation against tokens): {}.\n",
                curves.join(", ")
            ));
        }

        md.push_str("\n## Table 1: BitNet v2 vs BitNet b1.58 and BitNet a4.8\n\nOurs:\n\n");
        let rows = [&B158, &A48, &V2A8, &V2A4]
            .iter()
            .map(|m| self.row(m.key, m.label))
            .collect::<Result<Vec<_>>>()?;
        md.push_str(&table1(&rows));
        md.push_str(&format!(
            "\nPaper (400M, C4 perplexity):\n\n{}",
            PAPER_TABLE1_400M
        ));
        if !a.extra_seeds.is_empty() {
            md.push_str(&self.seeds_table()?);
        }

        for (m, title, paper) in [
            (
                &V2A8,
                "Table 2: BitNet v2 (a8) with low-bit attention",
                PAPER_TABLE2_3B,
            ),
            (
                &V2A4,
                "Table 3: BitNet v2 (a4) with low-bit attention",
                PAPER_TABLE3_3B,
            ),
        ] {
            md.push_str(&format!("\n## {title}\n\nOurs (post-RoPE absmax per head and token, BOS kept at 8 bits):\n\n"));
            let rows = ATTENTION_SETTINGS
                .iter()
                .map(|(suffix, label, _, _)| {
                    self.row(
                        &format!("{}{suffix}", m.key),
                        &format!("{} {label}", m.label),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            md.push_str(&table1(&rows));
            md.push_str(&format!("\nPaper (3B):\n\n{paper}"));
        }

        md.push_str("\n## Table 4: BitNet v2 (a4) vs post-training rotation of BitNet b1.58\n\nOurs (all W1.58 A4, weights by absmean after rotation; QuaRot-style: randomized Hadamards kept online before every projection, norm scales not fused; SpinQuant: residual and value rotations learned by Cayley SGD on the training text and folded into the weights with the norm scales, an online Hadamard before W_down):\n\n");
        let rows = [&B158_A4, &QUAROT, &SPINQUANT, &V2A4]
            .iter()
            .map(|m| self.row(m.key, m.label))
            .collect::<Result<Vec<_>>>()?;
        md.push_str(&table1(&rows));
        md.push_str(&format!(
            "\nPaper (1.3B, fused rotation):\n\n{PAPER_TABLE4}"
        ));

        md.push_str("\n## Table 5: ablations on the Hadamard transform of H-BitLinear\n\nOurs (Avg of the six tasks; PPL and bits per byte on WikiText-2):\n\n| Methods | #Bits | Acc.↑ | PPL↓ | BPB↓ |\n|---|---|---|---|---|\n");
        for (label, key, bits) in [
            ("No rotation", NOROT_A8.key, "W1.58A8"),
            ("Weight & activation rotation", WROT_A8.key, "W1.58A8"),
            ("Activation rotation (BitNet v2)", V2A8.key, "W1.58A8"),
            ("No rotation", NOROT_A4.key, "W1.58A4"),
            ("Weight & activation rotation", WROT_A4.key, "W1.58A4"),
            ("Activation rotation (BitNet v2)", V2A4.key, "W1.58A4"),
        ] {
            let row = self.row(key, label)?;
            let acc = row
                .average_percent()
                .map_or("–".into(), |a| format!("{a:.2}"));
            let ppl = row.perplexity.map_or("–".into(), |p| format!("{p:.2}"));
            let bpb = row.bits_per_byte.map_or("–".into(), |b| format!("{b:.3}"));
            md.push_str(&format!("| {label} | {bits} | {acc} | {ppl} | {bpb} |\n"));
        }
        md.push_str(&format!("\nPaper (1.3B):\n\n{PAPER_TABLE5_13B}"));

        md.push_str("\n## Figures 2–3: activation distributions before and after the Hadamard transform\n\n");
        for m in [&B158, &V2A8, &V2A4] {
            let path = self
                .args
                .out
                .join("activations")
                .join(m.key)
                .join("activations.json");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let v: Value = serde_json::from_str(&text)?;
            md.push_str(&format!(
                "### {}\n\nPlots: `activations/{}/{{o_proj,down_proj,qkv,gate_up}}.png`. Per layer, before → after the transform:\n\n{}\n",
                m.label,
                m.key,
                summary_from_json(&v)
            ));
        }
        md.push_str(&self.timings_table()?);
        hbit_train::checkpoint::write_file_atomic(
            &self.args.out.join("paper-tables.md"),
            md.as_bytes(),
        )?;
        Ok(())
    }

    /// BitNet b1.58 and v2 at every seed: each seed's number, their mean and sample standard
    /// deviation, and the paired differences that Table 1 turns on with their 95% intervals.
    fn seeds_table(&self) -> Result<String> {
        let extra: Vec<Study> = self
            .args
            .extra_seeds
            .iter()
            .map(|&s| self.for_seed(s))
            .collect();
        // The main study's files are its own (not under seed<N>/).
        let studies: Vec<&Study> = std::iter::once(self).chain(&extra).collect();
        let mut md = format!(
            "\n### BitNet b1.58 and BitNet v2 at {} seeds\n\nThe same recipe at each seed; the \
             seed sets the initial weights, which sequences are held out for validation and the \
             order of the batches, so validation losses are not on a common set across seeds \
             (within a seed, every model shares one). Mean ± sample standard deviation over the \
             seeds that finished; for the paired differences (the same seed's two models), the \
             95% interval of the mean difference (Student's t): an interval that contains 0 does \
             not show a difference.\n\n| model | measure |",
            studies.len()
        );
        for s in &studies {
            md.push_str(&format!(" seed {} |", s.seed));
        }
        md.push_str(" mean ± sd |\n|---|---|");
        md.push_str(&"---|".repeat(studies.len() + 1));
        md.push('\n');
        type Measure = (&'static str, fn(&Study, &str) -> Option<f64>);
        let measures: [Measure; 4] = [
            ("WikiText-2 bits/byte", |s, k| {
                s.result(k).ok()??["wikitext2"]["bits_per_byte"].as_f64()
            }),
            ("WikiText-2 PPL", |s, k| {
                s.result(k).ok()??["wikitext2"]["perplexity"].as_f64()
            }),
            ("task Avg", |s, k| s.row(k, "").ok()?.average_percent()),
            ("validation loss", |s, k| {
                s.final_val_loss(k).map(|(_, loss, _)| loss)
            }),
        ];
        let mut line = |label: &str, measure: &str, values: Vec<Option<f64>>, paired: bool| {
            md.push_str(&format!("| {label} | {measure} |"));
            for v in &values {
                md.push_str(&v.map_or(" – |".into(), |v| format!(" {v:.4} |")));
            }
            let present: Vec<f64> = values.into_iter().flatten().collect();
            let interval = match (paired, t_interval_95(&present)) {
                (true, Some((lo, hi))) => format!(" (95%: {lo:+.4} … {hi:+.4})"),
                _ => String::new(),
            };
            md.push_str(&format!(" {}{interval} |\n", mean_sd(&present)));
        };
        for m in [&B158, &V2A8, &V2A4] {
            for (measure, f) in measures {
                line(
                    m.label,
                    measure,
                    studies.iter().map(|s| f(s, m.key)).collect(),
                    false,
                );
            }
        }
        let bpb = measures[0].1;
        for (a, b) in [(&V2A8, &B158), (&V2A4, &V2A8), (&V2A4, &B158)] {
            let diffs = studies
                .iter()
                .map(|s| Some(bpb(s, a.key)? - bpb(s, b.key)?))
                .collect();
            line(
                &format!("{} − {}", a.label, b.label),
                "WikiText-2 bits/byte",
                diffs,
                true,
            );
        }
        Ok(md)
    }

    /// How long each stage took, summed over the sessions that ran it, and on which CPUs.
    fn timings_table(&self) -> Result<String> {
        let Ok(text) = std::fs::read_to_string(&self.timings) else {
            return Ok(String::new());
        };
        // (stage, seed) in first-run order → (seconds, runs, CPUs).
        type Totals = (f64, usize, Vec<String>);
        let mut rows: Vec<((String, u64), Totals)> = Vec::new();
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        {
            let (Some(stage), Some(seed), Some(seconds)) = (
                v["stage"].as_str(),
                v["seed"].as_u64(),
                v["seconds"].as_f64(),
            ) else {
                continue;
            };
            let cpu = v["cpu"].as_str().unwrap_or("unknown").to_string();
            let key = (stage.to_string(), seed);
            let at = match rows.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    rows.push((key, (0.0, 0, Vec::new())));
                    rows.len() - 1
                }
            };
            let (total, runs, cpus) = &mut rows[at].1;
            *total += seconds;
            *runs += 1;
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
        let mut md = format!(
            "\n## Time per stage\n\nWall-clock time of each stage (`{}`), summed over the \
             processes that worked on it (a run resumed after an interruption counts each \
             part; time lost to a killed process is not counted), on all the CPU's cores.\n\n| \
             stage | seed | minutes | processes | CPU |\n|---|---|---|---|---|\n",
            super::TIMINGS_FILE,
        );
        let mut sum = 0.0;
        for ((stage, seed), (seconds, runs, cpus)) in &rows {
            sum += seconds;
            md.push_str(&format!(
                "| {stage} | {seed} | {:.1} | {runs} | {} |\n",
                seconds / 60.0,
                cpus.join(", ")
            ));
        }
        md.push_str(&format!(
            "| all | | {:.1} ({:.1} h) | | |\n",
            sum / 60.0,
            sum / 3600.0
        ));
        Ok(md)
    }

    fn preset_context(&self) -> Option<usize> {
        hbit_train::config::preset(
            &self.args.preset,
            hbit_train::Variant::BitnetV2,
            hbit_kernels::quant::ActBits::Int8,
        )
        .ok()
        .map(|c| c.max_position_embeddings)
    }
}

/// "mean ± sd" of `values` (sample standard deviation; the mean alone for one value).
pub(super) fn mean_sd(values: &[f64]) -> String {
    let n = values.len() as f64;
    match values.len() {
        0 => "–".into(),
        1 => format!("{:.4} (1 seed)", values[0]),
        _ => {
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
            format!("{mean:.4} ± {:.4}", var.sqrt())
        }
    }
}

/// The 95% confidence interval of the mean of `values` (Student's t, n − 1 degrees of
/// freedom); `None` below two values or past the table's ten.
pub(super) fn t_interval_95(values: &[f64]) -> Option<(f64, f64)> {
    // Two-sided 97.5% quantiles of t for 1..=10 degrees of freedom.
    const T975: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    let n = values.len();
    let t = *T975.get(n.checked_sub(2)?)?;
    let mean = values.iter().sum::<f64>() / n as f64;
    let sd = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let half = t * sd / (n as f64).sqrt();
    Some((mean - half, mean + half))
}

/// A [`TaskResult`] back from its JSON.
fn task_result(v: &Value) -> Option<TaskResult> {
    Some(TaskResult {
        task: Task::parse(v["task"].as_str()?).ok()?,
        docs: v["docs"].as_u64()? as usize,
        acc: v["acc"].as_f64()?,
        acc_stderr: v["acc_stderr"].as_f64().unwrap_or(f64::NAN),
        acc_norm: v["acc_norm"]
            .as_f64()
            .map(|n| (n, v["acc_norm_stderr"].as_f64().unwrap_or(f64::NAN))),
        perplexity: v["perplexity"].as_f64(),
    })
}

/// The activation summary table from an `activations.json`.
fn summary_from_json(v: &Value) -> String {
    use hbit_engine::Site;
    use hbit_eval::activations::Summary;
    let summaries: Vec<Summary> = v["sites"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| {
                    let site = Site::ALL
                        .into_iter()
                        .find(|x| Some(x.name()) == s["site"].as_str())?;
                    Some(Summary {
                        layer: s["layer"].as_u64()? as usize,
                        site,
                        rotated: s["hadamard"].as_bool()?,
                        count: s["count"].as_u64()? as usize,
                        mean: s["mean"].as_f64()?,
                        std: s["std"].as_f64()?,
                        kurtosis: s["kurtosis"].as_f64()?,
                        max_abs: s["max_abs"].as_f64()?,
                        mean_abs: s["mean_abs"].as_f64()?,
                        int4_clipped: s["int4_clipped"].as_f64()?,
                        histogram: Vec::new(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    summary_table(&summaries)
}

const PAPER_TABLE1_400M: &str = "\
| Models | Size | PPL↓ | ARCc↑ | ARCe↑ | HS↑ | PQ↑ | WGe↑ | LBA↑ | Avg↑ |
|---|---|---|---|---|---|---|---|---|---|
| BitNet b1.58 | 400M | 13.37 | 24.32 | 43.01 | 39.51 | 64.91 | 51.93 | 45.51 | 44.87 |
| BitNet a4.8 | 400M | 13.61 | 24.15 | 41.75 | 39.48 | 65.18 | 53.59 | 44.34 | 44.75 |
| BitNet v2 (a8) | 400M | 13.50 | 23.29 | 43.06 | 39.06 | 64.74 | 50.59 | 45.26 | 44.33 |
| BitNet v2 (a4) | 400M | 13.78 | 23.29 | 41.46 | 38.33 | 65.45 | 50.59 | 44.56 | 43.95 |
";

const PAPER_TABLE2_3B: &str = "\
| Models | Size | ARCc↑ | ARCe↑ | HS↑ | PQ↑ | WGe↑ | LBA↑ | Avg↑ |
|---|---|---|---|---|---|---|---|---|
| BitNet v2 (a8) | 3B | 30.55 | 55.56 | 57.19 | 71.33 | 58.72 | 60.90 | 55.71 |
| w/ 4-bit KV | 3B | 29.52 | 55.18 | 57.17 | 70.95 | 58.56 | 60.84 | 55.37 |
| w/ 4-bit QKV | 3B | 30.63 | 55.22 | 57.15 | 71.16 | 58.96 | 60.49 | 55.60 |
| w/ 4-bit Q, 3-bit KV | 3B | 29.69 | 55.22 | 56.22 | 71.49 | 57.62 | 59.01 | 54.88 |
";

const PAPER_TABLE3_3B: &str = "\
| Models | Size | ARCc↑ | ARCe↑ | HS↑ | PQ↑ | WGe↑ | LBA↑ | Avg↑ |
|---|---|---|---|---|---|---|---|---|
| BitNet v2 (a4) | 3B | 28.92 | 55.01 | 56.59 | 71.65 | 59.67 | 60.74 | 55.43 |
| w/ 4-bit KV | 3B | 29.52 | 54.46 | 56.36 | 71.49 | 58.17 | 60.14 | 55.02 |
| w/ 4-bit QKV | 3B | 28.58 | 55.43 | 56.32 | 71.16 | 57.93 | 60.70 | 55.02 |
| w/ 4-bit Q, 3-bit KV | 3B | 29.18 | 55.51 | 55.85 | 71.60 | 58.41 | 59.54 | 55.02 |
";

const PAPER_TABLE4: &str = "\
| Models | PPL↓ | ARCc↑ | ARCe↑ | HS↑ | PQ↑ | WGe↑ | LBA↑ | Avg↑ |
|---|---|---|---|---|---|---|---|---|
| QuaRot | 20.83 | 24.74 | 40.78 | 40.54 | 62.89 | 49.33 | 36.89 | 42.53 |
| SpinQuant | 19.80 | 24.74 | 40.19 | 40.77 | 62.73 | 52.09 | 39.24 | 43.29 |
| BitNet v2 (a4) | 11.33 | 27.56 | 49.58 | 48.00 | 68.23 | 55.49 | 53.58 | 50.41 |
";

const PAPER_TABLE5_13B: &str = "\
| Methods | #Bits | Acc.↑ | PPL↓ |
|---|---|---|---|
| No rotation | W1.58A8 | diverged | diverged |
| Weight & activation rotation | W1.58A8 | 50.47 | 11.14 |
| Activation rotation | W1.58A8 | 51.16 | 11.14 |
| No rotation | W1.58A4 | diverged | diverged |
| Weight & activation rotation | W1.58A4 | 50.09 | 11.33 |
| Activation rotation | W1.58A4 | 50.41 | 11.33 |
";
