//! Round trips per request, counted on the wire by TCP proxies in front of
//! PostgreSQL and Redis: warm requests in this process, then whole cold
//! processes (connection setup included).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use support_chat::App;
use testkit::events::question;

use crate::context::Ctx;
use crate::in_process::{self, get, history, invalidate, post, send};
use crate::proxy::{self, Proto, Proxy, Snapshot};
use crate::report::{Report, Target};
use crate::runtime::cold_run;
use crate::urls::{url_addr, url_with_addr};
use crate::{HISTORY, Res, SEND};

/// Requests of each kind counted in process.
const K: u64 = 20;
/// Cold processes counted per function; averaged, since whether the first
/// request races the background warm-up connection is a matter of timing.
const COLD: u64 = 10;

struct Proxies {
    pg: Proxy,
    redis: Proxy,
    /// The functions' environment, pointing at the proxies.
    env: Vec<(String, String)>,
}

impl Proxies {
    fn start(ctx: &Ctx<'_>) -> Res<Proxies> {
        let s = ctx.s;
        let pg = Proxy::start(ctx.infra, Proto::Postgres, url_addr(&s.database_url, 5432)?);
        let redis = Proxy::start(ctx.infra, Proto::Redis, url_addr(&s.redis_url, 6379)?);
        let db_url = url_with_addr(&s.database_url, pg.addr)?;
        let redis_url = url_with_addr(&s.redis_url, redis.addr)?;
        let env = s.function_env(ctx.claude.url(), &db_url, &redis_url);
        Ok(Proxies { pg, redis, env })
    }

    fn snapshot(&self) -> Counts {
        Counts {
            pg: self.pg.snapshot(),
            redis: self.redis.snapshot(),
        }
    }

    /// What `f` sent through the proxies.
    async fn count(&self, f: impl Future<Output = Res<()>>) -> Res<Counts> {
        let before = self.snapshot();
        f.await?;
        Ok(self.snapshot().since(&before))
    }
}

#[derive(Default)]
struct Counts {
    pg: Snapshot,
    redis: Snapshot,
}

impl Counts {
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            pg: self.pg.since(&earlier.pg),
            redis: self.redis.since(&earlier.redis),
        }
    }

    fn plus(&self, other: &Counts) -> Counts {
        Counts {
            pg: self.pg.plus(&other.pg),
            redis: self.redis.plus(&other.redis),
        }
    }
}

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let px = Proxies::start(ctx)?;
    let app = in_process::app(&px.env)?;
    // Connections made, scripts known.
    for _ in 0..3 {
        let (_, sid) = send(&app, post("hi", None)).await?;
        send(&app, post("again", Some(&sid))).await?;
        history(&app, &ctx.sessions.b[0]).await?;
    }
    let rows = per_request(ctx, &app, &px).await?;
    r.section(
        "Round trips per request (counting TCP proxies; pg_stat_statements is not preloaded)",
    );
    for (key, label, counts) in rows {
        report_row(r, key, label, &counts);
    }
    drop(app);
    for name in [SEND, HISTORY] {
        cold_processes(ctx, &px, name, r).await?;
    }
    Ok(())
}

