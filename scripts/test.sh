#!/usr/bin/env bash
# The project's whole test suite: Rust unit and integration tests (including the
# systemd-sandbox ones, which need root), the stand-in UI's own tests, and the Nix
# checks (parse, lint, unit hardening under a real systemd, module evaluation).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo test"
cargo test --all-targets

echo "== stand-in UI tests"
python3 -m unittest discover -s tests/stand_in

echo "== Nix checks"
SUPERVISOR_BIN="$(pwd)/target/debug/sd-webui-supervisor" bash tests/nix/check.sh
