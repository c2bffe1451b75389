//! The `flyway_schema_history` table on the application database, exactly as Flyway creates,
//! reads and writes it (`PostgreSQLDatabase.getRawCreateScript`, `JdbcTableSchemaHistory`), and
//! Flyway's advisory lock key for it.

use sqlx::{Connection as _, PgConnection, Row as _};

use crate::domain::{
    info::{AppliedMigration, MigrationType},
    version::Version,
};

/// Where the history lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Schema (`public` by default).
    pub schema: String,
    /// Table (`flyway_schema_history` by default).
    pub table: String,
}

/// Double-quotes an identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal (E'' form when it has a backslash, so it reads the same whatever
/// `standard_conforming_strings` says).
pub fn quote_literal(value: &str) -> String {
    let doubled = value.replace('\'', "''");
    if value.contains('\\') { format!("E'{}'", doubled.replace('\\', "\\\\")) } else { format!("'{doubled}'") }
}

/// Java's `String.hashCode`: `h = 31·h + c` over UTF-16 code units, wrapping.
pub fn java_hash(text: &str) -> i32 {
    text.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// ASCII "Flyway", the base of Flyway's PostgreSQL lock keys.
const FLYWAY_LOCK_BASE: i64 = 0x466C79776179;

impl Table {
    /// `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// Flyway's advisory lock key (`PostgreSQLAdvisoryLockTemplate`): 0x466C79776179 plus the
    /// Java hash of the quoted table name, so Flyway and the migrator exclude each other.
    pub fn lock_key(&self) -> i64 {
        FLYWAY_LOCK_BASE + java_hash(&self.quoted()) as i64
    }

    /// Flyway's CREATE TABLE, with the baseline row (when creating for baseline) inserted before
    /// the primary key and index, in one transaction.
    pub async fn create(&self, conn: &mut PgConnection, first_row: Option<&NewRow>) -> Result<(), sqlx::Error> {
        let t = self.quoted();
        let mut script = format!(
            "BEGIN;\nCREATE TABLE {t} (\n    \"installed_rank\" INT NOT NULL,\n    \"version\" VARCHAR(50),\n    \"description\" VARCHAR(200) NOT NULL,\n    \"type\" VARCHAR(20) NOT NULL,\n    \"script\" VARCHAR(1000) NOT NULL,\n    \"checksum\" INTEGER,\n    \"installed_by\" VARCHAR(100) NOT NULL,\n    \"installed_on\" TIMESTAMP NOT NULL DEFAULT now(),\n    \"execution_time\" INTEGER NOT NULL,\n    \"success\" BOOLEAN NOT NULL\n);\n"
        );
        if let Some(row) = first_row {
            script.push_str(&self.insert_sql(row));
            script.push_str(";\n");
        }
        script.push_str(&format!(
            "ALTER TABLE {t} ADD CONSTRAINT {} PRIMARY KEY (\"installed_rank\");\nCREATE INDEX {} ON {t} (\"success\");\nCOMMIT;",
            quote_ident(&format!("{}_pk", self.table)),
            quote_ident(&format!("{}_s_idx", self.table)),
        ));
        if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).execute(&mut *conn).await {
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            return Err(e);
        }
        Ok(())
    }

    /// Whether the table exists.
    pub async fn exists(&self, conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p'))",
        )
        .bind(&self.schema)
        .bind(&self.table)
        .fetch_one(conn)
        .await
    }

    /// Every row, by rank. An unknown `type` or an unparsable version is an error, as in Flyway.
    pub async fn read(&self, conn: &mut PgConnection) -> Result<Result<Vec<AppliedMigration>, String>, sqlx::Error> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT \"installed_rank\", \"version\", \"description\", \"type\", \"script\", \"checksum\", \"installed_by\", \
               (\"installed_on\" AT TIME ZONE current_setting('TimeZone')) AS \"installed_on\", \"execution_time\", \"success\" \
             FROM {} ORDER BY \"installed_rank\"",
            self.quoted()
        )))
        .fetch_all(conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let rank: i32 = row.try_get("installed_rank")?;
            let kind: String = row.try_get("type")?;
            let Some(kind) = MigrationType::parse(&kind) else {
                return Ok(Err(format!("{} rank {rank}: unknown migration type {kind:?}", self.quoted())));
            };
            let version: Option<String> = row.try_get("version")?;
            let version = match version {
                None => None,
                Some(text) => match Version::parse(&text) {
                    Ok(v) => Some(v),
                    Err(e) => return Ok(Err(format!("{} rank {rank}: {e}", self.quoted()))),
                },
            };
            out.push(AppliedMigration {
                rank,
                version,
                description: row.try_get("description")?,
                kind,
                script: row.try_get("script")?,
                checksum: row.try_get("checksum")?,
                installed_by: row.try_get("installed_by")?,
                installed_on: row.try_get("installed_on")?,
                execution_time: row.try_get("execution_time")?,
                success: row.try_get("success")?,
            });
        }
        Ok(Ok(out))
    }

    /// Flyway's record statement (the 9 columns but `installed_on`, which the server fills) as
    /// literal SQL, so it can go in one round trip with the migration's COMMIT.
    pub fn insert_sql(&self, row: &NewRow) -> String {
        self.insert_with(row, &row.execution_time.to_string(), "")
    }

    /// The record statement inside the migration's own transaction, its `execution_time` the
    /// server's time since the transaction began (the migration's statements), returned.
    pub fn insert_timed_sql(&self, row: &NewRow) -> String {
        self.insert_with(
            row,
            "(extract(epoch FROM clock_timestamp() - now()) * 1000)::int",
            " RETURNING \"execution_time\"",
        )
    }

    /// Repair's removal of a failed row.
    pub fn delete_sql(&self, rank: i32) -> String {
        format!("DELETE FROM {} WHERE \"installed_rank\" = {rank}", self.quoted())
    }

    /// Repair's realignment of a row with its script (Flyway's UPDATE by rank).
    pub fn realign_sql(&self, rank: i32, description: &str, kind: MigrationType, checksum: i32) -> String {
        format!(
            "UPDATE {} SET \"description\" = {}, \"type\" = {}, \"checksum\" = {checksum} WHERE \"installed_rank\" = {rank}",
            self.quoted(),
            quote_literal(description),
            quote_literal(kind.as_str()),
        )
    }

    fn insert_with(&self, row: &NewRow, execution_time: &str, returning: &str) -> String {
        let opt = |v: &Option<String>| v.as_deref().map(quote_literal).unwrap_or_else(|| "NULL".into());
        format!(
            "/*NO LOAD BALANCE*/ INSERT INTO {} (\"installed_rank\", \"version\", \"description\", \"type\", \"script\", \"checksum\", \"installed_by\", \"execution_time\", \"success\") VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}){returning}",
            self.quoted(),
            row.rank,
            opt(&row.version),
            quote_literal(&row.description),
            quote_literal(row.kind.as_str()),
            quote_literal(&row.script),
            row.checksum.map(|c| c.to_string()).unwrap_or_else(|| "NULL".into()),
            quote_literal(&row.installed_by),
            execution_time,
            row.success,
        )
    }
}

