//! `make bench`: how fast the two chat functions start and answer, how many
//! round trips a request costs, how much memory a process peaks at, and how
//! big the deployment packages are. See `scripts/bench.sh`, which builds the
//! release binaries, makes a fresh database, and runs
//!
//!     bench migrate   # applies migrations/ to BENCH_DATABASE_URL
//!     bench run       # measures; prints one table; writes BENCH_OUT (JSON)
//!
//! Environment: BENCH_DATABASE_URL, BENCH_REDIS_URL, BENCH_REDIS_PREFIX,
//! BENCH_BIN_DIR (where `send-message` and `get-history` are), BENCH_OUT,
//! BENCH_WARM_ITERS (1000), BENCH_COLD_RUNS (40), BENCH_E2E_ITERS (1000).
//! For experiments: BENCH_ONLY (phases, comma-separated: baselines, warm,
//! round_trips, cold, e2e, sizes), BENCH_FUNCTION_ENV (`K=V ...` added to the
//! functions' environment), BENCH_WRAPPER (e.g. `strace -f -tt -o /tmp/t`:
//! runs each function under that command; timings then include it).

mod events;
mod proxy;
mod report;
mod servers;
mod stats;

use lambda_http::Body;
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support_chat::App;
use support_chat::config::{Config, Env};
use support_chat::domain::SessionId;
use tokio::runtime::Handle;

use proxy::{Proto, Proxy, Snapshot};
use report::{Report, Target};
use servers::{FAKE_REPLY, FakeClaude, OutcomeKind, RuntimeApi};
use stats::{Samples, Summary};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const SEND: &str = "send-message";
const HISTORY: &str = "get-history";

fn main() {
    let cmd = std::env::args().nth(1).unwrap_or_else(|| "run".into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = match cmd.as_str() {
        "migrate" => rt.block_on(migrate()),
        "run" => run(&rt),
        other => Err(format!("unknown command {other:?} (use `migrate` or `run`)").into()),
    };
    if let Err(e) = result {
        eprintln!("bench: error: {e}");
        std::process::exit(1);
    }
}

fn var(name: &str) -> Res<String> {
    std::env::var(name).map_err(|_| format!("{name} is required (run `make bench`)").into())
}

fn var_or(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse().map_err(|_| format!("{name} must be a number"))?),
        Err(_) => Ok(default),
    }
}

async fn migrate() -> Res<()> {
    let url = var("BENCH_DATABASE_URL")?;
    let cfg = Config::from_env(&Env::from_pairs([("DATABASE_URL", url)]))?;
    let applied = support_chat::store::migrate(&cfg.database).await?;
    eprintln!("bench: migrations applied: {applied:?}");
    Ok(())
}

struct Settings {
    database_url: String,
    redis_url: String,
    redis_prefix: String,
    bin_dir: PathBuf,
    out: PathBuf,
    work_dir: PathBuf,
    warm_iters: usize,
    cold_runs: usize,
    e2e_iters: usize,
    /// BENCH_ONLY: the phases to run (all when unset).
    only: Option<Vec<String>>,
    /// BENCH_FUNCTION_ENV: `K=V` pairs added to the functions' environment
    /// (for what-if runs, e.g. SSL_CERT_FILE=...).
    extra_env: Vec<(String, String)>,
}

impl Settings {
    fn from_env() -> Res<Self> {
        let out = PathBuf::from(
            std::env::var("BENCH_OUT").unwrap_or_else(|_| "target/bench/results.json".into()),
        );
        let work_dir = out
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Settings {
            database_url: var("BENCH_DATABASE_URL")?,
            redis_url: var("BENCH_REDIS_URL")?,
            redis_prefix: std::env::var("BENCH_REDIS_PREFIX")
                .unwrap_or_else(|_| format!("bench-{}", uuid::Uuid::new_v4().simple())),
            bin_dir: PathBuf::from(var("BENCH_BIN_DIR")?),
            out,
            work_dir,
            warm_iters: var_or("BENCH_WARM_ITERS", 1000)?.max(10),
            cold_runs: var_or("BENCH_COLD_RUNS", 40)?.max(3),
            e2e_iters: var_or("BENCH_E2E_ITERS", 1000)?.max(10),
            only: std::env::var("BENCH_ONLY")
                .ok()
                .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect()),
            extra_env: std::env::var("BENCH_FUNCTION_ENV")
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        })
    }

    fn runs(&self, phase: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == phase))
    }

    /// The function configuration, as the deployed functions get it (from
    /// SSM there; from the environment here), pointing at the given services.
    fn function_env(&self, claude: &str, db: &str, redis: &str) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", db),
            ("REDIS_URL", redis),
            ("REDIS_KEY_PREFIX", self.redis_prefix.as_str()),
            ("ANTHROPIC_BASE_URL", claude),
            ("CLAUDE_API_KEY", "dummy"),
            ("CLAUDE_MODEL", "claude-haiku-4-5"),
            ("ALLOWED_ORIGINS", "https://shop.example.com"),
            ("SESSION_RETENTION_DAYS", "90"),
            ("RUST_LOG", "info"),
            // The bench sends far more than a shopper could: keep the limits
            // (their Redis work is measured) but out of reach.
            ("RATE_LIMIT_PER_SESSION_PER_MINUTE", "100000000"),
            ("RATE_LIMIT_PER_IP_PER_MINUTE", "100000000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(self.extra_env.iter().cloned())
        .collect()
    }
}

