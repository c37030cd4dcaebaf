//! Test tool for the crash test (`engine/tests/crash.rs`); not part of the hub.
//!
//! `engine-crash-worker run DIR SEED HISTORY`: opens (or recovers) an engine in DIR and
//! drives random prepares, fulfils, rejects and limit changes forever. HISTORY is the
//! file of every line earlier runs printed (read once at start, see below). Every line is
//! printed on stdout only once the engine made it durable (after its fsync):
//!
//! | line                            | meaning                                          |
//! |---------------------------------|--------------------------------------------------|
//! | `P <id> <payer> <expiration_ms>`| the prepare was durably accepted (submit came back)|
//! | `R <id> <payer> <expiration_ms>`| reserved                                         |
//! | `C <id> <payer>`                | committed                                        |
//! | `A <id> <payer> <code>`         | aborted: payee reject (5101) or expiry (3303)    |
//! | `F <id> <payer> <code>`         | prepare refused (4001, 4200, 3303 while waiting) |
//! | `T <op> <fsp> ndc <value>`      | about to ask for a new Net Debit Cap             |
//! | `T <op> <fsp> in <amount>`      | about to ask for a funds-in (funds id `<op>`)    |
//! | `K <op>`                        | the admin change `<op>` was acknowledged         |
//!
//! A `T` line without its `K` is a change whose answer the kill cut off: it may or may not
//! have been applied. Changes of one account are sent one at a time, so at a kill at most
//! one per account is open. A run first sends every open funds-in of the history again
//! with the same funds id (funds-ins are idempotent by id, as an operator would retry),
//! so the audit can tell the liquidity cover exactly.
//!
//! Load shape. Payers are skewed (crashfsp0 pays four times in ten, crashfsp1 twice), so
//! their positions climb to their limits and refusals happen: the Net Debit Cap of three
//! accounts swings between half and one and a half times the liquidity cover, so one
//! refusal is 4200 (the cap binds) and the next 4001 (the cover binds). One prepare in
//! eight gets a short expiration and no answer from the payee, so it expires (3303).
//!
//! `engine-crash-worker audit DIR HISTORY [final]`: recovers the engine in DIR and checks
//! the history against the state of record. Exits non-zero with the first mismatch:
//!
//! - every released result is still the state of record, and no transfer has two final
//!   states (a committed transfer that also aborted, a refusal of a reserved one);
//! - no transfer is still RESERVED (or waiting for headroom) past its expiration plus
//!   `EXPIRY_MARGIN_MS`, counted from the later of its expiration and the restart; with
//!   `final`, the audit first waits until every transfer of the history is due, so every
//!   prepare must have ended in exactly one final state, none lost (a lost grant or a
//!   stuck recall round shows up as a prepare that never gets an answer);
//! - once the engine is quiescent (the account figures stop changing): for every account
//!   `headroom == limit - position - reserved` exactly (DESIGN §5, invariant 1), the NDC
//!   is the last acknowledged one (or an unanswered later one), the liquidity cover is
//!   exactly the acknowledged funds-ins (plus some of the unanswered ones), positions sum
//!   to zero and no account is past the highest limit it ever had;
//! - with `final`, one probe prepare per account must be answered: reserved when the
//!   account has free headroom (no false refusal), refused otherwise, never left waiting.

