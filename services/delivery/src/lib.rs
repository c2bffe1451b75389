//! The HopNGo delivery config: one YAML document declaring environments (promotion order,
//! approval policy), analysis templates and services (strategy per environment, steps, analysis,
//! migrations, how the local backend runs them). The scheduler plans releases from it; the
//! deployer reads how to run each service. Parsing reports the path of a type error; validation reports every problem with
//! its path and reason, e.g. `services[3].strategy.canary.steps[2].setWeight: 130 is not in 0..=100`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub mod experiment;
pub mod kubernetes;
pub mod providers;
pub mod routes;
pub mod window;

/// A duration written as `30s`, `5m`, `1h30m` or a number of seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Dur(Duration::from_secs(s))),
            Raw::Text(t) => hopngo_kit::args::parse_duration(&t).map(Dur).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hopngo_kit::args::format_duration(self.0))
    }
}

/// The whole document.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeliveryConfig {
    /// Optional `hopngo.io/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Optional `DeliveryConfig`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Environments; an environment with `from` is promoted to from that one.
    pub environments: Vec<Environment>,
    /// Reusable analysis templates.
    #[serde(default)]
    pub analysis_templates: Vec<AnalysisTemplate>,
    /// Services.
    pub services: Vec<Service>,
    /// What metric providers may reach and how jobs run.
    #[serde(default)]
    pub providers: providers::Providers,
}

/// An environment.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Environment {
    /// Name (`staging`, `production`).
    pub name: String,
    /// Environment this one is promoted from: a release here needs the artifact to have
    /// succeeded there first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Approval required before any release here changes anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalPolicy>,
    /// A release that makes no progress for this long is aborted (default 10m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Dur>,
    /// What an artifact must have done in the `from` environment before it may be released here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<PromotionPolicy>,
    /// When releases here may change anything (Argo CD sync-window style); none: any time. A
    /// release waits (paused) for the next window; an emergency rollback does not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// When no new release may start here (deny windows: the weekend, a sales event); an
    /// emergency rollback and a release an admin overrides the freeze for still may.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub freeze_windows: Vec<FreezeWindow>,
    /// Where the environment's services run on Kubernetes (the deployer's Kubernetes backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<kubernetes::EnvironmentKubernetes>,
}

/// What promotion from the upstream environment requires of the artifact there.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PromotionPolicy {
    /// The upstream release must have been verified: every verify step and analysis of its plan
    /// passed, none skipped by a promote, and its background analysis stayed within the SLO
    /// (default true).
    #[serde(default = "yes")]
    pub require_verification: bool,
    /// How long the artifact must have been stable upstream before it may be promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak: Option<Dur>,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        PromotionPolicy { require_verification: true, soak: None }
    }
}

/// A maintenance window: opens at every time `schedule` (five-field cron, read in `timeZone`)
/// names and stays open for `duration`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When the window opens (`0 22 * * 1-5`: 22:00 Monday to Friday).
    pub schedule: String,
    /// How long it stays open.
    pub duration: Dur,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl MaintenanceWindow {
    /// The parsed window.
    pub fn parse(&self) -> Result<window::Window, String> {
        window::Window::new(&self.schedule, self.duration.0, self.time_zone.as_deref().unwrap_or("UTC"))
    }
}

/// A recurring freeze: opens at every time `schedule` names (read in `timeZone`) and lasts
/// `duration` (`0 16 * * 5` for 64h: Friday 16:00 to Monday 08:00).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FreezeWindow {
    /// When the freeze starts.
    pub schedule: String,
    /// How long it lasts.
    pub duration: Dur,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// Why, as a refused release is told.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl FreezeWindow {
    /// The parsed window.
    pub fn parse(&self) -> Result<window::Window, String> {
        window::Window::new(&self.schedule, self.duration.0, self.time_zone.as_deref().unwrap_or("UTC"))
    }
}

/// Who must approve, and what happens when nobody does.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalPolicy {
    /// Distinct approvers needed (default 1).
    #[serde(default = "one")]
    pub min_approvals: i64,
    /// Roles any one of which an approver must hold; empty: anyone.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Whether the creator may approve their own release (default false: four eyes).
    #[serde(default)]
    pub allow_self_approval: bool,
    /// How long to wait for approvals (default: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// What a timeout means (default `reject`).
    #[serde(default)]
    pub on_timeout: TimeoutOutcome,
}

fn one() -> i64 {
    1
}

/// Outcome of an approval timeout.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TimeoutOutcome {
    /// The release is aborted.
    #[default]
    Reject,
    /// The release goes on.
    Approve,
}

/// A reusable set of metrics.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisTemplate {
    /// Name referenced by steps.
    pub name: String,
    /// The deployer backend this form of the template is for: a name may have one form per
    /// backend (the metrics of the local proxies, Prometheus on Kubernetes); without it the
    /// template serves every backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<Backend>,
    /// Arguments the metrics use as `{{args.NAME}}`; a value is a default.
    #[serde(default)]
    pub args: Vec<TemplateArg>,
    /// Metrics.
    pub metrics: Vec<MetricDef>,
}

/// Where an environment's services run: the deployer backend it needs.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// Processes on the deployer's machine, behind its weighted proxies.
    Local,
    /// Kubernetes: the environment has `kubernetes` settings.
    Kubernetes,
}

impl Backend {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Local => "local",
            Backend::Kubernetes => "kubernetes",
        }
    }
}

impl Environment {
    /// The backend the environment's services run on: Kubernetes when it has `kubernetes`
    /// settings, local otherwise.
    pub fn backend(&self) -> Backend {
        if self.kubernetes.is_some() { Backend::Kubernetes } else { Backend::Local }
    }
}

impl Service {
    /// The strategy the service follows in `environment` (its override, else its own) and the
    /// path it is written at, under the service.
    pub fn strategy_for(&self, environment: &str) -> (&Strategy, String) {
        match self.environments.get(environment).and_then(|o| o.strategy.as_ref()) {
            Some(s) => (s, format!("environments.{environment}.strategy")),
            None => (&self.strategy, "strategy".into()),
        }
    }
}

