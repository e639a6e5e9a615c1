"""Stub of kn_sock._speedups, the Cython twin of kn_sock._pure (same signatures, same behaviour)."""

from typing import Union

from typing_extensions import TypeAlias, disjoint_base

from .exceptions import ProtocolError

__all__ = [
    "apply_mask",
    "apply_mask_inplace",
    "validate_utf8",
    "Utf8Validator",
    "FrameParser",
    "build_frame",
    "Frame",
]

_BytesLike: TypeAlias = Union[bytes, bytearray, memoryview]
Frame = tuple

def apply_mask(data: _BytesLike, mask: _BytesLike) -> bytes: ...
def apply_mask_inplace(buffer: _BytesLike, mask: _BytesLike, offset: int = 0, length: int = -1) -> None: ...
def validate_utf8(data: _BytesLike) -> bool: ...

@disjoint_base
class Utf8Validator:
    def __init__(self) -> None: ...
    @property
    def valid(self) -> bool: ...
    def reset(self) -> None: ...
    def feed(self, data: _BytesLike, final: bool = False) -> bool: ...

@disjoint_base
class FrameParser:
    expect_mask: bool
    rsv1_allowed: bool
    decode_text: bool
    error: ProtocolError | None
    def __init__(
        self,
        *,
        expect_mask: bool,
        max_size: int | None = 1048576,
        compressed_max_size: int | None = None,
        rsv1_allowed: bool = False,
        decode_text: bool = True,
    ) -> None: ...
    @property
    def max_size(self) -> int | None: ...
    @max_size.setter
    def max_size(self, value: int | None) -> None: ...
    @property
    def compressed_max_size(self) -> int | None: ...
    @compressed_max_size.setter
    def compressed_max_size(self, value: int | None) -> None: ...
    @property
    def buffered(self) -> int: ...
    @property
    def in_message(self) -> bool: ...
    def get_buffer(self, sizehint: int = -1) -> memoryview: ...
    def buffer_updated(self, nbytes: int) -> list[tuple[int, bool, bool, bytes | str]]: ...
    def feed(self, data: _BytesLike) -> list[tuple[int, bool, bool, bytes | str]]: ...

def build_frame(
    opcode: int,
    payload: Union[str, _BytesLike],
    fin: bool = True,
    rsv1: bool = False,
    mask: _BytesLike | None = None,
) -> bytes: ...
