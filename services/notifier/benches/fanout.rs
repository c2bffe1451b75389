//! Notifier fan-out benchmark (`cargo bench -p hopngo-notifier --bench fanout`): the notifier
//! binary as its own process on a throwaway PostgreSQL with fsync on; events published over gRPC
//! at a fixed rate (5 per call, 100 calls/s = 500 events/s) across 10 releases; every subscriber
//! checks each release's sequence (gaps, reorderings) and records publish→deliver latency (the
//! event carries the time its PublishEvents call started).
//!
//! Rounds, in one run: a baseline with 1 subscriber, then 50 subscribers (target p99 ≤ 50 ms,
//! 0 gaps, 0 reorderings), then 50 subscribers plus one that stops reading (it is cut off; the
//! others' p99 should barely move). Prints the notifier's peak RSS and CPU time.

use hopngo_testkit::access::channel;
use std::{
    collections::HashMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use hopngo_kit::pg::{EphemeralPostgres, PgOptions};
use hopngo_proto::{
    events::{Event, ReleaseEventData},
    notifier::{self as pb, notifier_service_client::NotifierServiceClient, subscribe_request::Start},
};
use hopngo_testkit::measure::{cpu_seconds, proc_status};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio_stream::StreamExt as _;

const RATE: u64 = 500;
const PER_CALL: u64 = 5;
const RELEASES: usize = 10;

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    received: u64,
    gaps: u64,
    reorders: u64,
}

struct Outcome {
    subscribers: usize,
    events: u64,
    tally: Tally,
    publish_us: Vec<u64>,
    cut_off: Option<String>,
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0
}

