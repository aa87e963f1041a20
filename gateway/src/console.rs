//! The browser console: static assets built from `client/web` by `build.rs`
//! and embedded in the binary, served under `/console/` with headers that
//! keep the page from being framed, sniffed or fed inline script.
//!
//! The page signs every API call itself (SigV4 in the browser) and opens data
//! channels with the session token, so nothing here authenticates: the assets
//! are public and no cookie is ever set.

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;

use base64::Engine;

use crate::error::ApiError;
use crate::server::{AppState, Body, ReadRequest};
use crate::util::random_bytes;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/console_assets.rs"));
}

/// Whether this binary carries the real console (not the "not built" page).
pub const BUILT: bool = assets::BUILT;

/// `'self'` covers same-origin ws:/wss: for the data channel (CSP level 3).
/// `{NONCE}` is replaced per response: the terminal adds `<style>` elements
/// at run time and the page tags them with this nonce (see client/web
/// src/nonce.js); no other inline style and no inline script runs.
/// `style-src-attr 'unsafe-inline'` lets the terminal size its own elements.
/// `'wasm-unsafe-eval'` lets the recording player compile its bundled
/// WebAssembly terminal; it does not allow JavaScript `eval`.
const CSP_TEMPLATE: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
style-src 'self' 'nonce-{NONCE}'; style-src-attr 'unsafe-inline'; img-src 'self' data:; \
font-src 'self' data:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; \
frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const NONCE_PLACEHOLDER: &str = "__CSP_NONCE__";

/// The policy for one response.
pub fn csp(nonce: &str) -> String {
    CSP_TEMPLATE.replace("{NONCE}", nonce)
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn with_headers(mut r: Response<Body>, secure: bool, nonce: &str) -> Response<Body> {
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp(nonce)) {
        h.insert("content-security-policy", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=(), payment=(), usb=()"),
    );
    // Assets are not content-hashed, so revalidate rather than cache stale code.
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    if secure {
        h.insert(
            "strict-transport-security",
            HeaderValue::from_static("max-age=31536000"),
        );
    }
    r
}

fn respond(status: StatusCode, ctype: &'static str, body: Bytes, head: bool) -> Response<Body> {
    let len = body.len();
    let mut r = Response::new(Full::new(if head { Bytes::new() } else { body }));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    r
}

/// Whether `path` belongs to the console.
pub fn is_console_path(path: &str) -> bool {
    path == "/console" || path.starts_with("/console/")
}

/// Serves a GET or HEAD under `/console`.
pub fn serve(state: &AppState, method: &Method, path: &str, secure: bool) -> Response<Body> {
    let head = method == Method::HEAD;
    let nonce = base64::engine::general_purpose::STANDARD.encode(random_bytes::<18>());
    if method != Method::GET && !head {
        let mut r = respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"method not allowed\n"),
            head,
        );
        r.headers_mut()
            .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return with_headers(r, secure, &nonce);
    }
    if path == "/console" {
        let mut r = respond(
            StatusCode::PERMANENT_REDIRECT,
            "text/plain; charset=utf-8",
            Bytes::new(),
            head,
        );
        r.headers_mut().insert(
            http::header::LOCATION,
            HeaderValue::from_static("/console/"),
        );
        return with_headers(r, secure, &nonce);
    }
    let name = match path.strip_prefix("/console/").unwrap_or("") {
        "" => "index.html",
        n => n,
    };
    if name == "config.json" {
        let body = serde_json::json!({ "region": state.config.aws.region, "built": BUILT });
        return with_headers(
            respond(
                StatusCode::OK,
                "application/json",
                Bytes::from(body.to_string()),
                head,
            ),
            secure,
            &nonce,
        );
    }
    let r = match assets::ASSETS.iter().find(|(n, _)| *n == name) {
        Some((n, bytes)) if *n == "index.html" => {
            let page = String::from_utf8_lossy(bytes).replace(NONCE_PLACEHOLDER, &nonce);
            respond(StatusCode::OK, content_type(n), Bytes::from(page), head)
        }
        Some((n, bytes)) => respond(
            StatusCode::OK,
            content_type(n),
            Bytes::from_static(bytes),
            head,
        ),
        None => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Bytes::from_static(b"not found\n"),
            head,
        ),
    };
    with_headers(r, secure, &nonce)
}

