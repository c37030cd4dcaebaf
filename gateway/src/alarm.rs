//! Net Debit Cap threshold alarms: when an account's `position + reserved` crosses its
//! `alarmPercentage` of its NDC, the operator is told once per crossing: a counter in
//! `/metrics` (`hub_ndc_threshold_breaches_total`, no account label), an entry in
//! `GET /alarms` on the admin API, and a POST to the participant's
//! `NET_DEBIT_CAP_THRESHOLD_BREACH_EMAIL` endpoint when it is an `http(s)://` URL.
//!
//! A watcher checks every account that has an alarm percentage every
//! `ALARM_CHECK_INTERVAL_MS`, from the engine's account view (summed over every slice), so
//! an alarm comes at most that long after the crossing and costs the ledger nothing: no
//! partition waits for it. An account is "above" from the check that finds it at or over
//! its threshold until a check finds it below; only the change to "above" alarms. What is
//! above is kept in memory only: after a restart an account still above alarms once more.

use crate::limits::{ALARMS_KEPT_MAX, ALARM_CHECK_INTERVAL_MS};
use crate::AppState;
use actix_web::{web, HttpResponse};
use engine::ids::{AccountKey, Currency, FspId};
use engine::money::format_amount;
use engine::runtime::now_ms;
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The endpoint type an alarm is posted to, as central-ledger names it.
pub const BREACH_ENDPOINT: &str = "NET_DEBIT_CAP_THRESHOLD_BREACH_EMAIL";

/// One crossing, as `GET /alarms` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    pub participant: String,
    pub currency: Currency,
    pub at_ms: i64,
    pub ndc: i128,
    pub position: i128,
    pub reserved: i128,
    /// The threshold in hundredths of a percent (`alarmPercentage` 80.5 is 8050).
    pub threshold_bp: i128,
}

impl Alarm {
    fn json(&self) -> Value {
        let amount = |value: i128| {
            i64::try_from(value)
                .map(|v| format_amount(v, self.currency))
                .unwrap_or_else(|_| value.to_string())
        };
        json!({
            "type": "NET_DEBIT_CAP_THRESHOLD_BREACH",
            "participant": self.participant,
            "currency": self.currency.as_str(),
            "netDebitCap": amount(self.ndc),
            "position": amount(self.position),
            "reservedValue": amount(self.reserved),
            "alarmPercentage": self.threshold_bp as f64 / 100.0,
            "date": crate::fspiop::format_timestamp(self.at_ms),
        })
    }
}

/// Which accounts are above their threshold, and the last alarms.
#[derive(Default)]
pub struct Alarms {
    above: Mutex<BTreeMap<(String, Currency), bool>>,
    recent: Mutex<VecDeque<Alarm>>,
    breaches: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alarms {
    /// Crossings since start (the metric).
    pub fn breaches(&self) -> u64 {
        self.breaches.load(Ordering::Relaxed)
    }

    /// This module's lines of the Prometheus exposition.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP hub_ndc_threshold_breaches_total Times an account's position plus reserved \
             crossed its alarmPercentage of its net debit cap (GET /alarms lists them).\n",
        );
        out.push_str("# TYPE hub_ndc_threshold_breaches_total counter\n");
        out.push_str(&format!(
            "hub_ndc_threshold_breaches_total {}\n",
            self.breaches()
        ));
    }

    /// The last alarms, oldest first (at most `ALARMS_KEPT_MAX`).
    pub fn recent(&self) -> Vec<Alarm> {
        lock(&self.recent).iter().cloned().collect()
    }

    /// Records what a check found; `true` when it is a new crossing (an alarm).
    fn observe(&self, participant: &str, currency: Currency, above: bool) -> bool {
        let was = lock(&self.above).insert((participant.to_string(), currency), above);
        above && was != Some(true)
    }

    fn record(&self, alarm: Alarm) {
        self.breaches.fetch_add(1, Ordering::Relaxed);
        let mut recent = lock(&self.recent);
        if recent.len() >= ALARMS_KEPT_MAX {
            recent.pop_front();
        }
        recent.push_back(alarm);
    }
}

