//! PostgreSQL pools: each service keeps its tables in a schema of its own (set as the pool's
//! `search_path`), so services can share a database without sharing tables or sqlx migration
//! histories.

use std::str::FromStr as _;

use sqlx::{
    Connection as _, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// Why a pool could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse.
    #[error("database URL: {0}")]
    Url(String),
    /// The server cannot be reached or refused.
    #[error("database: {0}")]
    Unavailable(#[from] sqlx::Error),
    /// The service's schema migrations failed.
    #[error("schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Creates `schema` if needed and returns a pool whose connections use it.
pub async fn connect(url: &str, schema: &str, max_connections: u32) -> Result<PgPool, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(|e| DbError::Url(e.to_string()))?;
    let mut conn = PgConnection::connect_with(&options).await?;
    // CREATE SCHEMA IF NOT EXISTS can still collide when replicas start together; the session
    // lock goes with the connection.
    sqlx::query("SELECT pg_advisory_lock(7218861937310)").execute(&mut conn).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))).execute(&mut conn).await?;
    conn.close().await?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(options.options([("search_path", schema)]))
        .await?)
}

/// [`connect`], then brings the schema up to date with the service's `migrator`.
pub async fn connect_migrated(
    url: &str,
    schema: &str,
    max_connections: u32,
    migrator: &sqlx::migrate::Migrator,
) -> Result<PgPool, DbError> {
    let pool = connect(url, schema, max_connections).await?;
    migrator.run(&pool).await?;
    Ok(pool)
}

/// Whether a database error means "cannot reach the database right now" (retry later) rather
/// than a bug or a refused statement.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed)
}

/// A session-level advisory lock held on one pooled connection: whoever holds it is the one
/// replica doing a job (publishing the outbox, delivering webhooks, converging deployments).
/// PostgreSQL frees it when the connection ends, so a replica that dies hands over at once.
///
/// The connection never goes back to the pool: a session lock left on a pooled connection would
/// outlive this holder, and the next attempt, on another connection, could never take it again.
pub struct SessionLock {
    conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
}

impl SessionLock {
    /// Takes the lock `key` if no other session holds it.
    pub async fn try_take(pool: &PgPool, key: i64) -> Result<Option<SessionLock>, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        conn.close_on_drop();
        let held: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
        Ok(held.then_some(SessionLock { conn }))
    }

    /// Fails once the connection, and so the lock, may be gone: another replica may hold it now.
    pub async fn check(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut *self.conn).await.map(drop)
    }

    /// The connection holding the lock, for work that must stop when the lock is lost.
    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// Gives the lock up now (closing its connection) rather than when it is dropped.
    pub async fn release(self) {
        let _ = self.conn.close().await;
    }
}
