#!/usr/bin/env bash
# Builds the repository's example image (FROM scratch + Debian's static busybox) into an
# oci-archive, as the invoking user. Needs no network.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$PWD/busybox.oci.tar}
if [ ! -x /bin/busybox ]; then
    echo "build-example: /bin/busybox missing (apt-get install busybox-static)" >&2
    exit 1
fi
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp -a "$here/examples/busybox/." "$ctx/"
cp /bin/busybox "$ctx/rootfs/bin/busybox"
rootbuild build --progress=plain -t rootbuild-example:latest \
    --output "oci-archive:$out:latest" "$ctx"
echo "build-example: wrote $out"
