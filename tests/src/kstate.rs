//! A netns's kernel state as keyed items, for tests that compare before and
//! after (a DEL, an undo) or break one piece at a time: links with MTU, MAC,
//! txqueuelen and up/down; policy rules; routes of every table but `local`;
//! permanent neighbours; the nftables ruleset (tables, chains, rules); and
//! per link (plus `all` and `default`) the sysctls the coordinator writes or
//! that a main plugin sets beside it (`rp_filter`, `arp_notify`,
//! `accept_dad`, `addr_gen_mode`).
//!
//! One `ip -batch` exec reads links, IPv4 rules, routes of both families and
//! neighbours; one more reads IPv6 rules, one `nft` the ruleset; sysctls are
//! read in-process from a thread inside the netns.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::process::{Command, Stdio};

use integration::lab::{self, state};
use integration::nsexec::{self, Enter};
use serde_json::Value;

/// What an [`Item`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Link,
    Rule,
    Route,
    Neigh,
    NftTable,
    NftChain,
    NftRule,
    Sysctl,
}

/// One object of the kernel: `key` names it (two snapshots are matched by
/// key), `attrs` is what may change under the same key, `raw` the object as
/// `ip -j` / `nft -j` printed it (sysctls: the value as a string).
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    pub kind: Kind,
    pub key: String,
    pub attrs: String,
    pub raw: Value,
}

impl Item {
    /// `key` and `attrs` in one line, for people and for comparisons.
    pub fn line(&self) -> String {
        if self.attrs.is_empty() {
            self.key.clone()
        } else {
            format!("{} = {}", self.key, self.attrs)
        }
    }

    /// The IP family flag (`-4` / `-6`) of a rule or route item.
    pub fn family_flag(&self) -> &'static str {
        if self.raw["family"] == "inet6" {
            "-6"
        } else {
            "-4"
        }
    }
}

/// Every item of one netns, by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub items: BTreeMap<String, Item>,
}

/// What changed between two snapshots.
#[derive(Clone, Debug, Default)]
pub struct Diff {
    pub added: Vec<Item>,
    pub removed: Vec<Item>,
    /// (before, after) of items whose attributes changed.
    pub changed: Vec<(Item, Item)>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `+ line`, `- line`, `~ before -> after`, for a failure message.
    pub fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .added
            .iter()
            .map(|i| format!("+ {}", i.line()))
            .collect();
        out.extend(self.removed.iter().map(|i| format!("- {}", i.line())));
        out.extend(
            self.changed
                .iter()
                .map(|(a, b)| format!("~ {}: {} -> {}", a.key, a.attrs, b.attrs)),
        );
        out
    }
}

impl Snapshot {
    /// Everything of the module doc, read now from netns `ns`.
    pub fn capture(ns: &str) -> io::Result<Snapshot> {
        let mut s = Snapshot::default();
        let docs = ip_batch_json(
            ns,
            &[
                "link show",
                "rule show",
                "route show table all root 0.0.0.0/0",
                "route show table all root ::/0",
                "neigh show nud permanent",
            ],
        )?;
        let [links, rules4, routes4, routes6, neigh] =
            <[Value; 5]>::try_from(docs).map_err(|d| {
                io::Error::other(format!("ip -batch gave {} documents, not 5", d.len()))
            })?;
        let rules6 = ip_json(ns, &["-6", "-j", "rule", "show"])?;
        let mut names = Vec::new();
        for l in rows(links) {
            let name = l["ifname"].as_str().unwrap_or("?").to_string();
            names.push(name.clone());
            s.insert(Kind::Link, format!("link {name}"), link_attrs(&l), l);
        }
        for (family, list) in [("inet", rules4), ("inet6", rules6)] {
            for mut r in rows(list) {
                r["family"] = family.into();
                let key = format!("rule {family} {}", state::rule_line(&r));
                s.insert(Kind::Rule, key, String::new(), r);
            }
        }
        for (family, list) in [("inet", routes4), ("inet6", routes6)] {
            for mut r in rows(list) {
                if r["table"] == "local" || r["dst"] == "multicast" || r["type"] == "multicast" {
                    continue;
                }
                r["family"] = family.into();
                if r.get("table").is_none() {
                    r["table"] = "main".into();
                }
                let key = format!("route {family} {}", route_line(&r));
                s.insert(Kind::Route, key, String::new(), r);
            }
        }
        for n in rows(neigh) {
            let key = format!(
                "neigh {} dev {}",
                n["dst"].as_str().unwrap_or("?"),
                n["dev"].as_str().unwrap_or("?")
            );
            let attrs = format!("lladdr {}", n["lladdr"].as_str().unwrap_or("-"));
            s.insert(Kind::Neigh, key, attrs, n);
        }
        s.nft(ns)?;
        for (key, value) in sysctls(ns, &names)? {
            s.insert(
                Kind::Sysctl,
                format!("sysctl {key}"),
                value.clone(),
                value.into(),
            );
        }
        Ok(s)
    }

