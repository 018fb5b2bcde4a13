"""Our XDG folders are the ones platformdirs gives (we skip importing it for start-up time)."""

import pytest

from imstore import paths


@pytest.mark.parametrize("data_home, cache_home", [("", ""), ("/tmp/xdg-data", "/tmp/xdg-cache"), ("  ", "  ")])
def test_default_folders_match_platformdirs(monkeypatch, data_home, cache_home):
    import platformdirs

    monkeypatch.setenv("XDG_DATA_HOME", data_home)
    monkeypatch.setenv("XDG_CACHE_HOME", cache_home)
    assert paths.user_data_path("imstore") == platformdirs.user_data_path("imstore")
    assert paths.user_cache_path("imstore") == platformdirs.user_cache_path("imstore")
