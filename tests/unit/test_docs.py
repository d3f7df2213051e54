from pathlib import Path

from tools.settings_doc import render_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_with_its_default():
    text = README.read_text()
    assert render_readme(text) == text, (
        "README settings table is stale: run python -m tools.settings_doc --write"
    )


def test_readme_opens_with_the_two_commands():
    block = README.read_text().split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_every_settings_class_is_documented():
    import inspect

    from pydantic_settings import BaseSettings

    from libs.common import config
    from tools.settings_doc import ALL_SETTINGS

    classes = {
        c
        for _, c in inspect.getmembers(config, inspect.isclass)
        if issubclass(c, BaseSettings) and c.__module__ == config.__name__ and not c.__name__.startswith("_")
    }
    assert classes <= set(ALL_SETTINGS)
