//! Rendering: tables in the style of kubectl (no borders, upper-case headers), JSON and YAML.

use comfy_table::{Table, presets::NOTHING};
use hopngo_client::views::{
    AnalysisRunView, AuditEntryView, ConfigSummaryView, ConfigView, DeliveryView, EscalationView, EventView,
    ExperimentView, FreezesView, GroupView, MeasurementView, MigrationInfoView, MigrationRunView, ReleaseView,
    RevisionView, TimelineView, WebhookView, WhoAmIView,
};
use hopngo_proto::{config as cpb, event_types::short_name};
use serde::Serialize;

use crate::Output;

fn structured<T: Serialize>(out: Output, value: &T) -> anyhow::Result<bool> {
    match out {
        Output::Table => Ok(false),
        Output::Json => {
            outln!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Output::Yaml => {
            out!("{}", serde_saphyr::to_string(value)?);
            Ok(true)
        }
    }
}

fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(NOTHING);
    t.set_header(headers.iter().map(|h| h.to_uppercase()).collect::<Vec<_>>());
    t
}

/// One release in detail.
pub fn release(out: Output, r: &ReleaseView) -> anyhow::Result<()> {
    if !structured(out, r)? {
        out!("{}", release_text(r));
    }
    Ok(())
}

fn weight_bar(weight: u32) -> String {
    let filled = (weight as usize).div_ceil(5);
    format!("[{}{}] {weight}%", "#".repeat(filled), ".".repeat(20 - filled.min(20)))
}

/// An experiment: a line per judged interval, and the statistics of the latest judgement.
fn experiment_text(e: &ExperimentView) -> String {
    let verdict = if e.verdict.is_empty() { "running".to_string() } else { e.verdict.clone() };
    let mut s = format!(
        "Experiment (step {}): canary {} against baseline {} at {}% each: {verdict} (pass ≥ {}, marginal ≥ {})\n",
        e.step_index, e.canary_artifact, e.baseline_artifact, e.weight, e.pass_threshold, e.marginal_threshold
    );
    for j in &e.judged {
        s.push_str(&format!(
            "  interval {}/{}: score {:.0} ({}) {}\n",
            j.index, e.intervals, j.score, j.verdict, j.reason
        ));
    }
    let Some(last) = e.judged.last() else { return s };
    let number = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    let mut t = table(&["metric", "group", "class", "baseline mean (n)", "canary mean (n)", "ratio", "p-value"]);
    for m in &last.metrics {
        t.add_row(vec![
            if m.critical { format!("{} (fails all)", m.name) } else { m.name.clone() },
            m.group.clone(),
            m.classification.clone(),
            format!("{} ({})", number(m.baseline_mean), m.baseline_count),
            format!("{} ({})", number(m.canary_mean), m.canary_count),
            number(m.mean_ratio),
            number(m.p_value),
        ]);
    }
    s.push_str(&t.to_string());
    s.push('\n');
    s
}

