//! What Flyway's `MigrationInfoServiceImpl` computes: local scripts matched with history rows,
//! each with its state, and what `validate` reports for them (Flyway's error codes and messages).

use std::{cmp::Ordering, collections::HashMap};

use super::version::Version;

/// `type` column values Flyway reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrationType {
    /// Schemas created by the migrator (`createSchemas`).
    Schema,
    /// `baseline` marker.
    Baseline,
    /// Written by `repair` (and by this migrator's undo): hides the earlier row of its version.
    Delete,
    /// A SQL script.
    Sql,
    /// A `B` script.
    SqlBaseline,
    /// Java migrations (read only).
    Jdbc,
    /// Java baseline migrations (read only).
    JdbcBaseline,
    /// Script migrations (read only).
    Script,
    /// Undo of a script migration (read only).
    UndoScript,
    /// Custom resolvers (read only).
    Custom,
    /// Flyway Teams' SQL undo rows (read only).
    UndoSql,
    /// Flyway Teams' Java undo rows (read only).
    UndoJdbc,
}

impl MigrationType {
    /// Reads the column, with Flyway's legacy aliases; anything else is an error, as in Flyway.
    pub fn parse(text: &str) -> Option<MigrationType> {
        Some(match text {
            "SCHEMA" => MigrationType::Schema,
            "BASELINE" => MigrationType::Baseline,
            "DELETE" => MigrationType::Delete,
            "SQL" => MigrationType::Sql,
            "SQL_BASELINE" | "SQL_STATE_SCRIPT" => MigrationType::SqlBaseline,
            "JDBC" | "SPRING_JDBC" => MigrationType::Jdbc,
            "JDBC_BASELINE" | "JDBC_STATE_SCRIPT" => MigrationType::JdbcBaseline,
            "SCRIPT" => MigrationType::Script,
            "UNDO_SCRIPT" => MigrationType::UndoScript,
            "CUSTOM" => MigrationType::Custom,
            "UNDO_SQL" => MigrationType::UndoSql,
            "UNDO_JDBC" => MigrationType::UndoJdbc,
            _ => return None,
        })
    }

    /// The column value.
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationType::Schema => "SCHEMA",
            MigrationType::Baseline => "BASELINE",
            MigrationType::Delete => "DELETE",
            MigrationType::Sql => "SQL",
            MigrationType::SqlBaseline => "SQL_BASELINE",
            MigrationType::Jdbc => "JDBC",
            MigrationType::JdbcBaseline => "JDBC_BASELINE",
            MigrationType::Script => "SCRIPT",
            MigrationType::UndoScript => "UNDO_SCRIPT",
            MigrationType::Custom => "CUSTOM",
            MigrationType::UndoSql => "UNDO_SQL",
            MigrationType::UndoJdbc => "UNDO_JDBC",
        }
    }

    /// Only ever in the history, never a script.
    pub fn synthetic(self) -> bool {
        matches!(self, MigrationType::Schema | MigrationType::Baseline | MigrationType::Delete)
    }

    /// Reverses an earlier row.
    pub fn undo(self) -> bool {
        matches!(self, MigrationType::UndoScript | MigrationType::UndoSql | MigrationType::UndoJdbc)
    }

    pub fn baseline_migration(self) -> bool {
        matches!(self, MigrationType::SqlBaseline | MigrationType::JdbcBaseline)
    }
}

/// A row of `flyway_schema_history`.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedMigration {
    /// `installed_rank`.
    pub rank: i32,
    /// `version` (NULL for repeatables and the SCHEMA row).
    pub version: Option<Version>,
    /// `description`.
    pub description: String,
    /// `type`.
    pub kind: MigrationType,
    /// `script`.
    pub script: String,
    /// `checksum`.
    pub checksum: Option<i32>,
    /// `installed_by`.
    pub installed_by: String,
    /// `installed_on` (stored without time zone, in the server's `TimeZone`; read as an instant).
    pub installed_on: time::OffsetDateTime,
    /// `execution_time` (ms).
    pub execution_time: i32,
    /// `success`.
    pub success: bool,
}

