use super::*;

const GOOD: &str = r#"
apiVersion: hopngo.io/v1
kind: DeliveryConfig
environments:
  - name: staging
  - name: production
    from: staging
    progressDeadline: 15m
    approval:
      minApprovals: 1
      roles: [release-manager]
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        interval: 30s
        count: 5
        successCondition: result < 0.01
        provider:
          scrape:
            url: http://127.0.0.1:9000/metrics
            expression: ratio(errors, requests)
services:
  - name: booking-service
    replicas: 2
    strategy:
      canary:
        steps:
          - setWeight: 25
          - pause: {duration: 1m}
          - analysis: {templates: [slo]}
          - setWeight: 50
          - pause: {}
          - setWeight: 100
        analysis: {templates: [slo], startingStep: 1}
    migrations: {database: booking, locations: [deploy/hopngo/migrations/booking]}
  - name: gateway
    strategy:
      blueGreen:
        prePromotionAnalysis: {templates: [slo]}
        autoPromotionEnabled: false
"#;

#[test]
fn a_good_document_loads() {
    let config = DeliveryConfig::load(GOOD).expect("valid");
    assert_eq!(config.promotion_order(), vec!["staging", "production"]);
    assert_eq!(config.service("booking-service").unwrap().replicas, Some(2));
    assert_eq!(config.environment("production").unwrap().progress_deadline, Some(Dur(Duration::from_secs(900))));
}

