ALTER TABLE bookings ADD COLUMN reference TEXT;
CREATE UNIQUE INDEX bookings_reference ON bookings (reference) WHERE reference IS NOT NULL;
