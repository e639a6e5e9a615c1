# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, nonecheck=False, overflowcheck=False
# cython: embedsignature=False, binding=True, auto_pickle=False
#
# ^ Every Cython directive of kn_sock, in one place. setup.py only adds the developer switch
#   KN_SOCK_CYTHON_ANNOTATE=1 (annotate=True).
"""Cython twin of ``kn_sock._pure``: masking, UTF-8 validation, frame parsing and building.

``_pure.py`` is the specification (docstrings, semantics, exception types and messages);
this module matches it result for result and error for error, and ``_speedups.pxd`` is the
map of its C-level state. Only ``kn_sock._backend`` chooses between the two.

Deliberate micro-optimisations are labelled "speed:". Loops over payloads release the GIL
from ``_NOGIL_BYTES`` bytes on.
"""

from cpython.buffer cimport (
    PyBUF_SIMPLE,
    PyBuffer_FillInfo,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memmove

cimport cython
import os as _os
import warnings as _warnings
from collections import deque as _deque

from .exceptions import InvalidState, PayloadTooBig, ProtocolError
from .options import checked_timeout as _checked_timeout

cdef extern from "Python.h":
    ctypedef struct PyTypeObject:
        const char *tp_name
    PyTypeObject *_Py_TYPE "Py_TYPE"(object o)
    # A borrowed pointer: given an ``object``, Cython would count its own temporary reference.
    Py_ssize_t _Py_REFCNT "Py_REFCNT"(PyObject *o)
    object PyErr_Format(object exc, const char *fmt, ...)
    const char *PyUnicode_AsUTF8AndSize(object s, Py_ssize_t *size) except NULL
    object PyUnicode_DecodeUTF8(const char *s, Py_ssize_t size, const char *errors)
    object PyMemoryView_FromObject(object o)
    void PyObject_GC_UnTrack(object o)
    bint PyBytes_CheckExact(object o)
    bint PyByteArray_CheckExact(object o)
    int PyObject_AsFileDescriptor(object o) except -1
    int PyErr_CheckSignals() except -1
    bint PyUnicode_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int *overflow) except? -1
    const Py_ssize_t PY_SSIZE_T_MAX

__all__ = [
    "apply_mask",
    "apply_mask_inplace",
    "validate_utf8",
    "Utf8Validator",
    "FrameParser",
    "build_frame",
    "Frame",
    "Waiter",
    "next_mask",
    "AsyncCore",
    "send_many",
    "write_message",
    "OP_EARLY",
]

Frame = tuple  # (opcode: int, fin: bool, rsv1: bool, payload: bytes | str)

#: The opcode of the frames ``FrameParser(early_compressed_text=True)`` hands out for the
#: payload of an incomplete compressed text frame (never on the wire: opcodes are 0-15).
OP_EARLY = -1

cdef enum:
    # Release the GIL around payload loops from this size on. Releasing and retaking it costs
    # ~0.1 us, 8% of masking 64 KiB (measured); 128 KiB takes ~2.5 us with the GIL held.
    _NOGIL_BYTES = 131072
    # A non-blocking read keeps the GIL unless it may copy more than this (~25 us): releasing
    # and retaking it costs more than the read of a small message (~400 instructions a read).
    _NOGIL_READ = 524288
    _LARGE = 65536          # payloads from this size are received in place (zero copy)
    _LAND_MIN = 16384       # recv_from lands a payload of this size in place when it can guess it
    _LAND_MAX = 1 << 22     # ... up to this size (the payload is allocated before the read)
    _CHUNK = 131072         # the receive buffer get_buffer() normally offers
    _MIN_READ = 4096        # never offer less than this to recv_into
    _MAX_HINT = 1 << 22     # cap on a caller's sizehint
    _SMALL_ALLOC = 512      # a buffer that only keeps a frame's first bytes
    _SPARE_MAX = 4          # receive buffers kept for reuse across parsers
    _STACK_TEXT = 512       # masked text up to this size is unmasked on the stack
    _CHECK_CHUNK = 2048     # masked text being checked early is unmasked in stack chunks


# speed: idle parsers hold no receive buffer; the few in use at a time are recycled here.
# Receive buffers kept for reuse across parsers (a C stack: list.pop/append cost ~250
# instructions here, the list resizing between 0 and 1 items).
cdef PyObject *_spare_buffers[_SPARE_MAX]
cdef int _n_spare = 0


cdef inline void _spare_push(object buf) noexcept:
    global _n_spare
    Py_INCREF(buf)
    _spare_buffers[_n_spare] = <PyObject *>buf
    _n_spare += 1


cdef inline object _spare_pop():
    global _n_spare
    _n_spare -= 1
    buf = <object>_spare_buffers[_n_spare]  # a new reference for the caller...
    Py_DECREF(buf)  # ...and the stack's own given up
    _spare_buffers[_n_spare] = NULL
    return buf


# --------------------------------------------------------------------------- helpers

cdef int _raise_not_buffer(object obj, const char *fmt) except -1:
    PyErr_Format(TypeError, fmt, _Py_TYPE(obj).tp_name)
    return -1


cdef inline int _get_view(object obj, Py_buffer *view) except -1:
    """Acquire a contiguous byte view; the pure twin's memoryview() error when impossible."""
    if not PyObject_CheckBuffer(obj):
        _raise_not_buffer(obj, "memoryview: a bytes-like object is required, not '%.200s'")
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    return 0


cdef int _mask_key(object mask, unsigned char *key) except -1:
    """Copy the 4-byte mask into ``key`` or raise like the pure twin's ``_mask_key``."""
    cdef Py_buffer view
    if PyBytes_CheckExact(mask):  # speed: the common case needs no buffer protocol
        if PyBytes_GET_SIZE(mask) != 4:
            raise ValueError("mask must be 4 bytes")
        memcpy(key, PyBytes_AS_STRING(mask), 4)
        return 0
    try:
        _get_view(mask, &view)
    except BufferError:  # not contiguous (a strided memoryview): its bytes, as the pure twin
        return _mask_key(bytes(memoryview(mask)), key)
    if view.len != 4:
        PyBuffer_Release(&view)
        raise ValueError("mask must be 4 bytes")
    memcpy(key, view.buf, 4)
    PyBuffer_Release(&view)
    return 0


cdef extern from *:
    """
    /* The masking kernels (RFC 6455 §5.3), in C for `restrict` and for function
       multiversioning: with GCC/Clang on x86-64 Linux the loops are also compiled for AVX2
       and the best version is picked when the module loads; elsewhere the portable 8-byte
       word loop is vectorised at -O3 for the baseline ISA. */
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) \
        && (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
    #define KN_MASK_CLONES __attribute__((target_clones("avx2", "default")))
    #else
    #define KN_MASK_CLONES
    #endif
    /* Measured: inlined into its callers, GCC vectorised kn_xor_copy at one call site and
       not at the other (28 vs 53 GB/s at 64 KiB); as one out-of-line function it always is. */
    #if defined(__GNUC__)
    #define KN_NOINLINE __attribute__((noinline))
    #else
    #define KN_NOINLINE
    #endif

    /* From this size on, kn_xor_copy writes around the cache (x86-64: SSE2 is baseline):
       12 MiB of source plus 12 MiB of copy is about where the cached loop stops winning on
       a 32 MiB last-level cache (measured: equal at 10 MiB, streaming 5% ahead at 12 MiB and
       15% at 16 MiB); the same rule as glibc's memcpy, which streams above 3/4 of that cache. */
    #if defined(__SSE2__) && (defined(__GNUC__) || defined(_MSC_VER))
    #include <emmintrin.h>
    #define KN_HAVE_SSE2 1
    #define KN_STREAM_BYTES ((Py_ssize_t)12 << 20)
    #else
    #define KN_HAVE_SSE2 0
    #endif

    /* The mask repeated over 8 bytes, starting at mask byte `phase` (j mod 4). */
    static inline uint64_t kn_key_word(const unsigned char *key, Py_ssize_t phase) {
        unsigned char k[4];
        uint32_t half;
        k[0] = key[phase & 3];
        k[1] = key[(phase + 1) & 3];
        k[2] = key[(phase + 2) & 3];
        k[3] = key[(phase + 3) & 3];
        memcpy(&half, k, 4);
        /* The 4 bytes twice in memory order, whatever the byte order. */
        return ((uint64_t)half << 32) | half;
    }

    /* dst[i] = src[i] ^ key[(i + phase) % 4]: one pass, no overlap. From 4 KiB the
       stores start on a 32-byte boundary (measured at 64 KiB, with the AVX2 clone: 30 -> 45
       GB/s; unaligned 32-byte stores straddle cache lines, and the AVX2 clone alone did not
       pay). */
    KN_NOINLINE KN_MASK_CLONES
    static void kn_xor_copy(unsigned char *restrict dst, const unsigned char *restrict src,
                            Py_ssize_t n, const unsigned char *key, Py_ssize_t phase) {
        uint64_t m, w;
        Py_ssize_t i, words, head;
        unsigned char k[8];
        if (n >= 4096) {  /* below this the peel costs more than it saves */
            head = (Py_ssize_t)((0 - (uintptr_t)dst) & 31);
            if (head) {
                /* The first 32 bytes as four words, unaligned: the aligned loop then starts
                   `head` bytes in and writes some of them again, with the same values (src
                   and dst do not overlap). Cheaper than up to 31 single bytes. */
                m = kn_key_word(key, phase);
                for (i = 0; i < 32; i += 8) {
                    memcpy(&w, src + i, 8);
                    w ^= m;
                    memcpy(dst + i, &w, 8);
                }
                dst += head;
                src += head;
                n -= head;
                phase += head;
            }
    #if KN_HAVE_SSE2
            if (n >= KN_STREAM_BYTES) {
                /* Non-temporal stores (dst is 32-byte aligned now): source and copy no longer
                   fit the last-level cache together, so the copy goes to memory without first
                   reading every destination line into the cache (measured at 16 MiB: 23 ->
                   27 GB/s; at 8 MiB the cached loop is faster: 37 vs 26 GB/s). */
                __m128i key128;
                m = kn_key_word(key, phase);
                key128 = _mm_set1_epi64x((long long)m);
                for (i = 0; i + 64 <= n; i += 64) {
                    __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
                    __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
                    __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
                    __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
                    _mm_stream_si128((__m128i *)(dst + i), _mm_xor_si128(a, key128));
                    _mm_stream_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, key128));
                    _mm_stream_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, key128));
                    _mm_stream_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, key128));
                }
                _mm_sfence();  /* the streamed stores are ordered before anything that follows */
                dst += i;
                src += i;
                n -= i;
                phase += i;
            }
    #endif
        }
        m = kn_key_word(key, phase);
        words = n >> 3;
        memcpy(k, &m, 8);
        for (i = 0; i < words; i++) {
            memcpy(&w, src + 8 * i, 8);
            w ^= m;
            memcpy(dst + 8 * i, &w, 8);
        }
        for (i = words * 8; i < n; i++) dst[i] = src[i] ^ k[i & 7];
    }

    /* p[i] ^= key[i % 4] for a short run: inline, no dispatch through the clones' resolver
       (a call costs as much as masking 125 bytes). */
    static inline void kn_xor_small(unsigned char *p, Py_ssize_t n, const unsigned char *key) {
        uint64_t m = kn_key_word(key, 0), w;
        Py_ssize_t i = 0;
    #if KN_HAVE_SSE2
        /* 16 bytes a step (SSE2, the x86-64 baseline), then one word of 8 and one of 4:
           measured with callgrind, 125 bytes in ~70 instructions instead of ~200. */
        if (n >= 16) {
            const __m128i k = _mm_set1_epi64x((long long)m);
            for (; i + 16 <= n; i += 16)
                _mm_storeu_si128((__m128i *)(p + i),
                                 _mm_xor_si128(_mm_loadu_si128((const __m128i *)(p + i)), k));
        }
    #endif
        for (; i + 8 <= n; i += 8) {
            memcpy(&w, p + i, 8);
            w ^= m;
            memcpy(p + i, &w, 8);
        }
        if (i + 4 <= n) {  /* i is a multiple of 4: the mask's own 4 bytes, in memory order */
            uint32_t w4, m4 = (uint32_t)m;  /* either half of m: both are the key */
            memcpy(&w4, p + i, 4);
            w4 ^= m4;
            memcpy(p + i, &w4, 4);
            i += 4;
        }
        for (; i < n; i++) p[i] ^= key[i & 3];
    }

    /* p[i] ^= key[(i + phase) % 4]. */
    KN_MASK_CLONES
    static void kn_xor_inplace(unsigned char *restrict p, Py_ssize_t n,
                               const unsigned char *key, Py_ssize_t phase) {
        uint64_t m, w;
        Py_ssize_t i, words, head;
        unsigned char k[8];
        if (n >= 4096) {  /* below this the peel costs more than it saves */
            /* speed: start the vector loop on a 32-byte boundary (measured at 64 KiB: 99 GB/s
               aligned, 72 GB/s from any other address: half the loads and stores straddle
               two cache lines). */
            head = (Py_ssize_t)((0 - (uintptr_t)p) & 31);
            m = kn_key_word(key, phase);
            memcpy(k, &m, 8);
            for (i = 0; i < head; i++) p[i] ^= k[i & 7];
            p += head;
            n -= head;
            phase += head;
        }
        m = kn_key_word(key, phase);
        words = n >> 3;
        memcpy(k, &m, 8);
        for (i = 0; i < words; i++) {
            memcpy(&w, p + 8 * i, 8);
            w ^= m;
            memcpy(p + 8 * i, &w, 8);
        }
        for (i = words * 8; i < n; i++) p[i] ^= k[i & 7];
    }
    """
    void _xor_copy "kn_xor_copy"(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                                 const unsigned char *key, Py_ssize_t phase) noexcept nogil
    void _xor_inplace "kn_xor_inplace"(unsigned char *p, Py_ssize_t n,
                                       const unsigned char *key, Py_ssize_t phase) noexcept nogil
    void _xor_small "kn_xor_small"(unsigned char *p, Py_ssize_t n, const unsigned char *key) noexcept nogil


cdef inline void _copy_payload(unsigned char *dst, const unsigned char *src, Py_ssize_t n,
                               bint masked, const unsigned char *key, Py_ssize_t phase) noexcept:
    """Copy (and unmask) a payload, without the GIL when it is large."""
    if n >= _NOGIL_BYTES:
        with nogil:
            if masked:
                _xor_copy(dst, src, n, key, phase)
            else:
                memcpy(dst, src, n)
    elif masked:
        _xor_copy(dst, src, n, key, phase)
    else:
        memcpy(dst, src, n)


# --------------------------------------------------------------------------- masking

# binding=False: plain C functions, called like aiohttp's mask (measured: ~90 fewer instructions
# a call than a bound Cython function, most of a 16-byte mask); the signature for inspect is the
# docstring's first line.
@cython.binding(False)
@cython.embedsignature(False)
def apply_mask(data, mask):
    """apply_mask(data, mask)
--

Return ``data`` XOR-ed with the repeating 4-byte ``mask`` (RFC 6455 §5.3) as new bytes.

    Raises:
        TypeError: when ``data`` or ``mask`` does not support the buffer protocol.
        ValueError: when ``mask`` is not exactly 4 bytes long.
    """
    cdef Py_buffer view
    cdef unsigned char key[4]
    cdef const unsigned char *src
    cdef Py_ssize_t n
    cdef bint owned = not PyBytes_CheckExact(data)
    if owned:
        _get_view(data, &view)
        src = <const unsigned char *>view.buf
        n = view.len
    else:  # speed: bytes need no buffer protocol
        src = <const unsigned char *>PyBytes_AS_STRING(data)
        n = PyBytes_GET_SIZE(data)
    try:
        _mask_key(mask, key)
        # One pass: the fresh bytes object is written once, already masked.
        out = PyBytes_FromStringAndSize(NULL, n)
        _copy_payload(<unsigned char *>PyBytes_AS_STRING(out), src, n, True, key, 0)
        return out
    finally:
        if owned:
            PyBuffer_Release(&view)


