//! demo: one pod attached through conf-examples/macvlan-underlay.conflist in a
//! netns lab, what the chain built, traffic checks, DEL, and proof that
//! nothing is left.
//!
//! demo [CONFLIST]      run the demo (root)
//! demo --sweep         remove namespaces and scratch dirs left by crashed lab
//!                      runs (every `cl-*`: only when no lab run is in progress)

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cni::error::code::NOT_IMPLEMENTED;
use integration::chain::{
    result_ips, Attachment, Chain, ChainError, NetConfList, Outcome, PluginRun,
};
use integration::lab::{self, state, Lab};
use integration::traffic::{ping, reply_peer, tcp_request, TcpServer};
use serde_json::Value;

/// `println!` that tolerates a closed stdout (`demo | head`): the lab must
/// still be torn down normally rather than by a panic.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

const TIMEOUT: Duration = Duration::from_secs(3);
const PORT: u16 = 8080;
const SVC_BACKEND_PORT: u16 = 9090;

fn default_conflist() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("conf-examples")
        .join("macvlan-underlay.conflist")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--sweep") {
        return match lab::sweep(lab::PREFIX) {
            Ok(gone) => {
                out!("removed {} namespaces: {gone:?}", gone.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sweep: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let conflist = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(default_conflist);
    match run(conflist) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn title(t: &str) {
    out!("\n== {t}");
}

fn run(conflist: PathBuf) -> Result<bool, Box<dyn std::error::Error>> {
    let lab = Lab::new()?;
    let prefix = lab.prefix().to_string();
    let sn = lab.subnet(1).ok_or("lab has no subnet 1")?.clone();
    title("lab");
    out!(
        "node netns {}: {} {} {} (macvlan parent), default via {} / {}",
        lab.node(),
        sn.parent,
        opt(sn.node4),
        opt(sn.node6),
        opt(sn.gateway4),
        opt(sn.gateway6)
    );
    out!(
        "fabric netns {}: bridge {} with gateways {} {} (rp_filter=1)",
        lab.fabric(),
        sn.bridge,
        opt(sn.gateway4),
        opt(sn.gateway6)
    );

    let mut list = NetConfList::from_file(&conflist)?;
    lab.localize(&mut list);
    out!(
        "conflist {} ({}): {}",
        conflist.display(),
        list.cni_version,
        list.types().join(" -> ")
    );
    let mut chain = lab.chain(list);
    let pod = lab.pod("demo")?;
    let att = Attachment::new("demo-container", &pod.path, "eth0")
        .arg("IgnoreUnknown", "1")
        .arg("K8S_POD_NAMESPACE", "default")
        .arg("K8S_POD_NAME", "demo");

    title("ADD");
    let (added, underlay_off) = add(&mut chain, &att)?;
    times(&added.runs);
    let result = added.result.clone().unwrap_or(Value::Null);
    let ips = result_ips(&result);

    title("pod");
    show_pod(&pod.name)?;
    title("host side (node netns)");
    show_host(lab.node(), &ips)?;

    title("connectivity");
    let mut ok = true;
    let client = lab.fabric_client(1, sn.host4(9, 9), sn.host6(0x9999))?;
    let _server = TcpServer::start(&pod.name, SocketAddr::new("::".parse()?, PORT))?;
    for gw in [sn.gateway4.map(IpAddr::from), sn.gateway6.map(IpAddr::from)]
        .into_iter()
        .flatten()
    {
        ok &= check(
            &format!("pod -> gateway {gw} (ping)"),
            ping(&pod.name, gw, None),
            None,
        );
    }
    for ip in &ips {
        let dst = SocketAddr::new(*ip, PORT);
        let from = if ip.is_ipv4() {
            client.ipv4.map(IpAddr::from)
        } else {
            client.ipv6.map(IpAddr::from)
        };
        ok &= tcp_check(
            &format!("fabric client -> pod {dst} (TCP)"),
            &client.name,
            dst,
            from,
            None,
        );
    }
    let why = underlay_off.then_some(
        "expected while the coordinator runs disabled: a macvlan pod cannot reach its parent; \
         underlay mode adds the host veth for this",
    );
    for ip in &ips {
        let dst = SocketAddr::new(*ip, PORT);
        ok &= tcp_check(
            &format!("node -> pod {dst} (TCP)"),
            lab.node(),
            dst,
            None,
            why,
        );
    }

    // A Service whose backend is host-networked on the node: the pod's
    // hijack route sends clusterIP traffic through the node, and the reply
    // must come back the same way for the DNAT to be undone.
    let _backend = TcpServer::start(lab.node(), SocketAddr::new("::".parse()?, SVC_BACKEND_PORT))?;
    let services = [
        (sn.node4.map(IpAddr::from), "10.233.0.10:80"),
        (sn.node6.map(IpAddr::from), "[fd00:233::10]:80"),
    ];
    let svc_why = underlay_off
        .then_some("expected while the coordinator runs disabled: no hijack route to the node");
    for (node_ip, cluster) in services {
        let (Some(node_ip), Ok(cluster)) = (node_ip, cluster.parse::<SocketAddr>()) else {
            continue;
        };
        let backend = SocketAddr::new(node_ip, SVC_BACKEND_PORT);
        lab.node_service(cluster, backend)?;
        let pod_ip = ips
            .iter()
            .find(|i| i.is_ipv4() == node_ip.is_ipv4())
            .copied();
        ok &= tcp_check(
            &format!("pod -> Service {cluster} (DNAT on the node to {backend})"),
            &pod.name,
            cluster,
            pod_ip,
            svc_why,
        );
    }

    title("coordinator explain (run on the node: why each reply leaves where it does)");
    ok &= explain(lab.node(), &pod.path, chain.list(), underlay_off)?;

    title("DEL");
    let del = chain.del(&att).map_err(|e| describe(&e))?;
    times(&del.runs);
    let links = state::link_names(&pod.name)?;
    out!("pod links after DEL: {}", links.join(" "));
    ok &= check("pod has no eth0", !links.iter().any(|l| l == "eth0"), None);
    let store = lab.host_local_dir(&chain.list().name);
    let held: Vec<String> = std::fs::read_dir(&store)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.parse::<IpAddr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    ok &= check(
        &format!("host-local holds no address ({held:?})"),
        held.is_empty(),
        None,
    );
    let left = node_routes_to(lab.node(), &ips)?;
    ok &= check(
        &format!("node has no route to the pod IPs ({left:?})"),
        left.is_empty(),
        None,
    );
    let veths: Vec<String> = state::link_names(lab.node())?
        .into_iter()
        .filter(|l| l.starts_with("veth"))
        .collect();
    ok &= check(
        &format!("node has no pod veth ({veths:?})"),
        veths.is_empty(),
        None,
    );
    let neigh: Vec<String> = state::neighbours(lab.node())?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| in_ips(n["dst"].as_str(), &ips))
        .map(state::neigh_line)
        .collect();
    ok &= check(
        &format!("node has no neighbour entry for the pod IPs ({neigh:?})"),
        neigh.is_empty(),
        None,
    );
    let again = chain.del(&att);
    ok &= check("second DEL succeeds", again.is_ok(), None);

    title("clean-up");
    drop(_server);
    drop(_backend);
    drop(lab);
    let remaining = lab::list_netns(&prefix)?;
    ok &= check(
        &format!("no netns named {prefix}* remains ({remaining:?})"),
        remaining.is_empty(),
        None,
    );
    out!(
        "\n{}",
        if ok {
            "demo: all checks PASS"
        } else {
            "demo: some checks FAILED"
        }
    );
    Ok(ok)
}

/// ADD; if the coordinator says its mode is not implemented yet, undo the
/// half-made attachment as a runtime would (DEL) and retry with `disabled`.
fn add(chain: &mut Chain, att: &Attachment) -> Result<(Outcome, bool), String> {
    match chain.add(att) {
        Ok(out) => Ok((out, false)),
        Err(e) if e.code == NOT_IMPLEMENTED && e.plugin.as_deref() == Some("coordinator") => {
            times(&e.runs);
            out!(
                "NOTE: coordinator answered code {NOT_IMPLEMENTED} ({}); cleaning up with DEL and \
                 retrying with \"mode\": \"disabled\" until underlay mode lands",
                e.msg
            );
            chain.del(att).map_err(|e| describe(&e))?;
            if let Some(p) = chain.list_mut().plugin_mut("coordinator") {
                p.insert("mode".into(), "disabled".into());
            }
            chain.add(att).map(|o| (o, true)).map_err(|e| describe(&e))
        }
        Err(e) => Err(describe(&e)),
    }
}

fn describe(e: &ChainError) -> String {
    let stderr = e
        .runs
        .last()
        .map(|r| r.stderr.trim().to_string())
        .unwrap_or_default();
    format!("{e}\nerror JSON: {}\nplugin stderr: {stderr}", e.error)
}

fn times(runs: &[PluginRun]) {
    for r in runs {
        out!(
            "  {:<6} {:<12} {:>9.3} ms  max RSS {:>6} KiB  exit {}",
            r.verb.as_str(),
            r.plugin,
            r.wall.as_secs_f64() * 1e3,
            r.max_rss_kib,
            r.exit_code.map_or("signal".into(), |c| c.to_string())
        );
    }
}

/// Run `coordinator explain` on the pod from the node, as an operator would,
/// with the Service ranges of the conflist; show its report.
fn explain(
    node: &str,
    pod: &std::path::Path,
    list: &NetConfList,
    underlay_off: bool,
) -> Result<bool, Box<dyn std::error::Error>> {
    let bin = integration::chain::default_bin_dir().join("coordinator");
    let mut cmd = integration::nsexec::command_in(
        node,
        &bin.display().to_string(),
        integration::nsexec::Enter::NetOnly,
    )?;
    cmd.args(["explain", "--netns"]).arg(pod);
    // The node defaults file of this machine is not the lab's.
    cmd.args(["--defaults", "/nonexistent/coordinator-defaults.json"]);
    let coordinator = list.plugins.iter().find(|p| p["type"] == "coordinator");
    let cidrs = coordinator
        .and_then(|c| c.get("serviceCIDR"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    for c in cidrs {
        cmd.args(["--service-cidr", c]);
    }
    out!("$ coordinator explain --netns {} ...", pod.display());
    let run = cmd.output()?;
    for line in String::from_utf8_lossy(&run.stdout).lines() {
        out!("  {line}");
    }
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !stderr.trim().is_empty() {
        out!("  stderr: {}", stderr.trim());
    }
    let why = underlay_off.then_some("expected while the coordinator runs disabled");
    Ok(check(
        &format!(
            "explain: every flow symmetric (exit {})",
            run.status.code().unwrap_or(-1)
        ),
        run.status.code() == Some(0),
        why,
    ))
}

fn check(what: &str, passed: bool, expected_failure: Option<&str>) -> bool {
    match (passed, expected_failure) {
        (true, _) => {
            out!("PASS {what}");
            true
        }
        (false, Some(why)) => {
            out!("FAIL {what} -- {why}");
            true
        }
        (false, None) => {
            out!("FAIL {what}");
            false
        }
    }
}

fn tcp_check(
    what: &str,
    ns: &str,
    dst: SocketAddr,
    expect_src: Option<IpAddr>,
    expected_failure: Option<&str>,
) -> bool {
    match tcp_request(ns, None, dst, TIMEOUT) {
        Ok(reply) => {
            let seen = reply_peer(&reply).map(|p| p.ip());
            let same = expect_src.is_none() || seen == expect_src;
            check(
                &format!("{what}: server saw {}", opt(seen)),
                same,
                expected_failure,
            )
        }
        Err(e) => check(&format!("{what}: {e}"), false, expected_failure),
    }
}

fn show_pod(ns: &str) -> Result<(), Box<dyn std::error::Error>> {
    for link in state::addrs(ns)?.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or("?");
        let addrs: Vec<String> = link["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
            .collect();
        out!(
            "link {name} {} mtu {}: {}",
            link["address"].as_str().unwrap_or("-"),
            link["mtu"],
            addrs.join(" ")
        );
    }
    out!("rules:");
    for r in state::rules(ns)?.as_array().into_iter().flatten() {
        out!(
            "  {:<6} {}",
            r["family"].as_str().unwrap_or(""),
            state::rule_line(r)
        );
    }
    out!("routes (all tables but local):");
    for r in non_local_routes(ns)? {
        out!("  {}", state::route_line(&r));
    }
    Ok(())
}

fn show_host(node: &str, ips: &[IpAddr]) -> Result<(), Box<dyn std::error::Error>> {
    out!("rules:");
    for r in state::rules(node)?.as_array().into_iter().flatten() {
        out!(
            "  {:<6} {}",
            r["family"].as_str().unwrap_or(""),
            state::rule_line(r)
        );
    }
    let to_pod = node_routes_to(node, ips)?;
    out!(
        "routes to the pod IPs: {}",
        if to_pod.is_empty() { "none" } else { "" }
    );
    for r in &to_pod {
        out!("  {r}");
    }
    let neigh: Vec<String> = state::neighbours(node)?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| in_ips(n["dst"].as_str(), ips))
        .map(state::neigh_line)
        .collect();
    out!(
        "neighbours of the pod IPs: {}",
        if neigh.is_empty() { "none" } else { "" }
    );
    for n in &neigh {
        out!("  {n}");
    }
    Ok(())
}

fn non_local_routes(ns: &str) -> std::io::Result<Vec<Value>> {
    Ok(state::routes(ns, "all")?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["table"] != "local" && r["dst"] != "multicast")
        .filter(|r| !r["dst"].as_str().is_some_and(|d| d.starts_with("fe80:")))
        .collect())
}

fn node_routes_to(node: &str, ips: &[IpAddr]) -> std::io::Result<Vec<String>> {
    Ok(non_local_routes(node)?
        .iter()
        .filter(|r| {
            let dst = r["dst"].as_str().map(|d| d.split('/').next().unwrap_or(d));
            in_ips(dst, ips)
        })
        .map(state::route_line)
        .collect())
}

fn in_ips(addr: Option<&str>, ips: &[IpAddr]) -> bool {
    addr.and_then(|a| a.parse::<IpAddr>().ok())
        .is_some_and(|a| ips.contains(&a))
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}
