"""Every setting (env var, default, description) as a markdown table.

python -m tools.settings_doc            # print it
python -m tools.settings_doc --write    # refresh the table in README.md
"""

from __future__ import annotations

from libs.common.config import (
    BootSettings,
    EntrySettings,
    ExchangeSettings,
    GuardSettings,
    KillSettings,
    NatsSettings,
    ReconcilerSettings,
    RiskSettings,
    RouterSettings,
    VenueStreamSettings,
    describe_settings,
)
from services.simulator.config import SimulatorSettings

ALL_SETTINGS = (
    NatsSettings,
    ExchangeSettings,
    GuardSettings,
    RouterSettings,
    EntrySettings,
    ReconcilerSettings,
    BootSettings,
    RiskSettings,
    KillSettings,
    VenueStreamSettings,
    SimulatorSettings,
)


def markdown() -> str:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for row in describe_settings(*ALL_SETTINGS):
        default = row["default"].replace("|", "\\|") or "(empty)"
        lines.append(f"| `{row['env']}` | `{default}` | {row['description']} |")
    return "\n".join(lines)


BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def render_readme(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{markdown()}\n{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if "--write" in sys.argv:
        readme = Path(__file__).resolve().parent.parent / "README.md"
        readme.write_text(render_readme(readme.read_text()))
    else:
        print(markdown())
