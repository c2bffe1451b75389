//! The plan compiler: a service's strategy in an environment → an ordered list of steps. The
//! engine executes plans and knows nothing of strategies. Plans are self-contained (analysis
//! templates are resolved into metrics), so a later config change does not alter a running release.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{
    ApprovalPolicy, ApprovalStepDef, BlueGreen, DEFAULT_PROGRESS_DEADLINE, DEFAULT_SCALE_DOWN_DELAY, DeliveryConfig,
    Dur, Environment, JobProvider, MaintenanceWindow, MetricDef, NoData, Problem, Provider, Service, StepDef, Strategy,
    TimeoutOutcome, VerifyDef,
    experiment::{self, ExperimentDef, JudgeDef, Thresholds},
    routes::{HeaderRoute, MirrorRoute, Routes},
};

/// How traffic is modelled for the service: which tracks exist.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TrafficModel {
    /// `stable` and `canary` tracks with a traffic weight.
    Canary,
    /// `active` and `preview` tracks; all traffic on `active`.
    BlueGreen,
}

/// Which strategy produced the plan.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum PlanStrategy {
    /// Canary steps.
    Canary,
    /// Blue/green sequence.
    BlueGreen,
    /// Straight to the stable track: first release, or an emergency rollback.
    Direct,
}

/// How to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlanMode {
    /// The configured strategy.
    Normal,
    /// Nothing runs yet: deploy straight to stable (Argo Rollouts skips steps on initial deploy).
    Initial,
    /// Emergency rollback: straight to stable, no steps, no analysis.
    Emergency,
}

/// An executable plan.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Strategy compiled.
    pub strategy: PlanStrategy,
    /// Track model.
    pub traffic: TrafficModel,
    /// Replicas of the stable/active version.
    pub replicas: u32,
    /// Steps in order.
    pub steps: Vec<PlanStep>,
    /// Background analysis (canary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<BackgroundSpec>,
    /// Progress deadline.
    pub progress_deadline: Dur,
}

impl Default for Plan {
    /// An empty plan; only a placeholder while a stored release is decoded (the plan is stored
    /// apart from the state and filled in right after).
    fn default() -> Self {
        Plan {
            strategy: PlanStrategy::Direct,
            traffic: TrafficModel::Canary,
            replicas: 1,
            steps: Vec::new(),
            background: None,
            progress_deadline: Dur(DEFAULT_PROGRESS_DEADLINE),
        }
    }
}

impl Plan {
    /// One-line description of step `index` as shown to people: a step's own parameters, and
    /// for preflight everything it checks in this plan (metric providers only when something is
    /// analysed, the migrations only when a step migrates).
    pub fn step_summary(&self, index: usize) -> String {
        self.steps[index].action.summary(self)
    }

    /// What preflight checks in this plan.
    fn preflight_summary(&self, dependencies: &[String]) -> String {
        let mut checks = vec!["backend".to_string()];
        if self.background.is_some() || self.steps.iter().any(|s| s.action.analysis().is_some()) {
            checks.push("metric providers".into());
        }
        if let Some(database) = self.steps.iter().find_map(|s| match &s.action {
            StepAction::Migrate { database, .. } => Some(database),
            _ => None,
        }) {
            checks.push(format!("migrations of {database}"));
        }
        if !dependencies.is_empty() {
            checks.push(format!("dependencies {}", dependencies.join(",")));
        }
        checks.join(", ")
    }
}

/// A background analysis.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackgroundSpec {
    /// Metrics.
    pub analysis: AnalysisSpec,
    /// Step index from which it runs.
    pub starting_step: usize,
}

/// One step.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PlanStep {
    /// Unique name in the plan.
    pub name: String,
    /// What it does.
    pub action: StepAction,
}

