//! Server-side verification: parse the Authorization header or presigned
//! query, then recompute the signature with the caller's secret.

use std::time::Duration;

use subtle::ConstantTimeEq;
use time::OffsetDateTime;

use crate::canonical;

/// The parts of an HTTP request the verifier needs, as received.
pub struct Request<'a> {
    pub method: &'a str,
    /// Raw path as on the wire (still percent-encoded).
    pub path: &'a str,
    /// Raw query string without `?` (may be empty).
    pub query: &'a str,
    /// Headers in arrival order; names in any case.
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// What the Authorization header or presigned query claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedAuth {
    pub access_key_id: String,
    /// `YYYYMMDD` from the credential scope.
    pub scope_date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
    /// `YYYYMMDDTHHMMSSZ` request time.
    pub amz_date: String,
    pub session_token: Option<String>,
    /// Some for presigned requests.
    pub expires_secs: Option<u64>,
}

pub struct VerifyOptions<'a> {
    /// Accepted skew for header auth (AWS: 5 minutes).
    pub max_skew: Duration,
    /// Regions accepted in the scope.
    pub allowed_regions: &'a [String],
    /// Services accepted in the scope (`ssm`, `kms`, `ssmmessages`, ...).
    pub allowed_services: &'a [&'a str],
    /// S3 does not normalise or double-encode the path.
    pub normalize_path: bool,
    pub now: OffsetDateTime,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Request is missing Authentication Token")]
    Missing,
    #[error("{0}")]
    Incomplete(String),
    /// Signature mismatch, wrong scope, expired or not yet current.
    #[error("{0}")]
    InvalidSignature(String),
    #[error("The security token included in the request is invalid.")]
    UnrecognizedClient,
    #[error("The security token included in the request is expired")]
    ExpiredToken,
}

impl AuthError {
    /// The AWS JSON-protocol error code (`__type`).
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Incomplete(_) => "IncompleteSignatureException",
            AuthError::InvalidSignature(_) => "InvalidSignatureException",
            AuthError::UnrecognizedClient => "UnrecognizedClientException",
            AuthError::ExpiredToken => "ExpiredTokenException",
        }
    }
}

/// The AWS message for a signature mismatch.
pub const MISMATCH_MESSAGE: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";

const BOTH_MESSAGE: &str = "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified";

const QUERY_REQUIRED: &str = "AWS query-string parameters must include 'X-Amz-Algorithm', 'X-Amz-Credential', 'X-Amz-Signature', 'X-Amz-Date', 'X-Amz-SignedHeaders' and 'X-Amz-Expires'. Re-examine the query-string parameters.";

/// Longest presigned lifetime (7 days, the signing key's lifetime).
pub const MAX_PRESIGN_EXPIRES: u64 = 604_800;

fn first_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Query parameters decoded to (lossy) strings.
fn query_params(raw: &str) -> Vec<(String, String)> {
    canonical::parse_query(raw)
        .into_iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect()
}

fn is_query_auth_param(name: &str) -> bool {
    matches!(
        name,
        "X-Amz-Algorithm" | "X-Amz-Credential" | "X-Amz-Signature" | "X-Amz-SignedHeaders"
    )
}

struct Scope {
    access_key_id: String,
    date: String,
    region: String,
    service: String,
}

/// `AKID/YYYYMMDD/region/service/aws4_request`.
fn parse_credential(cred: &str, where_: &str) -> Result<Scope, AuthError> {
    let parts: Vec<&str> = cred.split('/').collect();
    match parts.as_slice() {
        [akid, date, region, service, terminator] => {
            if akid.is_empty() {
                return Err(AuthError::Incomplete(format!(
                    "{where_} has an invalid Credential: '{cred}' (empty access key)."
                )));
            }
            if *terminator != canonical::TERMINATOR {
                return Err(AuthError::InvalidSignature(format!(
                    "Credential should be scoped with a valid terminator: '{}', not '{terminator}'.",
                    canonical::TERMINATOR
                )));
            }
            Ok(Scope {
                access_key_id: (*akid).to_string(),
                date: (*date).to_string(),
                region: (*region).to_string(),
                service: (*service).to_string(),
            })
        }
        _ => Err(AuthError::Incomplete(format!(
            "Credential should be scoped to a valid region. {where_} has an invalid Credential: '{cred}'."
        ))),
    }
}

