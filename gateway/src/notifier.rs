//! The notifier: turns engine events into FSPIOP callbacks to the DFSPs' registered
//! endpoints.
//!
//! One consumer reads the engine's event stream (events arrive only after their batch is
//! durable) and spawns one task per callback. Two semaphores bound the work: at most
//! `CALLBACKS_IN_FLIGHT_MAX` callbacks overall and `CALLBACKS_PER_DFSP_MAX` per DFSP. A DFSP
//! that already has its share in flight (it is down or far behind) has further callbacks
//! given up at once and counted, so it never holds the slots the other DFSPs need. Each
//! callback is tried up to `CALLBACK_ATTEMPTS_MAX` times with capped exponential backoff;
//! every outcome is counted.

use crate::fspiop::{error_body, format_timestamp, media_type, Stash};
use crate::limits::{
    CALLBACKS_IN_FLIGHT_MAX, CALLBACKS_PER_DFSP_MAX, CALLBACK_ATTEMPTS_MAX,
    CALLBACK_BACKOFF_MAX_MS, CALLBACK_BACKOFF_START_MS, CALLBACK_TIMEOUT_MS,
};
use crate::metrics::{CallbackOutcome, Metrics};
use crate::registry::{Registry, TRANSFER_ERROR, TRANSFER_POST, TRANSFER_PUT};
use bytes::Bytes;
use engine::command::{ErrorCode, Event, TransferState};
use engine::ids::FspId;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;

/// One HTTP request to a DFSP.
#[derive(Debug, Clone)]
pub struct Callback {
    pub to: FspId,
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

pub struct Notifier {
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    hub_name: String,
    client: Client<HttpConnector, Full<Bytes>>,
    overall: Arc<Semaphore>,
    per_dfsp: Mutex<HashMap<FspId, Arc<Semaphore>>>,
}

impl Notifier {
    pub fn new(registry: Arc<Registry>, metrics: Arc<Metrics>, hub_name: String) -> Arc<Notifier> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(CALLBACK_TIMEOUT_MS)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Arc::new(Notifier {
            registry,
            metrics,
            hub_name,
            client,
            overall: Arc::new(Semaphore::new(CALLBACKS_IN_FLIGHT_MAX)),
            per_dfsp: Mutex::new(HashMap::new()),
        })
    }

    /// Consumes the event stream until it ends (engine shutdown).
    pub async fn run(self: Arc<Self>, mut events: mpsc::Receiver<Event>) {
        while let Some(event) = events.recv().await {
            for callback in self.callbacks_for(&event) {
                self.dispatch(callback).await;
            }
        }
    }

    /// Sends a callback in the background (waits only for a slot: back-pressure).
    pub async fn dispatch(self: &Arc<Self>, callback: Option<Callback>) {
        let Some(callback) = callback else {
            self.metrics.callback(CallbackOutcome::NoEndpoint, 0);
            return;
        };
        let dfsp = {
            let mut map = self.per_dfsp.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(callback.to)
                .or_insert_with(|| Arc::new(Semaphore::new(CALLBACKS_PER_DFSP_MAX)))
                .clone()
        };
        // A DFSP with CALLBACKS_PER_DFSP_MAX callbacks still in flight is down or far
        // behind: this callback is given up at once (counted; the DFSP can still GET the
        // transfer) rather than tie up slots that the other DFSPs need.
        let Ok(dfsp_permit) = dfsp.try_acquire_owned() else {
            self.metrics.callback(CallbackOutcome::GaveUp, 0);
            return;
        };
        let Ok(permit) = self.overall.clone().acquire_owned().await else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permits = (permit, dfsp_permit);
            this.deliver(callback).await;
        });
    }

    async fn deliver(&self, callback: Callback) {
        let started = Instant::now();
        let mut backoff_ms = CALLBACK_BACKOFF_START_MS;
        for attempt in 1..=CALLBACK_ATTEMPTS_MAX {
            let outcome = self.attempt(&callback).await;
            match outcome {
                CallbackOutcome::Delivered => {
                    self.metrics
                        .callback(outcome, started.elapsed().as_micros() as u64);
                    return;
                }
                other => {
                    debug!(to = %callback.to, attempt, outcome = ?other, "callback failed");
                    self.metrics.callback(other, 0);
                }
            }
            if attempt < CALLBACK_ATTEMPTS_MAX {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(CALLBACK_BACKOFF_MAX_MS);
            }
        }
        self.metrics.callback(
            CallbackOutcome::GaveUp,
            started.elapsed().as_micros() as u64,
        );
    }

    async fn attempt(&self, callback: &Callback) -> CallbackOutcome {
        let mut builder = hyper::Request::builder()
            .method(callback.method)
            .uri(&callback.url);
        for (name, value) in &callback.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let Ok(request) = builder.body(Full::new(Bytes::from(callback.body.clone()))) else {
            return CallbackOutcome::NetworkError;
        };
        match tokio::time::timeout(
            Duration::from_millis(CALLBACK_TIMEOUT_MS),
            self.client.request(request),
        )
        .await
        {
            Ok(Ok(response)) if response.status().is_success() => CallbackOutcome::Delivered,
            Ok(Ok(_)) => CallbackOutcome::HttpError,
            Ok(Err(_)) | Err(_) => CallbackOutcome::NetworkError,
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

    /// Headers of a message passed on from a DFSP: its own FSPIOP headers, `Accept` only
    /// where `keep_accept` (the forwarded prepare), plus URI and method.
    fn passed_headers(
        stash: &Stash,
        keep_accept: bool,
        method: &str,
        path: &str,
    ) -> Vec<(String, String)> {
        let mut headers: Vec<(String, String)> = stash
            .headers
            .iter()
            .filter(|(name, _)| keep_accept || name != "accept")
            .cloned()
            .collect();
        headers.push(("fspiop-uri".into(), path.to_string()));
        headers.push(("fspiop-http-method".into(), method.to_string()));
        headers
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
                vec![self
                    .url(parties.payee, TRANSFER_POST, id)
                    .map(|url| Callback {
                        to: parties.payee,
                        method: "POST",
                        url,
                        headers: Self::passed_headers(&stash, true, "POST", "/transfers"),
                        body: stash.body,
                    })]
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
                let path = format!("/transfers/{id}");
                let to_payer = match Stash::decode(payload) {
                    Some(stash) => self
                        .url(parties.payer, TRANSFER_PUT, id)
                        .map(|url| Callback {
                            to: parties.payer,
                            method: "PUT",
                            url,
                            headers: Self::passed_headers(&stash, false, "PUT", &path),
                            body: stash.body,
                        }),
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
                    (ErrorCode::Payee(_), Some(stash)) => {
                        let path = format!("/transfers/{id}/error");
                        self.url(parties.payer, TRANSFER_ERROR, id)
                            .map(|url| Callback {
                                to: parties.payer,
                                method: "PUT",
                                url,
                                headers: Self::passed_headers(&stash, false, "PUT", &path),
                                body: stash.body,
                            })
                    }
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
