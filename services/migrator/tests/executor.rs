//! The migrator's commands against a real PostgreSQL: the history table Flyway would write,
//! atomic migrations, concurrent migrators, validate's classification, baseline, repair, undo,
//! non-transactional migrations, and bad input.

mod common;

use common::{Dir, Recorder, conn, exists, history, target};
use hopngo_migrator::{
    domain::{
        checksum::checksum,
        info::{Options, State, Target as Upto},
    },
    executor::{self, ExecError, UndoTo},
};
use hopngo_testkit::db::TestDb;

fn row(
    rank: i32,
    version: Option<&str>,
    description: &str,
    kind: &str,
    script: &str,
    checksum: Option<i32>,
) -> (i32, Option<String>, String, String, String, Option<i32>, String, bool) {
    (rank, version.map(String::from), description.into(), kind.into(), script.into(), checksum, "postgres".into(), true)
}

async fn migrate(t: &executor::Target) -> Result<executor::Outcome, ExecError> {
    executor::migrate(t, Upto::Latest, false, &mut Recorder::default()).await
}

/// Flyway's own create script for the table (`PostgreSQLDatabase.getRawCreateScript`).
const FLYWAY_DDL: &str = r#"CREATE TABLE "reference"."flyway_schema_history" (
    "installed_rank" INT NOT NULL,
    "version" VARCHAR(50),
    "description" VARCHAR(200) NOT NULL,
    "type" VARCHAR(20) NOT NULL,
    "script" VARCHAR(1000) NOT NULL,
    "checksum" INTEGER,
    "installed_by" VARCHAR(100) NOT NULL,
    "installed_on" TIMESTAMP NOT NULL DEFAULT now(),
    "execution_time" INTEGER NOT NULL,
    "success" BOOLEAN NOT NULL
);
ALTER TABLE "reference"."flyway_schema_history" ADD CONSTRAINT "flyway_schema_history_pk" PRIMARY KEY ("installed_rank");
CREATE INDEX "flyway_schema_history_s_idx" ON "reference"."flyway_schema_history" ("success");"#;

async fn describe(
    c: &mut sqlx::PgConnection,
    schema: &str,
) -> (Vec<(String, String, String, Option<String>)>, Vec<String>) {
    let columns: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT column_name::text, data_type || coalesce('(' || character_maximum_length || ')', ''), is_nullable::text, column_default::text \
         FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'flyway_schema_history' ORDER BY ordinal_position",
    )
    .bind(schema)
    .fetch_all(&mut *c)
    .await
    .unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT replace(indexdef, $1 || '.', '') FROM pg_indexes WHERE schemaname = $1 AND tablename = 'flyway_schema_history' ORDER BY indexname",
    )
    .bind(schema)
    .fetch_all(&mut *c)
    .await
    .unwrap();
    (columns, indexes)
}

#[tokio::test]
async fn history_table_is_what_flyway_writes() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    // Two scripts whose checksums are published Flyway vectors, a nested one, and a repeatable.
    dir.write("V1__select_one.sql", "SELECT 1;\r\n")
        .write("sub/V1_1__Create_t.sql", "CREATE TABLE t (id int);\n\nINSERT INTO t VALUES (1);\n")
        .write("R__view.sql", "CREATE OR REPLACE VIEW v AS SELECT * FROM t;\n")
        .write("README.md", "not a migration");
    let t = target(&db, &dir);
    let outcome = migrate(&t).await.unwrap();
    assert_eq!(outcome.version_before, "");
    assert_eq!(outcome.version_after, "1.1");
    let view_sum = checksum("CREATE OR REPLACE VIEW v AS SELECT * FROM t;\n");
    assert_eq!(
        history(&db).await,
        vec![
            row(1, Some("1"), "select one", "SQL", "V1__select_one.sql", Some(78787420)),
            row(2, Some("1.1"), "Create t", "SQL", "sub/V1_1__Create_t.sql", Some(169406234)),
            row(3, None, "view", "SQL", "R__view.sql", Some(view_sum)),
        ]
    );
    let mut c = conn(&db).await;
    let (recent, times): (bool, bool) = sqlx::query_as(
        "SELECT bool_and(installed_on BETWEEN now()::timestamp - interval '1 minute' AND now()::timestamp + interval '1 minute'), \
                bool_and(execution_time >= 0) FROM flyway_schema_history",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert!(recent && times);
    // The table itself: Flyway's DDL run into another schema describes the same table.
    sqlx::raw_sql("CREATE SCHEMA reference").execute(&mut c).await.unwrap();
    sqlx::raw_sql(FLYWAY_DDL).execute(&mut c).await.unwrap();
    let ours = describe(&mut c, "public").await;
    let flyways = describe(&mut c, "reference").await;
    assert_eq!(ours, flyways);
    assert_eq!(ours.0.len(), 10);
    // A second migrate has nothing to do, and a changed repeatable runs again as a new row.
    assert!(migrate(&t).await.unwrap().message.contains("up to date"));
    dir.write("R__view.sql", "CREATE OR REPLACE VIEW v AS SELECT id FROM t;\n");
    migrate(&t).await.unwrap();
    let rows = history(&db).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].0, 4);
    assert_eq!(rows[3].5, Some(checksum("CREATE OR REPLACE VIEW v AS SELECT id FROM t;\n")));
}

