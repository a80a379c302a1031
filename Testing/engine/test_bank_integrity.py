"""A damaged, tampered or mixed-up bank is refused on load with a BankError naming the file.

Each case copies a real bank built by the suite and damages it the way a disk, a user or a
script would. `rehash` recomputes the manifest's content hashes with hashlib (independently
of the engine) for the cases that must get past the hash check to reach the shape checks.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from MemorizationIndexLib.bank.feature_bank import FeatureBank
from MemorizationIndexLib.errors import BankError


@pytest.fixture
def bank_copy(small_bank, tmp_path):
    _, path = small_bank
    copy = tmp_path / "bank"
    shutil.copytree(path, copy)
    return copy


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(folder: Path, manifest: dict) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest))


def rehash(folder: Path) -> None:
    manifest = manifest_of(folder)
    for name in manifest["files"]:
        data = (folder / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    write_manifest(folder, manifest)


def test_manifest_lists_a_hash_of_every_array_file(bank_copy):
    files = manifest_of(bank_copy)["files"]
    on_disk = {p.name for p in bank_copy.iterdir()} - {"manifest.json", ".memorization-index.json"}
    assert set(files) == on_disk
    for name, entry in files.items():
        data = (bank_copy / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    FeatureBank.load(bank_copy)  # an intact copy loads


def test_a_changed_byte_is_refused_by_name(bank_copy):
    file = bank_copy / "features_layer1.npy"
    data = bytearray(file.read_bytes())
    data[-3] ^= 0x55  # same size, other content
    file.write_bytes(bytes(data))
    with pytest.raises(BankError, match=r"features_layer1\.npy was changed after"):
        FeatureBank.load(bank_copy)


@pytest.mark.parametrize("name", ["null.npz", "thumbnails.npy", "null_stages.npz"])
def test_truncated_and_missing_files_are_refused_by_name(bank_copy, name):
    file = bank_copy / name
    file.write_bytes(file.read_bytes()[:100])
    with pytest.raises(BankError, match=rf"{name} was changed"):
        FeatureBank.load(bank_copy)
    rehash(bank_copy)  # even with a matching hash, the damaged file is named
    with pytest.raises(BankError, match=rf"{name} is missing or damaged"):
        FeatureBank.load(bank_copy)
    file.unlink()
    with pytest.raises(BankError, match=rf"{name} is missing"):
        FeatureBank.load(bank_copy)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda m: m.pop("settings"), "lacks the field 'settings'"),
        (lambda m: m.update(settings=[1, 2]), "field 'settings' has the wrong type"),
        (lambda m: m["settings"].update(layers="x"), "field 'settings' is not valid"),
        (lambda m: m["settings"].update(top_k=0), "field 'settings' is not valid"),
        (lambda m: m.pop("encoder"), "lacks the field 'encoder'"),
        (lambda m: m.update(volumes={"a": 1}), "field 'volumes' has the wrong type"),
        (lambda m: m.update(volumes=[1, 2]), "'volumes' is not a list of volumes"),
        (lambda m: m.pop("files"), "lacks the field 'files'"),
    ],
)
def test_manifest_fields_missing_or_of_the_wrong_type(bank_copy, edit, message):
    manifest = manifest_of(bank_copy)
    edit(manifest)
    write_manifest(bank_copy, manifest)
    with pytest.raises(BankError, match=message) as error:
        FeatureBank.load(bank_copy)
    assert "manifest.json" in str(error.value)


def test_manifest_that_is_not_json_or_not_an_object(bank_copy):
    (bank_copy / "manifest.json").write_text("[1, 2")
    with pytest.raises(BankError, match="cannot be read as JSON"):
        FeatureBank.load(bank_copy)
    (bank_copy / "manifest.json").write_text("[1, 2]")
    with pytest.raises(BankError, match="not a MemorizationIndex bank manifest"):
        FeatureBank.load(bank_copy)


def test_arrays_that_do_not_belong_together_are_refused(bank_copy):
    """A bank assembled from two builds: every hash matches, the shapes do not."""
    ids = np.load(bank_copy / "slice_volume_ids.npy")
    np.save(bank_copy / "slice_volume_ids.npy", ids[:-1])
    rehash(bank_copy)
    with pytest.raises(BankError, match=r"inconsistent: .* rows where the bank has"):
        FeatureBank.load(bank_copy)
    np.save(bank_copy / "slice_volume_ids.npy", ids + 100)
    rehash(bank_copy)
    with pytest.raises(BankError, match=r"slice_volume_ids\.npy names volumes"):
        FeatureBank.load(bank_copy)
    np.save(bank_copy / "slice_volume_ids.npy", ids)
    matrix = np.load(bank_copy / "whitening_layer2_matrix.npy")
    np.save(bank_copy / "whitening_layer2_matrix.npy", matrix[:, :-1])
    rehash(bank_copy)
    with pytest.raises(BankError, match=r"whitening_layer2_matrix\.npy has shape"):
        FeatureBank.load(bank_copy)
    np.save(bank_copy / "whitening_layer2_matrix.npy", matrix.astype(np.int32))
    rehash(bank_copy)
    with pytest.raises(BankError, match=r"whitening_layer2_matrix\.npy holds data of the wrong"):
        FeatureBank.load(bank_copy)


def test_a_bank_the_user_cannot_read_says_permission_denied(small_bank):
    """As an unprivileged user (root ignores permissions)."""
    _, path = small_bank
    base = Path(tempfile.mkdtemp())
    try:
        os.chmod(base, 0o755)
        bank = base / "bank"
        shutil.copytree(path, bank)
        os.chmod(bank, 0o755)
        os.chmod(bank / "manifest.json", 0o600)
        locked = base / "locked"
        locked.mkdir(mode=0o700)
        shutil.copytree(path, locked / "bank")
        script = textwrap.dedent(
            f"""
            import os, sys
            from MemorizationIndexLib.bank.feature_bank import FeatureBank
            from MemorizationIndexLib.errors import BankError
            if os.geteuid() == 0:  # imports first: nobody cannot read root's Python
                os.setgid(65534); os.setuid(65534)
            for target in ({str(bank)!r}, {str(locked / "bank")!r}):
                try:
                    FeatureBank.load(target)
                except BankError as exc:
                    print(exc)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=False
        )
        lines = proc.stdout.splitlines()
        assert "manifest.json cannot be read: permission denied" in lines[0], proc.stderr
        assert "does not exist or cannot be reached (no permission to open" in lines[1]
        assert str(locked) in lines[1]
    finally:
        shutil.rmtree(base)
