"""jeevesagent: durable execution for Python agent workflows (see :mod:`jeevesagent.runtime`)."""
