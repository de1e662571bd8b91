//! deploy/ and packaging (issue 14): the Kubernetes manifests validate
//! against the Kubernetes schemas offline, every conf-example has a
//! NetworkAttachmentDefinition whose config both plugins' parsers accept, the
//! binaries install themselves (atomic, idempotent, mode 0755), and the .deb
//! installs into a scratch root whose `coordinator --version` runs.
//!
//! kubernetes-validate lives in a private venv made by scripts/setup.sh.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cni_tests::{bin_dir, conf_example};
use serde_json::{json, Value};

const VENV: &str = "/opt/coordinator-tools/venv";
/// The Kubernetes version the manifests are checked against.
const K8S: &str = "1.31.0";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn venv_bin(name: &str) -> PathBuf {
    let p = Path::new(VENV).join("bin").join(name);
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn ok(out: Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {:?}\n{text}", out.status);
    text
}

/// Every document of `files`, parsed by a real YAML parser (PyYAML from the venv).
fn yaml_docs(files: &[PathBuf]) -> Vec<Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml\n\
             print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))",
        ])
        .args(files)
        .output()
        .unwrap();
    serde_json::from_str(&ok(out, "yaml")).unwrap()
}

/// The Multus CRD's schema of a NetworkAttachmentDefinition
/// (k8snetworkplumbingwg/multus-cni, deployments/multus-daemonset.yml).
fn nad_schema() -> Value {
    json!({
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": false,
        "properties": {
            "apiVersion": {"const": "k8s.cni.cncf.io/v1"},
            "kind": {"const": "NetworkAttachmentDefinition"},
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 253},
                    "namespace": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}}
                }
            },
            "spec": {
                "type": "object",
                "additionalProperties": false,
                "properties": {"config": {"type": "string"}}
            }
        }
    })
}

#[test]
fn manifests_validate_offline_against_kubernetes_schemas() {
    let deploy = repo().join("deploy");
    let core = yaml_files(&deploy);
    assert!(core.len() >= 2, "{core:?}");
    // In a network namespace of its own (no interfaces but lo): proof that
    // the schemas come with the tool, not from the network.
    let out = Command::new("unshare")
        .arg("--net")
        .arg(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", K8S])
        .args(&core)
        .output()
        .expect("unshare (util-linux)");
    let text = ok(out, "kubernetes-validate");
    for kind in ["configmap/coordinator-defaults", "daemonset/coordinator"] {
        assert!(
            text.contains(&format!("passed for resource {kind}")),
            "{text}"
        );
    }
    assert!(!text.contains("WARN"), "{text}");

    // The same tool fails a broken manifest (the check can fail).
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let ds = std::fs::read_to_string(deploy.join("daemonset.yaml")).unwrap();
    std::fs::write(
        &bad,
        ds.replace(
            "hostPath: {path: /opt/cni/bin",
            "hostPath: {paht: /opt/cni/bin",
        ),
    )
    .unwrap();
    let out = Command::new(venv_bin("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", K8S])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt field passed");

    // NADs are a CRD kubernetes-validate has no schema for: the CRD's own.
    let nads = yaml_files(&deploy.join("nads"));
    let script = "import json, sys, yaml, jsonschema\n\
                  schema = json.loads(sys.argv[1])\n\
                  for f in sys.argv[2:]:\n\
                  \x20   for d in yaml.safe_load_all(open(f)):\n\
                  \x20       jsonschema.validate(d, schema)\n\
                  \x20       print('valid', f)\n";
    let out = Command::new(venv_bin("python"))
        .args(["-c", script, &nad_schema().to_string()])
        .args(&nads)
        .output()
        .unwrap();
    let text = ok(out, "NAD schema");
    assert_eq!(text.matches("valid ").count(), nads.len(), "{text}");
}

/// Parse a conflist's plugins with the plugins' own parsers; returns how many
/// (coordinator, coordinator-ipam) entries there were.
fn parse_with_plugins(what: &str, list: &Value) -> (usize, usize) {
    let defaults = conf_example("defaults.json");
    let (mut coord, mut ipam) = (0, 0);
    for p in list["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no plugins"))
    {
        if p["type"] == "coordinator" {
            let mut raw = p.clone();
            raw["cniVersion"] = list["cniVersion"].clone();
            raw["name"] = list["name"].clone();
            raw["defaultsFile"] = json!(defaults);
            coordinator::config::Config::from_raw(&raw)
                .unwrap_or_else(|e| panic!("{what}: coordinator refuses: {e}"));
            coord += 1;
        }
        if p["ipam"]["type"] == "coordinator-ipam" {
            coordinator_ipam::config::Config::parse(&p["ipam"], || Some("node-1".into()))
                .unwrap_or_else(|e| panic!("{what}: coordinator-ipam refuses: {e}"));
            ipam += 1;
        }
    }
    (coord, ipam)
}

