//! `deploy/observability/`: the alerting and recording rules pass `promtool check rules`, their
//! unit tests pass `promtool test rules`, every alert has such a test, and every control-plane
//! metric a rule reads is one a service registers; every Grafana dashboard query is PromQL that
//! promtool accepts and reads only metrics that exist: registered by a service, recorded by the
//! rules, or exported by what the dashboards say they read (the services' HTTP histogram,
//! cAdvisor, kube-state-metrics). The business dashboard shows exactly what HopNGo's business
//! analysis templates judge, and their local and Kubernetes forms count the same series.

use std::{collections::BTreeSet, path::Path, process::Command};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {dir}");
    files
}

fn promtool(args: &[&str], files: &[std::path::PathBuf]) {
    let out = Command::new("promtool").args(args).args(files).output().expect("promtool (package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Words of `text` that look like `hopngo_…` metric names.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("hopngo_"))
        .map(str::to_string)
        .collect()
}

/// The `hopngo_…` names registered in the services' sources (string literals), with the
/// histograms' series suffixes.
fn registered() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for literal in text.split('"').skip(1).step_by(2) {
                    if literal.starts_with("hopngo_") && literal.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        for suffix in ["", "_bucket", "_sum", "_count"] {
                            out.insert(format!("{literal}{suffix}"));
                        }
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for service in ["scheduler", "deployer", "analyzer", "migrator", "notifier", "kit"] {
        walk(&root().join("services").join(service).join("src"), &mut names);
    }
    names
}

#[test]
fn rules_pass_promtool_and_their_unit_tests() {
    promtool(&["check", "rules"], &files("deploy/observability/rules"));
    promtool(&["test", "rules"], &files("deploy/observability/tests"));
}

#[test]
fn every_alert_has_a_unit_test_and_every_metric_exists() {
    let tests: String =
        files("deploy/observability/tests").iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    let registered = registered();
    for file in files("deploy/observability/rules") {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(alert) = rule["alert"].as_str() {
                    assert!(
                        tests.contains(&format!("alertname: {alert}\n")),
                        "{}: alert {alert} has no promtool unit test",
                        file.display()
                    );
                }
                let expr = rule["expr"].as_str().unwrap();
                for name in metric_names(expr) {
                    assert!(
                        registered.contains(&name),
                        "{}: {name} is not a metric any service registers",
                        file.display()
                    );
                }
            }
        }
    }
}

/// Metrics the dashboards read that the control plane does not export: the services' HTTP server
/// histogram (the demo service stands in for it), cAdvisor's and kube-state-metrics'.
const EXTERNAL: &[&str] = &[
    "http_server_request_duration_seconds_count",
    "http_server_request_duration_seconds_bucket",
    "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes",
    "kube_pod_container_resource_limits",
    "kube_pod_container_status_restarts_total",
    "kube_pod_status_ready",
    "kube_pod_info",
];

/// PromQL's functions, aggregations and keywords (the words of an expression that are not metrics).
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "irate",
    "increase",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "or",
    "and",
    "unless",
    "vector",
    "clamp_min",
    "label_values",
    "offset",
    "bool",
    "topk",
    "bottomk",
    "abs",
    "time",
];

/// The metric names an expression reads: its words, without strings, label matchers, ranges,
/// grouping clauses, numbers and PromQL's own words.
fn metrics_read(expr: &str) -> BTreeSet<String> {
    let mut plain = String::new();
    let (mut depth_brace, mut depth_bracket, mut quoted) = (0, 0, false);
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            c => plain.push(c),
        }
    }
    // `by (a, b)` and friends name labels.
    for clause in ["by", "without", "on", "ignoring", "group_left", "group_right"] {
        while let Some(at) = plain.find(&format!("{clause} (")) {
            let end = plain[at..].find(')').map(|e| at + e + 1).unwrap_or(plain.len());
            plain.replace_range(at..end, " ");
        }
    }
    plain
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| !w.is_empty() && !w.starts_with(|c: char| c.is_ascii_digit()) && !PROMQL_WORDS.contains(w))
        .map(str::to_string)
        .collect()
}

