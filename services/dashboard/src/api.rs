//! The pages' JSON API and live stream. Every call is made for the person signed in, with their
//! token (see [`crate::session`]): a viewer's action is refused by the control plane itself.

use std::{convert::Infallible, time::Duration};

use axum::{
    Json, Router,
    extract::{FromRequestParts, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header, request::Parts},
    middleware::{self, Next},
    response::{
        IntoResponse, Response,
        sse::{Event as SseEvent, KeepAlive, Sse},
    },
    routing::{get, post},
};
use futures::{Stream, StreamExt as _};
use hopngo_client::{
    Channels, Clients,
    views::{EscalationView, EventView, MigrationRunView, ReleaseView, TimelineView, WhoAmIView},
};
use hopngo_proto::{
    identity as ipb, migrator as mpb, notifier as npb,
    release::{self as pb, StepKind},
};
use prometheus::{IntCounterVec, IntGauge, Opts};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::{
    error::DashboardError,
    pages::{self, MetricChart, WeightPoint},
    session,
};

type Result<T> = std::result::Result<T, DashboardError>;

/// Longest free text (a reason, a comment) the pages send.
const MAX_TEXT: usize = 1000;
/// Longest name or id in a path or filter.
const MAX_NAME: usize = 128;
/// Most recent events an events page starts with.
const MAX_RECENT: u32 = 500;
/// Releases read for the matrix in one page (the newest of each cell decides it; cells not
/// among them are read one by one).
const MATRIX_PAGE: u32 = 500;
/// Request bodies are small JSON objects.
const MAX_BODY: usize = 16 * 1024;

/// The dashboard's own metrics.
#[derive(Clone)]
pub struct DashboardMetrics {
    answers: IntCounterVec,
    streams: IntGauge,
}

impl DashboardMetrics {
    /// Registers them in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let answers = IntCounterVec::new(
            Opts::new("hopngo_dashboard_answers_total", "API answers to the pages, by route and HTTP status"),
            &["route", "status"],
        )
        .expect("static metric definition");
        let streams = IntGauge::new("hopngo_dashboard_streams_open", "Live event streams open to browsers")
            .expect("static metric definition");
        registry.register(Box::new(answers.clone())).expect("first registration");
        registry.register(Box::new(streams.clone())).expect("first registration");
        DashboardMetrics { answers, streams }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// Channels to the control plane (each call carries the caller's token).
    pub channels: Channels,
    /// Cookies only over HTTPS.
    pub secure_cookies: bool,
    /// Metrics.
    pub metrics: DashboardMetrics,
    /// Ends live streams on shutdown.
    pub shutdown: CancellationToken,
}

/// The signed-in person's clients.
pub struct Caller(Clients);

impl FromRequestParts<AppState> for Caller {
    type Rejection = DashboardError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let token = session::token(&parts.headers).ok_or(DashboardError::SignedOut)?;
        Ok(Caller(state.channels.clients(&token)?))
    }
}

/// The API's routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/api/session", post(sign_in).delete(sign_out))
        .route("/api/me", get(me))
        .route("/api/matrix", get(matrix))
        .route("/api/releases/{id}", get(release))
        .route("/api/releases/{id}/{action}", post(act))
        .route("/api/escalations", get(escalations))
        .route("/api/escalations/{id}/acknowledge", post(acknowledge))
        .route("/api/events", get(recent_events))
        .route("/api/stream", get(stream))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Refuses cross-site changes before any handler runs, never lets a browser cache an answer,
/// and counts answers.
async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let mut response = match session::check_same_origin(request.method(), request.headers()) {
        Err(reason) => DashboardError::CrossSite(reason).into_response(),
        Ok(()) => next.run(request).await,
    };
    response.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    state.metrics.answers.with_label_values(&[&route, response.status().as_str()]).inc();
    response
}

/// A name or id from a path or a filter: 1-128 printable characters without spaces.
fn name(field: &'static str, value: &str) -> Result<String> {
    if value.is_empty() || value.len() > MAX_NAME || !value.chars().all(|c| c.is_ascii_graphic()) {
        return Err(DashboardError::invalid(
            field,
            format!("must be 1-{MAX_NAME} printable characters without spaces"),
        ));
    }
    Ok(value.to_string())
}

/// Free text from a person: bounded, one line, no control characters.
fn text(field: &'static str, value: Option<String>) -> Result<String> {
    let value = value.unwrap_or_default();
    if value.chars().count() > MAX_TEXT {
        return Err(DashboardError::invalid(field, format!("is longer than {MAX_TEXT} characters")));
    }
    if !value.chars().all(|c| hopngo_proto::check::is_printable(c, false)) {
        return Err(DashboardError::invalid(field, "must be one line without control characters"));
    }
    Ok(value.trim().to_string())
}

