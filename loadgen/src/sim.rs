//! DFSP simulators: HTTP listeners on 127.0.0.1 that play every DFSP of the run.
//!
//! Each DFSP has its own path prefix, `/{dfsp}/transfers...`, registered with the hub as its
//! callback endpoints. As **payee** a simulator validates the forwarded prepare (headers and
//! body), answers 202, then, after the configured delay, either fulfils it
//! (`PUT /transfers/{id}` with the real fulfilment whose SHA-256 is the condition), rejects it
//! (`PUT /transfers/{id}/error`, 5104) or never answers. As **payer** it receives the final
//! callback, checks the fulfilment against the condition it sent and books the outcome.

use crate::ctx::Ctx;
use crate::fspiop::{self, ErrorBody, ErrorInformation, FulfilBody, PrepareBody};
use crate::http::{empty, read_body, serve, Body, Server};
use crate::limits::SIM_CONNECTIONS_MAX;
use crate::state::{inc, transfer_key, Outcome};
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::{Method, Request, Response, StatusCode};
use rand::Rng;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Endpoint registrations for one DFSP whose simulator listens at `base`
/// (`http://127.0.0.1:PORT`).
pub fn endpoints(base: &str, dfsp: &str) -> [(&'static str, String); 3] {
    [
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_POST",
            format!("{base}/{dfsp}/transfers"),
        ),
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_PUT",
            format!("{base}/{dfsp}/transfers/{{{{transferId}}}}"),
        ),
        (
            "FSPIOP_CALLBACK_URL_TRANSFER_ERROR",
            format!("{base}/{dfsp}/transfers/{{{{transferId}}}}/error"),
        ),
    ]
}

/// The running simulator listeners.
pub struct Simulators {
    pub servers: Vec<Server>,
}

impl Simulators {
    /// Starts `listeners` servers on ephemeral ports of 127.0.0.1.
    pub async fn start(ctx: Arc<Ctx>, listeners: usize) -> anyhow::Result<Self> {
        let mut servers = Vec::with_capacity(listeners);
        for _ in 0..listeners.max(1) {
            let c = ctx.clone();
            servers.push(serve(0, SIM_CONNECTIONS_MAX, move |req| handle(c.clone(), req)).await?);
        }
        Ok(Simulators { servers })
    }

    /// Base URL of the listener that serves DFSP `i`.
    pub fn base_for(&self, i: u32) -> String {
        let s = &self.servers[i as usize % self.servers.len()];
        format!("http://{}", s.addr)
    }

