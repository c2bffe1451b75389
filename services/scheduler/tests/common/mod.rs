//! Harness: real PostgreSQL, the scheduler serving gRPC on loopback (in-process), and the four
//! other contracts served by recording fakes.

#![allow(dead_code)]

use std::{future::Future, net::SocketAddr, time::Duration};

use clap::Parser as _;
use hopngo_proto::{
    config::{ApplyConfigRequest, config_service_client::ConfigServiceClient},
    release::{self as pb, release_service_client::ReleaseServiceClient},
};
use hopngo_scheduler::server::{Args, run_with};
pub use hopngo_testkit::access::as_user;
use hopngo_testkit::{
    access::{AuthedChannel, channel},
    db::TestDb,
    fakes::Fakes,
    server::{InProcess, server_args, with_args},
};
use tokio_util::sync::CancellationToken;

pub const CONFIG: &str = r#"
environments:
  - name: staging
    progressDeadline: 20s
  - name: production
    from: staging
    progressDeadline: 20s
    approval: {minApprovals: 1, roles: [release-manager]}
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        interval: 1s
        count: 3
        successCondition: result < 0.01
        provider: {prometheus: {address: "http://127.0.0.1:9090", query: "sum(rate(errors{track='{{args.track}}'}[1m]))"}}
services:
  - name: booking-service
    replicas: 2
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 1s}
          - analysis: {templates: [slo]}
          - setWeight: 50
          - pause: {}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 1}
  - name: gateway
    strategy:
      blueGreen:
        prePromotionAnalysis: {templates: [slo]}
        postPromotionAnalysis: {templates: [slo]}
        scaleDownDelay: 1s
  - name: chat-service
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {duration: 1s}
"#;

pub struct Harness {
    pub db: TestDb,
    pub fakes: Fakes,
    pub addr: SocketAddr,
    /// Its admin listener, when the test's flags turned it on.
    pub admin: Option<SocketAddr>,
    pub releases: ReleaseServiceClient<AuthedChannel>,
    pub shutdown: CancellationToken,
    server: InProcess,
}

pub fn args(db: &str, fakes: &Fakes, extra: &[&str]) -> Args {
    let mut argv = server_args("hopngo-scheduler", db, "2s");
    argv.extend(
        ["--poll-interval", "50ms", "--call-timeout", "1s", "--workers", "4", "--db-max-connections", "12"]
            .iter()
            .map(|s| s.to_string()),
    );
    argv.extend(fakes.endpoint_args());
    Args::parse_from(with_args(argv, &extra.iter().map(|s| s.to_string()).collect::<Vec<_>>()))
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(&[]).await
    }

    pub async fn start_with(extra: &[&str]) -> Harness {
        let db = TestDb::create().await.expect("test database");
        let fakes = Fakes::start().await.expect("fakes");
        let args = args(&db.url, &fakes, extra);
        let server = InProcess::start(|shutdown, ready| run_with(args, shutdown, Some(ready))).await;
        let releases = ReleaseServiceClient::new(channel(&server.url()));
        let h = Harness {
            db,
            fakes,
            addr: server.addr,
            admin: server.admin,
            releases,
            shutdown: server.shutdown.clone(),
            server,
        };
        h.apply(CONFIG).await;
        h
    }

    pub fn client_config(&self) -> ConfigServiceClient<AuthedChannel> {
        ConfigServiceClient::new(channel(&format!("http://{}", self.addr)))
    }

    pub async fn apply(&self, yaml: &str) {
        let mut config = self.client_config();
        config
            .apply_config(as_user(ApplyConfigRequest { yaml: yaml.into() }, "ops", &[]))
            .await
            .expect("config applies");
    }

    pub fn client(&self) -> ReleaseServiceClient<AuthedChannel> {
        self.releases.clone()
    }

    pub async fn create(
        &self,
        service: &str,
        environment: &str,
        artifact: &str,
        user: &str,
    ) -> Result<pb::Release, tonic::Status> {
        let req = pb::CreateReleaseRequest {
            service: service.into(),
            environment: environment.into(),
            artifact: artifact.into(),
            ..Default::default()
        };
        Ok(self.client().create_release(as_user(req, user, &[])).await?.into_inner().release.unwrap())
    }

    pub async fn get(&self, id: &str) -> pb::Release {
        self.client().get_release(pb::GetReleaseRequest { id: id.into() }).await.unwrap().into_inner().release.unwrap()
    }

    /// Polls until `pred` holds (at most `secs`).
    pub async fn wait(&self, id: &str, secs: u64, pred: impl Fn(&pb::Release) -> bool) -> pb::Release {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let r = self.get(id).await;
            if pred(&r) {
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting; release is {} ({}): {}", phase_name(&r), r.current_step_index, r.message);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn wait_phase(&self, id: &str, phase: pb::ReleasePhase, secs: u64) -> pb::Release {
        self.wait(id, secs, |r| r.phase == phase as i32).await
    }

    pub async fn wait_settled(&self, id: &str, secs: u64) -> pb::Release {
        self.wait(id, secs, |r| r.settled).await
    }

    /// A release of `artifact` that already is stable (initial deploy), so the next one canaries.
    pub async fn seed_stable(&self, service: &str, environment: &str, artifact: &str) {
        let r = self.create(service, environment, artifact, "seed").await.expect("seed release");
        let r = self.wait_settled(&r.id, 20).await;
        assert_eq!(r.phase, pb::ReleasePhase::Succeeded as i32, "seed: {}", r.message);
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

pub fn phase_name(r: &pb::Release) -> &'static str {
    pb::ReleasePhase::try_from(r.phase).map(|p| p.as_str_name()).unwrap_or("?")
}

pub async fn eventually<F, Fut>(secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "condition not reached in {secs}s");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
