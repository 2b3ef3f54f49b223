# Redis from Debian's packages, for compose.debian.yaml: where the official redis:7 image
# cannot be pulled. Runs as Debian's `redis` user; its data (RDB and the append-only file)
# in /data, the working directory, as in the official image. compose.yaml gives the command;
# alone it listens on 6379 without protected mode, as the official image does (only the
# containers of its network reach it).
#   docker build -f deploy/images/redis.Dockerfile -t konnect-redis:bookworm deploy/images
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin \
 && install -d -o redis -g redis -m 0750 /data
WORKDIR /data
VOLUME /data
USER redis:redis
EXPOSE 6379
CMD ["redis-server", "--dir", "/data", "--protected-mode", "no"]
