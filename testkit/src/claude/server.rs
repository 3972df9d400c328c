//! [`FakeClaude`]: a local HTTP/1.1 server speaking the Messages API at
//! `POST /v1/messages`, answering each request from its script.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::body::{self, REPLY};
use super::scenario::{Plan, Scenario, Step};

/// Picks the scenario for a request (its JSON body) when the queue is empty;
/// `None` falls through to the default.
pub type Route = Arc<dyn Fn(&Value) -> Option<Scenario> + Send + Sync>;

/// Request bodies larger than this are refused (413): the fake stays small.
const MAX_BODY: usize = 4 << 20;
/// A stall ends at the latest after this, so a forgotten one cannot pile up.
const MAX_STALL: Duration = Duration::from_secs(600);

/// One request the fake received, for assertions.
#[derive(Clone, Debug)]
pub struct Received {
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
    /// The body's size in bytes.
    pub len: usize,
    pub api_key: Option<String>,
    pub anthropic_version: Option<String>,
    /// Whether it asked for a stream (`"stream": true`).
    pub streamed: bool,
}

/// When a streamed answer handed its content deltas (text and tool input,
/// not thinking) to the connection: just before each is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenTimes {
    pub first: Instant,
    pub last: Instant,
    /// Content deltas sent so far.
    pub count: usize,
}

impl TokenTimes {
    fn then(times: Option<TokenTimes>, now: Instant) -> TokenTimes {
        match times {
            Some(t) => TokenTimes {
                last: now,
                count: t.count + 1,
                ..t
            },
            None => TokenTimes {
                first: now,
                last: now,
                count: 1,
            },
        }
    }
}

struct State {
    queue: Mutex<VecDeque<Scenario>>,
    default: Mutex<Scenario>,
    route: Option<Route>,
    received: Mutex<VecDeque<Received>>,
    keep: usize,
    requests: AtomicU64,
    /// The stream that sent a content delta most recently.
    tokens: Mutex<Option<TokenTimes>>,
}

impl State {
    /// The queue first, then the route, then the default.
    fn next(&self, request: &Value) -> Scenario {
        if let Some(s) = lock(&self.queue).pop_front() {
            return s;
        }
        if let Some(s) = self.route.as_ref().and_then(|r| r(request)) {
            return s;
        }
        lock(&self.default).clone()
    }

    fn record(&self, r: Received) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.keep == 0 {
            return;
        }
        let mut kept = lock(&self.received);
        if kept.len() == self.keep {
            kept.pop_front();
        }
        kept.push_back(r);
    }
}

/// A poisoned lock only means another request panicked: the data is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a [`FakeClaude`] starts.
pub struct Builder {
    default: Scenario,
    keep: usize,
    port: u16,
    route: Option<Route>,
}

impl Builder {
    /// What to answer when the queue is empty and no route applies
    /// (default: [`REPLY`] in one piece, at once).
    pub fn default_scenario(mut self, s: Scenario) -> Builder {
        self.default = s;
        self
    }

    /// How many recent requests to keep for [`FakeClaude::received`] (default 64).
    pub fn keep(mut self, n: usize) -> Builder {
        self.keep = n;
        self
    }

    /// Listens on 127.0.0.1:`port` (default 0: any free port).
    pub fn port(mut self, port: u16) -> Builder {
        self.port = port;
        self
    }

    /// Consulted for every request the queue does not answer.
    pub fn route(
        mut self,
        f: impl Fn(&Value) -> Option<Scenario> + Send + Sync + 'static,
    ) -> Builder {
        self.route = Some(Arc::new(f));
        self
    }

    /// Binds and serves on the current tokio runtime until the fake is dropped.
    pub async fn start(self) -> io::Result<FakeClaude> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            queue: Mutex::new(VecDeque::new()),
            default: Mutex::new(self.default),
            route: self.route,
            received: Mutex::new(VecDeque::with_capacity(self.keep.min(1024))),
            keep: self.keep,
            requests: AtomicU64::new(0),
            tokens: Mutex::new(None),
        });
        let (shutdown, stop) = watch::channel(());
        tokio::spawn(accept(listener, state.clone(), stop));
        Ok(FakeClaude {
            url: format!("http://{addr}"),
            addr,
            state,
            _shutdown: shutdown,
        })
    }
}

/// The fake Anthropic Messages API. Answers each `POST /v1/messages` with
/// the next queued [`Scenario`], else the route's, else the default; streamed
/// when the request says `"stream": true`. Stops serving when dropped.
///
/// ```no_run
/// # async fn demo() {
/// use testkit::claude::{FakeClaude, Scenario};
/// use std::time::Duration;
/// let claude = FakeClaude::answering("Happy to help!").await;
/// claude.push(Scenario::overloaded().retry_after(1));
/// claude.push(Scenario::text("Hello there").chunks(3).gap(Duration::from_millis(20)));
/// // ANTHROPIC_BASE_URL = claude.url()
/// # }
/// ```
pub struct FakeClaude {
    url: String,
    addr: SocketAddr,
    state: Arc<State>,
    /// Dropping it tells the accept loop, every connection and every stall to end.
    _shutdown: watch::Sender<()>,
}

impl FakeClaude {
    pub fn builder() -> Builder {
        Builder {
            default: Scenario::text(REPLY),
            keep: 64,
            port: 0,
            route: None,
        }
    }

    /// A fake answering [`REPLY`] to everything.
    pub async fn start() -> FakeClaude {
        Self::builder().start().await.expect("bind 127.0.0.1:0")
    }

    /// A fake answering `text` to everything.
    pub async fn answering(text: &str) -> FakeClaude {
        Self::builder()
            .default_scenario(Scenario::text(text))
            .start()
            .await
            .expect("bind 127.0.0.1:0")
    }

