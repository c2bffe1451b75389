//! What the pages show, built from the API's messages: the environments matrix, a release's
//! analysis charts and weights over time. Free of HTTP and gRPC so it is tested with plain tests.

use std::collections::BTreeMap;

use hopngo_client::views::{EscalationView, FreezeView, FrozenWindowView, PendingApprovalView, ReleaseView, time};
use hopngo_metrics_lang::condition::Condition;
use hopngo_proto::{analyzer as apb, events as epb, release as pb};
use serde::Serialize;

/// Phases of a release still under way.
const ACTIVE: [pb::ReleasePhase; 4] = [
    pb::ReleasePhase::Pending,
    pb::ReleasePhase::Progressing,
    pb::ReleasePhase::Paused,
    pb::ReleasePhase::AwaitingApproval,
];

fn is_active(r: &pb::Release) -> bool {
    ACTIVE.iter().any(|p| *p as i32 == r.phase)
}

/// Every service × environment of the applied config.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatrixView {
    /// Environments in promotion order, with what keeps releases out of them now.
    pub environments: Vec<EnvironmentColumn>,
    /// One row per service, in the config's order.
    pub rows: Vec<MatrixRow>,
    /// Releases waiting for an approval, oldest first.
    pub awaiting_approval: Vec<ReleaseLine>,
}

/// One environment's column head.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvironmentColumn {
    pub name: String,
    /// Freezes in force or coming.
    pub freezes: Vec<FreezeView>,
    /// Freeze windows of the config open now.
    pub windows: Vec<FrozenWindowView>,
}

/// A service's row.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatrixRow {
    pub service: String,
    pub cells: Vec<MatrixCell>,
}

/// A service in an environment.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MatrixCell {
    pub environment: String,
    /// The artifact serving as stable (none before a first release succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stable: Option<String>,
    /// The newest release here: the one running, or how the last one ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<ReleaseLine>,
    /// An open escalation's condition (`failed`, `stuck`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation: Option<String>,
}

/// A release in one line.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseLine {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub artifact: String,
    pub phase: String,
    pub active: bool,
    pub canary_weight: u32,
    /// The step it is at (`3/7 pause`), while active.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub step: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending_approval: Option<PendingApprovalView>,
    pub created_by: String,
    pub updated_at: Option<String>,
}

impl From<&pb::Release> for ReleaseLine {
    fn from(r: &pb::Release) -> Self {
        let view = ReleaseView::from(r);
        let active = is_active(r);
        let step = match view.steps.get(r.current_step_index as usize) {
            Some(s) if active => format!("{}/{} {}", s.index + 1, view.steps.len(), s.name),
            _ => String::new(),
        };
        ReleaseLine {
            id: view.id,
            service: view.service,
            environment: view.environment,
            artifact: view.artifact,
            phase: view.phase,
            active,
            canary_weight: view.canary_weight,
            step,
            message: view.message,
            pending_approval: view.pending_approval.filter(|_| r.phase == pb::ReleasePhase::AwaitingApproval as i32),
            created_by: view.created_by,
            updated_at: view.updated_at,
        }
    }
}

/// The stable artifact a cell's newest release leaves: its own once it succeeded, else the one
/// it runs beside (or returned to).
fn stable_after(r: &pb::Release) -> Option<String> {
    let artifact = if r.phase == pb::ReleasePhase::Succeeded as i32 { &r.artifact } else { &r.stable_artifact };
    (!artifact.is_empty()).then(|| artifact.clone())
}

