"""``KEY=VALUE`` options: parsed as YAML, and every error names the flag the user typed."""

import pytest

from prefdiff.cli import main
from prefdiff.errors import UserError
from prefdiff.options import parse_options


def test_values_are_parsed_as_yaml():
    assert parse_options(["size=64", "root=/data", "pair=[1, 2]", "flag=true"], "--dataset-option") == {
        "size": 64, "root": "/data", "pair": [1, 2], "flag": True}


@pytest.mark.parametrize("flag", ["--dataset-option", "--reward-option"])
def test_a_malformed_option_names_its_flag(flag):
    with pytest.raises(UserError, match=f"^{flag} 'oops' is not KEY=VALUE$"):
        parse_options(["oops"], flag)


def test_label_reward_option_errors_name_reward_option(tmp_path, capsys):
    code = main(["label", str(tmp_path), "--reward", "jpeg_compressibility", "--reward-option", "quality"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "--reward-option 'quality' is not KEY=VALUE" in err and "--dataset-option" not in err