async fn per_request(
    ctx: &Ctx<'_>,
    app: &Arc<App>,
    px: &Proxies,
) -> Res<Vec<(&'static str, &'static str, Counts)>> {
    let (set_a, set_b) = (&ctx.sessions.a, &ctx.sessions.b);
    let existing = |i: usize| Some(set_a[i % set_a.len()].as_str());
    let new = px.count(async {
        for i in 0..K as usize {
            send(app, post(&question(i), None)).await?;
        }
        Ok(())
    });
    let mut rows = vec![("send_new", "send-message, new session", new.await?)];
    let continued = px.count(async {
        for i in 0..K as usize {
            send(app, post(&question(i), existing(i))).await?;
        }
        Ok(())
    });
    rows.push((
        "send_existing",
        "send-message, existing session",
        continued.await?,
    ));
    let keyed = px.count(async {
        for i in 0..K as usize {
            let key = uuid::Uuid::new_v4().to_string();
            send(app, post(&question(i), existing(i)).idempotency_key(&key)).await?;
        }
        Ok(())
    });
    let label = "send-message, existing session, Idempotency-Key";
    rows.push(("send_existing_idempotency_key", label, keyed.await?));
    for sid in set_b {
        history(app, sid).await?;
    }
    let hits = px.count(async {
        for i in 0..K as usize {
            history(app, &set_b[i % set_b.len()]).await?;
        }
        Ok(())
    });
    rows.push(("history_hit", "get-history, cache hit", hits.await?));
    let mut misses = Counts::default();
    for i in 0..K as usize {
        let sid = &set_b[i % set_b.len()];
        invalidate(&ctx.app, sid).await?; // not through the proxies
        misses = misses.plus(
            &px.count(async { history(app, sid).await.map(drop) })
                .await?,
        );
    }
    rows.push(("history_miss", "get-history, cache miss", misses));
    Ok(rows)
}

fn report_row(r: &mut Report, key: &str, label: &str, c: &Counts) {
    let pg_rt = c.pg.round_trips as f64 / K as f64;
    let redis_rt = c.redis.round_trips as f64 / K as f64;
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
    let statements = proxy::fmt_num(c.pg.pg_statements() as f64 / K as f64);
    r.count(
        &format!("round_trips.{key}.postgres"),
        &format!("{label}: PostgreSQL"),
        pg_rt,
        &format!("{statements} statement(s)"),
        pg_t,
    );
    let commands = proxy::fmt_num(c.redis.redis_commands() as f64 / K as f64);
    r.count(
        &format!("round_trips.{key}.redis"),
        &format!("{label}: Redis"),
        redis_rt,
        &format!("{commands} command(s): {}", c.redis.describe(K)),
        redis_t,
    );
}

/// Whole cold processes of `name` through the proxies: init and first request.
async fn cold_processes(ctx: &Ctx<'_>, px: &Proxies, name: &str, r: &mut Report) -> Res<()> {
    let mut total = Counts::default();
    let mut caches = BTreeMap::<String, u64>::new();
    for i in 0..COLD as usize {
        let event = if name == SEND {
            post(&question(i), None).json()
        } else {
            get(&ctx.sessions.b[0]).json()
        };
        let before = px.snapshot();
        let run = cold_run(ctx, name, &px.env, event).await?;
        // The killed process's last bytes may still be in flight.
        tokio::time::sleep(Duration::from_millis(30)).await;
        total = total.plus(&px.snapshot().since(&before));
        if let Some(c) = run.cache {
            *caches.entry(c).or_default() += 1;
        }
    }
    report_cold(r, name, &total, &caches);
    Ok(())
}

fn report_cold(r: &mut Report, name: &str, c: &Counts, caches: &BTreeMap<String, u64>) {
    let per = |v: u64| proxy::fmt_num(v as f64 / COLD as f64);
    let key = name.replace('-', "_");
    r.count(
        &format!("round_trips.cold_{key}.postgres"),
        &format!("cold {name} process, init + first request: PostgreSQL"),
        c.pg.round_trips as f64 / COLD as f64,
        &format!(
            "{} connection(s), {} statement(s); mean of {COLD} processes",
            per(c.pg.connections),
            per(c.pg.pg_statements())
        ),
        vec![],
    );
    let cache = caches
        .iter()
        .map(|(k, n)| format!("{k} x{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cache = if cache.is_empty() {
        cache
    } else {
        format!("; cache {cache}")
    };
    r.count(
        &format!("round_trips.cold_{key}.redis"),
        &format!("cold {name} process, init + first request: Redis"),
        c.redis.round_trips as f64 / COLD as f64,
        &format!(
            "{} connection(s): {}{cache}",
            per(c.redis.connections),
            c.redis.describe(COLD),
        ),
        vec![],
    );
}
