//! An analyzer served on loopback over a test database, and metric builders.

#![allow(dead_code)]

use hopngo_testkit::access::AuthedChannel;
use hopngo_testkit::access::channel;
use std::time::Duration;

use clap::Parser as _;
use hopngo_analyzer::server::{Args, run};
use hopngo_proto::analyzer::{self as pb, analyzer_service_client::AnalyzerServiceClient, metric::Provider};
use hopngo_testkit::{
    db::TestDb,
    server::{InProcess, server_args},
};

pub struct Running {
    pub client: AnalyzerServiceClient<AuthedChannel>,
    server: InProcess,
}

/// The smoke-test scripts the tests run (with `TARGET` set from the run's `track` argument).
pub const SCRIPTS: [&str; 3] = ["echo smoke tests passed for $TARGET", "echo 2 of 9 failed; exit 1", "sleep 30"];

const TARGET: &[(&str, &str)] = &[("TARGET", "{{args.track}}")];

/// An analyzer whose delivery config allows loopback and declares every job a test sends.
pub async fn start(db: &TestDb) -> Running {
    let scripts: Vec<[&str; 3]> = SCRIPTS.iter().map(|s| ["sh", "-c", s]).collect();
    let mut jobs: Vec<hopngo_testkit::config::TestJob<'_>> =
        vec![(&["true"], &[]), (&["hopngo-no-such-smoke-test"], &[])];
    jobs.extend(scripts.iter().map(|s| (s.as_slice(), TARGET)));
    start_with(db, &hopngo_testkit::config::loopback_config(&jobs)).await
}

/// An analyzer reading the delivery config at `config`.
pub async fn start_with(db: &TestDb, config: &std::path::Path) -> Running {
    let mut argv = server_args("hopngo-analyzer", &db.url, "1s");
    argv.extend(["--delivery-config".into(), config.to_str().unwrap().into()]);
    let args = Args::parse_from(argv);
    let server = InProcess::start(|shutdown, ready| run(args, shutdown, Some(ready))).await;
    let client = AnalyzerServiceClient::new(channel(&server.url()));
    Running { client, server }
}

impl Running {
    pub async fn stop(self) {
        self.server.stop().await;
    }

    pub async fn start_run(&self, metrics: Vec<pb::Metric>, open_ended: bool) -> pb::AnalysisRun {
        let request = pb::StartAnalysisRunRequest {
            metrics,
            args: [("track".to_string(), "good".to_string())].into(),
            labels: [("test".to_string(), "yes".to_string())].into(),
            idempotency_key: String::new(),
            open_ended,
        };
        self.client.clone().start_analysis_run(request).await.unwrap().into_inner().run.unwrap()
    }

    /// Follows the run's watch stream to its end (bounded).
    pub async fn finish(&self, id: &str, within: Duration) -> pb::AnalysisRun {
        let mut stream = self
            .client
            .clone()
            .watch_analysis_run(pb::WatchAnalysisRunRequest { id: id.into() })
            .await
            .unwrap()
            .into_inner();
        let mut last = None;
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(item)) = tokio::time::timeout_at(deadline, stream.message()).await.unwrap_or(Ok(None)) {
            last = item.run;
        }
        let run = last.expect("at least the first state");
        assert!(run.completed_at.is_some(), "run {id} not completed within {within:?}: {run:?}");
        run
    }
}

pub fn secs(s: f64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s.trunc() as i64, nanos: (s.fract() * 1e9) as i32 })
}

pub fn metric(name: &str, provider: Provider) -> pb::Metric {
    pb::Metric { name: name.into(), provider: Some(provider), ..Default::default() }
}

pub fn prometheus(address: &str, query: &str) -> Provider {
    Provider::Prometheus(pb::PrometheusProvider {
        address: address.into(),
        query: query.into(),
        timeout: secs(5.0),
        range: None,
        step: None,
    })
}

pub fn phase(run: &pb::AnalysisRun) -> pb::AnalysisPhase {
    pb::AnalysisPhase::try_from(run.phase).unwrap()
}

pub fn metric_phase(m: &pb::MetricResult) -> pb::AnalysisPhase {
    pb::AnalysisPhase::try_from(m.phase).unwrap()
}
