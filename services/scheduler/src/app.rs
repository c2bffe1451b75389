//! The scheduler's use cases behind the gRPC edge: apply the delivery config, create releases
//! (validating against the config, superseding, assigning revisions), user actions, undo and
//! whole-environment rollback. Each is one transaction: state, events and audit rows together.

use std::time::Duration;

use hopngo_kit::authz::{Permission, Scope};
use sqlx::PgConnection;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    creation::{self, NewReleaseIn, problem_to_error},
    domain::{
        config::{DeliveryConfig, Problem},
        freeze::{self, OpenWindow},
        machine::{self, Decider, Transition},
        plan::{self, PlanMode},
        release::{Phase, Release},
        train::{self, MemberRequest},
    },
    error::SchedulerError,
    signals::Signals,
    store::{
        AuditEntry, AuditFilter, AuditedRequest, ConfigVersion, Cursor, FreezeRow, GroupRow, ReleaseFilter,
        ServiceEnvironment, Store,
    },
};

/// Who is calling, as authenticated, and what the access policy lets them do.
#[derive(Clone)]
pub struct Caller {
    /// User.
    pub user: String,
    /// Who vouched for the user.
    pub issuer: String,
    /// The issuer's id of the user.
    pub subject: String,
    /// The groups the credential listed.
    pub groups: Vec<String>,
    /// The RPC called (empty for the control plane itself).
    pub rpc: String,
    /// The authenticated caller; `None` for the control plane itself.
    access: Option<hopngo_kit::Caller>,
}

impl Caller {
    /// The control plane itself (configs applied at start): no policy applies.
    pub fn system(name: &str) -> Caller {
        Caller {
            user: name.into(),
            issuer: "hopngo".into(),
            subject: name.into(),
            groups: Vec::new(),
            rpc: String::new(),
            access: None,
        }
    }

    /// A caller the authentication layer proved.
    pub fn authenticated(caller: hopngo_kit::Caller) -> Caller {
        let principal = &caller.principal;
        Caller {
            user: principal.user.clone(),
            issuer: principal.issuer.clone(),
            subject: principal.subject.clone(),
            groups: principal.groups.clone(),
            rpc: caller.rpc.clone(),
            access: Some(caller),
        }
    }

    /// Refuses unless the caller holds `permission` for `scope`.
    pub fn may(&self, permission: Permission, scope: Scope<'_>) -> Result<(), SchedulerError> {
        match &self.access {
            None => Ok(()),
            Some(caller) => caller.check(permission, scope).map_err(SchedulerError::PermissionDenied),
        }
    }

    /// The roles held for one service in one environment (approval steps name them).
    fn roles(&self, service: &str, environment: &str) -> Vec<String> {
        match &self.access {
            None => Vec::new(),
            Some(caller) => caller.authorizer.roles(&caller.principal, Scope::of(service, environment)),
        }
    }

    fn decider<'a>(&'a self, roles: &'a [String]) -> Decider<'a> {
        Decider { user: &self.user, roles, issuer: &self.issuer, subject: &self.subject }
    }
}

/// How far ahead a freeze may end.
const MAX_FREEZE_DAYS: i64 = 90;

/// The scope of changes to everything (the delivery config).
const EVERYWHERE: Scope<'static> = Scope { environment: Some("*"), service: Some("*") };

/// The use cases.
#[derive(Clone)]
pub struct App {
    store: Store,
    signals: Signals,
    /// The deployer, for previews (`RenderRelease`); the engine has its own clients.
    deployer: Option<std::sync::Arc<crate::deps::GrpcEffects>>,
}

/// What a new release is for.
struct Intent<'a> {
    service: &'a str,
    environment: &'a str,
    artifact: &'a str,
    reason: &'a str,
    request_id: Option<&'a str>,
    undo_of_revision: Option<u64>,
    group: Option<(Uuid, i32)>,
    emergency: bool,
    /// An admin releases through a freeze (with a reason; audited).
    override_freeze: bool,
}

/// A page of releases.
pub struct Page {
    /// Releases.
    pub releases: Vec<Release>,
    /// Token of the next page.
    pub next_page_token: Option<String>,
}

/// A release group with members.
pub struct Group {
    /// Group row.
    pub row: GroupRow,
    /// Members in order.
    pub members: Vec<Release>,
}

impl Group {
    /// What the group is doing, as a whole.
    pub fn status(&self) -> train::GroupStatus {
        train::status(&self.row.kind, &self.members)
    }
}

/// An error about a train's member as the caller sees it: a field of the member at `index` in
/// the request, or a sentence naming it.
fn member_error(e: SchedulerError, index: usize, service: &str) -> SchedulerError {
    match e {
        SchedulerError::Invalid { field, reason } if matches!(field.as_str(), "service" | "artifact") => {
            SchedulerError::Invalid { field: format!("members[{index}].{field}"), reason }
        }
        SchedulerError::FailedPrecondition(m) => {
            SchedulerError::FailedPrecondition(format!("members[{index}] ({service}): {m}"))
        }
        SchedulerError::PermissionDenied(m) => {
            SchedulerError::PermissionDenied(format!("members[{index}] ({service}): {m}"))
        }
        other => other,
    }
}

fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

/// A page size as asked (0: the default of 50), at most 500.
fn page_size(asked: u32) -> Result<u32, SchedulerError> {
    match asked {
        0 => Ok(50),
        n if n <= 500 => Ok(n),
        n => Err(SchedulerError::invalid("page_size", format!("{n} is not in 1..=500"))),
    }
}

