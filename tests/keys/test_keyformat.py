"""The key format: shape, checksum, hash and display parts, all without any lookup."""

import ast
import hashlib
import hmac
import inspect
import re
import sys
from pathlib import Path

import pytest

from edge import keyformat
from keys import services

KEY_PATTERN = re.compile(r"^tg_live_[0-9A-Za-z]{38}$")


def _with_char(key: str, index: int, char: str) -> str:
    return key[:index] + char + key[index + 1 :]


def test_generated_live_key_matches_the_published_pattern_and_is_well_formed():
    keys = {keyformat.generate("live") for _ in range(50)}
    assert len(keys) == 50
    for key in keys:
        assert KEY_PATTERN.match(key), key
        assert keyformat.is_well_formed(key)


def test_generated_test_key_has_the_test_prefix():
    key = keyformat.generate("test")
    assert re.match(r"^tg_test_[0-9A-Za-z]{38}$", key)
    assert keyformat.is_well_formed(key)


def test_unknown_environment_cannot_be_minted():
    with pytest.raises(ValueError, match="environment must be one of"):
        keyformat.generate("prod")


def test_any_single_character_change_after_the_prefix_is_refused():
    key = keyformat.generate("live")
    for index in range(len("tg_live_"), len(key)):
        for char in keyformat.ALPHABET:
            if char != key[index]:
                assert not keyformat.is_well_formed(_with_char(key, index, char)), (index, char)


def test_truncated_or_extended_key_is_refused():
    key = keyformat.generate("live")
    assert not keyformat.is_well_formed(key[:-1])
    assert not keyformat.is_well_formed(key[:20])
    assert not keyformat.is_well_formed(key + "a")
    assert not keyformat.is_well_formed("")


def test_wrong_prefix_is_refused():
    key = keyformat.generate("live")
    body = key[len("tg_live_") :]
    assert not keyformat.is_well_formed("sk_live_" + body)
    assert not keyformat.is_well_formed("tg_prod_" + body)
    assert not keyformat.is_well_formed("TG_LIVE_" + body)
    # Moving a live key to the test environment breaks its checksum.
    assert not keyformat.is_well_formed("tg_test_" + body)


def test_prod_key_with_a_valid_checksum_is_still_refused():
    body = "tg_prod_" + "A" * 32
    assert not keyformat.is_well_formed(body + keyformat.checksum(body))


def test_wrong_checksum_is_refused():
    key = keyformat.generate("live")
    body = key[:-6]
    other = keyformat.checksum(body[:-1] + ("B" if body[-1] != "B" else "C"))
    assert other != key[-6:]
    assert not keyformat.is_well_formed(body + other)
    assert keyformat.is_well_formed(body + keyformat.checksum(body))


def test_hash_is_hmac_sha256_of_the_key_under_the_pepper(settings):
    key = keyformat.generate("live")
    pepper = b"a-pepper-of-at-least-thirty-two-bytes!!"
    expected = hmac.new(pepper, key.encode("ascii"), hashlib.sha256).hexdigest()
    assert keyformat.key_hash(key, pepper) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", expected)
    assert keyformat.key_hash(key, b"another-pepper-of-thirty-two-bytes!!") != expected
    # The portal hashes with the configured pepper.
    assert (
        services.secret_hash(key)
        == hmac.new(settings.KEY_PEPPER.encode(), key.encode("ascii"), hashlib.sha256).hexdigest()
    )


def test_display_parts_are_the_environment_prefix_with_four_chars_and_the_last_four():
    key = keyformat.generate("live")
    prefix, last4 = keyformat.display_parts(key)
    assert prefix == key[:12]
    assert prefix.startswith("tg_live_") and len(prefix) == 12
    assert last4 == key[-4:]


def test_well_formedness_needs_only_the_string_and_is_deterministic():
    # This test has no database access (no django_db mark) and no Redis client: the
    # check is a pure function of the key text.
    assert list(inspect.signature(keyformat.is_well_formed).parameters) == ["key"]
    key = keyformat.generate("live")
    broken = _with_char(key, 10, "0" if key[10] != "0" else "1")
    assert [keyformat.is_well_formed(key) for _ in range(3)] == [True, True, True]
    assert [keyformat.is_well_formed(broken) for _ in range(3)] == [False, False, False]


def test_key_format_module_imports_only_the_standard_library():
    tree = ast.parse(Path(keyformat.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported == {"hashlib", "hmac", "re", "secrets", "zlib"}
    assert imported <= set(sys.stdlib_module_names)
