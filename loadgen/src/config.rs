//! Command-line options of the HTTP load modes, and their validation.

use crate::ctx::SimConfig;
use crate::dist::{AmountDist, Mix, Picker};
use crate::driver::Schedule;
use crate::limits::{
    ANSWER_DELAY_MS_MAX, CURRENCIES_MAX, DEFAULT_CONCURRENCY_MAX, DEFAULT_CONCURRENCY_MIN,
    DEFAULT_CONCURRENCY_PER_CORE, DFSPS_MAX, DRAIN_SECONDS_MAX, IN_FLIGHT_MAX,
    OPEN_LOOP_IN_FLIGHT_DEFAULT, RATE_MAX, SECONDS_MAX,
};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;

/// Drive a hub over HTTP as its DFSPs: provision them, play their simulators, send
/// transfers, measure, audit positions, report.
#[derive(Args, Debug, Clone, Serialize)]
pub struct HttpArgs {
    /// Base URL of the hub's FSPIOP API (loopback only), e.g. http://127.0.0.1:3000.
    #[arg(long, env = "LOADGEN_HUB_FSPIOP")]
    pub hub_fspiop: Option<String>,
    /// Base URL of the hub's admin API (loopback only), e.g. http://127.0.0.1:3001.
    #[arg(long, env = "LOADGEN_HUB_ADMIN")]
    pub hub_admin: Option<String>,
    /// Start a hub in this process on ephemeral ports and a temporary data directory.
    #[arg(long, conflicts_with_all = ["hub_fspiop", "hub_admin"])]
    pub embedded: bool,
    /// Data directory of the embedded hub (default: a fresh temporary directory).
    #[arg(long, requires = "embedded")]
    pub data_dir: Option<PathBuf>,
    /// Skip provisioning: the hub already has the DFSPs, limits, funds and endpoints.
    #[arg(long)]
    pub no_provision: bool,
    /// Skip the post-run position audit.
    #[arg(long)]
    pub no_audit: bool,
    /// Measured load duration in seconds (after the warm-up).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Warm-up before measuring, in seconds (load runs, latencies are not recorded).
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
    /// Target rate in transfers per second (open loop, scheduled sends), or `max` (closed
    /// loop at `--concurrency`) to find the ceiling.
    #[arg(long, default_value = "max")]
    pub rate: String,
    /// Clients in the closed loop (`--rate max`). Default: 256 per CPU core, at least 256.
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Open loop: cap on transfers in flight; beyond it sends wait (and the wait is measured).
    #[arg(long, default_value_t = OPEN_LOOP_IN_FLIGHT_DEFAULT)]
    pub max_in_flight: usize,
    /// Number of DFSPs.
    #[arg(long, default_value_t = 100)]
    pub dfsps: u32,
    /// DFSP names are this prefix and a number (1-based).
    #[arg(long, default_value = "dfsp")]
    pub dfsp_prefix: String,
    /// Comma-separated ISO 4217 currencies; each DFSP gets an account in each.
    #[arg(long, default_value = "USD")]
    pub currencies: String,
    /// Amounts (major units, up to 2 decimals): fixed:A, uniform:A..B or lognormal:MEDIAN,SIGMA.
    #[arg(long, default_value = "uniform:1..1000")]
    pub amount: String,
    /// Payer distribution over DFSPs: uniform or zipf:<s>.
    #[arg(long, default_value = "uniform")]
    pub payers: String,
    /// Payee distribution over DFSPs: uniform or zipf:<s>.
    #[arg(long, default_value = "uniform")]
    pub payees: String,
    /// Percent of all transfers paid by one payer (the first DFSP).
    #[arg(long, default_value_t = 0)]
    pub hot_payer_pct: u32,
    /// Net Debit Cap of each account, in major units.
    #[arg(long, default_value_t = 10_000_000_000)]
    pub ndc: i64,
    /// Funds in (liquidity cover) per account at provisioning, major units (default: the NDC).
    #[arg(long)]
    pub funds_in: Option<i64>,
    /// Expiration of each prepare, milliseconds after it is sent.
    #[arg(long, default_value_t = 10_000)]
    pub expiration_ms: u64,
    /// Percent of prepares the payee rejects (5104).
    #[arg(long, default_value_t = 0.0)]
    pub reject_pct: f64,
    /// Percent of prepares the payee never answers (the hub times them out: 3303).
    #[arg(long, default_value_t = 0.0)]
    pub no_answer_pct: f64,
    /// Payee answer delay in milliseconds: N or MIN..MAX (uniform).
    #[arg(long, default_value = "0")]
    pub answer_delay_ms: String,
    /// FSPIOP-Source the hub puts on messages it makes.
    #[arg(long, default_value = "Hub")]
    pub hub_name: String,
    /// Longest wait after the load for transfers in flight to finish, in seconds.
    #[arg(long, default_value_t = 30)]
    pub drain_seconds: u64,
    /// Open-loop ramp: step the rate up from --ramp-start by --ramp-step every
    /// --ramp-step-seconds until p99 exceeds --ramp-p99-ms; reports the knee.
    #[arg(long)]
    pub ramp: bool,
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_start: f64,
    #[arg(long, default_value_t = 1000.0)]
    pub ramp_step: f64,
    #[arg(long, default_value_t = 5)]
    pub ramp_step_seconds: u64,
    #[arg(long, default_value_t = 50.0)]
    pub ramp_p99_ms: f64,
    /// Simulator listeners (DFSPs are spread over them).
    #[arg(long, default_value_t = 1)]
    pub sim_listeners: usize,
    /// Seed of the traffic generator (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write report.html and PNG charts to this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// No live progress line even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
}

