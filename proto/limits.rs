//! Per-field limits of the edge checks (see `src/check.rs`). A string field not named here is
//! one line of at most `DEFAULT_TEXT` bytes; a repeated field or map holds at most
//! `DEFAULT_ITEMS` entries. Full names are `package.Message.field`; the build fails when an entry
//! names a field no request contains, so this table cannot drift from the protos.

/// (bytes, multi-line) of a string field not listed in [`TEXT`]: names, ids, keys, cursors.
pub const DEFAULT_TEXT: (usize, bool) = (256, false);
/// (bytes, multi-line) of every map key.
pub const DEFAULT_KEY: (usize, bool) = (128, false);
/// Entries of a repeated field or map not listed in [`ITEMS`].
pub const DEFAULT_ITEMS: usize = 1000;

const REASON: usize = 1024;
const URL: usize = 2048;
/// An image reference with a registry, a path, a tag and a digest fits.
pub const ARTIFACT: usize = 512;
const EXPRESSION: usize = 8192;
const ARGUMENT: usize = 4096;
/// An event's message: it quotes what failed (a database's error, a job's output).
pub const EVENT_MESSAGE: usize = 64 << 10;

/// String fields (and the values of string maps) with their own bound.
pub const TEXT: &[(&str, usize, bool)] = &[
    // People's words: one line each, as audit rows and tables show them.
    ("hopngo.release.v1.CreateReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.PromoteReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.AbortReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.RetryReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.UndoReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.ApproveReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.RejectReleaseRequest.reason", REASON, false),
    ("hopngo.release.v1.RollbackEnvironmentRequest.reason", REASON, false),
    ("hopngo.release.v1.CreateTrainRequest.reason", REASON, false),
    ("hopngo.release.v1.ApproveReleaseGroupRequest.reason", REASON, false),
    ("hopngo.release.v1.RejectReleaseGroupRequest.reason", REASON, false),
    ("hopngo.release.v1.AbortReleaseGroupRequest.reason", REASON, false),
    ("hopngo.release.v1.CreateFreezeRequest.reason", REASON, false),
    ("hopngo.release.v1.EndFreezeRequest.reason", REASON, false),
    ("hopngo.release.v1.PromoteEnvironmentRequest.reason", REASON, false),
    ("hopngo.analyzer.v1.TerminateAnalysisRunRequest.reason", REASON, false),
    ("hopngo.notifier.v1.AcknowledgeRequest.comment", REASON, false),
    // Release request ids (stored in a unique index).
    ("hopngo.release.v1.CreateReleaseRequest.request_id", 128, false),
    ("hopngo.release.v1.PromoteEnvironmentRequest.request_id", 128, false),
    ("hopngo.release.v1.CreateTrainRequest.request_id", 128, false),
    // Artifacts.
    ("hopngo.release.v1.PromoteEnvironmentRequest.artifact", ARTIFACT, false),
    ("hopngo.release.v1.CreateReleaseRequest.artifact", ARTIFACT, false),
    ("hopngo.release.v1.TrainMember.artifact", ARTIFACT, false),
    ("hopngo.deployer.v1.TrackSpec.artifact", ARTIFACT, false),
    // Route matches (the deployer checks them further: regex size, header name syntax).
    ("hopngo.deployer.v1.StringMatch.exact", 4096, false),
    ("hopngo.deployer.v1.StringMatch.prefix", 4096, false),
    ("hopngo.deployer.v1.StringMatch.regex", 1024, false),
    ("hopngo.events.v1.ReleaseEventData.artifact", ARTIFACT, false),
    ("hopngo.events.v1.ReleaseEventData.stable_artifact", ARTIFACT, false),
    // Documents.
    ("hopngo.config.v1.ApplyConfigRequest.yaml", 1 << 20, true),
    ("hopngo.config.v1.ValidateConfigRequest.yaml", 1 << 20, true),
    // Metric definitions (resolved from the delivery config's templates).
    ("hopngo.analyzer.v1.PrometheusProvider.address", URL, false),
    ("hopngo.analyzer.v1.PrometheusProvider.query", EXPRESSION, true),
    ("hopngo.analyzer.v1.ScrapeProvider.url", URL, false),
    ("hopngo.analyzer.v1.ScrapeProvider.expression", EXPRESSION, true),
    ("hopngo.analyzer.v1.WebProvider.url", URL, false),
    ("hopngo.analyzer.v1.WebProvider.headers", ARGUMENT, false),
    ("hopngo.analyzer.v1.WebProvider.body", 64 << 10, true),
    ("hopngo.analyzer.v1.WebProvider.json_path", 1024, false),
    ("hopngo.analyzer.v1.JobProvider.command", ARGUMENT, false),
    ("hopngo.analyzer.v1.JobProvider.env", ARGUMENT, false),
    ("hopngo.analyzer.v1.Metric.success_condition", EXPRESSION, true),
    ("hopngo.analyzer.v1.Metric.failure_condition", EXPRESSION, true),
    ("hopngo.analyzer.v1.StartAnalysisRunRequest.args", ARGUMENT, false),
    ("hopngo.analyzer.v1.MeasureRequest.args", ARGUMENT, false),
    ("hopngo.analyzer.v1.CheckProvidersRequest.args", ARGUMENT, false),
    // Migrations.
    ("hopngo.migrator.v1.MigrationTarget.locations", 1024, false),
    ("hopngo.migrator.v1.MigrationTarget.placeholders", ARGUMENT, true),
    // Webhooks.
    ("hopngo.notifier.v1.CreateWebhookRequest.url", URL, false),
    ("hopngo.events.v1.ReleaseEventData.message", EVENT_MESSAGE, true),
];

/// Repeated fields and maps with their own bound.
pub const ITEMS: &[(&str, usize)] = &[
    ("hopngo.release.v1.CreateTrainRequest.members", 50),
    ("hopngo.release.v1.TrainMember.depends_on", 50),
    ("hopngo.analyzer.v1.StartAnalysisRunRequest.metrics", 100),
    ("hopngo.analyzer.v1.JobProvider.command", 256),
    ("hopngo.analyzer.v1.JobProvider.env", 100),
    ("hopngo.analyzer.v1.WebProvider.headers", 100),
    ("hopngo.analyzer.v1.StartAnalysisRunRequest.labels", 50),
    ("hopngo.migrator.v1.MigrationTarget.locations", 100),
    ("hopngo.deployer.v1.TargetSpec.header_routes", 8),
    ("hopngo.deployer.v1.TargetSpec.mirror_routes", 8),
    ("hopngo.deployer.v1.HeaderRoute.matches", 16),
    ("hopngo.deployer.v1.RequestMatch.headers", 16),
    ("hopngo.deployer.v1.MirrorRoute.matches", 8),
];
