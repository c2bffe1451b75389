DROP INDEX CONCURRENTLY bookings_by_trip;
