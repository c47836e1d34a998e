"""Device registration with the bootstrap user (ref §1.5), as the platform does it.

Owns the bootstrap user (``management/devicebootstrap`` with the password a
test chooses), which client keys are connected as that user, what an operator
did in Device management > Registration (``accept``) and the credentials the
platform issued (``device_<external ID>`` with a random password), which join
the tenant's live credentials until ``revoke`` removes them again.

The bootstrap user may only subscribe ``s/dcr`` and publish an empty message
on ``s/ucr``; anything else is a violation (and is refused or not applied).
A poll on ``s/ucr`` for an external ID nobody accepted yet gets no answer:
the platform just waits.  After ``accept`` the next poll gets
``70,<tenant>,<user>,<password>`` on ``s/dcr`` (if subscribed), once.
"""

from __future__ import annotations

import secrets
from typing import Any, Callable

from .admission import Admission
from .broker import Broker
from .connection import Connection
from .journal import Journal
from .topics import BOOTSTRAP_DOWN, BOOTSTRAP_UP, grant_bootstrap

BOOTSTRAP_USERNAME = "management/devicebootstrap"

Deliver = Callable[[Connection, str, bytes], bool]


class Registration:
    """Bootstrap logins and issued credentials; lives in the server thread."""

    def __init__(self, journal: Journal, admission: Admission, tenant_id: str,
                 bootstrap_password: str | None) -> None:
        self.journal = journal
        self.admission = admission
        self.tenant_id = tenant_id
        self.bootstrap_password = bootstrap_password
        self.bootstrap_keys: set[str] = set()   # keys whose live session is the bootstrap user's
        self.accepted: set[str] = set()          # accepted, credentials not yet fetched
        self.issued: dict[str, tuple[str, str, str]] = {}   # key -> (tenant, user, password)
        self.requests: dict[str, int] = {}       # key -> s/ucr polls

    # ------------------------------------------------------------------ admission

    @staticmethod
    def is_bootstrap_user(username: str | None) -> bool:
        return username == BOOTSTRAP_USERNAME

    def bootstrap_code(self, password: str) -> int:
        """CONNACK code for the bootstrap user: 0, or 4 (wrong/unknown, ref §1.9)."""
        if self.bootstrap_password and password == self.bootstrap_password:
            return 0
        return 4

    def admitted(self, key: str, bootstrap: bool) -> None:
        """A session of ``key`` was accepted; it is the bootstrap user's or not."""
        if bootstrap:
            self.bootstrap_keys.add(key)
        else:
            self.bootstrap_keys.discard(key)

    def is_bootstrap(self, key: str) -> bool:
        return key in self.bootstrap_keys

    # ------------------------------------------------------------------ topics

    def publish(self, conn: Connection, topic: str, payload: bytes,
                deliver: Deliver) -> None:
        """A bootstrap session published: only an empty ``s/ucr`` means anything."""
        if topic not in BOOTSTRAP_UP:
            self.journal.violation(conn.key, f"the bootstrap user published to {topic!r} "
                                   f"(it may only publish to {', '.join(BOOTSTRAP_UP)}); "
                                   "not applied")
            return
        if payload:
            self.journal.violation(conn.key, f"{topic} with a {len(payload)}-byte payload "
                                   "(the request is an empty message)")
        self.requests[conn.key] = self.requests.get(conn.key, 0) + 1
        if conn.key not in self.accepted:
            return  # not (yet) accepted in Device registration: the platform waits
        tenant, user = self.tenant_id, f"device_{conn.key}"
        password = secrets.token_urlsafe(12)
        line = f"70,{tenant},{user},{password}"
        if deliver(conn, next(iter(BOOTSTRAP_DOWN)), line.encode()):
            self.accepted.discard(conn.key)
            self.issued[conn.key] = (tenant, user, password)
            self.admission.credentials[f"{tenant}/{user}"] = password

    # ------------------------------------------------------------------ operator

    def accept(self, key: str) -> None:
        self.accepted.add(key)

    def revoke(self, key: str) -> tuple[str, str, str] | None:
        """Forget the credentials issued to ``key``; returns them (None: none issued)."""
        self.accepted.discard(key)
        issued = self.issued.pop(key, None)
        if issued is not None:
            self.admission.credentials.pop(f"{issued[0]}/{issued[1]}", None)
        return issued


class RegisteringBroker(Broker):
    """The broker, with the bootstrap user's subscription rule (only ``s/dcr``)."""

    def __init__(self, *args: Any, registration: Registration, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registration = registration
        self.upstream.registration = registration

    def _grant(self, conn: Connection, topic_filter: str, qos: int) -> int:
        if not self.registration.is_bootstrap(conn.key):
            return super()._grant(conn, topic_filter, qos)
        code, problem = grant_bootstrap(topic_filter, qos)
        if problem:
            self.journal.violation(conn.key, problem)
        return code
