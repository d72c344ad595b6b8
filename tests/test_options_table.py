"""The option vocabulary is one table, docs/OPTIONS.md: every option each command's --help shows is in it for that
command and the other way round, every option has a help text, and the old spellings are still accepted."""
import os
import re

import pytest
from conftest import REPO, run_cli

COMMANDS = ("layers", "export", "export-triton", "serve-triton", "serve-cloud", "run-edge", "plan", "sweep",
            "profile", "status", "push", "demo")
TABLE = os.path.join(REPO, "docs", "OPTIONS.md")
OPTION_LINE = re.compile(r"^  (-\w, )?(--[\w-]+(?: / --[\w-]+)?)(?: [^ ].*?)?(?:  +(.*))?$")


def help_options(command):
    """{option: its help text} from `cli.py COMMAND --help` (a real subprocess); -h/--help left out."""
    proc = run_cli(command, "--help", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split("\n")
    start = lines.index("Options:") + 1
    options, current = {}, None
    for line in lines[start:]:
        if not line.strip():
            break
        match = OPTION_LINE.match(line)
        if match:
            current = match.group(2).replace(" / ", "/")
            options[current] = (match.group(3) or "").strip()
        elif current is not None:
            options[current] = (options[current] + " " + line.strip()).strip()
    options.pop("--help", None)
    return options


def table_rows():
    """{option: set of commands} from docs/OPTIONS.md's table."""
    rows = {}
    with open(TABLE) as f:
        for line in f:
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            if len(cells) != 4 or not cells[0].startswith("`--"):
                continue
            option = cells[0].strip("`")
            assert option not in rows, "{} twice in docs/OPTIONS.md".format(option)
            assert cells[1] and cells[2], "{}: meaning and default must be filled in".format(option)
            rows[option] = set(c.strip().strip("`") for c in cells[3].split(","))
    return rows


@pytest.fixture(scope="module")
def helps():
    return {command: help_options(command) for command in COMMANDS}


def test_every_option_in_help_is_in_the_table_and_back(helps):
    rows = table_rows()
    unknown = set().union(*rows.values()) - set(COMMANDS)
    assert not unknown, "docs/OPTIONS.md names commands cli.py does not have: {}".format(sorted(unknown))
    for command, options in helps.items():
        in_table = set(option for option, commands in rows.items() if command in commands)
        assert set(options) - in_table == set(), "{} --help shows options docs/OPTIONS.md lacks".format(command)
        assert in_table - set(options) == set(), "docs/OPTIONS.md lists options {} --help lacks".format(command)


def test_every_option_has_a_help_text(helps):
    for command, options in helps.items():
        for option, text in options.items():
            assert re.sub(r"\[(default|env var|required)[^\]]*\]", "", text).strip(), \
                "{} {} has no help text".format(command, option)


OLD_SPELLINGS = {"export": ("--artifacts", "--out"), "serve-cloud": ("--artifacts",), "demo": ("--artifacts",),
                 "run-edge": ("--artifacts", "--report"), "plan": ("--artifacts",), "sweep": ("--artifacts", "--csv",
                                                                                               "--png"),
                 "profile": ("--artifacts", "--out", "--segments"), "export-triton": ("--max-queue-delay-us",)}


def test_old_spellings_are_hidden(helps):
    for command, names in OLD_SPELLINGS.items():
        for name in names:
            assert name not in helps[command], "{} --help still shows {}".format(command, name)


def test_old_spellings_still_work(tmp_path):
    """The old names reach the same options: a missing bundle is what stops these, not an unknown option."""
    missing = str(tmp_path / "none")
    proc = run_cli("profile", "--out", str(tmp_path / "p.json"), "--segments", missing, "--artifacts",
                   str(tmp_path / "cache"), timeout=300)
    assert proc.returncode == 1 and "no such option" not in proc.stderr, proc.stderr
    assert "no bundle at {}".format(missing) in proc.stderr, proc.stderr
    proc = run_cli("export-triton", missing, "--repo", str(tmp_path / "repo"), "--max-queue-delay-us", "5",
                   timeout=300)
    assert proc.returncode == 1 and "no bundle at {}".format(missing) in proc.stderr, proc.stderr
