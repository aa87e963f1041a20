//! Websocket connect (ws:// or wss://).

use std::sync::Arc;
use std::time::Duration;

use crate::tcp_progress::AckProgress;
use crate::tls_stream::TlsStream;
use crate::wsconn::UNMASKED_EXTENSION;
use bytes::{Buf, BytesMut};
use std::os::fd::AsFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Either a plain or a TLS stream, so one websocket type serves both.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::any::Any {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// What the kernel says of the TCP connection under `io`, when it is one
/// of ours (plain or TLS) and the kernel answers.
pub fn ack_progress(io: &dyn Io) -> Option<AckProgress> {
    let io: &dyn std::any::Any = io;
    let tcp = io
        .downcast_ref::<TcpStream>()
        .or_else(|| io.downcast_ref::<TlsStream>().map(TlsStream::tcp))?;
    AckProgress::of(tcp.as_fd()).ok()
}

pub type WsStream = crate::wsconn::WsConn<Box<dyn Io>>;

#[derive(Debug, thiserror::Error)]
pub enum WsError {
    #[error("invalid websocket URL {0}")]
    BadUrl(String),
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
}

/// Largest websocket message (and frame) accepted from the peer. A data
/// channel frame is at most 120 bytes of header plus a 1 MiB payload.
pub const MAX_MESSAGE_SIZE: usize = 2 << 20;

/// Time allowed for TCP connect + TLS + upgrade.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest upgrade response head read before giving up.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Where to dial, split out of a URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub tls: bool,
    /// Host as written in the URL (IPv6 keeps its brackets).
    pub host: String,
    pub port: u16,
    pub default_port: bool,
}

impl Target {
    /// Parses `scheme://host[:port]...`; `secure`/`plain` name the two
    /// accepted schemes and their default ports.
    pub(crate) fn parse(
        uri: &http::Uri,
        secure: (&str, u16),
        plain: (&str, u16),
    ) -> Option<Target> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let (tls, default) = if scheme == secure.0 {
            (true, secure.1)
        } else if scheme == plain.0 {
            (false, plain.1)
        } else {
            return None;
        };
        let host = uri.host()?.to_string();
        if host.is_empty() {
            return None;
        }
        let port = uri.port_u16().unwrap_or(default);
        Some(Target {
            tls,
            host,
            port,
            default_port: port == default,
        })
    }

    /// Host without IPv6 brackets, for DNS/TCP and TLS server names.
    pub(crate) fn bare_host(&self) -> &str {
        self.host.trim_start_matches('[').trim_end_matches(']')
    }

    /// `Host` header value: host, plus `:port` when it is not the default.
    pub(crate) fn host_header(&self) -> String {
        if self.default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Opens TCP, then TLS if the scheme asks for it.
    pub(crate) async fn dial(
        &self,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Box<dyn Io>, String> {
        let tcp = TcpStream::connect((self.bare_host(), self.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        if !self.tls {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(self.bare_host().to_string())
            .map_err(|e| format!("invalid server name: {e}"))?;
        let stream = crate::tls_stream::connect(crate::tls_stream::client_config(tls), name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Box::new(stream))
    }
}

/// Connects to `url` (`ws://` or `wss://`), completing the upgrade. The max
/// message size is bounded (peer bytes are hostile).
pub async fn connect(url: &str, tls: Arc<rustls::ClientConfig>) -> Result<WsStream, WsError> {
    let uri: http::Uri = url.parse().map_err(|_| WsError::BadUrl(url.to_string()))?;
    let target = Target::parse(&uri, ("wss", 443), ("ws", 80))
        .ok_or_else(|| WsError::BadUrl(url.to_string()))?;
    let fail = |reason: String| WsError::Connect {
        url: redact_query(url),
        reason,
    };
    let fut = async {
        let mut io = target.dial(&tls).await.map_err(fail)?;
        let (already_read, unmasked) = upgrade(&mut io, &uri, &target).await.map_err(fail)?;
        let ws = crate::wsconn::WsConn::new(io, Role::Client, MAX_MESSAGE_SIZE, already_read);
        Ok(if unmasked {
            ws.with_unmasked_client_frames()
        } else {
            ws
        })
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(fail("timed out".to_string())),
    }
}

/// The client half of the HTTP/1.1 upgrade (RFC 6455 §4.1). Returns what
/// arrived after the response head (the first websocket bytes, if any) and
/// whether the server took [`UNMASKED_EXTENSION`], offered over TLS only.
async fn upgrade(
    io: &mut Box<dyn Io>,
    uri: &http::Uri,
    target: &Target,
) -> Result<(BytesMut, bool), String> {
    let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let offer = if target.tls {
        format!("Sec-WebSocket-Extensions: {UNMASKED_EXTENSION}\r\n")
    } else {
        String::new()
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offer}\r\n",
        target.host_header()
    );
    io.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    io.flush().await.map_err(|e| e.to_string())?;
    let expected_accept = derive_accept_key(key.as_bytes());
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let head_len = {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let unmasked = check_upgrade_response(&response, &expected_accept)?;
                    if unmasked && !target.tls {
                        return Err("the server accepted an extension not offered".to_string());
                    }
                    Some((n, unmasked))
                }
                Ok(httparse::Status::Partial) => None,
                Err(e) => return Err(format!("bad websocket upgrade response: {e}")),
            }
        };
        if let Some((n, unmasked)) = head_len {
            buf.advance(n);
            return Ok((buf, unmasked));
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err("websocket upgrade response head too large".to_string());
        }
        let n = io.read_buf(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed during the websocket upgrade".to_string());
        }
    }
}

