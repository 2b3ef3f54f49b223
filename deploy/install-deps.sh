#!/usr/bin/env bash
# Installs what the project needs and is missing: Debian packages (when root) and the
# Python virtualenv. Idempotent and quiet when everything is already there.
# Usage: deploy/install-deps.sh [test|run]
set -euo pipefail
cd "$(dirname "$0")/.."
purpose=${1:-test}
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

# binary -> Debian package
declare -A need=([redis-server]=redis-server [caddy]=caddy)
if [ "$purpose" = test ] || [ "${KONNECT_REDIS:-single}" = sentinel ]; then
  need+=([redis-sentinel]=redis-sentinel)  # the failover tests; make run's HA variant
fi
if [ "$purpose" = test ]; then
  need+=([slapd]=slapd [ldapwhoami]=ldap-utils [apache2]=apache2 [chromium]=chromium
         [node]=nodejs [npm]=npm [wrk]=wrk)
  # The container tests (tests/deploy/): the Docker daemon, Debian's Compose (1.29; a
  # `docker compose` plugin is used instead where installed) and debootstrap for the base
  # image. The tests start and stop dockerd themselves.
  need+=([dockerd]=docker.io [debootstrap]=debootstrap)
  docker compose version >/dev/null 2>&1 || need+=([docker-compose]=docker-compose)
elif [ "${KONNECT_PROXY:-caddy}" = apache ]; then
  need[apache2]=apache2
fi

missing=()
for bin in "${!need[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("${need[$bin]}")
done
if [ "$purpose" = test ]; then
  # file -> Debian package: the SAML2 tests run SimpleSAMLphp under Apache with mod_php
  # (tests/support/simplesamlphp.py); pysaml2 verifies signatures with xmlsec1
  declare -A files=([/usr/bin/xmlsec1]=xmlsec1 [/usr/share/simplesamlphp/www/index.php]=simplesamlphp
                    [/usr/lib/apache2/modules/libphp8.2.so]=libapache2-mod-php
                    [/etc/php/8.2/mods-available/dom.ini]=php-xml
                    [/etc/php/8.2/mods-available/mbstring.ini]=php-mbstring)
  for file in "${!files[@]}"; do
    [ -e "$file" ] || missing+=("${files[$file]}")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Packages like redis-server, slapd and apache2 would start system services on
    # install; we run our own instances, so keep the package scripts from starting any.
    policy=/usr/sbin/policy-rc.d
    own_policy=
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; own_policy=1
    fi
    # Another apt run on the machine holds the lock for a while: wait for it, not fail.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$own_policy" ]; then rm -f "$policy"; fi
  else
    echo "missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  echo "installing Python packages into $VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -r requirements-dev.txt -c constraints.txt
  touch "$stamp"
fi
