//! The one place where an engine error becomes an HTTP answer.
//!
//! The engine returns a single error type, [`EngineError`]; its variants say what a
//! caller can do, and that decides the answer:
//!
//! * not now (a full mailbox, a stopped partition, a hub shutting down, a store that
//!   refuses writes after a failed sync): 503 with FSPIOP error 2003 and, added by
//!   `transfers::error_response`, a `Retry-After` header. Nothing was decided, so the
//!   DFSP may resend the same request;
//! * refused on its merits: the FSPIOP code the engine chose, with 404 for an unknown
//!   transfer and 400 otherwise;
//! * a configuration error: 500 with 2001 (it is the hub's fault, not the caller's).
//!
//! The texts name no account, transfer or participant beyond what the caller sent, so an
//! error never tells one DFSP about another's business.

use crate::fspiop::ApiError;
use engine::command::ErrorCode;
use engine::EngineError;

/// The HTTP answer to an engine error.
pub fn api_error(error: &EngineError) -> ApiError {
    match error {
        EngineError::Overloaded { .. } => unavailable("hub overloaded, retry"),
        EngineError::ShuttingDown => unavailable("hub shutting down"),
        EngineError::PartitionStopped { .. } => unavailable("partition stopped"),
        EngineError::Refused { code, message } => refused(*code, message),
        // FSPIOP's generic "ID not found".
        EngineError::NotFound(what) => ApiError::new(404, 3200, what.clone()),
        EngineError::Storage(_)
        | EngineError::Io { .. }
        | EngineError::Store { .. }
        | EngineError::Corrupt { .. }
        | EngineError::Overflow(_) => unavailable("storage unavailable"),
        EngineError::Config(_) => ApiError::new(
            500,
            ErrorCode::Internal.code(),
            "Internal server error - hub configuration",
        ),
    }
}

/// [`api_error`] for `map_err` on an owned error.
pub fn from_engine(error: EngineError) -> ApiError {
    api_error(&error)
}

fn unavailable(why: &str) -> ApiError {
    ApiError::new(
        503,
        ErrorCode::ServiceUnavailable.code(),
        format!("Service currently unavailable - {why}"),
    )
}

fn refused(code: ErrorCode, message: &str) -> ApiError {
    let status = match code {
        ErrorCode::ServiceUnavailable => 503,
        ErrorCode::TransferNotFound => 404,
        ErrorCode::Internal => 500,
        _ => 400,
    };
    ApiError::new(
        status,
        code.code(),
        format!("{} - {message}", code.description()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_now_is_503_and_a_refusal_keeps_its_code() {
        let cases = [
            (EngineError::Overloaded { partition: 3 }, 503, 2003),
            (EngineError::ShuttingDown, 503, 2003),
            (
                EngineError::PartitionStopped {
                    partition: 1,
                    reason: "corrupt snapshot".into(),
                },
                503,
                2003,
            ),
            (EngineError::Storage("WAL stopped".into()), 503, 2003),
            (
                EngineError::refused(ErrorCode::TransferNotFound, "transfer x"),
                404,
                3208,
            ),
            (
                EngineError::refused(ErrorCode::Validation, "limit already set"),
                400,
                3100,
            ),
            (EngineError::Config("bad".into()), 500, 2001),
            (
                EngineError::NotFound("settlement window 9 not found".into()),
                404,
                3200,
            ),
        ];
        for (error, status, code) in cases {
            let api = api_error(&error);
            assert_eq!((api.status, api.code), (status, code), "{error}");
        }
    }

    #[test]
    fn a_stopped_partition_does_not_tell_its_reason() {
        let api = api_error(&EngineError::PartitionStopped {
            partition: 1,
            reason: "transfer 42 of dfsp7 broke the ledger".into(),
        });
        assert!(!api.body().to_string().contains("dfsp7"));
    }
}