impl Default for HttpArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            a: HttpArgs,
        }
        Wrap::parse_from(["loadgen"]).a
    }
}

/// How load is offered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum LoadMode {
    /// Open loop on a schedule (constant or ramp), with a cap on transfers in flight.
    Open {
        schedule: Schedule,
        max_in_flight: usize,
    },
    /// Closed loop with this many clients.
    Closed { concurrency: usize },
}

/// Closed-loop clients when `--rate max` comes without `--concurrency`: enough to keep the
/// hub's batches full on this machine (Little's law: clients = rate × latency), not so many
/// that queueing alone inflates latency.
pub fn default_concurrency(cores: usize) -> usize {
    (cores.max(1) * DEFAULT_CONCURRENCY_PER_CORE)
        .clamp(DEFAULT_CONCURRENCY_MIN, DEFAULT_CONCURRENCY_MAX)
}

/// CPU cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn resolve_mode(a: &HttpArgs) -> anyhow::Result<LoadMode> {
    if a.ramp {
        for (name, v) in [("ramp-start", a.ramp_start), ("ramp-step", a.ramp_step)] {
            if !(v.is_finite() && v > 0.0 && v <= RATE_MAX) {
                bail!("--{name} must be in (0, {RATE_MAX}]");
            }
        }
        if a.ramp_step_seconds == 0 || !(a.ramp_p99_ms.is_finite() && a.ramp_p99_ms > 0.0) {
            bail!("--ramp-step-seconds and --ramp-p99-ms must be positive");
        }
        return Ok(LoadMode::Open {
            schedule: Schedule::Ramp {
                start: a.ramp_start,
                step: a.ramp_step,
                step_seconds: a.ramp_step_seconds,
                p99_bound_ms: a.ramp_p99_ms,
            },
            max_in_flight: check_in_flight(a.max_in_flight, "max-in-flight")?,
        });
    }
    if a.rate.trim().eq_ignore_ascii_case("max") {
        let concurrency = match a.concurrency {
            Some(c) => check_in_flight(c, "concurrency")?,
            None => default_concurrency(cores()),
        };
        return Ok(LoadMode::Closed { concurrency });
    }
    if a.concurrency.is_some() {
        bail!(
            "--concurrency applies to --rate max (closed loop); an open loop uses --max-in-flight"
        );
    }
    let rate: f64 = a
        .rate
        .trim()
        .parse()
        .with_context(|| format!("--rate must be a number or `max`, got {:?}", a.rate))?;
    if !(rate.is_finite() && rate > 0.0 && rate <= RATE_MAX) {
        bail!("--rate must be in (0, {RATE_MAX}]");
    }
    Ok(LoadMode::Open {
        schedule: Schedule::Constant(rate),
        max_in_flight: check_in_flight(a.max_in_flight, "max-in-flight")?,
    })
}

