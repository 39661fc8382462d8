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
