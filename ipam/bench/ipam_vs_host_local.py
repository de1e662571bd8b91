#!/usr/bin/env python3
"""ADD/DEL exec latency: coordinator-ipam vs host-local at 0 and N records.

Usage: [RUNS=60] [FILL=4000] [BEFORE=/path/to/older/coordinator-ipam] \
       python3 ipam_vs_host_local.py target/release/coordinator-ipam
Pre-fills each store directly (coordinator-ipam: a state.json the plugin
converts on its warm-up call; host-local: one file per address), then runs
ADD+DEL pairs of every case interleaved in each round. Root not needed;
works under /tmp/ipb/run (deleted first).
"""
import json, os, shutil, statistics, subprocess, sys, time
BIN = sys.argv[1] if len(sys.argv) > 1 else "/work/wt/ipamperf/target/release/coordinator-ipam"
N = int(os.environ.get("RUNS", "50"))
FILL = int(os.environ.get("FILL", "4000"))
ROOT = "/tmp/ipb/run"
NET = "benchnet"

def conf_ours(d):
    return {"cniVersion": "1.0.0", "name": NET, "type": "macvlan",
            "ipam": {"type": "coordinator-ipam", "nodeName": "n1",
                     "store": {"kind": "file", "dataDir": d},
                     "quarantineFile": d + "/quarantine.json",
                     "pools": [{"name": "p", "subnet": "10.20.0.0/16", "gateway": "10.20.0.1"}]}}

def conf_hl(d):
    return {"cniVersion": "1.0.0", "name": NET, "type": "macvlan",
            "ipam": {"type": "host-local", "dataDir": d,
                     "ranges": [[{"subnet": "10.20.0.0/16", "gateway": "10.20.0.1"}]]}}

def ip(i):
    i += 2
    return f"10.20.{i >> 8}.{i & 255}"

def fill_ours(d, n):
    os.makedirs(f"{d}/{NET}", exist_ok=True)
    recs = [{"ip": ip(i), "pool": "p", "node": "n1",
             "owner": {"containerId": f"fill{i:08x}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "ifname": "eth0"}}
            for i in range(n)]
    st = {"version": 1, "records": recs, "cursors": {"p": ip(n - 1)} if n else {}}
    with open(f"{d}/{NET}/state.json", "w") as f:
        json.dump(st, f)

def fill_hl(d, n):
    os.makedirs(f"{d}/{NET}", exist_ok=True)
    for i in range(n):
        with open(f"{d}/{NET}/{ip(i)}", "w") as f:
            f.write(f"fill{i:08x}aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\neth0")
    if n:
        with open(f"{d}/{NET}/last_reserved_ip.0", "w") as f:
            f.write(ip(n - 1))

def call(binary, cmd, cid, conf):
    env = {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/usr/lib/cni", "PATH": "/usr/bin:/bin"}
    data = json.dumps(conf).encode()
    t = time.perf_counter()
    p = subprocess.run([binary], input=data, env=env, capture_output=True)
    dt = (time.perf_counter() - t) * 1000
    if p.returncode != 0:
        sys.exit(f"{binary} {cmd} failed: {p.stdout!r} {p.stderr!r}")
    return dt

def q(v):
    v = sorted(v)
    return f"min {v[0]:6.2f}  med {statistics.median(v):6.2f}  p90 {v[int(len(v)*0.9)]:6.2f}  max {v[-1]:6.2f} ms  (n={len(v)})"

def main():
    shutil.rmtree(ROOT, ignore_errors=True)
    plugins = {"ours": (BIN, conf_ours, fill_ours), "host-local": ("/usr/lib/cni/host-local", conf_hl, fill_hl)}
    if os.environ.get("BEFORE"):
        plugins["before"] = (os.environ["BEFORE"], conf_ours, fill_ours)
    cases = [(k, fill) for fill in (0, FILL) for k in plugins]
    res = {c: {"ADD": [], "DEL": []} for c in cases}
    confs = {}
    for (k, fill) in cases:
        b, cf, fl = plugins[k]
        d = f"{ROOT}/{k}-{fill}"
        os.makedirs(d)
        fl(d, fill)
        confs[(k, fill)] = cf(d)
        call(b, "ADD", "warm", confs[(k, fill)])  # warm-up (and migration)
    # all four cases interleaved in each round; ADD then DEL keeps the count constant
    for i in range(N):
        for c in cases:
            b = plugins[c[0]][0]
            cid = f"bench{i}"
            res[c]["ADD"].append(call(b, "ADD", cid, confs[c]))
            res[c]["DEL"].append(call(b, "DEL", cid, confs[c]))
    for c in sorted(cases, key=lambda c: (c[1], c[0])):
        for verb in ("ADD", "DEL"):
            print(f"{c[1]:5d} records  {c[0]:10s} {verb}: {q(res[c][verb])}")
main()
