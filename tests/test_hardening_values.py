"""Hardening of step identity and values (issue 10): fingerprints that tell unequal arguments
apart without changing the keys existing journals use, JSON rows that keep their values, and
errors that name steps and arguments the way the user wrote them."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import re
import ssl
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Literal

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jeevesagent.runtime import (
    JournalCorruptError,
    JournaledRuntime,
    RetryPolicy,
    StepFailedError,
    ValueEncodingError,
    with_policy,
)
from jeevesagent.runtime._core import fingerprint as _fingerprint
from jeevesagent.runtime._core.keys import (
    describe_key,
    fingerprint,
    idempotency_journal_key,
    legacy_journal_key,
    signal_journal_key,
    step_journal_key,
    timer_journal_key,
)
from jeevesagent.runtime._core.values import JsonCodec, PickleCodec
from jeevesagent.runtime._journal.backend import STEP

from .conftest import StoreFactory
from .test_values import Calls, create_journal, plant, raw_rows


class Customer(pydantic.BaseModel):
    name: str
    tier: int = 0


class VipCustomer(Customer):
    lounge: str = "none"


class Order(pydantic.BaseModel):
    order_id: str
    customer: Customer
    lines: list[Customer]
    backup: Customer | None = None
    meta: dict[str, int] = {}


class PlainModel(pydantic.BaseModel):
    a: int
    b: str
    tags: set[str]
    when: datetime.datetime | None = None


class Search(pydantic.BaseModel):
    kind: Literal["search"] = "search"
    query: str


class Answer(pydantic.BaseModel):
    kind: Literal["answer"] = "answer"
    text: str


class Turn(pydantic.BaseModel):
    action: Search | Answer = pydantic.Field(discriminator="kind")


class Person(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True)
    first_name: str = pydantic.Field(alias="firstName")
    score: float = 0.0


class Team(pydantic.BaseModel):
    lead: Person
    members: list[Person] = []
    _cache: dict[str, int] = pydantic.PrivateAttr(default_factory=dict)


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Color(enum.Enum):
    RED = 1


class Bag:
    def __init__(self) -> None:
        self.tags = {"b", "a"}
        self.count = 3


WHEN = datetime.datetime(2024, 5, 17, 12, 30, tzinfo=datetime.UTC)


def golden_samples() -> dict[str, str]:
    """Arguments that fingerprinted correctly before issue 10, and their fingerprints."""
    customer = Customer(name="ana", tier=2)
    return {
        "none": fingerprint((), {}),
        "plain": fingerprint(
            ("q", 3, [1, 2.5, None, True, b"x"], {"k": (1, "v")}), {"flag": False}
        ),
        "plain-int-keys": fingerprint(({1: "a", "1": "b"}, -7), {}),
        "int-4300-digits": fingerprint((10**4299, -(10**4299)), {}),
        "plain-model": fingerprint((PlainModel(a=1, b="x", tags={"p", "q"}, when=WHEN),), {}),
        "nested-model": fingerprint(
            (Order(order_id="o-1", customer=customer, lines=[customer], meta={"n": 1}),), {}
        ),
        "discriminated-union": fingerprint((Turn(action=Answer(text="hi")),), {"n": 1}),
        "dataclass-enum-set": fingerprint((Point(1, 10**4299), Color.RED, {1, 2}), {}),
        "repr-types": fingerprint(
            (WHEN, uuid.UUID(int=5), decimal.Decimal("1.10"), complex(1, 2)), {}
        ),
        "plain-object": fingerprint((Bag(),), {"p": Point(0, 0)}),
        "aliased-strict-nested": fingerprint((team(),), {}),
        "excluded-client": fingerprint((WithClient(name="a", client=threading.Lock()),), {}),
        "excluded-at-default": fingerprint((Account(name="a"),), {}),
        "nested-excluded-client": fingerprint(
            (Deps(tools=WithClient(name="a", client=threading.Lock())),), {}
        ),
        "nested-excluded-at-default": fingerprint((Wrapper(account=Account(name="a")),), {}),
    }


def team() -> Team:
    """Nested models with an alias, strict config, a NaN and private state."""
    value = Team(lead=Person(firstName="ana", score=float("nan")), members=[Person(firstName="b")])
    value._cache["hits"] = 3
    return value


# Computed on main (05c2ccc), before the changes of issue 10, and hard-coded: journals written by
# that code are keyed by these digests, so they must never change.
GOLDEN = {
    "none": "b8e1dda3ac0aa3820ad2990b",
    "plain": "305efce810df09d70b704dd5",
    "plain-int-keys": "608faa259ff9a04547b212f4",
    "int-4300-digits": "95751746a3bfe0fa89615062",
    "plain-model": "abe98189c1c740c402107174",
    "nested-model": "03a204329179cd9f920a4bfa",
    "discriminated-union": "84ee22aaee8a75ada052142c",
    "dataclass-enum-set": "eeebd0a47adf5811eb17fed1",
    "repr-types": "553c1d7adb6f5593ed67ab28",
    "plain-object": "985ed7db32eddb0575c0779f",
    "aliased-strict-nested": "9b8c0ee36b68c8cbcf6a69ee",
    "excluded-client": "914b02afc14976469b7d287e",
    "excluded-at-default": "898c85654d8f91d46b39d648",
    "nested-excluded-client": "3bec5c40eb738e743d9d3419",
    "nested-excluded-at-default": "1d771a162d32df66d94e7371",
}


def fp(*args: Any, **kwargs: Any) -> str:
    return fingerprint(args, kwargs)


@pytest.fixture
def int_str_limit() -> Iterator[Any]:
    """Sets the interpreter's int-to-str digit limit for one test and restores it."""
    before = sys.get_int_max_str_digits()
    try:
        yield sys.set_int_max_str_digits
    finally:
        sys.set_int_max_str_digits(before)


