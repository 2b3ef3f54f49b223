#!/usr/bin/env bash
# A Debian bookworm base image made from Debian's packages, for hosts that cannot pull from an
# image registry (the official debian:bookworm-slim is the default BASE of every Dockerfile
# here; this is a stand-in built the way that image is: debootstrap minbase, then slimmed).
#   deploy/images/debian-base.sh [NAME]        default NAME: konnect-base:bookworm
# As root, with debootstrap and a running Docker daemon (docker.io). About 30-60 s.
# The apt sources are the host's when the host runs bookworm (so the image reaches the same
# package mirror and the security updates), else debootstrap's default.
set -euo pipefail
name=${1:-konnect-base:bookworm}
suite=bookworm
work=$(mktemp -d "${TMPDIR:-/tmp}/konnect-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

# shellcheck disable=SC2086 # an optional mirror URL
debootstrap --variant=minbase "$suite" "$root" ${DEBIAN_MIRROR:-} >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

if grep -qs "^VERSION_CODENAME=$suite$" /etc/os-release && [ -s /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/debian.sources"
  rm -f "$root/etc/apt/sources.list"
fi

# As the official slim images: no documentation, manual pages or translations, now or from
# later installs; package scripts never start services inside an image build.
cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,groff,info,lintian,linda}/* "$root"/var/cache/apt/*.bin \
       "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
       "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +

tar --numeric-owner -C "$root" -c . \
  | docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase $suite" - "$name" >/dev/null
echo "$name"
