#!/usr/bin/env bash
# Soak benchmark (not part of the tests): `sio up` with 2 workers of the
# test worker, connections churning for SECONDS (default 600) over both
# transports with 200 resident clients and a broadcast every 100 ms; prints
# the master's and agents' RSS, the master's heap and fds, first/last/max
# and the least-squares slope per minute, then the raw samples as JSON.
#   bench/soak.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
cargo build --release --quiet
npm ci --prefix tests/node --no-audit --no-fund --silent
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/soak.json" <<JSON
{"command": ["node", "$PWD/tests/node/worker.js"], "cwd": "$PWD/tests/node", "instances": 2, "listen": "127.0.0.1:$port"}
JSON
target/release/sio up "$dir/soak.json" 2>"$dir/sio.log" &
master=$!
trap 'kill $master 2>/dev/null; wait $master 2>/dev/null; rm -rf "$dir"' EXIT
until target/release/sioctl status soak >/dev/null 2>&1; do sleep 0.2; done
echo "soak: $(date -u +%F) $(nproc) cores, $seconds s, master pid $master"
node bench/soak.js "$port" "$master" soak "$seconds"
