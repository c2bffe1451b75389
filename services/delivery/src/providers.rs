//! What metric providers may reach and how jobs run (`providers:` in the delivery config). The
//! analyzer measures only what this allows: HTTP providers (Prometheus, scrape, web) only hosts
//! on `allowedHosts`, never a link-local or cloud-metadata address; jobs only the commands the
//! config's templates and verify steps declare, with a scrubbed environment, optionally as an
//! unprivileged user.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

use crate::{DeliveryConfig, JobProvider};

/// Variables of the analyzer's own environment a job sees when the config names none.
pub const DEFAULT_JOB_ENVIRONMENT: [&str; 5] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ"];

/// Host names of cloud metadata services: never reachable from a provider.
const METADATA_NAMES: [&str; 6] = [
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "metadata.azure.internal",
    "instance-data",
    "instance-data.ec2.internal",
];

/// `providers:` of the delivery config.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Providers {
    /// Hosts HTTP providers may reach: a name (`prometheus.monitoring.svc`), a suffix
    /// (`*.monitoring.svc`), an address (`127.0.0.1`, `::1`) or a network (`10.0.0.0/8`).
    /// Nothing else is reached.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// How jobs run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jobs: Option<JobSettings>,
}

/// `providers.jobs`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JobSettings {
    /// An unprivileged user the jobs run as (the analyzer must run as root to switch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_as: Option<String>,
    /// Variables of the analyzer's environment passed to jobs (default PATH, HOME, LANG, LC_ALL,
    /// TZ); everything else (the database URL, tokens) is withheld.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<Vec<String>>,
}

/// One entry of `allowedHosts`.
#[derive(Clone, Debug, PartialEq)]
pub enum HostPattern {
    /// Exactly this name (case-insensitive).
    Name(String),
    /// Names ending in `.suffix`.
    Suffix(String),
    /// An address or network.
    Network(IpAddr, u8),
}

/// A host as a URL names it.
#[derive(Clone, Debug, PartialEq)]
pub enum Host<'a> {
    /// A DNS name.
    Name(&'a str),
    /// An address literal.
    Ip(IpAddr),
}

fn prefix_matches(net: IpAddr, bits: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// Why a provider may never reach `host`, whatever the config says: link-local addresses
/// (169.254.0.0/16, fe80::/10, where cloud metadata services answer) and metadata names.
pub fn forbidden(host: &Host<'_>) -> Option<&'static str> {
    match host {
        Host::Ip(ip) => {
            let ip = match ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*ip),
                v4 => *v4,
            };
            let link_local = prefix_matches(IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16, ip)
                || prefix_matches(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10, ip);
            let metadata = ip == IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254))
                || ip == IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200));
            if link_local {
                Some("a link-local address (where cloud metadata services answer)")
            } else if metadata {
                Some("a cloud metadata address")
            } else {
                None
            }
        }
        Host::Name(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            METADATA_NAMES.contains(&name.as_str()).then_some("a cloud metadata service")
        }
    }
}

impl HostPattern {
    /// Parses one entry of `allowedHosts`.
    pub fn parse(text: &str) -> Result<HostPattern, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let pattern = if let Some((addr, bits)) = text.split_once('/') {
            let ip: IpAddr = addr.parse().map_err(|_| format!("{text:?}: {addr:?} is not an address"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0..={max}"))?;
            HostPattern::Network(ip, bits)
        } else if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            HostPattern::Network(ip, if ip.is_ipv4() { 32 } else { 128 })
        } else if let Some(suffix) = text.strip_prefix("*.") {
            valid_name(suffix).map_err(|e| format!("{text:?}: {e}"))?;
            HostPattern::Suffix(suffix.to_ascii_lowercase())
        } else {
            valid_name(text).map_err(|e| format!("{text:?}: {e}"))?;
            HostPattern::Name(text.to_ascii_lowercase())
        };
        // An entry that would let a provider reach what is never allowed is a mistake.
        let probe = match &pattern {
            HostPattern::Name(n) | HostPattern::Suffix(n) => forbidden(&Host::Name(n)),
            HostPattern::Network(ip, bits) => {
                let link_local = [
                    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
                    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                ];
                let covered = link_local.into_iter().find(|l| prefix_matches(*ip, *bits, *l)).unwrap_or(*ip);
                forbidden(&Host::Ip(covered))
            }
        };
        if let Some(why) = probe {
            return Err(format!("{text:?} covers {why}, which providers may never reach"));
        }
        Ok(pattern)
    }