#[test]
fn every_conf_example_has_a_nad_with_its_config_and_both_parsers_accept_it() {
    let mut lists: Vec<PathBuf> = std::fs::read_dir(conf_example(""))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    lists.sort();
    assert!(lists.len() >= 9);
    let nad_dir = repo().join("deploy/nads");
    assert_eq!(
        yaml_files(&nad_dir).len(),
        lists.len(),
        "one NAD per conflist, no strays"
    );
    let (mut coord, mut ipam) = (0, 0);
    for list in &lists {
        let stem = list.file_stem().unwrap().to_string_lossy().to_string();
        let nad_file = nad_dir.join(format!("{stem}.yaml"));
        assert!(nad_file.is_file(), "{} missing", nad_file.display());
        let docs = yaml_docs(std::slice::from_ref(&nad_file));
        assert_eq!(docs.len(), 1, "{stem}");
        assert_eq!(docs[0]["kind"], "NetworkAttachmentDefinition");
        assert_eq!(docs[0]["metadata"]["name"], stem.as_str());
        let embedded: Value = serde_json::from_str(docs[0]["spec"]["config"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{stem}: config is not JSON: {e}"));
        let original: Value =
            serde_json::from_str(&std::fs::read_to_string(list).unwrap()).unwrap();
        assert_eq!(
            embedded, original,
            "deploy/nads/{stem}.yaml differs from its conflist"
        );
        let (c, i) = parse_with_plugins(&stem, &embedded);
        assert_eq!(c, 1, "{stem}: one coordinator");
        coord += c;
        ipam += i;
    }
    assert_eq!(coord, lists.len());
    assert!(ipam >= 3, "coordinator-ipam parsed {ipam} NAD configs");
}

fn run(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn binaries_install_themselves_atomically_and_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let bins = dir.path().join("opt/cni/bin");
    let etc = dir.path().join("etc/cni/coordinator/defaults.json");
    let (b, e) = (bins.to_str().unwrap(), etc.to_str().unwrap());
    let defaults = conf_example("defaults.json");
    let d = defaults.to_str().unwrap();
    for name in ["coordinator", "coordinator-ipam"] {
        let src = bin_dir().join(name);
        let args: &[&str] = if name == "coordinator" {
            &[
                "install",
                "--cni-bin-dir",
                b,
                "--defaults-from",
                d,
                "--defaults-to",
                e,
            ]
        } else {
            &["install", "--cni-bin-dir", b]
        };
        let first = ok(run(&src, args), name);
        assert!(first.contains(&format!("installed {b}/{name}")), "{first}");
        let dest = bins.join(name);
        assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&src).unwrap());
        assert_eq!(mode(&dest), 0o755);
        let again = ok(run(&src, args), name);
        assert!(again.contains(&format!("unchanged {b}/{name}")), "{again}");
        assert!(!again.contains("installed"), "{again}");
        // The installed copy runs.
        let v = ok(run(&dest, &["--version"]), name);
        assert_eq!(v, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
    }
    assert_eq!(
        std::fs::read(&etc).unwrap(),
        std::fs::read(&defaults).unwrap()
    );
    assert_eq!(mode(&etc), 0o644);
    let mut names: Vec<String> = std::fs::read_dir(&bins)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["coordinator", "coordinator-ipam"],
        "no temporaries left"
    );

    // Bad node defaults: refused before anything is written.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, br#"{"hostRuleTable": "five hundred"}"#).unwrap();
    let fresh = dir.path().join("fresh");
    let f = fresh.to_str().unwrap();
    let out = run(
        &bin_dir().join("coordinator"),
        &[
            "install",
            "--cni-bin-dir",
            f,
            "--defaults-from",
            bad.to_str().unwrap(),
            "--defaults-to",
            e,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("hostRuleTable"));
    assert!(!fresh.exists());
    assert_eq!(
        std::fs::read(&etc).unwrap(),
        std::fs::read(&defaults).unwrap()
    );
    // Usage errors.
    let ipam = bin_dir().join("coordinator-ipam");
    assert_eq!(
        run(
            &ipam,
            &["install", "--defaults-from", d, "--defaults-to", e]
        )
        .status
        .code(),
        Some(2)
    );
    assert_eq!(run(&ipam, &["install"]).status.code(), Some(2));
}

#[test]
fn deb_installs_into_a_scratch_root_and_runs() {
    let profile = bin_dir().file_name().unwrap().to_string_lossy().to_string();
    let out_dir = tempfile::tempdir().unwrap();
    let built = Command::new(repo().join("scripts/build-deb.sh"))
        .args(["--profile", &profile, "--no-build", "--fast", "--out"])
        .arg(out_dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&built.stdout).trim().to_string();
    ok(built, "build-deb.sh");
    // stdout is the path of the package (the build's chatter goes to stderr).
    let deb = PathBuf::from(stdout);
    assert!(deb.is_file(), "{}", deb.display());
    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f)
            .output()
            .unwrap();
        ok(o, "dpkg-deb -f").trim().to_string()
    };
    assert_eq!(field("Package"), "coordinator-cni");
    assert_eq!(field("Version"), env!("CARGO_PKG_VERSION"));

    let root = tempfile::tempdir().unwrap();
    ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.path())
            .output()
            .unwrap(),
        "dpkg-deb -x",
    );
    for name in ["coordinator", "coordinator-ipam"] {
        let bin = root.path().join("usr/lib/cni").join(name);
        assert_eq!(mode(&bin), 0o755, "{name}");
        let v = ok(run(&bin, &["--version"]), name);
        assert_eq!(v, format!("{name} {}\n", env!("CARGO_PKG_VERSION")));
    }
    // coordinator holds glibc, statically: its notice ships with it.
    let notice = root.path().join("usr/share/doc/coordinator-cni/NOTICE");
    assert!(std::fs::read_to_string(&notice).is_ok_and(|n| n.contains("glibc")));
    // And so do the notices of every crate linked into each binary.
    for (bin, crates) in [
        (
            "coordinator",
            &["netlink-packet-route", "tokio", "serde_json"][..],
        ),
        ("coordinator-ipam", &["rustls", "ring", "serde_json"][..]),
    ] {
        let p = root
            .path()
            .join(format!("usr/share/doc/coordinator-cni/licenses/{bin}.txt"));
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        assert!(
            text.starts_with(&format!("Third-party software in {bin}\n")),
            "{}",
            p.display()
        );
        for c in crates {
            assert!(text.contains(&format!("  - {c} ")), "{bin}: {c} missing");
        }
        assert!(text.contains("Apache License") && text.contains("Permission is hereby granted"));
    }
    let example = root
        .path()
        .join("usr/share/doc/coordinator-cni/examples/defaults.json");
    let cfg = coordinator::config::Config::from_raw(&json!({ "defaultsFile": example }))
        .expect("the packaged example defaults parse");
    assert!(!cfg.service_cidr.is_empty());
}

