//! The `sidekey` binary: parse the command line, set up logging, load the config, run.

use std::net::SocketAddr;
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
    /// Validate a config file; every error is printed with its key and line. Also checks what
    /// `run` would refuse on this machine: the audit log's directory, unreadable token files.
    Check {
        #[arg(short, long, env = "SIDEKEY_CONFIG")]
        config: PathBuf,
        /// Skip the checks of the audit log and token files (a config meant for another
        /// machine, e.g. a ConfigMap linted in CI).
        #[arg(long)]
        no_files: bool,
    },
    /// Ask a running sidekey whether it is ready (`/readyz`), for a container HEALTHCHECK:
    /// exit 0 when ready, 1 when not ready or unreachable (2 s), 2 on bad arguments.
    Health {
        /// The admin address (default: the config's listen.admin, 0.0.0.0 taken as 127.0.0.1).
        #[arg(long)]
        admin: Option<String>,
        #[arg(short, long, env = "SIDEKEY_CONFIG")]
        config: Option<PathBuf>,
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
    /// Add sidekey to the Kubernetes pod templates annotated `sidekey.dev/inject: "true"`
    /// (docs/kubernetes.md): YAML in, YAML out; or, with --webhook, the same as a mutating
    /// admission webhook.
    Inject {
        /// The YAML to read, `-` for standard input. The result goes to standard output.
        #[arg(short = 'f', long = "filename", default_value = "-", conflicts_with = "webhook")]
        file: PathBuf,
        /// The sidekey image, where a template has no `sidekey.dev/image`.
        #[arg(long)]
        image: Option<String>,
        /// A regular container instead of a native sidecar (clusters before Kubernetes 1.29).
        #[arg(long)]
        classic: bool,
        /// Serve the mutation as an admission webhook (POST /mutate, GET /healthz) over TLS.
        #[arg(long)]
        webhook: bool,
        /// The webhook's certificate chain (PEM); reloaded when the file changes.
        #[arg(long, required_if_eq("webhook", "true"), requires = "webhook")]
        tls_cert: Option<PathBuf>,
        /// The webhook's private key (PEM); reloaded when the file changes.
        #[arg(long, required_if_eq("webhook", "true"), requires = "webhook")]
        tls_key: Option<PathBuf>,
        /// Where the webhook listens.
        #[arg(long, default_value = "0.0.0.0:8443", requires = "webhook")]
        listen: SocketAddr,
        /// Deny a pod that cannot be injected rather than admit it without sidekey.
        #[arg(long, requires = "webhook")]
        fail_closed: bool,
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
    /// A chain cannot see its own last lines cut off: with `--head SEQ:HASH` (a head sidekey
    /// logged, or `GET /audit` served), the file must also still reach that record.
    Verify {
        file: PathBuf,
        #[arg(long, value_parser = parse_head)]
        head: Option<sidekey::audit::Head>,
    },
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

fn parse_head(s: &str) -> Result<sidekey::audit::Head, String> {
    sidekey::audit::parse_head(s)
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
        Command::Health { admin, config } => match sidekey::health::target(admin.as_deref(), config.as_deref()) {
            Ok(addr) => match runtime(None).block_on(sidekey::health::probe(&addr)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sidekey health: {e}");
                    ExitCode::from(EXIT_FATAL)
                }
            },
            Err(e) => {
                eprintln!("sidekey health: {e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Check { config, no_files } => {
            match if no_files { Config::load(&config) } else { Config::load_checked(&config) } {
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
            }
        }
        Command::Run { config: path, watch_config } => {
            let loaded = sidekey::reload::digest(&path);
            let config = match Config::load(&path) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            runtime(config.listen.workers).block_on(run(config, path, loaded, watch_config))
        }
        Command::Audit { command: AuditCommand::Verify { file, head } } => {
            match sidekey::audit::verify_to(&file, head.as_ref()) {
                Ok(n) => {
                    match head {
                        Some(h) => println!("{}: {n} records, chain intact, reaches head {}", file.display(), h.seq),
                        None => println!("{}: {n} records, chain intact", file.display()),
                    }
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
            }
        }
        Command::Ca { command: CaCommand::Init { out } } => match sidekey::pki::init_files(&out) {
            Ok((cert, key)) => {
                // Absolute (not symlink-resolved), so the lines work in a config anywhere.
                let (cert, key) =
                    (std::path::absolute(&cert).unwrap_or(cert), std::path::absolute(&key).unwrap_or(key));
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
        Command::Inject { file, image, classic, webhook, tls_cert, tls_key, listen, fail_closed } => {
            let inject = sidekey::kube::Options { image, classic };
            match (webhook, tls_cert, tls_key) {
                (true, Some(tls_cert), Some(tls_key)) => {
                    let opts =
                        sidekey::kube::webhook::WebhookOptions { listen, tls_cert, tls_key, fail_closed, inject };
                    runtime(None).block_on(serve_webhook(opts))
                }
                _ => inject_file(&file, &inject),
            }
        }
        Command::Demo { port, admin_port, rotate_every } => {
            let opts = sidekey::demo::DemoOptions { port, admin_port, rotate_every };
            match runtime(None).block_on(sidekey::demo::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sidekey demo: {e}");
                    ExitCode::from(EXIT_FATAL)
                }
            }
        }
    }
}

/// `sidekey inject -f FILE`: exit 1 when the YAML does not parse or a template cannot be
/// injected, with nothing written to standard output.
fn inject_file(file: &std::path::Path, opts: &sidekey::kube::Options) -> ExitCode {
    use std::io::{Read, Write};
    let stdin = file.as_os_str() == "-";
    let name = if stdin { "<stdin>".to_owned() } else { file.display().to_string() };
    let mut text = String::new();
    let read = if stdin {
        std::io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    };
    if let Err(e) = read {
        eprintln!("sidekey inject: {name}: {e}");
        return ExitCode::from(EXIT_FATAL);
    }
    match sidekey::kube::inject_stream(&text, opts) {
        Ok(done) => {
            if let Err(e) = std::io::stdout().lock().write_all(done.output.as_bytes()) {
                eprintln!("sidekey inject: cannot write the output: {e}");
                return ExitCode::from(EXIT_FATAL);
            }
            for o in &done.outcomes {
                match o {
                    sidekey::kube::Outcome::Injected(w) => eprintln!("sidekey inject: {w}: injected"),
                    sidekey::kube::Outcome::AlreadyInjected(w) => {
                        eprintln!("sidekey inject: {w}: already has sidekey; left as it is")
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sidekey inject: {name}: {e}");
            ExitCode::from(EXIT_FATAL)
        }
    }
}

async fn serve_webhook(opts: sidekey::kube::webhook::WebhookOptions) -> ExitCode {
    let mut shutdown = sidekey::ShutdownSignal::listen();
    let webhook = match sidekey::kube::webhook::Webhook::bind(opts).await {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the webhook");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    tracing::info!(listen = %webhook.local_addr(), "sidekey webhook listening");
    webhook.serve(async move { shutdown.recv().await }).await;
    ExitCode::SUCCESS
}

/// One CPU to run on (a sidecar's usual CPU limit, or `taskset`): a current-thread runtime, which
/// skips the work-stealing machinery a single worker cannot use. More: one worker per CPU. With
/// `[listen] workers`, the proxy's connections are served on runtimes of their own
/// (`sidekey::workers`) and this one, current-thread, runs the rest: the acceptor, the admin API,
/// the token sources.
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut builder = if cpus == 1 || workers.is_some() {
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
