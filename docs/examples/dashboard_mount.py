"""The dashboard mounted in your own ASGI app (docs/guides/dashboard.md). Needs the [ui] extra."""

# -- example --
import os

from starlette.applications import Starlette
from starlette.routing import Mount

from jeevesagent.runtime import SqliteJournalStore
from jeevesagent.runtime.ui import create_app

store = SqliteJournalStore("journal.sqlite3")  # the store your application has open
token = os.environ.get("JEEVESAGENT_UI_TOKEN", "use-a-long-random-token-here")
app = Starlette(routes=[Mount("/runtime", app=create_app(store, token=token))])
# serve `app` with hypercorn (any ASGI server); close the store when the application stops
