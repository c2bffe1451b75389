//! NotifierService over gRPC on loopback, against real PostgreSQL: the log replays in order and
//! follows live, resumes from a cursor across a restart without gaps, filters, heartbeats, cuts
//! off a subscriber that stops reading (with its cursor), and refuses bad input writing nothing.

mod common;

use std::time::Duration;

use common::{event, no_events, release, start, take_events};
use hopngo_proto::{
    event_types,
    notifier::{self as pb, subscribe_request::Start},
};
use hopngo_testkit::db::TestDb;
use time::OffsetDateTime;
use tokio_stream::StreamExt as _;
use tonic::Code;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A webhook that cannot deliver (the discard port), so it holds the log from its cursor on.
fn unreachable_webhook(start_after_cursor: &str) -> pb::CreateWebhookRequest {
    pb::CreateWebhookRequest {
        url: "http://127.0.0.1:9/unreachable".into(),
        start_after_cursor: start_after_cursor.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn replays_then_follows_live_in_order_and_ignores_duplicates() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let (a, b) = (release(), release());
    let first: Vec<_> = (1..=5)
        .flat_map(|s| {
            [
                event(&a, "booking-service", s, "step-completed", "PROGRESSING", now()),
                event(&b, "gateway", s, "step-completed", "PROGRESSING", now()),
            ]
        })
        .collect();
    let r = n.publish(first.clone()).await;
    assert_eq!((r.accepted, r.duplicates), (10, 0));
    let mut all = n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await;
    let mut only_b = n
        .subscribe(
            pb::EventFilter { services: vec!["gateway".into()], ..Default::default() },
            Start::FromBeginning(true),
        )
        .await;
    let replayed = take_events(&mut all, 10, Duration::from_secs(10)).await;
    assert_eq!(
        replayed.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>(),
        "cursors are gapless positions"
    );
    assert_eq!(
        replayed.iter().map(|(_, e)| e.id.clone()).collect::<Vec<_>>(),
        first.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );

    // The scheduler republishes after a lost answer: nothing new.
    let again = n.publish(first[8..].to_vec()).await;
    assert_eq!((again.accepted, again.duplicates), (0, 2));
    let live = vec![
        event(&a, "booking-service", 6, "succeeded", "SUCCEEDED", now()),
        event(&b, "gateway", 6, "aborted", "ABORTED", now()),
    ];
    n.publish(live.clone()).await;
    let followed = take_events(&mut all, 2, Duration::from_secs(5)).await;
    assert_eq!(
        followed.iter().map(|(c, e)| (*c, e.id.clone())).collect::<Vec<_>>(),
        vec![(11, live[0].id.clone()), (12, live[1].id.clone())]
    );
    let gateway = take_events(&mut only_b, 6, Duration::from_secs(5)).await;
    assert!(gateway.iter().all(|(_, e)| e.service == "gateway"));
    assert_eq!(
        gateway.iter().map(|(_, e)| e.sequence).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5, 6],
        "in order per release"
    );
    no_events(&mut all, Duration::from_millis(300)).await;

    // Reading in batches: the stream ends at the head, its last heartbeat says where to go on.
    let mut batch = n
        .client
        .clone()
        .subscribe(pb::SubscribeRequest {
            start: Some(Start::AfterCursor("4".into())),
            stop_at_head: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut cursors = Vec::new();
    while let Some(item) = batch.next().await {
        let item = item.unwrap();
        cursors.push((item.cursor, matches!(item.item, Some(pb::subscribe_response::Item::Event(_)))));
    }
    let expected: Vec<(String, bool)> =
        (5..=12).map(|c| (c.to_string(), true)).chain([("12".to_string(), false)]).collect();
    assert_eq!(cursors, expected);

    // A page's recent history: the last 3 events of the log, then (not) more; more than the log
    // holds is the whole log.
    for (last, first) in [(3, 10), (1_000, 1)] {
        let request = pb::SubscribeRequest { start: Some(Start::Last(last)), stop_at_head: true, ..Default::default() };
        let mut recent = n.client.clone().subscribe(request).await.unwrap().into_inner();
        let mut events = Vec::new();
        while let Some(item) = recent.next().await {
            let item = item.unwrap();
            if matches!(item.item, Some(pb::subscribe_response::Item::Event(_))) {
                events.push(item.cursor.parse::<u64>().unwrap());
            }
        }
        assert_eq!(events, (first..=12).collect::<Vec<_>>(), "last {last}");
    }
    n.stop().await;
}

#[tokio::test]
async fn a_restarted_notifier_resumes_a_subscriber_from_its_cursor_without_gaps() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let r = release();
    n.publish((1..=20).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect())
        .await;
    let mut sub = n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await;
    let seen = take_events(&mut sub, 12, Duration::from_secs(5)).await;
    let cursor = seen.last().unwrap().0;
    n.stop().await;
    // The stream ends with the server.
    let ended =
        tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = sub.next().await {} }).await;
    assert!(ended.is_ok(), "the stream ends when the notifier stops");

    let n = start(&db, &[]).await;
    n.publish((21..=25).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect())
        .await;
    let mut resumed = n.subscribe(pb::EventFilter::default(), Start::AfterCursor(cursor.to_string())).await;
    let rest = take_events(&mut resumed, 13, Duration::from_secs(5)).await;
    let sequences: Vec<u64> = seen.iter().chain(rest.iter()).map(|(_, e)| e.sequence).collect();
    assert_eq!(sequences, (1..=25).collect::<Vec<_>>(), "no gap, no duplicate across the restart");
    no_events(&mut resumed, Duration::from_millis(300)).await;
    n.stop().await;
}

