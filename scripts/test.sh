#!/usr/bin/env bash
# The project's one test command. Runs every suite — the Rust unit and integration
# tests (one suite per tests/*.rs; those under a real systemd use
# scripts/systemd-sandbox), the stand-in UI's own tests, and the Nix checks
# (tests/nix/check.sh) — and goes on after a failure, then summarises.
#
# A suite whose prerequisite is missing here (root, systemd >= 254, dbus-daemon,
# python3, nix-instantiate, a nixpkgs lib…) is skipped with the reason, and so is
# a single test that cannot run; each skip is counted. The last line is
#   summary: N passed, N failed, N skipped
# Exit status: 1 if anything failed, or under CI=true if anything was skipped
# (CI must run everything); else 0.
#
# Environment: CI=true (skips fail), CARGO_TARGET_DIR (a build to reuse),
# NIXPKGS_LIB (for the module evaluation tests; see tests/nix/check.sh).
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

ci=false
case ${CI:-} in true | 1) ci=true ;; esac
target=${CARGO_TARGET_DIR:-$root/target}

passed=0 failed=0 skipped=0
failures=() skips=()
skip_log=$(mktemp)
trap 'rm -f "$skip_log"' EXIT
export SDWS_SKIP_LOG=$skip_log

pass() { passed=$((passed + 1)); echo "PASS  $1"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL  $1"; }
skip() { skipped=$((skipped + 1)); skips+=("$1: $2"); echo "SKIP  $1: $2"; }

# Runs one suite: its output, then PASS or FAIL; single tests that skipped
# themselves (through tests/support's skip) are counted as skips.
suite() {
  local name=$1 line
  shift
  echo
  echo "== $name"
  : >"$skip_log"
  if "$@"; then pass "$name"; else fail "$name"; fi
  while IFS= read -r line; do skip "$name" "$line"; done <"$skip_log"
}

# What a suite needs, as the reason it cannot run here ("" when it can).
gap_python() { command -v python3 >/dev/null || echo "needs python3 (apt-get install python3)"; }
gap_dbus() { command -v dbus-daemon >/dev/null || echo "needs dbus-daemon (apt-get install dbus)"; }
gap_systemd() {
  local why
  why=$(scripts/systemd-sandbox check 2>&1) && return 0
  echo "$why" | paste -sd ';' | sed 's/;/; /g'
}
gap_nix() {
  command -v nix-instantiate >/dev/null || { echo "needs nix-instantiate (apt-get install nix-bin)"; return; }
  # Debian's nix-bin is a root-owned single-user store: other users cannot use it.
  local err
  err=$(nix-instantiate --eval -E 1 2>&1 >/dev/null) ||
    echo "nix-instantiate does not work for $(id -un): $(echo "$err" | head -1)"
}

# Runs the suite unless one of the gaps says why not.
need() {
  local name=$1 gaps="" g why
  shift
  while [ "$1" != -- ]; do
    why=$("gap_$1")
    [ -n "$why" ] && gaps+="${gaps:+; }$why"
    shift
  done
  shift
  if [ -n "$gaps" ]; then
    echo
    echo "== $name"
    skip "$name" "$gaps"
  else
    suite "$name" "$@"
  fi
}

echo "== build (every target, once)"
if ! cargo test --all-targets --no-run; then
  fail "build"
  echo
  echo "summary: $passed passed, $failed failed, $skipped skipped"
  exit 1
fi

suite "unit tests" cargo test --lib --bins
suite "doc tests" cargo test --doc
for file in tests/*.rs; do
  t=$(basename "$file" .rs)
  case $t in
  supervisor_systemd | reload_systemd)
    need "$t" python systemd -- cargo test --test "$t" ;;
  control_e2e)
    need "$t (daemon)" python -- cargo test --test "$t" -- --skip systemd_
    need "$t (systemd)" python systemd -- cargo test --test "$t" systemd_ ;;
  control_dbus)
    need "$t" dbus -- cargo test --test "$t" ;;
  inhibit_sleep)
    need "$t (daemon)" python -- cargo test --test "$t" -- --skip systemd_
    need "$t (systemd)" python systemd -- cargo test --test "$t" systemd_ ;;
  check_config | layout_* | control_cli | control_http | control_socket | watch)
    suite "$t" cargo test --test "$t" ;;
  *)
    need "$t" python -- cargo test --test "$t" ;;
  esac
done
need "stand-in UI tests" python -- python3 -m unittest discover -s tests/stand_in

# The Nix checks keep their own count; theirs joins ours.
echo
echo "== Nix checks"
if why=$(gap_nix) && [ -n "$why" ]; then
  skip "Nix checks" "$why"
else
  nix_out=$(mktemp)
  SUPERVISOR_BIN="$target/debug/sd-webui-supervisor" bash tests/nix/check.sh 2>&1 | tee "$nix_out"
  nix_rc=${PIPESTATUS[0]}
  counts=$(sed -n 's/^nix: \([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' "$nix_out" | tail -1)
  if [ -z "$counts" ]; then
    fail "Nix checks (no summary line; exit $nix_rc)"
  else
    read -r p f s <<<"$counts"
    passed=$((passed + p))
    failed=$((failed + f))
    while IFS= read -r line; do failures+=("nix: ${line#FAIL    }"); done < <(grep '^FAIL    ' "$nix_out")
    while IFS= read -r line; do
      skipped=$((skipped + 1))
      skips+=("nix: ${line#skip    }")
    done < <(grep '^skip    ' "$nix_out")
    [ "$nix_rc" = 0 ] || [ "$f" != 0 ] || fail "Nix checks (exit $nix_rc)"
  fi
  rm -f "$nix_out"
fi

echo
if [ ${#failures[@]} -gt 0 ]; then
  echo "failed:"
  printf '  %s\n' "${failures[@]}"
fi
if [ ${#skips[@]} -gt 0 ]; then
  echo "skipped:"
  printf '  %s\n' "${skips[@]}"
  [ "$ci" = true ] && echo "CI=true: a skipped suite or test counts as a failure here"
fi
echo "summary: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ] || exit 1
[ "$ci" = true ] && [ "$skipped" != 0 ] && exit 1
exit 0
