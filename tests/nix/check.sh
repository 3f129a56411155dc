#!/usr/bin/env bash
# The Nix side's CI checks, for a machine with nix-instantiate (Debian's
# nix-bin) but no nixpkgs:
#   1. every .nix file of the repository parses (nix-instantiate --parse);
#   2. lint: deadnix --fail, and statix check where the real statix exists;
#   3. nix/unit.nix evaluated for realistic arguments (tests/nix/unit-cases.nix);
#   4. nix/model-name.nix and nix/fetch-model.nix (tests/nix/model-name-cases.nix);
#   5. the rendered unit under a real systemd (scripts/systemd-sandbox):
#      loads without warnings, `systemd-analyze security` exposure <= 2.5,
#      DeviceAllow= for /dev/nvidiactl, /dev/nvidia-uvm and the GPU nodes;
#      and run for real with the stand-in UI (start, the front door on
#      ui.port holding a call made during the start, the sleep inhibitor's
#      lock in the sandbox's own logind while a job runs, granted by
#      nix/polkit.nix's rule in a real polkitd, reload, stop);
#   6. module.nix evaluated with lib.evalModules (tests/nix/eval-module.nix)
#      and flake.nix with a fake nixpkgs input (tests/nix/eval-flake.nix,
#      which also evaluates the container images of nix/image.nix up to the
#      arguments of dockerTools.streamLayeredImage), with a nixpkgs lib (see NIXPKGS_LIB
#      below); their generated configs go through
#      `sd-webui-supervisor check-config` when the binary is built, as does
#      the module's build-time check script. Nothing is built: the image's
#      layers and closure are not checked here.
#
# Usage: tests/nix/check.sh   (from anywhere; root needed for step 5)
# Environment:
#   CI=true            a missing tool is a failure, not a skip
#   SUPERVISOR_BIN     default target/debug/sd-webui-supervisor
#   NIXPKGS_LIB        nixpkgs' lib/ directory. Without it: ../shared/nixpkgs-lib/lib
#                      beside the checkout if there is one (an optional local
#                      copy), else the flake's nixpkgs input when `nix` (with
#                      flakes) can fetch it; else the module evaluation is skipped.
#   STATIX, DEADNIX    linters to use (default: from PATH)
# Ends with "nix: N passed, N failed, N skipped"; exits 1 if anything failed.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd -P)
cd "$root"
out=$root/target/nix-check
sandbox=$root/scripts/systemd-sandbox
# A sandbox left over by an interrupted run would keep its state directory.
if [ -e "$out/sandbox/pid" ]; then "$sandbox" stop "$out/sandbox" >/dev/null 2>&1 || true; fi
rm -rf "$out"
mkdir -p "$out"

