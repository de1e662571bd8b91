//! The fuzz harness (issue 12): structure-aware mutation of everything the
//! plugins read, on stable Rust. Each target starts from valid inputs and
//! damages them: config fields, `prevResult` of every spec version, the
//! environment and `CNI_ARGS` for both plugins; ARP and NDP frames for the
//! conflict check's parsers; `state.bin` snapshots and journals for the
//! IPAM store's decoders. Plugins are called in process through
//! `cni::plugin::dispatch` (which turns a panic into code 999, so any 999 is a
//! failure), inside a network namespace of the harness's own, so a call that
//! reaches the kernel only ever touches that; a sample is also exec'd as a
//! runtime would. Parsers run under `catch_unwind`.
//!
//! CI runs a smoke pass (~3 s per target). The long run:
//! `FUZZ_ITERS=1000000 cargo test --release -p cni-tests --test fuzz -- --nocapture`
//! prints per target how many inputs ran and how many were accepted.

use std::collections::{BTreeMap, HashMap};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use cni::plugin::{dispatch, About, Outcome, Plugin};
use cni_tests::exec::{bin_path, one_json, Exec};
use cni_tests::fuzz::{mutate_bytes, mutate_object, random_value, Budget, Rng};
use cni_tests::samples::{sample_result, VERSIONS};
use integration::lab::Netns;
use serde_json::{json, Value};

const ABOUT: About = About {
    name: "fuzz",
    version: "0",
};

/// Run `body` inside a scratch network namespace of the test kit (removed
/// afterwards): whatever a fuzzed call does "on the host" happens there,
/// never in the namespace the tests run in.
fn in_scratch_netns<T: Send>(body: impl FnOnce() -> T + Send) -> T {
    let netns = Netns::scratch("fuzz");
    netns.ns().run(body).expect("enter the scratch netns")
}

fn report(target: &str, n: u64, outcomes: &BTreeMap<String, u64>) {
    eprintln!("fuzz {target}: {n} inputs, 0 panics; outcomes {outcomes:?}");
}

// ---------------------------------------------------------------- plugins

/// The CNI contract for one outcome: exit 0 or 1; stdout one JSON value or,
/// for a verb without a result, nothing; an error has a code and a message,
/// and is never a caught panic (999).
fn check_outcome(cmd: &str, code: Option<i32>, stdout: &str) -> Result<String, String> {
    if !matches!(code, Some(0) | Some(1)) {
        return Err(format!("exit {code:?}"));
    }
    if stdout.trim().is_empty() {
        return match (code, cmd) {
            (Some(0), "DEL" | "CHECK" | "STATUS" | "GC") => Ok(format!("{cmd} ok")),
            _ => Err("nothing printed".into()),
        };
    }
    let v = one_json(stdout)?;
    if code == Some(0) {
        return match cmd {
            "ADD" | "VERSION" => Ok(format!("{cmd} ok")),
            _ => Err(format!("{cmd} printed a result")),
        };
    }
    let ecode = v.get("code").and_then(Value::as_u64).ok_or("no code")?;
    if ecode == 999 {
        return Err("a caught panic (999)".into());
    }
    if v.get("msg")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err("no msg".into());
    }
    Ok(format!("{cmd} {ecode}"))
}

/// One fuzzed call: its environment and stdin.
struct Case {
    cmd: &'static str,
    env: HashMap<String, String>,
    stdin: Vec<u8>,
}

/// The environment: valid most of the time (so the config is reached), else
/// a variable dropped or replaced by a bad value (first value = valid).
fn fuzz_env(
    rng: &mut Rng,
    cmd: &'static str,
    envs: &[(&str, &[&str])],
    i: u64,
) -> HashMap<String, String> {
    let mut env = HashMap::new();
    if cmd != "-" {
        env.insert("CNI_COMMAND".to_string(), cmd.to_string());
    }
    let spoil = rng.chance(30);
    for (k, vals) in envs {
        if spoil && rng.chance(20) {
            continue;
        }
        let mut v = if !spoil || rng.chance(60) {
            vals[0].to_string()
        } else {
            rng.pick(vals).to_string()
        };
        if v.starts_with("fuzz-") {
            // Unique per input: DEL of one case never meets another's state.
            v = format!("{v}{}x{i}", std::process::id());
        }
        env.insert(k.to_string(), v);
    }
    env
}

