"""TF Serving's Classify and Regress over the inference service, shared by the gRPC and REST adapters.

What TF Serving checks, with its messages (`servables/tensorflow/classifier.cc`, `regressor.cc`,
`multi_inference.cc`): a signature classifies when it has one input, `inputs` (serialized tf.Examples), and one or
two outputs among `classes` (strings, [batch, k]) and `scores` (floats, [batch, k]); it regresses when it has one
input, `inputs`, and one output, `outputs` ([batch] or [batch, 1] floats). As TF Serving does by default (without
`--enable_signature_method_name_check`), that shape decides, not the SignatureDef's method_name: a TF2 SavedModel
cannot set method_name, so its classifiers say `predict`. A signature that is neither is refused with the expected
method_name and what is wrong with its shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from kdeploy.contract.signature import DEFAULT_SIGNATURE, METHOD_PREFIX, ModelSignature, SignatureError
from kdeploy.serve.models import ServedVersion
from kdeploy.serve.service import InferenceService
from kdeploy.wire.errors import ErrorKind, ServeError, invalid

CLASSIFY, REGRESS = "classify", "regress"
INPUTS, CLASSES, SCORES, OUTPUTS = "inputs", "classes", "scores", "outputs"
_NOUNS = {CLASSIFY: "classification", REGRESS: "regression"}


def signature_of(served: ServedVersion, name: str) -> ModelSignature:
    """The version's signature that a request names ("" means the default).

    Raises:
        SignatureError: for a name the version does not have, listing those it has.
    """
    return served.loaded()[0].signature_named(name)


def task_signature(served: ServedVersion, name: str, method: str) -> ModelSignature:
    """The signature a Classify (`method` "classify") or Regress ("regress") names, checked for that task.

    Args:
        served: the version.
        name: the request's signature_name ("" for the default).
        method: `classify` or `regress`.

    Raises:
        ServeError: INVALID_INPUT for an unknown signature or one that cannot do the task.
    """
    try:
        signature = signature_of(served, name)
    except SignatureError as exc:
        raise invalid(f"No signature was found with the name: {name or DEFAULT_SIGNATURE} ({exc})") from None
    check_task_signature(signature, method)
    return signature


def check_task_signature(signature: ModelSignature, method: str) -> None:
    """Refuse a signature that cannot classify (or regress), as TF Serving's PreProcessClassification does.

    Raises:
        ServeError: INVALID_INPUT saying what the signature lacks.
    """
    problem = _shape_problem(signature, method)
    if problem is None:
        return
    if signature.method != method:
        raise invalid(f"Expected {_NOUNS[method]} signature method_name to be {METHOD_PREFIX}{method}. "
                      f"Was: {METHOD_PREFIX}{signature.method} (signature {signature.name!r}: {problem})")
    raise invalid(f"signature {signature.name!r} cannot {method}: {problem}")


def _shape_problem(signature: ModelSignature, method: str) -> str | None:
    inputs, outputs = signature.input_names, signature.output_names
    if len(inputs) != 1:
        return f"Expected one input Tensor, found {inputs}"
    if inputs != [INPUTS]:
        return f"No {_NOUNS[method]} inputs found: its input is {inputs[0]!r}, expected {INPUTS!r}"
    if not signature.inputs[0].is_string:
        return (f"its input {INPUTS!r} is {signature.inputs[0].dtype}, expected a string tensor of serialized "
                "tf.Examples")
    if method == CLASSIFY:
        if len(outputs) not in (1, 2):
            return f"Expected one or two output Tensors, found {len(outputs)} ({outputs})"
        if CLASSES not in outputs and SCORES not in outputs:
            return (f'Expected classification signature outputs to contain at least one of "{CLASSES}" or '
                    f'"{SCORES}"; its outputs are {outputs}')
        if CLASSES in outputs and not signature.output(CLASSES).is_string:
            return f"Expected classes Tensor of DT_STRING, got {signature.output(CLASSES).dtype}"
        if SCORES in outputs and signature.output(SCORES).dtype != "float32":
            return f"Expected scores Tensor of DT_FLOAT, got {signature.output(SCORES).dtype}"
        return None
    if len(outputs) != 1:
        return f"Expected one output Tensor, found {len(outputs)} ({outputs})"
    if outputs != [OUTPUTS]:
        return f"No regression outputs found: its output is {outputs[0]!r}, expected {OUTPUTS!r}"
    if signature.output(OUTPUTS).dtype != "float32":
        return f"Expected output Tensor of DT_FLOAT, got {signature.output(OUTPUTS).dtype}"
    return None


@dataclass(frozen=True)
class Classifications:
    """A classifier's answer for a batch of examples: labels and/or scores, [batch, classes] each."""

    labels: np.ndarray | None
    scores: np.ndarray | None

    def rows(self) -> Iterator[list[tuple[str, float]]]:
        """Per example, (label, score) per class: label "" when the signature has no classes, score 0 when it has no
        scores (TF Serving leaves the field unset). Labels that are not UTF-8 have their bad bytes replaced."""
        present = self.labels if self.labels is not None else self.scores
        assert present is not None, "a classifier answers classes, scores or both"
        examples, classes = present.shape[:2]
        for i in range(examples):
            labels = [_text(b) for b in self.labels[i]] if self.labels is not None else [""] * classes
            scores = self.scores[i].tolist() if self.scores is not None else [0.0] * classes
            yield list(zip(labels, scores))


