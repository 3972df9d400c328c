-- Human handoff: a conversation waits for a person once a reply handed it
-- over; each handoff is an event in an outbox, committed with the reply and
-- delivered to the store's webhook at least once.
ALTER TABLE chat_sessions
    ADD COLUMN status text NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'waiting_for_human')),
    -- How many times this conversation was handed over: one event each.
    ADD COLUMN handoffs integer NOT NULL DEFAULT 0;

ALTER TABLE chat_messages ADD COLUMN handoff_reason text;

CREATE TABLE handoff_events (
    id               uuid PRIMARY KEY,
    session_id       uuid NOT NULL REFERENCES chat_sessions (id) ON DELETE CASCADE,
    -- The session's handoff count when it was raised: a second concurrent
    -- handoff of the same conversation cannot raise a second event.
    generation       integer NOT NULL,
    -- The AI message that handed over; the payload's messages end with it.
    message_id       uuid NOT NULL,
    reason           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0,
    -- While in the future, not due (backoff), or claimed by a sender.
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    -- The last failure, for operators: an HTTP status or a word; never a URL.
    last_error       text,
    UNIQUE (session_id, generation)
);
CREATE INDEX handoff_events_due_idx ON handoff_events (next_attempt_at)
    WHERE delivered_at IS NULL;

-- Which attempt holds an Idempotency-Key: only that one may release or
-- complete it (a request whose lease ran out cannot free a successor's).
ALTER TABLE idempotency_keys
    ADD COLUMN holder uuid,
    -- The completed response, whole, for replays: the reply's id and handoff.
    ADD COLUMN reply_message_id uuid,
    ADD COLUMN reply_handoff boolean NOT NULL DEFAULT false;

-- Bumped by every write to the conversation. A cached history page records
-- the version it was read at and is served only while it is still current,
-- so what Redis does (refuse writes, turn read-only, lose keys, go away)
-- can never make a reader see an acknowledged write undone.
ALTER TABLE chat_sessions ADD COLUMN version bigint NOT NULL DEFAULT 0;
