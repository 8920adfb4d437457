//! The gateway's configuration: a TOML file, overridden by command-line
//! flags (`clap`), validated into a [`GatewayConfig`].

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

use super::{GatewayError, Stage};
use crate::admin::AdminCredentials;
use crate::model::{NewApiKey, NewUsagePlan};
use crate::StoreFailure;

/// The gateway's command-line flags. Every flag also reads the
/// environment variable `USAGE_PLANS_<FLAG>` (`--listen`:
/// `USAGE_PLANS_LISTEN`); a flag beats the environment, which beats the
/// file. The admin credentials and regions add up instead: the file's, the
/// environment's (`USAGE_PLANS_ADMIN_CREDENTIALS`,
/// `USAGE_PLANS_ADMIN_REGION`, comma-separated) and the flags'.
///
/// ```
/// use clap::Parser;
/// use tower_usage_plans::gateway::Cli;
///
/// let cli = Cli::try_parse_from(["gateway", "--listen", "0.0.0.0:8080"]).unwrap();
/// assert_eq!(cli.listen, Some("0.0.0.0:8080".parse().unwrap()));
/// ```
#[derive(Debug, Default, Parser)]
#[command(
    name = "gateway",
    version,
    about = "API usage plans (keys, throttles, quotas) in front of any HTTP upstream",
    // Not the doc comment: its example is code, not help.
    long_about = "API usage plans (keys, throttles, quotas) in front of any HTTP upstream.\n\n\
        Every flag also reads the environment variable USAGE_PLANS_<FLAG> (--listen: \
        USAGE_PLANS_LISTEN); a flag beats the environment, which beats the file. The admin \
        credentials and regions add up instead: the file's, the environment's \
        (USAGE_PLANS_ADMIN_CREDENTIALS, USAGE_PLANS_ADMIN_REGION, comma-separated) and the flags'."
)]
pub struct Cli {
    /// TOML configuration: listeners, upstream, stage, admin credentials, plans and keys.
    #[arg(long, env = "USAGE_PLANS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data-plane listener [default: 127.0.0.1:8080].
    #[arg(long, env = "USAGE_PLANS_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Admin API listener [default: 127.0.0.1:8081].
    #[arg(long, env = "USAGE_PLANS_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Prometheus metrics listener (off unless set).
    #[arg(long, env = "USAGE_PLANS_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Where admitted requests go (`http://` or `https://`, with an
    /// optional base path put before every request's path; no query,
    /// fragment or credentials);
    /// without it a built-in echo upstream answers.
    #[arg(long, env = "USAGE_PLANS_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
    /// Trust only these PEM certificates for an `https://` upstream
    /// [default: the webpki roots].
    #[arg(long, env = "USAGE_PLANS_UPSTREAM_CA", value_name = "PEM")]
    pub upstream_ca: Option<PathBuf>,
    /// Serve the data plane over HTTPS with this PEM certificate chain
    /// (with --tls-key; SIGHUP reloads both).
    #[arg(long, env = "USAGE_PLANS_TLS_CERT", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// The data plane's PEM private key.
    #[arg(long, env = "USAGE_PLANS_TLS_KEY", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// Serve the admin API over HTTPS with this PEM certificate chain.
    #[arg(long, env = "USAGE_PLANS_ADMIN_TLS_CERT", value_name = "PEM")]
    pub admin_tls_cert: Option<PathBuf>,
    /// The admin API's PEM private key.
    #[arg(long, env = "USAGE_PLANS_ADMIN_TLS_KEY", value_name = "PEM")]
    pub admin_tls_key: Option<PathBuf>,
    /// Seconds to wait for the upstream's response head before a 504,
    /// counted from the last part of the request's body handed on (an
    /// upload that keeps coming is not cut) [default: 30].
    #[arg(long, env = "USAGE_PLANS_UPSTREAM_TIMEOUT", value_name = "SECS")]
    pub upstream_timeout: Option<f64>,
    /// Seconds a client may take to send a request's headers before its
    /// connection is closed (slow clients hold connections); 0: no limit
    /// [default: 30].
    #[arg(long, env = "USAGE_PLANS_HEADER_READ_TIMEOUT", value_name = "SECS")]
    pub header_read_timeout: Option<f64>,
    /// Seconds a request body may go without sending data before the
    /// request is answered 408 and its connection closed; 0: no limit
    /// [default: 30].
    #[arg(long, env = "USAGE_PLANS_BODY_READ_TIMEOUT", value_name = "SECS")]
    pub body_read_timeout: Option<f64>,
    /// Seconds a client's socket may take none of its answer (as nginx's
    /// send_timeout), or an HTTP/2 client take less than 16 KiB of a
    /// response, before the connection is dropped (a client that does not
    /// read holds its connection and upstream request); 0: no limit
    /// [default: 60].
    #[arg(long, env = "USAGE_PLANS_RESPONSE_WRITE_TIMEOUT", value_name = "SECS")]
    pub response_write_timeout: Option<f64>,
    /// The slowest request body waited for, in bytes per second over the
    /// time spent waiting for it, judged after 5 s of waiting (a body
    /// trickling in holds its connection); slower: 408 and the connection
    /// closed. gRPC request streams are exempt; 0: no limit [default: 240].
    #[arg(long, env = "USAGE_PLANS_BODY_MIN_RATE", value_name = "BYTES_PER_SEC")]
    pub body_min_rate: Option<u64>,
    /// Seconds in-flight requests get to finish on SIGTERM / Ctrl-C before
    /// their connections are dropped (idle ones close at once) [default: 10].
    #[arg(long, env = "USAGE_PLANS_SHUTDOWN_GRACE", value_name = "SECS")]
    pub shutdown_grace: Option<f64>,
    /// The stage this gateway serves [default: gateway:prod].
    #[arg(long, env = "USAGE_PLANS_STAGE", value_name = "API_ID:STAGE")]
    pub stage: Option<String>,
    /// SigV4 credentials for the admin API (repeatable).
    #[arg(long = "admin-credentials", value_name = "AKID:SECRET")]
    pub admin_credentials: Vec<String>,
    /// A region admin signatures may be scoped to (repeatable; also
    /// `USAGE_PLANS_ADMIN_REGION=r1,r2`); without any, every region is accepted.
    #[arg(long = "admin-region", value_name = "REGION")]
    pub admin_regions: Vec<String>,
    /// UpdateUsage also takes `add /remaining` (this gateway's extension:
    /// an atomic top-up); without it, as AWS, `replace` only.
    #[arg(long, env = "USAGE_PLANS_ADMIN_TOP_UPS")]
    pub admin_top_ups: bool,
    /// Keep plans, keys and counters across restarts.
    #[arg(long, env = "USAGE_PLANS_STATE_FILE", value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Share plans, keys and counters with other replicas via Redis
    /// (`redis://host:port`, or `redis+cluster://host:port,host:port,...`).
    #[arg(long, env = "USAGE_PLANS_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// When Redis fails: admit uncounted (open, the default) or answer 503 (closed).
    #[arg(long, env = "USAGE_PLANS_REDIS_FAILURE", value_name = "open|closed")]
    pub redis_failure: Option<String>,
    /// Lease slices of quota and tokens from Redis and spend them locally
    /// (fewer round trips, still exact).
    #[arg(long, env = "USAGE_PLANS_REDIS_LEASES")]
    pub redis_leases: bool,
    /// Shadow mode: count and send the rate-limit headers, but refuse
    /// nothing; would-be refusals are admitted uncounted, logged, and
    /// counted in `usage_plans_shadow_refusals_total{reason}`.
    #[arg(long, env = "USAGE_PLANS_SHADOW")]
    pub shadow: bool,
    /// The data plane's access log on stderr: one line per request
    /// [default: text].
    #[arg(long, env = "USAGE_PLANS_ACCESS_LOG", value_name = "off|text|json")]
    pub access_log: Option<super::AccessLogFormat>,
    /// The format of the gateway's own logs (on stdout) [default: text].
    #[arg(long, env = "USAGE_PLANS_LOG_FORMAT", value_name = "text|json")]
    pub log_format: Option<LogFormat>,
}

