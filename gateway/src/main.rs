//! `gateway`: the embedded hub in one process (gateway + notifier + engine).

use clap::Parser;
use gateway::{Config, EmbeddedHub};
use std::path::PathBuf;

/// mimalloc instead of glibc malloc: in a profile of the hub at its HTTP ceiling, glibc's
/// malloc and free took about 10 % of the process's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "Position-engine hub: FSPIOP v1.1 transfers API and admin API")]
struct Args {
    /// Address of the FSPIOP (DFSP-facing) listener.
    #[arg(long, env = "HUB_FSPIOP_LISTEN", default_value = "127.0.0.1:3000")]
    fspiop_listen: String,
    /// Address of the admin and operator listener.
    #[arg(long, env = "HUB_ADMIN_LISTEN", default_value = "127.0.0.1:3001")]
    admin_listen: String,
    /// Where the engine keeps its data.
    #[arg(long, env = "HUB_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Partitions (fixed when the data directory is created).
    #[arg(long, env = "HUB_PARTITIONS", default_value_t = 2)]
    partitions: u32,
    /// FSPIOP-Source of messages the hub makes itself.
    #[arg(long, env = "HUB_NAME", default_value = "Hub")]
    hub_name: String,
    /// PEM certificate (chain) of the FSPIOP listener: it then speaks TLS only.
    #[arg(long, env = "HUB_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "HUB_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA bundle DFSP client certificates must chain to: every DFSP then presents a
    /// certificate, and its subject CN is the participant its FSPIOP-Source must name.
    #[arg(long, env = "HUB_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Address or network (CIDR) of a TLS-terminating proxy whose
    /// x-forwarded-client-cert names the DFSP; repeat it, or separate with commas.
    #[arg(long, env = "HUB_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxy: Vec<gateway::identity::Network>,
    /// PEM CA bundle that DFSPs' https:// callback servers must chain to (default: the
    /// operating system's trust store).
    #[arg(long, env = "HUB_CALLBACK_CA")]
    callback_ca: Option<PathBuf>,
    /// PEM certificate (chain) the hub presents to DFSP callback servers that ask for one.
    #[arg(long, env = "HUB_CALLBACK_CERT", requires = "callback_key")]
    callback_cert: Option<PathBuf>,
    /// PEM private key of `--callback-cert`.
    #[arg(long, env = "HUB_CALLBACK_KEY", requires = "callback_cert")]
    callback_key: Option<PathBuf>,
    /// File of admin bearer tokens, one `NAME TOKEN` a line (the name is who, in the
    /// audit); it must be readable by its owner only.
    #[arg(long, env = "HUB_ADMIN_TOKENS")]
    admin_tokens: Option<PathBuf>,
    /// PEM certificate (chain) of the admin listener: it then speaks TLS only.
    #[arg(long, env = "HUB_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// PEM private key of `--admin-tls-cert`.
    #[arg(long, env = "HUB_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// PEM CA bundle operators' client certificates must chain to (their subject CN is
    /// who, in the audit).
    #[arg(long, env = "HUB_ADMIN_CLIENT_CA", requires = "admin_tls_cert")]
    admin_client_ca: Option<PathBuf>,
    /// Host name the admin API answers to (the Host header, port optional); repeat it, or
    /// separate with commas. Default: localhost, 127.0.0.1 and [::1] when the admin
    /// listener is on loopback, any host otherwise.
    #[arg(long, env = "HUB_ADMIN_ALLOWED_HOSTS", value_delimiter = ',')]
    admin_allowed_host: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let config = Config {
            fspiop_listen: args.fspiop_listen,
            admin_listen: args.admin_listen,
            data_dir: args.data_dir,
            partitions: args.partitions,
            hub_name: args.hub_name,
            fspiop_tls: args.tls_cert.zip(args.tls_key).map(|(cert, key)| {
                gateway::tls::ServerTls {
                    cert,
                    key,
                    client_ca: args.client_ca,
                }
            }),
            trusted_proxies: args.trusted_proxy,
            callback_tls: gateway::tls::CallbackTls {
                ca: args.callback_ca,
                cert: args.callback_cert,
                key: args.callback_key,
            },
            admin_tls: args
                .admin_tls_cert
                .zip(args.admin_tls_key)
                .map(|(cert, key)| gateway::tls::ServerTls {
                    cert,
                    key,
                    client_ca: args.admin_client_ca,
                }),
            admin_tokens: args.admin_tokens,
            admin_allowed_hosts: args.admin_allowed_host,
            ..Config::default()
        };
        let hub = EmbeddedHub::start(config).await?;
        // Machine-readable, for scripts and tests that start the hub on port 0.
        let scheme = if hub.fspiop_tls { "https" } else { "http" };
        println!("fspiop listening on {scheme}://{}", hub.fspiop_addr);
        let scheme = if hub.admin_tls { "https" } else { "http" };
        println!("admin listening on {scheme}://{}", hub.admin_addr);
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!("stopping: draining requests, flushing the engine");
        hub.stop().await?;
        anyhow::Ok(())
    })
}
