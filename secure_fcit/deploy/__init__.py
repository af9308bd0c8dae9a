"""The deployment: the round machines of ``secure_fcit.protocols`` over mutual TLS 1.3.

- ``roster``: the federation folder (public roster, each client's data folders);
- ``server`` / ``client``: the asyncio processes behind ``python -m secure_fcit.server`` / ``.client``;
- ``checkpoint``: atomic JSON + safetensors checkpoints (no pickle);
- ``common``: certificates, secure-sum sides and the control frame both processes share;
- ``demo``: ``python -m secure_fcit demo``, a federation of processes on loopback.
"""
