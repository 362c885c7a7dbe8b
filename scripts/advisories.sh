#!/usr/bin/env bash
# `cargo deny check advisories` against the RustSec advisory database, when there is one.
#
# The database is a git repository on GitHub (https://github.com/rustsec/advisory-db), which
# the machines that build meshd cannot reach. Set MESHD_ADVISORY_DB to a clone of it copied in
# (a directory); the check then runs and fails on any
# advisory (deny.toml, [advisories]). Without it, this says loudly that advisories were NOT
# checked and exits 0: the rest of CI still runs, and nothing reads as a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

db="${MESHD_ADVISORY_DB:-}"
if [ -z "$db" ]; then
    cat >&2 <<'MSG'
######################################################################################
# cargo deny check advisories: NOT RUN. The RustSec advisory database (GitHub) is not #
# reachable from here; set MESHD_ADVISORY_DB to a local clone of                      #
# https://github.com/rustsec/advisory-db to check for known vulnerabilities.          #
######################################################################################
MSG
    exit 0
fi
[ -d "$db/.git" ] || [ -f "$db/HEAD" ] || {
    echo "advisories.sh: MESHD_ADVISORY_DB=$db is not a git clone of the advisory database" >&2
    exit 1
}
scratch=$(mktemp -d "${TMPDIR:-/tmp}/meshd-advisories.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# cargo-deny accepts only the database's network address; git (git-fetch-with-cli) is told to
# read that address from the local clone instead, and cargo-deny keeps its copy in scratch.
sed -e "s|^db-path = .*|db-path = \"$scratch/db\"\ngit-fetch-with-cli = true|" deny.toml >"$scratch/deny.toml"
export GIT_CONFIG_COUNT=1
export GIT_CONFIG_KEY_0="url.file://$(realpath "$db").insteadOf"
export GIT_CONFIG_VALUE_0="https://github.com/RustSec/advisory-db"
echo "cargo deny check advisories: the RustSec database from $db ($(git -C "$db" log -1 --format='%h, %cs'))"
cargo deny --locked --config "$scratch/deny.toml" check advisories
