//! The canary judge: Kayenta's NetflixACAJudge (`NetflixACAJudge.scala`,
//! `MannWhitneyClassifier.scala`, `WeightedSumScorer.scala`, `ThresholdScoreClassifier.scala`)
//! reimplemented, with the test statistics returned instead of hidden.
//!
//! Per metric: NaN removed (or replaced by 0), optional IQR outlier removal, a two-sided
//! Mann-Whitney test of experiment vs control with a Hodges-Lehmann shift estimate and its
//! confidence interval ([`super::stats::rank_sum`], equal to R's `wilcox.test`), classification
//! High/Low when the interval excludes ±25 % of the estimate and the effect size allows it;
//! then a weighted score per group and a pass/marginal/fail verdict.

use std::collections::BTreeMap;

use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use super::stats::{RankSum, average_ranks, percentile_sorted, rank_sum};

/// Kayenta's fixed tolerance around the shift estimate.
pub const TOLERANCE: f64 = 0.25;
/// Default confidence level of the interval.
pub const DEFAULT_CONFIDENCE: f64 = 0.98;
/// Share of metrics without data (percent) at which the score is 0.
const NODATA_THRESHOLD: f64 = 50.0;

/// Which change is bad.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    /// Only higher values.
    Increase,
    /// Only lower values.
    Decrease,
    /// Both.
    #[default]
    Either,
}

/// What NaN points become.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NanStrategy {
    /// Dropped (Kayenta's default).
    #[default]
    Remove,
    /// Replaced by 0.
    Replace,
}

/// The effect-size measure the allowed/critical thresholds apply to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EffectMeasure {
    /// mean(experiment) / mean(control); thresholds default to 1.0.
    #[default]
    MeanRatio,
    /// Common-language effect size P(E > C) + ½ P(E = C); thresholds default to 0.5.
    Cles,
}

/// One metric's samples and how to judge them.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricInput {
    /// Name.
    pub name: String,
    /// Baseline sample.
    pub control: Vec<f64>,
    /// Canary sample.
    pub experiment: Vec<f64>,
    /// Which change is bad.
    pub direction: Direction,
    /// Group it scores in.
    pub group: String,
    /// A High/Low (beyond the critical effect) or missing data fails the whole judgement.
    pub critical: bool,
    /// Missing data counts against the group instead of being left out.
    pub must_have_data: bool,
    /// Listed but not scored.
    pub muted: bool,
    /// NaN handling.
    pub nan_strategy: NanStrategy,
    /// IQR outlier removal with this factor (Kayenta default 3.0), or none.
    pub outlier_factor: Option<f64>,
    /// Effect-size measure.
    pub effect_measure: EffectMeasure,
    /// Smallest effect that counts as an increase (default per measure).
    pub allowed_increase: Option<f64>,
    /// Largest effect that counts as a decrease.
    pub allowed_decrease: Option<f64>,
    /// Effect beyond which a critical metric's increase fails everything.
    pub critical_increase: Option<f64>,
    /// Effect beyond which a critical metric's decrease fails everything.
    pub critical_decrease: Option<f64>,
}

/// Verdict on one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Classification {
    /// No significant change.
    Pass,
    /// Significantly higher.
    High,
    /// Significantly lower.
    Low,
    /// A sample was empty.
    Nodata,
    /// A sample was empty and the metric must have data.
    NodataFailMetric,
    /// The test could not be computed.
    Error,
}

/// Descriptive statistics of a sample after its transforms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleStats {
    /// Points.
    pub count: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

/// The judgement of one metric.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricJudgement {
    /// Name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Verdict.
    pub classification: Classification,
    /// Fails the whole judgement.
    pub critical: bool,
    /// Muted (not scored).
    pub muted: bool,
    /// Why.
    pub reason: String,
    /// The rank-sum test, when it ran.
    pub test: Option<RankSum>,
    /// mean(E)/mean(C); NaN when a mean is 0.
    pub mean_ratio: f64,
    /// P(E > C) + ½ P(E = C).
    pub cles: f64,
    /// Control after transforms.
    pub control: SampleStats,
    /// Experiment after transforms.
    pub experiment: SampleStats,
}

/// Overall verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Score ≥ pass threshold.
    Pass,
    /// Between.
    Marginal,
    /// Score < marginal threshold.
    Fail,
}

/// Scoring settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Group weights in percent; groups without one share what is left.
    pub group_weights: BTreeMap<String, f64>,
    /// Pass threshold.
    pub pass: f64,
    /// Marginal threshold.
    pub marginal: f64,
    /// Confidence level of the interval.
    pub confidence_level: f64,
}

/// The whole judgement.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    /// 0..=100, rounded to 2 decimals.
    pub score: f64,
    /// Verdict.
    pub verdict: Verdict,
    /// Why the score is what it is.
    pub reason: String,
    /// Per-group scores.
    pub groups: BTreeMap<String, f64>,
    /// Per-metric results, in input order.
    pub metrics: Vec<MetricJudgement>,
}

