-- Migration runs: the request, where the run is (phase, what it changed so far, a
-- non-transactional migration under way), and which replica carries it out (a lease it renews;
-- when it runs out, another replica takes the run over).
CREATE TABLE runs (
    id              UUID PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    database        TEXT NOT NULL,
    request         TEXT NOT NULL,
    phase           TEXT NOT NULL,
    message         TEXT NOT NULL DEFAULT '',
    version_before  TEXT,
    version_after   TEXT,
    changes         TEXT NOT NULL DEFAULT '[]',
    warnings        TEXT NOT NULL DEFAULT '[]',
    in_progress     TEXT,
    interrupted     BOOLEAN NOT NULL DEFAULT false,
    started_at      TIMESTAMPTZ NOT NULL,
    finished_at     TIMESTAMPTZ,
    lease_owner     UUID,
    lease_until     TIMESTAMPTZ,
    version         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_unfinished ON runs (started_at) WHERE finished_at IS NULL;
CREATE INDEX runs_newest ON runs (started_at DESC, id DESC);
CREATE INDEX runs_by_database ON runs (database, started_at DESC, id DESC);
