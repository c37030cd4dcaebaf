//! `--embedded`: a hub started in this process on ephemeral ports and a temporary data
//! directory.
//!
//! The hub is the gateway crate's embedded entry point (gateway, notifier and an engine
//! owning all partitions in one process). Until that entry point exists this reports that
//! it is missing, and loadgen targets a running hub through `--hub-fspiop`/`--hub-admin`.

use std::path::PathBuf;

/// A running embedded hub: where its APIs listen.
pub struct EmbeddedHub {
    pub fspiop: String,
    pub admin: String,
    _data_dir: Option<tempfile::TempDir>,
}

impl EmbeddedHub {
    /// Starts the hub; `data_dir` defaults to a fresh temporary directory removed at stop.
    pub async fn start(data_dir: Option<PathBuf>) -> anyhow::Result<Self> {
        let _ = data_dir;
        anyhow::bail!(
            "--embedded needs the gateway crate's in-process hub, which this build does not have yet; \
             start the hub yourself and pass --hub-fspiop URL --hub-admin URL"
        )
    }

    pub async fn stop(self) {}
}
