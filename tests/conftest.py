import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(__file__))
os.environ["TLC_VERIFY"] = "1"  # the IR verifier runs after every pass in tests
warnings.filterwarnings("ignore", category=FutureWarning)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _tlc_cache_dir(tmp_path_factory, monkeypatch):
    """Every test gets an empty persistent compile cache (tlc.driver.cache), so no test reads another's
    entries; progress output is left to each test ($TLC_PROGRESS / $TLC_QUIET unset)."""
    monkeypatch.setenv("TLC_CACHE_DIR", str(tmp_path_factory.mktemp("tlc-cache")))
    monkeypatch.delenv("TLC_NO_CACHE", raising=False)
    monkeypatch.delenv("TLC_PROGRESS", raising=False)
    monkeypatch.delenv("TLC_QUIET", raising=False)
