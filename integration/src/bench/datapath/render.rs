//! The datapath figure as a Markdown section and an SVG bar chart.

use std::fmt::Write as _;

use super::DatapathReport;

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "n/a".into())
}

/// Throughput of `name` over the VXLAN overlay's, single stream.
fn vs_vxlan(r: &DatapathReport, name: &str) -> Option<f64> {
    let get = |n: &str| {
        r.paths
            .iter()
            .find(|p| p.name == n)
            .and_then(|p| p.median_gbps_1)
    };
    get(name).zip(get("vxlan")).map(|(a, b)| a / b)
}

pub fn markdown(r: &DatapathReport) -> String {
    let mut s = String::new();
    let trusted = r.rounds.iter().filter(|x| x.trusted).count();
    let _ = writeln!(s, "## Datapath: pod to pod across two nodes\n");
    let _ = writeln!(
        s,
        "iperf3 TCP, {} s per run, and ping (median of each run's per-packet RTT); medians of {} \
         interleaved rounds, {} of them taken on an idle machine (idle/steal guard: <= 20 % busy \
         and <= 5 % steal before the round). {}\n",
        r.seconds,
        r.rounds.len(),
        trusted,
        r.note
    );
    if trusted == 0 && !r.rounds.is_empty() {
        let _ = writeln!(
            s,
            "**No round passed the idle guard: the machine was busy, the ordering may be \
             flattened. Re-run on a quiet machine.**\n"
        );
    }
    let _ = writeln!(
        s,
        "| path | 1 stream Gb/s | 4 streams Gb/s | RTT µs | 1 stream vs VXLAN |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    for p in &r.paths {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            p.label,
            opt(p.median_gbps_1, 2),
            opt(p.median_gbps_4, 2),
            opt(p.median_rtt_us, 0),
            vs_vxlan(r, &p.name)
                .map(|x| format!("x{x:.2}"))
                .unwrap_or_default()
        );
    }
    for p in r.paths.iter().filter(|p| !p.errors.is_empty()) {
        let _ = writeln!(s, "\n{}: {}", p.label, p.errors.join("; "));
    }
    let m = &r.mtu;
    let _ = writeln!(s, "\n### Failure mode: pod MTU above the overlay's MTU\n");
    let mb = |b: Option<f64>| {
        b.map(|b| format!("{:.2} MB", b / 1e6))
            .unwrap_or_else(|| "n/a".into())
    };
    let _ = writeln!(
        s,
        "{}: one TCP stream for {} s moved {} with ICMP \"fragmentation needed\" dropped on the \
         sending node, {} with it allowed (TCP then learns the 1450 path MTU). {}",
        m.label,
        m.seconds,
        mb(m.bytes_icmp_dropped),
        mb(m.bytes_icmp_allowed),
        match m.stalled {
            Some(true) =>
                "**Stalled**: the handshake passes, every full-size segment dies at \
                           the VTEP and nothing tells the sender.",
            Some(false) => "Not stalled in this run (unexpected: look at the errors).",
            None => "Not measured.",
        }
    );
    if !m.errors.is_empty() {
        let _ = writeln!(s, "\nErrors: {}", m.errors.join("; "));
    }
    s
}

type Metric = fn(&super::PathResult) -> Option<f64>;

/// Three panels of horizontal bars: 1 stream, 4 streams (Gb/s), RTT (µs).
pub fn svg(r: &DatapathReport) -> String {
    let (label_w, bar_w, row_h, panel_gap) = (300.0, 360.0, 22.0, 34.0);
    let panels: [(&str, Metric, &str); 3] = [
        (
            "TCP throughput, 1 stream (Gb/s, higher is better)",
            |p| p.median_gbps_1,
            "",
        ),
        (
            "TCP throughput, 4 streams (Gb/s, higher is better)",
            |p| p.median_gbps_4,
            "",
        ),
        (
            "Round-trip time (µs, lower is better)",
            |p| p.median_rtt_us,
            "µs",
        ),
    ];
    let n = r.paths.len() as f64;
    let panel_h = n * row_h + panel_gap;
    let height = 40.0 + 3.0 * panel_h + 30.0;
    let width = label_w + bar_w + 90.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r#"<text x="10" y="20" font-size="14" font-weight="bold">Pod to pod across two nodes (medians of {} rounds; all paths CPU-bound in netns)</text>"#,
        r.rounds.len()
    );
    let mut y = 40.0;
    for (title, get, unit) in &panels {
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}" font-weight="bold">{title}</text>"#,
            y + 12.0
        );
        y += 18.0;
        let max = r
            .paths
            .iter()
            .filter_map(get)
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        for p in &r.paths {
            let v = get(p);
            let w = v.map(|v| v / max * bar_w).unwrap_or(0.0);
            let color = if p.name == "macvlan" {
                "#2b7bb9"
            } else {
                "#9aa5b1"
            };
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}">{}</text><rect x="{label_w}" y="{}" width="{w:.1}" height="{}" fill="{color}"/><text x="{}" y="{}">{}{}</text>"#,
                y + 14.0,
                p.label,
                y + 3.0,
                row_h - 6.0,
                label_w + w + 6.0,
                y + 14.0,
                v.map(|v| if unit.is_empty() {
                    format!("{v:.2}")
                } else {
                    format!("{v:.0} ")
                })
                .unwrap_or_else(|| "n/a".into()),
                unit
            );
            y += row_h;
        }
        y += panel_gap - 18.0;
    }
    let _ = writeln!(s, "</svg>");
    s
}