fn stats(xs: &[f64]) -> SampleStats {
    if xs.is_empty() {
        return SampleStats::default();
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let std = if xs.len() > 1 { (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
    SampleStats {
        count: xs.len(),
        mean,
        std,
        min: xs.iter().copied().fold(f64::INFINITY, f64::min),
        max: xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}

/// NaN handling, then Kayenta's IQR detector with `reduceSensitivity`: the fences are widened
/// to the 1st and 99th percentiles when those lie outside.
pub fn transform(xs: &[f64], nan: NanStrategy, outlier_factor: Option<f64>) -> Vec<f64> {
    let values: Vec<f64> = match nan {
        NanStrategy::Remove => xs.iter().copied().filter(|x| !x.is_nan()).collect(),
        NanStrategy::Replace => xs.iter().map(|x| if x.is_nan() { 0.0 } else { *x }).collect(),
    };
    let Some(factor) = outlier_factor else { return values };
    if values.is_empty() {
        return values;
    }
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    let p25 = percentile_sorted(&sorted, 0.25);
    let p75 = percentile_sorted(&sorted, 0.75);
    let iqr = p75 - p25;
    let lower = percentile_sorted(&sorted, 0.01).min(p25 - factor * iqr);
    let upper = percentile_sorted(&sorted, 0.99).max(p75 + factor * iqr);
    values.into_iter().filter(|x| *x >= lower && *x <= upper).collect()
}

fn distinct(xs: &[f64]) -> usize {
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.dedup();
    sorted.len()
}

/// Kayenta breaks a tie between two constant samples with tiny Gaussian noise; the seed is fixed
/// so a judgement can be reproduced.
fn add_noise(xs: &mut [f64], rng: &mut StdRng) {
    for x in xs.iter_mut() {
        if *x != 0.0 {
            let sd = (*x * 1e-5).abs();
            // Box-Muller.
            let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.random::<f64>();
            *x += sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        }
    }
}

/// Judges one metric.
pub fn classify(m: &MetricInput, confidence_level: f64) -> MetricJudgement {
    let mut experiment = transform(&m.experiment, m.nan_strategy, m.outlier_factor);
    let mut control = transform(&m.control, m.nan_strategy, m.outlier_factor);
    let (es, cs) = (stats(&experiment), stats(&control));
    let mean_ratio = if es.mean == 0.0 || cs.mean == 0.0 || experiment.is_empty() || control.is_empty() {
        f64::NAN
    } else {
        es.mean / cs.mean
    };
    let mut result = MetricJudgement {
        name: m.name.clone(),
        group: m.group.clone(),
        classification: Classification::Pass,
        critical: false,
        muted: m.muted,
        reason: String::new(),
        test: None,
        mean_ratio,
        cles: f64::NAN,
        control: cs,
        experiment: es,
    };
    if experiment.is_empty() || control.is_empty() {
        let which = if experiment.is_empty() { "experiment" } else { "control" };
        if m.nan_strategy == NanStrategy::Replace {
            result.reason = format!("no {which} data; NaN replaced, so it passes");
            return result;
        }
        result.reason = format!("no {which} data");
        if m.must_have_data && !m.critical {
            result.classification = Classification::NodataFailMetric;
        } else {
            result.classification = Classification::Nodata;
            result.critical = m.critical;
        }
        return result;
    }
    let mut se = experiment.clone();
    let mut sc = control.clone();
    se.sort_by(f64::total_cmp);
    sc.sort_by(f64::total_cmp);
    if se == sc {
        result.reason = "the samples are identical".into();
        return result;
    }
    let joint: Vec<f64> = experiment.iter().chain(&control).copied().collect();
    if distinct(&joint) == 1 {
        result.reason = "all values are equal".into();
        return result;
    }
    if distinct(&experiment) == 1 && distinct(&control) == 1 {
        let mut rng = StdRng::seed_from_u64(0x004b_4159_454e_5441);
        add_noise(&mut experiment, &mut rng);
        add_noise(&mut control, &mut rng);
    }
    let joint: Vec<f64> = experiment.iter().chain(&control).copied().collect();
    let ranks = average_ranks(&joint);
    let (mm, nn) = (experiment.len() as f64, control.len() as f64);
    let r1: f64 = ranks[..experiment.len()].iter().sum();
    result.cles = (2.0 * r1 - mm * (mm + 1.0)) / (2.0 * nn * mm);
    let test = match rank_sum(&experiment, &control, confidence_level) {
        Ok(t) => t,
        Err(err) => {
            result.classification = Classification::Error;
            result.critical = m.critical;
            result.reason = err;
            return result;
        }
    };
    let effect = match m.effect_measure {
        EffectMeasure::MeanRatio => mean_ratio,
        EffectMeasure::Cles => result.cles,
    };
    let default_threshold = match m.effect_measure {
        EffectMeasure::MeanRatio => 1.0,
        EffectMeasure::Cles => 0.5,
    };
    let crit = TOLERANCE * test.estimate.abs();
    let allowed_increase = m.allowed_increase.unwrap_or(default_threshold);
    let allowed_decrease = m.allowed_decrease.unwrap_or(default_threshold);
    let is_high = matches!(m.direction, Direction::Increase | Direction::Either)
        && test.ci.0 > crit
        && (effect.is_nan() || effect >= allowed_increase);
    let is_low = matches!(m.direction, Direction::Decrease | Direction::Either)
        && test.ci.1 < -crit
        && (effect.is_nan() || effect <= allowed_decrease);
    let ci = format!("[{:.6}, {:.6}]", test.ci.0, test.ci.1);
    if is_high {
        result.classification = Classification::High;
        result.reason = format!(
            "higher: shift {:.6}, {}% CI {ci}, p={:.3e}",
            test.estimate,
            confidence_level * 100.0,
            test.p_value
        );
        if m.critical {
            let limit = m.critical_increase.unwrap_or(default_threshold);
            result.critical = effect.is_nan() || effect >= limit;
        }
    } else if is_low {
        result.classification = Classification::Low;
        result.reason =
            format!("lower: shift {:.6}, {}% CI {ci}, p={:.3e}", test.estimate, confidence_level * 100.0, test.p_value);
        if m.critical {
            let limit = m.critical_decrease.unwrap_or(default_threshold);
            result.critical = effect.is_nan() || effect <= limit;
        }
    } else {
        result.reason = format!("no significant change: shift {:.6}, CI {ci}, p={:.3e}", test.estimate, test.p_value);
    }
    result.test = Some(test);
    result
}

/// Judges every metric and scores the groups (Kayenta's `WeightedSumScorer` and
/// `ThresholdScoreClassifier`).
pub fn judge(metrics: &[MetricInput], settings: &Settings) -> Judgement {
    let results: Vec<MetricJudgement> = metrics.iter().map(|m| classify(m, settings.confidence_level)).collect();
    let scored: Vec<&MetricJudgement> = results.iter().filter(|r| !r.muted).collect();
    let verdict_of = |score: f64| {
        if score >= settings.pass {
            Verdict::Pass
        } else if score >= settings.marginal {
            Verdict::Marginal
        } else {
            Verdict::Fail
        }
    };
    let mut groups: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for r in &scored {
        let (pass, total) = groups.entry(r.group.clone()).or_default();
        match r.classification {
            Classification::Pass => {
                *pass += 1;
                *total += 1;
            }
            Classification::High | Classification::Low | Classification::NodataFailMetric => *total += 1,
            Classification::Nodata | Classification::Error => {}
        }
    }
    let group_scores: BTreeMap<String, f64> = groups
        .iter()
        .map(|(g, (pass, total))| (g.clone(), if *total == 0 { 100.0 } else { 100.0 * *pass as f64 / *total as f64 }))
        .collect();
    if let Some(first) = scored.iter().find(|r| r.critical && r.classification != Classification::Pass) {
        return Judgement {
            score: 0.0,
            verdict: verdict_of(0.0),
            reason: format!("canary failed: critical metric {:?}: {}", first.name, first.reason),
            groups: group_scores,
            metrics: results,
        };
    }
    let nodata = scored.iter().filter(|r| r.classification == Classification::Nodata).count();
    if !scored.is_empty() && nodata as f64 / scored.len() as f64 * 100.0 >= NODATA_THRESHOLD {
        return Judgement {
            score: 0.0,
            verdict: verdict_of(0.0),
            reason: format!("{nodata} of {} metrics have no data", scored.len()),
            groups: group_scores,
            metrics: results,
        };
    }
    let configured_total: f64 = settings.group_weights.values().sum();
    let unweighted = group_scores.keys().filter(|g| !settings.group_weights.contains_key(*g)).count();
    let share = if unweighted > 0 { ((100.0 - configured_total) / unweighted as f64).max(0.0) } else { 0.0 };
    let total: f64 = group_scores
        .iter()
        .map(|(g, score)| score * settings.group_weights.get(g).copied().unwrap_or(share) / 100.0)
        .sum();
    let score = (total * 100.0).round() / 100.0;
    let verdict = verdict_of(score);
    let failing: Vec<&str> = scored
        .iter()
        .filter(|r| {
            matches!(r.classification, Classification::High | Classification::Low | Classification::NodataFailMetric)
        })
        .map(|r| r.name.as_str())
        .collect();
    let reason = if failing.is_empty() {
        "every scored metric passed".into()
    } else {
        format!("deviating: {}", failing.join(", "))
    };
    Judgement { score, verdict, reason, groups: group_scores, metrics: results }
}

#[cfg(test)]
mod tests;
