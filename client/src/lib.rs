//! The `airlock` CLI, also usable as the AWS CLI's `session-manager-plugin`.
//!
//! - [`cli`]: clap definitions; [`params`]: `--parameters` parsing.
//! - [`commands`]: start-session, sessions list / terminate (API calls).
//! - [`plugin`]: the plugin argv contract (spec §6).
//! - [`session`]: the data-channel session runner; [`handshake`]: its answers.
//! - [`terminal`]: raw mode, size, stdin pump. [`error`]: errors and exit codes.

pub mod admin;
pub mod cli;
pub mod commands;
pub mod console;
pub mod crypto;
pub mod error;
pub mod handshake;
pub mod params;
pub mod plugin;
pub mod port;
pub mod recordings;
pub mod session;
pub mod terminal;

use clap::Parser;

use crate::error::ClientError;
use crate::plugin::{PluginInvocation, PluginStart};
use crate::session::{ExitPolicy, SessionRunner};

/// Version reported to the AWS CLI and the agent; must stay > 1.2.497.0.
pub const CLIENT_VERSION: &str = "1.2.700.0";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIRLOCK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime, ClientError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn report(e: &ClientError) -> i32 {
    terminal::restore_terminal();
    eprintln!("{e}");
    e.exit_code()
}

/// Entry point for the binary; returns the process exit status.
pub fn main_entry() -> i32 {
    init_tracing();
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let argv0_is_plugin = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_stem()
                .map(|s| s == "session-manager-plugin")
        })
        .unwrap_or(false);
    if argv0_is_plugin {
        return plugin_main(&args);
    }
    let cli = match cli::Cli::try_parse_from(&args) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { error::EXIT_USAGE } else { 0 };
        }
    };
    match cli.command {
        cli::Command::SessionManagerPlugin { args: rest } => {
            let argv: Vec<String> = std::iter::once("session-manager-plugin".to_string())
                .chain(rest)
                .collect();
            plugin_main(&argv)
        }
        cli::Command::StartSession {
            target,
            document_name,
            parameters,
            reason,
            bind,
            conn,
        } => {
            let parameters = match parameters
                .as_deref()
                .map(params::parse_parameters)
                .transpose()
            {
                Ok(p) => p,
                Err(e) => return report(&ClientError::Usage(e.to_string())),
            };
            let args = commands::StartArgs {
                target,
                document_name,
                parameters,
                reason,
            };
            let popts = port::PortOptions {
                bind,
                stdio: false,
                unix: None,
                label: String::new(),
            };
            if port::is_port_document(args.document_name.as_deref()) {
                return run_async(async move {
                    commands::start_port_session(&conn_opts(&conn), &args, popts).await
                });
            }
            run_async(async move { commands::start_session(&conn_opts(&conn), &args, popts).await })
        }
        cli::Command::Forward {
            target,
            specs,
            bind,
            conn,
        } => {
            let mut forwards = Vec::new();
            for spec in &specs {
                match cli::parse_forward(spec, &bind) {
                    Ok(f) => forwards.push((spec.clone(), f)),
                    Err(e) => return report(&ClientError::Usage(e)),
                }
            }
            run_async(forward_all(conn_opts(&conn), target, forwards))
        }
        cli::Command::SshProxy {
            target,
            port: p,
            conn,
        } => {
            let mut parameters = params::Parameters::new();
            parameters.insert("portNumber".into(), vec![p.to_string()]);
            let args = commands::StartArgs {
                target,
                document_name: Some("AWS-StartSSHSession".into()),
                parameters: Some(parameters),
                reason: None,
            };
            let popts = port::PortOptions {
                bind: String::new(),
                stdio: true,
                unix: None,
                label: String::new(),
            };
            run_async(
                async move { commands::start_port_session(&conn_opts(&conn), &args, popts).await },
            )
        }
        cli::Command::Admin { args } => run_async(async move { admin::run(&args).await }),
        cli::Command::Console {
            duration_seconds,
            conn,
        } => {
            let opts = conn_opts(&conn);
            run_async(async move { console::run(&opts, duration_seconds).await })
        }
        cli::Command::Recordings { command, conn } => {
            let opts = conn_opts(&conn);
            run_async(async move { recordings::run(&opts, command).await })
        }
        cli::Command::Sessions { command, conn } => {
            let opts = conn_opts(&conn);
            run_async(async move {
                match command {
                    cli::SessionsCommand::List { state } => {
                        commands::list_sessions(&opts, &state).await
                    }
                    cli::SessionsCommand::Terminate { session_id } => {
                        commands::terminate_session(&opts, &session_id).await
                    }
                }
            })
        }
    }
}

