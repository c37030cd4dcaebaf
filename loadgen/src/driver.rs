//! Load loops: open loop at a scheduled rate (coordinated-omission safe), closed loop at a
//! fixed concurrency, and an open-loop ramp that steps the rate up until p99 breaks a bound.

use crate::ctx::Ctx;
use crate::dist::{AmountDist, Mix};
use crate::fspiop::{self, Money, PrepareBody};
use crate::http::SendError;
use crate::limits::TRANSFERS_MAX;
use crate::state::{inc, InFlight, Outcome};
use bytes::Bytes;
use hyper::Method;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// What to send.
#[derive(Debug, Clone)]
pub struct Traffic {
    pub mix: Mix,
    pub amounts: AmountDist,
    /// Expiration set on each prepare, from its send time.
    pub expiration: Duration,
}

/// A prepare ready to send.
pub struct Prepared {
    pub key: u128,
    pub payer: u32,
    pub payee: u32,
    pub currency: u16,
    pub amount: i64,
    pub condition: String,
    pub body: Bytes,
}

/// Draws a transfer: parties, currency, amount, id, the payee's condition, and the body.
pub fn make_transfer(ctx: &Ctx, traffic: &Traffic, rng: &mut StdRng) -> anyhow::Result<Prepared> {
    let (payer, payee) = traffic.mix.pick(rng);
    let currency = rng.gen_range(0..ctx.currencies.len()) as u16;
    let amount = traffic.amounts.sample(rng);
    let id = uuid::Builder::from_random_bytes(rng.gen()).into_uuid();
    let transfer_id = id.hyphenated().to_string();
    let fulfilment = fspiop::fulfilment_for(&ctx.secret, &transfer_id);
    let condition = fspiop::condition_of(&fulfilment);
    let amount_s = fspiop::format_amount(amount);
    let cur = &ctx.currencies[currency as usize];
    let body = PrepareBody {
        ilp_packet: fspiop::ilp_packet(&transfer_id, &amount_s, cur),
        transfer_id,
        payee_fsp: ctx.names[payee as usize].clone(),
        payer_fsp: ctx.names[payer as usize].clone(),
        amount: Money {
            currency: cur.clone(),
            amount: amount_s,
        },
        condition: condition.clone(),
        expiration: fspiop::iso8601_millis(SystemTime::now() + traffic.expiration),
    };
    Ok(Prepared {
        key: id.as_u128(),
        payer,
        payee,
        currency,
        amount,
        condition,
        body: Bytes::from(serde_json::to_vec(&body)?),
    })
}

/// Sends one prepare as its payer and books the synchronous answer. Latency counts from
/// `sched_us`, the time the send was due.
pub async fn send_prepare(
    ctx: &Ctx,
    t: Prepared,
    sched_us: u64,
    done: Option<oneshot::Sender<Outcome>>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let measured = sched_us >= ctx.stats.measure_start_us.load(Ordering::Relaxed);
    let (released_at_send, credits_at_send) = ctx.ledger.on_send(t.payer, t.currency, t.amount);
    let sent_us = ctx.clock.now_us();
    ctx.table.insert(
        t.key,
        InFlight {
            payer: t.payer,
            payee: t.payee,
            currency: t.currency,
            amount: t.amount,
            condition: t.condition,
            sched_us,
            sent_us,
            forwarded_us: None,
            fulfil_sent_us: None,
            measured,
            released_at_send,
            credits_at_send,
            done,
            permit,
        },
    );
    inc(&ctx.stats.counters.sent);
    if measured {
        ctx.stats.record_sent(sched_us);
    }
    let date = fspiop::http_date(SystemTime::now());
    let payer = &ctx.names[t.payer as usize];
    let payee = &ctx.names[t.payee as usize];
    let headers = [
        ("content-type", fspiop::CONTENT_TYPE_TRANSFERS),
        ("accept", fspiop::ACCEPT_TRANSFERS),
        ("date", date.as_str()),
        (fspiop::H_SOURCE, payer.as_str()),
        (fspiop::H_DESTINATION, payee.as_str()),
        (fspiop::H_URI, "/transfers"),
        (fspiop::H_METHOD, "POST"),
    ];
    let url = format!("{}/transfers", ctx.hub_fspiop);
    match ctx.client.send(Method::POST, &url, &headers, t.body).await {
        Ok(r) if r.status.as_u16() == 202 => {
            inc(&ctx.stats.counters.accepted);
            if measured {
                ctx.stats
                    .accepted
                    .record(ctx.clock.now_us().saturating_sub(sched_us));
            }
        }
        Ok(r) => {
            // Refused synchronously: the hub did not take the transfer.
            let code = serde_json::from_slice::<fspiop::ErrorBody>(&r.body)
                .map(|b| b.error_information.error_code)
                .unwrap_or_else(|_| format!("http_{}", r.status.as_u16()));
            if let Some(e) = ctx.table.remove(t.key) {
                ctx.finish(e, Outcome::Refused(code));
            }
        }
        Err(SendError::NotSent(_)) => {
            // The hub never saw it.
            inc(&ctx.stats.counters.transport_errors);
            if let Some(e) = ctx.table.remove(t.key) {
                ctx.finish(e, Outcome::Refused("not_sent".into()));
            }
        }
        Err(SendError::Failed(_)) => {
            // The hub may or may not have taken it: leave it in flight (a callback may still
            // come; otherwise it is reported unfinished and the audit allows for it).
            inc(&ctx.stats.counters.transport_errors);
            let _ = ctx.table.with(t.key, |e| {
                if let Some(tx) = e.done.take() {
                    let _ = tx.send(Outcome::Refused("transport".into()));
                }
            });
        }
    }
}

