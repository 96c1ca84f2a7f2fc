"""Property tests on bad input: random and corrupted JSON configs, and bit-exact rows.

- Any JSON text, any value in any field: parsing either succeeds or raises `ConfigError`; it
  never panics and never raises anything else. A config that parses survives a round trip
  through ``to_json`` and never shows its passwords in ``repr``.
- Rows of every value dtype go through insert and find on a real server bit for bit,
  including NaN payloads (quiet and signalling, both signs), infinities, -0.0 and subnormals.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tfra_redis
from tfra_redis import RedisStore, _native

KNOWN_FIELDS = sorted(json.loads(_native.Config.from_json("{}").to_json()))

VALID = {
    "redis_connection_mode": 2,
    "redis_master_name": "master",
    "redis_host_ip": ["127.0.0.1"],
    "redis_host_port": [6379],
    "redis_password": "pw-0123456789",
    "redis_sentinel_password": "spw-0123456789",
    "redis_connect_timeout": 1000,
    "redis_socket_timeout": 1000,
    "redis_conn_pool_size": 20,
    "storage_slice": 4,
    "storage_slice_import": -1,
    "keys_sending_size": 1024,
    "using_md5_prefix_name": False,
    "model_tag_import": "test",
    "model_tag_runtime": "test",
    "expire_model_tag_in_seconds": 604800,
    "table_store_mode": 1,
    "model_lib_abs_dir": "/tmp/",
    "redis_hash_tags_runtime": [],
}

PROPERTY_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# JSON numbers at and beyond every integer width the config uses (u16 ports, u32, i64, u64).
edge_ints = st.sampled_from(
    [
        0,
        -1,
        1,
        2**15,
        2**16 - 1,
        2**16,
        2**31 - 1,
        2**31,
        2**32 - 1,
        2**32,
        2**53,
        2**63 - 1,
        2**63,
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        10**30,
    ]
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    edge_ints,
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, -0.0, 1e300, 1.0, 3.0]),
    st.text(max_size=30),
    st.sampled_from(["", "127.0.0.1", "{1}", "{", "}", "\x00", "é", "-1", "1e9"]),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.text(max_size=10), children, max_size=5),
    ),
    max_leaves=12,
)


def _same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values, types included: ``True`` is not ``1`` and ``2.0`` is not ``2``."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _expected(field: str, given: Any, emitted: dict[str, Any]) -> Any:
    """What ``to_json`` must show for a value that was accepted: the value itself, except for
    the documented normalisations (TFRA's rules for "same as storage_slice" and "no TTL", and
    hash tags written with braces)."""
    if field == "storage_slice_import" and given <= 0:
        return emitted["storage_slice"]
    if field == "expire_model_tag_in_seconds" and given < 0:
        return -1
    if field in ("redis_hash_tags_import", "redis_hash_tags_runtime"):
        return ["{" + tag.removeprefix("{").removesuffix("}") + "}" for tag in given]
    return given


def assert_accepted_as_given(config: _native.Config, given: dict[str, Any]) -> None:
    """Every known field of an accepted config holds exactly the value it was given: a
    silent coercion (``storage_slice: 2.5`` read as 2, ``"3"`` as 3, ``1`` as ``true``) fails."""
    emitted = json.loads(config.to_json())
    for field, value in given.items():
        if field in KNOWN_FIELDS:
            want = _expected(field, value, emitted)
            assert _same_json(emitted[field], want), (field, value, emitted[field])


def parse(text: str, given: dict[str, Any] | None = None) -> _native.Config | None:
    """Parses; returns None for a `ConfigError`; lets every other exception fail the test.
    With ``given`` (the dict ``text`` was made from) an accepted config must hold its values."""
    try:
        config = _native.Config.from_json(text, "<property>")
    except tfra_redis.ConfigError as err:
        assert str(err), "a ConfigError without a message"
        return None
    if given is not None:
        assert_accepted_as_given(config, given)
    # A config that parses must describe itself and survive its own JSON.
    text_again = config.to_json()
    again = _native.Config.from_json(text_again, "<round trip>")
    assert again.to_json() == text_again
    shown = repr(config)
    for secret in ("pw-0123456789", "spw-0123456789"):
        assert secret not in shown
    return config


def test_the_valid_config_parses():
    assert parse(json.dumps(VALID), VALID) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("storage_slice", 2.5),
        ("storage_slice", 3.0),
        ("storage_slice", "3"),
        ("storage_slice", True),
        ("redis_db", 1.5),
        ("redis_host_port", [6379.5]),
        ("redis_read_access_slave", 1),
        ("redis_host_ip", "127.0.0.1"),
        ("redis_master_name", 7),
    ],
)
def test_values_of_another_type_are_refused_not_coerced(field: str, value: Any):
    assert parse(json.dumps({**VALID, field: value}), {**VALID, field: value}) is None


@PROPERTY_SETTINGS
@given(
    st.dictionaries(
        st.one_of(st.sampled_from(KNOWN_FIELDS), st.text(max_size=20)), json_values, max_size=12
    )
)
def test_random_configs_parse_or_raise_config_error(config: dict[str, Any]):
    parse(json.dumps(config), config)


@PROPERTY_SETTINGS
@given(st.sampled_from(KNOWN_FIELDS), json_values)
def test_one_corrupted_field_parses_or_raises_config_error(field: str, value: Any):
    parse(json.dumps({**VALID, field: value}), {**VALID, field: value})


@PROPERTY_SETTINGS
@given(st.data())
def test_corrupted_json_text_parses_or_raises_config_error(data: st.DataObject):
    text = json.dumps(VALID, indent=1)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        action = data.draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        piece = data.draw(st.text(min_size=1, max_size=4))
        if action == "delete":
            text = text[:at] + text[at + len(piece) :]
        elif action == "insert":
            text = text[:at] + piece + text[at:]
        elif action == "replace":
            text = text[:at] + piece + text[at + len(piece) :]
        else:
            text = text[:at]
    parse(text)


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_config_error(raw: bytes):
    parse(raw.decode("utf-8", errors="surrogateescape").encode("utf-8", "replace").decode())


def test_nan_and_infinity_are_config_errors():
    for text in (
        '{"storage_slice": NaN}',
        '{"redis_socket_timeout": Infinity}',
        '{"redis_host_port": [-Infinity]}',
    ):
        assert parse(text) is None


# --------------------------------------------------------------------------------------------
# Rows round-trip bit for bit


def _bits(dtype: str) -> tuple[np.dtype, list[int]]:
    """The unsigned type of the same width and the bit patterns that must survive."""
    specials = {
        "float32": [
            0x7FC00000,
            0x7FC00001,
            0xFFC12345,
            0x7F800001,
            0xFF800001,
            0x7FBFFFFF,
            0x7F800000,
            0xFF800000,
            0x80000000,
            0x00000001,
            0x807FFFFF,
            0x7F7FFFFF,
        ],
        "float64": [
            0x7FF8000000000000,
            0x7FF8000000000001,
            0xFFF0000000000001,
            0x7FF0000000000000,
            0xFFF0000000000000,
            0x8000000000000000,
            1,
            0x000FFFFFFFFFFFFF,
        ],
        "float16": [
            0x7E00,
            0x7E01,
            0xFE01,
            0x7C01,
            0x7DFF,
            0x7C00,
            0xFC00,
            0x8000,
            0x0001,
            0x03FF,
            0x7BFF,
        ],
        "bfloat16": [0x7FC0, 0x7FC1, 0xFF81, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x7F7F],
        "int8": [0x00, 0x7F, 0x80, 0xFF],
        "int32": [0, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF],
        "int64": [0, 0x7FFFFFFFFFFFFFFF, 0x8000000000000000, 0xFFFFFFFFFFFFFFFF],
    }[dtype]
    width = {
        "float32": 4,
        "float64": 8,
        "float16": 2,
        "bfloat16": 2,
        "int8": 1,
        "int32": 4,
        "int64": 8,
    }[dtype]
    return np.dtype(f"<u{width}"), specials


ROW_DTYPES = ["float32", "float16", "int8", "int64", "float64", "int32"]
try:
    import ml_dtypes  # noqa: F401  (comes with TensorFlow)

    ROW_DTYPES.append("bfloat16")
except ImportError:
    pass

_stores: dict[tuple[str, int], RedisStore] = {}


def _store(server: Any, dtype: str, dim: int) -> RedisStore:
    key = (dtype, dim)
    if key not in _stores:
        _stores[key] = RedisStore(
            server.config_dict(),
            f"props_{dtype}_{dim}_{uuid.uuid4().hex[:8]}",
            dim,
            value_dtype=dtype,
            manage_ttl=False,
        )
    return _stores[key]


@pytest.fixture(scope="module", autouse=True)
def _drop_row_tables():
    yield
    for store in _stores.values():
        store.clear()
    _stores.clear()


@pytest.mark.parametrize("dtype", ROW_DTYPES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_rows_round_trip_bit_exactly(standalone_server, dtype: str, data: st.DataObject):
    dim = data.draw(st.sampled_from([1, 3, 8]), label="dim")
    store = _store(standalone_server, dtype, dim)
    keys = np.array(
        # -(2**63) is never drawn: it stays missing in every table.
        data.draw(
            st.lists(st.integers(-(2**63) + 1, 2**63 - 1), min_size=1, max_size=40, unique=True),
            label="keys",
        ),
        dtype=np.int64,
    )
    utype, specials = _bits(dtype)
    high = 2 ** (8 * utype.itemsize) - 1
    words = data.draw(
        st.lists(
            st.one_of(st.sampled_from(specials), st.integers(0, high)),
            min_size=keys.size * dim,
            max_size=keys.size * dim,
        ),
        label="bits",
    )
    raw = np.array(words, dtype=utype).reshape(keys.size, dim)
    rows = raw.view(store.np_value_dtype)
    store.insert(keys, rows)
    got, exists = store.find(keys, return_exists=True)
    assert exists.all()
    assert got.dtype == store.np_value_dtype
    np.testing.assert_array_equal(got.view(utype), raw)
    # A missing key next to them gets the default, also bit for bit.
    missing = np.array([-(2**63)], np.int64)
    default = raw[0]
    got, exists = store.find(
        missing, default=default.view(store.np_value_dtype), return_exists=True
    )
    assert not exists.any()
    np.testing.assert_array_equal(got.view(utype)[0], default)
