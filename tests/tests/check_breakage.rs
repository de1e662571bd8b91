//! CHECK and DEL against one broken piece at a time (issue 22, item 5).
//!
//! Four layouts, each a real chain (reference main plugin + host-local +
//! our coordinator in `auto` mode, with `podMACPrefix`, `txQueueLen` and
//! `podRPFilter` so the MAC, txqueuelen and rp_filter are really set) in a
//! netns lab whose fabric drops asymmetric replies:
//! a) macvlan `eth0` (underlay, dual-stack);
//! b) macvlan `eth0` + macvlan `net1`;
//! c) as b with `podDefaultRouteNic: net1`;
//! d) ptp `eth0` (overlay) + macvlan `net1`.
//!
//! Per layout one pod is attached NIC by NIC with the main plugin run alone
//! first and the coordinator then run with its result as `prevResult` (what
//! the runtime does within one chain), so a full kernel snapshot (links with
//! MTU/MAC/txqueuelen, rules, routes of every table, permanent neighbours,
//! nftables, sysctls: `tests/src/kstate.rs`) can be taken right before and
//! right after each coordinator ADD. Every difference is a piece the
//! coordinator installed (or moved away); the sysctls it writes are pieces
//! even where the kernel default already had the value. That pod also
//! proves the layout carries traffic, that CHECK passes on it intact, and
//! that DEL leaves the pod and node as they were.
//!
//! For every piece and every kind of change that fits it (delete; a route's
//! metric or `src`; a rule's table; a neighbour's MAC; a sysctl's value; the
//! nft rules' mark, `iifname`, a chain's priority or a drop policy; a link's
//! MTU, MAC, txqueuelen, down; a moved default put back into `main`) the
//! piece is found by its key (addresses, MACs and the host veth replaced by
//! placeholders) in a pod attached with whole chains, changed, and every
//! NIC's CHECK runs through the chain runner up to the first that fails with
//! 103. The verdict recorded is the coordinator's: it runs alone on the
//! cached result (the reference plugins' own CHECK stops the chain first on
//! some pieces, e.g. the NIC's MAC, and would hide it).
//! - A deletion gets a freshly attached pod of its own, then the runtime's
//!   DEL of every chain, after which the pod netns and the node netns must
//!   equal their pre-ADD snapshots (the node's shared `from all lookup 500`
//!   rules aside), no `from <ip>` rule may be left in the pod, and no
//!   attachment record in /run/coordinator/attachments/<containerID>/.
//! - Changes of one layout share a pod: each is undone after its CHECK and
//!   the changed netns must then read exactly as after ADD, or the pod is
//!   DELeted and the next change gets a fresh one (a link set down loses its
//!   routes: always fresh).
//!
//! The table (layout x piece x change -> verdict, then caught/total per kind
//! of piece) goes to stderr. With `CHECK_BREAKAGE_REPORT=1` the test only
//! reports; without it, every breakage must fail CHECK with code 103
//! (CHECK_FAILED) and every DEL with a piece gone must leave nothing.
//! `CHECK_BREAKAGE_LAYOUT=<a|b|c|d>` limits the run to one layout. Pods run
//! one at a time per lab, four labs at once (a node-side breakage of a
//! shared rule must not reach another pod's CHECK). Needs root and the
//! plugins built (scripts/build.sh --profile dev); never skips.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use cni_tests::kstate::{Item, Kind, Snapshot};
use cni_tests::{bin_dir, cni_path, coordinator_entry};
use integration::chain::{result_ips, Attachment, Chain, NetConfList, Outcome, PluginRun};
use integration::lab::{self, state, Client, Lab, Pod};
use integration::traffic::{reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const REPORT_ENV: &str = "CHECK_BREAKAGE_REPORT";
const MAC_PREFIX: &str = "0a:0b";
const TXQLEN: u32 = 1234;
/// Not the kernel's default (0), so the write shows.
const RP_FILTER: u8 = 1;
const RECORDS: &str = "/run/coordinator/attachments";
const CHECK_FAILED: u32 = 103;
const OTHER_MAC: &str = "02:42:de:ad:be:ef";
const POD_PORT: u16 = 8080;
const LABS: usize = 4;
/// Where a rule is pointed instead of its table.
const OTHER_TABLE: &str = "4242";
/// What today's DEL leaves after every pod (the summary counts it apart).
const RP_FILTER_LEFT: &str = "pod: ~ sysctl net/ipv4/conf/all/rp_filter: 0 -> 1";

// ------------------------------------------------------------------ layouts

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Layout {
    One,
    Two,
    DefaultNet1,
    Overlay,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Main {
    /// On the parent of this lab subnet.
    Macvlan(u8),
    Ptp,
}

impl Layout {
    const ALL: [Layout; 4] = [
        Layout::One,
        Layout::Two,
        Layout::DefaultNet1,
        Layout::Overlay,
    ];

    fn name(self) -> &'static str {
        match self {
            Layout::One => "a 1 NIC",
            Layout::Two => "b 2 NICs",
            Layout::DefaultNet1 => "c 2 NICs dflt net1",
            Layout::Overlay => "d ptp+macvlan",
        }
    }

    fn nics(self) -> Vec<Main> {
        match self {
            Layout::One => vec![Main::Macvlan(1)],
            Layout::Two | Layout::DefaultNet1 => vec![Main::Macvlan(1), Main::Macvlan(2)],
            Layout::Overlay => vec![Main::Ptp, Main::Macvlan(2)],
        }
    }

    fn underlay(self) -> bool {
        self != Layout::Overlay
    }
}

fn ifname(i: usize) -> String {
    match i {
        0 => "eth0".into(),
        n => format!("net{n}"),
    }
}

fn conflist(lab: &Lab, layout: Layout, i: usize) -> NetConfList {
    let main = layout.nics()[i];
    let defaults = json!([{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]);
    let plugin = match main {
        Main::Macvlan(s) => {
            let sn = lab.subnet(s).expect("lab subnet");
            let v4 = json!([{
                "subnet": sn.v4.unwrap().to_string(),
                "rangeStart": sn.host4(20, 1).unwrap().to_string(),
                "rangeEnd": sn.host4(20, 250).unwrap().to_string(),
                "gateway": sn.gateway4.unwrap().to_string(),
            }]);
            let v6 = json!([{
                "subnet": sn.v6.unwrap().to_string(),
                "rangeStart": sn.host6(0x2001).unwrap().to_string(),
                "rangeEnd": sn.host6(0x20ff).unwrap().to_string(),
                "gateway": sn.gateway6.unwrap().to_string(),
            }]);
            json!({"type": "macvlan", "master": sn.parent, "mode": "bridge",
                "ipam": {"type": "host-local", "ranges": [v4, v6], "routes": defaults}})
        }
        Main::Ptp => json!({"type": "ptp", "ipam": {"type": "host-local",
            "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:244:0:1::/64"}]],
            "routes": defaults}}),
    };
    let kind = match main {
        Main::Macvlan(_) => "macvlan",
        Main::Ptp => "ptp",
    };
    let mut list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0",
        "name": format!("brk-{}-{kind}", ifname(i)),
        "plugins": [plugin, {"type": "coordinator"}],
    }))
    .expect("conflist");
    lab.localize(&mut list);
    let mut fields = json!({
        "mode": "auto",
        "serviceCIDR": ["10.233.0.0/18", "fd00:233::/110"],
        "overlayPodCIDR": ["10.244.0.0/16", "fd00:244::/48"],
        "defaultsFile": lab.dir().join("no-defaults.json").display().to_string(),
        "podMACPrefix": MAC_PREFIX,
        "txQueueLen": TXQLEN,
        "podRPFilter": RP_FILTER,
    });
    if layout == Layout::DefaultNet1 {
        fields["podDefaultRouteNic"] = "net1".into();
    }
    coordinator_entry(&mut list, &fields, lab.dir());
    list
}

// ------------------------------------------------------------------ labs and pods

struct Worker {
    lab: Lab,
    /// A client on subnets 1 and 2.
    clients: Vec<Client>,
    /// Holds the `brk-replay` plugin.
    replay_dir: PathBuf,
    /// The node as the last DEL left it (taken by the next pod as its
    /// pre-ADD snapshot: nothing else touches the node in between).
    node_now: Mutex<Option<Snapshot>>,
}

