//! Analysis runs with Argo Rollouts' semantics (`analysis/analysis.go`, `utils/analysis`):
//! how a measurement is judged by its conditions, how counters and limits turn measurements into a
//! metric phase, when the next measurement is due, and how metric phases aggregate into the run's
//! (worst of, fail-fast). Pure functions over plain data; the engine stores and schedules.

use std::{collections::VecDeque, time::Duration};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::condition::{Condition, Value};

/// Argo's `DefaultConsecutiveErrorLimit`.
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: i32 = 4;
/// Argo's `DefaultErrorRetryInterval`: a measurement that errored is retried this soon (or at
/// the metric's interval when that is shorter).
pub const ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);
/// Measurements kept per metric unless the metric says otherwise (Argo keeps 10).
pub const DEFAULT_RETENTION: u32 = 10;

/// Phase of a measurement, a metric or a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Not started.
    Pending,
    /// Measuring.
    Running,
    /// Passed.
    Successful,
    /// Bad values beyond the limit.
    Failed,
    /// Could not measure beyond the limit.
    Error,
    /// Neither; a person decides.
    Inconclusive,
}

impl Phase {
    /// Finished.
    pub fn completed(self) -> bool {
        !matches!(self, Phase::Pending | Phase::Running)
    }

    /// Argo's order, best to worst: Successful < Running < Pending < Inconclusive < Error < Failed.
    fn badness(self) -> u8 {
        match self {
            Phase::Successful => 0,
            Phase::Running => 1,
            Phase::Pending => 2,
            Phase::Inconclusive => 3,
            Phase::Error => 4,
            Phase::Failed => 5,
        }
    }

    /// From [`Phase::as_str`].
    pub fn parse(text: &str) -> Option<Phase> {
        [Phase::Pending, Phase::Running, Phase::Successful, Phase::Failed, Phase::Error, Phase::Inconclusive]
            .into_iter()
            .find(|p| p.as_str() == text)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Successful => "successful",
            Phase::Failed => "failed",
            Phase::Error => "error",
            Phase::Inconclusive => "inconclusive",
        }
    }
}

/// How bad a metric's failure is (the runbook's decision matrix).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    /// Notify only.
    Low,
    /// Pause for a person.
    Medium,
    /// Abort if it lasts past the grace period.
    High,
    /// Abort at once.
    #[default]
    Critical,
}

impl Severity {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// From [`Severity::as_str`].
    pub fn parse(text: &str) -> Option<Severity> {
        [Severity::Low, Severity::Medium, Severity::High, Severity::Critical].into_iter().find(|s| s.as_str() == text)
    }
}

/// What a measurement without data counts as.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoDataPolicy {
    /// Inconclusive (default: never a silent pass).
    #[default]
    Inconclusive,
    /// Failed.
    Failed,
    /// Successful (explicit opt-in).
    Successful,
    /// Error.
    Error,
}

/// Where a metric's value comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Provider {
    /// Prometheus HTTP API.
    Prometheus {
        /// Base address.
        address: String,
        /// PromQL.
        query: String,
        /// Request timeout.
        timeout: Duration,
        /// Range query over the last `range` with `step`; instant query when unset.
        range: Option<(Duration, Duration)>,
    },
    /// A Prometheus text endpoint read directly.
    Scrape {
        /// Endpoint.
        url: String,
        /// Scrape expression.
        expression: String,
        /// Window of rates and quantiles.
        window: Duration,
        /// Request timeout.
        timeout: Duration,
    },
    /// HTTP JSON.
    Web {
        /// URL.
        url: String,
        /// GET or POST.
        method: String,
        /// Headers.
        headers: Vec<(String, String)>,
        /// POST body.
        body: String,
        /// Selector of the value; the whole document when empty.
        json_path: String,
        /// Timeout.
        timeout: Duration,
    },
    /// A command; the value is its exit code.
    Job {
        /// Program and arguments.
        command: Vec<String>,
        /// Longest run; a job running longer fails.
        timeout: Duration,
        /// Extra environment.
        env: Vec<(String, String)>,
    },
}

