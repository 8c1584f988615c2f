#!/usr/bin/env bash
# Build hvroute's Debian package with cargo-deb. Run `scripts/package.sh --help` for details.
set -euo pipefail

log_prefix="package"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
    cat <<EOF
Usage: scripts/package.sh [--binary FILE]

Builds target/debian/hvroute_<version>_amd64.deb (docs/packaging.md says what it holds):
  1. cargo build --release, or with --binary FILE no build: FILE (an hvroute built from
     this tree, e.g. the debug binary of a test run) is packaged instead, which saves
     tests/slow_package.rs a release build of several minutes;
  2. runs that binary to generate, under target/pkg/: the manual pages (hvroute man),
     the bash and zsh completions (hvroute completions), the libvirt hook script
     (hvroute hook install --bin /usr/bin/hvroute, the same script the command writes on a
     host) and the Debian changelog for this version;
  3. cargo deb --no-build, with the metadata in Cargo.toml's [package.metadata.deb] and
     the unit, example config and maintainer script in debian/.
Installs cargo-deb $cargo_deb_version with \`cargo install --locked\` when \`cargo deb\` is
missing. Needs no root unless a Rust toolchain must be installed. Prints the .deb's path
on the last line of stdout.
EOF
}

binary=""
while [[ $# -gt 0 ]]; do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --binary)
        [[ $# -ge 2 && -x "$2" ]] || {
            printf 'package: --binary needs an executable file (got %q)\n' "${2:-}" >&2
            exit 2
        }
        binary="$(realpath -- "$2")"
        shift
        ;;
    *)
        printf 'package: unknown argument %q (usage: scripts/package.sh [--binary FILE])\n' "$1" >&2
        exit 2
        ;;
    esac
    shift
done

ensure_cargo
ensure_cargo_deb
cd "$repo_root"

meta="$(cargo metadata --no-deps --format-version 1)" || die "cargo metadata failed."
version="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["version"])' <<<"$meta")"
target_dir="$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta")"
# cargo-deb takes the binary from CARGO_TARGET_DIR/release: the real one, or a staging
# directory holding the --binary FILE.
deb_target_dir="$target_dir"
if [[ -z "$binary" ]]; then
    log "building hvroute $version (release)"
    cargo build --release --quiet || die "cargo build --release failed."
else
    deb_target_dir="$repo_root/target/pkg-stage"
    log "packaging $binary instead of a release build"
    rm -rf -- "$deb_target_dir"
    mkdir -p "$deb_target_dir/release"
    cp -- "$binary" "$deb_target_dir/release/hvroute"
fi
bin="$deb_target_dir/release/hvroute"
[[ -x "$bin" ]] || die "$bin is missing after the build."

# What cargo-deb picks up from target/pkg (Cargo.toml's assets say where each goes).
gen="$repo_root/target/pkg"
rm -rf -- "$gen"
mkdir -p "$gen/man" "$gen/completions" "$gen/hook"
log "generating the manual pages, completions and hook script with $bin"
"$bin" man --dir "$gen/man" || die "hvroute man failed."
"$bin" completions bash >"$gen/completions/hvroute.bash" || die "hvroute completions bash failed."
"$bin" completions zsh >"$gen/completions/_hvroute" || die "hvroute completions zsh failed."
"$bin" hook install --dir "$gen/hook" --bin /usr/bin/hvroute >/dev/null \
    || die "hvroute hook install failed."
# A Debian changelog with one entry for this version, dated by the last commit.
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
date="$(git log -1 --format=%aD 2>/dev/null || date -R)"
cat >"$gen/changelog" <<EOF
hvroute ($version) unstable; urgency=medium

  * hvroute $version, built from commit $commit.

 -- hvroute developers <hvroute@example.invalid>  $date
EOF
# A native package's changelog is changelog.gz (-n: no name or time stamp in it).
gzip -9n "$gen/changelog"
log "$(find "$gen" -type f | wc -l) files generated in target/pkg ($(find "$gen/man" -type f | wc -l) manual pages)"

log "cargo deb --no-build"
deb_out="$(CARGO_TARGET_DIR="$deb_target_dir" cargo deb --no-build --quiet --output "$target_dir/debian/")" \
    || die "cargo deb failed."
deb="$(printf '%s\n' "$deb_out" | tail -n 1)"
[[ -f "$deb" ]] || die "cargo deb reported no package (it said: $deb_out)."
log "built $deb ($(du -k "$deb" | cut -f1) KiB)"
echo "$deb"
