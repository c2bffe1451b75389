//! Starting an in-process notifier on loopback and building events.

#![allow(dead_code)]

use hopngo_testkit::access::AuthedChannel;
use hopngo_testkit::access::channel;
use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Parser as _;
use hopngo_notifier::{
    clock::{Clock, ManualClock, SystemClock},
    server::{Args, run_with_clock},
};
use hopngo_proto::{
    events::{Event, ReleaseEventData},
    notifier::{self as pb, notifier_service_client::NotifierServiceClient},
};
use hopngo_testkit::{
    db::TestDb,
    server::{InProcess, server_args},
};
use time::OffsetDateTime;
use tokio_stream::StreamExt as _;
use tonic::Streaming;

pub struct Running {
    pub client: NotifierServiceClient<AuthedChannel>,
    pub addr: SocketAddr,
    /// Its admin listener, when the test's flags turned it on.
    pub admin: Option<SocketAddr>,
    server: InProcess,
}

pub async fn start(db: &TestDb, extra: &[&str]) -> Running {
    start_with_clock(db, extra, Arc::new(SystemClock)).await
}

pub async fn start_with_clock(db: &TestDb, extra: &[&str], clock: Arc<dyn Clock>) -> Running {
    let mut argv = server_args("hopngo-notifier", &db.url, "2s");
    argv.extend(
        ["--poll", "200ms", "--webhook-backoff", "50ms", "--webhook-backoff-max", "200ms"]
            .iter()
            .map(|s| s.to_string()),
    );
    let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let args = Args::parse_from(hopngo_testkit::server::with_args(argv, &extra));
    let server = InProcess::start(|shutdown, ready| run_with_clock(args, clock, shutdown, Some(ready))).await;
    let client = NotifierServiceClient::new(channel(&server.url()));
    Running { client, addr: server.addr, admin: server.admin, server }
}

impl Running {
    pub async fn stop(self) {
        self.server.stop().await;
    }

    pub async fn publish(&self, events: Vec<Event>) -> pb::PublishEventsResponse {
        self.client.clone().publish_events(pb::PublishEventsRequest { events }).await.unwrap().into_inner()
    }

    pub async fn subscribe(
        &self,
        filter: pb::EventFilter,
        start: pb::subscribe_request::Start,
    ) -> Streaming<pb::SubscribeResponse> {
        self.client
            .clone()
            .subscribe(pb::SubscribeRequest {
                filter: Some(filter),
                start: Some(start),
                subscriber: "test".into(),
                stop_at_head: false,
            })
            .await
            .unwrap()
            .into_inner()
    }
}

pub fn manual_clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(OffsetDateTime::from_unix_timestamp(1_764_633_600).unwrap()))
}

pub fn ts(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// A release event as the scheduler publishes it.
pub fn event(release: &str, service: &str, sequence: u64, transition: &str, phase: &str, at: OffsetDateTime) -> Event {
    let event_type = match transition {
        "aborted" => hopngo_proto::event_types::RELEASE_ABORTED,
        "succeeded" => hopngo_proto::event_types::SERVICE_UPGRADED,
        "awaiting-approval" => hopngo_proto::event_types::APPROVAL_CREATED,
        "failed" => hopngo_proto::event_types::RELEASE_FAILED,
        "weight-changed" => hopngo_proto::event_types::CANARY_WEIGHT_CHANGED,
        _ => hopngo_proto::event_types::RELEASE_STEP_COMPLETED,
    };
    Event {
        id: uuid::Uuid::now_v7().to_string(),
        source: "/hopngo/scheduler".into(),
        spec_version: "1.0".into(),
        r#type: event_type.into(),
        subject: release.into(),
        time: Some(ts(at)),
        release_id: release.into(),
        sequence,
        service: service.into(),
        environment: "staging".into(),
        severity: if transition == "aborted" { 3 } else { 1 },
        data: Some(ReleaseEventData {
            revision: 2,
            artifact: "booking:1.1.0".into(),
            stable_artifact: "booking:1.0.0".into(),
            phase: phase.into(),
            transition: transition.into(),
            step_name: format!("step-{sequence}"),
            ..Default::default()
        }),
        extensions: Default::default(),
    }
}

/// A new release id.
pub fn release() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Reads `n` events (skipping heartbeats) within `within`.
pub async fn take_events(
    stream: &mut Streaming<pb::SubscribeResponse>,
    n: usize,
    within: Duration,
) -> Vec<(u64, Event)> {
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        while out.len() < n {
            let item = stream.next().await.expect("stream open").expect("no error");
            if let Some(pb::subscribe_response::Item::Event(e)) = item.item {
                out.push((item.cursor.parse().unwrap(), e));
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("got {} of {n} events in time", out.len()));
    out
}

/// Asserts nothing but heartbeats arrive for `wait`.
pub async fn no_events(stream: &mut Streaming<pb::SubscribeResponse>, wait: Duration) {
    let _ = tokio::time::timeout(wait, async {
        while let Some(item) = stream.next().await {
            if let Some(pb::subscribe_response::Item::Event(e)) = item.unwrap().item {
                panic!("unexpected event {} {}", e.r#type, e.id);
            }
        }
    })
    .await;
}
