#!/usr/bin/env bash
# A hypervisor, two VMs and an outside host in network namespaces, routed by hvroute.
# Run `scripts/lab.sh --help` for the picture and the commands.
set -euo pipefail

log_prefix=lab
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

# ---------------------------------------------------------------------------------------------
# The lab's fixed facts. Test traffic stays inside these namespaces and these documentation
# prefixes (RFC 5737, RFC 3849) and link nets.

readonly ns_prefix=hvr-lab-
readonly ns_hv=hvr-lab-hv
readonly ns_out=hvr-lab-out
readonly vms=(vm1 vm2)

readonly run_dir=/run/hvroute-lab
readonly conf_file="$run_dir/hvroute.toml"
readonly state_dir="$run_dir/state"
readonly socket="$run_dir/hvroute.sock"
readonly pid_file="$run_dir/daemon.pid"
readonly log_file="$run_dir/daemon.log"

readonly bridge=cloudbr0
readonly bridge_mac=0e:00:00:00:00:01
readonly route_protocol=44

# Uplink hv:uplink0 <-> out:eth0.
readonly hv_uplink=uplink0
readonly hv_uplink4=10.255.0.0
readonly hv_uplink6=2001:db8:ffff:1::1
readonly out_if=eth0
readonly out_link4=10.255.0.1
readonly out_link6=2001:db8:ffff:1::2
# The outside host's own addresses, on its lo.
readonly out_addr4=203.0.113.10
readonly out_addr6=2001:db8:ffff::10

readonly pool4=192.0.2.0/24
readonly pool6=2001:db8:100::/40

# Per VM: MAC, IPv4 (empty = IPv6 only), IPv6 (empty = IPv4 only).
declare -A vm_mac=([vm1]=52:54:00:00:00:01 [vm2]=52:54:00:00:00:02)
declare -A vm_ip4=([vm1]=192.0.2.10 [vm2]="")
declare -A vm_ip6=([vm1]=2001:db8:100::10 [vm2]=2001:db8:100::20)
readonly vm_mac vm_ip4 vm_ip6

# How long to wait for things that happen asynchronously.
readonly bridge_timeout_s=10
readonly ping_timeout_s=10
readonly stop_timeout_s=5
# One attempt of a path check: three echo replies within 3 s. Three, not one, so that a path
# that works only for the first packet (say, until an ICMP redirect sends the guest elsewhere)
# fails. Each check retries attempts for up to ping_timeout_s.
readonly ping_opts="-c3 -i0.2 -w3"

hvroute_bin="${HVROUTE_BIN:-$repo_root/target/release/hvroute}"

vm_ns() { echo "${ns_prefix}$1"; }
vm_port() { echo "${1}p"; }

