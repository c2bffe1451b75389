//! Carries out info, validate, migrate, baseline, repair and undo against one application
//! database. Every command that writes takes Flyway's advisory lock on a connection of its own
//! (session-level, so no transaction stays open on it and `CREATE INDEX CONCURRENTLY` on the
//! migration connection does not wait for it) and keeps it until the command ends. A
//! transactional migration and its history row commit together; a non-transactional one runs
//! statement by statement and its row (a failure too) is written as soon as it ends.

use std::{collections::BTreeMap, str::FromStr as _, time::Duration};

use sqlx::{
    ConnectOptions as _, Connection as _, PgConnection,
    postgres::{PgConnectOptions, PgDatabaseError},
};
use tokio::time::Instant;

use crate::{
    domain::{
        checksum::checksum,
        info::{IgnorePattern, InfoSet, MigrationType, Options, State, Target as VersionTarget},
        naming::{abbreviate_description, abbreviate_script},
        placeholders::Placeholders,
        sql::Statement,
        version::Version,
    },
    history::{self, NewRow, Table},
    scripts::{self, Script, Scripts},
};

/// Why a command could not be carried out.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExecError {
    /// The request or the scripts are wrong (names the field or the file).
    #[error("{field}: {reason}")]
    Invalid {
        /// Field.
        field: String,
        /// Reason.
        reason: String,
    },
    /// The database cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    /// The database or its history does not allow it (credentials, validation, a failed
    /// migration, the lock held elsewhere).
    #[error("{0}")]
    Precondition(String),
    /// A migration failed.
    #[error("{0}")]
    Failed(String),
}

/// Settings of one configured database.
#[derive(Clone, Debug)]
pub struct DatabaseSettings {
    /// Connection URL.
    pub url: String,
    /// Default script locations.
    pub locations: Vec<String>,
    /// Directories below which a request may name locations (besides `locations`).
    pub location_roots: Vec<String>,
    /// Default `installed_by` (else `current_user`).
    pub installed_by: Option<String>,
    /// How long to wait for the lock.
    pub lock_wait: Duration,
    /// Baseline a non-empty schema without history on migrate (Flyway's `baselineOnMigrate`).
    pub baseline_on_migrate: bool,
    /// Allow transactional and non-transactional statements in one script.
    pub mixed: bool,
    /// Version `baselineOnMigrate` baselines at.
    pub baseline_version: String,
}

impl DatabaseSettings {
    /// Whether a request may name `location` for this database.
    pub fn permits(&self, location: &str) -> bool {
        let roots: Vec<String> = self.locations.iter().chain(&self.location_roots).cloned().collect();
        crate::scripts::is_within(location, &roots)
    }
}

/// Everything a command works on.
#[derive(Clone, Debug)]
pub struct Target {
    /// Configured name.
    pub database: String,
    /// Settings.
    pub settings: DatabaseSettings,
    /// Locations in force.
    pub locations: Vec<String>,
    /// History table.
    pub table: Table,
    /// User placeholder values.
    pub placeholders: BTreeMap<String, String>,
    /// Validate's ignore patterns.
    pub ignore: Vec<IgnorePattern>,
}

/// One migration a run applied, undid or repaired.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Change {
    /// Version (empty for repeatables).
    pub version: String,
    /// Description.
    pub description: String,
    /// Row type written (`SQL`, `DELETE`, `BASELINE`, ...).
    pub kind: String,
    /// Script.
    pub script: String,
    /// Checksum recorded.
    pub checksum: Option<i32>,
    /// Rank of the row written (0: no row, e.g. a deleted failed row).
    pub rank: i32,
    /// Milliseconds.
    pub execution_time_ms: i32,
    /// What happened (`applied`, `undone`, `failed`, `removed failed row`, ...).
    pub action: String,
    /// Whether it ran inside a transaction.
    pub transactional: bool,
}

/// Where a command reports its progress (the run record).
pub trait Progress: Send {
    /// The lock is held; `version_before` is the schema version now.
    fn started(&mut self, version_before: &str) -> impl std::future::Future<Output = ()> + Send;
    /// One more change.
    fn changed(&mut self, change: Change) -> impl std::future::Future<Output = ()> + Send;
    /// A non-transactional migration starts (`Some`) or ended (`None`): kept durably, so a
    /// crash in between is known to have left it half-done.
    fn non_transactional(&mut self, running: Option<Change>) -> impl std::future::Future<Output = ()> + Send;
}

/// The outcome of a command.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Schema version before.
    pub version_before: String,
    /// Schema version after.
    pub version_after: String,
    /// Summary.
    pub message: String,
    /// Warnings (future migrations, callbacks not run, ...).
    pub warnings: Vec<String>,
}

const LOCK_POLL: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn classify_connect(database: &str, err: sqlx::Error) -> ExecError {
    if let Some(db) = err.as_database_error() {
        let code = db.code().map(|c| c.to_string()).unwrap_or_default();
        // 28xxx: authentication; 3D000: no such database; 42501: no permission to connect.
        if code.starts_with("28") || code == "3D000" || code == "42501" {
            return ExecError::Precondition(format!("database {database}: {} ({code})", db.message()));
        }
    }
    ExecError::Unavailable(format!("database {database} cannot be reached: {err}"))
}

fn db_error(what: &str, err: sqlx::Error) -> ExecError {
    match &err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => {
            ExecError::Unavailable(format!("{what}: connection lost: {err}"))
        }
        _ => ExecError::Failed(format!("{what}: {err}")),
    }
}

/// The line of a statement a PostgreSQL error points at (its position counts characters of the
/// query string, from 1; `offset` characters of the query come before the statement).
fn error_line(statement: &Statement, err: &sqlx::Error, offset: usize) -> usize {
    let position = err.as_database_error().and_then(|e| e.try_downcast_ref::<PgDatabaseError>()).and_then(|e| match e
        .position()
    {
        Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
        _ => None,
    });
    match position {
        Some(p) if p > offset => {
            let chars_before = p - 1 - offset;
            statement.line + statement.text.chars().take(chars_before).filter(|&c| c == '\n').count()
        }
        _ => statement.line,
    }
}

fn statement_error(script: &str, statement: &Statement, err: &sqlx::Error, offset: usize) -> ExecError {
    let line = error_line(statement, err, offset);
    let detail = match err.as_database_error() {
        Some(db) => {
            let code = db.code().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default();
            format!("{}{code}", db.message())
        }
        None => err.to_string(),
    };
    let excerpt: String = statement.text.trim().chars().take(200).collect();
    ExecError::Failed(format!("{script} line {line}: {detail}\nStatement: {excerpt}"))
}