/// `alarmPercentage` as hundredths of a percent; `None` outside 0..=100.
pub fn threshold_bp(pct: f64) -> Option<i128> {
    if !(0.0..=100.0).contains(&pct) {
        return None;
    }
    Some((pct * 100.0).round() as i128)
}

/// Whether `position + reserved` is at or over `threshold_bp` of `ndc` (integers only).
pub fn is_above(position: i128, reserved: i128, ndc: i128, threshold_bp: i128) -> bool {
    let used = position.saturating_add(reserved);
    used.saturating_mul(10_000) >= ndc.saturating_mul(threshold_bp)
}

/// Checks every account with an alarm percentage once.
pub async fn check_once(state: &AppState) {
    for participant in state.registry.all() {
        for (currency, pct) in &participant.alarm_pct {
            let (Some(fsp), Some(currency), Some(bp)) = (
                FspId::new(&participant.name),
                Currency::new(currency),
                threshold_bp(*pct),
            ) else {
                continue;
            };
            let Ok(Some(view)) = state.hub.account(AccountKey::new(fsp, currency)).await else {
                continue; // a partition cannot answer now: the next check will
            };
            if !view.limits_set || view.ndc <= 0 {
                continue;
            }
            let above = is_above(view.position, view.reserved, view.ndc, bp);
            if !state.alarms.observe(&participant.name, currency, above) {
                continue;
            }
            let alarm = Alarm {
                participant: participant.name.clone(),
                currency,
                at_ms: now_ms(),
                ndc: view.ndc,
                position: view.position,
                reserved: view.reserved,
                threshold_bp: bp,
            };
            tracing::warn!(
                participant = %alarm.participant,
                currency = currency.as_str(),
                "net debit cap threshold crossed"
            );
            if let Some(url) = participant.endpoints.get(BREACH_ENDPOINT) {
                if url.starts_with("http://") || url.starts_with("https://") {
                    let body = alarm.json().to_string();
                    let notifier = state.notifier.clone();
                    let url = url.clone();
                    tokio::spawn(async move { notifier.notify_operator(&url, &body).await });
                }
            }
            state.alarms.record(alarm);
        }
    }
}

/// Runs [`check_once`] every `ALARM_CHECK_INTERVAL_MS` until the task is aborted.
pub async fn watch(state: web::Data<AppState>) {
    let interval = Duration::from_millis(ALARM_CHECK_INTERVAL_MS);
    loop {
        check_once(&state).await;
        tokio::time::sleep(interval).await;
    }
}

/// `GET /alarms`: the last threshold crossings, oldest first.
pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let alarms: Vec<Value> = state.alarms.recent().iter().map(Alarm::json).collect();
    HttpResponse::Ok().json(alarms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_exact_in_integers() {
        assert_eq!(threshold_bp(80.0), Some(8_000));
        assert_eq!(threshold_bp(12.34), Some(1_234));
        assert_eq!(threshold_bp(100.5), None);
        assert_eq!(threshold_bp(-1.0), None);
        // 80 % of 1,000 is 800: at it is above, one below is not; reserved counts.
        assert!(is_above(800, 0, 1_000, 8_000));
        assert!(!is_above(799, 0, 1_000, 8_000));
        assert!(is_above(700, 100, 1_000, 8_000));
        assert!(!is_above(-5_000, 0, 1_000, 8_000));
    }

    #[test]
    fn only_a_crossing_alarms() {
        let alarms = Alarms::default();
        let usd = Currency::new("USD").expect("currency");
        assert!(!alarms.observe("dfsp1", usd, false));
        assert!(alarms.observe("dfsp1", usd, true), "below to above alarms");
        assert!(
            !alarms.observe("dfsp1", usd, true),
            "staying above does not"
        );
        assert!(!alarms.observe("dfsp1", usd, false));
        assert!(
            alarms.observe("dfsp1", usd, true),
            "a new crossing alarms again"
        );
        assert!(
            alarms.observe("dfsp2", usd, true),
            "accounts are independent"
        );
    }
}
