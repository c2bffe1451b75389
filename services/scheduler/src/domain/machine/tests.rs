use std::{collections::BTreeMap, sync::Mutex};

use time::macros::datetime;
use uuid::Uuid;

use super::*;
use crate::domain::{
    config::{DeliveryConfig, TimeoutOutcome},
    effects::{
        DesiredState, EffectError, JudgeRequest, Judgement, MetricJudgement, MigrationAction, MigrationObservation,
        MigrationPhase, MigrationRequest, PreflightCheck, PreflightRequest, RolloutControl, RolloutProgress,
        RunObservation, RunPhase, RunSamples, TargetObservation, Track, TrackState,
    },
    plan::{AnalysisSpec, CanaryScale, PlanMode, StepAction, compile},
    release::{NewRelease, Release},
};

const CONFIG: &str = r#"
environments:
  - name: staging
  - name: production
    approval: {minApprovals: 2, roles: [release-manager]}
analysisTemplates:
  - name: slo
    metrics:
      - name: errors
        successCondition: result < 0.01
        provider: {prometheus: {address: "http://127.0.0.1:9090", query: "x"}}
  - name: judge
    metrics:
      - name: latency
        interval: 10s
        provider: {prometheus: {address: "http://127.0.0.1:9090", query: "latency{track='{{args.track}}'}"}}
      - name: errors
        interval: 10s
        provider: {prometheus: {address: "http://127.0.0.1:9090", query: "errors{track='{{args.track}}'}"}}
services:
  - name: search
    replicas: 4
    strategy:
      canary:
        steps:
          - setWeight: 10
          - experiment:
              templates: [judge]
              weight: 20
              replicas: 2
              interval: 1m
              intervals: 3
              metrics: {latency: {direction: increase, group: latency}, errors: {direction: increase, critical: true}}
          - setWeight: 50
  - name: booking
    replicas: 4
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 30s}
          - analysis: {templates: [slo]}
          - setWeight: 50
          - pause: {}
  - name: gateway
    replicas: 2
    strategy:
      blueGreen:
        prePromotionAnalysis: {templates: [slo]}
        postPromotionAnalysis: {templates: [slo]}
        scaleDownDelay: 30s
  - name: legacy
    replicas: 3
    strategy: {canary: {steps: [{verify: {templates: [slo]}}]}}
    argoRollout: {name: legacy, container: app, image: registry.example/legacy}
"#;

