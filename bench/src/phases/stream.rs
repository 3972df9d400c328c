//! Streaming through the Runtime API: send-message as a process, asked for
//! `text/event-stream`, a fake Claude streaming its reply in timed pieces.
//! How long a token takes from the fake to the Runtime API (both clocks are
//! this process's), and the peak memory of a process streaming long replies.

use std::time::{Duration, Instant};
use testkit::claude::{FakeClaude, REPLY, Scenario, TokenTimes};
use testkit::events::question;

use crate::context::Ctx;
use crate::in_process::post;
use crate::report::{Report, Target};
use crate::runtime::{E2e, Process, e2e_with, lambda_response};
use crate::servers::Outcome;
use crate::stats::Samples;
use crate::streamed;
use crate::{Res, SEND};

/// The fake's stream: the first token after `FIRST_TOKEN`, the others `GAP`
/// apart, so that every delta is an event of its own at the Runtime API.
const CHUNKS: usize = 20;
const FIRST_TOKEN: Duration = Duration::from_millis(20);
const GAP: Duration = Duration::from_millis(5);
/// The memory rows' reply: 2,000 tokens (the fake counts four characters a
/// token), one a delta, sent as fast as the fake can write them.
const LONG_TOKENS: usize = 2000;
/// Events (after the warm-up's 20) of each memory process.
const LONG_EVENTS: usize = 30;

const EVENT_STREAM: &str = "text/event-stream";

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let n = ctx.s.stream_iters;
    let scenario = Scenario::text(REPLY)
        .chunks(CHUNKS)
        .first_token(FIRST_TOKEN)
        .gap(GAP);
    let claude = fake(ctx, scenario).await?;
    let env = with(&ctx.env, &[("ANTHROPIC_BASE_URL", claude.url())]);
    let (first, done) = latencies(ctx, &claude, &env, n).await?;
    r.section(&format!(
        "Streaming through the Runtime API (one send-message process, {n} events with Accept: text/event-stream; \
         fake Claude: first token after {} ms, {CHUNKS} deltas {} ms apart)",
        FIRST_TOKEN.as_millis(),
        GAP.as_millis()
    ));
    let first = first.summary();
    r.latency(
        "stream.first_token_to_delta",
        "first token (fake Claude) -> first `delta` byte at the Runtime API",
        first,
        vec![Target::p50_at_most(&first, 1.0)],
    );
    r.latency(
        "stream.last_token_to_done",
        "last token (fake Claude) -> `done` event at the Runtime API",
        done.summary(),
        vec![],
    );
    memory(ctx, r).await
}

/// A fake Claude answering `s` to everything, on the servers' runtime.
async fn fake(ctx: &Ctx<'_>, s: Scenario) -> Res<FakeClaude> {
    let start = FakeClaude::builder().keep(0).default_scenario(s).start();
    Ok(ctx.infra.spawn(start).await??)
}