fn parse_signed_headers(list: &str, where_: &str) -> Result<Vec<String>, AuthError> {
    let names: Vec<String> = list
        .split(';')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    if names.iter().any(|n| n.is_empty()) {
        return Err(AuthError::Incomplete(format!(
            "{where_} has an invalid SignedHeaders value: '{list}'."
        )));
    }
    if !names.iter().any(|n| n == "host" || n == ":authority") {
        return Err(AuthError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_string(),
        ));
    }
    Ok(names)
}

fn invalid_date(v: &str) -> AuthError {
    AuthError::Incomplete(format!(
        "Date must be in ISO-8601 'basic format'. Got '{v}'. See http://en.wikipedia.org/wiki/ISO_8601"
    ))
}

/// Step 1: find and parse the auth material without any secret.
pub fn parse_auth(req: &Request<'_>) -> Result<ParsedAuth, AuthError> {
    let auth_header = first_header(req.headers, "authorization");
    let params = query_params(req.query);
    let query_auth = params.iter().any(|(k, _)| is_query_auth_param(k));
    match (auth_header, query_auth) {
        (None, false) => Err(AuthError::Missing),
        (Some(_), true) => Err(AuthError::Incomplete(BOTH_MESSAGE.to_string())),
        (Some(h), false) => parse_header_auth(req, h),
        (None, true) => parse_query_auth(req, &params),
    }
}

fn parse_header_auth(req: &Request<'_>, header: &str) -> Result<ParsedAuth, AuthError> {
    let header = header.trim();
    let (alg, rest) = match header.split_once(|c: char| c.is_ascii_whitespace()) {
        Some((a, r)) => (a, r.trim_start()),
        None => (header, ""),
    };
    if !rest.is_empty() && alg != canonical::ALGORITHM {
        return Err(AuthError::Incomplete(format!(
            "Unsupported AWS 'algorithm': '{alg}'. Authorization={header}"
        )));
    }
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    if alg == canonical::ALGORITHM {
        for part in rest.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let Some((k, v)) = part.split_once('=') else {
                return Err(AuthError::Incomplete(format!(
                    "'{part}' not a valid key=value pair (missing equal-sign) in Authorization header: '{header}'."
                )));
            };
            match k.trim() {
                "Credential" => credential = Some(v.trim()),
                "SignedHeaders" => signed_headers = Some(v.trim()),
                "Signature" => signature = Some(v.trim()),
                _ => {}
            }
        }
    }
    let amz_date_raw = first_header(req.headers, "x-amz-date");
    let date_raw = first_header(req.headers, "date");
    let mut missing = String::new();
    if credential.is_none() {
        missing.push_str("Authorization header requires 'Credential' parameter. ");
    }
    if signature.is_none() {
        missing.push_str("Authorization header requires 'Signature' parameter. ");
    }
    if signed_headers.is_none() {
        missing.push_str("Authorization header requires 'SignedHeaders' parameter. ");
    }
    if amz_date_raw.is_none() && date_raw.is_none() {
        missing.push_str(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ",
        );
    }
    if !missing.is_empty() {
        missing.push_str("Authorization=");
        missing.push_str(header);
        return Err(AuthError::Incomplete(missing));
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err(AuthError::Incomplete(format!("Authorization={header}")));
    };
    let amz_date = match (amz_date_raw, date_raw) {
        (Some(d), _) => {
            let d = d.trim();
            canonical::parse_amz_date(d).ok_or_else(|| invalid_date(d))?;
            d.to_string()
        }
        (None, Some(d)) => canonical::format_amz_date(
            canonical::parse_http_date(d).ok_or_else(|| invalid_date(d.trim()))?,
        ),
        (None, None) => return Err(invalid_date("")),
    };
    let scope = parse_credential(credential, "Authorization header")?;
    let signed = parse_signed_headers(signed_headers, "Authorization header")?;
    Ok(ParsedAuth {
        access_key_id: scope.access_key_id,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        signed_headers: signed,
        signature: signature.to_string(),
        amz_date,
        session_token: first_header(req.headers, "x-amz-security-token")
            .map(|t| t.trim().to_string()),
        expires_secs: None,
    })
}

