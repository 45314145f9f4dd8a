//! Evaluation on hbit's inference engine, so what is evaluated is what is served.
//!
//! Map: [`ppl`] (rolling perplexity of a text); [`loglikelihood`] (log p(continuation | context)
//! for many requests, batched, contexts shared between a document's choices); [`tasks`] (the
//! paper's six zero-shot tasks in their official file layouts, turned into requests exactly as
//! lm-evaluation-harness builds them); [`metrics`] (acc, acc_norm, LAMBADA perplexity, standard
//! errors) and [`report`] (the paper's Table 1 layout).

#![forbid(unsafe_code)]

pub mod activations;
pub mod error;
pub mod loglikelihood;
pub mod metrics;
pub mod ppl;
pub mod report;
pub mod tasks;

pub use error::{EvalError, Result};
pub use loglikelihood::{encode_pair, score_requests, Request, Score};
pub use metrics::{score_task, TaskResult};
pub use tasks::{load_docs, Doc, Task};
