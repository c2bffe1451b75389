-- Analysis runs: the resolved metric specs, each metric's counters and latest measurements
-- (JSON text, rewritten on every measurement), the run's phase, and when it is next due. A
-- replica measuring a run holds a lease on it; a lease that runs out (a crashed replica) lets
-- another replica resume the run from its stored measurements.
CREATE TABLE runs (
    id               UUID PRIMARY KEY,
    idempotency_key  TEXT UNIQUE,
    spec             TEXT NOT NULL,
    labels           JSONB NOT NULL DEFAULT '{}',
    args             JSONB NOT NULL DEFAULT '{}',
    state            TEXT NOT NULL,
    phase            TEXT NOT NULL,
    message          TEXT NOT NULL DEFAULT '',
    severity         TEXT,
    open_ended       BOOLEAN NOT NULL,
    terminate_reason TEXT,
    started_at       TIMESTAMPTZ NOT NULL,
    completed_at     TIMESTAMPTZ,
    next_due_at      TIMESTAMPTZ,
    lease_owner      UUID,
    lease_until      TIMESTAMPTZ,
    lease_secs       INT NOT NULL,
    version          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_due ON runs (next_due_at) WHERE next_due_at IS NOT NULL;
CREATE INDEX runs_newest ON runs (started_at DESC, id DESC);
CREATE INDEX runs_labels ON runs USING GIN (labels jsonb_path_ops);