@cython.binding(False)
@cython.embedsignature(False)
def apply_mask_inplace(buffer, mask, Py_ssize_t offset=0, Py_ssize_t length=-1):
    """apply_mask_inplace(buffer, mask, offset=0, length=-1)
--

XOR ``buffer[offset:offset + length]`` in place with ``mask`` (mask phase 0 at ``offset``).

    ``length=-1`` means up to the end of the buffer.

    Raises:
        TypeError: when ``buffer`` is not a writable bytes-like object.
        ValueError: when ``mask`` is not 4 bytes or the range falls outside the buffer.
    """
    cdef Py_buffer view
    cdef unsigned char key[4]
    cdef Py_ssize_t size
    if PyByteArray_CheckExact(buffer) and PyByteArray_GET_SIZE(buffer) < _NOGIL_BYTES:
        # speed: no buffer export for a small bytearray (the GIL, held throughout, is what
        # keeps another thread from resizing it meanwhile).
        _mask_key(mask, key)
        size = PyByteArray_GET_SIZE(buffer)
        if length < 0:
            length = size - offset
        if offset < 0 or offset > size or length > size - offset:
            raise ValueError("range out of buffer")
        if length <= 256:
            _xor_small(<unsigned char *>PyByteArray_AS_STRING(buffer) + offset, length, key)
        else:
            _xor_inplace(<unsigned char *>PyByteArray_AS_STRING(buffer) + offset, length, key, 0)
        return
    _get_view(buffer, &view)
    try:
        if view.readonly:
            raise TypeError("buffer must be writable")
        _mask_key(mask, key)
        size = view.len
        if length < 0:
            length = size - offset
        if offset < 0 or offset > size or length > size - offset:
            raise ValueError("range out of buffer")
        if length == 0:
            return
        if length >= _NOGIL_BYTES:
            with nogil:
                _xor_inplace(<unsigned char *>view.buf + offset, length, key, 0)
        else:
            _xor_inplace(<unsigned char *>view.buf + offset, length, key, 0)
    finally:
        PyBuffer_Release(&view)


# ---------------------------------------------------------------- recv (FrameParser.recv_from)

cdef extern from *:
    """
    #include <errno.h>
    #ifdef _WIN32
    static Py_ssize_t kn_recv(long long fd, char *buf, Py_ssize_t n, int flags) { (void)fd; (void)buf; (void)n; (void)flags; return -ENOSYS; }
    static int kn_wait_readable(long long fd) { (void)fd; return 0; }
    static Py_ssize_t kn_recv3(long long fd, char *a, Py_ssize_t na, char *b, Py_ssize_t nb, char *c, Py_ssize_t nc, int flags) { (void)fd; (void)a; (void)na; (void)b; (void)nb; (void)c; (void)nc; (void)flags; return -ENOSYS; }
    #define KN_EINTR EINTR
    #define KN_MSG_DONTWAIT 0
    #else
    #include <string.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #define KN_EINTR EINTR
    #ifdef MSG_DONTWAIT
    #define KN_MSG_DONTWAIT MSG_DONTWAIT
    #else
    #define KN_MSG_DONTWAIT 0
    #endif
    #include <poll.h>
    /* Wait until fd is readable (or at its end, or failed): 0, or -errno. */
    static int kn_wait_readable(long long fd) {
        struct pollfd p;
        p.fd = (int)fd;
        p.events = POLLIN;
        p.revents = 0;
        return poll(&p, 1, -1) < 0 ? -errno : 0;
    }
    /* One recv(2): the bytes read, 0 at the end of the stream, or -errno. */
    static Py_ssize_t kn_recv(long long fd, char *buf, Py_ssize_t n, int flags) {
        ssize_t r = recv((int)fd, buf, (size_t)n, flags);
        return r < 0 ? -(Py_ssize_t)errno : (Py_ssize_t)r;
    }
    /* One recvmsg(2) into three buffers in turn (the same results as kn_recv). */
    static Py_ssize_t kn_recv3(long long fd, char *a, Py_ssize_t na, char *b, Py_ssize_t nb,
                               char *c, Py_ssize_t nc, int flags) {
        struct iovec iov[3];
        struct msghdr msg;
        ssize_t r;
        iov[0].iov_base = a; iov[0].iov_len = (size_t)na;
        iov[1].iov_base = b; iov[1].iov_len = (size_t)nb;
        iov[2].iov_base = c; iov[2].iov_len = (size_t)nc;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = 3;
        r = recvmsg((int)fd, &msg, flags);
        return r < 0 ? -(Py_ssize_t)errno : (Py_ssize_t)r;
    }
    #endif
    """
    Py_ssize_t kn_recv(long long fd, char *buf, Py_ssize_t n, int flags) nogil
    int kn_wait_readable(long long fd) nogil
    Py_ssize_t kn_recv3(long long fd, char *a, Py_ssize_t na, char *b, Py_ssize_t nb,
                        char *c, Py_ssize_t nc, int flags) nogil
    int EINTR "KN_EINTR"
    int _MSG_DONTWAIT "KN_MSG_DONTWAIT"


cdef Py_ssize_t _recv_retry(int fd, char *dst, Py_ssize_t room, int flags) except? -2:
    """One recv(2) of at most ``room`` bytes into ``dst``, retried on EINTR (running signal
    handlers, which may raise): what it read, 0 at the end of the stream, or -errno. The GIL
    is released when it may wait (``flags`` 0) or copy long; a short non-blocking read keeps
    it (speed, see _NOGIL_READ)."""
    cdef Py_ssize_t r
    while True:
        if flags == 0 or room > _NOGIL_READ:
            with nogil:
                r = kn_recv(fd, dst, room, flags)
        else:
            r = kn_recv(fd, dst, room, flags)
        if r != -EINTR:
            return r
        PyErr_CheckSignals()


cdef int _raise_errno(int err) except -1:
    """Raise the OSError subclass ``socket.recv_into`` raises for ``err``."""
    raise OSError(err, _os.strerror(err))


# --------------------------------------------------------------------------- UTF-8

cdef enum:
    _UTF8_OK = 0        # every byte belongs to a complete, valid code point
    _UTF8_PARTIAL = 1   # valid so far; the bytes from the returned index begin a code point
    _UTF8_BAD = 2       # not UTF-8 (RFC 3629: overlong, surrogate, > U+10FFFF, stray byte)



cdef extern from *:
    """
    /* The UTF-8 scan (RFC 3629) in C: gcc lays this branchy loop out better than Cython's
       translation of the same code (measured: mixed-script text ~1.3x). */
    #include <stdint.h>
    #include <string.h>
    /* Can the n bytes at s (a lead byte >= 0x80, n < its length) begin a code point? The
       second byte's range depends on the lead (RFC 3629 section 4): that is what makes the
       validator fail fast on a truncated overlong, surrogate or out-of-range sequence. */
    static inline int kn_u8_prefix_ok(const unsigned char *s, Py_ssize_t n) {
        unsigned char c = s[0], c1;
        if (c < 0xC2 || c > 0xF4) return 0;
        if (n >= 2) {
            c1 = s[1];
            if (c == 0xE0) { if (c1 < 0xA0 || c1 > 0xBF) return 0; }       /* overlong */
            else if (c == 0xED) { if (c1 < 0x80 || c1 > 0x9F) return 0; }  /* surrogates */
            else if (c == 0xF0) { if (c1 < 0x90 || c1 > 0xBF) return 0; }  /* overlong */
            else if (c == 0xF4) { if (c1 < 0x80 || c1 > 0x8F) return 0; }  /* > U+10FFFF */
            else if ((c1 & 0xC0) != 0x80) return 0;
        }
        if (n >= 3 && (s[2] & 0xC0) != 0x80) return 0;
        return 1;
    }
    /* Length of the sequence a (valid) lead byte starts. */
    static inline int kn_u8_seq_len(unsigned char c) {
        return c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    }
    /* speed: the bulk of the scan in AVX2, 32 bytes per step, where the CPU has it (checked
       once, at import). The method is Keiser and Lemire's "Validating UTF-8 in less than one
       instruction per byte" (2021): three 16-entry lookups (the previous byte's high and low
       nibble, this byte's high nibble) give a set of error classes for every pair of adjacent
       bytes, and the third and fourth bytes of 3- and 4-byte sequences are checked against the
       bytes two and three back. Each flag below names an error class a byte pair can be in;
       a pair is invalid when all three lookups agree on one of them. */
    #if defined(__GNUC__) && defined(__x86_64__) && !defined(KN_SOCK_NO_SIMD)
    #define KN_U8_SIMD 1
    #include <immintrin.h>
    #define KN_U8_TOO_SHORT  0x01  /* a lead byte followed by ASCII or another lead */
    #define KN_U8_TOO_LONG   0x02  /* ASCII followed by a continuation byte */
    #define KN_U8_OVERLONG_3 0x04  /* E0 followed by 80..9F */
    #define KN_U8_TOO_LARGE  0x08  /* F4 followed by 90..BF, or F5..FF followed by 90..BF */
    #define KN_U8_SURROGATE  0x10  /* ED followed by A0..BF */
    #define KN_U8_OVERLONG_2 0x20  /* C0 or C1 followed by a continuation byte */
    #define KN_U8_4_80       0x40  /* F0 followed by 80..8F (overlong) or F5..FF by 80..8F */
    #define KN_U8_TWO_CONTS  0x80  /* two continuation bytes: right only in a 3/4-byte code */
    #define KN_U8_CARRY (KN_U8_TOO_SHORT | KN_U8_TOO_LONG | KN_U8_TWO_CONTS)
    #define KN_U8_TABLE(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p) \\
        _mm256_setr_epi8(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p, \\
                         a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)

    static int kn_u8_have_avx2 = 0;
    static void kn_u8_simd_init(void) {
        __builtin_cpu_init();
        kn_u8_have_avx2 = __builtin_cpu_supports("avx2");  /* the CPU and the OS (XSAVE) */
    }
    static int kn_u8_simd_set(int on) {
        int was = kn_u8_have_avx2;
        kn_u8_have_avx2 = on && __builtin_cpu_supports("avx2");
        return was;
    }

    /* Return m <= n such that s[:m] has been proven valid and ends on a code point boundary;
       the scalar scan takes over from m (it finds where and how an invalid block fails, and
       validates the tail shorter than a step). */
    __attribute__((target("avx2")))
    static Py_ssize_t kn_u8_avx2_prefix(const unsigned char *s, Py_ssize_t n) {
        const __m256i byte_1_high = KN_U8_TABLE(
            KN_U8_TOO_LONG, KN_U8_TOO_LONG, KN_U8_TOO_LONG, KN_U8_TOO_LONG,       /* 0_ .. 7_ */
            KN_U8_TOO_LONG, KN_U8_TOO_LONG, KN_U8_TOO_LONG, KN_U8_TOO_LONG,
            KN_U8_TWO_CONTS, KN_U8_TWO_CONTS, KN_U8_TWO_CONTS, KN_U8_TWO_CONTS,   /* 8_ .. B_ */
            KN_U8_TOO_SHORT | KN_U8_OVERLONG_2,                                  /* C_ */
            KN_U8_TOO_SHORT,                                                     /* D_ */
            KN_U8_TOO_SHORT | KN_U8_OVERLONG_3 | KN_U8_SURROGATE,                /* E_ */
            KN_U8_TOO_SHORT | KN_U8_TOO_LARGE | KN_U8_4_80);                     /* F_ */
        const __m256i byte_1_low = KN_U8_TABLE(
            KN_U8_CARRY | KN_U8_OVERLONG_3 | KN_U8_OVERLONG_2 | KN_U8_4_80,      /* _0 */
            KN_U8_CARRY | KN_U8_OVERLONG_2,                                      /* _1 */
            KN_U8_CARRY, KN_U8_CARRY,                                            /* _2 _3 */
            KN_U8_CARRY | KN_U8_TOO_LARGE,                                       /* _4 */
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,                          /* _5 .. _C */
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80 | KN_U8_SURROGATE,        /* _D */
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80,                          /* _E _F */
            KN_U8_CARRY | KN_U8_TOO_LARGE | KN_U8_4_80);
        const __m256i byte_2_high = KN_U8_TABLE(
            KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT,  /* 0_ .. 7_ */
            KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT,
            KN_U8_TOO_LONG | KN_U8_OVERLONG_2 | KN_U8_TWO_CONTS                 /* 8_ */
                | KN_U8_OVERLONG_3 | KN_U8_4_80,
            KN_U8_TOO_LONG | KN_U8_OVERLONG_2 | KN_U8_TWO_CONTS                 /* 9_ */
                | KN_U8_OVERLONG_3 | KN_U8_TOO_LARGE,
            KN_U8_TOO_LONG | KN_U8_OVERLONG_2 | KN_U8_TWO_CONTS                 /* A_ */
                | KN_U8_SURROGATE | KN_U8_TOO_LARGE,
            KN_U8_TOO_LONG | KN_U8_OVERLONG_2 | KN_U8_TWO_CONTS                 /* B_ */
                | KN_U8_SURROGATE | KN_U8_TOO_LARGE,
            KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT, KN_U8_TOO_SHORT); /* C_ .. F_ */
        const __m256i nibble = _mm256_set1_epi8(0x0F);
        const __m256i cont_80 = _mm256_set1_epi8((char)0x80);
        /* Bytes 29, 30, 31 of a step above these start a code point the step cuts short. */
        const __m256i incomplete_max = _mm256_setr_epi8(
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
            (char)0xEF, (char)0xDF, (char)0xBF);
        __m256i prev = _mm256_setzero_si256(), prev_incomplete = _mm256_setzero_si256();
        __m256i in, before, prev1, prev2, prev3, sc, must23, err;
        Py_ssize_t i = 0, m;
        int k;
        for (; i + 32 <= n; i += 32) {
            in = _mm256_loadu_si256((const __m256i *)(s + i));
            if (!_mm256_movemask_epi8(in)) {
                /* All ASCII: wrong only when the previous step ended inside a code point. */
                if (!_mm256_testz_si256(prev_incomplete, prev_incomplete)) break;
                prev = in;
                continue;
            }
            /* prevK: the byte K positions back, across the step boundary ([prev.hi, in.lo]). */
            before = _mm256_permute2x128_si256(prev, in, 0x21);
            prev1 = _mm256_alignr_epi8(in, before, 15);
            prev2 = _mm256_alignr_epi8(in, before, 14);
            prev3 = _mm256_alignr_epi8(in, before, 13);
            sc = _mm256_and_si256(
                _mm256_and_si256(
                    _mm256_shuffle_epi8(byte_1_high, _mm256_and_si256(_mm256_srli_epi16(prev1, 4), nibble)),
                    _mm256_shuffle_epi8(byte_1_low, _mm256_and_si256(prev1, nibble))),
                _mm256_shuffle_epi8(byte_2_high, _mm256_and_si256(_mm256_srli_epi16(in, 4), nibble)));
            /* A third byte (two after E0..FF) or fourth (three after F0..FF) must be a second
               continuation in a row, and a second continuation in a row must be one of those. */
            must23 = _mm256_or_si256(_mm256_subs_epu8(prev2, _mm256_set1_epi8((char)(0xE0 - 0x80))),
                                     _mm256_subs_epu8(prev3, _mm256_set1_epi8((char)(0xF0 - 0x80))));
            err = _mm256_xor_si256(_mm256_and_si256(must23, cont_80), sc);
            if (!_mm256_testz_si256(err, err)) break;
            prev_incomplete = _mm256_subs_epu8(in, incomplete_max);
            prev = in;
        }
        /* s[:i] is valid except perhaps for a code point its end cuts short: stop before it. */
        m = i;
        for (k = 1; k <= 3 && k <= i; k++) {
            if (s[i - k] < 0x80) break;
            if (s[i - k] >= 0xC0) { if (k < kn_u8_seq_len(s[i - k])) m = i - k; break; }
        }
        return m;
    }
    #else
    static void kn_u8_simd_init(void) {}
    static int kn_u8_simd_set(int on) { (void)on; return 0; }
    #endif
    /* Validate s[:n]: status 0 (_UTF8_OK) and n; 1 (_UTF8_PARTIAL) and the index of a code
       point the end cuts short, whose bytes so far are a valid beginning; 2 (_UTF8_BAD) and
       the index of the first sequence that is not UTF-8. */
    static Py_ssize_t kn_utf8_scan(const unsigned char *s, Py_ssize_t n, int *status) {
        Py_ssize_t i = 0, need;
        unsigned char c;
        uint64_t a, b;
    #ifdef KN_U8_SIMD
        if (n >= 64 && kn_u8_have_avx2) i = kn_u8_avx2_prefix(s, n);
    #endif
        while (i < n) {
            c = s[i];
            if (c < 0x80) {
                /* ASCII runs are skipped 16 bytes at a time. */
                i++;
                while (i + 16 <= n) {
                    memcpy(&a, s + i, 8);
                    memcpy(&b, s + i + 8, 8);
                    if ((a | b) & 0x8080808080808080ULL) break;
                    i += 16;
                }
                while (i < n && s[i] < 0x80) i++;
                continue;
            }
            if (c < 0xC2 || c > 0xF4) { *status = 2; return i; }
            need = kn_u8_seq_len(c);
            if (n - i < need) { *status = kn_u8_prefix_ok(s + i, n - i) ? 1 : 2; return i; }
            if (need == 2) {
                if ((s[i + 1] & 0xC0) != 0x80) { *status = 2; return i; }
            } else if (!kn_u8_prefix_ok(s + i, need - 1) || (s[i + need - 1] & 0xC0) != 0x80) {
                *status = 2; return i;
            }
            i += need;
        }
        *status = 0;
        return n;
    }
    """
    Py_ssize_t _utf8_scan "kn_utf8_scan"(const unsigned char *s, Py_ssize_t n, int *status) noexcept nogil
    bint _prefix_ok "kn_u8_prefix_ok"(const unsigned char *s, Py_ssize_t n) noexcept nogil
    int _seq_len "kn_u8_seq_len"(unsigned char c) noexcept nogil
    void _u8_simd_init "kn_u8_simd_init"() noexcept nogil
    int _u8_simd_set "kn_u8_simd_set"(int on) noexcept nogil


