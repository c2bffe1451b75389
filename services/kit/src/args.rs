//! Flag groups shared by every service binary (each flag also reads an environment variable).

use std::net::SocketAddr;

/// Where a service listens.
#[derive(Clone, Debug, clap::Args)]
pub struct ListenArgs {
    /// Address of the gRPC server.
    #[arg(long = "listen", env = "HOPNGO_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`); `off` disables it.
    #[arg(long = "admin-listen", env = "HOPNGO_ADMIN_LISTEN", default_value = "127.0.0.1:9464")]
    pub admin_listen: String,
    /// How long in-flight RPCs and streams may take to finish after a shutdown signal.
    #[arg(long = "drain-timeout", env = "HOPNGO_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Address of a plain-text gRPC server with nothing but `grpc.health.v1` (the same statuses
    /// as the main port), for Kubernetes' gRPC probes, which cannot speak TLS. Off when unset.
    #[arg(long = "health-listen", env = "HOPNGO_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// After a shutdown signal, keep accepting calls this long while health says NOT_SERVING,
    /// so load balancers (a Kubernetes Service's endpoints) stop sending new connections before
    /// the listener closes; then drain. 0 closes at once.
    #[arg(long = "shutdown-delay", env = "HOPNGO_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: std::time::Duration,
}

impl ListenArgs {
    /// The admin address, or `None` when disabled.
    pub fn admin_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        if self.admin_listen == "off" {
            return Ok(None);
        }
        Ok(Some(self.admin_listen.parse().map_err(|e| anyhow::anyhow!("--admin-listen {:?}: {e}", self.admin_listen))?))
    }
}

/// Log and trace settings.
#[derive(Clone, Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Log filter (`info`, `hopngo_scheduler=debug,info`, ...).
    #[arg(long = "log", env = "HOPNGO_LOG", default_value = "info")]
    pub log_filter: String,
    /// Log format.
    #[arg(long = "log-format", env = "HOPNGO_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for traces (e.g. `http://127.0.0.1:4317`); no export when unset.
    #[arg(long = "otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Plain,
    /// One JSON object per line.
    Json,
}

/// Parses `250ms`, `30s`, `5m`, `1h30m`, `2d`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let mut total = std::time::Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!("{text:?} is not a duration (use e.g. 30s, 5m, 1h30m)"));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| format!("{text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => std::time::Duration::from_millis(value),
            "s" => std::time::Duration::from_secs(value),
            "m" => std::time::Duration::from_secs(value.saturating_mul(60)),
            "h" => std::time::Duration::from_secs(value.saturating_mul(3600)),
            "d" => std::time::Duration::from_secs(value.saturating_mul(86400)),
            "" => return Err(format!("{text:?}: missing unit after {value} (ms, s, m, h, d)")),
            other => return Err(format!("{text:?}: unknown unit {other:?} (ms, s, m, h, d)")),
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `250ms`).
pub fn format_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn durations_round_trip() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5").is_ok() && parse_duration("").is_err());
    }
}