impl Worker {
    fn new() -> Worker {
        assert!(
            bin_dir().join("coordinator").is_file(),
            "coordinator binary missing in {} (scripts/build.sh --profile dev --fault-injection)",
            bin_dir().display()
        );
        let lab = Lab::builder()
            .subnets(2)
            .build()
            .expect("build lab (needs root)");
        let clients = (1..=2)
            .map(|s| {
                let sn = lab.subnet(s).unwrap().clone();
                lab.fabric_client(s, sn.host4(9, 1), sn.host6(0x9901))
                    .expect("fabric client")
            })
            .collect();
        let replay_dir = lab.dir().join("replay");
        std::fs::create_dir_all(&replay_dir).unwrap();
        let plugin = replay_dir.join("brk-replay");
        // ADD prints the main plugin's saved result; CHECK and DEL do nothing.
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\n[ \"$CNI_COMMAND\" = ADD ] && cat \"$BRK_RESULT\"\nexit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        Worker {
            lab,
            clients,
            replay_dir,
            node_now: Mutex::new(None),
        }
    }

    /// The node now: as the last DEL left it, or read.
    fn node_before(&self) -> Result<Snapshot, String> {
        match self.node_now.lock().unwrap().take() {
            Some(s) => Ok(s),
            None => {
                Snapshot::capture(self.lab.node()).map_err(|e| format!("snapshot of the node: {e}"))
            }
        }
    }

    fn capture(&self, pod: &str) -> Result<[Snapshot; 2], String> {
        let p = Snapshot::capture(pod).map_err(|e| format!("snapshot of the pod: {e}"))?;
        let n =
            Snapshot::capture(self.lab.node()).map_err(|e| format!("snapshot of the node: {e}"))?;
        Ok([p, n])
    }

    /// `list` with its main plugin replaced by `brk-replay`.
    fn replay_chain(&self, list: &NetConfList, saved: &Path, cache: &Path) -> Chain {
        let mut v = list.to_value();
        v["plugins"][0] = json!({"type": "brk-replay"});
        let mut path = vec![self.replay_dir.clone()];
        path.extend(cni_path());
        self.lab
            .chain(NetConfList::from_value(v).expect("replay conflist"))
            .cni_path(path)
            .cache_dir(cache)
            .env("BRK_RESULT", &saved.display().to_string())
    }
}

struct Nic {
    /// The whole chain (DEL).
    full: Chain,
    /// The coordinator alone under the same network name and result cache:
    /// its CHECK gets the cached result as `prevResult`, as in the chain,
    /// and the verdict is the coordinator's own.
    ours: Chain,
    att: Attachment,
    ips: Vec<IpAddr>,
}

struct Attached {
    pod: Pod,
    cid: String,
    nics: Vec<Nic>,
    /// Pod and node before the first ADD, and after the last.
    pre: [Snapshot; 2],
    post: [Snapshot; 2],
    /// Pod-specific text (addresses, MACs, the host veth) -> placeholder.
    subst: Vec<(String, String)>,
    /// Per NIC: pod and node right before and right after the coordinator's
    /// ADD (enumerating pods only).
    steps: Vec<([Snapshot; 2], [Snapshot; 2])>,
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// A pod with every NIC of `layout`. `split`: each NIC's main plugin alone,
/// then the coordinator replaying its result, with snapshots around the
/// coordinator; else each NIC's whole chain at once. `node_full`: the
/// node's snapshot after ADD has everything, else its links only (all that
/// a pod-side breakage needs of it).
fn attach(
    w: &Worker,
    layout: Layout,
    name: &str,
    split: bool,
    node_full: bool,
) -> Result<Attached, String> {
    let pod = w.lab.pod(name).map_err(|e| err("pod netns", e))?;
    let cid = format!("ctr-{}", pod.name);
    let dir = w.lab.dir().join("pods").join(&pod.name);
    std::fs::create_dir_all(&dir).map_err(|e| err("pod dir", e))?;
    let pre = [
        Snapshot::capture(&pod.name).map_err(|e| err("snapshot of the pod", e))?,
        w.node_before()?,
    ];
    let mut nics = Vec::new();
    let mut steps = Vec::new();
    for i in 0..layout.nics().len() {
        let list = conflist(&w.lab, layout, i);
        let att = Attachment::new(&cid, &pod.path, &ifname(i));
        let full = w
            .lab
            .chain(list.clone())
            .cni_path(cni_path())
            .cache_dir(&dir);
        let saved = dir.join(format!("{}.json", ifname(i)));
        let ours = {
            let mut v = list.to_value();
            v["plugins"] = json!([v["plugins"][1].clone()]);
            w.lab
                .chain(NetConfList::from_value(v).expect("coordinator-only conflist"))
                .cni_path(cni_path())
                .cache_dir(&dir)
        };
        let result = if split {
            let mut v = list.to_value();
            v["plugins"] = json!([v["plugins"][0].clone()]);
            let main = w
                .lab
                .chain(NetConfList::from_value(v).expect("main-only conflist"))
                .cni_path(cni_path())
                .cache_dir(&dir);
            let out = main.add(&att);
            tally(&out, |o: &Outcome| &o.runs);
            let out = out.map_err(|e| err(&format!("main ADD {}", ifname(i)), e))?;
            std::fs::write(&saved, &out.runs[0].stdout).map_err(|e| err("save result", e))?;
            let before = w.capture(&pod.name)?;
            let out = w.replay_chain(&list, &saved, &dir).add(&att);
            tally(&out, |o: &Outcome| &o.runs);
            let out = out.map_err(|e| err(&format!("coordinator ADD {}", ifname(i)), e))?;
            steps.push((before, w.capture(&pod.name)?));
            out.result
        } else {
            let out = full.add(&att);
            tally(&out, |o: &Outcome| &o.runs);
            out.map_err(|e| err(&format!("ADD {}", ifname(i)), e))?
                .result
        };
        let ips = result_ips(&result.unwrap_or(Value::Null));
        nics.push(Nic {
            full,
            ours,
            att,
            ips,
        });
    }
    let post = [
        Snapshot::capture(&pod.name).map_err(|e| err("snapshot of the pod", e))?,
        match node_full || split {
            true => Snapshot::capture(w.lab.node()),
            false => Snapshot::links(w.lab.node()),
        }
        .map_err(|e| err("snapshot of the node", e))?,
    ];
    let subst = substitutions(&nics, &pre, &post);
    Ok(Attached {
        pod,
        cid,
        nics,
        pre,
        post,
        subst,
        steps,
    })
}

/// Addresses of each NIC, the MAC of each pod link, the node's new veth
/// (ours in underlay, ptp's in overlay) and its MAC -> placeholders, so the
/// pieces of one pod name the same pieces of another.
fn substitutions(nics: &[Nic], pre: &[Snapshot; 2], post: &[Snapshot; 2]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (i, nic) in nics.iter().enumerate() {
        for ip in &nic.ips {
            let fam = if ip.is_ipv4() { "v4" } else { "v6" };
            out.push((ip.to_string(), format!("<{}.{fam}>", ifname(i))));
        }
    }
    for item in post[0].items.values().filter(|i| i.kind == Kind::Link) {
        let name = item.raw["ifname"].as_str().unwrap_or("?");
        if let Some(mac) = item.raw["address"].as_str().filter(|_| name != "lo") {
            out.push((mac.to_string(), format!("<{name}.mac>")));
        }
    }
    for (k, item) in &post[1].items {
        let name = item.raw["ifname"].as_str().unwrap_or("");
        if item.kind == Kind::Link && !pre[1].items.contains_key(k) && name.starts_with("veth") {
            out.push((name.to_string(), "<hveth>".into()));
            if let Some(mac) = item.raw["address"].as_str() {
                out.push((mac.to_string(), "<hveth.mac>".into()));
            }
        }
    }
    out
}

/// `text` with each `from` replaced where it stands as a whole token (not
/// inside a longer address: 10.6.20.1 is not 10.6.20.10's).
fn normalize(text: &str, subst: &[(String, String)]) -> String {
    let mut s = text.to_string();
    for (from, to) in subst {
        s = replace_token(&s, from, to);
    }
    s
}

fn denormalize(text: &str, subst: &[(String, String)]) -> String {
    let mut s = text.to_string();
    for (from, to) in subst {
        s = s.replace(to.as_str(), from);
    }
    s
}

fn replace_token(s: &str, from: &str, to: &str) -> String {
    let part = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == ':';
    let mut out = String::new();
    let mut rest = s;
    while let Some(at) = rest.find(from) {
        let before = rest[..at].chars().next_back();
        let after = rest[at + from.len()..].chars().next();
        out.push_str(&rest[..at]);
        if before.is_some_and(part) || after.is_some_and(part) {
            out.push_str(from);
        } else {
            out.push_str(to);
        }
        rest = &rest[at + from.len()..];
    }
    out.push_str(rest);
    out
}

// ------------------------------------------------------------------ pieces

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Pod,
    Node,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Pod => 0,
            Side::Node => 1,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Change {
    Delete,
    Down,
    Mtu,
    Mac,
    TxqLen,
    RuleTable,
    Metric,
    Src,
    NeighMac,
    Sysctl,
    NftMark,
    NftIif,
    NftPriority,
    NftDropPolicy,
    /// A route the coordinator moved out of `main`, put back.
    BackToMain,
}

impl Change {
    fn name(&self) -> &'static str {
        match self {
            Change::Delete => "delete",
            Change::Down => "set down",
            Change::Mtu => "MTU",
            Change::Mac => "MAC",
            Change::TxqLen => "txqueuelen",
            Change::RuleTable => "other table",
            Change::Metric => "metric",
            Change::Src => "src",
            Change::NeighMac => "MAC",
            Change::Sysctl => "value",
            Change::NftMark => "mark",
            Change::NftIif => "iifname",
            Change::NftPriority => "priority",
            Change::NftDropPolicy => "policy drop",
            Change::BackToMain => "back into main",
        }
    }
}

