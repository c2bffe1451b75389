//! `hopngo.analyzer.v1.AnalyzerService`: validates requests (errors name the metric and the
//! field), stores runs for the engine to measure, serves their state and the judge.

use std::{collections::BTreeMap, pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _};
use hopngo_kit::follow::{follow, page_token, parse_page_token};
use hopngo_proto::analyzer::{self as pb, analyzer_service_server::AnalyzerService};
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert,
    domain::{
        judge,
        run::{MetricState, Observation, Phase, Provider, judge as judge_measurement},
    },
    engine::{Engine, settle},
    error::AnalyzerError,
    store::{self, Store, StoredRun},
};

/// How often a watcher looks at its run when no change was announced (changes made by another
/// replica).
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Largest page of `ListAnalysisRuns`.
const MAX_PAGE: u32 = 500;

/// The service.
pub struct Analyzer {
    store: Store,
    engine: Arc<Engine>,
    /// Added to a run's longest provider timeout for its rounds' lease.
    lease_slack: Duration,
}

impl Analyzer {
    /// The service over `store`, measured by `engine`.
    pub fn new(store: Store, engine: Arc<Engine>, lease_slack: Duration) -> Analyzer {
        Analyzer { store, engine, lease_slack }
    }
}

fn run_id(id: &str) -> Result<Uuid, AnalyzerError> {
    Uuid::parse_str(id).map_err(|_| AnalyzerError::invalid("id", format!("{id:?} is not a run id")))
}

