#!/usr/bin/env bash
# The image's entrypoint (deploy/Dockerfile). Kopano Konnect's Docker conventions, so an
# administrator's `docker run`/`docker service create` lines and Docker secrets keep working:
#
#   serve [FLAGS] [IDENTITY_MANAGER ARGS]   the service named by KONNECT_SERVICE (identifier,
#                                           authorize, token or userinfo) with Konnect's serve
#                                           flags, listening on KONNECTD_LISTEN (0.0.0.0:8777);
#                                           --metrics-listen=0.0.0.0:6777 is added, as Konnect's
#                                           image does (metrics still need --with-metrics)
#   --FLAG ...                              the same as `serve --FLAG ...`
#   identifier|authorize|token|userinfo     that service on its port of deploy/addresses.env
#                                           (deploy/bin/konnect-program; compose.yaml)
#   help                                    this text and the services' flags
#   healthcheck                             the HEALTHCHECK of a `serve` container
#   anything else                           run as given (python -m shared.keytool ..., sh)
#
# Before any of them: each file named by KONNECTD_*_FILE that exists under
# KONNECTD_DOCKER_SECRETS_PATH (/run/secrets) sets its variable, as in Konnect's image:
#   konnectd_signing_private_key     -> KONNECTD_SIGNING_PRIVATE_KEY (the path)
#   konnectd_encryption_secret       -> KONNECTD_ENCRYPTION_SECRET (the path)
#   konnectd_access_token_signing_key -> KONNECTD_ACCESS_TOKEN_SIGNING_KEY (the path; ours,
#                                       named in Konnect's style: docs/operations.md "Signing keys")
#   konnectd_kopano_server_username  -> KOPANO_SERVER_USERNAME (the file's content)
#   konnectd_kopano_server_password  -> KOPANO_SERVER_PASSWORD (the file's content)
#   konnectd_ldap_bind_dn            -> LDAP_BINDDN (the file's content)
#   konnectd_ldap_bind_password      -> LDAP_BINDPW (the file's content)
# ARGS (words) is appended to the command line. Started as root (docker run --user 0), the
# command runs as KONNECTD_USER:KONNECTD_GROUP (konnect), never as root.
set -euo pipefail

secret_file() {  # the path of the secret named by $1 (a KONNECTD_*_FILE value), if it exists
  local name=$1
  [[ -n "$name" ]] || return 1
  [[ "$name" == /* ]] || name="${KONNECTD_DOCKER_SECRETS_PATH:-/run/secrets}/$name"
  [[ -f "$name" ]] && printf '%s' "$name"
}

if f=$(secret_file "${KONNECTD_SIGNING_PRIVATE_KEY_FILE:-}"); then export KONNECTD_SIGNING_PRIVATE_KEY="$f"; fi
if f=$(secret_file "${KONNECTD_ENCRYPTION_SECRET_FILE:-}"); then export KONNECTD_ENCRYPTION_SECRET="$f"; fi
if f=$(secret_file "${KONNECTD_ACCESS_TOKEN_SIGNING_KEY_FILE:-}"); then export KONNECTD_ACCESS_TOKEN_SIGNING_KEY="$f"; fi
if f=$(secret_file "${KONNECTD_KOPANO_SERVER_USERNAME_FILE:-}"); then export KOPANO_SERVER_USERNAME="$(<"$f")"; fi
if f=$(secret_file "${KONNECTD_KOPANO_SERVER_PASSWORD_FILE:-}"); then export KOPANO_SERVER_PASSWORD="$(<"$f")"; fi
if f=$(secret_file "${KONNECTD_LDAP_BIND_DN_FILE:-}"); then export LDAP_BINDDN="$(<"$f")"; fi
if f=$(secret_file "${KONNECTD_LDAP_BIND_PASSWORD_FILE:-}"); then export LDAP_BINDPW="$(<"$f")"; fi
unset f

services="identifier authorize token userinfo"
python="${KONNECT_PYTHON:-python3}"

[[ $# -gt 0 ]] || set -- help
[[ "$1" == -* ]] && set -- serve "$@"
case "$1" in
  serve)
    shift
    service="${KONNECT_SERVICE:-}"
    case "$service" in
      identifier|authorize|token|userinfo) ;;
      *) echo "konnect: this image runs one service per container; set KONNECT_SERVICE to one" \
              "of: $services (got '${service}'). docs/operations.md shows the four behind one proxy." >&2
         exit 2 ;;
    esac
    # shellcheck disable=SC2086 # ARGS is a list of words, as in Konnect's image
    set -- "$python" -m "services.$service" --metrics-listen=0.0.0.0:6777 "$@" ${ARGS:-} ;;
  identifier|authorize|token|userinfo)
    # shellcheck disable=SC2086
    set -- "$(dirname "${BASH_SOURCE[0]}")/bin/konnect-program" "$@" ${ARGS:-} ;;
  healthcheck)
    shift
    exec "$python" -m shared.healthcheck --listen "${KONNECTD_LISTEN:-0.0.0.0:8777}" "$@" ;;
  help|--help)
    echo "usage: docker run [--read-only] [-v KEY:/run/secrets/konnectd_signing_private_key:ro]"
    echo "         [-v SECRET:/run/secrets/konnectd_encryption_secret:ro] -e KONNECT_SERVICE=NAME"
    echo "         IMAGE serve [Konnect's serve flags] [IDENTITY_MANAGER ARGS...]"
    echo "       NAME: $services (one service per container; docs/operations.md)"
    echo
    exec "$python" -m services.token --help ;;
esac

if [[ "$(id -u)" == 0 && -n "${KONNECTD_USER:-}" ]]; then
  exec setpriv --reuid="$KONNECTD_USER" --regid="${KONNECTD_GROUP:-$KONNECTD_USER}" \
       --clear-groups --no-new-privs -- "$@"
fi
exec "$@"