#[tokio::test]
async fn a_failing_transactional_migration_leaves_neither_change_nor_row() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__ok.sql", "CREATE TABLE ok (id int);").write(
        "V2__bad.sql",
        "CREATE TABLE half (id int);\nINSERT INTO ok VALUES (1);\nINSERT INTO\n  missing VALUES (1);\n",
    );
    let t = target(&db, &dir);
    let err = migrate(&t).await.unwrap_err();
    let ExecError::Failed(message) = err else { panic!("{err:?}") };
    assert!(
        message.starts_with("V2__bad.sql line 4: relation \"missing\" does not exist (SQLSTATE 42P01)"),
        "{message}"
    );
    assert!(!exists(&db, "half").await, "the failed migration's table was rolled back");
    let mut c = conn(&db).await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM ok").fetch_one(&mut c).await.unwrap();
    assert_eq!(rows, 0);
    assert_eq!(history(&db).await.len(), 1, "no history row for the failed migration");
    // Fixed, it applies.
    dir.write("V2__bad.sql", "CREATE TABLE half (id int);\n");
    migrate(&t).await.unwrap();
    assert_eq!(history(&db).await.len(), 2);
}

#[tokio::test]
async fn two_migrators_started_at_once_apply_each_migration_exactly_once() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__log.sql", "CREATE TABLE log (n int PRIMARY KEY);");
    for n in 2..=15 {
        dir.write(&format!("V{n}__insert.sql"), &format!("SELECT pg_sleep(0.02);\nINSERT INTO log VALUES ({n});\n"));
    }
    let t = target(&db, &dir);
    let (a, b) = tokio::join!(migrate(&t), migrate(&t));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut c = conn(&db).await;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM log").fetch_one(&mut c).await.unwrap();
    assert_eq!(logged, 14);
    let rows = history(&db).await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), (1..=15).collect::<Vec<_>>());
    assert!(
        a.message.contains("up to date") || b.message.contains("up to date"),
        "one waited for the lock and found nothing left: {a:?} / {b:?}"
    );
}

#[tokio::test]
async fn the_lock_excludes_a_running_flyway() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);");
    let mut t = target(&db, &dir);
    t.settings.lock_wait = std::time::Duration::from_secs(2);
    // Flyway's default lock: pg_try_advisory_xact_lock(key) inside a transaction.
    let mut flyway = conn(&db).await;
    sqlx::raw_sql("BEGIN").execute(&mut flyway).await.unwrap();
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(77433833903597)").fetch_one(&mut flyway).await.unwrap();
    assert!(got);
    let err = migrate(&t).await.unwrap_err();
    assert!(matches!(&err, ExecError::Precondition(m) if m.contains("held by another migrator or Flyway")), "{err:?}");
    assert!(!exists(&db, "a").await);
    sqlx::raw_sql("COMMIT").execute(&mut flyway).await.unwrap();
    migrate(&t).await.unwrap();
    assert!(exists(&db, "a").await);
}