/// The matrix from the config's environments and services, releases newest first (the newest
/// of each service and environment decides its cell), freezes and open escalations.
pub fn matrix(
    environments: &[String],
    services: &[String],
    releases_newest_first: &[pb::Release],
    freezes: &pb::ListFreezesResponse,
    escalations: &[EscalationView],
) -> MatrixView {
    let mut newest: BTreeMap<(&str, &str), &pb::Release> = BTreeMap::new();
    for r in releases_newest_first {
        newest.entry((r.service.as_str(), r.environment.as_str())).or_insert(r);
    }
    let rows = services
        .iter()
        .map(|service| MatrixRow {
            service: service.clone(),
            cells: environments
                .iter()
                .map(|environment| {
                    let release = newest.get(&(service.as_str(), environment.as_str()));
                    MatrixCell {
                        environment: environment.clone(),
                        stable: release.and_then(|r| stable_after(r)),
                        release: release.map(|r| ReleaseLine::from(*r)),
                        escalation: escalations
                            .iter()
                            .find(|e| {
                                &e.service == service && &e.environment == environment && e.acknowledged_at.is_none()
                            })
                            .map(|e| e.condition.clone()),
                    }
                })
                .collect(),
        })
        .collect();
    let mut awaiting: Vec<&pb::Release> =
        newest.values().copied().filter(|r| r.phase == pb::ReleasePhase::AwaitingApproval as i32).collect();
    awaiting.sort_by_key(|r| r.updated_at.as_ref().map(|t| (t.seconds, t.nanos)));
    MatrixView {
        environments: environments
            .iter()
            .map(|name| EnvironmentColumn {
                name: name.clone(),
                freezes: freezes
                    .freezes
                    .iter()
                    .filter(|f| &f.environment == name && f.ended_time.is_none())
                    .map(FreezeView::from)
                    .collect(),
                windows: freezes
                    .windows
                    .iter()
                    .filter(|w| &w.environment == name)
                    .map(|w| FrozenWindowView {
                        environment: w.environment.clone(),
                        window: w.window.clone(),
                        reason: w.reason.clone(),
                        until: time(&w.end_time),
                    })
                    .collect(),
            })
            .collect(),
        rows,
        awaiting_approval: awaiting.into_iter().map(ReleaseLine::from).collect(),
    }
}

/// The cells the newest releases left out: services and environments of the config with no
/// release among `releases` (an older one may exist beyond the page read).
pub fn cells_without_release(
    environments: &[String],
    services: &[String],
    releases: &[pb::Release],
) -> Vec<(String, String)> {
    let mut missing = Vec::new();
    for service in services {
        for environment in environments {
            if !releases.iter().any(|r| &r.service == service && &r.environment == environment) {
                missing.push((service.clone(), environment.clone()));
            }
        }
    }
    missing
}

/// One metric's measurements over time, one series per run (the canary's, and the stable's or
/// a baseline's where a run measured it), with the lines its conditions draw.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricChart {
    pub metric: String,
    pub severity: String,
    pub dry_run: bool,
    pub thresholds: Vec<ThresholdLine>,
    pub series: Vec<Series>,
}

/// A line a condition draws: where `result OP value` stops (failure) or starts (success) holding.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdLine {
    /// `success` or `failure`: which condition it comes from.
    pub condition: &'static str,
    pub op: &'static str,
    pub value: f64,
    /// The condition as written, for the legend.
    pub text: String,
}

/// One run's measurements of a metric.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Series {
    /// What the run measured: its `track` argument (`canary`, `stable`, `baseline`), else the
    /// run's kind.
    pub track: String,
    pub run_id: String,
    /// `background`, `step`, ... (the release's record of the run).
    pub kind: String,
    pub points: Vec<Point>,
}

/// One measurement.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    pub time: Option<String>,
    /// The number measured (none: no data, or not a number).
    pub value: Option<f64>,
    pub phase: String,
    /// Failed or errored: what a chart marks.
    pub failing: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A measured value as a number: a plain number, or the first number of a JSON list (a
/// Prometheus vector's single sample).
fn number(value: &str) -> Option<f64> {
    let value = value.trim();
    if let Ok(n) = value.parse::<f64>() {
        return n.is_finite().then_some(n);
    }
    fn first(v: &serde_json::Value) -> Option<f64> {
        match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Array(items) => items.iter().find_map(first),
            _ => None,
        }
    }
    serde_json::from_str::<serde_json::Value>(value).ok().as_ref().and_then(first).filter(|n| n.is_finite())
}

fn thresholds(condition: &str, which: &'static str) -> Vec<ThresholdLine> {
    let Ok(parsed) = Condition::parse(condition) else { return Vec::new() };
    parsed
        .thresholds()
        .into_iter()
        .map(|t| ThresholdLine { condition: which, op: t.op, value: t.value, text: condition.to_string() })
        .collect()
}

