//! Where a plugin's CPU goes: `perf script` call stacks sorted into the
//! categories of issue 15 by the kernel symbols, user symbols and DSOs on
//! each stack. The rules are plain data (first match wins), tested below.

use std::collections::BTreeMap;

use serde::Serialize;

/// One frame of a call stack: symbol (demangled, `[unknown]` when perf had
/// none) and the DSO's file name (`[kernel.kallsyms]` for the kernel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub sym: String,
    pub dso: String,
}

impl Frame {
    pub fn kernel(&self) -> bool {
        self.dso.starts_with('[')
    }
}

/// One sample: the process it hit and its stack, leaf first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackSample {
    pub comm: String,
    pub pid: u32,
    pub frames: Vec<Frame>,
}

/// Parse `perf script -F comm,pid,ip,sym,dso` output (call graphs on): a
/// header line per sample, then one indented line per frame.
pub fn parse(text: &str) -> Vec<StackSample> {
    let mut out: Vec<StackSample> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with([' ', '\t']) {
            let mut words: Vec<&str> = line.split_whitespace().collect();
            let Some(pid) = words.pop().and_then(|w| w.parse::<u32>().ok()) else {
                continue;
            };
            out.push(StackSample {
                comm: words.join(" "),
                pid,
                frames: Vec::new(),
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        // "<hex ip> <symbol> (<dso>)"; the symbol may hold spaces and parens.
        let t = line.trim();
        let rest = t.split_once(char::is_whitespace).map_or("", |(_, r)| r);
        let (sym, dso) = match rest.rfind(" (") {
            Some(i) if rest.ends_with(')') => (&rest[..i], &rest[i + 2..rest.len() - 1]),
            _ => (rest, ""),
        };
        let dso = dso.rsplit('/').next().unwrap_or(dso);
        cur.frames.push(Frame {
            sym: sym.trim().to_string(),
            dso: dso.to_string(),
        });
    }
    out
}

/// The categories, in the order the table prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Category {
    Spawn,
    ExecLoader,
    RuntimeStart,
    Logging,
    NetnsEntry,
    VethCreation,
    NfTables,
    Sysctl,
    Netlink,
    PageFaults,
    OtherKernel,
    UserCode,
    Libc,
    Exit,
}

impl Category {
    pub const ALL: [Category; 14] = [
        Category::Spawn,
        Category::ExecLoader,
        Category::RuntimeStart,
        Category::Logging,
        Category::NetnsEntry,
        Category::VethCreation,
        Category::NfTables,
        Category::Sysctl,
        Category::Netlink,
        Category::PageFaults,
        Category::OtherKernel,
        Category::UserCode,
        Category::Libc,
        Category::Exit,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Category::Spawn => "spawn: the runtime's forked child before execve",
            Category::ExecLoader => {
                "exec and loader (execve, ld.so or static start-up, its page faults)"
            }
            Category::RuntimeStart => {
                "async runtime: start-up, epoll reactor, shutdown (tokio, mio)"
            }
            Category::Logging => "logging (tracing set-up and events)",
            Category::NetnsEntry => "netns entry (setns)",
            Category::VethCreation => {
                "veth pair creation / deletion (veth_newlink, (un)register_netdevice)"
            }
            Category::NfTables => "nf_tables batch (nfnetlink, nf_tables_*)",
            Category::Sysctl => "sysctl reads and writes (proc_sys_*)",
            Category::Netlink => "netlink round trips (rtnetlink, sockets)",
            Category::PageFaults => "page faults after the loader (text, heap, stack)",
            Category::OtherKernel => "other kernel work (files, mmap, ...)",
            Category::UserCode => "user code: ours, std and crates",
            Category::Libc => "libc (malloc, memcpy, ...)",
            Category::Exit => "exit (exit_group, exit_mmap, closing files)",
        }
    }
}

/// A rule: the category of any stack holding a kernel frame whose symbol
/// starts with one of `kernel`, a user frame whose symbol contains one of
/// `user`, or a user frame from a DSO whose name starts with one of `dso`.
pub struct Rule {
    pub category: Category,
    pub kernel: &'static [&'static str],
    pub user: &'static [&'static str],
    pub dso: &'static [&'static str],
}

