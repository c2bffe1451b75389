//! The migrator in the embedded stack, every piece its own process (deployer, migrator,
//! scheduler) on real PostgreSQL: a release's migrate step runs before its canary starts (no
//! canary exists while the migration runs), and an abort undoes the release's migrations after
//! traffic is back on the previous version. Also `hopctl migrate` against the migrator.

use hopngo_e2e::AuthedChannel;
use hopngo_e2e::channel;
use std::time::Duration;

use hopngo_e2e::{Proc, binary, create_booking_release, until};
use hopngo_proto::{
    deployer::{self as dpb, deployer_service_client::DeployerServiceClient},
    migrator::{self as mpb, migrator_service_client::MigratorServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{db::TestDb, fakes::Fakes};
use sqlx::Connection as _;

fn config(demo: &str, scripts: &str) -> String {
    format!(
        r#"environments:
  - name: staging
services:
  - name: booking
    replicas: 1
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {{}}
    migrations:
      database: booking
      locations: ["{scripts}"]
      onAbort: undo
    local:
      command: ["{demo}", --name, booking, --version, "{{version}}", --port, "{{port}}"]
"#
    )
}

async fn tracks(deployer: &mut DeployerServiceClient<AuthedChannel>) -> Vec<(i32, String)> {
    let status = deployer
        .get_target_status(dpb::GetTargetStatusRequest { service: "booking".into(), environment: "staging".into() })
        .await
        .map(|r| r.into_inner().status.unwrap_or_default())
        .unwrap_or_default();
    status.tracks.iter().map(|t| (t.track, t.artifact.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_step_runs_before_the_canary_and_an_abort_undoes_it() {
    let db = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-migrations-{}", uuid_like()));
    let scripts = dir.join("booking");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("V1__create_bookings.sql"), "CREATE TABLE bookings (id bigint PRIMARY KEY);\n")
        .unwrap();
    let demo = binary("hopngo-demo-service", "hopngo-deployer").unwrap();
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, config(&demo.display().to_string(), &scripts.display().to_string())).unwrap();
    let common = |extra: &[&str]| -> Vec<String> {
        ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &db.url, "--drain-timeout", "1s"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let deployer = Proc::start(
        &binary("hopngo-deployer", "hopngo-deployer").unwrap(),
        &common(&["--delivery-config", config_file.to_str().unwrap(), "--log-dir", dir.join("logs").to_str().unwrap()]),
        &[],
    )
    .await
    .unwrap();
    let target = format!("booking={}", app.url);
    let locations = format!("booking={}", scripts.display());
    let migrator = Proc::start(
        &binary("hopngo-migrator", "hopngo-migrator").unwrap(),
        &common(&["--target", &target, "--locations", &locations]),
        &[],
    )
    .await
    .unwrap();
    let scheduler = Proc::start(
        &binary("hopngo-scheduler", "hopngo-scheduler").unwrap(),
        &common(&[
            "--deployer-url",
            &deployer.grpc,
            "--analyzer-url",
            &fakes.analyzer_server.url(),
            "--migrator-url",
            &migrator.grpc,
            "--notifier-url",
            &fakes.notifier_server.url(),
            "--apply-config",
            config_file.to_str().unwrap(),
        ]),
        &[],
    )
    .await
    .unwrap();
    let mut releases = ReleaseServiceClient::new(channel(&scheduler.grpc));
    let mut deployer_client = DeployerServiceClient::new(channel(&deployer.grpc));
    let mut migrator_client = MigratorServiceClient::new(channel(&migrator.grpc));
    let mut app_conn = sqlx::PgConnection::connect(&app.url).await.unwrap();

    // The first release migrates to V1, then deploys.
    let first = create_booking_release(&mut releases, "1.0.0").await;
    let first = until(&mut releases, &first.id, 60, |r| r.settled).await;
    assert_eq!(first.phase, pb::ReleasePhase::Succeeded as i32, "{}", first.message);
    assert_eq!((first.steps[0].name.as_str(), first.steps[1].name.as_str()), ("preflight", "migrate"));
    // Preflight asked the real deployer and migrator before anything changed.
    let checks: Vec<(&str, bool)> = first.preflight_checks.iter().map(|c| (c.name.as_str(), c.ok)).collect();
    assert!(checks.contains(&("backend/command", true)), "{checks:?}");
    assert!(checks.contains(&("migrations/booking", true)), "{checks:?}");

    // V2 takes a while; while it runs, there is no canary.
    std::fs::write(
        scripts.join("V2__add_reference.sql"),
        "SELECT pg_sleep(2);\nALTER TABLE bookings ADD COLUMN reference text;\n",
    )
    .unwrap();
    std::fs::write(scripts.join("U2__add_reference.sql"), "ALTER TABLE bookings DROP COLUMN reference;\n").unwrap();
    let second = create_booking_release(&mut releases, "2.0.0").await;
    let migrating = until(&mut releases, &second.id, 30, |r| r.message.starts_with("migrating")).await;
    let run_id = migrating.steps[1].run_id.clone();
    let mut saw_running = 0;
    loop {
        let run = migrator_client
            .get_migration_run(mpb::GetMigrationRunRequest { id: run_id.clone() })
            .await
            .unwrap()
            .into_inner()
            .run
            .unwrap();
        if run.finished_at.is_some() {
            assert_eq!(run.phase, mpb::MigrationPhase::Succeeded as i32, "{}", run.message);
            assert_eq!((run.version_before.as_str(), run.version_after.as_str()), ("1", "2"));
            break;
        }
        let t = tracks(&mut deployer_client).await;
        assert!(t.iter().all(|(_, artifact)| artifact == "1.0.0"), "no canary while migrating: {t:?}");
        saw_running += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_running >= 5, "the migration was watched while it ran ({saw_running} looks)");
    let paused = until(&mut releases, &second.id, 60, |r| r.phase == pb::ReleasePhase::Paused as i32).await;
    assert_eq!(paused.canary_weight, 50);
    let has_reference: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'bookings' AND column_name = 'reference')",
    )
    .fetch_one(&mut app_conn)
    .await
    .unwrap();
    assert!(has_reference);

    // Abort: traffic back on 1.0.0, then the schema back to version 1.
    let abort = pb::AbortReleaseRequest { id: second.id.clone(), reason: "e2e".into() };
    releases.abort_release(abort).await.unwrap();
    let aborted = until(&mut releases, &second.id, 60, |r| r.settled).await;
    assert_eq!(aborted.phase, pb::ReleasePhase::Aborted as i32);
    assert!(aborted.message.contains("schema of booking undone to version 1 (was 2)"), "{}", aborted.message);
    let has_reference: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'bookings' AND column_name = 'reference')",
    )
    .fetch_one(&mut app_conn)
    .await
    .unwrap();
    assert!(!has_reference, "V2 was undone");
    let t = tracks(&mut deployer_client).await;
    assert!(t.iter().all(|(_, artifact)| artifact == "1.0.0"), "{t:?}");
    let rows: Vec<(i32, Option<String>, String, String)> = sqlx::query_as(
        "SELECT installed_rank, version, type, script FROM flyway_schema_history ORDER BY installed_rank",
    )
    .fetch_all(&mut app_conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            (1, Some("1".into()), "SQL".into(), "V1__create_bookings.sql".into()),
            (2, Some("2".into()), "SQL".into(), "V2__add_reference.sql".into()),
            (3, Some("2".into()), "DELETE".into(), "U2__add_reference.sql".into()),
        ]
    );
    // The notifier heard about it.
    let events = fakes.notifier.events();
    assert!(
        events.iter().any(|e| e.r#type == "dev.cdeventsx.hopngo-schema.undone.0.1.0"),
        "{:?}",
        events.iter().map(|e| e.r#type.clone()).collect::<Vec<_>>()
    );

    // hopctl against the same migrator: info shows the undone version, validate passes.
    let hopctl = binary("hopctl", "hopctl").unwrap();
    // Running migrations directly is for the scheduler and admins.
    let admin = hopngo_e2e::hopctl_env(hopngo_testkit::access::ADMIN_USER, &[hopngo_testkit::access::ADMIN_GROUP]);
    let scripts_dir = scripts.display().to_string();
    let out = tokio::process::Command::new(&hopctl)
        .envs(admin.clone())
        .args(["--migrator", &migrator.grpc, "migrate", "info", "booking", "--location", &scripts_dir, "-o", "json"])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["currentVersion"], "1");
    let states: Vec<&str> =
        info["migrations"].as_array().unwrap().iter().map(|m| m["state"].as_str().unwrap()).collect();
    assert_eq!(states, vec!["SUCCESS", "UNDONE", "SUCCESS", "PENDING"]);
    let out = tokio::process::Command::new(&hopctl)
        .envs(admin.clone())
        .args(["--migrator", &migrator.grpc, "migrate", "validate", "booking", "--location", &scripts_dir])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    // A bad name: a one-line error, exit code 1, nothing run.
    std::fs::write(scripts.join("V3_typo.sql"), "SELECT 1;").unwrap();
    let out = tokio::process::Command::new(&hopctl)
        .envs(admin.clone())
        .args(["--migrator", &migrator.grpc, "migrate", "migrate", "booking", "--location", &scripts_dir])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(
            "hopctl: InvalidArgument: target.locations: V3_typo.sql: Invalid versioned migration name format"
        ),
        "{stderr}"
    );
    std::fs::remove_file(scripts.join("V3_typo.sql")).unwrap();
    let out = tokio::process::Command::new(&hopctl)
        .envs(admin.clone())
        .args(["--migrator", &migrator.grpc, "migrate", "migrate", "booking", "--location", &scripts_dir])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Version:  1 -> 2"), "{stdout}");

    drop(scheduler);
    drop(migrator);
    drop(deployer);
    let _ = std::fs::remove_dir_all(&dir);
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
}
