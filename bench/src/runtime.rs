//! The release binaries run as Lambda runs them: a process of their own
//! whose Runtime API is ours, so exec, `/next`, the handed-out event and the
//! posted response can be timed.

use serde_json::Value;
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use testkit::claude::REPLY;

use crate::context::Ctx;
use crate::sampling::{cpu_time, proc_kib};
use crate::servers::{Outcome, OutcomeKind, RuntimeApi};
use crate::settings::lambda_env;
use crate::stats::Samples;
use crate::{HISTORY, Res, SEND};

const WAIT: Duration = Duration::from_secs(10);

fn spawn_function(
    ctx: &Ctx,
    name: &str,
    api: &RuntimeApi,
    env: &[(String, String)],
    log: &Path,
) -> Res<Child> {
    let log = File::create(log)?;
    let bin = ctx.s.bin_dir.join(name);
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
        .envs(lambda_env(name, api.addr))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&ctx.s.bin_dir)
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

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

pub struct ColdRun {
    pub init: Duration,
    pub first: Duration,
    pub total: Duration,
    /// CPU time of the process (all its threads) during init and during the first invocation.
    pub init_cpu: Option<Duration>,
    pub first_cpu: Option<Duration>,
    /// For get-history: what the first request's log line says ("hit"/"miss").
    pub cache: Option<String>,
}

/// What one cold process did: when it first asked for an event, its
/// response, and its CPU time when idle before and after the invocation.
struct FirstInvocation {
    next: Instant,
    out: Outcome,
    init_cpu: Option<Duration>,
    all_cpu: Option<Duration>,
}

/// exec -> first `/next` (init) -> first response (first invocation); then kill.
///
/// The event is handed out when the first `/next` arrives (as when a cold
/// start is caused by an invocation), after the process's CPU time is read:
/// it is idle then, waiting for the answer. First invocation = event handed
/// out -> response posted; total = init + first invocation.
pub async fn cold_run(
    ctx: &Ctx<'_>,
    name: &str,
    env: &[(String, String)],
    event: String,
) -> Res<ColdRun> {
    let mut api = RuntimeApi::start(ctx.infra);
    let id = uuid::Uuid::new_v4().to_string();
    let log = ctx.s.work_dir.join(format!("{name}-cold.log"));
    let t0 = Instant::now();
    let mut child = spawn_function(ctx, name, &api, env, &log)?;
    let seen = first_invocation(&mut api, child.id(), &id, event).await;
    stop(&mut child);
    let seen = seen.map_err(|e| format!("{name}: {e}; log tail:\n{}", log_tail(&log)))?;
    let out = &seen.out;
    if out.kind != OutcomeKind::Response || out.id != id {
        return Err(format!(
            "{name}: {:?} for invocation {:?} (expected {id}): {}; log tail:\n{}",
            out.kind,
            out.id,
            String::from_utf8_lossy(&out.body),
            log_tail(&log)
        )
        .into());
    }
    check_lambda_response(name, &out.body)?;
    let init = seen.next - t0;
    let handed_out = out
        .handed_out
        .ok_or("response to an invocation never handed out")?;
    let first = out.at - handed_out;
    Ok(ColdRun {
        init,
        first,
        total: init + first,
        init_cpu: seen.init_cpu,
        first_cpu: seen
            .init_cpu
            .zip(seen.all_cpu)
            .map(|(a, b)| b.saturating_sub(a)),
        cache: (name == HISTORY).then(|| cache_outcome(&log)),
    })
}

async fn first_invocation(
    api: &mut RuntimeApi,
    pid: u32,
    id: &str,
    event: String,
) -> Res<FirstInvocation> {
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
    api.push(id, event);
    let out = api.outcome(WAIT).await.ok_or("no response within 10 s")?;
    // Idle again once it asks for the next event.
    let idle = api.next_call(Duration::from_secs(2)).await.is_some();
    let all_cpu = cpu_time(pid).filter(|_| idle);
    Ok(FirstInvocation {
        next,
        out,
        init_cpu,
        all_cpu,
    })
}

/// What get-history's log line says about its first request.
fn cache_outcome(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    if text.contains(r#""cache":"hit""#) {
        "hit".to_owned()
    } else if text.contains(r#""cache":"miss""#) {
        "miss".to_owned()
    } else {
        "?".to_owned()
    }
}