/// In-memory deployer/analyzer/migrator that records every call.
struct Fake {
    applies: Mutex<Vec<(String, DesiredState)>>,
    analyses: Mutex<Vec<String>>,
    terminated: Mutex<Vec<String>>,
    run_phase: Mutex<RunPhase>,
    run_severity: Mutex<crate::domain::config::Severity>,
    deployer_down: Mutex<bool>,
    converged: Mutex<bool>,
    migrations: Mutex<Vec<(String, MigrationRequest)>>,
    migration_phase: Mutex<MigrationPhase>,
    refuse_undo: Mutex<bool>,
    preflights: Mutex<Vec<PreflightRequest>>,
    preflight_checks: Mutex<Vec<PreflightCheck>>,
    /// What Argo reports about the service's Rollout (Argo mode), and what it was asked.
    rollout: Mutex<Option<RolloutProgress>>,
    controls: Mutex<Vec<RolloutControl>>,
    /// What the baseline's and the canary's runs measured, the judge's scripted scores (with
    /// their verdicts), and what it was asked.
    samples: Mutex<[BTreeMap<String, Vec<f64>>; 2]>,
    scores: Mutex<std::collections::VecDeque<(f64, &'static str)>>,
    judged: Mutex<Vec<JudgeRequest>>,
}

impl Fake {
    fn new() -> Fake {
        Fake {
            applies: Mutex::new(Vec::new()),
            analyses: Mutex::new(Vec::new()),
            terminated: Mutex::new(Vec::new()),
            run_phase: Mutex::new(RunPhase::Running),
            run_severity: Mutex::new(crate::domain::config::Severity::Critical),
            deployer_down: Mutex::new(false),
            converged: Mutex::new(true),
            migrations: Mutex::new(Vec::new()),
            migration_phase: Mutex::new(MigrationPhase::Succeeded),
            refuse_undo: Mutex::new(false),
            preflights: Mutex::new(Vec::new()),
            preflight_checks: Mutex::new(vec![PreflightCheck {
                name: "backend/command".into(),
                ok: true,
                message: "found".into(),
            }]),
            rollout: Mutex::new(None),
            controls: Mutex::new(Vec::new()),
            samples: Mutex::new(Default::default()),
            scores: Mutex::new(Default::default()),
            judged: Mutex::new(Vec::new()),
        }
    }
    fn set_run(&self, p: RunPhase) {
        *self.run_phase.lock().unwrap() = p;
    }
    fn last_apply(&self) -> DesiredState {
        self.applies.lock().unwrap().last().unwrap().1.clone()
    }
    fn keys(&self) -> Vec<String> {
        self.applies.lock().unwrap().iter().map(|(k, _)| k.clone()).collect()
    }
    fn down() -> EffectError {
        EffectError { dependency: "deployer", retryable: true, uncertain: false, message: "connection refused".into() }
    }
}

impl Effects for Fake {
    async fn apply_target(&self, key: &str, desired: &DesiredState) -> Result<(), EffectError> {
        if *self.deployer_down.lock().unwrap() {
            return Err(Fake::down());
        }
        self.applies.lock().unwrap().push((key.to_string(), desired.clone()));
        Ok(())
    }
    async fn target_status(&self, _: &str, _: &str) -> Result<TargetObservation, EffectError> {
        if *self.deployer_down.lock().unwrap() {
            return Err(Fake::down());
        }
        let weight = self.applies.lock().unwrap().last().map(|(_, d)| d.canary_weight).unwrap_or(0);
        let converged = *self.converged.lock().unwrap();
        Ok(TargetObservation {
            converged,
            canary_weight: weight,
            idempotency_key: String::new(),
            message: "1/4 ready".into(),
            address: "127.0.0.1:18000".into(),
            rollout: self.rollout.lock().unwrap().clone(),
        })
    }
    async fn control_rollout(&self, _: &str, _: &str, action: RolloutControl) -> Result<(), EffectError> {
        self.controls.lock().unwrap().push(action);
        Ok(())
    }
    async fn start_analysis(
        &self,
        key: &str,
        _: &AnalysisSpec,
        args: &BTreeMap<String, String>,
        _: &BTreeMap<String, String>,
    ) -> Result<String, EffectError> {
        for builtin in ["service", "environment", "artifact", "revision", "release", "track"] {
            assert!(args.contains_key(builtin), "{builtin} is passed to every run");
        }
        self.analyses.lock().unwrap().push(key.to_string());
        Ok(format!("run-{}", key.replace('/', "-")))
    }
    async fn analysis_status(&self, _: &str) -> Result<RunObservation, EffectError> {
        Ok(RunObservation {
            phase: *self.run_phase.lock().unwrap(),
            message: "errors=0.2".into(),
            severity: *self.run_severity.lock().unwrap(),
        })
    }
    async fn analysis_samples(&self, run_id: &str) -> Result<RunSamples, EffectError> {
        let track = usize::from(!run_id.contains("baseline"));
        Ok(RunSamples {
            observation: self.analysis_status(run_id).await?,
            samples: self.samples.lock().unwrap()[track].clone(),
        })
    }
    async fn judge(&self, request: &JudgeRequest) -> Result<Judgement, EffectError> {
        self.judged.lock().unwrap().push(request.clone());
        let (score, verdict) = self.scores.lock().unwrap().pop_front().expect("a scripted score");
        Ok(Judgement {
            score,
            verdict: verdict.into(),
            reason: format!("scored {score}"),
            metrics: request
                .metrics
                .iter()
                .map(|m| MetricJudgement {
                    name: m.name.clone(),
                    classification: if verdict == "fail" { "HIGH".into() } else { "PASS".into() },
                    baseline_count: m.baseline.len() as u32,
                    canary_count: m.canary.len() as u32,
                    ..Default::default()
                })
                .collect(),
            group_scores: BTreeMap::new(),
        })
    }
    async fn terminate_analysis(&self, run_id: &str, _: &str) -> Result<RunObservation, EffectError> {
        self.terminated.lock().unwrap().push(run_id.to_string());
        Ok(RunObservation {
            phase: RunPhase::Successful,
            message: "terminated".into(),
            severity: crate::domain::config::Severity::Critical,
        })
    }
    async fn start_migration(&self, key: &str, request: &MigrationRequest) -> Result<String, EffectError> {
        if *self.refuse_undo.lock().unwrap() && matches!(request.action, MigrationAction::Undo { .. }) {
            return Err(EffectError {
                dependency: "migrator",
                retryable: false,
                uncertain: false,
                message: "InvalidArgument: no undo script for 2 (V2__x.sql)".into(),
            });
        }
        let mut m = self.migrations.lock().unwrap();
        m.push((key.to_string(), request.clone()));
        Ok(format!("m{}", m.len()))
    }
    async fn migration_status(&self, run_id: &str) -> Result<MigrationObservation, EffectError> {
        // The migrate run takes the schema from 1 to 2; an undo takes it back to where it asks.
        let m = self.migrations.lock().unwrap();
        let index: usize = run_id.trim_start_matches('m').parse().unwrap();
        let (before, after) = match &m[index - 1].1.action {
            MigrationAction::Migrate { .. } => ("1".to_string(), "2".to_string()),
            MigrationAction::Undo { to_version } => ("2".to_string(), to_version.clone().unwrap_or_default()),
        };
        Ok(MigrationObservation {
            phase: *self.migration_phase.lock().unwrap(),
            message: "ok".into(),
            version_before: before,
            version_after: after,
        })
    }
    async fn preflight(&self, request: &PreflightRequest) -> Result<Vec<PreflightCheck>, EffectError> {
        if *self.deployer_down.lock().unwrap() {
            return Err(Fake::down());
        }
        self.preflights.lock().unwrap().push(request.clone());
        Ok(self.preflight_checks.lock().unwrap().clone())
    }
}

const T0: OffsetDateTime = datetime!(2026-11-26 12:00 UTC);

fn release(service: &str, environment: &str) -> Release {
    let config = DeliveryConfig::load(CONFIG).unwrap();
    let plan = compile(&config, service, environment, PlanMode::Normal).unwrap();
    Release::new(NewRelease {
        id: Uuid::nil(),
        service: service.into(),
        environment: environment.into(),
        revision: 2,
        artifact: "v2".into(),
        created_by: "alice".into(),
        now: T0,
        config_version: 1,
        plan,
        stable_artifact: Some("v1".into()),
        undo_of_revision: None,
        group_id: None,
        returns_release: None,
        reason: String::new(),
    })
}

fn at(secs: i64) -> OffsetDateTime {
    T0 + time::Duration::seconds(secs)
}

async fn tick(r: &mut Release, fx: &Fake, secs: i64) -> Advance {
    advance(r, at(secs), fx, &Settings::default()).await
}

fn kinds(a: &Advance) -> Vec<TransitionKind> {
    a.transitions.iter().map(|t| t.kind).collect()
}

#[tokio::test]
async fn canary_runs_to_succeeded() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    let a = tick(&mut r, &fx, 0).await;
    use TransitionKind::*;
    // A timed pause waits: nothing for anyone to do, so it is not a warning.
    assert_eq!(kinds(&a), vec![Started, StepCompleted, WeightChanged, StepCompleted, Waiting]);
    assert_eq!(crate::domain::events::severity(Waiting).as_str(), "INFO");
    assert_eq!(crate::domain::events::severity(Paused).as_str(), "WARNING");
    assert_eq!(r.phase, Phase::Paused);
    assert_eq!(r.preflight.len(), 1, "preflight ran first and its checks are kept");
    assert_eq!(a.wake_at, Some(at(30)));
    let first = fx.last_apply();
    assert_eq!(first.canary_weight, 25);
    assert_eq!(
        first.tracks,
        vec![
            TrackState { track: Track::Stable, artifact: "v1".into(), replicas: 4 },
            TrackState { track: Track::Canary, artifact: "v2".into(), replicas: 1 },
        ]
    );
    // Woken early: nothing happens.
    assert!(tick(&mut r, &fx, 10).await.transitions.is_empty());
    let a = tick(&mut r, &fx, 30).await;
    assert_eq!(kinds(&a), vec![StepCompleted, AnalysisStarted]);
    assert_eq!(r.phase, Phase::Progressing);
    fx.set_run(RunPhase::Successful);
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, StepCompleted, WeightChanged, StepCompleted, Paused]);
    assert_eq!(fx.last_apply().tracks[1].replicas, 2, "ceil(4 × 50%)");
    assert_eq!(a.wake_at, None, "an indefinite pause waits for a person");
    let t = promote(&mut r, false, "bob", "looks good", at(40)).unwrap();
    assert_eq!(t.iter().map(|t| t.kind).collect::<Vec<_>>(), vec![Promoted, StepCompleted]);
    let a = tick(&mut r, &fx, 41).await;
    assert_eq!(kinds(&a), vec![WeightChanged, Succeeded]);
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.completion, Some(Completion::Promoted));
    assert_eq!(fx.last_apply().tracks, vec![TrackState { track: Track::Stable, artifact: "v2".into(), replicas: 4 }]);
    tick(&mut r, &fx, 42).await;
    assert!(r.settled);
    let keys = fx.keys();
    let unique: std::collections::BTreeSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "every apply has its own key: {keys:?}");
    assert_eq!(keys[0], format!("{}/1/1", Uuid::nil()));
}

#[tokio::test]
async fn failed_analysis_aborts_and_returns_traffic_to_stable() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 31).await;
    use TransitionKind::*;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, Aborted, RolledBack]);
    assert_eq!(r.phase, Phase::Aborted);
    assert_eq!(r.completion, Some(Completion::Aborted));
    assert_eq!(r.steps[3].status, StepStatus::Failed);
    let back = fx.last_apply();
    assert_eq!(back.canary_weight, 0);
    assert_eq!(back.tracks, vec![TrackState { track: Track::Stable, artifact: "v1".into(), replicas: 4 }]);
    assert!(r.settled);
    assert_eq!(r.canary_weight, 0);
}

