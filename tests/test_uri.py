"""RFC 6455 §3 (WebSocket URIs) and the plain ``(host, port, path)`` form of the API."""

from __future__ import annotations

import dataclasses

import pytest

from kn_sock.exceptions import InvalidURI
from kn_sock.uri import WebSocketURI, parse_uri


class TestSection3WsUri:
    """§3: ws-URI = "ws:" "//" host [ ":" port ] path [ "?" query ]."""

    def test_ws_defaults_to_port_80_and_root_path(self) -> None:
        assert parse_uri("ws://example.com") == WebSocketURI(False, "example.com", 80, "/")

    def test_wss_defaults_to_port_443(self) -> None:
        wsuri = parse_uri("wss://example.com/")
        assert (wsuri.secure, wsuri.port, wsuri.scheme) == (True, 443, "wss")

    def test_explicit_port_path_and_query(self) -> None:
        wsuri = parse_uri("ws://localhost:8765/chat?room=1&x=%20")
        assert (wsuri.host, wsuri.port, wsuri.path) == ("localhost", 8765, "/chat?room=1&x=%20")
        assert wsuri.uri == "ws://localhost:8765/chat?room=1&x=%20"

    def test_query_without_path_gets_root_path(self) -> None:
        assert parse_uri("ws://h?x=1").path == "/?x=1"

    def test_scheme_is_case_insensitive(self) -> None:
        assert parse_uri("WSS://h/").secure is True

    def test_empty_port_means_default(self) -> None:
        assert parse_uri("ws://h:/").port == 80

    def test_explicit_default_port_is_omitted_from_host_header(self) -> None:
        wsuri = parse_uri("wss://h:443/")
        assert wsuri.host_header == "h"
        assert parse_uri("ws://h:443/").host_header == "h:443"

    def test_ipv6_literal(self) -> None:
        wsuri = parse_uri("ws://[::1]:8765/x")
        assert (wsuri.host, wsuri.port) == ("::1", 8765)
        assert wsuri.host_header == "[::1]:8765"
        assert wsuri.uri == "ws://[::1]:8765/x"
        assert parse_uri("wss://[2001:db8::1]").host_header == "[2001:db8::1]"

    def test_unbracketed_ipv6_in_uri_is_rejected(self) -> None:
        with pytest.raises(InvalidURI, match="brackets"):
            parse_uri("ws://::1/")

    @pytest.mark.parametrize("uri", ["ws://[::1/", "ws://[::g]/", "ws://[::1]x/"])
    def test_bad_ipv6_literal_is_rejected(self, uri: str) -> None:
        with pytest.raises(InvalidURI):
            parse_uri(uri)

    @pytest.mark.parametrize("uri", ["ws://h/#frag", "ws://h/x?y#frag", "wss://h#"])
    def test_fragment_is_rejected(self, uri: str) -> None:
        with pytest.raises(InvalidURI, match="fragment"):
            parse_uri(uri)

    @pytest.mark.parametrize("uri", ["http://h/", "https://h/", "ftp://h/", "wsx://h/", "://h/"])
    def test_non_websocket_scheme_is_rejected(self, uri: str) -> None:
        with pytest.raises(InvalidURI, match="ws or wss"):
            parse_uri(uri)

    @pytest.mark.parametrize(
        "uri", ["ws://h:0/", "ws://h:65536/", "ws://h:x/", "ws://h:-1/", "ws://h:1.5/"]
    )
    def test_bad_port_is_rejected(self, uri: str) -> None:
        with pytest.raises(InvalidURI, match="port"):
            parse_uri(uri)

    @pytest.mark.parametrize(
        "uri", ["ws:///x", "ws://:80/", "ws://h h/", "ws://h/a b", "ws://h\n/", "ws://h!/"]
    )
    def test_bad_host_or_whitespace_is_rejected(self, uri: str) -> None:
        with pytest.raises(InvalidURI):
            parse_uri(uri)

    def test_non_ascii_path_is_percent_encoded(self) -> None:
        assert parse_uri("ws://h/caf\u00e9?q=\u00fc").path == "/caf%C3%A9?q=%C3%BC"

    def test_existing_escapes_are_kept(self) -> None:
        assert parse_uri("ws://h/a%2Fb%zz").path == "/a%2Fb%25zz"

    def test_internationalised_host_is_idna_encoded(self) -> None:
        assert parse_uri("ws://b\u00fccher.example/").host == "xn--bcher-kva.example"

    def test_user_info_is_decoded_and_kept_out_of_repr_and_uri(self) -> None:
        wsuri = parse_uri("wss://alice:s%40cret@h/")
        assert wsuri.user_info == ("alice", "s@cret")
        assert "cret" not in repr(wsuri)
        assert wsuri.uri == "wss://h/"

    def test_port_may_have_leading_zeros(self) -> None:
        """RFC 3986 §3.2.3: ``port = *DIGIT`` (websockets takes them too)."""
        assert parse_uri("ws://h:000080/").port == 80
        assert parse_uri("wss://h:" + "0" * 40 + "443/").host_header == "h"
        with pytest.raises(InvalidURI, match="port"):
            parse_uri("ws://h:" + "9" * 5000 + "/")

    @pytest.mark.parametrize("uri", ["ws://u:%FF@h/", "ws://%E9:s3cret@h/"])
    def test_user_info_must_be_utf8_once_decoded(self, uri: str) -> None:
        """Not U+FFFD in place of the byte: other credentials than the URI's would be sent."""
        with pytest.raises(InvalidURI, match="UTF-8") as info:
            parse_uri(uri)
        assert "%FF" not in str(info.value) and "s3cret" not in str(info.value)

    def test_port_argument_fills_in_a_missing_port(self) -> None:
        assert parse_uri("ws://h/x", 9000).port == 9000
        with pytest.raises(InvalidURI, match="conflicts"):
            parse_uri("ws://h:1/x", 2)

    def test_path_argument_fills_in_a_missing_path(self) -> None:
        assert parse_uri("ws://h:1", path="/chat").path == "/chat"
        with pytest.raises(InvalidURI, match="conflicts"):
            parse_uri("ws://h:1/a", path="/b")

    def test_is_frozen_and_invalid_uri_is_a_value_error(self) -> None:
        wsuri = parse_uri("ws://h/")
        with pytest.raises(dataclasses.FrozenInstanceError):
            wsuri.port = 1  # type: ignore[misc]
        assert issubclass(InvalidURI, ValueError)
        assert str(wsuri) == "ws://h/"


