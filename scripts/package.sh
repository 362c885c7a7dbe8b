#!/usr/bin/env bash
# Builds meshd's .deb (cargo-deb, metadata in bin/meshd/Cargo.toml), lists it, lints it, then
# tries it without touching this machine: the package is unpacked into a scratch root, the
# installed binary validates the installed example configuration, and `meshd run` starts on a
# copy of it (dev-CA identity in the scratch root, loopback listeners on ports the system picks)
# until it is ready, then stops on SIGTERM with status 0.
#
#   scripts/package.sh              build the dev-profile binary, package it, check it
#   scripts/package.sh --release    the same with the release profile: the .deb to ship
#   DEB_FEATURES=quic scripts/package.sh ...     meshd's cargo features (none by default: the
#                                   .deb ships without the experimental HBONE over QUIC); the
#                                   licence notices follow them
#   scripts/package.sh --no-build   package target/<profile>/meshd as it is (the integration
#                                   test does this: cargo test has just built it)
#
# Dev profile by default: CI packages on 2 cores, where the test suite has already built the dev
# binary (dependencies at opt-level 2) and a release build of the workspace is another build from
# scratch. What is checked here (contents, conffiles, maintainer scripts, lintian, that the
# installed binary runs on the installed configuration) does not depend on the profile.
#
# Installs what it needs when missing: cargo-deb (crates.io, pinned: newer versions may refuse
# the dev profile) and lintian (Debian). Prints the .deb's path on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

# cargo-deb 3.8 packages a dev-profile build with a warning; later versions may make it an error.
CARGO_DEB_VERSION=3.8.0
# How long `meshd run` gets to print its ready line (a first start makes the dev CA).
READY_TIMEOUT_SECS=60

profile=dev
build=yes
for arg in "$@"; do
    case "$arg" in
    --release) profile=release ;;
    --no-build) build=no ;;
    *)
        echo "usage: $0 [--release] [--no-build]" >&2
        exit 2
        ;;
    esac
done
profile_dir=$([ "$profile" = release ] && echo release || echo debug)
target_dir=${CARGO_TARGET_DIR:-$PWD/target}

step() { printf '\n== %s\n' "$*"; }
fail() {
    echo "package.sh: FAILED: $*" >&2
    exit 1
}

if ! cargo deb --version >/dev/null 2>&1; then
    step "installing cargo-deb $CARGO_DEB_VERSION"
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
if ! command -v lintian >/dev/null; then
    step "installing lintian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lintian
fi

if [ "$build" = yes ]; then
    step "building meshd ($profile profile)"
    cargo build -p meshd --locked --profile "$profile" ${DEB_FEATURES:+--features "$DEB_FEATURES"}
fi
[ -x "$target_dir/$profile_dir/meshd" ] || fail "$target_dir/$profile_dir/meshd is missing: build it first"

