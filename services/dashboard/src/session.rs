//! Who a browser request comes from, and whether it may change anything.
//!
//! The dashboard holds no rights of its own: a person signs in with the token they use with
//! `hopctl` (a static token or an OIDC JWT), which lives in an HttpOnly, SameSite=Strict cookie
//! and is sent on every call the dashboard makes for them, so the API's authentication and
//! authorisation decide everything. Requests that change something must also prove they come
//! from the dashboard's own pages (see [`check_same_origin`]).

use axum::http::{HeaderMap, HeaderValue, Method, header};

/// The cookie holding the signed-in person's token.
pub const COOKIE: &str = "hopngo_session";

/// The header the dashboard's pages send with every change: a cross-site form cannot send it,
/// and a cross-site script cannot without a CORS preflight, which the dashboard never answers.
pub const CSRF_HEADER: &str = "x-hopngo-csrf";

/// Longest token the dashboard keeps (browsers drop cookies over 4 KiB).
pub const MAX_COOKIE_TOKEN: usize = 3800;

/// How long a browser keeps the cookie; the token's own expiry still applies at the API.
pub const SESSION_SECONDS: u64 = 12 * 3600;

/// The token from the request's cookie, if any.
pub fn token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| decode(value))
        .filter(|t| !t.is_empty())
}

/// Characters a cookie value cannot hold as they are (RFC 6265 cookie-octet), and `%`.
fn escaped(b: u8) -> bool {
    matches!(b, b'"' | b',' | b';' | b'\\' | b'%') || !b.is_ascii_graphic()
}

fn encode(token: &str) -> String {
    let mut out = String::with_capacity(token.len());
    for b in token.bytes() {
        if escaped(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `Set-Cookie` value that signs `token` in (`secure`: only over HTTPS).
pub fn sign_in_cookie(token: &str, secure: bool) -> Result<HeaderValue, String> {
    let value = encode(token);
    if value.len() > MAX_COOKIE_TOKEN {
        return Err(format!(
            "is {} characters; the dashboard keeps tokens of at most {MAX_COOKIE_TOKEN} (a browser cookie's limit)",
            value.len()
        ));
    }
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECONDS}{secure}"
    ))
    .map_err(|_| "cannot be kept in a cookie".to_string())
}

/// The `Set-Cookie` value that signs out.
pub fn sign_out_cookie(secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"))
        .expect("static cookie text")
}

/// Refuses a change that may come from another site: it must carry [`CSRF_HEADER`], and the
/// browser's `Origin` (when sent) must be this host, and `Sec-Fetch-Site` (when sent)
/// `same-origin`. Reads (GET, HEAD) pass: they change nothing.
pub fn check_same_origin(method: &Method, headers: &HeaderMap) -> Result<(), String> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return Ok(());
    }
    if headers.get(CSRF_HEADER).is_none() {
        return Err(format!("a change must come from the dashboard's pages (no {CSRF_HEADER} header)"));
    }
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
    {
        return Err(format!("a change from another site ({site}) is refused"));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let host = text(header::HOST).unwrap_or_default();
        let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
        if origin_host != host {
            return Err(format!("a change from another origin ({origin}) is refused"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn the_token_survives_the_cookie_whatever_its_characters() {
        for token in ["abc.def-ghi_jkl", "a;b,c\"d\\e%f", "eyJhbGciOi.eyJzdWIiOiJ9.sig"] {
            let cookie = sign_in_cookie(token, false).unwrap();
            let value = cookie.to_str().unwrap().split(';').next().unwrap().to_string();
            let got = super::token(&headers(&[("cookie", &format!("theme=dark; {value}"))]));
            assert_eq!(got.as_deref(), Some(token));
        }
        let cookie = sign_in_cookie("t", true).unwrap();
        let cookie = cookie.to_str().unwrap();
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.ends_with("; Secure"));
        assert!(sign_in_cookie(&"x".repeat(MAX_COOKIE_TOKEN + 1), false).unwrap_err().contains("at most"));
        assert_eq!(super::token(&headers(&[("cookie", "other=1")])), None);
        assert_eq!(super::token(&HeaderMap::new()), None);
        assert!(sign_out_cookie(false).to_str().unwrap().contains("Max-Age=0"));
    }

    #[test]
    fn changes_must_come_from_the_dashboards_own_pages() {
        let post = Method::POST;
        assert!(check_same_origin(&Method::GET, &HeaderMap::new()).is_ok());
        assert!(check_same_origin(&post, &HeaderMap::new()).unwrap_err().contains("x-hopngo-csrf"));
        let same = headers(&[
            (CSRF_HEADER, "1"),
            ("host", "127.0.0.1:8080"),
            ("origin", "http://127.0.0.1:8080"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(check_same_origin(&post, &same).is_ok());
        let other_origin = headers(&[(CSRF_HEADER, "1"), ("host", "127.0.0.1:8080"), ("origin", "http://evil.test")]);
        assert!(check_same_origin(&post, &other_origin).unwrap_err().contains("another origin"));
        let cross_site = headers(&[(CSRF_HEADER, "1"), ("sec-fetch-site", "cross-site")]);
        assert!(check_same_origin(&post, &cross_site).unwrap_err().contains("another site"));
        // Programs that are not browsers send neither header.
        assert!(check_same_origin(&post, &headers(&[(CSRF_HEADER, "1")])).is_ok());
    }
}
