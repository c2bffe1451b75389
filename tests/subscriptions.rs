//! Subscriptions are bounded: 200 subscribers catching up on the whole log at once keep the real
//! notifier process under a stated memory bound, publishing keeps working meanwhile, streams
//! opened from now hear at once that they are subscribed, and one caller cannot hold every
//! stream.

use hopngo_e2e::channel;
use std::time::{Duration, Instant};

use hopngo_e2e::{Proc, as_user, binary, step_event};
use hopngo_proto::{
    events::Event,
    notifier::{self as npb, notifier_service_client::NotifierServiceClient, subscribe_request::Start},
};
use hopngo_testkit::{db::TestDb, measure::proc_status};
use tonic::Code;

/// Events in the log (each with a message of a realistic size).
const EVENTS: u64 = 2_000;
/// Subscribers catching up at once, spread over callers as a platform's services would be.
const SUBSCRIBERS: usize = 200;
const CALLERS: usize = 4;
/// The bound: peak resident memory of the notifier while they catch up (66-79 MiB measured here
/// in five runs, from 28 MiB at rest; 104 MiB with the former 1,024-item subscriber buffers).
const PEAK_RSS_MIB: u64 = 90;

fn event(release: &str, sequence: u64) -> Event {
    step_event(
        release,
        sequence,
        format!("step {sequence} done: {}", "the canary answered within its SLO; ".repeat(20)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_catching_up_subscribers_stay_within_the_memory_bound() {
    let db = TestDb::create().await.unwrap();
    // Plain HTTP/2 on loopback: the bound is on the notifier's own buffering (over TLS the peak
    // measured 66-87 MiB here, the TLS connection's buffers included).
    let args: Vec<String> =
        ["--listen", "127.0.0.1:0", "--admin-listen", "off", "--database-url", &db.url, "--log", "warn"]
            .iter()
            .map(|s| s.to_string())
            .chain(hopngo_e2e::TestAccess::shared().plain_service_args())
            .collect();
    let notifier = Proc::start(&binary("hopngo-notifier", "hopngo-notifier").unwrap(), &args, &[]).await.unwrap();
    let pid = notifier.child.id().unwrap();
    let client = NotifierServiceClient::new(channel(&notifier.grpc));
    let release = uuid::Uuid::now_v7().to_string();
    for batch in (1..=EVENTS).collect::<Vec<_>>().chunks(100) {
        let events = batch.iter().map(|s| event(&release, *s)).collect();
        client.clone().publish_events(npb::PublishEventsRequest { events }).await.unwrap();
    }
    let baseline = proc_status(pid, "VmRSS:");

    let subscribe = |caller: String, start: Start, stop_at_head: bool| {
        let mut c = client.clone();
        async move {
            let request = npb::SubscribeRequest { start: Some(start), stop_at_head, ..Default::default() };
            c.subscribe(as_user(request, &caller, &[])).await
        }
    };
    let started = Instant::now();
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let caller = format!("service-{}", i % CALLERS);
        let stream = subscribe(caller, Start::FromBeginning(true), true).await.unwrap().into_inner();
        readers.push(tokio::spawn(async move {
            let mut stream = stream;
            let mut events = 0u64;
            while let Some(item) = stream.message().await.unwrap() {
                if matches!(item.item, Some(npb::subscribe_response::Item::Event(_))) {
                    events += 1;
                }
                // Readers slower than the database, as real ones are: the notifier holds what
                // they have not taken yet, and that is what must stay bounded.
                if events.is_multiple_of(10) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            events
        }));
    }
    // Publishing goes on while they read: the database is not theirs alone.
    let publish_started = Instant::now();
    client
        .clone()
        .publish_events(npb::PublishEventsRequest { events: vec![event(&release, EVENTS + 1)] })
        .await
        .unwrap();
    let publish_took = publish_started.elapsed();
    let mut peak = 0;
    while !readers.iter().all(|r| r.is_finished()) {
        peak = peak.max(proc_status(pid, "VmRSS:"));
        assert!(started.elapsed() < Duration::from_secs(240), "the subscribers did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for reader in readers {
        assert!(reader.await.unwrap() >= EVENTS, "every subscriber read the whole log");
    }
    let catch_up = started.elapsed();
    peak = peak.max(proc_status(pid, "VmHWM:"));
    println!(
        "notifier RSS: {:.1} MiB before, peak {:.1} MiB with {SUBSCRIBERS} subscribers catching up on {EVENTS} events \
         ({:.1} s); a publish meanwhile took {:.0} ms",
        baseline as f64 / 1024.0,
        peak as f64 / 1024.0,
        catch_up.as_secs_f64(),
        publish_took.as_secs_f64() * 1000.0
    );
    assert!(peak < PEAK_RSS_MIB * 1024, "peak RSS {} KiB over the {PEAK_RSS_MIB} MiB bound", peak);
    assert!(publish_took < Duration::from_secs(5), "publishing waited {publish_took:?} for the catching-up readers");

    // Streams from now hear at once that they are subscribed (a heartbeat with the cursor).
    let mut waits = Vec::new();
    let mut open = Vec::new();
    for i in 0..SUBSCRIBERS {
        let asked = Instant::now();
        let mut stream =
            subscribe(format!("service-{}", i % CALLERS), Start::FromNow(true), false).await.unwrap().into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap().unwrap().unwrap();
        assert!(matches!(first.item, Some(npb::subscribe_response::Item::Heartbeat(_))), "{first:?}");
        assert_eq!(first.cursor, (EVENTS + 1).to_string());
        waits.push(asked.elapsed());
        open.push(stream);
    }
    waits.sort();
    println!(
        "first message of a from-now stream: median {:?}, max {:?}",
        waits[waits.len() / 2],
        waits.last().unwrap()
    );
    assert!(*waits.last().unwrap() < Duration::from_secs(2));
    // One caller holds 50 now; the cap is 100 a caller.
    for _ in 0..50 {
        open.push(subscribe("service-0".into(), Start::FromNow(true), false).await.unwrap().into_inner());
    }
    let refused = subscribe("service-0".into(), Start::FromNow(true), false).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("service-0 already holds 100 open streams"), "{}", refused.message());
    assert!(subscribe("service-1".into(), Start::FromNow(true), false).await.is_ok(), "other callers are not affected");
    // Closing streams gives the slots back.
    open.truncate(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(subscribe("service-0".into(), Start::FromNow(true), false).await.is_ok());
}
