//! The Lambda Runtime API the functions' processes talk to during the bench
//! (the fake Claude is testkit's), on a deliberately tiny HTTP/1.1 server.

use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;

/// A request, as much of it as the bench needs.
pub struct Request {
    pub method: String,
    pub path: String,
    pub body: Bytes,
    /// A chunked body's arrival: per chunk, the body's length once it was
    /// read, and when (empty for a Content-Length body).
    pub arrivals: Vec<(usize, Instant)>,
}

pub struct Resp {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

fn response(status: u16, body: impl Into<Bytes>) -> Resp {
    Resp {
        status,
        headers: Vec::new(),
        body: body.into(),
    }
}

/// Binds 127.0.0.1:0 and serves HTTP/1.1 (keep-alive, Content-Length or
/// chunked request bodies) with `f` on `rt`. Deliberately tiny: the clients
/// are the Lambda runtime's hyper client and reqwest, nothing exotic.
fn serve<F, Fut>(rt: &Handle, f: F) -> (SocketAddr, JoinHandle<()>)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("local addr");
    let _guard = rt.enter();
    let listener = TcpListener::from_std(std_listener).expect("tokio listener");
    let task = rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            // Our own writes go out at once. ACKs are left to Linux's
            // defaults: no TCP_QUICKACK, so a streamed response's chunks are
            // ACKed late (up to 40 ms) as by any ordinary receiver, and a
            // client that waits for ACKs (Nagle) shows up in the numbers.
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(stream, f.clone()));
        }
    });
    (addr, task)
}

async fn connection<F, Fut>(stream: TcpStream, f: F)
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = Resp>,
{
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut line = String::new();
    while let Some((req, close)) = read_request(&mut rd, &mut line).await {
        let resp = f(req).await;
        if wr.write_all(&encode(&resp)).await.is_err() || close {
            return;
        }
    }
}

/// The next request on a keep-alive connection, and whether the client
/// asked to close after it; `None` at the end of the connection.
async fn read_request<R: AsyncBufReadExt + Unpin>(
    rd: &mut R,
    line: &mut String,
) -> Option<(Request, bool)> {
    line.clear();
    if rd.read_line(line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let (mut content_length, mut chunked, mut close) = (0usize, false, false);
    loop {
        line.clear();
        if rd.read_line(line).await.ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => content_length = v.parse().unwrap_or(0),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v == "close",
                _ => {}
            }
        }
    }
    let (body, arrivals) = if chunked {
        read_chunked(rd, line).await?
    } else {
        let mut b = vec![0u8; content_length];
        rd.read_exact(&mut b).await.ok()?;
        (b, Vec::new())
    };
    let body = Bytes::from(body);
    let req = Request {
        method,
        path,
        body,
        arrivals,
    };
    Some((req, close))
}

fn encode(resp: &Resp) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: {}\r\n",
        resp.status,
        reason(resp.status),
        resp.body.len()
    );
    for (k, v) in &resp.headers {
        out.push_str(k);
        out.push_str(": ");
        out.push_str(v);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(&resp.body);
    out
}

