"""Type aliases of the public API's messages (annotations only), and ``Unpack``."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias, Union

if sys.version_info >= (3, 11):
    from typing import Unpack
elif TYPE_CHECKING:
    from typing_extensions import Unpack
else:  # 3.10 at run time, where typing_extensions may be missing: annotations only

    class Unpack:
        """``Unpack[X]`` is ``X`` (so that ``typing.get_type_hints`` resolves the options)."""

        def __class_getitem__(cls, item: Any) -> Any:
            return item

__all__ = ["Data", "Message", "SyncMessage", "Unpack"]

#: One whole message: str → text, bytes-like → binary.
Data: TypeAlias = Union[str, bytes, bytearray, memoryview]
#: What the blocking ``send()`` takes: a whole message, or the fragments of one (all str or
#: all bytes-like, checked at run time: an item type per fragment lets mypy accept a list
#: mixing bytes and bytearray, which it would join to ``Sequence[int]`` otherwise).
SyncMessage: TypeAlias = Union[Data, Iterable[Data]]
#: What the asyncio ``send()`` takes: the same, or an async iterable of fragments.
Message: TypeAlias = Union[SyncMessage, AsyncIterable[Data]]
