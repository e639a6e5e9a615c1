# The map of kn_sock._speedups: every C-level state field and internal routine, in one place.
#
# _speedups.pyx is the compiled twin of _pure.py (the specification: names, semantics,
# exception types and messages). Python sees only what _pure.py exports; this file is what
# the C code sees.

from libc.stdint cimport uint64_t


cdef class Utf8Validator:
    cdef unsigned char _pending[4]   # an incomplete code point carried over between feeds
    cdef int _npending
    cdef bint _valid                 # sticky False once the bytes so far cannot begin valid UTF-8

    cdef bint _feed(self, const unsigned char *s, Py_ssize_t n, bint final) noexcept


cdef class _WritableRegion:
    # The exporter behind get_buffer()'s memoryview: keeps ``owner`` (the bytes object the
    # region lies in) alive for as long as the view lives, so a stale view can never point
    # at freed memory.
    cdef object owner
    cdef char *ptr
    cdef Py_ssize_t size
    cdef bint recycle                # owner is a receive buffer (not a payload): recycle it


cdef class FrameParser:
    # Public attributes (the same names as the pure twin's).
    cdef public bint expect_mask
    cdef public bint rsv1_allowed
    cdef public bint decode_text
    cdef public bint early_compressed_text
    cdef public object error
    # Frames the last feed / buffer_updated / recv_from call parsed (merged ones included):
    # the I/O layers' measure of the work one read brought (fairness).
    cdef readonly Py_ssize_t last_frames
    # max_size / compressed_max_size: the Python objects (for the getters and for the 1009
    # message) and their C values, refreshed by the setters.
    cdef object _max_size
    cdef object _compressed_max_size
    cdef bint _has_max
    cdef bint _has_cmax
    cdef long long _max
    cdef long long _cmax

    # Receive buffer: a bytes object we own (never resized: it is replaced when it must grow,
    # so memoryviews handed out by get_buffer stay valid), live data in [_start, _end).
    cdef object _buf
    cdef unsigned char *_bp
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _start
    cdef Py_ssize_t _end

    # Fragmentation state (RFC 6455 §5.4).
    cdef int _frag_opcode
    cdef bint _frag_compressed
    cdef uint64_t _msg_size

    # Zero-copy mode for one large payload: the final bytes object, filled in place.
    cdef object _payload
    cdef unsigned char *_pp
    cdef Py_ssize_t _pl_len
    cdef Py_ssize_t _pl_filled
    cdef Py_ssize_t _pl_hdr
    cdef int _pl_opcode
    cdef bint _pl_fin
    cdef bint _pl_rsv1
    cdef bint _pl_masked
    cdef unsigned char _pl_key[4]

    # recv_from: the payload size it expects next (from _LAND_MIN on, when the last two data
    # frames had it; 0: no guess), the last data frame's size, and where the header of a
    # frame received in place lands.
    cdef Py_ssize_t _predict
    cdef Py_ssize_t _last_len
    cdef unsigned char _hbuf[16]

    # Early UTF-8 check of the incomplete text frame we hold (reset by _emit): the payload
    # bytes validated so far and the code point they ended in (see _check_text).
    cdef Py_ssize_t _tv_done
    cdef unsigned char _tv_pending[4]
    cdef int _tv_npending
    # The uncompressed fragmented text message in progress (with decode_text): validated
    # frame by frame, and mid-frame like a first frame; _mv_pending holds the code point its
    # last complete frame ended in.
    cdef bint _mv_active
    # early_compressed_text: the payload bytes of the incomplete compressed text frame we
    # hold already handed out as an OP_EARLY frame (reset by _emit).
    cdef Py_ssize_t _cz_done
    # The run of continuation frames the current call merges into one (see _emit): the
    # position after the frame it goes into (0: none), and its payload so far (once it has
    # two frames).
    cdef Py_ssize_t _co_at
    cdef object _co_run
    cdef unsigned char _mv_pending[4]
    cdef int _mv_npending

    # What the last get_buffer() handed out: 0 nothing, 1 the receive buffer's tail,
    # 2 the large payload's unfilled part; _view_len bytes may be reported by buffer_updated.
    cdef int _view_kind
    cdef Py_ssize_t _view_len

    cdef int _set_limit(self, object value, bint compressed) except -1
    cdef int _fail(self, object exc) except -1
    cdef int _reserve(self, Py_ssize_t extra) except -1
    cdef list _updated(self, Py_ssize_t nbytes)
    cdef _WritableRegion _get_region(self, Py_ssize_t sizehint)
    cdef list _buffer_updated(self, Py_ssize_t nbytes)
    cdef list _recv_idle(self, int fd)
    cdef list _end_read(self, list frames)
    cdef list _recv_landing(self, int fd, int flags, object payload)
    cdef list _recv_frames(self, int fd, int flags)
    cdef int _offer_tail(self, Py_ssize_t sizehint) except -1
    cdef int _append(self, const unsigned char *data, Py_ssize_t n) except -1
    cdef void _drop_buffer(self) noexcept
    cdef int _check_header(self, int b0, int b1) except -1
    cdef int _check_size(self, int opcode, bint rsv1, uint64_t length) except -1
    cdef Py_ssize_t _parse(self, unsigned char *data, Py_ssize_t n, bint writable,
                           list frames) except -2
    cdef int _emit(self, list frames, int opcode, bint fin, bint rsv1, uint64_t length,
                   object payload) except -1
    cdef bint _start_payload(self, const unsigned char *p, Py_ssize_t avail, Py_ssize_t hdr,
                             uint64_t length, list frames, object payload=*) except -1
    cdef int _fill_payload(self, const unsigned char *data, Py_ssize_t n, bint copy,
                           list frames) except -1
    cdef Py_ssize_t _head_need(self) noexcept
    cdef int _consume(self, const unsigned char *data, Py_ssize_t n, list frames) except -1
    cdef int _parse_buffer(self, list frames) except -1
    cdef int _check_partial(self, list frames) except -1
    cdef int _co_end(self, list frames, bint fin) except -1
    cdef int _early_compressed(self, list frames) except -1
    cdef int _check_text(self) except -1
    cdef void _load_message_state(self) noexcept
    cdef int _text_fragment(self, bint fin, object payload) except -1
