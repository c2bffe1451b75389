//! A fresh database per test.

use std::sync::OnceLock;

use anyhow::Context as _;
use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use sqlx::{Connection as _, PgConnection};

static CLUSTER: OnceLock<Result<EphemeralPostgres, String>> = OnceLock::new();

/// A database created for one test; dropped (best effort) when the value is dropped.
pub struct TestDb {
    /// URL of the database.
    pub url: String,
    admin_url: String,
    name: String,
}

fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..].find('/').map(|i| scheme_end + i).unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The server to create test databases on: `DATABASE_URL`, else a throwaway cluster.
pub fn admin_url() -> anyhow::Result<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return Ok(url);
    }
    let cluster = CLUSTER.get_or_init(|| EphemeralPostgres::start(&PgOptions::default()).map_err(|e| format!("{e:#}")));
    match cluster {
        Ok(pg) => Ok(pg.url("postgres")),
        Err(e) => anyhow::bail!("starting a throwaway PostgreSQL: {e}"),
    }
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn create() -> anyhow::Result<TestDb> {
        let admin_url = tokio::task::spawn_blocking(admin_url).await??;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&admin_url).await.context("connecting to the test server")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await?;
        conn.close().await?;
        Ok(TestDb { url: with_database(&admin_url, &name), admin_url, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Best effort, off the async runtime: a leftover database only costs disk until the cluster goes.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                        let _ =
                            sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                                .execute(&mut conn)
                                .await;
                    }
                });
            }
        })
        .join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(with_database("postgres://u@h:5/postgres", "t1"), "postgres://u@h:5/t1");
        assert_eq!(with_database("postgres://u@h:5", "t1"), "postgres://u@h:5/t1");
        assert_eq!(with_database("postgres://u@h:5/x?sslmode=disable", "t1"), "postgres://u@h:5/t1?sslmode=disable");
    }
}