/// An open session on a target: a migration connection and the facts Flyway's built-in
/// placeholders need.
struct Session {
    conn: PgConnection,
    user: String,
    database_name: String,
}

async fn connect(target: &Target) -> Result<PgConnection, ExecError> {
    let options = PgConnectOptions::from_str(&target.settings.url)
        .map_err(|e| ExecError::Invalid {
            field: "target.database".into(),
            reason: format!("database {}: the configured URL does not parse: {e}", target.database),
        })?
        // Migration statements carry placeholder values (often credentials) and application data:
        // they are never written to the log, at any level.
        .disable_statement_logging();
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(classify_connect(&target.database, e)),
        Err(_) => Err(ExecError::Unavailable(format!(
            "database {} cannot be reached: no answer within {}s",
            target.database,
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

impl Session {
    async fn open(target: &Target) -> Result<Session, ExecError> {
        let mut conn = connect(target).await?;
        // Unqualified names in scripts mean the target schema, whatever the user's search_path
        // says (Flyway sets it the same way for its migration connection).
        let (user, database_name, _): (String, String, String) =
            sqlx::query_as("SELECT current_user::text, current_database()::text, set_config('search_path', $1, false)")
                .bind(history::quote_ident(&target.table.schema))
                .fetch_one(&mut conn)
                .await
                .map_err(|e| classify_connect(&target.database, e))?;
        Ok(Session { conn, user, database_name })
    }

    fn installed_by(&self, target: &Target) -> String {
        target.settings.installed_by.clone().unwrap_or_else(|| self.user.clone())
    }

    fn placeholders(&self, target: &Target) -> Placeholders {
        let now = time::OffsetDateTime::now_utc();
        let timestamp = format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            now.year(),
            now.month() as u8,
            now.day(),
            now.hour(),
            now.minute(),
            now.second()
        );
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
        Placeholders::new(
            [
                ("flyway:defaultSchema", target.table.schema.clone()),
                ("flyway:user", self.user.clone()),
                ("flyway:database", self.database_name.clone()),
                ("flyway:timestamp", timestamp),
                ("flyway:workingDirectory", cwd),
                ("flyway:table", target.table.table.clone()),
                ("flyway:environment", "default".to_string()),
            ],
            &target.placeholders,
        )
    }
}

/// Reads the scripts of a target; every problem names its file.
pub fn load_scripts(target: &Target) -> Result<Scripts, ExecError> {
    scripts::load(&target.locations)
        .map_err(|problems| ExecError::Invalid { field: "target.locations".into(), reason: problems.join("; ") })
}

async fn read_history(
    session: &mut Session,
    target: &Target,
) -> Result<Vec<crate::domain::info::AppliedMigration>, ExecError> {
    let what = format!("database {}", target.database);
    if !target.table.exists(&mut session.conn).await.map_err(|e| db_error(&what, e))? {
        return Ok(Vec::new());
    }
    target
        .table
        .read(&mut session.conn)
        .await
        .map_err(|e| db_error(&what, e))?
        .map_err(|e| ExecError::Precondition(format!("database {}: {e}", target.database)))
}

fn compute(
    scripts: &Scripts,
    placeholders: &Placeholders,
    applied: Vec<crate::domain::info::AppliedMigration>,
    options: Options,
) -> Result<InfoSet, ExecError> {
    let resolved = scripts
        .resolve(placeholders)
        .map_err(|p| ExecError::Invalid { field: "target.locations".into(), reason: p.join("; ") })?;
    InfoSet::compute(resolved, applied, options).map_err(ExecError::Precondition)
}

/// Callbacks the migrator does not run for a command are reported, never skipped silently.
fn callback_warnings(scripts: &Scripts, run: &[&str]) -> Vec<String> {
    scripts
        .callbacks
        .iter()
        .filter(|(event, _)| !run.contains(event))
        .flat_map(|(event, list)| {
            list.iter().map(move |s| format!("callback {} ({event}) is not run by this command", s.script))
        })
        .collect()
}

/// Info: the scripts and the history, with states.
pub async fn info(target: &Target, options: Options) -> Result<(InfoSet, Scripts, Vec<String>), ExecError> {
    let scripts = load_scripts(target)?;
    let mut session = Session::open(target).await?;
    let applied = read_history(&mut session, target).await?;
    let placeholders = session.placeholders(target);
    let _ = session.conn.close().await;
    let set = compute(&scripts, &placeholders, applied, options)?;
    let warnings = callback_warnings(&scripts, &[]);
    Ok((set, scripts, warnings))
}

/// Checks that a target can be worked on before a run is stored: the scripts load and the
/// database answers with these credentials.
pub async fn preflight(target: &Target) -> Result<Scripts, ExecError> {
    let scripts = load_scripts(target)?;
    let session = Session::open(target).await?;
    let placeholders = session.placeholders(target);
    let _ = session.conn.close().await;
    scripts
        .check(&placeholders, target.settings.mixed)
        .map_err(|p| ExecError::Invalid { field: "target.locations".into(), reason: p.join("; ") })?;
    Ok(scripts)
}

/// The statements of each script, or the first problem: prepared before anything runs, so a bad
/// script late in the list does not leave the ones before it applied.
fn prepare<'a>(
    scripts: impl Iterator<Item = &'a Script>,
    placeholders: &Placeholders,
    mixed: bool,
) -> Result<Vec<(Vec<Statement>, bool)>, ExecError> {
    scripts
        .map(|s| s.statements(placeholders, mixed))
        .collect::<Result<_, _>>()
        .map_err(|reason| ExecError::Invalid { field: "target.locations".into(), reason })
}

/// A locked session: the lock connection (held for the whole command) and the work connection.
struct Locked {
    session: Session,
    lock_conn: PgConnection,
    key: i64,
    last_check: Instant,
}

impl Locked {
    async fn acquire(target: &Target) -> Result<Locked, ExecError> {
        let session = Session::open(target).await?;
        let mut lock_conn = connect(target).await?;
        let key = target.table.lock_key();
        let deadline = Instant::now() + target.settings.lock_wait;
        let what = format!("database {}", target.database);
        let got = history::lock(&mut lock_conn, key, LOCK_POLL, deadline).await.map_err(|e| db_error(&what, e))?;
        if !got {
            let _ = lock_conn.close().await;
            return Err(ExecError::Precondition(format!(
                "database {}: the migration lock on {} (advisory lock {key}) is held by another migrator or Flyway; gave up after {}s",
                target.database,
                target.table.quoted(),
                target.settings.lock_wait.as_secs()
            )));
        }
        Ok(Locked { session, lock_conn, key, last_check: Instant::now() })
    }

    /// The lock lives with its connection: make sure it is still there (at most once a second,
    /// so a long run notices a lost lock without a round trip per migration).
    async fn still_locked(&mut self, target: &Target) -> Result<(), ExecError> {
        if self.last_check.elapsed() < Duration::from_secs(1) {
            return Ok(());
        }
        self.last_check = Instant::now();
        sqlx::query("SELECT 1").execute(&mut self.lock_conn).await.map(|_| ()).map_err(|e| {
            ExecError::Unavailable(format!(
                "database {}: the connection holding the migration lock was lost: {e}",
                target.database
            ))
        })
    }

    async fn release(self) {
        let Locked { session, lock_conn, key, .. } = self;
        let _ = session.conn.close().await;
        history::unlock(lock_conn, key).await;
    }
}

/// How one script is run.
struct Job<'a> {
    script: &'a Script,
    statements: Vec<Statement>,
    in_transaction: bool,
    /// The history row written with it (`execution_time` filled in when it ends).
    row: NewRow,
    action: &'static str,
}

/// Runs one statement, `prefix` (BEGIN, settings) and `suffix` (the history row and COMMIT) in
/// the same round trip; returns what the suffix returned (the recorded execution time). An error
/// of the suffix is reported as the recording's, not the statement's.
async fn run_statement(
    conn: &mut PgConnection,
    script: &str,
    statement: &Statement,
    prefix: &str,
    suffix: &str,
    table: &Table,
) -> Result<Option<i32>, ExecError> {
    if let Some(data) = &statement.copy_data {
        if !prefix.is_empty() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(prefix.to_string()))
                .execute(&mut *conn)
                .await
                .map_err(|e| statement_error(script, statement, &e, usize::MAX))?;
        }
        let mut copy =
            conn.copy_in_raw(&statement.text).await.map_err(|e| statement_error(script, statement, &e, 0))?;
        if let Err(e) = copy.send(data.as_bytes()).await {
            let _ = copy.abort("send failed").await;
            return Err(statement_error(script, statement, &e, 0));
        }
        copy.finish().await.map_err(|e| statement_error(script, statement, &e, 0))?;
        if suffix.is_empty() {
            return Ok(None);
        }
        return record(conn, script, table, suffix.trim_start_matches([';', '\n']).to_string()).await;
    }
    let query = format!("{prefix}{}{suffix}", statement.text);
    match sqlx::raw_sql(sqlx::AssertSqlSafe(query)).fetch_all(&mut *conn).await {
        Ok(rows) => Ok(rows.last().and_then(|r| sqlx::Row::try_get::<i32, _>(r, 0).ok())),
        Err(e) => {
            let in_suffix = is_history_error(&e, table)
                || error_position(&e).is_some_and(|p| p > prefix.chars().count() + statement.text.chars().count());
            if in_suffix {
                Err(db_error(&format!("{script}: recording it in {}", table.quoted()), e))
            } else {
                Err(statement_error(script, statement, &e, prefix.chars().count()))
            }
        }
    }
}

