//! Migrator benchmark (`cargo bench -p hopngo-migrator`), on a throwaway PostgreSQL with fsync on:
//!
//! 1. Applying 1,000 small migrations (one statement each) with `migrate`, against the same SQL
//!    files run once by `psql` (one process, `-f` per file, autocommit: one commit per file, as
//!    the migrator makes one per migration) in the same run, on fresh databases of one cluster;
//!    three rounds, alternating. Target: ratio ≤ 1.5.
//! 2. `Info` over gRPC (a migrator served on loopback) on a history of 10,000 rows with their
//!    10,000 scripts: reading the scripts, checksumming them, reading the history, computing
//!    states, answering; 20 calls.

use hopngo_testkit::access::channel;
use std::{net::SocketAddr, path::Path, time::Duration, time::Instant};

use clap::Parser as _;
use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use hopngo_migrator::{
    domain::{
        checksum::checksum,
        info::{DEFAULT_IGNORE_PATTERNS, IgnorePattern, Target as Upto},
    },
    executor::{self, Change, DatabaseSettings, Progress, Target},
    history::Table,
};
use hopngo_proto::migrator::{self as pb, migrator_service_client::MigratorServiceClient};
use sqlx::{Connection as _, PgConnection};
use tokio_util::sync::CancellationToken;

const MIGRATIONS: usize = 1_000;
const HISTORY: usize = 10_000;
const ROUNDS: usize = 3;
const INFO_CALLS: usize = 20;

struct Quiet;

impl Progress for Quiet {
    async fn started(&mut self, _: &str) {}
    async fn changed(&mut self, _: Change) {}
    async fn non_transactional(&mut self, _: Option<Change>) {}
}

fn script(n: usize) -> String {
    format!("CREATE TABLE bench_{n:05} (id int PRIMARY KEY, note text);\n")
}

fn write_scripts(dir: &Path, count: usize) -> Vec<std::path::PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    (1..=count)
        .map(|n| {
            let path = dir.join(format!("V{n}__create_bench_{n:05}.sql"));
            std::fs::write(&path, script(n)).unwrap();
            path
        })
        .collect()
}

async fn create_database(admin: &str, name: &str) -> String {
    let mut c = PgConnection::connect(admin).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    admin.rsplit_once('/').map(|(base, _)| format!("{base}/{name}")).unwrap()
}

fn target(url: &str, dir: &Path) -> Target {
    Target {
        database: "bench".into(),
        settings: DatabaseSettings {
            url: url.to_string(),
            locations: vec![],
            location_roots: vec![],
            installed_by: None,
            lock_wait: Duration::from_secs(10),
            baseline_on_migrate: false,
            mixed: false,
            baseline_version: "1".into(),
        },
        locations: vec![dir.display().to_string()],
        table: Table { schema: "public".into(), table: "flyway_schema_history".into() },
        placeholders: Default::default(),
        ignore: DEFAULT_IGNORE_PATTERNS.iter().map(|p| IgnorePattern::parse(p).unwrap()).collect(),
    }
}

