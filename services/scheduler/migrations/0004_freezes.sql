-- Ad-hoc freezes: no new release may start in the environment from starts_at until ends_at (or
-- until someone ends it). Rows are kept after they end, as the record of who froze what and why.
CREATE TABLE freezes (
  id UUID PRIMARY KEY,
  environment TEXT NOT NULL,
  starts_at TIMESTAMPTZ NOT NULL,
  ends_at TIMESTAMPTZ NOT NULL CHECK (ends_at > starts_at),
  reason TEXT NOT NULL,
  created_by TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL,
  ended_at TIMESTAMPTZ,
  ended_by TEXT NOT NULL DEFAULT '',
  end_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX freezes_environment ON freezes (environment, ends_at);
