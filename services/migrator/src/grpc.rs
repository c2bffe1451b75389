//! `hopngo.migrator.v1.MigratorService`: Info and Validate answer at once; StartMigration checks
//! what can be checked before anything is written (the request, the scripts, the database and
//! its credentials, undo scripts), stores the run and leaves it to the engine.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _};
use hopngo_kit::follow::{follow, page_token, parse_page_token};
use hopngo_proto::migrator::{self as pb, migrator_service_server::MigratorService};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert,
    domain::{
        info::{Options, Target as VersionTarget},
        version::Version,
    },
    engine::Engine,
    error::MigratorError,
    executor::{self, UndoTo},
    store::{self, Command, Phase, Store, StoredRun},
};

/// How often a watcher looks at its run when no change was announced (changes made by another
/// replica).
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Largest page of `ListMigrationRuns`.
const MAX_PAGE: u32 = 500;

/// The service.
pub struct Migrator {
    store: Store,
    engine: Arc<Engine>,
}

impl Migrator {
    /// The service over `store`, carried out by `engine`.
    pub fn new(store: Store, engine: Arc<Engine>) -> Migrator {
        Migrator { store, engine }
    }
}

fn run_id(id: &str) -> Result<Uuid, MigratorError> {
    Uuid::parse_str(id).map_err(|_| MigratorError::invalid("id", format!("{id:?} is not a run id")))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchMigrationRunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl MigratorService for Migrator {
    async fn info(&self, request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let req = request.into_inner();
        let databases = self.engine.databases();
        let target = databases.target(&databases.request(req.target.as_ref())?)?;
        let options = Options { ignore: target.ignore.clone(), ..Options::default() };
        let (set, scripts, warnings) = executor::info(&target, options).await.map_err(MigratorError::from)?;
        let undo_scripts = scripts.undo.keys().collect();
        Ok(Response::new(pb::InfoResponse {
            migrations: set.infos.iter().map(|i| convert::info(&set, i, &undo_scripts)).collect(),
            current_version: set.current_version(),
            warnings,
        }))
    }

    async fn validate(&self, request: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = request.into_inner();
        let databases = self.engine.databases();
        let target = databases.target(&databases.request(req.target.as_ref())?)?;
        let (_, problems) = executor::validate(&target, req.fail_on_pending).await.map_err(MigratorError::from)?;
        Ok(Response::new(pb::ValidateResponse {
            valid: problems.is_empty(),
            problems: problems
                .into_iter()
                .map(|(version, script, kind, message)| pb::ValidationProblem {
                    version,
                    script,
                    kind: kind.into(),
                    message,
                })
                .collect(),
        }))
    }

    async fn start_migration(
        &self,
        request: Request<pb::StartMigrationRequest>,
    ) -> Result<Response<pb::StartMigrationResponse>, Status> {
        let req = request.into_inner();
        let databases = self.engine.databases();
        let mut run_request = databases.request(req.target.as_ref())?;
        run_request.command = match pb::MigrationCommand::try_from(req.command)
            .unwrap_or(pb::MigrationCommand::Unspecified)
        {
            pb::MigrationCommand::Migrate => Command::Migrate,
            pb::MigrationCommand::Baseline => Command::Baseline,
            pb::MigrationCommand::Repair => Command::Repair,
            pb::MigrationCommand::Undo => Command::Undo,
            pb::MigrationCommand::Unspecified => {
                return Err(MigratorError::invalid("command", "is required (migrate, baseline, repair or undo)").into());
            }
        };
        run_request.target_version = req.target_version.trim().to_string();
        run_request.out_of_order = req.out_of_order;
        run_request.undo_all = req.undo_all;
        let invalid_version = |e: String| MigratorError::invalid("target_version", e);
        // Flyway parses versions as BigIntegers, so `-1` is a version; no migration has one, and a
        // target below every version would quietly do nothing (or undo everything).
        if run_request.target_version.starts_with('-') || run_request.target_version.contains(".-") {
            return Err(invalid_version(format!(
                "{} is negative; a target is a version (1, 1.2), latest, current or next",
                hopngo_proto::check::shown(&run_request.target_version)
            ))
            .into());
        }
        let undo_to = match run_request.command {
            Command::Migrate => {
                VersionTarget::parse(&run_request.target_version).map_err(invalid_version)?;
                None
            }
            Command::Baseline => {
                if !run_request.target_version.is_empty() {
                    Version::parse(&run_request.target_version).map_err(|e| invalid_version(e.to_string()))?;
                }
                None
            }
            Command::Repair => {
                if !run_request.target_version.is_empty() {
                    return Err(MigratorError::invalid("target_version", "repair takes no target version").into());
                }
                None
            }
            Command::Undo if req.undo_all && !run_request.target_version.is_empty() => {
                return Err(MigratorError::invalid("target_version", "must be empty with undo_all").into());
            }
            Command::Undo if req.undo_all => Some(UndoTo::Empty),
            Command::Undo if run_request.target_version.is_empty() => Some(UndoTo::Previous),
            Command::Undo => Some(UndoTo::Version(
                Version::parse(&run_request.target_version).map_err(|e| invalid_version(e.to_string()))?,
            )),
        };
        if req.out_of_order && run_request.command != Command::Migrate {
            return Err(MigratorError::invalid("out_of_order", "applies to migrate only").into());
        }
        if req.undo_all && run_request.command != Command::Undo {
            return Err(MigratorError::invalid("undo_all", "applies to undo only").into());
        }
        let key = (!req.idempotency_key.is_empty()).then(|| req.idempotency_key.clone());
        if let Some(k) = &key
            && let Some(existing) = self.store.by_key(k).await?
        {
            if existing.request != run_request {
                return Err(MigratorError::invalid(
                    "idempotency_key",
                    format!("{k:?} was used to start run {} with a different request", existing.id),
                )
                .into());
            }
            return Ok(Response::new(pb::StartMigrationResponse { run: Some(convert::run(&existing)) }));
        }
        let target = databases.target(&run_request)?;
        executor::preflight(&target).await.map_err(MigratorError::from)?;
        if let Some(to) = &undo_to {
            executor::check_undo(&target, to).await.map_err(MigratorError::from)?;
        }
        let run = StoredRun {
            id: Uuid::now_v7(),
            idempotency_key: key,
            message: format!("waiting for the migration lock on database {}", run_request.database),
            request: run_request,
            phase: Phase::Pending,
            version_before: None,
            version_after: None,
            changes: Vec::new(),
            warnings: Vec::new(),
            in_progress: None,
            interrupted: false,
            started_at: store::now(),
            finished_at: None,
            version: 0,
        };
        let (stored, created) = self.store.insert(&run).await?;
        if !created && stored.request != run.request {
            return Err(MigratorError::invalid(
                "idempotency_key",
                format!("{:?} was used to start run {} with a different request", req.idempotency_key, stored.id),
            )
            .into());
        }
        if created {
            self.engine.spawn(stored.id);
        }
        Ok(Response::new(pb::StartMigrationResponse { run: Some(convert::run(&stored)) }))
    }

    async fn get_migration_run(
        &self,
        request: Request<pb::GetMigrationRunRequest>,
    ) -> Result<Response<pb::GetMigrationRunResponse>, Status> {
        let id = run_id(&request.into_inner().id)?;
        let run = self.store.get(id).await?;
        Ok(Response::new(pb::GetMigrationRunResponse { run: Some(convert::run(&run)) }))
    }

    type WatchMigrationRunStream = WatchStream;

    async fn watch_migration_run(
        &self,
        request: Request<pb::WatchMigrationRunRequest>,
    ) -> Result<Response<Self::WatchMigrationRunStream>, Status> {
        let id = run_id(&request.into_inner().id)?;
        let watcher = self.engine.watch(id);
        let first = self.store.get(id).await?;
        let (versions, loads) = (self.store.clone(), self.store.clone());
        let stream = follow(
            first,
            watcher.notice.clone(),
            WATCH_POLL,
            |r| r.version,
            |r| r.finished_at.is_some(),
            move || {
                let store = versions.clone();
                async move { store.version(id).await.map_err(Status::from) }
            },
            move || {
                let store = loads.clone();
                async move { store.get(id).await.map_err(Status::from) }
            },
        )
        // The watcher lives as long as the stream.
        .map(move |r| {
            let _ = &watcher;
            r.map(|run| pb::WatchMigrationRunResponse { run: Some(convert::run(&run)) })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_migration_runs(
        &self,
        request: Request<pb::ListMigrationRunsRequest>,
    ) -> Result<Response<pb::ListMigrationRunsResponse>, Status> {
        let req = request.into_inner();
        let size = if req.page_size == 0 { 50 } else { req.page_size.min(MAX_PAGE) };
        let after = parse_page_token(&req.page_token).map_err(|e| MigratorError::invalid("page_token", e))?;
        let database = (!req.database.is_empty()).then_some(req.database.as_str());
        let mut runs = self.store.list(database, size as i64 + 1, after).await?;
        let next_page_token = if runs.len() > size as usize {
            runs.truncate(size as usize);
            runs.last().map(|r| page_token(r.started_at, r.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListMigrationRunsResponse {
            runs: runs.iter().map(convert::run).collect(),
            next_page_token,
        }))
    }
}
