//! Latency samples and their summary (nearest-rank percentiles over a sorted Vec).

use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn with_capacity(n: usize) -> Self {
        Samples(Vec::with_capacity(n))
    }

    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub fn summary(&self) -> Summary {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Summary::default();
        }
        let rank = |p: f64| v[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        Summary {
            n,
            min: v[0],
            p50: rank(50.0),
            p90: rank(90.0),
            p99: rank(99.0),
            max: v[n - 1],
            mean: v.iter().sum::<f64>() / n as f64,
        }
    }
}

/// Milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn to_json(self) -> Value {
        json!({
            "n": self.n, "min_ms": self.min, "p50_ms": self.p50, "p90_ms": self.p90,
            "p99_ms": self.p99, "max_ms": self.max, "mean_ms": self.mean,
        })
    }

    /// Subtracts a constant (e.g. the fake Claude's own round trip) from every statistic.
    pub fn minus(self, ms: f64) -> Summary {
        let f = |x: f64| (x - ms).max(0.0);
        Summary {
            n: self.n,
            min: f(self.min),
            p50: f(self.p50),
            p90: f(self.p90),
            p99: f(self.p99),
            max: f(self.max),
            mean: f(self.mean),
        }
    }
}
