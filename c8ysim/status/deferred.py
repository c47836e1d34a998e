"""The status app, built when its first request comes: the agent's `build_app`.

Most agents are never asked for their page, or only now and then; building the Bottle app
imports bottle, the page templates and the metrics (and, through bottle, hashlib with
OpenSSL's libcrypto), ~3 MB the supervisor would otherwise carry from its start, and
its children with it when that happens before they are forked (issue 18). `DeferredApp`
takes `build_app`'s arguments and builds the app from them on the first request (the
import costs that one request some tens of milliseconds); every later request goes
straight to the app. Imports nothing but the standard library until then.
"""

from __future__ import annotations


class DeferredApp:
    """A WSGI callable standing for `c8ysim.status.app.build_app(*args, **kwargs)`."""

    def __init__(self, *args, **kwargs):
        self._args, self._kwargs = args, kwargs
        self._app = None

    @property
    def built(self) -> bool:
        return self._app is not None

    def __call__(self, environ, start_response):
        if self._app is None:
            from c8ysim.status import app

            self._app = app.build_app(*self._args, **self._kwargs)
        return self._app(environ, start_response)