async fn validate_codes(t: &executor::Target) -> Vec<(String, &'static str)> {
    executor::validate(t, false).await.unwrap().1.into_iter().map(|(v, _, code, _)| (v, code)).collect()
}

#[tokio::test]
async fn validate_classifies_as_flyway_does() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);").write("V3__c.sql", "CREATE TABLE c (id int);");
    let t = target(&db, &dir);
    migrate(&t).await.unwrap();
    assert!(validate_codes(&t).await.is_empty());

    // Out of order: V2 added below the applied V3.
    dir.write("V2__b.sql", "CREATE TABLE b (id int);");
    assert_eq!(validate_codes(&t).await, vec![("2".to_string(), "RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED")]);
    let err = migrate(&t).await.unwrap_err();
    assert!(matches!(&err, ExecError::Precondition(m) if m.contains("-outOfOrder=true")), "{err:?}");
    executor::migrate(&t, Upto::Latest, true, &mut Recorder::default()).await.unwrap();
    let (set, _, _) = executor::info(&t, Options::default()).await.unwrap();
    assert_eq!(
        set.infos.iter().map(|i| i.state).collect::<Vec<_>>(),
        vec![State::Success, State::Success, State::OutOfOrder]
    );

    // Checksum mismatch: V1 edited after it ran (line endings alone would not count).
    dir.write("V1__a.sql", "CREATE TABLE a (id int);\r\n\r\n");
    assert!(validate_codes(&t).await.is_empty());
    dir.write("V1__a.sql", "CREATE TABLE a (id  int);");
    let problems = executor::validate(&t, false).await.unwrap().1;
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].2, "CHECKSUM_MISMATCH");
    assert!(problems[0].3.contains("-> Applied to database : "), "{}", problems[0].3);
    dir.write("V1__a.sql", "CREATE TABLE a (id int);");

    // Missing: an applied script deleted (future when it is the newest).
    dir.remove("V2__b.sql");
    assert_eq!(validate_codes(&t).await, vec![("2".to_string(), "APPLIED_VERSIONED_MIGRATION_NOT_RESOLVED")]);
    dir.write("V2__b.sql", "CREATE TABLE b (id int);");
    dir.remove("V3__c.sql");
    assert!(validate_codes(&t).await.is_empty(), "future migrations are ignored by default (*:future)");
    dir.write("V3__c.sql", "CREATE TABLE c (id int);");

    // Failed: a success=false row as Flyway records a failed non-transactional migration.
    let mut c = conn(&db).await;
    sqlx::raw_sql(
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) \
         VALUES (4, '4', 'd', 'SQL', 'V4__d.sql', 1, 'postgres', 3, false)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    dir.write("V4__d.sql", "SELECT 1;");
    let codes = validate_codes(&t).await;
    assert_eq!(codes, vec![("4".to_string(), "FAILED_VERSIONED_MIGRATION")]);
    let err = migrate(&t).await.unwrap_err();
    assert!(matches!(&err, ExecError::Precondition(m) if m.contains("FAILED_VERSIONED_MIGRATION")), "{err:?}");
}

