//! `hopngo.notifier.v1.NotifierService`.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use hopngo_kit::{
    Caller,
    authz::{Permission, Scope},
    follow::{page_token, parse_page_token},
};
use hopngo_proto::{
    events::Event,
    notifier::{self as pb, notifier_service_server::NotifierService, subscribe_request::Start},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    clock::Clock,
    convert,
    domain::{cursor, render::Format, signature, target},
    error::NotifierError,
    escalator::Escalator,
    log::Log,
    store::StoredWebhook,
    subscribe::Subscriptions,
};

/// Largest page of `ListDeliveries`.
const MAX_PAGE: u32 = 500;

/// The service.
pub struct Notifier {
    log: Arc<Log>,
    escalator: Arc<Escalator>,
    subscriptions: Subscriptions,
    allow_remote_webhooks: bool,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
}

impl Notifier {
    /// The service; streams end on `shutdown`.
    pub fn new(
        escalator: Arc<Escalator>,
        subscriptions: Subscriptions,
        allow_remote_webhooks: bool,
        shutdown: CancellationToken,
    ) -> Notifier {
        let log = Arc::clone(&subscriptions.log);
        let clock = Arc::clone(&subscriptions.clock);
        Notifier { log, escalator, subscriptions, allow_remote_webhooks, clock, shutdown }
    }
}

