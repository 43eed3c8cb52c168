"""The tf.Example input of TF Serving's Classify, Regress and MultiInference, from gRPC's `Input` message and from
REST's JSON examples (standard library, NumPy and the vendored protos: no TensorFlow).

A signature that classifies or regresses takes one string tensor, `inputs`: a batch of serialized `tf.Example`s,
which the model parses itself (`tf.io.parse_example`). The feed is that batch as a NumPy object array of bytes.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from kdeploy.wire.errors import invalid

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64"}


def examples_from_input(input_message: Any) -> np.ndarray:
    """The serialized examples of a `tensorflow.serving.Input`, as TF Serving feeds them.

    `example_list_with_context` puts the serialized context in front of each serialized example, as TF Serving does:
    parsing the concatenation merges the two, and an example's own feature wins over the context's of that name.

    Raises:
        ServeError: INVALID_INPUT when the input holds no example.
    """
    kind = input_message.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in input_message.example_list.examples]
    elif kind == "example_list_with_context":
        listed = input_message.example_list_with_context
        context = listed.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in listed.examples]
    else:
        examples = []
    if not examples:
        raise invalid("Input is empty: the request has no tf.Example (input.example_list.examples, or "
                      "input.example_list_with_context.examples)")
    batch = np.empty(len(examples), dtype=object)
    batch[:] = examples
    return batch


def fill_example_from_json(example: Any, value: Any) -> None:
    """Fill a `tensorflow.Example` from one JSON example of TF Serving's REST API (`{"feature": value or [values]}`).

    As TF Serving's `json_tensor.cc` reads them: integers (and booleans) go to `int64_list`, other numbers to
    `float_list`, strings (UTF-8) and `{"b64": "..."}` to `bytes_list`; one feature's values share one kind.

    Raises:
        ServeError: INVALID_INPUT naming the feature that does not fit.
    """
    if not isinstance(value, dict):
        raise invalid(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for item in content if isinstance(content, list) else [content]:
            _add_value(feature, name, item)


def _add_value(feature: Any, name: str, item: Any) -> None:
    if isinstance(item, bool):
        _values(feature, name, "int64_list").append(int(item))
    elif isinstance(item, int):
        if not INT64_MIN <= item <= INT64_MAX:
            raise invalid(f"Feature: {name} has element {item} outside int64's range. Only int64_t is supported.")
        _values(feature, name, "int64_list").append(item)
    elif isinstance(item, float):
        _values(feature, name, "float_list").append(item)
    elif isinstance(item, str):
        _values(feature, name, "bytes_list").append(item.encode("utf-8"))
    elif isinstance(item, dict) and set(item) == {"b64"} and isinstance(item["b64"], str):
        try:
            raw = base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise invalid(f"Feature: {name} has a b64 value that is not base64") from None
        _values(feature, name, "bytes_list").append(raw)
    else:
        raise invalid(f"Feature: {name} has element with unexpected JSON type: {_json_type(item)}")


def _values(feature: Any, name: str, kind: str) -> Any:
    """The value list of `kind` in `feature`, refusing a second kind in one feature."""
    existing = feature.WhichOneof("kind")
    if existing is not None and existing != kind:
        raise invalid(f"Unexpected element type in feature: {name} expecting type: {_KIND_NAMES[existing]}")
    return getattr(feature, kind).value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"
