"""Prototype, for measurement only: the agents' Channel served by grpclib on Python's ssl.

Not the collector. ``bench_channels.py --server grpclib`` starts this instead of
``casefile-collector serve`` to see what one idle agent channel would cost if the
collector's Channel endpoint were served by another transport than grpc-core: grpclib
(pure-Python gRPC on ``h2``) over asyncio's TLS (OpenSSL through the ``ssl`` module, which
sets ``SSL_MODE_RELEASE_BUFFERS``: an idle connection holds no TLS record buffers).

It does the real Channel handshake against the collector's store (hello, a fresh nonce,
the agent's Ed25519 signature checked with its enrolled key, accepted) and then holds the
stream open; nothing else (no audit, no ``last_seen_at``, no router). asyncio's
``SSLProtocol`` reads into a 256 KiB buffer of its own per connection;
``--ssl-read-buffer`` sets that class attribute (a private detail of asyncio) to show the
figure with it shrunk. grpclib is not a dependency of Casefile (``pip install grpclib``).

    .venv/bin/python benchmarks/proto_channel_grpclib.py --address 127.0.0.1:7443 \
        --data-dir DIR --ready-file FILE [--ssl-read-buffer 16384]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import ssl
from pathlib import Path
from typing import Any

from agent.keys import PublicKey
from agent.transport.channel_proof import NONCE_BYTES, channel_message
from collector.server import default_db_url
from collector.storage import Store
from collector.tls import ensure_self_signed
from protos import collector_pb2

PATH = "/casefile.v1.Channel/Connect"


class ChannelProto:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.held = 0

    async def connect(self, stream: Any) -> None:
        hello = await stream.recv_message()
        if hello is None or hello.WhichOneof("msg") != "hello":
            return
        agent_id = hello.hello.agent_id[:64]
        nonce = secrets.token_bytes(NONCE_BYTES)
        await stream.send_message(collector_pb2.CollectorMessage(challenge=collector_pb2.Challenge(nonce=nonce)))
        answer = await stream.recv_message()
        if answer is None:
            return
        agent = await asyncio.to_thread(self.store.get_agent, agent_id)
        if not PublicKey(agent.public_key).verify(
            bytes(answer.challenge_response.signature), channel_message(nonce, agent.id)
        ):
            return
        accepted = collector_pb2.ChannelAccepted(agent_id=agent.id)
        await stream.send_message(collector_pb2.CollectorMessage(accepted=accepted))
        self.held += 1
        try:
            while await stream.recv_message() is not None:
                pass
        finally:
            self.held -= 1

    def __mapping__(self) -> dict[str, Any]:
        from grpclib.const import Cardinality, Handler

        return {
            PATH: Handler(
                self.connect, Cardinality.STREAM_STREAM, collector_pb2.AgentMessage, collector_pb2.CollectorMessage
            )
        }


async def main() -> None:
    from grpclib.server import Server

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--ready-file", type=Path, required=True)
    ap.add_argument("--db-url", default=None)
    ap.add_argument("--ssl-read-buffer", type=int, default=0, help="asyncio SSLProtocol.max_size (0: 256 KiB)")
    args = ap.parse_args()
    if args.ssl_read_buffer:
        import asyncio.sslproto

        asyncio.sslproto.SSLProtocol.max_size = args.ssl_read_buffer  # type: ignore[misc]
    args.data_dir.mkdir(parents=True, exist_ok=True)
    store = Store.open(args.db_url or default_db_url(args.data_dir))
    tls = ensure_self_signed(args.data_dir / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(args.data_dir / "tls" / "collector.crt"), str(args.data_dir / "tls" / "collector.key"))
    ctx.set_alpn_protocols(["h2"])
    host, _, port = args.address.rpartition(":")
    server = Server([ChannelProto(store)])
    await server.start(host, int(port), ssl=ctx, backlog=4096)
    tmp = args.ready_file.with_suffix(".tmp")
    tmp.write_text(json.dumps({"address": args.address, "port": int(port), "fingerprint": tls.fingerprint}))
    tmp.replace(args.ready_file)
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
