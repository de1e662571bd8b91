//! The measuring tools of the datapath scenario: iperf3 (TCP throughput),
//! ping (round-trip latency, per-packet times), and the machine guard that
//! reads `/proc/stat` so a round taken while the machine was busy (other
//! work, a noisy neighbour's steal) is flagged instead of trusted.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::nsexec::{command_in, Enter};

/// An iperf3 server in a netns, killed when dropped.
pub struct Server(Child);

impl Server {
    pub fn start(ns: &str, bind: Ipv4Addr) -> io::Result<Server> {
        let mut cmd = command_in(ns, "iperf3", Enter::NetOnly)?;
        cmd.args(["-s", "-B", &bind.to_string(), "-p", "5201"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("iperf3: {e} (scripts/setup.sh installs it)"),
            )
        })?;
        // Ready when the port accepts: a connect from inside the netns.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if crate::lab::in_netns(ns, || {
                std::net::TcpStream::connect_timeout(
                    &(bind, 5201).into(),
                    Duration::from_millis(200),
                )
            })
            .is_ok()
            {
                return Ok(Server(child));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut s = Server(child);
        s.stop();
        Err(io::Error::other(format!(
            "iperf3 server in {ns} did not come up"
        )))
    }

    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One iperf3 client run's JSON. A transfer that stalls ends at
/// `--snd-timeout`; the client is killed if it overruns the run by 10 s.
fn client(ns: &str, dst: Ipv4Addr, streams: u32, seconds: u32) -> Result<Value, String> {
    let mut cmd = command_in(ns, "iperf3", Enter::NetOnly).map_err(|e| e.to_string())?;
    cmd.args(["-c", &dst.to_string(), "-p", "5201", "-J"])
        .args(["-t", &seconds.to_string(), "-P", &streams.to_string()])
        .args(["--connect-timeout", "2000", "--snd-timeout", "2000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let out = run_bounded(cmd, Duration::from_secs(u64::from(seconds) + 10))?;
    serde_json::from_slice(&out).map_err(|e| format!("iperf3 JSON: {e}"))
}

/// Received throughput in Gbit/s of one run, or why not.
pub fn tcp(ns: &str, dst: Ipv4Addr, streams: u32, seconds: u32) -> Result<f64, String> {
    let v = client(ns, dst, streams, seconds)?;
    if let Some(e) = v["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| "iperf3 JSON without end.sum_received".into())
}

/// Bytes one stream gets through in `seconds`, however the run ends (a
/// stall is the point of the MTU check).
pub fn tcp_bytes(ns: &str, dst: Ipv4Addr, seconds: u32) -> Result<f64, String> {
    let v = client(ns, dst, 1, seconds)?;
    // On a stall iperf3 ends with an error and no `end` summary: add up the
    // intervals it did report.
    if let Some(b) = v["end"]["sum_received"]["bytes"].as_f64() {
        return Ok(b);
    }
    Ok(v["intervals"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["sum"]["bytes"].as_f64())
        .sum())
}

fn run_bounded(mut cmd: Command, limit: Duration) -> Result<Vec<u8>, String> {
    let mut child = cmd.spawn().map_err(|e| format!("iperf3: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = io::Read::read_to_end(&mut stdout, &mut buf);
        buf
    });
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    reader
        .join()
        .map_err(|_| "iperf3 output reader panicked".to_string())
}

/// Median round-trip time in µs of `count` pings 5 ms apart.
pub fn rtt_us(ns: &str, dst: Ipv4Addr, count: u32) -> Result<f64, String> {
    let out = command_in(ns, "ping", Enter::NetOnly)
        .map_err(|e| e.to_string())?
        .args(["-n", "-c", &count.to_string(), "-i", "0.005", "-W", "1"])
        .arg(dst.to_string())
        .output()
        .map_err(|e| format!("ping: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut times: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if times.len() < count as usize / 2 {
        return Err(format!("ping {dst}: {} of {count} answered", times.len()));
    }
    Ok(median(&mut times))
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU time split of the whole machine over an interval, from `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Load {
    /// Share of CPU time not idle (user, system, irq, steal, ...), 0..1.
    pub busy: f64,
    /// Share stolen by the hypervisor, 0..1.
    pub steal: f64,
}

/// (total, idle + iowait, steal) jiffies of the `cpu` line.
fn stat() -> io::Result<(u64, u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat")?;
    let line = s
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| io::Error::other("/proc/stat: no cpu line"))?;
    Ok(split_stat(line))
}

/// `cpu  user nice system idle iowait irq softirq steal ...`.
fn split_stat(line: &str) -> (u64, u64, u64) {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (f.iter().sum(), get(3) + get(4), get(7))
}

/// Measure the machine over `d` while nothing of ours runs.
pub fn idle_check(d: Duration) -> io::Result<Load> {
    let a = stat()?;
    std::thread::sleep(d);
    let b = stat()?;
    Ok(load_between(a, b))
}

/// Start a measurement of the machine's load over a span of our own work.
pub fn load_start() -> io::Result<(u64, u64, u64)> {
    stat()
}

pub fn load_since(a: (u64, u64, u64)) -> io::Result<Load> {
    Ok(load_between(a, stat()?))
}

fn load_between(a: (u64, u64, u64), b: (u64, u64, u64)) -> Load {
    let total = b.0.saturating_sub(a.0) as f64;
    if total <= 0.0 {
        return Load::default();
    }
    Load {
        busy: 1.0 - b.1.saturating_sub(a.1) as f64 / total,
        steal: b.2.saturating_sub(a.2) as f64 / total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let l = "cpu  100 5 50 800 20 1 2 30 0 0";
        assert_eq!(split_stat(l), (1008, 820, 30));
        let load = load_between((1000, 800, 10), (2000, 1550, 60));
        assert!((load.busy - 0.25).abs() < 1e-9);
        assert!((load.steal - 0.05).abs() < 1e-9);
        assert_eq!(load_between((5, 5, 5), (5, 5, 5)).busy, 0.0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
