//! Results: the summary (also the `--json` document), the terminal table, and the HTML
//! report with its PNG charts.

use crate::audit::AuditReport;
use crate::charts::{self, Line};
use crate::driver::RampResult;
use crate::state::SecondSnapshot;
use anyhow::Context;
use base64::Engine as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Latency statistics of one phase, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PhaseStats {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl PhaseStats {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return PhaseStats::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        PhaseStats {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesRow {
    pub second: usize,
    pub sent: u64,
    pub committed: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Counts of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub sent: u64,
    pub unsent_backlog: u64,
    pub accepted: u64,
    pub committed: u64,
    pub completed: u64,
    pub refused: u64,
    pub transport_errors: u64,
    pub unfinished: u64,
    pub forwarded: u64,
    pub fulfils_sent: u64,
    pub rejects_sent: u64,
    pub no_answers: u64,
    pub answers_dropped: u64,
    pub answers_refused_by_hub: u64,
    pub payee_notices: u64,
    pub late_or_unknown_callbacks: u64,
    pub invalid_fulfilments: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    pub count: u64,
    pub examples: Vec<String>,
}

/// The results of a run; serialised as the `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Committed transfers per second over the measured window (each one: prepare,
    /// forward, fulfil, final callback).
    pub transfers_per_sec: f64,
    /// End-to-end latency of committed transfers, from the scheduled send to the payer's
    /// final callback.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Final errors by FSPIOP code (or `http_<status>`, `ABORTED`), all transfers.
    pub errors: BTreeMap<String, u64>,
    /// The same, grouped: 4001, 4200, 3303 and other.
    pub error_classes: BTreeMap<String, u64>,
    pub false_rejections: u64,
    pub position_mismatches: usize,
    pub measured_seconds: f64,
    pub mode: String,
    pub counts: Counts,
    pub phases: BTreeMap<String, PhaseStats>,
    pub violations: BTreeMap<String, Violation>,
    pub audit: Option<AuditReport>,
    pub ramp: Option<RampResult>,
    pub series: Vec<SeriesRow>,
    pub config: serde_json::Value,
}

/// Phase names, in report order.
pub const PHASES: [(&str, &str); 4] = [
    ("prepare_accepted", "prepare → 202"),
    ("prepare_to_payee", "prepare → payee forward"),
    ("fulfil_to_final", "fulfil → payer final callback"),
    ("end_to_end", "end to end"),
];

pub fn error_classes(errors: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut m: BTreeMap<String, u64> = ["4001", "4200", "3303", "other"]
        .iter()
        .map(|k| (k.to_string(), 0))
        .collect();
    for (k, v) in errors {
        let key = if matches!(k.as_str(), "4001" | "4200" | "3303") {
            k.as_str()
        } else {
            "other"
        };
        *m.entry(key.to_string()).or_insert(0) += v;
    }
    m
}

pub fn series_rows(series: &[SecondSnapshot]) -> Vec<SeriesRow> {
    series
        .iter()
        .map(|b| {
            let h = b.e2e.as_ref().filter(|h| !h.is_empty());
            let q = |x: f64| h.map_or(0.0, |h| h.value_at_quantile(x) as f64 / 1000.0);
            SeriesRow {
                second: b.second,
                sent: b.sent,
                committed: b.committed,
                errors: b.errors,
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                p999_ms: q(0.999),
                max_ms: h.map_or(0.0, |h| h.max() as f64 / 1000.0),
            }
        })
        .collect()
}

/// The summary table for the terminal.
pub fn table(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "\n== loadgen results ({})", s.mode);
    let _ = writeln!(
        o,
        "throughput      {:>10.0} committed transfers/s over {:.1} s",
        s.transfers_per_sec, s.measured_seconds
    );
    let c = &s.counts;
    let _ = writeln!(
        o,
        "transfers       sent {}  accepted {}  committed {}  completed {}  unfinished {}",
        c.sent, c.accepted, c.committed, c.completed, c.unfinished
    );
    if c.unsent_backlog > 0 {
        let _ = writeln!(
            o,
            "                {} scheduled transfers never sent: all {} slots held by unfinished transfers",
            c.unsent_backlog,
            s.config["args"]["max_in_flight"]
        );
    }
    let _ = writeln!(
        o,
        "payees          fulfils {}  rejects {}  no answer {}  answers refused by hub {}",
        c.fulfils_sent, c.rejects_sent, c.no_answers, c.answers_refused_by_hub
    );
    let _ = writeln!(
        o,
        "\n{:<32} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
    );
    for (key, label) in PHASES {
        if let Some(p) = s.phases.get(key) {
            let _ = writeln!(
                o,
                "{:<32} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                label, p.count, p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            );
        }
    }
    let ec = &s.error_classes;
    let _ = writeln!(
        o,
        "\nerrors          4001 {}  4200 {}  3303 {}  other {}",
        ec.get("4001").unwrap_or(&0),
        ec.get("4200").unwrap_or(&0),
        ec.get("3303").unwrap_or(&0),
        ec.get("other").unwrap_or(&0)
    );
    if !s.errors.is_empty() {
        let all: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let _ = writeln!(o, "  by code       {}", all.join(", "));
    }
    let _ = writeln!(o, "false rejections {}", s.false_rejections);
    if let Some(r) = &s.ramp {
        let knee = r
            .knee_rate
            .map_or("none (the first step broke the bound)".to_string(), |k| {
                format!("{k:.0} transfers/s")
            });
        let _ = writeln!(o, "\nramp            knee {knee}");
        for st in &r.steps {
            let _ = writeln!(
                o,
                "  target {:>8.0}/s  achieved {:>8.0}/s  p99 {:>8.2} ms  errors {:>6}  {}",
                st.target_rate,
                st.achieved_rate,
                st.p99_ms,
                st.errors,
                if st.passed { "ok" } else { "BROKE THE BOUND" }
            );
        }
    }
    if !s.violations.is_empty() {
        let _ = writeln!(o, "\nprotocol violations seen by the simulators:");
        for (k, v) in &s.violations {
            let _ = writeln!(
                o,
                "  {k}: {}  e.g. {}",
                v.count,
                v.examples.first().map_or("", String::as_str)
            );
        }
    }
    match &s.audit {
        None => {
            let _ = writeln!(o, "\naudit           skipped");
        }
        Some(a) if a.ok() => {
            let _ = writeln!(
                o,
                "\naudit           ok: {} account positions match loadgen's ledger",
                a.accounts_checked
            );
        }
        Some(a) => {
            let _ = writeln!(
                o,
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
            );
            let _ = writeln!(
                o,
                "!!! POSITION AUDIT FAILED: {} mismatches in {} accounts",
                a.position_mismatches(),
                a.accounts_checked
            );
            for m in a.mismatches.iter().take(20) {
                let _ = writeln!(
                    o,
                    "!!!   {} {}: hub says {}, loadgen expects {} (unfinished +{}/-{})",
                    m.dfsp,
                    m.currency,
                    m.actual.as_deref().unwrap_or("nothing"),
                    m.expected,
                    m.unfinished_as_payer,
                    m.unfinished_as_payee
                );
            }
            for f in &a.conservation_failures {
                let _ = writeln!(o, "!!!   {f}");
            }
            let _ = writeln!(
                o,
                "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
            );
        }
    }
    o
}

pub fn write_json(path: &Path, s: &Summary) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(s)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Chart files of a report.
pub const CHART_LATENCY_OVER_TIME: &str = "latency_over_time.png";
pub const CHART_THROUGHPUT: &str = "throughput.png";
pub const CHART_DISTRIBUTION: &str = "latency_distribution.png";
pub const CHART_RAMP: &str = "ramp.png";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes `report.html` and its PNG charts into `dir`; returns the chart files written.
pub fn write_report(
    dir: &Path,
    s: &Summary,
    phases: &[(String, Histogram<u64>)],
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut charts_done: Vec<(String, String, PathBuf)> = Vec::new();

    // Chart the load window only: the drain's partial seconds would read as a collapse.
    let whole = s.measured_seconds.floor() as usize;
    let rows: Vec<&SeriesRow> = if s.series.iter().any(|r| r.second < whole) {
        s.series.iter().filter(|r| r.second < whole).collect()
    } else {
        s.series.iter().collect()
    };
    let lat = dir.join(CHART_LATENCY_OVER_TIME);
    let pick = |f: fn(&SeriesRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter(|r| r.committed > 0)
            .map(|r| (r.second as f64 + 0.5, f(r)))
            .collect()
    };
    charts::line_chart(
        &lat,
        "End-to-end latency per second (committed transfers)",
        "seconds since the end of warm-up",
        "latency (ms)",
        &[
            Line {
                name: "p50".into(),
                points: pick(|r| r.p50_ms),
            },
            Line {
                name: "p99".into(),
                points: pick(|r| r.p99_ms),
            },
            Line {
                name: "p99.9".into(),
                points: pick(|r| r.p999_ms),
            },
            Line {
                name: "max".into(),
                points: pick(|r| r.max_ms),
            },
        ],
        false,
    )?;
    charts_done.push((
        CHART_LATENCY_OVER_TIME.into(),
        "Latency percentiles over time".into(),
        lat,
    ));

    let thr = dir.join(CHART_THROUGHPUT);
    let all = |f: fn(&SeriesRow) -> f64| -> Vec<(f64, f64)> {
        rows.iter().map(|r| (r.second as f64 + 0.5, f(r))).collect()
    };
    charts::line_chart(
        &thr,
        "Throughput per second",
        "seconds since the end of warm-up",
        "transfers per second",
        &[
            Line {
                name: "committed".into(),
                points: all(|r| r.committed as f64),
            },
            Line {
                name: "offered (sent)".into(),
                points: all(|r| r.sent as f64),
            },
            Line {
                name: "errors".into(),
                points: all(|r| r.errors as f64),
            },
        ],
        false,
    )?;
    charts_done.push((CHART_THROUGHPUT.into(), "Throughput over time".into(), thr));

    let dist = dir.join(CHART_DISTRIBUTION);
    charts::percentile_chart(&dist, "Latency distribution by phase", phases)?;
    charts_done.push((
        CHART_DISTRIBUTION.into(),
        "Latency distribution (by percentile, per phase)".into(),
        dist,
    ));

    if let Some(r) = s.ramp.as_ref().filter(|r| !r.steps.is_empty()) {
        let rp = dir.join(CHART_RAMP);
        let steps = |f: fn(&crate::driver::RampStep) -> f64| -> Vec<(f64, f64)> {
            r.steps.iter().map(|st| (st.target_rate, f(st))).collect()
        };
        charts::line_chart(
            &rp,
            "Ramp: p99 end-to-end latency by offered rate",
            "offered rate (transfers/s)",
            "p99 (ms, log scale)",
            &[Line {
                name: "p99".into(),
                points: steps(|st| st.p99_ms.min(1e7)),
            }],
            true,
        )?;
        charts_done.push((CHART_RAMP.into(), "Ramp steps".into(), rp));
    }

    let html = render_html(s, &charts_done)?;
    std::fs::write(dir.join("report.html"), html).context("writing report.html")?;
    Ok(charts_done.into_iter().map(|c| c.2).collect())
}

fn render_html(s: &Summary, charts: &[(String, String, PathBuf)]) -> anyhow::Result<String> {
    let mut h = String::new();
    let audit_ok = s.audit.as_ref().is_none_or(|a| a.ok());
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>loadgen report</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:1160px;color:#222;padding:0 1rem}}
h1{{margin-bottom:.2rem}} .sub{{color:#666;margin-top:0}}
.cards{{display:flex;flex-wrap:wrap;gap:1rem;margin:1.2rem 0}}
.card{{border:1px solid #ddd;border-radius:8px;padding:.8rem 1.1rem;min-width:150px}}
.card b{{display:block;font-size:1.7rem}} .card span{{color:#666;font-size:.85rem}}
.bad{{background:#fde8e8;border-color:#e02424;color:#9b1c1c}} .good{{background:#ecfdf3}}
table{{border-collapse:collapse;margin:.6rem 0 1.4rem}} td,th{{border-bottom:1px solid #e5e5e5;padding:.3rem .8rem;text-align:right}}
td:first-child,th:first-child{{text-align:left}} figure{{margin:1.2rem 0}} img{{max-width:100%;border:1px solid #eee}}
figcaption{{color:#555;font-size:.9rem}} code{{background:#f4f4f4;padding:0 .25rem}}
</style></head><body>
<h1>loadgen report</h1><p class="sub">{}</p>
"#,
        esc(&s.mode)
    );
    if let Some(cmd) = s.config.get("command").and_then(|c| c.as_array()) {
        let words: Vec<&str> = cmd.iter().filter_map(|w| w.as_str()).collect();
        let _ = write!(
            h,
            "<p class=\"sub\"><code>{}</code></p>",
            esc(&words.join(" "))
        );
    }
    let card = |h: &mut String, v: String, label: &str, class: &str| {
        let _ = write!(
            h,
            r#"<div class="card {class}"><b>{}</b><span>{}</span></div>"#,
            esc(&v),
            esc(label)
        );
    };
    h.push_str(r#"<div class="cards">"#);
    card(
        &mut h,
        format!("{:.0}/s", s.transfers_per_sec),
        "committed transfers per second",
        "",
    );
    card(&mut h, format!("{:.2} ms", s.p50_ms), "p50 end to end", "");
    card(&mut h, format!("{:.2} ms", s.p99_ms), "p99 end to end", "");
    card(
        &mut h,
        format!("{:.2} ms", s.p999_ms),
        "p99.9 end to end",
        "",
    );
    card(&mut h, format!("{:.2} ms", s.max_ms), "max end to end", "");
    card(
        &mut h,
        s.false_rejections.to_string(),
        "false rejections",
        if s.false_rejections == 0 {
            "good"
        } else {
            "bad"
        },
    );
    card(
        &mut h,
        match &s.audit {
            None => "skipped".into(),
            Some(a) => a.position_mismatches().to_string(),
        },
        "position mismatches",
        if audit_ok { "good" } else { "bad" },
    );
    h.push_str("</div>");

    if let Some(a) = s.audit.as_ref().filter(|a| !a.ok()) {
        let _ = write!(
            h,
            r#"<div class="card bad"><b>POSITION AUDIT FAILED</b><span>{} of {} accounts differ from loadgen's ledger</span></div><table><tr><th>DFSP</th><th>currency</th><th>hub</th><th>expected</th><th>unfinished +payer</th><th>unfinished −payee</th></tr>"#,
            a.position_mismatches(),
            a.accounts_checked
        );
        for m in &a.mismatches {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&m.dfsp),
                esc(&m.currency),
                esc(m.actual.as_deref().unwrap_or("—")),
                esc(&m.expected),
                esc(&m.unfinished_as_payer),
                esc(&m.unfinished_as_payee)
            );
        }
        h.push_str("</table>");
        for f in &a.conservation_failures {
            let _ = write!(h, "<p class=\"bad\">{}</p>", esc(f));
        }
    }

    h.push_str("<h2>Latency by phase</h2><table><tr><th>phase</th><th>count</th><th>mean</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>");
    for (key, label) in PHASES {
        if let Some(p) = s.phases.get(key) {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
                esc(label),
                p.count,
                p.mean_ms,
                p.p50_ms,
                p.p90_ms,
                p.p99_ms,
                p.p999_ms,
                p.max_ms
            );
        }
    }
    h.push_str("</table><p>Milliseconds. End to end runs from the scheduled send time (open loop) or the send (closed loop) to the payer's final callback, so stalls are not hidden.</p>");

    h.push_str("<h2>Charts</h2>");
    for (file, caption, path) in charts {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        let _ = write!(
            h,
            r#"<figure><img alt="{a}" src="data:image/png;base64,{b64}"><figcaption>{c} — <a href="{f}">{f}</a></figcaption></figure>"#,
            a = esc(caption),
            c = esc(caption),
            f = esc(file)
        );
    }

    h.push_str("<h2>Outcomes</h2><table><tr><th>what</th><th>count</th></tr>");
    let c = serde_json::to_value(&s.counts)?;
    if let Some(obj) = c.as_object() {
        for (k, v) in obj {
            let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), v);
        }
    }
    h.push_str("</table><h3>Errors by code</h3><table><tr><th>code</th><th>count</th></tr>");
    for (k, v) in &s.errors {
        let _ = write!(h, "<tr><td>{}</td><td>{v}</td></tr>", esc(k));
    }
    h.push_str("</table>");

    if !s.violations.is_empty() {
        h.push_str("<h3>Protocol violations seen by the simulators</h3><table><tr><th>kind</th><th>count</th><th>example</th></tr>");
        for (k, v) in &s.violations {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                esc(k),
                v.count,
                esc(v.examples.first().map_or("", String::as_str))
            );
        }
        h.push_str("</table>");
    }

    if let Some(r) = &s.ramp {
        let _ = write!(
            h,
            "<h2>Ramp</h2><p>Knee: <b>{}</b></p><table><tr><th>target/s</th><th>achieved/s</th><th>p99 ms</th><th>errors</th><th>within bound</th></tr>",
            r.knee_rate.map_or("none".into(), |k| format!("{k:.0} transfers/s"))
        );
        for st in &r.steps {
            let _ = write!(
                h,
                "<tr><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td><td>{}</td><td>{}</td></tr>",
                st.target_rate,
                st.achieved_rate,
                st.p99_ms,
                st.errors,
                if st.passed { "yes" } else { "no" }
            );
        }
        h.push_str("</table>");
    }

    let _ = writeln!(
        h,
        "<h2>Configuration</h2><pre>{}</pre></body></html>",
        esc(&serde_json::to_string_pretty(&s.config)?)
    );
    Ok(h)
}
