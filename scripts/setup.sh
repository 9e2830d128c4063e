#!/usr/bin/env bash
# Prepare a fresh Debian 12 machine (as root) to build and test pftls-hook:
# Debian packages for the real programs the tests run, and .venv at the repo root.
# Idempotent: packages already installed are not fetched again; an existing,
# working .venv is reused and only the editable install is refreshed.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

if [[ "$(id -u)" -ne 0 ]]; then
    echo "setup.sh: must run as root (apt-get, and the tests start Postfix as root)" >&2
    exit 1
fi

# postfix: the MTA under test (only private instances are started, never the
#   system one); pebble: test ACME server; swaks: SMTP client for manual checks;
# openssl, ca-certificates: TLS tooling; python3-venv: venv support for Debian's python3;
# knot, unbound: real DNS for the tests (an authoritative server signing the test
#   zones, a validating resolver); only private instances on loopback ports are
#   started, the system services stay stopped and disabled (below);
# knot-dnsutils: kdig/knsupdate, to look at the test DNS by hand.
# strace: bench/ counts the commands a deploy hook runs from outside.
# prometheus-node-exporter: scrapes the metrics file in tests (started by the test on a
#   loopback port; its system service stays stopped and disabled too);
# debootstrap, systemd-container: the systemd tier builds a Debian 12 tree and boots it
#   with systemd-nspawn.
packages=(postfix pebble swaks openssl ca-certificates python3-venv knot knot-dnsutils unbound
    strace prometheus-node-exporter debootstrap systemd-container)
# Services the packages enable on install; they would bind port 53 (and
# unbound-resolvconf would point /etc/resolv.conf at it), or 9100, at the next boot.
dns_services=(knot.service unbound.service unbound-resolvconf.service
    prometheus-node-exporter.service)

missing=()
for pkg in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    echo "setup.sh: installing ${missing[*]}"
    # "No configuration": the package must not write /etc/postfix/main.cf or
    # set up a system mail server; tests run their own instances.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Forbid service starts during the install (policy-rc.d exit 101), so the
    # system postfix is never started; removed again afterwards.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        "${missing[@]}" >/dev/null
    if ((added_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
fi

for unit in "${dns_services[@]}"; do
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
        systemctl disable --quiet "$unit" 2>/dev/null || true
    fi
done

# The venv is made with the python3 found on PATH; the project needs >= 3.11.
python=python3
if ! command -v "$python" >/dev/null; then
    echo "setup.sh: python3 not found on PATH" >&2
    exit 1
fi
if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "setup.sh: $("$python" --version 2>&1) is too old; pftls-hook needs Python >= 3.11" >&2
    exit 1
fi

if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -c 'import sys' 2>/dev/null; then
    echo "setup.sh: creating .venv with $("$python" --version 2>&1)"
    rm -rf .venv
    "$python" -m venv .venv
fi

.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
echo "setup.sh: ready ($(.venv/bin/python --version 2>&1), $(postconf -d -h mail_version 2>/dev/null | sed 's/^/postfix /'))"
