//! Reads migration scripts from locations (directories, scanned recursively as Flyway does) into
//! resolved migrations: name parsed, text decoded, checksum computed, sidecar `.conf` read,
//! duplicates refused. Every problem names the file.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
};

use crate::domain::{
    checksum::{checksum, decode},
    info::{MigrationType, ResolvedMigration},
    naming::{self, ScriptKind, abbreviate_script},
    placeholders::Placeholders,
    sql::{self, Directives, Statement, StatementKind},
    version::Version,
};

/// A script read from disk.
#[derive(Clone, Debug)]
pub struct Script {
    /// Path relative to its location, `/`-separated (the history's `script` column).
    pub script: String,
    /// Where it is on disk.
    pub path: PathBuf,
    /// What it is.
    pub kind: ScriptKind,
    /// Description from the name.
    pub description: String,
    /// Decoded text as written.
    pub raw: String,
    /// Whether `${…}` placeholders are replaced (sidecar `placeholderReplacement`).
    pub placeholder_replacement: bool,
    /// Sidecar `executeInTransaction`, when given.
    pub execute_in_transaction: Option<bool>,
    /// `-- hopngo:` directives.
    pub directives: Directives,
}

impl Script {
    /// The text to run: placeholders replaced (with `flyway:filename` set for this script).
    pub fn text(&self, placeholders: &Placeholders) -> Result<String, String> {
        if !self.placeholder_replacement {
            return Ok(self.raw.clone());
        }
        let file = self.script.rsplit('/').next().unwrap_or(&self.script).to_string();
        placeholders.with("flyway:filename", file).replace(&self.raw).map_err(|e| format!("{}: {e}", self.script))
    }

    /// Statements of the text to run, and whether they run inside a transaction.
    pub fn statements(&self, placeholders: &Placeholders, mixed: bool) -> Result<(Vec<Statement>, bool), String> {
        let text = self.text(placeholders)?;
        let statements = sql::split(&text).map_err(|e| format!("{}: {e}", self.script))?;
        let non_tx: Vec<&Statement> =
            statements.iter().filter(|s| matches!(s.kind, StatementKind::NonTransactional(_))).collect();
        let in_transaction = match self.execute_in_transaction {
            Some(explicit) => explicit,
            None if non_tx.is_empty() => true,
            None if mixed || non_tx.len() == statements.len() => false,
            None => {
                let first = non_tx[0];
                let what = match &first.kind {
                    StatementKind::NonTransactional(w) => w.as_str(),
                    _ => "",
                };
                return Err(format!(
                    "{}: Detected both transactional and non-transactional statements within the same migration (line {}: {what} cannot run inside a transaction). Put it in a migration of its own, or allow mixed migrations",
                    self.script, first.line
                ));
            }
        };
        if in_transaction
            && let Some(s) = statements.iter().find(|s| matches!(s.kind, StatementKind::TransactionControl(_)))
        {
            let StatementKind::TransactionControl(what) = &s.kind else { unreachable!("matched above") };
            return Err(format!(
                "{} line {}: {what} would end the migration's own transaction (each migration runs in one transaction with its history row); remove it",
                self.script, s.line
            ));
        }
        Ok((statements, in_transaction))
    }

    /// The resolved view of a migrating script (not undo, not callback).
    fn resolved(&self, placeholders: &Placeholders) -> Result<ResolvedMigration, String> {
        let raw_checksum = checksum(&self.raw);
        let (version, kind) = match &self.kind {
            ScriptKind::Versioned(v) => (Some(v.clone()), MigrationType::Sql),
            ScriptKind::Baseline(v) => (Some(v.clone()), MigrationType::SqlBaseline),
            ScriptKind::Repeatable => (None, MigrationType::Sql),
            ScriptKind::Undo(_) | ScriptKind::Callback(_) => unreachable!("only migrating scripts are resolved"),
        };
        // Repeatables are checksummed after placeholder replacement, so a changed value re-runs
        // them; the raw checksum is still accepted (Flyway's equivalentChecksum).
        let (checksum_value, equivalent) = if version.is_none() && self.placeholder_replacement {
            let replaced = checksum(&self.text(placeholders)?);
            (replaced, (replaced != raw_checksum).then_some(raw_checksum))
        } else {
            (raw_checksum, None)
        };
        Ok(ResolvedMigration {
            version,
            description: self.description.clone(),
            kind,
            script: abbreviate_script(&self.script),
            checksum: checksum_value,
            equivalent_checksum: equivalent,
        })
    }
}

/// Everything found in a target's locations.
#[derive(Clone, Debug, Default)]
pub struct Scripts {
    /// Versioned, baseline and repeatable scripts.
    pub migrations: Vec<Script>,
    /// Undo scripts by version.
    pub undo: HashMap<Version, Script>,
    /// Callback scripts by event, in file order.
    pub callbacks: BTreeMap<&'static str, Vec<Script>>,
}

