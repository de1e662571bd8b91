//! Kernel state of a netns as structured data (`ip -j` JSON), for assertions
//! that read back what a plugin did instead of grepping text.

use std::io;
use std::process::Command;

use serde_json::Value;

/// Run `ip -n <ns> <args>` and return its stdout. The error carries stderr.
pub fn ip(ns: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip").arg("-n").arg(ns).args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip -n {ns} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run several `ip` commands in one process (`ip -n <ns> -batch -`); stops
/// at the first failing line.
pub fn ip_batch(ns: &str, lines: &[String]) -> io::Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    if lines.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip -n {ns} -batch: {} (batch: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            lines.join(" | ")
        )));
    }
    Ok(())
}

fn ip_json(ns: &str, args: &[&str]) -> io::Result<Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let text = ip(ns, &full)?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("ip -j {args:?}: {e}")))
}

/// Both families of a per-family listing, each entry tagged with
/// `"family": "inet" | "inet6"`.
fn both_families(ns: &str, args: &[&str]) -> io::Result<Value> {
    let mut all = Vec::new();
    for (flag, family) in [("-4", "inet"), ("-6", "inet6")] {
        let mut a = vec![flag];
        a.extend_from_slice(args);
        if let Value::Array(entries) = ip_json(ns, &a)? {
            for mut e in entries {
                if let Value::Object(o) = &mut e {
                    o.insert("family".into(), family.into());
                }
                all.push(e);
            }
        }
    }
    Ok(Value::Array(all))
}

/// `ip -j link show`.
pub fn links(ns: &str) -> io::Result<Value> {
    ip_json(ns, &["link", "show"])
}

/// `ip -j addr show` (both families; per link, with `addr_info`).
pub fn addrs(ns: &str) -> io::Result<Value> {
    ip_json(ns, &["addr", "show"])
}

/// Routes of `table` ("main", "local", "all", or a number), IPv4 then IPv6,
/// each tagged with `family`.
pub fn routes(ns: &str, table: &str) -> io::Result<Value> {
    both_families(ns, &["route", "show", "table", table])
}

/// Policy rules, IPv4 then IPv6, each tagged with `family`.
pub fn rules(ns: &str) -> io::Result<Value> {
    both_families(ns, &["rule", "show"])
}

/// Neighbour entries (both families).
pub fn neighbours(ns: &str) -> io::Result<Value> {
    ip_json(ns, &["neigh", "show"])
}

/// Names of the links in `ns`.
pub fn link_names(ns: &str) -> io::Result<Vec<String>> {
    Ok(links(ns)?
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

/// `local/prefixlen` strings of the global-scope addresses on `ifname`.
pub fn addresses_of(ns: &str, ifname: &str) -> io::Result<Vec<String>> {
    let all = addrs(ns)?;
    let mut out = Vec::new();
    for link in all.as_array().into_iter().flatten() {
        if link["ifname"] != ifname {
            continue;
        }
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["scope"] == "global" {
                if let (Some(l), Some(p)) = (a["local"].as_str(), a["prefixlen"].as_u64()) {
                    out.push(format!("{l}/{p}"));
                }
            }
        }
    }
    Ok(out)
}

/// One route of [`routes`] as an `ip route` line (for people, not asserts).
pub fn route_line(r: &Value) -> String {
    let mut s = r["dst"].as_str().unwrap_or("?").to_string();
    for (key, word) in [
        ("gateway", "via"),
        ("dev", "dev"),
        ("table", "table"),
        ("protocol", "proto"),
        ("scope", "scope"),
        ("prefsrc", "src"),
        ("metric", "metric"),
    ] {
        match &r[key] {
            Value::String(v) => s.push_str(&format!(" {word} {v}")),
            Value::Number(n) => s.push_str(&format!(" {word} {n}")),
            _ => {}
        }
    }
    s
}

/// One rule of [`rules`] as an `ip rule` line.
pub fn rule_line(r: &Value) -> String {
    let with_len = |addr: &str, len: &str| match (&r[addr], &r[len]) {
        (Value::String(a), Value::Number(l)) => format!("{a}/{l}"),
        (Value::String(a), _) => a.clone(),
        _ => "all".to_string(),
    };
    let mut s = format!("{}: from {}", r["priority"], with_len("src", "srclen"));
    if r.get("dst").is_some() {
        s.push_str(&format!(" to {}", with_len("dst", "dstlen")));
    }
    for key in ["fwmark", "iif", "oif"] {
        if let Some(v) = r[key].as_str() {
            s.push_str(&format!(" {key} {v}"));
        }
    }
    match (&r["table"], &r["action"]) {
        (Value::String(t), _) => s.push_str(&format!(" lookup {t}")),
        (_, Value::String(a)) => s.push_str(&format!(" {a}")),
        _ => {}
    }
    s
}

/// One entry of [`neighbours`] as an `ip neigh` line.
pub fn neigh_line(n: &Value) -> String {
    let state = n["state"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    format!(
        "{} dev {} lladdr {} {state}",
        n["dst"].as_str().unwrap_or("?"),
        n["dev"].as_str().unwrap_or("?"),
        n["lladdr"].as_str().unwrap_or("-"),
    )
}
