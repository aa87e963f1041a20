//! Airlock gateway: SSM-compatible API, agent control channels, session relay.
//!
//! - [`config`]: the typed configuration tree (TOML, unknown keys rejected).
//! - [`store`]: the durable state behind the [`store::Store`] trait (SQLite today).
//! - [`auth`]: SigV4 verification of API and channel requests.
//! - [`api`]: the AWS JSON 1.1 `AmazonSSM.*` operations and agent registration.
//! - [`kms_api`]: the KMS JSON 1.1 `TrentService.*` operations; keys persist via [`kms_store`].
//! - [`hub`]: in-memory state of online agents and live session relays.
//! - [`ws`]: WebSocket upgrade plus the control and data channel tasks.
//! - [`console`]: the embedded browser console under `/console/`.
//! - [`server`]: accept loop, TLS ([`tls`]), HTTP routing, graceful shutdown.

pub mod admin_api;
pub mod api;
pub mod audit;
pub mod auth;
pub mod authz;
pub mod config;
pub mod console;
pub mod documents;
pub mod error;
pub mod hub;
pub mod iam_store;
pub mod kms_api;
pub mod kms_store;
pub mod lifecycle;
pub mod recordings;
pub mod role_creds;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;
pub mod ws;

pub use config::Config;
pub use error::GatewayError;
pub use server::Gateway;
