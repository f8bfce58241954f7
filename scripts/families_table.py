"""The README's table of model families, generated from the facts the service computes at load.

Each row is a tiny random model of the family (``tests/families/zoo.py``, built from transformers' config
classes: its layer layout is the tiny config's, two layers); the columns are what ``/models`` reports for it.

    PYTHONPATH=. .venv/bin/python scripts/families_table.py            # print the table
    PYTHONPATH=. .venv/bin/python scripts/families_table.py --write    # replace it in README.md
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

from schemas.common import Support
from service.explain import methods as registry
from service.models.facts import facts_of
from service.usecases.model_info import method_supports, serving_supports
from tests.families import zoo

START, END = "<!-- families:start -->", "<!-- families:end -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _methods(supports: dict[str, Support]) -> str:
    refused = [name for name, s in supports.items() if not s.supported]
    if not refused:
        return f"all {len(supports)}"
    return "all but " + ", ".join(f"`{name}`" for name in refused)


def _yes(support: Support) -> str:
    return "yes" if support.supported else "no"


def row(family: str) -> str:
    model, _ = zoo.build(family)
    facts = facts_of(model)
    capture = facts.attention
    layers = ", ".join(map(str, capture.layers)) if capture is not None else ""
    attention = f"layers {layers}: {capture.describe()}" if capture is not None else "none"
    generation, batching = serving_supports(model)
    kinds = ", ".join(facts.layer_kinds)
    cells = [
        f"`{family}`",
        f"`{facts.model_class}`",
        kinds,
        attention,
        _methods(method_supports(facts)),
        _yes(batching),
        _yes(generation),
    ]
    return "| " + " | ".join(cells) + " |"


def table() -> str:
    """The markdown table, one row per zoo family (deterministic: no timings, no random values)."""
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    header = [
        f"Methods: {', '.join(f'`{n}`' for n in registry.names())}. Layer kinds are per decoder layer of the "
        "tiny test config (two layers); attention capture names the decoder layers whose weights are returned.",
        "",
        "| Family | Class | Layer kinds | Attention capture | Methods | Batching | Generation |",
        "|---|---|---|---|---|---|---|",
    ]
    return "\n".join(header + [row(family) for family in zoo.ALL])


def replace(text: str, body: str) -> str:
    start, end = text.index(START) + len(START), text.index(END)
    return text[:start] + "\n" + body + "\n" + text[end:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    body = table()
    if args.write:
        README.write_text(replace(README.read_text(), body))
    else:
        print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