impl Strategy {
    /// Every analysis template the strategy names (steps, background, blue/green analyses).
    pub fn template_names(&self) -> BTreeSet<&str> {
        let mut names: BTreeSet<&str> = BTreeSet::new();
        if let Some(c) = &self.canary {
            for step in &c.steps {
                match &step.step {
                    StepDef::Analysis(a) => names.extend(a.templates.iter().map(String::as_str)),
                    StepDef::Verify(v) => names.extend(v.templates.iter().flatten().map(String::as_str)),
                    StepDef::Experiment(e) => names.extend(e.templates.iter().map(String::as_str)),
                    _ => {}
                }
            }
            names.extend(c.analysis.iter().flat_map(|a| &a.templates).map(String::as_str));
        }
        if let Some(b) = &self.blue_green {
            let analyses = [&b.pre_promotion_analysis, &b.post_promotion_analysis];
            names.extend(analyses.into_iter().flatten().flat_map(|a| &a.templates).map(String::as_str));
        }
        names
    }

    /// The templates its experiment steps judge.
    pub fn judged_template_names(&self) -> BTreeSet<&str> {
        let steps = self.canary.iter().flat_map(|c| &c.steps);
        steps
            .filter_map(|s| match &s.step {
                StepDef::Experiment(e) => Some(e.templates.iter().map(String::as_str)),
                _ => None,
            })
            .flatten()
            .collect()
    }
}

/// A template argument.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateArg {
    /// Name.
    pub name: String,
    /// Default value; without one the argument is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// One metric, with Argo Rollouts' fields.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricDef {
    /// Name, unique in the template.
    pub name: String,
    /// Time between measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Dur>,
    /// Wait before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay: Option<Dur>,
    /// Number of measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    /// Condition over `result` for success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// Condition over `result` for failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Failed measurements allowed (default 0, -1 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<i64>,
    /// Inconclusive measurements allowed (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<i64>,
    /// Consecutive errors allowed (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<i64>,
    /// Consecutive successes that end the metric early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_success_limit: Option<i64>,
    /// Never affects the verdict.
    #[serde(default)]
    pub dry_run: bool,
    /// Measurements kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurement_retention: Option<i64>,
    /// `critical` (default), `high`, `medium` or `low`.
    #[serde(default)]
    pub severity: Severity,
    /// What no data counts as: `inconclusive` (default), `failed`, `successful`, `error`.
    #[serde(default)]
    pub no_data: NoData,
    /// Where the value comes from.
    pub provider: Provider,
}

impl MetricDef {
    /// Neither condition is set, and it is no job (whose exit code is its verdict).
    pub fn has_no_condition(&self) -> bool {
        self.provider.job.is_none() && self.success_condition.is_none() && self.failure_condition.is_none()
    }
}

/// Severity of a metric failure (the runbook's decision matrix).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// Abort at once.
    #[default]
    Critical,
    /// Abort if it persists.
    High,
    /// Pause for a person.
    Medium,
    /// Notify only.
    Low,
}

/// No-data policy.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NoData {
    /// Inconclusive.
    #[default]
    Inconclusive,
    /// Failed.
    Failed,
    /// Successful.
    Successful,
    /// Error.
    Error,
}

/// Metric provider: exactly one field set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Provider {
    /// Prometheus HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProvider>,
    /// Prometheus text endpoint read directly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape: Option<ScrapeProvider>,
    /// HTTP JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebProvider>,
    /// Command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobProvider>,
}

/// Prometheus query.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrometheusProvider {
    /// Base address.
    pub address: String,
    /// PromQL.
    pub query: String,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// Scrape of a Prometheus text endpoint.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ScrapeProvider {
    /// Endpoint URL.
    pub url: String,
    /// Expression over the scraped series.
    pub expression: String,
    /// Window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Dur>,
}

/// HTTP JSON call.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebProvider {
    /// URL.
    pub url: String,
    /// GET or POST.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Value selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// A command.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobProvider {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// A service.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Name (`booking-service`).
    pub name: String,
    /// Replicas of the stable version (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Default strategy.
    pub strategy: Strategy,
    /// Per-environment overrides.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environments: BTreeMap<String, ServiceOverride>,
    /// Database migrations run by a `migrate` step before any traffic shift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<Migrations>,
    /// How the local backend runs the service (used by the deployer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRun>,
    /// How the Kubernetes backend runs the service on Deployments it owns (native mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<kubernetes::ServiceKubernetes>,
    /// The service's existing Argo Rollout, which the Kubernetes backend drives (Argo mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argo_rollout: Option<kubernetes::ArgoRolloutRef>,
    /// Overrides the environment's progress deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<Dur>,
    /// Services that must be running in the environment before a release of this one starts
    /// (checked by preflight).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
}

impl Service {
    /// The service's migrations in `environment`: its own, with that environment's overrides.
    pub fn migrations_in(&self, environment: &str) -> Option<Migrations> {
        let mut migrations = self.migrations.clone()?;
        if let Some(over) = self.environments.get(environment).and_then(|o| o.migrations.as_ref()) {
            if let Some(database) = &over.database {
                migrations.database = database.clone();
            }
            if let Some(locations) = &over.locations {
                migrations.locations = locations.clone();
            }
            if let Some(on_abort) = over.on_abort {
                migrations.on_abort = on_abort;
            }
        }
        Some(migrations)
    }
}

/// Per-environment override of a service.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceOverride {
    /// Strategy in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// Replicas in this environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Migrations in this environment: each environment has its own database (the same scripts,
    /// applied to staging's database first, then to production's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrations: Option<MigrationsOverride>,
}

/// Per-environment override of a service's migrations; what it leaves out is the service's.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MigrationsOverride {
    /// Database name as configured in the migrator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Script locations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// What an aborted release does to the migrations its migrate step applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_abort: Option<OnAbort>,
}

/// Database migrations of a service.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Migrations {
    /// Database name as configured in the migrator.
    pub database: String,
    /// Script locations.
    #[serde(default)]
    pub locations: Vec<String>,
    /// What an aborted release does to the migrations its migrate step applied.
    #[serde(default)]
    pub on_abort: OnAbort,
}