/// What the Lambda service sets for a `provided.al2023` function (256 MB, as in template.yaml).
fn lambda_env(name: &str, api: SocketAddr) -> Vec<(String, String)> {
    [
        ("AWS_LAMBDA_RUNTIME_API", api.to_string()),
        ("AWS_LAMBDA_FUNCTION_NAME", format!("support-chat-{name}")),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        (
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2025/11/24/[$LATEST]0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
        ),
        (
            "AWS_LAMBDA_LOG_GROUP_NAME",
            format!("/aws/lambda/support-chat-{name}"),
        ),
        ("AWS_LAMBDA_LOG_FORMAT", "JSON".into()),
        ("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ("LAMBDA_TASK_ROOT", "/var/task".into()),
        ("LAMBDA_RUNTIME_DIR", "/var/runtime".into()),
        ("_HANDLER", "bootstrap".into()),
        ("TZ", ":UTC".into()),
        ("LANG", "en_US.UTF-8".into()),
        ("PATH", "/usr/local/bin:/usr/bin/:/bin:/opt/bin".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

// ------------------------------------------------------------------ URLs ---

/// `scheme://[user@]host:port/...` -> (index of host start, index of host end).
fn authority_span(url: &str) -> Res<(usize, usize)> {
    let start = url.find("://").ok_or("URL without scheme")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let host_start = rest[..end].rfind('@').map(|i| i + 1).unwrap_or(0);
    Ok((start + host_start, start + end))
}

fn url_addr(url: &str, default_port: u16) -> Res<SocketAddr> {
    let (a, b) = authority_span(url)?;
    let hp = &url[a..b];
    let hp = if hp.contains(':') {
        hp.to_owned()
    } else {
        format!("{hp}:{default_port}")
    };
    Ok(hp
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or("no IPv4 address")?)
}

fn url_with_addr(url: &str, addr: SocketAddr) -> Res<String> {
    let (a, b) = authority_span(url)?;
    Ok(format!("{}{addr}{}", &url[..a], &url[b..]))
}

// ---------------------------------------------------------------- stdout ---

/// Sends this process's stdout (the functions' JSON logs, in-process) to a
/// file while measuring, so the table is not buried; logging still costs
/// what it costs.
struct StdoutToFile {
    saved: i32,
}

impl StdoutToFile {
    fn new(path: &Path) -> Res<Self> {
        use std::os::fd::AsRawFd;
        let file = File::create(path)?;
        std::io::stdout().flush()?;
        // SAFETY: plain descriptor duplication on descriptors we own.
        let saved = unsafe { libc::dup(1) };
        if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
            return Err("cannot redirect stdout".into());
        }
        Ok(StdoutToFile { saved })
    }
}

impl Drop for StdoutToFile {
    fn drop(&mut self) {
        let _ = std::io::stdout().flush();
        // SAFETY: restores the descriptor saved in `new`.
        unsafe {
            libc::dup2(self.saved, 1);
            libc::close(self.saved);
        }
    }
}

// ------------------------------------------------------------------ main ---

fn run(rt: &tokio::runtime::Runtime) -> Res<()> {
    let s = Settings::from_env()?;
    std::fs::create_dir_all(&s.work_dir)?;
    let started = Instant::now();
    let load_before = loadavg();
    // Servers and proxies live on a thread of their own, like remote services;
    // the functions' code runs on a current-thread runtime, like in Lambda.
    let infra = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-infra")
        .enable_all()
        .build()?;
    let claude = FakeClaude::start(infra.handle());
    let mut report = Report::new();

    {
        let _quiet = StdoutToFile::new(&s.work_dir.join("in-process.log"))?;
        support_chat::telemetry::init();
        rt.block_on(measure(&s, infra.handle(), &claude, &mut report))?;
    }

    if s.runs("sizes") {
        sizes(&s, &mut report)?;
    }

    let load_after = loadavg();
    let meta = json!({
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "warm_iterations": s.warm_iters,
        "cold_runs": s.cold_runs,
        "e2e_iterations": s.e2e_iters,
        "bench_seconds": started.elapsed().as_secs_f64(),
        "fake_claude_requests": claude.requests(),
    });
    report.print(&meta);
    if let Some(dir) = s.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&s.out, serde_json::to_vec_pretty(&report.to_json(meta))?)?;
    println!(
        "results: {} (bench itself: {:.1} s)",
        s.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn progress(what: &str) {
    eprintln!("bench: {what}");
}

async fn measure(s: &Settings, infra: &Handle, claude: &FakeClaude, r: &mut Report) -> Res<()> {
    let env = s.function_env(&claude.url, &s.database_url, &s.redis_url);
    let app = App::new(Config::from_env(&Env::from_pairs(env.clone()))?)?;

    progress("seeding sessions (20 messages each)");
    for _ in 0..20 {
        // Connections, the scripts' SHA1s in Redis, the fake's keep-alive.
        send(&app, events::post("hello", None, None)).await?;
    }
    let set_a = seed_sessions(&app, 50).await?;
    let set_b = seed_sessions(&app, 10).await?;
    let set_c = seed_sessions(&app, 50).await?;

    if s.runs("baselines") {
        progress("baselines: PostgreSQL and Redis round trips");
        baselines(s, &app, r).await?;
    }
    if s.runs("warm") {
        progress("warm, in process");
        warm_in_process(s, &app, claude, &set_a, &set_b, r).await?;
        progress("warm, in process, synchronous_commit=off");
        send_without_fsync(s, claude, &set_a, r).await?;
    }
    if s.runs("round_trips") {
        progress("round trips (counting proxies)");
        round_trips(s, infra, claude, &app, &set_a, &set_b, r).await?;
    }
    if s.runs("cold") {
        progress("cold starts");
        cold_starts(s, infra, &env, &app, &set_b, r).await?;
    }
    if s.runs("e2e") {
        progress("end to end through the Runtime API, and peak RSS");
        end_to_end(s, infra, &env, &set_b, &set_c, r).await?;
    }
    Ok(())
}

// --------------------------------------------------------- in process ---

fn request(event: &str) -> Res<lambda_http::Request> {
    Ok(lambda_http::request::from_str(event)?)
}

fn body_json(body: &Body) -> Value {
    serde_json::from_slice(body.as_ref()).unwrap_or(Value::Null)
}

/// CPU time of the calling thread (the handler's: the runtime is current-thread).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall-clock and handler-thread CPU time of one call.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl Took {
    fn since(t: Instant, cpu: Duration) -> Took {
        Took {
            wall: t.elapsed(),
            cpu: thread_cpu().saturating_sub(cpu),
        }
    }
}

/// Runs `send_message` and checks it answered with the fake Claude's reply.
async fn send(app: &App, event: String) -> Res<(Took, String)> {
    let req = request(&event)?;
    let (t, cpu) = (Instant::now(), thread_cpu());
    let resp = support_chat::http::send_message(app, req).await?;
    let took = Took::since(t, cpu);
    let body = body_json(resp.body());
    if resp.status() != 200 || body["reply"] != FAKE_REPLY {
        return Err(format!("send-message answered {}: {body}", resp.status()).into());
    }
    let sid = body["sessionId"].as_str().unwrap_or_default().to_owned();
    Ok((took, sid))
}

async fn history(app: &App, sid: &str) -> Res<Took> {
    let req = request(&events::get(sid))?;
    let (t, cpu) = (Instant::now(), thread_cpu());
    let resp = support_chat::http::get_history(app, req).await?;
    let took = Took::since(t, cpu);
    if resp.status() != 200 {
        return Err(format!(
            "get-history answered {}: {}",
            resp.status(),
            body_json(resp.body())
        )
        .into());
    }
    Ok(took)
}

/// Sessions holding 20 messages (10 exchanges).
async fn seed_sessions(app: &App, n: usize) -> Res<Vec<String>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (_, sid) = send(app, events::post(&events::question(i), None, None)).await?;
        for j in 1..10 {
            send(
                app,
                events::post(&events::question(i + j), Some(&sid), None),
            )
            .await?;
        }
        out.push(sid);
    }
    Ok(out)
}

fn sid(s: &str) -> Res<SessionId> {
    Ok(SessionId::parse(s).map_err(|e| format!("bad session id {s}: {e}"))?)
}

async fn invalidate(app: &App, s: &str) -> Res<()> {
    let cache = app.cache().ok_or("no cache configured")?;
    cache
        .invalidate(sid(s)?)
        .await
        .map_err(|e| format!("invalidate: {e}"))?;
    Ok(())
}

async fn warm_in_process(
    s: &Settings,
    app: &App,
    claude: &FakeClaude,
    set_a: &[String],
    set_b: &[String],
    r: &mut Report,
) -> Res<()> {
    let n = s.warm_iters;

    let before = claude.requests();
    let (mut new, mut new_cpu) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n {
        let (t, _) = send(app, events::post(&events::question(i), None, None)).await?;
        new.push(t.wall);
        new_cpu.push(t.cpu);
    }
    if claude.requests() - before != n as u64 {
        return Err("the fake Claude did not get one request per send-message".into());
    }
    let (mut existing, mut existing_cpu) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n {
        let sid = &set_a[i % set_a.len()];
        let (t, _) = send(app, events::post(&events::question(i), Some(sid), None)).await?;
        existing.push(t.wall);
        existing_cpu.push(t.cpu);
    }

    for sid in set_b {
        history(app, sid).await?; // fills the cache
    }
    let (mut hit, mut hit_cpu) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n {
        let t = history(app, &set_b[i % set_b.len()]).await?;
        hit.push(t.wall);
        hit_cpu.push(t.cpu);
    }
    let (mut miss, mut miss_cpu) = (Samples::with_capacity(n), Samples::with_capacity(n));
    for i in 0..n {
        let sid = &set_b[i % set_b.len()];
        invalidate(app, sid).await?;
        let t = history(app, sid).await?;
        miss.push(t.wall);
        miss_cpu.push(t.cpu);
    }

    let fake = fake_round_trip(claude, n).await?.summary();
    let new = new.summary();
    let existing = existing.summary();
    let send_target = |s: &Summary| vec![Target::p50_at_most(s, 3.0), Target::p99_at_most(s, 10.0)];
    r.section(
        "Warm, in process (handler only, current-thread runtime, fake Claude answers at once)",
    );
    r.latency(
        "warm.send_new",
        "send-message, new session",
        new,
        send_target(&new),
    );
    r.latency(
        "warm.send_existing",
        "send-message, session with 20 prior messages",
        existing,
        send_target(&existing),
    );
    r.latency(
        "warm.fake_claude_round_trip",
        "  fake Claude's own round trip (bare reqwest POST, same size)",
        fake,
        vec![],
    );
    r.latency(
        "warm.send_new_minus_claude",
        "  send-message, new session, minus that round trip",
        new.minus(fake.p50),
        vec![],
    );
    r.latency(
        "warm.send_existing_minus_claude",
        "  send-message, 20 prior, minus that round trip",
        existing.minus(fake.p50),
        vec![],
    );
    let hit = hit.summary();
    let miss = miss.summary();
    r.latency(
        "warm.history_hit",
        "get-history, cache hit (20 messages)",
        hit,
        vec![Target::p50_at_most(&hit, 0.5)],
    );
    r.latency(
        "warm.history_miss",
        "get-history, cache miss (20 messages; PostgreSQL + fill)",
        miss,
        vec![Target::p50_at_most(&miss, 2.0)],
    );
    for (key, label, cpu) in [
        ("send_new", "send-message, new session", new_cpu),
        (
            "send_existing",
            "send-message, 20 prior messages",
            existing_cpu,
        ),
        ("history_hit", "get-history, cache hit", hit_cpu),
        ("history_miss", "get-history, cache miss", miss_cpu),
    ] {
        r.latency(
            &format!("warm.{key}.cpu"),
            &format!("  handler-thread CPU time: {label}"),
            cpu.summary(),
            vec![],
        );
    }
    Ok(())
}

/// What one round trip to each dependency costs on this machine, so the
/// handler's numbers can be read: a send-message commits twice.
async fn baselines(s: &Settings, app: &App, r: &mut Report) -> Res<()> {
    let n = s.warm_iters;
    let (pg, conn) = tokio_postgres::connect(&s.database_url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    pg.batch_execute("CREATE TABLE IF NOT EXISTS bench_commit (x int)")
        .await?;
    let mut select = Samples::with_capacity(n);
    let mut commit = Samples::with_capacity(n);
    let mut commit_async = Samples::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        pg.query_typed("SELECT 1", &[]).await?;
        let d = t.elapsed();
        let x = i as i32;
        let t = Instant::now();
        pg.query_typed(
            "INSERT INTO bench_commit VALUES ($1)",
            &[(&x, tokio_postgres::types::Type::INT4)],
        )
        .await?;
        let c = t.elapsed();
        if i >= 10 {
            select.push(d);
            commit.push(c);
        }
    }
    pg.batch_execute("SET synchronous_commit = off").await?;
    for i in 0..n + 10 {
        let x = i as i32;
        let t = Instant::now();
        pg.query_typed(
            "INSERT INTO bench_commit VALUES ($1)",
            &[(&x, tokio_postgres::types::Type::INT4)],
        )
        .await?;
        if i >= 10 {
            commit_async.push(t.elapsed());
        }
    }
    pg.batch_execute("DROP TABLE bench_commit").await?;
    drop(pg);
    let _ = conn.await;

    let cache = app.cache().ok_or("no cache configured")?;
    let mut ping = Samples::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        cache.ping().await.map_err(|e| format!("redis ping: {e}"))?;
        if i >= 10 {
            ping.push(t.elapsed());
        }
    }
    r.section("Baselines on this machine (one round trip each; no targets)");
    r.latency(
        "baseline.pg_select_1",
        "PostgreSQL: SELECT 1",
        select.summary(),
        vec![],
    );
    r.latency(
        "baseline.pg_commit",
        "PostgreSQL: 1-row INSERT + commit (WAL fsync)",
        commit.summary(),
        vec![],
    );
    r.latency(
        "baseline.pg_commit_async",
        "PostgreSQL: 1-row INSERT + commit, synchronous_commit=off",
        commit_async.summary(),
        vec![],
    );
    r.latency("baseline.redis_ping", "Redis: PING", ping.summary(), vec![]);
    Ok(())
}

