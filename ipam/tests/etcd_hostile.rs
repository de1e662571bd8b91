//! The etcd client against peers that do not behave (issue 21): members that
//! trickle their reply, never end their headers, send an endless body,
//! announce absurd sizes, stall a TLS handshake, or claim a transaction
//! succeeded without its responses; a resolver that never answers; store
//! files that are FIFOs or endless; and a bulk copy larger than one timeout.
//!
//! Each hostile server is a thread on a 127.0.0.1 port of its own; the real
//! `coordinator-ipam` binary is exec'd against it with `timeout` 1s and must
//! fail with code 11 naming the endpoint, well within the timeout plus
//! generous slack (deadline correctness, not speed), with bounded memory.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use integration::exec::{run, RawRun, Spawn};
use serde_json::{json, Value};

/// The configured store timeout and what a call may take beyond it (exec,
/// start-up, a loaded CI machine).
const TIMEOUT: &str = "1s";
const SLACK: Duration = Duration::from_secs(3);
/// Past this, the call is taken to hang (and killed).
const HANG: Duration = Duration::from_secs(15);
/// Peak RSS allowed: the reply cap (128 MiB) with room for one reallocation.
const RSS_BUDGET_KIB: u64 = 400 << 10;

type Behaviour = fn(&mut TcpStream, &AtomicBool);

/// A loopback listener answering every connection with `behave`, on its own
/// thread per connection, until dropped.
struct Hostile {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Hostile {
    fn start(behave: Behaviour) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let flag = flag.clone();
                        std::thread::spawn(move || behave(&mut s, &flag));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Hostile { port, stop }
    }

