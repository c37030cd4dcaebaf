//! The HTTP mode from start to end: hub, simulators, provisioning, load, drain, audit,
//! results.

use crate::admin::{fetch_positions, provision_all, Admin, Provision};
use crate::audit::{self, AuditInput, AuditReport};
use crate::config::{self, cores, HttpArgs, LoadMode, Resolved};
use crate::ctx::Ctx;
use crate::driver::{self, Schedule, Traffic, Window};
use crate::embedded::EmbeddedHub;
use crate::fspiop::{self, major};
use crate::http::loopback_base;
use crate::limits::{ADMIN_CONCURRENCY, AUDIT_ATTEMPTS, AUDIT_RETRY_DELAY};
use crate::report::{self, error_classes, series_rows, Counts, PhaseStats, Summary, Violation};
use crate::sim::{self, Simulators};
use crate::state::get;
use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

/// Exit code when the position audit fails.
pub const EXIT_AUDIT_FAILED: i32 = 2;
/// Exit code when not a single transfer committed.
pub const EXIT_NOTHING_COMMITTED: i32 = 1;

/// What a run produced.
pub struct RunOutcome {
    pub summary: Summary,
    /// 0, [`EXIT_AUDIT_FAILED`] or [`EXIT_NOTHING_COMMITTED`].
    pub exit_code: i32,
}

/// Runs the HTTP mode: against `--hub-fspiop`/`--hub-admin`, or an embedded hub.
pub async fn run(args: HttpArgs) -> anyhow::Result<RunOutcome> {
    let resolved = config::resolve(&args)?;
    let embedded = if args.embedded {
        Some(EmbeddedHub::start(args.data_dir.clone(), config::cores()).await?)
    } else {
        None
    };
    let (fspiop_url, admin_url) = match &embedded {
        Some(h) => (h.fspiop.clone(), h.admin.clone()),
        None => (
            args.hub_fspiop
                .clone()
                .context("give --hub-fspiop URL and --hub-admin URL, or --embedded")?,
            args.hub_admin
                .clone()
                .context("give --hub-admin URL with --hub-fspiop, or --embedded")?,
        ),
    };
    let result = run_against(
        &args,
        resolved,
        loopback_base(&fspiop_url)?,
        loopback_base(&admin_url)?,
    )
    .await;
    if let Some(h) = embedded {
        h.stop().await.context("stopping the embedded hub")?;
    }
    result
}

