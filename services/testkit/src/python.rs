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
