#!/usr/bin/env bash
# The system packages of `make test-production`: PostgreSQL and Redis from Debian's packages, installed when
# missing (apt-get, through sudo when not root). Services are not started: scripts/topology.py starts its own
# servers on throw-away data directories. Elsewhere than Debian/Ubuntu, install them yourself.
set -euo pipefail
have_postgres() { command -v initdb >/dev/null || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; }
have_redis() { command -v redis-server >/dev/null; }
if have_postgres && have_redis; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "system-packages.sh: PostgreSQL (initdb, postgres) and redis-server are needed; install them" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
packages=()
have_postgres || packages+=(postgresql)
have_redis || packages+=(redis-server)
echo "system-packages.sh: installing ${packages[*]}"
# The packages would start their own services (a Postgres cluster, a Redis on 6379): a policy-rc.d answering 101
# ("action forbidden") keeps them stopped while they are installed, unless one is in place already.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
  $sudo chmod 755 "$policy"
  trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}"
