//! How an event leaves the notifier over HTTP: a CDEvent (context, subject, customData) bound to
//! CloudEvents in binary mode (`ce-*` headers, the CDEvent as the JSON body) or structured mode
//! (`application/cloudevents+json`), or a Slack incoming-webhook message a person can read.

use hopngo_proto::{
    event_types as types,
    events::{Event, ReleaseEventData},
    transitions::{TransitionKind, UnknownTransition},
};
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

/// CDEvents specification version of the bodies (the version the emitted types come from).
pub const CDEVENTS_SPEC_VERSION: &str = "0.6.0-draft";

/// A webhook's body format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// CloudEvents binary mode.
    CloudEvents,
    /// CloudEvents structured mode.
    CloudEventsStructured,
    /// Slack incoming webhook.
    Slack,
}

impl Format {
    /// Parses a format name; empty is `cloudevents`.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s {
            "" | "cloudevents" => Ok(Format::CloudEvents),
            "cloudevents-structured" => Ok(Format::CloudEventsStructured),
            "slack" => Ok(Format::Slack),
            other => Err(format!("{other:?} is not a format; use cloudevents, cloudevents-structured or slack")),
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::CloudEvents => "cloudevents",
            Format::CloudEventsStructured => "cloudevents-structured",
            Format::Slack => "slack",
        }
    }
}

/// An HTTP request body with its headers (signature headers come on top).
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// Headers, `content-type` first.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// Links to a release, from a template with `{release_id}`; none when no template is configured.
#[derive(Clone, Debug, Default)]
pub struct Links {
    /// Template.
    pub release_url_template: String,
}

impl Links {
    /// The release's link.
    pub fn release(&self, release_id: &str) -> Option<String> {
        (!self.release_url_template.is_empty()).then(|| self.release_url_template.replace("{release_id}", release_id))
    }
}

fn rfc3339(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(super::instant).and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

fn severity_name(s: i32) -> &'static str {
    match s {
        4 => "critical",
        3 => "error",
        2 => "warning",
        _ => "info",
    }
}

/// A package URL for a service's artifact (`pkg:generic/<service>@<artifact>`).
pub fn purl(service: &str, artifact: &str) -> String {
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    format!("pkg:generic/{}@{}", encode(service), encode(artifact))
}

/// The CDEvent for an event: context, a subject whose content follows the CDEvents schema of the
/// type, and the release state as `customData`.
pub fn cdevent(e: &Event, links: &Links) -> Value {
    let d = e.data.clone().unwrap_or_default();
    let link = links.release(&e.release_id);
    let environment = json!({ "id": e.environment, "source": e.source });
    let urn = |user: &str| format!("urn:hopngo:user:{user}");
    let (subject_id, content) = match e.r#type.as_str() {
        types::SERVICE_DEPLOYED | types::SERVICE_UPGRADED | types::SERVICE_ROLLEDBACK => {
            (e.service.clone(), json!({ "environment": environment, "artifactId": purl(&e.service, &d.artifact) }))
        }
        types::APPROVAL_CREATED | types::APPROVAL_UPDATED | types::APPROVAL_CLOSED => {
            let mut c = json!({ "requestor": urn(&d.actor) });
            if let Some(link) = &link {
                c["approvalDetailsUrl"] = json!(link);
                c["resourceTargetUrl"] = json!(link);
            }
            if e.r#type == types::APPROVAL_UPDATED {
                c["responder"] = json!(urn(&d.actor));
                c["decision"] =
                    json!(if d.transition == TransitionKind::Rejected.as_str() { "rejected" } else { "approved" });
            }
            if e.r#type == types::APPROVAL_CLOSED {
                c["responder"] = json!(urn(&d.actor));
                c["status"] =
                    json!(if d.transition == TransitionKind::Rejected.as_str() { "rejected" } else { "approved" });
            }
            (e.release_id.clone(), c)
        }
        _ => (e.release_id.clone(), json!({})),
    };
    json!({
        "context": {
            "specversion": CDEVENTS_SPEC_VERSION,
            "id": e.id,
            "source": e.source,
            "type": e.r#type,
            "timestamp": rfc3339(e.time.as_ref()),
        },
        "subject": { "id": subject_id, "source": e.source, "content": content },
        "customData": release_data(e, &d, link.as_deref()),
        "customDataContentType": "application/json",
    })
}