/// One port session per forward, concurrently; each listens and prints its
/// own "Port N opened" line. Ctrl-C reaches every session (each has its own
/// SIGINT listener). The first failure stops the others.
async fn forward_all(
    opts: commands::ConnOpts,
    target: String,
    forwards: Vec<(String, cli::ForwardSpec)>,
) -> Result<i32, ClientError> {
    let mut set = tokio::task::JoinSet::new();
    for (label, f) in forwards {
        let mut parameters = params::Parameters::new();
        parameters.insert("host".into(), vec![f.host.clone()]);
        parameters.insert("portNumber".into(), vec![f.port.to_string()]);
        let (bind, unix, local_port) = match f.local {
            cli::Local::Tcp { bind, port } => (bind, None, port),
            cli::Local::Unix(path) => (String::new(), Some(path), 0),
        };
        parameters.insert("localPortNumber".into(), vec![local_port.to_string()]);
        let args = commands::StartArgs {
            target: target.clone(),
            document_name: Some("AWS-StartPortForwardingSessionToRemoteHost".into()),
            parameters: Some(parameters),
            reason: None,
        };
        let popts = port::PortOptions {
            bind,
            stdio: false,
            unix,
            label,
        };
        let opts = opts.clone();
        set.spawn(async move { commands::start_port_session(&opts, &args, popts).await });
    }
    let mut status = 0;
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(code)) => status = status.max(code),
            Ok(Err(e)) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(ClientError::Transport(format!("forward task failed: {e}")));
            }
        }
    }
    Ok(status)
}

fn conn_opts(c: &cli::Conn) -> commands::ConnOpts {
    commands::ConnOpts {
        endpoint_url: c.endpoint_url.clone(),
        region: c.region.clone(),
        profile: c.profile.clone(),
    }
}

fn run_async(fut: impl std::future::Future<Output = Result<i32, ClientError>>) -> i32 {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => return report(&e),
    };
    let result = rt.block_on(fut);
    // Do not wait for the stdin thread or lingering tasks.
    rt.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Plugin behaviour for a full argv (`argv[0]` = program).
pub fn plugin_main(argv: &[String]) -> i32 {
    // Read and unset the response variable before any thread starts.
    let inv =
        plugin::parse_plugin_args(argv, |k| std::env::var(k).ok(), |k| std::env::remove_var(k));
    match inv {
        PluginInvocation::Banner => {
            println!("{}", plugin::BANNER);
            0
        }
        PluginInvocation::Version => {
            println!("{}", PluginInvocation::version_line());
            0
        }
        PluginInvocation::Fail(msg) => {
            println!("{msg}");
            1
        }
        PluginInvocation::Start(start) => run_async(async move { plugin_session(*start).await }),
    }
}

async fn plugin_session(start: PluginStart) -> Result<i32, ClientError> {
    let tls = commands::tls_config()?;
    // Credentials are only needed for ResumeSession; a session can run without them.
    let api = if start.legacy {
        None
    } else {
        let opts = commands::ConnOpts {
            endpoint_url: start.endpoint.clone(),
            region: Some(start.region.clone()),
            profile: start.profile.clone(),
        };
        match commands::api_client(&opts, tls.clone()) {
            Ok(api) => Some(api),
            Err(e) => {
                tracing::warn!("no API client for ResumeSession: {e}");
                None
            }
        }
    };
    let popts = port::PortOptions {
        bind: "127.0.0.1".into(),
        stdio: false,
        unix: None,
        label: String::new(),
    };
    let kms = crate::crypto::KmsEnv {
        api: api.clone(),
        session_id: start.session.session_id.clone(),
        target: start.target.clone(),
    };
    if port::is_port_document(start.document_name.as_deref()) {
        return port::run(start.session, tls, popts, kms).await;
    }
    // A custom document: the agent's handshake says whether it is a port
    // session, as the stock plugin reads it.
    let opened = if session::is_shell_document(start.document_name.as_deref()) {
        None
    } else {
        match session::probe(&start.session, &tls).await {
            Ok(session::Probed::Port(dc, request)) => {
                return port::run_on(dc, Some(request), start.session, tls, popts, kms).await
            }
            Ok(session::Probed::Shell(dc, first)) => Some((dc, first)),
            Err(e) => {
                return Err(ClientError::Transport(format!(
                    "Cannot perform start session: {e}"
                )))
            }
        }
    };
    SessionRunner {
        info: start.session,
        tls,
        api,
        exit_policy: ExitPolicy::AlwaysZero,
        target: start.target.clone(),
    }
    .run_on(opened)
    .await
    .map_err(|e| match e {
        ClientError::Transport(m) => {
            ClientError::Transport(format!("Cannot perform start session: {m}"))
        }
        other => other,
    })
}
