//! Carries out stored runs. A run is taken with a lease (renewed while it works); a run whose
//! lease ran out (its replica crashed) is taken over by another replica or the restarted one,
//! which repeats it: migrate, repair and baseline re-read the history under the lock, and undo
//! was stored with its explicit target, so a repeat does only what is left. A non-transactional
//! migration the crash interrupted is recorded as failed first.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use uuid::Uuid;

use crate::{
    domain::{
        info::{IgnorePattern, Target as VersionTarget},
        placeholders::redact,
        version::Version,
    },
    error::MigratorError,
    executor::{self, Change, DatabaseSettings, ExecError, Outcome, Progress, Target, UndoTo},
    history::Table,
    store::{Command, Phase, RunRequest, Store, StoredRun},
};

/// Progress is written at most this often (the history table is the truth; the run record is
/// for watchers), so a run of many small migrations is not slowed by its own bookkeeping.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// The databases the migrator may work on, by name.
#[derive(Clone, Debug, Default)]
pub struct Databases {
    /// Settings by name.
    pub by_name: BTreeMap<String, DatabaseSettings>,
    /// Validate's ignore patterns when a request gives none.
    pub ignore: Vec<String>,
}

fn identifier(field: &str, value: &str, default: &str) -> Result<String, MigratorError> {
    let value = if value.is_empty() { default } else { value };
    // The edge checks refused NUL and control characters; PostgreSQL's own limit is left.
    if value.len() > 63 {
        return Err(MigratorError::invalid(
            field,
            format!("{} is not a PostgreSQL identifier (at most 63 bytes)", hopngo_proto::check::shown(value)),
        ));
    }
    Ok(value.to_string())
}

impl Databases {
    /// The request's target resolved against the configuration; errors name the field.
    pub fn request(
        &self,
        target: Option<&hopngo_proto::migrator::MigrationTarget>,
    ) -> Result<RunRequest, MigratorError> {
        let t = target.ok_or_else(|| MigratorError::invalid("target", "is required"))?;
        let settings = self.by_name.get(&t.database).ok_or_else(|| {
            let known: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
            MigratorError::invalid(
                "target.database",
                format!(
                    "unknown database {:?} (configured: {})",
                    t.database,
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                ),
            )
        })?;
        for (i, location) in t.locations.iter().enumerate() {
            if !settings.permits(location) {
                return Err(MigratorError::invalid(
                    format!("target.locations[{i}]"),
                    format!(
                        "{} is not a location configured for database {:?} (--locations, --location-root) nor below one",
                        hopngo_proto::check::shown(location),
                        t.database
                    ),
                ));
            }
        }
        let locations = if t.locations.is_empty() { settings.locations.clone() } else { t.locations.clone() };
        if locations.is_empty() {
            return Err(MigratorError::invalid(
                "target.locations",
                format!("no locations given and database {:?} has none configured", t.database),
            ));
        }
        let ignore = match &t.ignore_migration_patterns {
            Some(p) => {
                for (i, pattern) in p.patterns.iter().enumerate() {
                    IgnorePattern::parse(pattern).map_err(|e| {
                        MigratorError::invalid(format!("target.ignore_migration_patterns.patterns[{i}]"), e)
                    })?;
                }
                Some(p.patterns.clone())
            }
            None => None,
        };
        Ok(RunRequest {
            database: t.database.clone(),
            locations,
            schema: identifier("target.schema", &t.schema, "public")?,
            table: identifier("target.table", &t.table, "flyway_schema_history")?,
            placeholders: t.placeholders.clone().into_iter().collect(),
            ignore,
            command: Command::Migrate,
            target_version: String::new(),
            out_of_order: false,
            undo_all: false,
        })
    }

    /// The executor's target for a (validated) request.
    pub fn target(&self, r: &RunRequest) -> Result<Target, MigratorError> {
        let settings = self
            .by_name
            .get(&r.database)
            .ok_or_else(|| MigratorError::Precondition(format!("database {:?} is no longer configured", r.database)))?;
        let patterns = r.ignore.clone().unwrap_or_else(|| self.ignore.clone());
        let ignore = patterns
            .iter()
            .map(|p| IgnorePattern::parse(p).map_err(|e| MigratorError::invalid("target.ignore_migration_patterns", e)))
            .collect::<Result<_, _>>()?;
        Ok(Target {
            database: r.database.clone(),
            settings: settings.clone(),
            locations: r.locations.clone(),
            table: Table { schema: r.schema.clone(), table: r.table.clone() },
            placeholders: r.placeholders.clone(),
            ignore,
        })
    }
}

