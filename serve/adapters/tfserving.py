"""TF Serving's gRPC API: `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`tensorflow.serving.ModelService` (GetModelStatus). Each RPC is decode → service → encode."""

from __future__ import annotations

from typing import Any

from kdeploy.contract.signature import ModelSignature, SignatureError, TensorSpec, dtype_by_name
from kdeploy.serve.models import ServedVersion, VersionState
from kdeploy.serve.service import DEFAULT_SIGNATURE, InferenceService, check_signature_name, deadline_of
from kdeploy.wire.errors import invalid
from kdeploy.wire.protos.messages import Protos
from kdeploy.wire.tensors import fill_tensor_proto, ndarray_from_tensor_proto

PREDICT_METHOD = "tensorflow/serving/predict"


class TfServingAdapter:
    """Servicer methods for TF Serving's PredictionService and ModelService."""

    def __init__(self, service: InferenceService, protos: Protos, max_tensor_bytes: int,
                 tensor_encoding: str = "typed") -> None:
        """
        Args:
            service: the inference service.
            protos: the message classes.
            max_tensor_bytes: largest tensor a typed field may expand to.
            tensor_encoding: how Predict answers carry values: `typed` (`float_val`..., TF Serving's default) or
                `content` (`tensor_content` bytes: less work for large outputs; clients using
                `tf.make_ndarray` read both).
        """
        self._service = service
        self._max_bytes = max_tensor_bytes
        self._encoding = tensor_encoding
        self._PredictResponse = protos.cls("tensorflow.serving.PredictResponse")
        self._MetadataResponse = protos.cls("tensorflow.serving.GetModelMetadataResponse")
        self._SignatureDefMap = protos.cls("tensorflow.serving.SignatureDefMap")
        self._StatusResponse = protos.cls("tensorflow.serving.GetModelStatusResponse")
        self.request_types = {
            "Predict": protos.cls("tensorflow.serving.PredictRequest"),
            "GetModelMetadata": protos.cls("tensorflow.serving.GetModelMetadataRequest"),
            "GetModelStatus": protos.cls("tensorflow.serving.GetModelStatusRequest"),
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
        check_signature_name(request.model_spec.signature_name)
        with self._service.serving(*self._spec(request.model_spec)) as served:
            signature = served.signature
            feed = {name: ndarray_from_tensor_proto(name, proto, _input_spec(signature, name), self._max_bytes)
                    for name, proto in request.inputs.items()}
            result = await self._service.infer_async(served, feed, list(request.output_filter), deadline_of(context))
        response = self._PredictResponse()
        for name, array in result.outputs.items():
            fill_tensor_proto(response.outputs[name], array, self._encoding)
        self._fill_model_spec(response.model_spec, served, DEFAULT_SIGNATURE)
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        fields = list(request.metadata_field)
        if not fields:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field ('signature_def')")
        unknown = [f for f in fields if f != "signature_def"]
        if unknown:
            raise invalid(f"metadata field {unknown[0]!r} is not supported; only 'signature_def' is")
        served = self._resolve(request.model_spec)
        signature_map = self._SignatureDefMap()
        _fill_signature_def(signature_map.signature_def[DEFAULT_SIGNATURE], served.signature)
        response = self._MetadataResponse()
        self._fill_model_spec(response.model_spec, served, "")
        response.metadata["signature_def"].Pack(signature_map)
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


def _input_spec(signature: ModelSignature, name: str) -> TensorSpec:
    try:
        return signature.input(name)
    except SignatureError as exc:
        raise invalid(str(exc)) from None


def _fill_signature_def(target: Any, signature: ModelSignature) -> None:
    """A SignatureDef as TF Serving describes a Keras export's `serving_default`."""
    for spec in signature.inputs:
        _fill_tensor_info(target.inputs[spec.name], f"serving_default_{spec.name}:0", spec)
    for index, spec in enumerate(signature.outputs):
        _fill_tensor_info(target.outputs[spec.name], f"StatefulPartitionedCall:{index}", spec)
    target.method_name = PREDICT_METHOD


def _fill_tensor_info(info: Any, tensor_name: str, spec: TensorSpec) -> None:
    info.name = tensor_name
    info.dtype = dtype_by_name(spec.dtype).tf_enum
    for dim in spec.shape:
        info.tensor_shape.dim.add().size = -1 if dim is None else dim
