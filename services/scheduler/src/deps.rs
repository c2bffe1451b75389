//! [`Effects`] over the deployer, analyzer and migrator gRPC contracts: every call has a deadline
//! (the channel's timeout), starting calls carry the idempotency key, and status codes are sorted
//! into "retry later" and "refused".

use std::{collections::BTreeMap, time::Duration};

use hopngo_kit::{
    client::{ChannelError, TracedChannel, is_retryable, may_have_taken_effect, service_channel},
    tls::Tls,
};
use hopngo_proto::{
    analyzer::{
        self, AnalysisPhase, CheckProvidersRequest, GetAnalysisRunRequest, StartAnalysisRunRequest,
        TerminateAnalysisRunRequest, analyzer_service_client::AnalyzerServiceClient,
    },
    deployer::{
        self, ApplyTargetRequest, ControlRolloutRequest, GetTargetStatusRequest,
        PreflightRequest as BackendPreflightRequest, RenderTargetRequest, RolloutAction,
        deployer_service_client::DeployerServiceClient,
    },
    migrator::{
        self, GetMigrationRunRequest, MigrationCommand, StartMigrationRequest, ValidateRequest,
        migrator_service_client::MigratorServiceClient,
    },
};

use crate::domain::{
    config::{self, MetricDef},
    effects::{
        DesiredState, EffectError, Effects, JudgeRequest, Judgement, MetricJudgement, MigrationAction,
        MigrationObservation, MigrationPhase, MigrationRequest, PreflightCheck, PreflightRequest, RolloutControl,
        RolloutProgress, RunObservation, RunPhase, RunSamples, TargetObservation, Track,
    },
    plan::AnalysisSpec,
};

/// Addresses of the services the engine calls.
#[derive(Clone, Debug)]
pub struct Endpoints {
    /// Deployer URL.
    pub deployer: String,
    /// Analyzer URL.
    pub analyzer: String,
    /// Migrator URL.
    pub migrator: String,
}

/// gRPC implementation of [`Effects`].
#[derive(Clone)]
pub struct GrpcEffects {
    deployer: DeployerServiceClient<TracedChannel>,
    analyzer: AnalyzerServiceClient<TracedChannel>,
    migrator: MigratorServiceClient<TracedChannel>,
}

/// A desired state in the deployer's terms.
fn target_spec(desired: &DesiredState) -> deployer::TargetSpec {
    let (header_routes, mirror_routes) = hopngo_delivery::routes::to_proto(&desired.routes);
    deployer::TargetSpec {
        service: desired.service.clone(),
        environment: desired.environment.clone(),
        tracks: desired
            .tracks
            .iter()
            .map(|t| deployer::TrackSpec {
                track: track(t.track) as i32,
                artifact: t.artifact.clone(),
                replicas: t.replicas,
            })
            .collect(),
        canary_weight: desired.canary_weight,
        header_routes,
        mirror_routes,
    }
}

impl GrpcEffects {
    /// What the deployer would write for `desired` (its RenderTarget): a preview for people, not
    /// an engine effect.
    pub async fn render_target(&self, desired: &DesiredState) -> Result<String, EffectError> {
        let request = RenderTargetRequest { target: Some(target_spec(desired)) };
        let response = self.deployer.clone().render_target(request).await.map_err(|s| effect_error("deployer", s))?;
        Ok(response.into_inner().yaml)
    }

    /// Lazily connected clients with `call_timeout` per call.
    pub fn new(endpoints: &Endpoints, call_timeout: Duration, tls: Option<&Tls>) -> Result<GrpcEffects, ChannelError> {
        Ok(GrpcEffects {
            deployer: DeployerServiceClient::new(service_channel(&endpoints.deployer, call_timeout, tls)?),
            analyzer: AnalyzerServiceClient::new(service_channel(&endpoints.analyzer, call_timeout, tls)?),
            migrator: MigratorServiceClient::new(service_channel(&endpoints.migrator, call_timeout, tls)?),
        })
    }

