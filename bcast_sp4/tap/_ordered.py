"""A ``MultiService`` that stops its children one after the other, clients before servers.

Twisted's ``MultiService.stopService`` stops every child at once (in reverse order, without
waiting). A SimulCrypt client closes in order -- stream_close_request, each stream_close_response,
channel_close, TCP close (TS 103 197 §5, §6; digest ``simulcrypt.md`` §6.5) -- and needs its peer,
and its own connection service, alive meanwhile. :class:`SequentialStop` stops the last-added child
first and waits for its Deferred before the next: add servers first, clients last.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger


class SequentialStop(MultiService):
    """Children stop in reverse order of addition, each once the one before has stopped."""

    log = Logger()

    def stopService(self) -> Deferred:
        super(MultiService, self).stopService()  # Service: running = 0, no children touched

        async def stop_all() -> None:
            for child in reversed(list(self)):
                try:
                    await maybeDeferred(child.stopService)
                except Exception:
                    self.log.failure("stopping {child!r} failed", child=child)

        return ensureDeferred(stop_all())


__all__ = ["SequentialStop"]
