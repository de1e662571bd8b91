//! Operator commands, run when the binary is started without `CNI_COMMAND`.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni::{quarantine, Error, Result};
use serde_json::{json, Value};

use crate::allocator::{self, Record};
use crate::config::{Config, StoreConfig};
use crate::store::{self, file::FileStore, Store};

pub const HELP: &str = "\
coordinator-ipam: CNI IPAM plugin for underlay pods, and its operator tool.

As a CNI plugin it is run by the container runtime with CNI_COMMAND set and
the network configuration on stdin. Run by hand, it inspects and repairs the
allocation state on this node.

USAGE:
  coordinator-ipam list    [--data-dir DIR | --config FILE] [--network NAME] [--json]
      Every reserved address: network, address, pool, node, container,
      interface, sticky pod, and whether it is parked for a sticky pod.
  coordinator-ipam usage   --config FILE [--data-dir DIR] [--json | --textfile PATH]
      Per pool of the network in FILE: capacity, in use, parked, quarantined, free.
      --textfile writes them as gauges in node_exporter's textfile format to
      PATH (e.g. /var/lib/node_exporter/textfile/coordinator-ipam-NET.prom),
      replaced atomically, mode 0644, instead of printing them.
  coordinator-ipam release IP --network NAME [--data-dir DIR | --config FILE]
      Forget the reservation of IP (e.g. a pod deleted while the node was down).
      Only do this when nothing uses the address any more.
  coordinator-ipam install --cni-bin-dir DIR
      Copy this binary to DIR/coordinator-ipam (atomic, mode 0755; an
      unchanged file is left alone).
  coordinator-ipam reclaim --node NAME --config FILE [--network NAME] [--json]
      Free (or park, if sticky) every address held by attachments of NODE, a
      node that is gone, in every network of the store unless --network
      narrows it.
  coordinator-ipam migrate --data-dir DIR --config FILE [--network NAME]
      Copy this node's file store in DIR into the store of FILE (etcd), every
      network unless --network narrows it. Addresses already recorded
      identically are skipped; one recorded differently stops that network
      with nothing of it copied.
      With etcd, reclaim and migrate commit 16 records per transaction, each
      with its own timeout: a run that fails part way keeps what it
      committed, and running it again resumes with the rest.
  coordinator-ipam --help | --version

OPTIONS:
  --data-dir DIR   the file store directory (default: the config's
                   ipam.store.dataDir, else /var/lib/cni/coordinator-ipam)
  --config FILE    a network config (.conf/.json with an \"ipam\" block, or a
                   .conflist whose plugins include one with \"ipam\": {\"type\":
                   \"coordinator-ipam\", ...}); gives the pools, the network
                   name and the store (file dataDir, or etcd endpoints)
  --network NAME   the network (the \"name\" of the config); default with
                   --config: its name; for list: all networks
  --node NAME      the node whose records reclaim lets go of
  --json           machine-readable output

EXAMPLES:
  coordinator-ipam list --data-dir /var/lib/cni/coordinator-ipam
  coordinator-ipam usage --config /etc/cni/net.d/10-macvlan.conflist
  coordinator-ipam release 172.20.1.23 --network macvlan-net1
  coordinator-ipam reclaim --node worker-3 --config /etc/cni/net.d/10-macvlan.conflist

Exit status: 0 success, 1 failure, 2 bad command line.
";

#[derive(Debug, Default)]
struct Opts {
    positional: Vec<String>,
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    network: Option<String>,
    node: Option<String>,
    json: bool,
    textfile: Option<PathBuf>,
}

fn parse_opts(args: &[String]) -> std::result::Result<Opts, String> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().cloned().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--data-dir" => o.data_dir = Some(PathBuf::from(value("--data-dir")?)),
            "--config" => o.config = Some(PathBuf::from(value("--config")?)),
            "--network" => o.network = Some(value("--network")?),
            "--node" => o.node = Some(value("--node")?),
            "--json" => o.json = true,
            "--textfile" => o.textfile = Some(PathBuf::from(value("--textfile")?)),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => o.positional.push(s.to_string()),
        }
    }
    Ok(o)
}

