#!/usr/bin/env bash
# Drop-in for CloudStack's modifymacip.sh: hands every NIC plug and unplug to hvroute.
#
# CloudStack runs it on each NIC plug and unplug when vm.network.macip.static=true, as
#   modifymacip.sh -o add|delete -b BRIDGE -m MAC [-4 IPV4]... [-6 IPV6]...
# and this script runs
#   hvroute [--config FILE] shim add|delete --bridge BRIDGE --mac MAC [--ip ADDR]...
# which records the NIC by (bridge, MAC) and programs its routes and neighbours (see
# docs/cloudstack.md). Exit codes are hvroute's: 0 ok, 2 invalid input, 1 failure.
#
# Environment: HVROUTE (the binary, default hvroute on PATH), HVROUTE_CONFIG (default
# /etc/hvroute/hvroute.toml).
set -euo pipefail

usage() {
    echo "usage: modifymacip.sh -o add|delete -b BRIDGE -m MAC [-4 IPV4]... [-6 IPV6]..." >&2
    exit 2
}

op="" bridge="" mac=""
ips=()
while getopts ":o:b:m:4:6:h" opt; do
    case "$opt" in
    o) op="$OPTARG" ;;
    b) bridge="$OPTARG" ;;
    m) mac="$OPTARG" ;;
    4 | 6) ips+=(--ip "$OPTARG") ;;
    h) usage ;;
    :) echo "modifymacip.sh: -$OPTARG needs a value" >&2; usage ;;
    *) echo "modifymacip.sh: unknown option -$OPTARG" >&2; usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 0 ]] || { echo "modifymacip.sh: unexpected argument '$1'" >&2; usage; }
[[ -n "$bridge" && -n "$mac" ]] || { echo "modifymacip.sh: -b BRIDGE and -m MAC are required" >&2; usage; }
case "$op" in
add) ;;
delete) ips=() ;;
*) echo "modifymacip.sh: -o must be add or delete, not '$op'" >&2; usage ;;
esac

exec "${HVROUTE:-hvroute}" --config "${HVROUTE_CONFIG:-/etc/hvroute/hvroute.toml}" \
    shim "$op" --bridge "$bridge" --mac "$mac" "${ips[@]}"