#[derive(Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(state): State<AppState>, Json(body): Json<SignIn>) -> Result<Response> {
    let token = hopngo_client::check_token(&body.token).map_err(|e| DashboardError::invalid("token", e))?;
    let cookie =
        session::sign_in_cookie(token, state.secure_cookies).map_err(|e| DashboardError::invalid("token", e))?;
    let mut clients = state.channels.clients(token)?;
    let me = clients.identity.who_am_i(ipb::WhoAmIRequest {}).await?.into_inner();
    let mut response = Json(WhoAmIView::from(&me)).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

async fn sign_out(State(state): State<AppState>) -> Response {
    ([(header::SET_COOKIE, session::sign_out_cookie(state.secure_cookies))], StatusCode::NO_CONTENT).into_response()
}

async fn me(Caller(mut c): Caller) -> Result<Json<WhoAmIView>> {
    let me = c.identity.who_am_i(ipb::WhoAmIRequest {}).await?.into_inner();
    Ok(Json(WhoAmIView::from(&me)))
}

async fn matrix(Caller(c): Caller) -> Result<Json<pages::MatrixView>> {
    let (mut config, mut releases, mut freezes, mut notifier) =
        (c.config.clone(), c.releases.clone(), c.releases.clone(), c.notifier.clone());
    let (config, listed, freezes, escalations) = tokio::try_join!(
        config.get_config(hopngo_proto::config::GetConfigRequest::default()),
        releases.list_releases(pb::ListReleasesRequest { page_size: MATRIX_PAGE, ..Default::default() }),
        freezes.list_freezes(pb::ListFreezesRequest::default()),
        notifier.list_escalations(npb::ListEscalationsRequest { include_acknowledged: false }),
    )?;
    let summary = config.into_inner().summary.unwrap_or_default();
    let mut listed = listed.into_inner().releases;
    let missing = pages::cells_without_release(&summary.environments, &summary.services, &listed);
    if listed.len() as u32 >= MATRIX_PAGE {
        let older = futures::future::try_join_all(missing.into_iter().map(|(service, environment)| {
            let mut releases = c.releases.clone();
            async move {
                let request = pb::ListReleasesRequest { service, environment, page_size: 1, ..Default::default() };
                releases.list_releases(request).await.map(|r| r.into_inner().releases)
            }
        }))
        .await?;
        listed.extend(older.into_iter().flatten());
    }
    let escalations: Vec<EscalationView> =
        escalations.into_inner().escalations.iter().map(EscalationView::from).collect();
    Ok(Json(pages::matrix(&summary.environments, &summary.services, &listed, &freezes.into_inner(), &escalations)))
}

/// Everything the release page shows.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReleasePage {
    release: ReleaseView,
    timeline: TimelineView,
    charts: Vec<MetricChart>,
    weights: Vec<WeightPoint>,
    migrations: Vec<MigrationRunView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    escalation: Option<EscalationView>,
}

async fn release(Caller(c): Caller, Path(id): Path<String>) -> Result<Json<ReleasePage>> {
    let id = name("id", &id)?;
    let story = c.release_story(&id).await?;
    let r = &story.release;
    let migration_runs = r.steps.iter().filter(|s| s.kind == StepKind::Migrate as i32 && !s.run_id.is_empty());
    let migrations = futures::future::try_join_all(migration_runs.map(|s| {
        let mut migrator = c.migrator.clone();
        let request = mpb::GetMigrationRunRequest { id: s.run_id.clone() };
        async move { migrator.get_migration_run(request).await.map(|r| r.into_inner().run) }
    }))
    .await?;
    let escalations = c
        .notifier
        .clone()
        .list_escalations(npb::ListEscalationsRequest { include_acknowledged: true })
        .await?
        .into_inner();
    Ok(Json(ReleasePage {
        release: ReleaseView::from(r),
        timeline: TimelineView::new(r, &story.events, &story.runs),
        charts: pages::charts(r, &story.runs),
        weights: pages::weights(&story.events),
        migrations: migrations.iter().flatten().map(MigrationRunView::from).collect(),
        escalation: escalations.escalations.iter().find(|e| e.release_id == id).map(EscalationView::from),
    }))
}

#[derive(Deserialize)]
struct ActionBody {
    reason: Option<String>,
    #[serde(default)]
    full: bool,
}

async fn act(
    Caller(c): Caller,
    Path((id, action)): Path<(String, String)>,
    Json(body): Json<ActionBody>,
) -> Result<Json<ReleaseView>> {
    let id = name("id", &id)?;
    let reason = text("reason", body.reason)?;
    let mut releases = c.releases;
    let release = match action.as_str() {
        "promote" => {
            releases
                .promote_release(pb::PromoteReleaseRequest { id, full: body.full, reason })
                .await?
                .into_inner()
                .release
        }
        "abort" => releases.abort_release(pb::AbortReleaseRequest { id, reason }).await?.into_inner().release,
        "approve" => releases.approve_release(pb::ApproveReleaseRequest { id, reason }).await?.into_inner().release,
        "reject" => releases.reject_release(pb::RejectReleaseRequest { id, reason }).await?.into_inner().release,
        _ => return Err(DashboardError::invalid("action", "must be promote, abort, approve or reject")),
    };
    let release = release.ok_or_else(|| tonic::Status::internal("the scheduler answered without a release"))?;
    Ok(Json(ReleaseView::from(&release)))
}

