"""Validating admission: the checks CRD schemas cannot express, and how the webhook registers itself."""

from __future__ import annotations

import base64
import copy
import datetime
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from apx.operator.admission import ServiceWebhookServer
from apx.operator.handlers import validate_object
from e2e.services import free_port

ROOT = Path(__file__).resolve().parents[2]


def _doc(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "samples" / name).read_text())
    loaded["metadata"]["namespace"] = "default"
    return loaded


def test_valid_objects_are_admitted() -> None:
    for name in (
        "01-product-payments.yaml",
        "05-route-payments-sync.yaml",
        "04-policybundle-payments-1.3.0.yaml",
    ):
        document = _doc(name)
        validate_object(document["kind"], document, None)


def test_schema_errors_are_rejected_naming_the_field() -> None:
    product = _doc("01-product-payments.yaml")
    product["spec"]["plans"][0]["rateLimit"]["burst"] = 1
    with pytest.raises(kopf.AdmissionError) as error:
        validate_object("Product", product, None)
    assert "spec.plans[0].rateLimit.burst" in str(error.value)


def test_breaking_change_without_major_bump_is_rejected_against_the_old_object() -> None:
    old = _doc("04-policybundle-payments-1.3.0.yaml")
    new = copy.deepcopy(old)
    new["spec"]["version"] = "1.4.0"
    new["spec"]["compat"] = "breaking"
    with pytest.raises(kopf.AdmissionError) as error:
        validate_object("PolicyBundle", new, old)
    assert "spec.compat" in str(error.value)
    new["spec"]["version"] = "2.0.0"
    validate_object("PolicyBundle", new, old)


def test_content_change_without_version_bump_is_rejected() -> None:
    old = _doc("04-policybundle-payments-1.3.0.yaml")
    new = copy.deepcopy(old)
    new["spec"]["cors"]["maxAgeSeconds"] = 60
    with pytest.raises(kopf.AdmissionError) as error:
        validate_object("PolicyBundle", new, old)
    assert "without a version bump" in str(error.value)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apx-webhook.apx-system.svc")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("apx-webhook.apx-system.svc")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert = directory / "tls.crt"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private = directory / "tls.key"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ca = directory / "ca.crt"
    ca.write_bytes(cert.read_bytes())
    return cert, private, ca


@pytest.mark.asyncio
async def test_webhook_registers_itself_as_a_service_with_the_ca_bundle(tmp_path: Path) -> None:
    cert, key, ca = _certificates(tmp_path)
    server = ServiceWebhookServer(
        service_name="apx-webhook",
        service_namespace="apx-system",
        port=free_port(),
        certfile=str(cert),
        pkeyfile=str(key),
        cafile=str(ca),
    )

    async def review(*_: Any, **__: Any) -> Any:
        raise AssertionError("not called")

    configs = server(review)
    config = await configs.__anext__()
    await configs.aclose()
    assert "url" not in config
    assert config["service"] == {"namespace": "apx-system", "name": "apx-webhook", "port": 443, "path": "/"}
    assert base64.b64decode(config["caBundle"] or "") == ca.read_bytes()


def test_new_bundle_version_that_would_drop_a_pinned_version_is_refused_naming_the_routes() -> None:
    old = _doc("04-policybundle-payments-1.3.0.yaml")
    new = copy.deepcopy(old)
    new["spec"]["version"] = "1.4.0"
    pins = {
        "1.2.0": ["default/payments-charges", "default/payments-legacy"],
        "1.3.0": ["default/ledger-exports"],
    }
    asked: list[tuple[str, str]] = []

    def pinned(namespace: str, bundle: str) -> dict[str, list[str]]:
        asked.append((namespace, bundle))
        return pins

    with pytest.raises(kopf.AdmissionError) as error:
        validate_object("PolicyBundle", new, old, pinned)
    message = str(error.value)
    assert "spec.version" in message and "1.2.0" in message
    assert "default/payments-charges" in message and "default/payments-legacy" in message
    assert "default/ledger-exports" not in message  # 1.3.0 stays served as N-1
    assert asked == [("default", "payments-policy")]
    # Once no Route pins 1.2.0, the same apply is admitted.
    del pins["1.2.0"]
    validate_object("PolicyBundle", new, old, pinned)
