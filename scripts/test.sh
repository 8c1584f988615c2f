#!/usr/bin/env bash
# Format check, clippy and the test suite of hvroute. Run `scripts/test.sh --help` for details.
set -euo pipefail

log_prefix="test"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/test.sh [--quick]

Installs what the checks need (Debian packages; libvirt and QEMU from Debian 12 for
tests/netns_libvirt.rs, which downgrades a newer qemu-utils to Debian 12's; a Rust >= 1.85
toolchain on PATH; for the full run, cargo-deb for tests/slow_package.rs), then, in the
repository:
  1. cargo fmt --check
  2. cargo clippy --all-targets -- -D warnings
  3. the tests, with RUST_BACKTRACE=0, --no-fail-fast (a failing test binary does not
     stop the others, so one run shows every failure) and -- --test-threads=2:
       full (default)  cargo test                 everything: unit, doc and all tests/*.rs,
                                                  including the slow_* ones
       --quick         cargo test --lib --bins --test NAME...
                                                  unit tests plus every tests/NAME.rs whose
                                                  name does not start with slow_
  4. full run only: scripts/fuzz.sh 30, cargo-fuzz on the ConfigDrive image reader and the
     network_data.json parser, 30 s each (nightly toolchain; the build is cached outside
     the repository, in ${HVROUTE_CACHE:-/var/cache/hvroute-test}/fuzz-target)
Before the tests it runs scripts/cloud-init-fetch.sh (cloud-init 25.1 and 22.4, cached in
${HVROUTE_CACHE:-/var/cache/hvroute-test}/cloud-init) for tests/configdrive_cloudinit.rs.
The full run boots real Debian 13 guests (tests/slow_guest_boot.rs, 8 to 9 min), whose image
scripts/guest-image.sh builds on first use (a few minutes; cached in
${HVROUTE_GUEST_CACHE:-${HVROUTE_CACHE:-/var/cache/hvroute-test}/guest-image}, which this
script sets; scripts/guest-image.sh alone caches in target/guest-image).
It unpacks Debian 12's promtool (ensure_promtool in scripts/common.sh; cached in
${HVROUTE_CACHE:-/var/cache/hvroute-test}/promtool) for tests/netns_metrics.rs.
Every step runs even if an earlier one failed; a summary line at the end says which failed.
Exits 0 only if all steps pass.

Must run as root: the namespace tests create network namespaces.
To run one test by hand:  cargo test --test NAME -- --test-threads=2 TESTNAME
EOF
}

quick=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --quick) quick=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'test: unknown argument %q (usage: scripts/test.sh [--quick])\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

export RUST_BACKTRACE=0

need_root
# xorriso, mtools, dosfstools: ConfigDrive images (built by xorriso; read back by xorriso,
# mtools and genisoimage's isoinfo in tests/configdrive_image.rs). util-linux: blkid.
# iptables (iptables-nft): the foreign rules of tests/netns_guard.rs. curl: the metrics
# scrapes of tests/netns_metrics.rs, checked by promtool (ensure_promtool).
# lintian, debootstrap, systemd (systemd-analyze): tests/slow_package.rs checks the .deb,
# verifies its unit and installs it into a fresh Debian 12 root; scripts/guest-image.sh
# (run by tests/slow_guest_boot.rs) debootstraps the Debian 13 guest.
ensure_packages xorriso mtools dosfstools genisoimage util-linux iptables curl lintian debootstrap systemd
ensure_promtool
ensure_cargo
# cargo-deb: scripts/package.sh, run by tests/slow_package.rs (full run only).
if [[ -z "$quick" ]]; then
    ensure_cargo_deb
fi
ensure_libvirt
# The Debian 13 guest image of tests/slow_guest_boot.rs: kept beside the other caches, outside
# the repository, so that a fresh clone on the same machine (CI) reuses it. Without it,
# scripts/guest-image.sh builds it (a few minutes). Set HVROUTE_GUEST_CACHE to choose.
export HVROUTE_GUEST_CACHE="${HVROUTE_GUEST_CACHE:-${HVROUTE_CACHE:-/var/cache/hvroute-test}/guest-image}"
# cloud-init 25.1 and 22.4 for tests/configdrive_cloudinit.rs (cached; netplan.io and the
# Python modules cloud-init imports are installed with them).
"$repo_root/scripts/cloud-init-fetch.sh"
cd "$repo_root"

for tool in fmt clippy; do
    if ! cargo "$tool" --version >/dev/null 2>&1; then
        die "'cargo $tool' is not installed; add it to the Rust toolchain (rustup component add ${tool/fmt/rustfmt})."
    fi
done
log "$(rustc --version), $(cargo --version)"

# cargo test's arguments for --quick: --lib/--bins if the crate has them, and --test NAME for
# every integration test target whose name and file do not start with slow_.
quick_test_args() {
    cargo metadata --no-deps --format-version 1 --manifest-path "$repo_root/Cargo.toml" |
        python3 -c '
import json, os, sys
meta = json.load(sys.stdin)
args, tests = [], []
for pkg in meta["packages"]:
    for t in pkg["targets"]:
        kinds = t["kind"]
        base = os.path.basename(t["src_path"])
        if "lib" in kinds or "rlib" in kinds or "proc-macro" in kinds:
            if "--lib" not in args:
                args.append("--lib")
        elif "bin" in kinds:
            if "--bins" not in args:
                args.append("--bins")
        elif "test" in kinds:
            if not t["name"].startswith("slow_") and not base.startswith("slow_"):
                tests.append(t["name"])
for name in sorted(tests):
    args += ["--test", name]
print("\n".join(args))
'
}

declare -a step_names=() step_results=()
total_passed=0
total_failed=0
total_ignored=0
test_binaries=0

# run_step NAME CMD...: run CMD, record ok/FAILED under NAME.
run_step() {
    local name="$1"
    shift
    local shown="$*"
    log "== $name: ${shown/#cargo_test/cargo test}"
    local rc=0
    "$@" || rc=$?
    step_names+=("$name")
    if [[ $rc -eq 0 ]]; then
        step_results+=(ok)
        log "== $name: ok"
    else
        step_results+=("FAILED")
        log "== $name: FAILED (exit $rc)"
    fi
}

# cargo_test ARGS...: cargo test, its output shown and also counted.
# shellcheck disable=SC2317  # called through run_step
cargo_test() {
    local out rc=0
    out="$(mktemp)"
    cargo test "$@" 2>&1 | tee "$out" || rc=$?
    local line p f i
    while IFS= read -r line; do
        # test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...
        if [[ "$line" =~ ([0-9]+)\ passed\;\ ([0-9]+)\ failed\;\ ([0-9]+)\ ignored ]]; then
            p="${BASH_REMATCH[1]}" f="${BASH_REMATCH[2]}" i="${BASH_REMATCH[3]}"
            total_passed=$((total_passed + p))
            total_failed=$((total_failed + f))
            total_ignored=$((total_ignored + i))
            test_binaries=$((test_binaries + 1))
        fi
    done < <(grep -E '^test result: ' "$out" || true)
    rm -f -- "$out"
    return "$rc"
}

run_step "cargo fmt" cargo fmt --check
run_step "cargo clippy" cargo clippy --all-targets -- -D warnings

if [[ -n "$quick" ]]; then
    mapfile -t targs < <(quick_test_args)
    if [[ ${#targs[@]} -eq 0 ]]; then
        die "cargo metadata lists no test targets."
    fi
    run_step "cargo test (quick)" cargo_test --no-fail-fast "${targs[@]}" -- --test-threads=2
else
    run_step "cargo test" cargo_test --no-fail-fast -- --test-threads=2
    run_step "fuzz" "$repo_root/scripts/fuzz.sh" 30
fi

failed_steps=()
summary=""
for i in "${!step_names[@]}"; do
    summary+="${summary:+, }${step_names[i]} ${step_results[i]}"
    [[ "${step_results[i]}" == ok ]] || failed_steps+=("${step_names[i]}")
done
mode="full"
[[ -n "$quick" ]] && mode="quick"
counts="tests: $total_passed ok, $total_failed failing, $total_ignored ignored in $test_binaries test binaries"

echo
if [[ ${#failed_steps[@]} -eq 0 ]]; then
    log "SUCCESS ($mode run): $summary; $counts"
    exit 0
fi
log "FAILURE ($mode run): $summary; $counts"
exit 1
