-- Deleting a session cascades to its idempotency records: without this
-- index each deleted session scanned the whole keys table, and a backlog of
-- idle sessions could never be deleted within a statement's time.
CREATE INDEX idempotency_keys_session_id_idx ON idempotency_keys (session_id);
