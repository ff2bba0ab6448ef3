"""The examples run as a user would run them: real subprocesses, real stores."""

import json
import os
import subprocess
import sys
from pathlib import Path

from featstore import presets

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_layer_ablation_finds_the_signal_layers_and_computes_nothing_the_second_time(sanity_dir, tmp_path):
    command = [sys.executable, str(EXAMPLES / "layer_ablation.py"), "--dataset", "sanity", "--num-runs", "3",
               "--configs", "svd", "stats", "--output-dir", str(tmp_path / "out"), "--store", str(tmp_path / "store"),
               "--device", "cpu"]
    first = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ | {"MPLBACKEND": "Agg"})
    assert first.returncode == 0, first.stderr
    assert "features: 32 computed (32 new), 0 reused" in first.stderr
    second = subprocess.run(command, capture_output=True, text=True, check=False, env=os.environ | {"MPLBACKEND": "Agg"})
    assert second.returncode == 0, second.stderr
    assert "features: 0 computed, 32 reused" in second.stderr

    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["features"]["computed"] == 0 and results["configs"] == ["svd", "stats"]
    signal = {presets.layer_name(i) for i in presets.signal_layers(8)}
    for config in ("svd", "stats"):
        means = results["summary"][config]
        best = sorted(means, key=lambda layer: -means[layer]["mean"])[: len(signal)]
        assert set(best) == signal, (config, means)
        assert all(len(runs) == 3 for runs in results["accuracy"][config].values())
        assert min(means[s]["mean"] for s in signal) > 2 * max(means[o]["mean"] for o in means if o not in signal)
    assert "the preset planted the signal in layer_002..layer_003: found" in second.stderr
    table = (tmp_path / "out" / "results.md").read_text().splitlines()
    assert table[2] == "| layer | svd | stats |" and len(table) == 4 + 8
    assert (tmp_path / "out" / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timeline = results["timeline"]
    assert timeline["total"] >= timeline["training"] > 0 and timeline["build_compute"] == 0
