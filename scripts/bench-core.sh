#!/usr/bin/env bash
# The core benchmark of hvroute at 10,000 VMs: cold convergence against a shell loop, the
# no-op resync and the daemon's memory. Run `scripts/bench-core.sh --help` for details.
set -euo pipefail

log_prefix=bench-core
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-core.sh [--vms N] [--runs N] [--loop-runs N] [--passes N] [--noop-runs N]
                             [--soak-passes N] [--rev REV] [--write]
       scripts/bench-core.sh --help

Builds hvroute (release) and measures, in throw-away network namespaces that send no packets:

  1. cold convergence: `hvroute reconcile` into an empty namespace (no bridge yet), --runs times,
     each in a fresh namespace; `ip -batch` of the same objects (reference, --runs times); and a
     shell loop with one `ip` fork per route and per neighbour (--loop-runs times).
     Load: --vms VMs, each with two IPv6 addresses in 2001:db8:100::/40, so 2 x VMS /128 routes
     and 2 x VMS permanent neighbours.
  2. per-object cost by family: the same three methods for the 762 IPv4 /32s of the three
     documentation /24s, against 762 IPv6 /128s (one address per VM).
  3. no-op resync: `hvroute reconcile --json` in the converged namespace (--noop-runs times),
     then `hvroute daemon` there and --passes passes asked for over the control socket, and
     20 scrapes of its metrics (`curl` of /metrics; the median is printed, not in the report).
  4. daemon memory: VmRSS and VmHWM after the first pass, after the passes, after
     --soak-passes more, and for a daemon that converges an empty namespace itself. Also how
     often an idle daemon runs a pass (it should not run any).

Options (defaults in brackets):
  --vms N         VMs in the main load [10000]
  --runs N        cold hvroute and ip -batch runs; medians are quoted [5]
  --loop-runs N   runs of the shell loop (about 90 s each at 10,000 VMs); 0 skips it [2]
  --passes N      daemon passes over the control socket [20]
  --noop-runs N   no-op `hvroute reconcile --json` runs [10]
  --soak-passes N further daemon passes after those, for the steady-state memory figure [100]
  --rev REV       build the committed revision REV (a clean `git archive` export, built in
                  target/bench-core) instead of the working tree; use it when the working tree
                  holds someone's unfinished edits [working tree]
  --write         also replace the generated block of docs/benchmarks.md (between
                  <!-- bench-core:begin --> and <!-- bench-core:end -->)

Prints progress, then a results table and the markdown block. Needs root. Everything it makes
(namespaces named hvr-bench-PID-N, a work dir under /tmp, one daemon) is removed on exit; it
only ever kills the daemon PID it started itself.
EOF
}

vms=10000
runs=5
loop_runs=2
passes=20
noop_runs=10
soak_passes=100
write=""
rev=""