    /// The links of `ns` only (one `ip` exec), as [`capture`](Self::capture)
    /// would list them.
    pub fn links(ns: &str) -> io::Result<Snapshot> {
        let mut s = Snapshot::default();
        for l in rows(state::links(ns)?) {
            let name = l["ifname"].as_str().unwrap_or("?").to_string();
            s.insert(Kind::Link, format!("link {name}"), link_attrs(&l), l);
        }
        Ok(s)
    }

    fn insert(&mut self, kind: Kind, key: String, attrs: String, raw: Value) {
        // Two objects printing alike (e.g. a route twice in a dump) keep
        // distinct keys: a duplicate is a difference worth seeing.
        let mut k = key.clone();
        let mut n = 1;
        while self.items.contains_key(&k) {
            n += 1;
            k = format!("{key} #{n}");
        }
        self.items.insert(
            k.clone(),
            Item {
                kind,
                key: k,
                attrs,
                raw,
            },
        );
    }

    fn nft(&mut self, ns: &str) -> io::Result<()> {
        let out = nsexec::command_in(ns, "nft", Enter::NetOnly)?
            .args(["-j", "list", "ruleset"])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "nft -j list ruleset in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let mut per_chain: BTreeMap<String, usize> = BTreeMap::new();
        for obj in doc["nftables"].as_array().cloned().unwrap_or_default() {
            if let Some(t) = obj.get("table") {
                let key = format!(
                    "nft table {} {}",
                    t["family"].as_str().unwrap_or("?"),
                    t["name"].as_str().unwrap_or("?")
                );
                self.insert(Kind::NftTable, key, String::new(), t.clone());
            } else if let Some(c) = obj.get("chain") {
                let key = format!(
                    "nft chain {} {} {}",
                    c["family"].as_str().unwrap_or("?"),
                    c["table"].as_str().unwrap_or("?"),
                    c["name"].as_str().unwrap_or("?")
                );
                let attrs = ["type", "hook", "prio", "policy"]
                    .iter()
                    .filter(|k| c.get(**k).is_some())
                    .map(|k| format!("{k} {}", c[*k].to_string().trim_matches('"')))
                    .collect::<Vec<_>>()
                    .join(" ");
                self.insert(Kind::NftChain, key, attrs, c.clone());
            } else if let Some(r) = obj.get("rule") {
                let chain = format!(
                    "{} {} {}",
                    r["family"].as_str().unwrap_or("?"),
                    r["table"].as_str().unwrap_or("?"),
                    r["chain"].as_str().unwrap_or("?")
                );
                let n = per_chain.entry(chain.clone()).or_default();
                *n += 1;
                let key = format!("nft rule {chain} #{n}");
                self.insert(Kind::NftRule, key, r["expr"].to_string(), r.clone());
            } else if obj.get("metainfo").is_none() {
                self.insert(
                    Kind::NftRule,
                    format!("nft other {obj}"),
                    String::new(),
                    obj.clone(),
                );
            }
        }
        Ok(())
    }

    /// Items as sorted lines ([`Item::line`]).
    pub fn lines(&self) -> Vec<String> {
        self.items.values().map(Item::line).collect()
    }

    /// The items for which `keep` holds.
    pub fn filter(&self, keep: impl Fn(&Item) -> bool) -> Snapshot {
        Snapshot {
            items: self
                .items
                .iter()
                .filter(|(_, i)| keep(i))
                .map(|(k, i)| (k.clone(), i.clone()))
                .collect(),
        }
    }

