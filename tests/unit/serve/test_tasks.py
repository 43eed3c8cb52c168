"""Which signatures can classify or regress (TF Serving's checks and messages), and the classifier's result rows."""

from __future__ import annotations

import numpy as np
import pytest

from kdeploy.contract.signature import ModelSignature, TensorSpec
from kdeploy.serve.adapters.tasks import Classifications, check_task_signature
from kdeploy.wire.errors import ErrorKind, ServeError

EXAMPLES = TensorSpec("inputs", "string", (None,))
CLASSES = TensorSpec("classes", "string", (None, 3))
SCORES = TensorSpec("scores", "float32", (None, 3))
OUTPUTS = TensorSpec("outputs", "float32", (None, 1))


def signature(inputs=(EXAMPLES,), outputs=(CLASSES, SCORES), method="classify", name="s") -> ModelSignature:
    return ModelSignature(inputs=tuple(inputs), outputs=tuple(outputs), name=name, method=method)


@pytest.mark.parametrize("outputs", [(CLASSES, SCORES), (SCORES,), (CLASSES,), (SCORES, OUTPUTS)])
def test_a_classifier_has_examples_in_and_classes_or_scores_out(outputs):
    check_task_signature(signature(outputs=outputs), "classify")


@pytest.mark.parametrize("outputs", [(OUTPUTS,), (TensorSpec("outputs", "float32", (None,)),)])
def test_a_regressor_has_examples_in_and_outputs_out(outputs):
    check_task_signature(signature(outputs=outputs, method="regress"), "regress")


def test_a_predict_signature_shaped_like_a_classifier_classifies_as_in_tf_serving_by_default():
    # A TF2 SavedModel cannot set method_name: TF Serving (without --enable_signature_method_name_check) goes by shape.
    check_task_signature(signature(method="predict"), "classify")
    check_task_signature(signature(outputs=(OUTPUTS,), method="predict"), "regress")


@pytest.mark.parametrize("sig, method, words", [
    (signature(inputs=(TensorSpec("x", "float32", (None, 3)),), outputs=(TensorSpec("y", "float32", (None, 2)),),
               method="predict"), "classify",
     "Expected classification signature method_name to be tensorflow/serving/classify. Was: "
     "tensorflow/serving/predict (signature 's': No classification inputs found: its input is 'x'"),
    (signature(outputs=(OUTPUTS,), method="regress"), "classify",
     "Was: tensorflow/serving/regress (signature 's': Expected classification signature outputs to contain at "
     'least one of "classes" or "scores"'),
    (signature(), "regress", "Expected regression signature method_name to be tensorflow/serving/regress. Was: "
     "tensorflow/serving/classify (signature 's': Expected one output Tensor, found 2"),
    (signature(outputs=(SCORES,)), "regress", "No regression outputs found: its output is 'scores'"),
    (signature(inputs=(EXAMPLES, TensorSpec("x", "float32", (None,)))), "classify", "Expected one input Tensor"),
    (signature(inputs=(TensorSpec("inputs", "float32", (None, 3)),)), "classify",
     "signature 's' cannot classify: its input 'inputs' is float32, expected a string tensor of serialized"),
    (signature(outputs=(CLASSES, SCORES, OUTPUTS)), "classify", "Expected one or two output Tensors, found 3"),
    (signature(outputs=(TensorSpec("classes", "int64", (None, 3)),)), "classify",
     "Expected classes Tensor of DT_STRING, got int64"),
    (signature(outputs=(TensorSpec("scores", "float64", (None, 3)),)), "classify",
     "Expected scores Tensor of DT_FLOAT, got float64"),
    (signature(outputs=(TensorSpec("outputs", "int32", (None, 1)),), method="regress"), "regress",
     "Expected output Tensor of DT_FLOAT, got int32"),
])
def test_a_signature_that_cannot_do_the_task_is_refused_saying_why(sig, method, words):
    with pytest.raises(ServeError) as error:
        check_task_signature(sig, method)
    assert error.value.kind is ErrorKind.INVALID_INPUT and words in error.value.message


def test_result_rows_pair_labels_with_scores_and_fill_what_the_signature_lacks():
    labels = np.array([[b"cat", b"dog"], [b"a\xff", b"b"]], dtype=object)
    scores = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    assert list(Classifications(labels, scores).rows()) == [[("cat", 0.25), ("dog", 0.75)],
                                                            [("a\ufffd", 0.5), ("b", 0.5)]]
    assert next(Classifications(None, scores).rows()) == [("", 0.25), ("", 0.75)]
    assert next(Classifications(labels, None).rows()) == [("cat", 0.0), ("dog", 0.0)]