fn check_in_flight(v: usize, name: &str) -> anyhow::Result<usize> {
    if v == 0 || v > IN_FLIGHT_MAX {
        bail!("--{name} must be in 1..={IN_FLIGHT_MAX}");
    }
    Ok(v)
}

/// Validated traffic and simulator settings.
pub struct Resolved {
    pub mode: LoadMode,
    pub names: Vec<String>,
    pub currencies: Vec<String>,
    pub mix: Mix,
    pub amounts: AmountDist,
    pub sim: SimConfig,
}

pub fn resolve(a: &HttpArgs) -> anyhow::Result<Resolved> {
    let mode = resolve_mode(a)?;
    if a.seconds == 0 || a.seconds + a.warmup_seconds > SECONDS_MAX {
        bail!("--seconds must be in 1..={SECONDS_MAX} (warm-up included)");
    }
    if a.drain_seconds > DRAIN_SECONDS_MAX {
        bail!("--drain-seconds must be at most {DRAIN_SECONDS_MAX}");
    }
    if a.dfsps < 2 || a.dfsps > DFSPS_MAX {
        bail!("--dfsps must be in 2..={DFSPS_MAX}");
    }
    let width = a.dfsps.to_string().len();
    if a.dfsp_prefix.is_empty()
        || a.dfsp_prefix.len() + width > 32
        || !a
            .dfsp_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!("--dfsp-prefix must be 1+ letters, digits, '-' or '_', with the number at most 32 chars");
    }
    let names: Vec<String> = (1..=a.dfsps)
        .map(|i| format!("{}{i}", a.dfsp_prefix))
        .collect();
    let currencies: Vec<String> = a
        .currencies
        .split(',')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if currencies.is_empty() || currencies.len() > CURRENCIES_MAX {
        bail!("--currencies needs 1..={CURRENCIES_MAX} codes");
    }
    for c in &currencies {
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            bail!("currency {c:?} is not an ISO 4217 code (3 upper-case letters)");
        }
    }
    if a.hot_payer_pct > 100 {
        bail!("--hot-payer-pct must be 0..=100");
    }
    let mix = Mix {
        payers: Picker::parse(&a.payers, a.dfsps)?,
        payees: Picker::parse(&a.payees, a.dfsps)?,
        hot_payer_pct: a.hot_payer_pct,
    };
    let amounts = AmountDist::parse(&a.amount)?;
    for (name, v) in [
        ("reject-pct", a.reject_pct),
        ("no-answer-pct", a.no_answer_pct),
    ] {
        if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
            bail!("--{name} must be in [0, 100]");
        }
    }
    if a.reject_pct + a.no_answer_pct > 100.0 {
        bail!("--reject-pct plus --no-answer-pct exceed 100");
    }
    let (delay_min_ms, delay_max_ms) = parse_delay(&a.answer_delay_ms)?;
    if a.ndc < 0 || a.funds_in.is_some_and(|f| f < 0) {
        bail!("--ndc and --funds-in must not be negative");
    }
    if a.expiration_ms == 0 || a.expiration_ms > 3_600_000 {
        bail!("--expiration-ms must be in 1..=3600000");
    }
    if a.sim_listeners == 0 || a.sim_listeners > 64 {
        bail!("--sim-listeners must be in 1..=64");
    }
    Ok(Resolved {
        mode,
        names,
        currencies,
        mix,
        amounts,
        sim: SimConfig {
            reject_pct: a.reject_pct,
            no_answer_pct: a.no_answer_pct,
            delay_min_ms,
            delay_max_ms,
            hub_name: a.hub_name.clone(),
        },
    })
}

