//! Server metrics in the Prometheus text format (`GET /metrics`): request counts by outcome,
//! tokens, the batch's state and latency histograms, all updated without locks on the hot path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Gauge(AtomicUsize);

impl Gauge {
    pub fn set(&self, v: usize) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the latency histograms' buckets.
const LATENCY_BOUNDS: [f64; 14] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A cumulative histogram over [`LATENCY_BOUNDS`] (plus +Inf), its sum in microseconds.
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let i = LATENCY_BOUNDS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = LATENCY_BOUNDS
                .get(i)
                .map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Everything `/metrics` reports.
#[derive(Default)]
pub struct Metrics {
    /// HTTP requests answered, by class of status.
    pub http_2xx: Counter,
    pub http_4xx: Counter,
    pub http_5xx: Counter,
    /// Requests refused because the queue was full (429).
    pub rejected: Counter,
    /// Sequences that ran to their end, failed in the engine, or were dropped by their client.
    pub completed: Counter,
    pub failed: Counter,
    pub cancelled: Counter,
    pub prompt_tokens: Counter,
    pub generated_tokens: Counter,
    /// Prompt tokens served from the prefix cache instead of prefilled.
    pub prefix_hit_tokens: Counter,
    pub steps: Counter,
    /// Tokens run through the model (prompt chunks and decode tokens).
    pub step_tokens: Counter,
    pub running: Gauge,
    pub waiting: Gauge,
    pub kv_reserved_bytes: Gauge,
    pub prefix_cache_bytes: Gauge,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub step_seconds: Histogram,
}

impl Metrics {
    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &Counter, Option<&str>); 12] = [
            (
                "hbit_http_responses_total",
                "HTTP responses by status class",
                &self.http_2xx,
                Some("2xx"),
            ),
            ("hbit_http_responses_total", "", &self.http_4xx, Some("4xx")),
            ("hbit_http_responses_total", "", &self.http_5xx, Some("5xx")),
            (
                "hbit_requests_rejected_total",
                "Requests refused with 429 (queue full)",
                &self.rejected,
                None,
            ),
            (
                "hbit_sequences_total",
                "Sequences by how they ended",
                &self.completed,
                Some("completed"),
            ),
            ("hbit_sequences_total", "", &self.failed, Some("failed")),
            (
                "hbit_sequences_total",
                "",
                &self.cancelled,
                Some("cancelled"),
            ),
            (
                "hbit_prompt_tokens_total",
                "Prompt tokens of admitted requests",
                &self.prompt_tokens,
                None,
            ),
            (
                "hbit_generation_tokens_total",
                "Tokens generated",
                &self.generated_tokens,
                None,
            ),
            (
                "hbit_prefix_cache_hit_tokens_total",
                "Prompt tokens taken from the prefix cache",
                &self.prefix_hit_tokens,
                None,
            ),
            (
                "hbit_engine_steps_total",
                "Forward calls of the batch",
                &self.steps,
                None,
            ),
            (
                "hbit_engine_step_tokens_total",
                "Tokens run through the model",
                &self.step_tokens,
                None,
            ),
        ];
        for (name, help, counter, label) in counters {
            // A labelled family's HELP and TYPE come once, with its first sample.
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            }
            let key = match label {
                Some("2xx" | "4xx" | "5xx") => format!("{{code=\"{}\"}}", label.unwrap_or("")),
                Some(l) => format!("{{outcome=\"{l}\"}}"),
                None => String::new(),
            };
            let _ = writeln!(out, "{name}{key} {}", counter.get());
        }
        let gauges = [
            (
                "hbit_running_sequences",
                "Sequences in the batch",
                &self.running,
            ),
            (
                "hbit_waiting_requests",
                "Requests queued for a slot",
                &self.waiting,
            ),
            (
                "hbit_kv_reserved_bytes",
                "KV-cache bytes reserved by running sequences",
                &self.kv_reserved_bytes,
            ),
            (
                "hbit_prefix_cache_bytes",
                "KV-cache bytes kept for prefix reuse",
                &self.prefix_cache_bytes,
            ),
        ];
        for (name, help, gauge) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                gauge.get()
            );
        }
        self.time_to_first_token.render(
            &mut out,
            "hbit_time_to_first_token_seconds",
            "From submission to the first generated token",
        );
        self.inter_token_latency.render(
            &mut out,
            "hbit_inter_token_latency_seconds",
            "Between two tokens of one sequence",
        );
        self.step_seconds
            .render(&mut out, "hbit_engine_step_seconds", "One engine step");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_prometheus() {
        let m = Metrics::default();
        m.inter_token_latency.observe(0.003);
        m.inter_token_latency.observe(0.05);
        m.inter_token_latency.observe(30.0);
        m.http_2xx.add(2);
        m.running.set(3);
        let text = m.render();
        assert!(text.contains("hbit_inter_token_latency_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("hbit_inter_token_latency_seconds_bucket{le=\"0.06\"} 2\n"));
        assert!(text.contains("hbit_inter_token_latency_seconds_bucket{le=\"10\"} 2\n"));
        assert!(text.contains("hbit_inter_token_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("hbit_inter_token_latency_seconds_count 3\n"));
        assert!(text.contains("hbit_http_responses_total{code=\"2xx\"} 2\n"));
        assert!(text.contains("hbit_running_sequences 3\n"));
        // Every sample line is `name{labels} number`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
