#!/usr/bin/env bash
# A spine running FRR, two hypervisors running FRR and hvroute, three VMs and an outside host,
# all in network namespaces. Run `scripts/lab.sh --help` for the picture and the commands.
#
# The lab's nodes, links, addresses, ASNs and VMs come from one file,
# tests/topologies/lab.clab.yml, in containerlab's topology format: `up` makes one namespace
# per node and one veth per link, and configures them from the nodes' HVR_* facts. The same
# file deploys with containerlab (docs/containerlab.md). examples/lab-topology.rs, which uses
# the tests' parser (tests/common/topology.rs), turns the file into the bash tables below.
# shellcheck disable=SC2154  # the topology's tables are set by apply_topology's eval
set -euo pipefail

log_prefix=lab
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------------------------
# Where the lab lives. A test runs its own lab beside an admin's with its own prefix and run
# directory. Test traffic stays inside these namespaces and the file's documentation prefixes
# (RFC 5737, RFC 3849), link-local addresses and 10.255.0.0/16 link nets.

readonly ns_prefix="${HVROUTE_LAB_PREFIX:-hvr-lab-}"
readonly run_dir="${HVROUTE_LAB_RUN_DIR:-/run/hvroute-lab}"
readonly topology_file="${HVROUTE_LAB_TOPOLOGY:-$repo_root/tests/topologies/lab.clab.yml}"
readonly topology_bin="${HVROUTE_LAB_TOPOLOGY_BIN:-$repo_root/target/release/examples/lab-topology}"
# The tables `up` read from the topology file, kept for `status`.
readonly topology_saved="$run_dir/topology.sh"

if [[ ! "$ns_prefix" =~ ^[a-z0-9][a-z0-9-]{0,19}$ ]]; then
    printf 'lab: HVROUTE_LAB_PREFIX=%q is not a short lowercase name (a-z, 0-9, -)\n' "$ns_prefix" >&2
    exit 2