/// One breakage to try on a fresh pod.
#[derive(Clone, Debug)]
struct Job {
    layout: Layout,
    side: Side,
    /// The item's key with placeholders.
    key: String,
    change: Change,
    /// For [`Change::BackToMain`]: the moved route as it was (placeholders).
    moved: Option<Value>,
    note: &'static str,
}

impl Job {
    fn label(&self) -> String {
        let side = match self.side {
            Side::Pod => "pod",
            Side::Node => "node",
        };
        format!("{side} {}", self.key)
    }
}

/// The sysctls the coordinator writes, as (side, key) with placeholders.
fn written_sysctls(layout: Layout, nics: usize) -> Vec<(Side, String)> {
    let mut out = vec![(Side::Pod, "sysctl net/ipv4/conf/all/rp_filter".to_string())];
    for i in 0..nics {
        out.push((
            Side::Pod,
            format!("sysctl net/ipv4/conf/{}/rp_filter", ifname(i)),
        ));
    }
    if layout.underlay() {
        out.push((Side::Pod, "sysctl net/ipv4/conf/veth0/rp_filter".into()));
        out.push((Side::Pod, "sysctl net/ipv6/conf/veth0/accept_dad".into()));
        out.push((Side::Node, "sysctl net/ipv6/conf/<hveth>/accept_dad".into()));
        out.push((
            Side::Node,
            "sysctl net/ipv6/conf/<hveth>/addr_gen_mode".into(),
        ));
    }
    out
}

/// Every breakage of `layout`, from the enumerating pod's snapshots.
fn jobs_of(layout: Layout, a: &Attached) -> Vec<Job> {
    let mut jobs: Vec<Job> = Vec::new();
    let mut push =
        |side: Side, key: &str, change: Change, moved: Option<Value>, note: &'static str| {
            let key = normalize(key, &a.subst);
            if !jobs
                .iter()
                .any(|j| j.side == side && j.key == key && j.change == change)
            {
                jobs.push(Job {
                    layout,
                    side,
                    key,
                    change,
                    moved,
                    note,
                });
            }
        };
    for (before, after) in &a.steps {
        for side in [Side::Pod, Side::Node] {
            let s = side.index();
            let d = before[s].diff(&after[s]);
            for item in &d.added {
                // What is left in main of a route the coordinator rewrote
                // there (the multipath default split into its NICs' hops).
                let rewritten = item.kind == Kind::Route
                    && item.raw["table"] == "main"
                    && d.removed.iter().any(|r| {
                        r.kind == Kind::Route
                            && r.raw["table"] == "main"
                            && r.raw["dst"] == item.raw["dst"]
                            && r.raw["family"] == item.raw["family"]
                    });
                for c in changes_of_new(item, &after[s]) {
                    let note = match rewritten {
                        true => "rewritten in main",
                        false => own_table_default(layout, item),
                    };
                    push(side, &item.key, c, None, note);
                }
            }
            for (old, new) in &d.changed {
                for c in changes_of_changed(old, new) {
                    push(side, &new.key, c, None, "");
                }
            }
            for item in &d.removed {
                if item.kind == Kind::Route
                    && item.raw["table"] == "main"
                    && item.raw["protocol"] != "kernel"
                {
                    let raw = Value::String(normalize(&item.raw.to_string(), &a.subst));
                    push(
                        side,
                        &item.key,
                        Change::BackToMain,
                        Some(raw),
                        "moved out of main",
                    );
                }
            }
        }
    }
    for (side, key) in written_sysctls(layout, a.nics.len()) {
        let real = denormalize(&key, &a.subst);
        if a.post[side.index()].items.contains_key(&real) {
            push(side, &real, Change::Sysctl, None, "written");
        }
    }
    jobs
}

fn own_table_default(layout: Layout, item: &Item) -> &'static str {
    let eth0_own = layout == Layout::DefaultNet1
        && item.kind == Kind::Route
        && item.raw["dst"] == "default"
        && item.raw["dev"] == "eth0"
        && item.raw["table"] != "main";
    if eth0_own {
        "eth0's default in its own table"
    } else {
        ""
    }
}

fn changes_of_new(item: &Item, after: &Snapshot) -> Vec<Change> {
    use Change::*;
    match item.kind {
        Kind::Link => vec![Delete, Down, Mtu, Mac],
        Kind::Rule => vec![Delete, RuleTable],
        Kind::Route if item.raw["protocol"] == "kernel" => vec![],
        Kind::Route => vec![Delete, Metric, Src],
        Kind::Neigh => vec![Delete, NeighMac],
        Kind::NftTable => vec![Delete],
        Kind::NftChain => vec![Delete, NftPriority, NftDropPolicy],
        Kind::NftRule => {
            let mut v = vec![Delete];
            if item.attrs.contains("\"mark\"") {
                v.push(NftMark);
            }
            if item.attrs.contains("iifname") {
                v.push(NftIif);
            }
            v
        }
        Kind::Sysctl => {
            // A new link's sysctl is ours where it is not what the kernel
            // gives a new link (the netns's `default`).
            let dev = item.key.split('/').nth(3).unwrap_or("");
            let default_key = item.key.replacen(&format!("/{dev}/"), "/default/", 1);
            match after.items.get(&default_key) {
                Some(d) if d.attrs == item.attrs => vec![],
                _ => vec![Sysctl],
            }
        }
    }
}

fn changes_of_changed(old: &Item, new: &Item) -> Vec<Change> {
    use Change::*;
    match new.kind {
        Kind::Link => {
            let a: Vec<&str> = old.attrs.split(' ').collect();
            let b: Vec<&str> = new.attrs.split(' ').collect();
            let mut v = Vec::new();
            // "mtu M mac X txqlen Q up"
            for (idx, c) in [(1, Mtu), (3, Mac), (5, TxqLen), (6, Down)] {
                if a.get(idx) != b.get(idx) {
                    v.push(c);
                }
            }
            v
        }
        Kind::Neigh => vec![NeighMac],
        Kind::Sysctl => vec![Sysctl],
        Kind::NftChain => vec![NftPriority, NftDropPolicy],
        Kind::NftRule => vec![Delete],
        Kind::Route | Kind::Rule | Kind::NftTable => vec![Delete],
    }
}

// ------------------------------------------------------------------ breaking

fn ip(ns: &str, args: &[String]) -> Result<(), String> {
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    state::ip(ns, &a).map(drop).map_err(|e| e.to_string())
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(String::from).collect()
}

