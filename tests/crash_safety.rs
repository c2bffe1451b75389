//! Crash safety with real processes: the scheduler binary is killed with SIGKILL in the middle of
//! releases and started again; two scheduler processes share one database. The other services are
//! recording fakes on loopback, so every outward call can be checked afterwards.

use hopngo_e2e::channel;
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use hopngo_e2e::{Proc, binary, create_release, scrape_sum};
use hopngo_proto::{
    analyzer::AnalysisPhase,
    config::{ApplyConfigRequest, config_service_client::ConfigServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{db::TestDb, fakes::Fakes};

fn config(services: usize) -> String {
    let mut yaml = String::from(
        "environments:\n  - name: staging\n    progressDeadline: 60s\nanalysisTemplates:\n  - name: slo\n    metrics:\n      - name: errors\n        successCondition: result < 0.01\n        provider: {prometheus: {address: \"http://127.0.0.1:9090\", query: x}}\nservices:\n",
    );
    for i in 0..services {
        yaml.push_str(&format!(
            "  - name: svc-{i}\n    replicas: 2\n    strategy:\n      canary:\n        steps:\n          - setWeight: 20\n          - pause: {{duration: 1s}}\n          - analysis: {{templates: [slo]}}\n          - setWeight: 60\n          - pause: {{duration: 1s}}\n          - setWeight: 100\n        analysis: {{templates: [slo], startingStep: 1}}\n"
        ));
    }
    yaml
}

fn args(db: &str, fakes: &Fakes, config_file: &str) -> Vec<String> {
    [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--database-url",
        db,
        "--poll-interval",
        "50ms",
        "--call-timeout",
        "1s",
        "--workers",
        "4",
        "--db-max-connections",
        "12",
        "--apply-config",
        config_file,
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(fakes.endpoint_args())
    .collect()
}

/// Polls (through whichever scheduler is up at `url()`) until every release is settled.
async fn wait_settled(ids: &[String], url: &str, secs: u64) -> Vec<pb::Release> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let mut done = Vec::new();
        let mut client = ReleaseServiceClient::new(channel(url));
        for id in ids {
            if let Ok(r) = client.get_release(pb::GetReleaseRequest { id: id.clone() }).await {
                let r = r.into_inner().release.unwrap();
                if r.settled {
                    done.push(r);
                }
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        assert!(tokio::time::Instant::now() < deadline, "{} of {} releases settled in {secs}s", done.len(), ids.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every effect was asked for under one key only, and every key always asked for the same effect.
fn check_idempotency(fakes: &Fakes) {
    let mut by_key: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut by_effect: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for call in fakes.deployer.calls() {
        let effect = format!("{:?}", call.target);
        by_key.entry(call.key.clone()).or_default().insert(effect.clone());
        let release = call.key.split('/').next().unwrap_or_default().to_string();
        by_effect.entry(format!("{release} {effect}")).or_default().insert(call.key);
    }
    for (key, effects) in &by_key {
        assert_eq!(effects.len(), 1, "key {key} was used for different desired states: {effects:?}");
    }
    for (effect, keys) in &by_effect {
        assert_eq!(keys.len(), 1, "one effect applied under several keys: {effect} {keys:?}");
    }
    let runs = fakes.analyzer.runs();
    let keys: BTreeSet<_> = runs.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys.len(), runs.len(), "one analysis run per key");
}

async fn check_history(db: &str, ids: &[String]) {
    let pool = sqlx::PgPool::connect(db).await.unwrap();
    for id in ids {
        let uuid: sqlx::types::Uuid = id.parse().unwrap();
        let seqs: Vec<i64> =
            sqlx::query_scalar("SELECT sequence FROM scheduler.release_events WHERE release_id = $1 ORDER BY sequence")
                .bind(uuid)
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(seqs, (1..=seqs.len() as i64).collect::<Vec<_>>(), "events of {id} have no gaps or repeats");
        let version: i64 = sqlx::query_scalar("SELECT version FROM scheduler.release_state WHERE release_id = $1")
            .bind(uuid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(version, seqs.len() as i64);
        let audit: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.audit_log WHERE release_id = $1")
            .bind(uuid)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(audit, seqs.len() as i64, "one audit row per transition");
    }
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_release_loses_nothing_and_repeats_no_effect() {
    const SERVICES: usize = 6;
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    fakes.analyzer.polls_before_verdict(10);
    fakes.deployer.latency(Duration::from_millis(5));
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, config(SERVICES)).unwrap();
    let bin = binary("hopngo-scheduler", "hopngo-scheduler").unwrap();
    let argv = args(&db.url, &fakes, config_file.to_str().unwrap());
    let mut proc = Proc::start(&bin, &argv, &[]).await.unwrap();
    let mut client = ReleaseServiceClient::new(channel(&proc.grpc));
    let mut seeds = Vec::new();
    for i in 0..SERVICES {
        seeds.push(create_release(&mut client, &format!("svc-{i}"), "app:1").await.id);
    }
    wait_settled(&seeds, &proc.grpc, 30).await;
    let mut ids = Vec::new();
    for i in 0..SERVICES {
        ids.push(create_release(&mut client, &format!("svc-{i}"), "app:2").await.id);
    }
    // Three SIGKILLs at different points of the releases, each while releases are in flight.
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let uuids: Vec<sqlx::types::Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    for pause_ms in [300u64, 600, 600] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        let in_flight: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scheduler.release_state WHERE NOT settled AND release_id = ANY($1)",
        )
        .bind(&uuids)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(in_flight > 0, "the kill lands mid-release");
        proc.kill9().await.unwrap();
        proc = Proc::start(&bin, &argv, &[]).await.unwrap();
    }
    pool.close().await;
    let releases = wait_settled(&ids, &proc.grpc, 90).await;
    for r in &releases {
        assert_eq!(r.phase, pb::ReleasePhase::Succeeded as i32, "{}: {}", r.service, r.message);
        assert_eq!(r.canary_weight, 100);
    }
    check_idempotency(&fakes);
    check_history(&db.url, &ids).await;
    // Every committed event reaches the notifier (duplicates after a crash are allowed, by id).
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let total: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduler.release_events").fetch_one(&pool).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (fakes.notifier.events().len() as i64) < total {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {total} events published",
            fakes.notifier.events().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(fakes.notifier.events().len() as i64, total);
    let code = proc.terminate(Duration::from_secs(20)).await.unwrap();
    assert_eq!(code, Some(0), "SIGTERM drains and exits cleanly");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_share_the_work_and_never_drive_one_release_at_once() {
    const SERVICES: usize = 12;
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    fakes.analyzer.polls_before_verdict(2);
    fakes.analyzer.verdict("*", AnalysisPhase::Successful);
    fakes.deployer.latency(Duration::from_millis(30));
    let dir = std::env::temp_dir().join(format!("hopngo-e2e2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, config(SERVICES)).unwrap();
    let bin = binary("hopngo-scheduler", "hopngo-scheduler").unwrap();
    let argv = args(&db.url, &fakes, config_file.to_str().unwrap());
    let a = Proc::start(&bin, &argv, &[]).await.unwrap();
    let b = Proc::start(&bin, &argv, &[]).await.unwrap();
    let mut client = ReleaseServiceClient::new(channel(&a.grpc));
    let mut config_client = ConfigServiceClient::new(channel(&b.grpc));
    let applied = config_client.apply_config(ApplyConfigRequest { yaml: config(SERVICES) }).await.unwrap().into_inner();
    assert!(!applied.changed, "both replicas applied the same document; it is stored once");
    let mut seeds = Vec::new();
    for i in 0..SERVICES {
        seeds.push(create_release(&mut client, &format!("svc-{i}"), "app:1").await.id);
    }
    wait_settled(&seeds, &a.grpc, 60).await;
    let mut ids = Vec::new();
    for i in 0..SERVICES {
        ids.push(create_release(&mut client, &format!("svc-{i}"), "app:2").await.id);
    }
    let releases = wait_settled(&ids, &b.grpc, 90).await;
    assert!(releases.iter().all(|r| r.phase == pb::ReleasePhase::Succeeded as i32));
    assert_eq!(fakes.deployer.max_in_flight(), 1, "two calls for one target were never in flight at once");
    check_idempotency(&fakes);
    check_history(&db.url, &ids).await;
    let ticks_a = scrape_sum(&a.admin, "hopngo_scheduler_ticks_total").await.unwrap();
    let ticks_b = scrape_sum(&b.admin, "hopngo_scheduler_ticks_total").await.unwrap();
    assert!(ticks_a > 0.0 && ticks_b > 0.0, "both replicas advanced releases: {ticks_a} / {ticks_b}");
    let rpcs = scrape_sum(&a.admin, "hopngo_grpc_server_handled_total").await.unwrap();
    assert!(rpcs >= (2 * SERVICES) as f64, "per-RPC counts are exported: {rpcs}");
    let _ = std::fs::remove_dir_all(dir);
}