/// Damage the document's bytes now and then (after structural mutation).
fn damage(rng: &mut Rng, doc: Vec<u8>) -> Vec<u8> {
    let mut doc = doc;
    match rng.below(20) {
        0 => doc.clear(),
        1 => doc = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
        2..=4 => {
            for _ in 0..=rng.below(3) {
                mutate_bytes(rng, &mut doc);
            }
        }
        _ => {}
    }
    doc
}

/// Fuzz one plugin in process; every `sample`th case is also exec'd.
fn fuzz_plugin(
    target: &str,
    plugin: &(dyn Plugin + Sync),
    bin: &str,
    seed: u64,
    make: &(dyn Fn(&mut Rng, u64) -> Case + Sync),
) {
    let budget = Budget::from_env();
    let bin = bin_path(bin);
    let (n, outcomes) = in_scratch_netns(|| {
        let mut rng = Rng(seed);
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        let mut execs = 0;
        let mut i = 0;
        while budget.more(i, 300) {
            let case = make(&mut rng, i);
            let Outcome { stdout, exit_code } = dispatch(plugin, &ABOUT, &case.env, &case.stdin);
            let what = check_outcome(case.cmd, Some(exit_code), &stdout).unwrap_or_else(|e| {
                panic!(
                    "{target} case {i}: {e}\nenv {:?}\nstdin {:?}\nstdout {stdout:?}",
                    case.env,
                    String::from_utf8_lossy(&case.stdin)
                )
            });
            *outcomes.entry(what).or_insert(0) += 1;
            // The process boundary too (stdin reading, exit, stdout), on a sample.
            if i % 97 == 0 && execs < if budget.long() { 500 } else { 20 } {
                execs += 1;
                let mut exec = Exec::new(&bin).stdin(case.stdin.clone());
                for (k, v) in &case.env {
                    exec = exec.env(k, v);
                }
                let run = exec.run();
                check_outcome(case.cmd, run.code, &run.stdout).unwrap_or_else(|e| {
                    panic!("{target} exec'd case {i}: {e}\n{run:?}\nenv {:?}", case.env)
                });
            }
            i += 1;
        }
        (i, outcomes)
    });
    report(target, n, &outcomes);
    // It must have reached past the protocol layer, or it proves little.
    let ok = |verb: &str| outcomes.get(&format!("{verb} ok")).copied().unwrap_or(0);
    assert!(ok("ADD") > 0 && ok("DEL") > 0, "{outcomes:?}");
    assert!(
        outcomes.len() >= 8,
        "too few distinct outcomes: {outcomes:?}"
    );
}

const COORD_KEYS: &[&str] = &[
    "cniVersion",
    "name",
    "type",
    "mode",
    "prevResult",
    "hostRuleTable",
    "hostRulePriority",
    "podReplyTable",
    "podRuleTableFirst",
    "podReplyRulePriority",
    "podRulePriority",
    "podMACPrefix",
    "podRPFilter",
    "vethMTU",
    "vethLinkAddress",
    "serviceCIDR",
    "overlayPodCIDR",
    "hijackCIDR",
    "policyRoutes",
    "detectIPConflict",
    "detectGateway",
    "detectOptions",
    "podDefaultCniNic",
    "podDefaultRouteNic",
    "tunePodRoutes",
    "txQueueLen",
    "quarantineTTL",
    "ipam",
    "dns",
    "runtimeConfig",
    "capabilities",
    "args",
    "cni.dev/valid-attachments",
];
const RESULT_KEYS: &[&str] = &["cniVersion", "ips", "interfaces", "routes", "dns", "x"];

/// Whatever a case writes stays in `dir`: logs off or to stderr, node
/// defaults and the quarantine file pinned (they are fuzzed separately).
fn pin_coordinator(doc: Vec<u8>, dir: &Path, rng: &mut Rng) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&doc) {
        Ok(Value::Object(mut o)) => {
            // Mostly "off" (the first valid level read sets the process's).
            let level = *rng.pick(&["off", "off", "off", "off", "loud"]);
            o.insert(
                "logOptions".into(),
                json!({"logLevel": level, "logFile": "-"}),
            );
            o.insert("defaultsFile".into(), json!(dir.join("defaults.json")));
            o.insert("quarantineFile".into(), json!(dir.join("quarantine.json")));
            Value::Object(o).to_string().into_bytes()
        }
        _ => doc,
    }
}