/// Writes the history row (and COMMIT) on its own.
async fn record(conn: &mut PgConnection, script: &str, table: &Table, sql: String) -> Result<Option<i32>, ExecError> {
    let rows = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error(&format!("{script}: recording it in {}", table.quoted()), e))?;
    Ok(rows.last().and_then(|r| sqlx::Row::try_get::<i32, _>(r, 0).ok()))
}

fn error_position(err: &sqlx::Error) -> Option<usize> {
    err.as_database_error().and_then(|e| e.try_downcast_ref::<PgDatabaseError>()).and_then(|e| match e.position() {
        Some(sqlx::postgres::PgErrorPosition::Original(p)) => Some(p),
        _ => None,
    })
}

fn is_history_error(err: &sqlx::Error, table: &Table) -> bool {
    err.as_database_error().and_then(|e| e.try_downcast_ref::<PgDatabaseError>()).is_some_and(|e| {
        e.table() == Some(table.table.as_str()) || e.constraint() == Some(format!("{}_pk", table.table).as_str())
    })
}

fn timeouts(script: &Script, scope: &str) -> String {
    let mut s = String::new();
    if let Some(t) = script.directives.lock_timeout {
        s.push_str(&format!("SET {scope}lock_timeout = '{}ms';\n", t.as_millis()));
    }
    if let Some(t) = script.directives.statement_timeout {
        s.push_str(&format!("SET {scope}statement_timeout = '{}ms';\n", t.as_millis()));
    }
    s
}

/// Statements of the callbacks of `event` (run on the work connection).
fn callback_statements<'a>(
    scripts: &'a Scripts,
    event: &str,
    placeholders: &Placeholders,
    mixed: bool,
) -> Result<Vec<(&'a Script, Vec<Statement>)>, ExecError> {
    let mut out = Vec::new();
    for s in scripts.callbacks.get(event).into_iter().flatten() {
        let (statements, _) = s
            .statements(placeholders, mixed)
            .map_err(|reason| ExecError::Invalid { field: "target.locations".into(), reason })?;
        out.push((s, statements));
    }
    Ok(out)
}

