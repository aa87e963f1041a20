//! The [`Gateway`] library type: startup (data dir, keys, TLS, store),
//! the accept loop, HTTP routing and graceful shutdown.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::error::{ApiError, GatewayError};
use crate::hub::Hub;
use crate::store::{AccessKey, SqliteStore, Store};
use crate::util::{
    create_private_dir, now_ms, random_bytes, random_string, write_private, SECRET_CHARS,
    UPPER_ALNUM,
};

pub type Body = Full<Bytes>;

/// Shared state of a running gateway.
pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub hub: Hub,
    pub kms: crate::kms_api::Kms,
    pub documents: crate::documents::DocStore,
    /// Root of every session's cancellation token.
    pub sessions_cancel: CancellationToken,
    pub tracker: TaskTracker,
    /// Users, groups, roles and policies (issue 3).
    pub iam: Arc<dyn crate::iam_store::IamStore>,
    /// Authorization decisions, one JSON line each.
    pub audit: crate::audit::AuditLog,
    pub recordings: crate::recordings::Recordings,
    /// Mints and verifies agents' short-lived role credentials.
    pub role_creds: crate::role_creds::RoleCredentialMinter,
}

impl AppState {
    /// Changes a session's state in the store and, when it changed, records
    /// the change in the audit log. Every state change goes through here.
    pub async fn update_session_status(
        &self,
        session_id: &str,
        status: &str,
        end_ms: Option<i64>,
        details: Option<&str>,
    ) -> Result<bool, crate::store::StoreError> {
        let changed = self
            .store
            .update_session_status(session_id, status, end_ms, details)
            .await?;
        if changed {
            self.audit
                .session_state(session_id, status, details.unwrap_or(""));
        }
        Ok(changed)
    }
}

/// A configured gateway, ready to serve.
pub struct Gateway {
    state: Arc<AppState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    ca_path: PathBuf,
    admin_credentials: PathBuf,
}

/// Generates a new access key id (`AKIA` + 16 upper alnum) and 40-char secret.
pub fn new_access_key(principal: &str) -> AccessKey {
    AccessKey {
        access_key_id: format!("AKIA{}", random_string(UPPER_ALNUM, 16)),
        secret: random_string(SECRET_CHARS, 40),
        principal: principal.to_string(),
        created_ms: now_ms(),
        status: "Active".into(),
    }
}

fn load_root_key(path: &Path) -> Result<[u8; 32], GatewayError> {
    match std::fs::read(path) {
        Ok(b) => b.as_slice().try_into().map_err(|_| {
            GatewayError::Crypto(format!("{} must hold exactly 32 bytes", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let k = random_bytes::<32>();
            write_private(path, &k)?;
            Ok(k)
        }
        Err(e) => Err(GatewayError::io(path, e)),
    }
}

impl Gateway {
    /// Prepares the data directory, root key, store, TLS material and the
    /// bootstrap admin key (and its credentials file).
    pub async fn new(config: Config) -> Result<Gateway, GatewayError> {
        config.validate()?;
        let dir = config.server.data_dir.clone();
        create_private_dir(&dir)?;
        let root_key = load_root_key(&dir.join("root.key"))?;
        let store = SqliteStore::open(&dir.join("gateway.db"), &root_key)?;
        let store: Arc<dyn Store> = Arc::new(store);
        let kms = crate::kms_api::Kms::open(
            &dir.join("gateway.db"),
            crate::kms_store::kms_root_key(&root_key)?,
            &config.aws.region,
            &config.aws.account_id,
        )?;
        let documents = crate::documents::DocStore::open(&dir.join("gateway.db"))?;
        let iam = crate::iam_store::SqliteIamStore::open(&dir.join("gateway.db"))?;
        let iam: Arc<dyn crate::iam_store::IamStore> = Arc::new(iam);
        crate::admin_api::bootstrap(iam.as_ref()).await?;
        if let Some(file) = &config.iam.file {
            let text = std::fs::read_to_string(file).map_err(|e| GatewayError::io(file, e))?;
            crate::admin_api::apply_declarative(iam.as_ref(), &config.aws.account_id, &text)
                .await?;
        }
        let audit = crate::audit::AuditLog::open(&dir.join("audit.log"))?;

        let admin = match store.access_key_for_principal("user/admin").await? {
            Some(k) => k,
            None => {
                let k = new_access_key("user/admin");
                store.put_access_key(k.clone()).await?;
                k
            }
        };
        let admin_credentials = dir.join("admin-credentials");
        let ini = format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\nregion = {}\n",
            admin.access_key_id, admin.secret, config.aws.region
        );
        let current = std::fs::read_to_string(&admin_credentials).unwrap_or_default();
        if current != ini {
            write_private(&admin_credentials, ini.as_bytes())?;
        }

        let paths = crate::tls::ensure_material(&dir)?;
        let tls = if config.server.insecure_http {
            None
        } else {
            Some(crate::tls::server_config(&paths)?)
        };

        let recordings = crate::recordings::Recordings::new(&config.recordings, &dir)
            .map_err(GatewayError::Config)?;
        let hub = Hub::with_relay_memory(config.limits.relay_memory());
        let state = Arc::new(AppState {
            recordings,
            config,
            store,
            hub,
            kms,
            documents,
            sessions_cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            iam,
            audit,
            role_creds: crate::role_creds::RoleCredentialMinter::new(&root_key),
        });
        Ok(Gateway {
            state,
            tls,
            ca_path: paths.ca_cert,
            admin_credentials,
        })
    }

    pub fn config(&self) -> &Config {
        &self.state.config
    }
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }
    pub fn admin_credentials_path(&self) -> &Path {
        &self.admin_credentials
    }
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }
    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Base URL for a listener on `addr`.
    pub fn url_for(&self, addr: SocketAddr) -> String {
        format!(
            "{}://{}",
            if self.is_tls() { "https" } else { "http" },
            addr
        )
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, closes live
    /// sessions and waits (at most 10 s) for connections to finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), GatewayError> {
        let state = self.state.clone();
        let conns = TaskTracker::new();
        // Before anything is served: sessions a previous process left live.
        crate::lifecycle::restore_sessions(&self.state).await;
        self.state.tracker.spawn(crate::lifecycle::run_reaper(
            self.state.clone(),
            shutdown.clone(),
        ));
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let tls = self.tls.clone();
            let state = state.clone();
            let shutdown = shutdown.clone();
            conns.spawn(async move {
                match tls {
                    Some(config) => {
                        let hs = tokio::time::timeout(
                            Duration::from_secs(15),
                            airlock_transport::tls_stream::accept(config, tcp),
                        )
                        .await;
                        match hs {
                            Ok(Ok(stream)) => {
                                serve_conn(state, TokioIo::new(stream), true, peer, shutdown).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => serve_conn(state, TokioIo::new(tcp), false, peer, shutdown).await,
                }
            });
        }
        // Sessions outlive the process: recorded as Disconnected, their
        // sockets closed with 1012 so peers resume against the next one.
        crate::lifecycle::suspend_sessions(&self.state).await;
        self.state.sessions_cancel.cancel();
        conns.close();
        self.state.tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            conns.wait().await;
            self.state.tracker.wait().await;
        })
        .await;
        Ok(())
    }
}

