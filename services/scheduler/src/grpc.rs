//! The gRPC edge: `hopngo.release.v1.ReleaseService` and `hopngo.config.v1.ConfigService`.
//! Handlers read the caller's identity, call [`App`], and map errors through the one
//! `SchedulerError → Status` conversion.

use std::pin::Pin;

use futures::Stream;
use hopngo_kit::authz::{Permission, Scope};
use hopngo_proto::{
    config::{self as cpb, config_service_server::ConfigService},
    identity::{self as ipb, identity_service_server::IdentityService},
    release::{self as pb, release_service_server::ReleaseService},
};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    app::{App, Caller},
    convert,
    domain::{
        config::{DeliveryConfig, Problem},
        train::MemberRequest,
    },
    error::SchedulerError,
    store::{AuditFilter, AuditedRequest, ReleaseFilter},
};

/// Both services over one [`App`].
#[derive(Clone)]
pub struct Api {
    app: App,
    shutdown: CancellationToken,
}

/// What a state-changing request named, for the audit row written when it is refused.
#[derive(Default)]
struct Asked<'a> {
    action: &'static str,
    release_id: &'a str,
    service: &'a str,
    environment: &'a str,
    reason: &'a str,
    request_id: &'a str,
}

/// Refusals are the caller's: wrong, not allowed, not now. An outage refuses nothing.
fn is_refusal(e: &SchedulerError) -> bool {
    matches!(
        e,
        SchedulerError::Invalid { .. }
            | SchedulerError::NotFound(_)
            | SchedulerError::FailedPrecondition(_)
            | SchedulerError::PermissionDenied(_)
    )
}

impl Api {
    /// The API; streams end when `shutdown` is cancelled.
    pub fn new(app: App, shutdown: CancellationToken) -> Api {
        Api { app, shutdown }
    }

    /// `result` as the caller gets it, written to the audit log first with who asked (as their
    /// credential proved it): allowed, or refused with the status the caller sees.
    async fn audited<T>(
        &self,
        who: &Caller,
        asked: Asked<'_>,
        result: std::result::Result<T, SchedulerError>,
    ) -> std::result::Result<T, Status> {
        let entry = |outcome, message| AuditedRequest {
            actor: who.user.clone(),
            action: asked.action.to_string(),
            outcome,
            release_id: None,
            service: asked.service.to_string(),
            environment: asked.environment.to_string(),
            reason: asked.reason.to_string(),
            request_id: asked.request_id.to_string(),
            message,
            issuer: who.issuer.clone(),
            subject: who.subject.clone(),
            groups: who.groups.clone(),
            rpc: who.rpc.clone(),
        };
        let e = match result {
            Ok(value) => {
                let release_id = uuid::Uuid::parse_str(asked.release_id).ok();
                self.app.audit_request(AuditedRequest { release_id, ..entry("allowed", String::new()) }).await;
                return Ok(value);
            }
            Err(e) => e,
        };
        let refused = is_refusal(&e);
        let status = Status::from(e);
        if refused {
            // A release the request named is recorded with its service and environment.
            let named = match uuid::Uuid::parse_str(asked.release_id) {
                Ok(_) => self.app.release(asked.release_id).await.ok(),
                Err(_) => None,
            };
            self.app
                .audit_request(AuditedRequest {
                    release_id: named.as_ref().map(|r| r.id),
                    service: named.as_ref().map_or(asked.service, |r| &r.service).to_string(),
                    environment: named.as_ref().map_or(asked.environment, |r| &r.environment).to_string(),
                    ..entry("refused", format!("{:?}: {}", status.code(), status.message()))
                })
                .await;
        }
        Err(status)
    }
}

/// The environment a group action acted in, for its audit row (empty when it was refused).
fn group_environment(done: &std::result::Result<crate::app::Group, SchedulerError>) -> String {
    done.as_ref().map(|g| g.row.environment.clone()).unwrap_or_default()
}

