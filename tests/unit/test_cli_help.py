"""`txlab bench --help` and `txlab scenario --help` list what there is (they once failed with "unknown scenario
'--help'"), and each bench's own --help describes that bench in whole sentences."""

import pytest
from typer.testing import CliRunner

from services.cli import BENCHES, SCENARIOS, app


@pytest.mark.parametrize("kind, names", [("bench", BENCHES), ("scenario", SCENARIOS)])
def test_help_lists_every_name(kind, names):
    result = CliRunner().invoke(app, [kind, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.output


@pytest.mark.parametrize("name, words", [("halfmsg", "halfmsg pattern"), ("tcc", "tcc pattern"),
                                         ("2pc", "prepared transaction"), ("failover", "how many are lost")])
def test_each_bench_describes_itself(name, words):
    result = CliRunner().invoke(app, ["bench", name, "--help"])
    assert result.exit_code == 0, result.output
    assert words in " ".join(result.output.split())
