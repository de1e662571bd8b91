//! Per-exec scenarios: each iteration of a case runs real chains and keeps
//! the timing of one plugin's own exec (from the chain runner's per-plugin
//! runs), never the whole chain.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::confs;
use super::stats::{micros, Sample};
use crate::chain::{Attachment, Chain, NetConfList, Outcome, PluginRun, Verb};
use crate::exec::{timeval, wait_with_usage};
use crate::lab::{state, Lab};

/// Whose exec a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Ours,
    Anchor,
    Floor,
}

/// One output row: a plugin, a verb, a scenario.
#[derive(Clone, Debug)]
pub struct RowSpec {
    pub id: String,
    pub label: String,
    pub group: String,
    pub kind: Kind,
}

impl RowSpec {
    pub fn new(id: &str, label: &str, group: &str, kind: Kind) -> RowSpec {
        RowSpec {
            id: id.into(),
            label: label.into(),
            group: group.into(),
            kind,
        }
    }
}

/// What one iteration of a case does.
pub enum Body<'l> {
    /// A pod attached through `nics` (ADD in order, DEL in reverse), timing
    /// the plugin of type `measured` in each chain. Rows: one ADD per NIC,
    /// then one DEL per NIC (in DEL order).
    Pod {
        lab: &'l Lab,
        nics: Vec<(Chain, String)>,
        measured: String,
        /// Pair the first NIC's DEL with the kernel's own deletion of a veth
        /// pair into a pod netns (one more row, see [`Case::paired_kernel_del`]).
        paired: bool,
    },
    /// A one-plugin chain run with `verb` (the exec floor: `/bin/true`).
    Exec {
        chain: Chain,
        netns: PathBuf,
        verb: Verb,
    },
    /// A bare IPAM plugin: ADD then DEL of a fresh attachment. Rows: ADD, DEL.
    Ipam { chain: Chain, netns: PathBuf },
    /// What the kernel charges for deleting a veth pair whose peer is in a
    /// pod netns (what our first-NIC DEL deletes), whoever asks: rows `ip
    /// link del <veth>` in the node (pair and pod netns made untimed just
    /// before, pod netns removed after, as in a pod case) and `ip link show
    /// lo` (the same exec without the deletion).
    LinkDel { lab: &'l Lab },
}

pub struct Case<'l> {
    /// Short, unique, [a-z0-9]: names pods and container IDs.
    pub short: String,
    pub rows: Vec<RowSpec>,
    pub body: Body<'l>,
    /// Skip the case (with the error as the reason) when its first warm-up
    /// iteration fails: an optional anchor or an unfinished plugin.
    pub optional: bool,
}

/// The samples of one iteration (one slot per row) and its errors.
pub struct Iteration {
    pub samples: Vec<Option<Sample>>,
    pub errors: Vec<String>,
}

