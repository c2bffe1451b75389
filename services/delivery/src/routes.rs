//! Header and mirror routes, as Argo Rollouts writes them: `setHeaderRoute` sends every request
//! whose headers match to the canary, whatever its weight; `setMirrorRoute` sends the canary a
//! copy of a share of the matching requests and discards its answers. The same types are the
//! config's steps, the scheduler's record of the routes in force and the deployer's desired
//! state, so one check ([`HeaderRoute::problems`], [`MirrorRoute::problems`]) decides what is
//! valid everywhere and names the field that is not.

use std::collections::BTreeMap;

use hopngo_proto::deployer as pb;
use serde::{Deserialize, Serialize};

/// Longest regular expression (source text).
pub const MAX_REGEX_BYTES: usize = 1024;
/// Largest compiled regular expression: a pattern whose automaton grows past this is refused
/// (counted repetitions multiply quickly) rather than slowing every request down.
pub const MAX_COMPILED_REGEX_BYTES: usize = 256 * 1024;
/// Longest header value or path to match.
pub const MAX_MATCH_VALUE_BYTES: usize = 4096;
/// Longest header name (Gateway API's limit).
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Most header matches in one route or request match (Gateway API allows 16 per match).
pub const MAX_HEADER_MATCHES: usize = 16;
/// Most request matches in one mirror route.
pub const MAX_REQUEST_MATCHES: usize = 8;
/// Most header and mirror routes in force at once: each is one rule of a Gateway API HTTPRoute,
/// which holds at most 16, two of which the deployer uses itself.
pub const MAX_ROUTES: usize = 8;

/// The HTTP methods a mirror route can match (Gateway API's list).
pub const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// How a string is matched: `{exact: v}`, `{prefix: v}` or `{regex: v}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// The whole value.
    Exact(String),
    /// The value's beginning (a path: whole segments, as Gateway API's `PathPrefix`).
    Prefix(String),
    /// A regular expression (Rust `regex` syntax, which is RE2's: linear time); unanchored, as
    /// Istio's and Envoy's are not, so write `^…$` for a whole value.
    Regex(String),
}

/// One header to match.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    pub header_name: String,
    /// How its value is matched.
    pub header_value: StringMatch,
}

/// `setHeaderRoute`: requests matching every header match go to the canary. Without `match`
/// the step removes the route of that name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderRoute {
    /// Route name: a later step with the same name replaces or removes it.
    pub name: String,
    /// Header matches, all of which must hold.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<HeaderMatch>,
}

/// A request match of a mirror route: every field given must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMatch {
    /// Method (exact only: Gateway API matches methods exactly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<StringMatch>,
    /// Headers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
}

/// `setMirrorRoute`: `percentage` of the requests matching any of `match` are also sent to the
/// canary, whose answers are discarded. Without `match` the step removes the route of that name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorRoute {
    /// Route name: a later step with the same name replaces or removes it.
    pub name: String,
    /// Share of the matching requests copied, 1..=100 (default 100).
    #[serde(default = "all")]
    pub percentage: u32,
    /// Request matches, any of which selects a request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
}

fn all() -> u32 {
    100
}

/// What is wrong, as (path below the route, reason).
pub type RouteProblem = (String, String);

/// The routes a canary has in force: header routes and mirror routes, each in the order they
/// were first set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Routes {
    /// Header routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderRoute>,
    /// Mirror routes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorRoute>,
}