/// A location as Flyway writes it (`filesystem:db/migration` or a plain path). `classpath:`
/// locations have no meaning outside a JVM.
pub fn location_path(location: &str) -> Result<PathBuf, String> {
    if let Some(rest) = location.strip_prefix("filesystem:") {
        return Ok(PathBuf::from(rest));
    }
    if location.starts_with("classpath:") {
        return Err(format!("{location}: classpath locations are not supported; give a directory"));
    }
    if location.trim().is_empty() {
        return Err("an empty location".into());
    }
    Ok(PathBuf::from(location))
}

/// Whether `location` is one of `roots` or a directory below one, with symlinks and `..` resolved
/// on both sides: a request cannot reach outside the configured directories through a link or a
/// `filesystem:` prefix. A location that does not exist is not permitted (and is not told apart
/// from one outside, so the answer says nothing about the rest of the file system).
pub fn is_within(location: &str, roots: &[String]) -> bool {
    let Some(wanted) = location_path(location).ok().and_then(|p| std::fs::canonicalize(p).ok()) else {
        return false;
    };
    roots
        .iter()
        .filter_map(|root| location_path(root).ok().and_then(|p| std::fs::canonicalize(p).ok()))
        .any(|root| wanted.starts_with(root))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let mut entries: Vec<(PathBuf, bool)> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .map(|e| {
            let e = e.map_err(|e| format!("{}: {e}", dir.display()))?;
            // The entry's own type (no stat per file); a symlink is followed.
            let is_dir = match e.file_type() {
                Ok(t) if t.is_symlink() => e.path().is_dir(),
                Ok(t) => t.is_dir(),
                Err(err) => return Err(format!("{}: {err}", e.path().display())),
            };
            Ok((e.path(), is_dir))
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        // Hidden entries are never scripts (a name starts with its prefix), and a Kubernetes
        // ConfigMap mount keeps every file a second and third time under `..data` and its
        // timestamped directory.
        .filter(|(path, _)| !path.file_name().is_some_and(|n| n.as_encoded_bytes().starts_with(b".")))
        .collect();
    // By name bytes: entries of one directory, and cheaper than comparing paths component-wise.
    entries.sort_by(|a, b| a.0.as_os_str().cmp(b.0.as_os_str()));
    for (path, is_dir) in entries {
        if is_dir {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Sidecar `V1__x.sql.conf` (Java properties): only the keys Flyway Community knows.
fn read_conf(path: &Path, relative: &str, files: &HashSet<PathBuf>) -> Result<(Option<bool>, bool), String> {
    let conf = PathBuf::from(format!("{}.conf", path.display()));
    // Known from the directory listing, so a location of thousands of scripts costs no failed opens.
    if !files.contains(&conf) {
        return Ok((None, true));
    }
    let text = std::fs::read_to_string(&conf).map_err(|e| format!("{relative}.conf: {e}"))?;
    let mut execute_in_transaction = None;
    let mut placeholder_replacement = true;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let (key, value) = line
            .split_once(['=', ':'])
            .ok_or_else(|| format!("{relative}.conf line {}: {line:?} is not key=value", n + 1))?;
        let flag = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("{relative}.conf line {}: {other:?} is not true or false", n + 1)),
        };
        match key.trim() {
            "executeInTransaction" => execute_in_transaction = Some(flag(value)?),
            "placeholderReplacement" => placeholder_replacement = flag(value)?,
            "encoding" if value.trim().eq_ignore_ascii_case("UTF-8") || value.trim().eq_ignore_ascii_case("UTF8") => {}
            "encoding" => {
                return Err(format!(
                    "{relative}.conf: encoding {} is not supported (scripts must be UTF-8)",
                    value.trim()
                ));
            }
            other => {
                return Err(format!(
                    "{relative}.conf line {}: Unrecognised script configuration property {other:?}",
                    n + 1
                ));
            }
        }
    }
    Ok((execute_in_transaction, placeholder_replacement))
}

/// Reads every script below `locations`. Errors: an unreadable location, a badly named or
/// undecodable file, a bad sidecar, two scripts for one version or repeatable.
pub fn load(locations: &[String]) -> Result<Scripts, Vec<String>> {
    let mut problems = Vec::new();
    let mut scripts = Scripts::default();
    let mut seen_versions: HashMap<(Version, &'static str), Vec<String>> = HashMap::new();
    let mut seen_repeatables: HashMap<String, Vec<String>> = HashMap::new();
    for location in locations {
        let root = match location_path(location) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("location {e}"));
                continue;
            }
        };
        if !root.is_dir() {
            problems.push(format!("location {location}: not a directory"));
            continue;
        }
        let mut files = Vec::new();
        if let Err(e) = walk(&root, &mut files) {
            problems.push(e);
            continue;
        }
        let listed: HashSet<PathBuf> = files.iter().cloned().collect();
        for path in files {
            let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
            let relative = path.strip_prefix(&root).unwrap_or(&path).to_string_lossy().replace('\\', "/");
            if !naming::is_script(&file) {
                continue;
            }
            let name = match naming::parse(&file) {
                Ok(n) => n,
                Err(e) => {
                    problems.push(format!("{relative}: {e}"));
                    continue;
                }
            };
            let raw = match std::fs::read(&path) {
                Ok(bytes) => match decode(&bytes) {
                    Ok(text) => text.to_string(),
                    Err(e) => {
                        problems.push(format!("{relative}: {e}"));
                        continue;
                    }
                },
                Err(e) => {
                    problems.push(format!("{relative}: {e}"));
                    continue;
                }
            };
            let (execute_in_transaction, placeholder_replacement) = match read_conf(&path, &relative, &listed) {
                Ok(c) => c,
                Err(e) => {
                    problems.push(e);
                    continue;
                }
            };
            let directives = match sql::directives(&raw) {
                Ok(d) => d,
                Err(e) => {
                    problems.push(format!("{relative} {e}"));
                    continue;
                }
            };
            let script = Script {
                script: relative.clone(),
                path: path.clone(),
                kind: name.kind.clone(),
                description: name.description,
                raw,
                placeholder_replacement,
                execute_in_transaction,
                directives,
            };
            match &name.kind {
                ScriptKind::Versioned(v) => seen_versions.entry((v.clone(), "SQL")).or_default().push(relative),
                ScriptKind::Baseline(v) => seen_versions.entry((v.clone(), "SQL_BASELINE")).or_default().push(relative),
                ScriptKind::Undo(v) => seen_versions.entry((v.clone(), "UNDO_SQL")).or_default().push(relative),
                ScriptKind::Repeatable => {
                    seen_repeatables.entry(script.description.clone()).or_default().push(relative)
                }
                ScriptKind::Callback(_) => {}
            }
            match &name.kind {
                ScriptKind::Undo(v) => {
                    scripts.undo.insert(v.clone(), script);
                }
                ScriptKind::Callback(event) => scripts.callbacks.entry(event).or_default().push(script),
                _ => scripts.migrations.push(script),
            }
        }
    }
    let mut duplicates: Vec<String> = seen_versions
        .iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|((v, kind), files)| {
            format!(
                "Found more than one migration with version {v}\nOffenders:\n{}",
                files.iter().map(|f| format!("-> {f} ({kind})")).collect::<Vec<_>>().join("\n")
            )
        })
        .collect();
    duplicates.extend(seen_repeatables.iter().filter(|(_, files)| files.len() > 1).map(|(d, files)| {
        format!(
            "Found more than one repeatable migration with description {d}\nOffenders:\n{}",
            files.iter().map(|f| format!("-> {f} (SQL)")).collect::<Vec<_>>().join("\n")
        )
    }));
    duplicates.sort();
    problems.extend(duplicates);
    if problems.is_empty() { Ok(scripts) } else { Err(problems) }
}

