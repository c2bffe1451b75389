-- Scheduler schema: delivery config versions, releases (state as JSONB beside indexed columns),
-- the per-release event log that doubles as the outbox, the audit log, and release groups.

CREATE TABLE config_versions (
    version     BIGINT PRIMARY KEY,
    yaml        TEXT NOT NULL,
    document    JSONB NOT NULL,
    applied_by  TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE release_groups (
    id          UUID PRIMARY KEY,
    environment TEXT NOT NULL,
    kind        TEXT NOT NULL,
    created_by  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE releases (
    id              UUID PRIMARY KEY,
    service         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    artifact        TEXT NOT NULL,
    phase           TEXT NOT NULL,
    settled         BOOLEAN NOT NULL DEFAULT false,
    state           JSONB NOT NULL,
    version         BIGINT NOT NULL,
    next_wake_at    TIMESTAMPTZ,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    request_id      TEXT,
    group_id        UUID REFERENCES release_groups (id),
    group_position  INT,
    UNIQUE (service, environment, revision)
);

-- Work queue: due releases, claimed with FOR UPDATE SKIP LOCKED.
CREATE INDEX releases_due ON releases (next_wake_at) WHERE next_wake_at IS NOT NULL;
-- Listing, newest first (keyset pagination).
CREATE INDEX releases_created ON releases (created_at DESC, id DESC);
CREATE INDEX releases_service_env ON releases (service, environment, revision DESC);
CREATE UNIQUE INDEX releases_request_id ON releases (request_id) WHERE request_id IS NOT NULL;
-- At most one running release per service and environment.
CREATE UNIQUE INDEX releases_one_active ON releases (service, environment)
    WHERE phase IN ('PROGRESSING', 'PAUSED', 'AWAITING_APPROVAL');
CREATE INDEX releases_group ON releases (group_id, group_position) WHERE group_id IS NOT NULL;

-- What is stable where, and the revision counter.
CREATE TABLE service_environments (
    service          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    last_revision    BIGINT NOT NULL,
    stable_revision  BIGINT,
    stable_artifact  TEXT,
    stable_release   UUID,
    PRIMARY KEY (service, environment)
);

-- Every transition of every release, in order; unpublished rows are the outbox.
CREATE TABLE release_events (
    id            BIGSERIAL PRIMARY KEY,
    event_id      UUID NOT NULL UNIQUE,
    release_id    UUID NOT NULL REFERENCES releases (id),
    sequence      BIGINT NOT NULL,
    type          TEXT NOT NULL,
    transition    TEXT NOT NULL,
    severity      TEXT NOT NULL,
    payload       JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    published_at  TIMESTAMPTZ,
    UNIQUE (release_id, sequence)
);
CREATE INDEX release_events_outbox ON release_events (id) WHERE published_at IS NULL;

-- Who did what, when; written in the same transaction as the transition.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    release_id  UUID REFERENCES releases (id),
    sequence    BIGINT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    from_phase  TEXT,
    to_phase    TEXT,
    message     TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX audit_log_release ON audit_log (release_id, id);
