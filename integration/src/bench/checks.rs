//! The targets of issue 15 and shared/design/benchmarks.md, each checked
//! against its anchor from the same run: ratios and differences of medians,
//! never absolute times (which move with the machine).

use super::cases::Kind;
use super::report::{Check, Report, Row};
use super::stats::{median_ci, Sample};
use super::Options;

const RSS_LIMIT_KIB: f64 = 4096.0;
const BINARY_LIMIT: u64 = 3 * 1024 * 1024;
/// The default probe window: retries 3 × interval 10 ms + timeout 100 ms.
pub const DETECT_WINDOW_MS: f64 = 130.0;
/// What our first-NIC DEL may add to the kernel's own veth deletion.
const DEL_OVER_KERNEL_MS: f64 = 1.5;

fn ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2} ms"))
        .unwrap_or_else(|| "n/a".into())
}

/// Our first-NIC DEL against the kernel's deletion of a veth pair timed next
/// to it in the same round: the median of the per-round differences with
/// its ~95 % interval (the deletion's `rcu_barrier()` swings too much from
/// one exec to the next for a difference of two medians to settle it).
fn paired_del_check(name: &str, ours: Option<&Row>, kernel: Option<&Row>, warmup: usize) -> Check {
    let target = format!(
        "<= the kernel's veth deletion (ip link del, peer in a pod netns, same round) + \
         {DEL_OVER_KERNEL_MS} ms"
    );
    let diffs = |f: fn(&Sample) -> u64| -> Vec<f64> {
        let (Some(o), Some(k)) = (ours, kernel) else {
            return Vec::new();
        };
        o.samples
            .iter()
            .zip(&k.samples)
            .map(|(a, b)| (f(a) as f64 - f(b) as f64) / 1000.0)
            .collect()
    };
    let aligned = ours
        .zip(kernel)
        .is_some_and(|(o, k)| o.samples.len() == k.samples.len());
    let (wall, cpu) = (diffs(|s| s.wall_us), diffs(|s| s.cpu_us));
    let (Some((m, lo, hi)), Some((cm, clo, chi)), true) =
        (median_ci(&wall), median_ci(&cpu), aligned)
    else {
        return Check {
            name: name.into(),
            target,
            value: "n/a".into(),
            pass: None,
        };
    };
    let verdict = if hi <= DEL_OVER_KERNEL_MS {
        "the interval is within the limit"
    } else if lo > DEL_OVER_KERNEL_MS {
        "the interval is above the limit"
    } else {
        "the interval straddles the limit"
    };
    // Without failures, sample i is round warmup + i: even rounds delete the
    // kernel's pair first. Which deletion goes second may matter (RCU work
    // the first one left), so both orders are shown.
    let clean = ours
        .zip(kernel)
        .is_some_and(|(o, k)| o.failures + k.failures == 0);
    let order = |kernel_first: bool| {
        let part: Vec<f64> = wall
            .iter()
            .enumerate()
            .filter(|(i, _)| (warmup + i).is_multiple_of(2) == kernel_first)
            .map(|(_, d)| *d)
            .collect();
        median_ci(&part).map_or("n/a".into(), |(m, ..)| format!("{m:+.2} ms"))
    };
    let orders = match clean {
        true => format!(
            "; by order: ours second {}, ours first {}",
            order(true),
            order(false)
        ),
        false => String::new(),
    };
    Check {
        name: name.into(),
        target,
        value: format!(
            "paired difference, median of {} rounds: {m:+.2} ms (95% CI {lo:+.2} .. {hi:+.2}; \
             {verdict}){orders}; CPU {cm:+.2} ms ({clo:+.2} .. {chi:+.2})",
            wall.len()
        ),
        pass: Some(m <= DEL_OVER_KERNEL_MS),
    }
}

