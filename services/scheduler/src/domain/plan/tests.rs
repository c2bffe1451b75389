use super::*;
use crate::domain::config::{DeliveryConfig, OnAbort};

const CONFIG: &str = r#"
environments:
  - name: staging
  - name: production
    from: staging
    approval: {minApprovals: 2, roles: [release-manager], timeout: 1h}
analysisTemplates:
  - name: slo
    args: [{name: threshold, value: "0.01"}]
    metrics:
      - name: error-rate
        interval: 10s
        count: 3
        successCondition: result < {{args.threshold}}
        provider: {prometheus: {address: "http://127.0.0.1:9090", query: "x"}}
services:
  - name: booking-service
    replicas: 4
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 30s}
          - analysis: {templates: [slo], args: {threshold: "0.05"}}
          - setWeight: 50
          - pause: {}
        analysis: {templates: [slo], startingStep: 1}
    environments:
      production:
        replicas: 6
        migrations: {database: booking-production, onAbort: undo}
    migrations: {database: booking, locations: [m]}
  - name: auth-service
    strategy:
      canary:
        steps: [{setWeight: 50}]
    environments:
      production:
        strategy:
          blueGreen:
            prePromotionAnalysis: {templates: [slo]}
            postPromotionAnalysis: {templates: [slo]}
            autoPromotionEnabled: false
            scaleDownDelay: 10s
"#;

fn config() -> DeliveryConfig {
    DeliveryConfig::load(CONFIG).expect("valid")
}

