//! Per-exec scenarios: each iteration of a case runs real chains and keeps
//! the timing of one plugin's own exec (from the chain runner's per-plugin
//! runs), never the whole chain.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;

use super::stats::{micros, Sample};
use crate::chain::{Attachment, Chain, Outcome, PluginRun, Verb};
use crate::exec::{timeval, wait_with_usage};
use crate::lab::{state, Lab};

/// Whose exec a row measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
            } => self.pod_once(lab, nics, measured, &cid, iter, &mut it),
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
                let made = state::ip(
                    ns,
                    &[
                        "link", "add", &a, "type", "veth", "peer", "name", "eth0", "netns",
                        &pod.name,
                    ],
                );
                match made {
                    Err(e) => it.errors.push(e.to_string()),
                    Ok(_) => {
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

    fn pod_once(
        &self,
        lab: &Lab,
        nics: &[(Chain, String)],
        measured: &str,
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
        for (j, (chain, ifname)) in nics[..added].iter().enumerate().rev() {
            let att = Attachment::new(cid, &pod.path, ifname);
            match chain.del(&att) {
                Ok(out) => {
                    if it.errors.is_empty() {
                        it.samples[n + (n - 1 - j)] = pick(&out, measured);
                    }
                }
                Err(e) => it.errors.push(format!("DEL {ifname}: {e}")),
            }
        }
        if let Err(e) = lab.remove_netns(&pod.name) {
            it.errors.push(format!("remove pod netns: {e}"));
        }
    }
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