fn str_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `ip rule` selector of a rule as `ip -j rule` shows it, with `table`.
fn rule_args(r: &Value, verb: &str, table: &str) -> Vec<String> {
    let flag = if r["family"] == "inet6" { "-6" } else { "-4" };
    let mut a = words(&format!("{flag} rule {verb} priority {}", r["priority"]));
    let with_len = |addr: &str, len: &str| match (str_of(&r[addr]), str_of(&r[len])) {
        (Some(a), Some(l)) => Some(format!("{a}/{l}")),
        (Some(a), None) => Some(a),
        _ => None,
    };
    if let Some(src) = with_len("src", "srclen").filter(|s| s != "all") {
        a.extend(["from".into(), src]);
    }
    if let Some(dst) = with_len("dst", "dstlen").filter(|s| s != "all") {
        a.extend(["to".into(), dst]);
    }
    if let Some(m) = str_of(&r["fwmark"]) {
        let m = match str_of(&r["fwmask"]) {
            Some(mask) => format!("{m}/{mask}"),
            None => m,
        };
        a.extend(["fwmark".into(), m]);
    }
    for key in ["iif", "oif"] {
        if let Some(v) = str_of(&r[key]) {
            a.extend([key.to_string(), v]);
        }
    }
    a.extend(["lookup".into(), table.into()]);
    a
}

/// `ip route` arguments of a route as `ip -j route` shows it.
fn route_args(
    r: &Value,
    verb: &str,
    metric: Option<u64>,
    src: Option<Option<String>>,
) -> Vec<String> {
    let flag = if r["family"] == "inet6" { "-6" } else { "-4" };
    let mut a = words(&format!("{flag} route {verb}"));
    if let Some(t) = r["type"].as_str().filter(|t| *t != "unicast") {
        a.push(t.into());
    }
    a.push(r["dst"].as_str().unwrap_or("default").into());
    if let Some(gw) = str_of(&r["gateway"]) {
        a.extend(["via".into(), gw]);
    }
    if let Some(dev) = str_of(&r["dev"]) {
        a.extend(["dev".into(), dev]);
    }
    a.extend(["table".into(), str_of(&r["table"]).unwrap_or("main".into())]);
    if let Some(p) = str_of(&r["protocol"]) {
        a.extend(["proto".into(), p]);
    }
    if let Some(s) = str_of(&r["scope"]) {
        a.extend(["scope".into(), s]);
    }
    let src = src.unwrap_or_else(|| str_of(&r["prefsrc"]));
    if let Some(s) = src {
        a.extend(["src".into(), s]);
    }
    if let Some(m) = metric.or(r["metric"].as_u64()) {
        a.extend(["metric".into(), m.to_string()]);
    }
    let flags: Vec<String> = r["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    if flags.iter().any(|f| f == "onlink") {
        a.push("onlink".into());
    }
    for h in r["nexthops"].as_array().into_iter().flatten() {
        a.push("nexthop".into());
        if let Some(gw) = str_of(&h["gateway"]) {
            a.extend(["via".into(), gw]);
        }
        if let Some(dev) = str_of(&h["dev"]) {
            a.extend(["dev".into(), dev]);
        }
        if let Some(wt) = str_of(&h["weight"]) {
            a.extend(["weight".into(), wt]);
        }
    }
    a
}

/// Global addresses of `family` ("inet"/"inet6") in `ns`.
fn local_addrs(ns: &str, family: &str) -> Vec<String> {
    let mut out = Vec::new();
    for link in state::addrs(ns)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
    {
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if a["family"] == family && a["scope"] == "global" {
                if let Some(l) = a["local"].as_str() {
                    out.push(l.to_string());
                }
            }
        }
    }
    out.sort();
    out
}

fn other_sysctl(key: &str, value: &str) -> &'static str {
    if key.ends_with("rp_filter") {
        match value {
            "1" => "2",
            "0" => "1",
            _ => "0",
        }
    } else if value == "0" {
        "1"
    } else {
        "0"
    }
}

/// Rewrite one nftables table through `edit` of its `nft -a list` text.
fn nft_rewrite(
    ns: &str,
    family: &str,
    table: &str,
    edit: impl Fn(&str) -> String,
) -> Result<Undo, String> {
    let text =
        lab::nft_in(ns, &format!("list table {family} {table}\n")).map_err(|e| e.to_string())?;
    let text_a = nft_cmd(ns, &["-a", "list", "table", family, table])?;
    let edited = edit(&text_a);
    if edited == text_a {
        return Err(format!("the edit changed nothing in:\n{text}"));
    }
    lab::nft_in(ns, &format!("delete table {family} {table}\n{edited}"))
        .map_err(|e| e.to_string())?;
    Ok(Undo::Nft(family.into(), table.into(), text))
}

