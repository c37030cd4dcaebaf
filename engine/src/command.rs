//! What goes into a partition and what comes out of it.
//!
//! * [`Command`]: one entry of a partition's command log. Client commands carry the hub
//!   timestamp at which the gateway accepted them (`now_ms`); the state machine never reads
//!   a clock.
//! * [`PeerMessage`]: headroom traffic between partitions (borrow, grant, deny, return,
//!   recall), delivered as `Command::Peer` with a per-sender sequence number so that a
//!   redelivered message is applied exactly once.
//! * [`Event`]: a result a DFSP or operator is told about (through callbacks or an admin
//!   reply). Events are released only after the batch that produced them is durable.

use crate::ids::{AccountKey, Currency, FspId, TransferId};
use crate::machine::settlement::{SettleStep, SettlementId, WindowId};
use serde::{Deserialize, Serialize};

/// Hub time in milliseconds since the Unix epoch. Enters the engine only inside commands.
pub type TimestampMs = i64;

/// A SHA-256 of a request body, truncated to 128 bits; the duplicate check compares these.
pub type BodyHash = [u8; 16];

/// FSPIOP error codes the engine decides. The gateway adds the API-layer ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// 2001 internal error.
    Internal,
    /// 2003 service currently unavailable (a bounded queue is full).
    ServiceUnavailable,
    /// 3000 generic client error (GET by a non-participant of the transfer).
    GenericClient,
    /// 3100 generic validation error.
    Validation,
    /// 3106 same transferId, different body.
    ModifiedRequest,
    /// 3208 transfer id not found.
    TransferNotFound,
    /// 3303 transfer expired.
    TransferExpired,
    /// 4001 payer FSP insufficient liquidity.
    PayerLiquidity,
    /// 4200 payer limit (Net Debit Cap) error.
    PayerLimit,
    /// A payee-chosen FSPIOP error code passed through on reject (for example 5101).
    Payee(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Internal => 2001,
            ErrorCode::ServiceUnavailable => 2003,
            ErrorCode::GenericClient => 3000,
            ErrorCode::Validation => 3100,
            ErrorCode::ModifiedRequest => 3106,
            ErrorCode::TransferNotFound => 3208,
            ErrorCode::TransferExpired => 3303,
            ErrorCode::PayerLiquidity => 4001,
            ErrorCode::PayerLimit => 4200,
            ErrorCode::Payee(code) => code,
        }
    }

    /// The FSPIOP description that goes with the code.
    pub fn description(self) -> &'static str {
        match self {
            ErrorCode::Internal => "Internal server error",
            ErrorCode::ServiceUnavailable => "Service currently unavailable",
            ErrorCode::GenericClient => "Generic client error",
            ErrorCode::Validation => "Generic validation error",
            ErrorCode::ModifiedRequest => "Modified request",
            ErrorCode::TransferNotFound => "Transfer ID not found",
            ErrorCode::TransferExpired => "Transfer expired",
            ErrorCode::PayerLiquidity => "Payer FSP insufficient liquidity",
            ErrorCode::PayerLimit => "Payer limit error",
            ErrorCode::Payee(_) => "Payee error",
        }
    }
}

/// `POST /transfers`, as the gateway validated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub transfer_id: TransferId,
    pub payer: FspId,
    pub payee: FspId,
    pub currency: Currency,
    /// Minor units, > 0.
    pub amount: i64,
    /// SHA-256 digest the fulfilment must hash to.
    #[serde(with = "serde_bytes")]
    pub condition: [u8; 32],
    pub expiration_ms: TimestampMs,
    #[serde(with = "serde_bytes")]
    pub body_hash: BodyHash,
    /// Opaque bytes echoed in the resulting event (the gateway keeps the original request
    /// there, to forward it to the payee). Bounded by `Limits::payload_bytes_max`.
    pub payload: Vec<u8>,
}

/// `PUT /transfers/{ID}` from the payee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fulfil {
    pub transfer_id: TransferId,
    /// `FSPIOP-Source` of the request; must be the payee.
    pub source: FspId,
    #[serde(with = "serde_bytes")]
    pub fulfilment: [u8; 32],
    pub completed_ms: TimestampMs,
    /// The payee sent `transferState: RESERVED` and wants a PATCH once committed.
    pub notify_payee: bool,
    #[serde(with = "serde_bytes")]
    pub body_hash: BodyHash,
    pub payload: Vec<u8>,
}

/// `PUT /transfers/{ID}/error` from the payee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    pub transfer_id: TransferId,
    pub source: FspId,
    /// The payee's FSPIOP error code, passed on to the payer.
    pub error_code: u16,
    #[serde(with = "serde_bytes")]
    pub body_hash: BodyHash,
    pub payload: Vec<u8>,
}