/// Checks the 101 response; returns whether it took [`UNMASKED_EXTENSION`].
fn check_upgrade_response(
    response: &httparse::Response<'_, '_>,
    expected_accept: &str,
) -> Result<bool, String> {
    let code = response.code.unwrap_or(0);
    if code != 101 {
        return Err(format!(
            "HTTP error: {code} {}",
            response.reason.unwrap_or_default()
        ));
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let upgrade_ok = header("upgrade").is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    let connection_ok = header("connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !upgrade_ok || !connection_ok {
        return Err("the server did not switch to the websocket protocol".to_string());
    }
    if header("sec-websocket-accept").as_deref() != Some(expected_accept) {
        return Err("Sec-WebSocket-Accept does not match the key sent".to_string());
    }
    // §4.1: an extension the client did not offer fails the connection.
    match header("sec-websocket-extensions") {
        None => Ok(false),
        Some(v) if v.trim().eq_ignore_ascii_case(UNMASKED_EXTENSION) => Ok(true),
        Some(v) => Err(format!("the server accepted an extension not offered: {v}")),
    }
}

/// URLs may carry presigned credentials in the query; errors show only the path.
fn redact_query(url: &str) -> String {
    match url.split_once('?') {
        Some((base, _)) => format!("{base}?…"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let u: http::Uri = "wss://example.com/v1/x?y=1".parse().unwrap();
        let t = Target::parse(&u, ("wss", 443), ("ws", 80)).unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "example.com".into(),
                port: 443,
                default_port: true
            }
        );
        assert_eq!(t.host_header(), "example.com");

        let u: http::Uri = "ws://127.0.0.1:8080/".parse().unwrap();
        let t = Target::parse(&u, ("wss", 443), ("ws", 80)).unwrap();
        assert!(!t.tls);
        assert_eq!(t.host_header(), "127.0.0.1:8080");

        let u: http::Uri = "ws://[::1]:9/".parse().unwrap();
        let t = Target::parse(&u, ("wss", 443), ("ws", 80)).unwrap();
        assert_eq!(t.bare_host(), "::1");
        assert_eq!(t.host_header(), "[::1]:9");

        let u: http::Uri = "ftp://x/".parse().unwrap();
        assert!(Target::parse(&u, ("wss", 443), ("ws", 80)).is_none());
    }

    #[tokio::test]
    async fn bad_url_is_rejected() {
        let tls = crate::tls::client_config(None).unwrap();
        assert!(matches!(
            connect("http://x/", tls.clone()).await,
            Err(WsError::BadUrl(_))
        ));
        assert!(matches!(
            connect("not a url", tls).await,
            Err(WsError::BadUrl(_))
        ));
    }

    #[tokio::test]
    async fn connects_to_loopback_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(s).await.unwrap();
            use futures_util::{SinkExt, StreamExt};
            let m = ws.next().await.unwrap().unwrap();
            ws.send(m).await.unwrap();
        });
        let tls = crate::tls::client_config(None).unwrap();
        let mut ws = connect(
            &format!("ws://{addr}/v1/data-channel/s?role=publish_subscribe"),
            tls,
        )
        .await
        .unwrap();
        use futures_util::{SinkExt, StreamExt};
        ws.send(tokio_tungstenite::tungstenite::Message::text("hi"))
            .await
            .unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), "hi");
        server.await.unwrap();
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    /// wss:// against a self-signed certificate trusted through a CA bundle
    /// file, the way `AWS_CA_BUNDLE` is used with the gateway.
    /// A TLS acceptor with a fresh self-signed certificate for 127.0.0.1,
    /// and a CA bundle file (named after `tag`) that trusts it.
    fn self_signed(tag: &str) -> (tokio_rustls::TlsAcceptor, std::path::PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let pem_path =
            std::env::temp_dir().join(format!("airlock-ws-{tag}-{}.pem", std::process::id()));
        std::fs::write(&pem_path, ck.cert.pem()).unwrap();
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .unwrap();
        (tokio_rustls::TlsAcceptor::from(Arc::new(server)), pem_path)
    }

    #[tokio::test]
    async fn wss_with_ca_bundle() {
        let (acceptor, pem_path) = self_signed("ca");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor2 = acceptor.clone();
        let srv = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let tls = acceptor.accept(s).await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
            let m = ws.next().await.unwrap().unwrap();
            ws.send(m).await.unwrap();
        });
        let cfg = crate::tls::client_config(Some(&pem_path)).unwrap();
        let _ = std::fs::remove_file(&pem_path);
        // A stock server ignores the unmasked extension: frames stay masked
        // (tungstenite refuses unmasked ones) and the echo below works.
        let mut ws = connect(
            &format!("wss://{addr}/v1/control-channel/mi-1?role=subscribe&stream=input"),
            cfg,
        )
        .await
        .unwrap();
        ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap(),
            Message::binary(vec![1u8, 2, 3])
        );
        srv.await.unwrap();

        // Without the bundle the same certificate is refused.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            assert!(acceptor2.accept(s).await.is_err());
        });
        let err = connect(
            &format!("wss://{addr}/"),
            crate::tls::client_config(None).unwrap(),
        )
        .await;
        match err {
            Err(WsError::Connect { reason, .. }) => {
                assert!(reason.contains("certificate"), "{reason}")
            }
            other => panic!("expected a certificate error, got {:?}", other.map(|_| ())),
        }
    }

    /// Over TLS our client offers the unmasked extension; a server that
    /// takes it gets the client's frames unmasked.
    #[tokio::test]
    async fn a_server_taking_the_unmasked_extension_gets_unmasked_frames() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (acceptor, pem_path) = self_signed("ext");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let srv = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(s).await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                head.push(tls.read_u8().await.unwrap());
            }
            let head = String::from_utf8(head).unwrap();
            assert!(
                head.lines().any(|l| l.eq_ignore_ascii_case(&format!(
                    "sec-websocket-extensions: {UNMASKED_EXTENSION}"
                ))),
                "extension not offered: {head}"
            );
            let key = head
                .lines()
                .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: {UNMASKED_EXTENSION}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            );
            tls.write_all(response.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            let mut frame = [0u8; 5];
            tls.read_exact(&mut frame).await.unwrap();
            frame
        });
        let cfg = crate::tls::client_config(Some(&pem_path)).unwrap();
        let _ = std::fs::remove_file(&pem_path);
        let mut ws = connect(&format!("wss://{addr}/"), cfg).await.unwrap();
        ws.send(Message::binary(b"abc".to_vec())).await.unwrap();
        assert_eq!(srv.await.unwrap(), [0x82, 0x03, b'a', b'b', b'c']);
    }

    /// An extension the client did not offer fails the upgrade (§4.1).
    #[test]
    fn an_extension_not_offered_is_refused() {
        let accept = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
        let check = |extension: Option<&str>| {
            let mut headers = vec![
                httparse::Header {
                    name: "Upgrade",
                    value: b"websocket",
                },
                httparse::Header {
                    name: "Connection",
                    value: b"Upgrade",
                },
                httparse::Header {
                    name: "Sec-WebSocket-Accept",
                    value: accept.as_bytes(),
                },
            ];
            if let Some(e) = extension {
                headers.push(httparse::Header {
                    name: "Sec-WebSocket-Extensions",
                    value: e.as_bytes(),
                });
            }
            let response = httparse::Response {
                version: Some(1),
                code: Some(101),
                reason: Some("Switching Protocols"),
                headers: &mut headers,
            };
            check_upgrade_response(&response, accept)
        };
        assert_eq!(check(None), Ok(false));
        assert_eq!(check(Some(UNMASKED_EXTENSION)), Ok(true));
        assert!(check(Some("permessage-deflate")).is_err());
    }
}
