#!/usr/bin/env bash
# Fuzz the parsers of untrusted input for SECONDS each (default 30):
#   image_read    hvroute::configdrive::image::read (ISO 9660 and FAT images)
#   network_data  hvroute::configdrive::content::parse_network_data
#
#   scripts/fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (rustup) and cargo-fuzz (installed here if missing). The build
# goes to ${HVROUTE_CACHE:-/var/cache/hvroute-test}/fuzz-target, outside the repository, so a
# fresh clone on the same machine reuses it (a cold build takes about 6 minutes). Each target
# starts from a copy of its committed corpus (fuzz/corpus/TARGET) in a temporary directory,
# so runs do not grow the repository. Exits non-zero on a crash, a hang or an out-of-memory,
# and prints the input that caused it (kept under fuzz/artifacts/TARGET/).
set -euo pipefail
log_prefix=fuzz
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

seconds="${1:-30}"
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || die "usage: scripts/fuzz.sh [SECONDS] (a whole number > 0)"

ensure_cargo
if ! cargo +nightly --version >/dev/null 2>&1; then
    die "the nightly toolchain is missing; install it with: rustup toolchain install nightly"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || die "cargo install cargo-fuzz failed."
fi

# Inputs up to this size: the seeds are ISO and FAT images of at most 80 KiB.
declare -A max_len=([image_read]=131072 [network_data]=16384)

cd "$repo_root"
target_dir="${HVROUTE_CACHE:-/var/cache/hvroute-test}/fuzz-target"
mkdir -p "$target_dir"
work="$(mktemp -d -t hvroute-fuzz.XXXXXX)"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
log "building the fuzz targets (nightly, sanitizer=address)"
cargo +nightly fuzz build -O --target-dir "$target_dir" || die "cargo fuzz build failed."
log "built in $((SECONDS - start)) s"

failed=()
for target in image_read network_data; do
    corpus="$work/$target"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    cp -r "fuzz/corpus/$target/." "$corpus/"
    log "$target: ${seconds} s from $(find "$corpus" -type f | wc -l) seeds"
    run_start=$SECONDS
    if ! cargo +nightly fuzz run -O --target-dir "$target_dir" "$target" "$corpus" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -max_len="${max_len[$target]}" -print_final_stats=1 \
        >"$work/$target.log" 2>&1; then
        tail -n 40 "$work/$target.log" >&2
        crash="$(grep -o 'Test unit written to [^ ]*' "$work/$target.log" | tail -n 1 | sed 's/Test unit written to //')"
        warn "$target failed; the input that did it: ${crash:-see the log above}"
        if [[ -n "$crash" && -f "$crash" ]]; then
            od -A d -t x1z "$crash" | head -n 20 >&2
        fi
        failed+=("$target")
        continue
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$target.log" | grep -o '[0-9]*$' || true)"
    log "$target: no crash in $((SECONDS - run_start)) s (${runs:-?} runs)"
done

log "total $((SECONDS - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    die "crashes in: ${failed[*]}"
fi