/// A network config file: the network name and its coordinator-ipam block.
fn load_config_file(path: &Path) -> Result<(String, Config)> {
    // Bounded like a config on stdin; a FIFO or device fails at once.
    let text = cni::fsutil::read_optional(path, cni::config::MAX_STDIN as u64)?
        .ok_or_else(|| Error::Io(format!("cannot read {}: no such file", path.display())))?;
    let v: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::Decode(format!("{}: not valid JSON: {e}", path.display())))?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::config("name", format!("missing in {}", path.display())))?
        .to_string();
    let is_ours =
        |ipam: &&Value| ipam.get("type").and_then(Value::as_str) == Some("coordinator-ipam");
    let from_plugins = v
        .get("plugins")
        .and_then(Value::as_array)
        .and_then(|ps| ps.iter().filter_map(|p| p.get("ipam")).find(is_ours));
    let ipam = from_plugins
        .or_else(|| v.get("ipam").filter(is_ours))
        .ok_or_else(|| {
            Error::config(
                "ipam",
                format!(
                    "{} has no ipam block of type coordinator-ipam",
                    path.display()
                ),
            )
        })?;
    // The node name does not matter to an operator looking at all pools.
    let cfg = Config::parse(ipam, || Some("-".into())).map_err(|e| e.context(path.display()))?;
    Ok((name, cfg))
}

struct Target {
    store: Box<dyn Store>,
    network: Option<String>,
    config: Option<Config>,
}

fn target(o: &Opts) -> Result<Target> {
    let (cfg_name, config) = match &o.config {
        Some(p) => {
            let (n, c) = load_config_file(p)?;
            (Some(n), Some(c))
        }
        None => (None, None),
    };
    let store: Box<dyn Store> = match (&o.data_dir, &config) {
        (Some(d), _) => Box::new(FileStore::new(d.clone())),
        (None, Some(c)) => store::open(&c.store)?,
        (None, None) => Box::new(FileStore::new(PathBuf::from(
            crate::config::DEFAULT_DATA_DIR,
        ))),
    };
    Ok(Target {
        store,
        network: o.network.clone().or(cfg_name),
        config,
    })
}

fn record_json(network: &str, r: &Record) -> Value {
    json!({
        "network": network,
        "ip": r.ip.to_string(),
        "pool": r.pool,
        "node": r.node,
        "containerId": r.owner.as_ref().map(|o| o.container_id.clone()),
        "ifname": r.owner.as_ref().map(|o| o.ifname.clone()).or_else(|| r.sticky.as_ref().map(|s| s.ifname.clone())),
        "sticky": r.sticky.as_ref().map(|s| format!("{}/{}", s.namespace, s.pod)),
        "parked": r.parked(),
    })
}

/// At most `n` characters of `s` (the column is that wide): cut at a
/// character boundary, so a container ID with a multi-byte character
/// across the cut cannot panic the listing.
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((end, _)) => &s[..end],
        None => s,
    }
}

fn list(o: &Opts, out: &mut dyn Write) -> Result<()> {
    let t = target(o)?;
    let networks = match &t.network {
        Some(n) => vec![n.clone()],
        None => t.store.networks()?,
    };
    let mut rows = Vec::new();
    for n in &networks {
        for r in &t.store.load(n)?.records {
            rows.push(record_json(n, r));
        }
    }
    if o.json {
        writeln!(out, "{}", Value::Array(rows))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<28} {:<14} {:<14} {:<16} {:<8} {:<20} STATE",
        "NETWORK", "IP", "POOL", "NODE", "CONTAINER", "IFNAME", "STICKY"
    )?;
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    for r in &rows {
        let cid = s(&r["containerId"]);
        let cid = first_chars(&cid, 16);
        writeln!(
            out,
            "{:<20} {:<28} {:<14} {:<14} {:<16} {:<8} {:<20} {}",
            s(&r["network"]),
            s(&r["ip"]),
            s(&r["pool"]),
            s(&r["node"]),
            cid,
            s(&r["ifname"]),
            s(&r["sticky"]),
            if r["parked"] == true {
                "parked"
            } else {
                "in-use"
            }
        )?;
    }
    Ok(())
}

fn usage(o: &Opts, out: &mut dyn Write) -> Result<()> {
    let t = target(o)?;
    let cfg = t.config.as_ref().ok_or_else(|| {
        Error::InvalidEnv("usage needs --config FILE (it gives the pools)".into())
    })?;
    let network = t.network.clone().unwrap_or_default();
    let state = t.store.load(&network)?;
    let quarantined = quarantine::load_active(&cfg.quarantine_file)?;
    let rows = allocator::usage(&state, cfg, &quarantined);
    if let Some(path) = &o.textfile {
        return write_textfile(path, &crate::metrics::textfile(&network, &rows));
    }
    if o.json {
        writeln!(out, "{}", serde_json::to_string(&rows)?)?;
        return Ok(());
    }
    writeln!(out, "network {network}")?;
    writeln!(
        out,
        "{:<16} {:<24} {:>22} {:>8} {:>8} {:>12} {:>22}",
        "POOL", "SUBNET", "CAPACITY", "IN-USE", "PARKED", "QUARANTINED", "FREE"
    )?;
    for u in rows {
        writeln!(
            out,
            "{:<16} {:<24} {:>22} {:>8} {:>8} {:>12} {:>22}",
            u.name, u.subnet, u.capacity, u.in_use, u.parked, u.quarantined, u.free
        )?;
    }
    Ok(())
}

