//! `hopctl`: the thin CLI of the HopNGo control plane. Every command is one or two RPCs plus
//! rendering; data goes to stdout (`-o table|json|yaml`), live progress of `--watch` to stderr.

/// `println!` to stdout through [`term::stdout`].
macro_rules! outln {
    () => {
        $crate::term::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::term::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` to stdout through [`term::stdout`].
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::term::stdout(format_args!($($arg)*))
    };
}

mod credentials;
mod render;
mod term;

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use hopngo_client::{
    Clients, Connection,
    views::{
        AnalysisRunView, AuditEntryView, ConfigSummaryView, ConfigView, DeliveryView, EscalationView, EventView,
        FreezeView, FreezesView, GroupView, MeasurementView, MigrationInfoView, MigrationRunView, ReleaseView,
        RevisionView, TimelineView, WebhookView, WhoAmIView,
    },
};
use hopngo_kit::args::parse_duration;
use hopngo_proto::{
    analyzer as apb, config as cpb, events as epb, identity as ipb, migrator as mpb, notifier as npb, release as pb,
};
use tokio_stream::StreamExt as _;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable table.
    Table,
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

#[derive(Parser, Debug)]
#[command(
    name = "hopctl",
    version,
    about = "Drive HopNGo releases: blue/green and canary deployments, approvals, rollbacks, analysis, database migrations, release events and escalations"
)]
struct Cli {
    /// Scheduler address: host:port or a URL.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HOPNGO_SERVER",
        default_value = "https://127.0.0.1:50051"
    )]
    server: String,
    /// Analyzer address (for `hopctl analysis`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HOPNGO_ANALYZER",
        default_value = "https://127.0.0.1:50053"
    )]
    analyzer: String,
    /// Migrator address (for `hopctl migrate`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HOPNGO_MIGRATOR",
        default_value = "https://127.0.0.1:50054"
    )]
    migrator: String,
    /// Notifier address (for `hopctl events`, `subscriptions`, `ack`, `escalations`).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "HOPNGO_NOTIFIER",
        default_value = "https://127.0.0.1:50055"
    )]
    notifier: String,
    /// File holding your bearer token (an OIDC JWT or a static token); without it, the token
    /// in HOPNGO_TOKEN, else the one `hopctl login` stored.
    #[arg(long, global = true, help_heading = "Global options", env = "HOPNGO_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Your bearer token (prefer the environment or --token-file: arguments are visible to other
    /// users of the machine).
    #[arg(long, global = true, hide = true, env = "HOPNGO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where `hopctl login` keeps the token (default: $XDG_CONFIG_HOME/hopngo or ~/.config/hopngo).
    #[arg(long, global = true, help_heading = "Global options", env = "HOPNGO_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// CA certificate (PEM) trusted for https addresses, besides the public roots.
    #[arg(long, global = true, help_heading = "Global options", env = "HOPNGO_CA_FILE")]
    ca_file: Vec<PathBuf>,
    /// Do not verify the servers' certificates: refused unless every address is loopback.
    #[arg(long, global = true, help_heading = "Global options", env = "HOPNGO_INSECURE_SKIP_VERIFY")]
    insecure_skip_verify: bool,
    /// Output format.
    #[arg(short, long, global = true, help_heading = "Global options", env = "HOPNGO_OUTPUT", value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Manage the delivery config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Create releases.
    #[command(subcommand)]
    Release(ReleaseCommand),
    /// Show a release (`--watch` follows it live until it settles; exit code 0 only if it succeeded).
    Get {
        /// Release id.
        id: String,
        /// Follow changes until the release settles.
        #[arg(short, long)]
        watch: bool,
    },
    /// List releases, newest first.
    List {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this environment.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Only these phases (pending, progressing, paused, awaiting-approval, succeeded, aborted, failed, superseded).
        #[arg(long, value_delimiter = ',')]
        phase: Vec<PhaseArg>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Token from a previous page (printed on stderr when there are more).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Skip the current pause (or analysis); with --full, every remaining step (refused while an
    /// approval or a migrate step remains: those are never skipped).
    Promote {
        /// Release id.
        id: String,
        /// Skip every remaining step and make the new artifact stable.
        #[arg(long)]
        full: bool,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Stop a release and return traffic to the stable artifact.
    Abort {
        /// Release id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Restart an aborted release from its first step.
    Retry {
        /// Release id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Release an earlier revision's artifact again (the previous one by default).
    Undo {
        /// Service.
        service: String,
        /// Environment.
        #[arg(long = "env")]
        environment: String,
        /// Revision to return to.
        #[arg(long)]
        to_revision: Option<u64>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Approve a release waiting for approval.
    Approve {
        /// Release id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject a release waiting for approval (it is aborted).
    Reject {
        /// Release id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// What a release of ARTIFACT would have the deployer write at --weight, beside the stable
    /// artifact, without writing it (on Kubernetes: the objects, as YAML).
    Render {
        /// Service.
        service: String,
        /// Environment.
        #[arg(long = "env")]
        environment: String,
        /// The artifact the release would run.
        #[arg(long)]
        artifact: String,
        /// Canary weight (blue/green: 100 is after the switch).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        weight: u32,
    },
    /// Revision history of a service in an environment.
    History {
        /// Service.
        service: String,
        /// Environment.
        #[arg(long = "env")]
        environment: String,
    },
    /// The audit log, newest first: every transition with who caused it and why, and every
    /// refused request.
    Audit {
        /// Only this release.
        #[arg(long)]
        release: Option<String>,
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// Only this environment.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Only this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only this action (created, promoted, approval-recorded, approve, apply-config, ...).
        #[arg(long)]
        action: Option<String>,
        /// Only refused requests.
        #[arg(long, conflicts_with = "allowed")]
        refused: bool,
        /// Only what was allowed.
        #[arg(long)]
        allowed: bool,
        /// Only entries newer than this (`30m`, `2h`, `7d`).
        #[arg(long, value_parser = parse_duration)]
        since: Option<std::time::Duration>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Token from a previous page (printed on stderr when there are more).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Return every service of an environment (or the listed ones, in order) to its previous
    /// revision, one after another.
    RollbackEnv {
        /// Environment.
        environment: String,
        /// Services in order (default: every service with a previous revision).
        #[arg(long = "service")]
        services: Vec<String>,
        /// Skip steps and analysis: straight back to the previous artifact.
        #[arg(long)]
        emergency: bool,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Follow the group until every member has settled (exit code 0 only if all succeeded).
        #[arg(short, long)]
        watch: bool,
    },
    /// A release's timeline: its events from the notifier and the analysis measurements that did
    /// not pass, in time order; for a release an analysis aborted, the time from the first failing
    /// measurement to all traffic confirmed back on the previous version.
    Timeline {
        /// Release id.
        id: String,
    },
    /// Release trains: several services released to one environment together, in dependency
    /// order, with one approval; a member that fails returns the ones released before it.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Show a release group (an environment rollback or a train).
    Group {
        /// Group id.
        id: String,
        /// Follow the group until every member has settled (exit code 0 only if all succeeded).
        #[arg(short, long)]
        watch: bool,
    },
    /// Promote a service to the next environment: releases there what is stable now in the
    /// environment it is promoted from (or --artifact), if the promotion policy allows it
    /// (succeeded and verified upstream, soak time); the target's approval and maintenance window
    /// then apply as for any release.
    PromoteEnv {
        /// Service.
        service: String,
        /// Environment to promote from (default: the target's `from`).
        #[arg(long)]
        from: Option<String>,
        /// Environment to release to.
        #[arg(long)]
        to: String,
        /// Artifact to promote (default: what is stable in --from now).
        #[arg(long)]
        artifact: Option<String>,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Client-chosen key: repeating the command with it returns the first release.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Release even though the target environment is frozen (admins only; --reason required; audited).
        #[arg(long)]
        override_freeze: bool,
        /// Follow the new release until it settles (exit code 0 only if it succeeded).
        #[arg(short, long)]
        watch: bool,
    },
    /// Analysis runs: show, list, follow; try a query.
    #[command(subcommand)]
    Analysis(AnalysisCommand),
    /// Database migrations, Flyway-compatible (flyway_schema_history): info, validate, migrate,
    /// baseline, repair, undo against a database the migrator is configured with.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// Release events from the notifier's log, oldest first; `--follow` keeps following (and
    /// resumes by itself after a disconnect). The last cursor is printed on stderr.
    Events {
        #[command(flatten)]
        filter: FilterArgs,
        /// Start after this cursor (from an earlier run); default: the beginning of the log.
        #[arg(long, conflicts_with = "from_now")]
        since: Option<String>,
        /// Only events from now on.
        #[arg(long)]
        from_now: bool,
        /// Keep following new events.
        #[arg(short, long)]
        follow: bool,
    },
    /// The event types the control plane emits (what `--type` accepts).
    EventTypes,
    /// Webhook subscriptions: create, list, delete, replay, and their deliveries.
    #[command(subcommand)]
    Subscriptions(SubscriptionsCommand),
    /// Acknowledge a release that is failed, aborted, stuck or waiting for approval: its
    /// escalation stops.
    Ack {
        /// Release id.
        id: String,
        /// What is being done.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Releases that need a person, and how far they have been escalated.
    Escalations {
        /// Include acknowledged ones.
        #[arg(long)]
        all: bool,
    },
    /// Store your token for later commands (readable by you only): from HOPNGO_TOKEN,
    /// --token-file, or else stdin. The scheduler checks it first.
    Login,
    /// Remove the stored token.
    Logout,
    /// Who the control plane takes you for: user, groups, and what you may do where.
    Whoami,
    /// Static tokens (for CI bots and the embedded stack).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Freezes: times no new release may start in an environment.
    #[command(subcommand)]
    Freeze(FreezeCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Print a new random token (stdout) and its entry for a tokens file (stderr): the file holds
    /// only the token's SHA-256.
    New {
        /// The user the token proves.
        #[arg(long)]
        user: String,
        /// The user's groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
    },
}

/// Severity for filters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SeverityArg {
    Info,
    Warning,
    Error,
    Critical,
}

/// Which events.
#[derive(clap::Args, Debug)]
struct FilterArgs {
    /// Only these services (repeatable).
    #[arg(long = "service")]
    services: Vec<String>,
    /// Only these environments (repeatable).
    #[arg(long = "env")]
    environments: Vec<String>,
    /// Only these event types (repeatable; full or short names, see `hopctl event-types`).
    #[arg(long = "type")]
    types: Vec<String>,
    /// Only events at least this severe.
    #[arg(long)]
    min_severity: Option<SeverityArg>,
    /// Only events of this release.
    #[arg(long)]
    release: Option<String>,
    /// Only escalation events of these levels (repeatable).
    #[arg(long = "level")]
    levels: Vec<String>,
}

impl FilterArgs {
    fn filter(&self) -> npb::EventFilter {
        npb::EventFilter {
            services: self.services.clone(),
            environments: self.environments.clone(),
            types: self.types.iter().map(|t| full_type(t)).collect(),
            min_severity: match self.min_severity {
                None => 0,
                Some(SeverityArg::Info) => epb::Severity::Info as i32,
                Some(SeverityArg::Warning) => epb::Severity::Warning as i32,
                Some(SeverityArg::Error) => epb::Severity::Error as i32,
                Some(SeverityArg::Critical) => epb::Severity::Critical as i32,
            },
            release_id: self.release.clone().unwrap_or_default(),
            escalation_levels: self.levels.clone(),
        }
    }
}

/// A short event type (`service.deployed`, `hopngo-release.aborted`) as its full CloudEvents type;
/// anything else is sent as given (and the notifier says what it accepts).
fn full_type(t: &str) -> String {
    let mut matches =
        hopngo_proto::event_types::ALL.iter().filter(|full| hopngo_proto::event_types::short_name(full) == t);
    match (matches.next(), matches.next()) {
        (Some(full), None) => full.to_string(),
        _ => t.to_string(),
    }
}

#[derive(Subcommand, Debug)]
enum SubscriptionsCommand {
    /// Register a webhook; the signing secret is shown once.
    Create {
        /// Target URL.
        url: String,
        /// Body format.
        #[arg(long, value_parser = ["cloudevents", "cloudevents-structured", "slack"], default_value = "cloudevents")]
        format: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// Signing secret (`whsec_` + base64, or at least 16 characters); default: generated.
        #[arg(long, env = "HOPNGO_WEBHOOK_SECRET", default_value = "", hide_env_values = true)]
        secret: String,
        /// Deliver events after this cursor first (replay); default: from now.
        #[arg(long)]
        since: Option<String>,
    },
    /// List webhooks.
    List,
    /// Remove a webhook (and its delivery log).
    Delete {
        /// Webhook id.
        id: String,
    },
    /// Deliver a webhook's events again after a cursor (dead letters, once the receiver is fixed).
    Replay {
        /// Webhook id.
        id: String,
        /// Deliver the events after this cursor again.
        #[arg(long)]
        since: String,
    },
    /// Delivery attempts of a webhook, newest first.
    Deliveries {
        /// Webhook id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Token from a previous page (printed on stderr when there are more).
        #[arg(long)]
        page_token: Option<String>,
    },
}

/// The database and its scripts.
#[derive(clap::Args, Debug)]
struct TargetArgs {
    /// Database name, as configured in the migrator (`--target NAME=URL`).
    database: String,
    /// Script location (a directory the migrator can read; repeatable; default: the database's).
    #[arg(long = "location")]
    locations: Vec<String>,
    /// Schema of the history table (default public).
    #[arg(long)]
    schema: Option<String>,
    /// History table (default flyway_schema_history).
    #[arg(long)]
    table: Option<String>,
    /// Value for a `${NAME}` placeholder (`NAME=value`, repeatable).
    #[arg(long = "placeholder", value_parser = key_value)]
    placeholders: Vec<(String, String)>,
    /// States validate does not report (`*:future`, `versioned:missing`, ...; comma-separated;
    /// an empty value reports everything; default: the migrator's).
    #[arg(long, value_delimiter = ',', num_args = 0..)]
    ignore_migration_patterns: Option<Vec<String>>,
}

impl TargetArgs {
    fn target(&self) -> mpb::MigrationTarget {
        mpb::MigrationTarget {
            database: self.database.clone(),
            locations: self.locations.clone(),
            schema: self.schema.clone().unwrap_or_default(),
            table: self.table.clone().unwrap_or_default(),
            placeholders: self.placeholders.clone().into_iter().collect(),
            ignore_migration_patterns: self.ignore_migration_patterns.clone().map(|patterns| mpb::IgnorePatterns {
                patterns: patterns.into_iter().filter(|p| !p.is_empty()).collect(),
            }),
        }
    }
}

#[derive(Subcommand, Debug)]
enum MigrateCommand {
    /// Every migration with its state (applied, pending, failed, ignored, future, ...).
    Info(TargetArgs),
    /// Check the applied migrations against the scripts (exit code 1 when there are problems).
    Validate {
        #[command(flatten)]
        target: TargetArgs,
        /// Report pending migrations too.
        #[arg(long)]
        fail_on_pending: bool,
    },
    /// Apply the pending migrations, then follow the run (exit code 0 only if it succeeds).
    Migrate {
        #[command(flatten)]
        target: TargetArgs,
        /// Stop at this version (`latest`, `current`, `next` or a version).
        #[arg(long = "to")]
        to: Option<String>,
        /// Also apply versions older than the newest applied one.
        #[arg(long)]
        out_of_order: bool,
        /// Idempotency key: repeating the command with it returns the same run.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Mark an existing database as being at a version (default 1).
    Baseline {
        #[command(flatten)]
        target: TargetArgs,
        /// Baseline version.
        #[arg(long)]
        version: Option<String>,
        /// Idempotency key.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Remove failed entries, mark missing migrations deleted, realign checksums.
    Repair {
        #[command(flatten)]
        target: TargetArgs,
        /// Idempotency key.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Undo applied migrations with their U scripts (default: the latest one).
    Undo {
        #[command(flatten)]
        target: TargetArgs,
        /// Undo down to this version.
        #[arg(long = "to", conflicts_with = "all")]
        to: Option<String>,
        /// Undo every applied versioned migration.
        #[arg(long)]
        all: bool,
        /// Idempotency key.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a migration run.
    Get {
        /// Run id.
        id: String,
    },
    /// Follow a migration run until it ends (exit code 0 only if it succeeded).
    Watch {
        /// Run id.
        id: String,
    },
    /// List migration runs, newest first.
    Runs {
        /// Only this database.
        #[arg(long)]
        database: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Token from a previous page (printed on stderr when there are more).
        #[arg(long)]
        page_token: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum AnalysisCommand {
    /// Show an analysis run with its latest measurements.
    Get {
        /// Run id.
        id: String,
    },
    /// List analysis runs, newest first.
    List {
        /// Only runs of this release.
        #[arg(long)]
        release: Option<String>,
        /// Only runs with these labels (`key=value`, repeatable).
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Token from a previous page (printed on stderr when there are more).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Follow a run until it completes (exit code 0 only if it is successful).
    Watch {
        /// Run id.
        id: String,
    },
    /// Take one measurement now, judged by the conditions given (nothing is stored).
    Measure(Box<MeasureArgs>),
}

/// Where the value comes from (exactly one) and how it is judged.
#[derive(clap::Args, Debug)]
#[group(skip)]
#[command(group = clap::ArgGroup::new("provider").required(true).multiple(false))]
struct MeasureArgs {
    /// Prometheus base address; with --query.
    #[arg(long, group = "provider", requires = "query")]
    prometheus: Option<String>,
    /// PromQL.
    #[arg(long)]
    query: Option<String>,
    /// Range query over this long back from now (e.g. 5m); with --step.
    #[arg(long, value_parser = parse_duration)]
    range: Option<std::time::Duration>,
    /// Range query step.
    #[arg(long, value_parser = parse_duration)]
    step: Option<std::time::Duration>,
    /// A Prometheus text endpoint to read directly; with --expression.
    #[arg(long, group = "provider", requires = "expression")]
    scrape: Option<String>,
    /// Scrape expression, e.g. `ratio(rate(x{class="5xx"}), rate(x))`.
    #[arg(long)]
    expression: Option<String>,
    /// Window of the scrape expression's rates.
    #[arg(long, value_parser = parse_duration)]
    window: Option<std::time::Duration>,
    /// A URL answering JSON.
    #[arg(long, group = "provider")]
    web: Option<String>,
    /// Selector of the value in the JSON answer, e.g. `$.data.ok`.
    #[arg(long)]
    json_path: Option<String>,
    /// A command to run (exit code 0 passes); give it after `--`.
    #[arg(long, group = "provider", num_args = 1.., allow_hyphen_values = true)]
    job: Option<Vec<String>>,
    /// Condition over `result` that passes, e.g. `result < 0.01`.
    #[arg(long)]
    success: Option<String>,
    /// Condition over `result` that fails.
    #[arg(long)]
    failure: Option<String>,
    /// Argument for `{{args.NAME}}` (`NAME=value`, repeatable).
    #[arg(long = "arg", value_parser = key_value)]
    args: Vec<(String, String)>,
    /// Provider timeout (e.g. 10s).
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<std::time::Duration>,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not NAME=value"))?;
    Ok((k.to_string(), v.to_string()))
}

fn proto_duration(d: Option<std::time::Duration>) -> Option<prost_types::Duration> {
    d.map(|d| prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 })
}

impl MeasureArgs {
    fn metric(&self) -> anyhow::Result<apb::Metric> {
        use apb::metric::Provider;
        let timeout = proto_duration(self.timeout);
        let provider = if let Some(address) = &self.prometheus {
            Provider::Prometheus(apb::PrometheusProvider {
                address: address.clone(),
                query: self.query.clone().unwrap_or_default(),
                timeout,
                range: proto_duration(self.range),
                step: proto_duration(self.step),
            })
        } else if let Some(url) = &self.scrape {
            Provider::Scrape(apb::ScrapeProvider {
                url: url.clone(),
                expression: self.expression.clone().unwrap_or_default(),
                window: proto_duration(self.window),
                timeout,
            })
        } else if let Some(url) = &self.web {
            Provider::Web(apb::WebProvider {
                url: url.clone(),
                method: String::new(),
                headers: Default::default(),
                body: String::new(),
                json_path: self.json_path.clone().unwrap_or_default(),
                timeout,
            })
        } else {
            Provider::Job(apb::JobProvider {
                command: self.job.clone().unwrap_or_default(),
                timeout,
                env: Default::default(),
            })
        };
        Ok(apb::Metric {
            name: "measure".into(),
            success_condition: self.success.clone().unwrap_or_default(),
            failure_condition: self.failure.clone().unwrap_or_default(),
            provider: Some(provider),
            ..Default::default()
        })
    }
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate and store a delivery config as the new current version.
    Apply {
        /// YAML file (`-` for stdin).
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Show the current (or a given) version.
    Get {
        /// Version (default: current).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Validate a delivery config without storing it; lists every problem.
    Validate {
        /// YAML file (`-` for stdin).
        #[arg(short, long)]
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ReleaseCommand {
    /// Release an artifact of a service to an environment.
    Create {
        /// Service.
        service: String,
        /// Environment.
        #[arg(long = "env")]
        environment: String,
        /// Artifact (image reference or version).
        #[arg(long)]
        artifact: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key: repeating the command with the same key returns the same release.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Release even though the environment is frozen (admins only; --reason required; audited).
        #[arg(long)]
        override_freeze: bool,
        /// Follow the release until it settles.
        #[arg(short, long)]
        watch: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TrainCommand {
    /// Release several services to one environment: each member after the members it depends on
    /// (the config's `dependsOn` and --depends-on), one at a time, each with its own strategy and
    /// analysis. If one does not succeed, the rest do not start and the members already released
    /// go back to their previous versions, newest first.
    Create {
        /// Environment.
        #[arg(long = "env")]
        environment: String,
        /// The members: SERVICE=ARTIFACT, as many as the train has.
        #[arg(required = true, value_name = "SERVICE=ARTIFACT")]
        members: Vec<String>,
        /// SERVICE=OTHER[,OTHER...]: release SERVICE after these other members (besides its
        /// config's `dependsOn`). Repeatable.
        #[arg(long = "depends-on", value_name = "SERVICE=OTHER,...")]
        depends_on: Vec<String>,
        /// Why (recorded on every member).
        #[arg(long, default_value = "")]
        reason: String,
        /// Idempotency key: repeating the command with the same key returns the same train.
        #[arg(long, default_value = "")]
        request_id: String,
        /// Release even though the environment is frozen (admins only; --reason required; audited).
        #[arg(long)]
        override_freeze: bool,
        /// Follow the train until every member (and return) has settled.
        #[arg(short, long)]
        watch: bool,
    },
    /// Show a train with all its members (`--watch` follows it; exit code 0 only if all succeeded).
    Get {
        /// Train (group) id.
        id: String,
        /// Follow the train until every member (and return) has settled.
        #[arg(short, long)]
        watch: bool,
    },
    /// Approve every approval ahead in the train at once (each approval's roles and four-eyes
    /// rule apply to every member).
    Approve {
        /// Train (group) id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Reject the approval the train waits for: the train ends and returns what it released.
    Reject {
        /// Train (group) id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// Abort the member the train is running: the train ends and returns what it released.
    Abort {
        /// Train (group) id.
        id: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// The members of `hopctl train create`: SERVICE=ARTIFACT each, with the --depends-on lists.
fn train_members(members: &[String], depends_on: &[String]) -> anyhow::Result<Vec<pb::TrainMember>> {
    let mut out = Vec::new();
    for m in members {
        let Some((service, artifact)) = m.split_once('=') else {
            anyhow::bail!("{m:?}: a member is SERVICE=ARTIFACT");
        };
        out.push(pb::TrainMember { service: service.into(), artifact: artifact.into(), depends_on: Vec::new() });
    }
    for d in depends_on {
        let Some((service, others)) = d.split_once('=') else {
            anyhow::bail!("--depends-on {d:?}: expected SERVICE=OTHER[,OTHER...]");
        };
        let Some(member) = out.iter_mut().find(|m| m.service == service) else {
            anyhow::bail!("--depends-on {d:?}: {service} is not a member of this train");
        };
        member.depends_on.extend(others.split(',').filter(|o| !o.is_empty()).map(str::to_string));
    }
    Ok(out)
}

#[derive(Subcommand, Debug)]
enum FreezeCommand {
    /// Freeze an environment: no new release starts there until the freeze ends (emergency
    /// rollbacks and releases an admin overrides it for excepted).
    Create {
        /// Environment.
        #[arg(long = "env")]
        environment: String,
        /// How long (`2h`, `3d`), from its start.
        #[arg(long = "for", value_parser = parse_duration, conflicts_with = "until", required_unless_present = "until")]
        duration: Option<std::time::Duration>,
        /// When it ends (RFC 3339: 2026-12-24T18:00:00Z).
        #[arg(long, value_parser = parse_time)]
        until: Option<time::OffsetDateTime>,
        /// When it starts (RFC 3339; default now).
        #[arg(long, value_parser = parse_time)]
        from: Option<time::OffsetDateTime>,
        /// Why (refused releases are told).
        #[arg(long)]
        reason: String,
    },
    /// Freezes in force or coming, and the config's freeze windows open now.
    List {
        /// Only this environment.
        #[arg(long = "env")]
        environment: Option<String>,
        /// Include ended and past freezes.
        #[arg(long)]
        all: bool,
    },
    /// End a freeze now.
    End {
        /// Freeze id.
        id: String,
        /// Why it ends early.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

fn parse_time(text: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2026-12-24T18:00:00Z): {e}"))
}

fn timestamp(t: time::OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PhaseArg {
    Pending,
    Progressing,
    Paused,
    AwaitingApproval,
    Succeeded,
    Aborted,
    Failed,
    Superseded,
}

impl From<PhaseArg> for pb::ReleasePhase {
    fn from(p: PhaseArg) -> Self {
        match p {
            PhaseArg::Pending => pb::ReleasePhase::Pending,
            PhaseArg::Progressing => pb::ReleasePhase::Progressing,
            PhaseArg::Paused => pb::ReleasePhase::Paused,
            PhaseArg::AwaitingApproval => pb::ReleasePhase::AwaitingApproval,
            PhaseArg::Succeeded => pb::ReleasePhase::Succeeded,
            PhaseArg::Aborted => pb::ReleasePhase::Aborted,
            PhaseArg::Failed => pb::ReleasePhase::Failed,
            PhaseArg::Superseded => pb::ReleasePhase::Superseded,
        }
    }
}

fn read_file(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        return Ok(s);
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Exit code for a watched release that did not succeed.
const EXIT_NOT_SUCCEEDED: i32 = 2;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let (service, address, flag) = cli.contacted();
    let address = address.to_string();
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            let message = match unreachable_cause(&err) {
                Some(cause) => format!(
                    "cannot reach the {service} at {address}: {cause}; is it running there? \
                     Give its host:port with {flag}"
                ),
                None => one_line(&err),
            };
            eprintln!("hopctl: {}", term::printable(&message));
            std::process::exit(1);
        }
    }
}

impl Cli {
    /// The service a command talks to first: its name, address and the flag that sets it.
    fn contacted(&self) -> (&'static str, &str, &'static str) {
        match &self.command {
            Command::Analysis(_) => ("analyzer", &self.analyzer, "--analyzer (HOPNGO_ANALYZER)"),
            Command::Migrate(_) => ("migrator", &self.migrator, "--migrator (HOPNGO_MIGRATOR)"),
            Command::Events { .. } | Command::Subscriptions(_) | Command::Ack { .. } | Command::Escalations { .. } => {
                ("notifier", &self.notifier, "--notifier (HOPNGO_NOTIFIER)")
            }
            _ => ("scheduler", &self.server, "--server (HOPNGO_SERVER)"),
        }
    }
}

/// Why no connection could be made, when that is what failed (refused, no such host, timed out),
/// with the underlying cause ("Connection refused (os error 111)").
fn unreachable_cause(err: &anyhow::Error) -> Option<String> {
    let status = err.downcast_ref::<tonic::Status>()?;
    let transport = matches!(status.code(), tonic::Code::Unavailable | tonic::Code::Unknown)
        && ["tcp connect error", "dns error", "transport error", "connection", "timed out"]
            .iter()
            .any(|m| status.message().contains(m));
    if !transport {
        return None;
    }
    let mut causes = vec![status.message().to_string()];
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let text = e.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        source = e.source();
    }
    Some(causes.join(": "))
}

fn one_line(err: &anyhow::Error) -> String {
    if let Some(status) = err.downcast_ref::<tonic::Status>() {
        let code = format!("{:?}", status.code());
        let hint = if status.code() == tonic::Code::Unauthenticated {
            " (give a token: hopctl login, HOPNGO_TOKEN or --token-file)"
        } else {
            ""
        };
        return format!("{code}: {}{hint}", status.message().replace('\n', " "));
    }
    format!("{err:#}").replace('\n', " ")
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let config_dir = cli.config_dir.as_deref();
    let token = match &cli.command {
        // Login takes the token it is given, never the stored one.
        Command::Login => Some(match (&cli.token, &cli.token_file) {
            (Some(token), _) => credentials::parse_token(token, "HOPNGO_TOKEN")?,
            (None, Some(file)) => credentials::read_token_file(file)?,
            (None, None) => credentials::read_token_stdin()?,
        }),
        Command::Logout | Command::Token(_) => None,
        _ => credentials::resolve(cli.token.as_deref(), cli.token_file.as_deref(), config_dir)?,
    };
    let connection =
        Connection { token, ca_files: cli.ca_file.clone(), insecure_skip_verify: cli.insecure_skip_verify };
    let addresses = hopngo_client::Addresses {
        scheduler: &cli.server,
        analyzer: &cli.analyzer,
        migrator: &cli.migrator,
        notifier: &cli.notifier,
    };
    let clients = Clients::connect(&addresses, &connection)?;
    let out = cli.output;
    let Clients { mut releases, mut config, mut identity, mut analyzer, mut migrator, mut notifier } = clients.clone();
    match cli.command {
        Command::Login => {
            let token = connection.token.as_deref().unwrap_or_default();
            let me = identity.who_am_i(ipb::WhoAmIRequest {}).await?.into_inner();
            let path = credentials::store(token, config_dir)?;
            eprintln!("logged in as {} ({}); token stored in {}", me.user, me.issuer, path.display());
        }
        Command::Logout => match credentials::forget(config_dir)? {
            Some(path) => eprintln!("removed {}", path.display()),
            None => eprintln!("no stored token"),
        },
        Command::Whoami => {
            let me = identity.who_am_i(ipb::WhoAmIRequest {}).await?.into_inner();
            render::whoami(out, &WhoAmIView::from(&me))?;
        }
        Command::Freeze(FreezeCommand::Create { environment, duration, until, from, reason }) => {
            let starts = from.unwrap_or_else(time::OffsetDateTime::now_utc);
            let ends = match (until, duration) {
                (Some(until), _) => until,
                (None, Some(d)) => starts + d,
                (None, None) => anyhow::bail!("give --for DURATION or --until TIME"),
            };
            let request = pb::CreateFreezeRequest {
                environment,
                start_time: from.map(timestamp),
                end_time: Some(timestamp(ends)),
                reason,
            };
            let r = releases.create_freeze(request).await?.into_inner();
            let freeze = r.freeze.context("no freeze in the response")?;
            render::freezes(out, &FreezesView { freezes: vec![FreezeView::from(&freeze)], windows: Vec::new() })?;
        }
        Command::Freeze(FreezeCommand::List { environment, all }) => {
            let request = pb::ListFreezesRequest { environment: environment.unwrap_or_default(), include_ended: all };
            let r = releases.list_freezes(request).await?.into_inner();
            render::freezes(out, &FreezesView::from(&r))?;
        }
        Command::Freeze(FreezeCommand::End { id, reason }) => {
            let r = releases.end_freeze(pb::EndFreezeRequest { id, reason }).await?.into_inner();
            let freeze = r.freeze.context("no freeze in the response")?;
            render::freezes(out, &FreezesView { freezes: vec![FreezeView::from(&freeze)], windows: Vec::new() })?;
        }
        Command::Token(TokenCommand::New { user, groups }) => {
            if !hopngo_kit::identity::valid_user(&user) {
                anyhow::bail!("--user {user:?} is not a user name (1-256 of A-Z a-z 0-9 - _ . @ : +)");
            }
            if let Some(bad) = groups.iter().find(|g| !hopngo_kit::identity::valid_group(g)) {
                anyhow::bail!("--groups: {bad:?} is not a group name");
            }
            let token = credentials::new_token()?;
            let groups = groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ");
            eprintln!("  - {{sha256: {}, user: {user:?}, groups: [{groups}]}}", hopngo_kit::auth::token_hash(&token));
            outln!("{token}");
        }
        Command::Config(ConfigCommand::Apply { file }) => {
            let yaml = read_file(&file)?;
            let r = config.apply_config(cpb::ApplyConfigRequest { yaml }).await?.into_inner();
            let summary = ConfigSummaryView::from(r.summary.as_ref());
            render::applied(out, r.version, r.changed, &summary)?;
        }
        Command::Config(ConfigCommand::Get { version }) => {
            let r = config.get_config(cpb::GetConfigRequest { version: version.unwrap_or(0) }).await?.into_inner();
            render::config(out, &ConfigView::from(&r))?;
        }
        Command::Config(ConfigCommand::Validate { file }) => {
            let yaml = read_file(&file)?;
            let r = config.validate_config(cpb::ValidateConfigRequest { yaml }).await?.into_inner();
            render::validation(out, &r)?;
            if !r.valid {
                return Ok(1);
            }
        }
        Command::Release(ReleaseCommand::Create {
            service,
            environment,
            artifact,
            reason,
            request_id,
            override_freeze,
            watch,
        }) => {
            let request =
                pb::CreateReleaseRequest { service, environment, artifact, request_id, reason, override_freeze };
            let r =
                releases.create_release(request).await?.into_inner().release.context("no release in the response")?;
            if watch {
                return watch_release(&mut releases, &r.id, out).await;
            }
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Get { id, watch } => {
            if watch {
                return watch_release(&mut releases, &id, out).await;
            }
            let r =
                releases.get_release(pb::GetReleaseRequest { id }).await?.into_inner().release.context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::List { service, environment, phase, limit, page_token } => {
            let r = releases
                .list_releases(pb::ListReleasesRequest {
                    service: service.unwrap_or_default(),
                    environment: environment.unwrap_or_default(),
                    phases: phase.into_iter().map(|p| pb::ReleasePhase::from(p) as i32).collect(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let views: Vec<ReleaseView> = r.releases.iter().map(ReleaseView::from).collect();
            render::releases(out, &views)?;
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        Command::Promote { id, full, reason } => {
            let r = releases
                .promote_release(pb::PromoteReleaseRequest { id, full, reason })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Abort { id, reason } => {
            let r = releases
                .abort_release(pb::AbortReleaseRequest { id, reason })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Retry { id, reason } => {
            let r = releases
                .retry_release(pb::RetryReleaseRequest { id, reason })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Undo { service, environment, to_revision, reason } => {
            let r = releases
                .undo_release(pb::UndoReleaseRequest {
                    service,
                    environment,
                    to_revision: to_revision.unwrap_or(0),
                    reason,
                })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Approve { id, reason } => {
            let r = releases
                .approve_release(pb::ApproveReleaseRequest { id, reason })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Reject { id, reason } => {
            let r = releases
                .reject_release(pb::RejectReleaseRequest { id, reason })
                .await?
                .into_inner()
                .release
                .context("no release")?;
            render::release(out, &ReleaseView::from(&r))?;
        }
        Command::Render { service, environment, artifact, weight } => {
            let request = pb::RenderReleaseRequest { service, environment, artifact, weight };
            let r = releases.render_release(request).await?.into_inner();
            // The rendering is YAML already; JSON wraps it for scripts.
            match out {
                Output::Json => println!("{}", serde_json::json!({ "yaml": r.yaml })),
                Output::Table | Output::Yaml => print!("{}", r.yaml),
            }
        }
        Command::History { service, environment } => {
            let r = releases.list_revisions(pb::ListRevisionsRequest { service, environment }).await?.into_inner();
            let views: Vec<RevisionView> = r.revisions.iter().map(RevisionView::from).collect();
            render::revisions(out, &views)?;
        }
        Command::Audit { release, service, environment, actor, action, refused, allowed, since, limit, page_token } => {
            let outcome = match (refused, allowed) {
                (true, _) => pb::AuditOutcome::Refused,
                (_, true) => pb::AuditOutcome::Allowed,
                _ => pb::AuditOutcome::Unspecified,
            };
            let start_time = since.map(|ago| {
                let at = std::time::SystemTime::now() - ago;
                prost_types::Timestamp::from(at)
            });
            let r = releases
                .list_audit_entries(pb::ListAuditEntriesRequest {
                    release_id: release.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    environment: environment.unwrap_or_default(),
                    actor: actor.unwrap_or_default(),
                    action: action.unwrap_or_default(),
                    outcome: outcome as i32,
                    start_time,
                    end_time: None,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let views: Vec<AuditEntryView> = r.entries.iter().map(AuditEntryView::from).collect();
            render::audit(out, &views)?;
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        Command::RollbackEnv { environment, services, emergency, reason, watch } => {
            let r = releases
                .rollback_environment(pb::RollbackEnvironmentRequest { environment, services, reason, emergency })
                .await?
                .into_inner()
                .group
                .context("no group")?;
            if watch {
                return watch_group(&mut releases, &r.id, out).await;
            }
            render::group(out, &GroupView::from(&r))?;
        }
        Command::Train(TrainCommand::Create {
            environment,
            members,
            depends_on,
            reason,
            request_id,
            override_freeze,
            watch,
        }) => {
            let members = train_members(&members, &depends_on)?;
            let request = pb::CreateTrainRequest { environment, members, reason, request_id, override_freeze };
            let g = releases.create_train(request).await?.into_inner().group.context("no train")?;
            if watch {
                return watch_group(&mut releases, &g.id, out).await;
            }
            render::group(out, &GroupView::from(&g))?;
        }
        Command::Train(TrainCommand::Approve { id, reason }) => {
            let request = pb::ApproveReleaseGroupRequest { id, reason };
            let g = releases.approve_release_group(request).await?.into_inner().group.context("no train")?;
            render::group(out, &GroupView::from(&g))?;
        }
        Command::Train(TrainCommand::Reject { id, reason }) => {
            let request = pb::RejectReleaseGroupRequest { id, reason };
            let g = releases.reject_release_group(request).await?.into_inner().group.context("no train")?;
            render::group(out, &GroupView::from(&g))?;
        }
        Command::Train(TrainCommand::Abort { id, reason }) => {
            let request = pb::AbortReleaseGroupRequest { id, reason };
            let g = releases.abort_release_group(request).await?.into_inner().group.context("no train")?;
            render::group(out, &GroupView::from(&g))?;
        }
        Command::Group { id, watch } | Command::Train(TrainCommand::Get { id, watch }) => {
            if watch {
                return watch_group(&mut releases, &id, out).await;
            }
            let r = releases
                .get_release_group(pb::GetReleaseGroupRequest { id })
                .await?
                .into_inner()
                .group
                .context("no group")?;
            render::group(out, &GroupView::from(&r))?;
        }
        Command::Timeline { id } => {
            let story = clients.release_story(&id).await?;
            render::timeline(out, &TimelineView::new(&story.release, &story.events, &story.runs))?;
        }
        Command::PromoteEnv { service, from, to, artifact, reason, request_id, override_freeze, watch } => {
            let r = releases
                .promote_environment(pb::PromoteEnvironmentRequest {
                    service,
                    from_environment: from.unwrap_or_default(),
                    to_environment: to,
                    artifact: artifact.unwrap_or_default(),
                    request_id,
                    reason,
                    override_freeze,
                })
                .await?
                .into_inner();
            let release = r.release.context("no release in the response")?;
            if let Some(source) = &r.source {
                eprintln!(
                    "promoting {} {} from {} (revision {}, release {}, verified: {})",
                    source.service,
                    source.artifact,
                    source.environment,
                    source.revision,
                    source.id,
                    if source.verification.as_ref().is_some_and(|v| v.verified) { "yes" } else { "not required" }
                );
            }
            if watch {
                return watch_release(&mut releases, &release.id, out).await;
            }
            render::release(out, &ReleaseView::from(&release))?;
        }
        Command::Analysis(AnalysisCommand::Get { id }) => {
            let r = analyzer
                .get_analysis_run(apb::GetAnalysisRunRequest { id })
                .await?
                .into_inner()
                .run
                .context("no run")?;
            render::analysis_run(out, &AnalysisRunView::from(&r))?;
        }
        Command::Analysis(AnalysisCommand::List { release, mut labels, limit, page_token }) => {
            if let Some(release) = release {
                labels.push(("release".into(), release));
            }
            let r = analyzer
                .list_analysis_runs(apb::ListAnalysisRunsRequest {
                    labels: labels.into_iter().collect(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let views: Vec<AnalysisRunView> = r.runs.iter().map(AnalysisRunView::from).collect();
            render::analysis_runs(out, &views)?;
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        Command::Analysis(AnalysisCommand::Watch { id }) => {
            let mut stream = analyzer.watch_analysis_run(apb::WatchAnalysisRunRequest { id }).await?.into_inner();
            let live = std::io::stderr().is_terminal();
            let mut last = None;
            let mut last_line = String::new();
            while let Some(item) = stream.next().await {
                let view = AnalysisRunView::from(&item?.run.context("no run in the stream")?);
                if live {
                    term::screen(&render::analysis_run_text(&view));
                } else {
                    let line = render::analysis_progress_line(&view);
                    if line != last_line {
                        term::progress(&line);
                        last_line = line;
                    }
                }
                last = Some(view);
            }
            let view = last.context("the stream ended without a run")?;
            if !view.completed() {
                anyhow::bail!("the watch ended before the run completed (server shutting down?)");
            }
            if live {
                term::clear_screen();
            }
            render::analysis_run(out, &view)?;
            return Ok(if view.phase == "SUCCESSFUL" { 0 } else { EXIT_NOT_SUCCEEDED });
        }
        Command::Analysis(AnalysisCommand::Measure(m)) => {
            let metric = m.metric()?;
            let r = analyzer
                .measure(apb::MeasureRequest { metric: Some(metric), args: m.args.into_iter().collect() })
                .await?
                .into_inner()
                .measurement
                .context("no measurement")?;
            let view = MeasurementView::from(&r);
            render::measurement(out, &view)?;
            return Ok(if view.phase == "SUCCESSFUL" { 0 } else { EXIT_NOT_SUCCEEDED });
        }
        Command::Migrate(command) => return migrate(&mut migrator, command, out).await,
        Command::Events { filter, since, from_now, follow } => {
            let start = match (since, from_now) {
                (Some(c), _) => npb::subscribe_request::Start::AfterCursor(c),
                (None, true) => npb::subscribe_request::Start::FromNow(true),
                (None, false) => npb::subscribe_request::Start::FromBeginning(true),
            };
            return events(&mut notifier, filter.filter(), start, follow, out).await;
        }
        Command::EventTypes => render::event_types(out, hopngo_proto::event_types::ALL)?,
        Command::Subscriptions(SubscriptionsCommand::Create { url, format, filter, secret, since }) => {
            let w = notifier
                .create_webhook(npb::CreateWebhookRequest {
                    url,
                    format,
                    filter: Some(filter.filter()),
                    secret,
                    start_after_cursor: since.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .webhook
                .context("no webhook in the response")?;
            render::webhook(out, &WebhookView::from(&w))?;
        }
        Command::Subscriptions(SubscriptionsCommand::List) => {
            let r = notifier.list_webhooks(npb::ListWebhooksRequest {}).await?.into_inner();
            render::webhooks(out, &r.webhooks.iter().map(WebhookView::from).collect::<Vec<_>>())?;
        }
        Command::Subscriptions(SubscriptionsCommand::Delete { id }) => {
            notifier.delete_webhook(npb::DeleteWebhookRequest { id: id.clone() }).await?;
            eprintln!("webhook {id} deleted");
        }
        Command::Subscriptions(SubscriptionsCommand::Replay { id, since }) => {
            let w = notifier
                .replay_webhook(npb::ReplayWebhookRequest { id, after_cursor: since })
                .await?
                .into_inner()
                .webhook
                .context("no webhook in the response")?;
            render::webhooks(out, &[WebhookView::from(&w)])?;
        }
        Command::Subscriptions(SubscriptionsCommand::Deliveries { id, limit, page_token }) => {
            let r = notifier
                .list_deliveries(npb::ListDeliveriesRequest {
                    webhook_id: id,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            render::deliveries(out, &r.deliveries.iter().map(DeliveryView::from).collect::<Vec<_>>())?;
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
        }
        Command::Ack { id, comment } => {
            let r = notifier.acknowledge(npb::AcknowledgeRequest { release_id: id, comment }).await?.into_inner();
            render::escalations(out, &[EscalationView::from(&r.escalation.context("no escalation")?)])?;
        }
        Command::Escalations { all } => {
            let r = notifier
                .list_escalations(npb::ListEscalationsRequest { include_acknowledged: all })
                .await?
                .into_inner();
            render::escalations(out, &r.escalations.iter().map(EscalationView::from).collect::<Vec<_>>())?;
        }
    }
    Ok(0)
}

type Notifier = hopngo_proto::notifier::notifier_service_client::NotifierServiceClient<hopngo_client::Authed>;

/// How often `events --follow` tries again after losing the notifier.
const RECONNECT: std::time::Duration = std::time::Duration::from_secs(1);

/// Prints events as they come; with `follow`, resumes from the last cursor after a disconnect
/// (a restart of the notifier, or being cut off as too slow).
async fn events(
    notifier: &mut Notifier,
    filter: npb::EventFilter,
    mut start: npb::subscribe_request::Start,
    follow: bool,
    out: Output,
) -> anyhow::Result<i32> {
    let mut printer = render::EventPrinter::new(out);
    let mut cursor: Option<String> = None;
    let ended = loop {
        let request = npb::SubscribeRequest {
            filter: Some(filter.clone()),
            start: Some(start.clone()),
            subscriber: "hopctl".into(),
            stop_at_head: !follow,
        };
        let result: anyhow::Result<()> = async {
            let mut stream = notifier.subscribe(request).await?.into_inner();
            while let Some(item) = stream.next().await {
                let item = item?;
                if let Some(npb::subscribe_response::Item::Event(e)) = &item.item {
                    printer.print(&EventView::new(&item.cursor, e))?;
                }
                cursor = Some(item.cursor);
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) if !follow => break Ok(()),
            Ok(()) => eprintln!("hopctl: the notifier ended the stream; resuming"),
            Err(err) => match err.downcast_ref::<tonic::Status>() {
                Some(status) if follow && status.code() != tonic::Code::InvalidArgument => {
                    eprintln!("hopctl: {:?}: {}; resuming", status.code(), term::printable(status.message()))
                }
                _ => break Err(err),
            },
        }
        if let Some(c) = &cursor {
            start = npb::subscribe_request::Start::AfterCursor(c.clone());
        }
        tokio::time::sleep(RECONNECT).await;
    };
    if let Some(c) = &cursor {
        eprintln!("cursor: {c} (continue with --since {c})");
    }
    ended?;
    Ok(0)
}

type Migrator = hopngo_proto::migrator::migrator_service_client::MigratorServiceClient<hopngo_client::Authed>;

async fn migrate(migrator: &mut Migrator, command: MigrateCommand, out: Output) -> anyhow::Result<i32> {
    let start = |target: &TargetArgs, command: mpb::MigrationCommand, version: Option<String>, key: String| {
        mpb::StartMigrationRequest {
            target: Some(target.target()),
            command: command as i32,
            target_version: version.unwrap_or_default(),
            idempotency_key: key,
            ..Default::default()
        }
    };
    let request = match command {
        MigrateCommand::Info(target) => {
            let r = migrator.info(mpb::InfoRequest { target: Some(target.target()) }).await?.into_inner();
            render::migration_info(out, &MigrationInfoView::from(&r))?;
            return Ok(0);
        }
        MigrateCommand::Validate { target, fail_on_pending } => {
            let r = migrator
                .validate(mpb::ValidateRequest { target: Some(target.target()), fail_on_pending })
                .await?
                .into_inner();
            render::migration_validation(out, &r)?;
            return Ok(if r.valid { 0 } else { 1 });
        }
        MigrateCommand::Get { id } => {
            let r = migrator.get_migration_run(mpb::GetMigrationRunRequest { id }).await?.into_inner();
            render::migration_run(out, &MigrationRunView::from(&r.run.context("no run")?))?;
            return Ok(0);
        }
        MigrateCommand::Watch { id } => return watch_migration(migrator, &id, out).await,
        MigrateCommand::Runs { database, limit, page_token } => {
            let r = migrator
                .list_migration_runs(mpb::ListMigrationRunsRequest {
                    database: database.unwrap_or_default(),
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                })
                .await?
                .into_inner();
            let views: Vec<MigrationRunView> = r.runs.iter().map(MigrationRunView::from).collect();
            render::migration_runs(out, &views)?;
            if !r.next_page_token.is_empty() {
                eprintln!("more: --page-token {}", r.next_page_token);
            }
            return Ok(0);
        }
        MigrateCommand::Migrate { target, to, out_of_order, request_id } => mpb::StartMigrationRequest {
            out_of_order,
            ..start(&target, mpb::MigrationCommand::Migrate, to, request_id)
        },
        MigrateCommand::Baseline { target, version, request_id } => {
            start(&target, mpb::MigrationCommand::Baseline, version, request_id)
        }
        MigrateCommand::Repair { target, request_id } => {
            start(&target, mpb::MigrationCommand::Repair, None, request_id)
        }
        MigrateCommand::Undo { target, to, all, request_id } => {
            mpb::StartMigrationRequest { undo_all: all, ..start(&target, mpb::MigrationCommand::Undo, to, request_id) }
        }
    };
    let run = migrator.start_migration(request).await?.into_inner().run.context("no run in the response")?;
    watch_migration(migrator, &run.id, out).await
}

/// Follows a migration run: one line per change on stderr, the final run on stdout.
async fn watch_migration(migrator: &mut Migrator, id: &str, out: Output) -> anyhow::Result<i32> {
    let mut stream =
        migrator.watch_migration_run(mpb::WatchMigrationRunRequest { id: id.to_string() }).await?.into_inner();
    let mut last = None;
    let mut last_line = String::new();
    while let Some(item) = stream.next().await {
        let view = MigrationRunView::from(&item?.run.context("no run in the stream")?);
        let line = render::migration_progress_line(&view);
        if line != last_line {
            term::progress(&line);
            last_line = line;
        }
        last = Some(view);
    }
    let view = last.context("the stream ended without a run")?;
    if !view.finished() {
        anyhow::bail!(
            "the watch ended before the run finished (migrator shutting down?); follow it with: hopctl migrate watch {}",
            view.id
        );
    }
    render::migration_run(out, &view)?;
    Ok(if view.phase == "SUCCEEDED" { 0 } else { EXIT_NOT_SUCCEEDED })
}

/// Follows a release: a live view on stderr when it is a terminal, one line per change
/// otherwise; the final state goes to stdout in the chosen format.
/// Follows a release group by reading it every second (members change one after another, and
/// each has its own watch stream) until every release of it has settled (a train's returns too).
async fn watch_group(
    releases: &mut hopngo_proto::release::release_service_client::ReleaseServiceClient<hopngo_client::Authed>,
    id: &str,
    out: Output,
) -> anyhow::Result<i32> {
    let live = std::io::stderr().is_terminal();
    let mut last_states: Vec<String> = Vec::new();
    loop {
        let g = releases
            .get_release_group(pb::GetReleaseGroupRequest { id: id.to_string() })
            .await?
            .into_inner()
            .group
            .context("no group")?;
        let view = GroupView::from(&g);
        let lines: Vec<String> = view.releases.iter().map(render::group_line).collect();
        let states: Vec<String> = view.releases.iter().map(render::progress_state).collect();
        if live {
            term::screen(&format!("{}\n{}\n", render::group_header(&view), lines.join("\n")));
        } else {
            for (i, line) in lines.iter().enumerate() {
                if last_states.get(i) != Some(&states[i]) {
                    term::progress(line);
                }
            }
        }
        last_states = states;
        if view.settled {
            if live {
                term::clear_screen();
            }
            render::group(out, &view)?;
            return Ok(if view.phase == "SUCCEEDED" { 0 } else { EXIT_NOT_SUCCEEDED });
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn watch_release(
    releases: &mut hopngo_proto::release::release_service_client::ReleaseServiceClient<hopngo_client::Authed>,
    id: &str,
    out: Output,
) -> anyhow::Result<i32> {
    let mut stream = releases.watch_release(pb::WatchReleaseRequest { id: id.to_string() }).await?.into_inner();
    let live = std::io::stderr().is_terminal();
    let mut last = None;
    let mut last_state = String::new();
    while let Some(item) = stream.next().await {
        let r = item?.release.context("no release in the stream")?;
        let view = ReleaseView::from(&r);
        if live {
            term::screen(&render::release_text(&view));
        } else {
            // One line per visible change (analysis polls change the release but not the line,
            // nor does the countdown of a timed pause).
            let state = render::progress_state(&view);
            if state != last_state {
                term::progress(&render::progress_line(&view));
                last_state = state;
            }
        }
        last = Some(view);
    }
    let view = last.context("the stream ended without a release")?;
    if !view.settled {
        anyhow::bail!("the watch ended before the release settled (server shutting down?)");
    }
    if live {
        term::clear_screen();
    }
    render::release(out, &view)?;
    Ok(if view.phase == "SUCCEEDED" { 0 } else { EXIT_NOT_SUCCEEDED })
}
