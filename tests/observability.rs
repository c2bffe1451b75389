//! `deploy/observability/`: the alerting and recording rules pass `promtool check rules`, their
//! unit tests pass `promtool test rules`, every alert has such a test, and every control-plane
//! metric a rule reads is one a service registers.

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
