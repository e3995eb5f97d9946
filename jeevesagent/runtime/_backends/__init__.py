"""The bundled durable backends: SQLite and PostgreSQL, with their schemas, the asyncio bridge and
the worker thread.
"""