fn release_data(e: &Event, d: &ReleaseEventData, link: Option<&str>) -> Value {
    let mut v = json!({
        "releaseId": e.release_id,
        "sequence": e.sequence,
        "service": e.service,
        "environment": e.environment,
        "severity": severity_name(e.severity),
        "revision": d.revision,
        "artifact": d.artifact,
        "stableArtifact": d.stable_artifact,
        "phase": d.phase,
        "completion": d.completion,
        "stepIndex": d.step_index,
        "stepName": d.step_name,
        "canaryWeight": d.canary_weight,
        "actor": d.actor,
        "message": d.message,
        "transition": d.transition,
        "releaseGroupId": d.release_group_id,
    });
    if let Some(link) = link {
        v["link"] = json!(link);
    }
    if !e.extensions.is_empty() {
        v["extensions"] = json!(e.extensions);
    }
    v
}

/// The CloudEvents `subject` of the HTTP bindings: the CDEvent's subject id.
fn ce_subject(cd: &Value) -> String {
    cd["subject"]["id"].as_str().unwrap_or_default().to_string()
}

/// Percent-encodes a header value as the CloudEvents HTTP binding asks (space to `~`, `"`, `%`,
/// and anything outside printable ASCII).
fn header_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'!'..=b'~' if b != b'"' && b != b'%' => (b as char).to_string(),
            b' ' => " ".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Renders an event for a webhook of `format`.
pub fn render(format: Format, e: &Event, links: &Links) -> Rendered {
    match format {
        Format::CloudEvents => {
            let cd = cdevent(e, links);
            let mut headers = vec![
                ("content-type".to_string(), "application/json".to_string()),
                ("ce-specversion".into(), "1.0".into()),
                ("ce-id".into(), header_value(&e.id)),
                ("ce-source".into(), header_value(&e.source)),
                ("ce-type".into(), header_value(&e.r#type)),
                ("ce-subject".into(), header_value(&ce_subject(&cd))),
                ("ce-time".into(), rfc3339(e.time.as_ref())),
            ];
            for (k, v) in &e.extensions {
                headers.push((format!("ce-{k}"), header_value(v)));
            }
            Rendered { headers, body: serde_json::to_vec(&cd).expect("JSON values serialize") }
        }
        Format::CloudEventsStructured => {
            let cd = cdevent(e, links);
            let mut envelope = json!({
                "specversion": "1.0",
                "id": e.id,
                "source": e.source,
                "type": e.r#type,
                "subject": ce_subject(&cd),
                "time": rfc3339(e.time.as_ref()),
                "datacontenttype": "application/json",
            });
            for (k, v) in &e.extensions {
                envelope[k.as_str()] = json!(v);
            }
            envelope["data"] = cd;
            Rendered {
                headers: vec![("content-type".into(), "application/cloudevents+json; charset=utf-8".into())],
                body: serde_json::to_vec(&envelope).expect("JSON values serialize"),
            }
        }
        Format::Slack => {
            let (text, detail) = slack_text(e, links);
            let mut blocks = vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })];
            if !detail.is_empty() {
                blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": detail }] }));
            }
            Rendered {
                headers: vec![("content-type".into(), "application/json".into())],
                body: serde_json::to_vec(&json!({ "text": text, "blocks": blocks })).expect("JSON values serialize"),
            }
        }
    }
}

