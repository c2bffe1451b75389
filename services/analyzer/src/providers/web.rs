//! The web provider: an HTTP call returning JSON, and a JSONPath-like selector of the value
//! (`$.data.ok`, `$.items[0].latency`, `data.ok`). A missing path is no data.

use std::time::Duration;

use crate::domain::{condition::Value, run::Observation};
use hopngo_kit::http::HttpClient;

/// Longest selector, in steps.
pub const MAX_PATH_STEPS: usize = 128;

/// Checks a selector's syntax.
pub fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let rest = path.trim();
    let rest = rest.strip_prefix('$').unwrap_or(rest);
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    let mut name = String::new();
    let flush = |name: &mut String, steps: &mut Vec<Step>| {
        if !name.is_empty() {
            steps.push(Step::Field(std::mem::take(name)));
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '.' => flush(&mut name, &mut steps),
            '[' => {
                flush(&mut name, &mut steps);
                let mut inner = String::new();
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    inner.push(c);
                }
                let inner = inner.trim();
                if let Some(key) = inner.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')) {
                    steps.push(Step::Field(key.to_string()));
                } else {
                    let index = inner.parse::<usize>().map_err(|_| format!("bad index [{inner}] in {path:?}"))?;
                    steps.push(Step::Index(index));
                }
            }
            c if c.is_whitespace() => return Err(format!("unexpected space in {path:?}")),
            c => name.push(c),
        }
    }
    flush(&mut name, &mut steps);
    // JSON documents are read at most 128 levels deep (serde_json's limit); a longer path can
    // never match.
    if steps.len() > MAX_PATH_STEPS {
        return Err(format!("{} steps in {}; at most {MAX_PATH_STEPS}", steps.len(), hopngo_proto::check::shown(path)));
    }
    Ok(steps)
}

/// One step of a selector.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// Object field.
    Field(String),
    /// Array element.
    Index(usize),
}

/// Applies a selector; `None` when the path is absent.
pub fn select<'a>(doc: &'a serde_json::Value, steps: &[Step]) -> Option<&'a serde_json::Value> {
    steps.iter().try_fold(doc, |v, step| match step {
        Step::Field(name) => v.get(name),
        Step::Index(i) => v.get(i),
    })
}

/// Calls the endpoint and selects the value.
pub async fn measure(
    http: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &str,
    json_path: &str,
    timeout: Duration,
) -> Observation {
    let steps = match parse_path(json_path) {
        Ok(s) => s,
        Err(e) => return Observation::Error(e),
    };
    let mut headers = headers.to_vec();
    if method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        headers.push(("content-type".into(), "application/json".into()));
    }
    let response = match http.send(method, url, &headers, body.to_string(), timeout).await {
        Ok(r) => r,
        Err(e) => return Observation::Error(e),
    };
    if !(200..300).contains(&response.status) {
        let text = String::from_utf8_lossy(&response.body);
        return Observation::Error(format!(
            "{method} {url}: HTTP {}: {}",
            response.status,
            text.chars().take(200).collect::<String>()
        ));
    }
    let doc: serde_json::Value = match serde_json::from_slice(&response.body) {
        Ok(d) => d,
        Err(e) => return Observation::Error(format!("{method} {url}: not JSON: {e}")),
    };
    match select(&doc, &steps) {
        Some(v) => Observation::Value { value: Value::from_json(v), detail: String::new() },
        None => Observation::Value { value: Value::Null, detail: format!("{json_path} not in the response") },
    }
}

/// Opens (and closes) a TCP connection to the URL's host and port.
pub async fn connect(url: &str, timeout: Duration) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => Ok(format!("{host}:{port} accepts connections")),
        Ok(Err(e)) => Err(format!("{host}:{port}: {e}")),
        Err(_) => Err(format!("{host}:{port}: no connection within {}", hopngo_kit::args::format_duration(timeout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let doc = serde_json::json!({"data": {"ok": true, "items": [{"latency": 0.2}], "a.b": 1}});
        let get = |p: &str| select(&doc, &parse_path(p).unwrap()).cloned();
        assert_eq!(get("$.data.ok"), Some(serde_json::json!(true)));
        assert_eq!(get("data.items[0].latency"), Some(serde_json::json!(0.2)));
        assert_eq!(get("$.data['a.b']"), Some(serde_json::json!(1)));
        assert_eq!(get("$"), Some(doc.clone()));
        assert_eq!(get("$.data.missing"), None);
        assert!(parse_path("$.items[x]").unwrap_err().contains("bad index"));
        assert!(parse_path(&"[0]".repeat(129)).unwrap_err().contains("at most 128"));
        assert_eq!(parse_path(&"[0]".repeat(128)).unwrap().len(), 128);
    }
}