/// An init container: name, command, and its mounts as (mountPath, volume).
type Init = (String, Vec<String>, Vec<(String, String)>);

/// The DaemonSet's init containers.
fn init_containers(ds: &Value) -> Vec<Init> {
    ds["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            };
            let mounts = c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    let path = m["mountPath"].as_str().unwrap().to_string();
                    (path, m["name"].as_str().unwrap().to_string())
                })
                .collect();
            (
                c["name"].as_str().unwrap().to_string(),
                strings(&c["command"]),
                mounts,
            )
        })
        .collect()
}

/// The DaemonSet runs the installers at the paths the image puts them.
#[test]
fn daemonset_runs_what_the_image_holds() {
    let staging = std::fs::read_to_string(repo().join("scripts/build-image.sh")).unwrap();
    let docs = yaml_docs(&[
        repo().join("deploy/daemonset.yaml"),
        repo().join("deploy/configmap.yaml"),
    ]);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let spec = &ds["spec"]["template"]["spec"];
    let mut installed = Vec::new();
    for (_, cmd, _) in init_containers(ds) {
        let bin = &cmd[0];
        assert!(bin.starts_with("/usr/lib/cni/"), "{cmd:?}");
        assert_eq!(
            &cmd[1..4],
            ["install", "--cni-bin-dir", "/host/opt/cni/bin"]
        );
        installed.push(bin.trim_start_matches("/usr/lib/cni/").to_string());
    }
    installed.sort();
    assert_eq!(installed, ["coordinator", "coordinator-ipam"]);
    assert!(staging.contains("for bin in coordinator coordinator-ipam; do"));
    assert!(staging.contains(r#""$ctx/usr/lib/cni/$bin""#));
    // The defaults in the ConfigMap are a valid coordinator config.
    let text = cm["data"]["defaults.json"].as_str().unwrap();
    let map: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
    coordinator::config::Config::from_map(&map).expect("ConfigMap defaults parse");
    // The volumes the installers write exist as host paths.
    let vols = spec["volumes"].to_string();
    for p in ["/opt/cni/bin", "/etc/cni/coordinator"] {
        assert!(vols.contains(p), "{vols}");
    }
}

/// podman, as this machine allows it: runc with cgroupfs (crun refuses the
/// hybrid cgroup layout) and rlimits no higher than the sandbox's own (root
/// here lacks CAP_SYS_RESOURCE, and podman's defaults raise them).
fn podman(conf: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", conf)
        .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    c
}

/// The image is built from the release plugins alone (no base image pulled), loads
/// into podman from its OCI archive, and its init containers, run as the
/// DaemonSet runs them (the same commands, mounts and security context),
/// install both plugins and the node defaults into a scratch host.
#[test]
fn image_from_its_archive_runs_the_daemonsets_installers() {
    // The plugins as they ship (scripts/test.sh builds them).
    let release = bin_dir().parent().expect("target dir").join("release");
    let work = tempfile::tempdir().unwrap();
    let tag = format!("localhost/coordinator-test-{}:t", std::process::id());
    let built = Command::new(repo().join("scripts/build-image.sh"))
        .args(["--profile", "release", "--no-build", "--tag", &tag, "--out"])
        .arg(work.path())
        .output()
        .unwrap();
    // stdout is the archive's path (podman's chatter goes to stderr).
    let stdout = String::from_utf8_lossy(&built.stdout).trim().to_string();
    ok(built, "build-image.sh");
    let archive = PathBuf::from(stdout);
    let conf = work.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
    )
    .unwrap();
    // Removed from the store, so what runs is what the archive holds.
    struct Untag<'a>(&'a Path, String);
    impl Drop for Untag<'_> {
        fn drop(&mut self) {
            let _ = podman(self.0).args(["rmi", "--force", &self.1]).output();
        }
    }
    let _untag = Untag(&conf, tag.clone());
    ok(
        podman(&conf).args(["rmi", &tag]).output().unwrap(),
        "podman rmi",
    );
    let loaded = ok(
        podman(&conf)
            .arg("load")
            .arg("-i")
            .arg(&archive)
            .output()
            .unwrap(),
        "podman load",
    );
    assert!(loaded.contains(&tag), "{loaded}");
    let inspect = ok(
        podman(&conf)
            .args([
                "image",
                "inspect",
                "--format",
                "{{.Size}} {{len .RootFS.Layers}}",
                &tag,
            ])
            .output()
            .unwrap(),
        "podman image inspect",
    );
    assert_eq!(
        inspect.split_whitespace().nth(1),
        Some("1"),
        "one layer, no base: {inspect}"
    );

    // The host side: the DaemonSet's hostPath volumes and its ConfigMap.
    let docs = yaml_docs(&[
        repo().join("deploy/daemonset.yaml"),
        repo().join("deploy/configmap.yaml"),
    ]);
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap();
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let host = work.path().join("host");
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let defaults = cm["data"]["defaults.json"].as_str().unwrap();
    std::fs::write(config.join("defaults.json"), defaults).unwrap();
    let source = |volume: &str| -> PathBuf {
        let v = ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == volume)
            .unwrap();
        match v["hostPath"]["path"].as_str() {
            Some(p) => {
                let dir = host.join(p.trim_start_matches('/'));
                std::fs::create_dir_all(&dir).unwrap();
                dir
            }
            None => config.clone(),
        }
    };
    for (name, cmd, mounts) in init_containers(ds) {
        let mut run = podman(&conf);
        run.args([
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "0",
            "--read-only",
        ])
        .args(["--cap-drop", "ALL", "--cap-add", "DAC_OVERRIDE"])
        .args(["--security-opt", "no-new-privileges"]);
        for (path, volume) in &mounts {
            run.arg("-v")
                .arg(format!("{}:{path}", source(volume).display()));
        }
        run.args(["--entrypoint", &cmd[0], &tag]).args(&cmd[1..]);
        ok(run.output().unwrap(), &name);
    }
    for name in ["coordinator", "coordinator-ipam"] {
        let installed = host.join("opt/cni/bin").join(name);
        assert_eq!(mode(&installed), 0o755, "{name}");
        assert!(
            std::fs::read(&installed).unwrap() == std::fs::read(release.join(name)).unwrap(),
            "{name} installed is not the binary built"
        );
    }
    let etc = host.join("etc/cni/coordinator/defaults.json");
    assert_eq!(mode(&etc), 0o644);
    assert_eq!(std::fs::read_to_string(&etc).unwrap(), defaults);

    // The notices ship in the image: copied out of a container never started.
    let holder = format!("coordinator-test-notices-{}", std::process::id());
    ok(
        podman(&conf)
            .args(["create", "--name", &holder, &tag])
            .output()
            .unwrap(),
        "podman create",
    );
    let copied = work.path().join("notices");
    let cp = podman(&conf)
        .args([
            "cp",
            &format!("{holder}:/usr/share/coordinator"),
            copied.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let _ = podman(&conf).args(["rm", "--force", &holder]).output();
    ok(cp, "podman cp");
    for file in [
        "NOTICE",
        "LICENSE",
        "licenses/coordinator.txt",
        "licenses/coordinator-ipam.txt",
    ] {
        assert_eq!(
            std::fs::read(copied.join(file)).unwrap(),
            std::fs::read(repo().join(file)).unwrap(),
            "{file} in the image"
        );
    }
}

/// The coordinator as it ships (`scripts/build.sh`: release, static; the
/// .deb, the image and the demo take this one) has no fault-injection hooks:
/// neither variable's name is in it, and with both set a DEL (whose first
/// step is a netlink request) and a VERSION behave as without them. Test
/// builds have the hooks (`--fault-injection`); scripts/test.sh builds the
/// release coordinator too, for this test.
#[test]
fn shipped_coordinator_has_no_fault_injection_hooks() {
    use cni::netlink::fault::{ENV, PANIC_ENV};
    let bin = bin_dir()
        .parent()
        .expect("target dir")
        .join("release/coordinator");
    assert!(
        bin.is_file(),
        "{} missing: run scripts/build.sh (scripts/test.sh does)",
        bin.display()
    );
    for name in [ENV, PANIC_ENV] {
        assert!(
            !cni_tests::file_contains(&bin, name),
            "{} holds {name}: a test hook ships",
            bin.display()
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "shipped", "type": "coordinator",
        "defaultsFile": dir.path().join("none.json"),
        "logOptions": {"logFile": dir.path().join("coordinator.log")}
    })
    .to_string();
    for (command, hook) in [
        ("VERSION", ENV),
        ("VERSION", PANIC_ENV),
        ("DEL", ENV),
        ("DEL", PANIC_ENV),
    ] {
        // In a network namespace of its own: the DEL looks for its host
        // veth there (and finds nothing to remove).
        let mut child = Command::new("unshare")
            .arg("--net")
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "shipped-hooks")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(hook, "1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        ok(out, &format!("{command} with {hook}=1"));
        if command == "VERSION" {
            let v: Value = serde_json::from_str(&stdout).expect("VERSION prints JSON");
            assert!(v["supportedVersions"].is_array(), "{v}");
        } else {
            assert_eq!(stdout, "", "DEL prints nothing");
        }
    }
}

/// The coordinator's operator commands read files bounded and only when
/// regular: `install --defaults-from` and `explain --defaults` naming a FIFO
/// (an unbounded read waits forever) or `/dev/zero` (it fills memory) fail
/// at once, naming the file, with a non-zero status and nothing installed.
/// The FIFO first: a build that reads unbounded hangs there, and the hang
/// limit fails the test before the device is tried.
#[test]
fn operator_commands_refuse_a_fifo_or_a_device_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("defaults.json");
    make_fifo(&fifo);
    let fifo = fifo.to_str().unwrap().to_string();
    let bins = dir.path().join("bin");
    let to = dir.path().join("etc/defaults.json");
    let bin = bin_dir().join("coordinator");
    for path in [fifo.as_str(), "/dev/zero"] {
        let install = [
            "install",
            "--cni-bin-dir",
            bins.to_str().unwrap(),
            "--defaults-from",
            path,
            "--defaults-to",
            to.to_str().unwrap(),
        ];
        let explain = [
            "explain",
            "--netns",
            "/proc/self/ns/net",
            "--defaults",
            path,
        ];
        for args in [&install[..], &explain[..]] {
            let out = cni_tests::exec::Exec::new(&bin)
                .args(args)
                .run_within(std::time::Duration::from_secs(10));
            assert!(out.code.is_some_and(|c| c != 0), "{args:?}: {:?}", out.code);
            assert!(
                out.stderr.contains(path) && out.stderr.contains("not a regular file"),
                "{args:?}: {}",
                out.stderr
            );
        }
        assert!(
            !bins.exists() && !to.exists(),
            "{path}: something installed"
        );
    }
}

fn make_fifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string; the result is checked.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}