#[test]
fn dashboards_query_valid_promql_over_metrics_that_exist() {
    let dir = root().join("deploy/observability/dashboards");
    let mut dashboards: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    dashboards.sort();
    let mut known = registered();
    known.extend(EXTERNAL.iter().map(|s| s.to_string()));
    for file in files("deploy/observability/rules") {
        let doc: serde_json::Value = serde_saphyr::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for group in doc["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                if let Some(record) = rule["record"].as_str() {
                    known.insert(record.to_string());
                }
            }
        }
    }
    let demo = std::fs::read_to_string(root().join("services/deployer/src/demo.rs")).unwrap();
    assert!(demo.contains("\"http_server_request_duration_seconds\""), "the demo service exports the HTTP histogram");

    let mut uids = BTreeSet::new();
    let mut rules = Vec::new();
    for path in &dashboards {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(uids.insert(dashboard["uid"].as_str().unwrap().to_string()), "{name}: uid used twice");
        let variables: Vec<&serde_json::Value> = dashboard["templating"]["list"].as_array().unwrap().iter().collect();
        let mut queries: Vec<(String, String)> = Vec::new();
        for variable in &variables {
            if let Some(query) = variable["definition"].as_str() {
                // `label_values(SELECTOR, LABEL)`: the selector names the metric.
                let rest = query.strip_prefix("label_values(").expect("variables list label values");
                let mut depth = 0;
                let end = rest
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '{' | '(' => 1,
                            '}' | ')' => -1,
                            _ => 0,
                        };
                        c == ',' && depth == 0
                    })
                    .map(|(i, _)| i)
                    .expect("label_values(SELECTOR, LABEL)");
                queries.push((format!("variable {}", variable["name"]), rest[..end].to_string()));
            }
        }
        let mut ids = BTreeSet::new();
        for panel in dashboard["panels"].as_array().unwrap() {
            let title = panel["title"].as_str().unwrap();
            assert!(ids.insert(panel["id"].as_u64().unwrap()), "{name}: panel id used twice");
            assert_eq!(panel["datasource"]["uid"], "${datasource}", "{name}: {title} reads the chosen Prometheus");
            let targets = panel["targets"].as_array().unwrap();
            assert!(!targets.is_empty(), "{name}: {title} has no query");
            for target in targets {
                let expr = target["expr"].as_str().unwrap();
                queries.push((title.to_string(), expr.to_string()));
                // Variables as Grafana substitutes them for "All".
                let mut concrete = expr.to_string();
                for variable in &variables {
                    concrete = concrete.replace(&format!("${}", variable["name"].as_str().unwrap()), ".*");
                }
                rules.push(serde_json::json!({"record": format!("dashboard:query:{}", rules.len()), "expr": concrete}));
            }
        }
        for (what, query) in queries {
            for metric in metrics_read(&query) {
                assert!(known.contains(&metric), "{name}: {what}: {metric} is not a metric anything exports");
            }
        }
    }
    assert!(dashboards.len() >= 4, "the dashboards are there");
    let file = std::env::temp_dir().join(format!("hopngo-dashboard-queries-{}.yaml", std::process::id()));
    std::fs::write(&file, serde_json::json!({"groups": [{"name": "dashboards", "rules": rules}]}).to_string()).unwrap();
    promtool(&["check", "rules"], std::slice::from_ref(&file));
    let _ = std::fs::remove_file(file);
}

/// The `hopngo_business_operations_total{…}` selectors of a query or expression, without the
/// labels each form fills differently (`[window]` is outside the braces).
fn business_selectors(text: &str) -> Vec<String> {
    text.match_indices("hopngo_business_operations_total{")
        .map(|(at, _)| {
            let rest = &text[at..];
            rest[..=rest.find('}').unwrap()].to_string()
        })
        .collect()
}

#[test]
fn the_business_dashboard_shows_what_the_business_templates_judge() {
    let path = root().join("deploy/observability/dashboards/hopngo-business.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let panels: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_string()))
        .collect();
    let one_line = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for name in ["login-success", "booking-completion", "payment-processing"] {
        let kubernetes = hopngo_e2e::hopngo_template(name, "kubernetes");
        let local = hopngo_e2e::hopngo_template(name, "local");
        let queries: BTreeSet<String> = kubernetes["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| one_line(m["provider"]["prometheus"]["query"].as_str().unwrap()))
            .collect();
        assert_eq!(queries.len(), 1, "{name}: its metrics judge one rate at two thresholds");
        let query = queries.into_iter().next().unwrap();
        // As Grafana fills it for the chosen services, environments and tracks, over 5m.
        let mut shown = query.replace("[{{args.rateWindow}}]", "[5m]");
        for label in ["service", "environment", "track"] {
            shown = shown.replace(&format!("{label}=\"{{{{args.{label}}}}}\""), &format!("{label}=~\"${label}\""));
        }
        assert!(!shown.contains("{{"), "{name}: only the scheduler's arguments and the window: {shown}");
        assert!(panels.contains(&shown), "{name}: no panel shows\n{shown}\npanels:\n{panels:#?}");
        for metric in local["metrics"].as_array().unwrap() {
            let expression = metric["provider"]["scrape"]["expression"].as_str().unwrap();
            assert_eq!(business_selectors(expression), business_selectors(&query), "{name}: both forms count the same");
        }
    }
    // Every route a panel filters on is one the demo service names, so the local stack fills it.
    let demo = std::fs::read_to_string(root().join("services/deployer/src/demo.rs")).unwrap();
    for expr in &panels {
        for (at, _) in expr.match_indices("http_route=\"") {
            let route = &expr[at + 12..];
            let route = &route[..route.find('"').unwrap()];
            assert!(demo.contains(&format!("\"{route}\"")), "the demo service has no route {route}");
        }
    }
}
