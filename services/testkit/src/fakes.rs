//! In-test implementations of the deployer, analyzer, migrator and notifier contracts. Each runs
//! as a real tonic server on its own loopback port, records every call, and can be told to fail
//! (return a status), hang (never answer; the caller's deadline fires) or be down (the server is
//! stopped, so connections are refused) — and to come back on the same port.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hopngo_proto::{
    analyzer::{self as apb, analyzer_service_server::AnalyzerServiceServer},
    deployer::{self as dpb, deployer_service_server::DeployerServiceServer},
    events::Event,
    migrator::{self as mpb, migrator_service_server::MigratorServiceServer},
    notifier::{self as npb, notifier_service_server::NotifierServiceServer},
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::Routes, transport::server::TcpIncoming};

/// How a fake answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Normally.
    Normal,
    /// With this status code.
    Fail(tonic::Code),
    /// Never (until the caller gives up).
    Hang,
}

#[derive(Clone)]
struct Gate(Arc<Mutex<Behavior>>);

impl Gate {
    fn new() -> Gate {
        Gate(Arc::new(Mutex::new(Behavior::Normal)))
    }
    async fn pass(&self) -> Result<(), Status> {
        let behavior = *self.0.lock().unwrap();
        match behavior {
            Behavior::Normal => Ok(()),
            Behavior::Fail(code) => Err(Status::new(code, "fake told to fail")),
            Behavior::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::deadline_exceeded("fake hung"))
            }
        }
    }
}

/// A fake's server: knows its port so it can come back after being stopped.
pub struct Served {
    addr: SocketAddr,
    routes: Routes,
    running: Option<(CancellationToken, JoinHandle<()>)>,
    gate: Gate,
}

impl Served {
    async fn start(routes: Routes, gate: Gate) -> anyhow::Result<Served> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut served = Served { addr, routes, running: None, gate };
        served.spawn(listener);
        Ok(served)
    }

    fn spawn(&mut self, listener: TcpListener) {
        let token = CancellationToken::new();
        let routes = self.routes.clone();
        let stop = token.clone();
        let handle = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), stop.cancelled_owned())
                .await;
        });
        self.running = Some((token, handle));
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sets how calls are answered.
    pub fn behave(&self, behavior: Behavior) {
        *self.gate.0.lock().unwrap() = behavior;
    }

    /// Stops the server: new connections are refused.
    pub async fn down(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), handle).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Starts the server again on the same port.
    pub async fn up(&mut self) -> anyhow::Result<()> {
        if self.running.is_none() {
            let mut last = None;
            for _ in 0..50 {
                match TcpListener::bind(self.addr).await {
                    Ok(listener) => {
                        self.spawn(listener);
                        return Ok(());
                    }
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(last.expect("tried").into());
        }
        Ok(())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some((token, handle)) = self.running.take() {
            token.cancel();
            handle.abort();
        }
    }
}

// === deployer ===

/// One ApplyTarget call.
#[derive(Clone, Debug)]
pub struct ApplyCall {
    /// Idempotency key.
    pub key: String,
    /// Desired state.
    pub target: dpb::TargetSpec,
}

#[derive(Default)]
struct DeployerState {
    calls: Vec<ApplyCall>,
    targets: HashMap<(String, String), (dpb::TargetSpec, String, Instant)>,
    converge_after: Duration,
    latency: Duration,
    in_flight: HashMap<(String, String), usize>,
    max_in_flight: usize,
}

/// Fake deployer: converges every desired state after a configurable delay.
#[derive(Clone)]
pub struct FakeDeployer {
    state: Arc<Mutex<DeployerState>>,
    gate: Gate,
}

impl FakeDeployer {
    /// Every ApplyTarget call so far.
    pub fn calls(&self) -> Vec<ApplyCall> {
        self.state.lock().unwrap().calls.clone()
    }
    /// Desired state in force for a service and environment.
    pub fn target(&self, service: &str, environment: &str) -> Option<dpb::TargetSpec> {
        self.state.lock().unwrap().targets.get(&(service.into(), environment.into())).map(|(t, _, _)| t.clone())
    }
    /// Time a desired state takes to converge.
    pub fn converge_after(&self, d: Duration) {
        self.state.lock().unwrap().converge_after = d;
    }
    /// Time each ApplyTarget call takes.
    pub fn latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }
    /// Most ApplyTarget calls ever in flight at once for one service and environment (more than
    /// one means two callers drove the same target at the same time).
    pub fn max_in_flight(&self) -> usize {
        self.state.lock().unwrap().max_in_flight
    }
}