use engine::command::{Admin, Command, ErrorCode, Event, Fulfil, Prepare, Reject, TransferState};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, AccountView, Hub, HubConfig, TransferView};
use engine::EngineError;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 4;
const DFSPS: usize = 6;
/// The Net Debit Cap every account starts with.
const NDC_INITIAL: i64 = 2_000_000;
/// The liquidity cover every account starts with (one funds-in at provisioning).
const FUNDS_BASE: i64 = 2_000_000;
/// The accounts whose limits change under load: crashfsp0 .. crashfsp2.
const ADMIN_ACCOUNTS: usize = 3;
/// New Net Debit Caps are drawn from `NDC_LOW ..= NDC_HIGH`: below and above the cover.
const NDC_LOW: i64 = 1_000_000;
const NDC_HIGH: i64 = 3_000_000;
/// Funds-ins are small, so that the cover stays between `NDC_LOW` and `NDC_HIGH`.
const FUNDS_IN_AMOUNT_MAX: i64 = 1_000;
/// One funds-in per this many admin changes; the others set the NDC.
const FUNDS_IN_EVERY: u64 = 4;
/// Pause between two admin changes of one account: `MIN + random(SPREAD)`.
const ADMIN_PAUSE_MS_MIN: u64 = 20;
const ADMIN_PAUSE_MS_SPREAD: u64 = 80;
/// Prepares in flight at once. The skewed payers sit at their limits, where each prepare
/// borrows from the home and a refusal waits for recall rounds: the window is wide enough
/// that those waits do not starve the rest of the load.
const IN_FLIGHT_MAX: usize = 512;
const AMOUNT_MAX: u64 = 50_000;
/// Expiration of a prepare the payee answers.
const EXPIRATION_MS: i64 = 5_000;
/// One prepare in this many is left unanswered, with a short expiration.
const EXPIRE_EVERY: u64 = 8;
const SHORT_EXPIRATION_MS_MIN: i64 = 200;
const SHORT_EXPIRATION_MS_SPREAD: u64 = 600;
/// A due transfer must be final this long after it fell due (the ticker runs every
/// `tick_interval_ms`, 100 ms by default; the rest is slack for a loaded machine).
const EXPIRY_MARGIN_MS: i64 = 1_000;
/// How long the audit waits for the account figures to settle.
const QUIESCENCE_WAIT_MS: u64 = 10_000;
const QUIESCENCE_POLL_MS: u64 = 25;
/// GETs the audit keeps in flight at once (each partition's query queue holds 1024).
const GET_WINDOW: usize = 128;
/// How long a probe prepare may take to be answered.
const PROBE_WAIT_MS: u64 = 5_000;
const PROBE_EXPIRATION_MS: i64 = 20_000;
/// Unanswered funds-ins of one account the cover check enumerates subsets of.
const PENDING_FUNDS_MAX: usize = 12;
/// Events buffered while provisioning after a restart (more than a replay republishes:
/// at most 50 batches between snapshots of at most 8192 commands).
const FORWARD_EVENTS_MAX: usize = 1 << 20;

fn fsp(i: usize) -> FspId {
    FspId::new(&format!("crashfsp{i}")).expect("static name")
}

fn currency() -> Currency {
    Currency::new("USD").expect("static currency")
}

fn account_of(i: usize) -> AccountKey {
    AccountKey::new(fsp(i), currency())
}

