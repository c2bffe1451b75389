//! Scripts in a temporary directory, targets on a fresh test database, and a progress recorder.

#![allow(dead_code)]

use std::{path::PathBuf, time::Duration};

use hopngo_migrator::{
    domain::info::{DEFAULT_IGNORE_PATTERNS, IgnorePattern},
    executor::{Change, DatabaseSettings, Progress, Target},
    history::Table,
};
use hopngo_testkit::db::TestDb;
use sqlx::{Connection as _, PgConnection};

/// A directory of scripts, removed on drop.
pub struct Dir {
    pub path: PathBuf,
}

/// Where every [`Dir`] is made: the location root the tests' migrators are configured with.
#[allow(dead_code)]
pub fn root() -> PathBuf {
    std::env::temp_dir().join("hopngo-migrations")
}

impl Dir {
    pub fn new() -> Dir {
        let path = root().join(uuid::Uuid::now_v7().simple().to_string());
        std::fs::create_dir_all(&path).unwrap();
        Dir { path }
    }

    /// Writes a file (creating subdirectories).
    pub fn write(&self, name: &str, text: &str) -> &Dir {
        let path = self.path.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        self
    }

    pub fn remove(&self, name: &str) -> &Dir {
        std::fs::remove_file(self.path.join(name)).unwrap();
        self
    }

    pub fn location(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn settings(url: &str) -> DatabaseSettings {
    DatabaseSettings {
        url: url.to_string(),
        locations: vec![],
        location_roots: vec![],
        installed_by: None,
        lock_wait: Duration::from_secs(5),
        baseline_on_migrate: false,
        mixed: false,
        baseline_version: "1".into(),
    }
}

pub fn target(db: &TestDb, dir: &Dir) -> Target {
    Target {
        database: "app".into(),
        settings: settings(&db.url),
        locations: vec![dir.location()],
        table: Table { schema: "public".into(), table: "flyway_schema_history".into() },
        placeholders: Default::default(),
        ignore: DEFAULT_IGNORE_PATTERNS.iter().map(|p| IgnorePattern::parse(p).unwrap()).collect(),
    }
}

pub async fn conn(db: &TestDb) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

/// Records what a command reports.
#[derive(Default)]
pub struct Recorder {
    pub before: Option<String>,
    pub changes: Vec<Change>,
    pub running: Vec<Option<Change>>,
}

impl Progress for Recorder {
    async fn started(&mut self, version_before: &str) {
        self.before = Some(version_before.to_string());
    }
    async fn changed(&mut self, change: Change) {
        self.changes.push(change);
    }
    async fn non_transactional(&mut self, running: Option<Change>) {
        self.running.push(running);
    }
}

/// The history table's rows as text, the way Flyway's columns hold them (installed_on left out:
/// the server's clock).
pub async fn history(db: &TestDb) -> Vec<(i32, Option<String>, String, String, String, Option<i32>, String, bool)> {
    let mut c = conn(db).await;
    sqlx::query_as(
        "SELECT installed_rank, version, description, type, script, checksum, installed_by, success \
         FROM flyway_schema_history ORDER BY installed_rank",
    )
    .fetch_all(&mut c)
    .await
    .unwrap()
}

pub async fn exists(db: &TestDb, relation: &str) -> bool {
    let mut c = conn(db).await;
    sqlx::query_scalar::<_, Option<String>>("SELECT to_regclass($1)::text")
        .bind(relation)
        .fetch_one(&mut c)
        .await
        .unwrap()
        .is_some()
}
