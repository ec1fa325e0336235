#!/usr/bin/env python3
"""A stand-in for llama-completion, llama-embedding and llama-mtmd-cli (chosen by the name it
is run as).

Behaviour from the JSON in $FAKE_LLAMA:
  record   append {"argv", "file", "file_mode"} of each run to this JSONL file
  sleep    seconds to wait before answering (timeouts, cancellation)
  exit     exit with this status after printing an error
  partial  print some text, then exit with this status (a failure mid-stream)
  drip     [count, seconds]: answer "w0 w1 ...", one word every `seconds` (a long stream)
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

BEHAVIOUR = json.loads(os.environ.get("FAKE_LLAMA", "{}"))


def arg(name: str) -> str:
    return sys.argv[sys.argv.index(name) + 1]


def main() -> int:
    file = Path(arg("--file"))
    if path := BEHAVIOUR.get("record"):
        entry = {
            "argv": sys.argv[1:],
            "pid": os.getpid(),
            "file": file.read_text(),
            "file_mode": oct(stat.S_IMODE(file.stat().st_mode)),
        }
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    if "partial" in BEHAVIOUR:
        print("half an ans", end="", flush=True)
        time.sleep(0.2)
        print("error: fake crash", file=sys.stderr)
        return int(BEHAVIOUR["partial"])
    time.sleep(BEHAVIOUR.get("sleep", 0))
    if "exit" in BEHAVIOUR:
        print("error: fake failure", file=sys.stderr)
        return int(BEHAVIOUR["exit"])
    if Path(sys.argv[0]).name == "llama-mtmd-cli":
        image = Path(arg("--image"))
        if path := BEHAVIOUR.get("record"):
            with open(path, "a") as f:
                f.write(json.dumps({"image_mode": oct(stat.S_IMODE(image.stat().st_mode))}) + "\n")
        print(
            "\n"
            + ('{"tags":["Red","red"," Blue  sky "]}' if "--grammar" in sys.argv else "a picture")
        )
        return 0
    if Path(sys.argv[0]).name == "llama-embedding":
        inputs = file.read_text().split(arg("--embd-separator"))
        data = [
            {"object": "embedding", "index": i, "embedding": [0.25, i]} for i in range(len(inputs))
        ]
        print(json.dumps({"object": "list", "data": data}))
        return 0
    count, pause = BEHAVIOUR.get("drip", (0, 0))
    for i in range(count):
        print(f"w{i} ", end="", flush=True)
        time.sleep(pause)
    print("fake answer", end="")
    print("common_perf_print: prompt eval time = 1.00 ms /     7 tokens", file=sys.stderr)
    print("common_perf_print:    samplers time = 1.00 ms /    10 tokens", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
