//! Human handoff end to end: Claude's `hand_off` tool (and the offline
//! recognition of an explicit request), the response flag, the history
//! status, and the webhook: signed, once per handoff, retried by the
//! scheduled sender while the receiver is down, never holding the shopper up.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support_chat::notify::{Notifier, signature};
use support_chat::service;
use testkit::claude::Scenario;
use testkit::events::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::streaming::{Bodies, Chat};

/// One received POST: its headers (lower-cased names) and body.
type Delivery = (Vec<(String, String)>, Vec<u8>);

/// A real HTTP receiver for the webhook: records each POST, answers with
/// the status (and after the delay) it is set to.
#[derive(Clone)]
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
    status: Arc<Mutex<u16>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let r = Receiver {
            url: format!("http://{}/hook", listener.local_addr().unwrap()),
            got: Arc::default(),
            status: Arc::new(Mutex::new(200)),
            delay: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(sock));
            }
        });
        r
    }

    async fn serve(self, mut sock: tokio::net::TcpStream) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let (head_end, len) = loop {
            let Ok(n) = sock.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                break (end + 4, len);
            }
        };
        while buf.len() < head_end + len {
            let Ok(n) = sock.read(&mut chunk).await else {
                return;
            };
            if n == 0 {
                return;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let headers = String::from_utf8_lossy(&buf[..head_end])
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let delay = *self.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let status = *self.status.lock().unwrap();
        if status == 200 {
            self.got
                .lock()
                .unwrap()
                .push((headers, buf[head_end..head_end + len].to_vec()));
        }
        let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        let _ = sock.write_all(resp.as_bytes()).await;
    }

    fn deliveries(&self) -> Vec<(Vec<(String, String)>, Value)> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(h, b)| (h.clone(), serde_json::from_slice(b).unwrap()))
            .collect()
    }

    fn raw(&self) -> Vec<Delivery> {
        self.got.lock().unwrap().clone()
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

const SECRET: &str = "whsec-test-0123456789";

async fn chat_with_hook(hook: &Receiver, extra: &[(&str, &str)]) -> Chat {
    let mut env = vec![
        ("HANDOFF_WEBHOOK_URL", hook.url.as_str()),
        ("HANDOFF_WEBHOOK_SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    Chat::new(&env).await
}

fn hand_off() -> Scenario {
    Scenario::tool_use(
        "hand_off",
        serde_json::json!({ "reason": "shopper_request" }),
    )
}

async fn json(chat: &Chat, ev: Event) -> Value {
    let f = chat.frames(ev).await;
    assert_eq!(f.status, 200);
    serde_json::from_str(&f.frames.iter().map(|(_, t)| t.as_str()).collect::<String>()).unwrap()
}

async fn history(chat: &Chat, sid: &str) -> Value {
    let resp = support_chat::http::get_history(&chat.app, Event::history(sid).request())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(resp.body().as_ref()).unwrap()
}

#[tokio::test]
async fn claudes_hand_off_flags_the_reply_marks_the_session_and_tells_the_store_once() {
    let hook = Receiver::start().await;
    let chat = chat_with_hook(&hook, &[]).await;
    chat.claude.push(hand_off());
    let r = json(&chat, Event::send("I want to talk to a real person", None)).await;
    assert_eq!(r["handoff"], true);
    let reply = r["reply"].as_str().unwrap();
    assert!(
        reply.contains("support@northwind-outfitters.example"),
        "{reply}"
    );
    let sid = r["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(history(&chat, &sid).await["status"], "waiting_for_human");

    let got = hook.raw();
    assert_eq!(got.len(), 1, "delivered once, on the request path");
    let (headers, body) = &got[0];
    let secret = secrecy::SecretString::from(SECRET.to_owned());
    assert_eq!(
        header(headers, "x-signature-256"),
        Some(signature(&secret, body).as_str())
    );
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["type"], "handoff");
    assert_eq!(v["sessionId"], sid.as_str());
    assert_eq!(v["reason"], "shopper_request");
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);
    assert!(v["text"].as_str().unwrap().contains("real person"));

    // Later messages: answered, no tool offered, no second notification.
    chat.claude
        .set_default(Scenario::text("Returns are free within 30 days."));
    for _ in 0..3 {
        let later = json(&chat, Event::send("and returns?", Some(&sid))).await;
        assert!(later.get("handoff").is_none());
    }
    let sent = chat.claude.bodies();
    assert!(
        sent[0]["tools"].is_array(),
        "the hand_off tool is offered while open"
    );
    assert!(
        sent.last().unwrap().get("tools").is_none(),
        "not once waiting"
    );
    assert_eq!(hook.raw().len(), 1);
    let open = json(&chat, Event::send("hello", None)).await;
    let sid2 = open["sessionId"].as_str().unwrap();
    assert_eq!(history(&chat, sid2).await["status"], "open");
}

#[tokio::test]
async fn offline_an_explicit_request_for_a_person_still_hands_off() {
    let hook = Receiver::start().await;
    let chat = chat_with_hook(&hook, &[("CLAUDE_API_KEY", "")]).await;
    let r = json(&chat, Event::send("Can I talk to a human please?", None)).await;
    assert_eq!(r["handoff"], true);
    let near_miss = json(&chat, Event::send("Is this a human?", None)).await;
    assert!(near_miss.get("handoff").is_none());
    assert_eq!(hook.deliveries().len(), 1);
    assert_eq!(hook.deliveries()[0].1["reason"], "shopper_request");
}

#[tokio::test]
async fn a_receiver_down_gets_the_event_from_the_scheduled_sender_once_back() {
    let hook = Receiver::start().await;
    *hook.status.lock().unwrap() = 503;
    let chat = chat_with_hook(&hook, &[]).await;
    chat.claude.push(hand_off());
    let r = json(&chat, Event::send("agent please", None)).await;
    assert_eq!(r["handoff"], true);
    assert_eq!(hook.deliveries().len(), 0);
    let store = chat.app.store();
    let config = &chat.app.config;
    let notifier = Notifier::new(&config.handoff).unwrap();
    // Due again only after its backoff: a run now sends nothing.
    let soon = Instant::now() + Duration::from_secs(10);
    let report = service::deliver_due(store, &notifier, soon).await.unwrap();
    assert_eq!((report.sent, report.pending), (0, 1));
    // The backoff passes; the receiver is back.
    let c = chat.db.client().await;
    c.batch_execute("UPDATE handoff_events SET next_attempt_at = now()")
        .await
        .unwrap();
    *hook.status.lock().unwrap() = 200;
    let report = service::deliver_due(store, &notifier, soon).await.unwrap();
    assert_eq!((report.sent, report.pending), (1, 0));
    let again = service::deliver_due(store, &notifier, soon).await.unwrap();
    assert_eq!(again.sent, 0, "delivered once");
    assert_eq!(hook.deliveries().len(), 1);
    assert_eq!(hook.deliveries()[0].1["sessionId"], r["sessionId"]);
}

#[tokio::test]
async fn a_slow_receiver_does_not_hold_the_shopper_up() {
    let hook = Receiver::start().await;
    *hook.delay.lock().unwrap() = Duration::from_secs(5);
    let chat = chat_with_hook(&hook, &[]).await;
    chat.claude.push(hand_off());
    let started = Instant::now();
    let r = json(&chat, Event::send("I need a person", None)).await;
    assert_eq!(r["handoff"], true);
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "{:?}",
        started.elapsed()
    );
    let c = chat.db.client().await;
    let pending: i64 = c
        .query_one(
            "SELECT count(*) FROM handoff_events WHERE delivered_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, 1, "left for the scheduled sender");
}

#[tokio::test]
async fn a_streamed_handoff_carries_the_flag_on_done() {
    let hook = Receiver::start().await;
    let chat = chat_with_hook(&hook, &[]).await;
    chat.claude
        .push(hand_off().with_text("Let me get someone from the team."));
    let f = chat.stream("get me a real person", None).await;
    let done = f.last();
    assert_eq!(done["handoff"], true);
    let rows = chat.ai_rows().await;
    assert_eq!(done["reply"], rows[0].1);
    assert_eq!(hook.deliveries().len(), 1);
}

#[tokio::test]
async fn without_a_webhook_the_handoff_is_stored_and_nothing_is_sent() {
    let chat = Chat::new(&[]).await;
    chat.claude.push(hand_off());
    let r = json(&chat, Event::send("human please", None)).await;
    assert_eq!(r["handoff"], true);
    let c = chat.db.client().await;
    let events: i64 = c
        .query_one("SELECT count(*) FROM handoff_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1);
}
