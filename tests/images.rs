//! The Dockerfile: hadolint finds nothing, and what it builds fits the code — every binary it
//! copies is one the workspace builds, every service has a stage that runs as a non-root user
//! with nothing but its own binaries (no `RUN`: no shell needed), and every variable it sets is
//! one the service reads.

use std::{collections::BTreeMap, path::Path, process::Command};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).unwrap()
}

/// Stage name → its instruction lines (continuations joined).
fn stages(text: &str) -> BTreeMap<String, Vec<String>> {
    let joined = text.replace("\\\n", " ");
    let mut stages = BTreeMap::new();
    let mut current = String::new();
    for line in joined.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        if let Some(from) = line.strip_prefix("FROM ") {
            current = from.rsplit(" AS ").next().unwrap_or_default().to_string();
        }
        stages.entry(current.clone()).or_insert_with(Vec::new).push(line.to_string());
    }
    stages
}

/// The binaries the workspace builds (`cargo metadata`).
fn workspace_binaries() -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn hadolint_finds_nothing() {
    let hadolint = hopngo_testkit::python::test_python().with_file_name("hadolint");
    let out = Command::new(&hadolint)
        .arg(root().join("Dockerfile"))
        .output()
        .expect("hadolint (tools/python-requirements.txt)");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_service_has_a_minimal_non_root_stage_of_binaries_the_workspace_builds() {
    let text = dockerfile();
    let stages = stages(&text);
    let build = stages["build"].join("\n");
    let binaries = workspace_binaries();
    for (service, extra) in [
        ("scheduler", None),
        ("deployer", None),
        ("analyzer", Some("hopngo-smoke")),
        ("migrator", None),
        ("notifier", None),
    ] {
        let binary = format!("hopngo-{service}");
        let stage = stages.get(service).unwrap_or_else(|| panic!("no stage {service}"));
        let lines = stage.join("\n");
        assert!(stage[0].starts_with("FROM runtime AS"), "{service} builds on the distroless runtime: {}", stage[0]);
        assert!(!lines.contains("RUN "), "{service}'s image runs nothing at build time (it has no shell)");
        assert!(lines.contains(&format!("ENTRYPOINT [\"/usr/local/bin/{binary}\"]")), "{service}: {lines}");
        for bin in std::iter::once(binary.as_str()).chain(extra) {
            assert!(lines.contains(&format!("/out/{bin}")), "{service} copies {bin}");
            assert!(build.contains(&format!("target/release/{bin}")), "the build stage copies {bin} out");
            assert!(binaries.iter().any(|b| b == bin), "{bin} is not a binary of the workspace: {binaries:?}");
        }
        // The variables it sets are the service's own.
        let server = std::fs::read_to_string(root().join("services").join(service).join("src/server.rs")).unwrap()
            + &std::fs::read_to_string(root().join("services/kit/src/args.rs")).unwrap();
        for env in lines.lines().filter_map(|l| l.strip_prefix("ENV ")) {
            for name in env.split_whitespace().filter_map(|kv| kv.split_once('=')).map(|(k, _)| k) {
                assert!(
                    name == "PATH" || server.contains(&format!("\"{name}\"")),
                    "{service}: {name} is not a flag's variable"
                );
            }
        }
    }
    let runtime = stages["runtime"].join("\n");
    assert!(runtime.contains("distroless/cc") && runtime.contains(":nonroot"), "{runtime}");
    assert!(runtime.contains("USER 65532:65532"), "non-root by number, so runAsNonRoot can check it");
    let ignored = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    for path in ["target", ".git"] {
        assert!(ignored.lines().any(|l| l == path), ".dockerignore leaves {path} out of the build context");
    }
}
