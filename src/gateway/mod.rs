//! The gateway: [`UsagePlanLayer`] in front of any HTTP upstream, the
//! [`AdminService`] on its own listener, Prometheus metrics, a state file
//! and graceful shutdown. `examples/gateway.rs` is a thin `main` over
//! [`Gateway::start`]; tests start it in process.
//!
//! ```no_run
//! use tower_usage_plans::gateway::{Gateway, GatewayConfig};
//!
//! # async fn run() -> Result<(), tower_usage_plans::gateway::GatewayError> {
//! let gateway = Gateway::start(GatewayConfig::default()).await?;
//! println!("data plane on {}", gateway.data_addr());
//! gateway.shutdown().await
//! # }
//! ```

mod body;
mod config;
mod connection;
mod error;
mod metrics;
mod proxy;
mod replicas;
mod state;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

pub use body::{BoxError, GatewayBody};
pub use config::{Cli, FilePlan, GatewayConfig, CREDENTIALS_ENV};
pub use error::GatewayError;

use crate::store::{CounterStore, LeaseConfig, MemoryStore, RedisStore};
use crate::{AdminService, ErrorKind, NewUsagePlan, UsagePlanLayer, UsagePlans};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one round with Redis (leases back, registry sync) may take.
const REDIS_ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    plans: UsagePlans,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), GatewayError>>,
}

impl Gateway {
    /// Validates the configuration ([`GatewayConfig::validate`]),
    /// restores the state file, creates the configured plans and keys,
    /// binds every listener and starts serving.
    ///
    /// # Errors
    /// A [`GatewayError`] for an invalid configuration, a corrupt state
    /// file, an unreachable Redis, or a listener that cannot bind.
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        config.validate()?;
        let (plans, mut backing) = match &config.redis {
            Some(url) => {
                let shown = replicas::redacted(url);
                let mut store =
                    RedisStore::connect(url)
                        .await
                        .map_err(|e| GatewayError::Redis {
                            message: format!("--redis {shown}: {e}"),
                            source: Some(e),
                        })?;
                if config.redis_leases {
                    store = store.with_leases(LeaseConfig::default());
                }
                let plans = UsagePlans::builder().store(Arc::new(store.clone())).build();
                let stage = format!("{}:{}", config.stage.0, config.stage.1);
                let replica = replicas::Replica::join(url, plans.clone(), &stage)
                    .await
                    .map_err(GatewayError::redis)?;
                let replica = replicas::share(replica, &plans, &store);
                tracing::info!(url = %shown, "sharing counters and the registry through Redis");
                (plans, Backing::Redis(replica, store))
            }
            None => {
                let store = Arc::new(MemoryStore::new());
                let plans = UsagePlans::builder()
                    .store(store.clone() as Arc<dyn CounterStore>)
                    .build();
                if let Some(path) = &config.state_file {
                    if state::load(path, &plans, &store).map_err(GatewayError::StateFile)? {
                        tracing::info!(path = %path.display(), "state restored");
                    }
                }
                let writer = config.state_file.clone().map(state::StateWriter::new);
                (plans, Backing::Memory { store, writer })
            }
        };
        provision(&plans, &config)?;
        backing.persist(&plans).await?;

