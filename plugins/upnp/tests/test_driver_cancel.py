"""A request cancelled while its body is being written leaves nothing for the GC to finish.

Found end to end (a chain cancelling a losing UPnP attempt on trio): httpx's own request body
stream is an async generator suspended at ``yield`` while the bytes are written, and trio
warns (``ResourceWarning``, an error in this suite) when such a generator is collected. The
server here is a plain TCP listener that accepts and never reads, so the write blocks: no
router answers like that on purpose, but a slow one does.
"""

from __future__ import annotations

import gc
import socket

import anyio
import pytest
from nattrav_upnp.driver import HttpTransport
from nattrav_upnp.errors import UpnpHttpError
from nattrav_upnp.urls import UrlPolicy, parse_http_url

pytestmark = pytest.mark.anyio


async def test_cancelled_post_leaves_no_suspended_body_stream() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        url = parse_http_url(f"http://127.0.0.1:{port}/ctl", UrlPolicy(allow_loopback=True))
        body = b"x" * (8 << 20)  # far more than the socket buffers hold: the write blocks
        async with HttpTransport(timeout=5.0, max_body=1024) as transport:
            with anyio.move_on_after(0.3) as scope:
                try:
                    await transport.post(url, [("Content-Type", "text/xml")], body)
                except UpnpHttpError:
                    pass
            assert scope.cancelled_caught
        gc.collect()  # an abandoned async generator would warn (an error here) now
        await anyio.sleep(0)
