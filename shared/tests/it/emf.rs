//! The CloudWatch EMF documents the functions write to their logs: read
//! back as the log lines they are, and checked field by field.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use support_chat::metrics::Metrics;
use support_chat::service::{NotifyReport, cleanup_metrics};
use testkit::claude::Scenario;
use testkit::events::Event;

use super::streaming::Chat;

/// A sink that keeps every line, and the lines parsed.
fn lines() -> (Arc<Mutex<Vec<String>>>, support_chat::metrics::Sink) {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    (
        kept,
        Arc::new(move |l: &str| k.lock().unwrap().push(l.to_owned())),
    )
}

fn docs(kept: &Mutex<Vec<String>>) -> Vec<Value> {
    kept.lock()
        .unwrap()
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect()
}

/// Every metric a document declares is present as a number, in the one
/// namespace and dimension.
fn well_formed(doc: &Value) -> Vec<String> {
    let cw = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(cw["Namespace"], "SupportChat");
    assert_eq!(cw["Dimensions"], serde_json::json!([["Function"]]));
    assert!(doc["Function"].is_string());
    assert!(doc["_aws"]["Timestamp"].is_u64());
    cw["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let name = m["Name"].as_str().unwrap().to_owned();
            assert!(doc[&name].is_number(), "{name} declared and given");
            name
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_reply_writes_its_reply_and_request_documents() {
    let (kept, sink) = lines();
    let chat = Chat::with_metrics(&[], Metrics::to("send-message", sink)).await;
    chat.claude
        .set_default(Scenario::text("We ship fast. Really fast!").chunks(3));
    let f = chat.stream("shipping?", None).await;
    assert_eq!(f.status, 200);
    let all = docs(&kept);
    let reply = all
        .iter()
        .find(|d| d.get("Replies").is_some())
        .expect("a reply document");
    let names = well_formed(reply);
    for n in [
        "Replies",
        "FallbackReplies",
        "Handoffs",
        "ClaudeAttempts",
        "ClaudeLatency",
        "OutputTokens",
        "TimeToFirstDelta",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert_eq!(reply["Function"], "send-message");
    assert_eq!(reply["FallbackReplies"], 0.0);
    assert_eq!(reply["source"], "claude");
    assert_eq!(reply["streamed"], true);
    let request = all
        .iter()
        .find(|d| d.get("Requests").is_some())
        .expect("a request document");
    let names = well_formed(request);
    for n in ["Requests", "Errors5xx", "ColdStart", "Duration"] {
        assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
    }
    assert_eq!(request["statusClass"], "2xx");
    assert!(request["requestId"].is_string());
    assert!(
        !kept.lock().unwrap().iter().any(|l| l.contains("shipping?")),
        "no message text in metrics"
    );
}

#[tokio::test]
async fn history_documents_count_hits_misses_and_client_errors() {
    let (kept, sink) = lines();
    let chat = Chat::with_metrics(&[], Metrics::to("get-history", sink)).await;
    chat.claude.set_default(Scenario::text("Hi!"));
    let f = chat.frames(Event::send("hello", None)).await;
    let sid = serde_json::from_str::<Value>(&f.frames[0].1).unwrap()["sessionId"]
        .as_str()
        .unwrap()
        .to_owned();
    kept.lock().unwrap().clear();
    for ev in [
        Event::history(&sid),
        Event::history(&sid),
        Event::history("nope"),
    ] {
        support_chat::http::get_history(&chat.app, ev.request())
            .await
            .unwrap();
    }
    let all = docs(&kept);
    assert_eq!(all.len(), 3);
    for d in &all {
        well_formed(d);
    }
    assert_eq!(
        (all[0]["CacheMisses"].as_f64(), all[0]["CacheHits"].as_f64()),
        (Some(1.0), Some(0.0))
    );
    assert_eq!(
        (all[1]["CacheHits"].as_f64(), all[1]["statusClass"].as_str()),
        (Some(1.0), Some("2xx"))
    );
    assert_eq!(
        (all[2]["statusClass"].as_str(), all[2]["Errors5xx"].as_f64()),
        (Some("4xx"), Some(0.0))
    );
}

#[test]
fn the_scheduled_functions_documents_carry_their_counts() {
    let (kept, sink) = lines();
    let m = Metrics::to("cleanup", sink.clone());
    m.emit(cleanup_metrics(3, 7));
    let report = NotifyReport {
        sent: 2,
        failed: 1,
        pending: 4,
        oldest_pending: std::time::Duration::from_secs(90),
    };
    Metrics::to("notify-handoffs", sink).emit(report.metrics());
    let all = docs(&kept);
    assert_eq!(
        well_formed(&all[0]),
        ["SessionsDeleted", "IdempotencyKeysDeleted"]
    );
    assert_eq!(
        (
            all[0]["SessionsDeleted"].as_f64(),
            all[0]["Function"].as_str()
        ),
        (Some(3.0), Some("cleanup"))
    );
    assert_eq!(
        well_formed(&all[1]),
        [
            "HandoffsSent",
            "HandoffsFailed",
            "HandoffsPending",
            "OldestHandoffPendingSeconds"
        ]
    );
    assert_eq!(all[1]["OldestHandoffPendingSeconds"], 90.0);
    assert_eq!(
        all[1]["_aws"]["CloudWatchMetrics"][0]["Metrics"][3]["Unit"],
        "Seconds"
    );
}