#[tonic::async_trait]
impl dpb::deployer_service_server::DeployerService for FakeDeployer {
    async fn apply_target(
        &self,
        req: Request<dpb::ApplyTargetRequest>,
    ) -> Result<Response<dpb::ApplyTargetResponse>, Status> {
        self.gate.pass().await?;
        let r = req.into_inner();
        let target = r.target.ok_or_else(|| Status::invalid_argument("target: required"))?;
        if target.canary_weight > 100 {
            return Err(Status::invalid_argument(format!(
                "target.canary_weight: {} is not in 0..=100",
                target.canary_weight
            )));
        }
        if let Some(t) = target.tracks.iter().find(|t| t.artifact.is_empty()) {
            return Err(Status::invalid_argument(format!("target.tracks[{}].artifact: must not be empty", t.track)));
        }
        let id = (target.service.clone(), target.environment.clone());
        let latency = {
            let mut s = self.state.lock().unwrap();
            let n = s.in_flight.entry(id.clone()).or_default();
            *n += 1;
            let n = *n;
            s.max_in_flight = s.max_in_flight.max(n);
            s.latency
        };
        tokio::time::sleep(latency).await;
        let mut s = self.state.lock().unwrap();
        if let Some(n) = s.in_flight.get_mut(&id) {
            *n -= 1;
        }
        s.calls.push(ApplyCall { key: r.idempotency_key.clone(), target: target.clone() });
        let changed = s.targets.get(&id).is_none_or(|(t, _, _)| *t != target);
        if changed {
            s.targets.insert(id, (target, r.idempotency_key, Instant::now()));
        }
        Ok(Response::new(dpb::ApplyTargetResponse { changed, status: None }))
    }

    async fn get_target_status(
        &self,
        req: Request<dpb::GetTargetStatusRequest>,
    ) -> Result<Response<dpb::GetTargetStatusResponse>, Status> {
        self.gate.pass().await?;
        let r = req.into_inner();
        let s = self.state.lock().unwrap();
        let Some((target, key, at)) = s.targets.get(&(r.service.clone(), r.environment.clone())) else {
            return Ok(Response::new(dpb::GetTargetStatusResponse {
                status: Some(dpb::TargetStatus {
                    service: r.service,
                    environment: r.environment,
                    converged: true,
                    ..Default::default()
                }),
            }));
        };
        let converged = at.elapsed() >= s.converge_after;
        let tracks = target
            .tracks
            .iter()
            .map(|t| dpb::TrackStatus {
                track: t.track,
                artifact: t.artifact.clone(),
                desired_replicas: t.replicas,
                ready_replicas: if converged { t.replicas } else { 0 },
                ..Default::default()
            })
            .collect();
        Ok(Response::new(dpb::GetTargetStatusResponse {
            status: Some(dpb::TargetStatus {
                service: r.service,
                environment: r.environment,
                tracks,
                canary_weight: target.canary_weight,
                converged,
                idempotency_key: key.clone(),
                message: if converged { String::new() } else { "replicas starting".into() },
                address: String::new(),
                rollout: None,
            }),
        }))
    }

    async fn preflight(&self, _: Request<dpb::PreflightRequest>) -> Result<Response<dpb::PreflightResponse>, Status> {
        self.gate.pass().await?;
        Ok(Response::new(dpb::PreflightResponse { ok: true, checks: Vec::new() }))
    }

