"""Print the shell commands of the first ```bash block under a README.md heading (comments dropped).

    python .ci/readme_commands.py Install     # the install commands, one per line
    python .ci/readme_commands.py Tests

.ci/run executes exactly these, so CI installs and tests the way README.md tells users to.
"""
import re
import sys
from pathlib import Path


def commands(readme: str, heading: str) -> list[str]:
    section = re.search(rf"^## {re.escape(heading)}\s*$(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    if section is None:
        raise SystemExit(f"readme_commands: README.md has no '## {heading}' section")
    block = re.search(r"```bash\n(.*?)```", section.group(1), re.DOTALL)
    if block is None:
        raise SystemExit(f"readme_commands: README.md's '## {heading}' has no ```bash block")
    lines = [line.split(" #", 1)[0].strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


if __name__ == "__main__":
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    print("\n".join(commands(readme, sys.argv[1])))