/// Checked first: execve tears down the forked mm with `exit_mmap` too, and
/// its first part still runs under the spawner's comm.
pub const EXEC: Rule = Rule {
    category: Category::ExecLoader,
    kernel: &[
        "bprm_execve",
        "do_execveat_common",
        "load_elf_binary",
        "begin_new_exec",
        "__x64_sys_execve",
    ],
    user: &[
        "_dl_start",
        "_dl_relocate_object",
        "_dl_init",
        "__libc_early_init",
        // A static executable's start-up, run from __libc_start_main
        // (which is below main too, so not named itself).
        "_dl_relocate_static_pie",
        "_dl_aux_init",
        "__libc_setup_tls",
        "__libc_init_secure",
        "_dl_non_dynamic_init",
        "apply_irel",
        "init_cpu_features",
        // Its CPU probing (cpuid), which ld.so does for a dynamic one.
        "update_active",
        "get_common_indices",
        "get_extended_indices",
        "handle_amd",
        "handle_intel",
        "handle_zhaoxin",
        "dl_init_cacheinfo",
    ],
    dso: &["ld-linux"],
};

/// After [`EXEC`] and the spawn check, first match wins: the specific kernel
/// paths before the generic netlink one, runtime and logging frames before
/// the syscalls they make.
pub const RULES: &[Rule] = &[
    Rule {
        category: Category::Exit,
        kernel: &[
            "do_exit",
            "do_group_exit",
            "__x64_sys_exit_group",
            "exit_mmap",
        ],
        user: &["__run_exit_handlers", "_dl_fini", "_IO_cleanup"],
        dso: &[],
    },
    Rule {
        category: Category::VethCreation,
        kernel: &[
            "veth_",
            "register_netdevice",
            "rtnl_create_link",
            "rtnl_newlink_create",
            "__dev_change_net_namespace",
            "rtnl_dellink",
            "unregister_netdevice",
            "netdev_run_todo",
        ],
        user: &[],
        dso: &[],
    },
    Rule {
        category: Category::NfTables,
        kernel: &["nf_tables_", "nfnetlink_", "nft_"],
        user: &[],
        dso: &[],
    },
    Rule {
        category: Category::Sysctl,
        kernel: &["proc_sys_"],
        user: &[],
        dso: &[],
    },
    Rule {
        category: Category::NetnsEntry,
        kernel: &["__x64_sys_setns"],
        user: &[],
        dso: &[],
    },
    Rule {
        category: Category::RuntimeStart,
        // The reactor's own syscalls: only the async runtime makes them.
        kernel: &[
            "do_epoll_create",
            "__x64_sys_epoll_create",
            "do_epoll_ctl",
            "__x64_sys_epoll_ctl",
            "do_epoll_wait",
            "__x64_sys_epoll_wait",
            "__x64_sys_epoll_pwait",
            "__x64_sys_eventfd",
            "do_eventfd",
        ],
        user: &[
            "tokio::runtime::builder",
            "tokio::runtime::driver",
            "tokio::runtime::io::driver",
            "tokio::runtime::io::registration",
            "tokio::runtime::signal",
            "tokio::runtime::time",
            "current_thread::CurrentThread::new",
            "current_thread::CurrentThread::shutdown",
            "tokio::runtime::runtime::Runtime as core::ops::drop",
            "mio::poll",
            "mio::sys",
            "cni::netlink::door::runtime",
        ],
        dso: &[],
    },
    Rule {
        category: Category::Logging,
        kernel: &[],
        user: &["tracing_subscriber::", "tracing_core::", "cni::logging"],
        dso: &[],
    },
    Rule {
        category: Category::Netlink,
        kernel: &[
            "netlink_",
            "rtnetlink_rcv",
            "rtnl_",
            "__sys_sendmsg",
            "___sys_sendmsg",
            "__sys_recvmsg",
            "___sys_recvmsg",
            "__sys_sendto",
            "__sys_recvfrom",
            "__sys_socket",
            "__sys_bind",
            "__sys_setsockopt",
            "__sys_getsockname",
            "sock_close",
        ],
        user: &[],
        dso: &[],
    },
    Rule {
        category: Category::PageFaults,
        kernel: &["asm_exc_page_fault", "exc_page_fault", "do_user_addr_fault"],
        user: &[],
        dso: &[],
    },
];

/// The category of one sample of the profiled program `exe_comm`.
pub fn classify(s: &StackSample, exe_comm: &str) -> Category {
    let hit = |r: &Rule| {
        s.frames.iter().any(|f| {
            if f.kernel() {
                r.kernel.iter().any(|k| f.sym.starts_with(k))
            } else {
                r.user.iter().any(|u| f.sym.contains(u))
                    || r.dso.iter().any(|d| f.dso.starts_with(d))
            }
        })
    };
    // In a static executable the start-up is partly inlined into
    // __libc_start_main itself: user work nearest the leaf in its own body
    // (not in main, which it calls) is start-up too.
    let startup = s.frames.iter().find(|f| !f.kernel());
    if hit(&EXEC) || startup.is_some_and(|f| f.sym.starts_with("__libc_start_main")) {
        return EXEC.category;
    }
    // Before execve names the process, the sample is the forked child of
    // whoever spawned it (setns into the node netns, dup2): the runtime's.
    if s.comm != exe_comm {
        return Category::Spawn;
    }
    if let Some(r) = RULES.iter().find(|r| hit(r)) {
        return r.category;
    }
    match s.frames.first() {
        Some(f) if f.kernel() => Category::OtherKernel,
        Some(f) if f.dso.starts_with("libc.so") => Category::Libc,
        _ => Category::UserCode,
    }
}

