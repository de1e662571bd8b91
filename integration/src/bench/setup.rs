//! Before any case: our binaries are there, coordinator-ipam works (or its
//! rows are skipped), and the two labs the cases run in are built.

use std::io;
use std::path::{Path, PathBuf};

use super::options::{NodeFill, Options};
use super::{node, report};
use crate::lab::Lab;

/// The labs of the per-exec cases.
pub(super) struct Labs {
    /// Two underlay subnets, an empty node.
    pub lab: Lab,
    /// One subnet, the node pre-loaded with `node_size` pods' routes.
    pub big: Lab,
}

/// Copies of the plugins under test, which every case runs; removed on drop.
///
/// A node runs copies (`coordinator install`, the .deb, `install`), and the
/// page-cache state of a file matters: the same bytes exec'd straight from
/// the linker's output cost about 0.2 ms more CPU per exec than a copy of
/// them (same-run A/B of one binary in both places, ADD and DEL alike). So
/// ours, the baseline and the Spiderpool anchor all run from fresh copies,
/// as the reference plugins run from their packaged files.
pub(super) struct Installed {
    dir: PathBuf,
    /// `opts` with every binary path pointing at its copy.
    pub opts: Options,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(super) fn install(opts: &Options) -> io::Result<Installed> {
    let dir = std::env::temp_dir().join(format!("bench-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut installed = Installed {
        dir: dir.clone(),
        opts: opts.clone(),
    };
    for b in ["coordinator", "coordinator-ipam"] {
        copy_binary(&opts.bin_dir.join(b), &dir)?;
    }
    installed.opts.bin_dir = dir.clone();
    // Own directories: a baseline is usually also named `coordinator`.
    if let Some(b) = &opts.baseline {
        installed.opts.baseline = Some(copy_binary(b, &dir.join("baseline"))?);
    }
    if let Some(s) = &opts.spiderpool {
        installed.opts.spiderpool = Some(copy_binary(s, &dir.join("spiderpool"))?);
    }
    Ok(installed)
}

/// Copy the executable `from` into `dir` (made if missing) under its own
/// name; errors name the file.
pub(super) fn copy_binary(from: &Path, dir: &Path) -> io::Result<PathBuf> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", from.display()));
    let name = from
        .file_name()
        .ok_or_else(|| named(io::ErrorKind::InvalidInput.into()))?;
    std::fs::create_dir_all(dir).map_err(named)?;
    let to = dir.join(name);
    std::fs::copy(from, &to).map_err(named)?;
    Ok(to)
}

/// Fail early when a plugin of ours is missing from `bin_dir`.
pub(super) fn require_binaries(bin_dir: &Path) -> io::Result<()> {
    for b in ["coordinator", "coordinator-ipam"] {
        if !bin_dir.join(b).is_file() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{b} not found in {}", bin_dir.display()),
            ));
        }
    }
    Ok(())
}

/// Does coordinator-ipam allocate in this build? When not, the run goes on
/// without it and says so in the notes.
pub(super) fn ipam_usable(opts: &Options, notes: &mut Vec<String>) -> bool {
    match report::ipam_works(&opts.bin_dir) {
        Ok(()) => true,
        Err(e) => {
            notes.push(format!(
                "coordinator-ipam is not functional in {} ({e}): its rows are skipped and the \
                 burst uses host-local",
                opts.bin_dir.display()
            ));
            false
        }
    }
}

/// Build both labs, fill the big node and give each node the packet filter
/// a Kubernetes node carries.
pub(super) fn labs(opts: &Options, notes: &mut Vec<String>) -> io::Result<(Labs, NodeFill)> {
    let lab = Lab::builder().subnets(2).build()?;
    let big = Lab::builder().subnets(1).build()?;
    let node_fill = node::fill(&big, opts.node_size)?;
    for l in [&lab, &big] {
        node::packet_filter(l)?;
    }
    notes.push(
        "Each node netns carries an accept-only inet filter with conntrack on the \
         prerouting, input, output and postrouting hooks, as kube-proxy leaves on every \
         Kubernetes node: without any hook on the machine, the pod's nftables table would flip \
         the kernel's global netfilter static keys (code patching with IPIs) at every ADD and DEL."
            .to_string(),
    );
    Ok((Labs { lab, big }, node_fill))
}

/// Where the cases' chains look plugins up: the reference plugins, then ours.
pub(super) fn cni_path(opts: &Options) -> Vec<PathBuf> {
    vec![PathBuf::from("/usr/lib/cni"), opts.bin_dir.clone()]
}
