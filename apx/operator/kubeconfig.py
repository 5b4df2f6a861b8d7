"""Where a person's commands go: the kubeconfig context, resolved the way kubectl resolves it.

Called by ``apx rollout`` (``apx.operator.rollout_cli``). The operator itself
logs in through kopf (service account first, ``discover_connection``); a
command line tool must instead follow kubectl's rules: ``--kubeconfig``, else
every file of ``KUBECONFIG`` merged (the first file that sets a value wins),
else ``~/.kube/config``; ``--context`` or the current context; the namespace
of that context or ``default``; in-cluster credentials only when there is no
kubeconfig at all. kopf's own kubeconfig login reads the current context only
and the official client library is not a dependency of APX (the operator's
launcher keeps it out of the process), so the few rules are written here on
PyYAML: tokens (inline or ``tokenFile``), client certificates and CAs (paths
or inline data), ``insecure-skip-tls-verify`` and exec credential plugins
(``client.authentication.k8s.io``), which managed clusters use.

The result is an ``apx.controllers.appliers.kube.Connection``, so the CLI
talks through the same ``KubeClient`` (and error policy) as the operator.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from apx.controllers.appliers.kube import Connection

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
EXEC_TIMEOUT_SECONDS = 30.0


class KubeconfigError(Exception):
    """The kubeconfig cannot be used (missing, unreadable, unknown context); the message says why."""


@dataclass(frozen=True, slots=True)
class KubeTarget:
    """A resolved context: how to connect and which namespace commands default to."""

    connection: Connection
    namespace: str
    context: str | None


def display_server(server: str) -> str:
    """The server address for messages: scheme, host and port, never user info or a query."""
    parts = urlsplit(server)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _kubeconfig_paths(explicit: str | None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    from_env = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in from_env.split(os.pathsep) if p.strip()]
    if paths:
        return paths
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


def _load_merged(paths: list[Path], explicit: bool) -> dict[str, Any]:
    """kubectl's merge: the first file that sets ``current-context`` or names an entry wins."""
    merged: dict[str, Any] = {"current-context": None, "contexts": {}, "clusters": {}, "users": {}}
    for path in paths:
        if not path.exists() and not explicit:
            continue  # kubectl skips missing files of KUBECONFIG, but not an explicit --kubeconfig
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise KubeconfigError(f"cannot read kubeconfig {path}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise KubeconfigError(f"kubeconfig {path} is not a mapping")
        if merged["current-context"] is None and loaded.get("current-context"):
            merged["current-context"] = str(loaded["current-context"])
        for section, key in (("contexts", "context"), ("clusters", "cluster"), ("users", "user")):
            for item in loaded.get(section) or []:
                if isinstance(item, dict) and "name" in item and item["name"] not in merged[section]:
                    merged[section][item["name"]] = dict(item.get(key) or {})
    return merged


class _SecretFiles:
    """Inline certificate/key data written to private temporary files (TLS loads them from files)."""

    def __init__(self) -> None:
        self._directory: str | None = None

    def write(self, name: str, data: bytes) -> str:
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="apx-kubeconfig-")
            atexit.register(shutil.rmtree, self._directory, True)
        path = Path(self._directory) / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)


_SECRET_FILES = _SecretFiles()


def _decoded(value: Any, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise KubeconfigError(f"{what} is not valid base64") from exc


def _exec_credential(spec: dict[str, Any], user_name: str) -> dict[str, Any]:
    """Run an exec credential plugin and return its ``ExecCredential.status``."""
    command = spec.get("command")
    if not command:
        raise KubeconfigError(f"user {user_name}: exec plugin has no command")
    args = [str(command), *(str(a) for a in spec.get("args") or [])]
    env = dict(os.environ)
    for entry in spec.get("env") or []:
        env[str(entry.get("name"))] = str(entry.get("value", ""))
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {
            "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
            "kind": "ExecCredential",
            "spec": {"interactive": False},
        }
    )
    try:
        completed = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=EXEC_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubeconfigError(f"user {user_name}: exec plugin {command} failed: {exc}") from exc
    if completed.returncode != 0:
        detail = (completed.stderr.strip().splitlines() or [f"exit code {completed.returncode}"])[-1]
        raise KubeconfigError(f"user {user_name}: exec plugin {command} failed: {detail}")
    try:
        status = json.loads(completed.stdout).get("status") or {}
    except (json.JSONDecodeError, AttributeError) as exc:
        raise KubeconfigError(f"user {user_name}: exec plugin {command} printed no ExecCredential") from exc
    if not isinstance(status, dict):
        raise KubeconfigError(f"user {user_name}: exec plugin {command} printed no ExecCredential status")
    return status


