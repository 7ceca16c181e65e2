#!/usr/bin/env bash
# Installs what the dashboard's browser test needs (idempotent; well under a
# second when everything is there):
#   - Debian's `chromium` at /usr/bin/chromium (apt-get; sudo when not
#     root), driven headless by playwright-core — which cannot download a
#     browser build of its own here, so the test points it at this one;
#   - Node.js and npm from Debian if `node` is missing;
#   - tests/ui/node_modules from package-lock.json (`npm ci`), redone only
#     when the lock file changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

apt_install() {
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        sudo=(sudo -n)
    fi
    echo "tests/ui/install.sh: installing Debian packages: $*" >&2
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# node_modules/.installed-lock holds the lock file it was installed from.
if ! cmp -s package-lock.json node_modules/.installed-lock 2>/dev/null; then
    echo "tests/ui/install.sh: npm ci (playwright-core, uplot)" >&2
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json node_modules/.installed-lock
fi
