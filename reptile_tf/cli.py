"""The `reptile-tf` entry point: argument parsing only.

Each subcommand lives in its own module, which defines `configure_parser(parser)` and
`main(args) -> int`. Modules are imported lazily so that `reptile-tf fetch` does not pay
for importing TensorFlow. The help a user sees is DESCRIPTION below; every option's default is
added to its help by HelpFormatter (tests/test_cli.py checks that every option has a help).
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
    "bench": ("reptile_tf.bench.cli", "throughput benchmarks against the measured matmul peak"),
}

DESCRIPTION = """\
Reproduce the Reptile paper (Nichol et al. 2018) and its baselines first-order MAML and MAML on
Omniglot and Mini-ImageNet. The usual order of the commands:

  reptile-tf fetch omniglot --dest data/raw/omniglot
  reptile-tf prepare omniglot --raw data/raw/omniglot --data-dir data/tfds
  reptile-tf train --algorithm reptile --dataset omniglot --ways 5 --shots 1 --seed 0 \\
      --iterations 2000 --out runs/demo/reptile
  reptile-tf evaluate runs/demo/reptile

Without --iterations, train runs the paper's full budget (hours to days on a CPU). The whole
grid runs as a pipeline: `make reproduce` (about 1 h on 2 CPU cores); see README.md.
`reptile-tf COMMAND --help` describes each command's options."""

EPILOG = ("More: README.md (quick start, presets, pipeline), docs/reference.md (the published numbers and "
          "hyperparameters, with sources).")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says it or there is
    nothing to say (None: the help tells what happens; False: a switch that is off; empty lists)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or action.required
                or default is None or default is False or default is argparse.SUPPRESS
                or (isinstance(default, (list, tuple)) and not default)):
            return text
        return f"{text} (default: %(default)s)"


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), else the package's own."""
    from importlib import metadata

    try:
        return metadata.version("reptile-tf")
    except metadata.PackageNotFoundError:  # a checkout on sys.path without `pip install`
        from reptile_tf import __version__

        return __version__


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reptile-tf", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, title="commands")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
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
