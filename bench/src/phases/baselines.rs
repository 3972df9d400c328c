//! What one round trip to each dependency costs on this machine, so the
//! handler's numbers can be read: a send-message commits twice.

use std::time::Instant;
use tokio_postgres::types::Type;

use crate::Res;
use crate::context::Ctx;
use crate::report::Report;
use crate::stats::Samples;

/// Round trips before these are not counted (connections, caches, plans).
const SKIP: usize = 10;

pub async fn run(ctx: &Ctx<'_>, r: &mut Report) -> Res<()> {
    let n = ctx.s.warm_iters;
    let (select, commit, commit_async) = postgres(&ctx.s.database_url, n).await?;
    let ping = redis(ctx, n).await?;
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

/// `SELECT 1`, a committed one-row insert, and the same with `synchronous_commit=off`.
async fn postgres(url: &str, n: usize) -> Res<(Samples, Samples, Samples)> {
    let (pg, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let conn = tokio::spawn(conn);
    pg.batch_execute("CREATE TABLE IF NOT EXISTS bench_commit (x int)")
        .await?;
    let insert = async |x: i32| {
        let t = Instant::now();
        pg.query_typed("INSERT INTO bench_commit VALUES ($1)", &[(&x, Type::INT4)])
            .await
            .map(|_| t.elapsed())
    };
    let mut select = Samples::with_capacity(n);
    let mut commit = Samples::with_capacity(n);
    let mut commit_async = Samples::with_capacity(n);
    for i in 0..n + SKIP {
        let t = Instant::now();
        pg.query_typed("SELECT 1", &[]).await?;
        let d = t.elapsed();
        let c = insert(i as i32).await?;
        if i >= SKIP {
            select.push(d);
            commit.push(c);
        }
    }
    pg.batch_execute("SET synchronous_commit = off").await?;
    for i in 0..n + SKIP {
        let c = insert(i as i32).await?;
        if i >= SKIP {
            commit_async.push(c);
        }
    }
    pg.batch_execute("DROP TABLE bench_commit").await?;
    drop(pg);
    let _ = conn.await;
    Ok((select, commit, commit_async))
}

async fn redis(ctx: &Ctx<'_>, n: usize) -> Res<Samples> {
    let cache = ctx.app.cache().ok_or("no cache configured")?;
    let mut ping = Samples::with_capacity(n);
    for i in 0..n + SKIP {
        let t = Instant::now();
        cache.ping().await.map_err(|e| format!("redis ping: {e}"))?;
        if i >= SKIP {
            ping.push(t.elapsed());
        }
    }
    Ok(ping)
}