    async fn control_rollout(
        &self,
        req: Request<dpb::ControlRolloutRequest>,
    ) -> Result<Response<dpb::ControlRolloutResponse>, Status> {
        self.gate.pass().await?;
        let r = req.into_inner();
        // As the real deployer answers for a service it owns the workloads of.
        Err(Status::invalid_argument(format!("service: {:?} has no argoRollout", r.service)))
    }

    async fn render_target(
        &self,
        _: Request<dpb::RenderTargetRequest>,
    ) -> Result<Response<dpb::RenderTargetResponse>, Status> {
        self.gate.pass().await?;
        // As the local backend answers: it writes no objects.
        Err(Status::invalid_argument("target: the fake deployer writes no objects to render"))
    }
}

// === analyzer ===

/// One run started through the fake analyzer.
#[derive(Clone, Debug)]
pub struct FakeRun {
    /// Id.
    pub id: String,
    /// Idempotency key.
    pub key: String,
    /// Labels (`kind`: step, background, prePromotion, postPromotion, verify).
    pub labels: HashMap<String, String>,
    /// Metric names.
    pub metrics: Vec<String>,
    /// Names of the metrics that are dry runs.
    pub dry_run_metrics: Vec<String>,
    /// Arguments.
    pub args: HashMap<String, String>,
    /// Current phase.
    pub phase: apb::AnalysisPhase,
    /// Verdict reached after `polls_left` more reads.
    pub verdict: apb::AnalysisPhase,
    /// Reads before the verdict.
    pub polls_left: u32,
    /// Terminated by the caller.
    pub terminated: bool,
    /// StartAnalysisRun calls with this key.
    pub starts: u32,
}

#[derive(Default)]
struct AnalyzerState {
    runs: Vec<FakeRun>,
    // Index into `runs` by idempotency key: the scale benchmark starts tens of thousands.
    by_key: HashMap<String, usize>,
    verdicts: HashMap<String, apb::AnalysisPhase>,
    polls: u32,
    unusable_providers: HashMap<String, String>,
}

/// Fake analyzer: each run reaches a verdict (by the run's `kind` label, else the default) after
/// a number of reads.
#[derive(Clone)]
pub struct FakeAnalyzer {
    state: Arc<Mutex<AnalyzerState>>,
    gate: Gate,
}

impl AnalyzerState {
    /// The run with `id` (`run-N` is the N-th).
    fn run_mut(&mut self, id: &str) -> Result<&mut FakeRun, Status> {
        id.strip_prefix("run-")
            .and_then(|n| n.parse::<usize>().ok())
            .and_then(|n| self.runs.get_mut(n.checked_sub(1)?))
            .ok_or_else(|| Status::not_found(format!("run {id}")))
    }
}

impl FakeAnalyzer {
    /// Verdict of new runs of `kind` (`*` for any).
    pub fn verdict(&self, kind: &str, phase: apb::AnalysisPhase) {
        self.state.lock().unwrap().verdicts.insert(kind.to_string(), phase);
    }
    /// Reads before a new run reaches its verdict.
    pub fn polls_before_verdict(&self, polls: u32) {
        self.state.lock().unwrap().polls = polls;
    }
    /// Runs so far.
    pub fn runs(&self) -> Vec<FakeRun> {
        self.state.lock().unwrap().runs.clone()
    }
    /// CheckProviders reports the provider of `metric` as unusable, with `reason`.
    pub fn provider_unusable(&self, metric: &str, reason: &str) {
        self.state.lock().unwrap().unusable_providers.insert(metric.to_string(), reason.to_string());
    }
}

fn run_view(run: &FakeRun) -> apb::AnalysisRun {
    apb::AnalysisRun {
        id: run.id.clone(),
        phase: run.phase as i32,
        message: format!("fake verdict {:?}", run.phase),
        labels: run.labels.clone(),
        idempotency_key: run.key.clone(),
        ..Default::default()
    }
}