fn config(dir: PathBuf) -> HubConfig {
    // Frequent snapshots and 256 KiB WAL segments: the kills land amid snapshots, segment
    // rolls and segment deletions, not only amid group commits.
    let limits = Limits {
        snapshot_every_batches: 50,
        wal_segment_bytes: 256 * 1024,
        ..Limits::default()
    };
    HubConfig {
        data_dir: dir,
        partitions: PARTITIONS,
        limits,
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let arg = |i: usize| PathBuf::from(&args[i]);
    let result = match (args.get(1).map(String::as_str), args.len()) {
        (Some("run"), 5) => match args[3].parse() {
            Ok(seed) => runtime.block_on(run(arg(2), seed, arg(4))),
            Err(e) => Err(format!("seed {}: {e}", args[3])),
        },
        (Some("audit"), 4) => runtime.block_on(audit(arg(2), arg(3), false)),
        (Some("audit"), 5) if args[4] == "final" => runtime.block_on(audit(arg(2), arg(3), true)),
        _ => Err(
            "usage: engine-crash-worker run DIR SEED HISTORY | audit DIR HISTORY [final]"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}

/// xorshift64: deterministic per seed, good enough to spread a workload.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Prints one line and flushes it, so that the line is in the pipe before anything that
/// depends on it happens (a kill may come at any moment).
fn emit(line: &str) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").map_err(|e| e.to_string())?;
    stdout.flush().map_err(|e| e.to_string())
}

// ----- the history: what earlier runs printed ------------------------------------------

/// A final state a line reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Final {
    Committed,
    /// Aborted after it was reserved (payee reject, or expiry: 3303).
    Aborted(u16),
    /// Refused at prepare (4001, 4200, or 3303 when it expired waiting for headroom).
    Refused(u16),
}

/// Refusals decided before anything is stored: the engine keeps no record of them, so a
/// GET answers 3208 (validation, or a full bound). This workload should not cause them.
fn refused_unrecorded(code: u16) -> bool {
    code == ErrorCode::Validation.code() || code == ErrorCode::ServiceUnavailable.code()
}

#[derive(Debug, Default)]
struct Seen {
    payer: Option<FspId>,
    expiration_ms: Option<i64>,
    /// A `P` line: the prepare was durably accepted.
    prepared: bool,
    /// An `R` line: it was reserved.
    reserved: bool,
    /// Every distinct final state reported (more than one is a broken transfer).
    finals: Vec<Final>,
}

#[derive(Debug, Clone)]
enum AdminOp {
    Ndc { account: usize, ndc: i64 },
    FundsIn { account: usize, amount: i64 },
}

#[derive(Debug, Default)]
struct History {
    transfers: HashMap<TransferId, Seen>,
    /// Every admin change, by op id, in the order asked, with whether it was answered.
    ops: BTreeMap<String, (usize, AdminOp, bool)>,
}

impl History {
    fn read(path: &Path) -> Result<History, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut history = History::default();
        for (number, line) in text.lines().enumerate() {
            history
                .add(number, line)
                .map_err(|e| format!("history line {}: {line:?}: {e}", number + 1))?;
        }
        Ok(history)
    }

    fn add(&mut self, number: usize, line: &str) -> Result<(), String> {
        let parts: Vec<&str> = line.split(' ').collect();
        let number_at = |i: usize| -> Result<i64, String> {
            parts
                .get(i)
                .ok_or("field missing")?
                .parse::<i64>()
                .map_err(|e| e.to_string())
        };
        match parts[..] {
            [kind @ ("P" | "R" | "C" | "A" | "F"), id, payer, ..] => {
                let id = TransferId::parse(id).ok_or("bad transfer id")?;
                let payer = FspId::new(payer).ok_or("bad payer")?;
                let seen = self.transfers.entry(id).or_default();
                if seen.payer.is_some_and(|p| p != payer) {
                    return Err("another payer than before".into());
                }
                seen.payer = Some(payer);
                let final_state = match kind {
                    "P" | "R" => {
                        seen.expiration_ms = Some(number_at(3)?);
                        seen.prepared |= kind == "P";
                        seen.reserved |= kind == "R";
                        None
                    }
                    "C" => Some(Final::Committed),
                    "A" => Some(Final::Aborted(
                        u16::try_from(number_at(3)?).map_err(|e| e.to_string())?,
                    )),
                    _ => Some(Final::Refused(
                        u16::try_from(number_at(3)?).map_err(|e| e.to_string())?,
                    )),
                };
                if let Some(state) = final_state {
                    if !seen.finals.contains(&state) {
                        seen.finals.push(state);
                    }
                }
            }
            ["T", op, fsp_name, kind, value] => {
                let account = (0..DFSPS)
                    .find(|&i| fsp(i).as_str() == fsp_name)
                    .ok_or("unknown account")?;
                let value = value.parse::<i64>().map_err(|e| e.to_string())?;
                let admin = match kind {
                    "ndc" => AdminOp::Ndc {
                        account,
                        ndc: value,
                    },
                    "in" => AdminOp::FundsIn {
                        account,
                        amount: value,
                    },
                    _ => return Err("unknown admin kind".into()),
                };
                if self
                    .ops
                    .insert(op.to_string(), (number, admin, false))
                    .is_some()
                {
                    return Err("admin op id used twice".into());
                }
            }
            ["K", op] => {
                let entry = self
                    .ops
                    .get_mut(op)
                    .ok_or("answer to an unknown admin op")?;
                entry.2 = true;
            }
            _ => return Err("malformed line".into()),
        }
        Ok(())
    }

    /// Funds-ins that were asked but never answered.
    fn pending_funds_in(&self) -> Vec<(String, usize, i64)> {
        self.ops
            .iter()
            .filter_map(|(op, (_, admin, answered))| match admin {
                AdminOp::FundsIn { account, amount } if !answered => {
                    Some((op.clone(), *account, *amount))
                }
                _ => None,
            })
            .collect()
    }

    /// The NDC values an account may have now: the last acknowledged one, or one asked
    /// after it whose answer the kill cut off. Changes of one account apply in the order
    /// asked, so an acknowledged change overrides every change asked before it.
    fn ndc_candidates(&self, account: usize) -> Vec<i64> {
        let mut changes: Vec<(usize, i64, bool)> = self
            .ops
            .values()
            .filter_map(|(number, admin, answered)| match admin {
                AdminOp::Ndc { account: a, ndc } if *a == account => {
                    Some((*number, *ndc, *answered))
                }
                _ => None,
            })
            .collect();
        changes.sort_unstable();
        let mut candidates = vec![NDC_INITIAL];
        for (_, ndc, answered) in changes {
            if answered {
                candidates.clear();
            }
            candidates.push(ndc);
        }
        candidates
    }

    /// The highest NDC an account ever had or may have had.
    fn ndc_max(&self, account: usize) -> i64 {
        self.ops
            .values()
            .filter_map(|(_, admin, _)| match admin {
                AdminOp::Ndc { account: a, ndc } if *a == account => Some(*ndc),
                _ => None,
            })
            .fold(NDC_INITIAL, i64::max)
    }

    /// The acknowledged funds-ins of an account, summed, and the unanswered ones.
    fn funds_in(&self, account: usize) -> (i64, Vec<i64>) {
        let mut acknowledged = FUNDS_BASE;
        let mut pending = Vec::new();
        for (_, admin, answered) in self.ops.values() {
            if let AdminOp::FundsIn { account: a, amount } = admin {
                if *a == account {
                    if *answered {
                        acknowledged += amount;
                    } else {
                        pending.push(*amount);
                    }
                }
            }
        }
        (acknowledged, pending)
    }
}

