//! `airlock-agent`: register with a gateway, then run sessions for it.

mod agent;
mod control;
mod crypto;
mod port;
mod port_policy;
mod pty;
mod recorder;
mod register;
mod session;
mod state;
mod sysinfo;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use airlock_sigv4::{Credentials, SecretKey};
use airlock_transport::api::ApiClient;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Parser)]
#[command(name = "airlock-agent", version, about = "Airlock node agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Register this node with an activation code.
    Register {
        #[arg(long)]
        gateway: String,
        #[arg(long)]
        activation_id: String,
        #[arg(long)]
        activation_code: String,
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[arg(long)]
        ca_bundle: Option<PathBuf>,
        #[arg(long)]
        region: Option<String>,
    },
    /// Connect to the gateway and serve sessions until stopped.
    Run {
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Shell to run (default: the user's login shell, else /bin/sh).
        #[arg(long)]
        shell: Option<String>,
        /// As root, run shells as this user.
        #[arg(long)]
        run_as: Option<String>,
        #[arg(long)]
        ca_bundle: Option<PathBuf>,
        /// Port sessions may only dial destinations matching one of these
        /// HOST:PORT patterns (repeatable or comma-separated; empty = any).
        /// HOST: `*`, name, `*.suffix`, IP, CIDR; PORT: `*`, N or N-M.
        #[arg(
            long = "port-allow",
            env = "AIRLOCK_AGENT_PORT_ALLOW",
            value_delimiter = ','
        )]
        port_allow: Vec<String>,
        /// Port sessions never dial destinations matching these patterns
        /// (deny wins over allow).
        #[arg(
            long = "port-deny",
            env = "AIRLOCK_AGENT_PORT_DENY",
            value_delimiter = ','
        )]
        port_deny: Vec<String>,
        /// Let port sessions dial link-local and metadata addresses.
        #[arg(long = "allow-link-local", env = "AIRLOCK_AGENT_ALLOW_LINK_LOCAL", value_parser = clap::builder::BoolishValueParser::new())]
        allow_link_local: bool,
    },
}

fn env_ca_bundle() -> Option<PathBuf> {
    std::env::var_os("AWS_CA_BUNDLE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn main() -> Result<()> {
    airlock_transport::alloc::keep_freed_pages();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async_main())
}

async fn async_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Register {
            gateway,
            activation_id,
            activation_code,
            state_dir,
            ca_bundle,
            region,
        } => {
            let state_dir = state_dir.unwrap_or_else(state::default_state_dir);
            let ca_bundle = ca_bundle.or_else(env_ca_bundle);
            let tls = airlock_transport::tls::client_config(ca_bundle.as_deref())?;
            let reg = register::register(register::RegisterArgs {
                gateway: &gateway,
                activation_id: &activation_id,
                activation_code: &activation_code,
                state_dir: &state_dir,
                ca_bundle,
                region,
                tls,
            })
            .await?;
            println!("Registered as {}", reg.instance_id);
            Ok(())
        }
        Cmd::Run {
            state_dir,
            shell,
            run_as,
            ca_bundle,
            port_allow,
            port_deny,
            allow_link_local,
        } => {
            let parse = |list: &[String]| -> Result<Vec<port_policy::Pattern>> {
                list.iter()
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| port_policy::Pattern::parse(p).map_err(anyhow::Error::msg))
                    .collect()
            };
            let port_policy = port_policy::Policy {
                allow: parse(&port_allow)?,
                deny: parse(&port_deny)?,
                allow_link_local,
            };
            let state_dir = state_dir.unwrap_or_else(state::default_state_dir);
            let reg = state::load(&state_dir)?;
            let ca_bundle = ca_bundle
                .or_else(|| reg.ca_bundle.clone().map(PathBuf::from))
                .or_else(env_ca_bundle);
            let tls = airlock_transport::tls::client_config(ca_bundle.as_deref())?;
            let creds = Credentials {
                access_key_id: reg.access_key_id.clone(),
                secret_access_key: SecretKey::new(reg.secret_access_key.clone()),
                session_token: None,
            };
            let api = ApiClient::new(&reg.gateway, &reg.region, creds, tls.clone())
                .context("gateway endpoint")?;
            let agent = Arc::new(agent::Agent {
                ws_base: agent::ws_base(&reg.gateway),
                reg,
                api,
                tls,
                shell,
                run_as,
                role: Default::default(),
                port_policy,
                state_dir: state_dir.clone(),
            });
            recorder::resume_spooled(&agent);
            let root = CancellationToken::new();
            let tracker = TaskTracker::new();
            let control = control::Control::new(agent, root.clone(), tracker.clone());
            let mut control_task = tokio::spawn(control.run());
            tokio::select! {
                _ = &mut control_task => {}
                _ = shutdown_signal() => {
                    tracing::info!("shutting down");
                }
            }
            root.cancel();
            tracker.close();
            tokio::select! {
                _ = tracker.wait() => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => tracing::warn!("sessions did not stop in time"),
                _ = shutdown_signal() => {}
            }
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