#[tonic::async_trait]
impl apb::analyzer_service_server::AnalyzerService for FakeAnalyzer {
    async fn start_analysis_run(
        &self,
        req: Request<apb::StartAnalysisRunRequest>,
    ) -> Result<Response<apb::StartAnalysisRunResponse>, Status> {
        self.gate.pass().await?;
        let r = req.into_inner();
        if r.metrics.is_empty() {
            return Err(Status::invalid_argument("metrics: at least one metric is required"));
        }
        let mut s = self.state.lock().unwrap();
        if let Some(&index) = s.by_key.get(&r.idempotency_key).filter(|_| !r.idempotency_key.is_empty()) {
            let run = &mut s.runs[index];
            run.starts += 1;
            return Ok(Response::new(apb::StartAnalysisRunResponse { run: Some(run_view(run)) }));
        }
        let kind = r.labels.get("kind").cloned().unwrap_or_default();
        let verdict =
            s.verdicts.get(&kind).or_else(|| s.verdicts.get("*")).copied().unwrap_or(apb::AnalysisPhase::Successful);
        let run = FakeRun {
            id: format!("run-{}", s.runs.len() + 1),
            key: r.idempotency_key,
            labels: r.labels,
            metrics: r.metrics.iter().map(|m| m.name.clone()).collect(),
            dry_run_metrics: r.metrics.iter().filter(|m| m.dry_run).map(|m| m.name.clone()).collect(),
            args: r.args,
            phase: apb::AnalysisPhase::Running,
            verdict,
            polls_left: s.polls,
            terminated: false,
            starts: 1,
        };
        let view = run_view(&run);
        let index = s.runs.len();
        s.by_key.insert(run.key.clone(), index);
        s.runs.push(run);
        Ok(Response::new(apb::StartAnalysisRunResponse { run: Some(view) }))
    }

    async fn get_analysis_run(
        &self,
        req: Request<apb::GetAnalysisRunRequest>,
    ) -> Result<Response<apb::GetAnalysisRunResponse>, Status> {
        self.gate.pass().await?;
        let id = req.into_inner().id;
        let mut s = self.state.lock().unwrap();
        let run = s.run_mut(&id)?;
        if run.phase == apb::AnalysisPhase::Running {
            if run.polls_left == 0 {
                run.phase = run.verdict;
            } else {
                run.polls_left -= 1;
            }
        }
        Ok(Response::new(apb::GetAnalysisRunResponse { run: Some(run_view(run)) }))
    }

    async fn list_analysis_runs(
        &self,
        _: Request<apb::ListAnalysisRunsRequest>,
    ) -> Result<Response<apb::ListAnalysisRunsResponse>, Status> {
        self.gate.pass().await?;
        let s = self.state.lock().unwrap();
        Ok(Response::new(apb::ListAnalysisRunsResponse {
            runs: s.runs.iter().map(run_view).collect(),
            next_page_token: String::new(),
        }))
    }

    type WatchAnalysisRunStream = tokio_stream::Iter<std::vec::IntoIter<Result<apb::WatchAnalysisRunResponse, Status>>>;

    async fn watch_analysis_run(
        &self,
        req: Request<apb::WatchAnalysisRunRequest>,
    ) -> Result<Response<Self::WatchAnalysisRunStream>, Status> {
        self.gate.pass().await?;
        let id = req.into_inner().id;
        let mut s = self.state.lock().unwrap();
        let run = s.run_mut(&id)?;
        Ok(Response::new(tokio_stream::iter(vec![Ok(apb::WatchAnalysisRunResponse { run: Some(run_view(run)) })])))
    }

    async fn terminate_analysis_run(
        &self,
        req: Request<apb::TerminateAnalysisRunRequest>,
    ) -> Result<Response<apb::TerminateAnalysisRunResponse>, Status> {
        self.gate.pass().await?;
        let id = req.into_inner().id;
        let mut s = self.state.lock().unwrap();
        let run = s.run_mut(&id)?;
        run.terminated = true;
        if run.phase == apb::AnalysisPhase::Running {
            run.phase = apb::AnalysisPhase::Successful;
        }
        Ok(Response::new(apb::TerminateAnalysisRunResponse { run: Some(run_view(run)) }))
    }