impl Routes {
    /// No route in force.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.mirrors.is_empty()
    }

    /// Applies a `setHeaderRoute`: adds or replaces the route of its name, or removes it.
    pub fn set_header(&mut self, route: &HeaderRoute) {
        set(&mut self.headers, route, |r| &r.name, |r| r.matches.is_empty());
    }

    /// Applies a `setMirrorRoute`: adds or replaces the route of its name, or removes it.
    pub fn set_mirror(&mut self, route: &MirrorRoute) {
        set(&mut self.mirrors, route, |r| &r.name, |r| r.matches.is_empty());
    }

    /// Whether more routes are in force than a backend holds.
    pub fn count_problem(&self) -> Option<String> {
        (self.headers.len() + self.mirrors.len() > MAX_ROUTES)
            .then(|| format!("at most {MAX_ROUTES} header and mirror routes are in force at once"))
    }

    /// Every problem, with paths below `headers[i]` / `mirrors[i]`.
    pub fn problems(&self) -> Vec<RouteProblem> {
        let mut out = Vec::new();
        out.extend(self.count_problem().map(|p| (String::new(), p)));
        for (i, r) in self.headers.iter().enumerate() {
            if r.matches.is_empty() {
                out.push((format!("headers[{i}].match"), "a route in force needs at least one match".into()));
            }
            out.extend(r.problems().into_iter().map(|(p, m)| (format!("headers[{i}]{p}"), m)));
        }
        for (i, r) in self.mirrors.iter().enumerate() {
            if r.matches.is_empty() {
                out.push((format!("mirrors[{i}].match"), "a route in force needs at least one match".into()));
            }
            out.extend(r.problems().into_iter().map(|(p, m)| (format!("mirrors[{i}]{p}"), m)));
        }
        let mut names: Vec<&str> =
            self.headers.iter().map(|r| r.name.as_str()).chain(self.mirrors.iter().map(|r| r.name.as_str())).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            out.push((String::new(), format!("route name {:?} is used twice", w[0])));
        }
        out
    }

    /// One line per route, for people: `header canary: x-canary exact "yes"`.
    pub fn describe(&self) -> Vec<String> {
        let headers = self.headers.iter().map(|r| {
            let matches: Vec<String> =
                r.matches.iter().map(|m| format!("{} {}", m.header_name, m.header_value)).collect();
            format!("header {}: {}", r.name, matches.join(" and "))
        });
        let mirrors = self.mirrors.iter().map(|r| {
            let matches: Vec<String> = r.matches.iter().map(RequestMatch::to_string).collect();
            format!("mirror {}: {}% of {}", r.name, r.percentage, matches.join(" or "))
        });
        headers.chain(mirrors).collect()
    }
}

fn set<T: Clone>(routes: &mut Vec<T>, route: &T, name: impl Fn(&T) -> &String, removes: impl Fn(&T) -> bool) {
    let at = routes.iter().position(|r| name(r) == name(route));
    match (at, removes(route)) {
        (Some(i), true) => {
            routes.remove(i);
        }
        (Some(i), false) => routes[i] = route.clone(),
        (None, false) => routes.push(route.clone()),
        (None, true) => {}
    }
}

impl std::fmt::Display for StringMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StringMatch::Exact(v) => write!(f, "exact {v:?}"),
            StringMatch::Prefix(v) => write!(f, "prefix {v:?}"),
            StringMatch::Regex(v) => write!(f, "regex {v:?}"),
        }
    }
}

impl std::fmt::Display for RequestMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(m) = &self.method {
            parts.push(format!("method {m}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path {p}"));
        }
        parts.extend(self.headers.iter().map(|(name, m)| format!("{name} {m}")));
        if parts.is_empty() {
            return f.write_str("every request");
        }
        f.write_str(&parts.join(" and "))
    }
}

/// Compiles a route's regular expression with the bounds every component uses.
pub fn regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.len() > MAX_REGEX_BYTES {
        return Err(format!("at most {MAX_REGEX_BYTES} bytes"));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_COMPILED_REGEX_BYTES)
        .dfa_size_limit(MAX_COMPILED_REGEX_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(_) => {
                format!("compiles to more than {MAX_COMPILED_REGEX_BYTES} bytes; simplify the repetition")
            }
            // The syntax error's own text spans lines (the pattern, a caret, the reason): keep
            // the reason.
            other => format!(
                "not a valid regular expression: {}",
                other.to_string().lines().last().unwrap_or_default().trim()
            ),
        })
}