fn group_not_found(id: &str) -> SchedulerError {
    SchedulerError::NotFound(format!("release group {} does not exist", hopngo_proto::check::shown(id)))
}

/// Refuses an environment the config does not have, naming the ones it has.
fn check_environment(config: &DeliveryConfig, environment: &str) -> Result<(), SchedulerError> {
    if config.environment(environment).is_none() {
        return Err(SchedulerError::invalid(
            "environment",
            format!(
                "unknown environment {} (known: {})",
                hopngo_proto::check::shown(environment),
                known(config.environments.iter().map(|e| e.name.as_str()))
            ),
        ));
    }
    Ok(())
}

impl App {
    /// Use cases over `store`, signalling through `signals`.
    pub fn new(store: Store, signals: Signals) -> App {
        App { store, signals, deployer: None }
    }

    /// The app with the deployer it previews releases with.
    pub fn with_deployer(self, deployer: std::sync::Arc<crate::deps::GrpcEffects>) -> App {
        App { deployer: Some(deployer), ..self }
    }

    /// `RenderRelease`: what the deployer would write for a release of `artifact` at `weight`
    /// beside the stable artifact, without writing.
    pub async fn render_release(
        &self,
        service: &str,
        environment: &str,
        artifact: &str,
        weight: u32,
    ) -> Result<String, SchedulerError> {
        if weight > 100 {
            return Err(SchedulerError::invalid("weight", format!("{weight} is not in 0..=100")));
        }
        if let Some(reason) = hopngo_delivery::artifact_problem(artifact) {
            return Err(SchedulerError::invalid("artifact", reason));
        }
        let current = self.config(None).await?;
        self.check_target(&current.config, service, environment)?;
        let plan = plan::compile(&current.config, service, environment, PlanMode::Normal).map_err(problem_to_error)?;
        let se = self.store.service_environment(service, environment).await?;
        let state = crate::domain::steps::preview_state(
            &plan,
            service,
            environment,
            se.stable_artifact.as_deref(),
            artifact,
            weight,
        );
        let deployer = self
            .deployer
            .as_ref()
            .ok_or_else(|| SchedulerError::FailedPrecondition("no deployer to render with".into()))?;
        deployer.render_target(&state).await.map_err(|e| {
            if e.retryable {
                SchedulerError::Unavailable(e.to_string())
            } else {
                SchedulerError::FailedPrecondition(e.to_string())
            }
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The signals.
    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    // === config ===

    /// Validates a document without storing it.
    pub fn validate_config(&self, yaml: &str) -> Result<DeliveryConfig, Vec<Problem>> {
        DeliveryConfig::load(yaml)
    }

    /// Validates and stores a document.
    pub async fn apply_config(
        &self,
        yaml: &str,
        caller: &Caller,
    ) -> Result<(u64, bool, DeliveryConfig), SchedulerError> {
        let config = DeliveryConfig::load(yaml).map_err(|mut problems| {
            let first = problems.remove(0);
            let more =
                if problems.is_empty() { String::new() } else { format!(" (and {} more problems)", problems.len()) };
            SchedulerError::invalid(
                if first.path.is_empty() { "yaml".into() } else { first.path },
                format!("{}{more}", first.message),
            )
        })?;
        caller.may(Permission::Admin, EVERYWHERE)?;
        let (version, changed) = self.store.apply_config(yaml, &config, &caller.user).await?;
        Ok((version, changed, config))
    }

    /// A stored version (current when `None`).
    pub async fn config(&self, version: Option<u64>) -> Result<ConfigVersion, SchedulerError> {
        self.store.config(version).await?.ok_or_else(|| match version {
            Some(v) => SchedulerError::NotFound(format!("config version {v} does not exist")),
            None => SchedulerError::FailedPrecondition(
                "no delivery config has been applied yet (hopctl config apply -f FILE)".into(),
            ),
        })
    }

    // === freezes ===

    /// Why `environment` is frozen now, if it is: an ad-hoc freeze, or a freeze window of the
    /// config (inside the caller's transaction, on the database's clock).
    async fn frozen(
        &self,
        conn: &mut PgConnection,
        config: &DeliveryConfig,
        environment: &str,
    ) -> Result<Option<String>, SchedulerError> {
        if let Some(f) = Store::freezes_in_force(conn, environment).await?.first() {
            return Ok(Some(format!(
                "{environment} is frozen until {} by {}: {}",
                freeze::rfc3339(f.ends_at),
                f.created_by,
                f.reason
            )));
        }
        // The clock is read only for an environment that has freeze windows.
        if config.environment(environment).is_none_or(|e| e.freeze_windows.is_empty()) {
            return Ok(None);
        }
        let now = Store::now(conn).await?;
        Ok(freeze::open_windows(config, Some(environment), now).first().map(OpenWindow::refusal))
    }

    /// `CreateFreeze`.
    pub async fn create_freeze(
        &self,
        environment: &str,
        (starts_at, ends_at): (Option<OffsetDateTime>, Option<OffsetDateTime>),
        reason: &str,
        caller: &Caller,
    ) -> Result<FreezeRow, SchedulerError> {
        let current = self.config(None).await?;
        if environment.is_empty() {
            return Err(SchedulerError::invalid("environment", "must not be empty"));
        }
        check_environment(&current.config, environment)?;
        caller.may(Permission::Admin, Scope { environment: Some(environment), service: Some("*") })?;
        if reason.trim().is_empty() {
            return Err(SchedulerError::invalid("reason", "a freeze needs a reason (refused releases are told it)"));
        }
        let now = OffsetDateTime::now_utc();
        let starts_at = starts_at.unwrap_or(now);
        let ends_at = ends_at.ok_or_else(|| SchedulerError::invalid("end_time", "must be set"))?;
        if ends_at <= starts_at {
            return Err(SchedulerError::invalid(
                "end_time",
                format!("{} is not after start_time {}", freeze::rfc3339(ends_at), freeze::rfc3339(starts_at)),
            ));
        }
        if ends_at <= now {
            return Err(SchedulerError::invalid("end_time", format!("{} is in the past", freeze::rfc3339(ends_at))));
        }
        if ends_at - now > time::Duration::days(MAX_FREEZE_DAYS) {
            return Err(SchedulerError::invalid("end_time", format!("at most {MAX_FREEZE_DAYS} days ahead")));
        }
        let row = FreezeRow {
            id: Uuid::now_v7(),
            environment: environment.to_string(),
            starts_at,
            ends_at,
            reason: reason.trim().to_string(),
            created_by: caller.user.clone(),
            created_at: now,
            ended_at: None,
            ended_by: String::new(),
            end_reason: String::new(),
        };
        self.store.insert_freeze(&row).await?;
        Ok(row)
    }

    /// `ListFreezes`: stored freezes and the config's freeze windows open now.
    pub async fn freezes(
        &self,
        environment: Option<&str>,
        include_ended: bool,
    ) -> Result<(Vec<FreezeRow>, Vec<OpenWindow>), SchedulerError> {
        let current = self.config(None).await?;
        if let Some(environment) = environment {
            check_environment(&current.config, environment)?;
        }
        let rows = self.store.freezes(environment, include_ended).await?;
        Ok((rows, freeze::open_windows(&current.config, environment, OffsetDateTime::now_utc())))
    }

    /// `EndFreeze`.
    pub async fn end_freeze(&self, id: &str, reason: &str, caller: &Caller) -> Result<FreezeRow, SchedulerError> {
        let uuid = Uuid::parse_str(id).map_err(|_| {
            SchedulerError::invalid("id", format!("{} is not a freeze id (UUID)", hopngo_proto::check::shown(id)))
        })?;
        let found = self.store.freeze(uuid).await?;
        let Some(found) = found else {
            return Err(SchedulerError::NotFound(format!("freeze {id} does not exist")));
        };
        caller.may(Permission::Admin, Scope { environment: Some(&found.environment), service: Some("*") })?;
        let already = |f: &FreezeRow| {
            SchedulerError::FailedPrecondition(format!(
                "freeze {id} was already ended at {} by {}",
                f.ended_at.map(freeze::rfc3339).unwrap_or_default(),
                f.ended_by
            ))
        };
        if found.ended_at.is_some() {
            return Err(already(&found));
        }
        match self.store.end_freeze(uuid, &caller.user, reason.trim()).await? {
            Some(ended) => Ok(ended),
            // Someone else ended it in the meantime.
            None => Err(already(&self.store.freeze(uuid).await?.unwrap_or(found))),
        }
    }

    // === releases ===

    /// `CreateRelease`; with `override_freeze`, an admin releases through a freeze (audited).
    pub async fn create_release(
        &self,
        service: &str,
        environment: &str,
        artifact: &str,
        request_id: &str,
        (reason, override_freeze): (&str, bool),
        caller: &Caller,
    ) -> Result<Release, SchedulerError> {
        let current = self.config(None).await?;
        let why = (reason, override_freeze);
        Ok(self.create_promoted(&current, service, environment, artifact, request_id, why, caller).await?.0)
    }

    /// `PromoteEnvironment`: a release in `to` of what is stable (or `artifact`) in `from`.
    #[allow(clippy::too_many_arguments)]
    pub async fn promote_environment(
        &self,
        service: &str,
        from: &str,
        to: &str,
        artifact: &str,
        request_id: &str,
        (reason, override_freeze): (&str, bool),
        caller: &Caller,
    ) -> Result<(Release, Release), SchedulerError> {
        let current = self.config(None).await?;
        let config = &current.config;
        self.check_target(config, service, to)?;
        let upstream = config.environment(to).and_then(|e| e.from.clone()).ok_or_else(|| {
            SchedulerError::invalid("to_environment", format!("{to} is not promoted from another environment"))
        })?;
        if !from.is_empty() && from != upstream {
            return Err(SchedulerError::invalid(
                "from_environment",
                format!("{to} is promoted from {upstream}, not from {from}"),
            ));
        }
        let artifact = if artifact.is_empty() {
            self.store.service_environment(service, &upstream).await?.stable_artifact.ok_or_else(|| {
                SchedulerError::FailedPrecondition(format!("{service} has no stable version in {upstream} to promote"))
            })?
        } else {
            artifact.to_string()
        };
        let (release, source) = self
            .create_promoted(&current, service, to, &artifact, request_id, (reason, override_freeze), caller)
            .await?;
        let source = source.expect("an environment with `from` always has a promotion source");
        Ok((release, source))
    }

    /// The upstream release that lets `artifact` into `environment` under its promotion policy:
    /// succeeded there, verified (unless the policy says otherwise), soaked. `None` when the
    /// environment is not promoted from another.
    async fn promotion_source(
        &self,
        config: &DeliveryConfig,
        service: &str,
        environment: &str,
        artifact: &str,
    ) -> Result<Option<Release>, SchedulerError> {
        let env = config.environment(environment).expect("checked");
        let Some(from) = &env.from else { return Ok(None) };
        let policy = env.promotion.clone().unwrap_or_default();
        let candidates = self.store.succeeded_with(service, from, artifact).await?;
        let Some(newest) = candidates.first() else {
            return Err(SchedulerError::FailedPrecondition(format!(
                "{artifact} has not succeeded for {service} in {from}; {environment} is promoted from {from}"
            )));
        };
        let source = if policy.require_verification {
            match candidates.iter().find(|r| r.verification().is_ok()) {
                Some(verified) => verified,
                None => {
                    let why = newest.verification().err().unwrap_or_default();
                    return Err(SchedulerError::FailedPrecondition(format!(
                        "{artifact} succeeded for {service} in {from} (revision {}) but is not verified: {why}",
                        newest.revision
                    )));
                }
            }
        } else {
            newest
        };
        if let Some(soak) = policy.soak {
            let since = source.finished_at.unwrap_or(source.updated_at);
            let ready = since + time::Duration::try_from(soak.0).unwrap_or(time::Duration::MAX);
            let now = OffsetDateTime::now_utc();
            if now < ready {
                let stable_for = Duration::try_from(now - since).unwrap_or_default();
                return Err(SchedulerError::FailedPrecondition(format!(
                    "{artifact} has been stable for {service} in {from} for {}; {environment} needs a soak of {} \
                     (promotable from {})",
                    hopngo_kit::args::format_duration(Duration::from_secs(stable_for.as_secs())),
                    hopngo_kit::args::format_duration(soak.0),
                    ready.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
                )));
            }
        }
        Ok(Some(source.clone()))
    }

    /// Creates a release after the promotion checks; returns it with its promotion source.
    #[allow(clippy::too_many_arguments)]
    async fn create_promoted(
        &self,
        current: &ConfigVersion,
        service: &str,
        environment: &str,
        artifact: &str,
        request_id: &str,
        (reason, override_freeze): (&str, bool),
        caller: &Caller,
    ) -> Result<(Release, Option<Release>), SchedulerError> {
        if let Some(reason) = hopngo_delivery::artifact_problem(artifact) {
            return Err(SchedulerError::invalid("artifact", reason));
        }
        self.check_target(&current.config, service, environment)?;
        let source = self.promotion_source(&current.config, service, environment, artifact).await?;
        let intent = Intent {
            service,
            environment,
            artifact,
            reason,
            request_id: (!request_id.is_empty()).then_some(request_id),
            undo_of_revision: None,
            group: None,
            emergency: false,
            override_freeze,
        };
        let mut tx = self.store.begin().await?;
        let mut changed = Vec::new();
        let release = self.create_in(&mut tx, current, intent, caller, true, &mut changed).await?;
        tx.commit().await?;
        self.after_commit(&changed, true);
        Ok((release, source))
    }

    fn check_target(&self, config: &DeliveryConfig, service: &str, environment: &str) -> Result<(), SchedulerError> {
        if service.is_empty() {
            return Err(SchedulerError::invalid("service", "must not be empty"));
        }
        if config.service(service).is_none() {
            return Err(SchedulerError::invalid(
                "service",
                format!(
                    "unknown service {} (known: {})",
                    hopngo_proto::check::shown(service),
                    known(config.services.iter().map(|s| s.name.as_str()))
                ),
            ));
        }
        if environment.is_empty() {
            return Err(SchedulerError::invalid("environment", "must not be empty"));
        }
        check_environment(config, environment)?;
        Ok(())
    }

    /// Creates a release inside `tx`: revision, plan, supersession of unsettled releases.
    async fn create_in(
        &self,
        conn: &mut PgConnection,
        current: &ConfigVersion,
        intent: Intent<'_>,
        caller: &Caller,
        start_now: bool,
        changed: &mut Vec<Uuid>,
    ) -> Result<Release, SchedulerError> {
        caller.may(Permission::Deploy, Scope::of(intent.service, intent.environment))?;
        let se = Store::lock_service_environment(conn, intent.service, intent.environment).await?;
        // An emergency rollback passes a freeze; anything else needs an admin's override.
        if !intent.emergency
            && let Some(frozen) = self.frozen(conn, &current.config, intent.environment).await?
        {
            if !intent.override_freeze {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "{frozen}; an admin may release through it with a reason (override_freeze)"
                )));
            }
            caller.may(Permission::Admin, Scope::of(intent.service, intent.environment))?;
            if intent.reason.trim().is_empty() {
                return Err(SchedulerError::invalid("reason", "overriding a freeze needs a reason"));
            }
            Store::audit_request_in(
                conn,
                &AuditedRequest {
                    actor: caller.user.clone(),
                    action: "freeze-overridden".into(),
                    outcome: "allowed",
                    service: intent.service.to_string(),
                    environment: intent.environment.to_string(),
                    reason: intent.reason.to_string(),
                    message: format!("released {} through: {frozen}", intent.artifact),
                    issuer: caller.issuer.clone(),
                    subject: caller.subject.clone(),
                    groups: caller.groups.clone(),
                    rpc: caller.rpc.clone(),
                    ..AuditedRequest::default()
                },
            )
            .await?;
        }
        // Under the service environment's lock, so two requests with one id cannot both create.
        if let Some(request_id) = intent.request_id
            && let Some(existing) = Store::release_by_request(conn, request_id).await?
        {
            let same = existing.service == intent.service
                && existing.environment == intent.environment
                && existing.artifact == intent.artifact;
            return if same {
                Ok(existing)
            } else {
                Err(SchedulerError::invalid("request_id", "already used for a different release"))
            };
        }
        if se.stable_artifact.as_deref() == Some(intent.artifact) {
            return Err(SchedulerError::FailedPrecondition(format!(
                "{} is already stable for {} in {}",
                intent.artifact, intent.service, intent.environment
            )));
        }
        let mode = if intent.emergency {
            PlanMode::Emergency
        } else if se.stable_artifact.is_none() {
            PlanMode::Initial
        } else {
            PlanMode::Normal
        };
        let new = NewReleaseIn {
            service: intent.service,
            environment: intent.environment,
            artifact: intent.artifact,
            reason: intent.reason,
            request_id: intent.request_id,
            undo_of_revision: intent.undo_of_revision,
            group: intent.group,
            returns_release: None,
            mode,
            actor: &caller.user,
            start_now,
        };
        creation::insert(conn, current, &se, new, changed).await
    }

