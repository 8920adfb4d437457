//! The gateway: usage plans in front of any HTTP upstream, with the AWS
//! API Gateway admin API.
//!
//! ```text
//! cargo run --release --example gateway -- --config examples/gateway.toml
//! ```

use std::io::IsTerminal;

use clap::Parser;
use tower_usage_plans::gateway::{Cli, Gateway, GatewayConfig};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let result = async {
        let config = GatewayConfig::from_cli(Cli::parse())?;
        let gateway = Gateway::start(config).await?;
        gateway.run_until(shutdown_signal()).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("gateway: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
