//! Webhooks against real HTTP receivers on loopback: every event of a release arrives in order and
//! signed; a receiver that is down gets everything once it is back; retries end in a dead letter
//! and a 4xx is not retried; the delivery log shows each attempt; the three body formats.

mod common;

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{event, release, start};
use hmac::{Hmac, KeyInit as _, Mac as _};
use hopngo_proto::{event_types, notifier as pb};
use hopngo_testkit::{db::TestDb, receiver::Receiver};
use sha2::Sha256;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

async fn create(n: &common::Running, url: &str, format: &str, filter: pb::EventFilter) -> pb::Webhook {
    n.client
        .clone()
        .create_webhook(pb::CreateWebhookRequest {
            url: url.into(),
            format: format.into(),
            filter: Some(filter),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap()
}

async fn deliveries(n: &common::Running, id: &str) -> Vec<pb::Delivery> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = n
            .client
            .clone()
            .list_deliveries(pb::ListDeliveriesRequest { webhook_id: id.into(), page_size: 7, page_token: token })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.deliveries);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
}

/// Verifies a Standard Webhooks signature the way a receiver would.
fn verify(secret: &str, r: &hopngo_testkit::receiver::Received) -> bool {
    let key = STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", r.header("webhook-id"), r.header("webhook-timestamp")).as_bytes());
    mac.update(&r.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    r.header("webhook-signature") == expected
}

#[tokio::test]
async fn events_arrive_in_order_signed_and_a_receiver_that_was_down_gets_everything() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--webhook-max-attempts", "1000"]).await;
    let mut receiver = Receiver::start().await.unwrap();
    let hook = create(&n, &receiver.url("/hook"), "cloudevents", pb::EventFilter::default()).await;
    assert!(hook.secret.starts_with("whsec_"), "a secret is generated and returned once");
    let listed = n.client.clone().list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks;
    assert_eq!((listed.len(), listed[0].secret.as_str()), (1, ""), "lists never show the secret");

    let r = release();
    let first: Vec<_> =
        (1..=5).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect();
    n.publish(first.clone()).await;
    let got = receiver.until(Duration::from_secs(10), |g| g.len() >= 5).await;
    assert_eq!(
        got.iter().map(|g| g.header("ce-id").to_string()).collect::<Vec<_>>(),
        first.iter().map(|e| e.id.clone()).collect::<Vec<_>>()
    );
    for g in &got {
        assert!(verify(&hook.secret, g), "signature verifies");
        assert_eq!(g.header("ce-specversion"), "1.0");
        assert_eq!(g.header("content-type"), "application/json");
        assert_eq!(g.header("webhook-id"), g.header("ce-id"));
        assert_eq!(g.json()["context"]["id"], g.header("ce-id"));
    }
    let mut tampered = got[0].clone();
    tampered.body = bytes::Bytes::from_static(b"{}");
    assert!(!verify(&hook.secret, &tampered));

    // Down: connections refused while six more events are published.
    receiver.stop().await;
    let second: Vec<_> =
        (6..=11).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect();
    n.publish(second[..3].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    n.publish(second[3..].to_vec()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    receiver.restart().await.unwrap();
    let got = receiver.until(Duration::from_secs(10), |g| g.len() >= 11).await;
    let ids: Vec<String> = got.iter().map(|g| g.header("ce-id").to_string()).collect();
    let expected: Vec<String> = first.iter().chain(second.iter()).map(|e| e.id.clone()).collect();
    assert_eq!(ids, expected, "everything, once, in order");

    // The receiver has the request a moment before the notifier records the answer.
    let log = loop {
        let log = deliveries(&n, &hook.id).await;
        if log.iter().filter(|d| d.delivered).count() >= 11 {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let failed = log.iter().filter(|d| !d.delivered).count();
    assert!(failed >= 1, "the refused attempts are in the delivery log");
    assert!(
        log.iter().filter(|d| !d.delivered).all(|d| d.status_code == 0 && !d.dead_lettered && !d.message.is_empty())
    );
    assert_eq!(log.iter().filter(|d| d.delivered).count(), 11);
    let at = |d: &pb::Delivery| d.attempted_at.map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(log.windows(2).all(|w| at(&w[0]) >= at(&w[1])), "newest first");
    let retried = log.iter().find(|d| d.event_id == second[0].id && d.delivered).unwrap();
    assert!(retried.attempt >= 2, "the first event after the outage needed retries");
    n.stop().await;
}

#[tokio::test]
async fn retries_end_in_a_dead_letter_a_4xx_is_not_retried_and_order_is_kept() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--webhook-max-attempts", "3"]).await;
    let receiver = Receiver::start().await.unwrap();
    create(&n, &receiver.url("/"), "cloudevents", pb::EventFilter::default()).await;
    let r = release();
    let events: Vec<_> =
        (1..=3).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect();
    // First event: 503 three times (dead letter); second: 400 (dead letter at once); third: 200.
    receiver.answer(&[503, 503, 503, 400, 200]);
    n.publish(events.clone()).await;
    let got = receiver.until(Duration::from_secs(10), |g| g.len() >= 5).await;
    let ids: Vec<&str> = got.iter().map(|g| g.header("ce-id")).collect();
    assert_eq!(ids, vec![&events[0].id[..], &events[0].id, &events[0].id, &events[1].id, &events[2].id]);
    let hook = loop {
        let listed = n.client.clone().list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks;
        if listed[0].delivered == 1 {
            break listed[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((hook.delivered, hook.dead_lettered, hook.cursor.as_str()), (1, 2, "3"));
    let log = deliveries(&n, &hook.id).await;
    let of = |id: &str| log.iter().filter(|d| d.event_id == id).cloned().collect::<Vec<_>>();
    let first = of(&events[0].id);
    assert_eq!(
        first.iter().map(|d| (d.attempt, d.status_code, d.dead_lettered)).collect::<Vec<_>>(),
        vec![(3, 503, true), (2, 503, false), (1, 503, false)]
    );
    assert!(first[0].message.starts_with("gave up after 3 attempts"), "{}", first[0].message);
    let second = of(&events[1].id);
    assert_eq!(
        second.iter().map(|d| (d.attempt, d.status_code, d.dead_lettered)).collect::<Vec<_>>(),
        vec![(1, 400, true)]
    );
    assert!(second[0].message.starts_with("refused by the receiver, not retried"));
    // Deleting stops deliveries and removes the log.
    n.client.clone().delete_webhook(pb::DeleteWebhookRequest { id: hook.id.clone() }).await.unwrap();
    n.publish(vec![event(&r, "booking-service", 4, "succeeded", "SUCCEEDED", now())]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 5);
    let err = n
        .client
        .clone()
        .list_deliveries(pb::ListDeliveriesRequest { webhook_id: hook.id, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    n.stop().await;
}

#[tokio::test]
async fn structured_cloudevents_and_slack_bodies_and_filters() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--release-url-template", "http://console.test/releases/{release_id}"]).await;
    let receiver = Receiver::start().await.unwrap();
    let aborted_only = pb::EventFilter { types: vec![event_types::RELEASE_ABORTED.into()], ..Default::default() };
    create(&n, &receiver.url("/structured"), "cloudevents-structured", pb::EventFilter::default()).await;
    create(&n, &receiver.url("/slack"), "slack", aborted_only).await;
    let r = release();
    n.publish(vec![
        event(&r, "booking-service", 1, "weight-changed", "PROGRESSING", now()),
        event(&r, "booking-service", 2, "aborted", "ABORTED", now()),
    ])
    .await;
    let got = receiver.until(Duration::from_secs(10), |g| g.len() >= 3).await;
    let structured: Vec<_> = got.iter().filter(|g| g.path == "/structured").collect();
    assert_eq!(structured.len(), 2);
    assert!(structured[0].header("content-type").starts_with("application/cloudevents+json"));
    let v = structured[1].json();
    assert_eq!((v["specversion"].as_str(), v["type"].as_str()), (Some("1.0"), Some(event_types::RELEASE_ABORTED)));
    assert_eq!(v["data"]["customData"]["link"], format!("http://console.test/releases/{r}"));
    let slack: Vec<_> = got.iter().filter(|g| g.path == "/slack").collect();
    assert_eq!(slack.len(), 1, "the filter keeps only the abort");
    let text = slack[0].json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("*booking-service* in *staging*: release 2 `booking:1.1.0` *aborted*"), "{text}");
    assert!(text.contains(&format!("<http://console.test/releases/{r}|Open the release>")), "{text}");
    n.stop().await;
}

#[tokio::test]
async fn https_webhooks_verify_the_receiver_certificate() {
    let receiver = Receiver::start_tls().await.unwrap();
    let ca = std::env::temp_dir().join(format!("hopngo-webhook-ca-{}.pem", uuid::Uuid::now_v7()));
    std::fs::write(&ca, receiver.ca_pem().unwrap()).unwrap();
    let r = release();

    // Trusting the receiver's certificate: delivered over TLS, signed as ever.
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--webhook-ca-file", ca.to_str().unwrap()]).await;
    let hook = create(&n, &receiver.url("/tls"), "cloudevents", pb::EventFilter::default()).await;
    assert!(hook.url.starts_with("https://127.0.0.1:"));
    let sent = event(&r, "booking-service", 1, "succeeded", "SUCCEEDED", now());
    n.publish(vec![sent.clone()]).await;
    let got = receiver.until(Duration::from_secs(10), |g| !g.is_empty()).await;
    assert_eq!(got[0].header("ce-id"), sent.id);
    assert!(verify(&hook.secret, &got[0]));
    n.stop().await;

    // Not trusting it: the attempt fails on the certificate, nothing reaches the receiver.
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--webhook-max-attempts", "1"]).await;
    let hook = create(&n, &receiver.url("/untrusted"), "cloudevents", pb::EventFilter::default()).await;
    n.publish(vec![event(&r, "booking-service", 2, "succeeded", "SUCCEEDED", now())]).await;
    let log = loop {
        let log = deliveries(&n, &hook.id).await;
        if !log.is_empty() {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(log[0].dead_lettered && log[0].status_code == 0);
    assert!(log[0].message.to_lowercase().contains("certificate"), "{}", log[0].message);
    assert!(receiver.received().iter().all(|g| g.path == "/tls"));
    n.stop().await;
    let _ = std::fs::remove_file(ca);
}

#[tokio::test]
async fn a_replay_redelivers_dead_letters_in_order_with_a_fresh_retry_limit() {
    let db = TestDb::create().await.unwrap();
    let n = start(&db, &["--webhook-max-attempts", "2"]).await;
    let receiver = Receiver::start().await.unwrap();
    let hook = create(&n, &receiver.url("/"), "cloudevents", pb::EventFilter::default()).await;
    let r = release();
    let events: Vec<_> =
        (1..=3).map(|s| event(&r, "booking-service", s, "step-completed", "PROGRESSING", now())).collect();
    // The receiver is broken: every event is dead-lettered after two attempts.
    receiver.answer(&[500]);
    n.publish(events.clone()).await;
    let listed = loop {
        let listed = n.client.clone().list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks;
        if listed[0].dead_lettered == 3 {
            break listed[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(listed.cursor, "3");
    assert_eq!(receiver.received().len(), 6);

    // Fixed: replay from the start; each event gets its attempts again and arrives in order.
    receiver.answer(&[200]);
    let replayed = n
        .client
        .clone()
        .replay_webhook(pb::ReplayWebhookRequest { id: hook.id.clone(), after_cursor: "0".into() })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    assert_eq!(replayed.cursor, "0");
    let got = receiver.until(Duration::from_secs(10), |g| g.len() >= 9).await;
    let again: Vec<&str> = got[6..].iter().map(|g| g.header("ce-id")).collect();
    assert_eq!(again, events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>());
    let hook_now = loop {
        let listed = n.client.clone().list_webhooks(pb::ListWebhooksRequest {}).await.unwrap().into_inner().webhooks;
        if listed[0].delivered == 3 {
            break listed[0].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!((hook_now.cursor.as_str(), hook_now.dead_lettered), ("3", 3));
    let err = n
        .client
        .clone()
        .replay_webhook(pb::ReplayWebhookRequest { id: hook.id.clone(), after_cursor: "42".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    n.stop().await;
}