/// Runs the callbacks of an event in a transaction of their own.
async fn fire(
    conn: &mut PgConnection,
    scripts: &Scripts,
    event: &str,
    placeholders: &Placeholders,
    target: &Target,
) -> Result<(), ExecError> {
    let table = &target.table;
    let callbacks = callback_statements(scripts, event, placeholders, target.settings.mixed)?;
    if callbacks.is_empty() {
        return Ok(());
    }
    sqlx::raw_sql("BEGIN").execute(&mut *conn).await.map_err(|e| db_error(event, e))?;
    for (script, statements) in &callbacks {
        for st in statements {
            if let Err(e) = run_statement(conn, &script.script, st, "", "", table).await {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
    }
    sqlx::raw_sql("COMMIT").execute(&mut *conn).await.map_err(|e| db_error(event, e))?;
    Ok(())
}

/// Runs one job: in one transaction with its history row, or statement by statement with the
/// row written when it ends (success or failure).
async fn execute<P: Progress>(
    locked: &mut Locked,
    target: &Target,
    scripts: &Scripts,
    placeholders: &Placeholders,
    job: &mut Job<'_>,
    each: (&str, &str, &str),
    progress: &mut P,
) -> Result<Change, ExecError> {
    let (before_each, after_each, after_each_error) = each;
    let mixed = target.settings.mixed;
    let conn = &mut locked.session.conn;
    let started = Instant::now();
    let change = change_of;
    let before = callback_statements(scripts, before_each, placeholders, mixed)?;
    let after = callback_statements(scripts, after_each, placeholders, mixed)?;
    if job.in_transaction {
        // One round trip per statement: the first carries BEGIN, the last the history row and
        // COMMIT, so a one-statement migration costs what psql pays for the same file.
        let statements: Vec<(&str, &Statement)> = before
            .iter()
            .map(|(s, st)| (s.script.as_str(), st))
            .chain(std::iter::once((job.script.script.as_str(), &job.statements)))
            .chain(after.iter().map(|(s, st)| (s.script.as_str(), st)))
            .flat_map(|(script, list)| list.iter().map(move |st| (script, st)))
            .collect();
        let begin = format!("BEGIN;\n{}", timeouts(job.script, "LOCAL "));
        let finish = format!(";\n{};\nCOMMIT;", target.table.insert_timed_sql(&job.row));
        let mut result = Ok(None);
        for (i, (script, st)) in statements.iter().enumerate() {
            let prefix = if i == 0 { begin.as_str() } else { "" };
            let suffix = if i + 1 == statements.len() { finish.as_str() } else { "" };
            result = run_statement(conn, script, st, prefix, suffix, &target.table).await;
            if result.is_err() {
                break;
            }
        }
        if statements.is_empty() {
            result = record(conn, &job.script.script, &target.table, format!("{begin}{finish}")).await;
        }
        match result {
            Ok(recorded) => {
                job.row.execution_time =
                    recorded.unwrap_or_else(|| started.elapsed().as_millis().min(i32::MAX as u128) as i32);
            }
            Err(e) => {
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                // The migration and its row were rolled back together; the error callbacks get a
                // transaction of their own.
                let _ = fire(conn, scripts, after_each_error, placeholders, target).await;
                return Err(e);
            }
        }
        return Ok(change(&job.row, job.action, true));
    }

    progress.non_transactional(Some(change(&job.row, job.action, false))).await;
    // Sent on their own: a statement that must not run in a transaction cannot share a query
    // string with anything (that is an implicit transaction).
    let settings = timeouts(job.script, "");
    let mut result = Ok(());
    if !settings.is_empty() {
        result = sqlx::raw_sql(sqlx::AssertSqlSafe(settings.clone()))
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| db_error(&job.script.script, e));
    }
    let statements = before
        .iter()
        .map(|(s, st)| (s.script.as_str(), st))
        .chain(std::iter::once((job.script.script.as_str(), &job.statements)))
        .chain(after.iter().map(|(s, st)| (s.script.as_str(), st)))
        .flat_map(|(script, list)| list.iter().map(move |st| (script, st)))
        .collect::<Vec<(&str, &Statement)>>();
    for (script, st) in statements {
        if result.is_err() {
            break;
        }
        result = run_statement(conn, script, st, "", "", &target.table).await.map(|_| ());
    }
    if !settings.is_empty() {
        let _ = sqlx::raw_sql("RESET lock_timeout; RESET statement_timeout").execute(&mut *conn).await;
    }
    job.row.execution_time = started.elapsed().as_millis().min(i32::MAX as u128) as i32;
    job.row.success = result.is_ok();
    // Flyway's success=false row is usually lost with its lock transaction; here it is written
    // in autocommit, so the failure stays on record until repair.
    let record = sqlx::raw_sql(sqlx::AssertSqlSafe(target.table.insert_sql(&job.row)))
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(|e| db_error(&format!("{}: recording it in {}", job.script.script, target.table.quoted()), e));
    progress.non_transactional(None).await;
    match (result, record) {
        (Ok(()), Ok(())) => Ok(change(&job.row, job.action, false)),
        (Err(e), Ok(())) => {
            let _ = fire(conn, scripts, after_each_error, placeholders, target).await;
            progress.changed(change(&job.row, "failed", false)).await;
            Err(ExecError::Failed(format!(
                "{e} (not transactional: recorded as failed; fix the database by hand, then run repair)"
            )))
        }
        (Err(e), Err(r)) => Err(ExecError::Failed(format!("{e}; and the failure could not be recorded: {r}"))),
        (Ok(()), Err(r)) => Err(r),
    }
}

/// Info options with the target's ignore patterns.
fn options(target: &Target) -> Options {
    Options { ignore: target.ignore.clone(), ..Options::default() }
}

fn max_rank(set: &InfoSet) -> i32 {
    set.applied.iter().map(|r| r.rank).max().unwrap_or(0)
}

fn check_failed(set: &InfoSet, target: &Target) -> Result<Vec<String>, ExecError> {
    let future_ignored = target.ignore.iter().any(|p| p.matches(true, State::FutureSuccess));
    let mut warnings = Vec::new();
    for info in &set.infos {
        if !info.state.is_failed() {
            continue;
        }
        let what = match set.version_of(info) {
            Some(v) => format!("version {v}"),
            None => format!("repeatable {}", set.description_of(info)),
        };
        if info.state == State::FutureFailed && future_ignored {
            warnings.push(format!(
                "Schema {} contains a failed future migration to {what}",
                crate::history::quote_ident(&target.table.schema)
            ));
            continue;
        }
        return Err(ExecError::Precondition(format!(
            "Schema {} contains a failed migration to {what}! Fix the database, then run repair",
            crate::history::quote_ident(&target.table.schema)
        )));
    }
    Ok(warnings)
}

fn future_warnings(set: &InfoSet) -> Vec<String> {
    let newest_script = set.resolved.iter().filter_map(|r| r.version.as_ref()).max();
    set.infos
        .iter()
        .filter(|i| i.state == State::FutureSuccess)
        .filter_map(|i| set.version_of(i))
        .map(|v| {
            format!(
                "Schema has a version ({v}) that is newer than the latest available migration ({})",
                newest_script.map(Version::text).unwrap_or("none")
            )
        })
        .collect()
}

/// `migrate`: applies every pending migration (up to `target_version`), versioned first, then
/// repeatables, each with its history row.
pub async fn migrate<P: Progress>(
    target: &Target,
    target_version: VersionTarget,
    out_of_order: bool,
    progress: &mut P,
) -> Result<Outcome, ExecError> {
    let scripts = load_scripts(target)?;
    let mut locked = Locked::acquire(target).await?;
    let baseline_version = target.settings.baseline_version.clone();
    let result =
        migrate_locked(&mut locked, target, &scripts, target_version, out_of_order, &baseline_version, progress).await;
    if result.is_err() {
        let placeholders = locked.session.placeholders(target);
        let _ = fire(&mut locked.session.conn, &scripts, "afterMigrateError", &placeholders, target).await;
    }
    locked.release().await;
    result
}

async fn migrate_locked<P: Progress>(
    locked: &mut Locked,
    target: &Target,
    scripts: &Scripts,
    target_version: VersionTarget,
    out_of_order: bool,
    baseline_version: &str,
    progress: &mut P,
) -> Result<Outcome, ExecError> {
    let what = format!("database {}", target.database);
    let placeholders = locked.session.placeholders(target);
    let installed_by = locked.session.installed_by(target);
    let conn = &mut locked.session.conn;
    let schema = &target.table.schema;
    // createSchemas: a missing schema is created and marked, so clean could drop it again.
    let mut created_schema = false;
    if !history::schema_exists(conn, schema).await.map_err(|e| db_error(&what, e))? {
        history::create_schema(conn, schema).await.map_err(|e| db_error(&what, e))?;
        created_schema = true;
    }
    let mut warnings = Vec::new();
    if !target.table.exists(conn).await.map_err(|e| db_error(&what, e))? {
        let empty = history::schema_is_empty(conn, schema).await.map_err(|e| db_error(&what, e))?;
        if created_schema {
            let marker = NewRow {
                rank: 0,
                version: None,
                description: "<< Flyway Schema Creation >>".into(),
                kind: MigrationType::Schema,
                script: history::quote_ident(schema),
                checksum: None,
                installed_by: installed_by.clone(),
                execution_time: 0,
                success: true,
            };
            target.table.create(conn, Some(&marker)).await.map_err(|e| db_error(&what, e))?;
        } else if empty {
            target.table.create(conn, None).await.map_err(|e| db_error(&what, e))?;
        } else if target.settings.baseline_on_migrate {
            let version = Version::parse(baseline_version)
                .map_err(|e| ExecError::Invalid { field: "baseline_version".into(), reason: e.to_string() })?;
            target
                .table
                .create(conn, Some(&baseline_row(&version, 1, &installed_by)))
                .await
                .map_err(|e| db_error(&what, e))?;
            warnings.push(format!("baselined the non-empty schema {schema} at version {version} (baselineOnMigrate)"));
        } else {
            return Err(ExecError::Precondition(format!(
                "Found non-empty schema(s) {} but no schema history table. Use baseline() or set baselineOnMigrate to true to initialize the schema history table.",
                history::quote_ident(schema)
            )));
        }
    }
    let applied = read_history(&mut locked.session, target).await?;
    let mut ignore = target.ignore.clone();
    ignore.push(IgnorePattern::parse("*:pending").expect("valid"));
    let set = compute(scripts, &placeholders, applied, Options { target: target_version, out_of_order, ignore })?;
    let version_before = set.current_version();
    progress.started(&version_before).await;
    let problems = set.validate();
    if !problems.is_empty() {
        let details: Vec<String> = problems.iter().map(|(_, code, message)| format!("{code}: {message}")).collect();
        return Err(ExecError::Precondition(format!(
            "Validate failed: Migrations have failed validation\n{}",
            details.join("\n")
        )));
    }
    warnings.extend(check_failed(&set, target)?);
    warnings.extend(future_warnings(&set));
    warnings.extend(callback_warnings(
        scripts,
        &[
            "beforeMigrate",
            "beforeEachMigrate",
            "afterEachMigrate",
            "afterEachMigrateError",
            "afterMigrate",
            "afterMigrateApplied",
            "afterVersioned",
            "beforeRepeatables",
            "afterMigrateError",
        ],
    ));

    let mixed = target.settings.mixed;
    fire(&mut locked.session.conn, scripts, "beforeMigrate", &placeholders, target).await?;
    let mut count = 0;
    let pending = set.pending();
    let last_versioned = pending.iter().rposition(|i| set.version_of(i).is_some());
    let mut repeatables_started = false;
    let prepared = prepare(
        pending.iter().map(|i| &scripts.migrations[i.resolved.expect("pending has a script")]),
        &placeholders,
        mixed,
    )?;
    for (rank, (n, (info, (statements, in_transaction)))) in
        (max_rank(&set) + 1..).zip(pending.iter().zip(prepared).enumerate())
    {
        let index = info.resolved.expect("pending has a script");
        let resolved = &set.resolved[index];
        let script = &scripts.migrations[index];
        if resolved.version.is_none() && !repeatables_started {
            repeatables_started = true;
            fire(&mut locked.session.conn, scripts, "beforeRepeatables", &placeholders, target).await?;
        }
        locked.still_locked(target).await?;
        let mut job = Job {
            script,
            statements,
            in_transaction,
            row: NewRow {
                rank,
                version: resolved.version.as_ref().map(|v| v.text().to_string()),
                description: abbreviate_description(&resolved.description),
                kind: resolved.kind,
                script: resolved.script.clone(),
                checksum: Some(resolved.checksum),
                installed_by: installed_by.clone(),
                execution_time: 0,
                success: true,
            },
            action: "applied",
        };
        let change = execute(
            locked,
            target,
            scripts,
            &placeholders,
            &mut job,
            ("beforeEachMigrate", "afterEachMigrate", "afterEachMigrateError"),
            progress,
        )
        .await?;
        progress.changed(change).await;
        count += 1;
        if Some(n) == last_versioned {
            fire(&mut locked.session.conn, scripts, "afterVersioned", &placeholders, target).await?;
        }
    }
    if count > 0 {
        fire(&mut locked.session.conn, scripts, "afterMigrateApplied", &placeholders, target).await?;
    }
    fire(&mut locked.session.conn, scripts, "afterMigrate", &placeholders, target).await?;
    let after = read_history(&mut locked.session, target).await?;
    let after_set = compute(scripts, &placeholders, after, options(target))?;
    let version_after = after_set.current_version();
    let message = if count == 0 {
        format!("Schema {} is up to date. No migration necessary.", history::quote_ident(schema))
    } else {
        format!(
            "Successfully applied {count} migration{} to schema {}, now at version {}",
            if count == 1 { "" } else { "s" },
            history::quote_ident(schema),
            if version_after.is_empty() { "<< Empty Schema >>" } else { &version_after }
        )
    };
    Ok(Outcome { version_before, version_after, message, warnings })
}

fn baseline_row(version: &Version, rank: i32, installed_by: &str) -> NewRow {
    NewRow {
        rank,
        version: Some(version.text().to_string()),
        description: "<< Flyway Baseline >>".into(),
        kind: MigrationType::Baseline,
        script: "<< Flyway Baseline >>".into(),
        checksum: None,
        installed_by: installed_by.to_string(),
        execution_time: 0,
        success: true,
    }
}

/// `baseline`: marks an existing database as being at `version` (default `1`).
pub async fn baseline<P: Progress>(target: &Target, version: &str, progress: &mut P) -> Result<Outcome, ExecError> {
    let version = Version::parse(if version.is_empty() { "1" } else { version })
        .map_err(|e| ExecError::Invalid { field: "target_version".into(), reason: e.to_string() })?;
    let mut locked = Locked::acquire(target).await?;
    let result = baseline_locked(&mut locked, target, &version, progress).await;
    locked.release().await;
    result
}

async fn baseline_locked<P: Progress>(
    locked: &mut Locked,
    target: &Target,
    version: &Version,
    progress: &mut P,
) -> Result<Outcome, ExecError> {
    let what = format!("database {}", target.database);
    let installed_by = locked.session.installed_by(target);
    let t = target.table.quoted();
    let conn = &mut locked.session.conn;
    let description = "<< Flyway Baseline >>";
    if !history::schema_exists(conn, &target.table.schema).await.map_err(|e| db_error(&what, e))? {
        return Err(ExecError::Precondition(format!(
            "database {}: schema {} does not exist",
            target.database, target.table.schema
        )));
    }
    if !target.table.exists(conn).await.map_err(|e| db_error(&what, e))? {
        progress.started("").await;
        let row = baseline_row(version, 1, &installed_by);
        target.table.create(conn, Some(&row)).await.map_err(|e| db_error(&what, e))?;
        progress.changed(change_of(&row, "baselined", true)).await;
        return Ok(Outcome {
            version_before: String::new(),
            version_after: version.text().into(),
            message: format!("Successfully baselined schema with version: {version}"),
            warnings: vec![],
        });
    }
    let rows = read_history(&mut locked.session, target).await?;
    let current = rows
        .iter()
        .filter(|r| r.version.is_some() && r.success && r.kind != MigrationType::Delete)
        .filter_map(|r| r.version.as_ref())
        .max()
        .map(|v| v.text().to_string())
        .unwrap_or_default();
    progress.started(&current).await;
    if let Some(marker) = rows.iter().find(|r| r.kind == MigrationType::Baseline) {
        let marker_version = marker.version.as_ref().map(Version::text).unwrap_or("");
        if marker.version.as_ref() == Some(version) && marker.description == description {
            return Ok(Outcome {
                version_before: current.clone(),
                version_after: current,
                message: format!(
                    "Schema history table {t} already initialized with ({version},{description}). Skipping."
                ),
                warnings: vec![],
            });
        }
        return Err(ExecError::Precondition(format!(
            "Unable to baseline schema history table {t} with ({version},{description}) as it has already been baselined with ({marker_version},{})",
            marker.description
        )));
    }
    if rows.iter().any(|r| r.kind == MigrationType::Schema) && *version == Version::parse("0").expect("valid") {
        return Err(ExecError::Precondition(format!(
            "Unable to baseline schema history table {t} with version 0 as this version was used for schema creation"
        )));
    }
    if rows.iter().any(|r| !r.kind.synthetic()) {
        return Err(ExecError::Precondition(format!(
            "Unable to baseline schema history table {t} as it already contains migrations"
        )));
    }
    if rows.is_empty() {
        return Err(ExecError::Precondition(format!(
            "Unable to baseline schema history table {t} as it already exists, and is empty. Delete the schema history table and run baseline again."
        )));
    }
    let rank = rows.iter().map(|r| r.rank).max().unwrap_or(0) + 1;
    let row = baseline_row(version, rank, &installed_by);
    sqlx::raw_sql(sqlx::AssertSqlSafe(target.table.insert_sql(&row)))
        .execute(&mut locked.session.conn)
        .await
        .map_err(|e| db_error(&what, e))?;
    progress.changed(change_of(&row, "baselined", true)).await;
    Ok(Outcome {
        version_before: current,
        version_after: version.text().into(),
        message: format!("Successfully baselined schema with version: {version}"),
        warnings: vec![],
    })
}

fn change_of(row: &NewRow, action: &str, transactional: bool) -> Change {
    Change {
        version: row.version.clone().unwrap_or_default(),
        description: row.description.clone(),
        kind: row.kind.as_str().into(),
        script: row.script.clone(),
        checksum: row.checksum,
        rank: row.rank,
        execution_time_ms: row.execution_time,
        action: action.into(),
        transactional,
    }
}

/// `repair`: in one transaction, deletes failed rows, marks missing migrations deleted and
/// realigns checksums, descriptions and types with the scripts.
pub async fn repair<P: Progress>(target: &Target, progress: &mut P) -> Result<Outcome, ExecError> {
    let scripts = load_scripts(target)?;
    let mut locked = Locked::acquire(target).await?;
    let result = repair_locked(&mut locked, target, &scripts, progress).await;
    locked.release().await;
    result
}

async fn repair_locked<P: Progress>(
    locked: &mut Locked,
    target: &Target,
    scripts: &Scripts,
    progress: &mut P,
) -> Result<Outcome, ExecError> {
    let what = format!("database {}", target.database);
    let placeholders = locked.session.placeholders(target);
    let installed_by = locked.session.installed_by(target);
    if !target.table.exists(&mut locked.session.conn).await.map_err(|e| db_error(&what, e))? {
        progress.started("").await;
        return Ok(Outcome {
            message: format!("no schema history table {}: nothing to repair", target.table.quoted()),
            ..Outcome::default()
        });
    }
    let rows = read_history(&mut locked.session, target).await?;
    let before = compute(scripts, &placeholders, rows.clone(), options(target))?;
    let version_before = before.current_version();
    progress.started(&version_before).await;
    let t = target.table.quoted();
    let mut statements = vec!["BEGIN".to_string()];
    let mut changes = Vec::new();
    for r in rows.iter().filter(|r| !r.success) {
        statements.push(target.table.delete_sql(r.rank));
        changes.push(Change {
            version: r.version.as_ref().map(|v| v.text().to_string()).unwrap_or_default(),
            description: r.description.clone(),
            kind: r.kind.as_str().into(),
            script: r.script.clone(),
            checksum: r.checksum,
            rank: 0,
            execution_time_ms: 0,
            action: "removed failed row".into(),
            transactional: true,
        });
    }
    let remaining: Vec<_> = rows.into_iter().filter(|r| r.success).collect();
    let set = compute(scripts, &placeholders, remaining, options(target))?;
    let mut rank = max_rank(&set);
    for info in &set.infos {
        let Some(a) = info.applied else { continue };
        let row = &set.applied[a];
        let versioned = row.version.is_some();
        let missing = matches!(
            info.state,
            State::MissingSuccess | State::MissingFailed | State::FutureSuccess | State::FutureFailed
        );
        if missing && !target.ignore.iter().any(|p| p.matches(versioned, info.state)) {
            rank += 1;
            let delete = NewRow {
                rank,
                version: row.version.as_ref().map(|v| v.text().to_string()),
                description: row.description.clone(),
                kind: MigrationType::Delete,
                script: row.script.clone(),
                checksum: row.checksum,
                installed_by: installed_by.clone(),
                execution_time: 0,
                success: row.success,
            };
            statements.push(target.table.insert_sql(&delete));
            changes.push(change_of(&delete, "marked missing as deleted", true));
            continue;
        }
        let Some(r) = info.resolved.map(|r| &set.resolved[r]) else { continue };
        if row.kind.synthetic()
            || row.kind.undo()
            || matches!(info.state, State::Deleted | State::Undone | State::Superseded)
        {
            continue;
        }
        let description = abbreviate_description(&r.description);
        let realign = if versioned {
            row.checksum != Some(r.checksum) || row.description != description || row.kind != r.kind
        } else {
            // Repeatables only when the stored checksum is the placeholder-equivalent one.
            row.checksum != Some(r.checksum) && r.checksum_matches(row.checksum)
        };
        if realign {
            statements.push(target.table.realign_sql(row.rank, &description, r.kind, r.checksum));
            changes.push(Change {
                version: row.version.as_ref().map(|v| v.text().to_string()).unwrap_or_default(),
                description,
                kind: r.kind.as_str().into(),
                script: row.script.clone(),
                checksum: Some(r.checksum),
                rank: row.rank,
                execution_time_ms: row.execution_time,
                action: format!(
                    "realigned (checksum {} → {})",
                    row.checksum.map(|c| c.to_string()).unwrap_or_else(|| "null".into()),
                    r.checksum
                ),
                transactional: true,
            });
        }
    }
    statements.push("COMMIT".into());
    let conn = &mut locked.session.conn;
    if changes.is_empty() {
        return Ok(Outcome {
            version_before: version_before.clone(),
            version_after: version_before,
            message: format!("Repair of {t}: nothing to repair"),
            warnings: vec![],
        });
    }
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(statements.join(";\n"))).execute(&mut *conn).await {
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
        return Err(db_error(&format!("repair of {t}"), e));
    }
    let count = changes.len();
    for c in changes {
        progress.changed(c).await;
    }
    let after = read_history(&mut locked.session, target).await?;
    let version_after = compute(scripts, &placeholders, after, options(target))?.current_version();
    Ok(Outcome {
        version_before,
        version_after,
        message: format!("Successfully repaired schema history table {t} ({count} change(s))"),
        warnings: vec![],
    })
}