/// Give freed heap back to the kernel. A forked child starts with our
/// anonymous RSS, and Linux counts it in the child's `ru_maxrss` even after
/// exec: a fat harness would report every plugin at least as big as itself.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Case<'_> {
    pub fn once(&self, iter: usize) -> Iteration {
        trim_heap();
        let mut it = Iteration {
            samples: vec![None; self.rows.len()],
            errors: Vec::new(),
        };
        let cid = format!("bench-{}-{iter}", self.short);
        match &self.body {
            Body::Exec { chain, netns, verb } => {
                let att = Attachment::new(&cid, netns, "eth0");
                match chain.run(*verb, &att) {
                    Ok(out) => it.samples[0] = out.runs.first().map(Sample::of),
                    Err(e) => it.errors.push(e.to_string()),
                }
            }
            Body::Ipam { chain, netns } => {
                let att = Attachment::new(&cid, netns, "eth0");
                match chain.add(&att) {
                    Ok(out) => it.samples[0] = out.runs.first().map(Sample::of),
                    Err(e) => it.errors.push(format!("ADD: {e}")),
                }
                match chain.del(&att) {
                    Ok(out) => it.samples[1] = out.runs.first().map(Sample::of),
                    Err(e) => it.errors.push(format!("DEL: {e}")),
                }
            }
            Body::Pod {
                lab,
                nics,
                measured,
                paired,
            } => self.pod_once(lab, nics, measured, *paired, &cid, iter, &mut it),
            Body::LinkDel { lab } => {
                let pod = match lab.pod(&format!("{}{iter}", self.short)) {
                    Ok(p) => p,
                    Err(e) => {
                        it.errors.push(format!("pod netns: {e}"));
                        return it;
                    }
                };
                let ns = lab.node();
                let a = format!("bk{iter}a");
                match veth_into(ns, &a, &pod.name) {
                    Err(e) => it.errors.push(e.to_string()),
                    Ok(()) => {
                        for (k, args) in [["link", "del", a.as_str()], ["link", "show", "lo"]]
                            .iter()
                            .enumerate()
                        {
                            match timed(Command::new("ip").arg("-n").arg(ns).args(args)) {
                                Ok(s) => it.samples[k] = Some(s),
                                Err(e) => it.errors.push(format!("ip {}: {e}", args.join(" "))),
                            }
                        }
                    }
                }
                if let Err(e) = lab.remove_netns(&pod.name) {
                    it.errors.push(format!("remove pod netns: {e}"));
                }
            }
        }
        it
    }

    #[allow(clippy::too_many_arguments)]
    fn pod_once(
        &self,
        lab: &Lab,
        nics: &[(Chain, String)],
        measured: &str,
        paired: bool,
        cid: &str,
        iter: usize,
        it: &mut Iteration,
    ) {
        let pod = match lab.pod(&format!("{}{iter}", self.short)) {
            Ok(p) => p,
            Err(e) => {
                it.errors.push(format!("pod netns: {e}"));
                return;
            }
        };
        // The kernel's twin of our first-NIC DEL: a fresh veth pair into a
        // pod netns of its own, made untimed now, deleted next to our DEL.
        let twin = match paired {
            true => match lab.pod(&format!("{}k{iter}", self.short)) {
                Ok(p) => {
                    let link = format!("p{}{iter}", self.short);
                    if let Err(e) = veth_into(lab.node(), &link, &p.name) {
                        it.errors.push(format!("paired veth: {e}"));
                    }
                    Some((p, link))
                }
                Err(e) => {
                    it.errors.push(format!("paired pod netns: {e}"));
                    None
                }
            },
            false => None,
        };
        let n = nics.len();
        let mut added = 0;
        for (k, (chain, ifname)) in nics.iter().enumerate() {
            let att = Attachment::new(cid, &pod.path, ifname);
            added = k + 1;
            match chain.add(&att) {
                Ok(out) => it.samples[k] = pick(&out, measured),
                Err(e) => {
                    it.errors.push(format!("ADD {ifname}: {e}"));
                    break;
                }
            }
        }
        // DEL everything attempted, even after a failed ADD (a runtime does).
        // The kernel's deletion goes right before the first NIC's DEL in even
        // rounds and right after it in odd ones.
        let kernel_del = |it: &mut Iteration| {
            if let Some((_, link)) = &twin {
                match timed(Command::new("ip").args(["-n", lab.node(), "link", "del", link])) {
                    Ok(s) if it.errors.is_empty() => it.samples[2 * n] = Some(s),
                    Ok(_) => {}
                    Err(e) => it.errors.push(format!("paired ip link del: {e}")),
                }
            }
        };
        for (j, (chain, ifname)) in nics[..added].iter().enumerate().rev() {
            if j == 0 && iter.is_multiple_of(2) {
                kernel_del(it);
            }
            let att = Attachment::new(cid, &pod.path, ifname);
            match chain.del(&att) {
                Ok(out) => {
                    if it.errors.is_empty() {
                        it.samples[n + (n - 1 - j)] = pick(&out, measured);
                    }
                }
                Err(e) => it.errors.push(format!("DEL {ifname}: {e}")),
            }
            if j == 0 && !iter.is_multiple_of(2) {
                kernel_del(it);
            }
        }
        // A pair's two samples are kept together or not at all, so the
        // per-round differences line up.
        if paired && !it.errors.is_empty() {
            it.samples[2 * n - 1] = None;
            it.samples[2 * n] = None;
        }
        for netns in std::iter::once(&pod.name).chain(twin.as_ref().map(|(p, _)| &p.name)) {
            if let Err(e) = lab.remove_netns(netns) {
                it.errors.push(format!("remove pod netns: {e}"));
            }
        }
    }

    /// The rows of the paired deletion: the first NIC's DEL and the
    /// kernel's deletion next to it.
    pub fn paired_rows(&self) -> Option<[usize; 2]> {
        match &self.body {
            Body::Pod {
                paired: true, nics, ..
            } => Some([2 * nics.len() - 1, 2 * nics.len()]),
            _ => None,
        }
    }

    /// Add the paired kernel deletion to a pod case: each round also times
    /// `ip link del` of a fresh veth pair into a pod netns next to the first
    /// NIC's DEL (alternating which goes first); row id `kernel/paired-del/<slug>`.
    pub fn paired_kernel_del(mut self) -> Self {
        let Body::Pod { paired, nics, .. } = &mut self.body else {
            return self;
        };
        *paired = true;
        let first_del = &self.rows[2 * nics.len() - 1];
        let slug = first_del.id.rsplit('/').next().unwrap_or_default();
        let spec = RowSpec::new(
            &format!("kernel/paired-del/{slug}"),
            "ip link del <veth pair> (paired with the first NIC's DEL)",
            &first_del.group,
            Kind::Floor,
        );
        self.rows.push(spec);
        self
    }
}

