//! The hub's HTTP side: the FSPIOP transfers API (`transfers`), the admin and operator API
//! (`admin`), the settlement API (`settlement`), the notifier that sends callbacks (`notifier`), and the embedded hub that
//! runs all of it with an engine owning every partition in one process.
//!
//! Only this crate knows HTTP and JSON.

pub mod activation;
pub mod admin;
pub mod alarm;
pub mod auth;
pub mod client;
pub mod engine_errors;
pub mod fspiop;
pub mod identity;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod notifier;
pub mod openapi;
pub mod registry;
pub mod settlement;
pub mod tls;
pub mod transfers;

use engine::runtime::{Hub, HubConfig};
use limits::{
    HTTP_CONNECTIONS_PER_WORKER_MAX, HTTP_KEEP_ALIVE_S, HTTP_LISTEN_BACKLOG, HTTP_WORKERS,
    RATE_SAMPLE_INTERVAL_MS, REQUEST_BODY_BYTES_MAX, SHUTDOWN_CALLBACK_GRACE_MS,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Errors starting or running the hub.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("engine: {0}")]
    Engine(#[from] engine::EngineError),
    #[error("registry: {0}")]
    Registry(#[from] registry::RegistryError),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("admin credentials: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// Shared by every handler.
pub struct AppState {
    pub hub: Hub,
    pub registry: Arc<registry::Registry>,
    pub metrics: Arc<metrics::Metrics>,
    pub notifier: Arc<notifier::Notifier>,
    /// The hub's own participant name (`FSPIOP-Source` of the messages it makes).
    pub hub_name: String,
    /// Admin changes to the registry are read-modify-write of one participant record;
    /// this lock makes them one at a time (two concurrent `POST /participants` would
    /// otherwise both take the same sequence number, or lose one of two currencies).
    pub admin_lock: tokio::sync::Mutex<()>,
    /// Commands applied per second, per partition, refreshed by a sampler.
    pub rates: Mutex<Vec<f64>>,
    /// Net Debit Cap threshold crossings (`alarm`).
    pub alarms: alarm::Alarms,
}

/// Configuration of the embedded hub.
#[derive(Debug, Clone)]
pub struct Config {
    pub fspiop_listen: String,
    pub admin_listen: String,
    pub data_dir: PathBuf,
    pub partitions: u32,
    pub hub_name: String,
    pub limits: engine::limits::Limits,
    /// TLS on the FSPIOP listener (`None`: plain HTTP); its client CA makes DFSPs
    /// authenticate with certificates (see `identity`).
    pub fspiop_tls: Option<tls::ServerTls>,
    /// Proxies whose `x-forwarded-client-cert` names the DFSP (see `identity`).
    pub trusted_proxies: Vec<identity::Network>,
    /// How `https://` callbacks are made (CA, the hub's client certificate).
    pub callback_tls: tls::CallbackTls,
    /// TLS on the admin listener (`None`: plain HTTP); its client CA makes operators
    /// authenticate with certificates (see `auth`).
    pub admin_tls: Option<tls::ServerTls>,
    /// The admin bearer tokens file (`NAME TOKEN` lines, mode 600).
    pub admin_tokens: Option<PathBuf>,
    /// `Host` names the admin API answers to (empty: see `auth` for the default).
    pub admin_allowed_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            fspiop_listen: "127.0.0.1:3000".into(),
            admin_listen: "127.0.0.1:3001".into(),
            data_dir: PathBuf::from("./data"),
            partitions: 2,
            hub_name: "Hub".into(),
            limits: engine::limits::Limits::default(),
            fspiop_tls: None,
            trusted_proxies: Vec::new(),
            callback_tls: tls::CallbackTls::default(),
            admin_tls: None,
            admin_tokens: None,
            admin_allowed_hosts: Vec::new(),
        }
    }
}

/// A running embedded hub: gateway, notifier and engine in this process.
pub struct EmbeddedHub {
    pub fspiop_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// Whether the FSPIOP listener speaks TLS (`https://`).
    pub fspiop_tls: bool,
    /// Whether the admin listener speaks TLS (`https://`).
    pub admin_tls: bool,
    hub: Hub,
    notifier: Arc<notifier::Notifier>,
    notifier_task: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
    alarm_watcher: tokio::task::JoinHandle<()>,
    fspiop: actix_web::dev::ServerHandle,
    admin: actix_web::dev::ServerHandle,
    servers: tokio::task::JoinHandle<()>,
}

