//! The invocation's deadline, for every wait below the handler.
//!
//! The handler scopes its work with [`within`]; the store and the cache
//! shorten each connect, statement and command timeout with [`bound`], so
//! no step after Claude (store the reply, cancel a statement, Redis) can
//! run past the point where the function must answer. Outside a scope
//! (tests of the adapters, the migrator) the configured timeouts apply.

use std::future::Future;
use std::time::{Duration, Instant};

/// Kept between the last I/O and the deadline, to render the answer.
pub const ANSWER_MARGIN: Duration = Duration::from_millis(250);

tokio::task_local! {
    static DEADLINE: Instant;
}

/// Runs `f` with every wait inside it bounded by `deadline` less the margin.
pub async fn within<F: Future>(deadline: Instant, f: F) -> F::Output {
    let end = deadline.checked_sub(ANSWER_MARGIN).unwrap_or(deadline);
    DEADLINE.scope(end, f).await
}

/// `timeout`, shortened to what is left before the scope's deadline.
pub fn bound(timeout: Duration) -> Duration {
    DEADLINE
        .try_with(|end| timeout.min(end.saturating_duration_since(Instant::now())))
        .unwrap_or(timeout)
}

/// The time an invocation has left, from its context; `None` when the
/// runtime gives no deadline (0, or already past).
pub fn remaining(ctx: &lambda_http::lambda_runtime::Context) -> Option<Duration> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_millis() as u64;
    let left = ctx.deadline.checked_sub(now_ms).filter(|ms| *ms > 0)?;
    Some(Duration::from_millis(left))
}

/// A scheduled invocation's deadline, from its context (`fallback` when
/// the runtime gives none, as in local runs).
pub fn of_invocation(ctx: &lambda_http::lambda_runtime::Context, fallback: Duration) -> Instant {
    Instant::now() + remaining(ctx).unwrap_or(fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_are_cut_to_the_deadline_inside_a_scope_only() {
        let t = Duration::from_secs(5);
        assert_eq!(bound(t), t);
        let deadline = Instant::now() + Duration::from_millis(1250);
        let inside = within(deadline, async { bound(t) }).await;
        assert!(inside <= Duration::from_millis(1000), "{inside:?}");
        assert!(inside > Duration::from_millis(900), "{inside:?}");
    }
}
