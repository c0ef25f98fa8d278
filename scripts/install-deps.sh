#!/usr/bin/env bash
# Installs what ferry's tests and demo run against, when missing: redis-server, redis-tools (redis-cli)
# and nutcracker (twemproxy), from Debian's packages with apt-get (we are root; no sudo). Idempotent:
# does nothing when all three are on PATH. Used by scripts/test.sh and scripts/demo.sh.
#
# The packages start system services (redis-server on :6379, nutcracker on its default config); ferry's
# tests and demo start their own servers on free ports, so the services that this script just installed
# are stopped and disabled again (systemd when it runs, else `service`, else the pidfile).
set -euo pipefail

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
command -v nutcracker >/dev/null || need+=(nutcracker)

if ((${#need[@]} == 0)); then
  echo "redis-server, redis-cli and nutcracker are present" \
    "($(redis-server --version | grep -o 'v=[0-9.]*'), nutcracker $(nutcracker -V 2>&1 | grep -o '[0-9][0-9.]*' | head -1))"
  exit 0
fi

echo "installing ${need[*]} with apt-get (missing on this machine)"
if [[ $(id -u) != 0 ]]; then
  echo "error: not root: install them yourself: apt-get install ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
start=$SECONDS
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" </dev/null >/dev/null
echo "installed in $((SECONDS - start))s: $(redis-server --version | grep -o 'v=[0-9.]*'), nutcracker $(nutcracker -V 2>&1 | grep -o '[0-9][0-9.]*' | head -1)"

for svc in redis-server nutcracker; do
  [[ " ${need[*]} " == *" $svc "* ]] || continue # only the services we just installed
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  else
    service "$svc" stop >/dev/null 2>&1 || true
  fi
  pf=/run/redis/redis-server.pid
  [[ $svc == nutcracker ]] && pf=/run/nutcracker/nutcracker.pid
  if [[ -f "$pf" ]]; then kill "$(cat "$pf")" 2>/dev/null || true; fi
  echo "stopped the $svc system service that the package started (we use our own on free ports)"
done
