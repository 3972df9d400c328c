//! Warm requests end to end through the Runtime API: one long-lived process
//! per function, fed one event at a time; then its peak memory.

use testkit::events::question;

use crate::context::Ctx;
use crate::in_process::{get, post};
use crate::report::{Report, Target};
use crate::runtime::{E2e, e2e_run};
use crate::{HISTORY, Res, SEND};

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let n = ctx.s.e2e_iters;
    let (set_b, set_c) = (&ctx.sessions.b, &ctx.sessions.c);
    let send = e2e_run(ctx, SEND, n, |i| {
        post(&question(i), Some(&set_c[i % set_c.len()])).json()
    })
    .await?;
    let hist = e2e_run(ctx, HISTORY, n, |i| get(&set_b[i % set_b.len()]).json()).await?;
    r.section(&format!(
        "Warm, end to end through the Runtime API (one process, {n} events: /next handed out -> response posted)"
    ));
    r.latency(
        "e2e.send_existing",
        "send-message, session with 20+ prior messages",
        send.samples.summary(),
        vec![],
    );
    r.latency(
        "e2e.history_hit",
        "get-history, cache hit",
        hist.samples.summary(),
        vec![],
    );
    memory(r, n, &send, &hist);
    Ok(())
}

fn memory(r: &mut Report, n: usize, send: &E2e, hist: &E2e) {
    r.section(&format!(
        "Memory: VmHWM after {} requests through the Runtime API",
        n + 20
    ));
    for (name, e) in [(SEND, send), (HISTORY, hist)] {
        let mib = e.hwm_kib as f64 / 1024.0;
        r.count(
            &format!("memory.{}.peak_rss_mib", name.replace('-', "_")),
            &format!("{name}: peak RSS (MiB)"),
            mib,
            &format!("RSS at the end {:.1} MiB", e.rss_kib as f64 / 1024.0),
            vec![Target::at_most(mib, 30.0, "<= 30 MiB")],
        );
    }
}