/// Checks one published event; `i` is its index in the request.
fn check_event(i: usize, e: &Event) -> Result<(), NotifierError> {
    let field = |name: &str| format!("events[{i}].{name}");
    let required = [("id", &e.id), ("source", &e.source), ("type", &e.r#type), ("release_id", &e.release_id)];
    for (name, value) in required {
        if value.trim().is_empty() {
            return Err(NotifierError::invalid(field(name), "is required"));
        }
    }
    if Uuid::parse_str(&e.release_id).is_err() {
        return Err(NotifierError::invalid(
            field("release_id"),
            format!("{} is not a release id (a UUID)", hopngo_proto::check::shown(&e.release_id)),
        ));
    }
    if !hopngo_proto::event_types::ALL.contains(&e.r#type.as_str()) {
        return Err(NotifierError::invalid(
            field("type"),
            format!("{} is not an event type of the control plane", hopngo_proto::check::shown(&e.r#type)),
        ));
    }
    // Positions and sequences are PostgreSQL bigints.
    if e.sequence > i64::MAX as u64 {
        return Err(NotifierError::invalid(field("sequence"), format!("{} is more than {}", e.sequence, i64::MAX)));
    }
    if !e.spec_version.is_empty() && e.spec_version != "1.0" {
        return Err(NotifierError::invalid(
            field("spec_version"),
            format!("{:?} is not CloudEvents 1.0", e.spec_version),
        ));
    }
    if e.time.is_none() {
        return Err(NotifierError::invalid(field("time"), "is required"));
    }
    if !(0..=4).contains(&e.severity) {
        return Err(NotifierError::invalid(field("severity"), format!("{} is not a severity", e.severity)));
    }
    if e.data.is_none() {
        return Err(NotifierError::invalid(field("data"), "is required (the release's state after the transition)"));
    }
    Ok(())
}

/// A caller's start cursor: within the log, and not older than what the retention kept.
async fn start_cursor(log: &Log, raw: &str, field: &str, head: u64) -> Result<u64, NotifierError> {
    let cursor = parse_cursor(raw, field, head)?;
    log.store().still_has_after(cursor).await?.map_err(|oldest| removed(field, cursor, oldest))?;
    Ok(cursor)
}

fn parse_cursor(raw: &str, field: &str, head: u64) -> Result<u64, NotifierError> {
    cursor::parse(raw, head).map_err(|r| NotifierError::invalid(field, r))
}

/// The retention removed events after a caller's cursor; `oldest` is the oldest position kept.
fn removed(field: &str, cursor: u64, oldest: u64) -> NotifierError {
    NotifierError::Precondition(format!(
        "{field}: events after cursor {cursor} up to {} were removed by the retention; the oldest kept is {oldest} \
         (start after cursor {} or from the beginning)",
        oldest - 1,
        oldest - 1
    ))
}

fn webhook_id(id: &str) -> Result<Uuid, NotifierError> {
    Uuid::parse_str(id).map_err(|_| NotifierError::invalid("id", format!("{id:?} is not a webhook id")))
}

type SubscribeStream = Pin<Box<dyn Stream<Item = Result<pb::SubscribeResponse, Status>> + Send>>;

#[tonic::async_trait]
impl NotifierService for Notifier {
    async fn publish_events(
        &self,
        request: Request<pb::PublishEventsRequest>,
    ) -> Result<Response<pb::PublishEventsResponse>, Status> {
        // At most 1,000 a call: the edge checks bound the list.
        let mut events = request.into_inner().events;
        for (i, e) in events.iter_mut().enumerate() {
            check_event(i, e)?;
            e.spec_version = "1.0".into();
        }
        // Each event continues the trace of the release that produced it (CloudEvents'
        // distributed tracing extension), for as long as the append takes.
        let spans: Vec<tracing::Span> = events
            .iter()
            .filter_map(|e| {
                let traceparent = e.extensions.get("traceparent")?;
                let span = tracing::info_span!(
                    "event appended",
                    event.r#type = %e.r#type,
                    release = %e.release_id,
                    sequence = e.sequence,
                    trace_id = tracing::field::Empty
                );
                hopngo_kit::telemetry::continue_trace(&span, Some(traceparent));
                Some(span)
            })
            .collect();
        let (accepted, duplicates) = self.log.publish(events).await?;
        drop(spans);
        Ok(Response::new(pb::PublishEventsResponse { accepted, duplicates }))
    }

    type SubscribeStream = SubscribeStream;

    async fn subscribe(&self, request: Request<pb::SubscribeRequest>) -> Result<Response<SubscribeStream>, Status> {
        // How many streams one caller holds is bounded by the authentication layer
        // (--max-streams-per-caller); which events it sees, by what it may view.
        let visible = visibility(&request);
        let req = request.into_inner();
        let filter = convert::filter(req.filter, "filter", self.log.policy())?;
        // Subscribed before the head is read: nothing appended in between is missed.
        let live = self.log.live();
        let head = self.log.store().head().await?;
        let after = match req.start {
            Some(Start::AfterCursor(c)) => start_cursor(&self.log, &c, "after_cursor", head).await?,
            // The beginning of what the retention kept.
            Some(Start::FromBeginning(true)) => self.log.store().oldest().await?.saturating_sub(1),
            Some(Start::Last(n)) => {
                head.saturating_sub(u64::from(n)).max(self.log.store().oldest().await?.saturating_sub(1))
            }
            Some(Start::FromNow(_)) | Some(Start::FromBeginning(false)) | None => head,
        };
        tracing::debug!(subscriber = %req.subscriber, after, "subscription opened");
        let stop_at = req.stop_at_head.then_some(head);
        let stream = self.subscriptions.open(live, (filter, visible), (after, stop_at), self.shutdown.child_token());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create_webhook(
        &self,
        request: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let req = request.into_inner();
        let target =
            target::check(&req.url, self.allow_remote_webhooks).map_err(|r| NotifierError::invalid("url", r))?;
        let format = Format::parse(&req.format).map_err(|r| NotifierError::invalid("format", r))?;
        let filter = convert::filter(req.filter, "filter", self.log.policy())?;
        let generated = req.secret.is_empty();
        let secret = if generated { signature::generate_secret() } else { req.secret };
        signature::key(&secret).map_err(|r| NotifierError::invalid("secret", r))?;
        let head = self.log.store().head().await?;
        // The store checks the cursor against the retention as it stores the webhook.
        let cursor = if req.start_after_cursor.is_empty() {
            head
        } else {
            parse_cursor(&req.start_after_cursor, "start_after_cursor", head)?
        };
        let hook = StoredWebhook {
            id: Uuid::now_v7(),
            url: target.url,
            format: format.as_str().into(),
            filter,
            secret,
            created_at: self.clock.now(),
            cursor,
            delivered: 0,
            dead_lettered: 0,
            generation: 0,
        };
        self.log
            .store()
            .create_webhook(&hook)
            .await?
            .map_err(|oldest| removed("start_after_cursor", cursor, oldest))?;
        // A secret the caller chose is never sent back; one generated here is shown this once
        // (there is no other way to learn it).
        Ok(Response::new(pb::CreateWebhookResponse { webhook: Some(convert::webhook(&hook, generated)) }))
    }

    async fn list_webhooks(
        &self,
        _request: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let hooks = self.log.store().webhooks().await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: hooks.iter().map(|w| convert::webhook(w, false)).collect(),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let id = webhook_id(&request.into_inner().id)?;
        if !self.log.store().delete_webhook(id).await? {
            return Err(NotifierError::NotFound(format!("webhook {id} does not exist")).into());
        }
        Ok(Response::new(pb::DeleteWebhookResponse {}))
    }

    async fn replay_webhook(
        &self,
        request: Request<pb::ReplayWebhookRequest>,
    ) -> Result<Response<pb::ReplayWebhookResponse>, Status> {
        let req = request.into_inner();
        let id = webhook_id(&req.id)?;
        let head = self.log.store().head().await?;
        let cursor = parse_cursor(&req.after_cursor, "after_cursor", head)?;
        let hook = self
            .log
            .store()
            .replay_webhook(id, cursor)
            .await?
            .map_err(|oldest| removed("after_cursor", cursor, oldest))?
            .ok_or_else(|| NotifierError::NotFound(format!("webhook {id} does not exist")))?;
        Ok(Response::new(pb::ReplayWebhookResponse { webhook: Some(convert::webhook(&hook, false)) }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let req = request.into_inner();
        let id = Uuid::parse_str(&req.webhook_id)
            .map_err(|_| NotifierError::invalid("webhook_id", format!("{:?} is not a webhook id", req.webhook_id)))?;
        if req.page_size > MAX_PAGE {
            return Err(NotifierError::invalid("page_size", format!("at most {MAX_PAGE}")).into());
        }
        let before = parse_page_token(&req.page_token).map_err(|r| NotifierError::invalid("page_token", r))?;
        if self.log.store().webhook(id).await?.is_none() {
            return Err(NotifierError::NotFound(format!("webhook {id} does not exist")).into());
        }
        let size = if req.page_size == 0 { 50 } else { req.page_size } as i64;
        let mut page = self.log.store().deliveries(id, before, size + 1).await?;
        let next_page_token = if page.len() as i64 > size {
            page.truncate(size as usize);
            page.last().map(|d| page_token(d.attempted_at, d.id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: page.iter().map(convert::delivery).collect(),
            next_page_token,
        }))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        let who = Caller::of(&request)?;
        let req = request.into_inner();
        if Uuid::parse_str(&req.release_id).is_err() {
            return Err(
                NotifierError::invalid("release_id", format!("{:?} is not a release id", req.release_id)).into()
            );
        }
        if req.comment.len() > 1000 {
            return Err(NotifierError::invalid("comment", "is longer than 1000 characters").into());
        }
        let may = |service: &str, environment: &str| who.check(Permission::Deploy, Scope::of(service, environment));
        let state = self.escalator.acknowledge(&req.release_id, &who.principal.user, may, &req.comment).await?;
        Ok(Response::new(pb::AcknowledgeResponse { escalation: Some(convert::escalation(&state, self.log.policy())) }))
    }

    async fn list_escalations(
        &self,
        request: Request<pb::ListEscalationsRequest>,
    ) -> Result<Response<pb::ListEscalationsResponse>, Status> {
        let visible = visibility(&request);
        let req = request.into_inner();
        let states = self.log.store().escalations(req.include_acknowledged).await?;
        Ok(Response::new(pb::ListEscalationsResponse {
            escalations: states
                .iter()
                .filter(|s| visible(&s.service, &s.environment))
                .map(|s| convert::escalation(s, self.log.policy()))
                .collect(),
        }))
    }
}

/// What the caller of `request` may see: releases of the services and environments it may view
/// (everything on a server without the authentication layer).
fn visibility<T>(request: &Request<T>) -> crate::subscribe::Visibility {
    match Caller::of(request) {
        Ok(caller) => Arc::new(move |service: &str, environment: &str| {
            caller.check(Permission::View, Scope::of(service, environment)).is_ok()
        }),
        Err(_) => Arc::new(|_: &str, _: &str| true),
    }
}