fn kinds(plan: &Plan) -> Vec<&str> {
    plan.steps.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn canary_plan_has_migrate_first_and_background_offset() {
    let plan = compile(&config(), "booking-service", "staging", PlanMode::Normal).unwrap();
    assert_eq!(plan.strategy, PlanStrategy::Canary);
    assert_eq!(plan.replicas, 4);
    assert_eq!(
        kinds(&plan),
        vec!["preflight", "migrate", "setWeight-25", "pause", "analysis", "setWeight-50", "pause-2"]
    );
    let bg = plan.background.as_ref().unwrap();
    assert_eq!(bg.starting_step, 3, "startingStep counts from the configured steps");
    match &plan.steps[4].action {
        StepAction::Analysis { analysis } => {
            assert_eq!(analysis.args.get("threshold").map(String::as_str), Some("0.05"), "step args override defaults");
            assert_eq!(analysis.metrics.len(), 1);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(plan.progress_deadline.0, crate::domain::config::DEFAULT_PROGRESS_DEADLINE);
}

#[test]
fn production_adds_the_approval_gate_and_replica_override() {
    let plan = compile(&config(), "booking-service", "production", PlanMode::Normal).unwrap();
    assert_eq!(plan.replicas, 6);
    match &plan.steps[0].action {
        StepAction::Approval { policy } => {
            assert_eq!(policy.min_approvals, 2);
            assert_eq!(policy.roles, vec!["release-manager"]);
            assert!(!policy.allow_self_approval);
        }
        other => panic!("{other:?}"),
    }
    // Each environment migrates its own database with the same scripts.
    assert_eq!(
        plan.steps[2].action,
        StepAction::Migrate {
            database: "booking-production".into(),
            locations: vec!["m".into()],
            target_version: None,
            on_abort: OnAbort::Undo
        }
    );
    assert_eq!(plan.step_summary(1), "backend, metric providers, migrations of booking-production");
    let staging = compile(&config(), "booking-service", "staging", PlanMode::Normal).unwrap();
    assert!(
        matches!(&staging.steps[1].action, StepAction::Migrate { database, on_abort: OnAbort::Freeze, .. } if database == "booking")
    );
    let auth = compile(&config(), "auth-service", "staging", PlanMode::Normal).unwrap();
    assert_eq!(auth.step_summary(0), "backend", "nothing analysed, nothing migrated");
}

#[test]
fn blue_green_override_in_production_only() {
    let staging = compile(&config(), "auth-service", "staging", PlanMode::Normal).unwrap();
    assert_eq!(staging.strategy, PlanStrategy::Canary);
    let prod = compile(&config(), "auth-service", "production", PlanMode::Normal).unwrap();
    assert_eq!(prod.strategy, PlanStrategy::BlueGreen);
    assert_eq!(prod.traffic, TrafficModel::BlueGreen);
    assert_eq!(
        kinds(&prod),
        vec![
            "approval",
            "preflight",
            "deployPreview",
            "prePromotionAnalysis",
            "pause",
            "switchActive",
            "postPromotionAnalysis",
            "scaleDownOld"
        ]
    );
    assert_eq!(prod.steps[7].action, StepAction::ScaleDownOld { delay: Dur(std::time::Duration::from_secs(10)) });
}

#[test]
fn initial_and_emergency_plans_go_straight_to_stable() {
    let initial = compile(&config(), "booking-service", "staging", PlanMode::Initial).unwrap();
    assert_eq!(kinds(&initial), vec!["preflight", "migrate", "deployStable"]);
    assert!(initial.background.is_none());
    let emergency = compile(&config(), "booking-service", "production", PlanMode::Emergency).unwrap();
    assert_eq!(
        kinds(&emergency),
        vec!["deployStable"],
        "an emergency rollback skips approval, preflight and migrations"
    );
}

#[test]
fn window_preflight_dependencies_and_first_release_smoke_tests() {
    let yaml = r#"
environments:
  - name: staging
  - name: production
    from: staging
    approval: {minApprovals: 1}
    maintenanceWindows:
      - {schedule: "0 22 * * *", duration: 2h}
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        provider: {job: {command: [hopngo-smoke, --address, "{{args.address}}"]}}
services:
  - name: auth
    strategy: {canary: {steps: [{setWeight: 50}]}}
  - name: booking
    dependsOn: [auth]
    strategy:
      canary:
        steps:
          - setWeight: 25
          - verify: {templates: [smoke]}
          - setWeight: 100
  - name: gateway
    strategy: {blueGreen: {prePromotionAnalysis: {templates: [smoke]}}}
"#;
    let config = DeliveryConfig::load(yaml).unwrap();
    let prod = compile(&config, "booking", "production", PlanMode::Normal).unwrap();
    assert_eq!(
        kinds(&prod),
        vec!["approval", "maintenanceWindow", "preflight", "setWeight-25", "verify", "setWeight-100"],
        "approval first (it may take hours), then the window, then the checks right before the first change"
    );
    assert_eq!(prod.steps[2].action, StepAction::Preflight { dependencies: vec!["auth".into()] });
    assert_eq!(prod.step_summary(1), "within 0 22 * * * for 2h (UTC)");
    // A first release runs the smoke tests against what it deployed.
    let first = compile(&config, "booking", "staging", PlanMode::Initial).unwrap();
    assert_eq!(kinds(&first), vec!["preflight", "deployStable", "verify"]);
    let first = compile(&config, "gateway", "staging", PlanMode::Initial).unwrap();
    assert_eq!(kinds(&first), vec!["preflight", "deployStable", "verify"]);
    let emergency = compile(&config, "booking", "production", PlanMode::Emergency).unwrap();
    assert_eq!(kinds(&emergency), vec!["deployStable"], "an emergency rollback waits for no window");
}

#[test]
fn unknown_names_are_problems() {
    let err = compile(&config(), "nope", "staging", PlanMode::Normal).unwrap_err();
    assert_eq!(err.to_string(), r#"service: unknown service "nope""#);
    let err = compile(&config(), "booking-service", "qa", PlanMode::Normal).unwrap_err();
    assert_eq!(err.to_string(), r#"environment: unknown environment "qa""#);
}

#[test]
fn hopngo_delivery_config_is_valid() {
    let yaml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/hopngo/delivery.yaml")).unwrap();
    let config = DeliveryConfig::load(&yaml).unwrap_or_else(|p| panic!("{p:?}"));
    let services: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services.len(), 11);
    for environment in ["staging", "production"] {
        for service in &services {
            let plan = compile(&config, service, environment, PlanMode::Normal).unwrap();
            let blue_green = matches!(*service, "gateway" | "frontend")
                || (*service == "auth-service" && environment == "production");
            assert_eq!(plan.strategy == PlanStrategy::BlueGreen, blue_green, "{service} in {environment}");
            // Smoke tests run before the new version takes any traffic.
            let smoke = plan
                .steps
                .iter()
                .position(|s| s.action.analysis().is_some_and(|a| a.templates == ["smoke"]))
                .unwrap_or_else(|| panic!("{service} in {environment} has smoke tests"));
            let first_traffic = plan
                .steps
                .iter()
                .position(|s| matches!(s.action, StepAction::SetWeight { .. } | StepAction::SwitchActive))
                .unwrap();
            assert!(smoke < first_traffic, "{service} in {environment}: smoke tests before traffic");
            assert_eq!(
                plan.steps[0].action.kind_name(),
                if environment == "production" { "approval" } else { "preflight" }
            );
            if !blue_green {
                let background = plan.background.as_ref().expect("canaries are watched by the SLO template");
                assert!(background.analysis.open_ended);
                let shifts: Vec<u32> = plan.steps[..background.starting_step]
                    .iter()
                    .filter_map(|s| match s.action {
                        StepAction::SetWeight { weight } => Some(weight),
                        _ => None,
                    })
                    .collect();
                assert_eq!(shifts, vec![25], "{service}: from the first traffic shift");
                let metrics: Vec<(&str, Option<&str>, Option<&str>)> = background
                    .analysis
                    .metrics
                    .iter()
                    .map(|m| (m.name.as_str(), m.success_condition.as_deref(), m.failure_condition.as_deref()))
                    .collect();
                let mut expected = vec![
                    ("error-rate-abort", None, Some("result > 0.05")),
                    ("error-rate", Some("result < 0.01"), None),
                    ("success-rate-abort", None, Some("result < 0.95")),
                    ("success-rate", Some("result > 0.99"), None),
                    ("latency-p95", Some("result < 0.5"), None),
                ];
                // Business metrics beside the SLO where the service carries the flow.
                let business: &[&str] = match *service {
                    "auth-service" => &["login-success"],
                    "booking-service" => &["booking-completion", "payment-processing"],
                    _ => &[],
                };
                let names: Vec<(String, String)> =
                    business.iter().map(|b| (format!("{b}-abort"), b.to_string())).collect();
                for (abort, hold) in &names {
                    expected.push((abort.as_str(), None, Some("result < {{args.abortBelow}}")));
                    expected.push((hold.as_str(), Some("result >= {{args.minimum}}"), None));
                }
                assert_eq!(metrics, expected, "{service} in {environment}");
                assert!(background.analysis.metrics.iter().all(|m| m.provider.scrape.is_some()), "the local form");
            }
        }
    }

    // With its environments on Kubernetes, the same SLO and business rates come from Prometheus:
    // the templates' kubernetes forms, per track.
    let mut on_kubernetes = config.clone();
    for env in &mut on_kubernetes.environments {
        let settings = serde_json::json!({"namespace": format!("hopngo-{}", env.name)});
        env.kubernetes = Some(serde_json::from_value(settings).unwrap());
    }
    assert_eq!(on_kubernetes.validate(), Vec::new());
    let plan = compile(&on_kubernetes, "booking-service", "production", PlanMode::Normal).unwrap();
    let analysis = plan.background.unwrap().analysis;
    let names: Vec<&str> = analysis.metrics.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "error-rate-abort",
            "error-rate",
            "success-rate-abort",
            "success-rate",
            "latency-p95",
            "booking-completion-abort",
            "booking-completion",
            "payment-processing-abort",
            "payment-processing"
        ]
    );
    for m in &analysis.metrics {
        let query = &m.provider.prometheus.as_ref().expect("Prometheus on Kubernetes").query;
        assert!(query.contains(r#"track="{{args.track}}""#), "{query}");
    }
    assert_eq!(analysis.args["rateWindow"], "1m");
}
