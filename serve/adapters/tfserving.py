"""TF Serving's gRPC API: `tensorflow.serving.PredictionService` (Predict, Classify, Regress, MultiInference,
GetModelMetadata) and `tensorflow.serving.ModelService` (GetModelStatus). Each RPC is decode → service → encode.

Every signature of a version is served: Predict runs the one `model_spec.signature_name` names (default
`serving_default`), Classify and Regress those that classify or regress tf.Examples (see `adapters/tasks.py`), and
GetModelMetadata lists them all.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kdeploy.contract.signature import (
    DEFAULT_SIGNATURE,
    METHOD_PREFIX,
    ModelSignature,
    SignatureError,
    TensorSpec,
    dtype_by_name,
)
from kdeploy.runtimes.base import stored_signature_defs
from kdeploy.serve.adapters import tasks
from kdeploy.serve.config_reload import ModelConfigReloader
from kdeploy.serve.models import ServedVersion, VersionState
from kdeploy.serve.service import InferenceService, deadline_of
from kdeploy.wire.errors import ErrorKind, ServeError, invalid
from kdeploy.wire.examples import examples_from_input
from kdeploy.wire.protos.messages import Protos
from kdeploy.wire.tensors import fill_tensor_proto, ndarray_from_tensor_proto


class TfServingAdapter:
    """Servicer methods for TF Serving's PredictionService and ModelService."""

    def __init__(self, service: InferenceService, protos: Protos, max_tensor_bytes: int,
                 tensor_encoding: str = "typed", reloader: ModelConfigReloader | None = None) -> None:
        """
        Args:
            service: the inference service.
            protos: the message classes.
            max_tensor_bytes: largest tensor a typed field may expand to.
            tensor_encoding: how Predict answers carry values: `typed` (`float_val`..., TF Serving's default) or
                `content` (`tensor_content` bytes: less work for large outputs; clients using
                `tf.make_ndarray` read both).
            reloader: applies HandleReloadConfigRequest's config (None: the RPC is refused).
        """
        self._service = service
        self._max_bytes = max_tensor_bytes
        self._encoding = tensor_encoding
        self._PredictResponse = protos.cls("tensorflow.serving.PredictResponse")
        self._ClassificationResponse = protos.cls("tensorflow.serving.ClassificationResponse")
        self._RegressionResponse = protos.cls("tensorflow.serving.RegressionResponse")
        self._MultiInferenceResponse = protos.cls("tensorflow.serving.MultiInferenceResponse")
        self._MetadataResponse = protos.cls("tensorflow.serving.GetModelMetadataResponse")
        self._SignatureDefMap = protos.cls("tensorflow.serving.SignatureDefMap")
        self._StatusResponse = protos.cls("tensorflow.serving.GetModelStatusResponse")
        self._ReloadResponse = protos.cls("tensorflow.serving.ReloadConfigResponse")
        self._reloader = reloader
        self.request_types = {
            "Predict": protos.cls("tensorflow.serving.PredictRequest"),
            "Classify": protos.cls("tensorflow.serving.ClassificationRequest"),
            "Regress": protos.cls("tensorflow.serving.RegressionRequest"),
            "MultiInference": protos.cls("tensorflow.serving.MultiInferenceRequest"),
            "GetModelMetadata": protos.cls("tensorflow.serving.GetModelMetadataRequest"),
            "GetModelStatus": protos.cls("tensorflow.serving.GetModelStatusRequest"),
            "HandleReloadConfigRequest": protos.cls("tensorflow.serving.ReloadConfigRequest"),
        }

    def _spec(self, spec: Any) -> tuple[str, int | None, str | None]:
        if not spec.name:
            raise invalid("model_spec.name is empty; name the model to call")
        choice = spec.WhichOneof("version_choice")
        version = spec.version.value if choice == "version" else None
        label = spec.version_label if choice == "version_label" else None
        return spec.name, version, label

    def _resolve(self, spec: Any) -> ServedVersion:
        return self._service.models.resolve(*self._spec(spec))

    def _fill_model_spec(self, target: Any, served: ServedVersion, signature_name: str | None) -> None:
        target.name = served.name
        target.version.value = served.version
        if signature_name is not None:
            target.signature_name = signature_name

    async def Predict(self, request: Any, context: Any) -> Any:
        with self._service.serving(*self._spec(request.model_spec)) as served:
            signature = _predict_signature(served, request.model_spec.signature_name)
            feed = {name: ndarray_from_tensor_proto(name, proto, _input_spec(signature, name), self._max_bytes)
                    for name, proto in request.inputs.items()}
            result = await self._service.infer_async(served, feed, list(request.output_filter), deadline_of(context),
                                                     signature_name=signature.name)
        response = self._PredictResponse()
        for name, array in result.outputs.items():
            fill_tensor_proto(response.outputs[name], array, self._encoding)
        self._fill_model_spec(response.model_spec, served, signature.name)
        return response

    async def Classify(self, request: Any, context: Any) -> Any:
        with self._service.serving(*self._spec(request.model_spec)) as served:
            signature = tasks.task_signature(served, request.model_spec.signature_name, tasks.CLASSIFY)
            examples = examples_from_input(request.input)
            found = await tasks.classify(self._service, served, signature, examples, deadline_of(context))
        response = self._ClassificationResponse()
        _fill_classifications(response.result, found)
        self._fill_model_spec(response.model_spec, served, signature.name)
        return response

    async def Regress(self, request: Any, context: Any) -> Any:
        with self._service.serving(*self._spec(request.model_spec)) as served:
            signature = tasks.task_signature(served, request.model_spec.signature_name, tasks.REGRESS)
            examples = examples_from_input(request.input)
            values = await tasks.regress(self._service, served, signature, examples, deadline_of(context))
        response = self._RegressionResponse()
        _fill_regressions(response.result, values)
        self._fill_model_spec(response.model_spec, served, signature.name)
        return response

    async def MultiInference(self, request: Any, context: Any) -> Any:
        """Several classify and regress tasks of one model on one input. As in TF Serving, the first task's model_spec
        picks the version, and each signature runs at most once."""
        if not request.tasks:
            raise invalid("the MultiInferenceRequest has no tasks; add one per signature to run (model_spec and "
                          f"method_name {METHOD_PREFIX}classify or {METHOD_PREFIX}regress)")
        names = {task.model_spec.name for task in request.tasks}
        if "" in names:
            raise invalid("Found ModelSpec with an empty model name.")
        if len(names) > 1:
            raise invalid(f"All ModelSpecs in a MultiInferenceRequest must access the same model name, got "
                          f"{sorted(names)}")
        deadline = deadline_of(context)
        response = self._MultiInferenceResponse()
        with self._service.serving(*self._spec(request.tasks[0].model_spec)) as served:
            checked = tasks.multi_inference_tasks(
                served, [(t.model_spec.signature_name, t.method_name) for t in request.tasks])
            examples = examples_from_input(request.input)
            for task in checked:
                result = response.results.add()
                if task.method == tasks.CLASSIFY:
                    found = await tasks.classify(self._service, served, task.signature, examples, deadline)
                    _fill_classifications(result.classification_result, found)
                else:
                    values = await tasks.regress(self._service, served, task.signature, examples, deadline)
                    _fill_regressions(result.regression_result, values)
                self._fill_model_spec(result.model_spec, served, task.signature.name)
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field ('signature_def')")
        unknown = [f for f in fields if f != "signature_def"]
        if unknown:
            raise invalid(f"metadata field {unknown[0]!r} is not supported; only 'signature_def' is")
        served = self._resolve(request.model_spec)
        response = self._MetadataResponse()
        self._fill_model_spec(response.model_spec, served, "")
        response.metadata["signature_def"].Pack(signature_def_map(served, self._SignatureDefMap()))
        return response

    def GetModelStatus(self, request: Any, context: Any) -> Any:
        spec = request.model_spec
        if not spec.name:
            raise invalid("model_spec.name is empty; name the model to ask about")
        if spec.WhichOneof("version_choice") == "version_label":
            versions = [self._service.models.resolve(spec.name, label=spec.version_label)]
        else:
            version = spec.version.value if spec.HasField("version") else None
            versions = self._service.models.statuses(spec.name, version)
        response = self._StatusResponse()
        for served in versions:
            status = response.model_version_status.add()
            status.version = served.version
            status.state = int(served.state)
            if served.error:
                status.status.error_code = 14 if served.state is VersionState.END else 2  # UNAVAILABLE / UNKNOWN
                status.status.error_message = served.error
        return response


    async def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        """Serve the request's ModelServerConfig from now on (off unless `--allow-config-reload`). Loading runs off
        the event loop; the answer comes once the new versions have loaded, with TF Serving's status codes."""
        if self._reloader is None:
            raise ServeError(ErrorKind.FAILED_PRECONDITION, "HandleReloadConfigRequest is not available here")
        await asyncio.get_running_loop().run_in_executor(None, self._reloader.reload_request, request.config)
        response = self._ReloadResponse()
        response.status.error_code = 0
        # TF Serving reports the increase of each TensorFlow monitoring metric asked for, 0 for one it does not
        # have; kdeploy has none of TensorFlow's, so each is 0.
        for name in request.metric_names:
            metric = response.metric.add()
            metric.name = name
            metric.int64_value_increase = 0
        return response


