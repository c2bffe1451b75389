//! Between the contract's messages and the notifier's own types.

use hopngo_proto::notifier as pb;
use time::OffsetDateTime;

use crate::{
    domain::{
        cursor,
        escalation::{Policy, ReleaseState},
        filter::Filter,
    },
    error::NotifierError,
    store::{DeliveryRecord, StoredWebhook},
};

/// A protobuf timestamp.
pub fn timestamp(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_timestamp(), nanos: t.nanosecond() as i32 }
}

/// A caller's filter, checked; `field` is where it sits in the request.
pub fn filter(f: Option<pb::EventFilter>, field: &str, policy: &Policy) -> Result<Filter, NotifierError> {
    let f = f.unwrap_or_default();
    Filter {
        services: f.services,
        environments: f.environments,
        types: f.types,
        min_severity: f.min_severity,
        release_id: f.release_id,
        escalation_levels: f.escalation_levels,
    }
    .checked(&policy.level_names())
    .map_err(|(sub, reason)| NotifierError::invalid(format!("{field}.{sub}"), reason))
}

fn filter_to_proto(f: &Filter) -> pb::EventFilter {
    pb::EventFilter {
        services: f.services.clone(),
        environments: f.environments.clone(),
        types: f.types.clone(),
        min_severity: f.min_severity,
        release_id: f.release_id.clone(),
        escalation_levels: f.escalation_levels.clone(),
    }
}

/// A webhook; the secret only when `with_secret` (the create response).
pub fn webhook(w: &StoredWebhook, with_secret: bool) -> pb::Webhook {
    pb::Webhook {
        id: w.id.to_string(),
        url: w.url.clone(),
        format: w.format.clone(),
        filter: Some(filter_to_proto(&w.filter)),
        secret: if with_secret { w.secret.clone() } else { String::new() },
        created_at: Some(timestamp(w.created_at)),
        cursor: cursor::format(w.cursor),
        delivered: w.delivered,
        dead_lettered: w.dead_lettered,
    }
}

/// A delivery attempt.
pub fn delivery(d: &DeliveryRecord) -> pb::Delivery {
    pb::Delivery {
        webhook_id: d.webhook_id.to_string(),
        event_id: d.event_id.clone(),
        attempt: d.attempt,
        status_code: d.status_code,
        message: d.message.clone(),
        attempted_at: Some(timestamp(d.attempted_at)),
        delivered: d.delivered,
        dead_lettered: d.dead_lettered,
        cursor: cursor::format(d.position),
    }
}

/// An escalation.
pub fn escalation(s: &ReleaseState, policy: &Policy) -> pb::Escalation {
    let next = s.next_level(policy);
    pb::Escalation {
        release_id: s.release_id.clone(),
        service: s.service.clone(),
        environment: s.environment.clone(),
        condition: s.condition.map(|(c, _)| c.as_str().to_string()).unwrap_or_default(),
        since: s.condition.map(|(_, since)| timestamp(since)),
        levels_notified: policy.levels.iter().take(s.levels_notified).map(|l| l.name.clone()).collect(),
        next_level: next.map(|(l, _)| l.name.clone()).unwrap_or_default(),
        next_at: next.map(|(_, at)| timestamp(at)),
        acknowledged_by: s.ack.as_ref().map(|a| a.by.clone()).unwrap_or_default(),
        acknowledged_at: s.ack.as_ref().map(|a| timestamp(a.at)),
        comment: s.ack.as_ref().map(|a| a.comment.clone()).unwrap_or_default(),
    }
}