// ----- run: the load --------------------------------------------------------------------

async fn provision(hub: &Hub) -> Result<(), String> {
    for i in 0..DFSPS {
        let account = account_of(i);
        hub.admin(now_ms(), Admin::CreateAccount { account })
            .await
            .map_err(|e| format!("{e:?}"))?;
        match hub
            .admin(
                now_ms(),
                Admin::InitialPositionAndLimits {
                    account,
                    position: 0,
                    ndc: NDC_INITIAL,
                },
            )
            .await
        {
            Ok(()) => {}
            Err(EngineError::Refused {
                code: ErrorCode::Validation,
                ..
            }) => {} // already set by an earlier run
            Err(e) => return Err(format!("{e:?}")),
        }
        let funds_id =
            TransferId::parse(&format!("00000000-0000-4000-8000-{i:012x}")).ok_or("id")?;
        hub.admin(
            now_ms(),
            Admin::FundsIn {
                account,
                amount: FUNDS_BASE,
                funds_id,
            },
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

/// What the worker will do with a transfer once it is reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Fulfil,
    Reject,
    /// No answer from the payee: it expires.
    Expire,
}

async fn run(dir: PathBuf, seed: u64, history: PathBuf) -> Result<(), String> {
    let history = History::read(&history)?;
    let (hub, mut engine_events) = Hub::open(config(dir)).map_err(|e| e.to_string())?;
    // Drain the event stream from the start: after a restart the engine republishes the
    // replayed batches' events, and an unread stream would hold the partitions back
    // (back-pressure) while provisioning waits for them.
    let (forward, mut events) = tokio::sync::mpsc::channel(FORWARD_EVENTS_MAX);
    tokio::spawn(async move {
        while let Some(event) = engine_events.recv().await {
            if forward.send(event).await.is_err() {
                break;
            }
        }
    });
    provision(&hub).await?;
    // The funds-ins an earlier kill left unanswered, sent again with the same funds id:
    // applied once whatever happened to the first attempt.
    for (op, account, amount) in history.pending_funds_in() {
        let funds_id = TransferId::parse(&op).ok_or("funds id")?;
        hub.admin(
            now_ms(),
            Admin::FundsIn {
                account: account_of(account),
                amount,
                funds_id,
            },
        )
        .await
        .map_err(|e| format!("funds-in {op} again: {e:?}"))?;
        emit(&format!("K {op}"))?;
    }
    for account in 0..ADMIN_ACCOUNTS {
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(message) = change_limits(hub, seed, account).await {
                // The test sees the worker gone before its kill and fails with this.
                eprintln!("limit changes of crashfsp{account}: {message}");
                std::process::exit(3);
            }
        });
    }
    let mut rng = Rng::new(seed);
    let fulfilment = [7u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut fates: HashMap<TransferId, Fate> = HashMap::new();
    let mut counter = 0u64;
    loop {
        while in_flight.load(Ordering::Relaxed) < IN_FLIGHT_MAX {
            counter += 1;
            let payer = match rng.next() % 10 {
                0..=3 => 0,
                4 | 5 => 1,
                n => n as usize - 4,
            };
            let payee = (payer + 1 + (rng.next() % (DFSPS as u64 - 1)) as usize) % DFSPS;
            let id = format!(
                "{:08x}-{:04x}-4000-8000-{:012x}",
                seed & 0xffff_ffff,
                counter >> 48,
                counter & 0xffff_ffff_ffff
            );
            let transfer_id = TransferId::parse(&id).ok_or("id")?;
            let fate = match rng.next() % (3 * EXPIRE_EVERY) {
                0..=2 => Fate::Expire,
                n if n % 3 == 0 => Fate::Reject,
                _ => Fate::Fulfil,
            };
            let now = now_ms();
            let expiration_ms = if fate == Fate::Expire {
                now + SHORT_EXPIRATION_MS_MIN + (rng.next() % SHORT_EXPIRATION_MS_SPREAD) as i64
            } else {
                now + EXPIRATION_MS
            };
            let prepare = Prepare {
                transfer_id,
                payer: fsp(payer),
                payee: fsp(payee),
                currency: currency(),
                amount: 1 + (rng.next() % AMOUNT_MAX) as i64,
                condition,
                expiration_ms,
                body_hash: [1; 16],
                payload: Vec::new(),
            };
            fates.insert(transfer_id, fate);
            in_flight.fetch_add(1, Ordering::Relaxed);
            let hub = hub.clone();
            let in_flight = Arc::clone(&in_flight);
            tokio::spawn(async move {
                let partition = hub.partition_of(&transfer_id);
                let command = Command::Prepare {
                    now_ms: now,
                    prepare,
                };
                // `submit` comes back once the prepare is durable: from then on it must
                // end in a final state, whatever kill follows.
                match hub.submit(partition, command).await {
                    Ok(()) => {
                        let line = format!("P {transfer_id} {} {expiration_ms}", fsp(payer));
                        if let Err(message) = emit(&line) {
                            eprintln!("stdout: {message}");
                            std::process::exit(3);
                        }
                    }
                    // Not accepted (a full mailbox): it never existed.
                    Err(_) => release(&in_flight),
                }
            });
        }
        // Wake now and then to refill the window after refused submissions.
        let delivery = tokio::select! {
            delivery = events.recv() => delivery.ok_or("event stream closed")?,
            _ = tokio::time::sleep(Duration::from_millis(10)) => continue,
        };
        let line = match &*delivery.event {
            Event::Reserved {
                parties,
                expiration_ms,
                ..
            } => {
                // A transfer of an earlier run (its Reserved published again after the
                // restart) gets a fate here; its expiry may already have passed.
                let fate = match fates.get(&parties.transfer_id) {
                    Some(&fate) => fate,
                    None if rng.next().is_multiple_of(3) => Fate::Reject,
                    None => Fate::Fulfil,
                };
                let command = match fate {
                    Fate::Expire => None,
                    Fate::Reject => Some(Command::Reject {
                        now_ms: now_ms(),
                        reject: Reject {
                            transfer_id: parties.transfer_id,
                            source: parties.payee,
                            error_code: 5101,
                            body_hash: [2; 16],
                            payload: Vec::new(),
                        },
                    }),
                    Fate::Fulfil => Some(Command::Fulfil {
                        now_ms: now_ms(),
                        fulfil: Fulfil {
                            transfer_id: parties.transfer_id,
                            source: parties.payee,
                            fulfilment,
                            completed_ms: now_ms(),
                            notify_payee: false,
                            body_hash: [3; 16],
                            payload: Vec::new(),
                        },
                    }),
                };
                if let Some(command) = command {
                    // A full mailbox drops the answer: the transfer then expires.
                    let _ = hub.enqueue(hub.partition_of(&parties.transfer_id), command);
                }
                format!(
                    "R {} {} {expiration_ms}",
                    parties.transfer_id, parties.payer
                )
            }
            Event::Committed { parties, .. } => {
                if fates.remove(&parties.transfer_id).is_some() {
                    release(&in_flight);
                }
                format!("C {} {}", parties.transfer_id, parties.payer)
            }
            Event::Aborted { parties, code, .. } => {
                if fates.remove(&parties.transfer_id).is_some() {
                    release(&in_flight);
                }
                format!(
                    "A {} {} {}",
                    parties.transfer_id,
                    parties.payer,
                    code.code()
                )
            }
            Event::PrepareRefused { parties, code, .. } => {
                if fates.remove(&parties.transfer_id).is_some() {
                    release(&in_flight);
                }
                format!(
                    "F {} {} {}",
                    parties.transfer_id,
                    parties.payer,
                    code.code()
                )
            }
            _ => continue,
        };
        emit(&line)?;
        // The delivery is dropped (acknowledged) only after its line is in the pipe.
        drop(delivery);
    }
}

fn release(in_flight: &AtomicUsize) {
    let _ = in_flight.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(1))
    });
}

