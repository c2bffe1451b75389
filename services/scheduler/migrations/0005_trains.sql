-- Release trains: what each member waited for (the config's dependsOn among the members and the
-- request's), and the client's key that makes a repeated CreateTrain return the first train.
ALTER TABLE release_groups ADD COLUMN dependencies JSONB NOT NULL DEFAULT '[]';
ALTER TABLE release_groups ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX release_groups_request_id ON release_groups (request_id) WHERE request_id IS NOT NULL;
