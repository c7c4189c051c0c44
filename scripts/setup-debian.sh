#!/usr/bin/env bash
# Installs what rootbuild needs on a fresh Debian 12 machine. Run as root (or with sudo).
# Idempotent. The virtual environment is built from Debian's /usr/bin/python3 in a
# world-readable place so that an unprivileged user can run rootbuild from it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${ROOTBUILD_VENV:-/opt/rootbuild/venv}

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-debian: run as root (sudo $0)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The packages below must not start system daemons (docker-registry on :5000, sshd on :22):
# the tests start their own on loopback. invoke-rc.d and deb-systemd-invoke ask policy-rc.d.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 0755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
# python3-venv/python3-dev/gcc: the venv and packages that compile; libfuse3-dev fuse3
# pkg-config: pyfuse3 and the FUSE overlay; uidmap: newuidmap/newgidmap; skopeo umoci:
# independent validators of what rootbuild exports; docker-registry: the real registry the
# tests push to; busybox-static: the example image's only binary; util-linux/procps: runuser,
# setpriv, pgrep for the tests; python3-seccomp: the tests simulate a container seccomp filter;
# debootstrap: the Debian base image the RUN tests install a package into; openssl: the
# registry tests make a CA and a server certificate; buildah fuse-overlayfs: the peers
# bench/peers.py measures rootbuild against in the same run; openssh-client: ssh-agent and
# ssh-add for `--ssh ID=KEYFILE` (and the ssh forwarding tests); openssh-server: the sshd
# the tests run as the test user to serve `ADD ssh://...` with `--ssh default`;
# redis-server: the build service's queue (Redis Streams); the tests start their own on a
# unix socket, and policy-rc.d above keeps the package from starting a system one on :6379;
# slirp4netns: the user-mode network stack of `--network=isolated`, untrusted builds'
# default (public egress only; without it untrusted RUN gets no network at all).
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libc6-dev \
    libfuse3-dev fuse3 pkg-config uidmap \
    skopeo umoci docker-registry busybox-static python3-seccomp debootstrap \
    util-linux procps git ca-certificates openssl buildah fuse-overlayfs \
    openssh-client openssh-server redis-server slirp4netns >/dev/null
# slirp4netns opens /dev/net/tun as the build user: udev makes it 0666; without udev (a
# container, a minimal VM) it is 0600 root and --network=isolated cannot start.
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
    chmod 0666 /dev/net/tun
fi

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip setuptools wheel
# A real (non-editable) install: the package lands inside the venv, readable by every user
# even when the checkout itself is in a private directory.
"$venv/bin/pip" install -q "$here[test]"
"$venv/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$here"
chmod -R a+rX "$(dirname "$venv")"
ln -sf "$venv/bin/rootbuild" /usr/local/bin/rootbuild
echo "setup-debian: rootbuild installed in $venv (on PATH as /usr/local/bin/rootbuild)"
