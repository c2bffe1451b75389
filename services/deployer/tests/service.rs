//! DeployerService over the local backend: real processes (the demo service), real HTTP through
//! the proxy, desired states in real PostgreSQL, gRPC on loopback.

use hopngo_testkit::access::AuthedChannel;
use hopngo_testkit::access::channel;
use std::{net::SocketAddr, time::Duration};

use clap::Parser as _;
use hopngo_deployer::server::{Args, run};
use hopngo_proto::deployer::{self as pb, deployer_service_client::DeployerServiceClient};
use hopngo_testkit::{
    db::TestDb,
    server::{InProcess, server_args},
};
use tonic::Code;

fn config() -> String {
    let demo = env!("CARGO_BIN_EXE_hopngo-demo-service");
    format!(
        "environments:\n  - name: staging\n  - name: cluster\n    kubernetes: {{namespace: hopngo}}\nservices:\n  - name: booking\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n    local:\n      command: [\"{demo}\", --name, \"{{service}}\", --version, \"{{version}}\", --port, \"{{port}}\"]\n  - name: gateway\n    strategy:\n      blueGreen: {{}}\n    local:\n      command: [\"{demo}\", --name, gateway, --version, \"{{version}}\", --port, \"{{port}}\"]\n  - name: broken\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n    local:\n      command: [/nonexistent/broken-service, --port, \"{{port}}\"]\n  - name: chat\n    strategy:\n      canary:\n        steps: [{{setWeight: 50}}]\n"
    )
}

struct Running {
    client: DeployerServiceClient<AuthedChannel>,
    server: InProcess,
}

async fn start(db: &TestDb, dir: &std::path::Path) -> Running {
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, config()).unwrap();
    let mut argv = server_args("hopngo-deployer", &db.url, "1s");
    argv.extend([
        "--delivery-config".into(),
        config_file.to_str().unwrap().into(),
        "--log-dir".into(),
        dir.join("logs").to_str().unwrap().into(),
    ]);
    let args = Args::parse_from(argv);
    let server = InProcess::start(|shutdown, ready| run(args, shutdown, Some(ready))).await;
    let client = DeployerServiceClient::new(channel(&server.url()));
    Running { client, server }
}

impl Running {
    async fn stop(self) {
        self.server.stop().await;
    }
}

fn track(track: pb::Track, artifact: &str, replicas: u32) -> pb::TrackSpec {
    pb::TrackSpec { track: track as i32, artifact: artifact.into(), replicas }
}

fn apply(service: &str, tracks: Vec<pb::TrackSpec>, weight: u32, key: &str) -> pb::ApplyTargetRequest {
    pb::ApplyTargetRequest {
        target: Some(pb::TargetSpec {
            service: service.into(),
            environment: "staging".into(),
            tracks,
            canary_weight: weight,
            ..Default::default()
        }),
        idempotency_key: key.into(),
    }
}

