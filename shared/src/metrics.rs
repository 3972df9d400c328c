//! CloudWatch metrics in Embedded Metric Format: one JSON line per document
//! in the function's log, turned into metrics by CloudWatch (no API call,
//! nothing on the request path but formatting a line).
//!
//! Namespace `SupportChat`, one dimension, `Function` (send-message,
//! get-history, cleanup, notify-handoffs): 28 custom metrics in all (15, 7,
//! 2 and 4). Everything else a document says (route, status class, reply
//! source, fallback reason, streamed, cache outcome, request id) is a
//! property: searchable in Logs Insights, not a metric, so it costs nothing.
//!
//! Written by hand rather than with `metrics_cloudwatch_embedded`: that
//! crate flushes a process-global recorder when the handler returns, but a
//! streamed reply completes after its handler has returned (in the task
//! that writes the stream), and a global recorder cannot be read apart by
//! tests that run side by side. The format is a few fields of JSON.

use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const NAMESPACE: &str = "SupportChat";

/// A metric's CloudWatch unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Seconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Unit::Count => "Count",
            Unit::Milliseconds => "Milliseconds",
            Unit::Seconds => "Seconds",
        }
    }
}

/// Where documents go: the log (stdout) in a function, a buffer in tests.
pub type Sink = Arc<dyn Fn(&str) + Send + Sync>;

/// One document being assembled.
#[derive(Debug, Default)]
pub struct Doc {
    metrics: Vec<(&'static str, f64, Unit)>,
    properties: Map<String, Value>,
}

impl Doc {
    pub fn count(mut self, name: &'static str, n: u64) -> Self {
        self.metrics.push((name, n as f64, Unit::Count));
        self
    }

    pub fn flag(self, name: &'static str, on: bool) -> Self {
        self.count(name, u64::from(on))
    }

    pub fn millis(mut self, name: &'static str, d: Duration) -> Self {
        self.metrics
            .push((name, d.as_secs_f64() * 1000.0, Unit::Milliseconds));
        self
    }

    pub fn seconds(mut self, name: &'static str, d: Duration) -> Self {
        self.metrics.push((name, d.as_secs_f64(), Unit::Seconds));
        self
    }

    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_owned(), value.into());
        self
    }
}

/// The emitter of one function.
#[derive(Clone)]
pub struct Metrics {
    function: &'static str,
    sink: Option<Sink>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("function", &self.function)
            .field("on", &self.sink.is_some())
            .finish()
    }
}

impl Metrics {
    /// Emits nothing (library use, most tests).
    pub fn off() -> Self {
        Metrics {
            function: "",
            sink: None,
        }
    }

    /// Lines on stdout: the function's log.
    pub fn stdout(function: &'static str) -> Self {
        Self::to(function, Arc::new(|line: &str| println!("{line}")))
    }

    pub fn to(function: &'static str, sink: Sink) -> Self {
        Metrics {
            function,
            sink: Some(sink),
        }
    }

    pub fn emit(&self, doc: Doc) {
        if let Some(sink) = &self.sink {
            sink(&self.render(doc).to_string());
        }
    }

    fn render(&self, doc: Doc) -> Value {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let defs: Vec<Value> = doc
            .metrics
            .iter()
            .map(|(name, _, unit)| json!({ "Name": name, "Unit": unit.as_str() }))
            .collect();
        let mut out = doc.properties;
        out.insert(
            "_aws".into(),
            json!({
                "Timestamp": now_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [["Function"]],
                    "Metrics": defs,
                }]
            }),
        );
        out.insert("Function".into(), self.function.into());
        for (name, value, _) in doc.metrics {
            out.insert(name.into(), json!(value));
        }
        Value::Object(out)
    }
}

static COLD: AtomicBool = AtomicBool::new(true);

/// True for the first request of this process (a cold start), then false.
pub fn cold_start() -> bool {
    COLD.swap(false, Ordering::Relaxed)
}

/// `2xx`, `4xx`, `5xx`...
pub fn status_class(status: u16) -> String {
    format!("{}xx", status / 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn a_document_declares_each_metric_under_the_namespace_and_dimension() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l = lines.clone();
        let m = Metrics::to(
            "send-message",
            Arc::new(move |s: &str| l.lock().unwrap().push(s.to_owned())),
        );
        m.emit(
            Doc::default()
                .count("Replies", 1)
                .millis("ClaudeLatency", Duration::from_millis(1500))
                .property("source", "claude"),
        );
        let v: Value = serde_json::from_str(&lines.lock().unwrap()[0]).unwrap();
        let cw = &v["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(cw["Namespace"], "SupportChat");
        assert_eq!(cw["Dimensions"], json!([["Function"]]));
        assert_eq!(
            cw["Metrics"][1],
            json!({ "Name": "ClaudeLatency", "Unit": "Milliseconds" })
        );
        assert_eq!(v["Function"], "send-message");
        assert_eq!(v["Replies"], 1.0);
        assert_eq!(v["ClaudeLatency"], 1500.0);
        assert_eq!(v["source"], "claude");
        assert!(v["_aws"]["Timestamp"].as_u64().unwrap() > 1_700_000_000_000);
        Metrics::off().emit(Doc::default().count("Replies", 1));
    }
}
