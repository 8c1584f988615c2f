#!/usr/bin/env bash
# Fetch and unpack the cloud-init releases that tests/configdrive_cloudinit.rs runs against.
# Run `scripts/cloud-init-fetch.sh --help` for details.
set -euo pipefail

log_prefix="cloud-init-fetch"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/cloud-init-fetch.sh

Downloads the cloud-init .deb of Debian 13 (trixie, cloud-init 25.1.x) and of Debian 12
(bookworm, cloud-init 22.4.x) through this machine's configured Debian package source, with
only the suite changed, and unpacks each with dpkg-deb -x into

  ${HVROUTE_CACHE:-/var/cache/hvroute-test}/cloud-init/25
  ${HVROUTE_CACHE:-/var/cache/hvroute-test}/cloud-init/22

(the Python package is then under usr/lib/python3/dist-packages/cloudinit). A release that
is already unpacked there is reused, so running this again is cheap. The apt lists and the
.debs live in a temp dir of their own; the machine's apt state is not changed.

Also installs (apt-get, without recommends) what the tests run cloud-init and netplan with:
Debian's python3 and the modules cloud-init imports, and netplan.io for `netplan generate`.
Must run as root.
EOF
}

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    usage
    exit 0
fi
if [[ $# -ne 0 ]]; then
    usage >&2
    exit 2
fi
need_root

# What the tests need besides the unpacked cloud-init: Debian's interpreter (not a pyenv one:
# the tests run /usr/bin/python3), the modules that importing cloud-init's network code needs
# (checked: yaml, requests, configobj; not jinja2, jsonschema, jsonpatch, netifaces), and
# netplan's generator.
readonly test_packages=(python3 python3-yaml python3-requests python3-configobj netplan.io)

cache="${HVROUTE_CACHE:-/var/cache/hvroute-test}/cloud-init"

# apt_source SUITE DIR: write into DIR the machine's Debian package source with only the suite
# changed to SUITE, and print the file's path. From a deb822 debian.sources: its first stanza
# with the Suites line replaced. From a one-line sources.list: its first `deb` line.
apt_source() {
    local suite="$1" dir="$2" deb822=/etc/apt/sources.list.d/debian.sources
    if [[ -f "$deb822" ]]; then
        awk -v suite="$suite" '
            /^[[:space:]]*$/ { if (seen) exit; next }
            /^#/ { next }
            /^Suites:/ { print "Suites: " suite; seen = 1; next }
            { print; seen = 1 }
        ' "$deb822" >"$dir/source.sources"
        echo "$dir/source.sources"
        return
    fi
    local line opts="" uri comps
    line="$(grep -m1 -E '^deb[[:space:]]' /etc/apt/sources.list 2>/dev/null)" \
        || die "found no Debian package source in $deb822 or /etc/apt/sources.list."
    line="${line#deb }"
    if [[ "$line" == \[* ]]; then
        opts="${line%%]*}]"
        line="${line#*] }"
    fi
    read -r uri _ comps <<<"$line"
    echo "deb $opts $uri $suite $comps" >"$dir/source.list"
    echo "$dir/source.list"
}

# fetch DIR SUITE VERSION_PREFIX: unpack cloud-init from SUITE into $cache/DIR, unless there.
fetch() {
    local dir="$1" suite="$2" want="$3" dest="$cache/$1"
    if [[ -f "$dest/.version" && -d "$dest/usr/lib/python3/dist-packages/cloudinit" ]]; then
        log "cloud-init $(cat "$dest/.version") ($suite) already in $dest"
        return 0
    fi
    local work
    work="$(mktemp -d)"
    chmod 755 "$work"
    # shellcheck disable=SC2064  # expand now: $work is local
    trap "rm -rf '$work'" RETURN
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs"
    # apt downloads as the unprivileged _apt user when it can write the target dir.
    chown -R _apt "$work/lists" "$work/cache" "$work/debs" 2>/dev/null || true
    local source
    source="$(apt_source "$suite" "$work")"
    local -a apt=(apt-get -qq
        -o "Dir::Etc::SourceList=$source"
        -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists"
        -o "Dir::Cache=$work/cache")
    log "apt-get update for suite $suite ($(grep -m1 -E '^(URIs:|deb )' "$source"))"
    "${apt[@]}" update || die "apt-get update for suite $suite failed."
    (cd "$work/debs" && "${apt[@]}" download cloud-init) || die "apt-get download cloud-init ($suite) failed."
    local deb version
    deb="$(ls "$work"/debs/cloud-init_*.deb)"
    version="$(dpkg-deb -f "$deb" Version)"
    [[ "$version" == "$want"* ]] || die "suite $suite offers cloud-init $version, expected $want.x."
    rm -rf "$dest.tmp"
    mkdir -p "$dest.tmp"
    dpkg-deb -x "$deb" "$dest.tmp"
    echo "$version" >"$dest.tmp/.version"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "cloud-init $version ($suite) unpacked into $dest"
}

ensure_packages "${test_packages[@]}"
mkdir -p "$cache"
fetch 25 trixie 25.1
fetch 22 bookworm 22.4
log "done: PYTHONPATH=$cache/25/usr/lib/python3/dist-packages /usr/bin/python3 (or .../22/...)"
