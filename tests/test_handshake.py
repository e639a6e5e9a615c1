"""RFC 6455 §4 opening handshake, client (§4.1) and server (§4.2), sans-I/O.

permessage-deflate negotiation goes through the factories of
``kn_sock.extensions.permessage_deflate``; these tests swap in small fakes with the same
interface so that they check the handshake's own logic only.
"""

from __future__ import annotations

import base64
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kn_sock import handshake
from kn_sock.exceptions import InvalidHandshake, InvalidHeader, InvalidStatus
from kn_sock.handshake import ClientHandshake, ServerHandshake, redirect_target
from kn_sock.http11 import (
    Headers,
    Request,
    RequestParser,
    ResponseParser,
    accept_key,
    build_request,
    build_response,
)
from kn_sock.uri import parse_uri

FRAME = b"\x81\x05hello"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
DEFLATE_PARAMS = {
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
}


class FakeDeflate:
    """Stands in for PerMessageDeflate."""

    name = "permessage-deflate"

    def __init__(self, params: list[tuple[str, str | None]]) -> None:
        self.params = params


class FakeClientFactory:
    """Same interface as ClientDeflateFactory."""

    def __init__(self, **opts: Any) -> None:
        self.opts = opts

    def offer(self) -> list[tuple[str, str | None]]:
        return [("client_max_window_bits", None)]

    def accept_response(self, params: list[tuple[str, str | None]]) -> FakeDeflate:
        for name, _ in params:
            if name not in DEFLATE_PARAMS:
                raise InvalidHandshake(f"unexpected parameter {name}")
        return FakeDeflate(params)


class FakeServerFactory:
    """Same interface as ServerDeflateFactory; declines offers with server_max_window_bits=8."""

    def __init__(self, **opts: Any) -> None:
        self.opts = opts

    def accept_offer(
        self, params: list[tuple[str, str | None]]
    ) -> tuple[list[tuple[str, str | None]], FakeDeflate] | None:
        if ("server_max_window_bits", "8") in params:
            return None
        response = [("client_max_window_bits", "15")] if params else []
        return response, FakeDeflate(params)


