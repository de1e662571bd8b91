//! The per-exec cases that attach pods (or delete what a pod's DEL deletes),
//! family by family in report order: the kernel's floors, ours next to the
//! reference `sbr` on 1 NIC, the optional A/B anchors (a baseline build of
//! ours, Spiderpool), 2 NICs dual-stack with and without detection, and the
//! big node.

use std::io;
use std::path::PathBuf;

use serde_json::Value;

use super::cases::{floor_case, lab_chain, pod_case, Body, Case, Kind, RowSpec};
use super::confs::{self, Ipam};
use super::options::{Options, SPIDERPOOL_ENV};
use super::setup::{self, Labs};
use crate::chain::Chain;
use crate::lab::Lab;

/// The NICs of a pod (chain, interface name) and the plugin type timed.
type Nics = (Vec<(Chain, String)>, String);

/// What every pod case is declared against.
pub(super) struct PodCases<'l> {
    opts: &'l Options,
    lab: &'l Lab,
    big: &'l Lab,
    /// The reference plugins, then ours.
    cni_path: Vec<PathBuf>,
}

impl<'l> PodCases<'l> {
    pub fn new(opts: &'l Options, labs: &'l Labs) -> Self {
        PodCases {
            opts,
            lab: &labs.lab,
            big: &labs.big,
            cni_path: setup::cni_path(opts),
        }
    }