/// Changes one account's NDC up and down, with a funds-in now and then, one change at a
/// time, each announced (`T`) before it is sent and confirmed (`K`) once acknowledged.
async fn change_limits(hub: Hub, seed: u64, account: usize) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ (0x5bd1_e995 * (account as u64 + 1)));
    let mut counter = 0u64;
    loop {
        let pause_ms = ADMIN_PAUSE_MS_MIN + rng.next() % ADMIN_PAUSE_MS_SPREAD;
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        counter += 1;
        // Unique per run (seed) and account; doubles as the funds id of a funds-in.
        let op = format!(
            "{:08x}-{:04x}-4000-9000-{:012x}",
            seed & 0xffff_ffff,
            account,
            counter & 0xffff_ffff_ffff
        );
        let funds_id = TransferId::parse(&op).ok_or("op id")?;
        let key = account_of(account);
        let (line, admin) = if rng.next().is_multiple_of(FUNDS_IN_EVERY) {
            let amount = 1 + (rng.next() % FUNDS_IN_AMOUNT_MAX as u64) as i64;
            (
                format!("T {op} {} in {amount}", fsp(account)),
                Admin::FundsIn {
                    account: key,
                    amount,
                    funds_id,
                },
            )
        } else {
            let ndc = NDC_LOW + (rng.next() % (NDC_HIGH - NDC_LOW + 1) as u64) as i64;
            (
                format!("T {op} {} ndc {ndc}", fsp(account)),
                Admin::SetNdc { account: key, ndc },
            )
        };
        emit(&line)?;
        match hub.admin(now_ms(), admin).await {
            Ok(()) => emit(&format!("K {op}"))?,
            Err(e) => return Err(format!("{line}: refused {e:?}")),
        }
    }
}

