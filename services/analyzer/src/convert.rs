//! Contract ↔ domain: metric specs are validated here (errors name the metric and the field),
//! arguments substituted, Argo's defaults applied; runs and judgements are rendered back.

use std::{collections::BTreeMap, time::Duration};

use hopngo_proto::{
    analyzer::{self as pb, metric::Provider as PbProvider},
    check::shown,
};
use time::OffsetDateTime;

use crate::{
    domain::{
        condition::Condition,
        judge::{self, Classification, Direction, EffectMeasure, NanStrategy},
        run::{
            DEFAULT_CONSECUTIVE_ERROR_LIMIT, DEFAULT_RETENTION, Measurement, MetricSpec, MetricState, NoDataPolicy,
            Phase, Provider, Severity,
        },
        scrape::ScrapeExpr,
        template::substitute,
    },
    error::AnalyzerError,
    policy::Policy,
    providers::web::parse_path,
    store::StoredRun,
};

/// Prometheus' own default query timeout.
pub const DEFAULT_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(30);
/// Web and scrape default timeout (Argo's web default).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default window of the scrape provider's rates and quantiles.
pub const DEFAULT_SCRAPE_WINDOW: Duration = Duration::from_secs(60);
/// Default longest run of a job.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);
/// Largest sample the judge takes.
const MAX_SAMPLE: usize = 100_000;
/// Most measurements of one metric (a day of measurements every second).
const MAX_COUNT: u32 = 86_400;
/// Most measurements kept per metric.
const MAX_RETENTION: u32 = 1000;
/// Longest interval, delay or timeout accepted.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Timestamp → contract.
pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

struct Field<'a> {
    path: String,
    metric: &'a str,
    policy: &'a Policy,
}

impl Field<'_> {
    fn err(&self, field: &str, reason: impl std::fmt::Display) -> AnalyzerError {
        let metric = if self.metric.is_empty() { String::new() } else { format!("metric {}: ", shown(self.metric)) };
        AnalyzerError::invalid(format!("{}.{field}", self.path), format!("{metric}{reason}"))
    }

    fn duration(&self, field: &str, d: &Option<prost_types::Duration>) -> Result<Option<Duration>, AnalyzerError> {
        let Some(d) = d else { return Ok(None) };
        if d.seconds < 0 || d.nanos < 0 {
            return Err(self.err(field, "must not be negative"));
        }
        let d = Duration::new(d.seconds as u64, d.nanos as u32);
        if d > MAX_DURATION {
            return Err(self.err(field, "must be at most 7 days"));
        }
        Ok(Some(d))
    }

    fn positive(
        &self,
        field: &str,
        d: &Option<prost_types::Duration>,
        default: Duration,
    ) -> Result<Duration, AnalyzerError> {
        match self.duration(field, d)? {
            Some(d) if d.is_zero() => Err(self.err(field, "must be positive")),
            Some(d) => Ok(d),
            None => Ok(default),
        }
    }

    fn text(&self, field: &str, text: &str, args: &BTreeMap<String, String>) -> Result<String, AnalyzerError> {
        substitute(text, args).map_err(|e| self.err(field, e))
    }

    fn http_url(&self, field: &str, url: &str) -> Result<(), AnalyzerError> {
        match url::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                self.policy.check_url(&u).map_err(|e| self.err(field, e))
            }
            Ok(u) => Err(self.err(field, format!("{}: scheme {:?} is not http or https", shown(url), u.scheme()))),
            Err(e) => Err(self.err(field, format!("{} is not a URL: {e}", shown(url)))),
        }
    }

    fn limit(&self, field: &str, value: Option<i32>, default: i32) -> Result<i32, AnalyzerError> {
        match value {
            Some(v) if v < -1 => Err(self.err(field, format!("{v} is below -1 (-1 disables the limit)"))),
            Some(v) => Ok(v),
            None => Ok(default),
        }
    }
}

