//! The bare IPAM cases: host-local and coordinator-ipam, each on an empty
//! pool and on a pool with `ipam_prefill` addresses taken.

use std::io;

use super::burst::{self, Prefill};
use super::cases::{Body, Case, Kind, RowSpec};
use super::confs;
use super::options::Options;
use super::report::Row;
use super::setup;
use crate::chain::Chain;
use crate::lab::Lab;

/// The selected IPAM cases (coordinator-ipam's only when `ipam_ok`), and
/// the pre-fill of each full pool (done here, before any case runs).
pub(super) fn declare<'l>(
    lab: &Lab,
    opts: &Options,
    ipam_ok: bool,
) -> io::Result<(Vec<Case<'l>>, Vec<Prefill>)> {
    let ipam_dir = lab.dir().join("ipam");
    let cni_path = setup::cni_path(opts);
    let mut cases = Vec::new();
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
        for (full, suffix, group) in pools(opts) {
            let name = format!("bench-ipam-{suffix}");
            let list = confs::ipam_only(&name, ty, &ipam_dir)?;
            // Results cached on disk: thousands of pre-fill results in memory
            // would bloat the harness and with it every child's ru_maxrss.
            let c = Chain::new(list)
                .node_netns(Some(lab.node()))
                .cni_path(cni_path.clone())
                .cache_dir(ipam_dir.join(format!("cache-{short}{suffix}")));
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
                rows: rows(ty, suffix, &group, kind).into(),
                body: Body::Ipam {
                    chain: c,
                    netns: lab.node_path(),
                },
                optional: false,
            });
        }
    }
    Ok((cases, prefill))
}

/// coordinator-ipam's rows, skipped with the reason, when it does not work
/// in this build (so the report still shows where they would be).
pub(super) fn skipped_rows(opts: &Options) -> Vec<Row> {
    let mut skipped = Vec::new();
    for (_, suffix, group) in pools(opts) {
        for spec in rows("coordinator-ipam", suffix, &group, Kind::Ours) {
            let mut r = Row::new(&spec);
            r.skipped = Some("coordinator-ipam not functional in this build".into());
            skipped.push(r);
        }
    }
    skipped
}

/// The two pools: (full, id suffix, row group).
fn pools(opts: &Options) -> [(bool, &'static str, String); 2] {
    [
        (false, "empty", "IPAM, empty pool".to_string()),
        (
            true,
            "full",
            format!("IPAM, {} allocated", opts.ipam_prefill),
        ),
    ]
}

/// The ADD and DEL rows of IPAM plugin `ty` on one pool.
fn rows(ty: &str, suffix: &str, group: &str, kind: Kind) -> [RowSpec; 2] {
    ["ADD", "DEL"].map(|verb| {
        RowSpec::new(
            &format!("{ty}/{}/{suffix}", verb.to_lowercase()),
            &format!("{ty} {verb}"),
            &format!("{group} {verb}"),
            kind,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_rows_name_the_rows_coordinator_ipam_would_have() {
        let opts = Options::smoke("bin".into(), "out".into());
        let rows = skipped_rows(&opts);
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.label.as_str(), r.group.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "coordinator-ipam/add/empty",
                    "coordinator-ipam ADD",
                    "IPAM, empty pool ADD"
                ),
                (
                    "coordinator-ipam/del/empty",
                    "coordinator-ipam DEL",
                    "IPAM, empty pool DEL"
                ),
                (
                    "coordinator-ipam/add/full",
                    "coordinator-ipam ADD",
                    "IPAM, 100 allocated ADD"
                ),
                (
                    "coordinator-ipam/del/full",
                    "coordinator-ipam DEL",
                    "IPAM, 100 allocated DEL"
                ),
            ]
        );
        for r in &rows {
            assert_eq!(r.kind, Kind::Ours);
            assert_eq!(
                r.skipped.as_deref(),
                Some("coordinator-ipam not functional in this build")
            );
        }
    }
}