async fn escalations(Caller(c): Caller) -> Result<Json<Vec<EscalationView>>> {
    let request = npb::ListEscalationsRequest { include_acknowledged: true };
    let r = c.notifier.clone().list_escalations(request).await?.into_inner();
    Ok(Json(r.escalations.iter().map(EscalationView::from).collect()))
}

#[derive(Deserialize)]
struct AckBody {
    comment: Option<String>,
}

async fn acknowledge(
    Caller(c): Caller,
    Path(id): Path<String>,
    Json(body): Json<AckBody>,
) -> Result<Json<EscalationView>> {
    let release_id = name("id", &id)?;
    let comment = text("comment", body.comment)?;
    let r = c.notifier.clone().acknowledge(npb::AcknowledgeRequest { release_id, comment }).await?.into_inner();
    let escalation =
        r.escalation.ok_or_else(|| tonic::Status::internal("the notifier answered without an escalation"))?;
    Ok(Json(EscalationView::from(&escalation)))
}

/// The events pages ask for: the notifier's filter.
#[derive(Deserialize, Default)]
struct EventQuery {
    service: Option<String>,
    environment: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    release: Option<String>,
    severity: Option<String>,
    last: Option<u32>,
}

impl EventQuery {
    fn filter(&self) -> Result<npb::EventFilter> {
        let list = |field: &'static str, v: &Option<String>| -> Result<Vec<String>> {
            v.as_deref().filter(|v| !v.is_empty()).map(|v| name(field, v)).transpose().map(|v| v.into_iter().collect())
        };
        let min_severity = match self.severity.as_deref().unwrap_or("") {
            "" | "info" => hopngo_proto::events::Severity::Unspecified,
            "warning" => hopngo_proto::events::Severity::Warning,
            "error" => hopngo_proto::events::Severity::Error,
            "critical" => hopngo_proto::events::Severity::Critical,
            _ => return Err(DashboardError::invalid("severity", "must be info, warning, error or critical")),
        };
        Ok(npb::EventFilter {
            services: list("service", &self.service)?,
            environments: list("environment", &self.environment)?,
            types: list("type", &self.event_type)?,
            release_id: list("release", &self.release)?.pop().unwrap_or_default(),
            min_severity: min_severity as i32,
            escalation_levels: Vec::new(),
        })
    }
}

async fn recent_events(Caller(c): Caller, Query(q): Query<EventQuery>) -> Result<Json<Vec<EventView>>> {
    let last = q.last.unwrap_or(100).min(MAX_RECENT);
    let start = npb::subscribe_request::Start::Last(last);
    let events = c.events_to_head(q.filter()?, start, "dashboard").await?;
    let events = events.iter().map(|(cursor, e)| EventView::new(cursor, e)).collect();
    Ok(Json(events))
}

/// The live events as server-sent events (`release` with the event, `heartbeat` with the
/// cursor), from after the browser's `Last-Event-ID` when it reconnects, else from now. Ends
/// when the notifier's stream does (the browser reconnects by itself) or on shutdown.
async fn stream(
    State(state): State<AppState>,
    Caller(c): Caller,
    headers: HeaderMap,
    Query(q): Query<EventQuery>,
) -> Result<Sse<impl Stream<Item = std::result::Result<SseEvent, Infallible>>>> {
    let start = match headers.get("last-event-id").and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()) {
        Some(cursor) => npb::subscribe_request::Start::AfterCursor(name("Last-Event-ID", cursor)?),
        None => npb::subscribe_request::Start::FromNow(true),
    };
    let request = npb::SubscribeRequest {
        filter: Some(q.filter()?),
        start: Some(start),
        subscriber: "dashboard".into(),
        stop_at_head: false,
    };
    let upstream = c.notifier.clone().subscribe(request).await?.into_inner();
    let open = OpenStream::new(state.metrics.streams.clone());
    let events = upstream
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(move |item| {
            // The stream owns the gauge's guard: it counts as open until the browser goes.
            let _open = &open;
            std::future::ready(item.ok().and_then(|item| match &item.item {
                Some(npb::subscribe_response::Item::Event(e)) => {
                    let view = EventView::new(&item.cursor, e);
                    SseEvent::default().id(item.cursor.clone()).event("release").json_data(&view).ok()
                }
                Some(npb::subscribe_response::Item::Heartbeat(_)) => {
                    Some(SseEvent::default().id(item.cursor.clone()).event("heartbeat").data(item.cursor.clone()))
                }
                None => None,
            }))
        })
        .map(Ok)
        .take_until(state.shutdown.cancelled_owned());
    let retry = futures::stream::once(async { Ok(SseEvent::default().retry(Duration::from_secs(1)).comment("live")) });
    Ok(Sse::new(retry.chain(events)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Counts a stream as open until it is dropped.
struct OpenStream(IntGauge);

impl OpenStream {
    fn new(gauge: IntGauge) -> Self {
        gauge.inc();
        OpenStream(gauge)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}
