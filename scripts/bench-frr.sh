#!/usr/bin/env bash
# The FRR benchmark of hvroute: how fast a spine learns a hypervisor's VM prefixes, cold and
# one VM at a time, against per-VM prefix-lists and a naive shell loop.
# Run `scripts/bench-frr.sh --help` for details.
set -euo pipefail

log_prefix="bench-frr"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-frr.sh [--vms N] [--small-vms N] [--runs N] [--plist-runs N] [--loop-runs N]
                            [--samples N] [--rev REV] [--write]
       scripts/bench-frr.sh --help

Builds hvroute (release) and measures, with real FRR (zebra and bgpd, one pair per network
namespace) on a hypervisor namespace and a spine namespace joined by a veth and peered over
eBGP (numbered, 10.255.0.1 AS 65001 to 10.255.0.0 AS 65000), how long until the spine's BGP
RIB holds the hypervisor's VM prefixes:

  1. cold start: `hvroute daemon` with --vms VMs (two IPv6 addresses each, in
     2001:db8:100::/40) into a fresh hypervisor namespace whose FRR runs an empty config
     (hvroute pushes its base config, the peers and one `network` line per address), until the
     spine holds all 2 x VMS prefixes. Also with FRR already holding hvroute's bootstrap config
     (peers up before the start), at --vms and at --small-vms VMs.
     The reference for "as fast as FRR takes it", at --vms VMs: `ip -batch` of the kernel side,
     then one `vtysh -f` of the same `network` lines (FRR holding the bootstrap config).
  2. per-VM prefix-list entries with `redistribute kernel`, at --small-vms VMs: kernel routes
     and neighbours with `ip -batch`, then one `vtysh -f` of one `ipv6 prefix-list` entry per
     address (matched by the route-map on `redistribute kernel`).
  3. a naive shell loop at --small-vms VMs: per address one `ip route replace`, one
     `ip neigh replace` and one `vtysh -c ... -c 'network P'`.
  4. add-one-VM latency: with the daemon converged at 10 VMs and at --vms VMs, --samples times
     `hvroute vm add` of one new VM (two addresses), timed from just before the command until
     the spine's RIB holds both prefixes; then `hvroute vm del` of each, until both are gone.

The spine is polled through bgpd's vty socket (the protocol vtysh speaks, about 0.2 ms per
query) every 5 ms; a vtysh process per poll costs tens of ms here, which the report also shows.

Options (defaults in brackets):
  --vms N         VMs in the main load [10000]
  --small-vms N   VMs for the comparison with prefix-lists and the shell loop [1000]
  --runs N        runs of each hvroute cold start; medians are quoted [3]
  --plist-runs N  runs of the prefix-list method; 0 skips it [1]
  --loop-runs N   runs of the naive shell loop (a few minutes at 1,000 VMs); 0 skips it [1]
  --samples N     add-one-VM samples at each size [30]
  --rev REV       build the committed revision REV (a clean `git archive` export, built in
                  target/bench-frr) instead of the working tree [working tree]
  --write         also replace the generated block of docs/benchmarks.md (between
                  <!-- bench-frr:begin --> and <!-- bench-frr:end -->)

Prints progress, then the markdown block. Needs root and Debian's frr package. Everything it
makes (namespaces hvr-bfrr-PID-N-hv and -sp, FRR pathspaces of the same names under /etc/frr
and /var/run/frr, a work dir under /tmp) is removed on exit; it only ever kills the PIDs it
started itself (hvroute, its spine poller, and the zebra and bgpd PIDs read from the pid
files of its own pathspaces, checked against their command lines).
EOF
}

vms=10000
small_vms=1000
runs=3
plist_runs=1
loop_runs=1
samples=30
write=""
rev=""

