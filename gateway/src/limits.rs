//! Every bound of the gateway and notifier, in one place; units last in the names.

/// Largest request body accepted on either listener.
pub const REQUEST_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest `ilpPacket` (base64url characters).
pub const ILP_PACKET_CHARS_MAX: usize = 32_768;
/// A prepare's expiration may lie at most this far ahead of the hub's clock; one further
/// out is refused (3100). Without a bound, an expiration in year 9999 locks the payer's
/// liquidity for good. It must stay below the engine's retention of finished transfers
/// (`engine::limits::Limits::retention_ms`): a DFSP may resend a prepare until it
/// expires, and the resend is recognised as a duplicate only while the first is retained.
pub const PREPARE_EXPIRATION_MS_MAX: i64 = 12 * 3_600 * 1_000;
/// The engine's default retention (`Limits::default().retention_ms`, pinned by a test), for
/// the compile-time check below; a hub started with other limits is checked by
/// [`check_engine_limits`].
pub const ENGINE_RETENTION_MS_DEFAULT: i64 = 24 * 3_600 * 1_000;
const _: () = assert!(
    PREPARE_EXPIRATION_MS_MAX < ENGINE_RETENTION_MS_DEFAULT,
    "a prepare must expire before the engine forgets finished transfers"
);

/// Refuses engine limits the gateway's bounds do not fit (to be called at startup).
pub fn check_engine_limits(limits: &engine::limits::Limits) -> Result<(), String> {
    if PREPARE_EXPIRATION_MS_MAX >= limits.retention_ms {
        return Err(format!(
            "retention_ms {} must exceed PREPARE_EXPIRATION_MS_MAX {PREPARE_EXPIRATION_MS_MAX}",
            limits.retention_ms
        ));
    }
    Ok(())
}

