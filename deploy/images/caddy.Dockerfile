# Caddy from Debian's packages, for compose.debian.yaml: where the official caddy:2 image
# cannot be pulled. The official image's layout: the Caddyfile at /etc/caddy/Caddyfile
# (compose.yaml mounts deploy/Caddyfile there), data in /data, configuration in /config.
# Runs as Debian's `caddy` user (the issuer's port is above 1024; for 443 add the
# NET_BIND_SERVICE capability).
#   docker build -f deploy/images/caddy.Dockerfile -t konnect-caddy:bookworm deploy/images
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends caddy \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o caddy -g caddy -m 0750 /data /config
ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data
VOLUME /data /config
WORKDIR /srv
USER caddy:caddy
EXPOSE 8443
CMD ["caddy", "run", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"]