@pytest.fixture(autouse=True)
def fake_deflate(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(handshake, "ClientDeflateFactory", FakeClientFactory)
    monkeypatch.setattr(handshake, "ServerDeflateFactory", FakeServerFactory)
    yield


def client(uri: str = "ws://example.com/chat", **kwargs: Any) -> ClientHandshake:
    return ClientHandshake(parse_uri(uri), **kwargs)


def upgrade_request(**changes: str | None) -> Request:
    """A valid upgrade request; ``changes`` replace (or, with None, remove) headers."""
    headers = Headers(
        [
            ("Host", "example.com"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", KEY),
            ("Sec-WebSocket-Version", "13"),
        ]
    )
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return Request("GET", "/chat", headers)


def rejected(server: ServerHandshake, request: Request) -> InvalidHandshake:
    with pytest.raises(InvalidHandshake) as info:
        server.accept(request)
    return info.value


def response_to(hs: ClientHandshake, *, status: int = 101, **changes: str | None) -> bytes:
    """A valid response to ``hs``'s request, with header ``changes`` (None removes)."""
    headers = Headers(
        [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", accept_key(hs.key)),
        ]
    )
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    return build_response(status, headers)


def client_error(hs: ClientHandshake, data: bytes) -> InvalidHandshake:
    with pytest.raises(InvalidHandshake) as info:
        hs.receive_data(data)
    return info.value


def parse(data: bytes) -> Request:
    request = RequestParser().feed(data)
    assert request is not None
    return request


class TestSection4_1ClientRequest:
    """§4.1: the client's opening handshake."""

    def test_required_headers(self) -> None:
        hs = client("ws://example.com:8765/chat?x=1")
        request = parse(hs.data_to_send())
        assert (request.method, request.path) == ("GET", "/chat?x=1")
        headers = request.headers
        assert headers["Host"] == "example.com:8765"
        assert headers["Upgrade"] == "websocket"
        assert headers["Connection"] == "Upgrade"
        assert headers["Sec-WebSocket-Version"] == "13"
        assert headers["Sec-WebSocket-Key"] == hs.key
        assert len(base64.b64decode(hs.key, validate=True)) == 16
        assert headers["User-Agent"].startswith("kn_sock/")
        assert request == hs.request

    def test_default_port_host_header_and_ipv6(self) -> None:
        assert client("wss://example.com/").request.headers["Host"] == "example.com"
        assert client("ws://[::1]:9/").request.headers["Host"] == "[::1]:9"

    def test_keys_are_fresh(self) -> None:
        assert client().key != client().key

    def test_offers_deflate_and_subprotocols(self) -> None:
        headers = client(subprotocols=["chat", "superchat"]).request.headers
        assert headers["Sec-WebSocket-Extensions"] == "permessage-deflate; client_max_window_bits"
        assert headers["Sec-WebSocket-Protocol"] == "chat, superchat"

    def test_compression_none_offers_nothing(self) -> None:
        headers = client(compression=None).request.headers
        assert "Sec-WebSocket-Extensions" not in headers
        assert "Sec-WebSocket-Protocol" not in headers

    def test_origin_basic_auth_and_user_agent(self) -> None:
        hs = client("ws://alice:s%40cret@h/", origin="https://h", user_agent="me/1")
        headers = hs.request.headers
        assert headers["Origin"] == "https://h"
        assert headers["Authorization"] == "Basic " + base64.b64encode(b"alice:s@cret").decode()
        assert headers["User-Agent"] == "me/1"
        assert "User-Agent" not in client(user_agent=None).request.headers

    def test_options_empty_user_agent_is_sent_empty(self) -> None:
        """``user_agent=""`` is the value given (websockets' too), not the default (audit 29U)."""
        from kn_sock.options import make_options

        hs = ClientHandshake.from_options(parse_uri("ws://h/"), make_options({"user_agent": ""}))
        assert hs.request.headers.get_all("User-Agent") == [""]
        assert ClientHandshake.from_options(parse_uri("ws://h/"), make_options({})).request.headers["User-Agent"].startswith("kn_sock/")

    def test_extra_headers_one_host(self) -> None:
        """A request has one Host (RFC 9112 §3.2; our server answers two with 400)."""
        assert client(extra_headers={"Host": "other"}).request.headers.get_all("Host") == ["other"]
        with pytest.raises(ValueError, match="Host header given more than once"):
            client(extra_headers=[("Host", "a"), ("host", "b")])

    @pytest.mark.parametrize("headers", [["ab"], ["X-Token: abc"], [("X", "1", "2")], [b"ab"], [None]])
    def test_extra_headers_items_must_be_pairs(self, headers: list[Any]) -> None:
        """A str in the list is not a pair ("ab" unpacked as a: b; audit 29U)."""
        with pytest.raises(TypeError, match="pairs"):
            client(extra_headers=headers)

    def test_extra_headers_add_or_replace_defaults(self) -> None:
        hs = client(extra_headers=[("X-Token", "1"), ("x-token", "2"), ("User-Agent", "custom")])
        headers = hs.request.headers
        assert headers.get_all("X-Token") == ["1", "2"]
        assert headers.get_all("User-Agent") == ["custom"]
        assert client(extra_headers={"Origin": "o"}, origin="p").request.headers["Origin"] == "o"

    @pytest.mark.parametrize("name", ["Sec-WebSocket-Key", "upgrade", "Sec-WebSocket-Protocol"])
    def test_extra_headers_cannot_override_the_handshake(self, name: str) -> None:
        with pytest.raises(ValueError, match="set by the handshake"):
            client(extra_headers={name: "x"})

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"subprotocols": ["a b"]},
            {"subprotocols": ["a,b"]},
            {"compression": "gzip"},
            {"extra_headers": {"X": "a\r\nY: b"}},
        ],
    )
    def test_bad_options_are_refused(self, kwargs: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            client(**kwargs)

    def test_subprotocols_must_be_a_list(self) -> None:
        with pytest.raises(TypeError):
            client(subprotocols="chat")  # type: ignore[arg-type]


class TestSection4_1ClientValidatesResponse:
    """§4.1: "the client MUST validate the server's response as follows"."""

    def test_valid_response(self) -> None:
        hs = client(subprotocols=["chat"])
        data = response_to(
            hs,
            Sec_WebSocket_Protocol="chat",
            Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits=15",
        )
        response = hs.receive_data(data + FRAME)
        assert response is not None and response.status == 101
        assert hs.response is response
        assert hs.subprotocol == "chat"
        assert [ext.name for ext in hs.extensions] == ["permessage-deflate"]
        assert hs.extensions[0].params == [("client_max_window_bits", "15")]
        assert hs.remainder == FRAME

    def test_fed_one_byte_at_a_time(self) -> None:
        hs = client()
        data = response_to(hs) + FRAME
        results = [hs.receive_data(data[i : i + 1]) for i in range(len(data))]
        assert sum(result is None for result in results) == len(data) - len(FRAME) - 1
        assert hs.remainder == FRAME
        assert hs.subprotocol is None and hs.extensions == []

    def test_item_1_non_101_status_raises_invalid_status(self) -> None:
        hs = client()
        data = build_response(403, Headers({"X-Why": "nope"}), b"go away")
        exc = client_error(hs, data)
        assert isinstance(exc, InvalidStatus)
        assert (exc.status, exc.headers["X-Why"], exc.body) == (403, "nope", b"go away")
        assert str(exc) == "server rejected WebSocket connection: HTTP 403"
        assert hs.response is not None and hs.response.status == 403

    def test_item_1_the_whole_answer_as_websockets_names_it(self) -> None:
        exc = client_error(client(), build_response(503, Headers({"Retry-After": "1"}), b"busy"))
        assert isinstance(exc, InvalidStatus) and exc.status_code == 503
        response = exc.response
        assert (response.status_code, response.reason_phrase, response.body) == (503, "Service Unavailable", b"busy")
        assert response.headers["Retry-After"] == "1"

    def test_interim_responses_before_the_101_are_skipped(self) -> None:
        """RFC 9110 §15.2: a client parses 1xx (interim) responses before the final one."""
        interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        hs = client()
        assert hs.receive_data(interim + response_to(hs) + FRAME) is not None and hs.remainder == FRAME
        assert "Link" not in hs.response.headers
        hs = client()
        data = interim + response_to(hs) + FRAME
        results = [hs.receive_data(data[i : i + 1]) for i in range(len(data))]
        assert results[-len(FRAME) - 1] is not None and hs.remainder == FRAME
        hs = client()
        exc = client_error(hs, b"HTTP/1.1 100 Continue\r\n\r\n" * 9 + response_to(hs))
        assert "interim" in str(exc)

    def test_item_1_waits_for_the_error_body(self) -> None:
        hs = client()
        data = build_response(500, Headers(), b"internal error")
        assert hs.receive_data(data[:-3]) is None
        assert client_error(hs, data[-3:]).body == b"internal error"

    @pytest.mark.parametrize("value", [None, "h2c", "websocket, h2c"])
    def test_item_2_upgrade_must_be_websocket(self, value: str | None) -> None:
        hs = client()
        exc = client_error(hs, response_to(hs, Upgrade=value))
        assert isinstance(exc, InvalidHeader) and "Upgrade" in str(exc)

    def test_item_2_upgrade_is_case_insensitive(self) -> None:
        hs = client()
        assert hs.receive_data(response_to(hs, Upgrade="WebSocket")) is not None

    @pytest.mark.parametrize("value", [None, "close", "keep-alive"])
    def test_item_3_connection_must_contain_upgrade(self, value: str | None) -> None:
        hs = client()
        exc = client_error(hs, response_to(hs, Connection=value))
        assert isinstance(exc, InvalidHeader) and "Connection" in str(exc)

    def test_item_3_connection_list_with_upgrade(self) -> None:
        hs = client()
        assert hs.receive_data(response_to(hs, Connection="keep-alive, UPGRADE")) is not None

    @pytest.mark.parametrize("value", [None, ACCEPT, "garbage"])
    def test_item_4_accept_must_match(self, value: str | None) -> None:
        hs = client()
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Accept=value))
        assert isinstance(exc, InvalidHeader) and "Sec-WebSocket-Accept" in str(exc)
        assert exc.status == 101  # client side: the server's answer (docs/api.md)
        assert exc.headers["Upgrade"] == "websocket" and exc.body == b""  # (audit: headers left [])

    def test_item_4_repeated_accept_is_refused(self) -> None:
        hs = client()
        repeated = f"\r\nSec-WebSocket-Accept: {accept_key(hs.key)}\r\n\r\n".encode()
        data = response_to(hs).replace(b"\r\n\r\n", repeated)
        assert isinstance(client_error(hs, data), InvalidHeader)

    def test_item_5_unoffered_extension_is_refused(self) -> None:
        hs = client()
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Extensions="x-custom"))
        assert "did not offer" in str(exc)

    def test_item_5_deflate_when_not_offered_is_refused(self) -> None:
        hs = client(compression=None)
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Extensions="permessage-deflate"))
        assert "did not offer" in str(exc)

    def test_item_5_deflate_twice_is_refused(self) -> None:
        hs = client()
        value = "permessage-deflate, permessage-deflate"
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Extensions=value))
        assert "more than once" in str(exc)

    def test_item_5_bad_parameters_are_refused_by_the_extension(self) -> None:
        hs = client()
        value = "permessage-deflate; bogus=1"
        assert "bogus" in str(client_error(hs, response_to(hs, Sec_WebSocket_Extensions=value)))

    def test_item_5_bad_extension_syntax(self) -> None:
        hs = client()
        value = "permessage-deflate; ="
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Extensions=value))
        assert isinstance(exc, InvalidHeader)

    @pytest.mark.parametrize("name", ["Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"])
    @pytest.mark.parametrize("value", ["", ","])
    def test_item_5_6_a_list_header_with_no_element_is_refused(self, name: str, value: str) -> None:
        hs = client(subprotocols=["chat"])
        exc = client_error(hs, response_to(hs, **{name.replace("-", "_"): value}))
        assert isinstance(exc, InvalidHeader) and "empty" in str(exc)

    def test_item_6_unoffered_subprotocol_is_refused(self) -> None:
        hs = client(subprotocols=["chat"])
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Protocol="superchat"))
        assert isinstance(exc, InvalidHeader) and "did not offer" in str(exc)

    def test_item_6_subprotocol_without_offer_is_refused(self) -> None:
        hs = client()
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Protocol="chat"))
        assert isinstance(exc, InvalidHeader)

    def test_item_6_more_than_one_subprotocol_is_refused(self) -> None:
        hs = client(subprotocols=["a", "b"])
        exc = client_error(hs, response_to(hs, Sec_WebSocket_Protocol="a, b"))
        assert "more than one" in str(exc)

    def test_malformed_response_and_sticky_error(self) -> None:
        hs = client()
        first = client_error(hs, b"HTTP/1.1 101 OK\r\nBad Header\r\n\r\n")
        assert client_error(hs, b"more") is first

    def test_data_after_success_goes_to_remainder(self) -> None:
        hs = client()
        response = hs.receive_data(response_to(hs))
        assert hs.receive_data(FRAME) is response
        assert hs.remainder == FRAME