#[test]
fn fuzz_coordinator_config_env_and_prev_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    // Node defaults merge under the config: a fixed, valid set.
    std::fs::write(
        d.join("defaults.json"),
        r#"{"serviceCIDR": ["10.233.0.0/18"]}"#,
    )
    .expect("defaults");
    let make = move |rng: &mut Rng, i: u64| -> Case {
        let cmd = *rng.pick(&[
            "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "add", "-",
        ]);
        let envs: [(&str, &[&str]); 5] = [
            ("CNI_CONTAINERID", &["fuzz-a", "", "bad/id", "-x", "é"]),
            (
                "CNI_NETNS",
                &[
                    "/nonexistent-fuzz/ns",
                    "",
                    "relative",
                    "/dev/null",
                    "/proc/self/ns/net",
                ],
            ),
            (
                "CNI_IFNAME",
                &["eth0", "net1", "", "0123456789abcdef", "a/b", ".."],
            ),
            ("CNI_PATH", &["/opt/cni/bin", "", ":::"]),
            (
                "CNI_ARGS",
                &[
                    "",
                    "IgnoreUnknown=1;FOO=bar",
                    "K8S_POD_NAME=x;K8S_POD_NAMESPACE=y",
                    "novalue",
                    "=",
                    ";;",
                    "FOO=bar",
                ],
            ),
        ];
        let env = fuzz_env(rng, cmd, &envs, i);
        let version = *rng.pick(&VERSIONS);
        let mode = *rng.pick(&[
            "disabled", "disabled", "disabled", "underlay", "overlay", "auto", "bogus",
        ]);
        let mut conf =
            json!({"cniVersion": version, "name": "fuzznet", "type": "coordinator", "mode": mode});
        if rng.chance(90) {
            let pv = *rng.pick(&VERSIONS);
            conf["prevResult"] = sample_result(pv, pv == "1.1.0");
        }
        for _ in 0..rng.below(4) {
            if rng.chance(60) {
                mutate_object(rng, &mut conf, COORD_KEYS);
            } else if let Some(prev) = conf.get_mut("prevResult") {
                mutate_object(rng, prev, RESULT_KEYS);
            }
        }
        let doc = damage(rng, conf.to_string().into_bytes());
        Case {
            cmd: if cmd == "-" { "" } else { cmd },
            env,
            stdin: pin_coordinator(doc, &d, rng),
        }
    };
    fuzz_plugin(
        "coordinator",
        &coordinator::plugin::Coordinator,
        "coordinator",
        0x5eed_c0de_2026_1122,
        &make,
    );
}

const IPAM_KEYS: &[&str] = &[
    "type",
    "nodeName",
    "pools",
    "sticky",
    "quarantineFile",
    "bogus",
];
const POOL_KEYS: &[&str] = &[
    "name", "subnet", "ranges", "exclude", "gateway", "routes", "nodes", "pods",
];

/// The store and quarantine file stay in `dir` whatever the fuzz wrote.
fn pin_ipam(doc: Vec<u8>, dir: &Path) -> Vec<u8> {
    match serde_json::from_slice::<Value>(&doc) {
        Ok(Value::Object(mut o)) => {
            if let Some(Value::Object(ipam)) = o.get_mut("ipam") {
                ipam.insert(
                    "store".into(),
                    json!({"kind": "file", "dataDir": dir.join("data")}),
                );
                ipam.insert("quarantineFile".into(), json!(dir.join("quarantine.json")));
            }
            Value::Object(o).to_string().into_bytes()
        }
        _ => doc,
    }
}