fn parse_query_auth(
    req: &Request<'_>,
    params: &[(String, String)],
) -> Result<ParsedAuth, AuthError> {
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let (Some(alg), Some(cred), Some(sig), Some(date), Some(signed), Some(expires)) = (
        get("X-Amz-Algorithm"),
        get("X-Amz-Credential"),
        get("X-Amz-Signature"),
        get("X-Amz-Date"),
        get("X-Amz-SignedHeaders"),
        get("X-Amz-Expires"),
    ) else {
        return Err(AuthError::Incomplete(QUERY_REQUIRED.to_string()));
    };
    if alg != canonical::ALGORITHM {
        return Err(AuthError::Incomplete(format!(
            "X-Amz-Algorithm only supports \"{}\", not '{alg}'.",
            canonical::ALGORITHM
        )));
    }
    canonical::parse_amz_date(date).ok_or_else(|| invalid_date(date))?;
    let expires_secs: u64 = if !expires.is_empty() && expires.bytes().all(|b| b.is_ascii_digit()) {
        expires.parse().unwrap_or(u64::MAX)
    } else if expires.starts_with('-') {
        return Err(AuthError::Incomplete(
            "X-Amz-Expires must be non-negative".to_string(),
        ));
    } else {
        return Err(AuthError::Incomplete(
            "X-Amz-Expires should be a number".to_string(),
        ));
    };
    if expires_secs == 0 {
        return Err(AuthError::Incomplete(
            "X-Amz-Expires must be greater than 0".to_string(),
        ));
    }
    if expires_secs > MAX_PRESIGN_EXPIRES {
        return Err(AuthError::Incomplete(
            "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be less than 604800 seconds".to_string(),
        ));
    }
    let scope = parse_credential(cred, "X-Amz-Credential")?;
    let signed = parse_signed_headers(signed, "X-Amz-SignedHeaders")?;
    let session_token = get("X-Amz-Security-Token").map(str::to_string).or_else(|| {
        first_header(req.headers, "x-amz-security-token").map(|t| t.trim().to_string())
    });
    Ok(ParsedAuth {
        access_key_id: scope.access_key_id,
        scope_date: scope.date,
        region: scope.region,
        service: scope.service,
        signed_headers: signed,
        signature: sig.to_string(),
        amz_date: date.to_string(),
        session_token,
        expires_secs: Some(expires_secs),
    })
}

fn skew_label(d: Duration) -> String {
    let secs = d.as_secs();
    let (mins, rem) = (secs / 60, secs % 60);
    if rem == 0 {
        format!("{mins} min.")
    } else {
        format!("{secs} sec.")
    }
}

/// Rebuilds the canonical request the client must have signed.
pub fn expected_canonical_request(
    req: &Request<'_>,
    parsed: &ParsedAuth,
    normalize_path: bool,
) -> Result<String, AuthError> {
    let block = canonical::canonical_headers(req.headers, &parsed.signed_headers)
        .map_err(|_| AuthError::InvalidSignature(MISMATCH_MESSAGE.to_string()))?;
    Ok(canonical::canonical_request(
        req.method,
        &canonical::canonical_uri(req.path, normalize_path),
        &canonical::canonical_query(req.query, parsed.expires_secs.is_some()),
        &block,
        &parsed.signed_headers.join(";"),
        &canonical::payload_hash(req.headers, req.body),
    ))
}