    async fn measure(&self, _: Request<apb::MeasureRequest>) -> Result<Response<apb::MeasureResponse>, Status> {
        Err(Status::unimplemented("the fake analyzer does not measure"))
    }

    async fn check_providers(
        &self,
        req: Request<apb::CheckProvidersRequest>,
    ) -> Result<Response<apb::CheckProvidersResponse>, Status> {
        self.gate.pass().await?;
        let s = self.state.lock().unwrap();
        let checks = req
            .into_inner()
            .metrics
            .into_iter()
            .map(|m| match s.unusable_providers.get(&m.name) {
                Some(reason) => apb::ProviderCheck { metric: m.name, ok: false, message: reason.clone() },
                None => apb::ProviderCheck { metric: m.name, ok: true, message: "fake provider".into() },
            })
            .collect();
        Ok(Response::new(apb::CheckProvidersResponse { checks }))
    }

    async fn judge(&self, _: Request<apb::JudgeRequest>) -> Result<Response<apb::JudgeResponse>, Status> {
        Err(Status::unimplemented("the fake analyzer does not judge"))
    }
}

// === migrator ===

struct MigratorState {
    runs: Vec<MigrationCall>,
    outcome: mpb::MigrationPhase,
    versions: (String, String),
}

/// One StartMigration the fake received (repeats of a key are not recorded again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationCall {
    /// Idempotency key.
    pub key: String,
    /// Database.
    pub database: String,
    /// Command.
    pub command: mpb::MigrationCommand,
    /// Target version.
    pub target_version: String,
    /// Undo everything.
    pub undo_all: bool,
}

/// Fake migrator: every run succeeds (or fails when told), moving the schema from one version to
/// another.
#[derive(Clone)]
pub struct FakeMigrator {
    state: Arc<Mutex<MigratorState>>,
    gate: Gate,
}

impl FakeMigrator {
    /// Every run started.
    pub fn runs(&self) -> Vec<MigrationCall> {
        self.state.lock().unwrap().runs.clone()
    }
    /// Outcome of runs.
    pub fn outcome(&self, phase: mpb::MigrationPhase) {
        self.state.lock().unwrap().outcome = phase;
    }
    /// Schema versions runs report (before, after).
    pub fn versions(&self, before: &str, after: &str) {
        self.state.lock().unwrap().versions = (before.to_string(), after.to_string());
    }

    fn run(&self, id: &str) -> Result<mpb::MigrationRun, Status> {
        let s = self.state.lock().unwrap();
        let index: usize = id
            .strip_prefix("migration-")
            .and_then(|n| n.parse().ok())
            .filter(|n| *n >= 1 && *n <= s.runs.len())
            .ok_or_else(|| Status::not_found(format!("migration run {id} not found")))?;
        let call = &s.runs[index - 1];
        Ok(mpb::MigrationRun {
            id: id.to_string(),
            command: call.command as i32,
            phase: s.outcome as i32,
            message: format!("fake {:?}", s.outcome),
            database: call.database.clone(),
            idempotency_key: call.key.clone(),
            version_before: s.versions.0.clone(),
            version_after: s.versions.1.clone(),
            target_version: call.target_version.clone(),
            ..Default::default()
        })
    }
}