fn nft_cmd(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = integration::nsexec::command_in(ns, "nft", integration::nsexec::Enter::NetOnly)
        .and_then(|mut c| c.args(args).output())
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// How to take a change back.
enum Undo {
    /// `ip` commands, in order.
    Ip(Vec<Vec<String>>),
    Sysctl(String, String),
    /// (family, table, the table's `nft list` text before the change).
    Nft(String, String, String),
    /// Not undone in place (a deletion; a link set down loses its routes).
    Fresh,
}

fn undo(ns: &str, u: Undo) -> Result<(), String> {
    match u {
        Undo::Ip(cmds) => cmds.iter().try_for_each(|c| ip(ns, c)),
        Undo::Sysctl(key, value) => lab::in_netns(ns, move || cni::netns::sysctl_set(&key, &value))
            .map_err(|e| e.to_string()),
        Undo::Nft(f, t, text) => lab::nft_in(ns, &format!("delete table {f} {t}\n{text}"))
            .map(drop)
            .map_err(|e| e.to_string()),
        Undo::Fresh => Err("not undone in place".into()),
    }
}

/// Apply `change` to `item` in netns `ns`; how to take it back.
fn apply(ns: &str, item: &Item, change: &Change) -> Result<Undo, String> {
    let r = &item.raw;
    let run = |cmds: &[Vec<String>]| cmds.iter().try_for_each(|c| ip(ns, c));
    match (item.kind, change) {
        (Kind::Link, c) => {
            let name = r["ifname"].as_str().unwrap_or("?");
            let set = |what: &str, old: String| -> Result<Undo, String> {
                ip(ns, &words(&format!("link set {name} {what}")))?;
                let key = what.split(' ').next().unwrap_or_default();
                Ok(Undo::Ip(vec![words(&format!(
                    "link set {name} {key} {old}"
                ))]))
            };
            match c {
                Change::Delete => ip(ns, &words(&format!("link del {name}"))).map(|_| Undo::Fresh),
                Change::Down => {
                    ip(ns, &words(&format!("link set {name} down"))).map(|_| Undo::Fresh)
                }
                Change::Mtu => {
                    let mtu = r["mtu"].as_u64().unwrap_or(1500);
                    set(&format!("mtu {}", mtu - 100), mtu.to_string())
                }
                Change::Mac => set(
                    &format!("address {OTHER_MAC}"),
                    r["address"].as_str().unwrap_or("?").into(),
                ),
                Change::TxqLen => set("txqueuelen 777", r["txqlen"].to_string()),
                _ => Err(format!("{c:?} of a link")),
            }
        }
        (Kind::Rule, Change::Delete) => ip(
            ns,
            &rule_args(r, "del", &str_of(&r["table"]).unwrap_or_default()),
        )
        .map(|_| Undo::Fresh),
        (Kind::Rule, Change::RuleTable) => {
            let table = str_of(&r["table"]).unwrap_or_default();
            run(&[
                rule_args(r, "del", &table),
                rule_args(r, "add", OTHER_TABLE),
            ])?;
            Ok(Undo::Ip(vec![
                rule_args(r, "del", OTHER_TABLE),
                rule_args(r, "add", &table),
            ]))
        }
        (Kind::Route, Change::Delete) => {
            ip(ns, &route_args(r, "del", None, None)).map(|_| Undo::Fresh)
        }
        (Kind::Route, Change::Metric) => {
            let m = r["metric"].as_u64().unwrap_or(0) + 7;
            run(&[
                route_args(r, "del", None, None),
                route_args(r, "add", Some(m), None),
            ])?;
            Ok(Undo::Ip(vec![
                route_args(r, "del", Some(m), None),
                route_args(r, "add", None, None),
            ]))
        }
        (Kind::Route, Change::Src) => {
            let fam = r["family"].as_str().unwrap_or("inet");
            let now = str_of(&r["prefsrc"]);
            let other = local_addrs(ns, fam)
                .into_iter()
                .find(|a| Some(a) != now.as_ref());
            let src = match (now, other) {
                (_, Some(o)) => Some(o),
                (Some(_), None) => None,
                (None, None) => return Err("no local address to use as src".into()),
            };
            run(&[
                route_args(r, "del", None, None),
                route_args(r, "add", None, Some(src.clone())),
            ])?;
            Ok(Undo::Ip(vec![
                route_args(r, "del", None, Some(src)),
                route_args(r, "add", None, None),
            ]))
        }
        (Kind::Route, Change::BackToMain) => {
            // `append`: the NIC's main plugin added it beside another default
            // of the same metric (ECMP-style), which `add` refuses. A
            // multipath route goes back nexthop by nexthop.
            let hops = r["nexthops"].as_array().cloned().unwrap_or_default();
            if hops.is_empty() {
                ip(ns, &route_args(r, "append", None, None))?;
                return Ok(Undo::Ip(vec![route_args(r, "del", None, None)]));
            }
            let now = Snapshot::capture(ns).map_err(|e| e.to_string())?;
            let mut undo = Vec::new();
            for h in hops {
                let mut one = r.clone();
                one.as_object_mut().unwrap().remove("nexthops");
                one["gateway"] = h["gateway"].clone();
                one["dev"] = h["dev"].clone();
                let present = now.items.values().any(|i| {
                    i.kind == Kind::Route
                        && i.raw["table"] == "main"
                        && i.raw["dst"] == r["dst"]
                        && i.raw["family"] == r["family"]
                        && (i.raw["dev"] == h["dev"]
                            || i.raw["nexthops"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .any(|x| x["dev"] == h["dev"]))
                });
                if !present {
                    ip(ns, &route_args(&one, "append", None, None))?;
                    undo.push(route_args(&one, "del", None, None));
                }
            }
            match undo.is_empty() {
                true => Err("every nexthop is still in main".into()),
                false => Ok(Undo::Ip(undo)),
            }
        }
        (Kind::Neigh, c) => {
            let (dst, dev) = (
                r["dst"].as_str().unwrap_or("?"),
                r["dev"].as_str().unwrap_or("?"),
            );
            match c {
                Change::Delete => {
                    ip(ns, &words(&format!("neigh del {dst} dev {dev}"))).map(|_| Undo::Fresh)
                }
                Change::NeighMac => {
                    let set = |mac: &str| {
                        words(&format!(
                            "neigh replace {dst} dev {dev} lladdr {mac} nud permanent"
                        ))
                    };
                    ip(ns, &set(OTHER_MAC))?;
                    Ok(Undo::Ip(vec![set(r["lladdr"].as_str().unwrap_or("?"))]))
                }
                _ => Err(format!("{c:?} of a neighbour")),
            }
        }
        (Kind::Sysctl, Change::Sysctl) => {
            let key = item.key.trim_start_matches("sysctl ").to_string();
            let value = other_sysctl(&key, &item.attrs).to_string();
            let k = key.clone();
            lab::in_netns(ns, move || cni::netns::sysctl_set(&k, &value))
                .map_err(|e| e.to_string())?;
            Ok(Undo::Sysctl(key, item.attrs.clone()))
        }
        (Kind::NftTable, Change::Delete) => {
            let (f, t) = (
                r["family"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("?"),
            );
            lab::nft_in(ns, &format!("delete table {f} {t}\n"))
                .map(|_| Undo::Fresh)
                .map_err(|e| e.to_string())
        }
        (Kind::NftChain, c) => {
            let (f, t, name) = (
                r["family"].as_str().unwrap_or("?"),
                r["table"].as_str().unwrap_or("?"),
                r["name"].as_str().unwrap_or("?"),
            );
            if *c == Change::Delete {
                let script = format!("flush chain {f} {t} {name}\ndelete chain {f} {t} {name}\n");
                return lab::nft_in(ns, &script)
                    .map(|_| Undo::Fresh)
                    .map_err(|e| e.to_string());
            }
            let c = c.clone();
            nft_rewrite(ns, f, t, |text| edit_chain_header(text, name, &c))
        }
        (Kind::NftRule, c) => {
            let (f, t, chain) = (
                r["family"].as_str().unwrap_or("?"),
                r["table"].as_str().unwrap_or("?"),
                r["chain"].as_str().unwrap_or("?"),
            );
            let handle = r["handle"].as_u64().ok_or("rule without handle")?;
            if *c == Change::Delete {
                let script = format!("delete rule {f} {t} {chain} handle {handle}\n");
                return lab::nft_in(ns, &script)
                    .map(|_| Undo::Fresh)
                    .map_err(|e| e.to_string());
            }
            let c = c.clone();
            nft_rewrite(ns, f, t, |text| edit_rule(text, handle, &c))
        }
        (k, c) => Err(format!("no way to {c:?} a {k:?}")),
    }
}

/// The `type ... priority ...; policy ...;` line of chain `name`, edited.
fn edit_chain_header(text: &str, name: &str, c: &Change) -> String {
    let mut out = Vec::new();
    let mut in_chain = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with(&format!("chain {name} ")) {
            in_chain = true;
        } else if in_chain && t.starts_with("type ") {
            in_chain = false;
            let edited = match c {
                Change::NftPriority => {
                    let at = line.find("priority ").unwrap_or(line.len());
                    let end = line[at..].find(';').map(|e| at + e).unwrap_or(line.len());
                    format!("{}priority 10{}", &line[..at], &line[end..])
                }
                _ => line.replace("policy accept;", "policy drop;"),
            };
            out.push(edited);
            continue;
        }
        out.push(line.to_string());
    }
    out.join("\n") + "\n"
}

/// The rule line of `handle` with its mark values or its `iifname` changed.
fn edit_rule(text: &str, handle: u64, c: &Change) -> String {
    let tag = format!("# handle {handle}");
    let mut out = Vec::new();
    for line in text.lines() {
        if !line.trim_end().ends_with(&tag) {
            out.push(line.to_string());
            continue;
        }
        let edited = match c {
            Change::NftIif => {
                let at = line.find("iifname \"").map(|a| a + 9);
                match at.and_then(|a| line[a..].find('"').map(|e| (a, a + e))) {
                    Some((a, e)) => format!("{}brk0{}", &line[..a], &line[e..]),
                    None => line.to_string(),
                }
            }
            _ => line
                .split(' ')
                .map(|w| match w.starts_with("0x") {
                    true => "0x00000bad".to_string(),
                    false => w.to_string(),
                })
                .collect::<Vec<_>>()
                .join(" "),
        };
        out.push(edited);
    }
    out.join("\n") + "\n"
}

// ------------------------------------------------------------------ verdicts

/// The coordinator's CHECK of each NIC up to the first that fails with
/// CHECK_FAILED: (ifname, code, message) of each failure; code 0 for a
/// failure without one.
fn check_all(a: &Attached) -> Vec<(String, u32, String)> {
    let mut out = Vec::new();
    for nic in &a.nics {
        let res = nic.ours.check(&nic.att);
        tally(&res, |o: &Outcome| &o.runs);
        if let Err(e) = res {
            out.push((nic.att.ifname.clone(), e.code, e.msg.clone()));
            // One NIC's CHECK_FAILED is the verdict; the rest would cost execs.
            if e.code == CHECK_FAILED {
                break;
            }
        }
    }
    out
}

fn verdict_text(fails: &[(String, u32, String)]) -> (bool, String) {
    let caught: Vec<&String> = fails
        .iter()
        .filter(|f| f.1 == CHECK_FAILED)
        .map(|f| &f.0)
        .collect();
    if !caught.is_empty() {
        let names: Vec<&str> = caught.iter().map(|s| s.as_str()).collect();
        return (true, format!("caught ({})", names.join(",")));
    }
    match fails.first() {
        Some((nic, code, msg)) => (
            false,
            format!("missed; {nic} failed {code}: {}", short(msg)),
        ),
        None => (false, "missed".into()),
    }
}

fn short(s: &str) -> String {
    let s = s.replace('\n', " ");
    match s.char_indices().nth(90) {
        Some((at, _)) => format!("{}...", &s[..at]),
        None => s,
    }
}

/// The runtime's DEL of every NIC, last first; then what differs from the
/// pre-ADD snapshots (the node's shared `from all lookup 500` rules aside),
/// `from <ip>` rules left in the pod, and a left record directory.
fn del_all(w: &Worker, a: &Attached) -> Vec<String> {
    let mut out = Vec::new();
    for nic in a.nics.iter().rev() {
        let res = nic.full.del(&nic.att);
        tally(&res, |o: &Outcome| &o.runs);
        if let Err(e) = res {
            out.push(format!("DEL {}: {e}", nic.att.ifname));
        }
    }
    let now = match w.capture(&a.pod.name) {
        Ok(n) => n,
        Err(e) => return vec![e],
    };
    *w.node_now.lock().unwrap() = Some(now[1].clone());
    let shared =
        |i: &Item| !(i.kind == Kind::Rule && i.raw["src"] == "all" && i.raw["table"] == "500");
    for (side, name) in [(0, "pod"), (1, "node")] {
        let d = a.pre[side].filter(shared).diff(&now[side].filter(shared));
        if !d.is_empty() {
            let lines: Vec<String> = d.lines().iter().map(|l| normalize(l, &a.subst)).collect();
            out.push(format!("{name}: {}", lines.join("; ")));
        }
    }
    let from_rules: Vec<String> = now[0]
        .items
        .values()
        .filter(|i| i.kind == Kind::Rule && i.raw["src"] != "all" && i.raw["src"].is_string())
        .map(|i| normalize(&i.key, &a.subst))
        .collect();
    if !from_rules.is_empty() {
        out.push(format!("`from <ip>` rules left in the pod: {from_rules:?}"));
    }
    let record = Path::new(RECORDS).join(&a.cid);
    if record.exists() {
        out.push(format!("record left: {}", record.display()));
    }
    out
}

/// Put the node's policy rules back as they were before the pod (a
/// breakage of a shared rule must not reach the next pod).
fn repair_node_rules(w: &Worker, pre: &Snapshot) -> Result<(), String> {
    let node = w.lab.node();
    w.node_now.lock().unwrap().take();
    let now = Snapshot::capture(node).map_err(|e| e.to_string())?;
    let rules = |s: &Snapshot| s.filter(|i| i.kind == Kind::Rule);
    let d = rules(pre).diff(&rules(&now));
    for extra in &d.added {
        ip(
            node,
            &rule_args(
                &extra.raw,
                "del",
                &str_of(&extra.raw["table"]).unwrap_or_default(),
            ),
        )?;
    }
    for gone in &d.removed {
        ip(
            node,
            &rule_args(
                &gone.raw,
                "add",
                &str_of(&gone.raw["table"]).unwrap_or_default(),
            ),
        )?;
    }
    Ok(())
}

// ------------------------------------------------------------------ runs

/// Wall time spent per phase over all jobs (printed with the table).
static PHASES: Mutex<BTreeMap<&'static str, Duration>> = Mutex::new(BTreeMap::new());

/// How change batches went: undone in place, or the pod replaced.
static COUNTS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());

fn bump(what: String) {
    if let Ok(mut c) = COUNTS.lock() {
        *c.entry(what).or_default() += 1;
    }
}

/// What the enumerating pods showed (printed with the table).
static INFO: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// CPU of the plugin processes, by plugin and verb.
static PLUGIN_CPU: Mutex<BTreeMap<String, (usize, Duration)>> = Mutex::new(BTreeMap::new());

fn tally<T>(res: &integration::chain::ChainResult<T>, runs: impl Fn(&T) -> &[PluginRun]) {
    let runs: &[PluginRun] = match res {
        Ok(o) => runs(o),
        Err(e) => &e.runs,
    };
    if let Ok(mut m) = PLUGIN_CPU.lock() {
        for r in runs {
            let e = m
                .entry(format!("{} {}", r.plugin, r.verb.as_str()))
                .or_default();
            e.0 += 1;
            e.1 += r.cpu;
        }
    }
}

fn timed<T>(phase: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    if let Ok(mut p) = PHASES.lock() {
        *p.entry(phase).or_default() += t.elapsed();
    }
    out
}

/// One row of the table.
#[derive(Clone, Debug)]
struct Row {
    layout: Layout,
    piece: String,
    change: String,
    note: &'static str,
    caught: Option<bool>,
    check: String,
    /// DEL with the piece gone: None for changes.
    del: Option<Vec<String>>,
}

/// Work for one lab at a time: a deletion on its own fresh pod (then the
/// DEL is judged), or changes of one layout tried one after another on a
/// pod, each undone and the whole kernel proven as attached before the next
/// (a pod that cannot be proven so is replaced by a fresh one).
#[derive(Clone, Debug)]
enum Batch {
    Delete(Job),
    Changes(Vec<Job>),
}

impl Batch {
    fn jobs(&self) -> Vec<&Job> {
        match self {
            Batch::Delete(j) => vec![j],
            Batch::Changes(js) => js.iter().collect(),
        }
    }
}

fn row_of(job: &Job) -> Row {
    Row {
        layout: job.layout,
        piece: job.label(),
        change: job.change.name().into(),
        note: job.note,
        caught: None,
        check: String::new(),
        del: None,
    }
}

/// The item `job` names in pod `a` (placeholders replaced by its values).
fn find(job: &Job, a: &Attached) -> Option<Item> {
    match &job.moved {
        Some(Value::String(raw)) => serde_json::from_str::<Value>(&denormalize(raw, &a.subst))
            .ok()
            .map(|raw| Item {
                kind: Kind::Route,
                key: job.key.clone(),
                attrs: String::new(),
                raw,
            }),
        _ => a.post[job.side.index()]
            .items
            .values()
            .find(|i| normalize(&i.key, &a.subst) == job.key)
            .cloned(),
    }
}

fn side_ns(w: &Worker, a: &Attached, side: Side) -> String {
    match side {
        Side::Pod => a.pod.name.clone(),
        Side::Node => w.lab.node().to_string(),
    }
}

/// Break `job`'s piece in `a`, prove the kernel changed, CHECK every NIC:
/// the row and how to undo the change.
fn break_and_check(w: &Worker, job: &Job, a: &Attached) -> (Row, Option<Undo>) {
    let mut row = row_of(job);
    let ns = side_ns(w, a, job.side);
    let Some(item) = find(job, a) else {
        row.check = "ERROR break: the piece is not in this pod".into();
        return (row, None);
    };
    let u = match timed("break", || apply(&ns, &item, &job.change)) {
        Ok(u) => u,
        Err(e) => {
            row.check = format!("ERROR break: {e}");
            return (row, None);
        }
    };
    let s = job.side.index();
    // A deletion proves itself: `ip ... del`, `nft delete` fail when
    // nothing matches. A change is proven by the kernel differing.
    let changed = match job.change {
        Change::Delete => Ok(None),
        _ => timed("snapshot", || Snapshot::capture(&ns)).map(Some),
    };
    match changed {
        Ok(now)
            if now
                .as_ref()
                .is_none_or(|now| now.lines() != a.post[s].lines()) =>
        {
            let (caught, text) = verdict_text(&timed("check", || check_all(a)));
            row.caught = Some(caught);
            row.check = text;
        }
        Ok(_) => row.check = "ERROR break: the change left the kernel as it was".into(),
        Err(e) => row.check = format!("ERROR snapshot: {e}"),
    }
    (row, Some(u))
}

/// The runtime's DEL of pod `a` (what it left), the node's rules put back
/// when `node_rules`, and its netns removed.
fn teardown(w: &Worker, a: Attached, node_rules: bool) -> (Vec<String>, Option<String>) {
    let left = timed("del", || del_all(w, &a));
    let repaired = match node_rules {
        true => timed("repair", || repair_node_rules(w, &a.pre[1])).err(),
        false => None,
    };
    w.lab.remove_netns(&a.pod.name).ok();
    (left, repaired)
}

fn run_batch(w: &Worker, batch: &Batch, n: usize) -> Vec<Row> {
    match batch {
        Batch::Delete(job) => {
            let a = match timed("attach", || {
                attach(
                    w,
                    job.layout,
                    &format!("j{n}"),
                    false,
                    job.side == Side::Node,
                )
            }) {
                Ok(a) => a,
                Err(e) => {
                    let mut row = row_of(job);
                    row.check = format!("ERROR attach: {e}");
                    return vec![row];
                }
            };
            let (mut row, _) = break_and_check(w, job, &a);
            let node_rule = job.side == Side::Node && job.key.starts_with("rule ");
            let (left, repaired) = teardown(w, a, node_rule);
            row.del = Some(left);
            if let Some(e) = repaired {
                row.check
                    .push_str(&format!(" (ERROR repairing node rules: {e})"));
            }
            vec![row]
        }
        Batch::Changes(jobs) => {
            let mut rows = Vec::new();
            let mut pod: Option<Attached> = None;
            for (k, job) in jobs.iter().enumerate() {
                if pod.is_none() {
                    match timed("attach", || {
                        attach(w, job.layout, &format!("c{n}x{k}"), false, true)
                    }) {
                        Ok(a) => pod = Some(a),
                        Err(e) => {
                            let mut row = row_of(job);
                            row.check = format!("ERROR attach: {e}");
                            rows.push(row);
                            continue;
                        }
                    }
                }
                let a = pod.as_ref().expect("attached above");
                let (mut row, u) = break_and_check(w, job, a);
                let ns = side_ns(w, a, job.side);
                let restored = match u {
                    Some(Undo::Fresh) | None => false,
                    // Only the changed netns can differ: nothing else ran but CHECK.
                    Some(u) => {
                        timed("undo", || undo(&ns, u)).is_ok()
                            && timed("snapshot", || Snapshot::capture(&ns))
                                .is_ok_and(|now| now.lines() == a.post[job.side.index()].lines())
                    }
                };
                bump(match restored {
                    true => "undone in place".into(),
                    false => format!("pod replaced after {}", job.change.name()),
                });
                if !restored {
                    let a = pod.take().expect("attached above");
                    if let (_, Some(e)) = teardown(w, a, true) {
                        row.check
                            .push_str(&format!(" (ERROR repairing node rules: {e})"));
                    }
                }
                rows.push(row);
            }
            if let Some(a) = pod {
                teardown(w, a, false);
            }
            rows
        }
    }
}

/// Deletions one by one; each layout's changes in `chunks` batches.
fn batches(jobs: Vec<Job>, chunks: usize) -> Vec<Batch> {
    let (dels, changes): (Vec<Job>, Vec<Job>) =
        jobs.into_iter().partition(|j| j.change == Change::Delete);
    let per = changes.len().div_ceil(chunks.max(1)).max(1);
    let mut out: Vec<Batch> = changes
        .chunks(per)
        .map(|c| Batch::Changes(c.to_vec()))
        .collect();
    out.extend(dels.into_iter().map(Batch::Delete));
    out
}

/// The enumerating pod of `layout`: traffic, CHECK intact, the jobs, DEL.
/// Failures go to `f`.
fn enumerate(w: &Worker, layout: Layout, f: &mut Vec<String>) -> Vec<Job> {
    let a = match attach(w, layout, "enum", true, true) {
        Ok(a) => a,
        Err(e) => {
            f.push(format!("[{}] attach: {e}", layout.name()));
            return Vec::new();
        }
    };
    let failed = f.len();
    let tried = traffic(w, layout, &a, f);
    let fails = check_all(&a);
    if !fails.is_empty() {
        f.push(format!(
            "[{}] CHECK of an intact pod failed: {fails:?}",
            layout.name()
        ));
    }
    let jobs = jobs_of(layout, &a);
    INFO.lock().unwrap().push(format!(
        "[{}] intact pod: {} of {tried} TCP exchanges (node and subnet clients to every address) ok, \
         CHECK {}, {} breakages from the kernel diff around each coordinator ADD",
        layout.name(),
        tried - (f.len() - failed).min(tried),
        if fails.is_empty() { "passes" } else { "FAILS" },
        jobs.len()
    ));
    let left = del_all(w, &a);
    if !left.is_empty() {
        f.push(format!(
            "[{}] DEL of an intact pod left: {left:?}",
            layout.name()
        ));
    }
    if let Err(e) = repair_node_rules(w, &a.pre[1]) {
        f.push(format!("[{}] node rules: {e}", layout.name()));
    }
    w.lab.remove_netns(&a.pod.name).ok();
    jobs
}

/// The layout carries traffic: the node reaches every pod address (the
/// kubelet's probe), a client on each underlay NIC's subnet reaches that
/// NIC's addresses and is seen with its own address (the fabric drops
/// asymmetric replies).
/// Returns the number of exchanges tried.
fn traffic(w: &Worker, layout: Layout, a: &Attached, f: &mut Vec<String>) -> usize {
    let t = Duration::from_secs(5);
    let _srv = match TcpServer::start(
        &a.pod.name,
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), POD_PORT),
    ) {
        Ok(s) => s,
        Err(e) => {
            f.push(format!("[{}] pod server: {e}", layout.name()));
            return 0;
        }
    };
    let mut tried = 0;
    for (i, nic) in a.nics.iter().enumerate() {
        for &ip in &nic.ips {
            let dst = SocketAddr::new(ip, POD_PORT);
            tried += 1;
            if let Err(e) = tcp_request(w.lab.node(), None, dst, t) {
                f.push(format!(
                    "[{}] node -> {} {ip}: {e}",
                    layout.name(),
                    ifname(i)
                ));
            }
            let Main::Macvlan(s) = layout.nics()[i] else {
                continue;
            };
            let c = &w.clients[usize::from(s) - 1];
            let want: IpAddr = match ip {
                IpAddr::V4(_) => c.ipv4.unwrap().into(),
                IpAddr::V6(_) => c.ipv6.unwrap().into(),
            };
            tried += 1;
            match tcp_request(&c.name, None, dst, t).map(|r| reply_peer(&r).map(|p| p.ip())) {
                Ok(Some(seen)) if seen == want => {}
                other => f.push(format!(
                    "[{}] client on subnet {s} -> {} {ip}: {other:?}",
                    layout.name(),
                    ifname(i)
                )),
            }
        }
    }
    tried
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let wp = rows
        .iter()
        .map(|r| r.piece.len())
        .max()
        .unwrap_or(10)
        .min(110);
    out.push_str(&format!(
        "{:<19} | {:<wp$} | {:<14} | {:<40} | DEL with the piece gone\n",
        "layout", "piece", "change", "coordinator CHECK"
    ));
    for r in rows {
        let del = match &r.del {
            None => "-".to_string(),
            Some(l) if l.is_empty() => "clean".to_string(),
            Some(l) => format!("LEFT {}", l.join(" | ")),
        };
        let check = if r.note.is_empty() {
            r.check.clone()
        } else {
            format!("{} [{}]", r.check, r.note)
        };
        out.push_str(&format!(
            "{:<19} | {:<wp$} | {:<14} | {:<40} | {del}\n",
            r.layout.name(),
            r.piece,
            r.change,
            check
        ));
    }
    out.push('\n');
    let mut by: BTreeMap<Layout, (usize, usize, usize, usize, usize)> = BTreeMap::new();
    for r in rows {
        let e = by.entry(r.layout).or_default();
        e.1 += 1;
        if r.caught == Some(true) {
            e.0 += 1;
        }
        if let Some(d) = &r.del {
            e.3 += 1;
            if d.is_empty() {
                e.2 += 1;
            }
            if d.iter().all(|l| l == RP_FILTER_LEFT) {
                e.4 += 1;
            }
        }
    }
    let (mut c, mut t, mut dc, mut dt, mut dr) = (0, 0, 0, 0, 0);
    for (l, (caught, total, clean, dels, rp)) in &by {
        out.push_str(&format!(
            "{:<19}: CHECK caught {caught}/{total} ({:.0} %); DEL clean {clean}/{dels}, \
             clean but for the pod's all/rp_filter {rp}/{dels}\n",
            l.name(),
            pct(*caught, *total)
        ));
        (c, t, dc, dt, dr) = (c + caught, t + total, dc + clean, dt + dels, dr + rp);
    }
    out.push_str(&format!(
        "{:<19}: CHECK caught {c}/{t} ({:.0} %); DEL clean {dc}/{dt}, \
         clean but for the pod's all/rp_filter {dr}/{dt}\n",
        "all",
        pct(c, t)
    ));
    out.push('\n');
    out.push_str(&summary(rows));
    out
}

