"""Sends raw frames to the gateway's Responses WebSocket: a frame that is not a
`response.create` (an error frame comes back, the connection stays), then one larger
than the gateway takes (the connection is closed with 1009). Prints one JSON line.

Usage: ws_probe.py WS_URL API_KEY BYTES
"""

import json
import sys

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def main(url, key, size):
    with connect(url, additional_headers={"Authorization": f"Bearer {key}"}, max_size=None) as ws:
        ws.send(json.dumps({"type": "session.update"}))
        error = json.loads(ws.recv(timeout=10))
        ws.send("x" * int(size))
        try:
            ws.recv(timeout=10)
            closed = None
        except ConnectionClosed as e:
            closed = e.rcvd.code if e.rcvd else None
    print(json.dumps({"error": error, "closed": closed}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
