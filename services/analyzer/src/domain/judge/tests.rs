use super::*;
use crate::domain::stats::rank_sum;

fn parse(list: &str) -> Vec<f64> {
    list.split(',').map(|v| v.parse().unwrap()).collect()
}

/// Every case of `testdata/rank_sum.tsv` (written by R's `wilcox.test`, see `rank_sum.R`)
/// reproduced to 1e-9: statistic, p-value, shift estimate and the 98 % interval.
#[test]
fn rank_sum_equals_r_wilcox_test() {
    let table = include_str!("../../../testdata/rank_sum.tsv");
    let mut cases = 0;
    let mut worst = 0.0_f64;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let (name, x, y) = (f[0], parse(f[1]), parse(f[2]));
        let expected: Vec<f64> = f[3..8].iter().map(|v| v.parse().unwrap()).collect();
        let t = rank_sum(&x, &y, 0.98).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = [t.u, t.p_value, t.estimate, t.ci.0, t.ci.1];
        for (what, (g, e)) in ["W", "p", "estimate", "ci_lower", "ci_upper"].iter().zip(got.iter().zip(&expected)) {
            assert!((g - e).abs() <= 1e-9, "{name} {what}: got {g:.17}, R says {e:.17}");
            worst = worst.max((g - e).abs());
        }
        cases += 1;
    }
    assert_eq!(cases, 13);
    eprintln!("largest difference from R over {cases} cases: {worst:e}");
}

fn metric(name: &str, control: &[f64], experiment: &[f64]) -> MetricInput {
    MetricInput {
        name: name.into(),
        control: control.to_vec(),
        experiment: experiment.to_vec(),
        direction: Direction::Either,
        group: "default".into(),
        critical: false,
        must_have_data: false,
        muted: false,
        nan_strategy: NanStrategy::Remove,
        outlier_factor: None,
        effect_measure: EffectMeasure::MeanRatio,
        allowed_increase: None,
        allowed_decrease: None,
        critical_increase: None,
        critical_decrease: None,
    }
}

fn settings() -> Settings {
    Settings { group_weights: BTreeMap::new(), pass: 95.0, marginal: 75.0, confidence_level: DEFAULT_CONFIDENCE }
}

const BASE: [f64; 12] = [100.0, 102.0, 98.0, 101.0, 99.0, 103.0, 97.0, 100.5, 99.5, 101.5, 98.5, 100.2];

#[test]
fn a_clear_increase_is_high_and_fails_the_group() {
    let slow: Vec<f64> = BASE.iter().map(|x| x * 1.5).collect();
    let j = judge(&[metric("latency", &BASE, &slow), metric("errors", &BASE, &BASE)], &settings());
    assert_eq!(j.metrics[0].classification, Classification::High);
    let test = j.metrics[0].test.as_ref().unwrap();
    assert!(test.p_value < 1e-4 && test.ci.0 > 0.0 && test.estimate > 40.0, "{test:?}");
    assert!((j.metrics[0].mean_ratio - 1.5).abs() < 1e-12);
    assert_eq!(j.metrics[1].classification, Classification::Pass);
    assert_eq!(j.metrics[1].reason, "the samples are identical");
    assert_eq!(j.score, 50.0);
    assert_eq!(j.verdict, Verdict::Fail);
}

#[test]
fn direction_and_effect_size_filter() {
    let fast: Vec<f64> = BASE.iter().map(|x| x * 0.5).collect();
    let mut m = metric("latency", &BASE, &fast);
    assert_eq!(classify(&m, 0.98).classification, Classification::Low);
    m.direction = Direction::Increase;
    assert_eq!(
        classify(&m, 0.98).classification,
        Classification::Pass,
        "a decrease is fine when only increases are bad"
    );
    let slower: Vec<f64> = BASE.iter().map(|x| x * 1.1).collect();
    let mut m = metric("latency", &BASE, &slower);
    assert_eq!(classify(&m, 0.98).classification, Classification::High);
    m.allowed_increase = Some(1.2);
    assert_eq!(classify(&m, 0.98).classification, Classification::Pass, "10 % is under the allowed 20 %");
    m.effect_measure = EffectMeasure::Cles;
    m.allowed_increase = None;
    let r = classify(&m, 0.98);
    assert_eq!(r.classification, Classification::High);
    assert!(r.cles > 0.9 && r.cles <= 1.0, "{}", r.cles);
}