def _text(label: object) -> str:
    return label.decode("utf-8", "replace") if isinstance(label, bytes) else str(label)


async def classify(service: InferenceService, served: ServedVersion, signature: ModelSignature,
                   examples: np.ndarray, deadline: float | None) -> Classifications:
    """Run a classification signature on serialized examples.

    Raises:
        ServeError: as `InferenceService.infer_async`; INVALID_INPUT when the outputs are not [batch, classes].
    """
    wanted = [name for name in (CLASSES, SCORES) if name in signature.output_names]
    result = await service.infer_async(served, {INPUTS: examples}, wanted, deadline, signature_name=signature.name)
    labels, scores = result.outputs.get(CLASSES), result.outputs.get(SCORES)
    for name, array in ((CLASSES, labels), (SCORES, scores)):
        if array is None:
            continue
        if array.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(array.shape)} ({name})")
        if array.shape[0] != len(examples):
            raise invalid(f"Expected {name} output batch size of {len(examples)}. Got: {array.shape[0]}")
    if labels is not None and scores is not None and labels.shape[1] != scores.shape[1]:
        raise invalid(f"Tensors class and score should match in dim_size(1). Got {labels.shape[1]} vs. "
                      f"{scores.shape[1]}")
    return Classifications(labels, scores)


async def regress(service: InferenceService, served: ServedVersion, signature: ModelSignature,
                  examples: np.ndarray, deadline: float | None) -> list[float]:
    """Run a regression signature on serialized examples: one value per example.

    Raises:
        ServeError: as `InferenceService.infer_async`; INVALID_INPUT when the output is not [batch] or [batch, 1].
    """
    result = await service.infer_async(served, {INPUTS: examples}, [OUTPUTS], deadline, signature_name=signature.name)
    values = result.outputs[OUTPUTS]
    if not (values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1)):
        raise invalid("Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
                      f"{list(values.shape)}")
    if values.shape[0] != len(examples):
        raise invalid(f"Input batch size did not match output batch size: {len(examples)} vs. {values.shape[0]}")
    return [float(v) for v in values.reshape(-1)]


@dataclass(frozen=True)
class Task:
    """One MultiInference task, checked: the signature and what to do with it."""

    signature: ModelSignature
    method: str
    """`classify` or `regress`."""


def multi_inference_tasks(served: ServedVersion, requested: Sequence[tuple[str, str]]) -> list[Task]:
    """Check MultiInference's (signature_name, method_name) tasks of one model, as TF Serving does.

    Raises:
        ServeError: INVALID_INPUT for a signature asked for twice, one the model lacks or one that cannot do its
            task; UNIMPLEMENTED for a method_name other than classify and regress.
    """
    tasks: list[Task] = []
    seen: set[str] = set()
    for name, method_name in requested:
        try:
            signature = signature_of(served, name)
        except SignatureError as exc:
            raise invalid(f"Requested signature not found in model graph: {name} ({exc})") from None
        if signature.name in seen:
            raise invalid(f"Duplicate evaluation of signature: {signature.name}")
        seen.add(signature.name)
        method = method_name.removeprefix(METHOD_PREFIX)
        if not method_name.startswith(METHOD_PREFIX) or method not in (CLASSIFY, REGRESS):
            raise ServeError(ErrorKind.UNIMPLEMENTED, f"Unsupported signature method_name: {method_name!r}; "
                             f"MultiInference runs {METHOD_PREFIX}classify and {METHOD_PREFIX}regress")
        check_task_signature(signature, method)
        tasks.append(Task(signature, method))
    return tasks
