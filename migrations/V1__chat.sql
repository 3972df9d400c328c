-- Conversations and their messages.
CREATE TABLE chat_sessions (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The retention cleanup deletes by age of last activity.
CREATE INDEX chat_sessions_updated_at_idx ON chat_sessions (updated_at);

CREATE TABLE chat_messages (
    -- The total order of a session's messages: strictly increasing, so two
    -- messages stored in the same millisecond still have one order.
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,
    session_id   uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    sender       text NOT NULL CHECK (sender IN ('user', 'ai')),
    text         text NOT NULL CHECK (text <> ''),
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- AI replies only: where the text came from and what it cost.
    source              text CHECK (source IN ('claude', 'fallback')),
    model               text,
    fallback_reason     text,
    input_tokens        integer,
    output_tokens       integer,
    cache_read_tokens   integer,
    cache_write_tokens  integer,
    attempts            integer,
    latency_ms          integer,
    CHECK ((sender = 'ai') = (source IS NOT NULL))
);
CREATE INDEX chat_messages_session_seq_idx ON chat_messages (session_id, seq);

-- Idempotency-Key records for POST /api/chat.
CREATE TABLE idempotency_keys (
    key              text PRIMARY KEY,
    -- SHA-256 of the parsed request (message and sessionId).
    fingerprint      bytea NOT NULL,
    -- While in the future, a request holding the key is in flight.
    locked_until     timestamptz,
    -- Set once the user's message is stored, so a retry after a failure resumes
    -- instead of storing the message twice.
    session_id       uuid REFERENCES chat_sessions (id) ON DELETE CASCADE,
    user_message_id  uuid,
    -- Set when the request completed: the response to replay.
    reply            text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
