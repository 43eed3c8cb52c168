"""tf.Examples for Classify and Regress from gRPC's Input and from REST's JSON, with the vendored protos only."""

from __future__ import annotations

import base64

import pytest

from kdeploy.wire.errors import ErrorKind, ServeError
from kdeploy.wire.examples import examples_from_input, fill_example_from_json
from kdeploy.wire.protos.messages import load_protos

PROTOS = load_protos()
Example = PROTOS.cls("tensorflow.Example")
Input = PROTOS.cls("tensorflow.serving.Input")


def example(**features) -> object:
    message = Example()
    fill_example_from_json(message, features)
    return message


def features(serialized: bytes) -> dict[str, tuple[str, list]]:
    parsed = Example.FromString(serialized)
    return {name: (f.WhichOneof("kind"), list(getattr(f, f.WhichOneof("kind")).value) if f.WhichOneof("kind") else [])
            for name, f in parsed.features.feature.items()}


def test_an_example_list_is_a_batch_of_serialized_examples():
    message = Input()
    message.example_list.examples.add().CopyFrom(example(x=[1.5, 2.5]))
    message.example_list.examples.add().CopyFrom(example(x=[3.5, 4.5], n=2))
    batch = examples_from_input(message)
    assert batch.dtype == object and batch.shape == (2,)
    assert [features(b) for b in batch] == [{"x": ("float_list", [1.5, 2.5])},
                                            {"x": ("float_list", [3.5, 4.5]), "n": ("int64_list", [2])}]


def test_the_context_is_merged_into_every_example_and_an_examples_own_feature_wins():
    message = Input()
    listed = message.example_list_with_context
    listed.context.CopyFrom(example(query="pizza", n=1))
    listed.examples.add().CopyFrom(example(cuisine="Pizzeria"))
    listed.examples.add().CopyFrom(example(cuisine="Taqueria", n=7))
    got = [features(b) for b in examples_from_input(message)]
    query = ("bytes_list", [b"pizza"])
    assert got == [{"query": query, "n": ("int64_list", [1]), "cuisine": ("bytes_list", [b"Pizzeria"])},
                   {"query": query, "n": ("int64_list", [7]), "cuisine": ("bytes_list", [b"Taqueria"])}]


@pytest.mark.parametrize("build", [
    lambda m: None,
    lambda m: m.example_list.SetInParent(),
    lambda m: m.example_list_with_context.context.CopyFrom(example(q="x")),
])
def test_an_input_without_examples_is_invalid(build):
    message = Input()
    build(message)
    with pytest.raises(ServeError) as error:
        examples_from_input(message)
    assert error.value.kind is ErrorKind.INVALID_INPUT and error.value.message.startswith("Input is empty")


def test_json_values_become_the_feature_kinds_tf_serving_gives_them():
    raw = bytes(range(250, 256))
    message = example(i=3, ints=[1, -2, 2**63 - 1], f=1.0, floats=[0.5, 2e3], s="héllo", strs=["a", "b"],
                      b={"b64": base64.b64encode(raw).decode()}, flag=True, flags=[False, True], empty=[])
    assert features(message.SerializeToString()) == {
        "i": ("int64_list", [3]), "ints": ("int64_list", [1, -2, 2**63 - 1]), "f": ("float_list", [1.0]),
        "floats": ("float_list", [0.5, 2000.0]), "s": ("bytes_list", ["héllo".encode()]),
        "strs": ("bytes_list", [b"a", b"b"]), "b": ("bytes_list", [raw]), "flag": ("int64_list", [1]),
        "flags": ("int64_list", [0, 1]), "empty": (None, [])}


@pytest.mark.parametrize("value, words", [
    ([1, 2.5], "Unexpected element type in feature: v expecting type: int64"),
    ([2.5, 1], "Unexpected element type in feature: v expecting type: float"),
    (["a", 1], "Unexpected element type in feature: v expecting type: bytes"),
    (None, "Feature: v has element with unexpected JSON type: null"),
    ([[1, 2]], "Feature: v has element with unexpected JSON type: array"),
    ({"x": 1}, "Feature: v has element with unexpected JSON type: object"),
    ({"b64": "not base64!"}, "Feature: v has a b64 value that is not base64"),
    (2**63, "outside int64's range"),
])
def test_json_values_that_do_not_fit_say_which_feature(value, words):
    with pytest.raises(ServeError) as error:
        example(v=value)
    assert error.value.kind is ErrorKind.INVALID_INPUT and words in error.value.message


def test_an_example_must_be_an_object():
    with pytest.raises(ServeError, match="Example must be JSON object but got JSON array"):
        fill_example_from_json(Example(), [1, 2])

