//! Cold starts of the release binaries: exec -> first `/next` (init), event
//! handed out -> response posted (first invocation), CPU time of each.

use std::collections::BTreeMap;
use testkit::events::question;

use crate::context::Ctx;
use crate::in_process::{get, history, invalidate, post};
use crate::report::{Report, Target};
use crate::runtime::{ColdRun, cold_run};
use crate::stats::Samples;
use crate::{HISTORY, Res, SEND};

struct Variant {
    key: &'static str,
    label: &'static str,
    name: &'static str,
    /// For get-history: the session's cache entry is removed before each run.
    miss: bool,
}

const VARIANTS: [Variant; 3] = [
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

/// The first runs of a new binary pay for page faults of their own: not counted.
const DISCARD: usize = 2;

#[derive(Default)]
struct Runs {
    init: Samples,
    first: Samples,
    total: Samples,
    init_cpu: Samples,
    first_cpu: Samples,
    /// get-history's cache outcomes ("hit", "miss") and how often.
    outcomes: BTreeMap<String, usize>,
}

impl Runs {
    fn push(&mut self, run: ColdRun) {
        self.init.push(run.init);
        self.first.push(run.first);
        self.total.push(run.total);
        if let (Some(a), Some(b)) = (run.init_cpu, run.first_cpu) {
            self.init_cpu.push(a);
            self.first_cpu.push(b);
        }
        if let Some(c) = run.cache {
            *self.outcomes.entry(c).or_default() += 1;
        }
    }
}

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    r.section(&format!(
        "Cold start: exec -> first /next (init); event handed out -> response (first invocation); {} runs each, page cache warm",
        ctx.s.cold_runs
    ));
    history(&ctx.app, &ctx.sessions.b[0]).await?; // cached
    for v in &VARIANTS {
        let runs = variant(ctx, v).await?;
        report(r, v, &runs);
    }
    Ok(())
}

async fn variant(ctx: &Ctx<'_>, v: &Variant) -> Res<Runs> {
    let session = &ctx.sessions.b[0];
    let mut runs = Runs::default();
    for i in 0..ctx.s.cold_runs + DISCARD {
        let event = if v.name == SEND {
            post(&question(i), None).json()
        } else {
            if v.miss {
                invalidate(&ctx.app, session).await?;
            } else {
                history(&ctx.app, session).await?;
            }
            get(session).json()
        };
        let run = cold_run(ctx, v.name, &ctx.env, event).await?;
        if i >= DISCARD {
            runs.push(run);
        }
    }
    Ok(runs)
}

fn report(r: &mut Report, v: &Variant, runs: &Runs) {
    let (init, total) = (runs.init.summary(), runs.total.summary());
    let cache_note = if runs.outcomes.is_empty() {
        String::new()
    } else {
        let seen: Vec<String> = runs
            .outcomes
            .iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect();
        format!(" ({})", seen.join(", "))
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
        runs.init_cpu.summary(),
        vec![],
    );
    r.latency(
        &format!("cold.{}.first_invocation", v.key),
        &format!("{}: first invocation{cache_note}", v.label),
        runs.first.summary(),
        vec![],
    );
    r.latency(
        &format!("cold.{}.first_invocation_cpu", v.key),
        &format!("{}: first invocation, CPU time", v.label),
        runs.first_cpu.summary(),
        vec![],
    );
    let total_targets = if v.name == HISTORY {
        vec![Target::p50_at_most(&total, 40.0)]
    } else {
        vec![]
    };
    r.latency(
        &format!("cold.{}.total", v.key),
        &format!("{}: total", v.label),
        total,
        total_targets,
    );
}