#[test]
fn fuzz_coordinator_ipam_config_env_and_prev_result() {
    // The store syncs every change: on tmpfs when there is one.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("tempdir");
    let d = dir.path().to_path_buf();
    let make = move |rng: &mut Rng, i: u64| -> Case {
        // CNI_COMMAND is always set: without it this binary is its CLI.
        let cmd = *rng.pick(&[
            "ADD", "ADD", "ADD", "DEL", "DEL", "CHECK", "VERSION", "STATUS", "GC", "", "FROB",
        ]);
        let envs: [(&str, &[&str]); 5] = [
            ("CNI_CONTAINERID", &["fuzz-i", "", "bad/id", "same-id"]),
            ("CNI_NETNS", &["/nonexistent-fuzz/ns", "", "relative"]),
            ("CNI_IFNAME", &["eth0", "net1", "", "a/b"]),
            ("CNI_PATH", &["/opt/cni/bin", ""]),
            (
                "CNI_ARGS",
                &[
                    "",
                    "IP=10.6.1.60",
                    "IP=bogus",
                    "K8S_POD_NAMESPACE=db;K8S_POD_NAME=m-0",
                    "X=1",
                ],
            ),
        ];
        let env = fuzz_env(rng, cmd, &envs, i);
        let version = *rng.pick(&VERSIONS);
        let mut conf = json!({
            "cniVersion": version, "name": "fuzzipam", "type": "macvlan",
            "ipam": {"type": "coordinator-ipam", "nodeName": "fuzz-node", "pools": [
                {"name": "v4", "subnet": "10.6.0.0/16", "ranges": ["10.6.1.10-10.6.1.200"],
                 "gateway": "10.6.0.1", "routes": [{"dst": "0.0.0.0/0", "gw": "10.6.0.1"}]},
                {"name": "v6", "subnet": "fd00:6::/64", "gateway": "fd00:6::1"}],
                "sticky": [{"namespace": "db"}]}
        });
        if cmd == "CHECK" || rng.chance(20) {
            conf["prevResult"] = sample_result(version, false);
        }
        for _ in 0..rng.below(4) {
            match rng.below(4) {
                0 => {
                    if let Some(ipam) = conf.get_mut("ipam") {
                        mutate_object(rng, ipam, IPAM_KEYS)
                    }
                }
                1 => {
                    let p = rng.below(2);
                    let pool = conf
                        .get_mut("ipam")
                        .and_then(|i| i.get_mut("pools"))
                        .and_then(|ps| ps.get_mut(p));
                    if let Some(pool) = pool {
                        mutate_object(rng, pool, POOL_KEYS)
                    }
                }
                2 => mutate_object(
                    rng,
                    &mut conf,
                    &[
                        "cniVersion",
                        "name",
                        "type",
                        "ipam",
                        "runtimeConfig",
                        "args",
                        "prevResult",
                    ],
                ),
                _ => {
                    let ip =
                        *rng.pick(&["10.6.1.50", "10.6.1.50/16", "10.7.0.1", "fd00:6::99", "x"]);
                    conf["runtimeConfig"] = json!({"ips": [ip]});
                }
            }
        }
        let doc = damage(rng, conf.to_string().into_bytes());
        Case {
            cmd,
            env,
            stdin: pin_ipam(doc, &d),
        }
    };
    fuzz_plugin(
        "coordinator-ipam",
        &coordinator_ipam::verbs::IpamPlugin,
        "coordinator-ipam",
        0x1bad_5eed_0000_0007,
        &make,
    );
}

// ---------------------------------------------------------------- decoders