pub fn checks(r: &Report, opts: &Options) -> Vec<Check> {
    let row = |id: &str| {
        r.rows
            .iter()
            .find(|x| x.id == id && x.skipped.is_none() && x.n > 0)
    };
    let med = |id: &str| row(id).and_then(Row::median_ms);
    let cpu = |id: &str| row(id).and_then(|x| x.stats).map(|s| s.cpu_ms.median);
    let mut out = Vec::new();
    let mut ratio = |name: &str, ours: &str, anchor: &str, max: f64, who: &str| {
        let (a, b) = (med(ours), med(anchor));
        let v = a.zip(b).map(|(a, b)| a / b);
        out.push(Check {
            name: name.into(),
            target: format!("<= {max} x {who} (same run)"),
            value: match (a, b, v) {
                (Some(a), Some(b), Some(v)) => format!("{a:.2} ms vs {b:.2} ms (x{v:.2})"),
                _ => "n/a".into(),
            },
            pass: v.map(|v| v <= max),
        });
    };
    ratio(
        "coordinator ADD, underlay 1 NIC IPv4",
        "coordinator/add/1nic-v4",
        "sbr/add/1nic-v4",
        0.6,
        "sbr",
    );
    for nic in ["eth0", "net1"] {
        ratio(
            &format!("coordinator ADD {nic}, 2 NICs dual-stack"),
            &format!("coordinator/add/2nics-ds-{nic}"),
            &format!("sbr/add/2nics-ds-{nic}"),
            0.8,
            "sbr",
        );
    }
    ratio(
        "coordinator ADD >= 10x faster than Spiderpool, 1 NIC IPv4",
        "coordinator/add/1nic-v4",
        "spiderpool-coordinator/add/1nic-v4",
        0.1,
        "Spiderpool's coordinator",
    );
    for (name, ours, kernel) in [
        (
            "coordinator DEL of the first NIC, 1 NIC IPv4",
            "coordinator/del/1nic-v4",
            "kernel/paired-del/1nic-v4",
        ),
        (
            "coordinator DEL of the first NIC (eth0), 2 NICs dual-stack",
            "coordinator/del/2nics-ds-eth0",
            "kernel/paired-del/2nics-ds-eth0",
        ),
        (
            "coordinator DEL of the first NIC, 2000 pods on the node",
            "coordinator/del/1nic-v4-node",
            "kernel/paired-del/1nic-v4-node",
        ),
    ] {
        out.push(paired_del_check(
            &name.replace("2000", &r.node_fill.routes.to_string()),
            row(ours),
            row(kernel),
            opts.warmup,
        ));
    }
    let later = med("coordinator/del/2nics-ds-net1");
    out.push(Check {
        name: "coordinator DEL of a later NIC (net1), 2 NICs dual-stack".into(),
        target: "<= 3 ms".into(),
        value: ms(later),
        pass: later.map(|v| v <= 3.0),
    });
    for verb in ["add", "del"] {
        let (big, empty) = (
            format!("coordinator/{verb}/1nic-v4-node"),
            format!("coordinator/{verb}/1nic-v4"),
        );
        let (x, y) = (cpu(&big), cpu(&empty));
        let v = x.zip(y).map(|(x, y)| x / y - 1.0);
        let wall = match (med(&big), med(&empty)) {
            (Some(a), Some(b)) => format!("; wall {a:.2} vs {b:.2} ms"),
            _ => String::new(),
        };
        out.push(Check {
            name: format!(
                "coordinator {} CPU flat with node size ({} routes+neighbours vs empty node)",
                verb.to_uppercase(),
                r.node_fill.routes
            ),
            target: "within 10%".into(),
            value: match (x, y, v) {
                (Some(x), Some(y), Some(v)) => {
                    format!("CPU {x:.2} vs {y:.2} ms ({:+.1}%){wall}", v * 100.0)
                }
                _ => "n/a".into(),
            },
            pass: v.map(|v| v <= 0.10),
        });
    }
    for nic in ["eth0", "net1"] {
        let v = med(&format!("coordinator/add/2nics-ds-detect-{nic}"));
        let over = v
            .zip(med(&format!("coordinator/add/2nics-ds-{nic}")))
            .map(|(d, p)| format!(", {:+.1} ms over the same ADD without detection", d - p))
            .unwrap_or_default();
        out.push(Check {
            name: format!("coordinator ADD {nic} with detection, 2 NICs dual-stack"),
            target: format!(
                "<= one {DETECT_WINDOW_MS} ms probe window + 5 ms, to the plugin's exit"
            ),
            value: match v {
                Some(v) if v < DETECT_WINDOW_MS => {
                    format!("{v:.2} ms (below one window: no probing took place)")
                }
                Some(v) => format!("{v:.2} ms{over}"),
                None => "n/a".into(),
            },
            pass: v.map(|v| (DETECT_WINDOW_MS..=DETECT_WINDOW_MS + 5.0).contains(&v)),
        });
    }
    // Peak RSS: the worst exec of each of our plugins.
    for plugin in ["coordinator", "coordinator-ipam"] {
        let worst = r
            .rows
            .iter()
            .filter(|x| x.kind == Kind::Ours && x.id.starts_with(&format!("{plugin}/")))
            .filter_map(|x| x.stats.map(|s| s.rss_kib.max))
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        out.push(Check {
            name: format!("{plugin} peak RSS (worst exec)"),
            target: "<= 4 MiB".into(),
            value: worst
                .map(|v| format!("{:.2} MiB", v / 1024.0))
                .unwrap_or_else(|| "n/a".into()),
            pass: worst.map(|v| v <= RSS_LIMIT_KIB),
        });
    }
    for b in r.binaries.iter().filter(|b| b.ours) {
        out.push(Check {
            name: format!("{} binary size ({})", b.name, b.path),
            target: "<= 3 MiB (stripped release)".into(),
            value: format!("{:.2} MiB", b.bytes as f64 / 1048576.0),
            pass: Some(b.bytes <= BINARY_LIMIT),
        });
    }
    let ipam = |ours: &str, anchor: &str, name: &str| {
        let (a, b) = (med(ours), med(anchor));
        Check {
            name: name.into(),
            target: "coordinator-ipam <= host-local".into(),
            value: match (a, b) {
                (Some(a), Some(b)) => format!("{a:.2} ms vs {b:.2} ms"),
                _ => "n/a".into(),
            },
            pass: a.zip(b).map(|(a, b)| a <= b),
        }
    };
    out.push(ipam(
        "coordinator-ipam/add/empty",
        "host-local/add/empty",
        "IPAM ADD vs host-local, empty pool",
    ));
    out.push(ipam(
        "coordinator-ipam/add/full",
        "host-local/add/full",
        &format!("IPAM ADD vs host-local, {} allocated", opts.ipam_prefill),
    ));
    let (a, b) = (
        med("coordinator-ipam/add/full"),
        med("coordinator-ipam/add/empty"),
    );
    out.push(Check {
        name: format!("IPAM ADD flat, empty vs {} allocated", opts.ipam_prefill),
        target: "within 10%".into(),
        value: match (a, b) {
            (Some(a), Some(b)) => {
                format!("{a:.2} ms vs {b:.2} ms ({:+.1}%)", (a / b - 1.0) * 100.0)
            }
            _ => "n/a".into(),
        },
        pass: a.zip(b).map(|(a, b)| a / b - 1.0 <= 0.10),
    });
    if let Some(b) = &r.burst {
        out.push(Check {
            name: format!("burst: {} pods, {} concurrent chains ({})", b.pods, b.concurrency, b.ipam),
            target: "0 failures, 0 duplicate IPs, nothing left after DEL".into(),
            value: format!(
                "{} ADD + {} DEL failures, {} duplicates, {} leftovers; {:.1} pods/s ADD, {:.1} pods/s DEL",
                b.add_failures,
                b.del_failures,
                b.duplicate_ips.len(),
                b.leaked.len(),
                b.add_pods_per_s,
                b.del_pods_per_s
            ),
            pass: Some(
                b.add_failures == 0
                    && b.del_failures == 0
                    && b.duplicate_ips.is_empty()
                    && b.leaked.is_empty(),
            ),
        });
    }
    out
}
