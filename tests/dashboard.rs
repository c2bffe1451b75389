//! The web dashboard in headless Chromium and Firefox (Debian's, each through its WebDriver
//! server) against the real stack: every service a process on loopback, real PostgreSQL, real
//! traffic. Screenshots of each page go to `target/tmp/dashboard-screenshots/`.

use std::{path::PathBuf, process::Stdio, time::Duration};

use fantoccini::{
    Client, ClientBuilder, Locator,
    actions::{InputSource as _, KeyAction, KeyActions},
    key::Key,
};
use hopngo_e2e::{Part, Proc, Stack, StackOptions, Traffic, create_as, free_port, until};
use hopngo_proto::{events::Event, release::ReleasePhase as P};
use hopngo_testkit::{
    access::{caller_token, token},
    db::TestDb,
};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

const CONFIG: &str = r#"
environments:
  - name: staging
    progressDeadline: 60s
  - name: production
    from: staging
    progressDeadline: 60s
    promotion: {requireVerification: false}
    approval: {minApprovals: 1, roles: [release-manager]}
analysisTemplates:
  - name: slo
    metrics:
      - name: error-rate
        severity: critical
        interval: 1s
        initialDelay: 1s
        successCondition: result < 0.01
        failureCondition: result > 0.05
        # A window without canary requests (a busy machine) or with one stray error is no reason
        # to stop a good canary; the faulty one fails outright.
        inconclusiveLimit: 3
        provider: {scrape: {url: "{metrics}", window: 3s, expression: {error-ratio}}}
services:
  - name: booking
    strategy:
      canary:
        steps:
          - setWeight: 50
          - pause: {duration: 3s}
          - setWeight: 100
        analysis: {templates: [slo]}
    local: {command: ["{demo}", --name, booking, --version, "{version}", --port, "{port}"]}
  - name: chat
    strategy:
      canary:
        steps:
          - setWeight: 100
    local: {command: ["{demo}", --name, chat, --version, "{version}", --port, "{port}"]}
"#;

/// The browsers the dashboard is tested in, each driven through its own WebDriver server.
#[derive(Clone, Copy, Debug)]
enum Engine {
    /// Debian's Chromium through its ChromeDriver (packages chromium, chromium-driver).
    Chromium,
    /// Debian's Firefox ESR through geckodriver (scripts/lib.sh builds it from crates.io).
    Firefox,
}

/// Headless browsers of one engine.
struct Browser {
    engine: Engine,
}

/// One browser (its own profile, so its own cookies) and the WebDriver server driving it
/// (geckodriver drives one session at a time).
struct Session {
    client: Client,
    _driver: WebDriver,
}

impl std::ops::Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

struct WebDriver {
    process: Child,
    url: String,
}

impl Drop for WebDriver {
    fn drop(&mut self) {
        let _ = self.process.start_kill();
    }
}

impl WebDriver {
    async fn start(engine: Engine) -> WebDriver {
        let port = free_port();
        let (program, args) = match engine {
            Engine::Chromium => ("chromedriver", vec![format!("--port={port}")]),
            Engine::Firefox => {
                ("geckodriver", vec!["--host".into(), "127.0.0.1".into(), "--port".into(), port.to_string()])
            }
        };
        let process = Command::new(program)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("{program} (installed by scripts/test.sh) does not run: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return WebDriver { process, url };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{program} did not listen on {port}");
    }
}

