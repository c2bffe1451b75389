-- The event log: one row per event, in the order it was appended. `position` is the cursor; it
-- is handed out under one lock with no gaps, so "after position N" is exact.
CREATE TABLE events (
    position         BIGINT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    release_id       TEXT NOT NULL,
    sequence         BIGINT NOT NULL,
    service          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    type             TEXT NOT NULL,
    severity         SMALLINT NOT NULL,
    escalation_level TEXT,
    time             TIMESTAMPTZ NOT NULL,
    received_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    body             BYTEA NOT NULL
);
CREATE INDEX events_by_release ON events (release_id, position);

-- What the notifier knows of each release (from its latest event), and the escalation of the
-- condition it is in.
CREATE TABLE releases (
    release_id       TEXT PRIMARY KEY,
    service          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    phase            TEXT NOT NULL,
    last_event_at    TIMESTAMPTZ NOT NULL,
    last_body        BYTEA NOT NULL,
    condition        TEXT,
    condition_since  TIMESTAMPTZ,
    levels_notified  INT NOT NULL DEFAULT 0,
    acknowledged_by  TEXT,
    acknowledged_at  TIMESTAMPTZ,
    ack_comment      TEXT NOT NULL DEFAULT ''
);
-- The escalator looks only at releases that may need a person.
CREATE INDEX releases_watched ON releases (last_event_at)
    WHERE acknowledged_at IS NULL AND phase NOT IN ('SUCCEEDED', 'SUPERSEDED');

CREATE TABLE webhooks (
    id             UUID PRIMARY KEY,
    url            TEXT NOT NULL,
    format         TEXT NOT NULL,
    filter         JSONB NOT NULL,
    secret         TEXT NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    cursor         BIGINT NOT NULL,
    delivered      BIGINT NOT NULL DEFAULT 0,
    dead_lettered  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE deliveries (
    id             UUID PRIMARY KEY,
    webhook_id     UUID NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id       TEXT NOT NULL,
    position       BIGINT NOT NULL,
    attempt        INT NOT NULL,
    status_code    INT NOT NULL,
    message        TEXT NOT NULL,
    attempted_at   TIMESTAMPTZ NOT NULL,
    delivered      BOOLEAN NOT NULL,
    dead_lettered  BOOLEAN NOT NULL
);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, attempted_at DESC, id DESC);
CREATE INDEX deliveries_by_event ON deliveries (webhook_id, position);
