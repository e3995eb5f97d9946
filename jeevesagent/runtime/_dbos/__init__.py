"""DBOSRuntime: sessions as DBOS workflows in DBOS's system database (extra ``[dbos]``).

``runtime`` holds the public class and never imports ``dbos`` at import time; ``bridge`` is the
DBOS side (the one registered workflow, and the thread-safe hand-off to it) and imports ``dbos``.
"""