/// A local script that migrates (versioned, baseline or repeatable).
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedMigration {
    /// Version (`None` for repeatables).
    pub version: Option<Version>,
    /// Description from the file name.
    pub description: String,
    /// `SQL` or `SQL_BASELINE`.
    pub kind: MigrationType,
    /// Path relative to its location.
    pub script: String,
    /// Checksum Flyway records for it (repeatables: of the text with placeholders replaced).
    pub checksum: i32,
    /// Also accepted (repeatables: the checksum of the raw text, Flyway's `equivalentChecksum`).
    pub equivalent_checksum: Option<i32>,
}

impl ResolvedMigration {
    /// Flyway's `checksumMatches`.
    pub fn checksum_matches(&self, applied: Option<i32>) -> bool {
        applied == Some(self.checksum) || (applied.is_some() && applied == self.equivalent_checksum)
    }
}

/// Flyway's `MigrationState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Not applied yet.
    Pending,
    /// Above the target version.
    AboveTarget,
    /// Below the baseline.
    BelowBaseline,
    /// A versioned script at the version of the baseline script that replaced it.
    BaselineIgnored,
    /// The baseline marker.
    Baseline,
    /// Older than the newest applied version and not applied (outOfOrder is off).
    Ignored,
    /// Applied, its script gone, older than the newest script.
    MissingSuccess,
    /// Failed, its script gone.
    MissingFailed,
    /// Applied.
    Success,
    /// Applied, then undone.
    Undone,
    /// Failed.
    Failed,
    /// Applied after a newer version.
    OutOfOrder,
    /// Applied, newer than every script (by a newer application).
    FutureSuccess,
    /// Failed, newer than every script.
    FutureFailed,
    /// Repeatable whose script changed since its latest run.
    Outdated,
    /// An older run of a repeatable.
    Superseded,
    /// Hidden by a DELETE row (repair).
    Deleted,
}

impl State {
    /// Flyway's display name (what `ignoreMigrationPatterns` states are matched against).
    pub fn display_name(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::AboveTarget => "Above Target",
            State::BelowBaseline => "Below Baseline",
            State::BaselineIgnored => "Baseline Ignored",
            State::Baseline => "Baseline",
            State::Ignored => "Ignored",
            State::MissingSuccess => "Missing",
            State::MissingFailed => "Failed (Missing)",
            State::Success => "Success",
            State::Undone => "Undone",
            State::Failed => "Failed",
            State::OutOfOrder => "Out of Order",
            State::FutureSuccess => "Future",
            State::FutureFailed => "Failed (Future)",
            State::Outdated => "Outdated",
            State::Superseded => "Superseded",
            State::Deleted => "Deleted",
        }
    }

    /// The migration failed.
    pub fn is_failed(self) -> bool {
        matches!(self, State::Failed | State::MissingFailed | State::FutureFailed)
    }

    /// There is a history row for it.
    pub fn is_applied(self) -> bool {
        !matches!(
            self,
            State::Pending | State::AboveTarget | State::BelowBaseline | State::BaselineIgnored | State::Ignored
        )
    }
}

/// Migrate/undo target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Everything (`latest`, the default).
    Latest,
    /// The current version (`current`).
    Current,
    /// The next pending version only (`next`).
    Next,
    /// Up to this version.
    Version(Version),
}

impl Target {
    /// `latest`, `current`, `next` (any case) or a version; empty means `latest`.
    pub fn parse(text: &str) -> Result<Target, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "" | "latest" => Ok(Target::Latest),
            "current" => Ok(Target::Current),
            "next" => Ok(Target::Next),
            _ => Version::parse(text.trim()).map(Target::Version).map_err(|e| e.to_string()),
        }
    }
}

/// One `ignoreMigrationPatterns` entry, `<type>:<state>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnorePattern {
    kind: String,
    state: String,
}

/// Flyway's default: a database migrated by a newer application validates for an older one.
pub const DEFAULT_IGNORE_PATTERNS: &[&str] = &["*:future"];

