#!/usr/bin/env bash
# The cost of the bridge guards (issue 6, docs/guards.md): a rule update at 1,000 VMs, the cold
# load of 1,000 NICs' rules, and forwarding throughput with and without the guards.
# Run `scripts/bench-guard.sh --help` for details.
set -euo pipefail

log_prefix="bench-guard"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-guard.sh [--vms N] [--changes N] [--load-runs N] [--rounds N] [--seconds N]
                              [--skip-updates] [--skip-throughput] [--rev REV] [--write]
       scripts/bench-guard.sh --help

Builds hvroute (release) and measures, in network namespaces of its own:

  1. Rule updates at --vms VMs. A hypervisor namespace with cloudbr0 and one veth port per VM
     (the other end up, no namespace behind it), --vms VMs in the state dir, each bound to its
     port: one IPv6 address each (2001:db8:100::1:i), the first 250 also an IPv4 address
     (192.0.2.i+1). Then:
     - the cold pass: `hvroute reconcile --json` programs routes, neighbours and every NIC's
       guard chain (total_ms and wall time);
     - the cold `nft -f` load of the same rules (`nft list table bridge hvroute` and
       `inet hvroute` as the pass left them), into a fresh namespace, --load-runs times;
     - with `hvroute daemon` running, --changes times `hvroute vm add vmJ ... --replace` with a
       new IPv6 address for one VM, timed from just before the command until
       `nft list chain bridge hvroute nic-<12 hex of the MAC>` shows the new address (polled
       back to back; the cost of one such `nft list` at this size is reported as the
       resolution), and until the command returned.
  2. Forwarding throughput VM -> outside host: a VM namespace on cloudbr0, the hypervisor and
     an outside namespace (203.0.113.10, 2001:db8:ffff::10) on a veth uplink, iperf3 (one TCP
     stream, --seconds s, IPv4 and IPv6) with the guards on (the default) and off
     (`[guard] enabled = false`, which removes hvroute's guard rules), alternating --rounds
     times in the same run; medians and the ratio off/on. The hypervisor's uplink is declared
     as an unnumbered BGP peer (FRR itself is not run), so the guards let VM traffic out of it.

A build without the guards (before issue 6) writes no `bridge hvroute` table and refuses a
`[guard]` section: the script says so, skips part 1's guard figures and measures only the
default configuration in part 2 (the baseline).

Options (defaults in brackets):
  --vms N            VMs (and bridge ports) in part 1; a Linux bridge takes at most 1,023 [1000]
  --changes N        timed rule updates [20]
  --load-runs N      cold `nft -f` loads [5]
  --rounds N         on/off rounds of part 2 [3]
  --seconds N        length of each iperf3 run [10]
  --skip-updates     skip part 1
  --skip-throughput  skip part 2
  --rev REV          build the committed revision REV (a clean export) [working tree]
  --write            also replace the generated block of docs/benchmarks.md (between
                     <!-- bench-guard:begin --> and <!-- bench-guard:end -->)

Needs root and Debian's iperf3 (installed when missing). Everything it makes (namespaces
hvr-bguard-PID-*, a work dir in /tmp) is removed on exit; it kills only the PIDs it started
(hvroute daemon, iperf3 server).
EOF
}

vms=1000
changes=20
load_runs=5
rounds=3
seconds=10
skip_updates=""
skip_throughput=""
rev=""
write=""

