//! The `sidekey` binary: parse the command line, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sidekey::telemetry::{self, LogFormat};
use sidekey::Config;

/// Freed heap memory is zeroed, so no token bytes linger in it (see `sidekey::memory`).
#[global_allocator]
static ALLOC: sidekey::memory::ZeroOnFree = sidekey::memory::ZeroOnFree;

#[derive(Parser)]
#[command(name = "sidekey", version, about = "A credential sidecar: injects API tokens into outbound HTTP requests")]
struct Cli {
    /// Log line format (filter with RUST_LOG, e.g. `RUST_LOG=sidekey=debug`).
    #[arg(long, global = true, value_enum, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy. SIGHUP reloads the config.
    Run {
        #[arg(short, long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// Also reload when the config file changes.
        #[arg(long)]
        watch_config: bool,
    },
    /// Validate a config file; every error is printed with its key and line.
    Check {
        #[arg(short, long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// HTTPS interception CA tools.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// A self-contained demo on loopback: an echo upstream, a rotating token, the proxy between.
    Demo {
        /// Proxy port (a free one is chosen if it is taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Admin port (a free one is chosen if it is taken).
        #[arg(long, default_value_t = 9901)]
        admin_port: u16,
        /// How often the demo token rotates, e.g. "5s".
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        rotate_every: Duration,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check an audit log's hash chain; exit 0 when intact, else name the first bad line.
    Verify { file: PathBuf },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Write a new interception CA pair, DIR/ca.crt and DIR/ca.key (owner-only), for
    /// `[intercept] ca_cert` and `ca_key`. Never overwrites.
    Init {
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    sidekey::config::parse_duration(s)
}

/// Exit codes of the contract.
const EXIT_FATAL: u8 = 1;
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_CONFIG),
            };
        }
    };
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} routes, {} tokens)", config.display(), c.routes.len(), c.tokens.len());
                for t in sidekey::config::unused_tokens(&c) {
                    eprintln!("warning: token {t} is not used by any route");
                }
                for w in &c.warnings {
                    eprintln!("warning: {}:{w}", config.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config: path, watch_config } => {
            let loaded = sidekey::reload::digest(&path);
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime().block_on(run(config, path, loaded, watch_config))
        }
        Command::Audit { command: AuditCommand::Verify { file } } => match sidekey::audit::verify(&file) {
            Ok(n) => {
                println!("{}: {n} records, chain intact", file.display());
                ExitCode::SUCCESS
            }
            Err(b) if b.line == 0 => {
                eprintln!("{}", b.reason);
                ExitCode::from(EXIT_FATAL)
            }
            Err(b) => {
                eprintln!("{}: line {}: {}", file.display(), b.line, b.reason);
                ExitCode::from(EXIT_FATAL)
            }
        },
        Command::Ca { command: CaCommand::Init { out } } => match sidekey::pki::init_files(&out) {
            Ok((cert, key)) => {
                println!(
                    "wrote {} (give it to the apps to trust) and {} (keep it secret)",
                    cert.display(),
                    key.display()
                );
                println!(
                    "[intercept]\nca_cert = {{ file = {:?} }}\nca_key = {{ file = {:?} }}",
                    cert.display().to_string(),
                    key.display().to_string()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sidekey ca init: {e}");
                ExitCode::from(EXIT_FATAL)
            }
        },
        Command::Demo { port, admin_port, rotate_every } => {
            let opts = sidekey::demo::DemoOptions { port, admin_port, rotate_every };
            match runtime().block_on(sidekey::demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sidekey demo: {e}");
                    ExitCode::from(EXIT_FATAL)
                }
            }
        }
    }
}

/// One CPU to run on (a sidecar's usual CPU limit, or `taskset`): a current-thread runtime, which
/// skips the work-stealing machinery a single worker cannot use. More: one worker per CPU.
fn runtime() -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build().expect("cannot start the tokio runtime")
}

async fn run(config: Config, path: PathBuf, loaded: Option<Vec<u8>>, watch_config: bool) -> ExitCode {
    let hangup = sidekey::reload::hangup_signal();
    let mut shutdown = sidekey::ShutdownSignal::listen();
    for w in &config.warnings {
        tracing::warn!(key = %w.key, line = w.line, "{}", w.message);
    }
    let running = match sidekey::start(config).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    tokio::select! {
        _ = shutdown.recv() => {}
        _ = sidekey::reload::reload_loop(&running, path, loaded, watch_config, hangup) => {}
    }
    running.begin_draining();
    tracing::info!(
        grace_ms = running.grace().as_millis() as u64,
        "shutdown signal received; draining (a second signal exits at once)"
    );
    tokio::select! {
        _ = running.shutdown() => ExitCode::SUCCESS,
        _ = shutdown.recv() => {
            tracing::warn!("second signal; exiting now");
            ExitCode::from(EXIT_FATAL)
        }
    }
}
