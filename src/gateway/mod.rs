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
//!
#![doc = include_str!("../../docs/gateway.md")]

mod access;
mod body;
mod config;
mod connection;
mod current;
mod edge;
mod error;
mod first_frame;
mod grpc;
mod health;
mod lineage;
mod metrics;
mod proxy;
mod redis_link;
mod replicas;
mod stage;
mod state;
mod tls;
mod websocket;
mod write_watch;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

pub use access::AccessLogFormat;
pub use body::{BoxError, GatewayBody};
pub use config::{Cli, FilePlan, GatewayConfig, LogFormat, TlsFiles, CREDENTIALS_ENV};
pub use error::GatewayError;
pub use stage::Stage;

use crate::admin::AdminService;
use crate::store::{CounterStore, MemoryStore, RedisStore};
use crate::{ErrorKind, NewUsagePlan, UsagePlan, UsagePlanLayer, UsagePlans};

/// How long a connection with nothing in flight has, once told to close,
/// to flush what it has written (then it is dropped).
const FLUSH_WINDOW: Duration = Duration::from_millis(100);

/// How long a connection closed for idling may linger after its GOAWAY (a
/// client acknowledges it within a round trip), then it is dropped.
const GOAWAY_LINGER: Duration = Duration::from_millis(500);

/// How long one round with Redis (leases back, registry sync) may take.
const REDIS_ROUND_TIMEOUT: Duration = Duration::from_secs(3);

