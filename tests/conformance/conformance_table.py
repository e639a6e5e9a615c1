"""Write the Autobahn results found under a reports folder as a Markdown table.

    python tests/conformance/conformance_table.py build/autobahn > docs/conformance.md
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

VERDICTS = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED"]


def rows(root: Path) -> list[tuple[str, int, collections.Counter[str], list[str], list[str]]]:
    """One row per agent: (agent, cases, verdict counts, failed ids, non-OK close ids)."""
    out = []
    for index in sorted(root.glob("*/reports/index.json")):
        data = json.loads(index.read_text())
        for agent, cases in sorted(data.items()):
            counts: collections.Counter[str] = collections.Counter()
            failed, bad_close = [], []
            for case_id, result in cases.items():
                counts[result["behavior"]] += 1
                if result["behavior"] == "FAILED":
                    failed.append(case_id)
                if result["behaviorClose"] not in ("OK", "INFORMATIONAL"):
                    bad_close.append(case_id)
            out.append((agent, len(cases), counts, failed, bad_close))
    return out


def main(argv: list[str]) -> int:
    """Print the table; exit 1 if any case FAILED."""
    root = Path(argv[1] if len(argv) > 1 else "build/autobahn")
    table = rows(root)
    print("| role (twin) | cases | " + " | ".join(VERDICTS) + " | non-OK close |")
    print("|---|---|" + "---|" * len(VERDICTS) + "---|")
    for agent, n, counts, failed, bad_close in table:
        cells = " | ".join(str(counts.get(v, 0)) for v in VERDICTS)
        print(f"| {agent} | {n} | {cells} | {len(bad_close)} |")
    failures = [(a, f) for a, _, _, f, _ in table if f]
    for agent, failed in failures:
        print(f"\nFAILED in {agent}: {' '.join(sorted(failed))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
