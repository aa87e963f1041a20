//! Runs every case of the aws-c-auth SigV4 suite (shared/conformance/sigv4)
//! both ways: sign `request.txt` and compare with the expected canonical
//! request / string to sign / signature (header and query form), verify the
//! `*-signed-request.txt` files at the context timestamp, and check that a
//! changed signed byte is rejected.

use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_sigv4::sign::{presign, sign_headers, SigningParams};
use airlock_sigv4::{
    parse_auth, verify_request, AuthError, Credentials, Request, SecretKey, VerifyOptions,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Cases (or directions) that cannot be supported honestly, with the reason.
/// They are still run: the test asserts the documented behaviour.
const QUERY_VERIFY_REJECTED: &[(&str, &str)] = &[(
    "post-sts-header-after",
    "omit_session_token: X-Amz-Security-Token is appended to the presigned query AFTER signing. \
     The SigV4 verifier canonicalises every query parameter except X-Amz-Signature (spec §1.1), \
     so this URL cannot verify; AWS itself signs the token in presigned URLs. Asserted to be rejected.",
)];

fn corpus_dir() -> PathBuf {
    match std::env::var_os("AIRLOCK_CONFORMANCE_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/conformance/sigv4"
        )),
    }
}

#[derive(Clone, Debug)]
struct HttpReq {
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl HttpReq {
    fn target(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            format!("{}?{}", self.path, self.query)
        }
    }
    fn as_request(&self) -> Request<'_> {
        Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

/// Parses an HTTP/1.1 request as written in the corpus (LF or CRLF line
/// ends, obs-fold continuation lines replaced by one space as RFC 7230
/// §3.2.4 asks of a recipient).
fn parse_http(text: &[u8]) -> HttpReq {
    let (head, body) = match find(text, b"\r\n\r\n") {
        Some(i) => (&text[..i], text[i + 4..].to_vec()),
        None => match find(text, b"\n\n") {
            Some(i) => (&text[..i], text[i + 2..].to_vec()),
            None => (text, Vec::new()),
        },
    };
    let head = String::from_utf8(head.to_vec()).expect("utf-8 head");
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start = lines.next().expect("request line");
    let (method, rest) = start.split_once(' ').expect("method");
    let (target, _version) = rest.rsplit_once(' ').expect("version");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in lines {
        if line.starts_with(' ') || line.starts_with('\t') {
            let last = headers.last_mut().expect("continuation without header");
            last.1.push(' ');
            last.1.push_str(line.trim());
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let (n, v) = line.split_once(':').expect("header colon");
        headers.push((n.to_string(), v.to_string()));
    }
    HttpReq {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body,
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

struct Context {
    creds: Credentials,
    region: String,
    service: String,
    time: OffsetDateTime,
    normalize: bool,
    sign_body: bool,
    omit_session_token: bool,
    expires: u64,
}

fn load_context(dir: &Path) -> Context {
    let raw = std::fs::read_to_string(dir.join("context.json")).expect("context.json");
    let v: serde_json::Value = serde_json::from_str(&raw).expect("context json");
    let c = &v["credentials"];
    Context {
        creds: Credentials {
            access_key_id: c["access_key_id"].as_str().expect("akid").to_string(),
            secret_access_key: SecretKey::new(c["secret_access_key"].as_str().expect("secret")),
            session_token: c["token"].as_str().map(str::to_string),
        },
        region: v["region"].as_str().expect("region").to_string(),
        service: v["service"].as_str().expect("service").to_string(),
        time: OffsetDateTime::parse(v["timestamp"].as_str().expect("timestamp"), &Rfc3339)
            .expect("timestamp"),
        normalize: v["normalize"].as_bool().unwrap_or(true),
        sign_body: v["sign_body"].as_bool().unwrap_or(false),
        omit_session_token: v["omit_session_token"].as_bool().unwrap_or(false),
        expires: v["expiration_in_seconds"].as_u64().unwrap_or(3600),
    }
}

fn read(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name)).ok()
}

fn cases() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance dir {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("context.json").is_file())
        .collect();
    out.sort();
    assert!(
        out.len() >= 38,
        "expected the 38 v4 cases, found {}",
        out.len()
    );
    out
}

fn params<'a>(ctx: &'a Context) -> SigningParams<'a> {
    SigningParams {
        credentials: &ctx.creds,
        region: &ctx.region,
        service: &ctx.service,
        time: ctx.time,
        normalize_path: ctx.normalize,
        omit_session_token: ctx.omit_session_token,
    }
}