impl Scripts {
    /// The resolved migrations, in the order of [`Scripts::migrations`] (so an info's resolved
    /// index is also the script's); checksums of repeatables need the placeholder values.
    pub fn resolve(&self, placeholders: &Placeholders) -> Result<Vec<ResolvedMigration>, Vec<String>> {
        let mut problems = Vec::new();
        let mut resolved = Vec::new();
        for s in &self.migrations {
            match s.resolved(placeholders) {
                Ok(r) => resolved.push(r),
                Err(e) => problems.push(e),
            }
        }
        if problems.is_empty() { Ok(resolved) } else { Err(problems) }
    }

    /// Checks that every script (migrations, undo scripts, callbacks) has its placeholders and
    /// splits into statements that can run as it says; every problem names its file.
    pub fn check(&self, placeholders: &Placeholders, mixed: bool) -> Result<(), Vec<String>> {
        let all = self.migrations.iter().chain(self.undo.values()).chain(self.callbacks.values().flatten());
        let problems: Vec<String> = all.filter_map(|s| s.statements(placeholders, mixed).err()).collect();
        if problems.is_empty() { Ok(()) } else { Err(problems) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_mount_is_read_once_hidden_entries_skipped() {
        // What the kubelet writes for a ConfigMap volume: the files in a timestamped directory,
        // `..data` pointing at it, and one symlink per key through `..data`.
        let dir = std::env::temp_dir().join(format!("hopngo-configmap-mount-{}", std::process::id()));
        let stamped = dir.join("..2026_12_05_16_00_00.000000001");
        std::fs::create_dir_all(&stamped).unwrap();
        std::fs::write(stamped.join("V1__create.sql"), "CREATE TABLE t (id int);").unwrap();
        std::fs::write(stamped.join("V2__index.sql"), "CREATE INDEX ON t (id);").unwrap();
        std::os::unix::fs::symlink("..2026_12_05_16_00_00.000000001", dir.join("..data")).unwrap();
        for key in ["V1__create.sql", "V2__index.sql"] {
            std::os::unix::fs::symlink(format!("..data/{key}"), dir.join(key)).unwrap();
        }
        let scripts = load(&[dir.display().to_string()]).expect("no duplicates");
        let resolved = scripts.resolve(&Placeholders::default()).unwrap();
        let files: Vec<&str> = resolved.iter().map(|m| m.script.as_str()).collect();
        assert_eq!(files, ["V1__create.sql", "V2__index.sql"]);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
