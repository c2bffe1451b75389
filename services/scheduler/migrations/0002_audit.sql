-- The audit log becomes readable (ListAuditEntries) and complete: refused requests are recorded
-- too (they have no release or sequence), each row says where it applied, why (the person's
-- reason), under which request id, and whether it was allowed. Rows are never changed or removed.

ALTER TABLE audit_log DROP CONSTRAINT audit_log_pkey;
ALTER TABLE audit_log ADD COLUMN id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY;
ALTER TABLE audit_log ALTER COLUMN release_id DROP NOT NULL;
ALTER TABLE audit_log ALTER COLUMN sequence DROP NOT NULL;
ALTER TABLE audit_log ADD COLUMN service TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN environment TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN request_id TEXT NOT NULL DEFAULT '';
-- 'allowed', or 'refused' (the message then says why, with the status code).
ALTER TABLE audit_log ADD COLUMN outcome TEXT NOT NULL DEFAULT 'allowed';
UPDATE audit_log a SET service = r.service, environment = r.environment FROM releases r WHERE r.id = a.release_id;

CREATE INDEX audit_log_release ON audit_log (release_id, id);
-- Rows are appended in time order, so a BRIN index finds a time range at almost no cost per
-- insert (every transition writes a row).
CREATE INDEX audit_log_at ON audit_log USING brin (at);

-- Append-only for everyone, the service's own role included (an owner could otherwise change its
-- own rows; a trigger also binds superusers).
CREATE FUNCTION audit_log_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'audit_log is append-only: rows are never changed or removed' USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_is_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