need_value() {
    if [[ $# -lt 2 || ! "$2" =~ ^[0-9]+$ ]]; then
        printf 'bench-frr: %s needs a whole number (see --help)\n' "$1" >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --vms) need_value "$@"; vms="$2"; shift ;;
    --small-vms) need_value "$@"; small_vms="$2"; shift ;;
    --runs) need_value "$@"; runs="$2"; shift ;;
    --plist-runs) need_value "$@"; plist_runs="$2"; shift ;;
    --loop-runs) need_value "$@"; loop_runs="$2"; shift ;;
    --samples) need_value "$@"; samples="$2"; shift ;;
    --write) write=1 ;;
    --rev)
        if [[ $# -lt 2 || -z "$2" ]]; then
            printf 'bench-frr: --rev needs a git revision (see --help)\n' >&2
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
        printf 'bench-frr: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done
if ((vms < 1 || vms > 65536 || small_vms < 1 || small_vms > 65536)); then
    # The address generator has 16 bits per VM index.
    printf 'bench-frr: --vms and --small-vms must be 1 to 65536\n' >&2
    exit 2
fi
if ((runs < 1 || samples < 1)); then
    printf 'bench-frr: --runs and --samples must be at least 1\n' >&2
    exit 2
fi

# Bounds on everything that waits.
readonly frr_start_timeout_s=30
readonly frr_stop_timeout_s=10
readonly session_timeout_s=90   # the BGP session to come up (bootstrapped FRR)
# After the session comes up, bgpd holds the first updates to a new update-group for its
# coalesce time (1 s by default); a host that is already peered has that behind it.
readonly session_settle_s=3
readonly cold_timeout_s=300     # an hvroute cold start, until the spine holds everything
readonly plist_timeout_s=3600   # ip -batch + vtysh -f of the prefix-list (minutes at 1,000 VMs)
readonly loop_timeout_s=3600    # the naive loop (minutes at 1,000 VMs)
readonly fib_timeout_s=120      # the spine's kernel FIB to catch up with its RIB (the check)
readonly daemon_start_timeout_s=120
readonly daemon_stop_timeout_s=10
readonly sample_timeout_s=20    # one add-one-VM sample
readonly settle_s=1             # after tearing down a pair, let the kernel and FRR settle

readonly doc_file="docs/benchmarks.md"
readonly hv_asn=65001 spine_asn=65000
readonly hv_link=10.255.0.1 spine_link=10.255.0.0
readonly zebra_rcvbuf=90000000 # zebra -s, as in Debian's /etc/frr/daemons

need_root
ensure_packages time frr
ensure_cargo
cd "$repo_root"
[[ -x /usr/lib/frr/zebra && -x /usr/lib/frr/bgpd ]] || die "FRR's zebra and bgpd are not in /usr/lib/frr."
if [[ -n "$write" ]] && ! grep -q '^<!-- bench-frr:begin -->$' "$doc_file" 2>/dev/null; then
    die "--write needs $doc_file with a <!-- bench-frr:begin --> ... <!-- bench-frr:end --> block."
fi

# ---------------------------------------------------------------------------------------------
# Clean-up: the namespaces and FRR pathspaces this run made, the PIDs it started, the work dir.

work=""
daemon_pid=""
poller_pid=""
pair_seq=0
declare -a namespaces=()
declare -a pathspaces=()
declare -A frr_pids=() # pathspace -> "PID PID" (zebra, bgpd), checked against their cmdlines

stop_pid() { # TIMEOUT_S PID...: SIGTERM to all, a bounded wait, then SIGKILL to any left
    local timeout="$1" pid i left
    shift
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i <= timeout * 10; i++)); do
        left=""
        for pid in "$@"; do
            if kill -0 "$pid" 2>/dev/null; then
                left+=" $pid"
            fi
        done
        [[ -n "$left" ]] || return 0
        sleep 0.1
    done
    for pid in $left; do
        warn "$(cat "/proc/$pid/comm" 2>/dev/null || echo process) $pid did not stop on SIGTERM within ${timeout}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

stop_daemon() {
    local pid="$daemon_pid"
    [[ -n "$pid" ]] || return 0
    daemon_pid=""
    stop_pid "$daemon_stop_timeout_s" "$pid"
    wait "$pid" 2>/dev/null || true
}

stop_poller() {
    local pid="$poller_pid"
    [[ -n "$pid" ]] || return 0
    poller_pid=""
    stop_pid 5 "$pid"
    wait "$pid" 2>/dev/null || true
}

# frr_stop PS...: stops the zebra and bgpd of each pathspace PS that this run started (all at
# once), and removes the pathspaces' directories (which this run created).
frr_stop() {
    local ps i
    local -a pids=()
    for ps in "$@"; do
        read -r -a i <<<"${frr_pids[$ps]:-}"
        pids+=("${i[@]}")
    done
    if [[ ${#pids[@]} -gt 0 ]]; then
        stop_pid "$frr_stop_timeout_s" "${pids[@]}"
    fi
    for ps in "$@"; do
        unset 'frr_pids[$ps]'
        rm -rf -- "/etc/frr/$ps" "/var/run/frr/$ps"
        for i in "${!pathspaces[@]}"; do
            [[ "${pathspaces[i]}" == "$ps" ]] && unset 'pathspaces[i]'
        done
    done
    return 0
}

del_ns() {
    local ns="$1" i
    ip netns del "$ns" 2>/dev/null || true
    for i in "${!namespaces[@]}"; do
        [[ "${namespaces[i]}" == "$ns" ]] && unset 'namespaces[i]'
    done
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_poller
    stop_daemon
    local ns
    if [[ ${#pathspaces[@]} -gt 0 ]]; then
        frr_stop "${pathspaces[@]}"
    fi
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

# ---------------------------------------------------------------------------------------------
# Build and generate the loads.

work="$(mktemp -d /tmp/hvroute-bench-frr.XXXXXX)"

build_hvroute "$work" "$rev" bench-frr
# A private copy: another build in this tree during the run must not swap the binary.
hvroute_bin="$work/hvroute"
cp "$built_bin" "$hvroute_bin"
results="$work/results.jsonl"
: >"$results"
py="$work/bench_frr.py"

cat >"$py" <<'PYEOF'
"""Helpers for scripts/bench-frr.sh: loads, spine poller, latency sampler, report."""
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import datetime

BRIDGE = "cloudbr0"
BRIDGE_MAC = "0e:00:00:00:00:01"
PROTO = 44
HV_ASN = 65001
SPINE_LINK = "10.255.0.0"
HV_LINK = "10.255.0.1"


def mac_of(i):
    return "52:54:00:%02x:%02x:%02x" % ((i >> 16) & 0xFF, (i >> 8) & 0xFF, i & 0xFF)


def v6(net, i):
    return f"2001:db8:{net:x}::1:{i >> 16:x}:{i & 0xFFFF:x}"


def write_set(work, name, n):
    """n VMs, one NIC, two IPv6 addresses each (the bench-core load). Writes the state dir, a
    config template (@PS@ is the FRR pathspace), the address list, an ip batch and the
    prefix-list file."""
    d = os.path.join(work, "sets", name)
    state = os.path.join(d, "state")
    os.makedirs(state)
    batch = [
        f"link add {BRIDGE} address {BRIDGE_MAC} mtu 1500 type bridge",
        f"addr add 169.254.0.1/32 dev {BRIDGE}",
        f"addr add fe80::1/64 dev {BRIDGE} nodad",
        f"link set {BRIDGE} up",
    ]
    lines, plist = [], []
    for i in range(n):
        vm, mac, addrs = f"vm{i:06d}", mac_of(i), [v6(0x100, i), v6(0x101, i)]
        with open(os.path.join(state, vm + ".json"), "w") as f:
            json.dump({"version": 1, "name": vm, "source": "cli",
                       "nics": [{"mac": mac, "addresses": addrs}]}, f)
        for a in addrs:
            lines.append(f"6 {a} {mac}")
            batch.append(f"route replace {a}/128 dev {BRIDGE} proto {PROTO}")
            batch.append(f"neigh replace {a} lladdr {mac} dev {BRIDGE} nud permanent proto {PROTO}")
            plist.append(f"ipv6 prefix-list BENCH-VMS-V6 seq {5 * (len(plist) + 1)} permit {a}/128")
    nets = ([f"router bgp {HV_ASN}", " address-family ipv6 unicast"]
            + [f"  network {l.split()[1]}/128 route-map HVR-VM" for l in lines]
            + [" exit-address-family", "exit"])
    for fn, text in (("list", lines), ("batch", batch), ("plist.conf", plist), ("networks.conf", nets)):
        with open(os.path.join(d, fn), "w") as f:
            f.write("\n".join(text) + "\n")
    with open(os.path.join(d, "hv.toml.in"), "w") as f:
        f.write(config_text(state, d, work))
    return 2 * n


def config_text(state, d, work):
    # resync_interval_s = 3600: no periodic re-read of FRR in the middle of a measurement.
    return f'''state_dir = "{state}"
socket = "{d}/hvroute.sock"
boot_id_path = "{work}/boot_id"
route_protocol = {PROTO}
resync_interval_s = 3600

[bridge]
name = "{BRIDGE}"
mac = "{BRIDGE_MAC}"

[pools]
ipv6 = ["2001:db8:100::/40"]

[bgp]
asn = {HV_ASN}
router_id = "{HV_LINK}"

[[bgp.peer]]
address = "{SPINE_LINK}"
remote_as = 65000

[frr]
pathspace = "@PS@"
'''


def gen(work, n_main, n_small):
    sizes = {"main": int(n_main), "small": int(n_small), "tiny": 10}
    for name, n in sizes.items():
        k = write_set(work, name, n)
        print(f"{name}: {n} VMs, {k} prefixes")
    # An empty state dir, for rendering hvroute's bootstrap frr.conf without VM lines.
    d = os.path.join(work, "sets", "empty")
    os.makedirs(os.path.join(d, "state"))
    with open(os.path.join(d, "hv.toml"), "w") as f:
        f.write(config_text(os.path.join(d, "state"), d, work).replace("@PS@", "bench-render"))


def append(results, rec):
    with open(results, "a") as f:
        f.write(json.dumps(rec) + "\n")


# ------------------------------------------------------------------------ talking to FRR

class Vty:
    """One connection to a daemon's vty socket, speaking vtysh's protocol: the command line
    with a NUL; the answer ends with three NULs and a status byte. This is what vtysh does
    per daemon, without a vtysh process per query."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(path)

    def q(self, cmd):
        self.s.sendall(cmd.encode() + b"\0")
        buf = bytearray()
        while True:
            d = self.s.recv(1 << 16)
            if not d:
                raise RuntimeError("vty socket closed")
            buf += d
            if len(buf) >= 4 and buf[-4:-1] == b"\0\0\0":
                return buf[:-4].decode(errors="replace")


def summary(vty):
    """(state, pfxRcd) of the hypervisor peer on the spine; (None, 0) before it exists."""
    try:
        s = json.loads(vty.q("show bgp ipv6 unicast summary json") or "{}")
    except json.JSONDecodeError:
        return None, 0
    p = (s.get("peers") or {}).get(HV_LINK) or {}
    return p.get("state"), int(p.get("pfxRcd") or 0)


def cpu_s(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def spine(vty_path, t0_file, want, timeout, out, pids=""):
    """Polls the spine every 5 ms until its session with the hypervisor is Established and it
    has received `want` prefixes. Writes what it saw to `out` (JSON), in seconds after the wall
    time in `t0_file`, which the caller writes just before it starts the method (the poller is
    already running then, so its own start-up is not in the figure)."""
    want, timeout = int(want), float(timeout)
    pids = [p for p in pids.split(",") if p]
    cpu0 = {p: cpu_s(p) for p in pids}
    vty, est, polls, last, start = None, None, 0, (None, 0), time.time()
    while True:
        now = time.time()
        if now - start > timeout:
            rec = {"ok": False, "last_state": last[0], "last_pfx": last[1], "polls": polls}
            break
        try:
            if vty is None:
                vty = Vty(vty_path)
            last = summary(vty)
        except (OSError, RuntimeError):
            vty = None
        polls += 1
        now = time.time()
        if last[0] == "Established" and est is None:
            est = now
        if last[0] == "Established" and last[1] >= want and os.path.exists(t0_file):
            t0 = float(open(t0_file).read())
            rec = {"ok": True, "full_s": now - t0, "established_s": max(est - t0, 0.0), "pfx": last[1],
                   "polls": polls}
            break
        time.sleep(0.005)
    rec["cpu_s"] = {p: cpu_s(p) - cpu0[p] for p in pids}
    with open(out, "w") as f:
        json.dump(rec, f)
    return 0 if rec["ok"] else 1


def fib_check(ns, listfile, timeout):
    """The spine's kernel FIB must hold exactly the load's prefixes as BGP routes."""
    want = {l.split()[1] for l in open(listfile) if l.strip()}
    deadline = time.time() + float(timeout)
    while True:
        out = subprocess.run(["ip", "-n", ns, "-6", "-j", "route", "show", "proto", "bgp"],
                             capture_output=True, text=True, check=True).stdout
        got = {r["dst"].split("/")[0] for r in json.loads(out or "[]")}
        if got == want:
            print(f"spine FIB holds exactly the {len(want)} prefixes")
            return 0
        if time.time() > deadline:
            print(f"spine FIB holds {len(got)} BGP routes; {len(want - got)} expected ones missing, "
                  f"{len(got - want)} unexpected", file=sys.stderr)
            return 1
        time.sleep(0.5)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def log_events(logfile):
    """The daemon's first 'applied plan' and first 'told FRR' lines: wall time and fields."""
    ev = {}
    for line in open(logfile, errors="replace"):
        line = ANSI.sub("", line)
        for key, what in (("pass", "applied plan"), ("told", "told FRR")):
            if key in ev or what not in line:
                continue
            # tracing's UTC timestamp, e.g. 2026-11-29T23:07:02.940429Z
            ts = datetime.strptime(line.split()[0][:26], "%Y-%m-%dT%H:%M:%S.%f")
            ms = re.search(r'ms="?([0-9.]+)', line)
            ev[key] = {"t": (ts - datetime(1970, 1, 1)).total_seconds(),
                       "ms": float(ms.group(1)) if ms else None}
            ops = re.search(r"\bops=(\d+)", line)
            adds = re.search(r"\badds=(\d+)", line)
            if ops:
                ev[key]["ops"] = int(ops.group(1))
            if adds:
                ev[key]["adds"] = int(adds.group(1))
    return ev


def rec_cold(results, bench, n_vms, run, t0, pollfile, pids_json, extra_json, logfile=""):
    """Records one cold run: the poller's result, FRR CPU, and (hvroute) the daemon's log."""
    t0 = float(t0)
    p = json.load(open(pollfile))
    rec = {"bench": bench, "vms": int(n_vms), "run": int(run), "wall_ms": p["full_s"] * 1000,
           "established_ms": (p["established_s"] or 0) * 1000, "polls": p["polls"]}
    roles = json.loads(pids_json)
    rec["cpu_s"] = {role: sum(p["cpu_s"].get(pid, 0) for pid in pids) for role, pids in roles.items()}
    rec.update(json.loads(extra_json or "{}"))
    if logfile:
        ev = log_events(logfile)
        if "pass" in ev:
            rec["pass_done_ms"] = (ev["pass"]["t"] - t0) * 1000
            rec["pass_ms"] = ev["pass"]["ms"]
        if "told" in ev:
            rec["told_done_ms"] = (ev["told"]["t"] - t0) * 1000
            rec["told_ms"] = ev["told"]["ms"]
            rec["told_adds"] = ev["told"].get("adds")
    append(results, rec)
    parts = [f"{bench} {n_vms} VMs run {run}: spine holds all {p['pfx']} prefixes after "
             f"{rec['wall_ms']:.0f} ms (session up at {rec['established_ms']:.0f} ms)"]
    if "pass_done_ms" in rec:
        parts.append(f"kernel pass done at {rec['pass_done_ms']:.0f} ms ({rec['pass_ms']:.0f} ms)")
    if "told_done_ms" in rec:
        parts.append(f"FRR told at {rec['told_done_ms']:.0f} ms (sync {rec['told_ms']:.0f} ms)")
    for k in ("kernel_ms", "vtysh_ms", "loop_ms"):
        if k in rec:
            parts.append(f"{k} {rec[k]:.0f}")
    parts.append("CPU " + ", ".join(f"{k} {v:.2f} s" for k, v in rec["cpu_s"].items()))
    print("; ".join(parts))


# ------------------------------------------------------------------------ the daemon

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


def frr_in_sync(sock):
    st = request(sock, "status", timeout=5)
    f = st.get("frr") or {}
    return bool(f.get("in_sync")) and not f.get("last_error") and st.get("passes", 0) >= 1


def wait_in_sync(sock, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if frr_in_sync(sock):
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return False


def has(vty, prefix):
    o = vty.q(f"show bgp ipv6 unicast {prefix} json")
    return '"valid":true' in o


def pct(xs, p):
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)] if xs else float("nan")


def latency(results, label, n_vms, hvroute, cfg, sock, spine_vty, samples, timeout):
    """add-one-VM (and del) to spine-RIB latency, `samples` times."""
    samples, timeout = int(samples), float(timeout)
    vty = Vty(spine_vty)
    added = []
    for phase in ("add", "del"):
        for i in range(samples):
            if not wait_in_sync(sock, 30):
                sys.exit(f"the daemon's FRR side did not settle before {phase} sample {i + 1}")
            name = f"lat{i:04d}"
            # Addresses in 2001:db8:102::/48, apart from every load.
            a, b = f"2001:db8:102::2:0:{i:x}", f"2001:db8:102::3:0:{i:x}"
            if phase == "add":
                cmd = [hvroute, "--config", cfg, "vm", "add", name, "--mac", mac_of(0x800000 + i),
                       "--ip", a, "--ip", b]
            else:
                cmd = [hvroute, "--config", cfg, "vm", "del", name]
            st0 = request(sock, "status")
            syncs0, passes0 = st0["frr"]["syncs"], st0["passes"]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            cli_s, polls = None, 0
            while True:
                if cli_s is None and proc.poll() is not None:
                    cli_s = time.perf_counter() - t0
                polls += 1
                there = has(vty, a) and has(vty, b) if phase == "add" else has(vty, a) or has(vty, b)
                if there == (phase == "add"):
                    break
                if time.perf_counter() - t0 > timeout:
                    sys.exit(f"{phase} sample {i + 1}: the spine did not follow within {timeout:.0f} s")
                time.sleep(0.005)
            spine_s = time.perf_counter() - t0
            if proc.wait(timeout=30) != 0:
                sys.exit(f"{' '.join(cmd[3:])} failed: {proc.stderr.read().decode().strip()}")
            cli_s = cli_s if cli_s is not None else time.perf_counter() - t0
            # The daemon's own figures for this change, once its sync (and save) is done.
            if not wait_in_sync(sock, 30):
                sys.exit(f"the daemon's FRR side did not settle after {phase} sample {i + 1}")
            st = request(sock, "status")
            rec = {"bench": "latency", "label": label, "vms": int(n_vms), "phase": phase, "i": i + 1,
                   "spine_ms": spine_s * 1000, "cli_ms": cli_s * 1000, "polls": polls,
                   "frr_ms": (st["frr"].get("last") or {}).get("ms"),
                   "frr_syncs": st["frr"]["syncs"] - syncs0, "passes": st["passes"] - passes0,
                   "pass_ms": (st.get("last_pass") or {}).get("total_ms"),
                   "timings": (st.get("last_pass") or {}).get("timings") or {}}
            append(results, rec)
            if (i + 1) % 10 == 0 or i + 1 == samples or i == 0:
                print(f"{label} {phase} {i + 1}/{samples}: spine {rec['spine_ms']:.0f} ms, CLI returned at "
                      f"{rec['cli_ms']:.0f} ms, daemon pass {rec['pass_ms']:.0f} ms, FRR sync "
                      f"{rec['frr_ms']:.0f} ms ({rec['frr_syncs']} syncs, {rec['passes']} passes)")


def cost(results, label, n, *cmd):
    """Median wall time of running a command n times (vtysh's own cost)."""
    ts = []
    for _ in range(int(n)):
        t = time.perf_counter()
        subprocess.run(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        ts.append((time.perf_counter() - t) * 1000)
    append(results, {"bench": "cost", "label": label, "ms": statistics.median(ts), "n": len(ts)})
    print(f"{label}: {statistics.median(ts):.1f} ms median of {len(ts)}")


def vty_cost(results, path, prefix, n=200):
    vty = Vty(path)
    ts = []
    for _ in range(int(n)):
        t = time.perf_counter()
        vty.q(f"show bgp ipv6 unicast {prefix} json")
        ts.append((time.perf_counter() - t) * 1000)
    append(results, {"bench": "cost", "label": "vty_query", "ms": statistics.median(ts), "n": len(ts)})
    print(f"one query on bgpd's vty socket: {statistics.median(ts):.2f} ms median of {len(ts)}")


# ------------------------------------------------------------------------------ report

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def fmt_ms(x):
    if x != x:
        return "-"
    return f"{x / 1000:.2f} s" if x >= 10000 else f"{x:.0f} ms" if x >= 10 else f"{x:.1f} ms"


def fmt_s(x):
    return "-" if x != x else f"{x / 1000:.2f} s"


def rng(xs, f=fmt_ms):
    return f"{f(min(xs))} to {f(max(xs))}" if len(xs) > 1 else "-"


def verdict(ok):
    return "**met**" if ok else "**missed**"


def report(results, meta_json):
    recs = [json.loads(l) for l in open(results) if l.strip()]
    meta = json.loads(meta_json)
    out = []
    w = out.append
    w(f"Run of {meta['date']} on {meta['host']}; kernel {meta['kernel']}; {meta['frr']}; "
      f"hvroute {meta['commit']}; load average {meta['load_start']} at the start and "
      f"{meta['load_end']} at the end; the whole script took {meta['took']}.")
    w("")

    def cold(bench, vms):
        return [r for r in recs if r["bench"] == bench and r["vms"] == vms]

    big, small = meta["vms"], meta["small_vms"]
    h_empty = cold("hvroute_empty", big)
    h_boot = cold("hvroute_boot", big)
    h_small = cold("hvroute_boot", small)
    plist = cold("plist", small)
    loop = cold("loop", small)
    ref_big = cold("reference", big)
    ref = med([r["wall_ms"] for r in h_small])

    w(f"**1. Cold start until the spine's BGP RIB holds every prefix.** Each VM has two IPv6 "
      f"addresses, so {big:,} VMs are {2 * big:,} prefixes and {small:,} VMs are {2 * small:,}. "
      f"Each run starts from fresh namespaces and a fresh FRR on both sides; the clock starts just "
      f"before the method's first command.")
    w("")
    w("| VMs | method | runs | spine holds all, median | range | BGP session up at | "
      f"CPU of the hypervisor's bgpd + zebra | vs hvroute with the session up, same size |")
    w("|---|---|---|---|---|---|---|---|")
    rows = (
        (big, "`hvroute daemon`, FRR with an empty config (hvroute pushes its base config and peers)",
         h_empty, True),
        (big, "`hvroute daemon`, FRR already holding hvroute's bootstrap config", h_boot, False),
        (big, "reference: `ip -batch` of the kernel side, then one `vtysh -f` of the same `network` lines "
              "(FRR holding the bootstrap config)", ref_big, False),
        (small, "`hvroute daemon`, FRR already holding hvroute's bootstrap config", h_small, False),
        (small, "kernel by `ip -batch`, then one `ipv6 prefix-list` entry per prefix by one `vtysh -f`, "
                "`redistribute kernel route-map` matching it", plist, False),
        (small, "naive shell loop: per prefix one `ip route`, one `ip neigh` and one `vtysh -c ... network P`",
         loop, False),
    )
    for vms, label, rs, cold_session in rows:
        if not rs:
            continue
        walls = [r["wall_ms"] for r in rs]
        est = med([r["established_ms"] for r in rs])
        est_txt = fmt_ms(est) if cold_session else "before the start"
        cpu = med([r["cpu_s"].get("hv_frr", float("nan")) * 1000 for r in rs])
        base = ref if vms == small else med([r["wall_ms"] for r in h_boot])
        ratio = f"{med(walls) / base:.1f}x" if base == base else "-"
        w(f"| {vms:,} | {label} | {len(rs)} | {fmt_ms(med(walls))} | {rng(walls)} | {est_txt} | "
          f"{fmt_ms(cpu)} | {ratio} |")
    w("")
    if h_empty:
        m = {k: med([r.get(k) for r in h_empty]) for k in
             ("wall_ms", "established_ms", "pass_done_ms", "pass_ms", "told_done_ms", "told_ms")}
        w(f"hvroute at {big:,} VMs with an empty FRR, medians from the start of `hvroute daemon`: "
          f"its kernel pass ({2 * big:,} routes and {2 * big:,} neighbours, {fmt_ms(m['pass_ms'])}) done at "
          f"{fmt_ms(m['pass_done_ms'])}; the FRR sync (the base config and {2 * big:,} `network` lines through "
          f"`vtysh -f`, then `write memory`; {fmt_ms(m['told_ms'])}) done at {fmt_ms(m['told_done_ms'])}; "
          f"the BGP session up at {fmt_ms(m['established_ms'])}; the spine holding all {2 * big:,} at "
          f"{fmt_ms(m['wall_ms'])}. Target ≤ 10 s: {verdict(m['wall_ms'] <= 10000)}; aim 3 s: "
          f"{'reached' if m['wall_ms'] <= 3000 else 'not reached'}.")
        w("")
    if h_boot:
        m = {k: med([r.get(k) for r in h_boot]) for k in ("wall_ms", "pass_done_ms", "told_done_ms", "told_ms")}
        w(f"With the session already up, at {big:,} VMs: kernel pass done at {fmt_ms(m['pass_done_ms'])}, "
          f"FRR sync ({fmt_ms(m['told_ms'])}) done at {fmt_ms(m['told_done_ms'])}, spine complete at "
          f"{fmt_ms(m['wall_ms'])}.")
        w("")
    if ref_big:
        k = med([r.get("kernel_ms") for r in ref_big])
        v = med([r.get("vtysh_ms") for r in ref_big])
        w(f"The reference at {big:,} VMs: `ip -batch` {fmt_ms(k)}, then the `vtysh -f` of {2 * big:,} `network` "
          f"lines {fmt_ms(v)}; spine complete at {fmt_ms(med([r['wall_ms'] for r in ref_big]))}.")
        w("")
    if plist:
        k = med([r.get("kernel_ms") for r in plist])
        v = med([r.get("vtysh_ms") for r in plist])
        wall = med([r["wall_ms"] for r in plist])
        cpu = med([r["cpu_s"].get("hv_frr", float("nan")) for r in plist])
        w(f"Prefix-lists at {small:,} VMs: `ip -batch` {fmt_ms(k)}, then the `vtysh -f` of {2 * small:,} "
          f"prefix-list entries returned after {fmt_s(v)}, and the spine was complete {fmt_s(wall - k - v)} "
          f"later ({fmt_s(wall)} in all; the hypervisor's bgpd and zebra used {cpu:.1f} s of CPU).")
        w("")
    if loop:
        lp = med([r.get("loop_ms") for r in loop])
        after = med([r["wall_ms"] for r in loop]) - lp
        when = (f"{fmt_ms(after)} after the loop ended" if after > 10 else
                "by the time the loop ended (each `vtysh -c` returns once bgpd has the line)")
        w(f"Naive loop at {small:,} VMs: the loop ran {fmt_s(lp)} ({lp / (2 * small):.1f} ms per prefix: "
          f"two `ip` forks and one `vtysh` process); the spine was complete {when}.")
        w("")

    lat = [r for r in recs if r["bench"] == "latency"]
    if lat:
        w("**2. Add one VM to the spine's RIB**, with the daemon converged. Each sample is one "
          "`hvroute vm add NAME --mac M --ip A --ip B` (with the daemon running, the daemon checks, stores and applies it), timed "
          "from just before the command until the spine's RIB holds both prefixes; then `hvroute vm del` "
          "of each sample VM, until both are gone. The next sample starts once the daemon's FRR sync "
          "(with its `write memory`) has finished. Percentiles are nearest-rank: with "
          "up to 100 samples, p99 is the largest.")
        w("")
        w("| VMs on the host | phase | samples | to spine p50 | p99 | min | CLI returned, p50 | "
          "daemon pass, p50 | daemon FRR sync (one batch + write memory), p50 |")
        w("|---|---|---|---|---|---|---|---|---|")
        labels = sorted({(r["vms"], r["label"]) for r in lat})
        for vms, label in labels:
            for phase in ("add", "del"):
                rs = [r for r in lat if r["label"] == label and r["phase"] == phase]
                if not rs:
                    continue
                sp = [r["spine_ms"] for r in rs]
                w(f"| {vms:,} | {'`vm add`' if phase == 'add' else '`vm del`'} | {len(rs)} | "
                  f"{fmt_ms(pct(sp, 50))} | {fmt_ms(pct(sp, 99))} | {fmt_ms(min(sp))} | "
                  f"{fmt_ms(med([r['cli_ms'] for r in rs]))} | {fmt_ms(med([r['pass_ms'] for r in rs]))} | "
                  f"{fmt_ms(med([r['frr_ms'] for r in rs]))} |")
        w("")
        for vms, label in labels:
            rs = [r for r in lat if r["label"] == label and r["phase"] == "add"]
            t = {k: med([r["timings"].get(k) for r in rs]) for k in ("read_ms", "observe_ms", "plan_ms",
                                                                        "apply_ms")}
            n = med([r["passes"] for r in rs])
            w(f"At {vms:,} VMs, a `vm add` ran {n:.0f} daemon pass{'' if n == 1 else 'es'} (median) "
              f"and one FRR sync; the last pass's phases, medians: read {fmt_ms(t['read_ms'])}, observe "
              f"{fmt_ms(t['observe_ms'])}, plan {fmt_ms(t['plan_ms'])}, apply {fmt_ms(t['apply_ms'])}.")
        w("")
        bigadd = [r["spine_ms"] for r in lat if r["vms"] == big and r["phase"] == "add"]
        if bigadd:
            w(f"Target p50 ≤ 150 ms at {big:,} VMs: {verdict(pct(bigadd, 50) <= 150)} "
              f"({fmt_ms(pct(bigadd, 50))}).")
            w("")
    costs = {r["label"]: r for r in recs if r["bench"] == "cost"}
    if costs:
        parts = []
        if "vty_query" in costs and "vtysh_show" in costs:
            parts.append(f"one `vtysh -c 'show bgp ipv6 unicast P json'` process took "
                         f"{fmt_ms(costs['vtysh_show']['ms'])} (median of {costs['vtysh_show']['n']}), "
                         f"the same query on bgpd's vty socket {costs['vty_query']['ms']:.2f} ms; "
                         f"the spine is polled on the socket every 5 ms, so the latencies above are "
                         f"late by at most about 5 ms, where a vtysh process per poll would add up to "
                         f"{fmt_ms(costs['vtysh_show']['ms'])}")
        for key, text in (("write_tiny", "`vtysh -c 'write memory'` at 10 VMs"),
                          ("write_big", f"`vtysh -c 'write memory'` at {big:,} VMs"),
                          ("running_big", f"`vtysh -c 'show running-config'` at {big:,} VMs "
                                          "(what a resync re-reads)")):
            if key in costs:
                parts.append(f"{text} took {fmt_ms(costs[key]['ms'])}")
        w("Costs of FRR's own tools in the same run: " + "; ".join(parts) + ".")
    block = "\n".join(out).rstrip() + "\n"
    print(block)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    fns = {"gen": gen, "spine": spine, "fib": fib_check, "cold": rec_cold, "latency": latency,
           "insync": lambda sock: 0 if frr_in_sync(sock) else 1, "cost": cost, "vtycost": vty_cost,
           "report": report}
    if cmd not in fns:
        sys.exit(f"unknown command {cmd}")
    sys.exit(fns[cmd](*args) or 0)
PYEOF

# A boot id of our own (config boot_id_path), not the host's.
cat /proc/sys/kernel/random/uuid >"$work/boot_id"

log "generating the loads ($vms, $small_vms and 10 VMs) in $work"
python3 "$py" gen "$work" "$vms" "$small_vms" | sed "s/^/$log_prefix: /"
sets="$work/sets"

# hvroute's bootstrap frr.conf without VM lines: the base config of the "bootstrapped" runs,
# and of the prefix-list and shell-loop runs (the same peers and outbound policy).
"$hvroute_bin" --config "$sets/empty/hv.toml" frr render >"$work/base.conf" \
    || die "hvroute frr render failed."
cat "$work/base.conf" - >"$work/plist-base.conf" <<EOF
!
route-map BENCH-KERNEL permit 10
 match ipv6 address prefix-list BENCH-VMS-V6
exit
!
router bgp $hv_asn
 address-family ipv6 unicast
  redistribute kernel route-map BENCH-KERNEL
 exit-address-family
exit
EOF
cat >"$work/spine.conf" <<EOF
frr defaults datacenter
!
router bgp $spine_asn
 bgp router-id $spine_link
 no bgp default ipv4-unicast
 neighbor $hv_link remote-as $hv_asn
 !
 address-family ipv6 unicast
  neighbor $hv_link activate
 exit-address-family
exit
EOF
: >"$work/empty.conf"

# ---------------------------------------------------------------------------------------------
# FRR in a namespace, and a hypervisor/spine pair.

now() { printf '%s' "$EPOCHREALTIME"; }
elapsed_ms() { python3 -c "import sys; print((float(sys.argv[2]) - float(sys.argv[1])) * 1000)" "$1" "$2"; }

# frr_start NS PS CONF: zebra and bgpd in NS with pathspace PS, frr.conf from CONF, loaded.
frr_start() {
    local ns="$1" ps="$2" conf="$3" d pid
    [[ ! -e "/etc/frr/$ps" && ! -e "/var/run/frr/$ps" ]] || die "FRR pathspace $ps already exists."
    pathspaces+=("$ps")
    mkdir -p "/etc/frr/$ps" "/var/run/frr/$ps"
    # A log file in the pathspace's run dir (kept only if a run fails); nothing else is added.
    { cat "$conf"; echo "log file /var/run/frr/$ps/frr.log informational"; } >"/etc/frr/$ps/frr.conf"
    : >"/etc/frr/$ps/vtysh.conf"
    chown -R frr:frr "/etc/frr/$ps" "/var/run/frr/$ps"
    frr_pids[$ps]=""
    for d in zebra bgpd; do
        local -a opts=()
        # zebra's netlink receive buffer as Debian's /etc/frr/daemons sets it. With zebra's
        # small default, a cold pass of 40,000 route and neighbour changes can overflow its
        # socket, and zebra silently loses the kernel routes at the end of the pass (seen).
        [[ "$d" == zebra ]] && opts=(-s "$zebra_rcvbuf")
        ip netns exec "$ns" "/usr/lib/frr/$d" -d -N "$ps" -F datacenter -P 0 -i "/var/run/frr/$ps/$d.pid" \
            "${opts[@]}" >/dev/null 2>&1 || die "$d for $ps did not start."
        # shellcheck disable=SC2016  # $1 expands in the inner bash
        wait_until "$frr_start_timeout_s" "$d of $ps to write its pid file" \
            bash -c '[[ -s "$1" ]] && kill -0 "$(cat "$1")"' _ "/var/run/frr/$ps/$d.pid" \
            || die "$d for $ps did not come up."
        pid="$(cat "/var/run/frr/$ps/$d.pid")"
        # Only a PID whose command line is ours is ever killed.
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "/usr/lib/frr/$d -d -N $ps " \
            || die "PID $pid in /var/run/frr/$ps/$d.pid is not the $d this run started."
        frr_pids[$ps]+="$pid "
    done
    wait_until "$frr_start_timeout_s" "vtysh to reach $ps" vtysh -N "$ps" -c 'show version' \
        || die "vtysh cannot reach FRR $ps."
    vtysh -N "$ps" -b >"$work/vtysh-b.out" 2>&1 || {
        tail -n 5 "$work/vtysh-b.out" | sed 's/^/    /' >&2
        die "vtysh -N $ps -b did not load $conf."
    }
}

# pair_up HV_CONF: fresh hypervisor and spine namespaces joined by a veth (eth1 on both), each
# with its FRR. Sets hv_ns, sp_ns (also the FRR pathspaces), sp_vty.
pair_up() {
    pair_seq=$((pair_seq + 1))
    hv_ns="hvr-bfrr-$$-$pair_seq-hv"
    sp_ns="hvr-bfrr-$$-$pair_seq-sp"
    ip netns add "$hv_ns"
    namespaces+=("$hv_ns")
    ip netns add "$sp_ns"
    namespaces+=("$sp_ns")
    ip -n "$hv_ns" link set lo up
    ip -n "$sp_ns" link set lo up
    # No duplicate address detection on the link: otherwise the spine's zebra can get the
    # first routes while eth1's link-local address is still tentative, fail to install
    # them ("Nexthop id does not exist") and never retry (seen once, at 20,000 routes).
    for ns in "$hv_ns" "$sp_ns"; do
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0
    done
    ip -n "$hv_ns" link add eth1 type veth peer name eth1 netns "$sp_ns"
    ip -n "$hv_ns" addr add "$hv_link/31" dev eth1
    ip -n "$sp_ns" addr add "$spine_link/31" dev eth1
    ip -n "$hv_ns" link set eth1 up
    ip -n "$sp_ns" link set eth1 up
    frr_start "$sp_ns" "$sp_ns" "$work/spine.conf"
    frr_start "$hv_ns" "$hv_ns" "$1"
    sp_vty="/var/run/frr/$sp_ns/bgpd.vty"
}

pair_down() {
    stop_poller
    stop_daemon
    frr_stop "$hv_ns" "$sp_ns"
    del_ns "$hv_ns"
    del_ns "$sp_ns"
    sleep "$settle_s"
}

# The FRR PIDs whose CPU the poller records: a comma list for it, and JSON roles for the
# report ({"hv_frr": [zebra, bgpd], "spine_frr": [...]}).
pid_list() {
    local -a p
    read -r -a p <<<"${frr_pids[$hv_ns]} ${frr_pids[$sp_ns]}"
    (IFS=,; printf '%s' "${p[*]}")
}
pid_roles() {
    local -a h s
    read -r -a h <<<"${frr_pids[$hv_ns]}"
    read -r -a s <<<"${frr_pids[$sp_ns]}"
    printf '{"hv_frr": ["%s", "%s"], "spine_frr": ["%s", "%s"]}' "${h[0]}" "${h[1]}" "${s[0]}" "${s[1]}"
}

# start_poller WANT TIMEOUT: polls the spine in the background (see bench_frr.py spine) and
# waits until it runs. The caller then takes the start time with mark_t0.
start_poller() {
    rm -f "$work/t0" "$work/poll.json"
    python3 "$py" spine "$sp_vty" "$work/t0" "$1" "$2" "$work/poll.json" "$(pid_list)" &
    poller_pid=$!
    sleep 0.3 # Python's start-up, off the clock
}

# mark_t0: the start of the measured method; sets t0 and tells the poller.
mark_t0() {
    t0="$(now)"
    printf '%s\n' "$t0" >"$work/t0"
}

# wait_poller WHAT: waits for the poller; dies if the spine never got everything.
wait_poller() {
    local rc=0 pid="$poller_pid"
    wait "$pid" || rc=$?
    poller_pid=""
    if [[ $rc -ne 0 ]]; then
        cat "$work/poll.json" >&2 2>/dev/null || true
        echo >&2
        keep_evidence
        die "$1: the spine did not get every prefix in time."
    fi
}

# keep_evidence: when a run fails, copies what shows where prefixes got stuck to a directory
# that outlives the clean-up.
keep_evidence() {
    local d="/tmp/bench-frr-failure-$$" f
    mkdir -p "$d"
    for f in "$work"/daemon*.log "$work/poll.json" "/var/run/frr/$hv_ns/frr.log" "/var/run/frr/$sp_ns/frr.log"; do
        [[ -e "$f" ]] && cp "$f" "$d/$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    {
        local c
        for c in "show ipv6 route summary" "show bgp ipv6 unicast summary" "show bgp ipv6 unicast statistics" \
            "show bgp ipv6 unicast update-groups" "show bgp nexthop"; do
            echo "### hypervisor: $c"
            timeout 30 vtysh -N "$hv_ns" -c "$c" 2>&1 | head -n 60
        done
        echo "### hypervisor: network lines in the running config"
        timeout 30 vtysh -N "$hv_ns" -c "show running-config" 2>&1 | grep -c '^  network ' || true
        echo "### hypervisor: kernel routes of protocol 44"
        ip -n "$hv_ns" -6 route show proto 44 | wc -l
        echo "### hypervisor: netlink sockets (/proc/net/netlink; zebra's PIDs: ${frr_pids[$hv_ns]:-})"
        ip netns exec "$hv_ns" cat /proc/net/netlink
        echo "### spine: show bgp ipv6 unicast summary"
        timeout 30 vtysh -N "$sp_ns" -c "show bgp ipv6 unicast summary" 2>&1
        if [[ -n "$daemon_pid" && -S "${sock:-/nonexistent}" ]]; then
            echo "### hvroute status"
            python3 -c 'import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(10); s.connect(sys.argv[1])
s.sendall(b"{\"op\":\"status\"}\n"); print(s.makefile().readline())' "$sock" 2>&1
        fi
    } >"$d/state.txt" 2>&1
    warn "kept the evidence in $d"
}

wait_session() {
    now >"$work/t0"
    python3 "$py" spine "$sp_vty" "$work/t0" 0 "$session_timeout_s" "$work/poll.json" "" \
        || die "the BGP session between $hv_ns and $sp_ns did not come up within ${session_timeout_s}s."
    sleep "$session_settle_s"
}

start_daemon() { # DS LOG: hvroute daemon for load DS in hv_ns
    cfg="$work/hv-$hv_ns.toml"
    sed "s/@PS@/$hv_ns/" "$sets/$1/hv.toml.in" >"$cfg"
    sock="$sets/$1/hvroute.sock"
    RUST_LOG=info ip netns exec "$hv_ns" "$hvroute_bin" --config "$cfg" daemon >"$2" 2>&1 </dev/null &
    daemon_pid=$!
}

# netlink_drops NS: "PID:DROPS ..." for every netlink socket in NS that the kernel had to
# drop messages for (the socket's receive buffer was full); empty if none.
netlink_drops() {
    # shellcheck disable=SC2016  # awk's own $ fields
    ip netns exec "$1" awk 'NR > 1 && $9 > 0 { printf "%s:%s ", $3, $9 }' /proc/net/netlink
}

fib_check() { # DS
    python3 "$py" fib "$sp_ns" "$sets/$1/list" "$fib_timeout_s" | sed "s/^/$log_prefix: /" \
        || { keep_evidence; die "the spine's FIB does not hold exactly the load's prefixes."; }
    local drops
    drops="$(netlink_drops "$hv_ns")"
    if [[ -n "$drops" ]]; then
        warn "netlink sockets in $hv_ns dropped messages (netlink port id:drops): $drops"
    fi
}

# cold_hvroute DS VMS RUN CONF BENCH: one hvroute cold start, recorded.
cold_hvroute() {
    local ds="$1" n="$2" run="$3" conf="$4" bench="$5"
    pair_up "$conf"
    if [[ "$bench" == hvroute_boot ]]; then
        wait_session
    fi
    start_poller "$((2 * n))" "$cold_timeout_s"
    mark_t0
    start_daemon "$ds" "$work/daemon.log"
    wait_poller "hvroute $ds run $run"
    python3 "$py" cold "$results" "$bench" "$n" "$run" "$t0" "$work/poll.json" "$(pid_roles)" "{}" \
        "$work/daemon.log" | sed "s/^/$log_prefix: /"
    fib_check "$ds"
    pair_down
}

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
script_t0="$(now)"

# ---------------------------------------------------------------------------------------------
# 1. Cold starts.

log "1a. hvroute daemon, $vms VMs ($((2 * vms)) prefixes), FRR with an empty config: $runs runs"
for ((r = 1; r <= runs; r++)); do
    cold_hvroute main "$vms" "$r" "$work/empty.conf" hvroute_empty
done
log "1b. hvroute daemon, $vms VMs, FRR holding the bootstrap config, session up: $runs runs"
for ((r = 1; r <= runs; r++)); do
    cold_hvroute main "$vms" "$r" "$work/base.conf" hvroute_boot
done
log "1c. hvroute daemon, $small_vms VMs, FRR holding the bootstrap config, session up: $runs runs"
for ((r = 1; r <= runs; r++)); do
    cold_hvroute small "$small_vms" "$r" "$work/base.conf" hvroute_boot
done

log "1d. reference: ip -batch, then one vtysh -f of the $((2 * vms)) network lines, FRR holding the bootstrap config: $runs runs"
for ((r = 1; r <= runs; r++)); do
    pair_up "$work/base.conf"
    wait_session
    start_poller "$((2 * vms))" "$cold_timeout_s"
    mark_t0
    ip -n "$hv_ns" -batch "$sets/main/batch" >/dev/null || die "ip -batch into $hv_ns failed."
    t1="$(now)"
    timeout "$cold_timeout_s" vtysh -N "$hv_ns" -f "$sets/main/networks.conf" >"$work/vtysh.out" 2>&1 || {
        tail -n 5 "$work/vtysh.out" | sed 's/^/    /' >&2
        die "vtysh -f of the network lines failed."
    }
    t2="$(now)"
    wait_poller "reference run $r"
    python3 "$py" cold "$results" reference "$vms" "$r" "$t0" "$work/poll.json" "$(pid_roles)" \
        "{\"kernel_ms\": $(elapsed_ms "$t0" "$t1"), \"vtysh_ms\": $(elapsed_ms "$t1" "$t2")}" \
        | sed "s/^/$log_prefix: /"
    fib_check main
    pair_down
done

for ((r = 1; r <= plist_runs; r++)); do
    log "2. prefix-list + redistribute kernel, $small_vms VMs ($((2 * small_vms)) entries), run $r of $plist_runs (minutes)"
    pair_up "$work/plist-base.conf"
    wait_session
    start_poller "$((2 * small_vms))" "$plist_timeout_s"
    mark_t0
    ip -n "$hv_ns" -batch "$sets/small/batch" >/dev/null || die "ip -batch into $hv_ns failed."
    t1="$(now)"
    timeout "$plist_timeout_s" vtysh -N "$hv_ns" -f "$sets/small/plist.conf" >"$work/vtysh.out" 2>&1 || {
        tail -n 5 "$work/vtysh.out" | sed 's/^/    /' >&2
        die "vtysh -f of the prefix-list failed."
    }
    t2="$(now)"
    kernel_ms="$(elapsed_ms "$t0" "$t1")"
    vtysh_ms="$(elapsed_ms "$t1" "$t2")"
    log "vtysh -f of $((2 * small_vms)) prefix-list entries returned after ${vtysh_ms%.*} ms; waiting for the spine"
    wait_poller "prefix-list run $r"
    python3 "$py" cold "$results" plist "$small_vms" "$r" "$t0" "$work/poll.json" "$(pid_roles)" \
        "{\"kernel_ms\": $kernel_ms, \"vtysh_ms\": $vtysh_ms}" | sed "s/^/$log_prefix: /"
    fib_check small
    pair_down
done

for ((r = 1; r <= loop_runs; r++)); do
    log "3. naive shell loop, $small_vms VMs ($((2 * small_vms)) prefixes), run $r of $loop_runs (minutes)"
    pair_up "$work/base.conf"
    wait_session
    start_poller "$((2 * small_vms))" "$loop_timeout_s"
    mark_t0
    # shellcheck disable=SC2016  # the script's $ expand in the inner bash
    timeout "$loop_timeout_s" ip netns exec "$hv_ns" bash -c '
        set -e
        ip link add cloudbr0 address 0e:00:00:00:00:01 mtu 1500 type bridge
        ip addr add 169.254.0.1/32 dev cloudbr0
        ip addr add fe80::1/64 dev cloudbr0 nodad
        ip link set cloudbr0 up
        while read -r fam addr mac; do
            ip -"$fam" route replace "$addr" dev cloudbr0 proto 44
            ip -"$fam" neigh replace "$addr" lladdr "$mac" dev cloudbr0 nud permanent proto 44
            vtysh -N "$2" -c "conf t" -c "router bgp $3" -c "address-family ipv6 unicast" \
                -c "network $addr/128" >/dev/null
        done <"$1"' loop "$sets/small/list" "$hv_ns" "$hv_asn" 2>"$work/err.txt" || {
        tail -n 5 "$work/err.txt" | sed 's/^/    /' >&2
        die "the naive loop failed."
    }
    loop_ms="$(elapsed_ms "$t0" "$(now)")"
    wait_poller "naive loop run $r"
    python3 "$py" cold "$results" loop "$small_vms" "$r" "$t0" "$work/poll.json" "$(pid_roles)" \
        "{\"loop_ms\": $loop_ms}" | sed "s/^/$log_prefix: /"
    fib_check small
    pair_down
done

# ---------------------------------------------------------------------------------------------
# 2. Add one VM, with the daemon converged.

latency_at() { # DS VMS LABEL
    local ds="$1" n="$2" label="$3"
    log "4. add-one-VM latency with $n VMs on the host: $samples samples, then as many deletions"
    pair_up "$work/empty.conf"
    start_poller "$((2 * n))" "$cold_timeout_s"
    mark_t0
    start_daemon "$ds" "$work/daemon-lat.log"
    wait_poller "converging $n VMs for the latency samples"
    wait_until "$daemon_start_timeout_s" "the daemon's FRR side to settle" python3 "$py" insync "$sock" \
        || die "the daemon did not report FRR in sync."
    python3 "$py" latency "$results" "$label" "$n" "$hvroute_bin" "$cfg" "$sock" "$sp_vty" \
        "$samples" "$sample_timeout_s" | sed "s/^/$log_prefix: /" || die "the latency samples failed."
    local prefix="2001:db8:100::1:0:0/128"
    if [[ "$ds" == tiny ]]; then
        python3 "$py" vtycost "$results" "$sp_vty" "$prefix" | sed "s/^/$log_prefix: /"
        python3 "$py" cost "$results" vtysh_show 20 vtysh -N "$sp_ns" -c "show bgp ipv6 unicast $prefix json" \
            | sed "s/^/$log_prefix: /"
        python3 "$py" cost "$results" write_tiny 5 vtysh -N "$hv_ns" -c "write memory" | sed "s/^/$log_prefix: /"
    else
        python3 "$py" cost "$results" write_big 5 vtysh -N "$hv_ns" -c "write memory" | sed "s/^/$log_prefix: /"
        python3 "$py" cost "$results" running_big 5 vtysh -N "$hv_ns" -c "show running-config" \
            | sed "s/^/$log_prefix: /"
    fi
    pair_down
}
latency_at tiny 10 small-host
latency_at main "$vms" big-host

load_end="$(cut -d' ' -f1-3 /proc/loadavg)"
took_s="$(python3 -c "import sys, time; print(round(time.time() - float(sys.argv[1])))" "$script_t0")"

# ---------------------------------------------------------------------------------------------
# Report.

meta="$(python3 -c '
import json, sys
k = ["date", "host", "kernel", "frr", "commit", "load_start", "load_end", "vms", "small_vms", "took"]
d = dict(zip(k, sys.argv[1:]))
d["vms"], d["small_vms"] = int(d["vms"]), int(d["small_vms"])
print(json.dumps(d))' "$(date -u +%Y-%m-%d)" "$(nproc) cores, shared" "$(uname -r)" \
    "FRR $(dpkg-query -W -f='${Version}' frr)" "$build_label" "$load_start" "$load_end" "$vms" "$small_vms" \
    "$((took_s / 60)) min $((took_s % 60)) s (after the build)")"

log "results"
echo
block="$(python3 "$py" report "$results" "$meta")" || die "the report failed."
printf '%s\n' "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-frr "$block"
fi
