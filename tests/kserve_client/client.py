"""Calls a KServe v2 REST server with KServe's own Python client (`kserve.InferenceRESTClient`, protocol v2).

Run in build/kserve-venv (tests/kserve_client/setup_venv.sh), not the project's venv: `python client.py URL MODEL`.
Sends one JSON request and one with binary tensors, and prints what came back as one JSON line.
"""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    report = {"live": await client.is_server_live(url), "ready": await client.is_server_ready(url),
              "model_ready": await client.is_model_ready(url, model),
              "unknown_ready": await client.is_model_ready(url, "no-such-model")}
    x = np.arange(8, dtype=np.int64).reshape(2, 4)
    for binary in (False, True):
        tensor = InferInput("x", list(x.shape), "INT64")
        tensor.set_data_from_numpy(x, binary_data=binary)
        request = InferRequest(model_name=model, infer_inputs=[tensor], request_id=f"kserve-{binary}")
        response = await client.infer(url, request, model_name=model)
        report["binary" if binary else "json"] = {"id": response.id, "y": response.outputs[0].as_numpy().tolist()}
    await client.close()
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
