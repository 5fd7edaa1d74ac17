import subprocess
import sys


def _run(*args):
    return subprocess.run([sys.executable, "-m", "deepsalt.cli", *args], capture_output=True, text=True)


def test_help_explains_commands():
    r = _run("world", "--help")
    assert r.returncode == 0 and "--preset" in r.stdout and "benchmark" in r.stdout


def test_bad_preset_and_existing_output_are_one_line_errors(tmp_path):
    r = _run("world", "--preset", "huge", "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "unknown preset 'huge'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "x").write_text("keep me")
    r = _run("world", "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "output folder exists and is not empty" in r.stderr
    assert (tmp_path / "w" / "x").read_text() == "keep me"