/// The run engine of one replica.
pub struct Engine {
    store: Store,
    databases: Databases,
    owner: Uuid,
    /// Per watched run: the notice its watchers wait on, and how many watchers there are.
    notices: Mutex<HashMap<Uuid, (Arc<Notify>, usize)>>,
    running: Mutex<HashSet<Uuid>>,
    tasks: TaskTracker,
    /// How long a run stays taken without a renewal.
    lease: Duration,
}

impl Engine {
    /// An engine over `store` for `databases`, taking runs for `lease` at a time (renewed every
    /// third of it; runs whose lease ran out are looked for every sixth).
    pub fn new(store: Store, databases: Databases, lease: Duration) -> Arc<Engine> {
        Arc::new(Engine {
            store,
            databases,
            owner: Uuid::now_v7(),
            notices: Mutex::default(),
            running: Mutex::default(),
            tasks: TaskTracker::new(),
            lease,
        })
    }

    fn lease_secs(&self) -> i64 {
        self.lease.as_secs().max(1) as i64
    }

    /// The configured databases.
    pub fn databases(&self) -> &Databases {
        &self.databases
    }

    /// A watcher of `id`: it waits on `notice`, and is forgotten when dropped.
    pub fn watch(self: &Arc<Self>, id: Uuid) -> Watcher {
        let mut notices = self.notices.lock().expect("notices");
        let entry = notices.entry(id).or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        Watcher { engine: Arc::clone(self), id, notice: entry.0.clone() }
    }

    fn changed(&self, id: Uuid) {
        let notice = self.notices.lock().expect("notices").get(&id).map(|(n, _)| n.clone());
        if let Some(n) = notice {
            n.notify_waiters();
        }
    }

    /// Starts carrying out a run here unless this replica already is.
    pub fn spawn(self: &Arc<Self>, id: Uuid) {
        if !self.running.lock().expect("running").insert(id) {
            return;
        }
        let engine = Arc::clone(self);
        self.tasks.spawn(async move {
            if let Err(e) = engine.execute(id).await {
                tracing::error!(run = %id, error = %e, "migration run");
            }
            engine.running.lock().expect("running").remove(&id);
        });
    }

    /// Takes over unfinished runs nobody holds, now and every few seconds, until `stop`.
    pub async fn recover(self: Arc<Self>, stop: CancellationToken) {
        loop {
            match self.store.orphans().await {
                Ok(ids) => ids.into_iter().for_each(|id| self.spawn(id)),
                Err(e) => tracing::warn!(error = %e, "looking for unfinished runs"),
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(self.lease / 6) => {}
            }
        }
    }

    /// Waits for the runs in progress, at most `within`.
    pub async fn drain(&self, within: Duration) {
        self.tasks.close();
        let _ = tokio::time::timeout(within, self.tasks.wait()).await;
    }

