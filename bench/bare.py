"""Bare Tornado handlers: the framework floors the services are compared with.

    python bench/bare.py --port P --redis redis://127.0.0.1:R/0 --public-key KEY.pem --iss ISS

- `GET /hello`: a JSON hello world (Tornado + asyncio + json, no logging, nothing else).
- `POST /base`: reads a form body, makes ONE Redis round trip (GETDEL of a missing key)
  and answers a small JSON document: the per-request cost of a token request before any
  signature (the `base` term of the cost-model floor in docs/benchmarks.md, measured in each run).
- `GET /userinfo`: the userinfo floor: takes the Bearer JWT, verifies its signature with
  raw `cryptography` (ES256, RS256 or PS256, key loaded once), checks exp and iss, makes ONE
  Redis round trip (EXISTS of the jti's revocation key) and answers the claims as JSON.

Same stack as the services (Tornado, the same event loop: `--event-loop uvloop|asyncio` as
the services' option of that name, redis-py asyncio with hiredis), none of their features
(no security headers, access log, metrics, user lookup).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import time

import redis.asyncio as aioredis
import tornado.httpserver
import tornado.netutil
import tornado.web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, utils


def b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


class Hello(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"hello": "world"}))


class Base(tornado.web.RequestHandler):
    def initialize(self, redis) -> None:
        self.redis = redis

    async def post(self) -> None:
        grant_type = self.get_body_argument("grant_type", "")
        await self.redis.getdel("bench:missing")
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"grant_type": grant_type, "ok": True}))


class UserInfo(tornado.web.RequestHandler):
    def initialize(self, redis, key, iss) -> None:
        self.redis, self.key, self.iss = redis, key, iss

    async def get(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        token = auth[7:] if auth[:7].lower() == "bearer " else ""
        try:
            head, payload, sig = token.split(".")
            header = json.loads(b64decode(head))
            signing_input = (head + "." + payload).encode("ascii")
            alg = header.get("alg")
            if alg == "ES256":  # JWS: r || s, 32 octets each (RFC 7518 §3.4)
                raw = b64decode(sig)
                der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                                 int.from_bytes(raw[32:], "big"))
                self.key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
            elif alg in ("PS256", "RS256"):
                pad = (padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
                       if alg == "PS256" else padding.PKCS1v15())
                self.key.verify(b64decode(sig), signing_input, pad, hashes.SHA256())
            else:
                raise ValueError("alg")
            claims = json.loads(b64decode(payload))
            if claims["exp"] <= time.time() or claims["iss"] != self.iss:
                raise ValueError("claims")
        except (ValueError, KeyError, InvalidSignature):
            self.set_status(401)
            self.finish()
            return
        if await self.redis.exists("bench:revoked:jti:" + claims["jti"]):
            self.set_status(401)
            self.finish()
            return
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"sub": claims["sub"], "scope": claims.get("scope", "")}))


async def main(args) -> None:
    redis = aioredis.Redis.from_url(args.redis)
    with open(args.public_key, "rb") as f:
        data = f.read()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    app = tornado.web.Application([
        (r"/hello", Hello),
        (r"/base", Base, {"redis": redis}),
        (r"/userinfo", UserInfo, {"redis": redis, "key": key, "iss": args.iss}),
    ], log_function=lambda handler: None)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(tornado.netutil.bind_sockets(args.port, "127.0.0.1"))
    print(f"bare listening on 127.0.0.1:{args.port}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--iss", required=True)
    parser.add_argument("--event-loop", choices=("uvloop", "asyncio"), default="uvloop")
    args = parser.parse_args()
    if args.event_loop == "uvloop":
        import uvloop
        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
