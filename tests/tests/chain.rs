//! The lab and the chain runner, end to end: reference plugins (macvlan,
//! host-local) plus our coordinator in `mode: disabled`, exec'd in a node
//! netns, with traffic proving the pod is attached. Needs root; never skips.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use cni_tests::{bin_dir, cni_path, conf_example};
use integration::chain::{result_ips, Attachment, Chain, NetConfList, Verb};
use integration::lab::{self, Lab};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::{json, Value};

const T: Duration = Duration::from_secs(5);

/// The demo conflist, with the coordinator switched to `disabled` (the only
/// mode implemented so far) and state kept in the lab.
fn underlay_chain(lab: &Lab) -> Chain {
    let mut list = NetConfList::from_file(conf_example("macvlan-underlay.conflist")).unwrap();
    assert_eq!(list.types(), vec!["macvlan", "coordinator"]);
    list.plugin_mut("coordinator")
        .unwrap()
        .insert("mode".into(), "disabled".into());
    lab.localize(&mut list);
    assert!(
        bin_dir().join("coordinator").is_file(),
        "coordinator binary missing in {} (cargo build -p coordinator)",
        bin_dir().display()
    );
    lab.chain(list).cni_path(cni_path())
}

/// host-local reservation files (named after the IP) left in `dir`.
fn reservations(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn lab_builds_and_tears_down() {
    let lab = Lab::builder()
        .subnets(2)
        .build()
        .expect("build lab (needs root)");
    let prefix = lab.prefix().to_string();
    assert!(prefix.starts_with(lab::PREFIX));
    // Node NICs carry the node addresses; the fabric answers on every gateway.
    for s in lab.subnets() {
        let mine = lab::state::addresses_of(lab.node(), &s.parent).unwrap();
        assert!(
            mine.contains(&format!("{}/16", s.node4.unwrap())),
            "{mine:?}"
        );
        assert!(
            mine.contains(&format!("{}/64", s.node6.unwrap())),
            "{mine:?}"
        );
        assert!(ping(lab.node(), s.gateway4.unwrap().into(), None));
        assert!(ping(lab.node(), s.gateway6.unwrap().into(), None));
    }
    let routes = lab::routes(lab.node(), "main").unwrap();
    let defaults: Vec<&Value> = routes
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .collect();
    assert_eq!(defaults.len(), 2, "{routes}");
    // An outside client on subnet 2 reaches a server on subnet 1 through the
    // fabric router, and the server sees the client's own address.
    let c1 = lab
        .fabric_client(1, Some("10.6.9.1".parse().unwrap()), None)
        .unwrap();
    let c2 = lab
        .fabric_client(2, Some("10.7.9.1".parse().unwrap()), None)
        .unwrap();
    let srv = TcpServer::start(&c1.name, "0.0.0.0:7000".parse().unwrap()).unwrap();
    let reply = tcp_request(&c2.name, None, "10.6.9.1:7000".parse().unwrap(), T).unwrap();
    assert_eq!(
        reply_peer(&reply).unwrap().ip(),
        c2.ipv4.unwrap(),
        "{reply}"
    );
    assert_eq!(srv.peers().len(), 1);
    drop(srv);
    assert!(lab.namespaces().len() >= 4);
    assert_eq!(
        lab::list_netns(&prefix).unwrap().len(),
        lab.namespaces().len()
    );
    let dir = lab.dir().to_path_buf();
    drop(lab);
    assert!(lab::list_netns(&prefix).unwrap().is_empty());
    assert!(!dir.exists());
}

#[test]
fn add_check_del_with_traffic() {
    let lab = Lab::new().expect("build lab (needs root)");
    let pod = lab.pod("a").unwrap();
    let chain = underlay_chain(&lab);
    let att = Attachment::new("ctr-add-check-del", &pod.path, "eth0").arg("IgnoreUnknown", "1");

    let out = chain.add(&att).unwrap_or_else(|e| panic!("ADD: {e}"));
    assert_eq!(out.runs.len(), 2);
    assert!(out
        .runs
        .iter()
        .all(|r| r.exit_code == Some(0) && r.wall > Duration::ZERO));
    // The coordinator got macvlan's result unmodified as prevResult.
    let macvlan_out: Value = serde_json::from_str(&out.runs[0].stdout).unwrap();
    assert_eq!(out.runs[1].stdin["prevResult"], macvlan_out);
    let result = out.result.unwrap();
    let ips = result_ips(&result);
    let v4 = ips
        .iter()
        .find(|i| i.is_ipv4())
        .copied()
        .expect("IPv4 in result");
    let v6 = ips
        .iter()
        .find(|i| i.is_ipv6())
        .copied()
        .expect("IPv6 in result");
    let on_eth0 = lab::state::addresses_of(&pod.name, "eth0").unwrap();
    assert!(on_eth0.contains(&format!("{v4}/16")), "{on_eth0:?}");
    assert!(on_eth0.contains(&format!("{v6}/64")), "{on_eth0:?}");

    // The pod reaches its gateways; outside clients reach the pod and the
    // pod's reply comes back (the fabric drops asymmetric replies).
    let sn = lab.subnet(1).unwrap();
    assert!(ping(&pod.name, sn.gateway4.unwrap().into(), None));
    assert!(ping(&pod.name, sn.gateway6.unwrap().into(), None));
    let client = lab
        .fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))
        .unwrap();
    let srv = TcpServer::start(&pod.name, "[::]:8080".parse().unwrap()).unwrap();
    for (dst, src) in [
        (v4, IpAddr::from(client.ipv4.unwrap())),
        (v6, IpAddr::from(client.ipv6.unwrap())),
    ] {
        let reply = tcp_request(&client.name, None, SocketAddr::new(dst, 8080), T)
            .unwrap_or_else(|e| panic!("client -> pod {dst}: {e}"));
        assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(src), "{reply}");
    }
    drop(srv);

    chain.check(&att).unwrap_or_else(|e| panic!("CHECK: {e}"));

    let del = chain.del(&att).unwrap_or_else(|e| panic!("DEL: {e}"));
    let order: Vec<&str> = del.runs.iter().map(|r| r.plugin.as_str()).collect();
    assert_eq!(order, vec!["coordinator", "macvlan"]);
    assert_eq!(del.runs[0].stdin["prevResult"], result);
    assert!(!lab::state::link_names(&pod.name)
        .unwrap()
        .contains(&"eth0".to_string()));
    let store = lab.host_local_dir("macvlan-underlay");
    assert!(store.is_dir(), "host-local wrote into the lab dir");
    assert_eq!(reservations(&store), Vec::<String>::new());
    assert!(chain.cache().result(&cache_key(&att)).is_none());
    // A repeated DEL (no cached result any more) still succeeds.
    chain
        .del(&att)
        .unwrap_or_else(|e| panic!("second DEL: {e}"));
    // And so does a DEL after the pod netns is gone.
    lab.remove_netns(&pod.name).unwrap();
    let gone = Attachment {
        netns: None,
        ..att.clone()
    };
    chain
        .del(&gone)
        .unwrap_or_else(|e| panic!("DEL without netns: {e}"));
}

