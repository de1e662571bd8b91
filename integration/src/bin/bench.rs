//! `bench`: run the benchmark harness (see shared/design/benchmarks.md).
//!
//! ```text
//! bench [--iterations N] [--smoke] [--only CASES] [--bin-dir DIR] [--out DIR]
//! ```
//! Full runs write integration/results/latest.{json,md,svg}; `--smoke` runs
//! write to a temporary directory unless `--out` is given. Needs root.

use std::path::PathBuf;
use std::process::ExitCode;

use integration::bench::{self, Options};

const USAGE: &str =
    "usage: bench [--iterations N] [--smoke] [--only CASES] [--bin-dir DIR] [--out DIR]
  --iterations N  recorded iterations per scenario (default 50; smoke 3)
  --smoke         3 iterations, node-size 100, burst 16, IPAM pre-fill 100;
                  writes to a temp dir (never the committed results)
  --only CASES    comma-separated case name prefixes (floor kdel cone sbr ctwo
                  cdet cbig hl ci burst); a partial run, for iterating
  --bin-dir DIR   our plugin binaries (default target/release)
  --out DIR       where latest.{json,md,svg} go (default integration/results)
env: SPIDERPOOL_COORDINATOR=/path/to/coordinator adds the Spiderpool anchor
     BASELINE_COORDINATOR=/path/to/coordinator adds another build of ours (A/B)";

fn main() -> ExitCode {
    let mut iterations = None;
    let mut smoke = false;
    let mut bin_dir = bench::release_dir();
    let mut out = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--iterations" => value("--iterations").and_then(|v| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(|n| iterations = Some(n))
                    .ok_or_else(|| format!("--iterations {v}: want a positive number"))
            }),
            "--smoke" => {
                smoke = true;
                Ok(())
            }
            "--bin-dir" => value("--bin-dir").map(|v| bin_dir = PathBuf::from(v)),
            "--out" => value("--out").map(|v| out = Some(PathBuf::from(v))),
            "--only" => value("--only")
                .map(|v| only = Some(v.split(',').map(str::to_string).collect::<Vec<_>>())),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument {other}")),
        };
        if let Err(e) = parsed {
            eprintln!("bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    // A smoke or partial run never overwrites the committed results.
    let out_dir = match (out, smoke || only.is_some()) {
        (Some(o), _) => o,
        (None, true) => std::env::temp_dir().join(format!("bench-smoke-{}", std::process::id())),
        (None, false) => bench::results_dir(),
    };
    let mut opts = if smoke {
        Options::smoke(bin_dir, out_dir.clone())
    } else {
        Options::full(bin_dir, out_dir.clone())
    };
    if let Some(n) = iterations {
        opts.iterations = n;
    }
    opts.only = only;
    let report = match bench::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    if let Err(e) = report.write(&out_dir) {
        eprintln!("bench: writing results to {}: {e}", out_dir.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench: wrote {}",
        out_dir.join("latest.{json,md,svg}").display()
    );
    ExitCode::SUCCESS
}