async fn round(addr: &str, subscribers: usize, seconds: u64, with_stalled: bool) -> Outcome {
    let events = RATE * seconds;
    let releases: Vec<String> = (0..RELEASES).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let mut client = NotifierServiceClient::new(channel(addr));
        let mut stream = client
            .subscribe(pb::SubscribeRequest {
                start: Some(Start::FromNow(true)),
                subscriber: "bench".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let tally = Arc::clone(&tally);
        let per_subscriber = events;
        readers.push(tokio::spawn(async move {
            let mut next: HashMap<String, u64> = HashMap::new();
            let mut local = Tally::default();
            while local.received < per_subscriber {
                let Ok(Some(Ok(item))) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await else {
                    break;
                };
                let Some(pb::subscribe_response::Item::Event(e)) = item.item else { continue };
                let now = micros_now();
                let sent = e.time.map(|t| t.seconds as u64 * 1_000_000 + t.nanos as u64 / 1000).unwrap_or(now);
                local.latencies_us.push(now.saturating_sub(sent));
                local.received += 1;
                let expected = next.entry(e.release_id.clone()).or_insert(1);
                if e.sequence > *expected {
                    local.gaps += e.sequence - *expected;
                } else if e.sequence < *expected {
                    local.reorders += 1;
                }
                *expected = (*expected).max(e.sequence + 1);
            }
            let mut t = tally.lock().unwrap();
            t.latencies_us.extend(local.latencies_us);
            t.received += local.received;
            t.gaps += local.gaps;
            t.reorders += local.reorders;
        }));
    }
    // A subscriber that never reads after subscribing.
    let stalled = if with_stalled {
        let mut client = NotifierServiceClient::new(channel(addr));
        Some(
            client
                .subscribe(pb::SubscribeRequest {
                    start: Some(Start::FromNow(true)),
                    subscriber: "stalled".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner(),
        )
    } else {
        None
    };

    let mut publisher = NotifierServiceClient::new(channel(addr));
    let mut sequences = [0u64; RELEASES];
    let mut publish_us = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 * PER_CALL / RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = 0u64;
    while sent < events {
        tick.tick().await;
        let started = micros_now();
        let batch: Vec<Event> = (0..PER_CALL)
            .map(|i| {
                let r = ((sent + i) as usize) % RELEASES;
                sequences[r] += 1;
                Event {
                    id: uuid::Uuid::now_v7().to_string(),
                    source: "/bench".into(),
                    spec_version: "1.0".into(),
                    r#type: hopngo_proto::event_types::RELEASE_STEP_COMPLETED.into(),
                    subject: releases[r].clone(),
                    time: Some(prost_types::Timestamp {
                        seconds: (started / 1_000_000) as i64,
                        nanos: ((started % 1_000_000) * 1000) as i32,
                    }),
                    release_id: releases[r].clone(),
                    sequence: sequences[r],
                    service: format!("svc-{r}"),
                    environment: "staging".into(),
                    severity: 1,
                    data: Some(ReleaseEventData {
                        phase: "PROGRESSING".into(),
                        transition: "step-completed".into(),
                        ..Default::default()
                    }),
                    extensions: Default::default(),
                }
            })
            .collect();
        let t = Instant::now();
        publisher.publish_events(pb::PublishEventsRequest { events: batch }).await.unwrap();
        publish_us.push(t.elapsed().as_micros() as u64);
        sent += PER_CALL;
    }
    for r in readers {
        r.await.unwrap();
    }
    let cut_off = match stalled {
        Some(mut s) => {
            // Past the slow-subscriber timeout, then read what the transport holds.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            let mut held = 0u64;
            let status = loop {
                match tokio::time::timeout(Duration::from_secs(2), s.next()).await {
                    Ok(Some(Ok(_))) => held += 1,
                    Ok(Some(Err(e))) => break format!("cut off after {held} items: {:?}: {}", e.code(), e.message()),
                    Ok(None) => break format!("stream ended after {held} items"),
                    Err(_) => break format!("not cut off ({held} items read afterwards)"),
                }
            };
            Some(status)
        }
        None => None,
    };
    let mut tally = Arc::try_unwrap(tally).ok().unwrap().into_inner().unwrap();
    tally.latencies_us.sort_unstable();
    publish_us.sort_unstable();
    Outcome { subscribers, events, tally, publish_us, cut_off }
}

fn report(name: &str, o: &Outcome) -> f64 {
    let l = &o.tally.latencies_us;
    let expected = o.events * o.subscribers as u64;
    println!(
        "{name:<28} subscribers {:>3}  events {:>6}  delivered {:>7}/{expected:<7} gaps {} reorderings {}  latency ms p50 {:.2} p99 {:.2} max {:.2}  publish call p99 {:.2} ms",
        o.subscribers,
        o.events,
        o.tally.received,
        o.tally.gaps,
        o.tally.reorders,
        percentile(l, 0.5),
        percentile(l, 0.99),
        percentile(l, 1.0),
        percentile(&o.publish_us, 0.99),
    );
    if let Some(c) = &o.cut_off {
        println!("{:<28} stalled subscriber: {c}", "");
    }
    percentile(l, 0.99)
}

fn main() {
    let seconds: u64 = std::env::var("FANOUT_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let pg = EphemeralPostgres::start(&PgOptions { durable: true, ..PgOptions::default() }).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hopngo-notifier"))
            .args([
                "--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &pg.url("postgres"), "--log", "warn",
                "--slow-subscriber-timeout", "2s", "--subscriber-buffer", "256",
            ])
            .args(hopngo_testkit::access::TestAccess::shared().plain_service_args())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = loop {
            let line = lines.next_line().await.unwrap().expect("the notifier started");
            if line.contains("listening grpc=") {
                break line;
            }
        };
        let addr = format!("http://{}", line.split("grpc=").nth(1).unwrap().split_whitespace().next().unwrap());
        println!("notifier fan-out: {RATE} events/s ({PER_CALL} per PublishEvents), {RELEASES} releases, fsync on, {seconds} s per round");
        let base = round(&addr, 1, seconds / 2, false).await;
        let base_p99 = report("baseline, 1 subscriber", &base);
        let main = round(&addr, 50, seconds, false).await;
        let main_p99 = report("50 subscribers", &main);
        let stalled = round(&addr, 50, seconds, true).await;
        let stalled_p99 = report("50 + 1 that stops reading", &stalled);
        println!(
            "p99 ratio 50/1 subscribers {:.2}; with a stalled subscriber / without {:.2}; target p99 ≤ 50 ms: {}",
            main_p99 / base_p99,
            stalled_p99 / main_p99,
            if main_p99 <= 50.0 && main.tally.gaps == 0 && main.tally.reorders == 0 { "met" } else { "NOT met" }
        );
        println!(
            "notifier peak RSS {:.1} MiB, CPU {:.1} s over the run",
            proc_status(pid, "VmHWM:") as f64 / 1024.0,
            cpu_seconds(pid)
        );
        let _ = child.kill().await;
    });
}
