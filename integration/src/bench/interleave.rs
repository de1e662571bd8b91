//! The measuring loop: every case once per round, in an order that rotates,
//! so ours and its anchors see the same machine; warm-up rounds first, then
//! the recorded ones, then the extra rounds of the paired DEL rows only.

use super::cases::{Case, Iteration};
use super::options::Options;
use super::report::Row;

/// Run `cases` interleaved; one row per row spec, in case order (not
/// finished yet: see [`Row::finish`]).
pub(super) fn measure(cases: &[Case], opts: &Options) -> Vec<Row> {
    let mut rows: Vec<Row> = cases
        .iter()
        .flat_map(|c| c.rows.iter().map(Row::new))
        .collect();
    let mut skipped = vec![false; cases.len()];
    let total = opts.warmup + opts.iterations.max(opts.del_rounds);
    for iter in 0..total {
        if iter % 10 == 0 {
            eprintln!("bench: iteration {}/{total}", iter + 1);
        }
        let del_only = iter >= opts.warmup + opts.iterations;
        // Rotate the order so no case always follows the same neighbour.
        for j in 0..cases.len() {
            let ci = (iter + j) % cases.len();
            let case = &cases[ci];
            if skipped[ci] || (del_only && case.paired_rows().is_none()) {
                continue;
            }
            let it = case.once(iter);
            let first_row: usize = cases[..ci].iter().map(|c| c.rows.len()).sum();
            let case_rows = &mut rows[first_row..first_row + case.rows.len()];
            if iter == 0 && case.optional && !it.errors.is_empty() {
                skipped[ci] = true;
                for r in case_rows {
                    r.skipped = Some(it.errors.join("; "));
                }
                continue;
            }
            if iter < opts.warmup {
                continue;
            }
            record(case_rows, case, &it, del_only);
        }
    }
    rows
}

/// Keep one iteration's samples in the case's rows (only the paired rows in
/// a DEL-only round); a missing sample counts as a failure with its errors.
fn record(rows: &mut [Row], case: &Case, it: &Iteration, del_only: bool) {
    for (k, s) in it.samples.iter().enumerate() {
        if del_only && !case.paired_rows().is_some_and(|p| p.contains(&k)) {
            continue;
        }
        let row = &mut rows[k];
        match s {
            Some(s) => row.samples.push(*s),
            None => {
                row.failures += 1;
                for e in &it.errors {
                    if row.errors.len() < 3 && !row.errors.contains(e) {
                        row.errors.push(e.clone());
                    }
                }
            }
        }
    }
}