    async fn execute(self: &Arc<Self>, id: Uuid) -> Result<(), MigratorError> {
        let Some(mut run) = self.store.claim(id, self.owner, self.lease_secs()).await? else {
            return Ok(());
        };
        run.message = format!("waiting for the migration lock on database {}", run.request.database);
        let renew = CancellationToken::new();
        let renewer = {
            let engine = Arc::clone(self);
            let renew = renew.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = renew.cancelled() => break,
                        _ = tokio::time::sleep(engine.lease / 3) => {
                            if let Err(e) = engine.store.claim(id, engine.owner, engine.lease_secs()).await {
                                tracing::warn!(run = %id, error = %e, "renewing the lease");
                            }
                        }
                    }
                }
            })
        };
        let mut progress = RunProgress { engine: self, run, last_save: Instant::now() };
        progress.save().await;
        let result = self.carry_out(&mut progress).await;
        renew.cancel();
        let _ = renewer.await;
        let run = &mut progress.run;
        run.in_progress = None;
        run.finished_at = Some(crate::store::now());
        match result {
            Ok(outcome) => {
                run.phase = Phase::Succeeded;
                run.message = redact(&outcome.message, &run.request.placeholders);
                if run.version_before.is_none() {
                    run.version_before = Some(outcome.version_before);
                }
                run.version_after = Some(outcome.version_after);
                run.warnings.extend(outcome.warnings.iter().map(|w| redact(w, &run.request.placeholders)));
            }
            Err(e) => {
                run.phase = Phase::Failed;
                // A failing statement is quoted with its placeholders replaced.
                run.message = redact(&e.to_string(), &run.request.placeholders);
            }
        }
        progress.save().await;
        Ok(())
    }

    async fn carry_out(&self, progress: &mut RunProgress<'_>) -> Result<Outcome, ExecError> {
        let request = progress.run.request.clone();
        let target = self.databases.target(&request).map_err(|e| ExecError::Precondition(e.to_string()))?;
        if let Some(running) = progress.run.in_progress.clone() {
            if executor::record_interrupted(&target, &running).await? {
                progress.run.interrupted = true;
                return Err(ExecError::Failed(format!(
                    "the migrator stopped during the non-transactional migration {} ({}): its statements may have partly run; it is recorded as failed. Check the database, then run repair",
                    if running.version.is_empty() { &running.description } else { &running.version },
                    running.script
                )));
            }
            progress.run.in_progress = None;
        }
        match request.command {
            Command::Migrate => {
                let upto = VersionTarget::parse(&request.target_version)
                    .map_err(|reason| ExecError::Invalid { field: "target_version".into(), reason })?;
                executor::migrate(&target, upto, request.out_of_order, progress).await
            }
            Command::Baseline => executor::baseline(&target, &request.target_version, progress).await,
            Command::Repair => executor::repair(&target, progress).await,
            Command::Undo => {
                let to =
                    if request.undo_all {
                        UndoTo::Empty
                    } else if request.target_version.is_empty() {
                        UndoTo::Previous
                    } else {
                        UndoTo::Version(Version::parse(&request.target_version).map_err(|e| ExecError::Invalid {
                            field: "target_version".into(),
                            reason: e.to_string(),
                        })?)
                    };
                executor::undo(&target, to, progress).await
            }
        }
    }
}

/// One watcher of a run (see [`Engine::watch`]).
pub struct Watcher {
    engine: Arc<Engine>,
    id: Uuid,
    /// Notified when this replica changes the run.
    pub notice: Arc<Notify>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let mut notices = self.engine.notices.lock().expect("notices");
        if let Some(entry) = notices.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                notices.remove(&self.id);
            }
        }
    }
}

/// The run record as the command's progress sink.
struct RunProgress<'a> {
    engine: &'a Arc<Engine>,
    run: StoredRun,
    last_save: Instant,
}

impl RunProgress<'_> {
    async fn save(&mut self) {
        self.last_save = Instant::now();
        match self.engine.store.save(&self.run, self.engine.owner).await {
            Ok(true) => self.engine.changed(self.run.id),
            Ok(false) => tracing::warn!(run = %self.run.id, "the run's lease was lost; progress not recorded"),
            Err(e) => tracing::warn!(run = %self.run.id, error = %e, "recording progress"),
        }
    }
}

impl Progress for RunProgress<'_> {
    async fn started(&mut self, version_before: &str) {
        self.run.phase = Phase::Running;
        if self.run.version_before.is_none() {
            self.run.version_before = Some(version_before.to_string());
        }
        let at = if version_before.is_empty() { "no version" } else { version_before };
        self.run.message = format!("holding the migration lock; schema at {at}");
        self.save().await;
    }

    async fn changed(&mut self, change: Change) {
        let name = if change.version.is_empty() {
            change.description.clone()
        } else {
            format!("{} ({})", change.version, change.description)
        };
        self.run.message = format!("{} {name}", change.action);
        self.run.changes.push(change);
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save().await;
        }
    }

    async fn non_transactional(&mut self, running: Option<Change>) {
        if let Some(c) = &running {
            self.run.message = format!("running {} outside a transaction", c.script);
        }
        self.run.in_progress = running;
        self.save().await;
    }
}