/// What a sample of "other kernel work" was doing: its syscall, else the
/// kernel frame nearest user space.
pub fn kernel_entry(s: &StackSample) -> String {
    let mut kernel = s.frames.iter().filter(|f| f.kernel());
    let sys = kernel
        .clone()
        .find(|f| f.sym.starts_with("__x64_sys_") || f.sym.starts_with("__do_sys_"));
    sys.or_else(|| kernel.next_back())
        .map(|f| f.sym.clone())
        .unwrap_or_default()
}

/// Which request a netlink sample served: the handler rtnetlink dispatched
/// to (`rtnl_newroute`, `inet_dump_ifaddr`, ...), else its syscall.
pub fn netlink_op(s: &StackSample) -> String {
    let k: Vec<&str> = s
        .frames
        .iter()
        .filter(|f| f.kernel())
        .map(|f| f.sym.as_str())
        .collect();
    // Leaf first: the frame just below the dispatcher is the handler
    // (`rtnetlink_rcv_msg` is often inlined into `netlink_rcv_skb`).
    let below = |name: &str| {
        let i = k.iter().position(|f| *f == name)?;
        k[..i]
            .iter()
            .rev()
            .find(|f| !f.starts_with("rtnetlink_rcv_msg"))
            .map(|f| f.to_string())
    };
    below("rtnl_dumpit")
        .or_else(|| below("netlink_rcv_skb"))
        .unwrap_or_else(|| kernel_entry(s))
}

/// Sample counts per category and the hottest leaf symbols of a set of
/// processes (one verb of one plugin).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Breakdown {
    pub processes: usize,
    pub samples: u64,
    pub by_category: BTreeMap<Category, u64>,
    /// Leaf symbol (with its DSO) → samples.
    pub leaves: BTreeMap<String, u64>,
    /// Syscall (or kernel entry) → samples, for [`Category::OtherKernel`].
    pub other_kernel: BTreeMap<String, u64>,
    /// Leaf symbol → samples, for [`Category::UserCode`].
    pub user_code: BTreeMap<String, u64>,
    /// rtnetlink handler (or syscall) → samples, for [`Category::Netlink`].
    pub netlink_ops: BTreeMap<String, u64>,
}

impl Breakdown {
    pub fn add(&mut self, s: &StackSample, exe_comm: &str) {
        let c = classify(s, exe_comm);
        self.samples += 1;
        *self.by_category.entry(c).or_default() += 1;
        if let Some(f) = s.frames.first() {
            *self
                .leaves
                .entry(format!("{} ({})", f.sym, f.dso))
                .or_default() += 1;
            if c == Category::UserCode {
                *self.user_code.entry(f.sym.clone()).or_default() += 1;
            }
        }
        if c == Category::OtherKernel {
            *self.other_kernel.entry(kernel_entry(s)).or_default() += 1;
        }
        if c == Category::Netlink {
            *self.netlink_ops.entry(netlink_op(s)).or_default() += 1;
        }
    }

    pub fn share(&self, c: Category) -> f64 {
        match self.samples {
            0 => 0.0,
            n => *self.by_category.get(&c).unwrap_or(&0) as f64 / n as f64,
        }
    }
}