/// Step 2: with the secret looked up from `parsed.access_key_id`, check
/// scope, time and signature (constant-time comparison).
pub fn verify_request(
    req: &Request<'_>,
    parsed: &ParsedAuth,
    secret: &str,
    opts: &VerifyOptions<'_>,
) -> Result<(), AuthError> {
    // Scope.
    let date_part = parsed.amz_date.get(..8).unwrap_or("");
    if parsed.scope_date != date_part {
        return Err(AuthError::InvalidSignature(format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{}' != '{}', from '{}'.",
            parsed.scope_date, date_part, parsed.amz_date
        )));
    }
    if !opts.allowed_regions.contains(&parsed.region) {
        return Err(AuthError::InvalidSignature(format!(
            "Credential should be scoped to a valid region, not '{}'.",
            parsed.region
        )));
    }
    if !opts.allowed_services.contains(&parsed.service.as_str()) {
        return Err(AuthError::InvalidSignature(format!(
            "Credential should be scoped to correct service: '{}'.",
            opts.allowed_services.first().copied().unwrap_or("")
        )));
    }
    if !parsed
        .signed_headers
        .iter()
        .any(|n| n == "host" || n == ":authority")
    {
        return Err(AuthError::Incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.".to_string(),
        ));
    }

    // Time.
    let t = canonical::parse_amz_date(&parsed.amz_date)
        .ok_or_else(|| invalid_date(&parsed.amz_date))?;
    let skew = time::Duration::try_from(opts.max_skew).unwrap_or(time::Duration::minutes(5));
    let now = opts.now;
    let later = now.checked_add(skew).unwrap_or(now);
    let earlier = now.checked_sub(skew).unwrap_or(now);
    if t > later {
        return Err(AuthError::InvalidSignature(format!(
            "Signature not yet current: {} is still later than {} ({} + {})",
            parsed.amz_date,
            canonical::format_amz_date(later),
            canonical::format_amz_date(now),
            skew_label(opts.max_skew)
        )));
    }
    match parsed.expires_secs {
        None => {
            if t < earlier {
                return Err(AuthError::InvalidSignature(format!(
                    "Signature expired: {} is now earlier than {} ({} - {})",
                    parsed.amz_date,
                    canonical::format_amz_date(earlier),
                    canonical::format_amz_date(now),
                    skew_label(opts.max_skew)
                )));
            }
        }
        Some(exp) => {
            if !(1..=MAX_PRESIGN_EXPIRES).contains(&exp) {
                return Err(AuthError::Incomplete(
                    "X-Amz-Expires must be less than a week (in seconds); that is, the given X-Amz-Expires must be less than 604800 seconds".to_string(),
                ));
            }
            let exp = time::Duration::seconds(i64::try_from(exp).unwrap_or(i64::MAX));
            if now > t.checked_add(exp).unwrap_or(t) {
                return Err(AuthError::InvalidSignature(
                    "Request has expired".to_string(),
                ));
            }
        }
    }

    // A declared payload hash must be the real one, or a captured request
    // could be replayed with another body.
    if let Some(declared) = first_header(req.headers, "x-amz-content-sha256") {
        let actual = canonical::sha256_hex(req.body);
        if !declared.trim().eq_ignore_ascii_case(&actual) {
            return Err(AuthError::InvalidSignature(
                "The provided 'x-amz-content-sha256' header does not match what was computed."
                    .to_string(),
            ));
        }
    }

    // Signature.
    let creq = expected_canonical_request(req, parsed, opts.normalize_path)?;
    let scope = canonical::credential_scope(&parsed.scope_date, &parsed.region, &parsed.service);
    let sts = canonical::string_to_sign(&parsed.amz_date, &scope, &creq);
    let key = canonical::signing_key(secret, &parsed.scope_date, &parsed.region, &parsed.service);
    let expected = canonical::signature_hex(&key, &sts);
    let provided = parsed.signature.as_bytes();
    let ok = expected.len() == provided.len() && bool::from(expected.as_bytes().ct_eq(provided));
    if ok {
        Ok(())
    } else {
        Err(AuthError::InvalidSignature(MISMATCH_MESSAGE.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{presign_url, sign_request, Credentials, SecretKey};
    use time::macros::datetime;

    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

    fn creds(token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: SecretKey::new(SECRET),
            session_token: token.map(str::to_string),
        }
    }

    fn opts<'a>(
        regions: &'a [String],
        services: &'a [&'a str],
        now: OffsetDateTime,
    ) -> VerifyOptions<'a> {
        VerifyOptions {
            max_skew: Duration::from_secs(300),
            allowed_regions: regions,
            allowed_services: services,
            normalize_path: true,
            now,
        }
    }

    fn signed_ssm(t: OffsetDateTime, token: Option<&str>) -> Vec<(String, String)> {
        let mut h = vec![
            ("Host".to_string(), "127.0.0.1:8080".to_string()),
            (
                "Content-Type".to_string(),
                "application/x-amz-json-1.1".to_string(),
            ),
            (
                "X-Amz-Target".to_string(),
                "AmazonSSM.StartSession".to_string(),
            ),
        ];
        sign_request(
            "POST",
            "/",
            &mut h,
            b"{}",
            &creds(token),
            "us-east-1",
            "ssm",
            t,
        );
        h
    }

    fn check(
        headers: &[(String, String)],
        body: &[u8],
        now: OffsetDateTime,
    ) -> Result<ParsedAuth, AuthError> {
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers,
            body,
        };
        let parsed = parse_auth(&req)?;
        let regions = ["us-east-1".to_string()];
        verify_request(&req, &parsed, SECRET, &opts(&regions, &["ssm"], now))?;
        Ok(parsed)
    }

    #[test]
    fn round_trip_header_auth_with_token() {
        let t = datetime!(2026-11-22 21:03:44 UTC);
        let h = signed_ssm(t, Some("tok"));
        let auth = h
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(
            auth.contains(
                "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target"
            ),
            "{auth}"
        );
        let p = check(&h, b"{}", t).unwrap();
        assert_eq!(p.session_token.as_deref(), Some("tok"));
        assert_eq!(p.amz_date, "20261122T210344Z");
        assert_eq!(p.service, "ssm");
        // Body tamper.
        assert_eq!(
            check(&h, b"{ }", t),
            Err(AuthError::InvalidSignature(MISMATCH_MESSAGE.to_string()))
        );
    }

    #[test]
    fn skew_messages() {
        let t = datetime!(2024-08-20 23:01:43 UTC);
        let h = signed_ssm(t, None);
        let now = datetime!(2024-08-20 23:08:02 UTC);
        assert_eq!(
            check(&h, b"{}", now).unwrap_err(),
            AuthError::InvalidSignature(
                "Signature expired: 20240820T230143Z is now earlier than 20240820T230302Z (20240820T230802Z - 5 min.)".into()
            )
        );
        let t = datetime!(2018-10-02 17:05:09 UTC);
        let h = signed_ssm(t, None);
        let now = datetime!(2018-10-02 16:58:12 UTC);
        let e = check(&h, b"{}", now).unwrap_err();
        assert_eq!(
            e,
            AuthError::InvalidSignature(
                "Signature not yet current: 20181002T170509Z is still later than 20181002T170312Z (20181002T165812Z + 5 min.)".into()
            )
        );
        assert_eq!(e.code(), "InvalidSignatureException");
        // Exactly at the edge is accepted.
        assert!(check(&h, b"{}", datetime!(2018-10-02 17:00:09 UTC)).is_ok());
    }

    #[test]
    fn scope_messages() {
        let t = datetime!(2026-01-01 00:00:00 UTC);
        let h = signed_ssm(t, None);
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body: b"{}",
        };
        let p = parse_auth(&req).unwrap();
        let regions = ["eu-west-1".to_string()];
        assert_eq!(
            verify_request(&req, &p, SECRET, &opts(&regions, &["ssm"], t)).unwrap_err(),
            AuthError::InvalidSignature(
                "Credential should be scoped to a valid region, not 'us-east-1'.".into()
            )
        );
        let regions = ["us-east-1".to_string()];
        assert_eq!(
            verify_request(&req, &p, SECRET, &opts(&regions, &["kms"], t)).unwrap_err(),
            AuthError::InvalidSignature(
                "Credential should be scoped to correct service: 'kms'.".into()
            )
        );
        let mut p2 = p.clone();
        p2.scope_date = "20251231".into();
        assert!(matches!(
            verify_request(&req, &p2, SECRET, &opts(&regions, &["ssm"], t)),
            Err(AuthError::InvalidSignature(m)) if m.starts_with("Date in Credential scope does not match")
        ));
        assert_eq!(
            verify_request(&req, &p, "wrong", &opts(&regions, &["ssm"], t)).unwrap_err(),
            AuthError::InvalidSignature(MISMATCH_MESSAGE.into())
        );
        let bad_term: Vec<(String, String)> = h
            .iter()
            .map(|(n, v)| (n.clone(), v.replace("/aws4_request", "/aws4_requesx")))
            .collect();
        let req = Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &bad_term,
            body: b"{}",
        };
        assert!(matches!(
            parse_auth(&req),
            Err(AuthError::InvalidSignature(m)) if m.starts_with("Credential should be scoped with a valid terminator: 'aws4_request'")
        ));
    }

    fn hdrs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn missing_and_incomplete() {
        let none = hdrs(&[("Host", "x")]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &none,
            body: b"",
        };
        assert_eq!(parse_auth(&req), Err(AuthError::Missing));
        assert_eq!(
            AuthError::Missing.code(),
            "MissingAuthenticationTokenException"
        );
        assert_eq!(
            AuthError::Missing.to_string(),
            "Request is missing Authentication Token"
        );

        let h = hdrs(&[("Host", "x"), ("Authorization", "foo")]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        assert_eq!(
            parse_auth(&req),
            Err(AuthError::Incomplete(
                "Authorization header requires 'Credential' parameter. Authorization header requires 'Signature' parameter. Authorization header requires 'SignedHeaders' parameter. Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization=foo".into()
            ))
        );

        let h = hdrs(&[
            ("Host", "x"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders, Signature=ab"),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        let e = parse_auth(&req).unwrap_err();
        assert!(
            matches!(&e, AuthError::Incomplete(m) if m.starts_with("'SignedHeaders' not a valid key=value pair (missing equal-sign) in Authorization header:")),
            "{e:?}"
        );
        assert_eq!(e.code(), "IncompleteSignatureException");

        // host not signed.
        let h = hdrs(&[
            ("Host", "x"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders=x-amz-date, Signature=ab"),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        assert!(matches!(parse_auth(&req), Err(AuthError::Incomplete(m)) if m.contains("'Host'")));

        // No date at all.
        let h = hdrs(&[
            ("Host", "x"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=A/20150830/us-east-1/ssm/aws4_request, SignedHeaders=host, Signature=ab"),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h,
            body: b"",
        };
        assert!(
            matches!(parse_auth(&req), Err(AuthError::Incomplete(m)) if m.contains("'X-Amz-Date' or a 'Date' header"))
        );

        // Both header and query auth.
        let h = hdrs(&[
            ("Host", "x"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=a"),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            headers: &h,
            body: b"",
        };
        assert!(
            matches!(parse_auth(&req), Err(AuthError::Incomplete(m)) if m.starts_with("Only one auth mechanism"))
        );

        // Incomplete query auth.
        let h = hdrs(&[("Host", "x")]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            headers: &h,
            body: b"",
        };
        assert!(matches!(parse_auth(&req), Err(AuthError::Incomplete(_))));
    }

    #[test]
    fn date_header_fallback() {
        let t = datetime!(2015-08-30 12:36:00 UTC);
        let mut h = hdrs(&[("Host", "example.amazonaws.com")]);
        sign_request("GET", "/", &mut h, b"", &creds(None), "us-east-1", "ssm", t);
        // Replace X-Amz-Date by an HTTP Date header (not signed here).
        let auth = h
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap();
        let h2 = hdrs(&[
            ("Host", "example.amazonaws.com"),
            ("Date", "Sun, 30 Aug 2015 12:36:00 GMT"),
            ("Authorization", &auth),
        ]);
        let req = Request {
            method: "GET",
            path: "/",
            query: "",
            headers: &h2,
            body: b"",
        };
        let p = parse_auth(&req).unwrap();
        assert_eq!(p.amz_date, "20150830T123600Z");
    }

    #[test]
    fn presigned_round_trip_and_expiry() {
        let t = datetime!(2026-03-01 10:00:00 UTC);
        let url = presign_url(
            "GET",
            "https://gw.example:443/v1/x?a=b",
            &creds(Some("tk")),
            "us-east-1",
            "ssm",
            t,
            60,
        );
        assert!(
            url.starts_with("https://gw.example:443/v1/x?a=b&X-Amz-Algorithm=AWS4-HMAC-SHA256&"),
            "{url}"
        );
        let target = url.strip_prefix("https://gw.example:443").unwrap();
        let (path, query) = target.split_once('?').unwrap();
        let h = hdrs(&[("Host", "gw.example")]);
        let req = Request {
            method: "GET",
            path,
            query,
            headers: &h,
            body: b"",
        };
        let p = parse_auth(&req).unwrap();
        assert_eq!(p.expires_secs, Some(60));
        assert_eq!(p.session_token.as_deref(), Some("tk"));
        let regions = ["us-east-1".to_string()];
        assert!(verify_request(
            &req,
            &p,
            SECRET,
            &opts(&regions, &["ssm"], t + time::Duration::seconds(60))
        )
        .is_ok());
        assert_eq!(
            verify_request(
                &req,
                &p,
                SECRET,
                &opts(&regions, &["ssm"], t + time::Duration::seconds(61))
            ),
            Err(AuthError::InvalidSignature("Request has expired".into()))
        );
        // Out-of-range X-Amz-Expires.
        for (exp, needle) in [
            ("0", "greater than 0"),
            ("604801", "less than a week"),
            ("abc", "number"),
        ] {
            let q = query.replace("X-Amz-Expires=60", &format!("X-Amz-Expires={exp}"));
            let req = Request {
                method: "GET",
                path,
                query: &q,
                headers: &h,
                body: b"",
            };
            assert!(
                matches!(parse_auth(&req), Err(AuthError::Incomplete(m)) if m.contains(needle)),
                "{exp}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_auth_never_panics(auth in ".*", date in ".*", query in ".*", extra in proptest::collection::vec((".*", ".*"), 0..4)) {
            let mut h = vec![
                ("Host".to_string(), "x".to_string()),
                ("Authorization".to_string(), auth),
                ("X-Amz-Date".to_string(), date),
            ];
            h.extend(extra);
            let req = Request { method: "GET", path: "/", query: &query, headers: &h, body: b"" };
            let _ = parse_auth(&req);
            let req = Request { method: "GET", path: "/", query: &query, headers: &h[2..], body: b"" };
            if let Ok(p) = parse_auth(&req) {
                let regions = ["us-east-1".to_string()];
                let _ = verify_request(&req, &p, "s", &opts(&regions, &["ssm"], OffsetDateTime::UNIX_EPOCH));
            }
        }

        #[test]
        fn parse_auth_header_shapes(cred in "[A-Za-z0-9/_-]{0,40}", sh in "[a-z;-]{0,20}", sig in "[0-9a-f=,]{0,70}") {
            let h = vec![
                ("Host".to_string(), "x".to_string()),
                ("X-Amz-Date".to_string(), "20150830T123600Z".to_string()),
                ("Authorization".to_string(), format!("AWS4-HMAC-SHA256 Credential={cred}, SignedHeaders={sh}, Signature={sig}")),
            ];
            let req = Request { method: "GET", path: "/", query: "", headers: &h, body: b"" };
            if let Ok(p) = parse_auth(&req) {
                let regions = ["us-east-1".to_string()];
                let _ = verify_request(&req, &p, "s", &opts(&regions, &["ssm"], OffsetDateTime::UNIX_EPOCH));
            }
        }
    }
}