    fn endpoint(&self, https: bool) -> String {
        let scheme = if https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Write `bytes` one at a time, 50 ms apart, until stopped or the client left.
fn trickle(s: &mut TcpStream, stop: &AtomicBool, bytes: &[u8]) {
    for b in bytes.iter().cycle() {
        if stop.load(Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keep the connection open, sending nothing more.
fn hold(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn trickled_reply(s: &mut TcpStream, stop: &AtomicBool) {
    trickle(
        s,
        stop,
        b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{\"header\":{}}",
    );
}

fn endless_headers(s: &mut TcpStream, stop: &AtomicBool) {
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n");
    trickle(s, stop, b"X-Pad: a\r\n");
}

fn endless_chunked_body(s: &mut TcpStream, stop: &AtomicBool) {
    if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        .is_err()
    {
        return;
    }
    let mut chunk = b"8000\r\n".to_vec();
    chunk.resize(chunk.len() + 0x8000, b'a');
    chunk.extend_from_slice(b"\r\n");
    while !stop.load(Ordering::Relaxed) && s.write_all(&chunk).is_ok() {}
}

fn max_content_length(s: &mut TcpStream, stop: &AtomicBool) {
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n{}");
    hold(stop);
}

fn huge_content_length(s: &mut TcpStream, stop: &AtomicBool) {
    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 107374182400\r\n\r\n{}");
    hold(stop);
}

fn overflowing_chunk(s: &mut TcpStream, stop: &AtomicBool) {
    let _ = s.write_all(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nffffffffffffffff\r\n",
    );
    hold(stop);
}

fn silent(_: &mut TcpStream, stop: &AtomicBool) {
    hold(stop);
}

/// A TLS handshake record header announcing 16 KiB, then its bytes slowly.
fn tls_partial_record(s: &mut TcpStream, stop: &AtomicBool) {
    let _ = s.write_all(&[0x16, 0x03, 0x03, 0x40, 0x00]);
    trickle(s, stop, &[0x02, 0x00]);
}

/// An ADD or DEL against `conf`, measured.
fn exec(command: &str, container: &str, conf: &Value) -> RawRun {
    exec_via(Path::new(BIN), &[], command, container, &[], conf)
}

/// The same, the plugin started through `launcher` (`args` then the
/// plugin's path) with `extra` variables beside the CNI ones.
fn exec_via(
    launcher: &Path,
    args: &[&str],
    command: &str,
    container: &str,
    extra: &[(&str, &str)],
    conf: &Value,
) -> RawRun {
    let cni = [
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", container),
        ("CNI_IFNAME", "net1"),
        ("CNI_NETNS", "/var/run/netns/hostile"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];
    run(Spawn {
        binary: launcher,
        args: args.iter().map(|s| s.to_string()).collect(),
        clear_env: true,
        env: cni
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stdin: conf.to_string().into_bytes(),
        netns: None,
        timeout: HANG,
    })
    .expect("exec coordinator-ipam")
}

fn conf_with_store(lab: &Lab, store: Value) -> Value {
    let mut conf = lab.conf(
        "1.0.0",
        json!([{"name": "v4", "subnet": "10.33.0.0/24"}]),
        json!({}),
    );
    conf["ipam"]["store"] = store;
    conf
}

/// ADD and DEL both end with code 11 naming `endpoint`, within the timeout
/// and slack, and within the memory budget.
fn both_fail_in_time(what: &str, conf: &Value, endpoint: &str) {
    for command in ["ADD", "DEL"] {
        let r = exec(command, "hostile", conf);
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(
            !r.timed_out,
            "{what}: {command} still running after {HANG:?}"
        );
        assert_eq!(r.exit_code, Some(1), "{what}: {command}: {out} {r:?}");
        let v: Value = serde_json::from_str(&out).expect("one JSON error");
        assert_eq!(v["code"], 11, "{what}: {command}: {v}");
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(msg.contains(endpoint), "{what}: {command}: {msg}");
        assert!(
            r.wall <= Duration::from_secs(1) + SLACK,
            "{what}: {command} took {:?} with timeout {TIMEOUT}: {msg}",
            r.wall
        );
        assert!(
            r.max_rss_kib <= RSS_BUDGET_KIB,
            "{what}: {command} peaked at {} KiB",
            r.max_rss_kib
        );
    }
}

fn plain(what: &str, behave: Behaviour) {
    let lab = Lab::new();
    let server = Hostile::start(behave);
    let ep = server.endpoint(false);
    let conf = conf_with_store(
        &lab,
        json!({"kind": "etcd", "endpoints": [ep], "timeout": TIMEOUT}),
    );
    both_fail_in_time(what, &conf, &ep);
}

#[test]
fn a_trickled_reply_ends_at_the_deadline() {
    plain("trickle", trickled_reply);
}

#[test]
fn never_ending_headers_end_at_the_deadline() {
    plain("endless headers", endless_headers);
}

#[test]
fn an_endless_chunked_body_stops_at_the_cap() {
    plain("endless chunked body", endless_chunked_body);
}

#[test]
fn absurd_announced_sizes_are_refused() {
    plain("Content-Length 2^64-1", max_content_length);
    plain("Content-Length 100 GB", huge_content_length);
    plain("chunk size 2^64-1", overflowing_chunk);
}

#[test]
fn a_stalled_tls_handshake_ends_at_the_deadline() {
    let lab = Lab::new();
    let pki = integration::etcd::TestPki::make(lab.dir.path(), "hostile");
    for (what, behave) in [
        ("TLS silent", silent as Behaviour),
        ("TLS partial record", tls_partial_record),
    ] {
        let server = Hostile::start(behave);
        let ep = server.endpoint(true);
        let conf = conf_with_store(
            &lab,
            json!({"kind": "etcd", "endpoints": [ep], "timeout": TIMEOUT,
                   "tls": {"ca": pki.server.ca}}),
        );
        both_fail_in_time(what, &conf, &ep);
    }
}

/// The next endpoint gets what is left of the budget, not a fresh one: two
/// trickling members still end within one timeout.
#[test]
fn two_slow_members_share_one_deadline() {
    let lab = Lab::new();
    let (a, b) = (
        Hostile::start(trickled_reply),
        Hostile::start(trickled_reply),
    );
    let conf = conf_with_store(
        &lab,
        json!({"kind": "etcd", "endpoints": [a.endpoint(false), b.endpoint(false)], "timeout": TIMEOUT}),
    );
    both_fail_in_time("two trickling members", &conf, "http://127.0.0.1:");
}

// ---- a reply that claims success without its responses ----

/// The request's JSON body (headers and `Content-Length` read properly).
fn read_request(r: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut len = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

/// A member that answers reads like etcd with nothing stored, and every
/// conditional transaction with `"succeeded": true` but no responses.
fn lying_member(s: &mut TcpStream, _: &AtomicBool) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    while let Some(req) = read_request(&mut r) {
        let header = json!({"revision": "7"});
        let reply = match (req.get("compare"), req["success"].as_array()) {
            (Some(_), _) => json!({"header": header, "succeeded": true}),
            (None, Some(ops)) => {
                let responses: Vec<Value> = ops
                    .iter()
                    .map(|_| json!({"response_range": {"header": {}}}))
                    .collect();
                json!({"header": header, "succeeded": true, "responses": responses})
            }
            (None, None) => json!({"header": header}),
        };
        let body = reply.to_string();
        let msg = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(msg.as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_commit_without_its_responses_is_not_believed() {
    let lab = Lab::new();
    let server = Hostile::start(lying_member);
    let ep = server.endpoint(false);
    let conf = conf_with_store(
        &lab,
        json!({"kind": "etcd", "endpoints": [ep], "timeout": TIMEOUT}),
    );
    let r = exec("ADD", "liar", &conf);
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.exit_code, Some(1), "an address nobody recorded: {out}");
    let v: Value = serde_json::from_str(&out).expect("one JSON error");
    assert_eq!(v["code"], 11, "{v}");
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(msg.contains(&ep) && msg.contains("response"), "{msg}");
}

// ---- files of the store config ----

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// ADD fails at once with code 7 naming `field`; DEL does not hang either
/// (it may succeed: a DEL whose store cannot be opened releases nothing).
fn bad_file_is_code_7(conf: &Value, field: &str) {
    let r = exec("ADD", "files", conf);
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(!r.timed_out, "{field}: ADD hangs");
    let v: Value = serde_json::from_str(&out).expect("one JSON error");
    assert_eq!(v["code"], 7, "{field}: {v}");
    assert!(v["msg"].as_str().unwrap_or("").contains(field), "{v}");
    assert!(
        r.max_rss_kib <= RSS_BUDGET_KIB,
        "{field}: {} KiB",
        r.max_rss_kib
    );
    let r = exec("DEL", "files", conf);
    assert!(!r.timed_out, "{field}: DEL hangs");
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(
        matches!(r.exit_code, Some(0) | Some(1)),
        "{field}: DEL {out}"
    );
    if r.exit_code == Some(1) {
        assert!(out.contains(field), "{field}: DEL {out}");
    }
    assert!(r.wall < SLACK, "{field}: DEL took {:?}", r.wall);
}

#[test]
fn fifo_and_endless_store_files_are_code_7() {
    let lab = Lab::new();
    let fifo = lab.dir.path().join("fifo");
    mkfifo(&fifo);
    let server = Hostile::start(silent);
    let (http, https) = (server.endpoint(false), server.endpoint(true));
    for (path, name) in [(fifo.as_path(), "fifo"), (Path::new("/dev/zero"), "zero")] {
        let pw = conf_with_store(
            &lab,
            json!({"kind": "etcd", "endpoints": [http], "username": "u", "passwordFile": path}),
        );
        bad_file_is_code_7(&pw, "ipam.store.passwordFile");
        let ca = conf_with_store(
            &lab,
            json!({"kind": "etcd", "endpoints": [https], "tls": {"ca": path}}),
        );
        bad_file_is_code_7(&ca, "ipam.store.tls.ca");
        eprintln!("{name}: ok");
    }
}

// ---- a resolver that never answers ----

/// The endpoint is a host name; the binary runs in a mount and network
/// namespace of its own whose resolv.conf names a server behind a veth
/// whose other end answers nothing (a fixed neighbour entry, so not even
/// ARP fails), so the lookup waits for the resolver's own timeouts (5 s,
/// twice) unless the client stops waiting.
#[test]
fn a_resolver_that_never_answers_ends_at_the_deadline() {
    let lab = Lab::new();
    let resolv = lab.dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 10.253.0.2\noptions timeout:5 attempts:2\n",
    )
    .unwrap();
    let ep = "http://etcd.hostile.invalid:2379";
    let conf = conf_with_store(
        &lab,
        json!({"kind": "etcd", "endpoints": [ep], "timeout": TIMEOUT}),
    );
    let script = "ip link set lo up && ip link add v0 type veth peer name v1 && \
        ip addr add 10.253.0.1/24 dev v0 && ip link set v0 up && ip link set v1 up && \
        ip neigh add 10.253.0.2 lladdr 02:00:00:00:00:02 dev v0 nud permanent && \
        mount --bind \"$RESOLV\" /etc/resolv.conf && exec \"$0\"";
    for command in ["ADD", "DEL"] {
        let extra = [
            ("RESOLV", resolv.to_str().unwrap()),
            ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        ];
        let r = exec_via(
            Path::new("/usr/bin/unshare"),
            &["--mount", "--net", "--", "sh", "-c", script, BIN],
            command,
            "resolver",
            &extra,
            &conf,
        );
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(!r.timed_out, "{command} hangs");
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|_| panic!("{command}: {out} {}", String::from_utf8_lossy(&r.stderr)));
        assert_eq!(v["code"], 11, "{command}: {v}");
        let msg = v["msg"].as_str().unwrap_or("");
        assert!(msg.contains("etcd.hostile.invalid"), "{command}: {msg}");
        assert!(
            r.wall <= Duration::from_secs(1) + SLACK,
            "{command} took {:?} with timeout {TIMEOUT}: {msg}",
            r.wall
        );
    }
}
