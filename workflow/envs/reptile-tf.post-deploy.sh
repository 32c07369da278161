#!/usr/bin/env bash
# Run by snakemake inside the new conda env, from the project root: install reptile-tf itself.
set -euo pipefail
python -m pip install --no-deps -e .