fn timeout_of(p: &Provider) -> Duration {
    match p {
        Provider::Prometheus { timeout, .. }
        | Provider::Scrape { timeout, .. }
        | Provider::Web { timeout, .. }
        | Provider::Job { timeout, .. } => *timeout,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchAnalysisRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AnalyzerService for Analyzer {
    async fn start_analysis_run(
        &self,
        request: Request<pb::StartAnalysisRunRequest>,
    ) -> Result<Response<pb::StartAnalysisRunResponse>, Status> {
        let req = request.into_inner();
        let args: BTreeMap<String, String> = req.args.into_iter().collect();
        let specs = convert::metric_specs(&req.metrics, &args, req.open_ended, &self.engine.providers().policy())?;
        let now = store::now();
        let started = std::time::Instant::now();
        let longest = specs.iter().map(|s| timeout_of(&s.provider)).max().unwrap_or_default();
        let first_due = specs.iter().map(|s| now + s.initial_delay).min();
        let key = if req.idempotency_key.is_empty() { None } else { Some(req.idempotency_key.clone()) };
        let run = StoredRun {
            id: Uuid::now_v7(),
            idempotency_key: key,
            states: vec![MetricState::default(); specs.len()],
            specs,
            args,
            labels: req.labels.into_iter().collect(),
            phase: Phase::Pending,
            message: String::new(),
            severity: None,
            open_ended: req.open_ended,
            terminate_reason: None,
            started_at: now,
            completed_at: None,
            next_due_at: first_due,
            lease_secs: (longest + self.lease_slack).as_secs().max(1).min(i32::MAX as u64) as i32,
            version: 0,
        };
        let (stored, created) = self.store.insert(&run).await?;
        if !created {
            if stored.specs != run.specs || stored.args != run.args || stored.labels != run.labels {
                return Err(AnalyzerError::invalid(
                    "idempotency_key",
                    format!("{:?} was used to start run {} with a different request", req.idempotency_key, stored.id),
                )
                .into());
            }
        } else {
            for spec in &stored.specs {
                if matches!(spec.provider, Provider::Scrape { .. }) {
                    let engine = self.engine.clone();
                    let provider = spec.provider.clone();
                    tokio::spawn(async move { engine.providers().prime(&provider, started).await });
                }
            }
            self.engine.wake();
        }
        Ok(Response::new(pb::StartAnalysisRunResponse { run: Some(convert::run(&stored)) }))
    }

    async fn get_analysis_run(
        &self,
        request: Request<pb::GetAnalysisRunRequest>,
    ) -> Result<Response<pb::GetAnalysisRunResponse>, Status> {
        let id = run_id(&request.into_inner().id)?;
        let run = self.store.get(id).await?;
        Ok(Response::new(pb::GetAnalysisRunResponse { run: Some(convert::run(&run)) }))
    }

    async fn list_analysis_runs(
        &self,
        request: Request<pb::ListAnalysisRunsRequest>,
    ) -> Result<Response<pb::ListAnalysisRunsResponse>, Status> {
        let req = request.into_inner();
        let size = if req.page_size == 0 { 50 } else { req.page_size.min(MAX_PAGE) };
        let after = parse_page_token(&req.page_token).map_err(|e| AnalyzerError::invalid("page_token", e))?;
        let labels: BTreeMap<String, String> = req.labels.into_iter().collect();
        let mut runs = self.store.list(&labels, size as i64 + 1, after).await?;
        let next_page_token = if runs.len() > size as usize {
            runs.truncate(size as usize);
            runs.last().map(|r| page_token(r.started_at, r.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAnalysisRunsResponse {
            runs: runs.iter().map(convert::run).collect(),
            next_page_token,
        }))
    }

    type WatchAnalysisRunStream = WatchStream;

    async fn watch_analysis_run(
        &self,
        request: Request<pb::WatchAnalysisRunRequest>,
    ) -> Result<Response<Self::WatchAnalysisRunStream>, Status> {
        let id = run_id(&request.into_inner().id)?;
        let notice = self.engine.watch(id);
        let first = self.store.get(id).await?;
        let (versions, loads) = (self.store.clone(), self.store.clone());
        let stream = follow(
            first,
            notice,
            WATCH_POLL,
            |r| r.version,
            |r| r.completed_at.is_some(),
            move || {
                let store = versions.clone();
                async move { store.version(id).await.map_err(Status::from) }
            },
            move || {
                let store = loads.clone();
                async move { store.get(id).await.map_err(Status::from) }
            },
        )
        .map(|r| r.map(|run| pb::WatchAnalysisRunResponse { run: Some(convert::run(&run)) }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn terminate_analysis_run(
        &self,
        request: Request<pb::TerminateAnalysisRunRequest>,
    ) -> Result<Response<pb::TerminateAnalysisRunResponse>, Status> {
        let req = request.into_inner();
        let id = run_id(&req.id)?;
        let reason = if req.reason.is_empty() { "terminated".to_string() } else { req.reason };
        let mut completed_now = false;
        let run = self
            .store
            .update(id, |run| {
                if run.completed_at.is_some() {
                    return false;
                }
                run.terminate_reason = Some(reason);
                settle(run, true, store::now());
                completed_now = true;
                true
            })
            .await?;
        if completed_now {
            self.engine.metrics().completed(&run);
        }
        self.engine.changed(id);
        Ok(Response::new(pb::TerminateAnalysisRunResponse { run: Some(convert::run(&run)) }))
    }

    async fn measure(&self, request: Request<pb::MeasureRequest>) -> Result<Response<pb::MeasureResponse>, Status> {
        let req = request.into_inner();
        let metric = req.metric.ok_or_else(|| AnalyzerError::invalid("metric", "is required"))?;
        let args: BTreeMap<String, String> = req.args.into_iter().collect();
        // One measurement: the run-level fields (interval, count) do not apply.
        let one = pb::Metric { interval: None, count: 0, ..metric };
        let spec =
            convert::metric_spec(0, &one, &args, false, &self.engine.providers().policy()).map_err(|e| match e {
                AnalyzerError::Invalid { field, reason } => {
                    AnalyzerError::invalid(field.replacen("metrics[0]", "metric", 1), reason)
                }
                other => other,
            })?;
        let started_at = OffsetDateTime::now_utc();
        let observation = self.engine.providers().measure(&spec.provider, None).await;
        let (phase, message, no_data) = judge_measurement(&spec, &observation);
        let value = match &observation {
            Observation::Value { value, .. } => value.render(),
            Observation::Error(_) => String::new(),
        };
        let m = crate::domain::run::Measurement {
            phase,
            value,
            message,
            started_at,
            finished_at: OffsetDateTime::now_utc(),
            no_data,
        };
        Ok(Response::new(pb::MeasureResponse { measurement: Some(convert::measurement(&m)) }))
    }

    async fn check_providers(
        &self,
        request: Request<pb::CheckProvidersRequest>,
    ) -> Result<Response<pb::CheckProvidersResponse>, Status> {
        let req = request.into_inner();
        let args: BTreeMap<String, String> = req.args.into_iter().collect();
        // Open-ended: the checks do not care how often a metric would measure.
        let specs = convert::metric_specs(&req.metrics, &args, true, &self.engine.providers().policy())?;
        let providers = self.engine.providers();
        let checks = futures::future::join_all(specs.iter().map(|spec| async move {
            let (ok, message) = match providers.check(&spec.provider).await {
                Ok(m) => (true, m),
                Err(e) => (false, e),
            };
            pb::ProviderCheck { metric: spec.name.clone(), ok, message }
        }))
        .await;
        Ok(Response::new(pb::CheckProvidersResponse { checks }))
    }

    async fn judge(&self, request: Request<pb::JudgeRequest>) -> Result<Response<pb::JudgeResponse>, Status> {
        let req = request.into_inner();
        let (inputs, settings) = convert::judge_input(&req)?;
        // Ranking is O(n log n) per root-finder step; large samples go to a blocking thread.
        let judgement = tokio::task::spawn_blocking(move || {
            let j = judge::judge(&inputs, &settings);
            (j, inputs)
        })
        .await
        .map_err(|e| AnalyzerError::Internal(format!("judge: {e}")))?;
        Ok(Response::new(convert::judgement(&judgement.0, &judgement.1)))
    }
}