#[tokio::test]
async fn baseline_on_a_non_empty_database() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__init.sql", "CREATE TABLE bookings (id int);")
        .write("V2__init2.sql", "ALTER TABLE bookings ADD ref text;")
        .write("V3__more.sql", "CREATE TABLE more (id int);");
    let t = target(&db, &dir);
    let mut c = conn(&db).await;
    // A database Flyway never saw, already at V2's schema.
    sqlx::raw_sql("CREATE TABLE bookings (id int, ref text);").execute(&mut c).await.unwrap();
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Precondition(m) if m.starts_with("Found non-empty schema(s) \"public\" but no schema history table")),
        "{err:?}"
    );
    assert!(!exists(&db, "flyway_schema_history").await);
    let outcome = executor::baseline(&t, "2", &mut Recorder::default()).await.unwrap();
    assert_eq!(outcome.version_after, "2");
    assert_eq!(
        history(&db).await,
        vec![row(1, Some("2"), "<< Flyway Baseline >>", "BASELINE", "<< Flyway Baseline >>", None)]
    );
    // Same baseline again: nothing to do; another version: refused.
    assert!(executor::baseline(&t, "2", &mut Recorder::default()).await.unwrap().message.contains("Skipping"));
    assert!(
        matches!(executor::baseline(&t, "3", &mut Recorder::default()).await, Err(ExecError::Precondition(m)) if m.contains("already been baselined with (2,"))
    );
    let (set, _, _) = executor::info(&t, Options::default()).await.unwrap();
    assert_eq!(
        set.infos.iter().map(|i| i.state).collect::<Vec<_>>(),
        vec![State::BelowBaseline, State::Baseline, State::Pending]
    );
    migrate(&t).await.unwrap();
    assert!(exists(&db, "more").await);
    assert_eq!(history(&db).await.len(), 2);
    assert!(
        matches!(executor::baseline(&t, "9", &mut Recorder::default()).await, Err(ExecError::Precondition(m)) if m.contains("already been baselined"))
    );
}

#[tokio::test]
async fn repair_removes_failures_marks_missing_and_realigns_checksums() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);").write("V2__b.sql", "CREATE TABLE b (id int);");
    let t = target(&db, &dir);
    migrate(&t).await.unwrap();
    // A non-transactional migration that fails is recorded with success=false.
    dir.write("V3__index.sql", "CREATE INDEX CONCURRENTLY i ON a (nope);");
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Failed(m) if m.contains("V3__index.sql line 1") && m.contains("recorded as failed")),
        "{err:?}"
    );
    let rows = history(&db).await;
    assert_eq!(rows.len(), 3);
    assert!(!rows[2].7, "the failure is on record");
    assert!(matches!(migrate(&t).await, Err(ExecError::Precondition(m)) if m.contains("FAILED_VERSIONED_MIGRATION")));
    // The script is fixed, V1 edited, V2 deleted.
    dir.write("V3__index.sql", "CREATE INDEX CONCURRENTLY i ON a (id);")
        .write("V1__a.sql", "CREATE TABLE a (id int); -- edited")
        .remove("V2__b.sql");
    let mut recorder = Recorder::default();
    executor::repair(&t, &mut recorder).await.unwrap();
    let actions: Vec<&str> = recorder.changes.iter().map(|c| c.action.as_str()).collect();
    assert_eq!(actions.len(), 3, "{actions:?}");
    let rows = history(&db).await;
    assert_eq!(rows.len(), 3, "failed row gone, DELETE row added: {rows:?}");
    assert_eq!(rows[0].5, Some(checksum("CREATE TABLE a (id int); -- edited")));
    assert_eq!(rows[2].3, "DELETE");
    assert_eq!(rows[2].1.as_deref(), Some("2"));
    assert!(validate_codes(&t).await.is_empty());
    migrate(&t).await.unwrap();
    let mut c = conn(&db).await;
    let index: bool = sqlx::query_scalar("SELECT to_regclass('i') IS NOT NULL").fetch_one(&mut c).await.unwrap();
    assert!(index, "CREATE INDEX CONCURRENTLY ran outside a transaction");
}

