//! The authentication layer's refusals (no credential, a bad one, a permission missing, a limit) written
//! to the audit log like every other request. They are queued and written by one task, off the
//! request path; a flood of bad credentials fills the bounded queue, and then refusals are counted
//! (`hopngo_audit_refusals_dropped_total`) and dropped rather than slowing every call or growing
//! without bound.

use hopngo_kit::auth::{Refusal, RefusalLog};
use prometheus::{IntCounter, Registry};
use tokio::sync::mpsc;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::store::{AuditedRequest, Store};

/// Refusals waiting to be written.
const QUEUE: usize = 1024;

/// Queues refusals for the audit log.
pub struct RefusalWriter {
    queue: mpsc::Sender<AuditedRequest>,
    dropped: IntCounter,
}

impl RefusalWriter {
    /// A writer whose task (on `tracker`) ends when the writer is dropped, or when `stop` is
    /// cancelled (after the server drained: what is queued then is still written).
    pub fn spawn(store: Store, registry: &Registry, tracker: &TaskTracker, stop: CancellationToken) -> RefusalWriter {
        let dropped = IntCounter::new(
            "hopngo_audit_refusals_dropped_total",
            "Refused calls not written to the audit log because its queue was full",
        )
        .expect("a valid metric");
        if let Err(e) = registry.register(Box::new(dropped.clone())) {
            tracing::warn!(error = %e, "registering the dropped-refusals counter");
        }
        let (queue, mut rows) = mpsc::channel::<AuditedRequest>(QUEUE);
        tracker.spawn(async move {
            loop {
                let row = tokio::select! {
                    row = rows.recv() => row,
                    () = stop.cancelled() => rows.try_recv().ok(),
                };
                let Some(row) = row else { break };
                if let Err(e) = store.audit_request(&row).await {
                    tracing::warn!(error = %e, rpc = %row.rpc, "a refused call was not written to the audit log");
                }
            }
        });
        RefusalWriter { queue, dropped }
    }
}

/// The audit row of a refusal: the actor is the user the credential proved or, when it proved
/// nobody, `unauthenticated@<address>`; the action is the RPC's method.
pub fn audit_row(refusal: Refusal) -> AuditedRequest {
    let method = refusal.rpc.rsplit('/').next().unwrap_or_default().to_string();
    let (actor, issuer, subject, groups) = match refusal.principal {
        Some(p) => (p.user, p.issuer, p.subject, p.groups),
        None => {
            let from = refusal.remote.map(|a| a.ip().to_string()).unwrap_or_else(|| "unknown".into());
            (format!("unauthenticated@{from}"), String::new(), String::new(), Vec::new())
        }
    };
    AuditedRequest {
        actor,
        action: method,
        outcome: "refused",
        message: format!("{:?}: {}", refusal.code, refusal.reason),
        issuer,
        subject,
        groups,
        rpc: refusal.rpc,
        ..AuditedRequest::default()
    }
}

impl RefusalLog for RefusalWriter {
    fn refused(&self, refusal: Refusal) {
        if self.queue.try_send(audit_row(refusal)).is_err() {
            self.dropped.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use hopngo_kit::auth::Principal;

    use super::*;

    #[test]
    fn refusals_name_who_or_where_from() {
        let rpc = "/hopngo.release.v1.ReleaseService/ApplyConfig".to_string();
        let anonymous = audit_row(Refusal {
            rpc: rpc.clone(),
            code: tonic::Code::Unauthenticated,
            reason: "the token has expired".into(),
            principal: None,
            remote: Some("10.1.2.3:5555".parse().unwrap()),
        });
        assert_eq!(
            (anonymous.actor.as_str(), anonymous.action.as_str(), anonymous.message.as_str()),
            ("unauthenticated@10.1.2.3", "ApplyConfig", "Unauthenticated: the token has expired")
        );
        let alice = Principal {
            user: "alice".into(),
            groups: vec!["developers".into()],
            issuer: "https://issuer".into(),
            subject: "s-1".into(),
        };
        let denied = audit_row(Refusal {
            rpc,
            code: tonic::Code::PermissionDenied,
            reason: "alice lacks the admin permission".into(),
            principal: Some(alice),
            remote: None,
        });
        assert_eq!(
            (denied.actor.as_str(), denied.issuer.as_str(), denied.subject.as_str()),
            ("alice", "https://issuer", "s-1")
        );
        assert_eq!(denied.groups, vec!["developers".to_string()]);
        assert_eq!(denied.outcome, "refused");
    }
}
