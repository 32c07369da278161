"""The `reptile-tf` entry point: argument parsing only.

Each subcommand lives in its own module, which defines `configure_parser(parser)` and
`main(args) -> int`. Modules are imported lazily so that `reptile-tf fetch` does not pay
for importing TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from reptile_tf.errors import UserError

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("reptile_tf.data.fetch", "download and verify raw Omniglot / Mini-ImageNet files"),
    "prepare": ("reptile_tf.data.prepare", "build the TFDS datasets from fetched files"),
    "train": ("reptile_tf.train", "meta-train Reptile, FOMAML or MAML into a run directory"),
    "evaluate": ("reptile_tf.evaluate", "score a run's checkpoint on fixed evaluation episodes"),
    "track": ("reptile_tf.tracking", "mirror run directories into MLflow"),
    "tables": ("reptile_tf.tables", "aggregate runs into paper-style tables; `tables diff` compares two"),
    "theory": ("reptile_tf.theory.cli", "numerical checks of the Reptile paper's theory (section 5, 6.2)"),
    "bench": ("reptile_tf.bench", "throughput benchmarks against the measured matmul peak"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reptile-tf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or only == name:
            module = importlib.import_module(module_name)
            module.configure_parser(p)
            p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Only the chosen subcommand's module is imported (keeps `--help` and `fetch` fast).
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only=only if only else "__none__")
    args = parser.parse_args(argv)
    try:
        return int(args._module.main(args) or 0)
    except UserError as err:
        print(f"reptile-tf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"reptile-tf {args.command}: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
