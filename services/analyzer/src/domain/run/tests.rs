use time::macros::datetime;

use super::*;

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn spec(name: &str) -> MetricSpec {
    MetricSpec {
        name: name.into(),
        interval: Some(Duration::from_secs(30)),
        initial_delay: Duration::ZERO,
        count: Some(3),
        success_condition: Some("result < 0.01".into()),
        failure_condition: None,
        failure_limit: 0,
        inconclusive_limit: 0,
        consecutive_error_limit: DEFAULT_CONSECUTIVE_ERROR_LIMIT,
        consecutive_success_limit: 0,
        dry_run: false,
        retention: DEFAULT_RETENTION,
        severity: Severity::Critical,
        no_data: NoDataPolicy::Inconclusive,
        provider: Provider::Prometheus {
            address: "http://127.0.0.1:9090".into(),
            query: "q".into(),
            timeout: Duration::from_secs(30),
            range: None,
        },
    }
}

fn value(x: f64) -> Observation {
    Observation::Value { value: Value::List(vec![Value::Num(x)]), detail: String::new() }
}

/// Judges and records `observation` at `T0 + at` seconds.
fn measure(spec: &MetricSpec, st: &mut MetricState, observation: Observation, at: i64) {
    let (phase, message, no_data) = judge(spec, &observation);
    let t = T0 + time::Duration::seconds(at);
    record(spec, st, Measurement { phase, value: String::new(), message, started_at: t, finished_at: t, no_data });
}

#[test]
fn conditions_follow_argo_evaluate_result() {
    let mut s = spec("m");
    assert_eq!(judge(&s, &value(0.001)).0, Phase::Successful);
    assert_eq!(judge(&s, &value(0.5)).0, Phase::Failed, "success condition false and no failure condition: failed");
    s.success_condition = None;
    s.failure_condition = Some("result > 0.05".into());
    assert_eq!(
        judge(&s, &value(0.02)).0,
        Phase::Successful,
        "failure condition false and no success condition: passed"
    );
    s.success_condition = Some("result < 0.01".into());
    assert_eq!(judge(&s, &value(0.02)).0, Phase::Inconclusive, "both set, neither true");
    s.success_condition = Some("result > 0".into());
    assert_eq!(judge(&s, &value(0.5)).0, Phase::Failed, "both true: failure wins");
    s.success_condition = None;
    s.failure_condition = None;
    assert_eq!(judge(&s, &value(123.0)).0, Phase::Successful, "no conditions: passes unless it errors");
    assert_eq!(judge(&s, &Observation::Error("timeout".into())).0, Phase::Error);
    s.success_condition = Some("result[5] > 0".into());
    let (phase, message, _) = judge(&s, &value(1.0));
    assert_eq!(phase, Phase::Error, "an evaluation error is an error measurement");
    assert!(message.contains("out of range"), "{message}");
}

#[test]
fn no_data_is_its_own_outcome() {
    let mut s = spec("m");
    let empty = Observation::Value { value: Value::List(vec![]), detail: String::new() };
    assert_eq!(judge(&s, &empty), (Phase::Inconclusive, "no data".into(), true));
    s.no_data = NoDataPolicy::Failed;
    assert_eq!(judge(&s, &empty).0, Phase::Failed);
    s.no_data = NoDataPolicy::Successful;
    assert_eq!(
        judge(&s, &Observation::Value { value: Value::Num(f64::NAN), detail: String::new() }).0,
        Phase::Successful
    );
    s.no_data = NoDataPolicy::Error;
    assert_eq!(judge(&s, &Observation::Value { value: Value::Null, detail: String::new() }).0, Phase::Error);
}

#[test]
fn jobs_pass_on_exit_code_zero() {
    let mut s = spec("smoke");
    s.success_condition = None;
    s.provider = Provider::Job { command: vec!["true".into()], timeout: Duration::from_secs(1), env: vec![] };
    let exit = |code: f64| Observation::Value { value: Value::Num(code), detail: "out".into() };
    assert_eq!(judge(&s, &exit(0.0)).0, Phase::Successful);
    assert_eq!(judge(&s, &exit(3.0)).0, Phase::Failed);
}