/// Run `parse` on mutations of `seeds` until the budget is spent; a panic
/// fails the test with the input. Returns (inputs, accepted).
fn fuzz_bytes(
    target: &str,
    seed: u64,
    seeds: &[Vec<u8>],
    fix: &dyn Fn(&mut Rng, &mut Vec<u8>),
    parse: &dyn Fn(&[u8]) -> bool,
) -> (u64, u64) {
    let budget = Budget::from_env();
    let mut rng = Rng(seed);
    let (mut i, mut accepted) = (0u64, 0u64);
    while budget.more(i, 10_000) {
        let mut input = rng.pick(seeds).clone();
        for _ in 0..=rng.below(4) {
            mutate_bytes(&mut rng, &mut input);
        }
        // Structure-aware: often repair the checksum so the checks behind it run.
        if rng.chance(60) {
            fix(&mut rng, &mut input);
        }
        match catch_unwind(AssertUnwindSafe(|| parse(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => panic!("{target}: input {i} panicked: {input:02x?}"),
        }
        i += 1;
    }
    let mut outcomes = BTreeMap::new();
    outcomes.insert("accepted".to_string(), accepted);
    outcomes.insert("refused".to_string(), i - accepted);
    report(target, i, &outcomes);
    (i, accepted)
}

#[test]
fn fuzz_arp_parser() {
    use coordinator::detect::arp;
    let mac = [0x02, 0, 0, 0, 0, 1];
    let a = "10.6.1.5".parse().unwrap();
    let b = "10.6.0.1".parse().unwrap();
    let seeds: Vec<Vec<u8>> = [
        arp::probe(mac, a),
        arp::ask(mac, a, b),
        arp::gratuitous(mac, a),
    ]
    .into_iter()
    .map(|f| f.expect("a frame"))
    .collect();
    for s in &seeds {
        assert!(arp::parse(s).is_some(), "seed must parse");
    }
    let (_, accepted) = fuzz_bytes("arp", 0xa4b, &seeds, &|_, _| {}, &|f| {
        arp::parse(f).is_some()
    });
    assert!(accepted > 0);
}

/// Recompute the ICMPv6 checksum of a frame whose headers still say IPv6.
fn fix_icmpv6(frame: &mut [u8]) {
    use pnet_packet::icmpv6::{checksum, Icmpv6Packet, MutableIcmpv6Packet};
    use pnet_packet::ipv6::Ipv6Packet;
    const ETH: usize = 14;
    let Some((src, dst)) = frame
        .get(ETH..)
        .and_then(Ipv6Packet::new)
        .map(|ip| (ip.get_source(), ip.get_destination()))
    else {
        return;
    };
    let Some(icmp) = frame.get_mut(ETH + 40..) else {
        return;
    };
    let sum = match Icmpv6Packet::new(icmp) {
        Some(p) => checksum(&p, &src, &dst),
        None => return,
    };
    if let Some(mut p) = MutableIcmpv6Packet::new(icmp) {
        p.set_checksum(sum);
    }
}

#[test]
fn fuzz_ndp_parser() {
    use coordinator::detect::ndp;
    let mac = [0x02, 0, 0, 0, 0, 1];
    let a = "fd00:6::5".parse().unwrap();
    let b = "fd00:6::1".parse().unwrap();
    let seeds: Vec<Vec<u8>> = [
        ndp::dad_probe(mac, a),
        ndp::ask(mac, a, b),
        ndp::unsolicited_advert(mac, a),
    ]
    .into_iter()
    .map(|f| f.expect("a frame"))
    .collect();
    for s in &seeds {
        assert!(ndp::parse(s).is_some(), "seed must parse");
    }
    let (_, accepted) = fuzz_bytes("ndp", 0x4d9, &seeds, &|_, f| fix_icmpv6(f), &|f| {
        ndp::parse(f).is_some()
    });
    assert!(accepted > 0);
}

/// A state of a few records of every kind, as a store holds it.
fn sample_state(rng: &mut Rng) -> coordinator_ipam::allocator::State {
    use coordinator_ipam::allocator::{Attachment, Record, State, StickyId};
    let mut s = State::default();
    for k in 0..1 + rng.below(6) {
        let ip = if rng.chance(50) {
            format!("10.6.1.{}", 10 + k)
        } else {
            format!("fd00:6::{:x}", 16 + k)
        };
        s.put(Record {
            ip: ip.parse().expect("ip"),
            pool: (*rng.pick(&["v4", "v6", ""])).into(),
            node: "node-é".into(),
            owner: rng.chance(70).then(|| Attachment {
                container_id: format!("c{k}"),
                ifname: "eth0".into(),
            }),
            sticky: rng.chance(40).then(|| StickyId {
                namespace: "db".into(),
                pod: format!("m-{k}"),
                ifname: "eth0".into(),
            }),
        });
    }
    if rng.chance(50) {
        s.cursors
            .insert("v4".into(), "10.6.1.10".parse().expect("ip"));
    }
    s
}

#[test]
fn fuzz_snapshot_decoder() {
    use coordinator_ipam::allocator::{Attachment, StickyId};
    use coordinator_ipam::store::snapshot;
    let mut rng = Rng(0x5a9);
    let seeds: Vec<Vec<u8>> = (0..16)
        .map(|_| snapshot::encode(&sample_state(&mut rng)).expect("encode"))
        .collect();
    let parse = |b: &[u8]| -> bool {
        let Ok(ix) = snapshot::Indexed::new(b) else {
            return false;
        };
        // Every lookup a store makes, on whatever passed the header checks.
        let _ = ix.find(&"10.6.1.11".parse().expect("ip"));
        let _ = ix.held_by(&Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        });
        let _ = ix.sticky_of(&StickyId {
            namespace: "db".into(),
            pod: "m-1".into(),
            ifname: "eth0".into(),
        });
        for i in 0..ix.len().min(64) {
            let _ = ix.record(i);
        }
        snapshot::decode(b).is_ok()
    };
    let (_, accepted) = fuzz_bytes(
        "snapshot",
        0x5a9,
        &seeds,
        &|_, b| snapshot::reseal(b),
        &parse,
    );
    assert!(accepted > 0);
}

#[test]
fn fuzz_journal_decoder() {
    use coordinator_ipam::store::journal;
    let mut rng = Rng(0x10c);
    // Valid journals of a few calls each, built from real entries.
    let entries = [
        r#"[{"put":{"ip":"10.6.1.10","pool":"v4","node":"n","owner":{"containerId":"c1","ifname":"eth0"}}}]"#,
        r#"[{"del":"10.6.1.10"},{"cursor":{"pool":"v4","ip":"10.6.1.11"}}]"#,
        r#"[{"cursor":{"pool":"v4","ip":null}}]"#,
        r#"[{"put":{"ip":"fd00:6::10","pool":"v6","node":"n","sticky":{"namespace":"db","pod":"m-0","ifname":"eth0"}}}]"#,
    ];
    for e in entries {
        journal::decode(&journal::line(e.as_bytes())).expect("seed entry decodes");
    }
    let seeds: Vec<Vec<u8>> = (0..16)
        .map(|_| {
            (0..1 + rng.below(4))
                .flat_map(|_| journal::line(rng.pick(&entries).as_bytes()))
                .collect()
        })
        .collect();
    // Repair: re-checksum a mutated line's JSON, so the decoder behind the
    // checksum sees it (one line, or the whole input as one line).
    let fix = |rng: &mut Rng, b: &mut Vec<u8>| {
        let json = match b.get(9..) {
            Some(rest) if rng.chance(50) => {
                rest.split(|c| *c == b'\n').next().unwrap_or(rest).to_vec()
            }
            _ => random_value(rng, 0).to_string().into_bytes(),
        };
        *b = journal::line(&json);
    };
    let (_, accepted) = fuzz_bytes("journal", 0x10c, &seeds, &fix, &|b| {
        journal::decode(b).is_ok()
    });
    assert!(accepted > 0);
}

// ---------------------------------------------------------------- etcd client

/// The largest single allocation made by this thread since the last reset:
/// how the etcd target proves that no announced size is allocated up front.
mod largest_alloc {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // `try_with`: allocations during thread teardown are not tracked.
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }

    pub fn reset() -> usize {
        LARGEST.try_with(|l| l.replace(0)).unwrap_or(0)
    }

    pub struct Tracking;

    // SAFETY: every call goes to `System` unchanged; only sizes are noted.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller upholds GlobalAlloc's contract, passed on unchanged.
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller upholds GlobalAlloc's contract, passed on unchanged.
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: the caller upholds GlobalAlloc's contract, passed on unchanged.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller upholds GlobalAlloc's contract, passed on unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOC: largest_alloc::Tracking = largest_alloc::Tracking;

/// The body cap in the fuzz loop: far below the client's 128 MiB so that an
/// endless body hits it in microseconds, above the parser's own buffers
/// (a 16 KiB header line, the read buffer) so that any allocation above it
/// can only come from believing the peer.
const FUZZ_REPLY_CAP: usize = 64 << 10;

/// One reply through the client's parser: no panic, no read after the fake
/// deadline or the end of the stream, no allocation above the cap, and a
/// well-formed reply that arrived in time read exactly.
fn check_http_reply(
    script: cni_tests::fuzz_http::Script,
    max_read: usize,
) -> Result<String, String> {
    use cni_tests::fuzz_http::{FakePeer, DEADLINE_MS};
    use coordinator_ipam::store::etcd::http::read_response;
    let expect = script.expect.clone();
    let mut reader =
        std::io::BufReader::with_capacity(max_read.min(8192), FakePeer::new(script, max_read));
    largest_alloc::reset();
    let got = read_response(&mut reader, FUZZ_REPLY_CAP);
    let largest = largest_alloc::reset();
    let peer = reader.get_ref();
    if peer.reads_after_timeout > 0 || peer.now_ms > DEADLINE_MS {
        return Err(format!(
            "read {} time(s) after the deadline",
            peer.reads_after_timeout
        ));
    }
    if peer.reads_after_eof > 1 {
        return Err(format!(
            "read {} time(s) after the end",
            peer.reads_after_eof
        ));
    }
    if largest > FUZZ_REPLY_CAP {
        return Err(format!(
            "allocated {largest} bytes at once (cap {FUZZ_REPLY_CAP})"
        ));
    }
    match (got, expect) {
        (Ok(r), _) if r.body.len() > FUZZ_REPLY_CAP || r.body.capacity() > FUZZ_REPLY_CAP => {
            Err(format!(
                "a body of {} bytes ({} reserved)",
                r.body.len(),
                r.body.capacity()
            ))
        }
        (Ok(r), Some(want)) if r.body != want => Err("a well-formed body misread".into()),
        (Ok(r), _) => Ok(format!("ok {}", r.status)),
        (Err(e), Some(_)) => Err(format!("a well-formed reply refused: {e}")),
        (Err(e), None) => Ok(format!("{:?}", e.kind())),
    }
}

/// A TLS handshake against hostile records: it ends (error or not) without
/// a read after the deadline or the end of the stream.
fn check_tls_reply(
    cfg: &std::sync::Arc<rustls::ClientConfig>,
    script: cni_tests::fuzz_http::Script,
    max_read: usize,
) -> Result<String, String> {
    use cni_tests::fuzz_http::{FakePeer, DEADLINE_MS};
    use coordinator_ipam::store::etcd::http::handshake;
    let name = rustls::pki_types::ServerName::try_from("etcd.test").expect("name");
    let mut conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut peer = FakePeer::new(script, max_read);
    let got = handshake(&mut conn, &mut peer);
    if peer.reads_after_timeout > 0 || peer.now_ms > DEADLINE_MS {
        return Err("TLS: read after the deadline".into());
    }
    if peer.reads_after_eof > 1 {
        return Err(format!(
            "TLS: read {} time(s) after the end",
            peer.reads_after_eof
        ));
    }
    match got {
        Ok(()) => Err("a handshake completed with junk".into()),
        Err(e) => Ok(format!("tls {:?}", e.kind())),
    }
}

#[test]
fn fuzz_etcd_client_against_a_hostile_peer() {
    use cni_tests::fuzz_http::{http_reply, tls_reply};
    let budget = Budget::from_env();
    let mut rng = Rng(0xe7cd_0021);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
    );
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let mut i = 0u64;
    while budget.more(i, 1_000) {
        let max_read = *rng.pick(&[1usize, 2, 7, 100, 4096, 65536]);
        // TLS inputs cost a key exchange each: one in eight.
        let tls_case = rng.chance(12);
        let script = if tls_case {
            tls_reply(&mut rng)
        } else {
            http_reply(&mut rng, FUZZ_REPLY_CAP)
        };
        // Kept to show a failing input (formatting every input would cost
        // more than running it).
        let input = script.clone();
        let shown = || format!("{input:?}").chars().take(2000).collect::<String>();
        let run = || match tls_case {
            true => check_tls_reply(&tls, script, max_read),
            false => check_http_reply(script, max_read),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(Ok(o)) => *outcomes.entry(o).or_default() += 1,
            Ok(Err(why)) => panic!("etcd client: input {i}: {why}: {}", shown()),
            Err(_) => panic!("etcd client: input {i} panicked: {}", shown()),
        }
        i += 1;
    }
    report("etcd-client", i, &outcomes);
    assert!(
        outcomes.keys().any(|k| k.starts_with("ok 200")),
        "no reply was ever read: {outcomes:?}"
    );
}