#[tokio::test]
async fn severity_decides_what_a_failed_analysis_does() {
    use crate::domain::config::Severity;
    use TransitionKind::*;
    // High: hold traffic for the grace period (300 s), measure again, abort if it still fails.
    let fx = Fake::new();
    *fx.run_severity.lock().unwrap() = Severity::High;
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Failed);
    let applies = fx.applies.lock().unwrap().len();
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, AnalysisCompleted]);
    assert_eq!(r.phase, Phase::Progressing);
    assert_eq!(a.wake_at, Some(at(331)));
    assert!(r.message.contains("holding traffic, measuring again at"), "{}", r.message);
    assert!(tick(&mut r, &fx, 200).await.transitions.is_empty(), "held during the grace period");
    assert_eq!(fx.applies.lock().unwrap().len(), applies, "traffic untouched while held");
    fx.set_run(RunPhase::Running);
    let a = tick(&mut r, &fx, 331).await;
    assert_eq!(kinds(&a), vec![AnalysisStarted]);
    assert!(fx.analyses.lock().unwrap().last().unwrap().contains("3-recheck"), "{:?}", fx.analyses.lock().unwrap());
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 340).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, Aborted, RolledBack]);
    assert!(r.message.contains("failed (high severity)"), "{}", r.message);

    // High, recovered within the grace period: the release goes on.
    let fx = Fake::new();
    *fx.run_severity.lock().unwrap() = Severity::High;
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Failed);
    tick(&mut r, &fx, 31).await;
    fx.set_run(RunPhase::Successful);
    tick(&mut r, &fx, 331).await;
    assert_eq!(r.canary_weight, 50);

    // Medium: pause for a person.
    let fx = Fake::new();
    *fx.run_severity.lock().unwrap() = Severity::Medium;
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, Paused]);

    // Low: notify and go on.
    let fx = Fake::new();
    *fx.run_severity.lock().unwrap() = Severity::Low;
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a)[..3], [AnalysisCompleted, AnalysisCompleted, StepCompleted]);
    assert!(a.transitions[1].message.ends_with("notify only"), "{}", a.transitions[1].message);
    assert_eq!(r.canary_weight, 50);
}

#[tokio::test]
async fn inconclusive_pauses_and_promote_skips_the_analysis() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    fx.set_run(RunPhase::Inconclusive);
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a), vec![TransitionKind::AnalysisCompleted, TransitionKind::Paused]);
    assert_eq!(r.phase, Phase::Paused);
    assert!(tick(&mut r, &fx, 60).await.transitions.is_empty(), "stays paused");
    promote(&mut r, false, "bob", "checked by hand", at(61)).unwrap();
    assert_eq!(r.steps[3].status, StepStatus::Skipped);
    assert_eq!(r.step_index, 4);
    tick(&mut r, &fx, 62).await;
    assert_eq!(r.canary_weight, 50);
}

#[tokio::test]
async fn promote_full_skips_everything_left() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    promote(&mut r, true, "bob", "hotfix", at(1)).unwrap();
    assert_eq!(
        promote(&mut r, true, "bob", "again", at(1)).unwrap_err(),
        ActionError::NotNow("a full promotion is already under way".into())
    );
    let a = tick(&mut r, &fx, 2).await;
    assert_eq!(kinds(&a), vec![TransitionKind::StepSkipped, TransitionKind::WeightChanged, TransitionKind::Succeeded]);
    assert_eq!(r.completion, Some(Completion::FastPromoted));
    assert!(r.steps[2..].iter().all(|s| s.status == StepStatus::Skipped));
    assert!(fx.analyses.lock().unwrap().is_empty());
    assert!(promote(&mut r, false, "bob", "", at(3)).is_err(), "nothing to promote once succeeded");
    // Before preflight has run, promote --full still runs it (and a failure still stops).
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    promote(&mut r, true, "bob", "hotfix", at(0)).unwrap();
    let a = tick(&mut r, &fx, 1).await;
    use TransitionKind::*;
    assert_eq!(kinds(&a), vec![Started, StepCompleted, StepSkipped, WeightChanged, Succeeded]);
    assert_eq!(fx.preflights.lock().unwrap().len(), 1);
    assert_eq!(r.steps[0].status, StepStatus::Succeeded);
}

#[tokio::test]
async fn unreachable_deployer_waits_then_aborts_at_the_deadline() {
    let fx = Fake::new();
    *fx.deployer_down.lock().unwrap() = true;
    let mut r = release("booking", "staging");
    r.plan.progress_deadline = crate::domain::config::Dur(Duration::from_secs(20));
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![TransitionKind::Started]);
    let wake = a.wake_at.unwrap();
    assert!(wake > at(0) && wake <= at(1), "backs off briefly first: {wake}");
    assert!(r.message.contains("waiting for deployer"), "{}", r.message);
    for s in 1..20 {
        assert!(tick(&mut r, &fx, s).await.transitions.is_empty());
    }
    assert!(r.failures >= 19);
    let a = tick(&mut r, &fx, 20).await;
    assert_eq!(kinds(&a), vec![TransitionKind::Aborted]);
    assert!(
        r.abort
            .as_ref()
            .unwrap()
            .reason
            .starts_with("progress deadline exceeded (20s) at step 0 (preflight): deployer:"),
        "{:?}",
        r.abort
    );
    assert!(r.settled, "nothing reached the deployer, so nothing to roll back");
    assert_eq!(r.phase, Phase::Aborted);
}

#[tokio::test]
async fn approvals_need_distinct_non_creator_approvers_with_a_role() {
    let fx = Fake::new();
    let mut r = release("booking", "production");
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![TransitionKind::Started, TransitionKind::AwaitingApproval]);
    assert!(fx.applies.lock().unwrap().is_empty(), "nothing changes before approval");
    let rm = vec!["release-manager".to_string()];
    let creator = Decider { user: "alice", roles: &rm, issuer: "https://issuer.test", subject: "s-1" };
    assert!(matches!(approve(&mut r, &creator, "", at(1)), Err(ActionError::Forbidden(m)) if m.contains("four-eyes")));
    let no_role = Decider { user: "carol", roles: &[], issuer: "https://issuer.test", subject: "s-1" };
    assert!(matches!(approve(&mut r, &no_role, "", at(1)), Err(ActionError::Forbidden(_))));
    let bob = Decider { user: "bob", roles: &rm, issuer: "https://issuer.test", subject: "s-1" };
    let t = approve(&mut r, &bob, "ok", at(2)).unwrap();
    assert_eq!(t[0].kind, TransitionKind::ApprovalRecorded);
    assert_eq!(r.phase, Phase::AwaitingApproval);
    let recorded = r.approvals.last().unwrap();
    assert_eq!((recorded.issuer.as_str(), recorded.subject.as_str()), ("https://issuer.test", "s-1"));
    assert!(matches!(approve(&mut r, &bob, "again", at(3)), Err(ActionError::NotNow(_))));
    let dave = Decider { user: "dave", roles: &rm, issuer: "https://issuer.test", subject: "s-1" };
    let t = approve(&mut r, &dave, "ok", at(4)).unwrap();
    assert_eq!(
        t.iter().map(|t| t.kind).collect::<Vec<_>>(),
        vec![TransitionKind::Approved, TransitionKind::StepCompleted]
    );
    assert_eq!(r.phase, Phase::Progressing);
    tick(&mut r, &fx, 5).await;
    assert_eq!(r.canary_weight, 25);
}

