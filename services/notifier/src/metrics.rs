//! The notifier's own metrics, registered in the process registry served on `/metrics`.

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Counters and gauges of the log, subscriptions, webhooks and escalation.
#[derive(Clone)]
pub struct NotifierMetrics {
    /// Events appended to the log.
    pub appended: IntCounter,
    /// Open gRPC subscriptions.
    pub subscribers: IntGauge,
    /// Subscriptions ended by the server, by reason (`slow`: cut off for not reading).
    pub disconnects: IntCounterVec,
    /// Webhook delivery attempts by outcome (`delivered`, `retry`, `dead-letter`).
    pub deliveries: IntCounterVec,
    /// Webhook request duration by outcome.
    pub delivery_seconds: HistogramVec,
    /// Escalation events by level.
    pub escalations: IntCounterVec,
    /// Escalated conditions nobody has acknowledged.
    pub escalations_open: IntGauge,
    /// 1 while this replica is the one delivering webhooks.
    pub webhook_leader: IntGauge,
}

impl NotifierMetrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> NotifierMetrics {
        let m = NotifierMetrics {
            appended: IntCounter::new("hopngo_notifier_events_appended_total", "Events appended to the log")
                .expect("static"),
            subscribers: IntGauge::new("hopngo_notifier_subscribers", "Open gRPC subscriptions").expect("static"),
            disconnects: IntCounterVec::new(
                Opts::new(
                    "hopngo_notifier_subscriber_disconnects_total",
                    "Subscriptions ended by the server, by reason",
                ),
                &["reason"],
            )
            .expect("static"),
            deliveries: IntCounterVec::new(
                Opts::new("hopngo_notifier_webhook_attempts_total", "Webhook delivery attempts by outcome"),
                &["outcome"],
            )
            .expect("static"),
            delivery_seconds: HistogramVec::new(
                HistogramOpts::new("hopngo_notifier_webhook_request_seconds", "Webhook request duration by outcome")
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]),
                &["outcome"],
            )
            .expect("static"),
            escalations: IntCounterVec::new(
                Opts::new("hopngo_notifier_escalations_total", "Escalation events by level"),
                &["level"],
            )
            .expect("static"),
            escalations_open: IntGauge::new(
                "hopngo_notifier_escalations_open",
                "Releases whose condition was escalated and nobody has acknowledged",
            )
            .expect("static"),
            webhook_leader: IntGauge::new(
                "hopngo_notifier_webhook_leader",
                "1 while this replica delivers the webhooks (one replica does), 0 otherwise",
            )
            .expect("static"),
        };
        registry.register(Box::new(m.appended.clone())).expect("first registration");
        registry.register(Box::new(m.subscribers.clone())).expect("first registration");
        registry.register(Box::new(m.disconnects.clone())).expect("first registration");
        registry.register(Box::new(m.deliveries.clone())).expect("first registration");
        registry.register(Box::new(m.delivery_seconds.clone())).expect("first registration");
        registry.register(Box::new(m.escalations.clone())).expect("first registration");
        registry.register(Box::new(m.escalations_open.clone())).expect("first registration");
        registry.register(Box::new(m.webhook_leader.clone())).expect("first registration");
        m
    }
}