/// Refuses unless `who` may view `service` in `environment`.
#[allow(clippy::result_large_err)]
fn may_view(who: &Caller, service: &str, environment: &str) -> std::result::Result<(), Status> {
    Ok(who.may(Permission::View, Scope::of(service, environment))?)
}

#[allow(clippy::result_large_err)]
fn caller<T>(req: &Request<T>) -> std::result::Result<Caller, Status> {
    Ok(Caller::authenticated(hopngo_kit::Caller::of(req)?))
}

type Result<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl ReleaseService for Api {
    async fn create_release(&self, req: Request<pb::CreateReleaseRequest>) -> Result<pb::CreateReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let created = self
            .app
            .create_release(
                &r.service,
                &r.environment,
                &r.artifact,
                &r.request_id,
                (&r.reason, r.override_freeze),
                &who,
            )
            .await;
        let asked = Asked {
            action: "create",
            service: &r.service,
            environment: &r.environment,
            reason: &r.reason,
            request_id: &r.request_id,
            ..Asked::default()
        };
        let release = self.audited(&who, asked, created).await?;
        Ok(Response::new(pb::CreateReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn get_release(&self, req: Request<pb::GetReleaseRequest>) -> Result<pb::GetReleaseResponse> {
        let who = caller(&req)?;
        let release = self.app.release(&req.get_ref().id).await?;
        may_view(&who, &release.service, &release.environment)?;
        Ok(Response::new(pb::GetReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn list_releases(&self, req: Request<pb::ListReleasesRequest>) -> Result<pb::ListReleasesResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let mut phases = Vec::new();
        for (i, p) in r.phases.iter().enumerate() {
            let phase = pb::ReleasePhase::try_from(*p).ok().and_then(convert::phase_from).ok_or_else(|| {
                SchedulerError::invalid(format!("phases[{i}]"), format!("{p} is not a release phase"))
            })?;
            phases.push(phase);
        }
        let filter = ReleaseFilter {
            service: (!r.service.is_empty()).then_some(r.service),
            environment: (!r.environment.is_empty()).then_some(r.environment),
            phases,
        };
        let page = self.app.list(filter, r.page_size, &r.page_token).await?;
        // Only what the caller may see; a page can come back shorter than asked, its token still
        // continues after it.
        Ok(Response::new(pb::ListReleasesResponse {
            releases: page
                .releases
                .iter()
                .filter(|r| may_view(&who, &r.service, &r.environment).is_ok())
                .map(convert::release)
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type WatchReleaseStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::WatchReleaseResponse, Status>> + Send>>;

    async fn watch_release(&self, req: Request<pb::WatchReleaseRequest>) -> Result<Self::WatchReleaseStream> {
        let who = caller(&req)?;
        let id = req.into_inner().id;
        // Subscribe before the first read so no change between the two is missed.
        let mut changes = self.app.signals().subscribe();
        let first = self.app.release(&id).await?;
        may_view(&who, &first.service, &first.environment)?;
        let app = self.app.clone();
        let shutdown = self.shutdown.clone();
        let stream = async_stream::try_stream! {
            let target = first.id;
            let mut last = convert::release(&first);
            let mut done = first.settled;
            yield pb::WatchReleaseResponse { release: Some(last.clone()) };
            while !done {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    change = changes.recv() => match change {
                        Ok(id) if id != target => continue,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => break,
                    },
                    _ = tokio::time::sleep(App::WATCH_POLL) => {}
                }
                let current = app.release(&id).await.map_err(Status::from)?;
                let view = convert::release(&current);
                done = current.settled;
                if view != last {
                    last = view.clone();
                    yield pb::WatchReleaseResponse { release: Some(view) };
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn promote_release(&self, req: Request<pb::PromoteReleaseRequest>) -> Result<pb::PromoteReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.promote(&r.id, r.full, &r.reason, &who).await;
        let asked = Asked { action: "promote", release_id: &r.id, reason: &r.reason, ..Asked::default() };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::PromoteReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn abort_release(&self, req: Request<pb::AbortReleaseRequest>) -> Result<pb::AbortReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.abort(&r.id, &r.reason, &who).await;
        let asked = Asked { action: "abort", release_id: &r.id, reason: &r.reason, ..Asked::default() };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::AbortReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn retry_release(&self, req: Request<pb::RetryReleaseRequest>) -> Result<pb::RetryReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.retry(&r.id, &r.reason, &who).await;
        let asked = Asked { action: "retry", release_id: &r.id, reason: &r.reason, ..Asked::default() };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::RetryReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn undo_release(&self, req: Request<pb::UndoReleaseRequest>) -> Result<pb::UndoReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.undo(&r.service, &r.environment, r.to_revision, &r.reason, &who).await;
        let asked = Asked {
            action: "undo",
            service: &r.service,
            environment: &r.environment,
            reason: &r.reason,
            ..Asked::default()
        };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::UndoReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn approve_release(&self, req: Request<pb::ApproveReleaseRequest>) -> Result<pb::ApproveReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.approve(&r.id, &r.reason, &who).await;
        let asked = Asked { action: "approve", release_id: &r.id, reason: &r.reason, ..Asked::default() };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::ApproveReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn reject_release(&self, req: Request<pb::RejectReleaseRequest>) -> Result<pb::RejectReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.reject(&r.id, &r.reason, &who).await;
        let asked = Asked { action: "reject", release_id: &r.id, reason: &r.reason, ..Asked::default() };
        let release = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::RejectReleaseResponse { release: Some(convert::release(&release)) }))
    }

    async fn list_revisions(&self, req: Request<pb::ListRevisionsRequest>) -> Result<pb::ListRevisionsResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        may_view(&who, &r.service, &r.environment)?;
        let (releases, stable) = self.app.revisions(&r.service, &r.environment).await?;
        let revisions = releases
            .iter()
            .map(|rel| pb::Revision {
                revision: rel.revision,
                artifact: rel.artifact.clone(),
                release_id: rel.id.to_string(),
                phase: convert::phase(rel.phase) as i32,
                completion: convert::release(rel).completion,
                created_by: rel.created_by.clone(),
                created_at: Some(prost_types::Timestamp {
                    seconds: rel.created_at.unix_timestamp(),
                    nanos: rel.created_at.nanosecond() as i32,
                }),
                current: Some(rel.revision) == stable,
            })
            .collect();
        Ok(Response::new(pb::ListRevisionsResponse { revisions }))
    }

    async fn rollback_environment(
        &self,
        req: Request<pb::RollbackEnvironmentRequest>,
    ) -> Result<pb::RollbackEnvironmentResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = if r.environment.is_empty() {
            Err(SchedulerError::invalid("environment", "must not be empty"))
        } else {
            self.app.rollback_environment(&r.environment, &r.services, &r.reason, r.emergency, &who).await
        };
        let asked = Asked {
            action: "rollback-environment",
            environment: &r.environment,
            reason: &r.reason,
            ..Asked::default()
        };
        let group = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::RollbackEnvironmentResponse { group: Some(convert::group(&group)) }))
    }

    async fn render_release(&self, req: Request<pb::RenderReleaseRequest>) -> Result<pb::RenderReleaseResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        may_view(&who, &r.service, &r.environment)?;
        let yaml = self.app.render_release(&r.service, &r.environment, &r.artifact, r.weight).await?;
        Ok(Response::new(pb::RenderReleaseResponse { yaml }))
    }

    async fn list_audit_entries(
        &self,
        req: Request<pb::ListAuditEntriesRequest>,
    ) -> Result<pb::ListAuditEntriesResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let some = |s: String| (!s.is_empty()).then_some(s);
        let release_id = match r.release_id.as_str() {
            "" => None,
            id => Some(uuid::Uuid::parse_str(id).map_err(|_| {
                SchedulerError::invalid(
                    "release_id",
                    format!("{} is not a release id (UUID)", hopngo_proto::check::shown(id)),
                )
            })?),
        };
        let outcome = match pb::AuditOutcome::try_from(r.outcome) {
            Ok(pb::AuditOutcome::Allowed) => Some("allowed".to_string()),
            Ok(pb::AuditOutcome::Refused) => Some("refused".to_string()),
            _ => None,
        };
        let filter = AuditFilter {
            release_id,
            service: some(r.service),
            environment: some(r.environment),
            actor: some(hopngo_kit::identity::normalise(&r.actor)),
            action: some(r.action),
            outcome,
            since: r.start_time.map(|t| convert::time_from("start_time", t)).transpose()?,
            until: r.end_time.map(|t| convert::time_from("end_time", t)).transpose()?,
        };
        let (entries, next) = self.app.audit(filter, r.page_size, &r.page_token).await?;
        // Entries about a service in an environment only for who may see it there; the others
        // (configs applied, calls refused before naming anything) for who may view anywhere.
        let visible = |e: &&crate::store::AuditEntry| {
            e.service.is_empty() || e.environment.is_empty() || may_view(&who, &e.service, &e.environment).is_ok()
        };
        Ok(Response::new(pb::ListAuditEntriesResponse {
            entries: entries.iter().filter(visible).map(convert::audit_entry).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn create_freeze(&self, req: Request<pb::CreateFreezeRequest>) -> Result<pb::CreateFreezeResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = match (
            r.start_time.map(|t| convert::time_from("start_time", t)).transpose(),
            r.end_time.map(|t| convert::time_from("end_time", t)).transpose(),
        ) {
            (Ok(start), Ok(end)) => self.app.create_freeze(&r.environment, (start, end), &r.reason, &who).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        };
        let asked = Asked { action: "freeze", environment: &r.environment, reason: &r.reason, ..Asked::default() };
        let freeze = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::CreateFreezeResponse { freeze: Some(convert::freeze(&freeze)) }))
    }

    async fn list_freezes(&self, req: Request<pb::ListFreezesRequest>) -> Result<pb::ListFreezesResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let environment = (!r.environment.is_empty()).then_some(r.environment.as_str());
        let (freezes, windows) = self.app.freezes(environment, r.include_ended).await?;
        let visible = |environment: &str| {
            who.may(Permission::View, Scope { environment: Some(environment), service: None }).is_ok()
        };
        Ok(Response::new(pb::ListFreezesResponse {
            freezes: freezes.iter().filter(|f| visible(&f.environment)).map(convert::freeze).collect(),
            windows: windows.iter().filter(|w| visible(&w.environment)).map(convert::open_window).collect(),
        }))
    }

    async fn end_freeze(&self, req: Request<pb::EndFreezeRequest>) -> Result<pb::EndFreezeResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.end_freeze(&r.id, &r.reason, &who).await;
        let asked = Asked { action: "end-freeze", reason: &r.reason, ..Asked::default() };
        let freeze = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::EndFreezeResponse { freeze: Some(convert::freeze(&freeze)) }))
    }

    async fn get_release_group(&self, req: Request<pb::GetReleaseGroupRequest>) -> Result<pb::GetReleaseGroupResponse> {
        let who = caller(&req)?;
        let group = self.app.group(&req.get_ref().id, &who).await?;
        Ok(Response::new(pb::GetReleaseGroupResponse { group: Some(convert::group(&group)) }))
    }

    async fn create_train(&self, req: Request<pb::CreateTrainRequest>) -> Result<pb::CreateTrainResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let members: Vec<MemberRequest<'_>> = r
            .members
            .iter()
            .map(|m| MemberRequest { service: &m.service, artifact: &m.artifact, depends_on: &m.depends_on })
            .collect();
        let why = (r.reason.as_str(), r.override_freeze);
        let done = self.app.create_train(&r.environment, &members, &r.request_id, why, &who).await;
        let asked = Asked {
            action: "create-train",
            environment: &r.environment,
            reason: &r.reason,
            request_id: &r.request_id,
            ..Asked::default()
        };
        let group = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::CreateTrainResponse { group: Some(convert::group(&group)) }))
    }

    async fn approve_release_group(
        &self,
        req: Request<pb::ApproveReleaseGroupRequest>,
    ) -> Result<pb::ApproveReleaseGroupResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.approve_group(&r.id, &r.reason, &who).await;
        let environment = group_environment(&done);
        let asked = Asked { action: "approve-group", environment: &environment, reason: &r.reason, ..Asked::default() };
        let group = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::ApproveReleaseGroupResponse { group: Some(convert::group(&group)) }))
    }

    async fn reject_release_group(
        &self,
        req: Request<pb::RejectReleaseGroupRequest>,
    ) -> Result<pb::RejectReleaseGroupResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.reject_group(&r.id, &r.reason, &who).await;
        let environment = group_environment(&done);
        let asked = Asked { action: "reject-group", environment: &environment, reason: &r.reason, ..Asked::default() };
        let group = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::RejectReleaseGroupResponse { group: Some(convert::group(&group)) }))
    }

    async fn abort_release_group(
        &self,
        req: Request<pb::AbortReleaseGroupRequest>,
    ) -> Result<pb::AbortReleaseGroupResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = self.app.abort_group(&r.id, &r.reason, &who).await;
        let environment = group_environment(&done);
        let asked = Asked { action: "abort-group", environment: &environment, reason: &r.reason, ..Asked::default() };
        let group = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::AbortReleaseGroupResponse { group: Some(convert::group(&group)) }))
    }

    async fn promote_environment(
        &self,
        req: Request<pb::PromoteEnvironmentRequest>,
    ) -> Result<pb::PromoteEnvironmentResponse> {
        let who = caller(&req)?;
        let r = req.into_inner();
        let done = if r.to_environment.is_empty() {
            Err(SchedulerError::invalid("to_environment", "must not be empty"))
        } else {
            self.app
                .promote_environment(
                    &r.service,
                    &r.from_environment,
                    &r.to_environment,
                    &r.artifact,
                    &r.request_id,
                    (&r.reason, r.override_freeze),
                    &who,
                )
                .await
        };
        let asked = Asked {
            action: "promote-environment",
            service: &r.service,
            environment: &r.to_environment,
            reason: &r.reason,
            request_id: &r.request_id,
            ..Asked::default()
        };
        let (release, source) = self.audited(&who, asked, done).await?;
        Ok(Response::new(pb::PromoteEnvironmentResponse {
            release: Some(convert::release(&release)),
            source: Some(convert::release(&source)),
        }))
    }
}