#[test]
fn critical_metrics_fail_everything() {
    let slow: Vec<f64> = BASE.iter().map(|x| x * 2.0).collect();
    let mut m = metric("latency", &BASE, &slow);
    m.critical = true;
    let mut others: Vec<MetricInput> = (0..5).map(|i| metric(&format!("ok{i}"), &BASE, &BASE)).collect();
    others.push(m.clone());
    let j = judge(&others, &settings());
    assert_eq!(j.score, 0.0);
    assert!(j.reason.starts_with("canary failed: critical metric \"latency\""), "{}", j.reason);
    m.critical_increase = Some(3.0);
    others.pop();
    others.push(m);
    let j = judge(&others, &settings());
    assert!(!j.metrics[5].critical, "a 2x increase is under the critical 3x");
    assert_eq!(j.score, 83.33);
    assert_eq!(j.verdict, Verdict::Marginal);
}

#[test]
fn missing_data_rules() {
    let mut m = metric("errors", &[f64::NAN, f64::NAN], &[1.0, 2.0]);
    assert_eq!(classify(&m, 0.98).classification, Classification::Nodata);
    m.must_have_data = true;
    assert_eq!(classify(&m, 0.98).classification, Classification::NodataFailMetric);
    m.nan_strategy = NanStrategy::Replace;
    assert_eq!(classify(&m, 0.98).classification, Classification::High, "NaN → 0 against 1, 2");
    let nodata = metric("a", &[], &[1.0]);
    let j = judge(&[nodata.clone(), metric("b", &BASE, &BASE)], &settings());
    assert_eq!((j.score, j.reason.as_str()), (0.0, "1 of 2 metrics have no data"));
    let j = judge(&[nodata, metric("b", &BASE, &BASE), metric("c", &BASE, &BASE)], &settings());
    assert_eq!(j.score, 100.0, "a Nodata metric is left out of its group");
}

#[test]
fn constant_samples_get_noise_and_zero_means_skip_the_ratio() {
    let m = metric("errors", &[0.0; 10], &[1.0; 10]);
    let r = classify(&m, 0.98);
    assert_eq!(r.classification, Classification::High);
    assert!(r.mean_ratio.is_nan(), "mean of control is 0");
    let r = classify(&metric("x", &[5.0; 8], &[5.0; 8]), 0.98);
    assert_eq!(r.classification, Classification::Pass);
}

#[test]
fn outliers_removed_with_widened_fences() {
    let with_outlier = [10.0, 11.0, 10.5, 9.8, 10.2, 250.0, 10.1, 10.3, 9.9, 10.0];
    let kept = transform(&with_outlier, NanStrategy::Remove, Some(3.0));
    assert!(!kept.contains(&250.0));
    assert_eq!(kept.len(), 9);
    assert_eq!(transform(&with_outlier, NanStrategy::Remove, None).len(), 10);
}

#[test]
fn weights_and_thresholds() {
    let slow: Vec<f64> = BASE.iter().map(|x| x * 1.5).collect();
    let mut a = metric("latency", &BASE, &slow);
    a.group = "latency".into();
    let mut b = metric("errors", &BASE, &BASE);
    b.group = "errors".into();
    let mut s = settings();
    s.group_weights.insert("errors".into(), 80.0);
    let j = judge(&[a.clone(), b.clone()], &s);
    assert_eq!(j.score, 80.0, "errors 100 × 0.8 + latency 0 × (the 20 left)");
    assert_eq!(j.verdict, Verdict::Marginal);
    a.muted = true;
    let j = judge(&[a, b], &s);
    assert_eq!(j.groups.len(), 1);
    assert_eq!(j.score, 80.0, "weights of absent groups are not renormalised (Kayenta)");
}
