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
//! BENCH_WARM_ITERS (1000), BENCH_COLD_RUNS (40), BENCH_E2E_ITERS (1000),
//! BENCH_STREAM_ITERS (200).
//! For experiments: BENCH_ONLY (phases, comma-separated: baselines, warm,
//! round_trips, cold, e2e, stream, sizes), BENCH_FUNCTION_ENV (`K=V ...` added to the
//! functions' environment), BENCH_WRAPPER (e.g. `strace -f -tt -o /tmp/t`:
//! runs each function under that command; timings then include it).
//!
//! The fake Claude (testkit's) answers every request at once, in one piece;
//! the `stream` phase starts fakes of its own that stream their replies in
//! timed pieces (`phases/stream.rs`).

mod context;
mod in_process;
mod phases;
mod proxy;
mod report;
mod runtime;
mod sampling;
mod servers;
mod settings;
mod stats;
mod streamed;
mod urls;

use serde_json::json;
use std::time::Instant;
use support_chat::config::{Config, Env};
use testkit::claude::FakeClaude;
use tokio::runtime::Handle;

use context::{Ctx, Sessions};
use in_process::{post, seed_sessions, send};
use phases::progress;
use report::Report;
use sampling::{StdoutToFile, loadavg};
use settings::Settings;

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

async fn migrate() -> Res<()> {
    let url = settings::var("BENCH_DATABASE_URL")?;
    let cfg = Config::from_env(&Env::from_pairs([("DATABASE_URL", url)]))?;
    let applied = support_chat::store::migrate(&cfg.database).await?;
    eprintln!("bench: migrations applied: {applied:?}");
    Ok(())
}

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
    // Only the last request is kept: its body sizes the bare round trip.
    let claude = infra.block_on(FakeClaude::builder().keep(1).start())?;
    let mut report = Report::new();
    {
        let _quiet = StdoutToFile::new(&s.work_dir.join("in-process.log"))?;
        support_chat::telemetry::init();
        rt.block_on(measure(&s, infra.handle(), &claude, &mut report))?;
    }
    if s.runs("sizes") {
        phases::sizes::run(&s, &mut report)?;
    }
    let meta = json!({
        "arch": std::env::consts::ARCH,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "warm_iterations": s.warm_iters,
        "cold_runs": s.cold_runs,
        "e2e_iterations": s.e2e_iters,
        "stream_iterations": s.stream_iters,
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

async fn measure(s: &Settings, infra: &Handle, claude: &FakeClaude, r: &mut Report) -> Res<()> {
    let env = s.function_env(claude.url(), &s.database_url, &s.redis_url);
    let app = in_process::app(&env)?;
    progress("seeding sessions (20 messages each)");
    for _ in 0..20 {
        // Connections, the scripts' SHA1s in Redis, the fake's keep-alive.
        send(&app, post("hello", None)).await?;
    }
    let sessions = Sessions {
        a: seed_sessions(&app, 50).await?,
        b: seed_sessions(&app, 10).await?,
        c: seed_sessions(&app, 50).await?,
    };
    let ctx = Ctx {
        s,
        infra,
        claude,
        env,
        app,
        sessions,
    };
    if s.runs("baselines") {
        progress("baselines: PostgreSQL and Redis round trips");
        phases::baselines::run(&ctx, r).await?;
    }
    if s.runs("warm") {
        phases::warm::run(&ctx, r).await?;
    }
    if s.runs("round_trips") {
        progress("round trips (counting proxies)");
        phases::round_trips::run(&ctx, r).await?;
    }
    if s.runs("cold") {
        progress("cold starts");
        phases::cold::run(&ctx, r).await?;
    }
    if s.runs("e2e") {
        progress("end to end through the Runtime API, and peak RSS");
        phases::e2e::run(&ctx, r).await?;
    }
    if s.runs("stream") {
        progress("streaming through the Runtime API, and peak RSS of long streams");
        phases::stream::run(&ctx, r).await?;
    }
    Ok(())
}
