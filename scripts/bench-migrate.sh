#!/usr/bin/env bash
# The live-migration benchmark of hvroute: the outage of a VM moved between two hypervisors,
# make-before-break against the plain advertise-at-started strategy, side by side.
# Run `scripts/bench-migrate.sh --help` for details.
set -euo pipefail

log_prefix="bench-migrate"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<'EOF'
Usage: scripts/bench-migrate.sh [--trials N] [--write]
       scripts/bench-migrate.sh --help

Runs the benchmark test `bench_migration_outage` of tests/netns_migrate.rs: a spine and two
hypervisors with real FRR and `hvroute daemon` in network namespaces, a dual-stack VM started on
hv1 through the libvirt hook, and an outside host pinging it every 10 ms from 8 source
addresses (8 flows). Each trial migrates the VM to hv2 in libvirt's hook order:
  migrate/prepare/start/started on hv2 (the copy stays paused, advertised, for 1 s),
  the switchover (source paused, destination resumed, one RARP from the VM's MAC),
  stopped/release on hv1 right after.
Per trial it records the outage (the longest gap between answered probes of any flow) and
how long any flow was black-holed at the paused destination before the switchover.

Four cases per trial, alternating: hv2 with make-before-break (the default) or with the
plain strategy (`migration.make_before_break = false`), against a spine that keeps the oldest
of equal eBGP paths or one that spreads flows over them (multipath-relax, maximum-paths 8).

Options (defaults in brackets):
  --trials N   trials of each case; medians are quoted [5]
  --write      also replace the generated block of docs/benchmarks.md (between
               <!-- bench-migrate:begin --> and <!-- bench-migrate:end -->)

Needs root and Debian's frr package. The namespaces and FRR instances are the test harness's
own (tests/common/fabric.rs) and are removed when each trial ends.
EOF
}

trials=5
write=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    --trials)
        if [[ $# -lt 2 || ! "$2" =~ ^[1-9][0-9]*$ ]]; then
            printf 'bench-migrate: --trials needs a whole number of at least 1 (see --help)\n' >&2
            exit 2
        fi
        trials="$2"
        shift
        ;;
    --write) write=1 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *)
        printf 'bench-migrate: unknown argument %q (see --help)\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

need_root
ensure_packages
ensure_cargo
cd "$repo_root"

rev_label="$(git rev-parse --short HEAD)"
if [[ -n "$(git status --porcelain -- src tests templates Cargo.toml Cargo.lock 2>/dev/null)" ]]; then
    rev_label="$rev_label + uncommitted changes"
fi
out="$(mktemp /tmp/hvroute-bench-migrate.XXXXXX)"
trap 'rm -f "$out"' EXIT
log "running $trials trials of 4 cases (about 15 s each)"
started=$(date +%s)
HVR_BENCH_TRIALS="$trials" RUST_BACKTRACE=0 cargo test --release --test netns_migrate bench_migration_outage \
    -- --ignored --nocapture --test-threads=1 2>&1 | tee "$out" | grep --line-buffered -o 'BENCH {.*' | sed 's/^/bench-migrate: /' || true
grep -q 'test result: ok' "$out" || die "the benchmark test failed; its output: $(tail -20 "$out")"
took=$(($(date +%s) - started))

block="$(python3 - "$out" "$trials" "$took" "$rev_label" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import json, re, statistics, sys
path, trials, took, rev, load = sys.argv[1:6]
# A record may share its line with the test harness's own notes ("has been running ...").
recs = [json.loads(m.group(1)) for l in open(path) for m in [re.search(r"BENCH (\{.*\})", l)] if m]
cases = [("make-before-break", "oldest path"), ("plain", "oldest path"),
         ("make-before-break", "multipath"), ("plain", "multipath")]
print(f"Run of hvroute {rev}: {trials} trials of each case, {took} s in all; load average at the end {load}; "
      "2 cores, shared. Command: `scripts/bench-migrate.sh --trials "
      f"{trials}`.\n")
print("| destination's strategy | spine | trials | outage, median | outage, max | flows black-holed before the switchover (of 8), median | longest black hole before the switchover, max |")
print("|---|---|---|---|---|---|---|")
for strat, spine in cases:
    rs = [r for r in recs if r["strategy"] == strat and r["spine"] == spine]
    if not rs:
        continue
    out = [r["outage_ms"] for r in rs]
    holed = [r["flows_black_holed_before_switchover"] for r in rs]
    silence = [r["silence_before_switchover_ms"] for r in rs]
    print(f"| {strat} | {spine} | {len(rs)} | {statistics.median(out):.0f} ms | {max(out):.0f} ms | "
          f"{statistics.median(holed):g} | {max(silence):.0f} ms |")
PY
)"
printf '\n%s\n' "$block"
if [[ -n "$write" ]]; then
    write_doc_block bench-migrate "$block"
fi
