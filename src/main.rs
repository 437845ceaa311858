//! The `tidings` binary: flags → configuration → logging → bind → serve until a signal.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tidings::config::Cli;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("tidings: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line with the whole cause chain, not a backtrace: this reaches users.
            eprintln!("tidings: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let args = Cli::parse().into_serve_args();
    let log = args.log_filter();
    let filter = EnvFilter::try_new(&log).with_context(|| format!("invalid log filter {log:?}"))?;
    tracing_subscriber::registry()
        .with(filter)
        .with(filter_fn(|event| !dumps_frames(event)))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    // Panics go to the same log, once each, naming the client when a session panicked.
    std::panic::set_hook(Box::new(tidings::server::log_panic));
    let config = args.into_config()?;
    // Every connection is a file descriptor; the usual soft limit (1024) would cap a server at
    // about a thousand clients, so take whatever the hard limit allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files limit"),
        Err(err) => tracing::warn!(%err, "cannot raise the open-files limit"),
    }

    let listen = config.listen.clone();
    let server = tidings::server::Server::build(config).await?;
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Tests and scripts read this exact line from stdout to learn the port.
    println!("listening on {address}");
    tracing::info!(%address, "tidings started; chat page at http://{address}/");

    server.serve(listener, shutdown_signal()).await;
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
