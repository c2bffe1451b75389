//! The runbook's rollback figure (`cargo bench -p hopngo-e2e --bench rollback`): from a faulty
//! canary's first failing measurement to all traffic back on the stable version, with the whole
//! stack as real processes, real traffic through the proxy, the SLO's critical error-rate check
//! measuring every 1 s with failureLimit 0. Measured two ways for each of the canaries:
//!
//! - **confirmed**: the failing measurement's end (analyzer) → the release's `rolled-back`
//!   transition, which the scheduler records once the deployer reports the stable version alone
//!   at 100 % (what `hopctl timeline` prints; the transitions of one engine step carry that step's
//!   start time, so this leaves out the few milliseconds of the step's own calls);
//! - **seen by traffic**: the failing measurement's end → the last request answered by the
//!   canary, from a client sending 100 requests/s (the router's view, independent of the API; at
//!   25 % the canary gets every fourth request, so this is resolved to about 40 ms, and it can
//!   come out below zero when the canary's last request was sent before the measurement ended).
//!
//! The target is 2 s. Baseline in the same run: the measurement interval (1 s), which bounds how
//! long a failure can go unmeasured.

use hopngo_e2e::channel;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hopngo_e2e::{Part, Stack, StackOptions, Traffic, as_user, until};
use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_client::AnalyzerServiceClient},
    notifier::{self as npb, notifier_service_client::NotifierServiceClient},
    release::{self as pb, ReleasePhase as P},
};
use hopngo_testkit::db::TestDb;
use tokio_stream::StreamExt as _;

const CANARIES: u32 = 8;
const TARGET: f64 = 2.0;

const CONFIG: &str = r#"
environments:
  - name: staging
    progressDeadline: 60s
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate-abort
        severity: critical
        interval: 1s
        initialDelay: 1s
        failureLimit: 0
        failureCondition: result > 0.05
        provider: {scrape: {url: "{metrics}", window: 2s, expression: {error-ratio}}}
services:
  - name: booking
    replicas: 2
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 60s}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 1}
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
"#;

fn seconds_since_epoch(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

fn seconds(t: &Option<prost_types::Timestamp>) -> f64 {
    t.as_ref().map(|t| t.seconds as f64 + t.nanos as f64 / 1e9).unwrap_or_default()
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

#[tokio::main]
async fn main() {
    let db = TestDb::create().await.expect("database");
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.expect("stack");
    let mut releases = stack.releases().await;
    let mut analyzer = AnalyzerServiceClient::new(channel(&stack.url(Part::Analyzer)));
    let mut notifier = NotifierServiceClient::new(channel(&stack.url(Part::Notifier)));
    let create = |artifact: String| pb::CreateReleaseRequest {
        service: "booking".into(),
        environment: "staging".into(),
        artifact,
        ..Default::default()
    };
    let first = releases.create_release(as_user(create("1.0.0".into()), "bench", &[])).await.unwrap();
    until(&mut releases, &first.into_inner().release.unwrap().id, 60, |r| r.settled).await;
    let traffic = Traffic::start(&stack.address("booking", "staging").await, 100);

    let (mut confirmed, mut by_traffic) = (Vec::new(), Vec::new());
    for i in 1..=CANARIES {
        let artifact = format!("2.{i}.0+errors=0.5");
        let r = releases.create_release(as_user(create(artifact.clone()), "bench", &[])).await.unwrap();
        let r = r.into_inner().release.unwrap();
        let done = until(&mut releases, &r.id, 60, |r| r.settled).await;
        assert_eq!(done.phase, P::Aborted as i32, "{}", done.message);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(run) = done.analysis_runs.iter().find(|a| a.kind == "background") else {
            panic!("aborted without a background analysis: {}", done.message)
        };
        let run_id = &run.run_id;
        let run = analyzer.get_analysis_run(apb::GetAnalysisRunRequest { id: run_id.clone() }).await.unwrap();
        let run = run.into_inner().run.unwrap();
        let failed_at = run
            .metrics
            .iter()
            .flat_map(|m| &m.measurements)
            .filter(|m| m.phase == apb::AnalysisPhase::Failed as i32)
            .map(|m| seconds(&m.finished_at))
            .fold(f64::MAX, f64::min);
        let request = npb::SubscribeRequest {
            filter: Some(npb::EventFilter { release_id: r.id.clone(), ..Default::default() }),
            start: Some(npb::subscribe_request::Start::FromBeginning(true)),
            subscriber: "bench".into(),
            stop_at_head: true,
        };
        let mut stream = notifier.subscribe(request).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Some(item) = stream.next().await {
            if let Some(npb::subscribe_response::Item::Event(e)) = item.unwrap().item {
                events.push(e);
            }
        }
        let back = hopngo_client::views::failure_to_stable(&events, &[run]).expect("rolled back after a failure");
        let last_canary = traffic.last_sent(&artifact).map(seconds_since_epoch).unwrap_or(f64::MIN);
        confirmed.push(back);
        by_traffic.push((last_canary - failed_at).max(0.0));
        println!(
            "canary {i}: first failing measurement → rolled-back {:.3} s, → last canary answer {:.3} s",
            back,
            last_canary - failed_at
        );
    }
    drop(traffic);
    for (name, mut xs) in
        [("confirmed (rolled-back event)", confirmed), ("seen by traffic (last canary answer)", by_traffic)]
    {
        xs.sort_by(f64::total_cmp);
        let (p50, max) = (quantile(&xs, 0.5), xs[xs.len() - 1]);
        println!(
            "{name}: {CANARIES} canaries, min {:.3} s, p50 {p50:.3} s, max {max:.3} s; max/target {:.4} (target {TARGET} s), \
             max/measurement interval {:.4}",
            xs[0],
            max / TARGET,
            max / 1.0
        );
    }
}