impl EmbeddedHub {
    /// Opens (or recovers) the engine and starts both listeners. Call inside a tokio
    /// multi-thread runtime.
    pub async fn start(config: Config) -> Result<EmbeddedHub, GatewayError> {
        limits::check_engine_limits(&config.limits)
            .map_err(|e| GatewayError::Engine(engine::EngineError::Config(e)))?;
        if config.trusted_proxies.len() > identity::TRUSTED_PROXIES_MAX {
            return Err(GatewayError::Tls(tls::TlsError::Config(format!(
                "more than {} trusted proxies",
                identity::TRUSTED_PROXIES_MAX
            ))));
        }
        // Read before the engine opens: a bad certificate file stops the start at once.
        let fspiop_tls = config
            .fspiop_tls
            .as_ref()
            .map(tls::server_config)
            .transpose()?;
        let dfsp_trust = Arc::new(identity::DfspTrust {
            client_certificates: config
                .fspiop_tls
                .as_ref()
                .is_some_and(|t| t.client_ca.is_some()),
            trusted_proxies: config.trusted_proxies.clone(),
        });
        warn_if_unauthenticated(&dfsp_trust);
        let callback_tls = Arc::new(tls::client_config(&config.callback_tls)?);
        let admin_tls = config
            .admin_tls
            .as_ref()
            .map(tls::server_config)
            .transpose()?;
        let admin_guard = Arc::new(admin_guard(&config)?);
        let (hub, events) = Hub::open(HubConfig {
            data_dir: config.data_dir.clone(),
            partitions: config.partitions,
            limits: config.limits.clone(),
        })?;
        let registry = Arc::new(registry::Registry::load(&hub)?);
        let metrics = Arc::new(metrics::Metrics::default());
        let notifier = notifier::Notifier::with_tls(
            registry.clone(),
            metrics.clone(),
            config.hub_name.clone(),
            Some(callback_tls),
        );
        let notifier_task = tokio::spawn(notifier.clone().run(events));
        let state = actix_web::web::Data::new(AppState {
            hub: hub.clone(),
            registry,
            metrics,
            notifier: notifier.clone(),
            hub_name: config.hub_name.clone(),
            admin_lock: tokio::sync::Mutex::new(()),
            rates: Mutex::new(Vec::new()),
            alarms: alarm::Alarms::default(),
        });
        let sampler = tokio::spawn(sample_rates(state.clone()));
        let alarm_watcher = tokio::spawn(alarm::watch(state.clone()));

        let fspiop_state = state.clone();
        let fspiop = actix_web::HttpServer::new(move || {
            let trust = dfsp_trust.clone();
            actix_web::App::new()
                .wrap(fspiop_error_bodies())
                .wrap(actix_web::middleware::from_fn(move |req, next| {
                    identity::require_source(trust.clone(), req, next)
                }))
                .app_data(fspiop_state.clone())
                .app_data(actix_web::web::PayloadConfig::new(REQUEST_BODY_BYTES_MAX))
                .configure(transfers::routes)
                .default_service(actix_web::web::to(not_found))
        })
        .workers(HTTP_WORKERS)
        .max_connections(HTTP_CONNECTIONS_PER_WORKER_MAX)
        .keep_alive(std::time::Duration::from_secs(HTTP_KEEP_ALIVE_S))
        .backlog(HTTP_LISTEN_BACKLOG)
        .disable_signals()
        .on_connect(tls::record_peer_certificate);
        let fspiop = match fspiop_tls {
            Some(tls) => fspiop.bind_rustls_0_23(&config.fspiop_listen, tls),
            None => fspiop.bind(&config.fspiop_listen),
        }
        .map_err(|source| GatewayError::Listen {
            addr: config.fspiop_listen.clone(),
            source,
        })?;
        let admin_state = state.clone();
        let admin = actix_web::HttpServer::new(move || {
            let guard = admin_guard.clone();
            actix_web::App::new()
                .wrap(fspiop_error_bodies())
                .wrap(actix_web::middleware::from_fn(move |req, next| {
                    auth::guard_admin(guard.clone(), req, next)
                }))
                .app_data(admin_state.clone())
                .app_data(actix_web::web::PayloadConfig::new(REQUEST_BODY_BYTES_MAX))
                .configure(settlement::routes)
                .configure(admin::routes)
                .default_service(actix_web::web::to(not_found))
        })
        .workers(1)
        .disable_signals()
        .on_connect(tls::record_peer_certificate);
        let admin = match admin_tls {
            Some(tls) => admin.bind_rustls_0_23(&config.admin_listen, tls),
            None => admin.bind(&config.admin_listen),
        }
        .map_err(|source| GatewayError::Listen {
            addr: config.admin_listen.clone(),
            source,
        })?;
        let fspiop_addr = first_addr(fspiop.addrs(), &config.fspiop_listen)?;
        let admin_addr = first_addr(admin.addrs(), &config.admin_listen)?;
        let fspiop = fspiop.run();
        let admin = admin.run();
        let handles = (fspiop.handle(), admin.handle());
        let servers = tokio::spawn(async move {
            let _ = tokio::join!(fspiop, admin);
        });
        Ok(EmbeddedHub {
            fspiop_addr,
            admin_addr,
            fspiop_tls: config.fspiop_tls.is_some(),
            admin_tls: config.admin_tls.is_some(),
            hub,
            notifier,
            notifier_task,
            sampler,
            alarm_watcher,
            fspiop: handles.0,
            admin: handles.1,
            servers,
        })
    }