/// Charts of every metric the release's runs measured, in the order the runs list them.
pub fn charts(release: &pb::Release, runs: &[apb::AnalysisRun]) -> Vec<MetricChart> {
    let mut charts: Vec<MetricChart> = Vec::new();
    for run in runs {
        let kind =
            release.analysis_runs.iter().find(|a| a.run_id == run.id).map(|a| a.kind.clone()).unwrap_or_default();
        let track = run.args.get("track").cloned().unwrap_or_else(|| kind.clone());
        for metric in &run.metrics {
            let severity = hopngo_client::views::severity_name(metric.severity);
            let points = metric
                .measurements
                .iter()
                .map(|m| {
                    let phase = apb::AnalysisPhase::try_from(m.phase).unwrap_or_default();
                    Point {
                        time: time(&m.finished_at),
                        value: number(&m.value),
                        phase: hopngo_client::views::analysis_phase_name(m.phase),
                        failing: matches!(phase, apb::AnalysisPhase::Failed | apb::AnalysisPhase::Error),
                        message: m.message.clone(),
                    }
                })
                .collect();
            let series = Series { track: track.clone(), run_id: run.id.clone(), kind: kind.clone(), points };
            match charts.iter_mut().find(|c| c.metric == metric.name) {
                Some(chart) => chart.series.push(series),
                None => {
                    let mut lines = thresholds(&metric.success_condition, "success");
                    lines.extend(thresholds(&metric.failure_condition, "failure"));
                    charts.push(MetricChart {
                        metric: metric.name.clone(),
                        severity,
                        dry_run: metric.dry_run,
                        thresholds: lines,
                        series: vec![series],
                    });
                }
            }
        }
    }
    charts
}

/// The canary's weight at a moment.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WeightPoint {
    pub time: Option<String>,
    pub weight: u32,
    /// The transition that set it.
    pub transition: String,
}

