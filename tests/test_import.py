import subprocess
import sys

import napari_mousesegment


def test_import_does_not_load_torch_napari_or_qt():
    code = (
        "import sys, napari_mousesegment, napari_mousesegment.cli, napari_mousesegment.demo;"
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt6', 'magicgui') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_public_api_resolves():
    assert callable(napari_mousesegment.ct_phantom)
    assert callable(napari_mousesegment.ultrasound_series)
    assert "read_composite" in dir(napari_mousesegment)


def test_unknown_attribute_raises():
    try:
        napari_mousesegment.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")