fn summary(c: &DeliveryConfig) -> cpb::ConfigSummary {
    cpb::ConfigSummary {
        environments: c.promotion_order(),
        services: c.services.iter().map(|s| s.name.clone()).collect(),
        // A template with one form per backend is listed once.
        analysis_templates: c.analysis_templates.iter().fold(Vec::new(), |mut names, t| {
            if !names.contains(&t.name) {
                names.push(t.name.clone());
            }
            names
        }),
    }
}

fn problem(p: Problem) -> cpb::ConfigProblem {
    cpb::ConfigProblem { path: p.path, message: p.message }
}

/// A delivery config must say something (its size is bounded by the edge checks: 1 MiB).
fn check_not_empty(yaml: &str) -> std::result::Result<(), SchedulerError> {
    if yaml.trim().is_empty() {
        return Err(SchedulerError::invalid("yaml", "must not be empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl ConfigService for Api {
    async fn apply_config(&self, req: Request<cpb::ApplyConfigRequest>) -> Result<cpb::ApplyConfigResponse> {
        let who = caller(&req)?;
        let yaml = req.into_inner().yaml;
        let done = match check_not_empty(&yaml) {
            Ok(()) => self.app.apply_config(&yaml, &who).await,
            Err(e) => Err(e),
        };
        let (version, changed, config) =
            self.audited(&who, Asked { action: "apply-config", ..Asked::default() }, done).await?;
        if changed {
            self.app
                .audit_request(AuditedRequest {
                    actor: who.user.clone(),
                    action: "config-applied".into(),
                    outcome: "allowed",
                    message: format!("delivery config version {version}"),
                    issuer: who.issuer.clone(),
                    subject: who.subject.clone(),
                    groups: who.groups.clone(),
                    rpc: who.rpc.clone(),
                    ..AuditedRequest::default()
                })
                .await;
        }
        Ok(Response::new(cpb::ApplyConfigResponse { version, changed, summary: Some(summary(&config)) }))
    }

    async fn get_config(&self, req: Request<cpb::GetConfigRequest>) -> Result<cpb::GetConfigResponse> {
        let version = req.get_ref().version;
        let stored = self.app.config((version > 0).then_some(version)).await?;
        Ok(Response::new(cpb::GetConfigResponse {
            version: stored.version,
            summary: Some(summary(&stored.config)),
            yaml: stored.yaml,
            applied_by: stored.applied_by,
            applied_at: Some(prost_types::Timestamp {
                seconds: stored.applied_at.unix_timestamp(),
                nanos: stored.applied_at.nanosecond() as i32,
            }),
        }))
    }

    async fn validate_config(&self, req: Request<cpb::ValidateConfigRequest>) -> Result<cpb::ValidateConfigResponse> {
        let yaml = req.into_inner().yaml;
        check_not_empty(&yaml)?;
        Ok(Response::new(match self.app.validate_config(&yaml) {
            Ok(config) => {
                cpb::ValidateConfigResponse { valid: true, problems: Vec::new(), summary: Some(summary(&config)) }
            }
            Err(problems) => {
                let summary = DeliveryConfig::parse(&yaml).ok().map(|c| summary(&c));
                cpb::ValidateConfigResponse {
                    valid: false,
                    problems: problems.into_iter().map(problem).collect(),
                    summary,
                }
            }
        }))
    }
}

#[tonic::async_trait]
impl IdentityService for Api {
    async fn who_am_i(&self, req: Request<ipb::WhoAmIRequest>) -> Result<ipb::WhoAmIResponse> {
        let hopngo_kit::Caller { principal: identity, authorizer, .. } = hopngo_kit::Caller::of(&req)?;
        // Before any config is applied there is nothing to hold roles for.
        let config = match self.app.config(None).await {
            Ok(current) => Some(current.config),
            Err(SchedulerError::FailedPrecondition(_)) => None,
            Err(other) => return Err(other.into()),
        };
        let mut grants = Vec::new();
        for service in config.iter().flat_map(|c| &c.services) {
            for environment in config.iter().flat_map(|c| &c.environments) {
                let scope = Scope::of(&service.name, &environment.name);
                let roles = authorizer.roles(&identity, scope);
                let permissions: Vec<String> =
                    [Permission::View, Permission::Deploy, Permission::Approve, Permission::Admin]
                        .into_iter()
                        .filter(|p| authorizer.check(&identity, *p, scope).is_ok())
                        .map(|p| p.as_str().to_string())
                        .collect();
                if !roles.is_empty() || !permissions.is_empty() {
                    grants.push(ipb::Grant {
                        environment: environment.name.clone(),
                        service: service.name.clone(),
                        roles,
                        permissions,
                    });
                }
            }
        }
        Ok(Response::new(ipb::WhoAmIResponse {
            user: identity.user,
            groups: identity.groups,
            issuer: identity.issuer,
            subject: identity.subject,
            grants,
        }))
    }
}