#[tokio::test]
async fn undo_back_to_a_version() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);")
        .write("V2__b.sql", "CREATE TABLE b (id int);")
        .write("U2__b.sql", "DROP TABLE b;")
        .write("V3__c.sql", "CREATE TABLE c (id int);")
        .write("U3__c.sql", "DROP TABLE c;");
    let t = target(&db, &dir);
    migrate(&t).await.unwrap();
    let outcome = executor::undo(
        &t,
        UndoTo::Version(hopngo_migrator::domain::version::Version::parse("1").unwrap()),
        &mut Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!((outcome.version_before.as_str(), outcome.version_after.as_str()), ("3", "1"));
    assert!(!exists(&db, "b").await && !exists(&db, "c").await && exists(&db, "a").await);
    let rows = history(&db).await;
    assert_eq!(rows.len(), 5);
    assert_eq!((rows[3].1.as_deref(), rows[3].3.as_str(), rows[3].4.as_str()), (Some("3"), "DELETE", "U3__c.sql"));
    assert_eq!((rows[4].1.as_deref(), rows[4].4.as_str()), (Some("2"), "U2__b.sql"));
    let (set, _, _) = executor::info(&t, Options::default()).await.unwrap();
    let states: Vec<State> = set.infos.iter().map(|i| i.state).collect();
    assert_eq!(
        states,
        vec![
            State::Success,
            State::Undone,
            State::Undone,
            State::Success,
            State::Success,
            State::Pending,
            State::Pending
        ]
    );
    assert!(validate_codes(&t).await.is_empty());
    // Undone versions are pending again; migrating re-applies them.
    migrate(&t).await.unwrap();
    assert!(exists(&db, "c").await);
    // Undo of the previous version only, then one without its script.
    executor::undo(&t, UndoTo::Previous, &mut Recorder::default()).await.unwrap();
    assert!(!exists(&db, "c").await && exists(&db, "b").await);
    let err = executor::undo(&t, UndoTo::Empty, &mut Recorder::default()).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("no undo script") && reason.contains("1 (V1__a.sql)")),
        "{err:?}"
    );
    assert!(exists(&db, "b").await, "nothing was undone");
}

#[tokio::test]
async fn bad_input_names_the_file_or_database() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__ok.sql", "SELECT 1;").write("V1_init.sql", "SELECT 1;");
    let t = target(&db, &dir);
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { field, reason } if field == "target.locations" && reason.contains("V1_init.sql: Invalid versioned migration name format")),
        "{err:?}"
    );
    dir.remove("V1_init.sql").write("V1.0__dup.sql", "SELECT 2;");
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("Found more than one migration with version 1")),
        "{err:?}"
    );
    assert!(!exists(&db, "flyway_schema_history").await, "nothing was written");
    dir.remove("V1.0__dup.sql");
    migrate(&t).await.unwrap();
    dir.write("V2__ph.sql", "SELECT '${missing}';");
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("V2__ph.sql: No value provided for placeholder: ${missing}")),
        "{err:?}"
    );
    dir.remove("V2__ph.sql").write("V2__commit.sql", "CREATE TABLE x (id int);\nCOMMIT;\n");
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("V2__commit.sql line 2: COMMIT")),
        "{err:?}"
    );
    dir.remove("V2__commit.sql")
        .write("V2__mixed.sql", "CREATE TABLE y (id int);\nCREATE INDEX CONCURRENTLY yi ON y (id);\n");
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("both transactional and non-transactional")),
        "{err:?}"
    );
    assert_eq!(history(&db).await.len(), 1, "only V1 ran");
    // A bad script after a good one: every pending script is prepared first, so neither runs.
    dir.remove("V2__mixed.sql")
        .write("V2__good.sql", "CREATE TABLE good (id int);")
        .write("V3__bad.sql", "SELECT '${missing}';");
    let err = migrate(&t).await.unwrap_err();
    assert!(matches!(&err, ExecError::Invalid { reason, .. } if reason.contains("V3__bad.sql")), "{err:?}");
    assert!(!exists(&db, "good").await, "V2 did not run before V3 was found bad");
    assert_eq!(history(&db).await.len(), 1);
    dir.remove("V2__good.sql").remove("V3__bad.sql");

    let mut unreachable = t.clone();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    unreachable.settings.url = format!("postgres://postgres@127.0.0.1:{port}/nope");
    let err = executor::preflight(&unreachable).await.unwrap_err();
    assert!(matches!(&err, ExecError::Unavailable(m) if m.starts_with("database app cannot be reached")), "{err:?}");
    let mut wrong_user = t.clone();
    wrong_user.settings.url = db.url.replace("postgres@", "nobody@");
    let err = executor::preflight(&wrong_user).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Precondition(m) if m.contains("database app") && m.contains("nobody")),
        "{err:?}"
    );
}

