//! `bench profile`: where the coordinator's ADD (and DEL) spends its CPU,
//! from a profile anyone can re-run (`scripts/profile-add.sh`).
//!
//! The harness re-runs itself under `perf record` (cpu-clock sampling with
//! call graphs, events off until asked). That inner run builds a lab and does
//! rounds of: the anchors timed without perf (`/bin/true`, `sbr` ADD/DEL, the
//! release coordinator, the profiled build), then one coordinator ADD/DEL
//! pair of the underlay 1-NIC IPv4 case with perf switched on through its
//! control FIFO. The outer run reads `perf script`, keeps the profiled
//! plugin's processes (in order: ADD, DEL, ADD, ...) and sorts their samples
//! into the categories of [`classify`].

pub mod classify;
mod render;

use std::io;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use super::cases::{floor_case, lab_chain, pod_case, Case, Kind, RowSpec};
use super::confs;
use super::report::{utc_now, Row};
use super::setup::copy_binary;
use crate::lab::Lab;
use classify::{Breakdown, StackSample};

/// What to profile and where the results go.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    /// Profiled ADD/DEL pairs (each round also times the anchors).
    pub pairs: usize,
    pub warmup: usize,
    /// Release plugins: the anchor row "coordinator (release build)".
    pub bin_dir: PathBuf,
    /// Directory of the unstripped coordinator build that is profiled.
    pub profiled: PathBuf,
    /// Where `profile-add.{json,md}` go.
    pub out_dir: PathBuf,
    /// cpu-clock sampling period.
    pub period_us: u64,
    pub perf: PathBuf,
    /// Keep perf.data as `<out_dir>/profile-add.perf.data` (for `perf report`).
    pub keep_data: bool,
}

impl ProfileOptions {
    pub fn new(bin_dir: PathBuf, profiled: PathBuf, out_dir: PathBuf) -> ProfileOptions {
        ProfileOptions {
            pairs: 200,
            warmup: 3,
            bin_dir,
            profiled,
            out_dir,
            period_us: 50,
            perf: PathBuf::from("perf"),
            keep_data: false,
        }
    }
}

/// Row ids of the inner run, in the order of its cases' rows.
pub const ANCHOR_IDS: [&str; 9] = [
    "floor/exec",
    "sbr/add",
    "sbr/del",
    "release/add",
    "release/del",
    "plain/add",
    "plain/del",
    "profiled/add",
    "profiled/del",
];

#[derive(Clone, Debug, Serialize)]
pub struct ProfileReport {
    pub started_utc: String,
    pub duration_s: f64,
    pub kernel: String,
    pub cpus: usize,
    pub loadavg: String,
    pub pairs: usize,
    pub period_us: u64,
    pub profiled: String,
    /// Timed without perf, interleaved in the same rounds (the last two rows
    /// are the profiled pair itself, timed under perf).
    pub anchors: Vec<Row>,
    pub add: Breakdown,
    pub del: Breakdown,
}

impl ProfileReport {
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.anchors.iter().find(|r| r.id == id && r.n > 0)
    }

    /// Mean CPU (ms) per exec of a row: category shares are sample means.
    pub fn mean_cpu_ms(&self, id: &str) -> Option<f64> {
        let r = self.row(id)?;
        let sum: u64 = r.samples.iter().map(|s| s.cpu_us).sum();
        Some(sum as f64 / r.samples.len() as f64 / 1000.0)
    }

    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(dir.join("profile-add.json"), json + "\n")?;
        std::fs::write(dir.join("profile-add.md"), self.markdown())
    }
}

