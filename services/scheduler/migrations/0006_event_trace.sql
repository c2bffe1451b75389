-- The W3C trace context of the span that wrote each event (the engine's advance of its release,
-- or the request that caused it), so the notifier continues the release's trace.
ALTER TABLE release_events ADD COLUMN traceparent TEXT;