need_number() {
    if [[ $# -lt 2 || ! "$2" =~ ^[1-9][0-9]*$ ]]; then
        printf 'bench-guard: %s needs a whole number of at least 1 (see --help)\n' "$1" >&2
        exit 2
    fi
}

while [[ $# -gt 0 ]]; do
    case "$1" in
    --vms) need_number "$@"; vms="$2"; shift ;;
    --changes) need_number "$@"; changes="$2"; shift ;;
    --load-runs) need_number "$@"; load_runs="$2"; shift ;;
    --rounds) need_number "$@"; rounds="$2"; shift ;;
    --seconds) need_number "$@"; seconds="$2"; shift ;;
    --skip-updates) skip_updates=1 ;;
    --skip-throughput) skip_throughput=1 ;;
    --rev)
        [[ $# -ge 2 && -n "$2" ]] || { echo "bench-guard: --rev needs a git revision (see --help)" >&2; exit 2; }
        rev="$2"
        shift
        ;;
    --write) write=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'bench-guard: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done
if ((vms > 1000)); then
    echo "bench-guard: --vms is at most 1000 (a Linux bridge takes at most 1,023 ports)" >&2
    exit 2
fi

need_root
ensure_packages iperf3
ensure_cargo
cd "$repo_root"

work="$(mktemp -d /tmp/hvroute-bench-guard.XXXXXX)"
ns_prefix="hvr-bguard-$$"
pids=()
cleanup() {
    local pid ns
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^${ns_prefix}-" || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
build_hvroute "$work" "$rev" bench-guard

# write_config DIR [EXTRA]: an hvroute config in DIR (state dir, socket, boot id of its own)
# with uplink0 as an unnumbered BGP peer and FRR off; EXTRA is appended as it is.
write_config() {
    local dir="$1" extra="${2:-}"
    mkdir -p "$dir/state"
    printf '6e2f0c1a-0000-4000-8000-%012x\n' "$$" >"$dir/boot_id"
    cat >"$dir/hvroute.toml" <<EOF
state_dir = "$dir/state"
socket = "$dir/hvroute.sock"
boot_id_path = "$dir/boot_id"
resync_interval_s = 3600

[pools]
ipv4 = ["192.0.2.0/24"]
ipv6 = ["2001:db8:100::/40"]

[bgp]
asn = 65001
router_id = "10.255.0.1"

[[bgp.peer]]
interface = "uplink0"
remote_as = "external"

[frr]
enabled = false
$extra
EOF
}

results="$work/results.json"
echo '{}' >"$results"

# ---------------------------------------------------------------------------------------------
# Part 1: rule updates and the cold load at --vms VMs.

cat >"$work/updates.py" <<'PY'
"""Runs inside the hypervisor namespace: N ports and VMs, the cold pass, the nft dump, then
timed rule updates with the daemon running. Prints one JSON object."""
import ipaddress, json, os, statistics, subprocess, sys, time

hv, cfg, n, changes = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
dump = sys.argv[5]
d = os.path.dirname(cfg)
state = os.path.join(d, "state")

def run(args, stdin=None, check=True):
    r = subprocess.run(args, input=stdin, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {r.stderr.strip()}")
    return r

def mac(i):
    return "52:54:00:10:%02x:%02x" % (i >> 8 & 0xff, i & 0xff)

def addrs(i):
    a = [f"2001:db8:100::1:{i:x}"]
    if i < 250:
        a.insert(0, f"192.0.2.{i + 1}")
    return a

out = {"vms": n, "dual_stack": min(n, 250)}
# The bridge, made by hvroute, then the ports (the other end of each veth stays here, up).
run([hv, "--config", cfg, "reconcile"])
batch = []
for i in range(n):
    batch += [f"link add p{i} type veth peer name q{i}", f"link set p{i} master cloudbr0",
              f"link set p{i} up", f"link set q{i} up"]
run(["ip", "-batch", "-"], stdin="\n".join(batch) + "\n")
for i in range(n):
    with open(os.path.join(state, f"vm{i}.json"), "w") as f:
        json.dump({"version": 1, "name": f"vm{i}", "source": "cli",
                   "nics": [{"mac": mac(i), "addresses": addrs(i), "port": f"p{i}"}]}, f)
t = time.perf_counter()
r = json.loads(run([hv, "--config", cfg, "reconcile", "--json"]).stdout)
out["cold_wall_ms"] = (time.perf_counter() - t) * 1000
out["cold_total_ms"] = r["timings"]["total_ms"]
out["cold_ops"] = len(r["plan"]["ops"])
if run(["nft", "list", "table", "bridge", "hvroute"], check=False).returncode != 0:
    out["guards"] = False
    print(json.dumps(out))
    sys.exit(0)
out["guards"] = True
text = run(["nft", "list", "table", "bridge", "hvroute"]).stdout + run(["nft", "list", "table", "inet", "hvroute"]).stdout
with open(dump, "w") as f:
    f.write(text)
out["dump_lines"] = text.count("\n")

sock = os.path.join(d, "hvroute.sock")
daemon = subprocess.Popen([hv, "--config", cfg, "daemon"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    t = time.time()
    while not os.path.exists(sock):
        if time.time() - t > 60 or daemon.poll() is not None:
            sys.exit("the daemon did not start")
        time.sleep(0.05)
    # One `nft list chain` at this size: the resolution of the poll below.
    probe = [f"nic-{mac(0).replace(':', '')}"]
    listing = []
    for _ in range(10):
        t = time.perf_counter()
        run(["nft", "list", "chain", "bridge", "hvroute", probe[0]])
        listing.append((time.perf_counter() - t) * 1000)
    out["nft_list_ms"] = statistics.median(listing)
    cli, visible = [], []
    for k in range(changes):
        j = (k * 37 + 11) % n
        new = str(ipaddress.ip_address(f"2001:db8:100::2:{k:x}"))
        ips = [a for a in addrs(j) if ":" not in a] + [new]
        args = [hv, "--config", cfg, "vm", "add", f"vm{j}", "--mac", mac(j), "--port", f"p{j}", "--replace"]
        for a in ips:
            args += ["--ip", a]
        chain = f"nic-{mac(j).replace(':', '')}"
        t = time.perf_counter()
        run(args)
        cli.append((time.perf_counter() - t) * 1000)
        while new not in run(["nft", "list", "chain", "bridge", "hvroute", chain]).stdout:
            if time.perf_counter() - t > 30:
                sys.exit(f"the chain {chain} did not show {new} within 30 s")
        visible.append((time.perf_counter() - t) * 1000)
    out["update_cli_ms"] = cli
    out["update_visible_ms"] = visible
finally:
    daemon.terminate()
    daemon.wait(timeout=30)
print(json.dumps(out))
PY

if [[ -z "$skip_updates" ]]; then
    ns="$ns_prefix-upd"
    log "part 1: $vms VMs on $vms bridge ports, $changes rule updates"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    write_config "$work/upd"
    ip netns exec "$ns" python3 "$work/updates.py" "$built_bin" "$work/upd/hvroute.toml" "$vms" "$changes" \
        "$work/guard-rules.nft" >"$work/updates.json" || die "part 1 failed"
    ip netns del "$ns"
    loads=()
    if [[ -s "$work/guard-rules.nft" ]]; then
        log "part 1: $load_runs cold loads of the guard rules with nft -f"
        for ((r = 0; r < load_runs; r++)); do
            ns="$ns_prefix-load$r"
            ip netns add "$ns"
            t0="$(date +%s%N)"
            ip netns exec "$ns" nft -f "$work/guard-rules.nft" || die "nft -f of the dumped guard rules failed"
            t1="$(date +%s%N)"
            loads+=("$(((t1 - t0) / 1000))")
            ip netns del "$ns"
        done
    else
        warn "this build writes no bridge hvroute table (no guards yet): no rule-update or load figures"
    fi
    python3 - "$results" "$work/updates.json" "${loads[@]}" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
res["updates"] = json.load(open(sys.argv[2]))
res["updates"]["nft_load_ms"] = [int(x) / 1000 for x in sys.argv[3:]]
json.dump(res, open(sys.argv[1], "w"))
PY
fi

# ---------------------------------------------------------------------------------------------
# Part 2: throughput VM -> outside, guards on and off.

if [[ -z "$skip_throughput" ]]; then
    hv="$ns_prefix-hv" out="$ns_prefix-out" vm="$ns_prefix-vm"
    for ns in "$hv" "$out" "$vm"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    for ns in "$hv" "$out"; do
        ip netns exec "$ns" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad'
    done
    ip -n "$hv" link add uplink0 type veth peer name eth0 netns "$out"
    ip -n "$hv" addr add 10.255.0.0/31 dev uplink0
    ip -n "$hv" -6 addr add 2001:db8:ffff:1::1/64 dev uplink0 nodad
    ip -n "$hv" link set uplink0 up
    ip -n "$hv" route add default via 10.255.0.1 dev uplink0
    ip -n "$hv" -6 route add default via 2001:db8:ffff:1::2 dev uplink0
    ip -n "$out" addr add 203.0.113.10/32 dev lo
    ip -n "$out" -6 addr add 2001:db8:ffff::10/128 dev lo
    ip -n "$out" addr add 10.255.0.1/31 dev eth0
    ip -n "$out" -6 addr add 2001:db8:ffff:1::2/64 dev eth0 nodad
    ip -n "$out" link set eth0 up
    ip -n "$out" route add 192.0.2.0/24 via 10.255.0.0 dev eth0
    ip -n "$out" -6 route add 2001:db8:100::/40 via 2001:db8:ffff:1::1 dev eth0
    # The VM, configured as cloud-init configures a guest from its ConfigDrive.
    ip -n "$hv" link add vm1p type veth peer name eth0 netns "$vm"
    ip -n "$vm" link set eth0 address 52:54:00:00:00:01
    ip netns exec "$vm" sh -c 'echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_ra'
    ip -n "$vm" link set eth0 up
    ip -n "$vm" addr add 192.0.2.10/32 dev eth0
    ip -n "$vm" route add default via 169.254.0.1 dev eth0 onlink
    ip -n "$vm" -6 addr add 2001:db8:100::10/128 dev eth0 nodad
    ip -n "$vm" -6 route add default via fe80::1 dev eth0

    write_config "$work/tp"
    cp "$work/tp/hvroute.toml" "$work/tp/on.toml"
    write_config "$work/tp" $'\n[guard]\nenabled = false'
    cp "$work/tp/hvroute.toml" "$work/tp/off.toml"
    cp "$work/tp/on.toml" "$work/tp/hvroute.toml"
    hvr() { ip netns exec "$hv" "$built_bin" --config "$work/tp/hvroute.toml" "$@"; }
    hvr reconcile >/dev/null
    ip -n "$hv" link set vm1p master cloudbr0
    ip -n "$hv" link set vm1p up
    hvr vm add vm1 --mac 52:54:00:00:00:01 --ip 192.0.2.10 --ip 2001:db8:100::10 --port vm1p >/dev/null
    hvr reconcile >/dev/null
    modes=(on off)
    if ! ip netns exec "$hv" "$built_bin" --config "$work/tp/off.toml" reconcile --dry-run >/dev/null 2>"$work/off.err"; then
        warn "this build refuses [guard] enabled = false ($(head -n1 "$work/off.err")): measuring the default configuration only"
        modes=(on)
    fi
    wait_until 10 "the VM to reach the outside host (IPv4)" ip netns exec "$vm" ping -c1 -W1 203.0.113.10 \
        || die "no path from the VM to the outside host"
    wait_until 10 "the VM to reach the outside host (IPv6)" ip netns exec "$vm" ping -c1 -W1 2001:db8:ffff::10 \
        || die "no path from the VM to the outside host"
    ip netns exec "$out" iperf3 -s >/dev/null 2>&1 &
    pids+=("$!")
    wait_until 10 "iperf3 to listen" sh -c "ip netns exec '$out' ss -Hltn 'sport = :5201' | grep -q ." \
        || die "iperf3 did not start"
    : >"$work/tp.jsonl"
    for ((r = 1; r <= rounds; r++)); do
        for mode in "${modes[@]}"; do
            cp "$work/tp/$mode.toml" "$work/tp/hvroute.toml"
            hvr reconcile >/dev/null || die "hvroute reconcile with the guards $mode failed"
            guards=false
            if ip netns exec "$hv" nft list table bridge hvroute >/dev/null 2>&1; then
                guards=true
            fi
            isolated=false
            if ip netns exec "$hv" bridge -d link show dev vm1p | grep -q "isolated on"; then
                isolated=true
            fi
            for dst in 203.0.113.10 2001:db8:ffff::10; do
                log "part 2: round $r/$rounds, guards $mode (table present: $guards), to $dst, ${seconds}s"
                ip netns exec "$vm" iperf3 -c "$dst" -t "$seconds" -J >"$work/iperf.json" \
                    || die "iperf3 to $dst failed (guards $mode)"
                python3 - "$work/iperf.json" "$mode" "$dst" "$guards" "$isolated" "$r" >>"$work/tp.jsonl" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(json.dumps({"mode": sys.argv[2], "dst": sys.argv[3], "guards_table": sys.argv[4] == "true",
                  "isolated": sys.argv[5] == "true", "round": int(sys.argv[6]),
                  "gbps": j["end"]["sum_received"]["bits_per_second"] / 1e9,
                  "retransmits": j["end"]["sum_sent"].get("retransmits", 0)}))
PY
            done
        done
    done
    python3 - "$results" "$work/tp.jsonl" <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))
res["throughput"] = [json.loads(l) for l in open(sys.argv[2])]
json.dump(res, open(sys.argv[1], "w"))
PY
fi

block="$(python3 - "$results" "$build_label" "$(cut -d' ' -f1-3 /proc/loadavg)" "$vms" "$changes" "$load_runs" "$rounds" "$seconds" <<'PY'
import json, math, statistics, sys
res = json.load(open(sys.argv[1]))
label, load, vms, changes, load_runs, rounds, seconds = sys.argv[2:9]
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]
print(f"Run of hvroute {label}; 2 cores, shared; load average {load} at the end. Command: "
      f"`scripts/bench-guard.sh --vms {vms} --changes {changes} --load-runs {load_runs} --rounds {rounds} --seconds {seconds}`.\n")
u = res.get("updates")
if u:
    print(f"**Rule updates at {u['vms']:,} VMs** ({u['vms']:,} bridge ports, {u['dual_stack']} of the VMs dual stack, the rest IPv6 only).\n")
    print(f"Cold pass (`hvroute reconcile --json`, routes, neighbours and guards): {u['cold_wall_ms']:.0f} ms wall, "
          f"total_ms {u['cold_total_ms']:.0f}, {u['cold_ops']:,} ops.\n")
    if not u.get("guards"):
        print("This build writes no `bridge hvroute` table (no guards): no rule-update or load figures.\n")
    else:
        loads = u["nft_load_ms"]
        print("| measurement | n | median | p99 | range |")
        print("|---|---|---|---|---|")
        for name, xs in [("`vm add --replace` until the NIC's chain shows the new address", u["update_visible_ms"]),
                         ("`vm add --replace` until the command returned", u["update_cli_ms"]),
                         (f"cold `nft -f` of the dumped rules ({u['dump_lines']:,} lines)", loads)]:
            print(f"| {name} | {len(xs)} | {statistics.median(xs):.1f} ms | {pct(xs, 99):.1f} ms | {min(xs):.1f} to {max(xs):.1f} ms |")
        print(f"\nOne `nft list chain` at this size (the poll's resolution): {u['nft_list_ms']:.1f} ms median.\n")
t = res.get("throughput")
if t:
    print(f"**Throughput VM -> outside host**, iperf3, one TCP stream, {seconds} s per run, modes alternating, {rounds} rounds.\n")
    print("| destination | guards | runs | table present | port isolated | median | range | retransmits (median) |")
    print("|---|---|---|---|---|---|---|---|")
    med = {}
    for dst in sorted({x["dst"] for x in t}):
        for mode in ["on", "off"]:
            xs = [x for x in t if x["dst"] == dst and x["mode"] == mode]
            if not xs:
                continue
            g = [x["gbps"] for x in xs]
            med[(dst, mode)] = statistics.median(g)
            print(f"| {dst} | {mode} | {len(xs)} | {all(x['guards_table'] for x in xs)} | {all(x['isolated'] for x in xs)} | "
                  f"{statistics.median(g):.2f} Gbit/s | {min(g):.2f} to {max(g):.2f} | {statistics.median(x['retransmits'] for x in xs):.0f} |")
    for dst in sorted({d for d, _ in med}):
        if (dst, "on") in med and (dst, "off") in med:
            print(f"\n{dst}: guards on / off = {med[(dst, 'on')] / med[(dst, 'off')]:.2f}")
    if not any(x["mode"] == "off" for x in t):
        print("\nThis build refuses `[guard] enabled = false`: only the default configuration was measured (the baseline).")
PY
)"
printf '\n%s\n' "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-guard "$block"
fi
