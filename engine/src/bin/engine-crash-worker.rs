//! Test tool for the crash test (`engine/tests/crash.rs`); not part of the hub.
//!
//! `engine-crash-worker run DIR SEED`: opens (or recovers) an engine in DIR and drives
//! random prepares, fulfils and rejects forever. Every result is printed on stdout only
//! once the engine released it (after its fsync), one line each:
//! `<R|C|A> <transferId> <payer>` for reserved, committed, aborted.
//!
//! `engine-crash-worker audit DIR FILE`: recovers the engine in DIR and checks every line
//! of FILE (results released before some kill) against the state of record, plus money
//! conservation and limits. Exits non-zero on the first mismatch.

use engine::command::{Admin, Command, ErrorCode, Event, Fulfil, Prepare, Reject, TransferState};
use engine::ids::{AccountKey, Currency, FspId, TransferId};
use engine::limits::Limits;
use engine::runtime::{now_ms, Hub, HubConfig};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

const PARTITIONS: u32 = 4;
const DFSPS: usize = 6;
const NDC: i64 = 2_000_000;
const IN_FLIGHT_MAX: usize = 256;
/// Events buffered while provisioning after a restart (more than a replay republishes:
/// at most 50 batches between snapshots of at most 8192 commands).
const FORWARD_EVENTS_MAX: usize = 1 << 20;

fn fsp(i: usize) -> FspId {
    FspId::new(&format!("crashfsp{i}")).expect("static name")
}

fn currency() -> Currency {
    Currency::new("USD").expect("static currency")
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
    let result = match args.get(1).map(String::as_str) {
        Some("run") if args.len() == 4 => {
            runtime.block_on(run(PathBuf::from(&args[2]), args[3].parse().unwrap_or(1)))
        }
        Some("audit") if args.len() == 4 => {
            runtime.block_on(audit(PathBuf::from(&args[2]), PathBuf::from(&args[3])))
        }
        _ => Err("usage: engine-crash-worker run DIR SEED | audit DIR FILE".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(1)
        }
    }
}

async fn provision(hub: &Hub) -> Result<(), String> {
    for i in 0..DFSPS {
        let account = AccountKey::new(fsp(i), currency());
        hub.admin(now_ms(), Admin::CreateAccount { account })
            .await
            .map_err(|e| format!("{e:?}"))?;
        match hub
            .admin(
                now_ms(),
                Admin::InitialPositionAndLimits {
                    account,
                    position: 0,
                    ndc: NDC,
                },
            )
            .await
        {
            Ok(()) => {}
            Err((ErrorCode::Validation, _)) => {} // already set by an earlier run
            Err(e) => return Err(format!("{e:?}")),
        }
        let funds_id =
            TransferId::parse(&format!("00000000-0000-4000-8000-{i:012x}")).ok_or("id")?;
        hub.admin(
            now_ms(),
            Admin::FundsIn {
                account,
                amount: NDC,
                funds_id,
            },
        )
        .await
        .map_err(|e| format!("{e:?}"))?;
    }
    Ok(())
}

async fn run(dir: PathBuf, seed: u64) -> Result<(), String> {
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
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let fulfilment = [7u8; 32];
    let condition: [u8; 32] = Sha256::digest(fulfilment).into();
    let mut stdout = std::io::stdout();
    let mut in_flight = 0usize;
    let mut counter = 0u64;
    loop {
        while in_flight < IN_FLIGHT_MAX {
            counter += 1;
            let payer = (next() % DFSPS as u64) as usize;
            let payee = (payer + 1 + (next() % (DFSPS as u64 - 1)) as usize) % DFSPS;
            let id = format!(
                "{:08x}-{:04x}-4000-8000-{:012x}",
                seed & 0xffff_ffff,
                counter >> 48,
                counter & 0xffff_ffff_ffff
            );
            let transfer_id = TransferId::parse(&id).ok_or("id")?;
            let prepare = Prepare {
                transfer_id,
                payer: fsp(payer),
                payee: fsp(payee),
                currency: currency(),
                amount: 1 + (next() % 50_000) as i64,
                condition,
                expiration_ms: now_ms() + 30_000,
                body_hash: [1; 16],
                payload: Vec::new(),
            };
            let partition = hub.partition_of(&transfer_id);
            if hub
                .enqueue(
                    partition,
                    Command::Prepare {
                        now_ms: now_ms(),
                        prepare,
                    },
                )
                .is_err()
            {
                break;
            }
            in_flight += 1;
        }
        let Some(event) = events.recv().await else {
            return Err("event stream closed".into());
        };
        let line = match &*event.event {
            Event::Reserved { parties, .. } => {
                // Two in three are fulfilled, the rest rejected by the payee.
                let command = if next() % 3 == 0 {
                    Command::Reject {
                        now_ms: now_ms(),
                        reject: Reject {
                            transfer_id: parties.transfer_id,
                            source: parties.payee,
                            error_code: 5101,
                            body_hash: [2; 16],
                            payload: Vec::new(),
                        },
                    }
                } else {
                    Command::Fulfil {
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
                    }
                };
                let _ = hub.enqueue(hub.partition_of(&parties.transfer_id), command);
                format!("R {} {}", parties.transfer_id, parties.payer)
            }
            Event::Committed { parties, .. } => {
                in_flight = in_flight.saturating_sub(1);
                format!("C {} {}", parties.transfer_id, parties.payer)
            }
            Event::Aborted { parties, .. } => {
                in_flight = in_flight.saturating_sub(1);
                format!("A {} {}", parties.transfer_id, parties.payer)
            }
            Event::PrepareRefused { .. } => {
                in_flight = in_flight.saturating_sub(1);
                continue;
            }
            _ => continue,
        };
        writeln!(stdout, "{line}").map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
    }
}

async fn audit(dir: PathBuf, released: PathBuf) -> Result<(), String> {
    let (hub, mut events) = Hub::open(config(dir)).map_err(|e| e.to_string())?;
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    let text = std::fs::read_to_string(&released).map_err(|e| e.to_string())?;
    let mut checked = 0usize;
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let [kind, id, payer] = parts[..] else {
            continue;
        }; // a line cut by the kill
        let (Some(transfer_id), Some(payer)) = (TransferId::parse(id), FspId::new(payer)) else {
            continue;
        };
        let view = hub
            .get_transfer(transfer_id, payer)
            .await
            .map_err(|code| format!("{line}: lost after restart ({code:?})"))?;
        let ok = match kind {
            "C" => view.state == TransferState::Committed,
            "A" => view.state == TransferState::Aborted,
            "R" => view.state != TransferState::Received,
            _ => true,
        };
        if !ok {
            return Err(format!("{line}: state of record is {:?}", view.state));
        }
        checked += 1;
    }
    // Money is conserved (all initial positions are zero) and nobody is over its limit.
    let mut total = 0i128;
    for i in 0..DFSPS {
        let account = AccountKey::new(fsp(i), currency());
        let view = hub.account(account).await.ok_or("account lost")?;
        if view.position + view.reserved > i128::from(NDC) {
            return Err(format!("{account:?} over its limit: {view:?}"));
        }
        total += view.position;
    }
    if total != 0 {
        return Err(format!("positions sum to {total}, not 0"));
    }
    hub.shutdown()
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    println!("audit ok: {checked} released results intact");
    Ok(())
}