impl IgnorePattern {
    /// Parses `versioned:missing`, `*:future`, ... (case-insensitive), with Flyway's messages.
    pub fn parse(pattern: &str) -> Result<IgnorePattern, String> {
        let parts: Vec<&str> = pattern.split(':').collect();
        if parts.len() != 2 {
            return Err(format!(
                "Invalid pattern '{pattern}'. Pattern must be of the form <migration_type>:<migration_state>"
            ));
        }
        let kind = parts[0].trim().to_lowercase();
        let state = parts[1].trim().to_lowercase();
        if !["*", "repeatable", "versioned"].contains(&kind.as_str()) {
            return Err(format!("Invalid migration type '{}'. Valid types are: [*, repeatable, versioned]", parts[0]));
        }
        if !["*", "missing", "pending", "ignored", "future"].contains(&state.as_str()) {
            return Err(format!(
                "Invalid migration state '{}'. Valid states are: [*, missing, pending, ignored, future]",
                parts[1]
            ));
        }
        Ok(IgnorePattern { kind, state })
    }

    /// `ValidatePattern.matchesMigration`.
    pub fn matches(&self, versioned: bool, state: State) -> bool {
        if self.state != "*" && !state.display_name().eq_ignore_ascii_case(&self.state) {
            return false;
        }
        match self.kind.as_str() {
            "*" => true,
            "versioned" => versioned,
            _ => !versioned,
        }
    }

    fn allows(&self, state: &str) -> bool {
        self.state == "*" || self.state == state
    }
}

/// What the computation depends on besides scripts and rows.
#[derive(Clone, Debug)]
pub struct Options {
    /// Target version.
    pub target: Target,
    /// Apply versions older than the newest applied one.
    pub out_of_order: bool,
    /// States validate does not report.
    pub ignore: Vec<IgnorePattern>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            target: Target::Latest,
            out_of_order: false,
            ignore: DEFAULT_IGNORE_PATTERNS.iter().map(|p| IgnorePattern::parse(p).expect("valid default")).collect(),
        }
    }
}

/// One migration: a script, a history row, or both.
#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    /// Index into the resolved scripts.
    pub resolved: Option<usize>,
    /// Index into the history rows.
    pub applied: Option<usize>,
    /// State.
    pub state: State,
}

/// The whole picture, sorted as Flyway sorts it.
#[derive(Clone, Debug)]
pub struct InfoSet {
    /// Local scripts.
    pub resolved: Vec<ResolvedMigration>,
    /// History rows.
    pub applied: Vec<AppliedMigration>,
    /// Migrations in order: applied by rank, then pending versioned by version, then repeatables.
    pub infos: Vec<Info>,
    /// The baseline marker's version.
    pub baseline: Option<Version>,
    /// The newest applied version.
    pub last_applied: Option<Version>,
    options: Options,
}

#[derive(Default, Clone, Copy)]
struct Attributes {
    out_of_order: bool,
    deleted: bool,
    undone: bool,
}

/// Whether a DELETE row was written by this migrator's undo: its script is a `U` script of the
/// same version (repair copies the original's script instead).
pub fn deletes_by_undo(row: &AppliedMigration) -> bool {
    let file = row.script.rsplit('/').next().unwrap_or(&row.script);
    row.kind == MigrationType::Delete
        && super::naming::is_script(file)
        && matches!(super::naming::parse(file), Ok(super::naming::ScriptName { kind: super::naming::ScriptKind::Undo(v), .. }) if Some(&v) == row.version.as_ref())
}

fn cmp_version(a: &Option<Version>, b: &Option<Version>) -> Ordering {
    // MigrationVersion.EMPTY sorts before every version.
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => a.cmp(b),
    }
}

fn java_cmp(a: &str, b: &str) -> Ordering {
    // Java's String.compareTo compares UTF-16 code units.
    a.encode_utf16().cmp(b.encode_utf16())
}

