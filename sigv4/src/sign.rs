//! Client-side signing.

use time::OffsetDateTime;

use crate::canonical;

/// A secret access key. `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(s: impl Into<String>) -> Self {
        SecretKey(s.into())
    }
    /// The only way to read the secret; grep for it when auditing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretKey,
    pub session_token: Option<String>,
}

/// What a signing produced, for tests and debugging (contains no secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SigningOutput {
    pub canonical_request: String,
    pub string_to_sign: String,
    pub signature: String,
}

/// Parameters of the lower-level signing functions.
#[derive(Clone, Debug)]
pub struct SigningParams<'a> {
    pub credentials: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
    pub time: OffsetDateTime,
    /// Normalise the path (drop `.`/`..`, collapse `//`). Every service
    /// but S3 does; the path is double-encoded either way.
    pub normalize_path: bool,
    /// Add the session token after signing, unsigned (aws-c-auth's
    /// `omit_session_token`, some IoT clients). Normally false.
    pub omit_session_token: bool,
}

fn split_target(path_and_query: &str) -> (&str, &str) {
    match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    }
}

fn uri_for(path: &str, normalize: bool) -> String {
    if normalize {
        canonical::canonical_uri(path, true)
    } else {
        canonical::canonical_uri_unnormalized_double(path)
    }
}