_u8_simd_init()


def _utf8_simd(on):
    """Testing hook: turn the SIMD UTF-8 scan on (where the CPU has it) or off; returns whether it was on."""
    return bool(_u8_simd_set(1 if on else 0))


cdef inline Py_ssize_t _utf8_scan_maybe_nogil(const unsigned char *s, Py_ssize_t n,
                                              int *status) noexcept:
    cdef Py_ssize_t r
    if n >= _NOGIL_BYTES:
        with nogil:
            r = _utf8_scan(s, n, status)
        return r
    return _utf8_scan(s, n, status)


def validate_utf8(data):
    """Return True when ``data`` is entirely valid UTF-8 (RFC 3629: no overlongs, surrogates or > U+10FFFF).

    Raises:
        TypeError: when ``data`` does not support the buffer protocol.
    """
    cdef Py_buffer view
    cdef int status
    if PyBytes_CheckExact(data):
        _utf8_scan_maybe_nogil(<const unsigned char *>PyBytes_AS_STRING(data),
                               PyBytes_GET_SIZE(data), &status)
        return status == _UTF8_OK
    _get_view(data, &view)
    _utf8_scan_maybe_nogil(<const unsigned char *>view.buf, view.len, &status)
    PyBuffer_Release(&view)
    return status == _UTF8_OK


cdef class Utf8Validator:
    """Incremental UTF-8 validator for fragmented text messages (RFC 6455 §8.1, fail fast).

    ``feed`` returns False as soon as the bytes received so far can no longer begin a valid
    UTF-8 string, even in the middle of a code point; once False it stays False until ``reset``.
    """

    def __init__(self):
        """Start with an empty, valid state."""
        self._npending = 0
        self._valid = True

    @property
    def valid(self):
        """False once invalid input has been seen."""
        return self._valid

    def reset(self):
        """Forget everything fed so far."""
        self._npending = 0
        self._valid = True

    def feed(self, data, bint final=False):
        """Validate the next chunk; with ``final=True`` the message must also end on a code point.

        Raises:
            TypeError: when ``data`` does not support the buffer protocol.
        """
        cdef Py_buffer view
        cdef bint ok
        _get_view(data, &view)
        try:
            ok = self._valid and self._feed(<const unsigned char *>view.buf, view.len, final)
        finally:
            PyBuffer_Release(&view)
        if not ok:
            self._valid = False
            self._npending = 0
        return ok

    cdef bint _feed(self, const unsigned char *s, Py_ssize_t n, bint final) noexcept:
        return _utf8_feed(self._pending, &self._npending, s, n, final)


cdef bint _utf8_feed(unsigned char *pending, int *npending, const unsigned char *s,
                     Py_ssize_t n, bint final) noexcept:
    """The incremental validator's step (``pending[:npending]``: the code point carried over).

    Returns False when the bytes so far can no longer begin valid UTF-8; the state is then
    meaningless (the caller resets it).
    """
    cdef int status, need, k
    cdef Py_ssize_t stop
    if npending[0]:
        # Complete the code point the previous chunk ended in.
        need = _seq_len(pending[0])
        k = need - npending[0]
        if k > n:
            k = <int>n
        memcpy(pending + npending[0], s, k)
        npending[0] += k
        if npending[0] < need:
            return _prefix_ok(pending, npending[0]) and not final
        _utf8_scan(pending, need, &status)
        if status != _UTF8_OK:
            return False
        npending[0] = 0
        s += k
        n -= k
    stop = _utf8_scan_maybe_nogil(s, n, &status)
    if status == _UTF8_BAD:
        return False
    if status == _UTF8_PARTIAL:
        if final:
            return False
        npending[0] = <int>(n - stop)
        memcpy(pending, s + stop, npending[0])
    return True


# --------------------------------------------------------------------------- parsing

cdef object _socket_type = None     # socket.socket, and its C fileno method (looked up once:
cdef object _socket_fileno = None   # PyObject_AsFileDescriptor finds it by name on every call)


cdef int _fileno(object sock) except -1:
    """``PyObject_AsFileDescriptor(sock)``, quicker for a plain ``socket.socket``."""
    global _socket_type, _socket_fileno
    if _socket_type is None:
        import socket
        _socket_type = socket.socket
        _socket_fileno = socket.socket.fileno
    if type(sock) is _socket_type:
        return PyObject_AsFileDescriptor(_socket_fileno(sock))
    return PyObject_AsFileDescriptor(sock)


cdef class _WritableRegion:
    """Exports ``size`` writable bytes at ``ptr`` inside ``owner`` (see the .pxd)."""

    def __getbuffer__(self, Py_buffer *buffer, int flags):
        PyBuffer_FillInfo(buffer, self, self.ptr, self.size, 0, flags)

    def __len__(self):
        return self.size

    def __releasebuffer__(self, Py_buffer *buffer):
        pass

    def __dealloc__(self):
        # A standard receive buffer its parser let go of while this view was alive (the event
        # loop holds get_buffer()'s view until buffer_updated returns) is recycled now that no
        # one else can reach it, instead of being freed and allocated again for the next read.
        owner = self.owner
        if (self.recycle and owner is not None and _Py_REFCNT(<PyObject *>self.owner) == 2  # + `owner`
                and PyBytes_GET_SIZE(owner) == _CHUNK and _n_spare < _SPARE_MAX):
            _spare_push(owner)


cdef _WritableRegion _region(object owner, unsigned char *ptr, Py_ssize_t size, bint recycle):
    cdef _WritableRegion region = _WritableRegion.__new__(_WritableRegion)
    region.owner = owner
    region.ptr = <char *>ptr
    region.size = size
    region.recycle = recycle
    return region


cdef object _new_buffer(Py_ssize_t size):
    if size == _CHUNK and _n_spare:
        return _spare_pop()
    return PyBytes_FromStringAndSize(NULL, size)


cdef inline Py_ssize_t _head_len(const unsigned char *p) noexcept nogil:
    """The header length (mask key included) of the frame at ``p`` (its first two bytes in)."""
    cdef int l7 = p[1] & 0x7F
    cdef Py_ssize_t hdr = 2 if l7 < 126 else 4 if l7 == 126 else 10
    return hdr + 4 if p[1] & 0x80 else hdr


cdef inline uint64_t _be64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int j
    for j in range(8):
        v = (v << 8) | p[j]
    return v


cdef object _decode_text(const unsigned char *s, Py_ssize_t n):
    """Decode a whole text payload, or return None when it is not UTF-8 (close code 1007)."""
    try:
        return PyUnicode_DecodeUTF8(<const char *>s, n, NULL)
    except UnicodeDecodeError:
        return None


