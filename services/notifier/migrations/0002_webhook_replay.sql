-- A replay moves a webhook's cursor back and starts a new generation: attempts of earlier
-- generations no longer count toward the retry limit, and a delivery still under way from before
-- the replay cannot move the cursor forward again.
ALTER TABLE webhooks ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
DROP INDEX deliveries_by_event;
CREATE INDEX deliveries_by_event ON deliveries (webhook_id, generation, position);
