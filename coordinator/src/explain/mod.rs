//! `coordinator explain`: why a pod's packets leave by the NIC they do.
//!
//! Run on the node (in the node's netns). For each pod NIC × family it asks
//! the kernels themselves (RTM_GETROUTE with source, input interface and
//! mark, in the pod's and the node's netns) how a request from a client on
//! the NIC's subnet, a routed client, the node, to a Service and through a
//! NodePort is routed, and where its reply goes; see [`probe`] for the
//! lookups and [`verdict`] for the reading of the answers.

pub mod probe;
pub mod report;
pub mod verdict;

use std::io::Write;
use std::path::PathBuf;

use cni::netlink::Netlink;
use cni::netns::NetNs;
use cni::{Error, Result};
use ipnet::IpNet;
use serde_json::json;

use crate::config::{Config, Ids, DEFAULTS_FILE};

pub const USAGE: &str =
    "  coordinator explain (--netns PATH | --pid PID) [--json] [--defaults FILE]
                      [--host-rule-table N] [--service-cidr CIDR]...
      Run on the node: for each pod NIC and family, how a request from a
      client on the NIC's subnet, a routed client, the node (probe), to a
      Service, and through a NodePort is routed, where its reply leaves, and
      when that is not symmetric, what is missing and which field fixes it.
      The answers are the kernels' own route lookups in the pod and the node.
      serviceCIDR and hostRuleTable come from the node defaults file (FILE,
      default /etc/cni/coordinator/defaults.json) unless given here; the
      pod's reply table from its fwmark rule, else podReplyTable there.
      Exit status: 0 every flow symmetric, 1 one is not, 2 bad command line
      or the pod cannot be read.
";

#[derive(Debug, Default, PartialEq)]
struct Opts {
    netns: Option<PathBuf>,
    json: bool,
    defaults: Option<PathBuf>,
    host_rule_table: Option<u32>,
    service_cidr: Vec<IpNet>,
}

fn parse(args: &[String]) -> std::result::Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--netns" => o.netns = Some(PathBuf::from(value()?)),
            "--pid" => {
                let v = value()?;
                let pid: u32 = v.parse().map_err(|_| format!("--pid {v:?}: not a pid"))?;
                o.netns = Some(PathBuf::from(format!("/proc/{pid}/ns/net")));
            }
            "--json" => o.json = true,
            "--defaults" => o.defaults = Some(PathBuf::from(value()?)),
            "--host-rule-table" => {
                let v = value()?;
                o.host_rule_table = Some(
                    v.parse()
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or(format!("--host-rule-table {v:?}: not a table id"))?,
                );
            }
            "--service-cidr" => {
                let v = value()?;
                let net: IpNet = v
                    .parse()
                    .map_err(|_| format!("--service-cidr {v:?}: not a CIDR"))?;
                o.service_cidr.push(net.trunc());
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.netns.is_none() {
        return Err("give the pod: --netns PATH or --pid PID".into());
    }
    Ok(o)
}

/// `coordinator explain ARGS`; returns the exit status.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let o = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(err, "coordinator explain: {e}\n\nUSAGE:\n{USAGE}");
            return 2;
        }
    };
    match explain(&o) {
        Ok((header, flows)) => {
            let _ = if o.json {
                writeln!(out, "{}", report::json(&header, &flows))
            } else {
                write!(out, "{}", report::text(&header, &flows))
            };
            if flows.iter().all(|f| f.verdict.symmetric) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            let _ = writeln!(err, "coordinator explain: {e}");
            2
        }
    }
}

fn explain(o: &Opts) -> Result<(report::Header, Vec<probe::Flow>)> {
    let defaults = o.defaults.clone().unwrap_or(PathBuf::from(DEFAULTS_FILE));
    let cfg = Config::from_raw(&json!({ "defaultsFile": defaults }))
        .map_err(|e| e.context(format!("node defaults {}", defaults.display())))?;
    let netns_path = o.netns.clone().unwrap_or_default();
    let ns = NetNs::open(&netns_path)
        .map_err(|e| Error::InvalidEnv(format!("{}: {e}", netns_path.display())))?;
    let pod_nl = Netlink::open_in(&ns)?;
    let node_nl = Netlink::open()?;
    let view = crate::observe::pod_view(&pod_nl)?;
    let nft_mark = crate::nftables::present(
        &ns,
        &crate::nftables::ReplyMark {
            iif: crate::names::POD_VETH.into(),
            mark: crate::plan::REPLY_MARK,
        },
    )?;
    let pod = probe::Pod {
        nl: &pod_nl,
        view,
        nft_mark,
    };
    let node = probe::Node {
        nl: &node_nl,
        links: node_nl.links()?,
        ids: Ids {
            host_table: o.host_rule_table.unwrap_or(cfg.ids.host_table),
            ..cfg.ids
        },
        service_cidr: if o.service_cidr.is_empty() {
            cfg.service_cidr.clone()
        } else {
            o.service_cidr.clone()
        },
    };
    let first = &cfg.pod_default_cni_nic;
    let host = probe::host_iface(&pod.view, first);
    let header = report::Header {
        netns: netns_path.display().to_string(),
        mode: match host {
            Some(l) if l.name == crate::names::POD_VETH => "underlay",
            Some(_) => "overlay",
            None => "none (no veth0, no overlay eth0)",
        },
        host_iface: host.map(|l| l.name.clone()),
        host_rule_table: node.ids.host_table,
    };
    let flows = probe::explain(&pod, &node, first)?;
    Ok((header, flows))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_line() {
        let o = parse(&args(&[
            "--pid",
            "42",
            "--json",
            "--service-cidr",
            "10.233.0.5/18",
        ]))
        .unwrap();
        assert_eq!(o.netns, Some(PathBuf::from("/proc/42/ns/net")));
        assert!(o.json);
        assert_eq!(
            o.service_cidr,
            vec!["10.233.0.0/18".parse::<IpNet>().unwrap()]
        );
        for bad in [
            &["--json"][..],
            &["--pid", "x"],
            &["--netns"],
            &["--netns", "/x", "--host-rule-table", "0"],
            &["--netns", "/x", "--service-cidr", "nope"],
            &["--netns", "/x", "--frobnicate"],
        ] {
            assert!(parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn usage_errors_exit_2_without_stdout() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        assert_eq!(run(&args(&["--json"]), &mut out, &mut err), 2);
        assert!(out.is_empty());
        assert!(String::from_utf8_lossy(&err).contains("--netns PATH or --pid PID"));
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let missing = args(&[
            "--netns",
            "/nonexistent/netns",
            "--defaults",
            "/nonexistent/d.json",
        ]);
        assert_eq!(run(&missing, &mut out, &mut err), 2);
        assert!(out.is_empty());
    }
}