fn cache_key(att: &Attachment) -> integration::chain::CacheKey<'_> {
    integration::chain::CacheKey {
        network: "macvlan-underlay",
        container_id: &att.container_id,
        ifname: &att.ifname,
    }
}

#[test]
fn failed_add_names_the_plugin_and_its_code() {
    let lab = Lab::new().expect("build lab (needs root)");
    let pod = lab.pod("f").unwrap();
    let mut chain = underlay_chain(&lab);
    chain
        .list_mut()
        .plugin_mut("macvlan")
        .unwrap()
        .insert("master".into(), "nosuchnic".into());
    let att = Attachment::new("ctr-fail", &pod.path, "eth0");
    let err = chain
        .add(&att)
        .expect_err("ADD on a missing master must fail");
    assert_eq!(err.plugin.as_deref(), Some("macvlan"));
    assert_eq!(err.index, Some(0));
    assert_eq!(err.runs.len(), 1, "the chain stops at the first failure");
    assert!(
        err.code > 0 && err.error["msg"].is_string(),
        "{:?}",
        err.error
    );
    // Nothing was attached and no address is held; no result was cached.
    assert!(!lab::state::link_names(&pod.name)
        .unwrap()
        .contains(&"eth0".to_string()));
    assert_eq!(
        reservations(&lab.host_local_dir("macvlan-underlay")),
        Vec::<String>::new()
    );
    assert!(chain.cache().attachments("macvlan-underlay").is_empty());
}

