"""Type aliases of the public API's messages (annotations only)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import TypeAlias, Union

BytesLike: TypeAlias = Union[bytes, bytearray, memoryview]
#: One whole message: str → text, bytes-like → binary.
Data: TypeAlias = Union[str, bytes, bytearray, memoryview]
#: What the blocking ``send()`` takes: a whole message, or the fragments of one (all str or all bytes-like).
SyncMessage: TypeAlias = Union[Data, Iterable[str], Iterable[BytesLike]]
#: What the asyncio ``send()`` takes: the same, or an async iterable of fragments.
Message: TypeAlias = Union[SyncMessage, AsyncIterable[str], AsyncIterable[BytesLike]]
