#!/usr/bin/env bash
# System packages for the nattrav network lab, on Debian 12. Run as root; idempotent: packages
# already installed are not touched, and nothing is downloaded when all are present.
#
#   nftables iproute2 iptables    NAT, firewall, namespaces, veths, NFQUEUE rules (iptables-nft)
#   coturn                        STUN/TURN server (+ turnutils_* clients used by the self-tests)
#   miniupnpd-nftables            UPnP IGD / NAT-PMP / PCP daemon, nftables build. Only the binary
#                                 package: the `miniupnpd` wrapper package adds an init script
#                                 and debconf questions the lab does not want.
#   miniupnpc natpmpc             third-party clients for the self-tests (upnpc, natpmpc)
#   libnetfilter-queue-dev build-essential python3-dev
#                                 to build the NetfilterQueue wheel (delay/jitter/reordering)
#   python3-venv                  `make` creates the virtualenv with `python3 -m venv`
#   procps                        ps/pgrep for debugging; the lab itself reads /proc
#
# Installing coturn on a systemd host starts a host-wide TURN server; the lab runs its own coturn
# inside a namespace, so the packaged service is stopped and disabled here (and kept from
# starting during the install at all with a temporary policy-rc.d).
set -euo pipefail

PACKAGES=(
  nftables iproute2 iptables
  coturn
  miniupnpd-nftables
  miniupnpc natpmpc
  libnetfilter-queue-dev build-essential python3-dev python3-venv
  procps
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps.sh: needs root (apt-get install)" >&2
  exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  if [ "$status" != "installed" ]; then
    missing+=("$pkg")
  fi
done

export DEBIAN_FRONTEND=noninteractive
export DEBCONF_NONINTERACTIVE_SEEN=true

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps.sh: installing ${missing[*]}"
  # Keep package maintainer scripts from starting daemons (coturn) during the install.
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod 755 "$policy"
    made_policy=1
  fi
  trap '[ "$made_policy" = 1 ] && rm -f "$policy"' EXIT
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    "${missing[@]}"
fi

# The packaged coturn service must not run on the host. Stop and disable it by its service
# name (never by killing processes by name: other labs' coturn processes are not ours).
if dpkg-query -W -f='${db:Status-Status}' coturn 2>/dev/null | grep -q '^installed$'; then
  if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now coturn.service >/dev/null 2>&1 || true
  else
    if [ -x /etc/init.d/coturn ]; then
      /etc/init.d/coturn stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
      update-rc.d coturn disable >/dev/null 2>&1 || true
    fi
  fi
fi

# Sanity: the tools the lab calls.
for tool in ip nft iptables-restore ip6tables-restore tc turnserver miniupnpd upnpc natpmpc \
  turnutils_stunclient turnutils_natdiscovery turnutils_uclient; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "install-deps.sh: $tool is still missing" >&2
    exit 1
  fi
done
if ! miniupnpd --version 2>&1 | grep -q nftables; then
  echo "install-deps.sh: miniupnpd is not the nftables build (install miniupnpd-nftables)" >&2
  exit 1
fi
echo "install-deps.sh: lab dependencies present"