    /// Every family, in the order of the report's rows.
    pub fn declare(&self, notes: &mut Vec<String>) -> io::Result<Vec<Case<'l>>> {
        let mut cases = self.kernel_floors()?;
        cases.extend(self.one_nic_cases()?);
        cases.extend(self.baseline()?);
        cases.extend(self.spiderpool(notes)?);
        cases.extend(self.two_nic_cases()?);
        cases.push(self.node_size()?);
        Ok(cases)
    }

    /// The exec floor and the kernel's veth pair deletion, on the empty node
    /// and on the big one.
    fn kernel_floors(&self) -> io::Result<Vec<Case<'l>>> {
        let mut cases = vec![floor_case(self.lab)?];
        for (short, ns, suffix, group) in [
            (
                "kdel",
                self.lab,
                "",
                "kernel: veth pair deletion (peer in a pod netns)".to_string(),
            ),
            (
                "kdelbig",
                self.big,
                "-node",
                format!(
                    "kernel: veth pair deletion (peer in a pod netns), {} pods' routes on the node",
                    self.opts.node_size
                ),
            ),
        ] {
            cases.push(Case {
                short: short.into(),
                rows: vec![
                    RowSpec::new(
                        &format!("kernel/veth-del{suffix}"),
                        "ip link del <veth pair>",
                        &group,
                        Kind::Floor,
                    ),
                    RowSpec::new(
                        &format!("kernel/ip-floor{suffix}"),
                        "ip link show lo (same exec, no deletion)",
                        &group,
                        Kind::Floor,
                    ),
                ],
                body: Body::LinkDel { lab: ns },
                optional: false,
            });
        }
        Ok(cases)
    }

    /// Ours and the reference `sbr`, 1 NIC IPv4 on the empty node.
    fn one_nic_cases(&self) -> io::Result<Vec<Case<'l>>> {
        let ours = confs::coordinator(false, false);
        let (nics, measured) = self.one_nic(self.lab, "c1", 1, ours, "coordinator")?;
        let cone = pod_case(
            self.lab,
            "cone",
            nics,
            measured,
            Kind::Ours,
            "coordinator",
            "1 NIC IPv4",
            "",
        );
        let (nics, measured) = self.one_nic(self.lab, "sbr", 2, confs::sbr(), "sbr")?;
        let sbr = pod_case(
            self.lab,
            "sbr",
            nics,
            measured,
            Kind::Anchor,
            "sbr (reference)",
            "1 NIC IPv4",
            "",
        );
        Ok(vec![cone.paired_kernel_del(), sbr])
    }

    /// Another build of ours (say main's), interleaved with this one in the
    /// same run: a change's A/B on a busy machine.
    fn baseline(&self) -> io::Result<Option<Case<'l>>> {
        let Some(base) = &self.opts.baseline else {
            return Ok(None);
        };
        let dir = self.lab.dir().join("baseline-bin");
        std::fs::create_dir_all(&dir)?;
        let ty = "coordinator-baseline";
        std::os::unix::fs::symlink(base, dir.join(ty))?;
        let mut conf = confs::coordinator(false, false);
        conf["type"] = ty.into();
        let (nics, measured) = self.one_nic(self.lab, "cbase", 6, conf, ty)?;
        let nics = nics
            .into_iter()
            .map(|(c, nic)| {
                let mut path = self.cni_path.clone();
                path.push(dir.clone());
                (c.cni_path(path), nic)
            })
            .collect();
        // Paired like ours: a DEL right after the kernel's deletion pays for
        // its RCU backlog, so an unpaired baseline DEL is not comparable.
        let case = pod_case(
            self.lab,
            "cbase",
            nics,
            measured,
            Kind::Anchor,
            "coordinator (baseline build)",
            "1 NIC IPv4",
            "baseline",
        );
        Ok(Some(case.paired_kernel_del()))
    }

    /// Spiderpool's coordinator when its binary is given, optional: skipped
    /// with its error when it cannot run here.
    fn spiderpool(&self, notes: &mut Vec<String>) -> io::Result<Option<Case<'l>>> {
        let Some(sp) = &self.opts.spiderpool else {
            notes.push(format!(
                "Spiderpool anchor skipped: {SPIDERPOOL_ENV} is not set (give the path of a \
                 Spiderpool coordinator binary to include it)"
            ));
            return Ok(None);
        };
        let spider_dir = self.lab.dir().join("spiderpool-bin");
        std::fs::create_dir_all(&spider_dir)?;
        let ty = "spiderpool-coordinator";
        std::os::unix::fs::symlink(sp, spider_dir.join(ty))?;
        let v4 = Ipam::HostLocal { v6: false };
        let mut list = confs::list(
            "bench-spider",
            vec![confs::macvlan(1, 5, &v4), confs::spiderpool(ty)],
        )?;
        self.lab.localize(&mut list);
        let mut path = self.cni_path.clone();
        path.push(spider_dir);
        let c = self.lab.chain(list).cni_path(path);
        let mut case = pod_case(
            self.lab,
            "spider",
            vec![(c, "eth0".into())],
            ty.into(),
            Kind::Anchor,
            "Spiderpool coordinator",
            "1 NIC IPv4",
            "",
        );
        case.optional = true;
        Ok(Some(case))
    }

    /// Ours and `sbr` on 2 NICs dual-stack, then ours with detection on.
    fn two_nic_cases(&self) -> io::Result<Vec<Case<'l>>> {
        let ds = Ipam::HostLocal { v6: true };
        let coord = |detect: bool| confs::coordinator(detect, true);
        let mut cases = Vec::new();
        for (short, second, third, group, measured, kind, who) in [
            (
                "ctwo",
                coord(false),
                3,
                "2 NICs dual-stack",
                "coordinator",
                Kind::Ours,
                "coordinator",
            ),
            (
                "sbrtwo",
                confs::sbr(),
                6,
                "2 NICs dual-stack",
                "sbr",
                Kind::Anchor,
                "sbr (reference)",
            ),
            (
                "cdet",
                coord(true),
                4,
                "2 NICs dual-stack, detection on",
                "coordinator",
                Kind::Ours,
                "coordinator",
            ),
        ] {
            let nics = vec![
                (
                    self.chain(
                        self.lab,
                        &format!("bench-{short}-a"),
                        vec![confs::macvlan(1, third, &ds), second.clone()],
                    )?,
                    "eth0".to_string(),
                ),
                (
                    self.chain(
                        self.lab,
                        &format!("bench-{short}-b"),
                        vec![confs::macvlan(2, third, &ds), second],
                    )?,
                    "net1".to_string(),
                ),
            ];
            let case = pod_case(self.lab, short, nics, measured.into(), kind, who, group, "");
            cases.push(match short {
                "ctwo" => case.paired_kernel_del(),
                _ => case,
            });
        }
        Ok(cases)
    }

    /// Ours, 1 NIC IPv4, on the node pre-loaded with `node_size` pods.
    fn node_size(&self) -> io::Result<Case<'l>> {
        let ours = confs::coordinator(false, false);
        let (nics, measured) = self.one_nic(self.big, "cbig", 1, ours, "coordinator")?;
        let group = format!(
            "1 NIC IPv4, {} pods' routes on the node",
            self.opts.node_size
        );
        let case = pod_case(
            self.big,
            "cbig",
            nics,
            measured,
            Kind::Ours,
            "coordinator",
            &group,
            "node",
        );
        Ok(case.paired_kernel_del())
    }

    /// A 1-NIC IPv4 pod: macvlan + host-local, then `second` (of type `ty`,
    /// the one timed).
    fn one_nic(
        &self,
        lab: &Lab,
        short: &str,
        third: u8,
        second: Value,
        ty: &str,
    ) -> io::Result<Nics> {
        let v4 = Ipam::HostLocal { v6: false };
        let plugins = vec![confs::macvlan(1, third, &v4), second];
        let c = self.chain(lab, &format!("bench-{short}"), plugins)?;
        Ok((vec![(c, "eth0".to_string())], ty.to_string()))
    }

    fn chain(&self, lab: &Lab, name: &str, plugins: Vec<Value>) -> io::Result<Chain> {
        lab_chain(lab, &self.cni_path, name, plugins)
    }
}