/// What a 503 tells a client to wait before retrying.
pub const RETRY_AFTER_S: u32 = 1;
/// Callbacks in flight at once, over all DFSPs (from the first attempt to delivery or
/// giving up, backoff sleeps included). The notifier's run loop waits for one of these
/// (back-pressure: the events wait in the engine's outbox), so no small group of failing
/// DFSPs may be able to hold them all: see [`CALLBACK_DFSPS_FAILING_TOLERATED`].
pub const CALLBACKS_IN_FLIGHT_MAX: usize = 4_096;
/// Callbacks in flight at once to one DFSP, a quarter of [`CALLBACKS_IN_FLIGHT_MAX`]. A
/// callback over it is given up at once. Healthy but busy DFSPs need room here: a payer
/// sending 70 % of 11,000 transfers/s had bursts of more than 256 callbacks in flight, and
/// with a bound of 256 lost 1 to 64 of its final callbacks per 15 s run.
pub const CALLBACKS_PER_DFSP_MAX: usize = 1_024;
/// DFSPs that may each hold their whole share at once (down, before they are marked down)
/// while the run loop still finds a free slot for everybody else.
pub const CALLBACK_DFSPS_FAILING_TOLERATED: usize = 3;
const _: () = assert!(
    CALLBACKS_PER_DFSP_MAX * CALLBACK_DFSPS_FAILING_TOLERATED < CALLBACKS_IN_FLIGHT_MAX,
    "failing DFSPs at their full share must leave slots to the others"
);
/// Attempts in a row to one DFSP that failed without an HTTP answer (connection refused
/// or reset, timeout), with no answer in between, after which the DFSP is marked down:
/// its callbacks in flight are given up (their slots come free at once) and its new ones
/// are given up without an attempt for [`CALLBACK_DOWN_COOL_OFF_MS`].
pub const CALLBACK_DOWN_AFTER_FAILURES: u32 = 8;
/// How long a DFSP marked down has its callbacks given up at once. After it, one callback
/// at a time is sent as a probe (the others still given up): an HTTP answer marks the
/// DFSP up again, another failure starts a new cool-off.
pub const CALLBACK_DOWN_COOL_OFF_MS: u64 = 2_000;
/// Callbacks given up at once to one DFSP are logged (a warning with their count) at most
/// this often, so that a dead DFSP cannot flood the log.
pub const CALLBACK_SHED_LOG_INTERVAL_MS: u64 = 1_000;
/// Attempts per callback (first try included).
pub const CALLBACK_ATTEMPTS_MAX: u32 = 4;
/// Backoff before the second attempt; doubles each time up to the cap.
pub const CALLBACK_BACKOFF_START_MS: u64 = 100;
pub const CALLBACK_BACKOFF_MAX_MS: u64 = 2_000;
/// One callback attempt gives up after this long.
pub const CALLBACK_TIMEOUT_MS: u64 = 5_000;
/// How long an idle callback connection is kept for reuse. Below the 5 s keep-alive of
/// Node.js servers (common among DFSP connectors), so that the pool drops a connection
/// before the DFSP closes it: reusing one the server is closing fails the attempt.
pub const CALLBACK_POOL_IDLE_MS: u64 = 4_000;
/// Idle callback connections kept per DFSP endpoint (`host:port`) for reuse.
pub const CALLBACK_IDLE_PER_DFSP_MAX: usize = CALLBACKS_PER_DFSP_MAX;
/// Idle callback connections kept over all DFSPs (twice the callbacks in flight; each
/// is an open file, so this is not tied to a larger in-flight bound).
pub const CALLBACK_IDLE_TOTAL_MAX: usize = 8_192;
/// Largest response head (status line and headers) read from a DFSP.
pub const CALLBACK_RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest response body read from a DFSP (FSPIOP callback answers have none).
pub const CALLBACK_RESPONSE_BODY_BYTES_MAX: usize = 64 * 1024;
/// HTTP workers per listener.
pub const HTTP_WORKERS: usize = 2;
/// Open connections per listener worker.
pub const HTTP_CONNECTIONS_PER_WORKER_MAX: usize = 10_000;
/// How long the FSPIOP listener keeps an idle connection open: longer than a DFSP's
/// client pool usually keeps one, so that the client, not the hub, closes it (a request
/// sent on a connection the hub is closing fails).
pub const HTTP_KEEP_ALIVE_S: u64 = 75;
/// Accept queue of each listener (the kernel caps it at `net.core.somaxconn`). When a
/// stall makes DFSPs open many connections at once, a full queue drops their SYNs and
/// each such request waits a whole SYN retransmit (1 s).
pub const HTTP_LISTEN_BACKLOG: u32 = 4_096;
/// Participants the registry holds.
pub const PARTICIPANTS_MAX: usize = 10_000;
/// Endpoints per participant.
pub const ENDPOINTS_PER_PARTICIPANT_MAX: usize = 64;
/// Hub accounts recorded (central-ledger's `HUB_MULTILATERAL_SETTLEMENT` and
/// `HUB_RECONCILIATION`, per currency).
pub const HUB_ACCOUNTS_MAX: usize = 1_024;
/// Settlement models recorded.
pub const SETTLEMENT_MODELS_MAX: usize = 64;
/// At shutdown, how long the notifier may take to send what the engine released last
/// and to finish callbacks in flight (retries included) before the process exits.
pub const SHUTDOWN_CALLBACK_GRACE_MS: u64 = 5_000;
/// How often `/partitions` refreshes each partition's commands-per-second figure.
pub const RATE_SAMPLE_INTERVAL_MS: u64 = 1_000;
/// How often the NDC alarm watcher checks every account with an alarm percentage
/// (`alarm`): an alarm comes at most this long after its crossing.
pub const ALARM_CHECK_INTERVAL_MS: u64 = 1_000;
/// Threshold crossings `GET /alarms` keeps (then the oldest go).
pub const ALARMS_KEPT_MAX: usize = 1_000;
/// Settlement model names are at most this long.
pub const SETTLEMENT_MODEL_NAME_CHARS_MAX: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiration_bound_is_below_the_engines_retention() {
        let engine = engine::limits::Limits::default();
        assert_eq!(engine.retention_ms, ENGINE_RETENTION_MS_DEFAULT);
        assert_eq!(check_engine_limits(&engine), Ok(()));
        let short = engine::limits::Limits {
            retention_ms: PREPARE_EXPIRATION_MS_MAX,
            ..engine
        };
        let refused = check_engine_limits(&short).expect_err("refused");
        assert!(refused.contains("retention_ms"), "{refused}");
    }
}
