"""Every error code the simulator can answer has an explicit entry in the error policy (issue 7, 11)."""

import re
from pathlib import Path

from libs.venue.error_policy import _BY_CODE

SIM = Path(__file__).resolve().parents[2] / "services" / "simulator"
CODE = re.compile(r"(?:_bad\(\s*|SimError\(\s*\d+,\s*|\"code\":)(-\d+)")


def test_every_simulator_code_has_an_explicit_policy():
    codes = {int(c) for f in SIM.glob("*.py") for c in CODE.findall(f.read_text())}
    assert len(codes) > 20  # the pattern still finds them
    assert sorted(codes - set(_BY_CODE)) == []