/// Validates one metric of a request and resolves it.
pub fn metric_spec(
    index: usize,
    m: &pb::Metric,
    args: &BTreeMap<String, String>,
    open_ended: bool,
    policy: &Policy,
) -> Result<MetricSpec, AnalyzerError> {
    let f = Field { path: format!("metrics[{index}]"), metric: &m.name, policy };
    if m.name.trim().is_empty() {
        return Err(f.err("name", "must not be empty"));
    }
    let interval = f.duration("interval", &m.interval)?;
    if interval.is_some_and(|d| d.is_zero()) {
        return Err(f.err("interval", "must be positive (leave it unset for a single measurement)"));
    }
    let initial_delay = f.duration("initial_delay", &m.initial_delay)?.unwrap_or_default();
    let count = match (m.count, interval) {
        (0, None) => Some(1),
        (0, Some(_)) if open_ended => None,
        (0, Some(_)) => {
            return Err(f.err(
                "count",
                "0 with an interval measures until the run is terminated; only an open-ended run (background analysis) can have that",
            ));
        }
        (c, _) if c > MAX_COUNT => return Err(f.err("count", format!("{c} is more than {MAX_COUNT} measurements"))),
        (c, None) if c > 1 => return Err(f.err("count", format!("{c} measurements need an interval"))),
        (c, _) => Some(c),
    };
    let condition = |field: &str, text: &str| -> Result<Option<String>, AnalyzerError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        let text = f.text(field, text, args)?;
        Condition::parse(&text).map_err(|e| f.err(field, format!("{}: {e}", shown(&text))))?;
        Ok(Some(text))
    };
    let success_condition = condition("success_condition", &m.success_condition)?;
    let failure_condition = condition("failure_condition", &m.failure_condition)?;
    let provider = match &m.provider {
        None => return Err(f.err("provider", "exactly one of prometheus, scrape, web, job is required")),
        Some(PbProvider::Prometheus(p)) => {
            let address = f.text("prometheus.address", &p.address, args)?;
            f.http_url("prometheus.address", &address)?;
            let query = f.text("prometheus.query", &p.query, args)?;
            if query.trim().is_empty() {
                return Err(f.err("prometheus.query", "must not be empty"));
            }
            let timeout = f.positive("prometheus.timeout", &p.timeout, DEFAULT_PROMETHEUS_TIMEOUT)?;
            let range = match (f.duration("prometheus.range", &p.range)?, f.duration("prometheus.step", &p.step)?) {
                (None, None) => None,
                (Some(range), step) if !range.is_zero() => {
                    let step = step.unwrap_or(Duration::from_secs(60).min(range));
                    if step.is_zero() {
                        return Err(f.err("prometheus.step", "must be positive"));
                    }
                    if range.as_secs_f64() / step.as_secs_f64() > 11_000.0 {
                        return Err(f.err("prometheus.step", "more than 11,000 points per series (Prometheus' limit)"));
                    }
                    Some((range, step))
                }
                (Some(_), _) => return Err(f.err("prometheus.range", "must be positive")),
                (None, Some(_)) => return Err(f.err("prometheus.step", "needs a range")),
            };
            Provider::Prometheus { address, query, timeout, range }
        }
        Some(PbProvider::Scrape(p)) => {
            let url = f.text("scrape.url", &p.url, args)?;
            f.http_url("scrape.url", &url)?;
            let expression = f.text("scrape.expression", &p.expression, args)?;
            ScrapeExpr::parse(&expression)
                .map_err(|e| f.err("scrape.expression", format!("{}: {e}", shown(&expression))))?;
            let window = f.positive("scrape.window", &p.window, DEFAULT_SCRAPE_WINDOW)?;
            let timeout = f.positive("scrape.timeout", &p.timeout, DEFAULT_HTTP_TIMEOUT)?;
            Provider::Scrape { url, expression, window, timeout }
        }
        Some(PbProvider::Web(p)) => {
            let url = f.text("web.url", &p.url, args)?;
            f.http_url("web.url", &url)?;
            let method = if p.method.is_empty() { "GET".to_string() } else { p.method.to_ascii_uppercase() };
            if method != "GET" && method != "POST" {
                return Err(f.err("web.method", format!("{} is not GET or POST", shown(&p.method))));
            }
            let json_path = f.text("web.json_path", &p.json_path, args)?;
            parse_path(&json_path).map_err(|e| f.err("web.json_path", e))?;
            let mut headers = Vec::new();
            for (k, v) in &p.headers {
                let value = f.text(&format!("web.headers[{k}]"), v, args)?;
                if http::HeaderName::from_bytes(k.as_bytes()).is_err() || http::HeaderValue::from_str(&value).is_err() {
                    return Err(f.err(&format!("web.headers[{k}]"), "not a valid HTTP header"));
                }
                headers.push((k.clone(), value));
            }
            headers.sort();
            Provider::Web {
                url,
                method,
                headers,
                body: f.text("web.body", &p.body, args)?,
                json_path,
                timeout: f.positive("web.timeout", &p.timeout, DEFAULT_HTTP_TIMEOUT)?,
            }
        }
        Some(PbProvider::Job(p)) => {
            if p.command.is_empty() || p.command[0].trim().is_empty() {
                return Err(f.err("job.command", "must name a program"));
            }
            let declared: BTreeMap<String, String> = p.env.clone().into_iter().collect();
            policy.check_job(&p.command, &declared).map_err(|e| f.err("job.command", e))?;
            let command = p
                .command
                .iter()
                .enumerate()
                .map(|(i, c)| f.text(&format!("job.command[{i}]"), c, args))
                .collect::<Result<Vec<_>, _>>()?;
            let mut env = Vec::new();
            for (k, v) in &p.env {
                env.push((k.clone(), f.text(&format!("job.env[{k}]"), v, args)?));
            }
            env.sort();
            Provider::Job { command, timeout: f.positive("job.timeout", &p.timeout, DEFAULT_JOB_TIMEOUT)?, env }
        }
    };
    let severity = match pb::MetricSeverity::try_from(m.severity) {
        Ok(pb::MetricSeverity::Unspecified | pb::MetricSeverity::Critical) => Severity::Critical,
        Ok(pb::MetricSeverity::High) => Severity::High,
        Ok(pb::MetricSeverity::Medium) => Severity::Medium,
        Ok(pb::MetricSeverity::Low) => Severity::Low,
        Err(_) => return Err(f.err("severity", format!("{} is not a severity", m.severity))),
    };
    let no_data = match pb::NoDataPolicy::try_from(m.no_data) {
        Ok(pb::NoDataPolicy::Unspecified | pb::NoDataPolicy::Inconclusive) => NoDataPolicy::Inconclusive,
        Ok(pb::NoDataPolicy::Failed) => NoDataPolicy::Failed,
        Ok(pb::NoDataPolicy::Successful) => NoDataPolicy::Successful,
        Ok(pb::NoDataPolicy::Error) => NoDataPolicy::Error,
        Err(_) => return Err(f.err("no_data", format!("{} is not a no-data policy", m.no_data))),
    };
    Ok(MetricSpec {
        name: m.name.clone(),
        interval,
        initial_delay,
        count,
        success_condition,
        failure_condition,
        failure_limit: f.limit("failure_limit", m.failure_limit, 0)?,
        inconclusive_limit: f.limit("inconclusive_limit", m.inconclusive_limit, 0)?,
        consecutive_error_limit: f.limit(
            "consecutive_error_limit",
            m.consecutive_error_limit,
            DEFAULT_CONSECUTIVE_ERROR_LIMIT,
        )?,
        consecutive_success_limit: m.consecutive_success_limit,
        dry_run: m.dry_run,
        retention: match m.measurement_retention {
            0 => DEFAULT_RETENTION,
            r if r > MAX_RETENTION => {
                return Err(f.err("measurement_retention", format!("{r} is more than {MAX_RETENTION}")));
            }
            r => r,
        },
        severity,
        no_data,
        provider,
    })
}

