"""What happens to the content itself, outside SimulCrypt: the scrambler that applies TEK(n) to a
service's IP stream, the reference terminal that undoes it, and the lab's checkable content.

Pure like ``bcast/`` (no Twisted, no sockets, no clock): the UDP adapters live in ``roles/``.
"""
