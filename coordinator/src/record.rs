//! The record of one attachment (container ID + interface): the plan its ADD
//! applied and, change by change, how to take it back ([`Undo`], holding the
//! pre-image of what the change overwrote), as the reference `tuning`
//! plugin keeps a backup of what it changes. CHECK compares the kernel with
//! the recorded plan, DEL undoes the recorded steps last first, and a failed
//! ADD undoes its own steps: nothing is planned again from a pod that ADD
//! itself already changed.
//!
//! Layout: `/run/coordinator/attachments/<container ID>/nic-<ifname>`, one
//! JSON document per line. The first lines (header, plan) are written
//! atomically before the first change; each change appends its undo step
//! *before* the change is made (an undo of something that never happened
//! finds nothing, which is success), and a change that turns out to be
//! someone else's (`EEXIST`) appends a line that forgets its step. A
//! process killed at any point leaves a record DEL can invert. `/run` is a
//! tmpfs: a reboot takes the pods and their records together.
//!
//! Every file is 0600 in 0700 directories, opened without following links
//! and read bounded ([`cni::fsutil::Dir`]); the container's directory is
//! locked while a call reads and writes its records.

use std::io::Write;
use std::path::{Path, PathBuf};

use cni::fsutil::Dir;
use cni::{Error, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{Layout, Plan};
use crate::undo::Undo;

/// Where records live.
pub const ROOT: &str = "/run/coordinator/attachments";
/// A record is a few KiB; more is not ours.
const LIMIT: u64 = 1 << 20;
const VERSION: u32 = 1;
const PREFIX: &str = "nic-";

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Entry {
    Header {
        version: u32,
        container: String,
        ifname: String,
        /// The pod's netns as the runtime named it, and its inode: a record
        /// left by an earlier pod of the same container ID is not this one's.
        #[serde(default)]
        netns: Option<String>,
        #[serde(default)]
        netns_inode: Option<u64>,
        /// The network (conflist `name`) the attachment belongs to: GC
        /// only touches records of the network it is called for.
        #[serde(default)]
        network: Option<String>,
    },
    Plan {
        layout: Layout,
        plan: Box<Plan>,
    },
    Step {
        seq: u64,
        undo: Undo,
    },
    Forget {
        seq: u64,
    },
}

/// A record as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub ifname: String,
    /// The pod's netns (path as the runtime named it, inode) at ADD.
    pub netns: Option<String>,
    pub netns_inode: Option<u64>,
    /// The network (conflist `name`) of the attachment.
    pub network: Option<String>,
    pub layout: Layout,
    /// The plan of the last ADD that succeeded (or of the one in progress).
    pub plan: Plan,
    /// Steps still to be undone, in the order they were made.
    pub steps: Vec<Undo>,
    /// Highest sequence number used.
    next_seq: u64,
}

impl Record {
    /// Was this record made in the netns `inode` (unknown counts as yes)?
    pub fn of_netns(&self, inode: Option<u64>) -> bool {
        match (self.netns_inode, inode) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }

    fn parse(text: &str) -> std::result::Result<Record, String> {
        let mut ifname = None;
        let mut netns = None;
        let mut netns_inode = None;
        let mut network = None;
        let mut plan = None;
        let mut steps: Vec<(u64, Undo)> = Vec::new();
        let mut next_seq = 0;
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            // A killed writer may leave its last line unfinished: that step
            // was never acted on.
            if !line.ends_with('\n') && i + 1 == lines.len() {
                break;
            }
            let entry: Entry = serde_json::from_str(line.trim_end())
                .map_err(|e| format!("line {}: {e}", i + 1))?;
            match entry {
                Entry::Header {
                    version,
                    ifname: n,
                    netns: p,
                    netns_inode: i,
                    network: n2,
                    ..
                } => {
                    if version != VERSION {
                        return Err(format!("version {version} (this release reads {VERSION})"));
                    }
                    ifname = Some(n);
                    netns = p;
                    netns_inode = i;
                    network = n2;
                }
                Entry::Plan { layout, plan: p } => plan = Some((layout, *p)),
                Entry::Step { seq, undo } => {
                    next_seq = next_seq.max(seq + 1);
                    steps.push((seq, undo));
                }
                Entry::Forget { seq } => steps.retain(|(s, _)| *s != seq),
            }
        }
        let ifname = ifname.ok_or("no header")?;
        let (layout, plan) = plan.ok_or("no plan")?;
        Ok(Record {
            ifname,
            netns,
            netns_inode,
            network,
            layout,
            plan,
            steps: steps.into_iter().map(|(_, u)| u).collect(),
            next_seq,
        })
    }

    fn to_text(&self, container: &str) -> String {
        let mut out = String::new();
        let mut line = |e: &Entry| {
            out.push_str(&serde_json::to_string(e).expect("records serialise"));
            out.push('\n');
        };
        line(&Entry::Header {
            version: VERSION,
            container: container.to_string(),
            ifname: self.ifname.clone(),
            netns: self.netns.clone(),
            netns_inode: self.netns_inode,
            network: self.network.clone(),
        });
        line(&Entry::Plan {
            layout: self.layout,
            plan: Box::new(self.plan.clone()),
        });
        for (seq, undo) in self.steps.iter().enumerate() {
            line(&Entry::Step {
                seq: seq as u64,
                undo: undo.clone(),
            });
        }
        out
    }
}