/// Escapes the three characters Slack's mrkdwn treats as control characters.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// What happened, in a few words.
fn summary(e: &Event, d: &ReleaseEventData) -> String {
    let step = if d.step_name.is_empty() { String::new() } else { format!(" at step {}", slack_escape(&d.step_name)) };
    match (e.r#type.as_str(), d.transition.parse::<TransitionKind>()) {
        (types::ESCALATION_ESCALATED, _) => format!(
            "needs a person: *{}*, escalated to *{}*",
            e.extensions.get("escalationcondition").map(String::as_str).unwrap_or("open"),
            e.extensions.get("escalationlevel").map(String::as_str).unwrap_or("?")
        ),
        (types::ESCALATION_ACKNOWLEDGED, _) => format!("acknowledged by {}", slack_escape(&d.actor)),
        (_, Ok(TransitionKind::Created)) => "created".into(),
        (_, Ok(TransitionKind::Started)) => "started".into(),
        (_, Ok(TransitionKind::StepCompleted)) => format!("completed{step}"),
        (_, Ok(TransitionKind::StepSkipped)) => format!("skipped{step}"),
        (_, Ok(TransitionKind::WeightChanged)) => format!("canary now takes {}% of traffic", d.canary_weight),
        (_, Ok(TransitionKind::Paused)) => format!("paused{step}"),
        (_, Ok(TransitionKind::Waiting)) => format!("waiting{step} (timed pause)"),
        (_, Ok(TransitionKind::Promoted)) => format!("promoted by {}", slack_escape(&d.actor)),
        (_, Ok(TransitionKind::AwaitingApproval)) => format!("waits for approval{step}"),
        (_, Ok(TransitionKind::ApprovalRecorded)) => format!("approval recorded by {}", slack_escape(&d.actor)),
        (_, Ok(TransitionKind::Approved)) => format!("approved by {}", slack_escape(&d.actor)),
        (_, Ok(TransitionKind::Rejected)) => format!("rejected by {}", slack_escape(&d.actor)),
        (_, Ok(TransitionKind::AnalysisStarted)) => format!("analysis started{step}"),
        (_, Ok(TransitionKind::AnalysisCompleted)) => format!("analysis finished{step}"),
        (_, Ok(TransitionKind::Aborted)) => {
            format!("*aborted*{step}; traffic goes back to `{}`", slack_escape(&d.stable_artifact))
        }
        (_, Ok(TransitionKind::RolledBack)) => "rolled back".into(),
        (_, Ok(TransitionKind::Succeeded)) => "is live".into(),
        (_, Ok(TransitionKind::Failed)) => {
            "*FAILED*: returning to stable could not be confirmed, a person must act".into()
        }
        (_, Ok(TransitionKind::Superseded)) => "superseded by a newer release".into(),
        (_, Ok(TransitionKind::Retried)) => "retried".into(),
        (_, Ok(TransitionKind::SchemaUndone)) => "schema migrations undone".into(),
        (_, Ok(TransitionKind::SchemaUndoFailed)) => "*undoing the schema migrations failed*".into(),
        (_, Ok(TransitionKind::SchemaFrozen)) => "schema left as it is (frozen)".into(),
        (_, Err(UnknownTransition(other))) => slack_escape(&other),
    }
}