/// What `undo` would reverse, newest first; an error names what is missing. `to` is the version
/// to end at (`None`: below every applied version).
pub fn undo_plan<'a>(
    set: &InfoSet,
    scripts: &'a Scripts,
    to: Option<&Version>,
) -> Result<Vec<(usize, &'a Script)>, ExecError> {
    if let Some(info) = set.infos.iter().find(|i| i.state.is_failed()) {
        let what = set
            .version_of(info)
            .map(|v| format!("version {v}"))
            .unwrap_or_else(|| set.description_of(info).to_string());
        return Err(ExecError::Precondition(format!(
            "the history has a failed migration ({what}); repair it before undoing"
        )));
    }
    if let Some(b) = &set.baseline
        && to.is_none_or(|t| t < b)
    {
        return Err(ExecError::Precondition(format!(
            "cannot undo below the baseline (version {b}): what the baseline stands for has no undo scripts"
        )));
    }
    let mut candidates: Vec<usize> = set
        .infos
        .iter()
        .filter(|i| matches!(i.state, State::Success | State::OutOfOrder))
        .filter_map(|i| i.applied)
        .filter(|&a| {
            let row = &set.applied[a];
            row.kind == MigrationType::Sql && row.version.as_ref().is_some_and(|v| to.is_none_or(|t| v > t))
        })
        .collect();
    candidates.sort_by_key(|&a| std::cmp::Reverse(set.applied[a].rank));
    let mut missing = Vec::new();
    let mut plan = Vec::new();
    for a in candidates {
        let row = &set.applied[a];
        let version = row.version.as_ref().expect("versioned");
        match scripts.undo.get(version) {
            Some(u) => plan.push((a, u)),
            None => missing.push(format!("{version} ({})", row.script)),
        }
    }
    if !missing.is_empty() {
        return Err(ExecError::Invalid {
            field: "target_version".into(),
            reason: format!(
                "no undo script (U<version>__<description>.sql) for {}; nothing was undone",
                missing.join(", ")
            ),
        });
    }
    Ok(plan)
}

