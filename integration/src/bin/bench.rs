//! `bench`: run the benchmark harness (see shared/design/benchmarks.md).
//!
//! ```text
//! bench [--iterations N] [--smoke] [--only CASES] [--bin-dir DIR] [--out DIR]
//! bench churn [--pods N] [--concurrency C] [--bin-dir DIR]
//! ```
//! Full runs write integration/results/latest.{json,md,svg}; `--smoke` runs
//! write to a temporary directory unless `--out` is given. Needs root.
//! `--etcd` runs only the etcd store's benchmark (etcd.{json,md}).
//! `bench profile` profiles the coordinator's ADD (profile-add.{json,md}).

use std::path::PathBuf;
use std::process::ExitCode;

use integration::bench::profile::ProfileOptions;
use integration::bench::{self, Options};

const USAGE: &str =
    "usage: bench [--iterations N] [--del-rounds N] [--smoke] [--only CASES] [--bin-dir DIR] [--out DIR]
  --iterations N  recorded iterations per scenario (default 80; smoke 3)
  --del-rounds N  recorded rounds of the paired first-NIC DEL rows (our DEL and
                  ip link del of a veth pair next to it; default 200, never
                  fewer than the iterations; given --iterations, that number)
  --smoke         3 iterations, node-size 100, burst 16, IPAM pre-fill 100,
                  one 1 s datapath round;
                  writes to a temp dir (never the committed results)
  --only CASES    comma-separated case name prefixes (floor kdel cone sbr ctwo
                  cdet cbig hl ci burst datapath; cbase and spider with the env
                  below); a partial run, for iterating
  --bin-dir DIR   our plugin binaries (default target/release; build them with
                  scripts/build.sh, which links coordinator as it ships).
                  Every binary measured runs from a fresh copy
  --out DIR       where latest.{json,md,svg} go (default integration/results)
  --etcd          only the etcd store vs file store benchmark (etcd.{json,md})
usage: bench profile [--pairs N] [--period-us P] [--profiled DIR] [--bin-dir DIR] [--out DIR]
                     [--keep-data]
  where the coordinator's ADD and DEL spend their CPU: N (default 200) ADD/DEL
  pairs of the underlay 1-NIC IPv4 case under perf record (cpu-clock every P
  µs, default 50, call graphs), next to the same rounds' anchors; the
  unstripped build in DIR (default target/profiling: scripts/profile-add.sh
  builds it); writes profile-add.{json,md} (default integration/results),
  with --keep-data also profile-add.perf.data (for perf report)
usage: bench churn [--pods N] [--concurrency C] [--bin-dir DIR]
  pod lifecycles with random kill -9 of a plugin mid-call, then leak and
  duplicate counts (default 1000 pods, 8 concurrent); writes churn.json
