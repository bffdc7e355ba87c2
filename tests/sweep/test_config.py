"""SweepConfig takes Python values; the CLI's strings are parsed by the CLI (one place each)."""

from __future__ import annotations

import json

import pytest

from cortexmap.cli.map_cmds import parse_method, sweep_config
from cortexmap.errors import CortexmapError
from cortexmap.interventions import InterventionSpec
from cortexmap.sweep.config import SweepConfig


def test_python_values_are_normalised_and_recorded_as_json() -> None:
    config = SweepConfig(tasks=["ioi", "capitals"], interventions=["zero", InterventionSpec("amplify", 0.5)])
    assert config.tasks == ("ioi", "capitals") and [s.kind for s in config.specs] == ["zero", "amplify"]
    assert config.labels == ["zero", "amplify:0.5"]
    data = config.to_dict()
    assert json.loads(json.dumps(data)) == data and data["tasks"] == ["ioi", "capitals"]
    assert data["interventions"] == ["zero", "amplify:0.5"] and data["batch_size"] is None
    assert SweepConfig(tasks="ioi").tasks == ("ioi",)  # one name may be a string
    assert SweepConfig().identity() == SweepConfig(device="cpu", batch_size=64).identity()  # speed, not results


@pytest.mark.parametrize("kwargs,message", [
    ({"tasks": "ioi,capitals"}, "list of names"),
    ({"interventions": ["zero,mean"]}, "InterventionSpec or labels"),
    ({"interventions": []}, "no intervention"),
    ({"method": "attribution+verify:5"}, "unknown method"),
    ({"method": "exact", "verify": 3}, "method 'attribution' only"),
    ({"batch_size": "auto"}, "impossible batch size"),
])
def test_cli_mini_languages_are_refused_by_the_library(kwargs, message) -> None:  # noqa: ANN001
    with pytest.raises(CortexmapError, match=message):
        SweepConfig(**kwargs)


def test_the_cli_parses_its_strings_into_the_same_values() -> None:
    assert parse_method("attribution+verify:5") == ("attribution", 5) and parse_method("screen") == ("screen", 0)
    with pytest.raises(CortexmapError, match="attribution\\+verify:K"):
        parse_method("attribution+verify:0")
    parsed = sweep_config(tasks="ioi, capitals", interventions="zero,amplify:0.5", method="attribution+verify:3",
                          batch_size="128", n_prompts=8)
    assert parsed == SweepConfig(tasks=["ioi", "capitals"], interventions=["zero", "amplify:0.5"], method="attribution",
                                 verify=3, batch_size=128, n_prompts=8)
    assert sweep_config(tasks="all", interventions="zero", method="auto").batch_size is None
