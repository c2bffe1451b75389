//! The pages: one HTML document, its script and its style sheet, compiled into the binary
//! (nothing is fetched from elsewhere at run time), served with a strict content security policy.

use axum::{
    Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest as _, Sha256};

/// One embedded file.
struct Asset {
    body: &'static str,
    content_type: &'static str,
}

static INDEX: Asset = Asset { body: include_str!("../assets/index.html"), content_type: "text/html; charset=utf-8" };
static SCRIPT: Asset = Asset { body: include_str!("../assets/app.js"), content_type: "text/javascript; charset=utf-8" };
static STYLE: Asset = Asset { body: include_str!("../assets/app.css"), content_type: "text/css; charset=utf-8" };

/// Only the dashboard's own script, style and API; no framing, no inline code.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                      connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Every embedded file's size in bytes (for the page-weight check).
pub fn sizes() -> [(&'static str, usize); 3] {
    [("index.html", INDEX.body.len()), ("app.js", SCRIPT.body.len()), ("app.css", STYLE.body.len())]
}

/// The ETag of `body`: the start of its SHA-256.
fn etag(body: &str) -> HeaderValue {
    let digest: String = Sha256::digest(body.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    HeaderValue::from_str(&format!("\"{digest}\"")).expect("hex digits")
}

fn serve(asset: &'static Asset, etag: &HeaderValue, headers: &HeaderMap) -> Response {
    let common = [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        // Revalidated every time: a new binary's pages replace the old at once.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::ETAG, etag.clone()),
    ];
    if headers.get(header::IF_NONE_MATCH) == Some(etag) {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (common, [(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body).into_response()
}

/// `/` (and every page address: the pages route themselves), `/app.js`, `/app.css`; each file's
/// ETag is computed here, once.
pub fn routes() -> Router {
    let route = |asset: &'static Asset| {
        let tag = etag(asset.body);
        get(move |h: HeaderMap| async move { serve(asset, &tag, &h) })
    };
    Router::new().route("/", route(&INDEX)).route("/app.js", route(&SCRIPT)).route("/app.css", route(&STYLE))
}
