//! The network configurations the scenarios run: one topology for ours and
//! the anchors, differing only in the measured plugin.

use std::io;
use std::path::Path;

use serde_json::{json, Value};

use crate::chain::NetConfList;

/// The host table the coordinator puts pod routes in (also where the
/// node-size fixture puts its 2000 routes).
pub const HOST_RULE_TABLE: u32 = 500;

/// IPAM of the main plugin.
#[derive(Clone, Debug)]
pub enum Ipam {
    /// host-local over one range per family (`third` octet / `third` hextet
    /// keeps the ranges of parallel scenarios apart).
    HostLocal { v6: bool },
    /// Our coordinator-ipam with its file store in `data_dir`.
    Coordinator {
        v6: bool,
        data_dir: String,
        quarantine: String,
    },
}

/// macvlan on `ens<subnet>` + IPAM, addresses from 10.(5+subnet).<third>.0/24
/// (and fd00:(5+subnet)::<third>:0/112 when dual-stack).
pub fn macvlan(subnet: u8, third: u8, ipam: &Ipam) -> Value {
    let o = 5 + subnet;
    let gw4 = format!("10.{o}.0.1");
    let gw6 = format!("fd00:{o}::1");
    let v6_on = match ipam {
        Ipam::HostLocal { v6 } | Ipam::Coordinator { v6, .. } => *v6,
    };
    let ipam = match ipam {
        Ipam::HostLocal { v6 } => {
            let mut ranges = vec![json!([{
                "subnet": format!("10.{o}.0.0/16"),
                "rangeStart": format!("10.{o}.{third}.1"),
                "rangeEnd": format!("10.{o}.{third}.254"),
                "gateway": gw4,
            }])];
            let mut routes = vec![json!({"dst": "0.0.0.0/0"})];
            if *v6 {
                ranges.push(json!([{
                    "subnet": format!("fd00:{o}::/64"),
                    "rangeStart": format!("fd00:{o}::{third:x}:1"),
                    "rangeEnd": format!("fd00:{o}::{third:x}:ff"),
                    "gateway": gw6,
                }]));
                routes.push(json!({"dst": "::/0"}));
            }
            json!({"type": "host-local", "ranges": ranges, "routes": routes})
        }
        Ipam::Coordinator {
            data_dir,
            quarantine,
            ..
        } => {
            let mut pools = vec![json!({
                "name": format!("v4-{subnet}-{third}"),
                "subnet": format!("10.{o}.0.0/16"),
                "ranges": [format!("10.{o}.{third}.1-10.{o}.{third}.254")],
                "gateway": gw4,
                "routes": [{"dst": "0.0.0.0/0"}],
            })];
            if v6_on {
                pools.push(json!({
                    "name": format!("v6-{subnet}-{third}"),
                    "subnet": format!("fd00:{o}::/64"),
                    "ranges": [format!("fd00:{o}::{third:x}:1-fd00:{o}::{third:x}:ff")],
                    "gateway": gw6,
                    "routes": [{"dst": "::/0"}],
                }));
            }
            json!({
                "type": "coordinator-ipam",
                "nodeName": "bench-node",
                "store": {"kind": "file", "dataDir": data_dir},
                "quarantineFile": quarantine,
                "pools": pools,
            })
        }
    };
    json!({"type": "macvlan", "master": format!("ens{subnet}"), "mode": "bridge", "ipam": ipam})
}

/// Our coordinator, underlay mode.
pub fn coordinator(detect: bool, v6: bool) -> Value {
    let mut services = vec!["10.233.0.0/18"];
    if v6 {
        services.push("fd00:233::/112");
    }
    let mut c = json!({
        "type": "coordinator",
        "mode": "underlay",
        "podDefaultCniNic": "eth0",
        "hostRuleTable": HOST_RULE_TABLE,
        "serviceCIDR": services,
    });
    if detect {
        c["detectIPConflict"] = true.into();
        c["detectGateway"] = true.into();
    }
    c
}

/// The reference source-based-routing plugin.
pub fn sbr() -> Value {
    json!({"type": "sbr"})
}

/// A Spiderpool coordinator (binary linked into the CNI path as `ty`),
/// underlay mode, defaults otherwise.
pub fn spiderpool(ty: &str) -> Value {
    json!({
        "type": ty,
        "mode": "underlay",
        "podDefaultCniNic": "eth0",
        "hostRuleTable": HOST_RULE_TABLE,
        "serviceCIDR": ["10.233.0.0/18"],
        "detectIPConflict": false,
        "detectGateway": false,
    })
}

pub fn list(name: &str, plugins: Vec<Value>) -> io::Result<NetConfList> {
    let v = json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
    NetConfList::from_value(v).map_err(|e| io::Error::other(format!("bench conflist {name}: {e}")))
}

/// A bare IPAM plugin as a one-plugin "chain": IPAM plugins read the `ipam`
/// block of the conf they are given and ignore the rest. One /16 pool.
pub fn ipam_only(name: &str, ty: &str, dir: &Path) -> io::Result<NetConfList> {
    let ipam = match ty {
        "host-local" => json!({
            "type": "host-local",
            "dataDir": dir.join("host-local").display().to_string(),
            "ranges": [[{"subnet": "10.20.0.0/16", "gateway": "10.20.0.1"}]],
        }),
        _ => json!({
            "type": ty,
            "nodeName": "bench-node",
            "store": {"kind": "file", "dataDir": dir.join("coordinator-ipam").display().to_string()},
            "quarantineFile": dir.join("quarantine.json").display().to_string(),
            "pools": [{"name": "p", "subnet": "10.20.0.0/16", "gateway": "10.20.0.1"}],
        }),
    };
    list(name, vec![json!({"type": ty, "ipam": ipam})])
}
