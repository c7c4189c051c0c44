#!/usr/bin/env bash
# Runs bench/peers.py (rootbuild against rootless buildah, in one run) as an unprivileged
# user. Run as root: the set-up creates that user with /etc/subuid and /etc/subgid ranges
# (as scripts/test.sh does for its test user), makes /dev/fuse usable, and makes the Debian
# bookworm minbase tarball with debootstrap (which needs root); the benchmark itself never
# runs as root. Arguments after the options below go to bench/peers.py.
#
#   sudo bash scripts/bench-peers.sh [--user NAME] [--python PATH] [peers.py options...]
#
# --user: the benchmark user (default rbbench); --python: the interpreter whose venv holds
# the rootbuild to measure (default /opt/rootbuild/venv/bin/python, the CI install; the dev
# venv is /opt/rootbuild-venv/bin/python). Nothing is reinstalled: the installed rootbuild
# is what gets measured.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
user=rbbench
python=/opt/rootbuild/venv/bin/python
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --user) user=$2; shift 2 ;;
        --python) python=$2; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done

if [ "$(id -u)" -ne 0 ]; then
    echo "bench-peers: run as root (sudo $0): the set-up creates the unprivileged user" >&2
    exit 1
fi
[ -x "$python" ] || { echo "bench-peers: $python missing (scripts/setup-debian.sh)" >&2; exit 1; }
for tool in buildah fuse-overlayfs docker-registry skopeo debootstrap; do
    command -v "$tool" >/dev/null || { echo "bench-peers: $tool missing (scripts/setup-debian.sh)" >&2; exit 1; }
done
[ -x /bin/busybox ] || { echo "bench-peers: /bin/busybox missing (apt-get install busybox-static)" >&2; exit 1; }

if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
uid=$(id -u "$user")
home=$(getent passwd "$user" | cut -d: -f6)
# A 65536-id range placed by uid, so that it never overlaps the test users' ranges.
first=$((100000 + (uid % 1000) * 65536))
grep -q "^$user:" /etc/subuid || usermod --add-subuids "$first-$((first + 65535))" "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids "$first-$((first + 65535))" "$user"
# /dev/fuse is 0600 on these machines: rootbuild's overlay and fuse-overlayfs need it.
[ -c /dev/fuse ] && chmod 0666 /dev/fuse

# The Debian base: debootstrap minbase as a plain tar, cached where the integration tests
# keep theirs (tests/integration/test_build_run_debian.py makes the same file).
cache=/var/cache/rootbuild-tests
rootfs_tar=$cache/debian-bookworm-minbase.tar
if [ ! -s "$rootfs_tar" ]; then
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/debootstrap-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase bookworm "$tmp/tree" http://deb.debian.org/debian >&2
    # Emptied as in Debian's official images; numeric owners, sorted entries.
    for d in dev proc sys run tmp; do
        find "$tmp/tree/$d" -mindepth 1 -delete 2>/dev/null || true
    done
    tar --sort=name --numeric-owner -C "$tmp/tree" -cf "$tmp/rootfs.tar" .
    mv "$tmp/rootfs.tar" "$rootfs_tar"
    rm -rf "$tmp"
    trap - EXIT
fi
chmod 0644 "$rootfs_tar"

# The user's own runtime dir, as logind would make it (rootless buildah wants one).
rundir=/run/user/$uid
mkdir -p "$rundir"
chown "$user:" "$rundir"
chmod 0700 "$rundir"

bench_dir=$(mktemp -d /tmp/rb-peers-src-XXXXXX)
trap 'rm -rf "$bench_dir"' EXIT
cp "$here/bench/peers.py" "$bench_dir/"
chmod -R a+rX "$bench_dir"
cd "$home"
status=0
setpriv --reuid="$uid" --regid="$(id -g "$user")" --init-groups \
    env -i HOME="$home" USER="$user" LOGNAME="$user" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    XDG_RUNTIME_DIR="$rundir" LANG=C.UTF-8 \
    "$python" "$bench_dir/peers.py" --debian-tar "$rootfs_tar" "${args[@]}" || status=$?
exit "$status"