impl InfoSet {
    /// Computes states for `resolved` scripts against `applied` rows (ordered by rank).
    pub fn compute(
        resolved: Vec<ResolvedMigration>,
        applied: Vec<AppliedMigration>,
        options: Options,
    ) -> Result<InfoSet, String> {
        let last_resolved = resolved.iter().filter_map(|r| r.version.clone()).max();
        // Keyed by (version, is a B script): `B5` and `V5` share a version by design.
        let mut versioned: HashMap<(Version, bool), usize> = HashMap::new();
        let mut repeatable: HashMap<&str, usize> = HashMap::new();
        for (i, r) in resolved.iter().enumerate() {
            match &r.version {
                Some(v) => {
                    versioned.insert((v.clone(), r.kind.baseline_migration()), i);
                }
                None => {
                    repeatable.insert(r.description.as_str(), i);
                }
            }
        }

        let mut attrs = vec![Attributes::default(); applied.len()];
        let mut versioned_rows: Vec<usize> = Vec::new();
        let mut repeatable_rows: Vec<usize> = Vec::new();
        let mut baseline: Option<Version> = None;
        for (i, row) in applied.iter().enumerate() {
            let Some(version) = &row.version else {
                repeatable_rows.push(i);
                if row.kind == MigrationType::Delete && row.success {
                    // Marks the latest run of this repeatable as deleted.
                    if let Some(&j) = repeatable_rows
                        .iter()
                        .rev()
                        .find(|&&j| !applied[j].kind.synthetic() && applied[j].description == row.description)
                    {
                        attrs[j].deleted = true;
                    }
                }
                continue;
            };
            if row.kind == MigrationType::Baseline {
                baseline = Some(version.clone());
            }
            if (row.kind == MigrationType::Delete || row.kind.undo()) && row.success {
                let by_undo = row.kind.undo() || deletes_by_undo(row);
                let target = versioned_rows
                    .iter()
                    .rev()
                    .find(|&&j| {
                        !applied[j].kind.synthetic()
                            && !applied[j].kind.undo()
                            && applied[j].version.as_ref() == Some(version)
                    })
                    .copied();
                if let Some(j) = target {
                    if attrs[j].deleted || attrs[j].undone {
                        return Err(format!("Corrupted schema history: multiple delete entries for version {version}"));
                    }
                    if by_undo {
                        attrs[j].undone = true;
                    } else {
                        attrs[j].deleted = true;
                    }
                }
            }
            versioned_rows.push(i);
        }

        let mut last_applied: Option<Version> = None;
        for &i in &versioned_rows {
            let row = &applied[i];
            if cmp_version(&row.version, &last_applied) == Ordering::Greater {
                if row.kind != MigrationType::Delete && !row.kind.undo() && !attrs[i].deleted && !attrs[i].undone {
                    last_applied = row.version.clone();
                }
            } else {
                attrs[i].out_of_order = true;
            }
        }

        // Versions at or below an applied B script are covered by it.
        let applied_baseline_migration = versioned_rows
            .iter()
            .map(|&i| &applied[i])
            .filter(|r| r.kind.baseline_migration() && r.success)
            .filter_map(|r| r.version.clone())
            .max();

        let target = match &options.target {
            Target::Current => Some(last_applied.clone()),
            Target::Version(v) => Some(Some(v.clone())),
            Target::Latest | Target::Next => None,
        };

        // B scripts: on an empty history the newest one at or below the target replaces the
        // versioned scripts at or below it; once anything is applied they are not used.
        let history_empty = applied.iter().all(|r| r.kind == MigrationType::Schema);
        let latest_baseline_migration = if history_empty {
            resolved
                .iter()
                .filter(|r| r.kind.baseline_migration())
                .filter_map(|r| r.version.clone())
                .filter(|v| target.as_ref().is_none_or(|t| cmp_version(&Some(v.clone()), t) != Ordering::Greater))
                .max()
        } else {
            None
        };

        let mut pending_versioned: Vec<bool> = resolved.iter().map(|r| r.version.is_some()).collect();
        let mut infos: Vec<Info> = Vec::new();
        let state_of_applied = |i: usize, res: Option<usize>, latest_runs: &HashMap<&str, i32>| -> State {
            let row = &applied[i];
            let a = attrs[i];
            if a.undone {
                return State::Undone;
            }
            if a.deleted {
                return State::Deleted;
            }
            if row.kind == MigrationType::Delete || row.kind.undo() {
                return State::Success;
            }
            if row.kind == MigrationType::Baseline {
                return State::Baseline;
            }
            let repeatable_latest =
                row.version.is_some() || latest_runs.get(row.description.as_str()).is_none_or(|&r| r == row.rank);
            if res.is_none() && repeatable_latest {
                if row.kind == MigrationType::Schema {
                    return State::Success;
                }
                let missing = row.version.is_none() || cmp_version(&row.version, &last_resolved) == Ordering::Less;
                return match (missing, row.success) {
                    (true, true) => State::MissingSuccess,
                    (true, false) => State::MissingFailed,
                    (false, true) => State::FutureSuccess,
                    (false, false) => State::FutureFailed,
                };
            }
            if !row.success {
                return State::Failed;
            }
            if row.version.is_none() {
                if latest_runs.get(row.description.as_str()) == Some(&row.rank) {
                    return match res {
                        Some(r) if resolved[r].checksum_matches(row.checksum) => State::Success,
                        _ => State::Outdated,
                    };
                }
                return State::Superseded;
            }
            if a.out_of_order { State::OutOfOrder } else { State::Success }
        };

        let no_runs = HashMap::new();
        for &i in &versioned_rows {
            let row = &applied[i];
            let res = if row.kind.undo() {
                None
            } else {
                row.version.as_ref().and_then(|v| versioned.get(&(v.clone(), row.kind.baseline_migration())).copied())
            };
            if let Some(r) = res
                && !attrs[i].deleted
                && !attrs[i].undone
                && row.kind != MigrationType::Delete
            {
                pending_versioned[r] = false;
            }
            infos.push(Info { resolved: res, applied: Some(i), state: state_of_applied(i, res, &no_runs) });
        }

        let covering_baseline = applied_baseline_migration.or(latest_baseline_migration.clone());
        let pending_state = |r: &ResolvedMigration| -> State {
            let v = r.version.as_ref().expect("versioned");
            if !r.kind.baseline_migration()
                && let Some(b) = &covering_baseline
                && v <= b
            {
                return if v == b { State::BaselineIgnored } else { State::BelowBaseline };
            }
            if baseline.as_ref().is_some_and(|b| v < b) {
                return State::BelowBaseline;
            }
            if let Some(Some(t)) = &target
                && v > t
            {
                return State::AboveTarget;
            }
            if last_applied.as_ref().is_some_and(|l| v < l) && !options.out_of_order {
                return State::Ignored;
            }
            if r.kind.baseline_migration() && (!history_empty || Some(v) != latest_baseline_migration.as_ref()) {
                return State::Ignored;
            }
            State::Pending
        };
        let mut pending: Vec<Info> = Vec::new();
        for (r, is_pending) in pending_versioned.iter().enumerate() {
            if !is_pending {
                continue;
            }
            let res = &resolved[r];
            pending.push(Info { resolved: Some(r), applied: None, state: pending_state(res) });
        }
        pending.sort_by(|a, b| {
            let group = |i: &Info| !matches!(i.state, State::BelowBaseline | State::BaselineIgnored) as u8;
            group(a).cmp(&group(b)).then_with(|| {
                cmp_version(&resolved[a.resolved.unwrap()].version, &resolved[b.resolved.unwrap()].version)
            })
        });

        let mut latest_runs: HashMap<&str, i32> = HashMap::new();
        for &i in &repeatable_rows {
            let row = &applied[i];
            if attrs[i].deleted && row.kind == MigrationType::Delete {
                continue;
            }
            let e = latest_runs.entry(row.description.as_str()).or_insert(row.rank);
            if row.rank > *e {
                *e = row.rank;
            }
        }
        let mut pending_repeatable: Vec<bool> = resolved.iter().map(|r| r.version.is_none()).collect();
        for &i in &repeatable_rows {
            let row = &applied[i];
            let res = repeatable.get(row.description.as_str()).copied();
            if let Some(r) = res
                && !attrs[i].deleted
                && row.kind != MigrationType::Delete
                && latest_runs.get(row.description.as_str()) == Some(&row.rank)
                && resolved[r].checksum_matches(row.checksum)
            {
                pending_repeatable[r] = false;
            }
            infos.push(Info { resolved: res, applied: Some(i), state: state_of_applied(i, res, &latest_runs) });
        }
        infos.sort_by_key(|i| applied[i.applied.expect("applied")].rank);
        let (below, rest): (Vec<Info>, Vec<Info>) =
            pending.into_iter().partition(|i| matches!(i.state, State::BelowBaseline | State::BaselineIgnored));
        let mut repeatables: Vec<Info> = pending_repeatable
            .iter()
            .enumerate()
            .filter(|(_, p)| **p)
            .map(|(r, _)| Info { resolved: Some(r), applied: None, state: State::Pending })
            .collect();
        repeatables.sort_by(|a, b| {
            java_cmp(&resolved[a.resolved.unwrap()].description, &resolved[b.resolved.unwrap()].description)
        });
        let infos: Vec<Info> = below.into_iter().chain(infos).chain(rest).chain(repeatables).collect();

        let mut set = InfoSet { resolved, applied, infos, baseline, last_applied, options };
        if set.options.target == Target::Next {
            // `next`: only the first pending version is in scope.
            let first = set.infos.iter().position(|i| i.state == State::Pending && set.version_of(i).is_some());
            for (n, info) in set.infos.iter_mut().enumerate() {
                if info.applied.is_none() && info.state == State::Pending && Some(n) != first && first.is_some() {
                    let is_versioned = info.resolved.is_some_and(|r| set.resolved[r].version.is_some());
                    if is_versioned {
                        info.state = State::AboveTarget;
                    }
                }
            }
        }
        Ok(set)
    }

