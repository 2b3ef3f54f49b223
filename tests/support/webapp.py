"""A web application's "who is signed in" endpoint, as Konnect's cookie identity manager
asks it (identity/managers/cookie.go; its examples/coookieserver.py): a POST with the
browser's cookies, `202` with `{"sub", "name", "email", "id"}` for a known session cookie,
`401` without one. Runs on the test's own IOLoop on a loopback port."""

from __future__ import annotations

import json

import tornado.httpserver
import tornado.testing
import tornado.web


class WebApp:
    """`sessions`: session cookie value -> the user's JSON; `seen`: the request headers."""

    def __init__(self, cookie_name: str = "webapp") -> None:
        self.cookie_name, self.sessions, self.seen = cookie_name, {}, []
        webapp = self

        class Me(tornado.web.RequestHandler):
            def post(self) -> None:
                webapp.seen.append(dict(self.request.headers))
                user = webapp.sessions.get(self.get_cookie(webapp.cookie_name) or "")
                if user is None:
                    self.set_status(401)
                    return self.finish()
                self.set_status(202)
                self.finish(json.dumps(user))

        sock, self.port = tornado.testing.bind_unused_port()
        self._server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/me", Me)]))
        self._server.add_sockets([sock])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/me"

    def stop(self) -> None:
        self._server.stop()