    /// Analyzer GetAnalysisRun.
    async fn analysis_run(&self, run_id: &str) -> Result<analyzer::AnalysisRun, EffectError> {
        let request = GetAnalysisRunRequest { id: run_id.to_string() };
        let response =
            self.analyzer.clone().get_analysis_run(request).await.map_err(|s| effect_error("analyzer", s))?;
        Ok(response.into_inner().run.unwrap_or_default())
    }
}

fn effect_error(dependency: &'static str, status: tonic::Status) -> EffectError {
    let retryable = is_retryable(&status) || matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown);
    EffectError {
        dependency,
        retryable,
        uncertain: may_have_taken_effect(&status),
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}

fn track(t: Track) -> deployer::Track {
    match t {
        Track::Stable => deployer::Track::Stable,
        Track::Canary => deployer::Track::Canary,
        Track::Active => deployer::Track::Active,
        Track::Preview => deployer::Track::Preview,
        Track::Baseline => deployer::Track::Baseline,
    }
}

fn duration(d: Option<config::Dur>) -> Option<prost_types::Duration> {
    d.map(|d| prost_types::Duration { seconds: d.0.as_secs() as i64, nanos: d.0.subsec_nanos() as i32 })
}

fn limit(v: Option<i64>) -> Option<i32> {
    v.map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
}

/// Domain metric → contract metric.
pub fn metric_to_proto(m: &MetricDef) -> analyzer::Metric {
    use analyzer::metric::Provider;
    let provider = if let Some(p) = &m.provider.prometheus {
        Some(Provider::Prometheus(analyzer::PrometheusProvider {
            address: p.address.clone(),
            query: p.query.clone(),
            timeout: duration(p.timeout),
            range: None,
            step: None,
        }))
    } else if let Some(p) = &m.provider.scrape {
        Some(Provider::Scrape(analyzer::ScrapeProvider {
            url: p.url.clone(),
            expression: p.expression.clone(),
            window: duration(p.window),
            timeout: None,
        }))
    } else if let Some(p) = &m.provider.web {
        Some(Provider::Web(analyzer::WebProvider {
            url: p.url.clone(),
            method: p.method.clone().unwrap_or_default(),
            headers: p.headers.clone().into_iter().collect(),
            body: p.body.clone().unwrap_or_default(),
            json_path: p.json_path.clone().unwrap_or_default(),
            timeout: duration(p.timeout),
        }))
    } else {
        m.provider.job.as_ref().map(|p| {
            Provider::Job(analyzer::JobProvider {
                command: p.command.clone(),
                timeout: duration(p.timeout),
                env: p.env.clone().into_iter().collect(),
            })
        })
    };
    analyzer::Metric {
        name: m.name.clone(),
        interval: duration(m.interval),
        initial_delay: duration(m.initial_delay),
        count: m.count.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        success_condition: m.success_condition.clone().unwrap_or_default(),
        failure_condition: m.failure_condition.clone().unwrap_or_default(),
        failure_limit: limit(m.failure_limit),
        inconclusive_limit: limit(m.inconclusive_limit),
        consecutive_error_limit: limit(m.consecutive_error_limit),
        consecutive_success_limit: m.consecutive_success_limit.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        dry_run: m.dry_run,
        measurement_retention: m.measurement_retention.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        severity: match m.severity {
            config::Severity::Critical => analyzer::MetricSeverity::Critical,
            config::Severity::High => analyzer::MetricSeverity::High,
            config::Severity::Medium => analyzer::MetricSeverity::Medium,
            config::Severity::Low => analyzer::MetricSeverity::Low,
        } as i32,
        no_data: match m.no_data {
            config::NoData::Inconclusive => analyzer::NoDataPolicy::Inconclusive,
            config::NoData::Failed => analyzer::NoDataPolicy::Failed,
            config::NoData::Successful => analyzer::NoDataPolicy::Successful,
            config::NoData::Error => analyzer::NoDataPolicy::Error,
        } as i32,
        provider,
    }
}