#[tokio::test]
async fn copy_data_placeholders_callbacks_and_timeouts() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write(
        "V1__seed.sql",
        "CREATE TABLE city (id int PRIMARY KEY, name text, owner text DEFAULT '${owner}');\nCOPY city (id, name) FROM stdin;\n1\tLisbon\n2\tPorto\n\\.\nINSERT INTO city (id, name) VALUES (3, '${flyway:defaultSchema}');\n",
    )
    .write("V2__slow.sql", "-- hopngo:statementTimeout=100ms\nSELECT pg_sleep(1);\n")
    .write("beforeMigrate.sql", "CREATE TABLE IF NOT EXISTS callback_log (event text);\n")
    .write("afterEachMigrate.sql", "INSERT INTO callback_log VALUES ('afterEachMigrate');\n")
    .write("afterMigrateError.sql", "INSERT INTO callback_log VALUES ('afterMigrateError');\n");
    let mut t = target(&db, &dir);
    t.placeholders.insert("Owner".into(), "booking_app".into());
    let err = migrate(&t).await.unwrap_err();
    assert!(
        matches!(&err, ExecError::Failed(m) if m.contains("V2__slow.sql line 2") && m.contains("statement timeout")),
        "{err:?}"
    );
    let mut c = conn(&db).await;
    let cities: Vec<(i32, String, String)> =
        sqlx::query_as("SELECT id, name, owner FROM city ORDER BY id").fetch_all(&mut c).await.unwrap();
    assert_eq!(
        cities,
        vec![
            (1, "Lisbon".into(), "booking_app".into()),
            (2, "Porto".into(), "booking_app".into()),
            (3, "public".into(), "booking_app".into())
        ]
    );
    let log: Vec<String> = sqlx::query_scalar("SELECT event FROM callback_log").fetch_all(&mut c).await.unwrap();
    assert_eq!(log, vec!["afterEachMigrate", "afterMigrateError"], "V2's afterEachMigrate rolled back with it");
    assert_eq!(history(&db).await.len(), 1);
    // The checksum is of the raw text (placeholders not replaced) for versioned migrations.
    assert_eq!(
        history(&db).await[0].5,
        Some(checksum(&std::fs::read_to_string(dir.path.join("V1__seed.sql")).unwrap()))
    );
}

#[tokio::test]
async fn a_schema_of_its_own_is_created_marked_and_used_for_unqualified_names() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__init.sql", "CREATE TABLE trips (id int);\n")
        .write("V2__no_tx.sql", "-- hopngo:lockTimeout=2s\nCREATE INDEX CONCURRENTLY trips_id ON trips (id);\n")
        .write("V2__no_tx.sql.conf", "executeInTransaction=false\n");
    let mut t = target(&db, &dir);
    t.table.schema = "planning".into();
    migrate(&t).await.unwrap();
    let mut c = conn(&db).await;
    let rows: Vec<(i32, Option<String>, String, String, String)> = sqlx::query_as(
        "SELECT installed_rank, version, description, type, script FROM planning.flyway_schema_history ORDER BY installed_rank",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (0, None, "<< Flyway Schema Creation >>".into(), "SCHEMA".into(), "\"planning\"".into()),
            (1, Some("1".into()), "init".into(), "SQL".into(), "V1__init.sql".into()),
            (2, Some("2".into()), "no tx".into(), "SQL".into(), "V2__no_tx.sql".into()),
        ]
    );
    assert!(exists(&db, "planning.trips").await && !exists(&db, "public.trips").await);
    assert!(exists(&db, "planning.trips_id").await);
    // Flyway's key for "planning"."flyway_schema_history" differs from the public one.
    assert_ne!(t.table.lock_key(), 77433833903597);
}

