"""An MLServer (1.7) runtime for one ONNX file with onnxruntime: what a user writes, since MLServer ships none.

The session uses onnxruntime's default options (idle threads spin); inputs and outputs go through MLServer's
NumpyCodec. Imported by MLServer's inference worker process by name, so it lives in its own module.
"""

from __future__ import annotations

import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        self.session = ort.InferenceSession(self.settings.parameters.uri, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feed = {request_input.name: NumpyCodec.decode_input(request_input) for request_input in payload.inputs}
        results = self.session.run(self.output_names, feed)
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(name, value)
                                          for name, value in zip(self.output_names, results)])