# -- existing keys stay -------------------------------------------------------------------------


def test_fingerprints_of_existing_journals_do_not_change() -> None:
    assert golden_samples() == GOLDEN


@pytest.mark.parametrize("limit", [0, 640, 5000])
def test_fingerprints_do_not_depend_on_the_int_str_limit(limit: int, int_str_limit: Any) -> None:
    long_ints = fp(10**5000, {"k": [-(10**5000)]}, {10**4500: 1})
    int_str_limit(limit)
    assert golden_samples() == GOLDEN
    assert fp(10**5000, {"k": [-(10**5000)]}, {10**4500: 1}) == long_ints


# -- pydantic models: unequal models, unequal keys (item 6) ----------------------------------------


class Box(pydantic.BaseModel):
    item: Any = None


class Holder(pydantic.BaseModel):
    customer: Customer


class Vendor(pydantic.BaseModel):
    name: str
    tier: int = 0


class Party(pydantic.BaseModel):
    who: Customer | Vendor


class Account(pydantic.BaseModel):
    name: str
    token: str = pydantic.Field(default="", exclude=True)


class Wrapper(pydantic.BaseModel):
    account: Account


class Open(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


class WithClient(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    name: str
    client: Any = pydantic.Field(default=None, exclude=True)


def test_the_class_of_a_nested_model_is_part_of_the_identity() -> None:
    assert fp(Box(item=Customer(name="a"))) != fp(Box(item={"name": "a", "tier": 0}))
    assert fp(Party(who=Customer(name="a"))) != fp(Party(who=Vendor(name="a")))
    assert fp(Box(item=[Point(1, 2)])) != fp(Box(item=[{"x": 1, "y": 2}]))
    extra_model = Open.model_validate({"extra": Customer(name="a")})
    assert fp(extra_model) != fp(Open.model_validate({"extra": {"name": "a", "tier": 0}}))


def test_a_nested_subclass_and_its_fields_are_part_of_the_identity() -> None:
    base = fp(Holder(customer=Customer(name="a")))
    assert base != fp(Holder(customer=VipCustomer(name="a")))
    assert fp(Holder(customer=VipCustomer(name="a", lounge="x"))) != fp(
        Holder(customer=VipCustomer(name="a", lounge="y"))
    )
    assert base == fp(Holder(customer=Customer(name="a")))


class Deps(pydantic.BaseModel):
    tools: WithClient


def test_excluded_fields_are_part_of_the_identity() -> None:
    assert fp(Account(name="a", token="t1")) != fp(Account(name="a", token="t2"))
    assert fp(Account(name="a", token="t1")) == fp(Account(name="a", token="t1"))
    assert fp(Wrapper(account=Account(name="a", token="t1"))) != fp(
        Wrapper(account=Account(name="a", token="t2"))
    )


def test_an_unfingerprintable_excluded_field_counts_as_its_default() -> None:
    """A client kept in an ``exclude=True`` field is not data: the model is identified by its
    dump, as it was before -- not refused -- also inside another model."""
    with_lock = fp(WithClient(name="a", client=threading.Lock()))
    assert with_lock == fp(WithClient(name="a", client=threading.Lock()))
    assert with_lock == fp(WithClient(name="a"))
    assert with_lock != fp(WithClient(name="a", client="x"))
    nested = fp(Deps(tools=WithClient(name="a", client=threading.Lock())))
    assert nested == fp(Deps(tools=WithClient(name="a")))
    assert nested != fp(Deps(tools=WithClient(name="a", client="x")))


def same_identity(a: Any, b: Any) -> bool:
    """The oracle: the same classes all the way down and equal fields."""
    if type(a) is not type(b):
        return False
    if isinstance(a, pydantic.BaseModel):
        return same_identity(
            {**a.__dict__, **(a.__pydantic_extra__ or {})},
            {**b.__dict__, **(b.__pydantic_extra__ or {})},
        )
    if dataclasses.is_dataclass(a):
        return same_identity(dataclasses.asdict(a), dataclasses.asdict(b))  # type: ignore[arg-type]
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_identity(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(same_identity, a, b))
    return bool(a == b)


NAMES = st.sampled_from(["a", "b"])
LEAF = st.none() | st.integers(0, 1) | NAMES
CUSTOMERS = st.builds(Customer, name=NAMES, tier=st.integers(0, 1)) | st.builds(
    VipCustomer, name=NAMES, tier=st.integers(0, 1), lounge=st.sampled_from(["none", "x"])
)
ACCOUNTS = st.builds(Account, name=NAMES, token=st.sampled_from(["", "t"]))
ANY = (
    LEAF
    | CUSTOMERS
    | st.builds(Vendor, name=NAMES)
    | st.builds(Point, x=st.integers(0, 1), y=st.integers(0, 1))
    | st.fixed_dictionaries({"name": NAMES, "tier": st.integers(0, 1)})
    | st.fixed_dictionaries({"x": st.integers(0, 1), "y": st.integers(0, 1)})
)
MODELS = (
    st.builds(Box, item=ANY | st.lists(ANY, max_size=2))
    | st.builds(Holder, customer=CUSTOMERS)
    | st.builds(Party, who=CUSTOMERS | st.builds(Vendor, name=NAMES))
    | ACCOUNTS
    | st.builds(Wrapper, account=ACCOUNTS)
    | st.builds(Order, order_id=NAMES, customer=CUSTOMERS, lines=st.lists(CUSTOMERS, max_size=2))
)


@settings(max_examples=400, deadline=None)
@given(a=MODELS, b=MODELS, copy=st.booleans())
def test_models_share_a_fingerprint_only_when_they_are_the_same(a: Any, b: Any, copy: bool) -> None:
    if copy:
        b = a.model_copy(deep=True)
    assert (fp(a) == fp(b)) == same_identity(a, b)


async def test_a_call_with_an_unequal_model_runs_again(store_factory: StoreFactory) -> None:
    calls = Calls()
    plain, vip = Holder(customer=Customer(name="a")), Holder(customer=VipCustomer(name="a"))
    for _ in range(2):  # the second runtime replays both from the journal
        async with JournaledRuntime(await store_factory.new()) as rt, rt.session("s1"):
            assert type((await rt.step("greet", calls, plain)).customer) is Customer
            assert await rt.step("greet", calls, vip) == vip
            assert type((await rt.step("greet", calls, vip)).customer) is VipCustomer
        await store_factory.recycle()
    assert calls.n == 2


# -- ints of any length, regexes (item 12) ---------------------------------------------------------


def test_ints_longer_than_the_int_str_limit_are_fingerprinted() -> None:
    big = 10**5000
    digests = {fp(big), fp(big + 1), fp(-big), fp([big]), fp(Point(big, 0)), fp({big: 1})}
    assert len(digests) == 6
    assert fp(big) == fp(10**5000)
    assert fp(10**4300) != fp(10**4299)  # 4,301 and 4,300 digits: both sides of the bound


def test_compiled_regexes_are_fingerprinted_by_pattern_and_flags() -> None:
    assert fp(re.compile("a+")) == fp(re.compile("a+"))
    assert fp(re.compile("a+")) != fp(re.compile("a*"))
    assert fp(re.compile("a+")) != fp(re.compile("a+", re.IGNORECASE))
    assert fp(re.compile("a+")) != fp("a+")
    assert fp(int | str) != fp(int | bytes)  # also pickled through copyreg


async def test_steps_with_a_long_int_or_a_regex_replay(store_factory: StoreFactory) -> None:
    calls = Calls()
    for _ in range(2):
        async with JournaledRuntime(await store_factory.new()) as rt, rt.session("s1"):
            assert await rt.step("big", calls, 10**5000) == 10**5000
            assert (await rt.step("rx", calls, re.compile("a+"))).pattern == "a+"
        await store_factory.recycle()
    assert calls.n == 2


PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=5)
    | st.binary(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.dictionaries(st.text(max_size=3), inner, max_size=4)
        | st.dictionaries(st.integers() | st.text(max_size=2) | st.booleans(), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(value=PLAIN)
def test_the_long_int_text_equals_the_fast_text(value: Any) -> None:
    fast: list[str] = []
    slow: list[str] = []
    _fingerprint._plain(value, fast)
    _fingerprint._plain_big(value, slow)
    assert slow == fast


# -- fingerprint errors name the argument; what identity means ----------------------------------


def test_an_unfingerprintable_argument_is_named_by_where_it_is() -> None:
    ctx = ssl.create_default_context()
    with pytest.raises(ValueEncodingError, match=r"args\[1\]\['ctx'\] is of type ssl.SSLContext"):
        fingerprint((1, {"ctx": ctx}), {}, session_id="s", step="plan")
    with pytest.raises(ValueEncodingError, match=r"kwargs\['guard'\] is of type _thread.lock"):
        fingerprint((), {"guard": threading.Lock()}, session_id="s", step="plan")
    with pytest.raises(ValueEncodingError, match=r"kwargs\['box'\]\.item\[0\] is of type"):
        fingerprint((), {"box": Box(item=[ctx])}, session_id="s", step="plan")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueEncodingError, match=r"argument args\[1\] is nested too deeply"):
        fingerprint((1, loop), {}, session_id="s", step="plan")


def test_type_and_exact_value_are_part_of_the_identity() -> None:
    """Documented, and kept: existing journals are keyed this way."""
    assert len({fp(1), fp(1.0), fp(True)}) == 3
    assert fp(0.0) != fp(-0.0)
    assert fp(decimal.Decimal("1.0")) != fp(decimal.Decimal("1.00"))


# -- the JSON codec keeps values as they are (item 7) ---------------------------------------------

MARKER = "__jeevesagent_failure__"


async def test_json_codec_refuses_non_string_keys(store_factory: StoreFactory) -> None:
    store = await store_factory.new(codec="json")
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        with pytest.raises(ValueEncodingError) as info:
            await rt.step("plan", Calls(), {1: "a", "1": "b"})
        with pytest.raises(ValueEncodingError, match=r"value\['rows'\]\[0\] has the key 2"):
            await rt.step("nested", Calls(), {"rows": [{2: "x"}]})
        assert await rt.step("ok", Calls(), {"1": "b"}) == {"1": "b"}
    err = info.value
    assert err.session_id == "s1"
    assert err.step == "plan"
    assert "key 1 of type int" in str(err)
    assert "string keys" in str(err)
    assert list((await raw_rows(store, "s1")).steps) == [step_journal_key("ok", fp({"1": "b"}))]


@pytest.mark.parametrize(
    "value",
    [
        {MARKER: {"type": "builtins.RuntimeError", "message": "card declined"}},
        {MARKER: {"data": 1}},
        {MARKER: None},
    ],
    ids=["failure-shaped", "escape-shaped", "other"],
)
async def test_a_json_result_shaped_like_the_failure_marker_replays_as_data(
    store_factory: StoreFactory, value: Any
) -> None:
    calls = Calls()
    for _ in range(2):
        async with (
            JournaledRuntime(await store_factory.new(codec="json")) as rt,
            rt.session("s1"),
        ):
            assert await rt.step("echo", calls, value) == value
            await rt.signal("s1", "note", value)
            assert await rt.wait_for_signal("s1", "note", timeout=5) == value
        await store_factory.recycle()
    assert calls.n == 1


async def test_a_json_failure_journaled_by_earlier_code_still_replays(
    store_factory: StoreFactory,
) -> None:
    await create_journal(store_factory, codec="json")
    row = json.dumps({MARKER: {"type": "builtins.RuntimeError", "message": "card declined"}})
    await plant(store_factory, "s1", STEP, step_journal_key("charge", fp()), row.encode())
    charge = with_policy(Calls(), retry=RetryPolicy(attempts=1), journal_failures=True)
    async with JournaledRuntime(await store_factory.new(codec="json")) as rt, rt.session("s1"):
        with pytest.raises(StepFailedError, match="card declined") as info:
            await rt.step("charge", charge)
    assert info.value.type_name == "builtins.RuntimeError"
    assert info.value.step == "charge"


def test_json_rows_shaped_like_the_marker_read_back_in_both_codecs() -> None:
    value = {MARKER: {"type": "x", "message": "y"}}
    row = JsonCodec().encode(value)
    assert JsonCodec().decode(row) == value
    assert PickleCodec().decode(row) == value  # a CLI signal in a pickle journal
    assert PickleCodec().decode(PickleCodec().encode(value)) == value


# -- codec errors name the step as the user wrote it ---------------------------------------------


def test_describe_key_names_every_kind_of_key() -> None:
    assert describe_key(step_journal_key("plan:2", fp(1))) == "plan:2"
    assert describe_key(idempotency_journal_key("order-42")) == "idempotency_key='order-42'"
    assert describe_key(signal_journal_key("approve", 3)) == "signal 'approve' #3"
    assert describe_key(timer_journal_key("cool-off")) == "sleep 'cool-off'"
    assert describe_key(legacy_journal_key("plan")) == "plan"
    assert describe_key("signal 'approve'") == "signal 'approve'"
    assert describe_key("s:no-fingerprint") == "s:no-fingerprint"  # not a key we write


async def test_codec_errors_name_the_step_not_its_journal_key(
    store_factory: StoreFactory,
) -> None:
    store = await store_factory.new(codec="json")
    async with JournaledRuntime(store) as rt, rt.session("s1"):
        with pytest.raises(ValueEncodingError) as encoding:
            await rt.step("plan", Calls(), {1, 2})
        with pytest.raises(ValueEncodingError) as keyed:
            await rt.step("plan", Calls(), {1, 2}, idempotency_key="order-42")
    for info, name in ((encoding, "plan"), (keyed, "idempotency_key='order-42'")):
        assert info.value.step == name
        assert f"step {name!r}" in str(info.value)
        assert "s:plan:" not in str(info.value)
    await store_factory.recycle()
    await plant(store_factory, "s1", STEP, step_journal_key("broken", fp()), b"{not json")
    await plant(store_factory, "s1", STEP, signal_journal_key("approve", 0), b"{not json")
    async with JournaledRuntime(await store_factory.new(codec="json")) as rt, rt.session("s1"):
        with pytest.raises(JournalCorruptError) as corrupt:
            await rt.step("broken", Calls())
        with pytest.raises(JournalCorruptError) as receipt:
            await rt.wait_for_signal("s1", "approve", timeout=5)
    assert corrupt.value.step == "broken"
    assert "step 'broken'" in str(corrupt.value)
    assert receipt.value.step == "signal 'approve' #0"
