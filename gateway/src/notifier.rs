//! The notifier: turns engine events into FSPIOP callbacks to the DFSPs' registered
//! endpoints.
//!
//! One consumer reads the engine's event stream (events arrive only after their batch is
//! durable) and spawns one task per callback. Each callback is tried up to
//! `CALLBACK_ATTEMPTS_MAX` times with capped exponential backoff; every outcome is
//! counted.
//!
//! The run loop waits for one of `CALLBACKS_IN_FLIGHT_MAX` slots (back-pressure: events
//! wait in the engine's outbox meanwhile), so the danger is a DFSP that never answers:
//! each of its callbacks holds a slot for up to four 5 s timeouts, and a few such DFSPs
//! would hold every slot, stopping the run loop and with it everybody's callbacks. Hence
//! shedding per destination, in two layers:
//!
//! * **A share.** One DFSP holds at most `CALLBACKS_PER_DFSP_MAX` slots (a quarter of
//!   all); a callback over it is given up at once. So up to
//!   `CALLBACK_DFSPS_FAILING_TOLERATED` DFSPs at their full share still leave slots.
//! * **Marked down.** `CALLBACK_DOWN_AFTER_FAILURES` attempts in a row that failed without
//!   an HTTP answer (refused, reset, timed out) mark the DFSP down: its callbacks in
//!   flight are given up at once (an attempt waiting on its timeout is cancelled, a retry
//!   is not made), so its share comes free within one attempt timeout of the failures
//!   starting, and for `CALLBACK_DOWN_COOL_OFF_MS` its new callbacks are given up without
//!   an attempt. After the cool-off one callback at a time goes out as a probe: any HTTP
//!   answer marks the DFSP up, another failure starts a new cool-off. A DFSP that answers
//!   with errors (5xx) is alive and is not marked down; its retries stay within its share.
//!
//! A callback given up is not lost: the transfer's state is durable and the DFSP can GET
//! it. Every give-up is counted (`gave_up`, plus `hub_callbacks_shed_total` by reason
//! for those given up without an attempt); transitions are logged at warn, and shed
//! callbacks at most once per `CALLBACK_SHED_LOG_INTERVAL_MS` per DFSP, with their count.

use crate::client::{Client, ClientLimits, Request};
use crate::fspiop::{error_body, format_timestamp, media_type, Stash};
use crate::limits::{
    CALLBACKS_IN_FLIGHT_MAX, CALLBACKS_PER_DFSP_MAX, CALLBACK_ATTEMPTS_MAX,
    CALLBACK_BACKOFF_MAX_MS, CALLBACK_BACKOFF_START_MS, CALLBACK_DOWN_AFTER_FAILURES,
    CALLBACK_DOWN_COOL_OFF_MS, CALLBACK_IDLE_PER_DFSP_MAX, CALLBACK_IDLE_TOTAL_MAX,
    CALLBACK_POOL_IDLE_MS, CALLBACK_RESPONSE_BODY_BYTES_MAX, CALLBACK_RESPONSE_HEAD_BYTES_MAX,
    CALLBACK_SHED_LOG_INTERVAL_MS, CALLBACK_TIMEOUT_MS,
};
use crate::metrics::{CallbackOutcome, Metrics};
use crate::registry::{Registry, TRANSFER_ERROR, TRANSFER_POST, TRANSFER_PUT};
use engine::command::{ErrorCode, Event, TransferState};
use engine::ids::FspId;
use engine::runtime::{AckToken, Delivery};
use serde_json::json;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};

/// One HTTP request to a DFSP.
#[derive(Debug, Clone)]
pub struct Callback {
    pub to: FspId,
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Why a callback was given up without an attempt (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// The DFSP is marked down (cool-off, or its one probe is out).
    Down = 0,
    /// The DFSP already holds `CALLBACKS_PER_DFSP_MAX` slots.
    ShareFull = 1,
}

const SHED_REASONS: [&str; 2] = ["dfsp_down", "dfsp_share_full"];

/// What the notifier knows of one DFSP's health. One per DFSP that was ever sent a
/// callback, so at most one per registered participant (`PARTICIPANTS_MAX`).
struct Destination {
    /// `CALLBACKS_PER_DFSP_MAX` permits, one held by each of its callbacks in flight.
    share: Arc<Semaphore>,
    /// Attempts in a row that failed without an HTTP answer.
    failures_in_row: u32,
    /// `Some` while marked down.
    down: Option<Down>,
    /// Bumped when the DFSP is marked down: its callbacks in flight give up.
    cancel: watch::Sender<u64>,
    /// Callbacks shed since the last warning about them.
    shed_unlogged: u64,
    shed_logged_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Down {
    /// New callbacks are given up at once until then; the first one after is the probe.
    until: Instant,
}

/// A callback let through: it holds its DFSP's share permit for its whole life.
struct Admitted {
    _share: OwnedSemaphorePermit,
    /// The one callback sent to a DFSP that is marked down.
    probe: bool,
    /// Changes when the DFSP is marked down.
    cancel: watch::Receiver<u64>,
}

/// How one attempt ended, for the DFSP's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    /// The DFSP answered (2xx or not): it is alive.
    Answered,
    /// No HTTP answer: refused, reset or timed out.
    NoAnswer,
}

pub struct Notifier {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    hub_name: String,
    client: Client,
    overall: Arc<Semaphore>,
    destinations: Mutex<HashMap<FspId, Destination>>,
    shed: [AtomicU64; 2],
    marked_down_total: AtomicU64,
}

impl Notifier {
    /// A notifier for `http://` endpoints only.
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, hub_name: String) -> Arc<Notifier> {
        Notifier::with_tls(registry, metrics, hub_name, None)
    }