def _predict_signature(served: ServedVersion, name: str) -> ModelSignature:
    """The signature a Predict names; an unknown name is FAILED_PRECONDITION, as TF Serving answers it."""
    try:
        return tasks.signature_of(served, name)
    except SignatureError as exc:
        raise ServeError(ErrorKind.FAILED_PRECONDITION,
                         f'Serving signature key "{name or DEFAULT_SIGNATURE}" not found ({exc})') from None


def _input_spec(signature: ModelSignature, name: str) -> TensorSpec:
    try:
        return signature.input(name)
    except SignatureError as exc:
        raise invalid(str(exc)) from None


def _fill_classifications(result: Any, found: tasks.Classifications) -> None:
    for row in found.rows():
        classes = result.classifications.add().classes
        for label, score in row:
            entry = classes.add()
            entry.label = label
            entry.score = score


def _fill_regressions(result: Any, values: list[float]) -> None:
    for value in values:
        result.regressions.add().value = value


def signature_def_map(served: ServedVersion, target: Any) -> Any:
    """Fill a SignatureDefMap with the version's signatures, as GetModelMetadata and REST `/metadata` answer them.

    A SavedModel served by the savedmodel backend answers its SignatureDefs as stored, every one of them (tensor
    names, `defaults`, unknown ranks, `__saved_model_init_op`), as TF Serving does; other versions answer their
    manifest's signatures in the same form.
    """
    manifest, backend = served.loaded()  # once: the version may unload between two calls
    stored = stored_signature_defs(backend)
    if stored:
        for name, serialized in stored.items():
            target.signature_def[name].ParseFromString(serialized)
        return target
    for name, signature in manifest.signatures.items():
        _fill_signature_def(target.signature_def[name], signature)
    return target


