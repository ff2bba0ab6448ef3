"""The examples run as a user would run them: real subprocesses, real stores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import featstore
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


def test_quickstart_probes_the_stores_features_and_finds_the_signal_layers(sanity_dir, tmp_path):
    store = str(tmp_path / "store")
    command = [sys.executable, str(EXAMPLES / "quickstart.py"), "--dataset", "sanity", "--store", store]
    unbuilt = subprocess.run(command, capture_output=True, text=True, check=False)
    assert unbuilt.returncode == 1 and unbuilt.stderr.startswith(f"error: no featstore at {store}; build one first")
    assert "Traceback" not in unbuilt.stderr
    featstore.build("sanity", ["svd"], store=store, progress=False)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    accuracy = {line.split()[0]: float(line.partition("probe accuracy ")[2].split()[0])
                for line in done.stdout.splitlines() if "probe accuracy" in line}
    signal = {presets.layer_name(i) for i in presets.signal_layers(8)}
    assert set(accuracy) == {"layer_000", "layer_007"} | signal, done.stdout  # the first, last and signal layers
    # 10 classes: chance is 0.1, and the signal layers' 16 singular values give a 256-row probe 0.5-0.7
    assert min(accuracy[s] for s in signal) > 0.45 and max(accuracy["layer_000"], accuracy["layer_007"]) < 0.25, accuracy
    again = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    assert [line.partition("  (")[0] for line in again.splitlines()] == \
        [line.partition("  (")[0] for line in done.stdout.splitlines()]  # seeded: the same accuracies every run


def test_layer_ablation_refuses_an_output_dir_it_cannot_make_before_building_anything(sanity_dir, tmp_path):
    (tmp_path / "out").write_text("a file of the user's")
    done = subprocess.run([sys.executable, str(EXAMPLES / "layer_ablation.py"), "--dataset", "sanity", "--num-runs", "1",
                           "--output-dir", str(tmp_path / "out"), "--store", str(tmp_path / "store"), "--device", "cpu"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 2 and f"--output-dir {tmp_path / 'out'}: File exists" in done.stderr, done.stderr
    assert not (tmp_path / "store").exists() and (tmp_path / "out").read_text() == "a file of the user's"


def test_layer_ablation_holds_rows_out_of_a_single_split_and_takes_only_the_layers_asked_for(sanity_dir, tmp_path):
    """A researcher's dataset: one split, and a column besides the layers that no featurizer takes."""
    import datasets
    import numpy as np

    saved = datasets.load_from_disk(str(sanity_dir))
    one = datasets.concatenate_datasets([saved["train"], saved["test"]])
    one = one.add_column("notes", np.zeros((len(one), 3), np.float32).tolist())
    datasets.DatasetDict({"train": one}).save_to_disk(str(tmp_path / "one"))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(EXAMPLES / "layer_ablation.py"), "--dataset", str(tmp_path / "one"),
                           "--layers", "layer_*", "--num-runs", "2", "--configs", "svd", "--test-fraction", "0.25",
                           "--output-dir", str(out), "--store", str(tmp_path / "store"), "--device", "cpu"],
                          capture_output=True, text=True, check=False, env=os.environ | {"MPLBACKEND": "Agg"})
    assert done.returncode == 0, done.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["layers"] == [presets.layer_name(i) for i in range(8)]
    assert results["rows"] == {"train": len(one) - len(one) // 4, "test": len(one) // 4, "test_split": "0.25 of train"}
    means = results["summary"]["svd"]
    signal = {presets.layer_name(i) for i in presets.signal_layers(8)}
    assert set(sorted(means, key=lambda layer: -means[layer]["mean"])[: len(signal)]) == signal, means


def test_custom_featurizer_builds_loads_and_is_reused_from_the_cli_until_its_helper_changes(sanity_dir, tmp_path):
    """The example defines its featurizer in the script (run as __main__); the CLI imports the same
    file as a module and must find the same entries; an edited helper makes new ones."""
    import numpy as np

    import featstore

    script = tmp_path / "custom_featurizer.py"
    script.write_text((EXAMPLES / "custom_featurizer.py").read_text())
    store = str(tmp_path / "store")

    def run(*command):
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run(sys.executable, str(script), "--dataset", "sanity", "--store", store, "--device", "cpu")
    assert first.startswith("row_norm_profile:k=8: 16 computed, 0 reused")
    scores = {line.split()[0]: float(line.split("class separation")[1].split()[0]) for line in first.splitlines()[1:]}
    signal = {presets.layer_name(i) for i in presets.signal_layers(8)}
    assert min(scores[s] for s in signal) > 2 * max(v for layer, v in scores.items() if layer not in signal)
    assert run(sys.executable, str(script), "--dataset", "sanity", "--store", store).startswith(
        "row_norm_profile:k=8: 0 computed, 16 reused")
    cli = [sys.executable, "-m", "featstore.cli", "build", "-d", "sanity", "-f",
           "custom_featurizer:row_norm_profile:k=8", "--store", store, "--json", "--no-progress"]
    assert json.loads(run(*cli))["computed"] == 0

    x = featstore.read_column(featstore.sources.load_source("sanity").splits["train"]._data, "layer_002")
    norms = np.sort(np.linalg.norm(x.astype(np.float64), axis=2), axis=1)[:, ::-1][:, :8]
    expected = norms / np.linalg.norm(x.reshape(len(x), -1).astype(np.float64), axis=1, keepdims=True)
    with featstore.open("sanity", store=store) as fs:
        np.testing.assert_allclose(fs.load("layer_002", "row_norm_profile:k=8").numpy(), expected, rtol=1e-5)

    script.write_text(script.read_text().replace("return x.norm(dim=2)", "return x.abs().sum(dim=2)"))
    assert json.loads(run(*cli))["computed"] == 16  # the helper changed: new entries, and only these