type FakeWatch = std::pin::Pin<Box<dyn futures::Stream<Item = Result<mpb::WatchMigrationRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl mpb::migrator_service_server::MigratorService for FakeMigrator {
    async fn info(&self, _: Request<mpb::InfoRequest>) -> Result<Response<mpb::InfoResponse>, Status> {
        self.gate.pass().await?;
        Ok(Response::new(mpb::InfoResponse::default()))
    }
    async fn validate(&self, _: Request<mpb::ValidateRequest>) -> Result<Response<mpb::ValidateResponse>, Status> {
        self.gate.pass().await?;
        Ok(Response::new(mpb::ValidateResponse { valid: true, problems: Vec::new() }))
    }
    async fn start_migration(
        &self,
        req: Request<mpb::StartMigrationRequest>,
    ) -> Result<Response<mpb::StartMigrationResponse>, Status> {
        self.gate.pass().await?;
        let r = req.into_inner();
        let database = r.target.map(|t| t.database).unwrap_or_default();
        let index = {
            let mut s = self.state.lock().unwrap();
            match s.runs.iter().position(|c| c.key == r.idempotency_key) {
                Some(i) => i,
                None => {
                    s.runs.push(MigrationCall {
                        key: r.idempotency_key.clone(),
                        database,
                        command: mpb::MigrationCommand::try_from(r.command).unwrap_or_default(),
                        target_version: r.target_version.clone(),
                        undo_all: r.undo_all,
                    });
                    s.runs.len() - 1
                }
            }
        };
        Ok(Response::new(mpb::StartMigrationResponse { run: Some(self.run(&format!("migration-{}", index + 1))?) }))
    }
    async fn get_migration_run(
        &self,
        req: Request<mpb::GetMigrationRunRequest>,
    ) -> Result<Response<mpb::GetMigrationRunResponse>, Status> {
        self.gate.pass().await?;
        Ok(Response::new(mpb::GetMigrationRunResponse { run: Some(self.run(&req.into_inner().id)?) }))
    }
    type WatchMigrationRunStream = FakeWatch;
    async fn watch_migration_run(
        &self,
        req: Request<mpb::WatchMigrationRunRequest>,
    ) -> Result<Response<Self::WatchMigrationRunStream>, Status> {
        self.gate.pass().await?;
        let run = self.run(&req.into_inner().id)?;
        let once = futures::stream::iter([Ok(mpb::WatchMigrationRunResponse { run: Some(run) })]);
        Ok(Response::new(Box::pin(once)))
    }
    async fn list_migration_runs(
        &self,
        _: Request<mpb::ListMigrationRunsRequest>,
    ) -> Result<Response<mpb::ListMigrationRunsResponse>, Status> {
        self.gate.pass().await?;
        let runs = (1..=self.state.lock().unwrap().runs.len())
            .map(|i| self.run(&format!("migration-{i}")))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(mpb::ListMigrationRunsResponse { runs, next_page_token: String::new() }))
    }
}

// === notifier ===

#[derive(Default)]
struct NotifierState {
    events: Vec<Event>,
    ids: std::collections::HashSet<String>,
    duplicates: u32,
}

/// Fake notifier: keeps published events in order, deduplicated by id.
#[derive(Clone)]
pub struct FakeNotifier {
    state: Arc<Mutex<NotifierState>>,
    gate: Gate,
}

impl FakeNotifier {
    /// Events received, in order.
    pub fn events(&self) -> Vec<Event> {
        self.state.lock().unwrap().events.clone()
    }
    /// Events received again (same id).
    pub fn duplicates(&self) -> u32 {
        self.state.lock().unwrap().duplicates
    }
}

#[tonic::async_trait]
impl npb::notifier_service_server::NotifierService for FakeNotifier {
    async fn publish_events(
        &self,
        req: Request<npb::PublishEventsRequest>,
    ) -> Result<Response<npb::PublishEventsResponse>, Status> {
        self.gate.pass().await?;
        let mut s = self.state.lock().unwrap();
        let (mut accepted, mut duplicates) = (0, 0);
        for event in req.into_inner().events {
            if !s.ids.insert(event.id.clone()) {
                duplicates += 1;
            } else {
                s.events.push(event);
                accepted += 1;
            }
        }
        s.duplicates += duplicates;
        Ok(Response::new(npb::PublishEventsResponse { accepted, duplicates }))
    }

    type SubscribeStream = tokio_stream::Empty<Result<npb::SubscribeResponse, Status>>;