usage() {
    cat <<EOF
Usage: scripts/lab.sh up|down|status
       scripts/lab.sh --help

A lab for hvroute in network namespaces: one hypervisor, two VMs and an outside host,
with no traffic leaving this machine.

  ${ns_out} (outside host)    lo ${out_addr4}/32, ${out_addr6}/128
     eth0 ${out_link4}/31, ${out_link6}/64
       │   static routes: ${pool4} via ${hv_uplink4}, ${pool6} via ${hv_uplink6}
       │
     uplink0 ${hv_uplink4}/31, ${hv_uplink6}/64
  ${ns_hv} (hypervisor)     default via ${out_link4}, ::/0 via ${out_link6}
     cloudbr0 169.254.0.1/32, fe80::1/64, MAC ${bridge_mac}   (made by the hvroute daemon)
       ├── vm1p ─── eth0 in hvr-lab-vm1 (dual stack)  ${vm_mac[vm1]}  ${vm_ip4[vm1]}/32  ${vm_ip6[vm1]}/128
       └── vm2p ─── eth0 in hvr-lab-vm2 (IPv6 only)   ${vm_mac[vm2]}  ${vm_ip6[vm2]}/128

Each VM is set up the way its ConfigDrive sets up a guest: its /32 and /128 on eth0,
"default via 169.254.0.1 dev eth0 onlink" (only with IPv4), "::/0 via fe80::1 dev eth0",
accept_ra=0. The hypervisor routes each VM address as a /32 or /128 onto cloudbr0 with a
permanent neighbour entry (both with route protocol ${route_protocol}). The outside host reaches the pools
${pool4} and ${pool6} over static routes to the hypervisor (until BGP lands).

Commands:
  up      Build hvroute (cargo build --release), create the namespaces and veths, write
          ${conf_file}, register both VMs with 'hvroute vm add ... --port vmNp',
          start 'hvroute daemon' in hvr-lab-hv, plug vm1p/vm2p into cloudbr0 once the daemon
          has made it, then ping every path and print a table of results. Exits non-zero if
          any path fails (the lab is left up so you can look; the daemon log is printed).
  down    Stop the daemon (by its recorded PID: TERM, then KILL after ${stop_timeout_s}s), delete the
          hvr-lab-* namespaces and ${run_dir}. Safe to run any number of times.
  status  Show the namespaces, whether the daemon runs, 'hvroute status', the routes with
          protocol ${route_protocol} and the permanent neighbours on cloudbr0. Exits 0 only if the lab is
          fully up.

Files in ${run_dir}: hvroute.toml (config), state/ (desired state), hvroute.sock,
daemon.pid, daemon.log.

Environment:
  HVROUTE_BIN=PATH   use this hvroute binary and skip 'cargo build --release'
  RUST_LOG=FILTER    the daemon's log filter (default: info); the log has no colours (NO_COLOR=1)

Things to try once the lab is up:
  ip netns exec ${ns_hv} ip route show proto ${route_protocol}
  ip netns exec ${ns_hv} ip -6 route show proto ${route_protocol}
  ip netns exec ${ns_hv} ip neigh show dev ${bridge} nud permanent
  ip netns exec ${ns_hv} ${hvroute_bin} --config ${conf_file} status
  ip netns exec ${ns_hv} ${hvroute_bin} --config ${conf_file} vm list
  ip netns exec hvr-lab-vm1 ping ${out_addr6}
  ip netns exec ${ns_out} ping -I ${out_addr4} ${vm_ip4[vm1]}
  tail -f ${log_file}
EOF
}

# ---------------------------------------------------------------------------------------------
# Small helpers.

# lab_namespaces: the hvr-lab-* namespaces that exist now, one per line.
lab_namespaces() {
    ip netns list 2>/dev/null | awk -v p="$ns_prefix" 'index($1, p) == 1 {print $1}'
}

ns_exists() {
    lab_namespaces | grep -qx -- "$1"
}

# in_ns NS CMD...: run CMD inside namespace NS.
in_ns() {
    local ns="$1"
    shift
    ip netns exec "$ns" "$@"
}

# hvroute CMD...: run the hvroute CLI against the lab's config, inside the hypervisor namespace.
hvroute() {
    in_ns "$ns_hv" "$hvroute_bin" --config "$conf_file" "$@"
}

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

# pid_is_lab_daemon PID: true if PID is alive and is an "hvroute ... daemon" process.
pid_is_lab_daemon() {
    local pid="$1" cmdline
    pid_alive "$pid" || return 1
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmdline" == *hvroute* && "$cmdline" == *daemon* ]]
}

# recorded_pid: the daemon PID recorded by `up`, or nothing.
recorded_pid() {
    if [[ -r "$pid_file" ]]; then
        tr -dc '0-9' <"$pid_file"
    fi
}

daemon_running() {
    local pid
    pid="$(recorded_pid)"
    [[ -n "$pid" ]] && pid_is_lab_daemon "$pid"
}

bridge_is_up() {
    [[ -n "$(ip -n "$ns_hv" -o link show dev "$bridge" up 2>/dev/null)" ]]
}

bridge_up_or_daemon_gone() {
    bridge_is_up || ! daemon_running
}

print_daemon_log_tail() {
    local n="${1:-40}"
    if [[ -s "$log_file" ]]; then
        log "last $n lines of $log_file:"
        tail -n "$n" "$log_file" | sed 's/^/    /'
    else
        log "the daemon log $log_file is empty or missing."
    fi
}

# ---------------------------------------------------------------------------------------------
# up

write_config() {
    mkdir -p "$state_dir"
    cat >"$conf_file" <<EOF
# hvroute config for the namespace lab (scripts/lab.sh). Removed by 'scripts/lab.sh down'.
state_dir = "$state_dir"
socket = "$socket"
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
asn = 65001
router_id = "10.255.0.1"
EOF
}

create_namespaces() {
    local ns
    for ns in "$ns_hv" "$ns_out" "${vms[@]/#/$ns_prefix}"; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
}

