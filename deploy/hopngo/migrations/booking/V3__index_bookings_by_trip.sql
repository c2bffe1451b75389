-- Built without locking writes: CREATE INDEX CONCURRENTLY cannot run inside a transaction, so
-- the migrator runs this script on its own, outside one, and records a failure if it fails.
CREATE INDEX CONCURRENTLY bookings_by_trip ON bookings (trip_id);