fn category(r: &Row) -> String {
    let w: Vec<&str> = r.piece.split_whitespace().collect();
    let (side, kind) = (
        w.first().copied().unwrap_or("?"),
        w.get(1).copied().unwrap_or("?"),
    );
    match kind {
        "link" => format!("{side} link {}", w.get(2).unwrap_or(&"?")),
        "nft" => format!("{side} nft {}", w.get(2).unwrap_or(&"?")),
        "sysctl" => {
            let path: Vec<&str> = w.get(2).unwrap_or(&"?").split('/').collect();
            let dev = path.get(3).copied().unwrap_or("?");
            let dev = match dev {
                "all" | "veth0" | "<hveth>" => dev,
                _ => "<NIC>",
            };
            format!("{side} sysctl {dev}/{}", path.last().unwrap_or(&"?"))
        }
        "route" if !r.note.is_empty() && r.note != "written" => {
            format!("{side} route ({})", r.note)
        }
        "route" => format!("{side} route"),
        other => format!("{side} {other}"),
    }
}

/// caught/total per (kind of piece, change) and layout.
fn summary(rows: &[Row]) -> String {
    let mut by: BTreeMap<(String, String), BTreeMap<Layout, (usize, usize)>> = BTreeMap::new();
    for r in rows {
        let e = by
            .entry((category(r), r.change.clone()))
            .or_default()
            .entry(r.layout)
            .or_default();
        e.1 += 1;
        if r.caught == Some(true) {
            e.0 += 1;
        }
    }
    let mut out = format!("{:<44} | {:<14} |", "piece", "change");
    for l in Layout::ALL {
        out.push_str(&format!(" {:<8} |", &l.name()[..1]));
    }
    out.push('\n');
    for ((cat, change), per) in &by {
        out.push_str(&format!("{cat:<44} | {change:<14} |"));
        for l in Layout::ALL {
            let cell = per
                .get(&l)
                .map(|(c, t)| format!("{c}/{t}"))
                .unwrap_or("-".into());
            out.push_str(&format!(" {cell:<8} |"));
        }
        out.push('\n');
    }
    out
}

