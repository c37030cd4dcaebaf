//! Counters and histograms for `/metrics` (Prometheus text format 0.0.4). Labels are
//! bounded enums (route, result class, callback outcome, partition number), never
//! participant or account names: a label per DFSP would let the number of series grow
//! with the scheme.

use std::fmt::Write as _;
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

/// Callback outcomes, as metric labels. Every attempt that fails is counted with its
/// reason; a callback that is finally abandoned is counted once more as `gave_up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Upper bounds of the latency buckets, in microseconds (rendered in seconds).
const BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// A fixed-bucket latency histogram, lock-free. Buckets are stored non-cumulative and
/// summed when rendered.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_US.len()],
    /// Observations above the last bound.
    overflow: AtomicU64,
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, micros: u64) {
        match BUCKETS_US.iter().position(|bound| micros <= *bound) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.overflow.fetch_add(1, Ordering::Relaxed),
        };
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Appends `name_bucket`, `name_sum` and `name_count` lines; `labels` is either empty
    /// or `key="value",` pairs ending in a comma.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_US.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let trimmed = labels.trim_end_matches(',');
        let braces = if trimmed.is_empty() {
            String::new()
        } else {
            format!("{{{trimmed}}}")
        };
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {}", self.count());
    }
}

#[derive(Default)]
pub struct Metrics {
    requests: [[AtomicU64; 3]; 4],
    request_latency: [Histogram; 4],
    callbacks: [AtomicU64; 5],
    /// From the first attempt to the 2xx, retries included.
    callback_latency: Histogram,
}

/// Figures of the notifier at the moment of rendering.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotifierGauges {
    pub callbacks_in_flight: usize,
}

impl Metrics {
    pub fn request(&self, route: Route, status: u16, micros: u64) {
        let class = match status {
            200..=299 => 0,
            503 => 2,
            _ => 1,
        };
        self.requests[route as usize][class].fetch_add(1, Ordering::Relaxed);
        self.request_latency[route as usize].observe(micros);
    }

