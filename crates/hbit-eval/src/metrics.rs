//! Per-task metrics from per-request scores, as lm-evaluation-harness aggregates them:
//! acc (the highest log-likelihood is the gold choice), acc_norm (the same per character of
//! the choice), LAMBADA's acc (the target is the greedy continuation) and perplexity
//! (`exp(−mean over documents of ln p(target))`), and the standard error of each mean.

use serde_json::{json, Value};

use crate::error::{EvalError, Result};
use crate::loglikelihood::Score;
use crate::tasks::{Doc, Scoring, Task};

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    pub task: Task,
    pub docs: usize,
    pub acc: f64,
    pub acc_stderr: f64,
    /// Multiple choice with a choice per continuation (not WinoGrande or LAMBADA).
    pub acc_norm: Option<(f64, f64)>,
    /// LAMBADA: per-document perplexity of the target word.
    pub perplexity: Option<f64>,
}

impl TaskResult {
    /// The metric shown in the paper's table (see [`Task::headline_metric`]).
    pub fn headline(&self) -> f64 {
        match (self.task.headline_metric(), self.acc_norm) {
            ("acc_norm", Some((v, _))) => v,
            _ => self.acc,
        }
    }

    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "task": self.task.name(),
            "docs": self.docs,
            "acc": self.acc,
            "acc_stderr": self.acc_stderr,
        });
        if let Some((n, se)) = self.acc_norm {
            v["acc_norm"] = json!(n);
            v["acc_norm_stderr"] = json!(se);
        }
        if let Some(p) = self.perplexity {
            v["perplexity"] = json!(p);
        }
        v
    }
}

/// Mean and its standard error (sample standard deviation / √n), lm-evaluation-harness's
/// `mean_stderr`.
pub fn mean_and_stderr(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, f64::NAN);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

/// First index of the largest value (numpy's argmax).
fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Aggregates `scores` (one per request, documents' requests in order) over `docs`.
pub fn score_task(task: Task, docs: &[Doc], scores: &[Score]) -> Result<TaskResult> {
    let expected: usize = docs.iter().map(|d| d.requests.len()).sum();
    if scores.len() != expected || docs.is_empty() {
        return Err(EvalError::Input(format!(
            "{}: {} scores for {} requests of {} documents",
            task.name(),
            scores.len(),
            expected,
            docs.len()
        )));
    }
    let mut acc = Vec::with_capacity(docs.len());
    let mut acc_norm = Vec::with_capacity(docs.len());
    let mut target_logprobs = Vec::new();
    let mut rest = scores;
    for doc in docs {
        let (mine, tail) = rest.split_at(doc.requests.len());
        rest = tail;
        match task.scoring() {
            Scoring::MultipleChoice { acc_norm: norm } => {
                let pred = argmax(mine.iter().map(|s| s.logprob));
                acc.push(f64::from(pred == doc.gold));
                if norm {
                    let pred_norm = argmax(
                        mine.iter()
                            .zip(&doc.choice_chars)
                            .map(|(s, &chars)| s.logprob / chars as f64),
                    );
                    acc_norm.push(f64::from(pred_norm == doc.gold));
                }
            }
            Scoring::LastWord => {
                acc.push(f64::from(mine[0].greedy));
                target_logprobs.push(mine[0].logprob);
            }
        }
    }
    let (acc, acc_stderr) = mean_and_stderr(&acc);
    Ok(TaskResult {
        task,
        docs: docs.len(),
        acc,
        acc_stderr,
        acc_norm: (!acc_norm.is_empty()).then(|| mean_and_stderr(&acc_norm)),
        perplexity: (!target_logprobs.is_empty())
            .then(|| (-mean_and_stderr(&target_logprobs).0).exp()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(logprob: f64, greedy: bool) -> Score {
        Score { logprob, greedy }
    }

    fn mc(gold: usize, chars: &[usize]) -> Doc {
        Doc {
            requests: chars
                .iter()
                .map(|_| (String::new(), String::new()))
                .collect(),
            gold,
            choice_chars: chars.to_vec(),
        }
    }

    #[test]
    fn acc_and_acc_norm_by_hand() {
        // Doc 1: lls −4 (4 chars) and −6 (12 chars): acc picks 0, acc_norm −1 vs −0.5 picks 1.
        // Doc 2: lls −2 (2 chars) and −3 (2 chars): both pick 0.
        let docs = [mc(1, &[4, 12]), mc(0, &[2, 2])];
        let scores = [
            s(-4.0, false),
            s(-6.0, false),
            s(-2.0, false),
            s(-3.0, false),
        ];
        let r = score_task(Task::ArcEasy, &docs, &scores).unwrap();
        assert_eq!(r.acc, 0.5);
        // Values [0, 1]: sample sd √0.5, stderr √0.5/√2 = 0.5.
        assert!((r.acc_stderr - 0.5).abs() < 1e-12);
        assert_eq!(r.acc_norm, Some((1.0, 0.0)));
        assert_eq!(r.headline(), 1.0);
        assert_eq!(r.perplexity, None);
    }

    #[test]
    fn ties_go_to_the_first_choice_as_numpy_argmax() {
        let docs = [mc(1, &[1, 1])];
        let r = score_task(Task::Piqa, &docs, &[s(-1.0, false), s(-1.0, false)]).unwrap();
        assert_eq!(r.acc, 0.0);
    }

    #[test]
    fn lambada_accuracy_is_greedy_and_perplexity_is_per_document() {
        let doc = Doc {
            requests: vec![(String::new(), String::new())],
            gold: 0,
            choice_chars: Vec::new(),
        };
        let docs = [doc.clone(), doc];
        let r = score_task(Task::LambadaOpenai, &docs, &[s(-1.0, true), s(-3.0, false)]).unwrap();
        assert_eq!(r.acc, 0.5);
        assert!((r.perplexity.unwrap() - 2f64.exp()).abs() < 1e-12);
        assert_eq!(r.acc_norm, None);
    }

    #[test]
    fn score_count_mismatch_is_an_error() {
        let docs = [mc(0, &[1, 1])];
        let e = score_task(Task::Piqa, &docs, &[s(-1.0, false)]).unwrap_err();
        assert!(e.to_string().contains("1 scores for 2 requests"));
    }
}