#[tokio::test]
async fn a_group_approval_decides_the_gate_waiting_now_and_the_ones_ahead() {
    let fx = Fake::new();
    let rm = vec!["release-manager".to_string()];
    let bob = Decider { user: "bob", roles: &rm, issuer: "https://issuer.test", subject: "s-2" };
    let dave = Decider { user: "dave", roles: &rm, issuer: "https://issuer.test", subject: "s-4" };
    // A member that has not started: its gate is decided ahead, nothing else happens yet.
    let mut later = release("booking", "production");
    let (t, n) = approve_ahead(&mut later, &bob, "train ok", at(1)).unwrap();
    assert_eq!((n, t[0].kind, later.phase), (1, TransitionKind::ApprovalRecorded, Phase::Pending));
    assert!(t[0].message.contains("approved ahead by bob: train ok"), "{}", t[0].message);
    let (t, n) = approve_ahead(&mut later, &bob, "again", at(2)).unwrap();
    assert_eq!((t.len(), n), (0, 0), "bob has decided every gate ahead already");
    // Checked before anything is recorded: the creator, and someone without the role.
    let creator = Decider { user: "alice", roles: &rm, issuer: "https://issuer.test", subject: "s-1" };
    let no_role = Decider { user: "carol", roles: &[], issuer: "https://issuer.test", subject: "s-3" };
    let before = later.approvals.len();
    assert!(
        matches!(approve_ahead(&mut later, &creator, "", at(2)), Err(ActionError::Forbidden(m)) if m.contains("four-eyes"))
    );
    assert!(matches!(approve_ahead(&mut later, &no_role, "", at(2)), Err(ActionError::Forbidden(_))));
    assert_eq!(later.approvals.len(), before);
    approve_ahead(&mut later, &dave, "ok", at(3)).unwrap();
    // When its turn comes, two approvals are there already: it passes its gate at once.
    let a = tick(&mut later, &fx, 4).await;
    assert!(kinds(&a).contains(&TransitionKind::StepCompleted), "{:?}", kinds(&a));
    assert_ne!(later.phase, Phase::AwaitingApproval);
    // The member waiting now: the same call approves its open gate like ApproveRelease.
    let mut now = release("booking", "production");
    tick(&mut now, &fx, 0).await;
    assert_eq!(now.phase, Phase::AwaitingApproval);
    let (t, n) = approve_ahead(&mut now, &bob, "ok", at(1)).unwrap();
    assert_eq!((n, t[0].kind), (1, TransitionKind::ApprovalRecorded));
    // Having decided the open gate, bob's group approval has nothing more to decide here.
    let (t, n) = approve_ahead(&mut now, &bob, "again", at(1)).unwrap();
    assert_eq!((t.len(), n), (0, 0));
    let (t, _) = approve_ahead(&mut now, &dave, "ok", at(2)).unwrap();
    assert_eq!(
        t.iter().map(|t| t.kind).collect::<Vec<_>>(),
        vec![TransitionKind::Approved, TransitionKind::StepCompleted]
    );
    assert_eq!(now.phase, Phase::Progressing);
}

#[tokio::test]
async fn rejection_aborts_and_needs_a_reason() {
    let fx = Fake::new();
    let mut r = release("booking", "production");
    tick(&mut r, &fx, 0).await;
    let rm = vec!["release-manager".to_string()];
    let bob = Decider { user: "bob", roles: &rm, issuer: "https://issuer.test", subject: "s-1" };
    assert!(matches!(reject(&mut r, &bob, " ", at(1)), Err(ActionError::Invalid { field: "reason", .. })));
    reject(&mut r, &bob, "not during the sale", at(1)).unwrap();
    assert_eq!(r.phase, Phase::Aborted);
    tick(&mut r, &fx, 2).await;
    assert!(r.settled);
    assert!(fx.applies.lock().unwrap().is_empty());
}

#[tokio::test]
async fn blue_green_post_promotion_failure_switches_back() {
    let fx = Fake::new();
    let mut r = release("gateway", "staging");
    fx.set_run(RunPhase::Successful);
    let a = tick(&mut r, &fx, 0).await;
    use TransitionKind::*;
    // deployPreview, prePromotionAnalysis (passes), switchActive, postPromotionAnalysis started.
    assert_eq!(kinds(&a)[..5], [Started, StepCompleted, StepCompleted, AnalysisStarted, AnalysisCompleted]);
    let applies = fx.applies.lock().unwrap().clone();
    assert_eq!(
        applies[0].1.tracks,
        vec![
            TrackState { track: Track::Active, artifact: "v1".into(), replicas: 2 },
            TrackState { track: Track::Preview, artifact: "v2".into(), replicas: 2 },
        ]
    );
    assert_eq!(applies[1].1.tracks[0], TrackState { track: Track::Active, artifact: "v2".into(), replicas: 2 });
    assert!(r.switched);
    // Post-promotion analysis passed too: now in the scale-down delay.
    assert_eq!(r.plan.steps[r.step_index].name, "scaleDownOld");
    let mut r2 = release("gateway", "staging");
    let fx2 = Fake::new();
    fx2.set_run(RunPhase::Successful);
    tick(&mut r2, &fx2, 0).await;
    // Make the second run fail instead: restart from the post-promotion step.
    r2.step_index = 4;
    r2.cursor = Default::default();
    fx2.set_run(RunPhase::Failed);
    let a = tick(&mut r2, &fx2, 1).await;
    assert!(kinds(&a).contains(&Aborted) && kinds(&a).contains(&RolledBack), "{:?}", kinds(&a));
    assert_eq!(r2.completion, Some(Completion::RolledBack));
    assert_eq!(fx2.last_apply().tracks, vec![TrackState { track: Track::Active, artifact: "v1".into(), replicas: 2 }]);
    // The scale-down waits its delay, then leaves only the new version.
    let a = tick(&mut r, &fx, 10).await;
    assert!(a.transitions.is_empty());
    let a = tick(&mut r, &fx, 31).await;
    assert_eq!(kinds(&a), vec![StepCompleted, Succeeded]);
    assert_eq!(fx.last_apply().tracks, vec![TrackState { track: Track::Active, artifact: "v2".into(), replicas: 2 }]);
}

#[tokio::test]
async fn retry_starts_over_with_new_keys() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    assert!(retry(&mut r, "bob", "", at(1)).is_err(), "only aborted releases");
    abort(&mut r, "bob", "wrong build", at(1)).unwrap();
    assert!(matches!(abort(&mut r, "bob", "", at(1)), Err(ActionError::NotNow(_))));
    assert!(retry(&mut r, "bob", "", at(1)).is_err(), "not before traffic is back on stable");
    tick(&mut r, &fx, 2).await;
    assert!(r.settled);
    retry(&mut r, "bob", "fixed config", at(3)).unwrap();
    assert_eq!((r.attempt, r.phase, r.step_index), (2, Phase::Pending, 0));
    tick(&mut r, &fx, 4).await;
    let keys = fx.keys();
    assert_eq!(keys.last().unwrap(), &format!("{}/1/2", Uuid::nil()));
    assert_eq!(keys.iter().filter(|k| k.ends_with("/1/1")).count(), 1);
}

#[tokio::test]
async fn supersede_ends_an_active_release_and_cleans_up_runs() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    let by = Uuid::from_u128(7);
    let t = supersede(&mut r, by, "carol", at(31));
    assert_eq!(t[0].kind, TransitionKind::Superseded);
    assert_eq!(r.completion, Some(Completion::Superseded));
    tick(&mut r, &fx, 32).await;
    assert!(r.settled);
    assert_eq!(fx.terminated.lock().unwrap().len(), 1, "the step's analysis run is terminated");
}

#[tokio::test]
async fn approval_timeout_follows_the_policy() {
    let fx = Fake::new();
    let mut r = release("booking", "production");
    if let StepAction::Approval { policy } = &mut r.plan.steps[0].action {
        policy.timeout = Some(crate::domain::config::Dur(Duration::from_secs(60)));
    }
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(a.wake_at, Some(at(60)), "wakes when the approval expires");
    assert!(tick(&mut r, &fx, 59).await.transitions.is_empty());
    let a = tick(&mut r, &fx, 60).await;
    assert_eq!(kinds(&a), vec![TransitionKind::Aborted]);
    assert_eq!(r.abort.as_ref().unwrap().reason, "approval timed out");

    let mut r = release("booking", "production");
    if let StepAction::Approval { policy } = &mut r.plan.steps[0].action {
        policy.timeout = Some(crate::domain::config::Dur(Duration::from_secs(60)));
        policy.on_timeout = TimeoutOutcome::Approve;
    }
    tick(&mut r, &fx, 0).await;
    let a = tick(&mut r, &fx, 60).await;
    assert_eq!(kinds(&a)[0], TransitionKind::StepCompleted);
    assert_eq!(r.canary_weight, 25);
}

