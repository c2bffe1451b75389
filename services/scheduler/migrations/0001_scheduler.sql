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

-- A release's identity and plan: written once.
CREATE TABLE releases (
    id              UUID PRIMARY KEY,
    service         TEXT NOT NULL,
    environment     TEXT NOT NULL,
    revision        BIGINT NOT NULL,
    artifact        TEXT NOT NULL,
    plan            JSONB NOT NULL,
    created_by      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    request_id      TEXT,
    group_id        UUID REFERENCES release_groups (id),
    group_position  INT,
    UNIQUE (service, environment, revision)
);
-- Listing, newest first (keyset pagination).
CREATE INDEX releases_created ON releases (created_at DESC, id DESC);
CREATE UNIQUE INDEX releases_request_id ON releases (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX releases_group ON releases (group_id, group_position) WHERE group_id IS NOT NULL;

-- A release's state: rewritten on every transition, so it carries as few indexes as possible
-- (each index costs an insertion per transition; none of its columns can be HOT-updated).
CREATE TABLE release_state (
    release_id    UUID PRIMARY KEY REFERENCES releases (id),
    phase         TEXT NOT NULL,
    settled       BOOLEAN NOT NULL,
    version       BIGINT NOT NULL,
    next_wake_at  TIMESTAMPTZ,
    updated_at    TIMESTAMPTZ NOT NULL,
    -- JSON text, opaque to SQL: PostgreSQL neither parses nor re-serialises it per transition.
    state         TEXT NOT NULL
) WITH (toast_tuple_target = 8160, fillfactor = 80);
-- Keep the state inline and uncompressed (a typical state is a few KiB): no TOAST writes and no
-- pglz on each transition.
ALTER TABLE release_state ALTER COLUMN state SET STORAGE MAIN;
-- Work queue: due releases, claimed with FOR UPDATE SKIP LOCKED.
CREATE INDEX release_state_due ON release_state (next_wake_at) WHERE next_wake_at IS NOT NULL;

-- The revision counter of a service in an environment; its row lock serialises release creation.
-- (What is stable is derived: the newest succeeded release.)
CREATE TABLE service_environments (
    service          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    last_revision    BIGINT NOT NULL,
    PRIMARY KEY (service, environment)
);

-- Every transition of every release, in order; unpublished rows are the outbox. Written on every
-- transition, so it carries two indexes only: the per-release order (primary key) and the
-- outbox's unpublished rows in insertion order. No foreign key: rows are only ever inserted in the
-- transaction that writes their release, and a key check per row would lock the release row again.
CREATE TABLE release_events (
    release_id    UUID NOT NULL,
    sequence      BIGINT NOT NULL,
    id            BIGSERIAL NOT NULL,
    event_id      UUID NOT NULL,
    type          TEXT NOT NULL,
    transition    TEXT NOT NULL,
    severity      TEXT NOT NULL,
    -- JSON text of the event data, opaque to SQL (the notifier owns the queryable event log).
    payload       TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    published_at  TIMESTAMPTZ,
    PRIMARY KEY (release_id, sequence)
);
CREATE INDEX release_events_outbox ON release_events (id) WHERE published_at IS NULL;

-- Who did what, when: one row per transition, written in the same transaction (no foreign key,
-- for the reason given above).
CREATE TABLE audit_log (
    release_id  UUID NOT NULL,
    sequence    BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    from_phase  TEXT,
    to_phase    TEXT,
    message     TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (release_id, sequence)
);