impl StringMatch {
    /// The value matched against.
    pub fn value(&self) -> &str {
        match self {
            StringMatch::Exact(v) | StringMatch::Prefix(v) | StringMatch::Regex(v) => v,
        }
    }

    fn problems(&self, path: &str, out: &mut Vec<RouteProblem>) {
        let (kind, value) = match self {
            StringMatch::Exact(v) => ("exact", v),
            StringMatch::Prefix(v) => ("prefix", v),
            StringMatch::Regex(v) => ("regex", v),
        };
        let path = format!("{path}.{kind}");
        if let StringMatch::Regex(pattern) = self {
            if let Err(e) = regex(pattern) {
                out.push((path, e));
            }
            return;
        }
        if value.len() > MAX_MATCH_VALUE_BYTES {
            out.push((path, format!("at most {MAX_MATCH_VALUE_BYTES} bytes")));
        } else if value.chars().any(char::is_control) {
            out.push((path, "must not contain control characters".into()));
        } else if matches!(self, StringMatch::Prefix(v) if v.is_empty()) {
            out.push((path, "must not be empty (an empty prefix matches everything: leave the match out)".into()));
        }
    }
}

/// Whether `name` is an HTTP header name (an RFC 9110 token, as Gateway API requires).
fn header_name_problem(name: &str) -> Option<String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        Some("must not be empty".into())
    } else if name.len() > MAX_HEADER_NAME_BYTES {
        Some(format!("at most {MAX_HEADER_NAME_BYTES} bytes"))
    } else if !name.chars().all(token) {
        Some(format!("{:?} is not a header name (letters, digits and !#$%&'*+-.^_`|~)", name))
    } else {
        None
    }
}

fn route_name_problem(name: &str, out: &mut Vec<RouteProblem>) {
    if let Some(problem) = crate::name_problem(name) {
        out.push((".name".into(), problem));
    }
}

impl HeaderRoute {
    /// Every problem, with paths relative to the route (`.match[0].headerValue.regex`).
    pub fn problems(&self) -> Vec<RouteProblem> {
        let mut out = Vec::new();
        route_name_problem(&self.name, &mut out);
        if self.matches.len() > MAX_HEADER_MATCHES {
            out.push((".match".into(), format!("at most {MAX_HEADER_MATCHES} header matches")));
        }
        for (i, m) in self.matches.iter().enumerate() {
            if let Some(p) = header_name_problem(&m.header_name) {
                out.push((format!(".match[{i}].headerName"), p));
            }
            m.header_value.problems(&format!(".match[{i}].headerValue"), &mut out);
        }
        out
    }
}

impl MirrorRoute {
    /// Every problem, with paths relative to the route (`.match[0].path.regex`).
    pub fn problems(&self) -> Vec<RouteProblem> {
        let mut out = Vec::new();
        route_name_problem(&self.name, &mut out);
        if !(1..=100).contains(&self.percentage) {
            out.push((".percentage".into(), format!("{} is not in 1..=100", self.percentage)));
        }
        if self.matches.len() > MAX_REQUEST_MATCHES {
            out.push((".match".into(), format!("at most {MAX_REQUEST_MATCHES} request matches")));
        }
        for (i, m) in self.matches.iter().enumerate() {
            let at = format!(".match[{i}]");
            match &m.method {
                Some(StringMatch::Exact(method)) if !METHODS.contains(&method.as_str()) => out
                    .push((format!("{at}.method.exact"), format!("{:?} is not one of {}", method, METHODS.join(", ")))),
                Some(StringMatch::Exact(_)) | None => {}
                Some(_) => out.push((
                    format!("{at}.method"),
                    "methods are matched exactly (write {exact: GET}), as Gateway API does".into(),
                )),
            }
            if let Some(path) = &m.path {
                if let StringMatch::Exact(p) | StringMatch::Prefix(p) = path
                    && !p.starts_with('/')
                {
                    out.push((format!("{at}.path"), format!("{p:?} does not start with '/'")));
                }
                path.problems(&format!("{at}.path"), &mut out);
            }
            if m.headers.len() > MAX_HEADER_MATCHES {
                out.push((format!("{at}.headers"), format!("at most {MAX_HEADER_MATCHES} header matches")));
            }
            // Header names are case-insensitive: two spellings of one are one header matched twice.
            let mut names: Vec<String> = m.headers.keys().map(|n| n.to_ascii_lowercase()).collect();
            names.sort_unstable();
            if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
                out.push((format!("{at}.headers"), format!("{:?} is matched twice", twice[0])));
            }
            for (name, value) in &m.headers {
                if let Some(p) = header_name_problem(name) {
                    out.push((format!("{at}.headers"), p));
                }
                value.problems(&format!("{at}.headers.{name}"), &mut out);
            }
        }
        out
    }
}