#[tokio::test]
async fn promote_never_skips_approvals_or_migrations() {
    let fx = Fake::new();
    let mut r = release("booking", "production");
    tick(&mut r, &fx, 0).await;
    assert_eq!(
        promote(&mut r, true, "bob", "", at(1)).unwrap_err(),
        ActionError::NotNow("the release waits for approval; approvals cannot be skipped".into())
    );
    let mut r = release("booking", "staging");
    r.plan.steps.insert(
        1,
        crate::domain::plan::PlanStep {
            name: "migrate".into(),
            action: StepAction::Migrate {
                database: "booking".into(),
                locations: Vec::new(),
                target_version: None,
                on_abort: Default::default(),
            },
        },
    );
    r.steps.insert(1, r.steps[0].clone());
    assert_eq!(
        promote(&mut r, true, "bob", "", at(0)).unwrap_err(),
        ActionError::NotNow("a migrate step remains; migrations cannot be skipped".into())
    );
}

#[tokio::test]
async fn set_canary_scale_decouples_replicas_from_weight() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    r.plan.steps.insert(
        0,
        crate::domain::plan::PlanStep {
            name: "scale".into(),
            action: StepAction::SetCanaryScale { scale: CanaryScale::Replicas(3) },
        },
    );
    r.steps.insert(0, r.steps[0].clone());
    tick(&mut r, &fx, 0).await;
    let applies = fx.applies.lock().unwrap().clone();
    assert_eq!(applies[0].1.tracks[1], TrackState { track: Track::Canary, artifact: "v2".into(), replicas: 3 });
    assert_eq!(applies[0].1.canary_weight, 0, "scale first, no traffic yet");
    assert_eq!(applies[1].1.tracks[1].replicas, 3, "weight 25 keeps the fixed scale");
    assert_eq!(applies[1].1.canary_weight, 25);
}

#[tokio::test]
async fn header_and_mirror_routes_reach_the_deployer_with_each_weight_and_go_on_abort() {
    use crate::domain::config::routes::{HeaderRoute, MirrorRoute};
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    let header: HeaderRoute = serde_json::from_str(
        r#"{"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"exact": "yes"}}]}"#,
    )
    .unwrap();
    let mirror: MirrorRoute =
        serde_json::from_str(r#"{"name": "shadow", "percentage": 20, "match": [{"method": {"exact": "GET"}}]}"#)
            .unwrap();
    for (i, action) in [StepAction::SetHeaderRoute { route: header }, StepAction::SetMirrorRoute { route: mirror }]
        .into_iter()
        .enumerate()
    {
        let name = action.kind_name().to_string();
        r.plan.steps.insert(1 + i, crate::domain::plan::PlanStep { name, action });
        r.steps.insert(1 + i, r.steps[1].clone());
    }
    tick(&mut r, &fx, 0).await;
    let applies = fx.applies.lock().unwrap().clone();
    let routes = |i: usize| applies[i].1.routes.describe();
    assert_eq!(routes(0), ["header beta: x-beta exact \"yes\""]);
    assert_eq!(applies[0].1.canary_weight, 0, "the route comes before any weight");
    assert_eq!(applies[0].1.tracks[1].replicas, 1, "a canary with a route runs");
    assert_eq!(routes(1).len(), 2);
    assert_eq!((applies[2].1.canary_weight, routes(2).len()), (25, 2), "a later weight keeps the routes");
    assert_eq!(r.routes.describe(), routes(2), "the release shows what is in force");

    abort(&mut r, "bob", "bad canary", at(5)).unwrap();
    tick(&mut r, &fx, 6).await;
    assert!(fx.last_apply().routes.is_empty(), "the abort's state has no routes");
    assert!(r.routes.is_empty() && r.settled);
}

#[tokio::test]
async fn a_header_route_step_without_matches_removes_its_route() {
    use crate::domain::config::routes::HeaderRoute;
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    let set: HeaderRoute = serde_json::from_str(
        r#"{"name": "beta", "match": [{"headerName": "x-beta", "headerValue": {"prefix": "y"}}]}"#,
    )
    .unwrap();
    let remove = HeaderRoute { name: "beta".into(), matches: Vec::new() };
    for (i, route) in [set, remove].into_iter().enumerate() {
        r.plan.steps.insert(
            1 + i,
            crate::domain::plan::PlanStep { name: format!("route-{i}"), action: StepAction::SetHeaderRoute { route } },
        );
        r.steps.insert(1 + i, r.steps[1].clone());
    }
    tick(&mut r, &fx, 0).await;
    let applies = fx.applies.lock().unwrap().clone();
    assert_eq!(applies[0].1.routes.headers.len(), 1);
    assert!(applies[1].1.routes.is_empty(), "removed by name");
    assert_eq!(applies[1].1.tracks.len(), 1, "no route and no weight: no canary yet");
}

/// The search service's experiment: samples for both tracks, scores scripted.
fn experiment(fx: &Fake, canary_latency: f64, scores: &[(f64, &'static str)]) -> Release {
    let sample = |v: f64| BTreeMap::from([("latency".to_string(), vec![v, v + 1.0, v + 2.0])]);
    *fx.samples.lock().unwrap() = [sample(10.0), sample(canary_latency)];
    fx.scores.lock().unwrap().extend(scores.iter().copied());
    release("search", "staging")
}

#[tokio::test]
async fn an_experiment_starts_a_baseline_beside_the_canary_and_measures_both() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = experiment(&fx, 10.0, &[]);
    let StepAction::Experiment { experiment: spec } = &r.plan.steps[2].action else { panic!("an experiment") };
    let latency = &spec.analysis.metrics[0];
    assert_eq!((latency.count, latency.measurement_retention), (Some(18), Some(18)), "3 × 1m every 10s");
    assert!(latency.success_condition.is_none() && latency.failure_condition.is_none(), "the judge decides");
    assert_eq!(r.plan.step_summary(2), "baseline and canary at 20% each, 3 interval(s) of 1m, templates judge");
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![Started, StepCompleted, WeightChanged, StepCompleted, AnalysisStarted, AnalysisStarted]);
    let state = fx.last_apply();
    assert_eq!(state.canary_weight, 20);
    assert_eq!(
        state.tracks,
        vec![
            TrackState { track: Track::Stable, artifact: "v1".into(), replicas: 4 },
            TrackState { track: Track::Canary, artifact: "v2".into(), replicas: 2 },
            TrackState { track: Track::Baseline, artifact: "v1".into(), replicas: 2 },
        ],
        "equal small tracks; the baseline runs the stable artifact"
    );
    assert_eq!(r.canary_weight, 10, "the release's own weight comes back after the experiment");
    let runs = fx.analyses.lock().unwrap().clone();
    assert_eq!(runs.len(), 2);
    assert!(runs[0].contains("/2-baseline/") && runs[1].contains("/2-canary/"), "{runs:?}");
    assert_eq!(a.wake_at, Some(at(60)), "the first interval ends a minute after both runs started");
    assert_eq!(r.experiments[0].baseline_artifact, "v1");
    // A crash and a second look start nothing again.
    tick(&mut r, &fx, 30).await;
    assert_eq!(fx.analyses.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_worse_canary_is_aborted_by_the_judgement() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = experiment(&fx, 50.0, &[(100.0, "pass"), (40.0, "fail")]);
    tick(&mut r, &fx, 0).await;
    let a = tick(&mut r, &fx, 60).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted], "interval 1 passes; the experiment goes on");
    assert_eq!(a.wake_at, Some(at(120)));
    let asked = fx.judged.lock().unwrap()[0].clone();
    assert_eq!(asked.metrics[0].baseline, [10.0, 11.0, 12.0]);
    assert_eq!(asked.metrics[0].canary, [50.0, 51.0, 52.0]);
    assert_eq!(asked.metrics[0].judge.group.as_deref(), Some("latency"));
    assert!(asked.metrics[1].judge.critical, "errors is critical");
    let a = tick(&mut r, &fx, 120).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, Aborted, RolledBack]);
    assert!(r.message.contains("experiment interval 2/3: score 40 (fail)"), "{}", r.message);
    let e = &r.experiments[0];
    assert_eq!(e.judged.iter().map(|j| j.score).collect::<Vec<_>>(), [100.0, 40.0]);
    assert_eq!(e.judged[1].metrics[0].classification, "HIGH");
    assert_eq!(e.verdict.as_deref(), Some("fail"));
    assert_eq!(fx.last_apply().tracks, vec![TrackState { track: Track::Stable, artifact: "v1".into(), replicas: 4 }]);
    assert_eq!(fx.terminated.lock().unwrap().len(), 2, "both runs end with the release");
}

