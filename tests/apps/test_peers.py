"""The peers of the benchmark (apps.readers): PP-OCRv6 small and tiny read real crops by zoo name."""
import pytest

from conftest import have_wheel
from runtime import zoo


@pytest.mark.parametrize("name,least", [("ppocrv6", 0.85), ("ppocrv6-tiny", 0.7)])
def test_peers_read_real_crops(name, least, shared_real):
    if not have_wheel(name):
        pytest.skip(f"{zoo.find(name).pip} not installed")
    from apps.benchmark import load_crops
    from apps.readers import open_reader

    imgs, gts = load_crops(str(shared_real / "svt_test"), False, 48)["svt_test"]
    rd = open_reader(name)
    assert rd.name.startswith(zoo.find(name).label)
    preds = rd.read(imgs)
    from runtime.metrics import score_split

    assert score_split("svt", preds, gts).accuracy >= 100 * least
    with pytest.raises(ValueError, match="NAME@HxW"):
        open_reader(f"{name}@48")