    fn after_commit(&self, changed: &[Uuid], wake: bool) {
        for id in changed {
            self.signals.changed(*id);
        }
        if wake {
            self.signals.wake();
        }
    }

    /// `GetRelease`.
    pub async fn release(&self, id: &str) -> Result<Release, SchedulerError> {
        let uuid = parse_id(id)?;
        self.store.release(uuid).await?.ok_or_else(|| SchedulerError::NotFound(format!("release {id} does not exist")))
    }

    /// `ListReleases`.
    pub async fn list(&self, filter: ReleaseFilter, page_size: u32, page_token: &str) -> Result<Page, SchedulerError> {
        let size = self::page_size(page_size)?;
        let cursor = if page_token.is_empty() { None } else { Some(decode_token(page_token)?) };
        let mut releases = self.store.list(&filter, cursor, size + 1).await?;
        let next_page_token = if releases.len() > size as usize {
            releases.truncate(size as usize);
            releases.last().map(encode_token)
        } else {
            None
        };
        Ok(Page { releases, next_page_token })
    }

    /// One page of the audit log, newest first.
    pub async fn audit(
        &self,
        filter: AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<AuditEntry>, Option<String>), SchedulerError> {
        let size = self::page_size(page_size)?;
        let before = match page_token {
            "" => None,
            t => Some(
                t.parse::<i64>()
                    .ok()
                    .filter(|id| *id > 0)
                    .ok_or_else(|| SchedulerError::invalid("page_token", "not a token from a previous page"))?,
            ),
        };
        let mut entries = self.store.audit(&filter, before, size + 1).await?;
        let next = if entries.len() > size as usize {
            entries.truncate(size as usize);
            entries.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok((entries, next))
    }

    /// Records a request that is not a release's transition (a refusal, a config applied). A
    /// failure to record it is logged: the caller gets its answer either way.
    pub async fn audit_request(&self, request: AuditedRequest) {
        if let Err(e) = self.store.audit_request(&request).await {
            tracing::warn!(error = %e, action = %request.action, actor = %request.actor, "recording a request in the audit log");
        }
    }

    /// Applies a user action to a locked release; commits state, events and audit together.
    /// Locks the service environment first (the order release creation uses too), so `check` can
    /// look at the revision counter without a race.
    async fn act(
        &self,
        id: &str,
        (caller, permission): (&Caller, Permission),
        check: impl FnOnce(&Release, &ServiceEnvironment) -> Result<(), SchedulerError>,
        action: impl FnOnce(&mut Release, OffsetDateTime) -> Result<Vec<Transition>, SchedulerError>,
    ) -> Result<Release, SchedulerError> {
        let current = self.release(id).await?;
        let mut tx = self.store.begin().await?;
        let se = Store::lock_service_environment(&mut tx, &current.service, &current.environment).await?;
        let mut release = Store::lock_release(&mut tx, current.id)
            .await?
            .ok_or_else(|| SchedulerError::NotFound(format!("release {id} does not exist")))?;
        caller.may(permission, Scope::of(&release.service, &release.environment))?;
        check(&release, &se)?;
        let now = Store::now(&mut tx).await?;
        let transitions = action(&mut release, now)?;
        release.updated_at = now;
        let wake = (!release.settled).then_some(now);
        Store::save(&mut tx, &mut release, &transitions, wake).await?;
        tx.commit().await?;
        self.after_commit(&[release.id], true);
        Ok(release)
    }

    /// `PromoteRelease`.
    pub async fn promote(
        &self,
        id: &str,
        full: bool,
        reason: &str,
        caller: &Caller,
    ) -> Result<Release, SchedulerError> {
        self.act(id, (caller, Permission::Deploy), no_check, |r, now| {
            Ok(machine::promote(r, full, &caller.user, reason, now)?)
        })
        .await
    }

    /// `AbortRelease`.
    pub async fn abort(&self, id: &str, reason: &str, caller: &Caller) -> Result<Release, SchedulerError> {
        self.act(id, (caller, Permission::Deploy), no_check, |r, now| Ok(machine::abort(r, &caller.user, reason, now)?))
            .await
    }

    /// `RetryRelease`: only the newest release of its service and environment can be retried.
    pub async fn retry(&self, id: &str, reason: &str, caller: &Caller) -> Result<Release, SchedulerError> {
        let newest = |r: &Release, se: &ServiceEnvironment| {
            if let Some(group) = r.group_id {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "release {} ran in group {group}, which has ended with it; create a new release (or train) instead",
                    r.id
                )));
            }
            if se.last_revision == r.revision {
                return Ok(());
            }
            Err(SchedulerError::FailedPrecondition(format!(
                "revision {} is newer than this release (revision {}); create a new release instead",
                se.last_revision, r.revision
            )))
        };
        self.act(id, (caller, Permission::Deploy), newest, |r, now| Ok(machine::retry(r, &caller.user, reason, now)?))
            .await
    }

    /// `ApproveRelease`.
    pub async fn approve(&self, id: &str, reason: &str, caller: &Caller) -> Result<Release, SchedulerError> {
        self.act(id, (caller, Permission::Approve), no_check, |r, now| {
            let roles = caller.roles(&r.service, &r.environment);
            Ok(machine::approve(r, &caller.decider(&roles), reason, now)?)
        })
        .await
    }

    /// `RejectRelease`.
    pub async fn reject(&self, id: &str, reason: &str, caller: &Caller) -> Result<Release, SchedulerError> {
        self.act(id, (caller, Permission::Approve), no_check, |r, now| {
            let roles = caller.roles(&r.service, &r.environment);
            Ok(machine::reject(r, &caller.decider(&roles), reason, now)?)
        })
        .await
    }

    /// The revision an undo returns to: `to_revision`, or the newest succeeded revision before the
    /// stable one.
    async fn undo_target(
        &self,
        service: &str,
        environment: &str,
        to_revision: u64,
    ) -> Result<(u64, String), SchedulerError> {
        let se = self.store.service_environment(service, environment).await?;
        let stable = se.stable_artifact.clone().ok_or_else(|| {
            SchedulerError::FailedPrecondition(format!(
                "{service} has no stable revision in {environment}; nothing to undo"
            ))
        })?;
        let revisions = self.store.revisions(service, environment).await?;
        if to_revision > 0 {
            let row = revisions.iter().find(|r| r.revision == to_revision).ok_or_else(|| {
                SchedulerError::NotFound(format!("revision {to_revision} of {service} in {environment} does not exist"))
            })?;
            if row.release.artifact == stable {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "revision {to_revision} ({stable}) is what runs now; nothing to undo"
                )));
            }
            return Ok((to_revision, row.release.artifact.clone()));
        }
        let current = se.stable_revision.unwrap_or(u64::MAX);
        revisions
            .iter()
            .find(|r| r.revision < current && r.release.phase == Phase::Succeeded && r.release.artifact != stable)
            .map(|r| (r.revision, r.release.artifact.clone()))
            .ok_or_else(|| {
                SchedulerError::FailedPrecondition(format!(
                    "{service} has no earlier succeeded revision in {environment} to return to"
                ))
            })
    }

    /// `UndoRelease`: a new release of an earlier revision's artifact.
    pub async fn undo(
        &self,
        service: &str,
        environment: &str,
        to_revision: u64,
        reason: &str,
        caller: &Caller,
    ) -> Result<Release, SchedulerError> {
        let current = self.config(None).await?;
        self.check_target(&current.config, service, environment)?;
        let (revision, artifact) = self.undo_target(service, environment, to_revision).await?;
        let intent = Intent {
            service,
            environment,
            artifact: &artifact,
            reason,
            request_id: None,
            undo_of_revision: Some(revision),
            group: None,
            emergency: false,
            override_freeze: false,
        };
        let mut tx = self.store.begin().await?;
        let mut changed = Vec::new();
        let release = self.create_in(&mut tx, &current, intent, caller, true, &mut changed).await?;
        tx.commit().await?;
        self.after_commit(&changed, true);
        Ok(release)
    }

    /// `ListRevisions`.
    pub async fn revisions(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<(Vec<Release>, Option<u64>), SchedulerError> {
        if service.is_empty() {
            return Err(SchedulerError::invalid("service", "must not be empty"));
        }
        if environment.is_empty() {
            return Err(SchedulerError::invalid("environment", "must not be empty"));
        }
        let se = self.store.service_environment(service, environment).await?;
        let rows = self.store.revisions(service, environment).await?;
        if rows.is_empty() {
            // A service taken out of the config keeps its history; a name nobody ever released
            // and the config does not know is a mistake, not an empty history.
            let current = self.config(None).await?;
            self.check_target(&current.config, service, environment)?;
        }
        Ok((rows.into_iter().map(|r| r.release).collect(), se.stable_revision))
    }

    /// `RollbackEnvironment`: one undo release per service, run one after another.
    pub async fn rollback_environment(
        &self,
        environment: &str,
        services: &[String],
        reason: &str,
        emergency: bool,
        caller: &Caller,
    ) -> Result<Group, SchedulerError> {
        let current = self.config(None).await?;
        let config = &current.config;
        check_environment(config, environment)?;
        // The emergency form skips the environment's gates: an admin's call. Either form releases
        // each service, which needs the deploy permission for it (checked as each is created).
        if emergency {
            caller.may(Permission::Admin, Scope { environment: Some(environment), service: Some("*") })?;
        }
        let mut targets = Vec::new();
        if services.is_empty() {
            for s in &config.services {
                if let Ok((rev, artifact)) = self.undo_target(&s.name, environment, 0).await {
                    targets.push((s.name.clone(), rev, artifact));
                }
            }
            if targets.is_empty() {
                return Err(SchedulerError::FailedPrecondition(format!(
                    "no service in {environment} has an earlier revision to return to"
                )));
            }
        } else {
            // Every name is checked before any is looked up, so a mistake is named as such.
            for (i, name) in services.iter().enumerate() {
                if config.service(name).is_none() {
                    return Err(SchedulerError::invalid(
                        format!("services[{i}]"),
                        format!("unknown service {}", hopngo_proto::check::shown(name)),
                    ));
                }
                if services[..i].contains(name) {
                    return Err(SchedulerError::invalid(
                        format!("services[{i}]"),
                        format!("{} is listed twice", hopngo_proto::check::shown(name)),
                    ));
                }
            }
            for name in services {
                let (rev, artifact) = self.undo_target(name, environment, 0).await?;
                targets.push((name.clone(), rev, artifact));
            }
        }
        let mut tx = self.store.begin().await?;
        let now = Store::now(&mut tx).await?;
        let row = GroupRow {
            id: Uuid::now_v7(),
            environment: environment.to_string(),
            kind: if emergency { "emergency-rollback".into() } else { "rollback-environment".into() },
            created_by: caller.user.clone(),
            reason: reason.to_string(),
            created_at: now,
            dependencies: Vec::new(),
            request_id: None,
        };
        Store::insert_group(&mut tx, &row).await?;
        let mut changed = Vec::new();
        let mut members = Vec::new();
        for (position, (service, revision, artifact)) in targets.iter().enumerate() {
            let intent = Intent {
                service,
                environment,
                artifact,
                reason,
                request_id: None,
                undo_of_revision: Some(*revision),
                group: Some((row.id, position as i32)),
                emergency,
                override_freeze: false,
            };
            members.push(self.create_in(&mut tx, &current, intent, caller, position == 0, &mut changed).await?);
        }
        tx.commit().await?;
        self.after_commit(&changed, true);
        Ok(Group { row, members })
    }

    /// `CreateTrain`: the members in dependency order, each created as a release of the group
    /// (the first due now, each next one when the one before succeeds). All or nothing: a member
    /// refused refuses the train.
    pub async fn create_train(
        &self,
        environment: &str,
        members: &[MemberRequest<'_>],
        request_id: &str,
        (reason, override_freeze): (&str, bool),
        caller: &Caller,
    ) -> Result<Group, SchedulerError> {
        let current = self.config(None).await?;
        if environment.is_empty() {
            return Err(SchedulerError::invalid("environment", "must not be empty"));
        }
        check_environment(&current.config, environment)?;
        let order = train::order(&current.config, members).map_err(problem_to_error)?;
        let request_id = (!request_id.is_empty()).then_some(request_id);
        let same_train = |group: &Group| {
            group.row.environment == environment
                && group.members.iter().filter(|m| m.returns_release.is_none()).count() == members.len()
                && members.iter().all(|asked| {
                    group.members.iter().any(|m| m.service == asked.service && m.artifact == asked.artifact)
                })
        };
        let earlier = |group: Group| {
            if same_train(&group) {
                Ok(group)
            } else {
                Err(SchedulerError::invalid("request_id", "already used for a different train"))
            }
        };
        if let Some(id) = request_id {
            let mut conn = self.store.pool().acquire().await?;
            if let Some(group) = Store::group_by_request(&mut conn, id).await? {
                return earlier(self.group(&group.to_string(), caller).await?);
            }
        }
        // Each member passes the promotion policy of its environment, as a release of it would.
        for &index in &order.order {
            let m = &members[index];
            self.promotion_source(&current.config, m.service, environment, m.artifact)
                .await
                .map_err(|e| member_error(e, index, m.service))?;
        }
        let mut tx = self.store.begin().await?;
        let now = Store::now(&mut tx).await?;
        let row = GroupRow {
            id: Uuid::now_v7(),
            environment: environment.to_string(),
            kind: train::TRAIN.into(),
            created_by: caller.user.clone(),
            reason: reason.to_string(),
            created_at: now,
            dependencies: order.dependencies,
            request_id: request_id.map(str::to_string),
        };
        Store::insert_group(&mut tx, &row).await?;
        let mut changed = Vec::new();
        let mut created = Vec::new();
        for (position, &index) in order.order.iter().enumerate() {
            let m = &members[index];
            let intent = Intent {
                service: m.service,
                environment,
                artifact: m.artifact,
                reason,
                request_id: None,
                undo_of_revision: None,
                group: Some((row.id, position as i32)),
                emergency: false,
                override_freeze,
            };
            let release = self
                .create_in(&mut tx, &current, intent, caller, position == 0, &mut changed)
                .await
                .map_err(|e| member_error(e, index, m.service))?;
            created.push(release);
        }
        tx.commit().await?;
        self.after_commit(&changed, true);
        Ok(Group { row, members: created })
    }

    /// `ApproveReleaseGroup`: every approval still ahead in the group, decided at once by the
    /// caller (checked for every member before anything is recorded).
    pub async fn approve_group(&self, id: &str, reason: &str, caller: &Caller) -> Result<Group, SchedulerError> {
        let uuid = parse_group_id(id)?;
        let mut tx = self.store.begin().await?;
        let (_, members) = Store::group_in(&mut tx, uuid).await?.ok_or_else(|| group_not_found(id))?;
        let now = Store::now(&mut tx).await?;
        let mut decided = 0;
        let mut changed = Vec::new();
        // Members run one after another: the first that has not ended is the one running (or due);
        // the others wait for their turn and must not be woken.
        for (nth, member) in members.iter().filter(|m| !m.phase.is_terminal()).enumerate() {
            let mut r = Store::lock_release(&mut tx, member.id).await?.ok_or_else(|| group_not_found(id))?;
            caller.may(Permission::Approve, Scope::of(&r.service, &r.environment))?;
            let roles = caller.roles(&r.service, &r.environment);
            let service = r.service.clone();
            let named = |e: machine::ActionError| match SchedulerError::from(e) {
                SchedulerError::PermissionDenied(m) => SchedulerError::PermissionDenied(format!("{service}: {m}")),
                SchedulerError::FailedPrecondition(m) => SchedulerError::FailedPrecondition(format!("{service}: {m}")),
                other => other,
            };
            let (transitions, n) =
                machine::approve_ahead(&mut r, &caller.decider(&roles), reason, now).map_err(named)?;
            if n == 0 {
                continue;
            }
            decided += n;
            r.updated_at = now;
            Store::save(&mut tx, &mut r, &transitions, (nth == 0).then_some(now)).await?;
            changed.push(r.id);
        }
        if decided == 0 {
            return Err(SchedulerError::FailedPrecondition(format!(
                "no approval is ahead in group {id} that {} has not decided already",
                caller.user
            )));
        }
        tx.commit().await?;
        self.after_commit(&changed, true);
        self.group(id, caller).await
    }

    /// The member a group is running (or about to run); refused once the group has ended or is
    /// returning its members.
    async fn running_member(&self, id: &str, caller: &Caller) -> Result<Release, SchedulerError> {
        let group = self.group(id, caller).await?;
        let status = group.status();
        if status.phase.is_terminal() {
            return Err(SchedulerError::FailedPrecondition(format!(
                "group {id} has ended ({}): {}",
                status.phase.as_str(),
                status.message
            )));
        }
        group
            .members
            .into_iter()
            .find(|m| !m.phase.is_terminal())
            .ok_or_else(|| SchedulerError::FailedPrecondition(format!("group {id} has no member running")))
    }

    /// `RejectReleaseGroup`: rejects the approval the running member waits for.
    pub async fn reject_group(&self, id: &str, reason: &str, caller: &Caller) -> Result<Group, SchedulerError> {
        let member = self.running_member(id, caller).await?;
        if member.phase != Phase::AwaitingApproval {
            return Err(SchedulerError::FailedPrecondition(format!(
                "no member of group {id} waits for an approval ({} {} is {})",
                member.service,
                member.artifact,
                member.phase.as_str()
            )));
        }
        self.reject(&member.id.to_string(), reason, caller).await?;
        self.group(id, caller).await
    }

    /// `AbortReleaseGroup`: aborts the running member; the engine ends the group from there.
    pub async fn abort_group(&self, id: &str, reason: &str, caller: &Caller) -> Result<Group, SchedulerError> {
        let member = self.running_member(id, caller).await?;
        self.abort(&member.id.to_string(), reason, caller).await?;
        self.group(id, caller).await
    }

    /// `GetReleaseGroup`: only for who may view every release of it.
    pub async fn group(&self, id: &str, caller: &Caller) -> Result<Group, SchedulerError> {
        let uuid = parse_group_id(id)?;
        let (row, members) = self.store.group(uuid).await?.ok_or_else(|| group_not_found(id))?;
        for member in &members {
            caller.may(Permission::View, Scope::of(&member.service, &member.environment))?;
        }
        Ok(Group { row, members })
    }

    /// How long watchers wait between re-reads when no change notice arrives.
    pub const WATCH_POLL: Duration = Duration::from_secs(2);
}

fn no_check(_: &Release, _: &ServiceEnvironment) -> Result<(), SchedulerError> {
    Ok(())
}

fn parse_id(id: &str) -> Result<Uuid, SchedulerError> {
    parse_uuid(id, "release")
}

fn parse_group_id(id: &str) -> Result<Uuid, SchedulerError> {
    parse_uuid(id, "release group")
}

fn parse_uuid(id: &str, what: &str) -> Result<Uuid, SchedulerError> {
    if id.is_empty() {
        return Err(SchedulerError::invalid("id", "must not be empty"));
    }
    Uuid::parse_str(id).map_err(|_| SchedulerError::invalid("id", format!("{id:?} is not a {what} id (UUID)")))
}

fn encode_token(r: &Release) -> String {
    let micros = (r.created_at.unix_timestamp_nanos() / 1000) as i64;
    format!("{micros}.{}", r.id.simple())
}

fn decode_token(token: &str) -> Result<Cursor, SchedulerError> {
    let bad = || SchedulerError::invalid("page_token", "not a token from a previous response");
    let (micros, id) = token.split_once('.').ok_or_else(bad)?;
    Ok(Cursor { created_micros: micros.parse().map_err(|_| bad())?, id: Uuid::parse_str(id).map_err(|_| bad())? })
}

#[cfg(test)]
mod page_token_properties {
    use hopngo_testkit::hostile::{config, text};
    use proptest::prelude::*;

    use super::decode_token;

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_page_token_is_read_or_refused_as_the_page_token(token in text("0-9a-f.-")) {
            if let Err(e) = decode_token(&token) {
                prop_assert!(e.to_string().starts_with("page_token: "), "{}", e);
            }
        }

        #[test]
        fn a_token_reads_back_its_position(micros in any::<i64>(), id in any::<u128>()) {
            let id = uuid::Uuid::from_u128(id);
            let cursor = decode_token(&format!("{micros}.{}", id.simple())).unwrap();
            prop_assert_eq!((cursor.created_micros, cursor.id), (micros, id));
        }
    }
}
