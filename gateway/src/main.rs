//! `airlock-gateway`: parses arguments, builds a [`Gateway`] and serves it.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use airlock_gateway::{Config, Gateway};
use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "airlock-gateway",
    version,
    about = "Airlock gateway: SSM-compatible API and session relay"
)]
struct Cli {
    /// State directory [default: $AIRLOCK_DATA_DIR, ~/.local/share/airlock-gateway, or /var/lib/airlock-gateway as root]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Listen address [default: 127.0.0.1:8443]
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Serve plain HTTP (loopback listen addresses only)
    #[arg(long, global = true)]
    insecure_http: bool,
    /// TOML configuration file
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the configuration and print the effective configuration
    CheckConfig,
}

fn effective_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = match &cli.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(d) = &cli.data_dir {
        cfg.server.data_dir = d.clone();
    }
    if let Some(l) = cli.listen {
        cfg.server.listen = l;
    }
    if cli.insecure_http {
        cfg.server.insecure_http = true;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn main() -> anyhow::Result<()> {
    airlock_transport::alloc::keep_freed_pages();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async_main())
}

async fn async_main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cfg = effective_config(&cli)?;
    if let Some(Command::CheckConfig) = cli.command {
        println!("{}", cfg.to_toml());
        return Ok(());
    }
    let listen = cfg.server.listen;
    let gateway = Gateway::new(cfg).await.context("starting the gateway")?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "airlock-gateway listening on {}",
            gateway.url_for(addr)
        )?;
        writeln!(out, "export AWS_CA_BUNDLE={}", gateway.ca_path().display())?;
        writeln!(
            out,
            "admin credentials: {}",
            gateway.admin_credentials_path().display()
        )?;
        out.flush()?;
    }
    let shutdown = CancellationToken::new();
    let sig = shutdown.clone();
    tokio::spawn(async move {
        wait_signal().await;
        tracing::info!("shutting down");
        sig.cancel();
        wait_signal().await;
        std::process::exit(130);
    });
    gateway.serve(listener, shutdown).await?;
    Ok(())
}

async fn wait_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