    /// A notifier that also calls `https://` endpoints, with this TLS configuration (the
    /// CAs DFSP servers must chain to, and the hub's own certificate if it has one).
    pub fn with_tls(
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        hub_name: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Arc<Notifier> {
        let limits = ClientLimits {
            exchange_timeout: Duration::from_millis(CALLBACK_TIMEOUT_MS),
            connect_timeout: Duration::from_millis(CALLBACK_TIMEOUT_MS),
            idle_timeout: Duration::from_millis(CALLBACK_POOL_IDLE_MS),
            idle_per_host_max: CALLBACK_IDLE_PER_DFSP_MAX,
            idle_total_max: CALLBACK_IDLE_TOTAL_MAX,
            response_head_bytes_max: CALLBACK_RESPONSE_HEAD_BYTES_MAX,
            response_body_bytes_max: CALLBACK_RESPONSE_BODY_BYTES_MAX,
        };
        let client = match tls {
            Some(tls) => Client::with_tls(limits, tls),
            None => Client::new(limits),
        };
        Arc::new(Notifier {
            registry,
            metrics,
            hub_name,
            client,
            overall: Arc::new(Semaphore::new(CALLBACKS_IN_FLIGHT_MAX)),
            destinations: Mutex::new(HashMap::new()),
            shed: Default::default(),
            marked_down_total: AtomicU64::new(0),
        })
    }

    /// Consumes the event stream until it ends (engine shutdown). Each event stays
    /// unacknowledged in the engine's outbox (published again after a crash) until every
    /// callback made of it is delivered or finally given up: each callback task holds a
    /// token of it.
    pub async fn run(self: Arc<Self>, mut events: mpsc::Receiver<Delivery>) {
        while let Some(delivery) = events.recv().await {
            for callback in self.callbacks_for(&delivery.event) {
                self.dispatch_acknowledged(callback, Some(delivery.token()))
                    .await;
            }
        }
    }

    /// Sends a callback in the background (waits only for a slot: back-pressure).
    pub async fn dispatch(self: &Arc<Self>, callback: Option<Callback>) {
        self.dispatch_acknowledged(callback, None).await
    }

    /// As [`Notifier::dispatch`], holding `token` (the engine event the callback comes
    /// from) until the callback is delivered or given up.
    async fn dispatch_acknowledged(
        self: &Arc<Self>,
        callback: Option<Callback>,
        token: Option<AckToken>,
    ) {
        let Some(callback) = callback else {
            self.metrics.callback(CallbackOutcome::NoEndpoint, None);
            return;
        };
        // Shedding comes first and never waits, so the slot waited for below is never one
        // that this DFSP's failures would hold.
        let admitted = match self.admit(callback.to) {
            Ok(admitted) => admitted,
            Err(reason) => {
                self.shed[reason as usize].fetch_add(1, Ordering::Relaxed);
                self.metrics.callback(CallbackOutcome::GaveUp, None);
                return;
            }
        };
        let Ok(permit) = self.overall.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _held = (permit, token);
            this.deliver(callback, admitted).await;
        });
    }

    /// Lets a callback to `to` through, or says why it is given up at once.
    fn admit(&self, to: FspId) -> Result<Admitted, Shed> {
        let now = Instant::now();
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let d = map.entry(to).or_insert_with(|| Destination {
            share: Arc::new(Semaphore::new(CALLBACKS_PER_DFSP_MAX)),
            failures_in_row: 0,
            down: None,
            cancel: watch::Sender::new(0),
            shed_unlogged: 0,
            shed_logged_at: None,
        });
        // Marked down: shed during the cool-off; after it, this callback is the probe,
        // and the next one waits for the probe's outcome (at most one attempt timeout;
        // should the probe be lost, another goes out after that).
        let probe = match d.down {
            None => false,
            Some(down) if now < down.until => return Err(self.shed_one(to, d, Shed::Down, now)),
            Some(_) => true,
        };
        let Ok(share) = d.share.clone().try_acquire_owned() else {
            return Err(self.shed_one(to, d, Shed::ShareFull, now));
        };
        if probe {
            let wait = Duration::from_millis(CALLBACK_TIMEOUT_MS + CALLBACK_DOWN_COOL_OFF_MS);
            d.down = Some(Down { until: now + wait });
        }
        Ok(Admitted {
            _share: share,
            probe,
            cancel: d.cancel.subscribe(),
        })
    }

    /// Counts and (at most once per `CALLBACK_SHED_LOG_INTERVAL_MS`) logs a callback to
    /// `d` given up at once.
    fn shed_one(&self, to: FspId, d: &mut Destination, reason: Shed, now: Instant) -> Shed {
        d.shed_unlogged += 1;
        let log_due = d.shed_logged_at.is_none_or(|at| {
            now.duration_since(at) >= Duration::from_millis(CALLBACK_SHED_LOG_INTERVAL_MS)
        });
        if log_due {
            warn!(
                %to,
                reason = SHED_REASONS[reason as usize],
                shed = d.shed_unlogged,
                share = CALLBACKS_PER_DFSP_MAX,
                "callbacks given up at once (the DFSP can GET the transfers)"
            );
            d.shed_unlogged = 0;
            d.shed_logged_at = Some(now);
        }
        reason
    }

    /// Records how an attempt to `to` ended: marks the DFSP down or up.
    fn record(&self, to: FspId, health: Health, probe: bool) {
        let now = Instant::now();
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        let Some(d) = map.get_mut(&to) else {
            return;
        };
        match health {
            Health::Answered => {
                d.failures_in_row = 0;
                if d.down.take().is_some() {
                    warn!(%to, "DFSP answers again: marked up");
                }
            }
            Health::NoAnswer => {
                d.failures_in_row = d.failures_in_row.saturating_add(1);
                let until = now + Duration::from_millis(CALLBACK_DOWN_COOL_OFF_MS);
                if probe {
                    // The probe failed: another cool-off. Nothing else is in flight.
                    d.down = Some(Down { until });
                    warn!(%to, cool_off_ms = CALLBACK_DOWN_COOL_OFF_MS, "DFSP still down after a probe");
                } else if d.down.is_none() && d.failures_in_row >= CALLBACK_DOWN_AFTER_FAILURES {
                    d.down = Some(Down { until });
                    d.cancel.send_modify(|epoch| *epoch = epoch.wrapping_add(1));
                    self.marked_down_total.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        %to,
                        failures = d.failures_in_row,
                        cool_off_ms = CALLBACK_DOWN_COOL_OFF_MS,
                        "DFSP marked down: its callbacks in flight and new ones are given up"
                    );
                }
            }
        }
    }

    fn is_down(&self, to: FspId) -> bool {
        let map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&to).is_some_and(|d| d.down.is_some())
    }

    /// DFSPs marked down now.
    pub fn dfsps_down(&self) -> usize {
        let map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|d| d.down.is_some()).count()
    }

    /// Callbacks given up without an attempt (to a DFSP marked down or at its share).
    pub fn shed_total(&self) -> u64 {
        self.shed.iter().map(|n| n.load(Ordering::Relaxed)).sum()
    }

    /// Appends the notifier's own series to a Prometheus exposition: shed callbacks by
    /// reason, DFSPs marked down now and in all. Labels are the bounded reasons only.
    pub fn render_metrics(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP hub_callbacks_shed_total Callbacks given up without an attempt, by reason."
        );
        let _ = writeln!(out, "# TYPE hub_callbacks_shed_total counter");
        for (i, reason) in SHED_REASONS.iter().enumerate() {
            let n = self.shed[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "hub_callbacks_shed_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP hub_callback_dfsps_down DFSPs marked down now (callbacks shed, one probe at a time)."
        );
        let _ = writeln!(out, "# TYPE hub_callback_dfsps_down gauge");
        let _ = writeln!(out, "hub_callback_dfsps_down {}", self.dfsps_down());
        let _ = writeln!(out, "# TYPE hub_callback_dfsp_marked_down_total counter");
        let _ = writeln!(
            out,
            "hub_callback_dfsp_marked_down_total {}",
            self.marked_down_total.load(Ordering::Relaxed)
        );
    }

    /// Callbacks being delivered or waiting between retries.
    pub fn in_flight(&self) -> usize {
        CALLBACKS_IN_FLIGHT_MAX.saturating_sub(self.overall.available_permits())
    }

    /// Waits until every callback in flight has finished (delivered or given up), at most
    /// `grace`. Returns whether all finished. Used at shutdown, after the event stream
    /// has ended, so that a clean stop does not cut off callbacks mid-retry.
    pub async fn drain(&self, grace: Duration) -> bool {
        let all = u32::try_from(CALLBACKS_IN_FLIGHT_MAX).unwrap_or(u32::MAX);
        matches!(
            tokio::time::timeout(grace, self.overall.acquire_many(all)).await,
            Ok(Ok(_))
        )
    }

    async fn deliver(&self, callback: Callback, mut admitted: Admitted) {
        let started = Instant::now();
        let mut backoff_ms = CALLBACK_BACKOFF_START_MS;
        for attempt in 1..=CALLBACK_ATTEMPTS_MAX {
            // A DFSP marked down meanwhile gets no retry (a failed probe included).
            if attempt > 1 && self.is_down(callback.to) {
                debug!(to = %callback.to, attempt, "callback given up: DFSP marked down");
                self.metrics.callback(CallbackOutcome::GaveUp, None);
                return;
            }
            let outcome = tokio::select! {
                outcome = self.attempt(&callback) => outcome,
                // Marked down while this attempt waits: give up now, free the slot.
                _ = admitted.cancel.changed() => {
                    debug!(to = %callback.to, attempt, "callback given up: DFSP marked down");
                    self.metrics.callback(CallbackOutcome::GaveUp, None);
                    return;
                }
            };
            let health = match outcome {
                CallbackOutcome::NetworkError => Health::NoAnswer,
                _ => Health::Answered,
            };
            self.record(callback.to, health, admitted.probe);
            match outcome {
                CallbackOutcome::Delivered => {
                    self.metrics
                        .callback(outcome, Some(started.elapsed().as_micros() as u64));
                    return;
                }
                other => {
                    debug!(to = %callback.to, attempt, outcome = ?other, "callback failed");
                    self.metrics.callback(other, None);
                }
            }
            if attempt < CALLBACK_ATTEMPTS_MAX {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(CALLBACK_BACKOFF_MAX_MS);
            }
        }
        // The transfer's state is durable; the DFSP can still learn it with a GET.
        warn!(to = %callback.to, attempts = CALLBACK_ATTEMPTS_MAX, "callback given up");
        self.metrics.callback(CallbackOutcome::GaveUp, None);
    }

    /// Posts an operator notification (an NDC alarm) as JSON to `url`, once, through the
    /// callback client; `true` when it was answered 2xx. Not retried: the alarm also stays
    /// in `GET /alarms` and the metric.
    pub async fn notify_operator(&self, url: &str, body: &str) -> bool {
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let headers = [
            ("content-type", "application/json"),
            ("date", date.as_str()),
        ];
        let request = Request {
            method: "POST",
            url,
            headers: &headers,
            body: body.as_bytes(),
        };
        match self.client.send(request).await {
            Ok(response) => (200..300).contains(&response.status),
            Err(e) => {
                warn!(error = %e, "operator notification failed");
                false
            }
        }
    }

    async fn attempt(&self, callback: &Callback) -> CallbackOutcome {
        let headers: Vec<(&str, &str)> = callback
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let request = Request {
            method: callback.method,
            url: &callback.url,
            headers: &headers,
            body: callback.body.as_bytes(),
        };
        match self.client.send(request).await {
            Ok(response) if (200..300).contains(&response.status) => CallbackOutcome::Delivered,
            Ok(_) => CallbackOutcome::HttpError,
            Err(_) => CallbackOutcome::NetworkError,
        }
    }

    fn url(&self, fsp: FspId, kind: &str, transfer_id: &str) -> Option<String> {
        let template = self.registry.endpoint(fsp.as_str(), kind)?;
        Some(template.replace("{{transferId}}", transfer_id))
    }

    /// Headers of a message the hub makes itself: no `Accept`.
    fn hub_headers(&self, to: FspId, method: &str, path: &str) -> Vec<(String, String)> {
        vec![
            ("content-type".into(), media_type("1.1")),
            (
                "date".into(),
                httpdate::fmt_http_date(std::time::SystemTime::now()),
            ),
            ("fspiop-source".into(), self.hub_name.clone()),
            ("fspiop-destination".into(), to.as_str().to_string()),
            ("fspiop-uri".into(), path.to_string()),
            ("fspiop-http-method".into(), method.to_string()),
        ]
    }

    /// Headers of a message passed on from a DFSP: its own FSPIOP headers (so the
    /// receiver sees who wrote it and can check a signature), `Accept` only where
    /// `keep_accept` (the forwarded prepare), plus URI and method. A sender that left out
    /// `FSPIOP-Destination` gets it filled in: the hub knows where the message goes.
    /// A DFSP's own message passed on to `to` with the sender's FSPIOP headers (`Accept`
    /// only on the forwarded prepare, a `POST`), `None` where `to` has no such endpoint.
    fn passed_on(
        &self,
        stash: Stash,
        to: FspId,
        endpoint: &str,
        transfer_id: &str,
        method: &'static str,
        path: &str,
    ) -> Option<Callback> {
        let keep_accept = method == "POST";
        let mut headers: Vec<(String, String)> = stash
            .headers
            .into_iter()
            .filter(|(name, _)| keep_accept || name != "accept")
            .collect();
        if !headers.iter().any(|(name, _)| name == "fspiop-destination") {
            headers.push(("fspiop-destination".into(), to.as_str().to_string()));
        }
        headers.push(("fspiop-uri".into(), path.to_string()));
        headers.push(("fspiop-http-method".into(), method.to_string()));
        Some(Callback {
            to,
            method,
            url: self.url(to, endpoint, transfer_id)?,
            headers,
            body: stash.body,
        })
    }

    pub fn error_to(&self, to: FspId, transfer_id: &str, code: ErrorCode) -> Option<Callback> {
        let path = format!("/transfers/{transfer_id}/error");
        Some(Callback {
            to,
            method: "PUT",
            url: self.url(to, TRANSFER_ERROR, transfer_id)?,
            headers: self.hub_headers(to, "PUT", &path),
            body: error_body(code.code(), code.description()).to_string(),
        })
    }

    pub fn state_to(
        &self,
        to: FspId,
        transfer_id: &str,
        state: TransferState,
        fulfilment: Option<[u8; 32]>,
        completed_ms: Option<i64>,
        method: &'static str,
    ) -> Option<Callback> {
        let path = format!("/transfers/{transfer_id}");
        let mut body = json!({"transferState": state.as_str()});
        if let Some(f) = fulfilment {
            body["fulfilment"] = json!(crate::fspiop::encode_digest(&f));
        }
        if let Some(ms) = completed_ms {
            body["completedTimestamp"] = json!(format_timestamp(ms));
        }
        Some(Callback {
            to,
            method,
            url: self.url(to, TRANSFER_PUT, transfer_id)?,
            headers: self.hub_headers(to, method, &path),
            body: body.to_string(),
        })
    }

    /// The callbacks an event causes (`None` where the DFSP has no endpoint).
    pub fn callbacks_for(&self, event: &Event) -> Vec<Option<Callback>> {
        match event {
            Event::Reserved {
                parties, payload, ..
            } => {
                let id = parties.transfer_id.as_str();
                let Some(stash) = Stash::decode(payload) else {
                    return vec![None];
                };
                vec![self.passed_on(
                    stash,
                    parties.payee,
                    TRANSFER_POST,
                    id,
                    "POST",
                    "/transfers",
                )]
            }
            Event::PrepareRefused { parties, code, .. } => {
                vec![self.error_to(parties.payer, parties.transfer_id.as_str(), *code)]
            }
            Event::Committed {
                parties,
                fulfilment,
                completed_ms,
                notify_payee,
                payload,
            } => {
                let id = parties.transfer_id.as_str();
                let to_payer = match Stash::decode(payload) {
                    Some(stash) => self.passed_on(
                        stash,
                        parties.payer,
                        TRANSFER_PUT,
                        id,
                        "PUT",
                        &format!("/transfers/{id}"),
                    ),
                    None => self.state_to(
                        parties.payer,
                        id,
                        TransferState::Committed,
                        Some(*fulfilment),
                        Some(*completed_ms),
                        "PUT",
                    ),
                };
                let mut out = vec![to_payer];
                if *notify_payee {
                    out.push(self.state_to(
                        parties.payee,
                        id,
                        TransferState::Committed,
                        None,
                        Some(*completed_ms),
                        "PATCH",
                    ));
                }
                out
            }
            Event::Aborted {
                parties,
                code,
                notify_payee,
                payload,
            } => {
                let id = parties.transfer_id.as_str();
                let to_payer = match (code, Stash::decode(payload)) {
                    // The payee's own error is passed on with its headers.
                    (ErrorCode::Payee(_), Some(stash)) => self.passed_on(
                        stash,
                        parties.payer,
                        TRANSFER_ERROR,
                        id,
                        "PUT",
                        &format!("/transfers/{id}/error"),
                    ),
                    _ => self.error_to(parties.payer, id, *code),
                };
                let mut out = vec![to_payer];
                if *notify_payee {
                    out.push(self.error_to(parties.payee, id, *code));
                }
                out
            }
            Event::RequestRefused {
                transfer_id,
                to,
                code,
            } => {
                vec![self.error_to(*to, transfer_id.as_str(), *code)]
            }
            Event::StateResent {
                parties,
                to,
                state,
                fulfilment,
                completed_ms,
            } => {
                vec![self.state_to(
                    *to,
                    parties.transfer_id.as_str(),
                    *state,
                    *fulfilment,
                    *completed_ms,
                    "PUT",
                )]
            }
            Event::AdminDone { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Participant;
    use engine::command::Parties;
    use engine::ids::{Currency, TransferId};
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    const ID: &str = "3c9b2a10-0000-4000-8000-000000000001";

    fn fsp(name: &str) -> FspId {
        FspId::new(name).expect("fsp")
    }

    fn participant(name: &str, seq: u64, base: &str) -> Participant {
        let mut endpoints = BTreeMap::new();
        endpoints.insert(TRANSFER_POST.to_string(), format!("{base}/transfers"));
        endpoints.insert(
            TRANSFER_PUT.to_string(),
            format!("{base}/transfers/{{{{transferId}}}}"),
        );
        endpoints.insert(
            TRANSFER_ERROR.to_string(),
            format!("{base}/transfers/{{{{transferId}}}}/error"),
        );
        Participant {
            name: name.into(),
            seq,
            created_ms: 0,
            is_active: true,
            currencies: vec!["USD".into()],
            endpoints,
            alarm_pct: BTreeMap::new(),
            inactive_currencies: Default::default(),
        }
    }

    fn notifier_for(payee_base: &str) -> Arc<Notifier> {
        let registry = Registry::with_participants(vec![
            participant("payer", 1, "http://127.0.0.1:9/payer"),
            participant("payee", 2, payee_base),
        ]);
        Notifier::new(Arc::new(registry), Arc::default(), "Hub".into())
    }

    fn parties() -> Parties {
        Parties {
            transfer_id: TransferId::parse(ID).expect("id"),
            payer: fsp("payer"),
            payee: fsp("payee"),
            currency: Currency::new("USD").expect("USD"),
            amount: 100,
        }
    }

    fn header<'a>(c: &'a Callback, name: &str) -> Option<&'a str> {
        c.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn stash(source: &str, destination: Option<&str>, body: &str) -> Vec<u8> {
        let mut headers = vec![
            ("content-type".to_string(), crate::fspiop::media_type("1.0")),
            ("accept".to_string(), crate::fspiop::media_type("1.0")),
            (
                "date".to_string(),
                "Tue, 15 Nov 1994 08:12:31 GMT".to_string(),
            ),
            ("fspiop-source".to_string(), source.to_string()),
        ];
        if let Some(d) = destination {
            headers.push(("fspiop-destination".to_string(), d.to_string()));
        }
        Stash {
            headers,
            body: body.to_string(),
        }
        .encode()
    }

    fn only(mut callbacks: Vec<Option<Callback>>) -> Callback {
        assert_eq!(callbacks.len(), 1);
        callbacks.pop().flatten().expect("a callback")
    }

    #[test]
    fn forwarded_prepare_keeps_the_payers_headers_and_accept() {
        let n = notifier_for("http://127.0.0.1:9/payee");
        let event = Event::Reserved {
            parties: parties(),
            expiration_ms: 0,
            payload: stash("payer", None, r#"{"transferId":"x"}"#),
        };
        let c = only(n.callbacks_for(&event));
        assert_eq!((c.method, c.to), ("POST", fsp("payee")));
        assert_eq!(c.url, "http://127.0.0.1:9/payee/transfers");
        assert_eq!(
            c.body, r#"{"transferId":"x"}"#,
            "the original body, byte for byte"
        );
        assert_eq!(header(&c, "fspiop-source"), Some("payer"));
        assert_eq!(header(&c, "fspiop-destination"), Some("payee"), "filled in");
        assert_eq!(
            header(&c, "content-type"),
            Some(crate::fspiop::media_type("1.0").as_str()),
            "the sender's version"
        );
        assert!(header(&c, "accept").is_some());
        assert_eq!(header(&c, "fspiop-uri"), Some("/transfers"));
        assert_eq!(header(&c, "fspiop-http-method"), Some("POST"));
    }

    #[test]
    fn hub_made_messages_carry_the_hub_name_and_no_accept() {
        let n = notifier_for("http://127.0.0.1:9/payee");
        let refused = Event::PrepareRefused {
            parties: parties(),
            code: ErrorCode::PayerLimit,
            payload: Vec::new(),
        };
        let c = only(n.callbacks_for(&refused));
        assert_eq!(
            c.url,
            format!("http://127.0.0.1:9/payer/transfers/{ID}/error")
        );
        assert_eq!(c.method, "PUT");
        assert_eq!(header(&c, "fspiop-source"), Some("Hub"));
        assert_eq!(header(&c, "fspiop-destination"), Some("payer"));
        assert_eq!(
            header(&c, "fspiop-uri"),
            Some(format!("/transfers/{ID}/error").as_str())
        );
        assert_eq!(header(&c, "fspiop-http-method"), Some("PUT"));
        assert_eq!(
            header(&c, "content-type"),
            Some(crate::fspiop::media_type("1.1").as_str())
        );
        assert!(header(&c, "accept").is_none());
        assert!(header(&c, "date").is_some_and(|d| httpdate::parse_http_date(d).is_ok()));
        let body: serde_json::Value = serde_json::from_str(&c.body).expect("json");
        assert_eq!(body["errorInformation"]["errorCode"], "4200");
        assert_eq!(
            body["errorInformation"]["errorDescription"],
            "Payer limit error"
        );
    }

    #[test]
    fn commit_goes_to_the_payer_and_a_patch_to_a_payee_that_asked() {
        let n = notifier_for("http://127.0.0.1:9/payee");
        let fulfil = r#"{"fulfilment":"f","transferState":"RESERVED"}"#;
        let event = Event::Committed {
            parties: parties(),
            fulfilment: [1; 32],
            completed_ms: 1_000,
            notify_payee: true,
            payload: stash("payee", Some("payer"), fulfil),
        };
        let out: Vec<Callback> = n.callbacks_for(&event).into_iter().flatten().collect();
        assert_eq!(out.len(), 2);
        let (payer, payee) = (&out[0], &out[1]);
        assert_eq!(
            payer.url,
            format!("http://127.0.0.1:9/payer/transfers/{ID}")
        );
        assert_eq!(payer.body, fulfil, "the payee's own fulfil is passed on");
        assert_eq!(header(payer, "fspiop-source"), Some("payee"));
        assert!(header(payer, "accept").is_none(), "no Accept on a callback");
        assert_eq!(payee.method, "PATCH");
        assert_eq!(
            payee.url,
            format!("http://127.0.0.1:9/payee/transfers/{ID}")
        );
        assert_eq!(header(payee, "fspiop-source"), Some("Hub"));
        let body: serde_json::Value = serde_json::from_str(&payee.body).expect("json");
        assert_eq!(body["transferState"], "COMMITTED");
        assert_eq!(body["completedTimestamp"], "1970-01-01T00:00:01.000Z");
        assert!(body.get("fulfilment").is_none());

        let no_patch = Event::Committed {
            parties: parties(),
            fulfilment: [1; 32],
            completed_ms: 1_000,
            notify_payee: false,
            payload: Vec::new(),
        };
        let c = only(n.callbacks_for(&no_patch));
        let body: serde_json::Value = serde_json::from_str(&c.body).expect("json");
        assert_eq!(
            body["transferState"], "COMMITTED",
            "hub-made when nothing was stashed"
        );
        assert_eq!(body["fulfilment"], crate::fspiop::encode_digest(&[1; 32]));
    }

    #[test]
    fn aborts_pass_the_payees_error_and_tell_both_on_timeout() {
        let n = notifier_for("http://127.0.0.1:9/payee");
        let reject = r#"{"errorInformation":{"errorCode":"5101","errorDescription":"no"}}"#;
        let rejected = Event::Aborted {
            parties: parties(),
            code: ErrorCode::Payee(5101),
            notify_payee: false,
            payload: stash("payee", Some("payer"), reject),
        };
        let c = only(n.callbacks_for(&rejected));
        assert_eq!(c.body, reject);
        assert_eq!(header(&c, "fspiop-source"), Some("payee"));

        let expired = Event::Aborted {
            parties: parties(),
            code: ErrorCode::TransferExpired,
            notify_payee: true,
            payload: Vec::new(),
        };
        let out: Vec<Callback> = n.callbacks_for(&expired).into_iter().flatten().collect();
        let targets: Vec<(FspId, &str)> = out.iter().map(|c| (c.to, c.method)).collect();
        assert_eq!(targets, vec![(fsp("payer"), "PUT"), (fsp("payee"), "PUT")]);
        for c in &out {
            assert!(c.url.ends_with(&format!("/transfers/{ID}/error")));
            assert!(c.body.contains("\"3303\""));
            assert_eq!(header(c, "fspiop-source"), Some("Hub"));
        }
    }

    #[test]
    fn resent_state_and_refusals_go_to_the_requester() {
        let n = notifier_for("http://127.0.0.1:9/payee");
        let resent = Event::StateResent {
            parties: parties(),
            to: fsp("payee"),
            state: TransferState::Aborted,
            fulfilment: None,
            completed_ms: None,
        };
        let c = only(n.callbacks_for(&resent));
        assert_eq!(c.url, format!("http://127.0.0.1:9/payee/transfers/{ID}"));
        assert_eq!(c.body, r#"{"transferState":"ABORTED"}"#);
        let refused = Event::RequestRefused {
            transfer_id: parties().transfer_id,
            to: fsp("payee"),
            code: ErrorCode::ModifiedRequest,
        };
        let c = only(n.callbacks_for(&refused));
        assert!(c.body.contains("\"3106\""));
        // A DFSP without endpoints gets nothing (counted as no_endpoint when dispatched).
        let unknown = Event::RequestRefused {
            transfer_id: parties().transfer_id,
            to: fsp("stranger"),
            code: ErrorCode::TransferNotFound,
        };
        assert!(n.callbacks_for(&unknown)[0].is_none());
        let admin = Event::AdminDone {
            request_id: 1,
            code: None,
            message: String::new(),
        };
        assert!(n.callbacks_for(&admin).is_empty());
    }

    /// A DFSP that answers 500 `failures` times, then 200; returns its base URL and a
    /// counter of requests it saw.
    async fn flaky_dfsp(failures: usize) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        test_dfsp(failures, Duration::ZERO).await
    }

    /// As [`flaky_dfsp`], answering each request after `delay`.
    async fn test_dfsp(
        failures: usize,
        delay: Duration,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        serve_dfsp(listener, failures, delay)
    }

    /// As [`test_dfsp`], on a listener already bound.
    fn serve_dfsp(
        listener: tokio::net::TcpListener,
        failures: usize,
        delay: Duration,
    ) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use hyper::server::conn::http1;
        use hyper::service::service_fn;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |_req| {
                        let n = counter.fetch_add(1, Ordering::SeqCst);
                        let status = if n < failures { 500 } else { 200 };
                        async move {
                            tokio::time::sleep(delay).await;
                            hyper::Response::builder()
                                .status(status)
                                .body(http_body_util::Full::new(bytes::Bytes::new()))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (format!("http://{addr}/payee"), seen)
    }

    fn refused_to_payee() -> Event {
        Event::RequestRefused {
            transfer_id: parties().transfer_id,
            to: fsp("payee"),
            code: ErrorCode::TransferNotFound,
        }
    }

    #[tokio::test]
    async fn failed_callbacks_are_retried_with_backoff_then_counted() {
        let (base, seen) = flaky_dfsp(2).await;
        let n = notifier_for(&base);
        let started = Instant::now();
        for c in n.callbacks_for(&refused_to_payee()) {
            n.dispatch(c).await;
        }
        assert!(n.drain(Duration::from_secs(10)).await);
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::HttpError), 2);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::Delivered), 1);
        // Two backoffs: CALLBACK_BACKOFF_START_MS, then twice that.
        assert!(started.elapsed() >= Duration::from_millis(3 * CALLBACK_BACKOFF_START_MS));
        assert_eq!(n.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_callback_that_never_succeeds_is_given_up_after_the_attempt_limit() {
        let (base, seen) = flaky_dfsp(usize::MAX).await;
        let n = notifier_for(&base);
        for c in n.callbacks_for(&refused_to_payee()) {
            n.dispatch(c).await;
        }
        assert!(n.drain(Duration::from_secs(20)).await);
        let attempts = CALLBACK_ATTEMPTS_MAX as usize;
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), attempts);
        assert_eq!(
            n.metrics.callbacks(CallbackOutcome::HttpError),
            attempts as u64
        );
        assert_eq!(n.metrics.callbacks(CallbackOutcome::GaveUp), 1);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::Delivered), 0);
    }

    #[tokio::test]
    async fn a_busy_but_healthy_dfsp_gets_every_callback() {
        // Far more callbacks at once than the old per-DFSP bound of 256 (a hot payer's
        // bursts), to a DFSP that answers each after 300 ms: none may be given up.
        const CALLBACKS: usize = 600;
        const _: () = assert!(CALLBACKS <= CALLBACKS_PER_DFSP_MAX);
        let (base, seen) = test_dfsp(0, Duration::from_millis(300)).await;
        let n = notifier_for(&base);
        for _ in 0..CALLBACKS {
            for c in n.callbacks_for(&refused_to_payee()) {
                n.dispatch(c).await;
            }
        }
        assert!(n.drain(Duration::from_secs(20)).await);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::GaveUp), 0);
        assert_eq!(
            n.metrics.callbacks(CallbackOutcome::Delivered),
            CALLBACKS as u64
        );
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), CALLBACKS);
    }

    // Dead DFSPs against a healthy one, over real TCP on 127.0.0.1.

    /// A DFSP that accepts connections and never answers; it holds them while alive.
    struct BlackHole {
        base: String,
        _task: tokio::task::JoinHandle<()>,
    }

    async fn black_hole() -> BlackHole {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        BlackHole {
            base: format!("http://{addr}/dead"),
            _task: task,
        }
    }

    fn notifier_with(dfsps: Vec<(&str, &str)>) -> Arc<Notifier> {
        let participants = dfsps
            .iter()
            .zip(1..)
            .map(|((name, base), seq)| participant(name, seq, base))
            .collect();
        let registry = Registry::with_participants(participants);
        Notifier::new(Arc::new(registry), Arc::default(), "Hub".into())
    }

    /// The healthy DFSP must have every callback within this long of the first dispatch,
    /// whatever the dead ones do. (Before the fix it had 1,023 of 1,500 after 3 s: the
    /// dispatch waited for the dead DFSPs' slots.)
    const HEALTHY_DELIVERY_MS_MAX: u64 = 3_000;
    /// Callbacks dispatched to each of the three DFSPs.
    const ROUNDS: usize = 1_500;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_dead_dfsps_do_not_starve_a_healthy_one() {
        // More callbacks to each dead DFSP than its share, interleaved with the healthy
        // DFSP's: before the fix, the two dead DFSPs held every global slot for their
        // 5 s timeouts and 4 attempts, and dispatch (the run loop) stopped.
        const _: () = assert!(ROUNDS > CALLBACKS_PER_DFSP_MAX);
        let dead_one = black_hole().await;
        let dead_two = black_hole().await;
        let (healthy, seen) = test_dfsp(0, Duration::ZERO).await;
        let n = notifier_with(vec![
            ("deadone", dead_one.base.as_str()),
            ("deadtwo", dead_two.base.as_str()),
            ("payee", healthy.as_str()),
        ]);
        let started = Instant::now();
        let dispatcher = {
            let n = n.clone();
            tokio::spawn(async move {
                for round in 0..ROUNDS {
                    // Paced a little, so that the healthy DFSP (answering at once) is never
                    // near its own share.
                    if round % 20 == 0 {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    for to in ["deadone", "deadtwo", "payee"] {
                        n.dispatch(n.error_to(fsp(to), ID, ErrorCode::TransferNotFound))
                            .await;
                    }
                }
            })
        };
        let deadline = started + Duration::from_millis(HEALTHY_DELIVERY_MS_MAX);
        let delivered = || n.metrics.callbacks(CallbackOutcome::Delivered) as usize;
        while delivered() < ROUNDS && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            (delivered(), seen.load(Ordering::SeqCst)),
            (ROUNDS, ROUNDS),
            "the healthy DFSP had only these callbacks after {HEALTHY_DELIVERY_MS_MAX} ms"
        );
        let rest = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(rest, dispatcher).await.is_ok(),
            "dispatch is still waiting for a slot"
        );
        // The dead DFSPs hold their share and no more; the rest was given up at once.
        let shed = n.shed_total();
        assert!(
            n.in_flight() <= 2 * CALLBACKS_PER_DFSP_MAX,
            "in flight: {}",
            n.in_flight()
        );
        assert_eq!(shed, 2 * (ROUNDS - CALLBACKS_PER_DFSP_MAX) as u64);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::GaveUp), shed);

        // Once their attempts time out, both are marked down: their slots come free, and
        // their new callbacks are given up at once (one probe at a time after the
        // cool-off), while the healthy DFSP is still served promptly.
        let down_by = Instant::now() + Duration::from_millis(CALLBACK_TIMEOUT_MS + 2_000);
        while n.dfsps_down() < 2 && Instant::now() < down_by {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(n.dfsps_down(), 2, "both dead DFSPs are marked down");
        let freed_by = Instant::now() + Duration::from_millis(1_000);
        while n.in_flight() > 2 && Instant::now() < freed_by {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(n.in_flight() <= 2, "in flight: {}", n.in_flight());
        let shed_before = n.shed_total();
        let again = Instant::now();
        for _ in 0..100 {
            for to in ["deadone", "deadtwo", "payee"] {
                n.dispatch(n.error_to(fsp(to), ID, ErrorCode::TransferNotFound))
                    .await;
            }
        }
        let deadline = again + Duration::from_millis(HEALTHY_DELIVERY_MS_MAX);
        while delivered() < ROUNDS + 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(delivered(), ROUNDS + 100);
        // At most one probe each went out; everything else was shed.
        assert!(n.shed_total() - shed_before >= 2 * 100 - 2);
        assert!(n.in_flight() <= 2, "in flight: {}", n.in_flight());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusing_dfsp_is_marked_down_then_up_again_by_one_probe() {
        // Nobody listens on the port: every connect is refused at once.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = closed.local_addr().expect("addr");
        drop(closed);
        let n = notifier_with(vec![("payee", format!("http://{addr}/payee").as_str())]);
        let refused = || n.error_to(fsp("payee"), ID, ErrorCode::TransferNotFound);
        for _ in 0..CALLBACK_DOWN_AFTER_FAILURES {
            n.dispatch(refused()).await;
        }
        let down_by = Instant::now() + Duration::from_millis(1_000);
        while n.dfsps_down() == 0 && Instant::now() < down_by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(n.dfsps_down(), 1, "marked down after refused connects");
        // Its retries are not made: every callback is given up within a moment, well
        // before the backoffs would have run out (0.1 + 0.2 + 0.4 s).
        assert!(n.drain(Duration::from_millis(300)).await);
        let attempts = n.metrics.callbacks(CallbackOutcome::NetworkError);
        assert!(
            attempts <= 2 * u64::from(CALLBACK_DOWN_AFTER_FAILURES),
            "{attempts} attempts"
        );
        // During the cool-off a callback is given up without an attempt.
        let shed_before = n.shed_total();
        n.dispatch(refused()).await;
        assert_eq!(n.shed_total(), shed_before + 1);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::NetworkError), attempts);
        let mut text = String::new();
        n.render_metrics(&mut text);
        assert!(
            text.contains("hub_callbacks_shed_total{reason=\"dfsp_down\"} 1"),
            "{text}"
        );
        assert!(text.contains("hub_callback_dfsps_down 1"), "{text}");

        // The DFSP comes back; after the cool-off one probe is sent and marks it up.
        let listener = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        let (_, seen) = serve_dfsp(listener, 0, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(CALLBACK_DOWN_COOL_OFF_MS + 100)).await;
        n.dispatch(refused()).await;
        assert!(n.drain(Duration::from_secs(2)).await);
        assert_eq!(seen.load(Ordering::SeqCst), 1, "the probe");
        assert_eq!(n.dfsps_down(), 0, "marked up by the probe's answer");
        for _ in 0..10 {
            n.dispatch(refused()).await;
        }
        assert!(n.drain(Duration::from_secs(2)).await);
        assert_eq!(seen.load(Ordering::SeqCst), 11);
        assert_eq!(n.metrics.callbacks(CallbackOutcome::Delivered), 11);
    }
}