#[tokio::test]
async fn an_equal_canary_passes_and_the_baseline_goes_before_the_next_step() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = experiment(&fx, 10.0, &[(100.0, "pass"), (100.0, "pass"), (96.0, "pass")]);
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 60).await;
    tick(&mut r, &fx, 120).await;
    let a = tick(&mut r, &fx, 180).await;
    assert!(kinds(&a).is_empty(), "the last interval waits for the last measurements");
    assert!(r.message.contains("waiting for the last measurements"), "{}", r.message);
    fx.set_run(RunPhase::Successful);
    let a = tick(&mut r, &fx, 185).await;
    assert_eq!(
        kinds(&a),
        vec![AnalysisCompleted, StepCompleted, WeightChanged, StepCompleted, WeightChanged, Succeeded]
    );
    let applies = fx.applies.lock().unwrap().clone();
    let end = &applies[applies.len() - 3].1;
    assert_eq!((end.canary_weight, end.tracks.len()), (10, 2), "back to the release's weight, no baseline");
    assert!(applies[applies.len() - 3].0.contains("/2-end/"));
    assert_eq!(r.experiments[0].verdict.as_deref(), Some("pass"));
    assert_eq!(r.steps[2].message, "experiment pass: score 96");
    assert!(r.analysis_runs.iter().all(|a| a.done && a.kind.starts_with("experiment-")));
    assert_eq!(r.verification(), Ok(()), "a passed experiment is a check that ran");
}

#[tokio::test]
async fn a_marginal_experiment_waits_for_a_person() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = experiment(&fx, 12.0, &[(100.0, "pass"), (90.0, "pass"), (80.0, "marginal")]);
    fx.set_run(RunPhase::Successful);
    for t in [0, 60, 120] {
        tick(&mut r, &fx, t).await;
    }
    let a = tick(&mut r, &fx, 180).await;
    assert_eq!(kinds(&a), vec![AnalysisCompleted, Paused]);
    assert!(r.message.contains("score 80 (marginal)") && r.message.contains("promote to accept it"), "{}", r.message);
    assert_eq!(a.wake_at, None);
    assert_eq!(fx.last_apply().tracks.len(), 3, "the baseline stays while a person looks");
    promote(&mut r, false, "bob", "latency within budget", at(200)).unwrap();
    let a = tick(&mut r, &fx, 201).await;
    assert_eq!(kinds(&a), vec![StepCompleted, WeightChanged, StepCompleted, WeightChanged, Succeeded]);
    assert_eq!(r.steps[2].message, "experiment marginal: score 80");
}

fn with_migrate_step(on_abort: crate::domain::config::OnAbort) -> Release {
    let mut r = release("booking", "staging");
    // After preflight, where the compiler puts it.
    r.plan.steps.insert(
        1,
        crate::domain::plan::PlanStep {
            name: "migrate".into(),
            action: StepAction::Migrate {
                database: "booking".into(),
                locations: vec!["db/booking".into()],
                target_version: None,
                on_abort,
            },
        },
    );
    r.steps.insert(1, r.steps[1].clone());
    r
}

#[tokio::test]
async fn an_abort_undoes_the_release_migrations_after_traffic_is_back() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = with_migrate_step(crate::domain::config::OnAbort::Undo);
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![Started, StepCompleted, StepCompleted, WeightChanged, StepCompleted, Waiting]);
    assert_eq!(r.schema.as_ref().map(|c| (c.before.as_str(), c.after.as_str())), Some(("1", "2")));
    abort(&mut r, "bob", "bad canary", at(5)).unwrap();
    let a = tick(&mut r, &fx, 6).await;
    assert_eq!(kinds(&a), vec![RolledBack, SchemaUndone]);
    let m = fx.migrations.lock().unwrap().clone();
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].0, format!("{}/abort-undo/1", r.id));
    assert_eq!(
        m[1].1,
        MigrationRequest {
            database: "booking".into(),
            locations: vec!["db/booking".into()],
            action: MigrationAction::Undo { to_version: Some("1".into()) },
        }
    );
    // The undo came after the traffic: the last desired state is the stable one.
    assert_eq!(fx.last_apply().canary_weight, 0);
    assert!(r.settled);
    assert!(r.message.contains("schema of booking undone to version 1 (was 2)"), "{}", r.message);
}

#[tokio::test]
async fn an_abort_with_freeze_leaves_the_schema_and_says_so() {
    use TransitionKind::*;
    let fx = Fake::new();
    let mut r = with_migrate_step(crate::domain::config::OnAbort::Freeze);
    tick(&mut r, &fx, 0).await;
    abort(&mut r, "bob", "bad canary", at(5)).unwrap();
    let a = tick(&mut r, &fx, 6).await;
    assert_eq!(kinds(&a), vec![RolledBack, SchemaFrozen]);
    assert_eq!(fx.migrations.lock().unwrap().len(), 1, "no undo");
    assert!(r.message.contains("schema of booking stays at version 2 (onAbort: freeze"), "{}", r.message);
    assert!(r.settled);
}

#[tokio::test]
async fn a_failed_migration_aborts_before_traffic_and_undoes_what_it_applied() {
    use TransitionKind::*;
    let fx = Fake::new();
    *fx.migration_phase.lock().unwrap() = MigrationPhase::Failed;
    let mut r = with_migrate_step(crate::domain::config::OnAbort::Undo);
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a)[..3], [Started, StepCompleted, Aborted]);
    assert!(fx.applies.lock().unwrap().is_empty(), "no traffic moved");
    // The undo run fails too: the release says where the schema is.
    assert_eq!(kinds(&a)[3..], [SchemaUndoFailed]);
    assert!(r.message.contains("schema undo of booking failed"), "{}", r.message);
    assert!(r.settled);
}

#[tokio::test]
async fn an_undo_refused_for_lack_of_scripts_leaves_the_schema_and_says_why() {
    use TransitionKind::*;
    let fx = Fake::new();
    *fx.refuse_undo.lock().unwrap() = true;
    let mut r = with_migrate_step(crate::domain::config::OnAbort::Undo);
    tick(&mut r, &fx, 0).await;
    abort(&mut r, "bob", "bad canary", at(5)).unwrap();
    let a = tick(&mut r, &fx, 6).await;
    assert_eq!(kinds(&a), vec![RolledBack, SchemaFrozen]);
    assert!(r.message.contains("stays at version 2: the undo was refused"), "{}", r.message);
    assert!(r.message.contains("no undo script"), "{}", r.message);
    assert!(r.settled);
}

