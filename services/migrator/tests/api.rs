//! MigratorService over gRPC on loopback, against real PostgreSQL: runs started, watched,
//! listed and repeated by key; requests refused before anything is stored; runs of a crashed
//! migrator taken over by the next one.

mod common;

use hopngo_testkit::access::AuthedChannel;
use hopngo_testkit::access::channel;
use std::time::Duration;

use clap::Parser as _;
use common::{Dir, conn, exists, history};
use hopngo_migrator::server::{Args, run};
use hopngo_proto::migrator::{self as pb, migrator_service_client::MigratorServiceClient};
use hopngo_testkit::{
    db::TestDb,
    server::{InProcess, server_args},
};
use tokio_stream::StreamExt as _;
use tonic::Code;

struct Running {
    client: MigratorServiceClient<AuthedChannel>,
    server: InProcess,
}

async fn start(own: &TestDb, targets: &[(&str, &str)]) -> Running {
    let mut argv = server_args("hopngo-migrator", &own.url, "2s");
    argv.extend(["--lock-wait".into(), "3s".into()]);
    for (name, url) in targets {
        argv.push("--target".into());
        argv.push(format!("{name}={url}"));
        argv.push("--location-root".into());
        argv.push(format!("{name}={}", common::root().display()));
    }
    let args = Args::parse_from(argv);
    let server = InProcess::start(|shutdown, ready| run(args, shutdown, Some(ready))).await;
    let client = MigratorServiceClient::new(channel(&server.url()));
    Running { client, server }
}

impl Running {
    async fn start_run(&self, request: pb::StartMigrationRequest) -> pb::MigrationRun {
        self.client.clone().start_migration(request).await.unwrap().into_inner().run.unwrap()
    }

    async fn stop(self) {
        self.server.stop().await;
    }

    async fn finish(&self, id: &str) -> pb::MigrationRun {
        let mut stream = self
            .client
            .clone()
            .watch_migration_run(pb::WatchMigrationRunRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        let within = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(item) = stream.next().await {
                last = Some(item.unwrap().run.unwrap());
            }
        });
        within.await.expect("the run finished within 30 s");
        last.unwrap()
    }
}

fn target(database: &str, dir: &Dir) -> Option<pb::MigrationTarget> {
    Some(pb::MigrationTarget { database: database.into(), locations: vec![dir.location()], ..Default::default() })
}