fn psql() -> std::path::PathBuf {
    let out = std::process::Command::new("sh").args(["-c", "command -v psql"]).output().unwrap();
    let found = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !found.is_empty() {
        return found.into();
    }
    let mut dirs: Vec<_> =
        std::fs::read_dir("/usr/lib/postgresql").unwrap().flatten().map(|e| e.path().join("bin/psql")).collect();
    dirs.sort();
    dirs.pop().expect("psql")
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let pg = EphemeralPostgres::start(&PgOptions { durable: true, ..PgOptions::default() }).unwrap();
    let admin = pg.url("postgres");
    let work = std::env::temp_dir().join(format!("hopngo-migrator-bench-{}", std::process::id()));
    let scripts_dir = work.join("scripts");
    let files = write_scripts(&scripts_dir, MIGRATIONS);
    let psql = psql();
    println!("== 1. {MIGRATIONS} migrations, one statement each (PostgreSQL fsync on)");
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let psql_url = create_database(&admin, &format!("psql_{round}")).await;
        let mut cmd = std::process::Command::new(&psql);
        cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &psql_url]);
        for f in &files {
            cmd.arg("-f").arg(f);
        }
        let started = Instant::now();
        let status = cmd.status().unwrap();
        let psql_time = started.elapsed();
        assert!(status.success(), "psql failed");

        let url = create_database(&admin, &format!("migrator_{round}")).await;
        let t = target(&url, &scripts_dir);
        let started = Instant::now();
        let outcome = executor::migrate(&t, Upto::Latest, false, &mut Quiet).await.unwrap();
        let ours = started.elapsed();
        assert_eq!(outcome.version_after, MIGRATIONS.to_string());
        let ratio = ours.as_secs_f64() / psql_time.as_secs_f64();
        ratios.push(ratio);
        println!(
            "round {}: psql {:.2} s ({:.2} ms/file), migrator {:.2} s ({:.2} ms/migration), ratio {ratio:.2}",
            round + 1,
            psql_time.as_secs_f64(),
            psql_time.as_secs_f64() * 1000.0 / MIGRATIONS as f64,
            ours.as_secs_f64(),
            ours.as_secs_f64() * 1000.0 / MIGRATIONS as f64,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "migrate / psql ratio: median {:.2} (min {:.2}, max {:.2}; target ≤ 1.5)",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );

    println!("== 2. Info on a history of {HISTORY} rows");
    let info_dir = work.join("history");
    std::fs::create_dir_all(&info_dir).unwrap();
    let mut ranks = Vec::with_capacity(HISTORY);
    let mut versions = Vec::with_capacity(HISTORY);
    let mut descriptions = Vec::with_capacity(HISTORY);
    let mut names = Vec::with_capacity(HISTORY);
    let mut sums = Vec::with_capacity(HISTORY);
    for n in 1..=HISTORY {
        let name = format!("V{n}__create_bench_{n:05}.sql");
        let text = script(n);
        std::fs::write(info_dir.join(&name), &text).unwrap();
        ranks.push(n as i32);
        versions.push(n.to_string());
        descriptions.push(format!("create bench {n:05}"));
        names.push(name);
        sums.push(checksum(&text));
    }
    let url = create_database(&admin, "info").await;
    let t = target(&url, &info_dir);
    let mut c = PgConnection::connect(&url).await.unwrap();
    t.table.create(&mut c, None).await.unwrap();
    sqlx::query(
        "INSERT INTO flyway_schema_history (installed_rank, version, description, type, script, checksum, installed_by, execution_time, success) \
         SELECT r, v, d, 'SQL', s, c, 'postgres', 1, true FROM unnest($1::int[], $2::text[], $3::text[], $4::text[], $5::int[]) AS x(r, v, d, s, c)",
    )
    .bind(&ranks)
    .bind(&versions)
    .bind(&descriptions)
    .bind(&names)
    .bind(&sums)
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();

    let own = create_database(&admin, "migrator_own").await;
    let mut argv = hopngo_testkit::server::server_args("hopngo-migrator", &own, "1s");
    argv.extend([
        "--target".to_string(),
        format!("bench={url}"),
        "--locations".into(),
        format!("bench={}", info_dir.display()),
        "--log".into(),
        "warn".into(),
    ]);
    let args = hopngo_migrator::server::Args::parse_from(argv);
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(hopngo_migrator::server::run(args, shutdown.clone(), Some(tx)));
    let addr: SocketAddr = rx.await.unwrap().grpc;
    let mut client = MigratorServiceClient::new(channel(&format!("http://{addr}"))).max_decoding_message_size(64 << 20);
    let request = || pb::InfoRequest {
        target: Some(pb::MigrationTarget {
            database: "bench".into(),
            locations: vec![info_dir.display().to_string()],
            ..Default::default()
        }),
    };
    let mut times = Vec::new();
    for _ in 0..INFO_CALLS {
        let started = Instant::now();
        let info = client.info(request()).await.unwrap().into_inner();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        assert_eq!(info.migrations.len(), HISTORY);
        assert_eq!(info.current_version, HISTORY.to_string());
        assert!(info.migrations.iter().all(|m| m.state == pb::MigrationState::Success as i32));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "Info over gRPC ({INFO_CALLS} calls, {HISTORY} rows and scripts): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        quantile(&times, 0.5),
        quantile(&times, 0.95),
        times[times.len() - 1]
    );
    // The migrator runs in this process: its peak is at most the process's.
    println!(
        "migrator peak RSS (this process, the migrator in it): {:.1} MiB",
        hopngo_testkit::measure::proc_status(std::process::id(), "VmHWM:") as f64 / 1024.0
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&work);
}
