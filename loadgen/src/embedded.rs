//! `--embedded`: a hub started in this process on ephemeral ports (127.0.0.1) and a
//! temporary data directory: gateway, notifier and an engine owning all partitions.
//!
//! The hub gets a tokio runtime of its own, as it has in its own process (the `gateway`
//! binary), rather than sharing the load generator's: in one shared runtime the hub's
//! tasks (engine actors, notifier) queue behind hundreds of simulator and client tasks.

use anyhow::Context;
use std::path::PathBuf;

/// A running embedded hub: where its APIs listen.
pub struct EmbeddedHub {
    pub fspiop: String,
    pub admin: String,
    /// Both are `Some` until `stop` (or drop) takes them.
    hub: Option<gateway::EmbeddedHub>,
    runtime: Option<tokio::runtime::Runtime>,
    _data_dir: Option<tempfile::TempDir>,
}

impl EmbeddedHub {
    /// Starts the hub on its own runtime of `worker_threads` threads; `data_dir` defaults
    /// to a fresh temporary directory removed at stop.
    pub async fn start(data_dir: Option<PathBuf>, worker_threads: usize) -> anyhow::Result<Self> {
        let (dir, temp) = match data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir().context("temporary data directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let config = gateway::Config {
            fspiop_listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            data_dir: dir,
            ..gateway::Config::default()
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads.max(1))
            .thread_name("hub-worker")
            .enable_all()
            .build()
            .context("the embedded hub's runtime")?;
        let hub = runtime
            .spawn(gateway::EmbeddedHub::start(config))
            .await
            .context("the embedded hub's start task")?
            .context("starting the embedded hub")?;
        Ok(EmbeddedHub {
            fspiop: format!("http://{}", hub.fspiop_addr),
            admin: format!("http://{}", hub.admin_addr),
            hub: Some(hub),
            runtime: Some(runtime),
            _data_dir: temp,
        })
    }

    /// Drains and stops the hub on its runtime, then ends the runtime and removes a
    /// temporary data directory.
    /// Stops the hub; `Err` when its engine could not flush everything at the end.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let (Some(hub), Some(runtime)) = (self.hub.take(), self.runtime.as_ref()) {
            match runtime.spawn(hub.stop()).await {
                Ok(stopped) => stopped?,
                // A stop that panicked has nothing left to drain; the runtime ends either way.
                Err(e) => anyhow::bail!("the embedded hub's stop panicked: {e}"),
            }
        }
        Ok(())
    }
}

impl Drop for EmbeddedHub {
    /// Ends the hub's runtime without blocking (a runtime may not be dropped inside
    /// another's async context): tasks still there, such as idle keep-alive connections
    /// or a hub that was never stopped because the run failed, are dropped.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
