//! The position engine: the pure partition state machine (`machine`), its durable storage
//! (`storage`, the only module that knows sled) and the in-process runtime that runs one
//! actor per partition (`runtime`).

pub mod codec;
pub mod command;
pub mod filter;
pub mod ids;
pub mod limits;
pub mod machine;
pub mod money;
pub mod runtime;
pub mod storage;

/// Errors at the engine's boundary.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("storage error: {0}")]
    Storage(String),
    /// A file operation failed; `source` is the operating system's error, kept for
    /// callers that tell a full disk from a failing one.
    #[error("storage error: {what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("partition {partition}: corrupt record {what}: {detail}")]
    Corrupt {
        partition: u32,
        what: String,
        detail: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the hub is shutting down")]
    ShuttingDown,
    #[error("bound exceeded: {0}")]
    Overflow(String),
}