        let bind = |addr: SocketAddr, listener: &'static str| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| GatewayError::Bind {
                    listener,
                    addr,
                    source,
                })
        };
        let data = bind(config.listen, "listen").await?;
        let admin = bind(config.admin_listen, "admin-listen").await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr, "metrics-listen").await?),
            None => None,
        };
        let local = |listener: &TcpListener| {
            listener.local_addr().map_err(|source| GatewayError::Io {
                context: "the bound address".into(),
                source,
            })
        };
        let data_addr = local(&data)?;
        let admin_addr = local(&admin)?;
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());

        let (stop, stopped) = watch::channel(false);
        let graceful = Arc::new(GracefulShutdown::new());
        let mut servers = Vec::new();

        let layer = UsagePlanLayer::new(plans.clone())
            .with_stage(&config.stage.0, &config.stage.1)
            .with_store_failure(config.store_failure);
        let upstream = Arc::new(proxy::Upstream::new(
            config.upstream.clone(),
            config.upstream_timeout,
        ));
        let key_header = HeaderName::from_static("x-api-key");
        let header_read_timeout = config.header_read_timeout;
        servers.push(tokio::spawn(serve(
            data,
            stopped.clone(),
            graceful.clone(),
            header_read_timeout,
            move |remote| metrics::Metered {
                inner: layer.layer(proxy::Proxy::new(
                    upstream.clone(),
                    key_header.clone(),
                    remote,
                )),
            },
        )));
        let admin_service = AdminService::new(plans.clone(), config.admin_credentials.clone())
            .with_regions(config.admin_regions.clone());
        servers.push(tokio::spawn(serve(
            admin,
            stopped.clone(),
            graceful.clone(),
            header_read_timeout,
            move |_| admin_service.clone(),
        )));
        if let Some(listener) = metrics_listener {
            let handle = metrics::handle();
            servers.push(tokio::spawn(serve(
                listener,
                stopped.clone(),
                graceful.clone(),
                header_read_timeout,
                move |_| MetricsEndpoint(handle),
            )));
        }
        if config.upstream.is_none() {
            tracing::info!("no --upstream: admitted requests get the built-in echo");
        }
        tracing::info!("data plane listening on http://{data_addr}");
        tracing::info!("admin API listening on http://{admin_addr}");
        if let Some(addr) = metrics_addr {
            tracing::info!("metrics listening on http://{addr}");
        }

        let task = tokio::spawn(run(
            plans.clone(),
            backing,
            config,
            stopped,
            graceful,
            servers,
        ));
        Ok(Self {
            data_addr,
            admin_addr,
            metrics_addr,
            plans,
            stop,
            task,
        })
    }

    /// The data plane's address.
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The metrics endpoint's address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The plans, keys and counters this gateway enforces.
    pub fn plans(&self) -> &UsagePlans {
        &self.plans
    }

    /// Stops accepting, lets in-flight requests finish (up to 10 s) and
    /// writes the state file a last time.
    ///
    /// # Errors
    /// If the final state write fails.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        let _ = self.stop.send(true);
        self.task
            .await
            .map_err(|e| GatewayError::Internal(format!("gateway task failed: {e}")))?
    }

    /// Serves until `signal` completes, then shuts down gracefully.
    ///
    /// # Errors
    /// As [`Gateway::shutdown`].
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let mut stopped = self.stop.subscribe();
        tokio::select! {
            () = signal => tracing::info!("shutdown signal received"),
            _ = stopped.changed() => {}
        }
        self.shutdown().await
    }
}

/// Creates the configured keys and plans that do not exist yet (keys
/// matched by value, else name; plans by name) and their associations.
fn provision(plans: &UsagePlans, config: &GatewayConfig) -> Result<(), GatewayError> {
    let mut key_ids = std::collections::HashMap::new();
    for key in &config.keys {
        let existing = match &key.value {
            Some(value) => plans.api_key_by_value(value),
            None => plans.api_keys().into_iter().find(|k| k.name == key.name),
        };
        let id = match existing {
            Some(existing) => existing.id,
            None => {
                plans
                    .create_api_key(key.clone())
                    .map_err(|e| {
                        GatewayError::config(
                            "keys",
                            format!("'{}': {e}", key.name.as_deref().unwrap_or("")),
                        )
                    })?
                    .id
            }
        };
        if let Some(name) = &key.name {
            key_ids.insert(name.clone(), id);
        }
    }
    for entry in &config.plans {
        let existing = plans
            .usage_plans()
            .into_iter()
            .find(|p| p.name == entry.plan.name);
        let plan_id = match existing {
            Some(plan) => plan.id,
            None => {
                plans
                    .create_usage_plan(NewUsagePlan::clone(&entry.plan))
                    .map_err(|e| {
                        GatewayError::config("plans", format!("'{}': {e}", entry.plan.name))
                    })?
                    .id
            }
        };
        for key_name in &entry.keys {
            let key_id = key_ids.get(key_name).ok_or_else(|| {
                GatewayError::config(
                    "plans.keys",
                    format!(
                        "plan '{}' names key '{key_name}', which no [[keys]] entry has",
                        entry.plan.name
                    ),
                )
            })?;
            match plans.add_key_to_plan(&plan_id, key_id) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == ErrorKind::Conflict
                        && plans.usage_plan_key(&plan_id, key_id).is_ok() => {}
                Err(e) => {
                    return Err(GatewayError::config(
                        "plans.keys",
                        format!("plan '{}' key '{key_name}': {e}", entry.plan.name),
                    ))
                }
            }
        }
    }
    Ok(())
}

/// Where plans, keys and counters outlive the process.
enum Backing {
    /// In memory, optionally saved to a state file.
    Memory {
        store: Arc<MemoryStore>,
        writer: Option<state::StateWriter>,
    },
    /// Counters in Redis; the registry shared with the other replicas.
    Redis(Arc<tokio::sync::Mutex<replicas::Replica>>, RedisStore),
}

impl Backing {
    /// How often `persist` runs while serving.
    fn interval(&self, config: &GatewayConfig) -> Duration {
        match self {
            Self::Memory { .. } => config.flush_interval,
            Self::Redis(..) => replicas::SYNC_INTERVAL,
        }
    }