fn slack_text(e: &Event, links: &Links) -> (String, String) {
    let d = e.data.clone().unwrap_or_default();
    let icon = match e.severity {
        4 => ":rotating_light:",
        3 => ":x:",
        2 => ":warning:",
        _ => ":large_blue_circle:",
    };
    let mut text = format!(
        "{icon} *{}* in *{}*: release {} `{}` {}",
        slack_escape(&e.service),
        slack_escape(&e.environment),
        d.revision,
        slack_escape(&d.artifact),
        summary(e, &d)
    );
    if !d.message.is_empty() {
        text.push_str(&format!("\n>{}", slack_escape(&d.message).replace('\n', "\n>")));
    }
    let open = match links.release(&e.release_id) {
        Some(url) => format!("<{url}|Open the release>"),
        None => format!("`hopctl get {}`", e.release_id),
    };
    text.push_str(&format!("\n{open}"));
    let detail = format!("{} · {} · {}", d.phase, e.r#type, rfc3339(e.time.as_ref()));
    (text, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: &str, transition: &str) -> Event {
        Event {
            id: "0190c0de-0000-7000-8000-00000000000a".into(),
            source: "/hopngo/scheduler".into(),
            spec_version: "1.0".into(),
            r#type: t.into(),
            subject: "0190c0de-0000-7000-8000-000000000001".into(),
            time: Some(prost_types::Timestamp { seconds: 1_764_633_600, nanos: 0 }),
            release_id: "0190c0de-0000-7000-8000-000000000001".into(),
            sequence: 7,
            service: "booking-service".into(),
            environment: "staging".into(),
            severity: 3,
            data: Some(ReleaseEventData {
                revision: 4,
                artifact: "booking:1.4.0".into(),
                stable_artifact: "booking:1.3.2".into(),
                phase: "ABORTED".into(),
                transition: transition.into(),
                step_name: "canary-25".into(),
                actor: "alice".into(),
                message: "error rate 7% > 5% <bad>".into(),
                ..Default::default()
            }),
            extensions: Default::default(),
        }
    }

    fn header<'a>(r: &'a Rendered, name: &str) -> &'a str {
        r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap()
    }

    #[test]
    fn binary_mode_puts_the_context_in_headers_and_the_cdevent_in_the_body() {
        let links = Links { release_url_template: "https://console.example/releases/{release_id}".into() };
        let r = render(Format::CloudEvents, &event(types::SERVICE_UPGRADED, "succeeded"), &links);
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(header(&r, "ce-specversion"), "1.0");
        assert_eq!(header(&r, "ce-type"), types::SERVICE_UPGRADED);
        assert_eq!(header(&r, "ce-subject"), "booking-service");
        assert_eq!(header(&r, "ce-time"), "2025-12-02T00:00:00Z");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["context"]["type"], types::SERVICE_UPGRADED);
        assert_eq!(body["context"]["specversion"], CDEVENTS_SPEC_VERSION);
        assert_eq!(body["subject"]["content"]["environment"]["id"], "staging");
        assert_eq!(body["subject"]["content"]["artifactId"], "pkg:generic/booking-service@booking%3A1.4.0");
        assert_eq!(body["customData"]["releaseId"], "0190c0de-0000-7000-8000-000000000001");
        assert_eq!(body["customData"]["sequence"], 7);
        assert_eq!(body["customData"]["link"], "https://console.example/releases/0190c0de-0000-7000-8000-000000000001");
    }

    #[test]
    fn structured_mode_wraps_the_cdevent() {
        let mut e = event(types::APPROVAL_CLOSED, "rejected");
        e.extensions.insert("escalationlevel".into(), "on-call".into());
        let r = render(Format::CloudEventsStructured, &e, &Links::default());
        assert!(header(&r, "content-type").starts_with("application/cloudevents+json"));
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["subject"], e.release_id);
        assert_eq!(v["escalationlevel"], "on-call");
        assert_eq!(v["data"]["subject"]["content"]["status"], "rejected");
        assert_eq!(v["data"]["subject"]["content"]["requestor"], "urn:hopngo:user:alice");
    }

    #[test]
    fn slack_message_is_readable_escaped_and_links_the_release() {
        let links = Links { release_url_template: "https://console.example/r/{release_id}".into() };
        let r = render(Format::Slack, &event(types::RELEASE_ABORTED, "aborted"), &links);
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.starts_with(":x: *booking-service* in *staging*: release 4 `booking:1.4.0` *aborted* at step canary-25; traffic goes back to `booking:1.3.2`"), "{text}");
        assert!(text.contains("error rate 7% &gt; 5% &lt;bad&gt;"), "{text}");
        assert!(text.contains("<https://console.example/r/0190c0de-0000-7000-8000-000000000001|Open the release>"));
        assert_eq!(v["blocks"][0]["text"]["type"], "mrkdwn");
        let without_link = render(Format::Slack, &event(types::RELEASE_ABORTED, "aborted"), &Links::default());
        let v: Value = serde_json::from_slice(&without_link.body).unwrap();
        assert!(v["text"].as_str().unwrap().contains("`hopctl get 0190c0de-0000-7000-8000-000000000001`"));
    }

    #[test]
    fn header_values_are_percent_encoded() {
        assert_eq!(header_value("a b\"c%é"), "a b%22c%25%C3%A9");
        assert_eq!(Format::parse("slack"), Ok(Format::Slack));
        assert!(Format::parse("teams").is_err());
    }
}