/// `POST` here, signed (service `ssm`) with a user's long-term key, mints
/// the short-lived credentials of an `airlock console` sign-in link.
pub const CREDENTIALS_PATH: &str = "/airlock/v1/console-credentials";
/// Lifetime bounds of sign-in credentials, seconds (default the minimum).
pub const MIN_LINK_SECS: i64 = 900;
pub const MAX_LINK_SECS: i64 = 3600;

/// Issues `ASIA…` credentials for the calling user, like STS
/// GetSessionToken: same identity and policies, limited lifetime, so a
/// sign-in link never carries the long-term secret. They cannot mint more
/// of themselves (no chaining past the expiry), and instances get theirs
/// from the role-credentials endpoint instead.
pub async fn credentials(state: &AppState, req: &ReadRequest) -> Result<Response<Body>, ApiError> {
    let p = crate::auth::authenticate(state, &req.sigv4(), &["ssm"]).await?;
    let Some(user) = p.user_name() else {
        return Err(ApiError::access_denied(
            "Only users may request console sign-in credentials.",
        ));
    };
    if crate::role_creds::RoleCredentialMinter::is_role_key(&p.access_key_id) {
        return Err(ApiError::access_denied(
            "Temporary credentials cannot be used to request console sign-in credentials.",
        ));
    }
    let body: serde_json::Value = if req.body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::validation(format!("Invalid request body: {e}")))?
    };
    let secs = match body.get("DurationSeconds") {
        None | Some(serde_json::Value::Null) => MIN_LINK_SECS,
        Some(v) => v
            .as_i64()
            .filter(|s| (MIN_LINK_SECS..=MAX_LINK_SECS).contains(s))
            .ok_or_else(|| {
                ApiError::validation(format!(
                    "DurationSeconds must be an integer between {MIN_LINK_SECS} and {MAX_LINK_SECS}."
                ))
            })?,
    };
    let expires_ms = crate::util::now_ms() + secs * 1000;
    let c = state
        .role_creds
        .mint(&p.principal, expires_ms)
        .ok_or_else(|| {
            ApiError::validation("The user name is too long for temporary credentials.")
        })?;
    tracing::info!(user, access_key_id = %c.access_key_id, expires_ms, "console sign-in credentials issued");
    Ok(crate::server::json_response(
        StatusCode::OK,
        &serde_json::json!({
            "Credentials": {
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "SessionToken": c.session_token,
                "Expiration": crate::util::ms_to_json(expires_ms),
            },
            "Region": state.config.aws.region,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_is_embedded() {
        assert!(assets::ASSETS.iter().any(|(n, _)| *n == "index.html"));
    }

    #[test]
    fn csp_is_strict() {
        let p = csp("abc");
        assert!(p.contains("frame-ancestors 'none'"));
        assert!(p.contains("script-src 'self' 'wasm-unsafe-eval';"));
        assert!(p.contains("style-src 'self' 'nonce-abc';"));
        assert!(!p.contains("'unsafe-eval'"));
        // Inline style *attributes* only; never inline scripts or <style>.
        assert_eq!(p.matches("unsafe-inline").count(), 1);
        assert!(p.contains("style-src-attr 'unsafe-inline'"));
    }

    #[test]
    fn index_gets_a_fresh_nonce() {
        let page = assets::ASSETS
            .iter()
            .find(|(n, _)| *n == "index.html")
            .unwrap()
            .1;
        if BUILT {
            assert!(std::str::from_utf8(page)
                .unwrap()
                .contains(NONCE_PLACEHOLDER));
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(content_type("weird"), "application/octet-stream");
    }
}