def _user_credentials(user: dict[str, Any], user_name: str) -> dict[str, Any]:
    """Token and client certificate paths of a kubeconfig user (running its exec plugin if any)."""
    token = user.get("token")
    if not token and user.get("tokenFile"):
        try:
            token = Path(str(user["tokenFile"])).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KubeconfigError(f"user {user_name}: cannot read tokenFile: {exc}") from exc
    certificate = user.get("client-certificate")
    key = user.get("client-key")
    if user.get("client-certificate-data"):
        data = _decoded(user["client-certificate-data"], f"user {user_name}: client-certificate-data")
        certificate = _SECRET_FILES.write("client.crt", data)
    if user.get("client-key-data"):
        data = _decoded(user["client-key-data"], f"user {user_name}: client-key-data")
        key = _SECRET_FILES.write("client.key", data)
    if isinstance(user.get("exec"), dict):
        status = _exec_credential(user["exec"], user_name)
        token = status.get("token") or token
        if status.get("clientCertificateData") and status.get("clientKeyData"):
            certificate = _SECRET_FILES.write("exec.crt", str(status["clientCertificateData"]).encode())
            key = _SECRET_FILES.write("exec.key", str(status["clientKeyData"]).encode())
    return {"token": token or None, "certificate_path": certificate, "private_key_path": key}


def _in_cluster() -> KubeTarget | None:
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    token_file = SERVICE_ACCOUNT_DIR / "token"
    if not host or not port or not token_file.exists():
        return None
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
    host = f"[{host}]" if ":" in host else host
    connection = Connection(
        server=f"https://{host}:{port}",
        token=token_file.read_text().strip(),
        ca_path=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
    )
    return KubeTarget(connection, namespace or "default", None)


def resolve(kubeconfig: str | None = None, context: str | None = None) -> KubeTarget:
    """The connection and default namespace of ``context`` (or the current one), like kubectl."""
    paths = _kubeconfig_paths(kubeconfig)
    if not paths:
        in_cluster = None if context else _in_cluster()
        if in_cluster is not None:
            return in_cluster
        raise KubeconfigError("no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create ~/.kube/config")
    merged = _load_merged(paths, explicit=kubeconfig is not None)
    name = context or merged["current-context"]
    if not name:
        raise KubeconfigError("no current context in the kubeconfig; pass --context")
    if name not in merged["contexts"]:
        raise KubeconfigError(f"context {name} not found in the kubeconfig")
    entry = merged["contexts"][name]
    cluster_name, user_name = entry.get("cluster"), entry.get("user")
    cluster = merged["clusters"].get(cluster_name)
    if cluster is None or not cluster.get("server"):
        raise KubeconfigError(f"context {name}: cluster {cluster_name} has no server")
    if urlsplit(str(cluster["server"])).username is not None:
        # aiohttp refuses user info in the URL next to a token; kubectl users put it in a user entry.
        raise KubeconfigError(
            f"cluster {cluster_name}: the server URL must not contain credentials "
            f"({display_server(str(cluster['server']))}); put them in a user entry"
        )
    user = merged["users"].get(user_name, {}) if user_name else {}
    ca_data = None
    if cluster.get("certificate-authority-data"):
        ca_data = _decoded(cluster["certificate-authority-data"], f"cluster {cluster_name}: CA data")
    connection = Connection(
        server=str(cluster["server"]).rstrip("/"),
        ca_path=cluster.get("certificate-authority"),
        ca_data=ca_data,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        **_user_credentials(user, str(user_name)),
    )
    return KubeTarget(connection, str(entry.get("namespace") or "default"), str(name))
