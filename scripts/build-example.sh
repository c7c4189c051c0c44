#!/usr/bin/env bash
# Builds the repository's example image (FROM scratch + Debian's static busybox) into an
# oci-archive. Needs no network. rootbuild never runs as root: run by root (a CI job, a
# container), the build runs as the sudo caller, else as nobody.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$PWD/busybox.oci.tar}
if [ ! -x /bin/busybox ]; then
    echo "build-example: /bin/busybox missing (apt-get install busybox-static)" >&2
    exit 1
fi
command -v rootbuild >/dev/null || { echo "build-example: rootbuild not on PATH (run scripts/setup-debian.sh)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/context" "$ctx/home"
cp -a "$here/examples/busybox/." "$ctx/context/"
cp /bin/busybox "$ctx/context/rootfs/bin/busybox"
as_user=(env)
store=()
if [ "$(id -u)" -eq 0 ]; then
    uid=${SUDO_UID:-65534} gid=${SUDO_GID:-65534}
    chown -R "$uid:$gid" "$ctx"
    chmod 0755 "$ctx"
    as_user=(setpriv "--reuid=$uid" "--regid=$gid" --clear-groups env "HOME=$ctx/home")
    store=(--root "$ctx/home/store")
fi
"${as_user[@]}" rootbuild build --progress=plain "${store[@]}" \
    -t rootbuild-example:latest --output "oci-archive:$ctx/image.tar:latest" "$ctx/context"
cp "$ctx/image.tar" "$out"
echo "build-example: wrote $out"
