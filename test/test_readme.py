"""README.md starts with the two commands a new user runs; CI runs the same test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_starts_with_setup_and_test_commands():
    demo, tests = readme_commands()[:2]
    assert "pip install -e ." in demo and "flashstereo-demo" in demo
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command():
    tests = readme_commands()[1]
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()