fn pct(a: usize, b: usize) -> f64 {
    match b {
        0 => 0.0,
        _ => 100.0 * a as f64 / b as f64,
    }
}

#[test]
fn check_catches_every_broken_piece_and_del_leaves_nothing() {
    let report_only = std::env::var_os(REPORT_ENV).is_some_and(|v| v == "1");
    let started = Instant::now();
    let queue: Mutex<VecDeque<(usize, Batch)>> = Mutex::new(VecDeque::new());
    let rows: Mutex<Vec<Row>> = Mutex::new(Vec::new());
    let setup: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let barrier = Barrier::new(LABS);
    let only = std::env::var("CHECK_BREAKAGE_LAYOUT").unwrap_or_default();
    std::thread::scope(|s| {
        for k in 0..LABS {
            let (queue, rows, setup, barrier, only) = (&queue, &rows, &setup, &barrier, &only);
            s.spawn(move || {
                // A panic before the barrier would leave the others waiting.
                let ready = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let w = Worker::new();
                    let layout = Layout::ALL
                        .get(k)
                        .filter(|l| only.is_empty() || l.name().starts_with(only.as_str()));
                    if let Some(&layout) = layout {
                        let mut f = Vec::new();
                        let jobs = timed("enumerate", || enumerate(&w, layout, &mut f));
                        if jobs.is_empty() {
                            f.push(format!("[{}] no pieces found", layout.name()));
                        }
                        setup.lock().unwrap().extend(f);
                        let mut q = queue.lock().unwrap();
                        let base = k * 10_000;
                        q.extend(
                            batches(jobs, LABS)
                                .into_iter()
                                .enumerate()
                                .map(|(i, b)| (base + i, b)),
                        );
                    }
                    w
                }));
                barrier.wait();
                let Ok(w) = ready else {
                    setup.lock().unwrap().push(format!(
                        "lab {k}: panicked while building or enumerating (see above)"
                    ));
                    return;
                };
                loop {
                    let Some((n, batch)) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_batch(&w, &batch, n)
                    }))
                    .unwrap_or_else(|_| {
                        let mut r: Vec<Row> = batch.jobs().into_iter().map(row_of).collect();
                        r.iter_mut()
                            .for_each(|r| r.check = "ERROR: panicked (see above)".into());
                        r
                    });
                    rows.lock().unwrap().extend(out);
                }
            });
        }
    });
    let mut rows = rows.into_inner().unwrap();
    rows.sort_by(|a, b| (a.layout, &a.piece, &a.change).cmp(&(b.layout, &b.piece, &b.change)));
    let setup = setup.into_inner().unwrap();
    // Straight to stderr: the harness captures eprintln! of a passing test.
    let mut text = table(&rows);
    text.push_str(&format!(
        "{} breakages in {:.1} s\n",
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    text.push_str(&format!(
        "wall per phase over all labs: {:?}\n",
        PHASES.lock().unwrap()
    ));
    text.push_str(&format!(
        "plugin runs and CPU: {:?}\n",
        PLUGIN_CPU.lock().unwrap()
    ));
    text.push_str(&format!("changes: {:?}\n", COUNTS.lock().unwrap()));
    for i in INFO.lock().unwrap().iter() {
        text.push_str(&format!("{i}\n"));
    }
    for s in &setup {
        text.push_str(&format!("SETUP: {s}\n"));
    }
    std::io::Write::write_all(&mut std::io::stderr(), text.as_bytes()).ok();
    if report_only {
        return;
    }
    let mut failures: Vec<String> = setup;
    let pieces: BTreeSet<&str> = rows.iter().map(|r| r.piece.as_str()).collect();
    for r in &rows {
        let what = format!("[{}] {} / {}", r.layout.name(), r.piece, r.change);
        match r.caught {
            Some(true) => {}
            Some(false) => failures.push(format!("{what}: CHECK {}", r.check)),
            None => failures.push(format!("{what}: {}", r.check)),
        }
        if let Some(left) = r.del.as_ref().filter(|l| !l.is_empty()) {
            failures.push(format!("{what}: DEL left {}", left.join(" | ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} breakages of {} pieces:\n{}",
        failures.len(),
        rows.len(),
        pieces.len(),
        failures.join("\n")
    );
}

/// The text helpers the table and the breakages rely on (no root).
#[test]
fn placeholders_and_nft_edits() {
    let subst = vec![
        ("10.6.20.1".to_string(), "<eth0.v4>".to_string()),
        ("veth0123456789a".to_string(), "<hveth>".to_string()),
    ];
    let line = "10.6.20.1 dev veth0123456789a src 10.6.20.10 via 110.6.20.1";
    let n = normalize(line, &subst);
    assert_eq!(n, "<eth0.v4> dev <hveth> src 10.6.20.10 via 110.6.20.1");
    assert_eq!(denormalize(&n, &subst), line);
    let table = "table inet coordinator { # handle 7\n\
                 \tchain prerouting { # handle 1\n\
                 \t\ttype filter hook prerouting priority mangle; policy accept;\n\
                 \t\tiifname \"veth0\" ct state new ct mark set 0x0000c0de # handle 3\n\
                 \t}\n}\n";
    let prio = edit_chain_header(table, "prerouting", &Change::NftPriority);
    assert!(prio.contains("priority 10; policy accept;"), "{prio}");
    let drop = edit_chain_header(table, "prerouting", &Change::NftDropPolicy);
    assert!(drop.contains("priority mangle; policy drop;"), "{drop}");
    let iif = edit_rule(table, 3, &Change::NftIif);
    assert!(iif.contains("iifname \"brk0\" ct state new"), "{iif}");
    let mark = edit_rule(table, 3, &Change::NftMark);
    assert!(mark.contains("ct mark set 0x00000bad # handle 3"), "{mark}");
    assert_eq!(edit_rule(table, 9, &Change::NftMark), table);
    assert_eq!(other_sysctl("net/ipv4/conf/all/rp_filter", "1"), "2");
    assert_eq!(other_sysctl("net/ipv6/conf/veth0/accept_dad", "0"), "1");
}