cdef class FrameParser:
    """Resumable RFC 6455 §5 frame parser, fed arbitrary chunks of the byte stream.

    It enforces every rule that needs only the frame stream: reserved bits and opcodes,
    control frames (≤ 125 bytes, unfragmented), masking by side, 64-bit lengths with the top
    bit clear, continuation sequencing (RFC 6455 §5.4), RSV1 only on a message's first frame
    (RFC 7692 §6.1) and the message size limit, decided from each frame header *before* its
    payload is buffered. Errors are not raised: ``feed`` returns the frames parsed before the
    error and sets ``error`` to the ``ProtocolError`` (code 1002, 1007 or 1009) to fail the
    connection with; the parser then ignores further input.

    Invalid UTF-8 fails fast (SPEC "Bad input", RFC 6455 §8.1): with ``decode_text``, when a
    call ends inside an uncompressed text frame (opcode 1, RSV1 clear: a text message's first
    frame, final or not), the payload bytes received so far are validated incrementally — each
    byte once, the validator state and the count checked kept until the frame is complete —
    and ``error`` is set to the 1007 as soon as they can no longer begin valid UTF-8 (a
    truncated but valid code point at the end is fine). The frames of an uncompressed
    fragmented text message are validated as one stream: each frame as it completes (the
    bytes the early check has not seen), continuation frames mid-frame too, from the state
    the previous frame ended in, and a code point left truncated by the last frame is a 1007.
    An unfragmented text frame is validated by decoding it (the whole payload, once more).
    Compressed frames are not checked here (only the inflated bytes are text: the caller's
    ``Utf8Validator`` does that); with ``early_compressed_text``, a call that ends inside a
    compressed text frame hands the caller its new payload bytes (an ``OP_EARLY`` frame) so
    that it can inflate and check them before the frame is complete.

    A payload of 64 KiB or more that the current read did not bring whole is received in
    place: once its header is parsed, the final
    bytes object is allocated and ``get_buffer`` returns a view of its unfilled part, so
    ``recv_into`` writes the payload where it will be returned (unmasked in place, which is
    where the early UTF-8 check reads it).

    Args:
        expect_mask: True on a server (client frames must be masked), False on a client.
        max_size: largest uncompressed message in bytes; None means no limit.
        compressed_max_size: limit on the compressed bytes of each frame of an RSV1 message
            (defaults to max_size); the inflated size is bounded by the decompressor.
        rsv1_allowed: True once permessage-deflate is negotiated.
        decode_text: return unfragmented uncompressed text payloads as ``str``.
        early_compressed_text: hand out the payload of an incomplete compressed text frame
            as it arrives (``OP_EARLY`` frames, see ``_early_compressed``), for the caller to
            inflate and check early (1007 mid-frame, SPEC "Bad input").
    """

    def __init__(self, *, bint expect_mask, max_size=2**20, compressed_max_size=None,
                 bint rsv1_allowed=False, bint decode_text=True,
                 bint early_compressed_text=False):
        """Create a parser for one direction of one connection."""
        self.expect_mask = expect_mask
        self._set_limit(max_size, False)
        self._set_limit(compressed_max_size, True)
        self.rsv1_allowed = rsv1_allowed
        self.decode_text = decode_text
        self.early_compressed_text = early_compressed_text
        self.error = None

    def __dealloc__(self):
        self._drop_buffer()

    # ----------------------------------------------------------------- attributes

    @property
    def max_size(self):
        """Largest uncompressed message in bytes; None means no limit."""
        return self._max_size

    @max_size.setter
    def max_size(self, value):
        self._set_limit(value, False)

    @property
    def compressed_max_size(self):
        """Limit on the compressed bytes of an RSV1 message (None: ``max_size`` applies)."""
        return self._compressed_max_size

    @compressed_max_size.setter
    def compressed_max_size(self, value):
        self._set_limit(value, True)

    cdef int _set_limit(self, object value, bint compressed) except -1:
        cdef long long c = 0
        cdef int overflow = 0
        if value is not None:
            index = PyNumber_Index(value)
            c = PyLong_AsLongLongAndOverflow(index, &overflow)
            if overflow > 0:
                c = 0x7FFFFFFFFFFFFFFF
            elif overflow < 0:
                c = -1
        if compressed:
            self._compressed_max_size = value
            self._has_cmax = value is not None
            self._cmax = c
        else:
            self._max_size = value
            self._has_max = value is not None
            self._max = c
        return 0

    @property
    def buffered(self):
        """Number of bytes received but not yet returned as frames."""
        cdef Py_ssize_t n = self._end - self._start
        if self._pp != NULL:
            n += self._pl_hdr + self._pl_filled
        return n

    @property
    def in_message(self):
        """True while a fragmented message is open (its last frame not yet received)."""
        return self._frag_opcode != 0

    # ----------------------------------------------------------------- public API

    def get_buffer(self, Py_ssize_t sizehint=-1):
        """Return a writable buffer for the next read (``recv_into`` / ``BufferedProtocol``).

        While a large payload is pending this is a view of its unfilled part (exactly the
        bytes still missing, so a read never runs into the next frame); otherwise it is the
        free tail of the receive buffer, at least ``sizehint`` bytes (up to 4 MiB) and
        normally 128 KiB (a 64 KiB message and its header in one read).
        """
        return PyMemoryView_FromObject(self._get_region(sizehint))

    cdef _WritableRegion _get_region(self, Py_ssize_t sizehint):
        """get_buffer()'s region itself (a buffer with a length), without the memoryview."""
        if self._pp != NULL:
            self._view_kind = 2
            self._view_len = self._pl_len - self._pl_filled
            return _region(self._payload, self._pp + self._pl_filled, self._view_len, False)
        self._offer_tail(sizehint)
        return _region(self._buf, self._bp + self._end, self._view_len, True)

    cdef int _offer_tail(self, Py_ssize_t sizehint) except -1:
        """Make the receive buffer's free tail the next read's destination (see get_buffer)."""
        cdef Py_ssize_t live = self._end - self._start
        cdef Py_ssize_t want = _CHUNK - live if live < _CHUNK - _MIN_READ else _MIN_READ
        if sizehint > want:
            want = sizehint if sizehint < _MAX_HINT else _MAX_HINT
        self._reserve(want)
        self._view_kind = 1
        self._view_len = self._cap - self._end
        return 0

    def buffer_updated(self, Py_ssize_t nbytes):
        """Parse the ``nbytes`` just written into the buffer from ``get_buffer``.

        Raises:
            ValueError: when no buffer was handed out or ``nbytes`` exceeds it (a buffer
                handed out before the last ``feed``/``buffer_updated`` no longer counts).
        """
        return self._buffer_updated(nbytes)

    cdef list _buffer_updated(self, Py_ssize_t nbytes):
        if self._view_kind == 0 or nbytes < 0 or nbytes > self._view_len:
            raise ValueError("nbytes out of range")
        return self._updated(nbytes)

    def recv_from(self, sock, int flags=0):
        """Read once from the plain socket ``sock`` (or its descriptor) into the receive
        buffer and parse what arrived (the socket's own timeout does not apply).

        Returns None at the end of the stream; the payload itself (bytes for binary, str for
        text, which needs ``decode_text``) when the read completed exactly one whole
        uncompressed data message, not part of a fragmented one; otherwise the list of frames
        completed (possibly empty).

        Raises:
            OSError: as ``socket.recv_into`` does (BlockingIOError: nothing to read with
                ``MSG_DONTWAIT``). The GIL is released while reading, except for a
                non-blocking read of at most 512 KiB (a short copy).
        """
        cdef int fd = _fileno(sock)
        if flags != 0 and flags != _MSG_DONTWAIT:
            raise ValueError("flags must be 0 or socket.MSG_DONTWAIT")
        cdef list frames = self._recv_frames(fd, flags)
        if frames is None:
            return None
        if len(frames) == 1 and self.error is None:
            f = <tuple>frames[0]
            if f[1] is True and f[2] is False and (f[0] == 2 or (f[0] == 1 and self.decode_text)):
                return f[3]
        return frames

    cdef list _recv_frames(self, int fd, int flags):
        """recv_from's read and parse: the frames completed, or None at the end of the stream."""
        cdef object owner
        cdef char *dst
        cdef Py_ssize_t room, r
        cdef list frames = None
        landing = None
        cdef int w
        if self._predict and self._pp == NULL and self._end == self._start and self.error is None:
            if flags == 0:
                # A blocking read: wait for the next frame before allocating its guessed
                # payload (an idle connection waiting for its next message, in a thread of
                # its own, would otherwise hold a buffer of the last messages' size).
                while True:
                    with nogil:
                        w = kn_wait_readable(fd)
                    if w != -EINTR:
                        break
                    PyErr_CheckSignals()
                if w < 0:
                    _raise_errno(-w)
            try:
                landing = PyBytes_FromStringAndSize(NULL, self._predict)
            except MemoryError:  # read as usual, without a guess
                self._predict = 0
        if landing is not None:
            frames = self._recv_landing(fd, flags, landing)
            if frames is None:
                return None
        else:
            if self._pp != NULL:
                owner = self._payload  # keeps the memory being read into alive, whatever happens
                self._view_kind = 2
                room = self._view_len = self._pl_len - self._pl_filled
                dst = <char *>self._pp + self._pl_filled
            elif flags == 0 and self._end == self._start and self.error is None:
                return self._recv_idle(fd)
            else:
                self._offer_tail(-1)
                owner = self._buf
                room = self._view_len
                dst = <char *>self._bp + self._end
            r = _recv_retry(fd, dst, room, flags)
            if r < 0:
                self._view_len = 0
                _raise_errno(<int>-r)
            if r == 0:
                self._view_len = 0
                return None
            if r > self._view_len:  # pragma: no cover - the parser was used meanwhile
                raise ValueError("nbytes out of range")
            owner = None  # read done: the receive buffer may be recycled once parsed
            frames = self._updated(r)
        return frames

    cdef list _recv_idle(self, int fd):
        """recv_from's blocking read with nothing buffered (a connection waiting for its next
        message, typically in a thread of its own): into a page on the stack, parsed from
        there, so that the wait holds no receive buffer (it held 128 KiB, a blocking server's
        idle connection: audit). A small message still takes one read and one copy; the rest
        of a larger one is read by the next call, into a buffer.

        Returns the frames completed, or None at the end of the stream.
        """
        cdef unsigned char page[_MIN_READ]
        cdef Py_ssize_t r
        cdef list frames = []
        self._view_len = 0
        r = _recv_retry(fd, <char *>page, _MIN_READ, 0)
        if r < 0:
            _raise_errno(<int>-r)
        if r == 0:
            return None
        self.last_frames = 0
        self._consume(page, r, frames)
        return self._end_read(frames)

    cdef list _recv_landing(self, int fd, int flags, object payload):
        """recv_from's read when nothing is buffered and the next frame is expected to carry
        ``_predict`` payload bytes, like the last two data frames: one recvmsg(2) puts the header
        in ``_hbuf``, the payload straight into ``payload``, its final bytes object (new, that
        size; no copy out of the receive buffer), and whatever follows into the receive
        buffer. A wrong guess replays the bytes through the parser in order: the copy a plain
        read makes anyway.

        Returns the frames completed, or None at the end of the stream.
        """
        cdef Py_ssize_t want = self._predict, hdr, r, hn, pn, tn, room
        cdef unsigned char *h = self._hbuf
        cdef unsigned char *pp
        cdef char *dst
        cdef list frames = []
        cdef int l7
        cdef bint guessed
        self.last_frames = 0
        hdr = (4 if want < 65536 else 10) + (4 if self.expect_mask else 0)
        pp = <unsigned char *>PyBytes_AS_STRING(payload)
        self._offer_tail(-1)
        owner = self._buf  # keeps the memory being read into alive, whatever happens
        room = self._view_len
        dst = <char *>self._bp + self._end
        self._view_len = 0
        while True:
            if flags == 0 or want + room > _NOGIL_READ:  # may wait, or a long copy
                with nogil:
                    r = kn_recv3(fd, <char *>h, hdr, <char *>pp, want, dst, room, flags)
            else:
                r = kn_recv3(fd, <char *>h, hdr, <char *>pp, want, dst, room, flags)
            if r != -EINTR:
                break
            PyErr_CheckSignals()
        if r < 0:
            _raise_errno(<int>-r)
        if r == 0:
            return None
        hn = r if r < hdr else hdr
        pn = r - hn if r - hn < want else want
        tn = r - hn - pn
        guessed = False
        if hn == hdr and ((h[1] & 0x80) != 0) == self.expect_mask:
            l7 = h[1] & 0x7F
            if want < 65536:
                guessed = l7 == 126 and ((h[2] << 8) | h[3]) == want
            else:
                guessed = l7 == 127 and _be64(h + 2) == <uint64_t>want
        if guessed:
            # The header _parse would see; the frame is then finished in place.
            if self._check_header(h[0], h[1]):
                return frames
            if (h[0] & 0x0F) < 8 and self._check_size(h[0] & 0x0F, (h[0] & 0x40) != 0, want):
                return frames
            self._start_payload(h, hdr, hdr, want, frames, payload)
            if pn:
                self._fill_payload(pp, pn, False, frames)
            if tn and self.error is None:
                self._end += tn  # what followed the payload is already in the receive buffer
                self._parse_buffer(frames)
        else:
            tail = PyBytes_FromStringAndSize(dst, tn) if tn else None
            self._consume(h, hn, frames)
            if pn:
                self._consume(pp, pn, frames)
            if tn:
                self._consume(<const unsigned char *>PyBytes_AS_STRING(tail), tn, frames)
        return self._end_read(frames)

    cdef list _end_read(self, list frames):
        """The end of every read's parse: the coalescing of the call's last frames, and the
        early checks of what is left partial (speed: only a call that ends inside a frame pays
        for the early UTF-8 check). Returns ``frames``."""
        self._co_end(frames, False)
        if self.error is None and (self._pp != NULL or self._end - self._start > 2):
            self._check_partial(frames)
        return frames

    cdef list _updated(self, Py_ssize_t nbytes):
        """buffer_updated() once ``nbytes`` is known to fit the view handed out."""
        self._view_len = 0
        self.last_frames = 0
        cdef list frames = []
        if self.error is not None:
            return frames
        if self._view_kind == 2:
            if nbytes:
                self._fill_payload(self._pp + self._pl_filled, nbytes, False, frames)
        else:
            self._end += nbytes
            self._parse_buffer(frames)
        return self._end_read(frames)

    def feed(self, data):
        """Add bytes from the peer and return every frame they complete, in order."""
        cdef Py_buffer view
        cdef list frames = []
        self.last_frames = 0
        if self.error is not None:
            return frames
        if not PyObject_CheckBuffer(data):
            _raise_not_buffer(data, "can't concat %.100s to bytearray")
        self._view_len = 0  # the data may land where a handed-out view points
        if PyBytes_CheckExact(data):  # speed: bytes need no buffer protocol
            self._consume(<const unsigned char *>PyBytes_AS_STRING(data),
                          PyBytes_GET_SIZE(data), frames)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._consume(<const unsigned char *>view.buf, view.len, frames)
            finally:
                PyBuffer_Release(&view)
        return self._end_read(frames)

    cdef int _check_partial(self, list frames) except -1:
        """A call ended inside a frame: the early checks of its payload (text, compressed text)."""
        if self.decode_text:
            self._check_text()
        if self.early_compressed_text and self.error is None:
            self._early_compressed(frames)
        return 0

    cdef int _early_compressed(self, list frames) except -1:
        """Hand out the new payload bytes of the incomplete compressed text frame we hold.

        With ``early_compressed_text``, a call that ends inside a compressed text frame (a
        text message's first frame with RSV1, or a continuation of such a message) appends
        ``(OP_EARLY, False, True, chunk)``: the frame's next unmasked payload bytes, each
        byte once, so that the caller can inflate them and check the text as it arrives.
        The complete frame is still returned whole; the bytes handed out early are its first.
        """
        cdef const unsigned char *p
        cdef Py_ssize_t hdr, got, done = self._cz_done
        cdef int kind
        cdef bint masked
        if self._pp != NULL:
            kind = self._pl_opcode | (0x40 if self._pl_rsv1 else 0)
            if not (kind == 0x41 or (kind == 0 and self._frag_opcode == 1 and self._frag_compressed)):
                return 0
            got = self._pl_filled
            if got <= done:
                return 0
            chunk = PyBytes_FromStringAndSize(<const char *>self._pp + done, got - done)
        else:
            p = self._bp + self._start
            kind = p[0] & 0x4F
            if not (kind == 0x41 or (kind == 0 and self._frag_opcode == 1 and self._frag_compressed)):
                return 0
            masked = (p[1] & 0x80) != 0
            hdr = _head_len(p)
            got = self._end - self._start - hdr
            if got <= done:
                return 0
            chunk = PyBytes_FromStringAndSize(NULL, got - done)
            _copy_payload(<unsigned char *>PyBytes_AS_STRING(chunk), p + hdr + done, got - done,
                          masked, p + hdr - 4 if masked else NULL, done & 3)
        self._cz_done = got
        frames.append((OP_EARLY, False, True, chunk))
        return 0

    cdef int _check_text(self) except -1:
        """Validate the new payload bytes of the incomplete frame we hold, if it is text.

        The frame is the large payload being received in place (already unmasked there) or
        else the receive buffer's live bytes (its header checked already; masked payload is
        unmasked into a stack copy). Bytes checked by earlier calls are not looked at again:
        ``_tv_done`` counts them and ``_tv_pending`` holds the code point they ended in.
        """
        cdef const unsigned char *p
        cdef const unsigned char *src
        cdef Py_ssize_t hdr, got, done = self._tv_done, k
        cdef unsigned char tmp[_CHECK_CHUNK]
        cdef bint ok = True
        cdef int kind
        if self._pp != NULL:
            kind = self._pl_opcode | (0x40 if self._pl_rsv1 else 0)
            if not (kind == 1 or (kind == 0 and self._mv_active)) or self._pl_filled <= done:
                return 0
            if done == 0 and kind == 0:
                self._load_message_state()
            got = self._pl_filled
            ok = _utf8_feed(self._tv_pending, &self._tv_npending, self._pp + done, got - done,
                            False)
        else:
            p = self._bp + self._start
            kind = p[0] & 0x4F
            if not (kind == 1 or (kind == 0 and self._mv_active)):
                return 0
            hdr = _head_len(p)
            got = self._end - self._start - hdr
            if got <= done:
                return 0
            if done == 0 and kind == 0:
                self._load_message_state()
            src = p + hdr + done
            if p[1] & 0x80:
                while ok and done < got:
                    k = got - done
                    if k > _CHECK_CHUNK:
                        k = _CHECK_CHUNK
                    _xor_copy(tmp, src, k, p + hdr - 4, done & 3)
                    ok = _utf8_feed(self._tv_pending, &self._tv_npending, tmp, k, False)
                    src += k
                    done += k
            else:
                ok = _utf8_feed(self._tv_pending, &self._tv_npending, src, got - done, False)
        self._tv_done = got
        if not ok:
            return self._fail(ProtocolError("invalid UTF-8 in text message", 1007))
        return 0

    cdef void _load_message_state(self) noexcept:
        """A continuation frame's check starts where the message's previous frame ended."""
        memcpy(self._tv_pending, self._mv_pending, 4)
        self._tv_npending = self._mv_npending

    cdef int _text_fragment(self, bint fin, object payload) except -1:
        """A frame of an uncompressed fragmented text message is complete: validate the bytes
        the early check has not seen (all of them if it saw none) and carry the state over to
        the next frame; on the last one a truncated code point is an error too. Returns 1
        (with ``error`` set) on invalid UTF-8."""
        cdef Py_ssize_t done = self._tv_done
        if done == 0 and self._mv_active:
            self._load_message_state()
        if not _utf8_feed(self._tv_pending, &self._tv_npending,
                          <const unsigned char *>PyBytes_AS_STRING(payload) + done,
                          PyBytes_GET_SIZE(payload) - done, fin):
            self._mv_active = False
            return self._fail(ProtocolError("invalid UTF-8 in text message", 1007))
        self._mv_active = not fin
        memcpy(self._mv_pending, self._tv_pending, 4)
        self._mv_npending = self._tv_npending
        return 0

    # ----------------------------------------------------------------- buffer management

    cdef int _fail(self, object exc) except -1:
        """Record the error to fail the connection with; drop everything buffered. Returns 1."""
        self.error = exc
        self._drop_buffer()
        self._payload = None
        self._pp = NULL
        self._view_len = 0
        return 1

    cdef void _drop_buffer(self) noexcept:
        """Release the (empty or abandoned) receive buffer, recycling a standard one."""
        if self._buf is not None:
            if (self._cap == _CHUNK and _Py_REFCNT(<PyObject *>self._buf) == 1
                    and _n_spare < _SPARE_MAX):
                _spare_push(self._buf)
            self._buf = None
        self._bp = NULL
        self._cap = self._start = self._end = 0

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Make room for ``extra`` more bytes after ``_end`` (compaction amortised O(1))."""
        cdef Py_ssize_t live = self._end - self._start, cap
        if self._cap - self._end >= extra:
            return 0
        if live == 0:
            self._start = self._end = 0
            if self._cap >= extra:
                return 0
        elif live + extra <= self._cap and self._start >= live:
            # Moving costs at most what has been consumed since the last move.
            memmove(self._bp, self._bp + self._start, live)
            self._start = 0
            self._end = live
            return 0
        cap = 2 * self._cap
        if cap < live + extra:
            cap = live + extra
        if cap <= _SMALL_ALLOC:
            cap = _SMALL_ALLOC
        elif cap < _CHUNK:
            cap = _CHUNK
        new = _new_buffer(cap)
        if live:
            memcpy(PyBytes_AS_STRING(new), self._bp + self._start, live)
        self._drop_buffer()
        self._buf = new
        self._bp = <unsigned char *>PyBytes_AS_STRING(new)
        self._cap = cap
        self._end = live
        return 0

    cdef int _append(self, const unsigned char *data, Py_ssize_t n) except -1:
        self._reserve(n)
        memcpy(self._bp + self._end, data, n)
        self._end += n
        return 0

    # ----------------------------------------------------------------- parsing

    cdef int _consume(self, const unsigned char *data, Py_ssize_t n, list frames) except -1:
        """Parse ``n`` bytes from the peer: straight from ``data`` whenever nothing is buffered."""
        cdef Py_ssize_t k, need
        while self.error is None:
            if self._pp != NULL:  # a large payload is being received in place
                if n == 0:
                    return 0
                k = self._pl_len - self._pl_filled
                if k > n:
                    k = n
                self._fill_payload(data, k, True, frames)
                data += k
                n -= k
                continue
            if n == 0:
                return 0
            if self._end == self._start:
                # speed: nothing buffered, parse in place; keep only an incomplete tail.
                k = self._parse(<unsigned char *>data, n, False, frames)
                data += k
                n -= k
                if self.error is None and self._pp == NULL and n:
                    self._append(data, n)
                    return 0
                continue
            # Top up the buffered head frame with just what it lacks, then go on in place.
            need = self._head_need()
            if need <= 0:  # (< 0: a stale get_buffer() view rewrote the buffered header)
                self._parse_buffer(frames)
                if self.error is None and self._pp == NULL:
                    # No room could be allocated up front for the large payload: buffer it
                    # like the pure twin does.
                    self._append(data, n)
                    self._parse_buffer(frames)
                    return 0
                continue
            k = need if need < n else n
            self._append(data, k)
            data += k
            n -= k
            self._parse_buffer(frames)
        return 0

    cdef Py_ssize_t _head_need(self) noexcept:
        """Bytes the buffered head frame still lacks; 0 when its (large) header is complete."""
        cdef const unsigned char *p = self._bp + self._start
        cdef Py_ssize_t live = self._end - self._start, hdr
        cdef uint64_t length
        cdef int l7
        if live < 2:
            return 2 - live
        l7 = p[1] & 0x7F
        hdr = 2 + (2 if l7 == 126 else 8 if l7 == 127 else 0) + (4 if p[1] & 0x80 else 0)
        if live < hdr:
            return hdr - live
        if l7 == 126:
            length = (p[2] << 8) | p[3]
        elif l7 == 127:
            length = _be64(p + 2)
        else:
            length = l7
        if length >= _LARGE:
            return 0
        return hdr + <Py_ssize_t>length - live

    cdef int _parse_buffer(self, list frames) except -1:
        """Parse the receive buffer's live bytes; release the buffer once it is empty."""
        cdef Py_ssize_t used = self._parse(self._bp + self._start, self._end - self._start,
                                           True, frames)
        if self.error is not None:
            return 0
        self._start += used
        if self._start == self._end:
            self._drop_buffer()
        return 0

    cdef Py_ssize_t _parse(self, unsigned char *data, Py_ssize_t n, bint writable,
                           list frames) except -2:
        """Parse every complete frame in ``data[:n]``; return the bytes consumed.

        ``writable``: ``data`` is our receive buffer, so text may be unmasked in place. On a
        protocol error ``self.error`` is set and the bytes before the bad frame are reported.
        A large payload that is not complete switches to in-place mode and consumes all of
        ``data``.
        """
        cdef Py_ssize_t pos = 0, avail, hdr, plen
        cdef unsigned char *p
        cdef unsigned char *key
        cdef unsigned char *src
        cdef unsigned char stack_text[_STACK_TEXT]
        cdef int b0, b1, l7, opcode
        cdef bint fin, rsv1, masked
        cdef uint64_t length
        while n - pos >= 2:
            p = data + pos
            avail = n - pos
            b0 = p[0]
            b1 = p[1]
            if self._check_header(b0, b1):
                return pos
            opcode = b0 & 0x0F
            fin = (b0 & 0x80) != 0
            rsv1 = (b0 & 0x40) != 0
            masked = (b1 & 0x80) != 0
            l7 = b1 & 0x7F
            if l7 < 126:
                length = l7
                hdr = 2
            elif l7 == 126:
                if avail < 4:
                    break
                length = (p[2] << 8) | p[3]
                if length < 126:
                    self._fail(ProtocolError("frame length not in its minimal form", 1002))
                    return pos
                hdr = 4
            else:
                if avail < 10:
                    break
                length = _be64(p + 2)
                if length >> 63:
                    self._fail(ProtocolError("frame length has the most significant bit set", 1002))
                    return pos
                if length < 65536:  # RFC 6455 §5.2: "the minimal number of bytes MUST be used"
                    self._fail(ProtocolError("frame length not in its minimal form", 1002))
                    return pos
                hdr = 10
            # RFC 6455 §10.4 / SPEC: the limit is decided from the header, before any payload.
            if opcode < 8 and self._check_size(opcode, rsv1, length):
                return pos
            if masked:
                hdr += 4
            if avail < hdr:
                break
            key = p + hdr - 4 if masked else NULL
            if <uint64_t>(avail - hdr) < length:
                if length >= _LARGE and self._start_payload(p, avail, hdr, length, frames):
                    return n
                break
            plen = <Py_ssize_t>length
            src = p + hdr
            if opcode == 1 and fin and not rsv1 and self.decode_text:
                # Decoded straight from the frame: one validation, no bytes object.
                if masked:
                    if writable:
                        _xor_inplace(src, plen, key, 0)
                    elif plen <= _STACK_TEXT:
                        _xor_copy(stack_text, src, plen, key, 0)
                        src = stack_text
                    else:
                        src = <unsigned char *>PyMem_Malloc(plen)
                        if src == NULL:
                            raise MemoryError()
                        _xor_copy(src, p + hdr, plen, key, 0)
                payload = _decode_text(src, plen)
                if masked and not writable and plen > _STACK_TEXT:
                    PyMem_Free(src)
                if payload is None:
                    self._fail(ProtocolError("invalid UTF-8 in text message", 1007))
                    return pos
            else:
                payload = PyBytes_FromStringAndSize(NULL, plen)
                _copy_payload(<unsigned char *>PyBytes_AS_STRING(payload), src, plen, masked,
                              key, 0)
            if self._emit(frames, opcode, fin, rsv1, length, payload):
                return pos
            pos += hdr + plen
        return pos

    cdef bint _start_payload(self, const unsigned char *p, Py_ssize_t avail, Py_ssize_t hdr,
                             uint64_t length, list frames, object payload=None) except -1:
        """Allocate the final payload of a large frame (unless ``payload``, a new bytes object
        of ``length`` bytes, is given) and move its first bytes in.

        Returns False when the allocation failed (the caller then buffers, like the pure twin).
        """
        cdef Py_ssize_t filled = avail - hdr
        if length > <uint64_t>PY_SSIZE_T_MAX:
            return False
        if payload is None:
            try:
                payload = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>length)
            except (MemoryError, OverflowError):  # (Overflow: within bytes' header of the maximum)
                return False
        self._payload = payload
        self._pp = <unsigned char *>PyBytes_AS_STRING(payload)
        self._pl_len = <Py_ssize_t>length
        self._pl_filled = 0
        self._pl_hdr = hdr
        self._pl_opcode = p[0] & 0x0F
        self._pl_fin = (p[0] & 0x80) != 0
        self._pl_rsv1 = (p[0] & 0x40) != 0
        self._pl_masked = (p[1] & 0x80) != 0
        if self._pl_masked:
            memcpy(self._pl_key, p + hdr - 4, 4)
        self._fill_payload(p + hdr, filled, True, frames)
        return True

    cdef int _fill_payload(self, const unsigned char *data, Py_ssize_t n, bint copy,
                           list frames) except -1:
        """Add ``n`` payload bytes (copied from ``data``, or already in place); finish the frame."""
        cdef unsigned char *dst = self._pp + self._pl_filled
        cdef Py_ssize_t phase = self._pl_filled & 3
        if copy:
            _copy_payload(dst, data, n, self._pl_masked, self._pl_key, phase)
        elif self._pl_masked:
            if n >= _NOGIL_BYTES:
                with nogil:
                    _xor_inplace(dst, n, self._pl_key, phase)
            else:
                _xor_inplace(dst, n, self._pl_key, phase)
        self._pl_filled += n
        if self._pl_filled < self._pl_len:
            return 0
        payload = self._payload
        self._payload = None
        self._pp = NULL
        if self._pl_opcode == 1 and self._pl_fin and not self._pl_rsv1 and self.decode_text:
            payload = _decode_text(<const unsigned char *>PyBytes_AS_STRING(payload),
                                   self._pl_len)
            if payload is None:
                return self._fail(ProtocolError("invalid UTF-8 in text message", 1007))
        return self._emit(frames, self._pl_opcode, self._pl_fin, self._pl_rsv1,
                          <uint64_t>self._pl_len, payload)

    cdef int _emit(self, list frames, int opcode, bint fin, bint rsv1, uint64_t length,
                   object payload) except -1:
        """Update the fragmentation state (RFC 6455 §5.4) and append the frame tuple.

        Returns 1 (with ``error`` set, nothing appended) when the frame completes invalid UTF-8
        in a fragmented text message."""
        self.last_frames += 1
        if ((opcode == 0 and self._mv_active) or (opcode == 1 and not fin and not rsv1
                                                  and self.decode_text)):
            if self._text_fragment(fin, payload):
                return 1
        # The frame an early UTF-8 check was following (always the next to complete) is done.
        self._tv_done = 0
        self._tv_npending = 0
        self._cz_done = 0
        if opcode == 0:
            if fin:
                self._frag_opcode = 0
                self._msg_size = 0
            else:
                self._msg_size += length
        elif opcode < 8 and not fin:
            self._frag_opcode = opcode
            self._frag_compressed = rsv1
            self._msg_size = length
        if opcode < 8:
            # recv_from's guess for the next frame: a size the last two data frames had (a
            # wrong guess costs a copy or two, so sizes that vary are not guessed at all).
            if _LAND_MIN <= length <= _LAND_MAX and <Py_ssize_t>length == self._last_len:
                self._predict = <Py_ssize_t>length
            else:
                self._predict = 0
            self._last_len = <Py_ssize_t>length if length <= _LAND_MAX else 0
        if opcode == 0 and self._co_at == len(frames) and self._co_at:
            # The previous frame this call returns is a (non-final) continuation of the same
            # message: one frame for both. A peer sending tiny (or empty) fragments then costs
            # one frame per read, not one per fragment (fairness: a read of 6-byte frames
            # was ~40,000 frames for the protocol to handle, ~50 ms with the loop blocked).
            run = self._co_run
            if run is None:
                run = self._co_run = bytearray(<bytes>(<tuple>frames[len(frames) - 1])[3])
            run += payload
            if fin:
                self._co_end(frames, True)
            return 0
        if self._co_run is not None:
            self._co_end(frames, False)
        frame = (opcode, fin, rsv1, payload)
        # speed: the tuple holds only an int, two bools and bytes/str, so it can never be part
        # of a reference cycle; untracking it now (as the collector would on its first pass)
        # keeps a batch of thousands of frames from making every GC generation scan them.
        PyObject_GC_UnTrack(frame)
        frames.append(frame)
        self._co_at = len(frames) if opcode == 0 and not fin else 0
        return 0

    cdef int _co_end(self, list frames, bint fin) except -1:
        """Close the run of continuation frames merged into ``frames[-1]`` (see ``_emit``)."""
        run = self._co_run
        self._co_run = None
        self._co_at = 0
        if run is not None:
            frames[len(frames) - 1] = (0, fin, False, bytes(run))
        return 0

    cdef int _check_header(self, int b0, int b1) except -1:
        """Apply the rules that the first two bytes of a frame decide (RFC 6455 §5.2).

        Returns 1 (with ``error`` set) when the frame is refused, else 0.
        """
        cdef int opcode = b0 & 0x0F
        cdef bint fin = (b0 & 0x80) != 0
        cdef bint rsv1 = (b0 & 0x40) != 0
        cdef bint masked = (b1 & 0x80) != 0
        cdef int length = b1 & 0x7F
        if (b0 & 0x30) or (rsv1 and not self.rsv1_allowed):
            return self._fail(ProtocolError("reserved bits must be 0", 1002))
        if opcode >= 8:
            if opcode > 10:
                return self._fail(ProtocolError("reserved opcode 0x%x" % opcode, 1002))
            if not fin:
                return self._fail(ProtocolError("fragmented control frame", 1002))
            if length > 125:
                return self._fail(ProtocolError("control frame too long: at most 125 bytes, in the 7-bit length field", 1002))
            if rsv1:
                return self._fail(ProtocolError("reserved bits must be 0", 1002))
        elif opcode == 0:
            if not self._frag_opcode:
                return self._fail(ProtocolError("unexpected continuation frame", 1002))
            if rsv1:
                return self._fail(ProtocolError("RSV1 set on a continuation frame", 1002))
        elif opcode <= 2:
            if self._frag_opcode:
                return self._fail(ProtocolError("expected a continuation frame", 1002))
        else:
            return self._fail(ProtocolError("reserved opcode 0x%x" % opcode, 1002))
        if masked != self.expect_mask:
            return self._fail(ProtocolError(
                "incorrect masking: client frames must be masked"
                if self.expect_mask
                else "incorrect masking: server frames must not be masked",
                1002,
            ))
        return 0

    cdef int _check_size(self, int opcode, bint rsv1, uint64_t length) except -1:
        """Refuse a data frame that would take its message past the limit (close code 1009)."""
        cdef bint compressed = rsv1 if opcode else self._frag_compressed
        cdef long long limit
        cdef uint64_t size
        if compressed and self._has_cmax:
            limit = self._cmax
            limit_obj = self._compressed_max_size
        elif self._has_max:
            limit = self._max
            limit_obj = self._max_size
        else:
            return 0
        # Compressed messages are inflated frame by frame (the decompressor bounds the
        # inflated total), so their compressed bytes are bounded per frame.
        size = length + (self._msg_size if opcode == 0 and not compressed else 0)
        if limit < 0 or size > <uint64_t>limit:
            return self._fail(PayloadTooBig(f"message too big: {size} bytes > {limit_obj} bytes"))
        return 0


