"""Counts the test cases of one `st run` from its NDJSON report: prints
"PASSED FAILED". A test case (one generated request, or one step of a
stateful scenario) passed when every check on it passed.

Usage: python3 count.py REPORT_DIR
"""
import glob
import json
import sys


def main(report_dir: str) -> int:
    paths = glob.glob(f"{report_dir}/*.ndjson")
    if not paths:
        print(f"count.py: no NDJSON report in {report_dir}", file=sys.stderr)
        return 1
    status: dict[str, bool] = {}
    finished = False
    with open(paths[0], encoding="utf-8") as f:
        for line in f:
            event = json.loads(line)
            if "EngineFinished" in event:
                finished = True
            scenario = event.get("ScenarioFinished")
            if not scenario:
                continue
            for case_id, checks in (scenario.get("recorder") or {}).get("checks", {}).items():
                ok = all(c.get("status") != "failure" for c in checks)
                status[case_id] = status.get(case_id, True) and ok
    if not finished:
        print("count.py: the run did not finish", file=sys.stderr)
        return 1
    failed = sum(1 for ok in status.values() if not ok)
    print(len(status) - failed, failed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