/// The detailed text view (also the live `--watch` view).
pub fn release_text(r: &ReleaseView) -> String {
    let mut s = String::new();
    let phase = match (&r.completion, r.pause_text(time::OffsetDateTime::now_utc())) {
        (Some(c), _) => format!("{} ({c})", r.phase),
        (None, Some(waiting)) => format!("{}: {waiting}", r.phase),
        (None, None) => r.phase.clone(),
    };
    s.push_str(&format!("Release:     {}\n", r.id));
    s.push_str(&format!("Service:     {} in {}\n", r.service, r.environment));
    s.push_str(&format!("Revision:    {} ({})\n", r.revision, r.strategy.to_lowercase()));
    let stable = if r.stable_artifact.is_empty() { "(none)" } else { &r.stable_artifact };
    s.push_str(&format!("Artifact:    {}  (stable: {stable})\n", r.artifact));
    s.push_str(&format!("Phase:       {phase}\n"));
    s.push_str(&format!("Traffic:     {}\n", weight_bar(r.canary_weight)));
    for route in &r.traffic_routes {
        s.push_str(&format!("Route:       {route}\n"));
    }
    s.push_str(&format!("Step:        {}\n", step_position(r)));
    s.push_str(&format!("Message:     {}\n", r.message));
    if r.phase == "SUCCEEDED" {
        let verified = if r.verified { "yes".to_string() } else { format!("no: {}", r.not_verified_because) };
        s.push_str(&format!("Verified:    {verified}\n"));
    }
    if let Some(p) = &r.pending_approval {
        let roles = if p.roles.is_empty() { "anyone".to_string() } else { p.roles.join(" or ") };
        s.push_str(&format!(
            "Approval:    {}/{} by {roles}{}\n",
            p.approvals,
            p.min_approvals,
            if p.allow_self_approval { "" } else { " (not the creator)" }
        ));
    }
    s.push_str(&format!(
        "Created:     {} by {}{}\n",
        r.created_at.as_deref().unwrap_or(""),
        r.created_by,
        if r.attempt > 1 { format!(", attempt {}", r.attempt) } else { String::new() }
    ));
    s.push('\n');
    let mut t = table(&["", "#", "step", "status", "detail", "message"]);
    for step in &r.steps {
        let marker = if step.index == r.current_step_index && !r.settled { "▶" } else { "" };
        t.add_row(vec![
            marker.to_string(),
            step.index.to_string(),
            step.name.clone(),
            step.status.clone(),
            step.summary.clone(),
            step.message.clone(),
        ]);
    }
    s.push_str(&t.to_string());
    s.push('\n');
    if !r.preflight_checks.is_empty() {
        s.push('\n');
        let mut t = table(&["preflight", "ok", "detail"]);
        for c in &r.preflight_checks {
            t.add_row(vec![c.name.clone(), if c.ok { "✓" } else { "✗" }.to_string(), c.message.clone()]);
        }
        s.push_str(&t.to_string());
        s.push('\n');
    }
    if !r.analysis_runs.is_empty() {
        s.push('\n');
        let mut t = table(&["analysis run", "kind", "step", "phase", "message"]);
        for a in &r.analysis_runs {
            t.add_row(vec![
                a.run_id.clone(),
                a.kind.clone(),
                a.step_index.to_string(),
                a.phase.clone(),
                a.message.clone(),
            ]);
        }
        s.push_str(&t.to_string());
        s.push('\n');
    }
    for e in &r.experiments {
        s.push('\n');
        s.push_str(&experiment_text(e));
    }
    if !r.approvals.is_empty() {
        s.push('\n');
        let mut t = table(&["decided by", "decision", "step", "at", "reason"]);
        for a in &r.approvals {
            let decision = if a.approved { "approved" } else { "rejected" };
            t.add_row(vec![
                a.user.clone(),
                decision.into(),
                a.step_index.to_string(),
                a.decided_at.clone().unwrap_or_default(),
                a.reason.clone(),
            ]);
        }
        s.push_str(&t.to_string());
        s.push('\n');
    }
    s
}

/// One line per change, for `--watch` without a terminal.
pub fn progress_line(r: &ReleaseView) -> String {
    // A timed pause says how long it waits and that nobody has to act; a pause for a person keeps
    // the engine's message (it says why).
    let what = match (&r.resumes_at, r.pause_text(time::OffsetDateTime::now_utc())) {
        (Some(_), Some(waiting)) => waiting,
        _ => r.message.clone(),
    };
    progress(r, &what)
}

/// What a progress line reports, without the time left of a timed pause: a watch prints a new
/// line when this changes (not every second of a countdown).
pub fn progress_state(r: &ReleaseView) -> String {
    progress(r, &format!("{} {}", r.message, r.resumes_at.as_deref().unwrap_or("")))
}