# --------------------------------------------------------------------------- building

def build_frame(opcode, payload, bint fin=True, bint rsv1=False, mask=None):
    """Build one frame: header and (masked, when ``mask`` is given) payload in one bytes object.

    ``payload`` may be ``str`` (encoded as UTF-8) or any bytes-like object.

    Raises:
        TypeError: when ``payload`` is neither str nor bytes-like.
        ValueError: when ``opcode`` is not 0..15 or ``mask`` is not 4 bytes.
    """
    cdef Py_buffer view
    cdef bint owned = False
    cdef const unsigned char *src
    cdef Py_ssize_t n
    if PyUnicode_CheckExact(payload):
        # speed: the str's own UTF-8 form, no intermediate bytes object.
        src = <const unsigned char *>PyUnicode_AsUTF8AndSize(payload, &n)
    elif isinstance(payload, str):
        payload = str(payload)
        src = <const unsigned char *>PyUnicode_AsUTF8AndSize(payload, &n)
    elif PyBytes_CheckExact(payload):
        src = <const unsigned char *>PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
    else:
        _get_view(payload, &view)
        owned = True
        src = <const unsigned char *>view.buf
        n = view.len
    try:
        return _build(opcode, src, n, fin, rsv1, mask)
    finally:
        if owned:
            PyBuffer_Release(&view)