/// The version an undo ends at (`Some(None)`: below everything), or `None` when nothing
/// versioned is applied.
fn undo_end(set: &InfoSet, to: &UndoTo) -> Option<Option<Version>> {
    match to {
        UndoTo::Version(v) => Some(Some(v.clone())),
        UndoTo::Empty => Some(None),
        UndoTo::Previous => {
            let mut versions: Vec<&Version> = set
                .infos
                .iter()
                .filter(|i| matches!(i.state, State::Success | State::OutOfOrder | State::Baseline))
                .filter(|i| {
                    i.applied
                        .is_some_and(|a| matches!(set.applied[a].kind, MigrationType::Sql | MigrationType::Baseline))
                })
                .filter_map(|i| set.version_of(i))
                .collect();
            versions.sort();
            match versions.len() {
                0 => None,
                1 => Some(None),
                n => Some(Some(versions[n - 2].clone())),
            }
        }
    }
}

/// What `undo` ends at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UndoTo {
    /// The version before the current one.
    Previous,
    /// This version.
    Version(Version),
    /// Nothing versioned applied.
    Empty,
}

/// `undo`: runs the `U` scripts of the applied migrations above the target, newest first, each
/// with a DELETE row for its version (so Flyway Community, which has no undo, sees the version
/// as not applied).
pub async fn undo<P: Progress>(target: &Target, to: UndoTo, progress: &mut P) -> Result<Outcome, ExecError> {
    let scripts = load_scripts(target)?;
    let mut locked = Locked::acquire(target).await?;
    let result = undo_locked(&mut locked, target, &scripts, to, progress).await;
    if result.is_err() {
        let placeholders = locked.session.placeholders(target);
        let _ = fire(&mut locked.session.conn, &scripts, "afterUndoError", &placeholders, target).await;
    }
    locked.release().await;
    result
}

