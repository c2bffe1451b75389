//! Release events end to end with real processes: the scheduler publishes into the real notifier
//! binary; a webhook receiver and a `hopctl events --follow` subscriber (a process, too) get every
//! event of every release in order, while the notifier is killed with SIGKILL and restarted, and
//! the subscriber is killed and resumed from its last cursor.

use hopngo_e2e::channel;
use std::{collections::BTreeMap, process::Stdio, time::Duration};

use hopngo_e2e::{Proc, binary, create_release, until};
use hopngo_proto::{
    notifier::{self as npb, notifier_service_client::NotifierServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_testkit::{db::TestDb, fakes::Fakes, receiver::Receiver};
use tokio::io::{AsyncBufReadExt as _, BufReader};

const CONFIG: &str = "environments:\n  - name: staging\n    progressDeadline: 60s\nservices:\n  - name: booking\n    replicas: 2\n    strategy:\n      canary:\n        steps:\n          - setWeight: 25\n          - pause: {duration: 1s}\n          - setWeight: 50\n          - pause: {duration: 1s}\n          - setWeight: 100\n  - name: chat\n    replicas: 1\n    strategy:\n      canary:\n        steps:\n          - setWeight: 50\n          - pause: {duration: 1s}\n          - setWeight: 100\n";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `hopctl events --follow -o json` as a process; its stdout lines are the events.
struct Follower {
    child: tokio::process::Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Follower {
    fn start(notifier: &str, since: Option<&str>) -> Follower {
        let mut args = vec!["--notifier", notifier, "-o", "json", "events", "--follow"];
        if let Some(c) = since {
            args.extend(["--since", c]);
        }
        let mut child = tokio::process::Command::new(binary("hopctl", "hopctl").unwrap())
            .args(&args)
            .envs(hopngo_e2e::hopctl_env("alice", &[]))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = out.next_line().await {
                let _ = tx.send(serde_json::from_str(&line).expect("one JSON event per line"));
            }
        });
        Follower { child, lines }
    }

    fn drain(&mut self, into: &mut Vec<serde_json::Value>) {
        while let Ok(v) = self.lines.try_recv() {
            into.push(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_subscribers_in_order_through_notifier_and_subscriber_kills() {
    let db = TestDb::create().await.unwrap();
    let fakes = Fakes::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("hopngo-e2e-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("delivery.yaml");
    std::fs::write(&config_file, CONFIG).unwrap();

    let port = free_port();
    let notifier_bin = binary("hopngo-notifier", "hopngo-notifier").unwrap();
    let notifier_args: Vec<String> = [
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--webhook-backoff",
        "50ms",
        "--webhook-backoff-max",
        "300ms",
        "--webhook-max-attempts",
        "1000",
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut notifier = Proc::start(&notifier_bin, &notifier_args, &[]).await.unwrap();
    let receiver = Receiver::start().await.unwrap();
    NotifierServiceClient::new(channel(&notifier.grpc))
        .create_webhook(npb::CreateWebhookRequest { url: receiver.url("/events"), ..Default::default() })
        .await
        .unwrap();
    let mut follower = Follower::start(&notifier.grpc, None);

    let scheduler_bin = binary("hopngo-scheduler", "hopngo-scheduler").unwrap();
    let mut scheduler_args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--database-url",
        &db.url,
        "--poll-interval",
        "50ms",
        "--call-timeout",
        "1s",
        "--apply-config",
        config_file.to_str().unwrap(),
        "--log",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The fakes stand in for the deployer, analyzer and migrator; the notifier is the real one.
    let fake_endpoints = fakes.endpoint_args();
    for pair in fake_endpoints.chunks(2).filter(|p| p[0] != "--notifier-url") {
        scheduler_args.extend(pair.iter().cloned());
    }
    scheduler_args.extend(["--notifier-url".to_string(), notifier.grpc.clone()]);
    let scheduler = Proc::start(&scheduler_bin, &scheduler_args, &[]).await.unwrap();
    let mut client = ReleaseServiceClient::new(channel(&scheduler.grpc));

    let mut ids = Vec::new();
    for (service, artifact) in
        [("booking", "booking:1"), ("chat", "chat:1"), ("booking", "booking:2"), ("chat", "chat:2")]
    {
        let r = create_release(&mut client, service, artifact).await;
        if artifact.ends_with(":1") {
            until(&mut client, &r.id, 60, |r| r.settled).await;
        }
        ids.push(r.id);
    }
    // Mid-release: the notifier dies and comes back on its port; then the subscriber dies and
    // resumes after the last cursor it printed.
    let mut seen = Vec::new();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let running = client.get_release(pb::GetReleaseRequest { id: ids[2].clone() }).await.unwrap().into_inner();
    assert!(!running.release.unwrap().settled, "the notifier dies mid-release");
    notifier.kill9().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    notifier = Proc::start(&notifier_bin, &notifier_args, &[]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    follower.drain(&mut seen);
    follower.child.kill().await.unwrap();
    follower.drain(&mut seen);
    let cursor = seen.last().map(|v| v["cursor"].as_str().unwrap().to_string());
    let mut follower = Follower::start(&notifier.grpc, cursor.as_deref());

    for id in &ids[2..] {
        let r = until(&mut client, id, 60, |r| r.settled).await;
        assert_eq!(r.phase, pb::ReleasePhase::Succeeded as i32, "{}", r.message);
    }
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let committed: BTreeMap<String, i64> = sqlx::query_as::<_, (sqlx::types::Uuid, i64)>(
        "SELECT release_id, count(*) FROM scheduler.release_events GROUP BY release_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, n)| (id.to_string(), n))
    .collect();
    pool.close().await;
    let total: i64 = committed.values().sum();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (seen.len() as i64) < total {
        assert!(tokio::time::Instant::now() < deadline, "the subscriber got {} of {total} events", seen.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
        follower.drain(&mut seen);
    }

    // The subscriber: each event once, cursors strictly increasing, every release's sequence 1..n.
    let cursors: Vec<u64> = seen.iter().map(|v| v["cursor"].as_str().unwrap().parse().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "no duplicate, no reordering across both kills");
    let mut per_release: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for v in &seen {
        per_release
            .entry(v["releaseId"].as_str().unwrap().to_string())
            .or_default()
            .push(v["sequence"].as_u64().unwrap());
    }
    for (id, n) in &committed {
        assert_eq!(per_release[id], (1..=*n as u64).collect::<Vec<_>>(), "release {id}: every event, in order");
    }

    // The webhook: everything (at least once across the kill), in order per release.
    let got = receiver
        .until(Duration::from_secs(30), |g| {
            g.iter().map(|r| r.header("ce-id").to_string()).collect::<std::collections::BTreeSet<_>>().len() as i64
                >= total
        })
        .await;
    let mut first_seen = std::collections::BTreeSet::new();
    let mut webhook_sequences: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in &got {
        if first_seen.insert(r.header("ce-id").to_string()) {
            let body = r.json();
            webhook_sequences
                .entry(body["customData"]["releaseId"].as_str().unwrap().to_string())
                .or_default()
                .push(body["customData"]["sequence"].as_u64().unwrap());
        }
    }
    for (id, n) in &committed {
        assert_eq!(webhook_sequences[id], (1..=*n as u64).collect::<Vec<_>>(), "webhook, release {id}");
    }
    drop(scheduler);
    drop(notifier);
}
