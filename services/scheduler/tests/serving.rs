//! The serving plumbing every service shares, seen from a client: health, reflection (v1 and
//! v1alpha) and graceful shutdown.

mod common;

use std::time::Duration;

use common::Harness;
use tokio_stream::StreamExt as _;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_list_every_service() {
    let h = Harness::start().await;
    let url = format!("http://{}", h.addr);
    let channel = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel.clone());
    for service in ["", "hopngo.release.v1.ReleaseService", "hopngo.config.v1.ConfigService"] {
        let status = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("{response:?}") };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    // Exactly what this port serves: not the other services' contracts.
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "hopngo.config.v1.ConfigService",
            "hopngo.identity.v1.IdentityService",
            "hopngo.release.v1.ReleaseService",
        ]
    );
    // The descriptor of a request type resolves, so `buf curl` / grpcurl can build requests.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol("hopngo.release.v1.CreateReleaseRequest".into())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty())
    );

    use tonic_reflection::pb::v1alpha::{
        ServerReflectionRequest as AlphaRequest, server_reflection_client::ServerReflectionClient as AlphaClient,
        server_reflection_request::MessageRequest as AlphaMessage,
    };
    let mut alpha = AlphaClient::new(channel);
    let request =
        AlphaRequest { host: String::new(), message_request: Some(AlphaMessage::ListServices(String::new())) };
    let mut responses = alpha.server_reflection_info(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    assert!(responses.next().await.unwrap().is_ok(), "v1alpha answers too (older grpcurl)");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_turns_health_not_serving_ends_watch_streams_and_exits() {
    let h = Harness::start().await;
    h.seed_stable("booking-service", "staging", "booking:1.0").await;
    let r = h.create("booking-service", "staging", "booking:1.1", "alice").await.unwrap();
    h.wait(&r.id, 20, |r| r.phase == hopngo_proto::release::ReleasePhase::Paused as i32).await;
    let url = format!("http://{}", h.addr);
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    let mut statuses = health
        .watch(HealthCheckRequest { service: "hopngo.release.v1.ReleaseService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(statuses.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let mut watch = h
        .client()
        .watch_release(hopngo_proto::release::WatchReleaseRequest { id: r.id.clone() })
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    h.shutdown.cancel();
    let status = tokio::time::timeout(Duration::from_secs(5), statuses.next()).await.unwrap().unwrap().unwrap();
    assert_eq!(status.status, ServingStatus::NotServing as i32, "health flips before the server stops");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(item) = watch.next().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "WatchRelease streams end on shutdown");
    let started = std::time::Instant::now();
    h.stop().await;
    assert!(started.elapsed() < Duration::from_secs(10), "exits within the drain timeout");
}
