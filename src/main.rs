//! The `tidings` binary: flags and file → configuration → logging → bind → serve until a
//! signal; or `tidings config check|example`.

use std::io::IsTerminal;
use std::process::ExitCode;

use std::path::Path;

use anyhow::Context;
use tidings::config::{self, Invocation, LogFormat};
use tidings::server::ServerError;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Exit code of a settings mistake (a bad flag, environment variable or configuration file),
/// as clap uses for its own usage errors: scripts can tell it from a runtime failure (1).
const SETTINGS_MISTAKE: u8 = 2;

fn main() -> ExitCode {
    let invocation = match config::parse_command_line(std::env::args_os().collect()) {
        Ok(invocation) => invocation,
        Err(err) => {
            eprintln!("tidings: {err}");
            return ExitCode::from(SETTINGS_MISTAKE);
        }
    };
    let args = match invocation {
        Invocation::Serve(args) => *args,
        Invocation::Check(file) => return check(&file),
        Invocation::Example => {
            print!("{}", config::example());
            return ExitCode::SUCCESS;
        }
        Invocation::Reference => {
            print!("{}", config::reference());
            return ExitCode::SUCCESS;
        }
    };
    let origins = args.origins.clone();
    let logging = (args.log_filter(), args.log_format);
    // Every mistake of the settings is found here, before logging starts or anything binds.
    let prepared = match args.into_config() {
        Ok(config) => tidings::server::prepare(config),
        Err(err) => return settings_mistake(origins.site_of(err.flag()), &err),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return server_failure(&origins, &err),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tidings: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(prepared, logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => match err.downcast_ref::<ServerError>() {
            Some(err) => server_failure(&origins, err),
            None => {
                // One line with the whole cause chain, not a backtrace: this reaches users.
                eprintln!("tidings: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Prints a settings mistake where it was made ("FILE: key `k`: …", "environment variable
/// TIDINGS_K: …"; a flag's own messages name it) and exits 2.
fn settings_mistake(site: Option<String>, err: &dyn std::error::Error) -> ExitCode {
    match site {
        Some(site) => eprintln!("tidings: {site}: {}", chain(err)),
        None => eprintln!("tidings: {}", chain(err)),
    }
    ExitCode::from(SETTINGS_MISTAKE)
}

/// A failure of the start: the settings' (exit 2) or the machine's and the network's (exit 1).
fn server_failure(origins: &config::Origins, err: &ServerError) -> ExitCode {
    match err.settings_flag() {
        // Unlike the settings' own messages, the server's do not name the flag.
        Some(flag) => {
            let site = origins.site(flag).unwrap_or_else(|| format!("--{flag}"));
            settings_mistake(Some(site), err)
        }
        None => {
            eprintln!("tidings: {}", chain(err));
            ExitCode::FAILURE
        }
    }
}

/// `err: its source: its source's source…`, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `tidings config check FILE`: the same reading and the same checks as a start, no start.
fn check(file: &Path) -> ExitCode {
    let args = match config::check_file(file) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("tidings: {err}");
            return ExitCode::from(SETTINGS_MISTAKE);
        }
    };
    for stray in config::stray_environment() {
        eprintln!("tidings: warning: {stray}");
    }
    let origins = args.origins.clone();
    // Without flags, a setting's mistake not traced to a variable is the file's.
    let site = |flag: Option<&str>| {
        flag.map(|flag| {
            origins
                .site(flag)
                .unwrap_or_else(|| file.display().to_string())
        })
    };
    let prepared = match args.into_config() {
        Ok(config) => tidings::server::prepare(config),
        Err(err) => return settings_mistake(site(err.flag()), &err),
    };
    match prepared {
        Ok(_) => {
            println!("{}: valid", file.display());
            ExitCode::SUCCESS
        }
        Err(err) => match err.settings_flag() {
            Some(flag) => settings_mistake(site(Some(flag)), &err),
            None => server_failure(&origins, &err),
        },
    }
}

async fn serve(
    prepared: tidings::server::Prepared,
    (log, format): (String, LogFormat),
) -> anyhow::Result<()> {
    // Checked with the other settings: it parses.
    let filter = EnvFilter::try_new(&log).with_context(|| format!("invalid log filter {log:?}"))?;
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|event| !dumps_frames(event)))
        .with(text)
        .with(json)
        .init();
    // Panics go to the same log, once each, naming the client when a session panicked.
    std::panic::set_hook(Box::new(tidings::server::log_panic));
    for stray in config::stray_environment() {
        tracing::warn!("{stray}");
    }
    // Every connection is a file descriptor; the usual soft limit (1024) would cap a server at
    // about a thousand clients, so take whatever the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-files limit"),
    }

    let listen = prepared.listen().to_owned();
    let server = tidings::server::Server::start(prepared).await?;
    let listener = bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Tests and scripts read this exact line from stdout to learn the port.
    println!("listening on {address}");
    tracing::info!(%address, "tidings started; chat page at http://{address}/");

    let first_signal = async {
        shutdown_signal().await;
        // A second signal means "now": an operator (or a supervisor's deadline) does not want
        // to wait out the drain window.
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: stopping at once");
            std::process::exit(0);
        });
    };
    server.serve(listener, first_signal).await;
    Ok(())
}

/// The WebSocket library's trace lines print whole frames, tokens sent in `connect`,
/// `refresh` and `subscribe` included: no filter may let them through.
fn dumps_frames(event: &tracing::Metadata<'_>) -> bool {
    *event.level() == tracing::Level::TRACE && event.target().starts_with("tungstenite")
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(err) => {
                tracing::warn!(%err, "cannot watch SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`). tokio's
/// default of 1,024 overflows when a node's clients all come back at once (another node lost,
/// a deploy): the SYNs dropped then wait a whole TCP retransmission (1 s, then 3 s).
const ACCEPT_BACKLOG: u32 = 65_535;

/// Listens on the first address `listen` resolves to, with [`ACCEPT_BACKLOG`].
async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for address in tokio::net::lookup_host(listen).await? {
        let socket = match address {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // As std and tokio bind: a restarted node may listen while old connections linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(address) {
            Ok(()) => return socket.listen(ACCEPT_BACKLOG),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("the address resolved to nothing")))
}
