//! The `wsgate` command: one file per subcommand (`serve`, `check`, `doctor`, `cert`, `passwd`,
//! `reasons`); this one holds the command line and what they share.

#![forbid(unsafe_code)]

mod cert;
mod check;
mod doctor;
mod passwd;
mod reasons;
mod serve;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wsgate_server::config::{Config, Explain, RouteKind};

#[derive(Parser)]
#[command(
    name = "wsgate",
    version,
    about = "A WebSocket gateway that explains every refusal"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WebSocket routes (with no configuration: a development setup on 127.0.0.1:8080).
    Serve(serve::ServeArgs),
    /// Validate a configuration and print what it would do, without serving.
    Check(ConfigArg),
    /// Find out why a WebSocket handshake fails (against any server), and how to fix it.
    Doctor(doctor::DoctorArgs),
    /// Certificate helpers.
    #[command(subcommand)]
    Cert(cert::CertCommand),
    /// Hash a password (read from standard input) for `basic_users`, with argon2id.
    Passwd,
    /// List every refusal reason code (`--markdown` writes docs/refusals.md).
    Reasons {
        /// Print the Markdown documentation instead of a table.
        #[arg(long)]
        markdown: bool,
    },
    /// Make a running server re-read its configuration (SIGHUP to the process in --pid-file).
    Reload {
        /// The file `wsgate serve --pid-file` wrote.
        #[arg(long)]
        pid_file: PathBuf,
    },
    /// Print a shell completion script, e.g. `wsgate completions bash > /etc/bash_completion.d/wsgate`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (roff): wsgate.1 and one per subcommand (wsgate-serve.1, ...).
    Man {
        /// Directory to write them to, e.g. /usr/local/share/man/man1.
        out: PathBuf,
    },
}

#[derive(Args)]
pub(crate) struct ConfigArg {
    /// TOML configuration file (default: the embedded development configuration).
    #[arg(long, short, env = "WSGATE_CONFIG")]
    pub(crate) config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Check(args) => check::check(args),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Cert(cert::CertCommand::Dev { hosts, out, days }) => {
            cert::cert_dev(&hosts, &out, days)
        }
        Command::Passwd => passwd::passwd(),
        Command::Reasons { markdown } => reasons::reasons(markdown),
        Command::Reload { pid_file } => match wsgate_server::server::signal_reload(&pid_file) {
            Ok(pid) => {
                println!("asked process {pid} to reload its configuration (its log says what changed, or why not)");
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "wsgate", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man { out } => {
            use clap::CommandFactory;
            match clap_mangen::generate_to(Cli::command(), &out) {
                Ok(()) => {
                    println!("man pages written to {} (try: man -l {}/wsgate.1)", out.display(), out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&format!("cannot write the man pages to {}: {e}; does the directory exist and can you write there?", out.display())),
            }
        }
    }
}

pub(crate) fn load(arg: &ConfigArg) -> Result<Config, String> {
    match &arg.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string()),
        None => Ok(Config::embedded()),
    }
}

pub(crate) fn explain_name(e: Explain) -> &'static str {
    match e {
        Explain::None => "none",
        Explain::Code => "code",
        Explain::Full => "full",
    }
}

pub(crate) fn kind_name(k: RouteKind) -> &'static str {
    match k {
        RouteKind::Echo => "echo",
        RouteKind::Channel => "channel",
        RouteKind::Proxy => "proxy",
    }
}

pub(crate) fn fail(msg: &str) -> ExitCode {
    eprintln!("wsgate: error: {msg}");
    ExitCode::FAILURE
}