    /// The base URL, for `ANTHROPIC_BASE_URL`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a scenario: queued ones answer the next requests, in order, once each.
    pub fn push(&self, s: Scenario) -> &Self {
        lock(&self.state.queue).push_back(s);
        self
    }

    /// Replaces the default scenario.
    pub fn set_default(&self, s: Scenario) {
        *lock(&self.state.default) = s;
    }

    /// Queued scenarios not used yet.
    pub fn queued(&self) -> usize {
        lock(&self.state.queue).len()
    }

    /// Requests to `/v1/messages` so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// The most recent requests (as many as [`Builder::keep`]), oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state.received).iter().cloned().collect()
    }

    pub fn last(&self) -> Option<Received> {
        lock(&self.state.received).back().cloned()
    }

    /// When the streamed answer that most recently sent a content delta sent
    /// its first and (so far) last one; for timing a client's latency
    /// against the fake's own clock. Streams at the same time overwrite
    /// each other's record.
    pub fn last_tokens(&self) -> Option<TokenTimes> {
        *lock(&self.state.tokens)
    }
}

async fn accept(listener: TcpListener, state: Arc<State>, mut stop: watch::Receiver<()>) {
    loop {
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match stream {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, state.clone(), stop.clone()));
            }
            // Out of descriptors, say: let some connections finish.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connection(stream: TcpStream, state: Arc<State>, mut stop: watch::Receiver<()>) {
    let _ = stream.set_nodelay(true);
    let stop_for_requests = stop.clone();
    let service = service_fn(move |req| handle(state.clone(), stop_for_requests.clone(), req));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = stop.changed() => {}
    }
}

async fn handle(
    state: Arc<State>,
    stop: watch::Receiver<()>,
    req: Request<Incoming>,
) -> io::Result<Response<Body>> {
    if req.method() != Method::POST || req.uri().path() != "/v1/messages" {
        return Ok(whole(404, &[], body::error(404)));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (api_key, anthropic_version) = (header("x-api-key"), header("anthropic-version"));
    let Ok(bytes) = Limited::new(req.into_body(), MAX_BODY).collect().await else {
        return Ok(whole(413, &[], body::error(413)));
    };
    let bytes = bytes.to_bytes();
    let request: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let streamed = request["stream"] == true;
    let plan = state.next(&request).plan(&request, bytes.len(), streamed);
    state.record(Received {
        body: request,
        len: bytes.len(),
        api_key,
        anthropic_version,
        streamed,
    });
    respond(plan, state, stop).await
}

async fn respond(
    plan: Plan,
    state: Arc<State>,
    mut stop: watch::Receiver<()>,
) -> io::Result<Response<Body>> {
    if !plan.head_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(plan.head_delay) => {}
            _ = stop.changed() => return Err(scripted("shutting down")),
        }
    }
    if !plan.has_head() {
        if let Some(Step::Stall) = plan.steps.first() {
            let _ = tokio::time::timeout(MAX_STALL, stop.changed()).await;
        }
        return Err(scripted("connection cut before answering"));
    }
    if let Some(b) = plan.whole {
        return Ok(whole(plan.status, &plan.headers, b));
    }
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(produce(plan.steps, tx, state, stop));
    let mut resp = Response::new(Body::Stream(rx));
    *resp.status_mut() = StatusCode::from_u16(plan.status).unwrap_or(StatusCode::OK);
    add_headers(&mut resp, &plan.headers);
    Ok(resp)
}

/// Feeds a streamed body, one event a frame (hyper writes each as it comes).
async fn produce(
    steps: Vec<Step>,
    tx: mpsc::Sender<io::Result<Bytes>>,
    state: Arc<State>,
    mut stop: watch::Receiver<()>,
) {
    let mut times = None;
    for step in steps {
        match step {
            Step::Bytes(b) => {
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            Step::Token(b) => {
                times = Some(TokenTimes::then(times, Instant::now()));
                *lock(&state.tokens) = times;
                if tx.send(Ok(b)).await.is_err() {
                    return;
                }
            }
            Step::Wait(d) => tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = tx.closed() => return,
                _ = stop.changed() => return,
            },
            Step::Drop => {
                let _ = tx.send(Err(scripted("connection cut mid-stream"))).await;
                return;
            }
            Step::Stall => {
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = stop.changed() => {}
                    _ = tokio::time::sleep(MAX_STALL) => {}
                }
                return;
            }
        }
    }
}

fn scripted(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("fake Claude: {what}"),
    )
}

fn whole(status: u16, headers: &[(&'static str, String)], body: Bytes) -> Response<Body> {
    let mut resp = Response::new(Body::Whole(Some(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if headers.is_empty() {
        add_headers(
            &mut resp,
            &[("content-type", "application/json".to_owned())],
        );
    }
    add_headers(&mut resp, headers);
    resp
}

fn add_headers(resp: &mut Response<Body>, headers: &[(&'static str, String)]) {
    for (k, v) in headers {
        if let Ok(v) = hyper::header::HeaderValue::from_str(v) {
            resp.headers_mut().append(*k, v);
        }
    }
    resp.headers_mut().append(
        "request-id",
        hyper::header::HeaderValue::from_static("req_011CfakeClaudeTestkit"),
    );
}

/// A response body: whole (sent with `content-length`) or fed by a channel.
enum Body {
    Whole(Option<Bytes>),
    Stream(mpsc::Receiver<io::Result<Bytes>>),
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Whole(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Body::Stream(rx) => rx.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Body::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Whole(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Body::Whole(None) => SizeHint::with_exact(0),
            Body::Stream(_) => SizeHint::default(),
        }
    }
}
