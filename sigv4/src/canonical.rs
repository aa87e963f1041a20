//! Canonicalisation rules of SigV4 (spec sigv4-iam-kms.md §1.1).
//!
//! Everything here is shared by the signer and the verifier so the two can
//! never disagree about a byte.

use aws_lc_rs::{digest, hmac};

/// The only algorithm we speak.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// The credential scope terminator.
pub const TERMINATOR: &str = "aws4_request";
/// SHA-256 of the empty string.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Hex SHA-256, as used for payload hashes and the canonical request hash.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data).as_ref())
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Derives `kSigning` from the secret, date (YYYYMMDD), region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let mut first = Vec::with_capacity(4 + secret.len());
    first.extend_from_slice(b"AWS4");
    first.extend_from_slice(secret.as_bytes());
    let k_date = hmac_sha256(&first, date.as_bytes());
    let k_region = hmac_sha256(&k_date, region.as_bytes());
    let k_service = hmac_sha256(&k_region, service.as_bytes());
    hmac_sha256(&k_service, TERMINATOR.as_bytes())
}

/// Hex HMAC-SHA256 of the string to sign under `kSigning`.
pub fn signature_hex(signing_key: &[u8; 32], string_to_sign: &str) -> String {
    hex::encode(hmac_sha256(signing_key, string_to_sign.as_bytes()))
}

/// `YYYYMMDD/region/service/aws4_request`.
pub fn credential_scope(date: &str, region: &str, service: &str) -> String {
    format!("{date}/{region}/{service}/{TERMINATOR}")
}

/// The string to sign (no trailing newline).
pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0x0f)]));
}