fn verify(req: &HttpReq, ctx: &Context) -> Result<airlock_sigv4::ParsedAuth, AuthError> {
    let regions = vec!["us-east-1".to_string()];
    let services = ["service"];
    let opts = VerifyOptions {
        max_skew: Duration::from_secs(300),
        allowed_regions: &regions,
        allowed_services: &services,
        normalize_path: ctx.normalize,
        now: ctx.time,
    };
    let r = req.as_request();
    let parsed = parse_auth(&r)?;
    verify_request(&r, &parsed, ctx.creds.secret_access_key.expose(), &opts)?;
    Ok(parsed)
}

fn name(case: &Path) -> String {
    case.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn sign_header_form_matches_every_case() {
    let mut failures = Vec::new();
    for case in cases() {
        let n = name(&case);
        let ctx = load_context(&case);
        let req = parse_http(&std::fs::read(case.join("request.txt")).expect("request.txt"));
        let mut headers = req.headers.clone();
        if ctx.sign_body {
            headers.push((
                "x-amz-content-sha256".to_string(),
                airlock_sigv4::canonical::sha256_hex(&req.body),
            ));
        }
        let out = sign_headers(
            &req.method,
            &req.target(),
            &mut headers,
            &req.body,
            &params(&ctx),
        );
        let want_creq = read(&case, "header-canonical-request.txt").expect("creq");
        let want_sts = read(&case, "header-string-to-sign.txt").expect("sts");
        let want_sig = read(&case, "header-signature.txt").expect("sig");
        if out.canonical_request != want_creq.trim_end() {
            failures.push(format!(
                "{n}: canonical request\n got:\n{}\n want:\n{want_creq}",
                out.canonical_request
            ));
            continue;
        }
        if out.string_to_sign != want_sts.trim_end() || out.signature != want_sig.trim() {
            failures.push(format!("{n}: string to sign / signature"));
            continue;
        }
        // The Authorization header we emit equals the one in the signed request.
        let signed =
            parse_http(&std::fs::read(case.join("header-signed-request.txt")).expect("signed"));
        let want_auth = signed
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        let got_auth = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"));
        if want_auth.map(|h| h.1.trim()) != got_auth.map(|h| h.1.trim()) {
            failures.push(format!(
                "{n}: authorization header {got_auth:?} vs {want_auth:?}"
            ));
        }
        // Token: present (signed or not) exactly when the context has one.
        let tok = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-security-token"))
            .map(|h| h.1.clone());
        if tok != ctx.creds.session_token {
            failures.push(format!("{n}: session token header {tok:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sign_query_form_matches_every_case() {
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases() {
        let n = name(&case);
        let Some(want_creq) = read(&case, "query-canonical-request.txt") else {
            failures.push(format!("{n}: no query-form files in corpus"));
            continue;
        };
        ran += 1;
        let ctx = load_context(&case);
        let req = parse_http(&std::fs::read(case.join("request.txt")).expect("request.txt"));
        let (target, out) = presign(
            &req.method,
            &req.target(),
            &req.headers,
            &req.body,
            &params(&ctx),
            ctx.expires,
        );
        let want_sts = read(&case, "query-string-to-sign.txt").expect("sts");
        let want_sig = read(&case, "query-signature.txt").expect("sig");
        if out.canonical_request != want_creq.trim_end() {
            failures.push(format!(
                "{n}: canonical request\n got:\n{}\n want:\n{want_creq}",
                out.canonical_request
            ));
            continue;
        }
        if out.string_to_sign != want_sts.trim_end() || out.signature != want_sig.trim() {
            failures.push(format!("{n}: string to sign / signature"));
            continue;
        }
        let signed =
            parse_http(&std::fs::read(case.join("query-signed-request.txt")).expect("signed"));
        if target != signed.target() {
            failures.push(format!(
                "{n}: presigned target\n got  {target}\n want {}",
                signed.target()
            ));
        }
    }
    assert_eq!(ran, cases().len());
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Variants of `req` with one signed byte changed.
fn tampered(req: &HttpReq, parsed: &airlock_sigv4::ParsedAuth) -> Vec<(String, HttpReq)> {
    let mut out = Vec::new();
    let mut m = req.clone();
    m.method = if req.method == "GET" {
        "PUT".into()
    } else {
        "GET".into()
    };
    out.push(("method".to_string(), m));
    for signed in &parsed.signed_headers {
        if let Some(i) = req
            .headers
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(signed))
        {
            let mut t = req.clone();
            let v = t.headers[i].1.trim().to_string();
            let mut bytes = v.into_bytes();
            if let Some(b) = bytes.last_mut() {
                *b = if *b == b'0' { b'1' } else { b'0' };
            }
            t.headers[i].1 = String::from_utf8(bytes).unwrap_or_default();
            out.push((format!("header {signed}"), t));
        }
    }
    let mut p = req.clone();
    p.path.push('x');
    out.push(("path".to_string(), p));
    if !req.body.is_empty() {
        let mut b = req.clone();
        b.body[0] ^= 1;
        out.push(("body".to_string(), b));
    }
    if parsed.expires_secs.is_some() {
        let mut q = req.clone();
        q.query = q.query.replace("X-Amz-Expires=3600", "X-Amz-Expires=3601");
        out.push(("X-Amz-Expires".to_string(), q));
    } else if !req.query.is_empty() {
        let mut q = req.clone();
        q.query.push('x');
        out.push(("query".to_string(), q));
    }
    out
}

fn verify_form(form: &str) {
    let mut failures = Vec::new();
    for case in cases() {
        let n = name(&case);
        let ctx = load_context(&case);
        let file = format!("{form}-signed-request.txt");
        let Ok(raw) = std::fs::read(case.join(&file)) else {
            failures.push(format!("{n}: missing {file}"));
            continue;
        };
        let req = parse_http(&raw);
        let known_reject = form == "query" && QUERY_VERIFY_REJECTED.iter().any(|(c, _)| *c == n);
        match verify(&req, &ctx) {
            Ok(_) if known_reject => {
                failures.push(format!("{n}: listed as unsupported but verified"))
            }
            Err(_) if known_reject => continue,
            Err(e) => {
                failures.push(format!("{n}: {form} verify failed: {e} ({})", e.code()));
                continue;
            }
            Ok(parsed) => {
                if parsed.session_token != ctx.creds.session_token {
                    failures.push(format!("{n}: session token {:?}", parsed.session_token));
                }
                assert_eq!(parsed.access_key_id, "AKIDEXAMPLE");
                for (what, t) in tampered(&req, &parsed) {
                    match verify(&t, &ctx) {
                        Err(AuthError::InvalidSignature(_)) | Err(AuthError::Incomplete(_)) => {}
                        other => {
                            failures.push(format!("{n}: tampered {what} not rejected: {other:?}"))
                        }
                    }
                }
                // Outside the time window.
                let mut late = load_context(&case);
                late.time += time::Duration::hours(2);
                if verify(&req, &late).is_ok() {
                    failures.push(format!("{n}: accepted two hours later"));
                }
                // Wrong secret.
                let mut wrong = load_context(&case);
                wrong.creds.secret_access_key = SecretKey::new("not-the-secret");
                if !matches!(verify(&req, &wrong), Err(AuthError::InvalidSignature(_))) {
                    failures.push(format!("{n}: accepted with wrong secret"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn verify_header_signed_requests() {
    verify_form("header");
}

#[test]
fn verify_query_signed_requests() {
    for (case, reason) in QUERY_VERIFY_REJECTED {
        eprintln!("query verify not supported for {case}: {reason}");
    }
    verify_form("query");
}