/// Replaces `path` atomically, so the collector never reads half a file; a
/// lock beside it (a dot file, which the collector skips) serialises two
/// runs, e.g. a timer and an operator.
fn write_textfile(path: &Path, text: &str) -> Result<()> {
    let bad = || Error::InvalidEnv(format!("--textfile {} is not a file path", path.display()));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(bad)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = cni::fsutil::Dir::open(parent)?.ok_or_else(|| {
        Error::Io(format!(
            "--textfile: directory {} does not exist",
            parent.display()
        ))
    })?;
    let _lock = dir.lock(&format!(".{name}.lock"))?;
    // Readable by the exporter, which need not run as root.
    dir.write_atomic_mode(name, text.as_bytes(), 0o644)
}

fn release(o: &Opts, out: &mut dyn Write) -> Result<()> {
    let ip_s = match o.positional.get(1) {
        Some(s) => s,
        None => return Err(Error::InvalidEnv("release needs an IP address".into())),
    };
    let ip: IpAddr = ip_s
        .parse()
        .map_err(|_| Error::InvalidEnv(format!("{ip_s:?} is not an IP address")))?;
    let t = target(o)?;
    let network = t.network.clone().ok_or_else(|| {
        Error::InvalidEnv("release needs --network NAME (or --config FILE)".into())
    })?;
    if t.store.load(&network)?.get(&ip).is_none() {
        return Err(Error::plugin(
            cni::error::code::ADDRESS_UNAVAILABLE,
            format!("{ip} has no reservation in network {network}"),
        ));
    }
    let gone = store::update(t.store.as_ref(), &network, |s| Ok(s.remove(&ip)))?;
    match gone {
        Some(r) => writeln!(out, "released {}", record_json(&network, &r))?,
        None => writeln!(out, "{ip} was released meanwhile")?,
    }
    Ok(())
}

/// The networks a command covers: `--network`, else every one in the store.
fn networks(o: &Opts, store: &dyn Store) -> Result<Vec<String>> {
    match &o.network {
        Some(n) => Ok(vec![n.clone()]),
        None => store.networks(),
    }
}

fn reclaim(o: &Opts, out: &mut dyn Write) -> Result<()> {
    let node = o
        .node
        .clone()
        .ok_or_else(|| Error::InvalidEnv("reclaim needs --node NAME".into()))?;
    let path = o.config.as_ref().ok_or_else(|| {
        Error::InvalidEnv("reclaim needs --config FILE (it names the store)".into())
    })?;
    let (_, cfg) = load_config_file(path)?;
    let store = store::open(&cfg.store)?;
    let mut rows = Vec::new();
    for n in networks(o, store.as_ref())? {
        // GC with no valid attachment on that node: frees, or parks sticky ones.
        let mut parked = Vec::new();
        let gone = store::update(store.as_ref(), &n, |s| {
            let gone = allocator::gc(s, &node, &[]);
            parked = gone
                .iter()
                .filter(|ip| s.get(ip).is_some())
                .copied()
                .collect();
            Ok(gone)
        })?;
        for ip in gone {
            let state = if parked.contains(&ip) {
                "parked"
            } else {
                "freed"
            };
            rows.push(json!({"network": n, "ip": ip.to_string(), "state": state}));
        }
    }
    if o.json {
        writeln!(out, "{}", Value::Array(rows))?;
    } else {
        for r in &rows {
            writeln!(
                out,
                "{} {} {}",
                r["state"].as_str().unwrap_or(""),
                r["network"].as_str().unwrap_or(""),
                r["ip"].as_str().unwrap_or("")
            )?;
        }
        writeln!(out, "reclaimed {} address(es) of node {node}", rows.len())?;
    }
    Ok(())
}

