"""Integrations with other libraries, each behind an optional extra: ``pydantic_ai`` (the
durability capability, ``jeevesagent[pydantic-ai]``) and ``pydantic_ai_events`` (its durable
waits for a person's answer). Nothing here is imported by ``import jeevesagent.runtime``."""