/// A run as the engine sees it.
fn observation(run: analyzer::AnalysisRun) -> RunObservation {
    let phase = match AnalysisPhase::try_from(run.phase).unwrap_or(AnalysisPhase::Unspecified) {
        AnalysisPhase::Unspecified | AnalysisPhase::Pending => RunPhase::Pending,
        AnalysisPhase::Running => RunPhase::Running,
        AnalysisPhase::Successful => RunPhase::Successful,
        AnalysisPhase::Failed => RunPhase::Failed,
        AnalysisPhase::Error => RunPhase::Error,
        AnalysisPhase::Inconclusive => RunPhase::Inconclusive,
    };
    let severity = match analyzer::MetricSeverity::try_from(run.severity).unwrap_or_default() {
        analyzer::MetricSeverity::Unspecified | analyzer::MetricSeverity::Critical => config::Severity::Critical,
        analyzer::MetricSeverity::High => config::Severity::High,
        analyzer::MetricSeverity::Medium => config::Severity::Medium,
        analyzer::MetricSeverity::Low => config::Severity::Low,
    };
    RunObservation { phase, message: run.message, severity }
}

/// A measurement as a point of a sample: its number (a one-element vector counts as its element),
/// NaN for no data or a value that is no number (the judge's NaN strategy decides about those).
/// Errored measurements are no points at all.
fn sample_point(m: &analyzer::Measurement) -> Option<f64> {
    if AnalysisPhase::try_from(m.phase) == Ok(AnalysisPhase::Error) {
        return None;
    }
    let text = m.value.trim();
    if m.no_data || text.is_empty() {
        return Some(f64::NAN);
    }
    let number = text.parse::<f64>().ok().or_else(|| match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) if items.len() == 1 => items[0].as_f64(),
        _ => None,
    });
    Some(number.filter(|x| x.is_finite()).unwrap_or(f64::NAN))
}

fn judge_request(request: &JudgeRequest) -> analyzer::JudgeRequest {
    use config::experiment::{Direction, EffectMeasure, NanStrategy};
    analyzer::JudgeRequest {
        metrics: request
            .metrics
            .iter()
            .map(|m| {
                let j = &m.judge;
                analyzer::JudgeMetric {
                    name: m.name.clone(),
                    control: m.baseline.clone(),
                    experiment: m.canary.clone(),
                    direction: match j.direction {
                        Direction::Increase => analyzer::JudgeDirection::Increase,
                        Direction::Decrease => analyzer::JudgeDirection::Decrease,
                        Direction::Either => analyzer::JudgeDirection::Either,
                    } as i32,
                    group: j.group.clone().unwrap_or_default(),
                    critical: j.critical,
                    allowed_increase: j.allowed_increase.unwrap_or(0.0),
                    allowed_decrease: j.allowed_decrease.unwrap_or(0.0),
                    nan_strategy: match j.nan_strategy {
                        NanStrategy::Remove => analyzer::JudgeNanStrategy::Remove,
                        NanStrategy::Replace => analyzer::JudgeNanStrategy::Replace,
                    } as i32,
                    outlier_factor: j.outlier_factor,
                    effect_measure: match j.effect_measure {
                        EffectMeasure::MeanRatio => analyzer::JudgeEffectMeasure::MeanRatio,
                        EffectMeasure::Cles => analyzer::JudgeEffectMeasure::Cles,
                    } as i32,
                    critical_increase: j.critical_increase.unwrap_or(0.0),
                    critical_decrease: j.critical_decrease.unwrap_or(0.0),
                    must_have_data: j.must_have_data,
                    muted: j.muted,
                }
            })
            .collect(),
        group_weights: request.group_weights.clone().into_iter().collect(),
        pass_threshold: request.thresholds.pass,
        marginal_threshold: request.thresholds.marginal,
        confidence_level: 0.0,
    }
}

