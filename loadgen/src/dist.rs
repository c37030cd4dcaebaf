//! Traffic shape: who pays whom, in which currency, how much.

use anyhow::{bail, Context};
use rand::Rng;

/// Chooses a DFSP index in `0..n`.
#[derive(Debug, Clone)]
pub enum Picker {
    Uniform {
        n: u32,
    },
    /// Zipf with exponent `s`: index k (0-based) has weight 1/(k+1)^s. `cdf` is cumulative.
    Zipf {
        s: f64,
        cdf: Vec<f64>,
    },
}

impl Picker {
    /// Parses `uniform` or `zipf:<s>` for `n` DFSPs.
    pub fn parse(spec: &str, n: u32) -> anyhow::Result<Self> {
        if n == 0 {
            bail!("no DFSPs to pick from");
        }
        let spec = spec.trim();
        if spec.eq_ignore_ascii_case("uniform") {
            return Ok(Picker::Uniform { n });
        }
        if let Some(s) = spec.strip_prefix("zipf:") {
            let s: f64 = s
                .parse()
                .with_context(|| format!("bad zipf exponent in {spec:?}"))?;
            if !(s.is_finite() && s > 0.0 && s <= 10.0) {
                bail!("zipf exponent must be in (0, 10], got {s}");
            }
            let mut cdf = Vec::with_capacity(n as usize);
            let mut acc = 0.0;
            for k in 0..n {
                acc += 1.0 / f64::from(k + 1).powf(s);
                cdf.push(acc);
            }
            for c in &mut cdf {
                *c /= acc;
            }
            return Ok(Picker::Zipf { s, cdf });
        }
        bail!("distribution must be `uniform` or `zipf:<s>`, got {spec:?}")
    }

