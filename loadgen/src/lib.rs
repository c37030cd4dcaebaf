//! The hub's load generator: DFSP simulators, realistic traffic and latency reports.
//!
//! `loadgen [http]` (the default mode):
//! 1. provisions `--dfsps` DFSPs through the hub's admin API (participant and accounts per
//!    currency, NDC and initial position, funds in, callback endpoints pointing at its own
//!    simulators), unless `--no-provision`;
//! 2. runs the DFSP simulators on 127.0.0.1 ([`sim`]): payees validate the forwarded
//!    prepare and answer with a real fulfilment (or reject, or stay silent), payers book the
//!    final callback and check the fulfilment against their condition;
//! 3. drives transfers open loop at `--rate N` (latency from the scheduled send time) or
//!    closed loop at `--rate max` (`--concurrency`), or ramps the rate up to find the knee;
//! 4. measures each phase with HdrHistogram, counts errors by code and false rejections;
//! 5. audits every position through the admin API against its own ledger (exit code 2 on a
//!    mismatch, 1 if nothing committed);
//! 6. prints a summary table and writes `--json FILE` and `--report DIR` (HTML + PNG charts).
//!
//! ```text
//! loadgen --hub-fspiop http://127.0.0.1:3000 --hub-admin http://127.0.0.1:3001 \
//!         --seconds 30 --rate max --json ceiling.json --report report/
//! loadgen ... --rate 5000 --seconds 30            # latency at a fixed offered rate
//! loadgen ... --rate max --hot-payer-pct 70       # 70% of transfers from one payer
//! loadgen ... --ramp --ramp-start 1000 --ramp-step 1000 --ramp-p99-ms 50 --seconds 60
//! loadgen --embedded --seconds 30                 # a hub in this process
//! ```
//!
//! `loadgen engine` is the in-process engine benchmark (no HTTP).

pub mod admin;
pub mod audit;
pub mod charts;
pub mod config;
pub mod ctx;
pub mod dist;
pub mod driver;
pub mod embedded;
pub mod fspiop;
pub mod http;
pub mod limits;
pub mod progress;
pub mod report;
pub mod run;
pub mod sim;
pub mod state;
