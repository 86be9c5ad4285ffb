"""`mmdiff plot`: curves from metrics.jsonl to a PNG of the stated size; the error cases name the file."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from multimodal.cli import main
from multimodal.plot import PANEL_SIZE, read_metrics, save_curves


def write_metrics(folder, rows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def rows(n: int = 6, validation: bool = True, mfu: bool = True) -> list[dict]:
    out = []
    for step in range(1, n + 1):
        row = {"step": step, "loss": 3.0 / step, "masked_ce": 2.5 / step, "tok_s": 1000.0 + 10 * step, "lr": 1e-3}
        if mfu:
            row["mfu"] = 0.3 + 0.01 * step
        if validation and step % 3 == 0:
            row["val/exact_match"], row["val/step"] = step / 10, float(step)
        out.append(row)
    return out


@pytest.mark.parametrize("validation,panels", [(True, 3), (False, 2)])
def test_png_size_follows_the_panels(tmp_path, validation, panels):
    write_metrics(tmp_path / "run", rows(validation=validation))
    path = save_curves(tmp_path / "run", dpi=50)
    assert path == tmp_path / "run" / "curves.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (round(PANEL_SIZE[0] * 50), round(PANEL_SIZE[1] * 50 * panels))
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 10  # something was drawn, not a blank canvas


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "metrics.jsonl")):
        save_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ValueError, match="holds no metrics"):
        save_curves(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n{"step": 2,\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "lr": 0.1}\n')
    with pytest.raises(ValueError, match="neither a loss nor tok_s"):
        save_curves(tmp_path)


def test_cli_plot(tmp_path, capsys):
    write_metrics(tmp_path / "run", rows(mfu=False))
    out = tmp_path / "figures" / "run.png"
    assert main(["plot", str(tmp_path / "run"), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] == round(PANEL_SIZE[0] * 100)

    assert main(["plot", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "missing" / "metrics.jsonl") in err
