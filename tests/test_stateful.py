"""Random sequences of build / failing build / edit data (saved again, or one value rewritten inside
its file) / edit featurizer / forget / gc / verify against
a model of what should be fresh: `status` always agrees with the model, and a build recomputes
exactly the slots the model says are not fresh (but for those a failed build may have stored
beyond its failure)."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_incremental import layers_of, patch_in_place, save_layers

import featstore
from featstore.errors import FeaturizerError
from featstore.featurizers import register
from featstore.store import Store

LAYERS = 3
SHARDS = 3  # data files: a value rewritten in place changes one of them


def _scaled(x, scale: float = 1.0):
    return x.reshape(len(x), -1)[:, :2] * scale


_FAIL_ON = [None]  # the first value of the layer that test_fails_on refuses


def _fails_on(x):
    if float(x[0, 0, 0]) == _FAIL_ON[0]:
        raise ValueError("boom")
    return x.reshape(len(x), -1)[:, :1]


class StoreModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.tmp = tempfile.mkdtemp()
        self.data = layers_of(LAYERS, rows=12)
        self.path = save_layers(f"{self.tmp}/data", self.data, SHARDS)
        self.store = f"{self.tmp}/store"
        Store.open(self.store, create=True)
        self.version = 0
        register(_scaled, "test_model", version=str(self.version))
        self.featurizers = ["raw", "test_model"]
        self.fresh = {(f"layer_{i}", f): False for i in range(LAYERS) for f in self.featurizers}
        self.maybe_stored = set()  # stale slots whose new entry a failed build (or a forget) may have left stored
        self.catalogued = set()  # slots the catalog has a row for, fresh or not (test_fails_on's too)
        self.edits = 0

    def teardown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    @rule()
    def build(self):
        report = featstore.build(self.path, self.featurizers, store=self.store, device="cpu")
        computed = {(e.layer, e.featurizer) for e in report.entries if e.status == "computed"}
        stale = {slot for slot, fresh in self.fresh.items() if not fresh}
        assert stale - self.maybe_stored <= computed <= stale
        self.fresh, self.maybe_stored = dict.fromkeys(self.fresh, True), set()
        self.catalogued |= set(self.fresh)

    @rule(layer=st.integers(0, LAYERS - 1))
    def failing_build(self, layer):
        """A featurizer fails on `layer`: the layers before it are catalogued (fresh); the ones
        after it may have been computed in another lane, stored but not catalogued."""
        _FAIL_ON[0] = float(self.data[f"layer_{layer}"][0, 0, 0])
        self.edits += 1  # a new version each time: it computes (and reaches `layer`) afresh
        register(_fails_on, "test_fails_on", version=str(self.edits), output_shape=lambda shape: (1,))
        with pytest.raises(FeaturizerError, match=f"test_fails_on on column 'layer_{layer}'"):
            featstore.build(self.path, [*self.featurizers, "test_fails_on"], store=self.store, device="cpu")
        for (name, f), fresh in self.fresh.items():
            if int(name.removeprefix("layer_")) < layer:
                self.fresh[(name, f)] = True
                self.catalogued |= {(name, f), (name, "test_fails_on")}
                self.maybe_stored.discard((name, f))
            elif not fresh:
                self.maybe_stored.add((name, f))

    @rule(layer=st.integers(0, LAYERS - 1), row=st.integers(0, 11))
    def edit_data(self, layer, row):
        self.edits += 1  # every edit makes bytes never seen before
        self.data[f"layer_{layer}"][row, 0, 0] += self.edits
        save_layers(f"{self.tmp}/data", self.data, SHARDS)
        for f in self.featurizers:
            self.fresh[(f"layer_{layer}", f)] = False

    @rule(layer=st.integers(0, LAYERS - 1), row=st.integers(0, 11))
    def edit_in_place(self, layer, row):
        """Only the file holding the row changes: the others' digests vouch for their rows."""
        self.edits += 1
        values = self.data[f"layer_{layer}"]
        before = values[row].copy()
        values[row, 0, 0] += self.edits
        patch_in_place(Path(self.path), before, values[row, 0, 0])
        for f in self.featurizers:
            self.fresh[(f"layer_{layer}", f)] = False

    @rule()
    def edit_featurizer(self):
        self.version += 1
        register(_scaled, "test_model", version=str(self.version))
        for layer in range(LAYERS):
            self.fresh[(f"layer_{layer}", "test_model")] = False

    @rule(featurizer=st.sampled_from([None, "raw", "test_model"]))
    def forget(self, featurizer):
        """Forget one featurizer's features (None: all): no longer fresh; their entries stay until gc."""
        slots = {slot for slot in self.catalogued if featurizer in (None, slot[1])}
        if not slots:
            with pytest.raises(featstore.NotFoundError):
                featstore.forget(self.path, self.store, featurizers=featurizer or ())
            return
        report = featstore.forget(self.path, self.store, featurizers=featurizer or ())
        assert {(r.layer, r.featurizer) for r in report.rows} == slots
        self.maybe_stored |= {slot for slot in slots if self.fresh.get(slot)}
        self.fresh.update(dict.fromkeys(slots & set(self.fresh), False))
        self.catalogued -= slots

    @rule(dry_run=st.booleans())
    def gc(self, dry_run):
        featstore.gc(self.store, dry_run=dry_run)  # only unreferenced entries go: what is fresh stays fresh
        if not dry_run:
            self.maybe_stored = set()  # what a failed build stored uncatalogued is gone

    @rule()
    def verify(self):
        assert featstore.verify(self.store, recompute=0.5, seed=self.edits).ok

    @invariant()
    def status_agrees_with_the_model(self):
        slots = featstore.status(self.path, self.featurizers, store=self.store).slots
        assert {(s.layer, s.featurizer): s.state == "fresh" for s in slots} == self.fresh
        loaded = featstore.open(self.path, store=self.store) if any(self.fresh.values()) else None
        for (layer, f), fresh in self.fresh.items():
            if fresh and f == "raw":
                np.testing.assert_array_equal(loaded.load(layer, "raw").numpy(), self.data[layer])
        if loaded:
            loaded.close()


StoreModel.TestCase.settings = settings(max_examples=12, stateful_step_count=8, deadline=None)
TestStoreModel = StoreModel.TestCase
