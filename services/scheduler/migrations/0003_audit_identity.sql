-- Who, as proven: audit rows of requests carry the credential's issuer and subject (the JWT's
-- `iss` and `sub`, or hopngo:static-tokens / hopngo:mtls and the name), the groups it listed, and
-- the RPC called. Rows written before authentication existed keep empty values.
ALTER TABLE audit_log ADD COLUMN issuer TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN subject TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN groups TEXT[] NOT NULL DEFAULT '{}';
ALTER TABLE audit_log ADD COLUMN rpc TEXT NOT NULL DEFAULT '';
