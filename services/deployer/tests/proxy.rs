//! The weighted proxy with real demo services and real HTTP on loopback.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use hopngo_delivery::routes::Routes;
use hopngo_deployer::{
    demo::{self, Behaviour, VERSION_HEADER},
    proxy::{Proxy, ProxyMetrics, RouteRules, Routing, TRACK_HEADER, Track},
};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio_util::sync::CancellationToken;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

struct Setup {
    proxy: Proxy,
    registry: prometheus::Registry,
    v1: SocketAddr,
    v2: SocketAddr,
    shutdown: CancellationToken,
}

async fn setup(v2_version: &str) -> Setup {
    let shutdown = CancellationToken::new();
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let v1 = demo::spawn(any, "booking", "1.0.0", Behaviour::default(), shutdown.clone()).await.unwrap();
    let b2 = Behaviour::from_version(v2_version).unwrap();
    let v2 = demo::spawn(any, "booking", v2_version, b2, shutdown.clone()).await.unwrap();
    let registry = prometheus::Registry::new();
    let proxy = Proxy::start(any, "booking", "staging", ProxyMetrics::new(&registry), shutdown.clone()).await.unwrap();
    Setup { proxy, registry, v1, v2, shutdown }
}

fn canary(s: &Setup, weight: u32) -> Routing {
    Routing {
        tracks: BTreeMap::from([(Track::Stable, vec![s.v1]), (Track::Canary, vec![s.v2])]),
        primary: Some(Track::Stable),
        weighted: Some((Track::Canary, weight)),
        baseline: false,
        routes: Arc::default(),
    }
}

fn with_routes(mut routing: Routing, yaml: &str) -> Routing {
    let routes: Routes = serde_saphyr::from_str(yaml).unwrap();
    routing.routes = Arc::new(RouteRules::compile(&routes).unwrap());
    routing
}

/// One GET of `url` with `headers`: (version that answered, status).
async fn get(client: &HttpClient, url: &str, headers: &[(&str, &str)]) -> (String, u16) {
    let mut req = http::Request::get(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client.request(req.body(Empty::new()).unwrap()).await.unwrap();
    let version = response.headers().get(VERSION_HEADER).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let status = response.status().as_u16();
    response.into_body().collect().await.unwrap();
    (version, status)
}

/// Sends `n` GETs to `path` with `headers`, one at a time; counts (version, status) pairs.
async fn send_with(proxy: SocketAddr, n: usize, path: &str, headers: &[(&str, &str)]) -> HashMap<(String, u16), u64> {
    let client = client();
    let mut seen = HashMap::new();
    for _ in 0..n {
        *seen.entry(get(&client, &format!("http://{proxy}{path}"), headers).await).or_insert(0) += 1;
    }
    seen
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `n` requests over `concurrency` connections; counts (version, status) pairs.
async fn send(proxy: SocketAddr, n: usize, concurrency: usize, pin: Option<&str>) -> HashMap<(String, u16), u64> {
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let client = client();
        let pin = pin.map(str::to_string);
        let count = n / concurrency + usize::from(worker < n % concurrency);
        tasks.push(tokio::spawn(async move {
            let mut seen = HashMap::new();
            let headers: Vec<(&str, &str)> = pin.iter().map(|track| (TRACK_HEADER, track.as_str())).collect();
            for i in 0..count {
                let answer = get(&client, &format!("http://{proxy}/api/v1/bookings/{i}"), &headers).await;
                *seen.entry(answer).or_insert(0) += 1;
            }
            seen
        }));
    }
    let mut all = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *all.entry(k).or_insert(0) += v;
        }
    }
    all
}