/// The routes in the deployer contract's terms.
pub fn to_proto(routes: &Routes) -> (Vec<pb::HeaderRoute>, Vec<pb::MirrorRoute>) {
    let header = |name: &str, value: &StringMatch| pb::HeaderMatch { name: name.into(), value: Some(value.into()) };
    let headers = routes
        .headers
        .iter()
        .map(|r| pb::HeaderRoute {
            name: r.name.clone(),
            matches: r.matches.iter().map(|m| header(&m.header_name, &m.header_value)).collect(),
        })
        .collect();
    let mirrors = routes
        .mirrors
        .iter()
        .map(|r| pb::MirrorRoute {
            name: r.name.clone(),
            percentage: r.percentage,
            matches: r
                .matches
                .iter()
                .map(|m| pb::RequestMatch {
                    method: m.method.as_ref().map(|m| m.value().to_string()).unwrap_or_default(),
                    path: m.path.as_ref().map(Into::into),
                    headers: m.headers.iter().map(|(name, value)| header(name, value)).collect(),
                })
                .collect(),
        })
        .collect();
    (headers, mirrors)
}

impl From<&StringMatch> for pb::StringMatch {
    fn from(m: &StringMatch) -> pb::StringMatch {
        let kind = match m {
            StringMatch::Exact(v) => pb::string_match::Kind::Exact(v.clone()),
            StringMatch::Prefix(v) => pb::string_match::Kind::Prefix(v.clone()),
            StringMatch::Regex(v) => pb::string_match::Kind::Regex(v.clone()),
        };
        pb::StringMatch { kind: Some(kind) }
    }
}

