#!/usr/bin/env bash
# Builds the .deb and the .rpm from one `--profile dist` build, with the man
# pages and completions generated from the same binary. Output: target/pkg/.
#   packaging/build.sh [RELEASE]   the package release (default 1); a
#                                  higher one is an upgrade of the same version
# Needs cargo-deb and cargo-generate-rpm (.ci/run installs the pinned ones).
set -euo pipefail
cd "$(dirname "$0")/.."
release=${1:-1}
version=$(cargo metadata --no-deps --format-version 1 | python3 -c 'import json, sys; print(json.load(sys.stdin)["packages"][0]["version"])')
cargo build --locked --profile dist --bins
rm -rf target/pkg && mkdir -p target/pkg
target/dist/sio docs target/pkg
gzip -9n target/pkg/man/*.1 target/pkg/man5/*.5
# Stripped as Debian strips (lintian's unstripped-binary-or-object), with the
# symbols kept beside the packages in target/pkg/debug/ (debuglink, build-id):
# `gdb -ex 'set debug-file-directory target/pkg/debug'` or eu-unstrip. Both
# packages take these same bits, so cargo-deb strips nothing itself.
mkdir -p target/pkg/bin target/pkg/debug
for bin in sio sioctl sio-generator; do
  objcopy --only-keep-debug "target/dist/$bin" "target/pkg/debug/$bin.debug"
  strip --strip-unneeded --remove-section=.comment --remove-section=.note -o "target/pkg/bin/$bin" "target/dist/$bin"
  objcopy --add-gnu-debuglink="target/pkg/debug/$bin.debug" "target/pkg/bin/$bin"
done
cargo deb --no-build --profile dist --no-strip --deb-version "$version-$release" --output target/pkg/
cargo generate-rpm --profile dist --auto-req builtin \
  --metadata-overwrite packaging/rpm/scriptlets.toml \
  --set-metadata "release = \"$release\"" \
  --output target/pkg/
ls -l target/pkg/*.deb target/pkg/*.rpm
