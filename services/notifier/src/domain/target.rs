//! Where a webhook may point.

/// A webhook URL, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as it will be called.
    pub url: String,
}

/// Whether `host` names this machine.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks a webhook URL: `https` anywhere; plain `http` only to this machine unless
/// `allow_remote`, since a signed body sent in clear over a network is readable there.
pub fn check(raw: &str, allow_remote: bool) -> Result<Target, String> {
    let url = url::Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(format!("{raw:?}: scheme {other:?} is not supported; use https or http")),
    };
    let host = url.host().ok_or_else(|| format!("{raw:?} has no host"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{raw:?}: credentials in the URL are not allowed; use the signing secret"));
    }
    if url.fragment().is_some() {
        return Err(format!("{raw:?}: a fragment is never sent; remove it"));
    }
    if !https && !allow_remote && !is_loopback(&host) {
        return Err(format!(
            "{raw:?}: plain http to {host}, which is not this machine; use https (or start the notifier with --allow-remote-webhooks)"
        ));
    }
    Ok(Target { url: url.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_http_is_accepted_and_the_rest_explained() {
        assert_eq!(check("http://127.0.0.1:8080/hook", false).unwrap().url, "http://127.0.0.1:8080/hook");
        assert!(check("http://localhost/x", false).is_ok());
        assert!(check("http://[::1]:9/x", false).is_ok());
        assert!(check("http://hooks.example.com/x", false).unwrap_err().contains("use https"));
        assert!(check("http://hooks.example.com/x", true).is_ok());
        assert!(check("https://hooks.slack.com/services/T/B/X", false).is_ok());
        assert!(check("ftp://127.0.0.1/x", false).unwrap_err().contains("scheme \"ftp\""));
        assert!(check("not a url", false).unwrap_err().contains("not a URL"));
        assert!(check("http://u:p@127.0.0.1/x", false).unwrap_err().contains("credentials"));
        assert!(check("http://127.0.0.1/x#frag", false).unwrap_err().contains("fragment"));
    }
}
