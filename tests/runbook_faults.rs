//! The runbook under faults: while a good canary and a faulty one run side by side under traffic,
//! the scheduler, the deployer and the analyzer are each killed with SIGKILL once and started
//! again. Every release still ends where it should (the good one succeeded, the faulty one
//! rolled back), traffic ends on the right versions, and a subscriber has every event of every
//! release exactly once, in order.

use std::time::Duration;

use hopngo_e2e::{Part, Releases, Stack, StackOptions, answers, create_as, until};
use hopngo_proto::release::{self as pb, ReleasePhase as P};
use hopngo_testkit::db::TestDb;

const CONFIG: &str = r#"
environments:
  - name: staging
    progressDeadline: 90s
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        severity: critical
        interval: 1s
        initialDelay: 1s
        failureCondition: result > 0.05
        # While the deployer restarts, its replicas do too: the canary has no data for a window
        # or two, which should not stop the release for a person.
        inconclusiveLimit: 3
        provider: {scrape: {url: "{metrics}", window: 3s, expression: {error-ratio}}}
services:
  - name: booking
    replicas: 2
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 4s}
          - setWeight: 50
          - pause: {duration: 6s}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 1}
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
  - name: auth
    # The faulty canary holds at 50% long enough for its failures to be measured whatever the
    # faults cost it: a deployer restart starts its replicas again, and with them the count of
    # good answers before the errors begin.
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 4s}
          - setWeight: 50
          - pause: {duration: 60s}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 1}
    local: {command: ["{demo}", --name, auth, --version, "{version}", --port, "{port}"]}
"#;

async fn create(releases: &mut Releases, service: &str, artifact: &str) -> pb::Release {
    create_as(releases, "alice", service, "staging", artifact).await
}

async fn get(stack: &Stack, id: &str) -> pb::Release {
    // A fresh connection each time: the scheduler may have been restarted.
    let mut releases = stack.releases().await;
    releases.get_release(pb::GetReleaseRequest { id: id.into() }).await.unwrap().into_inner().release.unwrap()
}

async fn wait_for(stack: &Stack, id: &str, secs: u64, done: impl Fn(&pb::Release) -> bool) -> pb::Release {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let r = get(stack, id).await;
        if done(&r) {
            return r;
        }
        assert!(tokio::time::Instant::now() < deadline, "not there in {secs}s: {r:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_deployer_and_analyzer_each_killed_once_mid_release() {
    let db = TestDb::create().await.unwrap();
    let mut stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let subscriber = stack.subscribe().await;
    let mut releases = stack.releases().await;
    for service in ["booking", "auth"] {
        let r = create(&mut releases, service, "1.0.0").await;
        until(&mut releases, &r.id, 60, |r| r.settled).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    for service in ["booking", "auth"] {
        let load = hopngo_deployer::traffic::Load {
            url: format!("http://{}/api/v1/info", stack.address(service, "staging").await),
            rate: 30,
            duration: Duration::from_secs(120),
            max_requests: 3600,
            timeout: Duration::from_secs(2),
        };
        let stop = stop.clone();
        tokio::spawn(async move { hopngo_deployer::traffic::run(&load, stop).await });
    }
    let good = create(&mut releases, "booking", "1.1.0").await;
    // Good for its first 60 answers, then half fail: caught by its background analysis.
    let faulty = create(&mut releases, "auth", "1.1.0+errors=0.5,errorsAfter=60").await;
    drop(releases);

    // The scheduler dies as soon as the canaries have traffic.
    wait_for(&stack, &good.id, 60, |r| r.canary_weight == 25).await;
    stack.kill9(Part::Scheduler).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_part(Part::Scheduler).await.unwrap();

    // The deployer (and every replica with it) while the good canary pauses.
    wait_for(&stack, &good.id, 60, |r| r.current_step_index >= 1 && r.phase == P::Paused as i32).await;
    stack.kill9(Part::Deployer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_part(Part::Deployer).await.unwrap();

    // The analyzer while both background analyses run.
    wait_for(&stack, &good.id, 60, |r| r.canary_weight == 50).await;
    stack.kill9(Part::Analyzer).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.start_part(Part::Analyzer).await.unwrap();

    let good = wait_for(&stack, &good.id, 120, |r| r.settled).await;
    let faulty = wait_for(&stack, &faulty.id, 120, |r| r.settled).await;
    assert_eq!(good.phase, P::Succeeded as i32, "{}", good.message);
    assert_eq!(faulty.phase, P::Aborted as i32, "{}", faulty.message);
    assert!(faulty.message.contains("background analysis failed"), "{}", faulty.message);
    stop.cancel();
    assert_eq!(
        answers(&stack.address("booking", "staging").await, 60).await,
        [(("1.1.0".to_string(), 200), 60)].into()
    );
    assert_eq!(answers(&stack.address("auth", "staging").await, 60).await, [(("1.0.0".to_string(), 200), 60)].into());
    for r in [&good, &faulty] {
        // The scheduler's events (the notifier's own escalation events carry no sequence).
        let ours = |e: &&hopngo_proto::events::Event| e.release_id == r.id && e.sequence > 0;
        subscriber.until(20, |e| e.iter().filter(ours).count() as u64 >= r.version).await;
        let seqs: Vec<u64> = subscriber.events().iter().filter(ours).map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=r.version).collect::<Vec<_>>(), "every event of {} once, in order", r.service);
    }
}