/// Sorted, deduplicated lowercase names of `headers`.
fn signed_names(headers: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[allow(clippy::too_many_arguments)]
fn compute(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    headers: &[(String, String)],
    signed: &[String],
    payload_hash: &str,
    params: &SigningParams<'_>,
    amz_date: &str,
) -> SigningOutput {
    // Every signed name comes from `headers`, so this cannot fail.
    let block = canonical::canonical_headers(headers, signed).unwrap_or_default();
    let creq = canonical::canonical_request(
        method,
        canonical_uri,
        canonical_query,
        &block,
        &signed.join(";"),
        payload_hash,
    );
    let date = amz_date.get(..8).unwrap_or(amz_date);
    let scope = canonical::credential_scope(date, params.region, params.service);
    let sts = canonical::string_to_sign(amz_date, &scope, &creq);
    let key = canonical::signing_key(
        params.credentials.secret_access_key.expose(),
        date,
        params.region,
        params.service,
    );
    let signature = canonical::signature_hex(&key, &sts);
    SigningOutput {
        canonical_request: creq,
        string_to_sign: sts,
        signature,
    }
}

/// Header-form signing with explicit parameters; see [`sign_request`].
pub fn sign_headers(
    method: &str,
    path_and_query: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    params: &SigningParams<'_>,
) -> SigningOutput {
    let amz_date = canonical::format_amz_date(params.time);
    let has_token = params.credentials.session_token.is_some();
    headers.retain(|(n, _)| {
        let drop = n.eq_ignore_ascii_case("authorization")
            || n.eq_ignore_ascii_case("x-amz-date")
            || (has_token && n.eq_ignore_ascii_case("x-amz-security-token"));
        !drop
    });
    headers.push(("x-amz-date".to_string(), amz_date.clone()));
    let token = params.credentials.session_token.clone();
    if let (Some(tok), false) = (&token, params.omit_session_token) {
        headers.push(("x-amz-security-token".to_string(), tok.clone()));
    }
    let (path, query) = split_target(path_and_query);
    let signed = signed_names(headers);
    let out = compute(
        method,
        &uri_for(path, params.normalize_path),
        &canonical::canonical_query(query, false),
        headers,
        &signed,
        &canonical::payload_hash(headers, body),
        params,
        &amz_date,
    );
    if let (Some(tok), true) = (token, params.omit_session_token) {
        headers.push(("x-amz-security-token".to_string(), tok));
    }
    let scope = canonical::credential_scope(
        amz_date.get(..8).unwrap_or(&amz_date),
        params.region,
        params.service,
    );
    headers.push((
        "authorization".to_string(),
        format!(
            "{} Credential={}/{}, SignedHeaders={}, Signature={}",
            canonical::ALGORITHM,
            params.credentials.access_key_id,
            scope,
            signed.join(";"),
            out.signature
        ),
    ));
    out
}

/// Signs a request in place (header form): adds `x-amz-date`, optional
/// `x-amz-security-token`, and `authorization`. `headers` must already hold
/// `host` (with the port when it is not the scheme default); every header in
/// it is signed. `path_and_query` is the request target as sent on the wire.
#[allow(clippy::too_many_arguments)]
pub fn sign_request(
    method: &str,
    path_and_query: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
) {
    let params = SigningParams {
        credentials,
        region,
        service,
        time,
        normalize_path: true,
        omit_session_token: false,
    };
    sign_headers(method, path_and_query, headers, body, &params);
}

/// Presigned (query) form with explicit parameters: every header in
/// `headers` (which must hold `host`) is signed, the payload hash is the
/// SHA-256 of `body`. Returns the new path-and-query.
pub fn presign(
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: &[u8],
    params: &SigningParams<'_>,
    expires_secs: u64,
) -> (String, SigningOutput) {
    let amz_date = canonical::format_amz_date(params.time);
    let date = amz_date.get(..8).unwrap_or(&amz_date).to_string();
    let scope = canonical::credential_scope(&date, params.region, params.service);
    let signed = signed_names(headers);
    let enc = |s: &str| canonical::uri_encode(s.as_bytes(), false);
    let (path, query) = split_target(path_and_query);
    let mut q = String::from(query);
    let mut add = |k: &str, v: &str| {
        if !q.is_empty() {
            q.push('&');
        }
        q.push_str(k);
        q.push('=');
        q.push_str(&enc(v));
    };
    add("X-Amz-Algorithm", canonical::ALGORITHM);
    add(
        "X-Amz-Credential",
        &format!("{}/{}", params.credentials.access_key_id, scope),
    );
    add("X-Amz-Date", &amz_date);
    add("X-Amz-SignedHeaders", &signed.join(";"));
    add("X-Amz-Expires", &expires_secs.to_string());
    let token = params.credentials.session_token.as_deref();
    if let (Some(tok), false) = (token, params.omit_session_token) {
        add("X-Amz-Security-Token", tok);
    }
    let out = compute(
        method,
        &uri_for(path, params.normalize_path),
        &canonical::canonical_query(&q, true),
        headers,
        &signed,
        &canonical::sha256_hex(body),
        params,
        &amz_date,
    );
    let mut add2 = |k: &str, v: &str| {
        q.push('&');
        q.push_str(k);
        q.push('=');
        q.push_str(&enc(v));
    };
    if let (Some(tok), true) = (token, params.omit_session_token) {
        add2("X-Amz-Security-Token", tok);
    }
    add2("X-Amz-Signature", &out.signature);
    (format!("{path}?{q}"), out)
}

/// Returns `url` with the presigned-query parameters added (host signed).
pub fn presign_url(
    method: &str,
    url: &str,
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: OffsetDateTime,
    expires_secs: u64,
) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let scheme_l = scheme.to_ascii_lowercase();
    let host = match (scheme_l.as_str(), host_port.rsplit_once(':')) {
        ("https" | "wss", Some((h, "443"))) | ("http" | "ws", Some((h, "80"))) => h,
        _ => host_port,
    };
    let target = if target.starts_with('?') || target.is_empty() {
        format!("/{target}")
    } else {
        target.to_string()
    };
    let params = SigningParams {
        credentials,
        region,
        service,
        time,
        normalize_path: true,
        omit_session_token: false,
    };
    let headers = vec![("host".to_string(), host.to_string())];
    let (pq, _) = presign(method, &target, &headers, b"", &params, expires_secs);
    format!("{scheme}://{authority}{pq}")
}
