"""The SSRF guard of user-named URLs (webhook_url, audio_url): what it refuses, what an operator
opens, and that the connection goes to the address that was checked."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from services.core import egress
from services.core.egress import EgressRefused, check_audio_url, check_url, parse_networks
from services.core.settings import Settings

REFUSED = [
    "http://127.0.0.1/hook",
    "http://localhost:8080/hook",  # a name that resolves to loopback
    "http://10.1.2.3/",
    "http://172.16.0.9/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
    "http://100.64.0.1/",  # shared address space (CGNAT)
    "http://0.0.0.0/",
    "http://[::1]/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",  # the IPv6 metadata service (unique local)
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
    "http://224.0.0.1/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_non_public_destinations_are_refused(url) -> None:
    with pytest.raises(EgressRefused) as refused:
        check_url(url)
    assert refused.value.code == "url_forbidden"
    assert "MOSS_EGRESS_ALLOW_NETWORKS" in refused.value.message


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/a", "file:///etc/passwd", "gopher://x/", "http:///nohost",
     "http://user:pw@8.8.8.8/", "http://8.8.8.8:99999/", "http://" + "a" * 3000],
)  # fmt: skip
def test_malformed_urls_are_invalid(url) -> None:
    with pytest.raises(EgressRefused) as refused:
        check_url(url)
    assert refused.value.code == "invalid_url"


def test_an_unresolvable_host_is_refused_with_its_own_code() -> None:
    with pytest.raises(EgressRefused) as refused:
        check_url("https://no-such-host.invalid/hook")
    assert refused.value.code == "url_unresolvable"


def test_public_addresses_pass_and_the_operator_opens_networks() -> None:
    pinned = check_url("https://8.8.8.8/hook?a=1")
    assert (pinned.host, pinned.port, str(pinned.ip)) == ("8.8.8.8", 443, "8.8.8.8")
    opened = check_url("http://127.0.0.1:9000/x", allow_networks=parse_networks("127.0.0.0/8"))
    assert opened.pinned_url == "http://127.0.0.1:9000/x"
    with pytest.raises(EgressRefused):  # only the networks named
        check_url("http://10.0.0.1/", allow_networks=parse_networks("127.0.0.0/8"))


def test_every_address_of_a_name_is_checked_and_the_first_is_pinned(monkeypatch) -> None:
    """DNS rebinding: the check and the connection use one resolution. A name with a public and
    a private address is refused; a public one is called at the address that was checked."""
    answers = {"mixed.example": ["93.184.216.34", "10.0.0.5"], "hooks.example": ["93.184.216.34"]}

    def getaddrinfo(host, port, *args, **kwargs):
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in answers[host]]

    monkeypatch.setattr(egress.socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(EgressRefused):
        check_url("https://mixed.example/hook")
    pinned = check_url("https://hooks.example:8443/h?x=1")
    answers["hooks.example"] = ["127.0.0.1"]  # the name now points inside: too late
    assert pinned.ip == ipaddress.ip_address("93.184.216.34")
    assert pinned.pinned_url == "https://93.184.216.34:8443/h?x=1"
    assert pinned.host_header == "hooks.example:8443"


def test_audio_url_names_the_object_store_or_listed_hosts_only(tmp_path) -> None:
    closed = Settings(home=tmp_path)
    with pytest.raises(EgressRefused) as refused:
        check_audio_url("https://8.8.8.8/a.wav", closed)
    assert refused.value.code == "audio_url_host_not_allowed"
    store = Settings(home=tmp_path, storage="s3", s3_endpoint="127.0.0.1:9000")
    assert check_audio_url("http://127.0.0.1:9000/bucket/a.wav?X-Amz-Signature=f", store)
    public = Settings(home=tmp_path, audio_url_hosts="*")
    assert check_audio_url("https://8.8.8.8/a.wav", public)
    with pytest.raises(EgressRefused) as refused:  # `*` is any *public* host
        check_audio_url("http://127.0.0.1/a.wav", public)
    assert refused.value.code == "url_forbidden"
    listed = Settings(home=tmp_path, audio_url_hosts="localhost:8765")
    assert check_audio_url("http://localhost:8765/a.wav", listed)
    with pytest.raises(EgressRefused):
        check_audio_url("http://localhost:8766/a.wav", listed)
