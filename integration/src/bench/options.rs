//! What one benchmark run does and where it writes: the options of a full,
//! smoke or partial run, and the paths of the committed results.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::datapath;

/// What to run and where to write.
#[derive(Clone, Debug)]
pub struct Options {
    /// Recorded iterations per scenario (after warm-up).
    pub iterations: usize,
    /// Recorded rounds of the paired first-NIC DEL rows (our DEL and the
    /// kernel's deletion next to it): the rounds beyond `iterations` run
    /// only the cases that hold such a pair and record only the pair.
    pub del_rounds: usize,
    pub warmup: usize,
    /// Small sizes for the test suite; never writes the committed results.
    pub smoke: bool,
    /// Our plugin binaries (`coordinator`, `coordinator-ipam`).
    pub bin_dir: PathBuf,
    /// Where `latest.{json,md,svg}` go.
    pub out_dir: PathBuf,
    /// Pods' routes (and neighbours) pre-loaded in the node-size scenario.
    pub node_size: usize,
    pub burst_pods: usize,
    pub burst_concurrency: usize,
    /// Addresses allocated before the "full pool" IPAM rows.
    pub ipam_prefill: usize,
    /// A Spiderpool coordinator binary to benchmark as an anchor.
    pub spiderpool: Option<PathBuf>,
    /// Rounds and run length of the datapath scenario.
    pub datapath: datapath::DatapathOptions,
    /// Run only the cases whose short name starts with one of these
    /// (`bench --only cone,sbr,kdel`; `burst` names the burst).
    pub only: Option<Vec<String>>,
    /// Another build of our coordinator, run next to ours (A/B).
    pub baseline: Option<PathBuf>,
}

impl Options {
    /// Is the case (or part) named `short` selected by `--only`?
    pub fn wants(&self, short: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| short.starts_with(p.as_str())))
    }
}

/// Env var naming a baseline build of the coordinator (optional A/B row).
pub const BASELINE_ENV: &str = "BASELINE_COORDINATOR";

/// Env var naming a Spiderpool coordinator binary (anchor, optional).
pub const SPIDERPOOL_ENV: &str = "SPIDERPOOL_COORDINATOR";

impl Options {
    /// The full run: 80 iterations (at 30 even the ratios moved between
    /// runs), 2000 routes, 200 pods, 4000 addresses, 5 datapath rounds.
    pub fn full(bin_dir: PathBuf, out_dir: PathBuf) -> Options {
        Options {
            iterations: 80,
            del_rounds: 200,
            warmup: 3,
            smoke: false,
            bin_dir,
            out_dir,
            node_size: 2000,
            burst_pods: 200,
            burst_concurrency: 8,
            ipam_prefill: 4000,
            spiderpool: std::env::var_os(SPIDERPOOL_ENV).map(PathBuf::from),
            only: None,
            baseline: std::env::var_os(BASELINE_ENV).map(PathBuf::from),
            datapath: datapath::DatapathOptions::full(),
        }
    }

    /// The test-suite run: 3 iterations and small sizes.
    pub fn smoke(bin_dir: PathBuf, out_dir: PathBuf) -> Options {
        Options {
            iterations: 3,
            del_rounds: 3,
            warmup: 1,
            smoke: true,
            node_size: 100,
            burst_pods: 16,
            ipam_prefill: 100,
            datapath: datapath::DatapathOptions::smoke(),
            ..Options::full(bin_dir, out_dir)
        }
    }
}

/// `<workspace>/integration/results`: where committed results live.
pub fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// `<workspace>/target/release`.
pub fn release_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("release")
}

/// The three output files of a report written to `dir`: JSON, Markdown, SVG.
pub fn outputs(dir: &Path) -> [PathBuf; 3] {
    ["latest.json", "latest.md", "latest.svg"].map(|f| dir.join(f))
}

/// Node-size fixture facts, in the report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeFill {
    pub routes: usize,
    pub neighbours: usize,
    pub table: u32,
}