/// Operator commands, applied at the account's home partition (or at every partition for
/// the participant-wide ones). `request_id` is unique per request and names its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Admin {
    /// Registers an account (participant + currency). Sent to every partition.
    CreateAccount { account: AccountKey },
    /// Participant-wide activation switch. Sent to every partition; each answers.
    SetActive { fsp: FspId, active: bool },
    /// One currency account's activation switch (central-ledger's
    /// `PUT /participants/{name}/accounts/{id}`). Sent to every partition; each answers.
    SetAccountActive { account: AccountKey, active: bool },
    /// Home only. Allowed once per account, like central-ledger.
    InitialPositionAndLimits {
        account: AccountKey,
        position: i64,
        ndc: i64,
    },
    /// Home only.
    SetNdc { account: AccountKey, ndc: i64 },
    /// Home only: liquidity cover rises by `amount`.
    FundsIn {
        account: AccountKey,
        amount: i64,
        funds_id: TransferId,
    },
    /// Home only: reserves `amount` of liquidity cover for a withdrawal.
    FundsOutReserve {
        account: AccountKey,
        amount: i64,
        funds_id: TransferId,
    },
    /// Home only: the withdrawal is final.
    FundsOutCommit {
        account: AccountKey,
        funds_id: TransferId,
    },
    /// Home only: the withdrawal is cancelled, the cover comes back.
    FundsOutAbort {
        account: AccountKey,
        funds_id: TransferId,
    },
    /// Every partition: commits from here on count in the next settlement window
    /// (`machine::settlement`). Each partition answers.
    CloseWindow { window: WindowId },
    /// Home only: one step of a settlement for one account; `net` is the account's net in
    /// the settlement (positive: a net sender).
    Settle {
        account: AccountKey,
        settlement: SettlementId,
        step: SettleStep,
        net: i64,
    },
}

/// Headroom traffic between partitions (the demarcation protocol of DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Slice → home: a parked prepare of `amount` needs headroom; `extra` more is welcome.
    Borrow {
        account: AccountKey,
        transfer_id: TransferId,
        amount: i64,
        extra: i64,
    },
    /// Home → slice: `amount` of headroom for the slice (the bank lowered itself first).
    /// `distributed` tells the slice it may keep spare headroom (issued in `round`).
    Grant {
        account: AccountKey,
        transfer_id: TransferId,
        amount: i64,
        distributed: bool,
        round: u64,
    },
    /// Home → slice: the account's gathered headroom cannot cover the parked prepare.
    Deny {
        account: AccountKey,
        transfer_id: TransferId,
        code: ErrorCode,
    },
    /// Slice → home: headroom given back (the slice lowered itself first). `round` is set
    /// when this answers a recall.
    Return {
        account: AccountKey,
        amount: i64,
        round: Option<u64>,
    },
    /// Home → every partition: give back all free headroom and centralise.
    Recall { account: AccountKey, round: u64 },
}

/// One entry of a partition's command log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Prepare {
        now_ms: TimestampMs,
        prepare: Prepare,
    },
    Fulfil {
        now_ms: TimestampMs,
        fulfil: Fulfil,
    },
    Reject {
        now_ms: TimestampMs,
        reject: Reject,
    },
    /// Expires transfers whose expiration has passed; returns idle headroom.
    Tick {
        now_ms: TimestampMs,
    },
    Admin {
        now_ms: TimestampMs,
        request_id: u64,
        admin: Admin,
    },
    /// A message from partition `from`, the `seq`-th it sent to this partition (from 1).
    Peer {
        from: u32,
        seq: u64,
        message: PeerMessage,
    },
}

impl Command {
    /// The transfer this command is about, when it is about one.
    pub fn transfer_id(&self) -> Option<TransferId> {
        match self {
            Command::Prepare { prepare, .. } => Some(prepare.transfer_id),
            Command::Fulfil { fulfil, .. } => Some(fulfil.transfer_id),
            Command::Reject { reject, .. } => Some(reject.transfer_id),
            _ => None,
        }
    }

    /// The hub time the command carries, if it carries one (peer messages do not).
    pub fn now_ms(&self) -> Option<TimestampMs> {
        match self {
            Command::Prepare { now_ms, .. }
            | Command::Fulfil { now_ms, .. }
            | Command::Reject { now_ms, .. }
            | Command::Tick { now_ms }
            | Command::Admin { now_ms, .. } => Some(*now_ms),
            Command::Peer { .. } => None,
        }
    }

