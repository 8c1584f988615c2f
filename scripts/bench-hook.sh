#!/usr/bin/env bash
# The libvirt hook's latency: `hvroute hook qemu NAME started|release`, against the shell that
# CloudStack's modifymacip.sh runs for the same NIC, side by side in one run.
# Run `scripts/bench-hook.sh --help` for details.
set -euo pipefail

log_prefix="bench-hook"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-hook.sh [--sizes N,N,...] [--samples N] [--rev REV] [--write]
       scripts/bench-hook.sh --help

Builds hvroute (release) and, in a network namespace of its own with cloudbr0 up and N other
dual-stack VMs already in the state dir and the kernel (for each size N), times SAMPLES times:
  - `hvroute hook qemu vmX started begin -` with a domain XML on stdin (one NIC, one IPv4 and
    one IPv6 address in the metadata): it records the VM and programs its two routes and two
    permanent neighbours before it returns;
  - `hvroute hook qemu vmX release end -`: it removes the entry and withdraws them;
  - the shell equivalent that CloudStack's modifymacip.sh runs for the same NIC: for add,
    `ip neigh replace ... nud permanent` and `ip route replace ...` per address (4 forks);
    for delete, `ip neigh del` and `ip route del` per address.
Each is timed as a process from the harness (wall time, fork and exec included), inside the
namespace. Every size runs twice: without a daemon (the hook reads the state dir and programs
the kernel itself) and with `hvroute daemon` running (the hook hands started and release to
it, which holds every VM in memory). Percentiles are nearest-rank.

Options (defaults in brackets):
  --sizes N,...   VMs already on the host [10,100,1000]
  --samples N     samples of each operation at each size [200]
  --rev REV       build the committed revision REV (a clean export) [working tree]
  --write         also replace the generated block of docs/benchmarks.md (between
                  <!-- bench-hook:begin --> and <!-- bench-hook:end -->)

Needs root. Everything it makes (the namespace hvr-bhook-PID, a work dir in /tmp) is removed on
exit.
EOF
}