    /// Whether the pattern allows `host`.
    pub fn matches(&self, host: &Host<'_>) -> bool {
        match (self, host) {
            (HostPattern::Name(n), Host::Name(h)) => n.eq_ignore_ascii_case(h.trim_end_matches('.')),
            (HostPattern::Suffix(s), Host::Name(h)) => {
                let h = h.trim_end_matches('.').to_ascii_lowercase();
                h.len() > s.len() && h.ends_with(s.as_str()) && h.as_bytes()[h.len() - s.len() - 1] == b'.'
            }
            (HostPattern::Network(net, bits), Host::Ip(ip)) => prefix_matches(*net, *bits, *ip),
            _ => false,
        }
    }
}

fn valid_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        });
    if ok { Ok(()) } else { Err("is not a host name, address or network".into()) }
}

/// A job the config declares: its command and environment as written (before `{{args.NAME}}`
/// is substituted), which is what the scheduler sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredJob {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Extra variables.
    pub env: BTreeMap<String, String>,
}

impl DeliveryConfig {
    /// Every job the config declares: job metrics of its analysis templates and the inline jobs
    /// of verify steps (in every strategy, per-environment ones included).
    pub fn declared_jobs(&self) -> Vec<DeclaredJob> {
        let declared = |j: &JobProvider| DeclaredJob { command: j.command.clone(), env: j.env.clone() };
        let mut jobs: Vec<DeclaredJob> = self
            .analysis_templates
            .iter()
            .flat_map(|t| &t.metrics)
            .filter_map(|m| m.provider.job.as_ref())
            .map(declared)
            .collect();
        for service in &self.services {
            let strategies = std::iter::once(&service.strategy)
                .chain(service.environments.values().filter_map(|o| o.strategy.as_ref()));
            for strategy in strategies {
                let steps = strategy.canary.iter().flat_map(|c| &c.steps);
                jobs.extend(
                    steps
                        .filter_map(|s| match &s.step {
                            crate::StepDef::Verify(v) => v.job.as_ref(),
                            _ => None,
                        })
                        .map(declared),
                );
            }
        }
        jobs.dedup();
        jobs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pattern: &str, host: Host<'_>) -> bool {
        HostPattern::parse(pattern).unwrap().matches(&host)
    }

    #[test]
    fn patterns() {
        assert!(allows("127.0.0.1", Host::Ip("127.0.0.1".parse().unwrap())));
        assert!(allows("::1", Host::Ip("::1".parse().unwrap())));
        assert!(allows("[::1]", Host::Ip("::1".parse().unwrap())));
        assert!(allows("10.0.0.0/8", Host::Ip("10.20.30.40".parse().unwrap())));
        assert!(!allows("10.0.0.0/8", Host::Ip("11.0.0.1".parse().unwrap())));
        assert!(allows("Prometheus.Monitoring", Host::Name("prometheus.monitoring.")));
        assert!(allows("*.svc", Host::Name("prom.monitoring.svc")));
        assert!(!allows("*.svc", Host::Name("svc")) && !allows("*.svc", Host::Name("evilsvc")));
        assert!(!allows("localhost", Host::Ip("127.0.0.1".parse().unwrap())), "names match names only");
    }

    #[test]
    fn metadata_and_link_local_are_never_allowed() {
        for bad in ["169.254.169.254", "169.254.0.0/16", "0.0.0.0/0", "fe80::1", "::/0", "metadata.google.internal"] {
            assert!(HostPattern::parse(bad).unwrap_err().contains("never reach"), "{bad}");
        }
        for host in ["169.254.169.254", "fe80::1", "::ffff:169.254.169.254", "fd00:ec2::254", "100.100.100.200"] {
            assert!(forbidden(&Host::Ip(host.parse().unwrap())).is_some(), "{host}");
        }
        assert!(forbidden(&Host::Name("METADATA.google.internal.")).is_some());
        assert!(forbidden(&Host::Ip("127.0.0.1".parse().unwrap())).is_none());
        assert!(HostPattern::parse("bad host").is_err() && HostPattern::parse("10.0.0.0/33").is_err());
    }
}