/// Add `from`'s records to `to`; an address recorded differently stops it.
fn merge(to: &mut allocator::State, from: &allocator::State, network: &str) -> Result<usize> {
    let mut copied = 0;
    for r in &from.records {
        match to.get(&r.ip) {
            Some(x) if x == r => {}
            Some(x) => {
                return Err(Error::plugin(
                    cni::error::code::ADDRESS_UNAVAILABLE,
                    format!("network {network}: {} is already recorded differently in the destination ({}); nothing of this network was copied", r.ip, record_json(network, x)),
                ))
            }
            None => {
                to.put(r.clone());
                copied += 1;
            }
        }
    }
    for (pool, ip) in &from.cursors {
        to.cursors.entry(pool.clone()).or_insert(*ip);
    }
    Ok(copied)
}

fn migrate(o: &Opts, out: &mut dyn Write) -> Result<()> {
    let (Some(dir), Some(path)) = (&o.data_dir, &o.config) else {
        return Err(Error::InvalidEnv(
            "migrate needs --data-dir DIR (the file store) and --config FILE (the destination)"
                .into(),
        ));
    };
    let source = FileStore::new(dir.clone());
    let (_, cfg) = load_config_file(path)?;
    if let StoreConfig::File { data_dir } = &cfg.store {
        if data_dir == dir {
            return Err(Error::InvalidEnv(
                "migrate: the source and the destination are the same file store".into(),
            ));
        }
    }
    let dest = store::open(&cfg.store)?;
    for n in networks(o, &source)? {
        let from = source.load(&n)?;
        let copied = store::update(dest.as_ref(), &n, |s| merge(s, &from, &n))?;
        writeln!(
            out,
            "network {n}: copied {copied} of {} record(s)",
            from.records.len()
        )?;
    }
    Ok(())
}

/// `coordinator-ipam CMD --help`: the usage of CMD alone (its lines of
/// [`HELP`] and the options), or the whole help for anything else.
pub fn help_for(cmd: Option<&str>) -> String {
    let Some(cmd) = cmd.filter(|c| !c.starts_with('-')) else {
        return HELP.to_string();
    };
    let head = format!("  coordinator-ipam {cmd} ");
    let mut block = String::new();
    let mut inside = false;
    for line in HELP.lines() {
        if line.starts_with("  coordinator-ipam ") || !line.starts_with("      ") {
            inside = line.starts_with(&head) || line == head.trim_end();
        }
        if inside {
            block.push_str(line);
            block.push('\n');
        }
    }
    if block.is_empty() {
        return HELP.to_string();
    }
    // install takes none of the store options.
    if cmd == "install" {
        return format!("USAGE:\n{block}");
    }
    let options = HELP
        .split_once("OPTIONS:\n")
        .and_then(|(_, rest)| rest.split_once("\n\n"))
        .map(|(opts, _)| opts)
        .unwrap_or_default();
    format!("USAGE:\n{block}\nOPTIONS:\n{options}\n")
}

/// Run the operator CLI; returns the exit status.
pub fn run(args: &[String], out: &mut dyn Write, err: &mut dyn Write) -> i32 {
    let o = match parse_opts(args) {
        Ok(o) => o,
        Err(e) => {
            let _ = writeln!(err, "coordinator-ipam: {e}\n\n{HELP}");
            return 2;
        }
    };
    let res = match o.positional.first().map(String::as_str) {
        None | Some("help") | Some("-h") => {
            let _ = write!(out, "{HELP}");
            return if args.is_empty() { 2 } else { 0 };
        }
        Some("list") => list(&o, out),
        Some("usage") => usage(&o, out),
        Some("release") => release(&o, out),
        Some("reclaim") => reclaim(&o, out),
        Some("migrate") => migrate(&o, out),
        Some(other) => {
            let _ = writeln!(err, "coordinator-ipam: unknown command {other:?}\n\n{HELP}");
            return 2;
        }
    };
    match res {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "coordinator-ipam: {e}");
            if matches!(e, Error::InvalidEnv(_)) {
                2
            } else {
                1
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_chars_cuts_at_a_character_boundary() {
        assert_eq!(first_chars("", 16), "");
        assert_eq!(first_chars("short", 16), "short");
        assert_eq!(first_chars("0123456789abcdef", 16), "0123456789abcdef");
        assert_eq!(first_chars("0123456789abcdefXYZ", 16), "0123456789abcdef");
        // 'é' is two bytes at bytes 15..17: a byte cut at 16 would panic.
        assert_eq!(first_chars("0123456789abcdeé-more", 16), "0123456789abcdeé");
        assert_eq!(
            first_chars("日本語のコンテナ識別子です長い名前", 4),
            "日本語の"
        );
    }
}
