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

#[cfg(test)]
mod tests {
    use super::*;

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
