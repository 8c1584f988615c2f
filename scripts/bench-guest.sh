#!/usr/bin/env bash
# A real guest's figures: how long from `virsh create` until the outside host's ping is
# answered, and what the guest image costs. Run `scripts/bench-guest.sh --help` for details.
set -euo pipefail

log_prefix="bench-guest"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-guest.sh [--cold] [--cases LIST] [--write]
       scripts/bench-guest.sh --help

Runs the real-guest test (tests/slow_guest_boot.rs) and reports:
  - per guest, the time from `virsh create` to the first echo reply the outside host gets
    from behind the spine (the test polls with one `ping -c1 -W1` per address), and the
    median over the guests;
  - the guest image's build time and size (from the cache's build.txt, written by
    scripts/guest-image.sh).
The guests boot under TCG (KVM does not boot a guest on this nested machine class), one at a
time, on one fabric (spine, outside host, one hypervisor with FRR, hvroute's daemon and
libvirtd with hvroute's hook).

Options:
  --cold        build the image from scratch into a temp cache first (about 2 min more),
                so that the build time is a cold one from this run; the temp cache is
                removed at the end. Without it the cached image (target/guest-image or
                $HVROUTE_GUEST_CACHE) is used, built if missing, and its recorded build
                time is reported.
  --cases LIST  comma-separated subset of dual,v4,v6,drive-only,nocloud [all]
  --write       also replace the generated block of docs/benchmarks.md (between
                <!-- bench-guest:begin --> and <!-- bench-guest:end -->)

Needs root (network namespaces, libvirt, debootstrap). Builds the test in debug mode.
EOF
}

cold=""
cases=""
write=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --cold) cold=1 ;;
    --cases)
        [[ $# -ge 2 && "$2" =~ ^[a-z0-9-]+(,[a-z0-9-]+)*$ ]] ||
            { echo "bench-guest: --cases needs a list like dual,v6 (see --help)" >&2; exit 2; }
        cases="$2"
        shift
        ;;
    --write) write=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'bench-guest: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

need_root
ensure_cargo
ensure_libvirt
cd "$repo_root"

work="$(mktemp -d /tmp/hvr-bguest.XXXXXX)"
trap 'rm -rf -- "$work"' EXIT
cache="${HVROUTE_GUEST_CACHE:-$repo_root/target/guest-image}"
if [[ -n "$cold" ]]; then
    cache="$work/image"
    log "cold image build into $cache"
    HVROUTE_GUEST_CACHE="$cache" "$repo_root/scripts/guest-image.sh"
fi

log "building the test"
cargo test --no-run --quiet --test slow_guest_boot 2>/dev/null || die "cargo test --no-run failed."
log "booting the guests (one at a time, TCG)"
rc=0
HVROUTE_GUEST_CACHE="$cache" HVROUTE_GUEST_CASES="$cases" RUST_BACKTRACE=0 \
    cargo test --quiet --test slow_guest_boot -- --nocapture --test-threads=1 >"$work/out" 2>&1 || rc=$?
grep '^guest-boot:\|^guest-image:' "$work/out" || true
[[ $rc -eq 0 ]] || {
    tail -n 60 "$work/out" >&2
    die "the real-guest test failed (output above)."
}

# fact KEY: KEY's value in the cache's build.txt (written by scripts/guest-image.sh), or "?".
fact() {
    local v
    v="$(sed -n "s/^$1=//p" "$cache/build.txt" 2>/dev/null | head -n1)"
    echo "${v:-?}"
}
mib() {
    local b
    b="$(fact "$1")"
    [[ "$b" =~ ^[0-9]+$ ]] && echo "$((b / 1048576)) MiB" || echo "?"
}
mapfile -t per_case < <(sed -n 's/^guest-boot: \([a-z0-9-]*\) create-to-ping \([0-9.]*\) (every .*/\1 \2/p' "$work/out")
[[ ${#per_case[@]} -gt 0 ]] || die "the test printed no create-to-ping figure."
median="$(printf '%s\n' "${per_case[@]}" | awk '{ print $2 }' | sort -n |
    awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
rows=""
for line in "${per_case[@]}"; do
    rows+="| ${line% *} | ${line#* } s |"$'\n'
done
when="$(date -u +%Y-%m-%d)"
rev="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
build_kind="recorded in the cache"
[[ -n "$cold" ]] && build_kind="cold, this run"
block="Run of $when on $rev (\`scripts/bench-guest.sh${cold:+ --cold}${cases:+ --cases $cases}\`), TCG, one guest at a time.

| guest | \`virsh create\` to the first answered ping |
| --- | --- |
${rows}| **median** | **$median s** |

| image | |
| --- | --- |
| build time ($build_kind) | $(fact build_seconds) s |
| rootfs.raw, apparent size | $(mib image_bytes) |
| rootfs.raw, allocated | $(mib image_allocated_bytes) |
| vmlinuz + initrd.img | $(mib kernel_initrd_bytes) |
| guest kernel | $(fact kernel) |"
echo
echo "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-guest "$block"
fi
