# Shared by the project's scripts. Installs missing Debian packages (as root, or with sudo).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing: ${missing[*]}" >&2
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What building the package needs: pkg-config, SQLite's headers (GRDB links the system SQLite) and libvips's (the Imaging tier).
ensure_build_packages() {
  command -v swift >/dev/null || { echo "swift is not on PATH" >&2; exit 1; }
  ensure_packages pkg-config libsqlite3-dev libvips-dev
}