/// send-message again, with the App's connections set to
/// `synchronous_commit=off` (through DATABASE_URL `options`): the handler's
/// cost without this machine's WAL fsyncs.
async fn send_without_fsync(
    s: &Settings,
    claude: &FakeClaude,
    set_a: &[String],
    r: &mut Report,
) -> Res<()> {
    let sep = if s.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let db = format!(
        "{}{sep}options=-c%20synchronous_commit%3Doff",
        s.database_url
    );
    let env = s.function_env(&claude.url, &db, &s.redis_url);
    let app = App::new(Config::from_env(&Env::from_pairs(env))?)?;
    for _ in 0..20 {
        send(&app, events::post("hello", None, None)).await?;
    }
    let n = s.warm_iters;
    let mut new = Samples::with_capacity(n);
    let mut existing = Samples::with_capacity(n);
    for i in 0..n {
        new.push(
            send(&app, events::post(&events::question(i), None, None))
                .await?
                .0
                .wall,
        );
        let ev = events::post(&events::question(i), Some(&set_a[i % set_a.len()]), None);
        existing.push(send(&app, ev).await?.0.wall);
    }
    let (new, existing) = (new.summary(), existing.summary());
    r.latency(
        "warm.send_new_sync_commit_off",
        "send-message, new session, synchronous_commit=off",
        new,
        vec![
            Target::p50_at_most(&new, 3.0),
            Target::p99_at_most(&new, 10.0),
        ],
    );
    r.latency(
        "warm.send_existing_sync_commit_off",
        "send-message, 20 prior messages, synchronous_commit=off",
        existing,
        vec![
            Target::p50_at_most(&existing, 3.0),
            Target::p99_at_most(&existing, 10.0),
        ],
    );
    Ok(())
}

