"""Checkpoint writes are atomic: a crash at any point of a save leaves a loadable checkpoint."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from conftest import make_gpt
from tpgpt.checkpoint import find_checkpoint, load_sharded, load_state, save_checkpoint
from tpgpt.errors import ConfigError
from tpgpt.checkpoint.load import load_dense
from tpgpt.checkpoint.sharded_state import ShardedState


def save(gpt, path, it):
    c = gpt.config
    save_checkpoint(str(path), rank=0, barrier=lambda: None, sharded=ShardedState(gpt),
                    state={"iter": it, "model": {k: getattr(c, k) for k in (
                        "block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout",
                        "bias")}}, meta={"tokenizer": "byte", "vocab_size": 256}, rank_state=None)


def test_crash_points_of_a_save(tmp_path):
    a, b = make_gpt(seed=1), make_gpt(seed=2)
    ckpt = tmp_path / "last"
    save(a, ckpt, 1)
    # crash while writing the new files: a partial last.tmp is ignored
    os.makedirs(tmp_path / "last.tmp" / "model")
    (tmp_path / "last.tmp" / "model" / "junk.safetensors").write_bytes(b"\0" * 10)
    assert load_state(str(ckpt))["iter"] == 1
    # crash between the two renames: only last.old exists, and it is used
    os.replace(ckpt, tmp_path / "last.old")
    assert find_checkpoint(str(ckpt)) == str(tmp_path / "last.old")
    gpt, _, found = load_dense(str(ckpt))
    assert found.endswith("last.old")
    assert torch.equal(gpt.transformer.wte.weight, a.transformer.wte.weight)
    # the next save cleans up and replaces it
    save(b, ckpt, 2)
    assert load_state(str(ckpt))["iter"] == 2
    assert not (tmp_path / "last.tmp").exists() and not (tmp_path / "last.old").exists()
    save(b, ckpt, 3)  # the checkpoint before is kept as last.prev, the fallback
    assert load_state(str(tmp_path / "last.prev"))["iter"] == 2
    assert torch.equal(load_dense(str(ckpt))[0].transformer.wte.weight, b.transformer.wte.weight)


def test_incomplete_or_mismatched_checkpoints_are_refused(tmp_path):
    gpt = make_gpt()
    save(gpt, tmp_path / "c", 1)
    other = make_gpt(n_embd=48, n_head=4)
    with pytest.raises(ConfigError, match="does not fit this model"):
        load_sharded(str(tmp_path / "c"), ShardedState(other))
    shutil.rmtree(tmp_path / "c" / "model")
    with pytest.raises(ConfigError, match="safetensors is missing: the checkpoint is incomplete"):
        load_dense(str(tmp_path / "c"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state.json").write_text("{}")
    with pytest.raises(ConfigError, match="has no manifest.json: the checkpoint is incomplete"):
        load_state(str(tmp_path / "bad"))
    import json

    from tpgpt.checkpoint.store import _file_digests
    for text, fragment in (("{not json", "state.json is not valid JSON"),
                           ('{"format": 99}', "is not a tpgpt checkpoint")):
        (tmp_path / "bad" / "state.json").write_text(text)  # a manifest that matches it
        (tmp_path / "bad" / "manifest.json").write_text(
            json.dumps({"files": _file_digests(str(tmp_path / "bad"))}))
        with pytest.raises(ConfigError, match=fragment):
            load_state(str(tmp_path / "bad"))


def test_nothing_is_unpickled(tmp_path):
    """A checkpoint holds safetensors, JSON and weights_only torch files: no pickle to load."""
    gpt = make_gpt()
    save(gpt, tmp_path / "c", 1)
    files = [f for _, _, fs in os.walk(tmp_path / "c") for f in fs]
    assert files and all(f.endswith((".safetensors", ".json")) for f in files), files
    assert "manifest.json" in files


def test_checksums_catch_corruption_and_name_the_intact_one(tmp_path):
    gpt = make_gpt()
    save(gpt, tmp_path / "last", 2)
    save(gpt, tmp_path / "best", 1)
    shard = next(f for f in os.listdir(tmp_path / "last" / "model") if f.endswith(".safetensors"))
    p = tmp_path / "last" / "model" / shard
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a weight
    p.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=f"model/{shard} fails its checksum: the checkpoint is "
                                          f"corrupt; intact: .*best"):
        load_state(str(tmp_path / "last"))
    assert load_state(str(tmp_path / "best"))["iter"] == 1
    os.remove(tmp_path / "best" / "meta.json")
    with pytest.raises(ConfigError, match="meta.json is missing: the checkpoint is incomplete"):
        load_state(str(tmp_path / "best"))


def test_manifest_paths_cannot_escape(tmp_path):
    import json
    gpt = make_gpt()
    save(gpt, tmp_path / "c", 1)
    (tmp_path / "secret").write_text("x")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    m["files"]["../secret"] = {"bytes": 1, "sha256": "0"}
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ConfigError, match="names '../secret', outside the checkpoint"):
        load_state(str(tmp_path / "c"))


def test_a_corrupt_checkpoint_names_the_previous_good_one(tmp_path):
    gpt = make_gpt()
    save(gpt, tmp_path / "last", 1)
    save(gpt, tmp_path / "last", 2)  # iteration 1 is now last.prev
    (tmp_path / "last" / "state.json").write_text('{"format": 3, "iter": 99}')
    with pytest.raises(ConfigError, match=r"state.json fails its checksum: the checkpoint is "
                                          r"corrupt; intact: .*last.prev \(move one to"):
        load_state(str(tmp_path / "last"))
    assert load_state(str(tmp_path / "last.prev"))["iter"] == 1


def test_provenance_says_how_the_weights_came_to_be():
    """sample's and eval's header: a distilled model's own steps, not its teacher's count."""
    from tpgpt.checkpoint.load import provenance
    assert provenance({"iter": 1}) == "trained 1 iteration"
    assert provenance({"iter": 0, "source": "gpt2"}) == "imported from gpt2"
    converted = {"iter": 600, "converted_from": {"path": "/r/out/dense4", "tp": 1, "sync": "tp"}}
    assert provenance(converted) == \
        "trained 600 iterations, converted from /r/out/dense4 (tp=1, sync='tp')"
    assert provenance({**converted, "distill": {"step": 200}}).endswith(
        "(tp=1, sync='tp'), distilled 200 steps")