async fn serve_conn<I>(
    state: Arc<AppState>,
    io: TokioIo<I>,
    secure: bool,
    peer: SocketAddr,
    shutdown: CancellationToken,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, std::convert::Infallible>(route(state, req, secure, peer).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => { if let Err(e) = r { tracing::debug!(error = %e, "connection error"); } }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
        }
    }
}

/// A JSON response.
pub fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
    json_response(
        status,
        &serde_json::json!({"__type": e.code, "message": e.message}),
    )
}

/// What a handler sees of a request with its body read.
pub struct ReadRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub secure: bool,
    /// The TCP peer (`aws:SourceIp`); `None` outside a real connection.
    pub peer: Option<SocketAddr>,
    /// Also sent back as `x-amzn-RequestId`; recorded in audit events.
    pub request_id: String,
}

impl ReadRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn sigv4(&self) -> airlock_sigv4::Request<'_> {
        airlock_sigv4::Request {
            method: &self.method,
            path: &self.path,
            query: &self.query,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

fn header_pairs(h: &http::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn route(
    state: Arc<AppState>,
    req: Request<Incoming>,
    secure: bool,
    peer: SocketAddr,
) -> Response<Body> {
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut resp = route_inner(state, req, secure, peer, &request_id).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert("x-amzn-RequestId", v);
    }
    resp
}

async fn route_inner(
    state: Arc<AppState>,
    req: Request<Incoming>,
    secure: bool,
    peer: SocketAddr,
    request_id: &str,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let is_upgrade = req
        .headers()
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if req.method() == http::Method::GET && is_upgrade {
        if let Some(id) = path.strip_prefix("/v1/control-channel/") {
            let id = id.to_string();
            return crate::ws::upgrade(state, req, crate::ws::Channel::Control(id));
        }
        if let Some(id) = path.strip_prefix("/v1/data-channel/") {
            let id = id.to_string();
            return crate::ws::upgrade(state, req, crate::ws::Channel::Data(id));
        }
    }
    if crate::console::is_console_path(&path) {
        return crate::console::serve(&state, req.method(), &path, secure);
    }
    if req.method() != http::Method::POST {
        return error_response(&ApiError {
            status: 404,
            ..ApiError::new("UnknownOperationException", "Not found.")
        });
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, state.config.limits.max_body_bytes)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error_response(&ApiError {
                status: 413,
                ..ApiError::validation("Request body too large or unreadable.")
            })
        }
    };
    let rr = ReadRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: header_pairs(&parts.headers),
        body,
        secure,
        peer: Some(peer),
        request_id: request_id.to_string(),
    };
    let is_admin = rr
        .header("x-amz-target")
        .is_some_and(|t| t.starts_with("AirlockIAM."));
    let is_kms = rr
        .header("x-amz-target")
        .is_some_and(|t| t.starts_with("TrentService."));
    let result = if (rr.path == "/" && is_admin) || rr.path == "/airlock/v1/iam" {
        crate::admin_api::handle(&state, &rr).await
    } else if rr.path == "/" && is_kms {
        crate::kms_api::handle(&state, &rr).await
    } else if rr.path == "/" {
        crate::api::ssm(&state, &rr).await
    } else if rr.path == "/airlock/v1/recordings" {
        crate::recordings::handle(&state, &rr).await
    } else if rr.path == crate::role_creds::PATH {
        crate::role_creds::handle(&state, &rr).await
    } else if rr.path == crate::console::CREDENTIALS_PATH {
        crate::console::credentials(&state, &rr).await
    } else if rr.path == "/airlock/v1/register" {
        crate::api::register(&state, &rr).await
    } else if let Some(id) = rr.path.strip_prefix("/v1/control-channel/") {
        crate::api::create_control_channel(&state, &rr, id).await
    } else if let Some(id) = rr.path.strip_prefix("/v1/data-channel/") {
        crate::api::create_data_channel(&state, &rr, id).await
    } else {
        Err(ApiError {
            status: 404,
            ..ApiError::new("UnknownOperationException", "Not found.")
        })
    };
    match result {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}