impl Provider {
    /// Short name.
    pub fn kind(&self) -> &'static str {
        match self {
            Provider::Prometheus { .. } => "prometheus",
            Provider::Scrape { .. } => "scrape",
            Provider::Web { .. } => "web",
            Provider::Job { .. } => "job",
        }
    }
}

/// One metric of a run, validated, with Argo's defaults applied and arguments substituted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricSpec {
    /// Unique in the run.
    pub name: String,
    /// Between measurements (from the end of one to the start of the next); none: one measurement.
    pub interval: Option<Duration>,
    /// Before the first measurement.
    pub initial_delay: Duration,
    /// Measurements to take; `None` = until the run is terminated.
    pub count: Option<u32>,
    /// Success condition over `result`.
    pub success_condition: Option<String>,
    /// Failure condition over `result`.
    pub failure_condition: Option<String>,
    /// Failed measurements allowed; negative disables.
    pub failure_limit: i32,
    /// Inconclusive measurements allowed; negative disables.
    pub inconclusive_limit: i32,
    /// Consecutive errors allowed; negative disables.
    pub consecutive_error_limit: i32,
    /// Consecutive successes that complete the metric (0: off).
    pub consecutive_success_limit: u32,
    /// Never affects the run.
    pub dry_run: bool,
    /// Measurements kept.
    pub retention: u32,
    /// Severity.
    pub severity: Severity,
    /// What no data counts as.
    pub no_data: NoDataPolicy,
    /// Source.
    pub provider: Provider,
}

/// A provider's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A value (possibly without data: an empty vector, NaN, null).
    Value {
        /// The value.
        value: Value,
        /// Extra detail (a job's output tail).
        detail: String,
    },
    /// The measurement could not be taken (unreachable, timeout, bad response).
    Error(String),
}

/// One measurement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// Outcome.
    pub phase: Phase,
    /// Value as text; empty when there was none.
    pub value: String,
    /// Detail.
    pub message: String,
    /// Start.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// End.
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// No data was found.
    pub no_data: bool,
}

/// A metric's counters and latest measurements (Argo's `MetricResult`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricState {
    /// Phase.
    pub phase: Option<Phase>,
    /// Measurements without error (Argo's `count` = successful + failed + inconclusive).
    pub count: u32,
    /// Successful measurements.
    pub successful: u32,
    /// Failed measurements.
    pub failed: u32,
    /// Inconclusive measurements.
    pub inconclusive: u32,
    /// Errored measurements.
    pub error: u32,
    /// Current error streak.
    pub consecutive_error: u32,
    /// Current success streak.
    pub consecutive_success: u32,
    /// Latest measurements, oldest first.
    pub measurements: VecDeque<Measurement>,
    /// Why it is in its phase.
    pub message: String,
}

impl MetricState {
    fn last(&self) -> Option<&Measurement> {
        self.measurements.back()
    }
}

/// Judges one observation by the metric's no-data policy and conditions (Argo's
/// `EvaluateResult`: failure wins over success; both set and neither true is inconclusive; a
/// job without conditions passes on exit code 0).
pub fn judge(spec: &MetricSpec, observation: &Observation) -> (Phase, String, bool) {
    let (value, detail) = match observation {
        Observation::Error(message) => return (Phase::Error, message.clone(), false),
        Observation::Value { value, detail } => (value, detail),
    };
    if value.is_no_data() {
        let phase = match spec.no_data {
            NoDataPolicy::Inconclusive => Phase::Inconclusive,
            NoDataPolicy::Failed => Phase::Failed,
            NoDataPolicy::Successful => Phase::Successful,
            NoDataPolicy::Error => Phase::Error,
        };
        let message = if detail.is_empty() { "no data".to_string() } else { format!("no data: {detail}") };
        return (phase, message, true);
    }
    let success = spec.success_condition.as_deref();
    let failure = spec.failure_condition.as_deref();
    let eval = |source: &str| Condition::parse(source).and_then(|c| c.eval(value));
    let (success_met, failure_met) = match (success, failure) {
        (None, None) if matches!(spec.provider, Provider::Job { .. }) => {
            let ok = matches!(value, Value::Num(code) if *code == 0.0);
            (ok, !ok)
        }
        (None, None) => (true, false),
        (Some(s), None) => match eval(s) {
            Ok(ok) => (ok, !ok),
            Err(err) => return (Phase::Error, err, false),
        },
        (None, Some(f)) => match eval(f) {
            Ok(bad) => (!bad, bad),
            Err(err) => return (Phase::Error, err, false),
        },
        (Some(s), Some(f)) => match (eval(s), eval(f)) {
            (Ok(ok), Ok(bad)) => (ok, bad),
            (Err(err), _) | (_, Err(err)) => return (Phase::Error, err, false),
        },
    };
    let phase = if failure_met {
        Phase::Failed
    } else if success_met {
        Phase::Successful
    } else {
        Phase::Inconclusive
    };
    (phase, detail.clone(), false)
}

