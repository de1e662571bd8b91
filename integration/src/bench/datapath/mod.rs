//! The seed's datapath figure on the user's own machine: TCP throughput (1
//! and 4 streams) and round-trip latency between two pods on two nodes, for
//! pods attached by our plugins (macvlan, underlay) against a VXLAN overlay
//! (Flannel-like) and a routed veth pair (Calico-like), with node to node as
//! the ceiling. Medians of several interleaved rounds; each round is guarded
//! by the machine's idle and steal time. And the failure mode users hit: a
//! pod MTU above the overlay's, with ICMP "fragmentation needed" dropped.
//!
//! Every path is CPU-bound here: a veth has no wire speed, so the numbers say
//! how much CPU each path spends per byte, on this machine.

mod measure;
mod render;
mod topology;

use std::io;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::lab::{nft_in, Lab};
use measure::{Load, Server};

/// How much to measure.
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    pub rounds: usize,
    /// Seconds per iperf3 run.
    pub seconds: u32,
    pub pings: u32,
}

impl DatapathOptions {
    /// Full run: 5 rounds × 4 paths × (1 + 4 streams) × 3 s ≈ 2 min.
    pub fn full() -> DatapathOptions {
        DatapathOptions {
            rounds: 5,
            seconds: 3,
            pings: 200,
        }
    }

    pub fn smoke() -> DatapathOptions {
        DatapathOptions {
            rounds: 1,
            seconds: 1,
            pings: 20,
        }
    }
}

/// A round is trusted when, just before it, the machine was at most this busy
/// (other work) and lost at most this much to steal.
const MAX_BUSY: f64 = 0.20;
const MAX_STEAL: f64 = 0.05;

