-- The deployer's desired states: one per service and environment, with the idempotency key of the
-- request that set it and the port its proxy listens on (kept across restarts).
CREATE TABLE targets (
    service          TEXT NOT NULL,
    environment      TEXT NOT NULL,
    spec             JSONB NOT NULL,
    idempotency_key  TEXT NOT NULL,
    proxy_port       INT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (service, environment)
);
