//! History pages (`limit`, `before`, `hasMore`) and read-your-writes that
//! does not depend on Redis behaving: a Redis of the test's own is driven
//! out of memory, made a read-only replica, slowed, emptied and stopped
//! after the cache holds a conversation.

use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::claude::Scenario;
use testkit::events::Event;

use super::streaming::Chat;

async fn get(chat: &Chat, ev: Event) -> (u16, Value) {
    let resp = support_chat::http::get_history(&chat.app, ev.request())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_slice(resp.body().as_ref()).unwrap(),
    )
}

async fn post(chat: &Chat, message: &str, sid: Option<&str>) -> String {
    let f = chat.frames(Event::send(message, sid)).await;
    assert_eq!(f.status, 200);
    let v: Value =
        serde_json::from_str(&f.frames.iter().map(|(_, t)| t.as_str()).collect::<String>())
            .unwrap();
    v["sessionId"].as_str().unwrap().to_owned()
}

fn texts(v: &Value) -> Vec<String> {
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_go_back_from_the_newest_with_has_more_until_the_first_message() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text("ok"));
    let sid = post(&chat, "m0", None).await;
    for i in 1..4 {
        post(&chat, &format!("m{i}"), Some(&sid)).await;
    }
    let (status, whole) = get(&chat, Event::history(&sid)).await;
    assert_eq!(status, 200);
    assert_eq!(whole["messages"].as_array().unwrap().len(), 8);
    assert!(
        whole.get("hasMore").is_none(),
        "a short conversation is whole"
    );
    assert_eq!(whole["status"], "open");

    let (_, p1) = get(&chat, Event::history(&sid).limit(3)).await;
    assert_eq!(texts(&p1), ["ok", "m3", "ok"]);
    assert_eq!(p1["hasMore"], true);
    let first = p1["messages"][0]["id"].as_str().unwrap().to_owned();
    let (_, p2) = get(&chat, Event::history(&sid).limit(3).before(&first)).await;
    assert_eq!(texts(&p2), ["m1", "ok", "m2"]);
    let first = p2["messages"][0]["id"].as_str().unwrap().to_owned();
    let (_, p3) = get(&chat, Event::history(&sid).limit(3).before(&first)).await;
    assert_eq!(texts(&p3), ["m0", "ok"]);
    assert!(p3.get("hasMore").is_none());
}

#[tokio::test]
async fn bad_paging_parameters_are_400_invalid_query() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text("ok"));
    let sid = post(&chat, "hello", None).await;
    let other = post(&chat, "elsewhere", None).await;
    let (_, theirs) = get(&chat, Event::history(&other)).await;
    let foreign = theirs["messages"][0]["id"].as_str().unwrap().to_owned();
    for ev in [
        Event::history(&sid).limit(0),
        Event::history(&sid).limit(501),
        Event::history(&sid).query("limit", "ten"),
        Event::history(&sid).before("not-a-uuid"),
        Event::history(&sid).before(&foreign),
        Event::history(&sid).before(&uuid::Uuid::new_v4().to_string()),
    ] {
        let (status, body) = get(&chat, ev).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("invalid_query"))
        );
    }
}

/// A Redis server of this test's own, so it can be broken without
/// touching anyone else's keys.
struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is needed for this test (make test installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn cmd(&self, args: &[&str]) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let _: redis::Value = cmd.query_async(&mut c).await.unwrap();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A conversation cached in `redis`, then `break_it`, then a POST: every
/// later GET shows both of the POST's messages.
async fn read_your_writes_when(what: &str, break_it: impl AsyncFnOnce(&mut OwnRedis)) {
    let mut redis = OwnRedis::start();
    let chat = Chat::new(&[("REDIS_URL", &redis.url()), ("REDIS_TIMEOUT_MS", "100")]).await;
    chat.claude.set_default(Scenario::text("Noted."));
    let sid = post(&chat, "first", None).await;
    let _ = get(&chat, Event::history(&sid)).await;
    let (_, cached) = get(&chat, Event::history(&sid)).await;
    assert_eq!(cached["messages"].as_array().unwrap().len(), 2, "{what}");
    break_it(&mut redis).await;
    post(&chat, "second", Some(&sid)).await;
    for _ in 0..3 {
        let (status, v) = get(&chat, Event::history(&sid)).await;
        assert_eq!(status, 200, "{what}");
        assert_eq!(texts(&v), ["first", "Noted.", "second", "Noted."], "{what}");
    }
}

#[tokio::test]
async fn history_is_never_stale_whatever_redis_does_after_the_write() {
    read_your_writes_when("out of memory", async |r: &mut OwnRedis| {
        r.cmd(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
            .await;
        r.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    })
    .await;
    read_your_writes_when("read-only replica", async |r: &mut OwnRedis| {
        r.cmd(&["REPLICAOF", "127.0.0.1", "1"]).await;
    })
    .await;
    read_your_writes_when("slow past its timeout", async |r: &mut OwnRedis| {
        let url = r.url();
        tokio::spawn(async move {
            let client = redis::Client::open(url).unwrap();
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let _: redis::RedisResult<redis::Value> = redis::cmd("DEBUG")
                .arg("SLEEP")
                .arg("2")
                .query_async(&mut c)
                .await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await;
    read_your_writes_when("restarted empty", async |r: &mut OwnRedis| {
        r.cmd(&["FLUSHALL"]).await;
    })
    .await;
    read_your_writes_when("down", async |r: &mut OwnRedis| {
        let _ = r.child.kill();
        let _ = r.child.wait();
    })
    .await;
}

#[tokio::test]
async fn an_unknown_session_id_leaves_no_cache_keys() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text("Hi."));
    let unknown = uuid::Uuid::new_v4().to_string();
    let sid = post(&chat, "hello", Some(&unknown)).await;
    assert_ne!(sid, unknown);
    let keys = chat.redis.keys().await;
    assert!(
        keys.iter()
            .all(|k| !k.contains(&unknown) || k.contains(":rl:")),
        "only the one-minute rate counter may name it: {keys:?}"
    );
}

#[tokio::test]
async fn a_key_and_a_message_do_not_reveal_another_clients_conversation() {
    let chat = Chat::new(&[]).await;
    chat.claude.set_default(Scenario::text("Let me help."));
    let key = "order-1-0000000000";
    let send = |ip: &str, msg: &str| Event::send(msg, None).idempotency_key(key).source_ip(ip);
    let a = chat.frames(send("203.0.113.1", "Where is my order?")).await;
    let b = chat
        .frames(send("198.51.100.7", "Where is my order?"))
        .await;
    assert_eq!(b.status, 200);
    assert_eq!(b.header("idempotent-replayed"), None);
    let sid = |f: &super::streaming::Frames| {
        serde_json::from_str::<Value>(&f.frames[0].1).unwrap()["sessionId"].clone()
    };
    assert_ne!(
        sid(&a),
        sid(&b),
        "a different conversation, not the first shopper's"
    );
    let c = chat.frames(send("198.51.100.8", "Something else")).await;
    assert_eq!(c.status, 200, "no 422 telling a stranger the key was used");
    let replay = chat.frames(send("203.0.113.1", "Where is my order?")).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(sid(&replay), sid(&a));
}