ci=${CI:-false}
supervisor_bin=${SUPERVISOR_BIN:-target/debug/sd-webui-supervisor}
case $supervisor_bin in /*) ;; *) supervisor_bin=$root/$supervisor_bin ;; esac
statix=${STATIX:-statix}
deadnix=${DEADNIX:-deadnix}
max_exposure=2.5
nixpkgs_lib_from=NIXPKGS_LIB
if [ -z "${NIXPKGS_LIB:-}" ] && [ -f "$root/../shared/nixpkgs-lib/lib/default.nix" ]; then
  NIXPKGS_LIB=$root/../shared/nixpkgs-lib/lib
  nixpkgs_lib_from="../shared/nixpkgs-lib"
fi
if [ -z "${NIXPKGS_LIB:-}" ] && command -v nix >/dev/null; then
  # The flake's own nixpkgs input (nix fetches it; needs the network once).
  if flake_nixpkgs=$(timeout 300 nix --extra-experimental-features 'nix-command flakes' eval --raw --impure \
    --expr "(builtins.getFlake \"path:$root\").inputs.nixpkgs.outPath" 2>"$out/flake-nixpkgs.err") &&
    [ -f "$flake_nixpkgs/lib/default.nix" ]; then
    NIXPKGS_LIB=$flake_nixpkgs/lib
    nixpkgs_lib_from="the flake's nixpkgs input"
  fi
fi

passed=0 failed=0 skipped=0
pass() { echo "ok      $*"; passed=$((passed + 1)); }
fail() { echo "FAIL    $*"; failed=$((failed + 1)); }
skip() { echo "skip    $*"; skipped=$((skipped + 1)); }
# A tool that CI must have: missing is a failure there, a skip elsewhere.
missing() { if [ "$ci" = true ]; then fail "$@"; else skip "$@"; fi; }
section() { printf '\n== %s\n' "$*"; }

# Print a JSON list of { name, ok, detail } results as checks.
report() {
  local line
  while IFS= read -r line; do
    case $line in
      skip$'\t'*) skip "${line#*$'\t'}" ;;
      note$'\t'*) echo "note    ${line#*$'\t'}" ;;
      true$'\t'*) pass "${line#*$'\t'}" ;;
      *) fail "${line#*$'\t'}" ;;
    esac
  done < <(jq -r '.[] | "\(if .skip // false then "skip" elif .note // false then "note" else .ok end)\t\(.name)\(if .ok then "" else ": " + .detail end)"' "$1")
}

# nix-instantiate --eval --strict --json, output to a file; on error, show it.
eval_json() {
  local dest=$1
  shift
  if nix-instantiate --eval --strict --json "$@" >"$dest" 2>"$dest.err"; then
    return 0
  fi
  sed 's/^/        /' "$dest.err"
  return 1
}

section "tools"
if ! command -v nix-instantiate >/dev/null; then
  echo "nix-instantiate not found: install Debian's nix-bin (apt-get install -y nix-bin)" >&2
  fail "nix-instantiate present"
  echo "nix: $passed passed, $failed failed, $skipped skipped"
  exit 1
fi
echo "$(nix-instantiate --version); $(jq --version)"

section "parse every .nix file"
mapfile -t nix_files < <(git ls-files --cached --others --exclude-standard -- '*.nix' | sort -u)
for f in "${nix_files[@]}"; do
  [ -f "$f" ] || continue
  if nix-instantiate --parse "$f" >/dev/null 2>"$out/parse.err"; then
    pass "parse $f"
  else
    fail "parse $f"
    sed 's/^/        /' "$out/parse.err"
  fi
done

# The examples in the docs are meant to be pasted: each ```nix block must parse.
for doc in docs/nixos.md docs/containers.md; do
  [ -f "$doc" ] || continue
  name=$(basename "$doc" .md)
  mkdir -p "$out/doc-blocks/$name"
  awk -v dir="$out/doc-blocks/$name" '
    /^```nix$/ { n++; f = sprintf("%s/block-%02d.nix", dir, n); inblock = 1; next }
    /^```$/ { inblock = 0; next }
    inblock { print > f }
  ' "$doc"
  for f in "$out/doc-blocks/$name"/*.nix; do
    [ -f "$f" ] || continue
    if nix-instantiate --parse "$f" >/dev/null 2>"$out/parse.err"; then
      pass "parse $doc example $(basename "$f" .nix)"
    else
      fail "parse $doc example $(basename "$f" .nix)"
      sed 's/^/        /' "$out/parse.err"
    fi
  done
done

section "lint"
existing=()
for f in "${nix_files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
if command -v "$deadnix" >/dev/null; then
  if "$deadnix" --fail "${existing[@]}" >"$out/deadnix.txt" 2>&1; then
    pass "deadnix --fail (${#existing[@]} files)"
  else
    fail "deadnix --fail"
    sed 's/^/        /' "$out/deadnix.txt"
  fi
else
  missing "deadnix not found (cargo install --locked deadnix)"
fi
# The crates.io package called "statix" is an unrelated HTTP file server; the
# Nix linter (github.com/oppiliappan/statix) is not published there and is
# recognised by its `check` subcommand.
if command -v "$statix" >/dev/null && "$statix" check --help >/dev/null 2>&1; then
  statix_ok=true
  for f in "${existing[@]}"; do
    if ! "$statix" check -o errfmt "$f" >"$out/statix.txt" 2>&1; then
      statix_ok=false
      fail "statix check $f"
      sed 's/^/        /' "$out/statix.txt"
    fi
  done
  [ "$statix_ok" = false ] || pass "statix check (${#existing[@]} files)"
else
  # An optional extra linter (not on crates.io, so not a prerequisite): a note, not a skip.
  echo "note    statix (the Nix linter) not installed, not run: build it from github.com/oppiliappan/statix and set STATIX"
fi

section "nix/unit.nix, realistic arguments"
mkdir -p "$out/units"
if eval_json "$out/unit-cases.json" tests/nix/unit-cases.nix; then
  jq '.results' "$out/unit-cases.json" >"$out/unit-results.json"
  report "$out/unit-results.json"
  while IFS= read -r name; do
    jq -r --arg n "$name" '.units[$n]' "$out/unit-cases.json" >"$out/units/$name"
  done < <(jq -r '.units | keys[]' "$out/unit-cases.json")
  unit=$out/units/sd-webui-forge.service
  for rule in "/dev/nvidiactl rw" "/dev/nvidia-uvm rw" "/dev/nvidia0 rw" "/dev/nvidia1 rw"; do
    if grep -qxF "DeviceAllow=$rule" "$unit"; then
      pass "rendered unit has DeviceAllow=$rule"
    else
      fail "rendered unit has DeviceAllow=$rule"
    fi
  done
  if grep -qxF "DeviceAllow=char-nvidia-frontend rw" "$out/units/sd-webui-forge-all-gpus.service"; then
    pass "rendered unit without gpus has DeviceAllow=char-nvidia-frontend rw"
  else
    fail "rendered unit without gpus has DeviceAllow=char-nvidia-frontend rw"
  fi
else
  fail "evaluate tests/nix/unit-cases.nix"
fi

section "nix/model-name.nix and nix/fetch-model.nix"
if eval_json "$out/model-name.json" tests/nix/model-name-cases.nix; then
  report "$out/model-name.json"
else
  fail "evaluate tests/nix/model-name-cases.nix"
fi

section "the unit under systemd (systemd-sandbox)"
state=$out/sandbox
stop_sandbox() { "$sandbox" stop "$state" >/dev/null 2>&1 || true; }
in_sandbox() { "$sandbox" exec "$state" "$@"; }

# The sandbox's own logind and polkitd, polkit with the rule module.nix
# installs for user $1 (nix/polkit.nix), bound over /etc/polkit-1/rules.d in
# the sandbox's mount namespace only. Prints why not and fails where this
# host lacks one of them.
start_logind_polkit() {
  local user=$1 rules=$out/polkit-rules
  if ! in_sandbox systemctl cat systemd-logind.service polkit.service >/dev/null 2>&1 ||
    ! in_sandbox test -d /etc/polkit-1/rules.d; then
    echo "needs systemd-logind and polkit (apt-get install polkitd)"
    return 1
  fi
  mkdir -p "$rules"
  if ! nix-instantiate --eval --strict --json -E "import $root/nix/polkit.nix { user = \"$user\"; }" |
    jq -r . >"$rules/50-sd-webui-forge.rules"; then
    echo "cannot render nix/polkit.nix"
    return 1
  fi
  chmod 0755 "$rules" && chmod 0644 "$rules/50-sd-webui-forge.rules"
  if ! in_sandbox mount --bind "$rules" /etc/polkit-1/rules.d ||
    ! in_sandbox systemctl start systemd-logind.service polkit.service; then
    echo "logind or polkitd does not start in the sandbox"
    return 1
  fi
}

# The sleep lock of uid $1 by sd-webui-supervisor that logind lists, as
# "what/why/mode"; nothing when there is none.
inhibitor_of() {
  in_sandbox busctl --json=short call org.freedesktop.login1 /org/freedesktop/login1 \
    org.freedesktop.login1.Manager ListInhibitors 2>/dev/null |
    jq -r --argjson uid "$1" '.data[0][] | select(.[1] == "sd-webui-supervisor" and .[4] == $uid) | "\(.[0])/\(.[2])/\(.[3])"'
}

# The same hardened unit, run for real: the cargo-built supervisor and the
# stand-in UI (python3) as an existing system user, data under target/.
# Shows that the hardening leaves them working: `activating` until the UI
# answers, then `active` with the supervisor's Status:, a notify-reload round
# trip, and a clean stop that leaves no process behind.
run_real_unit() {
  local name=sd-webui-forge-check.service run=$out/run python=/usr/bin/python3
  local stand_in=$root/examples/stand_in_ui.py user=daemon port
  if [ ! -x "$supervisor_bin" ] || [ ! -f "$stand_in" ] || [ ! -x "$python" ]; then
    skip "run the hardened unit: needs $supervisor_bin, $stand_in and $python"
    return
  fi
  # The unit has its own /tmp and no /home (PrivateTmp=, ProtectHome=): it sees
  # the checkout where the sandbox also puts it, /run/host/<path>.
  local seen=/run/host
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$run/data"
  chown "$user:$user" "$run/data"
  chmod 0700 "$run/data"
  cat >"$run/config.toml" <<EOF
[ui]
flavor = "forge"
command = ["$python", "$seen$stand_in"]
port = $port
environment = { STANDIN_START_DELAY = "4", STANDIN_RECORD = "$seen$run/data/record.jsonl", PYTHONUNBUFFERED = "1" }
startup_timeout = "1m"
stop_timeout = "10s"

[data]
dir = "$seen$run/data"
permissions = "0700"

[control]
socket = "/run/sd-webui-forge-check/control.sock"
dbus = "off"
EOF
  # The PATH a NixOS service really gets: the unit's `path` (git, for Forge)
  # and what NixOS always adds (coreutils, findutils, grep, sed, systemd),
  # each a directory of links to the host's programs of that package; nothing
  # else from the host. A tool the UI needs and the unit lacks shows here.
  local defaults=()
  for pkg in coreutils findutils grep sed systemd; do
    mkdir -p "$run/path/$pkg/bin"
    dpkg -L "$pkg" 2>/dev/null | grep -E '^(/usr)?/s?bin/[^/]+$' | while read -r prog; do
      ln -sf "$prog" "$run/path/$pkg/bin/"
    done
    defaults+=("\"$seen$run/path/$pkg\"")
  done
  mkdir -p "$run/path/git/bin"
  ln -sf "$(command -v git)" "$run/path/git/bin/git"
  render_real_unit() { # $1: the unit's `path` as a Nix list
    eval_json "$run/unit.json" tests/nix/run-unit.nix --argstr supervisorBin "$seen$(readlink -f "$supervisor_bin")" \
      --argstr configPath "$seen$run/config.toml" --argstr dataDir "$seen$run/data" \
      --argstr user "$user" --argstr group "$user" \
      --arg pathDirs "$1" --arg defaultPathDirs "[ ${defaults[*]} ]" &&
      jq -r . "$run/unit.json" >"$run/$name"
  }

  # Without git on the unit's PATH, Forge exits at start: the status says why.
  if ! render_real_unit "[ ]"; then
    fail "render the unit for a real run"
    return
  fi
  if "$sandbox" install "$state" "$run/$name" && in_sandbox systemctl start --no-block "$name"; then
    local why=""
    for _ in $(seq 60); do
      why=$(in_sandbox systemctl show -P StatusText "$name")
      case $why in *"Bad git executable"*) break ;; esac
      sleep 0.5
    done
    case $why in
      *"Bad git executable"*) pass "unit without git on PATH: the UI's exit is explained: $why" ;;
      *) fail "unit without git on PATH: Status: $why"
        in_sandbox journalctl -u "$name" --no-pager -n 20 | sed 's/^/        /' ;;
    esac
    in_sandbox systemctl stop "$name" || true
    rm -f "$run/data/record.jsonl"
  else
    fail "unit without git on PATH: install and start $name"
  fi

  local polkit_gap=""
  polkit_gap=$(start_logind_polkit "$user") || true

  if ! render_real_unit "[ \"$seen$run/path/git\" ]"; then
    fail "render the unit for a real run"
    return
  fi
  if ! grep -q "^Environment=\"PATH=$seen$run/path/git/bin:" "$run/$name"; then
    fail "the rendered unit's PATH starts with the unit's path: $(grep PATH= "$run/$name")"
  fi
  if ! "$sandbox" install "$state" "$run/$name" || ! in_sandbox systemctl start --no-block "$name"; then
    fail "hardened unit: install and start $name"
    return
  fi
  sleep 2
  local active held_pid
  active=$(in_sandbox systemctl show -P ActiveState "$name")
  if [ "$active" = activating ]; then
    pass "hardened unit: activating while the UI is still starting"
  else
    fail "hardened unit: activating while the UI is still starting (ActiveState=$active)"
  fi
  # The front door (the config has no [front]: on by default) listens on
  # ui.port from the start: an API call made while the UI still starts is
  # held, then answered by the UI, instead of "connection refused".
  "$python" -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/internal/ping', timeout=60).status)" \
    >"$run/held.out" 2>&1 &
  held_pid=$!
  for _ in $(seq 60); do
    active=$(in_sandbox systemctl show -P ActiveState "$name")
    [ "$active" = activating ] || break
    sleep 0.5
  done
  if wait "$held_pid" && [ "$(cat "$run/held.out")" = 200 ]; then
    pass "hardened unit: the front door holds an API call made during the start, then the UI answers it"
  else
    fail "hardened unit: the front door holds an API call made during the start: $(tail -1 "$run/held.out")"
  fi
  # ...and the UI itself runs behind it on a loopback port the supervisor
  # picked: the unit's sandbox lets both bind.
  local ui_argv
  ui_argv=$(grep -m1 '"event": "start"' "$run/data/record.jsonl" 2>/dev/null || true)
  case $ui_argv in
    *'"--port", "'"$port"'"'*) fail "hardened unit: the UI binds ui.port itself, not behind the front door: $ui_argv" ;;
    *'"--port", "'[0-9]*'"'*'"--server-name", "127.0.0.1"'*)
      pass "hardened unit: the front door on ui.port $port, the UI behind it on loopback port $(echo "$ui_argv" | sed -n 's/.*"--port", "\([0-9]*\)".*/\1/p')" ;;
    *) fail "hardened unit: the UI's argv names no private loopback port: $ui_argv" ;;
  esac
  local status
  status=$(in_sandbox systemctl show -P StatusText "$name")
  if [ "$active" = active ] && "$python" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/internal/ping', timeout=5)"; then
    pass "hardened unit: active once the UI answers; Status: $status"
  else
    fail "hardened unit: active once the UI answers (ActiveState=$active, Status: $status)"
    in_sandbox journalctl -u "$name" --no-pager -n 40 | sed 's/^/        /'
    in_sandbox systemctl stop "$name" || true
    return
  fi

  # The sleep inhibitor under the hardening (PrivateUsers=, the syscall
  # filter, a non-root user): logind lists its lock while a job runs, by
  # polkit's leave (nix/polkit.nix), and not once the queue is idle.
  if [ -n "$polkit_gap" ]; then
    skip "hardened unit: the sleep inhibitor's lock in logind: $polkit_gap"
  else
    local uid lock="" job_pid
    uid=$(id -u "$user")
    "$python" -c "import json, urllib.request; urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:$port/sdapi/v1/txt2img', json.dumps({'prompt': 'x', 'stand_in_seconds': 6}).encode(), {'Content-Type': 'application/json'}), timeout=60)" \
      >"$run/job.out" 2>&1 &
    job_pid=$!
    for _ in $(seq 50); do
      lock=$(inhibitor_of "$uid")
      [ -n "$lock" ] && break
      sleep 0.2
    done
    if [ "$lock" = "sleep/1 generation job(s) running/block" ]; then
      pass "hardened unit as $user: logind lists the supervisor's sleep lock while a job runs: $lock"
    else
      fail "hardened unit as $user: logind lists the supervisor's sleep lock while a job runs (got: ${lock:-none})"
      in_sandbox journalctl -u "$name" --no-pager -n 20 | grep -i sleep | sed 's/^/        /'
    fi
    wait "$job_pid" || true
    for _ in $(seq 50); do
      lock=$(inhibitor_of "$uid")
      [ -z "$lock" ] && break
      sleep 0.2
    done
    if [ -z "$lock" ]; then
      pass "hardened unit as $user: the sleep lock is gone once the queue is idle"
    else
      fail "hardened unit as $user: the sleep lock is gone once the queue is idle (still: $lock)"
    fi
  fi

  local t0 t1
  t0=$(date +%s%N)
  if in_sandbox timeout 30 systemctl reload "$name"; then
    t1=$(date +%s%N)
    pass "hardened unit: systemctl reload (notify-reload) returns in $(((t1 - t0) / 1000000)) ms"
  else
    fail "hardened unit: systemctl reload (notify-reload)"
    in_sandbox journalctl -u "$name" --no-pager -n 20 | sed 's/^/        /'
  fi

  in_sandbox systemctl stop "$name" || true
  local left
  left=$(in_sandbox systemctl show -P ActiveState "$name")
  if [ "$left" = inactive ] && grep -q '"signal": "SIGINT"' "$run/data/record.jsonl"; then
    pass "hardened unit: stops cleanly, the UI got SIGINT"
  else
    fail "hardened unit: stops cleanly (ActiveState=$left)"
    in_sandbox journalctl -u "$name" --no-pager -n 20 | sed 's/^/        /'
  fi
}
if ! sandbox_gaps=$("$sandbox" check); then
  missing "the unit under systemd: $(echo "$sandbox_gaps" | paste -sd ';' | sed 's/;/; /g')"
