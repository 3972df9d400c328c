//! `get_history`: a page of the conversation, the default page from the
//! cache when it has it (read-your-writes: see `cache`), else PostgreSQL.

use tracing::warn;

use super::App;
use crate::cache::Subject;
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
        let cache = self.cache.as_ref().filter(|_| query.is_default());
        let Some(cache) = cache else {
            let (body, _) = self.read_page(sid, query).await?;
            return Ok((body, CacheOutcome::Off));
        };
        // The entry and the current version at once: the version decides.
        let (cached, version) = tokio::join!(cache.lookup(sid), self.store.session_version(sid));
        let version = version?.ok_or(Error::SessionNotFound)?;
        let outcome = match cached {
            Ok(Some(c)) if c.version == version => return Ok((c.body, CacheOutcome::Hit)),
            Ok(_) => CacheOutcome::Miss,
            Err(e) => {
                warn!(error = %e, "cache lookup failed; reading the database");
                CacheOutcome::Error
            }
        };
        let (body, read_at) = self.read_page(sid, query).await?;
        if outcome == CacheOutcome::Miss {
            if let Err(e) = cache.fill(sid, read_at, &body).await {
                warn!(error = %e, "cache fill failed");
            }
        }
        Ok((body, outcome))
    }

    /// A page from PostgreSQL, serialised, with the version it was read at.
    async fn read_page(&self, sid: SessionId, query: HistoryQuery) -> Result<(Vec<u8>, i64)> {
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
        Ok((body, page.version))
    }

    /// `RATE_LIMIT_HISTORY_PER_IP_PER_MINUTE`; fails open when Redis does.
    async fn check_history_limit(&self, client_ip: Option<&str>) -> Result<()> {
        let Some(ip) = client_ip else {
            return Ok(());
        };
        let charges = [(Subject::HistoryIp(ip), self.config.limits.history_per_ip)];
        self.charge(&charges).await
    }
}