/// `env` with these variables set (replaced or added).
fn with(env: &[(String, String)], set: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .iter()
        .filter(|(k, _)| set.iter().all(|(s, _)| *s != k.as_str()))
        .cloned()
        .collect();
    out.extend(set.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    out
}

/// Per measured event: first token -> first `delta` byte, last token -> `done`.
async fn latencies(
    ctx: &Ctx<'_>,
    claude: &FakeClaude,
    env: &[(String, String)],
    n: usize,
) -> Res<(Samples, Samples)> {
    let sessions = &ctx.sessions.c;
    let (mut first, mut done) = (Samples::with_capacity(n), Samples::with_capacity(n));
    let process = Process {
        name: SEND,
        env,
        log: "send-message-stream.log",
    };
    let event = |i: usize| {
        post(&question(i), Some(&sessions[i % sessions.len()]))
            .accept(EVENT_STREAM)
            .json()
    };
    let seen = |out: &Outcome, measured: bool| -> Res<()> {
        let s = check_stream(out, REPLY)?;
        let tokens = claude.last_tokens().ok_or("the fake streamed no token")?;
        let (to_delta, to_done) = s.after(&tokens)?;
        if measured {
            first.push(to_delta);
            done.push(to_done);
        }
        Ok(())
    };
    e2e_with(ctx, &process, n, event, seen).await?;
    Ok((first, done))
}

/// When the Runtime API had the first `delta` event's first byte, and the
/// whole `done` event; and how many deltas there were.
struct Stream {
    first_delta: Instant,
    done: Instant,
    deltas: usize,
}

impl Stream {
    /// First token -> first delta, last token -> done; an error when the
    /// fake's tokens cannot be this stream's.
    fn after(&self, t: &TokenTimes) -> Res<(Duration, Duration)> {
        let to_delta = self.first_delta.checked_duration_since(t.first);
        let to_done = self.done.checked_duration_since(t.last);
        match (to_delta, to_done) {
            (Some(a), Some(b)) if t.count == self.deltas => Ok((a, b)),
            _ => Err(format!(
                "the fake's {} tokens do not match this stream's {} deltas",
                t.count, self.deltas
            )
            .into()),
        }
    }
}

/// A 200 stream of `session`, deltas adding up to `reply`, and `done` with `reply`.
fn check_stream(out: &Outcome, reply: &str) -> Res<Stream> {
    let (status, events) = streamed::parse(&out.body)?;
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    let deltas: Vec<&streamed::Event> = events.iter().filter(|e| e.name == "delta").collect();
    let text: String = deltas
        .iter()
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    let (first, last) = (deltas.first(), events.last());
    let ok = status == 200
        && names.first() == Some(&"session")
        && text == reply
        && last.is_some_and(|e| e.name == "done" && e.data["reply"] == reply)
        && names.len() == deltas.len() + 2;
    match (first, last) {
        (Some(first), Some(done)) if ok => Ok(Stream {
            first_delta: out.arrival_of(first.start),
            done: out.arrival_of(done.end - 1),
            deltas: deltas.len(),
        }),
        _ => Err(format!(
            "send-message streamed {status} {names:?}: {}",
            String::from_utf8_lossy(&out.body)
        )
        .into()),
    }
}

/// Peak RSS of a process streaming a 2,000-token reply, against the
/// non-streaming row, and of one answering the same reply in JSON.
async fn memory(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let reply = long_reply();
    let claude = fake(ctx, Scenario::text(reply.clone()).chunks(LONG_TOKENS)).await?;
    let env = with(
        &ctx.env,
        &[
            ("ANTHROPIC_BASE_URL", claude.url()),
            ("CLAUDE_MAX_TOKENS", "4096"),
        ],
    );
    let streamed = long_replies(ctx, &env, &reply, true).await?;
    let json = long_replies(ctx, &env, &reply, false).await?;
    r.section(&format!(
        "Memory: VmHWM of send-message after {} replies of {LONG_TOKENS} tokens ({} characters, one delta a token, \
         sent as fast as the fake writes), CLAUDE_MAX_TOKENS=4096, new session each",
        LONG_EVENTS + 20,
        reply.chars().count()
    ));
    let mib = |e: &E2e| e.hwm_kib as f64 / 1024.0;
    let (s, j) = (mib(&streamed), mib(&json));
    let base = r.value("memory.send_message.peak_rss_mib");
    let targets = base.map_or_else(Vec::new, |b| {
        let text = format!("<= {:.2} MiB (JSON + 2)", b + 2.0);
        vec![Target::at_most(s, b + 2.0, &text)]
    });
    let detail = match base {
        Some(b) => format!("{:+.2} MiB against the JSON row's {b:.2}", s - b),
        None => "no JSON row to compare with (e2e not run)".to_owned(),
    };
    r.count(
        "memory.send_message_stream_2000.peak_rss_mib",
        "send-message streaming the 2,000-token reply: peak RSS (MiB)",
        s,
        &detail,
        targets,
    );
    r.count(
        "memory.send_message_json_2000.peak_rss_mib",
        "send-message, the same reply as JSON: peak RSS (MiB)",
        j,
        &format!("streaming {:+.2} MiB against it", s - j),
        vec![],
    );
    Ok(())
}

/// One process fed `LONG_EVENTS` (+ warm-up) questions in new sessions,
/// streamed or JSON, each answered with `reply`.
async fn long_replies(
    ctx: &Ctx<'_>,
    env: &[(String, String)],
    reply: &str,
    stream: bool,
) -> Res<E2e> {
    let log = format!(
        "send-message-long-{}.log",
        if stream { "sse" } else { "json" }
    );
    let process = Process {
        name: SEND,
        env,
        log: &log,
    };
    let event = |i: usize| {
        let e = post(&question(i), None);
        let e = if stream { e.accept(EVENT_STREAM) } else { e };
        e.json()
    };
    let seen = |out: &Outcome, _: bool| -> Res<()> {
        if stream {
            return check_stream(out, reply).map(|_| ());
        }
        match lambda_response(&out.body) {
            (200, body) if body["reply"] == reply => Ok(()),
            (status, _) => {
                Err(format!("send-message answered {status} without the long reply").into())
            }
        }
    };
    e2e_with(ctx, &process, LONG_EVENTS, event, seen).await
}

/// `LONG_TOKENS` tokens as the fake counts them (four characters a token)
/// of whole sentences.
fn long_reply() -> String {
    // 50 characters: 160 of them, less the last space, are 7,999.
    const SENTENCE: &str = "Normal delivery takes three to five working days. ";
    SENTENCE
        .repeat(LONG_TOKENS * 4 / SENTENCE.len())
        .trim_end()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_reply_is_two_thousand_tokens_of_whole_sentences() {
        let reply = long_reply();
        assert_eq!(reply.len().div_ceil(4), LONG_TOKENS);
        assert!(reply.ends_with("days."));
    }
}