    /// Bytes of the opaque payload the command carries (what dominates its size).
    pub fn payload_bytes(&self) -> usize {
        match self {
            Command::Prepare { prepare, .. } => prepare.payload.len(),
            Command::Fulfil { fulfil, .. } => fulfil.payload.len(),
            Command::Reject { reject, .. } => reject.payload.len(),
            Command::Tick { .. } | Command::Admin { .. } | Command::Peer { .. } => 0,
        }
    }

    /// An upper bound of the command's share of its batch's WAL record: its payload plus
    /// [`crate::limits::COMMAND_FIXED_BYTES_MAX`] for everything else (ids, amounts, the
    /// archived record a duplicate check looked up). The actor cuts batches by it.
    pub fn wal_bytes_max(&self) -> usize {
        self.payload_bytes() + crate::limits::COMMAND_FIXED_BYTES_MAX
    }
}

/// Final and intermediate transfer states, as FSPIOP names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferState {
    Received,
    Reserved,
    Committed,
    Aborted,
}

impl TransferState {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::Received => "RECEIVED",
            TransferState::Reserved => "RESERVED",
            TransferState::Committed => "COMMITTED",
            TransferState::Aborted => "ABORTED",
        }
    }
}

/// The parties of a transfer, carried by every event about it so that the notifier can
/// address callbacks without another lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parties {
    pub transfer_id: TransferId,
    pub payer: FspId,
    pub payee: FspId,
    pub currency: Currency,
    pub amount: i64,
}

/// A result somebody is told about. Events about a transfer name the FSP to notify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Payer's headroom is reserved: forward the prepare to the payee.
    Reserved {
        parties: Parties,
        expiration_ms: TimestampMs,
        payload: Vec<u8>,
    },
    /// The prepare is refused (limits, validation, expiry while parked); tell the payer.
    PrepareRefused {
        parties: Parties,
        code: ErrorCode,
        payload: Vec<u8>,
    },
    /// Tell the payer (forwarding the payee's fulfil) and, if asked, PATCH the payee.
    Committed {
        parties: Parties,
        #[serde(with = "serde_bytes")]
        fulfilment: [u8; 32],
        completed_ms: TimestampMs,
        notify_payee: bool,
        payload: Vec<u8>,
    },
    /// The reservation is released. `code` is the payee's error (reject), 3100 (invalid
    /// fulfilment) or 3303 (expiry); `notify_payee` is set when the payee must hear too.
    Aborted {
        parties: Parties,
        code: ErrorCode,
        notify_payee: bool,
        payload: Vec<u8>,
    },
    /// A request about a transfer is refused; tell `to` (the request's sender).
    RequestRefused {
        transfer_id: TransferId,
        to: FspId,
        code: ErrorCode,
    },
    /// Duplicate with the same body: re-send the current state to `to`.
    StateResent {
        parties: Parties,
        to: FspId,
        state: TransferState,
        #[serde(with = "serde_bytes")]
        fulfilment: Option<[u8; 32]>,
        completed_ms: Option<TimestampMs>,
    },
    /// An admin request finished (`code` is `None` on success).
    AdminDone {
        request_id: u64,
        code: Option<ErrorCode>,
        message: String,
    },
}

impl Event {
    /// The transfer an event is about, if any.
    pub fn transfer_id(&self) -> Option<TransferId> {
        match self {
            Event::Reserved { parties, .. }
            | Event::PrepareRefused { parties, .. }
            | Event::Committed { parties, .. }
            | Event::Aborted { parties, .. }
            | Event::StateResent { parties, .. } => Some(parties.transfer_id),
            Event::RequestRefused { transfer_id, .. } => Some(*transfer_id),
            Event::AdminDone { .. } => None,
        }
    }
}

/// A transfer that reached a final state; it leaves memory and is archived for the
/// retention window, where GET and the duplicate check find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishedTransfer {
    pub parties: Parties,
    pub state: TransferState,
    #[serde(with = "serde_bytes")]
    pub fulfilment: Option<[u8; 32]>,
    pub completed_ms: Option<TimestampMs>,
    pub error_code: Option<ErrorCode>,
    #[serde(with = "serde_bytes")]
    pub prepare_hash: BodyHash,
    /// Hash of the fulfil or reject that finished it (none when it expired).
    #[serde(with = "serde_bytes")]
    pub final_hash: Option<BodyHash>,
    /// Hub time it finished; it is forgotten `retention_ms` later.
    pub finished_ms: TimestampMs,
    /// Sequence number of the batch that finished it (replay ignores later records).
    pub finished_batch: u64,
}
