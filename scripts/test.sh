#!/usr/bin/env bash
# The whole meshd test suite, from a fresh clone: installs what the tests need that a fresh
# machine lacks, checks formatting and lints, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ip >/dev/null || need_apt+=(iproute2)
# Traffic-capture tests install nftables rules inside network namespaces they create.
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
# The unit-file test runs systemd-analyze; the package test lints the .deb.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v lintian >/dev/null || need_apt+=(lintian)
# The fault tests use openssl's s_client/s_server as peers that stall HTTP/2 after TLS.
command -v openssl >/dev/null || need_apt+=(openssl)
# The admin page test drives a real headless Chromium through chromedriver.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi
# The HBONE interop test drives our server with an independent HTTP/2 client (Python's h2).
python3 -c 'import h2' 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check h2

# The istiod harness (integration/istiod) is Istio's own discovery and CA servers, in Go, and
# the SPIRE tests run SPIRE's own server and agent: the project's machines have Go 1.26
# (README, "Tests"); without it those tests cannot run.
if ! command -v go >/dev/null; then
    echo "scripts/test.sh: Go 1.26 is needed to build the istiod harness (integration/istiod) and SPIRE (integration/spire): \`go\` is not on PATH" >&2
    exit 1
fi
# Built here so the first test that starts it does not pay a cold build (about 7 minutes on
# two cores) inside its timeout; the tests rebuild it only when its sources change. The path
# is the one integration/istiod.rs uses: <target dir>/istiod-harness/istiod-harness.
harness_out="$(realpath -m "${CARGO_TARGET_DIR:-target}")/istiod-harness"
mkdir -p "$harness_out"
(cd integration/istiod && GOTOOLCHAIN=local go build -o "$harness_out/istiod-harness" . &&
    test -z "$(gofmt -l .)" && GOTOOLCHAIN=local go vet .) ||
    { echo "scripts/test.sh: the istiod harness does not build, is not gofmt'd or fails go vet" >&2; exit 1; }
# SPIRE (integration/spire: a go.mod naming spire-server and spire-agent v1.13.3 as tools),
# the identity provider of the SPIRE tests, built beside it: about 8 to 9 minutes cold on two
# cores, seconds once cached. The path is the one integration/spire.rs uses: <target dir>/spire/.
spire_out="$(realpath -m "${CARGO_TARGET_DIR:-target}")/spire"
mkdir -p "$spire_out"
(cd integration/spire && GOTOOLCHAIN=local go build -o "$spire_out/" \
    github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent) ||
    { echo "scripts/test.sh: SPIRE (integration/spire) does not build" >&2; exit 1; }

# cargo-deny, pinned: a newer one may read deny.toml differently. About 5 minutes to build on
# two cores (once; cargo install keeps it in ~/.cargo/bin).
CARGO_DENY_VERSION=0.20.2

# The package test builds a .deb with cargo-deb (pinned in scripts/package.sh).
cargo deb --version >/dev/null 2>&1 || cargo install cargo-deb --locked --version "$(sed -n 's/^CARGO_DEB_VERSION=//p' scripts/package.sh)"

cargo fmt --all -- --check
# A merge that left its conflict markers in a tracked file (docs included) fails here, not in review.
if git grep -nE '^(<<<<<<<|>>>>>>>) |^=======$' -- . ':!*.png' 2>/dev/null; then
    echo "scripts/test.sh: conflict markers above: a merge was committed unresolved" >&2
    exit 1
fi
# Supply chain (deny.toml): licences, bans (duplicate versions, serde_yaml), sources (crates.io
# only) on every run; no network needed.
cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION" ||
    cargo install cargo-deny --locked --version "$CARGO_DENY_VERSION"
cargo deny --locked check -D warnings licenses bans sources
scripts/advisories.sh
# Test-only crates (the WebDriver client, benchmark and property-test frameworks) stay out of
# what the meshd binary links: dev-dependencies only.
normal_deps=$(cargo tree --locked -e normal -p meshd --features quic --prefix none)
if grep -E '^(fantoccini|webdriver|criterion|proptest|stats_alloc) ' <<<"$normal_deps"; then
    echo "scripts/test.sh: a test-only crate is in meshd's normal dependencies (above)" >&2
    exit 1
fi
# The end-to-end benchmark is run by hand (benches/e2e/run.sh); CI only checks its syntax.
bash -n benches/e2e/run.sh
# HBONE over QUIC is a cargo feature (`quic`), off in the default build and the .deb. The suite
# lints, builds and tests the workspace once, with it on, so its tests run; the default build's
# own code paths are linted on the two crates where they differ (meshd-hbone, meshd-proxy) and
# tested after the suite.
features=(--features meshd/quic,meshd-integration/quic)
cargo clippy --workspace --all-targets --locked "${features[@]}" -- -D warnings
cargo clippy -p meshd-hbone -p meshd-proxy --all-targets --locked -- -D warnings
# A hung test is a failure, not a CI run that never ends: the whole run gets a bound (cargo test
# names a test running for over 60 s in its output). Built, the suite takes under 15 minutes
# on two CPUs; the bound leaves room for a cold build.
limit="${MESHD_TEST_TIMEOUT:-60m}"
if cargo nextest --version >/dev/null 2>&1; then
    timeout -k 30s "$limit" cargo nextest run --workspace --locked --no-fail-fast "${features[@]}"
else
    timeout -k 30s "$limit" cargo test --workspace --locked --no-fail-fast "${features[@]}"
fi || { rc=$?; [ "$rc" = 124 ] && echo "test run exceeded $limit: a test hung" >&2; exit "$rc"; }
# Without `quic` (the .deb's build): HTTP/3 is refused with its reason, never sent over HTTP/2.
# One small test of meshd-hbone alone (its dependencies with hbone's own features: about a
# minute from empty on two cores, seconds once built).
cargo test -p meshd-hbone --locked --test no_quic
# The fuzz targets' committed corpus was replayed above (fuzz/bodies/tests/corpus.rs). A
# libFuzzer smoke needs cargo-fuzz and an instrumented release build of every dependency
# (about 10 minutes of 2 cores, more than the rest of the suite), so it runs when asked.
if [ "${MESHD_FUZZ_SMOKE:-0}" = 1 ]; then
    scripts/fuzz.sh smoke 5
fi
