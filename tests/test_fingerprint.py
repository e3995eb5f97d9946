"""Step identity: argument fingerprints are canonical, type-aware and the same in every process;
arguments that cannot be fingerprinted fail clearly; journal keys read back as names."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

from jeevesagent.runtime import InMemoryJournalStore, JournaledRuntime, ValueEncodingError
from jeevesagent.runtime._core.keys import (
    FINGERPRINT_CHARS,
    describe_key,
    fingerprint,
    idempotency_journal_key,
    signal_journal_key,
    step_journal_key,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def fp(*args: Any, **kwargs: Any) -> str:
    return fingerprint(args, kwargs)


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class OtherPoint:
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class Tagged:
    name: str
    tags: frozenset[str]


class Order(pydantic.BaseModel):
    order_id: str
    items: list[str]
    meta: dict[str, int]


class Labels(pydantic.BaseModel):
    names: set[str]
    weights: dict[str, float]


class Invoice(pydantic.BaseModel):
    order_id: str
    items: list[str]
    meta: dict[str, int]


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


def helper_a() -> None:
    pass


def helper_b() -> None:
    pass


# -- equal values, equal fingerprints -------------------------------------------------------------


def test_fingerprint_is_a_fixed_length_hex_digest() -> None:
    digest = fp({"a": 1}, "x", retries=3)
    assert len(digest) == FINGERPRINT_CHARS
    int(digest, 16)


def test_same_arguments_give_the_same_fingerprint() -> None:
    assert fp("query", 3, flag=True) == fp("query", 3, flag=True)


def test_no_arguments_have_a_fingerprint_too() -> None:
    assert fp() == fp()
    assert fp() != fp(None)


def test_dicts_in_any_insertion_order_are_equal() -> None:
    assert fp({"a": 1, "b": 2, "c": 3}) == fp({"c": 3, "a": 1, "b": 2})


def test_nested_dicts_in_any_insertion_order_are_equal() -> None:
    one = {"outer": {"x": [1, {"p": 1, "q": 2}], "y": None}, "z": {"k": "v", "j": "w"}}
    two = {"z": {"j": "w", "k": "v"}, "outer": {"y": None, "x": [1, {"q": 2, "p": 1}]}}
    assert fp(one) == fp(two)


def test_dicts_with_different_values_differ() -> None:
    assert fp({"a": 1, "b": 2}) != fp({"a": 1, "b": 3})
    assert fp({"a": 1}) != fp({"b": 1})


def test_keyword_arguments_in_any_order_are_equal() -> None:
    assert fingerprint((), {"a": 1, "b": 2}) == fingerprint((), {"b": 2, "a": 1})


def test_tuples_and_lists_differ() -> None:
    assert fp((1, 2)) != fp([1, 2])
    assert fp({"k": (1, 2)}) != fp({"k": [1, 2]})


def test_argument_grouping_matters() -> None:
    assert fp(1, 2) != fp((1, 2))
    assert fp([1, 2], 3) != fp([1], 2, 3)


def test_int_float_and_bool_differ() -> None:
    digests = {fp(1), fp(1.0), fp(True)}
    assert len(digests) == 3
    assert len({fp(0), fp(0.0), fp(False), fp(None)}) == 4


def test_str_bytes_and_bytearray_differ() -> None:
    assert len({fp("ab"), fp(b"ab"), fp(bytearray(b"ab"))}) == 3


def test_concatenation_does_not_collide() -> None:
    assert fp("ab", "c") != fp("a", "bc")
    assert fp(["ab"], ["c"]) != fp(["a"], ["bc"])


def test_sets_in_any_order_are_equal() -> None:
    words = [f"word-{i}" for i in range(50)]
    forward = set(words)
    backward: set[str] = set()
    for w in reversed(words):
        backward.add(w)
    assert fp(forward) == fp(backward)
    assert fp(frozenset(words)) == fp(frozenset(reversed(words)))


def test_set_frozenset_and_list_differ() -> None:
    assert len({fp({1, 2}), fp(frozenset({1, 2})), fp([1, 2])}) == 3


def test_dataclasses_are_fingerprinted_by_value() -> None:
    assert fp(Point(1, 2)) == fp(Point(1, 2))
    assert fp(Point(1, 2)) != fp(Point(2, 1))


def test_dataclasses_of_different_classes_differ() -> None:
    assert fp(Point(1, 2)) != fp(OtherPoint(1, 2))
    assert fp(Point(1, 2)) != fp({"x": 1, "y": 2})


def test_pydantic_models_are_fingerprinted_by_value() -> None:
    one = Order(order_id="o-1", items=["a", "b"], meta={"x": 1, "y": 2})
    two = Order(order_id="o-1", items=["a", "b"], meta={"y": 2, "x": 1})
    assert fp(one) == fp(two)
    assert fp(one) != fp(Order(order_id="o-1", items=["b", "a"], meta={"x": 1, "y": 2}))


def test_pydantic_models_of_different_classes_differ() -> None:
    order = Order(order_id="o-1", items=[], meta={})
    invoice = Invoice(order_id="o-1", items=[], meta={})
    assert fp(order) != fp(invoice)
    assert fp(order) != fp(order.model_dump())


def test_enums_are_fingerprinted_by_member() -> None:
    assert fp(Color.RED) == fp(Color(1))
    assert fp(Color.RED) != fp(Color.GREEN)
    assert fp(Color.RED) != fp(1)
    assert fp(Level.LOW) != fp(1)
    assert fp(Level.LOW) != fp(Color.RED)


def test_datetimes_are_fingerprinted_by_value() -> None:
    when = datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.UTC)
    assert fp(when) == fp(datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.UTC))
    assert fp(when) != fp(when + datetime.timedelta(seconds=1))
    assert fp(datetime.date(2024, 5, 17)) != fp(datetime.datetime(2024, 5, 17))
    assert fp(datetime.timedelta(days=1)) == fp(datetime.timedelta(hours=24))


def test_uuids_are_fingerprinted_by_value() -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert fp(u) == fp(uuid.UUID(str(u)))
    assert fp(u) != fp(uuid.UUID(int=u.int + 1))
    assert fp(u) != fp(str(u))


def test_decimals_are_fingerprinted_by_value() -> None:
    assert fp(decimal.Decimal("1.25")) == fp(decimal.Decimal("1.25"))
    assert fp(decimal.Decimal("1.25")) != fp(decimal.Decimal("1.26"))
    assert fp(decimal.Decimal("1.25")) != fp(1.25)


def test_positional_and_keyword_arguments_differ() -> None:
    assert fingerprint((1,), {}) != fingerprint((), {"x": 1})
    assert fingerprint(("a", 1), {}) != fingerprint((), {"a": 1})


def test_functions_are_fingerprinted_by_qualified_name() -> None:
    assert fp(helper_a) == fp(helper_a)
    assert fp(helper_a) != fp(helper_b)
    assert fp(Point) != fp(OtherPoint)


# -- the same in every process --------------------------------------------------------------------


def seed_sample() -> list[str]:
    """Fingerprints of values whose iteration order depends on the string hash seed."""
    words = [f"w{i}" for i in range(40)]
    return [
        fp(set(words)),
        fp(frozenset(words)),
        fp({w: i for i, w in enumerate(words)}),
        fp({"nested": [set(words), {"k": frozenset(words[:5])}]}),
        fp(Tagged("t", frozenset(words))),
        fp(Order(order_id="o", items=words, meta=dict.fromkeys(words, 1))),
        fp(Labels(names=set(words), weights=dict.fromkeys(words, 0.5))),
        fingerprint(("a",), {w: i for i, w in enumerate(words)}),
    ]


class Bag:
    """A plain class (neither dataclass nor pydantic): fingerprinted through its pickle."""

    def __init__(self) -> None:
        self.tags = {f"tag-{i}" for i in range(40)}


def plain_object_sample() -> list[str]:
    return [fp(Bag())]


def fingerprints_in_subprocess(function: str, hash_seed: str) -> list[str]:
    code = (
        "from tests.test_fingerprint import " + function + "\n"
        "print('\\n'.join(" + function + "()))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def raw_set_order() -> list[str]:
    return [",".join({f"w{i}" for i in range(40)})]


def test_the_two_hash_seeds_really_change_set_order() -> None:
    """Guards the next test: with these seeds, naive iteration would give different bytes."""
    assert fingerprints_in_subprocess("raw_set_order", "0") != fingerprints_in_subprocess(
        "raw_set_order", "12345"
    )


def test_fingerprints_do_not_depend_on_the_hash_seed() -> None:
    here = seed_sample()
    assert fingerprints_in_subprocess("seed_sample", "0") == here
    assert fingerprints_in_subprocess("seed_sample", "12345") == here


def test_plain_object_with_a_set_attribute_does_not_depend_on_the_hash_seed() -> None:
    assert fingerprints_in_subprocess("plain_object_sample", "0") == fingerprints_in_subprocess(
        "plain_object_sample", "12345"
    )


# -- arguments that cannot be fingerprinted -------------------------------------------------------


def open_generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "make",
    [threading.Lock, lambda: open_generator(), lambda: {"nested": [threading.Lock()]}],
    ids=["lock", "generator", "nested-lock"],
)
def test_unfingerprintable_argument_raises_value_encoding_error(make: Any) -> None:
    value = make()
    with pytest.raises(ValueEncodingError) as info:
        fingerprint((value,), {}, session_id="order-42", step="charge")
    err = info.value
    assert err.session_id == "order-42"
    assert err.step == "charge"
    message = str(err)
    assert "'order-42'" in message
    assert "'charge'" in message
    assert "idempotency_key" in message
    assert isinstance(err, TypeError)


def test_unfingerprintable_error_names_the_type() -> None:
    with pytest.raises(ValueEncodingError, match="lock"):
        fingerprint((), {"guard": threading.Lock()}, session_id="s", step="a")


def test_self_referencing_argument_raises_value_encoding_error() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueEncodingError):
        fingerprint((loop,), {}, session_id="s", step="a")


async def test_step_with_unfingerprintable_argument_fails_before_running_fn() -> None:
    calls: list[Any] = []
    store = InMemoryJournalStore()
    async with JournaledRuntime(store) as rt, rt.session("s"):
        with pytest.raises(ValueEncodingError) as info:
            await rt.step("guarded", calls.append, threading.Lock())
    assert calls == []
    assert info.value.session_id == "s"
    assert info.value.step == "guarded"
    assert store.step_keys() == []


async def test_step_with_unfingerprintable_argument_works_with_idempotency_key() -> None:
    calls: list[str] = []

    def use_lock(lock: Any, label: str) -> str:
        with lock:
            calls.append(label)
        return f"done {label}"

    store = InMemoryJournalStore()
    for _ in range(2):  # the second runtime replays from the journal
        async with JournaledRuntime(store) as rt, rt.session("s"):
            result = await rt.step(
                "guarded", use_lock, threading.Lock(), label="x", idempotency_key="guard-1"
            )
            assert result == "done x"
    assert calls == ["x"]
    assert store.step_keys() == [("s", idempotency_journal_key("guard-1"))]


# -- journal keys ---------------------------------------------------------------------------------


def test_describe_step_key_gives_the_step_name() -> None:
    assert describe_key(step_journal_key("charge_card", fp(1, 2))) == "charge_card"
    assert describe_key(step_journal_key("poll:3", fp())) == "poll:3"


def test_describe_idempotency_key() -> None:
    assert describe_key(idempotency_journal_key("order-42")) == "idempotency_key='order-42'"


def test_describe_signal_key() -> None:
    assert describe_key(signal_journal_key("approve", 3)) == "signal 'approve' #3"
    assert describe_key(signal_journal_key("a:b", 0)) == "signal 'a:b' #0"


def test_key_namespaces_never_collide() -> None:
    digest = fp()
    keys = {
        step_journal_key("k", digest),
        idempotency_journal_key(f"k:{digest}"),
        idempotency_journal_key("x"),
        step_journal_key("x", digest),
        signal_journal_key("x", 0),
    }
    assert len(keys) == 5
    assert step_journal_key("x", digest).startswith("s:")
    assert idempotency_journal_key("x").startswith("k:")
    assert signal_journal_key("x", 0).startswith("g:")