// ----- audit: the history against the state of record ----------------------------------

async fn audit(dir: PathBuf, history_path: PathBuf, final_audit: bool) -> Result<(), String> {
    let history = History::read(&history_path)?;
    let (hub, mut events) = Hub::open(config(dir)).map_err(|e| e.to_string())?;
    let opened_ms = now_ms();
    // Results the restart publishes again: an unrecorded refusal shows only here.
    let unrecorded = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&unrecorded);
    tokio::spawn(async move {
        while let Some(delivery) = events.recv().await {
            if let Event::PrepareRefused { parties, code, .. } = &*delivery.event {
                if refused_unrecorded(code.code()) {
                    if let Ok(mut seen) = seen.lock() {
                        seen.insert(parties.transfer_id);
                    }
                }
            }
        }
    });
    let views = audit_accounts(&hub, &history).await?;
    if final_audit {
        // Every transfer of the history falls due, and then some: after this, each one
        // must have ended in exactly one final state.
        let last_due_ms = history
            .transfers
            .values()
            .filter_map(|seen| seen.expiration_ms)
            .fold(opened_ms, i64::max)
            + EXPIRY_MARGIN_MS;
        let wait_ms = u64::try_from(last_due_ms - now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
    }
    let counts = audit_transfers(&hub, &history, opened_ms, &unrecorded).await?;
    let mut probed = 0;
    if final_audit {
        // Expiries since the first read released headroom: probe against fresh figures.
        let views = audit_accounts(&hub, &history).await?;
        probed = probe_accounts(&hub, &views).await?;
        audit_accounts(&hub, &history).await?;
    }
    hub.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    println!(
        "audit ok: {} transfers ({} committed, {} aborted, {} not yet due), headroom \
         identity, NDC and cover as acknowledged on {} accounts, {probed} probes answered",
        counts.total,
        counts.committed,
        counts.aborted,
        counts.open,
        views.len()
    );
    Ok(())
}

fn describe(view: &AccountView) -> String {
    format!(
        "{}: limit {} (ndc {}, cover {}), position {}, reserved {}, headroom {}",
        view.account.fsp,
        view.limit,
        view.ndc,
        view.liquidity_cover,
        view.position,
        view.reserved,
        view.headroom
    )
}

/// `limit - position - reserved - headroom`: zero when no headroom is travelling.
fn headroom_gap(view: &AccountView) -> i128 {
    view.limit - view.position - view.reserved - view.headroom
}