fi
if [[ "$run_dir" != /* || "$run_dir" == / ]]; then
    printf 'lab: HVROUTE_LAB_RUN_DIR=%q is not an absolute directory below /\n' "$run_dir" >&2
    exit 2
fi

readonly bridge=cloudbr0
readonly bridge_mac=0e:00:00:00:00:01
readonly route_protocol=44

readonly pool4=192.0.2.0/24
readonly pool6=2001:db8:100::/40

# FRR: one instance per namespace, told apart by its pathspace (`-N`), which is the name of the
# namespace. Its files live in /etc/frr/<pathspace> and /var/run/frr/<pathspace>.
readonly frr_libexec=/usr/lib/frr
readonly frr_etc=/etc/frr
readonly frr_run=/var/run/frr
readonly frr_daemons=(zebra bgpd)

# How long to wait for things that happen asynchronously.
readonly frr_start_timeout_s=10
readonly bridge_timeout_s=10
readonly bgp_timeout_s=60
readonly converge_timeout_s=30
readonly ping_timeout_s=10
readonly stop_timeout_s=5
# One attempt of a path check: three echo replies within 3 s. Three, not one, so that a path
# that works only for the first packet (say, until an ICMP redirect sends the guest elsewhere)
# fails. Each check retries attempts for up to ping_timeout_s.
readonly ping_opts="-c3 -i0.2 -w3"

hvroute_bin="${HVROUTE_BIN:-$repo_root/target/release/hvroute}"

# ---------------------------------------------------------------------------------------------
# The topology. apply_topology DECLARATIONS: evaluates lab-topology's bash tables:
#   topo_nodes, topo_links ("a:if b:if")        every node and veth of the file
#   spine_node spine_asn spine_router_id extra4 extra6 spine_routes
#   out_node spine_out_if spine_out_addrs out_if out_link_addrs out_loopback out_addr4
#   out_addr6 out_routes                         the outside host and its link
#   hvs; hv_asn hv_router_id hv_uplink spine_hv_if hv_uplink_addrs spine_hv_addrs hv_link4
#   spine_link4 (per hypervisor; the last four empty when it peers unnumbered)
#   vms; vm_hv vm_port vm_if vm_mac vm_ip4 vm_ip6 (per VM; an empty address: no such family)
# and sets the names derived from them.
apply_topology() {
    eval "$1"
    ns_spine="$(node_ns "$spine_node")"
    ns_out="$(node_ns "$out_node")"
    spine_ps="$ns_spine"
}

# read_topology: the file's tables, from lab-topology (which `up` builds). Exits 2 on a bad file.
read_topology() {
    [[ -x "$topology_bin" ]] || die "no $topology_bin; 'scripts/lab.sh up' builds it (cargo build --release --example lab-topology)."
    local out
    out="$("$topology_bin" bash "$topology_file")" || exit 2
    printf '%s\n' "$out"
}

# load_saved_topology: the tables of the lab that `up` started; false if there is none.
load_saved_topology() {
    [[ -r "$topology_saved" ]] || return 1
    apply_topology "$(cat "$topology_saved")"
}

node_ns() { echo "${ns_prefix}$1"; }
hv_ns() { node_ns "$1"; }
vm_ns() { node_ns "$1"; }
hv_dir() { echo "$run_dir/$1"; }
hv_conf() { echo "$run_dir/$1/hvroute.toml"; }
hv_pid_file() { echo "$run_dir/$1/daemon.pid"; }
hv_log_file() { echo "$run_dir/$1/daemon.log"; }
# The pathspace of a hypervisor's or the spine's FRR: the name of its namespace.
hv_ps() { hv_ns "$1"; }
all_ps() {
    local hv
    echo "$spine_ps"
    for hv in "${hvs[@]}"; do hv_ps "$hv"; done
}

# The spine's BGP neighbour for a hypervisor: its interface (unnumbered) or its address.
spine_neighbor() {
    if [[ -n "${hv_link4[$1]}" ]]; then echo "${hv_link4[$1]}"; else echo "${spine_hv_if[$1]}"; fi
}
# The hypervisor's BGP neighbour (its `[[bgp.peer]]`): the uplink (unnumbered) or the spine's address.
hv_neighbor() {
    if [[ -n "${spine_link4[$1]}" ]]; then echo "${spine_link4[$1]}"; else echo "${hv_uplink[$1]}"; fi
}
hv_peering() {
    if [[ -n "${hv_link4[$1]}" ]]; then echo numbered; else echo unnumbered; fi
}

# hv_vms HV: the VMs on HV.
hv_vms() {
    local vm
    for vm in "${vms[@]}"; do
        [[ "${vm_hv[$vm]}" == "$1" ]] && echo "$vm"
    done
    return 0
}

# vm_prefixes [VM...]: the /32 and /128 prefixes of the VMs (all VMs without arguments), sorted.
vm_prefixes() {
    local vm
    local -a list=("$@")
    [[ ${#list[@]} -gt 0 ]] || list=("${vms[@]}")
    for vm in "${list[@]}"; do
        if [[ -n "${vm_ip4[$vm]}" ]]; then echo "${vm_ip4[$vm]}/32"; fi
        if [[ -n "${vm_ip6[$vm]}" ]]; then echo "${vm_ip6[$vm]}/128"; fi
    done | sort
}

# hv_vm_prefixes HV: the prefixes of the VMs on HV, sorted.
hv_vm_prefixes() {
    local -a list
    mapfile -t list < <(hv_vms "$1")
    vm_prefixes "${list[@]}"
}

# The picture shows tests/topologies/lab.clab.yml as it is; tests/netns_topology.rs checks that
# every address, MAC and ASN in the file appears here.
usage() {
    cat <<EOF
Usage: scripts/lab.sh up|down|status
       scripts/lab.sh --help

A lab for hvroute in network namespaces: a spine running FRR, two hypervisors each running
FRR and 'hvroute daemon', three VMs and an outside host. No traffic leaves this machine.
Every node, link, address and ASN comes from ${topology_file#"$repo_root"/}
(containerlab's topology format; the same file deploys with containerlab, see
docs/containerlab.md). One namespace per node, named ${ns_prefix}NODE.

  ${ns_prefix}out (outside host)
    lo   203.0.113.10/32, 2001:db8:ffff::10/128
    eth1 10.255.0.1/31, 2001:db8:ffff:1::2/64; default routes via the spine
     │
    out0 10.255.0.0/31, 2001:db8:ffff:1::1/64
  ${ns_prefix}spine (FRR, AS 65000, router id 10.255.255.254)
    static routes to the outside host; blackholes 198.51.100.0/24 and 2001:db8:eeee::/48
    announces to each hypervisor 0.0.0.0/0 and ::/0 (default-originate), and the extra
    198.51.100.0/24 and 2001:db8:eeee::/48, which the hypervisors must refuse
    hv1 (link-local only)                     hv2 10.255.2.0/31
     │ BGP unnumbered, IPv4 routes              │ BGP numbered
     │ over IPv6 next hops (RFC 8950)           │
    uplink0 (link-local only)                 uplink0 10.255.2.1/31
  ${ns_prefix}hv1 (FRR AS 65001, hvroute)       ${ns_prefix}hv2 (FRR AS 65002, hvroute)
    router id 10.255.255.1                    router id 10.255.255.2
    ${bridge} 169.254.0.1/32, fe80::1/64       ${bridge} 169.254.0.1/32, fe80::1/64
     ├── vm1p ── ${ns_prefix}vm1 (dual stack)      └── vm3p ── ${ns_prefix}vm3 (dual stack)
     └── vm2p ── ${ns_prefix}vm2 (IPv6 only)

  vm1  52:54:00:00:00:01  192.0.2.10/32  2001:db8:100::10/128
  vm2  52:54:00:00:00:02  2001:db8:100::20/128
  vm3  52:54:00:00:00:03  192.0.2.30/32  2001:db8:100::30/128

Each VM is set up the way its ConfigDrive sets up a guest: its /32 and /128 on eth1,
"default via 169.254.0.1 dev eth1 onlink" (only with IPv4), "::/0 via fe80::1 dev eth1",
accept_ra=0. On each hypervisor, hvroute makes ${bridge} (MAC ${bridge_mac}, the same on both),
routes each VM address as a /32 or /128 onto it with a permanent neighbour entry (both with
route protocol ${route_protocol}), and tells that hypervisor's FRR to announce exactly those
prefixes. The hypervisors' FRR starts with an empty config: hvroute pushes its own (peer-group
HVR-UPLINK, route-maps HVR-IN/HVR-OUT/HVR-VM, the 'network' lines) over vtysh, from
'[[bgp.peer]]' in its hvroute.toml, and saves it with 'write memory'. There are no static
routes to the pools anywhere: the spine learns the VMs over BGP, and the hypervisors and the
outside host reach everything else through the spine's default routes. vm1 and vm3 talk to
each other through the spine.

Commands:
  up      Build hvroute and the topology reader (cargo build --release --bin hvroute
          --example lab-topology), read the topology file, create one namespace per node
          and one veth per link, start FRR (zebra and bgpd) on the spine and on both
          hypervisors, write an hvroute.toml per hypervisor, register the VMs with
          'hvroute vm add ... --port vmNp', start one 'hvroute daemon' per hypervisor, plug
          the VM ports into ${bridge} once it exists, then check and print:
            - every BGP session Established (both address families);
            - the spine's BGP table and kernel hold exactly the VM prefixes (compared as sets);
            - each hypervisor's BGP table holds the spine's defaults and nothing else it
              learned, although the spine offered it the extra prefixes too;
            - a table of pings over every path, both families.
          Exits non-zero if any check fails (the lab is left up so you can look). Running 'up'
          on a lab that is fully up does nothing; on a partial one it refuses (run 'down').
  down    Stop the hvroute daemons (by their recorded PIDs: TERM, then KILL after ${stop_timeout_s}s), stop
          the lab's FRR daemons (by the PIDs in their pid files), delete the ${ns_prefix}*
          namespaces, /etc/frr/${ns_prefix}*, /var/run/frr/${ns_prefix}* and ${run_dir}.
          Safe to run any number of times.
  status  Show the namespaces, FRR's daemons and 'show bgp summary' per FRR, each hvroute
          daemon and its 'hvroute status', and the spine's BGP routes in the kernel. Exits 0
          only if the lab is fully up.

FRR pathspaces (vtysh -N ...): the namespaces' names, ${ns_prefix}spine ${ns_prefix}hv1 ${ns_prefix}hv2
Files in ${run_dir}/hv1 and hv2: hvroute.toml (config), state/ (desired state),
hvroute.sock, daemon.pid, daemon.log; ${run_dir}/topology.sh: the tables 'up' read.

Environment:
  HVROUTE_BIN=PATH           use this hvroute binary and skip building it
  HVROUTE_LAB_TOPOLOGY_BIN=PATH
                             with HVROUTE_BIN: use this topology reader (examples/
                             lab-topology.rs) too, and build nothing
  HVROUTE_LAB_PREFIX=NAME    namespace and FRR pathspace prefix (default hvr-lab-)
  HVROUTE_LAB_RUN_DIR=DIR    configs, logs, PIDs (default /run/hvroute-lab)
  HVROUTE_LAB_TOPOLOGY=FILE  another topology file of the same shape (default
                             tests/topologies/lab.clab.yml)
  RUST_LOG=FILTER            the daemons' log filter (default: info); the logs have no colours (NO_COLOR=1)

Things to try once the lab is up:
  vtysh -N ${ns_prefix}spine -c 'show bgp summary'
  vtysh -N ${ns_prefix}spine -c 'show bgp ipv4 unicast'            # vm1 via fe80::... (hv1, unnumbered)
  vtysh -N ${ns_prefix}spine -c 'show bgp ipv4 unicast neighbors hv1 advertised-routes'
  vtysh -N ${ns_prefix}hv1 -c 'show running-config'             # what hvroute pushed
  vtysh -N ${ns_prefix}hv1 -c 'show bgp ipv4 unicast'           # 0.0.0.0/0 only, no 198.51.100.0/24
  ip -n ${ns_prefix}spine route show proto bgp                     # IPv4 via inet6 fe80::... (RFC 8950)
  ip netns exec ${ns_prefix}hv1 ${hvroute_bin} --config ${run_dir}/hv1/hvroute.toml status
  ip netns exec ${ns_prefix}vm1 ping 192.0.2.30                     # across hypervisors
  ip netns exec ${ns_prefix}out ping -I 2001:db8:ffff::10 2001:db8:100::20
  tail -f ${run_dir}/hv1/daemon.log
EOF
}

# ---------------------------------------------------------------------------------------------
# Small helpers.

# lab_namespaces: the namespaces with the lab's prefix that exist now, one per line.
lab_namespaces() {
    ip netns list 2>/dev/null | awk -v p="$ns_prefix" 'index($1, p) == 1 {print $1}'
}

ns_exists() {
    lab_namespaces | grep -qx -- "$1"
}

# all_namespaces: every namespace the lab makes, one per node of the topology file.
all_namespaces() {
    local x
    for x in "${topo_nodes[@]}"; do node_ns "$x"; done
}

# in_ns NS CMD...: run CMD inside namespace NS.
in_ns() {
    local ns="$1"
    shift
    ip netns exec "$ns" "$@"
}

# hvroute HV CMD...: run the hvroute CLI against HV's config, inside HV's namespace.
hvroute() {
    local hv="$1"
    shift
    in_ns "$(hv_ns "$hv")" "$hvroute_bin" --config "$(hv_conf "$hv")" "$@"
}

# vtysh_ps PS ARGS...: vtysh against the FRR with pathspace PS.
vtysh_ps() {
    local ps="$1"
    shift
    vtysh -N "$ps" "$@"
}

# indent: prefix every line of stdin with four spaces.
indent() { sed 's/^/    /'; }

# pid_alive PID: true if PID is a live process (a zombie counts as dead).
pid_alive() {
    local pid="$1" state
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/stat" ]] || return 1
    # The state is the first field after the ")" that closes the command name.
    state="$(sed -E 's/^.*\) ([A-Za-z]).*$/\1/' "/proc/$pid/stat" 2>/dev/null)" || return 1
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

pid_gone() { ! pid_alive "$1"; }

# pid_args PID: the process's arguments, one per line.
pid_args() {
    tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null
}

# pid_is_lab_daemon PID: true if PID is alive and is an "hvroute ... daemon" process.
pid_is_lab_daemon() {
    local pid="$1" cmdline
    pid_alive "$pid" || return 1
    cmdline="$(pid_args "$pid" | tr '\n' ' ')" || return 1
    [[ "$cmdline" == *hvroute* && "$cmdline" == *daemon* ]]
}

# pid_is_frr PID DAEMON PS: true if PID is alive and is FRR's DAEMON started with "-N PS".
pid_is_frr() {
    local pid="$1" daemon="$2" ps="$3"
    local -a args
    pid_alive "$pid" || return 1
    mapfile -t args < <(pid_args "$pid")
    [[ ${#args[@]} -gt 0 && "$(basename -- "${args[0]}")" == "$daemon" ]] || return 1
    local i
    for ((i = 1; i < ${#args[@]}; i++)); do
        [[ "${args[i - 1]}" == -N && "${args[i]}" == "$ps" ]] && return 0
    done
    return 1
}

# read_pid FILE: the PID in FILE, or nothing.
read_pid() {
    if [[ -r "$1" ]]; then
        tr -dc '0-9' <"$1"
    fi
}

# recorded_pid HV: the daemon PID recorded by `up` for HV, or nothing.
recorded_pid() { read_pid "$(hv_pid_file "$1")"; }

daemon_running() {
    local pid
    pid="$(recorded_pid "$1")"
    [[ -n "$pid" ]] && pid_is_lab_daemon "$pid"
}

# frr_pid PS DAEMON: the PID in DAEMON's pid file of pathspace PS, or nothing.
frr_pid() { read_pid "$frr_run/$1/$2.pid"; }

frr_daemon_running() {
    local pid
    pid="$(frr_pid "$1" "$2")"
    [[ -n "$pid" ]] && pid_is_frr "$pid" "$2" "$1"
}

bridge_is_up() {
    [[ -n "$(ip -n "$(hv_ns "$1")" -o link show dev "$bridge" up 2>/dev/null)" ]]
}

bridge_up_or_daemon_gone() {
    bridge_is_up "$1" || ! daemon_running "$1"
}

print_daemon_log_tail() {
    local hv="$1" n="${2:-40}" file
    file="$(hv_log_file "$hv")"
    if [[ -s "$file" ]]; then
        log "last $n lines of $file:"
        tail -n "$n" "$file" | indent
    else
        log "the $hv daemon log $file is empty or missing."
    fi
}

print_all_daemon_logs() {
    local hv
    for hv in "${hvs[@]}"; do print_daemon_log_tail "$hv" "${1:-40}"; done
}

# ---------------------------------------------------------------------------------------------
# BGP read-outs, from FRR's JSON. One small Python program, several modes; it reads the JSON on
# stdin and prints one fact per line.
#   sessions    (show bgp summary json)           "FAMILY PEER STATE"
#   routes      (show bgp AFI unicast json)       "local PREFIX" or "learned PREFIX"
#   advertised  (show bgp ... advertised-routes json)   "PREFIX"

readonly bgp_json_py='
import json, sys
mode = sys.argv[1]
text = sys.stdin.read()
data = json.loads(text) if text.strip() else {}
if mode == "sessions":
    for key, fam in (("ipv4Unicast", "ipv4"), ("ipv6Unicast", "ipv6")):
        for name, p in sorted(((data.get(key) or {}).get("peers") or {}).items()):
            print(fam, name, p.get("state", "?"))
elif mode == "routes":
    for prefix, paths in sorted((data.get("routes") or {}).items()):
        local = any(p.get("peerId") == "(unspec)" for p in paths)
        print("local" if local else "learned", prefix)
elif mode == "advertised":
    for prefix in sorted(data.get("advertisedRoutes") or {}):
        print(prefix)
'

# bgp_facts PS MODE VTYSH-COMMAND: run a JSON show command and extract facts with MODE.
bgp_facts() {
    local ps="$1" mode="$2" cmd="$3" out
    out="$(vtysh_ps "$ps" -c "$cmd" 2>/dev/null)" || return 1
    python3 -c "$bgp_json_py" "$mode" <<<"$out"
}

# bgp_routes PS WHICH: the prefixes of both families in PS's BGP table that are WHICH
# (local or learned), sorted.
bgp_routes() {
    local ps="$1" which="$2" afi
    for afi in ipv4 ipv6; do
        bgp_facts "$ps" routes "show bgp $afi unicast json" || return 1
    done | awk -v w="$which" '$1 == w {print $2}' | sort
}

# bgp_advertised PS NEIGHBOR: what PS advertises to NEIGHBOR, both families, sorted.
bgp_advertised() {
    local ps="$1" nb="$2" afi
    for afi in ipv4 ipv6; do
        bgp_facts "$ps" advertised "show bgp $afi unicast neighbors $nb advertised-routes json" || return 1
    done | sort
}

# kernel_bgp_routes NS: the kernel's routes with protocol bgp in NS, both families, as prefixes.
kernel_bgp_routes() {
    local ns="$1"
    {
        ip -n "$ns" -4 route show proto bgp | awk '{p = $1; if (p == "default") p = "0.0.0.0/0"; else if (p !~ /\//) p = p "/32"; print p}'
        ip -n "$ns" -6 route show proto bgp | awk '{p = $1; if (p == "default") p = "::/0"; else if (p !~ /\//) p = p "/128"; print p}'
    } | sort
}

# session_states PS: "FAMILY PEER STATE" per session.
session_states() { bgp_facts "$1" sessions "show bgp summary json"; }

# sessions_established PS PEER...: every PEER is Established in both families, in PS.
sessions_established() {
    local ps="$1" peer fam states
    shift
    states="$(session_states "$ps")" || return 1
    for peer in "$@"; do
        for fam in ipv4 ipv6; do
            if ! grep -qx -- "$fam $peer Established" <<<"$states"; then
                echo "$ps: $fam session with $peer is not Established:"
                echo "$states"
                return 1
            fi
        done
    done
}

# all_expected_sessions: every session the lab must have, one per line: "PATHSPACE PEER".
all_expected_sessions() {
    local hv
    for hv in "${hvs[@]}"; do
        echo "$spine_ps $(spine_neighbor "$hv")"
        echo "$(hv_ps "$hv") $(hv_neighbor "$hv")"
    done
}

all_sessions_established() {
    local ps peer
    while read -r ps peer; do
        sessions_established "$ps" "$peer" || return 1
    done < <(all_expected_sessions)
}

# same_set LABEL WANT HAVE: compare two newline-separated sets; silent and 0 if equal, else
# prints what is missing and what is unexpected and returns 1.
same_set() {
    local label="$1" want="$2" have="$3" missing extra
    missing="$(comm -23 <(sort -u <<<"$want" | sed '/^$/d') <(sort -u <<<"$have" | sed '/^$/d'))"
    extra="$(comm -13 <(sort -u <<<"$want" | sed '/^$/d') <(sort -u <<<"$have" | sed '/^$/d'))"
    if [[ -z "$missing" && -z "$extra" ]]; then
        return 0
    fi
    echo "$label differs:"
    [[ -n "$missing" ]] && echo "  missing:    $(tr '\n' ' ' <<<"$missing")"
    [[ -n "$extra" ]] && echo "  unexpected: $(tr '\n' ' ' <<<"$extra")"
    return 1
}

# The facts `up` checks, each usable with wait_until (quiet on success, explains on failure).

spine_holds_exactly_vm_prefixes() {
    local want have rc=0
    want="$(vm_prefixes)"
    have="$(bgp_routes "$spine_ps" learned)" || return 1
    same_set "$spine_ps BGP table (learned routes)" "$want" "$have" || rc=1
    have="$(kernel_bgp_routes "$ns_spine")"
    same_set "$ns_spine kernel routes with protocol bgp" "$want" "$have" || rc=1
    return $rc
}

spine_offers_extra() {
    local hv="$1" have
    have="$(bgp_advertised "$spine_ps" "$(spine_neighbor "$hv")")" || return 1
    if ! grep -qx -- "$extra4" <<<"$have" || ! grep -qx -- "$extra6" <<<"$have"; then
        echo "$spine_ps does not advertise $extra4 and $extra6 to $hv; it advertises: $(tr '\n' ' ' <<<"$have")"
        return 1
    fi
}

hv_learned_only_defaults() {
    local hv="$1" ps ns have rc=0
    ps="$(hv_ps "$hv")"
    ns="$(hv_ns "$hv")"
    have="$(bgp_routes "$ps" learned)" || return 1
    same_set "$ps BGP table (learned routes)" "$(printf '0.0.0.0/0\n::/0\n')" "$have" || rc=1
    have="$(kernel_bgp_routes "$ns")"
    same_set "$ns kernel routes with protocol bgp" "$(printf '0.0.0.0/0\n::/0\n')" "$have" || rc=1
    if [[ -n "$(ip -n "$ns" route show "$extra4")$(ip -n "$ns" -6 route show "$extra6")" ]]; then
        echo "$ns has a kernel route for $extra4 or $extra6."
        rc=1
    fi
    return $rc
}

hv_announces_its_vm_prefixes() {
    local hv="$1"
    same_set "$(hv_ps "$hv") BGP table (local routes)" \
        "$(hv_vm_prefixes "$hv")" "$(bgp_routes "$(hv_ps "$hv")" local)"
}

# print_sessions: a table of every expected session and its state per family.
print_sessions() {
    local ps peer states s4 s6 hv what
    printf '    %-16s %-14s %-24s %-12s %-12s\n' FRR PEER WHAT IPV4 IPV6
    while read -r ps peer; do
        states="$(session_states "$ps" 2>/dev/null)" || states=""
        s4="$(awk -v p="$peer" '$1 == "ipv4" && $2 == p {print $3}' <<<"$states")"
        s6="$(awk -v p="$peer" '$1 == "ipv6" && $2 == p {print $3}' <<<"$states")"
        what=""
        for hv in "${hvs[@]}"; do
            if [[ "$ps" == "$spine_ps" && "$peer" == "$(spine_neighbor "$hv")" ]]; then
                what="$hv, $(hv_peering "$hv")"
            elif [[ "$ps" == "$(hv_ps "$hv")" ]]; then
                what="spine, $(hv_peering "$hv")"
            fi
        done
        printf '    %-16s %-14s %-24s %-12s %-12s\n' "$ps" "$peer" "$what" "${s4:-none}" "${s6:-none}"
    done < <(all_expected_sessions)
}

# ---------------------------------------------------------------------------------------------
# up: namespaces and links

create_namespaces() {
    local ns
    for ns in $(all_namespaces); do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # No duplicate address detection: addresses (link-local ones included) are usable at
        # once. Set before any link exists here, so every link inherits it.
        in_ns "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
    done
}

# create_links: one veth per link of the topology file, "a:if b:if", each end in its node's
# namespace. Down until configured below.
create_links() {
    local link a b
    for link in "${topo_links[@]}"; do
        read -r a b <<<"$link"
        ip -n "$(node_ns "${a%%:*}")" link add "${a#*:}" type veth peer name "${b#*:}" netns "$(node_ns "${b%%:*}")"
    done
}

# add_addrs NS IF ADDR/LEN...: the addresses on IF (IPv6 without duplicate address detection).
add_addrs() {
    local ns="$1" dev="$2" a
    shift 2
    for a in "$@"; do
        if [[ "$a" == *:* ]]; then
            ip -n "$ns" -6 addr add "$a" dev "$dev" nodad
        else
            ip -n "$ns" addr add "$a" dev "$dev"
        fi
    done
}

# add_routes NS ROUTE...: `ip route add ROUTE` for each (the family follows the prefix).
add_routes() {
    local ns="$1" r
    shift
    for r in "$@"; do
        # shellcheck disable=SC2086  # a route is a word list by design
        ip -n "$ns" route add $r
    done
}

setup_spine_and_out() {
    in_ns "$ns_spine" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

    # shellcheck disable=SC2086  # address lists
    add_addrs "$ns_spine" "$spine_out_if" $spine_out_addrs
    ip -n "$ns_spine" link set "$spine_out_if" up
    # The file's static routes: to the outside host (which is not announced: the hypervisors
    # reach it through the default routes), and blackholes for the extra prefixes, which exist
    # on the spine only so that its 'network' lines pass import-check.
    add_routes "$ns_spine" "${spine_routes[@]}"

    # shellcheck disable=SC2086  # address lists
    add_addrs "$ns_out" lo $out_loopback
    # shellcheck disable=SC2086  # address lists
    add_addrs "$ns_out" "$out_if" $out_link_addrs
    ip -n "$ns_out" link set "$out_if" up
    add_routes "$ns_out" "${out_routes[@]}"
}

# setup_uplink HV: the veth hvN:uplink0 <-> spine:hvN. Link-local addresses come from the
# kernel; a numbered hypervisor gets the file's addresses on top.
setup_uplink() {
    local hv="$1" ns up sp
    ns="$(hv_ns "$hv")"
    up="${hv_uplink[$hv]}"
    sp="${spine_hv_if[$hv]}"
    # shellcheck disable=SC2086  # address lists
    add_addrs "$ns" "$up" ${hv_uplink_addrs[$hv]}
    # shellcheck disable=SC2086  # address lists
    add_addrs "$ns_spine" "$sp" ${spine_hv_addrs[$hv]}
    ip -n "$ns" link set "$up" up
    ip -n "$ns_spine" link set "$sp" up
}

# setup_vm NAME: the guest side, configured as its ConfigDrive would. The host side (its port)
# stays down and unplugged until the daemon has made the bridge.
setup_vm() {
    local vm="$1" ns dev
    ns="$(vm_ns "$vm")"
    dev="${vm_if[$vm]}"
    ip -n "$ns" link set "$dev" address "${vm_mac[$vm]}"
    in_ns "$ns" sysctl -qw "net.ipv6.conf.$dev.accept_ra=0"
    ip -n "$ns" link set "$dev" up
    if [[ -n "${vm_ip4[$vm]}" ]]; then
        ip -n "$ns" addr add "${vm_ip4[$vm]}/32" dev "$dev"
        ip -n "$ns" route add default via 169.254.0.1 dev "$dev" onlink
    fi
    if [[ -n "${vm_ip6[$vm]}" ]]; then
        ip -n "$ns" -6 addr add "${vm_ip6[$vm]}/128" dev "$dev" nodad
        ip -n "$ns" -6 route add default via fe80::1 dev "$dev"
    fi
}

# ---------------------------------------------------------------------------------------------
# up: FRR

spine_frr_conf() {
    local hv nb
    cat <<EOF
! The lab's spine (scripts/lab.sh). Removed by 'scripts/lab.sh down'.
frr defaults datacenter
log syslog informational
ip forwarding
ipv6 forwarding
!
router bgp $spine_asn
 bgp router-id $spine_router_id
 ! Take whatever the hypervisors send, so that anything hvroute leaks beyond its VM
 ! prefixes shows up here.
 no bgp ebgp-requires-policy
EOF
    for hv in "${hvs[@]}"; do
        nb="$(spine_neighbor "$hv")"
        if [[ -n "${hv_link4[$hv]}" ]]; then
            echo " neighbor $nb remote-as ${hv_asn[$hv]}"
        else
            echo " neighbor $nb interface remote-as external"
        fi
    done
    local afi extra
    for afi in ipv4 ipv6; do
        if [[ "$afi" == ipv4 ]]; then extra="$extra4"; else extra="$extra6"; fi
        echo " !"
        echo " address-family $afi unicast"
        echo "  network $extra"
        for hv in "${hvs[@]}"; do
            nb="$(spine_neighbor "$hv")"
            echo "  neighbor $nb activate"
            echo "  neighbor $nb default-originate"
            echo "  neighbor $nb route-map LAB-TO-HV out"
        done
        echo " exit-address-family"
    done
    cat <<EOF
exit
!
! To the hypervisors: the defaults (default-originate) and the extra prefixes, nothing else.
ip prefix-list LAB-TO-HV-V4 seq 5 permit 0.0.0.0/0
ip prefix-list LAB-TO-HV-V4 seq 10 permit $extra4
ipv6 prefix-list LAB-TO-HV-V6 seq 5 permit ::/0
ipv6 prefix-list LAB-TO-HV-V6 seq 10 permit $extra6
!
route-map LAB-TO-HV permit 10
 match ip address prefix-list LAB-TO-HV-V4
exit
!
route-map LAB-TO-HV permit 20
 match ipv6 address prefix-list LAB-TO-HV-V6
exit
!
route-map LAB-TO-HV deny 100
exit
!
EOF
}

# start_frr NS PS CONFIG: FRR's zebra and bgpd in NS with pathspace PS, then CONFIG loaded with
# `vtysh -b` (as FRR's own start-up does).
start_frr() {
    local ns="$1" ps="$2" conf="$3"
    local etc="$frr_etc/$ps" run="$frr_run/$ps" d out
    mkdir -p "$etc" "$run"
    printf '%s\n' "$conf" >"$etc/frr.conf"
    touch "$etc/vtysh.conf"
    chown frr:frr "$etc" "$run" "$etc/frr.conf" "$etc/vtysh.conf"
    # What the daemons print while they start (zebra: "Disabling MPLS support") goes to a file.
    local start_log="$run_dir/frr-$ps.log"
    for d in "${frr_daemons[@]}"; do
        if ! in_ns "$ns" "$frr_libexec/$d" -d -N "$ps" -F datacenter -P 0 -i "$run/$d.pid" \
            </dev/null >>"$start_log" 2>&1; then
            indent <"$start_log"
            die "$d -N $ps did not start in $ns (output above, in $start_log)."
        fi
        if ! wait_until "$frr_start_timeout_s" "$d -N $ps to answer on $run/$d.vty" test -S "$run/$d.vty"; then
            indent <"$start_log"
            die "$d -N $ps does not answer."
        fi
    done
    log "$ps: zebra PID $(frr_pid "$ps" zebra), bgpd PID $(frr_pid "$ps" bgpd), config $etc/frr.conf"
    if ! out="$(vtysh_ps "$ps" -b 2>&1)"; then
        log "vtysh -N $ps -b (loading $etc/frr.conf) failed:"
        indent <<<"$out"
        exit 1
    fi
}

start_all_frr() {
    local hv
    log "starting FRR on the spine ($spine_ps)"
    start_frr "$ns_spine" "$spine_ps" "$(spine_frr_conf)"
    for hv in "${hvs[@]}"; do
        log "starting FRR on $hv ($(hv_ps "$hv")) with an empty config: hvroute pushes its own"
        start_frr "$(hv_ns "$hv")" "$(hv_ps "$hv")" \
            "! $hv of the lab (scripts/lab.sh). Empty at start: hvroute pushes its config over vtysh."
    done
}

# ---------------------------------------------------------------------------------------------
# up: hvroute

write_config() {
    local hv="$1" ps
    ps="$(hv_ps "$hv")"
    mkdir -p "$(hv_dir "$hv")/state"
    {
        cat <<EOF
# hvroute config for $hv of the namespace lab (scripts/lab.sh). Removed by 'scripts/lab.sh down'.
state_dir = "$(hv_dir "$hv")/state"
socket = "$(hv_dir "$hv")/hvroute.sock"
route_protocol = $route_protocol
resync_interval_s = 30

[bridge]
name = "$bridge"
mac = "$bridge_mac"
mtu = 1500

[pools]
ipv4 = ["$pool4"]
ipv6 = ["$pool6"]

[bgp]
asn = ${hv_asn[$hv]}
router_id = "${hv_router_id[$hv]}"

EOF
        if [[ -n "${spine_link4[$hv]}" ]]; then
            cat <<EOF
[[bgp.peer]]                  # numbered: the spine's end of the /31
address = "${spine_link4[$hv]}"
remote_as = $spine_asn
EOF
        else
            cat <<EOF
[[bgp.peer]]                  # BGP unnumbered, over the uplink's link-local addresses
interface = "${hv_uplink[$hv]}"
remote_as = "external"
EOF
        fi
        cat <<EOF

[frr]
pathspace = "$ps"
config_file = "$frr_etc/$ps/frr.conf"
run_dir = "$frr_run"
EOF
    } >"$(hv_conf "$hv")"
}

register_vms() {
    local hv="$1" vm
    local -a args
    for vm in $(hv_vms "$hv"); do
        args=(vm add "$vm" --mac "${vm_mac[$vm]}")
        [[ -n "${vm_ip4[$vm]}" ]] && args+=(--ip "${vm_ip4[$vm]}")
        [[ -n "${vm_ip6[$vm]}" ]] && args+=(--ip "${vm_ip6[$vm]}")
        args+=(--port "${vm_port[$vm]}")
        log "$hv: hvroute ${args[*]}"
        hvroute "$hv" "${args[@]}"
    done
}

start_daemon() {
    local hv="$1" log_file ns
    log_file="$(hv_log_file "$hv")"
    ns="$(hv_ns "$hv")"
    : >"$log_file"
    # setsid: its own session, so the daemon outlives this shell and no terminal signal reaches
    # it. `ip netns exec` execs the command, so $! is the daemon's own PID.
    RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 setsid \
        ip netns exec "$ns" "$hvroute_bin" --config "$(hv_conf "$hv")" daemon \
        </dev/null >>"$log_file" 2>&1 &
    local pid=$!
    echo "$pid" >"$(hv_pid_file "$hv")"
    log "$hv: started hvroute daemon in $ns, PID $pid, log $log_file"
}

# wait_for_bridge HV: until the daemon has brought the bridge up; exits on failure.
wait_for_bridge() {
    local hv="$1" ns
    ns="$(hv_ns "$hv")"
    log "$hv: waiting up to ${bridge_timeout_s}s for the daemon to bring up $bridge in $ns"
    # Stop waiting early if the daemon exits.
    wait_until "$bridge_timeout_s" "$bridge to be up in $ns" bridge_up_or_daemon_gone "$hv" || true
    if ! bridge_is_up "$hv"; then
        if daemon_running "$hv"; then
            log "$hv: the daemon (PID $(recorded_pid "$hv")) runs but has not brought $bridge up in ${bridge_timeout_s}s."
        else
            log "$hv: the daemon exited before it brought $bridge up."
        fi
        print_daemon_log_tail "$hv"
        exit 1
    fi
    log "$hv: $bridge is up"
}

attach_ports() {
    local hv="$1" vm port ns
    ns="$(hv_ns "$hv")"
    for vm in $(hv_vms "$hv"); do
        port="${vm_port[$vm]}"
        ip -n "$ns" link set "$port" master "$bridge"
        ip -n "$ns" link set "$port" up
        log "$hv: plugged $port into $bridge"
    done
}

# ---------------------------------------------------------------------------------------------
# up: checks

# check_bgp: sessions, the spine's exact prefix set, the hypervisors' refusals. Prints what it
# finds; returns 1 if anything is wrong.
check_bgp() {
    local failed=0 hv out

    log "waiting up to ${bgp_timeout_s}s for every BGP session to be Established"
    wait_until "$bgp_timeout_s" "the BGP sessions" all_sessions_established || failed=1
    log "BGP sessions:"
    print_sessions
    if ((failed)); then
        log "not every BGP session is Established."
        return 1
    fi

    log "waiting up to ${converge_timeout_s}s for the spine to hold exactly the VM prefixes"
    wait_until "$converge_timeout_s" "the spine's prefixes" spine_holds_exactly_vm_prefixes || true
    if out="$(spine_holds_exactly_vm_prefixes)"; then
        log "OK   the spine's BGP table and kernel hold exactly the VM prefixes: $(vm_prefixes | tr '\n' ' ')"
    else
        log "FAIL the spine's prefixes are not the VM prefixes:"
        indent <<<"$out"
        failed=1
    fi

    for hv in "${hvs[@]}"; do
        if out="$(hv_announces_its_vm_prefixes "$hv")"; then
            log "OK   $hv announces exactly its own VM prefixes: $(hv_vm_prefixes "$hv" | tr '\n' ' ')"
        else
            log "FAIL $hv:"
            indent <<<"$out"
            failed=1
        fi
        if out="$(spine_offers_extra "$hv")"; then
            log "OK   the spine offers $hv the extra $extra4 and $extra6"
        else
            log "FAIL $out"
            failed=1
        fi
        wait_until "$converge_timeout_s" "$hv to learn only the defaults" hv_learned_only_defaults "$hv" >/dev/null 2>&1 || true
        if out="$(hv_learned_only_defaults "$hv")"; then
            log "OK   $hv learned 0.0.0.0/0 and ::/0 and nothing else (BGP table and kernel); it refused the extra"
        else
            log "FAIL $hv:"
            indent <<<"$out"
            failed=1
        fi
    done
    return "$failed"
}

# A check: NAME|NAMESPACE|ping args...
build_checks() {
    checks=()
    local vm
    for vm in "${vms[@]}"; do
        if [[ -n "${vm_ip4[$vm]}" ]]; then
            checks+=("$vm -> out   IPv4|$(vm_ns "$vm")|-4 $ping_opts $out_addr4")
            checks+=("out -> $vm   IPv4|$ns_out|-4 $ping_opts -I $out_addr4 ${vm_ip4[$vm]}")
        fi
        if [[ -n "${vm_ip6[$vm]}" ]]; then
            checks+=("$vm -> out   IPv6|$(vm_ns "$vm")|-6 $ping_opts $out_addr6")
            checks+=("out -> $vm   IPv6|$ns_out|-6 $ping_opts -I $out_addr6 ${vm_ip6[$vm]}")
        fi
    done
    # Between every two VMs, in each family both have: across hypervisors (through the
    # spine) first, then on one hypervisor (through its bridge).
    local same a b fam
    for same in 0 1; do
        for a in "${vms[@]}"; do
            for b in "${vms[@]}"; do
                [[ "$a" < "$b" ]] || continue
                [[ "${vm_hv[$a]}" == "${vm_hv[$b]}" ]] && (( same == 0 )) && continue
                [[ "${vm_hv[$a]}" != "${vm_hv[$b]}" ]] && (( same == 1 )) && continue
                for fam in 4 6; do
                    if [[ "$fam" == 4 && -n "${vm_ip4[$a]}" && -n "${vm_ip4[$b]}" ]]; then
                        checks+=("$a -> $b   IPv4|$(vm_ns "$a")|-4 $ping_opts ${vm_ip4[$b]}")
                        checks+=("$b -> $a   IPv4|$(vm_ns "$b")|-4 $ping_opts ${vm_ip4[$a]}")
                    elif [[ "$fam" == 6 && -n "${vm_ip6[$a]}" && -n "${vm_ip6[$b]}" ]]; then
                        checks+=("$a -> $b   IPv6|$(vm_ns "$a")|-6 $ping_opts ${vm_ip6[$b]}")
                        checks+=("$b -> $a   IPv6|$(vm_ns "$b")|-6 $ping_opts ${vm_ip6[$a]}")
                    fi
                done
            done
        done
    done
}

# run_checks: ping every path with bounded retries; prints a table; returns 1 if any failed.
run_checks() {
    local -a checks results=()
    build_checks
    local check name ns args start took failed=0 verdict
    for check in "${checks[@]}"; do
        IFS='|' read -r name ns args <<<"$check"
        log "check: $name (ping $args)"
        start="$(_now_ms)"
        # shellcheck disable=SC2086  # args is a word list by design
        if wait_until "$ping_timeout_s" "$name" ip netns exec "$ns" ping $args; then
            verdict=PASS
        else
            verdict=FAIL
            failed=$((failed + 1))
        fi
        took=$(($(_now_ms) - start))
        results+=("$(printf '%-18s %-22s %-4s %5s' "$name" "${args##* }" "$verdict" \
            "$((took / 1000)).$(((took % 1000) / 100))s")")
    done
    echo
    printf '    %-18s %-22s %-4s %5s\n' PATH TARGET OK TIME
    printf '    %s\n' "${results[@]}"
    echo
    if ((failed > 0)); then
        log "$failed of ${#checks[@]} ping checks FAILED."
        return 1
    fi
    log "all ${#checks[@]} ping checks passed."
}

on_up_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        log "up failed (exit $rc); the lab is left as it is: 'scripts/lab.sh status' to look, 'scripts/lab.sh down' to remove it."
    fi
}

# lab_pathspaces: the FRR pathspaces with the lab's prefix that have files now, one per line.
# (Read from the disk, not the topology file, so that 'down' removes whatever 'up' made.)
lab_pathspaces() {
    local d
    for d in "$frr_etc/$ns_prefix"* "$frr_run/$ns_prefix"*; do
        [[ -e "$d" ]] && basename -- "$d"
    done | sort -u
}

# lab_leftovers: whatever of the lab exists now (namespaces, run dir, FRR dirs), one per line.
lab_leftovers() {
    local ps
    lab_namespaces
    [[ -e "$run_dir" ]] && echo "$run_dir"
    for ps in $(lab_pathspaces); do
        [[ -e "$frr_etc/$ps" ]] && echo "$frr_etc/$ps"
        [[ -e "$frr_run/$ps" ]] && echo "$frr_run/$ps"
    done
    return 0
}

cmd_up() {
    need_root
    local leftovers
    leftovers="$(lab_leftovers)"
    if [[ -n "$leftovers" ]]; then
        if load_saved_topology && lab_is_up >/dev/null 2>&1; then
            log "the lab is already up; nothing to do ('scripts/lab.sh status' shows it, 'scripts/lab.sh down' removes it)."
            exit 0
        fi
        log "a partial lab is left over: $(tr '\n' ' ' <<<"$leftovers")"
        log "look at it with 'scripts/lab.sh status', or tear it down first with 'scripts/lab.sh down'."
        exit 1
    fi

    ensure_packages
    local -a build=(cargo build --release --bin hvroute --example lab-topology)
    if [[ -n "${HVROUTE_BIN:-}" ]]; then
        log "using HVROUTE_BIN=$hvroute_bin (hvroute is not built)"
        build=(cargo build --release --example lab-topology)
    fi
    if [[ -n "${HVROUTE_BIN:-}" && -n "${HVROUTE_LAB_TOPOLOGY_BIN:-}" ]]; then
        log "using HVROUTE_LAB_TOPOLOGY_BIN=$topology_bin (nothing is built)"
    elif [[ -z "${HVROUTE_BIN:-}" || ! -x "$topology_bin" ]]; then
        ensure_cargo
        log "${build[*]} (in $repo_root)"
        (cd "$repo_root" && "${build[@]}") || die "${build[*]} failed; nothing was set up."
    fi
    [[ -x "$hvroute_bin" ]] || die "no hvroute binary at $hvroute_bin."
    local topology
    topology="$(read_topology)" || exit 2
    apply_topology "$topology"
    log "topology $topology_file: nodes ${topo_nodes[*]}"
    [[ -x "$frr_libexec/zebra" && -x "$frr_libexec/bgpd" ]] || die "FRR's zebra and bgpd are not in $frr_libexec."

    # From here on a failure leaves a partial lab: say how to inspect and remove it.
    trap on_up_exit EXIT

    mkdir -p "$run_dir"
    printf '%s\n' "$topology" >"$topology_saved"
    log "creating namespaces $(all_namespaces | tr '\n' ' ')"
    create_namespaces
    log "links from $topology_file: $(printf '%s, ' "${topo_links[@]}" | sed 's/, $//')"
    create_links
    log "outside link: $ns_spine:$spine_out_if $spine_out_addrs <-> $ns_out:$out_if $out_link_addrs"
    setup_spine_and_out
    local hv vm
    for hv in "${hvs[@]}"; do
        if [[ -n "${hv_link4[$hv]}" ]]; then
            log "$hv uplink (numbered): $(hv_ns "$hv"):${hv_uplink[$hv]} ${hv_uplink_addrs[$hv]} <-> $ns_spine:${spine_hv_if[$hv]} ${spine_hv_addrs[$hv]}"
        else
            log "$hv uplink (unnumbered, link-local only): $(hv_ns "$hv"):${hv_uplink[$hv]} <-> $ns_spine:${spine_hv_if[$hv]}"
        fi
        setup_uplink "$hv"
    done
    for vm in "${vms[@]}"; do
        log "$vm on ${vm_hv[$vm]}: $(hv_ns "${vm_hv[$vm]}"):${vm_port[$vm]} <-> $(vm_ns "$vm"):${vm_if[$vm]} ${vm_mac[$vm]} ${vm_ip4[$vm]:-(no IPv4)} ${vm_ip6[$vm]:-(no IPv6)}"
        setup_vm "$vm"
    done

    start_all_frr

    for hv in "${hvs[@]}"; do
        log "$hv: writing $(hv_conf "$hv")"
        write_config "$hv"
        register_vms "$hv"
        start_daemon "$hv"
    done
    for hv in "${hvs[@]}"; do
        wait_for_bridge "$hv"
        attach_ports "$hv"
    done

    if ! check_bgp; then
        for hv in "${hvs[@]}"; do
            daemon_running "$hv" || log "$hv: the daemon is not running any more."
        done
        print_all_daemon_logs 20
        exit 1
    fi

    log "checking every path (each retried for up to ${ping_timeout_s}s)"
    if ! run_checks; then
        for hv in "${hvs[@]}"; do
            daemon_running "$hv" || log "$hv: the daemon is not running any more."
        done
        print_all_daemon_logs 20
        exit 1
    fi
    for hv in "${hvs[@]}"; do
        if ! daemon_running "$hv"; then
            print_daemon_log_tail "$hv"
            die "the paths work but the $hv daemon has exited."
        fi
    done

    local first_hv="${hvs[0]}" vm stack
    echo
    echo "lab: done. The lab is up:"
    echo "  - spine $ns_spine (FRR AS $spine_asn, pathspace $spine_ps), outside host $ns_out ($out_addr4, $out_addr6)"
    for hv in "${hvs[@]}"; do
        printf '  - %s %s: FRR AS %s (pathspace %s), %s uplink%s; hvroute PID %s\n' "$hv" "$(hv_ns "$hv")" \
            "${hv_asn[$hv]}" "$(hv_ps "$hv")" "$(hv_peering "$hv")" \
            "${hv_uplink_addrs[$hv]:+ ${hv_uplink_addrs[$hv]}}" "$(recorded_pid "$hv")"
        for vm in $(hv_vms "$hv"); do
            if [[ -n "${vm_ip4[$vm]}" && -n "${vm_ip6[$vm]}" ]]; then
                stack="dual stack"
            elif [[ -n "${vm_ip4[$vm]}" ]]; then
                stack="IPv4 only"
            else
                stack="IPv6 only"
            fi
            echo "      $vm ($stack) ${vm_ip4[$vm]:+${vm_ip4[$vm]} }${vm_ip6[$vm]}"
        done
    done
    echo "  - configs and logs in $run_dir/<hypervisor>"
    cat <<EOF

Try next:
  vtysh -N $spine_ps -c 'show bgp summary'
  vtysh -N $spine_ps -c 'show bgp ipv4 unicast'
  vtysh -N $(hv_ps "$first_hv") -c 'show running-config'
  ip -n $ns_spine route show proto bgp
  ip netns exec $(hv_ns "$first_hv") $hvroute_bin --config $(hv_conf "$first_hv") status
  ip netns exec $(vm_ns "${vms[0]}") ping ${vm_ip6[${vms[-1]}]:-${vm_ip4[${vms[-1]}]}}
  scripts/lab.sh status
  scripts/lab.sh down
EOF
}

# ---------------------------------------------------------------------------------------------
# down

# stop_pid PID WHAT: TERM, then KILL after stop_timeout_s.
stop_pid() {
    local pid="$1" what="$2"
    log "stopping $what PID $pid (TERM)"
    kill -TERM "$pid" 2>/dev/null || true
    if wait_until "$stop_timeout_s" "$what PID $pid to exit" pid_gone "$pid"; then
        return 0
    fi
    warn "$what PID $pid ignored TERM for ${stop_timeout_s}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 2 "$what PID $pid to die" pid_gone "$pid" \
        || warn "$what PID $pid is still there."
}

# stop_daemon PIDFILE WHAT: the hvroute daemon recorded in PIDFILE.
stop_daemon() {
    local file="$1" what="$2" pid
    pid="$(read_pid "$file")"
    if [[ -z "$pid" ]]; then
        log "$what: no PID recorded in $file."
    elif ! pid_alive "$pid"; then
        log "$what: PID $pid is not running."
    elif ! pid_is_lab_daemon "$pid"; then
        warn "$what: PID $pid is not an hvroute daemon (PID reused?); not signalling it."
    else
        stop_pid "$pid" "$what"
    fi
}

# stop_frr PS: the FRR daemons of pathspace PS, by their pid files.
stop_frr() {
    local ps="$1" d pid
    # bgpd first, so that it does not see zebra go away.
    for d in bgpd zebra; do
        pid="$(frr_pid "$ps" "$d")"
        [[ -n "$pid" ]] || continue
        if ! pid_alive "$pid"; then
            log "$ps: $d PID $pid is not running."
        elif ! pid_is_frr "$pid" "$d" "$ps"; then
            warn "$ps: PID $pid in $frr_run/$ps/$d.pid is not '$d -N $ps' (PID reused?); not signalling it."
        else
            stop_pid "$pid" "$ps $d"
        fi
    done
}

cmd_down() {
    need_root
    local did="" file hv ps ns
    local -a pathspaces
    mapfile -t pathspaces < <(lab_pathspaces)

    # The hvroute daemons first, so that none of them talks to an FRR that is going away.
    # ($run_dir/daemon.pid is where the one-hypervisor lab of earlier versions kept its PID.)
    for file in "$run_dir"/daemon.pid "$run_dir"/*/daemon.pid; do
        [[ -e "$file" ]] || continue
        hv="$(basename -- "$(dirname -- "$file")")"
        [[ "$hv" == "$(basename -- "$run_dir")" ]] && hv=hv
        stop_daemon "$file" "$hv hvroute daemon"
        did=1
    done
    for ps in "${pathspaces[@]}"; do
        if [[ -d "$frr_run/$ps" ]]; then
            stop_frr "$ps"
            did=1
        fi
    done
    for ns in $(lab_namespaces); do
        log "deleting namespace $ns"
        ip netns del "$ns"
        did=1
    done
    for ps in "${pathspaces[@]}"; do
        for file in "$frr_etc/$ps" "$frr_run/$ps"; do
            if [[ -e "$file" ]]; then
                log "removing $file"
                rm -rf -- "$file"
                did=1
            fi
        done
    done
    if [[ -e "$run_dir" ]]; then
        log "removing $run_dir"
        rm -rf -- "$run_dir"
        did=1
    fi
    if [[ -n "$did" ]]; then
        log "the lab is down."
    else
        log "nothing to do: the lab is not up."
    fi
}

# ---------------------------------------------------------------------------------------------
# status

# lab_is_up: every namespace, FRR daemon, hvroute daemon and BGP session is there. Prints
# what is missing; returns 1 if anything is.
lab_is_up() {
    local ok=0 ns ps d hv out
    for ns in $(all_namespaces); do
        ns_exists "$ns" || { echo "namespace $ns is missing"; ok=1; }
    done
    for ps in $(all_ps); do
        for d in "${frr_daemons[@]}"; do
            frr_daemon_running "$ps" "$d" || { echo "$d -N $ps is not running"; ok=1; }
        done
    done
    for hv in "${hvs[@]}"; do
        daemon_running "$hv" || { echo "the $hv hvroute daemon is not running"; ok=1; }
        bridge_is_up "$hv" || { echo "$bridge is not up in $(hv_ns "$hv")"; ok=1; }
    done
    if ((ok == 0)) && ! out="$(all_sessions_established)"; then
        echo "$out"
        ok=1
    fi
    return "$ok"
}

cmd_status() {
    need_root
    local ns ps d pid hv problems

    if [[ -z "$(lab_leftovers)" ]]; then
        log "the lab is down (start it with 'scripts/lab.sh up')."
        return 1
    fi
    if ! load_saved_topology; then
        log "parts of a lab are left over, but not $topology_saved, which 'up' writes:"
        lab_leftovers | indent
        log "'scripts/lab.sh down' removes them."
        return 1
    fi

    log "namespaces:"
    for ns in $(all_namespaces); do
        if ns_exists "$ns"; then
            printf '    %-16s present\n' "$ns"
        else
            printf '    %-16s MISSING\n' "$ns"
        fi
    done

    for ps in $(all_ps); do
        log "FRR $ps:"
        for d in "${frr_daemons[@]}"; do
            pid="$(frr_pid "$ps" "$d")"
            if frr_daemon_running "$ps" "$d"; then
                printf '    %-6s running, PID %s\n' "$d" "$pid"
            else
                printf '    %-6s NOT running%s\n' "$d" "${pid:+ (pid file says $pid)}"
            fi
        done
        if frr_daemon_running "$ps" bgpd; then
            log "vtysh -N $ps -c 'show bgp summary':"
            vtysh_ps "$ps" -c 'show bgp summary' 2>&1 | sed '/^$/d' | indent || true
        fi
    done

    for hv in "${hvs[@]}"; do
        pid="$(recorded_pid "$hv")"
        if [[ -z "$pid" ]]; then
            log "$hv hvroute daemon: no PID recorded in $(hv_pid_file "$hv")"
        elif pid_is_lab_daemon "$pid"; then
            log "$hv hvroute daemon: running, PID $pid (log $(hv_log_file "$hv"))"
        else
            log "$hv hvroute daemon: NOT running (recorded PID $pid)"
            print_daemon_log_tail "$hv" 20
        fi
        if ns_exists "$(hv_ns "$hv")" && [[ -x "$hvroute_bin" && -r "$(hv_conf "$hv")" ]]; then
            log "$hv: hvroute status:"
            hvroute "$hv" status 2>&1 | indent || log "$hv: hvroute status failed."
        else
            log "$hv: hvroute status: skipped (no namespace, no binary at $hvroute_bin or no $(hv_conf "$hv"))"
        fi
    done

    if ns_exists "$ns_spine"; then
        log "the spine's kernel routes with protocol bgp (expected: exactly the VM prefixes):"
        {
            ip -n "$ns_spine" -4 route show proto bgp
            ip -n "$ns_spine" -6 route show proto bgp
        } | indent
    fi

    if problems="$(lab_is_up 2>&1)"; then
        log "the lab is up."
        return 0
    fi
    log "the lab is only partly up:"
    indent <<<"$problems"
    log "'scripts/lab.sh down' removes it."
    return 1
}

# ---------------------------------------------------------------------------------------------

short_usage() {
    echo "Usage: scripts/lab.sh up|down|status   ('scripts/lab.sh --help' explains the lab)" >&2
}

main() {
    if [[ $# -ne 1 ]]; then
        short_usage
        exit 2
    fi
    case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
        printf 'lab: unknown command %q\n' "$1" >&2
        short_usage
        exit 2
        ;;
    esac
}

main "$@"
