//! The overlayd binary: parse the command line, load the config, run. No logic here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "overlayd", version, about = "Userspace L2 overlay daemon: TAP switches joined by VXLAN")]
struct Cli {
    /// Log filter (error, warn, info, debug, trace, or a tracing directive); OVERLAYD_LOG overrides.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (SIGTERM/SIGINT stop it).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: exit 0, or print what is wrong and exit 1.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show the MAC table of the running daemon (MAC, port or peer, type, age).
    Fdb {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this network.
        #[arg(long, short)]
        network: Option<String>,
        #[command(subcommand)]
        action: Option<FdbAction>,
    },
    /// Show the peers of the running daemon: last seen, packets and bytes each way.
    Peers {
        #[command(flatten)]
        client: ClientArgs,
        /// Only this network.
        #[arg(long, short)]
        network: Option<String>,
    },
    /// Show every counter of the running daemon (the numbers /metrics exports).
    Stats {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the cluster state: etcd endpoints, connection, lease, revision, members.
    Cluster {
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Subcommand)]
enum FdbAction {
    /// Forget the learned MACs (of one network with --network, else of all).
    Flush {
        /// Only this network.
        #[arg(long, short)]
        network: Option<String>,
    },
}

/// How the client finds the daemon's admin socket: --admin PATH, else --config FILE's
/// admin.socket, else the default.
#[derive(clap::Args)]
struct ClientArgs {
    /// Admin socket of the daemon.
    #[arg(long, global = true, value_name = "PATH")]
    admin: Option<PathBuf>,
    /// Read the admin socket path from this config file.
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the daemon's answer as JSON (for scripts).
    #[arg(long, global = true)]
    json: bool,
}

fn admin_socket(c: &ClientArgs) -> Result<PathBuf, String> {
    if let Some(p) = &c.admin {
        return Ok(p.clone());
    }
    if let Some(f) = &c.config {
        return overlayd::config::load(f).map(|cfg| cfg.admin_socket).map_err(|e| format!("{}: {e}", f.display()));
    }
    Ok(PathBuf::from(overlayd::config::DEFAULT_ADMIN_SOCKET))
}

/// Ask the running daemon, print its answer; errors are one line on stderr.
fn ask(c: &ClientArgs, req: overlayd::admin::Request) -> ExitCode {
    use overlayd::admin::client;
    let result = admin_socket(c).and_then(|path| {
        let v = client::request(&path, &req).map_err(|e| e.to_string())?;
        client::render(&req, v, c.json).map_err(|e| e.to_string())
    });
    match result {
        Ok(text) => {
            use std::io::Write;
            // a closed pipe (`overlayd fdb | head`) is not an error worth a message
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overlayd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = std::env::var("OVERLAYD_LOG").unwrap_or_else(|_| level.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("overlayd: bad log filter {filter:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    use overlayd::admin::Request;
    match cli.cmd {
        Cmd::Fdb { client, network, action: None } => ask(&client, Request::Fdb { network }),
        Cmd::Fdb { client, network, action: Some(FdbAction::Flush { network: n }) } => {
            ask(&client, Request::FdbFlush { network: n.or(network) })
        }
        Cmd::Peers { client, network } => ask(&client, Request::Peers { network }),
        Cmd::Stats { client } => ask(&client, Request::Stats),
        Cmd::Cluster { client } => ask(&client, Request::Cluster),
        Cmd::Check { config } => match overlayd::config::load(&config) {
            #[allow(clippy::print_stdout, reason = "the verdict of `overlayd check` is its output")]
            Ok(c) => {
                println!("{}: ok ({} network{})", config.display(), c.networks.len(), if c.networks.len() == 1 { "" } else { "s" });
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => {
            init_logging(&cli.log_level);
            let cfg = match overlayd::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("overlayd: {}: {e}", config.display());
                    return ExitCode::FAILURE;
                }
            };
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("overlayd: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(overlayd::daemon::run_with_reload(cfg, Some(config.clone()), shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("overlayd: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
