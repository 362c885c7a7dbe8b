#!/usr/bin/env bash
# meshd's fuzz targets (fuzz/, cargo-fuzz on the stable toolchain, no sanitizer).
#
#   scripts/fuzz.sh list                     the targets
#   scripts/fuzz.sh smoke [SECONDS]          each target for SECONDS (default 5) from the
#                                            committed corpus, which is left unchanged (CI)
#   scripts/fuzz.sh run TARGET [SECONDS]     one target for SECONDS (default 600); new inputs go
#                                            to fuzz/corpus/TARGET, crashes to fuzz/artifacts/
#   scripts/fuzz.sh cmin TARGET              minimise fuzz/corpus/TARGET in place
#
# Installs cargo-fuzz when missing (crates.io, pinned). `-s none`: no sanitizer, so no nightly
# flag is needed; meshd has no unsafe code but bin/meshd's malloc_trim call, outside every
# target, so AddressSanitizer would mostly watch its dependencies, at ~2x the cost per input. Nothing here sets RUSTC_BOOTSTRAP.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-fuzz 0.13 builds `-s none` targets on stable Rust.
CARGO_FUZZ_VERSION=0.13.2
TARGETS=(config_load identity_x509 hbone_server socks5 rbac_decide)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# libFuzzer options every run gets: inputs up to 64 KiB, a slow input is a finding past 10 s,
# and no leak detector (it needs LeakSanitizer, which `-s none` does not link).
common=(-max_len=65536 -timeout=10 -detect_leaks=0)

case "${1:-}" in
list)
    printf '%s\n' "${TARGETS[@]}"
    ;;
smoke)
    seconds=${2:-5}
    cargo fuzz build -s none
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    for target in "${TARGETS[@]}"; do
        # New inputs go to a scratch directory listed first; the committed corpus is only read.
        mkdir -p "$scratch/$target"
        cargo fuzz run -s none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
            "${common[@]}" -max_total_time="$seconds" -print_final_stats=1 2>&1 |
            grep -E '^(stat::number_of_executed_units|Done|==|SUMMARY)|INFO: Loaded|cov:.*DONE' || true
        [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz smoke: $target failed" >&2; exit 1; }
    done
    ;;
run)
    target=${2:?target}
    seconds=${3:-600}
    cargo fuzz run -s none "$target" "fuzz/corpus/$target" -- \
        "${common[@]}" -max_total_time="$seconds" -print_final_stats=1
    ;;
cmin)
    target=${2:?target}
    cargo fuzz cmin -s none "$target" "fuzz/corpus/$target" -- "${common[@]}"
    ;;
*)
    sed -n '2,13p' "$0"
    exit 2
    ;;
esac