fn problems(yaml: &str) -> Vec<String> {
    match DeliveryConfig::load(yaml) {
        Ok(_) => Vec::new(),
        Err(p) => p.into_iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn weight_out_of_range_names_the_path() {
    let yaml = GOOD.replace("setWeight: 50", "setWeight: 130");
    assert_eq!(problems(&yaml), vec!["services[0].strategy.canary.steps[3].setWeight: 130 is not in 0..=100"]);
}

#[test]
fn header_and_mirror_routes_are_checked_where_they_are_written() {
    let routed = |steps: &str| GOOD.replace("- pause: {}", steps);
    let ok = routed(
        "- setHeaderRoute: {name: beta, match: [{headerName: x-beta, headerValue: {regex: '^(yes|1)$'}}]}\n          - setMirrorRoute: {name: shadow, percentage: 20, match: [{method: {exact: GET}}]}\n          - setHeaderRoute: {name: beta}",
    );
    assert_eq!(problems(&ok), Vec::<String>::new());
    let p = problems(&routed(
        "- setHeaderRoute: {name: beta, match: [{headerName: x-beta, headerValue: {regex: '(yes'}}]}",
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with(
            "services[0].strategy.canary.steps[4].setHeaderRoute.match[0].headerValue.regex: not a valid regular expression"
        ),
        "{p:?}"
    );
    let p = problems(&routed(
        "- setHeaderRoute: {name: same, match: [{headerName: x-a, headerValue: {exact: a}}]}\n          - setMirrorRoute: {name: same, percentage: 101, match: [{path: {prefix: /}}]}",
    ));
    assert_eq!(
        p,
        [
            "services[0].strategy.canary.steps[5].setMirrorRoute.percentage: 101 is not in 1..=100",
            "services[0].strategy.canary.steps[5].setMirrorRoute.name: \"same\" is a header route"
        ]
    );
    let p = problems(&routed(
        "- setHeaderRoute: {name: h, match: [{headerName: x-a, headerValue: {exact: a, prefix: b}}]}",
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("services[0].strategy.canary.steps[4].setHeaderRoute.match[0].headerValue"), "{p:?}");
}

#[test]
fn experiments_need_metrics_that_tell_the_baseline_from_the_canary() {
    let judged = r#"
  - name: judge
    metrics:
      - name: latency
        interval: 5s
        provider:
          scrape:
            url: http://127.0.0.1:9000/metrics
            expression: quantile(0.95, seconds{track="{{ args.track }}"})
      - name: errors
        interval: 5s
        provider:
          scrape:
            url: http://127.0.0.1:9000/metrics
            expression: rate(errors{track="{{args.track}}"})
services:"#;
    let with = |step: &str| GOOD.replacen("\nservices:", judged, 1).replace("- pause: {}", step);
    let ok = with(
        "- experiment: {templates: [judge], weight: 10, interval: 1m, intervals: 3, thresholds: {pass: 90, marginal: 70}, groupWeights: {latency: 60}, metrics: {latency: {direction: increase, group: latency, allowedIncrease: 1.5}, errors: {direction: increase, critical: true}}}",
    );
    assert_eq!(problems(&ok), Vec::<String>::new());
    let config = DeliveryConfig::load(&ok).unwrap();
    let StepDef::Experiment(e) = &config.services[0].strategy.canary.as_ref().unwrap().steps[4].step else {
        panic!("an experiment step")
    };
    assert_eq!((e.interval_count(), e.samples(Duration::from_secs(5))), (3, 36));

    // No metrics for the baseline: no template, or a template whose queries ignore the track.
    let p = problems(&with("- experiment: {templates: [], weight: 10, interval: 1m}"));
    assert_eq!(
        p.last().map(String::as_str),
        Some("services[0].strategy.canary.steps[4].experiment.templates: at least one template is required")
    );
    // Unjudged, the template's metrics need conditions again.
    assert!(p[0].starts_with("analysisTemplates[1].metrics[0].successCondition"), "{p:?}");
    // A template nothing judges is told so once, where it is written, not again at each analysis.
    let p = problems(&GOOD.replace("        successCondition: result < 0.01\n", ""));
    assert_eq!(
        p,
        ["analysisTemplates[0].metrics[0].successCondition: a successCondition or failureCondition is required"]
    );
    // An analysis of a judged template still needs them.
    let p = problems(&with(
        "- experiment: {templates: [judge], weight: 10, interval: 1m}\n          - analysis: {templates: [judge]}",
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].starts_with("services[0].strategy.canary.steps[5].analysis.templates[0]: metric \"latency\" of template \"judge\" has no successCondition"), "{p:?}");
    let p = problems(&with("- experiment: {templates: [slo, judge], weight: 10, interval: 1m}"));
    assert_eq!(
        p,
        [
            "services[0].strategy.canary.steps[4].experiment.templates[0]: metric \"error-rate\" of template \"slo\" does not use {{args.track}}: it would measure the same for the baseline and the canary"
        ]
    );
    let p = problems(&with(
        "- experiment: {templates: [judge], weight: 60, replicas: 0, interval: 1m, intervals: 99, thresholds: {pass: 50, marginal: 80}, groupWeights: {a: 70, b: 40}, metrics: {latency: {allowedIncrease: -1}, nope: {}}}",
    ));
    assert_eq!(
        p,
        [
            "services[0].strategy.canary.steps[4].experiment.weight: 60 is not in 1..=50 (the baseline takes as much again)",
            "services[0].strategy.canary.steps[4].experiment.replicas: 0 is not in 1..=100",
            "services[0].strategy.canary.steps[4].experiment.intervals: 99 is not in 1..=24",
            "services[0].strategy.canary.steps[4].experiment.thresholds: need 0 ≤ marginal (80) ≤ pass (50) ≤ 100",
            "services[0].strategy.canary.steps[4].experiment.groupWeights: weights add up to more than 100",
            "services[0].strategy.canary.steps[4].experiment.metrics.latency.allowedIncrease: -1 is not a positive number",
            "services[0].strategy.canary.steps[4].experiment.metrics.nope: no template of the experiment has a metric \"nope\"",
        ]
    );
    let p = problems(&with("- experiment: {templates: [judge], weight: 10, interval: 2s, intervals: 24}"));
    assert!(
        p[0].ends_with(
            "measures every 5s, less often than the experiment's interval 2s: an interval would judge no new sample"
        ),
        "{p:?}"
    );
    let p = problems(&with("- experiment: {templates: [judge], weight: 10, interval: 2h, intervals: 2}"));
    assert!(p[0].contains("would take 2880 measurements per track"), "{p:?}");
}

#[test]
fn decreasing_weights_are_refused() {
    let yaml = GOOD.replace("setWeight: 50", "setWeight: 10");
    let p = problems(&yaml);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("services[0].strategy.canary.steps[3].setWeight: 10 is lower than the previous weight 25"),
        "{p:?}"
    );
}

#[test]
fn unknown_template_and_duplicate_step_names() {
    let yaml = GOOD.replace(
        "analysis: {templates: [slo]}\n          - setWeight: 50",
        "analysis: {templates: [nope]}\n          - setWeight: 50",
    );
    assert_eq!(
        problems(&yaml),
        vec![r#"services[0].strategy.canary.steps[2].analysis.templates[0]: unknown analysis template "nope""#]
    );
    let yaml = GOOD
        .replace("- setWeight: 25", "- name: quarter\n            setWeight: 25")
        .replace("- setWeight: 50", "- name: quarter\n            setWeight: 50");
    assert_eq!(problems(&yaml), vec![r#"services[0].strategy.canary.steps[3].name: duplicate step name "quarter""#]);
}

#[test]
fn type_errors_carry_their_path() {
    let yaml = GOOD.replace("setWeight: 25", "setWeight: quarter");
    let p = problems(&yaml);
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("services[0].strategy.canary.steps[0].setWeight: "), "{p:?}");
    let p = problems(&GOOD.replace("replicas: 2", "replicas: 2\n    colour: blue"));
    assert!(p[0].starts_with("services[0].colour: unknown field `colour`"), "{p:?}");
    let p = problems(&GOOD.replace("duration: 1m", "duration: 1 minute"));
    assert!(p[0].starts_with("services[0].strategy.canary.steps[1].pause.duration: "), "{p:?}");
    let p = problems("environments: [");
    assert!(p[0].starts_with("not valid YAML"), "{p:?}");
}

#[test]
fn structural_rules() {
    let p = problems(&GOOD.replace("from: staging", "from: qa"));
    assert_eq!(p, vec![r#"environments[1].from: unknown environment "qa""#]);
    let p = problems(&GOOD.replace("  - name: staging\n", "  - name: staging\n    from: production\n"));
    assert_eq!(p, vec!["environments: promotion order has a cycle (follow the `from` fields)"]);
    let p = problems(&GOOD.replace("- name: gateway", "- name: booking-service"));
    assert_eq!(p, vec![r#"services[1].name: duplicate service "booking-service""#]);
    let p = problems(&GOOD.replace("      blueGreen:", "      canary: {}\n      blueGreen:"));
    assert_eq!(p, vec!["services[1].strategy: exactly one of canary and blueGreen is required"]);
    let p = problems(&GOOD.replace("- pause: {}", "- pause: {}\n            setWeight: 60"));
    assert_eq!(
        p,
        vec![
            "services[0].strategy.canary.steps[4]: exactly one of setWeight, pause, analysis, approval, verify, migrate, setCanaryScale, setHeaderRoute, setMirrorRoute, experiment is required"
        ]
    );
    let p = problems(&GOOD.replace("minApprovals: 1", "minApprovals: 0"));
    assert_eq!(p, vec!["environments[1].approval.minApprovals: 0 is not in 1..=10"]);
    let p = problems(&GOOD.replace("interval: 30s", "interval: 0s"));
    assert!(p.contains(&"analysisTemplates[0].metrics[0].interval: must be greater than 0".to_string()), "{p:?}");
    let p = problems(&GOOD.replace("        interval: 30s\n", ""));
    assert_eq!(p, vec!["analysisTemplates[0].metrics[0].interval: required when count is greater than 1"]);
}

#[test]
fn per_environment_override_is_validated() {
    let yaml = GOOD.replace(
        "    migrations:",
        "    environments:\n      production:\n        strategy:\n          canary:\n            steps:\n              - setWeight: 101\n    migrations:",
    );
    assert_eq!(
        problems(&yaml),
        vec!["services[0].environments.production.strategy.canary.steps[0].setWeight: 101 is not in 0..=100"]
    );
    let yaml = GOOD.replace("    migrations:", "    environments:\n      qa: {replicas: 1}\n    migrations:");
    assert_eq!(problems(&yaml), vec![r#"services[0].environments.qa: unknown environment "qa""#]);
}

#[test]
fn migrations_on_abort() {
    let config = DeliveryConfig::load(GOOD).expect("valid");
    let m = config.service("booking-service").unwrap().migrations.clone().unwrap();
    assert_eq!(m.on_abort, OnAbort::Freeze, "freeze unless the service says undo");
    let yaml = GOOD.replace(
        "locations: [deploy/hopngo/migrations/booking]}",
        "locations: [deploy/hopngo/migrations/booking], onAbort: undo}",
    );
    let config = DeliveryConfig::load(&yaml).expect("valid");
    assert_eq!(config.service("booking-service").unwrap().migrations.clone().unwrap().on_abort, OnAbort::Undo);
    let p =
        problems(&GOOD.replace("locations: [deploy/hopngo/migrations/booking]}", "locations: [x], onAbort: revert}"));
    assert!(p[0].starts_with("services[0].migrations.onAbort: unknown variant `revert`"), "{p:?}");
}

#[test]
fn each_environment_may_migrate_its_own_database() {
    let yaml = GOOD.replace(
        "    migrations:",
        "    environments:\n      production:\n        migrations: {database: booking-production}\n    migrations:",
    );
    let config = DeliveryConfig::load(&yaml).expect("valid");
    let booking = config.service("booking-service").unwrap();
    let production = booking.migrations_in("production").unwrap();
    assert_eq!(production.database, "booking-production");
    assert_eq!(production.locations, ["deploy/hopngo/migrations/booking"], "the scripts are the service's");
    assert_eq!(booking.migrations_in("staging").unwrap().database, "booking");
    assert_eq!(config.service("gateway").unwrap().migrations_in("production"), None);

    let yaml = GOOD.replace(
        "    migrations:",
        "    environments:\n      production:\n        migrations: {database: Booking, locations: [\"\"]}\n    migrations:",
    );
    assert_eq!(
        problems(&yaml),
        vec![
            r#"services[0].environments.production.migrations.database: "Booking" is not a valid name (lower-case letters, digits and '-', starting with a letter, at most 63)"#,
            "services[0].environments.production.migrations.locations[0]: must not be empty",
        ]
    );
    let yaml = GOOD.replace(
        "        autoPromotionEnabled: false\n",
        "        autoPromotionEnabled: false\n    environments:\n      staging:\n        migrations: {database: gateway}\n",
    );
    assert_eq!(
        problems(&yaml),
        vec![
            "services[1].environments.staging.migrations: the service declares no migrations to override (declare them on the service)"
        ]
    );
}

#[test]
fn promotion_windows_and_dependencies() {
    let promoted = GOOD.replace(
        "    progressDeadline: 15m\n",
        "    progressDeadline: 15m\n    promotion: {soak: 10m}\n    maintenanceWindows:\n      - {schedule: \"0 22 * * 1-5\", duration: 4h, timeZone: Europe/Berlin}\n",
    );
    let config = DeliveryConfig::load(&promoted).expect("valid");
    let production = config.environment("production").unwrap();
    let promotion = production.promotion.clone().unwrap();
    assert!(promotion.require_verification, "verification is required unless switched off");
    assert_eq!(promotion.soak, Some(Dur(Duration::from_secs(600))));
    assert_eq!(production.maintenance_windows[0].parse().unwrap().to_string(), "0 22 * * 1-5 for 4h (Europe/Berlin)");

    let p = problems(&promoted.replace("0 22 * * 1-5", "0 25 * * 1-5"));
    assert_eq!(p, vec!["environments[1].maintenanceWindows[0].schedule: hour: 25 is not in 0..=23"]);
    let p = problems(&promoted.replace("Europe/Berlin", "Europe/Atlantis"));
    assert_eq!(
        p,
        vec![r#"environments[1].maintenanceWindows[0].timeZone: "Europe/Atlantis" is not a known IANA time zone"#]
    );
    let p = problems(&promoted.replace("duration: 4h", "duration: 8d"));
    assert_eq!(p, vec!["environments[1].maintenanceWindows[0].duration: at most 7d"]);
    let frozen = GOOD.replace(
        "    progressDeadline: 15m\n",
        "    progressDeadline: 15m\n    freezeWindows:\n      - {schedule: \"0 16 * * 5\", duration: 64h, timeZone: Europe/Berlin, reason: weekend}\n",
    );
    let config = DeliveryConfig::load(&frozen).expect("valid");
    let window = &config.environment("production").unwrap().freeze_windows[0];
    assert_eq!(window.parse().unwrap().to_string(), "0 16 * * 5 for 2d16h (Europe/Berlin)");
    assert_eq!(window.reason.as_deref(), Some("weekend"));
    let p = problems(&frozen.replace("duration: 64h", "duration: 8d").replace("reason: weekend", "reason: \" \""));
    assert_eq!(
        p,
        vec![
            "environments[1].freezeWindows[0].duration: at most 7d",
            "environments[1].freezeWindows[0].reason: must be 1-1024 characters when given"
        ]
    );
    let p = problems(&GOOD.replace("  - name: staging\n", "  - name: staging\n    promotion: {soak: 1m}\n"));
    assert_eq!(p, vec!["environments[0].promotion: needs `from`: there is no environment to promote from"]);

    let deps = GOOD.replace("    replicas: 2\n", "    replicas: 2\n    dependsOn: [gateway]\n");
    assert_eq!(DeliveryConfig::load(&deps).unwrap().service("booking-service").unwrap().depends_on, vec!["gateway"]);
    let p = problems(&GOOD.replace("    replicas: 2\n", "    replicas: 2\n    dependsOn: [auth]\n"));
    assert_eq!(p, vec![r#"services[0].dependsOn[0]: unknown service "auth""#]);
    let p = problems(&GOOD.replace("    replicas: 2\n", "    replicas: 2\n    dependsOn: [booking-service]\n"));
    assert_eq!(p, vec!["services[0].dependsOn[0]: a service cannot depend on itself"]);
    let cycle = deps.replace("  - name: gateway\n", "  - name: gateway\n    dependsOn: [booking-service]\n");
    assert_eq!(problems(&cycle), vec!["services: dependsOn has a cycle: booking-service → gateway → booking-service"]);
}

#[test]
fn hostile_nesting_and_size_are_problems_not_crashes() {
    for yaml in [
        "[".repeat(100_000),
        format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)),
        format!("{}1{}", "{a: ".repeat(5_000), "}".repeat(5_000)),
        (0..5_000).map(|i| format!("{}a:\n", "  ".repeat(i))).collect(),
    ] {
        let err = DeliveryConfig::parse(&yaml).unwrap_err();
        assert!(err.message.contains("not valid YAML"), "{}", err.message);
    }
}

#[test]
fn a_step_is_one_kind_with_an_optional_name_beside_it() {
    let one_kind = "exactly one of setWeight, pause, analysis, approval, verify, migrate, setCanaryScale, setHeaderRoute, setMirrorRoute, experiment is required";
    assert_eq!(StepDef::kinds().len(), 10);
    let p = problems(&GOOD.replace("- pause: {}", "- name: hold"));
    assert_eq!(p, vec![format!("services[0].strategy.canary.steps[4]: {one_kind}")]);
    let p = problems(&GOOD.replace("- pause: {}", "- {}"));
    assert_eq!(p, vec![format!("services[0].strategy.canary.steps[4]: {one_kind}")]);
    let p = problems(&GOOD.replace("- pause: {}", "- colour: blue"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("services[0].strategy.canary.steps[4]: unknown variant `colour`, expected one of `setWeight`")
    );
    let p = problems(&GOOD.replace("- pause: {}", "- pause: {}\n            name: 7"));
    assert!(p[0].starts_with("services[0].strategy.canary.steps[4].name: invalid type"), "{p:?}");

    // The name may come before or after the kind; both read (and write back) the same.
    let config = DeliveryConfig::load(&GOOD.replace("- pause: {}", "- pause: {}\n            name: hold")).unwrap();
    let steps = &config.services[0].strategy.canary.as_ref().unwrap().steps;
    assert_eq!(steps[4].name.as_deref(), Some("hold"));
    assert!(matches!(steps[4].step, StepDef::Pause(PauseDef { duration: None })));
    assert_eq!(serde_json::to_value(&steps[4]).unwrap(), serde_json::json!({"name": "hold", "pause": {}}));
    assert_eq!(serde_json::to_value(&steps[0]).unwrap(), serde_json::json!({"setWeight": 25}));
}

#[test]
fn template_typos_are_refused_when_the_config_is_applied() {
    let p = problems(&GOOD.replace("successCondition: result < 0.01", "successCondition: reslt < 0.01"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("analysisTemplates[0].metrics[0].successCondition: unknown name \"reslt\""), "{p:?}");
    let p = problems(&GOOD.replace("successCondition: result < 0.01", "failureCondition: result >"));
    assert!(p[0].starts_with("analysisTemplates[0].metrics[0].failureCondition: "), "{p:?}");
    let p = problems(&GOOD.replace("expression: ratio(errors, requests)", "expression: ratio(errors, requests"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("analysisTemplates[0].metrics[0].provider.scrape.expression: "), "{p:?}");

    // Arguments are filled in when a run starts: a number in a condition, a name in a scrape
    // expression, a label value in quotes all parse.
    let with_args = GOOD
        .replace(
            "successCondition: result < 0.01",
            "successCondition: result < {{args.max}} && result >= {{ args.min }}",
        )
        .replace(
            "expression: ratio(errors, requests)",
            "expression: 'ratio({{args.errors}}{service=\"{{args.service}}\"}, requests)'",
        );
    assert_eq!(problems(&with_args), Vec::<String>::new());
    let p = problems(&GOOD.replace("successCondition: result < 0.01", "successCondition: reslt < {{args.max}}"));
    assert!(p[0].contains("unknown name \"reslt\""), "{p:?}");
}

#[test]
fn kubernetes_settings_are_checked_field_by_field() {
    let yaml = "environments:
  - name: staging
    kubernetes: {namespace: Hop_Staging, serviceAccount: apps}
  - name: production
    kubernetes: {namespace: hopngo-production, gateway: {name: public}}
services:
  - name: booking
    strategy: {canary: {steps: [{setWeight: 50}]}}
    kubernetes:
      image: registry.example/booking:1.0
      containerPort: 0
      readinessProbe: {path: healthz}
      resources: {requests: {cpu: lots, gpu: '1'}}
      env: {'1BAD': x}
      route: {hostnames: [booking.example, 'bad host']}
  - name: a-service-name-that-is-far-too-long-for-kubernetes-objects
    strategy: {canary: {steps: [{setWeight: 50}]}}
    kubernetes: {image: registry.example/chat}
  - name: chat
    strategy: {canary: {steps: [{approval: {}}, {setWeight: 10}]}}
    kubernetes: {image: registry.example/chat}
    argoRollout: {name: chat, container: App, image: registry.example/chat}
";
    assert_eq!(
        problems(yaml),
        vec![
            "environments[0].kubernetes.namespace: \"Hop_Staging\" is not a namespace name (DNS label)",
            "services[0].kubernetes.image: \"registry.example/booking:1.0\" has a tag or digest; give the repository only (the artifact is the tag)",
            "services[0].kubernetes.containerPort: must be in 1..=65535",
            "services[0].kubernetes.readinessProbe.path: \"healthz\" is not a path (starts with '/')",
            "services[0].kubernetes.resources.requests.cpu: \"lots\" is not a quantity (100m, 0.5, 256Mi)",
            "services[0].kubernetes.resources.requests.gpu: known resources: cpu, memory, ephemeral-storage",
            "services[0].kubernetes.env: \"1BAD\" is not a variable name",
            "services[0].kubernetes.route: needs a gateway: every environment on Kubernetes needs kubernetes.gateway (the route's parent)",
            "services[0].kubernetes.route.hostnames[1]: \"bad host\" is not a host name",
            "services[1].name: at most 55 characters on Kubernetes (object names add \"-preview\")",
            "services[2].argoRollout: a service runs either on Deployments the deployer owns (kubernetes) or on its Argo Rollout, not both",
            "services[2].argoRollout.container: \"App\" is not a container name",
            "services[2].strategy.canary.steps[1]: an argoRollout service's traffic follows its Rollout's own steps; set weights in the Rollout",
        ]
    );
}

#[test]
fn a_template_has_one_form_per_backend_and_each_environment_gets_its_own() {
    let yaml = "environments:
  - name: dev
  - name: staging
    kubernetes: {namespace: hopngo-staging}
analysisTemplates:
  - name: slo
    backend: local
    metrics: [{name: errors, successCondition: result < 1, provider: {scrape: {url: 'http://127.0.0.1:9465/metrics', expression: 'rate(requests)'}}}]
  - name: slo
    backend: kubernetes
    args: [{name: prometheus}]
    metrics: [{name: errors, successCondition: result < 1, provider: {prometheus: {address: '{{args.prometheus}}', query: 'sum(up)'}}}]
  - name: smoke
    metrics: [{name: smoke, successCondition: result == 1, provider: {web: {url: 'http://127.0.0.1:1/'}}}]
services:
  - name: booking
    strategy: {canary: {steps: [{setWeight: 50}], analysis: {templates: [slo], args: {prometheus: 'http://p:9090'}}}}
";
    assert_eq!(problems(yaml), Vec::<String>::new());
    let config = DeliveryConfig::parse(yaml).unwrap();
    let provider = |env: &str| {
        let env = config.environment(env).unwrap();
        let view = config.for_environment(env);
        let slo = view.template("slo").unwrap();
        (slo.backend, slo.metrics[0].provider.prometheus.is_some(), view.template("smoke").is_some())
    };
    assert_eq!(provider("dev"), (Some(Backend::Local), false, true));
    assert_eq!(provider("staging"), (Some(Backend::Kubernetes), true, true));

    // A missing form is named with the environment that needs it; a second form for the same
    // backend (or a form beside one for every backend) is a duplicate.
    let without_kubernetes_form = yaml.replace("    backend: kubernetes\n", "    backend: local\n");
    assert_eq!(
        problems(&without_kubernetes_form),
        vec![
            "analysisTemplates[1].name: duplicate analysis template \"slo\" for the local backend",
            "services[0].strategy: analysis template \"slo\" has no form for the kubernetes backend, which environment \"staging\" runs on",
        ]
    );
    assert_eq!(
        problems(&yaml.replace("    backend: local\n", "")),
        vec![
            "analysisTemplates[1].name: duplicate analysis template \"slo\" (a name may have one form per backend, each with `backend`)"
        ]
    );
}