env: SPIDERPOOL_COORDINATOR=/path/to/coordinator adds the Spiderpool anchor
     BASELINE_COORDINATOR=/path/to/coordinator adds another build of ours (A/B:
       bench --only cone,cbase)";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("churn") => return churn(std::env::args().skip(2).collect()),
        Some("profile") => return profile(std::env::args().skip(2).collect()),
        _ => {}
    }
    let mut iterations = None;
    let mut del_rounds = None;
    let mut smoke = false;
    let mut bin_dir = bench::release_dir();
    let mut out = None;
    let mut only = None;
    let mut etcd = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .map(|v| (name.to_string(), v))
                .ok_or_else(|| format!("{name} needs a value"))
        };
        let parsed: Result<(), String> = match a.as_str() {
            "--iterations" => positive(value("--iterations")).map(|n| iterations = Some(n)),
            "--del-rounds" => positive(value("--del-rounds")).map(|n| del_rounds = Some(n)),
            "--smoke" => {
                smoke = true;
                Ok(())
            }
            "--etcd" => {
                etcd = true;
                Ok(())
            }
            "--bin-dir" => value("--bin-dir").map(|(_, v)| bin_dir = PathBuf::from(v)),
            "--out" => value("--out").map(|(_, v)| out = Some(PathBuf::from(v))),
            "--only" => value("--only")
                .map(|(_, v)| only = Some(v.split(',').map(str::to_string).collect::<Vec<_>>())),
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
    if etcd {
        return etcd_bench(&bin_dir, &out_dir, smoke);
    }
    let mut opts = if smoke {
        Options::smoke(bin_dir, out_dir.clone())
    } else {
        Options::full(bin_dir, out_dir.clone())
    };
    if let Some(n) = iterations {
        opts.iterations = n;
        opts.del_rounds = opts.del_rounds.min(n);
    }
    if let Some(n) = del_rounds {
        opts.del_rounds = n;
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

/// A positive count given to option `name`.
fn positive(arg: Result<(String, String), String>) -> Result<usize, String> {
    let (name, v) = arg?;
    v.parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{name} {v}: want a positive number"))
}

/// `bench churn`: see `integration::bench::churn`. Prints the report and
/// writes integration/results/churn.json; fails when anything leaked.
fn churn(args: Vec<String>) -> ExitCode {
    let (mut pods, mut conc, mut bin_dir) = (1000, 8, bench::release_dir());
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        match (a.as_str(), v.parse::<usize>()) {
            ("--pods", Ok(n)) if n > 0 => pods = n,
            ("--concurrency", Ok(n)) if n > 0 => conc = n,
            ("--bin-dir", _) => bin_dir = PathBuf::from(v),
            _ => {
                eprintln!("bench churn: bad argument {a} {v}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let opts = Options::full(bin_dir, bench::results_dir());
    let report = match bench::churn::run(&opts, pods, conc) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench churn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    println!("{json}");
    if let Err(e) = std::fs::write(bench::results_dir().join("churn.json"), &json) {
        eprintln!("bench churn: writing churn.json: {e}");
        return ExitCode::FAILURE;
    }
    match report.leaked.is_empty() && report.duplicate_ips.is_empty() && report.del_gave_up == 0 {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    }
}

/// `bench profile`: see `integration::bench::profile`. The same binary,
/// re-run by perf with `--inner STATE`, does the rounds.
fn profile(args: Vec<String>) -> ExitCode {
    let target = bench::release_dir().join("..");
    let mut opts = ProfileOptions::new(
        bench::release_dir(),
        target.join("profiling"),
        bench::results_dir(),
    );
    let mut inner = None;
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        if a == "--keep-data" {
            opts.keep_data = true;
            continue;
        }
        let v = it.next().unwrap_or_default();
        let num = v.parse::<usize>().ok().filter(|n| *n > 0);
        match (a.as_str(), num) {
            ("--pairs", Some(n)) => opts.pairs = n,
            ("--warmup", _) => opts.warmup = v.parse().unwrap_or(opts.warmup),
            ("--period-us", Some(n)) => opts.period_us = n as u64,
            ("--profiled", _) => opts.profiled = PathBuf::from(v),
            ("--bin-dir", _) => opts.bin_dir = PathBuf::from(v),
            ("--out", _) => opts.out_dir = PathBuf::from(v),
            ("--inner", _) => inner = Some(PathBuf::from(v)),
            _ => {
                eprintln!("bench profile: bad argument {a} {v}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(state) = inner {
        return match bench::profile::inner(&state, &opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench profile (inner run): {e}");
                ExitCode::FAILURE
            }
        };
    }
    let report = match bench::profile::run(&opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench profile: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    if let Err(e) = report.write(&opts.out_dir) {
        eprintln!("bench profile: writing to {}: {e}", opts.out_dir.display());
        return ExitCode::FAILURE;
    }
    eprintln!(
        "bench profile: wrote {}",
        opts.out_dir.join("profile-add.{json,md}").display()
    );
    ExitCode::SUCCESS
}

fn etcd_bench(bin_dir: &std::path::Path, out_dir: &std::path::Path, smoke: bool) -> ExitCode {
    let mut opts = bench::etcd::Options::full(bin_dir.join("coordinator-ipam"));
    if smoke {
        (opts.sequential, opts.adds, opts.concurrency) = (5, 60, 20);
    }
    let report = match bench::etcd::run(&opts).and_then(|r| r.write(out_dir).map(|()| r)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: etcd: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", report.markdown());
    eprintln!("bench: wrote {}", out_dir.join("etcd.{json,md}").display());
    ExitCode::SUCCESS
}