/// Adds a finished measurement to the metric's counters and keeps the latest `retention`.
pub fn record(spec: &MetricSpec, state: &mut MetricState, measurement: Measurement) {
    match measurement.phase {
        Phase::Successful => {
            state.successful += 1;
            state.consecutive_success += 1;
            state.consecutive_error = 0;
        }
        Phase::Failed => {
            state.failed += 1;
            state.consecutive_success = 0;
            state.consecutive_error = 0;
        }
        Phase::Inconclusive => {
            state.inconclusive += 1;
            state.consecutive_success = 0;
            state.consecutive_error = 0;
        }
        Phase::Error => {
            state.error += 1;
            state.consecutive_error += 1;
            state.consecutive_success = 0;
        }
        Phase::Pending | Phase::Running => return,
    }
    if measurement.phase != Phase::Error {
        state.count += 1;
    }
    if !measurement.message.is_empty() {
        state.message = measurement.message.clone();
    }
    state.measurements.push_back(measurement);
    let keep = spec.retention.max(1) as usize;
    while state.measurements.len() > keep {
        state.measurements.pop_front();
    }
}

/// Argo's `assessMetricFailureInconclusiveOrError`: the later checks win, so an exceeded error
/// streak reports Error even when failures exceed their limit too.
fn limits_phase(spec: &MetricSpec, state: &MetricState) -> Option<(Phase, String)> {
    let mut phase = None;
    if spec.failure_limit >= 0 && state.failed as i64 > spec.failure_limit as i64 {
        phase = Some((Phase::Failed, format!("{} failed measurement(s), limit {}", state.failed, spec.failure_limit)));
    }
    if spec.inconclusive_limit >= 0 && state.inconclusive as i64 > spec.inconclusive_limit as i64 {
        phase = Some((
            Phase::Inconclusive,
            format!("{} inconclusive measurement(s), limit {}", state.inconclusive, spec.inconclusive_limit),
        ));
    }
    if spec.consecutive_error_limit >= 0 && state.consecutive_error as i64 > spec.consecutive_error_limit as i64 {
        phase = Some((
            Phase::Error,
            format!("{} consecutive error(s), limit {}", state.consecutive_error, spec.consecutive_error_limit),
        ));
    }
    phase
}

/// Argo's `assessMetricStatus`.
pub fn metric_phase(spec: &MetricSpec, state: &MetricState, terminating: bool) -> (Phase, String) {
    if let Some(phase) = state.phase
        && phase.completed()
    {
        return (phase, state.message.clone());
    }
    if state.measurements.is_empty() && state.count == 0 && state.error == 0 {
        return if terminating {
            (Phase::Successful, "terminated before the first measurement".into())
        } else {
            (Phase::Pending, String::new())
        };
    }
    if let Some(limit) = limits_phase(spec, state) {
        return limit;
    }
    if spec.consecutive_success_limit > 0 && state.consecutive_success >= spec.consecutive_success_limit {
        return (Phase::Successful, format!("{} consecutive successes", state.consecutive_success));
    }
    if let Some(count) = spec.count
        && state.count >= count
    {
        if spec.consecutive_success_limit > 0 {
            // The streak was the goal and was not reached within `count`.
            return if spec.failure_limit >= 0 {
                (
                    Phase::Inconclusive,
                    format!("{count} measurements without {} consecutive successes", spec.consecutive_success_limit),
                )
            } else {
                (
                    Phase::Failed,
                    format!("{count} measurements without {} consecutive successes", spec.consecutive_success_limit),
                )
            };
        }
        return (Phase::Successful, format!("{} of {count} measurements successful", state.successful));
    }
    if terminating {
        return (Phase::Successful, "terminated".into());
    }
    (Phase::Running, String::new())
}