/// Runner mechanics with a scripted plugin: stdin and env as libcni builds
/// them, exec inside the node netns with that netns's sysfs.
#[test]
fn runner_builds_stdin_env_and_enters_node() {
    let lab = Lab::new().expect("build lab (needs root)");
    let pod = lab.pod("s").unwrap();
    let dir = lab.dir().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let seen = lab.dir().join("seen");
    std::fs::create_dir_all(&seen).unwrap();
    // Records stdin, env and /sys/class/net, then answers like a CNI plugin.
    let script = format!(
        "#!/bin/sh\nd={seen}/$CNI_COMMAND-$(basename $0)\ncat > $d.stdin\nenv | grep ^CNI_ | sort > $d.env\n\
         ls /sys/class/net > $d.sys\n\
         case $CNI_COMMAND in ADD) printf '%s' '{{\"cniVersion\":\"1.0.0\",\"ips\":[],\"dns\":{{}}}}';; \
         BAD) ;; esac\n",
        seen = seen.display()
    );
    for name in ["recorder", "recorder2"] {
        let p = dir.join(name);
        std::fs::write(&p, &script).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": "rec",
        "plugins": [
            {"type": "recorder", "capabilities": {"ips": true}},
            {"type": "recorder2", "capabilities": {"mac": true}, "x": 1}
        ]
    }))
    .unwrap();
    let chain = lab.chain(list).cni_path(vec![dir.clone()]);
    let att = Attachment::new("ctr1", &pod.path, "net1")
        .arg("K8S_POD_NAME", "p")
        .capability("ips", json!(["10.6.1.7/16"]));
    let out = chain
        .run(Verb::Add, &att)
        .unwrap_or_else(|e| panic!("ADD: {e}"));
    let read = |f: &str| std::fs::read_to_string(seen.join(f)).unwrap();
    let first: Value = serde_json::from_str(&read("ADD-recorder.stdin")).unwrap();
    let second: Value = serde_json::from_str(&read("ADD-recorder2.stdin")).unwrap();
    assert_eq!(first["cniVersion"], "1.0.0");
    assert_eq!(first["name"], "rec");
    assert_eq!(first["runtimeConfig"], json!({"ips": ["10.6.1.7/16"]}));
    assert!(first.get("prevResult").is_none());
    assert!(
        second.get("runtimeConfig").is_none(),
        "no mac capability arg given"
    );
    assert_eq!(second["x"], 1);
    assert_eq!(
        second["prevResult"],
        json!({"cniVersion":"1.0.0","ips":[],"dns":{}})
    );
    assert_eq!(out.result, Some(second["prevResult"].clone()));
    let env = read("ADD-recorder.env");
    for want in [
        "CNI_COMMAND=ADD".to_string(),
        "CNI_CONTAINERID=ctr1".to_string(),
        "CNI_IFNAME=net1".to_string(),
        format!("CNI_NETNS={}", pod.path.display()),
        "CNI_ARGS=K8S_POD_NAME=p".to_string(),
        format!("CNI_PATH={}", dir.display()),
    ] {
        assert!(env.lines().any(|l| l == want), "missing {want} in\n{env}");
    }
    // The plugin saw the node's links, not the machine's.
    let sys = read("ADD-recorder.sys");
    assert!(sys.lines().any(|l| l == "ens1"), "{sys}");

    // GC: both plugins once with the valid attachments, spec 1.1.0.
    let gc = chain
        .run(Verb::Gc, &att)
        .unwrap_or_else(|e| panic!("GC: {e}"));
    assert_eq!(gc.runs.len(), 2);
    let gc_in: Value = serde_json::from_str(&read("GC-recorder.stdin")).unwrap();
    assert_eq!(gc_in["cniVersion"], "1.1.0");
    assert_eq!(
        gc_in["cni.dev/valid-attachments"],
        json!([{"containerID": "ctr1", "ifname": "net1"}])
    );
    assert!(!read("GC-recorder.env").contains("CNI_CONTAINERID"));

    // A plugin printing garbage fails the chain even with exit 0.
    std::fs::write(
        dir.join("recorder2"),
        "#!/bin/sh\ncat >/dev/null\necho 'not json'\n",
    )
    .unwrap();
    let err = chain.check(&att).expect_err("invalid JSON must fail");
    assert_eq!(err.plugin.as_deref(), Some("recorder2"));
    assert!(err.msg.contains("invalid JSON"), "{}", err.msg);
}

#[test]
fn gc_and_status_skip_plugins_without_spec_1_1() {
    let lab = Lab::new().expect("build lab (needs root)");
    let mut chain = underlay_chain(&lab);
    // A network of its own: GC undoes every record of its network that the
    // list leaves out, and other tests attach pods meanwhile.
    chain.list_mut().name = format!("gc-{}", lab.prefix());
    let gc = chain.gc(&[]).unwrap_or_else(|e| panic!("GC: {e}"));
    // The reference macvlan speaks up to 1.0.0: skipped, never failed.
    assert!(gc.runs[0].skipped.is_some(), "{:?}", gc.runs[0]);
    chain.status().unwrap_or_else(|e| panic!("STATUS: {e}"));
}

