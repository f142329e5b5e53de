#!/usr/bin/env python3
"""Fails if a crate version that Cargo.lock pins has been yanked from crates.io.

A yanked version is one its authors withdrew, often for a security or
soundness bug. Cargo keeps building a lockfile that pins one and says so at
most in a warning. This is not RustSec's audit (its advisory database is on
GitHub, which this project's machines cannot reach), but crates.io's index
can be: it asks the sparse index, as cargo does, about each pinned version.
"""

import json
import sys
import tomllib
import urllib.request
from concurrent.futures import ThreadPoolExecutor

CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
INDEX = "https://index.crates.io"


def index_path(name: str) -> str:
    """Where the sparse index keeps a crate's versions (cargo's layout)."""
    name = name.lower()
    if len(name) <= 2:
        return f"{len(name)}/{name}"
    if len(name) == 3:
        return f"3/{name[0]}/{name}"
    return f"{name[:2]}/{name[2:4]}/{name}"


def is_yanked(package: dict) -> bool:
    url = f"{INDEX}/{index_path(package['name'])}"
    request = urllib.request.Request(url, headers={"User-Agent": "neptun-local CI"})
    with urllib.request.urlopen(request, timeout=30) as response:
        for line in response.read().decode().splitlines():
            entry = json.loads(line)
            if entry["vers"] == package["version"]:
                return entry.get("yanked", False)
    sys.exit(f"{package['name']} {package['version']} is not in the crates.io index")


def main() -> None:
    with open("Cargo.lock", "rb") as lock:
        packages = [p for p in tomllib.load(lock)["package"] if p.get("source") == CRATES_IO]
    with ThreadPoolExecutor(max_workers=8) as pool:
        yanked = [p for p, y in zip(packages, pool.map(is_yanked, packages)) if y]
    for p in yanked:
        print(f"yanked: {p['name']} {p['version']} (cargo update -p {p['name']})")
    if yanked:
        sys.exit(1)
    print(f"none of the {len(packages)} crates in Cargo.lock is yanked")


if __name__ == "__main__":
    main()
