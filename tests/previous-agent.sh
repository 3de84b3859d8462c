#!/usr/bin/env bash
# Builds the agent (`sio`) of the previous release of the bus protocol, for
# the test that runs it against the current master, and prints its path.
# Idempotent: the binary is kept in target/previous-agent/.
set -euo pipefail
cd "$(dirname "$0")/.."
# The first packaged release (0.1.0-1, bus protocol 2 on the path
# sockets). Agents of protocol 1 (3241ae3 and before) were never packaged,
# and spoke on an abstract name that masters no longer serve.
rev=f754d1c
out=target/previous-agent-$rev
bin=$out/target/debug/sio
if [ ! -x "$bin" ]; then
  git cat-file -e "$rev^{commit}" 2>/dev/null || {
    echo "previous-agent.sh: commit $rev is not in this clone (a shallow clone?): git fetch --unshallow" >&2
    exit 1
  }
  rm -rf "$out/src"
  mkdir -p "$out/src"
  git archive "$rev" | tar -x -C "$out/src"
  cargo build --quiet --locked --bin sio --manifest-path "$out/src/Cargo.toml" --target-dir "$out/target" >&2
fi
echo "$PWD/$bin"