impl Browser {
    /// A new browser.
    async fn session(&self) -> Session {
        let driver = WebDriver::start(self.engine).await;
        let mut caps = serde_json::Map::new();
        match self.engine {
            Engine::Chromium => caps.insert(
                "goog:chromeOptions".into(),
                json!({
                    "binary": "/usr/bin/chromium",
                    // This machine's network is closed: Chromium's own background connections
                    // are switched off rather than refused many times over.
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--disable-background-networking", "--disable-component-update", "--disable-sync",
                             "--no-first-run", "--disable-quic", "--window-size=1400,2000"],
                }),
            ),
            Engine::Firefox => caps.insert(
                "moz:firefoxOptions".into(),
                json!({
                    "binary": "/usr/bin/firefox-esr",
                    "args": ["-headless", "--width=1400", "--height=2000"],
                    // The same for Firefox's own connections.
                    "prefs": {
                        "app.update.enabled": false,
                        "network.captive-portal-service.enabled": false,
                        "network.connectivity-service.enabled": false,
                        "browser.safebrowsing.update.enabled": false,
                        "datareporting.policy.dataSubmissionEnabled": false,
                    },
                }),
            ),
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| panic!("a {:?} session: {e}", self.engine));
        Session { client, _driver: driver }
    }

    /// Writes what `page` shows to `target/tmp/dashboard-screenshots/<engine>-<name>.png`.
    async fn screenshot(&self, page: &Client, name: &str) {
        let png = page.screenshot().await.unwrap();
        let path = screenshots().join(format!("{}-{name}.png", format!("{:?}", self.engine).to_lowercase()));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn sign_in(page: &Client, dashboard: &str, token: &str) {
    page.goto(dashboard).await.unwrap();
    let box_ = page.wait().for_element(Locator::Css("#token")).await.unwrap();
    box_.send_keys(token).await.unwrap();
    page.find(Locator::Css("#login button[type=submit]")).await.unwrap().click().await.unwrap();
    page.wait().for_element(Locator::Css("#user")).await.unwrap();
}

/// Clicks the element `css` selects once it is there (a live refresh may replace it between
/// finding and clicking: then it is found again).
async fn click(page: &Client, css: &str) {
    for _ in 0..20 {
        let element = page.wait().for_element(Locator::Css(css)).await.unwrap();
        match element.click().await {
            Ok(()) => return,
            Err(e) if e.to_string().contains("stale element") => continue,
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
    panic!("{css} kept being replaced");
}

/// Presses and releases `key` wherever the focus is.
async fn press(page: &Client, key: Key) {
    let keys = KeyActions::new("keyboard".into())
        .then(KeyAction::Down { value: key.into() })
        .then(KeyAction::Up { value: key.into() });
    page.perform_actions(keys).await.unwrap();
}

/// Waits (at most `secs`) until `script` returns true in the page.
async fn until_page(page: &Client, secs: u64, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if page.execute(&format!("return {script};"), vec![]).await.unwrap() == Value::Bool(true) {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            let shown = page.execute("return document.body.innerText;", vec![]).await.unwrap_or_default();
            panic!("{what}: not shown within {secs} s; the page shows: {shown}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cell(service: &str, environment: &str) -> String {
    format!("document.querySelector('td[data-service={service}][data-environment={environment}]')")
}

/// Records, in the page, every state the matrix cell shows (phase and weight) and when (ms since
/// the epoch, this machine's clock, as the events' times are).
const RECORD_CELL: &str = r#"
const [service, environment] = arguments;
window.__shown = [];
const look = () => {
  const td = document.querySelector(`td[data-service=${service}][data-environment=${environment}]`);
  if (!td) return;
  const w = td.querySelector('[data-weight]');
  const state = `${td.dataset.phase}/${w ? w.dataset.weight : '-'}`;
  const last = window.__shown[window.__shown.length - 1];
  if (!last || last.state !== state) window.__shown.push({ state, at: performance.timeOrigin + performance.now() });
};
new MutationObserver(look).observe(document.getElementById('main'), { childList: true, subtree: true });
look();
return true;
"#;

fn millis(e: &Event) -> f64 {
    let t = e.time.as_ref().unwrap();
    t.seconds as f64 * 1000.0 + t.nanos as f64 / 1e6
}

/// For each event, the time until the cell first showed its state or a later event's.
fn render_lags(events: &[Event], shown: &[(String, f64)]) -> Vec<f64> {
    let state = |e: &Event| {
        let d = e.data.clone().unwrap_or_default();
        let active = ["PENDING", "PROGRESSING", "PAUSED", "AWAITING_APPROVAL"].contains(&d.phase.as_str());
        format!("{}/{}", d.phase, if active { d.canary_weight.to_string() } else { "-".into() })
    };
    let mut lags = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let later: Vec<String> = events[i..].iter().map(state).collect();
        if let Some((_, at)) = shown.iter().find(|(s, at)| *at >= millis(e) - 1.0 && later.contains(s)) {
            lags.push(at - millis(e));
        }
    }
    lags
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_releases_live_and_acts_only_for_those_allowed_in_chromium() {
    the_dashboard_shows_releases_live_and_acts_only_for_those_allowed(Engine::Chromium).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_releases_live_and_acts_only_for_those_allowed_in_firefox() {
    the_dashboard_shows_releases_live_and_acts_only_for_those_allowed(Engine::Firefox).await;
}

async fn the_dashboard_shows_releases_live_and_acts_only_for_those_allowed(engine: Engine) {
    let db = TestDb::create().await.unwrap();
    let stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let subscriber = stack.subscribe().await;
    let mut releases = stack.releases().await;
    let dashboard = Proc::dashboard(&stack).await.unwrap();
    let base = format!("{}/", dashboard.http);
    let first = create_as(&mut releases, "alice", "booking", "staging", "1.0.0").await;
    until(&mut releases, &first.id, 60, |r| r.phase == P::Succeeded as i32).await;
    let _traffic = Traffic::start(&stack.address("booking", "staging").await, 50);

    let browser = Browser { engine };
    let alice = browser.session().await;
    sign_in(&alice, &base, &caller_token("alice", &["deployers"])).await;
    until_page(
        &alice,
        10,
        "booking's stable version",
        &format!("{}?.textContent.includes('stable 1.0.0')", cell("booking", "staging")),
    )
    .await;
    // What the first load weighs: the document, its script and style, and the API's answers.
    let weight = alice
        .execute(
            "return performance.getEntriesByType('navigation').concat(performance.getEntriesByType('resource'))
               .filter(e => !e.name.includes('/api/stream')).reduce((n, e) => n + e.transferSize, 0);",
            vec![],
        )
        .await
        .unwrap()
        .as_f64()
        .unwrap();
    eprintln!(
        "{engine:?}: first load: {weight} bytes transferred; embedded assets {:?}",
        hopngo_dashboard::assets::sizes()
    );
    assert!(weight > 0.0 && weight <= 300.0 * 1024.0, "first load {weight} bytes");
    browser.screenshot(&alice, "matrix").await;

    // The matrix follows a faulty canary from its start to its abort, without a reload.
    alice.execute("window.__sameDocument = true; return true;", vec![]).await.unwrap();
    alice.execute(RECORD_CELL, vec![json!("booking"), json!("staging")]).await.unwrap();
    let faulty = create_as(&mut releases, "alice", "booking", "staging", "1.1.0+errors=0.5").await;
    until_page(
        &alice,
        20,
        "the canary progressing",
        &format!("['PENDING','PROGRESSING','PAUSED'].includes({}?.dataset.phase)", cell("booking", "staging")),
    )
    .await;
    let aborted = until(&mut releases, &faulty.id, 60, |r| r.settled).await;
    assert_eq!(aborted.phase, P::Aborted as i32, "{}", aborted.message);
    until_page(&alice, 10, "the abort", &format!("{}?.dataset.phase === 'ABORTED'", cell("booking", "staging"))).await;
    assert_eq!(
        alice.execute("return window.__sameDocument === true;", vec![]).await.unwrap(),
        Value::Bool(true),
        "no reload"
    );
    browser.screenshot(&alice, "matrix-aborted").await;
    // Then a good canary, still on the same page.
    let good = create_as(&mut releases, "alice", "booking", "staging", "1.0.1").await;
    let done = until(&mut releases, &good.id, 60, |r| r.settled).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    until_page(
        &alice,
        10,
        "the good canary's success",
        &format!("{}?.dataset.phase === 'SUCCEEDED'", cell("booking", "staging")),
    )
    .await;
    subscriber
        .until(10, |events| {
            events
                .iter()
                .any(|e| e.release_id == good.id && e.data.as_ref().is_some_and(|d| d.transition == "succeeded"))
        })
        .await;
    let shown: Vec<(String, f64)> =
        serde_json::from_value::<Vec<Value>>(alice.execute("return window.__shown;", vec![]).await.unwrap())
            .unwrap()
            .iter()
            .map(|s| (s["state"].as_str().unwrap().to_string(), s["at"].as_f64().unwrap()))
            .collect();
    let (faulty_events, good_events) = (subscriber.of(&faulty.id), subscriber.of(&good.id));
    let mut lags = render_lags(&faulty_events, &shown);
    lags.extend(render_lags(&good_events, &shown));
    let events = faulty_events.len() + good_events.len();
    assert!(lags.len() >= events / 2, "{} of {events} transitions seen: {shown:?}", lags.len());
    let (p50, p99) = (percentile(&mut lags, 0.5), percentile(&mut lags, 0.99));
    eprintln!(
        "{engine:?}: engine transition → matrix shows it: {} transitions, p50 {p50:.0} ms, p99 {p99:.0} ms, max {:.0} ms",
        lags.len(),
        lags.last().unwrap()
    );

    // The release page charts the failing measurements against the failure threshold.
    alice.goto(&format!("{base}#/releases/{}", faulty.id)).await.unwrap();
    until_page(
        &alice,
        10,
        "the error-rate chart",
        "!!document.querySelector('figure[data-metric=\"error-rate\"] g.point.failing')",
    )
    .await;
    let failing = alice
        .execute(
            "return document.querySelectorAll('figure[data-metric=\"error-rate\"] g.point.failing').length;",
            vec![],
        )
        .await
        .unwrap();
    assert!(failing.as_u64().unwrap() >= 1, "{failing}");
    assert_eq!(
        alice.execute("return document.querySelector('line.threshold-failure').dataset.value;", vec![]).await.unwrap(),
        json!("0.05")
    );
    let figure = alice.find(Locator::Css("#failure-to-stable")).await.unwrap().text().await.unwrap();
    assert!(figure.contains("s from the first failing measurement"), "{figure}");
    let steps = alice.find(Locator::Css("ol.steps")).await.unwrap().text().await.unwrap();
    assert!(steps.contains("setWeight") || steps.contains("weight"), "{steps}");
    browser.screenshot(&alice, "release-aborted").await;

    // A good canary's page compares it with the stable version, measured beside it.
    alice.goto(&format!("{base}#/releases/{}", good.id)).await.unwrap();
    for track in ["canary", "stable"] {
        until_page(
            &alice,
            10,
            &format!("the {track} series"),
            &format!(
                "document.querySelectorAll('figure[data-metric=\"error-rate\"] g.point[data-track={track}]').length > 0"
            ),
        )
        .await;
    }
    browser.screenshot(&alice, "release-canary-vs-stable").await;

    // Events, live, and the escalation of the aborted release acknowledged from the page.
    alice.goto(&format!("{base}#/events")).await.unwrap();
    alice
        .wait()
        .for_element(Locator::Css(&format!(
            "#escalations tr[data-release=\"{}\"] button[data-action=acknowledge]",
            faulty.id
        )))
        .await
        .unwrap();
    let waiting = create_as(&mut releases, "alice", "booking", "production", "1.0.0").await;
    until_page(
        &alice,
        10,
        "the new release's events",
        &format!("[...document.querySelectorAll('#event-rows a')].some(a => a.href.endsWith('{}'))", waiting.id),
    )
    .await;
    click(&alice, &format!("#escalations tr[data-release=\"{}\"] button[data-action=acknowledge]", faulty.id)).await;
    alice.find(Locator::Css("#action-reason")).await.unwrap().send_keys("looking into it").await.unwrap();
    alice.find(Locator::Css("#action-confirm")).await.unwrap().click().await.unwrap();
    until_page(
        &alice,
        10,
        "the acknowledgement",
        &format!(
            "document.querySelector('#escalations tr[data-release=\"{}\"]')?.textContent.includes('✓ alice')",
            faulty.id
        ),
    )
    .await;
    browser.screenshot(&alice, "events").await;
    until(&mut releases, &waiting.id, 30, |r| r.phase == P::AwaitingApproval as i32).await;

    // A viewer sees no action, and the server refuses the one she forges.
    let vera = browser.session().await;
    sign_in(&vera, &base, &token("vera", &["viewers"])).await;
    vera.wait().for_element(Locator::Css("#awaiting a")).await.unwrap();
    assert_eq!(
        vera.execute("return document.querySelectorAll('button[data-action]').length;", vec![]).await.unwrap(),
        json!(0)
    );
    vera.goto(&format!("{base}#/releases/{}", waiting.id)).await.unwrap();
    vera.wait().for_element(Locator::Css("ol.steps")).await.unwrap();
    assert_eq!(
        vera.execute("return document.querySelectorAll('button[data-action]').length;", vec![]).await.unwrap(),
        json!(0)
    );
    browser.screenshot(&vera, "release-as-viewer").await;
    let forge = |csrf: bool| {
        format!(
            "return fetch('/api/releases/{}/approve', {{method: 'POST', headers: {{'content-type': 'application/json'{}}}, body: JSON.stringify({{reason: 'forged'}})}})
               .then(async r => [r.status, (await r.json()).code]);",
            waiting.id,
            if csrf { ", 'x-hopngo-csrf': '1'" } else { "" }
        )
    };
    assert_eq!(vera.execute(&forge(true), vec![]).await.unwrap(), json!([403, "PERMISSION_DENIED"]));
    assert_eq!(vera.execute(&forge(false), vec![]).await.unwrap(), json!([403, "CROSS_SITE"]));
    let still = until(&mut releases, &waiting.id, 5, |_| true).await;
    assert!(still.approvals.is_empty() && still.phase == P::AwaitingApproval as i32, "{still:?}");

    // A deployer may abort but not approve; an approver approves from the page and it proceeds.
    alice.goto(&format!("{base}#/releases/{}", waiting.id)).await.unwrap();
    alice.wait().for_element(Locator::Css("button[data-action=abort]")).await.unwrap();
    assert_eq!(
        alice.execute("return document.querySelectorAll('button[data-action=approve]').length;", vec![]).await.unwrap(),
        json!(0)
    );
    let bob = browser.session().await;
    sign_in(&bob, &base, &token("bob", &["release-manager"])).await;
    bob.goto(&format!("{base}#/releases/{}", waiting.id)).await.unwrap();
    // With the keyboard only: Tab to Approve, Enter; the dialog takes the focus to its reason,
    // Tab past Cancel to Confirm, Enter.
    bob.wait().for_element(Locator::Css("button[data-action=approve]")).await.unwrap();
    let mut tabs = 0;
    while bob.execute("return document.activeElement?.dataset?.action === 'approve';", vec![]).await.unwrap()
        != Value::Bool(true)
    {
        tabs += 1;
        assert!(tabs <= 60, "Approve is not reachable with Tab");
        press(&bob, Key::Tab).await;
    }
    press(&bob, Key::Enter).await;
    until_page(&bob, 5, "the reason box focused", "document.activeElement?.id === 'action-reason'").await;
    bob.active_element().await.unwrap().send_keys("checked the staging run").await.unwrap();
    browser.screenshot(&bob, "approve-dialog").await;
    press(&bob, Key::Tab).await;
    press(&bob, Key::Tab).await;
    assert_eq!(bob.execute("return document.activeElement.id;", vec![]).await.unwrap(), json!("action-confirm"));
    press(&bob, Key::Enter).await;
    let done = until(&mut releases, &waiting.id, 60, |r| r.settled).await;
    assert_eq!(done.phase, P::Succeeded as i32, "{}", done.message);
    assert_eq!(
        done.approvals.iter().map(|a| (a.user.as_str(), a.reason.as_str())).collect::<Vec<_>>(),
        [("bob", "checked the staging run")]
    );
    until_page(
        &bob,
        10,
        "the approved release succeeding",
        "document.querySelector('h1 .phase')?.dataset.phase === 'SUCCEEDED'",
    )
    .await;
    browser.screenshot(&bob, "release-approved").await;

    for page in [alice, vera, bob] {
        page.client.clone().close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_matrix_stays_live_across_a_notifier_restart() {
    let db = TestDb::create().await.unwrap();
    let mut stack = Stack::start(&db.url, CONFIG, StackOptions::default()).await.unwrap();
    let mut releases = stack.releases().await;
    let dashboard = Proc::dashboard(&stack).await.unwrap();
    let base = format!("{}/", dashboard.http);
    let browser = Browser { engine: Engine::Chromium };
    let alice = browser.session().await;
    sign_in(&alice, &base, &caller_token("alice", &["deployers"])).await;
    alice.wait().for_element(Locator::Css("#matrix")).await.unwrap();
    alice.execute("window.__sameDocument = true; return true;", vec![]).await.unwrap();
    // The stream breaks, and while the notifier is down the browser's reconnection is refused
    // (503): browsers give up on such a stream, the page must not.
    stack.kill9(Part::Notifier).await.unwrap();
    until_page(&alice, 10, "the broken stream", "document.getElementById('status').textContent !== 'Live'").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stack.start_part(Part::Notifier).await.unwrap();
    let r = create_as(&mut releases, "alice", "chat", "staging", "1.0.0").await;
    until(&mut releases, &r.id, 60, |r| r.settled).await;
    until_page(
        &alice,
        15,
        "chat's first release",
        &format!("{}?.dataset.phase === 'SUCCEEDED'", cell("chat", "staging")),
    )
    .await;
    assert_eq!(alice.execute("return window.__sameDocument === true;", vec![]).await.unwrap(), Value::Bool(true));
    alice.client.clone().close().await.unwrap();
}

/// One raw HTTP/1.1 request; the answer's status and body.
async fn raw(address: &str, request: String) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut tcp = tokio::net::TcpStream::connect(address.trim_start_matches("http://")).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

fn post(path: &str, cookie: &str, body: &str, csrf: bool) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nContent-Type: application/json\r\n{}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        if csrf { "x-hopngo-csrf: 1\r\n" } else { "" },
        body.len()
    )
}

#[tokio::test]
async fn hostile_requests_get_clear_refusals_before_anything_is_sent_on() {
    // Nothing listens at these addresses: every refusal below happens in the dashboard itself.
    let nowhere = "https://127.0.0.1:1";
    let dashboard = Proc::dashboard_for([nowhere; 4]).await.unwrap();
    let at = dashboard.http.clone();
    let cookie = "hopngo_session=some-token";
    let cases: Vec<(String, u16, &str)> = vec![
        (post("/api/releases/x/abort", cookie, r#"{"reason":"x"}"#, false), 403, "CROSS_SITE"),
        (post("/api/releases/x/abort", "", r#"{"reason":"x"}"#, true), 401, "UNAUTHENTICATED"),
        (post("/api/releases/x/abort", cookie, "{not json", true), 400, ""),
        (
            post(&format!("/api/releases/{}/abort", "a".repeat(200)), cookie, r#"{"reason":"x"}"#, true),
            400,
            "id: must be",
        ),
        (post("/api/releases/x/abort", cookie, r#"{"reason":"a\u0000b"}"#, true), 400, "reason: must be one line"),
        (
            post("/api/releases/x/abort", cookie, &format!(r#"{{"reason":"{}"}}"#, "r".repeat(1001)), true),
            400,
            "reason: is longer",
        ),
        (post("/api/releases/x/explode", cookie, r#"{"reason":"x"}"#, true), 400, "action: must be"),
        (post("/api/releases/x/abort", cookie, &format!(r#"{{"reason":"{}"}}"#, "r".repeat(20_000)), true), 413, ""),
        (post("/api/releases/x/abort", "hopngo_session=a%00b", r#"{"reason":"x"}"#, true), 400, "the token"),
        (post("/api/session", "", r#"{"token":"two words"}"#, true), 400, "token: must be"),
        (post("/api/session", "", &format!(r#"{{"token":"{}"}}"#, "t".repeat(4000)), true), 400, "cookie"),
        (
            format!(
                "GET /api/events?severity=loud HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
            400,
            "severity: must be",
        ),
        (
            format!(
                "GET /api/events?service={} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n",
                "s".repeat(300)
            ),
            400,
            "service: must be",
        ),
    ];
    for (request, status, says) in cases {
        let (got, body) = raw(&at, request.clone()).await;
        assert_eq!(got, status, "{}: {body}", request.lines().next().unwrap());
        assert!(body.contains(says), "{}: {body}", request.lines().next().unwrap());
    }
    // Still serving, with its pages' strict policy.
    let (status, _) = raw(&at, "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(status, 200);
}
