//! The `experiment` step: Kayenta-style judgement of a canary against a baseline. The baseline
//! runs the stable artifact on fresh replicas beside the canary, both at the same small weight,
//! so the two differ only in the version (the stable track's long-warm replicas would be an
//! unfair comparison). The metrics of analysis templates are measured for both tracks every
//! metric `interval`; every experiment `interval` the samples so far are judged (Mann-Whitney,
//! effect size, group weights), and the score decides: pass goes on, marginal pauses for a
//! person, fail aborts (an interval below marginal aborts at once).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use hopngo_kit::args::format_duration as fmt;

use crate::{AnalysisTemplate, Dur, MetricDef};

/// Most intervals one experiment judges.
pub const MAX_INTERVALS: i64 = 24;
/// Most measurements of one metric on one track over the whole experiment (what the analyzer
/// keeps of a run's metric).
pub const MAX_SAMPLES: u64 = 1000;
/// Largest weight of each of the baseline and the canary (together they take at most all
/// traffic).
pub const MAX_WEIGHT: i64 = 50;

/// An experiment step as written.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExperimentDef {
    /// Analysis templates whose metrics are measured for the baseline and the canary (their
    /// queries tell the tracks apart by `{{args.track}}`: `baseline` or `canary`).
    pub templates: Vec<String>,
    /// Argument values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
    /// Traffic percentage each of the baseline and the canary takes, 1..=50.
    pub weight: i64,
    /// Replicas of each of the baseline and the canary (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i64>,
    /// Time one judged interval covers.
    pub interval: Dur,
    /// Intervals judged (default 1); each judges every sample taken since the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals: Option<i64>,
    /// Scores that pass (default 95) and that are marginal (default 75); below marginal fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholds: Option<Thresholds>,
    /// Weight (percent) of each metric group in the score; groups without one share the rest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub group_weights: BTreeMap<String, f64>,
    /// How each metric is judged, by metric name (a metric not listed: any significant change
    /// fails it, in the group `default`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, JudgeDef>,
}

/// Score thresholds.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Thresholds {
    /// At or above: pass.
    #[serde(default = "default_pass")]
    pub pass: f64,
    /// At or above (and below pass): marginal.
    #[serde(default = "default_marginal")]
    pub marginal: f64,
}

fn default_pass() -> f64 {
    95.0
}

fn default_marginal() -> f64 {
    75.0
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { pass: default_pass(), marginal: default_marginal() }
    }
}

/// Which change of a metric is bad.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    /// Only an increase (latency, errors).
    Increase,
    /// Only a decrease (throughput, success rate).
    Decrease,
    /// Any significant change.
    #[default]
    Either,
}

/// The effect-size measure the allowed and critical thresholds apply to.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EffectMeasure {
    /// mean(canary) / mean(baseline).
    #[default]
    MeanRatio,
    /// P(canary > baseline) + P(equal) / 2.
    Cles,
}

/// What a NaN point becomes.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum NanStrategy {
    /// Dropped.
    #[default]
    Remove,
    /// Replaced by 0.
    Replace,
}

/// How one metric is judged (Kayenta's canary-config metric fields).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JudgeDef {
    /// Which change is bad.
    #[serde(default)]
    pub direction: Direction,
    /// Group the metric scores in (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// A change beyond the critical thresholds, or no data, fails the whole experiment.
    #[serde(default)]
    pub critical: bool,
    /// No data counts against the metric's group.
    #[serde(default)]
    pub must_have_data: bool,
    /// Reported, not scored.
    #[serde(default)]
    pub muted: bool,
    /// The measure of `allowed*` and `critical*`.
    #[serde(default)]
    pub effect_measure: EffectMeasure,
    /// Smallest effect counted as an increase (default 1.0 for the mean ratio, 0.5 for CLES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_increase: Option<f64>,
    /// Largest effect counted as a decrease (same defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_decrease: Option<f64>,
    /// Effect beyond which a critical metric's increase fails everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_increase: Option<f64>,
    /// Effect beyond which a critical metric's decrease fails everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critical_decrease: Option<f64>,
    /// IQR outlier removal with this factor (Kayenta uses 3.0); unset keeps outliers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_factor: Option<f64>,
    /// What NaN points become.
    #[serde(default)]
    pub nan_strategy: NanStrategy,
}

/// A problem at a path below the step (`.weight`, `.metrics.latency.group`), with why.
pub type ExperimentProblem = (String, String);

/// Whether `metric` measures something different for the baseline and the canary: its provider
/// depends on `{{args.track}}`.
pub fn tells_tracks_apart(metric: &MetricDef) -> bool {
    let Ok(text) = serde_json::to_string(&metric.provider) else { return false };
    let with = |track: &'static str| {
        hopngo_metrics_lang::template::substitute_with(&text, |name| {
            Ok(if name == "track" { track.to_string() } else { format!("{{{{args.{name}}}}}") })
        })
    };
    matches!((with("baseline"), with("canary")), (Ok(a), Ok(b)) if a != b)
}