#[tokio::test]
async fn versions_descriptions_and_repeatables_are_recorded_as_flyway_records_them() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    let long = "d".repeat(230);
    dir.write("V001__leading_zeros.sql", "SELECT 1;")
        .write("V1_2__underscores_become_dots.sql", "SELECT 2;")
        .write(&format!("V1_10__{long}.sql"), "SELECT 3;")
        .write("V1.9.sql", "SELECT 4;")
        .write("R__grants.sql", "SELECT '${role}';");
    let mut t = target(&db, &dir);
    t.placeholders.insert("role".into(), "reader".into());
    migrate(&t).await.unwrap();
    let rows = history(&db).await;
    let described: Vec<(Option<&str>, &str)> = rows.iter().map(|r| (r.1.as_deref(), r.2.as_str())).collect();
    let abbreviated = format!("{}...", "d".repeat(197));
    assert_eq!(
        described,
        vec![
            (Some("001"), "leading zeros"),
            (Some("1.2"), "underscores become dots"),
            (Some("1.9"), ""),
            (Some("1.10"), abbreviated.as_str()),
            (None, "grants"),
        ],
        "1.9 < 1.10; leading zeros kept; descriptions over 200 characters abbreviated"
    );
    // A repeatable's checksum is of its text with placeholders replaced: a new value runs it
    // again; the same value does not.
    assert_eq!(rows[4].5, Some(checksum("SELECT 'reader';")));
    assert!(migrate(&t).await.unwrap().message.contains("up to date"));
    t.placeholders.insert("role".into(), "writer".into());
    migrate(&t).await.unwrap();
    let rows = history(&db).await;
    assert_eq!(rows.len(), 6);
    assert_eq!((rows[5].1.as_deref(), rows[5].5), (None, Some(checksum("SELECT 'writer';"))));
    let (set, _, _) = executor::info(&t, Options::default()).await.unwrap();
    let repeatable_states: Vec<State> =
        set.infos.iter().filter(|i| set.version_of(i).is_none()).map(|i| i.state).collect();
    assert_eq!(repeatable_states, vec![State::Superseded, State::Success]);
}

#[tokio::test]
async fn baseline_on_migrate_and_mixed_scripts_when_allowed() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__old.sql", "CREATE TABLE legacy (id int);")
        .write("V2__old.sql", "ALTER TABLE legacy ADD note text;")
        .write("V3__mixed.sql", "CREATE TABLE fresh (id int);\nCREATE INDEX CONCURRENTLY fresh_id ON fresh (id);\n");
    let mut c = conn(&db).await;
    sqlx::raw_sql("CREATE TABLE legacy (id int, note text);").execute(&mut c).await.unwrap();
    let mut t = target(&db, &dir);
    t.settings.baseline_on_migrate = true;
    t.settings.baseline_version = "2".into();
    t.settings.mixed = true;
    let outcome = migrate(&t).await.unwrap();
    assert_eq!(outcome.version_after, "3");
    assert!(outcome.warnings.iter().any(|w| w.contains("baselineOnMigrate")), "{:?}", outcome.warnings);
    let rows = history(&db).await;
    assert_eq!(
        rows,
        vec![
            row(1, Some("2"), "<< Flyway Baseline >>", "BASELINE", "<< Flyway Baseline >>", None),
            row(
                2,
                Some("3"),
                "mixed",
                "SQL",
                "V3__mixed.sql",
                Some(checksum("CREATE TABLE fresh (id int);\nCREATE INDEX CONCURRENTLY fresh_id ON fresh (id);\n"))
            ),
        ]
    );
    assert!(exists(&db, "fresh_id").await, "the mixed script ran outside a transaction");
}

#[tokio::test]
async fn scripts_with_a_byte_order_mark_crlf_and_non_ascii_run_and_checksum_as_flyway_does() {
    let db = TestDb::create().await.unwrap();
    let dir = Dir::new();
    // Written by an editor on Windows: a UTF-8 BOM, CRLF line ends, accents in data.
    let script = "CREATE TABLE cafés (nom text);\r\nALTER TABLE cafés ADD COLUMN prix int;\r\nINSERT INTO cafés VALUES ('Crème brûlée', 4);\r\n";
    dir.write("V1__bom.sql", &format!("\u{FEFF}{script}"));
    let outcome = migrate(&target(&db, &dir)).await.unwrap();
    assert_eq!(outcome.version_after, "1");
    let mut c = conn(&db).await;
    let name: String = sqlx::query_scalar("SELECT nom FROM cafés").fetch_one(&mut c).await.unwrap();
    assert_eq!(name, "Crème brûlée");
    // The checksum Flyway computes for the file: the same text without its BOM and line ends.
    let expected = checksum(&script.replace("\r\n", "\n"));
    assert_eq!(history(&db).await[0].5, Some(expected));
}
