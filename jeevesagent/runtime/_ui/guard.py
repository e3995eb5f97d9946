"""The dashboard's security rules, checked on every request before a route runs.

- **Actions need the token.** A ``POST`` (signal, cancel, fork, start) must carry
  ``Authorization: Bearer TOKEN``. Without a token the app refuses to be made unless ``no_auth``
  is stated, and then it serves loopback clients only, under a loopback ``Host`` (a DNS-rebinding
  page cannot reach it by another name).
- **CSRF-safe.** A ``POST`` must be ``application/json`` (a cross-site form cannot send that
  without a CORS preflight, which this app never grants), carry the page's CSRF token in the
  ``X-Jeevesagent-Csrf`` header (a per-app random value written into the pages it serves, which
  another origin cannot read), and, when the browser says where it comes from (``Origin``,
  ``Sec-Fetch-Site``), come from this origin. The bearer token is never a cookie, so a browser
  never attaches it on its own.
- **Nothing secret is logged.** Refusals log the rule, the method and the path; never a header,
  a payload or a value.

Tokens are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
from dataclasses import dataclass, field

__all__ = ["CSRF_HEADER", "TOKEN_ENV", "Guard", "Refused", "is_loopback_host"]

TOKEN_ENV = "JEEVESAGENT_UI_TOKEN"
CSRF_HEADER = "x-jeevesagent-csrf"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})

log = logging.getLogger("jeevesagent.runtime.ui")


class Refused(Exception):
    """A request a rule refuses: ``status`` (401, 403, 415) and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (an address or a name, without port) is this machine's loopback."""
    if not host:
        return False
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Guard:
    """The rules for one app: its token (``None``: no auth, loopback only) and CSRF token."""

    token: str | None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def make(cls, token: str | None, no_auth: bool) -> Guard:
        if token is not None and not token.strip():
            token = None
        if token is None and not no_auth:
            raise ValueError(
                "the dashboard needs a token for its actions: pass token= (the command line: "
                f"--token or ${TOKEN_ENV}), or no_auth=True to serve loopback clients only"
            )
        if token is not None and len(token) < 16:
            raise ValueError("the dashboard's token is too short: use 16 characters or more")
        return cls(token)  # a token given with no_auth: the token rules

    def check_request(self, client: str | None, host_header: str, path: str) -> None:
        """Every request: without a token, loopback clients under a loopback ``Host`` only."""
        if self.token is not None:
            return
        if not is_loopback_host(client):
            self._refuse(403, "no-auth serves loopback clients only", "GET", path)
        if not is_loopback_host(_host_name(host_header)):
            self._refuse(
                403, "no-auth answers a loopback Host only (localhost, 127.0.0.1, [::1])", "", path
            )

    def check_action(
        self,
        *,
        path: str,
        content_type: str,
        csrf: str | None,
        authorization: str | None,
        origin: str | None,
        fetch_site: str | None,
        own_origins: tuple[str, ...],
    ) -> None:
        """A ``POST``: JSON, same origin, the CSRF token, the bearer token (see the module)."""
        if content_type.split(";")[0].strip().lower() != "application/json":
            self._refuse(415, "an action is a JSON request (Content-Type: application/json)", path)
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            self._refuse(403, "a cross-site request is refused (CSRF)", path)
        if origin is not None and origin not in own_origins:
            self._refuse(403, "a request from another origin is refused (CSRF)", path)
        if csrf is None or not hmac.compare_digest(csrf.encode(), self.csrf.encode()):
            self._refuse(
                403,
                f"the CSRF token ({CSRF_HEADER} header) is missing or wrong: reload the page",
                path,
            )
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            self._refuse(
                401, "this action needs the dashboard's token (Authorization: Bearer)", path
            )
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._refuse(401, "the token is wrong: enter the dashboard's token", path)

    @staticmethod
    def _refuse(status: int, message: str, *where: str) -> None:
        log.warning("refused %s: %s", " ".join(w for w in where if w), message)
        raise Refused(status, message)