step "man pages and shell completions"
# From the binary being packaged, so they describe exactly its commands and flags.
generated="$target_dir/$profile_dir/meshd-generated"
rm -rf "$generated"
"$target_dir/$profile_dir/meshd" generate man "$generated/man" >/dev/null
# -n: no name or time in the header, so the package is reproducible (lintian checks it).
gzip -9n "$generated"/man/*.1
"$target_dir/$profile_dir/meshd" generate completions "$generated/completions" >/dev/null

step "third-party licence notices"
# Every crate linked into the binary, with the licence and notice files it ships (the MIT and
# BSD licences require their notices to travel with it); cargo-deb ships the file as
# /usr/share/doc/meshd/THIRD-PARTY-LICENSES (bin/meshd/Cargo.toml, assets).
# shellcheck disable=SC2086 # a comma-separated list, one word
python3 scripts/third-party-licenses.py "$target_dir/$profile_dir/THIRD-PARTY-LICENSES" ${DEB_FEATURES:-} ||
    fail "could not collect the third-party licence notices"

step "packaging"
out="$target_dir/debian"
mkdir -p "$out"
# cargo-deb prints the path of the .deb on its last line.
deb=$(cargo deb -p meshd --no-build --profile "$profile" --locked -o "$out/" | tail -n 1)
[ -f "$deb" ] || fail "cargo deb made no package (it said: $deb)"

step "contents of $deb"
dpkg-deb -c "$deb"
dpkg-deb -I "$deb"

scratch=$(mktemp -d "${TMPDIR:-/tmp}/meshd-package.XXXXXX")
meshd_pid=
cleanup() {
    if [ -n "$meshd_pid" ]; then kill -KILL "$meshd_pid" 2>/dev/null || true; fi
    rm -rf "$scratch"
}
trap cleanup EXIT

step "checking what the package installs"
control="$scratch/control"
dpkg-deb -e "$deb" "$control"
root="$scratch/root"
dpkg-deb -x "$deb" "$root"
for path in usr/bin/meshd usr/lib/systemd/system/meshd.service etc/meshd/meshd.yaml \
    etc/meshd/conf.d/README usr/share/doc/meshd/copyright usr/share/doc/meshd/changelog.Debian.gz \
    usr/share/lintian/overrides/meshd usr/share/doc/meshd/examples/capture.conf \
    usr/share/doc/meshd/examples/original-source.conf \
    usr/share/man/man1/meshd.1.gz usr/share/man/man1/meshd-run.1.gz \
    usr/share/bash-completion/completions/meshd usr/share/zsh/vendor-completions/_meshd \
    usr/share/fish/vendor_completions.d/meshd.fish \
    usr/share/doc/meshd/THIRD-PARTY-LICENSES; do
    [ -e "$root/$path" ] || fail "the package has no /$path"
done
# The notices name each crate linked in, and carry the texts (e.g. rustls's MIT notice).
for crate in rustls tokio h2; do
    grep -q "^$crate [0-9]" "$root/usr/share/doc/meshd/THIRD-PARTY-LICENSES" ||
        fail "THIRD-PARTY-LICENSES does not name $crate"
done
grep -q "Permission is hereby granted" "$root/usr/share/doc/meshd/THIRD-PARTY-LICENSES" ||
    fail "THIRD-PARTY-LICENSES carries no MIT notice"
# The user's documentation ships; the developers' pages (benchmark figures, test guide) do not.
for doc in README.md SECURITY.md docs/configuration.md docs/operations.md docs/status-page.png \
    docs/identity.md docs/HBONE.md; do
    cmp "$root/usr/share/doc/meshd/$doc" "$doc" || fail "the package's /usr/share/doc/meshd/$doc differs from $doc"
done
for doc in docs/performance.md docs/testing.md docs/architecture.md; do
    [ ! -e "$root/usr/share/doc/meshd/$doc" ] || fail "the package ships the developers' $doc"
done
zgrep -q '^.SH "EXIT STATUS"' "$root/usr/share/man/man1/meshd.1.gz" ||
    fail "the man page has no EXIT STATUS section"
cmp "$root/usr/lib/systemd/system/meshd.service" config/meshd.service ||
    fail "the packaged unit differs from config/meshd.service"
for conffile in /etc/meshd/meshd.yaml /etc/meshd/conf.d/README; do
    grep -qx "$conffile" "$control/conffiles" || fail "$conffile is not a conffile"
done
grep -q '^Depends:.*adduser' "$control/control" || fail "no Depends on adduser (postinst uses it)"
for script in postinst prerm postrm; do
    [ -x "$control/$script" ] || fail "no $script"
    sh -n "$control/$script" || fail "$script is not valid sh"
done
grep -q 'adduser --system --group --no-create-home --home /var/lib/meshd' "$control/postinst" ||
    fail "postinst does not create the meshd system user"
# Installed, not started: meshd needs an identity and a mesh configuration first.
if grep -Eq 'deb-systemd-invoke +(start|restart)|systemctl .*(start|enable)' "$control/postinst"; then
    fail "postinst starts or enables meshd.service"
fi

step "lintian"
# The package's own overrides (packaging/lintian/meshd) say why each exception is one; they are
# listed too (O:), so none hides.
lintian_out="$scratch/lintian.txt"
lintian_status=0
lintian --show-overrides "$deb" >"$lintian_out" 2>&1 || lintian_status=$?
cat "$lintian_out"
if grep -q '^E:' "$lintian_out"; then
    fail "lintian reports errors"
fi
# Status 2 is "tags at or above --fail-on" (errors, overridden ones included with
# --show-overrides: the E: lines above decide); 1 is lintian's own failure.
[ "$lintian_status" -eq 0 ] || [ "$lintian_status" -eq 2 ] || fail "lintian did not run (status $lintian_status)"

# The daemon's configuration layers read MESHD_* variables: this check uses the files alone.
while read -r var; do unset "$var"; done < <(compgen -e | grep '^MESHD_' || true)

step "meshd validate on the installed example configuration"
# Paths rewritten into the scratch root; everything else exactly as shipped.
sed "s#/etc/meshd#$root/etc/meshd#g" "$root/etc/meshd/meshd.yaml" >"$scratch/validate.yaml"
"$root/usr/bin/meshd" --version
"$root/usr/bin/meshd" validate --daemon-config "$scratch/validate.yaml" ||
    fail "meshd validate refused the example configuration"

step "meshd run on the installed example configuration"
# The example with its identity swapped for a dev CA in the scratch root (the shipped identity
# needs certificates this machine does not have) and every listener on loopback, on a port the
# system picks so that nothing else on this machine is disturbed. Top-level keys are dropped by
# name; the rest of the example (configDir, trust domain, plugins) is used as shipped.
run_yaml="$scratch/run.yaml"
awk '/^[A-Za-z]/ { skip = ($1 == "identity:" || $1 == "listen:" || $1 == "listeners:") }
     /^#/ { next }
     !skip' "$scratch/validate.yaml" >"$run_yaml"
cat >>"$run_yaml" <<EOF
identity:
  devCa: {dir: $root/var/lib/meshd/dev-ca, namespace: default, serviceAccount: meshd}
listen:
  hbone: 127.0.0.1:0
  admin: 127.0.0.1:0
  metrics: 127.0.0.1:0
  readiness: 127.0.0.1:0
  socks5: 127.0.0.1:0
EOF
cat "$run_yaml"
RUST_LOG=info "$root/usr/bin/meshd" run --config "$run_yaml" >"$scratch/stdout" 2>"$scratch/stderr" &
meshd_pid=$!
deadline=$((SECONDS + READY_TIMEOUT_SECS))
until grep -q '^meshd ready ' "$scratch/stdout"; do
    if ! kill -0 "$meshd_pid" 2>/dev/null; then
        cat "$scratch/stderr" >&2
        fail "meshd run exited before it was ready"
    fi
    if ((SECONDS >= deadline)); then
        cat "$scratch/stderr" >&2
        fail "meshd run printed no ready line within ${READY_TIMEOUT_SECS}s"
    fi
    sleep 0.2
done
grep '^meshd ready ' "$scratch/stdout"
kill -TERM "$meshd_pid"
status=0
wait "$meshd_pid" || status=$?
meshd_pid=
if [ "$status" -ne 0 ]; then
    cat "$scratch/stderr" >&2
    fail "meshd run exited with status $status on SIGTERM (expected 0)"
fi
echo "meshd run: ready, then exit 0 on SIGTERM"

step "package.sh: OK"
echo "$deb"