/// A running gateway.
///
/// ```
/// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// # let local = "127.0.0.1:0".parse().unwrap();
/// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
/// // In memory, echoing requests, on ports the system picks.
/// let gateway = Gateway::start(config).await.unwrap();
/// assert_ne!(gateway.data_addr().port(), 0);
/// gateway.shutdown().await.unwrap();
/// # });
/// ```
#[derive(Debug)]
pub struct Gateway {
    data_addr: SocketAddr,
    admin_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    plans: UsagePlans,
    readiness: Arc<health::Readiness>,
    certs: Vec<Arc<tls::ServerCert>>,
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
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert!(gateway.is_ready());
    /// # gateway.shutdown().await.unwrap();
    /// let bad = GatewayConfig { redis_leases: true, ..GatewayConfig::default() }; // leases need Redis
    /// assert!(Gateway::start(bad).await.is_err()); // invalid: nothing is bound
    /// # });
    /// ```
    pub async fn start(config: GatewayConfig) -> Result<Self, GatewayError> {
        config.validate()?;
        tls::install_default_provider();
        // Bad certificates stop the start before anything else happens.
        let load = |files: &Option<TlsFiles>| {
            files
                .as_ref()
                .map(|f| tls::ServerCert::load(&f.cert, &f.key))
                .transpose()
                .map_err(GatewayError::Tls)
        };
        let (data_cert, admin_cert) = (load(&config.tls)?, load(&config.admin_tls)?);
        let upstream_tls = match &config.upstream {
            Some(uri) if uri.scheme_str() == Some("https") => {
                Some(tls::client_config(config.upstream_ca.as_deref()).map_err(GatewayError::Tls)?)
            }
            _ => None,
        };
        let readiness = health::Readiness::new();
        let mut late_store = None;
        let (plans, mut backing) = match &config.redis {
            Some(url) => {
                let late = Arc::new(redis_link::LateStore::default());
                late_store = Some(late.clone());
                let plans = UsagePlans::builder()
                    .with_store(late.clone() as Arc<dyn CounterStore>)
                    .build();
                match redis_link::first_attempt(&config, &plans, &late, REDIS_ROUND_TIMEOUT).await?
                {
                    Ok(link) => (plans, Backing::Redis(link.replica, link.store)),
                    Err(message) => {
                        // Serve what the configuration names meanwhile: its
                        // keys get the failure policy, not a 403.
                        provision(&plans, &config)?;
                        // An admin change answers 503 and changes nothing
                        // until Redis is reached (joining, the registry
                        // becomes the replicas': a change made here alone
                        // was acknowledged, then lost).
                        plans.set_replication(Some(Arc::new(redis_link::not_reached_yet)));
                        tracing::warn!(
                            error = %message,
                            url = %replicas::redacted(url),
                            "Redis not reachable: serving by the --redis-failure policy, \
                             not ready, trying again with backoff"
                        );
                        let (link, task) = redis_link::retry(
                            config.clone(),
                            plans.clone(),
                            late,
                            REDIS_ROUND_TIMEOUT,
                            message,
                        );
                        (plans, Backing::Connecting { link, task })
                    }
                }
            }
            None => {
                let store = Arc::new(MemoryStore::new());
                let plans = UsagePlans::builder()
                    .with_store(store.clone() as Arc<dyn CounterStore>)
                    .build();
                if let Some(path) = &config.state_file {
                    if state::load(path, &plans, &store).map_err(GatewayError::StateFile)? {
                        tracing::info!(path = %path.display(), "state restored");
                    }
                }
                provision(&plans, &config)?;
                let writer = config.state_file.clone().map(state::StateWriter::new);
                (plans, Backing::Memory { store, writer })
            }
        };
        if !matches!(backing, Backing::Connecting { .. }) {
            backing.persist(&plans).await?;
            readiness.set_loaded();
        }

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
        let (phase, phases) = watch::channel(Phase::Serving);
        let (alive, connections) = mpsc::channel::<()>(1);
        let edge = EdgeConfig {
            header_read_timeout: config.header_read_timeout,
            response_write_timeout: config.response_write_timeout,
            body_limits: edge::BodyLimits {
                idle: config.body_read_timeout,
                min_rate: config.body_min_rate.map(|bytes_per_sec| edge::MinRate {
                    bytes_per_sec,
                    grace: edge::MIN_RATE_GRACE,
                }),
            },
            request_ids: access::RequestIds::Missing,
            access_log: None,
            tls: None,
        };
        let (access_log, access_log_written) = access::AccessLog::start(config.access_log).unzip();
        let data_edge = EdgeConfig {
            request_ids: access::RequestIds::Every,
            access_log,
            tls: data_cert.clone().map(tls::acceptor),
            ..edge.clone()
        };
        let admin_edge = EdgeConfig {
            tls: admin_cert.clone().map(tls::acceptor),
            ..edge.clone()
        };
        let mut servers = Vec::new();

        let layer = UsagePlanLayer::new(plans.clone())
            .with_stage(&config.stage.api_id, &config.stage.stage)
            .with_store_failure(config.redis_failure)
            .with_shadow(config.shadow);
        let upstream = Arc::new(proxy::Upstream::new(
            config.upstream.clone(),
            config.upstream_timeout,
            upstream_tls,
        ));
        let key_header = HeaderName::from_static("x-api-key");
        let proto = if data_cert.is_some() { "https" } else { "http" };
        servers.push(tokio::spawn(serve(
            data,
            phases.clone(),
            alive.clone(),
            data_edge,
            move |remote| current::Current {
                inner: metrics::Metered {
                    inner: layer.layer(proxy::Proxy::new(
                        upstream.clone(),
                        key_header.clone(),
                        remote,
                        proto,
                    )),
                },
                late: late_store.clone(),
            },
        )));
        let admin_service = health::Health {
            inner: AdminService::new(plans.clone(), config.admin_credentials.clone())
                .with_regions(config.admin_regions.clone())
                .with_top_ups(config.admin_top_ups),
            readiness: readiness.clone(),
        };
        servers.push(tokio::spawn(serve(
            admin,
            phases.clone(),
            alive.clone(),
            admin_edge,
            move |_| admin_service.clone(),
        )));
        if let Some(listener) = metrics_listener {
            let handle = metrics::handle();
            servers.push(tokio::spawn(serve(
                listener,
                phases.clone(),
                alive.clone(),
                edge,
                move |_| MetricsEndpoint(handle),
            )));
        }
        if config.upstream.is_none() {
            tracing::info!("no --upstream: admitted requests get the built-in echo");
        }
        let scheme = |cert: &Option<Arc<tls::ServerCert>>| match cert {
            Some(_) => "https",
            None => "http",
        };
        tracing::info!(
            "data plane listening on {}://{data_addr}",
            scheme(&data_cert)
        );
        tracing::info!(
            "admin API listening on {}://{admin_addr}",
            scheme(&admin_cert)
        );
        let certs: Vec<_> = data_cert.into_iter().chain(admin_cert).collect();
        // Always: SIGHUP's default action ends the process (systemd's
        // `ExecReload` sends it), losing what was admitted since the
        // state file's last write.
        #[cfg(unix)]
        reload_on_sighup(certs.clone(), stop.subscribe())?;
        if let Some(addr) = metrics_addr {
            tracing::info!("metrics listening on http://{addr}");
        }

        drop((alive, phases));
        let task = tokio::spawn(run(
            plans.clone(),
            backing,
            config,
            readiness.clone(),
            stopped,
            Drain {
                phase,
                connections,
                servers,
                access_log_written,
            },
        ));
        Ok(Self {
            data_addr,
            admin_addr,
            metrics_addr,
            plans,
            readiness,
            certs,
            stop,
            task,
        })
    }