/// The status and JSON body of the API Gateway response a function posted:
/// buffered (`{"statusCode":..,"body":"..."}`) or streamed (a JSON prelude,
/// eight NUL bytes, then the body).
pub fn lambda_response(posted: &[u8]) -> (u64, Value) {
    const DELIMITER: &[u8] = &[0; 8];
    if let Some(i) = posted.windows(8).position(|w| w == DELIMITER) {
        let prelude: Value = serde_json::from_slice(&posted[..i]).unwrap_or(Value::Null);
        let body = serde_json::from_slice(&posted[i + 8..]).unwrap_or(Value::Null);
        return (prelude["statusCode"].as_u64().unwrap_or(0), body);
    }
    let v: Value = serde_json::from_slice(posted).unwrap_or(Value::Null);
    let body = v["body"]
        .as_str()
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (v["statusCode"].as_u64().unwrap_or(0), body)
}

/// The response the function posted is a 200, and for send-message the fake Claude's reply.
fn check_lambda_response(name: &str, posted: &[u8]) -> Res<()> {
    let (status, body) = lambda_response(posted);
    if status != 200 || (name == SEND && body["reply"] != REPLY) {
        return Err(format!(
            "{name} answered {status}: {}",
            String::from_utf8_lossy(posted)
        )
        .into());
    }
    Ok(())
}

pub struct E2e {
    pub samples: Samples,
    pub hwm_kib: u64,
    pub rss_kib: u64,
}

/// One long-lived process fed `warmup + n` events, one at a time, each
/// answered with a 200 and (send-message) the fake Claude's reply in JSON.
pub async fn e2e_run(
    ctx: &Ctx<'_>,
    name: &str,
    n: usize,
    event: impl FnMut(usize) -> String,
) -> Res<E2e> {
    let check = |out: &Outcome, _: bool| check_lambda_response(name, &out.body);
    let process = Process {
        name,
        env: &ctx.env,
        log: &format!("{name}-e2e.log"),
    };
    e2e_with(ctx, &process, n, event, check).await
}

/// A long-lived function process: which binary, its environment, its log
/// file (in the bench's work directory).
pub struct Process<'a> {
    pub name: &'a str,
    pub env: &'a [(String, String)],
    pub log: &'a str,
}

/// [`e2e_run`] for any process, `seen` called with every response and
/// whether it is measured (not warm-up).
pub async fn e2e_with(
    ctx: &Ctx<'_>,
    p: &Process<'_>,
    n: usize,
    event: impl FnMut(usize) -> String,
    seen: impl FnMut(&Outcome, bool) -> Res<()>,
) -> Res<E2e> {
    let name = p.name;
    let mut api = RuntimeApi::start(ctx.infra);
    let log = ctx.s.work_dir.join(p.log);
    let mut child = spawn_function(ctx, name, &api, p.env, &log)?;
    let result = feed(&mut api, child.id(), n, event, seen).await;
    stop(&mut child);
    result.map_err(|e| format!("{name} (end to end): {e}; log tail:\n{}", log_tail(&log)).into())
}

async fn feed(
    api: &mut RuntimeApi,
    pid: u32,
    n: usize,
    mut event: impl FnMut(usize) -> String,
    mut seen: impl FnMut(&Outcome, bool) -> Res<()>,
) -> Res<E2e> {
    const WARMUP: usize = 20;
    api.next_call(WAIT).await.ok_or("no /next within 10 s")?;
    let mut samples = Samples::with_capacity(n);
    for i in 0..WARMUP + n {
        let id = uuid::Uuid::new_v4().to_string();
        api.push(&id, event(i));
        let out = api.outcome(WAIT).await.ok_or("no response within 10 s")?;
        if out.kind != OutcomeKind::Response || out.id != id {
            return Err(format!("{:?}: {}", out.kind, String::from_utf8_lossy(&out.body)).into());
        }
        seen(&out, i >= WARMUP)?;
        let handed = out
            .handed_out
            .ok_or("response to an invocation never handed out")?;
        if i >= WARMUP {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffered_and_streamed_responses_are_both_read() {
        let buffered = br#"{"statusCode":200,"body":"{\"reply\":\"hi\"}"}"#;
        assert_eq!(
            lambda_response(buffered),
            (200, serde_json::json!({ "reply": "hi" }))
        );
        let mut streamed = br#"{"statusCode":201,"headers":{}}"#.to_vec();
        streamed.extend_from_slice(&[0; 8]);
        streamed.extend_from_slice(br#"{"reply":"hi"}"#);
        assert_eq!(
            lambda_response(&streamed),
            (201, serde_json::json!({ "reply": "hi" }))
        );
    }
}
