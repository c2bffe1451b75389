CREATE TABLE bookings (
    id          BIGSERIAL PRIMARY KEY,
    trip_id     BIGINT NOT NULL,
    traveller   TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
