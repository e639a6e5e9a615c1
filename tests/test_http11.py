"""RFC 6455 §4 handshake messages on the wire (RFC 7230 HTTP/1.1 syntax) and §9.1 extensions."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn_sock.exceptions import InvalidHandshake, InvalidHeader
from kn_sock.http11 import (
    MAX_BODY,
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    Headers,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    accept_key,
    build_extension,
    build_request,
    build_response,
    generate_key,
    parse_extensions,
    parse_subprotocols,
    parse_token_list,
)

REQUEST = (
    b"GET /chat?room=1 HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n"
    b"\r\n"
)
FRAME = b"\x81\x05hello"


def parse_request(data: bytes) -> Request:
    """Parse a complete request in one call."""
    request = RequestParser().feed(data)
    assert request is not None
    return request


def request_error(data: bytes) -> InvalidHandshake:
    """Return the error a request parser raises on ``data``."""
    with pytest.raises(InvalidHandshake) as info:
        RequestParser().feed(data)
    return info.value


def request_with(*lines: bytes) -> bytes:
    """A GET request head with these header lines."""
    return b"GET / HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


class TestHeaders:
    """Case-insensitive, multi-valued, order-preserving, mapping-like."""

    def test_case_insensitive_first_value(self) -> None:
        headers = Headers([("Sec-WebSocket-Protocol", "a"), ("sec-websocket-protocol", "b")])
        assert headers["SEC-WEBSOCKET-PROTOCOL"] == "a"
        assert headers.get_all("Sec-WebSocket-Protocol") == ["a", "b"]
        assert "sec-websocket-protocol" in headers and 1 not in headers
        assert headers.get("missing") is None and headers.get("missing", "d") == "d"
        assert headers.get_all("missing") == []
        with pytest.raises(KeyError):
            headers["missing"]

    def test_items_keep_order_and_case_iteration_is_distinct_names(self) -> None:
        headers = Headers([("B", "1"), ("a", "2"), ("b", "3")])
        assert headers.items() == [("B", "1"), ("a", "2"), ("b", "3")]
        assert list(headers) == ["B", "a"] and len(headers) == 2
        assert dict(headers) == {"B": "1", "a": "2"}

    def test_add_set_and_delete(self) -> None:
        headers = Headers({"X": "1"})
        headers.add("x", "2")
        assert headers.get_all("X") == ["1", "2"]
        headers["X"] = "3"
        assert headers.items() == [("X", "3")]
        del headers["x"]
        assert len(headers) == 0 and headers.items() == []
        with pytest.raises(KeyError):
            del headers["x"]

    def test_constructors_and_equality(self) -> None:
        headers = Headers({"A": "1", "B": "2"})
        assert Headers(headers) == headers == {"a": "1", "b": "2"}
        assert Headers([("A", "1"), ("B", "2")]) == headers
        assert Headers() == Headers(None) == {}
        assert headers != Headers({"A": "1"}) and headers != {"A": "x", "B": "2"}
        copy = headers.copy()
        copy.add("C", "3")
        assert "C" not in headers
        assert repr(Headers({"A": "1"})) == "Headers([('A', '1')])"

    @pytest.mark.parametrize(
        "name, value",
        [("X", "a\r\nInjected: 1"), ("X", "a\nb"), ("X", "\x00"), ("X Y", "1"), ("", "1")],
    )
    def test_header_injection_is_refused(self, name: str, value: str) -> None:
        with pytest.raises(ValueError):
            Headers([(name, value)])

    def test_values_iso_8859_1_cannot_encode_are_refused_when_given(self) -> None:
        """Not in every handshake later (audit 87: a server made with such a header dropped
        every connection)."""
        assert Headers({"X": "café ÿ"})["X"] == "café ÿ"
        with pytest.raises(ValueError, match="X-Greeting"):
            Headers({"X-Greeting": "café ☃"})
        from kn_sock import WebSocketServer

        with pytest.raises(ValueError):
            WebSocketServer("127.0.0.1", 0, lambda ws, address: None, headers={"X-Greeting": "☃"})

    def test_non_str_is_refused(self) -> None:
        with pytest.raises(TypeError):
            Headers({"X": 1})  # type: ignore[dict-item]


class TestSection1_3AcceptKey:
    """§1.3 / §4.2.2: Sec-WebSocket-Accept = base64(SHA-1(key + GUID))."""

    def test_rfc_example(self) -> None:
        assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

    def test_generated_keys_are_16_random_bytes(self) -> None:
        keys = {generate_key() for _ in range(10)}
        assert len(keys) == 10
        assert all(len(base64.b64decode(key, validate=True)) == 16 for key in keys)


class TestSection4_1RequestParsing:
    """§4.1 / §4.2.1: the server reads "a valid HTTP request as specified by RFC 2616"."""

    def test_rfc_example_request(self) -> None:
        request = parse_request(REQUEST)
        assert (request.method, request.path) == ("GET", "/chat?room=1")
        assert request.headers["host"] == "server.example.com"
        assert request.headers["Sec-WebSocket-Protocol"] == "chat, superchat"

    def test_fed_one_byte_at_a_time(self) -> None:
        parser = RequestParser()
        data = REQUEST + FRAME
        results = [parser.feed(data[i : i + 1]) for i in range(len(REQUEST))]
        assert results[:-1] == [None] * (len(REQUEST) - 1)
        assert results[-1] == parse_request(REQUEST)
        assert parser.remainder == b""
        assert parser.feed(data[len(REQUEST) :]) == results[-1]
        assert parser.remainder == FRAME

    def test_remainder_preserved(self) -> None:
        parser = RequestParser()
        assert parser.feed(REQUEST + FRAME + FRAME) is not None
        assert parser.remainder == FRAME + FRAME

    def test_empty_lines_before_request_line_are_ignored(self) -> None:
        assert parse_request(b"\r\n\r\n" + REQUEST).path == "/chat?room=1"

    def test_ows_around_values_is_stripped(self) -> None:
        request = parse_request(request_with(b"X: \t a b \t", b"Y:", b"Z:  "))
        assert request.headers.items() == [("X", "a b"), ("Y", ""), ("Z", "")]

    def test_obs_text_is_decoded_as_latin_1(self) -> None:
        assert parse_request(request_with(b"X: caf\xe9")).headers["X"] == "caf\u00e9"

    def test_other_methods_are_parsed_for_the_handshake_to_answer_405(self) -> None:
        assert parse_request(REQUEST.replace(b"GET", b"POST", 1)).method == "POST"

    @pytest.mark.parametrize(
        ("line", "method", "target"),
        [(b"OPTIONS * HTTP/1.1", "OPTIONS", "*"), (b"CONNECT 127.0.0.1:80 HTTP/1.1", "CONNECT", "127.0.0.1:80")],
    )
    def test_asterisk_and_authority_forms_are_parsed_for_a_405(self, line: bytes, method: str, target: str) -> None:
        """RFC 9112 §3.2.3-4: valid requests, so not 400; the handshake answers 405 (audit)."""
        request = parse_request(line + b"\r\nHost: h\r\n\r\n")
        assert (request.method, request.path) == (method, target)

    @pytest.mark.parametrize(
        ("target", "path"),
        [
            (b"http://h/chat?x=1", "/chat?x=1"),
            (b"HTTP://h:8080", "/"),
            (b"ws://[::1]:9/a/b", "/a/b"),
            (b"wss://user@h?q", "/?q"),
        ],
    )
    def test_absolute_form_target_stands_for_its_path(self, target: bytes, path: str) -> None:
        """RFC 9112 §3.2.2: a server must accept the absolute-form (a client talking to a proxy)."""
        assert parse_request(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").path == path

    def test_later_http_1_minor_version_is_accepted(self) -> None:
        assert parse_request(b"GET / HTTP/1.2\r\nHost: h\r\n\r\n").path == "/"

    @pytest.mark.parametrize(
        "data",
        [
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET / HTTP/1.1 \r\n\r\n",
            b"GET  / HTTP/1.1\r\n\r\n",
            b"GET ftp://h/ HTTP/1.1\r\n\r\n",
            b"GET http:/h/ HTTP/1.1\r\n\r\n",
            b"GET http:// HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /\r\n\r\n",
            b"GET * HTTP/1.1\r\n\r\n",
            b"CONNECT h HTTP/1.1\r\n\r\n",
            b"GET /chat#frag HTTP/1.1\r\n\r\n",  # no fragment in a request target (RFC 6455 §3)
            b"GET http://h/chat#frag HTTP/1.1\r\n\r\n",
            b"GET http://h#frag HTTP/1.1\r\n\r\n",  # right after the authority too (audit)
            b"GET ws://h:80#x HTTP/1.1\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
        ],
    )
    def test_bad_request_line_is_400(self, data: bytes) -> None:
        assert request_error(data).status == 400

    @pytest.mark.parametrize(
        "line",
        [b"Host : h", b"Host", b": x", b"X: a\x00b", b"X: a\x7fb", b"Bad Name: x"],
    )
    def test_bad_header_line_is_400(self, line: bytes) -> None:
        exc = request_error(request_with(b"Host: h", line))
        assert isinstance(exc, InvalidHeader) and exc.status == 400

    def test_obsolete_line_folding_is_400(self) -> None:
        exc = request_error(request_with(b"X: a", b" b"))
        assert exc.status == 400 and "folding" in str(exc)

    def test_bare_lf_is_400_as_soon_as_seen(self) -> None:
        with pytest.raises(InvalidHandshake, match="CRLF") as info:
            RequestParser().feed(b"GET / HTTP/1.1\nHost")
        assert info.value.status == 400
        assert request_error(request_with(b"X: a\rb")).status == 400

    def test_header_line_over_8_kib_is_431(self) -> None:
        exc = request_error(request_with(b"X: " + b"a" * 9 * 1024))
        assert isinstance(exc, InvalidHeader) and exc.status == 431

    def test_long_line_is_refused_before_it_ends(self) -> None:
        parser = RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nX: ")
        with pytest.raises(InvalidHeader) as info:
            for _ in range(100):
                parser.feed(b"a" * 1024)
        assert info.value.status == 431

    def test_line_of_exactly_8_kib_is_accepted(self) -> None:
        line = b"X: " + b"a" * (MAX_LINE - 3)
        assert len(parse_request(request_with(line)).headers["X"]) == MAX_LINE - 3

    def test_request_line_over_8_kib_is_414(self) -> None:
        """RFC 9112 §3: a request-target too long to parse gets 414 URI Too Long."""
        assert request_error(b"GET /" + b"a" * MAX_LINE + b" HTTP/1.1\r\n\r\n").status == 414
        assert request_error(b"GET /" + b"a" * MAX_LINE).status == 414  # not even finished

    def test_129_headers_is_431(self) -> None:
        lines = [b"X-%d: v" % i for i in range(MAX_HEADERS + 1)]
        exc = request_error(request_with(*lines))
        assert isinstance(exc, InvalidHeader) and exc.status == 431

    def test_128_headers_is_accepted(self) -> None:
        lines = [b"X-%d: v" % i for i in range(MAX_HEADERS)]
        assert len(parse_request(request_with(*lines)).headers) == MAX_HEADERS

    def test_largest_head_the_line_and_field_limits_allow_is_accepted(self) -> None:
        """SPEC.md "Bad input" sets 8 KiB a line and 128 fields, no total: 128 fields of
        8 KiB each (1 MiB) are accepted (a 64 KiB total refused heads within the limits)."""
        lines = [b"X-%03d: " % i + b"v" * (MAX_LINE - 7) for i in range(MAX_HEADERS)]
        assert all(len(line) == MAX_LINE for line in lines)
        request = parse_request(request_with(*lines))
        assert len(request.headers) == MAX_HEADERS

    def test_many_empty_lines_are_bounded(self) -> None:
        assert request_error(b"\r\n" * (MAX_HEAD // 2 + 1)).status == 431

    def test_errors_are_sticky(self) -> None:
        parser = RequestParser()
        with pytest.raises(InvalidHandshake) as first:
            parser.feed(b"NOT HTTP\r\n")
        with pytest.raises(InvalidHandshake) as second:
            parser.feed(REQUEST)
        assert second.value is first.value


class TestSection4_1ResponseParsing:
    """§4.1: the client reads the server's status line and headers."""

    def test_101_with_frames_after_it(self) -> None:
        parser = ResponseParser()
        response = parser.feed(RESPONSE + FRAME)
        assert response == Response(101, "Switching Protocols", Headers(response.headers), b"")
        assert response.headers["Sec-WebSocket-Accept"] == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert parser.remainder == FRAME

    def test_fed_one_byte_at_a_time(self) -> None:
        parser = ResponseParser()
        data = RESPONSE + FRAME
        results = [parser.feed(data[i : i + 1]) for i in range(len(data))]
        assert results[: len(RESPONSE) - 1] == [None] * (len(RESPONSE) - 1)
        assert results[len(RESPONSE) - 1] is not None
        assert parser.remainder == FRAME

    def test_error_body_waits_for_content_length(self) -> None:
        parser = ResponseParser()
        head = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 10\r\n\r\n"
        assert parser.feed(head + b"forbi") is None
        response = parser.feed(b"dden!extra")
        assert response is not None
        assert (response.status, response.reason) == (403, "Forbidden")
        assert response.body == b"forbidden!"
        assert parser.remainder == b"extra"

    def test_error_body_without_content_length_is_what_arrived(self) -> None:
        response = ResponseParser().feed(b"HTTP/1.1 500 Oops\r\n\r\nsome text")
        assert response is not None and response.body == b"some text"

    def test_error_body_is_bounded(self) -> None:
        parser = ResponseParser()
        head = b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % (10 * MAX_BODY)
        assert parser.feed(head) is None
        response = parser.feed(b"x" * (MAX_BODY + 5))
        assert response is not None and len(response.body) == MAX_BODY

    def test_no_body_for_204(self) -> None:
        parser = ResponseParser()
        response = parser.feed(b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\nabc")
        assert response is not None and response.body == b"" and parser.remainder == b"abc"

    def test_empty_or_missing_reason(self) -> None:
        for line in (b"HTTP/1.1 101 ", b"HTTP/1.1 101"):
            response = ResponseParser().feed(line + b"\r\n\r\n")
            assert response is not None and (response.status, response.reason) == (101, "")

    def test_http_1_0_error_answer_is_tolerated_but_not_101(self) -> None:
        response = ResponseParser().feed(b"HTTP/1.0 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        assert response is not None and response.status == 403
        with pytest.raises(InvalidHandshake, match="HTTP/1.0"):
            ResponseParser().feed(b"HTTP/1.0 101 Switching Protocols\r\n\r\n")

    @pytest.mark.parametrize(
        "data",
        [
            b"HTTP/1.1 1011 x\r\n\r\n",
            b"HTTP/1.1 099 x\r\n\r\n",
            b"HTTP/2 101 x\r\n\r\n",
            b"ICY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ],
    )
    def test_malformed_response(self, data: bytes) -> None:
        with pytest.raises(InvalidHandshake):
            ResponseParser().feed(data)

    def test_431_limits_apply(self) -> None:
        head = b"HTTP/1.1 101 x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129))
        with pytest.raises(InvalidHeader) as info:
            ResponseParser().feed(head + b"\r\n")
        assert info.value.status == 431


class TestBuilders:
    """Serialisation, checked by round-tripping through the parsers."""

    def test_build_request_round_trip(self) -> None:
        headers = Headers([("Host", "h"), ("X", "1"), ("x", "2")])
        data = build_request("GET", "/a?b", headers)
        assert data == b"GET /a?b HTTP/1.1\r\nHost: h\r\nX: 1\r\nx: 2\r\n\r\n"
        assert parse_request(data) == Request("GET", "/a?b", headers)

    @pytest.mark.parametrize("method, path", [("G T", "/"), ("GET", "/a b"), ("GET", "/\r\n")])
    def test_build_request_refuses_injection(self, method: str, path: str) -> None:
        with pytest.raises(ValueError):
            build_request(method, path, Headers())

    def test_build_request_refuses_non_latin_1_values(self) -> None:
        with pytest.raises(ValueError, match="ISO-8859-1"):
            build_request("GET", "/", Headers({"X": "\u20ac"}))

    def test_build_response_adds_content_length_and_reason(self) -> None:
        data = build_response(403, Headers({"X": "y"}), b"nope")
        assert data == b"HTTP/1.1 403 Forbidden\r\nX: y\r\nContent-Length: 4\r\n\r\nnope"
        response = ResponseParser().feed(data)
        assert response is not None and response.body == b"nope"

    def test_build_101_has_no_content_length(self) -> None:
        data = build_response(101, Headers({"Upgrade": "websocket"}))
        assert data == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"

    def test_build_response_custom_reason_and_unknown_status(self) -> None:
        assert build_response(200, Headers(), reason="Fine").startswith(b"HTTP/1.1 200 Fine\r\n")
        assert build_response(299, Headers()).startswith(b"HTTP/1.1 299 \r\n")

    def test_build_response_leaves_headers_untouched(self) -> None:
        headers = Headers()
        build_response(200, headers, b"x")
        assert headers == {}

    @pytest.mark.parametrize("status", [99, 600, True, "200"])
    def test_build_response_refuses_bad_status(self, status: object) -> None:
        with pytest.raises(ValueError):
            build_response(status, Headers())  # type: ignore[arg-type]


class TestSection4_2_1HeaderLists:
    """§4.2.1 items 3-4 (Upgrade, Connection) and items 9-10 (extensions, subprotocols)."""

    def test_token_lists(self) -> None:
        assert parse_token_list(["keep-alive, Upgrade", ", ,UPGRADE"]) == [
            "keep-alive",
            "upgrade",
            "upgrade",
        ]
        assert parse_token_list(["WebSocket/13"]) == ["websocket/13"]
        assert parse_token_list([]) == []

    @pytest.mark.parametrize("value", ["a b", "a;b", "a/", "/b", '"a"'])
    def test_bad_token_list_is_400(self, value: str) -> None:
        with pytest.raises(InvalidHeader) as info:
            parse_token_list([value])
        assert info.value.status == 400

    def test_subprotocols_keep_case(self) -> None:
        assert parse_subprotocols(["chat, SuperChat", "v2"]) == ["chat", "SuperChat", "v2"]
        with pytest.raises(InvalidHeader):
            parse_subprotocols(["a b"])

    def test_section_9_1_extension_grammar(self) -> None:
        values = [
            "permessage-deflate; client_max_window_bits; server_max_window_bits=10",
            ' permessage-deflate ;client_max_window_bits = "15" , x-foo,, bar;a="b"',
        ]
        assert parse_extensions(values) == [
            (
                "permessage-deflate",
                [("client_max_window_bits", None), ("server_max_window_bits", "10")],
            ),
            ("permessage-deflate", [("client_max_window_bits", "15")]),
            ("x-foo", []),
            ("bar", [("a", "b")]),
        ]

    def test_quoted_string_escapes(self) -> None:
        assert parse_extensions(['x; a="1\\0"']) == [("x", [("a", "10")])]

    @pytest.mark.parametrize(
        "value",
        [
            "x;",
            "x; =1",
            "x; a=",
            "x; a=1 2",
            'x; a="1 2"',
            'x; a="unterminated',
            "x y",
            ";a",
            "x; a=b=c",
            'x; a="\\"',
        ],
    )
    def test_bad_extension_syntax_is_400(self, value: str) -> None:
        with pytest.raises(InvalidHeader) as info:
            parse_extensions([value])
        assert info.value.status == 400

    @pytest.mark.parametrize("values", [[""], [","], [" , ", ""]])
    def test_a_header_with_no_element_is_400(self, values: list[str]) -> None:
        # Both are 1# lists (RFC 6455 §9.1, §11.3.4): "", "," are invalid (RFC 9110 §5.6.1.2).
        for parse in (parse_extensions, parse_subprotocols):
            with pytest.raises(InvalidHeader, match="empty") as info:
                parse(values)
            assert info.value.status == 400
        # An empty line beside a real element is only an empty list element.
        assert parse_extensions([*values, "x"]) == [("x", [])]
        assert parse_subprotocols([*values, "chat"]) == ["chat"]
        assert parse_extensions([]) == [] and parse_subprotocols([]) == []

    def test_build_extension_round_trip(self) -> None:
        params = [("client_max_window_bits", None), ("server_max_window_bits", "12")]
        value = build_extension("permessage-deflate", params)
        assert value == "permessage-deflate; client_max_window_bits; server_max_window_bits=12"
        assert parse_extensions([value]) == [("permessage-deflate", params)]
        with pytest.raises(ValueError):
            build_extension("x", [("a", "1 2")])


# Fuzzing: arbitrary input must only ever raise InvalidHandshake (incl. subclasses).

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_in_chunks(parser: RequestParser | ResponseParser, data: bytes, cuts: list[int]) -> None:
    """Feed ``data`` split at ``cuts``; only InvalidHandshake may escape."""
    bounds = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    try:
        for start, end in zip(bounds, bounds[1:]):
            parser.feed(data[start:end])
    except InvalidHandshake:
        pass


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few random byte replacements, insertions and deletions."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.sampled_from(b"\x00\t\n\r \",:;=\x7f\xff") | st.integers(0, 255))
        if kind == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if kind == "replace":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


CUTS = st.lists(st.integers(0, 10_000), max_size=8)


@FUZZ
@given(st.binary(max_size=512), CUTS)
def test_fuzz_request_parser_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    feed_in_chunks(RequestParser(), data, cuts)


@FUZZ
@given(st.binary(max_size=512), CUTS)
def test_fuzz_response_parser_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    feed_in_chunks(ResponseParser(), data, cuts)


@FUZZ
@given(mutated(REQUEST + FRAME), CUTS)
def test_fuzz_request_parser_mutations(data: bytes, cuts: list[int]) -> None:
    feed_in_chunks(RequestParser(), data, cuts)


@FUZZ
@given(mutated(RESPONSE + FRAME) | mutated(b"HTTP/1.1 403 No\r\nContent-Length: 3\r\n\r\nab"), CUTS)
def test_fuzz_response_parser_mutations(data: bytes, cuts: list[int]) -> None:
    feed_in_chunks(ResponseParser(), data, cuts)


@FUZZ
@given(st.lists(st.text(max_size=40), max_size=3))
def test_fuzz_header_value_parsers(values: list[str]) -> None:
    for parse in (parse_extensions, parse_token_list, parse_subprotocols):
        try:
            parse(values)
        except InvalidHandshake:
            pass


def _outcome(parser: RequestParser | ResponseParser, pieces: list[bytes]) -> object:
    """What feeding ``pieces`` gives: the parsed head and remainder, or the error raised."""
    try:
        result = None
        for piece in pieces:
            result = parser.feed(piece)
    except InvalidHandshake as exc:
        return (type(exc), exc.status, str(exc))
    if result is None:
        return None
    return (vars(result) | {"headers": result.headers.items()}, parser.remainder)


@FUZZ
@given(mutated(REQUEST + FRAME) | mutated(b"\r\n" + REQUEST) | st.binary(max_size=300))
def test_whole_head_and_byte_by_byte_agree(data: bytes) -> None:
    # A head that arrives in one piece is split at once; one fed byte by byte goes line by
    # line: same requests, same remainders, same errors in the same order.
    whole = _outcome(RequestParser(), [data])
    assert whole == _outcome(RequestParser(), [data[i : i + 1] for i in range(len(data))])
    response = data.replace(b"GET /chat HTTP/1.1", b"HTTP/1.1 101 Switching Protocols", 1)
    whole = _outcome(ResponseParser(), [response])
    assert whole == _outcome(ResponseParser(), [response[i : i + 1] for i in range(len(response))])


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 128 + b"\r\n",
        b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 129 + b"\r\n",
        b"GET / HTTP/1.1\r\nBad Name: 1\r\n" + b"X: 1\r\n" * 129 + b"\r\n",
        b"GET / HTTP/1.1\r\nA: " + b"a" * 8192 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: " + b"a" * 8193 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: 1\rB: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: 1\nB: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA : 1\r\n\r\n",
        b"GET / HTTP/1.0\r\nA: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"A: " + b"a" * 8000 + b"\r\n" * 1 + (b"B: " + b"b" * 8000 + b"\r\n") * 8 + b"\r\n",
        b"\r\n\r\nGET / HTTP/1.1\r\nA: 1\r\n\r\nrest",
    ],
    ids=[
        "128-headers",
        "129-headers",
        "bad-line-before-129th",
        "8-KiB-line",
        "8-KiB+1-line",
        "bare-CR",
        "bare-LF",
        "folding",
        "space-before-colon",
        "HTTP/1.0",
        "head-over-64-KiB",
        "empty-lines-first",
    ],
)
def test_whole_head_limits_match_line_by_line(head: bytes) -> None:
    whole = _outcome(RequestParser(), [head])
    assert whole == _outcome(RequestParser(), [head[i : i + 1] for i in range(len(head))])
    assert whole == _outcome(RequestParser(), [head[:-1], head[-1:]])