/// A row to record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRow {
    /// `installed_rank`.
    pub rank: i32,
    /// `version` text.
    pub version: Option<String>,
    /// `description` (already abbreviated).
    pub description: String,
    /// `type`.
    pub kind: MigrationType,
    /// `script` (already abbreviated).
    pub script: String,
    /// `checksum`.
    pub checksum: Option<i32>,
    /// `installed_by`.
    pub installed_by: String,
    /// `execution_time` (ms).
    pub execution_time: i32,
    /// `success`.
    pub success: bool,
}

/// Creates a schema (Flyway's `createSchemas`).
pub async fn create_schema(conn: &mut PgConnection, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {}", quote_ident(schema)))).execute(conn).await.map(|_| ())
}

/// Whether a schema exists.
pub async fn schema_exists(conn: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(conn)
        .await
}

/// Whether a schema holds no objects (tables, views, sequences, functions, types), as Flyway's
/// `PostgreSQLSchema.doEmpty` decides before refusing to migrate a database without history.
pub async fn schema_is_empty(conn: &mut PgConnection, schema: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                            WHERE n.nspname = $1) \
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                            WHERE n.nspname = $1) \
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
                            WHERE n.nspname = $1 AND t.typtype IN ('e', 'd', 'r', 'm') )",
    )
    .bind(schema)
    .fetch_one(conn)
    .await
}

/// Takes Flyway's lock as a session-level advisory lock, polling `pg_try_advisory_lock` (a
/// waiting `pg_advisory_lock` can deadlock with `CREATE INDEX CONCURRENTLY`, Flyway #1654)
/// every `poll` until `deadline`. False when the deadline passed.
pub async fn lock(
    conn: &mut PgConnection,
    key: i64,
    poll: std::time::Duration,
    deadline: tokio::time::Instant,
) -> Result<bool, sqlx::Error> {
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
        if got {
            return Ok(true);
        }
        if tokio::time::Instant::now() + poll > deadline {
            return Ok(false);
        }
        tokio::time::sleep(poll).await;
    }
}

/// Releases the lock and closes the connection.
pub async fn unlock(mut conn: PgConnection, key: i64) {
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut conn).await;
    let _ = conn.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flyway_lock_key() {
        let t = Table { schema: "public".into(), table: "flyway_schema_history".into() };
        assert_eq!(java_hash(&t.quoted()), 2125624436);
        assert_eq!(t.lock_key(), 77433833903597);
        assert_eq!(java_hash(""), 0);
        assert_eq!(java_hash("hello"), 99162322);
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }
}