/// The fake Claude's round trip as the Claude client makes it: keep-alive,
/// same headers, a body as big as the real request's.
async fn fake_round_trip(claude: &FakeClaude, n: usize) -> Res<Samples> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(50))
        .build()?;
    let url = format!("{}/v1/messages", claude.url);
    let body = vec![b' '; claude.last_body_len().max(1)];
    let mut out = Samples::with_capacity(n);
    for i in 0..n + 20 {
        let t = Instant::now();
        let resp = client
            .post(&url)
            .timeout(Duration::from_secs(5))
            .header("x-api-key", "dummy")
            .header("anthropic-version", "2023-06-01")
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let _ = resp.bytes().await?;
        if i >= 20 {
            out.push(t.elapsed());
        }
    }
    Ok(out)
}

// ---------------------------------------------------------- round trips ---

async fn round_trips(
    s: &Settings,
    infra: &Handle,
    claude: &FakeClaude,
    plain: &App,
    set_a: &[String],
    set_b: &[String],
    r: &mut Report,
) -> Res<()> {
    let pg = Proxy::start(infra, Proto::Postgres, url_addr(&s.database_url, 5432)?);
    let redis = Proxy::start(infra, Proto::Redis, url_addr(&s.redis_url, 6379)?);
    let db_url = url_with_addr(&s.database_url, pg.addr)?;
    let redis_url = url_with_addr(&s.redis_url, redis.addr)?;
    let env = s.function_env(&claude.url, &db_url, &redis_url);
    let app = App::new(Config::from_env(&Env::from_pairs(env.clone()))?)?;
    // Connections made, scripts known.
    for _ in 0..3 {
        let (_, sid) = send(&app, events::post("hi", None, None)).await?;
        send(&app, events::post("again", Some(&sid), None)).await?;
        history(&app, &set_b[0]).await?;
    }

    const K: u64 = 20;
    let counted = |pg: &Proxy, redis: &Proxy| (pg.snapshot(), redis.snapshot());
    let mut rows: Vec<(&str, &str, Snapshot, Snapshot)> = Vec::new();

    let (p0, r0) = counted(&pg, &redis);
    for i in 0..K as usize {
        send(&app, events::post(&events::question(i), None, None)).await?;
    }
    let (p1, r1) = counted(&pg, &redis);
    rows.push((
        "send_new",
        "send-message, new session",
        p1.since(&p0),
        r1.since(&r0),
    ));

    for i in 0..K as usize {
        let ev = events::post(&events::question(i), Some(&set_a[i % set_a.len()]), None);
        send(&app, ev).await?;
    }
    let (p2, r2) = counted(&pg, &redis);
    rows.push((
        "send_existing",
        "send-message, existing session",
        p2.since(&p1),
        r2.since(&r1),
    ));

    for i in 0..K as usize {
        let key = uuid::Uuid::new_v4().to_string();
        let ev = events::post(
            &events::question(i),
            Some(&set_a[i % set_a.len()]),
            Some(&key),
        );
        send(&app, ev).await?;
    }
    let (p3, r3) = counted(&pg, &redis);
    rows.push((
        "send_existing_idempotency_key",
        "send-message, existing session, Idempotency-Key",
        p3.since(&p2),
        r3.since(&r2),
    ));

    for sid in set_b {
        history(&app, sid).await?;
    }
    let (p4, r4) = counted(&pg, &redis);
    for i in 0..K as usize {
        history(&app, &set_b[i % set_b.len()]).await?;
    }
    let (p5, r5) = counted(&pg, &redis);
    rows.push((
        "history_hit",
        "get-history, cache hit",
        p5.since(&p4),
        r5.since(&r4),
    ));

    let mut pg_miss = Snapshot::default();
    let mut redis_miss = Snapshot::default();
    for i in 0..K as usize {
        let sid = &set_b[i % set_b.len()];
        invalidate(plain, sid).await?; // not through the proxies
        let (pa, ra) = counted(&pg, &redis);
        history(&app, sid).await?;
        let (pb, rb) = counted(&pg, &redis);
        pg_miss = add(&pg_miss, &pb.since(&pa));
        redis_miss = add(&redis_miss, &rb.since(&ra));
    }
    rows.push((
        "history_miss",
        "get-history, cache miss",
        pg_miss,
        redis_miss,
    ));

    r.section(
        "Round trips per request (counting TCP proxies; pg_stat_statements is not preloaded)",
    );
    for (key, label, p, rd) in rows {
        let pg_rt = p.round_trips as f64 / K as f64;
        let redis_rt = rd.round_trips as f64 / K as f64;
        let (pg_t, redis_t) = match key {
            k if k.starts_with("send") => (
                vec![Target::at_most(pg_rt, 2.0, "<= 2")],
                vec![Target::at_most(redis_rt, 1.0, "<= 1")],
            ),
            "history_hit" => (
                vec![Target::at_most(pg_rt, 0.0, "0")],
                vec![Target::exactly(redis_rt, 1.0, "1")],
            ),
            _ => (vec![], vec![]),
        };
        r.count(
            &format!("round_trips.{key}.postgres"),
            &format!("{label}: PostgreSQL"),
            pg_rt,
            &format!(
                "{} statement(s)",
                proxy::fmt_num(p.pg_statements() as f64 / K as f64)
            ),
            pg_t,
        );
        r.count(
            &format!("round_trips.{key}.redis"),
            &format!("{label}: Redis"),
            redis_rt,
            &format!(
                "{} command(s): {}",
                proxy::fmt_num(rd.redis_commands() as f64 / K as f64),
                rd.describe(K)
            ),
            redis_t,
        );
    }
    drop(app);

    // Whole cold processes through the proxies: connection setup included.
    // Averaged: whether the first request races the background warm-up
    // connection is a matter of timing.
    const COLD: u64 = 10;
    let env = s.function_env(&claude.url, &db_url, &redis_url);
    for name in [SEND, HISTORY] {
        let (mut p, mut rd) = (Snapshot::default(), Snapshot::default());
        let mut caches = std::collections::BTreeMap::<String, u64>::new();
        for i in 0..COLD as usize {
            let event = if name == SEND {
                events::post(&events::question(i), None, None)
            } else {
                events::get(&set_b[0])
            };
            let (p0, r0) = counted(&pg, &redis);
            let run = cold_run(s, infra, name, &env, event).await?;
            // The killed process's last bytes may still be in flight.
            tokio::time::sleep(Duration::from_millis(30)).await;
            let (p1, r1) = counted(&pg, &redis);
            p = add(&p, &p1.since(&p0));
            rd = add(&rd, &r1.since(&r0));
            if let Some(c) = run.cache {
                *caches.entry(c).or_default() += 1;
            }
        }
        let per = |v: u64| proxy::fmt_num(v as f64 / COLD as f64);
        let key = name.replace('-', "_");
        r.count(
            &format!("round_trips.cold_{key}.postgres"),
            &format!("cold {name} process, init + first request: PostgreSQL"),
            p.round_trips as f64 / COLD as f64,
            &format!(
                "{} connection(s), {} statement(s); mean of {COLD} processes",
                per(p.connections),
                per(p.pg_statements())
            ),
            vec![],
        );
        let cache = caches
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ");
        r.count(
            &format!("round_trips.cold_{key}.redis"),
            &format!("cold {name} process, init + first request: Redis"),
            rd.round_trips as f64 / COLD as f64,
            &format!(
                "{} connection(s): {}{}",
                per(rd.connections),
                rd.describe(COLD),
                if cache.is_empty() {
                    String::new()
                } else {
                    format!("; cache {cache}")
                }
            ),
            vec![],
        );
    }
    Ok(())
}

