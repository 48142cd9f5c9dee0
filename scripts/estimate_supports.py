"""Re-estimate the training support (``distformer.support.estimate_support``) in every shipped model's card.

Command: ``python scripts/estimate_supports.py [NAME ...]`` (default: every shipped model). Only the card's
``support`` changes; the weights and their checksum stay as they are.
"""

import json
import sys
from pathlib import Path

import torch

import distformer as dfm
from distformer.problems import get
from distformer.support import estimate_support

PRETRAINED = Path(dfm.__file__).parent / "pretrained"

for name in sys.argv[1:] or dfm.pretrained_names():
    model = dfm.pretrained(name)
    problem = get(model.card["problem"]["name"], **model.card["problem"]["options"])
    seed = model.card.get("training", {}).get("config", {}).get("seed", 0) + 3
    support = estimate_support(problem, generator=torch.Generator().manual_seed(seed), model=model)
    path = PRETRAINED / f"{name}.json"
    data = json.loads(path.read_text())
    data["card"]["support"] = support.to_dict()
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{name}: support re-estimated ({len(support.component_names) or len(support.parameter_names)} prior "
          f"coordinates, counts {dict(support.count_low)}..{dict(support.count_high)})")