class TestSection4_2Server:
    """§4.2.1 reading the client's handshake, §4.2.2 sending the server's."""

    def test_full_handshake_with_client(self) -> None:
        hs_client = client(subprotocols=["chat"])
        server = ServerHandshake(subprotocols=["chat"])
        data = hs_client.data_to_send()
        request = None
        for i in range(len(data)):  # byte at a time
            request = server.receive_data(data[i : i + 1])
        assert request is not None and server.request is request
        answer = server.accept(request)
        assert server.subprotocol == "chat"
        assert [ext.name for ext in server.extensions] == ["permessage-deflate"]
        assert server.response_headers is not None
        assert server.response_headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; client_max_window_bits=15"
        )
        assert hs_client.receive_data(answer + FRAME) is not None
        assert (hs_client.subprotocol, hs_client.remainder) == ("chat", FRAME)
        assert [ext.name for ext in hs_client.extensions] == ["permessage-deflate"]

    def test_section_4_2_2_response(self) -> None:
        server = ServerHandshake(extra_headers={"Set-Cookie": "a=b", "Server": "custom"})
        response = ResponseParser().feed(server.accept(upgrade_request()))
        assert response is not None
        assert (response.status, response.reason) == (101, "Switching Protocols")
        assert response.headers["Sec-WebSocket-Accept"] == ACCEPT
        assert response.headers["Upgrade"] == "websocket"
        assert response.headers["Connection"] == "Upgrade"
        assert response.headers["Set-Cookie"] == "a=b"
        assert response.headers.get_all("Server") == ["custom"]
        assert "Content-Length" not in response.headers
        assert "Sec-WebSocket-Protocol" not in response.headers
        bare = ServerHandshake(server_header=None)
        bare.accept(upgrade_request())
        assert bare.response_headers is not None and "Server" not in bare.response_headers

    def test_remainder_preserves_pipelined_frames(self) -> None:
        server = ServerHandshake()
        request = server.receive_data(build_request("GET", "/", upgrade_request().headers) + FRAME)
        assert request is not None and server.remainder == FRAME

    def test_parse_errors_carry_the_status(self) -> None:
        server = ServerHandshake()
        lines = "".join(f"X-{i}: v\r\n" for i in range(129))
        with pytest.raises(InvalidHeader) as info:
            server.receive_data(f"GET / HTTP/1.1\r\n{lines}\r\n".encode())
        assert info.value.status == 431
        answer = server.reject_from(info.value)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        with pytest.raises(InvalidHandshake) as info:
            ServerHandshake().receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 9 * 1024)
        assert info.value.status == 431

    def test_method_other_than_get_is_405(self) -> None:
        request = upgrade_request()
        request.method = "POST"
        exc = rejected(ServerHandshake(), request)
        assert exc.status == 405 and ("Allow", "GET") in Headers(exc.headers).items()

    def test_plain_get_without_upgrade_is_426(self) -> None:
        server = ServerHandshake()
        exc = rejected(server, Request("GET", "/", Headers({"Host": "h"})))
        assert exc.status == 426
        headers = Headers(exc.headers)
        assert (headers["Upgrade"], headers["Sec-WebSocket-Version"]) == ("websocket", "13")
        assert b"WebSocket" in exc.body
        response = ResponseParser().feed(server.reject_from(exc))
        assert response is not None and response.status == 426
        assert response.headers["Upgrade"] == "websocket"
        # RFC 9110 §7.8: Upgrade comes with "upgrade" in Connection; the rejection closes.
        assert response.headers["Connection"] == "Upgrade, close"
        assert response.body == exc.body

    @pytest.mark.parametrize("upgrade", ["h2c", "TLS/1.0", "websocket/13", "foo, bar"])
    def test_upgrade_to_another_protocol_is_400(self, upgrade: str) -> None:
        """An upgrade request, bad for this endpoint: 400 (SPEC.md "Bad input"; RFC 6455
        §4.2.1); 426 is for a plain GET, without Upgrade (audit: this was 426)."""
        exc = rejected(ServerHandshake(), upgrade_request(Upgrade=upgrade))
        assert exc.status == 400 and "unsupported Upgrade" in str(exc)

    @pytest.mark.parametrize("head", [b"OPTIONS * HTTP/1.1", b"CONNECT 127.0.0.1:80 HTTP/1.1"])
    def test_options_asterisk_and_connect_are_405(self, head: bytes) -> None:
        server = ServerHandshake()
        request = server.receive_data(head + b"\r\nHost: h\r\n\r\n")
        assert request is not None and rejected(server, request).status == 405

    @pytest.mark.parametrize("version", ["8", "14", "13, 8", ""])
    def test_section_4_4_other_version_is_426_with_supported_version(self, version: str) -> None:
        exc = rejected(ServerHandshake(), upgrade_request(Sec_WebSocket_Version=version))
        assert exc.status == 426
        assert Headers(exc.headers)["Sec-WebSocket-Version"] == "13"

    @pytest.mark.parametrize(
        "changes",
        [
            {"Connection": None},
            {"Connection": "keep-alive"},
            {"Connection": "a b"},
            {"Sec_WebSocket_Version": None},
            {"Sec_WebSocket_Key": None},
            {"Sec_WebSocket_Key": "not base64!"},
            {"Sec_WebSocket_Key": base64.b64encode(b"x" * 15).decode()},
            {"Sec_WebSocket_Key": base64.b64encode(b"x" * 17).decode()},
            {"Host": None},
            {"Host": ""},
            {"Host": "exa mple"},  # RFC 9112 §3.2: an invalid Host value is a 400
            {"Host": "a, b"},
            {"Host": "@@@/x"},
            {"Host": "h:notaport"},
            {"Host": "[::1"},
            {"Content_Length": "5"},
            {"Transfer_Encoding": "chunked"},
            {"Sec_WebSocket_Protocol": "a b"},
            {"Sec_WebSocket_Extensions": "permessage-deflate;"},
        ],
    )
    def test_other_bad_upgrades_are_400(self, changes: dict[str, str | None]) -> None:
        exc = rejected(ServerHandshake(), upgrade_request(**changes))
        assert isinstance(exc, InvalidHeader) and exc.status == 400

    @pytest.mark.parametrize("host", ["example.com", "h:8080", "h:", "[::1]:9", "[fe80::1%25eth0]", "xn--bcher-kva.example", "127.0.0.1"])
    def test_valid_host_values(self, host: str) -> None:
        ServerHandshake().accept(upgrade_request(Host=host))

    def test_repeated_key_is_400(self) -> None:
        request = upgrade_request()
        request.headers.add("Sec-WebSocket-Key", KEY)
        assert rejected(ServerHandshake(), request).status == 400

    def test_content_length_zero_is_fine(self) -> None:
        ServerHandshake().accept(upgrade_request(Content_Length="0"))

    def test_section_10_2_origin(self) -> None:
        server = ServerHandshake(origins=["https://good.example"])
        server.accept(upgrade_request(Origin="https://good.example"))
        assert rejected(server, upgrade_request(Origin="https://evil.example")).status == 403
        assert rejected(server, upgrade_request()).status == 403
        ServerHandshake(origins=[None]).accept(upgrade_request())
        request = upgrade_request(Origin="https://good.example")
        request.headers.add("Origin", "https://good.example")
        assert rejected(server, request).status == 400

    @pytest.mark.parametrize("name", ["Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol"])
    @pytest.mark.parametrize("value", ["", ",", " , "])
    def test_a_list_header_with_no_element_is_400(self, name: str, value: str) -> None:
        request = upgrade_request()
        request.headers.add(name, value)
        assert rejected(ServerHandshake(subprotocols=["chat"]), request).status == 400

    def test_subprotocol_server_preference_wins(self) -> None:
        server = ServerHandshake(subprotocols=["superchat", "chat"])
        server.accept(upgrade_request(Sec_WebSocket_Protocol="chat, superchat"))
        assert server.subprotocol == "superchat"
        assert server.response_headers is not None
        assert server.response_headers["Sec-WebSocket-Protocol"] == "superchat"

    def test_subprotocol_offers_across_header_lines(self) -> None:
        request = upgrade_request(Sec_WebSocket_Protocol="a")
        request.headers.add("Sec-WebSocket-Protocol", "chat")
        server = ServerHandshake(subprotocols=["chat"])
        server.accept(request)
        assert server.subprotocol == "chat"

    def test_no_common_subprotocol_proceeds_without(self) -> None:
        server = ServerHandshake(subprotocols=["chat"])
        server.accept(upgrade_request(Sec_WebSocket_Protocol="other"))
        assert server.subprotocol is None
        assert server.response_headers is not None
        assert "Sec-WebSocket-Protocol" not in server.response_headers

    def test_client_subprotocols_ignored_when_server_has_none(self) -> None:
        server = ServerHandshake()
        server.accept(upgrade_request(Sec_WebSocket_Protocol="chat"))
        assert server.subprotocol is None

    def test_rfc_7692_first_acceptable_deflate_offer_is_used(self) -> None:
        server = ServerHandshake()
        offers = (
            "x-unknown, permessage-deflate; server_max_window_bits=8,"
            " permessage-deflate; client_max_window_bits"
        )
        server.accept(upgrade_request(Sec_WebSocket_Extensions=offers))
        assert server.extensions[0].params == [("client_max_window_bits", None)]
        assert server.response_headers is not None
        assert server.response_headers.get_all("Sec-WebSocket-Extensions") == [
            "permessage-deflate; client_max_window_bits=15"
        ]

    def test_declined_offers_mean_no_extension(self) -> None:
        server = ServerHandshake()
        offers = "permessage-deflate; server_max_window_bits=8, x-unknown"
        server.accept(upgrade_request(Sec_WebSocket_Extensions=offers))
        assert server.extensions == []
        assert server.response_headers is not None
        assert "Sec-WebSocket-Extensions" not in server.response_headers

    def test_compression_none_declines_deflate(self) -> None:
        server = ServerHandshake(compression=None)
        server.accept(upgrade_request(Sec_WebSocket_Extensions="permessage-deflate"))
        assert server.extensions == []

    def test_reject(self) -> None:
        server = ServerHandshake()
        data = server.reject(403, {"X-Why": "no"}, b"forbidden\n")
        response = ResponseParser().feed(data)
        assert response is not None
        assert (response.status, response.reason) == (403, "Forbidden")
        assert response.body == b"forbidden\n"
        headers = response.headers
        assert headers["Connection"] == "close"
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert headers["Content-Length"] == "10"
        assert headers["X-Why"] == "no"
        assert headers["Server"].startswith("kn_sock/")
        html = server.reject(200, [("Content-Type", "text/html")], b"<p>ok</p>")
        assert b"Content-Type: text/html\r\n" in html and b"text/plain" not in html
        with pytest.raises(ValueError):
            server.reject(101)
        assert server.reject(200, None, "h\u00e9").endswith(b"\r\n\r\nh\xc3\xa9")

    @pytest.mark.parametrize("status", [204, 304])
    def test_reject_without_content_has_no_content_length(self, status: int) -> None:
        """RFC 9110 §8.6: no Content-Length in a 204 (nor in a 304: it would describe a 200)."""
        server = ServerHandshake()
        data = server.reject(status, {"Content-Length": "0", "X-A": "1"})
        assert b"Content-Length" not in data and b"X-A: 1\r\n" in data
        response = ResponseParser().feed(data)
        assert response is not None and response.status == status and response.body == b""

    def test_answer_to_head_has_no_body(self) -> None:
        """RFC 9110 §9.3.2: no content in a response to HEAD (Content-Length still says it)."""
        server = ServerHandshake()
        request = server.receive_data(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert request is not None
        exc = rejected(server, request)
        answer = server.reject_from(exc)
        assert exc.status == 405 and answer.endswith(b"\r\n\r\n")
        assert b"Content-Length: %d\r\n" % len(exc.body) in answer

    def test_reject_from_uses_the_message_when_there_is_no_body(self) -> None:
        answer = ServerHandshake().reject_from(InvalidHandshake("bad", 400))
        response = ResponseParser().feed(answer)
        assert response is not None
        assert response.body == b"Failed to open a WebSocket connection: bad.\n"

    def test_extra_headers_cannot_override_the_handshake(self) -> None:
        with pytest.raises(ValueError):
            ServerHandshake(extra_headers={"Sec-WebSocket-Accept": "x"})

    @pytest.mark.parametrize("name", ["Content-Length", "Transfer-Encoding"])
    def test_extra_headers_cannot_frame_a_body(self, name: str) -> None:
        """A handshake has no body: a proxy told otherwise could desynchronise (audit 87)."""
        with pytest.raises(ValueError, match="frames a body"):
            ServerHandshake(extra_headers={name: "5"})
        with pytest.raises(ValueError, match="frames a body"):
            ClientHandshake(parse_uri("ws://h/"), extra_headers=[(name, "chunked")])

    def test_reject_refuses_an_interim_status_and_transfer_encoding(self) -> None:
        """process_request cannot answer 1xx (the client would wait for the real answer) nor
        claim a chunked body that goes out whole (the server answers 500 instead; audit 87)."""
        server = ServerHandshake()
        for status in (100, 103, 199):
            with pytest.raises(ValueError, match="informational"):
                server.reject(status)
        with pytest.raises(ValueError, match="Transfer-Encoding"):
            server.reject(200, {"Transfer-Encoding": "chunked"}, b"x")



def test_round_trip_with_real_permessage_deflate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integration: the real factories plug into both sides."""
    real = pytest.importorskip("kn_sock.extensions.permessage_deflate")
    monkeypatch.setattr(handshake, "ClientDeflateFactory", real.ClientDeflateFactory)
    monkeypatch.setattr(handshake, "ServerDeflateFactory", real.ServerDeflateFactory)
    hs_client, server = client(), ServerHandshake()
    request = server.receive_data(hs_client.data_to_send())
    assert request is not None
    assert hs_client.receive_data(server.accept(request)) is not None
    assert [ext.name for ext in hs_client.extensions] == ["permessage-deflate"]
    assert [ext.name for ext in server.extensions] == ["permessage-deflate"]


# Fuzzing: whatever the peer sends, both sides raise only InvalidHandshake (and subclasses).


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """``valid`` with a few random byte replacements, insertions and deletions."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete"]))
        byte = draw(st.integers(0, 255))
        if kind == "insert":
            data.insert(pos, byte)
        elif pos < len(data):
            if kind == "replace":
                data[pos] = byte
            else:
                del data[pos]
    return bytes(data)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_REQUEST = build_request(
    "GET",
    "/",
    Headers(
        list(upgrade_request().headers.items())
        + [
            ("Sec-WebSocket-Protocol", "chat"),
            ("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits"),
            ("Origin", "https://o"),
        ]
    ),
)