/// Validates every metric of a request.
pub fn metric_specs(
    metrics: &[pb::Metric],
    args: &BTreeMap<String, String>,
    open_ended: bool,
    policy: &Policy,
) -> Result<Vec<MetricSpec>, AnalyzerError> {
    if metrics.is_empty() {
        return Err(AnalyzerError::invalid("metrics", "at least one metric is required"));
    }
    let mut specs: Vec<MetricSpec> = Vec::with_capacity(metrics.len());
    for (i, m) in metrics.iter().enumerate() {
        let spec = metric_spec(i, m, args, open_ended, policy)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(AnalyzerError::invalid(format!("metrics[{i}].name"), format!("{:?} is used twice", spec.name)));
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// Phase → contract.
pub fn phase(p: Phase) -> pb::AnalysisPhase {
    match p {
        Phase::Pending => pb::AnalysisPhase::Pending,
        Phase::Running => pb::AnalysisPhase::Running,
        Phase::Successful => pb::AnalysisPhase::Successful,
        Phase::Failed => pb::AnalysisPhase::Failed,
        Phase::Error => pb::AnalysisPhase::Error,
        Phase::Inconclusive => pb::AnalysisPhase::Inconclusive,
    }
}

fn severity(s: Option<Severity>) -> pb::MetricSeverity {
    match s {
        None => pb::MetricSeverity::Unspecified,
        Some(Severity::Critical) => pb::MetricSeverity::Critical,
        Some(Severity::High) => pb::MetricSeverity::High,
        Some(Severity::Medium) => pb::MetricSeverity::Medium,
        Some(Severity::Low) => pb::MetricSeverity::Low,
    }
}

/// Measurement → contract.
pub fn measurement(m: &Measurement) -> pb::Measurement {
    pb::Measurement {
        phase: phase(m.phase) as i32,
        value: m.value.clone(),
        message: m.message.clone(),
        started_at: Some(timestamp(m.started_at)),
        finished_at: Some(timestamp(m.finished_at)),
        no_data: m.no_data,
    }
}

fn metric_result(spec: &MetricSpec, st: &MetricState) -> pb::MetricResult {
    pb::MetricResult {
        name: spec.name.clone(),
        phase: phase(st.phase.unwrap_or(Phase::Pending)) as i32,
        count: st.count,
        successful: st.successful,
        failed: st.failed,
        inconclusive: st.inconclusive,
        error: st.error,
        consecutive_error: st.consecutive_error,
        consecutive_success: st.consecutive_success,
        measurements: st.measurements.iter().map(measurement).collect(),
        message: st.message.clone(),
        severity: severity(Some(spec.severity)) as i32,
        dry_run: spec.dry_run,
        success_condition: spec.success_condition.clone().unwrap_or_default(),
        failure_condition: spec.failure_condition.clone().unwrap_or_default(),
    }
}

/// Run → contract.
pub fn run(r: &StoredRun) -> pb::AnalysisRun {
    pb::AnalysisRun {
        id: r.id.to_string(),
        phase: phase(r.phase) as i32,
        message: r.message.clone(),
        metrics: r.specs.iter().zip(&r.states).map(|(s, st)| metric_result(s, st)).collect(),
        args: r.args.clone().into_iter().collect(),
        labels: r.labels.clone().into_iter().collect(),
        started_at: Some(timestamp(r.started_at)),
        completed_at: r.completed_at.map(timestamp),
        severity: severity(r.severity) as i32,
        idempotency_key: r.idempotency_key.clone().unwrap_or_default(),
    }
}

/// Judge request → domain.
pub fn judge_input(request: &pb::JudgeRequest) -> Result<(Vec<judge::MetricInput>, judge::Settings), AnalyzerError> {
    if request.metrics.is_empty() {
        return Err(AnalyzerError::invalid("metrics", "at least one metric is required"));
    }
    let positive = |field: String, v: f64| -> Result<Option<f64>, AnalyzerError> {
        if v == 0.0 {
            Ok(None)
        } else if v.is_finite() && v > 0.0 {
            Ok(Some(v))
        } else {
            Err(AnalyzerError::invalid(field, format!("{v} is not a positive number")))
        }
    };
    let mut metrics = Vec::new();
    for (i, m) in request.metrics.iter().enumerate() {
        let path = |field: &str| format!("metrics[{i}].{field}");
        if m.name.trim().is_empty() {
            return Err(AnalyzerError::invalid(path("name"), "must not be empty"));
        }
        if m.control.len().max(m.experiment.len()) > MAX_SAMPLE {
            return Err(AnalyzerError::invalid(
                path("experiment"),
                format!("metric {:?}: more than {MAX_SAMPLE} points", m.name),
            ));
        }
        if m.control.iter().chain(&m.experiment).any(|x| x.is_infinite()) {
            return Err(AnalyzerError::invalid(path("experiment"), format!("metric {:?}: infinite values", m.name)));
        }
        if let Some(factor) = m.outlier_factor
            && !(factor.is_finite() && factor > 0.0)
        {
            return Err(AnalyzerError::invalid(path("outlier_factor"), format!("{factor} is not a positive number")));
        }
        metrics.push(judge::MetricInput {
            name: m.name.clone(),
            control: m.control.clone(),
            experiment: m.experiment.clone(),
            direction: match pb::JudgeDirection::try_from(m.direction) {
                Ok(pb::JudgeDirection::Increase) => Direction::Increase,
                Ok(pb::JudgeDirection::Decrease) => Direction::Decrease,
                _ => Direction::Either,
            },
            group: if m.group.is_empty() { "default".into() } else { m.group.clone() },
            critical: m.critical,
            must_have_data: m.must_have_data,
            muted: m.muted,
            nan_strategy: match pb::JudgeNanStrategy::try_from(m.nan_strategy) {
                Ok(pb::JudgeNanStrategy::Replace) => NanStrategy::Replace,
                _ => NanStrategy::Remove,
            },
            outlier_factor: m.outlier_factor,
            effect_measure: match pb::JudgeEffectMeasure::try_from(m.effect_measure) {
                Ok(pb::JudgeEffectMeasure::Cles) => EffectMeasure::Cles,
                _ => EffectMeasure::MeanRatio,
            },
            allowed_increase: positive(path("allowed_increase"), m.allowed_increase)?,
            allowed_decrease: positive(path("allowed_decrease"), m.allowed_decrease)?,
            critical_increase: positive(path("critical_increase"), m.critical_increase)?,
            critical_decrease: positive(path("critical_decrease"), m.critical_decrease)?,
        });
    }
    let pass = if request.pass_threshold == 0.0 { 95.0 } else { request.pass_threshold };
    let marginal = if request.marginal_threshold == 0.0 { 75.0 } else { request.marginal_threshold };
    if !(0.0..=100.0).contains(&pass) || !(0.0..=100.0).contains(&marginal) || marginal > pass {
        return Err(AnalyzerError::invalid(
            "marginal_threshold",
            format!("need 0 ≤ marginal ({marginal}) ≤ pass ({pass}) ≤ 100"),
        ));
    }
    let confidence_level =
        if request.confidence_level == 0.0 { judge::DEFAULT_CONFIDENCE } else { request.confidence_level };
    if !(confidence_level > 0.0 && confidence_level < 1.0) {
        return Err(AnalyzerError::invalid("confidence_level", format!("{confidence_level} is not in (0, 1)")));
    }
    for (g, w) in &request.group_weights {
        if !(w.is_finite() && *w >= 0.0) {
            return Err(AnalyzerError::invalid(format!("group_weights[{g}]"), format!("{w} is not a weight")));
        }
    }
    let group_weights: BTreeMap<String, f64> = request.group_weights.clone().into_iter().collect();
    if group_weights.values().sum::<f64>() > 100.0 + 1e-9 {
        return Err(AnalyzerError::invalid("group_weights", "weights add up to more than 100"));
    }
    Ok((metrics, judge::Settings { group_weights, pass, marginal, confidence_level }))
}

fn sample_stats(s: &judge::SampleStats) -> pb::JudgeSampleStats {
    pb::JudgeSampleStats { count: s.count as u32, mean: s.mean, std: s.std, min: s.min, max: s.max }
}

/// Judgement → contract.
pub fn judgement(j: &judge::Judgement, inputs: &[judge::MetricInput]) -> pb::JudgeResponse {
    pb::JudgeResponse {
        score: j.score,
        verdict: match j.verdict {
            judge::Verdict::Pass => "pass",
            judge::Verdict::Marginal => "marginal",
            judge::Verdict::Fail => "fail",
        }
        .into(),
        metrics: j
            .metrics
            .iter()
            .zip(inputs)
            .map(|(m, input)| {
                let test = m.test.as_ref();
                pb::JudgeMetricResult {
                    name: m.name.clone(),
                    classification: match m.classification {
                        Classification::Pass => pb::JudgeClassification::Pass,
                        Classification::High => pb::JudgeClassification::High,
                        Classification::Low => pb::JudgeClassification::Low,
                        Classification::Nodata => pb::JudgeClassification::Nodata,
                        Classification::NodataFailMetric => pb::JudgeClassification::NodataFailMetric,
                        Classification::Error => pb::JudgeClassification::Error,
                    } as i32,
                    u: test.map_or(f64::NAN, |t| t.u),
                    p_value: test.map_or(f64::NAN, |t| t.p_value),
                    estimate: test.map_or(f64::NAN, |t| t.estimate),
                    ci_lower: test.map_or(f64::NAN, |t| t.ci.0),
                    ci_upper: test.map_or(f64::NAN, |t| t.ci.1),
                    effect_size: match input.effect_measure {
                        EffectMeasure::MeanRatio => m.mean_ratio,
                        EffectMeasure::Cles => m.cles,
                    },
                    reason: m.reason.clone(),
                    z: test.map_or(f64::NAN, |t| t.z),
                    mean_ratio: m.mean_ratio,
                    cles: m.cles,
                    control: Some(sample_stats(&m.control)),
                    experiment: Some(sample_stats(&m.experiment)),
                    critical: m.critical,
                    group: m.group.clone(),
                    muted: m.muted,
                }
            })
            .collect(),
        group_scores: j.groups.clone().into_iter().collect(),
        reason: j.reason.clone(),
    }
}
