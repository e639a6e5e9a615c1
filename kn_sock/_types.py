"""Type aliases of the public API's messages (annotations only)."""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import TypeAlias, Union

#: One whole message: str → text, bytes-like → binary.
Data: TypeAlias = Union[str, bytes, bytearray, memoryview]
#: What the blocking ``send()`` takes: a whole message, or the fragments of one (all str or
#: all bytes-like, checked at run time: an item type per fragment lets mypy accept a list
#: mixing bytes and bytearray, which it would join to ``Sequence[int]`` otherwise).
SyncMessage: TypeAlias = Union[Data, Iterable[Data]]
#: What the asyncio ``send()`` takes: the same, or an async iterable of fragments.
Message: TypeAlias = Union[SyncMessage, AsyncIterable[Data]]