    pub async fn stop(self) {
        for s in self.servers {
            s.stop().await;
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Handles one request to a simulator listener.
pub async fn handle(ctx: Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if req.method() == Method::GET && segs == ["health"] {
        return empty(StatusCode::OK);
    }
    let Some(dfsp) = segs.first().and_then(|n| ctx.index.get(*n).copied()) else {
        ctx.stats.violations.record("callback.unknown_path", || {
            format!("{} {path}", req.method())
        });
        return empty(StatusCode::NOT_FOUND);
    };
    let method = req.method().clone();
    let headers = req.headers().clone();
    let body = match read_body(req.into_body()).await {
        Ok(b) => b,
        Err(_) => return empty(StatusCode::PAYLOAD_TOO_LARGE),
    };
    match (method, &segs[1..]) {
        (Method::POST, ["transfers"]) => on_prepare(&ctx, dfsp, &headers, &body),
        (Method::PUT, ["transfers", id]) => on_put(&ctx, dfsp, id, &headers, &body),
        (Method::PUT, ["transfers", id, "error"]) => on_error(&ctx, dfsp, id, &headers, &body),
        (Method::PATCH, ["transfers", _id]) => {
            inc(&ctx.stats.counters.payee_notices);
            empty(StatusCode::OK)
        }
        (m, _) => {
            ctx.stats
                .violations
                .record("callback.unknown_route", || format!("{m} {path}"));
            empty(StatusCode::NOT_FOUND)
        }
    }
}

/// Header checks shared by every message the simulators receive.
fn check_common(ctx: &Ctx, what: &str, h: &HeaderMap, dest: &str) {
    let v = &ctx.stats.violations;
    match header(h, "content-type") {
        Some(ct) if fspiop::is_transfers_content_type(ct) => {}
        other => v.record(&format!("{what}.content_type"), || format!("{other:?}")),
    }
    match header(h, "date") {
        Some(d) if httpdate::parse_http_date(d).is_ok() => {}
        other => v.record(&format!("{what}.date"), || format!("{other:?}")),
    }
    if header(h, fspiop::H_DESTINATION) != Some(dest) {
        v.record(&format!("{what}.fspiop_destination"), || {
            format!(
                "expected {dest}, got {:?}",
                header(h, fspiop::H_DESTINATION)
            )
        });
    }
}

/// Payee side: the hub forwards a prepare.
fn on_prepare(ctx: &Arc<Ctx>, dfsp: u32, h: &HeaderMap, body: &Bytes) -> Response<Body> {
    let me = &ctx.names[dfsp as usize];
    let v = &ctx.stats.violations;
    check_common(ctx, "prepare", h, me);
    match header(h, "accept") {
        Some(a) if a.contains(fspiop::MEDIA_TYPE_TRANSFERS) => {}
        other => v.record("prepare.accept", || format!("{other:?}")),
    }
    let p: PrepareBody = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) => {
            v.record("prepare.body", || e.to_string());
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    if header(h, fspiop::H_SOURCE) != Some(p.payer_fsp.as_str()) {
        v.record("prepare.fspiop_source", || {
            format!(
                "payer {}, FSPIOP-Source {:?}",
                p.payer_fsp,
                header(h, fspiop::H_SOURCE)
            )
        });
    }
    if &p.payee_fsp != me {
        v.record("prepare.payee", || format!("{} at {me}", p.payee_fsp));
    }
    if !fspiop::is_correlation_id(&p.transfer_id) {
        v.record("prepare.transfer_id", || p.transfer_id.clone());
    }
    if !fspiop::is_valid_amount(&p.amount.amount) {
        v.record("prepare.amount", || p.amount.amount.clone());
    }
    if !fspiop::is_binary32(&p.condition) {
        v.record("prepare.condition", || p.condition.clone());
    }
    if p.ilp_packet.is_empty() {
        v.record("prepare.ilp_packet", String::new);
    }
    let now = ctx.clock.now_us();
    if let Some(key) = transfer_key(&p.transfer_id) {
        let sent = ctx.table.with(key, |t| {
            t.forwarded_us = Some(now);
            (t.sent_us, t.measured)
        });
        if let Some((sent, true)) = sent {
            ctx.stats.forward.record(now.saturating_sub(sent));
        }
    }
    inc(&ctx.stats.counters.forwarded);

    // Decide how to answer.
    let sim = &ctx.sim;
    let roll: f64 = rand::thread_rng().gen_range(0.0..100.0);
    if roll < sim.no_answer_pct {
        inc(&ctx.stats.counters.no_answers);
        return empty(StatusCode::ACCEPTED);
    }
    let reject = roll < sim.no_answer_pct + sim.reject_pct;
    let Ok(permit) = ctx.answers.clone().try_acquire_owned() else {
        inc(&ctx.stats.counters.answers_dropped);
        return empty(StatusCode::ACCEPTED);
    };
    let delay = if sim.delay_max_ms > sim.delay_min_ms {
        rand::thread_rng().gen_range(sim.delay_min_ms..=sim.delay_max_ms)
    } else {
        sim.delay_min_ms
    };
    let ctx = ctx.clone();
    let me = me.clone();
    tokio::spawn(async move {
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        answer(&ctx, &me, &p, reject).await;
        drop(permit);
    });
    empty(StatusCode::ACCEPTED)
}

/// Sends the payee's fulfil or reject to the hub.
async fn answer(ctx: &Ctx, me: &str, p: &PrepareBody, reject: bool) {
    let fulfilment = fspiop::fulfilment_for(&ctx.secret, &p.transfer_id);
    let ours = fspiop::condition_of(&fulfilment) == p.condition;
    if !ours {
        ctx.stats
            .violations
            .record("prepare.condition_not_ours", || {
                format!("{}: {}", p.transfer_id, p.condition)
            });
    }
    let now_wall = SystemTime::now();
    let (path, body) = if reject || !ours {
        let b = ErrorBody {
            error_information: ErrorInformation {
                error_code: fspiop::PAYEE_REJECT_CODE.into(),
                error_description: if ours {
                    "Payee rejected transaction".into()
                } else {
                    "Payee rejected transaction: condition unknown".into()
                },
            },
        };
        (
            format!("/transfers/{}/error", p.transfer_id),
            serde_json::to_vec(&b),
        )
    } else {
        let b = FulfilBody {
            transfer_state: "COMMITTED".into(),
            fulfilment: Some(fspiop::b64url(&fulfilment)),
            completed_timestamp: Some(fspiop::iso8601_millis(now_wall)),
        };
        (
            format!("/transfers/{}", p.transfer_id),
            serde_json::to_vec(&b),
        )
    };
    let Ok(body) = body else { return };
    if let Some(key) = transfer_key(&p.transfer_id) {
        let now = ctx.clock.now_us();
        ctx.table.with(key, |t| t.fulfil_sent_us = Some(now));
    }
    let date = fspiop::http_date(now_wall);
    let headers = [
        ("content-type", fspiop::CONTENT_TYPE_TRANSFERS),
        ("date", date.as_str()),
        (fspiop::H_SOURCE, me),
        (fspiop::H_DESTINATION, p.payer_fsp.as_str()),
        (fspiop::H_URI, path.as_str()),
        (fspiop::H_METHOD, "PUT"),
    ];
    let url = format!("{}{path}", ctx.hub_fspiop);
    let counters = &ctx.stats.counters;
    if reject || !ours {
        inc(&counters.rejects_sent);
    } else {
        inc(&counters.fulfils_sent);
    }
    match ctx
        .client
        .send(Method::PUT, &url, &headers, Bytes::from(body))
        .await
    {
        Ok(r) if r.status.is_success() => {}
        Ok(r) => {
            inc(&counters.answer_not_accepted);
            ctx.stats.violations.record("hub.answer_refused", || {
                format!(
                    "{} {}: {}",
                    r.status,
                    path,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                )
            });
        }
        Err(e) => {
            inc(&counters.answer_not_accepted);
            ctx.stats
                .violations
                .record("hub.answer_failed", || format!("{path}: {e:#}"));
        }
    }
}

/// Checks on a callback from the hub: common headers, no Accept, and a source that is the
/// hub or the other party of the transfer.
fn check_callback(ctx: &Ctx, me: &str, h: &HeaderMap, other_party: Option<&str>) {
    check_common(ctx, "callback", h, me);
    if h.contains_key("accept") {
        ctx.stats.violations.record("callback.accept_present", || {
            format!("{:?}", h.get("accept"))
        });
    }
    let src = header(h, fspiop::H_SOURCE);
    let ok =
        src == Some(ctx.sim.hub_name.as_str()) || (other_party.is_some() && src == other_party);
    if !ok {
        ctx.stats
            .violations
            .record("callback.fspiop_source", || format!("{src:?}"));
    }
}

/// `PUT /{dfsp}/transfers/{id}`: the payer's final state (or a notice to the payee).
fn on_put(ctx: &Ctx, dfsp: u32, id: &str, h: &HeaderMap, body: &Bytes) -> Response<Body> {
    let me = &ctx.names[dfsp as usize];
    let Some(key) = transfer_key(id) else {
        inc(&ctx.stats.counters.late_or_unknown_callbacks);
        return empty(StatusCode::OK);
    };
    let role = ctx.table.with(key, |t| (t.payer, t.payee));
    let other = role.map(|(payer, payee)| {
        ctx.names[if payer == dfsp { payee } else { payer } as usize].clone()
    });
    check_callback(ctx, me, h, other.as_deref());
    let b: FulfilBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(e) => {
            ctx.stats
                .violations
                .record("callback.put_body", || e.to_string());
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    match role {
        Some((payer, _)) if payer == dfsp => {
            let outcome = match b.transfer_state.as_str() {
                "COMMITTED" => Outcome::Committed,
                "ABORTED" => Outcome::Rejected("ABORTED".into()),
                // RECEIVED / RESERVED: an interim state (answer to a GET), not final.
                _ => return empty(StatusCode::OK),
            };
            let Some(t) = ctx.table.remove(key) else {
                inc(&ctx.stats.counters.late_or_unknown_callbacks);
                return empty(StatusCode::OK);
            };
            if outcome == Outcome::Committed {
                let valid = b
                    .fulfilment
                    .as_deref()
                    .is_some_and(|f| fspiop::fulfilment_matches(f, &t.condition));
                if !valid {
                    inc(&ctx.stats.counters.invalid_fulfilments);
                    ctx.stats.violations.record("callback.fulfilment", || {
                        format!("{id}: {:?}", b.fulfilment)
                    });
                }
            }
            ctx.finish(t, outcome);
        }
        Some(_) => inc(&ctx.stats.counters.payee_notices),
        None => inc(&ctx.stats.counters.late_or_unknown_callbacks),
    }
    empty(StatusCode::OK)
}

/// `PUT /{dfsp}/transfers/{id}/error`: an error to the payer (final) or to the payee
/// (e.g. 3303 after a timeout).
fn on_error(ctx: &Ctx, dfsp: u32, id: &str, h: &HeaderMap, body: &Bytes) -> Response<Body> {
    let me = &ctx.names[dfsp as usize];
    let key = transfer_key(id);
    let role = key.and_then(|k| ctx.table.with(k, |t| (t.payer, t.payee)));
    let other = role.map(|(payer, payee)| {
        ctx.names[if payer == dfsp { payee } else { payer } as usize].clone()
    });
    check_callback(ctx, me, h, other.as_deref());
    let code = match serde_json::from_slice::<ErrorBody>(body) {
        Ok(b) => b.error_information.error_code,
        Err(e) => {
            ctx.stats
                .violations
                .record("callback.error_body", || e.to_string());
            return empty(StatusCode::BAD_REQUEST);
        }
    };
    match (key, role) {
        (Some(key), Some((payer, _))) if payer == dfsp => {
            if let Some(t) = ctx.table.remove(key) {
                ctx.finish(t, Outcome::Rejected(code));
            } else {
                inc(&ctx.stats.counters.late_or_unknown_callbacks);
            }
        }
        (_, Some(_)) => inc(&ctx.stats.counters.payee_notices),
        // The payee's copy of a timeout may come after the payer's finished the transfer.
        (_, None) if code == "3303" => inc(&ctx.stats.counters.payee_notices),
        (_, None) => inc(&ctx.stats.counters.late_or_unknown_callbacks),
    }
    empty(StatusCode::OK)
}
