//! A counting TCP proxy for PostgreSQL and Redis (pg_stat_statements needs
//! `shared_preload_libraries`, and the machine's Redis may be shared, so the
//! counts come from the wire instead).
//!
//! - A *round trip* is a burst of client-to-server bytes that starts after the
//!   server last spoke (pipelined messages sent before any answer are one).
//! - Protocol messages are parsed from the client's side: PostgreSQL frontend
//!   messages (startup, then typed: `Parse`, `Bind`, `Execute`, `Sync`, `Query`...)
//!   and Redis commands (RESP arrays; named by their first one or two words).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Postgres,
    Redis,
}

#[derive(Default)]
struct Counters {
    round_trips: AtomicU64,
    connections: AtomicU64,
    messages: Mutex<BTreeMap<String, u64>>,
}

/// Counter values at one moment; subtract two for a delta.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub round_trips: u64,
    pub connections: u64,
    pub messages: BTreeMap<String, u64>,
}

impl Snapshot {
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        let mut messages = BTreeMap::new();
        for (k, v) in &self.messages {
            let d = v - earlier.messages.get(k).copied().unwrap_or(0);
            if d > 0 {
                messages.insert(k.clone(), d);
            }
        }
        Snapshot {
            round_trips: self.round_trips - earlier.round_trips,
            connections: self.connections - earlier.connections,
            messages,
        }
    }

    /// The sum of two deltas.
    pub fn plus(&self, other: &Snapshot) -> Snapshot {
        let mut messages = self.messages.clone();
        for (k, v) in &other.messages {
            *messages.entry(k.clone()).or_default() += v;
        }
        Snapshot {
            round_trips: self.round_trips + other.round_trips,
            connections: self.connections + other.connections,
            messages,
        }
    }

    pub fn count(&self, name: &str) -> u64 {
        self.messages.get(name).copied().unwrap_or(0)
    }

    /// PostgreSQL statements: `Execute` (extended protocol) plus `Query` (simple).
    pub fn pg_statements(&self) -> u64 {
        self.count("Execute") + self.count("Query")
    }

    /// Redis commands, all names.
    pub fn redis_commands(&self) -> u64 {
        self.messages.values().sum()
    }

    /// `NAME xN, ...` for the report.
    pub fn describe(&self, per: u64) -> String {
        self.messages
            .iter()
            .map(|(k, v)| {
                let n = *v as f64 / per.max(1) as f64;
                if (n - 1.0).abs() < 1e-9 {
                    k.clone()
                } else {
                    format!("{k} x{}", fmt_num(n))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub fn fmt_num(n: f64) -> String {
    if (n - n.round()).abs() < 1e-9 {
        format!("{}", n.round() as i64)
    } else {
        format!("{n:.2}")
    }
}

pub struct Proxy {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl Proxy {
    pub fn start(rt: &Handle, proto: Proto, upstream: SocketAddr) -> Self {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("proxy addr");
        let _guard = rt.enter();
        let listener = TcpListener::from_std(std_listener).expect("tokio listener");
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        let task = rt.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        c.connections.fetch_add(1, Ordering::Relaxed);
                        pump(proto, client, server, c).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            counters,
            task,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            round_trips: self.counters.round_trips.load(Ordering::SeqCst),
            connections: self.counters.connections.load(Ordering::SeqCst),
            messages: self.counters.messages.lock().expect("counters").clone(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(proto: Proto, client: TcpStream, server: TcpStream, c: Arc<Counters>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // Set when the server has spoken since the client's last burst.
    let server_spoke = Arc::new(AtomicBool::new(true));
    let spoke = server_spoke.clone();
    let up = async {
        let mut parser = Parser::new(proto);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if server_spoke.swap(false, Ordering::SeqCst) {
                c.round_trips.fetch_add(1, Ordering::SeqCst);
            }
            let names = parser.feed(&buf[..n]);
            if !names.is_empty() {
                let mut m = c.messages.lock().expect("counters");
                for name in names {
                    *m.entry(name).or_default() += 1;
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            spoke.store(true, Ordering::SeqCst);
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Incremental parser of the client's side of either protocol.
struct Parser {
    proto: Proto,
    /// Bytes of the current header (PostgreSQL) or line (Redis).
    head: Vec<u8>,
    /// Body bytes still to pass over.
    skip: usize,
    // PostgreSQL
    startup_done: bool,
    opaque: bool,
    // Redis: args left in the current command, the bulk being read, its name parts.
    args_left: usize,
    bulk_left: Option<usize>,
    capture: Vec<u8>,
    name: Vec<String>,
}

impl Parser {
    fn new(proto: Proto) -> Self {
        Parser {
            proto,
            head: Vec::new(),
            skip: 0,
            startup_done: false,
            opaque: false,
            args_left: 0,
            bulk_left: None,
            capture: Vec::new(),
            name: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> Vec<String> {
        match self.proto {
            Proto::Postgres => self.feed_pg(data),
            Proto::Redis => self.feed_redis(data),
        }
    }

    fn feed_pg(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() && !self.opaque {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            let need = if self.startup_done { 5 } else { 8 };
            let n = (need - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.head.len() < need {
                break;
            }
            if self.startup_done {
                let len = i32::from_be_bytes(self.head[1..5].try_into().expect("4 bytes")) as usize;
                out.push(pg_name(self.head[0]).to_owned());
                self.skip = len.saturating_sub(4);
            } else {
                let len = i32::from_be_bytes(self.head[0..4].try_into().expect("4 bytes")) as usize;
                let code = i32::from_be_bytes(self.head[4..8].try_into().expect("4 bytes"));
                match code {
                    80_877_103 => out.push("SSLRequest".into()),
                    80_877_104 => out.push("GSSENCRequest".into()),
                    196_608 => {
                        out.push("Startup".into());
                        self.startup_done = true;
                    }
                    _ => {
                        out.push("Unparsed".into());
                        self.opaque = true;
                    }
                }
                self.skip = len.saturating_sub(8);
            }
            self.head.clear();
        }
        out
    }

    fn feed_redis(&mut self, mut data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        while !data.is_empty() {
            if let Some(left) = self.bulk_left {
                // Inside a bulk string (plus its CRLF).
                let n = left.min(data.len());
                if self.name.len() < 2 && self.capture.len() < 64 {
                    self.capture.extend_from_slice(&data[..n]);
                }
                data = &data[n..];
                if n < left {
                    self.bulk_left = Some(left - n);
                    continue;
                }
                self.bulk_left = None;
                if self.name.len() < 2 {
                    let word = String::from_utf8_lossy(&self.capture)
                        .trim_end()
                        .to_ascii_uppercase();
                    self.name.push(word);
                }
                self.capture.clear();
                self.args_left -= 1;
                if self.args_left == 0 {
                    out.push(redis_name(std::mem::take(&mut self.name)));
                }
                continue;
            }
            // A line: `*N`, `$L`, or an inline command.
            let Some(i) = data.iter().position(|&b| b == b'\n') else {
                self.head.extend_from_slice(data);
                break;
            };
            self.head.extend_from_slice(&data[..=i]);
            data = &data[i + 1..];
            let line = String::from_utf8_lossy(&self.head).trim_end().to_owned();
            self.head.clear();
            if let Some(n) = line.strip_prefix('*') {
                self.args_left = n.parse().unwrap_or(0);
                self.name.clear();
            } else if let Some(l) = line.strip_prefix('$') {
                self.bulk_left = Some(l.parse::<usize>().unwrap_or(0) + 2);
            } else if !line.is_empty() {
                let words: Vec<String> = line
                    .split_whitespace()
                    .take(2)
                    .map(str::to_ascii_uppercase)
                    .collect();
                out.push(redis_name(words));
            }
        }
        out
    }
}

fn redis_name(words: Vec<String>) -> String {
    let first = words.first().cloned().unwrap_or_default();
    match (first.as_str(), words.get(1)) {
        ("CLIENT" | "SCRIPT" | "CONFIG" | "FUNCTION", Some(sub)) => format!("{first} {sub}"),
        _ => first,
    }
}

fn pg_name(t: u8) -> &'static str {
    match t {
        b'P' => "Parse",
        b'B' => "Bind",
        b'D' => "Describe",
        b'E' => "Execute",
        b'S' => "Sync",
        b'Q' => "Query",
        b'C' => "Close",
        b'H' => "Flush",
        b'X' => "Terminate",
        b'p' => "Password",
        b'd' => "CopyData",
        b'c' => "CopyDone",
        b'f' => "CopyFail",
        b'F' => "FunctionCall",
        _ => "Other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_commands_are_named_across_reads() {
        let mut p = Parser::new(Proto::Redis);
        let wire = b"*3\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n0\r\n*3\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nb\r\n";
        let mut names = Vec::new();
        for chunk in wire.chunks(3) {
            names.extend(p.feed(chunk));
        }
        assert_eq!(names, ["EVALSHA", "MGET"]);
        let names = p.feed(b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETINFO\r\n$3\r\nx y\r\n");
        assert_eq!(names, ["CLIENT SETINFO"]);
    }

    #[test]
    fn postgres_messages_are_counted_after_startup() {
        let mut p = Parser::new(Proto::Postgres);
        let mut wire = Vec::new();
        wire.extend_from_slice(&12i32.to_be_bytes());
        wire.extend_from_slice(&196_608i32.to_be_bytes());
        wire.extend_from_slice(b"ab\0\0");
        for t in [b'P', b'B', b'D', b'E', b'S'] {
            wire.push(t);
            wire.extend_from_slice(&6i32.to_be_bytes());
            wire.extend_from_slice(b"xy");
        }
        let mut names = Vec::new();
        for chunk in wire.chunks(4) {
            names.extend(p.feed(chunk));
        }
        assert_eq!(
            names,
            ["Startup", "Parse", "Bind", "Describe", "Execute", "Sync"]
        );
    }
}