elif ! compgen -G "$out/units/*.service" >/dev/null; then
  fail "no rendered units to check"
else
  trap stop_sandbox EXIT
  if "$sandbox" start "$state" "$out" >/dev/null; then
    echo "$("$sandbox" exec "$state" systemctl --version | head -1) in the sandbox"
    for unit in "$out"/units/*.service; do
      name=$(basename "$unit")
      if ! "$sandbox" install "$state" "$unit"; then
        fail "install $name in the sandbox"
        continue
      fi
      load=$("$sandbox" exec "$state" systemctl show -P LoadState "$name")
      # Unknown keys and unparsable values: "FILE:LINE: message". (verify
      # also says the /nix/store binary is missing, which is expected here.)
      "$sandbox" exec "$state" systemd-analyze verify "/run/systemd/system/$name" >"$out/verify-$name.txt" 2>&1 || true
      if [ "$load" = loaded ] && ! grep -E "$name:[0-9]+: " "$out/verify-$name.txt" >"$out/load-warnings.txt"; then
        pass "$name loads, and systemd-analyze verify finds no unknown or invalid setting"
      else
        fail "$name loads, and systemd-analyze verify finds no unknown or invalid setting (LoadState=$load)"
        sed 's/^/        /' "$out/load-warnings.txt"
      fi
      "$sandbox" exec "$state" systemd-analyze security --no-pager "$name" >"$out/security-$name.txt" 2>&1 || true
      exposure=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' "$out/security-$name.txt")
      if [ -z "$exposure" ]; then
        fail "systemd-analyze security $name: no exposure figure"
        sed 's/^/        /' "$out/security-$name.txt"
      elif awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }'; then
        pass "systemd-analyze security $name: exposure $exposure (goal <= $max_exposure)"
      else
        fail "systemd-analyze security $name: exposure $exposure (goal <= $max_exposure)"
        grep '✗' "$out/security-$name.txt" | sed 's/^/        /'
      fi
    done
    run_real_unit
    allowed=$("$sandbox" exec "$state" systemctl show -P DeviceAllow sd-webui-forge.service | tr '\n' ' ')
    echo "        DeviceAllow as systemd reads it: $allowed"
    for dev in /dev/nvidiactl /dev/nvidia-uvm /dev/nvidia0 /dev/nvidia1; do
      if [[ " $allowed " == *" $dev rw "* ]]; then
        pass "systemd allows $dev"
      else
        fail "systemd allows $dev"
      fi
    done
  else
    fail "start systemd-sandbox (see $state/console.log)"
  fi
  stop_sandbox
  trap - EXIT
fi

section "module.nix with lib.evalModules"
[ -n "${NIXPKGS_LIB:-}" ] && echo "nixpkgs lib: $NIXPKGS_LIB (from $nixpkgs_lib_from)"
if [ -z "${NIXPKGS_LIB:-}" ]; then
  skip "module evaluation: no nixpkgs lib (set NIXPKGS_LIB to a nixpkgs lib/ directory, e.g. from github.com/nix-community/nixpkgs.lib, or install nix with flakes and network to fetch the flake's input)"
elif [ ! -f "$NIXPKGS_LIB/default.nix" ]; then
  fail "module evaluation: NIXPKGS_LIB=$NIXPKGS_LIB has no default.nix"
else
  have_bin=false
  args=(--argstr nixpkgsLib "$NIXPKGS_LIB")
  if [ -x "$supervisor_bin" ]; then
    have_bin=true
    mkdir -p "$out/supervisor/bin"
    ln -sf "$supervisor_bin" "$out/supervisor/bin/sd-webui-supervisor"
    args+=(--argstr supervisorOut "$out/supervisor")
  fi
  if eval_json "$out/eval-module.json" tests/nix/eval-module.nix "${args[@]}"; then
    jq '.results' "$out/eval-module.json" >"$out/eval-results.json"
    report "$out/eval-results.json"
    echo "        assertion messages as users see them:"
    jq -r '.messages[]' "$out/eval-module.json" | sed 's/^/          /'

    mkdir -p "$out/configs" "$out/builds"
    if [ "$have_bin" = true ]; then
      while IFS= read -r name; do
        file=$out/configs/$name.toml
        jq -r --arg n "$name" '.configs[$n]' "$out/eval-module.json" >"$file"
        if "$supervisor_bin" check-config --config "$file" >"$file.log" 2>&1; then
          pass "check-config accepts the module's $name config"
        else
          fail "check-config accepts the module's $name config"
          sed 's/^/        /' "$file.log"
        fi
      done < <(jq -r '.configs | keys[]' "$out/eval-module.json")

      # The module's build-time check, run as the build runs it.
      while IFS= read -r name; do
        file=$out/builds/$name.toml
        jq -r --arg n "$name" '.builds[$n].config' "$out/eval-module.json" >"$file"
        script=$(jq -r --arg n "$name" '.builds[$n].script' "$out/eval-module.json")
        expect=$(jq -r --arg n "$name" '.builds[$n].expect' "$out/eval-module.json")
        rm -f "$out/builds/$name.out"
        if unchecked=$file out=$out/builds/$name.out bash -euo pipefail -c "$script" >"$file.log" 2>&1; then
          rc=0
        else
          rc=$?
        fi
        if [ "$expect" = ok ]; then
          if [ "$rc" = 0 ] && [ -L "$out/builds/$name.out" ]; then
            pass "build-time check passes a good config and installs it"
          else
            fail "build-time check passes a good config (rc=$rc)"
            sed 's/^/        /' "$file.log"
          fi
        elif [ "$rc" != 0 ] && grep -q "$expect" "$file.log" && [ ! -e "$out/builds/$name.out" ]; then
          pass "build-time check fails the build of a bad config with check-config's message:"
          sed 's/^/          /' "$file.log"
        else
          fail "build-time check fails the build of a bad config (rc=$rc, expected a message with '$expect')"
          sed 's/^/        /' "$file.log"
        fi
      done < <(jq -r '.builds | keys[]' "$out/eval-module.json")
    else
      skip "check-config on the module's configs: $supervisor_bin not built"
    fi
  else
    fail "evaluate tests/nix/eval-module.nix"
  fi

  section "flake.nix with a fake nixpkgs input (and the container images)"
  if eval_json "$out/eval-flake.json" tests/nix/eval-flake.nix --argstr nixpkgsLib "$NIXPKGS_LIB"; then
    jq '.results' "$out/eval-flake.json" >"$out/eval-flake-results.json"
    report "$out/eval-flake-results.json"
    # The config files the images bake in, through the real checker.
    mkdir -p "$out/configs"
    while IFS= read -r name; do
      file=$out/configs/$name.toml
      jq -r --arg n "$name" '.configs[$n]' "$out/eval-flake.json" >"$file"
      if [ ! -x "$supervisor_bin" ]; then
        skip "check-config on the $name config: $supervisor_bin not built"
      elif "$supervisor_bin" check-config --config "$file" >"$file.log" 2>&1; then
        pass "check-config accepts the $name config"
      else
        fail "check-config accepts the $name config"
        sed 's/^/        /' "$file.log"
      fi
    done < <(jq -r '.configs | keys[]' "$out/eval-flake.json")
    echo "        not checked here (no nix build): the image's layers and closure, packages.image's CUDA ComfyUI"
  else
    fail "evaluate tests/nix/eval-flake.nix"
  fi
fi

echo
echo "nix: $passed passed, $failed failed, $skipped skipped"
[ "$failed" = 0 ]
