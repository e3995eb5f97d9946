"""The web dashboard as an ASGI app to mount in your own (extra ``[ui]``: Starlette).

.. code-block:: python

    from starlette.applications import Starlette
    from starlette.routing import Mount
    from jeevesagent.runtime.ui import create_app

    dashboard = create_app(store, token=os.environ["JEEVESAGENT_UI_TOKEN"])
    app = Starlette(routes=[Mount("/runtime", app=dashboard)])

Or serve it alone: ``jeevesagent-runtime ui --db TARGET``. Importing this module imports
Starlette; ``import jeevesagent.runtime`` never does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._core.values import SIGNING_KEY_ENV
from ._journal.backend import JournalBackend

__all__ = ["create_app"]

try:
    from ._ui.app import make_app
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"jeevesagent.runtime.ui needs the [ui] extra ({exc.name} is missing): "
        "pip install 'jeevesagent[ui]'"
    ) from exc


def create_app(
    store: JournalBackend,
    *,
    token: str | None = None,
    no_auth: bool = False,
    signing_key_env: str = SIGNING_KEY_ENV,
    workflows: Sequence[str] = (),
    poll_interval: float = 1.0,
) -> Any:
    """The dashboard over ``store`` (open; you close it), as an ASGI app.

    :param token: what actions (signal, cancel, fork, start) need, as ``Authorization: Bearer``
        (the pages ask for it); 16 characters or more. Reading needs none.
    :param no_auth: no token: the app then serves loopback clients only, under a loopback
        ``Host``. Without a token and without ``no_auth`` this raises ``ValueError``.
    :param signing_key_env: the variable holding the signing key that what the dashboard writes
        is signed with (a signal, a fork's rows), as the command line does; the store's own key
        decides what is previewed.
    :param workflows: workflow names the start form offers (with those in the journal).
    :param poll_interval: seconds between looks for the live pages.
    """
    return make_app(
        store,
        token=token,
        no_auth=no_auth,
        signing_key_env=signing_key_env,
        workflows=workflows,
        poll_interval=poll_interval,
    )
