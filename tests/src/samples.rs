//! Sample documents the protocol tests and the fuzz harness start from.

use serde_json::{json, Value};

/// The spec versions both plugins support.
pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A main plugin's result written in `version`, with every optional field
/// that version defines (1.1 ones only when `eleven`) and vendor fields at
/// each level that a pass-through must keep.
pub fn sample_result(version: &str, eleven: bool) -> Value {
    let old = matches!(version, "0.3.0" | "0.3.1" | "0.4.0");
    let mut iface = json!({
        "name": "eth0", "mac": "0a:58:0a:06:00:05", "sandbox": "/var/run/netns/pod1",
        "x-vendor": {"a": 1}
    });
    let mut ip4 =
        json!({"address": "10.6.0.5/16", "gateway": "10.6.0.1", "interface": 0, "x-ip": "keep"});
    let mut ip6 = json!({"address": "fd00:6::5/64", "gateway": "fd00:6::1", "interface": 0});
    let mut rt4 = json!({"dst": "0.0.0.0/0", "gw": "10.6.0.1", "x-rt": true});
    let rt6 = json!({"dst": "::/0", "gw": "fd00:6::1"});
    if old {
        ip4["version"] = json!("4");
        ip6["version"] = json!("6");
    }
    if eleven {
        iface["mtu"] = json!(1400);
        iface["socketPath"] = json!("/run/vhost/pod1.sock");
        iface["pciID"] = json!("0000:00:1f.6");
        rt4["mtu"] = json!(1400);
        rt4["advmss"] = json!(1360);
        rt4["priority"] = json!(5);
        rt4["table"] = json!(100);
        rt4["scope"] = json!(0);
    }
    json!({
        "cniVersion": version,
        "interfaces": [iface],
        "ips": [ip4, ip6],
        "routes": [rt4, rt6],
        "dns": {"nameservers": ["10.6.0.10"], "domain": "cluster.local",
                "search": ["svc.cluster.local"], "options": ["ndots:5"]},
        "vendorField": {"k": [1, 2]}
    })
}