/// Where an attachment was made: its network and its pod's netns.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub network: Option<String>,
    pub netns: Option<String>,
    pub netns_inode: Option<u64>,
}

/// The container IDs that have records under `root`.
pub fn containers(root: &Path) -> Vec<String> {
    let Ok(dirs) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dirs
        .flatten()
        .filter_map(|d| d.file_name().into_string().ok())
        .filter(|n| cni::env::validate_container_id(n).is_ok())
        .collect();
    out.sort();
    out
}

/// The records of one container, its directory locked for the caller.
pub struct Attachments {
    dir: Dir,
    container: String,
}

impl Attachments {
    /// The container's records under `root`; its directory is created when
    /// `create`, else `None` when there is none.
    pub fn open(root: &Path, container: &str, create: bool) -> Result<Option<Attachments>> {
        let path = root.join(container);
        let dir = match create {
            true => Some(Dir::create(&path)?),
            false => Dir::open(&path)?,
        };
        let Some(dir) = dir else { return Ok(None) };
        dir.flock()?;
        Ok(Some(Attachments {
            dir,
            container: container.to_string(),
        }))
    }

    pub fn path(&self, ifname: &str) -> PathBuf {
        self.dir.join(&file_name(ifname))
    }

    /// The record of `ifname`; an unreadable one is an error naming it.
    pub fn read(&self, ifname: &str) -> Result<Option<Record>> {
        let Some(bytes) = self.dir.read(&file_name(ifname), LIMIT)? else {
            return Ok(None);
        };
        let text = String::from_utf8_lossy(&bytes);
        Record::parse(&text).map(Some).map_err(|e| {
            Error::Io(format!(
                "attachment record {}: {e}",
                self.path(ifname).display()
            ))
        })
    }

    /// Every other attachment's readable record made in the netns `inode`
    /// (an unreadable one, or one an earlier pod of the same container ID
    /// left, is logged and left out: it only informs sharing decisions).
    pub fn siblings(&self, ifname: &str, inode: Option<u64>) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name();
            let Some(other) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if other == ifname {
                continue;
            }
            match self.read(other) {
                Ok(Some(r)) if r.of_netns(inode) => out.push(r),
                Ok(Some(r)) => tracing::warn!(
                    "{}: left by an earlier pod of this container ID, ignored",
                    self.path(&r.ifname).display()
                ),
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        out.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        out
    }

    /// Replace `rec` on disk, compacted.
    pub fn write(&self, rec: &Record) -> Result<()> {
        // `/run` is a tmpfs on nodes: no fsync (the record dies with the
        // pods at a reboot anyway).
        self.dir.replace(
            &file_name(&rec.ifname),
            rec.to_text(&self.container).as_bytes(),
        )
    }

    /// Remove the record of `ifname`, and the container's directory once it
    /// holds no record.
    pub fn remove(&self, ifname: &str) -> Result<()> {
        self.dir.remove(&file_name(ifname))?;
        let empty = std::fs::read_dir(self.dir.path())
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if empty {
            // Another call may have created a record meanwhile: then it stays.
            let _ = std::fs::remove_dir(self.dir.path());
        }
        Ok(())
    }