fn add(a: &Snapshot, b: &Snapshot) -> Snapshot {
    let mut m = a.messages.clone();
    for (k, v) in &b.messages {
        *m.entry(k.clone()).or_default() += v;
    }
    Snapshot {
        round_trips: a.round_trips + b.round_trips,
        connections: a.connections + b.connections,
        messages: m,
    }
}

// ---------------------------------------------------------- processes ---

fn spawn_function(
    s: &Settings,
    name: &str,
    api: SocketAddr,
    env: &[(String, String)],
    log: &Path,
) -> Res<Child> {
    let log = File::create(log)?;
    let bin = s.bin_dir.join(name);
    // Profiling aid: BENCH_WRAPPER="strace -f -tt -o /tmp/trace" runs each
    // function under that command (the timings then include it).
    let wrapper: Vec<String> = std::env::var("BENCH_WRAPPER")
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut cmd = match wrapper.split_first() {
        Some((prog, args)) => {
            let mut c = Command::new(prog);
            c.args(args).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    Ok(cmd
        .env_clear()
        .envs(lambda_env(name, api))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&s.bin_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?)
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

struct ColdRun {
    init: Duration,
    first: Duration,
    total: Duration,
    /// CPU time of the process (all its threads) during init and during the first invocation.
    init_cpu: Option<Duration>,
    first_cpu: Option<Duration>,
    /// For get-history: what the first request's log line says ("hit"/"miss").
    cache: Option<String>,
}

const WAIT: Duration = Duration::from_secs(10);

/// CPU time consumed so far by the process's live threads (schedstat, ns).
fn cpu_time(pid: u32) -> Option<Duration> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(ns))
}

/// exec -> first `/next` (init) -> first response (first invocation); then kill.
///
/// The event is handed out when the first `/next` arrives (as when a cold
/// start is caused by an invocation), after the process's CPU time is read:
/// it is idle then, waiting for the answer. First invocation = event handed
/// out -> response posted; total = init + first invocation.
async fn cold_run(
    s: &Settings,
    infra: &Handle,
    name: &str,
    env: &[(String, String)],
    event: String,
) -> Res<ColdRun> {
    let mut api = RuntimeApi::start(infra);
    let id = uuid::Uuid::new_v4().to_string();
    let log = s.work_dir.join(format!("{name}-cold.log"));
    let t0 = Instant::now();
    let mut child = spawn_function(s, name, api.addr, env, &log)?;
    let pid = child.id();
    type Seen = (
        Instant,
        servers::Outcome,
        Option<Duration>,
        Option<Duration>,
    );
    let result: Res<Seen> = async {
        let (next_rx, out_rx) = api.channels();
        // Biased: a fast function may have posted its response by the time
        // this task runs; its /next call came first all the same.
        let next = tokio::select! {
            biased;
            n = next_rx.recv() => n.ok_or("runtime API gone")?,
            o = out_rx.recv() => {
                let o = o.ok_or("runtime API gone")?;
                return Err(format!("{:?}: {}", o.kind, String::from_utf8_lossy(&o.body)).into());
            }
            _ = tokio::time::sleep(WAIT) => return Err("no /next within 10 s".into()),
        };
        let init_cpu = cpu_time(pid);
        api.push(&id, event);
        let out = api.outcome(WAIT).await.ok_or("no response within 10 s")?;
        // Idle again once it asks for the next event.
        let idle = api.next_call(Duration::from_secs(2)).await.is_some();
        let all_cpu = cpu_time(pid).filter(|_| idle);
        Ok((next, out, init_cpu, all_cpu))
    }
    .await;
    stop(&mut child);
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    let (next, out, init_cpu, all_cpu) =
        result.map_err(|e| format!("{name}: {e}; log tail:\n{}", tail()))?;
    if out.kind != OutcomeKind::Response || out.id != id {
        return Err(format!(
            "{name}: {:?} for invocation {:?} (expected {id}): {}; log tail:\n{}",
            out.kind,
            out.id,
            String::from_utf8_lossy(&out.body),
            tail()
        )
        .into());
    }
    check_lambda_response(name, &out.body)?;
    let cache = (name == HISTORY).then(|| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(r#""cache":"hit""#) {
            "hit".to_owned()
        } else if text.contains(r#""cache":"miss""#) {
            "miss".to_owned()
        } else {
            "?".to_owned()
        }
    });
    let init = next - t0;
    let first = out.at
        - out
            .handed_out
            .ok_or("response to an invocation never handed out")?;
    Ok(ColdRun {
        init,
        first,
        total: init + first,
        init_cpu,
        first_cpu: match (init_cpu, all_cpu) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        },
        cache,
    })
}

