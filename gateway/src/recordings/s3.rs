//! A small S3 client (path-style, SigV4 via `airlock_sigv4`, hyper over
//! TCP or rustls): just PutObject (multipart above a threshold), GetObject and
//! ListObjectsV2 — what recording storage needs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_sigv4::sign::{sign_headers, SigningParams};
use airlock_sigv4::{Credentials, SecretKey};
use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

use super::{RecordingStorage, StorageError};

/// Objects larger than this go up as multipart uploads.
pub const MULTIPART_THRESHOLD: usize = 8 << 20;
/// Part size (S3's minimum for all but the last part is 5 MiB).
pub const PART_SIZE: usize = 8 << 20;
const MAX_RESPONSE: usize = 64 << 20;
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct S3Storage {
    endpoint: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    bucket: String,
    region: String,
    creds: Credentials,
}

fn enc(s: &str) -> String {
    airlock_sigv4::canonical::uri_encode(s.as_bytes(), true)
}

fn enc_q(s: &str) -> String {
    airlock_sigv4::canonical::uri_encode(s.as_bytes(), false)
}

/// Text of every `<tag>…</tag>` in `xml`, entity-decoded.
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(
            after[..j]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[j + close.len()..];
    }
    out
}

struct Resp {
    status: u16,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl S3Storage {
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        access_key_id: &str,
        secret: &str,
        ca_bundle: Option<&Path>,
    ) -> Result<Self, String> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|_| format!("bad s3_endpoint {endpoint:?}"))?;
        let secure = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => {
                return Err(format!(
                    "s3_endpoint {endpoint:?} must be http:// or https://"
                ))
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("s3_endpoint {endpoint:?} has no host"))?
            .trim_matches(|c| c == '[' || c == ']')
            .to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let mut roots = rustls::RootCertStore::empty();
            match ca_bundle {
                Some(p) => {
                    let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
                    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
                        let c = c.map_err(|e| format!("{}: {e}", p.display()))?;
                        roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Some(Arc::new(cfg))
        } else {
            None
        };
        Ok(S3Storage {
            endpoint,
            host,
            port,
            tls,
            bucket: bucket.to_string(),
            region: region.to_string(),
            creds: Credentials {
                access_key_id: access_key_id.to_string(),
                secret_access_key: SecretKey::new(secret),
                session_token: None,
            },
        })
    }

    fn host_header(&self) -> String {
        let default = if self.tls.is_some() { 443 } else { 80 };
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }

    async fn call(
        &self,
        method: &str,
        path_and_query: &str,
        body: Vec<u8>,
    ) -> Result<Resp, StorageError> {
        let mut headers = vec![
            ("host".to_string(), self.host_header()),
            (
                "x-amz-content-sha256".to_string(),
                airlock_sigv4::canonical::sha256_hex(&body),
            ),
        ];
        sign_headers(
            method,
            path_and_query,
            &mut headers,
            &body,
            &SigningParams {
                credentials: &self.creds,
                region: &self.region,
                service: "s3",
                time: time::OffsetDateTime::now_utc(),
                normalize_path: false,
                omit_session_token: false,
            },
        );
        let mut b = http::Request::builder().method(method).uri(path_and_query);
        for (k, v) in &headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let req = b
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| StorageError::Rejected(e.to_string()))?;
        match tokio::time::timeout(CALL_TIMEOUT, self.send(req)).await {
            Ok(r) => r,
            Err(_) => Err(StorageError::Unavailable(format!(
                "{} timed out",
                self.endpoint
            ))),
        }
    }

    async fn send(&self, req: http::Request<Full<Bytes>>) -> Result<Resp, StorageError> {
        let down = |e: String| StorageError::Unavailable(format!("{}: {e}", self.endpoint));
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| down(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        macro_rules! exchange {
            ($io:expr) => {{
                let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new($io))
                    .await
                    .map_err(|e| down(e.to_string()))?;
                let driver = tokio::spawn(async move {
                    let _ = conn.await;
                });
                let r = async {
                    let resp = sender
                        .send_request(req)
                        .await
                        .map_err(|e| down(e.to_string()))?;
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                        .collect()
                        .await
                        .map_err(|e| down(e.to_string()))?
                        .to_bytes()
                        .to_vec();
                    Ok(Resp {
                        status,
                        headers,
                        body,
                    })
                }
                .await;
                driver.abort();
                r
            }};
        }
        match &self.tls {
            None => exchange!(tcp),
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                    .map_err(|e| down(e.to_string()))?;
                let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| down(e.to_string()))?;
                exchange!(stream)
            }
        }
    }

    fn object_path(&self, key: &str) -> String {
        format!("/{}/{}", enc(&self.bucket), enc(key))
    }

    fn check(&self, what: &str, r: &Resp) -> Result<(), StorageError> {
        if (200..300).contains(&r.status) {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&r.body[..r.body.len().min(300)]).into_owned();
        let code = xml_all(&text, "Code")
            .into_iter()
            .next()
            .unwrap_or_default();
        let msg = format!("{what}: HTTP {} {code}", r.status);
        // 5xx and throttling are transient; auth and request errors are not
        // worth retrying, but both leave the chunk with the agent.
        if r.status >= 500 || r.status == 429 || code == "SlowDown" {
            Err(StorageError::Unavailable(msg))
        } else {
            Err(StorageError::Rejected(msg))
        }
    }

    async fn put_multipart(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.object_path(key);
        let r = self
            .call("POST", &format!("{path}?uploads="), Vec::new())
            .await?;
        self.check("CreateMultipartUpload", &r)?;
        let upload_id = xml_all(&String::from_utf8_lossy(&r.body), "UploadId")
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::Unavailable("no UploadId".into()))?;
        let mut etags = Vec::new();
        for (i, part) in data.chunks(PART_SIZE).enumerate() {
            let n = i + 1;
            let r = self
                .call(
                    "PUT",
                    &format!("{path}?partNumber={n}&uploadId={}", enc_q(&upload_id)),
                    part.to_vec(),
                )
                .await?;
            self.check("UploadPart", &r)?;
            let etag = r
                .headers
                .get("etag")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            etags.push((n, etag));
        }
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in &etags {
            let etag = etag.replace('&', "&amp;").replace('"', "&quot;");
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let r = self
            .call(
                "POST",
                &format!("{path}?uploadId={}", enc_q(&upload_id)),
                xml.into_bytes(),
            )
            .await?;
        self.check("CompleteMultipartUpload", &r)?;
        // S3 reports some completion failures inside a 200 body.
        if String::from_utf8_lossy(&r.body).contains("<Error>") {
            return Err(StorageError::Unavailable(
                "CompleteMultipartUpload failed".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl RecordingStorage for S3Storage {
    async fn put(&self, key: &str, data: &[u8]) -> Result<(), StorageError> {
        if data.len() > MULTIPART_THRESHOLD {
            return self.put_multipart(key, data).await;
        }
        let r = self
            .call("PUT", &self.object_path(key), data.to_vec())
            .await?;
        self.check("PutObject", &r)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let r = self.call("GET", &self.object_path(key), Vec::new()).await?;
        if r.status == 404 {
            return Ok(None);
        }
        self.check("GetObject", &r)?;
        Ok(Some(r.body))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q = format!("list-type=2&prefix={}", enc_q(prefix));
            if let Some(t) = &token {
                q.push_str(&format!("&continuation-token={}", enc_q(t)));
            }
            let r = self
                .call("GET", &format!("/{}?{q}", enc(&self.bucket)), Vec::new())
                .await?;
            self.check("ListObjectsV2", &r)?;
            let xml = String::from_utf8_lossy(&r.body).into_owned();
            out.extend(xml_all(&xml, "Key"));
            let truncated = xml_all(&xml, "IsTruncated")
                .first()
                .is_some_and(|v| v == "true");
            token = xml_all(&xml, "NextContinuationToken").into_iter().next();
            if !truncated || token.is_none() {
                break;
            }
        }
        out.sort();
        Ok(out)
    }

    fn url(&self, key: &str) -> String {
        format!("{}/{}/{}", self.endpoint, self.bucket, key)
    }

    fn for_bucket(&self, bucket: &str) -> Option<Arc<dyn RecordingStorage>> {
        let mut other = self.clone();
        other.bucket = bucket.to_string();
        Some(Arc::new(other))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_extraction() {
        let x = "<R><Key>a&amp;b</Key><Key>c</Key><IsTruncated>false</IsTruncated></R>";
        assert_eq!(xml_all(x, "Key"), vec!["a&b", "c"]);
        assert_eq!(xml_all(x, "IsTruncated"), vec!["false"]);
        assert!(xml_all("<Key>unterminated", "Key").is_empty());
    }
}
