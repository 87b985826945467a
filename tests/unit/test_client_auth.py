"""Htpasswd (bcrypt only) client authentication and its short cache."""

from __future__ import annotations

import base64
from pathlib import Path

import bcrypt
import pytest

from proxy.errors import ConfigError, UnauthorizedError
from proxy.http.client_auth import Htpasswd, challenge_header

# Made by `htpasswd -nbB alice pw` (Apache's $2y$ prefix, cost 5).
ALICE_2Y = "$2y$05$ETVWzhTybFX5pqZ1tri1LuLwjsWNOlEQBZZC8HQRegySd6kwoSo7y"


def _hash(password: str, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4, prefix=prefix)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def htpasswd_file(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(
        "# users of the proxy\n"
        "\n"
        f"alice:{ALICE_2Y}\n"
        f"bob:{_hash('b0b', b'2a')}\n"
        f"  carol:{_hash('c:a:rol')}  \n"
        f"dora:{_hash('dörä')}\n"
    )
    return path


@pytest.fixture
def counted_checkpw(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", checkpw)
    return calls


def test_load_and_check(htpasswd_file: Path) -> None:
    db = Htpasswd.load(htpasswd_file)
    assert db.users == {"alice", "bob", "carol", "dora"}
    assert db.check(basic("alice", "pw")) == "alice"
    assert db.check(basic("bob", "b0b")) == "bob"
    assert db.check(basic("carol", "c:a:rol")) == "carol"  # ':' in a password is fine
    assert db.check(basic("dora", "dörä")) == "dora"
    # Scheme is case-insensitive (RFC 7235 §2.1).
    assert db.check("basic " + basic("alice", "pw").split()[1]) == "alice"


BAD_FILES = [
    ("apr1-md5", "alice:$apr1$Jf0D3x6r$yVuKx6/0uv9y0CHq6ahUU0", 1),
    ("sha1", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", 1),
    ("crypt", "alice:abJnggxhB/yWI", 1),
    ("plain", "alice:secret", 1),
    ("bcrypt-truncated", "alice:" + ALICE_2Y[:-1], 1),
    ("bcrypt-unknown-prefix", "alice:$2x$" + ALICE_2Y[4:], 1),
    ("bcrypt-bad-cost", "alice:$2y$99$" + ALICE_2Y[7:], 1),
    ("after-comment-and-blank", f"# c\n\nalice:{ALICE_2Y}\nbob:{{SHA}}abc=", 4),
]


@pytest.mark.parametrize(
    ("content", "line"), [b[1:] for b in BAD_FILES], ids=[b[0] for b in BAD_FILES]
)
def test_load_rejects_non_bcrypt(tmp_path: Path, content: str, line: int) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(content + "\n")
    with pytest.raises(ConfigError) as info:
        Htpasswd.load(path)
    assert info.value.path == str(path)
    assert info.value.message == f"line {line}: only bcrypt hashes are supported (htpasswd -B)"
    # The hash itself never appears in the message.
    assert content.splitlines()[-1].split(":", 1)[1] not in str(info.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("alice", "line 1: expected user:hash"),
        (f":{ALICE_2Y}", "line 1: expected user:hash"),
        (f"alice:{ALICE_2Y}\nalice:{ALICE_2Y}", "line 2: duplicate user 'alice'"),
    ],
    ids=["no-colon", "empty-user", "duplicate"],
)
def test_load_rejects_bad_lines(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(content)
    with pytest.raises(ConfigError) as info:
        Htpasswd.load(path)
    assert info.value.message == message


def test_load_missing_or_binary_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read htpasswd file"):
        Htpasswd.load(tmp_path / "nope")
    binary = tmp_path / "bin"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read htpasswd file"):
        Htpasswd.load(binary)


def test_empty_file_rejects_everyone(tmp_path: Path) -> None:
    path = tmp_path / "htpasswd"
    path.write_text("# nobody yet\n")
    db = Htpasswd.load(path)
    with pytest.raises(UnauthorizedError, match="invalid username or password"):
        db.check(basic("alice", "pw"))


REJECTED = [
    ("wrong-password", basic("alice", "nope"), "invalid username or password"),
    ("unknown-user", basic("mallory", "pw"), "invalid username or password"),
    ("empty-password", basic("alice", ""), "invalid username or password"),
    ("too-long-password", basic("alice", "p" * 73), "invalid username or password"),
    ("missing", None, "authentication required"),
    ("empty", "", "authentication required"),
    ("bearer", "Bearer abc.def.ghi", "only Basic"),
    ("scheme-only", "Basic", "malformed Basic credentials"),
    ("not-base64", "Basic !!!notbase64", "malformed Basic credentials"),
    ("base64-no-colon", "Basic " + base64.b64encode(b"alice").decode(), "malformed Basic"),
    ("empty-user", "Basic " + base64.b64encode(b":pw").decode(), "malformed Basic"),
    ("not-utf8", "Basic " + base64.b64encode(b"al\xffce:pw").decode(), "malformed Basic"),
    ("huge", "Basic " + "A" * 5000, "malformed Authorization header"),
]


@pytest.mark.parametrize(
    ("header", "match"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED]
)
def test_check_rejects(htpasswd_file: Path, header: str | None, match: str) -> None:
    db = Htpasswd.load(htpasswd_file)
    with pytest.raises(UnauthorizedError, match=match) as info:
        db.check(header)
    assert "nope" not in str(info.value)


def test_unknown_user_still_pays_bcrypt(htpasswd_file: Path, counted_checkpw: list[bytes]) -> None:
    # Same work for unknown users as for wrong passwords: no user-name oracle by timing.
    db = Htpasswd.load(htpasswd_file)
    with pytest.raises(UnauthorizedError):
        db.check(basic("mallory", "pw"))
    assert len(counted_checkpw) == 1
    assert counted_checkpw[0][:7] == b"$2b$04$"  # dummy at the file's (lowest) cost


def test_success_is_cached_for_ttl(htpasswd_file: Path, counted_checkpw: list[bytes]) -> None:
    clock = Clock()
    db = Htpasswd.load(htpasswd_file, clock=clock, cache_ttl=30)
    assert db.check(basic("alice", "pw")) == "alice"
    assert db.check(basic("alice", "pw")) == "alice"
    clock.now = 29.9
    assert db.check(basic("alice", "pw")) == "alice"
    assert len(counted_checkpw) == 1
    clock.now = 30.0
    assert db.check(basic("alice", "pw")) == "alice"
    assert len(counted_checkpw) == 2


def test_failures_are_not_cached(htpasswd_file: Path, counted_checkpw: list[bytes]) -> None:
    db = Htpasswd.load(htpasswd_file, clock=Clock())
    assert db.check(basic("alice", "pw")) == "alice"
    for _ in range(2):
        with pytest.raises(UnauthorizedError):
            db.check(basic("alice", "wrong"))
    # A cached good password does not let a different password in for the same user.
    assert len(counted_checkpw) == 3


def test_cache_is_bounded(htpasswd_file: Path, counted_checkpw: list[bytes]) -> None:
    db = Htpasswd.load(htpasswd_file, clock=Clock(), cache_size=1)
    db.check(basic("alice", "pw"))
    db.check(basic("bob", "b0b"))  # evicts alice
    db.check(basic("bob", "b0b"))
    db.check(basic("alice", "pw"))
    assert len(counted_checkpw) == 3


def test_cache_disabled(htpasswd_file: Path, counted_checkpw: list[bytes]) -> None:
    db = Htpasswd.load(htpasswd_file, clock=Clock(), cache_ttl=0)
    db.check(basic("alice", "pw"))
    db.check(basic("alice", "pw"))
    assert len(counted_checkpw) == 2


def test_challenge_header() -> None:
    assert challenge_header("trustproxy") == 'Basic realm="trustproxy"'
    assert challenge_header('a "quoted" realm') == 'Basic realm="a \\"quoted\\" realm"'
    with pytest.raises(ValueError, match="control character"):
        challenge_header("x\r\nSet-Cookie: y")