/// Rate of the open loop over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Schedule {
    /// Constant rate (transfers per second).
    Constant(f64),
    /// `start + step * k` during step k (each `step_seconds` long), until p99 of the
    /// end-to-end latency in a step exceeds `p99_bound_ms` or the hub stops keeping up.
    Ramp {
        start: f64,
        step: f64,
        step_seconds: u64,
        p99_bound_ms: f64,
    },
}

/// One step of a ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub target_rate: f64,
    /// Transfers finished (committed or failed) per second during the step.
    pub achieved_rate: f64,
    pub committed_rate: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub passed: bool,
}

/// Outcome of a ramp.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RampResult {
    pub steps: Vec<RampStep>,
    /// Highest target rate whose step met the bound.
    pub knee_rate: Option<f64>,
}

/// Bounds of a load phase.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Run-clock microseconds at which load starts, measuring starts, and load stops.
    pub start_us: u64,
    pub measure_us: u64,
    pub end_us: u64,
}

/// Open loop: transfer i is due at a scheduled time; a send that cannot start on time
/// (in-flight cap reached, scheduler late) still has its latency counted from that time.
/// A ramp runs its steps (each followed by a settle pause) until a step breaks the bound
/// or `--seconds` worth of steps are done. Returns the ramp result and the sends started.
pub async fn open_loop(
    ctx: Arc<Ctx>,
    traffic: Arc<Traffic>,
    schedule: Schedule,
    window: Window,
    max_in_flight: usize,
    seed: u64,
) -> anyhow::Result<(RampResult, u64)> {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut rng = StdRng::seed_from_u64(seed);
    let mut due = window.start_us as f64;
    let mut ramp = RampResult::default();
    let mut step_idx: u64 = 0;
    let mut rate = match &schedule {
        Schedule::Constant(r) => *r,
        Schedule::Ramp { start, .. } => *start,
    };
    let settle_us = RAMP_SETTLE.as_micros() as u64;
    let (step_us, max_steps) = match &schedule {
        Schedule::Constant(_) => (u64::MAX, 0),
        Schedule::Ramp { step_seconds, .. } => (
            step_seconds * 1_000_000,
            ((window.end_us - window.measure_us) / (step_seconds * 1_000_000)).max(1),
        ),
    };
    let mut step_start_us = window.measure_us;
    let mut n: u64 = 0;
    while n < TRANSFERS_MAX {
        let due_us = due as u64;
        if let Schedule::Ramp {
            step,
            step_seconds,
            p99_bound_ms,
            ..
        } = &schedule
        {
            if due_us >= step_start_us + step_us {
                // Let the step's last transfers finish, then judge it by the transfers
                // scheduled in it.
                let step_end_us = step_start_us + step_us;
                tokio::time::sleep_until(ctx.clock.instant_at(step_end_us + settle_us).into())
                    .await;
                let first = ((step_start_us - window.measure_us) / 1_000_000) as usize;
                let s = judge_step(&ctx, first, *step_seconds, rate, *p99_bound_ms);
                let passed = s.passed;
                ramp.steps.push(s);
                if !passed {
                    break;
                }
                ramp.knee_rate = Some(rate);
                step_idx += 1;
                if step_idx >= max_steps {
                    break;
                }
                rate += step;
                // The next step starts after the pause (which is not load).
                step_start_us = step_end_us + settle_us;
                due = step_start_us as f64;
                continue;
            }
        } else if due_us >= window.end_us {
            break;
        }
        let now = ctx.clock.now_us();
        if due_us > now {
            tokio::time::sleep_until(ctx.clock.instant_at(due_us).into()).await;
        }
        // Sends wait for a free slot, but never past the end of the window (or ramp step):
        // what could not be sent by then is counted as unsent backlog.
        let deadline_us = if step_us == u64::MAX {
            window.end_us
        } else {
            step_start_us + step_us
        };
        let permit = tokio::select! {
            biased;
            p = slots.clone().acquire_owned() => p?,
            _ = tokio::time::sleep_until(ctx.clock.instant_at(deadline_us).into()) => {
                let left = ((deadline_us as f64 - due) * rate / 1_000_000.0).ceil().max(0.0) as u64;
                ctx.stats.counters.unsent.fetch_add(left, Ordering::Relaxed);
                if step_us == u64::MAX {
                    break;
                }
                due = deadline_us as f64;
                continue;
            }
        };
        let t = make_transfer(&ctx, &traffic, &mut rng)?;
        let c = ctx.clone();
        tokio::spawn(async move { send_prepare(&c, t, due_us, None, Some(permit)).await });
        n += 1;
        due += 1_000_000.0 / rate;
    }
    Ok((ramp, n))
}

