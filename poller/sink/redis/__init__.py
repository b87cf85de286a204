"""The Redis sink: streams on a Redis or Valkey deployment (standalone, sentinel, cluster).

``keys`` holds the key rule, ``settings`` the ``[redis]`` section, ``sink`` the writer, ``reader``
what `poller tail` and `poller status` read through, ``consumer`` the helper for downstream
consumer groups; ``lua/`` the server-side scripts.
"""