fn progress(r: &ReleaseView, what: &str) -> String {
    let step = r.steps.get(r.current_step_index as usize).map(|s| s.name.as_str()).unwrap_or("done");
    format!(
        "{} {} rev {} {} step {} ({step}) weight {}%: {what}",
        r.service,
        r.environment,
        r.revision,
        r.phase,
        step_position(r),
        r.canary_weight,
    )
}

/// Where a release is in its plan: `current/steps` (`steps/steps` once done).
fn step_position(r: &ReleaseView) -> String {
    format!("{}/{}", r.current_step_index.min(r.steps.len() as u32), r.steps.len())
}

/// A list of releases.
pub fn releases(out: Output, rs: &[ReleaseView]) -> anyhow::Result<()> {
    if structured(out, &rs)? {
        return Ok(());
    }
    let mut t = table(&["id", "service", "env", "rev", "artifact", "phase", "step", "weight", "created"]);
    for r in rs {
        t.add_row(vec![
            r.id.clone(),
            r.service.clone(),
            r.environment.clone(),
            r.revision.to_string(),
            r.artifact.clone(),
            r.phase.clone(),
            step_position(r),
            format!("{}%", r.canary_weight),
            r.created_at.clone().unwrap_or_default(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Revision history.
pub fn revisions(out: Output, rs: &[RevisionView]) -> anyhow::Result<()> {
    if structured(out, &rs)? {
        return Ok(());
    }
    let mut t = table(&["revision", "artifact", "phase", "completion", "by", "created", "release"]);
    for r in rs {
        let rev = if r.current { format!("{} (stable)", r.revision) } else { r.revision.to_string() };
        t.add_row(vec![
            rev,
            r.artifact.clone(),
            r.phase.clone(),
            r.completion.clone().unwrap_or_default(),
            r.created_by.clone(),
            r.created_at.clone().unwrap_or_default(),
            r.release_id.clone(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Audit log entries, newest first.
pub fn audit(out: Output, es: &[AuditEntryView]) -> anyhow::Result<()> {
    if structured(out, &es)? {
        return Ok(());
    }
    let mut t = table(&["time", "actor", "action", "outcome", "service", "env", "release", "reason", "message"]);
    for e in es {
        t.add_row(vec![
            e.time.as_deref().map(|t| t.get(..19).unwrap_or(t)).unwrap_or("").to_string(),
            e.actor.clone(),
            e.action.clone(),
            e.outcome.to_lowercase(),
            e.service.clone(),
            e.environment.clone(),
            e.release_id.clone(),
            e.reason.clone(),
            e.message.clone(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// A release group.
pub fn group(out: Output, g: &GroupView) -> anyhow::Result<()> {
    if structured(out, g)? {
        return Ok(());
    }
    outln!("{}", group_header(g));
    let mut t = table(&["id", "service", "rev", "artifact", "phase", "step", "weight", "after"]);
    for r in g.members() {
        let after = g.dependencies.iter().find(|d| d.service == r.service).map(|d| d.depends_on.join(", "));
        t.add_row(vec![
            r.id.clone(),
            r.service.clone(),
            r.revision.to_string(),
            r.artifact.clone(),
            r.phase.clone(),
            step_position(r),
            format!("{}%", r.canary_weight),
            after.unwrap_or_default(),
        ]);
    }
    outln!("{t}");
    let returns: Vec<&ReleaseView> = g.returns().collect();
    if !returns.is_empty() {
        let mut t = table(&["id", "service", "rev", "back to", "phase"]);
        for r in returns {
            t.add_row(vec![
                r.id.clone(),
                r.service.clone(),
                r.revision.to_string(),
                r.artifact.clone(),
                r.phase.clone(),
            ]);
        }
        outln!("returned to their previous versions, newest member first:\n{t}");
    }
    Ok(())
}

/// A group's member as a progress line (a train's return says so).
pub fn group_line(r: &ReleaseView) -> String {
    let line = progress_line(r);
    if r.returns_release_id.is_empty() { line } else { format!("return: {line}") }
}

/// A release's timeline.
pub fn timeline(out: Output, t: &TimelineView) -> anyhow::Result<()> {
    if structured(out, t)? {
        return Ok(());
    }
    outln!("{} {} in {} ({})", t.service, t.artifact, t.environment, t.phase);
    let mut table = table(&["at", "time", "source", "what"]);
    for e in &t.entries {
        table.add_row(vec![
            format!("+{:.3}s", e.offset_seconds),
            e.time.clone().unwrap_or_default(),
            e.source.clone(),
            e.what.clone(),
        ]);
    }
    outln!("{table}");
    if let Some(s) = t.failure_to_stable_seconds {
        outln!("first failing measurement → all traffic back on the previous version: {s:.3} s");
    }
    Ok(())
}

/// The lines above a group's members.
pub fn group_header(g: &GroupView) -> String {
    let settling = if g.settled { "" } else { " (still running)" };
    format!(
        "Group:       {} ({})\nEnvironment: {}\nPhase:       {}{settling}\nMessage:     {}\nReason:      {}\n",
        g.id, g.kind, g.environment, g.phase, g.message, g.reason
    )
}

/// Result of `config apply`.
pub fn applied(out: Output, version: u64, changed: bool, summary: &ConfigSummaryView) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Applied<'a> {
        version: u64,
        changed: bool,
        summary: &'a ConfigSummaryView,
    }
    if !structured(out, &Applied { version, changed, summary })? {
        let what = if changed { "applied as" } else { "unchanged; current is" };
        outln!(
            "delivery config {what} version {version}: {} environments ({}), {} services, {} analysis templates",
            summary.environments.len(),
            summary.environments.join(" → "),
            summary.services.len(),
            summary.analysis_templates.len()
        );
    }
    Ok(())
}

/// A stored config.
pub fn config(out: Output, c: &ConfigView) -> anyhow::Result<()> {
    if !structured(out, c)? {
        outln!("# version {} applied by {} at {}", c.version, c.applied_by, c.applied_at.clone().unwrap_or_default());
        out!("{}", c.yaml);
    }
    Ok(())
}

/// Result of `config validate`.
pub fn validation(out: Output, v: &cpb::ValidateConfigResponse) -> anyhow::Result<()> {
    #[derive(Serialize)]
    struct Problem<'a> {
        path: &'a str,
        message: &'a str,
    }
    #[derive(Serialize)]
    struct Validation<'a> {
        valid: bool,
        problems: Vec<Problem<'a>>,
    }
    let view = Validation {
        valid: v.valid,
        problems: v.problems.iter().map(|p| Problem { path: &p.path, message: &p.message }).collect(),
    };
    if !structured(out, &view)? {
        if v.valid {
            outln!("valid");
        }
        for p in &v.problems {
            if p.path.is_empty() {
                outln!("{}", p.message);
            } else {
                outln!("{}: {}", p.path, p.message);
            }
        }
    }
    Ok(())
}

/// One analysis run in detail.
pub fn analysis_run(out: Output, r: &AnalysisRunView) -> anyhow::Result<()> {
    if !structured(out, r)? {
        out!("{}", analysis_run_text(r));
    }
    Ok(())
}

fn labels_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
}

/// The detailed text view of a run (also the live `analysis watch` view).
pub fn analysis_run_text(r: &AnalysisRunView) -> String {
    let mut s = String::new();
    let phase =
        if r.severity.is_empty() { r.phase.clone() } else { format!("{} ({})", r.phase, r.severity.to_lowercase()) };
    s.push_str(&format!("Run:       {}\n", r.id));
    s.push_str(&format!("Phase:     {phase}\n"));
    s.push_str(&format!("Message:   {}\n", r.message));
    s.push_str(&format!("Labels:    {}\n", labels_text(&r.labels)));
    s.push_str(&format!("Started:   {}\n", r.started_at.clone().unwrap_or_default()));
    if let Some(done) = &r.completed_at {
        s.push_str(&format!("Completed: {done}\n"));
    }
    let mut t = table(&[
        "metric",
        "phase",
        "severity",
        "count",
        "ok",
        "failed",
        "inconcl.",
        "errors",
        "last value",
        "last message",
    ]);
    for m in &r.metrics {
        let last = m.measurements.last();
        let name = if m.dry_run { format!("{} (dry run)", m.name) } else { m.name.clone() };
        t.add_row(vec![
            name,
            m.phase.clone(),
            m.severity.to_lowercase(),
            m.count.to_string(),
            m.successful.to_string(),
            m.failed.to_string(),
            m.inconclusive.to_string(),
            m.error.to_string(),
            last.map(|l| if l.no_data { "(no data)".to_string() } else { l.value.clone() }).unwrap_or_default(),
            last.map(|l| l.message.clone()).unwrap_or_default(),
        ]);
    }
    s.push_str(&format!("\n{t}\n"));
    s
}

/// One line per change, for `analysis watch` without a terminal.
pub fn analysis_progress_line(r: &AnalysisRunView) -> String {
    let metrics: Vec<String> = r
        .metrics
        .iter()
        .map(|m| {
            let last = m.measurements.last().map(|l| l.value.as_str()).unwrap_or("-");
            format!("{}={} ({}/{} ok, last {last})", m.name, m.phase, m.successful, m.count)
        })
        .collect();
    format!("{} {}: {}", r.id, r.phase, metrics.join(", "))
}

/// A list of runs.
pub fn analysis_runs(out: Output, rs: &[AnalysisRunView]) -> anyhow::Result<()> {
    if structured(out, &rs)? {
        return Ok(());
    }
    let mut t = table(&["id", "phase", "severity", "metrics", "labels", "started"]);
    for r in rs {
        t.add_row(vec![
            r.id.clone(),
            r.phase.clone(),
            r.severity.to_lowercase(),
            r.metrics.len().to_string(),
            labels_text(&r.labels),
            r.started_at.clone().unwrap_or_default(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// One measurement.
pub fn measurement(out: Output, m: &MeasurementView) -> anyhow::Result<()> {
    if structured(out, m)? {
        return Ok(());
    }
    let value = if m.no_data { "(no data)".to_string() } else { m.value.clone() };
    outln!("Phase:   {}", m.phase);
    outln!("Value:   {value}");
    if !m.message.is_empty() {
        outln!("Message: {}", m.message);
    }
    Ok(())
}

/// `migrate info`: Flyway's columns.
pub fn migration_info(out: Output, info: &MigrationInfoView) -> anyhow::Result<()> {
    if structured(out, info)? {
        return Ok(());
    }
    let current = if info.current_version.is_empty() { "<< Empty Schema >>" } else { &info.current_version };
    outln!("Schema version: {current}");
    let mut t = table(&["category", "version", "description", "type", "installed on", "state", "checksum", "script"]);
    for m in &info.migrations {
        let category = if m.kind == "BASELINE" || m.kind == "SCHEMA" || m.kind == "DELETE" {
            ""
        } else if m.version.is_empty() {
            "Repeatable"
        } else {
            "Versioned"
        };
        t.add_row(vec![
            category.to_string(),
            m.version.clone(),
            m.description.clone(),
            m.kind.clone(),
            m.installed_on.clone().unwrap_or_default(),
            m.state_name.clone(),
            m.checksum.map(|c| c.to_string()).unwrap_or_default(),
            m.script.clone(),
        ]);
    }
    outln!("{t}");
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// `migrate validate`.
pub fn migration_validation(out: Output, v: &hopngo_proto::migrator::ValidateResponse) -> anyhow::Result<()> {
    #[derive(serde::Serialize)]
    struct Problem<'a> {
        version: &'a str,
        script: &'a str,
        kind: &'a str,
        message: &'a str,
    }
    #[derive(serde::Serialize)]
    struct View<'a> {
        valid: bool,
        problems: Vec<Problem<'a>>,
    }
    let view = View {
        valid: v.valid,
        problems: v
            .problems
            .iter()
            .map(|p| Problem { version: &p.version, script: &p.script, kind: &p.kind, message: &p.message })
            .collect(),
    };
    if structured(out, &view)? {
        return Ok(());
    }
    if v.valid {
        outln!("valid: every applied migration matches its script");
        return Ok(());
    }
    let mut t = table(&["version", "script", "problem", "message"]);
    for p in &v.problems {
        t.add_row(vec![p.version.clone(), p.script.clone(), p.kind.clone(), p.message.clone()]);
    }
    outln!("{t}");
    Ok(())
}

/// One migration run.
pub fn migration_run(out: Output, r: &MigrationRunView) -> anyhow::Result<()> {
    if structured(out, r)? {
        return Ok(());
    }
    let version = |v: &str| if v.is_empty() { "<< Empty Schema >>".to_string() } else { v.to_string() };
    outln!("Run:      {}", r.id);
    outln!("Command:  {} {}", r.command.to_lowercase(), r.database);
    outln!("Phase:    {}{}", r.phase, if r.interrupted { " (interrupted)" } else { "" });
    outln!("Message:  {}", r.message.replace('\n', "\n          "));
    outln!("Version:  {} -> {}", version(&r.version_before), version(&r.version_after));
    outln!("Started:  {}", r.started_at.clone().unwrap_or_default());
    if let Some(done) = &r.finished_at {
        outln!("Finished: {done}");
    }
    for w in &r.warnings {
        outln!("Warning:  {w}");
    }
    if !r.changes.is_empty() {
        let mut t = table(&["rank", "version", "description", "type", "action", "transaction", "ms", "script"]);
        for c in &r.changes {
            t.add_row(vec![
                c.installed_rank.map(|r| r.to_string()).unwrap_or_default(),
                c.version.clone(),
                c.description.clone(),
                c.kind.clone(),
                c.action.clone(),
                if c.transactional { "yes" } else { "no" }.to_string(),
                c.execution_time_ms.to_string(),
                c.script.clone(),
            ]);
        }
        outln!("\n{t}");
    }
    Ok(())
}

/// One line per change of a migration run, for `--watch` on stderr.
pub fn migration_progress_line(r: &MigrationRunView) -> String {
    let last =
        r.changes.last().map(|c| format!(", last: {} {} {}", c.action, c.version, c.description)).unwrap_or_default();
    format!("{} {} {} {}: {} change(s){last}", r.id, r.command.to_lowercase(), r.database, r.phase, r.changes.len())
}

/// A list of migration runs.
pub fn migration_runs(out: Output, rs: &[MigrationRunView]) -> anyhow::Result<()> {
    if structured(out, &rs)? {
        return Ok(());
    }
    let mut t = table(&["id", "database", "command", "phase", "before", "after", "changes", "started"]);
    for r in rs {
        t.add_row(vec![
            r.id.clone(),
            r.database.clone(),
            r.command.to_lowercase(),
            r.phase.clone(),
            r.version_before.clone(),
            r.version_after.clone(),
            r.changes.len().to_string(),
            r.started_at.clone().unwrap_or_default(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Prints a stream of events: table rows under one header, one JSON object per line, or YAML
/// documents.
pub struct EventPrinter {
    out: Output,
    header: bool,
}

impl EventPrinter {
    /// A printer.
    pub fn new(out: Output) -> EventPrinter {
        EventPrinter { out, header: false }
    }

    /// Prints one event (flushed, so a pipe sees it at once).
    pub fn print(&mut self, e: &EventView) -> anyhow::Result<()> {
        match self.out {
            Output::Json => outln!("{}", serde_json::to_string(e)?),
            Output::Yaml => out!("---\n{}", serde_saphyr::to_string(e)?),
            Output::Table => {
                if !self.header {
                    outln!(
                        "{:<7} {:<20} {:<17} {:<11} {:<8} {:<30} {:<36} MESSAGE",
                        "CURSOR",
                        "TIME",
                        "SERVICE",
                        "ENV",
                        "SEVERITY",
                        "TYPE",
                        "RELEASE"
                    );
                    self.header = true;
                }
                let time = e.time.as_deref().map(|t| t.get(..19).unwrap_or(t)).unwrap_or("");
                let what = match (e.extensions.get("escalationlevel"), e.transition.as_str()) {
                    (Some(level), _) => format!("[{level}] {}", e.message),
                    (None, t) if e.message.is_empty() => format!("{t} {}", e.step_name),
                    (None, t) => format!("{t}: {}", e.message),
                };
                outln!(
                    "{:<7} {:<20} {:<17} {:<11} {:<8} {:<30} {:<36} {}",
                    e.cursor,
                    time,
                    e.service,
                    e.environment,
                    e.severity,
                    short_name(&e.event_type),
                    e.release_id,
                    what.trim()
                );
            }
        }
        Ok(())
    }
}

/// The event type catalog.
pub fn event_types(out: Output, types: &[&str]) -> anyhow::Result<()> {
    if structured(out, &types)? {
        return Ok(());
    }
    let mut t = table(&["type", "short"]);
    for ty in types {
        t.add_row(vec![ty.to_string(), short_name(ty).to_string()]);
    }
    outln!("{t}");
    Ok(())
}

fn filter_text(f: &hopngo_client::views::EventFilterView) -> String {
    let mut parts = Vec::new();
    for (name, list) in [("service", &f.services), ("env", &f.environments), ("level", &f.escalation_levels)] {
        if !list.is_empty() {
            parts.push(format!("{name}={}", list.join("|")));
        }
    }
    if !f.types.is_empty() {
        parts.push(format!("type={}", f.types.iter().map(|t| short_name(t)).collect::<Vec<_>>().join("|")));
    }
    if f.min_severity != "INFO" {
        parts.push(format!("severity>={}", f.min_severity));
    }
    if !f.release_id.is_empty() {
        parts.push(format!("release={}", f.release_id));
    }
    if parts.is_empty() { "all".into() } else { parts.join(" ") }
}

/// A created webhook (with its secret, shown once).
pub fn webhook(out: Output, w: &WebhookView) -> anyhow::Result<()> {
    if structured(out, w)? {
        return Ok(());
    }
    outln!("id:      {}", w.id);
    outln!("url:     {}", w.url);
    outln!("format:  {}", w.format);
    outln!("filter:  {}", filter_text(&w.filter));
    outln!("cursor:  {}", w.cursor);
    if !w.secret.is_empty() {
        outln!("secret:  {}", w.secret);
        eprintln!("keep the secret: it signs every delivery (webhook-signature) and is not shown again");
    }
    Ok(())
}

/// Webhooks.
pub fn webhooks(out: Output, ws: &[WebhookView]) -> anyhow::Result<()> {
    if structured(out, &ws)? {
        return Ok(());
    }
    let mut t = table(&["id", "url", "format", "filter", "cursor", "delivered", "dead-lettered"]);
    for w in ws {
        t.add_row(vec![
            w.id.clone(),
            w.url.clone(),
            w.format.clone(),
            filter_text(&w.filter),
            w.cursor.clone(),
            w.delivered.to_string(),
            w.dead_lettered.to_string(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Delivery attempts.
pub fn deliveries(out: Output, ds: &[DeliveryView]) -> anyhow::Result<()> {
    if structured(out, &ds)? {
        return Ok(());
    }
    let mut t = table(&["time", "cursor", "event", "attempt", "status", "result", "message"]);
    for d in ds {
        let result = if d.delivered {
            "delivered"
        } else if d.dead_lettered {
            "dead-letter"
        } else {
            "retry"
        };
        t.add_row(vec![
            d.attempted_at.clone().unwrap_or_default(),
            d.cursor.clone(),
            d.event_id.clone(),
            d.attempt.to_string(),
            if d.status_code == 0 { "-".into() } else { d.status_code.to_string() },
            result.into(),
            d.message.chars().take(120).collect(),
        ]);
    }
    outln!("{t}");
    Ok(())
}

/// Escalations.
pub fn escalations(out: Output, es: &[EscalationView]) -> anyhow::Result<()> {
    if structured(out, &es)? {
        return Ok(());
    }
    let mut t = table(&["release", "service", "env", "condition", "since", "notified", "next", "acknowledged"]);
    for e in es {
        let next = match (&e.next_level[..], &e.next_at) {
            ("", _) => "-".to_string(),
            (level, Some(at)) => format!("{level} at {at}"),
            (level, None) => level.to_string(),
        };
        let ack = if e.acknowledged_by.is_empty() {
            "-".to_string()
        } else if e.comment.is_empty() {
            e.acknowledged_by.clone()
        } else {
            format!("{}: {}", e.acknowledged_by, e.comment)
        };
        t.add_row(vec![
            e.release_id.clone(),
            e.service.clone(),
            e.environment.clone(),
            e.condition.clone(),
            e.since.clone().unwrap_or_default(),
            if e.levels_notified.is_empty() { "-".into() } else { e.levels_notified.join(", ") },
            next,
            ack,
        ]);
    }
    outln!("{t}");
    Ok(())
}

pub fn whoami(out: Output, me: &WhoAmIView) -> anyhow::Result<()> {
    if structured(out, me)? {
        return Ok(());
    }
    outln!("user:    {}", me.user);
    outln!("issuer:  {}", me.issuer);
    outln!("subject: {}", me.subject);
    outln!("groups:  {}", if me.groups.is_empty() { "-".to_string() } else { me.groups.join(", ") });
    if me.grants.is_empty() {
        outln!("no roles for any service of the applied config");
        return Ok(());
    }
    let mut t = table(&["service", "env", "roles", "may"]);
    for g in &me.grants {
        t.add_row(vec![
            g.service.clone(),
            g.environment.clone(),
            if g.roles.is_empty() { "-".into() } else { g.roles.join(", ") },
            g.permissions.join(", "),
        ]);
    }
    outln!("{t}");
    Ok(())
}

pub fn freezes(out: Output, f: &FreezesView) -> anyhow::Result<()> {
    if structured(out, f)? {
        return Ok(());
    }
    if !f.freezes.is_empty() {
        let mut t = table(&["id", "env", "from", "until", "by", "reason", "ended"]);
        for z in &f.freezes {
            let ended = match &z.ended_at {
                None => "-".to_string(),
                Some(at) if z.end_reason.is_empty() => format!("{at} by {}", z.ended_by),
                Some(at) => format!("{at} by {}: {}", z.ended_by, z.end_reason),
            };
            t.add_row(vec![
                z.id.clone(),
                z.environment.clone(),
                z.from.clone().unwrap_or_default(),
                z.until.clone().unwrap_or_default(),
                z.created_by.clone(),
                z.reason.clone(),
                ended,
            ]);
        }
        outln!("{t}");
    }
    if !f.windows.is_empty() {
        let mut t = table(&["env", "freeze window open now", "until", "reason"]);
        for w in &f.windows {
            t.add_row(vec![
                w.environment.clone(),
                w.window.clone(),
                w.until.clone().unwrap_or_default(),
                w.reason.clone(),
            ]);
        }
        outln!("{t}");
    }
    if f.freezes.is_empty() && f.windows.is_empty() {
        outln!("no freeze in force or coming");
    }
    Ok(())
}
