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
pub(crate) mod node;
mod options;
pub mod profile;
mod report;
mod stats;

use std::io;
use std::path::PathBuf;
use std::time::Instant;

pub use burst::BurstReport;
pub use cases::Kind;
pub use options::{
    outputs, release_dir, results_dir, NodeFill, Options, BASELINE_ENV, SPIDERPOOL_ENV,
};
pub use report::{Binary, Check, Meta, Report, Row};
pub use stats::{Sample, Stats, Summary};

use crate::chain::Chain;
use crate::lab::Lab;
use cases::{floor_case, lab_chain, pod_case, Body, Case, RowSpec};
use confs::Ipam;

/// Run every scenario and build the report (not written yet: see
/// [`Report::write`]).
pub fn run(opts: &Options) -> io::Result<Report> {
    let started = Instant::now();
    let mut meta = Meta::now(opts);
    let mut notes = Vec::new();
    for b in ["coordinator", "coordinator-ipam"] {
        if !opts.bin_dir.join(b).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{b} not found in {}", opts.bin_dir.display()),
            ));
        }
    }
    let ipam_ok = match report::ipam_works(&opts.bin_dir) {
        Ok(()) => true,
        Err(e) => {
            notes.push(format!(
                "coordinator-ipam is not functional in {} ({e}): its rows are skipped and the \
                 burst uses host-local",
                opts.bin_dir.display()
            ));
            false
        }
    };

    let lab = Lab::builder().subnets(2).build()?;
    let big = Lab::builder().subnets(1).build()?;
    let node_fill = node::fill(&big, opts.node_size)?;
    for l in [&lab, &big] {
        node::packet_filter(l)?;
    }
    notes.push(
        "Each node netns carries an accept-only inet filter with conntrack on the \
         prerouting, input, output and postrouting hooks, as kube-proxy leaves on every \
         Kubernetes node: without any hook on the machine, the pod's nftables table would flip \
         the kernel's global netfilter static keys (code patching with IPIs) at every ADD and DEL."
            .to_string(),
    );
    let cni_path = vec![PathBuf::from("/usr/lib/cni"), opts.bin_dir.clone()];
    let spider_dir = lab.dir().join("spiderpool-bin");

    let mut cases = vec![floor_case(&lab)?];
    let big_group = format!("1 NIC IPv4, {} pods' routes on the node", opts.node_size);
    for (short, ns, suffix, group) in [
        (
            "kdel",
            &lab,
            "",
            "kernel: veth pair deletion (peer in a pod netns)".to_string(),
        ),
        (
            "kdelbig",
            &big,
            "-node",
            format!(
                "kernel: veth pair deletion (peer in a pod netns), {} pods' routes on the node",
                opts.node_size
            ),
        ),
    ] {
        cases.push(Case {
            short: short.into(),
            rows: vec![
                RowSpec::new(
                    &format!("kernel/veth-del{suffix}"),
                    "ip link del <veth pair>",
                    &group,
                    Kind::Floor,
                ),
                RowSpec::new(
                    &format!("kernel/ip-floor{suffix}"),
                    "ip link show lo (same exec, no deletion)",
                    &group,
                    Kind::Floor,
                ),
            ],
            body: Body::LinkDel { lab: ns },
            optional: false,
        });
    }
    let chain = |lab: &Lab, name: &str, plugins: Vec<serde_json::Value>| {
        lab_chain(lab, &cni_path, name, plugins)
    };
    let v4 = Ipam::HostLocal { v6: false };
    let ds = Ipam::HostLocal { v6: true };
    let one_nic = |lab: &Lab, short: &str, third: u8, second: serde_json::Value, ty: &str| {
        chain(
            lab,
            &format!("bench-{short}"),
            vec![confs::macvlan(1, third, &v4), second],
        )
        .map(|c| (vec![(c, "eth0".to_string())], ty.to_string()))
    };
    let (nics, measured) = one_nic(
        &lab,
        "c1",
        1,
        confs::coordinator(false, false),
        "coordinator",
    )?;
    cases.push(
        pod_case(
            &lab,
            "cone",
            nics,
            measured,
            Kind::Ours,
            "coordinator",
            "1 NIC IPv4",
            "",
        )
        .paired_kernel_del(),
    );
    let (nics, measured) = one_nic(&lab, "sbr", 2, confs::sbr(), "sbr")?;
    cases.push(pod_case(
        &lab,
        "sbr",
        nics,
        measured,
        Kind::Anchor,
        "sbr (reference)",
        "1 NIC IPv4",
        "",
    ));
    if let Some(base) = &opts.baseline {
        // Another build of ours (say main's), interleaved with this one in the
        // same run: a change's A/B on a busy machine.
        let dir = lab.dir().join("baseline-bin");
        std::fs::create_dir_all(&dir)?;
        let ty = "coordinator-baseline";
        std::os::unix::fs::symlink(base, dir.join(ty))?;
        let mut conf = confs::coordinator(false, false);
        conf["type"] = ty.into();
        let (nics, measured) = one_nic(&lab, "cbase", 6, conf, ty)?;
        let nics = nics
            .into_iter()
            .map(|(c, nic)| {
                let mut path = cni_path.clone();
                path.push(dir.clone());
                (c.cni_path(path), nic)
            })
            .collect();
        // Paired like ours: a DEL right after the kernel's deletion pays for
        // its RCU backlog, so an unpaired baseline DEL is not comparable.
        cases.push(
            pod_case(
                &lab,
                "cbase",
                nics,
                measured,
                Kind::Anchor,
                "coordinator (baseline build)",
                "1 NIC IPv4",
                "baseline",
            )
            .paired_kernel_del(),
        );
    }
    if let Some(sp) = &opts.spiderpool {
        std::fs::create_dir_all(&spider_dir)?;
        let ty = "spiderpool-coordinator";
        std::os::unix::fs::symlink(sp, spider_dir.join(ty))?;
        let mut list = confs::list(
            "bench-spider",
            vec![confs::macvlan(1, 5, &v4), confs::spiderpool(ty)],
        )?;
        lab.localize(&mut list);
        let mut path = cni_path.clone();
        path.push(spider_dir.clone());
        let c = lab.chain(list).cni_path(path);
        let mut case = pod_case(
            &lab,
            "spider",
            vec![(c, "eth0".into())],
            ty.into(),
            Kind::Anchor,
            "Spiderpool coordinator",
            "1 NIC IPv4",
            "",
        );
        case.optional = true;
        cases.push(case);
    } else {
        notes.push(format!(
            "Spiderpool anchor skipped: {SPIDERPOOL_ENV} is not set (give the path of a \
             Spiderpool coordinator binary to include it)"
        ));
    }
    let coord = |detect: bool| confs::coordinator(detect, true);
    for (short, second, third, group, measured, kind, who) in [
        (
            "ctwo",
            coord(false),
            3,
            "2 NICs dual-stack",
            "coordinator",
            Kind::Ours,
            "coordinator",
        ),
        (
            "sbrtwo",
            confs::sbr(),
            6,
            "2 NICs dual-stack",
            "sbr",
            Kind::Anchor,
            "sbr (reference)",
        ),
        (
            "cdet",
            coord(true),
            4,
            "2 NICs dual-stack, detection on",
            "coordinator",
            Kind::Ours,
            "coordinator",
        ),
    ] {
        let nics = vec![
            (
                chain(
                    &lab,
                    &format!("bench-{short}-a"),
                    vec![confs::macvlan(1, third, &ds), second.clone()],
                )?,
                "eth0".to_string(),
            ),
            (
                chain(
                    &lab,
                    &format!("bench-{short}-b"),
                    vec![confs::macvlan(2, third, &ds), second],
                )?,
                "net1".to_string(),
            ),
        ];
        let case = pod_case(&lab, short, nics, measured.into(), kind, who, group, "");
        cases.push(match short {
            "ctwo" => case.paired_kernel_del(),
            _ => case,
        });
    }
    let (nics, measured) = one_nic(
        &big,
        "cbig",
        1,
        confs::coordinator(false, false),
        "coordinator",
    )?;
    cases.push(
        pod_case(
            &big,
            "cbig",
            nics,
            measured,
            Kind::Ours,
            "coordinator",
            &big_group,
            "node",
        )
        .paired_kernel_del(),
    );

    // IPAM: bare IPAM execs, an empty pool and a pool with `ipam_prefill` taken.
    let ipam_dir = lab.dir().join("ipam");
    let mut prefill = Vec::new();
    let ipam_types: &[&str] = if ipam_ok {
        &["host-local", "coordinator-ipam"]
    } else {
        &["host-local"]
    };
    for &ty in ipam_types {
        let kind = if ty == "host-local" {
            Kind::Anchor
        } else {
            Kind::Ours
        };
        let short = if ty == "host-local" { "hl" } else { "ci" };
        for (full, suffix) in [(false, "empty"), (true, "full")] {
            let name = format!("bench-ipam-{suffix}");
            let list = confs::ipam_only(&name, ty, &ipam_dir)?;
            // Results cached on disk: thousands of pre-fill results in memory
            // would bloat the harness and with it every child's ru_maxrss.
            let c = Chain::new(list)
                .node_netns(Some(lab.node()))
                .cni_path(cni_path.clone())
                .cache_dir(ipam_dir.join(format!("cache-{short}{suffix}")));
            let group = if full {
                format!("IPAM, {} allocated", opts.ipam_prefill)
            } else {
                "IPAM, empty pool".to_string()
            };
            if !opts.wants(&format!("{short}{suffix}")) {
                continue;
            }
            if full {
                prefill.push(burst::prefill(
                    &c,
                    ty,
                    &lab.node_path(),
                    opts.ipam_prefill,
                    opts.burst_concurrency,
                ));
            }
            cases.push(Case {
                short: format!("{short}{suffix}"),
                rows: vec![
                    RowSpec::new(
                        &format!("{ty}/add/{suffix}"),
                        &format!("{ty} ADD"),
                        &format!("{group} ADD"),
                        kind,
                    ),
                    RowSpec::new(
                        &format!("{ty}/del/{suffix}"),
                        &format!("{ty} DEL"),
                        &format!("{group} DEL"),
                        kind,
                    ),
                ],
                body: Body::Ipam {
                    chain: c,
                    netns: lab.node_path(),
                },
                optional: false,
            });
        }
    }

    cases.retain(|c| opts.wants(&c.short));
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
            if iter == 0 && case.optional && !it.errors.is_empty() {
                skipped[ci] = true;
                for r in &mut rows[first_row..first_row + case.rows.len()] {
                    r.skipped = Some(it.errors.join("; "));
                }
                continue;
            }
            if iter < opts.warmup {
                continue;
            }
            for (k, s) in it.samples.iter().enumerate() {
                if del_only && !case.paired_rows().is_some_and(|p| p.contains(&k)) {
                    continue;
                }
                let row = &mut rows[first_row + k];
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
    }
    if !ipam_ok {
        for (suffix, group) in [
            ("empty", "IPAM, empty pool".to_string()),
            ("full", format!("IPAM, {} allocated", opts.ipam_prefill)),
        ] {
            for verb in ["ADD", "DEL"] {
                let mut r = Row::new(&RowSpec::new(
                    &format!("coordinator-ipam/{}/{suffix}", verb.to_lowercase()),
                    &format!("coordinator-ipam {verb}"),
                    &format!("{group} {verb}"),
                    Kind::Ours,
                ));
                r.skipped = Some("coordinator-ipam not functional in this build".into());
                rows.push(r);
            }
        }
    }
    for r in &mut rows {
        r.finish();
    }
    if let Some(floor) = rows
        .iter()
        .find(|r| r.id == "floor/exec")
        .and_then(|r| r.stats)
    {
        notes.push(format!(
            "Peak RSS is the child's ru_maxrss, which Linux makes at least the harness's own \
             anonymous RSS at fork time (it survives exec): the /bin/true floor row shows that \
             bound ({:.2} MiB here). A plugin row at the floor's value is an upper bound; above \
             it, the plugin's own peak.",
            floor.rss_kib.max / 1024.0
        ));
    }
    drop(lab);
    drop(big);

    let burst = match opts.wants("burst") {
        true => Some(burst::run(opts, ipam_ok)?),
        false => None,
    };
    let datapath = match opts.wants("datapath") {
        true => Some(datapath::run(&opts.bin_dir, &opts.datapath)?),
        false => None,
    };
    let binaries = report::binaries(&opts.bin_dir);
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