/// Waits until the engine is quiescent (two reads of every account, a poll apart, agree
/// and every headroom identity holds), then checks the accounts against the history.
///
/// Headroom travels between partitions (grants, returns, recalls; after a restart the
/// unconfirmed messages are sent again), and `Hub::account` reads the partitions one
/// after the other, so one read may see an amount twice or not at all. Headroom that is
/// lost or made up never comes back, so a broken identity stays broken through
/// `QUIESCENCE_WAIT_MS` of reads, and the error shows the last one.
async fn audit_accounts(hub: &Hub, history: &History) -> Result<Vec<AccountView>, String> {
    let deadline = Instant::now() + Duration::from_millis(QUIESCENCE_WAIT_MS);
    let mut previous: Option<Vec<AccountView>> = None;
    let views = loop {
        if let Some(stopped) = hub.partitions().into_iter().find(|p| p.stopped.is_some()) {
            return Err(format!(
                "partition {} stopped: {}",
                stopped.partition,
                stopped.stopped.unwrap_or_default()
            ));
        }
        let mut views = Vec::with_capacity(DFSPS);
        for i in 0..DFSPS {
            let view = hub
                .account(account_of(i))
                .await
                .map_err(|e| format!("{}: {e}", fsp(i)))?
                .ok_or_else(|| format!("{} lost", fsp(i)))?;
            views.push(view);
        }
        let balanced = views.iter().all(|view| headroom_gap(view) == 0);
        if balanced && previous.as_ref() == Some(&views) {
            break views;
        }
        if Instant::now() >= deadline {
            let broken: Vec<String> = views
                .iter()
                .filter(|view| headroom_gap(view) != 0)
                .map(|view| {
                    format!(
                        "{}: limit - position - reserved - headroom = {}",
                        describe(view),
                        headroom_gap(view)
                    )
                })
                .collect();
            return Err(format!(
                "headroom identity headroom == limit - position - reserved broken for \
                 {QUIESCENCE_WAIT_MS} ms (not quiescent, or headroom lost): {}",
                if broken.is_empty() {
                    "figures kept changing".to_string()
                } else {
                    broken.join("; ")
                }
            ));
        }
        previous = Some(views);
        tokio::time::sleep(Duration::from_millis(QUIESCENCE_POLL_MS)).await;
    };
    let mut total = 0i128;
    for (i, view) in views.iter().enumerate() {
        total += view.position;
        if view.reserved < 0 {
            return Err(format!("negative reserved: {}", describe(view)));
        }
        if view.limit != view.ndc.min(view.liquidity_cover) {
            return Err(format!("limit is not min(ndc, cover): {}", describe(view)));
        }
        let candidates = history.ndc_candidates(i);
        if !candidates.iter().any(|&ndc| i128::from(ndc) == view.ndc) {
            return Err(format!(
                "NDC is not the last acknowledged one (or a later unanswered one) {candidates:?}: \
                 {}",
                describe(view)
            ));
        }
        let (acknowledged, pending) = history.funds_in(i);
        if pending.len() > PENDING_FUNDS_MAX {
            return Err(format!(
                "{}: {} unanswered funds-ins (a run should have sent them again)",
                fsp(i),
                pending.len()
            ));
        }
        let cover_fits = (0..1u32 << pending.len()).any(|subset| {
            let applied: i64 = (0..pending.len())
                .filter(|bit| subset & (1 << bit) != 0)
                .map(|bit| pending[bit])
                .sum();
            i128::from(acknowledged + applied) == view.liquidity_cover
        });
        if !cover_fits {
            return Err(format!(
                "cover is not the acknowledged funds-ins {acknowledged} plus some of the \
                 unanswered {pending:?}: {}",
                describe(view)
            ));
        }
        // Every reservation fitted the limit of its moment, and the limit was never more
        // than the highest NDC nor more than today's cover (funds only came in).
        let limit_max = i128::from(history.ndc_max(i)).min(view.liquidity_cover);
        if view.position + view.reserved > limit_max {
            return Err(format!(
                "past the highest limit it had, {limit_max}: {}",
                describe(view)
            ));
        }
    }
    if total != 0 {
        return Err(format!("positions sum to {total}, not 0"));
    }
    Ok(views)
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    committed: usize,
    aborted: usize,
    open: usize,
}