fn read_trim(p: &str) -> String {
    std::fs::read_to_string(p)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The outer run: perf around the inner run, then the breakdown.
pub fn run(opts: &ProfileOptions) -> io::Result<ProfileReport> {
    let started = Instant::now();
    let started_utc = utc_now();
    let loadavg = read_trim("/proc/loadavg");
    let exe_path = opts.profiled.join("coordinator");
    check_symbols(&exe_path)?;
    let state = std::env::temp_dir().join(format!("bench-profile-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let _cleanup = RemoveDir(state.clone());
    for f in ["ctl", "ack"] {
        nix::unistd::mkfifo(
            &state.join(f),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(io::Error::from)?;
    }
    // Copies, as in `bench` (see bench::setup::Installed): a binary
    // exec'd straight from the linker's output costs more per exec. They
    // live in `state` until perf script has read their symbols.
    let (bin_dir, profiled) = (state.join("bin"), state.join("profiled"));
    for b in ["coordinator", "coordinator-ipam"] {
        copy_binary(&opts.bin_dir.join(b), &bin_dir)?;
    }
    copy_binary(&exe_path, &profiled)?;
    let data = state.join("perf.data");
    let me = std::env::current_exe()?;
    let status = Command::new(&opts.perf)
        .args(["record", "-q", "-e", "cpu-clock", "-c"])
        .arg((opts.period_us * 1000).to_string())
        .args(["-g", "-D", "-1", "--control"])
        .arg(format!(
            "fifo:{},{}",
            state.join("ctl").display(),
            state.join("ack").display()
        ))
        .arg("-o")
        .arg(&data)
        .arg("--")
        .arg(&me)
        .args(["profile", "--inner"])
        .arg(&state)
        .arg("--pairs")
        .arg(opts.pairs.to_string())
        .arg("--warmup")
        .arg(opts.warmup.to_string())
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--profiled")
        .arg(&profiled)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", opts.perf.display())))?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "perf record / inner run failed: {status}"
        )));
    }
    let anchors: Vec<Row> = serde_json::from_slice(&std::fs::read(state.join("anchors.json"))?)
        .map_err(io::Error::other)?;
    let script = Command::new(&opts.perf)
        .args(["script", "-F", "comm,pid,ip,sym,dso", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()?;
    if !script.status.success() {
        return Err(io::Error::other(format!("perf script: {}", script.status)));
    }
    if opts.keep_data {
        std::fs::create_dir_all(&opts.out_dir)?;
        std::fs::copy(&data, opts.out_dir.join("profile-add.perf.data"))?;
    }
    let samples = classify::parse(&String::from_utf8_lossy(&script.stdout));
    let (add, del) = split(samples, "coordinator", opts.pairs)?;
    Ok(ProfileReport {
        started_utc,
        duration_s: started.elapsed().as_secs_f64(),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        loadavg,
        pairs: opts.pairs,
        period_us: opts.period_us,
        profiled: exe_path.display().to_string(),
        anchors,
        add,
        del,
    })
}

/// The profiled plugin's processes alternate ADD, DEL (one pair at a time
/// under perf): split their samples into the two verbs.
fn split(
    samples: Vec<StackSample>,
    comm: &str,
    pairs: usize,
) -> io::Result<(Breakdown, Breakdown)> {
    let procs = classify::processes(samples, comm);
    if procs.len() != 2 * pairs {
        return Err(io::Error::other(format!(
            "the profile holds {} {comm} processes, want {} (an ADD and a DEL per pair): \
             a failed call or an exec without samples",
            procs.len(),
            2 * pairs
        )));
    }
    let (mut add, mut del) = (Breakdown::default(), Breakdown::default());
    for (i, (_, ss)) in procs.iter().enumerate() {
        let b = if i % 2 == 0 { &mut add } else { &mut del };
        b.processes += 1;
        for s in ss {
            b.add(s, comm);
        }
    }
    Ok((add, del))
}

/// Without a symbol table perf names no user frame: refuse to guess.
fn check_symbols(exe: &Path) -> io::Result<()> {
    let bytes = std::fs::read(exe)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", exe.display())))?;
    match bytes.windows(8).any(|w| w == b".symtab\0") {
        true => Ok(()),
        false => Err(io::Error::other(format!(
            "{} is stripped: build the profiling profile (scripts/profile-add.sh)",
            exe.display()
        ))),
    }
}

struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// perf's control FIFOs: `enable` / `disable`, each acknowledged.
struct Control {
    ctl: std::fs::File,
    ack: BufReader<std::fs::File>,
}

impl Control {
    fn open(state: &Path) -> io::Result<Control> {
        let ctl = std::fs::OpenOptions::new()
            .write(true)
            .open(state.join("ctl"))?;
        let ack = BufReader::new(std::fs::File::open(state.join("ack"))?);
        Ok(Control { ctl, ack })
    }

    fn send(&mut self, cmd: &str) -> io::Result<()> {
        writeln!(self.ctl, "{cmd}")?;
        let mut line = String::new();
        self.ack.read_line(&mut line)?;
        // perf ends each "ack\n" with a NUL.
        match line.trim_matches(|c: char| c == '\0' || c.is_whitespace()) {
            "ack" => Ok(()),
            other => Err(io::Error::other(format!("perf control {cmd}: {other:?}"))),
        }
    }
}

/// The inner run (under perf): anchors and profiled pairs, rows written to
/// `state/anchors.json`.
pub fn inner(state: &Path, opts: &ProfileOptions) -> io::Result<()> {
    let mut control = Control::open(state)?;
    let lab = Lab::builder().subnets(1).build()?;
    super::node::packet_filter(&lab)?;
    let path = |dir: &Path| vec![PathBuf::from("/usr/lib/cni"), dir.to_path_buf()];
    let v4 = confs::Ipam::HostLocal { v6: false };
    let pod = |short: &str, third: u8, second, dir: &Path, who: &str| -> io::Result<Case> {
        let c = lab_chain(
            &lab,
            &path(dir),
            &format!("prof-{short}"),
            vec![confs::macvlan(1, third, &v4), second],
        )?;
        let ty = if who.starts_with("sbr") {
            "sbr"
        } else {
            "coordinator"
        };
        let mut case = pod_case(
            &lab,
            short,
            vec![(c, "eth0".into())],
            ty.into(),
            Kind::Anchor,
            who,
            "1 NIC IPv4",
            "",
        );
        let id = short.strip_prefix('p').unwrap_or(short);
        case.rows = ["add", "del"]
            .map(|v| {
                RowSpec::new(
                    &format!("{id}/{v}"),
                    &format!("{who} {}", v.to_uppercase()),
                    "1 NIC IPv4",
                    Kind::Anchor,
                )
            })
            .to_vec();
        Ok(case)
    };
    let coord = || confs::coordinator(false, false);
    let cases = [
        floor_case(&lab)?,
        pod("psbr", 2, confs::sbr(), &opts.bin_dir, "sbr (reference)")?,
        pod(
            "prelease",
            3,
            coord(),
            &opts.bin_dir,
            "coordinator (release build)",
        )?,
        pod(
            "pplain",
            4,
            coord(),
            &opts.profiled,
            "coordinator (profiled build, no perf)",
        )?,
        pod(
            "pprofiled",
            5,
            coord(),
            &opts.profiled,
            "coordinator (profiled build, under perf)",
        )?,
    ];
    let mut rows: Vec<Row> = cases
        .iter()
        .flat_map(|c| c.rows.iter().map(Row::new))
        .collect();
    debug_assert_eq!(
        rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ANCHOR_IDS
    );
    let (last, anchors) = cases.split_last().expect("cases");
    for iter in 0..opts.warmup + opts.pairs {
        if iter % 20 == 0 {
            eprintln!(
                "bench profile: round {}/{}",
                iter + 1,
                opts.warmup + opts.pairs
            );
        }
        let record = iter >= opts.warmup;
        let mut first_row = 0;
        // Anchors in rotating order, perf off; then the profiled pair, perf on.
        let mut order: Vec<usize> = (0..anchors.len()).collect();
        order.rotate_left(iter % anchors.len());
        let mut results: Vec<Option<super::cases::Iteration>> =
            (0..cases.len()).map(|_| None).collect();
        for i in order {
            results[i] = Some(anchors[i].once(iter));
        }
        if record {
            control.send("enable")?;
        }
        results[cases.len() - 1] = Some(last.once(iter));
        if record {
            control.send("disable")?;
        }
        for (case, it) in cases.iter().zip(results) {
            let it = it.expect("every case ran");
            if !it.errors.is_empty() {
                return Err(io::Error::other(format!(
                    "{} round {iter}: {}",
                    case.short,
                    it.errors.join("; ")
                )));
            }
            for (k, s) in it.samples.iter().enumerate() {
                if let (true, Some(s)) = (record, s) {
                    rows[first_row + k].samples.push(*s);
                }
            }
            first_row += case.rows.len();
        }
    }
    for r in &mut rows {
        r.finish();
    }
    drop(lab);
    let json = serde_json::to_vec(&rows).map_err(io::Error::other)?;
    std::fs::write(state.join("anchors.json"), json)
}
