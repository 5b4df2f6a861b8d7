"""The ``apx`` command line: ``apx translate`` (offline, no cluster), ``apx operator run``, ``apx rollout``.

Entry point of the ``apx`` console script and of ``kubectl-apx`` (the same
commands as the kubectl plugin ``kubectl apx …``). ``rollout`` is
``apx.operator.rollout_cli``. ``translate`` reads YAML files or
folders, runs the same pure pipeline the operator runs (models → IR →
renderers) and prints every derived object plus the status each source object
would get.

Exit codes: 0 when every resource would be Ready, 1 when any would be Stalled
(messages on stderr), 2 when the input cannot be read.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from apx.controllers.pipeline import SECTIONS, compile_resources
from apx.operator.yaml_input import MAX_SOURCE_BYTES, InputError, check_size, load_all

EXIT_READY = 0
EXIT_STALLED = 1
EXIT_UNREADABLE = 2


def _yaml_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        # Only the folder itself: samples/ and samples/invalid/ are separate inputs.
        yield from sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    elif path.is_file():
        yield path
    else:
        raise InputError(f"{path}: no such file or directory")


def load_documents(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Every YAML document (a mapping) in the given files/folders, in order; ``-`` reads stdin."""
    documents: list[dict[str, Any]] = []
    for raw in paths:
        sources: list[tuple[str, str]] = []
        if raw == "-":
            sources.append(("<stdin>", _read_stdin()))
        else:
            try:
                files = list(_yaml_files(Path(raw)))
            except OSError as exc:
                raise InputError(f"{raw}: {exc.strerror or exc}") from None
            for file in files:
                try:
                    check_size(str(file), file.stat().st_size)
                    sources.append((str(file), file.read_text(encoding="utf-8")))
                except OSError as exc:
                    raise InputError(f"{file}: {exc.strerror or exc}") from None
                except UnicodeDecodeError:
                    raise InputError(f"{file}: not UTF-8 text (is it a binary file?)") from None
        for name, text in sources:
            loaded = load_all(name, text)
            for index, document in enumerate(loaded):
                if document is None:
                    continue
                if not isinstance(document, dict):
                    raise InputError(f"{name}: document {index + 1} is not a mapping")
                if document.get("kind") == "List" and isinstance(document.get("items"), list):
                    documents.extend(item for item in document["items"] if isinstance(item, dict))
                else:
                    documents.append(document)
    return documents


class _OutputDumper(yaml.SafeDumper):
    """Safe YAML output that also writes the OrderedDicts protobuf's JSON conversion returns.

    Renderers share read-only parts between documents (the Pub/Sub plan's storage and
    retry policies): each is written out where it appears, never as an anchor and alias.
    """

    def ignore_aliases(self, data: object) -> bool:
        return True


_OutputDumper.add_representer(OrderedDict, lambda dumper, data: dumper.represent_dict(dict(data)))


def _read_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream put in place of stdin (tests, embedding)
        return str(sys.stdin.read(MAX_SOURCE_BYTES + 1))
    data: bytes = stream.read(MAX_SOURCE_BYTES + 1)
    check_size("<stdin>", len(data))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError("<stdin>: not UTF-8 text (is it a binary file?)") from None


def _parse_only(value: str) -> tuple[str, ...]:
    chosen = tuple(part.strip() for part in value.split(",") if part.strip())
    unknown = [part for part in chosen if part not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    return chosen


def _build_parser(prog: str = "apx") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="APX: API management on Kubernetes.")
    from apx.dataplane.common.flags import add_version_flag

    add_version_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    translate = commands.add_parser(
        "translate",
        help="print what the operator would produce for some YAML, with no cluster",
        description=(
            "Translate Products, Routes and PolicyBundles into Envoy, Redis, Pub/Sub and Kubernetes "
            "objects plus the status each source would get. Several documents of one PolicyBundle "
            "are taken as successive applies, ordered by version (N and N-1 are served)."
        ),
    )
    translate.add_argument(
        "-f",
        "--filename",
        dest="paths",
        action="append",
        required=True,
        metavar="PATH",
        help="YAML file or folder (repeatable; - for stdin)",
    )
    translate.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format")
    translate.add_argument(
        "--only",
        type=_parse_only,
        default=SECTIONS,
        metavar="SECTIONS",
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    translate.add_argument("--project", default="apx-local", help="Google Cloud project for Pub/Sub names")
    translate.add_argument(
        "--operator-namespace", default="apx-system", help="namespace of the Envoy snapshot ConfigMap"
    )
    from apx.operator.rollout_cli import add_parser as add_rollout_parser

    add_rollout_parser(commands)
    operator = commands.add_parser("operator", help="run the operator")
    operator_commands = operator.add_subparsers(dest="operator_command", required=True)
    from apx.operator.flags import build_parser as build_operator_parser

    build_operator_parser(
        operator_commands.add_parser(
            "run", help="run the operator against the current cluster", description="Run the APX operator."
        )
    )
    return parser


def _translate(args: argparse.Namespace) -> int:
    try:
        documents = load_documents(args.paths)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    try:
        compiled = compile_resources(
            documents, project=args.project, operator_namespace=args.operator_namespace
        )
    except (RecursionError, MemoryError, TypeError, ValueError, AttributeError) as exc:
        # Inputs the models cannot even look at (say, metadata that is a
        # list) end here: one line, no traceback.
        print(f"error: input cannot be translated: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    output = compiled.to_json(args.only)
    if args.output == "json":
        sys.stdout.write(json.dumps(output, indent=2, sort_keys=True) + "\n")
    else:
        sys.stdout.write(
            yaml.dump(output, Dumper=_OutputDumper, sort_keys=True, default_flow_style=False, width=120)
        )
    stalled = compiled.stalled_messages()
    for line in stalled:
        print(f"stalled: {line}", file=sys.stderr)
    for kind, key in compiled.result.ignored:
        print(f"ignored: {kind or '<no kind>'} {key} is not an APX resource", file=sys.stderr)
    return EXIT_STALLED if stalled else EXIT_READY


def main(argv: Sequence[str] | None = None, prog: str = "apx") -> int:
    args = _build_parser(prog).parse_args(argv)
    if args.command == "translate":
        return _translate(args)
    if args.command == "rollout":
        from apx.operator.rollout_cli import run as run_rollout

        return run_rollout(args)
    if args.command == "operator":
        from apx.operator.launcher import block_unused_clients

        block_unused_clients()
        from apx.operator.main import run_from_args

        return run_from_args(args)
    raise AssertionError(f"unhandled command {args.command}")


def kubectl_main() -> int:
    """Entry point of the ``kubectl-apx`` console script: kubectl runs it for ``kubectl apx …``."""
    return main(prog="kubectl apx")


if __name__ == "__main__":
    sys.exit(main())
