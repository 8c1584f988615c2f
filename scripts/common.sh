# shellcheck shell=bash
# Helpers shared by the scripts in scripts/. Source this file; do not run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Set `log_prefix` before sourcing (or after) to name the messages, e.g. log_prefix=lab.
#
# Provides:
#   repo_root                      absolute path of the repository (the parent of scripts/)
#   log MSG... / warn MSG... / die MSG...   progress, warning, fatal error (exit 1)
#   need_root                      fail unless running as root
#   ensure_packages [PKG...]       install the missing Debian packages among the defaults and PKG...
#   ensure_cargo                   make cargo/rustc (>= 1.85) available on PATH, or fail
#   ensure_cargo_deb               make `cargo deb` (cargo-deb, pinned) available, or fail
#   ensure_libvirt                 libvirtd 9.0, virtlogd, virsh and QEMU from Debian 12, ready to run by hand
#   ensure_promtool                Debian 12's promtool, unpacked (not installed); sets HVROUTE_PROMTOOL
#   wait_until TIMEOUT_S DESCRIPTION CMD...   poll CMD every 0.1 s until it succeeds or time runs out
#   write_doc_block NAME TEXT      replace what stands between <!-- NAME:begin --> and
#                                  <!-- NAME:end --> in docs/benchmarks.md with TEXT

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    echo "common.sh holds helpers for the other scripts: source it, do not run it." >&2
    exit 2
fi

if [[ -n "${_hvroute_common_loaded:-}" ]]; then
    return 0
fi
_hvroute_common_loaded=1

: "${log_prefix:=hvroute}"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck disable=SC2034  # used by the scripts that source this file
readonly repo_root

# The minimum rustc: the crate uses edition 2024.
readonly rust_min_version="1.85"

# Debian packages every script here may rely on. build-essential brings cc and the libc
# development files that rustc's linker step needs.
readonly default_packages=(iproute2 nftables iputils-ping procps python3 ca-certificates build-essential frr)

log() {
    printf '%s: %s\n' "$log_prefix" "$*"
}

warn() {
    printf '%s: warning: %s\n' "$log_prefix" "$*" >&2
}

die() {
    printf '%s: error: %s\n' "$log_prefix" "$*" >&2
    exit 1
}

need_root() {
    if [[ "$(id -u)" -ne 0 ]]; then
        die "this needs root (it creates network namespaces and installs packages); run it with sudo."
    fi
}

# True if the Debian package is installed (not merely known or half-configured).
_pkg_installed() {
    local status
    status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
    [[ "$status" == "install ok installed" ]]
}

_apt_updated=""

_apt_update_once() {
    if [[ -z "$_apt_updated" ]]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        _apt_updated=1
    fi
}

# ensure_packages [PKG...]: install (without recommends) whichever of the default packages and
# PKG... are missing. Runs `apt-get update` once, and only when something must be installed.
# shellcheck disable=SC2120  # the arguments are optional
ensure_packages() {
    local pkg
    local -a missing=()
    for pkg in "${default_packages[@]}" "$@"; do
        if ! _pkg_installed "$pkg"; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    need_root
    log "installing missing packages: ${missing[*]}"
    _apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
        || die "apt-get install ${missing[*]} failed."
}