    async fn subscribe(&self, _: Request<npb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("the fake notifier does not serve subscriptions"))
    }
    async fn create_webhook(
        &self,
        _: Request<npb::CreateWebhookRequest>,
    ) -> Result<Response<npb::CreateWebhookResponse>, Status> {
        Err(Status::unimplemented("the fake notifier has no webhooks"))
    }
    async fn list_webhooks(
        &self,
        _: Request<npb::ListWebhooksRequest>,
    ) -> Result<Response<npb::ListWebhooksResponse>, Status> {
        Err(Status::unimplemented("the fake notifier has no webhooks"))
    }
    async fn delete_webhook(
        &self,
        _: Request<npb::DeleteWebhookRequest>,
    ) -> Result<Response<npb::DeleteWebhookResponse>, Status> {
        Err(Status::unimplemented("the fake notifier has no webhooks"))
    }
    async fn list_deliveries(
        &self,
        _: Request<npb::ListDeliveriesRequest>,
    ) -> Result<Response<npb::ListDeliveriesResponse>, Status> {
        Err(Status::unimplemented("the fake notifier has no webhooks"))
    }
    async fn replay_webhook(
        &self,
        _: Request<npb::ReplayWebhookRequest>,
    ) -> Result<Response<npb::ReplayWebhookResponse>, Status> {
        Err(Status::unimplemented("the fake notifier has no webhooks"))
    }
    async fn acknowledge(
        &self,
        _: Request<npb::AcknowledgeRequest>,
    ) -> Result<Response<npb::AcknowledgeResponse>, Status> {
        Err(Status::unimplemented("the fake notifier does not escalate"))
    }
    async fn list_escalations(
        &self,
        _: Request<npb::ListEscalationsRequest>,
    ) -> Result<Response<npb::ListEscalationsResponse>, Status> {
        Err(Status::unimplemented("the fake notifier does not escalate"))
    }
}

/// All four fakes, each on its own port.
pub struct Fakes {
    /// Deployer state and controls.
    pub deployer: FakeDeployer,
    /// Deployer server.
    pub deployer_server: Served,
    /// Analyzer state and controls.
    pub analyzer: FakeAnalyzer,
    /// Analyzer server.
    pub analyzer_server: Served,
    /// Migrator state and controls.
    pub migrator: FakeMigrator,
    /// Migrator server.
    pub migrator_server: Served,
    /// Notifier state.
    pub notifier: FakeNotifier,
    /// Notifier server.
    pub notifier_server: Served,
}

impl Fakes {
    /// The scheduler's flags that point it at these fakes.
    pub fn endpoint_args(&self) -> Vec<String> {
        [
            ("--deployer-url", &self.deployer_server),
            ("--analyzer-url", &self.analyzer_server),
            ("--migrator-url", &self.migrator_server),
            ("--notifier-url", &self.notifier_server),
        ]
        .into_iter()
        .flat_map(|(flag, server)| [flag.to_string(), server.url()])
        .collect()
    }

    /// Starts all four on loopback.
    pub async fn start() -> anyhow::Result<Fakes> {
        let gate = Gate::new();
        let deployer = FakeDeployer { state: Arc::default(), gate: gate.clone() };
        let deployer_server = Served::start(Routes::new(DeployerServiceServer::new(deployer.clone())), gate).await?;
        let gate = Gate::new();
        let analyzer = FakeAnalyzer { state: Arc::default(), gate: gate.clone() };
        let analyzer_server = Served::start(Routes::new(AnalyzerServiceServer::new(analyzer.clone())), gate).await?;
        let gate = Gate::new();
        let migrator = FakeMigrator {
            state: Arc::new(Mutex::new(MigratorState {
                runs: Vec::new(),
                outcome: mpb::MigrationPhase::Succeeded,
                versions: (String::new(), String::new()),
            })),
            gate: gate.clone(),
        };
        let migrator_server = Served::start(Routes::new(MigratorServiceServer::new(migrator.clone())), gate).await?;
        let gate = Gate::new();
        let notifier = FakeNotifier { state: Arc::default(), gate: gate.clone() };
        let notifier_server = Served::start(Routes::new(NotifierServiceServer::new(notifier.clone())), gate).await?;
        Ok(Fakes {
            deployer,
            deployer_server,
            analyzer,
            analyzer_server,
            migrator,
            migrator_server,
            notifier,
            notifier_server,
        })
    }
}
