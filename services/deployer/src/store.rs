//! The deployer's SQL: desired states survive restarts, so a restarted deployer converges again
//! without being told.

use sqlx::PgPool;

use crate::backend::Target;

/// Embedded schema migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
/// PostgreSQL schema holding the deployer's tables.
pub const SCHEMA: &str = "deployer";

/// A stored desired state.
pub struct StoredTarget {
    /// The desired state.
    pub target: Target,
    /// Key of the request that set it.
    pub idempotency_key: String,
    /// Port of its proxy.
    pub proxy_port: Option<u16>,
}

/// Desired states in PostgreSQL.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connects in the deployer's own schema and applies its migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        Ok(Store { pool: hopngo_kit::db::connect_migrated(url, SCHEMA, max_connections, &MIGRATOR).await? })
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Every stored desired state.
    pub async fn targets(&self) -> Result<Vec<StoredTarget>, sqlx::Error> {
        let rows: Vec<(serde_json::Value, String, Option<i32>)> =
            sqlx::query_as("SELECT spec, idempotency_key, proxy_port FROM targets ORDER BY service, environment")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(spec, key, port)| {
                let target = serde_json::from_value(spec).ok()?;
                Some(StoredTarget { target, idempotency_key: key, proxy_port: port.map(|p| p as u16) })
            })
            .collect())
    }

    /// Stores a desired state; returns false when it was already the one in force (then the key
    /// of the request that first set it stays recorded).
    pub async fn put(&self, target: &Target, idempotency_key: &str) -> Result<bool, sqlx::Error> {
        let spec = serde_json::to_value(target).map_err(|e| sqlx::Error::Protocol(e.to_string()))?;
        let changed: Option<bool> = sqlx::query_scalar(
            "INSERT INTO targets (service, environment, spec, idempotency_key) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (service, environment) DO UPDATE \
               SET spec = EXCLUDED.spec, idempotency_key = EXCLUDED.idempotency_key, updated_at = now() \
               WHERE targets.spec IS DISTINCT FROM EXCLUDED.spec \
             RETURNING true",
        )
        .bind(&target.service)
        .bind(&target.environment)
        .bind(spec)
        .bind(idempotency_key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(changed.unwrap_or(false))
    }

    /// Key of the desired state in force.
    pub async fn key(&self, service: &str, environment: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT idempotency_key FROM targets WHERE service = $1 AND environment = $2")
            .bind(service)
            .bind(environment)
            .fetch_optional(&self.pool)
            .await
    }

    /// Remembers the port of a target's proxy.
    pub async fn set_proxy_port(&self, service: &str, environment: &str, port: u16) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE targets SET proxy_port = $3 WHERE service = $1 AND environment = $2")
            .bind(service)
            .bind(environment)
            .bind(port as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