setup_uplink() {
    ip -n "$ns_hv" link add "$hv_uplink" type veth peer name "$out_if" netns "$ns_out"

    # Hypervisor side.
    ip -n "$ns_hv" addr add "$hv_uplink4/31" dev "$hv_uplink"
    ip -n "$ns_hv" -6 addr add "$hv_uplink6/64" dev "$hv_uplink" nodad
    ip -n "$ns_hv" link set "$hv_uplink" up
    ip -n "$ns_hv" route add default via "$out_link4" dev "$hv_uplink"
    ip -n "$ns_hv" -6 route add ::/0 via "$out_link6" dev "$hv_uplink"

    # Outside host.
    ip -n "$ns_out" addr add "$out_addr4/32" dev lo
    ip -n "$ns_out" -6 addr add "$out_addr6/128" dev lo
    ip -n "$ns_out" addr add "$out_link4/31" dev "$out_if"
    ip -n "$ns_out" -6 addr add "$out_link6/64" dev "$out_if" nodad
    ip -n "$ns_out" link set "$out_if" up
    # Static routes to the pools, until BGP lands.
    ip -n "$ns_out" route add "$pool4" via "$hv_uplink4" dev "$out_if"
    ip -n "$ns_out" -6 route add "$pool6" via "$hv_uplink6" dev "$out_if"
}

# setup_vm NAME: the veth pair and the guest side, configured as its ConfigDrive would.
setup_vm() {
    local vm="$1" ns port
    ns="$(vm_ns "$vm")"
    port="$(vm_port "$vm")"

    ip -n "$ns_hv" link add "$port" type veth peer name eth0 netns "$ns"
    # The host side stays down and unplugged until the daemon has made the bridge.

    ip -n "$ns" link set eth0 address "${vm_mac[$vm]}"
    in_ns "$ns" sysctl -qw net.ipv6.conf.eth0.accept_ra=0
    ip -n "$ns" link set eth0 up
    if [[ -n "${vm_ip4[$vm]}" ]]; then
        ip -n "$ns" addr add "${vm_ip4[$vm]}/32" dev eth0
        ip -n "$ns" route add default via 169.254.0.1 dev eth0 onlink
    fi
    if [[ -n "${vm_ip6[$vm]}" ]]; then
        ip -n "$ns" -6 addr add "${vm_ip6[$vm]}/128" dev eth0 nodad
        ip -n "$ns" -6 route add default via fe80::1 dev eth0
    fi
}

register_vms() {
    local vm
    local -a args
    for vm in "${vms[@]}"; do
        args=(vm add "$vm" --mac "${vm_mac[$vm]}")
        [[ -n "${vm_ip4[$vm]}" ]] && args+=(--ip "${vm_ip4[$vm]}")
        [[ -n "${vm_ip6[$vm]}" ]] && args+=(--ip "${vm_ip6[$vm]}")
        args+=(--port "$(vm_port "$vm")")
        log "hvroute ${args[*]}"
        hvroute "${args[@]}"
    done
}

start_daemon() {
    : >"$log_file"
    # setsid: its own session, so the daemon outlives this shell and no terminal signal reaches
    # it. `ip netns exec` execs the command, so $! is the daemon's own PID.
    RUST_LOG="${RUST_LOG:-info}" NO_COLOR=1 setsid \
        ip netns exec "$ns_hv" "$hvroute_bin" --config "$conf_file" daemon \
        </dev/null >>"$log_file" 2>&1 &
    local pid=$!
    echo "$pid" >"$pid_file"
    log "started hvroute daemon in $ns_hv, PID $pid, log $log_file"
}

attach_ports() {
    local vm port
    for vm in "${vms[@]}"; do
        port="$(vm_port "$vm")"
        ip -n "$ns_hv" link set "$port" master "$bridge"
        ip -n "$ns_hv" link set "$port" up
        log "plugged $port into $bridge"
    done
}