/// What a step does.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum StepAction {
    /// Canary traffic share.
    SetWeight { weight: u32 },
    /// Timed (`duration`) or indefinite pause.
    Pause {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration: Option<Dur>,
    },
    /// Blocking analysis.
    Analysis { analysis: AnalysisSpec },
    /// Approval gate.
    Approval { policy: ApprovalSpec },
    /// Verification job or templates.
    Verify { analysis: AnalysisSpec },
    /// Database migration.
    Migrate {
        database: String,
        locations: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_version: Option<String>,
        #[serde(default)]
        on_abort: super::config::OnAbort,
    },
    /// Canary replica count.
    SetCanaryScale { scale: CanaryScale },
    /// Requests whose headers match go to the canary (no matches: the route is removed).
    SetHeaderRoute { route: HeaderRoute },
    /// A share of the matching requests is copied to the canary (no matches: removed).
    SetMirrorRoute { route: MirrorRoute },
    /// The canary judged against a baseline of the stable artifact, interval by interval.
    Experiment { experiment: ExperimentSpec },
    /// Blue/green: start the new version on preview.
    DeployPreview { replicas: u32 },
    /// Blue/green: analysis before the switch.
    PrePromotionAnalysis { analysis: AnalysisSpec },
    /// Blue/green: new version takes all traffic.
    SwitchActive,
    /// Blue/green: analysis after the switch.
    PostPromotionAnalysis { analysis: AnalysisSpec },
    /// Blue/green: scale the old version down after a delay.
    ScaleDownOld { delay: Dur },
    /// Deploy straight to the stable/active track.
    DeployStable,
    /// Wait until one of the environment's maintenance windows is open.
    MaintenanceWindow { windows: Vec<MaintenanceWindow> },
    /// The runbook's checklist before anything changes: backend healthy, metric providers
    /// reachable, migrations validate, dependencies running.
    Preflight {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        dependencies: Vec<String>,
    },
    /// Argo mode: the service's Argo Rollout runs the new artifact through its own steps; `full`
    /// (an emergency rollback) skips them at once.
    ArgoRollout {
        #[serde(default)]
        full: bool,
    },
    /// Test only: the trivial step kind `machine::tests` adds the way a newcomer would
    /// (ARCHITECTURE.md, "Adding a step kind"), so the count of places it takes stays honest.
    #[cfg(test)]
    Checkpoint { label: String },
}

impl StepAction {
    /// The analysis the step runs, if it runs one.
    pub fn analysis(&self) -> Option<&AnalysisSpec> {
        self.analysis_run().map(|(spec, _)| spec)
    }

    /// The analysis the step runs with its run kind (the `kind` label: `step`, `verify`,
    /// `prePromotion`, `postPromotion`).
    pub fn analysis_run(&self) -> Option<(&AnalysisSpec, &'static str)> {
        match self {
            StepAction::Analysis { analysis } => Some((analysis, "step")),
            StepAction::Verify { analysis } => Some((analysis, "verify")),
            StepAction::PrePromotionAnalysis { analysis } => Some((analysis, "prePromotion")),
            StepAction::PostPromotionAnalysis { analysis } => Some((analysis, "postPromotion")),
            StepAction::Experiment { experiment } => Some((&experiment.analysis, "experiment")),
            _ => None,
        }
    }

