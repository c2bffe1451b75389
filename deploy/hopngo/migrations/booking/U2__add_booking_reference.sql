DROP INDEX bookings_reference;
ALTER TABLE bookings DROP COLUMN reference;