    /// What turns `self` into `after`.
    pub fn diff(&self, after: &Snapshot) -> Diff {
        let mut d = Diff::default();
        for (k, a) in &self.items {
            match after.items.get(k) {
                None => d.removed.push(a.clone()),
                Some(b) if b.attrs != a.attrs => d.changed.push((a.clone(), b.clone())),
                Some(_) => {}
            }
        }
        for (k, b) in &after.items {
            if !self.items.contains_key(k) {
                d.added.push(b.clone());
            }
        }
        d
    }
}

/// The lines of [`Snapshot::capture`] that `ip`-based snapshots leave out:
/// link attributes (MTU, MAC, txqueuelen, up) and sysctls. Panics when the
/// netns cannot be read (tests).
pub fn tuning_lines(ns: &str) -> Vec<String> {
    let s = Snapshot::capture(ns).unwrap_or_else(|e| panic!("snapshot of {ns}: {e}"));
    s.items
        .values()
        .filter(|i| matches!(i.kind, Kind::Link | Kind::Sysctl))
        .map(|i| match i.kind {
            Kind::Link => format!("link-attrs {}", i.line()),
            _ => i.line(),
        })
        .collect()
}

/// The sysctls (paths under `net/`) read per link, with `{}` for the link.
pub const SYSCTLS: [&str; 4] = [
    "ipv4/conf/{}/rp_filter",
    "ipv4/conf/{}/arp_notify",
    "ipv6/conf/{}/accept_dad",
    "ipv6/conf/{}/addr_gen_mode",
];

/// `(net/<path>, value)` of [`SYSCTLS`] for `all`, `default` and each link;
/// absent ones (IPv6 off) are left out.
fn sysctls(ns: &str, links: &[String]) -> io::Result<Vec<(String, String)>> {
    let mut devs = vec!["all".to_string(), "default".to_string()];
    devs.extend(links.iter().cloned());
    lab::in_netns(ns, move || {
        let mut out = Vec::new();
        for dev in &devs {
            for s in SYSCTLS {
                let key = format!("net/{}", s.replace("{}", dev));
                if let Ok(v) = cni::netns::sysctl_get(&key) {
                    out.push((key, v));
                }
            }
        }
        Ok(out)
    })
}

fn link_attrs(l: &Value) -> String {
    let up = l["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    format!(
        "mtu {} mac {} txqlen {} {}",
        l["mtu"],
        l["address"].as_str().unwrap_or("-"),
        l["txqlen"],
        if up { "up" } else { "down" }
    )
}

/// [`state::route_line`] plus what it leaves out: type, nexthops, flags.
pub fn route_line(r: &Value) -> String {
    let mut s = state::route_line(r);
    if let Some(t) = r["type"].as_str().filter(|t| *t != "unicast") {
        s = format!("{t} {s}");
    }
    for h in r["nexthops"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            " nexthop via {} dev {} weight {}",
            h["gateway"].as_str().unwrap_or("-"),
            h["dev"].as_str().unwrap_or("-"),
            h["weight"]
        ));
    }
    for f in r["flags"].as_array().into_iter().flatten() {
        if let Some(f) = f.as_str() {
            s.push_str(&format!(" {f}"));
        }
    }
    s
}

fn rows(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        _ => Vec::new(),
    }
}

fn ip_json(ns: &str, args: &[&str]) -> io::Result<Value> {
    let text = state::ip(ns, args)?;
    if text.trim().is_empty() {
        return Ok(Value::Array(Vec::new()));
    }
    serde_json::from_str(&text).map_err(|e| io::Error::other(format!("ip {args:?}: {e}")))
}

/// `ip -n <ns> -j -batch -` with `lines`: one JSON document per line.
fn ip_batch_json(ns: &str, lines: &[&str]) -> io::Result<Vec<Value>> {
    let mut child = Command::new("ip")
        .args(["-n", ns, "-j", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(lines.join("\n").as_bytes())?;
        stdin.write_all(b"\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip -n {ns} -j -batch: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io::Error::other(format!("ip -j -batch output: {e}")))
}
