"""The test lanes' own rules: in CI a missing deployment service fails, elsewhere it skips."""

from __future__ import annotations

import pytest

from tests.deploy_support import in_ci, service_missing


@pytest.mark.parametrize("value", ["true", "1", "yes", "True"])
def test_a_missing_service_fails_in_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match=r"no PostgreSQL.*CI is set"):
        service_missing("no PostgreSQL server usable")


@pytest.mark.parametrize("value", [None, "", "0", "false"])
def test_a_missing_service_skips_outside_ci(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match=r"^no PostgreSQL server usable$"):
        service_missing("no PostgreSQL server usable")