/// The format of the gateway's own logs (`--log-format`).
///
/// ```
/// use tower_usage_plans::gateway::LogFormat;
///
/// assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("'{other}' must be text or json")),
        }
    }
}

/// The TOML file. Field names are snake_case; plans and keys use the AWS
/// wire names (`apiStages`, `rateLimit`, ...), as in CreateUsagePlan.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    admin_listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    upstream: Option<String>,
    upstream_ca: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    admin_tls_cert: Option<PathBuf>,
    admin_tls_key: Option<PathBuf>,
    upstream_timeout_secs: Option<f64>,
    header_read_timeout_secs: Option<f64>,
    body_read_timeout_secs: Option<f64>,
    response_write_timeout_secs: Option<f64>,
    body_min_rate: Option<u64>,
    shutdown_grace_secs: Option<f64>,
    stage: Option<String>,
    state_file: Option<PathBuf>,
    redis: Option<String>,
    redis_failure: Option<String>,
    #[serde(default)]
    redis_leases: bool,
    access_log: Option<String>,
    #[serde(default)]
    shadow: bool,
    #[serde(default)]
    admin_credentials: Vec<FileCredential>,
    #[serde(default)]
    admin_regions: Vec<String>,
    #[serde(default)]
    admin_top_ups: bool,
    #[serde(default)]
    keys: Vec<NewApiKey>,
    #[serde(default)]
    plans: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCredential {
    access_key_id: String,
    secret_access_key: String,
}

