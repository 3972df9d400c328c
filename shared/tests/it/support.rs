//! Test support: a fresh migrated PostgreSQL database per test, the real
//! Redis, a fake Anthropic Messages API (wiremock), and API Gateway events.

use lambda_http::Request;
use serde_json::{Value, json};
use std::time::Duration;
use support_chat::config::{Config, Env};
use support_chat::{App, store};
use tokio_postgres::NoTls;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub fn admin_url() -> String {
    std::env::var("TEST_PG_ADMIN_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A database of its own, migrated, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

async fn admin() -> tokio_postgres::Client {
    let url = admin_url();
    let (client, conn) = tokio_postgres::connect(&url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for the tests ({url}): {e}. Run `make test`, which starts it."));
    tokio::spawn(conn);
    client
}

impl TestDb {
    pub async fn new() -> Self {
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        admin()
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create test database");
        let mut url: url_like::Url = admin_url().parse().unwrap();
        url.set_db(&name);
        let mut url = url.to_string();
        if !url.contains("sslmode=") {
            // Loopback PostgreSQL: plaintext, stated explicitly (TLS is tested on its own).
            url.push_str(if url.contains('?') {
                "&sslmode=disable"
            } else {
                "?sslmode=disable"
            });
        }
        let db = TestDb { name, url };
        let cfg = Config::from_env(&Env::from_pairs([("DATABASE_URL", db.url.clone())])).unwrap();
        store::migrate(&cfg.database)
            .await
            .expect("migrate test database");
        db
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .expect("connect to test database");
        tokio::spawn(conn);
        client
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn messages(&self) -> i64 {
        self.count("SELECT count(*) FROM chat_messages").await
    }

    pub async fn sessions(&self) -> i64 {
        self.count("SELECT count(*) FROM chat_sessions").await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_blocking(async move {
            let _ = admin()
                .await
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    }
}

/// Minimal URL surgery for swapping the database name.
pub mod url_like {
    pub struct Url {
        base: String,
        query: String,
    }
    impl std::str::FromStr for Url {
        type Err = ();
        fn from_str(s: &str) -> Result<Self, ()> {
            let (base, query) = match s.split_once('?') {
                Some((b, q)) => (b.to_owned(), format!("?{q}")),
                None => (s.to_owned(), String::new()),
            };
            Ok(Url { base, query })
        }
    }
    impl Url {
        pub fn set_db(&mut self, db: &str) {
            let scheme_end = self.base.find("://").map(|i| i + 3).unwrap_or(0);
            if let Some(i) = self.base[scheme_end..].find('/') {
                self.base.truncate(scheme_end + i);
            }
            self.base = format!("{}/{db}", self.base);
        }
    }
    impl std::fmt::Display for Url {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{}{}", self.base, self.query)
        }
    }
}

/// A unique Redis key prefix per test, removed when dropped.
pub struct RedisNs {
    pub prefix: String,
}

impl RedisNs {
    pub fn new() -> Self {
        RedisNs {
            prefix: format!("test-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    pub async fn conn() -> redis::aio::MultiplexedConnection {
        let url = redis_url();
        redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|e| panic!("Redis is required for the tests ({url}): {e}. Run `make test`, which starts it."))
    }

    pub async fn keys(&self) -> Vec<String> {
        let mut c = Self::conn().await;
        redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

impl Drop for RedisNs {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        cleanup_blocking(async move {
            let mut c = RedisNs::conn().await;
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query_async(&mut c)
                .await
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: redis::RedisResult<i64> =
                    redis::cmd("DEL").arg(keys).query_async(&mut c).await;
            }
        });
    }
}

/// Runs an async cleanup to completion from `Drop`, which may run inside or
/// outside a runtime: on a thread of its own with a small runtime.
pub fn cleanup_blocking(f: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join();
}

/// A successful Messages API response carrying `text`.
pub fn claude_says(text: &str) -> Value {
    json!({
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5-20251001",
        "content": [{ "type": "text", "text": text }],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": { "input_tokens": 812, "output_tokens": 23, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 790 }
    })
}

pub async fn fake_claude_answering(text: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(claude_says(text)))
        .mount(&server)
        .await;
    server
}

/// Everything a test needs: the app, its database, the fake Claude.
pub struct Harness {
    pub app: std::sync::Arc<App>,
    pub db: TestDb,
    pub claude: MockServer,
    pub redis: Option<RedisNs>,
}

pub struct Options {
    pub redis: bool,
    pub api_key: bool,
    pub extra: Vec<(String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            redis: false,
            api_key: true,
            extra: Vec::new(),
        }
    }
}

impl Harness {
    pub async fn new() -> Self {
        Self::with(
            Options::default(),
            fake_claude_answering("We ship worldwide 🚚").await,
        )
        .await
    }

    pub async fn with_redis() -> Self {
        Self::with(
            Options {
                redis: true,
                ..Default::default()
            },
            fake_claude_answering("We ship worldwide 🚚").await,
        )
        .await
    }

    pub async fn with(opts: Options, claude: MockServer) -> Self {
        let db = TestDb::new().await;
        let redis = opts.redis.then(RedisNs::new);
        let env = Self::env(&db, &claude, redis.as_ref(), &opts);
        let config = Config::from_env(&env).expect("test config");
        let app = std::sync::Arc::new(App::new(config).expect("app"));
        Harness {
            app,
            db,
            claude,
            redis,
        }
    }

    pub fn env(db: &TestDb, claude: &MockServer, redis: Option<&RedisNs>, opts: &Options) -> Env {
        let mut env = Env::from_pairs([
            ("DATABASE_URL", db.url.clone()),
            ("ANTHROPIC_BASE_URL", claude.uri()),
            ("CLAUDE_ATTEMPT_TIMEOUT_MS", "2000".into()),
            ("REQUEST_BUDGET_MS", "8000".into()),
            ("DATABASE_CONNECT_TIMEOUT_MS", "2000".into()),
            ("ALLOWED_ORIGINS", "https://shop.example.com".into()),
            // Tests read history far faster than a shopper; the limit has its own test.
            ("RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE", "0".into()),
        ]);
        if opts.api_key {
            env.set("CLAUDE_API_KEY", "sk-ant-test-0123456789");
        }
        if let Some(r) = redis {
            env.set("REDIS_URL", redis_url());
            env.set("REDIS_KEY_PREFIX", r.prefix.clone());
        }
        for (k, v) in &opts.extra {
            env.set(k.clone(), v.clone());
        }
        env
    }

    /// Rebuilds the app with changed settings, same database and fake Claude.
    pub fn reconfigure(&mut self, opts: Options) {
        let env = Self::env(&self.db, &self.claude, self.redis.as_ref(), &opts);
        self.app = std::sync::Arc::new(
            App::new(Config::from_env(&env).expect("test config")).expect("app"),
        );
    }

    pub async fn post(&self, body: &str) -> Reply {
        self.send(post_v2(body, &[])).await
    }

    pub async fn send(&self, req: Request) -> Reply {
        Reply::collect(
            support_chat::http::send_message(&self.app, req)
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn history(&self, session_id: &str) -> Reply {
        Reply::from(
            support_chat::http::get_history(&self.app, get_v2(session_id))
                .await
                .unwrap(),
        )
    }

    /// Requests Claude received, as JSON.
    pub async fn claude_requests(&self) -> Vec<Value> {
        self.claude
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect()
    }
}

/// A response, decoded for assertions.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: lambda_http::http::HeaderMap,
    pub body: Value,
    pub raw: String,
}

impl From<lambda_http::Response<lambda_http::Body>> for Reply {
    fn from(r: lambda_http::Response<lambda_http::Body>) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let raw = String::from_utf8(r.body().as_ref().to_vec()).unwrap();
        let body = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&raw).unwrap()
        };
        Reply {
            status,
            headers,
            body,
            raw,
        }
    }
}

impl Reply {
    /// A `send-message` response, its body read to the end.
    pub async fn collect(r: lambda_http::Response<support_chat::http::ChatBody>) -> Self {
        use http_body_util::BodyExt;
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        Reply::from(lambda_http::Response::from_parts(
            parts,
            lambda_http::Body::Text(text),
        ))
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    pub fn session_id(&self) -> String {
        self.body["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub const SOURCE_IP: &str = "203.0.113.7";

/// An HTTP API (payload 2.0) POST /api/chat event.
pub fn post_v2(body: &str, headers: &[(&str, &str)]) -> Request {
    post_v2_from(body, headers, SOURCE_IP)
}

pub fn post_v2_from(body: &str, headers: &[(&str, &str)], ip: &str) -> Request {
    let mut h = serde_json::Map::new();
    h.insert("content-type".into(), json!("application/json"));
    for (k, v) in headers {
        if v.is_empty() {
            h.remove(*k);
        } else {
            h.insert(k.to_string(), json!(v));
        }
    }
    let event = json!({
        "version": "2.0",
        "routeKey": "POST /api/chat",
        "rawPath": "/api/chat",
        "rawQueryString": "",
        "headers": h,
        "requestContext": {
            "accountId": "123456789012", "apiId": "k7x2m9q4r1", "domainName": "k7x2m9q4r1.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "k7x2m9q4r1",
            "http": { "method": "POST", "path": "/api/chat", "protocol": "HTTP/1.1", "sourceIp": ip, "userAgent": "test" },
            "requestId": format!("req-{}", uuid::Uuid::new_v4()), "routeKey": "POST /api/chat", "stage": "$default",
            "time": "24/Nov/2026:21:15:30 +0000", "timeEpoch": 1795554930000u64
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid v2 event")
}

/// A REST API (payload 1.0) POST /api/chat event.
pub fn post_v1(body: &str) -> Request {
    let event = json!({
        "resource": "/api/chat", "path": "/api/chat", "httpMethod": "POST",
        "headers": { "content-type": "application/json" },
        "multiValueHeaders": { "content-type": ["application/json"] },
        "queryStringParameters": null, "multiValueQueryStringParameters": null,
        "pathParameters": null, "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "apiId": "a1b2c3d4e5", "resourceId": "abc123", "stage": "prod",
            "requestId": format!("req-{}", uuid::Uuid::new_v4()), "httpMethod": "POST", "path": "/prod/api/chat",
            "resourcePath": "/api/chat", "protocol": "HTTP/1.1", "requestTimeEpoch": 1795554930000u64,
            "identity": { "sourceIp": SOURCE_IP, "userAgent": "test" }
        },
        "body": body,
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid v1 event")
}

/// An HTTP API (payload 2.0) GET /api/chat/history/{id} event.
pub fn get_v2(session_id: &str) -> Request {
    let p = format!("/api/chat/history/{session_id}");
    let event = json!({
        "version": "2.0", "routeKey": "GET /api/chat/history/{sessionId}",
        "rawPath": p, "rawQueryString": "",
        "headers": { "accept": "application/json" },
        "pathParameters": { "sessionId": session_id },
        "requestContext": {
            "accountId": "123456789012", "apiId": "k7x2m9q4r1", "domainName": "x.execute-api.us-east-1.amazonaws.com",
            "http": { "method": "GET", "path": p, "protocol": "HTTP/1.1", "sourceIp": SOURCE_IP, "userAgent": "test" },
            "requestId": format!("req-{}", uuid::Uuid::new_v4()), "routeKey": "GET /api/chat/history/{sessionId}",
            "stage": "$default", "time": "24/Nov/2026:21:15:30 +0000", "timeEpoch": 1795554930000u64
        },
        "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid v2 event")
}

/// A REST API (payload 1.0) GET history event.
pub fn get_v1(session_id: &str) -> Request {
    let event = json!({
        "resource": "/api/chat/history/{sessionId}", "path": format!("/api/chat/history/{session_id}"), "httpMethod": "GET",
        "headers": {}, "multiValueHeaders": {},
        "queryStringParameters": null, "multiValueQueryStringParameters": null,
        "pathParameters": { "sessionId": session_id }, "stageVariables": null,
        "requestContext": {
            "accountId": "123456789012", "apiId": "a1b2c3d4e5", "resourceId": "abc123", "stage": "prod",
            "requestId": "req-v1-history", "httpMethod": "GET", "path": format!("/prod/api/chat/history/{session_id}"),
            "resourcePath": "/api/chat/history/{sessionId}", "protocol": "HTTP/1.1", "requestTimeEpoch": 1795554930000u64,
            "identity": { "sourceIp": SOURCE_IP }
        },
        "body": null, "isBase64Encoded": false
    });
    lambda_http::request::from_str(&event.to_string()).expect("valid v1 event")
}

pub fn json_body(message: &str, session_id: Option<&str>) -> String {
    match session_id {
        Some(s) => json!({ "message": message, "sessionId": s }).to_string(),
        None => json!({ "message": message }).to_string(),
    }
}

/// Waits for a condition with a bounded number of polls (no open-ended sleeps).
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// A fake Messages API that answers every request with `text` and keeps
/// nothing (wiremock keeps every matched request, which would swamp a
/// memory measurement). HTTP/1.1 keep-alive, one task per connection.
pub async fn fake_claude_forgetful(text: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = claude_says(text).to_string();
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let response = response.clone();
            tokio::spawn(async move {
                let mut buf = Vec::with_capacity(16 * 1024);
                let mut chunk = [0u8; 8192];
                loop {
                    // Read one request: headers, then content-length bytes.
                    let (head_end, len) = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, len);
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    if sock.write_all(response.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Everything `tracing` emits on this thread while a [`LogBuffer::capture`]
/// guard lives, for assertions on what is (not) logged.
#[derive(Clone, Default)]
pub struct LogBuffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    /// Captures every level, dependencies included (stricter than production's `info`).
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(self.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