/// `N` or `MIN..MAX` milliseconds.
pub fn parse_delay(s: &str) -> anyhow::Result<(u64, u64)> {
    let (lo, hi) = match s.split_once("..") {
        Some((l, h)) => (l.trim().parse::<u64>()?, h.trim().parse::<u64>()?),
        None => {
            let v = s.trim().parse::<u64>().context("--answer-delay-ms")?;
            (v, v)
        }
    };
    if lo > hi || hi > ANSWER_DELAY_MS_MAX {
        bail!("--answer-delay-ms must be N or MIN..MAX with MAX <= {ANSWER_DELAY_MS_MAX}");
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        a: HttpArgs,
    }

    fn parse(args: &[&str]) -> HttpArgs {
        Wrap::try_parse_from(std::iter::once("loadgen").chain(args.iter().copied()))
            .unwrap()
            .a
    }

    #[test]
    fn rate_max_without_concurrency_picks_the_default_for_this_machine() {
        let a = parse(&["--rate", "max"]);
        let mode = resolve_mode(&a).unwrap();
        assert_eq!(
            mode,
            LoadMode::Closed {
                concurrency: default_concurrency(cores())
            }
        );
        // Enough clients for 10,000 transfers/s at 50 ms end-to-end on 2 cores (Little's
        // law), and never below that on smaller machines.
        let c2 = default_concurrency(2);
        assert!(c2 as f64 / 0.050 >= 10_000.0, "{c2}");
        assert!(default_concurrency(1) >= DEFAULT_CONCURRENCY_MIN);
        assert!(default_concurrency(1024) <= DEFAULT_CONCURRENCY_MAX);
        assert!(default_concurrency(4) >= default_concurrency(2));
        // The default (no --rate) is the closed loop too.
        assert!(matches!(
            resolve_mode(&HttpArgs::default()).unwrap(),
            LoadMode::Closed { .. }
        ));
    }

    #[test]
    fn explicit_modes() {
        let a = parse(&["--rate", "max", "--concurrency", "64"]);
        assert_eq!(
            resolve_mode(&a).unwrap(),
            LoadMode::Closed { concurrency: 64 }
        );
        let a = parse(&["--rate", "2500"]);
        assert!(matches!(
            resolve_mode(&a).unwrap(),
            LoadMode::Open {
                schedule: Schedule::Constant(r),
                ..
            } if r == 2500.0
        ));
        assert!(resolve_mode(&parse(&["--rate", "100", "--concurrency", "4"])).is_err());
        assert!(resolve_mode(&parse(&["--rate", "0"])).is_err());
        assert!(resolve_mode(&parse(&["--rate", "fast"])).is_err());
        let a = parse(&["--ramp", "--ramp-start", "100", "--ramp-step", "50"]);
        assert!(matches!(
            resolve_mode(&a).unwrap(),
            LoadMode::Open {
                schedule: Schedule::Ramp { .. },
                ..
            }
        ));
    }

    #[test]
    fn validation() {
        let r = resolve(&parse(&["--dfsps", "3", "--currencies", "USD,EUR"])).unwrap();
        assert_eq!(r.names, ["dfsp1", "dfsp2", "dfsp3"]);
        assert_eq!(r.currencies, ["USD", "EUR"]);
        assert!(resolve(&parse(&["--currencies", "usd"])).is_err());
        assert!(resolve(&parse(&["--dfsps", "1"])).is_err());
        assert!(resolve(&parse(&["--hot-payer-pct", "101"])).is_err());
        assert!(resolve(&parse(&["--reject-pct", "60", "--no-answer-pct", "50"])).is_err());
        assert_eq!(parse_delay("5..20").unwrap(), (5, 20));
        assert_eq!(parse_delay("7").unwrap(), (7, 7));
        assert!(parse_delay("9..1").is_err());
    }
}