/// What an aborted release does to the schema its migrate step changed.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum OnAbort {
    /// Leave the schema where the migrations took it, and say so (expand/contract: the
    /// previous version runs on the expanded schema).
    #[default]
    Freeze,
    /// Undo the migrations (their `U` scripts) back to the version the release started from.
    Undo,
}

/// Local backend run settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LocalRun {
    /// Command template; `{version}` and `{port}` are substituted.
    pub command: Vec<String>,
    /// Readiness path (default `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_path: Option<String>,
    /// Extra environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// Strategy: exactly one of `canary` and `blueGreen`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Strategy {
    /// Canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// Blue/green.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
}

/// Canary strategy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Canary {
    /// Steps in order.
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// Background analysis beside the steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<BackgroundAnalysis>,
}

/// Background analysis.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackgroundAnalysis {
    /// Templates.
    pub templates: Vec<String>,
    /// Argument values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Step index from which it runs (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starting_step: Option<i64>,
}

/// One canary step: its kind with the kind's parameters (`- setWeight: 25`,
/// `- pause: {duration: 1m}`), and an optional `name` beside the kind.
#[derive(Clone, Debug)]
pub struct CanaryStep {
    /// Optional name, unique in the strategy.
    pub name: Option<String>,
    /// What the step does.
    pub step: StepDef,
}

/// What a canary step does: one kind, so a step with two kinds or none cannot be written down.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StepDef {
    /// Canary traffic percentage.
    SetWeight(i64),
    /// Pause.
    Pause(PauseDef),
    /// Blocking analysis.
    Analysis(AnalysisRef),
    /// Approval gate.
    Approval(ApprovalStepDef),
    /// Verification job.
    Verify(VerifyDef),
    /// Database migration.
    Migrate(MigrateDef),
    /// Canary scale.
    SetCanaryScale(CanaryScaleDef),
    /// Requests whose headers match go to the canary (no `match`: the route is removed).
    SetHeaderRoute(routes::HeaderRoute),
    /// A share of the matching requests is copied to the canary (no `match`: removed).
    SetMirrorRoute(routes::MirrorRoute),
    /// The canary judged against a baseline of the stable artifact (Kayenta).
    Experiment(experiment::ExperimentDef),
}

impl StepDef {
    /// The kinds a step can have, as they are written.
    pub fn kinds() -> &'static [&'static str] {
        variant_names::<StepDef>()
    }

    /// "exactly one of setWeight, pause, ... is required".
    fn one_kind_required() -> String {
        format!("exactly one of {} is required", StepDef::kinds().join(", "))
    }
}

impl<'de> Deserialize<'de> for CanaryStep {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StepVisitor;
        impl<'de> serde::de::Visitor<'de> for StepVisitor {
            type Value = CanaryStep;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a step ({})", StepDef::kinds().join(", "))
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<CanaryStep, A::Error> {
                use serde::de::Error as _;
                let mut fields = NameBeside { map, name: None, exhausted: false };
                let step = match StepDef::deserialize(serde::de::value::MapAccessDeserializer::new(&mut fields)) {
                    Ok(step) => step,
                    Err(_) if fields.exhausted => return Err(A::Error::custom(StepDef::one_kind_required())),
                    Err(e) => return Err(e),
                };
                if serde::de::MapAccess::next_key::<serde::de::IgnoredAny>(&mut fields)?.is_some() {
                    return Err(A::Error::custom(StepDef::one_kind_required()));
                }
                Ok(CanaryStep { name: fields.name, step })
            }
        }
        d.deserialize_map(StepVisitor)
    }
}

impl Serialize for CanaryStep {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Written<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            name: &'a Option<String>,
            #[serde(flatten)]
            step: &'a StepDef,
        }
        Written { name: &self.name, step: &self.step }.serialize(s)
    }
}

/// A step's map with its `name` taken aside, so the rest reads as the externally tagged
/// [`StepDef`] (keys and values still go through the caller's map, which keeps error paths).
struct NameBeside<A> {
    map: A,
    name: Option<String>,
    exhausted: bool,
}

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for NameBeside<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        loop {
            let Some(key) = self.map.next_key::<String>()? else {
                self.exhausted = true;
                return Ok(None);
            };
            if key == "name" {
                self.name = Some(self.map.next_value()?);
                continue;
            }
            return seed.deserialize(serde::de::IntoDeserializer::<A::Error>::into_deserializer(key)).map(Some);
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        self.map.next_value_seed(seed)
    }
}

/// The names serde reads an enum's variants by, asked of the type itself (so a message listing
/// them cannot fall behind the enum).
fn variant_names<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};
    struct Capture<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Capture<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not an enum"))
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            variants: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = variants;
            Err(Error::custom("captured"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
            unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any
        }
    }
    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Capture(&mut names));
    names
}

/// Pause step.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PauseDef {
    /// How long; absent: until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Dur>,
}

/// Reference to analysis templates.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AnalysisRef {
    /// Templates merged into one run.
    pub templates: Vec<String>,
    /// Argument values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// Approval step; unset fields come from the environment's policy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalStepDef {
    /// Distinct approvers needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_approvals: Option<i64>,
    /// Roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    /// Timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Dur>,
}

/// Verification step: a job, inline or from a template.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VerifyDef {
    /// Inline job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobProvider>,
    /// Analysis templates to run instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub templates: Option<Vec<String>>,
    /// Argument values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// Migrate step (uses the service's `migrations`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MigrateDef {
    /// Target version (default: latest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_version: Option<String>,
}

/// Canary scale: exactly one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CanaryScaleDef {
    /// Fixed replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Percentage of the stable replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    /// Follow the traffic weight again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

/// Blue/green strategy.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BlueGreen {
    /// Analysis of the preview before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisRef>,
    /// Analysis after the switch; failure switches back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisRef>,
    /// Switch without waiting for a promote (default true).
    #[serde(default = "yes")]
    pub auto_promotion_enabled: bool,
    /// Wait this long before switching (with auto promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promotion_seconds: Option<i64>,
    /// Keep the old version running this long after the switch (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Dur>,
    /// Preview replicas (default: the service's replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_replicas: Option<i64>,
}

