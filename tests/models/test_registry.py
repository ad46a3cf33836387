"""Named models: import, export, remove, resolution by name, published models through pooch, safety."""

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch

from napari_mousesegment.cli import main
from napari_mousesegment.inference.ultrasound import segment_frames
from napari_mousesegment.models.folder import ModelError, save_model
from napari_mousesegment.models.unet import UNet, UNetConfig
from napari_mousesegment.store import registry, transfer
from napari_mousesegment.store.load import load_model, load_unet


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MOUSESEGMENT_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "models"


@pytest.fixture
def unet_folder(tmp_path):
    torch.manual_seed(0)
    config = UNetConfig(organ="heart", width=4, image_size=32, threshold=0.5)
    return save_model(tmp_path / "trained" / "my-heart", UNet(config), config, {"version": "3"})


def test_import_lists_and_loads_by_name(home, unet_folder):
    installed = transfer.import_model(unet_folder)
    assert installed == home / "my-heart"
    rows = {r.name: r for r in registry.list_models() if r.source == "user"}
    assert rows["my-heart"].kind == "unet" and rows["my-heart"].organs == ["heart"]
    assert rows["my-heart"].size_bytes > 0
    model, config, _ = load_unet("my-heart")
    assert config.organ == "heart"


def test_export_import_predict_round_trip_is_identical(home, unet_folder, tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 48), dtype=np.uint8)
    original, _, _ = load_unet(unet_folder)
    transfer.import_model(unet_folder, name="lab-heart")
    exported = transfer.export_model("lab-heart", tmp_path / "shared" / "lab-heart")
    transfer.import_model(exported, name="lab-heart-copy")
    copy, _, _ = load_unet("lab-heart-copy")
    prob_a, labels_a = segment_frames(original, frames)
    prob_b, labels_b = segment_frames(copy, frames)
    assert np.array_equal(prob_a, prob_b) and np.array_equal(labels_a, labels_b)


def test_import_over_an_existing_name_needs_force(home, unet_folder):
    transfer.import_model(unet_folder)
    with pytest.raises(ModelError, match="--force"):
        transfer.import_model(unet_folder)
    transfer.import_model(unet_folder, force=True)
    assert (home / "my-heart" / "weights.safetensors").is_file()


def test_builtin_names_are_reserved_and_a_name_twice_is_an_error(home, unet_folder, tmp_path, monkeypatch):
    builtin = tmp_path / "builtin"
    monkeypatch.setattr(registry, "BUILTIN", builtin)
    transfer.export_model(str(unet_folder), builtin / "unet-heart-synthetic")
    with pytest.raises(ModelError, match="built-in"):
        transfer.import_model(unet_folder, name="unet-heart-synthetic")
    with pytest.raises(ModelError, match="built in and cannot be removed"):
        transfer.remove_model("unet-heart-synthetic")
    transfer.export_model(str(unet_folder), home / "unet-heart-synthetic")  # placed by hand
    with pytest.raises(ModelError, match="exists twice"):
        load_unet("unet-heart-synthetic")
    transfer.remove_model("unet-heart-synthetic")
    assert load_unet("unet-heart-synthetic")[1].organ == "heart"


@pytest.mark.parametrize("damage", ["no config", "wrong kind", "wrong shapes", "tampered"])
def test_bad_model_folders_are_refused_and_not_installed(home, unet_folder, damage):
    config_path = unet_folder / "config.json"
    meta = json.loads(config_path.read_text())
    if damage == "no config":
        config_path.unlink()
    elif damage == "wrong kind":
        config_path.write_text(json.dumps(meta | {"kind": "resnet"}))
    elif damage == "wrong shapes":
        config_path.write_text(json.dumps(meta | {"width": 8}))
    else:
        weights = unet_folder / "weights.safetensors"
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF
        weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="my-heart"):
        transfer.import_model(unet_folder)
    assert not (home / "my-heart").exists()
    assert not any(p.name.startswith(".my-heart") for p in home.glob("*")) if home.exists() else True


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PAYLOAD_MARKER'], 'w').write('ran')",))


