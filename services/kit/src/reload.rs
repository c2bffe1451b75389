//! Files the services read at start and again when they change (certificates, the tokens file,
//! the access policy): checked at most once a second, on use. A new version that does not load
//! is logged and the last good one stays, so a half-written renewal or a typo locks nobody out.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

/// How often the files are looked at.
const RECHECK: Duration = Duration::from_secs(1);

type Loader<T> = Box<dyn Fn() -> Result<T, String> + Send + Sync>;

/// A value loaded from files, reloaded when any of them changes.
pub struct Reloading<T> {
    what: &'static str,
    paths: Vec<PathBuf>,
    load: Loader<T>,
    state: Mutex<State<T>>,
}

struct State<T> {
    value: Arc<T>,
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths.iter().map(|p| std::fs::metadata(p).ok().and_then(|m| Some((m.modified().ok()?, m.len())))).collect()
}

impl<T> Reloading<T> {
    /// Loads `what` from `paths` with `load` (which reads them); fails if the first load fails.
    pub fn new(
        what: &'static str,
        paths: &[&Path],
        load: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, String> {
        let paths: Vec<PathBuf> = paths.iter().map(|p| p.to_path_buf()).collect();
        let stamp = stamp(&paths);
        let value = Arc::new(load()?);
        Ok(Reloading {
            what,
            paths,
            load: Box::new(load),
            state: Mutex::new(State { value, stamp, checked: Instant::now() }),
        })
    }

    /// The value as of the files now.
    pub fn current(&self) -> Arc<T> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.checked.elapsed() >= RECHECK {
            state.checked = Instant::now();
            let now = stamp(&self.paths);
            if now != state.stamp {
                // A half-written set fails here and is tried again on the next change (the stamp
                // moves again) while the previous value keeps serving.
                state.stamp = now;
                match (self.load)() {
                    Ok(value) => {
                        tracing::info!(what = self.what, file = %self.paths[0].display(), "reloaded");
                        state.value = Arc::new(value);
                    }
                    Err(error) => {
                        tracing::error!(what = self.what, %error, "not reloaded; the previous version stays");
                    }
                }
            }
        }
        Arc::clone(&state.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_last_good_value() {
        let dir = std::env::temp_dir().join(format!("hopngo-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("number");
        std::fs::write(&file, "1").unwrap();
        let path = file.clone();
        let number = Reloading::new("number", &[&file], move || {
            std::fs::read_to_string(&path).unwrap().trim().parse::<u32>().map_err(|e| e.to_string())
        })
        .unwrap();
        assert_eq!(*number.current(), 1);
        std::fs::write(&file, "22").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert_eq!(*number.current(), 22);
        std::fs::write(&file, "not a number").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(100));
        assert_eq!(*number.current(), 22);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