#[tokio::test]
async fn filters_select_and_heartbeats_move_the_cursor_past_filtered_events() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--heartbeat", "200ms"]).await;
    let r = release();
    let filter =
        pb::EventFilter { types: vec![event_types::RELEASE_ABORTED.into()], min_severity: 3, ..Default::default() };
    let mut sub = n.subscribe(filter, Start::FromNow(true)).await;
    n.publish((1..=3).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect()).await;
    let heartbeat = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let item = sub.next().await.unwrap().unwrap();
            match item.item {
                Some(pb::subscribe_response::Item::Heartbeat(h)) if item.cursor == "3" => return h,
                Some(pb::subscribe_response::Item::Event(e)) => panic!("filtered event {} arrived", e.r#type),
                _ => {}
            }
        }
    })
    .await
    .expect("a heartbeat with the cursor past the filtered events");
    assert!(heartbeat.time.is_some());
    n.publish(vec![event(&r, "booking-service", 4, "aborted", "ABORTED", now())]).await;
    let got = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!((got[0].0, got[0].1.r#type.as_str()), (4, event_types::RELEASE_ABORTED));
    n.stop().await;
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_cut_off_with_its_cursor_and_resumes_without_gaps() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--slow-subscriber-timeout", "300ms", "--subscriber-buffer", "8"]).await;
    let r = release();
    let mut slow = n.subscribe(pb::EventFilter::default(), Start::FromNow(true)).await;
    let mut fast = n.subscribe(pb::EventFilter::default(), Start::FromNow(true)).await;
    let total = 3000u64;
    let big = "x".repeat(2000);
    let fast_reader =
        tokio::spawn(async move { take_events(&mut fast, total as usize, Duration::from_secs(60)).await });
    for chunk in (1..=total).collect::<Vec<_>>().chunks(200) {
        let events = chunk
            .iter()
            .map(|s| {
                let mut e = event(&r, "booking-service", *s, "step-completed", "PROGRESSING", now());
                e.data.as_mut().unwrap().message = big.clone();
                e
            })
            .collect();
        n.publish(events).await;
    }
    let fast = fast_reader.await.unwrap();
    assert_eq!(fast.len() as u64, total, "a fast subscriber is not held up by a slow one");
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Now the slow one reads: what the transport had, then the cut-off with a resume cursor.
    let mut got = Vec::new();
    let status = loop {
        match slow.next().await {
            Some(Ok(item)) => {
                if let Some(pb::subscribe_response::Item::Event(e)) = item.item {
                    got.push((item.cursor.parse::<u64>().unwrap(), e.sequence));
                }
            }
            Some(Err(status)) => break status,
            None => panic!("the slow subscriber was not cut off"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("resume after cursor"), "{}", status.message());
    assert!((got.len() as u64) < total, "cut off before the end");
    let cursor = status.metadata().get("x-hopngo-resume-cursor").unwrap().to_str().unwrap().to_string();
    assert_eq!(
        cursor,
        got.last().map(|(c, _)| c.to_string()).unwrap_or_else(|| "0".into()),
        "the cursor is the last event it got"
    );
    let mut resumed = n.subscribe(pb::EventFilter::default(), Start::AfterCursor(cursor)).await;
    let rest = take_events(&mut resumed, total as usize - got.len(), Duration::from_secs(30)).await;
    let sequences: Vec<u64> = got.iter().map(|(_, s)| *s).chain(rest.iter().map(|(_, e)| e.sequence)).collect();
    assert_eq!(sequences, (1..=total).collect::<Vec<_>>());
    n.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_and_nothing_is_written() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let mut c = n.client.clone();
    let r = release();
    let good = event(&r, "booking-service", 1, "step-completed", "PROGRESSING", now());
    let mut no_id = good.clone();
    no_id.id.clear();
    let err = c.publish_events(pb::PublishEventsRequest { events: vec![good.clone(), no_id] }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "events[1].id: is required");
    let mut bad_release = good.clone();
    bad_release.release_id = "r1".into();
    let err = c.publish_events(pb::PublishEventsRequest { events: vec![bad_release] }).await.unwrap_err();
    assert!(err.message().starts_with("events[0].release_id:"), "{}", err.message());
    // Garbage that used to be stored or to reach PostgreSQL as an internal error.
    let mut unknown_type = good.clone();
    unknown_type.r#type = "com.example.anything".into();
    let mut huge_sequence = good.clone();
    huge_sequence.sequence = u64::MAX;
    let mut nul_id = good.clone();
    nul_id.id = "a\0b".into();
    let mut long_id = good.clone();
    long_id.id = "i".repeat(1 << 20);
    let mut bad_severity = good.clone();
    bad_severity.severity = 999;
    for (event, message) in [
        (unknown_type, "events[0].type: \"com.example.anything\" is not an event type of the control plane"),
        (huge_sequence, "events[0].sequence: 18446744073709551615 is more than 9223372036854775807"),
        (nul_id, "events[0].id: contains a NUL byte (at byte 1)"),
        (long_id, "events[0].id: is 1048576 bytes long; at most 256 are allowed"),
        (bad_severity, "events[0].severity: 999 is not a Severity (INFO, WARNING, ERROR, CRITICAL)"),
    ] {
        let err = c.publish_events(pb::PublishEventsRequest { events: vec![event] }).await.unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, message));
    }
    let sub = |filter: pb::EventFilter, start: Start| {
        let mut c = c.clone();
        async move {
            c.subscribe(pb::SubscribeRequest { filter: Some(filter), start: Some(start), ..Default::default() })
                .await
                .map(|_| ())
                .unwrap_err()
        }
    };
    let err =
        sub(pb::EventFilter { types: vec!["service.deployed".into()], ..Default::default() }, Start::FromNow(true))
            .await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("filter.types[0]: unknown event type \"service.deployed\"; did you mean \"dev.cdevents.service.deployed.0.3.0\"?"), "{}", err.message());
    let err = sub(pb::EventFilter { services: vec!["a\0".into()], ..Default::default() }, Start::FromNow(true)).await;
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "filter.services[0]: contains a NUL byte (at byte 1)")
    );
    let err = n
        .client
        .clone()
        .create_webhook(pb::CreateWebhookRequest {
            url: "http://127.0.0.1:1/".into(),
            secret: "s".repeat(1 << 20),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (Code::InvalidArgument, "secret: is 1048576 bytes long; at most 256 are allowed")
    );
    let err = sub(pb::EventFilter::default(), Start::AfterCursor("5".into())).await;
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().starts_with("after_cursor: cursor 5 is beyond the end of the log (newest position is 0)"),
        "{}",
        err.message()
    );
    let err =
        sub(pb::EventFilter { escalation_levels: vec!["ceo".into()], ..Default::default() }, Start::FromNow(true))
            .await;
    assert!(err.message().starts_with("filter.escalation_levels[0]: no escalation level \"ceo\""), "{}", err.message());

    let create = |url: &str, format: &str, secret: &str| {
        let mut c = c.clone();
        let req = pb::CreateWebhookRequest {
            url: url.into(),
            format: format.into(),
            secret: secret.into(),
            ..Default::default()
        };
        async move { c.create_webhook(req).await.unwrap_err() }
    };
    for (url, format, secret, expected) in [
        (
            "http://hooks.example.com/x",
            "",
            "",
            "url: \"http://hooks.example.com/x\": plain http to hooks.example.com, which is not this machine; use https",
        ),
        (
            "https://u:p@hooks.example.com/x",
            "slack",
            "",
            "url: \"https://u:p@hooks.example.com/x\": credentials in the URL",
        ),
        ("ftp://127.0.0.1/x", "", "", "url: \"ftp://127.0.0.1/x\": scheme \"ftp\" is not supported"),
        ("no url", "", "", "url: \"no url\" is not a URL"),
        ("http://127.0.0.1:9/x", "teams", "", "format: \"teams\" is not a format"),
        ("http://127.0.0.1:9/x", "", "short", "secret: must be at least 16 characters"),
    ] {
        let err = create(url, format, secret).await;
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert!(err.message().starts_with(expected), "{} vs {expected}", err.message());
    }
    let err = c.delete_webhook(pb::DeleteWebhookRequest { id: uuid::Uuid::now_v7().to_string() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err =
        c.acknowledge(pb::AcknowledgeRequest { release_id: "nope".into(), comment: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err =
        c.acknowledge(pb::AcknowledgeRequest { release_id: r.clone(), comment: String::new() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    // Nothing of the refused calls reached the log or the webhooks.
    let mut all = n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await;
    no_events(&mut all, Duration::from_millis(300)).await;
    assert!(c.list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks.is_empty());
    n.stop().await;
}

#[tokio::test]
async fn retention_removes_old_events_but_never_the_newest_nor_what_a_webhook_still_needs() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--retention", "1s", "--prune-interval", "100ms", "--webhook-max-attempts", "1000"]).await;
    let r = release();
    // A webhook that cannot deliver holds the log from cursor 2 on.
    n.publish((1..=2).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect()).await;
    let hook = n.client.clone().create_webhook(unreachable_webhook("")).await.unwrap().into_inner().webhook.unwrap();
    n.publish((3..=5).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect()).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let mut from_start = n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await;
    let kept = take_events(&mut from_start, 3, Duration::from_secs(5)).await;
    assert_eq!(
        kept.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
        vec![3, 4, 5],
        "1 and 2 are gone, the webhook's are kept"
    );
    let err = n
        .client
        .clone()
        .subscribe(pb::SubscribeRequest { start: Some(Start::AfterCursor("1".into())), ..Default::default() })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().starts_with("after_cursor: events after cursor 1 up to 2 were removed by the retention"),
        "{}",
        err.message()
    );
    // Without the webhook, everything but the newest goes; positions continue after it.
    n.client.clone().delete_webhook(pb::DeleteWebhookRequest { id: hook.id }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut again = n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await;
    assert_eq!(take_events(&mut again, 1, Duration::from_secs(5)).await[0].0, 5);
    n.publish(vec![event(&r, "booking-service", 6, "succeeded", "SUCCEEDED", now())]).await;
    assert_eq!(take_events(&mut again, 1, Duration::from_secs(5)).await[0].0, 6);
    n.stop().await;
}

#[tokio::test]
async fn a_long_backlog_is_pruned_in_batches_down_to_the_newest_event() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let r = release();
    n.publish((1..=25).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect())
        .await;
    n.stop().await;
    let store = hopngo_notifier::store::Store::connect(&db.url, 2).await.unwrap();
    // Ten a statement: three statements, and the loop must not stop after the first full one.
    let (events, _, _) = store.prune(now() + time::Duration::minutes(1), 10).await.unwrap();
    assert_eq!(events, 24, "all but the newest");
    assert_eq!((store.oldest().await.unwrap(), store.head().await.unwrap()), (25, 25));
    let (again, _, _) = store.prune(now() + time::Duration::minutes(1), 10).await.unwrap();
    assert_eq!(again, 0);
    store.pool().close().await;
}

#[tokio::test]
async fn cursors_given_or_read_from_while_a_prune_statement_runs_see_what_it_removed() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let r = release();
    n.publish((1..=5).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect()).await;
    let hook = n.client.clone().create_webhook(unreachable_webhook("")).await.unwrap().into_inner().webhook.unwrap();
    // A retention statement in flight: it holds the lock and has removed 1..3, not yet committed.
    let store = hopngo_notifier::store::Store::connect(&db.url, 2).await.unwrap();
    let mut prune = store.pool().begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(hopngo_notifier::store::RETENTION_LOCK)
        .execute(&mut *prune)
        .await
        .unwrap();
    sqlx::query("DELETE FROM events WHERE position <= 3").execute(&mut *prune).await.unwrap();
    let mut client = n.client.clone();
    let replay = tokio::spawn(async move {
        client.replay_webhook(pb::ReplayWebhookRequest { id: hook.id, after_cursor: "1".into() }).await
    });
    let mut client = n.client.clone();
    let create = tokio::spawn(async move { client.create_webhook(unreachable_webhook("1")).await });
    let mut client = n.client.clone();
    let subscriber = tokio::spawn(async move {
        let request = pb::SubscribeRequest { start: Some(Start::AfterCursor("1".into())), ..Default::default() };
        match client.subscribe(request).await {
            Err(status) => status,
            Ok(stream) => stream
                .into_inner()
                .next()
                .await
                .expect("stream open")
                .map(|item| item.item)
                .expect_err("a subscriber catching up waits for the statement, not reads what it is removing"),
        }
    });
    // All three reach the lock (without it they would read the log before the delete commits:
    // the webhooks would point their cursors at events that are about to go, and a subscriber
    // reading a moment later would get a batch that starts past them).
    tokio::time::sleep(Duration::from_millis(500)).await;
    prune.commit().await.unwrap();
    let replayed = replay.await.unwrap().unwrap_err();
    assert_eq!(replayed.code(), Code::FailedPrecondition);
    assert!(
        replayed.message().starts_with("after_cursor: events after cursor 1 up to 3 were removed by the retention"),
        "{}",
        replayed.message()
    );
    let created = create.await.unwrap().unwrap_err();
    assert_eq!(created.code(), Code::FailedPrecondition);
    assert!(
        created.message().starts_with("start_after_cursor: events after cursor 1 up to 3"),
        "{}",
        created.message()
    );
    let behind = subscriber.await.unwrap();
    assert_eq!(behind.code(), Code::FailedPrecondition);
    assert!(behind.message().contains("events after cursor 1 up to 3 were removed"), "{}", behind.message());
    let hooks = n.client.clone().list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks;
    assert_eq!(hooks.len(), 1, "nothing half-written");
    store.pool().close().await;
    n.stop().await;
}

#[tokio::test]
async fn a_subscriber_sees_only_the_environments_it_may_view() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &[]).await;
    let (staging, production) = (release(), release());
    let mut events = Vec::new();
    for s in 1..=3 {
        events.push(event(&staging, "booking-service", s, "step-completed", "PROGRESSING", now()));
        let mut other = event(&production, "booking-service", s, "step-completed", "PROGRESSING", now());
        other.environment = "production".into();
        events.push(other);
    }
    assert_eq!(n.publish(events).await.accepted, 6);
    // Sam deploys to staging only (the test policy's `staging-deployers`).
    let url = format!("http://{}", n.addr);
    let sam = hopngo_testkit::access::with_credential(
        &url,
        Some(&hopngo_testkit::access::token("sam", &["staging-deployers"])),
    );
    let request =
        pb::SubscribeRequest { start: Some(Start::FromBeginning(true)), stop_at_head: true, ..Default::default() };
    let mut stream =
        pb::notifier_service_client::NotifierServiceClient::new(sam).subscribe(request).await.unwrap().into_inner();
    let mut seen = Vec::new();
    let mut last_cursor = String::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        let item = item.unwrap();
        last_cursor = item.cursor.clone();
        if let Some(pb::subscribe_response::Item::Event(e)) = item.item {
            seen.push((e.environment, e.sequence));
        }
    }
    assert_eq!(seen, vec![("staging".to_string(), 1), ("staging".to_string(), 2), ("staging".to_string(), 3)]);
    assert_eq!(last_cursor, "6", "the cursor moves past what sam may not see");
    // An admin sees both.
    let everything = take_events(
        &mut n.subscribe(pb::EventFilter::default(), Start::FromBeginning(true)).await,
        6,
        Duration::from_secs(10),
    )
    .await;
    assert!(everything.iter().any(|(_, e)| e.environment == "production"));
    n.stop().await;
}