/// Pause after each ramp step before it is judged (whole seconds keep steps aligned with
/// the per-second series).
pub const RAMP_SETTLE: Duration = Duration::from_secs(1);

fn judge_step(
    ctx: &Ctx,
    first_second: usize,
    step_seconds: u64,
    rate: f64,
    bound_ms: f64,
) -> RampStep {
    let a = first_second;
    let b = a + step_seconds as usize;
    let (done, h) = ctx.stats.window_by_sched(a, b);
    let (_, errors, _) = ctx.stats.window(a, b);
    let committed = h.len();
    let p99_ms = if h.is_empty() {
        f64::INFINITY
    } else {
        h.value_at_quantile(0.99) as f64 / 1000.0
    };
    let secs = step_seconds.max(1) as f64;
    let achieved = done as f64 / secs;
    RampStep {
        target_rate: rate,
        achieved_rate: achieved,
        committed_rate: committed as f64 / secs,
        p99_ms,
        errors,
        // Keeping up (90% of what the step offered finished by the end of the pause
        // after it; payee rejects and timeouts count as finished) with p99 within bound.
        passed: p99_ms <= bound_ms && achieved >= 0.9 * rate,
    }
}

/// How long a closed-loop client waits for a transfer's final callback before moving on
/// (the transfer stays in flight and is reported if it never finishes).
pub fn closed_loop_wait(expiration: Duration) -> Duration {
    expiration + Duration::from_secs(5)
}

/// Closed loop: `concurrency` clients, each sending its next transfer when the previous
/// one finished. Returns 0 (every send has started when it returns).
pub async fn closed_loop(
    ctx: Arc<Ctx>,
    traffic: Arc<Traffic>,
    window: Window,
    concurrency: usize,
    seed: u64,
) -> anyhow::Result<u64> {
    let mut set = tokio::task::JoinSet::new();
    let per_client = TRANSFERS_MAX / concurrency.max(1) as u64;
    for w in 0..concurrency {
        let ctx = ctx.clone();
        let traffic = traffic.clone();
        set.spawn(async move {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let wait = closed_loop_wait(traffic.expiration);
            // Spread the first sends over a millisecond per 64 clients.
            tokio::time::sleep(Duration::from_micros((w as u64 % 64) * 16)).await;
            let mut n = 0;
            while n < per_client {
                let now = ctx.clock.now_us();
                if now >= window.end_us {
                    break;
                }
                let t = make_transfer(&ctx, &traffic, &mut rng)?;
                let (tx, rx) = oneshot::channel();
                send_prepare(&ctx, t, now, Some(tx), None).await;
                let _ = tokio::time::timeout(wait, rx).await;
                n += 1;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(0)
}
