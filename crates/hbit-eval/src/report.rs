//! Results laid out like the paper's Table 1: one row per model, accuracies in percent.

use crate::metrics::TaskResult;
use crate::tasks::Task;

/// One model's row.
#[derive(Debug, Clone, Default)]
pub struct ModelRow {
    pub name: String,
    pub size: String,
    /// Perplexity on the validation text, if measured.
    pub perplexity: Option<f64>,
    /// Bits per byte of the same text (comparable across tokenizers), if measured.
    pub bits_per_byte: Option<f64>,
    pub results: Vec<TaskResult>,
}

impl ModelRow {
    /// Each task's headline metric ×100 in the paper's column order (None: not measured).
    pub fn headline_percents(&self) -> Vec<Option<f64>> {
        Task::ALL
            .iter()
            .map(|&t| {
                self.results
                    .iter()
                    .find(|r| r.task == t)
                    .map(|r| 100.0 * r.headline())
            })
            .collect()
    }

    /// Mean of the six headline metrics ×100, only when all six were measured.
    pub fn average_percent(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .headline_percents()
            .into_iter()
            .collect::<Option<_>>()?;
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn cell(value: Option<f64>) -> String {
    value.map_or("–".into(), |v| format!("{v:.2}"))
}

/// A Markdown table with the paper's columns (Models, Size, PPL, ARCc, ARCe, HS, PQ, WGe, LBA,
/// Avg). Each task shows its headline metric ×100 (acc_norm for ARC and HellaSwag, acc
/// otherwise); Avg is the mean of the six and is left empty unless all six were measured.
pub fn table1(rows: &[ModelRow]) -> String {
    // Bits per byte gets a column when some row has it (the paper's tables have none).
    let bpb = rows.iter().any(|r| r.bits_per_byte.is_some());
    let mut out = String::from("| Models | Size | PPL↓ |");
    if bpb {
        out.push_str(" BPB↓ |");
    }
    for t in Task::ALL {
        out.push_str(&format!(" {}↑ |", t.column()));
    }
    out.push_str(" Avg↑ |\n|---|---|---|");
    out.push_str(&"---|".repeat(Task::ALL.len() + 1 + usize::from(bpb)));
    out.push('\n');
    for row in rows {
        let values = row.headline_percents();
        let avg = row.average_percent();
        out.push_str(&format!(
            "| {} | {} | {} |",
            row.name,
            row.size,
            cell(row.perplexity)
        ));
        if bpb {
            let b = row
                .bits_per_byte
                .map_or("–".to_string(), |b| format!("{b:.3}"));
            out.push_str(&format!(" {b} |"));
        }
        for v in values {
            out.push_str(&format!(" {} |", cell(v)));
        }
        out.push_str(&format!(" {} |\n", cell(avg)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(task: Task, acc: f64, acc_norm: Option<f64>) -> TaskResult {
        TaskResult {
            task,
            docs: 10,
            acc,
            acc_stderr: 0.0,
            acc_norm: acc_norm.map(|v| (v, 0.0)),
            perplexity: None,
        }
    }

    #[test]
    fn table_shows_headline_metrics_in_paper_order_and_averages_only_full_rows() {
        let all: Vec<TaskResult> = Task::ALL
            .iter()
            .map(|&t| result(t, 0.5, Some(0.25)))
            .collect();
        let rows = [
            ModelRow {
                name: "BitNet v2 (a4)".into(),
                size: "tiny".into(),
                perplexity: Some(12.345),
                bits_per_byte: None,
                results: all,
            },
            ModelRow {
                name: "partial".into(),
                size: "tiny".into(),
                perplexity: None,
                bits_per_byte: None,
                results: vec![result(Task::Piqa, 0.6, Some(0.7))],
            },
        ];
        let t = table1(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "| Models | Size | PPL↓ | ARCc↑ | ARCe↑ | HS↑ | PQ↑ | WGe↑ | LBA↑ | Avg↑ |"
        );
        // ARCc, ARCe, HS show acc_norm (25), the rest acc (50); WGe has no acc_norm anyway.
        // Avg = (3·25 + 3·50) / 6 = 37.5.
        assert_eq!(
            lines[2],
            "| BitNet v2 (a4) | tiny | 12.35 | 25.00 | 25.00 | 25.00 | 50.00 | 50.00 | 50.00 | 37.50 |"
        );
        assert_eq!(
            lines[3],
            "| partial | tiny | – | – | – | – | 60.00 | – | – | – |"
        );
    }

    #[test]
    fn bits_per_byte_gets_a_column_only_when_measured() {
        let rows = [
            ModelRow {
                name: "a".into(),
                size: "tiny".into(),
                perplexity: Some(20.0),
                bits_per_byte: Some(1.23456),
                results: Vec::new(),
            },
            ModelRow {
                name: "b".into(),
                ..ModelRow::default()
            },
        ];
        let t = table1(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("| Models | Size | PPL↓ | BPB↓ | ARCc↑"),
            "{t}"
        );
        assert_eq!(lines[1].matches("---").count(), 11);
        assert_eq!(
            lines[2],
            "| a | tiny | 20.00 | 1.235 | – | – | – | – | – | – | – |"
        );
        assert_eq!(lines[3], "| b |  | – | – | – | – | – | – | – | – | – |");
    }
}
