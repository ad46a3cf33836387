import subprocess
import sys

import napari_mousesegment


def _heavy_after(code: str) -> str:
    """Which of torch, napari and Qt are loaded after ``code`` runs in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             "print(','.join(m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules))")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()


def test_import_does_not_load_torch_napari_or_qt():
    assert _heavy_after("import napari_mousesegment, napari_mousesegment.cli, napari_mousesegment.jobs.demo") == ""


def test_building_the_cli_and_looking_a_model_up_need_no_torch():
    code = ("from napari_mousesegment.cli import build_parser\n"
            "from napari_mousesegment.store.registry import list_models, model_config, resolve\n"
            "build_parser()\n"
            "assert resolve('unet-heart-synthetic').is_dir() and model_config('mosnet-synthetic')['kind'] == 'mosnet'\n"
            "assert len(list_models()) >= 4")
    assert _heavy_after(code) == ""


def test_lazy_public_api_resolves():
    assert callable(napari_mousesegment.ct_phantom)
    assert callable(napari_mousesegment.ultrasound_series)
    assert callable(napari_mousesegment.ct_layers) and callable(napari_mousesegment.run_demo)
    assert "read_composite" in dir(napari_mousesegment) and "CTWidget" in dir(napari_mousesegment)


def test_the_old_paths_documented_for_scripts_still_work():
    from napari_mousesegment.ct_jobs import predict_ct_batch
    from napari_mousesegment.jobs.ct import predict_ct_batch as new_batch
    from napari_mousesegment.layers import ct_layers
    from napari_mousesegment.plugin.layers import ct_layers as new

    assert ct_layers is new and predict_ct_batch is new_batch


def test_unknown_attribute_raises():
    try:
        napari_mousesegment.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
