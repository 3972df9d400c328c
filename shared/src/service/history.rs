//! `get_history`: a page of the conversation, the default page from the
//! cache when it has it (read-your-writes: see `cache`), else PostgreSQL.

use tracing::{info, warn};

use super::App;
use crate::cache::{Lookup, Subject};
use crate::domain::{History, HistoryQuery, SessionId};
use crate::error::{Error, Result};

/// How a history read was served, for the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    /// No Redis configured, or a page the cache does not hold.
    Off,
    /// Redis failed; served from PostgreSQL.
    Error,
}

impl CacheOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Off => "off",
            CacheOutcome::Error => "error",
        }
    }
}

impl App {
    /// The page as the JSON body of `GET /history`. Only the default page
    /// (the newest 500 messages) is cached: other pages are index range
    /// reads, each bounded by `limit`.
    pub async fn get_history(
        &self,
        sid: SessionId,
        query: HistoryQuery,
        client_ip: Option<&str>,
    ) -> Result<(Vec<u8>, CacheOutcome)> {
        self.check_history_limit(client_ip).await?;
        let mut outcome = CacheOutcome::Off;
        let mut token = None;
        if let (Some(cache), true) = (&self.cache, query.is_default()) {
            match cache.lookup(sid).await {
                Ok(Lookup::Hit(body)) => return Ok((body, CacheOutcome::Hit)),
                Ok(Lookup::Miss(t)) => {
                    outcome = CacheOutcome::Miss;
                    token = Some(t);
                }
                Err(e) => {
                    outcome = CacheOutcome::Error;
                    warn!(error = %e, "cache lookup failed; reading the database");
                }
            }
        }
        let page = self
            .store
            .history(sid, query.limit, query.before)
            .await?
            .ok_or(Error::SessionNotFound)?;
        let body = serde_json::to_vec(&History {
            session_id: sid,
            messages: page.messages,
            status: page.status,
            has_more: page.has_more,
        })
        .map_err(Error::internal)?;
        if let (Some(cache), Some(token)) = (&self.cache, token) {
            match cache.fill(sid, &token, &body).await {
                Ok(true) => {}
                Ok(false) => info!("cache fill skipped: the session changed meanwhile"),
                Err(e) => warn!(error = %e, "cache fill failed"),
            }
        }
        Ok((body, outcome))
    }

    /// `RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE`; fails open when Redis does.
    async fn check_history_limit(&self, client_ip: Option<&str>) -> Result<()> {
        let (Some(cache), Some(ip)) = (&self.cache, client_ip) else {
            return Ok(());
        };
        let limits = self.config.limits;
        let charges = [(Subject::HistoryIp(ip), limits.history_per_ip)];
        match cache.check_limits(&charges, limits.window, None).await {
            Ok(None) => Ok(()),
            Ok(Some(retry_after)) => Err(Error::RateLimited { retry_after }),
            Err(e) => {
                warn!(error = %e, "history rate limit check failed; allowing the request (fail open)");
                Ok(())
            }
        }
    }
}
