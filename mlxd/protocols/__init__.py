"""Wire formats, one module each: parse and validate a client's messages, serialise neutral server events.

A protocol module knows JSON and field names and nothing of sessions, queues or models.
"""
