"""TF Serving's `--ssl_config_file`: an `SSLConfig` text proto (tensorflow_serving/config/ssl_config.proto) whose
fields hold the PEM text itself, read into the server's TLS material."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdeploy.common.errors import UsageError
from kdeploy.serve.tls import TlsMaterial


def material_from_ssl_config(path: Path) -> TlsMaterial:
    """TF Serving's `--ssl_config_file`: an `SSLConfig` text proto holding the PEM text itself.

    As TF Serving: `client_verify: true` requires a client certificate signed by `custom_ca`; without it `custom_ca`
    is not used. Unlike TF Serving, `client_verify` without `custom_ca` is refused (TF Serving would fall back to
    gRPC's default roots, public CAs, which is rarely meant for client certificates).

    Raises:
        UsageError: for a file that is missing, not an SSLConfig, or lacks the key or certificate.
    """
    from google.protobuf import text_format

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--ssl-config-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--ssl-config-file {path}: cannot read it ({exc})") from None
    config = ssl_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise UsageError(f"--ssl-config-file {path}: not a TF Serving SSLConfig text proto ({exc})") from None
    if not config.server_key or not config.server_cert:
        raise UsageError(f"--ssl-config-file {path}: server_key and server_cert must both hold PEM text")
    if config.client_verify and not config.custom_ca:
        raise UsageError(f"--ssl-config-file {path}: client_verify needs custom_ca (the CA client certificates "
                         "must chain to)")
    return TlsMaterial(config.server_cert.encode(), config.server_key.encode(),
                       config.custom_ca.encode() if config.client_verify else None)


def ssl_config_class() -> Any:
    """`tensorflow.serving.SSLConfig` (tensorflow_serving/config/ssl_config.proto: same package, names and numbers).

    Four scalar fields, built here rather than compiled into the vendored descriptor set: the message never travels
    on the wire, it is only a configuration file's text format (and the tensorflow-serving-api wheel lacks it).
    """
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    file_proto = descriptor_pb2.FileDescriptorProto(name="tensorflow_serving/config/ssl_config.proto",
                                                    package="tensorflow.serving", syntax="proto3")
    message = file_proto.message_type.add(name="SSLConfig")
    for number, name in enumerate(("server_key", "server_cert", "custom_ca", "client_verify"), start=1):
        kind = field.TYPE_BOOL if name == "client_verify" else field.TYPE_STRING
        message.field.add(name=name, number=number, type=kind, label=field.LABEL_OPTIONAL, json_name=name)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.SSLConfig"))
