//! High availability with real processes on one database, each failure a SIGKILL: the
//! deployer's leader election (a PostgreSQL lock on the local backend, a Lease on Kubernetes)
//! with the standby taking over and re-reading the stored desired states; the notifier's webhook
//! delivery moving to the surviving replica without losing or reordering an event; analysis runs
//! measured by exactly one analyzer and taken over from a killed one; a killed migrator's run
//! carried out by the other. Failover times are printed (`failover:` lines).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use hopngo_e2e::{AuthedChannel, Proc, binary, channel, demo_pids, scrape_sum, step_event};
use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient},
    deployer::{self as dpb, deployer_service_client::DeployerServiceClient},
    migrator::{self as mpb, migrator_service_client::MigratorServiceClient},
    notifier::{self as npb, notifier_service_client::NotifierServiceClient},
};
use hopngo_testkit::{
    db::TestDb,
    kube::{FakeKube, FakeKubeOptions},
    receiver::Receiver,
};
use tonic::Code;

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-ha-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Waits until `check` holds (at most `within`), returning when it first did.
async fn when<F: Future<Output = bool>>(what: &str, within: Duration, mut check: impl FnMut() -> F) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The health of `service` on a replica's gRPC port.
async fn health(url: &str, service: &str) -> Option<i32> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut client = HealthClient::new(channel(url));
    client.check(HealthCheckRequest { service: service.into() }).await.ok().map(|r| r.into_inner().status)
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;
const DEPLOYER: &str = "hopngo.deployer.v1.DeployerService";

fn stable(service: &str, artifact: &str, replicas: u32) -> dpb::ApplyTargetRequest {
    dpb::ApplyTargetRequest {
        target: Some(dpb::TargetSpec {
            service: service.into(),
            environment: "staging".into(),
            tracks: vec![dpb::TrackSpec { track: dpb::Track::Stable as i32, artifact: artifact.into(), replicas }],
            ..Default::default()
        }),
        idempotency_key: format!("{service}-{artifact}"),
    }
}