cdef object _build(object opcode, const unsigned char *src, Py_ssize_t n, bint fin, bint rsv1,
                   object mask):
    cdef int overflow = 0, b0
    cdef long long op
    cdef unsigned char key[4]
    if PyLong_CheckExact(opcode):
        op = PyLong_AsLongLongAndOverflow(opcode, &overflow)
        if overflow or op < 0 or op > 15:
            raise ValueError("opcode must be between 0 and 15")
        b0 = <int>op | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    else:  # bool, IntEnum, …: the pure twin's exact operations and errors
        if not 0 <= opcode <= 15:
            raise ValueError("opcode must be between 0 and 15")
        b0 = opcode | (0x80 if fin else 0) | (0x40 if rsv1 else 0)
    if mask is not None:
        _mask_key(mask, key)
        return _build_raw(b0, src, n, key)
    return _build_raw(b0, src, n, NULL)


cdef inline int _write_header(unsigned char *out, int b0, Py_ssize_t n,
                              const unsigned char *key) noexcept:
    """Write a frame header (first byte ``b0``, payload length ``n``, then ``key`` unless
    NULL) at ``out``; returns its length."""
    cdef int hlen, j
    cdef int mbit = 0x80 if key != NULL else 0
    cdef uint64_t length = <uint64_t>n
    out[0] = <unsigned char>b0
    if n < 126:
        hlen = 2
        out[1] = <unsigned char>(mbit | n)
    elif n < 65536:
        hlen = 4
        out[1] = <unsigned char>(mbit | 126)
        out[2] = <unsigned char>(n >> 8)
        out[3] = <unsigned char>n
    else:
        hlen = 10
        out[1] = <unsigned char>(mbit | 127)
        for j in range(8):
            out[2 + j] = <unsigned char>(length >> (56 - 8 * j))
    if mbit:
        memcpy(out + hlen, key, 4)
        hlen += 4
    return hlen


cdef object _build_raw(int b0, const unsigned char *src, Py_ssize_t n, const unsigned char *key):
    """One frame: first byte ``b0``, the payload masked with ``key`` (NULL: unmasked)."""
    cdef int hlen = (2 if n < 126 else 4 if n < 65536 else 10) + (4 if key != NULL else 0)
    cdef unsigned char *out
    frame = PyBytes_FromStringAndSize(NULL, hlen + n)
    out = <unsigned char *>PyBytes_AS_STRING(frame)
    _write_header(out, b0, n, key)
    # Header, key and (masked) payload in one allocation, the payload written in one pass.
    _copy_payload(out + hlen, src, n, key != NULL, key, 0)
    return frame


# ---------------------------------------------------------------- next_mask (see _pure.next_mask)

cdef unsigned char _mask_pool[1024]   # os.urandom bytes, handed out 4 at a time, each once
cdef Py_ssize_t _mask_pos = 1024


cdef int _take_mask(unsigned char *key) except -1:
    global _mask_pos
    cdef Py_ssize_t pos = _mask_pos
    if pos >= 1024:
        fresh = _os.urandom(1024)  # may release the GIL: the pool is touched only after
        memcpy(_mask_pool, PyBytes_AS_STRING(fresh), 1024)
        pos = 0
    _mask_pos = pos + 4
    memcpy(key, _mask_pool + pos, 4)
    return 0


cdef bytes _next_mask_c():
    cdef unsigned char key[4]
    _take_mask(key)
    return PyBytes_FromStringAndSize(<char *>key, 4)


def next_mask():
    """A fresh 4-byte masking key from ``os.urandom`` (RFC 6455 §5.3); each key is used once."""
    return _next_mask_c()


def _forget_masks():
    global _mask_pos
    _mask_pos = 1024


if hasattr(_os, "register_at_fork"):  # a forked child never reuses its parent's keys
    _os.register_at_fork(after_in_child=_forget_masks)


# ---------------------------------------------------------------- Waiter (see _pure.Waiter)

cdef enum:
    _W_PENDING = 0
    _W_RESULT = 1
    _W_EXCEPTION = 2
    _W_CANCELLED = 3

cdef object _current_task = None       # asyncio names, imported on first use (the blocking
cdef object _CancelledError = None     # API never imports asyncio)
cdef object _InvalidStateError = None


cdef object _current_tasks = None      # asyncio's {loop: running task} where current_task() is Python


cdef int _load_asyncio() except -1:
    global _current_task, _CancelledError, _InvalidStateError, _current_tasks, _ctask_type
    if _current_task is None:
        import asyncio
        import asyncio.tasks
        _CancelledError = asyncio.CancelledError
        _InvalidStateError = asyncio.InvalidStateError
        _current_task = asyncio.current_task
        # Speed: up to Python 3.11 current_task() is a Python function reading this dict.
        tasks = getattr(asyncio.tasks, "_current_tasks", None)
        if type(tasks) is dict and type(_current_task) is not type(len):
            _current_tasks = tasks
        try:
            import _asyncio
            _ctask_type = _asyncio.Task
        except (ImportError, AttributeError):
            _ctask_type = None
    return 0


cdef extern from *:
    """
    static int kn_is_ctask_wakeup(PyObject *fn, PyObject *task_type) {
        PyObject *self;
        const char *name;
        if (task_type == NULL || task_type == Py_None || !PyCFunction_Check(fn)) return 0;
        self = PyCFunction_GET_SELF(fn);
        if (self == NULL || (PyObject *)Py_TYPE(self) != task_type) return 0;
        name = ((PyCFunctionObject *)fn)->m_ml->ml_name;
        return name != NULL && strcmp(name, "task_wakeup") == 0;
    }
    """
    bint kn_is_ctask_wakeup(object fn, object task_type)


cdef object _ctask_type = None       # asyncio's C Task class (None: not loaded or absent)
cdef object _done_future = None      # a finished asyncio.Future (False: unavailable)


cdef class _NoLoop:
    """The loop of ``_done_future``, which is never awaited or scheduled."""

    def get_debug(self):
        return False


cdef object _make_done_future():
    global _done_future
    try:
        import asyncio
        fut = asyncio.Future(loop=_NoLoop())
        fut.set_result(None)
        if type(fut) is not asyncio.Future or not fut.done():
            fut = False
    except Exception:
        fut = False
    _done_future = fut
    return fut


cdef inline bint _task_running(object loop) except -1:
    if _current_tasks is not None:
        return (<dict>_current_tasks).get(loop) is not None
    return _current_task(loop) is not None


@cython.freelist(8)
cdef class Waiter:
    """A future-like object (``asyncio.isfuture`` is true) that can resume its task inline.

    See ``kn_sock._pure.Waiter``: the same methods, the same behaviour, in C — every call the
    task machinery makes on it (``get_loop``, ``add_done_callback``, ``result``) is a C call.
    """

    cdef public bint _asyncio_future_blocking
    cdef object _loop
    cdef int _state
    cdef object _value
    cdef object _wake
    cdef object _wake_ctx
    cdef list _callbacks

    def __init__(self, loop):
        self._loop = loop
        _load_asyncio()

    def __repr__(self):
        return f"<Waiter {('pending', 'finished', 'failed', 'cancelled')[self._state]}>"

    def get_loop(self):
        """The event loop this waiter belongs to."""
        return self._loop

    def done(self):
        """True once a result, an exception or a cancellation is set."""
        return self._state != _W_PENDING

    def cancelled(self):
        """True if cancelled."""
        return self._state == _W_CANCELLED

    def result(self):
        """The result; raises the exception, ``CancelledError``, or ``InvalidStateError`` if pending."""
        if self._state == _W_RESULT:
            return self._value
        if self._state == _W_EXCEPTION:
            raise self._value
        if self._state == _W_CANCELLED:
            raise _CancelledError() if self._value is None else _CancelledError(self._value)
        raise _InvalidStateError("Result is not ready.")

    def exception(self):
        """The exception (None after a result); ``CancelledError`` / ``InvalidStateError`` as ``result``."""
        if self._state == _W_RESULT:
            return None
        if self._state == _W_EXCEPTION:
            return self._value
        if self._state == _W_CANCELLED:
            raise _CancelledError() if self._value is None else _CancelledError(self._value)
        raise _InvalidStateError("Exception is not set.")

    def add_done_callback(self, fn, *, context=None):
        """Call ``fn(self)`` once done (through the loop); the first one may be run by ``wake_now``."""
        if self._state != _W_PENDING:
            self._loop.call_soon(fn, self, context=context)
        elif self._wake is None:
            self._wake = fn
            self._wake_ctx = context
        else:
            if self._callbacks is None:
                self._callbacks = []
            self._callbacks.append((fn, context))

    def remove_done_callback(self, fn):
        """Remove every registration of ``fn``; returns how many were removed."""
        cdef Py_ssize_t n = 0
        if self._wake is not None and self._wake == fn:
            self._wake = self._wake_ctx = None
            n = 1
        if self._callbacks:
            kept = [(f, c) for f, c in self._callbacks if f != fn]
            n += len(self._callbacks) - len(kept)
            self._callbacks = kept
        return n

    cdef int _complete(self, int state, object value) except -1:
        if self._state != _W_PENDING:
            raise _InvalidStateError("invalid state")
        self._state = state
        self._value = value
        callbacks = self._callbacks
        if callbacks:
            self._callbacks = None
            call_soon = self._loop.call_soon
            for fn, ctx in callbacks:
                call_soon(fn, self, context=ctx)
        return 0

    cdef int _schedule_wake(self) except -1:
        fn = self._wake
        if fn is not None:
            ctx = self._wake_ctx
            self._wake = self._wake_ctx = None
            self._loop.call_soon(fn, self, context=ctx)
        return 0

    def set_result(self, result):
        """Complete with ``result``; every callback goes through the loop."""
        self._complete(_W_RESULT, result)
        self._schedule_wake()

    def set_exception(self, exception):
        """Complete with ``exception`` (a class is instantiated); every callback goes through the loop."""
        if isinstance(exception, type):
            exception = exception()
        if not isinstance(exception, BaseException):
            raise TypeError("invalid exception object")
        if isinstance(exception, StopIteration):
            raise TypeError("StopIteration interacts badly with generators and cannot be raised into a Future")
        self._complete(_W_EXCEPTION, exception)
        self._schedule_wake()

    def cancel(self, msg=None):
        """Cancel (False if already done); every callback goes through the loop."""
        if self._state != _W_PENDING:
            return False
        self._complete(_W_CANCELLED, msg)
        self._schedule_wake()
        return True

    def resolve(self, result):
        """Complete with ``result`` but keep the awaiting task's wake-up for ``wake_now()``."""
        self._complete(_W_RESULT, result)

    def wake_now(self):
        """After ``resolve``: resume the awaiting task here if no task is running, else via the loop."""
        self._wake_now()

    cdef int _wake_now(self) except -1:
        fn = self._wake
        if fn is None or self._state == _W_PENDING:
            return 0
        loop = self._loop
        ctx = self._wake_ctx
        self._wake = self._wake_ctx = None
        if _task_running(loop):  # never run a task inside another one
            loop.call_soon(fn, self, context=ctx)
            return 0
        arg = self
        if self._state == _W_RESULT and _done_future is not False and kn_is_ctask_wakeup(fn, _ctask_type):
            # Speed: a C task's wake-up only asks its argument whether it failed (the task
            # then resumes the coroutine, whose ``await`` takes the result from this waiter);
            # given an exact, finished asyncio.Future it reads that in C, where for any other
            # object it calls ``result()`` by name (~1,300 instructions a message here).
            arg = _done_future if _done_future is not None else _make_done_future()
            if arg is False:
                arg = self
        if ctx is None:
            fn(arg)
        else:
            ctx.run(fn, arg)
        return 0

    def __await__(self):
        """Suspend until done, then return the result (or raise)."""
        return self

    def __iter__(self):
        return self

    def __next__(self):
        if self._state == _W_PENDING:
            self._asyncio_future_blocking = True
            return self
        raise StopIteration(self.result())

    def send(self, value):
        """Generator protocol: the same as ``next()`` (the value sent is ignored, as by a future)."""
        return self.__next__()


cdef extern from *:
    """
    static int kn_set_am_send(void *type, void *fn) {
    #if PY_VERSION_HEX >= 0x030A0000
        PyTypeObject *t = (PyTypeObject *)type;
        if (t->tp_as_async == NULL) return 0;
        t->tp_as_async->am_send = (sendfunc)fn;
        PyType_Modified(t);
        return 1;
    #else
        (void)type; (void)fn;
        return 0;
    #endif
    }
    """
    int kn_set_am_send(void *type, void *fn)


cdef int _waiter_am_send(object self, object arg, PyObject **presult) except -1:
    # Speed: ``await waiter`` as the interpreter's send slot (Python 3.10+), which hands the
    # result back as a return value; ``__next__`` must raise StopIteration(result) instead (an
    # exception object and a traceback entry per message). Same outcomes as ``__next__``.
    cdef Waiter w = <Waiter>self
    if w._state == _W_PENDING:
        w._asyncio_future_blocking = True
        Py_INCREF(self)
        presult[0] = <PyObject *>self
        return 1  # PYGEN_NEXT: suspend, yielding the waiter to the task
    value = w._value if w._state == _W_RESULT else w.result()  # result() raises the others
    Py_INCREF(value)
    presult[0] = <PyObject *>value
    return 0  # PYGEN_RETURN


kn_set_am_send(<void *>Waiter, <void *>_waiter_am_send)


# ---------------------------------------------------------------- send_many (see _pure.send_many)

cdef extern from *:
    """
    #include <errno.h>
    #ifdef _WIN32
    static Py_ssize_t kn_send_nb(long long fd, const char *buf, Py_ssize_t n) { (void)fd; (void)buf; (void)n; return -ENOSYS; }
    #else
    #include <sys/socket.h>
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    #ifndef MSG_DONTWAIT
    #define MSG_DONTWAIT 0
    #endif
    static Py_ssize_t kn_send_nb(long long fd, const char *buf, Py_ssize_t n) {
        ssize_t r;
        do {
            r = send((int)fd, buf, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -(Py_ssize_t)errno : (Py_ssize_t)r;
    }
    #endif
    """
    Py_ssize_t kn_send_nb(long long fd, const char *buf, Py_ssize_t n) nogil


cdef extern from *:
    """
    #ifdef _WIN32
    static Py_ssize_t kn_send2_nb(long long fd, const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) { (void)fd; (void)a; (void)na; (void)b; (void)nb; return -ENOSYS; }
    #else
    #include <sys/uio.h>
    /* One sendmsg(2) of two buffers in turn, never waiting (the results of kn_send_nb). */
    static Py_ssize_t kn_send2_nb(long long fd, const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) {
        struct iovec iov[2];
        struct msghdr msg;
        ssize_t r;
        iov[0].iov_base = (void *)a; iov[0].iov_len = (size_t)na;
        iov[1].iov_base = (void *)b; iov[1].iov_len = (size_t)nb;
        memset(&msg, 0, sizeof msg);
        msg.msg_iov = iov;
        msg.msg_iovlen = 2;
        do {
            r = sendmsg((int)fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
        } while (r < 0 && errno == EINTR);
        return r < 0 ? -(Py_ssize_t)errno : (Py_ssize_t)r;
    }
    #endif
    """
    Py_ssize_t kn_send2_nb(long long fd, const char *a, Py_ssize_t na, const char *b, Py_ssize_t nb) nogil
    int EAGAIN
    int EWOULDBLOCK


