import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """A small demo dataset (2 clips per class) and the truth it was built from."""
    from ensemble.core.demo.build import make_demo_data

    root = tmp_path_factory.mktemp("demo")
    truths = make_demo_data(root, per_class=2, seed=0, progress=False)
    return root, truths


@pytest.fixture(scope="session")
def demo_manifest(demo, tmp_path_factory):
    """The demo dataset imported with leak-free splits: path of its manifest CSV."""
    from ensemble.core.aihub import import_aihub
    from ensemble.core.manifest import write_manifest
    from ensemble.core.splits import assign_splits

    root, _ = demo
    df = assign_splits(import_aihub(root)[0], seed=0)
    return write_manifest(df, tmp_path_factory.mktemp("manifest") / "manifest.csv")