/// The `n` largest entries of a count map, largest first.
pub fn top(map: &BTreeMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// The processes of one program in a profile, in the order they first
/// appear, with their samples. A pid belongs to the program when any of its
/// samples carries the program's comm (its pre-exec samples come along).
pub fn processes(samples: Vec<StackSample>, exe_comm: &str) -> Vec<(u32, Vec<StackSample>)> {
    let ours: std::collections::HashSet<u32> = samples
        .iter()
        .filter(|s| s.comm == exe_comm)
        .map(|s| s.pid)
        .collect();
    let mut order: Vec<(u32, Vec<StackSample>)> = Vec::new();
    let mut index: BTreeMap<u32, usize> = BTreeMap::new();
    for s in samples.into_iter().filter(|s| ours.contains(&s.pid)) {
        let i = *index.entry(s.pid).or_insert_with(|| {
            order.push((s.pid, Vec::new()));
            order.len() - 1
        });
        order[i].1.push(s);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "\
bench 4242 
\tffffffff8135c57e schedule_tail ([kernel.kallsyms])
\tffffffff81000130 ret_from_fork_asm ([kernel.kallsyms])

bench 4242 
\tffffffff8135c57e __x64_sys_dup2 ([kernel.kallsyms])
\t           d3bd3 __GI___dup2 (/usr/lib/x86_64-linux-gnu/libc.so.6)

coordinator 4242 
\tffffffff81aa0001 veth_newlink ([kernel.kallsyms])
\tffffffff81aa0002 rtnl_newlink ([kernel.kallsyms])
\tffffffff81aa0003 netlink_sendmsg ([kernel.kallsyms])
\t           10000 __libc_sendmsg (/usr/lib/x86_64-linux-gnu/libc.so.6)
\t           20000 cni::netlink::door::Door::request (/work/target/profiling/coordinator)

coordinator 4242 
\t           20000 <serde_json::de::Deserializer<R> as serde::Deserializer>::deserialize_map (/work/target/profiling/coordinator)
\t           20001 main (/work/target/profiling/coordinator)

sbr 5000 
\t           20000 runtime.main (/usr/lib/cni/sbr)
";

    #[test]
    fn parses_headers_frames_and_dsos() {
        let s = parse(SCRIPT);
        assert_eq!(s.len(), 5);
        assert_eq!((s[0].comm.as_str(), s[0].pid), ("bench", 4242));
        assert_eq!(
            s[2].frames[0],
            Frame {
                sym: "veth_newlink".into(),
                dso: "[kernel.kallsyms]".into()
            }
        );
        assert_eq!(s[2].frames[3].dso, "libc.so.6");
        assert_eq!(
            s[3].frames[0].sym,
            "<serde_json::de::Deserializer<R> as serde::Deserializer>::deserialize_map"
        );
        assert_eq!(s[3].frames[0].dso, "coordinator");
    }

    fn sample(comm: &str, frames: &[(&str, &str)]) -> StackSample {
        StackSample {
            comm: comm.into(),
            pid: 1,
            frames: frames
                .iter()
                .map(|(s, d)| Frame {
                    sym: s.to_string(),
                    dso: d.to_string(),
                })
                .collect(),
        }
    }

    const K: &str = "[kernel.kallsyms]";
    const BIN: &str = "coordinator";

    #[test]
    fn each_rule_names_its_category() {
        let cases = [
            (
                sample("bench", &[("schedule_tail", K), ("ret_from_fork_asm", K)]),
                Category::Spawn,
            ),
            (
                // The spawner entering the node netns before exec is not ours.
                sample(
                    "bench",
                    &[("switch_task_namespaces", K), ("__x64_sys_setns", K)],
                ),
                Category::Spawn,
            ),
            (
                sample("bench", &[("load_elf_binary", K), ("bprm_execve", K)]),
                Category::ExecLoader,
            ),
            (
                // execve's teardown of the forked mm is exec, not exit.
                sample(
                    BIN,
                    &[("exit_mmap", K), ("mmput", K), ("begin_new_exec", K)],
                ),
                Category::ExecLoader,
            ),
            (
                sample(BIN, &[("_dl_relocate_object", "ld-linux-x86-64.so.2")]),
                Category::ExecLoader,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("clear_page_erms", K),
                        ("exc_page_fault", K),
                        ("_dl_start", "ld-linux-x86-64.so.2"),
                    ],
                ),
                Category::ExecLoader,
            ),
            (
                // A static executable's start-up is loader work; what runs
                // under main, also below __libc_start_main, is not.
                sample(
                    BIN,
                    &[("init_cpu_features", BIN), ("__libc_start_main_impl", BIN)],
                ),
                Category::ExecLoader,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("exc_page_fault", K),
                        ("__libc_start_main_impl", BIN),
                        ("_start", BIN),
                    ],
                ),
                Category::ExecLoader,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("serde_json::de::from_slice", BIN),
                        ("main", BIN),
                        ("__libc_start_main_impl", BIN),
                    ],
                ),
                Category::UserCode,
            ),
            (
                sample(
                    BIN,
                    &[("unmap_page_range", K), ("exit_mmap", K), ("do_exit", K)],
                ),
                Category::Exit,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("veth_newlink", K),
                        ("rtnl_newlink", K),
                        ("netlink_sendmsg", K),
                    ],
                ),
                Category::VethCreation,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("rcu_barrier", K),
                        ("netdev_run_todo", K),
                        ("rtnl_dellink", K),
                    ],
                ),
                Category::VethCreation,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("nf_tables_newtable", K),
                        ("nfnetlink_rcv", K),
                        ("netlink_sendmsg", K),
                    ],
                ),
                Category::NfTables,
            ),
            (
                sample(
                    BIN,
                    &[("devinet_conf_proc", K), ("proc_sys_call_handler", K)],
                ),
                Category::Sysctl,
            ),
            (
                sample(
                    BIN,
                    &[("switch_task_namespaces", K), ("__x64_sys_setns", K)],
                ),
                Category::NetnsEntry,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("do_epoll_create", K),
                        ("epoll_create1", "libc.so.6"),
                        ("mio::poll::Poll::new", BIN),
                        ("tokio::runtime::builder::Builder::build", BIN),
                    ],
                ),
                Category::RuntimeStart,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("ep_insert", K),
                        ("do_epoll_ctl", K),
                        ("epoll_ctl", "libc.so.6"),
                        ("cni::netlink::conn::Netlink::open", BIN),
                    ],
                ),
                Category::RuntimeStart,
            ),
            (
                sample(
                    BIN,
                    &[("tracing_subscriber::fmt::SubscriberBuilder::init", BIN)],
                ),
                Category::Logging,
            ),
            (
                sample(BIN, &[("rtnl_dump_ifinfo", K), ("netlink_recvmsg", K)]),
                Category::Netlink,
            ),
            (
                sample(
                    BIN,
                    &[
                        ("clear_page_erms", K),
                        ("asm_exc_page_fault", K),
                        ("main", BIN),
                    ],
                ),
                Category::PageFaults,
            ),
            (
                sample(BIN, &[("do_sys_openat2", K), ("__x64_sys_openat", K)]),
                Category::OtherKernel,
            ),
            (
                sample(BIN, &[("malloc", "libc.so.6"), ("main", BIN)]),
                Category::Libc,
            ),
            (
                sample(BIN, &[("serde_json::de::parse", BIN)]),
                Category::UserCode,
            ),
        ];
        for (s, want) in cases {
            assert_eq!(classify(&s, BIN), want, "{s:?}");
        }
    }

    #[test]
    fn breakdown_counts_shares_and_other_kernel_entries() {
        let mut b = Breakdown::default();
        for s in parse(SCRIPT).iter().filter(|s| s.pid == 4242) {
            b.add(s, BIN);
        }
        b.add(
            &sample(BIN, &[("do_sys_openat2", K), ("__x64_sys_openat", K)]),
            BIN,
        );
        assert_eq!(b.samples, 5);
        assert_eq!(b.by_category.values().sum::<u64>(), 5);
        assert_eq!(b.by_category[&Category::Spawn], 2);
        assert_eq!(b.by_category[&Category::VethCreation], 1);
        assert_eq!(b.by_category[&Category::UserCode], 1);
        assert!((b.share(Category::Spawn) - 0.4).abs() < 1e-9);
        assert_eq!(b.other_kernel["__x64_sys_openat"], 1);
        b.add(
            &sample(
                BIN,
                &[
                    ("fib_table_insert", K),
                    ("inet_rtm_newroute", K),
                    ("rtnetlink_rcv_msg", K),
                    ("netlink_rcv_skb", K),
                    ("__sys_sendto", K),
                    ("__x64_sys_sendto", K),
                ],
            ),
            BIN,
        );
        b.add(
            &sample(BIN, &[("netlink_recvmsg", K), ("__x64_sys_recvfrom", K)]),
            BIN,
        );
        b.add(
            &sample(
                BIN,
                &[
                    ("fib_table_dump", K),
                    ("inet_dump_fib", K),
                    ("rtnl_dumpit", K),
                    ("netlink_dump", K),
                    ("__netlink_dump_start", K),
                    ("rtnetlink_rcv_msg", K),
                    ("netlink_rcv_skb", K),
                ],
            ),
            BIN,
        );
        assert_eq!(b.netlink_ops["inet_rtm_newroute"], 1);
        assert_eq!(b.netlink_ops["inet_dump_fib"], 1);
        assert_eq!(b.netlink_ops["__x64_sys_recvfrom"], 1);
        assert_eq!(top(&b.leaves, 10).len(), 8);
        assert_eq!(top(&b.leaves, 2)[0].1, 1);
    }

    #[test]
    fn processes_keep_first_appearance_order_and_pre_exec_samples() {
        let procs = processes(parse(SCRIPT), BIN);
        assert_eq!(procs.len(), 1, "sbr is not ours");
        assert_eq!(procs[0].0, 4242);
        assert_eq!(procs[0].1.len(), 4, "the two pre-exec samples come along");
    }
}