    /// Short kind name, as used in generated step names and summaries.
    pub fn kind_name(&self) -> &'static str {
        match self {
            StepAction::SetWeight { .. } => "setWeight",
            StepAction::Pause { .. } => "pause",
            StepAction::Analysis { .. } => "analysis",
            StepAction::Approval { .. } => "approval",
            StepAction::Verify { .. } => "verify",
            StepAction::Migrate { .. } => "migrate",
            StepAction::SetCanaryScale { .. } => "setCanaryScale",
            StepAction::SetHeaderRoute { .. } => "setHeaderRoute",
            StepAction::SetMirrorRoute { .. } => "setMirrorRoute",
            StepAction::Experiment { .. } => "experiment",
            StepAction::DeployPreview { .. } => "deployPreview",
            StepAction::PrePromotionAnalysis { .. } => "prePromotionAnalysis",
            StepAction::SwitchActive => "switchActive",
            StepAction::PostPromotionAnalysis { .. } => "postPromotionAnalysis",
            StepAction::ScaleDownOld { .. } => "scaleDownOld",
            StepAction::DeployStable => "deployStable",
            StepAction::MaintenanceWindow { .. } => "maintenanceWindow",
            StepAction::Preflight { .. } => "preflight",
            StepAction::ArgoRollout { .. } => "argoRollout",
            #[cfg(test)]
            StepAction::Checkpoint { .. } => "checkpoint",
        }
    }

    /// One-line description of the parameters (`plan` is the plan the step is in).
    fn summary(&self, plan: &Plan) -> String {
        use hopngo_kit::args::format_duration as fmt;
        match self {
            StepAction::SetWeight { weight } => format!("weight {weight}%"),
            StepAction::Pause { duration: Some(d) } => format!("pause {}", fmt(d.0)),
            StepAction::Pause { duration: None } => "pause until promoted".into(),
            StepAction::Analysis { analysis }
            | StepAction::PrePromotionAnalysis { analysis }
            | StepAction::PostPromotionAnalysis { analysis } => format!("templates {}", analysis.templates.join(",")),
            StepAction::Verify { analysis } if analysis.templates.is_empty() => "job".into(),
            StepAction::Verify { analysis } => format!("templates {}", analysis.templates.join(",")),
            StepAction::Approval { policy } => {
                let mut s = format!("{} approval(s)", policy.min_approvals);
                if !policy.roles.is_empty() {
                    s.push_str(&format!(" by {}", policy.roles.join("|")));
                }
                s
            }
            StepAction::Migrate { database, target_version, on_abort, .. } => {
                let abort = match on_abort {
                    super::config::OnAbort::Freeze => "schema stays on abort",
                    super::config::OnAbort::Undo => "undone on abort",
                };
                match target_version {
                    Some(v) => format!("database {database} to {v} ({abort})"),
                    None => format!("database {database} ({abort})"),
                }
            }
            StepAction::SetCanaryScale { scale } => match scale {
                CanaryScale::MatchTrafficWeight => "canary replicas follow weight".into(),
                CanaryScale::Replicas(n) => format!("canary replicas {n}"),
                CanaryScale::Weight(w) => format!("canary replicas {w}% of stable"),
            },
            StepAction::SetHeaderRoute { route } if route.matches.is_empty() => {
                format!("remove header route {}", route.name)
            }
            StepAction::SetMirrorRoute { route } if route.matches.is_empty() => {
                format!("remove mirror route {}", route.name)
            }
            StepAction::SetHeaderRoute { route } => {
                Routes { headers: vec![route.clone()], ..Default::default() }.describe().join("")
            }
            StepAction::SetMirrorRoute { route } => {
                Routes { mirrors: vec![route.clone()], ..Default::default() }.describe().join("")
            }
            StepAction::Experiment { experiment: e } => format!(
                "baseline and canary at {}% each, {} interval(s) of {}, templates {}",
                e.weight,
                e.intervals,
                fmt(e.interval.0),
                e.analysis.templates.join(",")
            ),
            StepAction::DeployPreview { replicas } => format!("preview replicas {replicas}"),
            StepAction::SwitchActive => "new version takes all traffic".into(),
            StepAction::ArgoRollout { full: false } => "Argo runs the Rollout's steps".into(),
            StepAction::ArgoRollout { full: true } => "Argo skips the Rollout's steps".into(),
            StepAction::ScaleDownOld { delay } => format!("after {}", fmt(delay.0)),
            StepAction::DeployStable => "deploy to stable".into(),
            StepAction::MaintenanceWindow { windows } => {
                let list: Vec<String> = windows
                    .iter()
                    .map(|w| w.parse().map(|w| w.to_string()).unwrap_or_else(|_| w.schedule.clone()))
                    .collect();
                format!("within {}", list.join(" or "))
            }
            StepAction::Preflight { dependencies } => plan.preflight_summary(dependencies),
            #[cfg(test)]
            StepAction::Checkpoint { label } => format!("checkpoint {label}"),
        }
    }
}

/// Canary replica policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CanaryScale {
    /// ceil(replicas × weight / 100), at least 1 while the weight is positive.
    #[default]
    MatchTrafficWeight,
    /// A fixed count.
    Replicas(u32),
    /// A percentage of the stable replicas.
    Weight(u32),
}

/// An analysis run to start: metrics resolved from templates plus argument values.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Template names the metrics came from (empty for an inline job).
    pub templates: Vec<String>,
    /// Metrics.
    pub metrics: Vec<MetricDef>,
    /// Argument values (builtins are added when the run starts).
    pub args: BTreeMap<String, String>,
    /// Ended by the release rather than by its metrics' counts (background analysis), so its
    /// metrics may measure indefinitely.
    #[serde(default)]
    pub open_ended: bool,
}