    pub fn n(&self) -> u32 {
        match self {
            Picker::Uniform { n } => *n,
            Picker::Zipf { cdf, .. } => cdf.len() as u32,
        }
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u32 {
        match self {
            Picker::Uniform { n } => rng.gen_range(0..*n),
            Picker::Zipf { cdf, .. } => {
                let u: f64 = rng.gen();
                let i = cdf.partition_point(|c| *c < u);
                i.min(cdf.len() - 1) as u32
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Picker::Uniform { .. } => "uniform".into(),
            Picker::Zipf { s, .. } => format!("zipf:{s}"),
        }
    }
}

/// Amount distribution, in internal money units (1/10,000 of the major unit). Amounts are
/// whole cents, so they are valid in any currency with 2 or more decimals.
#[derive(Debug, Clone, PartialEq)]
pub enum AmountDist {
    Fixed(i64),
    /// Uniform over cents in `[lo, hi]`.
    Uniform {
        lo: i64,
        hi: i64,
    },
    /// Log-normal with the given median (in units) and sigma, capped at `max`.
    LogNormal {
        median: i64,
        sigma: f64,
        max: i64,
    },
}

const CENT: i64 = 100;
/// Largest amount any distribution draws: 10^9 major units.
const AMOUNT_MAX: i64 = 1_000_000_000 * 10_000;

fn parse_major(s: &str) -> anyhow::Result<i64> {
    let v = crate::fspiop::parse_amount(s).with_context(|| format!("bad amount {s:?}"))?;
    if v <= 0 || v > AMOUNT_MAX {
        bail!("amount {s} must be > 0 and <= 10^9");
    }
    if v % CENT != 0 {
        bail!("amount {s} has more than 2 decimals");
    }
    Ok(v)
}

impl AmountDist {
    /// Parses `fixed:A`, `uniform:A..B` or `lognormal:MEDIAN,SIGMA` (major units, up to
    /// 2 decimals).
    pub fn parse(spec: &str) -> anyhow::Result<Self> {
        let spec = spec.trim();
        if let Some(a) = spec.strip_prefix("fixed:") {
            return Ok(AmountDist::Fixed(parse_major(a)?));
        }
        if let Some(r) = spec.strip_prefix("uniform:") {
            let (lo, hi) = r
                .split_once("..")
                .with_context(|| format!("uniform amounts need `A..B`, got {spec:?}"))?;
            let (lo, hi) = (parse_major(lo)?, parse_major(hi)?);
            if lo > hi {
                bail!("uniform amount range is empty: {spec}");
            }
            return Ok(AmountDist::Uniform { lo, hi });
        }
        if let Some(r) = spec.strip_prefix("lognormal:") {
            let (m, s) = r
                .split_once(',')
                .with_context(|| format!("lognormal needs `MEDIAN,SIGMA`, got {spec:?}"))?;
            let median = parse_major(m)?;
            let sigma: f64 = s.trim().parse().context("bad lognormal sigma")?;
            if !(sigma.is_finite() && (0.0..=5.0).contains(&sigma)) {
                bail!("lognormal sigma must be in [0, 5]");
            }
            return Ok(AmountDist::LogNormal {
                median,
                sigma,
                max: AMOUNT_MAX,
            });
        }
        bail!("amount distribution must be fixed:A, uniform:A..B or lognormal:MEDIAN,SIGMA; got {spec:?}")
    }

    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        match *self {
            AmountDist::Fixed(v) => v,
            AmountDist::Uniform { lo, hi } => rng.gen_range(lo / CENT..=hi / CENT) * CENT,
            AmountDist::LogNormal { median, sigma, max } => {
                // Box-Muller standard normal.
                let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
                let u2: f64 = rng.gen();
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                let v = (median as f64) * (sigma * z).exp();
                let cents = (v / CENT as f64).round().max(1.0);
                ((cents as i64).saturating_mul(CENT)).min(max)
            }
        }
    }

    /// Largest amount this distribution can draw.
    pub fn max(&self) -> i64 {
        match *self {
            AmountDist::Fixed(v) => v,
            AmountDist::Uniform { hi, .. } => hi,
            AmountDist::LogNormal { max, .. } => max,
        }
    }
}

/// Who pays whom.
#[derive(Debug, Clone)]
pub struct Mix {
    pub payers: Picker,
    pub payees: Picker,
    /// Percent (0..=100) of all transfers paid by the hot payer (DFSP index 0).
    pub hot_payer_pct: u32,
}

/// Redraws before falling back to a fixed choice (payee equal to payer, or a non-hot
/// payer drawing the hot one).
const PAYEE_REDRAWS: usize = 8;

impl Mix {
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> (u32, u32) {
        let n = self.payers.n();
        let payer = if self.hot_payer_pct == 0 {
            self.payers.sample(rng)
        } else if rng.gen_range(0..100) < self.hot_payer_pct {
            0
        } else {
            // The other transfers come from the others, so the hot share is exactly X%.
            let mut p = self.payers.sample(rng);
            let mut tries = 0;
            while p == 0 && tries < PAYEE_REDRAWS {
                p = self.payers.sample(rng);
                tries += 1;
            }
            if p == 0 {
                1 % n
            } else {
                p
            }
        };
        let mut payee = self.payees.sample(rng);
        let mut tries = 0;
        while payee == payer && tries < PAYEE_REDRAWS {
            payee = self.payees.sample(rng);
            tries += 1;
        }
        if payee == payer {
            payee = (payer + 1) % n;
        }
        (payer, payee)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn zipf_is_skewed_and_uniform_is_not() {
        let mut rng = StdRng::seed_from_u64(1);
        let z = Picker::parse("zipf:1.2", 50).unwrap();
        let u = Picker::parse("uniform", 50).unwrap();
        let mut zc = [0u32; 50];
        let mut uc = [0u32; 50];
        for _ in 0..50_000 {
            zc[z.sample(&mut rng) as usize] += 1;
            uc[u.sample(&mut rng) as usize] += 1;
        }
        assert!(zc[0] > 10 * zc[49]);
        assert!(uc[0] < 2 * uc[49]);
        assert!(Picker::parse("zipf:0", 5).is_err());
        assert!(Picker::parse("pareto", 5).is_err());
    }

    #[test]
    fn hot_payer_share_and_distinct_parties() {
        let mut rng = StdRng::seed_from_u64(2);
        let mix = Mix {
            payers: Picker::parse("uniform", 10).unwrap(),
            payees: Picker::parse("uniform", 10).unwrap(),
            hot_payer_pct: 70,
        };
        let mut hot = 0;
        for _ in 0..10_000 {
            let (p, q) = mix.pick(&mut rng);
            assert_ne!(p, q);
            if p == 0 {
                hot += 1;
            }
        }
        assert!((6800..7200).contains(&hot), "{hot}");
    }

    #[test]
    fn amounts() {
        let mut rng = StdRng::seed_from_u64(3);
        let d = AmountDist::parse("uniform:1..10").unwrap();
        for _ in 0..1000 {
            let a = d.sample(&mut rng);
            assert!((10_000..=100_000).contains(&a) && a % 100 == 0);
        }
        assert_eq!(
            AmountDist::parse("fixed:2.5").unwrap(),
            AmountDist::Fixed(25_000)
        );
        let l = AmountDist::parse("lognormal:100,1").unwrap();
        for _ in 0..1000 {
            let a = l.sample(&mut rng);
            assert!(a >= 100 && a % 100 == 0);
        }
        assert!(AmountDist::parse("uniform:5..1").is_err());
        assert!(AmountDist::parse("fixed:0.001").is_err());
    }
}