#[tokio::test]
async fn a_failed_preflight_check_aborts_before_anything_changes() {
    use TransitionKind::*;
    let fx = Fake::new();
    fx.preflight_checks.lock().unwrap().push(PreflightCheck {
        name: "dependency/auth".into(),
        ok: false,
        message: "not deployed in staging".into(),
    });
    let mut r = release("booking", "staging");
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![Started, Aborted]);
    assert!(fx.applies.lock().unwrap().is_empty(), "nothing reached the deployer");
    assert!(r.settled);
    assert_eq!(r.steps[0].status, StepStatus::Failed);
    assert_eq!(
        r.abort.as_ref().unwrap().reason,
        "preflight failed: dependency/auth: not deployed in staging",
        "the reason names every failed check"
    );
    // What preflight was asked to check: the plan's analysis with the run's arguments.
    let asked = fx.preflights.lock().unwrap()[0].clone();
    assert_eq!((asked.service.as_str(), asked.environment.as_str()), ("booking", "staging"));
    assert_eq!(asked.analyses.len(), 1);
    assert_eq!(asked.analyses[0].1.get("track").map(String::as_str), Some("canary"));
    assert_eq!(asked.migrations, None);
}

#[tokio::test]
async fn preflight_waits_for_an_unreachable_dependency_then_gives_up() {
    let fx = Fake::new();
    *fx.deployer_down.lock().unwrap() = true;
    let mut r = release("booking", "staging");
    r.plan.progress_deadline = crate::domain::config::Dur(Duration::from_secs(600));
    tick(&mut r, &fx, 0).await;
    assert!(r.message.contains("waiting for deployer"), "{}", r.message);
    for s in 1..30 {
        assert!(tick(&mut r, &fx, s).await.transitions.is_empty());
    }
    let a = tick(&mut r, &fx, 30).await;
    assert_eq!(kinds(&a), vec![TransitionKind::Aborted]);
    assert!(r.abort.as_ref().unwrap().reason.starts_with("preflight failed: deployer:"), "{:?}", r.abort);
    // Back in time: preflight passes and the release goes on.
    let fx = Fake::new();
    *fx.deployer_down.lock().unwrap() = true;
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    *fx.deployer_down.lock().unwrap() = false;
    tick(&mut r, &fx, 5).await;
    assert_eq!(r.canary_weight, 25);
}

#[tokio::test]
async fn a_release_waits_for_its_maintenance_window() {
    use TransitionKind::*;
    let yaml = CONFIG.replace(
        "  - name: staging\n",
        "  - name: staging\n    maintenanceWindows: [{schedule: \"30 12 * * *\", duration: 1h}]\n",
    );
    let config = DeliveryConfig::load(&yaml).unwrap();
    let mut r = release("booking", "staging");
    r.plan = compile(&config, "booking", "staging", PlanMode::Normal).unwrap();
    r.steps = vec![r.steps[0].clone(); r.plan.steps.len()];
    let fx = Fake::new();
    // T0 is 12:00; the window opens at 12:30.
    let a = tick(&mut r, &fx, 0).await;
    assert_eq!(kinds(&a), vec![Started, Waiting]);
    assert_eq!(a.wake_at, Some(at(1800)));
    assert!(r.message.contains("maintenance window opening at 2026-11-26T12:30:00Z"), "{}", r.message);
    assert_eq!(r.progress_deadline_at, None, "waiting for a window is not lack of progress");
    assert!(fx.preflights.lock().unwrap().is_empty(), "preflight runs once the window is open");
    let a = tick(&mut r, &fx, 1800).await;
    assert_eq!(kinds(&a)[..3], [StepCompleted, StepCompleted, WeightChanged]);
    assert!(a.transitions[0].message.contains("open until 2026-11-26T13:30:00Z"), "{}", a.transitions[0].message);
    // A person may go outside the window.
    let mut r = release("booking", "staging");
    r.plan = compile(&config, "booking", "staging", PlanMode::Normal).unwrap();
    r.steps = vec![r.steps[0].clone(); r.plan.steps.len()];
    let fx = Fake::new();
    tick(&mut r, &fx, 0).await;
    promote(&mut r, false, "bob", "urgent fix", at(10)).unwrap();
    assert_eq!(r.steps[0].status, StepStatus::Skipped);
    tick(&mut r, &fx, 11).await;
    assert_eq!(r.canary_weight, 25);
}

#[tokio::test]
async fn verified_means_every_check_ran_and_passed() {
    let fx = Fake::new();
    fx.set_run(RunPhase::Successful);
    let mut r = release("booking", "staging");
    assert!(r.verification().unwrap_err().contains("PENDING"));
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    promote(&mut r, false, "bob", "", at(31)).unwrap();
    tick(&mut r, &fx, 32).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert_eq!(r.verification(), Ok(()));
    // A low-severity failure only notifies: still within the SLO.
    r.analysis_runs[0].phase = "FAILED".into();
    r.analysis_runs[0].severity = Some(crate::domain::config::Severity::Low);
    assert_eq!(r.verification(), Ok(()));
    r.analysis_runs[0].severity = Some(crate::domain::config::Severity::High);
    assert!(r.verification().unwrap_err().contains("analysis"), "{:?}", r.verification());

    // Skipping the analysis with a promote, or promote --full, is not verification.
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    tick(&mut r, &fx, 0).await;
    tick(&mut r, &fx, 30).await;
    promote(&mut r, true, "bob", "hotfix", at(31)).unwrap();
    tick(&mut r, &fx, 32).await;
    assert_eq!(r.phase, Phase::Succeeded);
    assert!(r.verification().unwrap_err().contains("--full"), "{:?}", r.verification());
}

/// A booking release whose canary also has a background analysis measuring every 2 s.
fn with_background_analysis() -> Release {
    let yaml = CONFIG
        .replace(
            "          - pause: {}\n  - name: gateway",
            "          - pause: {duration: 1s}\n        analysis: {templates: [watch]}\n  - name: gateway",
        )
        .replace(
            "services:\n",
            "  - name: watch\n    metrics:\n      - name: errors\n        interval: 2s\n        successCondition: result < 0.01\n        provider: {prometheus: {address: \"http://127.0.0.1:9090\", query: \"x\"}}\nservices:\n",
        );
    let config = DeliveryConfig::load(&yaml).unwrap();
    let mut r = release("booking", "staging");
    r.plan = compile(&config, "booking", "staging", PlanMode::Normal).unwrap();
    r.steps = vec![r.steps[0].clone(); r.plan.steps.len()];
    r
}

/// A release with background analysis whose first verdict (at 1 s) is a failure of `severity`.
async fn failing_background(severity: crate::domain::config::Severity) -> (Release, Fake, Advance) {
    let mut r = with_background_analysis();
    let fx = Fake::new();
    *fx.run_severity.lock().unwrap() = severity;
    fx.set_run(RunPhase::Running);
    tick(&mut r, &fx, 0).await;
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 1).await;
    (r, fx, a)
}

#[tokio::test]
async fn a_background_recheck_holds_the_plan_until_it_has_measured() {
    use crate::domain::config::Severity;
    let (mut r, fx, _) = failing_background(Severity::High).await;
    assert!(r.message.contains("holding traffic"), "{}", r.message);
    fx.set_run(RunPhase::Running);
    // The hold ends at 301; the pause after it has long elapsed, yet nothing moves until the
    // re-check has measured twice (2 × 2 s).
    let a = tick(&mut r, &fx, 301).await;
    assert_eq!(kinds(&a), vec![TransitionKind::AnalysisStarted]);
    assert!(r.message.starts_with("measuring again after a high-severity failure"), "{}", r.message);
    let weight = r.canary_weight;
    assert!(tick(&mut r, &fx, 303).await.transitions.is_empty());
    assert_eq!(r.canary_weight, weight);
    // A failure now aborts (the degradation lasted past the grace period).
    fx.set_run(RunPhase::Failed);
    let a = tick(&mut r, &fx, 304).await;
    assert!(kinds(&a).contains(&TransitionKind::Aborted), "{:?}", kinds(&a));

    // Surviving the re-check: the plan goes on.
    let (mut r, fx, _) = failing_background(Severity::High).await;
    fx.set_run(RunPhase::Running);
    tick(&mut r, &fx, 301).await;
    let before = r.step_index;
    tick(&mut r, &fx, 306).await;
    assert!(r.step_index > before, "continues once the re-check held for 4 s: {}", r.message);
}