fn yes() -> bool {
    true
}

/// One problem found in a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending value.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { write!(f, "{}", self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Template arguments the scheduler fills in for every run.
pub const BUILTIN_ARGS: [&str; 7] = ["service", "environment", "artifact", "track", "release", "revision", "address"];

/// Default progress deadline (Argo Rollouts' `progressDeadlineSeconds` default).
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default blue/green scale-down delay (Argo Rollouts' default).
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// Longest artifact reference (the contract's bound, so every request path agrees).
pub const MAX_ARTIFACT_BYTES: usize = hopngo_proto::limits::ARTIFACT;

/// Why `artifact` cannot be deployed, if it cannot: the scheduler (CreateRelease) and the deployer
/// (ApplyTarget) refuse the same artifacts. An artifact is printable ASCII without spaces (an
/// image reference or a version), and never starts with `-`: backends hand it to programs as an
/// argument, where it must not read as an option.
pub fn artifact_problem(artifact: &str) -> Option<String> {
    if artifact.is_empty() {
        return Some("must not be empty".into());
    }
    if artifact.len() > MAX_ARTIFACT_BYTES {
        return Some(format!("is {} bytes long; at most {MAX_ARTIFACT_BYTES} are allowed", artifact.len()));
    }
    let shown = || hopngo_proto::check::shown(artifact);
    if let Some(c) = artifact.chars().find(|c| !c.is_ascii_graphic()) {
        return Some(format!(
            "{} contains {c:?}; an artifact is printable ASCII without spaces or control characters",
            shown()
        ));
    }
    if artifact.starts_with('-') || artifact.starts_with(':') || artifact.ends_with(':') || artifact.ends_with('/') {
        return Some(format!("{} is not an image reference or version", shown()));
    }
    None
}

impl DeliveryConfig {
    /// Parses YAML; a syntax or type error is one problem with its path.
    pub fn parse(yaml: &str) -> Result<DeliveryConfig, Problem> {
        let value: serde_json::Value = serde_saphyr::from_str(yaml)
            .map_err(|e| Problem { path: String::new(), message: format!("not valid YAML: {e}") })?;
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            Problem { path: if path == "." { String::new() } else { path }, message: e.into_inner().to_string() }
        })
    }

    /// Parses and validates; returns every problem found.
    pub fn load(yaml: &str) -> Result<DeliveryConfig, Vec<Problem>> {
        let config = DeliveryConfig::parse(yaml).map_err(|p| vec![p])?;
        let problems = config.validate();
        if problems.is_empty() { Ok(config) } else { Err(problems) }
    }

    /// The environment named `name`.
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The analysis template named `name` (its first form, when it has one per backend).
    pub fn template(&self, name: &str) -> Option<&AnalysisTemplate> {
        self.analysis_templates.iter().find(|t| t.name == name)
    }

    /// The config as `environment` sees it: every template in the form for its backend (a
    /// template without `backend` serves all). Borrowed when no template has forms.
    pub fn for_environment(&self, environment: &Environment) -> std::borrow::Cow<'_, DeliveryConfig> {
        if self.analysis_templates.iter().all(|t| t.backend.is_none()) {
            return std::borrow::Cow::Borrowed(self);
        }
        let backend = environment.backend();
        let mut config = self.clone();
        config.analysis_templates.retain(|t| t.backend.is_none_or(|b| b == backend));
        std::borrow::Cow::Owned(config)
    }

    /// Environment names with upstream environments first.
    pub fn promotion_order(&self) -> Vec<String> {
        let mut order: Vec<String> = Vec::new();
        let mut remaining: Vec<&Environment> = self.environments.iter().collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            remaining.retain(|e| match &e.from {
                Some(from) if !order.contains(from) => true,
                _ => {
                    order.push(e.name.clone());
                    false
                }
            });
            if remaining.len() == before {
                // A cycle (reported by validate); keep document order for the rest.
                order.extend(remaining.iter().map(|e| e.name.clone()));
                break;
            }
        }
        order
    }

    /// Every problem in the document, in document order.
    pub fn validate(&self) -> Vec<Problem> {
        let mut v = Validator::default();
        for service in &self.services {
            let overrides = service.environments.values().filter_map(|o| o.strategy.as_ref());
            for strategy in std::iter::once(&service.strategy).chain(overrides) {
                v.judged.extend(strategy.judged_template_names().into_iter().map(String::from));
            }
        }
        if let Some(api) = &self.api_version
            && api != "hopngo.io/v1"
        {
            v.problem("apiVersion", format!("{api:?} is not supported (use hopngo.io/v1)"));
        }
        if let Some(kind) = &self.kind
            && kind != "DeliveryConfig"
        {
            v.problem("kind", format!("{kind:?} is not DeliveryConfig"));
        }
        if self.environments.is_empty() {
            v.problem("environments", "at least one environment is required");
        }
        v.providers(&self.providers);
        let mut env_names = BTreeSet::new();
        for (i, env) in self.environments.iter().enumerate() {
            let path = format!("environments[{i}]");
            v.name(&format!("{path}.name"), &env.name);
            if !env_names.insert(env.name.as_str()) {
                v.problem(format!("{path}.name"), format!("duplicate environment {:?}", env.name));
            }
            if let Some(deadline) = env.progress_deadline {
                v.positive(&format!("{path}.progressDeadline"), deadline);
            }
            if let Some(policy) = &env.approval {
                v.approval_policy(&format!("{path}.approval"), policy);
            }
            if env.promotion.is_some() && env.from.is_none() {
                v.problem(format!("{path}.promotion"), "needs `from`: there is no environment to promote from");
            }
            if let Some(Some(soak)) = env.promotion.as_ref().map(|p| p.soak) {
                v.positive(&format!("{path}.promotion.soak"), soak);
            }
            if let Some(k) = &env.kubernetes {
                v.kubernetes_environment(&format!("{path}.kubernetes"), k);
            }
            for (j, w) in env.maintenance_windows.iter().enumerate() {
                v.window(&format!("{path}.maintenanceWindows[{j}]"), &w.schedule, w.duration, w.time_zone.as_deref());
            }
            for (j, w) in env.freeze_windows.iter().enumerate() {
                let wpath = format!("{path}.freezeWindows[{j}]");
                v.window(&wpath, &w.schedule, w.duration, w.time_zone.as_deref());
                if let Some(reason) = &w.reason
                    && (reason.trim().is_empty() || reason.len() > 1024)
                {
                    v.problem(format!("{wpath}.reason"), "must be 1-1024 characters when given");
                }
            }
        }
        for (i, env) in self.environments.iter().enumerate() {
            if let Some(from) = &env.from {
                if from == &env.name {
                    v.problem(format!("environments[{i}].from"), "an environment cannot be promoted from itself");
                } else if !env_names.contains(from.as_str()) {
                    v.problem(format!("environments[{i}].from"), format!("unknown environment {from:?}"));
                }
            }
        }
        if self.has_promotion_cycle() {
            v.problem("environments", "promotion order has a cycle (follow the `from` fields)");
        }

        for (i, template) in self.analysis_templates.iter().enumerate() {
            let path = format!("analysisTemplates[{i}]");
            v.name(&format!("{path}.name"), &template.name);
            let same_form = |other: &AnalysisTemplate| {
                other.name == template.name
                    && (other.backend.is_none() || template.backend.is_none() || other.backend == template.backend)
            };
            if let Some(earlier) = self.analysis_templates[..i].iter().find(|t| same_form(t)) {
                let message = match (template.backend, earlier.backend) {
                    (Some(b), Some(_)) => {
                        format!("duplicate analysis template {:?} for the {} backend", template.name, b.as_str())
                    }
                    _ => format!(
                        "duplicate analysis template {:?} (a name may have one form per backend, each with `backend`)",
                        template.name
                    ),
                };
                v.problem(format!("{path}.name"), message);
            }
            if template.metrics.is_empty() {
                v.problem(format!("{path}.metrics"), "at least one metric is required");
            }
            let mut metric_names = BTreeSet::new();
            for (j, metric) in template.metrics.iter().enumerate() {
                let mpath = format!("{path}.metrics[{j}]");
                if !metric_names.insert(metric.name.as_str()) {
                    v.problem(format!("{mpath}.name"), format!("duplicate metric {:?}", metric.name));
                }
                v.metric(&mpath, metric, v.judged.contains(&template.name));
                v.metric_expressions(&mpath, metric);
            }
        }

        if self.services.is_empty() {
            v.problem("services", "at least one service is required");
        }
        let mut service_names = BTreeSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let path = format!("services[{i}]");
            v.name(&format!("{path}.name"), &service.name);
            if !service_names.insert(service.name.as_str()) {
                v.problem(format!("{path}.name"), format!("duplicate service {:?}", service.name));
            }
            if let Some(replicas) = service.replicas {
                v.range(&format!("{path}.replicas"), replicas, 1, 100);
            }
            if let Some(deadline) = service.progress_deadline {
                v.positive(&format!("{path}.progressDeadline"), deadline);
            }
            v.strategy(&format!("{path}.strategy"), &service.strategy, self, service);
            for (env, over) in &service.environments {
                let opath = format!("{path}.environments.{env}");
                if !env_names.contains(env.as_str()) {
                    v.problem(opath.clone(), format!("unknown environment {env:?}"));
                }
                if let Some(replicas) = over.replicas {
                    v.range(&format!("{opath}.replicas"), replicas, 1, 100);
                }
                if let Some(strategy) = &over.strategy {
                    v.strategy(&format!("{opath}.strategy"), strategy, self, service);
                }
                if let Some(m) = &over.migrations {
                    if service.migrations.is_none() {
                        v.problem(
                            format!("{opath}.migrations"),
                            "the service declares no migrations to override (declare them on the service)",
                        );
                    }
                    if let Some(database) = &m.database {
                        v.name(&format!("{opath}.migrations.database"), database);
                    }
                    v.locations(&format!("{opath}.migrations.locations"), m.locations.as_deref().unwrap_or_default());
                }
            }
            if let Some(m) = &service.migrations {
                v.name(&format!("{path}.migrations.database"), &m.database);
                v.locations(&format!("{path}.migrations.locations"), &m.locations);
            }
            let gateways = self.environments.iter().all(|e| e.kubernetes.as_ref().is_none_or(|k| k.gateway.is_some()));
            v.kubernetes_service(&path, service, gateways);
            if let Some(local) = &service.local
                && local.command.first().is_none_or(|c| c.trim().is_empty())
            {
                v.problem(format!("{path}.local.command"), "must name a program");
            }
        }
        for (i, service) in self.services.iter().enumerate() {
            for (j, dep) in service.depends_on.iter().enumerate() {
                let dpath = format!("services[{i}].dependsOn[{j}]");
                if dep == &service.name {
                    v.problem(dpath, "a service cannot depend on itself");
                } else if !service_names.contains(dep.as_str()) {
                    v.problem(dpath, format!("unknown service {dep:?}"));
                }
            }
        }
        if let Some(cycle) = self.dependency_cycle() {
            v.problem("services", format!("dependsOn has a cycle: {}", cycle.join(" → ")));
        }
        self.validate_template_forms(&mut v);
        v.problems
    }

    /// Every template a service's strategy names in an environment has a form for the backend
    /// that environment runs on (unknown names are reported where they are written).
    fn validate_template_forms(&self, v: &mut Validator) {
        for (i, service) in self.services.iter().enumerate() {
            for env in &self.environments {
                let (strategy, strategy_path) = service.strategy_for(&env.name);
                let path = format!("services[{i}].{strategy_path}");
                let backend = env.backend();
                for name in strategy.template_names() {
                    let forms: Vec<&AnalysisTemplate> =
                        self.analysis_templates.iter().filter(|t| t.name == name).collect();
                    if !forms.is_empty() && !forms.iter().any(|t| t.backend.is_none_or(|b| b == backend)) {
                        v.problem(
                            path.clone(),
                            format!(
                                "analysis template {name:?} has no form for the {} backend, which environment {:?} runs on",
                                backend.as_str(),
                                env.name
                            ),
                        );
                    }
                }
            }
        }
    }

    /// A cycle of `dependsOn` (no service of it could ever be released first), as service names.
    fn dependency_cycle(&self) -> Option<Vec<String>> {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
        dependency_cycle(&names, |name| {
            self.service(name).map(|s| s.depends_on.iter().map(String::as_str).collect()).unwrap_or_default()
        })
    }

    fn has_promotion_cycle(&self) -> bool {
        for env in &self.environments {
            let mut seen = BTreeSet::new();
            let mut current = Some(env);
            while let Some(e) = current {
                if !seen.insert(e.name.as_str()) {
                    return true;
                }
                current = e.from.as_deref().and_then(|f| self.environment(f));
            }
        }
        false
    }
}

