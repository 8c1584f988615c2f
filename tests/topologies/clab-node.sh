#!/bin/sh
# Sets up one node of tests/topologies/lab.clab.yml inside its containerlab container:
#   exec: ["sh /hvr/clab-node.sh NODE"]
# containerlab has made the container and its veths; this adds what scripts/lab.sh adds in the
# namespace lab, from the same file: it asks lab-topology (examples/lab-topology.rs, bind-mounted
# as /usr/local/bin/lab-topology with the file as /hvr/lab.clab.yml) for NODE's facts.
#   spine       addresses, static routes, FRR (bgpd on, the spine's frr.conf, datacenter defaults)
#   host        addresses on lo and its link, default routes via the spine
#   hypervisor  FRR with an empty config, an hvroute.toml, the VMs registered, 'hvroute daemon'
#               started, the VM ports plugged into cloudbr0 once hvroute has made it
#   vm          MAC, /32 and /128, on-link defaults via 169.254.0.1 and fe80::1, as a ConfigDrive
# POSIX sh: the FRR and netshoot images are Alpine. Not run in CI here (no Docker); see
# docs/containerlab.md.
set -eu

node="${1:?usage: clab-node.sh NODE}"
file="${HVR_TOPOLOGY:-/hvr/lab.clab.yml}"
say() { echo "clab-node $node: $*"; }

facts="$(lab-topology node "$file" "$node")" || { say "lab-topology refused $file"; exit 2; }
ROLE='' ASN='' ROUTER_ID='' EXTRA='' ROUTES='' ADDRS='' NEIGHBORS='' LOOPBACK=''
SPINE_ASN='' UPLINK='' PEER='' VMS='' IFACE='' MAC='' IP4='' IP6=''
eval "$facts"

# add_addrs "IF ADDR..." per ';'-separated item.
add_addrs() {
    echo "$1" | tr ';' '\n' | while read -r dev list; do
        [ -n "$dev" ] || continue
        for a in $list; do
            case "$a" in
            *:*) ip -6 addr add "$a" dev "$dev" nodad ;;
            *) ip addr add "$a" dev "$dev" ;;
            esac
        done
        ip link set "$dev" up
    done
}

add_routes() {
    echo "$1" | tr ';' '\n' | while read -r r; do
        # shellcheck disable=SC2086  # a route is a word list
        [ -z "$r" ] || ip route add $r
    done
}

# FRR of the image: bgpd on, the datacenter profile, CONF as frr.conf, then a restart.
start_frr() {
    sed -i 's/^bgpd=no/bgpd=yes/' /etc/frr/daemons
    grep -q '^frr_profile=' /etc/frr/daemons || echo 'frr_profile="datacenter"' >>/etc/frr/daemons
    printf '%s\n' "$1" >/etc/frr/frr.conf
    : >/etc/frr/vtysh.conf
    chown frr:frr /etc/frr/frr.conf /etc/frr/vtysh.conf 2>/dev/null || true
    /usr/lib/frr/frrinit.sh restart
}

case "$ROLE" in
spine)
    sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    add_addrs "$ADDRS"
    add_routes "$ROUTES"
    conf="frr defaults datacenter
router bgp $ASN
 bgp router-id $ROUTER_ID
 no bgp ebgp-requires-policy"
    for n in $NEIGHBORS; do
        peer="${n%%:*}" how="${n#*:}"
        if [ "$how" = interface ]; then
            conf="$conf
 neighbor $peer interface remote-as external"
        else
            conf="$conf
 neighbor $peer remote-as $how"
        fi
    done
    for afi in ipv4 ipv6; do
        conf="$conf
 address-family $afi unicast"
        for p in $EXTRA; do
            case "$afi:$p" in ipv4:*:* | ipv6:*.*) continue ;; esac
            conf="$conf
  network $p"
        done
        for n in $NEIGHBORS; do
            conf="$conf
  neighbor ${n%%:*} activate
  neighbor ${n%%:*} default-originate"
        done
        conf="$conf
 exit-address-family"
    done
    start_frr "$conf
exit"
    ;;
host)
    add_addrs "$ADDRS"
    for a in $LOOPBACK; do ip addr add "$a" dev lo; done
    # Under containerlab eth0 is the management network with its own default route.
    ip route del default 2>/dev/null || true
    ip -6 route del default 2>/dev/null || true
    add_routes "$ROUTES"
    ;;
hypervisor)
    add_addrs "$ADDRS"
    start_frr "! hvroute pushes its own config over vtysh"
    mkdir -p /etc/hvroute /var/lib/hvroute /run/hvroute
    if [ "$PEER" = "$UPLINK" ]; then
        peer="interface = \"$UPLINK\"
remote_as = \"external\""
    else
        peer="address = \"$PEER\"
remote_as = $SPINE_ASN"
    fi
    cat >/etc/hvroute/hvroute.toml <<EOF
# hvroute config for $node of the containerlab lab (tests/topologies/clab-node.sh).
[bridge]
name = "cloudbr0"
mac = "0e:00:00:00:00:01"

[pools]
ipv4 = ["192.0.2.0/24"]
ipv6 = ["2001:db8:100::/40"]

[bgp]
asn = $ASN
router_id = "$ROUTER_ID"

[[bgp.peer]]
$peer

[guard]
# The FRR image carries no nft; the namespace lab runs with the guards on.
enabled = false
EOF
    for vm in $VMS; do
        IFS=, read -r name mac ip4 ip6 port <<EOF
$vm
EOF
        set -- vm add "$name" --mac "$mac" --port "$port"
        [ -z "$ip4" ] || set -- "$@" --ip "$ip4"
        [ -z "$ip6" ] || set -- "$@" --ip "$ip6"
        hvroute "$@"
    done
    RUST_LOG=info NO_COLOR=1 setsid hvroute daemon </dev/null >>/var/log/hvroute.log 2>&1 &
    i=0
    until ip link show cloudbr0 up 2>/dev/null | grep -q UP; do
        i=$((i + 1))
        [ "$i" -le 100 ] || { say "hvroute made no cloudbr0 in 10 s; see /var/log/hvroute.log"; exit 1; }
        sleep 0.1
    done
    for vm in $VMS; do
        port="${vm##*,}"
        ip link set "$port" master cloudbr0
        ip link set "$port" up
    done
    ;;
vm)
    ip link set "$IFACE" address "$MAC"
    sysctl -qw "net.ipv6.conf.$IFACE.accept_ra=0"
    ip link set "$IFACE" up
    ip route del default 2>/dev/null || true
    ip -6 route del default 2>/dev/null || true
    if [ -n "$IP4" ]; then
        ip addr add "$IP4/32" dev "$IFACE"
        ip route add default via 169.254.0.1 dev "$IFACE" onlink
    fi
    if [ -n "$IP6" ]; then
        ip -6 addr add "$IP6/128" dev "$IFACE" nodad
        ip -6 route add default via fe80::1 dev "$IFACE"
    fi
    ;;
*)
    say "unknown role $ROLE"
    exit 2
    ;;
esac
say "set up as $ROLE"
