//! The post-run audit: every DFSP's position, as the hub reports it, must equal what
//! loadgen's own ledger of committed transfers says.
//!
//! Transfers still unfinished at the end (no final callback seen) may or may not have been
//! committed by the hub: each widens the accepted range of its payer (up to +amount) and
//! payee (down to -amount). With none unfinished the check is exact. Per currency, the sum
//! of all positions must also equal the sum before the load (money is conserved).

use crate::fspiop::format_amount;
use serde::Serialize;
use std::collections::HashMap;

/// One account's check.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRow {
    pub dfsp: String,
    pub currency: String,
    pub baseline: String,
    pub expected: String,
    pub actual: Option<String>,
    /// Widening of the accepted range by unfinished transfers.
    pub unfinished_as_payer: String,
    pub unfinished_as_payee: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditReport {
    pub accounts_checked: usize,
    /// Accounts whose reported position is outside the accepted range (or missing).
    pub mismatches: Vec<AuditRow>,
    /// Currencies whose positions do not add up to the same total as before the load
    /// (checked only when nothing is unfinished).
    pub conservation_failures: Vec<String>,
}

impl AuditReport {
    pub fn position_mismatches(&self) -> usize {
        self.mismatches.len() + self.conservation_failures.len()
    }
    pub fn ok(&self) -> bool {
        self.position_mismatches() == 0
    }
}

/// Inputs per account (index `dfsp * ncur + cur`), internal units.
pub struct AuditInput<'a> {
    pub names: &'a [String],
    pub currencies: &'a [String],
    pub baseline: &'a [i64],
    pub expected: &'a [i64],
    pub unfinished_as_payer: &'a HashMap<usize, i64>,
    pub unfinished_as_payee: &'a HashMap<usize, i64>,
    /// Positions read from the hub after the run, per DFSP (`None`: could not be read).
    pub actual: &'a [Option<HashMap<String, i64>>],
}

pub fn audit(inp: &AuditInput<'_>) -> AuditReport {
    let ncur = inp.currencies.len();
    let mut report = AuditReport::default();
    let mut sum_before = vec![0i64; ncur];
    let mut sum_after = vec![0i64; ncur];
    let mut complete = vec![true; ncur];
    let any_unfinished = !inp.unfinished_as_payer.is_empty();
    for (d, name) in inp.names.iter().enumerate() {
        for (c, cur) in inp.currencies.iter().enumerate() {
            let i = d * ncur + c;
            let up = inp.unfinished_as_payer.get(&i).copied().unwrap_or(0);
            let down = inp.unfinished_as_payee.get(&i).copied().unwrap_or(0);
            let expected = inp.expected[i];
            let actual = inp
                .actual
                .get(d)
                .and_then(|m| m.as_ref())
                .and_then(|m| m.get(cur).copied());
            let ok = actual.is_some_and(|a| a >= expected - down && a <= expected + up);
            sum_before[c] += inp.baseline[i];
            match actual {
                Some(a) => sum_after[c] += a,
                None => complete[c] = false,
            }
            report.accounts_checked += 1;
            if !ok {
                report.mismatches.push(AuditRow {
                    dfsp: name.clone(),
                    currency: cur.clone(),
                    baseline: format_amount(inp.baseline[i]),
                    expected: format_amount(expected),
                    actual: actual.map(format_amount),
                    unfinished_as_payer: format_amount(up),
                    unfinished_as_payee: format_amount(down),
                    ok,
                });
            }
        }
    }
    if !any_unfinished {
        for (c, cur) in inp.currencies.iter().enumerate() {
            if complete[c] && sum_before[c] != sum_after[c] {
                report.conservation_failures.push(format!(
                    "{cur}: positions of loadgen's DFSPs sum to {} after the run, {} before",
                    format_amount(sum_after[c]),
                    format_amount(sum_before[c])
                ));
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> (Vec<String>, Vec<String>) {
        (vec!["a".into(), "b".into()], vec!["USD".into()])
    }

    fn actual(a: i64, b: i64) -> Vec<Option<HashMap<String, i64>>> {
        vec![
            Some(HashMap::from([("USD".to_string(), a)])),
            Some(HashMap::from([("USD".to_string(), b)])),
        ]
    }

    #[test]
    fn exact_match_passes_and_an_injected_difference_is_caught() {
        let (n, c) = names();
        let none = HashMap::new();
        let base = [0, 0];
        let exp = [500, -500];
        let good = actual(500, -500);
        let r = audit(&AuditInput {
            names: &n,
            currencies: &c,
            baseline: &base,
            expected: &exp,
            unfinished_as_payer: &none,
            unfinished_as_payee: &none,
            actual: &good,
        });
        assert!(r.ok(), "{r:?}");
        let bad = actual(501, -500);
        let r = audit(&AuditInput {
            names: &n,
            currencies: &c,
            baseline: &base,
            expected: &exp,
            unfinished_as_payer: &none,
            unfinished_as_payee: &none,
            actual: &bad,
        });
        assert_eq!(r.mismatches.len(), 1);
        assert_eq!(r.mismatches[0].dfsp, "a");
        assert_eq!(r.conservation_failures.len(), 1);
        assert!(!r.ok());
    }

    #[test]
    fn unfinished_transfers_widen_the_range_only_by_their_amount() {
        let (n, c) = names();
        let up = HashMap::from([(0usize, 100i64)]);
        let down = HashMap::from([(1usize, 100i64)]);
        let base = [0, 0];
        let exp = [0, 0];
        let committed_anyway = actual(100, -100);
        let r = audit(&AuditInput {
            names: &n,
            currencies: &c,
            baseline: &base,
            expected: &exp,
            unfinished_as_payer: &up,
            unfinished_as_payee: &down,
            actual: &committed_anyway,
        });
        assert!(r.ok(), "{r:?}");
        let too_far = actual(101, -100);
        let r = audit(&AuditInput {
            names: &n,
            currencies: &c,
            baseline: &base,
            expected: &exp,
            unfinished_as_payer: &up,
            unfinished_as_payee: &down,
            actual: &too_far,
        });
        assert_eq!(r.mismatches.len(), 1);
        let missing = vec![None, None];
        let r = audit(&AuditInput {
            names: &n,
            currencies: &c,
            baseline: &base,
            expected: &exp,
            unfinished_as_payer: &up,
            unfinished_as_payee: &down,
            actual: &missing,
        });
        assert_eq!(r.mismatches.len(), 2);
    }
}
