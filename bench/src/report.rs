//! The one table `make bench` prints, and the JSON it writes.

use serde_json::{Value, json};

use crate::proxy::fmt_num;
use crate::stats::Summary;

#[derive(Debug, Clone)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Target {
    pub fn p50_at_most(s: &Summary, ms: f64) -> Target {
        Target {
            text: format!("p50 <= {ms} ms"),
            met: s.n > 0 && s.p50 <= ms,
        }
    }

    pub fn p99_at_most(s: &Summary, ms: f64) -> Target {
        Target {
            text: format!("p99 <= {ms} ms"),
            met: s.n > 0 && s.p99 <= ms,
        }
    }

    pub fn at_most(v: f64, max: f64, text: &str) -> Target {
        Target {
            text: text.to_owned(),
            met: v <= max + 1e-9,
        }
    }

    pub fn exactly(v: f64, want: f64, text: &str) -> Target {
        Target {
            text: text.to_owned(),
            met: (v - want).abs() < 1e-9,
        }
    }
}

enum Row {
    Section(String),
    Latency {
        key: String,
        label: String,
        s: Summary,
        targets: Vec<Target>,
    },
    Count {
        key: String,
        label: String,
        value: f64,
        detail: String,
        targets: Vec<Target>,
    },
}

impl Row {
    fn print(&self) {
        match self {
            Row::Section(t) => println!("{t}"),
            Row::Latency {
                label, s, targets, ..
            } => println!(
                "  {:<w$} {:>10} {:>10} {:>5}  {:<24} {:<9} min {:.2} max {:.2} ms",
                label,
                format!("{:.3} ms", s.p50),
                format!("{:.3} ms", s.p99),
                s.n,
                targets_text(targets),
                status(targets),
                s.min,
                s.max,
                w = W_LABEL - 2,
            ),
            Row::Count {
                label,
                value,
                detail,
                targets,
                ..
            } => {
                let v = if (value - value.round()).abs() < 1e-9 {
                    fmt_num(*value)
                } else {
                    format!("{value:.2}")
                };
                println!(
                    "  {:<w$} {:>10} {:>10} {:>5}  {:<24} {:<9} {}",
                    label,
                    v,
                    "",
                    "",
                    targets_text(targets),
                    status(targets),
                    detail,
                    w = W_LABEL - 2,
                );
            }
        }
    }

    /// `label (target, ...)` when a target of this row is not met.
    fn missed(&self) -> Option<String> {
        let (Row::Latency { label, targets, .. } | Row::Count { label, targets, .. }) = self else {
            return None;
        };
        let bad: Vec<&str> = targets
            .iter()
            .filter(|t| !t.met)
            .map(|t| t.text.as_str())
            .collect();
        (!bad.is_empty()).then(|| format!("{} ({})", label.trim(), bad.join(", ")))
    }
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
}

const W_LABEL: usize = 70;

impl Report {
    pub fn new() -> Self {
        Report::default()
    }

    pub fn section(&mut self, title: &str) {
        self.rows.push(Row::Section(title.to_owned()));
    }

    pub fn latency(&mut self, key: &str, label: &str, s: Summary, targets: Vec<Target>) {
        self.rows.push(Row::Latency {
            key: key.to_owned(),
            label: label.to_owned(),
            s,
            targets,
        });
    }

    pub fn count(&mut self, key: &str, label: &str, value: f64, detail: &str, t: Vec<Target>) {
        self.rows.push(Row::Count {
            key: key.to_owned(),
            label: label.to_owned(),
            value,
            detail: detail.to_owned(),
            targets: t,
        });
    }

    /// The value of the count row `key`, when it was measured.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.rows.iter().find_map(|row| match row {
            Row::Count { key: k, value, .. } if k == key => Some(*value),
            _ => None,
        })
    }

    pub fn print(&self, meta: &Value) {
        let line = "-".repeat(W_LABEL + 78);
        println!();
        println!(
            "{:<W_LABEL$} {:>10} {:>10} {:>5}  {:<24} {:<9} notes",
            "measurement", "p50/value", "p99", "n", "target", "status"
        );
        println!("{line}");
        for row in &self.rows {
            row.print();
        }
        println!("{line}");
        println!(
            "{} on {} CPUs; load average before {} / after {}",
            meta["arch"].as_str().unwrap_or("?"),
            meta["cpus"],
            meta["loadavg_before"].as_str().unwrap_or("?"),
            meta["loadavg_after"].as_str().unwrap_or("?"),
        );
        let missed: Vec<String> = self.rows.iter().filter_map(Row::missed).collect();
        if missed.is_empty() {
            println!("targets: all met");
        } else {
            println!("targets NOT met ({}):", missed.len());
            for m in missed {
                println!("  - {m}");
            }
        }
    }

    pub fn to_json(&self, meta: Value) -> Value {
        let mut section = String::new();
        let mut rows = Vec::new();
        for row in &self.rows {
            match row {
                Row::Section(t) => section = t.clone(),
                Row::Latency {
                    key,
                    label,
                    s,
                    targets,
                } => rows.push(json!({
                    "key": key, "section": section, "label": label.trim(), "unit": "ms",
                    "stats": s.to_json(), "targets": targets_json(targets),
                })),
                Row::Count {
                    key,
                    label,
                    value,
                    detail,
                    targets,
                } => rows.push(json!({
                    "key": key, "section": section, "label": label.trim(), "value": value,
                    "detail": detail, "targets": targets_json(targets),
                })),
            }
        }
        json!({ "meta": meta, "results": rows })
    }
}

fn targets_text(t: &[Target]) -> String {
    t.iter()
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn status(t: &[Target]) -> &'static str {
    if t.is_empty() {
        ""
    } else if t.iter().all(|t| t.met) {
        "met"
    } else {
        "NOT MET"
    }
}

fn targets_json(t: &[Target]) -> Value {
    Value::Array(
        t.iter()
            .map(|t| json!({ "target": t.text, "met": t.met }))
            .collect(),
    )
}