def signature_tensor_names(signature: ModelSignature) -> tuple[list[str], list[str]]:
    """Tensor names for a signature's inputs and outputs, as a Keras export's SavedModel names them (kdeploy does
    not keep the graph's own names): `NAME_INPUT:0` and `StatefulPartitionedCall:INDEX`."""
    return ([f"{signature.name}_{spec.name}:0" for spec in signature.inputs],
            [f"StatefulPartitionedCall:{index}" for index in range(len(signature.outputs))])


def _fill_signature_def(target: Any, signature: ModelSignature) -> None:
    """A SignatureDef as TF Serving describes it, with the signature's method_name."""
    input_names, output_names = signature_tensor_names(signature)
    for spec, tensor_name in zip(signature.inputs, input_names):
        _fill_tensor_info(target.inputs[spec.name], tensor_name, spec)
    for spec, tensor_name in zip(signature.outputs, output_names):
        _fill_tensor_info(target.outputs[spec.name], tensor_name, spec)
    target.method_name = METHOD_PREFIX + signature.method


def _fill_tensor_info(info: Any, tensor_name: str, spec: TensorSpec) -> None:
    info.name = tensor_name
    info.dtype = dtype_by_name(spec.dtype).tf_enum
    if spec.any_shape:
        info.tensor_shape.unknown_rank = True
        return
    for dim in spec.shape:
        info.tensor_shape.dim.add().size = -1 if dim is None else dim