/// An experiment to run: the metrics measured for both tracks (each every its `interval`, as
/// many times as the whole experiment takes, conditions left out: the judge compares the
/// samples) and how they are judged.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExperimentSpec {
    /// Metrics, run once for the baseline and once for the canary.
    pub analysis: AnalysisSpec,
    /// Traffic percentage of each track.
    pub weight: u32,
    /// Replicas of each track.
    pub replicas: u32,
    /// Time one judged interval covers.
    pub interval: Dur,
    /// Intervals judged.
    pub intervals: u32,
    /// Pass and marginal scores.
    pub thresholds: Thresholds,
    /// Weight per metric group.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_weights: BTreeMap<String, f64>,
    /// How each metric is judged (absent: the defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub judges: BTreeMap<String, JudgeDef>,
}

impl ExperimentSpec {
    /// The total time the experiment measures.
    pub fn duration(&self) -> std::time::Duration {
        self.interval.0 * self.intervals
    }
}

/// The experiment step written at `path`.
fn experiment(config: &DeliveryConfig, path: &str, e: &ExperimentDef) -> Result<ExperimentSpec, Problem> {
    let path = format!("{path}.experiment.templates");
    // Measured for as long as the experiment lasts, whatever count the template has.
    let mut analysis = resolve_analysis(config, &path, &e.templates, &e.args, true)?;
    analysis.open_ended = false;
    for m in &mut analysis.metrics {
        let every = m.interval.ok_or_else(|| Problem {
            path: path.clone(),
            message: format!("metric {:?} has no interval: an experiment samples each metric every interval", m.name),
        })?;
        let samples = e.samples(every.0).min(experiment::MAX_SAMPLES) as i64;
        m.count = Some(samples);
        m.measurement_retention = Some(samples);
        m.initial_delay = None;
        m.success_condition = None;
        m.failure_condition = None;
        m.failure_limit = None;
        m.inconclusive_limit = None;
        m.consecutive_success_limit = None;
        m.dry_run = false;
        // A missing point is the judge's to weigh (NaN), not a failed measurement.
        m.no_data = NoData::Successful;
    }
    Ok(ExperimentSpec {
        analysis,
        weight: e.weight.clamp(1, experiment::MAX_WEIGHT) as u32,
        replicas: e.replicas.unwrap_or(1).clamp(1, 100) as u32,
        interval: e.interval,
        intervals: e.interval_count(),
        thresholds: e.thresholds.unwrap_or_default(),
        group_weights: e.group_weights.clone(),
        judges: e.metrics.clone(),
    })
}

/// Resolved approval requirement.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalSpec {
    /// Distinct approvers needed.
    pub min_approvals: u32,
    /// Roles.
    pub roles: Vec<String>,
    /// Creator may approve.
    pub allow_self_approval: bool,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Timeout outcome.
    pub on_timeout: TimeoutOutcome,
}

impl From<&ApprovalPolicy> for ApprovalSpec {
    fn from(p: &ApprovalPolicy) -> Self {
        ApprovalSpec {
            min_approvals: p.min_approvals.clamp(1, 10) as u32,
            roles: p.roles.clone(),
            allow_self_approval: p.allow_self_approval,
            timeout: p.timeout,
            on_timeout: p.on_timeout,
        }
    }
}

/// Job that verifies with an inline command.
fn job_metric(job: &JobProvider) -> MetricDef {
    MetricDef {
        name: "verify".into(),
        interval: None,
        initial_delay: None,
        count: Some(1),
        success_condition: None,
        failure_condition: None,
        failure_limit: Some(0),
        inconclusive_limit: None,
        consecutive_error_limit: Some(0),
        consecutive_success_limit: None,
        dry_run: false,
        measurement_retention: None,
        severity: Default::default(),
        no_data: Default::default(),
        provider: Provider { job: Some(job.clone()), ..Provider::default() },
    }
}

/// The analysis of a verify step at `path`: its inline job, or its templates.
fn verify_analysis(config: &DeliveryConfig, path: &str, v: &VerifyDef) -> Result<AnalysisSpec, Problem> {
    match (&v.job, &v.templates) {
        (Some(job), _) => Ok(AnalysisSpec {
            templates: Vec::new(),
            metrics: vec![job_metric(job)],
            args: v.args.clone(),
            open_ended: false,
        }),
        (None, Some(t)) => resolve_analysis(config, &format!("{path}.verify.templates"), t, &v.args, false),
        (None, None) => Err(Problem { path: format!("{path}.verify"), message: "job or templates required".into() }),
    }
}