#[test]
fn count_reached_is_successful_and_failure_limit_counts() {
    let s = spec("m");
    let mut st = MetricState::default();
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Pending);
    for i in 0..2 {
        measure(&s, &mut st, value(0.001), i * 30);
        assert_eq!(metric_phase(&s, &st, false).0, Phase::Running);
    }
    measure(&s, &mut st, value(0.001), 60);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Successful);

    let mut s = spec("m");
    s.failure_limit = 1;
    let mut st = MetricState::default();
    measure(&s, &mut st, value(0.5), 0);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Running, "failed == limit is allowed");
    measure(&s, &mut st, value(0.5), 30);
    let (phase, message) = metric_phase(&s, &st, false);
    assert_eq!(phase, Phase::Failed);
    assert_eq!(message, "2 failed measurement(s), limit 1");

    s.failure_limit = -1;
    let mut st = MetricState::default();
    for i in 0..3 {
        measure(&s, &mut st, value(0.5), i * 30);
    }
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Successful, "failureLimit -1 never fails; count reached");
}

#[test]
fn errors_do_not_use_up_count_and_stop_after_the_limit() {
    let s = spec("m");
    let mut st = MetricState::default();
    for i in 0..4 {
        measure(&s, &mut st, Observation::Error("connection refused".into()), i * 10);
        assert_eq!(metric_phase(&s, &st, false).0, Phase::Running, "{} errors ≤ limit 4", i + 1);
    }
    assert_eq!(st.count, 0);
    assert_eq!(
        next_due(&s, &st, T0, false),
        Some(T0 + time::Duration::seconds(40)),
        "errors are retried after min(interval, 10 s)"
    );
    measure(&s, &mut st, Observation::Error("connection refused".into()), 40);
    assert_eq!(metric_phase(&s, &st, false), (Phase::Error, "5 consecutive error(s), limit 4".into()));

    // A success resets the streak.
    let mut st = MetricState::default();
    for i in 0..4 {
        measure(&s, &mut st, Observation::Error("x".into()), i);
    }
    measure(&s, &mut st, value(0.0), 5);
    measure(&s, &mut st, Observation::Error("x".into()), 6);
    assert_eq!(st.consecutive_error, 1);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Running);
}

#[test]
fn later_limits_win_as_in_argo() {
    let mut s = spec("m");
    s.success_condition = Some("result < 0.01".into());
    s.failure_condition = Some("result > 0.05".into());
    s.count = Some(10);
    s.failure_limit = 0;
    s.inconclusive_limit = 0;
    let mut st = MetricState { failed: 1, inconclusive: 1, count: 2, ..Default::default() };
    st.measurements.push_back(Measurement {
        phase: Phase::Inconclusive,
        value: String::new(),
        message: String::new(),
        started_at: T0,
        finished_at: T0,
        no_data: false,
    });
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Inconclusive);
}

#[test]
fn single_measurement_and_initial_delay() {
    let mut s = spec("m");
    s.interval = None;
    s.count = Some(1);
    s.initial_delay = Duration::from_secs(60);
    let mut st = MetricState::default();
    assert_eq!(next_due(&s, &st, T0, false), Some(T0 + time::Duration::seconds(60)));
    measure(&s, &mut st, value(0.0), 60);
    assert_eq!(next_due(&s, &st, T0, false), None);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Successful);
}

#[test]
fn consecutive_success_limit_completes_early_or_is_inconclusive() {
    let mut s = spec("m");
    s.count = Some(5);
    s.failure_limit = 3;
    s.consecutive_success_limit = 2;
    let mut st = MetricState::default();
    measure(&s, &mut st, value(0.5), 0);
    measure(&s, &mut st, value(0.0), 30);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Running);
    measure(&s, &mut st, value(0.0), 60);
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Successful, "streak of 2 reached before count");

    let mut st = MetricState::default();
    for (i, x) in [0.0, 0.5, 0.0, 0.5, 0.0].iter().enumerate() {
        measure(&s, &mut st, value(*x), i as i64 * 30);
    }
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Inconclusive, "count reached without the streak");
    s.failure_limit = -1;
    assert_eq!(metric_phase(&s, &st, false).0, Phase::Failed, "only the streak was asked for");
}

