//! Escalation on a controllable clock: levels fire at the configured times, reach subscribers and
//! level-filtered webhooks, stop on acknowledge; stuck releases escalate; a release leaving its
//! condition ends the escalation.

mod common;

use std::{sync::Arc, time::Duration};

use common::{event, manual_clock, no_events, release, start_with_clock, take_events};
use hopngo_notifier::clock::Clock as _;
use hopngo_proto::{
    event_types,
    notifier::{self as pb, subscribe_request::Start},
};
use hopngo_testkit::{db::TestDb, receiver::Receiver};
use tonic::Code;

const MINUTE: Duration = Duration::from_secs(60);

fn escalations() -> pb::EventFilter {
    pb::EventFilter {
        types: vec![event_types::ESCALATION_ESCALATED.into(), event_types::ESCALATION_ACKNOWLEDGED.into()],
        ..Default::default()
    }
}

fn level_of(e: &hopngo_proto::events::Event) -> &str {
    e.extensions.get("escalationlevel").map(String::as_str).unwrap_or("-")
}

#[tokio::test]
async fn levels_fire_at_their_times_reach_their_channels_and_stop_on_acknowledge() {
    let db = TestDb::create().await.unwrap();
    let clock = manual_clock();
    let n = start_with_clock(&db, &["--escalation-tick", "50ms", "--admin-listen", "127.0.0.1:0"], clock.clone()).await;
    let admin = n.admin.expect("the admin listener is on").to_string();
    let open = || async {
        let scraped = hopngo_testkit::measure::scrape(&admin).await;
        hopngo_testkit::measure::sample(&scraped, "hopngo_notifier_escalations_open")
    };
    let receiver = Receiver::start().await.unwrap();
    let team_lead_only = pb::EventFilter { escalation_levels: vec!["team-lead".into()], ..Default::default() };
    n.client
        .clone()
        .create_webhook(pb::CreateWebhookRequest {
            url: receiver.url("/team-lead"),
            format: "slack".into(),
            filter: Some(team_lead_only),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut sub = n.subscribe(escalations(), Start::FromNow(true)).await;

    let r = release();
    let t0 = clock.now();
    n.publish(vec![
        event(&r, "booking-service", 1, "step-completed", "PROGRESSING", t0),
        event(&r, "booking-service", 2, "aborted", "ABORTED", t0),
    ])
    .await;
    let on_call = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(level_of(&on_call[0].1), "on-call", "on-call is told at once");
    assert_eq!(on_call[0].1.extensions["escalationcondition"], "aborted");
    assert_eq!((on_call[0].1.sequence, on_call[0].1.source.as_str()), (0, "/hopngo/notifier"));

    clock.advance(14 * MINUTE);
    no_events(&mut sub, Duration::from_millis(300)).await;
    clock.advance(MINUTE);
    let team_lead = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(level_of(&team_lead[0].1), "team-lead", "team lead after 15 minutes");
    assert!(
        team_lead[0]
            .1
            .data
            .as_ref()
            .unwrap()
            .message
            .starts_with("aborted for 15m and not acknowledged: escalated to team-lead")
    );
    let slack = receiver.until(Duration::from_secs(5), |g| !g.is_empty()).await;
    assert!(slack[0].json()["text"].as_str().unwrap().contains("escalated to *team-lead*"));
    assert_eq!(open().await, Some(1.0), "one escalation open (the alerting rules read this)");

    let listed = n
        .client
        .clone()
        .list_escalations(pb::ListEscalationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .escalations;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].condition.as_str(), listed[0].levels_notified.clone(), listed[0].next_level.as_str()),
        ("aborted", vec!["on-call".to_string(), "team-lead".to_string()], "incident-commander")
    );
    assert_eq!(listed[0].next_at.unwrap().seconds, (t0 + 30 * MINUTE).unix_timestamp());

    let mut ack = n.client.clone();
    let request = hopngo_testkit::access::as_user(
        pb::AcknowledgeRequest { release_id: r.clone(), comment: "rolling forward a fix".into() },
        "bob",
        &[],
    );
    let acked = ack.acknowledge(request).await.unwrap().into_inner().escalation.unwrap();
    assert_eq!(
        (acked.acknowledged_by.as_str(), acked.comment.as_str(), acked.next_level.as_str()),
        ("bob", "rolling forward a fix", "")
    );
    let ack_event = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(ack_event[0].1.r#type, event_types::ESCALATION_ACKNOWLEDGED);
    assert!(ack_event[0].1.data.as_ref().unwrap().message.contains("acknowledged by bob: rolling forward a fix"));
    // Acknowledging again changes nothing.
    let again = ack
        .acknowledge(pb::AcknowledgeRequest { release_id: r.clone(), comment: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.escalation.unwrap().acknowledged_by, "bob");
    clock.advance(120 * MINUTE);
    no_events(&mut sub, Duration::from_millis(400)).await;
    assert_eq!(open().await, Some(0.0), "acknowledged: no longer open");
    assert!(
        n.client
            .clone()
            .list_escalations(pb::ListEscalationsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .escalations
            .is_empty()
    );
    let with_acked = n
        .client
        .clone()
        .list_escalations(pb::ListEscalationsRequest { include_acknowledged: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(with_acked.escalations.len(), 1);
    assert_eq!(receiver.received().len(), 1, "the team lead's channel got its level only");
    n.stop().await;
}

#[tokio::test]
async fn a_quiet_release_becomes_stuck_and_leaving_a_condition_ends_its_escalation() {
    let db = TestDb::create().await.unwrap();
    let clock = manual_clock();
    let n = start_with_clock(
        &db,
        &["--escalation-tick", "50ms", "--stuck-after", "20m", "--escalation-level", "on-call=0s,team-lead=10m"],
        clock.clone(),
    )
    .await;
    let mut sub = n.subscribe(escalations(), Start::FromNow(true)).await;
    let stuck = release();
    n.publish(vec![event(&stuck, "chat", 1, "step-completed", "PAUSED", clock.now())]).await;
    clock.advance(19 * MINUTE);
    no_events(&mut sub, Duration::from_millis(300)).await;
    clock.advance(MINUTE);
    let got = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(
        (got[0].1.release_id.as_str(), got[0].1.extensions["escalationcondition"].as_str()),
        (stuck.as_str(), "stuck")
    );

    // Waiting for approval, then approved before the team lead's turn: no more escalation.
    let waiting = release();
    n.publish(vec![event(&waiting, "booking-service", 1, "awaiting-approval", "AWAITING_APPROVAL", clock.now())]).await;
    let got = take_events(&mut sub, 1, Duration::from_secs(5)).await;
    assert_eq!(
        (got[0].1.release_id.as_str(), got[0].1.extensions["escalationcondition"].as_str()),
        (waiting.as_str(), "awaiting-approval")
    );
    // The stuck release moves on, too.
    n.publish(vec![
        event(&waiting, "booking-service", 2, "step-completed", "PROGRESSING", clock.now()),
        event(&stuck, "chat", 2, "succeeded", "SUCCEEDED", clock.now()),
    ])
    .await;
    clock.advance(15 * MINUTE);
    no_events(&mut sub, Duration::from_millis(400)).await;
    assert!(
        n.client
            .clone()
            .list_escalations(pb::ListEscalationsRequest { include_acknowledged: true })
            .await
            .unwrap()
            .into_inner()
            .escalations
            .is_empty()
    );
    let err = n
        .client
        .clone()
        .acknowledge(pb::AcknowledgeRequest { release_id: waiting.clone(), comment: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.message(), format!("release {waiting} is PROGRESSING: nothing to acknowledge"));
    n.stop().await;
}

#[tokio::test]
async fn a_restarted_notifier_catches_up_on_levels_due_while_it_was_down_once() {
    let db = TestDb::create().await.unwrap();
    let clock = manual_clock();
    let n = start_with_clock(&db, &["--escalation-tick", "50ms"], clock.clone()).await;
    let r = release();
    n.publish(vec![event(&r, "ai", 1, "failed", "FAILED", clock.now())]).await;
    let mut sub = n.subscribe(escalations(), Start::FromBeginning(true)).await;
    assert_eq!(level_of(&take_events(&mut sub, 1, Duration::from_secs(5)).await[0].1), "on-call");
    n.stop().await;
    clock.advance(45 * MINUTE);
    let clock2: Arc<dyn hopngo_notifier::clock::Clock> = clock.clone();
    let n = start_with_clock(&db, &["--escalation-tick", "50ms"], clock2).await;
    let mut sub = n.subscribe(escalations(), Start::FromBeginning(true)).await;
    let all = take_events(&mut sub, 3, Duration::from_secs(5)).await;
    assert_eq!(
        all.iter().map(|(_, e)| level_of(e).to_string()).collect::<Vec<_>>(),
        vec!["on-call", "team-lead", "incident-commander"]
    );
    assert_eq!(all[1].1.severity, 4, "levels after the first are critical");
    no_events(&mut sub, Duration::from_millis(300)).await;
    n.stop().await;
}
