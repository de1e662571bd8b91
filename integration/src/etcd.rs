//! Real etcd members (Debian's `etcd-server`) for tests and benchmarks: on
//! free loopback ports, data in a fresh directory (under /dev/shm when it
//! exists: the runs measure the plugin, not the disk's fsync), killed and
//! removed on drop, also when a test fails.
//!
//! Members listen on 127.0.0.1 only, or on a lab netns address. Election timeouts are short (500 ms) so
//! that a test killing the leader sees a new one within a second.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Server certificate files: the members serve https and require client
/// certificates signed by `ca`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    args: Vec<std::ffi::OsString>,
    /// The netns the member runs in (`None`: this process's).
    netns: Option<String>,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    dir: PathBuf,
    https: bool,
    /// The address members listen on.
    host: String,
    netns: Option<String>,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so no two are the same; released just before etcd binds.
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Cluster {
    /// One member, plain http.
    pub fn single() -> Cluster {
        Cluster::start(1, None)
    }

    /// `n` members; https with client-certificate auth when `tls` is given.
    /// Panics (with etcd's log) when they do not come up within 20 s.
    pub fn start(n: usize, tls: Option<&ServerTls>) -> Cluster {
        Cluster::start_in(n, tls, None)
    }

    /// Like [`Cluster::start`], with the members inside netns `ns` (a lab
    /// namespace) listening on `addr` there, for plugins exec'd in node
    /// namespaces that reach it over the lab fabric.
    pub fn start_in(n: usize, tls: Option<&ServerTls>, at: Option<(&str, IpAddr)>) -> Cluster {
        assert!(
            Path::new("/usr/bin/etcd").exists() || which_etcd().is_some(),
            "etcd is not installed (apt-get install etcd-server; scripts/setup.sh does)"
        );
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let id = format!(
            "cl-{}x{}-etcd",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = base.join(&id);
        std::fs::create_dir_all(&dir).expect("etcd dir");
        let ports = free_ports(2 * n);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let host = match at {
            Some((_, IpAddr::V6(a))) => format!("[{a}]"),
            Some((_, a)) => a.to_string(),
            None => "127.0.0.1".to_string(),
        };
        let netns = at.map(|(ns, _)| ns.to_string());
        let peers: Vec<String> = (0..n)
            .map(|i| format!("m{i}=http://{host}:{}", ports[2 * i + 1]))
            .collect();
        let mut cluster = Cluster {
            members: Vec::new(),
            dir: dir.clone(),
            https: tls.is_some(),
            host: host.clone(),
            netns: netns.clone(),
        };
        for i in 0..n {
            let (cport, pport) = (ports[2 * i], ports[2 * i + 1]);
            let client_url = format!("{scheme}://{host}:{cport}");
            let mut cmd = Command::new("etcd");
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &format!("http://{host}:{pport}")])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{host}:{pport}"),
                ])
                .args(["--initial-cluster", &peers.join(",")])
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &id,
                ])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-level", "warn"]);
            if let Some(t) = tls {
                cmd.arg("--cert-file")
                    .arg(&t.cert)
                    .arg("--key-file")
                    .arg(&t.key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
            let mut m = Member {
                name: format!("m{i}"),
                client_port: cport,
                args: cmd.get_args().map(|a| a.to_os_string()).collect(),
                netns: netns.clone(),
                child: None,
            };
            m.spawn(&dir);
            cluster.members.push(m);
        }
        cluster.wait_ready(Duration::from_secs(20));
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.https { "https" } else { "http" };
        self.members
            .iter()
            .map(|m| format!("{scheme}://{}:{}", self.host, m.client_port))
            .collect()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let p = self.dir.join(format!("{}.log", m.name));
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {} ---\n", m.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Every running member answers (plain http: a linearizable read, which
    /// needs a leader; https: the port accepts).
    fn wait_ready(&mut self, within: Duration) {
        let end = Instant::now() + within;
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            loop {
                if self.member_ready(i) {
                    break;
                }
                if let Some(st) = self.members[i]
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten())
                {
                    panic!(
                        "etcd {} exited ({st}):\n{}",
                        self.members[i].name,
                        self.logs()
                    );
                }
                assert!(
                    Instant::now() < end,
                    "etcd did not become ready:\n{}",
                    self.logs()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn member_ready(&self, i: usize) -> bool {
        if self.https {
            let addr = self.addr(i);
            return self
                .in_netns(|| {
                    Some(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok())
                })
                .unwrap_or(false);
        }
        self.post(i, "/v3/kv/range", r#"{"key":"AA=="}"#)
            .is_some_and(|(s, _)| s == 200)
    }

    fn addr(&self, i: usize) -> SocketAddr {
        let ip: IpAddr = self
            .host
            .trim_matches(['[', ']'])
            .parse()
            .expect("member address");
        SocketAddr::new(ip, self.members[i].client_port)
    }

    /// Run `f` where the members are (their netns, or here).
    fn in_netns<T: Send>(&self, f: impl FnOnce() -> Option<T> + Send) -> Option<T> {
        match &self.netns {
            None => f(),
            Some(ns) => crate::lab::in_netns(ns, || Ok(f())).ok().flatten(),
        }
    }

    /// The index of the member that leads now (plain http clusters).
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Some((200, body)) = self.post(i, "/v3/maintenance/status", "{}") else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = v["leader"].as_str()?.to_string();
            if v["header"]["member_id"].as_str() == Some(leader.as_str()) {
                return Some(i);
            }
        }
        None
    }

    /// POST a JSON body to member `i`'s gateway (plain http): status and body.
    pub fn post(&self, i: usize, path: &str, body: &str) -> Option<(u16, String)> {
        let addr = self.addr(i);
        self.in_netns(|| post(addr, path, body))
    }

    /// Start a killed member again on its data (it rejoins its cluster).
    pub fn restart(&mut self, i: usize) {
        if self.members[i].child.is_none() {
            let dir = self.dir.clone();
            self.members[i].spawn(&dir);
        }
        self.wait_ready(Duration::from_secs(20));
    }

    /// Stop (SIGSTOP) or continue (SIGCONT) member `i`: a member that
    /// accepts connections and never answers.
    pub fn freeze(&mut self, i: usize, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        if let Some(c) = &self.members[i].child {
            // SAFETY: signalling our own child process by its pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Kill member `i` (SIGKILL) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Member {
    fn spawn(&mut self, dir: &Path) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{}.log", self.name)))
            .expect("log file");
        let mut cmd = Command::new("etcd");
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(ns) = &self.netns {
            crate::nsexec::enter(
                &mut cmd,
                &crate::nsexec::netns_path(ns),
                crate::nsexec::Enter::NetOnly,
            )
            .expect("enter the etcd netns");
        }
        let child = cmd.spawn().expect("spawn etcd");
        self.child = Some(child);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.freeze(i, false);
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn which_etcd() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("etcd"))
        .find(|p| p.is_file())
}

/// A plain HTTP/1.0 POST to `addr`: status and body.
fn post(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.get(9..12)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made
/// with the openssl CLI in `dir` (test fixtures only; the plugin uses rustls).
pub struct TestPki {
    pub server: ServerTls,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `openssl req` making a fresh P-256 key: a self-signed CA with `-x509`,
/// else a signing request.
fn new_key(dir: &Path, x509: bool, key: &str, out: &str, subject: &str) {
    let mut args = vec!["req"];
    if x509 {
        args.extend(["-x509", "-days", "2"]);
    }
    args.extend([
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ]);
    args.extend(["-keyout", key, "-out", out, "-subj", subject]);
    openssl(dir, &args);
}

impl TestPki {
    /// `name` prefixes the files, so two CAs can live in one directory.
    pub fn make(dir: &Path, name: &str) -> TestPki {
        let f = |s: &str| format!("{name}-{s}");
        new_key(
            dir,
            true,
            &f("ca.key"),
            &f("ca.pem"),
            &format!("/CN={name} test CA"),
        );
        for (who, ext) in [
            // etcd's JSON gateway dials its own gRPC port with the server
            // certificate, so it must be valid for client auth too.
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extf) = (
                f(&format!("{who}.key")),
                f(&format!("{who}.csr")),
                f(&format!("{who}.pem")),
                f(&format!("{who}.ext")),
            );
            std::fs::write(dir.join(&extf), ext).expect("ext file");
            new_key(dir, false, &key, &csr, &format!("/CN={who}"));
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &f("ca.pem"),
                    "-CAkey",
                    &f("ca.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-out",
                    &pem,
                    "-extfile",
                    &extf,
                ],
            );
        }
        TestPki {
            server: ServerTls {
                ca: dir.join(f("ca.pem")),
                cert: dir.join(f("server.pem")),
                key: dir.join(f("server.key")),
            },
            client_cert: dir.join(f("client.pem")),
            client_key: dir.join(f("client.key")),
        }
    }
}