    /// The data plane's address.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert!(std::net::TcpStream::connect(gateway.data_addr()).is_ok());
    /// # gateway.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The admin API's address.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert_ne!(gateway.admin_addr(), gateway.data_addr());
    /// assert!(std::net::TcpStream::connect(gateway.admin_addr()).is_ok());
    /// # gateway.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The metrics endpoint's address, if enabled.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, metrics_listen: Some(local), ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert!(gateway.metrics_addr().unwrap().port() != 0);
    /// # gateway.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The plans, keys and counters this gateway enforces.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{FilePlan, Gateway, GatewayConfig};
    /// # use tower_usage_plans::NewUsagePlan;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let mut config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// # config.plans.push(FilePlan { plan: NewUsagePlan::new("basic"), keys: vec![] });
    /// // `config` lists one plan (a `[[plans]]` table in the file).
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert_eq!(gateway.plans().usage_plans()[0].name, "basic");
    /// # gateway.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn plans(&self) -> &UsagePlans {
        &self.plans
    }

    /// What `GET /ready` on the admin listener answers: plans are loaded,
    /// Redis (with [`GatewayConfig::redis`]) answered its last round, and
    /// the gateway is not stopping. A gateway whose Redis did not answer at
    /// start serves by its failure policy and is not ready until it does.
    ///
    /// ```no_run
    /// use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    ///
    /// # async fn run() -> Result<(), tower_usage_plans::gateway::GatewayError> {
    /// let gateway = Gateway::start(GatewayConfig::default()).await?;
    /// assert!(gateway.is_ready(), "in memory: ready once started");
    /// # Ok(())
    /// # }
    /// ```
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    /// Reads every listener's certificate and key files again (what
    /// SIGHUP does): new connections get the new pair, open ones keep
    /// theirs. A pair that cannot be read or does not match is not used:
    /// the old one stays, and the error names the file.
    ///
    /// # Errors
    /// [`GatewayError::Tls`] for the first pair that could not be loaded.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// assert!(gateway.reload_tls().is_ok()); // no TLS listener: nothing to reload
    /// # gateway.shutdown().await.unwrap();
    /// # });
    /// ```
    pub fn reload_tls(&self) -> Result<(), GatewayError> {
        reload(&self.certs)
    }

    /// Stops accepting, closes idle connections at once, lets in-flight
    /// requests finish (up to [`GatewayConfig::shutdown_grace`], 10 s by
    /// default) and writes the state file (or gives leases back) a last
    /// time.
    ///
    /// # Errors
    /// If the final state write fails.
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// let addr = gateway.data_addr();
    /// gateway.shutdown().await.unwrap();
    /// assert!(std::net::TcpStream::connect(addr).is_err()); // no longer accepting
    /// # });
    /// ```
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
    ///
    /// ```
    /// # use tower_usage_plans::gateway::{Gateway, GatewayConfig};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let local = "127.0.0.1:0".parse().unwrap();
    /// # let config = GatewayConfig { listen: local, admin_listen: local, ..GatewayConfig::default() };
    /// let gateway = Gateway::start(config).await.unwrap();
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let running = tokio::spawn(gateway.run_until(async { stopped.await.unwrap() }));
    /// stop.send(()).unwrap();
    /// assert!(running.await.unwrap().is_ok());
    /// # });
    /// ```
    pub async fn run_until(self, signal: impl Future<Output = ()>) -> Result<(), GatewayError> {
        let mut stopped = self.stop.subscribe();
        tokio::select! {
            () = signal => tracing::info!("shutdown signal received"),
            _ = stopped.changed() => {}
        }
        self.shutdown().await
    }
}