async fn converged(client: &mut DeployerServiceClient<AuthedChannel>, service: &str, secs: u64) -> pb::TargetStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let status = client
            .get_target_status(pb::GetTargetStatusRequest { service: service.into(), environment: "staging".into() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.converged {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "not converged in {secs}s: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pids of running demo processes of `service` (matched on the command line).
fn pids(version_marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("hopngo-demo-service") && cmdline.contains(version_marker) && !cmdline.contains("setpriv") {
            pids.push(pid);
        }
    }
    pids
}

async fn get(proxy: u16, pin: Option<&str>) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy)).await.unwrap();
    let pin = pin.map(|t| format!("x-hopngo-track: {t}\r\n")).unwrap_or_default();
    stream
        .write_all(format!("GET /api/v1/info HTTP/1.1\r\nHost: x\r\n{pin}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().find_map(|l| l.strip_prefix("x-hopngo-version: ")).unwrap_or_default().to_string()
}

async fn proxy_port(db: &TestDb, service: &str) -> u16 {
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let port: Option<i32> = sqlx::query_scalar("SELECT proxy_port FROM deployer.targets WHERE service = $1")
        .bind(service)
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    port.unwrap() as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_converges_and_a_restarted_deployer_converges_again_without_duplicates() {
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-deployer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = start(&db, &dir).await;
    let state = apply(
        "booking",
        vec![track(pb::Track::Stable, "1.0.0-r1", 2), track(pb::Track::Canary, "1.1.0-r1", 1)],
        25,
        "rel/0/1",
    );
    let first = d.client.apply_target(state.clone()).await.unwrap().into_inner();
    assert!(first.changed);
    let status = converged(&mut d.client, "booking", 30).await;
    assert_eq!(status.canary_weight, 25);
    assert_eq!(status.idempotency_key, "rel/0/1");
    assert_eq!(
        status.tracks.iter().map(|t| (t.ready_replicas, t.desired_replicas)).collect::<Vec<_>>(),
        vec![(2, 2), (1, 1)]
    );
    let port = proxy_port(&db, "booking").await;
    assert_eq!(status.address, format!("127.0.0.1:{port}"), "the status says where traffic enters");
    assert_eq!(get(port, Some("canary")).await, "1.1.0-r1");
    assert_eq!(get(port, Some("stable")).await, "1.0.0-r1");

    // The same desired state again (a repeat after a crash) changes nothing.
    let mut again = state.clone();
    again.idempotency_key = "rel/0/1".into();
    let second = d.client.apply_target(again).await.unwrap().into_inner();
    assert!(!second.changed);
    assert_eq!(pids("1.0.0-r1").len(), 2);
    assert_eq!(pids("1.1.0-r1").len(), 1);

    // Restart: the desired state comes back from the database, on the same proxy port, and
    // no replica runs twice.
    d.stop().await;
    assert!(pids("1.0.0-r1").is_empty() && pids("1.1.0-r1").is_empty(), "shutdown stops the replicas");
    let mut d = start(&db, &dir).await;
    let status = converged(&mut d.client, "booking", 30).await;
    assert_eq!((status.canary_weight, status.idempotency_key.as_str()), (25, "rel/0/1"));
    assert_eq!(proxy_port(&db, "booking").await, port);
    assert_eq!(get(port, Some("canary")).await, "1.1.0-r1");
    let re = d.client.apply_target(state).await.unwrap().into_inner();
    assert!(!re.changed, "re-applying after the restart is a no-op");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(pids("1.0.0-r1").len(), 2, "no duplicate processes");
    assert_eq!(pids("1.1.0-r1").len(), 1);

    // Promotion: the canary's artifact becomes stable; the old one goes away.
    d.client
        .apply_target(apply("booking", vec![track(pb::Track::Stable, "1.1.0-r1", 2)], 0, "rel/final/1"))
        .await
        .unwrap();
    let status = converged(&mut d.client, "booking", 30).await;
    assert_eq!(status.tracks.len(), 1);
    assert_eq!(get(port, None).await, "1.1.0-r1");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pids("1.0.0-r1").is_empty(), "the old version is stopped");
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_is_instant_and_keeps_the_processes() {
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-deployer-bg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = start(&db, &dir).await;
    d.client
        .apply_target(apply(
            "gateway",
            vec![track(pb::Track::Active, "1.0.0-bg", 1), track(pb::Track::Preview, "2.0.0-bg", 1)],
            0,
            "k1",
        ))
        .await
        .unwrap();
    converged(&mut d.client, "gateway", 30).await;
    let port = proxy_port(&db, "gateway").await;
    assert_eq!(get(port, None).await, "1.0.0-bg");
    assert_eq!(get(port, Some("preview")).await, "2.0.0-bg");
    let before = (pids("1.0.0-bg"), pids("2.0.0-bg"));
    let started = std::time::Instant::now();
    let switched = d
        .client
        .apply_target(apply(
            "gateway",
            vec![track(pb::Track::Active, "2.0.0-bg", 1), track(pb::Track::Preview, "1.0.0-bg", 1)],
            0,
            "k2",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(switched.status.unwrap().converged, "converged in the apply itself: no process had to start");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(get(port, None).await, "2.0.0-bg");
    assert_eq!((pids("1.0.0-bg"), pids("2.0.0-bg")), before, "the switch restarted nothing");
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_a_failing_command_says_why() {
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-deployer-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = start(&db, &dir).await;
    let stable = || track(pb::Track::Stable, "1.0.0", 1);
    let cases: Vec<(pb::ApplyTargetRequest, &str)> = vec![
        (
            apply("booking", vec![stable(), track(pb::Track::Canary, "1.1.0", 1)], 130, "k"),
            "target.canary_weight: 130 is not in 0..=100",
        ),
        (
            apply("booking", vec![pb::TrackSpec { track: 9, artifact: "1".into(), replicas: 1 }], 0, "k"),
            "target.tracks[0].track: 9 is not a Track (STABLE, CANARY, ACTIVE, PREVIEW, BASELINE)",
        ),
        (
            apply("booking", vec![track(pb::Track::Stable, "", 1)], 0, "k"),
            "target.tracks[0].artifact: must not be empty",
        ),
        (
            apply("chat", vec![stable()], 0, "k"),
            "target.service: \"chat\" has no local.command in the delivery config: the local backend cannot run it",
        ),
        (
            apply("nope", vec![stable()], 0, "k"),
            "target.service: unknown service \"nope\" (not in the delivery config)",
        ),
        (apply("booking", vec![stable(), stable()], 0, "k"), "target.tracks[1].track: stable is listed twice"),
        (apply("booking", vec![stable()], 10, "k"), "target.canary_weight: 10 needs a CANARY track"),
        // Hostile artifacts and targets, refused exactly as CreateRelease refuses them.
        (
            apply("booking", vec![track(pb::Track::Stable, "--help", 1)], 0, "k"),
            "target.tracks[0].artifact: \"--help\" is not an image reference or version",
        ),
        (
            apply("booking", vec![track(pb::Track::Stable, &"9".repeat(1 << 20), 1)], 0, "k"),
            "target.tracks[0].artifact: is 1048576 bytes long; at most 512 are allowed",
        ),
        (
            apply("booking", vec![track(pb::Track::Stable, "1.0\u{202E}", 1)], 0, "k"),
            "target.tracks[0].artifact: contains the bidirectional control U+202E (at byte 3)",
        ),
        (
            apply("booking", vec![track(pb::Track::Stable, "1.0\0", 1)], 0, "k"),
            "target.tracks[0].artifact: contains a NUL byte (at byte 3)",
        ),
        (
            pb::ApplyTargetRequest { idempotency_key: "k".repeat(1 << 20), ..apply("booking", vec![stable()], 0, "") },
            "idempotency_key: is 1048576 bytes long; at most 256 are allowed",
        ),
        (
            pb::ApplyTargetRequest {
                target: Some(pb::TargetSpec {
                    environment: "moon".into(),
                    ..apply("booking", vec![stable()], 0, "").target.unwrap()
                }),
                idempotency_key: "k".into(),
            },
            "target.environment: unknown environment \"moon\" (not in the delivery config)",
        ),
    ];
    for (request, message) in cases {
        let err = d.client.apply_target(request).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, message));
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM deployer.targets").fetch_one(&pool).await.unwrap();
    assert_eq!(stored, 0, "nothing recorded");
    pool.close().await;

    d.client.apply_target(apply("broken", vec![stable()], 0, "k")).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = d
            .client
            .get_target_status(pb::GetTargetStatusRequest { service: "broken".into(), environment: "staging".into() })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if status.tracks[0].message.contains("failed to start") {
            assert!(!status.converged);
            assert!(status.message.contains("stable 0/1 ready"), "{}", status.message);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = d
        .client
        .get_target_status(pb::GetTargetStatusRequest { service: "gateway".into(), environment: "staging".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let preflight = d
        .client
        .preflight(pb::PreflightRequest { service: "broken".into(), environment: "staging".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(!preflight.ok);
    // An environment on Kubernetes is not run as local processes.
    let on_kubernetes = d
        .client
        .preflight(pb::PreflightRequest { service: "booking".into(), environment: "cluster".into() })
        .await
        .unwrap()
        .into_inner();
    let backend = on_kubernetes.checks.iter().find(|c| c.name == "backend").expect("a backend check");
    assert!(!on_kubernetes.ok && !backend.ok, "{on_kubernetes:?}");
    assert!(backend.message.contains("runs on Kubernetes"), "{}", backend.message);
    // Names nobody declared are mistakes, not a failed check.
    for (service, environment, message) in [
        ("", "staging", "service: unknown service \"\" (not in the delivery config)"),
        ("nope", "staging", "service: unknown service \"nope\" (not in the delivery config)"),
        ("booking", "moon", "environment: unknown environment \"moon\" (not in the delivery config)"),
    ] {
        let err = d
            .client
            .preflight(pb::PreflightRequest { service: service.into(), environment: environment.into() })
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, message));
    }
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_active_and_back_under_steady_load_drops_no_request() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    };
    let db = TestDb::create().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-deployer-sw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut d = start(&db, &dir).await;
    let blue = || track(pb::Track::Active, "1.0.0-sw", 1);
    let green = || track(pb::Track::Preview, "2.0.0-sw", 1);
    d.client.apply_target(apply("gateway", vec![blue(), green()], 0, "k0")).await.unwrap();
    let status = converged(&mut d.client, "gateway", 30).await;
    let proxy: SocketAddr = status.address.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..3 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            // Bounded: until told to stop, at most 20,000 requests per client.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if get(proxy.port(), None).await.is_empty() {
                    failed.fetch_add(1, Ordering::Relaxed);
                } else {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for round in 0..6 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (active, preview) = if round % 2 == 0 { ("2.0.0-sw", "1.0.0-sw") } else { ("1.0.0-sw", "2.0.0-sw") };
        let tracks = vec![track(pb::Track::Active, active, 1), track(pb::Track::Preview, preview, 1)];
        let applied =
            d.client.apply_target(apply("gateway", tracks, 0, &format!("k{}", round + 1))).await.unwrap().into_inner();
        assert!(applied.status.unwrap().converged, "round {round}: the switch is in force when ApplyTarget returns");
        assert_eq!(get(proxy.port(), None).await, active);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{} requests answered, none failed", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 100);
    d.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}