/// SigV4 UriEncode: keeps `A-Z a-z 0-9 - _ . ~` (and `/` when
/// `keep_slash`), writes every other byte as uppercase `%XX`.
pub fn uri_encode(data: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(data.len());
    for &b in data {
        if is_unreserved(b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            push_pct(&mut out, b);
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lenient percent-decoding: malformed escapes are kept literally; `+` is
/// not special.
pub fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex_val),
                bytes.get(i + 2).copied().and_then(hex_val),
            ) {
                out.push((h << 4) | l);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// RFC 3986 style path normalisation as SigV4 does it for non-S3 services:
/// drops `.` segments, resolves `..`, collapses `//`, keeps a trailing `/`.
pub fn normalize_path(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = String::with_capacity(path.len() + 1);
    out.push('/');
    out.push_str(&segs.join("/"));
    let trailing = path.ends_with('/') || path.ends_with("/.") || path.ends_with("/..");
    if trailing && !segs.is_empty() {
        out.push('/');
    }
    out
}

/// Canonical URI from the raw (still percent-encoded) path as on the wire.
///
/// `normalize` (every service but S3): normalise, then encode a second time
/// (the client's `%20` becomes `%2520`). Otherwise (S3): no normalisation,
/// existing escapes are kept and only raw bytes outside the unreserved set
/// are encoded.
pub fn canonical_uri(raw_path: &str, normalize: bool) -> String {
    let path = if raw_path.is_empty() { "/" } else { raw_path };
    if normalize {
        uri_encode(normalize_path(path).as_bytes(), true)
    } else {
        canonical_uri_single(path)
    }
}

/// Non-normalising but double-encoding variant (aws-c-auth's
/// `normalize=false` test cases).
pub fn canonical_uri_unnormalized_double(raw_path: &str) -> String {
    let path = if raw_path.is_empty() { "/" } else { raw_path };
    uri_encode(path.as_bytes(), true)
}

fn canonical_uri_single(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && bytes.get(i + 1).copied().and_then(hex_val).is_some()
            && bytes.get(i + 2).copied().and_then(hex_val).is_some()
        {
            out.push('%');
            out.push(char::from(bytes[i + 1].to_ascii_uppercase()));
            out.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            i += 3;
            continue;
        }
        if is_unreserved(b) || b == b'/' {
            out.push(char::from(b));
        } else {
            push_pct(&mut out, b);
        }
        i += 1;
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Splits a raw query string into decoded `(name, value)` pairs, in order.
/// Empty segments (`a=1&&b=2`) are skipped.
pub fn parse_query(raw_query: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    raw_query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Canonical query string: names and values decoded then UriEncoded, sorted
/// by name then value, `key=` for valueless parameters. With
/// `exclude_signature` (presigned) `X-Amz-Signature` is left out.
pub fn canonical_query(raw_query: &str, exclude_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = parse_query(raw_query)
        .into_iter()
        .filter(|(k, _)| !(exclude_signature && k.as_slice() == b"X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k, false), uri_encode(&v, false)))
        .collect();
    pairs.sort();
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

/// Trims a header value and collapses inner runs of whitespace to one space.
pub fn canonical_header_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, word) in v.split_ascii_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The canonical headers block (each line `name:value\n`) for exactly the
/// `signed` names, in that order. Repeated headers are joined by `,` in
/// arrival order. Returns `Err(name)` for a signed header that is absent.
pub fn canonical_headers(
    headers: &[(String, String)],
    signed: &[String],
) -> Result<String, String> {
    let mut out = String::new();
    for name in signed {
        let lname = name.to_ascii_lowercase();
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&lname))
            .map(|(_, v)| canonical_header_value(v))
            .collect();
        if values.is_empty() {
            return Err(lname);
        }
        out.push_str(&lname);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// The payload hash: the `x-amz-content-sha256` header when present, else
/// the SHA-256 of the body.
pub fn payload_hash(headers: &[(String, String)], body: &[u8]) -> String {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-amz-content-sha256"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| sha256_hex(body))
}

/// Joins the six canonical request fields.
pub fn canonical_request(
    method: &str,
    canonical_uri: &str,
    canonical_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    payload_hash: &str,
) -> String {
    format!("{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_hash}")
}

/// `YYYYMMDDTHHMMSSZ` (UTC).
pub fn format_amz_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Parses `YYYYMMDDTHHMMSSZ` strictly.
pub fn parse_amz_date(s: &str) -> Option<time::OffsetDateTime> {
    let b = s.as_bytes();
    if b.len() != 16 || b.get(8) != Some(&b'T') || b.get(15) != Some(&b'Z') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    let year = i32::try_from(num(0..4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let day = u8::try_from(num(6..8)?).ok()?;
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
    )
    .ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc())
}

/// Parses an HTTP `Date` header (RFC 1123 / RFC 2822, e.g.
/// `Sun, 30 Aug 2015 12:36:00 GMT`) or an ISO-8601 basic date.
pub fn parse_http_date(s: &str) -> Option<time::OffsetDateTime> {
    let s = s.trim();
    if let Some(t) = parse_amz_date(s) {
        return Some(t);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822) {
        return Some(t);
    }
    let stripped = s.strip_suffix(" GMT").or_else(|| s.strip_suffix(" UTC"))?;
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second]"
    );
    time::PrimitiveDateTime::parse(stripped, &fmt)
        .ok()
        .map(|p| p.assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise() {
        assert_eq!(normalize_path("/example/.."), "/");
        assert_eq!(normalize_path("/example1/example2/../.."), "/");
        assert_eq!(normalize_path("/./"), "/");
        assert_eq!(normalize_path("//"), "/");
        assert_eq!(normalize_path("/./example"), "/example");
        assert_eq!(normalize_path("//example//"), "/example/");
        assert_eq!(normalize_path("/a/b/../c/"), "/a/c/");
        assert_eq!(normalize_path("/a/b/."), "/a/b/");
    }

    #[test]
    fn double_encode() {
        assert_eq!(canonical_uri("/a%20b", true), "/a%2520b");
        assert_eq!(canonical_uri("/a%20b", false), "/a%20b");
        assert_eq!(canonical_uri("/a b", false), "/a%20b");
        assert_eq!(canonical_uri("", true), "/");
    }

    #[test]
    fn query() {
        assert_eq!(canonical_query("b=2&a&a=1", false), "a=&a=1&b=2");
        assert_eq!(
            canonical_query("x=a%2fb&X-Amz-Signature=1", true),
            "x=a%2Fb"
        );
        assert_eq!(canonical_query("", false), "");
    }

    #[test]
    fn dates() {
        let t = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(format_amz_date(t), "20150830T123600Z");
        assert!(parse_amz_date("2015083XT123600Z").is_none());
        assert!(parse_amz_date("20150830T123600").is_none());
        let h = parse_http_date("Sun, 30 Aug 2015 12:36:00 GMT").unwrap();
        assert_eq!(h, t);
    }

    #[test]
    fn header_value() {
        assert_eq!(canonical_header_value("  \"a   b   c\" "), "\"a b c\"");
    }
}