    /// Stops taking requests (in-flight ones finish), drains and closes the engine, then
    /// gives the notifier up to `SHUTDOWN_CALLBACK_GRACE_MS` to send the callbacks of the
    /// last events and finish those in flight. `Err` when the engine's last flush failed
    /// (then not everything acknowledged may be on disk: the process must not exit 0).
    pub async fn stop(self) -> Result<(), GatewayError> {
        self.fspiop.stop(true).await;
        self.admin.stop(true).await;
        let _ = self.servers.await;
        self.sampler.abort();
        self.alarm_watcher.abort();
        let engine = self.hub.shutdown().await;
        // The engine's actors have ended, so the event stream ends once the notifier has
        // read it to the last event.
        let grace = Duration::from_millis(SHUTDOWN_CALLBACK_GRACE_MS);
        let started = std::time::Instant::now();
        if tokio::time::timeout(grace, self.notifier_task)
            .await
            .is_err()
        {
            tracing::warn!("notifier did not finish the event stream in time");
        }
        if !self
            .notifier
            .drain(grace.saturating_sub(started.elapsed()))
            .await
        {
            tracing::warn!(
                in_flight = self.notifier.in_flight(),
                "callbacks still in flight at exit"
            );
        }
        engine.map_err(GatewayError::Engine)
    }
}

/// Refreshes `AppState::rates` (commands applied per second, per partition) every
/// `RATE_SAMPLE_INTERVAL_MS`, from the partitions' applied-command counters.
async fn sample_rates(state: actix_web::web::Data<AppState>) {
    let interval = Duration::from_millis(RATE_SAMPLE_INTERVAL_MS);
    let mut last: Vec<u64> = Vec::new();
    let mut last_at = std::time::Instant::now();
    loop {
        let applied: Vec<u64> = state
            .hub
            .partitions()
            .iter()
            .map(|p| p.applied_commands)
            .collect();
        let now = std::time::Instant::now();
        let seconds = now.duration_since(last_at).as_secs_f64();
        if last.len() == applied.len() && seconds > 0.0 {
            let rates = applied
                .iter()
                .zip(&last)
                .map(|(now, before)| now.saturating_sub(*before) as f64 / seconds)
                .collect();
            *state.rates.lock().unwrap_or_else(|p| p.into_inner()) = rates;
        }
        last = applied;
        last_at = now;
        tokio::time::sleep(interval).await;
    }
}

