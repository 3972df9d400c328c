//! Test support: a fresh migrated PostgreSQL database per test, the real
//! Redis, a fake Anthropic Messages API (wiremock, or testkit's scripted and
//! streaming [`FakeClaude`]), and API Gateway events (testkit's).

use lambda_http::Request;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use support_chat::config::{Config, Env};
use support_chat::http::ChatBody;
use support_chat::{App, store};
use testkit::claude::FakeClaude;
use tokio_postgres::NoTls;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub use testkit::claude::claude_says;
pub use testkit::events::{chat_body as json_body, get_v1, get_v2, post_v1, post_v2, post_v2_from};

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

pub async fn fake_claude_answering(text: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(claude_says(text)))
        .mount(&server)
        .await;
    server
}

/// The fake Anthropic API a [`Harness`]'s app talks to.
pub enum Claude {
    /// wiremock: matchers per test, every request kept.
    Wiremock(MockServer),
    /// testkit's scripted fake: queued [`testkit::claude::Scenario`]s, streams.
    Fake(FakeClaude),
    /// Something else listening there (a test's own server).
    Url(String),
}

impl Claude {
    pub fn url(&self) -> String {
        match self {
            Claude::Wiremock(m) => m.uri(),
            Claude::Fake(f) => f.url().to_owned(),
            Claude::Url(u) => u.clone(),
        }
    }
}

/// Everything a test needs: the app, its database, the fake Claude.
pub struct Harness {
    pub app: Arc<App>,
    pub db: TestDb,
    pub claude: Claude,
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

    /// With a wiremock fake Claude.
    pub async fn with(opts: Options, claude: MockServer) -> Self {
        Self::with_claude(opts, Claude::Wiremock(claude)).await
    }

    /// With testkit's fake Claude (scripted per request, streams); reach it
    /// again through [`Harness::fake`].
    pub async fn with_fake(opts: Options, claude: FakeClaude) -> Self {
        Self::with_claude(opts, Claude::Fake(claude)).await
    }

    /// With whatever listens at `url` as the Anthropic API.
    pub async fn with_claude_url(opts: Options, url: &str) -> Self {
        Self::with_claude(opts, Claude::Url(url.to_owned())).await
    }

    pub async fn with_claude(opts: Options, claude: Claude) -> Self {
        let db = TestDb::new().await;
        let redis = opts.redis.then(RedisNs::new);
        let env = Self::env(&db, &claude, redis.as_ref(), &opts);
        let config = Config::from_env(&env).expect("test config");
        let app = Arc::new(App::new(config).expect("app"));
        Harness {
            app,
            db,
            claude,
            redis,
        }
    }

    fn env(db: &TestDb, claude: &Claude, redis: Option<&RedisNs>, opts: &Options) -> Env {
        let mut env = Env::from_pairs([
            ("DATABASE_URL", db.url.clone()),
            ("ANTHROPIC_BASE_URL", claude.url()),
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
        self.app = Arc::new(App::new(Config::from_env(&env).expect("test config")).expect("app"));
    }

    pub async fn post(&self, body: &str) -> Reply {
        self.send(post_v2(body, &[])).await
    }

    pub async fn send(&self, req: Request) -> Reply {
        Reply::collect(self.send_raw(req).await).await
    }

    /// `send-message`'s response as the runtime gets it: the body unread
    /// (a stream, with `Accept: text/event-stream`).
    pub async fn send_raw(&self, req: Request) -> lambda_http::Response<ChatBody> {
        support_chat::http::send_message(&self.app, req)
            .await
            .unwrap()
    }

    pub async fn history(&self, session_id: &str) -> Reply {
        Reply::from(
            support_chat::http::get_history(&self.app, get_v2(session_id))
                .await
                .unwrap(),
        )
    }

    /// Requests Claude received, as JSON (testkit's fake keeps the last 64).
    pub async fn claude_requests(&self) -> Vec<Value> {
        match &self.claude {
            Claude::Wiremock(m) => m
                .received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect(),
            Claude::Fake(f) => f.received().into_iter().map(|r| r.body).collect(),
            Claude::Url(url) => panic!("nothing records the requests to {url}"),
        }
    }

    /// The wiremock fake, for its matchers and requests as wiremock keeps them.
    pub fn wiremock(&self) -> &MockServer {
        match &self.claude {
            Claude::Wiremock(m) => m,
            _ => panic!("this harness's Claude is not wiremock"),
        }
    }

    /// testkit's fake, to queue scenarios.
    pub fn fake(&self) -> &FakeClaude {
        match &self.claude {
            Claude::Fake(f) => f,
            _ => panic!("this harness's Claude is not testkit's FakeClaude"),
        }
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
    pub async fn collect(r: lambda_http::Response<ChatBody>) -> Self {
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
        // One binary runs every test: a callsite first hit on a thread with
        // no subscriber would be cached as uninteresting for all threads. A
        // global subscriber that wants everything (and keeps nothing) keeps
        // every callsite live for the captures.
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        });
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

/// `host:port` of the PostgreSQL server a database URL names.
pub async fn pg_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let hostport = rest
        .split('@')
        .next_back()
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    tokio::net::lookup_host(hostport)
        .await
        .unwrap()
        .next()
        .unwrap()
}