    /// Start (or continue, for a repeated ADD) the record of `ifname` with
    /// `plan`, before the first change.
    pub fn begin(
        &self,
        ifname: &str,
        origin: Origin,
        layout: Layout,
        plan: &Plan,
        existing: Option<Record>,
    ) -> Result<Writer> {
        let name = file_name(ifname);
        let (before, next_seq) = match &existing {
            Some(r) => (Some(r.clone()), r.next_seq),
            None => (None, 0),
        };
        let mut rec = existing.unwrap_or(Record {
            ifname: ifname.to_string(),
            netns: origin.netns,
            netns_inode: origin.netns_inode,
            network: origin.network,
            layout,
            plan: plan.clone(),
            steps: Vec::new(),
            next_seq: 0,
        });
        let text = match before {
            // A new record: header and plan in one write(2) into a file
            // made for it, under the container's lock (no reader sees it
            // half-written; a writer killed in the write leaves a record
            // that does not parse, which DEL treats as none).
            None => rec.to_text(&self.container),
            // The plan of this ADD from here on; the earlier steps stay.
            Some(_) => line(&Entry::Plan {
                layout,
                plan: Box::new(plan.clone()),
            }),
        };
        let mut file = match before {
            None => match self.dir.create_append(&name) {
                Ok(f) => f,
                // Whatever was left under the name did not parse: replaced.
                Err(_) => {
                    self.dir.remove(&name)?;
                    self.dir.create_append(&name)?
                }
            },
            Some(_) => self.dir.open_append(&name)?.0,
        };
        file.write_all(text.as_bytes())
            .map_err(|e| Error::Io(format!("writing {}: {e}", self.path(ifname).display())))?;
        rec.layout = layout;
        rec.plan = plan.clone();
        Ok(Writer {
            file,
            path: self.path(ifname),
            rec,
            before,
            next_seq,
            this_call: Vec::new(),
        })
    }
}

fn file_name(ifname: &str) -> String {
    format!("{PREFIX}{ifname}")
}

fn line(e: &Entry) -> String {
    let mut s = serde_json::to_string(e).expect("records serialise");
    s.push('\n');
    s
}

/// Appends one ADD's steps to its record as they are made.
pub struct Writer {
    file: std::fs::File,
    path: PathBuf,
    /// The record as it now stands on disk (this call's steps included).
    rec: Record,
    /// The record before this call (a repeated ADD), to fall back to.
    before: Option<Record>,
    next_seq: u64,
    /// (seq, step) of this call's steps still standing, in order.
    this_call: Vec<(u64, Undo)>,
}