cdef enum:
    _WM_STACK = 2048         # write_message frames up to this size are built on the C stack
    _WM_SPLIT = 65536        # unmasked payloads from this size go out after their header (no copy)
    _SEND_YIELD_EVERY = 128  # send() yields to the event loop after this many sends without suspending (see _pure)
    _FAIR_FRAMES = 128  # a read that brought more frames reads no more this loop iteration (see _pure)
    _DEFLATE_YIELD_UNIT = 4096  # a deflated send counts once more towards the yield per this many (see _pure)


cdef inline int _message_bytes(object message, const unsigned char **src, Py_ssize_t *n) except -1:
    """A whole message's opcode (1 text, 2 binary) and UTF-8 / byte content, without a copy
    (a str's UTF-8 form is cached in it); 0 for anything but exact str and bytes."""
    if PyUnicode_CheckExact(message):
        src[0] = <const unsigned char *>PyUnicode_AsUTF8AndSize(message, n)
        return 1
    if PyBytes_CheckExact(message):
        src[0] = <const unsigned char *>PyBytes_AS_STRING(message)
        n[0] = PyBytes_GET_SIZE(message)
        return 2
    return 0


cdef list _split_rest(const unsigned char *hdr, Py_ssize_t sent, object message, int op,
                      const unsigned char *src, Py_ssize_t n):
    """What is left of a 10-byte header + payload frame once ``sent`` bytes went: the rest
    of the header, then the payload (a bytes message's own bytes, never copied whole)."""
    if sent < 10:
        return [PyBytes_FromStringAndSize(<const char *>hdr + sent, 10 - sent),
                message if PyBytes_CheckExact(message) else PyBytes_FromStringAndSize(<const char *>src, n)]
    if PyBytes_CheckExact(message):
        return [memoryview(message)[sent - 10:]]
    return [PyBytes_FromStringAndSize(<const char *>src + (sent - 10), n - (sent - 10))]


cdef list _send_whole(int fd, int op, object message, const unsigned char *src, Py_ssize_t n,
                      const unsigned char *key, bint release, int *err):
    """Frame one whole message (opcode ``op``, 1 or 2, plus 0x40 for RSV1, of ``message``'s ``n`` bytes at ``src``;
    masked with ``key`` unless NULL) and, when ``fd`` >= 0, write what that non-blocking socket
    takes now (the GIL released with ``release``, and for any large frame). A frame up to _WM_STACK bytes is built on the C stack; an
    unmasked payload from _WM_SPLIT on goes after its header without being copied.

    Returns None when all of it went, else the bytes-like objects left to write, in order; a
    failure other than would-block leaves its errno in ``err`` (and the whole frame left).
    """
    cdef unsigned char stack[_WM_STACK]
    cdef unsigned char *out
    cdef Py_ssize_t hlen, total, sent = 0
    err[0] = 0
    if key == NULL and n >= _WM_SPLIT:
        _write_header(stack, 0x80 | op, n, NULL)
        if fd >= 0:
            with nogil:  # a large frame: the copy into the kernel takes a while
                sent = kn_send2_nb(fd, <const char *>stack, 10, <const char *>src, n)
            if sent == 10 + n:
                return None
            if sent < 0:
                if sent != -EAGAIN and sent != -EWOULDBLOCK:
                    err[0] = <int>-sent
                sent = 0
        return _split_rest(stack, sent, message, op, src, n)
    hlen = (2 if n < 126 else 4 if n < 65536 else 10) + (4 if key != NULL else 0)
    total = hlen + n
    if fd >= 0 and total <= _WM_STACK:
        # Speed: a small frame needs no bytes object unless the kernel leaves some of it.
        frame = None
        out = stack
        _write_header(out, 0x80 | op, n, key)
        if key != NULL:
            _xor_copy(out + hlen, src, n, key, 0)
        else:
            memcpy(out + hlen, src, n)
    else:
        frame = _build_raw(0x80 | op, src, n, key)
        out = <unsigned char *>PyBytes_AS_STRING(frame)
    if fd >= 0:
        if release or total >= _NOGIL_BYTES:
            with nogil:
                sent = kn_send_nb(fd, <const char *>out, total)
        else:
            sent = kn_send_nb(fd, <const char *>out, total)
        if sent == total:
            return None
        if sent < 0:
            if sent != -EAGAIN and sent != -EWOULDBLOCK:
                err[0] = <int>-sent
            sent = 0
    if frame is None:
        return [PyBytes_FromStringAndSize(<const char *>out + sent, total - sent)]
    if sent == 0:
        return [frame]
    return [memoryview(frame)[sent:]]


def write_message(sock, message, bint masked):
    """Frame the whole str or bytes ``message`` (masked with a fresh key from ``next_mask``'s
    pool when ``masked``) and write what the plain non-blocking socket ``sock`` takes now,
    without waiting; the GIL is released meanwhile.

    An unmasked payload of 64 KiB or more is written after its header in the same call,
    without being copied.

    Returns:
        None when all of the frame went; otherwise the list of bytes-like objects left to
        write, in order.

    Raises:
        TypeError: ``message`` is not exactly str or bytes.
        OSError: as ``socket.send`` does, except for would-block (nothing written then).
    """
    cdef int fd = _fileno(sock)
    cdef const unsigned char *src = NULL
    cdef Py_ssize_t n = 0
    cdef unsigned char key[4]
    cdef int err
    cdef int op = _message_bytes(message, &src, &n)
    if op == 0:
        raise TypeError(f"message must be str or bytes, not {type(message).__name__}")
    if masked:
        _take_mask(key)
    rest = _send_whole(fd, op, message, src, n, key if masked else NULL, True, &err)
    if err:
        _raise_errno(err)
    return rest


cdef list _foreign_frames(list frames):
    """Frames from a parser other than ours (the pure twin's): ``_arrived`` reads them as
    4-tuples without checks, so anything else is refused here, where they come in."""
    for frame in frames:
        if type(frame) is not tuple or len(<tuple>frame) != 4:
            raise TypeError("a parser's frames are 4-tuples")
    return frames


cdef object _fd_index(object fd):
    """A descriptor for send_many: ValueError when negative, OverflowError beyond a long long."""
    fd = PyNumber_Index(fd)
    if fd < 0:
        raise ValueError("file descriptor cannot be a negative integer")
    if fd >= 2**63:
        raise OverflowError("Python int too large to convert to C long")
    return fd


def send_many(fds, data):
    """Write ``data`` once to each non-blocking socket in ``fds`` (one pass, the GIL released).

    Returns, per descriptor, the number of bytes the kernel took or ``-errno`` (never raises
    for a socket error: the caller hands what is left to the socket's owner). A descriptor
    that is not a socket gives ``-ENOTSOCK``.
    """
    cdef Py_buffer view
    cdef Py_ssize_t i, count
    cdef long long *cfds = NULL
    cdef Py_ssize_t *out = NULL
    _get_view(data, &view)
    try:
        # (converted first, by iteration and with the errors of the pure twin: an ``__index__``
        # may change ``fds``)
        indices = [_fd_index(fd) for fd in fds]
        count = len(indices)
        if count == 0:
            return []
        cfds = <long long *>PyMem_Malloc(count * sizeof(long long))
        out = <Py_ssize_t *>PyMem_Malloc(count * sizeof(Py_ssize_t))
        if cfds == NULL or out == NULL:
            raise MemoryError()
        for i in range(count):
            cfds[i] = indices[i]
        with nogil:
            for i in range(count):
                out[i] = kn_send_nb(cfds[i], <const char *>view.buf, view.len)
        return [out[i] for i in range(count)]
    finally:
        PyBuffer_Release(&view)
        PyMem_Free(cfds)
        PyMem_Free(out)


# ---------------------------------------------------------------- AsyncCore (see _pure.AsyncCore)

cdef object _STATE_CLOSED = None


cdef object _closed_state():
    """``State.CLOSED`` (imported on first use: the protocol module imports this one)."""
    global _STATE_CLOSED
    if _STATE_CLOSED is None:
        from .protocol import State
        _STATE_CLOSED = State.CLOSED
    return _STATE_CLOSED


def _timeout_waiter(waiter):
    """recv(timeout=)'s timer: fail the waiter with TimeoutError unless it is done."""
    if not waiter.done():
        waiter.set_exception(TimeoutError("no message received in time"))


cdef class AsyncCore:
    """The receive path of an asyncio connection: ``get_buffer`` and ``buffer_updated``.

    See ``kn_sock._pure.AsyncCore``: the same attributes and behaviour, as C calls for the
    event loop (two per read).
    """

    cdef public object _parser
    cdef public object _waiter
    cdef public object _messages
    cdef public object protocol
    cdef public object _hs_buf
    cdef public object _handshake
    cdef public object _open
    cdef public object transport
    cdef public object _cork
    cdef public long long _fd
    cdef public object _on_message
    cdef public bint _tx_idle
    cdef public int _unyielded  # sends done without suspending since the task last did (see _pure)
    cdef public object _loop
    cdef public object _closed_fut
    cdef public bint _paused_reading
    cdef public bint _write_paused
    cdef object _cproto     # the protocol _cdeflate / _cmasks were read from
    cdef bint _cdeflate
    cdef object _cmasks

    def get_buffer(self, Py_ssize_t sizehint):
        """Where the loop writes the next bytes: the parser's buffer once open."""
        parser = self._parser
        if parser is not None:
            if type(parser) is FrameParser:
                if self._fd >= 0:
                    # Speed: a plain socket's transport only needs a writable buffer with a
                    # length (recv_into / uv_read): the region itself, no memoryview around it.
                    return (<FrameParser>parser)._get_region(sizehint)
                return PyMemoryView_FromObject((<FrameParser>parser)._get_region(sizehint))
            return parser.get_buffer(sizehint)
        if self._hs_buf is None:
            # Not zero-filled (bytearray(n) would be): only the bytes a read stores are used.
            # A memoryview, not the bytearray: a transport may fill it piecewise through
            # slices (asyncio's TLS reads more records into buf[offset:]), and a slice of a
            # bytearray is a copy, where a slice of a view writes through.
            self._hs_buf = PyMemoryView_FromObject(PyByteArray_FromStringAndSize(NULL, 16384))
        return self._hs_buf

    def buffer_updated(self, Py_ssize_t nbytes):
        """Parse what arrived and dispatch it."""
        cdef list frames
        parser = self._parser
        if parser is None:
            data = bytes(self._hs_buf[:nbytes])
            if self._handshake is not None:
                self._handshake.data_received(self, data)
            return
        if type(parser) is FrameParser:
            frames = (<FrameParser>parser)._buffer_updated(nbytes)
            error = (<FrameParser>parser).error
            if (<FrameParser>parser).last_frames > _FAIR_FRAMES:
                self._yield_reading()
        else:
            frames = _foreign_frames(parser.buffer_updated(nbytes))
            error = parser.error
            if parser.last_frames > _FAIR_FRAMES:
                self._yield_reading()
        self._arrived(frames, error)

    def _on_readable(self):
        """The event loop's read callback for a plain socket once the connection is open (the
        connection registers it in place of the transport's): read, parse and dispatch in one
        call; the end of the stream and errors go to the transport as its own read would."""
        cdef list frames
        parser = self._parser
        transport = self.transport
        if transport is None or parser is None or self._fd < 0:
            return
        try:
            if type(parser) is FrameParser:
                # (MSG_DONTWAIT: never wait in the event loop's thread, nor poll first.)
                frames = (<FrameParser>parser)._recv_frames(<int>self._fd, _MSG_DONTWAIT)
                error = (<FrameParser>parser).error
            else:  # the pure twin's parser
                nbytes = _os.readv(self._fd, [parser.get_buffer(-1)])
                frames = _foreign_frames(parser.buffer_updated(nbytes)) if nbytes else None
                error = parser.error
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            transport._fatal_error(exc, "Fatal read error on socket transport")
            return
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")
            return
        if frames is None:
            transport._read_ready__on_eof()
            return
        try:
            self._arrived(frames, error)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            transport._fatal_error(exc, "Fatal error: protocol.buffer_updated() call failed.")

    cdef int _arrived(self, list frames, object error) except -1:
        """buffer_updated's dispatch of the frames one read completed."""
        cdef tuple frame
        cdef Waiter waiter
        if frames:
            if len(frames) == 1 and error is None:
                frame = <tuple>frames[0]  # (4-tuples: ours, or checked by _foreign_frames)
                opcode = frame[0]
                if frame[1] and (opcode == 2 or opcode == 1) and not self._messages and self.protocol.state is self._open:
                    message = frame[3]
                    if frame[2]:  # compressed (see _pure)
                        proto = self.protocol
                        if not proto.can_take_compressed():
                            self._dispatch(proto.receive_frames(frames))
                            return 0
                        message = proto.receive_compressed(opcode, message)
                        if type(message) is list:  # it failed the connection: the events
                            self._dispatch(message)
                            return 0
                    callback = self._on_message
                    if callback is not None:
                        try:
                            callback(message)
                        except (KeyboardInterrupt, SystemExit):
                            raise
                        except BaseException as exc:  # CancelledError too (see _pure's _feed_callback)
                            self._callback_failed(exc)
                        return 0
                    w = self._waiter
                    if type(w) is Waiter and (<Waiter>w)._state == _W_PENDING:
                        waiter = <Waiter>w
                        self._waiter = None
                        waiter._complete(_W_RESULT, message)
                        waiter._wake_now()
                        return 0
                    if frame[2]:
                        self._dispatch([message])
                        return 0
            if error is None:
                self._dispatch(self.protocol.receive_frames(frames))
            else:  # the frames before the error reach the application first (see _pure)
                self._dispatch_then_fail(frames)
        elif error is not None:
            self._dispatch(self.protocol.receive_frames(frames))
        return 0

    # ------------------------------------------------------------ the coroutine API's hot calls

    def send(self, message, compress=None):
        """Send a message: str → text, bytes-like → binary, (async) iterable → fragmented.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            TypeError: a message of another type.
        """
        # Speed: a coroutine-like object (see _Send), not a coroutine: the same behaviour.
        cdef _Send op = _Send.__new__(_Send)
        op._core = self
        op._message = message
        op._compress = compress
        return op

    def recv(self, timeout=None):
        """Return the next message (str or bytes), or None once the connection is closed.

        Raises:
            TimeoutError: no message within ``timeout`` seconds (the connection stays usable).
            InvalidState: another coroutine is already waiting in ``recv``, or messages go to
                an ``on_message`` callback.
            ValueError / TypeError: ``timeout`` is NaN / not a number.
        """
        if timeout is not None:
            return self._recv_timeout(timeout)
        cdef _Recv op = _Recv.__new__(_Recv)  # speed: see _Recv
        op._core = self
        return op

    async def _recv_timeout(self, timeout):
        """recv() with a timeout."""
        timeout = _checked_timeout(timeout)  # (first: a bad one raises, a message queued or not)
        msg = self._take_queued()
        if msg is not None:
            return msg
        waiter = self._new_waiter()
        if waiter is None:
            return None
        handle = self._loop.call_later(timeout, _timeout_waiter, waiter) if timeout is not None else None
        try:
            return await waiter
        except BaseException:  # cancelled (or closed): a message handed over must not be lost
            self._recv_cancelled(<Waiter>waiter)
            raise
        finally:
            if handle is not None:
                handle.cancel()
            if self._waiter is waiter:
                self._waiter = None

    def __aiter__(self):
        """``async for message in ws`` yields messages until the connection closes."""
        return self

    def __anext__(self):
        """The next message; StopAsyncIteration once the connection is closed."""
        cdef _Recv op = _Recv.__new__(_Recv)  # speed: see _Recv
        op._core = self
        op._stop = True
        return op

    cdef object _take_queued(self):
        """The oldest queued message (reading resumes once the queue has drained), or None."""
        messages = self._messages
        if not messages:
            return None
        msg = messages.popleft()
        if self._paused_reading:
            self._maybe_resume()
        return msg

    cdef object _new_waiter(self):
        """recv() found nothing queued: the waiter to await, or None once the connection is closed."""
        cdef Waiter waiter
        proto = self.protocol
        if self._closed_fut.done() or proto is None or proto.state is _closed_state():
            return None
        w = self._waiter
        if w is not None and not w.done() and not _abandoned(w):
            raise InvalidState("recv() is already being awaited by another task")
        if self._on_message is not None:
            raise InvalidState("messages go to the on_message callback, not to recv()")
        _load_asyncio()
        waiter = Waiter.__new__(Waiter)
        waiter._loop = self._loop
        self._waiter = waiter
        self._unyielded = 0  # the task suspends here
        return waiter

    cdef int _recv_cancelled(self, Waiter waiter) except -1:
        """recv() cancelled: a message handed over just before must not be lost."""
        if waiter._state == _W_RESULT and waiter._value is not None:
            if self._messages is None:
                self._messages = _deque()
            self._messages.appendleft(waiter._value)
        return 0

    def _send_now(self, message):
        """Write a whole str/bytes message at once if nothing stands in the way (see _pure)."""
        return self._try_send(message) == 1

    def send_nowait(self, message, compress=None):
        """Send one whole message (str or bytes-like) now, without waiting for the peer to read.

        For ``on_message`` callbacks, which cannot await: the frame goes to the socket or, what
        the kernel does not take, to the transport's buffer. While an ``on_message`` callback
        is set, reading pauses whenever that buffer passes ``write_limit``, so answering from
        the callback stays bounded; code sending in a loop outside it should ``await drain()``.

        Raises:
            ConnectionClosed: the connection is closing or closed.
            InvalidState: not open yet, or another task is sending a fragmented message.
            TypeError: not a str or bytes-like object.
        """
        if compress is None and self._try_send(message) == 1:
            return
        self._send_nowait_slow(message, compress)

    def _twrite(self, data):
        """``transport.write(data)``: every write to the transport goes here (see _pure)."""
        self._tx_idle = False
        self.transport.write(data)

    cdef int _try_send(self, object message) except -1:
        cdef const unsigned char *src = NULL
        cdef Py_ssize_t n = 0
        cdef int op
        if not (PyUnicode_CheckExact(message) or PyBytes_CheckExact(message)) or self._cork is not None or self._messages:
            return 0
        proto = self.protocol
        transport = self.transport
        if proto is None or transport is None:
            return 0
        if proto is not self._cproto:  # what never changes after the handshake, read once
            self._cproto = proto
            self._cdeflate = proto.deflate is not None
            self._cmasks = proto._masks
        if proto.state is not self._open or proto._send_frag_open or transport.is_closing():
            return 0  # (closing: lost; send()'s general path lets the loop report it, as _pure)
        if self._cdeflate:
            return self._try_send_deflated(proto, transport, message)
        # (Encoded once the connection is known to be open: a str that cannot be encoded
        # fails as the general path fails, ConnectionClosed first.)
        op = _message_bytes(message, &src, &n)
        return self._write_whole(transport, op, message, src, n)

    cdef int _try_send_deflated(self, object proto, object transport, object message) except -1:
        """``_try_send`` with permessage-deflate negotiated: the message as ``Protocol.send``
        frames it (``compress_message``: RSV1 and deflated, or as it is when incompressible),
        written as ``_try_send`` writes."""
        cdef const unsigned char *src = NULL
        cdef Py_ssize_t n = 0
        cdef int op
        if PyUnicode_CheckExact(message):
            data = (<str>message).encode("utf-8")
            op = 1
        else:
            data = message
            op = 2
        payload = proto.deflate.compress_message(data)
        if payload is None:  # incompressible: sent as it is
            payload = data
        else:
            op |= 0x40
        if not PyBytes_CheckExact(payload):
            payload = bytes(payload)
        src = <const unsigned char *>PyBytes_AS_STRING(payload)
        n = PyBytes_GET_SIZE(payload)
        return self._write_whole(transport, op, payload, src, n)

    cdef int _write_whole(self, object transport, int op, object message, const unsigned char *src, Py_ssize_t n) except -1:
        """Write one whole message's frame (see ``_send_whole``): straight to the socket when
        nothing waits in the transport, the rest through it. Returns 1."""
        cdef unsigned char key[4]
        cdef int err
        masks = self._cmasks
        if masks is not None:
            if masks is next_mask:
                _take_mask(key)
            else:
                _mask_key(masks(), key)
        # Straight to the socket when the transport holds nothing that must go first (checked
        # once after any write through the transport, which only _twrite makes); what the
        # kernel does not take, or all of it otherwise, goes through the transport.
        direct = self._fd >= 0 and (self._tx_idle or not transport.get_write_buffer_size())
        # (The event loop's thread: the GIL is released only for a large frame.)
        rest = _send_whole(<int>self._fd if direct else -1, op, message, src, n,
                           key if masks is not None else NULL, False, &err)
        if rest is None:
            self._tx_idle = True
            return 1
        self._tx_idle = False  # a failed write (err) is the transport's to find out
        if err:
            # The connection is lost: the transport learns it from the write below and
            # reports it to the protocol through the loop, so this send() yields to it.
            self._unyielded = _SEND_YIELD_EVERY
        for part in rest:
            transport.write(part)
        return 1

