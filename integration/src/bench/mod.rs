//! The benchmark harness (shared/design/benchmarks.md): per-exec latency,
//! CPU and peak RSS of our plugins against the reference plugins, measured
//! in the test lab, interleaved in one run; node-size, burst and IPAM
//! scenarios; binary sizes; a JSON/Markdown/SVG report.

mod burst;
mod cases;
mod checks;
pub mod churn;
mod confs;
pub mod datapath;
pub mod etcd;
mod interleave;
mod ipam_cases;
pub(crate) mod node;
mod options;
mod pod_cases;
pub mod profile;
mod report;
mod setup;
mod stats;

use std::io;
use std::time::Instant;

pub use burst::BurstReport;
pub use cases::Kind;
pub use options::{
    outputs, release_dir, results_dir, NodeFill, Options, BASELINE_ENV, SPIDERPOOL_ENV,
};
pub use report::{Binary, Check, Meta, Report, Row};
pub use stats::{Sample, Stats, Summary};

use pod_cases::PodCases;

/// Run every scenario and build the report (not written yet: see
/// [`Report::write`]).
pub fn run(opts: &Options) -> io::Result<Report> {
    let started = Instant::now();
    let mut meta = Meta::now(opts);
    let mut notes = Vec::new();
    setup::require_binaries(&opts.bin_dir)?;
    // Every case runs copies; the report names the binaries given.
    let installed = setup::install(opts)?;
    let given = opts;
    let opts = &installed.opts;
    let ipam_ok = setup::ipam_usable(opts, &mut notes);
    let (labs, node_fill) = setup::labs(opts, &mut notes)?;

    let mut cases = PodCases::new(opts, &labs).declare(&mut notes)?;
    let (ipam, prefill) = ipam_cases::declare(&labs.lab, opts, ipam_ok)?;
    cases.extend(ipam);
    cases.retain(|c| opts.wants(&c.short));
    let mut rows = interleave::measure(&cases, opts);
    if !ipam_ok {
        rows.extend(ipam_cases::skipped_rows(opts));
    }
    for r in &mut rows {
        r.finish();
    }
    notes.extend(rss_floor_note(&rows));
    drop(labs);

    let burst = match opts.wants("burst") {
        true => Some(burst::run(opts, ipam_ok)?),
        false => None,
    };
    let datapath = match opts.wants("datapath") {
        true => Some(datapath::run(&opts.bin_dir, &opts.datapath)?),
        false => None,
    };
    let binaries = report::binaries(&given.bin_dir);
    meta.duration_s = started.elapsed().as_secs_f64();
    let mut report = Report {
        meta,
        rows,
        binaries,
        node_fill,
        ipam_prefill: prefill,
        burst,
        datapath,
        checks: Vec::new(),
        notes,
    };
    report.checks = checks::checks(&report, opts);
    Ok(report)
}

/// How to read the peak RSS column, with the floor row's own value.
fn rss_floor_note(rows: &[Row]) -> Option<String> {
    let floor = rows.iter().find(|r| r.id == "floor/exec")?.stats?;
    Some(format!(
        "Peak RSS is the child's ru_maxrss, which Linux makes at least the harness's own \
         anonymous RSS at fork time (it survives exec): the /bin/true floor row shows that \
         bound ({:.2} MiB here). A plugin row at the floor's value is an upper bound; above \
         it, the plugin's own peak.",
        floor.rss_kib.max / 1024.0
    ))
}
