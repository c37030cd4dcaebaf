//! `--embedded`: a hub started in this process on ephemeral ports (127.0.0.1) and a
//! temporary data directory: gateway, notifier and an engine owning all partitions.

use anyhow::Context;
use std::path::PathBuf;

/// A running embedded hub: where its APIs listen.
pub struct EmbeddedHub {
    pub fspiop: String,
    pub admin: String,
    hub: gateway::EmbeddedHub,
    _data_dir: Option<tempfile::TempDir>,
}

impl EmbeddedHub {
    /// Starts the hub; `data_dir` defaults to a fresh temporary directory removed at stop.
    pub async fn start(data_dir: Option<PathBuf>) -> anyhow::Result<Self> {
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
        let hub = gateway::EmbeddedHub::start(config)
            .await
            .context("starting the embedded hub")?;
        Ok(EmbeddedHub {
            fspiop: format!("http://{}", hub.fspiop_addr),
            admin: format!("http://{}", hub.admin_addr),
            hub,
            _data_dir: temp,
        })
    }

    /// Drains and stops the hub, then removes a temporary data directory.
    pub async fn stop(self) {
        self.hub.stop().await;
    }
}
