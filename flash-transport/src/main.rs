//! `openpi-flash-transport server|client`: the same command line as openpi-flash's binary.
use anyhow::Result;
use clap::{Parser, Subcommand};
use openpi_flash_transport::parent_watch::ParentWatch;
use openpi_flash_transport::{client, server};
use std::io::IsTerminal;

#[derive(Parser)]
#[command(about = "Transport layer (QUIC + Arrow IPC) for openpi-triton, wire-compatible with openpi-flash")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server-side QUIC listener that forwards to the bridge's unix socket.
    Server(server::ServerArgs),
    /// Run a local client-side QUIC sidecar that Python can talk to over a Unix socket.
    Client(client::ClientArgs),
}

#[tokio::main]
async fn main() -> Result<()> {
    // First, so that the parent we watch is the one that started us (see parent_watch).
    let parent = ParentWatch::capture();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never into log files or a supervisor's pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Server(args) => server::run(args, parent).await,
        Command::Client(args) => client::run(args, parent).await,
    }
}
