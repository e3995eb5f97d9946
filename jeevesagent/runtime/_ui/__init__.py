"""The web dashboard (extra ``[ui]``): ``app`` (the Starlette ASGI app), ``views`` (what its
pages show), ``live`` (server-sent events), ``guard`` (its security rules), ``command`` (the
``ui`` command, served by hypercorn) and ``static/`` (its HTML, CSS and JavaScript, shipped as
package data). Public as :func:`jeevesagent.runtime.ui.create_app`.
"""
