//! Latency histograms, and the results of a scenario: a table on stdout and a JSON file.
use std::{path::Path, time::Duration};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::server::round3;

/// Latencies in microseconds, from 1 µs to 10 minutes, 3 significant digits.
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts.
        let h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Self(h)
    }

    pub fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        round3(self.0.value_at_quantile(q) as f64 / 1000.0)
    }

    pub fn max_ms(&self) -> f64 {
        round3(self.0.max() as f64 / 1000.0)
    }

    pub fn mean_ms(&self) -> f64 {
        round3(self.0.mean() / 1000.0)
    }

    pub fn summary(&self) -> Value {
        json!({
            "count": self.count(),
            "p50_ms": self.ms(0.50),
            "p90_ms": self.ms(0.90),
            "p99_ms": self.ms(0.99),
            "max_ms": self.max_ms(),
            "mean_ms": self.mean_ms(),
        })
    }
}

/// One figure of a scenario, with its target when it has one.
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// `(">=", 3000.0)` or `("<=", 10.0)`.
    pub target: Option<(&'static str, f64)>,
}

/// What a scenario found.
pub struct Report {
    pub scenario: &'static str,
    pub db: &'static str,
    pub params: Value,
    pub metrics: Vec<Metric>,
    /// Raw details: histograms, server samples per phase.
    pub details: serde_json::Map<String, Value>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, db: &'static str, params: Value) -> Self {
        Self {
            scenario,
            db,
            params,
            metrics: Vec::new(),
            details: serde_json::Map::new(),
            notes: Vec::new(),
        }
    }

    pub fn metric(&mut self, name: impl Into<String>, value: f64, unit: &'static str) {
        self.metrics.push(Metric {
            name: name.into(),
            value: round3(value),
            unit,
            target: None,
        });
    }

    pub fn target(
        &mut self,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        op: &'static str,
        bound: f64,
    ) {
        self.metrics.push(Metric {
            name: name.into(),
            value: round3(value),
            unit,
            target: Some((op, bound)),
        });
    }

    pub fn detail(&mut self, key: &str, value: Value) {
        self.details.insert(key.to_owned(), value);
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn to_json(&self) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "value": m.value,
                    "unit": m.unit,
                    "target": m.target.map(|(op, b)| format!("{op} {}", round3(b))),
                    "met": m.target.map(|t| met(m.value, t)),
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "db": self.db,
            "params": self.params,
            "metrics": metrics,
            "details": self.details,
            "notes": self.notes,
        })
    }

    /// Prints the table.
    #[expect(
        clippy::print_stdout,
        reason = "the table on stdout is the bench's output"
    )]
    pub fn print(&self) {
        println!();
        println!(
            "== {} on {}  {}",
            self.scenario,
            self.db,
            serde_json::to_string(&self.params).unwrap_or_default()
        );
        println!(
            "{:<46} {:>14} {:<8} {:<12}",
            "metric", "value", "unit", "target"
        );
        for m in &self.metrics {
            let (target, verdict) = match m.target {
                Some((op, b)) => (
                    format!("{op} {}", fmt_value(b)),
                    if met(m.value, (op, b)) {
                        "ok"
                    } else {
                        "MISSED"
                    },
                ),
                None => (String::new(), ""),
            };
            println!(
                "{:<46} {:>14} {:<8} {:<12} {}",
                m.name,
                fmt_value(m.value),
                m.unit,
                target,
                verdict
            );
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }

    /// Writes the JSON file, creating its directory.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        write_json(path, &self.to_json())
    }
}

pub fn write_json(path: &Path, value: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

fn met(value: f64, (op, bound): (&str, f64)) -> bool {
    match op {
        ">=" => value >= bound,
        _ => value <= bound,
    }
}

fn fmt_value(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