/// The canary's weight over time from a release's events: 0 at its first event, then each change.
pub fn weights(events: &[epb::Event]) -> Vec<WeightPoint> {
    let mut points: Vec<WeightPoint> = Vec::new();
    for e in events {
        let Some(d) = &e.data else { continue };
        if points.last().is_some_and(|p| p.weight == d.canary_weight) {
            continue;
        }
        points.push(WeightPoint { time: time(&e.time), weight: d.canary_weight, transition: d.transition.clone() });
    }
    points
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(id: &str, service: &str, environment: &str, phase: pb::ReleasePhase, artifact: &str) -> pb::Release {
        pb::Release {
            id: id.into(),
            service: service.into(),
            environment: environment.into(),
            phase: phase as i32,
            artifact: artifact.into(),
            stable_artifact: "1.0.0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn each_cell_shows_its_newest_release_and_the_stable_it_leaves() {
        let envs = ["staging".to_string(), "production".to_string()];
        let services = ["booking".to_string(), "gateway".to_string()];
        let releases = [
            release("r4", "booking", "staging", pb::ReleasePhase::Progressing, "1.2.0"),
            release("r3", "booking", "production", pb::ReleasePhase::AwaitingApproval, "1.1.0"),
            release("r2", "booking", "staging", pb::ReleasePhase::Succeeded, "1.1.0"),
            release("r1", "gateway", "staging", pb::ReleasePhase::Aborted, "2.0.0"),
        ];
        let escalation = EscalationView {
            release_id: "r1".into(),
            service: "gateway".into(),
            environment: "staging".into(),
            condition: "aborted".into(),
            since: None,
            levels_notified: vec![],
            next_level: String::new(),
            next_at: None,
            acknowledged_by: String::new(),
            acknowledged_at: None,
            comment: String::new(),
        };
        let freezes = pb::ListFreezesResponse {
            freezes: vec![pb::Freeze {
                environment: "production".into(),
                reason: "launch".into(),
                ..Default::default()
            }],
            windows: vec![],
        };
        let m = matrix(&envs, &services, &releases, &freezes, &[escalation]);
        let booking = &m.rows[0].cells;
        assert_eq!(booking[0].release.as_ref().unwrap().id, "r4", "the newest, not the succeeded one");
        assert_eq!(booking[0].stable.as_deref(), Some("1.0.0"));
        assert!(booking[0].release.as_ref().unwrap().active);
        assert_eq!(booking[1].release.as_ref().unwrap().phase, "AWAITING_APPROVAL");
        let gateway = &m.rows[1].cells;
        assert_eq!(gateway[0].release.as_ref().unwrap().phase, "ABORTED");
        assert!(!gateway[0].release.as_ref().unwrap().active);
        assert_eq!(gateway[0].stable.as_deref(), Some("1.0.0"), "an aborted release leaves the stable it returned to");
        assert_eq!(gateway[0].escalation.as_deref(), Some("aborted"));
        assert!(gateway[1].release.is_none() && gateway[1].stable.is_none());
        assert_eq!(m.awaiting_approval.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["r3"]);
        assert_eq!(m.environments[1].freezes.len(), 1);
        assert!(m.environments[0].freezes.is_empty());
        let succeeded = [release("r2", "booking", "staging", pb::ReleasePhase::Succeeded, "1.1.0")];
        let m = matrix(&envs, &services, &succeeded, &freezes, &[]);
        assert_eq!(m.rows[0].cells[0].stable.as_deref(), Some("1.1.0"));
        assert_eq!(
            cells_without_release(&envs, &services, &succeeded),
            [
                ("booking".to_string(), "production".to_string()),
                ("gateway".to_string(), "staging".to_string()),
                ("gateway".to_string(), "production".to_string())
            ]
        );
    }

    fn measurement(phase: apb::AnalysisPhase, value: &str, second: i64) -> apb::Measurement {
        apb::Measurement {
            phase: phase as i32,
            value: value.into(),
            finished_at: Some(prost_types::Timestamp { seconds: 1_700_000_000 + second, nanos: 0 }),
            ..Default::default()
        }
    }

    #[test]
    fn charts_put_each_tracks_measurements_of_a_metric_on_one_chart_with_its_thresholds() {
        use apb::AnalysisPhase::{Failed, Inconclusive, Successful};
        let run = |id: &str, track: &str, values: Vec<apb::Measurement>| apb::AnalysisRun {
            id: id.into(),
            args: [("track".to_string(), track.to_string())].into(),
            metrics: vec![apb::MetricResult {
                name: "error-rate".into(),
                success_condition: "result < 0.01".into(),
                failure_condition: "result > 0.05".into(),
                measurements: values,
                ..Default::default()
            }],
            ..Default::default()
        };
        let canary = run(
            "c",
            "canary",
            vec![
                measurement(Successful, "0.001", 1),
                measurement(Failed, "[0.2]", 2),
                measurement(Inconclusive, "", 3),
            ],
        );
        let stable = run("s", "stable", vec![measurement(Successful, "0.002", 1)]);
        let r = pb::Release {
            analysis_runs: vec![pb::AnalysisSummary {
                run_id: "c".into(),
                kind: "background".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let charts = charts(&r, &[canary, stable]);
        assert_eq!(charts.len(), 1);
        let chart = &charts[0];
        assert_eq!(
            chart.thresholds.iter().map(|t| (t.condition, t.op, t.value)).collect::<Vec<_>>(),
            [("success", "<", 0.01), ("failure", ">", 0.05)]
        );
        assert_eq!(chart.series.iter().map(|s| s.track.as_str()).collect::<Vec<_>>(), ["canary", "stable"]);
        assert_eq!(chart.series[0].kind, "background");
        let points = &chart.series[0].points;
        assert_eq!(points.iter().map(|p| p.value).collect::<Vec<_>>(), [Some(0.001), Some(0.2), None]);
        assert_eq!(points.iter().map(|p| p.failing).collect::<Vec<_>>(), [false, true, false]);
        assert_eq!(points[0].time.as_deref(), Some("2023-11-14T22:13:21Z"));
    }

    #[test]
    fn weights_follow_the_events_changes() {
        let event = |weight: u32, transition: &str| epb::Event {
            data: Some(epb::ReleaseEventData {
                canary_weight: weight,
                transition: transition.into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let events =
            [event(0, "created"), event(0, "started"), event(25, "step"), event(25, "paused"), event(0, "rolled-back")];
        assert_eq!(
            weights(&events).iter().map(|p| (p.weight, p.transition.as_str())).collect::<Vec<_>>(),
            [(0, "created"), (25, "step"), (0, "rolled-back")]
        );
    }
}