async fn undo_locked<P: Progress>(
    locked: &mut Locked,
    target: &Target,
    scripts: &Scripts,
    to: UndoTo,
    progress: &mut P,
) -> Result<Outcome, ExecError> {
    let placeholders = locked.session.placeholders(target);
    let installed_by = locked.session.installed_by(target);
    let rows = read_history(&mut locked.session, target).await?;
    let set = compute(scripts, &placeholders, rows, options(target))?;
    let version_before = set.current_version();
    progress.started(&version_before).await;
    let Some(to_version) = undo_end(&set, &to) else {
        return Ok(Outcome {
            message: "nothing to undo: no versioned migration is applied".into(),
            ..Outcome::default()
        });
    };
    let plan = undo_plan(&set, scripts, to_version.as_ref())?;
    if plan.is_empty() {
        return Ok(Outcome {
            version_before: version_before.clone(),
            version_after: version_before,
            message: "nothing to undo".into(),
            warnings: vec![],
        });
    }
    let mixed = target.settings.mixed;
    let mut warnings = callback_warnings(
        scripts,
        &[
            "beforeUndo",
            "beforeEachUndo",
            "afterEachUndo",
            "afterEachUndoError",
            "afterUndo",
            "afterUndoError",
            "beforeMigrate",
            "beforeEachMigrate",
            "afterEachMigrate",
            "afterEachMigrateError",
            "afterMigrate",
            "afterMigrateApplied",
            "afterVersioned",
            "beforeRepeatables",
            "afterMigrateError",
        ],
    );
    if set.infos.iter().any(|i| i.applied.is_some() && set.version_of(i).is_none() && i.state == State::Success) {
        warnings.push("repeatable migrations are not undone".into());
    }
    fire(&mut locked.session.conn, scripts, "beforeUndo", &placeholders, target).await?;
    let count = plan.len();
    let prepared = prepare(plan.iter().map(|(_, s)| *s), &placeholders, mixed)?;
    for (rank, ((a, undo_script), (statements, in_transaction))) in
        (max_rank(&set) + 1..).zip(plan.into_iter().zip(prepared))
    {
        let row = &set.applied[a];
        locked.still_locked(target).await?;
        let mut job = Job {
            script: undo_script,
            statements,
            in_transaction,
            row: NewRow {
                rank,
                version: row.version.as_ref().map(|v| v.text().to_string()),
                description: abbreviate_description(&undo_script.description),
                kind: MigrationType::Delete,
                script: abbreviate_script(&undo_script.script),
                checksum: Some(checksum(&undo_script.raw)),
                installed_by: installed_by.clone(),
                execution_time: 0,
                success: true,
            },
            action: "undone",
        };
        let change = execute(
            locked,
            target,
            scripts,
            &placeholders,
            &mut job,
            ("beforeEachUndo", "afterEachUndo", "afterEachUndoError"),
            progress,
        )
        .await?;
        progress.changed(change).await;
    }
    fire(&mut locked.session.conn, scripts, "afterUndo", &placeholders, target).await?;
    let after = read_history(&mut locked.session, target).await?;
    let version_after = compute(scripts, &placeholders, after, options(target))?.current_version();
    Ok(Outcome {
        version_before,
        message: format!(
            "Successfully undid {count} migration{}, now at version {}",
            if count == 1 { "" } else { "s" },
            if version_after.is_empty() { "<< Empty Schema >>" } else { &version_after }
        ),
        version_after,
        warnings,
    })
}