def test_a_malicious_pickle_as_weights_never_runs(home, unet_folder, tmp_path, monkeypatch):
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("PAYLOAD_MARKER", str(marker))
    weights = unet_folder / "weights.safetensors"
    weights.write_bytes(pickle.dumps({"state": _Payload()}))
    meta = json.loads((unet_folder / "config.json").read_text())
    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()  # the attacker fixes the hash too
    (unet_folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="cannot read weights.safetensors"):
        load_model(unet_folder)
    with pytest.raises(ModelError):
        transfer.import_model(unet_folder)
    assert not marker.exists()


def test_a_config_without_a_hash_is_refused(unet_folder):
    meta = json.loads((unet_folder / "config.json").read_text())
    del meta["sha256"]
    (unet_folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="no sha256"):
        load_unet(unet_folder)


def _zip_model(folder, path):
    with zipfile.ZipFile(path, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"{folder.name}/{f.name}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_published_model_is_pulled_by_name_with_its_hash(home, unet_folder, served):
    www, url = served
    digest = _zip_model(unet_folder, www / "heart.zip")
    home.mkdir(parents=True)
    (home / "registry.json").write_text(json.dumps({
        "lab-heart": {"url": f"{url}/heart.zip", "sha256": digest, "kind": "unet", "organs": ["heart"]},
        "bad-heart": {"url": f"{url}/heart.zip", "sha256": "0" * 64},
    }))
    rows = {r.name: r for r in registry.list_models()}
    assert rows["lab-heart"].source == "registry" and rows["lab-heart"].path.endswith("heart.zip")
    model, config, _ = load_unet("lab-heart")
    assert config.organ == "heart" and (home / "lab-heart" / "weights.safetensors").is_file()
    assert {r.name: r.source for r in registry.list_models()}["lab-heart"] == "user"
    with pytest.raises(ModelError, match="bad-heart"):
        load_unet("bad-heart")
    assert not (home / "bad-heart").exists()


def test_import_from_url_checks_the_given_hash(home, unet_folder, served):
    www, url = served
    digest = _zip_model(unet_folder, www / "heart.zip")
    with pytest.raises(ModelError):
        transfer.import_model(f"{url}/heart.zip", name="h1", sha256="f" * 64)
    assert transfer.import_model(f"{url}/heart.zip", name="h2", sha256=digest) == home / "h2"


def test_cli_models_list_import_export_remove(home, unet_folder, tmp_path, capsys):
    assert main(["models", "import", str(unet_folder), "--name", "cli-heart"]) == 0
    assert "cli-heart" in capsys.readouterr().out
    assert main(["models", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name": "cli-heart", "source": "user", "kind": "unet"}.items() <= next(
        r for r in rows if r["name"] == "cli-heart").items()
    assert main(["models", "import", str(unet_folder), "--name", "cli-heart"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["models", "export", "cli-heart", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "config.json").is_file()
    assert main(["models", "remove", "cli-heart"]) == 0
    assert main(["models", "remove", "cli-heart"]) == 2
    assert "no user model" in capsys.readouterr().err


def test_unknown_name_lists_what_is_installed(home):
    with pytest.raises(ModelError, match="installed:"):
        load_unet("no-such-model")


def test_export_force_never_replaces_a_folder_of_user_files(home, unet_folder, tmp_path):
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.docx").write_text("years of work")
    with pytest.raises(ModelError, match="not a model"):
        transfer.export_model(str(unet_folder), docs, force=True)
    assert (docs / "thesis.docx").read_text() == "years of work"


def test_the_registry_file_name_is_not_a_model_name(home, unet_folder):
    with pytest.raises(ModelError, match="reserved"):
        transfer.import_model(unet_folder, name="registry.json")


def test_removing_a_model_removes_its_versions(home, unet_folder):
    from napari_mousesegment.store import versions

    transfer.import_model(unet_folder)
    versions.ensure_base("my-heart", "my-heart")
    assert [v["version"] for v in versions.versions("my-heart")] == ["0"]
    transfer.remove_model("my-heart")
    assert versions.versions("my-heart") == []


def test_an_interrupted_replacement_is_restored_on_next_use(home, unet_folder):
    transfer.import_model(unet_folder)
    (home / "my-heart").rename(home / ".my-heart-old")  # killed between the two renames
    assert [r.name for r in registry.list_models() if r.source == "user"] == []
    assert load_unet("my-heart")[1].organ == "heart"