async fn converged(client: &mut DeployerServiceClient<AuthedChannel>, service: &str) -> Option<dpb::TargetStatus> {
    let request = dpb::GetTargetStatusRequest { service: service.into(), environment: "staging".into() };
    let status = client.get_target_status(request).await.ok()?.into_inner().status?;
    status.converged.then_some(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deployer_leads_and_a_standby_takes_over_a_killed_leader_on_the_database_lock() {
    let db = TestDb::create().await.unwrap();
    let dir = temp_dir("deployer");
    let demo = binary("hopngo-demo-service", "hopngo-deployer").unwrap();
    let config = dir.join("delivery.yaml");
    std::fs::write(
        &config,
        format!(
            "environments:\n  - name: staging\nservices:\n  - name: booking\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n    local:\n      command: [\"{}\", --name, booking, --version, \"{{version}}\", --port, \"{{port}}\"]\n",
            demo.display()
        ),
    )
    .unwrap();
    let bin = binary("hopngo-deployer", "hopngo-deployer").unwrap();
    let args = |name: &str| {
        strings(&[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--delivery-config",
            config.to_str().unwrap(),
            "--log-dir",
            dir.join(name).to_str().unwrap(),
            "--leader-identity",
            name,
            "--leader-retry-period",
            "200ms",
            "--log",
            "warn",
        ])
    };
    let a = Proc::start(&bin, &args("deployer-a"), &[]).await.unwrap();
    let b = Proc::start_standby(&bin, &args("deployer-b")).await.unwrap();
    let mut leader = DeployerServiceClient::new(channel(&a.grpc));
    let mut standby = DeployerServiceClient::new(channel(&b.grpc));
    leader.apply_target(stable("booking", "5.0.0-ha", 2)).await.unwrap();
    let status = loop {
        if let Some(status) = converged(&mut leader, "booking").await {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let address = status.address.clone();
    assert_eq!(demo_pids("5.0.0-ha").len(), 2);

    // The standby is alive but not ready, and refuses the API without touching anything.
    assert_eq!(health(&b.grpc, "").await, Some(SERVING), "alive: a liveness probe passes");
    assert_eq!(health(&b.grpc, DEPLOYER).await, Some(NOT_SERVING), "not ready: no traffic is sent to it");
    assert_eq!(health(&a.grpc, DEPLOYER).await, Some(SERVING));
    let refused = standby.apply_target(stable("booking", "6.0.0-ha", 1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("standby"), "{}", refused.message());
    assert_eq!(scrape_sum(&a.admin, "hopngo_deployer_leader").await.unwrap(), 1.0);
    assert_eq!(scrape_sum(&b.admin, "hopngo_deployer_leader").await.unwrap(), 0.0);
    assert_eq!(demo_pids("6.0.0-ha").len(), 0, "the standby started nothing");

    // The leader dies: the standby leads, re-reads the stored state and serves the same address.
    let killed = Instant::now();
    a.kill9().await.unwrap();
    let leads = when("the standby leads", Duration::from_secs(10), || async {
        health(&b.grpc, DEPLOYER).await == Some(SERVING)
    })
    .await;
    let serves = when("the standby converged the stored state", Duration::from_secs(30), || {
        let mut client = standby.clone();
        async move { converged(&mut client, "booking").await.is_some() }
    })
    .await;
    let answered = when("the service answers on its address again", Duration::from_secs(30), || {
        let address = address.clone();
        async move { hopngo_e2e::http_get(&address, "/api/v1/info").await.is_ok() }
    })
    .await;
    println!(
        "failover: deployer (database lock) kill -9 -> standby leads {} ms, stored state converged {} ms, service answering on its address {} ms",
        (leads - killed).as_millis(),
        (serves - killed).as_millis(),
        (answered - killed).as_millis()
    );
    let status = converged(&mut standby, "booking").await.unwrap();
    assert_eq!((status.address.as_str(), status.idempotency_key.as_str()), (address.as_str(), "booking-5.0.0-ha"));
    assert_eq!(demo_pids("5.0.0-ha").len(), 2, "the replicas came back once");

    // A clean stop hands over at once: a new replica leads without waiting.
    let stopped = Instant::now();
    assert_eq!(b.terminate(Duration::from_secs(15)).await.unwrap(), Some(0));
    let c = Proc::start(&bin, &args("deployer-c"), &[]).await.unwrap();
    println!("failover: deployer (database lock) SIGTERM -> next replica leads {} ms", stopped.elapsed().as_millis());
    let mut next = DeployerServiceClient::new(channel(&c.grpc));
    when("the next leader converged", Duration::from_secs(30), || {
        let mut client = next.clone();
        async move { converged(&mut client, "booking").await.is_some() }
    })
    .await;
    next.apply_target(stable("booking", "6.0.0-ha", 1)).await.unwrap();
    assert_eq!(c.terminate(Duration::from_secs(15)).await.unwrap(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

const KUBE_NS: &str = "hopngo-staging";

/// A made-up pod address per replica (the EndpointSlice only carries it).
fn address(identity: &str) -> &'static str {
    match identity {
        "deployer-a" => "10.0.0.1",
        "deployer-b" => "10.0.0.2",
        _ => "10.0.0.3",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployers_on_kubernetes_elect_a_leader_through_a_lease_and_a_standby_takes_over() {
    let fake = FakeKube::start_with(FakeKubeOptions {
        namespaces: vec![KUBE_NS.into()],
        ready_after: Duration::from_millis(50),
        ..Default::default()
    })
    .await;
    let db = TestDb::create().await.unwrap();
    let dir = temp_dir("lease");
    std::fs::write(dir.join("kubeconfig"), fake.kubeconfig(KUBE_NS)).unwrap();
    std::fs::write(
        dir.join("delivery.yaml"),
        "environments:\n  - name: staging\n    kubernetes: {namespace: hopngo-staging}\nservices:\n  - name: booking\n    strategy: {canary: {steps: [{setWeight: 50}]}}\n    kubernetes: {image: registry.example/hopngo/booking}\n",
    )
    .unwrap();
    let bin = binary("hopngo-deployer", "hopngo-deployer").unwrap();
    let args = |name: &str| {
        strings(&[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--database-url",
            &db.url,
            "--delivery-config",
            dir.join("delivery.yaml").to_str().unwrap(),
            "--backend",
            "kubernetes",
            "--kubeconfig",
            dir.join("kubeconfig").to_str().unwrap(),
            "--leader-identity",
            name,
            "--leader-service",
            "hopngo-deployer",
            "--leader-address",
            address(name),
            "--leader-lease-duration",
            "3s",
            "--leader-retry-period",
            "500ms",
            "--log",
            "warn",
        ])
    };
    let leader_endpoint = || {
        let slice =
            fake.object("endpointslices", KUBE_NS, "hopngo-deployer-leader").expect("the leader's EndpointSlice");
        let endpoint = &slice["endpoints"][0];
        (endpoint["addresses"][0].as_str().unwrap().to_string(), slice["ports"][0]["port"].as_u64().unwrap())
    };
    let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    let holder = || {
        fake.object("leases", KUBE_NS, "hopngo-deployer")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    let a = Proc::start(&bin, &args("deployer-a"), &[]).await.unwrap();
    let b = Proc::start_standby(&bin, &args("deployer-b")).await.unwrap();
    assert_eq!(holder(), "deployer-a");
    assert_eq!(leader_endpoint(), ("10.0.0.1".to_string(), port(&a.grpc)), "the Service reaches the leader");
    let mut leader = DeployerServiceClient::new(channel(&a.grpc));
    leader.apply_target(stable("booking", "1.0", 2)).await.unwrap();
    when("booking converged", Duration::from_secs(30), || {
        let mut client = leader.clone();
        async move { converged(&mut client, "booking").await.is_some() }
    })
    .await;
    let refused = DeployerServiceClient::new(channel(&b.grpc)).apply_target(stable("booking", "2.0", 1)).await;
    assert_eq!(refused.unwrap_err().code(), Code::Unavailable);

    // The leader dies without releasing: the standby waits out the Lease it last saw renewed.
    let renewed_before = fake.object("leases", KUBE_NS, "hopngo-deployer").unwrap()["spec"]["renewTime"].clone();
    let killed = Instant::now();
    a.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_ne!(
        fake.object("leases", KUBE_NS, "hopngo-deployer").unwrap()["spec"]["renewTime"],
        serde_json::Value::Null
    );
    assert_eq!(holder(), "deployer-a", "nobody takes a Lease before it expires");
    let since = fake.resource_version();
    let leads = when("the standby holds the Lease", Duration::from_secs(10), || {
        let held = holder() == "deployer-b";
        async move { held }
    })
    .await;
    let mut standby = DeployerServiceClient::new(channel(&b.grpc));
    let serves = when("the standby serves the stored state", Duration::from_secs(30), || {
        let mut client = standby.clone();
        async move { converged(&mut client, "booking").await.is_some() }
    })
    .await;
    println!(
        "failover: deployer (Lease, 3 s) kill -9 -> standby holds the Lease {} ms, serves the converged state {} ms",
        (leads - killed).as_millis(),
        (serves - killed).as_millis()
    );
    // Counted from when the standby saw the last renewal (at most a retry period before the kill).
    assert!(leads - killed >= Duration::from_millis(2000), "the Lease was waited out: {:?}", leads - killed);
    let lease = fake.object("leases", KUBE_NS, "hopngo-deployer").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1, "{lease}");
    assert_ne!(lease["spec"]["renewTime"], renewed_before);
    assert_eq!(fake.writes_since(since), Vec::<String>::new(), "the new leader re-read the cluster and wrote nothing");
    assert_eq!(leader_endpoint(), ("10.0.0.2".to_string(), port(&b.grpc)), "the Service follows the new leader");
    let slice = fake.object("endpointslices", KUBE_NS, "hopngo-deployer-leader").unwrap();
    hopngo_testkit::python::validate_objects(&[lease.clone(), slice]).unwrap_or_else(|report| panic!("{report}"));
    standby.apply_target(stable("booking", "2.0", 2)).await.unwrap();

    // A clean stop releases the Lease: the next replica leads within a retry period.
    let stopped = Instant::now();
    assert_eq!(b.terminate(Duration::from_secs(15)).await.unwrap(), Some(0));
    assert_eq!(holder(), "", "released: {}", fake.object("leases", KUBE_NS, "hopngo-deployer").unwrap());
    let c = Proc::start(&bin, &args("deployer-c"), &[]).await.unwrap();
    let took = stopped.elapsed();
    println!("failover: deployer (Lease) SIGTERM -> next replica leads {} ms", took.as_millis());
    assert!(took < Duration::from_secs(3), "the released Lease was taken without waiting it out: {took:?}");
    assert_eq!(holder(), "deployer-c");
    assert_eq!(c.terminate(Duration::from_secs(15)).await.unwrap(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

fn event(release: &str, sequence: u64) -> hopngo_proto::events::Event {
    step_event(release, sequence, format!("step {sequence}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifiers_webhook_delivery_moves_to_the_surviving_replica_without_losing_an_event() {
    const EVENTS: u64 = 150;
    let db = TestDb::create().await.unwrap();
    let bin = binary("hopngo-notifier", "hopngo-notifier").unwrap();
    let args = || {
        strings(&[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--database-url",
            &db.url,
            "--poll",
            "200ms",
            "--webhook-backoff",
            "50ms",
            "--webhook-backoff-max",
            "300ms",
            "--log",
            "warn",
        ])
    };
    let first = Proc::start(&bin, &args(), &[]).await.unwrap();
    let second = Proc::start(&bin, &args(), &[]).await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    NotifierServiceClient::new(channel(&first.grpc))
        .create_webhook(npb::CreateWebhookRequest { url: receiver.url("/events"), ..Default::default() })
        .await
        .unwrap();
    when("one replica delivers webhooks", Duration::from_secs(10), || async {
        scrape_sum(&first.admin, "hopngo_notifier_webhook_leader").await.unwrap_or(0.0)
            + scrape_sum(&second.admin, "hopngo_notifier_webhook_leader").await.unwrap_or(0.0)
            == 1.0
    })
    .await;
    let (leader, survivor) = if scrape_sum(&first.admin, "hopngo_notifier_webhook_leader").await.unwrap() == 1.0 {
        (first, second)
    } else {
        (second, first)
    };

    // Events keep coming (to the survivor, which every replica serves) while the leader dies.
    let release = uuid::Uuid::now_v7().to_string();
    let publisher = {
        let client = NotifierServiceClient::new(channel(&survivor.grpc));
        let release = release.clone();
        tokio::spawn(async move {
            for sequence in 1..=EVENTS {
                let request = npb::PublishEventsRequest { events: vec![event(&release, sequence)] };
                client.clone().publish_events(request).await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    receiver.until(Duration::from_secs(20), |got| got.len() >= 50).await;
    let killed = Instant::now();
    leader.kill9().await.unwrap();
    publisher.await.unwrap();
    let got = receiver
        .until(Duration::from_secs(30), |got| {
            got.iter().map(|r| r.header("webhook-id")).collect::<BTreeSet<_>>().len() as u64 >= EVENTS
        })
        .await;
    assert_eq!(scrape_sum(&survivor.admin, "hopngo_notifier_webhook_leader").await.unwrap(), 1.0);
    let first_after = got.iter().map(|r| r.at).filter(|at| *at > killed).min().expect("deliveries after the kill");
    let distinct: BTreeSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    let duplicates = got.len() - distinct.len();
    println!(
        "failover: notifier webhooks kill -9 -> first delivery by the survivor {} ms; {EVENTS} events: lost {}, duplicated {duplicates}",
        (first_after - killed).as_millis(),
        EVENTS - distinct.len() as u64
    );
    assert_eq!(distinct.len() as u64, EVENTS, "no event lost");
    assert!(duplicates <= 1, "at most the delivery in flight at the kill is repeated: {duplicates}");
    let ids: Vec<String> = {
        let mut seen = BTreeSet::new();
        got.iter().map(|r| r.header("webhook-id").to_string()).filter(|id| seen.insert(id.clone())).collect()
    };
    let positions: Vec<u64> = ids.iter().map(|id| id.rsplit('-').next().unwrap().parse().unwrap_or(0)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "delivered in log order: {positions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analysis_runs_are_measured_by_one_analyzer_and_taken_over_from_a_killed_one() {
    const RUNS: usize = 6;
    const COUNT: u32 = 12;
    let db = TestDb::create().await.unwrap();
    let dir = temp_dir("analyzer");
    std::fs::write(
        dir.join("delivery.yaml"),
        "environments: [{name: staging}]\nservices:\n  - name: booking\n    strategy: {canary: {steps: [{setWeight: 50}]}}\nproviders:\n  allowedHosts: [127.0.0.1]\n",
    )
    .unwrap();
    let endpoint = Receiver::start().await.unwrap();
    endpoint.answer_body(r#"{"ok": true}"#);
    let bin = binary("hopngo-analyzer", "hopngo-analyzer").unwrap();
    let args = strings(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--delivery-config",
        dir.join("delivery.yaml").to_str().unwrap(),
        "--lease-slack",
        "2s",
        "--log",
        "warn",
    ]);
    let first = Proc::start(&bin, &args, &[]).await.unwrap();
    let mut with_admin = args.clone();
    with_admin[3] = "127.0.0.1:0".into();
    let second = Proc::start(&bin, &with_admin, &[]).await.unwrap();
    let mut ids = Vec::new();
    for run in 0..RUNS {
        let metric = apb::Metric {
            name: "health".into(),
            interval: Some(prost_types::Duration { seconds: 0, nanos: 300_000_000 }),
            count: COUNT,
            success_condition: "result == true".into(),
            provider: Some(apb::metric::Provider::Web(apb::WebProvider {
                url: endpoint.url(&format!("/health/{run}")),
                json_path: "$.ok".into(),
                timeout: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                ..Default::default()
            })),
            ..Default::default()
        };
        let url = if run % 2 == 0 { &first.grpc } else { &second.grpc };
        let request = apb::StartAnalysisRunRequest {
            metrics: vec![metric],
            idempotency_key: format!("ha-{run}"),
            ..Default::default()
        };
        let started = AnalyzerServiceClient::new(channel(url)).start_analysis_run(request).await.unwrap();
        ids.push(started.into_inner().run.unwrap().id);
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed = Instant::now();
    first.kill9().await.unwrap();
    let mut survivor = AnalyzerServiceClient::new(channel(&second.grpc));
    let mut runs = Vec::new();
    for id in &ids {
        let done = when("the run completed", Duration::from_secs(60), || {
            let mut client = survivor.clone();
            let id = id.clone();
            async move {
                let run = client.get_analysis_run(apb::GetAnalysisRunRequest { id }).await.unwrap();
                run.into_inner().run.unwrap().phase == apb::AnalysisPhase::Successful as i32
            }
        })
        .await;
        let run = survivor.get_analysis_run(apb::GetAnalysisRunRequest { id: id.clone() }).await.unwrap();
        runs.push((run.into_inner().run.unwrap(), done));
    }
    let hits: BTreeMap<String, usize> = endpoint.received().iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.path.clone()).or_default() += 1;
        m
    });
    let last = runs.iter().map(|(_, done)| *done).max().unwrap();
    println!(
        "failover: analyzer kill -9 -> every run completed {} ms later (lease: provider timeout 1 s + slack 2 s); requests per run {:?} for {COUNT} measurements each",
        (last - killed).as_millis(),
        hits.values().collect::<Vec<_>>()
    );
    for (run, (result, _)) in runs.iter().enumerate() {
        let metric = &result.metrics[0];
        assert_eq!((metric.count, metric.successful), (COUNT, COUNT), "run {run}: {result:#?}");
        // A round lost with the killed replica is measured again; nothing else is measured twice.
        let requests = hits[&format!("/health/{run}")];
        assert!((COUNT as usize..=COUNT as usize + 1).contains(&requests), "run {run}: {requests} requests");
    }
    // The survivor completed at least the runs the killed replica had (half of them).
    let completed = scrape_sum(&second.admin, "hopngo_analyzer_runs_completed_total").await.unwrap();
    assert!(completed >= (RUNS / 2) as f64 && completed <= RUNS as f64, "{completed} runs completed here");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_migrators_run_is_carried_out_by_the_other_replica() {
    let own = TestDb::create().await.unwrap();
    let app = TestDb::create().await.unwrap();
    let dir = temp_dir("migrator");
    let scripts = dir.join("booking");
    std::fs::create_dir_all(&scripts).unwrap();
    std::fs::write(scripts.join("V1__bookings.sql"), "CREATE TABLE bookings (id int);").unwrap();
    std::fs::write(
        scripts.join("V2__slow_backfill.sql"),
        "SELECT pg_sleep(3);\nALTER TABLE bookings ADD COLUMN seats int;",
    )
    .unwrap();
    let bin = binary("hopngo-migrator", "hopngo-migrator").unwrap();
    let args = strings(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &own.url,
        "--target",
        &format!("booking={}", app.url),
        "--location-root",
        &format!("booking={}", dir.display()),
        "--run-lease",
        "3s",
        "--lock-wait",
        "20s",
        "--log",
        "warn",
    ]);
    let first = Proc::start(&bin, &args, &[]).await.unwrap();
    let second = Proc::start(&bin, &args, &[]).await.unwrap();
    let request = mpb::StartMigrationRequest {
        target: Some(mpb::MigrationTarget {
            database: "booking".into(),
            locations: vec![scripts.display().to_string()],
            ..Default::default()
        }),
        command: mpb::MigrationCommand::Migrate as i32,
        idempotency_key: "ha-migrate".into(),
        ..Default::default()
    };
    let run = MigratorServiceClient::new(channel(&first.grpc)).start_migration(request).await.unwrap();
    let id = run.into_inner().run.unwrap().id;
    let pool = sqlx::PgPool::connect(&app.url).await.unwrap();
    // Killed while V2 runs (its transaction dies with the connection).
    when("V2 is running", Duration::from_secs(20), || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%SELECT pg_sleep(3);%' \
                 AND query NOT LIKE '%pg_stat_activity%' AND state = 'active'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    })
    .await;
    let killed = Instant::now();
    first.kill9().await.unwrap();
    let mut survivor = MigratorServiceClient::new(channel(&second.grpc));
    let done = when("the survivor finished the run", Duration::from_secs(60), || {
        let mut client = survivor.clone();
        let id = id.clone();
        async move {
            let run = client.get_migration_run(mpb::GetMigrationRunRequest { id }).await.unwrap();
            run.into_inner().run.unwrap().phase == mpb::MigrationPhase::Succeeded as i32
        }
    })
    .await;
    println!(
        "failover: migrator kill -9 mid-migration -> run finished by the other replica {} ms (run lease 3 s, V2 takes 3 s)",
        (done - killed).as_millis()
    );
    let run = survivor.get_migration_run(mpb::GetMigrationRunRequest { id }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(run.phase, mpb::MigrationPhase::Succeeded as i32, "{}", run.message);
    let history: Vec<(Option<String>, bool)> = sqlx::query_as(
        "SELECT version, success FROM flyway_schema_history WHERE version IS NOT NULL ORDER BY installed_rank",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(history, vec![(Some("1".into()), true), (Some("2".into()), true)], "each migration once");
    let columns: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'bookings' AND column_name = 'seats'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(columns, 1);
    pool.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A Service's virtual IP as kube-proxy gives it: each new connection goes to one of the
/// backends whose readiness probe (gRPC health of `service`, every 100 ms, as a kubelet's
/// `grpc` probe) passes; an open connection stays with its backend.
struct ServiceVip {
    addr: String,
    backends: std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceVip {
    async fn start(service: &'static str) -> ServiceVip {
        use std::sync::{Arc, Mutex};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let backends: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
        let prober = {
            let backends = Arc::clone(&backends);
            tokio::spawn(async move {
                loop {
                    let urls: Vec<String> = backends.lock().unwrap().iter().map(|(u, _)| u.clone()).collect();
                    for url in urls {
                        let probe = tokio::time::timeout(Duration::from_millis(300), health(&url, service));
                        let ready = probe.await.ok().flatten() == Some(SERVING);
                        if let Some(b) = backends.lock().unwrap().iter_mut().find(|(u, _)| *u == url) {
                            b.1 = ready;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let proxy = {
            let backends = Arc::clone(&backends);
            tokio::spawn(async move {
                let mut next = 0usize;
                while let Ok((mut client, _)) = listener.accept().await {
                    let ready: Vec<String> =
                        backends.lock().unwrap().iter().filter(|(_, r)| *r).map(|(u, _)| u.clone()).collect();
                    if ready.is_empty() {
                        continue;
                    }
                    next += 1;
                    let url = ready[next % ready.len()].clone();
                    tokio::spawn(async move {
                        let addr = url.rsplit("://").next().unwrap().to_string();
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(addr).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                }
            })
        };
        ServiceVip { addr, backends, tasks: vec![prober, proxy] }
    }

    fn add(&self, url: &str) {
        self.backends.lock().unwrap().push((url.to_string(), false));
    }

    fn remove(&self, url: &str) {
        self.backends.lock().unwrap().retain(|(u, _)| u != url);
    }

    async fn until_ready(&self, url: &str) {
        when("the new replica is ready behind the Service", Duration::from_secs(10), || {
            let ready = self.backends.lock().unwrap().iter().any(|(u, r)| u == url && *r);
            async move { ready }
        })
        .await;
    }
}

impl Drop for ServiceVip {
    fn drop(&mut self) {
        self.tasks.iter().for_each(|t| t.abort());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_behind_a_service_loses_no_call() {
    const CALLERS: usize = 4;
    let db = TestDb::create().await.unwrap();
    let bin = binary("hopngo-notifier", "hopngo-notifier").unwrap();
    let args = strings(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--shutdown-delay",
        "1s",
        "--log",
        "warn",
    ]);
    let vip = ServiceVip::start("hopngo.notifier.v1.NotifierService").await;
    let old = [Proc::start(&bin, &args, &[]).await.unwrap(), Proc::start(&bin, &args, &[]).await.unwrap()];
    for replica in &old {
        vip.add(&replica.grpc);
        vip.until_ready(&replica.grpc).await;
    }
    let scheme = if old[0].grpc.starts_with("https") { "https" } else { "http" };
    let client = NotifierServiceClient::new(channel(&format!("{scheme}://{}", vip.addr)));
    let stop = tokio_util::sync::CancellationToken::new();
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    // Each caller publishes one event per call. A failed call is lost when the server had acted
    // on it (its event is in the log) and only refused when it had not: the connection was
    // closing before the call was sent, which clients retry (gRPC's transparent retry; the
    // scheduler's calls are retried with their key).
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (client, stop, pool) = (client.clone(), stop.clone(), pool.clone());
            tokio::spawn(async move {
                let release = uuid::Uuid::now_v7().to_string();
                let (mut ok, mut refused, mut lost) = (0u64, Vec::new(), Vec::new());
                while !stop.is_cancelled() {
                    let event = event(&release, ok + 1);
                    let id = event.id.clone();
                    match client.clone().publish_events(npb::PublishEventsRequest { events: vec![event] }).await {
                        Ok(_) => ok += 1,
                        Err(status) => {
                            let stored: bool =
                                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM notifier.events WHERE event_id = $1)")
                                    .bind(&id)
                                    .fetch_one(&pool)
                                    .await
                                    .unwrap();
                            let failure = format!("{:?}: {}", status.code(), status.message());
                            if stored { lost.push(failure) } else { refused.push(failure) }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (ok, refused, lost)
            })
        })
        .collect();

    // One replica at a time: the new one ready, then the old one terminated.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut new = Vec::new();
    for replica in old {
        let next = Proc::start(&bin, &args, &[]).await.unwrap();
        vip.add(&next.grpc);
        vip.until_ready(&next.grpc).await;
        let url = replica.grpc.clone();
        assert_eq!(replica.terminate(Duration::from_secs(20)).await.unwrap(), Some(0));
        vip.remove(&url);
        new.push(next);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let (mut ok, mut refused, mut lost) = (0u64, Vec::new(), Vec::new());
    for caller in callers {
        let (o, r, l) = caller.await.unwrap();
        ok += o;
        refused.extend(r);
        lost.extend(l);
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM notifier.events").fetch_one(&pool).await.unwrap();
    pool.close().await;
    println!(
        "rolling update: {ok} calls answered, {} refused unsent as a connection closed (retried) {refused:?}, {} lost, {stored} events stored",
        refused.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "calls the server acted on failed during the rolling update: {lost:?}");
    assert!(refused.len() <= CALLERS * 2, "at most a call per caller and connection close is refused: {refused:?}");
    assert!(ok > 100, "the callers kept calling: {ok}");
    assert_eq!(stored, ok as i64, "every answered call's event is in the log, once");
    for replica in new {
        assert_eq!(replica.terminate(Duration::from_secs(20)).await.unwrap(), Some(0));
    }
}