    /// The version of an entry (the row's, else the script's).
    pub fn version_of(&self, info: &Info) -> Option<&Version> {
        match info.applied {
            Some(a) => self.applied[a].version.as_ref(),
            None => info.resolved.and_then(|r| self.resolved[r].version.as_ref()),
        }
    }

    /// Description of an entry.
    pub fn description_of(&self, info: &Info) -> &str {
        match info.applied {
            Some(a) => &self.applied[a].description,
            None => info.resolved.map(|r| self.resolved[r].description.as_str()).unwrap_or(""),
        }
    }

    /// Flyway's `current()`: the newest applied version (else the latest repeatable run).
    pub fn current(&self) -> Option<&Info> {
        let usable = |i: &&Info| {
            i.state.is_applied()
                && !matches!(i.state, State::Deleted | State::Undone)
                && i.applied.is_some_and(|a| {
                    let k = self.applied[a].kind;
                    k != MigrationType::Delete && !k.undo()
                })
        };
        let best = self
            .infos
            .iter()
            .filter(usable)
            .filter(|i| self.version_of(i).is_some())
            .max_by(|a, b| self.version_of(a).cmp(&self.version_of(b)));
        best.or_else(|| self.infos.iter().rev().filter(usable).find(|i| self.version_of(i).is_none()))
    }