/// Resolves templates into one analysis. Only an open-ended analysis (background, ended by the
/// release) may have metrics that measure until terminated (an interval without a count).
pub fn resolve_analysis(
    config: &DeliveryConfig,
    path: &str,
    templates: &[String],
    args: &BTreeMap<String, String>,
    open_ended: bool,
) -> Result<AnalysisSpec, Problem> {
    let mut spec =
        AnalysisSpec { templates: templates.to_vec(), metrics: Vec::new(), args: BTreeMap::new(), open_ended };
    for (i, name) in templates.iter().enumerate() {
        let template = config.template(name).ok_or_else(|| Problem {
            path: format!("{path}[{i}]"),
            message: format!("unknown analysis template {name:?}"),
        })?;
        for arg in &template.args {
            if let Some(value) = &arg.value {
                spec.args.entry(arg.name.clone()).or_insert_with(|| value.clone());
            }
        }
        for metric in &template.metrics {
            if spec.metrics.iter().any(|m| m.name == metric.name) {
                return Err(Problem {
                    path: format!("{path}[{i}]"),
                    message: format!("metric {:?} appears in more than one template", metric.name),
                });
            }
            if !open_ended && metric.interval.is_some() && metric.count.unwrap_or(0) == 0 {
                return Err(Problem {
                    path: format!("{path}[{i}]"),
                    message: format!(
                        "metric {:?} of template {name:?} measures until terminated (interval without count); \
                         only background analysis can use it",
                        metric.name
                    ),
                });
            }
            spec.metrics.push(metric.clone());
        }
    }
    spec.args.extend(args.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(spec)
}

/// An approval step's policy: the environment's, with what the step sets over it.
fn approval_step(env: &Environment, a: &ApprovalStepDef) -> ApprovalSpec {
    let mut spec: ApprovalSpec = env.approval.as_ref().map(Into::into).unwrap_or(ApprovalSpec {
        min_approvals: 1,
        roles: Vec::new(),
        allow_self_approval: false,
        timeout: None,
        on_timeout: TimeoutOutcome::Reject,
    });
    if let Some(min) = a.min_approvals {
        spec.min_approvals = min.clamp(1, 10) as u32;
    }
    if let Some(roles) = &a.roles {
        spec.roles = roles.clone();
    }
    if a.timeout.is_some() {
        spec.timeout = a.timeout;
    }
    spec
}

/// Compiles the plan for a release of `service` in `environment`.
pub fn compile(
    config: &DeliveryConfig,
    service_name: &str,
    environment: &str,
    mode: PlanMode,
) -> Result<Plan, Problem> {
    let (si, service) = config
        .services
        .iter()
        .enumerate()
        .find(|(_, s)| s.name == service_name)
        .ok_or_else(|| Problem { path: "service".into(), message: format!("unknown service {service_name:?}") })?;
    let env = config.environment(environment).ok_or_else(|| Problem {
        path: "environment".into(),
        message: format!("unknown environment {environment:?}"),
    })?;
    // Templates resolve to their form for the environment's backend.
    let config = &*config.for_environment(env);
    let (strategy, strategy_path) = service.strategy_for(environment);
    let base = format!("services[{si}].{strategy_path}");
    let replicas =
        service.environments.get(environment).and_then(|o| o.replicas).or(service.replicas).unwrap_or(1).clamp(1, 100)
            as u32;
    let traffic = if strategy.blue_green.is_some() { TrafficModel::BlueGreen } else { TrafficModel::Canary };
    let progress_deadline =
        service.progress_deadline.or(env.progress_deadline).unwrap_or(Dur(DEFAULT_PROGRESS_DEADLINE));

    let mut steps = if mode == PlanMode::Emergency { Vec::new() } else { gate_steps(env, service, environment) };
    let mut background = None;
    // Argo mode: the service's Rollout deploys, in place of the deployer's tracks.
    let argo = service.argo_rollout.is_some();
    let deploy_stable = |full: bool| if argo { StepAction::ArgoRollout { full } } else { StepAction::DeployStable };
    let plan_strategy = match mode {
        PlanMode::Emergency => {
            steps.push((None, deploy_stable(true)));
            PlanStrategy::Direct
        }
        PlanMode::Initial => {
            steps.push((None, deploy_stable(false)));
            steps.extend(first_release_checks(config, &base, strategy)?);
            PlanStrategy::Direct
        }
        PlanMode::Normal => match (&strategy.canary, &strategy.blue_green) {
            (Some(canary), _) => {
                let offset = steps.len();
                for (i, def) in canary.steps.iter().enumerate() {
                    let path = format!("{base}.canary.steps[{i}]");
                    steps.push((def.name.clone(), canary_step(config, env, service, environment, &path, &def.step)?));
                }
                // The Rollout runs before the first verification (which checks what it deployed).
                let rollout_at = argo.then(|| {
                    let verify = canary.steps.iter().position(|d| matches!(d.step, StepDef::Verify(_)));
                    verify.unwrap_or(canary.steps.len())
                });
                if let Some(at) = rollout_at {
                    steps.insert(offset + at, (None, StepAction::ArgoRollout { full: false }));
                }
                if let Some(bg) = &canary.analysis {
                    let path = format!("{base}.canary.analysis.templates");
                    let analysis = resolve_analysis(config, &path, &bg.templates, &bg.args, true)?;
                    let starting = bg.starting_step.unwrap_or(0).clamp(0, canary.steps.len() as i64) as usize;
                    let shifted = usize::from(rollout_at.is_some_and(|at| starting > at));
                    background = Some(BackgroundSpec { analysis, starting_step: offset + starting + shifted });
                }
                PlanStrategy::Canary
            }
            (None, Some(bg)) => {
                steps.extend(blue_green_steps(config, &format!("{base}.blueGreen"), bg, replicas)?);
                PlanStrategy::BlueGreen
            }
            (None, None) => return Err(Problem { path: base, message: "no strategy".into() }),
        },
    };

    Ok(Plan { strategy: plan_strategy, traffic, replicas, steps: name_steps(steps), background, progress_deadline })
}

/// A step before it is named: its configured name, if any, and what it does.
type Unnamed = (Option<String>, StepAction);

/// The steps before any change: approval first (it may take hours), then the maintenance window,
/// then preflight right before the first change (so its findings are current), then the
/// service's migrations unless a canary step places them.
fn gate_steps(env: &Environment, service: &Service, environment: &str) -> Vec<Unnamed> {
    let mut steps = Vec::new();
    if let Some(policy) = &env.approval {
        steps.push((None, StepAction::Approval { policy: policy.into() }));
    }
    if !env.maintenance_windows.is_empty() {
        steps.push((None, StepAction::MaintenanceWindow { windows: env.maintenance_windows.clone() }));
    }
    steps.push((None, StepAction::Preflight { dependencies: service.depends_on.clone() }));
    if let Some(m) = service.migrations_in(environment) {
        let (strategy, _) = service.strategy_for(environment);
        let explicit =
            strategy.canary.as_ref().is_some_and(|c| c.steps.iter().any(|s| matches!(s.step, StepDef::Migrate(_))));
        if !explicit {
            let action = StepAction::Migrate {
                database: m.database,
                locations: m.locations,
                target_version: None,
                on_abort: m.on_abort,
            };
            steps.push((None, action));
        }
    }
    steps
}

/// A first release has nothing to compare with, but the smoke tests still say whether the first
/// version works (and make it promotable): the strategy's verify steps, or a blue/green
/// pre-promotion analysis, run against the stable/active track.
fn first_release_checks(config: &DeliveryConfig, base: &str, strategy: &Strategy) -> Result<Vec<Unnamed>, Problem> {
    let mut steps = Vec::new();
    if let Some(canary) = &strategy.canary {
        for (i, def) in canary.steps.iter().enumerate() {
            if let StepDef::Verify(v) = &def.step {
                let path = format!("{base}.canary.steps[{i}]");
                steps.push((def.name.clone(), StepAction::Verify { analysis: verify_analysis(config, &path, v)? }));
            }
        }
    }
    if let Some(a) = strategy.blue_green.as_ref().and_then(|b| b.pre_promotion_analysis.as_ref()) {
        let path = format!("{base}.blueGreen.prePromotionAnalysis.templates");
        let analysis = resolve_analysis(config, &path, &a.templates, &a.args, false)?;
        steps.push((None, StepAction::Verify { analysis }));
    }
    Ok(steps)
}

/// The plan action of a canary step as written at `path`.
fn canary_step(
    config: &DeliveryConfig,
    env: &Environment,
    service: &Service,
    environment: &str,
    path: &str,
    step: &StepDef,
) -> Result<StepAction, Problem> {
    Ok(match step {
        StepDef::SetWeight(w) => StepAction::SetWeight { weight: (*w).clamp(0, 100) as u32 },
        StepDef::Pause(p) => StepAction::Pause { duration: p.duration },
        StepDef::Analysis(a) => {
            let path = format!("{path}.analysis.templates");
            StepAction::Analysis { analysis: resolve_analysis(config, &path, &a.templates, &a.args, false)? }
        }
        StepDef::Approval(a) => StepAction::Approval { policy: approval_step(env, a) },
        StepDef::Verify(v) => StepAction::Verify { analysis: verify_analysis(config, path, v)? },
        StepDef::Migrate(m) => {
            let migrations = service.migrations_in(environment).ok_or_else(|| Problem {
                path: format!("{path}.migrate"),
                message: "the service declares no migrations".into(),
            })?;
            StepAction::Migrate {
                database: migrations.database,
                locations: migrations.locations,
                target_version: m.target_version.clone(),
                on_abort: migrations.on_abort,
            }
        }
        StepDef::SetCanaryScale(s) => StepAction::SetCanaryScale {
            scale: match (s.replicas, s.weight) {
                (Some(r), _) => CanaryScale::Replicas(r.clamp(0, 100) as u32),
                (None, Some(w)) => CanaryScale::Weight(w.clamp(0, 100) as u32),
                (None, None) => CanaryScale::MatchTrafficWeight,
            },
        },
        StepDef::SetHeaderRoute(route) => StepAction::SetHeaderRoute { route: route.clone() },
        StepDef::SetMirrorRoute(route) => StepAction::SetMirrorRoute { route: route.clone() },
        StepDef::Experiment(e) => StepAction::Experiment { experiment: experiment(config, path, e)? },
    })
}

/// Argo Rollouts' blue/green sequence: preview, its analysis, the (auto-)promotion pause, the
/// switch, the post-promotion analysis, and the old version's scale-down after a delay.
fn blue_green_steps(
    config: &DeliveryConfig,
    path: &str,
    bg: &BlueGreen,
    replicas: u32,
) -> Result<Vec<Unnamed>, Problem> {
    let mut steps = Vec::new();
    let preview = bg.preview_replicas.map(|r| r.clamp(1, 100) as u32).unwrap_or(replicas);
    steps.push((None, StepAction::DeployPreview { replicas: preview }));
    if let Some(a) = &bg.pre_promotion_analysis {
        let path = format!("{path}.prePromotionAnalysis.templates");
        let analysis = resolve_analysis(config, &path, &a.templates, &a.args, false)?;
        steps.push((None, StepAction::PrePromotionAnalysis { analysis }));
    }
    if !bg.auto_promotion_enabled {
        steps.push((None, StepAction::Pause { duration: None }));
    } else if let Some(secs) = bg.auto_promotion_seconds.filter(|s| *s > 0) {
        steps.push((None, StepAction::Pause { duration: Some(Dur(std::time::Duration::from_secs(secs as u64))) }));
    }
    steps.push((None, StepAction::SwitchActive));
    if let Some(a) = &bg.post_promotion_analysis {
        let path = format!("{path}.postPromotionAnalysis.templates");
        let analysis = resolve_analysis(config, &path, &a.templates, &a.args, false)?;
        steps.push((None, StepAction::PostPromotionAnalysis { analysis }));
    }
    let delay = bg.scale_down_delay.unwrap_or(Dur(DEFAULT_SCALE_DOWN_DELAY));
    steps.push((None, StepAction::ScaleDownOld { delay }));
    Ok(steps)
}

/// Gives every step a unique name: its configured name, else its kind (`setWeight-25` for
/// weights), with `-2`, `-3`, ... on repeats.
fn name_steps(steps: Vec<Unnamed>) -> Vec<PlanStep> {
    let mut used: std::collections::BTreeSet<String> = steps.iter().filter_map(|(n, _)| n.clone()).collect();
    steps
        .into_iter()
        .map(|(name, action)| {
            let name = name.unwrap_or_else(|| {
                let base = match &action {
                    StepAction::SetWeight { weight } => format!("setWeight-{weight}"),
                    other => other.kind_name().to_string(),
                };
                let mut candidate = base.clone();
                let mut n = 1;
                while used.contains(&candidate) {
                    n += 1;
                    candidate = format!("{base}-{n}");
                }
                used.insert(candidate.clone());
                candidate
            });
            PlanStep { name, action }
        })
        .collect()
}

#[cfg(test)]
mod tests;
