//! cni-chain: run a conflist like a container runtime (libcni) would.
//!
//! cni-chain add|del|check|gc|status --conflist F [--netns PATH] [--ifname eth0]
//!     [--container-id ID] [--node-netns NAME] [--args 'K=V;..']
//!     [--capability-args JSON] [--cni-path P] [--cache-dir D] [--timeout SECS]
//!
//! stdout: the ADD result JSON, or the error JSON (exit 1).
//! stderr: one line per plugin exec (wall time, peak RSS, exit code).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use integration::chain::{parse_cni_path, Attachment, Chain, ChainError, PluginRun, Verb};
use serde_json::{Map, Value};

const USAGE: &str = "usage: cni-chain add|del|check|gc|status --conflist F [--netns PATH] \
[--ifname eth0] [--container-id ID] [--node-netns NAME] [--args 'K=V;..'] \
[--capability-args JSON] [--cni-path P] [--cache-dir D] [--timeout SECS]";

const DEFAULT_CACHE_DIR: &str = "/var/lib/cni/cni-chain";

struct Cli {
    verb: Verb,
    conflist: PathBuf,
    netns: Option<PathBuf>,
    ifname: String,
    container_id: Option<String>,
    node_netns: Option<String>,
    args: Vec<(String, String)>,
    capability_args: Map<String, Value>,
    cni_path: Option<String>,
    cache_dir: PathBuf,
    timeout: Option<Duration>,
}

fn parse(argv: &[String]) -> Result<Cli, String> {
    let mut it = argv.iter();
    let verb = it
        .next()
        .and_then(|v| Verb::parse(v))
        .ok_or_else(|| USAGE.to_string())?;
    let mut cli = Cli {
        verb,
        conflist: PathBuf::new(),
        netns: None,
        ifname: "eth0".into(),
        container_id: None,
        node_netns: None,
        args: Vec::new(),
        capability_args: Map::new(),
        cni_path: None,
        cache_dir: PathBuf::from(DEFAULT_CACHE_DIR),
        timeout: None,
    };
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?
            .clone();
        match flag.as_str() {
            "--conflist" => cli.conflist = value.into(),
            "--netns" => cli.netns = Some(value.into()),
            "--ifname" => cli.ifname = value,
            "--container-id" => cli.container_id = Some(value),
            "--node-netns" => cli.node_netns = Some(value),
            "--args" => cli.args = Attachment::parse_args(&value).map_err(|e| e.msg)?,
            "--capability-args" => {
                cli.capability_args = match serde_json::from_str(&value) {
                    Ok(Value::Object(m)) => m,
                    _ => return Err("--capability-args must be a JSON object".into()),
                }
            }
            "--cni-path" => cli.cni_path = Some(value),
            "--cache-dir" => cli.cache_dir = value.into(),
            "--timeout" => {
                let secs: f64 = value
                    .parse()
                    .map_err(|_| format!("--timeout {value}: not a number"))?;
                cli.timeout =
                    Some(Duration::try_from_secs_f64(secs).map_err(|e| format!("--timeout: {e}"))?);
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if cli.conflist.as_os_str().is_empty() {
        return Err(format!("--conflist is required\n{USAGE}"));
    }
    if matches!(cli.verb, Verb::Add | Verb::Check | Verb::Del) && cli.container_id.is_none() {
        return Err(format!(
            "--container-id is required for {}",
            cli.verb.as_str()
        ));
    }
    if matches!(cli.verb, Verb::Add | Verb::Check) && cli.netns.is_none() {
        return Err(format!("--netns is required for {}", cli.verb.as_str()));
    }
    Ok(cli)
}

fn report(runs: &[PluginRun]) {
    for r in runs {
        match &r.skipped {
            Some(why) => eprintln!(
                "{} #{} {}: skipped ({why})",
                r.verb.as_str(),
                r.index,
                r.plugin
            ),
            None => eprintln!(
                "{} #{} {}: {:.3} ms wall, {:.3} ms CPU, max RSS {} KiB, exit {}",
                r.verb.as_str(),
                r.index,
                r.plugin,
                r.wall.as_secs_f64() * 1e3,
                r.cpu.as_secs_f64() * 1e3,
                r.max_rss_kib,
                r.exit_code.map_or("signal".to_string(), |c| c.to_string()),
            ),
        }
    }
}

fn fail(e: &ChainError, cni_version: &str) -> ExitCode {
    report(&e.runs);
    if let Some(last) = e.runs.last() {
        if !last.stderr.trim().is_empty() {
            eprintln!(
                "--- stderr of {} ---\n{}",
                last.plugin,
                last.stderr.trim_end()
            );
        }
    }
    eprintln!("cni-chain: {e}");
    let mut err = e.error.clone();
    if let Value::Object(o) = &mut err {
        o.entry("cniVersion").or_insert_with(|| cni_version.into());
    }
    print_json(&err);
    ExitCode::FAILURE
}

/// A closed stdout (`| head`) is the reader's choice, not a crash.
fn print_json(v: &Value) {
    use std::io::Write;
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    let _ = writeln!(std::io::stdout(), "{text}");
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let cli = match parse(&argv) {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let mut chain = match Chain::from_file(&cli.conflist) {
        Ok(c) => c,
        Err(e) => return fail(&e, ""),
    };
    let version = chain.list().cni_version.clone();
    chain = chain
        .node_netns(cli.node_netns.as_deref())
        .cache_dir(&cli.cache_dir);
    if let Some(p) = &cli.cni_path {
        chain = chain.cni_path(parse_cni_path(p));
    }
    if let Some(t) = cli.timeout {
        chain = chain.timeout(t);
    }
    let att = Attachment {
        container_id: cli.container_id.unwrap_or_default(),
        netns: cli.netns,
        ifname: cli.ifname,
        args: cli.args,
        capability_args: cli.capability_args,
    };
    match chain.run(cli.verb, &att) {
        Ok(out) => {
            report(&out.runs);
            if let Some(result) = out.result {
                print_json(&result);
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e, &version),
    }
}