class TestPlainHostPortPath:
    """``connect_websocket("localhost", 8765)`` and friends."""

    def test_host_and_port(self) -> None:
        assert parse_uri("localhost", 8765) == WebSocketURI(False, "localhost", 8765, "/")

    def test_host_port_and_path(self) -> None:
        wsuri = parse_uri("localhost", 8765, "/chat?x=1")
        assert (wsuri.path, wsuri.uri) == ("/chat?x=1", "ws://localhost:8765/chat?x=1")

    def test_path_without_leading_slash(self) -> None:
        assert parse_uri("h", 1, "chat").path == "/chat"
        assert parse_uri("h", 1, "").path == "/"

    def test_host_with_port_in_string(self) -> None:
        assert parse_uri("localhost:8765").port == 8765

    def test_ipv6_plain_forms(self) -> None:
        assert parse_uri("::1", 8765).host_header == "[::1]:8765"
        assert parse_uri("[::1]", 8765).host == "::1"
        assert parse_uri("[::1]:9").port == 9

    def test_host_without_scheme_and_port_is_rejected(self) -> None:
        with pytest.raises(InvalidURI, match="no port"):
            parse_uri("localhost")

    @pytest.mark.parametrize("port", [0, 70000, -5])
    def test_bad_port_is_rejected(self, port: int) -> None:
        with pytest.raises(InvalidURI, match="port"):
            parse_uri("localhost", port)

    @pytest.mark.parametrize("port", ["80", 8.0, True])
    def test_port_must_be_an_int(self, port: object) -> None:
        with pytest.raises(InvalidURI, match="int"):
            parse_uri("localhost", port)  # type: ignore[arg-type]

    def test_fragment_in_path_is_rejected(self) -> None:
        with pytest.raises(InvalidURI, match="fragment"):
            parse_uri("h", 1, "/x#y")

    @pytest.mark.parametrize("host", ["", "a b", "h/x", "[::1"])
    def test_bad_host_is_rejected(self, host: str) -> None:
        with pytest.raises(InvalidURI):
            parse_uri(host, 80)

    def test_non_str_host_is_rejected(self) -> None:
        with pytest.raises(InvalidURI):
            parse_uri(b"localhost", 80)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "uri",
    ["ws://alice:s3cret@example.com:99999/", "ftp://alice:s3cret@example.com/", "ws://alice:s3cret@[::1/x",
     "ws://alice:s3cret@example.com/#frag", "wss://alice:s3cret/b64+x@example.com/feed"],
)
def test_invalid_uri_messages_do_not_show_the_password(uri: str) -> None:
    """Error messages reach logs and error trackers (audit 87)."""
    with pytest.raises(InvalidURI) as info:
        parse_uri(uri)
    assert "s3cret" not in str(info.value) and "alice:***@" in str(info.value)


def test_shown_hides_the_query_and_credentials() -> None:
    """What log lines and messages use (audit 87: ``?token=`` is a common way to authenticate)."""
    uri = parse_uri("wss://alice:s3cret@example.com:8443/feed?token=T0K3N")
    assert uri.shown == "wss://example.com:8443/feed?…"
    assert parse_uri("ws://example.com/feed").shown == "ws://example.com/feed"
