"""A member whose outputs are scripted by stream time, for the listener's tests: the unit under test
is the listener (buffer, hops, confirm, cooldown, sinks), so its members say exactly what the
script says. Its "checkpoint" is a JSON file: {"events": [[start_s, end_s, class_key], ...]};
a window votes "emergency", with that class, when it overlaps an event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ensemble.core.audio import SAMPLE_RATE
from ensemble.core.labels import load_taxonomy
from ensemble.core.member import MemberModule, MemberOutput


@dataclass(frozen=True)
class ScriptConfig:
    normal_class: str = "indoor"


class ScriptModel(nn.Module):
    config_class = ScriptConfig

    def __init__(self, config: ScriptConfig):
        super().__init__()
        self.config = config


class ScriptedMember(MemberModule):
    model_class = ScriptModel

    def __init__(self, model: ScriptModel, events: list = (), transcript: str | None = None):
        super().__init__(model)
        self.transcript = transcript  # said in every window that overlaps an event
        self.events = [(float(s), float(e), str(k)) for s, e, k in events]
        self.taxonomy = load_taxonomy()
        self.windows: list[tuple[float, float]] = []  # what it was asked about

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", **overrides) -> ScriptedMember:
        script = json.loads(Path(path).read_text())
        return cls(ScriptModel(ScriptConfig()), script["events"], script.get("transcript")).eval()

    def predict_step(self, batch: dict, batch_idx: int = 0) -> MemberOutput:
        starts = batch["start_s"].tolist()
        ends = [s + int(n) / SAMPLE_RATE for s, n in zip(starts, batch["n_valid"], strict=True)]
        K = self.taxonomy.n_classes
        p, probs = torch.zeros(len(starts)), torch.zeros(len(starts), K)
        said = []
        for b, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
            self.windows.append((lo, hi))
            hit = [k for s, e, k in self.events if s < hi and e > lo]
            p[b] = 1.0 if hit else 0.0
            key = hit[0] if hit else self.model.config.normal_class
            probs[b, self.taxonomy.id(key) - 1] = 1.0
            said.append(self.transcript if hit and self.transcript else "")
        return MemberOutput(p_emergency=p, vote=p > 0.5, class_probs=probs, transcript=said)


def script_config(
    folder: Path, events: list, n_members: int = 2, transcript: str | None = None
) -> Path:
    """An ensemble config of `n_members` scripted members (majority vote) in `folder`."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "script.json"
    script.write_text(json.dumps({"events": events, "transcript": transcript}))
    config = {
        "members": [
            {
                "name": f"scripted{i}",
                "class_path": "scripted.ScriptedMember",
                "checkpoint": script.name,
            }
            for i in range(n_members)
        ],
        "vote": {"rule": "majority", "tie_break": "emergency"},
    }
    path = folder / "ensemble.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
