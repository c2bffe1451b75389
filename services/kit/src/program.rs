//! Finding a program the way `execvp` does, so a check can say "not found" before anything runs.

use std::path::{Path, PathBuf};

/// Where `program` would be run from: the path itself when it contains a `/`, else the first
/// `PATH` entry holding a file of that name.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_on_path_and_by_path() {
        assert!(super::find("sh").is_some());
        assert!(super::find("/bin/sh").is_some());
        assert!(super::find("no-such-program-hopngo").is_none());
        assert!(super::find("./no/such").is_none());
        assert!(super::find("").is_none());
    }
}