# A check: NAME|NAMESPACE|ping args...
build_checks() {
    checks=(
        "vm1 -> out   IPv4|$(vm_ns vm1)|-4 $ping_opts $out_addr4"
        "vm1 -> out   IPv6|$(vm_ns vm1)|-6 $ping_opts $out_addr6"
        "out -> vm1   IPv4|$ns_out|-4 $ping_opts -I $out_addr4 ${vm_ip4[vm1]}"
        "out -> vm1   IPv6|$ns_out|-6 $ping_opts -I $out_addr6 ${vm_ip6[vm1]}"
        "vm2 -> out   IPv6|$(vm_ns vm2)|-6 $ping_opts $out_addr6"
        "out -> vm2   IPv6|$ns_out|-6 $ping_opts -I $out_addr6 ${vm_ip6[vm2]}"
        "vm1 -> vm2   IPv6|$(vm_ns vm1)|-6 $ping_opts ${vm_ip6[vm2]}"
        "vm2 -> vm1   IPv6|$(vm_ns vm2)|-6 $ping_opts ${vm_ip6[vm1]}"
    )
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
        log "$failed of ${#checks[@]} checks FAILED."
        return 1
    fi
    log "all ${#checks[@]} checks passed."
}

on_up_exit() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        log "up failed (exit $rc); the lab is left as it is: 'scripts/lab.sh status' to look, 'scripts/lab.sh down' to remove it."
    fi
}