impl ExperimentDef {
    /// Intervals judged.
    pub fn interval_count(&self) -> u32 {
        self.intervals.unwrap_or(1).clamp(1, MAX_INTERVALS) as u32
    }

    /// Measurements of a metric sampled every `every` over the whole experiment.
    pub fn samples(&self, every: std::time::Duration) -> u64 {
        let total = self.interval.0.as_millis() * u128::from(self.interval_count());
        (total / every.as_millis().max(1)).max(1) as u64
    }

    /// Everything wrong with the step beyond its templates' existence and arguments (which the
    /// caller checks as for any analysis): `forms` are the templates' forms it names.
    pub fn problems(&self, forms: &[&AnalysisTemplate]) -> Vec<ExperimentProblem> {
        let mut out: Vec<ExperimentProblem> = Vec::new();
        let mut problem = |at: &str, why: String| out.push((at.to_string(), why));
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            problem(
                ".weight",
                format!("{} is not in 1..={MAX_WEIGHT} (the baseline takes as much again)", self.weight),
            );
        }
        if let Some(r) = self.replicas
            && !(1..=100).contains(&r)
        {
            problem(".replicas", format!("{r} is not in 1..=100"));
        }
        if let Some(n) = self.intervals
            && !(1..=MAX_INTERVALS).contains(&n)
        {
            problem(".intervals", format!("{n} is not in 1..={MAX_INTERVALS}"));
        }
        if self.interval.0.is_zero() {
            problem(".interval", "must be greater than 0".into());
        }
        let t = self.thresholds.unwrap_or_default();
        let finite = |v: f64| v.is_finite() && (0.0..=100.0).contains(&v);
        if !finite(t.pass) || !finite(t.marginal) || t.marginal > t.pass {
            problem(".thresholds", format!("need 0 ≤ marginal ({}) ≤ pass ({}) ≤ 100", t.marginal, t.pass));
        }
        for (group, weight) in &self.group_weights {
            if !(weight.is_finite() && *weight >= 0.0) {
                problem(&format!(".groupWeights.{group}"), format!("{weight} is not a weight"));
            }
        }
        if self.group_weights.values().filter(|w| w.is_finite()).sum::<f64>() > 100.0 + 1e-9 {
            problem(".groupWeights", "weights add up to more than 100".into());
        }
        let mut metrics: BTreeMap<&str, &MetricDef> = BTreeMap::new();
        for form in forms {
            for m in &form.metrics {
                metrics.insert(&m.name, m);
                let at = format!(".templates[{}]", self.templates.iter().position(|n| *n == form.name).unwrap_or(0));
                if !tells_tracks_apart(m) {
                    problem(
                        &at,
                        format!(
                            "metric {:?} of template {:?} does not use {{{{args.track}}}}: it would measure the same \
                             for the baseline and the canary",
                            m.name, form.name
                        ),
                    );
                }
                match m.interval {
                    None => problem(
                        &at,
                        format!(
                            "metric {:?} of template {:?} has no interval: an experiment samples each metric every \
                             interval",
                            m.name, form.name
                        ),
                    ),
                    Some(every) if self.samples(every.0) > MAX_SAMPLES => problem(
                        &at,
                        format!(
                            "metric {:?} of template {:?} would take {} measurements per track (every {} for {} \
                             interval(s) of {}); at most {MAX_SAMPLES}",
                            m.name,
                            form.name,
                            self.samples(every.0),
                            fmt(every.0),
                            self.interval_count(),
                            fmt(self.interval.0),
                        ),
                    ),
                    Some(every) if every.0 > self.interval.0 => problem(
                        &at,
                        format!(
                            "metric {:?} of template {:?} measures every {}, less often than the experiment's \
                             interval {}: an interval would judge no new sample",
                            m.name,
                            form.name,
                            fmt(every.0),
                            fmt(self.interval.0)
                        ),
                    ),
                    Some(_) => {}
                }
            }
        }
        if !forms.is_empty() && metrics.is_empty() {
            problem(".templates", "the templates have no metrics to measure for the baseline and the canary".into());
        }
        for (name, judge) in &self.metrics {
            let at = format!(".metrics.{name}");
            if !forms.is_empty() && !metrics.contains_key(name.as_str()) {
                problem(&at, format!("no template of the experiment has a metric {name:?}"));
            }
            for (field, value) in [
                ("allowedIncrease", judge.allowed_increase),
                ("allowedDecrease", judge.allowed_decrease),
                ("criticalIncrease", judge.critical_increase),
                ("criticalDecrease", judge.critical_decrease),
                ("outlierFactor", judge.outlier_factor),
            ] {
                if let Some(v) = value
                    && !(v.is_finite() && v > 0.0)
                {
                    problem(&format!("{at}.{field}"), format!("{v} is not a positive number"));
                }
            }
            if let Some(group) = &judge.group
                && let Some(why) = crate::name_problem(group)
            {
                problem(&format!("{at}.group"), why);
            }
        }
        out
    }
}
