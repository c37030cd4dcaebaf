//! The position engine: the pure partition state machine (`machine`), its durable storage
//! (`storage`, the only module that knows sled) and the in-process runtime that runs one
//! actor per partition (`runtime`).

pub mod codec;
pub mod command;
pub mod filter;
pub mod ids;
pub mod ledger;
pub mod limits;
pub mod machine;
pub mod money;
pub mod runtime;
pub mod settlement;
pub mod storage;

/// The one error type of the engine's API: every fallible call of [`runtime::Hub`] and
/// [`storage::Storage`] returns it. Callers map it to their protocol in one place (the
/// gateway: `gateway::engine_errors`). Variants say what the caller can do about it:
///
/// * [`EngineError::Overloaded`], [`EngineError::ShuttingDown`],
///   [`EngineError::PartitionStopped`]: not now; retry later (HTTP 503).
/// * [`EngineError::Refused`]: the engine decided on the request's merits (an unknown
///   transfer, a requester that is neither party, an admin change against a rule); `code`
///   is the FSPIOP error to answer with.
/// * The others: storage or configuration failures, with their sources kept.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The partition's mailbox or query lane is full: answer 503 + Retry-After.
    #[error("partition {partition} is overloaded")]
    Overloaded { partition: u32 },
    #[error("the hub is shutting down")]
    ShuttingDown,
    /// The partition stopped on an error (a corrupt record, a storage failure); an
    /// operator must look at it. The other partitions keep working.
    #[error("partition {partition} is stopped: {reason}")]
    PartitionStopped { partition: u32, reason: String },
    /// Refused on its merits, with the FSPIOP error code to answer.
    #[error("{}: {message}", code.description())]
    Refused {
        code: command::ErrorCode,
        message: String,
    },
    /// The store refuses to go on (after a failed write or sync) or a stored record is
    /// out of its bounds; the text says which.
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
    /// The embedded database or the codec failed; `source` is its error.
    #[error("storage error: {source}")]
    Store {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("partition {partition}: corrupt record {what}: {detail}")]
    Corrupt {
        partition: u32,
        what: String,
        detail: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An operator request names something that does not exist (a settlement window, a
    /// settlement); the text says what.
    #[error("{0}")]
    NotFound(String),
    #[error("bound exceeded: {0}")]
    Overflow(String),
}

impl EngineError {
    /// A refusal with its FSPIOP code.
    pub fn refused(code: command::ErrorCode, message: impl Into<String>) -> EngineError {
        EngineError::Refused {
            code,
            message: message.into(),
        }
    }

    /// Whether the caller should try again later (the request was not decided).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EngineError::Overloaded { .. }
                | EngineError::ShuttingDown
                | EngineError::PartitionStopped { .. }
        )
    }
}
