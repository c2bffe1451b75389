//! The Python the tests run foreign clients and schema checks with: `HOPNGO_TEST_PYTHON`, else
//! the virtualenv `scripts/test.sh` builds in `target/python` from `tools/python-requirements.txt`.

use std::path::PathBuf;

/// The test Python; panics with what to run when it is missing.
pub fn test_python() -> PathBuf {
    let path = std::env::var_os("HOPNGO_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/python/bin/python")));
    assert!(path.exists(), "{} is missing: run scripts/test.sh, which installs the Python clients", path.display());
    path
}

/// A script of `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/python")).join(name)
}

/// Checks `objects` against the real schemas of Kubernetes 1.33 as an API server would
/// (`tests/python/validate_objects.py`: built-in kinds strictly, HTTPRoute and Rollout by their
/// CRDs): Ok with its report, or Err with it.
pub fn validate_objects(objects: &[serde_json::Value]) -> Result<String, String> {
    let path = std::env::temp_dir().join(format!("hopngo-objects-{}.json", uuid::Uuid::now_v7().simple()));
    std::fs::write(&path, serde_json::to_vec(objects).expect("JSON values")).expect("a temporary file");
    let output = std::process::Command::new(test_python())
        .arg(script("validate_objects.py"))
        .arg(&path)
        .arg("1.33.0")
        .output()
        .expect("the test Python runs");
    let _ = std::fs::remove_file(&path);
    let report = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    if output.status.success() { Ok(report) } else { Err(report) }
}
