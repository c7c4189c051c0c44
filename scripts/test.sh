#!/usr/bin/env bash
# Runs rootbuild's whole test suite: lint, types, unit and integration tests.
# Run as root: the test set-up creates an unprivileged user with /etc/subuid and
# /etc/subgid ranges, and every integration test runs the builder as that user, never as root.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${ROOTBUILD_VENV:-/opt/rootbuild/venv}
user=${ROOTBUILD_TEST_USER:-rbtest}

if [ "$(id -u)" -ne 0 ]; then
    echo "test: run as root (sudo $0): the set-up creates the unprivileged test user" >&2
    exit 1
fi
[ -x "$venv/bin/python" ] || bash "$here/scripts/setup-debian.sh"

# The code under test, installed fresh so the unprivileged user runs exactly this checkout.
"$venv/bin/pip" install -q --no-deps --force-reinstall --no-build-isolation "$here"
chmod -R a+rX "$(dirname "$venv")"

if ! id "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
# A 65536-id range per test user, placed by uid so that several test users never overlap.
uid=$(id -u "$user")
first=$((100000 + (uid % 1000) * 65536))
grep -q "^$user:" /etc/subuid || usermod --add-subuids "$first-$((first + 65535))" "$user"
grep -q "^$user:" /etc/subgid || usermod --add-subgids "$first-$((first + 65535))" "$user"
# A second block (the worker's slot 1: each concurrent build maps RUN's root to its own
# block), placed above every test user's first block; added to a user made before it too.
second=$((100000 + (1000 + uid % 1000) * 65536))
grep -q "^$user:$second:65536\$" /etc/subuid || usermod --add-subuids "$second-$((second + 65535))" "$user"
grep -q "^$user:$second:65536\$" /etc/subgid || usermod --add-subgids "$second-$((second + 65535))" "$user"
# A second user with no range: the tests of RUN's single-mapping fallback run as it.
nosub="$user-nosub"
id "$nosub" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$nosub"
sed -i "/^$nosub:/d" /etc/subuid /etc/subgid
# /dev/fuse is 0600 on these machines; rootbuild doctor tells users the same fix.
[ -c /dev/fuse ] && chmod 0666 /dev/fuse

cd "$here"
"$venv/bin/ruff" check rootbuild tests
"$venv/bin/mypy" rootbuild
export ROOTBUILD_TEST_USER="$user"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -ra "$@"