cdef extern from "Python.h":
    int PyIter_Send(object iter, object arg, PyObject **presult)


cdef bint _abandoned(object w):
    """A pending recv() waiter nobody waits on (no task registered a wake-up: a recv() stepped
    by hand and dropped, not closed): the next recv() may take its place."""
    return type(w) is Waiter and (<Waiter>w)._wake is None and not (<Waiter>w)._callbacks


cdef extern from "Python.h":
    int PY_VERSION_HEX


cdef int _raise_thrown(object typ, object val, bint started) except -1:
    """Raise what ``throw(typ[, val])`` was given, as a coroutine would let it out: from its
    frame, a StopIteration becomes RuntimeError (PEP 479); thrown into one not started yet,
    it comes out as it is from Python 3.12 on (the frame never runs)."""
    if val is None:
        exc = typ() if isinstance(typ, type) else typ
    elif isinstance(val, BaseException):
        exc = val
    else:
        exc = typ(val)
    if not isinstance(exc, BaseException):
        raise TypeError("exceptions must be classes or instances deriving from BaseException")
    if isinstance(exc, StopIteration) and (started or PY_VERSION_HEX < 0x030C0000):
        raise RuntimeError("coroutine raised StopIteration") from exc
    raise exc


cdef void _never_awaited(str name) noexcept:
    """What a coroutine dropped before its first step says (``__dealloc__``: errors are reported)."""
    if _warnings is None:  # interpreter shutdown
        return
    # (noexcept: warnings turned into errors are reported as unraisable, never raised here)
    _warnings.warn(f"coroutine 'AsyncCore.{name}' was never awaited", RuntimeWarning, 2)


cdef int _check_first_send(int state, object value) except -1:
    """``send(value)`` on a coroutine not started yet takes only None."""
    if state == 0 and value is not None:
        raise TypeError("can't send non-None value to a just-started coroutine")
    return 0


# Speed: ``send()`` and ``recv()`` return these instead of coroutines. They behave as the
# coroutines of the pure twin do (nothing happens until the first step; ``await``, tasks,
# ``send`` / ``throw`` / ``close``; collections.abc.Coroutine by their methods) without a
# coroutine object, its frame and its closure per message (~1,500 instructions a call here).

@cython.final
@cython.freelist(8)
cdef class _Send:
    """The awaitable ``AsyncCore.send()`` returns: the message goes out at the first step."""

    cdef AsyncCore _core
    cdef object _message
    cdef object _compress
    cdef object _inner  # the general path's coroutine, once delegated to
    cdef int _state  # 0: not started, 1: delegating to _inner, 2: finished
    cdef bint _running  # inside _inner (a message's iterator may step us again: refused)

    cdef int _step(self, object arg, PyObject **presult) except -1:
        cdef int r
        if self._state == 0:
            self._state = 2
            core = self._core
            if core is None:
                raise RuntimeError("not made by AsyncCore.send()")
            self._core = None  # a finished send keeps no connection alive
            message = self._message
            self._message = None
            if self._compress is None and core._try_send(message) == 1:  # a whole message, now
                if core._cdeflate:  # deflating is the costly part: it weighs towards the yield (see _pure)
                    core._unyielded += <int>(len(message) // _DEFLATE_YIELD_UNIT)
                if not core._write_paused:
                    core._unyielded += 1
                    if core._unyielded < _SEND_YIELD_EVERY:
                        Py_INCREF(None)
                        presult[0] = <PyObject *>None
                        return 0
                    self._inner = core._yield_to_loop()
                else:
                    self._inner = core._drain()
            else:
                self._inner = core._send_slow(message, self._compress)
            self._state = 1
            arg = None
        if self._state == 1:
            if self._running:
                raise ValueError("coroutine already executing")
            self._running = True
            r = PyIter_Send(self._inner, arg, presult)  # -1: failed, with the exception set
            self._running = False
            if r != 1:
                self._state = 2
                self._inner = None
            return r
        raise RuntimeError("cannot reuse already awaited coroutine")

    @property
    def __qualname__(self):
        # Task reprs and debug-mode warnings name the awaitable by this (a coroutine has it).
        return "AsyncCore.send"

    @property
    def __name__(self):
        return "send"

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return _step_result(self, None)

    def send(self, value):
        """Coroutine protocol: run to the next suspension; StopIteration once finished."""
        _check_first_send(self._state, value)
        return _step_result(self, value)

    def throw(self, typ, val=None, tb=None):
        """Coroutine protocol: raise ``typ`` (or ``val``) at the suspension point."""
        if self._running:
            raise ValueError("coroutine already executing")
        if self._state == 1:
            inner = self._inner
            self._running = True
            try:
                return inner.throw(typ) if val is None and tb is None else inner.throw(typ, val, tb)
            except BaseException:
                self._state = 2
                self._inner = None
                raise
            finally:
                self._running = False
        if self._state == 2:
            raise RuntimeError("cannot reuse already awaited coroutine")
        self._state = 2  # not started: it never will be
        self._message = self._core = None
        _raise_thrown(typ, val, False)

    def close(self):
        """Coroutine protocol: abandon the send."""
        if self._running:
            raise ValueError("coroutine already executing")
        inner = self._inner
        self._state = 2
        self._message = self._inner = self._core = None
        if inner is not None:
            inner.close()

    def __dealloc__(self):
        if self._state == 0 and self._core is not None:
            _never_awaited("send")


@cython.final
@cython.freelist(8)
cdef class _Recv:
    """The awaitable ``AsyncCore.recv()`` (and ``__anext__``) return: the next message."""

    cdef AsyncCore _core
    cdef Waiter _w
    cdef bint _stop  # __anext__: the end (None) is StopAsyncIteration
    cdef int _state  # 0: not started, 1: waiting on _w, 2: finished

    cdef int _step(self, object arg, PyObject **presult) except -1:
        cdef Waiter w
        if self._state == 0:
            self._state = 2
            core = self._core
            if core is None:
                raise RuntimeError("not made by AsyncCore.recv()")
            value = core._take_queued()
            if value is None:
                waiter = core._new_waiter()
                if waiter is not None:
                    w = <Waiter>waiter
                    self._w = w
                    self._state = 1
                    w._asyncio_future_blocking = True
                    Py_INCREF(w)
                    presult[0] = <PyObject *>w
                    return 1
        elif self._state == 1:
            w = self._w
            if w._state == _W_PENDING:  # stepped before the waiter is done: suspend again
                w._asyncio_future_blocking = True
                Py_INCREF(w)
                presult[0] = <PyObject *>w
                return 1
            self._state = 2
            self._w = None
            core = self._core
            if core._waiter is w:
                core._waiter = None
            value = w._value if w._state == _W_RESULT else w.result()  # result() raises the others
        else:
            raise RuntimeError("cannot reuse already awaited coroutine")
        self._core = None  # finished: keeps no connection alive
        if value is None and self._stop:
            raise StopAsyncIteration
        Py_INCREF(value)
        presult[0] = <PyObject *>value
        return 0

    cdef int _abandon(self) except -1:
        """Thrown into, closed or dropped: a message already handed over goes back to the
        queue, and the connection's next message no longer comes here."""
        w = self._w
        core = self._core
        self._state = 2
        self._w = None
        self._core = None
        if w is not None and core is not None:
            if core._waiter is w:
                core._waiter = None
            core._recv_cancelled(w)
        return 0

    def __dealloc__(self):
        # Dropped while waiting (stepped by hand, never finished: a coroutine would be
        # closed here): as close().
        if self._w is not None:
            self._abandon()
        elif self._state == 0 and self._core is not None:
            _never_awaited("__anext__" if self._stop else "recv")

    @property
    def __qualname__(self):
        return "AsyncCore.__anext__" if self._stop else "AsyncCore.recv"

    @property
    def __name__(self):
        return "__anext__" if self._stop else "recv"

    def __await__(self):
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return _step_result(self, None)

    def send(self, value):
        """Coroutine protocol: run to the next suspension; StopIteration once finished."""
        _check_first_send(self._state, value)
        return _step_result(self, value)

    def throw(self, typ, val=None, tb=None):
        """Coroutine protocol: raise ``typ`` (or ``val``) at the suspension point."""
        state = self._state
        if state == 2:
            raise RuntimeError("cannot reuse already awaited coroutine")
        self._abandon()
        _raise_thrown(typ, val, state == 1)

    def close(self):
        """Coroutine protocol: abandon the receive (a message handed over is kept)."""
        self._abandon()


cdef object _step_result(object op, object arg):
    """``send()`` / ``__next__`` of _Send and _Recv: the yielded value, or StopIteration."""
    cdef PyObject *result = NULL
    cdef int r
    if type(op) is _Send:
        r = (<_Send>op)._step(arg, &result)
    else:
        r = (<_Recv>op)._step(arg, &result)
    value = <object>result
    Py_DECREF(value)  # <object> took a new reference: drop the one _step handed over
    if r == 1:
        return value
    if value is None:
        raise StopIteration
    raise StopIteration(value)


cdef int _send_am_send(object self, object arg, PyObject **presult) except -1:
    return (<_Send>self)._step(arg, presult)


cdef int _recv_am_send(object self, object arg, PyObject **presult) except -1:
    return (<_Recv>self)._step(arg, presult)


kn_set_am_send(<void *>_Send, <void *>_send_am_send)
kn_set_am_send(<void *>_Recv, <void *>_recv_am_send)


def _spares():
    """Private test hook: how many receive buffers wait for reuse."""
    return _n_spare
