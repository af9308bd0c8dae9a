"""The deployment: the round machines of ``secure_fcit.protocols`` over mutual TLS 1.3.

- ``roster``: the federation folder (public roster, each client's data folders);
- ``server`` / ``client``: the asyncio processes behind ``python -m secure_fcit.server`` / ``.client``;
- ``gate``: admission of connections (roster and CRL before the hello, hello limits, rate limit,
  keepalive, quiet shutdown);
- ``checkpoint``: atomic JSON + safetensors checkpoints (no pickle), MACed under a key kept outside;
- ``common``: certificates, secure-sum sides and the control frame both processes share;
- ``demo``: ``python -m secure_fcit demo``, a federation of processes on loopback.
"""