/// The body, and when each chunk had arrived (read as it comes: the
/// function streams its response).
async fn read_chunked<R: AsyncBufReadExt + Unpin>(
    rd: &mut R,
    line: &mut String,
) -> Option<(Vec<u8>, Vec<(usize, Instant)>)> {
    let mut body = Vec::new();
    let mut arrivals = Vec::new();
    loop {
        line.clear();
        rd.read_line(line).await.ok()?;
        let size = usize::from_str_radix(line.trim().split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                line.clear();
                if rd.read_line(line).await.ok()? == 0 || line.trim().is_empty() {
                    return Some((body, arrivals));
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        rd.read_exact(&mut body[start..]).await.ok()?;
        arrivals.push((body.len(), Instant::now()));
        line.clear();
        rd.read_line(line).await.ok()?; // CRLF after the chunk
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        410 => "Gone",
        _ => "Unknown",
    }
}

// ------------------------------------------------------ Lambda Runtime API ---

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Response,
    InvocationError,
    InitError,
}

/// What the function posted back.
#[derive(Debug)]
pub struct Outcome {
    pub id: String,
    pub kind: OutcomeKind,
    /// When the whole POST body had arrived.
    pub at: Instant,
    /// When `/next` handed this invocation out.
    pub handed_out: Option<Instant>,
    pub body: Bytes,
    /// A streamed response's chunks: the body's length after each, and when it arrived.
    pub arrivals: Vec<(usize, Instant)>,
}

impl Outcome {
    /// When the body's byte at `offset` had arrived (a streamed response;
    /// else when the whole body had).
    pub fn arrival_of(&self, offset: usize) -> Instant {
        self.arrivals
            .iter()
            .find(|(end, _)| *end > offset)
            .map_or(self.at, |(_, t)| *t)
    }
}

struct Shared {
    queue: Mutex<mpsc::UnboundedReceiver<(String, Bytes)>>,
    next_tx: mpsc::UnboundedSender<Instant>,
    out_tx: mpsc::UnboundedSender<Outcome>,
    handed: std::sync::Mutex<HashMap<String, Instant>>,
}

/// One Runtime API endpoint (`AWS_LAMBDA_RUNTIME_API`) for one function process.
pub struct RuntimeApi {
    pub addr: SocketAddr,
    events: mpsc::UnboundedSender<(String, Bytes)>,
    next_rx: mpsc::UnboundedReceiver<Instant>,
    out_rx: mpsc::UnboundedReceiver<Outcome>,
    task: JoinHandle<()>,
}

pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:bench";

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl RuntimeApi {
    pub fn start(rt: &Handle) -> Self {
        let (events, queue) = mpsc::unbounded_channel();
        let (next_tx, next_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            queue: Mutex::new(queue),
            next_tx,
            out_tx,
            handed: std::sync::Mutex::new(HashMap::new()),
        });
        let (addr, task) = serve(rt, move |req| handle(shared.clone(), req));
        RuntimeApi {
            addr,
            events,
            next_rx,
            out_rx,
            task,
        }
    }

    /// Queues an invocation; the next (or a waiting) `/next` gets it.
    pub fn push(&self, id: &str, event: String) {
        let _ = self.events.send((id.to_owned(), Bytes::from(event)));
    }

    /// When the function next called `/next`.
    pub async fn next_call(&mut self, timeout: Duration) -> Option<Instant> {
        tokio::time::timeout(timeout, self.next_rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Both receivers at once (`/next` calls, posted outcomes), for `select!`.
    pub fn channels(
        &mut self,
    ) -> (
        &mut mpsc::UnboundedReceiver<Instant>,
        &mut mpsc::UnboundedReceiver<Outcome>,
    ) {
        (&mut self.next_rx, &mut self.out_rx)
    }

    /// The next response or error the function posted.
    pub async fn outcome(&mut self, timeout: Duration) -> Option<Outcome> {
        tokio::time::timeout(timeout, self.out_rx.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(shared: Arc<Shared>, req: Request) -> Resp {
    let Some(rest) = req.path.strip_prefix("/2018-06-01/runtime/") else {
        return response(404, "{}");
    };
    if req.method == "GET" && rest == "invocation/next" {
        let _ = shared.next_tx.send(Instant::now());
        let next = shared.queue.lock().await.recv().await;
        let Some((id, event)) = next else {
            return response(410, "{}");
        };
        let mut r = response(200, event);
        r.headers = vec![
            ("lambda-runtime-aws-request-id", id.clone()),
            (
                "lambda-runtime-deadline-ms",
                (epoch_ms() + 20_000).to_string(),
            ),
            ("lambda-runtime-invoked-function-arn", FUNCTION_ARN.into()),
            (
                "lambda-runtime-trace-id",
                "Root=1-6924caf2-3f1a9c2e7b4d6058a1c2e3f4;Parent=53995c3f42cd8ad8;Sampled=0".into(),
            ),
            ("content-type", "application/json".into()),
        ];
        shared
            .handed
            .lock()
            .expect("handed lock")
            .insert(id, Instant::now());
        return r;
    }
    if req.method != "POST" {
        return response(404, "{}");
    }
    let (id, kind) = if rest == "init/error" {
        (String::new(), OutcomeKind::InitError)
    } else if let Some(inv) = rest.strip_prefix("invocation/") {
        match inv.rsplit_once('/') {
            Some((id, "response")) => (id.to_owned(), OutcomeKind::Response),
            Some((id, "error")) => (id.to_owned(), OutcomeKind::InvocationError),
            _ => return response(404, "{}"),
        }
    } else {
        return response(404, "{}");
    };
    // The whole body has been read by now.
    let at = Instant::now();
    let handed_out = shared.handed.lock().expect("handed lock").remove(&id);
    let _ = shared.out_tx.send(Outcome {
        id,
        kind,
        at,
        handed_out,
        body: req.body,
        arrivals: req.arrivals,
    });
    response(202, r#"{"status":"OK"}"#)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Reads one response (head and Content-Length body) off a blocking socket.
    fn read_response(c: &mut std::net::TcpStream) -> String {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            c.read_exact(&mut byte).expect("response head");
            got.push(byte[0]);
        }
        let head = String::from_utf8_lossy(&got).into_owned();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        c.read_exact(&mut body).expect("response body");
        head
    }

    /// A client with Nagle's algorithm on (no TCP_NODELAY) posting a response
    /// in two small writes waits for the first one's ACK: the bench's Runtime
    /// API must delay it as Linux does by default, or the stall of the
    /// runtime client before its TCP_NODELAY fix would not show.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn acks_are_delayed_as_linux_does_by_default() {
        let api = RuntimeApi::start(&Handle::current());
        let addr = api.addr;
        api.push("inv-1", "{}".into());
        api.push("inv-2", "{}".into());
        let took = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).expect("connect");
            let mut post = |id: &str| {
                c.write_all(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nhost: x\r\n\r\n")
                    .expect("next");
                read_response(&mut c);
                let t = Instant::now();
                let head = format!(
                    "POST /2018-06-01/runtime/invocation/{id}/response HTTP/1.1\r\n\
                     host: x\r\ntransfer-encoding: chunked\r\n\r\n"
                );
                c.write_all(head.as_bytes()).expect("head");
                c.write_all(b"5\r\nhello\r\n0\r\n\r\n").expect("body");
                assert!(read_response(&mut c).starts_with("HTTP/1.1 202"));
                t.elapsed()
            };
            (post("inv-1"), post("inv-2"))
        })
        .await
        .expect("client");
        // On a fresh connection and on a kept-alive one (what the runtime
        // client uses): about 40 ms, Linux's minimum delayed-ACK timeout.
        assert!(took.0 >= Duration::from_millis(20), "{took:?}");
        assert!(took.1 >= Duration::from_millis(20), "{took:?}");
    }
}
