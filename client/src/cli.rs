//! Command-line definitions.

use clap::{Args, Parser, Subcommand};

const EXIT_HELP: &str = "\
Exit status:
  start-session exits with the remote shell's exit status (0 if none was reported).
  252  invalid command line
  253  configuration or credentials problem (profile, CA bundle, credentials)
  254  the API returned an error, printed as
       `An error occurred (<Code>) when calling the <Operation> operation: <message>`
  255  transport failure (cannot connect, connection lost and not resumable)

Environment: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_SESSION_TOKEN, AWS_PROFILE,
AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, AWS_REGION, AWS_ENDPOINT_URL(_SSM), AWS_CA_BUNDLE.
Installed (or symlinked) as `session-manager-plugin`, airlock acts as the AWS CLI's plugin.";

#[derive(Debug, Parser)]
#[command(name = "airlock", version, about = "Airlock client: start sessions on managed nodes", after_help = EXIT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args, Default)]
pub struct Conn {
    /// Gateway endpoint, e.g. https://127.0.0.1:8443 (else AWS_ENDPOINT_URL_SSM / AWS_ENDPOINT_URL / profile)
    #[arg(long = "endpoint-url", global = true)]
    pub endpoint_url: Option<String>,
    /// Region (else AWS_REGION / AWS_DEFAULT_REGION / profile / us-east-1)
    #[arg(long, global = true)]
    pub region: Option<String>,
    /// Named profile from the shared credentials/config files
    #[arg(long, global = true)]
    pub profile: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start an interactive session on a target (like `aws ssm start-session`)
    StartSession {
        /// Managed node id (mi-...)
        #[arg(long)]
        target: String,
        /// Session document name
        #[arg(long = "document-name")]
        document_name: Option<String>,
        /// Document parameters: `k=v,k2=v2`, `k=[a,b]` or JSON `{"k":["v"]}`
        #[arg(long)]
        parameters: Option<String>,
        /// Reason recorded with the session
        #[arg(long)]
        reason: Option<String>,
        /// Local address for port-forwarding listeners
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Forward local ports (or unix sockets) to HOST:PORT reachable from the target
    ///
    /// Each forward is its own session (and counts towards the gateway's
    /// `sessions.max_per_target`); all run until Ctrl-C. On a terminal,
    /// open connections and bytes are shown live on stderr.
    Forward {
        /// Managed node id (mi-...)
        target: String,
        /// One or more of `[BIND:]LOCALPORT:HOST:PORT` (LOCALPORT 0 = random;
        /// IPv6 in brackets) or `unix:PATH:HOST:PORT` (PATH without ':')
        #[arg(required = true, num_args = 1..)]
        specs: Vec<String>,
        /// Local address for forwards that do not name one
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// stdin/stdout to a port on the target (OpenSSH ProxyCommand)
    SshProxy {
        /// Managed node id (mi-...)
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 22)]
        port: u16,
        #[command(flatten)]
        conn: Conn,
    },
    /// List or terminate sessions
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// IAM administration with the verbs and flags of `aws iam`
    /// (`admin create-user --user-name alice`; `admin help` lists verbs)
    #[command(disable_help_flag = true)]
    Admin {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// Print a short-lived sign-in link for the gateway's browser console
    ///
    /// The link holds temporary credentials for you (not your secret) in its
    /// fragment; anyone with the link acts as you until it expires.
    Console {
        /// Lifetime of the link's credentials in seconds (900-3600; default 900)
        #[arg(long = "duration-seconds")]
        duration_seconds: Option<u32>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List, play, export, verify and search session recordings
    Recordings {
        #[command(subcommand)]
        command: crate::recordings::RecordingsCommand,
        #[command(flatten)]
        conn: Conn,
    },
    /// Behave as the AWS CLI's session-manager-plugin with these arguments
    #[command(
        name = "session-manager-plugin",
        disable_help_flag = true,
        disable_version_flag = true
    )]
    SessionManagerPlugin {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionsCommand {
    /// DescribeSessions, printed as a table
    List {
        #[arg(long, default_value = "Active", value_parser = ["Active", "History"])]
        state: String,
    },
    /// TerminateSession; prints the session id
    Terminate { session_id: String },
}

/// Where a forward listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Local {
    Tcp { bind: String, port: u16 },
    Unix(std::path::PathBuf),
}

/// A parsed `[BIND:]LOCALPORT:HOST:PORT` or `unix:PATH:HOST:PORT` forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub local: Local,
    pub host: String,
    pub port: u16,
}