impl Writer {
    /// Write `undos` ahead of the changes they take back, in one write(2);
    /// their sequence numbers. A change not made after all is forgotten.
    pub fn push_all(&mut self, undos: Vec<Undo>) -> Result<Vec<u64>> {
        let mut text = String::new();
        let mut seqs = Vec::with_capacity(undos.len());
        for undo in &undos {
            let seq = self.next_seq + seqs.len() as u64;
            text.push_str(&line(&Entry::Step {
                seq,
                undo: undo.clone(),
            }));
            seqs.push(seq);
        }
        if text.is_empty() {
            return Ok(seqs);
        }
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| Error::Io(format!("writing {}: {e}", self.path.display())))?;
        self.next_seq += seqs.len() as u64;
        for (seq, undo) in seqs.iter().zip(undos) {
            self.this_call.push((*seq, undo.clone()));
            self.rec.steps.push(undo);
        }
        Ok(seqs)
    }

    /// Write `undo` ahead of the change it takes back; its sequence number.
    pub fn push(&mut self, undo: Undo) -> Result<u64> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let text = line(&Entry::Step {
            seq,
            undo: undo.clone(),
        });
        // One write(2) on O_APPEND: a line is whole or (killed) unfinished.
        self.file
            .write_all(text.as_bytes())
            .map_err(|e| Error::Io(format!("writing {}: {e}", self.path.display())))?;
        self.this_call.push((seq, undo.clone()));
        self.rec.steps.push(undo);
        Ok(seq)
    }

    /// The change of step `seq` was not made (or was not ours to undo).
    pub fn forget(&mut self, seq: u64) -> Result<()> {
        let Some(at) = self.this_call.iter().position(|(s, _)| *s == seq) else {
            return Ok(());
        };
        let (_, undo) = self.this_call.remove(at);
        if let Some(i) = self.rec.steps.iter().rposition(|u| *u == undo) {
            self.rec.steps.remove(i);
        }
        self.file
            .write_all(line(&Entry::Forget { seq }).as_bytes())
            .map_err(|e| Error::Io(format!("writing {}: {e}", self.path.display())))
    }

    /// This call's steps still standing, in the order they were made.
    pub fn this_call(&self) -> impl DoubleEndedIterator<Item = &(u64, Undo)> {
        self.this_call.iter()
    }

    /// The record before this call, if there was one.
    pub fn before(&self) -> Option<&Record> {
        self.before.as_ref()
    }

    /// The record with this call's steps.
    pub fn record(&self) -> &Record {
        &self.rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Side;
    use cni::netlink::{Family, Rule};

    fn rule(t: u32) -> Undo {
        Undo::DelRule {
            side: Side::Pod,
            rule: Rule::new(Family::V4, 1000, t),
        }
    }

    #[test]
    fn steps_are_written_ahead_and_forgotten_ones_drop_out() {
        let root = tempfile::tempdir().unwrap();
        let a = Attachments::open(root.path(), "ctr1", true)
            .unwrap()
            .unwrap();
        let plan = Plan::default();
        let mut w = a
            .begin(
                "net1",
                Origin::default(),
                Layout::UnderlayLater,
                &plan,
                None,
            )
            .unwrap();
        w.push(rule(101)).unwrap();
        let s = w.push(rule(102)).unwrap();
        w.push(rule(103)).unwrap();
        w.forget(s).unwrap();
        drop(w);
        let r = a.read("net1").unwrap().unwrap();
        assert_eq!(r.steps, vec![rule(101), rule(103)]);
        assert_eq!(r.layout, Layout::UnderlayLater);
        let mode = std::fs::metadata(a.path("net1")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );

        // A repeated ADD continues the record: numbers do not repeat.
        let again = a
            .begin(
                "net1",
                Origin::default(),
                Layout::UnderlayLater,
                &plan,
                Some(r),
            )
            .unwrap();
        let mut again = again;
        let s2 = again.push(rule(104)).unwrap();
        assert!(s2 > s);
        again.forget(s2).unwrap();
        drop(again);
        assert_eq!(
            a.read("net1").unwrap().unwrap().steps,
            vec![rule(101), rule(103)]
        );
    }

    #[test]
    fn an_unfinished_last_line_is_a_step_never_taken() {
        let root = tempfile::tempdir().unwrap();
        let a = Attachments::open(root.path(), "ctr2", true)
            .unwrap()
            .unwrap();
        let mut w = a
            .begin(
                "eth0",
                Origin::default(),
                Layout::UnderlayFirst,
                &Plan::default(),
                None,
            )
            .unwrap();
        w.push(rule(100)).unwrap();
        drop(w);
        let path = a.path("eth0");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"step\":{\"seq\":9,\"undo\":\"delR")
            .unwrap();
        assert_eq!(a.read("eth0").unwrap().unwrap().steps, vec![rule(100)]);
        // Garbage in the middle is not ours: an error naming the file.
        std::fs::write(&path, "{}\nnot json\n").unwrap();
        let e = a.read("eth0").unwrap_err().to_string();
        assert!(e.contains("nic-eth0"), "{e}");
    }

    #[test]
    fn siblings_and_removal() {
        let root = tempfile::tempdir().unwrap();
        let a = Attachments::open(root.path(), "ctr3", true)
            .unwrap()
            .unwrap();
        for n in ["eth0", "net1", "net2"] {
            drop(
                a.begin(
                    n,
                    Origin {
                        netns_inode: Some(7),
                        ..Origin::default()
                    },
                    Layout::UnderlayLater,
                    &Plan::default(),
                    None,
                )
                .unwrap(),
            );
        }
        let names: Vec<String> = a
            .siblings("net1", Some(7))
            .into_iter()
            .map(|r| r.ifname)
            .collect();
        assert_eq!(names, ["eth0", "net2"]);
        // Records of another netns (an earlier pod of the same ID) are not siblings.
        assert!(a.siblings("net1", Some(8)).is_empty());
        for n in ["eth0", "net1", "net2"] {
            a.remove(n).unwrap();
        }
        assert!(!root.path().join("ctr3").exists());
        assert!(Attachments::open(root.path(), "ctr3", false)
            .unwrap()
            .is_none());
    }

    #[test]
    fn an_oversized_record_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let a = Attachments::open(root.path(), "ctr4", true)
            .unwrap()
            .unwrap();
        let big = vec![b'x'; (LIMIT + 1) as usize];
        std::fs::write(a.path("eth0"), big).unwrap();
        assert!(a.read("eth0").is_err());
    }
}