fn metric(registry: &prometheus::Registry, track: &str, class: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "hopngo_proxy_requests_total")
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| {
            let labels: HashMap<_, _> = m.get_label().iter().map(|l| (l.name(), l.value())).collect();
            labels.get("track") == Some(&track) && labels.get("class") == Some(&class)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_weight_25_the_canary_share_is_within_three_sigma() {
    let s = setup("1.1.0").await;
    s.proxy.set_routing(canary(&s, 25));
    let n = 10_000u64;
    let seen = send(s.proxy.addr(), n as usize, 8, None).await;
    let canary = seen.get(&("1.1.0".to_string(), 200)).copied().unwrap_or(0);
    let stable = seen.get(&("1.0.0".to_string(), 200)).copied().unwrap_or(0);
    assert_eq!(canary + stable, n, "every request answered: {seen:?}");
    // Binomial: mean n·p, σ = sqrt(n·p·(1-p)) ≈ 43.3 for n = 10,000, p = 0.25.
    let sigma = (n as f64 * 0.25 * 0.75).sqrt();
    let off = (canary as f64 - n as f64 * 0.25).abs();
    assert!(off <= 3.0 * sigma, "canary got {canary} of {n} ({off:.0} off, 3σ = {:.0})", 3.0 * sigma);
    assert_eq!(metric(&s.registry, "canary", "2xx"), canary, "per-track counts match what the clients saw");
    assert_eq!(metric(&s.registry, "stable", "2xx"), stable);
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_zero_sends_none_and_the_header_pins_a_track() {
    let s = setup("1.1.0").await;
    s.proxy.set_routing(canary(&s, 0));
    let seen = send(s.proxy.addr(), 1000, 4, None).await;
    assert_eq!(seen, HashMap::from([(("1.0.0".to_string(), 200), 1000)]));
    let seen = send(s.proxy.addr(), 200, 2, Some("canary")).await;
    assert_eq!(
        seen,
        HashMap::from([(("1.1.0".to_string(), 200), 200)]),
        "x-hopngo-track: canary reaches it at weight 0"
    );
    s.proxy.set_routing(canary(&s, 100));
    let seen = send(s.proxy.addr(), 200, 2, Some("stable")).await;
    assert_eq!(seen, HashMap::from([(("1.0.0".to_string(), 200), 200)]));
    let seen = send(s.proxy.addr(), 200, 2, None).await;
    assert_eq!(seen, HashMap::from([(("1.1.0".to_string(), 200), 200)]));
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_route_sends_matching_requests_to_the_canary_at_weight_zero() {
    let s = setup("1.1.0").await;
    let header_route =
        "headers:\n  - name: beta\n    match: [{headerName: x-beta-user, headerValue: {regex: '^(yes|true)$'}}]\n";
    s.proxy.set_routing(with_routes(canary(&s, 0), header_route));
    let stable = || HashMap::from([(("1.0.0".to_string(), 200), 50)]);
    let canary_only = HashMap::from([(("1.1.0".to_string(), 200), 50)]);
    assert_eq!(send_with(s.proxy.addr(), 50, "/api/v1/info", &[("X-Beta-User", "true")]).await, canary_only);
    assert_eq!(send_with(s.proxy.addr(), 50, "/api/v1/info", &[("x-beta-user", "maybe")]).await, stable());
    assert_eq!(send_with(s.proxy.addr(), 50, "/api/v1/info", &[]).await, stable());
    // Removing the route (the release ends or aborts) sends everyone back.
    s.proxy.set_routing(canary(&s, 0));
    assert_eq!(send_with(s.proxy.addr(), 50, "/api/v1/info", &[("x-beta-user", "true")]).await, stable());
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_route_copies_its_share_to_the_canary_and_only_stable_answers() {
    let s = setup("1.1.0").await;
    let mirror =
        "mirrors:\n  - name: reads\n    percentage: 40\n    match: [{method: {exact: GET}, path: {prefix: /api/v1}}]\n";
    s.proxy.set_routing(with_routes(canary(&s, 0), mirror));
    let seen = send_with(s.proxy.addr(), 200, "/api/v1/info", &[]).await;
    assert_eq!(seen, HashMap::from([(("1.0.0".to_string(), 200), 200)]), "the canary's answers are discarded");
    // Copies finish after the answers: wait for them. The golden-ratio roll copies 40 of every
    // 100 matching requests (±1).
    let mut mirrored = 0;
    for _ in 0..100 {
        mirrored = metric(&s.registry, "canary", "2xx");
        if mirrored >= 79 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!((79..=81).contains(&mirrored), "{mirrored} of 200 copied at 40%");
    assert_eq!(metric(&s.registry, "stable", "2xx"), 200);
    send_with(s.proxy.addr(), 100, "/healthz", &[]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(metric(&s.registry, "canary", "2xx"), mirrored, "a path outside the match is not copied");
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faulty_canary_shows_up_as_5xx_on_its_track_only() {
    let s = setup("2.0.0+errors=1.0").await;
    s.proxy.set_routing(canary(&s, 50));
    let seen = send(s.proxy.addr(), 2000, 4, None).await;
    let failed = seen.get(&("2.0.0+errors=1.0".to_string(), 500)).copied().unwrap_or(0);
    assert!(failed > 800 && failed < 1200, "{seen:?}");
    assert_eq!(metric(&s.registry, "canary", "5xx"), failed);
    assert_eq!(metric(&s.registry, "canary", "2xx"), 0);
    assert_eq!(metric(&s.registry, "stable", "5xx"), 0);
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_ready_is_503_and_a_dead_replica_is_502() {
    let s = setup("1.1.0").await;
    let seen = send(s.proxy.addr(), 10, 1, None).await;
    assert_eq!(seen, HashMap::from([((String::new(), 503), 10)]), "no routing yet");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    s.proxy.set_routing(Routing {
        tracks: BTreeMap::from([(Track::Stable, vec![dead])]),
        primary: Some(Track::Stable),
        weighted: None,
        baseline: false,
        routes: Arc::default(),
    });
    let seen = send(s.proxy.addr(), 10, 1, None).await;
    assert_eq!(seen, HashMap::from([((String::new(), 502), 10)]));
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switch_and_switch_back_drop_no_requests_under_steady_load() {
    let s = setup("2.0.0").await;
    let blue_green = |active: SocketAddr, preview: SocketAddr| Routing {
        tracks: BTreeMap::from([(Track::Active, vec![active]), (Track::Preview, vec![preview])]),
        primary: Some(Track::Active),
        weighted: None,
        baseline: false,
        routes: Arc::default(),
    };
    s.proxy.set_routing(blue_green(s.v1, s.v2));
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed, proxy) = (stop.clone(), ok.clone(), failed.clone(), s.proxy.addr());
        load.push(tokio::spawn(async move {
            let client = client();
            let mut versions = HashMap::new();
            // Bounded: stops when told, or after 20,000 requests.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let req = http::Request::get(format!("http://{proxy}/api/v1/info")).body(Empty::new()).unwrap();
                match client.request(req).await {
                    Ok(r) if r.status().is_success() => {
                        let v = r.headers()[VERSION_HEADER].to_str().unwrap().to_string();
                        r.into_body().collect().await.unwrap();
                        *versions.entry(v).or_insert(0u64) += 1;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            versions
        }));
    }
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Switch: the preview becomes active (the old version stays, now as preview), then back.
        if i % 2 == 0 {
            s.proxy.set_routing(blue_green(s.v2, s.v1));
        } else {
            s.proxy.set_routing(blue_green(s.v1, s.v2));
        }
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut versions: HashMap<String, u64> = HashMap::new();
    for l in load {
        for (v, n) in l.await.unwrap() {
            *versions.entry(v).or_insert(0) += n;
        }
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across 10 switches ({} ok)",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        versions.get("1.0.0").copied().unwrap_or(0) > 0 && versions.get("2.0.0").copied().unwrap_or(0) > 0,
        "{versions:?}"
    );
    let preview = send(s.proxy.addr(), 20, 1, Some("preview")).await;
    assert_eq!(preview, HashMap::from([(("2.0.0".to_string(), 200), 20)]), "the preview is reachable with the header");
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_generator_is_bounded_and_counts_who_answered() {
    use hopngo_deployer::traffic::{Load, run};
    let s = setup("1.1.0").await;
    s.proxy.set_routing(canary(&s, 50));
    let load = Load {
        url: format!("http://{}/api/v1/info", s.proxy.addr()),
        rate: 400,
        duration: Duration::from_secs(10),
        max_requests: 200,
        timeout: Duration::from_secs(2),
    };
    let started = std::time::Instant::now();
    let tally = run(&load, CancellationToken::new()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "stops at max_requests (200 at 400/s is 0.5 s)");
    assert_eq!(tally.values().sum::<u64>(), 200);
    assert_eq!(tally.get(&("1.0.0".to_string(), 200)), Some(&100));
    assert_eq!(tally.get(&("1.1.0".to_string(), 200)), Some(&100));
    let load = Load { duration: Duration::from_millis(300), max_requests: 1_000_000, ..load };
    let tally = run(&load, CancellationToken::new()).await.unwrap();
    let n: u64 = tally.values().sum();
    assert!((100..=130).contains(&n), "stops at its duration: {n} requests in 300 ms at 400/s");
    assert!(run(&Load { rate: 0, ..load }, CancellationToken::new()).await.unwrap_err().contains("rate"));
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_tests_check_the_pinned_track_and_its_version() {
    use hopngo_deployer::smoke::{Smoke, run};
    let s = setup("2.0.0+errors=1").await;
    s.proxy.set_routing(canary(&s, 0));
    let smoke = |track: &str, version: &str| Smoke {
        address: s.proxy.addr().to_string(),
        track: track.into(),
        expect_version: version.into(),
        paths: vec!["/healthz".into(), "/api/v1/info".into()],
        requests: 20,
        timeout: Duration::from_secs(2),
    };
    let ok = run(&smoke("stable", "1.0.0")).await.unwrap();
    assert!(ok.starts_with("20 requests to the stable track of 127.0.0.1:"), "{ok}");
    // The canary at weight 0 is still reached (pinned), and its API answers fail.
    let err = run(&smoke("canary", "2.0.0+errors=1")).await.unwrap_err();
    assert!(err.contains("of 20 requests failed: GET /api/v1/info: HTTP 500"), "{err}");
    // The right answers from the wrong version fail too (the canary is not what was deployed).
    let err = run(&smoke("stable", "1.1.0")).await.unwrap_err();
    assert!(err.contains("answered by 1.0.0 instead of 1.1.0"), "{err}");
    assert!(run(&Smoke { address: String::new(), ..smoke("stable", "") }).await.unwrap_err().contains("no address"));
    s.shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_breaks_under_load_passes_its_smoke_tests_first() {
    use hopngo_deployer::smoke::{Smoke, run};
    let s = setup("2.0.0+errors=1,errorsAfter=10").await;
    s.proxy.set_routing(canary(&s, 0));
    let smoke = Smoke {
        address: s.proxy.addr().to_string(),
        track: "canary".into(),
        expect_version: "2.0.0+errors=1,errorsAfter=10".into(),
        paths: vec!["/healthz".into(), "/api/v1/info".into()],
        requests: 20,
        timeout: Duration::from_secs(2),
    };
    run(&smoke).await.unwrap();
    let seen = send(s.proxy.addr(), 50, 1, Some("canary")).await;
    assert_eq!(seen, HashMap::from([(("2.0.0+errors=1,errorsAfter=10".to_string(), 500), 50)]));
    s.shutdown.cancel();
}