/// Reloads every certificate, logging each outcome.
fn reload(certs: &[Arc<tls::ServerCert>]) -> Result<(), GatewayError> {
    let mut first_error = None;
    for cert in certs {
        match cert.reload() {
            Ok(()) => {
                tracing::info!(cert = %cert.cert_path().display(), "TLS certificate reloaded")
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS certificate not reloaded: the old one stays in use");
                first_error.get_or_insert(GatewayError::Tls(e));
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// SIGHUP reloads the certificates (with none, it does nothing), until the
/// gateway stops.
#[cfg(unix)]
fn reload_on_sighup(
    certs: Vec<Arc<tls::ServerCert>>,
    mut stopped: watch::Receiver<bool>,
) -> Result<(), GatewayError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(|source| GatewayError::Io {
        context: "cannot install the SIGHUP handler".into(),
        source,
    })?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                received = hangup.recv() => {
                    if received.is_none() {
                        return;
                    }
                    if certs.is_empty() {
                        tracing::info!("SIGHUP received: no TLS certificate to reload");
                    }
                    let _ = reload(&certs);
                }
                _ = stopped.changed() => return,
            }
        }
    });
    Ok(())
}

/// Creates the configured keys and plans that do not exist yet (keys
/// matched by value, else name; plans by name) and their associations.
/// Their ids derive from their names, so every replica creates them alike:
/// one that starts on an emptied Redis before the others put the registry
/// back re-creates the same plans and keys, whose counters they restore
/// (with new ids, the keys' quotas started afresh and the other replicas'
/// changes to them were lost).
fn provision(plans: &UsagePlans, config: &GatewayConfig) -> Result<(), GatewayError> {
    let mut key_ids = std::collections::HashMap::new();
    for key in &config.keys {
        let by_name = || plans.api_keys().into_iter().find(|k| k.name == key.name);
        let existing = match &key.value {
            Some(value) => plans.api_key_by_value(value).or_else(|| {
                // A key of that name with another value: kept (a key's
                // value never changes), rather than a second key of the name.
                let existing = by_name()?;
                tracing::warn!(
                    key = %key.name.as_deref().unwrap_or(""),
                    id = %existing.id,
                    "the configuration gives this key a value that no key has; the key of that \
                     name that exists already is kept, and its value stays valid (to change a \
                     key's value, create a key through the admin API and delete this one)"
                );
                Some(existing)
            }),
            None => by_name(),
        };
        if let Some(existing) = &existing {
            if existing.enabled != key.enabled {
                tracing::warn!(
                    key = %key.name.as_deref().unwrap_or(""),
                    id = %existing.id,
                    enabled = existing.enabled,
                    "the configuration's key differs in enabled from the key that exists \
                     already, which is kept (change it through the admin API)"
                );
            }
        }
        let id = match existing {
            Some(existing) => existing.id,
            None => {
                let id = key
                    .name
                    .as_ref()
                    .map(|name| crate::registry::derived_id(&format!("config key {name}")));
                plans
                    .create_api_key_as(key.clone(), id.as_deref())
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
            Some(plan) => {
                warn_if_changed(&plan, &entry.plan);
                plan.id
            }
            None => {
                let id = crate::registry::derived_id(&format!("config plan {}", entry.plan.name));
                plans
                    .create_usage_plan_as(NewUsagePlan::clone(&entry.plan), Some(&id))
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

/// A configured plan that exists already (in the state file, or shared by
/// other replicas) is kept as it is, changes made through the admin API
/// included: says so when the configuration now reads otherwise, so that
/// no one takes the file for what is enforced.
fn warn_if_changed(existing: &UsagePlan, configured: &NewUsagePlan) {
    let differ: Vec<&str> = [
        ("throttle", existing.throttle != configured.throttle),
        ("quota", existing.quota != configured.quota),
        ("apiStages", existing.api_stages != configured.api_stages),
    ]
    .into_iter()
    .filter_map(|(field, differs)| differs.then_some(field))
    .collect();
    if !differ.is_empty() {
        tracing::warn!(
            plan = %existing.name,
            id = %existing.id,
            "the configuration's plan differs in {} from the plan that exists already, which is \
             kept (change it through the admin API)",
            differ.join(", ")
        );
    }
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
    /// Redis has not answered yet: a task tries again with backoff.
    Connecting {
        link: tokio::sync::oneshot::Receiver<redis_link::Link>,
        task: JoinHandle<()>,
    },
}

impl Backing {
    /// How often `persist` runs while serving.
    fn interval(&self, config: &GatewayConfig) -> Duration {
        match self {
            Self::Memory { .. } => config.flush_interval,
            Self::Redis(..) | Self::Connecting { .. } => replicas::SYNC_INTERVAL,
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
            Self::Memory { writer: None, .. } | Self::Connecting { .. } => Ok(()),
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
                    // the next round; the sync goes on. The round's failures
                    // are reported together: the caller logs them once.
                    let mut failures = Vec::new();
                    // Redis came back empty: put back what this replica
                    // saw before anything else.
                    if let Err(e) = store.recover_if_emptied().await {
                        failures.push(format!("could not check Redis for lost data: {e}"));
                    }
                    let given = if every_lease {
                        store.give_back_leases().await
                    } else {
                        store.give_back_expired_leases().await
                    };
                    if let Err(e) = given {
                        failures.push(format!("could not give leased quota back: {e}"));
                    }
                    if let Err(e) = replica.lock().await.sync().await {
                        failures.push(format!("could not sync the registry through Redis: {e}"));
                    }
                    match failures.is_empty() {
                        true => Ok(()),
                        false => Err(GatewayError::redis(failures.join("; "))),
                    }
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

/// Where the listeners and their connections are in a shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Stop accepting; close idle connections; let in-flight requests end.
    Draining,
    /// The grace is over: drop every connection.
    Abort,
}

/// What `run` needs to stop the listeners and their connections.
struct Drain {
    phase: watch::Sender<Phase>,
    /// Ends (`None`) when every connection task has ended: each holds a
    /// sender.
    connections: mpsc::Receiver<()>,
    servers: Vec<JoinHandle<()>>,
    /// Told when the access log's last line is written.
    access_log_written: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Persists (state file or Redis) while serving — and connects to a Redis
/// that did not answer at start; on stop drains and persists a last time.
async fn run(
    plans: UsagePlans,
    mut backing: Backing,
    config: GatewayConfig,
    readiness: Arc<health::Readiness>,
    mut stopped: watch::Receiver<bool>,
    mut drain: Drain,
) -> Result<(), GatewayError> {
    let mut tick = tokio::time::interval(backing.interval(&config));
    // A slow round (Redis unreachable: up to 3 s) must not queue up missed
    // ticks ahead of a stop.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The last failure logged: a store that stays down is one line.
    let mut failing: Option<String> = None;
    loop {
        let connected = async {
            match &mut backing {
                Backing::Connecting { link, .. } => link.await.ok(),
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stopped.changed() => break,
            Some(link) = connected => {
                backing = Backing::Redis(link.replica, link.store);
                if let Err(e) = backing.persist(&plans).await {
                    ::metrics::counter!("usage_plans_persist_failures_total").increment(1);
                    tracing::error!(error = %e, "could not persist");
                }
                readiness.set_loaded();
            }
            _ = tick.tick() => {
                ::metrics::gauge!("usage_plans_plans").set(plans.plan_count() as f64);
                ::metrics::gauge!("usage_plans_keys").set(plans.key_count() as f64);
                let result = backing.persist(&plans).await;
                if matches!(backing, Backing::Redis(..)) {
                    readiness.set_store_up(result.is_ok());
                }
                match result {
                    Ok(()) => {
                        if failing.take().is_some() {
                            tracing::info!("persisting again");
                        }
                    }
                    Err(e) => {
                        // Each round that failed: the admin calls answered
                        // meanwhile are not on disk (or in Redis) yet.
                        ::metrics::counter!("usage_plans_persist_failures_total").increment(1);
                        let message = e.to_string();
                        if failing.as_deref() != Some(message.as_str()) {
                            tracing::error!(error = %message, "could not persist (logged once until it changes)");
                            failing = Some(message);
                        }
                    }
                }
            }
        }
    }
    readiness.set_stopping();
    if let Backing::Connecting { task, .. } = &backing {
        task.abort();
    }
    let _ = drain.phase.send(Phase::Draining);
    for server in drain.servers {
        let _ = server.await;
    }
    let grace = config.shutdown_grace;
    if tokio::time::timeout(grace, drain.connections.recv())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish within {grace:?}");
        let _ = drain.phase.send(Phase::Abort);
        // Every connection task ends at the next poll.
        let _ = drain.connections.recv().await;
    }
    // Every connection has ended, and with them the access log's senders:
    // its last lines go out before the process may exit.
    if let Some(written) = drain.access_log_written {
        let _ = tokio::time::timeout(Duration::from_secs(1), written).await;
    }
    backing.flush(&plans).await?;
    tracing::info!("state flushed");
    tracing::info!("gateway stopped");
    Ok(())
}

/// The edge's limits, the same on every listener, and whether the
/// listener stamps request ids and logs its exchanges (the data plane).
#[derive(Clone)]
struct EdgeConfig {
    header_read_timeout: Option<Duration>,
    response_write_timeout: Option<Duration>,
    body_limits: edge::BodyLimits,
    request_ids: access::RequestIds,
    access_log: Option<access::AccessLog>,
    /// HTTPS: the listener's TLS configuration.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Accepts connections until told to drain; each is served by
/// `make(remote)` behind the [`edge`](edge::Edge) and driven by
/// [`drive`]. A client that takes longer than `header_read_timeout` to send
/// a request's headers loses its connection (it would hold it, and
/// shutdown); so does one idle that long between requests. hyper does it
/// for HTTP/1 (a tokio timer per request: within this machine's noise,
/// BENCHMARKS.md); `drive` for HTTP/2, and for connections that send
/// nothing at all.
async fn serve<S, B>(
    listener: TcpListener,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
    limits: EdgeConfig,
    make: impl Fn(SocketAddr) -> S,
) where
    S: Service<Request<edge::EdgeBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: http_body::Body<Data = Bytes> + From<Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // A client that sends its request and shuts its writing side
        // (`nc -N`, some HTTP/1.0 clients) still gets its answer: without
        // this, hyper closes the connection at the end of what it reads,
        // and the request goes unanswered.
        .half_close(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(edge::HYPER_MAX_HEADERS)
        // A head that never ends holds this much until the header read
        // timeout (hyper's default, ~400 KiB, let 1,500 such connections
        // take 800 MB); the edge's own limits fit well within it.
        .max_buf_size(edge::HYPER_MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(2 * edge::MAX_HEADER_BYTES as u32)
        // Streams the gateway had to reset for the client's errors (a
        // stream WINDOW_UPDATE overflowing, "MadeYouReset"): their
        // requests go on upstream past the stream limit, so a connection
        // that causes many is closed early (hyper's default is 1,024).
        .max_local_error_reset_streams(edge::MAX_ERROR_RESETS);
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
            _ = phase.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        if limits.response_write_timeout.is_some() {
            write_watch::bound_unsent(&stream);
        }
        let state = Arc::new(edge::ConnectionState::default());
        let service = TowerToHyperService::new(access::Stamped {
            inner: edge::Edge {
                inner: make(remote),
                connection: state.clone(),
                body_limits: limits.body_limits,
            },
            log: limits.access_log.clone(),
            client: remote,
            ids: limits.request_ids,
        });
        let (builder, alive, mut phase) = (builder.clone(), alive.clone(), phase.clone());
        let header_read_timeout = limits.header_read_timeout;
        let write_limit = limits.response_write_timeout;
        let tls = limits.tls.clone();
        tokio::spawn(async move {
            let _alive = alive;
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
                    _ = phase.changed() => return,
                }
            }
            // Its writes the client does not take wait for it (judged by
            // `drive` with the write limit).
            let stream = write_watch::WriteWatched::new(stream, state.clone());
            let mut watched = Watched {
                state,
                idle_limit: header_read_timeout,
                write_limit,
                phase,
            };
            let Some(tls) = tls else {
                let connection =
                    builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                return drive(connection, |c| c.graceful_shutdown(), watched).await;
            };
            // A handshake that never completes holds the connection like
            // unfinished headers do: the same limit.
            let handshake = async {
                match watched.idle_limit {
                    Some(limit) => tokio::time::timeout(limit, tls.accept(stream))
                        .await
                        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
                    None => tls.accept(stream).await,
                }
            };
            let stream = tokio::select! {
                accepted = handshake => match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, %remote, "TLS handshake failed");
                        return;
                    }
                },
                _ = watched.phase.changed() => return,
            };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            drive(connection, |c| c.graceful_shutdown(), watched).await;
        });
    }
}

/// What [`drive`] watches a connection by: its requests, its idle limit
/// (the header read timeout), its write limit (the response write
/// timeout) and the gateway's phase.
struct Watched {
    state: Arc<edge::ConnectionState>,
    idle_limit: Option<Duration>,
    write_limit: Option<Duration>,
    phase: watch::Receiver<Phase>,
}

/// Serves one connection until it ends, closing it early:
/// - when it has had no request in flight for `idle_limit` (the header
///   read timeout) — for HTTP/2, whose server has no header timer, this is
///   what closes a connection that sent only its preface, an unfinished
///   HEADERS frame or PINGs (a GOAWAY, then dropped if it lingers);
/// - when its socket took none of what was written, or an HTTP/2 client
///   took less than a piece of a response, for `write_limit` or more
///   (at most twice that) — a client that does not read — dropped at
///   once, as nginx's `send_timeout` does: a GOAWAY would wait on that
///   client too;
/// - on shutdown: at once if nothing is in flight, else once its requests
///   are answered (a GOAWAY, or no keep-alive), or dropped when the grace
///   is over.
///
/// Either way a request that arrived after the connection was told to
/// close is answered before it is dropped.
async fn drive<C, E>(
    connection: C,
    graceful_shutdown: impl Fn(std::pin::Pin<&mut C>),
    watched: Watched,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let Watched {
        state,
        idle_limit,
        write_limit,
        mut phase,
    } = watched;
    tokio::pin!(connection);
    // The idle timer: when it fires, a connection that had no request in
    // flight and no new request since it was armed has idled the whole
    // limit. Checked when it fires, so requests pay nothing for it.
    let mut idle = idle_limit.map(|limit| (limit, Box::pin(tokio::time::sleep(limit))));
    // The write timer ends a write period every `write_limit` (never
    // sooner after a late tick: a period is a whole timeout).
    let mut write = write_limit.map(|limit| {
        let mut every = tokio::time::interval_at(tokio::time::Instant::now() + limit, limit);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every
    });
    let mut seen = state.requests();
    // Set once the connection was told to close: then dropped at it.
    let mut closing: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut shutdown_sent = false;
    let mut phase_open = true;
    loop {
        let idle_fired = async {
            match (&mut idle, &mut closing) {
                (_, Some(close)) => {
                    close.as_mut().await;
                    true
                }
                (Some((_, sleep)), None) => {
                    sleep.as_mut().await;
                    false
                }
                (None, None) => std::future::pending().await,
            }
        };
        let write_period_over = async {
            match &mut write {
                Some(every) => drop(every.tick().await),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = write_period_over => {
                if !state.end_write_period() {
                    tracing::debug!("closed a connection whose client took no response data within the response write timeout");
                    ::metrics::counter!("usage_plans_connections_dropped_total", "reason" => "response_write_timeout").increment(1);
                    return;
                }
            }
            changed = phase.changed(), if phase_open => {
                let now = if changed.is_ok() { *phase.borrow_and_update() } else { Phase::Abort };
                phase_open = changed.is_ok();
                match now {
                    Phase::Serving => {}
                    Phase::Abort => return,
                    Phase::Draining => {
                        if !shutdown_sent {
                            graceful_shutdown(connection.as_mut());
                            shutdown_sent = true;
                        }
                        if state.in_flight() == 0 {
                            closing = Some(Box::pin(tokio::time::sleep(FLUSH_WINDOW)));
                        }
                    }
                }
            }
            drop_now = idle_fired => {
                if drop_now {
                    if state.in_flight() == 0 {
                        return;
                    }
                    // A request that came after all (a client's HTTP/2
                    // stream that crossed our GOAWAY, which RFC 9113 lets
                    // it finish) is answered first: look again in a while.
                    // The shutdown's grace still ends it on a shutdown.
                    closing = Some(Box::pin(tokio::time::sleep(GOAWAY_LINGER)));
                    continue;
                }
                let Some((limit, sleep)) = idle.as_mut() else { continue };
                let requests = state.requests();
                if state.in_flight() > 0 || requests != seen {
                    seen = requests;
                    sleep.as_mut().reset(tokio::time::Instant::now() + *limit);
                } else {
                    if !shutdown_sent {
                        graceful_shutdown(connection.as_mut());
                        shutdown_sent = true;
                    }
                    closing = Some(Box::pin(tokio::time::sleep(GOAWAY_LINGER)));
                }
            }
        }
    }
}

/// `GET` anything: the Prometheus text exposition.
#[derive(Clone, Copy)]
struct MetricsEndpoint(Option<&'static metrics_exporter_prometheus::PrometheusHandle>);

impl<B> Service<Request<B>> for MetricsEndpoint {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let text = self.0.map(|h| h.render()).unwrap_or_default();
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        std::future::ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Idle, the connection is told to close (hyper sends its GOAWAY); a
    /// client's stream that crossed that GOAWAY is answered before the
    /// connection is dropped (it was dropped 0.5 s after the GOAWAY, its
    /// request cut off and charged), and the connection goes once it is.
    #[tokio::test(start_paused = true)]
    async fn a_request_that_crossed_the_goaway_is_answered_before_the_close() {
        let state = Arc::new(edge::ConnectionState::default());
        let (_phase, phase_rx) = watch::channel(Phase::Serving);
        let told_to_close = Arc::new(AtomicBool::new(false));
        let told = told_to_close.clone();
        // hyper's connection after a GOAWAY: it ends once its last stream
        // is answered; here, never on its own.
        let connection = std::future::pending::<Result<(), std::io::Error>>();
        let idle_limit = Duration::from_secs(2);
        let driving = tokio::spawn(drive(
            connection,
            move |_| told.store(true, Ordering::SeqCst),
            Watched {
                state: state.clone(),
                idle_limit: Some(idle_limit),
                write_limit: None,
                phase: phase_rx,
            },
        ));
        tokio::time::sleep(idle_limit + Duration::from_millis(1)).await;
        assert!(told_to_close.load(Ordering::SeqCst), "idle: told to close");
        let crossed = state.start(true);
        tokio::time::sleep(GOAWAY_LINGER * 4).await;
        assert!(!driving.is_finished(), "dropped under its request");
        drop(crossed);
        tokio::time::sleep(GOAWAY_LINGER + Duration::from_millis(1)).await;
        assert!(driving.is_finished(), "kept once its request was answered");
    }

    /// A response that waits a whole response write timeout for its
    /// client to take what it was handed (a client that does not read,
    /// or opens no HTTP/2 window) drops the connection, by two timeouts;
    /// one that waits on its upstream however long, or whose client
    /// keeps taking it, holds nothing up.
    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_no_response_data_loses_its_connection() {
        let state = Arc::new(edge::ConnectionState::default());
        let (_phase, phase_rx) = watch::channel(Phase::Serving);
        let connection = std::future::pending::<Result<(), std::io::Error>>();
        let limit = Duration::from_secs(10);
        let driving = tokio::spawn(drive(
            connection,
            |_| {},
            Watched {
                state: state.clone(),
                idle_limit: None,
                write_limit: Some(limit),
                phase: phase_rx,
            },
        ));
        let mut response = state.start(true);
        // The upstream's turn (the body polled, pending): five timeouts.
        tokio::time::sleep(limit * 5 + Duration::from_millis(1)).await;
        assert!(
            !driving.is_finished(),
            "dropped while the upstream was slow"
        );
        // A slow client: each piece taken half a timeout after it was handed.
        for _ in 0..10 {
            response.wait_for_client();
            tokio::time::sleep(limit / 2).await;
            response.client_took_it();
        }
        assert!(!driving.is_finished(), "dropped while the client read");
        // Then it takes nothing: kept for one timeout, dropped by two.
        response.wait_for_client();
        tokio::time::sleep(limit - Duration::from_millis(2)).await;
        assert!(!driving.is_finished(), "dropped before one timeout");
        tokio::time::sleep(limit + Duration::from_millis(2)).await;
        assert!(driving.is_finished(), "kept after two timeouts");
    }
}
