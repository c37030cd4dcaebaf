//! Counters for `/metrics` (Prometheus text format). Labels are bounded enums, never
//! participant or account names.

use std::sync::atomic::{AtomicU64, Ordering};

/// FSPIOP routes, as metric labels.
#[derive(Debug, Clone, Copy)]
pub enum Route {
    Prepare = 0,
    Fulfil = 1,
    Reject = 2,
    Get = 3,
}

const ROUTES: [&str; 4] = ["prepare", "fulfil", "reject", "get"];
/// Answer classes, as metric labels.
const CLASSES: [&str; 3] = ["accepted", "client_error", "unavailable"];

/// Callback outcomes, as metric labels.
#[derive(Debug, Clone, Copy)]
pub enum CallbackOutcome {
    Delivered = 0,
    HttpError = 1,
    NetworkError = 2,
    NoEndpoint = 3,
    GaveUp = 4,
}

const OUTCOMES: [&str; 5] = [
    "delivered",
    "http_error",
    "network_error",
    "no_endpoint",
    "gave_up",
];

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 3]; 4],
    request_us_total: [AtomicU64; 4],
    callbacks: [AtomicU64; 5],
    callback_us_total: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16, micros: u64) {
        let class = match status {
            200..=299 => 0,
            503 => 2,
            _ => 1,
        };
        self.requests[route as usize][class].fetch_add(1, Ordering::Relaxed);
        self.request_us_total[route as usize].fetch_add(micros, Ordering::Relaxed);
    }

    pub fn callback(&self, outcome: CallbackOutcome, micros: u64) {
        self.callbacks[outcome as usize].fetch_add(1, Ordering::Relaxed);
        self.callback_us_total.fetch_add(micros, Ordering::Relaxed);
    }

    pub fn callbacks(&self, outcome: CallbackOutcome) -> u64 {
        self.callbacks[outcome as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus exposition, engine figures included.
    pub fn render(
        &self,
        engine: &engine::runtime::EngineMetrics,
        partitions: &[engine::runtime::PartitionStatus],
    ) -> String {
        let mut out = String::new();
        out.push_str("# TYPE hub_requests_total counter\n");
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[r][c].load(Ordering::Relaxed);
                out.push_str(&format!(
                    "hub_requests_total{{route=\"{route}\",result=\"{class}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# TYPE hub_request_seconds_total counter\n");
        for (r, route) in ROUTES.iter().enumerate() {
            let us = self.request_us_total[r].load(Ordering::Relaxed);
            out.push_str(&format!(
                "hub_request_seconds_total{{route=\"{route}\"}} {}\n",
                us as f64 / 1e6
            ));
        }
        out.push_str("# TYPE hub_callbacks_total counter\n");
        for (o, outcome) in OUTCOMES.iter().enumerate() {
            let n = self.callbacks[o].load(Ordering::Relaxed);
            out.push_str(&format!(
                "hub_callbacks_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str("# TYPE hub_callback_seconds_total counter\n");
        out.push_str(&format!(
            "hub_callback_seconds_total {}\n",
            self.callback_us_total.load(Ordering::Relaxed) as f64 / 1e6
        ));
        let batches = engine.batches.max(1) as f64;
        out.push_str("# TYPE engine_group_commits_total counter\n");
        out.push_str(&format!("engine_group_commits_total {}\n", engine.batches));
        out.push_str("# TYPE engine_commands_total counter\n");
        out.push_str(&format!("engine_commands_total {}\n", engine.commands));
        out.push_str("# TYPE engine_batch_size_mean gauge\n");
        out.push_str(&format!(
            "engine_batch_size_mean {}\n",
            engine.commands as f64 / batches
        ));
        out.push_str("# TYPE engine_flush_latency_seconds_mean gauge\n");
        out.push_str(&format!(
            "engine_flush_latency_seconds_mean {}\n",
            engine.flush_latency_us_total as f64 / batches / 1e6
        ));
        out.push_str("# TYPE engine_fsyncs_total counter\n");
        out.push_str(&format!("engine_fsyncs_total {}\n", engine.fsyncs));
        out.push_str("# TYPE engine_parked_prepares gauge\n");
        out.push_str(&format!(
            "engine_parked_prepares {}\n",
            engine.parked_prepares
        ));
        out.push_str("# TYPE engine_limit_refusals_total counter\n");
        out.push_str(&format!("engine_limit_refusals_total {}\n", engine.denials));
        out.push_str("# TYPE engine_partition_queue_depth gauge\n");
        for p in partitions {
            out.push_str(&format!(
                "engine_partition_queue_depth{{partition=\"{}\"}} {}\n",
                p.partition, p.queue_depth
            ));
        }
        out
    }
}