/// The API Gateway response the function posted: 200, and for send-message
/// the fake Claude's reply.
fn check_lambda_response(name: &str, body: &[u8]) -> Res<()> {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let status = v["statusCode"].as_u64().unwrap_or(0);
    let inner: Value = v["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    let ok = status == 200 && (name != SEND || inner["reply"] == FAKE_REPLY);
    if !ok {
        return Err(format!(
            "{name} answered {status}: {}",
            String::from_utf8_lossy(body)
        )
        .into());
    }
    Ok(())
}

async fn cold_starts(
    s: &Settings,
    infra: &Handle,
    env: &[(String, String)],
    app: &App,
    set_b: &[String],
    r: &mut Report,
) -> Res<()> {
    struct Variant<'a> {
        key: &'a str,
        label: &'a str,
        name: &'a str,
        miss: bool,
    }
    let variants = [
        Variant {
            key: "send",
            label: "send-message (new session)",
            name: SEND,
            miss: false,
        },
        Variant {
            key: "history_hit",
            label: "get-history (cache hit)",
            name: HISTORY,
            miss: false,
        },
        Variant {
            key: "history_miss",
            label: "get-history (cache miss)",
            name: HISTORY,
            miss: true,
        },
    ];
    r.section(&format!(
        "Cold start: exec -> first /next (init); event handed out -> response (first invocation); {} runs each, page cache warm",
        s.cold_runs
    ));
    let session = &set_b[0];
    history(app, session).await?; // cached
    for v in variants {
        let (mut init, mut first, mut total) =
            (Samples::default(), Samples::default(), Samples::default());
        let (mut init_cpu, mut first_cpu) = (Samples::default(), Samples::default());
        let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
        for i in 0..s.cold_runs + 2 {
            let event = if v.name == SEND {
                events::post(&events::question(i), None, None)
            } else {
                if v.miss {
                    invalidate(app, session).await?;
                } else {
                    history(app, session).await?;
                }
                events::get(session)
            };
            let run = cold_run(s, infra, v.name, env, event).await?;
            if i < 2 {
                continue; // the first exec of a new binary pays for page faults of its own
            }
            init.push(run.init);
            first.push(run.first);
            total.push(run.total);
            if let (Some(a), Some(b)) = (run.init_cpu, run.first_cpu) {
                init_cpu.push(a);
                first_cpu.push(b);
            }
            if let Some(c) = run.cache {
                *outcomes.entry(c).or_default() += 1;
            }
        }
        let (init, first, total) = (init.summary(), first.summary(), total.summary());
        let cache_note = if outcomes.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                outcomes
                    .iter()
                    .map(|(k, n)| format!("{k} x{n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        r.latency(
            &format!("cold.{}.init", v.key),
            &format!("{}: init", v.label),
            init,
            vec![Target::p50_at_most(&init, 15.0)],
        );
        r.latency(
            &format!("cold.{}.init_cpu", v.key),
            &format!("{}: init, CPU time", v.label),
            init_cpu.summary(),
            vec![],
        );
        r.latency(
            &format!("cold.{}.first_invocation", v.key),
            &format!("{}: first invocation{cache_note}", v.label),
            first,
            vec![],
        );
        r.latency(
            &format!("cold.{}.first_invocation_cpu", v.key),
            &format!("{}: first invocation, CPU time", v.label),
            first_cpu.summary(),
            vec![],
        );
        let t = if v.name == HISTORY {
            vec![Target::p50_at_most(&total, 40.0)]
        } else {
            vec![]
        };
        r.latency(
            &format!("cold.{}.total", v.key),
            &format!("{}: total", v.label),
            total,
            t,
        );
    }
    Ok(())
}

struct E2e {
    samples: Samples,
    hwm_kib: u64,
    rss_kib: u64,
}

/// One long-lived process fed `warmup + n` events, one at a time.
async fn e2e_run(
    s: &Settings,
    infra: &Handle,
    name: &str,
    env: &[(String, String)],
    n: usize,
    mut event: impl FnMut(usize) -> String,
) -> Res<E2e> {
    let warmup = 20;
    let mut api = RuntimeApi::start(infra);
    let log = s.work_dir.join(format!("{name}-e2e.log"));
    let mut child = spawn_function(s, name, api.addr, env, &log)?;
    let pid = child.id();
    let result: Res<E2e> = async {
        api.next_call(WAIT).await.ok_or("no /next within 10 s")?;
        let mut samples = Samples::with_capacity(n);
        for i in 0..warmup + n {
            let id = uuid::Uuid::new_v4().to_string();
            api.push(&id, event(i));
            let out = api.outcome(WAIT).await.ok_or("no response within 10 s")?;
            if out.kind != OutcomeKind::Response || out.id != id {
                return Err(
                    format!("{:?}: {}", out.kind, String::from_utf8_lossy(&out.body)).into(),
                );
            }
            check_lambda_response(name, &out.body)?;
            let handed = out
                .handed_out
                .ok_or("response to an invocation never handed out")?;
            if i >= warmup {
                samples.push(out.at - handed);
            }
        }
        // Let the process settle in /next, then read its memory.
        api.next_call(WAIT)
            .await
            .ok_or("no /next after the last response")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        Ok(E2e {
            samples,
            hwm_kib: proc_kib(&status, "VmHWM:"),
            rss_kib: proc_kib(&status, "VmRSS:"),
        })
    }
    .await;
    stop(&mut child);
    result.map_err(|e| format!("{name} (end to end): {e}").into())
}

fn proc_kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn end_to_end(
    s: &Settings,
    infra: &Handle,
    env: &[(String, String)],
    set_b: &[String],
    set_c: &[String],
    r: &mut Report,
) -> Res<()> {
    let n = s.e2e_iters;
    let send = e2e_run(s, infra, SEND, env, n, |i| {
        events::post(&events::question(i), Some(&set_c[i % set_c.len()]), None)
    })
    .await?;
    let hist = e2e_run(s, infra, HISTORY, env, n, |i| {
        events::get(&set_b[i % set_b.len()])
    })
    .await?;
    r.section(&format!(
        "Warm, end to end through the Runtime API (one process, {n} events: /next handed out -> response posted)"
    ));
    let (ss, hs) = (send.samples.summary(), hist.samples.summary());
    r.latency(
        "e2e.send_existing",
        "send-message, session with 20+ prior messages",
        ss,
        vec![],
    );
    r.latency("e2e.history_hit", "get-history, cache hit", hs, vec![]);
    r.section(&format!(
        "Memory: VmHWM after {} requests through the Runtime API",
        n + 20
    ));
    for (name, e) in [(SEND, &send), (HISTORY, &hist)] {
        let mib = e.hwm_kib as f64 / 1024.0;
        r.count(
            &format!("memory.{}.peak_rss_mib", name.replace('-', "_")),
            &format!("{name}: peak RSS (MiB)"),
            mib,
            &format!("RSS at the end {:.1} MiB", e.rss_kib as f64 / 1024.0),
            vec![Target::at_most(mib, 30.0, "<= 30 MiB")],
        );
    }
    Ok(())
}

// ---------------------------------------------------------------- sizes ---

fn sizes(s: &Settings, r: &mut Report) -> Res<()> {
    r.section(&format!(
        "Package size ({} release build here; deployed builds are arm64)",
        std::env::consts::ARCH
    ));
    for name in [SEND, HISTORY] {
        let bin = s.bin_dir.join(name);
        let raw = std::fs::metadata(&bin)?.len();
        let (zipped, tool) = zip_size(&bin, &s.work_dir.join(format!("zip-{name}")))?;
        let key = name.replace('-', "_");
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        r.count(
            &format!("size.{key}.bootstrap_mib"),
            &format!("{name}: bootstrap (MiB)"),
            mib(raw),
            &format!("{raw} bytes"),
            vec![],
        );
        r.count(
            &format!("size.{key}.zip_mib"),
            &format!("{name}: bootstrap.zip (MiB)"),
            mib(zipped),
            &format!("{zipped} bytes, {tool}"),
            vec![Target::at_most(mib(zipped), 6.0, "<= 6 MiB")],
        );
    }
    Ok(())
}

/// Zips `bin` as `bootstrap` (what a `provided.al2023` package holds).
fn zip_size(bin: &Path, dir: &Path) -> Res<(u64, &'static str)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::copy(bin, dir.join("bootstrap"))?;
    let zip = dir.join("bootstrap.zip");
    let with_zip = Command::new("zip")
        .args(["-q", "-X", "bootstrap.zip", "bootstrap"])
        .current_dir(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let tool = if with_zip {
        "zip (deflate, default level)"
    } else {
        let ok = Command::new("python3")
            .args(["-m", "zipfile", "-c", "bootstrap.zip", "bootstrap"])
            .current_dir(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err("neither `zip` nor `python3 -m zipfile` could zip the bootstrap".into());
        }
        "python3 -m zipfile (deflate)"
    };
    let size = std::fs::metadata(&zip)?.len();
    let _ = std::fs::remove_file(dir.join("bootstrap"));
    Ok((size, tool))
}