    /// Writes the state file, or gives expired leases back and syncs the
    /// registry with the other replicas.
    async fn persist(&mut self, plans: &UsagePlans) -> Result<(), GatewayError> {
        self.save(plans, false).await
    }

    /// The last flush, on stop: as [`persist`](Self::persist), but every
    /// lease goes back.
    async fn flush(&mut self, plans: &UsagePlans) -> Result<(), GatewayError> {
        self.save(plans, true).await
    }

    async fn save(&mut self, plans: &UsagePlans, every_lease: bool) -> Result<(), GatewayError> {
        match self {
            Self::Memory { writer: None, .. } => Ok(()),
            Self::Memory {
                store,
                writer: Some(writer),
            } => writer.save(plans, store).await.map_err(|e| {
                GatewayError::StateFile(format!("could not write the state file: {e}"))
            }),
            Self::Redis(replica, store) => {
                let round = async {
                    // Leases this replica does not spend count as used for
                    // every replica until given back. What fails is kept for
                    // the next round; the sync goes on.
                    // Redis came back empty: put back what this replica
                    // saw before anything else.
                    if let Err(e) = store.recover_if_emptied().await {
                        tracing::warn!(error = %e, "could not check Redis for lost data");
                    }
                    let given = if every_lease {
                        store.give_back_leases().await
                    } else {
                        store.give_back_expired_leases().await
                    };
                    if let Err(e) = given {
                        tracing::warn!(error = %e, "could not give leased quota back");
                    }
                    replica.lock().await.sync().await.map_err(|e| {
                        GatewayError::redis(format!(
                            "could not sync the registry through Redis: {e}"
                        ))
                    })
                };
                // An unreachable Redis can hold a call for many seconds: a
                // round (and so a stop) waits this long at most.
                tokio::time::timeout(REDIS_ROUND_TIMEOUT, round)
                    .await
                    .unwrap_or_else(|_| {
                        Err(GatewayError::redis(format!(
                            "Redis did not answer within {REDIS_ROUND_TIMEOUT:?}: leased quota \
                             and registry changes not flushed"
                        )))
                    })
            }
        }
    }
}

/// Persists (state file or Redis) while serving; on stop drains and
/// persists a last time.
async fn run(
    plans: UsagePlans,
    mut backing: Backing,
    config: GatewayConfig,
    mut stopped: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    servers: Vec<JoinHandle<()>>,
) -> Result<(), GatewayError> {
    let mut tick = tokio::time::interval(backing.interval(&config));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                ::metrics::gauge!("usage_plans_plans").set(plans.plan_count() as f64);
                ::metrics::gauge!("usage_plans_keys").set(plans.key_count() as f64);
                if let Err(e) = backing.persist(&plans).await {
                    tracing::error!(error = %e, "could not persist");
                }
            }
            _ = stopped.changed() => break,
        }
    }
    for server in servers {
        let _ = server.await;
    }
    let graceful = Arc::try_unwrap(graceful)
        .map_err(|_| GatewayError::Internal("connections still referenced".into()))?;
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}");
    }
    backing.flush(&plans).await?;
    tracing::info!("state flushed");
    tracing::info!("gateway stopped");
    Ok(())
}

/// Accepts connections until stopped; each is served by `make(remote)`.
/// A client that takes longer than `header_read_timeout` to send a
/// request's headers loses its connection (it would hold it, and shutdown);
/// so does one idle that long between requests. hyper arms a tokio timer
/// per request for it: within this machine's noise (BENCHMARKS.md).
async fn serve<S, B>(
    listener: TcpListener,
    mut stopped: watch::Receiver<bool>,
    graceful: Arc<GracefulShutdown>,
    header_read_timeout: Option<Duration>,
    make: impl Fn(SocketAddr) -> S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(make(remote));
        let (builder, watcher, mut stop) = (builder.clone(), graceful.watcher(), stopped.clone());
        tokio::spawn(async move {
            // hyper's header timer starts once there are bytes to tell
            // HTTP/1 from HTTP/2: a connection that sends none is closed here.
            if let Some(limit) = header_read_timeout {
                let mut first = [0u8; 1];
                tokio::select! {
                    peeked = tokio::time::timeout(limit, stream.peek(&mut first)) => {
                        if !matches!(peeked, Ok(Ok(1))) {
                            return;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// `GET` anything: the Prometheus text exposition.
#[derive(Clone, Copy)]
struct MetricsEndpoint(Option<&'static metrics_exporter_prometheus::PrometheusHandle>);

impl Service<Request<Incoming>> for MetricsEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Incoming>) -> Self::Future {
        let text = self.0.map(|h| h.render()).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        std::future::ready(Ok(response))
    }
}
