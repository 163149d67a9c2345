"""The rank launcher ends with the ranks' own exit code (the end-to-end case is in tests/failover)."""

from turnout.train.launch import command, exit_code, main


def test_the_first_failing_ranks_own_code_wins():
    assert exit_code([86, -15], first=86) == 86
    assert exit_code([-15, 87], first=-15) == 87  # the first was only killed when torchrun tore the group down
    assert exit_code([-9, -15], first=-9) == 1


def test_command_and_usage(capsys):
    cmd = command(2, ["train", "--out", "r"])
    assert cmd[1:] == ["-m", "turnout.train.launch", "2", "train", "--out", "r"]
    assert main(["two", "train"]) == 2 and "usage" in capsys.readouterr().err