    /// Counts a callback outcome; `delivered_after_us` is the delivery latency of a
    /// delivered callback.
    pub fn callback(&self, outcome: CallbackOutcome, delivered_after_us: Option<u64>) {
        self.callbacks[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(micros) = delivered_after_us {
            self.callback_latency.observe(micros);
        }
    }

    pub fn callbacks(&self, outcome: CallbackOutcome) -> u64 {
        self.callbacks[outcome as usize].load(Ordering::Relaxed)
    }

    /// The Prometheus exposition, engine figures included.
    pub fn render(
        &self,
        engine: &engine::runtime::EngineMetrics,
        partitions: &[engine::runtime::PartitionStatus],
        notifier: NotifierGauges,
    ) -> String {
        let mut out = String::new();
        let mut line = |text: String| {
            out.push_str(&text);
            out.push('\n');
        };
        line("# HELP hub_requests_total FSPIOP requests by route and answer class.".into());
        line("# TYPE hub_requests_total counter".into());
        for (r, route) in ROUTES.iter().enumerate() {
            for (c, class) in CLASSES.iter().enumerate() {
                let n = self.requests[r][c].load(Ordering::Relaxed);
                line(format!(
                    "hub_requests_total{{route=\"{route}\",result=\"{class}\"}} {n}"
                ));
            }
        }
        line("# HELP hub_callbacks_total Callback attempts by outcome.".into());
        line("# TYPE hub_callbacks_total counter".into());
        for (o, outcome) in OUTCOMES.iter().enumerate() {
            let n = self.callbacks[o].load(Ordering::Relaxed);
            line(format!("hub_callbacks_total{{outcome=\"{outcome}\"}} {n}"));
        }
        line("# TYPE hub_callbacks_in_flight gauge".into());
        line(format!(
            "hub_callbacks_in_flight {}",
            notifier.callbacks_in_flight
        ));
        let batches = engine.batches.max(1) as f64;
        line("# HELP engine_group_commits_total Batches applied and made durable.".into());
        line("# TYPE engine_group_commits_total counter".into());
        line(format!("engine_group_commits_total {}", engine.batches));
        line("# TYPE engine_commands_total counter".into());
        line(format!("engine_commands_total {}", engine.commands));
        line("# HELP engine_batch_size_mean Commands per group commit since start.".into());
        line("# TYPE engine_batch_size_mean gauge".into());
        line(format!(
            "engine_batch_size_mean {}",
            engine.commands as f64 / batches
        ));
        line("# TYPE engine_flush_seconds_total counter".into());
        line(format!(
            "engine_flush_seconds_total {}",
            engine.flush_latency_us_total as f64 / 1e6
        ));
        line(
            "# HELP engine_flush_latency_seconds_mean Wait for durability per group commit.".into(),
        );
        line("# TYPE engine_flush_latency_seconds_mean gauge".into());
        line(format!(
            "engine_flush_latency_seconds_mean {}",
            engine.flush_latency_us_total as f64 / batches / 1e6
        ));
        line("# TYPE engine_fsyncs_total counter".into());
        line(format!("engine_fsyncs_total {}", engine.fsyncs));
        line(
            "# HELP engine_parked_prepares Prepares waiting for headroom from a home bank.".into(),
        );
        line("# TYPE engine_parked_prepares gauge".into());
        line(format!("engine_parked_prepares {}", engine.parked_prepares));
        line("# HELP engine_limit_refusals_total Prepares refused for headroom (4001/4200), decided at the home bank after a recall round.".into());
        line("# TYPE engine_limit_refusals_total counter".into());
        line(format!("engine_limit_refusals_total {}", engine.denials));
        line("# TYPE engine_partition_queue_depth gauge".into());
        for p in partitions {
            line(format!(
                "engine_partition_queue_depth{{partition=\"{}\"}} {}",
                p.partition, p.queue_depth
            ));
        }
        line("# HELP engine_partition_stopped 1 while a partition is stopped (a corrupt record, a storage failure; its reason is in /partitions), else 0.".into());
        line("# TYPE engine_partition_stopped gauge".into());
        for p in partitions {
            line(format!(
                "engine_partition_stopped{{partition=\"{}\"}} {}",
                p.partition,
                u8::from(p.stopped.is_some())
            ));
        }
        line("# HELP engine_outbox_events Results released and not yet acknowledged by the notifier, all partitions.".into());
        line("# TYPE engine_outbox_events gauge".into());
        line(format!("engine_outbox_events {}", engine.outbox_events));
        line("# HELP engine_events_shed_total Results shed from a full outbox (the notifier far behind); the DFSP can still GET the transfer.".into());
        line("# TYPE engine_events_shed_total counter".into());
        line(format!("engine_events_shed_total {}", engine.events_shed));
        line("# TYPE engine_partition_committed_batch gauge".into());
        for p in partitions {
            line(format!(
                "engine_partition_committed_batch{{partition=\"{}\"}} {}",
                p.partition, p.committed_batch
            ));
        }
        out.push_str(
            "# HELP hub_request_duration_seconds FSPIOP request latency (until durably accepted).\n",
        );
        out.push_str("# TYPE hub_request_duration_seconds histogram\n");
        for (r, route) in ROUTES.iter().enumerate() {
            self.request_latency[r].render(
                &mut out,
                "hub_request_duration_seconds",
                &format!("route=\"{route}\","),
            );
        }
        out.push_str(
            "# HELP hub_callback_delivery_seconds Callback latency to a 2xx, retries included.\n",
        );
        out.push_str("# TYPE hub_callback_delivery_seconds histogram\n");
        self.callback_latency
            .render(&mut out, "hub_callback_delivery_seconds", "");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    }

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::default();
        m.request(Route::Prepare, 202, 700);
        m.request(Route::Prepare, 400, 3_000);
        m.request(Route::Prepare, 503, 20_000_000);
        m.request(Route::Get, 202, 100);
        m.callback(CallbackOutcome::NetworkError, None);
        m.callback(CallbackOutcome::Delivered, Some(40_000));
        let text = m.render(
            &engine::runtime::EngineMetrics::default(),
            &[],
            NotifierGauges {
                callbacks_in_flight: 3,
            },
        );
        let series = |s: &str| sample(&text, s);
        assert_eq!(
            series("hub_requests_total{route=\"prepare\",result=\"accepted\"}"),
            1.0
        );
        assert_eq!(
            series("hub_requests_total{route=\"prepare\",result=\"client_error\"}"),
            1.0
        );
        assert_eq!(
            series("hub_requests_total{route=\"prepare\",result=\"unavailable\"}"),
            1.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_bucket{route=\"prepare\",le=\"0.001\"}"),
            1.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_bucket{route=\"prepare\",le=\"0.005\"}"),
            2.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_bucket{route=\"prepare\",le=\"10\"}"),
            2.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_bucket{route=\"prepare\",le=\"+Inf\"}"),
            3.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_count{route=\"prepare\"}"),
            3.0
        );
        assert_eq!(
            series("hub_request_duration_seconds_count{route=\"get\"}"),
            1.0
        );
        assert_eq!(
            series("hub_callbacks_total{outcome=\"network_error\"}"),
            1.0
        );
        assert_eq!(
            series("hub_callback_delivery_seconds_bucket{le=\"0.05\"}"),
            1.0
        );
        assert_eq!(series("hub_callback_delivery_seconds_count"), 1.0);
        assert_eq!(series("hub_callbacks_in_flight"), 3.0);
        // Every sample line is `name{labels} value` or `name value`, value a number.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let value = l.rsplit(' ').next().unwrap_or("");
            assert!(value.parse::<f64>().is_ok(), "{l}");
        }
    }
}
