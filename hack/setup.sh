#!/usr/bin/env bash
# Install everything the demo and the tests need on a brand-new Debian machine; quick when done
# before (apt and pip skip what is there, Go binaries are cached by version).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*" >&2; }
python="${PYTHON:-python3}"

# libb64-0d: perf_analyzer (tests/serve/test_triton.py) links it
debs=(prometheus lua5.1 lua5.4 jq libb64-0d)
missing=()
# `dpkg -s` also succeeds for a removed package whose config files remain, so ask for the state.
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]; }
for p in "${debs[@]}"; do installed "$p" || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=(); [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

log "installing Python packages"
"$python" -m pip install -q --disable-pip-version-check -e "$here[worker,dev,modelopt,report]" 2>&1 \
  | grep -v "Running pip as the 'root' user" || true

"$here/hack/build-controlplane.sh"