pub fn parse_forward(spec: &str, default_bind: &str) -> Result<ForwardSpec, String> {
    // An IPv6 bind/host may be bracketed: [::1]:8080:db:5432.
    let mut parts: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for c in spec.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ':' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if c != '[' && c != ']' {
            cur.push(c);
        }
    }
    parts.push(cur);
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid port {s:?} in {spec:?}"))
    };
    let (local, host, rp) = match parts.as_slice() {
        [unix, path, host, rp] if unix == "unix" => {
            if path.is_empty() {
                return Err(format!("empty unix socket path in {spec:?}"));
            }
            (Local::Unix(path.into()), host, rp)
        }
        [lp, host, rp] => (
            Local::Tcp {
                bind: default_bind.to_string(),
                port: port(lp)?,
            },
            host,
            rp,
        ),
        [b, lp, host, rp] => (
            Local::Tcp {
                bind: b.clone(),
                port: port(lp)?,
            },
            host,
            rp,
        ),
        _ => {
            return Err(format!(
                "expected [BIND:]LOCALPORT:HOST:PORT or unix:PATH:HOST:PORT, got {spec:?}"
            ))
        }
    };
    if host.is_empty() {
        return Err(format!("empty host in {spec:?}"));
    }
    Ok(ForwardSpec {
        local,
        host: host.clone(),
        port: port(rp)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_specs() {
        assert_eq!(
            parse_forward("15432:db.internal:5432", "127.0.0.1").unwrap(),
            ForwardSpec {
                local: Local::Tcp {
                    bind: "127.0.0.1".into(),
                    port: 15432
                },
                host: "db.internal".into(),
                port: 5432
            }
        );
        let bind = |s: &str| match parse_forward(s, "10.0.0.1").unwrap().local {
            Local::Tcp { bind, .. } => bind,
            Local::Unix(_) => panic!(),
        };
        assert_eq!(bind("0.0.0.0:0:h:1"), "0.0.0.0");
        assert_eq!(bind("[::1]:1:h:2"), "::1");
        assert_eq!(bind("1:h:2"), "10.0.0.1");
        assert_eq!(
            parse_forward("unix:/tmp/pg.sock:[::1]:5432", "x").unwrap(),
            ForwardSpec {
                local: Local::Unix("/tmp/pg.sock".into()),
                host: "::1".into(),
                port: 5432
            }
        );
        assert!(parse_forward("unix::h:1", "x").is_err());
        assert!(parse_forward("1:h", "x").is_err());
        assert!(parse_forward("x:h:1", "x").is_err());
        let cli = Cli::try_parse_from([
            "airlock",
            "forward",
            "mi-1",
            "1:a:2",
            "unix:/s:b:3",
            "--bind",
            "::",
        ])
        .unwrap();
        let Command::Forward { specs, bind, .. } = cli.command else {
            panic!()
        };
        assert_eq!((specs.len(), bind.as_str()), (2, "::"));
        assert!(Cli::try_parse_from(["airlock", "forward", "mi-1"]).is_err());
    }

    #[test]
    fn parses_start_session() {
        let cli = Cli::try_parse_from([
            "airlock",
            "start-session",
            "--target",
            "mi-1",
            "--parameters",
            "a=b",
            "--endpoint-url",
            "https://x",
        ])
        .unwrap();
        let Command::StartSession {
            target,
            parameters,
            conn,
            ..
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(target, "mi-1");
        assert_eq!(parameters.as_deref(), Some("a=b"));
        assert_eq!(conn.endpoint_url.as_deref(), Some("https://x"));
    }

    #[test]
    fn plugin_passthrough_keeps_version_flag() {
        let cli = Cli::try_parse_from(["airlock", "session-manager-plugin", "--version"]).unwrap();
        let Command::SessionManagerPlugin { args } = cli.command else {
            panic!()
        };
        assert_eq!(args, vec!["--version"]);
    }

    #[test]
    fn sessions_list_state() {
        let cli =
            Cli::try_parse_from(["airlock", "sessions", "list", "--state", "History"]).unwrap();
        assert!(
            matches!(cli.command, Command::Sessions { command: SessionsCommand::List { ref state }, .. } if state == "History")
        );
        assert!(Cli::try_parse_from(["airlock", "sessions", "list", "--state", "Bogus"]).is_err());
    }
}