/// A plan to create at start, with the names of the keys to put in it.
/// In the file: a `[[plans]]` table in CreateUsagePlan's shape plus `keys`.
///
/// ```
/// use tower_usage_plans::gateway::{FilePlan, GatewayConfig};
/// use tower_usage_plans::{NewApiKey, NewUsagePlan};
///
/// let mut config = GatewayConfig::default();
/// config.keys.push(NewApiKey::new("alice"));
/// config.plans.push(FilePlan { plan: NewUsagePlan::new("basic"), keys: vec!["alice".into()] });
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct FilePlan {
    /// The plan, in CreateUsagePlan's shape.
    pub plan: NewUsagePlan,
    /// Names of keys (from `[[keys]]`) to associate.
    pub keys: Vec<String>,
}

/// A listener's certificate chain and private key, PEM files.
///
/// ```
/// use tower_usage_plans::gateway::TlsFiles;
///
/// let files = TlsFiles { cert: "cert.pem".into(), key: "key.pem".into() };
/// # drop(files);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Both files of a pair, or neither.
fn tls_pair(
    field: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<TlsFiles>, String> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
        (None, None) => Ok(None),
        _ => Err(format!("{field}: give both the certificate and the key")),
    }
}

/// Everything the gateway needs to start, validated.
///
/// ```
/// use tower_usage_plans::gateway::{GatewayConfig, Stage};
///
/// let config = GatewayConfig { stage: Stage::new("petstore", "prod"), ..GatewayConfig::default() };
/// assert!(config.validate().is_ok());
/// assert!(config.upstream.is_none()); // no upstream: the gateway echoes
/// ```
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Data-plane listener.
    pub listen: SocketAddr,
    /// Admin API listener.
    pub admin_listen: SocketAddr,
    /// Prometheus listener, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Upstream base URL (`http(s)://host:port[/prefix]`); `None`: echo.
    pub upstream: Option<http::Uri>,
    /// The only roots trusted for an `https://` upstream (PEM); `None`:
    /// the webpki roots.
    pub upstream_ca: Option<PathBuf>,
    /// The data plane's certificate chain and key (PEM): HTTPS.
    pub tls: Option<TlsFiles>,
    /// The admin API's certificate chain and key (PEM): HTTPS.
    pub admin_tls: Option<TlsFiles>,
    /// Upstream response-head timeout.
    pub upstream_timeout: Duration,
    /// How long a client may take to send a request's headers (`None`: no
    /// limit). It also closes keep-alive connections idle that long.
    pub header_read_timeout: Option<Duration>,
    /// How long a request body may go without data before the request is
    /// answered 408 and its connection closed (`None`: no limit).
    pub body_read_timeout: Option<Duration>,
    /// How long a client's socket may take none of its answer, or an
    /// HTTP/2 client take less than 16 KiB of a response, before the
    /// connection is dropped, judged by two such periods at most (`None`:
    /// no limit).
    pub response_write_timeout: Option<Duration>,
    /// The slowest request body waited for, in bytes per second of the time
    /// spent waiting for the client, judged after 5 s of waiting: slower is
    /// answered 408 and its connection closed (`None`: no limit). gRPC
    /// request streams are exempt.
    pub body_min_rate: Option<NonZeroU64>,
    /// How long in-flight requests may take to finish on shutdown.
    pub shutdown_grace: Duration,
    /// The stage served (default: `gateway:prod`).
    pub stage: Stage,
    /// Admin API credentials.
    pub admin_credentials: AdminCredentials,
    /// The regions admin signatures may be scoped to; empty: any region.
    pub admin_regions: Vec<String>,
    /// UpdateUsage takes `add /remaining` (`--admin-top-ups`).
    pub admin_top_ups: bool,
    /// State file, if any.
    pub state_file: Option<PathBuf>,
    /// Redis URL: counters and the registry shared with other replicas.
    pub redis: Option<String>,
    /// What the data plane does when Redis fails (`--redis-failure`).
    pub redis_failure: StoreFailure,
    /// Spend leased slices of the quota locally (with `redis`).
    pub redis_leases: bool,
    /// Shadow mode: refuse nothing, mark and count would-be refusals.
    pub shadow: bool,
    /// Keys to create at start (matched by value, else by name).
    pub keys: Vec<NewApiKey>,
    /// Plans to create at start (matched by name).
    pub plans: Vec<FilePlan>,
    /// How often the state file is written.
    pub flush_interval: Duration,
    /// The data plane's access log (default: text on stderr).
    pub access_log: super::AccessLogFormat,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin_listen: ([127, 0, 0, 1], 8081).into(),
            metrics_listen: None,
            upstream: None,
            upstream_ca: None,
            tls: None,
            admin_tls: None,
            upstream_timeout: Duration::from_secs(30),
            header_read_timeout: Some(Duration::from_secs(30)),
            body_read_timeout: Some(Duration::from_secs(30)),
            response_write_timeout: Some(Duration::from_secs(60)),
            body_min_rate: NonZeroU64::new(DEFAULT_BODY_MIN_RATE),
            shutdown_grace: Duration::from_secs(10),
            stage: Stage::default(),
            admin_credentials: AdminCredentials::new(),
            admin_regions: Vec::new(),
            admin_top_ups: false,
            state_file: None,
            keys: Vec::new(),
            plans: Vec::new(),
            flush_interval: Duration::from_millis(500),
            redis: None,
            redis_failure: StoreFailure::FailOpen,
            redis_leases: false,
            shadow: false,
            access_log: super::AccessLogFormat::Text,
        }
    }
}