/// Runs the HTTP mode against a hub at the given base URLs.
pub async fn run_against(
    args: &HttpArgs,
    r: Resolved,
    fspiop_url: String,
    admin_url: String,
) -> anyhow::Result<RunOutcome> {
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut seed_rng = StdRng::seed_from_u64(seed);
    let secret: [u8; 32] = seed_rng.gen();
    let ctx = Arc::new(Ctx::new(
        r.names.clone(),
        r.currencies.clone(),
        fspiop_url.clone(),
        r.sim.clone(),
        secret,
    ));
    let sims = Simulators::start(ctx.clone(), args.sim_listeners).await?;
    let admin = Admin::new(ctx.client.clone(), admin_url.clone());
    let ncur = r.currencies.len();
    let ndc = major(args.ndc);
    let funds = major(args.funds_in.unwrap_or(args.ndc));

    if !args.no_provision {
        let t0 = Instant::now();
        eprintln!(
            "provisioning {} DFSPs x {} currencies through {admin_url} ...",
            r.names.len(),
            ncur
        );
        let p = Provision {
            currencies: r.currencies.clone(),
            ndc,
            funds_in: funds,
            initial_position: 0,
        };
        let endpoints = |i: u32| sim::endpoints(&sims.base_for(i), &r.names[i as usize]).to_vec();
        provision_all(&admin, &r.names, &p, endpoints)
            .await
            .context("provisioning through the admin API")?;
        eprintln!("provisioned in {:.1} s", t0.elapsed().as_secs_f64());
    }
    let limits_known = learn_limits(&ctx, &admin, !args.no_provision, ndc, funds).await;
    if !args.no_audit {
        let before = fetch_positions(&admin, &r.names).await;
        for (d, m) in before.iter().enumerate() {
            for (c, cur) in r.currencies.iter().enumerate() {
                if let Some(v) = m.as_ref().and_then(|m| m.get(cur)) {
                    ctx.ledger
                        .account(d as u32, c as u16)
                        .baseline
                        .store(*v, Ordering::Release);
                }
            }
        }
    }

    // Load.
    let traffic = Arc::new(Traffic {
        mix: r.mix.clone(),
        amounts: r.amounts.clone(),
        expiration: Duration::from_millis(args.expiration_ms),
    });
    let start_us = ctx.clock.now_us();
    let window = Window {
        start_us,
        measure_us: start_us + args.warmup_seconds * 1_000_000,
        end_us: start_us + (args.warmup_seconds + args.seconds) * 1_000_000,
    };
    ctx.stats
        .measure_start_us
        .store(window.measure_us, Ordering::Relaxed);
    let (stop_tx, stop_rx) = watch::channel(false);
    let progress = if args.no_progress {
        None
    } else {
        crate::progress::spawn(ctx.clone(), args.seconds, stop_rx)
    };
    let load_seed = seed_rng.gen();
    let load = {
        let ctx = ctx.clone();
        let traffic = traffic.clone();
        let mode = r.mode.clone();
        async move {
            match mode {
                LoadMode::Open {
                    schedule,
                    max_in_flight,
                } => driver::open_loop(ctx, traffic, schedule, window, max_in_flight, load_seed)
                    .await
                    .map(|(ramp, n)| (Some(ramp), n)),
                LoadMode::Closed { concurrency } => {
                    driver::closed_loop(ctx, traffic, window, concurrency, load_seed)
                        .await
                        .map(|n| (None, n))
                }
            }
        }
    };
    let (ramp, started) = tokio::select! {
        r = load => r?,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: load stopped, draining transfers in flight");
            (None, 0)
        }
    };
    let load_end_us = ctx.clock.now_us();

    // Drain: wait for the transfers in flight (bounded).
    let drain_end = load_end_us + args.drain_seconds * 1_000_000;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    while ctx.clock.now_us() < drain_end
        && (!ctx.table.is_empty() || get(&ctx.stats.counters.sent) < started)
    {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            _ = &mut interrupt => {
                eprintln!("\ninterrupted: drain skipped");
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    if let Some(p) = progress {
        let _ = p.await;
    }

    // Audit.
    let audit = if args.no_audit {
        None
    } else {
        let mut report = run_audit(&ctx, &admin).await;
        for _ in 1..AUDIT_ATTEMPTS {
            if report.ok() {
                break;
            }
            tokio::time::sleep(AUDIT_RETRY_DELAY).await;
            report = run_audit(&ctx, &admin).await;
        }
        Some(report)
    };
    sims.stop().await;

    let summary = summarise(
        args,
        &r,
        &ctx,
        SummaryInputs {
            seed,
            window,
            load_end_us,
            ramp: ramp.filter(|_| {
                matches!(
                    r.mode,
                    LoadMode::Open {
                        schedule: Schedule::Ramp { .. },
                        ..
                    }
                )
            }),
            audit,
            limits_known,
            hub: (fspiop_url, admin_url),
        },
    );
    println!("{}", report::table(&summary));
    if let Some(path) = &args.json {
        report::write_json(path, &summary)?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &args.report {
        let phases = phase_histograms(&ctx);
        report::write_report(dir, &summary, &phases)?;
        eprintln!("wrote {}", dir.join("report.html").display());
    }
    let exit_code = if summary.position_mismatches > 0 {
        EXIT_AUDIT_FAILED
    } else if summary.counts.committed == 0 {
        EXIT_NOTHING_COMMITTED
    } else {
        0
    };
    Ok(RunOutcome { summary, exit_code })
}

/// Sets each account's limit in loadgen's ledger to min(NDC, liquidity cover), from what
/// the hub reports, else from what loadgen provisioned. Returns how many accounts have a
/// known limit (false rejections are detected only for those).
async fn learn_limits(
    ctx: &Arc<Ctx>,
    admin: &Admin,
    provisioned: bool,
    ndc: i64,
    funds: i64,
) -> usize {
    let slots = Arc::new(Semaphore::new(ADMIN_CONCURRENCY));
    let mut set = tokio::task::JoinSet::new();
    for d in 0..ctx.names.len() as u32 {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let ctx = ctx.clone();
        let admin = admin.clone();
        set.spawn(async move {
            let name = &ctx.names[d as usize];
            let accounts = admin.accounts(name).await.unwrap_or_default();
            let mut known = 0;
            for (c, cur) in ctx.currencies.iter().enumerate() {
                let hub_ndc = admin.ndc(name, cur).await;
                // Liquidity cover: the settlement balance's magnitude (central-ledger keeps
                // it negative after funds in).
                let hub_cover = accounts
                    .iter()
                    .find(|a| a.currency == *cur && a.kind == "SETTLEMENT")
                    .and_then(|a| a.value)
                    .map(i64::abs);
                let ndc = hub_ndc.or(provisioned.then_some(ndc));
                let cover = hub_cover.or(provisioned.then_some(funds));
                let limit = match (ndc, cover) {
                    (Some(n), Some(c)) => Some(n.min(c)),
                    (Some(n), None) => Some(n),
                    (None, Some(c)) => Some(c),
                    (None, None) => None,
                };
                if let Some(l) = limit {
                    ctx.ledger
                        .account(d, c as u16)
                        .limit
                        .store(l, Ordering::Release);
                    known += 1;
                }
            }
            drop(permit);
            known
        });
    }
    let mut known = 0;
    while let Some(r) = set.join_next().await {
        known += r.unwrap_or(0);
    }
    known
}

/// Reads every position from the hub and checks it against loadgen's ledger.
pub async fn run_audit(ctx: &Ctx, admin: &Admin) -> AuditReport {
    let actual = fetch_positions(admin, &ctx.names).await;
    let (up, down) = ctx.table.unfinished(ctx.currencies.len());
    let n = ctx.ledger.accounts.len();
    let baseline: Vec<i64> = ctx
        .ledger
        .accounts
        .iter()
        .map(|a| a.baseline.load(Ordering::Acquire))
        .collect();
    let expected: Vec<i64> = (0..n).map(|i| ctx.ledger.expected_position(i)).collect();
    audit::audit(&AuditInput {
        names: &ctx.names,
        currencies: &ctx.currencies,
        baseline: &baseline,
        expected: &expected,
        unfinished_as_payer: &up,
        unfinished_as_payee: &down,
        actual: &actual,
    })
}

fn phase_histograms(ctx: &Ctx) -> Vec<(String, hdrhistogram::Histogram<u64>)> {
    let s = &ctx.stats;
    vec![
        ("prepare → 202".into(), s.accepted.snapshot()),
        ("prepare → payee forward".into(), s.forward.snapshot()),
        (
            "fulfil → payer final callback".into(),
            s.fulfil_to_final.snapshot(),
        ),
        ("end to end".into(), s.e2e.snapshot()),
    ]
}

struct SummaryInputs {
    seed: u64,
    window: Window,
    load_end_us: u64,
    ramp: Option<driver::RampResult>,
    audit: Option<AuditReport>,
    limits_known: usize,
    hub: (String, String),
}

fn describe_mode(args: &HttpArgs, r: &Resolved) -> String {
    let load = match &r.mode {
        LoadMode::Closed { concurrency } => format!("closed loop, {concurrency} clients"),
        LoadMode::Open {
            schedule: Schedule::Constant(rate),
            max_in_flight,
        } => format!("open loop at {rate}/s (at most {max_in_flight} in flight)"),
        LoadMode::Open {
            schedule:
                Schedule::Ramp {
                    start,
                    step,
                    step_seconds,
                    p99_bound_ms,
                },
            ..
        } => format!(
            "open-loop ramp from {start}/s by {step}/s every {step_seconds} s until p99 > {p99_bound_ms} ms"
        ),
    };
    format!(
        "{load}; {} s measured after {} s warm-up; {} DFSPs x {} ({}); payers {}, payees {}, hot payer {}%",
        args.seconds,
        args.warmup_seconds,
        r.names.len(),
        r.currencies.join(","),
        args.amount,
        r.mix.payers.describe(),
        r.mix.payees.describe(),
        args.hot_payer_pct
    )
}

fn summarise(args: &HttpArgs, r: &Resolved, ctx: &Ctx, inp: SummaryInputs) -> Summary {
    let s = &ctx.stats;
    let c = &s.counters;
    let e2e = s.e2e.snapshot();
    let e = PhaseStats::of(&e2e);
    // The measured window ends when the load stops or at its scheduled end, whichever is
    // first: closed-loop clients finish their last transfer after the end, and one that
    // hangs must not stretch the window (that read as a lower throughput).
    let measured_us = inp
        .load_end_us
        .min(inp.window.end_us)
        .saturating_sub(inp.window.measure_us);
    let measured_seconds = (measured_us as f64 / 1e6).max(1e-3);
    let whole = (measured_us / 1_000_000) as usize;
    let transfers_per_sec = if whole > 0 {
        let (committed, _, _) = s.window(0, whole);
        committed as f64 / whole as f64
    } else {
        e2e.len() as f64 / measured_seconds
    };
    let errors = s.errors();
    let mut phases = BTreeMap::new();
    phases.insert(
        "prepare_accepted".into(),
        PhaseStats::of(&s.accepted.snapshot()),
    );
    phases.insert(
        "prepare_to_payee".into(),
        PhaseStats::of(&s.forward.snapshot()),
    );
    phases.insert(
        "fulfil_to_final".into(),
        PhaseStats::of(&s.fulfil_to_final.snapshot()),
    );
    phases.insert("end_to_end".into(), e.clone());
    let counts = Counts {
        sent: get(&c.sent),
        unsent_backlog: get(&c.unsent),
        accepted: get(&c.accepted),
        committed: get(&c.committed),
        completed: get(&c.completed),
        refused: get(&c.refused),
        transport_errors: get(&c.transport_errors),
        unfinished: ctx.table.len() as u64,
        forwarded: get(&c.forwarded),
        fulfils_sent: get(&c.fulfils_sent),
        rejects_sent: get(&c.rejects_sent),
        no_answers: get(&c.no_answers),
        answers_dropped: get(&c.answers_dropped),
        answers_refused_by_hub: get(&c.answer_not_accepted),
        payee_notices: get(&c.payee_notices),
        late_or_unknown_callbacks: get(&c.late_or_unknown_callbacks),
        invalid_fulfilments: get(&c.invalid_fulfilments),
    };
    let violations = s
        .violations
        .snapshot()
        .into_iter()
        .map(|(k, (count, examples))| (k, Violation { count, examples }))
        .collect();
    let mode_desc = describe_mode(args, r);
    Summary {
        transfers_per_sec,
        p50_ms: e.p50_ms,
        p99_ms: e.p99_ms,
        p999_ms: e.p999_ms,
        max_ms: e.max_ms,
        error_classes: error_classes(&errors),
        errors,
        false_rejections: get(&c.false_rejections),
        position_mismatches: inp.audit.as_ref().map_or(0, |a| a.position_mismatches()),
        measured_seconds,
        mode: mode_desc,
        counts,
        phases,
        violations,
        audit: inp.audit,
        ramp: inp.ramp,
        series: series_rows(&s.series()),
        config: json!({
            "command": std::iter::once("loadgen".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>(),
            "args": args,
            "mode": r.mode,
            "seed": inp.seed,
            "cores": cores(),
            "hub_fspiop": inp.hub.0,
            "hub_admin": inp.hub.1,
            "simulator": r.sim,
            "accounts_with_known_limit": inp.limits_known,
            "money_unit": format!("amounts internally in 1/{} of the major unit", 10_i64.pow(fspiop::MONEY_SCALE)),
        }),
    }
}
