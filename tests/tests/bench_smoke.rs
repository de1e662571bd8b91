//! The benchmark harness in `--smoke` mode (3 iterations, small sizes) on the
//! debug binaries: every scenario is measured, the burst is clean and the
//! three outputs are written and parse. Needs root; never skips. No timing
//! assertions: only that the numbers are sane.

use cni_tests::bin_dir;
use integration::bench::{self, Kind, Options};
use serde_json::Value;

#[test]
fn smoke_run_produces_sane_outputs() {
    let bins = bin_dir();
    for b in ["coordinator", "coordinator-ipam"] {
        assert!(
            bins.join(b).is_file(),
            "{b} missing in {} (cargo build --workspace --bins)",
            bins.display()
        );
    }
    let out = tempfile::tempdir().unwrap();
    let opts = Options::smoke(bins, out.path().to_path_buf());
    assert_eq!(opts.iterations, 3);
    let report = bench::run(&opts).unwrap_or_else(|e| panic!("bench run: {e}"));
    report.write(out.path()).unwrap();

    // Core rows (ours and the always-present anchors) are never skipped.
    for id in [
        "floor/exec",
        "coordinator/add/1nic-v4",
        "coordinator/del/1nic-v4",
        "sbr/add/1nic-v4",
        "sbr/del/1nic-v4",
        "sbr/add/2nics-ds-eth0",
        "sbr/add/2nics-ds-net1",
        "kernel/veth-del",
        "kernel/veth-del-node",
        "coordinator/add/2nics-ds-eth0",
        "coordinator/add/2nics-ds-net1",
        "coordinator/add/1nic-v4-node",
        "host-local/add/empty",
        "host-local/add/full",
        "coordinator-ipam/add/empty",
        "coordinator-ipam/add/full",
        "coordinator/add/2nics-ds-detect-eth0",
        "coordinator/add/2nics-ds-detect-net1",
        "kernel/paired-del/1nic-v4",
        "kernel/paired-del/2nics-ds-eth0",
        "kernel/paired-del/1nic-v4-node",
    ] {
        let row = report.rows.iter().find(|r| r.id == id);
        let row = row.unwrap_or_else(|| panic!("no row {id}"));
        assert!(row.skipped.is_none(), "{id} skipped: {:?}", row.skipped);
    }
    for r in report.rows.iter().filter(|r| r.skipped.is_none()) {
        assert_eq!(r.failures, 0, "{}: {:?}", r.id, r.errors);
        assert_eq!(r.n, opts.iterations, "{}", r.id);
        let st = r.stats.unwrap_or_else(|| panic!("{} has no stats", r.id));
        let w = st.wall_ms;
        assert!(
            0.0 < w.min && w.min <= w.median && w.median <= w.p90 && w.p90 <= w.max,
            "{}: {w:?}",
            r.id
        );
        // A plugin exec takes under a minute and uses some memory.
        assert!(w.max < 60_000.0, "{}: {w:?}", r.id);
        assert!(st.rss_kib.min > 0.0, "{}: {:?}", r.id, st.rss_kib);
    }
    assert!(report.rows.iter().any(|r| r.kind == Kind::Anchor));
    // The first-NIC DEL targets are judged on per-round differences.
    let paired: Vec<_> = report
        .checks
        .iter()
        .filter(|c| c.name.contains("DEL of the first NIC"))
        .collect();
    assert_eq!(paired.len(), 3);
    for c in paired {
        assert!(c.pass.is_some(), "{c:?}");
        assert!(
            c.value.contains("paired difference, median of 3 rounds"),
            "{c:?}"
        );
    }
    assert_eq!(report.node_fill.routes, opts.node_size);

    let burst = report.burst.as_ref().expect("burst ran");
    assert_eq!(burst.pods, opts.burst_pods);
    assert_eq!(burst.ipam, "coordinator-ipam");
    assert_eq!(
        (burst.add_failures, burst.del_failures),
        (0, 0),
        "{:?}",
        burst.errors
    );
    assert!(burst.duplicate_ips.is_empty(), "{:?}", burst.duplicate_ips);
    assert!(burst.leaked.is_empty(), "{:?}", burst.leaked);
    assert!(burst.add_pods_per_s > 0.0);
    for p in &report.ipam_prefill {
        assert_eq!(p.failures, 0, "{}: {:?}", p.plugin, p.errors);
        assert!(p.duplicate_ips.is_empty(), "{:?}", p.duplicate_ips);
    }

    // The datapath figure: every path carried traffic, and the MTU failure
    // mode (ICMP "fragmentation needed" dropped) stalls TCP.
    let dp = report.datapath.as_ref().expect("datapath ran");
    assert_eq!(dp.rounds.len(), opts.datapath.rounds);
    for p in &dp.paths {
        assert!(p.errors.is_empty(), "{}: {:?}", p.name, p.errors);
        for v in [p.median_gbps_1, p.median_gbps_4, p.median_rtt_us] {
            assert!(v.is_some_and(|v| v > 0.0), "{}: {p:?}", p.name);
        }
    }
    assert_eq!(dp.mtu.stalled, Some(true), "{:?}", dp.mtu);

    // The files: JSON parses back to the same rows, Markdown has the table,
    // SVG has one bar per measured row.
    let [json, md, svg] = bench::outputs(out.path());
    let v: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert_eq!(v["meta"]["smoke"], true);
    assert_eq!(v["rows"].as_array().map(Vec::len), Some(report.rows.len()));
    let md = std::fs::read_to_string(md).unwrap();
    assert!(
        md.contains("| coordinator ADD, underlay 1 NIC IPv4 |"),
        "{md}"
    );
    let svg = std::fs::read_to_string(svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    let measured = report.rows.iter().filter(|r| r.stats.is_some()).count();
    assert_eq!(svg.matches("<rect x=").count(), measured);
}

/// `bench profile` end to end on the debug build (unstripped): perf records
/// the profiled pairs, every ADD and DEL process is found, and the samples
/// land in the categories the kernel work of an ADD must show.
#[test]
fn profile_smoke_classifies_real_samples() {
    let bins = bin_dir();
    let out = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(bins.join("bench"))
        .args(["profile", "--pairs", "3", "--warmup", "0", "--profiled"])
        .arg(&bins)
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("bench (cargo build --workspace --bins) and perf (scripts/setup.sh)");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench profile failed: {stderr}");
    let v: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("profile-add.json")).unwrap())
            .unwrap();
    for verb in ["add", "del"] {
        assert_eq!(v[verb]["processes"], 3, "{verb}: {}", v[verb]);
        assert!(v[verb]["samples"].as_u64().unwrap() > 0, "{}", v[verb]);
        assert!(v[verb]["by_category"]["ExecLoader"].as_u64().unwrap() > 0);
    }
    // Only ADD creates the veth pair and the nftables table.
    for c in ["VethCreation", "NfTables"] {
        assert!(
            v["add"]["by_category"][c].as_u64().unwrap_or(0) > 0,
            "{c}: {}",
            v["add"]
        );
    }
    let anchors = v["anchors"].as_array().unwrap();
    assert!(anchors.iter().all(|r| r["n"] == 3), "{anchors:?}");
    let md = std::fs::read_to_string(out.path().join("profile-add.md")).unwrap();
    assert!(md.contains("| **total** | 100 %"), "{md}");
}