/// GETs every transfer of the history (a window at a time) and checks it.
async fn audit_transfers(
    hub: &Hub,
    history: &History,
    opened_ms: i64,
    unrecorded: &Mutex<HashSet<TransferId>>,
) -> Result<Counts, String> {
    let mut counts = Counts::default();
    let ids: Vec<TransferId> = history.transfers.keys().copied().collect();
    for window in ids.chunks(GET_WINDOW) {
        let mut tasks = tokio::task::JoinSet::new();
        for &id in window {
            let hub = hub.clone();
            let payer = history.transfers[&id].payer.ok_or("payer")?;
            tasks.spawn(async move {
                loop {
                    match hub.get_transfer(id, payer).await {
                        Err(e) if e.is_retryable() => {
                            tokio::time::sleep(Duration::from_millis(1)).await
                        }
                        answer => return (id, answer, now_ms()),
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (id, answer, asked_ms) = joined.map_err(|e| e.to_string())?;
            let seen = &history.transfers[&id];
            let unrecorded = unrecorded.lock().map_err(|e| e.to_string())?.contains(&id);
            check_transfer(
                id,
                seen,
                answer,
                asked_ms,
                opened_ms,
                unrecorded,
                &mut counts,
            )?;
        }
    }
    Ok(counts)
}

fn check_transfer(
    id: TransferId,
    seen: &Seen,
    answer: Result<TransferView, EngineError>,
    asked_ms: i64,
    opened_ms: i64,
    unrecorded: bool,
    counts: &mut Counts,
) -> Result<(), String> {
    let lines = || format!("{id} (lines: {seen:?})");
    if seen.finals.len() > 1 {
        return Err(format!("{}: more than one final state", lines()));
    }
    let reported = seen.finals.first().copied();
    if seen.reserved && matches!(reported, Some(Final::Refused(_))) {
        return Err(format!("{}: refused after it was reserved", lines()));
    }
    counts.total += 1;
    let view = match answer {
        Ok(view) => view,
        Err(EngineError::Refused {
            code: ErrorCode::TransferNotFound,
            ..
        }) if unrecorded
            || matches!(reported, Some(Final::Refused(code)) if refused_unrecorded(code)) =>
        {
            counts.aborted += 1;
            return Ok(());
        }
        Err(e) => return Err(format!("{}: lost after restart ({e})", lines())),
    };
    if Some(view.payer) != seen.payer {
        return Err(format!("{}: payer of record is {}", lines(), view.payer));
    }
    match (view.state, reported) {
        (TransferState::Committed, None | Some(Final::Committed)) => counts.committed += 1,
        (TransferState::Aborted, None | Some(Final::Aborted(_))) => counts.aborted += 1,
        (TransferState::Aborted, Some(Final::Refused(code))) if !refused_unrecorded(code) => {
            counts.aborted += 1
        }
        (TransferState::Reserved | TransferState::Received, None) => {
            if view.state == TransferState::Received && seen.reserved {
                return Err(format!("{}: reserved, then waiting again", lines()));
            }
            let expiration_ms = seen.expiration_ms.ok_or("an open transfer without lines")?;
            let due_ms = expiration_ms.max(opened_ms) + EXPIRY_MARGIN_MS;
            if asked_ms >= due_ms {
                return Err(format!(
                    "{}: still {:?} {} ms past its expiration (restart at {opened_ms}): never \
                     answered",
                    lines(),
                    view.state,
                    asked_ms - expiration_ms
                ));
            }
            counts.open += 1;
        }
        (state, _) => return Err(format!("{}: state of record is {state:?}", lines())),
    }
    Ok(())
}

/// One prepare of 1 per account, from a quiescent engine: an account with free headroom
/// must reserve it (then the payee rejects it), one without must refuse it; neither may
/// leave it waiting (a lost grant or a recall round that never completes would).
async fn probe_accounts(hub: &Hub, views: &[AccountView]) -> Result<usize, String> {
    let fulfilment = [9u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    for (i, view) in views.iter().enumerate() {
        let transfer_id =
            TransferId::parse(&format!("ffffffff-0000-4000-8000-{i:012x}")).ok_or("probe id")?;
        let payee = fsp((i + 1) % DFSPS);
        let prepare = Prepare {
            transfer_id,
            payer: fsp(i),
            payee,
            currency: currency(),
            amount: 1,
            condition,
            expiration_ms: now_ms() + PROBE_EXPIRATION_MS,
            body_hash: [4; 16],
            payload: Vec::new(),
        };
        hub.prepare(now_ms(), prepare)
            .await
            .map_err(|e| format!("probe of {}: {e}", fsp(i)))?;
        let state = wait_answered(hub, transfer_id, payee).await?;
        match state {
            TransferState::Reserved if view.headroom >= 1 => {}
            TransferState::Aborted if view.headroom < 1 => continue,
            state => {
                return Err(format!(
                    "probe of 1 from {} is {state:?} with free headroom {}: {}",
                    fsp(i),
                    view.headroom,
                    describe(view)
                ))
            }
        }
        let reject = Reject {
            transfer_id,
            source: payee,
            error_code: 5101,
            body_hash: [5; 16],
            payload: Vec::new(),
        };
        hub.reject(now_ms(), reject)
            .await
            .map_err(|e| format!("probe reject: {e}"))?;
        let state = wait_answered(hub, transfer_id, payee).await?;
        if state != TransferState::Aborted {
            return Err(format!("rejected probe of {} is {state:?}", fsp(i)));
        }
    }
    Ok(views.len())
}

/// Polls a transfer until it leaves RECEIVED (waiting for headroom), at most
/// `PROBE_WAIT_MS`.
async fn wait_answered(
    hub: &Hub,
    transfer_id: TransferId,
    source: FspId,
) -> Result<TransferState, String> {
    let deadline = Instant::now() + Duration::from_millis(PROBE_WAIT_MS);
    loop {
        let view = hub
            .get_transfer(transfer_id, source)
            .await
            .map_err(|code| format!("probe {transfer_id}: {code:?}"))?;
        if view.state != TransferState::Received {
            return Ok(view.state);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "probe {transfer_id} still waiting for headroom after {PROBE_WAIT_MS} ms: a \
                 grant lost or a recall round that never completes"
            ));
        }
        tokio::time::sleep(Duration::from_millis(QUIESCENCE_POLL_MS)).await;
    }
}
