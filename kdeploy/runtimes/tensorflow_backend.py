"""SavedModel backend through TensorFlow, run the way TF Serving runs it: the `serve` MetaGraph loaded into a
session, and each signature's tensors fed and fetched by the names its SignatureDef gives them.

TF Serving hands a request's tensors to `Session::Run` as they came: no shape check against the SignatureDef, so
`[2.0, 3.0, 4.0]` for a placeholder of shape `[-1, 1]` runs, and half_plus_two answers `[3.0, 3.5, 4.0]`; a graph
that cannot take a shape fails with TensorFlow's message. A concrete function from `tf.saved_model.load` refuses such
shapes, and Python's `Session.run` checks them too, so the signatures run as C++ callables
(`Session::MakeCallable`), which feed as TF Serving does. The same path serves TF1 graphs (variables, init ops,
assets) and TF2 SavedModels, whose MetaGraph TF Serving loads the same way.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2

from kdeploy.contract.signature import Feed, ModelSignature, SignatureError
from kdeploy.runtimes.savedmodel_signatures import SERVE_TAG, servable_signatures

logger = logging.getLogger(__name__)


class TensorFlowBackend:
    """A SavedModel's signatures, fed and fetched by the tensor names of its SignatureDefs."""

    format = "savedmodel"

    def __init__(self, path: Path, signature: ModelSignature | None) -> None:
        # `path` names saved_model.pb; TensorFlow loads the folder that holds it.
        folder = Path(path).parent
        self._graph = tf.Graph()
        self._session: Any = tf.compat.v1.Session(graph=self._graph)
        try:
            with self._graph.as_default():
                meta_graph = _load_meta_graph(self._session, folder)
            definitions = dict(meta_graph.signature_def)
            self.signature_defs: dict[str, bytes] = {name: d.SerializeToString() for name, d in definitions.items()}
            """Every SignatureDef of the MetaGraph as stored (serialized): what GetModelMetadata answers."""
            if signature is not None:
                if signature.name not in definitions:
                    raise SignatureError(f"{folder} has no signature {signature.name!r} (it has "
                                         f"{sorted(definitions)})")
                self.signatures: tuple[ModelSignature, ...] = (signature,)
            else:
                self.signatures, skipped = servable_signatures(definitions, folder)
                for reason in skipped:
                    logger.warning("signature %s is not served", reason)
            self._tensors = {s.name: _tensor_names(definitions[s.name], s) for s in self.signatures}
        except BaseException:
            self._session.close()
            raise
        self._callables: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._signature = self.signatures[0]

    @property
    def signature(self) -> ModelSignature:
        return self._signature

    def infer(self, feed: Feed) -> dict[str, np.ndarray]:
        return self.infer_signature(self._signature, feed)

    def infer_signature(self, signature: ModelSignature, feed: Feed) -> dict[str, np.ndarray]:
        """Run one of the SavedModel's signatures on the feed as it is (TensorFlow checks dtypes and shapes).

        Raises:
            SignatureError: when TensorFlow refuses the values (InvalidArgumentError: an Example it cannot parse, a
                shape the graph cannot take), with TensorFlow's first line, as TF Serving answers INVALID_ARGUMENT.
        """
        run = self._callable(signature)
        try:
            values = run(*(np.asarray(feed[name]) for name in signature.input_names))
        except tf.errors.InvalidArgumentError as exc:
            text = (exc.message or str(exc)).strip()
            raise SignatureError(f"TensorFlow refused the input: {text.splitlines()[0] if text else exc}") from None
        return {name: np.asarray(value) for name, value in zip(signature.output_names, values)}

    def _callable(self, signature: ModelSignature) -> Any:
        """The session callable of one signature, made at its first call (one per signature, reused by threads)."""
        run = self._callables.get(signature.name)
        if run is None:
            with self._lock:
                run = self._callables.get(signature.name)
                if run is None:
                    feeds, fetches = self._tensors[signature.name]
                    options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
                    # The C++ callable (Session::MakeCallable): no Python-side shape check of the feeds, as TF
                    # Serving's Session::Run; the public make_callable goes through Session.run, which checks.
                    run = self._session._make_callable_from_options(options)  # noqa: SLF001
                    self._callables[signature.name] = run
        return run

    def close(self) -> None:
        self._callables = {}
        self._session.close()


def _load_meta_graph(session: Any, folder: Path) -> Any:
    """Load the `serve` MetaGraph into the session (variables restored, init ops and assets run), quietly.

    Raises:
        SignatureError: when the folder has no such MetaGraph.
    """
    from tensorflow.python.saved_model import loader_impl

    loader = loader_impl.SavedModelLoader(str(folder))
    tags = {tag for graph in loader.saved_model.meta_graphs for tag in graph.meta_info_def.tags}
    if SERVE_TAG not in tags:
        raise SignatureError(f"{folder} has no MetaGraph tagged {SERVE_TAG!r} (its tags: {sorted(tags)}); TF Serving "
                             "loads that one")
    # SavedModelLoader.load is the loader behind the deprecated tf.compat.v1.saved_model.load, without its
    # deprecation warning on every load.
    return loader.load(session, [SERVE_TAG])


def _tensor_names(definition: Any, signature: ModelSignature) -> tuple[list[str], list[str]]:
    """The graph tensors of a signature's inputs and outputs, in the signature's order.

    Raises:
        SignatureError: when the SignatureDef lacks a tensor the signature names, or holds a sparse or ragged one.
    """
    def name_of(kind: str, infos: Any, key: str) -> str:
        info = infos.get(key) if key in infos else None
        if info is None:
            raise SignatureError(f"signature {signature.name!r} has no {kind} {key!r} (it has {sorted(infos)})")
        if info.WhichOneof("encoding") != "name":
            raise SignatureError(f"{kind} {key!r} of signature {signature.name!r} is not a dense tensor")
        return str(info.name)

    return ([name_of("input", definition.inputs, k) for k in signature.input_names],
            [name_of("output", definition.outputs, k) for k in signature.output_names])