cmd_up() {
    need_root
    if [[ -n "$(lab_namespaces)" || -e "$run_dir" ]]; then
        log "the lab is already up (or left over): $(lab_namespaces | tr '\n' ' ')${run_dir}"
        log "look at it with 'scripts/lab.sh status', or tear it down first with 'scripts/lab.sh down'."
        exit 1
    fi

    ensure_packages
    if [[ -n "${HVROUTE_BIN:-}" ]]; then
        log "using HVROUTE_BIN=$hvroute_bin (no build)"
    else
        ensure_cargo
        log "cargo build --release (in $repo_root)"
        (cd "$repo_root" && cargo build --release) || die "cargo build --release failed; nothing was set up."
    fi
    [[ -x "$hvroute_bin" ]] || die "no hvroute binary at $hvroute_bin."

    # From here on a failure leaves a partial lab: say how to inspect and remove it.
    trap on_up_exit EXIT

    mkdir -p "$run_dir"
    log "creating namespaces $ns_hv $ns_out ${vms[*]/#/$ns_prefix}"
    create_namespaces
    log "uplink: $ns_hv:$hv_uplink $hv_uplink4/31 $hv_uplink6/64 <-> $ns_out:$out_if $out_link4/31 $out_link6/64"
    setup_uplink
    local vm
    for vm in "${vms[@]}"; do
        log "$vm: $ns_hv:$(vm_port "$vm") <-> $(vm_ns "$vm"):eth0 ${vm_mac[$vm]} ${vm_ip4[$vm]:-(no IPv4)} ${vm_ip6[$vm]:-(no IPv6)}"
        setup_vm "$vm"
    done

    log "writing $conf_file"
    write_config
    register_vms
    start_daemon

    log "waiting up to ${bridge_timeout_s}s for the daemon to bring up $bridge in $ns_hv"
    # Stop waiting early if the daemon exits.
    wait_until "$bridge_timeout_s" "$bridge to be up in $ns_hv" bridge_up_or_daemon_gone || true
    if ! bridge_is_up; then
        if daemon_running; then
            log "the daemon (PID $(recorded_pid)) runs but has not brought $bridge up in ${bridge_timeout_s}s."
        else
            log "the daemon exited before it brought $bridge up."
        fi
        print_daemon_log_tail
        exit 1
    fi
    log "$bridge is up"
    attach_ports

    log "checking every path (each retried for up to ${ping_timeout_s}s)"
    if ! run_checks; then
        if ! daemon_running; then
            log "the daemon is not running any more."
        fi
        print_daemon_log_tail
        exit 1
    fi
    if ! daemon_running; then
        print_daemon_log_tail
        die "the paths work but the daemon has exited."
    fi

    cat <<EOF

lab: done. The lab is up:
  - namespaces $ns_hv (hypervisor), ${vms[*]/#/$ns_prefix} (VMs), $ns_out (outside host)
  - hvroute daemon PID $(recorded_pid) in $ns_hv, config $conf_file, log $log_file
  - vm1 (dual stack) ${vm_ip4[vm1]} ${vm_ip6[vm1]}, vm2 (IPv6 only) ${vm_ip6[vm2]}
  - the outside host ${out_addr4} / ${out_addr6} reaches the pools over static routes

Try next:
  ip netns exec $ns_hv ip route show proto $route_protocol
  ip netns exec $ns_hv ip -6 route show proto $route_protocol
  ip netns exec $ns_hv ip neigh show dev $bridge nud permanent
  ip netns exec $ns_hv $hvroute_bin --config $conf_file status
  ip netns exec $ns_hv $hvroute_bin --config $conf_file reconcile --dry-run
  ip netns exec $(vm_ns vm1) ping $out_addr6
  scripts/lab.sh status
  scripts/lab.sh down
EOF
}

# ---------------------------------------------------------------------------------------------
# down

stop_daemon() {
    local pid
    pid="$(recorded_pid)"
    if [[ -z "$pid" ]]; then
        log "no daemon PID recorded."
        return 0
    fi
    if ! pid_alive "$pid"; then
        log "daemon PID $pid is not running."
        return 0
    fi
    if ! pid_is_lab_daemon "$pid"; then
        warn "PID $pid is not an hvroute daemon (PID reused?); not signalling it."
        return 0
    fi
    log "stopping daemon PID $pid (TERM)"
    kill -TERM "$pid" 2>/dev/null || true
    if wait_until "$stop_timeout_s" "daemon PID $pid to exit" pid_gone "$pid"; then
        log "daemon stopped."
        return 0
    fi
    warn "daemon PID $pid ignored TERM for ${stop_timeout_s}s; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_until 2 "daemon PID $pid to die" pid_gone "$pid" \
        || warn "daemon PID $pid is still there."
}

cmd_down() {
    need_root
    local did=""
    if [[ -e "$pid_file" ]]; then
        stop_daemon
        did=1
    fi
    local ns
    for ns in $(lab_namespaces); do
        log "deleting namespace $ns"
        ip netns del "$ns"
        did=1
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

cmd_status() {
    need_root
    local ok=1 ns pid
    local -a want=("$ns_hv" "$ns_out")
    for ns in "${vms[@]}"; do want+=("$(vm_ns "$ns")"); done

    log "namespaces:"
    for ns in "${want[@]}"; do
        if ns_exists "$ns"; then
            printf '    %-14s present\n' "$ns"
        else
            printf '    %-14s MISSING\n' "$ns"
            ok=""
        fi
    done
    if [[ -z "$(lab_namespaces)" && ! -e "$run_dir" ]]; then
        log "the lab is down (start it with 'scripts/lab.sh up')."
        return 1
    fi

    pid="$(recorded_pid)"
    if [[ -z "$pid" ]]; then
        log "daemon: no PID recorded in $pid_file"
        ok=""
    elif pid_is_lab_daemon "$pid"; then
        log "daemon: running, PID $pid (log $log_file)"
    else
        log "daemon: NOT running (recorded PID $pid)"
        ok=""
        print_daemon_log_tail 20
    fi

    if ! ns_exists "$ns_hv"; then
        log "no $ns_hv namespace: nothing more to show."
        return 1
    fi

    if [[ -x "$hvroute_bin" && -r "$conf_file" ]]; then
        log "hvroute status:"
        hvroute status 2>&1 | sed 's/^/    /' || {
            ok=""
            log "hvroute status failed."
        }
    else
        log "hvroute status: skipped (no binary at $hvroute_bin or no $conf_file)"
    fi

    log "IPv4 routes with protocol $route_protocol in $ns_hv:"
    ip -n "$ns_hv" route show proto "$route_protocol" | sed 's/^/    /'
    log "IPv6 routes with protocol $route_protocol in $ns_hv:"
    ip -n "$ns_hv" -6 route show proto "$route_protocol" | sed 's/^/    /'
    if ip -n "$ns_hv" link show dev "$bridge" >/dev/null 2>&1; then
        log "permanent neighbours on $bridge:"
        ip -n "$ns_hv" neigh show dev "$bridge" nud permanent | sed 's/^/    /'
        log "$bridge and its ports:"
        ip -n "$ns_hv" -br link show master "$bridge" | sed 's/^/    /'
        ip -n "$ns_hv" -br addr show dev "$bridge" | sed 's/^/    /'
    else
        log "no $bridge in $ns_hv."
        ok=""
    fi

    if [[ -n "$ok" ]]; then
        log "the lab is up."
        return 0
    fi
    log "the lab is only partly up; 'scripts/lab.sh down' removes it."
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