/// The exec floor: `/bin/true` run as a one-plugin chain in the node.
pub(crate) fn floor_case(lab: &Lab) -> io::Result<Case<'_>> {
    Ok(Case {
        short: "floor".into(),
        rows: vec![RowSpec::new(
            "floor/exec",
            "/bin/true (exec floor)",
            "exec floor",
            Kind::Floor,
        )],
        body: Body::Exec {
            chain: Chain::new(confs::list("floor", vec![json!({"type": "true"})])?)
                .node_netns(Some(lab.node()))
                .cni_path(vec![PathBuf::from("/bin")]),
            netns: lab.node_path(),
            verb: Verb::Del,
        },
        optional: false,
    })
}

/// A chain of `plugins` (conflist `name`) run in `lab`'s node, its state
/// kept in the lab, plugins looked up in `cni_path`.
pub(crate) fn lab_chain(
    lab: &Lab,
    cni_path: &[PathBuf],
    name: &str,
    plugins: Vec<serde_json::Value>,
) -> io::Result<Chain> {
    let mut list: NetConfList = confs::list(name, plugins)?;
    lab.localize(&mut list);
    Ok(lab.chain(list).cni_path(cni_path.to_vec()))
}

/// A veth pair `link` in netns `ns` whose peer is `eth0` in netns `pod`:
/// what our first-NIC DEL deletes.
fn veth_into(ns: &str, link: &str, pod: &str) -> std::io::Result<()> {
    let args = [
        "link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", pod,
    ];
    state::ip(ns, &args).map(drop)
}

/// Run `cmd` (output discarded) and measure it like a plugin exec.
fn timed(cmd: &mut Command) -> std::io::Result<Sample> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status, usage) = wait_with_usage(child.id() as libc::pid_t)?;
    let wall = start.elapsed();
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(std::io::Error::other(format!("exit status {status:#x}")));
    }
    Ok(Sample {
        wall_us: micros(wall),
        cpu_us: micros(timeval(usage.ru_utime) + timeval(usage.ru_stime)),
        rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

fn pick(out: &Outcome, ty: &str) -> Option<Sample> {
    out.runs
        .iter()
        .find(|r: &&PluginRun| r.plugin == ty && r.skipped.is_none())
        .map(Sample::of)
}

/// A pod case: one ADD row per NIC, then one DEL row per NIC in DEL order.
#[allow(clippy::too_many_arguments)]
pub fn pod_case<'l>(
    lab: &'l Lab,
    short: &str,
    nics: Vec<(Chain, String)>,
    measured: String,
    kind: Kind,
    who: &str,
    group: &str,
    id_suffix: &str,
) -> Case<'l> {
    let tag = |ifname: &str| {
        if nics.len() > 1 {
            format!(" {ifname}")
        } else {
            String::new()
        }
    };
    let slug = group_slug(group, id_suffix);
    let mut rows = Vec::new();
    for (_, ifname) in &nics {
        rows.push(RowSpec::new(
            &format!("{measured}/add/{slug}{}", tag(ifname).replace(' ', "-")),
            &format!("{who} ADD{}", tag(ifname)),
            &format!("{group} ADD"),
            kind,
        ));
    }
    for (_, ifname) in nics.iter().rev() {
        rows.push(RowSpec::new(
            &format!("{measured}/del/{slug}{}", tag(ifname).replace(' ', "-")),
            &format!("{who} DEL{}", tag(ifname)),
            &format!("{group} DEL"),
            kind,
        ));
    }
    Case {
        short: short.into(),
        rows,
        body: Body::Pod {
            lab,
            nics,
            measured,
            paired: false,
        },
        optional: false,
    }
}

/// "2 NICs dual-stack, detection on" → "2nics-dualstack-detect".
fn group_slug(group: &str, suffix: &str) -> String {
    let base = if group.starts_with("1 NIC IPv4") {
        "1nic-v4"
    } else if group.contains("detection") {
        "2nics-ds-detect"
    } else {
        "2nics-ds"
    };
    if suffix.is_empty() {
        base.to_string()
    } else {
        format!("{base}-{suffix}")
    }
}