    /// The current version's text (empty when nothing versioned is applied).
    pub fn current_version(&self) -> String {
        self.current().and_then(|i| self.version_of(i)).map(|v| v.text().to_string()).unwrap_or_default()
    }

    /// Pending migrations in the order `migrate` applies them.
    pub fn pending(&self) -> Vec<&Info> {
        self.infos.iter().filter(|i| i.state == State::Pending).collect()
    }

    /// Flyway's `validate()` for every entry: (error code, message) per problem.
    pub fn validate(&self) -> Vec<(&Info, &'static str, String)> {
        self.infos.iter().filter_map(|i| self.validate_one(i).map(|(code, message)| (i, code, message))).collect()
    }

    fn flag(&self, state: &str) -> bool {
        self.options.ignore.iter().any(|p| p.allows(state))
    }

    fn validate_one(&self, info: &Info) -> Option<(&'static str, String)> {
        let state = info.state;
        if matches!(state, State::AboveTarget | State::Deleted | State::Undone) {
            return None;
        }
        let version = self.version_of(info);
        let versioned = version.is_some();
        if self.options.ignore.iter().any(|p| p.matches(versioned, state)) {
            return None;
        }
        let (future, missing, pending, ignored) =
            (self.flag("future"), self.flag("missing"), self.flag("pending"), self.flag("ignored"));
        let description = self.description_of(info);
        if state.is_failed() && !(future && state == State::FutureFailed) {
            return Some(match version {
                None => (
                    "FAILED_REPEATABLE_MIGRATION",
                    format!(
                        "Detected failed repeatable migration: {description}. Please remove any half-completed changes then run repair to fix the schema history."
                    ),
                ),
                Some(v) => (
                    "FAILED_VERSIONED_MIGRATION",
                    format!(
                        "Detected failed migration to version {v} ({description}). Please remove any half-completed changes then run repair to fix the schema history."
                    ),
                ),
            });
        }
        let row = info.applied.map(|a| &self.applied[a]);
        if info.resolved.is_none()
            && let Some(row) = row
            && !row.kind.synthetic()
            && !row.kind.undo()
            && state != State::Superseded
            && !(missing && matches!(state, State::MissingSuccess | State::MissingFailed))
            && !(future && matches!(state, State::FutureSuccess | State::FutureFailed))
        {
            return Some(match version {
                Some(v) => (
                    "APPLIED_VERSIONED_MIGRATION_NOT_RESOLVED",
                    format!(
                        "Detected applied migration not resolved locally: {v}. If you removed this migration intentionally, run repair to mark the migration as deleted."
                    ),
                ),
                None => (
                    "APPLIED_REPEATABLE_MIGRATION_NOT_RESOLVED",
                    format!(
                        "Detected applied migration not resolved locally: {description}. If you removed this migration intentionally, run repair to mark the migration as deleted."
                    ),
                ),
            });
        }
        let baseline_script = info.resolved.is_some_and(|r| self.resolved[r].kind.baseline_migration());
        if !ignored && state == State::Ignored && !baseline_script {
            return Some(match version {
                Some(v) => (
                    "RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED",
                    format!(
                        "Detected resolved migration not applied to database: {v}. To ignore this migration, set -ignoreIgnoredMigrations=true. To allow executing this migration, set -outOfOrder=true."
                    ),
                ),
                None => (
                    "RESOLVED_REPEATABLE_MIGRATION_NOT_APPLIED",
                    format!(
                        "Detected resolved repeatable migration not applied to database: {description}. To ignore this migration, set -ignoreIgnoredMigrations=true."
                    ),
                ),
            });
        }
        if !pending && state == State::Pending {
            return Some(match version {
                Some(v) => (
                    "RESOLVED_VERSIONED_MIGRATION_NOT_APPLIED",
                    format!(
                        "Detected resolved migration not applied to database: {v}. To fix this error, either run migrate, or set -ignorePendingMigrations=true."
                    ),
                ),
                None => (
                    "RESOLVED_REPEATABLE_MIGRATION_NOT_APPLIED",
                    format!(
                        "Detected resolved repeatable migration not applied to database: {description}. To fix this error, either run migrate, or set -ignorePendingMigrations=true."
                    ),
                ),
            });
        }
        if !pending && state == State::Outdated {
            return Some((
                "OUTDATED_REPEATABLE_MIGRATION",
                format!(
                    "Detected outdated resolved repeatable migration that should be re-applied to database: {description}. Run migrate to execute this migration."
                ),
            ));
        }
        if let (Some(r), Some(row)) = (info.resolved.map(|r| &self.resolved[r]), row)
            && row.kind != MigrationType::Delete
            && !row.kind.undo()
        {
            let id = match &row.version {
                None => row.script.clone(),
                Some(v) => format!("version {v}"),
            };
            let above_baseline = match (&row.version, &self.baseline) {
                (None, _) | (_, None) => true,
                (Some(v), Some(b)) => v > b,
            };
            if above_baseline {
                if r.kind != row.kind {
                    return Some(("TYPE_MISMATCH", mismatch("type", &id, row.kind.as_str(), r.kind.as_str())));
                }
                if (r.version.is_some() || (pending && !matches!(state, State::Outdated | State::Superseded)))
                    && !r.checksum_matches(row.checksum)
                {
                    let applied = row.checksum.map(|c| c.to_string()).unwrap_or_else(|| "null".into());
                    return Some(("CHECKSUM_MISMATCH", mismatch("checksum", &id, &applied, &r.checksum.to_string())));
                }
                if super::naming::abbreviate_description(&r.description) != row.description
                    && !(row.description == "<< no description >>" && r.description.is_empty())
                {
                    return Some((
                        "DESCRIPTION_MISMATCH",
                        mismatch("description", &id, &row.description, &r.description),
                    ));
                }
            }
        }
        None
    }
}

fn mismatch(what: &str, id: &str, applied: &str, resolved: &str) -> String {
    format!(
        "Migration {what} mismatch for migration {id}\n-> Applied to database : {applied}\n-> Resolved locally    : {resolved}. Either revert the changes to the migration, or run repair to update the schema history."
    )
}

#[cfg(test)]
mod tests;
