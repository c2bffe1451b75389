//! Per-caller abuse limits of the authentication layer, on the scheduler: changes beyond the rate
//! are refused with RESOURCE_EXHAUSTED and a time to retry, other callers are unaffected, and a
//! caller holds at most so many open watch streams.

mod common;

use common::{Harness, as_user};
use hopngo_proto::release as pb;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_caller_is_slowed_down_and_holds_a_bounded_number_of_streams() {
    let h = Harness::start_with(&["--mutation-rate", "0.5", "--mutation-burst", "3", "--max-streams-per-caller", "2"])
        .await;
    let mut c = h.client();
    let abort = |who: &str| {
        let request = pb::AbortReleaseRequest { id: uuid::Uuid::now_v7().to_string(), reason: String::new() };
        as_user(request, who, &[])
    };
    // The burst: refused by the handler (no such release), but each one counted.
    for _ in 0..3 {
        assert_eq!(c.abort_release(abort("mia")).await.unwrap_err().code(), Code::NotFound);
    }
    let limited = c.abort_release(abort("mia")).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted, "{limited:?}");
    assert!(
        limited.message().starts_with("mia is making changes faster than 0.5/s (burst 3); retry in"),
        "{limited:?}"
    );
    assert_eq!(c.abort_release(abort("noah")).await.unwrap_err().code(), Code::NotFound, "others are not limited");
    // Reads are not changes.
    c.list_releases(as_user(pb::ListReleasesRequest::default(), "mia", &[])).await.unwrap();

    // Streams: two open watches, the third refused until one closes.
    // A canary that waits for a person at its pause: its watch stays open.
    h.seed_stable("booking-service", "staging", "booking:1").await;
    let id = h.create("booking-service", "staging", "booking:2", "ops").await.unwrap().id;
    let watch = || as_user(pb::WatchReleaseRequest { id: id.clone() }, "mia", &[]);
    let first = c.watch_release(watch()).await.unwrap().into_inner();
    let _second = c.watch_release(watch()).await.unwrap().into_inner();
    let third = c.watch_release(watch()).await.unwrap_err();
    assert_eq!(third.code(), Code::ResourceExhausted, "{third:?}");
    assert!(third.message().contains("already holds 2 open streams"), "{third:?}");
    drop(first);
    common::eventually(5, || {
        let mut c = c.clone();
        let request = watch();
        async move { c.watch_release(request).await.is_ok() }
    })
    .await;
    h.stop().await;
}
