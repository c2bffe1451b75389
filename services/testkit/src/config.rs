//! Delivery config files for services under test that read one (the analyzer's
//! `--delivery-config`): providers may reach loopback, and the given jobs are declared.

use std::path::PathBuf;

/// A job as a test sends it: the command and its environment.
pub type TestJob<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

/// Writes a config that allows loopback hosts and declares `jobs` (each a command and its
/// environment, as tests send them) in an analysis template; returns its path (in the temporary
/// directory, unique per call).
pub fn loopback_config(jobs: &[TestJob<'_>]) -> PathBuf {
    let quote = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    let mut yaml =
        String::from("environments: [{name: staging}]\nproviders:\n  allowedHosts: [127.0.0.1, localhost, \"::1\"]\n");
    if !jobs.is_empty() {
        yaml.push_str("analysisTemplates:\n  - name: test-jobs\n    metrics:\n");
        for (i, (command, env)) in jobs.iter().enumerate() {
            let command: Vec<String> = command.iter().map(|c| quote(c)).collect();
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{}: {}", quote(k), quote(v))).collect();
            yaml.push_str(&format!(
                "      - name: job-{i}\n        provider: {{job: {{command: [{}], env: {{{}}}}}}}\n",
                command.join(", "),
                env.join(", ")
            ));
        }
    }
    yaml.push_str("services:\n  - name: test\n    strategy: {canary: {steps: [{setWeight: 100}]}}\n");
    let path = std::env::temp_dir().join(format!("hopngo-test-delivery-{}.yaml", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, yaml).expect("writing a test delivery config");
    path
}