#[derive(Clone, Debug, Default, Serialize)]
pub struct PathResult {
    pub name: String,
    pub label: String,
    /// Per round, Gbit/s (NaN-free: failed runs are in `errors`).
    pub gbps_1: Vec<f64>,
    pub gbps_4: Vec<f64>,
    pub rtt_us: Vec<f64>,
    /// Medians over the trusted rounds (all rounds when none was trusted).
    pub median_gbps_1: Option<f64>,
    pub median_gbps_4: Option<f64>,
    pub median_rtt_us: Option<f64>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    /// The machine just before the round (nothing of ours running).
    pub before: Load,
    /// The machine during the round (our own load included: steal is the
    /// part that says something).
    pub during: Load,
    pub trusted: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MtuCheck {
    pub label: String,
    pub seconds: u32,
    /// One stream's bytes in `seconds` with the overlay node's ICMP
    /// "fragmentation needed" dropped, then allowed.
    pub bytes_icmp_dropped: Option<f64>,
    pub bytes_icmp_allowed: Option<f64>,
    pub stalled: Option<bool>,
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DatapathReport {
    pub rounds: Vec<Round>,
    pub seconds: u32,
    pub paths: Vec<PathResult>,
    pub mtu: MtuCheck,
    pub note: String,
}

/// Build the lab, measure, tear down (the lab's guard removes everything,
/// also on error).
pub fn run(bin_dir: &Path, opts: &DatapathOptions) -> io::Result<DatapathReport> {
    let lab = Lab::builder().subnets(1).build()?;
    let topo = topology::build(&lab, bin_dir)?;
    let mut servers = Vec::new();
    for p in topo.paths.iter().chain([&topo.mtu_pair]) {
        servers.push(Server::start(&p.server, p.server_ip)?);
    }
    let mut report = DatapathReport {
        seconds: opts.seconds,
        note: "All paths are CPU-bound: the wire is a veth pair between two netns on one \
               machine, so there is no link speed; a path's throughput is what its per-byte \
               CPU cost allows on this machine, with client, server and both kernels sharing \
               the same cores."
            .into(),
        ..Default::default()
    };
    report.paths = topo
        .paths
        .iter()
        .map(|p| PathResult {
            name: p.name.into(),
            label: p.label.into(),
            ..Default::default()
        })
        .collect();
    let n = topo.paths.len();
    for round in 0..opts.rounds {
        eprintln!("bench: datapath round {}/{}", round + 1, opts.rounds);
        let before = measure::idle_check(Duration::from_millis(300))?;
        let start = measure::load_start()?;
        // Rotate the order so no path always runs first or after the same one.
        for j in 0..n {
            let i = (round + j) % n;
            let (p, r) = (&topo.paths[i], &mut report.paths[i]);
            for (streams, into) in [(1, &mut r.gbps_1), (4, &mut r.gbps_4)] {
                match measure::tcp(&p.client, p.server_ip, streams, opts.seconds) {
                    Ok(g) => into.push(g),
                    Err(e) => r.errors.push(format!("{streams} stream(s): {e}")),
                }
            }
            match measure::rtt_us(&p.client, p.server_ip, opts.pings) {
                Ok(us) => r.rtt_us.push(us),
                Err(e) => r.errors.push(e),
            }
        }
        let during = measure::load_since(start)?;
        report.rounds.push(Round {
            before,
            during,
            trusted: before.busy <= MAX_BUSY
                && before.steal <= MAX_STEAL
                && during.steal <= MAX_STEAL,
        });
    }
    let trusted: Vec<bool> = report.rounds.iter().map(|r| r.trusted).collect();
    for r in &mut report.paths {
        r.median_gbps_1 = guarded_median(&r.gbps_1, &trusted);
        r.median_gbps_4 = guarded_median(&r.gbps_4, &trusted);
        r.median_rtt_us = guarded_median(&r.rtt_us, &trusted);
    }
    report.mtu = mtu_blackhole(&topo.nodes[0], &topo.mtu_pair, opts.seconds.max(2));
    drop(servers);
    drop(lab);
    Ok(report)
}

/// Median of the values of trusted rounds; of all values when no round was
/// trusted (the report flags it), or when a failed run shifted the indexes.
fn guarded_median(values: &[f64], trusted: &[bool]) -> Option<f64> {
    let mut v: Vec<f64> = if values.len() == trusted.len() && trusted.iter().any(|t| *t) {
        values
            .iter()
            .zip(trusted)
            .filter(|(_, t)| **t)
            .map(|(v, _)| *v)
            .collect()
    } else {
        values.to_vec()
    };
    (!v.is_empty()).then(|| measure::median(&mut v))
}

/// The pod MTU (1500) is above the VTEP's (1450): the sending node answers a
/// full-size segment with ICMP "fragmentation needed", and TCP lowers its
/// segment size. Where that ICMP is dropped (a node firewall, a security
/// group), nothing tells the sender, every full-size segment dies at the
/// VTEP, and the connection stalls after its handshake. Dropped first: a
/// learnt path MTU would hide the stall for the next ten minutes.
fn mtu_blackhole(node: &str, pair: &topology::Path2, seconds: u32) -> MtuCheck {
    let mut m = MtuCheck {
        label: pair.label.into(),
        seconds,
        ..Default::default()
    };
    let drop_rule = "table ip dpmtu {\n chain out {\n  type filter hook output priority 0; policy accept;\n  icmp type destination-unreachable icmp code frag-needed drop\n }\n}\n";
    if let Err(e) = nft_in(node, drop_rule) {
        m.errors.push(format!("nft: {e}"));
        return m;
    }
    match measure::tcp_bytes(&pair.client, pair.server_ip, seconds) {
        Ok(b) => m.bytes_icmp_dropped = Some(b),
        Err(e) => m.errors.push(format!("ICMP dropped: {e}")),
    }
    if let Err(e) = nft_in(node, "delete table ip dpmtu\n") {
        m.errors.push(format!("nft: {e}"));
        return m;
    }
    match measure::tcp_bytes(&pair.client, pair.server_ip, seconds) {
        Ok(b) => m.bytes_icmp_allowed = Some(b),
        Err(e) => m.errors.push(format!("ICMP allowed: {e}")),
    }
    // Stalled: less than 1 % of what the same pair moves once ICMP passes.
    m.stalled = m
        .bytes_icmp_dropped
        .zip(m.bytes_icmp_allowed)
        .map(|(d, a)| a > 0.0 && d < a / 100.0);
    m
}

pub use render::{markdown, svg};
