//! `Idempotency-Key` records. The key stored is the service's scoped digest
//! of the client's key (see `service::idempotency`), never the raw header.
//! Each claim is made by a *holder* (a fresh id per attempt): only the
//! holder can release or complete it, so an attempt whose lease ran out
//! cannot free or overwrite the claim of the attempt that took over.

use std::time::Duration;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::Store;
use crate::domain::SessionId;
use crate::error::Result;

/// The state of an `Idempotency-Key` after trying to claim it.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// New key: this request owns it.
    Fresh,
    /// An earlier attempt stored the user's message and then failed; this
    /// request owns the key now and must finish that exchange.
    Resume { session_id: SessionId },
    /// Completed earlier: replay this.
    Replay {
        session_id: SessionId,
        reply: String,
        message_id: Option<Uuid>,
        handoff: bool,
    },
    /// Another request holds the key.
    InProgress,
    /// The key was used with a different request.
    Mismatch,
}

// Claim a key: insert it, or take over an abandoned claim of the same request
// (lease expired, not completed). When the claim fails, the second branch
// reports the existing row as it was when the statement started; a row
// inserted concurrently by another request is not visible there, and no row
// at all means exactly that: someone else holds the key.
const CLAIM_KEY: &str = "
WITH claimed AS (
    INSERT INTO idempotency_keys AS k (key, fingerprint, locked_until, holder)
    VALUES ($1, $2, now() + make_interval(secs => $3), $4)
    ON CONFLICT (key) DO UPDATE SET locked_until = EXCLUDED.locked_until, holder = EXCLUDED.holder
    WHERE k.fingerprint = EXCLUDED.fingerprint AND k.reply IS NULL
      AND (k.locked_until IS NULL OR k.locked_until < now())
    RETURNING k.session_id
)
SELECT true, c.session_id, NULL::text, true, NULL::uuid, false FROM claimed c
UNION ALL
SELECT false, k.session_id, k.reply, k.fingerprint = $2, k.reply_message_id, k.reply_handoff
FROM idempotency_keys k WHERE k.key = $1 AND NOT EXISTS (SELECT 1 FROM claimed)";

const RELEASE_KEY: &str = "UPDATE idempotency_keys SET locked_until = NULL
WHERE key = $1 AND holder = $2 AND reply IS NULL";

impl Store {
    /// Claims `key` for `lease` on behalf of `holder`.
    pub async fn claim_key(
        &self,
        key: &str,
        fingerprint: &[u8],
        lease: Duration,
        holder: Uuid,
    ) -> Result<Claim> {
        let secs = lease.as_secs_f64();
        let rows = self
            .query(
                CLAIM_KEY,
                &[
                    (&key, Type::TEXT),
                    (&fingerprint, Type::BYTEA),
                    (&secs, Type::FLOAT8),
                    (&holder, Type::UUID),
                ],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Claim::InProgress);
        };
        let claimed: bool = row.try_get(0)?;
        let session_id: Option<SessionId> = row.try_get::<_, Option<Uuid>>(1)?.map(SessionId::from);
        let reply: Option<String> = row.try_get(2)?;
        let same_request: bool = row.try_get(3)?;
        Ok(match (claimed, session_id, reply) {
            (true, None, _) => Claim::Fresh,
            (true, Some(session_id), _) => Claim::Resume { session_id },
            (false, ..) if !same_request => Claim::Mismatch,
            (false, Some(session_id), Some(reply)) => Claim::Replay {
                session_id,
                reply,
                message_id: row.try_get(4)?,
                handoff: row.try_get(5)?,
            },
            // Not completed, not claimable: held by a live request.
            (false, ..) => Claim::InProgress,
        })
    }

    /// Gives a claimed key back after a failure, so a retry can resume at
    /// once; a no-op unless `holder` still holds it.
    pub async fn release_key(&self, key: &str, holder: Uuid) -> Result<()> {
        self.query(RELEASE_KEY, &[(&key, Type::TEXT), (&holder, Type::UUID)])
            .await
            .map(drop)
    }
}