fn judgement(response: analyzer::JudgeResponse) -> Judgement {
    let finite = |x: f64| x.is_finite().then_some(x);
    Judgement {
        score: response.score,
        verdict: response.verdict,
        reason: response.reason,
        metrics: response
            .metrics
            .into_iter()
            .map(|m| {
                let (control, experiment) = (m.control.unwrap_or_default(), m.experiment.unwrap_or_default());
                MetricJudgement {
                    classification: analyzer::JudgeClassification::try_from(m.classification)
                        .map(|c| c.as_str_name().trim_start_matches("JUDGE_CLASSIFICATION_").to_string())
                        .unwrap_or_default(),
                    name: m.name,
                    group: m.group,
                    baseline_count: control.count,
                    baseline_mean: finite(control.mean).filter(|_| control.count > 0),
                    canary_count: experiment.count,
                    canary_mean: finite(experiment.mean).filter(|_| experiment.count > 0),
                    p_value: finite(m.p_value),
                    mean_ratio: finite(m.mean_ratio),
                    cles: finite(m.cles),
                    ci_lower: finite(m.ci_lower),
                    ci_upper: finite(m.ci_upper),
                    critical: m.critical,
                    reason: m.reason,
                }
            })
            .collect(),
        group_scores: response.group_scores.into_iter().collect(),
    }
}

impl Effects for GrpcEffects {
    async fn apply_target(&self, key: &str, desired: &DesiredState) -> Result<(), EffectError> {
        let request = ApplyTargetRequest { target: Some(target_spec(desired)), idempotency_key: key.to_string() };
        self.deployer.clone().apply_target(request).await.map_err(|s| effect_error("deployer", s))?;
        Ok(())
    }

    async fn target_status(&self, service: &str, environment: &str) -> Result<TargetObservation, EffectError> {
        let request = GetTargetStatusRequest { service: service.to_string(), environment: environment.to_string() };
        let response =
            self.deployer.clone().get_target_status(request).await.map_err(|s| effect_error("deployer", s))?;
        let status = response.into_inner().status.unwrap_or_default();
        Ok(TargetObservation {
            converged: status.converged,
            canary_weight: status.canary_weight,
            idempotency_key: status.idempotency_key,
            message: status.message,
            address: status.address,
            rollout: status.rollout.map(|r| RolloutProgress {
                phase: r.phase,
                message: r.message,
                step: r.current_step_index,
                steps: r.step_count,
                weight: r.canary_weight,
                paused: r.paused,
                awaiting_promotion: r.awaiting_promotion,
                aborted: r.aborted,
            }),
        })
    }

    async fn control_rollout(
        &self,
        service: &str,
        environment: &str,
        action: RolloutControl,
    ) -> Result<(), EffectError> {
        let action = match action {
            RolloutControl::Promote => RolloutAction::Promote,
            RolloutControl::PromoteFull => RolloutAction::PromoteFull,
            RolloutControl::Abort => RolloutAction::Abort,
        };
        let request = ControlRolloutRequest {
            service: service.to_string(),
            environment: environment.to_string(),
            action: action as i32,
            to_revision: 0,
        };
        self.deployer.clone().control_rollout(request).await.map_err(|s| effect_error("deployer", s))?;
        Ok(())
    }