#[tokio::test]
async fn a_background_pause_for_a_person_holds_every_step_until_promoted() {
    use crate::domain::config::Severity;
    let (mut r, fx, a) = failing_background(Severity::Medium).await;
    assert_eq!(a.transitions.last().unwrap().kind, TransitionKind::Paused);
    assert_eq!(a.wake_at, None);
    let (step, weight) = (r.step_index, r.canary_weight);
    // The 30 s pause step elapses, and still nothing moves.
    assert!(tick(&mut r, &fx, 120).await.transitions.is_empty());
    assert_eq!((r.step_index, r.canary_weight, r.phase), (step, weight, Phase::Paused));
    promote(&mut r, false, "bob", "looked at it", at(121)).unwrap();
    tick(&mut r, &fx, 122).await;
    assert!(r.step_index > step, "moves on after the promote");

    // promote --full from the same hold finishes the release.
    let (mut r, fx, _) = failing_background(Severity::Medium).await;
    assert!(r.held_for_person);
    promote(&mut r, true, "bob", "ship it", at(2)).unwrap();
    tick(&mut r, &fx, 3).await;
    assert_eq!(r.phase, Phase::Succeeded);
}

#[tokio::test]
async fn a_step_kind_added_as_the_architecture_says_runs_in_a_plan() {
    let fx = Fake::new();
    let mut r = release("booking", "staging");
    let at_index = 2; // after preflight and the first setWeight
    r.plan.steps.insert(
        at_index,
        crate::domain::plan::PlanStep {
            name: "canary-up".into(),
            action: StepAction::Checkpoint { label: "canary-up".into() },
        },
    );
    r.steps.insert(at_index, r.steps[at_index].clone());
    assert_eq!(r.plan.step_summary(at_index), "checkpoint canary-up");
    let a = tick(&mut r, &fx, 0).await;
    use TransitionKind::*;
    assert_eq!(kinds(&a), vec![Started, StepCompleted, WeightChanged, StepCompleted, StepCompleted, Waiting]);
    assert_eq!(r.steps[at_index].status, StepStatus::Succeeded);
    assert_eq!(r.steps[at_index].message, "checkpoint canary-up reached");
    assert_eq!(a.transitions[4].message, "step 2 (canary-up): checkpoint canary-up reached");
    assert!(!crate::domain::steps::promote_skips(&StepAction::Checkpoint { label: "x".into() }, true));
}

fn argo(phase: &str, step: u32, weight: u32, awaiting_promotion: bool) -> Option<RolloutProgress> {
    Some(RolloutProgress {
        phase: phase.into(),
        message: if phase == "Degraded" { "RolloutAborted: analysis failed".into() } else { String::new() },
        step,
        steps: 4,
        weight,
        paused: awaiting_promotion,
        awaiting_promotion,
        aborted: phase == "Degraded",
    })
}

#[tokio::test]
async fn argo_mode_sets_the_image_follows_argo_and_forwards_a_promote() {
    let fx = Fake::new();
    let mut r = release("legacy", "staging");
    let kinds_of_plan: Vec<&str> = r.plan.steps.iter().map(|s| s.action.kind_name()).collect();
    assert_eq!(kinds_of_plan, vec!["preflight", "argoRollout", "verify"], "the Rollout runs before the verification");
    *fx.converged.lock().unwrap() = false;
    *fx.rollout.lock().unwrap() = argo("Progressing", 0, 20, false);
    let a = tick(&mut r, &fx, 0).await;
    use TransitionKind::*;
    assert_eq!(kinds(&a), vec![Started, StepCompleted, WeightChanged]);
    assert_eq!(fx.last_apply().tracks, vec![TrackState { track: Track::Stable, artifact: "v2".into(), replicas: 3 }]);
    assert_eq!((r.phase, r.canary_weight), (Phase::Progressing, 20));

    // Argo waits for a person: so does the release, and its promote goes to Argo.
    *fx.rollout.lock().unwrap() = argo("Paused", 1, 20, true);
    let a = tick(&mut r, &fx, 10).await;
    assert_eq!(kinds(&a), vec![Paused]);
    assert!(r.message.contains("Argo paused the Rollout at step 1/4, canary 20%"), "{}", r.message);
    assert!(a.wake_at.is_some(), "still looked at: Argo may be promoted outside HopNGo");
    promote(&mut r, false, "bob", "looks good", at(20)).unwrap();
    *fx.rollout.lock().unwrap() = argo("Progressing", 2, 60, false);
    let a = tick(&mut r, &fx, 21).await;
    assert_eq!(*fx.controls.lock().unwrap(), vec![RolloutControl::Promote]);
    assert_eq!(kinds(&a), vec![WeightChanged]);
    assert_eq!(fx.applies.lock().unwrap().len(), 1, "the image is set once");

    // Healthy on the new artifact: the verification runs.
    *fx.converged.lock().unwrap() = true;
    *fx.rollout.lock().unwrap() = argo("Healthy", 4, 0, false);
    let a = tick(&mut r, &fx, 30).await;
    assert_eq!(kinds(&a), vec![StepCompleted, AnalysisStarted]);
}

#[tokio::test]
async fn argo_mode_aborted_by_argo_aborts_the_release_and_takes_the_rollout_back() {
    let fx = Fake::new();
    let mut r = release("legacy", "staging");
    *fx.converged.lock().unwrap() = false;
    *fx.rollout.lock().unwrap() = argo("Progressing", 0, 20, false);
    tick(&mut r, &fx, 0).await;
    *fx.rollout.lock().unwrap() = argo("Degraded", 1, 0, false);
    let a = tick(&mut r, &fx, 5).await;
    use TransitionKind::*;
    assert_eq!(kinds(&a), vec![Aborted]);
    assert!(r.message.contains("returning traffic to stable"), "{}", r.message);
    // Healthy on the stable artifact again: the release has rolled back.
    *fx.converged.lock().unwrap() = true;
    let a = tick(&mut r, &fx, 6).await;
    assert_eq!(kinds(&a), vec![RolledBack]);
    assert!(r.message.contains("Argo aborted the Rollout: RolloutAborted: analysis failed"), "{}", r.message);
    assert_eq!(*fx.controls.lock().unwrap(), vec![RolloutControl::Abort], "Argo's abort first");
    assert_eq!(fx.last_apply().tracks, vec![TrackState { track: Track::Stable, artifact: "v1".into(), replicas: 3 }]);
}

#[tokio::test]
async fn argo_mode_full_promotion_and_emergency_plans_skip_argo_s_steps() {
    let fx = Fake::new();
    let mut r = release("legacy", "staging");
    *fx.converged.lock().unwrap() = false;
    *fx.rollout.lock().unwrap() = argo("Paused", 1, 20, true);
    tick(&mut r, &fx, 0).await;
    promote(&mut r, true, "bob", "hotfix", at(1)).unwrap();
    tick(&mut r, &fx, 2).await;
    assert!(fx.controls.lock().unwrap().contains(&RolloutControl::PromoteFull));
    let config = DeliveryConfig::load(CONFIG).unwrap();
    let emergency = compile(&config, "legacy", "staging", PlanMode::Emergency).unwrap();
    assert!(matches!(
        emergency.steps[..],
        [crate::domain::plan::PlanStep { action: StepAction::ArgoRollout { full: true }, .. }]
    ));
}