/// When the metric should next be measured, or `None` when it is done (or the run terminates).
pub fn next_due(
    spec: &MetricSpec,
    state: &MetricState,
    run_started: OffsetDateTime,
    terminating: bool,
) -> Option<OffsetDateTime> {
    if terminating || state.phase.is_some_and(Phase::completed) {
        return None;
    }
    let Some(last) = state.last() else {
        return Some(run_started + spec.initial_delay);
    };
    if spec.count.is_some_and(|c| state.count >= c) {
        return None;
    }
    let wait = match (spec.interval, last.phase == Phase::Error) {
        (Some(interval), true) => interval.min(ERROR_RETRY_INTERVAL),
        (Some(interval), false) => interval,
        (None, true) => ERROR_RETRY_INTERVAL,
        // A single measurement that was taken.
        (None, false) => return None,
    };
    Some(last.finished_at + wait)
}

/// Outcome of assessing a whole run.
#[derive(Clone, Debug, PartialEq)]
pub struct Assessment {
    /// Run phase.
    pub phase: Phase,
    /// Why.
    pub message: String,
    /// Worst severity among metrics that failed, errored or were inconclusive (non-dry-run).
    pub severity: Option<Severity>,
    /// True when no further measurement will be taken.
    pub terminating: bool,
}

/// Argo's `assessRunStatus`: updates each metric's phase and returns the run's. The run is
/// terminating once asked to, or once any non-dry-run metric is Failed, Error or Inconclusive
/// (fail-fast); its phase is the worst completed metric's once every metric completed.
pub fn assess(specs: &[MetricSpec], states: &mut [MetricState], terminate: bool) -> Assessment {
    let fail_fast = |states: &[MetricState]| {
        specs.iter().zip(states).any(|(spec, st)| {
            !spec.dry_run && matches!(st.phase, Some(Phase::Failed | Phase::Error | Phase::Inconclusive))
        })
    };
    // Two passes: a metric failing in this pass makes the others terminate in the same assessment.
    let mut terminating = terminate || fail_fast(states);
    for _ in 0..2 {
        for (spec, st) in specs.iter().zip(states.iter_mut()) {
            let (phase, message) = metric_phase(spec, st, terminating);
            st.phase = Some(phase);
            if !message.is_empty() {
                st.message = message;
            }
        }
        let now_terminating = terminate || fail_fast(states);
        if now_terminating == terminating {
            break;
        }
        terminating = now_terminating;
    }
    let mut worst: Option<(Phase, String)> = None;
    let mut everything_completed = true;
    let mut severity = None;
    for (spec, st) in specs.iter().zip(states.iter()) {
        let phase = st.phase.unwrap_or(Phase::Pending);
        if spec.dry_run {
            continue;
        }
        if !phase.completed() {
            everything_completed = false;
            continue;
        }
        if matches!(phase, Phase::Failed | Phase::Error | Phase::Inconclusive) {
            severity = severity.max(Some(spec.severity));
        }
        if worst.as_ref().is_none_or(|(w, _)| phase.badness() > w.badness()) {
            let message = if st.message.is_empty() {
                format!("metric {:?} {}", spec.name, phase.as_str())
            } else {
                format!("metric {:?} {}: {}", spec.name, phase.as_str(), st.message)
            };
            worst = Some((phase, message));
        }
    }
    let dry_run_pending =
        specs.iter().zip(states.iter()).any(|(spec, st)| spec.dry_run && !st.phase.is_some_and(Phase::completed));
    if !everything_completed || (dry_run_pending && !terminating) {
        return Assessment { phase: Phase::Running, message: String::new(), severity, terminating };
    }
    let (phase, mut message) = worst.unwrap_or((Phase::Successful, "only dry-run metrics".into()));
    if terminate && phase == Phase::Successful {
        message = "terminated; no metric failed".into();
    }
    Assessment { phase, message, severity, terminating: true }
}

#[cfg(test)]
mod tests;