/// A cycle in a dependency graph over `names` (`deps` of a name: the names it depends on), as
/// the names along it with the first repeated at the end. Self-dependence is not a cycle here:
/// callers report it on its own, where it is written.
pub fn dependency_cycle<'a>(names: &[&'a str], deps: impl Fn(&str) -> Vec<&'a str>) -> Option<Vec<String>> {
    fn visit<'a>(
        name: &'a str,
        deps: &impl Fn(&str) -> Vec<&'a str>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == name) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(name.to_string());
            return Some(cycle);
        }
        if !done.insert(name) {
            return None;
        }
        path.push(name);
        for dep in deps(name).into_iter().filter(|d| *d != name) {
            if let Some(cycle) = visit(dep, deps, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    names.iter().find_map(|name| visit(name, &deps, &mut Vec::new(), &mut done))
}

/// Parses `text` as it will be once a run fills in its `{{args.NAME}}` references. The values
/// are not known yet, so each reference is tried as a number (`0`, for `result < {{args.max}}`)
/// and as a name (`x`, for a metric name in a scrape expression); it parses if either does, and
/// the error of the first try is the one reported.
fn parses_with_arguments(text: &str, parse: impl Fn(&str) -> Result<(), String>) -> Result<(), String> {
    let mut first_error = None;
    for sample in ["0", "x"] {
        let filled = with_every_argument(text, sample)?;
        match parse(&filled) {
            Ok(()) => return Ok(()),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
        if filled == text {
            break;
        }
    }
    Err(first_error.unwrap_or_default())
}

/// `text` with every `{{args.NAME}}` replaced by `value`.
fn with_every_argument(text: &str, value: &str) -> Result<String, String> {
    hopngo_metrics_lang::template::substitute_with(text, |_| Ok(value.to_string()))
}

/// What is wrong with a name (of a service, environment, step or route), if anything.
fn name_problem(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-');
    (!ok).then(|| {
        format!("{name:?} is not a valid name (lower-case letters, digits and '-', starting with a letter, at most 63)")
    })
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
    /// Templates an experiment judges: their metrics need no conditions (the judge compares the
    /// tracks), but an analysis using them still does.
    judged: BTreeSet<String>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn providers(&mut self, p: &providers::Providers) {
        for (i, host) in p.allowed_hosts.iter().enumerate() {
            if let Err(e) = providers::HostPattern::parse(host) {
                self.problem(format!("providers.allowedHosts[{i}]"), e);
            }
        }
        let Some(jobs) = &p.jobs else { return };
        if let Some(user) = &jobs.run_as {
            let ok = !user.is_empty()
                && user.len() <= 32
                && user.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
                && !user.starts_with('-');
            if !ok {
                self.problem("providers.jobs.runAs", format!("{user:?} is not a user name"));
            } else if user == "root" || user == "0" {
                self.problem("providers.jobs.runAs", "jobs run as an unprivileged user, not root");
            }
        }
        for (i, var) in jobs.environment.iter().flatten().enumerate() {
            let ok = !var.is_empty()
                && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !var.starts_with(|c: char| c.is_ascii_digit());
            if !ok {
                self.problem(format!("providers.jobs.environment[{i}]"), format!("{var:?} is not a variable name"));
            }
        }
    }

    fn name(&mut self, path: &str, name: &str) {
        if let Some(problem) = name_problem(name) {
            self.problem(path, problem);
        }
    }

    fn range(&mut self, path: &str, value: i64, min: i64, max: i64) {
        if value < min || value > max {
            self.problem(path, format!("{value} is not in {min}..={max}"));
        }
    }

    fn locations(&mut self, path: &str, locations: &[String]) {
        for (j, location) in locations.iter().enumerate() {
            if location.trim().is_empty() {
                self.problem(format!("{path}[{j}]"), "must not be empty");
            }
        }
    }

    fn positive(&mut self, path: &str, d: Dur) {
        if d.0.is_zero() {
            self.problem(path, "must be greater than 0");
        }
    }

    /// A cron window (maintenance or freeze): schedule, duration at most 7d, time zone.
    fn window(&mut self, path: &str, schedule: &str, duration: Dur, time_zone: Option<&str>) {
        if let Err(e) = window::Schedule::parse(schedule) {
            self.problem(format!("{path}.schedule"), e);
        }
        self.positive(&format!("{path}.duration"), duration);
        if duration.0 > Duration::from_secs(7 * 86400) {
            self.problem(format!("{path}.duration"), "at most 7d");
        }
        if let Err(e) = window::time_zone(time_zone.unwrap_or_default()) {
            self.problem(format!("{path}.timeZone"), e);
        }
    }

    fn approval_policy(&mut self, path: &str, p: &ApprovalPolicy) {
        self.range(&format!("{path}.minApprovals"), p.min_approvals, 1, 10);
        for (i, role) in p.roles.iter().enumerate() {
            if role.trim().is_empty() {
                self.problem(format!("{path}.roles[{i}]"), "must not be empty");
            }
        }
        if let Some(t) = p.timeout {
            self.positive(&format!("{path}.timeout"), t);
        }
    }

    /// A metric of a template (`judged`: an experiment judges it, so it needs no conditions).
    fn metric(&mut self, path: &str, m: &MetricDef, judged: bool) {
        if m.name.trim().is_empty() {
            self.problem(format!("{path}.name"), "must not be empty");
        }
        if let Some(i) = m.interval {
            self.positive(&format!("{path}.interval"), i);
        }
        if let Some(count) = m.count {
            if count < 0 {
                self.problem(format!("{path}.count"), format!("{count} is negative"));
            } else if count > 1 && m.interval.is_none() {
                self.problem(format!("{path}.interval"), "required when count is greater than 1");
            }
        }
        if let Some(limit) = m.failure_limit
            && limit < -1
        {
            self.problem(format!("{path}.failureLimit"), format!("{limit} is below -1"));
        }
        for (field, value) in [
            ("inconclusiveLimit", m.inconclusive_limit),
            ("consecutiveErrorLimit", m.consecutive_error_limit),
            ("consecutiveSuccessLimit", m.consecutive_success_limit),
            ("measurementRetention", m.measurement_retention),
        ] {
            if let Some(value) = value
                && value < 0
            {
                self.problem(format!("{path}.{field}"), format!("{value} is negative"));
            }
        }
        let set = [
            m.provider.prometheus.is_some(),
            m.provider.scrape.is_some(),
            m.provider.web.is_some(),
            m.provider.job.is_some(),
        ]
        .iter()
        .filter(|x| **x)
        .count();
        if set != 1 {
            self.problem(format!("{path}.provider"), "exactly one of prometheus, scrape, web, job is required");
        }
        if !judged && m.has_no_condition() {
            self.problem(format!("{path}.successCondition"), "a successCondition or failureCondition is required");
        }
        if let Some(job) = &m.provider.job {
            self.job(&format!("{path}.provider.job"), job);
        }
        if let Some(p) = &m.provider.prometheus {
            self.url(&format!("{path}.provider.prometheus.address"), &p.address);
            if p.query.trim().is_empty() {
                self.problem(format!("{path}.provider.prometheus.query"), "must not be empty");
            }
        }
        if let Some(p) = &m.provider.scrape {
            self.url(&format!("{path}.provider.scrape.url"), &p.url);
            if p.expression.trim().is_empty() {
                self.problem(format!("{path}.provider.scrape.expression"), "must not be empty");
            }
        }
        if let Some(p) = &m.provider.web {
            self.url(&format!("{path}.provider.web.url"), &p.url);
            if let Some(method) = &p.method
                && !matches!(method.as_str(), "GET" | "POST")
            {
                self.problem(format!("{path}.provider.web.method"), format!("{method:?} is not GET or POST"));
            }
        }
    }

    /// Parses the metric's conditions and scrape expression, so a typo is refused when the config
    /// is applied, not when a release first measures.
    fn metric_expressions(&mut self, path: &str, m: &MetricDef) {
        use hopngo_metrics_lang::{condition::Condition, scrape::ScrapeExpr};
        let conditions = [("successCondition", &m.success_condition), ("failureCondition", &m.failure_condition)];
        for (field, text) in conditions {
            if let Some(text) = text
                && let Err(e) = parses_with_arguments(text, |t| Condition::parse(t).map(drop))
            {
                self.problem(format!("{path}.{field}"), e);
            }
        }
        if let Some(p) = &m.provider.scrape
            && !p.expression.trim().is_empty()
            && let Err(e) = parses_with_arguments(&p.expression, |t| ScrapeExpr::parse(t).map(drop))
        {
            self.problem(format!("{path}.provider.scrape.expression"), e);
        }
    }

    fn job(&mut self, path: &str, job: &JobProvider) {
        if job.command.first().is_none_or(|c| c.trim().is_empty()) {
            self.problem(format!("{path}.command"), "must name a program");
        }
        if let Some(t) = job.timeout {
            self.positive(&format!("{path}.timeout"), t);
        }
    }

    fn url(&mut self, path: &str, url: &str) {
        // A URL taken from an argument is checked when the run starts, with the value filled in.
        if url.starts_with("{{args.") {
            return;
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "http://".len() {
            self.problem(path, format!("{url:?} is not an http(s) URL"));
        }
    }

    /// Templates named at `path` with `args` (`analysed`: by an analysis, whose metrics need
    /// conditions, rather than an experiment).
    fn templates(
        &mut self,
        path: &str,
        names: &[String],
        args: &BTreeMap<String, String>,
        config: &DeliveryConfig,
        analysed: bool,
    ) {
        if names.is_empty() {
            self.problem(path, "at least one template is required");
        }
        let mut required = BTreeSet::new();
        for (i, name) in names.iter().enumerate() {
            let forms: Vec<&AnalysisTemplate> = config.analysis_templates.iter().filter(|t| &t.name == name).collect();
            if forms.is_empty() {
                self.problem(format!("{path}[{i}]"), format!("unknown analysis template {name:?}"));
            }
            for t in forms {
                required.extend(t.args.iter().filter(|a| a.value.is_none()).map(|a| a.name.clone()));
                // A template nothing judges had its metrics' conditions checked where it is written.
                if analysed && self.judged.contains(name) {
                    for m in t.metrics.iter().filter(|m| m.has_no_condition()) {
                        self.problem(
                            format!("{path}[{i}]"),
                            format!(
                                "metric {:?} of template {name:?} has no successCondition or failureCondition: an \
                                 analysis would pass whatever it measures (only an experiment judges without them)",
                                m.name
                            ),
                        );
                    }
                }
            }
        }
        // Supplied by the scheduler when a run starts (`address`: where the service's traffic
        // enters, as the backend reports it).
        for builtin in BUILTIN_ARGS {
            required.remove(builtin);
        }
        for arg in required {
            if !args.contains_key(&arg) {
                self.problem(
                    path.replace(".templates", ".args"),
                    format!("argument {arg:?} is required by the templates"),
                );
            }
        }
    }

    fn strategy(&mut self, path: &str, s: &Strategy, config: &DeliveryConfig, service: &Service) {
        match (&s.canary, &s.blue_green) {
            (Some(_), Some(_)) | (None, None) => self.problem(path, "exactly one of canary and blueGreen is required"),
            (Some(c), None) => self.canary(&format!("{path}.canary"), c, config, service),
            (None, Some(b)) => self.blue_green(&format!("{path}.blueGreen"), b, config),
        }
    }

    fn canary(&mut self, path: &str, c: &Canary, config: &DeliveryConfig, service: &Service) {
        let mut names = BTreeSet::new();
        let mut last_weight = 0;
        // The routes in force after each step, to refuse a name used for both kinds or more
        // routes at once than a backend can hold.
        let mut in_force = routes::Routes::default();
        for (i, step) in c.steps.iter().enumerate() {
            let spath = format!("{path}.steps[{i}]");
            if let Some(name) = &step.name {
                self.name(&format!("{spath}.name"), name);
                if !names.insert(name.clone()) {
                    self.problem(format!("{spath}.name"), format!("duplicate step name {name:?}"));
                }
            }
            match &step.step {
                StepDef::SetWeight(weight) => {
                    let weight = *weight;
                    let before = self.problems.len();
                    self.range(&format!("{spath}.setWeight"), weight, 0, 100);
                    if self.problems.len() == before {
                        if weight < last_weight {
                            self.problem(
                                format!("{spath}.setWeight"),
                                format!(
                                    "{weight} is lower than the previous weight {last_weight}; weights must not decrease"
                                ),
                            );
                        }
                        last_weight = weight;
                    }
                }
                StepDef::Pause(p) => {
                    if let Some(d) = p.duration {
                        self.positive(&format!("{spath}.pause.duration"), d);
                    }
                }
                StepDef::Analysis(a) => {
                    self.templates(&format!("{spath}.analysis.templates"), &a.templates, &a.args, config, true)
                }
                StepDef::Approval(a) => {
                    if let Some(min) = a.min_approvals {
                        self.range(&format!("{spath}.approval.minApprovals"), min, 1, 10);
                    }
                    if let Some(t) = a.timeout {
                        self.positive(&format!("{spath}.approval.timeout"), t);
                    }
                }
                StepDef::Verify(verify) => self.verify(&format!("{spath}.verify"), verify, config),
                StepDef::Migrate(_) => {
                    if service.migrations.is_none() {
                        self.problem(format!("{spath}.migrate"), "the service declares no migrations");
                    }
                }
                StepDef::SetCanaryScale(scale) => {
                    let set =
                        [scale.replicas.is_some(), scale.weight.is_some(), scale.match_traffic_weight == Some(true)]
                            .iter()
                            .filter(|x| **x)
                            .count();
                    if set != 1 {
                        self.problem(
                            format!("{spath}.setCanaryScale"),
                            "exactly one of replicas, weight, matchTrafficWeight: true is required",
                        );
                    }
                    if let Some(r) = scale.replicas {
                        self.range(&format!("{spath}.setCanaryScale.replicas"), r, 0, 100);
                    }
                    if let Some(w) = scale.weight {
                        self.range(&format!("{spath}.setCanaryScale.weight"), w, 0, 100);
                    }
                }
                StepDef::SetHeaderRoute(route) => {
                    let rpath = format!("{spath}.setHeaderRoute");
                    self.route_problems(&rpath, route.problems());
                    if in_force.mirrors.iter().any(|m| m.name == route.name) {
                        self.problem(format!("{rpath}.name"), format!("{:?} is a mirror route", route.name));
                    }
                    in_force.set_header(route);
                    if let Some(problem) = in_force.count_problem() {
                        self.problem(rpath, problem);
                    }
                }
                StepDef::Experiment(e) => {
                    let epath = format!("{spath}.experiment");
                    self.templates(&format!("{epath}.templates"), &e.templates, &e.args, config, false);
                    let forms: Vec<&AnalysisTemplate> =
                        config.analysis_templates.iter().filter(|t| e.templates.contains(&t.name)).collect();
                    for (at, why) in e.problems(&forms) {
                        self.problem(format!("{epath}{at}"), why);
                    }
                }
                StepDef::SetMirrorRoute(route) => {
                    let rpath = format!("{spath}.setMirrorRoute");
                    self.route_problems(&rpath, route.problems());
                    if in_force.headers.iter().any(|h| h.name == route.name) {
                        self.problem(format!("{rpath}.name"), format!("{:?} is a header route", route.name));
                    }
                    in_force.set_mirror(route);
                    if let Some(problem) = in_force.count_problem() {
                        self.problem(rpath, problem);
                    }
                }
            }
        }
        if let Some(bg) = &c.analysis {
            self.templates(&format!("{path}.analysis.templates"), &bg.templates, &bg.args, config, true);
            if let Some(start) = bg.starting_step {
                self.range(&format!("{path}.analysis.startingStep"), start, 0, c.steps.len() as i64);
            }
        }
    }

    fn route_problems(&mut self, path: &str, problems: Vec<routes::RouteProblem>) {
        for (at, reason) in problems {
            self.problem(format!("{path}{at}"), reason);
        }
    }

    fn verify(&mut self, path: &str, verify: &VerifyDef, config: &DeliveryConfig) {
        match (&verify.job, &verify.templates) {
            (Some(job), None) => self.job(&format!("{path}.job"), job),
            (None, Some(t)) => self.templates(&format!("{path}.templates"), t, &verify.args, config, true),
            _ => self.problem(path, "exactly one of job and templates is required"),
        }
    }

    fn blue_green(&mut self, path: &str, b: &BlueGreen, config: &DeliveryConfig) {
        if let Some(a) = &b.pre_promotion_analysis {
            self.templates(&format!("{path}.prePromotionAnalysis.templates"), &a.templates, &a.args, config, true);
        }
        if let Some(a) = &b.post_promotion_analysis {
            self.templates(&format!("{path}.postPromotionAnalysis.templates"), &a.templates, &a.args, config, true);
        }
        if let Some(s) = b.auto_promotion_seconds {
            self.range(&format!("{path}.autoPromotionSeconds"), s, 0, 86400);
        }
        if let Some(r) = b.preview_replicas {
            self.range(&format!("{path}.previewReplicas"), r, 1, 100);
        }
    }
}

#[cfg(test)]
mod tests;
