"""What every part of the ``TrtEngine`` spec model shares: the base model (camelCase aliases,
``extra="forbid"``, frozen) and the constrained field types, each with the CRD's pattern or rule."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

Precision = Literal["fp32", "tf32", "fp16", "bf16", "int8", "fp8"]
Backend = Literal["tensorrt", "onnxruntime"]
Dim = Annotated[int, Field(ge=1, le=1048576)]
Dims = Annotated[list[Dim], Field(min_length=1, max_length=8)]
# pvc://CLAIM/path, s3://BUCKET/key, gs://BUCKET/object, https://HOST/path (no user:password@),
# hf://ORG/REPO[@REVISION]/path, or a relative path on the storage claim (the CRD's pattern).
URI_PATTERN = (
    r"^(pvc://[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/\S+"
    r"|(s3|gs)://[a-z0-9][-a-z0-9._]{1,220}[a-z0-9]/\S+"
    r"|https://[^\s/@?#]+/\S+"
    r"|hf://[A-Za-z0-9][-A-Za-z0-9_.]*/[A-Za-z0-9][-A-Za-z0-9_.]*(@[^\s/]+)?/\S+"
    r"|[A-Za-z0-9_][^\s:]*)$"
)


def _no_dotdot(uri: str) -> str:
    if ".." in uri:  # the CRD's CEL rule on every URI
        raise ValueError("a URI must not contain '..'")
    return uri


Uri = Annotated[str, Field(max_length=1024, pattern=URI_PATTERN), AfterValidator(_no_dotdot)]
Sha256 = Annotated[str, Field(pattern=r"^[a-f0-9]{64}$")]
SecretName = Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")]
# An object name (DNS subdomain), as the CRD's route references take it.
Name = Annotated[
    str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
]
Quantity = Annotated[
    str, Field(max_length=32, pattern=r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
]
# What the worker's calibrator does (trtops_worker.builder.precision.MODELOPT_CALIBRATION_METHODS):
# ModelOpt offers entropy and max; a method it would silently replace is refused at admission.
CalibrationMethod = Literal["entropy", "max"]
# A label key ([DNS subdomain/]name) or "" (with operator Exists: every key); a label value.
TaintKey = Annotated[
    str,
    Field(
        max_length=316,
        pattern=r"^((([a-z0-9]([-a-z0-9]*[a-z0-9])?)(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$",
    ),
]
TaintValue = Annotated[
    str, Field(max_length=63, pattern=r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
]


class SpecModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


def https_pinned(uri: str, sha256: str | None, field: str) -> None:
    # The CRD's CEL rule, with its message: a web server gives no integrity of its own.
    if uri.startswith("https://") and not sha256:
        raise ValueError(f"{field}.sha256 is required when {field}.uri is https://")
