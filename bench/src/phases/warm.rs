//! Warm requests in this process: the handlers' own cost, with the fake
//! Claude answering at once.

use std::sync::Arc;
use std::time::{Duration, Instant};
use support_chat::App;
use testkit::claude::FakeClaude;
use testkit::events::question;

use crate::Res;
use crate::context::Ctx;
use crate::in_process::{self, history, invalidate, post, send};
use crate::phases::progress;
use crate::report::{Report, Target};
use crate::sampling::Took;
use crate::stats::{Samples, Summary};

/// Wall-clock and handler-thread CPU samples of one kind of request.
struct Timed {
    wall: Samples,
    cpu: Samples,
}

impl Timed {
    fn with_capacity(n: usize) -> Timed {
        Timed {
            wall: Samples::with_capacity(n),
            cpu: Samples::with_capacity(n),
        }
    }

    fn push(&mut self, t: Took) {
        self.wall.push(t.wall);
        self.cpu.push(t.cpu);
    }
}

fn send_targets(s: &Summary) -> Vec<Target> {
    vec![Target::p50_at_most(s, 3.0), Target::p99_at_most(s, 10.0)]
}

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    progress("warm, in process");
    let n = ctx.s.warm_iters;
    let set_a = &ctx.sessions.a;
    let before = ctx.claude.requests();
    let new = sends(&ctx.app, n, |_| None).await?;
    if ctx.claude.requests() - before != n as u64 {
        return Err("the fake Claude did not get one request per send-message".into());
    }
    let existing = sends(&ctx.app, n, |i| Some(set_a[i % set_a.len()].as_str())).await?;
    let (hit, miss) = histories(&ctx.app, &ctx.sessions.b, n).await?;
    let fake = fake_round_trip(ctx.claude, n).await?.summary();
    r.section(
        "Warm, in process (handler only, current-thread runtime, fake Claude answers at once)",
    );
    report_sends(r, &new, &existing, fake);
    report_histories(r, &hit, &miss);
    for (key, label, t) in [
        ("send_new", "send-message, new session", &new),
        (
            "send_existing",
            "send-message, 20 prior messages",
            &existing,
        ),
        ("history_hit", "get-history, cache hit", &hit),
        ("history_miss", "get-history, cache miss", &miss),
    ] {
        r.latency(
            &format!("warm.{key}.cpu"),
            &format!("  handler-thread CPU time: {label}"),
            t.cpu.summary(),
            vec![],
        );
    }
    progress("warm, in process, synchronous_commit=off");
    send_without_fsync(ctx, r).await
}

/// `n` send-messages, the i-th continuing `session(i)` (a new session for `None`).
async fn sends<'s>(
    app: &Arc<App>,
    n: usize,
    session: impl Fn(usize) -> Option<&'s str>,
) -> Res<Timed> {
    let mut out = Timed::with_capacity(n);
    for i in 0..n {
        let (t, _) = send(app, post(&question(i), session(i))).await?;
        out.push(t);
    }
    Ok(out)
}

/// `n` cache hits, then `n` cache misses, over `sessions`.
async fn histories(app: &App, sessions: &[String], n: usize) -> Res<(Timed, Timed)> {
    for sid in sessions {
        history(app, sid).await?; // fills the cache
    }
    let mut hit = Timed::with_capacity(n);
    for i in 0..n {
        hit.push(history(app, &sessions[i % sessions.len()]).await?);
    }
    let mut miss = Timed::with_capacity(n);
    for i in 0..n {
        let sid = &sessions[i % sessions.len()];
        invalidate(app, sid).await?;
        miss.push(history(app, sid).await?);
    }
    Ok((hit, miss))
}

fn report_sends(r: &mut Report, new: &Timed, existing: &Timed, fake: Summary) {
    let (new, existing) = (new.wall.summary(), existing.wall.summary());
    r.latency(
        "warm.send_new",
        "send-message, new session",
        new,
        send_targets(&new),
    );
    r.latency(
        "warm.send_existing",
        "send-message, session with 20 prior messages",
        existing,
        send_targets(&existing),
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
}

fn report_histories(r: &mut Report, hit: &Timed, miss: &Timed) {
    let (hit, miss) = (hit.wall.summary(), miss.wall.summary());
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
}

/// send-message again, with the App's connections set to
/// `synchronous_commit=off` (through DATABASE_URL `options`): the handler's
/// cost without this machine's WAL fsyncs.
async fn send_without_fsync(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let s = ctx.s;
    let sep = if s.database_url.contains('?') {
        '&'
    } else {
        '?'
    };
    let db = format!(
        "{}{sep}options=-c%20synchronous_commit%3Doff",
        s.database_url
    );
    let app = in_process::app(&s.function_env(ctx.claude.url(), &db, &s.redis_url))?;
    for _ in 0..20 {
        send(&app, post("hello", None)).await?;
    }
    let set_a = &ctx.sessions.a;
    let n = s.warm_iters;
    let mut new = Samples::with_capacity(n);
    let mut existing = Samples::with_capacity(n);
    for i in 0..n {
        new.push(send(&app, post(&question(i), None)).await?.0.wall);
        let ev = post(&question(i), Some(&set_a[i % set_a.len()]));
        existing.push(send(&app, ev).await?.0.wall);
    }
    let (new, existing) = (new.summary(), existing.summary());
    r.latency(
        "warm.send_new_sync_commit_off",
        "send-message, new session, synchronous_commit=off",
        new,
        send_targets(&new),
    );
    r.latency(
        "warm.send_existing_sync_commit_off",
        "send-message, 20 prior messages, synchronous_commit=off",
        existing,
        send_targets(&existing),
    );
    Ok(())
}

/// The fake Claude's round trip as the Claude client makes it: keep-alive,
/// same headers, the last real request's body.
async fn fake_round_trip(claude: &FakeClaude, n: usize) -> Res<Samples> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .pool_idle_timeout(Duration::from_secs(50))
        .build()?;
    let url = format!("{}/v1/messages", claude.url());
    let last = claude.last().ok_or("the fake Claude has had no request")?;
    let body = serde_json::to_vec(&last.body)?;
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