    async fn start_analysis(
        &self,
        key: &str,
        spec: &AnalysisSpec,
        args: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EffectError> {
        let request = StartAnalysisRunRequest {
            metrics: spec.metrics.iter().map(metric_to_proto).collect(),
            args: args.clone().into_iter().collect(),
            labels: labels.clone().into_iter().collect(),
            idempotency_key: key.to_string(),
            open_ended: spec.open_ended,
        };
        let response =
            self.analyzer.clone().start_analysis_run(request).await.map_err(|s| effect_error("analyzer", s))?;
        response.into_inner().run.map(|r| r.id).ok_or_else(|| EffectError {
            dependency: "analyzer",
            retryable: false,
            uncertain: false,
            message: "StartAnalysisRun returned no run".into(),
        })
    }

    async fn analysis_status(&self, run_id: &str) -> Result<RunObservation, EffectError> {
        Ok(observation(self.analysis_run(run_id).await?))
    }

    async fn analysis_samples(&self, run_id: &str) -> Result<RunSamples, EffectError> {
        let run = self.analysis_run(run_id).await?;
        let samples = run
            .metrics
            .iter()
            .map(|m| (m.name.clone(), m.measurements.iter().filter_map(sample_point).collect()))
            .collect();
        Ok(RunSamples { observation: observation(run), samples })
    }

    async fn judge(&self, request: &JudgeRequest) -> Result<Judgement, EffectError> {
        let response =
            self.analyzer.clone().judge(judge_request(request)).await.map_err(|s| effect_error("analyzer", s))?;
        Ok(judgement(response.into_inner()))
    }

    async fn terminate_analysis(&self, run_id: &str, reason: &str) -> Result<RunObservation, EffectError> {
        let request = TerminateAnalysisRunRequest { id: run_id.to_string(), reason: reason.to_string() };
        let response =
            self.analyzer.clone().terminate_analysis_run(request).await.map_err(|s| effect_error("analyzer", s))?;
        Ok(observation(response.into_inner().run.unwrap_or_default()))
    }

    async fn start_migration(&self, key: &str, request: &MigrationRequest) -> Result<String, EffectError> {
        let (command, target_version, undo_all) = match &request.action {
            MigrationAction::Migrate { target_version } => {
                (MigrationCommand::Migrate, target_version.clone().unwrap_or_default(), false)
            }
            MigrationAction::Undo { to_version: Some(v) } => (MigrationCommand::Undo, v.clone(), false),
            MigrationAction::Undo { to_version: None } => (MigrationCommand::Undo, String::new(), true),
        };
        let request = StartMigrationRequest {
            target: Some(migrator::MigrationTarget {
                database: request.database.clone(),
                locations: request.locations.clone(),
                ..Default::default()
            }),
            command: command as i32,
            target_version,
            out_of_order: false,
            idempotency_key: key.to_string(),
            undo_all,
        };
        let response = self.migrator.clone().start_migration(request).await.map_err(|s| effect_error("migrator", s))?;
        response.into_inner().run.map(|r| r.id).ok_or_else(|| EffectError {
            dependency: "migrator",
            retryable: false,
            uncertain: false,
            message: "StartMigration returned no run".into(),
        })
    }

    async fn migration_status(&self, run_id: &str) -> Result<MigrationObservation, EffectError> {
        let response = self
            .migrator
            .clone()
            .get_migration_run(GetMigrationRunRequest { id: run_id.to_string() })
            .await
            .map_err(|s| effect_error("migrator", s))?;
        let run = response.into_inner().run.unwrap_or_default();
        let phase = match migrator::MigrationPhase::try_from(run.phase).unwrap_or(migrator::MigrationPhase::Unspecified)
        {
            migrator::MigrationPhase::Unspecified | migrator::MigrationPhase::Pending => MigrationPhase::Pending,
            migrator::MigrationPhase::Running => MigrationPhase::Running,
            migrator::MigrationPhase::Succeeded => MigrationPhase::Succeeded,
            migrator::MigrationPhase::Failed => MigrationPhase::Failed,
        };
        Ok(MigrationObservation {
            phase,
            message: run.message,
            version_before: run.version_before,
            version_after: run.version_after,
        })
    }

    async fn preflight(&self, request: &PreflightRequest) -> Result<Vec<PreflightCheck>, EffectError> {
        let check = |name: String, ok: bool, message: String| PreflightCheck { name, ok, message };
        // A refusal is the check's answer; only "could not ask" is an error.
        let answer = |dependency: &'static str, status: tonic::Status| {
            let err = effect_error(dependency, status);
            if err.retryable { Err(err) } else { Ok(err.message) }
        };
        let backend = async {
            let request =
                BackendPreflightRequest { service: request.service.clone(), environment: request.environment.clone() };
            match self.deployer.clone().preflight(request).await {
                Ok(r) => Ok(r
                    .into_inner()
                    .checks
                    .into_iter()
                    .map(|c| check(format!("backend/{}", c.name), c.ok, c.message))
                    .collect::<Vec<_>>()),
                Err(status) => answer("deployer", status).map(|m| vec![check("backend".into(), false, m)]),
            }
        };
        let metrics = async {
            let mut checks: Vec<PreflightCheck> = Vec::new();
            for (spec, args) in &request.analyses {
                let call = CheckProvidersRequest {
                    metrics: spec.metrics.iter().map(metric_to_proto).collect(),
                    args: args.clone().into_iter().collect(),
                };
                match self.analyzer.clone().check_providers(call).await {
                    Ok(r) => {
                        for c in r.into_inner().checks {
                            let name = format!("metrics/{}", c.metric);
                            if !checks.iter().any(|known| known.name == name) {
                                checks.push(check(name, c.ok, c.message));
                            }
                        }
                    }
                    Err(status) => {
                        let name = format!("metrics/{}", spec.templates.join(","));
                        checks.push(check(name, false, answer("analyzer", status)?));
                    }
                }
            }
            Ok(checks)
        };
        let migrations = async {
            let Some((database, locations)) = &request.migrations else { return Ok(Vec::new()) };
            let call = ValidateRequest {
                target: Some(migrator::MigrationTarget {
                    database: database.clone(),
                    locations: locations.clone(),
                    ..Default::default()
                }),
                fail_on_pending: false,
            };
            let name = format!("migrations/{database}");
            Ok(vec![match self.migrator.clone().validate(call).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let problems: Vec<String> = r
                        .problems
                        .iter()
                        .map(|p| {
                            format!(
                                "{} {}: {}",
                                p.kind,
                                if p.version.is_empty() { &p.script } else { &p.version },
                                p.message
                            )
                        })
                        .collect();
                    if r.valid {
                        check(name, true, "history matches the scripts".into())
                    } else {
                        check(name, false, problems.join("; "))
                    }
                }
                Err(status) => check(name, false, answer("migrator", status)?),
            }])
        };
        let dependencies = async {
            let mut checks = Vec::new();
            for dependency in &request.dependencies {
                let name = format!("dependency/{dependency}");
                let call =
                    GetTargetStatusRequest { service: dependency.clone(), environment: request.environment.clone() };
                checks.push(match self.deployer.clone().get_target_status(call).await {
                    Ok(r) => {
                        let status = r.into_inner().status.unwrap_or_default();
                        let serving = status.tracks.iter().find(|t| {
                            matches!(
                                deployer::Track::try_from(t.track),
                                Ok(deployer::Track::Stable | deployer::Track::Active)
                            ) && t.ready_replicas > 0
                        });
                        match serving {
                            Some(t) => check(
                                name,
                                true,
                                format!("{} running ({}/{} ready)", t.artifact, t.ready_replicas, t.desired_replicas),
                            ),
                            None => check(name, false, format!("no ready replica in {}", request.environment)),
                        }
                    }
                    Err(status) if status.code() == tonic::Code::NotFound => {
                        check(name, false, format!("not deployed in {}", request.environment))
                    }
                    Err(status) => check(name, false, answer("deployer", status)?),
                });
            }
            Ok(checks)
        };
        let (backend, metrics, migrations, dependencies) = tokio::join!(backend, metrics, migrations, dependencies);
        let mut checks = backend?;
        checks.extend(metrics?);
        checks.extend(migrations?);
        checks.extend(dependencies?);
        Ok(checks)
    }
}