# version_ge A B: true if dotted version A >= B (numeric parts, missing parts count as 0).
version_ge() {
    local -a a b
    local i
    IFS=. read -r -a a <<<"$1"
    IFS=. read -r -a b <<<"$2"
    for ((i = 0; i < ${#a[@]} || i < ${#b[@]}; i++)); do
        local x="${a[i]:-0}" y="${b[i]:-0}"
        x="${x%%[!0-9]*}" y="${y%%[!0-9]*}"
        ((10#${x:-0} > 10#${y:-0})) && return 0
        ((10#${x:-0} < 10#${y:-0})) && return 1
    done
    return 0
}

# ensure_cargo: put ~/.cargo/bin on PATH if it exists; if cargo is still missing, try Debian's
# rustc-web and cargo-web. Fails unless rustc >= 1.85 is what ends up on PATH.
ensure_cargo() {
    local cargo_bin="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin"
    if [[ -d "$cargo_bin" && ":$PATH:" != *":$cargo_bin:"* ]]; then
        PATH="$cargo_bin:$PATH"
        export PATH
    fi
    if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
        # Debian 12's plain rustc is 1.63, too old for edition 2024; rustc-web and cargo-web
        # (bookworm-security) carry a current toolchain.
        log "cargo not found; trying Debian's rustc-web and cargo-web"
        need_root
        _apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc-web cargo-web \
            || warn "apt-get install rustc-web cargo-web failed"
    fi
    local version=""
    if command -v rustc >/dev/null 2>&1; then
        version="$(rustc --version 2>/dev/null | awk '{print $2}')"
    fi
    if [[ -z "$version" ]] || ! command -v cargo >/dev/null 2>&1 \
        || ! version_ge "${version%%-*}" "$rust_min_version"; then
        die "a Rust >= $rust_min_version toolchain is needed (found: ${version:-none}); install it with rustup and put ~/.cargo/bin on PATH."
    fi
}

# The cargo-deb release scripts/package.sh is known to work with.
readonly cargo_deb_version="3.8.0"

# ensure_cargo_deb: install cargo-deb with `cargo install --locked` (into ~/.cargo/bin, a
# few minutes of compiling) when `cargo deb` is missing. Call ensure_cargo first.
ensure_cargo_deb() {
    if cargo deb --version >/dev/null 2>&1; then
        return 0
    fi
    log "cargo-deb is missing: cargo install cargo-deb --version $cargo_deb_version --locked (a few minutes)"
    cargo install cargo-deb --version "$cargo_deb_version" --locked --quiet \
        || die "cargo install cargo-deb failed."
    cargo deb --version >/dev/null 2>&1 || die "cargo deb does not run after installing cargo-deb."
}

# Debian 12's libvirt and QEMU, for the libvirt end-to-end test (tests/netns_libvirt.rs).
readonly libvirt_packages=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86)

# ensure_libvirt: install libvirtd 9.0, virtlogd, virsh and qemu-system-x86 from Debian 12 when
# any is missing, and create the `kvm` and `libvirt-qemu` groups and the `libvirt-qemu` user
# that libvirt-daemon-system would create (that package is not installed: it starts services
# and wants systemd). The tests start virtlogd and libvirtd by hand inside a network namespace,
# with private directories and their own qemu.conf; nothing here starts a daemon or edits
# /etc/libvirt.
#
# The machine image may carry a newer qemu-utils (a Debian 13 backport) that conflicts with
# Debian 12's qemu-system-x86; `qemu-utils/bookworm` with --allow-downgrades puts the matching
# one back. This downgrade is the only change to a package that was already installed.
ensure_libvirt() {
    local pkg
    local -a missing=()
    for pkg in "${libvirt_packages[@]}"; do
        if ! _pkg_installed "$pkg"; then
            missing+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        need_root
        log "installing libvirt and QEMU (missing: ${missing[*]}); qemu-utils goes back to Debian 12's"
        _apt_update_once
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
            qemu-utils/bookworm "${libvirt_packages[@]}" \
            || die "apt-get install ${libvirt_packages[*]} failed."
    fi
    # The QEMU driver refuses to start without the user and groups its build names, even
    # when qemu.conf says user = "root".
    local group
    for group in kvm libvirt-qemu; do
        if ! getent group "$group" >/dev/null; then
            need_root
            groupadd --system "$group" || die "cannot create the $group group."
        fi
    done
    if ! getent passwd libvirt-qemu >/dev/null; then
        need_root
        useradd --system --no-create-home --home-dir /var/lib/libvirt --shell /usr/sbin/nologin \
            --gid kvm --groups libvirt-qemu libvirt-qemu || die "cannot create the libvirt-qemu user."
    fi
    local bin
    for bin in libvirtd virtlogd virsh qemu-system-x86_64; do
        command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" ]] \
            || die "$bin is missing after installing ${libvirt_packages[*]}."
    done
}

# _now_ms: milliseconds since the epoch.
_now_ms() {
    local ns
    ns="$(date +%s%N)"
    echo $((ns / 1000000))
}

# wait_until TIMEOUT_S DESCRIPTION CMD...
# Runs CMD (quietly) every 0.1 s until it exits 0 or TIMEOUT_S seconds (may have up to 3
# decimals) have passed. On timeout it prints what it waited for and CMD's last output, and
# returns 1. CMD runs in a subshell, so it cannot change the caller's variables.
wait_until() {
    if [[ $# -lt 3 ]]; then
        die "usage: wait_until TIMEOUT_S DESCRIPTION CMD..."
    fi
    local timeout="$1" desc="$2"
    shift 2
    local sec frac timeout_ms
    if [[ ! "$timeout" =~ ^([0-9]+)(\.([0-9]{1,3}))?$ ]]; then
        die "wait_until: timeout '$timeout' is not a number of seconds."
    fi
    sec="${BASH_REMATCH[1]}"
    frac="${BASH_REMATCH[3]:-0}"
    while [[ ${#frac} -lt 3 ]]; do frac="${frac}0"; done
    timeout_ms=$((10#$sec * 1000 + 10#$frac))

    local start deadline out="" rc=0
    start="$(_now_ms)"
    deadline=$((start + timeout_ms))
    while true; do
        rc=0
        out="$("$@" 2>&1)" || rc=$?
        if [[ $rc -eq 0 ]]; then
            return 0
        fi
        if (($(_now_ms) >= deadline)); then
            break
        fi
        sleep 0.1
    done
    printf '%s: timed out after %ss waiting for %s (last exit %d)\n' "$log_prefix" "$timeout" "$desc" "$rc" >&2
    if [[ -n "$out" ]]; then
        printf '%s\n' "$out" | tail -n 5 | sed 's/^/    /' >&2
    fi
    return 1
}

# build_hvroute WORK REV TARGET_SUBDIR: builds hvroute in release mode, from the working tree
# when REV is empty, else from a clean `git archive` export of REV unpacked in WORK/src (so
# that edits in the working tree do not leak into benchmark figures), with its own target dir
# target/TARGET_SUBDIR. Sets built_bin (the binary) and build_label (what was built).
build_hvroute() {
    local work="$1" rev="$2" subdir="$3" timeout_s=1800
    if [[ -z "$rev" ]]; then
        log "building hvroute (release) from the working tree"
        timeout "$timeout_s" cargo build --release --quiet || die "cargo build --release failed."
        built_bin="$repo_root/target/release/hvroute"
        build_label="$(git -C "$repo_root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
        if [[ -n "$(git -C "$repo_root" status --porcelain -- src templates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
            build_label="$build_label + uncommitted changes to src/, templates/ or Cargo.*"
        fi
    else
        build_label="$(git -C "$repo_root" rev-parse --short "$rev^{commit}" 2>/dev/null)" \
            || die "--rev $rev is not a commit."
        log "building hvroute (release) from a clean export of $rev ($build_label)"
        mkdir "$work/src"
        git -C "$repo_root" archive "$rev" | tar -x -C "$work/src"
        CARGO_TARGET_DIR="$repo_root/target/$subdir" timeout "$timeout_s" \
            cargo build --release --quiet --manifest-path "$work/src/Cargo.toml" \
            || die "cargo build --release of $rev failed."
        built_bin="$repo_root/target/$subdir/release/hvroute"
    fi
    [[ -x "$built_bin" ]] || die "$built_bin is missing after the build."
}

write_doc_block() {
    local name="$1" text="$2"
    python3 - "$repo_root/docs/benchmarks.md" "$name" "$text" <<'PY' || die "cannot update docs/benchmarks.md"
import os, sys
path, name, block = sys.argv[1:4]
text = open(path).read()
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin not in text or end not in text:
    sys.exit(f"{path} has no {begin} ... {end} block")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
with open(path + ".tmp", "w") as f:
    f.write(f"{head}{begin}\n{block}\n{end}{tail}")
os.replace(path + ".tmp", path)
PY
    log "docs/benchmarks.md updated"
}

# ensure_promtool: Debian 12's promtool (from the `prometheus` package), unpacked with dpkg-deb
# into ${HVROUTE_CACHE:-/var/cache/hvroute-test}/promtool and exported as HVROUTE_PROMTOOL for
# tests/netns_metrics.rs. A promtool already on PATH is used as it is. The package is not
# installed: its postinst runs `invoke-rc.d prometheus start` (an init script is shipped), which
# on a machine without systemd and without a policy-rc.d would start a Prometheus server on
# port 9090 of the host; it would also pull in ~20 JavaScript and font packages.
ensure_promtool() {
    if command -v promtool >/dev/null 2>&1; then
        HVROUTE_PROMTOOL="$(command -v promtool)"
        export HVROUTE_PROMTOOL
        return 0
    fi
    local dir="${HVROUTE_CACHE:-/var/cache/hvroute-test}/promtool"
    if [[ ! -x "$dir/usr/bin/promtool" ]]; then
        need_root
        _apt_update_once
        local tmp
        tmp="$(mktemp -d)"
        # apt-get download runs as _apt where it can: let it write there.
        chmod 755 "$tmp"
        chown _apt "$tmp" 2>/dev/null || true
        log "unpacking promtool from Debian's prometheus package into $dir"
        (cd "$tmp" && apt-get download -qq prometheus) || die "apt-get download prometheus failed."
        mkdir -p "$dir"
        dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -x -C "$dir" ./usr/bin/promtool \
            || die "cannot unpack promtool from $(echo "$tmp"/prometheus_*.deb)."
        rm -rf -- "$tmp"
    fi
    HVROUTE_PROMTOOL="$dir/usr/bin/promtool"
    export HVROUTE_PROMTOOL
}
