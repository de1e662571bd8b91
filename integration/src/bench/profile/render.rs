//! The profile as Markdown: the anchors of the run, then the category table
//! (share of CPU and ms per exec), then the hottest symbols.

use std::fmt::Write as _;

use super::classify::{top, Breakdown, Category};
use super::ProfileReport;

impl ProfileReport {
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let _ = writeln!(m, "# Where the coordinator's ADD spends its CPU\n");
        let _ = writeln!(
            m,
            "{} · {} ADD/DEL pairs of the underlay 1-NIC IPv4 case profiled · perf cpu-clock \
             every {} µs with call graphs · kernel {} · {} CPUs · load at start {} · {:.0} s · \
             profiled binary {}\n",
            self.started_utc,
            self.pairs,
            self.period_us,
            self.kernel,
            self.cpus,
            self.loadavg,
            self.duration_s,
            self.profiled
        );
        let _ = writeln!(
            m,
            "Reproduce (as root): `scripts/profile-add.sh` (builds the release binaries and the \
             `profiling` profile: release with symbols, line tables and frame pointers, then runs \
             `target/release/bench profile`).\n"
        );
        m.push_str(&self.anchor_table());
        m.push_str(&self.category_table());
        m.push_str(&self.hot_symbols());
        m
    }

    /// The README's table: category, share and ms per ADD (and DEL).
    pub fn category_table(&self) -> String {
        let mut m = String::new();
        let (add_ms, del_ms) = (
            self.mean_cpu_ms("plain/add").unwrap_or(0.0),
            self.mean_cpu_ms("plain/del").unwrap_or(0.0),
        );
        let _ = writeln!(
            m,
            "## CPU by category\n\nShare of the profiled processes' samples ({} ADD, {} DEL \
             samples); ms = share × the profiled build's mean CPU per exec timed without perf in \
             the same rounds ({add_ms:.2} ms ADD, {del_ms:.2} ms DEL).\n",
            self.add.samples, self.del.samples
        );
        m.push_str("| where | ADD share | ADD ms | DEL share | DEL ms |\n|---|---|---|---|---|\n");
        for c in Category::ALL {
            let (a, d) = (self.add.share(c), self.del.share(c));
            if a == 0.0 && d == 0.0 {
                continue;
            }
            let _ = writeln!(
                m,
                "| {} | {:.1} % | {:.2} | {:.1} % | {:.2} |",
                c.label(),
                a * 100.0,
                a * add_ms,
                d * 100.0,
                d * del_ms
            );
        }
        let _ = writeln!(
            m,
            "| **total** | 100 % | **{add_ms:.2}** | 100 % | **{del_ms:.2}** |\n"
        );
        m
    }

    fn anchor_table(&self) -> String {
        let mut m = String::from(
            "## Anchors, same rounds\n\nEach round times the anchors without perf (rotating \
             order), then one profiled pair under perf. Wall and CPU (user+sys) per exec, ms.\n\n\
             | exec | n | wall median | CPU median | CPU mean |\n|---|---|---|---|---|\n",
        );
        for r in &self.anchors {
            let Some(st) = r.stats else { continue };
            let _ = writeln!(
                m,
                "| {} | {} | {:.2} | {:.2} | {:.2} |",
                r.label,
                r.n,
                st.wall_ms.median,
                st.cpu_ms.median,
                self.mean_cpu_ms(&r.id).unwrap_or(0.0)
            );
        }
        let ratio = |a: &str, b: &str| {
            self.row(a)
                .zip(self.row(b))
                .and_then(|(a, b)| Some(a.median_ms()? / b.median_ms()?))
        };
        if let Some(v) = ratio("release/add", "sbr/add") {
            let _ = writeln!(
                m,
                "\nRelease coordinator ADD / sbr ADD (wall medians): x{v:.2}."
            );
        }
        if let Some(v) = ratio("plain/add", "release/add") {
            let _ = writeln!(
                m,
                "Profiled build / release build, ADD wall: x{v:.2} (the profile speaks for the \
                 release build when this is near 1)."
            );
        }
        m.push('\n');
        m
    }

    fn hot_symbols(&self) -> String {
        let mut m = String::new();
        let list = |m: &mut String, title: &str, b: &Breakdown, map, n| {
            let _ = writeln!(m, "{title}\n\n| samples | share | symbol |\n|---|---|---|");
            for (sym, k) in top(map, n) {
                let share = k as f64 / b.samples.max(1) as f64 * 100.0;
                let _ = writeln!(m, "| {k} | {share:.1} % | `{sym}` |");
            }
            m.push('\n');
        };
        list(
            &mut m,
            "## ADD: hottest leaf symbols",
            &self.add,
            &self.add.leaves,
            20,
        );
        list(
            &mut m,
            "## ADD: netlink round trips, by rtnetlink handler (else syscall)",
            &self.add,
            &self.add.netlink_ops,
            15,
        );
        list(
            &mut m,
            "## ADD: other kernel work, by syscall",
            &self.add,
            &self.add.other_kernel,
            12,
        );
        list(
            &mut m,
            "## ADD: user code, by leaf symbol",
            &self.add,
            &self.add.user_code,
            15,
        );
        list(
            &mut m,
            "## DEL: netlink round trips, by rtnetlink handler (else syscall)",
            &self.del,
            &self.del.netlink_ops,
            12,
        );
        m
    }
}