fn start_request(database: &str, dir: &Dir, command: pb::MigrationCommand, key: &str) -> pb::StartMigrationRequest {
    pb::StartMigrationRequest {
        target: target(database, dir),
        command: command as i32,
        idempotency_key: key.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn runs_are_started_watched_listed_and_repeated_by_key() {
    let own = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__bookings.sql", "CREATE TABLE bookings (id bigint);")
        .write("V2__index.sql", "CREATE INDEX CONCURRENTLY bookings_id ON bookings (id);")
        .write("U2__index.sql", "DROP INDEX bookings_id;")
        .write("R__view.sql", "CREATE OR REPLACE VIEW v AS SELECT * FROM bookings;");
    let m = start(&own, &[("booking", &app.url)]).await;
    let mut c = m.client.clone();

    let info = c.info(pb::InfoRequest { target: target("booking", &dir) }).await.unwrap().into_inner();
    let states: Vec<i32> = info.migrations.iter().map(|i| i.state).collect();
    assert_eq!(states, vec![pb::MigrationState::Pending as i32; 3]);
    assert_eq!(
        info.migrations[0].checksum,
        Some(hopngo_migrator::domain::checksum::checksum("CREATE TABLE bookings (id bigint);"))
    );
    assert_eq!(info.current_version, "");
    let undoable: Vec<bool> = info.migrations.iter().map(|i| i.undoable).collect();
    assert_eq!(undoable, vec![false, true, false], "only V2 has a U script");

    let started = m.start_run(start_request("booking", &dir, pb::MigrationCommand::Migrate, "release-1/0/1")).await;
    let done = m.finish(&started.id).await;
    assert_eq!(done.phase, pb::MigrationPhase::Succeeded as i32, "{}", done.message);
    assert_eq!((done.version_before.as_str(), done.version_after.as_str()), ("", "2"));
    let applied: Vec<(&str, &str, bool)> =
        done.applied.iter().map(|a| (a.version.as_str(), a.action.as_str(), a.transactional)).collect();
    assert_eq!(applied, vec![("1", "applied", true), ("2", "applied", false), ("", "applied", true)]);
    assert_eq!(history(&app).await.len(), 3);

    // The same key: the same run, nothing run again. The same key for something else: refused.
    let again = m.start_run(start_request("booking", &dir, pb::MigrationCommand::Migrate, "release-1/0/1")).await;
    assert_eq!(again.id, started.id);
    let status = c
        .start_migration(start_request("booking", &dir, pb::MigrationCommand::Undo, "release-1/0/1"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("idempotency_key:"), "{}", status.message());

    let validate = c
        .validate(pb::ValidateRequest { target: target("booking", &dir), fail_on_pending: true })
        .await
        .unwrap()
        .into_inner();
    assert!(validate.valid, "{:?}", validate.problems);
    dir.write("V1__bookings.sql", "CREATE TABLE bookings (id int);");
    let validate = c
        .validate(pb::ValidateRequest { target: target("booking", &dir), fail_on_pending: false })
        .await
        .unwrap()
        .into_inner();
    assert!(!validate.valid);
    assert_eq!(validate.problems[0].kind, "CHECKSUM_MISMATCH");
    assert_eq!(validate.problems[0].version, "1");
    dir.write("V1__bookings.sql", "CREATE TABLE bookings (id bigint);");

    // Undo of the previous version (a non-transactional index drop is fine either way).
    let undo = m.start_run(start_request("booking", &dir, pb::MigrationCommand::Undo, "")).await;
    let undone = m.finish(&undo.id).await;
    assert_eq!(undone.phase, pb::MigrationPhase::Succeeded as i32, "{}", undone.message);
    assert_eq!(undone.version_after, "1");
    assert!(undone.warnings.iter().any(|w| w.contains("repeatable")), "{:?}", undone.warnings);
    let info = c.info(pb::InfoRequest { target: target("booking", &dir) }).await.unwrap().into_inner();
    assert_eq!(info.migrations[1].state, pb::MigrationState::Undone as i32);
    assert_eq!(info.current_version, "1");

    let list = c
        .list_migration_runs(pb::ListMigrationRunsRequest {
            database: "booking".into(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.runs.len(), 1);
    assert_eq!(list.runs[0].id, undo.id, "newest first");
    let next = c
        .list_migration_runs(pb::ListMigrationRunsRequest {
            database: "booking".into(),
            page_size: 10,
            page_token: list.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.runs.iter().map(|r| r.id.clone()).collect::<Vec<_>>(), vec![started.id]);
    m.stop().await;
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_stored() {
    let own = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let unreachable = format!("postgres://postgres@127.0.0.1:{port}/x");
    let wrong_user = app.url.replace("postgres@", "intruder@");
    let m = start(&own, &[("app", &app.url), ("down", &unreachable), ("stranger", &wrong_user)]).await;
    let client = m.client.clone();
    let mut c = m.client.clone();
    let refused = |status: tonic::Status, code: Code, starts: &str| {
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().starts_with(starts) || status.message().contains(starts),
            "{:?} does not name {starts:?}",
            status.message()
        );
    };
    let start = |req: pb::StartMigrationRequest| {
        let mut c = client.clone();
        async move { c.start_migration(req).await.unwrap_err() }
    };
    refused(
        start(start_request("nope", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::InvalidArgument,
        "target.database: unknown database \"nope\" (configured: app, down, stranger)",
    );
    refused(
        start(pb::StartMigrationRequest { target: target("app", &dir), ..Default::default() }).await,
        Code::InvalidArgument,
        "command: is required",
    );
    let mut bad_version = start_request("app", &dir, pb::MigrationCommand::Migrate, "");
    bad_version.target_version = "1.x".into();
    refused(start(bad_version).await, Code::InvalidArgument, "target_version: Version may only contain");
    for negative in ["-1", "1.-2"] {
        let mut request = start_request("app", &dir, pb::MigrationCommand::Migrate, "");
        request.target_version = negative.into();
        refused(start(request).await, Code::InvalidArgument, "target_version: ");
        let mut request = start_request("app", &dir, pb::MigrationCommand::Undo, "");
        request.target_version = negative.into();
        refused(start(request).await, Code::InvalidArgument, "is negative");
    }
    refused(
        start(start_request("down", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::Unavailable,
        "database down cannot be reached",
    );
    refused(
        start(start_request("stranger", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::FailedPrecondition,
        "database stranger: role \"intruder\" does not exist",
    );
    let no_locations = pb::StartMigrationRequest {
        target: Some(pb::MigrationTarget { database: "app".into(), ..Default::default() }),
        command: pb::MigrationCommand::Migrate as i32,
        ..Default::default()
    };
    refused(start(no_locations).await, Code::InvalidArgument, "target.locations: no locations given");
    // Only configured locations (and directories below them, symlinks resolved) are read: a
    // request cannot point the migrator at a directory of its choosing.
    let outside = std::env::temp_dir().join(format!("hopngo-outside-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("V9__evil.sql"), "CREATE TABLE evil (id int);").unwrap();
    std::os::unix::fs::symlink(&outside, dir.path.join("link")).unwrap();
    let escapes = [
        outside.display().to_string(),
        format!("filesystem:{}", outside.display()),
        dir.path.join("link").display().to_string(),
        format!("{}/../../{}", dir.location(), outside.file_name().unwrap().to_str().unwrap()),
        "/etc".to_string(),
        "/no/such/dir".to_string(),
    ];
    for location in &escapes {
        let target = Some(pb::MigrationTarget {
            database: "app".into(),
            locations: vec![location.clone()],
            ..Default::default()
        });
        let request = pb::StartMigrationRequest {
            target: target.clone(),
            command: pb::MigrationCommand::Migrate as i32,
            ..Default::default()
        };
        refused(start(request).await, Code::InvalidArgument, "target.locations[0]: ");
        let status =
            c.validate(pb::ValidateRequest { target: target.clone(), ..Default::default() }).await.unwrap_err();
        refused(status, Code::InvalidArgument, "is not a location configured for database \"app\"");
        let status = c.info(pb::InfoRequest { target }).await.unwrap_err();
        refused(status, Code::InvalidArgument, "is not a location configured for database \"app\"");
    }
    std::fs::remove_file(dir.path.join("link")).unwrap();
    let _ = std::fs::remove_dir_all(&outside);
    let mut patterns = start_request("app", &dir, pb::MigrationCommand::Migrate, "");
    patterns.target.as_mut().unwrap().ignore_migration_patterns =
        Some(pb::IgnorePatterns { patterns: vec!["*:gone".into()] });
    refused(
        start(patterns).await,
        Code::InvalidArgument,
        "target.ignore_migration_patterns.patterns[0]: Invalid migration state 'gone'",
    );

    dir.write("V2_oops.sql", "SELECT 1;");
    refused(
        start(start_request("app", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::InvalidArgument,
        "target.locations: V2_oops.sql: Invalid versioned migration name format",
    );
    let status = c.info(pb::InfoRequest { target: target("app", &dir) }).await.unwrap_err();
    refused(status, Code::InvalidArgument, "V2_oops.sql");
    dir.remove("V2_oops.sql").write("V1.0__twin.sql", "SELECT 1;");
    refused(
        start(start_request("app", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::InvalidArgument,
        "Found more than one migration with version 1",
    );
    dir.remove("V1.0__twin.sql").write("V2__ph.sql", "SELECT '${region}';");
    refused(
        start(start_request("app", &dir, pb::MigrationCommand::Migrate, "")).await,
        Code::InvalidArgument,
        "V2__ph.sql: No value provided for placeholder: ${region}",
    );
    dir.remove("V2__ph.sql");

    // Applied, then an undo with no U script: refused, nothing undone.
    let run = m.start_run(start_request("app", &dir, pb::MigrationCommand::Migrate, "")).await;
    assert_eq!(m.finish(&run.id).await.phase, pb::MigrationPhase::Succeeded as i32);
    let mut undo = start_request("app", &dir, pb::MigrationCommand::Undo, "");
    undo.undo_all = true;
    refused(
        start(undo).await,
        Code::InvalidArgument,
        "no undo script (U<version>__<description>.sql) for 1 (V1__a.sql)",
    );
    assert!(exists(&app, "a").await);
    let list = c.list_migration_runs(pb::ListMigrationRunsRequest::default()).await.unwrap().into_inner();
    assert_eq!(list.runs.len(), 1, "only the one accepted run is stored");
    m.stop().await;
}

#[tokio::test]
async fn a_crashed_migrators_runs_are_taken_over() {
    let own = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let dir = Dir::new();
    dir.write("V1__a.sql", "CREATE TABLE a (id int);").write("V2__b.sql", "CREATE INDEX CONCURRENTLY ai ON a (id);");
    // A first migrator stores the schema, then is gone.
    let m = start(&own, &[("app", &app.url)]).await;
    m.stop().await;
    let mut c = conn(&own).await;
    let request = |command: &str| {
        serde_json::json!({
            "database": "app", "locations": [dir.location()], "schema": "public", "table": "flyway_schema_history",
            "placeholders": {}, "ignore": null, "command": command, "target_version": "", "out_of_order": false, "undo_all": false
        })
        .to_string()
    };
    // Run 1 died before doing anything (no lease left): the next migrator carries it out.
    sqlx::query(
        "INSERT INTO migrator.runs (id, database, request, phase, started_at, lease_owner, lease_until) \
         VALUES ($1, 'app', $2, 'RUNNING', now(), gen_random_uuid(), now() - interval '1 minute')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(request("migrate"))
    .execute(&mut c)
    .await
    .unwrap();
    let m = start(&own, &[("app", &app.url)]).await;
    let runs =
        m.client.clone().list_migration_runs(pb::ListMigrationRunsRequest::default()).await.unwrap().into_inner().runs;
    let taken = m.finish(&runs[0].id).await;
    assert_eq!(taken.phase, pb::MigrationPhase::Succeeded as i32, "{}", taken.message);
    assert_eq!(history(&app).await.len(), 2);
    m.stop().await;

    // Run 2 died in the middle of a non-transactional migration: recorded as failed, not re-run.
    dir.write("V3__c.sql", "CREATE INDEX CONCURRENTLY ai2 ON a (id);");
    let in_progress = serde_json::json!({
        "version": "3", "description": "c", "kind": "SQL", "script": "V3__c.sql", "checksum": 7, "rank": 3,
        "execution_time_ms": 0, "action": "applied", "transactional": false
    })
    .to_string();
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO migrator.runs (id, database, request, phase, started_at, in_progress, lease_owner, lease_until) \
         VALUES ($1, 'app', $2, 'RUNNING', now(), $3, gen_random_uuid(), now() - interval '1 minute')",
    )
    .bind(id)
    .bind(request("migrate"))
    .bind(in_progress)
    .execute(&mut c)
    .await
    .unwrap();
    let m = start(&own, &[("app", &app.url)]).await;
    let ended = m.finish(&id.to_string()).await;
    assert_eq!(ended.phase, pb::MigrationPhase::Failed as i32);
    assert!(ended.interrupted);
    assert!(ended.message.contains("may have partly run"), "{}", ended.message);
    let rows = history(&app).await;
    assert_eq!(rows.len(), 3);
    assert_eq!((rows[2].1.as_deref(), rows[2].7), (Some("3"), false), "recorded as failed: {rows:?}");
    m.stop().await;
}