/// `--body-min-rate`'s default, bytes per second: a body of 1 MB may take
/// over an hour, one byte every few seconds is cut off.
const DEFAULT_BODY_MIN_RATE: u64 = 240;

/// The environment variable with extra `AKID:SECRET,...` admin credentials.
///
/// ```
/// use clap::Parser;
/// use tower_usage_plans::gateway::{Cli, GatewayConfig, CREDENTIALS_ENV};
///
/// std::env::set_var(CREDENTIALS_ENV, "AKIDEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
/// let config = GatewayConfig::from_cli(Cli::try_parse_from(["gateway"]).unwrap()).unwrap();
/// assert!(!config.admin_credentials.is_empty());
/// ```
pub const CREDENTIALS_ENV: &str = "USAGE_PLANS_ADMIN_CREDENTIALS";

/// The environment variable with extra admin regions, comma-separated.
pub(crate) const REGION_ENV: &str = "USAGE_PLANS_ADMIN_REGION";

impl GatewayConfig {
    /// Reads the file named by `--config` (if any), applies the flags and
    /// `USAGE_PLANS_ADMIN_CREDENTIALS`, and validates the result.
    ///
    /// # Errors
    /// [`GatewayError::Config`], naming the file and field that is wrong.
    ///
    /// ```
    /// # use clap::Parser;
    /// # use tower_usage_plans::gateway::{Cli, GatewayConfig, Stage};
    /// let cli = Cli::try_parse_from(["gateway", "--stage", "petstore:prod"]).unwrap();
    /// assert_eq!(GatewayConfig::from_cli(cli).unwrap().stage, Stage::new("petstore", "prod"));
    /// let cli = Cli::try_parse_from(["gateway", "--stage", ":prod"]).unwrap();
    /// assert!(GatewayConfig::from_cli(cli).is_err());
    /// ```
    pub fn from_cli(cli: Cli) -> Result<Self, GatewayError> {
        let config = Self::merge(cli).map_err(GatewayError::Config)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what a hand-built configuration could get wrong, as
    /// [`from_cli`](Self::from_cli) does for the file and flags;
    /// [`Gateway::start`](super::Gateway::start) calls it.
    ///
    /// ```
    /// use tower_usage_plans::gateway::{FilePlan, GatewayConfig};
    /// use tower_usage_plans::NewUsagePlan;
    ///
    /// let mut config = GatewayConfig::default();
    /// assert!(config.validate().is_ok());
    /// config.plans.push(FilePlan { plan: NewUsagePlan::new("basic"), keys: vec!["nobody".into()] });
    /// let error = config.validate().unwrap_err().to_string();
    /// assert!(error.contains("'nobody'"), "{error}");
    /// ```
    ///
    /// # Errors
    /// [`GatewayError::Config`] naming the field: an empty stage part, an
    /// upstream that is not `http(s)://host[:port]`, an upstream CA without
    /// an `https://` upstream, a zero timeout or flush
    /// interval, an admin region that is not a region name, both a state
    /// file and Redis, leases without Redis, two plans or two keys of one
    /// name, two keys of one value, or a plan naming a key that `keys`
    /// does not have.
    pub fn validate(&self) -> Result<(), GatewayError> {
        if let Err(why) = self.stage.check() {
            return Err(GatewayError::config(
                "stage",
                format!("'{}' must be API_ID:STAGE: {why}", self.stage),
            ));
        }
        if let Some(url) = &self.redis {
            // The value is not repeated: it may be a password put in the
            // wrong place.
            crate::store::RedisStore::check_url(url).map_err(|why| {
                GatewayError::config(
                    "redis",
                    format!(
                        "not a Redis URL (redis://[:PASSWORD@]HOST[:PORT][/DB], rediss://..., \
                         or redis+cluster://HOST:PORT,HOST:PORT,...): {why}"
                    ),
                )
            })?;
        }
        if let Some(upstream) = &self.upstream {
            check_upstream(upstream).map_err(GatewayError::Config)?;
        }
        if self.upstream_ca.is_some()
            && self.upstream.as_ref().and_then(http::Uri::scheme_str) != Some("https")
        {
            return Err(GatewayError::config(
                "upstream_ca",
                "only used with an https:// upstream",
            ));
        }
        for (field, duration) in [
            ("upstream_timeout_secs", Some(self.upstream_timeout)),
            ("header_read_timeout_secs", self.header_read_timeout),
            ("body_read_timeout_secs", self.body_read_timeout),
            ("response_write_timeout_secs", self.response_write_timeout),
            ("flush_interval", Some(self.flush_interval)),
        ] {
            if duration == Some(Duration::ZERO) {
                return Err(GatewayError::config(field, "must be more than zero"));
            }
        }
        for region in &self.admin_regions {
            check_region(region).map_err(|e| GatewayError::config("admin_regions", e))?;
        }
        if self.state_file.is_some() && self.redis.is_some() {
            return Err(GatewayError::config(
                "state_file",
                "not used with --redis (Redis keeps the state): give one or the other",
            ));
        }
        if self.redis_leases && self.redis.is_none() {
            return Err(GatewayError::config("redis_leases", "leases need --redis"));
        }
        // Plans and keys are created by name, and a key is found by its
        // value: two of one name or value would leave one out, silently.
        if let Some(name) = first_repeat(self.plans.iter().map(|p| p.plan.name.as_str())) {
            return Err(GatewayError::config(
                "plans.name",
                format!("two [[plans]] entries are named '{name}'"),
            ));
        }
        if let Some(name) = first_repeat(self.keys.iter().filter_map(|k| k.name.as_deref())) {
            return Err(GatewayError::config(
                "keys.name",
                format!("two [[keys]] entries are named '{name}'"),
            ));
        }
        if let Some(value) = first_repeat(self.keys.iter().filter_map(|k| k.value.as_deref())) {
            // Named by the keys that share it: the value is a secret.
            let names: Vec<&str> = self
                .keys
                .iter()
                .filter(|k| k.value.as_deref() == Some(value))
                .map(|k| k.name.as_deref().unwrap_or("(unnamed)"))
                .collect();
            return Err(GatewayError::config(
                "keys.value",
                format!(
                    "[[keys]] entries {} have the same value",
                    names.join(" and ")
                ),
            ));
        }
        for plan in &self.plans {
            for key in &plan.keys {
                if !self
                    .keys
                    .iter()
                    .any(|k| k.name.as_deref() == Some(key.as_str()))
                {
                    return Err(GatewayError::config(
                        "plans.keys",
                        format!(
                            "plan '{}' names key '{key}', which no [[keys]] entry has",
                            plan.plan.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The file, then the flags and the environment over it.
    fn merge(cli: Cli) -> Result<Self, String> {
        let (file, plans) = match &cli.config {
            Some(path) => read_file(path)?,
            None => (FileConfig::default(), Vec::new()),
        };
        let mut config = Self {
            redis: cli.redis.or(file.redis),
            redis_leases: cli.redis_leases || file.redis_leases,
            shadow: cli.shadow || file.shadow,
            admin_top_ups: cli.admin_top_ups || file.admin_top_ups,
            ..Self::default()
        };
        if let Some(policy) = cli.redis_failure.or(file.redis_failure) {
            config.redis_failure = match policy.as_str() {
                "open" => StoreFailure::FailOpen,
                "closed" => StoreFailure::FailClosed,
                other => return Err(format!("redis_failure: '{other}' must be open or closed")),
            };
        }
        config.listen = cli.listen.or(file.listen).unwrap_or(config.listen);
        config.admin_listen = cli
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or(config.admin_listen);
        config.metrics_listen = cli.metrics_listen.or(file.metrics_listen);
        config.upstream = match cli.upstream.or(file.upstream) {
            Some(url) => Some(parse_upstream(&url)?),
            None => None,
        };
        config.upstream_ca = cli.upstream_ca.or(file.upstream_ca);
        config.tls = tls_pair(
            "tls_cert",
            cli.tls_cert.or(file.tls_cert),
            cli.tls_key.or(file.tls_key),
        )?;
        config.admin_tls = tls_pair(
            "admin_tls_cert",
            cli.admin_tls_cert.or(file.admin_tls_cert),
            cli.admin_tls_key.or(file.admin_tls_key),
        )?;
        if let Some(secs) = cli.upstream_timeout.or(file.upstream_timeout_secs) {
            config.upstream_timeout = positive_secs("upstream_timeout_secs", secs)?;
        }
        for (name, secs, limit) in [
            (
                "header_read_timeout_secs",
                cli.header_read_timeout.or(file.header_read_timeout_secs),
                &mut config.header_read_timeout,
            ),
            (
                "body_read_timeout_secs",
                cli.body_read_timeout.or(file.body_read_timeout_secs),
                &mut config.body_read_timeout,
            ),
            (
                "response_write_timeout_secs",
                cli.response_write_timeout
                    .or(file.response_write_timeout_secs),
                &mut config.response_write_timeout,
            ),
        ] {
            match secs {
                // 0 turns the limit off.
                Some(0.0) => *limit = None,
                Some(secs) => *limit = Some(positive_secs(name, secs)?),
                None => {}
            }
        }
        if let Some(rate) = cli.body_min_rate.or(file.body_min_rate) {
            config.body_min_rate = NonZeroU64::new(rate);
        }
        if let Some(secs) = cli.shutdown_grace.or(file.shutdown_grace_secs) {
            config.shutdown_grace = match secs {
                0.0 => Duration::ZERO,
                secs => positive_secs("shutdown_grace_secs", secs)?,
            };
        }
        if let Some(stage) = cli.stage.or(file.stage) {
            config.stage = stage.parse().map_err(|e: GatewayError| e.to_string())?;
        }
        for c in file.admin_credentials {
            if c.access_key_id.is_empty() || c.secret_access_key.is_empty() {
                return Err(
                    "admin_credentials: access_key_id and secret_access_key must not be empty"
                        .into(),
                );
            }
            config
                .admin_credentials
                .insert(c.access_key_id, c.secret_access_key);
        }
        if let Ok(list) = std::env::var(CREDENTIALS_ENV) {
            if !list.trim().is_empty() {
                let parsed = AdminCredentials::parse_list(&list)
                    .map_err(|e| format!("{CREDENTIALS_ENV}: {e}"))?;
                config.admin_credentials.extend(parsed);
            }
        }
        for entry in &cli.admin_credentials {
            let parsed = AdminCredentials::parse_list(entry)
                .map_err(|e| format!("--admin-credentials: {e}"))?;
            config.admin_credentials.extend(parsed);
        }
        // Like the credentials: the file's, the environment's and the flags'.
        config.admin_regions = file.admin_regions;
        if let Ok(list) = std::env::var(REGION_ENV) {
            config.admin_regions.extend(region_list(&list)?);
        }
        config.admin_regions.extend(cli.admin_regions);
        config.admin_regions.sort();
        config.admin_regions.dedup();
        config.state_file = cli.state_file.or(file.state_file);
        if let Some(format) = cli.access_log {
            config.access_log = format;
        } else if let Some(format) = file.access_log {
            config.access_log = format.parse().map_err(|e| format!("access_log: {e}"))?;
        }
        config.keys = file.keys;
        config.plans = plans;
        Ok(config)
    }
}

/// The first item that comes again, if any.
fn first_repeat<'a>(items: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    items.into_iter().find(|item| !seen.insert(*item))
}

/// The regions of [`REGION_ENV`]: set, it names at least one (blank, it
/// would silently accept every region); an empty entry before another
/// (`r1,,r2`) is a mistake; a trailing comma is fine.
fn region_list(list: &str) -> Result<Vec<String>, String> {
    match crate::admin::comma_list(list) {
        Err(entry) => Err(format!("{REGION_ENV}: entry #{entry} of '{list}' is empty")),
        Ok(regions) if regions.is_empty() => Err(format!(
            "{REGION_ENV} is set but names no region (unset it to accept any region)"
        )),
        Ok(regions) => Ok(regions.into_iter().map(str::to_owned).collect()),
    }
}

/// A region name as AWS spells them: lower-case letters, digits and `-`
/// (`us-east-1`); what a credential scope must then match exactly.
fn check_region(region: &str) -> Result<(), String> {
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!(
            "'{region}' is not a region name (lower-case letters, digits and '-', e.g. us-east-1)"
        ));
    }
    Ok(())
}

/// A `name` setting of `secs` seconds, which must be positive.
fn positive_secs(name: &str, secs: f64) -> Result<Duration, String> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!(
            "{name}: {secs} must be a positive number of seconds"
        ));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{name}: {secs}: {e}"))
}

fn read_file(path: &Path) -> Result<(FileConfig, Vec<FilePlan>), String> {
    let at = |e: String| format!("{}: {e}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let mut file: FileConfig = strict(toml::Deserializer::new(&text), "").map_err(at)?;
    let plans = std::mem::take(&mut file.plans)
        .into_iter()
        .enumerate()
        .map(|(i, mut table)| {
            let keys = match table.remove("keys") {
                None => Vec::new(),
                Some(keys) => keys
                    .try_into()
                    .map_err(|e| at(format!("plans[{i}].keys: {e}")))?,
            };
            let plan = strict(toml::Value::Table(table), &format!("plans[{i}]."))
                .map_err(|e| at(format!("plans[{i}]: {e}")))?;
            Ok(FilePlan { plan, keys })
        })
        .collect::<Result<_, String>>()?;
    Ok((file, plans))
}

/// Deserializes `input`, refusing unknown fields anywhere: the model's
/// types accept them (AWS clients send extras), but in a config a misspelt
/// `enabeld` or `qouta` must be an error, not a key quietly disabled.
fn strict<'de, T, D>(input: D, prefix: &str) -> Result<T, String>
where
    T: serde::de::DeserializeOwned,
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    let mut unknown = None;
    let value = serde_ignored::deserialize(input, |field| {
        unknown.get_or_insert_with(|| field.to_string());
    })
    .map_err(|e| e.to_string())?;
    match unknown {
        Some(field) => Err(format!("{prefix}{field}: unknown field")),
        None => Ok(value),
    }
}

impl Cli {
    /// As [`Parser::parse`], but an invalid value taken from a
    /// `USAGE_PLANS_*` variable is named as such: clap names only the flag
    /// (`invalid value 'x' for '--listen <ADDR>'`), which a container's
    /// operator never typed. Exits as `parse` does.
    ///
    /// ```no_run
    /// let cli = tower_usage_plans::gateway::Cli::parse_naming_env();
    /// ```
    pub fn parse_naming_env() -> Self {
        match Self::try_parse() {
            Ok(cli) => cli,
            Err(error) => {
                let _ = error.print();
                if let Some(variable) = variable_behind(&error) {
                    eprintln!("(the value comes from the environment variable {variable})");
                }
                std::process::exit(error.exit_code())
            }
        }
    }
}

/// The environment variable an invalid value came from: the flag clap
/// names has one, it is set, and the command line does not give the flag.
fn variable_behind(error: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let Some(ContextValue::String(flag)) = error.get(ContextKind::InvalidArg) else {
        return None;
    };
    let long = flag.strip_prefix("--")?.split([' ', '=']).next()?;
    let command = Cli::command();
    let variable = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))?
        .get_env()?
        .to_str()?
        .to_owned();
    let on_command_line = std::env::args().any(|arg| {
        arg.strip_prefix("--")
            .is_some_and(|given| given.split('=').next() == Some(long))
    });
    (std::env::var_os(&variable).is_some() && !on_command_line).then_some(variable)
}

fn parse_upstream(url: &str) -> Result<http::Uri, String> {
    if url.contains('#') {
        // `http::Uri` drops a fragment as it parses: refused, not ignored.
        return Err(format!(
            "upstream: '{url}' has a fragment (#...), which no request would carry"
        ));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("upstream: '{url}' is not a URL: {e}"))?;
    check_upstream(&uri)?;
    Ok(uri)
}

/// An upstream is `http(s)://host[:port]`, with an optional base path that
/// every request's path goes under; a query would be dropped (each request
/// brings its own), so it is refused rather than ignored.
fn check_upstream(uri: &http::Uri) -> Result<(), String> {
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
        return Err(format!(
            "upstream: '{uri}' must be an http://host:port or https://host:port URL"
        ));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        // Not echoed: the message would print the password.
        return Err(
            "upstream: the URL has credentials (user@), which the gateway does not send: \
             give http(s)://host:port"
                .to_owned(),
        );
    }
    if uri.query().is_some() {
        return Err(format!(
            "upstream: '{uri}' has a query, which no request would carry: give \
             http(s)://host:port, with a base path if you need one"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_read_timeout(args: &[&str]) -> Result<Option<Duration>, String> {
        let cli = Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        GatewayConfig::from_cli(cli)
            .map(|c| c.header_read_timeout)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn two_plans_or_keys_of_one_name_or_two_keys_of_one_value_are_refused() {
        let key = |name: &str, value: &str| NewApiKey::new(name).with_value(value);
        let plan = |name: &str| FilePlan {
            plan: NewUsagePlan::new(name),
            keys: Vec::new(),
        };
        let validate = |keys: Vec<NewApiKey>, plans: Vec<FilePlan>| {
            GatewayConfig {
                keys,
                plans,
                ..GatewayConfig::default()
            }
            .validate()
            .map_err(|e| e.to_string())
        };
        let (a, b) = ("aaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbb");
        let message = validate(vec![], vec![plan("p"), plan("p")]).unwrap_err();
        assert!(
            message.contains("plans.name") && message.contains("'p'"),
            "{message}"
        );
        let message = validate(vec![key("k", a), key("k", b)], vec![]).unwrap_err();
        assert!(
            message.contains("keys.name") && message.contains("'k'"),
            "{message}"
        );
        let message = validate(vec![key("k1", a), key("k2", a)], vec![]).unwrap_err();
        assert!(message.contains("k1 and k2"), "{message}");
        assert!(
            !message.contains("aaaa"),
            "the value is a secret: {message}"
        );
        let fine = validate(vec![key("k1", a), key("k2", b)], vec![plan("p"), plan("q")]);
        assert_eq!(fine, Ok(()));
    }

    #[test]
    fn help_explains_the_environment_and_prints_no_code() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("USAGE_PLANS_LISTEN"), "{help}");
        assert!(
            !help.contains("```") && !help.contains("use clap"),
            "{help}"
        );
    }

    #[test]
    fn an_upstream_takes_a_base_path_but_no_query_fragment_or_credentials() {
        assert!(parse_upstream("http://127.0.0.1:9000/base").is_ok());
        assert!(parse_upstream("https://upstream.example").is_ok());
        let error = parse_upstream("http://127.0.0.1:9000/base?q=1").unwrap_err();
        assert!(error.contains("has a query"), "{error}");
        let error = parse_upstream("http://127.0.0.1:9000/base#part").unwrap_err();
        assert!(error.contains("fragment"), "{error}");
        let error = parse_upstream("http://user:secret@127.0.0.1:9000").unwrap_err();
        assert!(
            error.contains("credentials") && !error.contains("secret"),
            "{error}"
        );
        assert!(parse_upstream("ftp://127.0.0.1").is_err());
    }

    #[test]
    fn header_read_timeout_defaults_to_30_s_and_0_turns_it_off() {
        assert_eq!(header_read_timeout(&[]), Ok(Some(Duration::from_secs(30))));
        assert_eq!(
            header_read_timeout(&["--header-read-timeout", "0.3"]),
            Ok(Some(Duration::from_millis(300)))
        );
        assert_eq!(
            header_read_timeout(&["--header-read-timeout", "0"]),
            Ok(None)
        );
        let error = header_read_timeout(&["--header-read-timeout=-1"]).unwrap_err();
        assert!(error.contains("header_read_timeout_secs"), "{error}");
    }

    #[test]
    fn admin_regions_come_from_the_file_and_the_flags_and_must_be_region_names() {
        let dir = std::env::temp_dir().join(format!("admin-regions-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("gateway.toml");
        std::fs::write(&file, "admin_regions = [\"eu-west-1\"]\n").unwrap();
        let regions = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
            GatewayConfig::from_cli(cli)
                .map(|c| c.admin_regions)
                .map_err(|e| e.to_string())
        };
        // The environment may name more (USAGE_PLANS_ADMIN_REGION); none set here.
        if std::env::var(REGION_ENV).is_err() {
            assert_eq!(regions(&[]), Ok(vec![]));
            let both = regions(&[
                "--config",
                file.to_str().unwrap(),
                "--admin-region",
                "us-east-1",
                "--admin-region",
                "eu-west-1",
            ]);
            assert_eq!(both, Ok(vec!["eu-west-1".into(), "us-east-1".into()]));
        }
        for bad in ["US-EAST-1", "us east", "us-east-1/x", ""] {
            let error = regions(&["--admin-region", bad]).unwrap_err();
            assert!(error.starts_with("admin_regions"), "{bad}: {error}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    fn parsed(args: &[&str]) -> Result<GatewayConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        GatewayConfig::from_cli(cli).map_err(|e| e.to_string())
    }

    #[test]
    fn body_read_timeout_and_shutdown_grace_default_and_parse() {
        let config = parsed(&[]).unwrap();
        assert_eq!(config.body_read_timeout, Some(Duration::from_secs(30)));
        assert_eq!(config.shutdown_grace, Duration::from_secs(10));
        let config = parsed(&["--body-read-timeout", "0.5", "--shutdown-grace", "2"]).unwrap();
        assert_eq!(config.body_read_timeout, Some(Duration::from_millis(500)));
        assert_eq!(config.shutdown_grace, Duration::from_secs(2));
        let config = parsed(&["--body-read-timeout", "0", "--shutdown-grace", "0"]).unwrap();
        assert_eq!(config.body_read_timeout, None);
        assert_eq!(config.shutdown_grace, Duration::ZERO);
        let error = parsed(&["--body-read-timeout=-1"]).unwrap_err();
        assert!(error.contains("body_read_timeout_secs"), "{error}");
        let error = parsed(&["--shutdown-grace=nan"]).unwrap_err();
        assert!(error.contains("shutdown_grace_secs"), "{error}");
    }

    #[test]
    fn response_write_timeout_defaults_to_60_s_and_0_turns_it_off() {
        let limit = |args: &[&str]| parsed(args).map(|c| c.response_write_timeout);
        assert_eq!(limit(&[]), Ok(Some(Duration::from_secs(60))));
        assert_eq!(
            limit(&["--response-write-timeout", "0.25"]),
            Ok(Some(Duration::from_millis(250)))
        );
        assert_eq!(limit(&["--response-write-timeout", "0"]), Ok(None));
        let error = limit(&["--response-write-timeout=-3"]).unwrap_err();
        assert!(error.contains("response_write_timeout_secs"), "{error}");
    }

    #[test]
    fn body_min_rate_defaults_to_240_and_0_turns_it_off() {
        let rate = |args: &[&str]| parsed(args).unwrap().body_min_rate.map(NonZeroU64::get);
        assert_eq!(rate(&[]), Some(240));
        assert_eq!(rate(&["--body-min-rate", "1000"]), Some(1000));
        assert_eq!(rate(&["--body-min-rate", "0"]), None);
        assert!(parsed(&["--body-min-rate=-1"]).is_err());
        assert!(parsed(&["--body-min-rate=fast"]).is_err());
    }
}
