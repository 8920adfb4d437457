//! The gateway: usage plans in front of any HTTP upstream, with the AWS
//! API Gateway admin API.
//!
//! ```text
//! cargo run --release --example gateway -- --config examples/gateway.toml
//! ```

use std::io::IsTerminal;

/// jemalloc with its background threads returns memory freed after a
/// flood of connections to the system within seconds; glibc's malloc keeps
/// it (measured: 84 MB after 2,000 h2 connections, 10 MB once trimmed).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use tower_usage_plans::gateway::{Cli, Gateway, GatewayConfig, GatewayError, LogFormat};
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterFn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    // One core (e.g. pinned with taskset): a current-thread runtime, with no
    // cross-thread wakeups (measured: +15% req/s); else one worker per core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("gateway: cannot start the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse_naming_env();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Lines go to stdout from a thread of their own, through a bounded
    // queue: a stdout that is not read (a full pipe) costs lines, never a
    // request that logs one (each admin request does). The guard writes
    // what is queued when the gateway stops.
    let (stdout, _flush_on_exit) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("gateway-log")
        .finish(std::io::stdout());
    match cli.log_format.unwrap_or_default() {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .with_writer(stdout)
            .finish()
            .with(no_line_per_failed_decision())
            .init(),
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stdout().is_terminal())
            .with_writer(stdout)
            .finish()
            .with(no_line_per_failed_decision())
            .init(),
    }
    let result = async {
        let config = GatewayConfig::from_cli(cli)?;
        // Before the "listening" lines: a SIGTERM right after them must
        // shut down gracefully, not kill the process.
        let signal = shutdown_signal()?;
        let gateway = Gateway::start(config).await?;
        gateway.run_until(signal).await
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gateway: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Where the layer logs, at WARN, each decision its store failed: a line
/// per request in a Redis outage. The gateway logs those failures itself,
/// throttled (a line per 5 s at most), so the layer's are off unless
/// `RUST_LOG` names this target. Its other lines (shadow mode's, at INFO)
/// stay.
const LAYER_DECISIONS: &str = "tower_usage_plans::layer::decide";

/// Drops the layer's WARN lines per failed decision ([`LAYER_DECISIONS`]).
fn no_line_per_failed_decision() -> FilterFn<impl Fn(&Metadata<'_>) -> bool> {
    let wanted = std::env::var("RUST_LOG").is_ok_and(|spec| spec.contains(LAYER_DECISIONS));
    filter_fn(move |meta| {
        wanted || meta.target() != LAYER_DECISIONS || *meta.level() != Level::WARN
    })
}

/// Ctrl-C or SIGTERM; the handlers are installed at once.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, GatewayError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|source| GatewayError::Io {
                context: format!("cannot install the {name} handler"),
                source,
            })
        };
        let mut interrupt = install(SignalKind::interrupt(), "SIGINT")?;
        let mut terminate = install(SignalKind::terminate(), "SIGTERM")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