/// Kills the helper process if the test fails before it does.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigterm_removes_the_labs_namespaces() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};

    let holder = bin_dir().join("lab-hold");
    assert!(
        holder.is_file(),
        "{} missing: cargo build --workspace --bins",
        holder.display()
    );
    let child = Command::new(holder)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reap(child);
    let out = child.0.stdout.take().unwrap();
    let prefix = std::io::BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("LAB-PREFIX ").map(String::from))
        .expect("helper printed its lab prefix");
    let before = lab::list_netns(&prefix).unwrap();
    assert!(before.len() >= 3, "{before:?}");
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) takes only integers; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "died of SIGTERM, not otherwise"
    );
    assert_eq!(lab::list_netns(&prefix).unwrap(), Vec::<String>::new());
    // The handler only unmounts namespaces; the scratch dir is left to sweep.
    lab::sweep(&prefix).unwrap();
    assert!(!std::env::temp_dir().join(&prefix).exists());
}

/// A ptp pod (veth + host route, like Calico) reaches a Service DNATed in
/// the node to a backend on the fabric; masquerade brings the reply back.
#[test]
fn node_service_dnats_pod_traffic_to_a_fabric_backend() {
    let lab = Lab::new().expect("build lab (needs root)");
    let pod = lab.pod("svc").unwrap();
    let mut list = NetConfList::from_value(json!({
        "cniVersion": "1.0.0", "name": "ptp-overlay",
        "plugins": [{
            "type": "ptp",
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.0.0/24"}], [{"subnet": "fd00:244::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
            }
        }]
    }))
    .unwrap();
    lab.localize(&mut list);
    let chain = lab.chain(list).cni_path(cni_path());
    let att = Attachment::new("ctr-svc", &pod.path, "eth0");
    chain.add(&att).unwrap_or_else(|e| panic!("ADD ptp: {e}"));

    let sn = lab.subnet(1).unwrap();
    let backend = lab
        .fabric_client(1, sn.host4(9, 1), sn.host6(0x9001))
        .unwrap();
    let _srv = TcpServer::start(&backend.name, "[::]:7000".parse().unwrap()).unwrap();
    let services: [(SocketAddr, SocketAddr); 2] = [
        (
            "10.233.0.10:80".parse().unwrap(),
            SocketAddr::new(backend.ipv4.unwrap().into(), 7000),
        ),
        (
            "[fd00:233::10]:80".parse().unwrap(),
            SocketAddr::new(backend.ipv6.unwrap().into(), 7000),
        ),
    ];
    for (cluster, target) in services {
        lab.node_service(cluster, target).unwrap();
    }
    lab.node_service_masquerade().unwrap();
    for ((cluster, _), node_ip) in services.iter().zip([
        IpAddr::from(sn.node4.unwrap()),
        IpAddr::from(sn.node6.unwrap()),
    ]) {
        // From the node itself (output hook) and from the pod (prerouting).
        let reply = tcp_request(lab.node(), None, *cluster, T)
            .unwrap_or_else(|e| panic!("node -> {cluster}: {e}"));
        assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(node_ip), "{reply}");
        let reply = tcp_request(&pod.name, None, *cluster, T)
            .unwrap_or_else(|e| panic!("pod -> {cluster}: {e}"));
        assert_eq!(reply_peer(&reply).map(|p| p.ip()), Some(node_ip), "{reply}");
    }
    chain.del(&att).unwrap_or_else(|e| panic!("DEL ptp: {e}"));
}

#[test]
fn sweep_removes_namespaces_and_scratch_dirs_of_a_prefix() {
    // A prefix of our own, so labs of parallel tests are not swept.
    let prefix = format!("{}sweep{}-", lab::PREFIX, std::process::id());
    for n in ["a", "b"] {
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &format!("{prefix}{n}")])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add (needs root)");
    }
    let scratch = std::env::temp_dir().join(format!("{prefix}dir"));
    std::fs::create_dir_all(scratch.join("x")).unwrap();
    assert_eq!(lab::list_netns(&prefix).unwrap().len(), 2);
    let gone = lab::sweep(&prefix).unwrap();
    assert_eq!(gone, vec![format!("{prefix}a"), format!("{prefix}b")]);
    assert!(lab::list_netns(&prefix).unwrap().is_empty());
    assert!(!scratch.exists());
    assert!(
        lab::sweep("").is_err(),
        "an empty prefix would sweep everything"
    );
}
