//! The report: rows, checks (see [`super::checks`]) and its three
//! renderings (JSON, Markdown, SVG).

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::burst::{BurstReport, Prefill};
use super::cases::{Kind, RowSpec};
use super::datapath::{self, DatapathReport};
use super::stats::{Sample, Stats};
use super::{NodeFill, Options};

#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub started_utc: String,
    pub duration_s: f64,
    pub iterations: usize,
    /// Rounds of the paired first-NIC DEL rows.
    pub del_rounds: usize,
    pub warmup: usize,
    pub smoke: bool,
    pub bin_dir: String,
    pub kernel: String,
    pub cpus: usize,
    /// `/proc/loadavg` at the start: other work sharing the machine.
    pub loadavg: String,
}

impl Meta {
    pub fn now(opts: &Options) -> Meta {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Meta {
            started_utc: utc_now(),
            duration_s: 0.0,
            iterations: opts.iterations,
            del_rounds: opts.iterations.max(opts.del_rounds),
            warmup: opts.warmup,
            smoke: opts.smoke,
            bin_dir: opts.bin_dir.display().to_string(),
            kernel: read("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            loadavg: read("/proc/loadavg"),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` without a date library (days-to-civil).
pub(crate) fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// One measured exec (a plugin, a verb, a scenario).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Row {
    pub id: String,
    pub label: String,
    pub group: String,
    pub kind: Kind,
    pub n: usize,
    pub failures: usize,
    pub errors: Vec<String>,
    pub skipped: Option<String>,
    pub stats: Option<Stats>,
    pub samples: Vec<Sample>,
}

impl Row {
    pub fn new(spec: &RowSpec) -> Row {
        Row {
            id: spec.id.clone(),
            label: spec.label.clone(),
            group: spec.group.clone(),
            kind: spec.kind,
            n: 0,
            failures: 0,
            errors: Vec::new(),
            skipped: None,
            stats: None,
            samples: Vec::new(),
        }
    }

    pub fn finish(&mut self) {
        self.n = self.samples.len();
        self.stats = Stats::of(&self.samples);
    }

    pub fn median_ms(&self) -> Option<f64> {
        self.stats.map(|s| s.wall_ms.median)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Binary {
    pub name: String,
    pub path: String,
    pub bytes: u64,
    pub ours: bool,
    /// "static" or "dynamic" (an ELF with a program interpreter), "" when
    /// unreadable: what was measured, since a plain cargo build relinks
    /// coordinator dynamically (scripts/build.sh links it statically).
    pub linkage: String,
}

/// A target of benchmarks.md, judged on this run.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub target: String,
    pub value: String,
    /// `None`: could not be judged (a row is missing or skipped).
    pub pass: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub rows: Vec<Row>,
    pub binaries: Vec<Binary>,
    pub node_fill: NodeFill,
    pub ipam_prefill: Vec<Prefill>,
    pub burst: Option<BurstReport>,
    pub datapath: Option<DatapathReport>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
}

/// Does this coordinator-ipam answer VERSION like a CNI plugin?
pub fn ipam_works(bin_dir: &Path) -> Result<(), String> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin_dir.join("coordinator-ipam"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut s) = child.stdin.take() {
        let _ = s.write_all(br#"{"cniVersion":"1.0.0"}"#);
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| "no VERSION answer on stdout".to_string())?;
    match v.get("supportedVersions") {
        Some(serde_json::Value::Array(_)) => Ok(()),
        _ => Err("VERSION answer has no supportedVersions".into()),
    }
}

pub fn binaries(bin_dir: &Path) -> Vec<Binary> {
    let ours = ["coordinator", "coordinator-ipam"].map(|n| (bin_dir.join(n), true));
    let refs =
        ["sbr", "macvlan", "host-local"].map(|n| (PathBuf::from("/usr/lib/cni").join(n), false));
    ours.into_iter()
        .chain(refs)
        .filter_map(|(p, ours)| {
            let bytes = std::fs::metadata(&p).ok()?.len();
            Some(Binary {
                name: p.file_name()?.to_string_lossy().into_owned(),
                path: p.display().to_string(),
                bytes,
                ours,
                linkage: linkage(&p).unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Whether the ELF executable at `p` asks for a program interpreter (a
/// `PT_INTERP` program header: dynamically linked). 64-bit little-endian
/// only, as this machine builds.
fn linkage(p: &Path) -> Option<&'static str> {
    let elf = std::fs::read(p).ok()?;
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // ELF magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    const PT_INTERP: u32 = 3;
    let interp = (0..phnum as usize)
        .map(|i| u32_at(phoff + i * phentsize as usize))
        .collect::<Option<Vec<u32>>>()?
        .contains(&PT_INTERP);
    Some(if interp { "dynamic" } else { "static" })
}

impl Report {
    /// Write `latest.json`, `latest.md` and `latest.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::to_string_pretty(self).map_err(io::Error::other)?;
        std::fs::write(dir.join("latest.json"), json + "\n")?;
        std::fs::write(dir.join("latest.md"), self.markdown())?;
        std::fs::write(dir.join("latest.svg"), self.svg())?;
        if let Some(d) = &self.datapath {
            std::fs::write(dir.join("datapath.svg"), datapath::svg(d))?;
        }
        Ok(())
    }

    pub fn markdown(&self) -> String {
        let m = &self.meta;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# Benchmark results{}\n",
            if m.smoke { " (smoke)" } else { "" }
        );
        let _ = writeln!(
            s,
            "{} · {} iterations after {} warm-up ({} rounds for the paired first-NIC DEL rows) · kernel {} · {} CPUs · load at start {} · binaries {} · {:.0} s\n",
            m.started_utc, m.iterations, m.warmup, m.del_rounds, m.kernel, m.cpus, m.loadavg, m.bin_dir, m.duration_s
        );
        s.push_str("Per exec of the named plugin alone (the chain runner's spawn-to-exit of that plugin; earlier plugins of the chain excluded). Wall time in ms, CPU = user+sys (ms), RSS = peak RSS (MiB).\n\n");
        s.push_str("| scenario | plugin, verb | n | fail | min | median | p90 | max | CPU med | RSS max |\n|---|---|---|---|---|---|---|---|---|---|\n");
        for r in self.sorted_rows() {
            match (&r.skipped, r.stats) {
                (Some(why), _) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | skipped: {} |||||||| ",
                        r.group,
                        r.label,
                        one_line(why, 120)
                    );
                }
                (None, Some(st)) => {
                    let w = st.wall_ms;
                    let _ = writeln!(
                        s,
                        "| {} | {} | {} | {} | {:.2} | **{:.2}** | {:.2} | {:.2} | {:.2} | {:.2} |",
                        r.group,
                        if r.kind == Kind::Ours {
                            format!("**{}**", r.label)
                        } else {
                            r.label.clone()
                        },
                        r.n,
                        r.failures,
                        w.min,
                        w.median,
                        w.p90,
                        w.max,
                        st.cpu_ms.median,
                        st.rss_kib.max / 1024.0
                    );
                }
                (None, None) => {
                    let _ = writeln!(
                        s,
                        "| {} | {} | 0 | {} | | | | | | | {}",
                        r.group,
                        r.label,
                        r.failures,
                        one_line(&r.errors.join("; "), 160)
                    );
                }
            }
        }
        s.push_str("\n## Targets (shared/design/benchmarks.md)\n\n| check | target | this run | |\n|---|---|---|---|\n");
        for c in &self.checks {
            let mark = match c.pass {
                Some(true) => "pass",
                Some(false) => "**MISS**",
                None => "n/a",
            };
            let _ = writeln!(s, "| {} | {} | {} | {} |", c.name, c.target, c.value, mark);
        }
        s.push_str("\n## Binaries\n\n| binary | size | linkage |\n|---|---|---|\n");
        for b in &self.binaries {
            let mib = b.bytes as f64 / 1048576.0;
            let _ = writeln!(s, "| {} | {mib:.2} MiB | {} |", b.path, b.linkage);
        }
        if let Some(b) = &self.burst {
            let _ = writeln!(
                s,
                "\n## Burst\n\n{} pods, {} concurrent chains, macvlan + {} + coordinator: ADD {:.2} s ({:.1} pods/s), DEL {:.2} s ({:.1} pods/s); {} ADD / {} DEL failures, {} duplicate IPs, {} leftovers.",
                b.pods, b.concurrency, b.ipam, b.add_seconds, b.add_pods_per_s, b.del_seconds, b.del_pods_per_s,
                b.add_failures, b.del_failures, b.duplicate_ips.len(), b.leaked.len()
            );
            if let (Some(c), Some(a)) = (b.chain_add_ms, b.coordinator_add_ms) {
                let _ = writeln!(
                    s,
                    "Under the burst: whole chain ADD median {:.1} ms (p90 {:.1}); coordinator ADD median {:.1} ms (p90 {:.1}).",
                    c.median, c.p90, a.median, a.p90
                );
            }
            for e in b.errors.iter().chain(b.leaked.iter().take(5)) {
                let _ = writeln!(s, "- {}", one_line(e, 200));
            }
        }
        for p in &self.ipam_prefill {
            let _ = writeln!(
                s,
                "\nIPAM pre-fill, {}: {} ADDs at {}-way concurrency in {:.1} s, {} failures, {} duplicate IPs.",
                p.plugin, p.count, p.concurrency, p.seconds, p.failures, p.duplicate_ips.len()
            );
        }
        let _ = writeln!(
            s,
            "\nNode-size fixture: {} /32 routes and {} neighbours in table {} of the node.",
            self.node_fill.routes, self.node_fill.neighbours, self.node_fill.table
        );
        if let Some(d) = &self.datapath {
            s.push('\n');
            s.push_str(&datapath::markdown(d));
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Rows grouped by scenario (first appearance), ours first in a group.
    pub fn sorted_rows(&self) -> Vec<&Row> {
        let mut groups: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !groups.contains(&r.group.as_str()) {
                groups.push(&r.group);
            }
        }
        let order = |k: Kind| match k {
            Kind::Floor => 0,
            Kind::Ours => 1,
            Kind::Anchor => 2,
        };
        let mut v: Vec<&Row> = self.rows.iter().collect();
        v.sort_by_key(|r| {
            (
                groups
                    .iter()
                    .position(|g| *g == r.group)
                    .unwrap_or(usize::MAX),
                order(r.kind),
            )
        });
        v
    }

    /// Median wall time per row (bar) with min..p90 (whisker), log scale.
    pub fn svg(&self) -> String {
        let rows: Vec<&Row> = self
            .sorted_rows()
            .into_iter()
            .filter(|r| r.stats.is_some())
            .collect();
        let (label_w, plot_w, row_h, top) = (430.0, 520.0, 20.0, 50.0);
        let width = label_w + plot_w + 30.0;
        let height = top + row_h * rows.len() as f64 + 40.0;
        let max = rows
            .iter()
            .filter_map(|r| r.stats.map(|s| s.wall_ms.p90))
            .fold(1.0_f64, f64::max);
        let (lo, hi) = (0.5_f64.log10(), (max * 1.5).log10().max(1.0));
        let x = |ms: f64| label_w + (ms.max(0.5).log10() - lo) / (hi - lo) * plot_w;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="14" font-weight="bold">Median wall time per exec (ms, log scale; whisker min..p90) — {}</text>"#,
            xml(&self.meta.started_utc)
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="38" fill="#555">blue: ours · grey: reference anchors · green: /bin/true exec floor</text>"##
        );
        let mut tick = 1.0;
        while tick <= 10f64.powf(hi) {
            let tx = x(tick);
            let _ = writeln!(
                s,
                r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#555">{tick}</text>"##,
                height - 35.0,
                height - 20.0
            );
            tick *= 10.0;
        }
        for (i, r) in rows.iter().enumerate() {
            let Some(st) = r.stats else { continue };
            let y = top + row_h * i as f64;
            let color = match r.kind {
                Kind::Ours => "#2b6cb0",
                Kind::Anchor => "#999",
                Kind::Floor => "#38a169",
            };
            let w = st.wall_ms;
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{} · {}</text>"#,
                label_w - 8.0,
                y + 14.0,
                xml(&r.group),
                xml(&r.label)
            );
            let _ = writeln!(
                s,
                r#"<rect x="{label_w}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"/>"#,
                y + 3.0,
                (x(w.median) - label_w).max(1.0),
                row_h - 6.0
            );
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="black"/><text x="{:.1}" y="{:.1}">{:.2}</text>"#,
                x(w.min),
                y + row_h / 2.0,
                x(w.p90),
                y + row_h / 2.0,
                x(w.p90) + 4.0,
                y + 14.0,
                w.median
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c == '\n' || c == '|' { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF header and program headers of `types`.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut e = vec![0u8; 64];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            e.extend(ph);
        }
        e
    }

    #[test]
    fn linkage_is_read_from_the_program_headers() {
        let dir = std::env::temp_dir().join(format!("linkage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        // PT_PHDR, PT_INTERP, PT_LOAD / PT_LOAD, PT_DYNAMIC (a static-pie).
        assert_eq!(linkage(&write("dyn", &elf(&[6, 3, 1]))), Some("dynamic"));
        assert_eq!(linkage(&write("static", &elf(&[1, 2]))), Some("static"));
        // Not an ELF, or cut short: unknown, no panic.
        assert_eq!(linkage(&write("text", b"#!/bin/sh\n")), None);
        assert_eq!(linkage(&write("short", &elf(&[1, 3])[..100])), None);
        assert_eq!(linkage(&dir.join("missing")), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn utc_format() {
        let s = utc_now();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}