#[test]
fn run_is_worst_of_and_fails_fast() {
    let a = spec("error-rate");
    let mut b = spec("latency");
    b.count = None; // indefinite
    let specs = vec![a.clone(), b.clone()];
    let mut states = vec![MetricState::default(), MetricState::default()];
    let first = assess(&specs, &mut states, false);
    assert_eq!((first.phase, first.terminating), (Phase::Running, false));
    measure(&b, &mut states[1], value(0.0), 0);
    measure(&a, &mut states[0], value(0.5), 0);
    let result = assess(&specs, &mut states, false);
    assert_eq!(result.phase, Phase::Failed);
    assert!(result.terminating);
    assert_eq!(states[1].phase, Some(Phase::Successful), "fail-fast terminates the indefinite metric");
    assert_eq!(result.message, "metric \"error-rate\" failed: 1 failed measurement(s), limit 0");
    assert_eq!(result.severity, Some(Severity::Critical));
    assert_eq!(next_due(&b, &states[1], T0, true), None);
}

#[test]
fn worst_order_is_failed_error_inconclusive() {
    let mut specs = vec![spec("a"), spec("b"), spec("c")];
    specs[0].severity = Severity::Low;
    specs[1].severity = Severity::High;
    specs[2].severity = Severity::Medium;
    let mut states = vec![
        MetricState { phase: Some(Phase::Inconclusive), ..Default::default() },
        MetricState { phase: Some(Phase::Error), ..Default::default() },
        MetricState { phase: Some(Phase::Successful), ..Default::default() },
    ];
    let result = assess(&specs, &mut states, false);
    assert_eq!(result.phase, Phase::Error);
    assert_eq!(result.severity, Some(Severity::High));
    states[2].phase = Some(Phase::Failed);
    assert_eq!(assess(&specs, &mut states, false).phase, Phase::Failed);
}

#[test]
fn dry_run_metrics_never_decide() {
    let mut dry = spec("dry");
    dry.dry_run = true;
    dry.count = Some(1);
    let real = spec("real");
    let specs = vec![dry.clone(), real.clone()];
    let mut states = vec![MetricState::default(), MetricState::default()];
    measure(&dry, &mut states[0], value(0.9), 0);
    let result = assess(&specs, &mut states, false);
    assert_eq!(states[0].phase, Some(Phase::Failed));
    assert_eq!(
        (result.phase, result.terminating),
        (Phase::Running, false),
        "a failed dry-run metric does not fail fast"
    );
    for i in 0..3 {
        measure(&real, &mut states[1], value(0.0), i * 30);
    }
    let result = assess(&specs, &mut states, false);
    assert_eq!(result.phase, Phase::Successful);
    assert_eq!(result.severity, None);
}

#[test]
fn terminated_runs_are_successful_unless_a_limit_was_violated() {
    let mut s = spec("bg");
    s.count = None;
    let specs = vec![s.clone(), spec("never-measured")];
    let mut states = vec![MetricState::default(), MetricState::default()];
    measure(&s, &mut states[0], value(0.0), 0);
    let result = assess(&specs, &mut states, true);
    assert_eq!(result.phase, Phase::Successful);
    assert_eq!(result.message, "terminated; no metric failed");
    assert_eq!(states[1].message, "terminated before the first measurement");
}

#[test]
fn retention_keeps_the_latest() {
    let mut s = spec("m");
    s.retention = 2;
    s.count = Some(5);
    let mut st = MetricState::default();
    for i in 0..4 {
        measure(&s, &mut st, value(0.0), i);
    }
    assert_eq!(st.measurements.len(), 2);
    assert_eq!(st.count, 4, "counters are not limited by retention");
    assert_eq!(st.measurements[0].started_at, T0 + time::Duration::seconds(2));
}