/// Validate with the target's ignore patterns (and `*:pending` unless `fail_on_pending`).
pub async fn validate(
    target: &Target,
    fail_on_pending: bool,
) -> Result<(InfoSet, Vec<(String, String, &'static str, String)>), ExecError> {
    let mut ignore = target.ignore.clone();
    if !fail_on_pending {
        ignore.push(IgnorePattern::parse("*:pending").expect("valid"));
    }
    let (set, _scripts, _) = info(target, Options { ignore, ..Options::default() }).await?;
    let problems = set
        .validate()
        .into_iter()
        .map(|(i, code, message)| {
            let version = set.version_of(i).map(|v| v.text().to_string()).unwrap_or_default();
            let script = match (i.applied, i.resolved) {
                (Some(a), _) => set.applied[a].script.clone(),
                (None, Some(r)) => set.resolved[r].script.clone(),
                _ => String::new(),
            };
            (version, script, code, message)
        })
        .collect();
    Ok((set, problems))
}

/// After a crash during a non-transactional migration (`running`, as its run recorded it): if
/// the migration has no history row, records it as failed, since its statements may have
/// partly run. Runs under the lock, so a migrator still working on it is waited for. True when
/// it recorded the failure.
pub async fn record_interrupted(target: &Target, running: &Change) -> Result<bool, ExecError> {
    let mut locked = Locked::acquire(target).await?;
    let result = async {
        let rows = read_history(&mut locked.session, target).await?;
        if rows.iter().any(|r| r.rank == running.rank) {
            return Ok(false);
        }
        let row = NewRow {
            rank: rows.iter().map(|r| r.rank).max().unwrap_or(0) + 1,
            version: (!running.version.is_empty()).then(|| running.version.clone()),
            description: running.description.clone(),
            kind: MigrationType::parse(&running.kind).unwrap_or(MigrationType::Sql),
            script: running.script.clone(),
            checksum: running.checksum,
            installed_by: locked.session.installed_by(target),
            execution_time: 0,
            success: false,
        };
        let what = format!("database {}", target.database);
        sqlx::raw_sql(sqlx::AssertSqlSafe(target.table.insert_sql(&row)))
            .execute(&mut locked.session.conn)
            .await
            .map_err(|e| db_error(&what, e))?;
        Ok(true)
    }
    .await;
    locked.release().await;
    result
}

/// Checks before an undo run is stored that every migration it would reverse has its `U`
/// script (and nothing else forbids it), so a refused undo changes nothing.
pub async fn check_undo(target: &Target, to: &UndoTo) -> Result<(), ExecError> {
    let (set, scripts, _) = info(target, options(target)).await?;
    match undo_end(&set, to) {
        Some(end) => undo_plan(&set, &scripts, end.as_ref()).map(|_| ()),
        None => Ok(()),
    }
}
