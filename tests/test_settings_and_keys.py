"""Settings validation, secret masking and safe batch keys (pure functions, nothing faked)."""

from __future__ import annotations

import pytest

from ideogram_pipeline.settings import SettingsError, load_settings
from ideogram_pipeline.storage.keys import batch_key_for, image_key


def test_defaults_mean_simulator_and_local_storage() -> None:
    settings = load_settings({})
    assert settings.simulated and not settings.is_s3
    assert (settings.max_inflight, settings.storage) == (10, "./data")


def test_secrets_never_appear_in_repr() -> None:
    settings = load_settings(
        {"IDEOGRAM_API_KEY": "sk-very-secret", "AWS_SECRET_ACCESS_KEY": "aws-very-secret"}
    )
    text = repr(settings) + str(settings)
    assert "sk-very-secret" not in text and "aws-very-secret" not in text
    assert not settings.simulated


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"IDEOGRAM_MAX_INFLIGHT": "ten"}, "IDEOGRAM_MAX_INFLIGHT"),
        ({"IDEOGRAM_MAX_INFLIGHT": "0"}, "at least 1"),
        ({"IDEOGRAM_STORAGE": "s3://"}, "bucket"),
        ({"IDEOGRAM_BASE_URL": "ftp://x"}, "IDEOGRAM_BASE_URL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(SettingsError, match=needle):
        load_settings(env)


def test_safe_names_pass_through_unchanged() -> None:
    assert batch_key_for("spring-sale_2026.v2") == "spring-sale_2026.v2"


@pytest.mark.parametrize(
    "name", ["../x", "a=b", "with space", "#hash", "ünïcödé", ".hidden", "x" * 300, "", "a/b"]
)
def test_hostile_names_become_safe_keys(name: str) -> None:
    key = batch_key_for(name)
    assert key and len(key) <= 80
    assert all(c.isalnum() or c in "._-" for c in key)
    assert not key.startswith(".") and ".." not in key.replace("...", "")


def test_different_names_never_collide() -> None:
    names = ["a b", "a_b", "a-b", "a?b", "a#b", "A b"]
    assert len({batch_key_for(n) for n in names}) == len(names)


def test_image_keys_hold_no_prompt_text() -> None:
    assert image_key("abc123", "2026-11-24") == "images/2026/11/24/abc123.png"
