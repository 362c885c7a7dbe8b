#!/usr/bin/env python3
"""Writes the licence notices of every crate compiled into the meshd binary (the .deb ships the
result as /usr/share/doc/meshd/THIRD-PARTY-LICENSES).

    scripts/third-party-licenses.py OUT [cargo features...]

Which crates: `cargo tree -e normal -p meshd` for Linux, with the features the binary is built
with (build scripts, proc macros run at build time and are listed too: listing one more is
harmless, missing one is not). Their texts: the licence, copying and notice files each crate
ships in its source (~/.cargo/registry/src, found through `cargo metadata`). MIT and BSD
licences require their notice to travel with the binary; a crate that ships no licence file
gets the text of its licence with its authors as the copyright holders, and is named as such.

Offline: reads only what cargo has already downloaded (cargo metadata --offline fails, and so
does this script, when a crate's source is missing: run `cargo fetch` first).
"""

import json
import os
import re
import subprocess
import sys

LICENSE_FILE = re.compile(r"(?i)^(licen[cs]e|copying|notice|unlicense|copyright)([-_.].*)?$")

# The texts used when a crate ships none (SPDX's MIT, with the crate's authors).
MIT_TEXT = """Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def run(*args):
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def main():
    if len(sys.argv) < 2:
        sys.exit("usage: third-party-licenses.py OUT [cargo features...]")
    out, features = sys.argv[1], sys.argv[2:]
    target = re.search(r"^host: (\S+)$", run("rustc", "-vV"), re.M).group(1)
    feature_args = ["--features", ",".join(features)] if features else []
    tree = run("cargo", "tree", "--locked", "-e", "normal", "-p", "meshd", "--prefix", "none",
               "--target", target, "-f", "{p}", *feature_args)
    shipped = set()
    for line in tree.splitlines():
        parts = line.split()
        if len(parts) >= 2 and "(/" not in line:  # path crates are meshd's own
            shipped.add((parts[0], parts[1].lstrip("v")))
    # Every optional dependency too, so the packages of any feature set are found.
    metadata = json.loads(run("cargo", "metadata", "--locked", "--all-features", "--format-version", "1"))
    packages = {(p["name"], p["version"]): p for p in metadata["packages"] if p["source"]}
    missing = sorted(shipped - packages.keys())
    if missing:
        sys.exit(f"third-party-licenses.py: not in cargo metadata: {missing}")

    parts = [
        "Third-party software compiled into /usr/bin/meshd\n"
        "==================================================\n\n"
        "meshd itself is Apache-2.0 (see /usr/share/doc/meshd/copyright). The binary links the\n"
        f"following {len(shipped)} crates from crates.io statically; each is listed with its\n"
        "licence expression (where it offers a choice, meshd uses it under any of them) and the\n"
        "licence and notice files it ships.\n"
    ]
    seen = {}
    for key in sorted(shipped):
        parts.append(section(packages[key], seen))
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"{out}: {len(shipped)} crates")


def section(p, seen):
    """One crate's part; a text already printed for an earlier crate (the Apache-2.0 licence,
    mostly) is named, not repeated."""
    d = os.path.dirname(p["manifest_path"])
    names = sorted(n for n in os.listdir(d) if LICENSE_FILE.match(n) and os.path.isfile(os.path.join(d, n)))
    if p.get("license_file") and os.path.basename(p["license_file"]) not in names:
        names.append(p["license_file"])
    head = f"{'-' * 96}\n{p['name']} {p['version']}\nLicence: {p['license'] or 'see its licence file'}\n"
    if p.get("repository"):
        head += f"Source: {p['repository']}\n"
    body = []
    for name in names:
        with open(os.path.join(d, name), encoding="utf-8", errors="replace") as f:
            text = f.read().strip()
        label = f"{p['name']} {p['version']}: {name}"
        if text in seen:
            body.append(f"--- {name}: the same text as {seen[text]}, above\n")
        else:
            seen[text] = label
            body.append(f"--- {name}\n\n{text}\n")
    if not body:
        authors = ", ".join(p.get("authors") or []) or f"the {p['name']} authors"
        expression = p["license"] or ""
        if "MIT" not in expression:
            sys.exit(f"third-party-licenses.py: {p['name']} {p['version']} ships no licence file "
                     f"and is not MIT ({expression!r}): add its text here")
        body.append("--- (the crate ships no licence file; the MIT licence it names, with its\n"
                    f"authors as copyright holders)\n\nCopyright (c) {authors}\n\n{MIT_TEXT}")
    return head + "\n" + "\n".join(body)


if __name__ == "__main__":
    main()
