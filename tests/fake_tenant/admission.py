"""Who may connect: the CONNACK decision and connect-time fault injection.

Owns the connection rules of ref §1 (protocol level, client ID, clean
session, credentials; codes of ref §1.9), the live ``credentials`` map, and
the two faults tests arm: refusing the next connects with a chosen code, and
marking sessions to be dropped on their first PUBLISH (rate-limit symptom).
"""

from __future__ import annotations

from typing import Any

from .mqtt import client_key, device_identifier

Decision = tuple[int, str | None]     # CONNACK code, violation text


class Admission:
    """CONNACK policy; lives in the server thread."""

    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = credentials
        self.registration: Any = None  # the bootstrap user (registration.Registration)
        self._refuse: tuple[int, int | None] | None = None   # code, remaining
        self._rate_limit: dict[str, int | None] = {}         # key -> sessions left

    def decide(self, info: dict[str, Any]) -> Decision:
        """CONNACK code (ref §1.9) and an optional violation text."""
        decision = (self._protocol_decision(info) or self._refusal()
                    or (self._credentials_code(info), None))
        if self.registration is not None and decision[0] == 0:
            self.registration.admitted(client_key(info["client_id"]),
                                       self.registration.is_bootstrap_user(info.get("username")))
        return decision

    @staticmethod
    def _protocol_decision(info: dict[str, Any]) -> Decision | None:
        if (info["protocol_name"], info["protocol_level"]) != ("MQTT", 4):
            return 1, (f"protocol {info['protocol_name']!r} level "
                       f"{info['protocol_level']}: only MQTT 3.1.1 is accepted")
        if device_identifier(info["client_id"]) is None:
            return 2, f"client ID {info['client_id']!r} rejected (':' rules, ref §1.3)"
        if not info["clean_session"]:
            return 2, "clean session must be 1 (ref §1.8)"
        return None

    def _refusal(self) -> Decision | None:
        """An armed ``refuse`` answers this connect (and counts it)."""
        if self._refuse is None:
            return None
        code, remaining = self._refuse
        if remaining is not None:
            self._refuse = (code, remaining - 1) if remaining > 1 else None
        return code, None

    def _credentials_code(self, info: dict[str, Any]) -> int:
        """5 without username or password, 4 if they do not match, else 0."""
        username, password = info.get("username"), info.get("password")
        if not username or not password:
            return 5
        if self.registration is not None and self.registration.is_bootstrap_user(username):
            return self.registration.bootstrap_code(password.decode("utf-8", "replace"))
        tenant, _, user = username.partition("/")
        if not tenant or not user or self.credentials.get(username) != password.decode(
                "utf-8", "replace"):
            return 4
        return 0

    def refuse(self, code: int, count: int | None) -> None:
        """Answer the next ``count`` connects (None: all) with ``code``."""
        self._refuse = (code, count)

    def accept(self) -> None:
        """Undo ``refuse``."""
        self._refuse = None

    def arm_rate_limit(self, key: str, sessions: int | None) -> None:
        """The next ``sessions`` sessions (None: all, 0: disarm) of ``key``."""
        if sessions == 0:
            self._rate_limit.pop(key, None)
        else:
            self._rate_limit[key] = sessions

    def take_rate_limit(self, key: str) -> bool:
        """Whether the session of ``key`` being accepted is rate-limited."""
        if key not in self._rate_limit:
            return False
        remaining = self._rate_limit[key]
        if remaining is not None:
            if remaining <= 1:
                del self._rate_limit[key]
            else:
                self._rate_limit[key] = remaining - 1
        return True