sizes="10,100,1000"
samples=200
rev=""
write=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --sizes)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "bench-hook: --sizes needs numbers like 10,100 (see --help)" >&2; exit 2; }
        sizes="$2"
        shift
        ;;
    --samples)
        [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || { echo "bench-hook: --samples needs a whole number of at least 1 (see --help)" >&2; exit 2; }
        samples="$2"
        shift
        ;;
    --rev)
        [[ $# -ge 2 && -n "$2" ]] || { echo "bench-hook: --rev needs a git revision (see --help)" >&2; exit 2; }
        rev="$2"
        shift
        ;;
    --write) write=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'bench-hook: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

need_root
ensure_packages
ensure_cargo
cd "$repo_root"

work="$(mktemp -d /tmp/hvroute-bench-hook.XXXXXX)"
ns="hvr-bhook-$$"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
build_hvroute "$work" "$rev" bench-hook

cat >"$work/bench.py" <<'PY'
"""Runs inside the namespace: loads N VMs, then times the hook and the shell."""
import json, os, subprocess, sys, time

hv, cfg, n, samples, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
state = os.path.join(os.path.dirname(cfg), "state")

def run(args, stdin=None):
    r = subprocess.run(args, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed: {r.stderr.decode().strip()}")

def timed(args, stdin=None):
    t = time.perf_counter()
    run(args, stdin)
    return (time.perf_counter() - t) * 1000

def addr(i):
    return f"2001:db8:110::{i // 65536:x}:{i % 65536:x}", f"2001:db8:120::{i // 65536:x}:{i % 65536:x}"

def mac(i):
    return "52:54:%02x:%02x:%02x:%02x" % (0x10 | (i >> 24 & 0xf), i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff)

# The load: N VMs in the state dir (files as `vm add` writes them) and in the kernel.
os.makedirs(state, exist_ok=True)
for i in range(n):
    a, b = addr(i)
    with open(os.path.join(state, f"load{i}.json"), "w") as f:
        json.dump({"version": 1, "name": f"load{i}", "nics": [{"mac": mac(i), "addresses": [a, b]}],
                   "source": "cli"}, f)
run([hv, "--config", cfg, "reconcile"])
daemon = None
if mode == "daemon":
    sock = os.path.join(os.path.dirname(cfg), "hvroute.sock")
    daemon = subprocess.Popen([hv, "--config", cfg, "daemon"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.time()
    while not os.path.exists(sock):
        if time.time() - t > 60 or daemon.poll() is not None:
            sys.exit("the daemon did not start")
        time.sleep(0.05)

def xml(name, m, a, b):
    return f"""<domain type='kvm'><name>{name}</name><metadata>
<hvroute:vm xmlns:hvroute="urn:hvroute:metadata:1"><hvroute:interface mac="{m}">
<hvroute:address>{a}</hvroute:address><hvroute:address>{b}</hvroute:address>
</hvroute:interface></hvroute:vm></metadata><devices><interface type='bridge'>
<mac address='{m}'/><source bridge='cloudbr0'/><target dev='vnet{name[2:]}'/></interface></devices></domain>""".encode()

res = {"hook_started": [], "hook_release": [], "shell_add": [], "shell_delete": []}
# The hook's samples first, then the shell's: the shell's routes are foreign to hvroute, and
# a running daemon answers each with a pass, which would sit in the hook's way.
for s in range(samples):
    i = 0x100000 + s
    a, b = addr(i)
    name = f"vm{s}"
    doc = xml(name, mac(i), a, b)
    res["hook_started"].append(timed([hv, "--config", cfg, "hook", "qemu", name, "started", "begin", "-"], doc))
    res["hook_release"].append(timed([hv, "--config", cfg, "hook", "qemu", name, "release", "end", "-"], doc))
for s in range(samples):
    m = mac(0x200000 + s)
    a, b = addr(0x200000 + s)
    add = ["sh", "-c", f"ip neigh replace {a} lladdr {m} dev cloudbr0 nud permanent && ip route replace {a}/128 dev cloudbr0 "
           f"&& ip neigh replace {b} lladdr {m} dev cloudbr0 nud permanent && ip route replace {b}/128 dev cloudbr0"]
    dele = ["sh", "-c", f"ip neigh del {a} dev cloudbr0 && ip route del {a}/128 dev cloudbr0 "
            f"&& ip neigh del {b} dev cloudbr0 && ip route del {b}/128 dev cloudbr0"]
    res["shell_add"].append(timed(add))
    res["shell_delete"].append(timed(dele))
if daemon:
    daemon.terminate()
    daemon.wait(timeout=30)
print(json.dumps({"vms": n, "mode": mode, **res}))
PY

results="$work/results.jsonl"
IFS=, read -r -a size_list <<<"$sizes"
for run in "${size_list[@]/%/:none}" "${size_list[@]/%/:daemon}"; do
    n="${run%%:*}" mode="${run##*:}"
    log "$n VMs on the host, daemon: $mode: $samples samples of each operation"
    ip netns del "$ns" 2>/dev/null || true
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    rm -rf "$work/host" && mkdir -p "$work/host"
    printf '6e2f0c1a-0000-4000-8000-%012x\n' "$$" >"$work/host/boot_id"
    cat >"$work/host/hvroute.toml" <<EOF
state_dir = "$work/host/state"
socket = "$work/host/hvroute.sock"
boot_id_path = "$work/host/boot_id"
[pools]
ipv6 = ["2001:db8:100::/40"]
[bgp]
asn = 65001
router_id = "10.255.0.1"
[frr]
enabled = false
EOF
    ip netns exec "$ns" python3 "$work/bench.py" "$built_bin" "$work/host/hvroute.toml" "$n" "$samples" "$mode" >>"$results" \
        || die "the run at $n VMs failed"
done

block="$(python3 - "$results" "$build_label" "$samples" "$(cut -d' ' -f1-3 /proc/loadavg)" "$sizes" <<'PY'
import json, math, statistics, sys
path, label, samples, load, sizes = sys.argv[1:6]
def pct(xs, p):
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]
rows = [json.loads(l) for l in open(path)]
print(f"Run of hvroute {label}: {samples} samples of each operation at each size, load average {load} at the end; "
      f"2 cores, shared. Command: `scripts/bench-hook.sh --sizes {sizes} --samples {samples}`.\n")
print("| VMs on the host | daemon | operation | p50 | p99 | the shell's p50 | the shell's p99 | hook / shell (p50) |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    for op, sh, what in [("hook_started", "shell_add", "`started` (record + 2 routes + 2 neighbours)"),
                         ("hook_release", "shell_delete", "`release` (remove + withdraw)")]:
        h, s = r[op], r[sh]
        print(f"| {r['vms']:,} | {'running' if r['mode'] == 'daemon' else 'none'} | {what} | {pct(h, 50):.1f} ms | {pct(h, 99):.1f} ms | {pct(s, 50):.1f} ms | "
              f"{pct(s, 99):.1f} ms | {pct(h, 50) / pct(s, 50):.1f}x |")
PY
)"
printf '\n%s\n' "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-hook "$block"
fi
