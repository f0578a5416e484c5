#!/usr/bin/env bash
# Install the Debian packages named as arguments when any is missing.
# As root it runs apt-get; otherwise it prints the command to run and exits 1.
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "energyprof: missing system packages: ${missing[*]}" >&2
  echo "  This is not a Debian system. On macOS: brew install libplist sqlite pkg-config" >&2
  exit 1
fi
if [ "$(id -u)" != 0 ]; then
  echo "energyprof: missing system packages: ${missing[*]}" >&2
  echo "  Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "energyprof: installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