need_value() {
    if [[ $# -lt 2 || ! "$2" =~ ^[0-9]+$ ]]; then
        printf 'bench-core: %s needs a whole number (see --help)\n' "$1" >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --vms) need_value "$@"; vms="$2"; shift ;;
    --runs) need_value "$@"; runs="$2"; shift ;;
    --loop-runs) need_value "$@"; loop_runs="$2"; shift ;;
    --passes) need_value "$@"; passes="$2"; shift ;;
    --noop-runs) need_value "$@"; noop_runs="$2"; shift ;;
    --soak-passes) need_value "$@"; soak_passes="$2"; shift ;;
    --write) write=1 ;;
    --rev)
        if [[ $# -lt 2 || -z "$2" ]]; then
            printf 'bench-core: --rev needs a git revision (see --help)\n' >&2
            exit 2
        fi
        rev="$2"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'bench-core: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done
if ((vms < 1 || vms > 1000000)); then
    printf 'bench-core: --vms %s is out of range (1 to 1000000)\n' "$vms" >&2
    exit 2
fi
if ((runs < 1 || passes < 1 || noop_runs < 1)); then
    printf 'bench-core: --runs, --passes and --noop-runs must be at least 1\n' >&2
    exit 2
fi

# Bounds on everything that waits.
readonly run_timeout_s=300     # one hvroute reconcile or ip -batch
readonly loop_timeout_s=1800   # one shell loop (about 90 s at 10,000 VMs on a 2-core VM)
readonly daemon_start_timeout_s=60
readonly daemon_stop_timeout_s=10
readonly idle_window_s=5
readonly settle_s=1            # after deleting a namespace, let the kernel free it

readonly doc_file="docs/benchmarks.md"

need_root
ensure_packages time nftables curl
ensure_cargo
cd "$repo_root"
if [[ -n "$write" ]] && ! grep -q '^<!-- bench-core:begin -->$' "$doc_file" 2>/dev/null; then
    die "--write needs $doc_file with a <!-- bench-core:begin --> ... <!-- bench-core:end --> block."
fi

# ---------------------------------------------------------------------------------------------
# Clean-up: the namespaces this run made, the one daemon it started, the work dir.

work=""
daemon_pid=""
ns_seq=0
declare -a namespaces=()

stop_daemon() {
    local pid="$daemon_pid"
    [[ -n "$pid" ]] || return 0
    daemon_pid=""
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < daemon_stop_timeout_s * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            warn "daemon $pid did not stop on SIGTERM within ${daemon_stop_timeout_s}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

del_ns() {
    local ns="$1" i
    ip netns del "$ns" 2>/dev/null || true
    for i in "${!namespaces[@]}"; do
        [[ "${namespaces[i]}" == "$ns" ]] && unset 'namespaces[i]'
    done
    sleep "$settle_s"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_daemon
    local ns
    for ns in "${namespaces[@]}"; do
        ip netns del "$ns" 2>/dev/null || true
    done
    if [[ -n "$work" && -d "$work" ]]; then
        rm -rf -- "$work"
    fi
    exit "$rc"
}
# Ctrl-C reaches the whole foreground process group, so the current step stops at once; a
# SIGTERM to this script alone is handled when the current (bounded) step returns.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# new_ns: make a fresh, uniquely named namespace with lo up and put its name in $ns (the
# caller's variable: no subshell, so that cleanup() knows every namespace).
new_ns() {
    ns_seq=$((ns_seq + 1))
    ns="hvr-bench-$$-$ns_seq"
    ip netns add "$ns"
    namespaces+=("$ns")
    ip -n "$ns" link set lo up
}

# ---------------------------------------------------------------------------------------------
# Build and generate the loads.

work="$(mktemp -d /tmp/hvroute-bench.XXXXXX)"

build_hvroute "$work" "$rev" bench-core
hvroute_bin="$built_bin"
results="$work/results.jsonl"
: >"$results"
py="$work/bench.py"

cat >"$py" <<'PYEOF'
"""Helpers for scripts/bench-core.sh: load generator, recorders, control-socket client, report."""
import json
import os
import re
import socket
import statistics
import sys
import time

BRIDGE = "cloudbr0"
BRIDGE_MAC = "0e:00:00:00:00:01"
PROTO = 44
V4_NETS = ["192.0.2", "198.51.100", "203.0.113"]  # RFC 5737; .1 to .254 of each


def mac_of(i):
    return "52:54:00:%02x:%02x:%02x" % ((i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF)


def v6(net, i):
    return f"2001:db8:{net:x}::1:{i >> 16:x}:{i & 0xFFFF:x}"


def write_set(root, name, vms, work):
    """vms: list of (name, mac, [addr...]). Writes state dir, config, list and ip batch."""
    d = os.path.join(root, name)
    state = os.path.join(d, "state")
    os.makedirs(state)
    batch = [
        f"link add {BRIDGE} address {BRIDGE_MAC} mtu 1500 type bridge",
        f"addr add 169.254.0.1/32 dev {BRIDGE}",
        f"addr add fe80::1/64 dev {BRIDGE} nodad",
        f"link set {BRIDGE} up",
    ]
    lines = []
    for vm, mac, addrs in vms:
        with open(os.path.join(state, vm + ".json"), "w") as f:
            json.dump({"version": 1, "name": vm, "source": "cli",
                       "nics": [{"mac": mac, "addresses": addrs}]}, f)
        for a in addrs:
            fam = 6 if ":" in a else 4
            lines.append(f"{fam} {a} {mac}")
            batch.append(f"route replace {a}/{128 if fam == 6 else 32} dev {BRIDGE} proto {PROTO}")
            batch.append(f"neigh replace {a} lladdr {mac} dev {BRIDGE} nud permanent proto {PROTO}")
    with open(os.path.join(d, "list"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(d, "batch"), "w") as f:
        f.write("\n".join(batch) + "\n")
    with open(os.path.join(d, "hv.toml"), "w") as f:
        f.write(f'''state_dir = "{state}"
socket = "{d}/hvroute.sock"
boot_id_path = "{work}/boot_id"
route_protocol = {PROTO}
resync_interval_s = 3600

[bridge]
name = "{BRIDGE}"
mac = "{BRIDGE_MAC}"

[pools]
ipv4 = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24"]
ipv6 = ["2001:db8:100::/40"]

[bgp]
asn = 65001
router_id = "10.255.0.1"

# The kernel side only; scripts/bench-frr.sh measures FRR.
[frr]
enabled = false
''')
    return len(lines)


def gen(work, n):
    root = os.path.join(work, "sets")
    # Main load: n VMs, one NIC, two IPv6 addresses each.
    main = [(f"vm{i:06d}", mac_of(i), [v6(0x100, i), v6(0x101, i)]) for i in range(n)]
    k = write_set(root, "main", main, work)
    # Per-family comparison: every usable documentation IPv4 /32, and as many IPv6 /128s.
    v4 = [f"{net}.{h}" for net in V4_NETS for h in range(1, 255)]
    small4 = [(f"v4-{i:04d}", mac_of(i), [a]) for i, a in enumerate(v4)]
    small6 = [(f"v6-{i:04d}", mac_of(i), [v6(0x102, i)]) for i in range(len(v4))]
    k4 = write_set(root, "v4", small4, work)
    k6 = write_set(root, "v6", small6, work)
    print(f"main: {n} VMs, {k} addresses; v4: {len(small4)} VMs, {k4}; v6: {len(small6)} VMs, {k6}")


def append(results, rec):
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_time(path):
    # /usr/bin/time -f '%e %U %S %M'; a failing command adds a "Command exited" line first.
    last = [l for l in open(path).read().splitlines() if l.strip()][-1].split()
    return {"user_s": float(last[1]), "sys_s": float(last[2]), "maxrss_kb": int(last[3])}


def rec_run(results, bench, ds, run, wall_s, timefile, routes, neighs, outjson=None):
    rec = {"bench": bench, "ds": ds, "run": int(run)}
    if wall_s != "-":  # a no-op run records hvroute's own timings only
        rec.update(wall_ms=float(wall_s) * 1000, routes=int(routes), neighs=int(neighs))
    rec.update(read_time(timefile))
    if outjson:
        o = json.load(open(outjson))
        rec["timings"] = o["timings"]
        rec["ops"] = len(o["plan"]["ops"])
        rec["errors"] = len(o["errors"])
        rec["addresses"] = o["addresses"]
    append(results, rec)
    t = rec.get("timings")
    extra = (f" (read {t['read_ms']:.0f}, observe {t['observe_ms']:.0f}, plan {t['plan_ms']:.0f},"
             f" apply {t['apply_ms']:.0f} ms; {rec['ops']} ops)") if t else ""
    cpu = rec["user_s"] + rec["sys_s"]
    if "wall_ms" in rec:
        print(f"{bench} {ds} run {run}: {rec['wall_ms']:.0f} ms wall, {cpu:.2f} s CPU{extra};"
              f" kernel holds {routes} routes, {neighs} neighbours")
    else:
        print(f"{bench} {ds} run {run}: {cpu:.2f} s CPU{extra}")


def request(sock, op, timeout=60):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall((json.dumps({"op": op}) + "\n").encode())
        line = s.makefile().readline()
    finally:
        s.close()
    return json.loads(line)


def ctl_ready(sock, min_passes):
    st = request(sock, "status", timeout=5)
    lp = st.get("last_pass") or {}
    return st.get("passes", 0) >= int(min_passes) and not lp.get("errors")


def mem(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0])
    return out


def cpu_ticks(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])  # utime + stime


def rec_mem(results, pid, label):
    m = mem(pid)
    append(results, {"bench": "mem", "label": label, **m})
    print(f"daemon memory {label}: VmRSS {m['VmRSS'] / 1024:.1f} MiB, VmHWM {m['VmHWM'] / 1024:.1f} MiB")


def idle(results, sock, pid, window):
    hz = os.sysconf("SC_CLK_TCK")
    p0, c0, t0 = request(sock, "status")["passes"], cpu_ticks(pid), time.monotonic()
    time.sleep(float(window))
    p1, c1, t1 = request(sock, "status")["passes"], cpu_ticks(pid), time.monotonic()
    dt = t1 - t0
    rec = {"bench": "idle", "passes_per_s": (p1 - p0) / dt, "cpu_pct": 100.0 * (c1 - c0) / hz / dt,
           "window_s": dt}
    append(results, rec)
    print(f"idle daemon over {dt:.1f} s: {p1 - p0} passes ({rec['passes_per_s']:.1f}/s),"
          f" {rec['cpu_pct']:.0f}% of a core")


def drive(results, sock, n, bench="pass"):
    n = int(n)
    for i in range(n):
        t = time.perf_counter()
        r = request(sock, "reconcile")
        rtt = (time.perf_counter() - t) * 1000
        if not isinstance(r, dict) or "total_ms" not in r:
            sys.exit(f"unexpected answer to reconcile: {r!r}")
        append(results, {"bench": bench, "i": i + 1, "pass": r["pass"], "ops": r["ops"],
                         "errors": len(r["errors"]), "total_ms": r["total_ms"], "rtt_ms": rtt})
        if bench == "pass" or (i + 1) % 25 == 0 or i + 1 == n:
            what = "daemon pass" if bench == "pass" else f"daemon {bench} pass"
            print(f"{what} {r['pass']} ({i + 1}/{n}): {r['total_ms']:.0f} ms, {r['ops']} ops,"
                  f" answered in {rtt:.0f} ms")


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def daemon_log(results, logfile, label):
    """The first 'applied plan' line: the daemon's own cold convergence."""
    for line in open(logfile, errors="replace"):
        line = ANSI.sub("", line)
        if "applied plan" in line:
            ops = re.search(r"ops=(\d+)", line)
            ms = re.search(r'ms="?([0-9.]+)', line)
            if ops and ms:
                append(results, {"bench": "daemon_cold", "label": label, "ops": int(ops.group(1)),
                                 "total_ms": float(ms.group(1))})
                print(f"daemon's own cold pass: {ops.group(1)} ops in {float(ms.group(1)):.0f} ms")
                return
    print("daemon log has no 'applied plan' line", file=sys.stderr)


def daemon_observe(results, logfile, n):
    """The daemon's debug line 'observed ... neighs_ms=X both_ms=Y' of its last n passes."""
    rows = []
    for line in open(logfile, errors="replace"):
        line = ANSI.sub("", line)
        if "observed" in line:
            both = re.search(r"both_ms=([0-9.]+)", line)
            if both:
                rows.append(float(both.group(1)))
    rows = rows[-int(n):]
    if not rows:
        print("the daemon log has no 'observed' debug lines; no observe breakdown for its passes")
        return
    append(results, {"bench": "daemon_observe", "n": len(rows), "observe_ms": med(rows)})
    print(f"daemon passes: route and neighbour dumps took {med(rows):.0f} ms median over {len(rows)} passes")


# ------------------------------------------------------------------------------ report

def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(x):
    if x != x:
        return "-"
    return f"{x / 1000:.2f} s" if x >= 10000 else f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def rng(xs):
    return f"{fmt_ms(min(xs))} to {fmt_ms(max(xs))}" if len(xs) > 1 else "-"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def report(results, meta_json):
    recs = [json.loads(l) for l in open(results) if l.strip()]
    meta = json.loads(meta_json)

    def runs(bench, ds):
        return [r for r in recs if r["bench"] == bench and r.get("ds") == ds]

    out = []
    w = out.append
    w(f"Run of {meta['date']} on {meta['host']}; kernel {meta['kernel']}; hvroute {meta['commit']}; "
      f"load average {meta['load_start']} at the start and {meta['load_end']} at the end.")
    w("")
    n_vms = meta["vms"]
    main_h = runs("cold_hvroute", "main")
    main_b = runs("cold_batch", "main")
    main_l = runs("cold_loop", "main")
    objs = 4 * n_vms  # routes + neighbours
    w(f"**1. Cold convergence**, {n_vms:,} VMs with two IPv6 addresses each: "
      f"{2 * n_vms:,} /128 routes and {2 * n_vms:,} permanent neighbours, plus the bridge, "
      f"into an empty namespace.")
    w("")
    w("| method | runs | wall, median | range | CPU (user+sys), median | wall vs hvroute |")
    w("|---|---|---|---|---|---|")
    h_med = med([r["wall_ms"] for r in main_h])
    for label, rs in (("`hvroute reconcile`", main_h), ("`ip -batch` (one netlink socket; reference)", main_b),
                      ("shell loop, one `ip` fork per object", main_l)):
        if not rs:
            continue
        walls = [r["wall_ms"] for r in rs]
        cpu = med([(r["user_s"] + r["sys_s"]) * 1000 for r in rs])
        ratio = med(walls) / h_med if h_med == h_med and h_med > 0 else float("nan")
        w(f"| {label} | {len(rs)} | {fmt_ms(med(walls))} | {rng(walls)} | {fmt_ms(cpu)} | {ratio:.1f}x |")
    w("")
    if main_h:
        t = {k: med([r["timings"][k] for r in main_h]) for k in main_h[0]["timings"]}
        w(f"hvroute's own phases (medians of `reconcile --json` timings): read {fmt_ms(t['read_ms'])}, "
          f"observe {fmt_ms(t['observe_ms'])}, plan {fmt_ms(t['plan_ms'])}, apply {fmt_ms(t['apply_ms'])}, "
          f"total {fmt_ms(t['total_ms'])} for {main_h[0]['ops']:,} ops "
          f"({main_h[0]['ops'] / t['apply_ms'] * 1000:,.0f} ops/s in apply). "
          f"Peak RSS of the process {med([r['maxrss_kb'] for r in main_h]) / 1024:.0f} MiB.")
        loop_txt = ""
        if main_l:
            loop_txt = (f" The shell loop took {med([r['wall_ms'] for r in main_l]) / h_med:.0f} times as long"
                        f" ({med([r['wall_ms'] for r in main_l]) / objs * 1000 if objs else 0:,.0f} µs per object).")
        w(f"Target ≤ 2 s: {verdict(h_med <= 2000)} ({fmt_ms(h_med)} median wall).{loop_txt}")
        w("")

    w("**2. Cost per object by family**, 762 VMs with one address each: every usable IPv4 /32 of "
      "192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24, against 762 IPv6 /128s "
      "(762 routes + 762 neighbours each).")
    w("")
    w("| method | IPv4: wall, median | IPv6: wall, median | IPv4 per object | IPv6 per object |")
    w("|---|---|---|---|---|")
    for label, bench in (("`hvroute reconcile`", "cold_hvroute"), ("`ip -batch`", "cold_batch"),
                         ("shell loop", "cold_loop")):
        r4, r6 = runs(bench, "v4"), runs(bench, "v6")
        if not r4 or not r6:
            continue
        m4, m6 = med([r["wall_ms"] for r in r4]), med([r["wall_ms"] for r in r6])
        o4, o6 = r4[0]["routes"] + r4[0]["neighs"], r6[0]["routes"] + r6[0]["neighs"]
        w(f"| {label} ({len(r4)}+{len(r6)} runs) | {fmt_ms(m4)} | {fmt_ms(m6)} | {m4 / o4 * 1000:,.0f} µs | "
          f"{m6 / o6 * 1000:,.0f} µs |")
    h4, h6 = runs("cold_hvroute", "v4"), runs("cold_hvroute", "v6")
    if h4 and h6:
        a4 = med([r["timings"]["apply_ms"] for r in h4])
        a6 = med([r["timings"]["apply_ms"] for r in h6])
        o4, o6 = h4[0]["ops"], h6[0]["ops"]
        w(f"| hvroute apply phase only | {fmt_ms(a4)} | {fmt_ms(a6)} | {a4 / o4 * 1000:,.1f} µs/op | "
          f"{a6 / o6 * 1000:,.1f} µs/op |")
    w("")

    noop = runs("noop", "main")
    passes = [r for r in recs if r["bench"] == "pass"]
    soak = [r for r in recs if r["bench"] == "soak"]
    w(f"**3. No-op resync** at {n_vms:,} VMs, in the converged namespace.")
    w("")
    w("| measurement | n | total, median | range | read | observe | plan |")
    w("|---|---|---|---|---|---|---|")
    if noop:
        t = {k: med([r["timings"][k] for r in noop]) for k in noop[0]["timings"]}
        tot = [r["timings"]["total_ms"] for r in noop]
        w(f"| `hvroute reconcile --json` (a process per pass) | {len(noop)} | {fmt_ms(t['total_ms'])} | "
          f"{rng(tot)} | {fmt_ms(t['read_ms'])} | {fmt_ms(t['observe_ms'])} | {fmt_ms(t['plan_ms'])} |")
    if passes:
        tot = [r["total_ms"] for r in passes]
        dob = [r for r in recs if r["bench"] == "daemon_observe"]
        ob = fmt_ms(dob[0]["observe_ms"]) + " (dumps)" if dob else "-"
        w(f"| daemon pass over the control socket (`total_ms`) | {len(passes)} | {fmt_ms(med(tot))} | "
          f"{rng(tot)} | - | {ob} | - |")
    if soak:
        st = [r["total_ms"] for r in soak]
        w(f"| the same daemon, {len(soak)} further passes (memory soak) | {len(soak)} | {fmt_ms(med(st))} | "
          f"{rng(st)} | - | - | - |")
    w("")
    if passes:
        ops = sum(r["ops"] for r in passes)
        w(f"The {len(passes)} daemon passes applied {ops} ops; the socket answered in "
          f"{fmt_ms(med([r['rtt_ms'] for r in passes]))} median (the pass, plus the daemon's 20 ms debounce). "
          f"Target ≤ 100 ms: {verdict(med(tot) <= 100)} ({fmt_ms(med(tot))} median).")
        w("")

    mems = {r["label"]: r for r in recs if r["bench"] == "mem"}
    w(f"**4. Daemon memory** at {n_vms:,} VMs (/proc/PID/status).")
    w("")
    w("| when | VmRSS | VmHWM |")
    w("|---|---|---|")
    soak = [r for r in recs if r["bench"] == "soak"]
    labels = {"converged": "daemon started in the converged namespace, after its first pass",
              "after_passes": f"the same daemon after the {len(passes)} passes",
              "after_soak": f"the same daemon after {len(soak)} more passes (steady state)",
              "self_converged": "a daemon that converged an empty namespace itself, after it settled"}
    for k, text in labels.items():
        if k in mems:
            w(f"| {text} | {mems[k]['VmRSS'] / 1024:.1f} MiB | {mems[k]['VmHWM'] / 1024:.1f} MiB |")
    w("")
    if mems:
        worst = max(m["VmHWM"] for m in mems.values()) / 1024
        w(f"Target ≤ 50 MB: {verdict(worst * 1.048576 <= 50)} (highest VmHWM {worst:.1f} MiB, "
          f"{worst * 1.048576:.1f} MB).")
    dc = [r for r in recs if r["bench"] == "daemon_cold"]
    if dc:
        w(f"The self-converging daemon's first pass applied {dc[0]['ops']:,} ops in {fmt_ms(dc[0]['total_ms'])}.")
    idl = [r for r in recs if r["bench"] == "idle"]
    if idl:
        i = idl[0]
        w(f"Idle check: with nothing changing, the daemon ran {i['passes_per_s']:.1f} passes/s and used "
          f"{i['cpu_pct']:.0f}% of a core over {i['window_s']:.0f} s (with resync_interval_s = 3600, "
          f"0 is expected).")
    block = "\n".join(out).rstrip() + "\n"
    print(block)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "gen":
        gen(args[0], int(args[1]))
    elif cmd == "run":
        rec_run(*args)
    elif cmd == "ready":
        sys.exit(0 if ctl_ready(*args) else 1)
    elif cmd == "mem":
        rec_mem(*args)
    elif cmd == "idle":
        idle(*args)
    elif cmd == "drive":
        drive(*args)
    elif cmd == "daemon_observe":
        daemon_observe(*args)
    elif cmd == "daemonlog":
        daemon_log(*args)
    elif cmd == "report":
        report(*args)
    else:
        sys.exit(f"unknown command {cmd}")
PYEOF

# A boot id of our own (config boot_id_path), not the host's.
cat /proc/sys/kernel/random/uuid >"$work/boot_id"

log "generating the loads ($vms VMs) in $work"
python3 "$py" gen "$work" "$vms" | sed "s/^/$log_prefix: /"
sets="$work/sets"

# ---------------------------------------------------------------------------------------------
# Measurements. Each cold run gets a fresh namespace and is timed with bash's EPOCHREALTIME
# (wall, including process start) and /usr/bin/time (CPU of the whole process tree).

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$1" "$2"; }

# count_objects NS: prints "ROUTES NEIGHS" that carry protocol 44 in NS.
count_objects() {
    local r4 r6 n
    r4="$(ip -n "$1" -4 route show proto 44 | wc -l)"
    r6="$(ip -n "$1" -6 route show proto 44 | wc -l)"
    n="$(ip -n "$1" neigh show nud permanent proto 44 | wc -l)"
    printf '%s %s\n' "$((r4 + r6))" "$n"
}

expect_objects() { # NS DS -> dies unless every route and neighbour of DS is there
    local want got
    want="$(wc -l <"$sets/$2/list")"
    got="$(count_objects "$1")"
    if [[ "$got" != "$want $want" ]]; then
        die "namespace $1 holds ${got% *} routes and ${got#* } neighbours of protocol 44; expected $want of each."
    fi
    printf '%s\n' "$got"
}

# cold METHOD DS RUN: one cold convergence into a fresh namespace, recorded.
cold() {
    local method="$1" ds="$2" run="$3" ns t0 t1 rc=0 counts
    local cfg="$sets/$ds/hv.toml" out="$work/out.json" tf="$work/time.txt" outarg=""
    new_ns
    case "$method" in
    hvroute)
        t0="$(now)"
        timeout "$run_timeout_s" /usr/bin/time -f '%e %U %S %M' -o "$tf" \
            ip netns exec "$ns" "$hvroute_bin" --config "$cfg" reconcile --json >"$out" 2>"$work/err.txt" || rc=$?
        t1="$(now)"
        ;;
    batch)
        t0="$(now)"
        timeout "$run_timeout_s" /usr/bin/time -f '%e %U %S %M' -o "$tf" \
            ip -n "$ns" -batch "$sets/$ds/batch" >/dev/null 2>"$work/err.txt" || rc=$?
        t1="$(now)"
        ;;
    loop)
        # What a per-NIC shell hook does: one `ip` process per route and per neighbour.
        t0="$(now)"
        # shellcheck disable=SC2016  # the script's $ expand in the inner bash
        timeout "$loop_timeout_s" /usr/bin/time -f '%e %U %S %M' -o "$tf" \
            ip netns exec "$ns" bash -c '
                set -e
                ip link add cloudbr0 address 0e:00:00:00:00:01 mtu 1500 type bridge
                ip addr add 169.254.0.1/32 dev cloudbr0
                ip addr add fe80::1/64 dev cloudbr0 nodad
                ip link set cloudbr0 up
                while read -r fam addr mac; do
                    ip -"$fam" route replace "$addr" dev cloudbr0 proto 44
                    ip -"$fam" neigh replace "$addr" lladdr "$mac" dev cloudbr0 nud permanent proto 44
                done <"$1"' loop "$sets/$ds/list" 2>"$work/err.txt" || rc=$?
        t1="$(now)"
        ;;
    esac
    if [[ $rc -ne 0 ]]; then
        tail -n 5 "$work/err.txt" | sed 's/^/    /' >&2
        die "$method into $ns ($ds, run $run) failed with exit $rc."
    fi
    counts="$(expect_objects "$ns" "$ds")"
    if [[ "$method" == hvroute ]]; then
        outarg="$out"
    fi
    # shellcheck disable=SC2086  # counts is "ROUTES NEIGHS"; outarg is empty or one path
    python3 "$py" run "$results" "cold_$method" "$ds" "$run" "$(elapsed "$t0" "$t1")" "$tf" $counts \
        $outarg | sed "s/^/$log_prefix: /"
    del_ns "$ns"
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

log "1. cold convergence, $vms VMs ($((2 * vms)) routes + $((2 * vms)) neighbours): hvroute x$runs, ip -batch x$runs, shell loop x$loop_runs"
for ((r = 1; r <= runs; r++)); do
    cold hvroute main "$r"
    cold batch main "$r"
done
for ((r = 1; r <= loop_runs; r++)); do
    log "shell loop run $r of $loop_runs ($((4 * vms)) ip forks; about 90 s at 10,000 VMs)"
    cold loop main "$r"
done

log "2. per-object cost by family: 762 IPv4 /32s against 762 IPv6 /128s"
for ((r = 1; r <= runs; r++)); do
    for ds in v4 v6; do
        cold hvroute "$ds" "$r"
        cold batch "$ds" "$r"
    done
done
if ((loop_runs > 0)); then
    for ds in v4 v6; do
        cold loop "$ds" 1
    done
fi

log "3. no-op resync at $vms VMs"
cfg="$sets/main/hv.toml"
sock="$sets/main/hvroute.sock"
new_ns
log "converging $ns with hvroute reconcile"
timeout "$run_timeout_s" ip netns exec "$ns" "$hvroute_bin" --config "$cfg" reconcile >/dev/null \
    || die "hvroute reconcile into $ns failed."
expect_objects "$ns" main >/dev/null
for ((r = 1; r <= noop_runs; r++)); do
    timeout "$run_timeout_s" /usr/bin/time -f '%e %U %S %M' -o "$work/time.txt" \
        ip netns exec "$ns" "$hvroute_bin" --config "$cfg" reconcile --json >"$work/out.json" \
        || die "no-op hvroute reconcile in $ns failed."
    python3 "$py" run "$results" noop main "$r" - "$work/time.txt" - - "$work/out.json" \
        | sed "s/^/$log_prefix: /"
done

# start_daemon NS LOG: starts `hvroute daemon` in NS and waits for its first pass.
start_daemon() {
    local ns="$1" logf="$2"
    # The debug line of kernel::netlink gives each pass's dump times (see daemon_observe).
    RUST_LOG="info,hvroute::kernel::netlink=debug" \
        ip netns exec "$ns" "$hvroute_bin" --config "$cfg" daemon >"$logf" 2>&1 </dev/null &
    daemon_pid=$!
    # `ip netns exec` execs the command, so the PID is hvroute's own.
    # shellcheck disable=SC2016  # $1 expands in the inner bash
    wait_until 5 "the daemon process ($daemon_pid) to be hvroute" \
        bash -c '[[ "$(cat /proc/$1/comm)" == hvroute ]]' _ "$daemon_pid" \
        || die "the daemon did not start; log: $(tail -n 3 "$logf")"
    wait_until "$daemon_start_timeout_s" "the daemon's first pass" python3 "$py" ready "$sock" 1 \
        || die "the daemon did not finish a pass; log: $(tail -n 3 "$logf")"
}

log "starting hvroute daemon in $ns (converged)"
start_daemon "$ns" "$work/daemon.log"
python3 "$py" mem "$results" "$daemon_pid" converged | sed "s/^/$log_prefix: /"
python3 "$py" idle "$results" "$sock" "$daemon_pid" "$idle_window_s" | sed "s/^/$log_prefix: /"
log "asking for $passes passes over the control socket"
python3 "$py" drive "$results" "$sock" "$passes" | sed "s/^/$log_prefix: /"
python3 "$py" mem "$results" "$daemon_pid" after_passes | sed "s/^/$log_prefix: /"
python3 "$py" daemon_observe "$results" "$work/daemon.log" "$passes" | sed "s/^/$log_prefix: /"
# A Prometheus scrape of this daemon (docs/metrics.md): 20 GETs of /metrics at its default
# listen address, the median wall time as curl sees it. Printed here, not in the report.
scrapes=()
for ((i = 0; i < 20; i++)); do
    scrapes+=("$(ip netns exec "$ns" curl -sS --fail --max-time 10 -o /dev/null \
        -w '%{time_total} %{size_download}' http://127.0.0.1:9478/metrics)") || die "scraping /metrics failed."
done
printf '%s\n' "${scrapes[@]}" | sort -n | awk -v p="$log_prefix" \
    'NR == 10 { printf "%s: a scrape of /metrics at %s VMs: %.1f ms median of 20, %d bytes\n", p, vms, $1 * 1000, $2 }' vms="$vms"
if ((soak_passes > 0)); then
    log "$soak_passes more passes, for the daemon's steady-state memory"
    python3 "$py" drive "$results" "$sock" "$soak_passes" soak | sed "s/^/$log_prefix: /"
    python3 "$py" mem "$results" "$daemon_pid" after_soak | sed "s/^/$log_prefix: /"
fi
stop_daemon
del_ns "$ns"

log "4. a daemon that converges an empty namespace itself"
new_ns
start_daemon "$ns" "$work/daemon2.log"
expect_objects "$ns" main >/dev/null
python3 "$py" mem "$results" "$daemon_pid" self_converged | sed "s/^/$log_prefix: /"
python3 "$py" daemonlog "$results" "$work/daemon2.log" self_converged | sed "s/^/$log_prefix: /"
stop_daemon
del_ns "$ns"

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# Report.

commit="$build_label"
meta="$(python3 -c '
import json, sys
k = ["date", "host", "kernel", "commit", "load_start", "load_end", "vms"]
v = sys.argv[1:]
d = dict(zip(k, v)); d["vms"] = int(d["vms"])
print(json.dumps(d))' "$(date -u +%Y-%m-%d)" "$(nproc) cores, shared" "$(uname -r)" "$commit" \
    "$load_start" "$load_end" "$vms")"

log "results"
echo
block="$(python3 "$py" report "$results" "$meta")" || die "the report failed."
printf '%s\n' "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-core "$block"
fi