/// Says, loudly, that the FSPIOP listener takes every `FSPIOP-Source` as sent.
fn warn_if_unauthenticated(trust: &identity::DfspTrust) {
    if !trust.authenticates() {
        tracing::warn!(
            "DFSPs ARE NOT AUTHENTICATED: the FSPIOP listener trusts FSPIOP-Source as sent, so \
             anyone who reaches it can act as any DFSP. Give --tls-cert, --tls-key and \
             --client-ca (client certificates), or --trusted-proxy (a TLS-terminating proxy \
             that sets x-forwarded-client-cert)."
        );
    }
}

/// The admin listener's checks from the configuration (see `auth`), saying loudly when
/// the admin API asks for no credential.
fn admin_guard(config: &Config) -> Result<auth::AdminGuard, GatewayError> {
    let tokens = config
        .admin_tokens
        .as_deref()
        .map(auth::AdminTokens::load)
        .transpose()?;
    let loopback = match config.admin_listen.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => config.admin_listen.starts_with("localhost:"),
    };
    if config.admin_allowed_hosts.len() > auth::ADMIN_ALLOWED_HOSTS_MAX {
        return Err(GatewayError::Auth(auth::AuthError::Config(format!(
            "more than {} allowed admin hosts",
            auth::ADMIN_ALLOWED_HOSTS_MAX
        ))));
    }
    let allowed_hosts = if !config.admin_allowed_hosts.is_empty() {
        Some(
            config
                .admin_allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .collect(),
        )
    } else if loopback {
        Some(auth::LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect())
    } else {
        tracing::warn!(
            listen = %config.admin_listen,
            "the admin listener checks no Host header: give --admin-allowed-host"
        );
        None
    };
    let guard = auth::AdminGuard {
        tokens,
        client_certificates: config
            .admin_tls
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some()),
        allowed_hosts,
    };
    if !guard.authenticates() {
        tracing::warn!(
            listen = %config.admin_listen,
            loopback,
            "THE ADMIN API ASKS FOR NO CREDENTIAL: whoever reaches it can record funds, change \
             limits and redirect callbacks. Give --admin-tokens, or --admin-tls-cert, \
             --admin-tls-key and --admin-client-ca."
        );
    }
    Ok(guard)
}

fn first_addr(addrs: Vec<SocketAddr>, wanted: &str) -> Result<SocketAddr, GatewayError> {
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| GatewayError::Listen {
            addr: wanted.to_string(),
            source: std::io::Error::other("no address bound"),
        })
}

/// Errors actix-web answers by itself (unknown path or method, an unparsable path
/// segment, a body over the limit) get an FSPIOP `errorInformation` body too; responses
/// that already carry JSON are left alone.
fn fspiop_error_bodies<B: 'static>() -> actix_web::middleware::ErrorHandlers<B> {
    use actix_web::http::StatusCode;
    actix_web::middleware::ErrorHandlers::new()
        .handler(StatusCode::NOT_FOUND, |res| {
            replace_error(res, 3002, "Unknown URI")
        })
        .handler(StatusCode::METHOD_NOT_ALLOWED, |res| {
            replace_error(res, 3000, "Generic client error - method not allowed")
        })
        .handler(StatusCode::PAYLOAD_TOO_LARGE, |res| {
            replace_error(res, 3104, "Too large payload")
        })
        .handler(StatusCode::BAD_REQUEST, |res| {
            replace_error(res, 3100, "Generic validation error")
        })
}

fn replace_error<B>(
    res: actix_web::dev::ServiceResponse<B>,
    code: u16,
    description: &str,
) -> actix_web::Result<actix_web::middleware::ErrorHandlerResponse<B>> {
    use actix_web::middleware::ErrorHandlerResponse;
    let is_json = res
        .response()
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (request, _) = res.into_parts();
    let response = actix_web::HttpResponse::build(status)
        .content_type("application/json")
        .body(fspiop::error_body(code, description).to_string());
    Ok(ErrorHandlerResponse::Response(
        actix_web::dev::ServiceResponse::new(request, response).map_into_right_body(),
    ))
}

async fn not_found() -> actix_web::HttpResponse {
    transfers::error_response(&fspiop::ApiError::new(404, 3002, "Unknown URI"))
}
