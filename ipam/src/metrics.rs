//! Pool usage in node_exporter's textfile format (Prometheus text exposition
//! 0.0.4): one gauge family per figure, one sample per pool, labelled with
//! the network, the pool and its subnet.

use std::fmt::Write;

use crate::allocator::PoolUsage;

/// One gauge family: name suffix, help text, and the figure of a pool.
type Family = (&'static str, &'static str, fn(&PoolUsage) -> String);

/// The families, in the order they are written.
const FAMILIES: [Family; 5] = [
    ("capacity", "Addresses the pool can hand out.", |u| {
        u.capacity.clone()
    }),
    ("in_use", "Addresses held by an attachment.", |u| {
        u.in_use.to_string()
    }),
    (
        "parked",
        "Addresses kept for a sticky pod that is not attached.",
        |u| u.parked.to_string(),
    ),
    (
        "quarantined",
        "Free addresses skipped because conflict detection found them in use.",
        |u| u.quarantined.to_string(),
    ),
    ("free", "Addresses left to hand out.", |u| u.free.clone()),
];

/// A label value as the format wants it: backslash, quote and newline
/// escaped (network and pool names come from the operator's config).
fn label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The whole file for one network. Capacities of IPv6 pools exceed 2^53:
/// Prometheus reads every sample as a float, so they lose precision there,
/// which is what a gauge of that size can show anyway.
pub fn textfile(network: &str, rows: &[PoolUsage]) -> String {
    let mut out = String::new();
    for (suffix, help, figure) in FAMILIES {
        let name = format!("coordinator_ipam_pool_{suffix}");
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} gauge");
        for u in rows {
            let _ = writeln!(
                out,
                "{name}{{network=\"{}\",pool=\"{}\",subnet=\"{}\"}} {}",
                label(network),
                label(&u.name),
                label(&u.subnet),
                figure(u)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_gauge_per_figure_and_pool() {
        let rows = [
            PoolUsage {
                name: "v4".into(),
                subnet: "10.6.0.0/16".into(),
                capacity: "10".into(),
                in_use: 3,
                parked: 1,
                quarantined: 2,
                free: "4".into(),
            },
            PoolUsage {
                name: "v\"6\\\n".into(),
                subnet: "fd00::/64".into(),
                capacity: "18446744073709551613".into(),
                in_use: 0,
                parked: 0,
                quarantined: 0,
                free: "18446744073709551613".into(),
            },
        ];
        let text = textfile("net1", &rows);
        let expect = r#"# HELP coordinator_ipam_pool_capacity Addresses the pool can hand out.
# TYPE coordinator_ipam_pool_capacity gauge
coordinator_ipam_pool_capacity{network="net1",pool="v4",subnet="10.6.0.0/16"} 10
coordinator_ipam_pool_capacity{network="net1",pool="v\"6\\\n",subnet="fd00::/64"} 18446744073709551613
# HELP coordinator_ipam_pool_in_use Addresses held by an attachment.
# TYPE coordinator_ipam_pool_in_use gauge
coordinator_ipam_pool_in_use{network="net1",pool="v4",subnet="10.6.0.0/16"} 3
coordinator_ipam_pool_in_use{network="net1",pool="v\"6\\\n",subnet="fd00::/64"} 0
# HELP coordinator_ipam_pool_parked Addresses kept for a sticky pod that is not attached.
# TYPE coordinator_ipam_pool_parked gauge
coordinator_ipam_pool_parked{network="net1",pool="v4",subnet="10.6.0.0/16"} 1
coordinator_ipam_pool_parked{network="net1",pool="v\"6\\\n",subnet="fd00::/64"} 0
# HELP coordinator_ipam_pool_quarantined Free addresses skipped because conflict detection found them in use.
# TYPE coordinator_ipam_pool_quarantined gauge
coordinator_ipam_pool_quarantined{network="net1",pool="v4",subnet="10.6.0.0/16"} 2
coordinator_ipam_pool_quarantined{network="net1",pool="v\"6\\\n",subnet="fd00::/64"} 0
# HELP coordinator_ipam_pool_free Addresses left to hand out.
# TYPE coordinator_ipam_pool_free gauge
coordinator_ipam_pool_free{network="net1",pool="v4",subnet="10.6.0.0/16"} 4
coordinator_ipam_pool_free{network="net1",pool="v\"6\\\n",subnet="fd00::/64"} 18446744073709551613
"#;
        assert_eq!(text, expect);
    }
}