@FUZZ
@given(mutated(VALID_REQUEST + FRAME) | st.binary(max_size=300))
def test_fuzz_server_handshake(data: bytes) -> None:
    server = ServerHandshake(subprotocols=["chat"], origins=["https://o", None])
    try:
        request = server.receive_data(data)
        if request is not None:
            server.accept(request)
    except InvalidHandshake as exc:
        assert server.reject_from(exc).startswith(b"HTTP/1.1 4")


@FUZZ
@given(st.data())
def test_fuzz_client_handshake(data: st.DataObject) -> None:
    hs = client(subprotocols=["chat"])
    valid = response_to(
        hs,
        Sec_WebSocket_Protocol="chat",
        Sec_WebSocket_Extensions="permessage-deflate; client_max_window_bits=15",
    )
    try:
        hs.receive_data(data.draw(mutated(valid + FRAME) | st.binary(max_size=300)))
    except InvalidHandshake:
        pass


class TestRedirects:
    """RFC 6455 §4.1: a 3xx answer MAY be followed (the clients follow up to MAX_REDIRECTS)."""

    @staticmethod
    def status(code: int, location: str | None) -> InvalidStatus:
        headers = [] if location is None else [("Location", location)]
        return InvalidStatus("redirect", status=code, headers=headers)

    @pytest.mark.parametrize(
        ("base", "location", "expected"),
        [
            ("ws://h:1/a/b?x", "/c", "ws://h:1/c"),
            ("ws://h:1/a/b?x", "d?y", "ws://h:1/a/d?y"),
            ("ws://h/a", "http://o:8080/p", "ws://o:8080/p"),
            ("ws://h/a", "https://o/p", "wss://o/p"),
            ("wss://h/a", "wss://o/p", "wss://o/p"),
            ("wss://h/a", "/p", "wss://h/p"),
        ],
    )
    def test_target(self, base: str, location: str, expected: str) -> None:
        for code in (301, 302, 303, 307, 308):
            target = redirect_target(parse_uri(base), self.status(code, location))
            assert target is not None and target.uri == expected

    def test_other_statuses_are_not_redirections(self) -> None:
        assert redirect_target(parse_uri("ws://h/"), self.status(404, "/x")) is None
        assert redirect_target(parse_uri("ws://h/"), self.status(304, "/x")) is None

    @pytest.mark.parametrize(
        ("base", "location"),
        [("wss://h/a", "ws://h/a"), ("wss://h/a", "http://h/a"), ("ws://h/", None), ("ws://h/", "ftp://h/"), ("ws://h/", "ws://h/#f")],
    )
    def test_refused(self, base: str, location: str | None) -> None:
        with pytest.raises(InvalidHandshake):
            redirect_target(parse_uri(base), self.status(302, location))