/// Reads and checks the routes of a deployer `TargetSpec`; the problem's path is the request's
/// field (`target.header_routes[0].matches[1].value.regex`; a mirror's header match is named by
/// its header: `target.mirror_routes[0].matches[0].headers.x-client.exact`).
pub fn from_proto(headers: &[pb::HeaderRoute], mirrors: &[pb::MirrorRoute]) -> Result<Routes, RouteProblem> {
    fn string(m: Option<&pb::StringMatch>, path: &str) -> Result<StringMatch, RouteProblem> {
        match m.and_then(|m| m.kind.as_ref()) {
            Some(pb::string_match::Kind::Exact(v)) => Ok(StringMatch::Exact(v.clone())),
            Some(pb::string_match::Kind::Prefix(v)) => Ok(StringMatch::Prefix(v.clone())),
            Some(pb::string_match::Kind::Regex(v)) => Ok(StringMatch::Regex(v.clone())),
            None => Err((path.into(), "one of exact, prefix, regex is required".into())),
        }
    }
    let mut routes = Routes::default();
    for (i, r) in headers.iter().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let value = string(m.value.as_ref(), &format!("target.header_routes[{i}].matches[{j}].value"))?;
            matches.push(HeaderMatch { header_name: m.name.clone(), header_value: value });
        }
        routes.headers.push(HeaderRoute { name: r.name.clone(), matches });
    }
    for (i, r) in mirrors.iter().enumerate() {
        let mut matches = Vec::new();
        for (j, m) in r.matches.iter().enumerate() {
            let at = format!("target.mirror_routes[{i}].matches[{j}]");
            let mut headers = BTreeMap::new();
            for (k, h) in m.headers.iter().enumerate() {
                let value = string(h.value.as_ref(), &format!("{at}.headers[{k}].value"))?;
                if headers.insert(h.name.clone(), value).is_some() {
                    return Err((format!("{at}.headers[{k}].name"), format!("{:?} is matched twice", h.name)));
                }
            }
            let path = m.path.as_ref().map(|p| string(Some(p), &format!("{at}.path"))).transpose()?;
            let method = (!m.method.is_empty()).then(|| StringMatch::Exact(m.method.clone()));
            matches.push(RequestMatch { method, path, headers });
        }
        routes.mirrors.push(MirrorRoute { name: r.name.clone(), percentage: r.percentage, matches });
    }
    if let Some((path, reason)) = routes.problems().into_iter().next() {
        // The config's names for the contract's.
        let path = path
            .replacen("headers[", "target.header_routes[", 1)
            .replacen("mirrors[", "target.mirror_routes[", 1)
            .replace(".match", ".matches")
            .replace(".headerName", ".name")
            .replace(".headerValue", ".value")
            .replace(".method.exact", ".method");
        let path = if path.is_empty() { "target.header_routes".into() } else { path };
        return Err((path, reason));
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, value: StringMatch) -> HeaderRoute {
        HeaderRoute {
            name: name.into(),
            matches: vec![HeaderMatch { header_name: "x-canary".into(), header_value: value }],
        }
    }

    #[test]
    fn a_step_adds_replaces_or_removes_the_route_of_its_name() {
        let mut routes = Routes::default();
        routes.set_header(&header("a", StringMatch::Exact("1".into())));
        routes.set_header(&header("b", StringMatch::Exact("2".into())));
        routes.set_header(&header("a", StringMatch::Prefix("3".into())));
        assert_eq!(routes.headers.len(), 2);
        assert_eq!(routes.headers[0].matches[0].header_value, StringMatch::Prefix("3".into()), "replaced in place");
        routes.set_header(&HeaderRoute { name: "a".into(), matches: Vec::new() });
        assert_eq!(routes.headers.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["b"]);
        routes.set_header(&HeaderRoute { name: "never-set".into(), matches: Vec::new() });
        assert_eq!(routes.headers.len(), 1, "removing an absent route changes nothing");
    }

    #[test]
    fn problems_name_the_field() {
        let bad = header("h", StringMatch::Regex("([a-z]+".into()));
        let problems = bad.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].0, ".match[0].headerValue.regex");
        assert!(problems[0].1.starts_with("not a valid regular expression: "), "{}", problems[0].1);
        assert!(!problems[0].1.contains('\n'));

        let huge = header("h", StringMatch::Regex("[a-z]{1000}{1000}".into()));
        assert!(huge.problems()[0].1.contains("compiles to more than"), "{:?}", huge.problems());

        let mut name = header("H_1", StringMatch::Exact("x".into()));
        name.matches[0].header_name = "x canary".into();
        let paths: Vec<String> = name.problems().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, [".name", ".match[0].headerName"]);

        let mirror = MirrorRoute {
            name: "m".into(),
            percentage: 0,
            matches: vec![RequestMatch {
                method: Some(StringMatch::Prefix("G".into())),
                path: Some(StringMatch::Prefix("api".into())),
                headers: BTreeMap::from([("x-a".into(), StringMatch::Exact("a\u{1}".into()))]),
            }],
        };
        let paths: Vec<String> = mirror.problems().into_iter().map(|(p, _)| p).collect();
        assert_eq!(paths, [".percentage", ".match[0].method", ".match[0].path", ".match[0].headers.x-a.exact"]);
        assert!(header("ok", StringMatch::Regex("^(beta|canary)$".into())).problems().is_empty());
        let twice = MirrorRoute {
            name: "m".into(),
            percentage: 10,
            matches: vec![RequestMatch {
                headers: BTreeMap::from([
                    ("X-A".into(), StringMatch::Exact("1".into())),
                    ("x-a".into(), StringMatch::Exact("2".into())),
                ]),
                ..Default::default()
            }],
        };
        assert_eq!(twice.problems(), [(".match[0].headers".to_string(), "\"x-a\" is matched twice".to_string())]);
    }

    #[test]
    fn routes_in_force_are_bounded_and_named_once() {
        let mut routes = Routes::default();
        for i in 0..MAX_ROUTES {
            routes.set_header(&header(&format!("r{i}"), StringMatch::Exact("1".into())));
        }
        assert!(routes.problems().is_empty());
        routes.mirrors.push(MirrorRoute { name: "r0".into(), percentage: 10, matches: vec![RequestMatch::default()] });
        let reasons: Vec<String> = routes.problems().into_iter().map(|(_, m)| m).collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("at most 8"));
        assert!(reasons[1].contains("\"r0\" is used twice"));
    }

    #[test]
    fn the_contract_carries_routes_both_ways_and_names_the_field_it_refuses() {
        let routes = Routes {
            headers: vec![header("beta", StringMatch::Regex("^b".into()))],
            mirrors: vec![MirrorRoute {
                name: "shadow".into(),
                percentage: 30,
                matches: vec![RequestMatch {
                    method: Some(StringMatch::Exact("GET".into())),
                    path: Some(StringMatch::Prefix("/api".into())),
                    headers: BTreeMap::from([("x-a".into(), StringMatch::Exact("1".into()))]),
                }],
            }],
        };
        let (headers, mirrors) = to_proto(&routes);
        assert_eq!(from_proto(&headers, &mirrors), Ok(routes));

        let (mut headers, mirrors) =
            to_proto(&Routes { headers: vec![header("h", StringMatch::Regex("(".into()))], ..Default::default() });
        let (path, reason) = from_proto(&headers, &mirrors).unwrap_err();
        assert_eq!(path, "target.header_routes[0].matches[0].value.regex");
        assert!(reason.starts_with("not a valid regular expression"), "{reason}");
        headers[0].matches[0].value = None;
        assert_eq!(from_proto(&headers, &[]).unwrap_err().0, "target.header_routes[0].matches[0].value");
        headers[0].matches.clear();
        assert_eq!(from_proto(&headers, &[]).unwrap_err().0, "target.header_routes[0].matches");
        let mirror = pb::MirrorRoute {
            name: "m".into(),
            percentage: 10,
            matches: vec![pb::RequestMatch { method: "FETCH".into(), ..Default::default() }],
        };
        assert_eq!(from_proto(&[], &[mirror]).unwrap_err().0, "target.mirror_routes[0].matches[0].method");
    }

    #[test]
    fn routes_read_as_argo_writes_them() {
        let yaml =
            "name: canary-users\nmatch:\n  - headerName: X-Canary\n    headerValue:\n      regex: ^(yes|true)$\n";
        let route: HeaderRoute = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(route.matches[0].header_value, StringMatch::Regex("^(yes|true)$".into()));
        let yaml = "name: shadow\npercentage: 35\nmatch:\n  - method: {exact: GET}\n    path: {prefix: /api}\n";
        let mirror: MirrorRoute = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!((mirror.percentage, mirror.matches.len()), (35, 1));
        let routes = Routes { headers: vec![route], mirrors: vec![mirror] };
        assert_eq!(
            routes.describe(),
            [
                "header canary-users: X-Canary regex \"^(yes|true)$\"",
                "mirror shadow: 35% of method exact \"GET\" and path prefix \"/api\""
            ]
        );
    }
}
